//! `snapring restore`: copies a whole snapshot, a subtree or one file out of the store
//! into a target directory, with full fidelity, in parallel, without ever writing to
//! the store. Does the restore's tree I/O.
//!
//! Safety rules (see docs/restore.md):
//! - every restored file is a new inode (a copy); nothing is ever linked out of the
//!   store, and store files are opened read-only with `O_NOATIME`;
//! - by default nothing under the target is deleted or replaced: identical entries are
//!   skipped, differing ones are reported as conflicts and left alone; `--overwrite`
//!   replaces them (atomically, by rename), `--mirror` also deletes what the snapshot
//!   does not have, only inside the restored subtree;
//! - every write is relative to a directory opened with `O_NOFOLLOW`, names come from
//!   `readdir` of the snapshot (never from the manifest), so neither a symlink in the
//!   target nor a tampered manifest can make a restore write outside the target.
//!
//! Directory metadata is applied last, when a directory's last child is done, as in the
//! backup walk. Hard links within the restored set (the manifest's `group`) are
//! recreated as hard links between restored files.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use rustix::io::Errno;
use serde::Serialize;

use crate::error::{Ctx, Error, Result, io_error};
use crate::fsx::{self, CopyError, Kind, Meta, XattrTarget, Xattrs, b};
use crate::manifest::{self, Entry};
use crate::pool::{self, Queue};
use crate::relpath::RelPath;
use crate::report::{self, Problem, ProblemKind, Status};
use crate::store::Store;

/// What to do with entries that already exist under the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Never delete, never replace: report differing entries as conflicts.
    Safe,
    /// Replace differing entries (files; a directory is never removed).
    Overwrite,
    /// Overwrite, and delete what the snapshot does not have inside the restored subtree.
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
    /// Put the restored path straight into `to` (its contents for a directory, the entry
    /// itself for a file) instead of at the same relative place under `to`.
    pub flat: bool,
    pub mode: Mode,
    pub dry_run: bool,
    pub jobs: usize,
    pub progress: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Conflict {
    /// Escaped path relative to the target.
    pub path: String,
    pub reason: String,
}

/// What a restore did (or, in a dry run, would do).
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    pub snapshot: String,
    pub run_id: Option<String>,
    pub store: PathBuf,
    pub to: PathBuf,
    pub path: Option<String>,
    pub mode: Mode,
    pub dry_run: bool,
    pub started_at: String,
    pub duration_seconds: f64,
    /// `complete`, `partial` (conflicts or per-entry problems) or `failed`.
    pub status: Status,
    pub exit_code: i32,
    pub message: String,
    pub files_restored: u64,
    pub dirs_created: u64,
    pub bytes_restored: u64,
    /// Files restored as hard links to another restored file (the source's link groups).
    pub hard_links: u64,
    pub skipped_identical: u64,
    pub overwritten: u64,
    pub deleted: u64,
    pub conflicts_total: u64,
    pub conflicts: Vec<Conflict>,
    pub errors: u64,
    pub problems: Vec<Problem>,
}

#[derive(Default)]
struct Counts {
    files: AtomicU64,
    dirs: AtomicU64,
    bytes: AtomicU64,
    hard_links: AtomicU64,
    identical: AtomicU64,
    overwritten: AtomicU64,
    deleted: AtomicU64,
    conflicts: Mutex<Vec<Conflict>>,
    conflicts_total: AtomicU64,
    problems: Mutex<Vec<Problem>>,
    errors: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// One directory of the snapshot being restored into one directory of the target.
struct Node {
    parent: Option<Arc<Node>>,
    src: OwnedFd,
    /// `None` in a dry run when the target directory does not exist yet.
    dst: Option<OwnedFd>,
    /// Path in the snapshot (the manifest's key).
    src_rel: RelPath,
    /// Path under the target.
    dst_rel: RelPath,
    /// Restore only this name of the directory (the entry named by `--path`).
    only: Option<Vec<u8>>,
    /// Give the target directory the snapshot's metadata when done (it was created by
    /// the restore, or the mode allows replacing metadata).
    apply_meta: bool,
    /// The restore created the target directory: nothing is in it, so no entry needs a
    /// look at what exists (one call per entry saved, a round trip each on NFS).
    fresh: bool,
    meta: Meta,
    xattrs: Xattrs,
    /// This directory's own listing, plus subdirectories not yet finished.
    pending: AtomicUsize,
}

#[derive(Clone)]
enum Link {
    Pending,
    /// Restored at this path under the target.
    Done(RelPath),
    Failed,
}

struct Restore<'a> {
    opts: &'a RestoreOptions,
    manifest: Option<&'a manifest::Reader>,
    /// The target (`None` only in a dry run of a target that does not exist yet).
    to_root: Option<&'a OwnedFd>,
    counts: Counts,
    cancel: &'a AtomicBool,
    fatal: Mutex<Option<Error>>,
    links: Mutex<HashMap<u64, Link>>,
    links_cv: Condvar,
    plan: Mutex<Box<dyn Write + Send>>,
}

