//! Compares two trees directory by directory, in parallel, for `diff` and `verify`.
//! A side is a snapshot's manifest (metadata and checksums as recorded at backup) or a
//! tree on disk (a live source, or a snapshot read back), listed and stat-ed as it is.
//! Reads only; memory is bounded by the directories in flight plus the differences.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::io::Errno;
use serde::Serialize;

use crate::fsx::{self, Kind, XattrTarget, b};
use crate::manifest::{self, Entry};
use crate::pool;
use crate::relpath::RelPath;

/// One side of a comparison.
pub enum Side<'a> {
    Manifest(&'a manifest::Reader),
    /// A directory tree on disk, reached only through `openat2(RESOLVE_BENEATH)`.
    Tree(&'a OwnedFd),
}

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
    /// `file`, `dir`, `symlink`, … (the new side's, or the old one's when removed).
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
}

#[derive(Default, Serialize, Debug, Clone)]
pub struct Totals {
    pub entries_compared: u64,
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
}

struct Task {
    dir: RelPath,
    in_a: bool,
    in_b: bool,
}

struct Run<'a> {
    a: &'a Side<'a>,
    b: &'a Side<'a>,
    opts: &'a Options,
    out: Mutex<Vec<Difference>>,
    problems: Mutex<Vec<(String, String)>>,
    compared: AtomicU64,
    hashed: AtomicU64,
    bytes: AtomicU64,
}

/// Compares side `a` (old, or expected) with side `b` (new, or actual) from the root.
pub fn compare(a: &Side<'_>, b: &Side<'_>, opts: &Options, cancel: &AtomicBool) -> Outcome {
    let run = Run {
        a,
        b,
        opts,
        out: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
        compared: AtomicU64::new(0),
        hashed: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    };
    let root = Task {
        dir: RelPath::root(),
        in_a: true,
        in_b: true,
    };
    pool::run(opts.jobs.max(1), vec![root], cancel, |t, q| run.dir(t, q));
    let mut differences = run.out.into_inner().unwrap_or_else(|e| e.into_inner());
    differences.sort_by(|x, y| {
        RelPath::from_escaped(&x.path)
            .ok()
            .cmp(&RelPath::from_escaped(&y.path).ok())
    });
    let mut problems = run.problems.into_inner().unwrap_or_else(|e| e.into_inner());
    problems.sort();
    Outcome {
        totals: Totals {
            entries_compared: run.compared.into_inner(),
            files_hashed: run.hashed.into_inner(),
            bytes_hashed: run.bytes.into_inner(),
            unreadable: problems.len() as u64,
        },
        differences,
        problems,
    }
}

