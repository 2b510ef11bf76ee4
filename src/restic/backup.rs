//! `snapring backup --dest file:///…`: one snapshot of a source tree into a restic
//! repository. The source is walked on `traverse` (the one parallel traversal), with
//! `jobs` file-system calls in flight: workers list directories, `lstat` entries and
//! read files at once. A file whose compare key (type, size, mtime, ctime, inode) is
//! the parent snapshot's, with every blob still indexed, keeps its blob list unread;
//! any other file is read by the worker that met it, cut with the repository's chunker
//! and its new blobs packed (a shared `Packer`); a big file's chunks are packed by a few
//! threads while it is read on (`chunks_at_once`). Trees are built bottom-up: each
//! directory collects its children's nodes, and when its whole subtree is done
//! (`Visitor::finish`) it sorts them by name, saves its tree blob and hands its node,
//! with the tree's id, to its parent. Packs, then the index, then the snapshot are
//! written (restic's write order), under a shared lock; then, with `retain`, retention
//! (`forget`) under an exclusive one. Per-entry problems (unreadable, vanished) leave
//! the entry out and make the run `partial`, unless they say the source itself went
//! away (ENOTCONN while the root's kept descriptor does not answer, or the root gone or
//! another directory when the walk ends): then the run fails, no snapshot written,
//! nothing forgotten, its packs indexed (`Error::SourceLost`, invariant 4, as the
//! store's run); a directory that cannot be opened or
//! listed keeps the parent snapshot's entries of it instead (`keep`), as the store's
//! walk does. A tree of the parent that does not read
//! (a damaged repository) is a warning, and its directory is read in full. `snapshot_locked` is the walk itself,
//! given where to read, what to record and, for `copy`, another rule for "unchanged"
//! (`Reuse`). Reads the source, writes the repository.
//!
//! Every entry is read relative to its directory's descriptor (`fstatat`, `openat`
//! with `O_NOFOLLOW`, the extended attributes through `/proc/self/fd`), and each
//! subdirectory is opened `O_NOFOLLOW | O_DIRECTORY` and checked to be the one its
//! parent's listing `lstat`ed ([`crate::fsx::open_same_dir`], as the store's walk): a
//! directory of the source swapped for a symlink while the walk runs is a problem
//! (`vanished`, "replaced by a symlink"), never followed. By whole paths, a symlink
//! to `/` swapped in for a few milliseconds put `/etc/shadow` into the snapshot.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::chunker::{Chunker, Tables};
use super::index::Index;
use super::pack::BlobType;
use super::repo::{Packer, PackerStats, Repo};
use super::snapshot::{self, Snapshot};
use super::tree::{ExtendedAttribute, Node, Tree, encode_name, go_mode};
use super::{Error, Id, Result, io_err};

pub struct BackupOptions {
    pub source: PathBuf,
    pub label: String,
    /// Keep the newest N snapshots of the label in this host/paths group after a run
    /// that wrote a snapshot (restic `forget --keep-last N`); `None` keeps all.
    pub retain: Option<u32>,
    /// Set by SIGINT/SIGTERM: the run stops as `incomplete`, its packs indexed, no
    /// snapshot written.
    pub cancel: Arc<AtomicBool>,
    /// File-system calls in flight (`--jobs`); 0: the default for the source's file
    /// system (`concurrency::resolve`).
    pub jobs: usize,
    /// Record each entry's real access time (`--with-atime`, as restic's flag); without
    /// it the access time recorded is the modification time, as restic's default.
    pub with_atime: bool,
    /// For the retention's forget ([`super::forget::Policy::before_remove`]).
    pub before_forget: Option<super::forget::BeforeRemove>,
    /// Stay on the source's file system (`--one-file-system`): a directory on another
    /// device is recorded as an empty directory (`traverse::OneFs`).
    pub one_file_system: bool,
    /// What is left out (`--exclude`, `--exclude-from`, `--exclude-caches`,
    /// `--exclude-if-present`), the pattern files already read; recorded in the
    /// snapshot (its `excludes`, and the tags [`exclusion_tags`] names).
    pub exclusion: crate::exclude::Settings,
    /// `--allow-empty`: back up a source that is empty, or of which the exclusions
    /// leave nothing, while the parent snapshot is not ([`refuse_empty`]), or that
    /// keeps fewer than a tenth of the parent's files ([`shrunk_from`]).
    pub allow_empty: bool,
    /// `--host NAME` (restic's `backup --host`): the hostname the snapshot records, its
    /// parent is picked by and its retention groups by; `None`: this machine's
    /// ([`crate::util::hostname`]). For a source whose hostname changes each run (a
    /// container, a Kubernetes CronJob's pod).
    pub host: Option<String>,
}

/// The tag of a snapshot made with `--exclude-caches`.
pub const EXCLUDE_CACHES_TAG: &str = "exclude_caches";
/// The key of the tags of a snapshot made with `--exclude-if-present NAME`.
pub const EXCLUDE_IF_PRESENT_TAG: &str = "exclude_if_present";

/// The tags that record `s`'s tag rules in a snapshot (its patterns go in `excludes`).
pub fn exclusion_tags(s: &crate::exclude::Settings) -> Vec<String> {
    let mut t = Vec::new();
    if s.exclude_caches {
        t.push(EXCLUDE_CACHES_TAG.to_string());
    }
    for n in &s.exclude_if_present {
        t.push(format!("{EXCLUDE_IF_PRESENT_TAG}={n}"));
    }
    t
}

/// The exclusion settings a snapshot records (`excludes`, [`exclusion_tags`]), for
/// `verify`/`diff --against`.
pub fn exclusion_of(snap: &Snapshot) -> crate::exclude::Settings {
    let prefix = format!("{EXCLUDE_IF_PRESENT_TAG}=");
    crate::exclude::Settings {
        excludes: snap.excludes.clone(),
        exclude_from: Vec::new(),
        exclude_caches: snap.has_tag(EXCLUDE_CACHES_TAG),
        exclude_if_present: snap
            .tags
            .iter()
            .filter_map(|t| t.strip_prefix(&prefix).map(str::to_string))
            .collect(),
    }
}

#[derive(Debug, Default, Serialize)]
pub struct BackupReport {
    pub snapshot: String,
    pub parent: Option<String>,
    pub status: String,
    pub files: u64,
    pub dirs: u64,
    /// Files whose blob list came from the parent snapshot, unread.
    pub files_unchanged: u64,
    pub files_read: u64,
    pub bytes_read: u64,
    pub bytes_total: u64,
    /// Packs, blobs and bytes this run added to the repository.
    pub added: PackerStats,
    /// Bytes of every file this run wrote to the repository (packs, index files, the
    /// snapshot file; not its lock).
    pub bytes_uploaded: u64,
    /// Files (objects, on S3) this run wrote: packs, index files, the snapshot file.
    pub objects_written: u64,
    /// The share of the bytes read this run that the repository had already (0: all
    /// new, 1: all found); 0 when nothing was read.
    pub dedup_ratio: f64,
    pub problems: Vec<EntryProblem>,
    /// Retention after the snapshot (with `retain`): each verdict with its reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<super::forget::ForgetReport>,
    /// Why retention did not run this time (another process held a lock); the next
    /// run's retention catches up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_skipped: Option<String>,
    /// What went wrong beside the snapshot without changing it: a tree of the parent
    /// snapshot that could not be read (its directory was read in full instead).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// With `one_file_system`: the directories on another file system, recorded as
    /// empty trees, and the first of them (escaped, in path order).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mount_points_skipped: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_points: Vec<String>,
    pub duration_seconds: f64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// An entry left out of the snapshot, and why.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EntryProblem {
    /// The entry relative to the source, `%XX`-escaped as in manifests.
    pub path: String,
    /// `unreadable`, `vanished` or `store_in_source`.
    pub kind: String,
    /// What was being done: `stat`, `open`, `read`, `list`, …
    pub action: String,
    pub error: String,
}

/// Another rule than restic's compare key for "this file is the parent snapshot's
/// entry, unchanged, so its blob list is reused unread" (`copy` asks the manifests).
pub trait Reuse: Send {
    /// `path` is the file as the walk reads it, `prev` the parent snapshot's node of
    /// the same name, `md` the file's `lstat`.
    fn unchanged(&mut self, path: &Path, prev: &Node, md: &Stat) -> bool;
    /// The BLAKE3 hash the content of the file at `path` must have, where known: a
    /// file read whose content is not this is left out, a problem (`unreadable`).
    fn expected(&mut self, _path: &Path) -> Option<blake3::Hash> {
        None
    }
    /// Checks the listing `names` of the directory at `path` against what it must
    /// hold: each problem found, as (the entry's path, its kind, the error). A name it
    /// removes from `names` is left out of the snapshot (one it must not hold).
    fn check_listing(
        &mut self,
        _path: &Path,
        _names: &mut Vec<Vec<u8>>,
    ) -> Vec<(PathBuf, &'static str, Error)> {
        Vec::new()
    }
    /// Checks the entry at `path` (its `lstat` `md`, a symlink's target) against what
    /// it must be, before its content is read.
    fn check_entry(&mut self, _path: &Path, _md: &Stat, _target: Option<&[u8]>) -> Check {
        Check::Good
    }
}

/// What [`Reuse::check_entry`] found.
pub enum Check {
    /// As it must be, or nothing to check it against.
    Good,
    /// Not what it must be (another type, size, symlink target or device): left out of
    /// the snapshot, a problem (its kind, the error).
    LeaveOut(&'static str, Error),
    /// Its mode, owner or mtime are not the ones it must have: recorded with these
    /// (the Unix permission bits, uid, gid, mtime), a problem `metadata`.
    Recorded {
        perm: u32,
        uid: u32,
        gid: u32,
        mtime: (i64, u32),
        error: Error,
    },
}

/// What one snapshot is made of: where to read, what to record, which parent.
pub struct Spec<'a> {
    /// The directory the walk reads (may be a `/proc/self/fd/N` path of a held one).
    pub walk_root: PathBuf,
    /// The snapshot's path (absolute, canonical): its ancestors wrap the tree, as
    /// restic's do, with their metadata from this machine.
    pub path: PathBuf,
    pub parent: Option<(Id, Snapshot)>,
    pub tags: Vec<String>,
    /// Retention after the snapshot, on this label.
    pub label: String,
    pub retain: Option<u32>,
    pub cancel: Arc<AtomicBool>,
    pub reuse: Option<&'a mut (dyn Reuse + 'static)>,
    /// File-system calls in flight (resolved: not 0).
    pub jobs: usize,
    /// The snapshot's time (`None`: now, the run's start).
    pub time: Option<chrono::DateTime<chrono::Local>>,
    /// Record real access times (`BackupOptions::with_atime`).
    pub with_atime: bool,
    /// For the retention's forget ([`super::forget::Policy::before_remove`]).
    pub before_forget: Option<super::forget::BeforeRemove>,
    /// Stay on the file system of `walk_root` (`BackupOptions::one_file_system`).
    pub one_file_system: bool,
    /// What is left out (`BackupOptions::exclusion`); its patterns are the snapshot's
    /// `excludes`.
    pub exclusion: crate::exclude::Settings,
    /// `exclusion` is only recorded, not matched by the walk: the tree is a store
    /// snapshot (`copy`) its run already left those out of.
    pub exclusion_recorded_only: bool,
    /// The hostname the snapshot records (`BackupOptions::host`, else this machine's);
    /// its retention's group is of this host.
    pub host: String,
    /// Refuse the snapshot when the walk kept no file while the parent's tree holds
    /// files (`!allow_empty`, a backup's): a snapshot of empty directories would make
    /// the retention forget history as an empty source would ([`Error::NoFilesLeft`]);
    /// and when it kept fewer than a tenth of the parent's files, of at least 100
    /// ([`crate::error::Error::SourceShrank`], [`shrunk_from`]).
    /// The exclusions, named for the message, come from `exclusion`.
    pub refuse_no_files: bool,
}

/// Backs `opts.source` up into the repository `repo`.
pub fn backup(repo: &mut Repo, opts: &BackupOptions) -> Result<BackupReport> {
    // From the start: the lock and the index are read through the same retries.
    repo.backend.watch_cancel(&opts.cancel);
    repo.check_writable()?;
    let source =
        std::fs::canonicalize(&opts.source).map_err(io_err("open the source", &opts.source))?;
    if !source.is_dir() {
        return Err(Error::Other(format!(
            "the source {} is not a directory",
            crate::relpath::shown(&source)
        )));
    }
    if let Some(why) = non_utf8_source(&source) {
        return Err(Error::Other(why));
    }
    // A prune between the opening (the index read) and the lock (the race tests).
    crate::failpoint::hit("restic.backup.before_lock")
        .map_err(|e| Error::Other(format!("lock {}: {e}", repo.backend.location())))?;
    let lock = super::lock::acquire(repo, false)?;
    // Read again under the lock: a prune between the opening and the lock deleted packs
    // the index read at open still names, and a blob found there is not stored.
    if let Err(e) = repo.refresh_index() {
        let _ = lock.release();
        return Err(e);
    }
    let path_str = source.to_string_lossy().into_owned();
    let host = opts.host.clone().unwrap_or_else(crate::util::hostname);
    let (parent, hint) = pick_parent(repo, &path_str, &host, &opts.label, opts.host.is_some())?;
    if let Some(h) = &hint {
        tracing::warn!("{h}");
    }
    if !opts.allow_empty
        && let Some((id, p)) = &parent
        && let Err(e) = refuse_empty(
            repo,
            &source,
            || Ok(Some((*id, p.clone()))),
            &opts.exclusion,
        )
    {
        let _ = lock.release();
        return Err(e);
    }
    let mut tags = vec!["snapring".into(), format!("label={}", opts.label)];
    if opts.one_file_system {
        tags.push(super::snapshot::ONE_FILE_SYSTEM_TAG.into());
    }
    tags.extend(exclusion_tags(&opts.exclusion));
    let spec = Spec {
        walk_root: source.clone(),
        path: source,
        parent,
        tags,
        label: opts.label.clone(),
        retain: opts.retain,
        cancel: opts.cancel.clone(),
        reuse: None,
        jobs: crate::concurrency::resolve(opts.jobs, &[&opts.source]),
        time: None,
        with_atime: opts.with_atime,
        before_forget: opts.before_forget,
        one_file_system: opts.one_file_system,
        exclusion: opts.exclusion.clone(),
        exclusion_recorded_only: false,
        host,
        refuse_no_files: !opts.allow_empty,
    };
    let mut report = snapshot_locked(repo, spec, lock)?;
    if let Some(h) = hint {
        report.warnings.insert(0, h);
    }
    Ok(report)
}

