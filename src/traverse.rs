//! The one parallel tree traversal every tree-shaped job runs on: backup, restore,
//! diff/verify, the deletion of expired snapshots and `list --space`. It owns the
//! scheduling and the bookkeeping; the I/O is the visitor's. No I/O of its own.
//!
//! Shaped after ripgrep's `ignore::WalkParallel`:
//! - a bounded pool of `threads` workers over a LIFO stack, so the walk goes depth-first
//!   and the frontier (memory, open descriptors) stays small;
//! - a directory's listing is split into chunks of [`CHUNK`] items, so the entries of one
//!   huge directory are handled by several workers at once; the worker that opened the
//!   directory goes on with its first chunk at once (its listing is fresh: over NFS the
//!   attributes it brought are cached only for a while); and a chunk splits off the
//!   second half of what it has left whenever nothing else is queued while a worker (and
//!   a permit of the gate) idles: the end of a walk, when a few directories are left,
//!   is not walked one item at a time by one worker each;
//! - a queued subdirectory holds its parent's node and its own name, never an open
//!   descriptor: it is opened when a worker takes it, so a directory with 100,000
//!   subdirectories does not need 100,000 descriptors;
//! - three "done" steps: [`Visitor::visited`] when every item of a directory's own
//!   listing has been visited (a manifest block is complete), [`Visitor::listed`] when
//!   besides every subdirectory it queued has been opened (a subdirectory's `open` may
//!   correct its entry: with the stack's depth-first order, this comes only once all
//!   but one of those subdirectories' subtrees are walked, so what a visitor keeps until
//!   then is kept through them), and [`Visitor::finish`] when its whole subtree is
//!   (directory metadata that must come after the children);
//! - per-entry errors are the visitor's items to report, never a reason to stop; a
//!   visitor can skip a subtree ([`Opened::Skip`], or not descending) or stop the whole
//!   walk ([`Step::Quit`], or the caller's cancel flag). After a stop no `finish` runs;
//! - a walk can stay on one file system ([`OneFs`], `one_file_system`): a subdirectory
//!   whose device (from the `lstat` the visitor already has) is not the root's is not
//!   walked into; the visitor records it as an empty directory
//!   ([`Visitor::mount_point`]) and the walk counts it and names the first few;
//! - a walk never enters the store it writes into ([`Fence`]): met inside the source
//!   through a second mount of the same file system (a bind mount, a subdirectory of
//!   the same NFS export mounted apart), where no comparison of paths can see it. The
//!   visitor compares each subdirectory's `(st_dev, st_ino)`, from the `lstat` it has
//!   already, with the store's, before it records the subdirectory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::pool::{self, Queue};
use crate::relpath::RelPath;

/// Items per task when a directory's listing is split across workers.
pub const CHUNK: usize = 256;

/// Items left in a chunk below which it is not split when threads idle
/// ([`pool::Queue::hungry`]).
const SPLIT_MIN: usize = 2;

/// Mount points a walk names (the first in path order); the rest are counted.
pub const MOUNT_POINTS_NAMED: usize = 10;

/// A walk that stays on the file system of its root, as `rsync -x`, `tar
/// --one-file-system` and restic's `--one-file-system` do: a directory on another
/// device (a mount point below the root, a btrfs subvolume) is kept as an empty
/// directory with its own metadata, and its contents are not walked. A bind mount of
/// the same file system is the same device, so it is walked. The device compared is
/// the one the visitor's `lstat` of the directory gave ([`Visitor::device`]): no call
/// of its own.
pub struct OneFs {
    /// The device of the tree's root (a shard unit's walk is given the source's).
    dev: u64,
    count: AtomicU64,
    /// The first [`MOUNT_POINTS_NAMED`] mount points met, in path order.
    first: Mutex<Vec<RelPath>>,
}

/// The mount points a walk did not enter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountPoints {
    pub count: u64,
    /// The first [`MOUNT_POINTS_NAMED`] of them, in path order.
    pub first: Vec<RelPath>,
}

impl OneFs {
    /// A walk that stays on device `dev` (the `st_dev` of the tree's root).
    pub fn new(dev: u64) -> OneFs {
        OneFs {
            dev,
            count: AtomicU64::new(0),
            first: Mutex::new(Vec::new()),
        }
    }

    /// Whether a directory on device `dev` is on another file system than the root.
    pub fn crosses(&self, dev: u64) -> bool {
        dev != self.dev
    }

