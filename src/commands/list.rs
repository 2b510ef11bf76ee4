//! `snapring list`: the snapshots of a store, newest first, with the run that made each.
//! A store that needs a repair (an interrupted rotation, a dead run still `running`) is
//! repaired first where it can be written, so this is also the cheapest way to repair a
//! store; a healthy store is only read. One whose rotation cannot be rolled forward now
//! (a full file system) is listed as rolling it forward will leave it, with a warning.

use std::path::Path;

use serde::Serialize;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::Result;
use crate::fsx::{self, Kind, b};
use crate::manifest;
use crate::relpath::RelPath;
use crate::report::Status;
use crate::store::Store;
use crate::store::select::Selected;
use crate::traverse::{self, Dir, Opened, Step, Visitor};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Listed {
    pub name: String,
    pub label: String,
    pub slot: u32,
    /// The run that made it; `None` for a tree taken over from rsnapshot/cp -a.
    pub id: Option<String>,
    /// Made by another tool (rsnapshot, EFSBackup's `cp -al` + rsync) or by hand: no run
    /// record and no manifest, so it is compared by stat and `taken_at` is its
    /// directory's mtime.
    pub taken_over: bool,
    /// The store was copied and this snapshot's tree differs from its run's manifest
    /// (the first difference): it is read against that manifest, every difference
    /// reported as damage (`snapring verify` names them), and a backup compares with
    /// the tree by stat (`store/copied.rs`). `None` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differs: Option<String>,
    /// Its run record is there but cannot be read (cut short, damaged): the file and
    /// why, so `status`, `files` and `bytes` are unknown (they were shown as `-`, as
    /// for a tree taken over, with no word why). `None` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_unreadable: Option<String>,
    /// A `verify` found entries of this snapshot damaged and recorded them
    /// (`manifest::damaged_list`): a restore reports them, a backup copies them from the
    /// source rather than link them. `None` when none is recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<DamageRecorded>,
    pub finished_at: Option<String>,
    pub status: Option<Status>,
    pub files: Option<u64>,
    /// Apparent size: the sum of its regular files' sizes.
    pub bytes: Option<u64>,
    /// When its source was read (the run's start; the directory mtime for a tree
    /// without a record).
    pub taken_at: String,
    /// Disk space only this snapshot uses (inodes linked from no other snapshot,
    /// counted once, plus its directories); computed with `--space`.
    pub unique_bytes: Option<u64>,
}

/// What the last `verify` of a snapshot found damaged in it, as recorded.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DamageRecorded {
    /// How many entries (bytes or metadata not as recorded at backup, or unreadable).
    pub entries: u64,
    /// When that verify ran (RFC 3339).
    pub verified_at: String,
}

/// Lists the store at `root` (repairing it first if it needs it). `space`: also walk every snapshot
/// for the space only it uses (one stat per entry; `jobs` in flight).
pub fn list(root: &Path, space: bool, jobs: usize) -> Result<Vec<Listed>> {
    // A rotation that cannot be rolled forward now (a full file system): listed as
    // rolling it forward will leave it, as on a read-only store, with a warning; the
    // store is left as it is for the next command that can write it.
    match Store::repair_if_needed(root, "list") {
        Ok(_) => {}
        Err(e @ crate::error::Error::RollForward { .. }) => {
            tracing::warn!(
                "{}: listed as rolling its interrupted rotation forward will leave it, which cannot be done now: {e}",
                root.display()
            );
        }
        Err(e) => return Err(e),
    }
    let store = Store::open_read(root)?;
    let mut out = Vec::new();
    for (s, run, taken) in store.snapshots_with_runs()? {
        let unique_bytes = if space {
            let sel = store.open_snapshot(s.clone(), None, taken)?;
            Some(unique_bytes(
                &sel,
                crate::concurrency::resolve(jobs, &[root]),
            ))
        } else {
            None
        };
        let record_unreadable = match (&s.rec, &run) {
            (Some(r), None) => store
                .run_record_problem(&r.id)
                .map(|why| format!("{}: {why}", crate::relpath::shown(&store.run_path(&r.id)))),
            _ => None,
        };
        let damaged = s.rec.as_ref().and_then(|r| {
            let (verified_at, entries) =
                manifest::damaged_summary(&store.meta.join("manifests"), &r.id)?;
            Some(DamageRecorded {
                entries,
                verified_at,
            })
        });
        out.push(Listed {
            record_unreadable,
            damaged,
            taken_at: taken.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            unique_bytes,
            id: s.rec.as_ref().map(|r| r.id.clone()),
            taken_over: s.rec.is_none(),
            differs: s.differs.as_ref().map(|(why, _)| why.clone()),
            finished_at: s.rec.as_ref().map(|r| r.finished_at.clone()),
            status: run.as_ref().map(|r| r.status),
            files: run.as_ref().map(|r| r.files_total),
            bytes: run.as_ref().map(|r| r.bytes_total),
            name: s.name,
            label: s.label,
            slot: s.slot,
        });
    }
    Ok(out)
}

