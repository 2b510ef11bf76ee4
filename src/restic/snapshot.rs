//! Snapshot files: the JSON restic writes for a backup (time, root tree, paths, host,
//! user, tags, parent), loading them all, and naming one (`latest`, an id or a unique
//! id prefix). snapring's own facts ride in tags (docs/format.md). Reads through `repo`.

use serde::{Deserialize, Serialize};

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::backend::Kind;
use super::pack::BlobType;
use super::repo::Repo;
use super::tree::{Node, Tree};
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

/// A snapshot file that does not read (it does not match its name, does not open with
/// the key, is not a snapshot), and why: its time is not known, so it may be the newest.
#[derive(Debug, Clone)]
pub struct DamagedFile {
    pub id: Id,
    pub reason: String,
}

impl DamagedFile {
    /// The warning `load_readable` gives for it.
    pub fn warning(&self) -> String {
        format!(
            "snapshot {} left out: {}; `snapring prune` refuses until the file is \
             removed (`restic check` says more)",
            &self.id.hex()[..8],
            self.reason
        )
    }
}

/// The snapshots that read, oldest first, and the snapshot files that do not.
pub type Listing = (Vec<(Id, Snapshot)>, Vec<DamagedFile>);

/// Every snapshot whose file reads, oldest first, and the files that do not (damaged:
/// they do not match their name, do not open with the key, are not a snapshot: bit
/// rot, or the truncated file a killed restic 0.14, which writes in place, leaves).
/// Errors reading the storage still fail.
pub fn load_listing(repo: &Repo) -> Result<Listing> {
    let mut out = Vec::new();
    let mut damaged = Vec::new();
    for id in repo.backend.list(Kind::Snapshot)? {
        match repo.load_json::<Snapshot>(Kind::Snapshot, &id) {
            Ok(s) => out.push((id, s)),
            Err(e @ Error::Corrupt { .. }) => damaged.push(DamagedFile {
                id,
                reason: e.to_string(),
            }),
            Err(e) => return Err(e),
        }
    }
    out.sort_by_key(|(id, s)| (s.unix_time(), *id));
    Ok((out, damaged))
}

/// Every snapshot whose file reads, oldest first. A file that is damaged
/// ([`load_listing`]) is left out with a warning, as `restic snapshots` does, so that
/// one bad file does not stop every backup, retention and copy. It is never removed by
/// retention; `prune` refuses until it is repaired or removed. `list` shows it, and
/// `verify` reports it ([`load_listing`]); `latest` is not resolved past it ([`find`]).
pub fn load_readable(repo: &Repo) -> Result<Vec<(Id, Snapshot)>> {
    let (out, damaged) = load_listing(repo)?;
    for d in &damaged {
        tracing::warn!("{}", d.warning());
    }
    Ok(out)
}

/// Names a snapshot: `latest`, or its id or a unique prefix of it. `latest` is refused
/// while a snapshot file does not read ([`refuse_latest`]); an id naming such a file
/// is an error saying why it does not read; other damaged files are warned about.
pub fn find(repo: &Repo, name: &str) -> Result<(Id, Snapshot)> {
    let (mut all, damaged) = load_listing(repo)?;
    refuse_latest(repo, &damaged, name)?;
    if let Some(d) = damaged_named(&all, &damaged, name) {
        return Err(Error::Corrupt {
            what: format!("snapshot {name:?}"),
            why: d.reason.clone(),
        });
    }
    for d in &damaged {
        tracing::warn!("{}", d.warning());
    }
    let at = find_in(&all, name)?;
    Ok(all.swap_remove(at))
}

/// The damaged file `name` names (an id or a unique prefix), when no readable snapshot
/// matches it.
pub fn damaged_named<'a>(
    all: &[(Id, Snapshot)],
    damaged: &'a [DamagedFile],
    name: &str,
) -> Option<&'a DamagedFile> {
    if name.is_empty() || name == "latest" || all.iter().any(|(id, _)| id.hex().starts_with(name)) {
        return None;
    }
    let mut hits = damaged.iter().filter(|d| d.id.hex().starts_with(name));
    match (hits.next(), hits.next()) {
        (Some(d), None) => Some(d),
        _ => None,
    }
}

