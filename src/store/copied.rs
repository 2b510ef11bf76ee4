//! Records of a copied store. `snapshots.json` names each snapshot's root directory by
//! inode, so that a directory renamed or replaced by hand never inherits another's
//! record. A store copied with `cp -a`, restored from a tar or moved to a new disk keeps
//! every name and every byte but gets new inodes, so no record matched any more: every
//! snapshot read as a tree without a manifest, and the first backup dropped all the old
//! records and deleted their manifests as orphans.
//!
//! A record whose inode is gone from the store is now kept for the directory of its
//! name when that directory's inode has no record, and the whole tree matches the
//! record's manifest: every name, type, size, mtime (ns), mode, owner, symlink target,
//! device number and xattr digest, and the root's mode and owner. Safe because a match
//! proves the manifest describes that tree: linking an unchanged source file from it on
//! the manifest's word is then as safe as comparing the source with the tree by stat,
//! the fallback it replaces. A renamed or swapped directory keeps its inode and so its
//! own record; a tree that differs anywhere from the manifest is not trusted by a
//! writer.
//!
//! Readers keep such records in memory. A writer (`Store::repair`, under the lock)
//! makes them permanent: it writes `manifests/<id>.copied` (so the manifest's source
//! inode numbers and ctimes, which may belong to a source that moved too, are no longer
//! trusted; see `manifest::Reader::source_ids`), then `snapshots.json` with the new
//! inodes.
//!
//! A tree that differs from the manifest of the record of its name (a bit flipped with
//! the mtime moved, a `chmod`, a file lost by the copy; or a directory replaced or
//! swapped by hand) is read two ways. A writer (a `Store` from `open`) does not trust
//! the record: a backup compares the source with that tree by stat, as with a tree
//! taken over, and links nothing on the manifest's word (`Snapshot::rec` is `None`),
//! but copies what `verify` found damaged in it (`repo::Previous::damaged`).
//! A reader (`open_read`: restore, verify, diff, list, history, copy) is given the record
//! and its manifest all the same (`Snapshot::differs` says why): each of them checks
//! the tree against the manifest and reports every mismatch as damage (verify names
//! each, restore reports names and types that disagree and content that fails its
//! checksum, a copy leaves them out), so the manifest can only make a reader flag more,
//! never trust more. Read as a tree without a manifest instead, a copy with one changed
//! file restored `complete` with its bit rot and could not be verified at all. A
//! directory replaced by hand under the record's name is then reported as damaged
//! against that record, which is what it is as far as the store can tell.
//!
//! Finding that a tree differs walks the whole of it (`matches_manifest`), and every
//! command lists the snapshots (`snapring serve` on each request), so the verdict is
//! kept: a writer (`keep_copied_records` from `repair`, and `publish`, under the lock)
//! writes the record with `SnapRec::differs` (the first difference, when found, and
//! the directory's inode and birth time) and `ino` 0, and keeps it so as the snapshot
//! rotates, so that a backup does not lose the manifest readers check the copy against.
//! `Store::snapshots` finds such a record by the inode in `differs` (as `by_ino`), or,
//! the store copied again, by name (`copied_record`), and never walks the tree again:
//! the record stays untrusted by writers for the snapshot's lifetime, even if the tree
//! is put back as recorded (the next backups make new, trusted snapshots; `verify`
//! checks the tree against the manifest each time it is run, at the user's asking).
//! `ino` 0 matches no directory, so a snapring that does not know `differs` (it is
//! ignored, not refused: `SnapRec` does not deny unknown fields) checks the tree by
//! name as before and does not trust it either. Readers write nothing: until a writer
//! has run, each reader walks such a tree once (per process: `readers_checked`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use super::{Differs, SnapRec, State, Store};
use crate::compare;
use crate::error::{Ctx, Result};
use crate::fsx::{self, Meta, b};
use crate::manifest;
use crate::snapshot::TreeReader;

/// (name, inode, run id) -> whether the tree matched that run's manifest (`Err`: the
/// first difference).
pub(super) type Checked = Mutex<HashMap<(String, u64, String), std::result::Result<(), String>>>;

/// [`Checked`] of each store, by its root's (device, inode).
type ByStore = HashMap<(u64, u64), Arc<Checked>>;

