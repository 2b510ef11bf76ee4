//! Compares two trees directory by directory, in parallel, for `diff` and `verify`, on
//! the one traversal (`traverse::walk`). Each side is a [`SnapshotReader`]: a snapshot's
//! manifest (metadata and checksums as recorded at backup), or a tree on disk (a live
//! source, or a snapshot read back) listed and stat-ed as it is. Which facts of a pair
//! differ is `same::Delta`'s answer; this module reads the bytes where only they can
//! still differ, and words the details. Reads only; memory is bounded by the
//! directories in flight plus the differences.
//!
//! Side `b` can stay on one file system (`Options::stay_on`, `one_file_system`): as a
//! `--one-file-system` backup left a directory on another device than the root's out,
//! the compare walks into none (`traverse::OneFs`), on either side: the directory's own
//! entry is compared, its contents are not.
//!
//! Side `b` can leave out what the backup left out (`Options::excludes`, from the run
//! record or the restic snapshot): an entry only side `b` has that an exclude pattern
//! matches is no difference, and a tagged directory of side `b` (`exclude_caches`,
//! `exclude_if_present`) lists only its tag, decided from its listing as the backup's
//! walk decided it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustix::io::Errno;
use serde::Serialize;

use crate::fsx::{self, Kind};
use crate::manifest::Entry;
use crate::relpath::RelPath;
use crate::same::{Delta, Facts};
use crate::snapshot::{Listed, SnapshotReader, Stat};
use crate::traverse::{self, Dir, MountPoints, OneFs, Opened, Step, Visitor};

/// How an entry differs between the old side `a` and the new side `b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    /// The bytes (or symlink target, or type) differ.
    Content,
    /// Same bytes; mode, owner, times or extended attributes differ.
    Metadata,
}

impl Change {
    pub fn sign(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Content => 'M',
            Change::Metadata => 'm',
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// Escaped path (docs/format.md).
    pub path: String,
    pub change: Change,
    /// `file`, `directory`, `symlink`, `fifo`, `character device`, `block device`,
    /// `socket` (`fsx::Kind::name`; the new side's, or the old one's when removed): a
    /// store's and a repository's alike (a repository's said restic's `dir`,
    /// `chardev`, `dev` until session 48).
    pub kind: String,
    /// What differs, for example `size 10 -> 12`, `mode 644 -> 600`.
    pub detail: Vec<String>,
}

pub struct Options {
    /// Hash every regular file on a tree side, even when size and mtime match (verify).
    pub checksum: bool,
    /// Report directories whose only change is their mtime (verify; a diff leaves them
    /// out, since every added or removed child changes its directory's mtime).
    pub dir_times: bool,
    pub jobs: usize,
    /// Side `b` is a tree on device `Some(dev)` (its root's `st_dev`) and the compare
    /// stays on it (`one_file_system`): a directory whose `lstat` on side `b` shows
    /// another device is compared as an entry, and neither side's contents of it are
    /// walked.
    pub stay_on: Option<u64>,
    /// What the backup left out (its run record's or snapshot's exclusion settings):
    /// on side `b`, an entry only it has that a pattern matches is not `added`, and a
    /// tagged directory's listing keeps only its tag, as the backup's walk did.
    pub excludes: Option<crate::exclude::Excludes>,
    /// Compare owners. `false` for a snapshot whose store keeps no owners (verify of a
    /// manifest that records the source's: `manifest::owners_marker`).
    pub owners: bool,
    /// Compare mtimes to this many ns (0 or 1: exactly): a snapshot whose store keeps
    /// times coarser than the source's (`manifest::times_marker`, whole seconds: 10^9)
    /// against the manifest that records the source's exact times.
    pub time_granularity: u64,
    /// Side `a` is a restic repository's snapshot: a symlink target restic before 0.17
    /// stored lossily (not UTF-8: a JSON string with U+FFFD for each invalid byte, no
    /// `linktarget_raw`) that is side `b`'s target so replaced is that known loss, a
    /// `metadata` difference that says so ([`LOSSY_TARGET`]), not different content
    /// (`verify --against` counted it as corrupt, as if the repository were damaged).
    pub lossy_link_targets: bool,
}

/// The detail of a symlink whose target restic before 0.17 stored lossily
/// ([`Options::lossy_link_targets`]).
pub const LOSSY_TARGET: &str = "symlink target not UTF-8: stored lossily (restic before 0.17 \
     wrote U+FFFD for its bytes; a restore makes another target)";

/// Whether `stored`, a repository's symlink target, is `live`'s as restic before 0.17
/// stored a target that is not UTF-8: each invalid byte replaced with U+FFFD.
fn stored_lossily(stored: Option<&[u8]>, live: Option<&[u8]>) -> bool {
    match (stored, live) {
        (Some(s), Some(l)) => {
            std::str::from_utf8(l).is_err() && String::from_utf8_lossy(l).as_bytes() == s
        }
        _ => false,
    }
}

#[derive(Default, Serialize, Debug, Clone)]
pub struct Totals {
    pub entries_compared: u64,
    /// Regular files whose bytes were read and hashed (on either side, or both: a
    /// pair is one file), and their size.
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    /// Entries a side could not read (listed as problems).
    pub unreadable: u64,
}

pub struct Outcome {
    pub differences: Vec<Difference>,
    pub totals: Totals,
    /// Paths that could not be read, with the error.
    pub problems: Vec<(String, String)>,
    /// Those of `problems` refused for lack of permission (`EACCES`: a directory of
    /// mode 0111 in a snapshot verified by its non-root owner): not read, so not
    /// checked, which is not to say damaged.
    pub denied: Vec<String>,
    /// Whether the compare stayed on side b's file system, and where it did not go.
    pub one_fs: OneFsSummary,
    /// Directories whose record (a snapshot's manifest block) is damaged: their
    /// contents were not compared, on either side (what one side lists is not missing
    /// or unexpected when the other side's record of it is lost), and not walked into.
    pub not_compared: Vec<(String, String)>,
    /// The damaged manifests those records are in (their files), each once.
    pub damaged_manifests: Vec<String>,
}

/// Whether a compare stayed on the live tree's file system ([`Options::stay_on`]:
/// `--one-file-system`, or a snapshot made with it), and the directories on another
/// device it compared as entries only, their contents not: the fields `diff` and
/// `verify --against` report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OneFsSummary {
    pub one_file_system: bool,
    pub mount_points_skipped: u64,
    /// The first of them (escaped, in path order; at most
    /// [`traverse::MOUNT_POINTS_NAMED`]).
    pub mount_points: Vec<String>,
}

