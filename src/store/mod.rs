//! The hard-link store at `<dest>/<folder>`: plain snapshot trees `<label>.<n>` beside
//! `.snapring/` (lock, journal, staging/, trash/, runs/, manifests/, logs/, state).
//! Writers open it with `open` (and repair it under the lock), readers with
//! `open_read` (nothing written); see the invariants in ARCHITECTURE.md. Does file I/O.

pub mod adopt;
mod copied;
pub mod hold;
pub mod journal;
pub mod lock;
pub mod plan_sink;
mod recover;
pub mod repo;
pub mod rotation;
pub mod runs;
pub mod select;
pub mod trash;
pub mod tree_sink;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Ctx, Error, Result};
use crate::fsx::{self, b};
use crate::report::{RunReport, Status};
use crate::util::write_atomic;

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
    /// The root directory's birth time (`statx` btime: seconds, nanoseconds) where the
    /// file system has one. An inode number is reused as soon as its directory is
    /// deleted (ext4 gives the next `mkdir` the same number): a record names this
    /// directory only if its birth time is this one too, so a tree another tool made
    /// in a deleted snapshot's inode (rsnapshot's `cp -al`) is not taken for that
    /// snapshot. Absent in older records, and where there is none: inode alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub btime: Option<(i64, u32)>,
    /// The store was copied and this snapshot's tree was found to differ from the
    /// run's manifest (`copied.rs`): the verdict, kept for the snapshot's lifetime so
    /// that no command walks the tree again to find it. Such a record has `ino` 0 and
    /// no `btime` (no directory has them: a snapring that does not know this field
    /// never trusts the record by inode, and checks the tree itself); the directory's
    /// are here. Absent in older records, and on every record of a tree not found to
    /// differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differs: Option<Differs>,
}

/// A copied snapshot's tree differs from its run's manifest (`SnapRec::differs`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Differs {
    /// The first difference as found (`copied.rs` `matches_manifest`).
    pub why: String,
    /// When it was found (RFC 3339).
    pub found_at: String,
    /// The snapshot directory's inode and birth time, as `SnapRec::ino` and `btime`
    /// for a trusted record.
    pub ino: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub btime: Option<(i64, u32)>,
}

impl SnapRec {
    /// The inode of the directory this record names (`differs` holds it when set).
    pub(crate) fn dir_ino(&self) -> u64 {
        self.differs.as_ref().map_or(self.ino, |d| d.ino)
    }
}

/// The birth time of `path` as `SnapRec::btime` records it.
pub(crate) fn birth(path: &Path) -> Option<(i64, u32)> {
    fsx::birth_time(path).map(|t| (t.sec, t.nsec))
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub format: u32,
    pub snapshots: Vec<SnapRec>,
}

/// The format of `snapshots.json` this snapring writes and understands.
pub const STATE_FORMAT: u32 = 1;

impl State {
    pub fn empty() -> State {
        State {
            format: STATE_FORMAT,
            snapshots: vec![],
        }
    }
}

/// Why `snapshots.json` could not be read.
#[derive(Debug)]
pub enum StateError {
    /// Not a state file of any format (garbage, truncated, wrong shape).
    Damaged(String),
    /// A state of this newer format: a newer snapring wrote it.
    Newer(u64),
}

