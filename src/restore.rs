//! `snapring restore`: copies a whole snapshot, a subtree or one file out of the store
//! into a target directory, with full fidelity, in parallel, without ever writing to
//! the store. Does the restore's tree I/O: it reads the snapshot through a
//! [`SnapshotReader`] and walks it on the one traversal (`traverse::walk`).
//!
//! Safety rules (see docs/restore.md):
//! - every restored file is a new inode (a copy); nothing is ever linked out of the
//!   store, and store files are opened read-only with `O_NOATIME`;
//! - by default nothing under the target is deleted or replaced: identical entries are
//!   skipped, differing ones are reported as conflicts and left alone; `--overwrite`
//!   replaces them (atomically, by rename), `--mirror` also deletes what the snapshot
//!   does not have, only inside the restored subtree, except what the snapshot's run
//!   left out by its exclusion settings (as `rsync --delete` keeps excluded files): those
//!   were never backed up, so deleting them would lose them for good;
//! - every write is relative to a directory opened with `O_NOFOLLOW`, names come from
//!   `readdir` of the snapshot (never from the manifest), so neither a symlink in the
//!   target nor a tampered manifest can make a restore write outside the target.
//!
//! A queued subdirectory holds its name, not descriptors: both sides are opened when a
//! worker takes it, so a directory with 100,000 subdirectories does not need 200,000
//! descriptors, and no path is resolved from the root, so depth is unlimited. Directory
//! metadata is applied last, when a directory's subtree is done, as in the backup walk.
//! Hard links within the restored set (the manifest's `group`) are recreated as hard
//! links between restored files. Whether an existing entry is identical is
//! `same::Delta`'s answer (content by hash).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::error::{Ctx, Error, Result, io_error};
use crate::fsx::{self, CopyError, Kind, Meta, XattrTarget, Xattrs, b};
use crate::manifest::Entry;
use crate::relpath::RelPath;
use crate::report::{self, Problem, ProblemKind, Status};
use crate::same::{Delta, Facts};
use crate::snapshot::{self, Listed, SnapshotReader, Stat, TreeReader};
use crate::store::Store;
use crate::store::select::Selected;
use crate::traverse::{self, Dir, Opened, Step, Visitor};

pub mod target;

/// What to do with entries that already exist under the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Never delete, never replace: report differing entries as conflicts.
    Safe,
    /// Replace differing entries (files; a directory is never removed).
    Overwrite,
    /// Overwrite, and delete what the snapshot does not have inside the restored subtree
    /// (but not what the snapshot's run left out by its exclusion settings).
    Mirror,
}

pub struct RestoreOptions {
    /// The store (`<dest>/<folder>`).
    pub store: PathBuf,
    /// Snapshot name, run id, `latest` or `@TIME` (see `store::select`).
    pub snapshot: String,
    pub to: PathBuf,
    /// Restore only this path of the snapshot (a directory or a single entry).
    pub path: Option<RelPath>,
    /// `--path` as typed, its `%` taken as itself, when that is another path
    /// ([`literal_path`]): a snapshot holding it too makes `--path` ambiguous (refused),
    /// and one holding it alone is named in the "has no" error.
    pub path_literal: Option<RelPath>,
    /// Put the restored path straight into `to` (its contents for a directory, the entry
    /// itself for a file) instead of at the same relative place under `to`.
    pub flat: bool,
    pub mode: Mode,
    /// The user vouches that `to` holds nothing but this restore: `--flat --mirror` of a
    /// directory may then delete whatever else `to` holds (see [`refuse_flat_mirror`]).
    pub to_is_dedicated: bool,
    pub dry_run: bool,
    /// A dry run's plan goes to stderr (`--json`: stdout holds the report alone), as a
    /// backup's does.
    pub plan_on_stderr: bool,
    pub jobs: usize,
    pub progress: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Conflict {
    /// Escaped path relative to the target.
    pub path: String,
    pub reason: String,
}

/// What a restore did (or, in a dry run, would do). The job layer (`job::restore`)
/// gives a recorded restore its own run id, job, log and notifications.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RestoreReport {
    /// `restore` (runs in the catalog are backups or restores).
    #[serde(default = "restore_kind")]
    pub kind: String,
    /// This restore's own run id (`None` when it is not recorded: a dry run, or no
    /// catalog).
    #[serde(default)]
    pub id: Option<String>,
    /// The configured job it was run for (`restore --config FILE --job NAME`).
    #[serde(default)]
    pub job: Option<String>,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub version: String,
    /// The snapshot restored from (its name when the restore began).
    pub snapshot: String,
    pub run_id: Option<String>,
    /// Not UTF-8: `store_raw` beside it holds the bytes (`crate::localpath`).
    #[serde(flatten, with = "crate::localpath::store")]
    pub store: PathBuf,
    /// Not UTF-8: `to_raw` beside it holds the bytes.
    #[serde(flatten, with = "crate::localpath::to")]
    pub to: PathBuf,
    pub path: Option<String>,
    pub mode: Mode,
    pub dry_run: bool,
    pub started_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    pub duration_seconds: f64,
    /// `complete`, `partial` (conflicts or per-entry problems) or `failed`.
    pub status: Status,
    pub exit_code: i32,
    pub message: String,
    /// Regular files restored (created or replaced; those linked too: `hard_links`).
    pub files_restored: u64,
    /// The other entries that are neither files nor directories restored (created or
    /// replaced): symlinks, FIFOs, sockets, device nodes. Before, a restore counted them
    /// nowhere (`files_restored` 0 for a snapshot of symlinks), while a rerun counted
    /// them in `skipped_identical`. So `files_restored + others_restored +
    /// skipped_identical + conflicts_total` is the snapshot's non-directory entries the
    /// restore went through, less those a problem stopped.
    #[serde(default)]
    pub others_restored: u64,
    pub dirs_created: u64,
    pub bytes_restored: u64,
    /// Files restored as hard links to another restored file (the source's link groups).
    pub hard_links: u64,
    pub skipped_identical: u64,
    pub overwritten: u64,
    pub deleted: u64,
    /// `--mirror`: entries of the target the snapshot does not have but its run's
    /// exclusion settings left out (a pattern, a tagged directory's contents), kept
    /// rather than deleted (an entry counts once, a kept directory with its contents).
    #[serde(default)]
    pub kept_excluded: u64,
    /// Temporary files a stopped restore into `--to` left, deleted by this rerun (only
    /// a stopped run's: its pid is in the record, or no process of it is alive).
    #[serde(default)]
    pub temporary_removed: u64,
    pub conflicts_total: u64,
    pub conflicts: Vec<Conflict>,
    pub errors: u64,
    pub problems: Vec<Problem>,
    /// This restore's log file (next to the catalog), when it is recorded.
    /// Not UTF-8: `log_raw` beside it holds the bytes.
    #[serde(flatten, with = "crate::localpath::log::nullable")]
    pub log: Option<PathBuf>,
    /// What went wrong beside the restore itself (the catalog could not be written).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Who was told about this restore (a configured job's notifiers).
    #[serde(default)]
    pub notifications: Vec<crate::report::NotifyOutcome>,
}

fn restore_kind() -> String {
    "restore".into()
}

impl RestoreOptions {
    /// `--path` as the user typed it (its literal reading, `%` as itself), for messages.
    fn path_typed(&self) -> PathBuf {
        let l = self.path_literal.as_ref().or(self.path.as_ref());
        l.map(|l| l.as_path().to_path_buf()).unwrap_or_default()
    }
}

impl RestoreReport {
    /// The report of a restore that could not start (no such store or snapshot, a
    /// target it cannot open): `failed` with `message`, nothing written.
    pub fn not_started(opts: &RestoreOptions, started_at: String, message: String) -> Self {
        let t0 = chrono::DateTime::parse_from_rfc3339(&started_at).ok();
        let seconds = t0.map_or(0.0, |t| {
            (chrono::Utc::now().timestamp_millis() - t.timestamp_millis()) as f64 / 1000.0
        });
        RestoreReport {
            kind: restore_kind(),
            id: None,
            job: None,
            host: report::hostname(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            snapshot: opts.snapshot.clone(),
            run_id: None,
            store: opts.store.clone(),
            to: opts.to.clone(),
            path: opts.path.as_ref().map(|p| p.escaped()),
            mode: opts.mode,
            dry_run: opts.dry_run,
            started_at,
            finished_at: Some(report::now_rfc3339()),
            duration_seconds: seconds.max(0.0),
            status: Status::Failed,
            exit_code: Status::Failed.exit_code(),
            message,
            files_restored: 0,
            others_restored: 0,
            dirs_created: 0,
            bytes_restored: 0,
            hard_links: 0,
            skipped_identical: 0,
            overwritten: 0,
            deleted: 0,
            kept_excluded: 0,
            temporary_removed: 0,
            conflicts_total: 0,
            conflicts: Vec::new(),
            errors: 0,
            problems: Vec::new(),
            log: None,
            warnings: Vec::new(),
            notifications: Vec::new(),
        }
    }
}

#[derive(Default)]
struct Counts {
    files: AtomicU64,
    /// Symlinks, FIFOs, sockets and device nodes restored (`others_restored`).
    others: AtomicU64,
    dirs: AtomicU64,
    bytes: AtomicU64,
    hard_links: AtomicU64,
    identical: AtomicU64,
    overwritten: AtomicU64,
    deleted: AtomicU64,
    kept_excluded: AtomicU64,
    /// Temporary files of a stopped restore deleted ([`Restore::remove_leftovers`]).
    leftovers: AtomicU64,
    conflicts: Mutex<Vec<Conflict>>,
    conflicts_total: AtomicU64,
    /// Of those, names the target holds as one with another of the snapshot (`d`, `D`
    /// on FAT: [`Restore::in_the_way`]), which `--overwrite` does not change.
    case_conflicts: AtomicU64,
    problems: Mutex<Vec<Problem>>,
    errors: AtomicU64,
    /// Entries the target did not keep the snapshot's mode of (FAT, exFAT: no modes),
    /// its owner of (checked on a rerun only: a first run names each), or its
    /// modification time of (kept coarser), with the first such path and the largest
    /// difference of times seen (ns). Reported once each ([`Restore::report`]).
    modes_lost: AtomicU64,
    owners_lost: AtomicU64,
    times_lost: AtomicU64,
    lost_first: Mutex<Option<RelPath>>,
    time_off_ns: AtomicU64,
}

impl Counts {
    /// Whether the restore created, replaced or deleted any entry.
    fn wrote_anything(&self) -> bool {
        [
            &self.files,
            &self.others,
            &self.dirs,
            &self.hard_links,
            &self.overwritten,
            &self.deleted,
        ]
        .iter()
        .any(|c| c.load(Ordering::Relaxed) > 0)
    }
}

/// A stat's modification time, (seconds, nanoseconds).
#[allow(clippy::unnecessary_cast)]
fn mtime_of(st: &rustix::fs::Stat) -> (i64, i64) {
    (st.st_mtime as i64, st.st_mtime_nsec as i64)
}

/// A stat's access and modification times, to set again.
#[allow(clippy::unnecessary_cast)]
fn stat_times(st: &rustix::fs::Stat) -> rustix::fs::Timestamps {
    rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// What the target file system keeps of what a restore sets, and whether it holds
/// special files, found by a probe file ([`Restore::holds`]) when an existing entry
/// differs only in mode, owner or time, or a special file could not be made.
#[derive(Clone, Copy, Debug)]
struct Holds {
    mode: bool,
    owner: bool,
    /// Times within this many ns of each other are the same time there (0: exact).
    time_ns: u64,
    /// A fifo can be made there (FAT through `fusefat` answers EIO, and leaves an
    /// empty regular file of that name).
    special: bool,
}

impl Holds {
    const ALL: Holds = Holds {
        mode: true,
        owner: true,
        time_ns: 0,
        special: true,
    };

    /// A file system the probe found to be one that cannot hold everything (FAT,
    /// exFAT): no modes, or no special files.
    fn limited(&self) -> bool {
        !self.mode || !self.special
    }
}

/// A target-side error that is about this entry and that a rerun cannot get past: a
/// name (`a:b`, bytes that are not UTF-8, too long), a type (a symlink, a fifo), a size
/// or an operation the target's file system cannot hold (FAT, exFAT, SMB).
fn cannot_hold(e: &std::io::Error) -> bool {
    [
        Errno::NOSYS,
        Errno::OPNOTSUPP,
        Errno::INVAL,
        Errno::ILSEQ,
        Errno::NAMETOOLONG,
        Errno::FBIG,
    ]
    .iter()
    .any(|n| fsx::errno_is(e, *n))
}

/// `chmod` refused by a file system that has no modes (vfat: EPERM, a FUSE one:
/// ENOSYS, EOPNOTSUPP). Said of a file this restore made and owns, EPERM cannot be a
/// permission.
fn mode_refused(e: &std::io::Error) -> bool {
    fsx::errno_is(e, Errno::PERM) || cannot_hold(e)
}

/// statfs(2) `f_type` of file systems that may not keep a mode, an owner or an exact
/// time: FAT (`msdos`, `vfat`), exFAT, NTFS (`ntfs`, `ntfs3`), SMB/CIFS, HFS+, and FUSE
/// (exFAT's and FAT's drivers, ntfs-3g, a share mounted by a FUSE client).
const MAY_NOT_HOLD_MAGIC: [u64; 9] = [
    0x4d44,      // MSDOS_SUPER_MAGIC
    0x2011_bab0, // EXFAT_SUPER_MAGIC
    0x5346_544e, // NTFS_SB_MAGIC
    0x7366_746e, // NTFS3
    0xff53_4d42, // CIFS_SUPER_MAGIC
    0xfe53_4d42, // SMB2_SUPER_MAGIC
    0x517b,      // SMB_SUPER_MAGIC
    0x482b,      // HFSPLUS_SUPER_MAGIC
    0x6573_5546, // FUSE_SUPER_MAGIC
];

/// What the partial summary says would resolve `total` conflicts, `case` of them names
/// the target holds as one ([`Restore::in_the_way`]): `--overwrite` replaces the others
/// only; no option puts both names into such a target.
fn conflict_hint(total: u64, case: u64) -> String {
    let case_hint = "names that differ only in case, one name on the target's file system: no option restores both there; restore the other with --path into another --to";
    match case {
        0 => "--overwrite replaces them".into(),
        c if c >= total => case_hint.into(),
        c => format!(
            "{c} of them {case_hint}; --overwrite replaces the other {}",
            total - c
        ),
    }
}

/// How far apart two times are, in ns (saturating).
fn time_off(a: &fsx::Time, b: &fsx::Time) -> u64 {
    let ns = |t: &fsx::Time| i128::from(t.sec) * 1_000_000_000 + i128::from(t.nsec);
    u64::try_from((ns(a) - ns(b)).unsigned_abs()).unwrap_or(u64::MAX)
}

/// `fchmod` to `perm`; one a file system without modes refuses ([`mode_refused`])
/// is no error: the mode the entry kept is checked afterwards ([`Restore::kept`]).
fn chmod_held(fd: std::os::fd::BorrowedFd<'_>, perm: u32) -> std::io::Result<()> {
    match rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(perm)) {
        Err(e) if !mode_refused(&e.into()) => Err(e.into()),
        _ => Ok(()),
    }
}

/// A directory's metadata, as [`fsx::apply_dir_meta`] sets it (xattrs, owner and
/// mode, times), but a mode the file system refuses ([`mode_refused`]) does not keep
/// its times from being set.
fn dir_meta(fd: std::os::fd::BorrowedFd<'_>, m: &Meta, xs: &Xattrs) -> std::io::Result<()> {
    fsx::write_xattrs(&XattrTarget::Fd(fd), xs)?;
    let owner = fsx::owner_later(fsx::chown_fd(fd, m))?;
    chmod_held(fd, fsx::perm_kept(m, owner.as_ref()))?;
    fsx::apply_times(fd, m)?;
    fsx::owner_after(Ok(()), owner)
}

/// `n` as a file system that ignores case compares it (UTF-8 lower-cased; other bytes
/// ASCII lower-cased).
fn folded(n: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(n) {
        Ok(s) => s.to_lowercase().into_bytes(),
        Err(_) => n.to_ascii_lowercase(),
    }
}

/// The entry of target directory `dir` that holds `name` when the listing has no
/// entry of exactly that name: one whose name equals it but for case (`None` when
/// nothing answers to `name`, when `name` itself is there, or none is found).
fn case_twin(dir: &OwnedFd, name: &[u8]) -> Option<Vec<u8>> {
    fsx::lstat_at(b(dir), name).ok()?;
    let names = fsx::read_dir_names(b(dir)).ok()?;
    if names.iter().any(|n| n == name) {
        return None;
    }
    let f = folded(name);
    names.into_iter().find(|n| folded(n) == f)
}

/// The names of a snapshot listing that another name of it equals but for case: on a
/// target that ignores case (FAT, exFAT, SMB) only one of them can be restored.
fn case_twins(items: &[Listed]) -> HashSet<Vec<u8>> {
    let mut seen: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut twins = HashSet::new();
    for it in items {
        let n = it.name();
        if let Some(first) = seen.insert(folded(n), n.to_vec()) {
            twins.insert(first);
            twins.insert(n.to_vec());
        }
    }
    twins
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// One directory of the snapshot being restored into one directory of the target: the
/// walk's state for it, alive until its subtree is done.
struct Node<D> {
    src: D,
    /// `None` in a dry run when the target directory does not exist yet.
    dst: Option<OwnedFd>,
    /// Path in the snapshot.
    src_rel: RelPath,
    /// Path under the target.
    dst_rel: RelPath,
    /// Give the target directory the snapshot's metadata when done (it was created by
    /// the restore, or the mode allows replacing metadata).
    apply_meta: bool,
    /// The restore created the target directory: nothing is in it, so no entry needs a
    /// look at what exists (one call per entry saved, a round trip each on NFS).
    fresh: bool,
    /// The restore made this directory (now, or a stopped run recorded it in
    /// [`Unfinished`]): its files are written under their own names, no temporary name
    /// and rename (two round trips per file on NFS), and a rerun replaces what differs.
    ours: bool,
    /// What is created in the target directory may inherit a default ACL from it: it
    /// has one (or could not be asked), or the restore created it (its snapshot
    /// metadata comes last) in a directory that may have passed one on. Entries created
    /// here then lose the inherited ACL the snapshot's entry does not have (a named
    /// user's entry it never had is a grant); elsewhere that costs no call.
    may_inherit: bool,
    /// The managed attributes ([`fsx::managed_xattr`]) the target directory had when
    /// opened (one the restore created: the ACLs it may have inherited), removed when it
    /// gets the snapshot's metadata unless the snapshot has them. `None`: unknown, listed
    /// again then.
    had_xattrs: Option<Vec<Vec<u8>>>,
    meta: Meta,
    xattrs: Xattrs,
    /// Names of this directory's listing that another equals but for case
    /// ([`case_twins`]): looked for in the target before they are restored.
    twins: HashSet<Vec<u8>>,
}

/// What a queued subdirectory carries besides its name (never a descriptor).
struct Sub {
    /// Its `lstat` in the snapshot.
    meta: Meta,
    /// The restore creates it in the target (else a directory is there already).
    create: bool,
    apply_meta: bool,
}

/// The walk's first directory, opened and planned before the walk.
struct Start<D> {
    node: Node<D>,
    /// The one entry of it named by `--path`, when only that is restored.
    only: Option<Listed>,
}

/// One entry being restored: its directory, its name, its paths on both sides.
struct At<'a, D> {
    node: &'a Node<D>,
    name: &'a [u8],
    /// In the snapshot.
    src_rel: RelPath,
    /// Under the target.
    rel: RelPath,
}

#[derive(Clone)]
enum Link {
    Pending,
    /// Restored at this path under the target.
    Done(RelPath),
    Failed,
}

/// What joining a hard-link group gave.
enum Joined {
    /// The first member: restore it, then let the others link to it.
    Leader,
    /// Linked to the first member: done.
    Linked,
    /// Restore it on its own (the first member failed, or linking to it did).
    Copy,
}

/// What is known of a snapshot entry's source beyond its facts.
struct Source {
    /// The file, opened already (`SnapshotReader::stat_open`).
    fd: Option<OwnedFd>,
    /// The snapshot's record says the entry has no extended attributes: none to list.
    no_xattrs: bool,
    /// The entry's extended attributes, read already and checked against the digest its
    /// manifest entry recorded ([`Restore::checked_xattrs`]: none where they differ);
    /// `None`: read them when needed.
    xattrs: Option<Xattrs>,
    /// A symlink's target, read from the tree and checked against the manifest (the
    /// recorded one where they differ); `None`: read it when needed.
    target: Option<Vec<u8>>,
}

struct Restore<'a, R: SnapshotReader> {
    opts: &'a RestoreOptions,
    reader: &'a R,
    /// The target (`None` only in a dry run of a target that does not exist yet).
    to_root: Option<&'a OwnedFd>,
    counts: Counts,
    cancel: &'a AtomicBool,
    fatal: Mutex<Option<Error>>,
    links: Mutex<HashMap<u64, Link>>,
    links_cv: Condvar,
    plan: Mutex<Box<dyn Write + Send>>,
    /// Taken by the walk's first task.
    start: Mutex<Option<Start<R::Dir>>>,
    /// What this restore leaves unfinished if it is stopped (see [`Unfinished`]).
    unfinished: Unfinished,
    /// Numbers the temporary names files are written under.
    tmp_seq: AtomicU64,
    /// This process's id, for temporary names (read once: `getpid` is a syscall).
    pid: u32,
    /// `--mirror`: what the snapshot's run left out (`Selected::exclusions`, the rules
    /// `diff`/`verify --against` leave out of a live tree), which it does not delete.
    excludes: Option<crate::exclude::Excludes>,
    /// The mount `--to` is on: `--mirror` deletes nothing on another one below it
    /// ([`Restore::mirror_deletes`]).
    to_mount: Option<fsx::MountKey>,
    /// The snapshot's run stayed on its source's file system (`one_file_system`): a
    /// mount point in it is an empty directory that stood for another file system.
    one_fs_run: bool,
    /// What the target keeps, probed once when first needed ([`Restore::holds`]).
    holds: std::sync::OnceLock<Holds>,
    /// The longest prefix of `--to` that exists: where a dry run into a target (or a
    /// directory of it) that does not exist yet probes ([`Restore::plan_not_held`]).
    existing: &'a OwnedFd,
    /// Entries restored without attributes the store refused at backup
    /// (`manifest::Entry::refused`), the first [`NOT_KEPT_NAMED`] of those names, and
    /// whether there were more.
    not_kept: Mutex<(u64, Vec<Vec<u8>>, bool)>,
    /// Entries restored without attributes the store refused at backup whose refusal
    /// is only logged (`fsx::xattr_refusal_said`), and those names: one log line.
    unsaid: Mutex<(u64, std::collections::BTreeSet<Vec<u8>>)>,
}

