//! `snapring restore --dest file:///… SNAPSHOT --to DIR`: a whole snapshot of a restic
//! repository (written by snapring or by restic) into a new or empty directory. A
//! snapshot of one path restores that path's contents into DIR (restic nests the
//! path's ancestors; they are skipped); one of several paths restores from the root.
//! Files, directories, symlinks, FIFOs and device nodes, with mode, owner (when root),
//! and times; hard links (same inode and device, more than one link) are made again.
//! One thread walks the trees and creates every entry (files empty, and closed), handing
//! them in batches ([`BATCH_FILES`]) to [`FILL_THREADS`] threads that fetch a batch's
//! blobs by pack (nearby blobs of a pack in one ranged read, [`Span`]; batches in
//! flight at once, as a repository on S3 needs) and write them, each file opened again
//! only while it is written, its metadata after its contents. Directory
//! metadata is applied last, deepest first. The cancel flag (SIGINT/SIGTERM) stops the
//! walk and the fills between blobs: what is written stays, the rest is not begun.
//! Reads the repository, writes only under DIR.
//!
//! Only under DIR, whoever else can write there: DIR is opened once and every entry is
//! made relative to its directory's descriptor (`mkdirat`, `openat` with `O_EXCL |
//! O_NOFOLLOW`, `symlinkat`, `mknodat`), each directory opened `O_NOFOLLOW` right after
//! it is made and checked to be the one made; metadata goes through the entry's own
//! descriptor, or by name without following a symlink. What is reached again later (a
//! hard link's first name, a directory's metadata, a file removed) is reopened beneath
//! DIR (`openat2` `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`). A user who owns DIR and
//! swaps a restored directory for a symlink to a directory of root's made root's
//! restore write there, by whole paths.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustix::fs::{AtFlags, Mode, Timespec, Timestamps};
use serde::Serialize;

use crate::fsx::{self, XattrTarget, b};

use super::pack::BlobType;
use super::pack::Entry;
use super::repo::{Repo, Span};
use super::snapshot;
use super::tree::{Node, Tree, unix_perm};
use super::{Error, Id, Result, corrupt, io_err};

#[derive(Debug, Default, Serialize)]
pub struct RestoreReport {
    pub snapshot: String,
    /// Not UTF-8: `to_raw` beside it holds the bytes (`crate::localpath`).
    #[serde(flatten, serialize_with = "crate::localpath::to::serialize")]
    pub to: PathBuf,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub bytes: u64,
    pub duration_seconds: f64,
    /// Files whose content could not be read from the repository (damaged or lost
    /// data: not restored, their half-written file removed) or whose metadata could
    /// not be set (restored, the metadata named): the restore goes on and is
    /// `partial`, as restic's goes on.
    pub problems: Vec<crate::report::Problem>,
    /// Files an earlier, stopped restore into `to` had finished, found whole and left
    /// as they are, and their bytes (counted in `files` and `bytes` too; `--json` gives
    /// them as the store's restore gives the files a rerun found identical:
    /// `skipped_identical`, not in `files_restored` and `bytes_restored`).
    pub kept: u64,
    pub kept_bytes: u64,
    /// Why the restore stopped before it was done (the target ran full or could not be
    /// written, the repository could not be read, a signal): what was written stays,
    /// with the record of unfinished work in `to` ([`Record`]), and the same restore
    /// run again finishes it. `None`: the restore was done (with `problems`, perhaps).
    #[serde(skip)]
    pub stopped: Option<Error>,
    /// When stopped: the files begun and not finished (target paths, escaped), named in
    /// the record too.
    pub unfinished: Vec<String>,
    /// When stopped: the record of unfinished work.
    #[serde(
        flatten,
        serialize_with = "crate::localpath::record::nullable::serialize"
    )]
    pub record: Option<PathBuf>,
}

/// The record of a repository restore's unfinished work, in the target root: the
/// store restore's (`.snapring-restore-unfinished`, its name and first line, see
/// `restore::marker_name`), holding one line `r <snapshot> <flat> <path>` naming the
/// restore, then, once it stopped, a line `f <path>` for each file it had begun and not
/// finished. Made when the restore starts into an empty directory; removed once it
/// has walked the whole snapshot. A restore into a directory that is not empty goes on
/// only when the directory holds the record of the same restore (same snapshot, same
/// `--path`, same `--flat`): a rerun, which keeps every file found whole (size, mode
/// and modification time as the snapshot's: a file's time is set last, after its
/// contents; and its content hashing to its blobs' ids, as its times do not prove the
/// data reached the disk) unless the record names it unfinished or it has other hard
/// links, and writes everything else again.
struct Record {
    name: Vec<u8>,
    /// A record of this restore was there: this is a rerun.
    rerun: bool,
    /// The files it names unfinished (escaped target paths).
    unfinished: std::collections::HashSet<String>,
}

impl Record {
    /// The record of the restore `what` (its `r` line) in `to` (`fd`), into which it
    /// restores the names `roots`: made if `to` is empty, read if it holds one of the
    /// same restore; else the restore is refused.
    fn open(fd: &OwnedFd, to: &Path, roots: &[Vec<u8>], what: &str) -> Result<Record> {
        use std::io::{Read, Write};
        let name = fsx::restore_record_name(fd, roots);
        let header = fsx::restore_record_header(fd);
        let path = to.join(OsStr::from_bytes(&name));
        let fresh = |f: OwnedFd| -> Result<Record> {
            let written =
                std::fs::File::from(f).write_all(&[header.as_slice(), what.as_bytes()].concat());
            if let Err(e) = written {
                // Not left empty (a rerun took it for another's file: "not empty"): the
                // restore has not begun, and `to` is empty again.
                let removed = fsx::unlink_at(b(fd), &name).is_ok();
                return Err(Error::Other(format!(
                    "cannot write the record of unfinished work {}: {e}; nothing was restored{}",
                    crate::relpath::escape(path.as_os_str().as_bytes()),
                    match removed {
                        true => " (the record removed)",
                        false => "",
                    }
                )));
            }
            Ok(Record {
                name: name.clone(),
                rerun: false,
                unfinished: Default::default(),
            })
        };
        if !fsx::dir_has_entries(b(fd)).map_err(io_err("read", to))? {
            return fresh(fsx::create_at(b(fd), &name).map_err(io_err("create", &path))?);
        }
        let not_empty = || {
            Error::Other(format!(
                "{} is not empty; restore into a new or empty directory",
                crate::relpath::shown(to)
            ))
        };
        let mut text = Vec::new();
        match fsx::open_read_at(b(fd), &name) {
            Ok(f) => {
                std::fs::File::from(f)
                    .read_to_end(&mut text)
                    .map_err(io_err("read", &path))?;
            }
            Err(e) if fsx::errno_is(&e, rustix::io::Errno::NOENT) => return Err(not_empty()),
            Err(e) => return Err(io_err("open", &path)(e)),
        }
        // An empty record, the only entry of `to`: a restore killed (or stopped by a
        // full file system) between making its record and writing its first line, which
        // had begun nothing else. Written again, this restore starts afresh.
        if text.is_empty() && fsx::list_dir(b(fd)).map_err(io_err("read", to))? == [name.clone()] {
            let f = rustix::fs::openat(
                fd,
                name.as_slice(),
                rustix::fs::OFlags::WRONLY
                    | rustix::fs::OFlags::TRUNC
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err("open", &path)(e.into()))?;
            return fresh(f);
        }
        let Some(body) = text.strip_prefix(header.as_slice()) else {
            return Err(not_empty());
        };
        let body = String::from_utf8_lossy(body);
        if !body.lines().any(|l| format!("{l}\n") == what) {
            return Err(match body.lines().find(|l| l.starts_with("r ")) {
                Some(l) => Error::Other(format!(
                    "{} holds an unfinished restore of another snapshot or path ({}: {l}); run that restore again to finish it, or restore into a new or empty directory",
                    crate::relpath::shown(to),
                    crate::relpath::shown(&path)
                )),
                // A store restore's record.
                None => not_empty(),
            });
        }
        Ok(Record {
            name,
            rerun: true,
            unfinished: body
                .lines()
                .filter_map(|l| l.strip_prefix("f "))
                .map(str::to_string)
                .collect(),
        })
    }

