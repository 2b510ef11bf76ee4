//! `snapring diff --dest REPO A B` between two snapshots of a repository: the paths
//! added, removed, changed in content and changed in metadata only, in the shape the
//! hard-link store's `diff` reports (`compare::Difference`, same details and order).
//! Trees are merged by name one directory at a time; a subtree whose id is the same on
//! both sides is identical (ids are content hashes) and is skipped unread. File
//! contents are compared by their blob ids, never read. Also `compare_nodes`, the one
//! comparison of two nodes, which `history` uses too. A tree naming an entry twice is
//! damage (`damaged`, as `verify` lists it; exit 2), its first entry compared. Reads
//! tree blobs only.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use super::reader::{RepoReader, kind_name};
use super::repo::Repo;
use super::snapshot;
use super::tree::{Node, unix_perm};
use super::verify::{Visit, walk};
use super::{Error, Id, Result};
use crate::compare::{self, Change, Difference, OneFsSummary, Totals};
use crate::relpath::{RelPath, valid_name};

/// `diff`'s report: the store's `DiffReport` fields, plus the snapshots' full ids and
/// how many trees were read and skipped.
#[derive(Serialize, Debug, Default)]
pub struct RepoDiff {
    /// Short ids (8 hex digits), as `list` shows them.
    pub from: String,
    pub to: String,
    pub from_id: String,
    pub to_id: String,
    pub added: u64,
    pub removed: u64,
    pub content_changed: u64,
    pub metadata_changed: u64,
    pub differences: Vec<Difference>,
    pub totals: Totals,
    /// Paths whose tree could not be read, with the error.
    pub problems: Vec<(String, String)>,
    /// Damage met in the trees compared, as `verify` reports it (path, kind
    /// `directory`, reason): a tree naming an entry twice (crafted or damaged; restic
    /// never writes one). The first entry of the name is compared, the others left out
    /// (restore restores the first); damage, exit 2, as `verify` and `restore` call it.
    /// Until session 50 the second entry showed as added or removed.
    pub damaged: Vec<super::verify::Damaged>,
    /// Tree blobs read, and subtrees skipped because both sides have the same id.
    pub trees_read: u64,
    pub subtrees_skipped: u64,
    /// `--against` only: whether the compare stayed on `DIR`'s file system, and the
    /// mount points whose contents it did not compare.
    #[serde(flatten)]
    pub one_fs: OneFsSummary,
}

/// Compares snapshot `old` with snapshot `new` (`latest`, ids or prefixes).
pub fn diff(repo: &Repo, old: &str, new: &str, cancel: &AtomicBool) -> Result<RepoDiff> {
    let (ia, sa) = snapshot::find(repo, old)?;
    let (ib, sb) = snapshot::find(repo, new)?;
    let (ta, _) = snapshot::source_tree(repo, &sa)?;
    let (tb, _) = snapshot::source_tree(repo, &sb)?;
    let mut d = Differ {
        repo,
        cancel,
        r: RepoDiff {
            from: ia.hex()[..8].to_string(),
            to: ib.hex()[..8].to_string(),
            from_id: ia.hex(),
            to_id: ib.hex(),
            ..Default::default()
        },
    };
    d.trees(ta, tb, &RelPath::root())?;
    let r = &mut d.r;
    let n = |c| r.differences.iter().filter(|d| d.change == c).count() as u64;
    (r.added, r.removed, r.content_changed, r.metadata_changed) = (
        n(Change::Added),
        n(Change::Removed),
        n(Change::Content),
        n(Change::Metadata),
    );
    Ok(d.r)
}

/// Compares snapshot `old` with the live directory `dir` through the store's `compare`
/// walk (`jobs` calls in flight): by type, size, mtime, mode, owner, target, xattrs;
/// a file of equal size whose mtime differs has its bytes hashed on both sides (the
/// repository's blobs read and checked). It stays on `dir`'s file system when
/// `one_file_system` is asked for or the snapshot was made with it ([`stays_on_one_fs`]).
pub fn diff_against(
    repo: &Repo,
    old: &str,
    dir: &Path,
    one_file_system: bool,
    jobs: usize,
    cancel: &AtomicBool,
) -> Result<RepoDiff> {
    let (ia, sa) = snapshot::find(repo, old)?;
    let (ta, _) = snapshot::source_tree(repo, &sa)?;
    let one_fs = stays_on_one_fs(one_file_system, &sa);
    let ex = live_excludes(&sa)?;
    let o = compare_live(repo, ta, dir, false, (one_fs, ex), jobs, cancel)?;
    let n = |c| o.differences.iter().filter(|d| d.change == c).count() as u64;
    Ok(RepoDiff {
        from: ia.hex()[..8].to_string(),
        to: dir.display().to_string(),
        from_id: ia.hex(),
        to_id: String::new(),
        added: n(Change::Added),
        removed: n(Change::Removed),
        content_changed: n(Change::Content),
        metadata_changed: n(Change::Metadata),
        differences: o.differences,
        totals: o.totals,
        problems: o.problems,
        damaged: Vec::new(),
        trees_read: 0,
        subtrees_skipped: 0,
        one_fs: o.one_fs,
    })
}

