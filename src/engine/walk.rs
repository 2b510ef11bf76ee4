//! The backup walk: a [`Visitor`] of the one traversal (`traverse.rs`) over the source.
//! For each entry it runs `lstat`, applies the excludes, decides link-or-copy
//! (`decide.rs`, pure) and writes the outcome through a [`Sink`] (the hard-link store,
//! or a dry run's recording sink). It reads the source; it writes only through the sink.
//!
//! Memory is bounded by the directories in flight: a directory's state (its source
//! descriptor, the sink's directory, its previous manifest block and its new entries)
//! lives until its last child is done; then its metadata is applied (times last, after
//! every child is written). The only state that grows with the tree is the map of
//! multiply-linked source inodes, as for `rsync -H`.
//!
//! A directory's metadata, in the snapshot and in its parent's manifest block, is one
//! stat: the parent's `lstat` of it, or, when its times moved before or during its own
//! listing, the `fstat` after the listing it kept ([`Walk::list`]). A parent's block is
//! written once its own entries are visited ([`Visitor::visited`]); a subdirectory's
//! `open` corrects its entry there while the block is held, or in the manifest after
//! ([`Sink::correct_entry`], rare: a directory that changed as the walk reached it).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rustix::io::Errno;

use super::decide::{Decision, PrevView, Reason, decide};
use crate::error::{Error, io_error};
use crate::exclude::Excludes;
use crate::failpoint;
use crate::fsx::{self, CopyError, Kind, Meta, XattrTarget, Xattrs, b};
use crate::manifest::{self, Entry};
use crate::relpath::RelPath;
use crate::report::{Counters, Problem, ProblemKind};
use crate::sink::{Linked, Sink};
use crate::traverse::{self, Dir, Fence, OneFs, Opened, Step, Visitor};

/// Attempts to copy a file that keeps changing while it is read.
const COPY_ATTEMPTS: u32 = 3;
/// Listings of a directory that changes while it is listed ([`Walk::list`]).
const LIST_ATTEMPTS: u32 = 3;

/// What backing up one non-directory gave.
enum Leaf {
    /// Linked or copied from the source: the new entry.
    Written(Entry),
    /// The source could not be read; the previous snapshot's version was linked instead,
    /// with its previous manifest entry (the problem is reported).
    Kept(Entry),
    /// Left out of the new snapshot (the problem, if any, is reported).
    Dropped,
}

impl Leaf {
    fn entry(self) -> Option<Entry> {
        match self {
            Leaf::Written(e) | Leaf::Kept(e) => Some(e),
            Leaf::Dropped => None,
        }
    }
}