/// Bytes of the inodes only this snapshot links to: regular files with one link (or
/// whose every link is a hard link within the snapshot, the manifest's `group`), plus
/// its directories, symlinks and other entries, all counted in allocated blocks. One
/// `lstat` per entry on `jobs` workers ([`traverse::walk`]); an entry that cannot be
/// stat-ed counts nothing, a directory that cannot be listed only itself.
fn unique_bytes(sel: &Selected, jobs: usize) -> u64 {
    let v = Space {
        sel,
        total: AtomicU64::new(0),
        groups: Mutex::new(HashMap::new()),
    };
    traverse::walk(&v, (), jobs, &AtomicBool::new(false));
    let from_groups: u64 = v
        .groups
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|(seen, nlink, _)| seen == nlink)
        .map(|(_, _, bytes)| bytes)
        .sum();
    v.total.into_inner() + from_groups
}

struct Space<'a> {
    sel: &'a Selected,
    total: AtomicU64,
    /// Multiply-linked inodes in a manifest `group`: links seen, `nlink`, bytes.
    groups: Mutex<HashMap<u64, (u64, u64, u64)>>,
}

struct SpaceDir {
    fd: OwnedFd,
    /// The directory's manifest block, read only once it has a multiply-linked file.
    block: OnceLock<Option<Vec<manifest::Entry>>>,
}

impl Visitor for Space<'_> {
    type State = SpaceDir;
    type Item = Vec<u8>;
    type Sub = ();

    fn open(
        &self,
        parent: Option<&Dir<SpaceDir>>,
        name: &[u8],
        _: &RelPath,
        _: (),
    ) -> Opened<SpaceDir, Vec<u8>> {
        let fd = match parent {
            Some(p) => fsx::open_dir_at(b(&p.state.fd), name),
            None => fsx::open_dir_at(b(&self.sel.fd), b"."),
        };
        match fd.and_then(|fd| Ok((fsx::read_dir_names(b(&fd))?, fd))) {
            Ok((names, fd)) => Opened::Dir(
                SpaceDir {
                    fd,
                    block: OnceLock::new(),
                },
                names,
            ),
            Err(_) => Opened::Skip,
        }
    }

    fn visit(&self, dir: &Arc<Dir<SpaceDir>>, name: Vec<u8>) -> Step<()> {
        let Ok(m) = fsx::lstat_at(b(&dir.state.fd), &name) else {
            return Step::Next;
        };
        let bytes = m.blocks * 512;
        if m.kind == Kind::Dir {
            self.total.fetch_add(bytes, Ordering::Relaxed);
            return Step::Descend(name, ());
        }
        if m.nlink == 1 {
            self.total.fetch_add(bytes, Ordering::Relaxed);
        } else if dir
            .state
            .block
            .get_or_init(|| {
                let m = self.sel.manifest.as_ref()?;
                m.lookup(&dir.rel).ok().flatten()
            })
            .as_deref()
            .and_then(|es| manifest::find(es, &name))
            .is_some_and(|e| e.group.is_some())
        {
            let mut g = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            g.entry(m.ino).or_insert((0, m.nlink, bytes)).0 += 1;
        }
        Step::Next
    }
}
