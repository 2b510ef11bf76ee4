//! `snapring diff`, `verify` and `history PATH`: the read-only views of a store's
//! snapshots (`snapring::commands::inspect`), printed as lines or JSON. `diff` exits 2
//! when something could not be read, `verify` when a snapshot is damaged.

use std::path::Path;

use snapring::commands::inspect::{Verified, Version};

use super::args::{DiffArgs, HistoryArgs, VerifyArgs};
use super::exit_code::{ExitCode, usage};
use super::print::{self, dash, errln, human, outln};

/// `snapring diff`.
pub fn diff(a: DiffArgs) -> anyhow::Result<ExitCode> {
    check_diff(&a)?;
    let cancel = super::cancel_on_signal();
    let r = snapring::commands::inspect::diff(
        &a.dest,
        &a.from,
        a.to.as_deref(),
        a.against.as_deref(),
        a.one_file_system,
        a.jobs.unwrap_or(0),
        &cancel,
    )?;
    if a.json {
        print::json(&r)?;
    } else {
        let counts = [r.added, r.removed, r.content_changed, r.metadata_changed];
        print::diff_lines(
            (&r.from, &r.to),
            counts,
            &r.differences,
            &r.problems,
            &r.one_fs,
            (&r.not_compared, &r.damaged_manifests),
        );
    }
    if r.interrupted {
        // Never "no differences": what was not reached was not compared.
        if !a.json {
            outln!(
                "{} -> {}: INTERRUPTED: {} entries compared; the differences above are those found so far",
                r.from,
                r.to,
                r.totals.entries_compared
            );
        }
        errln!(
            "snapring: interrupted; the diff is incomplete ({} entries compared), nothing was written",
            r.totals.entries_compared
        );
        return Ok(ExitCode::Incomplete);
    }
    Ok(ExitCode::clean_or_partial(
        r.problems.is_empty() && r.not_compared.is_empty(),
    ))
}

/// `diff` compares two snapshots, or one with a live directory: one of `TO` and
/// `--against`, not both (a usage error, for a store and a repository alike).
pub(super) fn check_diff(a: &DiffArgs) -> anyhow::Result<()> {
    match (&a.to, &a.against) {
        (None, None) => Err(usage!(
            "diff {:?} needs a second snapshot to compare with (diff --dest STORE {:?} NEWER) or --against DIR",
            a.from,
            a.from
        )),
        (Some(to), Some(dir)) => Err(usage!(
            "diff takes a second snapshot ({to:?}) or --against {}, not both",
            snapring::relpath::shown(dir)
        )),
        _ => Ok(()),
    }
}

/// `snapring verify`.
pub fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let cancel = super::cancel_on_signal();
    let v = snapring::commands::inspect::verify(
        &a.dest,
        &a.snapshots,
        a.all,
        a.against.as_deref(),
        a.one_file_system,
        a.jobs.unwrap_or(0),
        &cancel,
    )?;
    if a.json {
        print::json(&v)?;
    } else {
        v.iter().for_each(print_verified);
    }
    if a.all && v.is_empty() {
        // Nothing verified is not a clean verify (as without `--all`).
        errln!(
            "snapring: error: store {}: the store has no snapshots yet; nothing was verified",
            a.dest.display()
        );
        return Ok(ExitCode::Failed);
    }
    if v.iter().any(|x| x.interrupted) {
        let whole = v.iter().filter(|x| !x.interrupted).count();
        let part = v
            .iter()
            .filter(|x| x.interrupted && x.unchecked.is_none())
            .count();
        errln!(
            "snapring: interrupted; {whole} of {} snapshots checked in full{}; what was found so far is reported above, the rest was not checked (verify again to finish)",
            v.len(),
            if part > 0 { ", 1 in part" } else { "" }
        );
        return Ok(ExitCode::Incomplete);
    }
    Ok(ExitCode::clean_or_partial(v.iter().all(|x| x.clean)))
}