/// A source-side error reading an entry that was to be copied: the action and the error.
type SourceError = (&'static str, std::io::Error);

/// A backup walk into sink `S`: state shared by all workers of one run.
pub struct Walk<'a, S: Sink> {
    pub counters: &'a Counters,
    pub cancel: &'a AtomicBool,
    pub excludes: &'a Excludes,
    pub prev_manifest: Option<&'a manifest::Reader>,
    pub sink: &'a S,
    /// The previous snapshot, in words (its run id or its name), for problem texts.
    prev_label: Option<String>,
    /// Entries `verify` found damaged in a previous snapshot compared by stat (a copied
    /// tree not trusted: [`crate::repo::Previous::damaged`]): copied, never linked.
    prev_damaged: Option<&'a std::collections::HashSet<RelPath>>,
    /// The record of a previous snapshot compared by stat that is paired with a run's
    /// manifest it differs from ([`crate::repo::Previous::record`]): a file is linked
    /// from that tree only when it hashes as the record says ([`Walk::vouched`]).
    prev_record: Option<&'a manifest::Reader>,
    /// The first fatal error (destination side): the run stops and fails.
    pub fatal: Mutex<Option<Error>>,
    /// The source root, taken by the root's `open`.
    root: Mutex<Option<OwnedFd>>,
    /// A copy of the source root's descriptor, kept for the whole walk: asked whether
    /// the source itself still answers when an entry says ENOTCONN ([`Walk::source_lost`]).
    root_probe: Mutex<Option<OwnedFd>>,
    links: Mutex<HashMap<(u64, u64), LinkState>>,
    links_cv: Condvar,
    /// Which names of the root's listing are walked (a shard worker's unit: a name
    /// range of one directory); `None`: all of them.
    root_names: Option<RootFilter<'a>>,
    /// Shared with the walks of the shard worker's other units (see [`Walk::gate`]).
    gate: Option<&'a crate::pool::Gate>,
    /// Stay on the source's file system (`one_file_system`; see [`Walk::stay_on`]).
    one_fs: Option<&'a OneFs>,
    /// The store the run writes into, not to be walked into (see [`Walk::fenced`]).
    fence: Option<(Fence, &'a std::path::Path)>,
    /// The root's metadata as its listing kept it ([`Walk::root_meta`]).
    root_meta: Mutex<Option<Meta>>,
    /// Whether a fatal error no longer counts (see [`Walk::moot_if`]).
    moot: Option<Moot<'a>>,
    /// Entries copied or linked without attributes the store does not support whose
    /// refusal is only logged (security modules' labels: [`fsx::xattr_refusal_said`]),
    /// and those names: one `info` line at the end of the walk, not a warning of every
    /// run (still recorded as refused in the manifest).
    unsaid_refusals: Mutex<(u64, std::collections::BTreeSet<Vec<u8>>)>,
}

/// Says whether a walk's fatal error no longer counts ([`Walk::moot_if`]).
pub type Moot<'a> = Box<dyn Fn() -> bool + Send + Sync + 'a>;

/// Keeps a name of the root directory's listing.
pub type RootFilter<'a> = Box<RootNames<'a>>;

/// Which names of the walk's root it takes ([`RootFilter`] unboxed).
pub type RootNames<'a> = dyn Fn(&[u8]) -> bool + Send + Sync + 'a;

#[derive(Clone)]
enum LinkState {
    /// The first path of this inode is being processed.
    Pending,
    /// Written at this path of the new snapshot, with this manifest entry; the first
    /// name's `lstat` (the stat every other name of the inode must show).
    Done(Box<(RelPath, Entry, Meta)>),
    /// The first path failed; later ones process themselves.
    Failed,
}

/// One directory being backed up.
pub struct DirState<D> {
    src: OwnedFd,
    out: D,
    /// The previous snapshot's manifest block for this directory, sorted by name.
    prev_entries: Option<Vec<Entry>>,
    /// Without one, the block of the record its tree is paired with
    /// ([`Walk::record`]), sorted by name: empty when the record has none.
    record: Option<Vec<Entry>>,
    meta: Meta,
    xattrs: Xattrs,
    /// The new manifest block, filled by the chunks, and whether it was written
    /// ([`Visitor::visited`]).
    block: Mutex<(Vec<Entry>, bool)>,
    /// Names of the previous snapshot's block added to a listing that failed (see
    /// [`Walk::list`]): walked as listed ones, but one gone from the source is no
    /// problem (it was deleted, or it was never there).
    unlisted: std::collections::HashSet<Vec<u8>>,
}

type Node<D> = Dir<DirState<D>>;

impl<'a, S: Sink> Walk<'a, S> {
    pub fn new(
        counters: &'a Counters,
        cancel: &'a AtomicBool,
        excludes: &'a Excludes,
        prev_manifest: Option<&'a manifest::Reader>,
        sink: &'a S,
    ) -> Self {
        Walk {
            counters,
            cancel,
            excludes,
            prev_manifest,
            sink,
            prev_label: None,
            prev_damaged: None,
            prev_record: None,
            fatal: Mutex::new(None),
            root: Mutex::new(None),
            root_probe: Mutex::new(None),
            links: Mutex::new(HashMap::new()),
            links_cv: Condvar::new(),
            root_names: None,
            gate: None,
            one_fs: None,
            fence: None,
            root_meta: Mutex::new(None),
            moot: None,
            unsaid_refusals: Mutex::default(),
        }
    }

    /// Asked at the first fatal error: `true` when it no longer counts (a shard
    /// worker's unit taken over by another worker while this one was stopped, whose
    /// commit removed this one's work directory: the worker discards the unit and the
    /// run goes on). Such an error is logged as information, not as an `ERROR`.
    pub fn moot_if(mut self, moot: Moot<'a>) -> Self {
        self.moot = Some(moot);
        self
    }

    /// The root directory's metadata as its listing kept it (the `fstat` after the
    /// listing when the root changed meanwhile), which the walk gave the snapshot's
    /// root: the manifest's root entry must be made of it, not of the `fstat` from
    /// before the walk. `None` before the root is opened.
    pub fn root_meta(&self) -> Option<Meta> {
        *self.root_meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A directory listed (`meta`: the stat its listing kept, which its `finish`
    /// applies): its entry in its parent's block, made from the parent's `lstat` of it
    /// when the parent was listed, takes that stat when it differs. The entry is still
    /// there to correct: the parent's block is written only once each subdirectory it
    /// walks into is opened ([`Visitor::listed`]). Before, a directory that gained an
    /// entry between its parent's listing and its own had its later times in the
    /// snapshot and its earlier ones in the manifest: `verify` called every such
    /// snapshot damaged for as long as it was kept.
    fn relisted(&self, parent: Option<&Node<S::Dir>>, name: &[u8], was: &Meta, meta: &Meta) {
        let Some(parent) = parent else {
            *self.root_meta.lock().unwrap_or_else(|e| e.into_inner()) = Some(*meta);
            return;
        };
        // Looked for only when the listing took a later stat (rare): a large
        // directory's block is not scanned for each of its subdirectories.
        if (was.mtime, was.ctime) == (meta.mtime, meta.ctime) {
            return;
        }
        let mut fresh = Entry::from_meta(name, meta);
        if let Some(owner) = self.sink.dir_owner_held(meta) {
            (fresh.uid, fresh.gid) = owner;
        }
        let mut block = parent.state.block.lock().unwrap_or_else(|e| e.into_inner());
        let (entries, written) = &mut *block;
        if *written {
            // Written once the parent's own items were visited ([`Visitor::visited`]):
            // corrected in the manifest, where it is.
            drop(block);
            if let Err(e) = self.sink.correct_entry(&parent.rel, fresh) {
                self.fail(io_error(e, "correct manifest of", parent.rel.as_path()));
            }
            return;
        }
        if let Some(e) = entries
            .iter_mut()
            .rev()
            .find(|e| e.name == name && e.kind == Kind::Dir)
        {
            *e = fresh;
        }
    }

    /// Never walks into the store at `store` (met inside the source through another
    /// mount), `fence` its `(st_dev, st_ino)` ([`store_fence`]; `None`: no store yet):
    /// it is left out of the snapshot, a problem of kind `store_in_source` naming where
    /// it was met (the run is `partial`), and a warning.
    pub fn fenced(mut self, store: &'a std::path::Path, fence: Option<Fence>) -> Self {
        self.fence = fence.map(|f| (f, store));
        self
    }

    /// Stays on one file system (`one_file_system`): a directory on another device than
    /// `fs`'s is kept as an empty directory with its own metadata (and xattrs), and
    /// `fs` counts it.
    pub fn stay_on(mut self, fs: &'a OneFs) -> Self {
        self.one_fs = Some(fs);
        self
    }

    /// Walks only the names of the root's listing that `keep` accepts (its manifest
    /// block then holds only those).
    pub fn only_root_names(mut self, keep: RootFilter<'a>) -> Self {
        self.root_names = Some(keep);
        self
    }

    /// Runs each task of the walk under a permit of `gate`, which the walks of a shard
    /// worker's other units share: together they keep at most its `--jobs` tasks
    /// running.
    pub fn gate(mut self, gate: &'a crate::pool::Gate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Names the previous snapshot (its run id, else its name) in the problem text of
    /// an unreadable entry whose previous version is kept.
    pub fn kept_from(mut self, label: Option<String>) -> Self {
        self.prev_label = label;
        self
    }

    /// Copies rather than links the entries of `damaged` (a previous snapshot compared
    /// by stat whose record `verify` checked: [`crate::repo::Previous::damaged`]).
    pub fn damaged(mut self, damaged: Option<&'a std::collections::HashSet<RelPath>>) -> Self {
        self.prev_damaged = damaged;
        self
    }

    /// Links a file from the previous snapshot compared by stat only when it hashes as
    /// `record` says (the manifest of the run its tree is paired with, not trusted to
    /// describe the tree: [`crate::repo::Previous::record`]); else copies it from the
    /// source.
    pub fn record(mut self, record: Option<&'a manifest::Reader>) -> Self {
        self.prev_record = record;
        self
    }

    /// Walks the whole source from its open root (`meta`: its `fstat`) on `threads`.
    pub fn run(&self, src: OwnedFd, meta: Meta, threads: usize) {
        self.run_at(src, meta, RelPath::root(), threads);
    }

    /// Walks from the open directory at `rel` of the source (a shard worker's unit):
    /// every path it reports, looks up in the previous manifest or writes into the new
    /// one is a path from the source's root.
    pub fn run_at(&self, src: OwnedFd, meta: Meta, rel: RelPath, threads: usize) {
        *self.root_probe.lock().unwrap_or_else(|e| e.into_inner()) = src.try_clone().ok();
        *self.root.lock().unwrap_or_else(|e| e.into_inner()) = Some(src);
        traverse::walk_at(self, meta, rel, threads, self.gate, self.cancel);
        let (n, names) = std::mem::take(
            &mut *self
                .unsaid_refusals
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if n > 0 {
            tracing::info!("{}", unsaid_refusals_line(n, &names, "backed up"));
        }
    }

    /// Records the run's fatal error (the first one wins; later ones are usually the
    /// same cause seen by other workers) and stops the walk.
    fn fail(&self, e: Error) {
        let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            // What failed, without what it means for the run (a shard unit's worker is
            // not abandoned by a full disk): the command's own message says that.
            if self.moot.as_ref().is_some_and(|m| m()) {
                tracing::info!("{} (no longer this walk's work)", e.cause());
            } else {
                tracing::error!("{}", e.cause());
            }
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

    /// The store, met at `rel` of the source (another mount of the same file system):
    /// not walked into, not in the snapshot. Without this the walk copied the staging
    /// tree it was writing into itself, one level deeper each time, until the stack
    /// overflowed.
    fn store_in_source(&self, rel: &RelPath) {
        let store = self.fence.map(|(_, p)| p.display().to_string());
        let store = store.as_deref().unwrap_or("");
        tracing::warn!(
            "{rel}: this directory of the source is the backup store {store} (the same directory, reached through another mount): left out of the snapshot; exclude it or move the store out of the source"
        );
        self.problem(
            rel,
            ProblemKind::StoreInSource,
            "walk into directory",
            format!("it is the backup store {store}, reached through another mount: left out of the snapshot; exclude this path or move the store out of the source"),
        );
    }

    /// A source-side I/O error: vanished if the entry is gone, else unreadable.
    /// Where a kept previous version comes from, for the messages: `from <run>`.
    fn kept_source(&self) -> String {
        match &self.prev_label {
            Some(l) => format!("from {l}"),
            None => "from the previous snapshot".to_string(),
        }
    }

    /// `rel` could not be read or seen (`action`, `e`) and its previous version was
    /// kept: warned about, and an `unreadable` problem that says so.
    /// `copied`: the store refused to link it, and it was copied ([`Walk::copy_prev`]).
    fn kept_previous(&self, rel: &RelPath, action: &str, e: &dyn std::fmt::Display, copied: bool) {
        let from = self.kept_source();
        let note = if copied { COPIED_NOTE } else { "" };
        tracing::warn!("{rel}: {action}: {e}; keeping the previous version ({from}){note}");
        self.problem(
            rel,
            ProblemKind::Unreadable,
            action,
            format!("{e}; the previous version ({from}) was kept{note}"),
        );
    }

    /// `rel`, kept from the previous snapshot in a directory the source would not show,
    /// was copied from it (the store refused the link): an `unreadable` problem that
    /// says so (the directory's own problem says its entries were kept).
    fn kept_copied(&self, rel: &RelPath) {
        let from = self.kept_source();
        self.problem(
            rel,
            ProblemKind::Unreadable,
            "keep previous version",
            format!(
                "the source could not be seen; its previous version ({from}) was kept{COPIED_NOTE}"
            ),
        );
    }

    /// Whether `e` (the source's, at `rel`) says the source's file system is gone (a
    /// FUSE server that died, a mount torn away: ENOTCONN): then the run fails
    /// ([`Error::SourceLost`], invariant 4) rather than keep every entry's previous
    /// version as "unreadable" and publish a `partial` snapshot that rotates history
    /// away. ESTALE alone is an entry's (an NFS file deleted on the server during the
    /// walk): the run checks its source root when the walk ends (`engine::backup`).
    fn source_lost(&self, rel: &RelPath, action: &str, e: &std::io::Error) -> bool {
        if !fsx::errno_is(e, Errno::NOTCONN) {
            return false;
        }
        // A dead mount inside the source (a user's sshfs in /home) answers ENOTCONN
        // for its own mount point while the source answers: that entry's problem,
        // as any unreadable entry, not the run's (it failed every run until someone
        // unmounted it).
        let probe = self.root_probe.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = probe.as_ref()
            && rustix::fs::fstat(fd).is_ok()
        {
            return false;
        }
        drop(probe);
        self.fail(Error::SourceLost {
            root: None,
            detail: format!("{action} {rel}: {e}"),
        });
        true
    }

    fn source_error(&self, rel: &RelPath, action: &str, e: &std::io::Error) {
        if self.source_lost(rel, action, e) {
            return;
        }
        // `NotFound`: ENOENT, or a name no longer of the type its `lstat` gave.
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ProblemKind::Vanished
        } else {
            ProblemKind::Unreadable
        };
        self.problem(rel, kind, action, e);
    }

    /// An error on the destination: metadata the target refuses is a per-entry problem;
    /// anything else (disk full, I/O error, read-only) stops the run.
    fn dest_error(&self, rel: &RelPath, action: &'static str, e: std::io::Error) {
        if let Some(o) = fsx::owner_not_set(&e) {
            if o.cleared != 0 {
                Counters::add(&self.counters.setid_cleared, 1);
            }
            self.problem(rel, ProblemKind::Metadata, "set owner", e);
        } else if fsx::errno_is(&e, Errno::PERM) {
            self.problem(rel, ProblemKind::Metadata, action, e);
        } else {
            self.fail(io_error(e, action, rel.as_path()));
        }
    }

    fn refused_xattrs(&self, rel: &RelPath, refused: &[(Vec<u8>, &str)]) {
        for p in refused_xattr_problems(rel, refused) {
            self.counters.problem(p);
        }
        self.unsaid(refused.iter().map(|(n, why)| (n, *why)));
    }

    /// Counts an entry kept without attributes the store does not support whose
    /// refusal is only logged ([`fsx::xattr_refusal_said`]), among `refused`.
    fn unsaid<'n>(&self, refused: impl Iterator<Item = (&'n Vec<u8>, &'n str)>) {
        let mut names = refused
            .filter(|(n, why)| !fsx::xattr_refusal_said(n, why))
            .peekable();
        if names.peek().is_none() {
            return;
        }
        let mut u = self
            .unsaid_refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        u.0 += 1;
        for (n, _) in names {
            add_unsaid(&mut u.1, n);
        }
    }

    /// Opens a subdirectory of the source and makes it in the new snapshot.
    fn open_sub(
        &self,
        parent: &Node<S::Dir>,
        name: &[u8],
        rel: &RelPath,
        meta: &Meta,
    ) -> Option<(OwnedFd, S::Dir)> {
        let _ = failpoint::hit("walk.open_dir");
        let src = match fsx::open_same_dir(b(&parent.state.src), name, (meta.dev, meta.ino), false)
        {
            Ok(fd) => fd,
            Err(e) => {
                // Keep the directory itself (empty) so the tree's shape is right. Its
                // metadata is refused as any directory's is (an owner a backup user
                // may not give, EPERM): a problem of this entry, not of the run.
                // Unless it is gone, its entries are the previous snapshot's (as an
                // unreadable file keeps its previous version): not dropped from the
                // history run after run.
                match self.sink.mkdir(&parent.state.out, name, rel) {
                    Ok(d) => {
                        let n = if e.kind() != std::io::ErrorKind::NotFound {
                            self.keep_prev_contents(&d, rel)
                        } else {
                            0
                        };
                        if n > 0 {
                            // The problem says what the snapshot holds instead.
                            let from = self.kept_source();
                            tracing::warn!(
                                "{rel}: open directory: {e}; keeping its {n} entries of the previous snapshot ({from})"
                            );
                            self.problem(
                                rel,
                                ProblemKind::Unreadable,
                                "open directory",
                                format!("{e}; its {n} entries of the previous snapshot ({from}) were kept"),
                            );
                        } else {
                            self.source_error(rel, "open directory", &e);
                        }
                        match self.sink.finish_dir(&d, meta, &Vec::new()) {
                            Ok(refused) => self.refused_xattrs(rel, &refused),
                            Err(e) => self.dest_error(rel, "set directory metadata", e),
                        }
                    }
                    Err(err) => {
                        self.source_error(rel, "open directory", &e);
                        self.fail(io_error(err, "create directory in staging", rel.as_path()))
                    }
                }
                return None;
            }
        };
        match self.sink.mkdir(&parent.state.out, name, rel) {
            Ok(out) => Some((src, out)),
            Err(e) => {
                self.fail(io_error(e, "create directory in staging", rel.as_path()));
                None
            }
        }
    }

    /// Handles one non-directory name; returns its manifest entry.
    fn entry(&self, dir: &Node<S::Dir>, name: &[u8], rel: &RelPath, m: &Meta) -> Option<Entry> {
        Counters::add(&self.counters.files_total, 1);
        if m.kind == Kind::File {
            Counters::add(&self.counters.bytes_total, m.size);
        }
        if m.nlink > 1 {
            self.hard_linked(dir, name, rel, m)
        } else {
            self.leaf(dir, name, rel, m).entry()
        }
    }

    /// A source inode with several names: the first name is backed up normally, the
    /// others become hard links to it inside the new snapshot.
    fn hard_linked(
        &self,
        dir: &Node<S::Dir>,
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
                    Some(LinkState::Pending) => match self.gate {
                        // The first name's copy may be long: this task's permit goes
                        // to the shard worker's other unit meanwhile (`jobs` names
                        // of one inode would otherwise hold every permit). Taken back
                        // with the map unlocked: the first name's task needs it.
                        Some(g) => {
                            g.lend(|| drop(self.links_cv.wait(map)));
                            map = self.links.lock().unwrap_or_else(|e| e.into_inner());
                        }
                        None => map = self.links_cv.wait(map).unwrap_or_else(|e| e.into_inner()),
                    },
                    Some(LinkState::Done(done)) => {
                        let (first, entry, first_meta) = *done;
                        drop(map);
                        if !same_inode(&first_meta, m) {
                            return self.not_joined(dir, name, rel, m, &first);
                        }
                        if let Some(e) = self.link_to_first(dir, name, rel, &first, &entry) {
                            return Some(e);
                        }
                        return self.leaf(dir, name, rel, m).entry();
                    }
                    Some(LinkState::Failed) => {
                        drop(map);
                        return self.leaf(dir, name, rel, m).entry();
                    }
                }
            }
        }
        let r = self.leaf(dir, name, rel, m);
        // A kept previous version is not this inode's new copy: the other names
        // back themselves up (and each keeps its own previous version if unreadable).
        let state = match &r {
            Leaf::Written(e) => LinkState::Done(Box::new((rel.clone(), e.clone(), *m))),
            Leaf::Kept(_) | Leaf::Dropped => LinkState::Failed,
        };
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, state);
        self.links_cv.notify_all();
        r.entry()
    }

    /// A name reporting the `(st_dev, st_ino)` of an inode already written at `first`,
    /// but not its stat: not the same file (an NFS server or a FUSE layer that gives two
    /// files one inode number), or an inode that changed between the two `lstat`s.
    /// Joined, its content would be the first name's, its own silently lost: it is
    /// backed up on its own, in no hard-link group, and the problem names both paths.
    fn not_joined(
        &self,
        dir: &Node<S::Dir>,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
        first: &RelPath,
    ) -> Option<Entry> {
        tracing::warn!(
            "{rel}: reports the inode number of {first} (st_dev {}, st_ino {}) but not its size, times, mode or owner: backed up on its own, not as a hard link to it",
            m.dev,
            m.ino
        );
        self.problem(
            rel,
            ProblemKind::Metadata,
            "join hard link",
            format!(
                "reports the inode of {first} (st_dev {}, st_ino {}) with another size, times, mode or owner (a file system reusing inode numbers, or a file changed during the backup): backed up on its own, not linked to {first}",
                m.dev, m.ino
            ),
        );
        let mut e = self.leaf(dir, name, rel, m).entry()?;
        // Its own inode in the snapshot: in no group (one group is one inode).
        e.group = None;
        Some(e)
    }

    /// `name` is there but its `lstat` failed (`action`, `e`: EIO, ESTALE): its previous
    /// snapshot's version is kept (a directory with all it held then), as an unreadable
    /// file's is, and the problem says so. Without a previous version it is left out.
    fn keep_prev(
        &self,
        dir: &Node<S::Dir>,
        name: &[u8],
        rel: &RelPath,
        action: &str,
        e: &std::io::Error,
    ) -> Option<Entry> {
        if self.source_lost(rel, action, e) {
            return None;
        }
        let prev = dir
            .state
            .prev_entries
            .as_deref()
            .and_then(|es| manifest::find(es, name))
            .filter(|p| !self.excludes.is_excluded(rel, p.kind == Kind::Dir));
        let kept = prev.and_then(|p| {
            if p.kind == Kind::Dir {
                self.keep_prev_dir(&dir.state.out, name, rel, p)
                    .map(|e| (e, false))
            } else {
                self.count_kept_leaf(p);
                self.keep_prev_leaf(&dir.state.out, name, rel, p)
            }
        });
        let Some((kept, copied)) = kept else {
            self.source_error(rel, action, e);
            return None;
        };
        self.kept_previous(rel, action, e, copied);
        Some(kept)
    }

    /// A previous version about to be kept (not a directory, `prev` its manifest
    /// entry) in the run's figures, as [`Walk::entry`] counts a name it sees: in
    /// `files_total`, a regular file's size in `bytes_total`. It is in the snapshot: a
    /// run whose snapshot held 250 files said 248 when two were kept (their `lstat`
    /// failed), and the shard finalize's `uncount` takes off what these count.
    fn count_kept_leaf(&self, prev: &Entry) {
        Counters::add(&self.counters.files_total, 1);
        if prev.kind == Kind::File {
            Counters::add(&self.counters.bytes_total, prev.size);
        }
    }

    /// Links the previous snapshot's `name` (not a directory), `prev` its manifest entry;
    /// where the store refuses the link (EMLINK), copies it from the previous snapshot
    /// ([`Walk::copy_prev`]). `true` with the entry: copied (the caller says so).
    fn keep_prev_leaf(
        &self,
        out: &S::Dir,
        name: &[u8],
        rel: &RelPath,
        prev: &Entry,
    ) -> Option<(Entry, bool)> {
        match self.sink.link_unchanged(out, name, rel) {
            Linked::Done => {
                let mut p = prev.clone();
                // The previous snapshot's inode: in no hard-link group of this run.
                p.group = None;
                Some((p, false))
            }
            Linked::Fallback => {
                Counters::add(&self.counters.link_fallbacks, 1);
                match self.copy_prev(out, name, rel, prev) {
                    Ok(kept) => kept.map(|e| (e, true)),
                    Err(why) => {
                        // Never dropped silently (EMLINK: an EFS inode takes 177 links).
                        self.problem(
                            rel,
                            ProblemKind::Unreadable,
                            "keep previous version",
                            format!("the source could not be seen and its previous version could not be linked (the store's link limit, or another file system), nor copied ({why}): not in this snapshot"),
                        );
                        None
                    }
                }
            }
            Linked::Failed(err) => {
                self.dest_error(rel, "hard-link from previous snapshot", err);
                None
            }
        }
    }

    /// Copies the previous snapshot's version of `name` (`prev`, its record) into
    /// `out`: the source cannot give it, and the store refused to link it (EMLINK: an
    /// EFS inode takes 177 links). A copy is as much a kept version as a link: the
    /// record's metadata, the previous copy's bytes and extended attributes. `Err`: why
    /// it could not be read (the caller names the entry); `Ok(None)`: a destination
    /// error, already handled.
    fn copy_prev(
        &self,
        out: &S::Dir,
        name: &[u8],
        rel: &RelPath,
        prev: &Entry,
    ) -> Result<Option<Entry>, String> {
        let mut m = meta_of(prev);
        let xattrs = self.sink.prev_xattrs(out, name).unwrap_or_default();
        let mut e = prev.clone();
        e.name = name.to_vec();
        // A new inode: in no hard-link group of this run.
        e.group = None;
        let refused = if prev.kind == Kind::File {
            let src = match self.sink.open_prev(out, name) {
                None => return Err("this store's previous snapshot cannot be read".into()),
                Some(Err(err)) => return Err(format!("open in the previous snapshot: {err}")),
                Some(Ok(fd)) => fd,
            };
            let before = fsx::fstat(b(&src))
                .map_err(|err| format!("stat in the previous snapshot: {err}"))?;
            if before.kind != Kind::File {
                return Err("not a regular file in the previous snapshot".into());
            }
            let file = match self.sink.create_file(out, name, rel, &m, KEPT_COPY) {
                Ok(f) => f,
                Err(err) => {
                    self.dest_error(rel, "create file in staging", err);
                    return Ok(None);
                }
            };
            let paced = self.counters.throttle.as_ref().map(|t| t.copy(before.size));
            let pace = |n| match &paced {
                Some(p) => p.take(n, self.cancel),
                None => true,
            };
            let copied = match self.sink.write_file(&file, b(&src), &before, &pace) {
                Ok(c) => c,
                Err(CopyError::Read(err)) => {
                    self.sink.discard_file(out, name);
                    return Err(format!("read in the previous snapshot: {err}"));
                }
                Err(CopyError::Write(err)) => {
                    self.dest_error(rel, "write to staging", err);
                    return Ok(None);
                }
                Err(CopyError::Stopped) => {
                    self.sink.discard_file(out, name);
                    return Ok(None);
                }
            };
            Counters::add(&self.counters.bytes_transferred, copied.written);
            // The record's checksum when there is one: a previous copy that rotted is
            // then found by `verify` of this snapshot too.
            e.hash = e.hash.or(Some(copied.hash));
            e.size = copied.len;
            m.size = copied.len;
            self.sink.finish_file(file, &m, &xattrs)
        } else {
            let target = prev.target.as_deref();
            if let Err(err) = self.sink.put_special(out, name, rel, &m, target, KEPT_COPY) {
                self.dest_error(rel, "create in staging", err);
                return Ok(None);
            }
            self.sink.finish_special(out, name, &m, &xattrs)
        };
        let mut kept = xattrs;
        match refused {
            Ok(refused) => {
                self.refused_xattrs(rel, &refused);
                kept = kept_xattrs(kept, &refused);
                e.refused = refused_names(prev.kind, &prev.refused, &refused);
            }
            Err(err) => {
                owner_held(&mut m, &err);
                (e.uid, e.gid, e.perm) = (m.uid, m.gid, m.perm);
                self.dest_error(rel, "set metadata", err);
            }
        }
        e.xattrs = fsx::xattr_digest(&kept);
        Counters::add(&self.counters.files_transferred, 1);
        Ok(Some(e))
    }

    /// Makes directory `name` the previous snapshot's (`prev` its manifest entry): its
    /// metadata, and its entries linked ([`Walk::keep_prev_contents`]).
    fn keep_prev_dir(
        &self,
        parent: &S::Dir,
        name: &[u8],
        rel: &RelPath,
        prev: &Entry,
    ) -> Option<Entry> {
        let out = match self.sink.mkdir(parent, name, rel) {
            Ok(out) => out,
            Err(e) => {
                self.fail(io_error(e, "create directory in staging", rel.as_path()));
                return None;
            }
        };
        Counters::add(&self.counters.dirs_total, 1);
        self.keep_prev_contents(&out, rel);
        let xattrs = self.sink.prev_xattrs(parent, name).unwrap_or_default();
        match self.sink.finish_dir(&out, &meta_of(prev), &xattrs) {
            Ok(refused) => self.refused_xattrs(rel, &refused),
            Err(e) => self.dest_error(rel, "set directory metadata", e),
        }
        Some(prev.clone())
    }

    /// A shard unit whose directory (`rel`, the walk's root) could not be opened (`e`:
    /// permission denied, an I/O error, a stale handle; not gone): the previous
    /// snapshot's entries of it that the unit takes ([`Walk::only_root_names`]) are
    /// kept, as a single-node run keeps an unreadable directory's ([`Walk::open_sub`]),
    /// and the problem says so. Without this one such directory failed every worker
    /// and the whole run, night after night. Returns how many were kept.
    pub fn keep_prev_root(&self, rel: &RelPath, e: &std::io::Error) -> usize {
        let out = match self.sink.root() {
            Ok(out) => out,
            Err(err) => {
                self.fail(io_error(err, "open staging directory", rel.as_path()));
                return 0;
            }
        };
        let n = self.keep_prev_contents_of(&out, rel, self.root_names.as_deref());
        if n > 0 {
            let from = self.kept_source();
            tracing::warn!(
                "{rel}: open directory: {e}; keeping its {n} entries of the previous snapshot ({from}) in this unit's names"
            );
            self.problem(
                rel,
                ProblemKind::Unreadable,
                "open directory",
                format!("{e}; its {n} entries of the previous snapshot ({from}) in this unit's names were kept"),
            );
        } else {
            self.source_error(rel, "open directory", e);
        }
        n
    }

    /// Fills the new directory `out` at `rel`, which the source would not show, with
    /// the previous snapshot's entries of it (from its manifest; a previous tree
    /// without one gives none) and writes its manifest block. Returns how many.
    fn keep_prev_contents(&self, out: &S::Dir, rel: &RelPath) -> usize {
        self.keep_prev_contents_of(out, rel, None)
    }

    /// [`Walk::keep_prev_contents`] of only the names `only` takes (all without it).
    fn keep_prev_contents_of(
        &self,
        out: &S::Dir,
        rel: &RelPath,
        only: Option<&RootNames<'a>>,
    ) -> usize {
        let prev = match self.prev_manifest {
            Some(m) if self.sink.has_prev(out) => m.lookup(rel).ok().flatten(),
            _ => None,
        };
        let mut block = Vec::new();
        for p in prev.unwrap_or_default() {
            if only.is_some_and(|keep| !keep(&p.name)) {
                continue;
            }
            if self.cancel.load(Ordering::Relaxed) {
                return 0;
            }
            let r = rel.join(&p.name);
            // Today's exclusions hold for what is kept as for what is walked.
            if self.excludes.is_excluded(&r, p.kind == Kind::Dir) {
                continue;
            }
            let kept = if p.kind == Kind::Dir {
                self.keep_prev_dir(out, &p.name, &r, &p)
            } else {
                self.count_kept_leaf(&p);
                self.keep_prev_leaf(out, &p.name, &r, &p)
                    .map(|(e, copied)| {
                        if copied {
                            self.kept_copied(&r);
                        }
                        e
                    })
            };
            block.extend(kept);
        }
        let n = block.len();
        if let Err(e) = self.sink.write_block(rel, &mut block) {
            self.fail(io_error(e, "write manifest for", rel.as_path()));
        }
        n
    }

    fn link_to_first(
        &self,
        dir: &Node<S::Dir>,
        name: &[u8],
        rel: &RelPath,
        first: &RelPath,
        entry: &Entry,
    ) -> Option<Entry> {
        let mut e = entry.clone();
        e.name = name.to_vec();
        match self.sink.link_within(&dir.state.out, name, rel, first) {
            Linked::Done => {
                Counters::add(&self.counters.files_linked, 1);
                Some(e)
            }
            Linked::Fallback => {
                Counters::add(&self.counters.link_fallbacks, 1);
                None
            }
            Linked::Failed(err) => {
                self.dest_error(rel, "hard-link in staging", err);
                None
            }
        }
    }

    /// The names in the source directory `src` (`meta`: its `lstat` from before the
    /// listing). An entry renamed within the directory while it is listed can be in
    /// neither place the listing read (ext4 lists in hash order): a whole subtree there
    /// the whole time would be missing from the snapshot, the run `complete`. So a
    /// directory whose times moved during its listing is listed again, at most
    /// [`LIST_ATTEMPTS`] times (counted in `changed_during_backup`); one that kept
    /// changing through all of them is warned about. One `fstat` per directory.
    /// `meta` takes the stat of the listing kept (the `fstat` after it), as the
    /// directory's metadata in the snapshot and in its parent's manifest block.
    ///
    /// A name listed twice (an NFS server's readdir cookies gone wrong) is kept once,
    /// with a warning. A listing that fails, at its start or halfway, gives the names it
    /// read and `false`: the problem is reported here, and the caller keeps the previous
    /// snapshot's version of the entries it did not read.
    fn list(&self, src: &OwnedFd, rel: &RelPath, meta: &mut Meta) -> (Vec<Vec<u8>>, bool) {
        let mut before = (meta.mtime, meta.ctime);
        for attempt in 1..=LIST_ATTEMPTS {
            let mut names = Vec::new();
            let read = fsx::read_dir_with(b(src), |n| names.push(n.to_vec()));
            self.dedup_names(rel, &mut names);
            if let Err(e) = read {
                self.source_error(rel, "read directory", &e);
                return (names, false);
            }
            let _ = failpoint::hit("walk.listed");
            let Ok(now) = fsx::fstat(b(src)) else {
                return (names, true);
            };
            let after = (now.mtime, now.ctime);
            if after == before {
                return (names, true);
            }
            // The whole stat of the listing kept (a mode or owner changed since the
            // parent's `lstat` moved the ctime too): the directory's metadata in the
            // snapshot and its manifest entry ([`Walk::open`] corrects the parent's).
            *meta = now;
            if attempt == 1 {
                Counters::add(&self.counters.changed_during_backup, 1);
            }
            if attempt == LIST_ATTEMPTS {
                // Warned, not a problem: a spool or upload directory that only gains
                // files changes during every listing, and new files cannot hide one
                // that was there (only a rename can); such a run is still whole.
                tracing::warn!(
                    "{rel}: changed during each of {LIST_ATTEMPTS} listings; an entry renamed in it meanwhile may be missing from this snapshot"
                );
                return (names, true);
            }
            tracing::info!("{rel}: changed while it was listed; listing it again");
            before = after;
        }
        unreachable!("the last attempt returns")
    }

    /// Drops the second and later copies of a name in one listing (keeping the listing's
    /// order), with one warning for the directory. Backed up twice, the second copy
    /// found the first in staging (`File exists`) and failed the run, every run.
    fn dedup_names(&self, rel: &RelPath, names: &mut Vec<Vec<u8>>) {
        // Looked for without copying a name (every directory of every run comes here);
        // the copies are made only when there is a duplicate to drop.
        let mut seen = std::collections::HashSet::with_capacity(names.len());
        if names.iter().all(|n| seen.insert(n.as_slice())) {
            return;
        }
        let mut seen = std::collections::HashSet::with_capacity(names.len());
        let before = names.len();
        names.retain(|n| seen.insert(n.clone()));
        if names.len() != before {
            tracing::warn!(
                "{rel}: the listing gave {} name(s) more than once (a file system's readdir error); each is backed up once",
                before - names.len()
            );
        }
    }

    /// What the previous snapshot says about `name`: its manifest entry, else (a tree
    /// without a manifest) its `lstat`.
    fn decision(
        &self,
        dir: &Node<S::Dir>,
        name: &[u8],
        m: &Meta,
        target: Option<&[u8]>,
        prev_entry: Option<&Entry>,
    ) -> Decision {
        let started = self.prev_manifest.map(|m| m.started).unwrap_or_default();
        match prev_entry {
            Some(e) => decide(m, target, Some(&PrevView::from_entry(e, started))),
            None if dir.state.prev_entries.is_none() => {
                let prev = self.sink.prev_stat(&dir.state.out, name);
                let view = prev
                    .as_ref()
                    .map(|(s, t)| PrevView::from_stat(s, t.as_deref()));
                decide(m, target, view.as_ref())
            }
            None => decide(m, target, None),
        }
    }

    /// Backs up one non-directory: link it from the previous snapshot if unchanged,
    /// else copy it; if the source cannot be read, keep the previous version.
    fn leaf(&self, dir: &Node<S::Dir>, name: &[u8], rel: &RelPath, m: &Meta) -> Leaf {
        let prev_entry = dir
            .state
            .prev_entries
            .as_deref()
            .and_then(|es| manifest::find(es, name));
        let unreadable = |action: &'static str, e: std::io::Error| {
            self.unreadable(dir, name, rel, m, prev_entry, action, e)
        };
        let target = if m.kind == Kind::Symlink {
            match fsx::read_link_at(b(&dir.state.src), name) {
                Ok(t) => Some(t),
                Err(e) => return unreadable("read symlink", e),
            }
        } else {
            None
        };
        let mut decision = self.decision(dir, name, m, target.as_deref(), prev_entry);
        if !matches!(decision, Decision::Copy(_))
            && (self.prev_manifest.is_some_and(|p| p.damaged.contains(rel))
                || self.prev_damaged.is_some_and(|d| d.contains(rel)))
        {
            decision = Decision::Copy(Reason::Damaged);
        }
        if let Decision::VerifyContent(why) = decision {
            let _ = failpoint::hit("walk.verify_content");
            let same = fsx::hash_at(b(&dir.state.src), name);
            decision = match (same, prev_entry.and_then(|e| e.hash)) {
                (Ok(now), Some(before)) if now == before => Decision::CompareXattrs,
                (Err(e), _) => return unreadable("read", e),
                _ => Decision::Copy(why),
            };
        }
        // The attributes the store refused to the previous copy: an unchanged entry is
        // linked while the store still refuses them, copied once it takes them.
        let refused_before = prev_entry.map_or(&[][..], |e| e.refused.as_slice());
        // Forced to compare only to ask the store again: the entry was to be linked (its
        // ctime unchanged, trusted as any unchanged entry's), so its kept attributes are
        // not compared by digest: one the store refused as too large, recorded nowhere,
        // would never match and have it copied every run (review of xattr-49, N1).
        let forced = decision == Decision::Link
            && !refused_before
                .iter()
                .all(|n| self.sink.refuses_xattr_name(n, m.kind));
        if forced {
            decision = Decision::CompareXattrs;
        }
        let mut src_xattrs: Option<Xattrs> = None;
        let mut refused = None;
        if decision == Decision::CompareXattrs {
            let xs = match fsx::read_xattrs(&XattrTarget::At(b(&dir.state.src), name)) {
                Ok(x) => x,
                Err(e) => return unreadable("read extended attributes", e),
            };
            let prev_digest = match prev_entry {
                Some(e) => e.xattrs.clone(),
                None => self
                    .sink
                    .prev_xattrs(&dir.state.out, name)
                    .and_then(|x| fsx::xattr_digest(&x)),
            };
            let (not_kept, kept): (Vec<_>, Vec<_>) =
                xs.iter().partition(|(n, _)| refused_before.contains(n));
            decision = if (forced || fsx::xattr_digest_of(kept.iter().copied()) == prev_digest)
                && not_kept
                    .iter()
                    .all(|(n, v)| self.sink.still_refuses_xattr(n, v, m.kind))
            {
                Decision::Link
            } else {
                Decision::Copy(Reason::MetadataChanged)
            };
            refused = Some(not_kept.into_iter().map(|(n, _)| n.clone()).collect());
            src_xattrs = Some(xs);
        }
        let mut vouched = None;
        if decision == Decision::Link && prev_entry.is_none() && m.kind == Kind::File {
            match self.vouched(dir, name, rel) {
                Ok(h) => vouched = h,
                Err(()) => decision = Decision::Copy(Reason::Damaged),
            }
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
                refused,
                vouched,
            )
        {
            return Leaf::Written(e);
        }
        let reason = match decision {
            Decision::Copy(r) => r,
            _ => Reason::New,
        };
        if let Some(e) = self.resume(dir, name, rel, m, target.as_deref()) {
            return Leaf::Written(e);
        }
        match self.copy(dir, name, rel, m, target, src_xattrs, reason) {
            Ok(Some(e)) => Leaf::Written(e),
            Ok(None) => Leaf::Dropped,
            Err((action, e)) => unreadable(action, e),
        }
    }

    /// The source of `name` could not be read (`action`, `e`). Unless it vanished, the
    /// previous snapshot's version of the same type is linked into the new snapshot with
    /// its previous manifest entry (which describes the linked inode), so an unreadable
    /// file does not drop out of the history; the problem says so. Without a previous
    /// version the entry is left out, as is an entry deleted from the source.
    #[allow(clippy::too_many_arguments)]
    fn unreadable(
        &self,
        dir: &Node<S::Dir>,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
        prev_entry: Option<&Entry>,
        action: &'static str,
        e: std::io::Error,
    ) -> Leaf {
        if self.source_lost(rel, action, &e) {
            return Leaf::Dropped;
        }
        if e.kind() == std::io::ErrorKind::NotFound {
            self.source_error(rel, action, &e);
            return Leaf::Dropped;
        }
        // The previous version: its manifest entry, else (a tree without a manifest)
        // its `lstat` in the previous snapshot.
        let (prev, prev_meta) = match prev_entry {
            Some(p) => {
                let mut p = p.clone();
                // The kept version is the previous snapshot's inode, not this run's copy
                // of the source inode: the names this run copies are another inode, so
                // it joins no hard-link group (manifest `group`: equal means one inode).
                p.group = None;
                (Some(p), None)
            }
            None if dir.state.prev_entries.is_none() => {
                match self.sink.prev_stat(&dir.state.out, name) {
                    Some((pm, t)) => {
                        let mut p = Entry::from_meta(name, &pm);
                        p.target = t;
                        // The link count of a snapshot's inode counts the snapshots
                        // that share it, not a hard-link group of the source.
                        p.group = None;
                        (Some(p), Some(pm))
                    }
                    None => (None, None),
                }
            }
            None => (None, None),
        };
        let Some(mut prev) = prev.filter(|p| p.kind == m.kind) else {
            self.source_error(rel, action, &e);
            return Leaf::Dropped;
        };
        match self.sink.link_unchanged(&dir.state.out, name, rel) {
            Linked::Done => {}
            Linked::Fallback => {
                Counters::add(&self.counters.link_fallbacks, 1);
                prev.name = name.to_vec();
                return match self.copy_prev(&dir.state.out, name, rel, &prev) {
                    Ok(Some(kept)) => {
                        self.kept_previous(rel, action, &e, true);
                        Leaf::Kept(kept)
                    }
                    Ok(None) => {
                        self.source_error(rel, action, &e);
                        Leaf::Dropped
                    }
                    Err(why) => {
                        let why = format!(
                            "{e}; its previous version could not be linked (the store's link limit, or another file system), nor copied ({why}): not in this snapshot"
                        );
                        self.problem(rel, ProblemKind::Unreadable, action, why);
                        Leaf::Dropped
                    }
                };
            }
            Linked::Failed(err) => {
                self.source_error(rel, action, &e);
                self.dest_error(rel, "hard-link from previous snapshot", err);
                return Leaf::Dropped;
            }
        }
        // Not counted as linked (that is for unchanged entries): it is a problem.
        if let Some(pm) = prev_meta {
            // No manifest entry: the linked file's hash and xattrs, read once.
            let (hash, digest) = self.sink.linked_facts(&dir.state.out, name, &pm, false);
            // From a tree paired with a record it differs from, the kept file is
            // checked against what was backed up: the record's hash, so `verify` of
            // the new snapshot tells a rotten one (the hash read from it would not).
            let recorded = dir
                .state
                .record
                .as_deref()
                .and_then(|r| manifest::find(r, name))
                .filter(|r| r.kind == pm.kind)
                .and_then(|r| r.hash);
            prev.hash = recorded.or(hash);
            prev.xattrs = digest;
        }
        prev.name = name.to_vec();
        self.kept_previous(rel, action, &e, false);
        Leaf::Kept(prev)
    }

    /// Whether the previous snapshot's file `name`, found unchanged by stat, may be
    /// linked from a tree paired with a record it differs from ([`Walk::record`]):
    /// `Ok(Some(hash))` when it hashes as its record entry says, `Ok(None)` when there
    /// is no such record (a trusted manifest, or a tree taken over without one), and
    /// `Err` when it is not as recorded (bit rot keeps size and mtime), the record has
    /// no file of that name, or it cannot be read: it is copied from the source, the
    /// truth at backup time. Before, it was linked and the hash read from the rotten
    /// file recorded, so the new snapshot verified clean with the rot in it. The file
    /// is read once, as hashing the linked file was.
    fn vouched(
        &self,
        dir: &Node<S::Dir>,
        name: &[u8],
        rel: &RelPath,
    ) -> Result<Option<blake3::Hash>, ()> {
        let Some(record) = dir.state.record.as_deref() else {
            return Ok(None);
        };
        let recorded = match manifest::find(record, name) {
            Some(e) if e.kind == Kind::File => {
                e.hash.ok_or_else(|| "a file without a hash".to_string())
            }
            Some(e) => Err(format!("a {}", e.kind.name())),
            None => Err("not".to_string()),
        };
        let recorded = match recorded {
            Ok(h) => h,
            Err(what) => {
                tracing::info!(
                    "{rel}: {what} in the record of the previous snapshot's tree (not trusted); copying it from the source"
                );
                return Err(());
            }
        };
        match self.sink.prev_hash(&dir.state.out, name) {
            Some(Ok(h)) if h == recorded => Ok(Some(h)),
            Some(Ok(_)) => {
                tracing::warn!(
                    "{rel}: the previous snapshot's copy does not hash as its record says (damaged); copying it from the source"
                );
                Err(())
            }
            Some(Err(e)) => {
                tracing::warn!(
                    "{rel}: the previous snapshot's copy cannot be read ({e}); copying it from the source"
                );
                Err(())
            }
            None => Err(()),
        }
    }

    /// Links an unchanged entry from the previous snapshot. `None` means copy instead.
    /// `xattrs`: the source's attributes when the decision already read them;
    /// `refused`: then, those of them the store refused to the previous copy (else the
    /// previous entry's, unchanged with the ctime).
    /// `vouched`: the file's hash, read from the previous snapshot and checked against
    /// its record ([`Walk::vouched`]).
    #[allow(clippy::too_many_arguments)]
    fn link_prev(
        &self,
        dir: &Node<S::Dir>,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
        prev_entry: Option<&Entry>,
        target: Option<&[u8]>,
        xattrs: Option<&Xattrs>,
        refused: Option<Vec<Vec<u8>>>,
        vouched: Option<blake3::Hash>,
    ) -> Option<Entry> {
        match self.sink.link_unchanged(&dir.state.out, name, rel) {
            Linked::Done => {}
            Linked::Fallback => {
                Counters::add(&self.counters.link_fallbacks, 1);
                return None;
            }
            Linked::Failed(e) => {
                self.dest_error(rel, "hard-link from previous snapshot", e);
                return None;
            }
        }
        Counters::add(&self.counters.files_linked, 1);
        let mut entry = Entry::from_meta(name, m);
        entry.target = target.map(|t| t.to_vec());
        match prev_entry {
            Some(p) => {
                entry.hash = p.hash;
                entry.xattrs = p.xattrs.clone();
                entry.refused = refused.unwrap_or_else(|| p.refused.clone());
                // The names whose refusal is said (the user's, ACLs) in the run's
                // warning; the others (the system's) in the walk's log line.
                let said: Vec<Vec<u8>> = entry
                    .refused
                    .iter()
                    .filter(|n| fsx::xattr_refusal_said(n, fsx::NOT_SUPPORTED))
                    .cloned()
                    .collect();
                if !said.is_empty() {
                    self.counters.xattrs_not_kept(&said);
                }
                self.unsaid(entry.refused.iter().map(|n| (n, fsx::NOT_SUPPORTED)));
            }
            None if vouched.is_some() => {
                entry.hash = vouched;
                entry.xattrs = match xattrs {
                    Some(x) => fsx::xattr_digest(x),
                    None => self
                        .sink
                        .prev_xattrs(&dir.state.out, name)
                        .and_then(|x| fsx::xattr_digest(&x)),
                };
            }
            None => {
                // A tree taken over without a manifest: hash the linked file once (the
                // manifest promises a checksum for every file) and record its xattrs
                // (already read by the comparison, which always runs without a ctime).
                let (hash, digest) =
                    self.sink
                        .linked_facts(&dir.state.out, name, m, xattrs.is_some());
                entry.hash = hash;
                entry.xattrs = match xattrs {
                    Some(x) => fsx::xattr_digest(x),
                    None => digest,
                };
            }
        }
        Some(entry)
    }

    /// Reuses a file a previous, interrupted run already copied into its staging tree,
    /// when that copy is finished (its metadata, set last, matches the source).
    fn resume(
        &self,
        dir: &Node<S::Dir>,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
        target: Option<&[u8]>,
    ) -> Option<Entry> {
        let read_src = || fsx::read_xattrs(&XattrTarget::At(b(&dir.state.src), name));
        let src_xattrs: std::cell::OnceCell<Option<Xattrs>> = std::cell::OnceCell::new();
        let src_hash = || fsx::hash_at(b(&dir.state.src), name);
        let r = self.sink.resume(
            &dir.state.out,
            name,
            m,
            &|| {
                src_xattrs
                    .get_or_init(|| read_src().ok())
                    .clone()
                    .ok_or_else(|| std::io::Error::other("source xattrs unreadable"))
            },
            &src_hash,
        )?;
        tracing::debug!("{rel}: resumed from an interrupted run's copy");
        // Not copied by this run (no byte written), and not the previous snapshot's:
        // counted with the linked files, and apart as resumed.
        Counters::add(&self.counters.files_linked, 1);
        Counters::add(&self.counters.files_resumed, 1);
        let mut e = Entry::from_meta(name, m);
        e.hash = Some(r.hash);
        e.xattrs = r.xattrs;
        e.target = target.map(|t| t.to_vec());
        Some(e)
    }

    #[allow(clippy::too_many_arguments)]
    fn copy(
        &self,
        dir: &Node<S::Dir>,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
        target: Option<Vec<u8>>,
        xattrs: Option<Xattrs>,
        reason: Reason,
    ) -> Result<Option<Entry>, SourceError> {
        if let Err(e) = failpoint::hit("walk.copy") {
            self.fail(io_error(e, "copy", rel.as_path()));
            return Ok(None);
        }
        let r = match m.kind {
            Kind::File => self.copy_file(dir, name, rel, m, xattrs, reason)?,
            _ => self.copy_special(dir, name, rel, m, target, xattrs, reason),
        };
        if r.is_some() {
            Counters::add(&self.counters.files_transferred, 1);
        }
        Ok(r)
    }

    /// Copies a regular file. `m`: the walk's `lstat` of it, which serves as the
    /// "before" stat (the `fstat` after the copy must match it, inode included).
    /// `xattrs`: the source's attributes when the decision already read them (otherwise
    /// they are read here, through the open file). `Err`: the source could not be read
    /// (nothing of it is left in the new snapshot); `Ok(None)`: a destination error,
    /// already handled.
    fn copy_file(
        &self,
        dir: &Node<S::Dir>,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
        xattrs: Option<Xattrs>,
        reason: Reason,
    ) -> Result<Option<Entry>, SourceError> {
        // A source that cannot be read (tests: one name of a hard-linked inode).
        failpoint::hit("walk.open_source").map_err(|e| ("open", e))?;
        let src = fsx::open_read_at(b(&dir.state.src), name).map_err(|e| ("open", e))?;
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
        let file = match self
            .sink
            .create_file(&dir.state.out, name, rel, m, reason.as_str())
        {
            Ok(f) => f,
            Err(e) => {
                self.dest_error(rel, "create file in staging", e);
                return Ok(None);
            }
        };
        let Some((meta, hash)) = self.copy_attempts(&dir.state.out, &file, &src, name, rel, m)?
        else {
            return Ok(None);
        };
        // `entry` counted the walk's size in `bytes_total`; the snapshot holds the copy,
        // whose size is the one of the stat it matched (a file that grew or shrank
        // while it was copied was copied again at its new size). Before, a file that
        // grew from 3.1 to 6.9 MiB during its copy was recorded at 6.9 MiB in the
        // manifest and counted at 3.1 MiB in the run's size (`list`'s SIZE).
        if meta.size != m.size {
            let total = &self.counters.bytes_total;
            match meta.size > m.size {
                true => Counters::add(total, meta.size - m.size),
                false => {
                    total.fetch_sub(m.size - meta.size, Ordering::Relaxed);
                }
            }
        }
        let mut meta = meta;
        let mut kept = xattrs;
        let mut not_kept = Vec::new();
        match self.sink.finish_file(file, &meta, &kept) {
            Ok(refused) => {
                self.refused_xattrs(rel, &refused);
                kept = kept_xattrs(kept, &refused);
                not_kept = refused_names(meta.kind, &[], &refused);
            }
            Err(e) => {
                owner_held(&mut meta, &e);
                self.dest_error(rel, "set file metadata", e)
            }
        }
        let mut e = Entry::from_meta(name, &meta);
        e.hash = Some(hash);
        e.xattrs = fsx::xattr_digest(&kept);
        e.refused = not_kept;
        Ok(Some(e))
    }

    /// Copies until the source stays the same during a copy (at most [`COPY_ATTEMPTS`]
    /// times); returns the stat the copy matches and its hash (after the last attempt,
    /// the stat from before it with the length copied). `Err`: the source could
    /// not be read (the partial copy is removed); `Ok(None)`: a destination error.
    fn copy_attempts(
        &self,
        out: &S::Dir,
        file: &S::File,
        src: &OwnedFd,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
    ) -> Result<Option<(Meta, blake3::Hash)>, SourceError> {
        // The copy's place in line for the bandwidth limit: large copies are served in
        // the order they started, so each backup window finishes the oldest ones.
        let paced = self.counters.throttle.as_ref().map(|t| t.copy(m.size));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = if attempt == 1 {
                *m
            } else {
                match fsx::fstat(b(src)) {
                    Ok(m) => m,
                    Err(e) => {
                        self.sink.discard_file(out, name);
                        return Err(("stat", e));
                    }
                }
            };
            // A stopped run gives up a throttled copy: finished, it would run at full
            // speed past the limit (or, held to it, past the stop).
            let pace = |n| match &paced {
                Some(p) => p.take(n, self.cancel),
                None => true,
            };
            let copied = match self.sink.write_file(file, b(src), &before, &pace) {
                Ok(c) => {
                    Counters::add(&self.counters.bytes_transferred, c.written);
                    c
                }
                Err(CopyError::Read(e)) => {
                    self.sink.discard_file(out, name);
                    return Err(("read", e));
                }
                Err(CopyError::Write(e)) => {
                    self.dest_error(rel, "write to staging", e);
                    return Ok(None);
                }
                Err(CopyError::Stopped) => {
                    // Not left for the next run to resume: it is not whole.
                    self.sink.discard_file(out, name);
                    self.counters.given_up(rel.escaped(), before.size);
                    return Ok(None);
                }
            };
            let _ = failpoint::hit("walk.after_copy");
            let after = fsx::fstat(b(src)).unwrap_or(before);
            // A copy shorter than the stat (the file shrank, and a stat that did not
            // show it) is a change too.
            if after.ino == before.ino
                && after.size == before.size
                && after.mtime == before.mtime
                && after.ctime == before.ctime
                && copied.len == before.size
            {
                return Ok(Some((before, copied.hash)));
            }
            if attempt == 1 {
                Counters::add(&self.counters.changed_during_backup, 1);
            }
            if attempt >= COPY_ATTEMPTS {
                self.problem(rel, ProblemKind::ChangedDuringCopy, "copy", format!("still changing after {COPY_ATTEMPTS} attempts; the copy may mix old and new content"));
                // The entry describes the bytes stored: a file cut short during this
                // copy is recorded at the copy's length (its hash is of those bytes),
                // not at the size of the stat before it. Its times stay those of before
                // the copy, which the file no longer has: the next run copies it again.
                let mut stored = before;
                stored.size = copied.len;
                return Ok(Some((stored, copied.hash)));
            }
            tracing::info!("{rel} changed while it was copied; copying again");
            if let Err(e) = self.sink.restart_file(file) {
                self.dest_error(rel, "truncate in staging", e);
                return Ok(None);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_special(
        &self,
        dir: &Node<S::Dir>,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
        target: Option<Vec<u8>>,
        xattrs: Option<Xattrs>,
        reason: Reason,
    ) -> Option<Entry> {
        let xattrs = match xattrs {
            Some(x) => x,
            None => {
                fsx::read_xattrs(&XattrTarget::At(b(&dir.state.src), name)).unwrap_or_else(|e| {
                    self.problem(rel, ProblemKind::Metadata, "read extended attributes", e);
                    Vec::new()
                })
            }
        };
        let out = &dir.state.out;
        if let Err(e) = self
            .sink
            .put_special(out, name, rel, m, target.as_deref(), reason.as_str())
        {
            self.dest_error(rel, "create in staging", e);
            return None;
        }
        let mut m = *m;
        let mut kept = xattrs;
        let mut not_kept = Vec::new();
        match self.sink.finish_special(out, name, &m, &kept) {
            Ok(refused) => {
                self.refused_xattrs(rel, &refused);
                kept = kept_xattrs(kept, &refused);
                not_kept = refused_names(m.kind, &[], &refused);
            }
            Err(e) => {
                owner_held(&mut m, &e);
                self.dest_error(rel, "set metadata", e);
            }
        }
        let mut e = Entry::from_meta(name, &m);
        e.target = target;
        e.xattrs = fsx::xattr_digest(&kept);
        e.refused = not_kept;
        Some(e)
    }
}

impl<S: Sink> Visitor for Walk<'_, S> {
    type State = DirState<S::Dir>;
    type Item = Vec<u8>;
    /// The subdirectory's `lstat`, from its parent's listing.
    type Sub = Meta;

    fn open(
        &self,
        parent: Option<&Node<S::Dir>>,
        name: &[u8],
        rel: &RelPath,
        meta: Meta,
    ) -> Opened<Self::State, Vec<u8>> {
        let (src, out) = match parent {
            Some(p) => match self.open_sub(p, name, rel, &meta) {
                Some(x) => x,
                None => return Opened::Skip,
            },
            None => {
                let src = self.root.lock().unwrap_or_else(|e| e.into_inner()).take();
                let out = self.sink.root();
                match (src, out) {
                    (Some(src), Ok(out)) => (src, out),
                    (_, Err(e)) => {
                        self.fail(io_error(e, "open staging directory", rel.as_path()));
                        return Opened::Skip;
                    }
                    (None, _) => return Opened::Skip,
                }
            }
        };
        if let Err(e) = failpoint::hit("walk.dir") {
            self.fail(io_error(e, "walk", rel.as_path()));
            return Opened::Skip;
        }
        let xattrs = fsx::read_xattrs(&XattrTarget::Fd(b(&src))).unwrap_or_else(|e| {
            self.problem(rel, ProblemKind::Metadata, "read extended attributes", e);
            Vec::new()
        });
        let mut meta = meta;
        let prev_entries = match self.prev_manifest {
            Some(m) if self.sink.has_prev(&out) => m.lookup(rel).unwrap_or_else(|e| {
                tracing::warn!("previous manifest unusable for {rel}: {e}; comparing by stat");
                None
            }),
            _ => None,
        };
        // A record that cannot be read vouches for nothing: every file is copied.
        let record = match self.prev_record {
            Some(r) if prev_entries.is_none() && self.sink.has_prev(&out) => {
                Some(r.lookup(rel).unwrap_or_else(|e| {
                    tracing::warn!("{rel}: the previous snapshot's record is unusable ({e}); its files are copied from the source");
                    None
                }).unwrap_or_default())
            }
            _ => None,
        };
        let was = meta;
        let (mut names, whole) = self.list(&src, rel, &mut meta);
        self.relisted(parent, name, &was, &meta);
        let mut unlisted = std::collections::HashSet::new();
        if !whole && let Some(prev) = &prev_entries {
            // The listing failed (at its start or halfway): the previous snapshot's
            // names it did not give are walked too. One still in the source is backed
            // up; one whose `lstat` fails keeps its previous version ([`Walk::visit`]);
            // one gone is left out. Without this, each such run dropped them from the
            // new snapshot, and `retain` rotated the last copy away.
            let listed: std::collections::HashSet<&[u8]> =
                names.iter().map(|n| n.as_slice()).collect();
            let more: Vec<Vec<u8>> = prev
                .iter()
                .filter(|e| !listed.contains(e.name.as_slice()))
                .map(|e| e.name.clone())
                .collect();
            if !more.is_empty() {
                tracing::warn!(
                    "{rel}: listing failed; {} name(s) of the previous snapshot not listed are looked up one by one",
                    more.len()
                );
            }
            unlisted.extend(more.iter().cloned());
            names.extend(more);
        }
        // A tagged directory (`exclude_caches`, `exclude_if_present`) keeps only its
        // tag: decided from the full listing (a shard unit's too, before its range).
        if let Some(keep) = self.excludes.keep_in(b(&src), &names) {
            tracing::info!(
                "{rel}: tagged (exclude_caches / exclude_if_present): contents left out"
            );
            names.retain(|n| keep.contains(n));
        }
        if parent.is_none()
            && let Some(keep) = &self.root_names
        {
            names.retain(|n| keep(n));
        }
        let _ = failpoint::hit("walk.after_readdir");
        let state = DirState {
            src,
            out,
            prev_entries,
            record,
            meta,
            xattrs,
            block: Mutex::new((Vec::new(), false)),
            unlisted,
        };
        Opened::Dir(state, names)
    }

    fn visit(&self, dir: &Arc<Node<S::Dir>>, name: Vec<u8>) -> Step<Meta> {
        let rel = dir.rel.join(&name);
        let m = match fsx::lstat_at(b(&dir.state.src), &name) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !dir.state.unlisted.contains(&name) {
                    self.source_error(&rel, "stat", &e);
                }
                return Step::Next;
            }
            Err(e) => {
                // EIO, ESTALE: the entry is there but cannot be seen.
                if let Some(entry) = self.keep_prev(dir, &name, &rel, "stat", &e) {
                    dir.state
                        .block
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                        .push(entry);
                }
                return Step::Next;
            }
        };
        if self.excludes.is_excluded(&rel, m.kind == Kind::Dir) {
            return Step::Next;
        }
        let entry = if m.kind == Kind::Dir {
            // The one comparison per directory this check costs (no system call).
            if let Some((f, _)) = &self.fence
                && f.is(m.dev, m.ino)
            {
                self.store_in_source(&rel);
                return Step::Next;
            }
            Counters::add(&self.counters.dirs_total, 1);
            let mut e = Entry::from_meta(&name, &m);
            // The owner the directory will hold if this process cannot give it its own
            // (its `set owner` problem is reported when its metadata is set).
            if let Some(owner) = self.sink.dir_owner_held(&m) {
                (e.uid, e.gid) = owner;
            }
            e
        } else {
            match self.entry(dir, &name, &rel, &m) {
                Some(e) => e,
                None => return Step::Next,
            }
        };
        dir.state
            .block
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .push(entry);
        if m.kind == Kind::Dir {
            Step::Descend(name, m)
        } else {
            Step::Next
        }
    }

    fn one_fs(&self) -> Option<&OneFs> {
        self.one_fs
    }

    fn device(&self, meta: &Meta) -> Option<u64> {
        Some(meta.dev)
    }

    /// A directory on another file system: made in the new snapshot as an empty one,
    /// with an empty manifest block and the metadata its `lstat` gave (the mounted
    /// file system's root, as `stat` shows it, as rsync and restic record it), not
    /// opened. Its entry is in its parent's block already.
    fn mount_point(&self, dir: &Arc<Node<S::Dir>>, name: Vec<u8>, rel: &RelPath, meta: Meta) {
        tracing::info!("{rel}: another file system (one_file_system): kept empty");
        let xattrs =
            fsx::read_xattrs(&XattrTarget::At(b(&dir.state.src), &name)).unwrap_or_else(|e| {
                self.problem(rel, ProblemKind::Metadata, "read extended attributes", e);
                Vec::new()
            });
        let out = match self.sink.mkdir(&dir.state.out, &name, rel) {
            Ok(out) => out,
            Err(e) => {
                self.fail(io_error(e, "create directory in staging", rel.as_path()));
                return;
            }
        };
        if let Err(e) = self.sink.write_block(rel, &mut Vec::new()) {
            self.fail(io_error(e, "write manifest for", rel.as_path()));
            return;
        }
        match self.sink.finish_dir(&out, &meta, &xattrs) {
            Ok(refused) => self.refused_xattrs(rel, &refused),
            Err(e) => self.dest_error(rel, "set directory metadata", e),
        }
    }

    /// The directory's own entries are all known: its manifest block is written. A
    /// subdirectory opened later whose listing took a later stat corrects its entry in
    /// the manifest ([`Walk::relisted`]). (Written only once each subdirectory was
    /// opened, at [`Visitor::listed`], a block was held through all but one of its
    /// subdirectories' subtrees: three nested directories of 150,000 entries, each
    /// with a sibling, took a walk of one job from 90 to 144 MB.)
    fn visited(&self, dir: &Node<S::Dir>) {
        if self.cancel.load(Ordering::Relaxed) {
            return;
        }
        let mut block = {
            let mut b = dir.state.block.lock().unwrap_or_else(|e| e.into_inner());
            b.1 = true;
            std::mem::take(&mut b.0)
        };
        if let Err(e) = self.sink.write_block(&dir.rel, &mut block) {
            self.fail(io_error(e, "write manifest for", dir.rel.as_path()));
        }
    }

    /// Everything under the directory is written: its metadata comes last. Not a
    /// shard unit's root: a name range of a spine directory, whose metadata finalize
    /// applies from the source once every unit's entries are in it. Applied here, a
    /// mode without write permission (0500) would refuse those entries, and the rename
    /// of the unit's work directory into the run's tree (which rewrites its `..`).
    fn finish(&self, dir: &Node<S::Dir>) {
        if dir.parent.is_none() && self.root_names.is_some() {
            return;
        }
        match self
            .sink
            .finish_dir(&dir.state.out, &dir.state.meta, &dir.state.xattrs)
        {
            Ok(refused) => self.refused_xattrs(&dir.rel, &refused),
            Err(e) => self.dest_error(&dir.rel, "set directory metadata", e),
        }
    }
}