/// Restores per `opts`. `Err` only when nothing could start (unknown snapshot or path,
/// unusable target); everything after that ends in a report.
pub fn restore(opts: &RestoreOptions, cancel: &AtomicBool) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let started_at = report::now_rfc3339();
    fsx::raise_fd_limit();
    let store = Store::open_read(&opts.store)?;
    let sel = store.select(&opts.snapshot)?;
    let snap_name = sel.snap.name.clone();
    // Where the restored entry is in the snapshot: (directory fd, its path, the name).
    let (src_dir, src_dir_rel, only, entry_meta) = match &opts.path {
        None => (
            fsx::open_dir_at(b(&sel.fd), b".").ctx("open", &sel.path)?,
            RelPath::root(),
            None,
            None,
        ),
        Some(p) => {
            let parent = p.parent();
            let shown = sel.path.join(p.as_path());
            let fd = fsx::open_dir_beneath(b(&sel.fd), parent.as_bytes())
                .map_err(|e| not_in_snapshot(e, &snap_name, p, "open", &shown))?;
            let m = fsx::lstat_at(b(&fd), p.file_name())
                .map_err(|e| not_in_snapshot(e, &snap_name, p, "stat", &shown))?;
            (fd, parent, Some(p.file_name().to_vec()), Some(m))
        }
    };
    let (to_fd, to_was_new) = open_target(opts, &store)?;
    // Where the restored entry lands: the target directory and its path under --to.
    let is_dir = entry_meta.map(|m| m.kind == Kind::Dir).unwrap_or(true);
    let mut created_ancestors = Vec::new();
    let (src_fd, src_rel, dst_fd, dst_rel, only, apply_root_meta) = match (&opts.path, opts.flat) {
        (None, _) => (
            src_dir,
            RelPath::root(),
            to_fd.as_ref().map(dup),
            RelPath::root(),
            None,
            to_was_new || opts.mode != Mode::Safe,
        ),
        (Some(p), true) if is_dir => {
            let fd = fsx::open_dir_at(b(&src_dir), p.file_name())
                .ctx("open", sel.path.join(p.as_path()))?;
            (
                fd,
                p.clone(),
                to_fd.as_ref().map(dup),
                RelPath::root(),
                None,
                to_was_new,
            )
        }
        (Some(_), true) => (
            src_dir,
            src_dir_rel,
            to_fd.as_ref().map(dup),
            RelPath::root(),
            only,
            false,
        ),
        (Some(p), false) => {
            let dst = match &to_fd {
                Some(t) => make_ancestors(opts, &sel.fd, t, &p.parent(), &mut created_ancestors)?,
                None => None,
            };
            (src_dir, src_dir_rel, dst, p.parent(), only, false)
        }
    };
    let root_meta = fsx::fstat(b(&src_fd)).ctx("stat", &sel.path)?;
    let root_xattrs = fsx::read_xattrs(&XattrTarget::Fd(b(&src_fd))).unwrap_or_default();
    let plan: Box<dyn Write + Send> = Box::new(std::io::stdout());
    let r = Restore {
        opts,
        manifest: sel.manifest.as_ref(),
        to_root: to_fd.as_ref(),
        counts: Counts::default(),
        cancel,
        fatal: Mutex::new(None),
        links: Mutex::new(HashMap::new()),
        links_cv: Condvar::new(),
        plan: Mutex::new(plan),
    };
    let node = Arc::new(Node {
        parent: None,
        src: src_fd,
        dst: dst_fd,
        src_rel,
        dst_rel,
        only,
        apply_meta: apply_root_meta && !opts.dry_run,
        // Restoring into a new or empty --to (not under existing ancestors of --path).
        fresh: to_was_new && (opts.path.is_none() || opts.flat),
        meta: root_meta,
        xattrs: root_xattrs,
        pending: AtomicUsize::new(1),
    });
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        if opts.progress {
            s.spawn(|| crate::engine::progress::spin(&done, || r.progress_line()));
        }
        let jobs = crate::concurrency::resolve(opts.jobs, &[&opts.store, &opts.to]);
        pool::run(jobs, vec![node], cancel, |n, q| r.dir(n, q));
        done.store(true, Ordering::Relaxed);
    });
    // Ancestors the restore created get the snapshot's metadata, deepest first.
    for (fd, m, xs) in created_ancestors.iter().rev() {
        let _ = fsx::apply_dir_meta(b(fd), m, xs);
    }
    Ok(r.finish(&sel, &store, started_at, t0))
}