/// A directory's entries on a tree side, sorted by name, with xattr digests and
/// symlink targets (hashes are computed on demand). `None` if it is not there.
fn tree_entries(root: &OwnedFd, dir: &RelPath) -> std::io::Result<Option<(OwnedFd, Vec<Entry>)>> {
    let fd = match fsx::open_dir_beneath(root.as_fd(), dir.as_bytes()) {
        Ok(fd) => fd,
        Err(e) if fsx::errno_is(&e, Errno::NOENT) || fsx::errno_is(&e, Errno::NOTDIR) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in fsx::read_dir_names(b(&fd))? {
        let m = match fsx::lstat_at(b(&fd), &name) {
            Ok(m) => m,
            Err(e) if fsx::errno_is(&e, Errno::NOENT) => continue,
            Err(e) => return Err(e),
        };
        let mut e = Entry::from_meta(&name, &m);
        if m.kind == Kind::Symlink {
            e.target = fsx::read_link_at(b(&fd), &name).ok();
        }
        // By name (one `llistxattr`), not by opening the file (open + list + close).
        let xs = fsx::read_xattrs(&XattrTarget::At(b(&fd), &name));
        e.xattrs = xs.ok().and_then(|x| fsx::xattr_digest(&x));
        out.push(e);
    }
    out.sort_by(|x, y| x.name.cmp(&y.name));
    Ok(Some((fd, out)))
}

/// Entries of one directory on one side, and the open directory for a tree side.
type Listing = Option<(Option<OwnedFd>, Vec<Entry>)>;

impl Run<'_> {
    fn list(&self, side: &Side<'_>, dir: &RelPath, present: bool) -> Listing {
        if !present {
            return None;
        }
        let r = match side {
            Side::Manifest(m) => m.lookup(dir).map(|o| o.map(|v| (None, v))),
            Side::Tree(root) => tree_entries(root, dir).map(|o| o.map(|(fd, v)| (Some(fd), v))),
        };
        r.unwrap_or_else(|e| {
            self.problem(dir, e);
            None
        })
    }

    fn problem(&self, rel: &RelPath, e: impl std::fmt::Display) {
        self.problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((rel.escaped(), e.to_string()));
    }

    fn push(&self, d: Difference) {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).push(d);
    }

    fn dir(&self, t: Task, q: &pool::Queue<Task>) {
        let la = self.list(self.a, &t.dir, t.in_a);
        let lb = self.list(self.b, &t.dir, t.in_b);
        let empty = Vec::new();
        let ea = la.as_ref().map(|l| &l.1).unwrap_or(&empty);
        let eb = lb.as_ref().map(|l| &l.1).unwrap_or(&empty);
        let fda = la.as_ref().and_then(|l| l.0.as_ref());
        let fdb = lb.as_ref().and_then(|l| l.0.as_ref());
        let (mut i, mut j) = (0, 0);
        while i < ea.len() || j < eb.len() {
            let ord = match (ea.get(i), eb.get(j)) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            self.compared.fetch_add(1, Ordering::Relaxed);
            match ord {
                std::cmp::Ordering::Less => {
                    let x = &ea[i];
                    self.one_sided(&t.dir, x, Change::Removed, q);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    let y = &eb[j];
                    self.one_sided(&t.dir, y, Change::Added, q);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let (x, y) = (&ea[i], &eb[j]);
                    let rel = t.dir.join(&x.name);
                    if let Some(d) = self.pair(&rel, x, y, fda, fdb) {
                        self.push(d);
                    }
                    let (da, db) = (x.kind == Kind::Dir, y.kind == Kind::Dir);
                    if da || db {
                        q.push(Task {
                            dir: rel,
                            in_a: da,
                            in_b: db,
                        });
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
    }

    fn one_sided(&self, dir: &RelPath, e: &Entry, change: Change, q: &pool::Queue<Task>) {
        let rel = dir.join(&e.name);
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
            q.push(Task {
                dir: rel,
                in_a: change == Change::Removed,
                in_b: change == Change::Added,
            });
        }
    }

    /// The hash of a regular file: from the manifest, or read from the tree.
    fn hash(&self, e: &Entry, fd: Option<&OwnedFd>, rel: &RelPath) -> Option<blake3::Hash> {
        if let Some(h) = e.hash {
            return Some(h);
        }
        let fd = fd?;
        match fsx::open_read_at(b(fd), &e.name).and_then(|f| fsx::hash_file(b(&f))) {
            Ok(h) => {
                self.hashed.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(e.size, Ordering::Relaxed);
                Some(h)
            }
            Err(err) => {
                self.problem(rel, err);
                None
            }
        }
    }

    fn pair(
        &self,
        rel: &RelPath,
        x: &Entry,
        y: &Entry,
        fda: Option<&OwnedFd>,
        fdb: Option<&OwnedFd>,
    ) -> Option<Difference> {
        let mut detail = Vec::new();
        let mut content = false;
        if x.kind != y.kind {
            content = true;
            detail.push(format!("type {} -> {}", x.kind.name(), y.kind.name()));
        } else {
            match x.kind {
                Kind::File => {
                    if x.size != y.size {
                        content = true;
                        detail.push(format!("size {} -> {}", x.size, y.size));
                    } else if self.opts.checksum
                        || x.mtime != y.mtime
                        || (x.hash.is_some() && y.hash.is_some())
                    {
                        let (ha, hb) = (self.hash(x, fda, rel), self.hash(y, fdb, rel));
                        match (ha, hb) {
                            (Some(a), Some(b)) if a != b => {
                                content = true;
                                detail.push("content".into());
                            }
                            (Some(_), Some(_)) => {}
                            _ => {
                                content = true;
                                detail.push("content unreadable".into());
                            }
                        }
                    }
                }
                Kind::Symlink if x.target != y.target => {
                    content = true;
                    detail.push("symlink target".into());
                }
                Kind::Char | Kind::Block if x.rdev != y.rdev => {
                    content = true;
                    detail.push(format!("device {} -> {}", x.rdev, y.rdev));
                }
                _ => {}
            }
        }
        if x.perm != y.perm {
            detail.push(format!("mode {:o} -> {:o}", x.perm, y.perm));
        }
        if (x.uid, x.gid) != (y.uid, y.gid) {
            detail.push(format!("owner {}:{} -> {}:{}", x.uid, x.gid, y.uid, y.gid));
        }
        if x.mtime != y.mtime && x.kind == y.kind && (x.kind != Kind::Dir || self.opts.dir_times) {
            detail.push(format!("mtime {} -> {}", x.mtime, y.mtime));
        }
        // Manifest v1 has no xattr digest for directories (a directory's entry is
        // written before its own attributes are read), so they are compared for files,
        // symlinks and special files only.
        if x.xattrs != y.xattrs && x.kind != Kind::Dir {
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