/// A verified snapshot: its differences and unreadable files, then its verdict.
pub(super) fn print_verified(x: &Verified) {
    if let Some(why) = &x.unchecked {
        outln!("{}: NOT CHECKED: {why}", x.snapshot);
        return;
    }
    for d in &x.differences {
        outln!(
            "{} {} {}  {}",
            x.snapshot,
            d.change.sign(),
            d.path,
            d.detail.join(", ")
        );
    }
    for (p, e) in &x.problems {
        if x.denied.contains(p) {
            outln!(
                "{} ? {}  not checked: {e} (this user may not read it; verify as root or its owner)",
                x.snapshot,
                p
            );
        } else {
            outln!(
                "{} ? {}  could not be read: {e} (an I/O error, not a checksum mismatch: not checked; verify again, a rerun may read it)",
                x.snapshot,
                p
            );
        }
    }
    for (p, e) in &x.not_checked {
        outln!(
            "{} ? {}  not checked: the manifest is damaged there: {e}",
            x.snapshot,
            p
        );
    }
    // Only entries this user may not read or that could not be read (I/O errors), or
    // under directories the damaged manifest does not cover: not all of it was
    // checked, none found damaged.
    let unchecked_only = !x.clean && x.differences.is_empty() && x.against == "manifest";
    // Against a live tree a difference may be the tree's own change since the backup:
    // it differs, which is not to say the backup is damaged.
    let live = x.against != "manifest" && x.against != "repository";
    outln!(
        "{}: {} {}: {} files hashed ({}); {} corrupt, {} missing, {} unexpected, {} metadata{}",
        x.snapshot,
        match (x.clean, live) {
            _ if x.interrupted => "INTERRUPTED (checked in part) against",
            (true, _) => "clean against",
            (false, false) if unchecked_only && !x.damaged_manifests.is_empty() => {
                "NOT FULLY CHECKED (its manifest is damaged; no other damage found) against"
            }
            (false, false) if unchecked_only && x.unreadable > 0 => {
                "NOT FULLY CHECKED (I/O errors reading it; no damage found) against"
            }
            (false, false) if unchecked_only => "NOT FULLY CHECKED (no damage found) against",
            (false, false) => "DAMAGED against",
            (false, true) => "DIFFERS from",
        },
        x.against,
        x.totals.files_hashed,
        human(x.totals.bytes_hashed),
        x.corrupt,
        x.missing,
        x.unexpected,
        x.metadata,
        match x.unreadable {
            0 => String::new(),
            n => format!(", {n} could not be read (I/O errors, not damage found: verify again)"),
        }
    );
    if let Some(note) = print::one_fs_note(&x.one_fs) {
        outln!("{}: {note}", x.snapshot);
    }
    if let Some(note) =
        print::damaged_manifest_note(x.not_checked.len(), &x.damaged_manifests, "checked")
    {
        outln!("{}: {note}", x.snapshot);
    }
    if x.next_backup_copies > 0 {
        let (n, s) = (x.next_backup_copies, &x.snapshot);
        outln!(
            "{s}: {n} damaged {} recorded: a backup linking from {s} copies {} from the source instead",
            if n == 1 { "entry" } else { "entries" },
            if n == 1 { "it" } else { "them" },
        );
    }
}

/// `snapring history PATH --dest STORE`: every retained version of one path (the
/// other fields of `a` filter catalog runs and do not apply).
pub fn path_history(path: &Path, a: HistoryArgs) -> anyhow::Result<ExitCode> {
    let Some(dest) = a.dest else {
        return Err(usage!(
            "history of a path needs --dest STORE (the store holding the snapshots)"
        ));
    };
    let rel = snapring::restore::parse_path(path, "PATH").map_err(|e| usage!("{e}"))?;
    if rel.is_root() {
        return Err(usage!(
            "history needs a path inside the snapshot (for example users/alice/.profile)"
        ));
    }
    let versions = literal_reading(
        path,
        &rel,
        snapring::commands::inspect::history(&dest, &rel),
        |v| v.kind != "absent",
        &format!("store {}", snapring::relpath::shown(&dest)),
        |l| snapring::commands::inspect::history(&dest, l),
    )?;
    if a.json {
        print::json(&versions)?;
    } else {
        print_versions(&versions);
    }
    Ok(ExitCode::Complete)
}

/// `history PATH` typed with a real `%` in a name (`a%FFb` for the name of those five
/// characters, not `a%25FFb`): its literal reading (`restore::literal_path`) is looked
/// up too, as `restore --path` does. Both readings found (in any snapshot): the escaped
/// reading's history is shown (snapring's spelling: a path copied from its output is
/// found), with a warning on stderr naming the other entry and the spelling that
/// reaches it (it was shown with no word of the other); the literal one alone: the "no
/// snapshot has" error names the spelling to type (it gave no hint). `versions`: the
/// escaped reading's history; `present`: whether a version has the entry.
pub(crate) fn literal_reading<V, E: Into<anyhow::Error>>(
    path: &Path,
    rel: &snapring::relpath::RelPath,
    versions: Result<Vec<V>, E>,
    present: impl Fn(&V) -> bool,
    where_: &str,
    history: impl FnOnce(&snapring::relpath::RelPath) -> Result<Vec<V>, E>,
) -> anyhow::Result<Vec<V>> {
    let Some(l) = snapring::restore::literal_path(path) else {
        return versions.map_err(Into::into);
    };
    if !history(&l).is_ok_and(|h| h.iter().any(&present)) {
        return versions.map_err(Into::into);
    }
    match versions {
        Ok(v) if v.iter().any(&present) => {
            errln!(
                "snapring: warning: {}",
                snapring::restore::ambiguous_path("PATH", path, &l, where_)
            );
            Ok(v)
        }
        Ok(_) => Err(anyhow::anyhow!(
            "no snapshot has {rel}; {}",
            snapring::restore::literal_hint(&l)
        )),
        Err(e) => Err(anyhow::anyhow!(
            "{}; {}",
            e.into(),
            snapring::restore::literal_hint(&l)
        )),
    }
}

/// One line per snapshot, newest first.
fn print_versions(versions: &[Version]) {
    outln!(
        "{:<12} {:<21} {:<9} {:<10} {:>10} {:<16} MTIME",
        "SNAPSHOT",
        "TAKEN",
        "CHANGE",
        "KIND",
        "SIZE",
        "HASH"
    );
    for x in versions {
        outln!(
            "{:<12} {:<21} {:<9} {:<10} {:>10} {:<16} {}",
            x.snapshot,
            x.taken_at,
            x.change,
            x.kind,
            x.size.map(|s| s.to_string()).unwrap_or_else(dash),
            x.hash
                .as_ref()
                .map(|h| h[..16].to_string())
                .unwrap_or_else(dash),
            x.mtime.clone().unwrap_or_else(dash)
        );
    }
}