fn dup(fd: &OwnedFd) -> OwnedFd {
    fd.try_clone().expect("dup a directory descriptor")
}

fn not_in_snapshot(
    e: std::io::Error,
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
        Error::Store {
            path: shown.to_path_buf(),
            msg: format!(
                "snapshot {snap} has no {p}; `snapring history --dest STORE {p}` shows which snapshots have it"
            ),
        }
    } else {
        io_error(e, action, shown)
    }
}

/// Opens (creating it if needed) the target directory; checks it is writable and not
/// inside the store. Returns `None` in a dry run when it does not exist, and whether
/// the restore owns it (created, or empty before).
fn open_target(opts: &RestoreOptions, store: &Store) -> Result<(Option<OwnedFd>, bool)> {
    let to = &opts.to;
    let canon_store = std::fs::canonicalize(&store.root).ctx("resolve", &store.root)?;
    let mut probe = to.clone();
    while !probe.exists() {
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p.to_path_buf(),
            _ => {
                probe = PathBuf::from(".");
                break;
            }
        }
    }
    let canon = std::fs::canonicalize(&probe).ctx("resolve", &probe)?;
    if canon.starts_with(&canon_store) || canon_store.starts_with(canon.join(".snapring")) {
        return Err(Error::Store {
            path: to.clone(),
            msg: format!(
                "refusing to restore into the store {} itself (a restore never writes to the backup); choose a --to outside it",
                store.root.display()
            ),
        });
    }
    let probe_fd = fsx::open_dir(&probe).ctx("open", &probe)?;
    if fsx::is_read_only(b(&probe_fd)).ctx("check", &probe)? && !opts.dry_run {
        return Err(Error::Store {
            path: to.clone(),
            msg: format!(
                "cannot restore into {}: {} is on a read-only file system; remount it read-write or choose another --to",
                to.display(),
                probe.display()
            ),
        });
    }
    if !to.exists() {
        if opts.dry_run {
            return Ok((None, true));
        }
        std::fs::create_dir_all(to).ctx("create target directory", to)?;
        return Ok((Some(fsx::open_dir(to).ctx("open target", to)?), true));
    }
    let fd = fsx::open_dir(to).map_err(|e| {
        if fsx::errno_is(&e, Errno::NOTDIR) {
            Error::Store {
                path: to.clone(),
                msg: "the restore target is not a directory; give --to a directory".into(),
            }
        } else {
            io_error(e, "open target", to)
        }
    })?;
    let empty = !fsx::dir_has_entries(b(&fd)).ctx("read", to)?;
    Ok((Some(fd), empty))
}

