//! The parent snapshot's entries of a directory a backup into a repository cannot open
//! or list (permission denied, an I/O error, a stale handle), kept in the new snapshot
//! rather than dropped from the history by one transient error, as the hard-link
//! store's walk keeps an unreadable directory's previous entries: a single-node run's
//! subdirectory (`backup`'s walk) and a shard unit's directory (`shard::repository`)
//! keep them alike. Reads the repository's trees, writes only trees that changed.

use crate::exclude::Excludes;
use crate::relpath::RelPath;

use super::pack::BlobType;
use super::repo::{Packer, Repo};
use super::tree::{Node, Tree};
use super::{Id, Result};

/// What [`Keep::nodes`] kept and left out.
#[derive(Default)]
pub struct Kept {
    pub files: u64,
    /// Directories kept beneath the one kept (not itself).
    pub dirs: u64,
    /// Entries kept that are neither files nor directories (symlinks, devices, fifos).
    pub others: u64,
    /// The kept files' sizes.
    pub bytes: u64,
    /// Entries whose tree does not read, or whose data no index holds: left out.
    pub lost: u64,
}

/// Keeps the parent snapshot's entries of a directory: today's exclusions hold for
/// them, a kept subtree is saved through `packer` (the same id, and nothing written,
/// where nothing in it changed).
pub struct Keep<'a> {
    pub repo: &'a Repo,
    pub packer: &'a Packer,
    pub excludes: Option<&'a Excludes>,
}

impl Keep<'_> {
    /// The parent snapshot's tree `id`.
    pub fn tree(&self, id: &Id) -> Result<Tree> {
        self.repo
            .read_blob(BlobType::Tree, id)
            .and_then(|b| Tree::from_blob(&b, id))
    }

    /// The kept nodes of directory `rel` (relative to the source; the parent
    /// snapshot's `nodes` there): the excluded ones and the lost ones left out, each
    /// subtree kept alike (written anew where that changed it). A kept entry of several
    /// links is recorded as no hard link (`inode: 0`, `links: 1`): its inode number is
    /// the previous snapshot's, which this run's file system may have given another
    /// file since; a restore (snapring's, restic's) joins the names of one
    /// `(device, inode)` with more than one link, so it would give one of this run's
    /// files the kept one's content, or the kept one this run's.
    pub fn nodes(&self, rel: &RelPath, nodes: Vec<Node>, kept: &mut Kept) -> Result<Vec<Node>> {
        let mut out = Vec::with_capacity(nodes.len());
        for mut n in nodes {
            let name = n.name_bytes();
            let r = rel.join(&name);
            let is_dir = n.kind == "dir";
            if self.excludes.is_some_and(|x| x.is_excluded(&r, is_dir)) {
                continue;
            }
            if let Some(id) = n.subtree.filter(|_| is_dir) {
                let Ok(sub) = self.tree(&id) else {
                    kept.lost += 1;
                    continue;
                };
                let inner = self.nodes(&r, sub.nodes, kept)?;
                // A tree of snapring's re-serializes to the same bytes; one of restic's
                // may not: written anew.
                n.subtree = Some(self.packer.save(
                    self.repo,
                    BlobType::Tree,
                    &Tree { nodes: inner }.to_blob(),
                )?);
                kept.dirs += 1;
            } else {
                let indexed = n
                    .content
                    .iter()
                    .flatten()
                    .all(|id| self.repo.index.contains(BlobType::Data, id));
                if !indexed {
                    kept.lost += 1;
                    continue;
                }
                if n.links > 1 {
                    n.inode = 0;
                    n.links = 1;
                }
                match n.kind.as_str() {
                    "file" => {
                        kept.files += 1;
                        kept.bytes += n.size;
                    }
                    _ => kept.others += 1,
                }
            }
            out.push(n);
        }
        Ok(out)
    }
}

/// The problem's message for a directory that could not be read (`e`) whose `n`
/// entries of the previous snapshot were kept (`whose`: which of them, or the
/// snapshot's short id), `lost` of them left out.
pub fn kept_message(e: &dyn std::fmt::Display, n: usize, whose: &str, lost: u64) -> String {
    format!(
        "{e}; its {n} entries of the previous snapshot{whose} were kept{}",
        lost_note(lost)
    )
}

/// The problem's message for a directory that could not be read (`e`) of which the
/// snapshot holds nothing (`what`: the directory, or a unit's names of it), and why
/// nothing of the previous snapshot was kept.
pub fn missing_message(e: &dyn std::fmt::Display, what: &str, why: &str) -> String {
    format!("{e}; {what} missing from this snapshot: {why}")
}

/// What a kept directory's problem adds for `lost` entries left out.
pub fn lost_note(lost: u64) -> String {
    match lost {
        0 => String::new(),
        n => format!("; {n} of them left out (a tree that does not read, or data no index holds)"),
    }
}