impl OneFsSummary {
    fn of(m: Option<MountPoints>) -> OneFsSummary {
        let Some(m) = m else {
            return OneFsSummary::default();
        };
        OneFsSummary {
            one_file_system: true,
            mount_points_skipped: m.count,
            mount_points: m.first.iter().map(RelPath::escaped).collect(),
        }
    }
}

/// A directory's open directory on each side (`None`: not a directory there).
struct Pair<A, B> {
    a: Option<A>,
    b: Option<B>,
}

/// One name of a directory as listed on each side.
type Item = (Option<Listed>, Option<Listed>);

/// A directory to walk into: whether it is one on side `a`, on side `b`, and its device
/// on side `b` when that side's `lstat` gave it (for [`Options::stay_on`]).
type Sub = (bool, bool, Option<u64>);

struct Run<'a, A, B> {
    a: &'a A,
    b: &'a B,
    opts: &'a Options,
    out: Mutex<Vec<Difference>>,
    problems: Mutex<Vec<(String, String)>>,
    denied: Mutex<Vec<String>>,
    /// Directories whose record is damaged, why, and the manifest file.
    not_compared: Mutex<Vec<(String, String, String)>>,
    compared: AtomicU64,
    hashed: AtomicU64,
    bytes: AtomicU64,
    one_fs: Option<OneFs>,
}

/// Compares side `a` (old, or expected) with side `b` (new, or actual) from the root.
pub fn compare<A: SnapshotReader, B: SnapshotReader>(
    a: &A,
    b: &B,
    opts: &Options,
    cancel: &AtomicBool,
) -> Outcome {
    let run = Run {
        a,
        b,
        opts,
        out: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
        denied: Mutex::new(Vec::new()),
        not_compared: Mutex::new(Vec::new()),
        compared: AtomicU64::new(0),
        hashed: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        one_fs: opts.stay_on.map(OneFs::new),
    };
    traverse::walk(&run, (true, true, None), opts.jobs.max(1), cancel);
    let mut differences = run.out.into_inner().unwrap_or_else(|e| e.into_inner());
    differences.sort_by(|x, y| {
        RelPath::from_escaped(&x.path)
            .ok()
            .cmp(&RelPath::from_escaped(&y.path).ok())
    });
    let mut problems = run.problems.into_inner().unwrap_or_else(|e| e.into_inner());
    problems.sort();
    let mut denied = run.denied.into_inner().unwrap_or_else(|e| e.into_inner());
    denied.sort();
    let mut not_compared = run
        .not_compared
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    not_compared.sort();
    let mut damaged_manifests: Vec<String> = not_compared.iter().map(|n| n.2.clone()).collect();
    damaged_manifests.sort();
    damaged_manifests.dedup();
    Outcome {
        totals: Totals {
            entries_compared: run.compared.into_inner(),
            files_hashed: run.hashed.into_inner(),
            bytes_hashed: run.bytes.into_inner(),
            unreadable: problems.len() as u64,
        },
        differences,
        problems,
        denied,
        one_fs: OneFsSummary::of(run.one_fs.map(|fs| fs.skipped())),
        not_compared: not_compared.into_iter().map(|(d, e, _)| (d, e)).collect(),
        damaged_manifests,
    }
}