/// How many attribute names the warning of entries restored without attributes the
/// store refused names (then "…").
const NOT_KEPT_NAMED: usize = 8;

/// The name, in the target root, of the record of a restore's unfinished work. Absent
/// once a restore has walked the whole tree. When the restore puts an entry of that
/// name into the target root (a snapshot of a tree that held a stopped restore), or a
/// file of that name there is not a record, the record is `<name>.1`, `<name>.2`, …
/// ([`marker_name`]).
pub(crate) use crate::fsx::RESTORE_RECORD as UNFINISHED;

/// Whether `n` is a name the record of unfinished work may have ([`UNFINISHED`]).
fn is_marker_name(n: &[u8]) -> bool {
    n.strip_prefix(UNFINISHED).is_some_and(|rest| {
        rest.is_empty()
            || rest
                .strip_prefix(b".")
                .is_some_and(|d| !d.is_empty() && d.iter().all(u8::is_ascii_digit))
    })
}

/// The first line of a record of unfinished work in target root `to`: its format and
/// the target's device and inode. A file of the record's name restored from a snapshot
/// (a tree where a restore was once stopped) names another directory, and is the
/// user's, not this target's record (an empty file, a record cut short before its first
/// line, is taken as one).
pub(crate) use crate::fsx::restore_record_header as record_header;
/// The record's name in target root `to`: the first of [`UNFINISHED`], `….1`, `….2`, …
/// that the restore does not put there (`restored`: the names of the entries it writes
/// into the target root), and that is either absent or a record (each line `d
/// <path>`; a user's file of that name is left alone). The same on a rerun of the same
/// restore, which so finds the record of the stopped one.
pub(crate) use crate::fsx::restore_record_name as marker_name;

/// Files in directories that were there before are written as
/// `.snapring-restore.<tag>.tmp`, then renamed into place.
const TMP_PREFIX: &[u8] = b".snapring-restore.";
const TMP_SUFFIX: &[u8] = b".tmp";

/// A restore's own unfinished work, so a rerun of a stopped restore (SIGTERM, SIGKILL,
/// power loss aside) finishes it instead of taking it for the user's:
/// - in a directory that was there before the restore, every file is written under a
///   temporary name and renamed into place only when its bytes and metadata are done, so
///   a killed restore leaves no half-written file under a real name there, only
///   temporary names, which a rerun deletes (those of a stopped run: its pid is in the
///   record, or no process of that pid is alive; another restore's, alive, into a
///   nested `--to`, are left alone); in a directory the restore made (recorded below),
///   files are written under their own names, and a rerun replaces what differs;
/// - every directory the restore creates is appended to a record in the target root
///   before it is made (its metadata is applied last, when its subtree is done); a
///   rerun gives those directories the snapshot's metadata even though they exist now
///   (a user's existing directory is still left alone in the default mode).
///
/// The record names the restore (its `s` line, [`Identity`]: the store, the
/// snapshot's run, the mode, `--flat`, `--path`), and each run that wrote it (`p
/// <pid>`). Only a rerun of the same restore takes the recorded directories as its
/// own; another restore into that `--to` is refused ([`Unfinished::read`]): its files
/// differ from those directories' by design, and it replaced a user's edit there as
/// "the stopped run's" work. A record without an `s` line (written before 2026-12-07)
/// does not say whose it is: its directories are not taken as anyone's (what differs
/// there is a conflict, as anywhere), said in a warning, and the record is begun again.
///
/// The record is removed when a restore has walked the whole tree (the target root's
/// metadata is applied again after that, as removing an entry touches its mtime).
#[derive(Default)]
struct Unfinished {
    /// The record's name in the target root ([`marker_name`]).
    name: Vec<u8>,
    /// The record, appended to (`None` in a dry run).
    log: Option<Mutex<std::fs::File>>,
    /// Lines not yet written: the directories of a listing are recorded in one write,
    /// made before the first of them is created ([`Unfinished::flush`]).
    pending: Mutex<Vec<u8>>,
    /// Directories an earlier, stopped run of this restore created (escaped target
    /// paths).
    ours: std::collections::HashSet<String>,
    /// Directories a record that does not name its restore (written before 2026-12-07)
    /// lists: made by a stopped restore, so they get the snapshot's metadata (they
    /// were left with the mode they were made with, 0700), but what differs in them is
    /// a conflict, as they may be another restore's.
    made_unnamed: std::collections::HashSet<String>,
    /// A record was there: an earlier restore into this target was stopped (this one,
    /// or one that did not say which it was).
    rerun: bool,
    /// The pids of the runs the record names: their temporary files are leftovers
    /// even if a process of that pid is alive now.
    pids: std::collections::HashSet<u32>,
    /// The record names this restore (its `s` line): appended to, not begun again.
    named: bool,
    /// What the report says about the record (one that does not name its restore).
    warning: Option<String>,
    /// The target root's stat before this restore created its record, and its mtime
    /// just after: when nothing else changed the root since, removing the record gives
    /// it back the times it had ([`Restore::finish_unfinished`]).
    root_before: Option<(rustix::fs::Stat, (i64, i64))>,
}

/// The line of the record of unfinished work that names a restore from a store: `s
/// <store dev>:<ino> <snapshot> <mode> <flat|nested> <path> <store path>`, the
/// snapshot as `run:<run id>` (a rotation renames `daily.0`, not its run) or, for a
/// tree taken over with no run, `dir:<name>:<inode>`; `--path` escaped (`.`: all).
/// Restores are the same when the snapshot, mode, layout and path agree: a run id
/// names one run whatever store holds it (another mount, a remount with another device
/// number, a copy of the store on another disk), so its store's `dev:ino` is not
/// compared; a taken-over tree's name and inode are compared with them
/// ([`Identity::same_restore`]). Written by [`Identity`]'s `Display`, read by
/// [`Identity::parse`]: the one place each way (the line was split in three).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    /// The store root's device and inode.
    store_id: (u64, u64),
    snap: RecordedSnapshot,
    mode: Mode,
    flat: bool,
    /// `--path`, escaped (`relpath::escape`); `.` for the whole snapshot.
    path: String,
    /// The store's path, escaped.
    store: String,
}

/// The snapshot an [`Identity`] names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RecordedSnapshot {
    /// `run:<id>`, the id escaped.
    Run(String),
    /// `dir:<name>:<inode>`: a tree taken over, with no run; the name escaped.
    Dir { name: String, ino: u64 },
}

impl Identity {
    /// The restore `opts` of snapshot `sel` from `store`.
    fn of(opts: &RestoreOptions, store: &Store, sel: &Selected) -> Result<Self> {
        let st = fsx::fstat(b(&store.root_fd)).ctx("stat", &store.root)?;
        let esc = |s: &[u8]| crate::relpath::escape(s);
        Ok(Identity {
            store_id: (st.dev, st.ino),
            snap: match &sel.snap.rec {
                Some(r) => RecordedSnapshot::Run(esc(r.id.as_bytes())),
                None => RecordedSnapshot::Dir {
                    name: esc(sel.snap.name.as_bytes()),
                    ino: sel.snap.ino,
                },
            },
            mode: opts.mode,
            flat: opts.flat,
            path: opts
                .path
                .as_ref()
                .map_or_else(|| ".".into(), |p| p.escaped()),
            store: esc(store.root.as_os_str().as_bytes()),
        })
    }

    /// Reads an `s` line as [`Identity`]'s `Display` writes it; `None` for any other
    /// line (another form, a field missing or out of place: another restore's, as far
    /// as this one can tell).
    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split(' ').collect();
        let [tag, store_id, snap, mode, layout, path, store] = f[..] else {
            return None;
        };
        if tag != "s" || path.is_empty() || store.is_empty() {
            return None;
        }
        let (dev, ino) = store_id.split_once(':')?;
        let snap = if let Some(id) = snap.strip_prefix("run:") {
            RecordedSnapshot::Run(id.to_string())
        } else {
            let (name, ino) = snap.strip_prefix("dir:")?.rsplit_once(':')?;
            RecordedSnapshot::Dir {
                name: name.to_string(),
                ino: ino.parse().ok()?,
            }
        };
        Some(Identity {
            store_id: (dev.parse().ok()?, ino.parse().ok()?),
            snap,
            mode: match mode {
                "safe" => Mode::Safe,
                "overwrite" => Mode::Overwrite,
                "mirror" => Mode::Mirror,
                _ => return None,
            },
            flat: match layout {
                "flat" => true,
                "nested" => false,
                _ => return None,
            },
            path: path.to_string(),
            store: store.to_string(),
        })
    }

    /// Whether `self` and `other` are the same restore: never by the store's path; by
    /// the store's `dev:ino` only with a taken-over tree's `dir:` (an inode number is
    /// unique only on one device), not with a `run:` (the device number changes when
    /// the store's disk is plugged in again or its file system mounted again, and a
    /// rerun of the same restore was then refused for good, its hint naming the
    /// refused command).
    fn same_restore(&self, other: &Identity) -> bool {
        self.snap == other.snap
            && self.mode == other.mode
            && self.flat == other.flat
            && self.path == other.path
            && (matches!(self.snap, RecordedSnapshot::Run(_)) || self.store_id == other.store_id)
    }

    /// The command that runs this restore again into `to`, each argument quoted for a
    /// POSIX shell so it can be pasted as it is (`--path` as it is typed:
    /// [`crate::relpath::typed`]); they were printed escaped, `my%20store`, which
    /// `--dest` does not read.
    fn command(&self, to: &Path) -> String {
        let q = crate::relpath::shell_quote;
        let raw = |s: &str| crate::relpath::unescape(s).unwrap_or_else(|_| s.as_bytes().to_vec());
        let snap = match &self.snap {
            RecordedSnapshot::Run(id) => raw(id),
            RecordedSnapshot::Dir { name, .. } => raw(name),
        };
        // `--dest=…`: a value that starts with `-` (`--path -notes`) is read by clap as
        // an option when it is a word of its own. A snapshot's name starts with a letter
        // or a digit.
        let mut c = format!(
            "snapring restore --dest={} {}",
            q(&raw(&self.store)),
            q(&snap)
        );
        if self.path != "." {
            let typed = crate::relpath::typed(&raw(&self.path));
            c.push_str(&format!(" --path={}", q(typed.as_bytes())));
        }
        if self.flat {
            c.push_str(" --flat");
        }
        match self.mode {
            Mode::Overwrite => c.push_str(" --overwrite"),
            Mode::Mirror => c.push_str(" --mirror"),
            Mode::Safe => {}
        }
        format!("{c} --to={}", q(to.as_os_str().as_bytes()))
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snap = match &self.snap {
            RecordedSnapshot::Run(id) => format!("run:{id}"),
            RecordedSnapshot::Dir { name, ino } => format!("dir:{name}:{ino}"),
        };
        let mode = match self.mode {
            Mode::Safe => "safe",
            Mode::Overwrite => "overwrite",
            Mode::Mirror => "mirror",
        };
        write!(
            f,
            "s {}:{} {snap} {mode} {} {} {}",
            self.store_id.0,
            self.store_id.1,
            if self.flat { "flat" } else { "nested" },
            self.path,
            self.store
        )
    }
}

/// Refuses the restore `identity` into `to_path` when the record of unfinished work at
/// `path`, `text`, is another restore's: another store, snapshot, mode, `--flat` or
/// `--path` (its `s` line, [`Identity::same_restore`]), or a repository's (its `r`
/// line). The hint's command and paths are quoted for a shell, to be pasted.
fn refuse_other(text: &str, identity: &Identity, to_path: &Path, path: &Path) -> Result<()> {
    let shown = crate::relpath::shown(path);
    let discard = format!(
        "or discard it by deleting {} (what it left is then the user's: files that differ are conflicts, which --overwrite replaces, and the directories it made keep the mode it made them with, 0700, unless --overwrite sets them)",
        crate::relpath::shell_quote(path.as_os_str().as_bytes())
    );
    let other = text.lines().filter(|l| l.starts_with("s ")).find_map(|l| {
        match Identity::parse(l) {
            Some(o) if o.same_restore(identity) => None,
            Some(o) => Some(o.command(to_path)),
            // Not a line this snapring writes: whose restore it is cannot be told.
            None => Some(format!("its record names it as {l:?}")),
        }
    });
    if let Some(command) = other {
        return Err(Error::Refused(format!(
            "{} holds an unfinished restore of another store, snapshot, mode or path (record {shown}); nothing was written. Finish that one by running it again ({command}), {discard}",
            crate::relpath::shown(to_path),
        )));
    }
    if let Some(r) = text.lines().find(|l| l.starts_with("r ")) {
        return Err(Error::Refused(format!(
            "{} holds an unfinished restore from a repository (record {shown}: {r}); nothing was written. Finish that one by running it again, {discard}",
            crate::relpath::shown(to_path),
        )));
    }
    Ok(())
}