/// Said of a kept previous version the store would not link: [`Walk::copy_prev`].
const COPIED_NOTE: &str =
    " (copied: the store refused to link it, its link limit reached, or another file system)";

/// Why a kept previous version is copied, for a plan or a log.
const KEPT_COPY: &str = "kept from the previous snapshot, which could not be linked";

/// The metadata a kept previous directory gets back from its manifest entry.
pub(crate) fn meta_of(e: &Entry) -> Meta {
    Meta {
        kind: e.kind,
        perm: e.perm,
        uid: e.uid,
        gid: e.gid,
        size: e.size,
        mtime: e.mtime,
        ctime: e.ctime,
        dev: 0,
        ino: e.ino,
        nlink: 1,
        rdev: e.rdev,
        blocks: 0,
    }
}

/// Can `b` be another name of the inode whose other name's `lstat` was `a` (they report
/// the same `(st_dev, st_ino)`)? Names of one inode share one stat: kind, size, times,
/// mode and owner.
fn same_inode(a: &Meta, b: &Meta) -> bool {
    a.kind == b.kind
        && a.size == b.size
        && a.mtime == b.mtime
        && a.ctime == b.ctime
        && a.perm == b.perm
        && (a.uid, a.gid) == (b.uid, b.gid)
        && a.rdev == b.rdev
}