    /// Names the files a stopped restore leaves unfinished, appended to the record (a
    /// full file system may refuse it: a rerun finds them all the same, by their times).
    fn note_unfinished(&self, to: &To, files: &[String]) -> std::io::Result<()> {
        use std::io::Write;
        if files.is_empty() {
            return Ok(());
        }
        let fd = rustix::fs::openat(
            &to.fd,
            self.name.as_slice(),
            rustix::fs::OFlags::WRONLY
                | rustix::fs::OFlags::APPEND
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let lines: String = files.iter().map(|f| format!("f {f}\n")).collect();
        std::fs::File::from(fd).write_all(lines.as_bytes())
    }
}

/// The names a restore of `sub` (`flat`) from tree `start` puts into its target root.
fn root_names(repo: &Repo, start: Id, sub: &[Vec<u8>], flat: bool) -> Result<Vec<Vec<u8>>> {
    let tree_names = |id: Id| -> Result<Vec<Vec<u8>>> {
        let t = Tree::from_blob(&tree_blob(repo, &id)?, &id)?;
        Ok(t.nodes.iter().map(|n| n.name_bytes()).collect())
    };
    match sub.split_first() {
        None => tree_names(start),
        Some((first, _)) if !flat => {
            // Not in the snapshot: said before anything is made (nor a record left
            // naming it, which refused the corrected command).
            find_node(repo, start, sub)?;
            Ok(vec![first.clone()])
        }
        Some(_) => {
            let n = find_node(repo, start, sub)?;
            match n.subtree {
                Some(t) if n.kind == "dir" => tree_names(t),
                _ => Ok(sub.last().into_iter().cloned().collect()),
            }
        }
    }
}

/// Threads that fetch file contents at once, a batch of files each ([`BATCH_FILES`],
/// [`BATCH_BYTES`]); on S3 each fetch is a round trip, and this many overlap.
const FILL_THREADS: usize = 8;
/// Files the walk hands to a fill thread at once, at most, walked one after the other
/// (so their blobs are mostly in the same packs): their blobs are read by pack, the
/// nearby blobs of one pack in one ranged read ([`Span`]), not one request per blob
/// (30,000 small files were 30,000 requests, 142 s against a local S3 server; in
/// batches of 32 files, 1,218 requests and 6.2 s). A batch holds no file open (each is
/// opened again while it is written), only its directories ([`BATCH_DIRS`]).
const BATCH_FILES: usize = 1024;
/// A batch ends once its files are in this many directories (counted as the walk
/// changes directory): their descriptors are held until it is written.
const BATCH_DIRS: usize = 32;
/// A batch ends once its files hold this much; a batch's distinct blobs held in memory
/// at once, at most (plaintext; a file's blobs past it, as a large file's, are read by
/// its fill, [`BIG_READS`] spans at once).
const BATCH_BYTES: u64 = 8 << 20;
/// The blobs of one file that its batch did not read (a large file's) are read by
/// spans of at most this much, this many at once, each decrypted and checked by the
/// thread that read it and written at its place in the file. One blob at a time, a
/// 2 GiB file took 1,371 requests and 76 s from a local S3 server (restic: 9 s).
const BIG_SPAN_CAP: u64 = 2 << 20;
const BIG_READS: usize = FILL_THREADS;
/// Sealed bytes of such spans read and not yet written, over all the fills, at most
/// (one span is always let through): with their plaintexts, about twice this in
/// memory.
const BIG_IN_FLIGHT: u64 = 16 << 20;
/// Blobs of a batch further apart than this in their pack are read apart.
const SPAN_GAP: u64 = 1 << 20;
/// One ranged read of a pack is at most this long (or one blob).
const SPAN_CAP: u64 = 16 << 20;
/// Batches created and waiting for their contents, at most: with the fill threads'
/// and the one being made, `(FILL_QUEUE + FILL_THREADS + 1) * BATCH_DIRS` directories
/// open (and the walk's), and one file per fill thread.
const FILL_QUEUE: usize = 2;

/// Directories a batch may hold open, at most: [`BATCH_DIRS`], or fewer when the limit
/// of open files is low. The soft limit is first raised to the hard one (as restic
/// does); then `(FILL_QUEUE + FILL_THREADS + 1)` batches of directories must fit in it
/// with 64 descriptors left for the walk's directories and the rest. `ulimit -n 256`
/// and 5,000 directories of 2 files was "Too many open files" (352 directories open).
fn dirs_per_batch() -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current.is_some() && l.current != l.maximum {
        let raised = rustix::process::Rlimit {
            current: l.maximum,
            maximum: l.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            l = getrlimit(Resource::Nofile);
        }
    }
    match l.current {
        None => BATCH_DIRS,
        Some(soft) => {
            let per = soft.saturating_sub(64) / (FILL_QUEUE + FILL_THREADS + 1) as u64;
            (per.min(BATCH_DIRS as u64) as usize).max(1)
        }
    }
}

/// `e`, with a hint when it is the limit of open files.
fn fd_limit_hint(e: std::io::Error) -> std::io::Error {
    match e.raw_os_error().map(rustix::io::Errno::from_raw_os_error) {
        Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE) => std::io::Error::new(
            e.kind(),
            format!("{e}: raise the limit of open files (`ulimit -n`) and restore again"),
        ),
        _ => e,
    }
}

/// A created file, empty, for a fill thread: its contents and then its metadata.
struct Fill {
    /// The directory it was created in (`O_EXCL | O_NOFOLLOW`), the one the walk made:
    /// the fill opens `name` again in it (`O_NOFOLLOW`), checks it is the file created
    /// (`id`: device, inode), and writes it and sets its metadata through that
    /// descriptor only.
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
    id: (u64, u64),
    /// For messages, and to remove it ([`To::parent`]).
    path: PathBuf,
    node: Node,
    /// Its key in [`Links`] when it has other names.
    link: Option<LinkKey>,
}

/// The names of one inode with several links: the first is created and filled, the
/// others are hard links to it, made by the walk. Once its fill fails (its data does
/// not read) every name is removed and named, and a later name is not linked. Names
/// are paths under `to`, reached again through [`To::parent`].
struct LinkGroup {
    first: PathBuf,
    /// What its names record of the inode ([`link_signature`]): a name of the same
    /// `(device, inode)` recording another is not linked to it.
    sig: blake3::Hash,
    others: Vec<PathBuf>,
    /// Why its content could not be read, once it could not.
    failed: Option<String>,
}

/// A group of [`Links`]: (device, inode, variant). Variant 0 holds the first name of
/// the `(device, inode)` met; a name recording another content or metadata than every
/// group's of its `(device, inode)` so far starts the next variant ([`Restorer::hard_link`]).
type LinkKey = (u64, u64, usize);

/// The inodes with several links, by [`LinkKey`], shared by the walk and the fill
/// threads: the walk links a name only while the group has not failed, and a failed
/// fill removes every name linked so far, both under this lock (a link made after the
/// removal would be a half-written file; one to the removed first name failed and
/// stopped the restore).
type Links = std::sync::Mutex<HashMap<LinkKey, LinkGroup>>;

/// The restore's `to`, opened once: what the walk reaches again after it made it (a
/// hard link's first name, a directory for its metadata, a file to remove) is reopened
/// beneath this descriptor, never through a symlink nor out of it.
struct To<'a> {
    path: &'a Path,
    fd: OwnedFd,
}

impl To<'_> {
    /// `p`, a path the restore made under `to`, relative to it.
    fn rel<'p>(&self, p: &'p Path) -> &'p [u8] {
        p.strip_prefix(self.path)
            .unwrap_or(p)
            .as_os_str()
            .as_bytes()
    }

    /// The directory `p` (under `to`, or `to` itself), opened beneath `to`.
    fn dir(&self, p: &Path) -> std::io::Result<OwnedFd> {
        fsx::open_dir_beneath(self.fd.as_fd(), self.rel(p)).map_err(replaced)
    }

    /// The directory holding `p` (under `to`), opened beneath `to`, and `p`'s name.
    fn parent(&self, p: &Path) -> std::io::Result<(OwnedFd, Vec<u8>)> {
        let rel = self.rel(p);
        let (dir, name) = match rel.iter().rposition(|c| *c == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&rel[..0], rel),
        };
        Ok((
            fsx::open_dir_beneath(self.fd.as_fd(), dir).map_err(replaced)?,
            name.to_vec(),
        ))
    }
}

/// What a reopening beneath `to` says when a symlink is on the way (or the name is no
/// longer a directory): someone else changed the target under the restore.
fn replaced(e: std::io::Error) -> std::io::Error {
    match e.raw_os_error().map(rustix::io::Errno::from_raw_os_error) {
        Some(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR | rustix::io::Errno::XDEV) => {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "a directory on the way is no longer the one this restore made (a symlink or another file is there now; not followed): {e}"
                ),
            )
        }
        _ => e,
    }
}

struct Restorer<'a> {
    repo: &'a Repo,
    to: &'a To<'a>,
    report: RestoreReport,
    links: &'a Links,
    problems: &'a Problems<'a>,
    as_root: bool,
    /// To the fill threads, a batch at a time.
    fills: std::sync::mpsc::SyncSender<Vec<Fill>>,
    /// The batch being made, and its files' sizes.
    batch: Vec<Fill>,
    batch_bytes: u64,
    /// The directories of the batch's files (each change of directory counts).
    batch_dirs: usize,
    /// A batch ends at this many directories: [`BATCH_DIRS`], less under a low limit
    /// of open files ([`dirs_per_batch`]).
    max_batch_dirs: usize,
    /// Files in the next batch: doubles from 1 up to [`BATCH_FILES`].
    batch_files: usize,
    /// The first fill error; set, the walk stops.
    failed: &'a std::sync::Mutex<Option<Error>>,
    /// Set on SIGINT/SIGTERM: the walk stops.
    cancel: &'a AtomicBool,
    /// Directories (and `to`) whose metadata waits until every file is written, in
    /// the order their subtrees finished (children before parents), with their
    /// (device, inode): one found there at the end is not the one made.
    dirs: Vec<(PathBuf, Node, (u64, u64))>,
    /// The record of unfinished work: on a rerun, what is there already is the
    /// stopped restore's ([`Restorer::existing`]).
    record: &'a Record,
}

