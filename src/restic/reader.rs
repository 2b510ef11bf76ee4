//! A repository snapshot read through the `snapshot::SnapshotReader` seam, so the
//! store's `compare` walk compares it with a live tree (`diff --against DIR`, `verify
//! --against DIR`) exactly as it compares a store's snapshot. A directory is its tree
//! blob's nodes; every node is a complete record (`Listed::Recorded`), its facts from
//! restic's `Node` (type, permission bits, owner, size, mtime, ctime, inode, device,
//! symlink target, the xattr digest); a file's BLAKE3 is computed from its data blobs,
//! each read and checked against its SHA-256 id. Reads the repository only.

use std::io;
use std::os::fd::OwnedFd;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::pack::BlobType;
use super::repo::Repo;
use super::tree::{Node, unix_perm};
use super::{Id, parse_time};
use crate::fsx::{self, Kind, Meta, Time, Xattrs};
use crate::manifest::Entry;
use crate::snapshot::{Listed, SnapshotReader, Stat};

/// One snapshot of a repository, from the tree its paths are relative to.
pub struct RepoReader<'a> {
    repo: &'a Repo,
    root: Id,
}

/// An open directory: its nodes with their names, sorted by name.
pub struct RepoDir {
    nodes: Vec<(Vec<u8>, Node)>,
}

impl<'a> RepoReader<'a> {
    /// The snapshot whose source's tree is `root` (`snapshot::source_tree`).
    pub fn new(repo: &'a Repo, root: Id) -> RepoReader<'a> {
        RepoReader { repo, root }
    }

    fn dir(&self, id: &Id) -> io::Result<RepoDir> {
        let t = self.repo.read_tree(id).map_err(io::Error::other)?;
        let mut nodes: Vec<_> = t
            .nodes
            .into_iter()
            .map(|n| (n.name_bytes(), n))
            .filter(|(name, _)| crate::relpath::valid_name(name))
            .collect();
        nodes.sort_by(|x, y| x.0.cmp(&y.0));
        Ok(RepoDir { nodes })
    }
}

impl RepoDir {
    fn node(&self, name: &[u8]) -> io::Result<&Node> {
        self.nodes
            .binary_search_by(|(n, _)| n.as_slice().cmp(name))
            .map(|i| &self.nodes[i].1)
            .map_err(|_| io::Error::from(io::ErrorKind::NotFound))
    }
}

/// A node's type (restic's `dir`, `chardev`, `dev`, …) as snapring's kind, `None` for
/// a type snapring has no kind for (restic 0.17's `irregular`, say).
fn known_kind(n: &Node) -> Option<Kind> {
    Some(match n.kind.as_str() {
        "file" => Kind::File,
        "dir" => Kind::Dir,
        "symlink" => Kind::Symlink,
        "fifo" => Kind::Fifo,
        "chardev" => Kind::Char,
        "dev" => Kind::Block,
        "socket" => Kind::Socket,
        _ => return None,
    })
}

/// A node's type as snapring's kind, an unknown one as a file (the facts `compare`
/// compares need one).
pub(crate) fn kind_of(n: &Node) -> Kind {
    known_kind(n).unwrap_or(Kind::File)
}

/// A node's type in the words a store's `diff` and `history` use (`Kind::name`:
/// `directory`, `character device`, `block device`, …), and a repository's too; a type
/// snapring has no kind for (restic 0.17's `irregular`, say) as restic names it, not
/// as a file.
pub(crate) fn kind_name(n: &Node) -> String {
    known_kind(n).map_or_else(|| n.kind.clone(), |k| k.name().to_string())
}

fn time(s: &str) -> Time {
    let (sec, nsec) = parse_time(s).unwrap_or((0, 0));
    Time { sec, nsec }
}

fn xattrs_of(n: &Node) -> Xattrs {
    let mut xs: Xattrs = n
        .extended_attributes
        .iter()
        .map(|x| {
            (
                x.name.as_bytes().to_vec(),
                B64.decode(&x.value).unwrap_or_default(),
            )
        })
        .collect();
    xs.sort();
    xs
}

/// The facts `compare` compares, as a store's manifest entry holds them.
fn entry_of(name: &[u8], n: &Node) -> Entry {
    let kind = kind_of(n);
    let target = (kind == Kind::Symlink)
        .then(|| n.link_target_bytes().ok())
        .flatten();
    Entry {
        name: name.to_vec(),
        kind,
        perm: unix_perm(n.mode),
        uid: n.uid,
        gid: n.gid,
        // As `lstat` gives it: a symlink's size is its target's length.
        size: match kind {
            Kind::File => n.size,
            Kind::Symlink => target.as_ref().map_or(0, |t| t.len() as u64),
            _ => 0,
        },
        mtime: time(&n.mtime),
        ctime: time(&n.ctime),
        hash: None,
        xattrs: fsx::xattr_digest(&xattrs_of(n)),
        ino: n.inode,
        group: (kind == Kind::File && n.links > 1).then_some(n.inode),
        target,
        rdev: n.device,
        refused: Vec::new(),
    }
}

impl SnapshotReader for RepoReader<'_> {
    type Dir = RepoDir;

