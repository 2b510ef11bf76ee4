//! The concurrent walk: every directory of the source becomes a task on the pool; each
//! task lists its directory, decides link-or-copy for each entry, applies the decision
//! in the staging tree, and queues its subdirectories. Large directories are split into
//! chunks so several workers stat them at once. Does all of a run's tree I/O.
//!
//! Memory is bounded by the directories in flight: a directory's node (three open
//! descriptors, its previous manifest block and its new entries) lives until its last
//! child finishes, then its metadata is applied (directory times are set last, after
//! every child is written) and it is dropped. The only state that grows with the tree
//! is the map of multiply-linked source inodes, as for `rsync -H`.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rustix::io::Errno;

use super::decide::{Decision, PrevView, Reason, decide};
use super::exclude::Excludes;
use crate::error::{Error, io_error};
use crate::failpoint;
use crate::fsx::{self, CopyError, Kind, Meta, XattrTarget, Xattrs, b};
use crate::manifest::{self, Entry};
use crate::pool::{self, Queue};
use crate::relpath::RelPath;
use crate::report::{Counters, Problem, ProblemKind};

/// Entries per task when a directory is split across workers.
const CHUNK: usize = 256;
/// Attempts to copy a file that keeps changing while it is read.
const COPY_ATTEMPTS: u32 = 3;

/// State shared by all workers of one run.
pub struct Walk<'a> {
    pub counters: &'a Counters,
    pub cancel: &'a AtomicBool,
    pub excludes: &'a Excludes,
    pub prev_manifest: Option<&'a manifest::Reader>,
    /// The staging root (absent in a dry run).
    pub staging: Option<&'a OwnedFd>,
    pub manifest: Option<&'a Mutex<manifest::Writer>>,
    /// Dry run: where the plan is printed.
    pub plan: Option<&'a Mutex<Box<dyn Write + Send>>>,
    /// The first fatal error (destination side): the run stops and fails.
    pub fatal: Mutex<Option<Error>>,
    links: Mutex<HashMap<(u64, u64), LinkState>>,
    links_cv: Condvar,
    /// The owner a file created in staging gets by itself (euid, egid), when the staging
    /// root has no setgid bit; a copy of a file with that owner needs no `fchown`.
    creates_as: Option<(u32, u32)>,
    umask: u32,
}

#[derive(Clone)]
enum LinkState {
    /// The first path of this inode is being processed.
    Pending,
    /// Written at this staging path, with this manifest entry.
    Done(Box<(RelPath, Entry)>),
    /// The first path failed; later ones process themselves.
    Failed,
}

/// One directory being backed up.
pub struct DirNode {
    rel: RelPath,
    parent: Option<Arc<DirNode>>,
    src: OwnedFd,
    dst: Option<OwnedFd>,
    prev: Option<OwnedFd>,
    /// The previous snapshot's manifest block for this directory, sorted by name.
    prev_entries: Option<Vec<Entry>>,
    /// The same directory in a staging tree an interrupted run left (resume source).
    resume: Option<OwnedFd>,
    meta: Meta,
    xattrs: Xattrs,
    /// Own chunks still running.
    chunks: AtomicUsize,
    /// Own chunks plus subdirectories not yet finished.
    pending: AtomicUsize,
    block: Mutex<Vec<Entry>>,
}

pub enum Task {
    Dir {
        parent: Arc<DirNode>,
        name: Vec<u8>,
        meta: Meta,
    },
    Chunk {
        dir: Arc<DirNode>,
        names: Vec<Vec<u8>>,
    },
}

/// The root directory's descriptors, opened by the caller.
pub struct Root {
    pub src: OwnedFd,
    pub dst: Option<OwnedFd>,
    pub prev: Option<OwnedFd>,
    pub resume: Option<OwnedFd>,
    pub meta: Meta,
}