/// The verdicts of readers, one [`Checked`] per store (its root's device and inode)
/// shared by every `Store` that `open_read` opens in this process, so that a long-lived
/// reader (`snapring serve` opens the store on each request) walks a copied tree once,
/// not once a request, before any writer has recorded the verdict. A writer keeps its
/// own (it records the verdict itself). A tree changed while such a process runs keeps
/// its first verdict there until a writer records one: readers read it against its
/// manifest either way, so only `list`'s `DIFFERS*` line can be behind.
pub(super) fn readers_checked(dev: u64, ino: u64) -> Arc<Checked> {
    static SHARED: OnceLock<Mutex<ByStore>> = OnceLock::new();
    SHARED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((dev, ino))
        .or_default()
        .clone()
}

impl Store {
    /// The record to keep for the snapshot directory `name` (now at `at`, with stat
    /// `m`), which no record names by inode; `present`: every snapshot directory's inode.
    /// `Err`: the record of its name, whose tree differs from its manifest, and why
    /// (given to readers only: see the module's comment).
    pub(super) fn copied_record(
        &self,
        state: &State,
        name: &str,
        at: &str,
        m: &Meta,
        present: &HashSet<u64>,
    ) -> Option<std::result::Result<SnapRec, (SnapRec, String)>> {
        let r = state
            .snapshots
            .iter()
            .find(|r| r.name == name && !present.contains(&r.dir_ino()))?;
        let btime = super::birth(&self.root.join(at));
        if let Some(d) = &r.differs {
            // Found to differ before, in another directory (the store was copied
            // again): it still does, as far as the store can tell; not walked again.
            tracing::debug!(
                "{name}: its record was found to differ from run {}'s manifest ({}); kept so for inode {}",
                r.id,
                d.why,
                m.ino
            );
            let why = format!("{}; found {}", d.why, d.found_at);
            let differs = Some(Differs {
                ino: m.ino,
                btime,
                ..d.clone()
            });
            return Some(Err((
                SnapRec {
                    differs,
                    ..r.clone()
                },
                why,
            )));
        }
        let readers = self.for_readers;
        let ok = self.matches_once(name, m.ino, &r.id, at, |ok| match ok {
            Ok(()) => tracing::info!(
                "{name}: the store was copied (its record names inode {}, it has {}); its tree matches run {}'s manifest, so the record is kept",
                r.ino,
                m.ino,
                r.id
            ),
            Err(why) if readers => tracing::warn!(
                "{name}: its record names inode {} (it has {}) and its tree does not match run {}'s manifest ({why}); it is read against that manifest, every difference reported as damage (`snapring verify` names them), and a backup compares with it by stat",
                r.ino,
                m.ino,
                r.id
            ),
            Err(why) => tracing::warn!(
                "{name}: its record names inode {} (it has {}) and its tree does not match run {}'s manifest ({why}); a backup compares with it by stat, as with a tree without a manifest",
                r.ino,
                m.ino,
                r.id
            ),
        });
        Some(match ok {
            Ok(()) => Ok(SnapRec {
                ino: m.ino,
                btime,
                ..r.clone()
            }),
            Err(why) => {
                // The verdict, for a writer to keep (`publish`, `keep_copied_records`).
                let found_at = crate::util::now_rfc3339();
                let shown = format!("{why}; found {found_at}");
                let differs = Some(Differs {
                    why,
                    found_at,
                    ino: m.ino,
                    btime,
                });
                let rec = SnapRec {
                    ino: 0,
                    btime: None,
                    differs,
                    ..r.clone()
                };
                Err((rec, shown))
            }
        })
    }