/// Whether `s` can name a file inside a `.snapring/` folder as it is: letters, digits,
/// `.`, `_` and `-`, not starting with `.`. Run ids and snapshot names read from the
/// store's own files are checked with it before they become paths, so that a damaged or
/// hostile `snapshots.json`, journal or run record can never lead outside the store.
pub fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses `snapshots.json`: its `format` first, so that a newer format is refused
/// whatever its shape, then the records, each with a plain run id and a snapshot name.
pub fn parse_state(bytes: &[u8]) -> std::result::Result<State, StateError> {
    #[derive(Deserialize)]
    struct Head {
        format: u64,
    }
    let head: Head =
        serde_json::from_slice(bytes).map_err(|e| StateError::Damaged(e.to_string()))?;
    if head.format > u64::from(STATE_FORMAT) {
        return Err(StateError::Newer(head.format));
    }
    let state: State =
        serde_json::from_slice(bytes).map_err(|e| StateError::Damaged(e.to_string()))?;
    if let Some(r) = state
        .snapshots
        .iter()
        .find(|r| !plain_name(&r.id) || rotation::parse_slot(&r.name).is_none())
    {
        return Err(StateError::Damaged(format!(
            "a record names run {:?} and snapshot {:?}, which are not a plain run id and a <label>.<n>",
            r.id, r.name
        )));
    }
    Ok(state)
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
    /// The record names another inode: the store was copied (`cp -a`, a tar), and this
    /// directory matched the record's manifest, so the record is kept, with `ino` set
    /// to this directory's (see `copied.rs`).
    pub copied: bool,
    /// The store was copied and this directory's tree differs from the manifest of the
    /// record of its name: why (the first difference, and when it was found), and that
    /// record as the state keeps it (`SnapRec::differs` set). A reader (`open_read`) has
    /// it as `rec` too, and reports every difference as damage; a writer does not (`rec`
    /// is `None`: a backup compares with the tree by stat), but keeps the record, with
    /// its verdict, in the state as the snapshot rotates (see `copied.rs`).
    pub differs: Option<(String, SnapRec)>,
    /// The state file was damaged and no run is left to recover this directory's record
    /// from (`recover.rs`): it may have had one, so its content cannot be known to be
    /// as backed up (a restore says so, and ends `partial`).
    pub unrecorded: bool,
}

/// Where a run's log is: `<store>/.snapring/logs/<id>.log`.
pub fn log_path(r: &RunReport) -> PathBuf {
    if let Some(l) = &r.log {
        return l.clone();
    }
    r.store
        .join(META_DIR)
        .join("logs")
        .join(format!("{}.log", r.id))
}

pub struct Store {
    pub root: PathBuf,
    pub root_fd: OwnedFd,
    /// `<root>/.snapring`
    pub meta: PathBuf,
    /// Set by `open_read` when an interrupted rotation waits to be rolled forward: the
    /// store as the roll-forward will leave it (nothing is renamed).
    pending: Option<journal::Pending>,
    /// Copied snapshot directories already checked against their manifests (shared by
    /// the readers of this store in this process: `copied::readers_checked`).
    checked: std::sync::Arc<copied::Checked>,
    /// Opened by `open_read`: given the record of a copied snapshot whose tree differs
    /// from its manifest (`Snapshot::differs`), to check the tree against it.
    for_readers: bool,
    /// Runs whose records a repair by this value rewrote (see `repaired_runs`).
    repaired: std::sync::Mutex<Vec<String>>,
    /// Runs whose staging tree is an interrupted run's, taken over (`Store::adopt`):
    /// a failed run keeps it for the next one instead of discarding it.
    adopted: std::sync::Mutex<Vec<String>>,
}

/// Opens the store's root directory, naming a missing store plainly.
fn open_root(root: &Path) -> Result<OwnedFd> {
    fsx::open_dir(root).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Store {
                path: root.to_path_buf(),
                msg: "no such store (check the path; a store in a folder is --dest DEST --folder FOLDER)".into(),
            }
        } else {
            Error::Io {
                action: "open store",
                path: root.to_path_buf(),
                source: e,
            }
        }
    })
}

/// Whether the directory holds at least one snapshot directory (`<label>.<n>`).
fn has_snapshot_dirs(root: &OwnedFd) -> bool {
    fsx::read_dir_names(b(root))
        .unwrap_or_default()
        .iter()
        .filter_map(|n| std::str::from_utf8(n).ok())
        .filter(|n| rotation::parse_slot(n).is_some())
        .any(|n| matches!(fsx::lstat_at(b(root), n.as_bytes()), Ok(m) if m.kind == fsx::Kind::Dir))
}

