//! Snapshot files: the JSON restic writes for a backup (time, root tree, paths, host,
//! user, tags, parent), loading them all, and naming one (`latest`, an id or a unique
//! id prefix). snapring's own facts ride in tags (docs/format.md). Reads through `repo`.

use serde::{Deserialize, Serialize};

use std::ffi::OsStr;
use std::path::Path;

use super::backend::Kind;
use super::repo::Repo;
use super::tree::Node;
use super::{Error, Id, Result};

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Snapshot {
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    pub tree: Id,
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_version: Option<String>,
}

fn is_zero(x: &u32) -> bool {
    *x == 0
}

/// The tag of a snapshot whose walk left entries out (unreadable, vanished: its run was
/// `partial`). `copy` copies a store snapshot again whose copy has it; `restic
/// snapshots --tag partial` lists them.
pub const PARTIAL_TAG: &str = "partial";

/// The tag of a snapshot made with `--one-file-system` (a mount point below the source
/// is an empty tree in it): `diff`/`verify --against` then stay on the live tree's file
/// system too.
pub const ONE_FILE_SYSTEM_TAG: &str = "one_file_system";

impl Snapshot {
    /// Whether the snapshot has the tag `tag` (a whole tag, not a `key=value`'s key).
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// The value of a `key=value` tag.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
    }

    /// Seconds since the epoch (0 if the time does not parse).
    pub fn unix_time(&self) -> (i64, u32) {
        super::parse_time(&self.time).unwrap_or((0, 0))
    }
}

/// Every snapshot, oldest first; one whose file does not read fails (what `prune`
/// and `verify --all` need: a snapshot passed over would lose its data, or its
/// damage).
pub fn load_all(repo: &Repo) -> Result<Vec<(Id, Snapshot)>> {
    let mut out = Vec::new();
    for id in repo.backend.list(Kind::Snapshot)? {
        let s: Snapshot = repo.load_json(Kind::Snapshot, &id)?;
        out.push((id, s));
    }
    out.sort_by_key(|(id, s)| (s.unix_time(), *id));
    Ok(out)
}

/// Every snapshot whose file reads, oldest first. A file that is damaged (it does not
/// match its name, does not open with the key, is not a snapshot: bit rot, or the
/// truncated file a killed restic 0.14, which writes in place, leaves) is left out
/// with a warning, as `restic snapshots` does, so that one bad file does not stop
/// every list, restore and backup. It is never removed by retention; `prune` refuses
/// until it is repaired or removed. Errors reading the storage still fail.
pub fn load_readable(repo: &Repo) -> Result<Vec<(Id, Snapshot)>> {
    let mut out = Vec::new();
    for id in repo.backend.list(Kind::Snapshot)? {
        match repo.load_json::<Snapshot>(Kind::Snapshot, &id) {
            Ok(s) => out.push((id, s)),
            Err(e @ Error::Corrupt { .. }) => tracing::warn!(
                "snapshot {} left out: {e}; `snapring prune` refuses until the file is \
                 removed (`restic check` says more)",
                &id.hex()[..8]
            ),
            Err(e) => return Err(e),
        }
    }
    out.sort_by_key(|(id, s)| (s.unix_time(), *id));
    Ok(out)
}

/// Names a snapshot: `latest`, or its id or a unique prefix of it.
pub fn find(repo: &Repo, name: &str) -> Result<(Id, Snapshot)> {
    let mut all = load_readable(repo)?;
    let at = find_in(&all, name)?;
    Ok(all.swap_remove(at))
}

/// [`find`] among `all` (oldest first, as the loaders give them): the place of the
/// one snapshot `name` names.
pub fn find_in(all: &[(Id, Snapshot)], name: &str) -> Result<usize> {
    if name == "latest" {
        return all
            .len()
            .checked_sub(1)
            .ok_or_else(|| Error::Other("the repository has no snapshots".into()));
    }
    let hits: Vec<usize> = (0..all.len())
        .filter(|&i| !name.is_empty() && all[i].0.hex().starts_with(name))
        .collect();
    match hits.len() {
        1 => Ok(hits[0]),
        0 => Err(Error::Other(format!(
            "no snapshot {name:?} in the repository"
        ))),
        n => Err(Error::Other(format!(
            "{n} snapshots start with {name:?}; give more of the id"
        ))),
    }
}

/// The tree a snapshot's paths are relative to, and the source directory's own node:
/// for a snapshot of one path, that path's tree (restic nests the path's ancestors as
/// trees of their own); for one of several paths (or of `/`), the root tree and `None`.
/// Restore, diff, verify and history all name paths from here.
pub fn source_tree(repo: &Repo, snap: &Snapshot) -> Result<(Id, Option<Node>)> {
    let top = match snap.paths.as_slice() {
        [one] => {
            let comps: Vec<&OsStr> = Path::new(one).iter().skip(1).collect();
            // The whole path first; then its tails, longest first: restic before 0.17
            // recorded a relative path (`restic backup data`) absolute in `paths` but
            // stored only the path as given (`data/...`) in the tree.
            let mut top = None;
            for k in 0..comps.len() {
                top = super::backup::dir_node(repo, snap.tree, &comps[k..])?;
                if top.is_some() {
                    break;
                }
            }
            top
        }
        _ => None,
    };
    Ok((
        top.as_ref().and_then(|n| n.subtree).unwrap_or(snap.tree),
        top,
    ))
}