/// Bytes in flight, shared by the fills' reads of large files ([`BIG_IN_FLIGHT`]).
struct Budget {
    used: std::sync::Mutex<u64>,
    freed: std::sync::Condvar,
    cap: u64,
}

impl Budget {
    fn new(cap: u64) -> Budget {
        Budget {
            used: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
            cap,
        }
    }

    /// Waits until `n` more bytes fit (or nothing else is in flight); returns what was
    /// taken, for [`Budget::give`].
    fn take(&self, n: u64) -> u64 {
        let n = n.min(self.cap);
        let mut used = lock(&self.used);
        while *used > 0 && *used + n > self.cap {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += n;
        n
    }

    fn give(&self, n: u64) {
        *lock(&self.used) -= n;
        self.freed.notify_all();
    }
}

/// What the fill threads did.
#[derive(Default)]
struct Filled {
    files: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

/// Restores snapshot `name` (`latest`, an id or a prefix) into `to`: all of it, or only
/// the entry at `sub` (components under the snapshot's source), at the same relative
/// place under `to`, or (`flat`) a directory's contents straight into `to` and a file
/// as `to/NAME`. `make_to` makes `to` once the snapshot and `sub` in it are found, and opens it (the
/// caller resolves and checks it as the store's restore does: its missing part made
/// one directory at a time, never through a symlink); it must be empty. `cancel` set
/// stops it with [`Error::Cancelled`], leaving what was written.
pub fn restore(
    repo: &Repo,
    name: &str,
    to: &Path,
    make_to: impl FnOnce() -> Result<OwnedFd>,
    sub: &[Vec<u8>],
    flat: bool,
    cancel: &AtomicBool,
) -> Result<RestoreReport> {
    let started = std::time::Instant::now();
    let (id, snap) = snapshot::find(repo, name)?;
    // The source directory's own node, when the snapshot is of one path: its tree is
    // what is restored, and its metadata goes onto `to`.
    let (start, top) = snapshot::source_tree(repo, &snap).map_err(|e| tree_error(repo, e))?;
    // `sub` is found in the snapshot before `to` is made or written.
    let roots = root_names(repo, start, sub, flat)?;
    let target = To {
        path: to,
        fd: make_to()?,
    };
    let what = format!(
        "r {} {} {}\n",
        id.hex(),
        u8::from(flat),
        crate::relpath::escape(&sub.join(&b'/'))
    );
    let record = Record::open(&target.fd, to, &roots, &what)?;
    let unfinished = std::sync::Mutex::new(Vec::new());
    let to_id = fsx::fstat(b(&target.fd))
        .map(|m| (m.dev, m.ino))
        .map_err(io_err("stat", to))?;
    let as_root = rustix::process::geteuid().is_root();
    let failed = std::sync::Mutex::new(None);
    let filled = Filled::default();
    let problems = Problems {
        to,
        list: std::sync::Mutex::new(Vec::new()),
    };
    let links = Links::default();
    let budget = Budget::new(BIG_IN_FLIGHT);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Fill>>(FILL_QUEUE);
    let rx = std::sync::Mutex::new(rx);
    let walked = std::thread::scope(|s| {
        for _ in 0..FILL_THREADS {
            s.spawn(|| {
                let on = FillOn {
                    repo,
                    to: &target,
                    as_root,
                    failed: &failed,
                    filled: &filled,
                    problems: &problems,
                    links: &links,
                    cancel,
                    budget: &budget,
                    unfinished: &unfinished,
                };
                fill_files(&on, &rx)
            });
        }
        let mut r = Restorer {
            repo,
            to: &target,
            report: RestoreReport {
                snapshot: id.hex(),
                to: to.to_path_buf(),
                ..Default::default()
            },
            links: &links,
            problems: &problems,
            as_root,
            fills: tx,
            batch: Vec::new(),
            batch_bytes: 0,
            batch_dirs: 0,
            max_batch_dirs: dirs_per_batch(),
            batch_files: 1,
            failed: &failed,
            cancel,
            dirs: Vec::new(),
            record: &record,
        };
        let walked = r.start(start, top, sub, flat, to_id);
        // The last files, after an error too (as those sent before it are filled).
        r.send_batch();
        // Closing the channel ends the fill threads once the queue is drained.
        let Restorer { report, dirs, .. } = r;
        match walked {
            Ok(()) => (report, dirs, None),
            Err(e) => (report, Vec::new(), Some(e)),
        }
    });
    let (mut report, dirs, walk_error) = walked;
    // A fill's error first: the walk stopped on it.
    let stop = lock(&failed).take().or(walk_error);
    let stop = stop.or_else(|| cancel.load(Ordering::Relaxed).then_some(Error::Cancelled));
    report.files += filled.files.load(Ordering::Relaxed);
    report.bytes += filled.bytes.load(Ordering::Relaxed);
    if let Some(e) = stop {
        // What was written stays, with the record: the same restore run again finishes
        // it. Directories keep mode 0700 until then.
        let left = unfinished.into_inner().unwrap_or_else(|e| e.into_inner());
        // Not left under their names, half-written (a file system filled by the
        // restore stays full, and a half file looks restored): emptied and removed,
        // as the store's restore removes its partial file. The record names them; the
        // rerun writes them whole.
        for (p, made) in &left {
            discard(&target, p, *made);
        }
        let mut files: Vec<String> = left
            .iter()
            .map(|(p, _)| {
                crate::relpath::escape(p.strip_prefix(to).unwrap_or(p).as_os_str().as_bytes())
            })
            .collect();
        files.sort();
        files.dedup();
        if let Err(w) = record.note_unfinished(&target, &files) {
            tracing::warn!("cannot name the unfinished files in the record: {w}");
        }
        report.unfinished = files;
        report.record = Some(to.join(OsStr::from_bytes(&record.name)));
        report.stopped = Some(e);
        report.problems = problems
            .list
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        report.problems.sort_by(|a, b| a.path.cmp(&b.path));
        report.duration_seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    // The whole snapshot walked: directories get their metadata, deepest first, and
    // only then does the record go (a restore killed before is run again: it finds its
    // directories, 0700 again until the end, and sets their metadata once more; with
    // the record gone first, a kill here left them root's, 0700, and the rerun was
    // refused as "not empty").
    let set_dir = |p: &Path, n: &Node, id: (u64, u64)| {
        let same = |fd: OwnedFd| match fsx::fstat(b(&fd)) {
            Ok(m) if (m.dev, m.ino) == id => Ok(fd),
            Ok(_) => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "replaced by another directory while the restore ran: its metadata is not set",
            )),
            Err(e) => Err(e),
        };
        target
            .dir(p)
            .and_then(same)
            .map_err(io_err("open", p))
            .and_then(|fd| metadata_fd(as_root, n, b(&fd), p, &problems))
    };
    for (p, n, id) in dirs.iter().filter(|(p, ..)| p.as_path() != to) {
        // Tests kill the restore here, with directories' metadata half applied.
        let _ = crate::failpoint::hit("restic.restore.dirs");
        if let Err(e) = set_dir(p, n, *id) {
            problems.add(p, crate::report::ProblemKind::Metadata, "set metadata", e);
        }
    }
    // The files' data on disk before the record goes: with the record, a crash (a
    // power cut) before the data reached the disk leaves a rerun, which checks each
    // file it keeps against its blobs ([`Restorer::holds_content`]); without it, the
    // restore said done. One `syncfs`, not an fsync per file (30,000 small files).
    fsx::sync_fs(b(&target.fd)).map_err(io_err("flush the restored files in", to))?;
    if let Err(e) = fsx::unlink_at(b(&target.fd), &record.name) {
        return Err(io_err("remove", to.join(OsStr::from_bytes(&record.name)))(
            e,
        ));
    }
    // `to` last, once its record is gone: its mode may take its owner's write (a
    // snapshot of a 0555 directory), which removing the record needs as a user, and
    // removing it changes `to`'s modification time.
    for (p, n, id) in dirs.iter().filter(|(p, ..)| p.as_path() == to) {
        if let Err(e) = set_dir(p, n, *id) {
            problems.add(p, crate::report::ProblemKind::Metadata, "set metadata", e);
        }
    }
    report.problems = problems
        .list
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    report.problems.sort_by(|a, b| a.path.cmp(&b.path));
    // The names linked to an inode that was restored (not those removed with it).
    report.hard_links = links
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|g| g.failed.is_none())
        .map(|g| g.others.len() as u64)
        .sum();
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The problems of one restore, named relative to its target.
struct Problems<'a> {
    to: &'a Path,
    list: std::sync::Mutex<Vec<crate::report::Problem>>,
}