/// Why a source (canonical) whose path is not UTF-8 is refused for a repository, or
/// none: a snapshot's `paths` are JSON strings, which cannot hold its bytes, and
/// retention and the choice of a parent group snapshots by them, so two sources
/// differing only in such bytes (`caf\xE9`, `caf\xE8`) would be one lineage, each
/// run's retention forgetting the other's snapshots. Names inside the tree are kept
/// exactly; only the source's own path is in question.
pub fn non_utf8_source(source: &Path) -> Option<String> {
    let why = crate::localpath::utf8(source).err()?;
    Some(format!(
        "the source {} cannot be backed up into a restic repository: {why}, and a repository records a snapshot's source path as UTF-8 text, by which it groups snapshots for retention and picks the parent, so two directories whose names differ only in such bytes would be taken for one; nothing was written. Back up a parent directory whose path is UTF-8 (names inside the tree are kept exactly), or back it up into a store (--dest a directory), which records the path exactly",
        crate::relpath::shown(source)
    ))
}

/// Writes one snapshot as `spec` says, under the shared `lock` (released here), then
/// applies retention.
pub fn snapshot_locked(
    repo: &mut Repo,
    spec: Spec<'_>,
    lock: super::lock::Guard,
) -> Result<BackupReport> {
    let started = std::time::Instant::now();
    let start_time = spec.time.unwrap_or_else(chrono::Local::now);
    // Every caller checked its path (`non_utf8_source`); a path that is not UTF-8
    // would group with another's snapshots.
    let path_str = match crate::localpath::utf8(&spec.path) {
        Ok(p) => p.to_string(),
        Err(why) => {
            let _ = lock.release();
            return Err(Error::Other(format!(
                "{}: {why}: a restic snapshot's path is UTF-8 text; nothing was written",
                crate::relpath::shown(&spec.path)
            )));
        }
    };
    let host = spec.host;
    let parent = spec.parent;
    let comps: Vec<&OsStr> = spec.path.iter().skip(1).collect();
    // The parent's tree of its own path (a copy's parent may be of another snapshot
    // directory; a backup's parent has the same path). A parent whose trees do not
    // read (a pack lost, an index repaired since) is no reason to write no more
    // snapshots: the source is read in full instead, as restic does, and the run says
    // so.
    let mut warnings = Vec::new();
    let mut parent_unread = false;
    let parent_tree = match &parent {
        Some((id, p)) => match p.paths.as_slice() {
            [one] => {
                let pc: Vec<&OsStr> = Path::new(one).iter().skip(1).collect();
                descend(repo, p.tree, &pc).unwrap_or_else(|e| {
                    warnings.push(unreadable_parent(Some(id), ".", &e));
                    parent_unread = true;
                    None
                })
            }
            _ => None,
        },
        None => None,
    };
    let tables = repo.tables();
    // No index file once the lock is lost: a prune may have removed the packs it names.
    let packer = Packer::default().under(lock.watch());
    let stop = AtomicBool::new(false);
    let one_fs = match spec.one_file_system {
        true => {
            let md = std::fs::symlink_metadata(&spec.walk_root)
                .map_err(io_err("stat", &spec.walk_root))?;
            Some(crate::traverse::OneFs::new(md.dev()))
        }
        false => None,
    };
    let excludes = match spec.exclusion.is_empty() || spec.exclusion_recorded_only {
        true => None,
        false => Some(
            spec.exclusion
                .build()
                .map_err(|e| Error::Other(e.to_string()))?,
        ),
    };
    let run = Run {
        excludes: excludes.as_ref(),
        reuse: spec.reuse.map(Mutex::new),
        parent_root: parent.as_ref().map(|(_, p)| p.tree),
        parent_id: parent.as_ref().map(|(id, _)| *id),
        parent_unread,
        with_atime: spec.with_atime,
        one_fs,
        chunk_threads: AtomicUsize::new(spec.jobs.max(1)),
        ..Run::new(&spec.walk_root, repo, &packer, &tables, &spec.cancel, &stop)
    };
    let root_sub = Sub {
        node: None,
        parent_tree,
    };
    crate::traverse::walk(&run, root_sub, spec.jobs.max(1), &stop);
    let walked = run.outcome().and_then(|t| run.wrap(&comps, t));
    // The source gone (its FUSE server dead, its NFS export stale, the mount torn
    // away): met on an entry by the walk, or the root no longer there (or another
    // directory) once the walk ended. Named by the snapshot's path (a copy's walk
    // reads a held store snapshot through `/proc/self/fd`).
    let walked = match walked {
        Ok(t) if !spec.cancel.load(Ordering::Relaxed) => match run.root_gone() {
            Some(detail) => Err(Error::SourceLost {
                root: spec.path.clone(),
                detail,
            }),
            None => Ok(t),
        },
        Err(Error::SourceLost { detail, .. }) => Err(Error::SourceLost {
            root: spec.path.clone(),
            detail,
        }),
        w => w,
    };
    let others = run.counts.others.load(Ordering::Relaxed);
    let parent_count =
        std::mem::take(&mut *run.parent_count.lock().unwrap_or_else(|e| e.into_inner()));
    let mut report = run.into_report();
    warnings.append(&mut report.warnings);
    report.warnings = warnings;
    // Stopped (SIGINT, SIGTERM, the window) at any point before the snapshot file,
    // even after the last read, while the last packs were written: `incomplete`, the
    // packs indexed for the next run, no snapshot. (A stop that came after the walk's
    // last check used to publish, or not, by how the reads and uploads interleaved.)
    let stopped = |mut report: BackupReport, lock: super::lock::Guard| {
        report.count_uploads(0, 0);
        report.status = "incomplete".into();
        report.duration_seconds = started.elapsed().as_secs_f64();
        release_or_warn(lock, &mut report.warnings);
        Ok(report)
    };
    let root = match walked {
        Ok(root) if !spec.cancel.load(Ordering::Relaxed) => root,
        Ok(_) | Err(Error::Cancelled) => {
            report.added = packer.finish(repo).map_err(|e| full_disk_hint(repo, e))?;
            return stopped(report, lock);
        }
        // No snapshot, nothing forgotten: the entries it could not read would be left
        // out, and a `partial` snapshot missing most of the tree would become the
        // parent and count in the retention. What reached the repository is indexed,
        // as a stopped run's, for the next run to reuse.
        Err(e @ Error::SourceLost { .. }) => {
            if let Err(f) = packer.finish(repo) {
                tracing::warn!("after the source went away: {}", full_disk_hint(repo, f));
            }
            let _ = lock.release();
            return Err(e);
        }
        Err(e) => {
            let _ = packer.index_written(repo);
            return Err(full_disk_hint(repo, e));
        }
    };
    report.added = packer.finish(repo).map_err(|e| full_disk_hint(repo, e))?;
    // A walk that kept no file (the exclusions left only directories, or the source
    // holds none) against a parent with files: no snapshot, nothing forgotten (the
    // packs written are indexed for the next run). Checked before the snapshot file, as
    // the store checks before it publishes. Only against a parent of this label: a new
    // label's first run (its parent another label's, `pick_parent`) forgets nothing.
    // Kept symlinks or devices are entries the store counts as files: not refused.
    if spec.refuse_no_files
        && report.files == 0
        && others == 0
        && let (Some((id, p)), Some(tree)) = (&parent, parent_tree)
        && p.tag("label") == Some(spec.label.as_str())
        && tree_has_file(repo, tree)?
    {
        let _ = lock.release();
        return Err(Error::Other(
            crate::error::Error::NoFilesLeft {
                path: spec.path.clone(),
                prev: format!("{} ({})", &id.hex()[..8], p.time),
                by: spec.exclusion.named(),
                unread: unread_listings(&report.problems),
            }
            .to_string(),
        ));
    }
    // A walk that kept files, but fewer than a tenth of the parent's (of at least 100:
    // `error::shrank`; a failed mount whose mount point holds a marker file): refused
    // the same way. Files are regular files on both sides (what `files` counts). The
    // parent's are those the walk saw in the parent's trees it read, and below the
    // subtrees it did not read (directories gone, excluded), read now as far as the
    // rule needs. (They were all counted again after the walk: a local unchanged
    // incremental of 20k files took 0.29 s instead of 0.25.)
    if spec.refuse_no_files
        && report.files > 0
        && let (Some((id, p)), Some(_)) = (&parent, parent_tree)
        && p.tag("label") == Some(spec.label.as_str())
        && let Some(prev_files) = shrunk(report.files, |stop_at| parent_count.count(repo, stop_at))?
    {
        let _ = lock.release();
        return Err(Error::Other(
            crate::error::Error::SourceShrank {
                path: spec.path.clone(),
                prev: format!("{} ({})", &id.hex()[..8], p.time),
                prev_files,
                kept: report.files,
                by: spec.exclusion.named(),
                unread: unread_listings(&report.problems),
            }
            .to_string(),
        ));
    }
    let mut tags = spec.tags;
    if !report.problems.is_empty() {
        tags.push(super::snapshot::PARTIAL_TAG.into());
    }
    let snap = Snapshot {
        time: super::go_time(start_time),
        parent: parent.as_ref().map(|(id, _)| *id),
        tree: root,
        paths: vec![path_str],
        hostname: host,
        username: crate::util::username(),
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        tags,
        excludes: spec.exclusion.excludes.clone(),
        program_version: Some(format!("snapring {}", env!("CARGO_PKG_VERSION"))),
        ..Default::default()
    };
    let group = super::forget::Group::of(&snap);
    // As restic does before it writes a snapshot: is the lock still ours? One lost
    // (removed by `restic unlock` or as stale while this process was stopped) may have
    // let an exclusive `prune` remove packs this snapshot needs. Then no snapshot: the
    // run fails and the next one stores again what is missing (its packs are indexed).
    crate::failpoint::hit("restic.backup.before_snapshot")
        .map_err(|e| Error::Other(format!("snapshot file in {}: {e}", repo.backend.location())))?;
    if spec.cancel.load(Ordering::Relaxed) {
        return stopped(report, lock);
    }
    lock.check()?;
    let (id, snap_len) = repo.save_json_len(super::backend::Kind::Snapshot, &snap)?;
    report.count_uploads(1, snap_len);
    // The snapshot is published: a lock file that cannot be removed (a key that may not
    // delete, a fault past the retries) is a warning, not a failure of the run.
    release_or_warn(lock, &mut report.warnings);
    if let Some(n) = spec.retain {
        // restic's `forget` takes an exclusive lock; a concurrent backup's shared lock
        // makes it wait for the next run rather than fail this one.
        let policy = super::forget::Policy {
            label: spec.label.clone(),
            keep_last: n.max(1),
            group: Some(group),
            before_remove: spec.before_forget,
            written: Some(id),
        };
        match super::lock::acquire(repo, true) {
            Ok(ex) => {
                report.retention = Some(super::forget::forget_locked(repo, &policy)?);
                release_or_warn(ex, &mut report.warnings);
            }
            Err(e) => report.retention_skipped = Some(e.to_string()),
        }
    }
    report.snapshot = id.hex();
    report.parent = parent.map(|(id, _)| id.hex());
    report.status = if report.problems.is_empty() {
        "complete"
    } else {
        "partial"
    }
    .into();
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A run failed on a full repository file system (ENOSPC writing a pack or an index):
/// the error, and what to do about the packs the run did write, which stay (indexed
/// where the index could still be written): the next run reuses them, a `prune` frees
/// them.
fn full_disk_hint(repo: &Repo, e: Error) -> Error {
    let full = matches!(&e, Error::Io { source, .. } if crate::fsx::is_disk_full(source));
    if !full {
        return e;
    }
    let at = repo.backend.location();
    let dest = if at.starts_with('/') {
        format!("file://{at}")
    } else {
        at
    };
    Error::Other(format!(
        "{e}: the repository's file system is full (or its quota used up). What this \
         run uploaded stays there, in no snapshot: free space and run the backup again \
         (it reuses that data), or run `snapring prune --dest {dest}` to remove it (prune \
         writes a new index first: it needs a little room too)"
    ))
}

/// Releases `lock`; a lock file that cannot be removed is left, with a warning saying
/// what it blocks and how it goes.
fn release_or_warn(lock: super::lock::Guard, warnings: &mut Vec<String>) {
    let id = lock.id();
    if let Err(e) = lock.release() {
        let file = id.map_or_else(|| "its file".into(), |id| format!("locks/{}", id.hex()));
        let w = format!(
            "the repository lock {file} could not be removed ({e}): it is left, and \
             restic's `check` and `prune` (and snapring's `prune`, `forget` and retention) \
             refuse to run on this repository until it is stale (on this host once this \
             process has ended, on others 30 minutes after it was last refreshed); \
             `restic unlock` then removes it, or delete it with credentials that may"
        );
        tracing::warn!("{w}");
        warnings.push(w);
    }
}

impl BackupReport {
    /// Sets the upload KPIs from `added` plus `files` more files of `bytes`.
    pub fn count_uploads(&mut self, files: u64, bytes: u64) {
        let a = &self.added;
        self.objects_written = a.packs + a.index_files + files;
        self.bytes_uploaded = a.bytes + a.index_bytes + bytes;
        self.dedup_ratio = if self.bytes_read == 0 {
            0.0
        } else {
            1.0 - (a.data_bytes_new as f64 / self.bytes_read as f64).min(1.0)
        };
    }
}

/// The empty-source guard of the hard-link store (invariant 4), for a repository: a
/// source that is empty, or of which `exclusion` leaves nothing, while the parent
/// snapshot (`parent`) holds entries at its path, is refused: a failed mount looks
/// exactly like this, and the retention that follows the snapshot would forget the
/// good ones. The same errors as the store's ([`crate::error::Error::EmptySource`],
/// [`crate::error::Error::ExcludedAll`]). The parent (`parent()`: none, no guard) is
/// found and its tree read only when the source looks empty. Also each shard worker's
/// (`shard::repository::work`), before it plans and again with its plan's parent.
pub(crate) fn refuse_empty(
    repo: &Repo,
    source: &Path,
    parent: impl FnOnce() -> Result<Option<(Id, Snapshot)>>,
    exclusion: &crate::exclude::Settings,
) -> Result<()> {
    use crate::fsx::b;
    let fd = crate::fsx::open_dir(source).map_err(io_err("open the source", source))?;
    let read = io_err("read the source", source);
    // (empty, left nothing, the tags a tagged root keeps): one entry read without
    // exclusions, the listing with them.
    let (empty, left_nothing, tags) = if exclusion.is_empty() {
        (
            !crate::fsx::dir_has_entries(b(&fd)).map_err(read)?,
            false,
            None,
        )
    } else {
        let names = crate::fsx::read_dir_names(b(&fd)).map_err(read)?;
        let excludes = exclusion.build().map_err(|e| Error::Other(e.to_string()))?;
        let root = crate::relpath::RelPath::root();
        let left_nothing = !names.is_empty() && excludes.leave_nothing_of(b(&fd), &root, &names);
        let tags = left_nothing
            .then(|| excludes.keep_in(b(&fd), &names))
            .flatten();
        (names.is_empty(), left_nothing, tags)
    };
    if !empty && !left_nothing {
        return Ok(());
    }
    let Some((id, parent)) = parent()? else {
        return Ok(());
    };
    let (id, parent) = (&id, &parent);
    let comps: Vec<&OsStr> = match parent.paths.as_slice() {
        [one] => Path::new(one).iter().skip(1).collect(),
        _ => return Ok(()),
    };
    // A root always tagged: the parent holds its tag alone, and this run loses nothing.
    let had_entries = match descend(repo, parent.tree, &comps)? {
        Some(t) => repo
            .read_tree(&t)?
            .nodes
            .iter()
            .any(|n| tags.as_ref().is_none_or(|k| !k.contains(&n.name_bytes()))),
        None => false,
    };
    if !had_entries {
        return Ok(());
    }
    let prev = format!("{} ({})", &id.hex()[..8], parent.time);
    let e = match left_nothing {
        false => crate::error::Error::EmptySource {
            path: source.to_path_buf(),
            prev,
        },
        true => crate::error::Error::ExcludedAll {
            path: source.to_path_buf(),
            prev,
            by: exclusion.named(),
        },
    };
    Err(Error::Other(e.to_string()))
}

/// Whether the tree `tree` holds a regular file anywhere below it (depth first; the
/// first found ends the search): what a run's `files` counts. The guard against a run
/// that keeps no file, here and in shard runs (`shard::repository`).
pub(crate) fn tree_has_file(repo: &Repo, tree: Id) -> Result<bool> {
    let mut todo = vec![tree];
    while let Some(t) = todo.pop() {
        for n in repo.read_tree(&t)?.nodes {
            match (n.kind.as_str(), n.subtree) {
                ("file", _) => return Ok(true),
                ("dir", Some(sub)) => todo.push(sub),
                _ => {}
            }
        }
    }
    Ok(false)
}

/// The regular files below the tree `tree`, counted until `stop_at` are found (the
/// count then returned is `stop_at`; `u64::MAX`: all of them). A tree that does not
/// read (a pack lost: the walk read its directory in full and said so) counts none:
/// the guard refuses on what it knows, and an unreadable parent is no reason to fail.
fn count_files(repo: &Repo, tree: Id, stop_at: u64) -> Result<u64> {
    let (mut todo, mut n) = (vec![tree], 0u64);
    while let Some(t) = todo.pop() {
        let nodes = match repo.read_tree(&t) {
            Ok(tree) => tree.nodes,
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            Err(_) => continue,
        };
        for node in nodes {
            match (node.kind.as_str(), node.subtree) {
                ("file", _) => n += 1,
                ("dir", Some(sub)) => todo.push(sub),
                _ => {}
            }
            if n >= stop_at {
                return Ok(n);
            }
        }
    }
    Ok(n)
}

/// The regular files of the parent's tree `tree` when a run that kept `kept` of them
/// is to be refused by the nearly-empty-source rule ([`crate::error::shrank`]): the
/// parent held at least 100 and more than ten times `kept`. The parent is counted only
/// as far as the rule needs (its trees, just read by the walk, come from the tree
/// cache), and in full only when it refuses (for the message).
pub(crate) fn shrunk_from(repo: &Repo, tree: Id, kept: u64) -> Result<Option<u64>> {
    shrunk(kept, |stop_at| count_files(repo, tree, stop_at))
}

/// [`shrunk_from`], with the parent's files counted by `count` (until the number it is
/// given are found, or all of them for `u64::MAX`).
fn shrunk(kept: u64, mut count: impl FnMut(u64) -> Result<u64>) -> Result<Option<u64>> {
    use crate::error::{SHRINK_FACTOR, SHRINK_MIN_PREV};
    let needed = kept
        .saturating_mul(SHRINK_FACTOR)
        .saturating_add(1)
        .max(SHRINK_MIN_PREV);
    if count(needed)? < needed {
        return Ok(None);
    }
    let all = count(u64::MAX)?;
    Ok(crate::error::shrank(all, kept).then_some(all))
}

/// The directories of a run's source that could not be listed (`unreadable`
/// problems of the action `list`): what a refusal of a run that kept (nearly) nothing
/// says of them ([`crate::error::Error::NoFilesLeft`], [`crate::error::Error::SourceShrank`]).
fn unread_listings(problems: &[EntryProblem]) -> u64 {
    problems
        .iter()
        .filter(|p| p.kind == "unreadable" && p.action == "list")
        .count() as u64
}

/// A backup's parent snapshot, if it has one.
type Parent = Option<(Id, Snapshot)>;

/// The newest snapshot of the same paths and host, preferring one of the same label;
/// with none of this host, the hint [`other_hosts_hint`] gives when other hosts have
/// snapshots of the path and label.
fn pick_parent(
    repo: &Repo,
    path: &str,
    host: &str,
    label: &str,
    host_given: bool,
) -> Result<(Parent, Option<String>)> {
    let all = snapshot::load_readable(repo)?;
    let (same, others): (Vec<_>, Vec<_>) = all
        .into_iter()
        .filter(|(_, s)| s.paths == [path])
        .partition(|(_, s)| s.hostname == host);
    let labelled = same
        .iter()
        .rev()
        .find(|(_, s)| s.tag("label") == Some(label));
    let parent = labelled.or(same.last()).cloned();
    let hint = match parent {
        Some(_) => None,
        None => other_hosts_hint(path, host, label, &others, host_given),
    };
    Ok((parent, hint))
}

/// A backup that finds no parent of its host while `others` (snapshots of the same
/// path, of other hosts) has some of its label: the source is likely the same one under
/// a hostname that changes each run (a container, a Kubernetes pod), which reads every
/// file again each run and makes each run its own retention group. Says so, and that
/// `--host NAME` makes the runs one lineage; when `host` was given (`host_given`), that
/// the earlier runs' name is the one to give.
pub(crate) fn other_hosts_hint(
    path: &str,
    host: &str,
    label: &str,
    others: &[(Id, Snapshot)],
    host_given: bool,
) -> Option<String> {
    let of_label: Vec<&Snapshot> = others
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.tag("label") == Some(label))
        .collect();
    // The newest by time (the list is in file order); restic's times are RFC 3339.
    let newest = of_label.iter().max_by(|a, b| {
        let t = |s: &Snapshot| chrono::DateTime::parse_from_rfc3339(&s.time).ok();
        t(a).cmp(&t(b))
    })?;
    let advice = match host_given {
        false => "If this is the same source under a hostname that changes (a container), \
                  give --host NAME (or the job's `host`) so runs share a parent and a \
                  retention group"
            .to_string(),
        true => format!(
            "If this is the same source, give the host name its earlier runs recorded \
             (--host {:?}, SNAPRING_HOST or the job's `host`) so runs share a parent and a \
             retention group",
            newest.hostname
        ),
    };
    Some(format!(
        "no earlier snapshot of host {host} for {path}; {} snapshot{} of the same path and \
         label ({label}) {} from other hosts (newest: host {}, {}). {advice}",
        of_label.len(),
        if of_label.len() == 1 { "" } else { "s" },
        if of_label.len() == 1 { "comes" } else { "come" },
        newest.hostname,
        newest.time,
    ))
}