/// Whether a compare of snapshot `snap` with a live tree stays on the tree's file
/// system: asked for (`--one-file-system`), or the snapshot was made with it (its tag
/// [`snapshot::ONE_FILE_SYSTEM_TAG`]: a mount point is an empty tree in it).
pub(crate) fn stays_on_one_fs(asked: bool, snap: &snapshot::Snapshot) -> bool {
    asked || snap.has_tag(snapshot::ONE_FILE_SYSTEM_TAG)
}

/// What snapshot `snap` left out (its `excludes` and exclusion tags), for a compare
/// with a live tree (`compare::Options::excludes`).
pub(crate) fn live_excludes(snap: &snapshot::Snapshot) -> Result<Option<crate::exclude::Excludes>> {
    let s = super::backup::exclusion_of(snap);
    if s.is_empty() {
        return Ok(None);
    }
    s.build()
        .map(Some)
        .map_err(|e| Error::Other(format!("the snapshot's exclusion settings: {e}")))
}

/// The store's `compare` of the snapshot tree `root` (side a) with the live directory
/// `dir` (side b); `checksum`: hash every file on both sides (verify); `(one_fs,
/// excludes)`: what the snapshot left out of the live tree, its mount points' contents
/// (`compare::Options::stay_on`) and what its exclusion settings match
/// (`compare::Options::excludes`).
pub(crate) fn compare_live(
    repo: &Repo,
    root: Id,
    dir: &Path,
    checksum: bool,
    (one_fs, excludes): (bool, Option<crate::exclude::Excludes>),
    jobs: usize,
    cancel: &AtomicBool,
) -> Result<compare::Outcome> {
    let fd = crate::fsx::open_dir(dir).map_err(super::io_err("open", dir))?;
    let stay_on = match one_fs {
        true => Some(
            crate::fsx::fstat(crate::fsx::b(&fd))
                .map_err(super::io_err("stat", dir))?
                .dev,
        ),
        false => None,
    };
    let live = crate::snapshot::TreeReader::tree(crate::fsx::b(&fd));
    let opts = compare::Options {
        checksum,
        dir_times: checksum,
        jobs: crate::concurrency::resolve(jobs, &[dir]),
        stay_on,
        excludes,
        owners: true,
        time_granularity: 0,
        lossy_link_targets: true,
    };
    let o = compare::compare(&RepoReader::new(repo, root), &live, &opts, cancel);
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    Ok(o)
}

struct Differ<'a> {
    repo: &'a Repo,
    cancel: &'a AtomicBool,
    r: RepoDiff,
}