impl Problems<'_> {
    fn add(&self, p: &Path, kind: crate::report::ProblemKind, action: &str, e: Error) {
        tracing::warn!("{}: {action}: {e}", crate::relpath::shown(p));
        let rel = p.strip_prefix(self.to).unwrap_or(p);
        lock(&self.list).push(crate::report::Problem {
            path: crate::relpath::escape(rel.as_os_str().as_bytes()),
            kind,
            action: action.into(),
            error: e.to_string(),
        });
    }
}

/// Why a file was not filled whole.
enum FillError {
    /// Its content could not be read from the repository (a damaged or lost blob):
    /// that file only.
    Content(Error),
    /// Its content is written, its metadata could not be set: that file only.
    Metadata(Error),
    /// The file the walk created is no longer there to be written (deleted, or another
    /// file, a symlink, a directory or a FIFO in its place): that file only, not
    /// written, and what is there now is left alone.
    Replaced(Error),
    /// The restore cannot go on (the target cannot be written, a signal).
    Stop(Error),
}

/// What the fill threads share.
struct FillOn<'a> {
    repo: &'a Repo,
    to: &'a To<'a>,
    as_root: bool,
    /// The first error that stops the restore.
    failed: &'a std::sync::Mutex<Option<Error>>,
    filled: &'a Filled,
    problems: &'a Problems<'a>,
    links: &'a Links,
    cancel: &'a AtomicBool,
    /// Bytes the reads of large files hold ([`BIG_IN_FLIGHT`]).
    budget: &'a Budget,
    /// Files created and not finished, once the restore stops.
    /// Files created and not finished, once the restore stops, with their (device,
    /// inode): they are emptied and removed ([`discard`]), and named in the record.
    unfinished: &'a std::sync::Mutex<Vec<(PathBuf, (u64, u64))>>,
}

/// A fill thread: writes the files the walk created, until the walk ends or a fill
/// fails for good (the first error is kept; the others stop). A file whose own data or
/// metadata fails is a problem, and the others go on.
fn fill_files(on: &FillOn, rx: &std::sync::Mutex<std::sync::mpsc::Receiver<Vec<Fill>>>) {
    use crate::report::ProblemKind;
    loop {
        let Ok(batch) = lock(rx).recv() else { return };
        // Created, and left unfinished: named in the record.
        let left = |fills: &[Fill]| {
            lock(on.unfinished).extend(fills.iter().map(|f| (f.path.clone(), f.id)))
        };
        if lock(on.failed).is_some() {
            left(&batch);
            continue;
        }
        let blobs = match prefetch(on, &batch) {
            Ok(blobs) => blobs,
            Err(e) => {
                lock(on.failed).get_or_insert(e);
                left(&batch);
                continue;
            }
        };
        let mut batch = batch.into_iter();
        while let Some(f) = batch.next() {
            if lock(on.failed).is_some() {
                left(&[f]);
                left(batch.as_slice());
                break;
            }
            let path = f.path.clone();
            let link = f.link;
            let made = f.id;
            match fill(on, f, &blobs) {
                Ok(size) => {
                    on.filled.files.fetch_add(1, Ordering::Relaxed);
                    on.filled.bytes.fetch_add(size, Ordering::Relaxed);
                }
                Err(FillError::Content(e)) => match storage_down(on.repo, &e) {
                    // The storage answers no pack read at all: the restore stops (the
                    // file stays unfinished; the rerun writes it once the storage reads).
                    Some(why) => {
                        let stop = Error::Unreachable(format!("{why}: {e}"));
                        lock(on.failed).get_or_insert(stop);
                        lock(on.unfinished).push((path, made));
                    }
                    None => not_restored(on, &path, link, e, true),
                },
                Err(FillError::Replaced(e)) => not_restored(on, &path, link, e, false),
                Err(FillError::Metadata(e)) => {
                    on.filled.files.fetch_add(1, Ordering::Relaxed);
                    on.problems
                        .add(&path, ProblemKind::Metadata, "set metadata", e);
                }
                Err(FillError::Stop(e)) => {
                    lock(on.failed).get_or_insert(e);
                    lock(on.unfinished).push((path, made));
                }
            }
        }
    }
}

/// The data blobs of a batch's files, read by pack: each pack's needed blobs sorted by
/// offset, nearby ones in one ranged read ([`Span`], [`SPAN_GAP`], [`SPAN_CAP`]), each
/// checked against its id; at most [`BATCH_BYTES`] of them. What is not here (a blob
/// past that, in no index, damaged in its span, or in a span that did not read) the
/// fill reads on its own ([`Repo::read_blob`]: its rereads and its other copies), so a
/// damaged blob fails only the files that hold it, as before. `Err` only when the
/// restore stops (cancelled).
fn prefetch(on: &FillOn, batch: &[Fill]) -> Result<HashMap<Id, Vec<u8>>> {
    let mut by_pack: std::collections::BTreeMap<Id, Vec<Entry>> = Default::default();
    let mut seen = std::collections::HashSet::new();
    let mut bytes = 0u64;
    'files: for f in batch {
        for id in f.node.content.iter().flatten() {
            if !seen.insert(*id) {
                continue;
            }
            let Some(loc) = on.repo.index.get(BlobType::Data, id) else {
                continue;
            };
            bytes += loc.plain_len();
            if bytes > BATCH_BYTES {
                break 'files;
            }
            by_pack.entry(loc.pack).or_default().push(loc.entry);
        }
    }
    let mut got = HashMap::new();
    for (pack, mut entries) in by_pack {
        entries.sort_by_key(|e| e.offset);
        let entries: Vec<&Entry> = entries.iter().collect();
        let mut rest = &entries[..];
        while !rest.is_empty() {
            if on.cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let n = Span::plan(rest, SPAN_GAP, SPAN_CAP);
            let (these, after) = rest.split_at(n);
            rest = after;
            match Span::read(on.repo, &pack, these, SPAN_GAP, SPAN_CAP, true) {
                Ok(mut span) => {
                    // Decrypted once, by the read: moved out, not opened again.
                    for e in these {
                        if let Some(plain) = span.take(e) {
                            got.insert(e.id, plain);
                        }
                    }
                }
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                // This pack's span is read blob by blob by the fills, which say why.
                Err(e) => match read_error(e) {
                    // No pack reads: the fills stop the restore.
                    FillError::Content(e) if storage_down(on.repo, &e).is_some() => {
                        return Ok(got);
                    }
                    FillError::Content(_) => {}
                    // The repository does not read at all: neither will the others.
                    _ => return Ok(got),
                },
            }
        }
    }
    Ok(got)
}

/// A file whose data does not read: it is removed (not left half-written, as if
/// restored) with every other name of its inode linked to it so far, and each is a
/// problem; a name the walk meets later is not linked ([`Restorer::hard_link`]).
/// `ours`: the file at `path` is the one the restore made (else it is left, and named
/// as changed under the restore).
fn not_restored(on: &FillOn, path: &Path, link: Option<LinkKey>, e: Error, ours: bool) {
    use crate::report::ProblemKind;
    let (kind, action) = match ours {
        true => (ProblemKind::Unreadable, "read from the repository"),
        false => (ProblemKind::Vanished, "open the file just made"),
    };
    let why = e.to_string();
    let others = match link {
        Some(key) => {
            let mut links = lock(on.links);
            match links.get_mut(&key) {
                Some(g) => {
                    g.failed = Some(why.clone());
                    std::mem::take(&mut g.others)
                }
                None => Vec::new(),
            }
        }
        None => Vec::new(),
    };
    if ours {
        remove(on.to, path);
    }
    on.problems.add(path, kind, action, e);
    for p in others {
        remove(on.to, &p);
        on.problems.add(
            &p,
            kind,
            action,
            match ours {
                true => linked_to_unreadable(on.problems, path, &why),
                false => Error::Other(format!(
                    "a hard link to {}, not written: {why}",
                    crate::relpath::escape(
                        path.strip_prefix(on.problems.to)
                            .unwrap_or(path)
                            .as_os_str()
                            .as_bytes()
                    )
                )),
            },
        );
    }
}

/// Removes the file `p` the restore made, by its name in its directory reopened
/// beneath `to` (never through a symlink put on the way since); one that cannot be
/// reached is left (it is named as not restored).
fn remove(to: &To, p: &Path) {
    if let Ok((dir, name)) = to.parent(p) {
        let _ = fsx::unlink_at(b(&dir), &name);
    }
}

/// Empties and removes the file `p` a stopped restore made and did not finish, when it
/// is still the one made (`made`: device, inode; anything else in its place is left
/// alone). Emptied first: a name linked to it already keeps the inode, which then
/// holds nothing (the rerun writes it again, as a file with other links). Best effort:
/// what cannot be reached stays, named in the record all the same.
fn discard(to: &To, p: &Path, made: (u64, u64)) {
    let Ok((dir, name)) = to.parent(p) else {
        return;
    };
    if let Ok(fd) = open_created(&dir, &name, made) {
        let _ = std::fs::File::from(fd).set_len(0);
        let _ = fsx::unlink_at(b(&dir), &name);
    }
}