/// Pairs two sorted listings by name.
fn merge(a: Vec<Listed>, b: Vec<Listed>) -> Vec<Item> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let ord = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.name().cmp(y.name()),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => return out,
        };
        out.push(match ord {
            std::cmp::Ordering::Less => (a.next(), None),
            std::cmp::Ordering::Greater => (None, b.next()),
            std::cmp::Ordering::Equal => (a.next(), b.next()),
        });
    }
}

/// Not there (any more), or not a directory: one side simply lacks it.
fn absent(e: &std::io::Error) -> bool {
    fsx::errno_is(e, Errno::NOENT) || fsx::errno_is(e, Errno::NOTDIR)
}

impl<A: SnapshotReader, B: SnapshotReader> Visitor for Run<'_, A, B> {
    type State = Pair<A::Dir, B::Dir>;
    type Item = Item;
    type Sub = Sub;

    fn open(
        &self,
        parent: Option<&Dir<Self::State>>,
        name: &[u8],
        rel: &RelPath,
        (in_a, in_b, _): Sub,
    ) -> Opened<Self::State, Item> {
        // Tests stop a `verify`/`diff` here (a signal in the middle of a compare).
        let _ = crate::failpoint::hit("compare.dir");
        let pa = parent.map(|p| p.state.a.as_ref());
        let pb = parent.map(|p| p.state.b.as_ref());
        // A side whose record of this directory is damaged (its block, or its index
        // entry, past the end of a manifest cut short) has no say on what is in it:
        // nothing under it is compared (not listed as added or removed).
        let (Some(a), Some(b)) = (
            self.open_side(self.a, in_a, pa, name, rel),
            self.open_side(self.b, in_b, pb, name, rel),
        ) else {
            return Opened::Skip;
        };
        let (Some(la), Some(mut lb)) = (
            self.list_side(self.a, a.as_ref(), rel),
            self.list_side(self.b, b.as_ref(), rel),
        ) else {
            return Opened::Skip;
        };
        if let (Some(ex), Some(bd)) = (&self.opts.excludes, b.as_ref())
            && ex.has_tags()
        {
            let names: Vec<Vec<u8>> = lb.iter().map(|l| l.name().to_vec()).collect();
            let keep = ex.keep_by(&names, |tag, header| {
                self.b
                    .open_file(bd, tag)
                    .is_ok_and(|fd| crate::exclude::starts_with(fsx::b(&fd), header))
            });
            if let Some(keep) = keep {
                lb.retain(|l| keep.iter().any(|k| k == l.name()));
            }
        }
        Opened::Dir(Pair { a, b }, merge(la, lb))
    }

    fn visit(&self, dir: &Arc<Dir<Self::State>>, (x, y): Item) -> Step<Sub> {
        self.compared.fetch_add(1, Ordering::Relaxed);
        let name = x.as_ref().or(y.as_ref()).map(|l| l.name().to_vec());
        let rel = dir.rel.join(name.as_deref().unwrap_or_default());
        let (da, db) = (dir.state.a.as_ref(), dir.state.b.as_ref());
        let x = x.and_then(|l| self.stat_side(self.a, da, l, &rel));
        let y = y.and_then(|l| self.stat_side(self.b, db, l, &rel));
        // Side b's device, from the `lstat` just made (none for a record).
        let dev = y.as_ref().and_then(|s| s.meta.as_ref()).map(|m| m.dev);
        match (x.map(|s| s.entry), y.map(|s| s.entry)) {
            (Some(x), None) => self.one_sided(rel, x, Change::Removed, None),
            (None, Some(y))
                if self
                    .opts
                    .excludes
                    .as_ref()
                    .is_some_and(|ex| ex.is_excluded(&rel, y.kind == Kind::Dir)) =>
            {
                Step::Next
            }
            (None, Some(y)) => self.one_sided(rel, y, Change::Added, dev),
            (Some(x), Some(y)) => {
                if let Some(d) = self.pair(&rel, &x, &y, da, db) {
                    self.push(d);
                }
                let (in_a, in_b) = (x.kind == Kind::Dir, y.kind == Kind::Dir);
                if in_a || in_b {
                    Step::Descend(x.name, (in_a, in_b, dev))
                } else {
                    Step::Next
                }
            }
            (None, None) => Step::Next,
        }
    }

    fn one_fs(&self) -> Option<&OneFs> {
        self.one_fs.as_ref()
    }

    fn device(&self, (_, in_b, dev): &Sub) -> Option<u64> {
        dev.filter(|_| *in_b)
    }

    /// A directory on another device than side b's root: its entry was compared in
    /// `visit`; its contents, on either side, are not (`OneFs` counts it).
    fn mount_point(&self, _: &Arc<Dir<Self::State>>, _: Vec<u8>, rel: &RelPath, _: Sub) {
        tracing::debug!("{rel}: another file system (one_file_system): contents not compared");
    }
}