/// `latest` while a snapshot file does not read is refused: that file's time is not
/// known, and it is most often the newest (a backup killed while writing it, bit rot in
/// the last file written), so resolving `latest` to the newest readable snapshot would
/// give an older one in silence (a restore `complete` with stale data). The error
/// names the file and how to go on: name a snapshot by its id, or remove the damaged
/// file.
pub fn refuse_latest(repo: &Repo, damaged: &[DamagedFile], name: &str) -> Result<()> {
    if name != "latest" || damaged.is_empty() {
        return Ok(());
    }
    let files: Vec<String> = damaged
        .iter()
        .map(|d| {
            format!(
                "{} ({})",
                repo.backend.file_location(Kind::Snapshot, &d.id),
                d.reason
            )
        })
        .collect();
    Err(Error::Other(format!(
        "`latest` cannot be told: {} snapshot file(s) do not read, and one may be the \
         newest snapshot: {}; name the snapshot to use by its id (`snapring list` shows \
         them, the damaged ones marked), or remove the damaged file once `restic check` \
         or `snapring verify --all` has said what it is (`prune` refuses until then too)",
        damaged.len(),
        files.join(", ")
    )))
}

/// What `name` names in the repository (`dest`, as the user gave it, for the message),
/// without restoring anything: `Ok(None)` a snapshot, or nothing that is the name's
/// fault: `latest` (only an empty repository, or a damaged file, leaves it unresolved:
/// the repository's state), an id of a damaged snapshot file (its damage is the run's
/// to report), any name in a repository without snapshots; `Ok(Some(why))` nothing,
/// though the repository has snapshots: an id or prefix none of them has, or that
/// several have. `restore` refuses such a name as a mistake on its command line (exit
/// 64) before it starts a run, as it refuses a store's (`Store::names_nothing`).
pub fn names_nothing(repo: &Repo, name: &str, dest: &str) -> Result<Option<String>> {
    let (all, damaged) = load_listing(repo)?;
    let of_damaged = |d: &DamagedFile| !name.is_empty() && d.id.hex().starts_with(name);
    if name == "latest" || (all.is_empty() && damaged.is_empty()) || damaged.iter().any(of_damaged)
    {
        return Ok(None);
    }
    let hits = all
        .iter()
        .filter(|(id, _)| !name.is_empty() && id.hex().starts_with(name))
        .count();
    Ok(match hits {
        1 => None,
        0 => Some(format!(
            "no snapshot {name:?} in the repository {dest}: give a snapshot's id (or a unique prefix of it) or `latest`; `snapring list --dest {dest}` shows the snapshots there"
        )),
        n => Some(format!(
            "{n} snapshots in the repository {dest} start with {name:?}: give more of the id; `snapring list --dest {dest}` shows them"
        )),
    })
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
/// for a snapshot of one path, that path's tree; for one of several paths (or of `/`),
/// the root tree and `None`.
///
/// How restic lays a one-path snapshot out (`internal/archiver/tree.go`, the same in
/// 0.14 and 0.17+; `paths` is always made absolute): `backup /abs/dir` nests the
/// path's ancestors, one tree of one entry each (`abs` → `dir`), as snapring does;
/// `backup rel/dir` nests only the components as given (`..` dropped: `rel` →
/// `dir`); `backup .` (or `..`, `/`) puts the directory's *contents* at the root.
/// So a tail of the path is taken only when the trees above it are a chain of
/// one-entry directories ending in it, the whole path first; else the root. A
/// directory of several entries at the root is never taken for a subdirectory of
/// the same name (`cd myproj && restic backup .` with `myproj/myproj/`). The one
/// layout this cannot tell apart: `backup .` of a directory whose only entry is a
/// chain named like the path's tail, read as the relative backup (no entry is lost
/// either way: the restore has one level less) (docs/format.md).
/// Restore, diff, verify and history all name paths from here.
pub fn source_tree(repo: &Repo, snap: &Snapshot) -> Result<(Id, Option<Node>)> {
    let top = match snap.paths.as_slice() {
        [one] => {
            let comps: Vec<&OsStr> = Path::new(one).iter().skip(1).collect();
            let mut top = None;
            for k in 0..comps.len() {
                top = chain_node(repo, snap.tree, &comps[k..])?;
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

/// The node at `comps` below `tree` when every tree on the way holds exactly one entry,
/// the next directory of `comps` (a chain of one-entry directories, as restic nests a
/// backed-up path); `None` otherwise.
fn chain_node(repo: &Repo, mut tree: Id, comps: &[&OsStr]) -> Result<Option<Node>> {
    let mut found = None;
    for c in comps {
        let t = Tree::from_blob(&repo.read_blob(BlobType::Tree, &tree)?, &tree)?;
        let mut nodes = t.nodes.into_iter();
        match (nodes.next(), nodes.next()) {
            (Some(n), None)
                if n.kind == "dir" && n.name_bytes() == c.as_bytes() && n.subtree.is_some() =>
            {
                tree = n.subtree.expect("checked");
                found = Some(n);
            }
            _ => return Ok(None),
        }
    }
    Ok(found)
}
