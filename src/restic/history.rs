//! `snapring history --dest REPO PATH`: the versions of one path across every snapshot
//! of a repository, newest first, in the shape of the hard-link store's history
//! (`kind`, `size`, `mtime`, `hash`, and the change against the next older snapshot:
//! `first`, `new`, `changed`, `metadata`, `same`, `deleted`, `absent`). The `hash` of a
//! file is its content id: the SHA-256 of its blob ids in order (equal for equal bytes,
//! since blob ids are the chunks' SHA-256), so no file data is read. Reads tree blobs
//! along the path only.

use serde::Serialize;

use super::diff::compare_nodes;
use super::reader::kind_name;
use super::repo::Repo;
use super::snapshot;
use super::tree::Node;
use super::{Error, Id, Result};
use crate::relpath::RelPath;

/// One snapshot's version of the path.
#[derive(Serialize, Debug)]
pub struct RepoVersion {
    /// The short id (8 hex digits), as `list` shows it.
    pub snapshot: String,
    pub id: String,
    pub label: Option<String>,
    /// The snapshot's time, as the snapshot records it.
    pub taken_at: String,
    /// restic's node type (`file`, `dir`, `symlink`, …), or `absent`.
    pub kind: String,
    pub size: Option<u64>,
    pub mtime: Option<String>,
    /// A file's content id (see the module doc), hex.
    pub hash: Option<String>,
    pub change: String,
}

/// Every snapshot's version of `path` (relative to the snapshot's source), newest
/// first. An error when no snapshot has it.
pub fn history(repo: &Repo, path: &RelPath) -> Result<Vec<RepoVersion>> {
    let mut found: Vec<(RepoVersion, Option<Node>)> = Vec::new();
    for (id, snap) in snapshot::load_readable(repo)?.into_iter().rev() {
        let (start, _) = snapshot::source_tree(repo, &snap)?;
        let n = lookup(repo, start, path)?;
        found.push((
            RepoVersion {
                snapshot: id.hex()[..8].to_string(),
                id: id.hex(),
                label: snap.tag("label").map(str::to_string),
                taken_at: snap.time.clone(),
                kind: n.as_ref().map_or_else(|| "absent".into(), kind_name),
                size: n.as_ref().filter(|n| n.kind == "file").map(|n| n.size),
                mtime: n.as_ref().map(|n| n.mtime.clone()),
                hash: n.as_ref().and_then(content_id),
                change: String::new(),
            },
            n,
        ));
    }
    for i in 0..found.len() {
        let older = found.get(i + 1).map(|f| f.1.clone());
        let change = match (&found[i].1, older) {
            (None, None) | (None, Some(None)) => "absent",
            (None, Some(Some(_))) => "deleted",
            (Some(_), None) => "first",
            (Some(_), Some(None)) => "new",
            (Some(a), Some(Some(o))) => match compare_nodes(&o, a, true) {
                (true, _) => "changed",
                (false, d) if !d.is_empty() => "metadata",
                _ => "same",
            },
        };
        found[i].0.change = change.into();
    }
    if found.iter().all(|f| f.1.is_none()) {
        return Err(Error::Other(format!(
            "no snapshot in {} has {}; check the path (relative to the snapshot's source)",
            repo.backend.location(),
            path.escaped()
        )));
    }
    Ok(found.into_iter().map(|f| f.0).collect())
}

/// The node at `path` under tree `start`, if there is one.
fn lookup(repo: &Repo, start: Id, path: &RelPath) -> Result<Option<Node>> {
    let mut tree = start;
    let comps: Vec<&[u8]> = path.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let t = repo.read_tree(&tree)?;
        let Some(n) = t.nodes.into_iter().find(|n| n.name_bytes() == *c) else {
            return Ok(None);
        };
        if i + 1 == comps.len() {
            return Ok(Some(n));
        }
        match (n.kind.as_str(), n.subtree) {
            ("dir", Some(sub)) => tree = sub,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// A file's content id: SHA-256 of its blob ids, in order.
fn content_id(n: &Node) -> Option<String> {
    let c = n.content.as_ref().filter(|_| n.kind == "file")?;
    let mut all = Vec::with_capacity(c.len() * 32);
    for id in c {
        all.extend_from_slice(&id.0);
    }
    Some(Id::hash(&all).hex())
}