/// The tree under `comps` (directory names from the root), if the snapshot has it.
pub fn descend(repo: &Repo, tree: Id, comps: &[&OsStr]) -> Result<Option<Id>> {
    if comps.is_empty() {
        return Ok(Some(tree));
    }
    Ok(dir_node(repo, tree, comps)?.and_then(|n| n.subtree))
}

/// The node of the directory at `comps` (not empty), if the snapshot has it.
pub fn dir_node(repo: &Repo, mut tree: Id, comps: &[&OsStr]) -> Result<Option<Node>> {
    let mut found = None;
    for c in comps {
        let t = Tree::from_blob(&repo.read_blob(BlobType::Tree, &tree)?, &tree)?;
        let hit = t
            .nodes
            .into_iter()
            .find(|n| n.kind == "dir" && n.name_bytes() == c.as_bytes());
        match hit {
            Some(n) if n.subtree.is_some() => {
                tree = n.subtree.expect("checked");
                found = Some(n);
            }
            _ => return Ok(None),
        }
    }
    Ok(found)
}

/// An entry's `lstat`, taken relative to its directory's descriptor (or of a path the
/// user named: the source's ancestors), with the accessors of `std::fs::Metadata`
/// the walk uses.
#[derive(Clone, Copy)]
pub struct Stat(rustix::fs::Stat);

#[allow(clippy::unnecessary_cast)]
impl Stat {
    /// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
    pub fn at(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<Stat> {
        Ok(Stat(rustix::fs::statat(
            dir,
            name,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )?))
    }
    /// `lstat(path)`.
    pub fn path(path: &Path) -> std::io::Result<Stat> {
        Ok(Stat(rustix::fs::lstat(path)?))
    }
    pub fn fd(fd: BorrowedFd<'_>) -> std::io::Result<Stat> {
        Ok(Stat(rustix::fs::fstat(fd)?))
    }
    pub fn size(&self) -> u64 {
        self.0.st_size as u64
    }
    pub fn mode(&self) -> u32 {
        self.0.st_mode as u32
    }
    pub fn is_dir(&self) -> bool {
        self.mode() & 0o170000 == 0o040000
    }
    pub fn dev(&self) -> u64 {
        self.0.st_dev as u64
    }
    pub fn ino(&self) -> u64 {
        self.0.st_ino as u64
    }
    pub fn nlink(&self) -> u64 {
        self.0.st_nlink as u64
    }
    pub fn rdev(&self) -> u64 {
        self.0.st_rdev as u64
    }
    pub fn uid(&self) -> u32 {
        self.0.st_uid as u32
    }
    pub fn gid(&self) -> u32 {
        self.0.st_gid as u32
    }
    pub fn mtime(&self) -> i64 {
        self.0.st_mtime as i64
    }
    pub fn mtime_nsec(&self) -> i64 {
        self.0.st_mtime_nsec as i64
    }
    pub fn atime(&self) -> i64 {
        self.0.st_atime as i64
    }
    pub fn atime_nsec(&self) -> i64 {
        self.0.st_atime_nsec as i64
    }
    pub fn ctime(&self) -> i64 {
        self.0.st_ctime as i64
    }
    pub fn ctime_nsec(&self) -> i64 {
        self.0.st_ctime_nsec as i64
    }
}

/// A node's metadata from `lstat`.
fn base_node(name: &[u8], md: &Stat, names: &Names) -> Node {
    let (kind, mode) = go_mode(md.mode());
    let t = |s, ns| super::go_time(super::local_time(s, ns as u32));
    Node {
        name: encode_name(name),
        kind: kind.into(),
        mode,
        mtime: t(md.mtime(), md.mtime_nsec()),
        atime: t(md.atime(), md.atime_nsec()),
        ctime: t(md.ctime(), md.ctime_nsec()),
        uid: md.uid(),
        gid: md.gid(),
        user: names.user(md.uid()),
        group: names.group(md.gid()),
        inode: md.ino(),
        device_id: md.dev(),
        // restic records the link count of these types only.
        links: if matches!(kind, "file" | "symlink" | "dev" | "chardev") {
            md.nlink()
        } else {
            0
        },
        ..Default::default()
    }
}

/// User and group names by id, from /etc/passwd and /etc/group (as restic records
/// them; an id without a name gets none).
#[derive(Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    pub fn load() -> Names {
        let read = |p: &str| -> HashMap<u32, String> {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            text.lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    Some((f.get(2)?.parse().ok()?, f.first()?.to_string()))
                })
                .collect()
        };
        Names {
            users: read("/etc/passwd"),
            groups: read("/etc/group"),
        }
    }

    fn user(&self, uid: u32) -> String {
        self.users.get(&uid).cloned().unwrap_or_default()
    }

    fn group(&self, gid: u32) -> String {
        self.groups.get(&gid).cloned().unwrap_or_default()
    }
}