    /// Counts a mount point not walked into; keeps the first ones by path.
    pub fn record(&self, rel: &RelPath) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if first.len() == MOUNT_POINTS_NAMED && first.last().is_some_and(|l| rel > l) {
            return;
        }
        let at = first.partition_point(|p| p < rel);
        first.insert(at, rel.clone());
        first.truncate(MOUNT_POINTS_NAMED);
    }

    /// The mount points met so far.
    pub fn skipped(&self) -> MountPoints {
        MountPoints {
            count: self.count.load(Ordering::Relaxed),
            first: self.first.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// The directory a walk writes into (a store's root, a local restic repository's
/// root), by its `(st_dev, st_ino)`, taken once before the walk. A walk of a source
/// that holds it through another mount (`mount --bind X Xb; backup --source X --dest
/// Xb/backup`; an NFS export's subdirectory mounted apart, which shares the export's
/// superblock, so its device and inode numbers are the same) would otherwise copy its
/// own staging into itself, deeper each level, until the stack overflows. The visitor
/// asks [`Fence::is`] of each directory it is about to record (two integer
/// comparisons, no system call) and leaves the store out, a problem of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    dev: u64,
    ino: u64,
}

impl Fence {
    /// The directory with device `dev` and inode `ino`.
    pub fn new(dev: u64, ino: u64) -> Fence {
        Fence { dev, ino }
    }

    /// Whether the directory with device `dev` and inode `ino` is the fenced one.
    #[inline]
    pub fn is(&self, dev: u64, ino: u64) -> bool {
        ino == self.ino && dev == self.dev
    }

    /// Whether inode number `ino` (a listing's `d_ino`) may be the fenced directory's:
    /// only then is its device worth an `lstat`.
    #[inline]
    pub fn is_ino(&self, ino: u64) -> bool {
        ino == self.ino
    }
}

/// What the visitor does after one item.
pub enum Step<S> {
    /// Go on with the next item.
    Next,
    /// The item is a directory to walk into: its name and what its task carries.
    Descend(Vec<u8>, S),
    /// Stop the whole walk (a fatal error).
    Quit,
}

/// What opening a directory gave.
pub enum Opened<D, I> {
    /// The directory's state and its listing.
    Dir(D, Vec<I>),
    /// Not walked (unreadable, vanished, excluded): the visitor has said why.
    Skip,
}

/// A directory being walked: the visitor's state for it, its path from the walk's root
/// and its parent. It lives until its last chunk and its last subdirectory are done.
pub struct Dir<D> {
    pub rel: RelPath,
    pub parent: Option<Arc<Dir<D>>>,
    pub state: D,
    /// Own chunks still being visited ([`Visitor::visited`] comes when none is left).
    own: AtomicUsize,
    /// Own chunks still being visited plus subdirectories queued and not yet opened
    /// ([`Visitor::listed`] comes when none is left).
    chunks: AtomicUsize,
    /// Own chunks plus subdirectories not yet finished.
    pending: AtomicUsize,
}

/// A directory holds its parent, so the last of a chain let go would drop its parent
/// inside its own drop, and so on up: as many nested frames as levels. The parents are
/// let go one after the other here instead, each unlinked before it is dropped.
impl<D> Drop for Dir<D> {
    fn drop(&mut self) {
        let mut next = self.parent.take();
        while let Some(p) = next {
            // The last holder of `p`: take its parent before `p` goes; else `p` lives on.
            next = Arc::into_inner(p).and_then(|mut d| d.parent.take());
        }
    }
}

/// A walk's behaviour. Methods run on the pool's workers, concurrently.
pub trait Visitor: Sync {
    /// Per-directory state: open descriptors on each side, a manifest block, counts.
    type State: Send + Sync;
    /// One item of a directory's listing (a name, or a pair of entries for a comparison).
    type Item: Send;
    /// What a queued subdirectory carries besides its name (its `lstat`, say). Must not
    /// hold a descriptor.
    type Sub: Send;

    /// Opens a directory: the root (no parent, empty name) or `name` in `parent`.
    fn open(
        &self,
        parent: Option<&Dir<Self::State>>,
        name: &[u8],
        rel: &RelPath,
        sub: Self::Sub,
    ) -> Opened<Self::State, Self::Item>;

    /// Visits one item of `dir`'s listing.
    fn visit(&self, dir: &Arc<Dir<Self::State>>, item: Self::Item) -> Step<Self::Sub>;

    /// Every item of `dir`'s own listing has been visited; its subdirectories may not
    /// be opened yet. Comes before [`Visitor::listed`]. What a visitor keeps of `dir`'s
    /// items until here is kept while one thread walks a subdirectory met in `dir`'s
    /// other chunks at most (not through every subdirectory's subtree, as until
    /// `listed`).
    fn visited(&self, _dir: &Dir<Self::State>) {}

    /// Every item of `dir`'s own listing has been visited and each subdirectory it
    /// walks into has been opened (`open` returned), so a subdirectory's `open` can
    /// still correct its entry in `dir`'s state; those subdirectories' own items may
    /// still be running.
    fn listed(&self, _dir: &Dir<Self::State>) {}

    /// `dir` and everything under it are done. Not called after the walk was stopped.
    fn finish(&self, _dir: &Dir<Self::State>) {}

    /// The file system the walk stays on, if it stays on one (`one_file_system`).
    fn one_fs(&self) -> Option<&OneFs> {
        None
    }

    /// The device of a subdirectory to walk into, from the `lstat` its `Sub` carries;
    /// asked only of a walk that stays on one file system ([`Visitor::one_fs`]).
    fn device(&self, _sub: &Self::Sub) -> Option<u64> {
        None
    }

    /// `name` in `dir` (at `rel`), visited as a directory to walk into, is on another
    /// file system ([`OneFs`]): it is not walked into. The visitor records it as an
    /// empty directory with the metadata `sub` carries. No `open`, `listed` or
    /// `finish` comes for it.
    fn mount_point(
        &self,
        _dir: &Arc<Dir<Self::State>>,
        _name: Vec<u8>,
        _rel: &RelPath,
        _sub: Self::Sub,
    ) {
    }
}

enum Task<V: Visitor> {
    Dir {
        parent: Option<Arc<Dir<V::State>>>,
        name: Vec<u8>,
        sub: V::Sub,
    },
    Chunk {
        dir: Arc<Dir<V::State>>,
        items: Vec<V::Item>,
    },
}

/// Walks from the root on `threads` workers until every directory is done or `cancel`
/// is set (by the caller, or by a visitor's [`Step::Quit`]).
pub fn walk<V: Visitor>(visitor: &V, root: V::Sub, threads: usize, cancel: &AtomicBool) {
    walk_at(visitor, root, RelPath::root(), threads, None, cancel)
}

/// [`walk`], with the root directory at `root_rel` of a larger tree (a shard worker
/// walks one unit of the source): every `rel` the visitor sees is a path of that tree.
/// With a `gate`, each task waits for one of its permits (the walks of one shard
/// worker's units share `--jobs`).
pub fn walk_at<V: Visitor>(
    visitor: &V,
    root: V::Sub,
    root_rel: RelPath,
    threads: usize,
    gate: Option<&pool::Gate>,
    cancel: &AtomicBool,
) {
    let first = Task::<V>::Dir {
        parent: None,
        name: Vec::new(),
        sub: root,
    };
    let w = Walker {
        visitor,
        cancel,
        root_rel,
    };
    pool::run_gated(threads, vec![first], cancel, gate, |t, q| w.task(t, q));
}

struct Walker<'a, V> {
    visitor: &'a V,
    cancel: &'a AtomicBool,
    /// The root's path (empty for a whole walk).
    root_rel: RelPath,
}

