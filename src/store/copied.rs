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
//! own record; a tree that differs anywhere from the manifest stays unrecorded.
//!
//! Readers keep such records in memory. A writer (`Store::repair`, under the lock)
//! makes them permanent: it writes `manifests/<id>.copied` (so the manifest's source
//! inode numbers and ctimes, which may belong to a source that moved too, are no longer
//! trusted; see `manifest::Reader::source_ids`), then `snapshots.json` with the new
//! inodes.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use super::{SnapRec, State, Store};
use crate::compare;
use crate::error::{Ctx, Result};
use crate::fsx::{self, Meta, b};
use crate::manifest;
use crate::snapshot::TreeReader;

/// (name, inode, run id) -> whether the tree matched that run's manifest.
pub(super) type Checked = Mutex<HashMap<(String, u64, String), bool>>;

impl Store {
    /// The record to keep for the snapshot directory `name` (now at `at`, with stat
    /// `m`), which no record names by inode; `present`: every snapshot directory's inode.
    pub(super) fn copied_record(
        &self,
        state: &State,
        name: &str,
        at: &str,
        m: &Meta,
        present: &HashSet<u64>,
    ) -> Option<SnapRec> {
        let r = state
            .snapshots
            .iter()
            .find(|r| r.name == name && !present.contains(&r.ino))?;
        let ok = self.matches_once(name, m.ino, &r.id, at, |ok| match ok {
            Ok(()) => tracing::info!(
                "{name}: the store was copied (its record names inode {}, it has {}); its tree matches run {}'s manifest, so the record is kept",
                r.ino,
                m.ino,
                r.id
            ),
            Err(why) => tracing::warn!(
                "{name}: its record names inode {} (it has {}) and its tree does not match run {}'s manifest ({why}); it is read as a tree without a manifest",
                r.ino,
                m.ino,
                r.id
            ),
        });
        ok.then(|| SnapRec {
            ino: m.ino,
            btime: super::birth(&self.root.join(at)),
            ..r.clone()
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
    ) -> bool {
        let key = (name.to_string(), ino, id.to_string());
        let cached = self
            .checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        cached.unwrap_or_else(|| {
            let ok = self.matches_manifest(at, id);
            log(&ok);
            self.checked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, ok.is_ok());
            ok.is_ok()
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
    /// each manifest first, then `snapshots.json` with the new inodes. Call with the
    /// lock held (from `repair`). Returns what it did.
    pub(super) fn keep_copied_records(&self) -> Result<Vec<String>> {
        let copied: Vec<SnapRec> = self
            .snapshots()?
            .into_iter()
            .filter(|s| s.copied)
            .filter_map(|s| s.rec)
            .collect();
        if copied.is_empty() {
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
        let mut state = self.read_state()?;
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
        self.write_state(&state)?;
        Ok(copied
            .iter()
            .map(|r| {
                format!(
                    "kept the record of {} (run {}) in a copied store or a damaged state: its tree matches its manifest",
                    r.name, r.id
                )
            })
            .collect())
    }
}
