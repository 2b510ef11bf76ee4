//! The hard-link store at `<dest>/<folder>`: plain snapshot trees `<label>.<n>` beside
//! `.snapring/` (lock, journal, staging/, trash/, runs/, manifests/, logs/, state).
//! Opening a store repairs it; see DESIGN.md's invariants. Does file I/O.

pub mod hold;
pub mod journal;
pub mod lock;
pub mod plan_sink;
pub mod repo;
pub mod rotation;
pub mod select;
pub mod trash;
pub mod tree_sink;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Ctx, Error, Result};
use crate::fsx::{self, b};
use crate::report::{RunReport, Status, write_atomic};

pub const META_DIR: &str = ".snapring";
pub const STORE_FORMAT: u32 = 1;

/// `.snapring/store.json`: makes the store self-describing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoreInfo {
    pub format: u32,
    pub created_at: String,
    pub created_by: String,
}

/// One published snapshot as `.snapring/snapshots.json` records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapRec {
    pub name: String,
    /// The run that made it (its manifest is `.snapring/manifests/<id>.mf`).
    pub id: String,
    /// Inode of the snapshot's root directory: survives renames, so a record is only
    /// trusted for the directory it was written for.
    pub ino: u64,
    pub finished_at: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub format: u32,
    pub snapshots: Vec<SnapRec>,
}

/// A snapshot directory found in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    pub label: String,
    pub slot: u32,
    pub ino: u64,
    /// Root directory mtime (for ordering snapshots without a record).
    pub mtime: i64,
    /// The record, when the state file knows this directory (not for taken-over trees).
    pub rec: Option<SnapRec>,
}

pub struct Store {
    pub root: PathBuf,
    pub root_fd: OwnedFd,
    /// `<root>/.snapring`
    pub meta: PathBuf,
}