/// Why a hard link to the file `first`, whose data does not read, is not restored.
fn linked_to_unreadable(problems: &Problems, first: &Path, why: &str) -> Error {
    let first = first.strip_prefix(problems.to).unwrap_or(first);
    Error::Other(format!(
        "a hard link to {}, whose data does not read: {why}",
        crate::relpath::escape(first.as_os_str().as_bytes())
    ))
}

/// Why the restore stops on `e`, an EIO reading a pack, when the repository's storage
/// answers no pack read at all ([`super::backend::Backend::storage_down`]): every
/// file would fail the same way, each after two reads and a pause, and the restore end
/// `partial` with everything lost and no record to resume from. Stopped, it keeps the
/// record, and the same restore run again once the storage reads finishes it (exit 75).
/// `None` for any other error, or while some pack has read.
fn storage_down(repo: &Repo, e: &Error) -> Option<String> {
    super::backend::is_eio(e)
        .then(|| repo.backend.storage_down())
        .flatten()
}

/// The tree blob `id`. One whose read failed with EIO on storage that does not answer
/// at all (a read of `config` fails too: [`super::backend::Backend::probe_down`]) is
/// [`Error::Unreachable`]: the restore stops, retryable (exit 75), as it does once the
/// packs of its files do not read ([`storage_down`]); on storage that reads, the tree
/// is damaged there, and the restore stops on it as before (exit 1).
fn tree_blob(repo: &Repo, id: &Id) -> Result<Vec<u8>> {
    repo.read_blob(BlobType::Tree, id)
        .map_err(|e| tree_error(repo, e))
}

/// A tree's read error `e` as [`tree_blob`] words it.
fn tree_error(repo: &Repo, e: Error) -> Error {
    if !super::backend::is_eio(&e) {
        return e;
    }
    match repo.backend.probe_down() {
        Some(probe) => Error::Unreachable(format!(
            "the repository {} cannot be read: {e}, and {probe} (its disk, NFS server or \
             mount is failing)",
            repo.backend.location()
        )),
        None => e,
    }
}

/// What an error reading a file's blob means for the restore.
fn read_error(e: Error) -> FillError {
    match e {
        // Damaged data, or a pack gone or cut short (here or on S3): this file's.
        Error::Corrupt { .. } | Error::Missing(_) => FillError::Content(e),
        // A pack of a local (or NFS) repository that answers EIO, read twice (the
        // backend reads once more after a pause: `backend::Local::read_range`): a bad
        // sector or a pack the server cannot read is the loss of the files with blobs
        // there, each named, the others restored. It stopped the whole restore, on
        // every rerun alike. (The target's own EIO, writing, stops it: `Out::put`.)
        _ if super::backend::is_eio(&e) => FillError::Content(e),
        Error::Io { ref source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            FillError::Content(e)
        }
        // The repository cannot be read at all (the server down after its retries, a
        // disk failing): the restore stops.
        e => FillError::Stop(e),
    }
}

/// A blob of zeros at least this long is left a hole in the restored file.
const SPARSE_MIN: usize = 4096;

/// One file's contents from its blobs, checked against the recorded size, then its
/// metadata. Each blob is written at its place in the file (its offset from the
/// plaintext lengths the index gives, each checked as it is read): those its batch
/// read ([`prefetch`]) first, then the others (a large file's) read by pack in spans
/// ([`BIG_SPAN_CAP`]), [`BIG_READS`] at once, each decrypted and checked by the thread
/// that read it ([`read_rest`]).
fn fill(on: &FillOn, f: Fill, blobs: &HashMap<Id, Vec<u8>>) -> std::result::Result<u64, FillError> {
    let Fill {
        dir,
        name,
        id,
        path,
        node,
        link: _,
    } = f;
    // Tests replace the file here, between the walk's create and its fill.
    let _ = crate::failpoint::hit("restic.restore.before_fill");
    let file = open_created(&dir, &name, id)
        .map(std::fs::File::from)
        .map_err(|e| {
            use rustix::io::Errno;
            match e.raw_os_error().map(Errno::from_raw_os_error) {
                // Not this file's doing: the restore cannot go on.
                Some(Errno::MFILE | Errno::NFILE | Errno::NOMEM | Errno::IO) => {
                    FillError::Stop(io_err("open the file just made", &path)(fd_limit_hint(e)))
                }
                _ => FillError::Replaced(io_err("open the file just made", &path)(e)),
            }
        })?;
    drop(dir);
    // Where each blob goes: its offsets in the file (a blob can be there more than
    // once) and its plaintext length, in the order of the file.
    let mut at: Vec<(Id, u64, Vec<u64>)> = Vec::new();
    let mut place: HashMap<Id, usize> = HashMap::new();
    let mut size = 0u64;
    for id in node.content.iter().flatten() {
        let len = match blobs.get(id) {
            Some(d) => d.len() as u64,
            None => match on.repo.index.get(BlobType::Data, id) {
                Some(loc) => loc.plain_len(),
                // In no index: the read says so, as it did.
                None => on
                    .repo
                    .read_blob(BlobType::Data, id)
                    .map_err(read_error)?
                    .len() as u64,
            },
        };
        match place.get(id) {
            Some(&i) => at[i].2.push(size),
            None => {
                place.insert(*id, at.len());
                at.push((*id, len, vec![size]));
            }
        }
        size += len;
    }
    if size != node.size {
        return Err(FillError::Content(corrupt(
            format!("file {}", crate::relpath::shown(&path)),
            format!("{size} bytes from its blobs, {} recorded", node.size),
        )));
    }
    let out = Out {
        file: &file,
        path: &path,
        holes: AtomicBool::new(false),
    };
    let mut rest = Vec::new();
    for (id, len, offsets) in &at {
        if on.cancel.load(Ordering::Relaxed) {
            return Err(FillError::Stop(Error::Cancelled));
        }
        match blobs.get(id) {
            Some(d) => out.put(id, d, *len, offsets)?,
            None => rest.push((*id, *len, offsets.as_slice())),
        }
    }
    read_rest(on, &out, &rest)?;
    // A blob of zeros is a hole, not written (the file was created empty): a sparse
    // file stays sparse, as restic's `restore --sparse` leaves it. A 1 GiB image with
    // a hole was restored as 1 GiB of disk. One at the end is its size.
    if out.holes.load(Ordering::Relaxed) {
        file.set_len(size)
            .map_err(|e| FillError::Stop(io_err("set the size of", &path)(e)))?;
    }
    metadata_fd(on.as_root, &node, file.as_fd(), &path, on.problems)
        .map_err(FillError::Metadata)?;
    Ok(size)
}

/// A file being filled, written at offsets by several threads.
struct Out<'a> {
    file: &'a std::fs::File,
    path: &'a Path,
    /// A blob of zeros was left a hole.
    holes: AtomicBool,
}

impl Out<'_> {
    /// Writes the plaintext of blob `id` (`len` bytes, from the index) at each of
    /// `offsets`, or leaves holes there when it is zeros ([`SPARSE_MIN`]).
    fn put(
        &self,
        id: &Id,
        data: &[u8],
        len: u64,
        offsets: &[u64],
    ) -> std::result::Result<(), FillError> {
        use std::os::unix::fs::FileExt;
        if data.len() as u64 != len {
            return Err(FillError::Content(corrupt(
                format!("Data blob {id}"),
                format!("{} bytes, its index says {len}", data.len()),
            )));
        }
        if data.len() >= SPARSE_MIN && data.iter().all(|b| *b == 0) {
            self.holes.store(true, Ordering::Relaxed);
            return Ok(());
        }
        for &o in offsets {
            self.file
                .write_all_at(data, o)
                .map_err(|e| FillError::Stop(io_err("write", self.path)(e)))?;
        }
        Ok(())
    }
}