/// The owner the snapshot's copy holds when its own could not be set (not root): the
/// manifest records what the snapshot is, so `verify` does not call it damaged, and the
/// next backup, seeing the source's owner differ, copies it again and reports the
/// owner again, every run alike (a link would carry the wrong owner silently).
///
/// Its mode alike: the setuid/setgid bits not safe on a copy of that owner were
/// cleared ([`fsx::OwnerNotSet::cleared`]), and the manifest says so (a restore, which
/// reads the tree, gives the user's copy no setuid bit either).
fn owner_held(meta: &mut Meta, e: &std::io::Error) {
    if let Some(o) = fsx::owner_not_set(e) {
        meta.perm = o.perm(meta);
        if o.got != (u32::MAX, u32::MAX) {
            (meta.uid, meta.gid) = o.got;
        }
    }
}

/// The fence of the store at `store` for [`Walk::fenced`]: its `(st_dev, st_ino)`,
/// following a symlink (the directory written into); `None` if it cannot be `stat`ed (a
/// dry run's store not made yet: there is nothing to walk into).
pub fn store_fence(store: &std::path::Path) -> Option<Fence> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(store)
        .ok()
        .map(|m| Fence::new(m.dev(), m.ino()))
}

/// The extended attributes `xs` less those the store `refused` (not supported, too
/// large): what the snapshot's entry holds, whose digest its manifest records. The
/// refused ones are the run's problems; recorded as the source's, the tree could never
/// match its manifest, and a restore called every such entry damaged and restored
/// none of its attributes (its ACLs, the `user.*` values the store kept), `verify` the
/// snapshot damaged. The refused names are recorded beside it ([`Entry::refused`]):
/// the next run compares the digest of the source's attributes less those with this
/// one and links an unchanged entry while the store still refuses them (the run's
/// warnings count it: [`crate::report::xattrs_not_kept_warning`]), copies it once the
/// store takes them. (Before, every run that compared the attributes, a file whose
/// ctime moved or that changed near the previous walk, copied it again, to be
/// refused again.)
fn kept_xattrs(mut xs: Xattrs, refused: &[(Vec<u8>, &str)]) -> Xattrs {
    if !refused.is_empty() {
        xs.retain(|(n, _)| !refused.iter().any(|(r, _)| r == n));
    }
    xs
}

