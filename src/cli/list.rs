//! `snapring list`: the snapshots of a store, newest first, as a table or JSON (the
//! library repairs an interrupted run first and, with `--space`, walks every snapshot).

use snapring::commands::list::Listed;

use super::args::ListArgs;
use super::exit_code::ExitCode;
use super::print::{self, dash, human, outln};

/// `snapring list`.
pub fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let snaps = snapring::commands::list::list(&a.dest, a.space, a.jobs.unwrap_or(0))?;
    if a.json {
        print::json(&snaps)?;
    } else {
        print_table(&snaps, a.space);
    }
    Ok(ExitCode::Complete)
}

/// One line per snapshot; without `--space`, a note on what UNIQUE means.
fn print_table(snaps: &[Listed], space: bool) {
    outln!(
        "{:<12} {:>4} {:<24} {:<21} {:<10} {:>9} {:>10} {:>10}",
        "SNAPSHOT",
        "SLOT",
        "RUN",
        "TAKEN",
        "STATUS",
        "FILES",
        "SIZE",
        "UNIQUE"
    );
    for s in snaps {
        outln!(
            "{:<12} {:>4} {:<24} {:<21} {:<10} {:>9} {:>10} {:>10}",
            s.name,
            s.slot,
            s.id.clone().unwrap_or_else(|| if s.taken_over {
                "(taken over)".into()
            } else {
                dash()
            }),
            s.taken_at,
            match (&s.differs, s.status, &s.record_unreadable, &s.damaged) {
                (Some(_), _, _, _) => "DIFFERS*".to_string(),
                (None, _, _, Some(_)) => "DAMAGED*".to_string(),
                (None, None, Some(_), None) => "unknown*".to_string(),
                (None, x, _, None) => x.map(|x| x.as_str().to_string()).unwrap_or_else(dash),
            },
            s.files.map(|f| f.to_string()).unwrap_or_else(dash),
            s.bytes.map(human).unwrap_or_else(dash),
            s.unique_bytes.map(human).unwrap_or_else(dash)
        );
    }
    if snaps.iter().any(|s| s.taken_over) {
        outln!(
            "(taken over: made by another tool such as rsnapshot; no manifest, compared by stat, TAKEN is its directory's mtime)"
        );
    }
    for s in snaps {
        if let Some(why) = &s.differs {
            outln!(
                "(*{}: the store was copied, or its snapshot state damaged, and this tree differs from its manifest ({why}); `snapring verify --dest DEST {}` names every difference, and a backup compares with it by stat)",
                s.name,
                s.name
            );
        }
    }
    for s in snaps.iter().filter(|s| s.differs.is_none()) {
        if let Some(d) = &s.damaged {
            outln!(
                "(*{}: verify found {} damaged {} on {} (content or metadata not as recorded at backup, or unreadable); `snapring verify --dest DEST {}` names them, a restore reports each, a backup copies them from the source instead of linking them)",
                s.name,
                d.entries,
                if d.entries == 1 { "entry" } else { "entries" },
                d.verified_at,
                s.name
            );
        }
    }
    for s in snaps.iter().filter(|s| s.differs.is_none()) {
        if let Some(why) = &s.record_unreadable {
            outln!(
                "(*{}: its run record cannot be read, so its status, files and size are unknown: {why})",
                s.name
            );
        }
    }
    if !snaps.is_empty() && !space {
        outln!("(UNIQUE: the space only that snapshot uses; add --space to compute it)");
    }
}