/// A directory about to become a store holds nothing but what a store may hold before
/// its first run: snapshot trees another tool made (`daily.0`, rsnapshot's `.sync` and
/// `_delete.*`) and a file system's `lost+found`. Anything else is data (source and
/// dest mixed up, a store folder forgotten): refused before anything is written, not
/// turned into a store with `.snapring` and snapshots beside it.
pub fn refuse_foreign(root: &Path, root_fd: &OwnedFd) -> Result<()> {
    let names = fsx::read_dir_names(b(root_fd)).ctx("list", root)?;
    let foreign: Vec<String> = names
        .iter()
        .filter(|n| {
            let s = String::from_utf8_lossy(n);
            let snapshot = rotation::parse_slot(&s).is_some()
                && matches!(fsx::lstat_at(b(root_fd), n), Ok(m) if m.kind == fsx::Kind::Dir);
            // `.snapring` itself: another shard worker is making the store.
            !(snapshot
                || s == META_DIR
                || s == "lost+found"
                || s == ".sync"
                || s.starts_with("_delete.")
                // A file server's own: NFS's silly-renamed open files, NetApp's and
                // ZFS's snapshot directories.
                || s.starts_with(".nfs")
                || s == ".snapshot"
                || s == ".zfs")
        })
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    let mut shown: Vec<&str> = foreign.iter().map(String::as_str).take(5).collect();
    shown.sort_unstable();
    Err(Error::Store {
        path: root.to_path_buf(),
        msg: format!(
            "not a snapring store, and not empty: it holds {}{}; a backup would put its snapshots beside that data. Nothing was written. Give an empty or new directory (check that source and dest are the right way round, and --folder), or create {} to make it a store anyway",
            shown.join(", "),
            if foreign.len() > shown.len() {
                format!(" and {} more", foreign.len() - shown.len())
            } else {
                String::new()
            },
            root.join(META_DIR).display()
        ),
    })
}

fn not_a_store(root: &Path) -> Error {
    Error::Store {
        path: root.to_path_buf(),
        msg: "not a snapring store (no .snapring directory, and no snapshot directory such as daily.0); a store made with --folder F is at DEST/F".into(),
    }
}

/// What `.snapring/store.json` holds: only the store's format (refused when newer than
/// this snapring's) and when and by what it was made, for people. A missing file is
/// written anew (stores older than it have none).
enum Info {
    Ok,
    /// Empty (0 bytes, or only white space): what a crash of the machine leaves of a
    /// file just renamed into place on some file systems. Nothing in it is lost that
    /// the store needs: writers write it anew, readers read on with a warning.
    Empty,
}

/// Reads `.snapring/store.json` and refuses a store of a newer format. One that is not
/// JSON (damaged) is refused to a writer (`writing`) with the remedy, and read past
/// with a warning by a reader: its format cannot be known, and only writing into a
/// store of a newer format could harm it.
fn check_info(root: &Path, info: &Path, writing: bool) -> Result<Info> {
    let bytes = crate::fsx::read_regular(info).ctx("read", info)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if !writing {
            tracing::warn!(
                "{}: empty (a crash while it was written?); it only records the store's format and creation, and the next backup writes it anew",
                crate::relpath::shown(info)
            );
        }
        return Ok(Info::Empty);
    }
    let i: StoreInfo = match serde_json::from_slice(&bytes) {
        Ok(i) => i,
        Err(e) if writing => {
            return Err(Error::Store {
                path: info.to_path_buf(),
                msg: format!(
                    "unreadable store info: {e}; it only records the store's format ({STORE_FORMAT} for a store this snapring made) and when it was made: if no newer snapring wrote to this store, remove the file and the next command writes it anew"
                ),
            });
        }
        Err(e) => {
            tracing::warn!(
                "{}: unreadable store info ({e}); read as a store of format {STORE_FORMAT}",
                crate::relpath::shown(info)
            );
            return Ok(Info::Ok);
        }
    };
    if i.format > STORE_FORMAT {
        return Err(Error::Store {
            path: root.to_path_buf(),
            msg: format!(
                "store format {} is newer than this snapring understands ({STORE_FORMAT}); upgrade snapring",
                i.format
            ),
        });
    }
    Ok(Info::Ok)
}