/// The names of the attributes the store refused to an entry of `kind`, as its
/// manifest entry records them ([`Entry::refused`]: sorted, each once): `before` (a
/// previous copy's, copied from it) and those `now` refused as not supported. None for
/// a kind that does not record them.
///
/// A value refused as too large is not recorded: whether the store takes it depends on
/// the entry's other attributes too (ext4 keeps all of a file's in one block), which a
/// probe of that one value on an empty file does not see; it would answer "taken", and
/// the entry be copied, refused again and reported, every run. Such an entry is
/// compared as before the record (its digest lacks the value, so it is linked while
/// its ctime is unchanged, copied again when it moves).
fn refused_names(kind: Kind, before: &[Vec<u8>], now: &[(Vec<u8>, &str)]) -> Vec<Vec<u8>> {
    if !Entry::records_refused(kind) {
        return Vec::new();
    }
    let mut names: Vec<Vec<u8>> = before
        .iter()
        .cloned()
        .chain(
            now.iter()
                .filter(|(_, why)| *why == fsx::NOT_SUPPORTED)
                .map(|(n, _)| n.clone()),
        )
        .collect();
    names.sort();
    names.dedup();
    names
}

/// How many names [`unsaid_refusals_line`] shows (then "…").
const UNSAID_NAMED: usize = 8;

