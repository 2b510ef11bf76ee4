//! Records recovered from a damaged `snapshots.json`. The state file names each
//! snapshot's run (and so its manifest); garbage in it (a bad disk, an editor, a stray
//! `>`) used to leave every snapshot unrecorded, and the next backup rewrote the state
//! with its own record only and deleted the other manifests as orphans.
//!
//! Manifests are now deleted only with their snapshots (`repo.rs`), and the records are
//! recovered: each run record names its label and, with its manifest, can be matched
//! against the snapshot directories of that label. A directory gets the record of a run
//! whose manifest its whole tree matches (`Store::matches_manifest`, as for a copied
//! store), so a recovered record is as trustworthy as a copied one, and is kept the same
//! way (`keep_copied_records`: the `.copied` marker, then the state). Directories are
//! tried newest slot first against runs newest first, so a regular rotation pairs on
//! the first try; each directory tries at most `TRIES` runs.
//!
//! A tree that matches no manifest is damaged or changed (a bit flipped, a `chmod`),
//! which is no reason to lose its record: that is when a reader most needs the
//! manifest. Its run is then found by its record instead: the first of the runs tried
//! whose run record's start and finish enclose the directory's birth time (the staging
//! directory is made by the run), or, only where the file system keeps no birth time,
//! the first run tried, the one a regular rotation pairs it with. A known birth time
//! no run encloses pairs with none (since session 47: a tree taken over from another
//! tool was paired with a leftover run of its label, and a restore applied that run's
//! manifest, its names and metadata, to it; a staging tree a later run took over is
//! now left unrecorded, the safe side). It is kept as a copied store's tree that
//! differs from its manifest (`copied.rs`): readers read it against that manifest and
//! report every difference as damage (a restore ends `partial`), writers do not trust
//! it (a backup compares with it by stat). A wrong pairing can only make a reader flag
//! more, never trust more. Before, such a tree was read as one without a manifest, and
//! a restore returned its bit rot as `complete`. A directory for which no run is left
//! at all is marked (`Snapshot::unrecorded`): a restore of it says its content is
//! unchecked and ends `partial`. Not one whose directory is older than the store's
//! `.snapring` (both birth times known): a tree taken over from another tool, which
//! never had a manifest, restores `complete` as with an intact state.

use std::collections::HashSet;

use super::{Differs, SnapRec, Store};
use crate::fsx::Meta;
use crate::report::Status;

/// Runs tried per directory before it is left unrecorded.
const TRIES: usize = 4;

/// The published runs that may own a snapshot directory, newest first, and those
/// already given to one.
pub(super) struct Recovery {
    /// (id, label, finished_at, started_at)
    runs: Vec<(String, String, String, String)>,
    used: HashSet<String>,
}

/// Whether `t` (a birth time) lies between the RFC 3339 times `from` and `to`, give or
/// take a second (the file system's clock and the run's may round differently).
fn within(t: (i64, u32), from: &str, to: &str) -> bool {
    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|d| d.timestamp())
    };
    match (at(from), at(to)) {
        (Some(a), Some(b)) => a - 1 <= t.0 && t.0 <= b + 1,
        _ => false,
    }
}