    fn root(&self) -> io::Result<RepoDir> {
        self.dir(&self.root)
    }

    fn open_dir(&self, parent: &RepoDir, name: &[u8]) -> io::Result<RepoDir> {
        let n = parent.node(name)?;
        match (n.kind.as_str(), n.subtree) {
            ("dir", Some(t)) => self.dir(&t),
            _ => Err(io::Error::from_raw_os_error(
                rustix::io::Errno::NOTDIR.raw_os_error(),
            )),
        }
    }

    fn list(&self, dir: &RepoDir) -> io::Result<Vec<Listed>> {
        Ok(dir
            .nodes
            .iter()
            .map(|(name, n)| Listed::Recorded(entry_of(name, n)))
            .collect())
    }

    fn find(&self, dir: &RepoDir, name: &[u8]) -> io::Result<Listed> {
        Ok(Listed::Recorded(entry_of(name, dir.node(name)?)))
    }

    fn stat(&self, dir: &RepoDir, item: Listed) -> io::Result<Stat> {
        let entry = match item {
            Listed::Recorded(e) => e,
            Listed::Name(name, ..) => entry_of(&name, dir.node(&name)?),
        };
        // The tree node is the whole record: its xattrs are in `entry.xattrs`.
        Ok(Stat {
            entry,
            meta: None,
            recorded: true,
        })
    }

    fn dir_meta(&self, _dir: &RepoDir) -> io::Result<Meta> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a repository directory has no lstat",
        ))
    }

    /// Every data blob of the file read (and checked against its id), in order.
    fn hash(&self, dir: &RepoDir, e: &Entry) -> io::Result<Option<blake3::Hash>> {
        let n = dir.node(&e.name)?;
        let mut h = blake3::Hasher::new();
        for id in n.content.iter().flatten() {
            let plain = self
                .repo
                .read_blob(BlobType::Data, id)
                .map_err(io::Error::other)?;
            h.update(&plain);
        }
        Ok(Some(h.finalize()))
    }

    fn open_file(&self, _dir: &RepoDir, _name: &[u8]) -> io::Result<OwnedFd> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a repository file has no descriptor; read it through `hash`",
        ))
    }

    fn xattrs(&self, dir: &RepoDir, name: Option<&[u8]>) -> io::Result<Xattrs> {
        match name {
            Some(name) => Ok(xattrs_of(dir.node(name)?)),
            None => Ok(Vec::new()),
        }
    }

    fn read_link(&self, dir: &RepoDir, name: &[u8]) -> io::Result<Vec<u8>> {
        dir.node(name)?
            .link_target_bytes()
            .map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_name_uses_the_store_s_words_and_restic_s_for_unknown_types() {
        let node = |k: &str| Node {
            kind: k.into(),
            ..Default::default()
        };
        let names: Vec<String> = [
            "file",
            "dir",
            "symlink",
            "fifo",
            "chardev",
            "dev",
            "socket",
            "irregular",
            "",
        ]
        .iter()
        .map(|k| kind_name(&node(k)))
        .collect();
        assert_eq!(
            names,
            [
                "file",
                "directory",
                "symlink",
                "fifo",
                "character device",
                "block device",
                "socket",
                "irregular",
                "",
            ]
        );
        // `compare` still gets a kind: an unknown type is a file.
        assert_eq!(kind_of(&node("irregular")), Kind::File);
    }
}