impl<'a> Walk<'a> {
    pub fn new(
        counters: &'a Counters,
        cancel: &'a AtomicBool,
        excludes: &'a Excludes,
        prev_manifest: Option<&'a manifest::Reader>,
        staging: Option<&'a OwnedFd>,
        manifest: Option<&'a Mutex<manifest::Writer>>,
        plan: Option<&'a Mutex<Box<dyn Write + Send>>>,
    ) -> Self {
        Walk {
            counters,
            cancel,
            excludes,
            prev_manifest,
            staging,
            manifest,
            plan,
            fatal: Mutex::new(None),
            links: Mutex::new(HashMap::new()),
            links_cv: Condvar::new(),
            creates_as: staging
                .and_then(|s| fsx::fstat(b(s)).ok())
                .filter(|m| m.perm & 0o2000 == 0)
                .map(|_| {
                    (
                        rustix::process::geteuid().as_raw(),
                        rustix::process::getegid().as_raw(),
                    )
                }),
            umask: fsx::process_umask(),
        }
    }

    /// Walks the whole tree from `root` on `threads` workers.
    pub fn run(&self, root: Root, threads: usize) {
        let tasks = match self.start_dir(RelPath::root(), None, root) {
            Some(t) => t,
            None => return,
        };
        pool::run(threads, tasks, self.cancel, |task, q| self.task(task, q));
    }