/// The extended attributes of `name` in `dir` (`p`, for messages), not following a
/// symlink, by its `/proc/self/fd/DIR/NAME` path ([`crate::fsx::XattrTarget::At`]):
/// never through a directory swapped for a symlink since `dir` was opened.
/// Also the names that are not UTF-8 ([`xattrs_of`]).
fn xattrs_at(dir: BorrowedFd<'_>, name: &[u8], p: &Path) -> Result<Xattrs> {
    xattrs_of(&crate::fsx::proc_path(dir, name), p)
}

/// The extended attributes of `p` (a path the user named: the source's ancestors).
/// A name that is not UTF-8 is warned about (stored as [`xattrs_of`] says).
fn xattrs(p: &Path) -> Result<Vec<ExtendedAttribute>> {
    let (list, not_utf8) = xattrs_of(p.as_os_str().as_bytes(), p)?;
    for n in &not_utf8 {
        tracing::warn!("{}: {}", crate::relpath::shown(p), not_utf8_message(n));
    }
    Ok(list)
}

/// An entry's extended attributes as a node records them, and the names among them
/// that are not UTF-8 (recorded with U+FFFD in their place).
type Xattrs = (Vec<ExtendedAttribute>, Vec<Vec<u8>>);

/// What the run says of an extended attribute whose name (`name`) is not UTF-8.
fn not_utf8_message(name: &[u8]) -> String {
    format!(
        "extended attribute name \"{}\" is not UTF-8: restic's format cannot keep it (names are JSON strings); stored as {:?}, which a restore sets under that name",
        crate::relpath::shown_bytes(name),
        String::from_utf8_lossy(name)
    )
}

/// The extended attributes of `at` (`p`, for messages; not following a symlink) in
/// the order the file system lists them, as restic records them (so both write the
/// same tree); none where the file system has none. restic's format keeps a name as a
/// JSON string: one that is not UTF-8 is stored with U+FFFD for its invalid bytes, as
/// restic stores it, and returned among the second list, for the run to report.
fn xattrs_of(at: &[u8], p: &Path) -> Result<Xattrs> {
    use base64::Engine;
    let unsupported = |e: rustix::io::Errno| e == rustix::io::Errno::NOTSUP;
    let mut list = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(at, &mut list[..]) {
        Ok(n) => n,
        Err(e) if unsupported(e) => return Ok(Default::default()),
        Err(e) => return Err(io_err("list the extended attributes of", p)(e.into())),
    };
    let mut out = Vec::new();
    let mut not_utf8 = Vec::new();
    let mut val = vec![0u8; 64 * 1024];
    for name in list[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let k = match rustix::fs::lgetxattr(at, name, &mut val[..]) {
            Ok(k) => k,
            // Removed since the listing.
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(io_err("read an extended attribute of", p)(e.into())),
        };
        if std::str::from_utf8(name).is_err() {
            not_utf8.push(name.to_vec());
        }
        out.push(ExtendedAttribute {
            name: String::from_utf8_lossy(name).into_owned(),
            value: base64::engine::general_purpose::STANDARD.encode(&val[..k]),
        });
    }
    Ok((out, not_utf8))
}

/// The access time a node records. By default its modification time, as `restic
/// backup` records without `--with-atime`: access times move on every read, so a
/// recorded one makes the trees depend on who read the source last, and a tree with
/// the time twice compresses better (on the `small` benchmark preset the incremental's
/// trees were 1.4% larger with real access times than restic's, docs/performance.md).
/// With `with_atime`, the real one, kept as below.
fn record_atime(with_atime: bool, node: &mut Node, prev: Option<&Node>) {
    if with_atime {
        keep_recorded_atime(node, prev);
    } else {
        node.atime.clone_from(&node.mtime);
    }
}

/// An entry of the parent snapshot's kind, inode, mtime and ctime keeps the access time
/// recorded there. Reading moves access times and changes nothing else (not the ctime):
/// an NFS or EFS server moves them on every read, whatever flags the client opens with,
/// and so does any other reader of the source. Recording each new one would make every
/// directory's tree new on every run (all trees uploaded again). An entry that did
/// change since gets the access time of now.
fn keep_recorded_atime(node: &mut Node, prev: Option<&Node>) {
    let same = |a: &str, b: &str| {
        super::parse_time(a)
            .ok()
            .is_some_and(|t| super::parse_time(b).ok() == Some(t))
    };
    if let Some(p) = prev
        && p.kind == node.kind
        && p.inode == node.inode
        && same(&p.mtime, &node.mtime)
        && same(&p.ctime, &node.ctime)
    {
        node.atime.clone_from(&p.atime);
    }
}

/// What the names of one inode share, as their nodes record it: kind, size, times but
/// the access time, mode, owner, device number, extended attributes and content (or
/// link target). Two names of one `(device, inode)` that differ here were not read as
/// one inode ([`Run::hard_link`]).
fn inode_signature(n: &Node) -> blake3::Hash {
    let key = (
        &n.kind,
        n.size,
        &n.mtime,
        &n.ctime,
        n.mode,
        (n.uid, n.gid),
        n.device,
        &n.extended_attributes,
        &n.content,
        (&n.linktarget, &n.linktarget_raw),
    );
    blake3::hash(&serde_json::to_vec(&key).expect("a node serialises"))
}

/// The compare key: the parent's node is this file, unchanged.
fn unchanged(prev: &Node, md: &Stat, now: &Node) -> bool {
    prev.kind == "file"
        && prev.size == md.size()
        && prev.inode == md.ino()
        && super::parse_time(&prev.mtime).ok() == super::parse_time(&now.mtime).ok()
        && super::parse_time(&prev.ctime).ok() == super::parse_time(&now.ctime).ok()
}

/// One backup's walk: the `traverse::Visitor` and what its workers share.
struct Run<'a> {
    /// The directory the walk reads (problems are named relative to it).
    root: PathBuf,
    /// `root` already open (a shard unit's directory, [`UnitSpec::walk_fd`]), taken by
    /// the root's `open`.
    root_fd: Mutex<Option<OwnedFd>>,
    /// A copy of the root's descriptor, kept for the whole walk, and the root's
    /// `(st_dev, st_ino)` when it was opened: whether the source itself still answers
    /// when an entry says ENOTCONN ([`Run::source_lost`]), and whether the root is still
    /// there when the walk ends ([`Run::root_gone`]).
    root_probe: Mutex<Option<(OwnedFd, (u64, u64))>>,
    repo: &'a Repo,
    packer: &'a Packer,
    tables: &'a Tables,
    names: Names,
    /// Set by SIGINT/SIGTERM.
    cancel: Arc<AtomicBool>,
    /// The walk's own stop flag: set on SIGINT/SIGTERM or a repository error.
    stop: &'a AtomicBool,
    /// The repository error that ended the run (a source error only skips its entry).
    fatal: Mutex<Option<Error>>,
    reuse: Option<Mutex<&'a mut (dyn Reuse + 'static)>>,
    counts: Counts,
    /// Big files being read ([`BIG_READS`] at most).
    big_reads: crate::concurrency::Slots,
    /// Threads the run may still start to pack big files' chunks ([`Run::chunks_at_once`]):
    /// the run's `--jobs` in all, whatever the number of big files read at once.
    chunk_threads: AtomicUsize,
    problems: Mutex<Vec<EntryProblem>>,
    /// The source's tree, once its root directory is finished.
    root_tree: Mutex<Option<Id>>,
    /// The parent snapshot's whole tree (from `/`), for the nodes wrapping the source.
    parent_root: Option<Id>,
    /// Record real access times (else the mtime, as restic's default).
    with_atime: bool,
    /// A shard unit's walk (`unit`): the names of the root it takes; the root's nodes
    /// go to `root_nodes`, not into a tree.
    root_names: Option<&'a NameFilter<'a>>,
    root_nodes: Mutex<Option<Vec<Node>>>,
    /// The parent snapshot's trees that did not read ([`BackupReport::warnings`]).
    warnings: Mutex<Vec<String>>,
    /// The parent snapshot (for the warnings).
    parent_id: Option<Id>,
    /// The parent snapshot's trees down to the walk's root do not read: what it held
    /// below is unknown, not absent (for the message of a directory that cannot be
    /// read, [`DirState::prev_unread`]).
    parent_unread: bool,
    /// Stay on the root's file system (`one_file_system`).
    one_fs: Option<crate::traverse::OneFs>,
    /// A repository on a local path: its directory's `(st_dev, st_ino)`, taken once. The
    /// walk does not enter it where the source holds it through another mount (a bind
    /// mount, an NFS export's subdirectory mounted apart), which the path check cannot
    /// see: it is left out, a problem `store_in_source`.
    fence: Option<crate::traverse::Fence>,
    /// A shard unit's directory, escaped, relative to the source (empty: the source's
    /// root, or not a unit): the warnings name directories from the source's root.
    unit_dir: String,
    /// What is left out (`Spec::exclusion`); `None`: nothing.
    excludes: Option<&'a crate::exclude::Excludes>,
    /// A shard unit's directory relative to the source (the root otherwise): patterns
    /// with a `/` match paths from the source's root.
    unit_rel: crate::relpath::RelPath,
    /// The inodes met with several links, by `(device, inode)`: the first name recorded
    /// and what its node says of the inode ([`inode_signature`]). A later name whose
    /// node says otherwise is recorded as no hard link of it ([`Run::hard_link`]).
    links: Mutex<HashMap<(u64, u64), LinkSeen>>,
    /// The parent snapshot's regular files in the trees of it the walk read
    /// ([`Run::parent_nodes`]), and the subtrees of those it has not read (yet): by id,
    /// how many times met (identical directories share one). After the walk, the
    /// subtrees left are those of directories gone, excluded or not walked into: the
    /// shrink guard counts the parent's files from both ([`ParentCount`]), without
    /// reading again the trees the walk read.
    parent_count: Mutex<ParentCount>,
}

/// What a walk counted of its parent snapshot's files ([`Run::parent_count`]).
#[derive(Default)]
struct ParentCount {
    files: u64,
    left: HashMap<Id, u64>,
}

impl ParentCount {
    /// The parent's tree `id` was read by the walk (`nodes`), or did not read
    /// (`None`: the guard counts none of it, as [`count_files`] counts a tree that does
    /// not read).
    fn read(&mut self, id: Id, nodes: Option<&[Node]>) {
        if let Some(n) = self.left.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.left.remove(&id);
            }
        }
        for node in nodes.unwrap_or_default() {
            match (node.kind.as_str(), node.subtree) {
                ("file", _) => self.files += 1,
                ("dir", Some(sub)) => *self.left.entry(sub).or_default() += 1,
                _ => {}
            }
        }
    }

    /// The parent's regular files, counted until `stop_at` are found (the count then
    /// returned is at least `stop_at`): those the walk saw, then the subtrees it did
    /// not read, read now.
    fn count(&self, repo: &Repo, stop_at: u64) -> Result<u64> {
        let mut n = self.files;
        for (tree, times) in &self.left {
            if n >= stop_at {
                break;
            }
            let below = count_files(repo, *tree, stop_at.saturating_sub(n).div_ceil(*times))?;
            n = n.saturating_add(below.saturating_mul(*times));
        }
        Ok(n)
    }
}

/// An inode of several links as a walk met it ([`Run::links`]).
struct LinkSeen {
    /// Its first name recorded, and what that name's node says of the inode.
    first: PathBuf,
    sig: blake3::Hash,
    /// A shard unit's walk ([`Run::root_names`]): every name recorded as this inode
    /// (the first included), for finalize's check across units ([`UnitLink`]).
    names: Vec<PathBuf>,
    /// The link count its nodes recorded (the highest).
    links: u64,
}