/// Adds `name` to those [`unsaid_refusals_line`] shows, kept to one more than it names
/// (a source may hold any number of distinct `security.SMACK64*` names).
pub fn add_unsaid(names: &mut std::collections::BTreeSet<Vec<u8>>, name: &[u8]) {
    if names.len() <= UNSAID_NAMED && !names.contains(name) {
        names.insert(name.to_vec());
    }
}

/// The one log line of a walk (`done`: "backed up") or a restore ("restored") that kept
/// `n` entries without attributes `names` the store does not support and whose refusal
/// is only logged ([`fsx::xattr_refusal_said`]).
pub fn unsaid_refusals_line(
    n: u64,
    names: &std::collections::BTreeSet<Vec<u8>>,
    done: &str,
) -> String {
    let mut shown: Vec<String> = names
        .iter()
        .take(UNSAID_NAMED)
        .map(|n| crate::relpath::shown_bytes(n))
        .collect();
    if names.len() > UNSAID_NAMED {
        shown.push("…".into());
    }
    format!(
        "{n} entr{} {done} without extended attributes the backup file system does not support ({}): recorded as refused in the manifest, not in the snapshot; logged only, as a security module's label its policy applies again (docs/stores.md)",
        if n == 1 { "y" } else { "ies" },
        shown.join(", "),
    )
}