/// [`refuse_other`] for every record of unfinished work in target root `to` (a file of
/// a record's name whose first line names this target), before the restore writes
/// anything (`--path` makes its ancestors before its record is opened).
fn refuse_other_records(to: &OwnedFd, to_path: &Path, identity: &Identity) -> Result<()> {
    use std::io::Read;
    let header = record_header(to);
    let names = fsx::read_dir_names(b(to)).ctx("read", to_path)?;
    for n in names.iter().filter(|n| is_marker_name(n)) {
        let Ok(fd) = fsx::open_read_at(b(to), n) else {
            continue;
        };
        let mut raw = Vec::new();
        let path = to_path.join(std::ffi::OsStr::from_bytes(n));
        std::fs::File::from(fd)
            .read_to_end(&mut raw)
            .ctx("read", &path)?;
        if raw.starts_with(&header) {
            refuse_other(&String::from_utf8_lossy(&raw), identity, to_path, &path)?;
        }
    }
    Ok(())
}

impl Unfinished {
    /// Reads the record `name` in target root `to` (`to_path`, for messages), if any,
    /// for the restore `identity` ([`Identity`]): the same decision for a dry
    /// run and the restore. A record of another restore (another store, snapshot,
    /// mode, `--flat` or `--path`; or a repository's) refuses this one, nothing written.
    fn read(to: &OwnedFd, to_path: &Path, name: Vec<u8>, identity: &Identity) -> Result<Self> {
        use std::io::Read;
        let path = to_path.join(std::ffi::OsStr::from_bytes(&name));
        let mut u = Unfinished {
            name,
            ..Unfinished::default()
        };
        let text = match fsx::open_read_at(b(to), &u.name) {
            Ok(fd) => {
                let mut raw = Vec::new();
                std::fs::File::from(fd)
                    .read_to_end(&mut raw)
                    .ctx("read", &path)?;
                u.rerun = true;
                String::from_utf8_lossy(&raw).into_owned()
            }
            Err(e) if fsx::errno_is(&e, Errno::NOENT) => return Ok(u),
            Err(e) => return Err(io_error(e, "open", path)),
        };
        refuse_other(&text, identity, to_path, &path)?;
        u.pids = text
            .lines()
            .filter_map(|l| l.strip_prefix("p ")?.split(' ').next()?.parse().ok())
            .collect();
        let dirs = text.lines().filter_map(|l| l.strip_prefix("d "));
        u.named = text.lines().any(|l| l.starts_with("s "));
        if u.named {
            u.ours = dirs.map(str::to_string).collect();
        } else if dirs.clone().next().is_some() {
            u.made_unnamed = dirs.map(str::to_string).collect();
            u.warning = Some(format!(
                "{} is the record of a stopped restore that does not say which restore it was (written by snapring before 2026-12-07): the directories it names are not taken as this restore's, so a file that differs in them is a conflict (--overwrite replaces it); the directories themselves get the snapshot's metadata; the record is begun again for this restore",
                crate::relpath::shown(&path)
            ));
        }
        Ok(u)
    }

    /// `restored`: the names the restore puts into the target root ([`marker_name`]);
    /// `identity`: the restore's ([`Identity`]).
    fn open(
        to: &OwnedFd,
        to_path: &Path,
        to_was_new: bool,
        restored: &[Vec<u8>],
        identity: &Identity,
    ) -> Result<Self> {
        let mut u = Self::read(to, to_path, marker_name(to, restored), identity)?;
        let path = to_path.join(std::ffi::OsStr::from_bytes(&u.name));
        let before = (!u.rerun).then(|| rustix::fs::fstat(to).ok()).flatten();
        // A record that names this restore is appended to; any other (none, empty, one
        // cut short, one that does not name its restore) is begun again.
        let named = u.named;
        let mut f = std::fs::OpenOptions::new()
            .append(named)
            .write(!named)
            .truncate(!named)
            .create(true)
            .open(&path)
            .ctx("create", &path)?;
        u.root_before = before.zip(rustix::fs::fstat(to).ok().map(|st| mtime_of(&st)));
        let mut head = Vec::new();
        if !named {
            head.extend_from_slice(&record_header(to));
            head.extend_from_slice(format!("{identity}\n").as_bytes());
        }
        head.extend_from_slice(format!("p {}\n", std::process::id()).as_bytes());
        f.write_all(&head).ctx("write", &path)?;
        u.log = Some(Mutex::new(f));
        if to_was_new {
            u.record(&RelPath::root());
            u.flush().ctx("write", &path)?;
        }
        Ok(u)
    }

    /// Notes that the restore will create directory `rel`; written by the next
    /// [`Unfinished::flush`], which comes before the directory is made.
    fn record(&self, rel: &RelPath) {
        if self.log.is_none() {
            return;
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.extend_from_slice(format!("d {}\n", rel.escaped()).as_bytes());
    }

    /// Writes what was noted, in one `write`. Kept for the next try if that fails (a
    /// line written twice is harmless).
    fn flush(&self) -> std::io::Result<()> {
        let Some(log) = &self.log else { return Ok(()) };
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_empty() {
            return Ok(());
        }
        let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&p)?;
        p.clear();
        crate::failpoint::hit("restore.recorded")?;
        Ok(())
    }

    fn created_before(&self, rel: &RelPath) -> bool {
        self.rerun && self.ours.contains(&rel.escaped())
    }

    /// Directory `rel` was made by a stopped restore ([`Unfinished::created_before`], or
    /// one whose record does not name it): its metadata is the snapshot's to set.
    fn made_by_a_restore(&self, rel: &RelPath) -> bool {
        self.created_before(rel) || (self.rerun && self.made_unnamed.contains(&rel.escaped()))
    }

    /// Whether temporary file `n` ([`is_tmp_name`]) is a stopped run's: its pid is one
    /// the record names or this process's, or no process of that pid is alive on this
    /// host (a pid no process can have: none).
    fn leftover(&self, n: &[u8]) -> bool {
        let pid = n
            .strip_prefix(TMP_PREFIX)
            .and_then(|r| r.split(|&c| c == b'-').next())
            .and_then(|d| std::str::from_utf8(d).ok()?.parse::<u32>().ok());
        let Some(pid) = pid else { return true };
        // This process's own: a directory is read for leftovers before the restore
        // writes anything there, so that is a stopped run's that had this pid (a
        // container's pids start over).
        if self.pids.contains(&pid) || pid == std::process::id() {
            return true;
        }
        match i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            None => true,
            Some(p) => rustix::process::test_kill_process(p) == Err(Errno::SRCH),
        }
    }
}

/// Whether `n` is a name [`Restore::tmp_name`] makes (`<prefix><pid>-<n><suffix>`): a
/// user's file that only begins and ends alike is not deleted as a leftover.
fn is_tmp_name(n: &[u8]) -> bool {
    n.strip_prefix(TMP_PREFIX)
        .and_then(|r| r.strip_suffix(TMP_SUFFIX))
        .and_then(|tag| {
            let (pid, seq) = tag.split_at(tag.iter().position(|&c| c == b'-')?);
            let digits = |d: &[u8]| !d.is_empty() && d.iter().all(u8::is_ascii_digit);
            Some(digits(pid) && digits(&seq[1..]))
        })
        .unwrap_or(false)
}

/// Restores per `opts`. `Err` only when nothing could start (unknown snapshot or path,
/// unusable target); everything after that ends in a report.
pub fn restore(opts: &RestoreOptions, cancel: &AtomicBool) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let started_at = report::now_rfc3339();
    fsx::raise_fd_limit();
    let store = Store::open_read(&opts.store)?;
    let sel = store.select(&opts.snapshot)?;
    let reader = TreeReader::for_restore(b(&sel.fd), sel.manifest.as_ref());
    let (target, existing) = check_target(opts, &store)?;
    let found = locate(opts, &sel, &reader)?;
    let path_warning = found.warning.clone();
    // `--path`: the entry restored, and whether it is a directory (which manifest blocks
    // its content's checks need).
    let restored_entry = found
        .named
        .as_ref()
        .map(|(rel, _, kind)| (rel.clone(), *kind == Kind::Dir));
    let excludes = match opts.mode {
        Mode::Mirror => sel.exclusions()?,
        _ => None,
    };
    refuse_flat_mirror(opts, &sel, &reader, &found)?;
    refuse_store_inside(opts, &store, &reader, &found)?;
    refuse_store_mounted_below(opts, &store)?;
    let (to_fd, to_was_new) =
        open_target(opts, &target, &existing).map_err(Error::on_restore_target)?;
    if let Some(fd) = to_fd.as_ref().filter(|_| !opts.dry_run) {
        lock_target(fd, &opts.to)?;
    }
    let identity = Identity::of(opts, &store, &sel)?;
    if let Some(fd) = &to_fd {
        refuse_other_records(fd, &opts.to, &identity)?;
    }
    let mut created_ancestors = Vec::new();
    let mut start = plan_start(
        opts,
        &sel,
        &reader,
        found,
        (to_fd.as_ref(), to_was_new),
        &mut created_ancestors,
    )
    .map_err(Error::on_restore_target)?;
    let unfinished = match &to_fd {
        Some(fd) if !opts.dry_run => {
            let restored = root_names(&reader, &start);
            Unfinished::open(fd, &opts.to, to_was_new, &restored, &identity)
                .map_err(Error::on_restore_target)?
        }
        // A dry run writes no record, but reads a stopped restore's as the restore
        // does: it is refused alike, plans alike what it would replace as that run's,
        // and `--mirror` keeps the record.
        Some(fd) => {
            let name = marker_name(fd, &root_names(&reader, &start));
            Unfinished::read(fd, &opts.to, name, &identity)?
        }
        None => Unfinished::default(),
    };
    // A directory an earlier, stopped restore created gets the snapshot's metadata.
    let whole_dir = start.only.is_none();
    if whole_dir && !opts.dry_run && unfinished.created_before(&start.node.dst_rel) {
        start.node.apply_meta = true;
    }
    if unfinished.created_before(&start.node.dst_rel) {
        start.node.ours = true;
    }
    let plan: Box<dyn Write + Send> = if opts.plan_on_stderr {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let r = Restore {
        opts,
        reader: &reader,
        to_root: to_fd.as_ref(),
        counts: Counts::default(),
        cancel,
        fatal: Mutex::new(None),
        links: Mutex::new(HashMap::new()),
        links_cv: Condvar::new(),
        plan: Mutex::new(plan),
        start: Mutex::new(Some(start)),
        unfinished,
        tmp_seq: AtomicU64::new(0),
        pid: std::process::id(),
        excludes,
        to_mount: to_fd.as_ref().and_then(|fd| fsx::mount_key(b(fd)).ok()),
        one_fs_run: sel.run.as_ref().is_some_and(|r| r.one_file_system),
        holds: std::sync::OnceLock::new(),
        existing: &existing,
        not_kept: Mutex::default(),
        unsaid: Mutex::default(),
    };
    let root_meta = {
        let mut start = r.start.lock().unwrap_or_else(|e| e.into_inner());
        let start = start.as_mut().expect("set above");
        // The restored directory itself (the snapshot's root, `--path DIR --flat`) is
        // listed by no parent: checked against its record here, as every entry is
        // (before, a mode, owner or time changed in the store reached the target).
        if start.only.is_none()
            && let Some(rec) = reader.recorded_dir(&start.node.src)
        {
            r.meta_against_record(&start.node.src_rel, &rec, &mut start.node.meta, Vec::new());
        }
        (whole_dir && start.node.apply_meta && start.node.dst_rel.is_root())
            .then(|| (start.node.meta, start.node.xattrs.clone()))
    };
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        if opts.progress {
            s.spawn(|| crate::engine::progress::spin(&done, || r.progress_line()));
        }
        let jobs = crate::concurrency::resolve(opts.jobs, &[&opts.store, &opts.to]);
        traverse::walk(&r, None, jobs, cancel);
        done.store(true, Ordering::Relaxed);
    });
    // Ancestors the restore created get the snapshot's metadata, deepest first.
    // Each may have inherited a default ACL (and passed it on): the snapshot's only.
    for (fd, m, xs) in created_ancestors.iter().rev() {
        let _ = fsx::remove_xattrs(&XattrTarget::Fd(b(fd)), fsx::INHERITED_DIR, xs);
        let _ = dir_meta(b(fd), m, xs);
    }
    r.finish_unfinished(root_meta);
    // Content restored without its recorded checksums: bit rot in the snapshot would
    // pass unnoticed, so the restore is not `complete` (the snapshot itself is damaged).
    let unchecked = format!(
        "content {} unchecked against the checksums recorded at backup (bit rot would go unnoticed), and hard links by link count; run `snapring verify`",
        if opts.dry_run {
            "would be restored"
        } else {
            "restored"
        }
    );
    // The store's snapshot state did not read and no run was left to pair this tree
    // with (`store/recover.rs`): it may have had a manifest, and nothing was checked.
    if sel.snap.unrecorded {
        r.problem(
            &RelPath::root(),
            ProblemKind::Unreadable,
            "read the snapshot's record",
            format!(
                "the store's snapshot state (.snapring/snapshots.json) is damaged and no run record with a manifest is left for {}: {unchecked}",
                sel.snap.name
            ),
        );
    }
    if let Some(e) = &sel.manifest_error {
        r.problem(
            &RelPath::root(),
            ProblemKind::Unreadable,
            "read the snapshot's manifest",
            format!("{e}: {unchecked}"),
        );
    }
    // Only blocks the restored entries are recorded in: those at or below `--path`, and
    // for a file its directory's (a damaged block elsewhere was read on the way only).
    let needed = |rel: &RelPath| match &restored_entry {
        None => true,
        Some((p, is_dir)) => {
            rel.at_or_below_any(&std::iter::once(p.clone()).collect())
                || (!is_dir && *rel == p.parent())
        }
    };
    for (rel, e) in reader
        .unusable_blocks()
        .into_iter()
        .filter(|(r, _)| needed(r))
    {
        r.problem(
            &rel,
            ProblemKind::Unreadable,
            "read the directory's manifest block",
            format!("{e}: {unchecked}"),
        );
    }
    let mut report = r.report(&sel, &store, started_at, t0);
    report.warnings.splice(0..0, path_warning);
    Ok(report)
}

/// Where the restored entry is in the snapshot: the directory holding it (the root when
/// the whole snapshot is restored), and the entry `--path` names in it.
struct Found<D> {
    dir: D,
    dir_rel: RelPath,
    named: Option<(RelPath, Listed, Kind)>,
    /// `--path` read two ways, both there: the escaped reading is restored, and this
    /// warning names the literal one and the spelling that reaches it.
    warning: Option<String>,
}

/// Finds `--path` in the snapshot, one directory at a time (no path-length limit).
fn locate<R: SnapshotReader>(
    opts: &RestoreOptions,
    sel: &Selected,
    reader: &R,
) -> Result<Found<R::Dir>> {
    let root = reader.root().ctx("open", &sel.path)?;
    let Some(p) = &opts.path else {
        return Ok(Found {
            dir: root,
            dir_rel: RelPath::root(),
            named: None,
            warning: None,
        });
    };
    let shown = sel.path.join(p.as_path());
    // `--path` typed with a real `%` in a name (`a%FFb`, not `a%25FFb`): its literal
    // reading is looked for too. Both there: the escaped reading (snapring's spelling,
    // so a path copied from its output is found) is restored, with a warning naming the
    // other and the spelling that reaches it (it was restored with no word of the
    // other); the literal one alone: named in the error (it was "has no a\xFFb").
    let literal = match &opts.path_literal {
        Some(l) if l != p => {
            let root = reader.root().ctx("open", &sel.path)?;
            find_in(reader, root, l).is_ok().then_some(l)
        }
        _ => None,
    };
    let (dir, listed, kind) = match find_in(reader, root, p) {
        Ok(found) => found,
        Err((e, action)) => {
            let err = not_in_snapshot(e, &sel.path, &sel.snap.name, p, action, &shown);
            return Err(match (err, literal) {
                (Error::Store { path, msg }, Some(l)) => Error::Store {
                    path,
                    msg: format!("{msg}; {}", literal_hint(l)),
                },
                (err, _) => err,
            });
        }
    };
    Ok(Found {
        dir,
        dir_rel: p.parent(),
        named: Some((p.clone(), listed, kind)),
        warning: literal.map(|l| {
            ambiguous_path(
                "--path",
                &opts.path_typed(),
                l,
                &format!("snapshot {}", sel.snap.name),
            )
        }),
    })
}

/// `p`'s entry in the snapshot, from its root, one directory at a time: the directory
/// holding it, its listing and its kind; or the error and the action that failed.
#[allow(clippy::type_complexity)]
fn find_in<R: SnapshotReader>(
    reader: &R,
    root: R::Dir,
    p: &RelPath,
) -> std::result::Result<(R::Dir, Listed, Kind), (std::io::Error, &'static str)> {
    let mut dir = root;
    for c in p.parent().components() {
        dir = reader.open_dir(&dir, c).map_err(|e| (e, "open"))?;
    }
    let listed = reader.find(&dir, p.file_name()).map_err(|e| (e, "stat"))?;
    let st = reader.stat(&dir, listed.clone()).map_err(|e| (e, "stat"))?;
    Ok((dir, listed, st.entry.kind))
}