/// An inode of several links a shard unit recorded with fewer names than its link
/// count: its other names may be in other units, whose walks recorded them on their
/// own. Finalize compares the units' records of one inode and records the names of a
/// unit whose nodes say otherwise than the first unit's as no hard link (`inode: 0`,
/// `links: 1`), as a single-node run's walk does for a name within it
/// ([`Run::hard_link`]): restic's restore would otherwise give them the first name's
/// content (`shard::repository`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnitLink {
    pub device: u64,
    pub inode: u64,
    /// What the nodes of its names say of the inode ([`inode_signature`], hex).
    pub sig: String,
    /// Its names the unit recorded as this inode, escaped: relative to the walk's root
    /// from [`unit`], to the source's once in a commit.
    pub names: Vec<String>,
}

/// Warnings a run keeps, at most (the log has every one).
const MAX_WARNINGS: usize = 100;

/// The line that stands for the warnings past [`MAX_WARNINGS`].
const MORE_WARNINGS: &str = "more trees of the parent snapshot cannot be read (see the log)";

/// Adds `w` to a run's warnings `ws`: once (a shard run's units, and its workers, may
/// meet the same lost tree), and past [`MAX_WARNINGS`] only as one last line saying
/// there are more (one pack lost can hold thousands of trees: the first ones say
/// enough). `w` may be that line itself (a shard unit's list was cut).
pub fn add_warning(ws: &mut Vec<String>, w: String) {
    let cut = ws.last().is_some_and(|l| l == MORE_WARNINGS);
    let kept = ws.len() - usize::from(cut);
    if ws[..kept].contains(&w) {
        return;
    }
    if w == MORE_WARNINGS || kept >= MAX_WARNINGS {
        if !cut {
            ws.push(MORE_WARNINGS.into());
        }
    } else {
        ws.insert(kept, w);
    }
}

/// The warning for a tree of the parent snapshot `parent` (of the directory `dir`,
/// escaped, relative to the source) that could not be read.
pub fn unreadable_parent(parent: Option<&Id>, dir: &str, e: &Error) -> String {
    let snapshot = match parent {
        Some(id) => format!("the parent snapshot {}", &id.hex()[..8]),
        None => "the parent snapshot".to_string(),
    };
    format!(
        "{snapshot}'s tree of {dir} cannot be read ({e}); that directory was read in \
         full; the repository may be damaged (`snapring verify`, `restic check`)"
    )
}

#[derive(Default)]
struct Counts {
    files: AtomicU64,
    dirs: AtomicU64,
    files_unchanged: AtomicU64,
    files_read: AtomicU64,
    bytes_read: AtomicU64,
    bytes_total: AtomicU64,
    /// Entries kept that are neither files nor directories (symlinks, devices, fifos):
    /// with `files`, what the store counts as its run's files (the guard against a
    /// run that keeps none).
    others: AtomicU64,
}

/// A directory being walked.
struct DirState {
    path: PathBuf,
    /// The directory, open: its entries are read relative to it.
    fd: OwnedFd,
    /// The parent snapshot's nodes of this directory, by name.
    prev: HashMap<Vec<u8>, Node>,
    /// The parent snapshot's tree of this directory, or of one above it, does not read
    /// (`prev` is empty).
    prev_unread: bool,
    /// This directory's own node, for its parent's tree (none for the root); its
    /// subtree is set when the directory finishes.
    node: Mutex<Option<Node>>,
    /// The nodes of the children done so far, in no order.
    nodes: Mutex<Vec<Node>>,
}

/// What a queued subdirectory carries: its node (from `lstat`) and the parent
/// snapshot's tree of the same directory.
struct Sub {
    node: Option<Node>,
    parent_tree: Option<Id>,
}

/// Why an entry was not recorded.
enum Fail {
    /// A problem with this entry only: it is left out, the run goes on as `partial`.
    Entry(Error),
    /// The run stops (a repository error or a signal, already recorded).
    Stop,
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Entry(e)
    }
}

type Visited = std::result::Result<Option<(Node, Option<Option<Id>>)>, Fail>;

impl crate::traverse::Visitor for Run<'_> {
    type State = DirState;
    type Item = Vec<u8>;
    type Sub = Sub;

    fn open(
        &self,
        parent: Option<&crate::traverse::Dir<DirState>>,
        name: &[u8],
        rel: &crate::relpath::RelPath,
        sub: Sub,
    ) -> crate::traverse::Opened<DirState, Vec<u8>> {
        use crate::traverse::Opened;
        if self.cancelled() {
            return Opened::Skip;
        }
        let path = match parent {
            Some(p) => p.state.path.join(OsStr::from_bytes(name)),
            None => self.root.clone(),
        };
        let fd = match parent {
            // The root, by the path the user named (a symlink there is followed),
            // unless the caller opened it.
            None => match lock(&self.root_fd).take() {
                Some(fd) => Ok(fd),
                None => open_noatime(&path, rustix::fs::OFlags::DIRECTORY),
            },
            // Tests swap a subdirectory for a symlink here, after its listing.
            Some(p) => match crate::failpoint::hit("restic.backup.open_dir") {
                Ok(()) => {
                    let id = sub.node.as_ref().map(|n| (n.device_id, n.inode));
                    crate::fsx::open_same_dir(
                        p.state.fd.as_fd(),
                        name,
                        id.unwrap_or_default(),
                        true,
                    )
                }
                Err(e) => Err(e),
            },
        };
        let listed = fd
            .map_err(io_err("list", &path))
            .and_then(|fd| list(fd.as_fd(), &path).map(|n| (fd, n)));
        let (fd, mut names) = match listed {
            Ok((fd, mut n)) => {
                if parent.is_none()
                    && let (Ok(probe), Ok(md)) = (fd.try_clone(), Stat::fd(fd.as_fd()))
                {
                    *lock(&self.root_probe) = Some((probe, (md.dev(), md.ino())));
                }
                // A tagged directory keeps only its tag, decided from the whole
                // listing (a unit's too, before its range): `crate::exclude`.
                if let Some(ex) = self.excludes
                    && let Some(keep) = ex.keep_by(&n, |tag, header| {
                        crate::exclude::has_header(fd.as_fd(), tag, header)
                    })
                {
                    tracing::info!(
                        "{}: tagged (exclude_caches / exclude_if_present): contents left out",
                        crate::relpath::shown(&path)
                    );
                    n.retain(|name| keep.contains(name));
                }
                if let (None, Some(take)) = (parent, self.root_names) {
                    n.retain(|name| take(name));
                }
                (fd, n)
            }
            // A unit's directory gone since the plan: the unit has nothing.
            Err(Error::Io { source, .. })
                if parent.is_none()
                    && self.root_names.is_some()
                    && source.kind() == std::io::ErrorKind::NotFound =>
            {
                *lock(&self.root_nodes) = Some(Vec::new());
                return Opened::Skip;
            }
            // The source itself must be readable.
            Err(e) if parent.is_none() => {
                self.fail(e);
                return Opened::Skip;
            }
            // Gone, or replaced (by a symlink: not followed) since its listing.
            Err(e @ Error::Io { .. }) if is_not_found(&e) => {
                self.problem(&path, "vanished", e);
                return Opened::Skip;
            }
            // There but not to be opened or listed (permission denied, an I/O error, a
            // stale handle): the parent snapshot's entries of it are kept.
            Err(e) => {
                let p = parent.expect("the root's failure is handled above");
                self.keep_unreadable(p, rel, &path, sub, e);
                return Opened::Skip;
            }
        };
        if let Some(r) = &self.reuse {
            for (at, kind, e) in lock(r).check_listing(&path, &mut names) {
                self.problem(&at, kind, e);
            }
        }
        let (prev, unread) = self.parent_nodes(&path, sub.parent_tree);
        // Below a directory whose previous tree did not read (none of its children has
        // a node to descend from), or at a root whose parent's trees down to it did not,
        // the previous snapshot's entries are unknown too, not absent.
        let above = match parent {
            Some(p) => p.state.prev_unread,
            None => self.parent_unread,
        };
        let state = DirState {
            path,
            fd,
            prev,
            prev_unread: unread || (sub.parent_tree.is_none() && above),
            node: Mutex::new(sub.node),
            nodes: Mutex::new(Vec::with_capacity(names.len())),
        };
        Opened::Dir(state, names)
    }

    fn visit(
        &self,
        dir: &Arc<crate::traverse::Dir<DirState>>,
        name: Vec<u8>,
    ) -> crate::traverse::Step<Sub> {
        use crate::traverse::Step;
        if self.cancelled() {
            return Step::Quit;
        }
        let p = dir.state.path.join(OsStr::from_bytes(&name));
        let at = dir.state.fd.as_fd();
        if self.excluded(&dir.rel, at, &name) {
            return Step::Next;
        }
        match self.entry(at, &p, &name, dir.state.prev.get(&name)) {
            Ok(None) => Step::Next,
            Ok(Some((node, None))) => {
                lock(&dir.state.nodes).push(node);
                Step::Next
            }
            Ok(Some((node, Some(parent_tree)))) => {
                // The one comparison per directory this check costs (no system call).
                if let Some(f) = &self.fence
                    && f.is(node.device_id, node.inode)
                {
                    self.store_in_source(&p);
                    return Step::Next;
                }
                Step::Descend(
                    name,
                    Sub {
                        node: Some(node),
                        parent_tree,
                    },
                )
            }
            Err(Fail::Stop) => Step::Quit,
            Err(Fail::Entry(e)) => {
                // Gone, or replaced by something that is not a file, since its `lstat`.
                let kind = match &e {
                    Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                        "vanished"
                    }
                    _ => "unreadable",
                };
                self.problem(&p, kind, e);
                Step::Next
            }
        }
    }

    fn one_fs(&self) -> Option<&crate::traverse::OneFs> {
        self.one_fs.as_ref()
    }

    fn device(&self, sub: &Sub) -> Option<u64> {
        sub.node.as_ref().map(|n| n.device_id)
    }

    /// A directory on another file system: its node (from its `lstat`, with its
    /// extended attributes, as restic records a mount point with `--one-file-system`)
    /// with an empty tree.
    fn mount_point(
        &self,
        dir: &Arc<crate::traverse::Dir<DirState>>,
        _name: Vec<u8>,
        rel: &crate::relpath::RelPath,
        sub: Sub,
    ) {
        tracing::info!("{rel}: another file system (one_file_system): kept empty");
        let Some(mut node) = sub.node else {
            return;
        };
        // A failure has stopped the walk already (`save`).
        let Ok(id) = self.save(BlobType::Tree, &Tree { nodes: Vec::new() }.to_blob()) else {
            return;
        };
        self.counts.dirs.fetch_add(1, Ordering::Relaxed);
        node.subtree = Some(id);
        lock(&dir.state.nodes).push(node);
    }

    fn finish(&self, dir: &crate::traverse::Dir<DirState>) {
        // In the order workers finished them; `to_blob` sorts them by name, as restic's
        // trees are.
        let nodes = std::mem::take(&mut *lock(&dir.state.nodes));
        if dir.parent.is_none() && self.root_names.is_some() {
            *lock(&self.root_nodes) = Some(nodes);
            return;
        }
        // A failure has stopped the walk already (`save`).
        let Ok(id) = self.save(BlobType::Tree, &Tree { nodes }.to_blob()) else {
            return;
        };
        self.counts.dirs.fetch_add(1, Ordering::Relaxed);
        match (lock(&dir.state.node).take(), &dir.parent) {
            (Some(mut node), Some(parent)) => {
                node.subtree = Some(id);
                lock(&parent.state.nodes).push(node);
            }
            _ => *lock(&self.root_tree) = Some(id),
        }
    }
}

/// An I/O error of a name that is not there (ENOENT, or no longer of its type).
fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A directory's entry names, sorted. Directories are opened with `O_NOATIME` where
/// permitted, as files are: a backup leaves access times alone, so the next one finds
/// the same nodes (restic's trees record them) and uploads no tree for an unchanged
/// directory.
fn list(fd: BorrowedFd<'_>, path: &Path) -> Result<Vec<Vec<u8>>> {
    let mut names = crate::fsx::list_dir(fd).map_err(io_err("list", path))?;
    names.sort();
    // A name listed twice (an NFS server's readdir cookies gone wrong) is one entry: a
    // tree with two nodes of one name is not a valid restic tree.
    let before = names.len();
    names.dedup();
    if names.len() != before {
        tracing::warn!(
            "{}: the listing gave {} name(s) more than once (a file system's readdir error); each is backed up once",
            crate::relpath::shown(path),
            before - names.len()
        );
    }
    Ok(names)
}

/// Opens `path` read-only with `extra` flags, with `O_NOATIME` where the caller may (it
/// owns the file, or has CAP_FOWNER), else without.
fn open_noatime(path: &Path, extra: rustix::fs::OFlags) -> std::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags, open};
    let base = OFlags::RDONLY | OFlags::CLOEXEC | extra;
    match open(path, base | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => Ok(open(path, base, Mode::empty())?),
        r => Ok(r?),
    }
}

/// Files at least this big are read a few at a time ([`BIG_READS`]): each holds a read
/// buffer and a chunk of up to 8 MiB while it is cut.
const BIG_FILE: u64 = 1024 * 1024;
/// Big files read at once, at most.
const BIG_READS: usize = 8;
/// Files at least this big have their chunks packed by [`CHUNK_WORKERS_N`] threads
/// ([`Run::chunks_at_once`]): a few chunks (512 KiB to 8 MiB each, 1.5 MiB on average).
const PIPELINE_FILE: u64 = 2 * 1024 * 1024;
/// Threads packing one big file's chunks, at most: the machine's cores (at least 2, at
/// most 4): a big file read alone uses them all. They come out of the run's budget of
/// `--jobs` threads ([`Run::chunk_threads`]): big files read at once share it, and one
/// that gets none packs its chunks on the reading thread.
static CHUNK_WORKERS_N: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4)
});
/// Chunk threads taken from [`Run::chunk_threads`], given back when dropped.
struct ChunkThreads<'a>(usize, &'a AtomicUsize);