/// Opens (creating the missing ones) the directories `rel` under the target, one
/// component at a time without following symlinks. Created ones are returned with the
/// snapshot's metadata for them, to apply once the restore is done.
fn make_ancestors(
    opts: &RestoreOptions,
    snap: &OwnedFd,
    to: &OwnedFd,
    rel: &RelPath,
    created: &mut Vec<(OwnedFd, Meta, Xattrs)>,
) -> Result<Option<OwnedFd>> {
    let mut cur = dup(to);
    let mut src = dup(snap);
    let mut at = RelPath::root();
    for c in rel.components() {
        at = at.join(c);
        let shown = opts.to.join(at.as_path());
        src = fsx::open_dir_at(b(&src), c).ctx("open in snapshot", at.as_path())?;
        match fsx::lstat_at(b(&cur), c) {
            Ok(m) if m.kind == Kind::Dir => {}
            Ok(m) => {
                return Err(Error::Store {
                    path: shown,
                    msg: format!(
                        "a {} is where the snapshot has a directory; move it away or restore with --flat into another --to",
                        kind_name(m.kind)
                    ),
                });
            }
            Err(e) if fsx::errno_is(&e, Errno::NOENT) => {
                if opts.dry_run {
                    return Ok(None);
                }
                fsx::mkdir_at(b(&cur), c).ctx("create directory", &shown)?;
                let fd = fsx::open_dir_at(b(&cur), c).ctx("open", &shown)?;
                let m = fsx::fstat(b(&src)).ctx("stat in snapshot", at.as_path())?;
                let xs = fsx::read_xattrs(&XattrTarget::Fd(b(&src))).unwrap_or_default();
                created.push((dup(&fd), m, xs));
            }
            Err(e) => return Err(io_error(e, "stat", shown)),
        }
        cur = fsx::open_dir_at(b(&cur), c).ctx("open", &shown)?;
    }
    Ok(Some(cur))
}

pub fn kind_name(k: Kind) -> &'static str {
    k.name()
}

/// Why an existing target entry is not identical to the snapshot's, or `None`.
enum Same {
    Yes,
    No(String),
}

