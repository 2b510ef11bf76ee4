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

use std::collections::HashSet;

use super::{SnapRec, Store};
use crate::fsx::Meta;
use crate::report::Status;

/// Runs tried per directory before it is left unrecorded.
const TRIES: usize = 4;

/// The published runs that may own a snapshot directory, newest first, and those
/// already given to one.
pub(super) struct Recovery {
    runs: Vec<(String, String, String)>,
    used: HashSet<String>,
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
                runs.push((id, r.label, r.finished_at.unwrap_or_default()));
            }
        }
        runs.sort_by(|a, b| b.2.cmp(&a.2));
        Recovery {
            runs,
            used: HashSet::new(),
        }
    }

    /// The record of the snapshot directory `name` (label `label`, now at `at`, stat
    /// `m`) recovered from the run whose manifest its tree matches, if one does.
    pub(super) fn recovered_record(
        &self,
        rec: &mut Recovery,
        name: &str,
        label: &str,
        at: &str,
        m: &Meta,
    ) -> Option<SnapRec> {
        let candidates: Vec<(String, String)> = rec
            .runs
            .iter()
            .filter(|(id, l, _)| l == label && !rec.used.contains(id))
            .take(TRIES)
            .map(|(id, _, t)| (id.clone(), t.clone()))
            .collect();
        for (id, finished_at) in candidates {
            let ok = self.matches_once(name, m.ino, &id, at, |ok| {
                if ok.is_ok() {
                    tracing::info!(
                        "{name}: the snapshot state was damaged; the tree matches run {id}'s manifest, so that record is recovered"
                    );
                }
            });
            if ok.is_ok() {
                rec.used.insert(id.clone());
                return Some(SnapRec {
                    name: name.to_string(),
                    id,
                    ino: m.ino,
                    finished_at,
                    btime: super::birth(&self.root.join(at)),
                    differs: None,
                });
            }
        }
        tracing::warn!(
            "{name}: the snapshot state was damaged and no run's manifest matches its tree; it is read as a tree without a manifest"
        );
        None
    }
}