impl Drop for ChunkThreads<'_> {
    fn drop(&mut self) {
        self.1.fetch_add(self.0, Ordering::AcqRel);
    }
}

/// Reads of a file that changes while it is read, at most (the store's retries).
const READ_TRIES: u32 = 3;

impl<'a> Run<'a> {
    /// A walk of `root` into `repo` with nothing reused, no parent root, access times
    /// as restic's default, a whole tree (not a unit): the callers set what differs.
    fn new(
        root: &Path,
        repo: &'a Repo,
        packer: &'a Packer,
        tables: &'a Tables,
        cancel: &Arc<AtomicBool>,
        stop: &'a AtomicBool,
    ) -> Run<'a> {
        // Throttled S3 retries stop waiting when the run is cancelled.
        repo.backend.watch_cancel(cancel);
        let fence = repo.backend.local_root().and_then(|r| {
            let m = std::fs::metadata(r).ok()?;
            Some(crate::traverse::Fence::new(m.dev(), m.ino()))
        });
        Run {
            root: root.to_path_buf(),
            root_fd: Mutex::default(),
            root_probe: Mutex::default(),
            repo,
            packer,
            tables,
            names: Names::load(),
            cancel: cancel.clone(),
            stop,
            fatal: Mutex::default(),
            reuse: None,
            counts: Counts::default(),
            big_reads: Default::default(),
            chunk_threads: AtomicUsize::new(0),
            problems: Mutex::default(),
            root_tree: Mutex::default(),
            parent_root: None,
            with_atime: false,
            root_names: None,
            root_nodes: Mutex::default(),
            warnings: Mutex::default(),
            parent_id: None,
            parent_unread: false,
            one_fs: None,
            fence,
            unit_dir: String::new(),
            excludes: None,
            unit_rel: crate::relpath::RelPath::root(),
            links: Mutex::default(),
            parent_count: Mutex::default(),
        }
    }

    /// Whether `name` in the directory at `rel` (from the walk's root; open as `dir`)
    /// matches an exclude pattern. Its type is asked (one `lstat`) only when a
    /// directories-only pattern (`cache/`) is all that matches.
    fn excluded(&self, rel: &crate::relpath::RelPath, dir: BorrowedFd<'_>, name: &[u8]) -> bool {
        let Some(ex) = self.excludes else {
            return false;
        };
        let rel = match self.unit_rel.is_root() {
            true => rel.join(name),
            false => self.full_rel(rel).join(name),
        };
        ex.is_excluded(&rel, false)
            || (ex.is_excluded(&rel, true) && Stat::at(dir, name).is_ok_and(|m| m.is_dir()))
    }

    /// The source's tree, or why the walk ended without one.
    fn outcome(&self) -> Result<Id> {
        if let Some(e) = lock(&self.fatal).take() {
            return Err(e);
        }
        match *lock(&self.root_tree) {
            Some(id) if !self.stop.load(Ordering::Relaxed) => Ok(id),
            _ => Err(Error::Cancelled),
        }
    }

    fn into_report(self) -> BackupReport {
        let c = &self.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut problems = self
            .problems
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        problems.sort_by(|a, b| a.path.cmp(&b.path));
        let mp = self.one_fs.map(|fs| fs.skipped()).unwrap_or_default();
        BackupReport {
            mount_points_skipped: mp.count,
            mount_points: mp.first.iter().map(|p| p.escaped()).collect(),
            files: get(&c.files),
            dirs: get(&c.dirs),
            files_unchanged: get(&c.files_unchanged),
            files_read: get(&c.files_read),
            bytes_read: get(&c.bytes_read),
            bytes_total: get(&c.bytes_total),
            problems,
            warnings: self
                .warnings
                .into_inner()
                .unwrap_or_else(|e| e.into_inner()),
            ..Default::default()
        }
    }

    /// Whether SIGINT/SIGTERM came (or the walk stopped); stops the walk if so.
    fn cancelled(&self) -> bool {
        if self.cancel.load(Ordering::Relaxed) {
            self.stop.store(true, Ordering::Relaxed);
        }
        self.stop.load(Ordering::Relaxed)
    }

    /// Records a repository error and stops the walk (the first error is kept).
    fn fail(&self, e: Error) -> Fail {
        lock(&self.fatal).get_or_insert(e);
        self.stop.store(true, Ordering::Relaxed);
        Fail::Stop
    }

    /// The repository, met at `p` of the source through another mount: not walked
    /// into, not in the snapshot; a warning and a problem `store_in_source`.
    fn store_in_source(&self, p: &Path) {
        let repo = self.repo.backend.location();
        tracing::warn!(
            "{}: this directory of the source is the repository {repo} (the same directory, reached through another mount): left out of the snapshot; exclude it or move the repository out of the source",
            crate::relpath::shown(p)
        );
        let msg = format!(
            "it is the repository {repo}, reached through another mount: left out of the snapshot; exclude this path or move the repository out of the source"
        );
        self.problem(
            p,
            "store_in_source",
            io_err("walk into directory", p)(std::io::Error::other(msg)),
        );
    }

    /// The extended attributes of `name` in `dir` (`p`) as the node records them; a
    /// name restic's format cannot keep (not UTF-8) is a `metadata` problem of the entry.
    fn xattrs(&self, dir: BorrowedFd<'_>, name: &[u8], p: &Path) -> Result<Vec<ExtendedAttribute>> {
        let (list, not_utf8) = xattrs_at(dir, name, p)?;
        for n in &not_utf8 {
            self.problem(
                p,
                "metadata",
                io_err("record an extended attribute of", p)(std::io::Error::other(
                    not_utf8_message(n),
                )),
            );
        }
        Ok(list)
    }

    /// Whether `e` (the source's) says the source's file system is gone (ENOTCONN: a
    /// FUSE server that died, a mount torn away) while the root's kept descriptor does
    /// not answer either: then the run fails ([`Error::SourceLost`], invariant 4, as
    /// the store's walk decides) rather than leave the entry out and write a `partial`
    /// snapshot missing most of the tree. A dead mount inside the source (a user's
    /// sshfs in /home) answers ENOTCONN for its mount point while the root answers:
    /// that entry's problem, as any unreadable entry, not the run's.
    fn source_lost(&self, e: &Error) -> bool {
        let Error::Io {
            action,
            path,
            source,
        } = e
        else {
            return false;
        };
        if !crate::fsx::errno_is(source, rustix::io::Errno::NOTCONN) {
            return false;
        }
        if let Some((fd, _)) = lock(&self.root_probe).as_ref()
            && rustix::fs::fstat(fd).is_ok()
        {
            return false;
        }
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        let rel = match crate::relpath::escape(rel.as_os_str().as_bytes()) {
            r if r.is_empty() => ".".to_string(),
            r => r,
        };
        self.fail(Error::SourceLost {
            root: self.root.clone(),
            detail: format!("{action} {rel}: {source}"),
        });
        true
    }

    /// Whether the walk's root, as opened, is gone now that the walk ended (`Some`:
    /// what was found; [`crate::fsx::root_gone`]). `None` also when it was never open.
    fn root_gone(&self) -> Option<String> {
        let id = lock(&self.root_probe).as_ref().map(|(_, id)| *id)?;
        crate::fsx::root_gone(&self.root, id)
    }

    /// Records a problem with the entry at `p` (the error's own path where it has one);
    /// one that says the source itself went away fails the run instead
    /// ([`Run::source_lost`]).
    fn problem(&self, p: &Path, kind: &str, e: Error) {
        if self.source_lost(&e) {
            return;
        }
        let (at, action, error) = match e {
            Error::Io {
                action,
                path,
                source,
            } => (path, action.to_string(), source.to_string()),
            other => (p.to_path_buf(), "back up".to_string(), other.to_string()),
        };
        let rel = at.strip_prefix(&self.root).unwrap_or(&at);
        let path = match crate::relpath::escape(rel.as_os_str().as_bytes()) {
            // The walk's root itself.
            p if p.is_empty() => ".".to_string(),
            p => p,
        };
        lock(&self.problems).push(EntryProblem {
            path,
            kind: kind.into(),
            action,
            error,
        });
    }

    /// Packs a blob; a failure is the repository's, so it ends the run.
    fn save(&self, kind: BlobType, plain: &[u8]) -> std::result::Result<Id, Fail> {
        self.packer
            .save(self.repo, kind, plain)
            .map_err(|e| self.fail(e))
    }

    /// The parent snapshot's nodes of the directory at `path`, by name; none (so every
    /// file is read) when its tree does not read, with a warning (`true`: so).
    fn parent_nodes(&self, path: &Path, parent: Option<Id>) -> (HashMap<Vec<u8>, Node>, bool) {
        let Some(id) = parent else {
            return (HashMap::new(), false);
        };
        match self
            .repo
            .read_blob(BlobType::Tree, &id)
            .and_then(|b| Tree::from_blob(&b, &id))
        {
            Ok(t) => {
                lock(&self.parent_count).read(id, Some(&t.nodes));
                (
                    t.nodes.into_iter().map(|n| (n.name_bytes(), n)).collect(),
                    false,
                )
            }
            Err(e) => {
                lock(&self.parent_count).read(id, None);
                let rel = path.strip_prefix(&self.root).unwrap_or(path);
                let rel = crate::relpath::escape(rel.as_os_str().as_bytes());
                let dir = match (self.unit_dir.as_str(), rel.is_empty()) {
                    ("", true) => ".".to_string(),
                    ("", false) => rel,
                    (unit, true) => unit.to_string(),
                    (unit, false) => format!("{unit}/{rel}"),
                };
                let w = unreadable_parent(self.parent_id.as_ref(), &dir, &e);
                tracing::warn!("{w}");
                add_warning(&mut lock(&self.warnings), w);
                (HashMap::new(), true)
            }
        }
    }

    /// The subdirectory at `path` (`rel` from the walk's root, in `parent`) could not
    /// be opened or listed (`e`, not gone): its node (this run's `lstat`) with the
    /// parent snapshot's entries of it (`sub.parent_tree`), as the store's walk keeps
    /// an unreadable directory's previous entries and a shard unit its directory's
    /// ([`super::keep`]: today's exclusions, entries lost left out, those of several
    /// links unlinked, nothing written that is already stored), with an `unreadable`
    /// problem that says so. Without a previous tree of it (a first run, a directory
    /// new since, a tree that does not read) it is left out, and the problem says it is
    /// missing. Not in a `copy` ([`Reuse`]): its snapshot is the store's, not the
    /// parent's.
    fn keep_unreadable(
        &self,
        parent: &crate::traverse::Dir<DirState>,
        rel: &crate::relpath::RelPath,
        path: &Path,
        sub: Sub,
        e: Error,
    ) {
        if self.source_lost(&e) {
            return;
        }
        let (action, error) = match e {
            Error::Io { action, source, .. } => (action, source.to_string()),
            other => ("list", other.to_string()),
        };
        let said = |error: String| {
            self.problem(
                path,
                "unreadable",
                io_err(action, path)(std::io::Error::other(error)),
            );
        };
        let missing = |why: &str| {
            said(super::keep::missing_message(
                &error,
                "the directory is",
                why,
            ));
        };
        if self.reuse.is_some() {
            return missing("a copy keeps nothing of another snapshot");
        }
        let (Some(mut node), Some(tree)) = (sub.node, sub.parent_tree) else {
            return missing(match () {
                _ if self.parent_id.is_none() => {
                    "there is no previous snapshot to keep its entries from"
                }
                _ if parent.state.prev_unread => {
                    "the previous snapshot's tree of a directory holding it does not read"
                }
                _ => "the previous snapshot does not hold it",
            });
        };
        let keep = super::keep::Keep {
            repo: self.repo,
            packer: self.packer,
            excludes: self.excludes,
        };
        let prev = match keep.tree(&tree) {
            Ok(t) => t,
            Err(u) => {
                return missing(&format!(
                    "the previous snapshot's tree of it does not read either ({u})"
                ));
            }
        };
        let mut kept = super::keep::Kept::default();
        let nodes = match keep.nodes(&self.full_rel(rel), prev.nodes, &mut kept) {
            Ok(n) => n,
            Err(e) => {
                self.fail(e);
                return;
            }
        };
        let n = nodes.len();
        let Ok(id) = self.save(BlobType::Tree, &Tree { nodes }.to_blob()) else {
            return;
        };
        let c = &self.counts;
        c.files.fetch_add(kept.files, Ordering::Relaxed);
        c.dirs.fetch_add(kept.dirs + 1, Ordering::Relaxed);
        c.bytes_total.fetch_add(kept.bytes, Ordering::Relaxed);
        c.others.fetch_add(kept.others, Ordering::Relaxed);
        let whose = match &self.parent_id {
            Some(id) => format!(" ({})", &id.hex()[..8]),
            None => String::new(),
        };
        said(super::keep::kept_message(&error, n, &whose, kept.lost));
        node.subtree = Some(id);
        lock(&parent.state.nodes).push(node);
    }

    /// `rel` (from the walk's root) relative to the source: a unit's walk is rooted at
    /// its directory.
    fn full_rel(&self, rel: &crate::relpath::RelPath) -> crate::relpath::RelPath {
        let mut full = self.unit_rel.clone();
        for c in rel
            .as_bytes()
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
        {
            full = full.join(c);
        }
        full
    }

    /// One entry's node, `name` in `dir` (`p`), and for a directory the parent
    /// snapshot's tree of it (the directory is walked next, its subtree set when it
    /// finishes).
    fn entry(&self, dir: BorrowedFd<'_>, p: &Path, name: &[u8], prev: Option<&Node>) -> Visited {
        let md = match Stat::at(dir, name) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.problem(p, "vanished", io_err("stat", p)(e));
                return Ok(None);
            }
            Err(e) => return Err(io_err("stat", p)(e).into()),
        };
        let mut node = base_node(name, &md, &self.names);
        record_atime(self.with_atime, &mut node, prev);
        node.extended_attributes = self.xattrs(dir, name, p)?;
        let target = match node.kind.as_str() {
            "symlink" => {
                Some(crate::fsx::read_link_at(dir, name).map_err(io_err("read the link", p))?)
            }
            _ => None,
        };
        let Some(mut differs) = self.checked(p, &md, &mut node, prev, target.as_deref()) else {
            return Ok(None);
        };
        match node.kind.as_str() {
            "dir" => {
                if let Some(e) = differs {
                    self.problem(p, "metadata", e);
                }
                let parent = prev.filter(|n| n.kind == "dir").and_then(|n| n.subtree);
                return Ok(Some((node, Some(parent))));
            }
            "file" => {
                let same = |n: &Node| match &self.reuse {
                    Some(r) => lock(r).unchanged(p, n, &md),
                    None => unchanged(n, &md, &node),
                };
                // The index first: a file whose parent blobs are gone from it (lost
                // packs, `repair index`) is read, and not counted as reused by the
                // copy's `Reuse` (its `reused_by_*` add up to `files_unchanged`).
                match prev.filter(|n| self.all_indexed(n) && same(n)) {
                    Some(n) => {
                        node.content = n.content.clone();
                        node.size = n.size;
                        self.counts.files_unchanged.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        let want = self.reuse.as_ref().and_then(|r| lock(r).expected(p));
                        // Read again while it changes under the read (a torn copy),
                        // as the store does: the node then describes what was read.
                        // After the last read the node keeps the attributes from before
                        // it, as restic records them (and as the store does): the file
                        // no longer has them, so the next run reads it again. With
                        // those of after the read, the next run's compare key matched
                        // and the torn content was carried into every later snapshot.
                        let mut was = md;
                        let mut tries = 1;
                        let (content, size) = loop {
                            let (content, size, changed) = self.file(dir, name, p, &was, want)?;
                            let Some(now) = changed else {
                                break (content, size);
                            };
                            if tries == READ_TRIES {
                                self.problem(
                                    p,
                                    "changed_during_copy",
                                    io_err("read", p)(std::io::Error::other(format!(
                                        "it kept changing while it was read, {READ_TRIES} times: the snapshot's copy may be torn"
                                    ))),
                                );
                                break (content, size);
                            }
                            node = base_node(name, &now, &self.names);
                            record_atime(self.with_atime, &mut node, prev);
                            node.extended_attributes = self.xattrs(dir, name, p)?;
                            // Its blobs stay unreferenced (a prune removes them).
                            match self.checked(p, &now, &mut node, prev, None) {
                                Some(d) => differs = d,
                                None => return Ok(None),
                            }
                            tries += 1;
                            was = now;
                        };
                        node.content = Some(content);
                        node.size = size;
                    }
                }
                // Only the files the snapshot holds: one left out (unreadable, or not
                // the content its manifest records) is a problem, not one of them.
                self.counts.files.fetch_add(1, Ordering::Relaxed);
                self.counts
                    .bytes_total
                    .fetch_add(node.size, Ordering::Relaxed);
            }
            "symlink" => {
                if let Some(t) = &target {
                    node.set_link_target(t);
                }
            }
            "dev" | "chardev" => node.device = md.rdev(),
            _ => {}
        }
        if node.kind != "file" {
            self.counts.others.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(e) = differs {
            self.problem(p, "metadata", e);
        }
        self.hard_link(p, &mut node);
        Ok(Some((node, None)))
    }

    /// A name of an inode with several links (`node`, at `p`, complete): the first
    /// recorded of its `(device, inode)` is kept in [`Run::links`]; a later one whose
    /// node records another inode than the first's (another size, times, mode, owner,
    /// extended attributes or content: a file changed between the reads of its two
    /// names, or a file system giving two files one inode number) is recorded with no
    /// inode (`inode: 0`, `links: 1`, as for a file system without inode numbers), so
    /// that no restore gives it the first name's content: snapring's and restic's link
    /// the names of one `(device, inode)` with more than one link, and restic 0.14's
    /// also removes a name with `links: 1` whose inode another name has (its second
    /// pass "links" it, but only removes it: the file was missing from the restore).
    /// A problem `metadata` names both, as the store's walk does ("join hard link").
    /// The next run reads the file again (its inode is not the one recorded).
    fn hard_link(&self, p: &Path, node: &mut Node) {
        if node.links < 2 || node.inode == 0 {
            return;
        }
        // Tests change the file here, between the reads of its names.
        let _ = crate::failpoint::hit("restic.backup.hard_link");
        let sig = inode_signature(node);
        let unit = self.root_names.is_some();
        let first = {
            let mut links = lock(&self.links);
            match links.get_mut(&(node.device_id, node.inode)) {
                None => {
                    let seen = LinkSeen {
                        first: p.to_path_buf(),
                        sig,
                        names: if unit {
                            vec![p.to_path_buf()]
                        } else {
                            Vec::new()
                        },
                        links: node.links,
                    };
                    links.insert((node.device_id, node.inode), seen);
                    return;
                }
                Some(seen) if seen.sig == sig => {
                    if unit {
                        seen.names.push(p.to_path_buf());
                    }
                    seen.links = seen.links.max(node.links);
                    return;
                }
                Some(seen) => seen.first.clone(),
            }
        };
        let rel = |q: &Path| {
            crate::relpath::escape(
                q.strip_prefix(&self.root)
                    .unwrap_or(q)
                    .as_os_str()
                    .as_bytes(),
            )
        };
        let first = rel(&first);
        tracing::warn!(
            "{}: reports the inode number of {first} (device {}, inode {}) but not its size, times, mode, owner or content: backed up on its own, not as a hard link to it",
            crate::relpath::shown(p),
            node.device_id,
            node.inode
        );
        self.problem(
            p,
            "metadata",
            io_err("join hard link", p)(std::io::Error::other(format!(
                "reports the inode of {first} (device {}, inode {}) with another size, times, mode, owner or content (a file system reusing inode numbers, or a file changed during the backup): backed up on its own, not linked to {first}",
                node.device_id, node.inode
            ))),
        );
        node.inode = 0;
        node.links = 1;
    }

    /// A unit walk's inodes of several links recorded with fewer names than their link
    /// count ([`UnitLink`]), in `(device, inode)` order; their names escaped, relative
    /// to the walk's root.
    fn unit_links(&self) -> Vec<UnitLink> {
        let links = lock(&self.links);
        let mut v: Vec<UnitLink> = links
            .iter()
            .filter(|(_, s)| !s.names.is_empty() && (s.names.len() as u64) < s.links)
            .map(|(&(device, inode), s)| {
                let mut names: Vec<String> = s
                    .names
                    .iter()
                    .map(|q| {
                        crate::relpath::escape(
                            q.strip_prefix(&self.root)
                                .unwrap_or(q)
                                .as_os_str()
                                .as_bytes(),
                        )
                    })
                    .collect();
                names.sort();
                UnitLink {
                    device,
                    inode,
                    sig: s.sig.to_hex().to_string(),
                    names,
                }
            })
            .collect();
        v.sort_by_key(|l| (l.device, l.inode));
        v
    }

    /// The entry checked against what it must be ([`Reuse::check_entry`]): `None`
    /// when it is left out (a problem recorded); where only its metadata differs,
    /// `node` given the metadata it must have and the problem (`metadata`) to record
    /// once the entry is in the snapshot (a file whose content then fails its check
    /// is one problem, not two).
    fn checked(
        &self,
        p: &Path,
        md: &Stat,
        node: &mut Node,
        prev: Option<&Node>,
        target: Option<&[u8]>,
    ) -> Option<Option<Error>> {
        let Some(r) = &self.reuse else {
            return Some(None);
        };
        let check = lock(r).check_entry(p, md, target);
        match check {
            Check::Good => Some(None),
            Check::LeaveOut(kind, e) => {
                self.problem(p, kind, e);
                None
            }
            Check::Recorded {
                perm,
                uid,
                gid,
                mtime: (sec, nsec),
                error,
            } => {
                node.mode = go_mode((md.mode() & 0o170000) | perm).1;
                node.uid = uid;
                node.gid = gid;
                node.user = self.names.user(uid);
                node.group = self.names.group(gid);
                node.mtime = super::go_time(super::local_time(sec, nsec));
                record_atime(self.with_atime, node, prev);
                Some(Some(error))
            }
        }
    }

    fn all_indexed(&self, n: &Node) -> bool {
        n.content
            .iter()
            .flatten()
            .all(|id| self.repo.index.contains(BlobType::Data, id))
    }

    /// Reads, chunks and packs a file whose `lstat` was `was`; its blob ids, the bytes
    /// read and, if the file changed while it was read (size, times or inode differ
    /// from `was` after the read), its attributes after the read. With `want`, the
    /// content's BLAKE3 hash must be it, else `Fail::Entry`.
    fn file(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        p: &Path,
        was: &Stat,
        want: Option<blake3::Hash>,
    ) -> std::result::Result<(Vec<Id>, u64, Option<Stat>), Fail> {
        let len = was.size();
        let _slot = (len >= BIG_FILE).then(|| self.big_reads.take(BIG_READS));
        // The name may have been replaced since its `lstat` (a source changing under the
        // backup): `fsx::open_read_at`, as the store's walk: `O_NONBLOCK` keeps a fifo's
        // open from waiting for a writer (the run hung for ever, holding its lock), and
        // what was opened must be a regular file, else a device would be read as the
        // file's content.
        let _ = crate::failpoint::hit("restic.backup.before_open");
        let fd = crate::fsx::open_read_at(dir, name).map_err(io_err("open", p))?;
        let mut f = std::fs::File::from(fd);
        let mut hasher = want.map(|_| blake3::Hasher::new());
        let (ids, total) = if len >= PIPELINE_FILE {
            self.chunks_at_once(&mut f, p, len, &mut hasher)?
        } else {
            let mut ids = Vec::new();
            let total = self.cut(&mut f, p, len, &mut hasher, &mut |chunk| {
                ids.push(self.save(BlobType::Data, chunk)?);
                Ok(())
            })?;
            (ids, total)
        };
        self.counts.files_read.fetch_add(1, Ordering::Relaxed);
        self.counts.bytes_read.fetch_add(total, Ordering::Relaxed);
        let now = Stat::fd(f.as_fd()).map_err(io_err("stat", p))?;
        let changed = (now.size() != was.size()
            || now.ino() != was.ino()
            || (now.mtime(), now.mtime_nsec()) != (was.mtime(), was.mtime_nsec())
            || (now.ctime(), now.ctime_nsec()) != (was.ctime(), was.ctime_nsec()))
            .then_some(now);
        if changed.is_some() {
            return Ok((ids, total, changed));
        }
        if let (Some(h), Some(want)) = (hasher, want)
            && h.finalize() != want
        {
            // Its blobs stay unreferenced (a prune removes them).
            return Err(Fail::Entry(io_err("check against the manifest", p)(
                std::io::Error::other(
                    "its content does not match the checksum recorded at backup (bit rot or \
                     tampering in the store): left out of the copy; run `snapring verify`",
                ),
            )));
        }
        Ok((ids, total, None))
    }

    /// Reads the file to its end and cuts it with the repository's chunker, giving
    /// each chunk to `chunk` in file order (which may take it away); the bytes read.
    /// `hasher` sees every byte.
    fn cut(
        &self,
        f: &mut std::fs::File,
        p: &Path,
        len: u64,
        hasher: &mut Option<blake3::Hasher>,
        chunk: &mut dyn FnMut(&mut Vec<u8>) -> std::result::Result<(), Fail>,
    ) -> std::result::Result<u64, Fail> {
        let mut chunker = Chunker::new(self.tables);
        // A small file gets a buffer of its size (one more byte to see the end).
        let mut buf = vec![0u8; (len as usize).saturating_add(1).clamp(4096, 512 * 1024)];
        let mut cur: Vec<u8> = Vec::new();
        // A chunk taken away (`chunks_at_once`) leaves `cur` empty: a big file's next
        // one gets room for most chunks at once rather than growing by doublings.
        let grow = |cur: &mut Vec<u8>| {
            if cur.capacity() == 0 && len >= PIPELINE_FILE {
                cur.reserve(2 << 20);
            }
        };
        let mut total = 0u64;
        loop {
            if self.cancelled() {
                return Err(Fail::Stop);
            }
            let n = f.read(&mut buf).map_err(io_err("read", p))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if let Some(h) = hasher {
                h.update(&buf[..n]);
            }
            let _ = crate::failpoint::hit("restic.backup.read");
            let mut rest = &buf[..n];
            while let Some(at) = chunker.next_cut(rest) {
                grow(&mut cur);
                cur.extend_from_slice(&rest[..at]);
                chunk(&mut cur)?;
                cur.clear();
                rest = &rest[at..];
            }
            grow(&mut cur);
            cur.extend_from_slice(rest);
        }
        if !cur.is_empty() {
            chunk(&mut cur)?;
        }
        Ok(total)
    }

    /// [`Run::cut`] with the chunks packed by [`CHUNK_WORKERS_N`] threads while the file
    /// is read on: hashing, compressing and sealing a chunk takes longer than cutting
    /// it, so one thread per big file kept one core busy (a 2 GiB file took 1.5 times
    /// restic's time). At most one chunk waits for a thread, besides those being packed
    /// and the one being cut. The ids come back in file order.
    fn chunks_at_once(
        &self,
        f: &mut std::fs::File,
        p: &Path,
        len: u64,
        hasher: &mut Option<blake3::Hasher>,
    ) -> std::result::Result<(Vec<Id>, u64), Fail> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(1);
        // Held by the workers only: should they all end (a panic), a send fails rather
        // than wait for ever.
        let rx = Arc::new(Mutex::new(rx));
        let ids: Mutex<Vec<Option<Id>>> = Mutex::default();
        let threads = self.take_chunk_threads(*CHUNK_WORKERS_N);
        let read = std::thread::scope(|s| {
            for _ in 0..threads.0 {
                let rx = rx.clone();
                let ids = &ids;
                s.spawn(move || {
                    loop {
                        let next = lock(&rx).recv();
                        let Ok((i, chunk)) = next else { break };
                        // After a repository error or a signal the rest is only drained
                        // (its ids stay unset: `Fail::Stop`).
                        if self.cancelled() {
                            continue;
                        }
                        if let Ok(id) = self.save(BlobType::Data, &chunk) {
                            let mut v = lock(ids);
                            if v.len() <= i {
                                v.resize(i + 1, None);
                            }
                            v[i] = Some(id);
                        }
                    }
                });
            }
            drop(rx);
            let mut n = 0usize;
            let read = self.cut(f, p, len, hasher, &mut |chunk| {
                // The threads all busy and one chunk waiting (or no thread): this one
                // is packed here, the reading thread the last of the file's packers.
                let sent = match threads.0 {
                    0 => Err(std::mem::take(chunk)),
                    _ => match tx.try_send((n, std::mem::take(chunk))) {
                        Ok(()) => Ok(()),
                        Err(std::sync::mpsc::TrySendError::Full((_, c))) => Err(c),
                        Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                            return Err(Fail::Stop);
                        }
                    },
                };
                if let Err(c) = sent {
                    let id = self.save(BlobType::Data, &c)?;
                    let mut v = lock(&ids);
                    if v.len() <= n {
                        v.resize(n + 1, None);
                    }
                    v[n] = Some(id);
                }
                n += 1;
                Ok(())
            });
            drop(tx);
            read.map(|total| (total, n))
        });
        let (total, n) = read?;
        let ids = ids.into_inner().unwrap_or_else(|e| e.into_inner());
        // A chunk left unsaved: a repository error (recorded by `save`) or a signal.
        if ids.len() != n || ids.iter().any(|id| id.is_none()) {
            return Err(Fail::Stop);
        }
        Ok((ids.into_iter().flatten().collect(), total))
    }

    /// Up to `want` of the run's chunk threads ([`Run::chunk_threads`]), given back
    /// when the result is dropped; none when all are in use.
    fn take_chunk_threads(&self, want: usize) -> ChunkThreads<'_> {
        let mut got = 0;
        let _ = self
            .chunk_threads
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                got = free.min(want);
                Some(free - got)
            });
        ChunkThreads(got, &self.chunk_threads)
    }

    /// Wraps the source's tree in one tree per ancestor directory, up to `/`, as
    /// restic records `restic backup /a/b` (a tree with `a`, holding `b`).
    fn wrap(&self, comps: &[&OsStr], tree: Id) -> Result<Id> {
        let w = Wrap {
            repo: self.repo,
            packer: self.packer,
            names: &self.names,
            with_atime: self.with_atime,
            parent_root: self.parent_root,
        };
        // The walk's root is checked as its entries are ([`Reuse::check_entry`]); it
        // cannot be left out.
        w.wrap_checked(comps, tree, |md, node| {
            if let Some(Some(e)) = self.checked(&self.root, md, node, None, None) {
                self.problem(&self.root, "metadata", e);
            }
        })
    }
}