impl<V: Visitor> Walker<'_, V> {
    fn task(&self, t: Task<V>, q: &Queue<'_, Task<V>>) {
        match t {
            Task::Dir { parent, name, sub } => self.open(parent, name, sub, q),
            Task::Chunk { dir, items } => self.chunk(dir, items, q),
        }
    }

    fn open(
        &self,
        parent: Option<Arc<Dir<V::State>>>,
        name: Vec<u8>,
        sub: V::Sub,
        q: &Queue<'_, Task<V>>,
    ) {
        let rel = match &parent {
            Some(p) => p.rel.join(&name),
            None => self.root_rel.clone(),
        };
        let opened = self.visitor.open(parent.as_deref(), &name, &rel, sub);
        if let Some(p) = &parent {
            self.chunk_or_sub_listed(p);
        }
        let (state, items) = match opened {
            Opened::Dir(state, items) => (state, items),
            Opened::Skip => {
                if let Some(p) = &parent {
                    self.child_done(p);
                }
                return;
            }
        };
        let n = items.len().div_ceil(CHUNK).max(1);
        let dir = Arc::new(Dir {
            rel,
            parent,
            state,
            own: AtomicUsize::new(n),
            chunks: AtomicUsize::new(n),
            pending: AtomicUsize::new(n),
        });
        // The first chunk is visited here and now; the others are queued for any
        // worker. Queued on the shared stack, the first chunk waited behind what other
        // workers pushed meanwhile: over NFS, past the client's attribute cache of the
        // listing just read (a LOOKUP per entry; 10k in an unchanged incremental of
        // 100,000 files by 4 shard workers of 4 jobs, docs/scale-out.md).
        let mut items = items.into_iter();
        let first: Vec<V::Item> = items.by_ref().take(CHUNK).collect();
        for _ in 1..n {
            q.push(Task::Chunk {
                dir: dir.clone(),
                items: items.by_ref().take(CHUNK).collect(),
            });
        }
        self.chunk(dir, first, q);
    }

    fn chunk(&self, dir: Arc<Dir<V::State>>, items: Vec<V::Item>, q: &Queue<'_, Task<V>>) {
        let mut items = VecDeque::from(items);
        while let Some(item) = items.pop_front() {
            if self.cancel.load(Ordering::Relaxed) {
                return;
            }
            // The end of a walk: one directory's items go one by one while threads and
            // permits idle. The second half of what is left becomes a chunk of its own.
            if items.len() >= SPLIT_MIN && q.hungry() {
                let back = items.split_off(items.len() / 2);
                dir.own.fetch_add(1, Ordering::AcqRel);
                dir.chunks.fetch_add(1, Ordering::AcqRel);
                dir.pending.fetch_add(1, Ordering::AcqRel);
                q.push_first(Task::Chunk {
                    dir: dir.clone(),
                    items: back.into(),
                });
            }
            match self.visitor.visit(&dir, item) {
                Step::Next => {}
                Step::Descend(name, sub) => {
                    if let Some(fs) = self.visitor.one_fs()
                        && self.visitor.device(&sub).is_some_and(|d| fs.crosses(d))
                    {
                        let rel = dir.rel.join(&name);
                        fs.record(&rel);
                        self.visitor.mount_point(&dir, name, &rel, sub);
                        continue;
                    }
                    dir.chunks.fetch_add(1, Ordering::AcqRel);
                    dir.pending.fetch_add(1, Ordering::AcqRel);
                    q.push(Task::Dir {
                        parent: Some(dir.clone()),
                        name,
                        sub,
                    });
                }
                Step::Quit => {
                    self.cancel.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
        if dir.own.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.visitor.visited(&dir);
        }
        self.chunk_or_sub_listed(&dir);
        self.child_done(&dir);
    }

    /// One chunk of `dir` is visited, or one subdirectory it queued is opened: the last
    /// one makes `dir` listed.
    fn chunk_or_sub_listed(&self, dir: &Dir<V::State>) {
        if dir.chunks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.visitor.listed(dir);
        }
    }

    /// One chunk or subdirectory of `dir` is done; the last one finishes `dir`, and so on
    /// up the tree.
    fn child_done(&self, dir: &Arc<Dir<V::State>>) {
        let mut cur = dir.clone();
        loop {
            if cur.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
                return;
            }
            if self.cancel.load(Ordering::Relaxed) {
                return;
            }
            self.visitor.finish(&cur);
            match cur.parent.clone() {
                Some(p) => cur = p,
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// A model tree: every directory `d` has `fanout(d)` children; those whose number is
    /// even are directories down to `depth`.
    struct Model {
        depth: usize,
        fanout: usize,
        /// rel path -> (items visited, finished after all children?)
        seen: Mutex<BTreeMap<String, (usize, bool)>>,
        finished: Mutex<Vec<String>>,
        quit_at: Option<String>,
        skip: Option<String>,
    }

    impl Visitor for Model {
        type State = usize;
        type Item = (Vec<u8>, bool);
        type Sub = usize;

        fn open(
            &self,
            _p: Option<&Dir<usize>>,
            _n: &[u8],
            rel: &RelPath,
            depth: usize,
        ) -> Opened<usize, Self::Item> {
            if self.skip.as_deref() == Some(&key(rel)) {
                return Opened::Skip;
            }
            let items = model_items(self.fanout, depth < self.depth);
            Opened::Dir(depth, items)
        }

        fn visit(&self, dir: &Arc<Dir<usize>>, (name, is_dir): Self::Item) -> Step<usize> {
            let rel = key(&dir.rel.join(&name));
            if self.quit_at.as_deref() == Some(&rel) {
                return Step::Quit;
            }
            self.seen
                .lock()
                .unwrap()
                .entry(key(&dir.rel))
                .or_default()
                .0 += 1;
            model_step(dir, name, is_dir)
        }

        fn finish(&self, dir: &Dir<usize>) {
            let me = key(&dir.rel);
            let fin = self.finished.lock().unwrap();
            // Every directory below me finished before me.
            let below = fin
                .iter()
                .filter(|f| f.starts_with(&format!("{me}/")) || (me.is_empty() && !f.is_empty()))
                .count();
            drop(fin);
            self.seen.lock().unwrap().entry(me.clone()).or_default().1 =
                below == self.expected_below(&me);
            self.finished.lock().unwrap().push(me);
        }
    }

    /// A model directory's items: `e0`, `e1`, …; the even ones are directories when
    /// `dirs`.
    fn model_items(fanout: usize, dirs: bool) -> Vec<(Vec<u8>, bool)> {
        (0..fanout)
            .map(|i| (format!("e{i}").into_bytes(), dirs && i % 2 == 0))
            .collect()
    }

    /// A model visitor's step at item `name` of `dir`: into it, one level deeper, when
    /// it is a directory.
    fn model_step(dir: &Dir<usize>, name: Vec<u8>, is_dir: bool) -> Step<usize> {
        match is_dir {
            true => Step::Descend(name, dir.state + 1),
            false => Step::Next,
        }
    }

    /// The path as the tests name it: "" for the root.
    fn key(rel: &RelPath) -> String {
        String::from_utf8_lossy(rel.as_bytes()).into_owned()
    }

    impl Model {
        fn new(depth: usize, fanout: usize) -> Model {
            Model {
                depth,
                fanout,
                seen: Mutex::default(),
                finished: Mutex::default(),
                quit_at: None,
                skip: None,
            }
        }
        fn dirs_per_level(&self) -> usize {
            self.fanout.div_ceil(2)
        }
        /// Directories strictly below a directory at `rel`'s depth.
        fn expected_below(&self, rel: &str) -> usize {
            let d = if rel.is_empty() {
                0
            } else {
                rel.matches('/').count() + 1
            };
            (1..=self.depth - d)
                .map(|k| self.dirs_per_level().pow(k as u32))
                .sum()
        }
    }

    /// A chain of `depth` directories, each holding the next one only.
    struct Chain {
        depth: usize,
        finished: AtomicUsize,
    }

    impl Visitor for Chain {
        type State = usize;
        type Item = ();
        type Sub = usize;

        fn open(
            &self,
            _: Option<&Dir<usize>>,
            _: &[u8],
            _: &RelPath,
            d: usize,
        ) -> Opened<usize, ()> {
            Opened::Dir(d, if d < self.depth { vec![()] } else { Vec::new() })
        }

        fn visit(&self, dir: &Arc<Dir<usize>>, (): ()) -> Step<usize> {
            Step::Descend(b"d".to_vec(), dir.state + 1)
        }

        fn finish(&self, _dir: &Dir<usize>) {
            self.finished.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A directory lives until its subtree is done, and holds its parent: the last
    /// directory of a deep chain finished let go of every level above at once, each
    /// drop inside the one below it, and a tree 9,500 levels deep overflowed a walk
    /// thread's stack (the backup aborted, SIGABRT, no report). The levels are let go
    /// one after the other now (`Drop for Dir`).
    #[test]
    fn a_chain_deeper_than_a_threads_stack_holds_frames_for_is_walked_and_let_go() {
        let depth = 15_000;
        let v = Chain {
            depth,
            finished: AtomicUsize::new(0),
        };
        walk(&v, 0, 2, &AtomicBool::new(false));
        assert_eq!(v.finished.load(Ordering::Relaxed), depth + 1);
    }

    #[test]
    fn visits_every_item_once_and_finishes_children_first() {
        // (depth, fanout): a deep narrow tree, and wide directories of three chunks each.
        for (depth, fanout, dirs) in [(4, 6, 1 + 3 + 9 + 27 + 81), (1, 600, 1 + 300)] {
            for threads in [1, 8] {
                let m = Model::new(depth, fanout);
                walk(&m, 0, threads, &AtomicBool::new(false));
                let seen = m.seen.lock().unwrap();
                assert_eq!(seen.len(), dirs, "threads {threads}");
                assert!(
                    seen.values().all(|(n, ordered)| *n == fanout && *ordered),
                    "threads {threads}"
                );
                assert_eq!(m.finished.lock().unwrap().len(), dirs);
                assert_eq!(
                    m.finished.lock().unwrap().last().map(String::as_str),
                    Some("")
                );
            }
        }
    }

    /// One directory of files, fewer than a chunk: each visit takes 3 ms.
    struct Flat {
        items: usize,
        now: AtomicUsize,
        peak: AtomicUsize,
        visited: Mutex<Vec<usize>>,
        listed_after: Mutex<Vec<usize>>,
    }

    impl Visitor for Flat {
        type State = ();
        type Item = usize;
        type Sub = ();

        fn open(&self, _: Option<&Dir<()>>, _: &[u8], _: &RelPath, _: ()) -> Opened<(), usize> {
            Opened::Dir((), (0..self.items).collect())
        }

        fn visit(&self, _: &Arc<Dir<()>>, i: usize) -> Step<()> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(3));
            self.visited.lock().unwrap().push(i);
            self.now.fetch_sub(1, Ordering::SeqCst);
            Step::Next
        }

        fn listed(&self, _: &Dir<()>) {
            let n = self.visited.lock().unwrap().len();
            self.listed_after.lock().unwrap().push(n);
        }
    }

    #[test]
    fn a_directory_left_alone_at_the_end_of_a_walk_is_shared_by_the_idle_threads() {
        for threads in [1, 4, 8] {
            let f = Flat {
                items: 64,
                now: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                visited: Mutex::default(),
                listed_after: Mutex::default(),
            };
            walk(&f, (), threads, &AtomicBool::new(false));
            let mut v = f.visited.into_inner().unwrap();
            v.sort_unstable();
            assert_eq!(v, (0..64).collect::<Vec<_>>(), "each item once");
            // `listed` once, after every item.
            assert_eq!(f.listed_after.into_inner().unwrap(), [64]);
            // 64 items are one chunk: before, one thread visited them all.
            let peak = f.peak.into_inner();
            assert!(
                peak > 1 || threads == 1,
                "{threads} threads: at most {peak} visits at once"
            );
            assert!(peak <= threads);
        }
    }

    #[test]
    fn quit_stops_the_walk_and_skips_finish() {
        for threads in [1, 8] {
            let mut m = Model::new(3, 10);
            m.quit_at = Some("e0/e2".into());
            let cancel = AtomicBool::new(false);
            walk(&m, 0, threads, &cancel);
            assert!(cancel.load(Ordering::Relaxed));
            let fin = m.finished.lock().unwrap();
            assert!(
                !fin.iter().any(|f| f.is_empty() || f == "e0"),
                "threads {threads}: {fin:?}"
            );
            // Far fewer directories than the 1 + 5 + 25 + 125 of the whole tree.
            assert!(m.seen.lock().unwrap().len() < 156);
        }
    }

    #[test]
    fn a_skipped_directory_is_not_walked_and_its_parent_still_finishes() {
        for threads in [1, 8] {
            let mut m = Model::new(2, 4);
            m.skip = Some("e2".into());
            walk(&m, 0, threads, &AtomicBool::new(false));
            let seen = m.seen.lock().unwrap();
            assert!(!seen.contains_key("e2") && !seen.contains_key("e2/e0"));
            assert!(seen.contains_key("e0/e2"));
            assert_eq!(
                m.finished.lock().unwrap().last().map(String::as_str),
                Some("")
            );
        }
    }

    /// Records each worker's steps: which directory it opened, and whose item it
    /// visited. Every directory holds `fanout` items, the even ones directories down to
    /// `depth`; a visit takes 100 µs, so the workers interleave.
    struct Steps {
        depth: usize,
        fanout: usize,
        steps: Mutex<Vec<(std::thread::ThreadId, &'static str, String)>>,
    }

    impl Visitor for Steps {
        type State = usize;
        type Item = (Vec<u8>, bool);
        type Sub = usize;

        fn open(
            &self,
            _: Option<&Dir<usize>>,
            _: &[u8],
            rel: &RelPath,
            depth: usize,
        ) -> Opened<usize, Self::Item> {
            let me = std::thread::current().id();
            self.steps.lock().unwrap().push((me, "open", key(rel)));
            let items = model_items(self.fanout, depth < self.depth);
            Opened::Dir(depth, items)
        }

        fn visit(&self, dir: &Arc<Dir<usize>>, (name, is_dir): Self::Item) -> Step<usize> {
            let me = std::thread::current().id();
            self.steps
                .lock()
                .unwrap()
                .push((me, "visit", key(&dir.rel)));
            std::thread::sleep(std::time::Duration::from_micros(100));
            model_step(dir, name, is_dir)
        }
    }

    /// The worker that opens a directory (over NFS: reads its listing, and with it the
    /// attributes the client caches for a while) goes straight on with its items, before
    /// anything other workers queued meanwhile. Queued, the first chunk waited behind
    /// them past the cache's life (a LOOKUP per entry).
    #[test]
    fn the_worker_that_opens_a_directory_visits_its_items_next() {
        let s = Steps {
            depth: 4,
            fanout: 10,
            steps: Mutex::default(),
        };
        walk(&s, 0, 8, &AtomicBool::new(false));
        let steps = s.steps.into_inner().unwrap();
        let opened: Vec<usize> = (0..steps.len()).filter(|&i| steps[i].1 == "open").collect();
        assert_eq!(opened.len(), 1 + 5 + 25 + 125 + 625);
        let late: Vec<&String> = opened
            .iter()
            .filter(|&&i| {
                let (me, _, dir) = &steps[i];
                let next = steps[i + 1..].iter().find(|s| s.0 == *me);
                next.is_none_or(|n| n.1 != "visit" || n.2 != *dir)
            })
            .map(|&i| &steps[i].2)
            .collect();
        assert!(late.is_empty(), "{} directories: {late:?}", late.len());
    }

    /// A root with `e0` … `e3`, all directories with two files each; `e1` and `e3` are
    /// on device 2, the root on device 1.
    struct Mounts {
        one_fs: Option<OneFs>,
        opened: Mutex<Vec<String>>,
        mount_points: Mutex<Vec<String>>,
    }

    impl Visitor for Mounts {
        type State = ();
        type Item = (Vec<u8>, bool);
        /// The directory's device.
        type Sub = u64;

        fn open(
            &self,
            _: Option<&Dir<()>>,
            _: &[u8],
            rel: &RelPath,
            _: u64,
        ) -> Opened<(), Self::Item> {
            self.opened.lock().unwrap().push(key(rel));
            Opened::Dir(
                (),
                model_items(if rel.is_root() { 4 } else { 2 }, rel.is_root()),
            )
        }

        fn visit(&self, dir: &Arc<Dir<()>>, (name, is_dir): Self::Item) -> Step<u64> {
            let mounted = dir.rel.is_root() && (name == b"e1" || name == b"e3");
            let dev = if mounted { 2 } else { 1 };
            if is_dir || mounted {
                Step::Descend(name, dev)
            } else {
                Step::Next
            }
        }

        fn one_fs(&self) -> Option<&OneFs> {
            self.one_fs.as_ref()
        }

        fn device(&self, dev: &u64) -> Option<u64> {
            Some(*dev)
        }

        fn mount_point(&self, _: &Arc<Dir<()>>, _: Vec<u8>, rel: &RelPath, _: u64) {
            self.mount_points.lock().unwrap().push(key(rel));
        }
    }

    #[test]
    fn a_walk_on_one_file_system_does_not_enter_a_directory_on_another_device() {
        for (one_fs, opened, skipped) in [
            (false, vec!["", "e0", "e1", "e2", "e3"], vec![]),
            (true, vec!["", "e0", "e2"], vec!["e1", "e3"]),
        ] {
            let m = Mounts {
                one_fs: one_fs.then(|| OneFs::new(1)),
                opened: Mutex::default(),
                mount_points: Mutex::default(),
            };
            walk(&m, 1, 2, &AtomicBool::new(false));
            let mut o = m.opened.into_inner().unwrap();
            o.sort();
            assert_eq!(o, opened);
            let mut mp = m.mount_points.into_inner().unwrap();
            mp.sort();
            assert_eq!(mp, skipped);
            if let Some(fs) = m.one_fs {
                let s = fs.skipped();
                assert_eq!(s.count, 2);
                assert_eq!(s.first.iter().map(key).collect::<Vec<_>>(), ["e1", "e3"]);
            }
        }
    }

    #[test]
    fn a_walk_names_the_first_mount_points_in_path_order_and_counts_the_rest() {
        let fs = OneFs::new(1);
        for i in (0..25).rev() {
            fs.record(&RelPath::new(format!("m{i:02}").as_bytes()).unwrap());
        }
        let s = fs.skipped();
        assert_eq!(s.count, 25);
        let want: Vec<String> = (0..MOUNT_POINTS_NAMED)
            .map(|i| format!("m{i:02}"))
            .collect();
        assert_eq!(s.first.iter().map(key).collect::<Vec<_>>(), want);
    }

    /// Records the directories opened, and at each `listed` whether every
    /// subdirectory of that directory had been opened by then.
    struct Opens {
        depth: usize,
        fanout: usize,
        opened: Mutex<Vec<String>>,
        listed: Mutex<Vec<(String, bool)>>,
    }

    impl Visitor for Opens {
        type State = usize;
        type Item = (Vec<u8>, bool);
        type Sub = usize;

        fn open(
            &self,
            _p: Option<&Dir<usize>>,
            _n: &[u8],
            rel: &RelPath,
            depth: usize,
        ) -> Opened<usize, Self::Item> {
            let k = key(rel);
            self.opened.lock().unwrap().push(k.clone());
            // A skipped subdirectory counts as opened too.
            if k.ends_with("e2") {
                return Opened::Skip;
            }
            Opened::Dir(depth, model_items(self.fanout, depth < self.depth))
        }

        fn visit(&self, dir: &Arc<Dir<usize>>, (name, is_dir): Self::Item) -> Step<usize> {
            model_step(dir, name, is_dir)
        }

        fn listed(&self, dir: &Dir<usize>) {
            let opened = self.opened.lock().unwrap();
            let all = model_items(self.fanout, dir.state < self.depth)
                .into_iter()
                .filter(|(_, is_dir)| *is_dir)
                .all(|(n, _)| opened.contains(&key(&dir.rel.join(&n))));
            drop(opened);
            self.listed.lock().unwrap().push((key(&dir.rel), all));
        }
    }

    /// `listed` comes once per directory walked, after its items are visited and each
    /// subdirectory it walks into is opened (or skipped): the backup's walk corrects a
    /// subdirectory's entry in its parent's manifest block from the subdirectory's
    /// `open` (its listing's stat), so the block must not be written before.
    #[test]
    fn a_directory_is_listed_after_each_of_its_subdirectories_is_opened() {
        for (depth, fanout) in [(3, 6), (1, 600)] {
            for threads in [1, 8] {
                let v = Opens {
                    depth,
                    fanout,
                    opened: Mutex::default(),
                    listed: Mutex::default(),
                };
                walk(&v, 0, threads, &AtomicBool::new(false));
                let opened = v.opened.into_inner().unwrap();
                let listed = v.listed.into_inner().unwrap();
                let walked = opened.iter().filter(|k| !k.ends_with("e2")).count();
                assert_eq!(listed.len(), walked, "threads {threads}");
                assert!(
                    listed.iter().all(|(_, all)| *all),
                    "threads {threads}: listed before a subdirectory was opened: {listed:?}"
                );
            }
        }
    }

    /// Counts the directories opened and not yet `visited`, and those opened and not
    /// yet `listed`, at their most.
    #[derive(Default)]
    struct Held {
        depth: usize,
        fanout: usize,
        unvisited: AtomicUsize,
        unlisted: AtomicUsize,
        peak_unvisited: AtomicUsize,
        peak_unlisted: AtomicUsize,
        visited_before_listed: Mutex<Vec<bool>>,
        was_visited: Mutex<std::collections::HashSet<String>>,
    }

    impl Visitor for Held {
        type State = usize;
        type Item = (Vec<u8>, bool);
        type Sub = usize;

        fn open(
            &self,
            _: Option<&Dir<usize>>,
            _: &[u8],
            _: &RelPath,
            depth: usize,
        ) -> Opened<usize, Self::Item> {
            let n = self.unvisited.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak_unvisited.fetch_max(n, Ordering::SeqCst);
            let n = self.unlisted.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak_unlisted.fetch_max(n, Ordering::SeqCst);
            Opened::Dir(depth, model_items(self.fanout, depth < self.depth))
        }

        fn visit(&self, dir: &Arc<Dir<usize>>, (name, is_dir): Self::Item) -> Step<usize> {
            model_step(dir, name, is_dir)
        }

        fn visited(&self, dir: &Dir<usize>) {
            self.unvisited.fetch_sub(1, Ordering::SeqCst);
            self.was_visited.lock().unwrap().insert(key(&dir.rel));
        }

        fn listed(&self, dir: &Dir<usize>) {
            self.unlisted.fetch_sub(1, Ordering::SeqCst);
            let v = self.was_visited.lock().unwrap().contains(&key(&dir.rel));
            self.visited_before_listed.lock().unwrap().push(v);
        }
    }

    /// `visited` comes once a directory's own items are visited, before the walk goes
    /// into its subdirectories' subtrees: with one thread and directories of one chunk,
    /// one directory at a time is opened and not visited (what the backup's walk holds a
    /// manifest block for), while up to a directory a level is opened and not `listed`
    /// (each holds until its last subdirectory is opened, after the others' subtrees).
    #[test]
    fn a_directory_is_visited_before_its_subdirectories_are_walked() {
        let h = Held {
            depth: 5,
            fanout: 6,
            ..Held::default()
        };
        walk(&h, 0, 1, &AtomicBool::new(false));
        assert_eq!(h.peak_unvisited.into_inner(), 1);
        assert!(h.peak_unlisted.into_inner() >= 5);
        let order = h.visited_before_listed.into_inner().unwrap();
        assert_eq!(order.len(), (0..=5).map(|k| 3usize.pow(k)).sum::<usize>());
        assert!(
            order.iter().all(|v| *v),
            "each directory visited before it is listed"
        );
        // Many threads: each directory visited once, before it is listed.
        let h = Held {
            depth: 1,
            fanout: 600,
            ..Held::default()
        };
        walk(&h, 0, 8, &AtomicBool::new(false));
        assert_eq!(h.unvisited.into_inner(), 0);
        let order = h.visited_before_listed.into_inner().unwrap();
        assert_eq!(order.len(), 1 + 300);
        assert!(order.iter().all(|v| *v));
    }

    #[test]
    fn an_empty_directory_is_listed_and_finished() {
        let m = Model::new(1, 0);
        walk(&m, 0, 2, &AtomicBool::new(false));
        assert_eq!(*m.finished.lock().unwrap(), vec![String::new()]);
    }
}