/// The blobs of a file its batch did not read (`(id, plaintext length, offsets)`),
/// read by pack: nearby ones in one ranged read ([`Span`], [`SPAN_GAP`],
/// [`BIG_SPAN_CAP`]), up to [`BIG_READS`] reads at once within [`BIG_IN_FLIGHT`], each
/// span's blobs decrypted and checked by the thread that read it and written at their
/// places. A blob a span did not give (damaged in it, or the read failed) is read on
/// its own ([`Repo::read_blob`]: its rereads and its other copies), which says why.
/// The first error stops the others.
fn read_rest(
    on: &FillOn,
    out: &Out,
    rest: &[(Id, u64, &[u64])],
) -> std::result::Result<(), FillError> {
    if rest.is_empty() {
        return Ok(());
    }
    // Each pack's blobs by offset; the packs in the order the file first needs them.
    let mut by_pack: HashMap<Id, Vec<(Entry, usize)>> = HashMap::new();
    let mut packs = Vec::new();
    let mut alone = Vec::new();
    for (i, (id, ..)) in rest.iter().enumerate() {
        match on.repo.index.get(BlobType::Data, id) {
            Some(loc) => {
                let v = by_pack.entry(loc.pack).or_default();
                if v.is_empty() {
                    packs.push(loc.pack);
                }
                v.push((loc.entry, i));
            }
            None => alone.push(i),
        }
    }
    let mut spans: Vec<(Id, Vec<(Entry, usize)>)> = Vec::new();
    for pack in packs {
        let mut v = by_pack.remove(&pack).unwrap_or_default();
        v.sort_by_key(|(e, _)| e.offset);
        while !v.is_empty() {
            let entries: Vec<&Entry> = v.iter().map(|(e, _)| e).collect();
            let n = Span::plan(&entries, SPAN_GAP, BIG_SPAN_CAP);
            let tail = v.split_off(n);
            spans.push((pack, std::mem::replace(&mut v, tail)));
        }
    }
    let one = |i: usize| -> std::result::Result<(), FillError> {
        let (id, len, offsets) = &rest[i];
        let plain = on.repo.read_blob(BlobType::Data, id).map_err(read_error)?;
        out.put(id, &plain, *len, offsets)
    };
    for i in alone {
        one(i)?;
    }
    let read_span = |pack: &Id, these: &[(Entry, usize)]| -> std::result::Result<(), FillError> {
        if on.cancel.load(Ordering::Relaxed) {
            return Err(FillError::Stop(Error::Cancelled));
        }
        let entries: Vec<&Entry> = these.iter().map(|(e, _)| e).collect();
        let first = these[0].0.offset as u64;
        let end = these
            .iter()
            .map(|(e, _)| e.offset as u64 + e.length as u64)
            .max()
            .unwrap_or(first);
        let taken = on.budget.take(end - first);
        let read = Span::read(on.repo, pack, &entries, SPAN_GAP, BIG_SPAN_CAP, true);
        let done = (|| {
            let mut span = match read {
                Ok(span) => Some(span),
                Err(Error::Cancelled) => return Err(FillError::Stop(Error::Cancelled)),
                Err(_) => None,
            };
            for (e, i) in these {
                match span.as_mut().and_then(|s| s.take(e)) {
                    Some(plain) => {
                        let (id, len, offsets) = &rest[*i];
                        out.put(id, &plain, *len, offsets)?;
                    }
                    None => one(*i)?,
                }
            }
            Ok(())
        })();
        on.budget.give(taken);
        done
    };
    let readers = BIG_READS.min(spans.len());
    if readers <= 1 {
        for (pack, these) in &spans {
            read_span(pack, these)?;
        }
        return Ok(());
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed: std::sync::Mutex<Option<FillError>> = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..readers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((pack, these)) = spans.get(i) else {
                        return;
                    };
                    if lock(&failed).is_some() {
                        return;
                    }
                    if let Err(e) = read_span(pack, these) {
                        lock(&failed).get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The file `name` the walk created in `dir`, opened again for writing, never through
/// a symlink, and only if it is still that file (`id`: device, inode). `O_NONBLOCK`: a
/// FIFO put in its place without a reader is `ENXIO`, not a wait for ever (one with a
/// reader is another inode); nothing but a regular file is written.
fn open_created(dir: &OwnedFd, name: &[u8], id: (u64, u64)) -> std::io::Result<OwnedFd> {
    use rustix::fs::OFlags;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    let m = match fsx::fstat_cached(b(&fd)) {
        Some(m) => m,
        None => fsx::fstat(b(&fd))?,
    };
    if (m.dev, m.ino) != id || m.kind != fsx::Kind::File {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "replaced by another file while the restore ran: not written",
        ));
    }
    Ok(fd)
}

/// The node at `sub` (not empty) under the tree `start`.
fn find_node(repo: &Repo, mut tree: Id, sub: &[Vec<u8>]) -> Result<Node> {
    let shown = || String::from_utf8_lossy(&sub.join(&b'/')).into_owned();
    for (i, c) in sub.iter().enumerate() {
        let t = Tree::from_blob(&tree_blob(repo, &tree)?, &tree)?;
        let Some(n) = t.nodes.into_iter().find(|n| n.name_bytes() == *c) else {
            return Err(Error::Other(format!("{} is not in the snapshot", shown())));
        };
        if i + 1 == sub.len() {
            return Ok(n);
        }
        match (n.kind.as_str(), n.subtree) {
            ("dir", Some(t)) => tree = t,
            _ => return Err(Error::Other(format!("{} is not in the snapshot", shown()))),
        }
    }
    unreachable!("sub is not empty")
}

/// A name from a tree must be one path component.
fn checked_name(n: &Node) -> Result<Vec<u8>> {
    let name = n.name_bytes();
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(corrupt("tree", format!("unsafe name {:?}", n.name)));
    }
    Ok(name)
}