    /// Records the run's fatal error (the first one wins; later ones are usually the
    /// same cause seen by other workers) and stops the walk.
    fn fail(&self, e: Error) {
        let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            tracing::error!("{e}");
            *f = Some(e);
        } else {
            tracing::debug!("after the first fatal error: {e}");
        }
        self.cancel.store(true, Ordering::Relaxed);
    }

    fn problem(&self, rel: &RelPath, kind: ProblemKind, action: &str, e: impl std::fmt::Display) {
        self.counters.problem(Problem {
            path: rel.escaped(),
            kind,
            action: action.into(),
            error: e.to_string(),
        });
    }

    /// A source-side I/O error: vanished if the entry is gone, else unreadable.
    fn source_error(&self, rel: &RelPath, action: &str, e: &std::io::Error) {
        let kind = if fsx::errno_is(e, Errno::NOENT) {
            ProblemKind::Vanished
        } else {
            ProblemKind::Unreadable
        };
        self.problem(rel, kind, action, e);
    }

    fn say(&self, line: std::fmt::Arguments<'_>) {
        if let Some(p) = self.plan {
            let mut w = p.lock().unwrap_or_else(|e| e.into_inner());
            let _ = w.write_fmt(line);
            let _ = w.write_all(b"\n");
        }
    }

    fn task(&self, t: Task, q: &Queue<Task>) {
        match t {
            Task::Dir { parent, name, meta } => {
                let rel = parent.rel.join(&name);
                match self.open_dir(&parent, &name, &rel, meta) {
                    Some(root) => {
                        if let Some(tasks) = self.start_dir(rel, Some(parent.clone()), root) {
                            tasks.into_iter().for_each(|t| q.push(t));
                        }
                    }
                    None => self.child_done(&parent),
                }
            }
            Task::Chunk { dir, names } => self.chunk(dir, names, q),
        }
    }

    /// Opens a subdirectory on every side and creates it in staging.
    fn open_dir(
        &self,
        parent: &Arc<DirNode>,
        name: &[u8],
        rel: &RelPath,
        meta: Meta,
    ) -> Option<Root> {
        let src = match fsx::open_dir_at(b(&parent.src), name) {
            Ok(fd) => fd,
            Err(e) => {
                self.source_error(rel, "open directory", &e);
                // Keep the directory itself (empty) so the tree's shape is right.
                if let Some(dst) = &parent.dst
                    && let Err(e) = fsx::mkdir_at(b(dst), name).and_then(|_| {
                        let fd = fsx::open_dir_at(b(dst), name)?;
                        fsx::apply_owner_mode(b(&fd), &meta)?;
                        fsx::apply_times(b(&fd), &meta)
                    })
                {
                    self.fail(io_error(e, "create directory", rel.as_path()));
                }
                return None;
            }
        };
        let dst = match &parent.dst {
            Some(pd) => {
                match fsx::mkdir_at(b(pd), name).and_then(|_| fsx::open_dir_at(b(pd), name)) {
                    Ok(fd) => Some(fd),
                    Err(e) => {
                        self.fail(io_error(e, "create directory in staging", rel.as_path()));
                        return None;
                    }
                }
            }
            None => None,
        };
        let side =
            |fd: &Option<OwnedFd>| fd.as_ref().and_then(|p| fsx::open_dir_at(b(p), name).ok());
        Some(Root {
            src,
            dst,
            prev: side(&parent.prev),
            resume: side(&parent.resume),
            meta,
        })
    }

    /// Reads a directory and returns its chunk tasks (the node is owned by them).
    fn start_dir(
        &self,
        rel: RelPath,
        parent: Option<Arc<DirNode>>,
        root: Root,
    ) -> Option<Vec<Task>> {
        if let Err(e) = failpoint::hit("walk.dir") {
            self.fail(io_error(e, "walk", rel.as_path()));
            return None;
        }
        let xattrs = fsx::read_xattrs(&XattrTarget::Fd(b(&root.src))).unwrap_or_else(|e| {
            self.problem(&rel, ProblemKind::Metadata, "read extended attributes", e);
            Vec::new()
        });
        let names = fsx::read_dir_names(b(&root.src)).unwrap_or_else(|e| {
            self.source_error(&rel, "read directory", &e);
            Vec::new()
        });
        let _ = failpoint::hit("walk.after_readdir");
        let prev_entries = match (self.prev_manifest, &root.prev) {
            (Some(m), Some(_)) => m.lookup(&rel).unwrap_or_else(|e| {
                tracing::warn!("previous manifest unusable for {rel}: {e}; comparing by stat");
                None
            }),
            _ => None,
        };
        let chunks: Vec<Vec<Vec<u8>>> = if names.is_empty() {
            vec![vec![]]
        } else {
            names.chunks(CHUNK).map(|c| c.to_vec()).collect()
        };
        let node = Arc::new(DirNode {
            rel,
            parent,
            src: root.src,
            dst: root.dst,
            prev: root.prev,
            prev_entries,
            resume: root.resume,
            meta: root.meta,
            xattrs,
            chunks: AtomicUsize::new(chunks.len()),
            pending: AtomicUsize::new(chunks.len()),
            block: Mutex::new(Vec::new()),
        });
        Some(
            chunks
                .into_iter()
                .map(|names| Task::Chunk {
                    dir: node.clone(),
                    names,
                })
                .collect(),
        )
    }

    fn chunk(&self, dir: Arc<DirNode>, names: Vec<Vec<u8>>, q: &Queue<Task>) {
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            if self.cancel.load(Ordering::Relaxed) {
                return;
            }
            if let Some(e) = self.entry(&dir, name, q) {
                entries.push(e);
            }
        }
        dir.block
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(entries);
        if dir.chunks.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut block =
                std::mem::take(&mut *dir.block.lock().unwrap_or_else(|e| e.into_inner()));
            if let Some(m) = self.manifest {
                let r = m
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write_block(&dir.rel, &mut block);
                if let Err(e) = r {
                    self.fail(io_error(e, "write manifest for", dir.rel.as_path()));
                }
            }
        }
        self.child_done(&dir);
    }

    /// One of `dir`'s chunks or subdirectories finished; the last one finishes `dir`.
    fn child_done(&self, dir: &Arc<DirNode>) {
        if dir.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if self.cancel.load(Ordering::Relaxed) {
            return;
        }
        if let Some(dst) = &dir.dst {
            match fsx::apply_dir_meta(b(dst), &dir.meta, &dir.xattrs) {
                Ok(refused) => self.refused_xattrs(&dir.rel, &refused),
                Err(e) => self.dest_error(&dir.rel, "set directory metadata", e),
            }
        }
        if let Some(p) = &dir.parent {
            self.child_done(p);
        }
    }

    /// An error on the destination: metadata the target refuses is a per-entry problem;
    /// anything else (disk full, I/O error, read-only) stops the run.
    fn dest_error(&self, rel: &RelPath, action: &'static str, e: std::io::Error) {
        if fsx::errno_is(&e, Errno::PERM) {
            self.problem(rel, ProblemKind::Metadata, action, e);
        } else {
            self.fail(io_error(e, action, rel.as_path()));
        }
    }

    fn refused_xattrs(&self, rel: &RelPath, refused: &[Vec<u8>]) {
        for n in refused {
            if n.starts_with(b"user.") || n.starts_with(b"system.posix_acl") {
                self.problem(
                    rel,
                    ProblemKind::Metadata,
                    "set extended attribute",
                    format!(
                        "{} not supported by the backup file system",
                        String::from_utf8_lossy(n)
                    ),
                );
            } else {
                tracing::debug!(
                    "{rel}: backup file system refuses {}",
                    String::from_utf8_lossy(n)
                );
            }
        }
    }

    /// Handles one name of a directory; returns its manifest entry.
    fn entry(&self, dir: &Arc<DirNode>, name: Vec<u8>, q: &Queue<Task>) -> Option<Entry> {
        let rel = dir.rel.join(&name);
        let m = match fsx::lstat_at(b(&dir.src), &name) {
            Ok(m) => m,
            Err(e) => {
                self.source_error(&rel, "stat", &e);
                return None;
            }
        };
        if self.excludes.is_excluded(&rel, m.kind == Kind::Dir) {
            return None;
        }
        if m.kind == Kind::Dir {
            Counters::add(&self.counters.dirs_total, 1);
            self.say(format_args!("mkdir {rel}"));
            dir.pending.fetch_add(1, Ordering::AcqRel);
            q.push(Task::Dir {
                parent: dir.clone(),
                name: name.clone(),
                meta: m,
            });
            return Some(Entry::from_meta(&name, &m));
        }
        Counters::add(&self.counters.files_total, 1);
        if m.kind == Kind::File {
            Counters::add(&self.counters.bytes_total, m.size);
        }
        if m.nlink > 1 {
            self.hard_linked(dir, &name, &rel, &m)
        } else {
            self.leaf(dir, &name, &rel, &m)
        }
    }

    /// A source inode with several names: the first name is backed up normally, the
    /// others become hard links to it inside the new snapshot.
    fn hard_linked(
        &self,
        dir: &Arc<DirNode>,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
    ) -> Option<Entry> {
        let key = (m.dev, m.ino);
        {
            let mut map = self.links.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                match map.get(&key).cloned() {
                    None => {
                        map.insert(key, LinkState::Pending);
                        break;
                    }
                    Some(LinkState::Pending) => {
                        map = self.links_cv.wait(map).unwrap_or_else(|e| e.into_inner())
                    }
                    Some(LinkState::Done(done)) => {
                        let (first, entry) = *done;
                        drop(map);
                        if let Some(e) = self.link_to_first(dir, name, rel, &first, &entry) {
                            return Some(e);
                        }
                        return self.leaf(dir, name, rel, m);
                    }
                    Some(LinkState::Failed) => {
                        drop(map);
                        return self.leaf(dir, name, rel, m);
                    }
                }
            }
        }
        let r = self.leaf(dir, name, rel, m);
        let state = match &r {
            Some(e) => LinkState::Done(Box::new((rel.clone(), e.clone()))),
            None => LinkState::Failed,
        };
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, state);
        self.links_cv.notify_all();
        r
    }

    fn link_to_first(
        &self,
        dir: &DirNode,
        name: &[u8],
        rel: &RelPath,
        first: &RelPath,
        entry: &Entry,
    ) -> Option<Entry> {
        let mut e = entry.clone();
        e.name = name.to_vec();
        let (Some(staging), Some(dst)) = (self.staging, &dir.dst) else {
            self.say(format_args!("link {rel} (same inode as {first})"));
            Counters::add(&self.counters.files_linked, 1);
            return Some(e);
        };
        let r = match open_parent(staging, first) {
            Ok(pfd) => fsx::link_at(b(&pfd), first.file_name(), b(dst), name),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => {
                Counters::add(&self.counters.files_linked, 1);
                Some(e)
            }
            Err(err) if fsx::errno_is(&err, Errno::MLINK) => {
                Counters::add(&self.counters.link_fallbacks, 1);
                None
            }
            Err(err) => {
                self.dest_error(rel, "hard-link in staging", err);
                None
            }
        }
    }

    /// Backs up one non-directory: link it from the previous snapshot if unchanged,
    /// else copy it.
    fn leaf(&self, dir: &DirNode, name: &[u8], rel: &RelPath, m: &Meta) -> Option<Entry> {
        let target = if m.kind == Kind::Symlink {
            match fsx::read_link_at(b(&dir.src), name) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.source_error(rel, "read symlink", &e);
                    return None;
                }
            }
        } else {
            None
        };
        // What the previous snapshot has under this name.
        let prev_entry = dir
            .prev_entries
            .as_deref()
            .and_then(|es| manifest::find(es, name));
        let prev_stat;
        let prev_target;
        let view = match (prev_entry, &dir.prev) {
            (Some(e), _) => Some(PrevView::from_entry(
                e,
                self.prev_manifest.map(|m| m.started).unwrap_or_default(),
            )),
            (None, Some(p)) if dir.prev_entries.is_none() => {
                prev_stat = fsx::lstat_at(b(p), name).ok();
                prev_target = match prev_stat {
                    Some(s) if s.kind == Kind::Symlink => fsx::read_link_at(b(p), name).ok(),
                    _ => None,
                };
                prev_stat
                    .as_ref()
                    .map(|s| PrevView::from_stat(s, prev_target.as_deref()))
            }
            _ => None,
        };
        let mut decision = decide(m, target.as_deref(), view.as_ref());
        let mut src_xattrs: Option<Xattrs> = None;
        if decision == Decision::VerifyContent {
            let same = fsx::open_read_at(b(&dir.src), name).and_then(|fd| fsx::hash_file(b(&fd)));
            decision = match (same, prev_entry.and_then(|e| e.hash)) {
                (Ok(now), Some(before)) if now == before => Decision::CompareXattrs,
                (Err(e), _) => {
                    self.source_error(rel, "read", &e);
                    return None;
                }
                _ => Decision::Copy(Reason::Racy),
            };
        }
        if decision == Decision::CompareXattrs {
            let at = XattrTarget::At(b(&dir.src), name);
            let xs = match fsx::read_xattrs(&at) {
                Ok(x) => x,
                Err(e) => {
                    self.source_error(rel, "read extended attributes", &e);
                    return None;
                }
            };
            let prev_digest = match prev_entry {
                Some(e) => e.xattrs.clone(),
                None => dir
                    .prev
                    .as_ref()
                    .and_then(|p| fsx::read_xattrs(&XattrTarget::At(b(p), name)).ok())
                    .and_then(|x| fsx::xattr_digest(&x)),
            };
            decision = if fsx::xattr_digest(&xs) == prev_digest {
                Decision::Link
            } else {
                Decision::Copy(Reason::MetadataChanged)
            };
            src_xattrs = Some(xs);
        }
        if decision == Decision::Link
            && let Some(e) = self.link_prev(
                dir,
                name,
                rel,
                m,
                prev_entry,
                target.as_deref(),
                src_xattrs.as_ref(),
            )
        {
            return Some(e);
        }
        let reason = match decision {
            Decision::Copy(r) => r,
            _ => Reason::New,
        };
        if let Some(e) = self.resume(dir, name, rel, m, target.as_deref()) {
            return Some(e);
        }
        self.copy(dir, name, rel, m, target, src_xattrs, reason)
    }

    /// Links an unchanged entry from the previous snapshot. `None` means copy instead.
    /// `xattrs`: the source's attributes when the decision already read them.
    #[allow(clippy::too_many_arguments)]
    fn link_prev(
        &self,
        dir: &DirNode,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
        prev_entry: Option<&Entry>,
        target: Option<&[u8]>,
        xattrs: Option<&Xattrs>,
    ) -> Option<Entry> {
        let prev = dir.prev.as_ref()?;
        let mut entry = Entry::from_meta(name, m);
        entry.target = target.map(|t| t.to_vec());
        let Some(dst) = &dir.dst else {
            self.say(format_args!("link {rel}"));
            Counters::add(&self.counters.files_linked, 1);
            entry.hash = prev_entry.and_then(|e| e.hash);
            return Some(entry);
        };
        match fsx::link_at(b(prev), name, b(dst), name) {
            Ok(()) => {}
            Err(e) if fsx::errno_is(&e, Errno::MLINK) || fsx::errno_is(&e, Errno::XDEV) => {
                tracing::debug!("{rel}: link failed ({e}); copying instead");
                Counters::add(&self.counters.link_fallbacks, 1);
                return None;
            }
            Err(e) if fsx::errno_is(&e, Errno::NOENT) || fsx::errno_is(&e, Errno::PERM) => {
                tracing::warn!(
                    "{rel}: previous snapshot's copy cannot be linked ({e}); copying instead"
                );
                Counters::add(&self.counters.link_fallbacks, 1);
                return None;
            }
            Err(e) => {
                self.dest_error(rel, "hard-link from previous snapshot", e);
                return None;
            }
        }
        Counters::add(&self.counters.files_linked, 1);
        match prev_entry {
            Some(p) => {
                entry.hash = p.hash;
                entry.xattrs = p.xattrs.clone();
            }
            None => {
                // A tree taken over without a manifest: hash the linked file once (the
                // manifest promises a checksum for every file) and record its xattrs
                // (already read by the comparison, which always runs without a ctime).
                entry.xattrs = match xattrs {
                    Some(x) => fsx::xattr_digest(x),
                    None => fsx::read_xattrs(&XattrTarget::At(b(dst), name))
                        .ok()
                        .and_then(|x| fsx::xattr_digest(&x)),
                };
                if m.kind == Kind::File {
                    entry.hash = fsx::open_read_at(b(dst), name)
                        .and_then(|fd| fsx::hash_file(b(&fd)))
                        .ok();
                }
            }
        }
        Some(entry)
    }

    /// Reuses a file a previous, interrupted run already copied into its staging tree,
    /// when that copy is finished (its metadata, set last, matches the source).
    fn resume(
        &self,
        dir: &DirNode,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
        target: Option<&[u8]>,
    ) -> Option<Entry> {
        let (res, dst) = (dir.resume.as_ref()?, dir.dst.as_ref()?);
        if m.kind != Kind::File {
            return None;
        }
        let s = fsx::lstat_at(b(res), name).ok()?;
        if s.kind != m.kind
            || s.size != m.size
            || s.mtime != m.mtime
            || s.perm != m.perm
            || s.uid != m.uid
            || s.gid != m.gid
        {
            return None;
        }
        let xs = fsx::read_xattrs(&XattrTarget::At(b(&dir.src), name)).ok()?;
        if fsx::read_xattrs(&XattrTarget::At(b(res), name)).ok()? != xs {
            return None;
        }
        let hash = fsx::open_read_at(b(res), name)
            .and_then(|fd| fsx::hash_file(b(&fd)))
            .ok()?;
        fsx::link_at(b(res), name, b(dst), name).ok()?;
        tracing::debug!("{rel}: resumed from an interrupted run's copy");
        Counters::add(&self.counters.files_linked, 1);
        let mut e = Entry::from_meta(name, m);
        e.hash = Some(hash);
        e.xattrs = fsx::xattr_digest(&xs);
        e.target = target.map(|t| t.to_vec());
        Some(e)
    }

    #[allow(clippy::too_many_arguments)]
    fn copy(
        &self,
        dir: &DirNode,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
        target: Option<Vec<u8>>,
        xattrs: Option<Xattrs>,
        reason: Reason,
    ) -> Option<Entry> {
        let Some(dst) = &dir.dst else {
            self.say(format_args!("copy {rel} ({})", reason.as_str()));
            Counters::add(&self.counters.files_transferred, 1);
            if m.kind == Kind::File {
                Counters::add(&self.counters.bytes_transferred, m.size);
            }
            let mut e = Entry::from_meta(name, m);
            e.target = target;
            return Some(e);
        };
        if let Err(e) = failpoint::hit("walk.copy") {
            self.fail(io_error(e, "copy", rel.as_path()));
            return None;
        }
        let r = match m.kind {
            Kind::File => self.copy_file(dir, dst, name, rel, m, xattrs),
            _ => self.copy_special(dir, dst, name, rel, m, target, xattrs),
        };
        if r.is_some() {
            Counters::add(&self.counters.files_transferred, 1);
        }
        r
    }

    /// Copies a regular file. `m`: the walk's `lstat` of it. `xattrs`: the source's
    /// attributes when the decision already read them (otherwise they are read here,
    /// through the open file).
    ///
    /// Calls are what a backup over NFS pays for, so a copy makes only the ones it
    /// needs: the walk's `lstat` serves as the "before" stat (the `fstat` after the copy
    /// must match it, inode included), the file is created with its final mode (no
    /// `fchmod` when the umask leaves it whole and there are no special bits), and
    /// `fchown` is skipped when the file already has the owner it gets by creation.
    #[allow(clippy::too_many_arguments)]
    fn copy_file(
        &self,
        dir: &DirNode,
        dst_dir: &OwnedFd,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
        xattrs: Option<Xattrs>,
    ) -> Option<Entry> {
        let src = match fsx::open_read_at(b(&dir.src), name) {
            Ok(fd) => fd,
            Err(e) => {
                self.source_error(rel, "open", &e);
                return None;
            }
        };
        let xattrs = match xattrs
            .map(Ok)
            .unwrap_or_else(|| fsx::read_xattrs(&XattrTarget::Fd(b(&src))))
        {
            Ok(x) => x,
            Err(e) => {
                self.problem(rel, ProblemKind::Metadata, "read extended attributes", e);
                Vec::new()
            }
        };
        let create_perm = if m.perm & 0o7000 == 0 {
            m.perm & 0o777
        } else {
            0o600
        };
        let dst = match fsx::create_at_mode(b(dst_dir), name, create_perm) {
            Ok(fd) => fd,
            Err(e) => {
                self.dest_error(rel, "create file in staging", e);
                return None;
            }
        };
        let mut attempt = 0;
        let (meta, hash) = loop {
            attempt += 1;
            let before = if attempt == 1 {
                *m
            } else {
                match fsx::fstat(b(&src)) {
                    Ok(m) => m,
                    Err(e) => {
                        self.source_error(rel, "stat", &e);
                        return None;
                    }
                }
            };
            let hash = match fsx::copy_hash(b(&src), b(&dst), &before) {
                Ok((h, written)) => {
                    Counters::add(&self.counters.bytes_transferred, written);
                    h
                }
                Err(CopyError::Read(e)) => {
                    self.source_error(rel, "read", &e);
                    let _ = fsx::unlink_at(b(dst_dir), name);
                    return None;
                }
                Err(CopyError::Write(e)) => {
                    self.dest_error(rel, "write to staging", e);
                    return None;
                }
            };
            let _ = failpoint::hit("walk.after_copy");
            let after = fsx::fstat(b(&src)).unwrap_or(before);
            if after.ino == before.ino
                && after.size == before.size
                && after.mtime == before.mtime
                && after.ctime == before.ctime
            {
                break (before, hash);
            }
            if attempt == 1 {
                Counters::add(&self.counters.changed_during_backup, 1);
            }
            if attempt >= COPY_ATTEMPTS {
                self.problem(rel, ProblemKind::ChangedDuringCopy, "copy", format!("still changing after {COPY_ATTEMPTS} attempts; the copy may mix old and new content"));
                break (before, hash);
            }
            tracing::info!("{rel} changed while it was copied; copying again");
            if let Err(e) = rustix::fs::ftruncate(&dst, 0) {
                self.dest_error(rel, "truncate in staging", e.into());
                return None;
            }
        };
        let need_chown = self.creates_as != Some((meta.uid, meta.gid));
        let need_chmod =
            create_perm & !self.umask != meta.perm || (need_chown && meta.perm & 0o6000 != 0);
        let r = (|| {
            if need_chown {
                rustix::fs::fchown(
                    &dst,
                    Some(rustix::fs::Uid::from_raw(meta.uid)),
                    Some(rustix::fs::Gid::from_raw(meta.gid)),
                )?;
            }
            if need_chmod {
                rustix::fs::fchmod(&dst, rustix::fs::Mode::from_raw_mode(meta.perm))?;
            }
            let refused = fsx::write_xattrs(&XattrTarget::Fd(b(&dst)), &xattrs)?;
            self.refused_xattrs(rel, &refused);
            fsx::apply_times(b(&dst), &meta)
        })();
        if let Err(e) = r {
            self.dest_error(rel, "set file metadata", e);
        }
        let mut e = Entry::from_meta(name, &meta);
        e.hash = Some(hash);
        e.xattrs = fsx::xattr_digest(&xattrs);
        Some(e)
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_special(
        &self,
        dir: &DirNode,
        dst: &OwnedFd,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
        target: Option<Vec<u8>>,
        xattrs: Option<Xattrs>,
    ) -> Option<Entry> {
        let xattrs = match xattrs {
            Some(x) => x,
            None => fsx::read_xattrs(&XattrTarget::At(b(&dir.src), name)).unwrap_or_else(|e| {
                self.problem(rel, ProblemKind::Metadata, "read extended attributes", e);
                Vec::new()
            }),
        };
        let made = match (m.kind, &target) {
            (Kind::Symlink, Some(t)) => fsx::symlink_at(t, b(dst), name),
            _ => fsx::mknod_at(b(dst), name, m),
        };
        if let Err(e) = made {
            self.dest_error(rel, "create in staging", e);
            return None;
        }
        let r = (|| {
            fsx::apply_meta_at(b(dst), name, m)?;
            let refused = fsx::write_xattrs(&XattrTarget::At(b(dst), name), &xattrs)?;
            self.refused_xattrs(rel, &refused);
            fsx::apply_times_at(b(dst), name, m)
        })();
        if let Err(e) = r {
            self.dest_error(rel, "set metadata", e);
        }
        let mut e = Entry::from_meta(name, m);
        e.target = target;
        e.xattrs = fsx::xattr_digest(&xattrs);
        Some(e)
    }
}

/// Opens the directory holding `rel` inside the tree at `root`, one component at a
/// time (no path-length limit).
pub fn open_parent(root: &OwnedFd, rel: &RelPath) -> std::io::Result<OwnedFd> {
    let comps: Vec<&[u8]> = rel.components().collect();
    let mut cur = fsx::open_dir_at(b(root), b".")?;
    for c in &comps[..comps.len().saturating_sub(1)] {
        cur = fsx::open_dir_at(b(&cur), c)?;
    }
    Ok(cur)
}