impl Store {
    /// Opens the store at `root`, creating `.snapring/` (and `root` itself when
    /// `create` is set and its parent exists).
    pub fn open(root: &Path, create: bool) -> Result<Store> {
        if create && !root.exists() {
            let parent = root
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                return Err(Error::Store {
                    path: root.to_path_buf(),
                    msg: format!(
                        "the destination {} does not exist (is the backup file system mounted?)",
                        parent.display()
                    ),
                });
            }
            std::fs::create_dir(root).ctx("create store directory", root)?;
        }
        let root_fd = fsx::open_dir(root).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Store {
                    path: root.to_path_buf(),
                    msg: "no such store (check --dest and --folder)".into(),
                }
            } else {
                Error::Io {
                    action: "open store",
                    path: root.to_path_buf(),
                    source: e,
                }
            }
        })?;
        let meta = root.join(META_DIR);
        if !meta.is_dir() && !create {
            return Err(Error::Store {
                path: root.to_path_buf(),
                msg: "not a snapring store (no .snapring directory)".into(),
            });
        }
        for sub in ["", "staging", "trash", "runs", "manifests", "logs"] {
            let d = meta.join(sub);
            if !d.is_dir() {
                std::fs::create_dir(&d).ctx("create", &d)?;
            }
        }
        let info = meta.join("store.json");
        if !info.exists() {
            let i = StoreInfo {
                format: STORE_FORMAT,
                created_at: crate::report::now_rfc3339(),
                created_by: format!("snapring {}", env!("CARGO_PKG_VERSION")),
            };
            write_atomic(&info, &serde_json::to_vec_pretty(&i).expect("serializes"))
                .ctx("write", &info)?;
        } else {
            let i: StoreInfo = serde_json::from_slice(&std::fs::read(&info).ctx("read", &info)?)
                .map_err(|e| Error::Store {
                    path: info.clone(),
                    msg: format!("unreadable store info: {e}"),
                })?;
            if i.format > STORE_FORMAT {
                return Err(Error::Store {
                    path: root.to_path_buf(),
                    msg: format!(
                        "store format {} is newer than this snapring understands ({STORE_FORMAT}); upgrade snapring",
                        i.format
                    ),
                });
            }
        }
        Ok(Store {
            root: root.to_path_buf(),
            root_fd,
            meta,
        })
    }

    pub fn lock(&self, holder: &lock::Holder) -> Result<lock::Lock> {
        lock::Lock::acquire(&self.root, &self.meta.join("lock"), holder)
    }

    /// A shared lock for read-only commands (see `Lock::acquire_shared`).
    pub fn lock_shared(&self) -> Result<lock::Lock> {
        lock::Lock::acquire_shared(&self.root, &self.meta.join("lock"))
    }

    /// Whether an interrupted rotation waits to be rolled forward.
    pub fn needs_repair(&self) -> bool {
        self.journal_path().exists()
    }

    /// Repairs what a dead run left: rolls an unfinished rotation forward and marks the
    /// dead run's record `incomplete`. Call with the lock held. Returns what it did.
    pub fn repair(&self, lock: &lock::Lock, by: &str) -> Result<Vec<String>> {
        let mut did = Vec::new();
        if let Some(run) = self.recover_journal()? {
            did.push(format!("rolled forward the rotation of run {run}"));
        }
        if let Some(run) = lock.previous.as_ref().and_then(|h| h.run.clone())
            && let Some(mut r) = self.read_run(&run)?
            && r.status == Status::Running
        {
            r.status = Status::Incomplete;
            r.exit_code = Status::Incomplete.exit_code();
            r.message = format!(
                "interrupted: the process ended before finishing (repaired by {by}); nothing was published"
            );
            self.write_run(&r)?;
            did.push(format!("marked run {run} incomplete"));
        }
        for d in &did {
            tracing::warn!("repair: {d}");
        }
        Ok(did)
    }

    pub fn state_path(&self) -> PathBuf {
        self.meta.join("snapshots.json")
    }

    pub fn read_state(&self) -> Result<State> {
        let p = self.state_path();
        match std::fs::read(&p) {
            // Losing the state loses nothing but speed: without records, snapshots are
            // compared by stat and linked files re-hashed, as for a taken-over tree. So a
            // damaged state file is reported, not fatal; the next publish rewrites it.
            Ok(t) => Ok(serde_json::from_slice(&t).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}: unreadable snapshot state ({e}); comparing with snapshots by stat until the next backup rewrites it",
                    p.display()
                );
                State { format: 1, snapshots: vec![] }
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State {
                format: 1,
                snapshots: vec![],
            }),
            Err(e) => Err(e).ctx("read", p),
        }
    }

    pub fn write_state(&self, s: &State) -> Result<()> {
        let p = self.state_path();
        write_atomic(&p, &serde_json::to_vec_pretty(s).expect("serializes")).ctx("write", p)
    }

    /// Every snapshot directory (`<label>.<n>`) with its record where one matches, newest
    /// first: by finish time where recorded, else by slot within a label, else mtime.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let state = self.read_state()?;
        let mut out = Vec::new();
        for name in fsx::read_dir_names(b(&self.root_fd)).ctx("read", &self.root)? {
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            let Some((label, slot)) = rotation::parse_slot(&name) else {
                continue;
            };
            let m = match fsx::lstat_at(b(&self.root_fd), name.as_bytes()) {
                Ok(m) if m.kind == fsx::Kind::Dir => m,
                _ => continue,
            };
            let rec = state
                .snapshots
                .iter()
                .find(|r| r.ino == m.ino && r.name == name)
                .or_else(|| state.snapshots.iter().find(|r| r.ino == m.ino))
                .cloned();
            out.push(Snapshot {
                label: label.to_string(),
                slot,
                ino: m.ino,
                mtime: m.mtime.sec,
                rec,
                name,
            });
        }
        out.sort_by(|a, b| {
            let key = |s: &Snapshot| (s.rec.as_ref().map(|r| r.finished_at.clone()), s.mtime);
            if a.label == b.label {
                a.slot.cmp(&b.slot)
            } else {
                key(b).cmp(&key(a))
            }
        });
        Ok(out)
    }

    pub fn run_path(&self, id: &str) -> PathBuf {
        self.meta.join("runs").join(format!("{id}.json"))
    }

    pub fn read_run(&self, id: &str) -> Result<Option<RunReport>> {
        let p = self.run_path(id);
        match std::fs::read(&p) {
            Ok(t) => Ok(serde_json::from_slice(&t).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", p),
        }
    }

    pub fn write_run(&self, r: &RunReport) -> Result<()> {
        let p = self.run_path(&r.id);
        write_atomic(&p, &serde_json::to_vec_pretty(r).expect("serializes"))
            .ctx("write run record", p)
    }

    /// Staging trees left by runs that did not finish (oldest first).
    pub fn leftover_staging(&self) -> Result<Vec<String>> {
        let d = self.meta.join("staging");
        let mut v: Vec<String> = std::fs::read_dir(&d)
            .ctx("read", &d)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.ends_with(".tmp"))
            .collect();
        v.sort();
        Ok(v)
    }

    /// Moves `.snapring/staging/<name>` to trash (for deletion by `trash::empty`).
    pub fn discard_staging(&self, name: &str) -> Result<()> {
        let from = format!("{META_DIR}/staging/{name}");
        let to = format!("{META_DIR}/trash/staging-{name}");
        let r = b(&self.root_fd);
        if fsx::exists_at(r, from.as_bytes()).ctx("check", self.root.join(&from))? {
            fsx::rename_noreplace(r, from.as_bytes(), r, to.as_bytes())
                .ctx("move to trash", self.root.join(&from))?;
        }
        Ok(())
    }
}