impl Restorer<'_> {
    /// Hands the batch made so far to the fill threads.
    fn send_batch(&mut self) {
        self.batch_bytes = 0;
        self.batch_dirs = 0;
        let batch = std::mem::take(&mut self.batch);
        if !batch.is_empty() {
            // The fill threads are gone only after a failure (already recorded).
            let _ = self.fills.send(batch);
        }
    }

    /// The walk: all of the snapshot, or the entry at `sub` (see [`restore`]). `to_id`:
    /// `to`'s (device, inode), for its metadata.
    fn start(
        &mut self,
        start: Id,
        top: Option<Node>,
        sub: &[Vec<u8>],
        flat: bool,
        to_id: (u64, u64),
    ) -> Result<()> {
        let to = self.to.path;
        let to_fd = Arc::new(self.to.fd.try_clone().map_err(io_err("open", to))?);
        match sub.split_last() {
            None => {
                if top.is_some() {
                    self.to_writable(&to_fd)?;
                }
                self.tree(start, &to_fd, to)?;
                if let Some(n) = top {
                    self.dirs.push((to.to_path_buf(), n, to_id));
                }
            }
            Some((last, parents)) => {
                let n = find_node(self.repo, start, sub)?;
                match (flat, n.subtree) {
                    (true, Some(t)) if n.kind == "dir" => {
                        self.to_writable(&to_fd)?;
                        self.tree(t, &to_fd, to)?;
                        self.dirs.push((to.to_path_buf(), n, to_id));
                    }
                    (true, _) => self.node(&n, &to_fd, last, &to.join(OsStr::from_bytes(last)))?,
                    (false, _) => {
                        // The entry's ancestors, made one at a time (mode 0777 less the
                        // umask, as `mkdir -p`), each opened without following a symlink.
                        let mut dir = to_fd;
                        let mut at = to.to_path_buf();
                        for c in parents {
                            at.push(OsStr::from_bytes(c));
                            match rustix::fs::mkdirat(
                                &dir,
                                c.as_slice(),
                                Mode::from_raw_mode(0o777),
                            ) {
                                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                                Err(e) => return Err(io_err("create directory", &at)(e.into())),
                            }
                            let m = fsx::lstat_at(b(&dir), c).map_err(io_err("stat", &at))?;
                            dir = Arc::new(
                                fsx::open_same_dir(b(&dir), c, (m.dev, m.ino), false)
                                    .map_err(io_err("open directory", &at))?,
                            );
                        }
                        self.node(&n, &dir, last, &at.join(OsStr::from_bytes(last)))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// On a rerun, `to` (which gets the snapshot's metadata at the end) made 0700 again,
    /// as its other directories: a restore stopped while directories got their metadata
    /// may have set `to`'s mode already (0555 left its owner unable to write there).
    fn to_writable(&self, to_fd: &OwnedFd) -> Result<()> {
        if !self.record.rerun {
            return Ok(());
        }
        writable_again(
            rustix::fs::fstat(to_fd).map(|st| st.st_mode).ok(),
            || rustix::fs::fchmod(to_fd, Mode::from_raw_mode(0o700)).map_err(Into::into),
            self.to.path,
        );
        Ok(())
    }

    /// The entries of tree `id` into the directory `dir` (at `path`, for messages).
    fn tree(&mut self, id: Id, dir: &Arc<OwnedFd>, path: &Path) -> Result<()> {
        let t = Tree::from_blob(&tree_blob(self.repo, &id)?, &id)?;
        let mut names: std::collections::HashSet<Vec<u8>> =
            std::collections::HashSet::with_capacity(t.nodes.len());
        for n in t.nodes {
            if lock(self.failed).is_some() {
                // A fill thread failed: its error is the restore's.
                return Ok(());
            }
            if self.cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let name = checked_name(&n)?;
            let p = path.join(OsStr::from_bytes(&name));
            // A second entry of one name (a crafted or damaged tree): damage in the
            // snapshot, named as such, the restore partial. It stopped the restore with
            // "cannot create directory …: File exists" and "run the same restore
            // again", which failed the same way every time.
            if !names.insert(name.clone()) {
                self.problems.add(
                    &p,
                    crate::report::ProblemKind::Damaged,
                    "restore",
                    corrupt("the snapshot", super::verify::duplicate_name(&id, &n)),
                );
                continue;
            }
            self.node(&n, dir, &name, &p)?;
        }
        Ok(())
    }

    /// Makes `n` as `name` in `dir` (`p`, for messages).
    fn node(&mut self, n: &Node, dir_fd: &Arc<OwnedFd>, name: &[u8], p: &Path) -> Result<()> {
        let dir = b(dir_fd);
        match n.kind.as_str() {
            "dir" => {
                // 0700 until its metadata, once everything under it is written: nobody
                // else can change what it holds meanwhile.
                match fsx::mkdir_at(dir, name) {
                    Ok(()) => {}
                    // A rerun: the stopped restore's directory, its metadata perhaps set
                    // already (stopped while directories got theirs): 0700 again, as
                    // made, until its metadata is set at the end.
                    Err(_)
                        if self.record.rerun
                            && fsx::lstat_at(dir, name).is_ok_and(|m| m.kind == fsx::Kind::Dir) =>
                    {
                        writable_again(
                            fsx::lstat_at(dir, name).map(|m| m.perm).ok(),
                            || fsx::chmod_nofollow_at(dir, name, 0o700),
                            p,
                        );
                    }
                    Err(e) => return Err(io_err("create directory", p)(e)),
                }
                self.report.dirs += 1;
                // Tests swap the directory just made for a symlink here.
                let _ = crate::failpoint::hit("restic.restore.dir");
                // The one made: its entries go through this descriptor, never through
                // a symlink put in its place (reported, the restore stops).
                let m =
                    fsx::lstat_at(dir, name).map_err(io_err("open the directory just made", p))?;
                let fd = fsx::open_same_dir(dir, name, (m.dev, m.ino), false)
                    .map_err(|e| io_err("open the directory just made", p)(fd_limit_hint(e)))?;
                let fd = Arc::new(fd);
                if let Some(sub) = n.subtree {
                    self.tree(sub, &fd, p)?;
                }
                // Its metadata after every file under it is written.
                let mut meta = n.clone();
                meta.subtree = None;
                self.dirs.push((p.to_path_buf(), meta, (m.dev, m.ino)));
                return Ok(());
            }
            "file" => {
                if self.record.rerun && self.existing(n, dir, name, p)? {
                    self.report.files += 1;
                    self.report.bytes += n.size;
                    self.report.kept += 1;
                    self.report.kept_bytes += n.size;
                    return Ok(());
                }
                let link = match self.hard_link(n, dir, name, p)? {
                    Linked::Done => return Ok(()),
                    Linked::First(key) => Some(key),
                    Linked::No => None,
                };
                let file =
                    fsx::create_at(dir, name).map_err(|e| io_err("create", p)(fd_limit_hint(e)))?;
                let m = match fsx::fstat_cached(b(&file)) {
                    Some(m) => m,
                    None => fsx::fstat(b(&file)).map_err(io_err("stat", p))?,
                };
                // Writable by its owner, whatever the umask (0277 made it 0400 and the
                // fill could not open it again): its mode is set after its contents.
                if m.perm & 0o200 == 0 {
                    rustix::fs::fchmod(&file, Mode::from_raw_mode(0o600))
                        .map_err(|e| io_err("set the mode of", p)(e.into()))?;
                }
                // Closed: the fill opens it again while it writes it.
                drop(file);
                if self
                    .batch
                    .last()
                    .is_none_or(|f| !Arc::ptr_eq(&f.dir, dir_fd))
                {
                    self.batch_dirs += 1;
                }
                let fill = Fill {
                    dir: dir_fd.clone(),
                    name: name.to_vec(),
                    id: (m.dev, m.ino),
                    path: p.to_path_buf(),
                    node: n.clone(),
                    link,
                };
                self.batch_bytes = self.batch_bytes.saturating_add(n.size);
                self.batch.push(fill);
                if self.batch.len() >= self.batch_files
                    || self.batch_bytes >= BATCH_BYTES
                    || self.batch_dirs >= self.max_batch_dirs
                {
                    // 1, 2, 4, ... files, then BATCH_FILES: the first fills (and a
                    // small restore's) start at once, in several threads.
                    self.batch_files = (self.batch_files * 2).min(BATCH_FILES);
                    self.send_batch();
                }
                return Ok(());
            }
            "symlink" | "fifo" | "dev" | "chardev" if self.record.rerun => {
                self.existing(n, dir, name, p)?;
            }
            _ => {}
        }
        match n.kind.as_str() {
            "symlink" => {
                let t = n.link_target_bytes()?;
                fsx::symlink_at(&t, dir, name).map_err(io_err("create symlink", p))?;
                self.report.symlinks += 1;
            }
            "fifo" | "dev" | "chardev" => {
                let ft = match n.kind.as_str() {
                    "fifo" => rustix::fs::FileType::Fifo,
                    "dev" => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::CharacterDevice,
                };
                rustix::fs::mknodat(
                    dir,
                    name,
                    ft,
                    Mode::from_raw_mode(unix_perm(n.mode)),
                    n.device,
                )
                .map_err(|e| io_err("create special file", p)(e.into()))?;
            }
            // Sockets are not restored (as restic does not).
            _ => return Ok(()),
        }
        metadata_at(self.as_root, n, dir, name, p, self.problems)
    }

    /// On a rerun, what is at `name` in `dir` (`p`) where the snapshot has `n`: a file
    /// the stopped restore finished (its size, mode and modification time are the
    /// snapshot's, the record does not name it unfinished, it has no other hard links,
    /// and its content is the snapshot's: [`Restorer::holds_content`]) is kept
    /// (`true`); anything else but a directory is removed, to be made again.
    fn existing(&self, n: &Node, dir: BorrowedFd<'_>, name: &[u8], p: &Path) -> Result<bool> {
        let m = match fsx::lstat_at(dir, name) {
            Ok(m) => m,
            Err(e) if fsx::errno_is(&e, rustix::io::Errno::NOENT) => return Ok(false),
            Err(e) => return Err(io_err("stat", p)(e)),
        };
        let rel = crate::relpath::escape(self.to.rel(p));
        let whole = n.kind == "file"
            && m.kind == fsx::Kind::File
            && (n.links < 2 || n.inode == 0)
            && m.size == n.size
            && m.perm == unix_perm(n.mode)
            && super::parse_time(&n.mtime).is_ok_and(|t| t == (m.mtime.sec, m.mtime.nsec))
            && !self.record.unfinished.contains(&rel);
        if whole {
            if self.holds_content(n, dir, name, (m.dev, m.ino)) {
                return Ok(true);
            }
            tracing::warn!(
                "{}: its size, mode and modification time are the snapshot's, its content \
                 is not (the stopped restore's data not flushed before a crash, or changed \
                 since): written again",
                crate::relpath::shown(p)
            );
        }
        fsx::unlink_at(dir, name).map_err(io_err("remove", p))?;
        Ok(false)
    }

    /// Whether the file `name` in `dir` (the one `lstat` found: `id`, device and inode)
    /// holds the content `n` records: its blobs' plaintext lengths (from the index) cut
    /// it where the backup's chunker did, and each range's SHA-256 is the blob's id.
    /// Its times alone said "finished": a restore killed (a power cut) after setting
    /// them and before its data reached the disk, or a file changed since keeping its
    /// size and modification time, was kept wrong. Reading the file back costs one
    /// read of it and a hash (in the walk), much less than fetching, decrypting and
    /// writing it again; anything that does not read or check is `false` (written
    /// again). Read `O_NOATIME` (its access time is the snapshot's); where that is
    /// refused, read anyway and the times are set again.
    fn holds_content(&self, n: &Node, dir: BorrowedFd<'_>, name: &[u8], id: (u64, u64)) -> bool {
        use rustix::fs::OFlags;
        use std::io::Read;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let (fd, noatime) =
            match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
                Ok(fd) => (fd, true),
                Err(rustix::io::Errno::PERM) => {
                    match rustix::fs::openat(dir, name, flags, Mode::empty()) {
                        Ok(fd) => (fd, false),
                        Err(_) => return false,
                    }
                }
                Err(_) => return false,
            };
        match fsx::fstat(b(&fd)) {
            Ok(m) if (m.dev, m.ino) == id && m.kind == fsx::Kind::File => {}
            _ => return false,
        }
        let mut f = std::fs::File::from(fd);
        let mut buf = Vec::new();
        let mut size = 0u64;
        let mut same = true;
        for blob in n.content.iter().flatten() {
            let Some(loc) = self.repo.index.get(BlobType::Data, blob) else {
                same = false;
                break;
            };
            let len = loc.plain_len();
            size += len;
            if size > n.size {
                same = false;
                break;
            }
            buf.resize(len as usize, 0);
            if f.read_exact(&mut buf).is_err() || Id::hash(&buf) != *blob {
                same = false;
                break;
            }
        }
        // Nothing past the recorded content.
        same = same && size == n.size && f.read(&mut [0u8; 1]).is_ok_and(|k| k == 0);
        if !noatime {
            let _ = rustix::fs::futimens(&f, &times(n));
        }
        same
    }

    /// Makes `name` in `dir` (`p`) a hard link to an earlier restored name of the same
    /// inode. A name of an inode whose data did not read is not restored: a problem,
    /// and the walk goes on. Only a name recording the same content and metadata
    /// ([`link_signature`]) is linked: two names of one `(device, inode)` recording two
    /// contents (a file changed between the backup's reads of its names, or a file
    /// system giving two files one inode number, in a snapshot written before the
    /// writer recorded such a name as no hard link) each get their own, with a problem;
    /// linked, the second name's content was lost from every restore.
    fn hard_link(
        &mut self,
        n: &Node,
        dir: BorrowedFd<'_>,
        name: &[u8],
        p: &Path,
    ) -> Result<Linked> {
        use std::collections::hash_map::Entry;
        if n.links < 2 || n.inode == 0 {
            return Ok(Linked::No);
        }
        let sig = link_signature(n);
        let mut links = lock(self.links);
        let mut variant = 0;
        let g = loop {
            let key = (n.device_id, n.inode, variant);
            match links.entry(key) {
                Entry::Occupied(o) if o.get().sig != sig => variant += 1,
                Entry::Occupied(o) => break o.into_mut(),
                Entry::Vacant(v) => {
                    v.insert(LinkGroup {
                        first: p.to_path_buf(),
                        sig,
                        others: Vec::new(),
                        failed: None,
                    });
                    if variant > 0
                        && let Some(g) = links.get(&(n.device_id, n.inode, 0))
                    {
                        let first = crate::relpath::escape(self.to.rel(&g.first));
                        self.problems.add(
                            p,
                            crate::report::ProblemKind::Metadata,
                            "create hard link",
                            Error::Other(format!(
                                "recorded with the inode of {first} (device {}, inode {}) but another content, size, mode, owner or modification time (the file changed between the backup's reads of its names, or the file system gave two files one inode number): restored with its own content, not linked to {first}",
                                n.device_id, n.inode
                            )),
                        );
                    }
                    return Ok(Linked::First(key));
                }
            }
        };
        if let Some(why) = &g.failed {
            let e = linked_to_unreadable(self.problems, &g.first, why);
            self.problems.add(
                p,
                crate::report::ProblemKind::Unreadable,
                "read from the repository",
                e,
            );
            return Ok(Linked::Done);
        }
        // Under the lock: a failing fill cannot remove the first name meanwhile.
        let (first_dir, first) = self
            .to
            .parent(&g.first)
            .map_err(io_err("create hard link", p))?;
        fsx::link_at(b(&first_dir), &first, dir, name).map_err(io_err("create hard link", p))?;
        g.others.push(p.to_path_buf());
        Ok(Linked::Done)
    }
}

/// What the names of one inode share, as their nodes record it, of what a restore
/// makes: content, size, mode, owner, modification time and extended attributes (not
/// the change time: a link added while the backup read the names moves it alone).
fn link_signature(n: &Node) -> blake3::Hash {
    let key = (
        &n.content,
        n.size,
        n.mode,
        (n.uid, n.gid),
        super::parse_time(&n.mtime).ok(),
        &n.extended_attributes,
    );
    blake3::hash(&serde_json::to_vec(&key).expect("a node serialises"))
}

/// What [`Restorer::hard_link`] did with a file's name.
enum Linked {
    /// Not a file with other names: created and filled on its own.
    No,
    /// The first name of its inode (the key): created and filled.
    First(LinkKey),
    /// Linked to the first name, or not restored (its data did not read).
    Done,
}

/// The extended attributes a node records, decoded.
fn node_xattrs(n: &Node, p: &Path) -> Result<fsx::Xattrs> {
    n.extended_attributes
        .iter()
        .map(|x| {
            let v = B64.decode(&x.value).map_err(|e| {
                corrupt(
                    format!(
                        "extended attribute {} of {}",
                        x.name,
                        crate::relpath::shown(p)
                    ),
                    e,
                )
            })?;
            Ok((x.name.as_bytes().to_vec(), v))
        })
        .collect()
}

/// Sets `xs` on `t`; one the file system refuses is an error, as any other.
fn set_xattrs(t: &XattrTarget<'_>, xs: &fsx::Xattrs, p: &Path) -> Result<()> {
    let refused = fsx::write_xattrs(t, xs).map_err(io_err("set an extended attribute of", p))?;
    match refused.first() {
        None => Ok(()),
        Some((name, why)) => Err(io_err("set an extended attribute of", p)(
            std::io::Error::other(format!(
                "{} {why} the file system",
                crate::relpath::shown_bytes(name)
            )),
        )),
    }
}

fn times(n: &Node) -> Timestamps {
    let ts = |s: &str| -> Timespec {
        let (secs, nanos) = super::parse_time(s).unwrap_or((0, 0));
        Timespec {
            tv_sec: secs,
            tv_nsec: nanos as _,
        }
    };
    Timestamps {
        last_access: ts(&n.atime),
        last_modification: ts(&n.mtime),
    }
}

/// `n`'s mode, less the setuid and setgid bits that are not safe on the entry as it
/// is owned now (`now`): not root, the restore cannot give entries their owners, and
/// a setuid program of root's restored by a user would run as that user (`cp -p` run
/// by a user clears them alike; [`fsx::OwnerNotSet`]). Bits cleared are a problem of
/// the entry. Directories keep theirs (setgid there only passes the group on).
fn safe_perm(
    as_root: bool,
    n: &Node,
    now: impl FnOnce() -> std::io::Result<fsx::Meta>,
    p: &Path,
    problems: &Problems<'_>,
) -> u32 {
    let perm = unix_perm(n.mode);
    if as_root || perm & 0o6000 == 0 || n.kind == "dir" {
        return perm;
    }
    // Not known: as not safe.
    let got = now()
        .map(|m| (m.uid, m.gid))
        .unwrap_or((u32::MAX, u32::MAX));
    let cleared = fsx::unsafe_bits_of(perm, (n.uid, n.gid), got);
    if cleared != 0 {
        problems.add(
            p,
            crate::report::ProblemKind::Metadata,
            "set owner",
            Error::Other(format!(
                "cannot set owner {}:{} (this process is not root and cannot give files to other owners); left owned by {}:{}, {}: not safe on a file of another owner",
                n.uid,
                n.gid,
                got.0,
                got.1,
                fsx::cleared_text(cleared)
            )),
        );
    }
    perm & !cleared
}

/// Owner (as root), extended attributes, mode, then times, through the descriptor of
/// the file or directory itself.
fn metadata_fd(
    as_root: bool,
    n: &Node,
    fd: BorrowedFd<'_>,
    p: &Path,
    problems: &Problems<'_>,
) -> Result<()> {
    let err = |a| move |e: rustix::io::Errno| io_err(a, p)(e.into());
    if as_root {
        let uid = rustix::fs::Uid::from_raw(n.uid);
        let gid = rustix::fs::Gid::from_raw(n.gid);
        rustix::fs::fchown(fd, Some(uid), Some(gid)).map_err(err("set the owner of"))?;
    }
    set_xattrs(&XattrTarget::Fd(fd), &node_xattrs(n, p)?, p)?;
    let perm = safe_perm(as_root, n, || fsx::fstat(fd), p, problems);
    rustix::fs::fchmod(fd, Mode::from_raw_mode(perm)).map_err(err("set the mode of"))?;
    rustix::fs::futimens(fd, &times(n)).map_err(err("set the times of"))
}

/// Owner (as root), extended attributes, mode (not for symlinks), then times of `name`
/// in `dir` (a symlink, fifo or device: not opened), never following a symlink.
fn metadata_at(
    as_root: bool,
    n: &Node,
    dir: BorrowedFd<'_>,
    name: &[u8],
    p: &Path,
    problems: &Problems<'_>,
) -> Result<()> {
    let err = |a| move |e: rustix::io::Errno| io_err(a, p)(e.into());
    if as_root {
        let uid = rustix::fs::Uid::from_raw(n.uid);
        let gid = rustix::fs::Gid::from_raw(n.gid);
        rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(err("set the owner of"))?;
    }
    set_xattrs(&XattrTarget::At(dir, name), &node_xattrs(n, p)?, p)?;
    if n.kind != "symlink" {
        let perm = safe_perm(as_root, n, || fsx::lstat_at(dir, name), p, problems);
        fsx::chmod_nofollow_at(dir, name, perm).map_err(io_err("set the mode of", p))?;
    }
    rustix::fs::utimensat(dir, name, &times(n), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(err("set the times of"))
}

/// A rerun's directory made its owner's to write again (0700, as the first run made
/// it) when its metadata was set already: only when its mode lacks the owner's bits
/// (no call for the others), and a mode that cannot be changed (a vfat mount, a `--to`
/// of another owner) is left as it is with a warning: what cannot then be written
/// there fails with its own path, as in the first run.
fn writable_again(mode: Option<u32>, chmod: impl FnOnce() -> std::io::Result<()>, path: &Path) {
    if mode.is_some_and(|m| m & 0o700 == 0o700) {
        return;
    }
    if let Err(e) = chmod() {
        tracing::warn!(
            "cannot make {} writable again for the rerun: {e}",
            crate::relpath::escape(path.as_os_str().as_bytes())
        );
    }
}