/// What wrapping a source's tree in its ancestors needs.
pub struct Wrap<'a> {
    pub repo: &'a Repo,
    pub packer: &'a Packer,
    pub names: &'a Names,
    pub with_atime: bool,
    /// The parent snapshot's whole tree, for the access times it recorded.
    pub parent_root: Option<Id>,
}

impl Wrap<'_> {
    /// Wraps the source's tree in one tree per ancestor directory (`comps`, from the
    /// root), up to `/`, as restic records `restic backup /a/b` (a tree with `a`,
    /// holding `b`).
    pub fn wrap(&self, comps: &[&OsStr], tree: Id) -> Result<Id> {
        self.wrap_checked(comps, tree, |_, _| {})
    }

    /// [`Wrap::wrap`], the node of the last of `comps` (the source's own directory)
    /// passed to `root` with its `lstat` before it is saved.
    pub fn wrap_checked(
        &self,
        comps: &[&OsStr],
        mut tree: Id,
        mut root: impl FnMut(&Stat, &mut Node),
    ) -> Result<Id> {
        for i in (0..comps.len()).rev() {
            let dir: PathBuf = std::iter::once(OsStr::new("/"))
                .chain(comps[..=i].iter().copied())
                .collect();
            let md = Stat::path(&dir).map_err(io_err("stat", &dir))?;
            let mut node = base_node(comps[i].as_bytes(), &md, self.names);
            let prev = match self.parent_root {
                // An unreadable parent was warned about when the walk began.
                Some(parent) if self.with_atime => {
                    dir_node(self.repo, parent, &comps[..=i]).unwrap_or(None)
                }
                _ => None,
            };
            record_atime(self.with_atime, &mut node, prev.as_ref());
            if i + 1 == comps.len() {
                root(&md, &mut node);
            }
            node.subtree = Some(tree);
            let t = Tree { nodes: vec![node] };
            tree = self.packer.save(self.repo, BlobType::Tree, &t.to_blob())?;
        }
        Ok(tree)
    }
}