/// `--flat --mirror` of a directory makes `--to` equal to that directory, so it deletes
/// every entry of `--to` the directory does not have: the siblings of the folder the
/// user meant to restore, if `--to` is where that folder lives (`--path home/alice/docs
/// --to /home/alice`). Refused, before anything is written, when `--to` holds such
/// entries, unless `to_is_dedicated` says they may go. A new or empty `--to` loses
/// nothing and is not refused.
fn refuse_flat_mirror<R: SnapshotReader>(
    opts: &RestoreOptions,
    sel: &Selected,
    reader: &R,
    found: &Found<R::Dir>,
) -> Result<()> {
    let Some((p, _, Kind::Dir)) = &found.named else {
        return Ok(());
    };
    if !opts.flat || opts.mode != Mode::Mirror || opts.to_is_dedicated {
        return Ok(());
    }
    let theirs = match std::fs::read_dir(&opts.to) {
        Ok(d) => d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).ctx("read target directory", &opts.to),
    };
    let dir = reader
        .open_dir(&found.dir, p.file_name())
        .ctx("open", sel.path.join(p.as_path()))?;
    let ours = reader.list(&dir).ctx("list", sel.path.join(p.as_path()))?;
    let mut others: Vec<String> = theirs
        .iter()
        .map(|n| n.as_bytes())
        .filter(|n| !is_marker_name(n) && !ours.iter().any(|l| l.name() == *n))
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    others.sort();
    let n = others.len();
    others.truncate(3);
    Err(Error::Refused(format!(
        "--flat --mirror makes {to} an exact copy of {path}, so it would delete the {n} entries of {to} that {path} does not have ({names}{more}); nothing was changed. Restore without --flat (into {to}/{path}), choose an empty --to, or, if {to} holds nothing but this restore, add --to-is-dedicated (try it with --dry-run first)",
        to = crate::relpath::shown(&opts.to),
        path = p.as_path().display(),
        names = others.join(", "),
        more = if n > 3 { ", …" } else { "" },
    )))
}

/// The store inside the tree a restore writes (`--to /srv` with the store at
/// `/srv/backup`; `--to` naming a parent of the store). `--mirror` deletes whatever
/// the snapshot does not have there, so it would delete the store, every snapshot of
/// it, while reading from it; any mode would write into the store if the snapshot has
/// an entry at the store's path. Refused, before anything is written. A restore that
/// only passes by the store (the snapshot has none of its path) writes beside it.
fn refuse_store_inside<R: SnapshotReader>(
    opts: &RestoreOptions,
    store: &Store,
    reader: &R,
    found: &Found<R::Dir>,
) -> Result<()> {
    // A --to that does not exist yet holds no store.
    let Ok(canon_to) = std::fs::canonicalize(&opts.to) else {
        return Ok(());
    };
    let canon_store = std::fs::canonicalize(&store.root).ctx("resolve", &store.root)?;
    if canon_to.starts_with(&canon_store) {
        return Ok(()); // into the store itself: `check_target` refused it already
    }
    // Where the restored path lands: --to/P, or --to itself (the whole snapshot, --flat).
    let (root, snap_base) = match &opts.path {
        Some(p) if !opts.flat => (canon_to.join(p.as_path()), p.clone()),
        Some(p) => (canon_to, p.clone()),
        None => (canon_to, RelPath::root()),
    };
    let Ok(inside) = canon_store.strip_prefix(&root) else {
        return Ok(());
    };
    let shown = match &opts.path {
        Some(p) if !opts.flat => opts.to.join(p.as_path()),
        _ => opts.to.clone(),
    };
    let shown = crate::relpath::shown(&shown);
    // `--mirror` deletes inside a restored directory (the whole snapshot, or a --path
    // that is one); a single file deletes nothing beside it.
    let deletes = !matches!(&found.named, Some((_, _, k)) if *k != Kind::Dir);
    if opts.mode == Mode::Mirror && deletes {
        return Err(Error::Refused(format!(
            "--mirror deletes every entry under {} that the snapshot does not have, and the store {} is there: it would delete the backup it restores from; nothing was changed. Choose a --to that does not hold the store, or restore without --mirror",
            shown,
            crate::relpath::shown(&store.root),
        )));
    }
    // Does the snapshot have an entry where the store is? The restore would write into it.
    let mut at = snap_base;
    for c in inside.components() {
        at = at.join(c.as_os_str().as_bytes());
    }
    let mut dir = match reader.root() {
        Ok(d) => d,
        Err(_) => return Ok(()),
    };
    for c in at.parent().components() {
        match reader.open_dir(&dir, c) {
            Ok(d) => dir = d,
            Err(_) => return Ok(()),
        }
    }
    let has = |name| reader.find(&dir, name).and_then(|l| reader.stat(&dir, l));
    if at.is_root() || has(at.file_name()).is_ok() {
        return Err(Error::Refused(format!(
            "the snapshot has {} where the store {} is under {}: restoring it would write into the backup; nothing was changed. Choose a --to that does not hold the store",
            at.as_path().display(),
            crate::relpath::shown(&store.root),
            shown,
        )));
    }
    Ok(())
}

/// A mount below `--to` (or `--to` itself) that shows the store, or a directory in it,
/// under another path: a bind mount of `daily.1/sub` at `--to/sub`, of the store's file
/// system's root, of a directory holding the store. The restore would write into the
/// snapshot there (`--mirror` would delete from it), and no comparison of paths sees it.
/// Refused before anything is written (from `/proc/self/mountinfo`: where each mount of
/// the store's file system is and which of its directories it shows). The store's own
/// mount, showing it at its own path, is [`refuse_store_inside`]'s.
fn refuse_store_mounted_below(opts: &RestoreOptions, store: &Store) -> Result<()> {
    let Ok(to) = std::fs::canonicalize(&opts.to) else {
        return Ok(());
    };
    let canon_store = std::fs::canonicalize(&store.root).ctx("resolve", &store.root)?;
    let Ok(mounts) = fsx::mounts() else {
        return Ok(());
    };
    let dev = fsx::fstat(b(&store.root_fd)).ctx("stat", &store.root)?.dev;
    // The store's own mount: the deepest one above it of its device.
    let Some(own) = mounts
        .iter()
        .filter(|m| m.dev == dev && canon_store.starts_with(&m.point))
        .max_by_key(|m| m.point.components().count())
    else {
        return Ok(());
    };
    let Ok(below) = canon_store.strip_prefix(&own.point) else {
        return Ok(());
    };
    // The store as a directory of its file system.
    let in_fs = own.root.join(below);
    for m in mounts
        .iter()
        .filter(|m| m.dev == dev && m.point.starts_with(&to))
    {
        let shows_store = match in_fs.strip_prefix(&m.root) {
            Ok(rest) => m.point.join(rest) != canon_store,
            Err(_) => m.root.starts_with(&in_fs),
        };
        if shows_store {
            return Err(Error::Refused(format!(
                "{} is a mount of the store's file system that shows {} there: restoring into {} would write into the backup {}; nothing was changed. Unmount it, or choose a --to without it",
                crate::relpath::shown(&m.point),
                if m.root.starts_with(&in_fs) {
                    format!(
                        "the store's {}",
                        m.root
                            .strip_prefix(&in_fs)
                            .map_or_else(|_| ".".into(), |p| crate::relpath::shown(p).to_string())
                    )
                } else {
                    "the store".to_string()
                },
                crate::relpath::shown(&opts.to),
                crate::relpath::shown(&store.root),
            )));
        }
    }
    Ok(())
}

/// Plans the walk's first directory: where it starts in the snapshot, where it lands
/// under the target, whether the target directory gets the snapshot's metadata. For
/// `--path` without `--flat`, creates the missing parents under the target.
fn plan_start<R: SnapshotReader>(
    opts: &RestoreOptions,
    sel: &Selected,
    reader: &R,
    found: Found<R::Dir>,
    (to_fd, to_was_new): (Option<&OwnedFd>, bool),
    created: &mut Vec<(OwnedFd, Meta, Xattrs)>,
) -> Result<Start<R::Dir>> {
    let Found {
        dir,
        dir_rel,
        named,
        warning: _,
    } = found;
    let to = || to_fd.map(dup);
    let (src, src_rel, dst, dst_rel, only, apply) = match named {
        None => (
            dir,
            RelPath::root(),
            to(),
            RelPath::root(),
            None,
            to_was_new || opts.mode != Mode::Safe,
        ),
        Some((p, _, Kind::Dir)) if opts.flat => {
            let src = reader
                .open_dir(&dir, p.file_name())
                .ctx("open", sel.path.join(p.as_path()))?;
            (src, p, to(), RelPath::root(), None, to_was_new)
        }
        Some((_, listed, _)) if opts.flat => {
            (dir, dir_rel, to(), RelPath::root(), Some(listed), false)
        }
        Some((p, listed, _)) => {
            let dst = match to_fd {
                Some(t) => make_ancestors(opts, reader, t, &p.parent(), created)?,
                None => None,
            };
            (dir, dir_rel, dst, p.parent(), Some(listed), false)
        }
    };
    let meta = reader.dir_meta(&src).ctx("stat", &sel.path)?;
    let xattrs = reader.xattrs(&src, None).unwrap_or_default();
    // Whatever made it (the user, `open_target`, `make_ancestors`), it is there: asked.
    let (may_inherit, had_xattrs) = match &dst {
        Some(fd) if !opts.dry_run => target_dir_xattrs(fd),
        _ => (false, Some(Vec::new())),
    };
    let node = Node {
        src,
        dst,
        src_rel,
        dst_rel,
        apply_meta: apply && !opts.dry_run,
        // Restoring into a new or empty --to (not under existing ancestors of --path).
        fresh: to_was_new && (opts.path.is_none() || opts.flat),
        ours: to_was_new && (opts.path.is_none() || opts.flat),
        may_inherit,
        had_xattrs,
        meta,
        xattrs,
        twins: HashSet::new(),
    };
    Ok(Start { node, only })
}

/// The names of the entries the restore puts into the target root: the restored
/// directory's (the whole snapshot, or `--flat` of a directory), the one entry of
/// `--flat` of a file, or the first directory of `--path`'s place.
fn root_names<R: SnapshotReader>(reader: &R, start: &Start<R::Dir>) -> Vec<Vec<u8>> {
    let node = &start.node;
    match (node.dst_rel.components().next(), &start.only) {
        (Some(first), _) => vec![first.to_vec()],
        (None, Some(only)) => vec![only.name().to_vec()],
        (None, None) => reader
            .list(&node.src)
            .map(|l| l.iter().map(|l| l.name().to_vec()).collect())
            .unwrap_or_default(),
    }
}

/// A target directory that is there (not one the restore just created): whether what
/// is created in it inherits a default ACL, and its managed attributes (see [`Node`]).
/// One `listxattr`, a round trip on NFS, per such directory. Unlisted: taken to pass one
/// on, and listed again when it gets the snapshot's metadata.
fn target_dir_xattrs(fd: &OwnedFd) -> (bool, Option<Vec<Vec<u8>>>) {
    match fsx::xattr_names(&XattrTarget::Fd(b(fd))) {
        Ok(mut names) => {
            names.retain(|n| fsx::managed_xattr(n));
            (names.iter().any(|n| n == fsx::ACL_DEFAULT), Some(names))
        }
        Err(_) => (true, None),
    }
}

fn dup(fd: &OwnedFd) -> OwnedFd {
    fd.try_clone().expect("dup a directory descriptor")
}

fn not_in_snapshot(
    e: std::io::Error,
    snap_path: &Path,
    snap: &str,
    p: &RelPath,
    action: &'static str,
    shown: &Path,
) -> Error {
    if fsx::errno_is(&e, Errno::NOENT)
        || fsx::errno_is(&e, Errno::NOTDIR)
        || fsx::errno_is(&e, Errno::LOOP)
        || fsx::errno_is(&e, Errno::XDEV)
    {
        let store = snap_path.parent().unwrap_or(snap_path);
        Error::Store {
            path: snap_path.to_path_buf(),
            msg: format!(
                "snapshot {snap} has no {p}; `snapring history --dest {} {p}` shows which snapshots have it",
                crate::relpath::shown(store)
            ),
        }
    } else {
        io_error(e, action, shown)
    }
}

/// One restore at a time into a target: `flock(LOCK_EX|LOCK_NB)` on `--to`, held by
/// the open descriptor for the whole restore. Two restores into one new target each
/// took it as their own and wrote files under their final names, so each failed on
/// the other's files ("cannot create directory: File exists"), both could end
/// `failed`, and the tree was left unfinished. Where a directory cannot be locked
/// (NFS), the restore goes on unlocked.
fn lock_target(fd: &OwnedFd, to: &Path) -> Result<()> {
    use rustix::fs::{FlockOperation, flock};
    match flock(fd, FlockOperation::NonBlockingLockExclusive) {
        Err(e) if e == Errno::WOULDBLOCK => Err(Error::Target {
            path: to.to_path_buf(),
            msg: "another restore is writing into this --to; wait for it to end (a restore killed there is finished by running it again)".into(),
        }),
        _ => Ok(()),
    }
}

/// Opens (creating it if needed) the target directory, resolved and checked by
/// [`target::Target`] (before anything is written: no `..` in the part that does not
/// exist yet, not inside the store by device and inode), and checks it is writable.
/// Returns `None` in a dry run when it does not exist, and whether the restore owns it
/// (created, or empty before).
fn open_target(
    opts: &RestoreOptions,
    target: &target::Target,
    existing: &OwnedFd,
) -> Result<(Option<OwnedFd>, bool)> {
    let to = &opts.to;
    let probe = target.existing();
    if fsx::is_read_only(b(existing)).ctx("check", probe)? && !opts.dry_run {
        return Err(Error::Target {
            path: to.clone(),
            msg: format!(
                "cannot restore into {}: {} is on a read-only file system; remount it read-write or choose another --to",
                crate::relpath::shown(to),
                crate::relpath::shown(probe)
            ),
        });
    }
    if target.exists() {
        let empty = !fsx::dir_has_entries(b(existing)).ctx("read", to)?;
        return Ok((Some(dup(existing)), empty));
    }
    if let Ok(link) = std::fs::read_link(to) {
        // A dangling symlink: creating --to failed with "File exists".
        return Err(Error::Target {
            path: to.clone(),
            msg: format!(
                "--to is a symlink to {}, which does not exist; create that directory, or give --to a directory",
                crate::relpath::shown(&link)
            ),
        });
    }
    if opts.dry_run {
        return Ok((None, true));
    }
    Ok((Some(target.create(existing)?), true))
}

/// Resolves `--to` and refuses, before anything is written, one inside the store
/// (its root's device and inode among `--to`'s ancestors, through any path or mount;
/// also a `--to` whose `.snapring` would be the store's). Returns the target and its
/// longest existing prefix, opened.
fn check_target(opts: &RestoreOptions, store: &Store) -> Result<(target::Target, OwnedFd)> {
    let t = target::Target::resolve(&opts.to)?;
    let fd = t.open_existing()?;
    t.refuse_inside(&fd, &store.root, "store")?;
    let canon_store = std::fs::canonicalize(&store.root).ctx("resolve", &store.root)?;
    let canon = std::fs::canonicalize(t.existing()).ctx("resolve", t.existing())?;
    if canon_store.starts_with(canon.join(".snapring")) {
        return Err(Error::Target {
            path: opts.to.clone(),
            msg: format!(
                "refusing to restore into the store {} itself (a restore never writes to the backup); choose a --to outside it",
                crate::relpath::shown(&store.root)
            ),
        });
    }
    Ok((t, fd))
}

/// Opens (creating the missing ones) the directories `rel` under the target, one
/// component at a time without following symlinks. Created ones are returned with the
/// snapshot's metadata for them, to apply once the restore is done.
fn make_ancestors<R: SnapshotReader>(
    opts: &RestoreOptions,
    reader: &R,
    to: &OwnedFd,
    rel: &RelPath,
    created: &mut Vec<(OwnedFd, Meta, Xattrs)>,
) -> Result<Option<OwnedFd>> {
    let mut cur = dup(to);
    let mut src = reader.root().ctx("open", &opts.store)?;
    let mut at = RelPath::root();
    for c in rel.components() {
        at = at.join(c);
        let shown = opts.to.join(at.as_path());
        src = reader
            .open_dir(&src, c)
            .ctx("open in snapshot", at.as_path())?;
        match fsx::lstat_at(b(&cur), c) {
            Ok(m) if m.kind == Kind::Dir => {}
            Ok(m) => {
                return Err(Error::Target {
                    path: shown,
                    msg: format!(
                        "a {} is where the snapshot has a directory; move it away or restore with --flat into another --to",
                        m.kind.name()
                    ),
                });
            }
            Err(e) if fsx::errno_is(&e, Errno::NOENT) => {
                if opts.dry_run {
                    return Ok(None);
                }
                fsx::mkdir_at(b(&cur), c).ctx("create directory", &shown)?;
                let fd = fsx::open_dir_at(b(&cur), c).ctx("open", &shown)?;
                let m = reader
                    .dir_meta(&src)
                    .ctx("stat in snapshot", at.as_path())?;
                let xs = reader.xattrs(&src, None).unwrap_or_default();
                created.push((dup(&fd), m, xs));
            }
            Err(e) => return Err(io_error(e, "stat", shown)),
        }
        cur = fsx::open_dir_at(b(&cur), c).ctx("open", &shown)?;
    }
    Ok(Some(cur))
}

/// Why an existing target entry is not identical to the snapshot's, or `None`.
enum Same {
    Yes,
    No(String),
}

