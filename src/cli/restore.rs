//! `snapring restore`: turns the flags (and, with `--config`, a job's store, catalog and
//! notifiers) into `snapring::restore::RestoreOptions`, runs the restore as a run
//! (`snapring::job::restore`: run id, catalog row, log, notifications) and prints its
//! report (a summary, conflicts and problems, or JSON). The exit code is the restore's
//! status.

use std::io::IsTerminal;

use std::path::PathBuf;

use snapring::config;
use snapring::job::{CatalogTarget, RestoreRun};
use snapring::notify::NotifierConfig;
use snapring::report::Status;
use snapring::restore::{Mode, RestoreOptions, RestoreReport};

use super::args::RestoreArgs;
use super::catalog_choice::CatalogChoice;
use super::exit_code::{ExitCode, usage};
use super::print::{self, errln, human};

/// `snapring restore`.
pub fn restore(a: RestoreArgs, cat: &CatalogChoice) -> anyhow::Result<ExitCode> {
    let json = a.json;
    let job = for_job(a.config.as_deref(), a.job.as_deref(), cat)?;
    let opts = options(a, job.store)?;
    // A snapshot the store does not have is a mistake on the command line, refused as
    // one (exit 64) before a run starts, as `copy` refuses it: recorded, it was a
    // `failed` restore that notified (paged) and counted in `stats`. A store that
    // cannot be opened (not mounted, gone), or has no snapshot yet, is the restore's
    // own failure: recorded, as the run says it.
    if let Ok(store) = snapring::store::Store::open_read(&opts.store)
        && let Ok(Some(why)) = store.names_nothing(&opts.snapshot)
    {
        return Err(usage!("{why}"));
    }
    let cancel = super::cancel_on_signal();
    let run = RestoreRun {
        catalog: job.catalog.as_ref(),
        job: job.name,
        notifiers: &job.notifiers,
        notify_success: job.notify_success,
    };
    let r = snapring::job::restore(&opts, &run, &cancel)?;
    if json {
        print::json(&r)?;
    } else {
        print_summary(&r);
    }
    Ok(ExitCode::from(r.status))
}

/// What a restore or a copy takes from its job (none without `--config`): the store,
/// the catalog (as a backup of the job chooses it), the notifiers.
pub(super) struct ForJob {
    pub name: Option<String>,
    pub store: Option<PathBuf>,
    pub catalog: Option<CatalogTarget>,
    pub notifiers: Vec<(String, NotifierConfig)>,
    pub notify_success: bool,
}

pub(super) fn for_job(
    config: Option<&std::path::Path>,
    job: Option<&str>,
    cat: &CatalogChoice,
) -> anyhow::Result<ForJob> {
    let target = |path| CatalogTarget {
        path,
        on_nfs: cat.on_nfs,
    };
    let Some(cfg_path) = config else {
        return Ok(ForJob {
            name: None,
            store: None,
            catalog: cat.for_config(None).map(target),
            notifiers: Vec::new(),
            notify_success: false,
        });
    };
    let cfg = config::load(cfg_path)?;
    let (name, j) = cfg.pick(job).map_err(super::config::job_usage)?;
    let store = match (&j.dest, &j.folder) {
        (Some(d), Some(f)) => Some(
            d.join(
                snapring::relpath::RelPath::new(f.as_bytes())
                    .map_err(|e| anyhow::anyhow!("job {name}: folder: {e}"))?
                    .as_path(),
            ),
        ),
        (d, _) => d.clone(),
    };
    Ok(ForJob {
        notifiers: cfg.notifiers_of(&name, &j)?,
        notify_success: j.notify_success.unwrap_or(false),
        name: Some(name),
        store,
        catalog: cat.for_config(cfg.catalog.clone()).map(target),
    })
}

/// The restore's options from the flags; `--path` must lie inside the snapshot.
/// `--dest` wins over the job's store.
fn options(a: RestoreArgs, job_store: Option<PathBuf>) -> anyhow::Result<RestoreOptions> {
    let Some(store) = a.dest.clone().or(job_store) else {
        anyhow::bail!("no store: give --dest, or a job with dest (and folder) in --config");
    };
    let path = match &a.path {
        Some(p) => {
            let rel = snapring::restore::parse_path(p, "--path").map_err(|e| usage!("{e}"))?;
            (!rel.is_root()).then_some(rel)
        }
        None => None,
    };
    // Named absolute in the report, the catalog and `show` (as typed, a relative path
    // said nothing once the working directory was gone); resolved as it would be.
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    Ok(RestoreOptions {
        store: absolute(store),
        snapshot: a.snapshot,
        to: absolute(a.to),
        flat: a.flat && path.is_some(),
        path_literal: a.path.as_deref().and_then(snapring::restore::literal_path),
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
        plan_on_stderr: a.json,
        jobs: a.jobs.unwrap_or(0),
        progress: !a.no_progress && !a.json && !a.dry_run && std::io::stderr().is_terminal(),
    })
}

/// The counts (stdout, or stderr for a dry run), then up to 20 conflicts and 20
/// problems on stderr.
fn print_summary(r: &RestoreReport) {
    let mut out = print::summary_stream(r.dry_run);
    let what = format!(
        "{} of {} ({}) into {}{}",
        r.path.as_deref().unwrap_or("all"),
        r.snapshot,
        r.run_id.as_ref().map_or_else(
            || "taken over, no run".to_string(),
            |id| format!("run {id}")
        ),
        snapring::relpath::shown(&r.to),
        r.id.as_deref()
            .map(|id| format!(" (restore {id})"))
            .unwrap_or_default()
    );
    // What was restored and what not: a restore that stopped did not restore "all".
    let headline = match (r.dry_run, r.status) {
        (true, _) | (false, Status::Complete) => format!("restored {what}"),
        (false, Status::Partial) => {
            format!("restored {what}, except what the conflicts and problems below name")
        }
        (false, Status::Failed) => {
            format!("stopped restoring {what}: restored only what is counted below, not the rest")
        }
        (false, _) => format!(
            "interrupted restoring {what}: restored only what is counted below, not the rest"
        ),
    };
    let _ = writeln!(
        out,
        "{}{}: {headline}",
        if r.dry_run { "dry run, " } else { "" },
        r.status.as_str(),
    );
    let _ = writeln!(
        out,
        "  files {} ({}, {} as hard links), symlinks and special files {}, directories {}, identical skipped {}, replaced {}, deleted {}{}",
        r.files_restored,
        human(r.bytes_restored),
        r.hard_links,
        r.others_restored,
        r.dirs_created,
        r.skipped_identical,
        r.overwritten,
        r.deleted,
        match r.kept_excluded {
            0 => String::new(),
            n => format!(" (kept {n} the backup excluded)"),
        }
    );
    if r.temporary_removed > 0 {
        let _ = writeln!(
            out,
            "  temporary files a stopped restore left, deleted: {}",
            r.temporary_removed
        );
    }
    let _ = writeln!(out, "  took {:.2}s", r.duration_seconds);
    if !r.message.is_empty() {
        let _ = writeln!(out, "  {}", r.message);
    }
    for w in &r.warnings {
        errln!("  warning: {w}");
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