impl Differ<'_> {
    /// The nodes of tree `id` (of snapshot `snap`), sorted by name, each name once (a
    /// name the tree has twice is damage, listed; its first entry kept); `None` (a
    /// problem listed) when it does not read.
    fn nodes(&mut self, id: Id, rel: &RelPath, snap: &str) -> Option<Vec<(Vec<u8>, Node)>> {
        self.r.trees_read += 1;
        match self.repo.read_tree(&id) {
            Ok(t) => {
                let mut v: Vec<_> = t
                    .nodes
                    .into_iter()
                    .map(|n| (n.name_bytes(), n))
                    .filter(|(name, _)| valid_name(name))
                    .collect();
                // Stable: entries of one name stay in tree order, the first first.
                v.sort_by(|x, y| x.0.cmp(&y.0));
                let mut out: Vec<(Vec<u8>, Node)> = Vec::with_capacity(v.len());
                for (name, n) in v {
                    if out.last().is_some_and(|(p, _)| *p == name) {
                        self.r.damaged.push(super::verify::Damaged {
                            path: rel.escaped(),
                            kind: "directory".into(),
                            reason: format!(
                                "snapshot {snap}: {}",
                                super::verify::duplicate_name(&id, &n)
                            ),
                        });
                        continue;
                    }
                    out.push((name, n));
                }
                Some(out)
            }
            Err(e) => {
                self.r.problems.push((rel.escaped(), e.to_string()));
                self.r.totals.unreadable += 1;
                None
            }
        }
    }

    /// The differences between tree `a` and tree `b`, both at `rel`.
    fn trees(&mut self, a: Id, b: Id, rel: &RelPath) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        if a == b {
            self.r.subtrees_skipped += 1;
            return Ok(());
        }
        let (from, to) = (self.r.from.clone(), self.r.to.clone());
        let (Some(xs), Some(ys)) = (self.nodes(a, rel, &from), self.nodes(b, rel, &to)) else {
            return Ok(());
        };
        let (mut i, mut j) = (0, 0);
        while i < xs.len() || j < ys.len() {
            let order = match (xs.get(i), ys.get(j)) {
                (Some(x), Some(y)) => x.0.cmp(&y.0),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    self.one_sided(&rel.join(&xs[i].0), &xs[i].1, Change::Removed)?;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    self.one_sided(&rel.join(&ys[j].0), &ys[j].1, Change::Added)?;
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    self.pair(&rel.join(&xs[i].0), &xs[i].1, &ys[j].1)?;
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    fn pair(&mut self, rel: &RelPath, x: &Node, y: &Node) -> Result<()> {
        self.r.totals.entries_compared += 1;
        let (content, detail) = compare_nodes(x, y, false);
        if !detail.is_empty() {
            self.r.differences.push(Difference {
                path: rel.escaped(),
                change: if content {
                    Change::Content
                } else {
                    Change::Metadata
                },
                kind: kind_name(y),
                detail,
            });
        }
        match (x.kind == "dir", y.kind == "dir", x.subtree, y.subtree) {
            (true, true, Some(a), Some(b)) => self.trees(a, b, rel),
            // A directory replaced by something else: its contents went with it.
            (true, false, Some(a), _) => self.below(a, rel, Change::Removed),
            (false, true, _, Some(b)) => self.below(b, rel, Change::Added),
            _ => Ok(()),
        }
    }

    /// An entry on one side only, and everything below it.
    fn one_sided(&mut self, rel: &RelPath, n: &Node, change: Change) -> Result<()> {
        self.r.totals.entries_compared += 1;
        self.r.differences.push(one_sided(rel, n, change));
        match (n.kind.as_str(), n.subtree) {
            ("dir", Some(t)) => self.below(t, rel, change),
            _ => Ok(()),
        }
    }

    /// Everything below tree `id` at `rel`, as `change`.
    fn below(&mut self, id: Id, rel: &RelPath, change: Change) -> Result<()> {
        let mut trees = HashSet::new();
        let mut out = Vec::new();
        let mut problems = Vec::new();
        walk(
            self.repo,
            id,
            rel,
            &mut trees,
            self.cancel,
            &mut |ev| match ev {
                Visit::Node(p, n) => out.push(one_sided(p, n, change)),
                Visit::BadTree(p, why) | Visit::UnreadableTree(p, why) => {
                    problems.push((p.escaped(), why))
                }
            },
        )?;
        self.r.trees_read += trees.len() as u64;
        self.r.totals.entries_compared += out.len() as u64;
        self.r.totals.unreadable += problems.len() as u64;
        self.r.differences.extend(out);
        self.r.problems.extend(problems);
        Ok(())
    }
}

fn one_sided(rel: &RelPath, n: &Node, change: Change) -> Difference {
    Difference {
        path: rel.escaped(),
        change,
        kind: kind_name(n),
        detail: match n.kind.as_str() {
            "file" => vec![format!("size {}", n.size)],
            _ => vec![],
        },
    }
}

/// How node `y` differs from node `x` of the same name: whether the content differs
/// (type, blob list, size, symlink target, device number), and the details in the
/// store's words (`type file -> directory`, `size 1 -> 2`, `content`, `symlink target`,
/// `device`, `mode 644 -> 600`, `owner 0:0 -> 1:1`, `mtime A -> B`, `extended
/// attributes`). A directory's mtime is left out unless `dir_times` (every added or
/// removed child changes it). Nothing is read: contents compare by blob ids.
pub fn compare_nodes(x: &Node, y: &Node, dir_times: bool) -> (bool, Vec<String>) {
    let mut detail = Vec::new();
    let mut content = false;
    if x.kind != y.kind {
        content = true;
        detail.push(format!("type {} -> {}", kind_name(x), kind_name(y)));
    } else {
        if x.kind == "file" {
            if x.size != y.size {
                detail.push(format!("size {} -> {}", x.size, y.size));
            }
            if x.content != y.content {
                content = true;
                detail.push("content".into());
            }
        }
        let targets = (x.link_target_bytes().ok(), y.link_target_bytes().ok());
        if x.kind == "symlink" && targets.0 != targets.1 {
            content = true;
            detail.push("symlink target".into());
        }
        if x.device != y.device {
            content = true;
            detail.push(format!("device {} -> {}", x.device, y.device));
        }
    }
    let (px, py) = (unix_perm(x.mode), unix_perm(y.mode));
    if px != py {
        detail.push(format!("mode {px:o} -> {py:o}"));
    }
    if (x.uid, x.gid) != (y.uid, y.gid) {
        detail.push(format!("owner {}:{} -> {}:{}", x.uid, x.gid, y.uid, y.gid));
    }
    let time = |s: &str| super::parse_time(s).ok();
    if time(&x.mtime) != time(&y.mtime) && (y.kind != "dir" || dir_times) {
        detail.push(format!("mtime {} -> {}", x.mtime, y.mtime));
    }
    // As sets: the order is the file system's listing order (restic's, too).
    if sorted_xattrs(x) != sorted_xattrs(y) && y.kind != "dir" {
        detail.push("extended attributes".into());
    }
    (content, detail)
}

fn sorted_xattrs(n: &Node) -> Vec<(&str, &str)> {
    let mut v: Vec<(&str, &str)> = n
        .extended_attributes
        .iter()
        .map(|a| (a.name.as_str(), a.value.as_str()))
        .collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &[u8], mode: u32, mtime: &str) -> Node {
        Node {
            name: "f".into(),
            kind: "file".into(),
            mode,
            mtime: mtime.into(),
            size: content.len() as u64,
            content: Some(vec![Id::hash(content)]),
            ..Default::default()
        }
    }

    const T1: &str = "2026-12-01T10:00:00.5Z";

    #[test]
    fn extended_attributes_compare_as_sets() {
        use super::super::tree::ExtendedAttribute;
        let x = |n: &str, v: &str| ExtendedAttribute {
            name: n.into(),
            value: v.into(),
        };
        let mut a = file(b"one", 0o644, T1);
        a.extended_attributes = vec![x("user.b", "Mg=="), x("user.a", "MQ==")];
        let mut listed_otherwise = a.clone();
        listed_otherwise.extended_attributes.reverse();
        assert_eq!(compare_nodes(&a, &listed_otherwise, false), (false, vec![]));
        let mut changed = a.clone();
        changed.extended_attributes[0].value = "Mw==".into();
        assert_eq!(
            compare_nodes(&a, &changed, false),
            (false, vec!["extended attributes".to_string()])
        );
    }

    #[test]
    fn nodes_compare_in_the_stores_words() {
        let a = file(b"one", 0o644, T1);
        assert_eq!(compare_nodes(&a, &a.clone(), false), (false, vec![]));
        // The same instant in another zone is the same time.
        let same_time = file(b"one", 0o644, "2026-12-01T11:00:00.5+01:00");
        assert_eq!(compare_nodes(&a, &same_time, false), (false, vec![]));
        let b = file(b"three", 0o600, "2026-12-01T10:00:01Z");
        let (content, detail) = compare_nodes(&a, &b, false);
        assert!(content);
        assert_eq!(
            detail,
            [
                "size 3 -> 5",
                "content",
                "mode 644 -> 600",
                "mtime 2026-12-01T10:00:00.5Z -> 2026-12-01T10:00:01Z"
            ]
        );
        let mut owner = a.clone();
        owner.uid = 7;
        assert_eq!(
            compare_nodes(&a, &owner, false),
            (false, vec!["owner 0:0 -> 7:0".to_string()])
        );
        let mut dir = Node {
            kind: "dir".into(),
            mtime: T1.into(),
            ..Default::default()
        };
        let dir2 = Node {
            mtime: "2026-12-01T10:00:09Z".into(),
            ..dir.clone()
        };
        assert_eq!(compare_nodes(&dir, &dir2, false), (false, vec![]));
        assert_eq!(compare_nodes(&dir, &dir2, true).1.len(), 1);
        dir.name = "f".into();
        dir.mode = 0o644 | 1 << 31;
        assert_eq!(
            compare_nodes(&a, &dir, false),
            (true, vec!["type file -> directory".to_string()])
        );
        let link = |t: &[u8]| {
            let mut n = Node {
                kind: "symlink".into(),
                mtime: T1.into(),
                ..Default::default()
            };
            n.set_link_target(t);
            n
        };
        assert_eq!(
            compare_nodes(&link(b"a"), &link(b"\xffb"), false),
            (true, vec!["symlink target".to_string()])
        );
    }
}