impl<R: SnapshotReader> Visitor for Restore<'_, R> {
    type State = Node<R::Dir>;
    type Item = Listed;
    /// `None` for the walk's first directory (planned before the walk).
    type Sub = Option<Sub>;

    fn open(
        &self,
        parent: Option<&Dir<Node<R::Dir>>>,
        name: &[u8],
        _rel: &RelPath,
        sub: Option<Sub>,
    ) -> Opened<Node<R::Dir>, Listed> {
        let (Some(parent), Some(sub)) = (parent, sub) else {
            let start = self.start.lock().unwrap_or_else(|e| e.into_inner()).take();
            let Start { mut node, only } = start.expect("the first directory is opened once");
            let items = match only {
                Some(listed) => {
                    // `--path FILE`: its directory is not listed, but a stopped run may
                    // have left its temporary file there.
                    if self.unfinished.rerun && !node.ours {
                        self.remove_leftovers(&node);
                    }
                    vec![listed]
                }
                None => self.listing(&node),
            };
            node.twins = case_twins(&items);
            return Opened::Dir(node, items);
        };
        // Tests hold a restore here (a pause) to race it or kill it mid-way.
        let _ = crate::failpoint::hit("restore.dir");
        match self.open_sub(&parent.state, name, sub) {
            Some(mut node) => {
                let items = self.listing(&node);
                node.twins = case_twins(&items);
                Opened::Dir(node, items)
            }
            None => Opened::Skip,
        }
    }

    fn visit(&self, dir: &Arc<Dir<Node<R::Dir>>>, item: Listed) -> Step<Option<Sub>> {
        self.entry(&dir.state, item)
    }

    fn finish(&self, dir: &Dir<Node<R::Dir>>) {
        let node = &dir.state;
        let _ = crate::failpoint::hit("restore.dir_meta");
        if !node.apply_meta || self.cancel.load(Ordering::Relaxed) {
            return;
        }
        let Some(dst) = &node.dst else { return };
        // Exactly the snapshot's attributes: what it does not have goes first.
        let t = XattrTarget::Fd(b(dst));
        let removed = match &node.had_xattrs {
            Some(names) => fsx::remove_xattrs(&t, names, &node.xattrs),
            None => fsx::remove_other_xattrs(&t, &node.xattrs),
        };
        if let Err(e) = removed {
            self.dest_error(&node.dst_rel, "remove extended attributes", e);
        }
        if let Err(e) = dir_meta(b(dst), &node.meta, &node.xattrs) {
            self.dest_error(&node.dst_rel, "set directory metadata", e);
        }
        self.kept(&node.dst_rel, fsx::fstat_cached(b(dst)), &node.meta);
    }
}