/// Makes an existing `.snapring/` private (0700) if it is not: stores made before
/// snapring created it 0700 let any local user read every manifest (names, sizes,
/// owners and hashes of files in directories they may not read). One `stat`, and one
/// `chmod` the first time; a failure (not the owner) is only warned about.
fn tighten_meta(meta: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(m) = std::fs::metadata(meta) else {
        return;
    };
    let mode = m.permissions().mode();
    if mode & 0o077 == 0 {
        return;
    }
    let private = std::fs::Permissions::from_mode((mode & 0o7000) | 0o700);
    if let Err(e) = std::fs::set_permissions(meta, private) {
        tracing::warn!(
            "{}: other users can read the store's bookkeeping, and it cannot be made private ({e}); chmod 700 it",
            crate::relpath::shown(meta)
        );
    }
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
                        crate::relpath::shown(parent)
                    ),
                });
            }
            // Shard workers open a new store at the same moment: one of them makes it.
            match std::fs::create_dir(root) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(e).ctx("create store directory", root);
                }
                _ => {}
            }
        }
        let root_fd = open_root(root)?;
        let meta = root.join(META_DIR);
        if !meta.is_dir() && !create {
            return Err(not_a_store(root));
        }
        if !meta.is_dir() {
            refuse_foreign(root, &root_fd)?;
        }
        // Private (0700): the manifests, records and logs name what is inside the
        // source's private directories. The staging trees below carry the source's own
        // modes (they become the snapshots).
        for sub in ["", "staging", "trash", "runs", "manifests", "logs"] {
            let d = meta.join(sub);
            if !d.is_dir() {
                match crate::util::create_private_dir(&d, false) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                        return Err(e).ctx("create", &d);
                    }
                    _ => {}
                }
            }
        }
        tighten_meta(&meta);
        let info = meta.join("store.json");
        let rewrite = !info.exists() || {
            let empty = matches!(check_info(root, &info, true)?, Info::Empty);
            if empty {
                tracing::warn!(
                    "{}: empty (a crash while it was written?); written anew",
                    crate::relpath::shown(&info)
                );
            }
            empty
        };
        if rewrite {
            let i = StoreInfo {
                format: STORE_FORMAT,
                created_at: crate::util::now_rfc3339(),
                created_by: format!("snapring {}", env!("CARGO_PKG_VERSION")),
            };
            write_atomic(&info, &serde_json::to_vec_pretty(&i).expect("serializes"))
                .ctx("write", &info)?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            root_fd,
            meta,
            pending: None,
            checked: Default::default(),
            for_readers: false,
            repaired: Default::default(),
            adopted: Default::default(),
        })
    }

    /// Opens the store at `root` for reading only: creates nothing, writes nothing and
    /// takes no lock, so it works on a read-only mount and beside a running backup.
    /// Missing `.snapring/` subfolders or files read as empty. When a rotation was
    /// interrupted (a journal waits), the store reads as rolling the journal forward
    /// will leave it, without renaming anything; a journal that cannot be followed is
    /// warned about and the store read as it is.
    pub fn open_read(root: &Path) -> Result<Store> {
        let root_fd = open_root(root)?;
        let meta = root.join(META_DIR);
        // A tree another tool made (rsnapshot, EFSBackup: `daily.0 … daily.N`, no
        // `.snapring/`) reads as a store whose snapshots all were taken over: no
        // records, compared by stat. Nothing is created for it.
        if !meta.is_dir() && !has_snapshot_dirs(&root_fd) {
            return Err(not_a_store(root));
        }
        let info = meta.join("store.json");
        if info.exists() {
            check_info(root, &info, false)?;
        }
        let checked = match fsx::fstat(b(&root_fd)) {
            Ok(m) => copied::readers_checked(m.dev, m.ino),
            Err(_) => Default::default(),
        };
        let mut s = Store {
            root: root.to_path_buf(),
            root_fd,
            meta,
            pending: None,
            checked,
            for_readers: true,
            repaired: Default::default(),
            adopted: Default::default(),
        };
        s.pending = s.pending_view();
        Ok(s)
    }

    /// Repairs the store at `root` when, and only when, something needs it: a journal
    /// waits to be rolled forward, or the lock file names a run that died while its
    /// record still says `running`. A healthy store is not written at all (no lock is
    /// taken). A store that cannot be written (read-only mount, no permission) or that a
    /// live backup holds is left as it is: that backup repairs it, and `open_read`
    /// shows it as the repair will leave it. Returns what it did.
    pub fn repair_if_needed(root: &Path, by: &str) -> Result<Vec<String>> {
        let probe = Store::open_read(root)?;
        let dead = probe.dead_running_holder();
        if !probe.needs_repair() && dead.is_none() {
            return Ok(vec![]);
        }
        let read_only = fsx::is_read_only(b(&probe.root_fd)).unwrap_or(false)
            || rustix::fs::access(&probe.meta, rustix::fs::Access::WRITE_OK).is_err();
        if read_only {
            tracing::warn!(
                "{}: needs a repair{} but cannot be written; reading it as the repair will leave it",
                crate::relpath::shown(root),
                dead.map(|r| format!(" (run {r} died)")).unwrap_or_default()
            );
            return Ok(vec![]);
        }
        drop(probe);
        let store = Store::open(root, false)?;
        let holder = lock::Holder {
            pid: std::process::id(),
            host: crate::util::hostname(),
            run: None,
            command: by.into(),
            since: crate::util::now_rfc3339(),
        };
        let lock = match store.lock(&holder) {
            Ok(l) => l,
            Err(Error::Locked { holder, .. }) => {
                tracing::info!(
                    "{}: {holder} holds the store and repairs it",
                    crate::relpath::shown(root)
                );
                return Ok(vec![]);
            }
            Err(e) => return Err(e),
        };
        let did = store.repair(&lock, by)?;
        lock.release();
        Ok(did)
    }

    /// The run the lock file names, if it died (nobody holds the lock) while its record
    /// still says `running`. Reads only (a shared `flock` probes the lock).
    pub(crate) fn dead_running_holder(&self) -> Option<String> {
        let path = self.meta.join("lock");
        let text = fsx::read_regular(&path).ok()?;
        let run = serde_json::from_slice::<lock::Holder>(&text).ok()?.run?;
        if self.read_run(&run).ok()??.status != Status::Running {
            return None;
        }
        let f = fsx::open_regular(&path, true).ok()?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).ok()?;
        Some(run)
    }

    /// Whether nobody holds the store's lock (a shared `flock` probe, which writes
    /// nothing; no lock file: nobody has held it). A run holds it from before the
    /// catalog's `running` row of it until after its final run record, so a run the
    /// catalog says is `running` while the lock is free has ended or died (`serve`).
    pub(crate) fn lock_free(&self) -> bool {
        match fsx::open_regular(&self.meta.join("lock"), true) {
            Ok(f) => {
                rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).is_ok()
            }
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// Where the snapshot directory `name` is now: `<root>/<name>`, or, while a rotation
    /// waits to be rolled forward (`open_read`), wherever the roll-forward takes it from.
    pub fn snapshot_path(&self, name: &str) -> PathBuf {
        let at = self
            .pending
            .as_ref()
            .and_then(|p| p.names.iter().find(|(n, _)| n == name))
            .map(|(_, at)| at.as_str())
            .unwrap_or(name);
        self.root.join(at)
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
    /// dead run's record `incomplete`; and, in a copied store, keeps the records of the
    /// snapshots that match their manifests (`copied.rs`). Call with the lock held.
    /// Returns what it did.
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
            // Nor expired: a shard finalize records the snapshots its publish would
            // expire before that publish (a journal it wrote was rolled forward above,
            // settling the record, which is then no longer `running`).
            r.expired.clear();
            self.write_run(&r)?;
            crate::failpoint::hit("repair.marked").ctx("repair", &self.root)?;
            self.note_repaired(&run);
            did.push(format!("marked run {run} incomplete"));
        }
        did.extend(self.keep_copied_records()?);
        for d in &did {
            tracing::warn!("repair: {d}");
        }
        Ok(did)
    }

    /// The runs whose records a repair through this `Store` rewrote (a journal's run
    /// published, a dead run marked `incomplete`), so a catalog can re-read them.
    pub fn repaired_runs(&self) -> Vec<String> {
        self.repaired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn note_repaired(&self, run: &str) {
        let mut v = self.repaired.lock().unwrap_or_else(|e| e.into_inner());
        if !v.iter().any(|r| r == run) {
            v.push(run.to_string());
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.meta.join("snapshots.json")
    }

    pub fn read_state(&self) -> Result<State> {
        Ok(self.read_state_checked()?.0)
    }

    /// The snapshot state and whether `snapshots.json` was damaged (then the state is
    /// empty and `snapshots` recovers what records it can; see `recover.rs`). A state of
    /// a newer format than this snapring understands is refused, never read or rewritten.
    pub fn read_state_checked(&self) -> Result<(State, bool)> {
        let p = self.state_path();
        match fsx::read_regular(&p) {
            // Losing the state loses nothing but speed: without records, snapshots are
            // compared by stat and linked files re-hashed, as for a taken-over tree. So a
            // damaged state file is reported, not fatal; records are recovered from the
            // run records and manifests where a tree matches, and the damaged file is
            // kept aside when the state is next written.
            Ok(t) => match parse_state(&t) {
                Ok(s) => Ok((s, false)),
                Err(StateError::Newer(f)) => Err(Error::Store {
                    path: p,
                    msg: format!(
                        "snapshot state format {f} is newer than this snapring understands ({STATE_FORMAT}); upgrade snapring (the file is left as it is)"
                    ),
                }),
                Err(StateError::Damaged(e)) => {
                    tracing::warn!(
                        "{}: unreadable snapshot state ({e}); recovering records from run records and manifests, comparing by stat where none matches",
                        crate::relpath::shown(&p)
                    );
                    Ok((State::empty(), true))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((State::empty(), false)),
            Err(e) => Err(e).ctx("read", p),
        }
    }

    /// Writes `snapshots.json`. A damaged one is first kept aside as
    /// `snapshots.json.damaged-<time>` (evidence for whoever damaged it).
    pub fn write_state(&self, s: &State) -> Result<()> {
        let p = self.state_path();
        if let Ok(t) = fsx::read_regular(&p)
            && matches!(parse_state(&t), Err(StateError::Damaged(_)))
        {
            let aside = self.meta.join(format!(
                "snapshots.json.damaged-{}",
                crate::util::now_rfc3339().replace(':', "")
            ));
            std::fs::rename(&p, &aside).ctx("keep the damaged state aside at", &aside)?;
            tracing::warn!(
                "kept the damaged snapshot state as {}",
                crate::relpath::shown(&aside)
            );
        }
        write_atomic(&p, &serde_json::to_vec_pretty(s).expect("serializes")).ctx("write", p)
    }

    /// Every snapshot directory (`<label>.<n>`) with its record where one matches, newest
    /// first: by finish time where recorded, else by slot within a label, else mtime.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let (state, damaged, names) = match &self.pending {
            Some(p) => (p.state.clone(), false, p.names.clone()),
            None => {
                let names = fsx::read_dir_names(b(&self.root_fd))
                    .ctx("read", &self.root)?
                    .into_iter()
                    .filter_map(|n| String::from_utf8(n).ok())
                    .map(|n| (n.clone(), n))
                    .collect();
                let (state, damaged) = self.read_state_checked()?;
                (state, damaged, names)
            }
        };
        let mut found = Vec::new();
        for (name, at) in names {
            let Some((label, slot)) = rotation::parse_slot(&name) else {
                continue;
            };
            let label = label.to_string();
            match fsx::lstat_at(b(&self.root_fd), at.as_bytes()) {
                Ok(m) if m.kind == fsx::Kind::Dir => found.push((name, at, label, slot, m)),
                _ => continue,
            }
        }
        let present: std::collections::HashSet<u64> = found.iter().map(|f| f.4.ino).collect();
        // Newest slot first, so that records recovered from a damaged state pair
        // directories with runs in order (`recover.rs`).
        found.sort_by(|a, b| (&a.2, a.3).cmp(&(&b.2, b.3)));
        let mut recovery = damaged.then(|| self.recovery());
        let mut out = Vec::new();
        for (name, at, label, slot, m) in found {
            let mut unrecorded = false;
            let born = std::cell::OnceCell::new();
            let born_at = |t: Option<(i64, u32)>| match t {
                None => true,
                Some(bt) => born
                    .get_or_init(|| birth(&self.root.join(&at)))
                    .is_none_or(|b| b == bt),
            };
            let same_birth = |r: &SnapRec| born_at(r.btime);
            let by_ino = state
                .snapshots
                .iter()
                .find(|r| r.ino == m.ino && r.name == name)
                // Under another name (a rotation cut short, or another tool's rename):
                // the birth time tells a reused inode number from the same directory.
                // Not asked of a record under its own name, the common case (a
                // `statx` per snapshot is a round trip on NFS).
                .or_else(|| {
                    state
                        .snapshots
                        .iter()
                        .find(|r| r.ino == m.ino && same_birth(r))
                })
                .cloned();
            // A tree found to differ from its manifest before (`copied.rs`): the verdict
            // is kept with the record, found by the inode it holds, as `by_ino`. The
            // tree is not walked again.
            let marked = || {
                let of_dir = |r: &&SnapRec| r.differs.as_ref().is_some_and(|d| d.ino == m.ino);
                state
                    .snapshots
                    .iter()
                    .filter(of_dir)
                    .find(|r| r.name == name)
                    .or_else(|| {
                        state
                            .snapshots
                            .iter()
                            .filter(of_dir)
                            .find(|r| born_at(r.differs.as_ref().and_then(|d| d.btime)))
                    })
                    .map(|r| {
                        let d = r.differs.as_ref().expect("filtered");
                        (format!("{}; found {}", d.why, d.found_at), r.clone())
                    })
            };
            let (copied, differs) = match (&by_ino, by_ino.is_none().then(marked).flatten()) {
                (Some(_), _) => (None, None),
                (None, Some(d)) => (None, Some(d)),
                (None, None) => match self.copied_record(&state, &name, &at, &m, &present) {
                    Some(Ok(r)) => (Some(r), None),
                    Some(Err((r, why))) => (None, Some((why, r))),
                    None => match recovery
                        .as_mut()
                        .map(|r| self.recovered_record(r, &name, &label, &at, &m))
                    {
                        Some(Some(Ok(r))) => (Some(r), None),
                        Some(Some(Err((r, why)))) => (None, Some((why, r))),
                        // Unless it was made before the store's `.snapring` was: a
                        // tree taken over from another tool, which never had a
                        // manifest (a restore of it stays `complete`, docs/restore.md).
                        Some(None) => {
                            unrecorded = !self.predates_store(&at);
                            (None, None)
                        }
                        None => (None, None),
                    },
                },
            };
            let trusted = by_ino.or(copied.clone());
            out.push(Snapshot {
                label,
                slot,
                ino: m.ino,
                mtime: m.mtime.sec,
                copied: copied.is_some(),
                rec: match &differs {
                    Some((_, r)) if self.for_readers => Some(r.clone()),
                    _ => trusted,
                },
                differs,
                unrecorded,
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

    /// Whether the snapshot directory `at` (under the root) was made before the store's
    /// metadata directory: no run of this store can have made it. Both birth times
    /// known, else no.
    fn predates_store(&self, at: &str) -> bool {
        match (birth(&self.root.join(at)), birth(&self.meta)) {
            (Some(d), Some(s)) => d < s,
            _ => false,
        }
    }

    pub fn run_path(&self, id: &str) -> PathBuf {
        self.meta.join("runs").join(format!("{id}.json"))
    }

    /// The run record of `id` (`None` if there is none or it is damaged). While a
    /// rotation waits to be rolled forward (`open_read`), its run reads as the
    /// roll-forward will leave its record.
    pub fn read_run(&self, id: &str) -> Result<Option<RunReport>> {
        if !plain_name(id) {
            return Ok(None);
        }
        let p = self.run_path(id);
        let mut r: Option<RunReport> = match fsx::read_regular(&p) {
            // A record must be the one of its file name (it is written back under it).
            Ok(t) => serde_json::from_slice::<RunReport>(&t)
                .ok()
                .filter(|r| r.id == id),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).ctx("read", p),
        };
        if let (Some(pending), Some(r)) = (&self.pending, r.as_mut())
            && pending.run == id
        {
            journal::settle_published(r, pending.status, pending.snapshot.as_deref(), true);
        }
        if let Some(r) = r.as_mut() {
            // A store run's log is in the store: a record never points elsewhere.
            r.log = None;
        }
        Ok(r)
    }

    /// Why the run record of `id` is there but not read ([`Store::read_run`] gives
    /// `None` for it as for a record that is not there): cut short or otherwise not a
    /// record (the JSON error), or another run's. `None` when it reads, or is absent.
    pub fn run_record_problem(&self, id: &str) -> Option<String> {
        if !plain_name(id) {
            return None;
        }
        match fsx::read_regular(&self.run_path(id)) {
            Ok(t) => match serde_json::from_slice::<RunReport>(&t) {
                Err(e) => Some(format!("not a run record ({} bytes: {e})", t.len())),
                Ok(r) if r.id != id => Some(format!(
                    "the record of another run ({})",
                    crate::relpath::escape(r.id.as_bytes())
                )),
                Ok(_) => None,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// The ids of every run record in the store (`.snapring/runs/<id>.json`); none when
    /// the folder cannot be read.
    pub fn run_ids(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.meta.join("runs")) else {
            return vec![];
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .collect()
    }

    pub fn write_run(&self, r: &RunReport) -> Result<()> {
        let p = self.run_path(&r.id);
        write_atomic(&p, &serde_json::to_vec_pretty(r).expect("serializes"))
            .ctx("write run record", p)
    }

    /// Staging trees left by single-node runs that did not finish (oldest first). A
    /// shard run's staged tree (`staging/<run-id>` beside `shards/<run-id>/`, moved there
    /// by a finalize that died before its publish) is not one: it is the whole run,
    /// which `snapring finalize` publishes, and its units' work directories are gone.
    pub fn leftover_staging(&self) -> Result<Vec<String>> {
        let d = self.meta.join("staging");
        let shards = self.meta.join("shards");
        let mut v: Vec<String> = std::fs::read_dir(&d)
            .ctx("read", &d)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.ends_with(".tmp"))
            .filter(|n| !shards.join(n).is_dir())
            .collect();
        v.sort();
        Ok(v)
    }

    /// Deletes run `id`'s manifest (and its index, `.copied`, `.owners` and `.times` markers and leftover
    /// temporaries). Only for a snapshot that is expired or was never published; a
    /// failure is warned about (it leaves a file, loses nothing).
    pub fn remove_manifest(&self, id: &str) {
        let mdir = self.meta.join("manifests");
        for ext in [
            "mf", "idx", "copied", "damaged", "owners", "times", "mf.tmp", "idx.tmp", "done",
            "done.tmp",
        ] {
            let p = mdir.join(format!("{id}.{ext}"));
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("{}: cannot delete ({e})", crate::relpath::shown(&p)),
            }
        }
    }

    /// Moves `.snapring/staging/<name>` to trash (for deletion by `trash::empty`), and
    /// deletes the manifest of that run, never published.
    pub fn discard_staging(&self, name: &str) -> Result<()> {
        let from = format!("{META_DIR}/staging/{name}");
        let to = format!("{META_DIR}/trash/staging-{name}");
        let r = b(&self.root_fd);
        if fsx::exists_at(r, from.as_bytes()).ctx("check", self.root.join(&from))? {
            fsx::rename_noreplace(r, from.as_bytes(), r, to.as_bytes())
                .ctx("move to trash", self.root.join(&from))?;
        }
        crate::failpoint::hit("staging.discarded").ctx("move to trash", self.root.join(&from))?;
        self.remove_manifest(name);
        Ok(())
    }
}