impl<A: SnapshotReader, B: SnapshotReader> Run<'_, A, B> {
    fn problem(&self, rel: &RelPath, e: std::io::Error) {
        if fsx::errno_is(&e, Errno::ACCESS) {
            self.denied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(rel.escaped());
        }
        self.problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((rel.escaped(), e.to_string()));
    }

    fn push(&self, d: Difference) {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).push(d);
    }

    /// Opens the directory on one side where it is one there: the root, or `name` in
    /// the parent's directory on that side.
    fn open_side<R: SnapshotReader>(
        &self,
        r: &R,
        present: bool,
        parent: Option<Option<&R::Dir>>,
        name: &[u8],
        rel: &RelPath,
    ) -> Option<Option<R::Dir>> {
        if !present {
            return Some(None);
        }
        let opened = match parent {
            None => r.root(),
            Some(None) => return Some(None),
            Some(Some(p)) => r.open_dir(p, name),
        };
        match opened {
            Ok(d) => Some(Some(d)),
            Err(e) if absent(&e) => Some(None),
            Err(e) if self.damaged_record(rel, &e) => None,
            Err(e) => {
                self.problem(rel, e);
                Some(None)
            }
        }
    }

    /// Whether `e` says the record of `rel` is damaged (a damaged manifest): then it is
    /// noted as not compared ([`Outcome::not_compared`]).
    fn damaged_record(&self, rel: &RelPath, e: &std::io::Error) -> bool {
        let Some(d) = crate::manifest::Damaged::of(e) else {
            return false;
        };
        tracing::debug!("{rel}: not compared: {d}");
        self.not_compared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((rel.escaped(), d.what.clone(), d.path.display().to_string()));
        true
    }

    /// One side's listing of `dir`: empty when it is not a directory there or cannot
    /// be listed (a problem), `None` when the side's record of it is damaged (a damaged
    /// manifest: the directory is not compared, [`Outcome::not_compared`]).
    fn list_side<R: SnapshotReader>(
        &self,
        r: &R,
        dir: Option<&R::Dir>,
        rel: &RelPath,
    ) -> Option<Vec<Listed>> {
        let Some(dir) = dir else {
            return Some(Vec::new());
        };
        match r.list(dir) {
            Ok(l) => Some(l),
            Err(e) if self.damaged_record(rel, &e) => None,
            Err(e) => {
                self.problem(rel, e);
                Some(Vec::new())
            }
        }
    }

    /// One side's entry, or `None` when it is gone since it was listed or unreadable.
    fn stat_side<R: SnapshotReader>(
        &self,
        r: &R,
        dir: Option<&R::Dir>,
        item: Listed,
        rel: &RelPath,
    ) -> Option<Stat> {
        match r.stat(dir?, item) {
            Ok(s) => Some(s),
            Err(e) if fsx::errno_is(&e, Errno::NOENT) => None,
            Err(e) => {
                self.problem(rel, e);
                None
            }
        }
    }

    /// An entry on one side only; `dev`: its device on side b, when it is there.
    fn one_sided(&self, rel: RelPath, e: Entry, change: Change, dev: Option<u64>) -> Step<Sub> {
        let mut detail = Vec::new();
        if e.kind == Kind::File {
            detail.push(format!("size {}", e.size));
        }
        self.push(Difference {
            path: rel.escaped(),
            change,
            kind: e.kind.name().into(),
            detail,
        });
        if e.kind == Kind::Dir {
            let (in_a, in_b) = (change == Change::Removed, change == Change::Added);
            Step::Descend(e.name, (in_a, in_b, dev))
        } else {
            Step::Next
        }
    }

    /// The hash of a regular file: recorded, or read from its tree. `Err`: its bytes
    /// could not be read (a problem at `rel`, recorded here).
    fn hash<R: SnapshotReader>(
        &self,
        r: &R,
        dir: Option<&R::Dir>,
        e: &Entry,
        rel: &RelPath,
    ) -> std::result::Result<Option<blake3::Hash>, ()> {
        let Some(dir) = dir else { return Ok(None) };
        r.hash(dir, e).map_err(|err| self.problem(rel, err))
    }

    /// Two regular files of the same length: whether their hashes differ (`content`) or
    /// cannot both be had without a read error (`content unknown`: no recorded hash).
    /// Bytes that cannot be read (`EIO`, `EACCES`) are a problem at the path (`hash`),
    /// not a difference: a read error says nothing of the content (a rerun may read it),
    /// so `verify` does not count it as corrupt. The pair counts as one file hashed
    /// when either side's bytes were read (not a recorded hash): a repository's file
    /// and the live one read both are still one file of the tree, as in a store.
    fn bytes_differ(
        &self,
        rel: &RelPath,
        x: &Entry,
        y: &Entry,
        da: Option<&A::Dir>,
        db: Option<&B::Dir>,
    ) -> Option<&'static str> {
        let (ha, hb) = (self.hash(self.a, da, x, rel), self.hash(self.b, db, y, rel));
        let read = |h: &std::result::Result<Option<blake3::Hash>, ()>, e: &Entry| {
            matches!(h, Ok(Some(_))) && e.hash.is_none()
        };
        if read(&ha, x) || read(&hb, y) {
            self.hashed.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(y.size, Ordering::Relaxed);
        }
        match (ha, hb) {
            (Ok(Some(a)), Ok(Some(b))) if a != b => Some("content"),
            (Ok(Some(_)), Ok(Some(_))) => None,
            // Unreadable: the problem names it.
            (Err(()), _) | (_, Err(())) => None,
            _ => Some("content unknown"),
        }
    }

    fn pair(
        &self,
        rel: &RelPath,
        x: &Entry,
        y: &Entry,
        da: Option<&A::Dir>,
        db: Option<&B::Dir>,
    ) -> Option<Difference> {
        let (fx, fy) = (Facts::of_entry(x), Facts::of_entry(y));
        let mut d = Delta::between(&fx, &fy);
        if d.mtime && x.mtime.kept_as(y.mtime, self.opts.time_granularity) {
            d.mtime = false;
        }
        // When the types differ `Delta` compares nothing else; mode, owner and extended
        // attributes are still reported, so they are compared as between equal types.
        let m = if d.kind {
            Delta::between(
                &fx,
                &Facts {
                    kind: fx.kind,
                    ..fy
                },
            )
        } else {
            d
        };
        let lossy = d.target
            && self.opts.lossy_link_targets
            && stored_lossily(x.target.as_deref(), y.target.as_deref());
        if lossy {
            d.target = false;
        }
        let mut content = d.content();
        let mut detail = Vec::new();
        if d.kind {
            detail.push(format!("type {} -> {}", x.kind.name(), y.kind.name()));
        }
        if d.size {
            detail.push(format!("size {} -> {}", x.size, y.size));
        }
        if d.bytes_undecided(&fx)
            && (self.opts.checksum || d.mtime || (x.hash.is_some() && y.hash.is_some()))
            && let Some(why) = self.bytes_differ(rel, x, y, da, db)
        {
            content = true;
            detail.push(why.into());
        }
        if d.target {
            detail.push("symlink target".into());
        }
        if lossy {
            detail.push(LOSSY_TARGET.into());
        }
        if d.rdev {
            detail.push(format!("device {} -> {}", x.rdev, y.rdev));
        }
        if m.perm {
            detail.push(format!("mode {:o} -> {:o}", x.perm, y.perm));
        }
        if m.owner && self.opts.owners {
            detail.push(format!("owner {}:{} -> {}:{}", x.uid, x.gid, y.uid, y.gid));
        }
        if d.mtime && (x.kind != Kind::Dir || self.opts.dir_times) {
            detail.push(format!(
                "mtime {} -> {}",
                x.mtime.rfc3339(),
                y.mtime.rfc3339()
            ));
        }
        // Manifest v1 has no xattr digest for directories (a directory's entry is
        // written before its own attributes are read), so they are compared for files,
        // symlinks and special files only.
        if m.xattrs && x.kind != Kind::Dir {
            detail.push("extended attributes".into());
        }
        if detail.is_empty() {
            return None;
        }
        Some(Difference {
            path: rel.escaped(),
            change: if content {
                Change::Content
            } else {
                Change::Metadata
            },
            kind: y.kind.name().into(),
            detail,
        })
    }
}