impl<R: SnapshotReader> Restore<'_, R> {
    fn progress_line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counts;
        format!(
            "{} files, {} dirs, {} | {} identical, {} conflicts, {} problems",
            g(&c.files),
            g(&c.dirs),
            indicatif::HumanBytes(g(&c.bytes)),
            g(&c.identical),
            g(&c.conflicts_total),
            g(&c.errors)
        )
    }

    fn say(&self, sign: char, rel: &RelPath, note: &str) {
        if self.opts.dry_run {
            let mut p = self.plan.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(p, "{sign} {}{note}", rel.escaped());
        }
    }

    fn conflict(&self, rel: &RelPath, reason: String) {
        tracing::info!("conflict at {rel}: {reason}");
        self.say('!', rel, &format!(" ({reason})"));
        add(&self.counts.conflicts_total, 1);
        report::push_listed(
            &self.counts.conflicts,
            Conflict {
                path: rel.escaped(),
                reason,
            },
        );
    }

    fn problem(&self, rel: &RelPath, kind: ProblemKind, action: &str, e: impl std::fmt::Display) {
        tracing::warn!(path = %rel, action, error = %e, "{kind:?}");
        add(&self.counts.errors, 1);
        report::push_listed(
            &self.counts.problems,
            Problem {
                path: rel.escaped(),
                kind,
                action: action.to_string(),
                error: e.to_string(),
            },
        );
    }

    /// A snapshot-side error: a snapshot never changes, so anything gone from it (ENOENT)
    /// means it is being deleted under the restore, which then fails (its tree would be
    /// incomplete); anything else is a per-entry problem.
    fn src_error(&self, rel: &RelPath, action: &'static str, e: std::io::Error) {
        if !fsx::errno_is(&e, Errno::NOENT) {
            self.problem(rel, ProblemKind::Unreadable, action, e);
            return;
        }
        let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        f.get_or_insert(Error::Store {
            path: self.opts.store.join(rel.as_path()),
            msg: format!(
                "{action}: gone from the snapshot while it was being restored (deleted by hand, or expired on a file system without flock); the restored tree is incomplete"
            ),
        });
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// A target-side error. Per entry, the restore going on: an owner or a permission
    /// refused, and what the target's file system cannot hold ([`cannot_hold`]: a name,
    /// a type, a size), which no rerun gets past. Anything else (disk full, read-only,
    /// an I/O error, a stale handle) stops the restore, which a rerun finishes.
    fn dest_error(&self, rel: &RelPath, action: &'static str, e: std::io::Error) {
        // Not made at all (its creation or its bytes refused), or made without some of
        // its metadata.
        let made = !matches!(
            action,
            "create"
                | "create file"
                | "create directory"
                | "open target directory"
                | "write"
                | "rename into place"
                | "replace"
        );
        let kind = if made {
            ProblemKind::Metadata
        } else {
            ProblemKind::NotRestored
        };
        if fsx::owner_not_set(&e).is_some() {
            self.problem(rel, ProblemKind::Metadata, "set owner", e);
        } else if fsx::errno_is(&e, Errno::PERM) || fsx::errno_is(&e, Errno::ACCESS) {
            self.problem(rel, kind, action, e);
        } else if cannot_hold(&e) {
            let what = if made {
                "restored without it"
            } else {
                "not restored"
            };
            self.problem(
                rel,
                kind,
                action,
                format!(
                    "{e}: the target file system cannot hold this (as FAT and exFAT hold no symlink, no `:` in a name, no file of 4 GiB); {what}, and running the restore again will not change that"
                ),
            );
        } else {
            let path = self.opts.to.join(rel.as_path());
            let err = match io_error(e, action, &path) {
                Error::Io {
                    action,
                    path,
                    source,
                } => Error::Target {
                    msg: format!(
                        "cannot {action} {}: {source}: the restore stopped; what it restored stays, and running it again once the target works finishes it (identical files are skipped)",
                        crate::relpath::shown(&path)
                    ),
                    path: self.opts.to.clone(),
                },
                e => e.on_restore_target(),
            };
            let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
            f.get_or_insert(err);
            self.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Creating `to` in `dir` (the entry's temporary name, or its own name in a
    /// directory the restore made) failed. An entry in the way is a conflict, that
    /// entry left alone and the rest restored ([`Restore::in_the_way`]); a name the
    /// target refuses with ENOENT (exFAT's FUSE driver, for `a:b`) in a directory that
    /// is still there, or with EPERM on a file system the probe found to be one that
    /// cannot hold everything (FAT through `fusefat`, for `a:b`), is a problem of this
    /// entry saying so; any other failure is [`Restore::dest_error`]'s (EPERM elsewhere
    /// is a permission: an immutable directory, which a rerun may get past).
    fn create_error(
        &self,
        dir: &OwnedFd,
        rel: &RelPath,
        to: &[u8],
        action: &'static str,
        e: std::io::Error,
    ) {
        if fsx::errno_is(&e, Errno::EXIST) {
            self.in_the_way(dir, rel, to);
        } else if (fsx::errno_is(&e, Errno::NOENT) && fsx::fstat(b(dir)).is_ok_and(|m| m.nlink > 0))
            || (fsx::errno_is(&e, Errno::PERM) && self.holds(dir).limited())
        {
            self.problem(
                rel,
                ProblemKind::NotRestored,
                action,
                format!(
                    "{e}: the target file system cannot hold the name {} (as FAT and exFAT refuse `:`, `?`, `*`); not restored, and running the restore again will not change that",
                    crate::relpath::escape(to)
                ),
            );
        } else {
            self.dest_error(rel, action, e);
        }
    }

    /// Whether `mknod` in `dir` failed with `e` because the target's file system cannot
    /// hold special files: an error that would otherwise stop the restore (EIO: what
    /// FAT through `fusefat` answers), where the probe ([`Restore::holds`]) could not
    /// make a fifo either. An EIO elsewhere is the target's and stops the restore.
    fn no_special(&self, dir: &OwnedFd, e: &std::io::Error) -> bool {
        let per_entry = fsx::errno_is(e, Errno::EXIST)
            || fsx::errno_is(e, Errno::PERM)
            || fsx::errno_is(e, Errno::ACCESS)
            || fsx::errno_is(e, Errno::NOENT)
            || fsx::owner_not_set(e).is_some()
            || cannot_hold(e);
        !per_entry && !self.holds(dir).special
    }

    /// A special file (fifo, socket, device) the target's file system cannot hold
    /// ([`Restore::no_special`]): a problem of its entry, as a symlink on FAT.
    /// `e`: the error the target answered (empty in a dry run, which makes nothing).
    fn special_not_held(&self, rel: &RelPath, m: &Meta, e: impl std::fmt::Display) {
        self.problem(
            rel,
            ProblemKind::NotRestored,
            "create",
            format!(
                "{e}{}the target file system cannot hold a {} (as FAT and exFAT hold no fifo, socket or device); not restored, and running the restore again will not change that",
                if e.to_string().is_empty() { "" } else { ": " },
                m.kind.name()
            ),
        );
    }

    /// `name` could not be made in `dir` (of the entry at `rel`): something is there.
    /// Either it appeared during the restore (someone else writes in the target), or
    /// the target's file system takes `name` for another name it holds (it ignores
    /// case: `d` and `D` are one name on FAT, exFAT, SMB): a conflict naming it, the
    /// entry not restored.
    fn in_the_way(&self, dir: &OwnedFd, rel: &RelPath, name: &[u8]) {
        let esc = crate::relpath::escape;
        let reason = match case_twin(dir, name) {
            Some(other) => {
                add(&self.counts.case_conflicts, 1);
                format!(
                    "the target file system cannot hold both {} and {} (it takes names that differ only in case for one name): {} is there, {} was not restored",
                    esc(&other),
                    esc(name),
                    esc(&other),
                    esc(name)
                )
            }
            None => format!(
                "{} appeared in the target during the restore, in the way of this entry; not restored",
                esc(name)
            ),
        };
        self.conflict(rel, reason);
    }

    /// A deletion that stopped at another file system mounted below (a conflict: what is
    /// there stays, the restore goes on), or failed ([`Restore::dest_error`]).
    fn delete_error(&self, rel: &RelPath, action: &'static str, e: std::io::Error) {
        if e.kind() == std::io::ErrorKind::CrossesDevices {
            self.conflict(rel, e.to_string());
        } else {
            self.dest_error(rel, action, e);
        }
    }

    /// Opens subdirectory `name` of `parent` on both sides (creating it in the target
    /// when planned) and reads its attributes. `None`: not walked (the reason is told).
    fn open_sub(&self, parent: &Node<R::Dir>, name: &[u8], sub: Sub) -> Option<Node<R::Dir>> {
        let src_rel = parent.src_rel.join(name);
        let rel = parent.dst_rel.join(name);
        let src = match self.reader.open_dir(&parent.src, name) {
            Ok(d) => d,
            Err(e) => {
                self.src_error(&src_rel, "open snapshot directory", e);
                return None;
            }
        };
        let dst = match &parent.dst {
            Some(d) if !self.opts.dry_run => {
                if sub.create {
                    // Recorded before it is made (with its siblings noted meanwhile).
                    if let Err(e) = self.unfinished.flush() {
                        self.dest_error(&rel, "record the restore's progress", e);
                        return None;
                    }
                    if let Err(e) = fsx::mkdir_at(b(d), name) {
                        self.create_error(d, &rel, name, "create directory", e);
                        return None;
                    }
                    // Counted once made: one queued and never reached (a restore that
                    // stopped) was not.
                    add(&self.counts.dirs, 1);
                }
                match fsx::open_dir_at(b(d), name) {
                    Ok(fd) => Some(fd),
                    Err(e) => {
                        self.dest_error(&rel, "open target directory", e);
                        return None;
                    }
                }
            }
            Some(d) if !sub.create => fsx::open_dir_at(b(d), name).ok(),
            _ => None,
        };
        let xattrs = self.reader.xattrs(&src, None).unwrap_or_else(|e| {
            let kind = ProblemKind::Metadata;
            self.problem(&src_rel, kind, "read extended attributes", e);
            Vec::new()
        });
        let ours = sub.create || self.unfinished.created_before(&rel);
        let (may_inherit, had_xattrs) = match &dst {
            Some(_) if self.opts.dry_run => (false, Some(Vec::new())),
            // Made just now: it has what its parent passed on, if anything.
            Some(_) if sub.create => {
                let inherited = fsx::INHERITED_DIR.iter().map(|n| n.to_vec());
                let had = inherited.filter(|_| parent.may_inherit).collect();
                (parent.may_inherit, Some(had))
            }
            Some(fd) => target_dir_xattrs(fd),
            None => (false, Some(Vec::new())),
        };
        Some(Node {
            src,
            dst,
            src_rel,
            ours,
            dst_rel: rel,
            apply_meta: sub.apply_meta,
            fresh: sub.create,
            may_inherit,
            had_xattrs,
            meta: sub.meta,
            xattrs,
            twins: HashSet::new(),
        })
    }

    /// Lists a snapshot directory; with `--mirror`, first deletes from the target
    /// directory what the snapshot's does not have.
    fn listing(&self, node: &Node<R::Dir>) -> Vec<Listed> {
        if self.unfinished.rerun && !node.fresh {
            self.remove_leftovers(node);
        }
        match self.reader.list_checked(&node.src) {
            Ok((items, damage)) => {
                // Where the snapshot's tree and its manifest disagree, the snapshot is
                // damaged: those names are not restored, and `--mirror` deletes nothing
                // in the directory (the target may hold the good copy of what is gone).
                for d in &damage {
                    self.problem(
                        &node.src_rel.join(&d.name),
                        ProblemKind::Damaged,
                        "check the snapshot against its manifest",
                        &d.why,
                    );
                }
                if self.opts.mode == Mode::Mirror && !node.fresh {
                    if damage.is_empty() {
                        self.mirror_deletes(node, &items);
                    } else {
                        self.conflict(
                            &node.dst_rel,
                            "the snapshot's copy of this directory is damaged (see the problems): --mirror deleted nothing here".into(),
                        );
                    }
                }
                items
            }
            Err(e) => {
                self.src_error(&node.src_rel, "read snapshot directory", e);
                Vec::new()
            }
        }
    }

    /// Whether `n`, in a target directory, is a temporary file a stopped restore left
    /// ([`Unfinished::leftover`]): a rerun deletes it (a dry run counts it).
    fn is_leftover(&self, n: &[u8]) -> bool {
        self.unfinished.rerun && is_tmp_name(n) && self.unfinished.leftover(n)
    }

    /// Deletes the temporary files a stopped restore left in a target directory
    /// ([`Unfinished::leftover`]), counted.
    fn remove_leftovers(&self, node: &Node<R::Dir>) {
        let Some(dst) = &node.dst else { return };
        let names = match fsx::read_dir_names(b(dst)) {
            Ok(v) => v,
            Err(e) => {
                self.dest_error(&node.dst_rel, "read target directory", e);
                return;
            }
        };
        // Only a stopped run's: a live restore's (into a `--to` nested in this one)
        // is its work in progress.
        for n in names.iter().filter(|n| self.is_leftover(n)) {
            if self.opts.dry_run {
                add(&self.counts.leftovers, 1);
                continue;
            }
            match fsx::unlink_at(b(dst), n) {
                Ok(()) => add(&self.counts.leftovers, 1),
                Err(e) if fsx::errno_is(&e, Errno::NOENT) => {}
                Err(e) => {
                    self.dest_error(&node.dst_rel.join(n), "remove a stopped restore's file", e)
                }
            }
        }
    }

    /// After the walk: a restore that walked the whole tree removes its record of
    /// unfinished work, then gives the target root its metadata again (`root_meta`).
    fn finish_unfinished(&self, root_meta: Option<(Meta, Xattrs)>) {
        let walked = !self.cancel.load(Ordering::Relaxed)
            && self
                .fatal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none();
        let (Some(to), true, Some(_)) = (self.to_root, walked, &self.unfinished.log) else {
            return;
        };
        let _ = crate::failpoint::hit("restore.before_done");
        // The restore wrote nothing, and the root is as its record left it (nothing
        // else changed it since, as far as its mtime tells: a coarse clock can make two
        // changes look like one, so the restore's own writes are not judged by it).
        let untouched_but_for_the_record = self.unfinished.root_before.and_then(|(st, with)| {
            let now = mtime_of(&rustix::fs::fstat(to).ok()?);
            (now == with && !self.counts.wrote_anything()).then_some(st)
        });
        if let Err(e) = fsx::unlink_at(b(to), &self.unfinished.name) {
            self.dest_error(&RelPath::root(), "remove the restore's record", e);
            return;
        }
        let _ = crate::failpoint::hit("restore.after_done");
        if let Some((m, xs)) = root_meta {
            if let Err(e) = dir_meta(b(to), &m, &xs) {
                self.dest_error(&RelPath::root(), "set directory metadata", e);
            }
        } else if let Some(st) = untouched_but_for_the_record {
            // A directory the restore leaves alone (the user's, or one an earlier
            // restore finished): the record was the only change to it, so it gets back
            // the times it had, and a rerun that finds everything in place changes
            // nothing. Best effort: the snapshot does not hold these times.
            let _ = rustix::fs::futimens(to, &stat_times(&st));
        }
    }

    /// A temporary name for a file being written (see [`Unfinished`]).
    fn tmp_name(&self) -> Vec<u8> {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let mut v = TMP_PREFIX.to_vec();
        v.extend_from_slice(format!("{}-{n}", self.pid).as_bytes());
        v.extend_from_slice(TMP_SUFFIX);
        v
    }

    /// `--mirror`: deletes target entries the snapshot directory does not have, but
    /// keeps those its run's exclusion settings left out: matched at their place in the
    /// snapshot (`src_rel`, which `--flat` does not move), a tagged target directory
    /// keeping what is not its tag, as `diff --against` leaves them out of a live tree.
    fn mirror_deletes(&self, node: &Node<R::Dir>, items: &[Listed]) {
        let Some(dst) = &node.dst else { return };
        let existing = match fsx::read_dir_names(b(dst)) {
            Ok(v) => v,
            Err(e) => {
                self.dest_error(&node.dst_rel, "read target directory", e);
                return;
            }
        };
        // Another file system mounted below --to (its contents were not backed up with
        // `one_file_system`; otherwise not a part of --to to mirror): nothing deleted.
        if let Some(to) = &self.to_mount
            && fsx::mount_key(b(dst)).is_ok_and(|m| !m.same_mount(to))
        {
            let extra = existing
                .iter()
                .filter(|n| items.binary_search_by(|l| l.name().cmp(n)).is_err())
                .count() as u64;
            if extra > 0 && self.one_fs_run {
                add(&self.counts.kept_excluded, extra);
            } else if extra > 0 {
                self.conflict(
                    &node.dst_rel,
                    format!("another file system is mounted here: --mirror deleted none of its {extra} entries the snapshot does not have"),
                );
            }
            return;
        }
        let tagged = self
            .excludes
            .as_ref()
            .and_then(|ex| ex.keep_in(b(dst), &existing));
        for name in &existing {
            // A dry run finds a stopped restore's temporary files still there: the
            // restore deleted them before (counted as such).
            if items.binary_search_by(|l| l.name().cmp(name)).is_ok()
                || (node.dst_rel.is_root() && *name == self.unfinished.name)
                || (self.opts.dry_run && self.is_leftover(name))
            {
                continue;
            }
            if let Some(ex) = &self.excludes
                && ex.leaves_out(tagged.as_deref(), &node.src_rel.join(name), || {
                    fsx::lstat_at(b(dst), name).is_ok_and(|m| m.kind == Kind::Dir)
                })
            {
                add(&self.counts.kept_excluded, 1);
                continue;
            }
            let name = name.clone();
            let rel = node.dst_rel.join(&name);
            self.say('-', &rel, "");
            if self.opts.dry_run {
                add(&self.counts.deleted, 1);
                continue;
            }
            let mut n = 0;
            let r = fsx::remove_tree_at(b(dst), &name, &mut n);
            add(&self.counts.deleted, n);
            if let Err(e) = r {
                self.delete_error(&rel, "delete (mirror)", e);
            }
        }
    }

    /// Restores one entry of a snapshot directory; a directory is planned here and
    /// walked as a task of its own.
    fn entry(&self, node: &Node<R::Dir>, item: Listed) -> Step<Option<Sub>> {
        let name = item.name().to_vec();
        let at = At {
            node,
            name: &name,
            src_rel: node.src_rel.join(&name),
            rel: node.dst_rel.join(&name),
        };
        // A name another of this directory equals but for case: on a target that
        // ignores case, that other one may hold it (restored now or by an earlier run),
        // and a stat by this name would find it (its content compared, a directory
        // merged into it).
        if node.twins.contains(&name)
            && let Some(d) = &node.dst
            && case_twin(d, &name).is_some()
        {
            self.in_the_way(d, &at.rel, &name);
            return Step::Next;
        }
        // Into a directory the restore made (nothing to compare with), a regular file the
        // listing names as one is opened at once and stated through the descriptor: no
        // stat by name before the open. A member of a hard-link group is stated only:
        // all but the first are linked, not read.
        let linked = |r: &Option<Entry>| r.as_ref().is_some_and(|r| r.group.is_some());
        let open_first = node.fresh
            && !self.opts.dry_run
            && node.dst.is_some()
            && matches!(&item, Listed::Name(_, rec, _) if !linked(rec));
        // The manifest's entry for the name: what was backed up, checked against the
        // tree's below ([`Restore::against_record`]).
        let rec = match &item {
            Listed::Name(_, r, _) => r.clone(),
            Listed::Recorded(_) => None,
        };
        let stated = if open_first {
            self.reader.stat_open(&node.src, item)
        } else {
            self.reader.stat(&node.src, item).map(|s| (s, None))
        };
        let (e, mut m, src, recorded) = match stated {
            Ok((
                Stat {
                    entry,
                    meta: Some(m),
                    recorded,
                },
                src,
            )) => (entry, m, src, recorded),
            Ok(_) => {
                let why = "the reader has no metadata of the tree";
                self.problem(
                    &at.src_rel,
                    ProblemKind::Unreadable,
                    "stat in snapshot",
                    why,
                );
                return Step::Next;
            }
            Err(err) => {
                self.src_error(&at.src_rel, "stat in snapshot", err);
                return Step::Next;
            }
        };
        let target = match &rec {
            Some(r) => match self.against_record(&at, r, &mut m) {
                Ok(t) => t,
                Err(()) => return Step::Next,
            },
            None => None,
        };
        let existing = match &node.dst {
            Some(_) if node.fresh => None,
            Some(d) => match fsx::lstat_at(b(d), &name) {
                Ok(x) => Some(x),
                Err(err) if fsx::errno_is(&err, Errno::NOENT) => None,
                Err(err) => {
                    self.dest_error(&at.rel, "stat in target", err);
                    return Step::Next;
                }
            },
            None => None,
        };
        if m.kind == Kind::Dir {
            return self.dir_entry(&at, m, existing);
        }
        // Recorded with extended attributes: read now, to check them against the
        // record's digest (an entry recorded without any has none restored, and none
        // is read).
        let xattrs = match rec.as_ref().and_then(|r| r.xattrs.as_ref()) {
            Some(want) if recorded => match self.reader.xattrs(&node.src, Some(&name)) {
                Ok(xs) => Some(self.checked_xattrs(&at.src_rel, xs, want)),
                // Not read again, unchecked, through the file: none is restored.
                Err(e) => {
                    self.problem(
                        &at.src_rel,
                        ProblemKind::Metadata,
                        "read extended attributes",
                        format!("{e}: none restored"),
                    );
                    Some(Vec::new())
                }
            },
            _ => None,
        };
        let src = Source {
            fd: src,
            no_xattrs: recorded && e.xattrs.is_none(),
            xattrs,
            target,
        };
        // Attributes the store refused at backup: never in the snapshot, so not
        // restored; said once, in the report's warnings, of the entries the target now
        // holds as the snapshot has them (not one skipped, in conflict or failed).
        if self.other_entry(&at, &e, &m, existing, src)
            && let Some(r) = rec.as_ref().filter(|r| !r.refused.is_empty())
        {
            // Those whose refusal is only logged (security modules' labels,
            // `fsx::xattr_refusal_said`) in one log line, not a warning of every
            // restore.
            let (said, unsaid): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) = r
                .refused
                .iter()
                .partition(|n| fsx::xattr_refusal_said(n, fsx::NOT_SUPPORTED));
            if !unsaid.is_empty() {
                let mut u = self.unsaid.lock().unwrap_or_else(|e| e.into_inner());
                u.0 += 1;
                for n in unsaid {
                    crate::engine::walk::add_unsaid(&mut u.1, n);
                }
            }
            if said.is_empty() {
                return Step::Next;
            }
            let mut nk = self.not_kept.lock().unwrap_or_else(|e| e.into_inner());
            nk.0 += 1;
            for n in said {
                if nk.1.contains(n) {
                    continue;
                }
                if nk.1.len() < NOT_KEPT_NAMED {
                    nk.1.push(n.clone());
                } else {
                    nk.2 = true;
                }
            }
        }
        Step::Next
    }

    /// Checks the tree's entry `m` (its `lstat`) against its manifest entry `r`, what
    /// the backup recorded, as `verify` does: symlink target, device number, mode, owner
    /// and modification time (content is checked by hash as it is copied, extended
    /// attributes by digest as they are read). Each fact that differs is a problem of the
    /// entry (the snapshot is damaged: bit rot or tampering), and `m` gets the recorded
    /// one: the restore gives back what was backed up, not what was changed in the store
    /// since. Setuid and setgid bits are the exception: kept only where the tree and the
    /// record agree on the bit and on the owner it is for (one side changed, so neither
    /// can be trusted to grant privileges). Returns a symlink's target to restore (read
    /// here, the recorded one where they differ); `Err` when the target cannot be read
    /// (a problem already).
    fn against_record(
        &self,
        at: &At<'_, R::Dir>,
        r: &Entry,
        m: &mut Meta,
    ) -> std::result::Result<Option<Vec<u8>>, ()> {
        if r.kind != m.kind {
            return Ok(None);
        }
        let mut found = Vec::new();
        let mut target = None;
        if m.kind == Kind::Symlink {
            match self.reader.read_link(&at.node.src, at.name) {
                Ok(t) => {
                    if let Some(want) = r.target.as_ref().filter(|w| **w != t) {
                        found.push(format!(
                            "symlink target {} (recorded {})",
                            crate::relpath::shown_bytes(&t),
                            crate::relpath::shown_bytes(want)
                        ));
                        target = Some(want.clone());
                    } else {
                        target = Some(t);
                    }
                }
                Err(e) => {
                    self.src_error(&at.src_rel, "read symlink", e);
                    return Err(());
                }
            }
        }
        self.meta_against_record(&at.src_rel, r, m, found);
        Ok(target)
    }

    /// The part of [`Restore::against_record`] past a symlink's target (`found`: what
    /// differed so far): device number, mode, owner and time, `m` given the recorded
    /// ones where they differ, and one problem of the entry `rel` naming them all. Also
    /// for the restored directory itself (the snapshot's root, or `--path DIR --flat`),
    /// which no parent lists.
    fn meta_against_record(&self, rel: &RelPath, r: &Entry, m: &mut Meta, mut found: Vec<String>) {
        if r.kind != m.kind {
            return;
        }
        let tree = *m;
        if matches!(m.kind, Kind::Char | Kind::Block) && m.rdev != r.rdev {
            found.push(format!("device {} (recorded {})", m.rdev, r.rdev));
        }
        if m.kind != Kind::Symlink && m.perm != r.perm {
            found.push(format!("mode {:o} (recorded {:o})", m.perm, r.perm));
        }
        if (m.uid, m.gid) != (r.uid, r.gid) {
            found.push(format!(
                "owner {}:{} (recorded {}:{})",
                m.uid, m.gid, r.uid, r.gid
            ));
        }
        if m.mtime != r.mtime {
            found.push(format!("mtime {} (recorded {})", m.mtime, r.mtime));
        }
        if found.is_empty() {
            return;
        }
        m.rdev = r.rdev;
        if m.kind != Kind::Symlink {
            m.perm = r.perm;
        }
        (m.uid, m.gid, m.mtime) = (r.uid, r.gid, r.mtime);
        let mut note = "restored as recorded";
        if m.kind != Kind::Dir {
            let one_sided = (r.perm & !tree.perm) & 0o6000;
            let cleared = one_sided
                | fsx::unsafe_bits_of(r.perm & !one_sided, (r.uid, r.gid), (tree.uid, tree.gid));
            if cleared != 0 {
                m.perm &= !cleared;
                note = "restored as recorded, but for setuid/setgid bits the snapshot's tree and manifest do not agree on (cleared)";
            }
        }
        self.problem(
            rel,
            ProblemKind::Damaged,
            "check metadata against the manifest",
            format!(
                "the snapshot's entry is not as recorded at backup (bit rot or tampering): {}; {note} — run `snapring verify`",
                found.join(", ")
            ),
        );
    }

    /// Extended attributes `xs` read from the snapshot's entry, checked against the
    /// digest its manifest recorded (`want`, when it has a manifest entry): where they
    /// differ, none is restored (the manifest keeps a digest, not the values, so the
    /// recorded ones cannot be given back, and an attribute changed in the store, a
    /// file capability say, must not reach the target); a problem of the entry.
    fn checked_xattrs(&self, rel: &RelPath, xs: Xattrs, want: &str) -> Xattrs {
        match fsx::xattr_digest(&xs) {
            Some(d) if d == want => xs,
            _ => {
                self.problem(
                    rel,
                    ProblemKind::Damaged,
                    "check extended attributes against the manifest",
                    "the snapshot's extended attributes are not those recorded at backup (bit rot or tampering): none restored — run `snapring verify`",
                );
                Vec::new()
            }
        }
    }

    /// A directory of the snapshot: decides whether to create it in the target (or
    /// replace what is in the way) and queues it.
    fn dir_entry(&self, at: &At<'_, R::Dir>, m: Meta, existing: Option<Meta>) -> Step<Option<Sub>> {
        let mode = self.opts.mode;
        let (create, apply_meta) = match existing {
            None => (true, true),
            Some(x) if x.kind == Kind::Dir => (
                false,
                mode != Mode::Safe || self.unfinished.made_by_a_restore(&at.rel),
            ),
            Some(x) if mode == Mode::Safe => {
                let why = format!("a {} is where the snapshot has a directory", x.kind.name());
                self.conflict(&at.rel, why);
                return Step::Next;
            }
            Some(_) => {
                self.say('~', &at.rel, "/");
                if !self.opts.dry_run
                    && let Some(d) = &at.node.dst
                    && let Err(e) = fsx::unlink_at(b(d), at.name)
                {
                    self.dest_error(&at.rel, "remove (overwrite)", e);
                    return Step::Next;
                }
                add(&self.counts.overwritten, 1);
                (true, true)
            }
        };
        if create {
            self.say('+', &at.rel, "/");
            // The restore counts it once made ([`Restore::open_sub`]).
            if self.opts.dry_run {
                add(&self.counts.dirs, 1);
            } else {
                self.unfinished.record(&at.rel);
            }
        }
        let sub = Sub {
            meta: m,
            create,
            apply_meta: apply_meta && !self.opts.dry_run,
        };
        Step::Descend(at.name.to_vec(), Some(sub))
    }

    /// Anything but a directory: created, skipped as identical, reported as a conflict,
    /// or replaced, per the mode. `true` when the target now holds the snapshot's entry
    /// (created or replaced, a dry run's planned; identical); `false` when it does not
    /// (a conflict, a special file it cannot hold, a failure: each a problem or conflict).
    fn other_entry(
        &self,
        at: &At<'_, R::Dir>,
        e: &Entry,
        m: &Meta,
        existing: Option<Meta>,
        src: Source,
    ) -> bool {
        let mode = self.opts.mode;
        let Some(x) = existing else {
            if self.plan_not_held(at, m) {
                return false;
            }
            self.say('+', &at.rel, "");
            return self.create(at, e, m, None, src);
        };
        if x.kind == Kind::Dir {
            if mode != Mode::Mirror {
                let why = format!(
                    "a directory is where the snapshot has a {} (only --mirror replaces a directory)",
                    m.kind.name()
                );
                self.conflict(&at.rel, why);
                return false;
            }
            if self.plan_not_held(at, m) {
                return false;
            }
            self.say('~', &at.rel, "");
            if !self.opts.dry_run
                && let Some(d) = &at.node.dst
            {
                let mut n = 0;
                let r = fsx::remove_tree_at(b(d), at.name, &mut n);
                add(&self.counts.deleted, n);
                if let Err(err) = r {
                    self.delete_error(&at.rel, "remove (mirror)", err);
                    return false;
                }
            }
            let created = self.create(at, e, m, None, src);
            if created {
                add(&self.counts.overwritten, 1);
            }
            return created;
        }
        match self.same(at, e, m, &x, &src) {
            Same::Yes => {
                add(&self.counts.identical, 1);
                self.adopt_leader(at, e, m);
                true
            }
            // In a directory a stopped run of this restore made, what differs is its own
            // half-done work, not the user's.
            Same::No(why) if mode == Mode::Safe && !at.node.ours => {
                self.conflict(&at.rel, why);
                false
            }
            Same::No(_) if self.plan_not_held(at, m) => false,
            Same::No(why) => {
                self.say('~', &at.rel, &format!(" ({why})"));
                // Counted once it is replaced: a copy that failed (a full disk) left the
                // entry as it was.
                let created = self.create(at, e, m, Some(&self.tmp_name()), src);
                if created {
                    add(&self.counts.overwritten, 1);
                }
                created
            }
        }
    }

    /// A dry run: a special file the target's file system cannot hold (the probe's
    /// answer, [`Restore::holds`], in the target directory or the nearest one that
    /// exists) is planned as the restore would end it, a problem of its entry
    /// ([`Restore::special_not_held`]).
    fn plan_not_held(&self, at: &At<'_, R::Dir>, m: &Meta) -> bool {
        if !self.opts.dry_run || matches!(m.kind, Kind::File | Kind::Dir | Kind::Symlink) {
            return false;
        }
        let dir = at
            .node
            .dst
            .as_ref()
            .or(self.to_root)
            .unwrap_or(self.existing);
        if self.holds(dir).special {
            return false;
        }
        self.special_not_held(&at.rel, m, "");
        true
    }

    /// Compares an existing target entry `x` with the snapshot's (content by hash).
    /// `src`: the snapshot's symlink target and extended attributes, when already read
    /// (and checked against the manifest: what the restore would give).
    fn same(&self, at: &At<'_, R::Dir>, e: &Entry, m: &Meta, x: &Meta, src: &Source) -> Same {
        let dst = at.node.dst.as_ref();
        let dst = dst.expect("an existing entry has a target directory");
        if x.kind != m.kind {
            return Same::No(format!(
                "a {} is where the snapshot has a {}",
                x.kind.name(),
                m.kind.name()
            ));
        }
        let (theirs, ours) = if m.kind == Kind::Symlink {
            let ours = match &src.target {
                Some(t) => Ok(t.clone()),
                None => self.reader.read_link(&at.node.src, at.name),
            };
            (fsx::read_link_at(b(dst), at.name).ok(), ours.ok())
        } else {
            (None, None)
        };
        let fx = Facts::of_meta(x, theirs.as_deref());
        let d = Delta::between(&fx, &Facts::of_meta(m, ours.as_deref()));
        if d.size {
            return Same::No(format!("content differs (size {} vs {})", x.size, m.size));
        }
        if d.bytes_undecided(&fx)
            && let Some(why) = self.bytes_differ(at, dst, e)
        {
            return Same::No(why);
        }
        if d.target {
            return Same::No("symlink target differs".into());
        }
        if d.rdev {
            return Same::No("device number differs".into());
        }
        // A mode, owner or time the target cannot hold (FAT: no modes, no owners, 2 s
        // times) is no difference: the restore itself could not make it otherwise, and a
        // rerun would call its own entries conflicts (or, in its own directories,
        // replace them again) for ever. Said once in the report.
        // Nor are setuid/setgid bits this restore clears where it cannot set the owner
        // (`fsx::OwnerNotSet`).
        let cleared = x.perm == m.perm & !fsx::unsafe_bits(m, (x.uid, x.gid));
        let perm = d.perm && m.kind != Kind::Symlink && !cleared;
        if perm && self.holds(dst).mode {
            return Same::No(format!("mode differs ({:o} vs {:o})", x.perm, m.perm));
        }
        if d.owner && self.holds(dst).owner {
            return Same::No(format!(
                "owner differs ({}:{} vs {}:{})",
                x.uid, x.gid, m.uid, m.gid
            ));
        }
        // A symlink's time is not the user's concern, except in a directory a stopped run
        // of this restore made: there a symlink created but not yet given its time is
        // that run's unfinished work.
        let off = time_off(&x.mtime, &m.mtime);
        let mtime = d.mtime && (m.kind != Kind::Symlink || at.node.ours);
        if mtime && off >= self.holds(dst).time_ns {
            return Same::No(format!(
                "modification time differs ({} vs {})",
                x.mtime, m.mtime
            ));
        }
        let theirs = fsx::read_xattrs(&XattrTarget::At(b(dst), at.name));
        let ours = match &src.xattrs {
            Some(xs) => Ok(xs.clone()),
            None => self.reader.xattrs(&at.node.src, Some(at.name)),
        };
        if theirs.ok() != ours.ok() {
            return Same::No("extended attributes differ".into());
        }
        self.lost(&at.rel, perm, d.owner, mtime.then_some(off));
        Same::Yes
    }

    /// Why the bytes of an existing target file differ from the snapshot's (hashed:
    /// the target's read, the snapshot's recorded or read), or `None`.
    fn bytes_differ(&self, at: &At<'_, R::Dir>, dst: &OwnedFd, e: &Entry) -> Option<String> {
        let theirs = fsx::hash_at(b(dst), at.name);
        let ours = self
            .reader
            .hash(&at.node.src, e)
            .and_then(|h| h.ok_or_else(|| std::io::Error::other("no content to read")));
        match (theirs, ours) {
            (Ok(a), Ok(b)) if a == b => None,
            (Ok(_), Ok(_)) => Some("content differs".into()),
            (Err(err), _) => Some(format!("unreadable in the target ({err})")),
            (_, Err(err)) => {
                let kind = ProblemKind::Unreadable;
                self.problem(&at.src_rel, kind, "read snapshot file", err);
                Some("the snapshot copy is unreadable".into())
            }
        }
    }

    /// Creates the entry in the target (as `tmp`, renamed over it, when replacing).
    /// Whether the entry is there now (a dry run: planned).
    fn create(
        &self,
        at: &At<'_, R::Dir>,
        e: &Entry,
        m: &Meta,
        tmp: Option<&[u8]>,
        src: Source,
    ) -> bool {
        // A file counts as restored once it is there (a dry run: once planned); one
        // that could not be read or written is a problem, not a restored file. A
        // symlink, FIFO, socket or device node counts as an other entry (it counted
        // nowhere: a snapshot of symlinks restored "files 0").
        let restored = || {
            if m.kind == Kind::File {
                add(&self.counts.files, 1);
            } else {
                add(&self.counts.others, 1);
            }
            true
        };
        if self.opts.dry_run {
            restored();
            if m.kind == Kind::File {
                add(&self.counts.bytes, m.size);
            }
            return true;
        }
        let Some(dst) = &at.node.dst else {
            return false;
        };
        // Where the target directory was there before the restore, written under a
        // temporary name, renamed into place when done; in the restore's own directories
        // under the final name (a rerun replaces a half-written one).
        let own;
        let (to, replace, direct) = match tmp {
            Some(t) => (t, true, false),
            None if at.node.ours => (at.name, false, true),
            None => {
                own = self.tmp_name();
                (own.as_slice(), false, false)
            }
        };
        let leader = if e.group.is_some() && m.kind != Kind::Dir {
            match self.join_group(at, dst, to, replace, m.ino) {
                Joined::Linked => return restored(),
                Joined::Leader => true,
                Joined::Copy => false,
            }
        } else {
            false
        };
        let ok = if m.kind == Kind::File {
            self.copy_file(at, dst, to, e, m, src)
        } else {
            self.copy_special(at, dst, to, m, src)
        };
        let ok = ok && (direct || self.finish_replace(dst, to, at.name, replace, &at.rel));
        if ok {
            restored();
        }
        if leader {
            let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            let link = if ok {
                Link::Done(at.rel.clone())
            } else {
                Link::Failed
            };
            links.insert(m.ino, link);
            drop(links);
            self.links_cv.notify_all();
        }
        ok
    }

    /// A rerun: an identical file already in the target, restored by the stopped run,
    /// is its hard-link group's first member, so the rest link to it instead of being
    /// copied apart.
    fn adopt_leader(&self, at: &At<'_, R::Dir>, e: &Entry, m: &Meta) {
        if e.group.is_none() || self.opts.dry_run || !self.unfinished.rerun {
            return;
        }
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links
            .entry(m.ino)
            .or_insert_with(|| Link::Done(at.rel.clone()));
        drop(links);
        self.links_cv.notify_all();
    }

    /// Joins the hard-link group of inode `ino` (of the snapshot): its first member is
    /// restored by copy, the others wait for it and link to it.
    fn join_group(
        &self,
        at: &At<'_, R::Dir>,
        dst: &OwnedFd,
        to: &[u8],
        replace: bool,
        ino: u64,
    ) -> Joined {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match links.get(&ino).cloned() {
                None => {
                    links.insert(ino, Link::Pending);
                    return Joined::Leader;
                }
                Some(Link::Pending) => {
                    links = self.links_cv.wait(links).unwrap_or_else(|e| e.into_inner());
                }
                Some(Link::Done(first)) => {
                    drop(links);
                    let direct = to == at.name;
                    let root = self.to_root.expect("links are made only when writing");
                    let r = snapshot::open_beneath(b(root), &first.parent())
                        .and_then(|d| fsx::link_at(b(&d), first.file_name(), b(dst), to));
                    return match r {
                        Ok(()) => {
                            add(&self.counts.hard_links, 1);
                            if !direct {
                                self.finish_replace(dst, to, at.name, replace, &at.rel);
                            }
                            Joined::Linked
                        }
                        Err(e) => {
                            tracing::info!("{}: cannot link to {first} ({e}); copying", at.rel);
                            Joined::Copy
                        }
                    };
                }
                Some(Link::Failed) => return Joined::Copy,
            }
        }
    }

    /// Renames the finished entry `to` to its name: over what is there when `replace`,
    /// else only if nothing has appeared there meanwhile (then it is a conflict).
    fn finish_replace(
        &self,
        dst: &OwnedFd,
        to: &[u8],
        name: &[u8],
        replace: bool,
        rel: &RelPath,
    ) -> bool {
        // Tests kill a restore here: the temporary file done, not yet renamed.
        let _ = crate::failpoint::hit("restore.before_rename");
        let r = if replace {
            fsx::rename_at(b(dst), to, b(dst), name)
        } else {
            fsx::rename_noreplace(b(dst), to, b(dst), name)
        };
        match r {
            Ok(()) => true,
            Err(e) => {
                let _ = fsx::unlink_at(b(dst), to);
                if !replace && fsx::errno_is(&e, Errno::EXIST) {
                    self.in_the_way(dst, rel, name);
                } else if fsx::errno_is(&e, Errno::NOENT) || fsx::errno_is(&e, Errno::PERM) {
                    // The temporary name is there: the target refused `name`.
                    let action = if replace {
                        "replace"
                    } else {
                        "rename into place"
                    };
                    self.create_error(dst, rel, name, action, e);
                } else {
                    self.dest_error(
                        rel,
                        if replace {
                            "replace"
                        } else {
                            "rename into place"
                        },
                        e,
                    );
                }
                false
            }
        }
    }

    fn copy_file(
        &self,
        at: &At<'_, R::Dir>,
        dst_dir: &OwnedFd,
        to: &[u8],
        e: &Entry,
        m: &Meta,
        source: Source,
    ) -> bool {
        let src_rel = &at.src_rel;
        let opened = match source.fd {
            Some(fd) => Ok(fd),
            None => self.reader.open_file(&at.node.src, at.name),
        };
        let src = match opened {
            Ok(fd) => fd,
            Err(e) => {
                self.src_error(src_rel, "open snapshot file", e);
                return false;
            }
        };
        let mut m = *m;
        let mut xattrs = match source.xattrs {
            Some(xs) => xs,
            None if source.no_xattrs => Vec::new(),
            None => fsx::read_xattrs(&XattrTarget::Fd(b(&src))).unwrap_or_else(|e| {
                self.problem(
                    src_rel,
                    ProblemKind::Metadata,
                    "read extended attributes",
                    e,
                );
                Vec::new()
            }),
        };
        let rel = &at.rel;
        // Created with its final mode when it has no special bits (and its owner may
        // write it), so that no `fchmod` is needed when the umask leaves it whole.
        let created_perm = if m.perm & 0o7000 == 0 && m.perm & 0o200 != 0 {
            m.perm & 0o777
        } else {
            0o600
        };
        let dst = match fsx::create_at_mode(b(dst_dir), to, created_perm) {
            Ok(fd) => fd,
            Err(e) => {
                self.create_error(dst_dir, rel, to, "create file", e);
                return false;
            }
        };
        match fsx::copy_hash(b(&src), b(&dst), &m, &|_| true) {
            Ok(fsx::Copied { hash, written, .. }) => {
                add(&self.counts.bytes, written);
                if let Some(want) = e.hash
                    && want != hash
                {
                    // Content changed in the store grants no privileges: setuid and
                    // setgid bits cleared, a file capability not restored.
                    let special =
                        m.perm & 0o6000 != 0 || xattrs.iter().any(|(n, _)| n == fsx::CAPABILITY);
                    m.perm &= !0o6000;
                    xattrs.retain(|(n, _)| n != fsx::CAPABILITY);
                    self.problem(
                        src_rel,
                        ProblemKind::Damaged,
                        "check content against the manifest",
                        format!(
                            "the snapshot's copy does not match the checksum recorded at backup (bit rot or tampering); restored as found{} — run `snapring verify`",
                            if special {
                                ", without its setuid/setgid bits and file capability"
                            } else {
                                ""
                            }
                        ),
                    );
                }
            }
            Err(CopyError::Read(e)) => {
                self.problem(src_rel, ProblemKind::Unreadable, "read snapshot file", e);
                let _ = fsx::unlink_at(b(dst_dir), to);
                return false;
            }
            Err(CopyError::Write(e)) => {
                let _ = fsx::unlink_at(b(dst_dir), to);
                self.dest_error(rel, "write", e);
                return false;
            }
            // Not paced: never stopped.
            Err(CopyError::Stopped) => {
                let _ = fsx::unlink_at(b(dst_dir), to);
                return false;
            }
        }
        // Tests kill a restore here: bytes written, metadata not yet.
        let _ = crate::failpoint::hit("restore.file");
        let t = XattrTarget::Fd(b(&dst));
        // An owner this process may not give (not root) keeps nothing else from being
        // set: its error comes once mode, xattrs and times are.
        let mut owner = None;
        let r = fsx::owner_later(self.owner_mode(b(&dst), &m))
            .map(|o| owner = o)
            .and_then(|_| self.remove_inherited(at.node, &t, fsx::INHERITED, &xattrs))
            .and_then(|_| fsx::write_xattrs(&t, &xattrs))
            .and_then(|refused| {
                for (n, why) in refused {
                    self.problem(
                        rel,
                        ProblemKind::Metadata,
                        "set extended attribute",
                        format!(
                            "{} {why} the target file system",
                            crate::relpath::shown_bytes(&n)
                        ),
                    );
                }
                fsx::apply_times(b(&dst), &m)
            });
        if let Err(e) = fsx::owner_after(r, owner) {
            self.dest_error(rel, "set file metadata", e);
        }
        self.kept(rel, fsx::fstat_cached(b(&dst)), &m);
        true
    }

    /// Counts what the target did not keep of the mode and time just set on the entry
    /// at `rel` (`got`: its attributes now, from the kernel's cache: no round trip): a
    /// file system without modes, or with coarser times (FAT: 2 s). Reported once, at
    /// the end ([`Restore::report`]).
    fn kept(&self, rel: &RelPath, got: Option<Meta>, m: &Meta) {
        let Some(g) = got else { return };
        // Setuid/setgid bits cleared on purpose (an owner that could not be set:
        // `fsx::OwnerNotSet`, a problem of its own) are no mode the target lost.
        let perm = m.perm & !fsx::unsafe_bits(m, (g.uid, g.gid));
        let mode = m.kind != Kind::Symlink && g.perm != perm;
        let time = g.mtime != m.mtime;
        self.lost(rel, mode, false, time.then(|| time_off(&g.mtime, &m.mtime)));
    }

    /// Counts an entry whose mode, owner or time (off by that many ns) the target did
    /// not keep.
    fn lost(&self, rel: &RelPath, mode: bool, owner: bool, time_off: Option<u64>) {
        let c = &self.counts;
        if mode {
            add(&c.modes_lost, 1);
        }
        if owner {
            add(&c.owners_lost, 1);
        }
        if let Some(off) = time_off {
            add(&c.times_lost, 1);
            c.time_off_ns.fetch_max(off, Ordering::Relaxed);
        }
        if mode || owner || time_off.is_some() {
            let mut first = c.lost_first.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert_with(|| rel.clone());
        }
    }

    /// What the target keeps of mode, owner and times, and whether it holds special
    /// files (probed once, in `dir`, when an existing entry first differs in one of them
    /// only, or a special file could not be made). A dry run probes as the restore
    /// would, so it plans the same.
    fn holds(&self, dir: &OwnedFd) -> Holds {
        *self.holds.get_or_init(|| self.probe(dir))
    }

    /// Writes a file under a temporary name in `dir` (removed by a rerun if the restore
    /// is killed first), gives it mode 0640, another owner (as root) and a time of odd
    /// seconds and nanoseconds, and reads back what it kept; makes a fifo under another
    /// temporary name; removes both, and gives `dir` back the modification time it had
    /// (a dry run leaves the target as it was). Anything refused before the read (a
    /// directory it may not write in) keeps the old rule: everything is compared, and
    /// special files are taken as held.
    fn probe(&self, dir: &OwnedFd) -> Holds {
        // A Linux file system (ext4, XFS, btrfs, tmpfs, NFS) keeps all of it: no probe,
        // nothing written beside a conflict in a user's directory.
        let may_not_hold = rustix::fs::fstatfs(dir)
            .is_ok_and(|fs| MAY_NOT_HOLD_MAGIC.contains(&(fs.f_type as u64)));
        if !may_not_hold {
            return Holds::ALL;
        }
        let Ok(st) = rustix::fs::fstat(dir) else {
            return Holds::ALL;
        };
        let h = self.probe_files(dir, &Meta::from_stat(&st));
        // The probe's entries touched the directory's mtime: it gets back the one it had,
        // and its atime as it was (`fusefat` ignores a new mtime whose atime is
        // UTIME_OMIT). Only when it changed: `fusefat` dies setting the times of a FAT
        // root directory (which has none: always 1970).
        let now = rustix::fs::fstat(dir);
        if now.is_ok_and(|n| mtime_of(&n) == mtime_of(&st)) {
            tracing::info!("the target keeps {h:?}");
            return h;
        }
        let _ = rustix::fs::futimens(dir, &stat_times(&st));
        tracing::info!("the target keeps {h:?}");
        h
    }

    /// The probe's files ([`Restore::probe`]), made and removed in `dir`.
    fn probe_files(&self, dir: &OwnedFd, dir_meta: &Meta) -> Holds {
        let fifo = self.tmp_name();
        let special = fsx::mknod_at(
            b(dir),
            &fifo,
            &Meta {
                kind: Kind::Fifo,
                perm: 0o600,
                rdev: 0,
                ..*dir_meta
            },
        )
        .is_ok();
        // Also when refused: FAT through `fusefat` leaves an empty regular file.
        let _ = fsx::unlink_at(b(dir), &fifo);
        let name = self.tmp_name();
        let Ok(fd) = fsx::create_at_mode(b(dir), &name, 0o600) else {
            return Holds::ALL;
        };
        let _ = rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(0o640));
        let owner = match fsx::fstat(b(&fd)) {
            Ok(now) if rustix::process::geteuid().is_root() => {
                let (uid, gid) = (now.uid ^ 1, now.gid ^ 1);
                let set = rustix::fs::fchown(
                    &fd,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                );
                set.is_ok() && fsx::fstat(b(&fd)).is_ok_and(|m| (m.uid, m.gid) == (uid, gid))
            }
            _ => true,
        };
        let set = fsx::Time {
            sec: 1_000_000_001,
            nsec: 999_999_999,
        };
        let t = rustix::fs::Timespec {
            tv_sec: set.sec,
            tv_nsec: set.nsec as _,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        let timed = rustix::fs::futimens(&fd, &times).is_ok();
        let got = fsx::fstat(b(&fd));
        drop(fd);
        let _ = fsx::unlink_at(b(dir), &name);
        let Ok(g) = got else { return Holds::ALL };
        let off = time_off(&g.mtime, &set);
        let time_ns = match off {
            0 => 0,
            _ if !timed => u64::MAX,
            off => [1_000, 1_000_000, 10_000_000, 1_000_000_000, 2_000_000_000]
                .into_iter()
                .find(|c| off < *c)
                .unwrap_or(u64::MAX),
        };
        Holds {
            mode: g.perm & 0o7777 == 0o640,
            owner,
            time_ns,
            special,
        }
    }

    /// Gives a file this restore created the snapshot's owner and mode. The owner and
    /// mode it was created with are read from what the create's reply left in the
    /// kernel's cache (no round trip), and only what differs is set: over NFS or FUSE a
    /// `fchown` costs two round trips (the kernel refetches the attributes first) and
    /// a `fchmod` one. Set in the order that keeps setuid and setgid bits.
    fn owner_mode(&self, fd: std::os::fd::BorrowedFd<'_>, m: &Meta) -> std::io::Result<()> {
        let Some(now) = fsx::fstat_cached(fd) else {
            let owner = fsx::owner_later(fsx::chown_fd(fd, m))?;
            chmod_held(fd, fsx::perm_kept(m, owner.as_ref()))?;
            return fsx::owner_after(Ok(()), owner);
        };
        let chown = (now.uid, now.gid) != (m.uid, m.gid);
        let owner = match chown {
            true => fsx::owner_later(fsx::chown_fd(fd, m))?,
            false => None,
        };
        // An owner that could not be set: without the setuid/setgid bits it makes
        // unsafe (`fsx::OwnerNotSet`), which the create may not have given either.
        let perm = fsx::perm_kept(m, owner.as_ref());
        if now.perm != perm || (chown && perm & 0o6000 != 0) {
            chmod_held(fd, perm)?;
        }
        fsx::owner_after(Ok(()), owner)
    }

    /// An entry just created in `node`'s target directory loses what it may have
    /// inherited there (`names`) and the snapshot's entry (`keep`) does not have; only
    /// where the directory may pass on a default ACL (no call elsewhere). Its owner and
    /// mode are set before: removing an ACL leaves the mode as it is.
    fn remove_inherited(
        &self,
        node: &Node<R::Dir>,
        t: &XattrTarget<'_>,
        names: &[&[u8]],
        keep: &Xattrs,
    ) -> std::io::Result<()> {
        if node.may_inherit {
            fsx::remove_xattrs(t, names, keep)?;
        }
        Ok(())
    }

    fn copy_special(
        &self,
        at: &At<'_, R::Dir>,
        dst: &OwnedFd,
        to: &[u8],
        m: &Meta,
        source: Source,
    ) -> bool {
        let (src, name) = (&at.node.src, at.name);
        let xattrs = match source.xattrs {
            Some(xs) => xs,
            None if source.no_xattrs => Vec::new(),
            None => self.reader.xattrs(src, Some(name)).unwrap_or_default(),
        };
        let made = if m.kind == Kind::Symlink {
            let target = match source.target {
                Some(t) => Ok(t),
                None => self.reader.read_link(src, name),
            };
            match target {
                Ok(t) => fsx::symlink_at(&t, b(dst), to),
                Err(e) => {
                    self.problem(&at.src_rel, ProblemKind::Unreadable, "read symlink", e);
                    return false;
                }
            }
        } else {
            fsx::mknod_at(b(dst), to, m)
        };
        if let Err(e) = made {
            if m.kind != Kind::Symlink && self.no_special(dst, &e) {
                // FAT through `fusefat` leaves an empty regular file of the name (a
                // temporary one, or the entry's own in a directory the restore made,
                // where nothing was: either way not the user's).
                if fsx::lstat_at(b(dst), to).is_ok_and(|x| x.kind == Kind::File && x.size == 0) {
                    let _ = fsx::unlink_at(b(dst), to);
                }
                self.special_not_held(&at.rel, m, e);
            } else {
                self.create_error(dst, &at.rel, to, "create", e);
            }
            return false;
        }
        // Tests kill a restore here: the entry made, its metadata not yet set.
        let _ = crate::failpoint::hit("restore.special");
        let t = XattrTarget::At(b(dst), to);
        // A symlink has no ACL to inherit.
        let inherited = if m.kind == Kind::Symlink {
            &[]
        } else {
            fsx::INHERITED
        };
        let mut owner = None;
        let meta = match fsx::apply_meta_at(b(dst), to, m) {
            Err(e) if mode_refused(&e) => Ok(()),
            r => r,
        };
        let r = fsx::owner_later(meta)
            .map(|o| owner = o)
            .and_then(|_| self.remove_inherited(at.node, &t, inherited, &xattrs))
            .and_then(|_| fsx::write_xattrs(&t, &xattrs))
            .and_then(|_| fsx::apply_times_at(b(dst), to, m));
        let r = fsx::owner_after(r, owner);
        if let Err(e) = r {
            // Not what it made: a symlink put in its place (the target's directory is
            // writable by others). Its mode was not set through it; the symlink goes
            // (unlinking removes the link, not what it points to), and the entry is not
            // restored.
            if fsx::errno_is(&e, Errno::LOOP) {
                let _ = fsx::unlink_at(b(dst), to);
                self.conflict(
                    &at.rel,
                    "replaced by a symlink in the target during the restore; not restored".into(),
                );
                return false;
            }
            self.dest_error(&at.rel, "set metadata", e);
        }
        true
    }

    fn report(
        self,
        sel: &Selected,
        store: &Store,
        started_at: String,
        t0: Instant,
    ) -> RestoreReport {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counts;
        let fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut warnings: Vec<String> = self.unfinished.warning.iter().cloned().collect();
        let first = c
            .lost_first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let first = first.map(|r| r.escaped()).unwrap_or_default();
        for (n, what, has) in [
            (g(&c.modes_lost), "mode", "no modes (FAT, exFAT)"),
            (
                g(&c.owners_lost),
                "owner",
                "no owners of its own (FAT, exFAT)",
            ),
        ] {
            if n > 0 {
                self.problem(
                    &RelPath::root(),
                    ProblemKind::Metadata,
                    "keep metadata",
                    format!(
                        "the target file system did not keep the snapshot's {what} of {n} entries (first {first}): it has {has}, or this process may not give that {what}; their data is restored, and a rerun takes them as restored (not as conflicts)"
                    ),
                );
            }
        }
        let (n, unsaid) =
            std::mem::take(&mut *self.unsaid.lock().unwrap_or_else(|e| e.into_inner()));
        if n > 0 {
            tracing::info!(
                "{}",
                crate::engine::walk::unsaid_refusals_line(n, &unsaid, "restored")
            );
        }
        let not_kept = self
            .not_kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if not_kept.0 > 0 {
            let mut names: Vec<String> = not_kept
                .1
                .iter()
                .map(|n| crate::relpath::shown_bytes(n))
                .collect();
            names.sort();
            if not_kept.2 {
                names.push("…".into());
            }
            let n = not_kept.0;
            // Without its access ACL a file's group permission bits are the ACL's mask,
            // which may give the owning group more than its ACL entry did.
            let acl = if not_kept.1.iter().any(|n| n == fsx::ACL_ACCESS) {
                "; among them POSIX ACLs (system.posix_acl_access): those entries' group permission bits are the ACL's mask, which may give the owning group more than the ACL did, check them"
            } else {
                ""
            };
            warnings.push(format!(
                "{n} entr{} restored without extended attributes the backup file system refused when {} backed up ({}): the snapshot never kept them{acl}",
                if n == 1 { "y" } else { "ies" },
                if n == 1 { "it was" } else { "they were" },
                names.join(", ")
            ));
        }
        if g(&c.times_lost) > 0 {
            warnings.push(format!(
                "the target file system did not keep the modification time of {} entries exactly (first {first}; off by up to {:.3} s): it keeps coarser times (FAT: 2 s); a rerun takes times that close as the same",
                g(&c.times_lost),
                g(&c.time_off_ns) as f64 / 1e9
            ));
        }
        let conflicts_total = g(&c.conflicts_total);
        let errors = g(&c.errors);
        let interrupted = fatal.is_none() && self.cancel.load(Ordering::Relaxed);
        let (status, message) = if let Some(e) = fatal {
            (Status::Failed, format!("{e}"))
        } else if interrupted {
            (
                Status::Incomplete,
                "interrupted; run the same restore again to finish (identical files are skipped)"
                    .into(),
            )
        } else if conflicts_total > 0 || errors > 0 {
            (
                Status::Partial,
                format!(
                    "{conflicts_total} conflicts left alone ({}), {errors} problems",
                    conflict_hint(conflicts_total, g(&c.case_conflicts))
                ),
            )
        } else {
            (Status::Complete, String::new())
        };
        let mut conflicts =
            std::mem::take(&mut *c.conflicts.lock().unwrap_or_else(|e| e.into_inner()));
        conflicts.sort_by(|a, b| a.path.cmp(&b.path));
        let mut problems =
            std::mem::take(&mut *c.problems.lock().unwrap_or_else(|e| e.into_inner()));
        problems.sort_by(|a, b| a.path.cmp(&b.path));
        RestoreReport {
            kind: restore_kind(),
            id: None,
            job: None,
            host: report::hostname(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            finished_at: Some(report::now_rfc3339()),
            log: None,
            warnings,
            notifications: Vec::new(),
            snapshot: sel.snap.name.clone(),
            run_id: sel.snap.rec.as_ref().map(|r| r.id.clone()),
            store: store.root.clone(),
            to: self.opts.to.clone(),
            path: self.opts.path.as_ref().map(|p| p.escaped()),
            mode: self.opts.mode,
            dry_run: self.opts.dry_run,
            started_at,
            duration_seconds: t0.elapsed().as_secs_f64(),
            exit_code: status.exit_code(),
            status,
            message,
            files_restored: g(&c.files),
            others_restored: g(&c.others),
            dirs_created: g(&c.dirs),
            bytes_restored: g(&c.bytes),
            hard_links: g(&c.hard_links),
            skipped_identical: g(&c.identical),
            overwritten: g(&c.overwritten),
            deleted: g(&c.deleted),
            kept_excluded: g(&c.kept_excluded),
            temporary_removed: g(&c.leftovers),
            conflicts_total,
            conflicts,
            errors,
            problems,
        }
    }
}
/// A `--path` argument (or `history`'s PATH) as the user typed it: relative to the
/// snapshot root, and escaped as snapring prints paths (`relpath::escape`), so a name
/// copied from `diff`, `verify` or a report is found: `%XX` is the byte XX (`new%0Aline`,
/// `my%20file`), a real `%` is written `%25`; every other byte is itself (a space or
/// UTF-8 may be typed as it is). `what` names the argument in errors (`--path`, or
/// `history`'s `PATH`). See [`literal_path`] for the same text with its `%` as itself.
pub fn parse_path(p: &Path, what: &str) -> std::result::Result<RelPath, String> {
    let bytes = crate::relpath::unescape_bytes(p.as_os_str().as_bytes()).map_err(|e| {
        format!(
            "{what} {}: {e}; paths are given escaped, as snapring prints them: a name's % is written %25",
            crate::relpath::shown(p)
        )
    })?;
    normalised(&bytes, p, what)
}

/// The path `p` names when its text is taken literally, a `%` as itself (`a%FFb` the
/// five characters), when that is another path than [`parse_path`]'s reading (`a`, the
/// byte FF, `b`): `None` when `p` has no `%` (both readings are one), or its literal
/// reading is no path inside a snapshot. A name with a real `%` typed as it is, not as
/// `%25`, is then found by its literal reading: the restore (and `history`) look for
/// both, and refuse to choose between two entries, or name the spelling to type for the
/// one that is there (`ambiguous_path`, `literal_hint`).
pub fn literal_path(p: &Path) -> Option<RelPath> {
    let raw = p.as_os_str().as_bytes();
    if !raw.contains(&b'%') {
        return None;
    }
    let literal = normalised(raw, p, "").ok()?;
    let escaped = parse_path(p, "").ok();
    (escaped.as_ref() != Some(&literal) && !literal.is_root()).then_some(literal)
}

/// Both readings of a typed path name an entry (a name `a`, FF, `b` and a name
/// `a%FFb`): the escaped reading, snapring's own spelling (a path copied from its output
/// is found), is the one taken; this warning names the other and the spelling that
/// reaches it. `what`: the argument (`--path`, `PATH`), `where_`: the snapshot (or
/// store) that has both.
pub fn ambiguous_path(what: &str, typed: &Path, literal: &RelPath, where_: &str) -> String {
    let typed = crate::relpath::shown(typed);
    format!(
        "{what} {typed} is read as snapring prints paths (%XX the byte XX); {typed} taken literally is also an entry of {where_}: to mean it, give {literal}"
    )
}

/// The hint added to "has no PATH" when the typed text, taken literally, names an entry.
pub fn literal_hint(literal: &RelPath) -> String {
    format!(
        "{literal}, the name as typed, is there (paths are given as snapring prints them, a name's % written %25): to mean it, give {literal}"
    )
}

/// A path's bytes, relative to the snapshot root, normalised (see [`parse_path`]).
fn normalised(bytes: &[u8], p: &Path, what: &str) -> std::result::Result<RelPath, String> {
    if bytes.starts_with(b"/") {
        let start = bytes.iter().position(|b| *b != b'/').unwrap_or(bytes.len());
        let inside = String::from_utf8_lossy(&bytes[start..]);
        return Err(format!(
            "{what} {} is absolute; give it relative to the snapshot root (for example {})",
            crate::relpath::shown(p),
            if inside.is_empty() {
                "users/alice"
            } else {
                &inside
            }
        ));
    }
    // Normalised as a shell or `realpath -s` would read it: an empty component (`a//b`,
    // a trailing `/`) and `.` are dropped anywhere (only a leading `./` and trailing `/`
    // were, and `sub//deep` was refused while `./sub` was taken).
    let parts: Vec<&[u8]> = bytes
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    if parts.contains(&&b".."[..]) {
        return Err(format!(
            "{what} {} has a `..` component, which would leave the snapshot or go back up in it; give the path inside the snapshot without `..` (for example users/alice)",
            crate::relpath::shown(p)
        ));
    }
    RelPath::new(&parts.join(&b'/'))
        .map_err(|e| format!("{what} {}: {e}", crate::relpath::shown(p)))
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    /// The `s` line of a record of unfinished work: written and read in one place,
    /// compared as [`Identity::same_restore`] says, and its command quoted for a shell.
    #[test]
    fn an_identity_line_reads_back_as_written() {
        let a = Identity {
            store_id: (65024, 77),
            snap: RecordedSnapshot::Run("20261207T101359Z-99df4c".into()),
            mode: Mode::Overwrite,
            flat: true,
            path: "odd%20dir".into(),
            store: "/x/my%20store".into(),
        };
        let line = a.to_string();
        assert_eq!(
            line,
            "s 65024:77 run:20261207T101359Z-99df4c overwrite flat odd%20dir /x/my%20store"
        );
        assert_eq!(Identity::parse(&line), Some(a.clone()));
        let d = Identity {
            snap: RecordedSnapshot::Dir {
                name: "daily.3".into(),
                ino: 9,
            },
            mode: Mode::Safe,
            flat: false,
            path: ".".into(),
            ..a.clone()
        };
        assert_eq!(
            d.to_string(),
            "s 65024:77 dir:daily.3:9 safe nested . /x/my%20store"
        );
        assert_eq!(Identity::parse(&d.to_string()), Some(d.clone()));
        // A run's restore is the same from another mount or copy of its store; a
        // taken-over tree's only on the same device.
        let moved = Identity {
            store_id: (1, 2),
            store: "/elsewhere".into(),
            ..a.clone()
        };
        assert!(a.same_restore(&moved));
        let d_moved = Identity {
            store_id: (1, 2),
            ..d.clone()
        };
        assert!(!d.same_restore(&d_moved));
        for other in [
            Identity {
                path: ".".into(),
                ..a.clone()
            },
            Identity {
                flat: false,
                ..a.clone()
            },
            Identity {
                mode: Mode::Mirror,
                ..a.clone()
            },
            Identity {
                snap: RecordedSnapshot::Run("other".into()),
                ..a.clone()
            },
        ] {
            assert!(!a.same_restore(&other), "{other}");
        }
        for bad in [
            "s 1:2 run:x safe nested .",
            "s 1:2 run:x safe nested . /s extra",
            "s 1:2 run:x unsafe nested . /s",
            "s 1:2 run:x safe sideways . /s",
            "s x:2 run:x safe nested . /s",
            "s 1:2 dir:n safe nested . /s",
            "s 1:2 snap:x safe nested . /s",
            "r 1 2 3 4 5 6",
        ] {
            assert_eq!(Identity::parse(bad), None, "{bad}");
        }
        assert_eq!(
            a.command(Path::new("/t o")),
            "snapring restore --dest='/x/my store' 20261207T101359Z-99df4c --path='odd dir' --flat --overwrite --to='/t o'"
        );
        assert_eq!(
            d.command(Path::new("/t")),
            "snapring restore --dest='/x/my store' daily.3 --to=/t"
        );
    }
}
