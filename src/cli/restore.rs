//! `snapring restore`: turns the flags into `snapring::restore::RestoreOptions`, runs
//! the restore and prints its report (a summary, conflicts and problems, or JSON). The
//! exit code is the restore's status.

use std::io::IsTerminal;

use snapring::restore::{Mode, RestoreOptions, RestoreReport};

use super::args::RestoreArgs;
use super::exit_code::ExitCode;
use super::print::{self, errln, human};

/// `snapring restore`.
pub fn restore(a: RestoreArgs) -> anyhow::Result<ExitCode> {
    let json = a.json;
    let opts = options(a)?;
    let cancel = super::cancel_on_signal();
    let r = snapring::restore::restore(&opts, &cancel)?;
    if json {
        print::json(&r)?;
    } else {
        print_summary(&r);
    }
    Ok(ExitCode::from(r.status))
}

/// The restore's options from the flags; `--path` must lie inside the snapshot.
fn options(a: RestoreArgs) -> anyhow::Result<RestoreOptions> {
    let path = match &a.path {
        Some(p) => {
            let rel = snapring::restore::parse_path(p).map_err(anyhow::Error::msg)?;
            (!rel.is_root()).then_some(rel)
        }
        None => None,
    };
    Ok(RestoreOptions {
        store: a.dest,
        snapshot: a.snapshot,
        to: a.to,
        flat: a.flat && path.is_some(),
        path,
        mode: if a.mirror {
            Mode::Mirror
        } else if a.overwrite {
            Mode::Overwrite
        } else {
            Mode::Safe
        },
        to_is_dedicated: a.to_is_dedicated,
        dry_run: a.dry_run,
        jobs: a.jobs.unwrap_or(0),
        progress: !a.no_progress && !a.json && !a.dry_run && std::io::stderr().is_terminal(),
    })
}

/// The counts (stdout, or stderr for a dry run), then up to 20 conflicts and 20
/// problems on stderr.
fn print_summary(r: &RestoreReport) {
    let mut out = print::summary_stream(r.dry_run);
    let _ = writeln!(
        out,
        "{}{}: restored {} of {} ({}) into {}",
        if r.dry_run { "dry run, " } else { "" },
        r.status.as_str(),
        r.path.as_deref().unwrap_or("all"),
        r.snapshot,
        r.run_id.as_ref().map_or_else(
            || "taken over, no run".to_string(),
            |id| format!("run {id}")
        ),
        r.to.display()
    );
    let _ = writeln!(
        out,
        "  files {} ({}, {} as hard links), directories {}, identical skipped {}, replaced {}, deleted {}",
        r.files_restored,
        human(r.bytes_restored),
        r.hard_links,
        r.dirs_created,
        r.skipped_identical,
        r.overwritten,
        r.deleted
    );
    let _ = writeln!(out, "  took {:.2}s", r.duration_seconds);
    if !r.message.is_empty() {
        let _ = writeln!(out, "  {}", r.message);
    }
    for c in r.conflicts.iter().take(20) {
        errln!("  conflict {}: {}", c.path, c.reason);
    }
    for p in r.problems.iter().take(20) {
        print::problem(p);
    }
    if r.conflicts_total + r.errors > 40 {
        errln!("  … more in the --json report");
    }
}