/// What [`dir_node_at`] found at a spine directory's path.
pub enum DirAt {
    /// The directory's node, and the error reading its extended attributes (the node
    /// has none then): a `metadata` problem, not a reason to leave the directory out.
    Node(Box<Node>, Option<Error>),
    /// Gone (ENOENT, ENOTDIR), or another kind of entry now (a file, a symlink).
    Gone(Error),
}

/// The node of the directory at `path`, named `name`, from its `lstat` and extended
/// attributes, its access time recorded as its modification time (restic's default);
/// its subtree is the caller's to set (a shard run's spine directories). Any `lstat`
/// error but "gone" (permission denied, an I/O error, a stale handle) is an error:
/// the directory is there, and leaving it out would drop what its units backed up.
pub fn dir_node_at(path: &Path, name: &[u8], names: &Names) -> Result<DirAt> {
    let md = match Stat::path(path) {
        Ok(md) => md,
        Err(e)
            if [rustix::io::Errno::NOENT, rustix::io::Errno::NOTDIR]
                .iter()
                .any(|n| e.raw_os_error() == Some(n.raw_os_error())) =>
        {
            return Ok(DirAt::Gone(io_err("stat", path)(e)));
        }
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    if !md.is_dir() {
        return Ok(DirAt::Gone(io_err("stat", path)(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "no longer a directory: not the directory the plan cut",
        ))));
    }
    let mut node = base_node(name, &md, names);
    record_atime(false, &mut node, None);
    let failed = match xattrs(path) {
        Ok(x) => {
            node.extended_attributes = x;
            None
        }
        Err(e) => Some(e),
    };
    Ok(DirAt::Node(Box::new(node), failed))
}

/// Which names of a directory a walk takes.
pub type NameFilter<'f> = dyn Fn(&[u8]) -> bool + Sync + 'f;

/// One unit of a shard run (`shard::repository`): where it reads, which names of that
/// directory it takes, the parent snapshot's tree of that directory.
pub struct UnitSpec<'a> {
    pub walk_root: PathBuf,
    /// `walk_root` already open (beneath the source's root, no symlink followed); else
    /// the walk opens it by its path.
    pub walk_fd: Option<OwnedFd>,
    /// The unit's directory, escaped, relative to the source (empty: the source's
    /// root), for the warnings.
    pub dir: String,
    pub names: &'a NameFilter<'a>,
    /// The parent snapshot (for the warnings), and its tree of the unit's directory.
    pub parent: Option<Id>,
    pub parent_tree: Option<Id>,
    /// The parent snapshot's trees down to the unit's directory do not read (so
    /// `parent_tree` is none): what the parent held below it is unknown, not absent.
    pub parent_unread: bool,
    pub cancel: Arc<AtomicBool>,
    /// File-system calls in flight (resolved: not 0).
    pub jobs: usize,
    /// Shared by the units a worker builds at once: together they run at most this
    /// gate's permits of tasks.
    pub gate: Option<&'a crate::pool::Gate>,
    /// Blobs stored by this process's earlier units, which this one skips; its own are
    /// added once its packs and index are written.
    pub known: Arc<std::sync::RwLock<Index>>,
    /// The run's lock: no index file once it is lost ([`Packer::under`]).
    pub lock: Option<super::lock::Watch>,
    /// `one_file_system`: the device of the source's root (not the unit directory's:
    /// `shard::repository` builds nothing of a unit whose directory is on another).
    pub one_fs: Option<u64>,
    /// What the run leaves out (`Spec::exclusion`); `None`: nothing.
    pub excludes: Option<&'a crate::exclude::Excludes>,
    /// The unit's directory relative to the source (patterns with `/` match from the
    /// source's root).
    pub rel: crate::relpath::RelPath,
}

/// A unit backed up: the nodes of the names it took (each directory's subtree saved),
/// its packs and index written; the counts and problems in `report`.
pub struct UnitBuilt {
    pub nodes: Vec<Node>,
    pub report: BackupReport,
    /// The inodes of several links whose names may be in other units as well.
    pub links: Vec<UnitLink>,
}

/// Backs one unit up with the same walk as a whole snapshot's, except that the unit's
/// directory is not a tree of its own: finalize makes one tree of it from every unit's
/// nodes. The packs and the index are written before this returns, so a commit that
/// names the nodes points only at indexed blobs. `Error::Cancelled` on SIGINT/SIGTERM.
pub fn unit(repo: &Repo, spec: UnitSpec<'_>) -> Result<UnitBuilt> {
    let started = std::time::Instant::now();
    let tables = repo.tables();
    let packer = match spec.lock {
        Some(l) => Packer::sharing(spec.known.clone()).under(l),
        None => Packer::sharing(spec.known.clone()),
    };
    let stop = AtomicBool::new(false);
    let run = Run {
        root_names: Some(spec.names),
        parent_id: spec.parent,
        parent_unread: spec.parent_unread,
        unit_dir: spec.dir.clone(),
        one_fs: spec.one_fs.map(crate::traverse::OneFs::new),
        excludes: spec.excludes,
        unit_rel: spec.rel.clone(),
        root_fd: Mutex::new(spec.walk_fd),
        chunk_threads: AtomicUsize::new(spec.jobs.max(1)),
        ..Run::new(&spec.walk_root, repo, &packer, &tables, &spec.cancel, &stop)
    };
    let root_sub = Sub {
        node: None,
        parent_tree: spec.parent_tree,
    };
    crate::traverse::walk_at(
        &run,
        root_sub,
        crate::relpath::RelPath::root(),
        spec.jobs.max(1),
        spec.gate,
        &stop,
    );
    let walked = match lock(&run.fatal).take() {
        Some(e) => Err(e),
        None => match lock(&run.root_nodes).take() {
            Some(nodes) if !stop.load(Ordering::Relaxed) => Ok(nodes),
            _ => Err(Error::Cancelled),
        },
    };
    let links = run.unit_links();
    let mut report = run.into_report();
    // After a failure too: what reached the repository is indexed, for the next run.
    let closed = packer.close(repo, walked.is_ok()).map(|(new, stats)| {
        let mut k = spec.known.write().unwrap_or_else(|e| e.into_inner());
        k.absorb(new);
        stats
    });
    match walked {
        Ok(nodes) => {
            report.added = closed?;
            report.count_uploads(0, 0);
            report.duration_seconds = started.elapsed().as_secs_f64();
            Ok(UnitBuilt {
                nodes,
                report,
                links,
            })
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The warning names an attribute whose name is not UTF-8 as a path is named in a
    /// message (`relpath::shown`: `\xE9`; it said `%E9`), and what restic's format keeps.
    #[test]
    fn an_attribute_name_not_utf8_is_named_as_paths_are() {
        let m = not_utf8_message(b"user.n\xe9%");
        assert!(
            m.starts_with("extended attribute name \"user.n\\xE9%\" is not UTF-8"),
            "{m}"
        );
        assert!(m.contains("stored as \"user.n\u{FFFD}%\""), "{m}");
    }
}