    /// Whether the snapshot directory `name` (inode `ino`, now at `at`) matches run
    /// `id`'s manifest (`matches_manifest`), checked once per (name, inode, run) for the
    /// life of this `Store`; `log` sees the result of the first check.
    pub(super) fn matches_once(
        &self,
        name: &str,
        ino: u64,
        id: &str,
        at: &str,
        log: impl FnOnce(&std::result::Result<(), String>),
    ) -> std::result::Result<(), String> {
        let key = (name.to_string(), ino, id.to_string());
        let cached = self
            .checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        cached.unwrap_or_else(|| {
            let ok = self.matches_manifest(at, id);
            log(&ok);
            self.checked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, ok.clone());
            ok
        })
    }

    /// Whether the tree at `at` (relative to the store) is what run `id`'s manifest
    /// records, in every field a backup decides by; `Err` says the first difference.
    fn matches_manifest(&self, at: &str, id: &str) -> std::result::Result<(), String> {
        let mf = manifest::Reader::open(&self.meta.join("manifests"), id)
            .map_err(|e| format!("manifest unusable: {e}"))?;
        let path = self.root.join(at);
        let fd = fsx::open_dir(&path).map_err(|e| format!("open: {e}"))?;
        let root = mf.root().map_err(|e| e.to_string())?;
        let st = fsx::fstat(b(&fd)).map_err(|e| format!("stat: {e}"))?;
        // A store that keeps no owners gave every file its own (`manifest::owners_marker`).
        let owner = mf.owners_held.unwrap_or((root.uid, root.gid));
        if (st.perm, st.uid, st.gid) != (root.perm, owner.0, owner.1) {
            return Err("the root's mode or owner differs".into());
        }
        let opts = compare::Options {
            checksum: false,
            dir_times: true,
            jobs: crate::concurrency::resolve(0, &[&self.root]),
            stay_on: None,
            excludes: None,
            owners: mf.owners_held.is_none(),
            time_granularity: mf.times_held.unwrap_or(0),
            lossy_link_targets: false,
        };
        let out = compare::compare(
            &TreeReader::recorded(b(&fd), Some(&mf)),
            &TreeReader::tree(b(&fd)),
            &opts,
            &AtomicBool::new(false),
        );
        if let Some(d) = out.differences.first() {
            return Err(format!(
                "{} differences, first {} {}: {}",
                out.differences.len(),
                d.path,
                d.change.sign(),
                d.detail.join(", ")
            ));
        }
        if let Some((p, e)) = out.problems.first().or(out.not_compared.first()) {
            return Err(format!("{p}: {e}"));
        }
        Ok(())
    }

    /// Makes the kept records of copied snapshots permanent: the `.copied` marker of
    /// each manifest first, then `snapshots.json` with the new inodes, and with the
    /// verdict on each tree found to differ from its manifest (`SnapRec::differs`), so
    /// that no command walks it again. Call with the lock held (from `repair`). Returns
    /// what it did.
    pub(super) fn keep_copied_records(&self) -> Result<Vec<String>> {
        let snaps = self.snapshots()?;
        let copied: Vec<SnapRec> = snaps
            .iter()
            .filter(|s| s.copied)
            .filter_map(|s| s.rec.clone())
            .collect();
        let mut state = self.read_state()?;
        // Verdicts not yet in the state as they are (newly found, or in a directory
        // copied again).
        let differing: Vec<SnapRec> = snaps
            .into_iter()
            .filter_map(|s| s.differs.map(|(_, r)| r))
            .filter(|r| !state.snapshots.contains(r))
            .collect();
        if copied.is_empty() && differing.is_empty() {
            return Ok(vec![]);
        }
        let mdir = self.meta.join("manifests");
        for r in &copied {
            let p = manifest::copied_marker(&mdir, &r.id);
            let body = serde_json::json!({
                "format": 1,
                "snapshot": r.name,
                "run": r.id,
                "ino": r.ino,
                "found_at": crate::util::now_rfc3339(),
            });
            crate::util::write_atomic(&p, &serde_json::to_vec_pretty(&body).expect("json"))
                .ctx("write", &p)?;
        }
        for r in &copied {
            match state
                .snapshots
                .iter_mut()
                .find(|s| r.id == s.id && r.name == s.name)
            {
                Some(s) => s.ino = r.ino,
                // Recovered from a damaged state (`recover.rs`).
                None => state.snapshots.push(r.clone()),
            }
        }
        for r in &differing {
            match state
                .snapshots
                .iter_mut()
                .find(|s| r.id == s.id && r.name == s.name)
            {
                Some(s) => *s = r.clone(),
                None => state.snapshots.push(r.clone()),
            }
        }
        self.write_state(&state)?;
        Ok(copied
            .iter()
            .map(|r| {
                format!(
                    "kept the record of {} (run {}) in a copied store or a damaged state: its tree matches its manifest",
                    r.name, r.id
                )
            })
            .chain(differing.iter().map(|r| {
                format!(
                    "kept the record of {} (run {}) in a copied store for readers only: its tree differs from its manifest ({})",
                    r.name,
                    r.id,
                    r.differs.as_ref().map_or("", |d| d.why.as_str())
                )
            }))
            .collect())
    }
}