impl Store {
    /// The runs a damaged state may have named: published (complete or partial) runs
    /// whose manifest is still here, as (id, label, finished_at), newest first.
    pub(super) fn recovery(&self) -> Recovery {
        let mdir = self.meta.join("manifests");
        let mut runs = Vec::new();
        let ids = std::fs::read_dir(self.meta.join("runs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string));
        for id in ids {
            let Ok(Some(r)) = self.read_run(&id) else {
                continue;
            };
            let published = matches!(r.status, Status::Complete | Status::Partial);
            if published
                && !r.dry_run
                && r.snapshot.is_some()
                && mdir.join(format!("{id}.mf")).exists()
            {
                runs.push((id, r.label, r.finished_at.unwrap_or_default(), r.started_at));
            }
        }
        runs.sort_by(|a, b| b.2.cmp(&a.2));
        Recovery {
            runs,
            used: HashSet::new(),
        }
    }

    /// The record of the snapshot directory `name` (label `label`, now at `at`, stat
    /// `m`) recovered from the run whose manifest its tree matches, if one does
    /// (`Ok`); else from the run its record pairs it with, kept as a tree that differs
    /// from that run's manifest (`Err`: the record, with `differs` set, and why, as
    /// `copied_record` gives it; see the module's comment). `None`: no run is left.
    pub(super) fn recovered_record(
        &self,
        rec: &mut Recovery,
        name: &str,
        label: &str,
        at: &str,
        m: &Meta,
    ) -> Option<std::result::Result<SnapRec, (SnapRec, String)>> {
        let candidates: Vec<(String, String, String)> = rec
            .runs
            .iter()
            .filter(|(id, l, ..)| l == label && !rec.used.contains(id))
            .take(TRIES)
            .map(|(id, _, t, s)| (id.clone(), t.clone(), s.clone()))
            .collect();
        let mut first_difference = None;
        for (id, finished_at, _) in &candidates {
            let (id, finished_at) = (id.clone(), finished_at.clone());
            let ok = self.matches_once(name, m.ino, &id, at, |ok| {
                if ok.is_ok() {
                    tracing::info!(
                        "{name}: the snapshot state was damaged; the tree matches run {id}'s manifest, so that record is recovered"
                    );
                }
            });
            match ok {
                Ok(()) => {
                    rec.used.insert(id.clone());
                    return Some(Ok(SnapRec {
                        name: name.to_string(),
                        id,
                        ino: m.ino,
                        finished_at,
                        btime: super::birth(&self.root.join(at)),
                        differs: None,
                    }));
                }
                Err(why) => {
                    first_difference.get_or_insert((id, why));
                }
            }
        }
        // No tree matches: the run is found by its record, and the tree read against
        // its manifest (readers) or by stat (writers).
        let btime = super::birth(&self.root.join(at));
        let by_time =
            btime.and_then(|t| candidates.iter().find(|(_, to, from)| within(t, from, to)));
        // The rotation's order only where the birth time is unknown: a directory made
        // while no run of its label ran (a tree taken over from another tool) is no
        // run's, and paired with one a restore would apply that run's manifest to it.
        let fallback = btime.is_none().then(|| candidates.first()).flatten();
        let Some((id, finished_at, _)) = by_time.or(fallback) else {
            tracing::warn!(
                "{name}: the snapshot state was damaged and no run of label {label} with a manifest is left to pair it with{}; it is read as a tree without a manifest",
                if btime.is_some() && !candidates.is_empty() {
                    " (its directory was made while none of them ran)"
                } else {
                    ""
                }
            );
            return None;
        };
        rec.used.insert(id.clone());
        let how = if by_time.is_some() {
            "its directory was made while that run ran"
        } else {
            "the run a regular rotation pairs it with"
        };
        let diff = match &first_difference {
            Some((i, why)) if i == id => why.clone(),
            _ => self
                .matches_once(name, m.ino, id, at, |_| {})
                .err()
                .unwrap_or_else(|| "differs".into()),
        };
        let why = format!(
            "the snapshot state was damaged and its tree matches no run's manifest; paired with run {id} by its record ({how}): {diff}"
        );
        tracing::warn!(
            "{name}: {why}; it is read against that manifest, every difference reported as damage (`snapring verify` names them), and a backup compares with it by stat"
        );
        let found_at = crate::util::now_rfc3339();
        let shown = format!("{why}; found {found_at}");
        let record = SnapRec {
            name: name.to_string(),
            id: id.clone(),
            ino: 0,
            finished_at: finished_at.clone(),
            btime: None,
            differs: Some(Differs {
                why,
                found_at,
                ino: m.ino,
                btime,
            }),
        };
        Some(Err((record, shown)))
    }
}