impl Restore<'_> {
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

    /// A target-side error: permission problems are per entry; anything else (disk
    /// full, read-only, I/O error) stops the restore.
    fn dest_error(&self, rel: &RelPath, action: &'static str, e: std::io::Error) {
        if fsx::errno_is(&e, Errno::PERM) || fsx::errno_is(&e, Errno::ACCESS) {
            self.problem(rel, ProblemKind::Metadata, action, e);
        } else {
            let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
            f.get_or_insert(io_error(e, action, self.opts.to.join(rel.as_path())));
            self.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Lists one snapshot directory and restores its entries; queues subdirectories.
    fn dir(&self, node: Arc<Node>, q: &Queue<Arc<Node>>) {
        let names = match &node.only {
            Some(n) => vec![n.clone()],
            None => match fsx::read_dir_names(b(&node.src)) {
                Ok(mut v) => {
                    v.sort();
                    v
                }
                Err(e) => {
                    self.problem(
                        &node.src_rel,
                        ProblemKind::Unreadable,
                        "read snapshot directory",
                        e,
                    );
                    Vec::new()
                }
            },
        };
        let mentries = match (self.manifest, &node.only) {
            (Some(m), _) => m.lookup(&node.src_rel).unwrap_or_else(|e| {
                tracing::warn!("manifest unusable for {}: {e}", node.src_rel);
                None
            }),
            _ => None,
        };
        if self.opts.mode == Mode::Mirror && node.only.is_none() && !node.fresh {
            self.mirror_deletes(&node, &names);
        }
        for name in names {
            if self.cancel.load(Ordering::Relaxed) {
                break;
            }
            let me = mentries.as_deref().and_then(|es| manifest::find(es, &name));
            self.entry(&node, &name, me, q);
        }
        self.child_done(&node);
    }

    /// `--mirror`: deletes target entries the snapshot directory does not have.
    fn mirror_deletes(&self, node: &Node, names: &[Vec<u8>]) {
        let Some(dst) = &node.dst else { return };
        let existing = match fsx::read_dir_names(b(dst)) {
            Ok(v) => v,
            Err(e) => {
                self.dest_error(&node.dst_rel, "read target directory", e);
                return;
            }
        };
        for name in existing {
            if names.binary_search(&name).is_ok() {
                continue;
            }
            let rel = node.dst_rel.join(&name);
            self.say('-', &rel, "");
            if self.opts.dry_run {
                add(&self.counts.deleted, 1);
                continue;
            }
            match fsx::remove_tree_at(b(dst), &name) {
                Ok(n) => add(&self.counts.deleted, n),
                Err(e) => self.dest_error(&rel, "delete (mirror)", e),
            }
        }
    }

    fn child_done(&self, node: &Arc<Node>) {
        if node.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if node.apply_meta
            && !self.cancel.load(Ordering::Relaxed)
            && let Some(dst) = &node.dst
            && let Err(e) = fsx::apply_dir_meta(b(dst), &node.meta, &node.xattrs)
        {
            self.dest_error(&node.dst_rel, "set directory metadata", e);
        }
        if let Some(p) = &node.parent {
            self.child_done(p);
        }
    }

    fn entry(&self, node: &Arc<Node>, name: &[u8], me: Option<&Entry>, q: &Queue<Arc<Node>>) {
        let src_rel = node.src_rel.join(name);
        let rel = node.dst_rel.join(name);
        let m = match fsx::lstat_at(b(&node.src), name) {
            Ok(m) => m,
            Err(e) => {
                self.problem(&src_rel, ProblemKind::Unreadable, "stat in snapshot", e);
                return;
            }
        };
        let existing = match &node.dst {
            Some(_) if node.fresh => None,
            Some(d) => match fsx::lstat_at(b(d), name) {
                Ok(x) => Some(x),
                Err(e) if fsx::errno_is(&e, Errno::NOENT) => None,
                Err(e) => {
                    self.dest_error(&rel, "stat in target", e);
                    return;
                }
            },
            None => None,
        };
        let mode = self.opts.mode;
        if m.kind == Kind::Dir {
            let (create, apply_meta) = match existing {
                None => (true, true),
                Some(x) if x.kind == Kind::Dir => (false, mode != Mode::Safe),
                Some(x) if mode == Mode::Safe => {
                    self.conflict(
                        &rel,
                        format!(
                            "a {} is where the snapshot has a directory",
                            kind_name(x.kind)
                        ),
                    );
                    return;
                }
                Some(_) => {
                    self.say('~', &rel, "/");
                    add(&self.counts.overwritten, 1);
                    if !self.opts.dry_run
                        && let Some(d) = &node.dst
                        && let Err(e) = fsx::unlink_at(b(d), name)
                    {
                        self.dest_error(&rel, "remove (overwrite)", e);
                        return;
                    }
                    (true, true)
                }
            };
            if create {
                self.say('+', &rel, "/");
                add(&self.counts.dirs, 1);
            }
            let src = match fsx::open_dir_at(b(&node.src), name) {
                Ok(fd) => fd,
                Err(e) => {
                    self.problem(
                        &src_rel,
                        ProblemKind::Unreadable,
                        "open snapshot directory",
                        e,
                    );
                    return;
                }
            };
            let dst = match &node.dst {
                Some(d) if !self.opts.dry_run => {
                    if create && let Err(e) = fsx::mkdir_at(b(d), name) {
                        self.dest_error(&rel, "create directory", e);
                        return;
                    }
                    match fsx::open_dir_at(b(d), name) {
                        Ok(fd) => Some(fd),
                        Err(e) => {
                            self.dest_error(&rel, "open target directory", e);
                            return;
                        }
                    }
                }
                Some(d) if !create => fsx::open_dir_at(b(d), name).ok(),
                _ => None,
            };
            let xattrs = fsx::read_xattrs(&XattrTarget::Fd(b(&src))).unwrap_or_else(|e| {
                self.problem(
                    &src_rel,
                    ProblemKind::Metadata,
                    "read extended attributes",
                    e,
                );
                Vec::new()
            });
            node.pending.fetch_add(1, Ordering::AcqRel);
            q.push(Arc::new(Node {
                parent: Some(node.clone()),
                src,
                dst,
                src_rel,
                dst_rel: rel,
                only: None,
                apply_meta: apply_meta && !self.opts.dry_run,
                fresh: create,
                meta: m,
                xattrs,
                pending: AtomicUsize::new(1),
            }));
            return;
        }
        let Some(x) = existing else {
            self.say('+', &rel, "");
            self.create(node, name, &src_rel, &rel, &m, me, None);
            return;
        };
        if x.kind == Kind::Dir {
            if mode != Mode::Mirror {
                self.conflict(
                    &rel,
                    format!(
                        "a directory is where the snapshot has a {} (only --mirror replaces a directory)",
                        kind_name(m.kind)
                    ),
                );
                return;
            }
            self.say('~', &rel, "");
            if !self.opts.dry_run
                && let Some(d) = &node.dst
            {
                match fsx::remove_tree_at(b(d), name) {
                    Ok(n) => add(&self.counts.deleted, n),
                    Err(e) => {
                        self.dest_error(&rel, "remove (mirror)", e);
                        return;
                    }
                }
            }
            add(&self.counts.overwritten, 1);
            self.create(node, name, &src_rel, &rel, &m, me, None);
            return;
        }
        match self.same(node, name, &src_rel, &m, me, &x) {
            Same::Yes => {
                add(&self.counts.identical, 1);
            }
            Same::No(why) if mode == Mode::Safe => {
                self.conflict(&rel, why);
            }
            Same::No(why) => {
                self.say('~', &rel, &format!(" ({why})"));
                add(&self.counts.overwritten, 1);
                let tmp = format!(
                    ".snapring-restore.{}.tmp",
                    crate::engine::backup::new_run_id()
                );
                self.create(node, name, &src_rel, &rel, &m, me, Some(tmp.as_bytes()));
            }
        }
    }

    /// Compares an existing target entry with the snapshot's (content by hash).
    #[allow(clippy::too_many_arguments)]
    fn same(
        &self,
        node: &Node,
        name: &[u8],
        src_rel: &RelPath,
        m: &Meta,
        me: Option<&Entry>,
        x: &Meta,
    ) -> Same {
        let dst = node
            .dst
            .as_ref()
            .expect("an existing entry has a target directory");
        if x.kind != m.kind {
            return Same::No(format!(
                "a {} is where the snapshot has a {}",
                kind_name(x.kind),
                kind_name(m.kind)
            ));
        }
        match m.kind {
            Kind::File => {
                if x.size != m.size {
                    return Same::No(format!("content differs (size {} vs {})", x.size, m.size));
                }
                let theirs = fsx::open_read_at(b(dst), name).and_then(|fd| fsx::hash_file(b(&fd)));
                let ours = match me.and_then(|e| e.hash) {
                    Some(h) => Ok(h),
                    None => {
                        fsx::open_read_at(b(&node.src), name).and_then(|fd| fsx::hash_file(b(&fd)))
                    }
                };
                match (theirs, ours) {
                    (Ok(a), Ok(b)) if a == b => {}
                    (Ok(_), Ok(_)) => return Same::No("content differs".into()),
                    (Err(e), _) => return Same::No(format!("unreadable in the target ({e})")),
                    (_, Err(e)) => {
                        self.problem(src_rel, ProblemKind::Unreadable, "read snapshot file", e);
                        return Same::No("the snapshot copy is unreadable".into());
                    }
                }
            }
            Kind::Symlink => {
                let a = fsx::read_link_at(b(dst), name).ok();
                let s = fsx::read_link_at(b(&node.src), name).ok();
                if a != s {
                    return Same::No("symlink target differs".into());
                }
            }
            Kind::Char | Kind::Block if x.rdev != m.rdev => {
                return Same::No("device number differs".into());
            }
            _ => {}
        }
        if x.perm != m.perm {
            return Same::No(format!("mode differs ({:o} vs {:o})", x.perm, m.perm));
        }
        if (x.uid, x.gid) != (m.uid, m.gid) {
            return Same::No(format!(
                "owner differs ({}:{} vs {}:{})",
                x.uid, x.gid, m.uid, m.gid
            ));
        }
        if x.mtime != m.mtime && m.kind != Kind::Symlink {
            return Same::No(format!(
                "modification time differs ({} vs {})",
                x.mtime, m.mtime
            ));
        }
        let xa = |fd: &OwnedFd| fsx::read_xattrs(&XattrTarget::At(b(fd), name));
        if xa(dst).ok() != xa(&node.src).ok() {
            return Same::No("extended attributes differ".into());
        }
        Same::Yes
    }

    /// Creates `name` in the target (as `tmp`, renamed over `name`, when replacing).
    #[allow(clippy::too_many_arguments)]
    fn create(
        &self,
        node: &Node,
        name: &[u8],
        src_rel: &RelPath,
        rel: &RelPath,
        m: &Meta,
        me: Option<&Entry>,
        tmp: Option<&[u8]>,
    ) {
        if m.kind == Kind::File {
            add(&self.counts.files, 1);
        }
        if self.opts.dry_run {
            if m.kind == Kind::File {
                add(&self.counts.bytes, m.size);
            }
            return;
        }
        let Some(dst) = &node.dst else { return };
        let at = tmp.unwrap_or(name);
        // A member of a hard-link group: link to the group's first restored path.
        let grouped = match me {
            Some(e) => e.group.is_some(),
            None => self.manifest.is_none() && m.nlink > 1,
        };
        let mut leader = false;
        if grouped && m.kind != Kind::Dir {
            let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                match links.get(&m.ino).cloned() {
                    None => {
                        links.insert(m.ino, Link::Pending);
                        leader = true;
                        break;
                    }
                    Some(Link::Pending) => {
                        links = self.links_cv.wait(links).unwrap_or_else(|e| e.into_inner());
                    }
                    Some(Link::Done(first)) => {
                        drop(links);
                        let root = self.to_root.expect("links are made only when writing");
                        let r = fsx::open_dir_beneath(b(root), first.parent().as_bytes())
                            .and_then(|d| fsx::link_at(d.as_fd(), first.file_name(), b(dst), at));
                        match r {
                            Ok(()) => {
                                add(&self.counts.hard_links, 1);
                                self.finish_replace(dst, at, name, tmp, rel);
                                return;
                            }
                            Err(e) => {
                                tracing::info!("{rel}: cannot link to {first} ({e}); copying");
                                break;
                            }
                        }
                    }
                    Some(Link::Failed) => break,
                }
            }
        }
        let ok = if m.kind == Kind::File {
            self.copy_file(node, dst, name, at, src_rel, rel, m, me)
        } else {
            self.copy_special(node, dst, name, at, src_rel, rel, m)
        };
        let ok = ok && self.finish_replace(dst, at, name, tmp, rel);
        if leader {
            let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            links.insert(
                m.ino,
                if ok {
                    Link::Done(rel.clone())
                } else {
                    Link::Failed
                },
            );
            drop(links);
            self.links_cv.notify_all();
        }
    }

    fn finish_replace(
        &self,
        dst: &OwnedFd,
        at: &[u8],
        name: &[u8],
        tmp: Option<&[u8]>,
        rel: &RelPath,
    ) -> bool {
        if tmp.is_none() {
            return true;
        }
        match fsx::rename_at(b(dst), at, b(dst), name) {
            Ok(()) => true,
            Err(e) => {
                let _ = fsx::unlink_at(b(dst), at);
                self.dest_error(rel, "replace", e);
                false
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_file(
        &self,
        node: &Node,
        dst_dir: &OwnedFd,
        name: &[u8],
        at: &[u8],
        src_rel: &RelPath,
        rel: &RelPath,
        m: &Meta,
        me: Option<&Entry>,
    ) -> bool {
        let src = match fsx::open_read_at(b(&node.src), name) {
            Ok(fd) => fd,
            Err(e) => {
                self.problem(src_rel, ProblemKind::Unreadable, "open snapshot file", e);
                return false;
            }
        };
        let xattrs = fsx::read_xattrs(&XattrTarget::Fd(b(&src))).unwrap_or_else(|e| {
            self.problem(
                src_rel,
                ProblemKind::Metadata,
                "read extended attributes",
                e,
            );
            Vec::new()
        });
        let dst = match fsx::create_at(b(dst_dir), at) {
            Ok(fd) => fd,
            Err(e) => {
                self.dest_error(rel, "create file", e);
                return false;
            }
        };
        match fsx::copy_hash(b(&src), b(&dst), m) {
            Ok((hash, written)) => {
                add(&self.counts.bytes, written);
                if let Some(want) = me.and_then(|e| e.hash)
                    && want != hash
                {
                    self.problem(
                        src_rel,
                        ProblemKind::Unreadable,
                        "check content against the manifest",
                        "the snapshot's copy does not match the checksum recorded at backup (bit rot or tampering); restored as found — run `snapring verify`",
                    );
                }
            }
            Err(CopyError::Read(e)) => {
                self.problem(src_rel, ProblemKind::Unreadable, "read snapshot file", e);
                let _ = fsx::unlink_at(b(dst_dir), at);
                return false;
            }
            Err(CopyError::Write(e)) => {
                let _ = fsx::unlink_at(b(dst_dir), at);
                self.dest_error(rel, "write", e);
                return false;
            }
        }
        let r = fsx::apply_owner_mode(b(&dst), m)
            .and_then(|_| fsx::write_xattrs(&XattrTarget::Fd(b(&dst)), &xattrs))
            .and_then(|refused| {
                for n in refused {
                    self.problem(
                        rel,
                        ProblemKind::Metadata,
                        "set extended attribute",
                        format!(
                            "{} not supported by the target file system",
                            String::from_utf8_lossy(&n)
                        ),
                    );
                }
                fsx::apply_times(b(&dst), m)
            });
        if let Err(e) = r {
            self.dest_error(rel, "set file metadata", e);
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_special(
        &self,
        node: &Node,
        dst: &OwnedFd,
        name: &[u8],
        at: &[u8],
        src_rel: &RelPath,
        rel: &RelPath,
        m: &Meta,
    ) -> bool {
        let xattrs = fsx::read_xattrs(&XattrTarget::At(b(&node.src), name)).unwrap_or_default();
        let made = if m.kind == Kind::Symlink {
            match fsx::read_link_at(b(&node.src), name) {
                Ok(t) => fsx::symlink_at(&t, b(dst), at),
                Err(e) => {
                    self.problem(src_rel, ProblemKind::Unreadable, "read symlink", e);
                    return false;
                }
            }
        } else {
            fsx::mknod_at(b(dst), at, m)
        };
        if let Err(e) = made {
            self.dest_error(rel, "create", e);
            return false;
        }
        let r = fsx::apply_meta_at(b(dst), at, m)
            .and_then(|_| fsx::write_xattrs(&XattrTarget::At(b(dst), at), &xattrs))
            .and_then(|_| fsx::apply_times_at(b(dst), at, m));
        if let Err(e) = r {
            self.dest_error(rel, "set metadata", e);
        }
        true
    }

    fn finish(
        self,
        sel: &crate::store::select::Selected,
        store: &Store,
        started_at: String,
        t0: Instant,
    ) -> RestoreReport {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counts;
        let fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take();
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
                    "{conflicts_total} conflicts left alone (--overwrite replaces them), {errors} problems"
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
            dirs_created: g(&c.dirs),
            bytes_restored: g(&c.bytes),
            hard_links: g(&c.hard_links),
            skipped_identical: g(&c.identical),
            overwritten: g(&c.overwritten),
            deleted: g(&c.deleted),
            conflicts_total,
            conflicts,
            errors,
            problems,
        }
    }
}

/// A `--path` argument as the user typed it: relative to the snapshot root.
pub fn parse_path(p: &Path) -> std::result::Result<RelPath, String> {
    let bytes = p.as_os_str().as_bytes();
    if bytes.starts_with(b"/") {
        return Err(format!(
            "--path {} is absolute; give it relative to the snapshot root (for example {})",
            p.display(),
            String::from_utf8_lossy(bytes.trim_ascii_start().strip_prefix(b"/").unwrap_or(bytes))
        ));
    }
    let mut trimmed = bytes.to_vec();
    while trimmed.ends_with(b"/") {
        trimmed.pop();
    }
    while let Some(rest) = trimmed.strip_prefix(b"./") {
        trimmed = rest.to_vec();
    }
    if trimmed == b"." {
        trimmed.clear();
    }
    RelPath::new(&trimmed).map_err(|e| format!("--path {}: {e}", p.display()))
}