/// The problems of extended attributes the backup file system refused on `rel`: all but
/// the security modules' labels it does not support (`security.selinux`, …), which are
/// only logged ([`fsx::xattr_refusal_said`]:
/// the walk counts them into one line, [`Walk::unsaid_refusals`]). Also finalize's,
/// for the spine directories of a shard run.
pub fn refused_xattr_problems(rel: &RelPath, refused: &[(Vec<u8>, &str)]) -> Vec<Problem> {
    let mut out = Vec::new();
    for (n, why) in refused {
        let name = crate::relpath::shown_bytes(n);
        if fsx::xattr_refusal_said(n, why) {
            out.push(Problem {
                path: rel.escaped(),
                kind: ProblemKind::Metadata,
                action: "set extended attribute".into(),
                error: format!("{name} {why} the backup file system"),
            });
        } else {
            tracing::debug!("{rel}: backup file system refuses {name}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attribute name that is not UTF-8 is written as a local path is in a message
    /// (`relpath::shown`: `\xE9`), not with U+FFFD (its byte lost) nor `%E9`.
    #[test]
    fn a_refused_attribute_name_that_is_not_utf8_keeps_its_bytes() {
        let rel = RelPath::new(b"d/f").unwrap();
        let ps = refused_xattr_problems(&rel, &[(b"user.n\xe9%".to_vec(), "too large for")]);
        assert_eq!(ps.len(), 1);
        assert_eq!(
            ps[0].error,
            "user.n\\xE9% too large for the backup file system"
        );
    }
}
