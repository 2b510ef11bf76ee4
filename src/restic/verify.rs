//! `snapring verify --dest REPO [SNAPSHOT…|--all]`: re-reads every blob the chosen
//! snapshots reference and checks it as restic's `check --read-data` does for them: each
//! tree blob read while walking the trees, then each data blob from its pack (one ranged
//! read per pack, several packs at once), decrypted (MAC checked), decompressed and its
//! SHA-256 compared with its id. A damaged blob is mapped back to the files (and
//! directories) that use it, each listed with the reason. Blobs shared by several
//! snapshots are read once. A blob stored in several packs whose first copy is bad is
//! read from the next (as restore reads it), the bad pack named in a warning and
//! counted (`bad_copies`). A pack that cannot be read (an I/O error such as EIO, a
//! transport failing past its retries: [`super::backend::is_read_failure`]; or refused
//! by the server: [`super::Error::Refused`], S3's 403) says nothing of its bytes: the
//! files using it are not checked (`unreadable`, listed in `problems`), never called
//! corrupt, and the advice is to verify again, not to repair. Any other error reading
//! a pack stops the verify: one met as SIGINT/SIGTERM stops it (S3's "not retried, the
//! run is stopping") ends it interrupted (exit 3), no pack called unreadable.
//! The header of every pack a snapshot uses is read too (the bytes after its last
//! indexed blob, one small ranged read): one that does not read or describe the pack's
//! size is damage (`damaged_packs`), one whose read fails as a blob's can is not
//! checked (`unchecked_packs`), never clean.
//! A snapshot file that does not read gets a verdict of its own (damaged: `--all`,
//! `latest`, or named by its id), the others are still verified; an index file that
//! does not read (the repository opened with `Repo::open_tolerant`) is on every verdict.
//! Reads the repository; writes nothing, takes no lock (packs are written once and
//! only `prune` removes them).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use super::backend::Kind;
use super::index::Location;
use super::pack::{BlobType, Entry, open_blob};
use super::repo::Repo;
use super::snapshot::{self, Snapshot};
use super::tree::Node;
use super::{Error, Id, Result};
use crate::relpath::{RelPath, valid_name};

/// One file or directory `verify` found damaged, and why.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// Escaped path, relative to the snapshot's source (docs/format.md).
    pub path: String,
    /// `file`, or `dir` when its tree blob is damaged (nothing below it was checked).
    pub kind: String,
    pub reason: String,
}

/// The verdict on one snapshot.
#[derive(Serialize, Debug, Default)]
pub struct RepoVerified {
    /// The short id (8 hex digits), as `list` shows it.
    pub snapshot: String,
    pub id: String,
    pub time: String,
    pub label: Option<String>,
    /// What the snapshot was checked against: `repository` (its own blob ids).
    pub against: String,
    pub clean: bool,
    /// Regular files in the snapshot, and their bytes (these and the blob counts are
    /// 0 with `--against`, whose counts are in `totals`).
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    /// Distinct tree and data blobs the snapshot references.
    pub tree_blobs: u64,
    pub data_blobs: u64,
    /// Of the data blobs, those read here (the others were read for an earlier
    /// snapshot of the same `verify`), and their plaintext bytes.
    pub data_blobs_read: u64,
    pub data_bytes_read: u64,
    /// Damaged files (a data blob does not check), and damaged directories (a tree blob).
    /// With `--against`: files whose bytes differ from the live tree's.
    pub corrupt: u64,
    pub damaged_dirs: u64,
    pub damaged: Vec<Damaged>,
    /// Files and directories whose blobs could not be read (an I/O error: EIO, a
    /// transport failing): not checked, so not known to be damaged (a rerun may read
    /// them); never counted in `corrupt`. Each listed in `problems` (path, reason), as
    /// the store's verify lists them. Also each pack whose header could not be read
    /// (`unchecked_packs`, a `problems` entry of path `.`). With `--against`: every
    /// entry of `problems`.
    pub unreadable: u64,
    /// Data blobs whose first copy is damaged or gone but which another pack holds
    /// intact (each warned about, with the bad pack): the files read, the repository
    /// wants repair (`restic check --read-data`, `restic repair packs`).
    pub bad_copies: u64,
    /// Data blobs whose first copy could not be read (an I/O error) but which another
    /// pack holds intact: the files read; the pack was not checked (verify again).
    pub unreadable_copies: u64,
    /// With `--against DIR` only (the store's verify fields): entries of the snapshot
    /// not in DIR, entries of DIR not in the snapshot, metadata differences, every
    /// difference, and what could not be read (a damaged blob among them). Against the
    /// repository, `problems` lists the entries counted in `unreadable`.
    pub missing: u64,
    pub unexpected: u64,
    pub metadata: u64,
    pub differences: Vec<crate::compare::Difference>,
    pub totals: crate::compare::Totals,
    pub problems: Vec<(String, String)>,
    /// Why the snapshot's own file does not read (it does not match its name, open or
    /// parse): nothing of it could be checked; `clean` is false, and `damaged` has one
    /// entry (`.`, kind `snapshot file`) saying so. `None` for a snapshot that reads.
    pub snapshot_file_damaged: Option<String>,
    /// Index files of the repository that do not read (ids), the same on every
    /// snapshot's verdict: damage (exit 2) even when the snapshot reads whole;
    /// `snapring repair index` rebuilds the index.
    pub damaged_index_files: Vec<String>,
    /// Packs holding blobs of the snapshot whose header does not read or does not
    /// describe the pack's size (ids; each also in `damaged`, path `.`, kind `pack`):
    /// damage (exit 2) even when every blob of the snapshot checks at its indexed place;
    /// `snapring repair index` salvages their blobs into new packs.
    pub damaged_packs: Vec<String>,
    /// Packs holding blobs of the snapshot whose header could not be read (ids: an
    /// I/O error, a transport failing past its retries, the server's refusal): not
    /// checked, so neither damaged nor clean; each also in `problems` (path `.`) and
    /// counted in `unreadable`: verify again once the storage reads.
    pub unchecked_packs: Vec<String>,
    /// With `--against DIR` only: whether the compare stayed on `DIR`'s file system,
    /// and the mount points whose contents it did not compare.
    #[serde(flatten)]
    pub one_fs: crate::compare::OneFsSummary,
}

/// Snapshots (`latest`, ids or id prefixes; none: `latest`; `all`: every one, oldest
/// first) verified one after another; `jobs` packs read at once (0: 4). With `against`,
/// each is compared instead with that live tree through the store's `compare` walk,
/// every file hashed on both sides (the repository's blobs read and checked), staying on
/// its file system as `diff --against` does (`one_file_system`, or the snapshot's tag).
pub fn verify(
    repo: &Repo,
    which: &[String],
    all: bool,
    against: Option<&std::path::Path>,
    one_file_system: bool,
    jobs: usize,
    cancel: &AtomicBool,
) -> Result<Vec<RepoVerified>> {
    // A snapshot file that does not read is damage to report, not a reason to verify
    // nothing (`--all`) or to verify an older snapshot as `latest` in silence: with
    // `--all` or `latest` every such file gets a verdict of its own (after the others:
    // its time is not known), and one named by its id gets one.
    let (mut readable, damaged) = snapshot::load_listing(repo)?;
    let mut bad: Vec<&snapshot::DamagedFile> = Vec::new();
    let targets: Vec<(Id, Snapshot)> = if all {
        bad.extend(&damaged);
        readable
    } else if which.is_empty() || which.iter().any(|w| w == "latest") {
        if readable.is_empty() && damaged.is_empty() {
            snapshot::find_in(&readable, "latest")?;
        }
        bad.extend(&damaged);
        let mut t = Vec::new();
        for w in which.iter().filter(|w| *w != "latest") {
            if let Some(d) = snapshot::damaged_named(&readable, &damaged, w) {
                if !bad.iter().any(|b| b.id == d.id) {
                    bad.push(d);
                }
                continue;
            }
            t.push(readable[snapshot::find_in(&readable, w)?].clone());
        }
        if let Some(last) = readable.pop() {
            t.push(last);
        }
        t
    } else {
        let mut t = Vec::new();
        for w in which {
            if let Some(d) = snapshot::damaged_named(&readable, &damaged, w) {
                if !bad.iter().any(|b| b.id == d.id) {
                    bad.push(d);
                }
                continue;
            }
            t.push(readable[snapshot::find_in(&readable, w)?].clone());
        }
        t
    };
    for d in &damaged {
        if !bad.iter().any(|b| b.id == d.id) {
            tracing::warn!("{}", d.warning());
        }
    }
    let damaged_index: Vec<String> = repo
        .damaged_index_files
        .iter()
        .map(|(id, _)| id.hex())
        .collect();
    let file_damaged = |d: &snapshot::DamagedFile| RepoVerified {
        snapshot: d.id.hex()[..8].to_string(),
        id: d.id.hex(),
        against: match against {
            Some(_) => String::new(),
            None => "repository".into(),
        },
        clean: false,
        damaged: vec![Damaged {
            path: ".".into(),
            kind: "snapshot file".into(),
            reason: d.reason.clone(),
        }],
        snapshot_file_damaged: Some(d.reason.clone()),
        damaged_index_files: damaged_index.clone(),
        ..Default::default()
    };
    let mut out = Vec::new();
    if let Some(dir) = against {
        for (id, snap) in &targets {
            out.push(one_against(
                repo,
                *id,
                snap,
                dir,
                one_file_system,
                jobs,
                cancel,
            )?);
        }
    } else {
        let jobs = if jobs == 0 { 4 } else { jobs };
        // Every data blob checked so far.
        let mut verdicts: HashMap<Id, Verdict> = HashMap::new();
        // Every pack's size, where its indexed blobs end, and each pack's header
        // checked so far.
        let mut packs = Packs {
            sizes: repo.backend.list_sizes(Kind::Pack)?.into_iter().collect(),
            ends: repo.index.blob_ends(),
            checked: HashMap::new(),
        };
        for (id, snap) in targets {
            let mut v = one(repo, id, &snap, &mut verdicts, &mut packs, jobs, cancel)?;
            v.damaged_index_files = damaged_index.clone();
            out.push(v);
        }
    }
    out.extend(bad.into_iter().map(file_damaged));
    Ok(out)
}

fn one_against(
    repo: &Repo,
    id: Id,
    snap: &Snapshot,
    dir: &std::path::Path,
    one_file_system: bool,
    jobs: usize,
    cancel: &AtomicBool,
) -> Result<RepoVerified> {
    use crate::compare::Change;
    let (root, _) = snapshot::source_tree(repo, snap)?;
    let one_fs = super::diff::stays_on_one_fs(one_file_system, snap);
    let ex = super::diff::live_excludes(snap)?;
    let o = super::diff::compare_live(repo, root, dir, true, (one_fs, ex), jobs, cancel)?;
    let n = |c| o.differences.iter().filter(|d| d.change == c).count() as u64;
    Ok(RepoVerified {
        snapshot: id.hex()[..8].to_string(),
        id: id.hex(),
        time: snap.time.clone(),
        label: snap.tag("label").map(str::to_string),
        // Absolute: a live tree named `repository` is not the repository.
        against: std::path::absolute(dir)
            .unwrap_or_else(|_| dir.to_path_buf())
            .display()
            .to_string(),
        clean: o.differences.is_empty() && o.problems.is_empty(),
        corrupt: n(Change::Content),
        unreadable: o.problems.len() as u64,
        missing: n(Change::Removed),
        unexpected: n(Change::Added),
        metadata: n(Change::Metadata),
        differences: o.differences,
        totals: o.totals,
        problems: o.problems,
        one_fs: o.one_fs,
        ..Default::default()
    })
}

/// What became of a data blob.
#[derive(Clone, Debug)]
enum Verdict {
    Good,
    /// It does not check (or is gone): damage.
    Damaged(String),
    /// Its pack could not be read (an I/O error): not checked.
    Unreadable(String),
}

/// The verdict on bytes that could not be had: `e` a read failure or a refusal (not
/// checked, [`not_checked`]) or damage (a checksum mismatch, a pack gone or cut short);
/// `None` for any other error, which says nothing of the bytes and stops the verify
/// (one that stops as the run does, SIGINT/SIGTERM: S3's "not retried, the run is
/// stopping"; credentials that could not be had): no verdict on them is made up.
fn failed(e: &Error, why: String) -> Option<Verdict> {
    if not_checked(e) {
        Some(Verdict::Unreadable(why))
    } else if matches!(
        e,
        Error::Corrupt { .. } | Error::Missing(_) | Error::Io { .. }
    ) {
        // (An `Io` not a read failure: the file gone or shorter.)
        Some(Verdict::Damaged(why))
    } else {
        None
    }
}

/// Whether `e`, reading a blob, leaves its bytes not checked rather than found
/// damaged: a read failure ([`super::backend::is_read_failure`]: an I/O error, storage
/// down past its retries) or the server's refusal ([`Error::Refused`]: S3's 403
/// AccessDenied, named in the message): verify again once the storage reads or access
/// is fixed.
fn not_checked(e: &Error) -> bool {
    super::backend::is_read_failure(e) || matches!(e, Error::Refused(_))
}

/// The packs of the repository as `verify` checks them whole: their sizes (one
/// listing), where each one's indexed blobs end ([`super::index::Index::blob_ends`]:
/// its header is read from there, a few hundred bytes, not a 64 KiB tail), and the
/// verdict on each header read so far (`Good`, `Damaged(why)`, or `Unreadable(why)`:
/// an I/O error or a refusal, not checked).
struct Packs {
    sizes: HashMap<Id, u64>,
    ends: HashMap<Id, u64>,
    checked: HashMap<Id, Verdict>,
}

/// The header of every pack holding a blob of `trees` or `blobs` (its first copy, the
/// one read) not checked yet: read from the pack's end, opened, and the size it
/// describes compared with the pack's. A pack cut short at its end, or whose header is
/// damaged, still gives its blobs at the places the index says, so the blob reads alone
/// found it clean, though `restic check --read-data` fails it and `repair index` or
/// `prune` would trip over it. A pack not listed is left to the blob reads (missing);
/// one whose header could not be read (an I/O error, a refusal) is not checked: never
/// called damaged, nor clean (until session 50 it counted as clean). The header is
/// read from where the pack's last indexed blob ends (one read of the header's bytes;
/// a second when the header is longer than that). Returns the packs this snapshot uses
/// whose header is damaged or was not checked, with the verdict, by pack id.
fn check_headers(
    repo: &Repo,
    trees: &HashSet<Id>,
    blobs: &HashSet<Id>,
    packs: &mut Packs,
    jobs: usize,
    cancel: &AtomicBool,
) -> Result<Vec<(Id, Verdict)>> {
    let mut used: Vec<Id> = trees
        .iter()
        .filter_map(|t| repo.index.get(BlobType::Tree, t))
        .chain(
            blobs
                .iter()
                .filter_map(|b| repo.index.get(BlobType::Data, b)),
        )
        .map(|l| l.pack)
        .collect::<HashSet<Id>>()
        .into_iter()
        .collect();
    used.sort();
    let todo: Vec<(Id, u64, u64)> = used
        .iter()
        .filter(|p| !packs.checked.contains_key(*p))
        .filter_map(|p| {
            let size = *packs.sizes.get(p)?;
            // A pack the index describes whole: its header and the header's length.
            let tail = size.saturating_sub(packs.ends.get(p).copied().unwrap_or(0));
            Some((*p, size, tail))
        })
        .collect();
    let got = crate::util::par_map(jobs, &todo, |(pack, size, tail)| {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        // Damaged only when a second read says so too (a read garbled on its way is not
        // damage: blobs are called damaged only when two reads agree, review of reader-49).
        let read = || match super::repair::read_pack_header_tail(repo, pack, *size, *tail) {
            Ok(_) => Ok(Verdict::Good),
            Err(e) => failed(&e, e.to_string()).ok_or(e),
        };
        match read() {
            Ok(Verdict::Damaged(_)) => read(),
            other => other,
        }
    });
    for ((pack, _, _), g) in todo.iter().zip(got) {
        packs.checked.insert(*pack, g?);
    }
    Ok(used
        .into_iter()
        .filter_map(|p| match packs.checked.get(&p)? {
            Verdict::Good => None,
            v => Some((p, v.clone())),
        })
        .collect())
}

fn one(
    repo: &Repo,
    id: Id,
    snap: &Snapshot,
    verdicts: &mut HashMap<Id, Verdict>,
    packs: &mut Packs,
    jobs: usize,
    cancel: &AtomicBool,
) -> Result<RepoVerified> {
    let mut v = RepoVerified {
        snapshot: id.hex()[..8].to_string(),
        id: id.hex(),
        time: snap.time.clone(),
        label: snap.tag("label").map(str::to_string),
        against: "repository".into(),
        ..Default::default()
    };
    // The source's ancestors are read (and so checked) on the way to its tree.
    let start = match snapshot::source_tree(repo, snap) {
        Ok((t, _)) => t,
        Err(e @ Error::Io { .. }) if super::backend::is_read_failure(&e) => {
            v.problems.push((
                ".".into(),
                format!("the snapshot's tree above its source: {e}"),
            ));
            v.unreadable = 1;
            return Ok(v);
        }
        Err(e @ (Error::Corrupt { .. } | Error::Io { .. } | Error::Missing(_))) => {
            v.damaged.push(Damaged {
                path: ".".into(),
                kind: "directory".into(),
                reason: format!("the snapshot's tree above its source: {e}"),
            });
            v.damaged_dirs = 1;
            return Ok(v);
        }
        Err(e) => return Err(e),
    };
    // 1. The trees: every tree blob read and checked; the data blobs collected.
    let mut trees = HashSet::new();
    let mut blobs: HashSet<Id> = HashSet::new();
    walk(
        repo,
        start,
        &RelPath::root(),
        &mut trees,
        cancel,
        &mut |ev| match ev {
            Visit::Node(_, n) => match (n.kind.as_str(), &n.content) {
                // An empty file's content may be `null`.
                ("file", content) => {
                    v.files += 1;
                    v.bytes += n.size;
                    blobs.extend(content.iter().flatten().copied());
                }
                ("dir", _) => v.dirs += 1,
                _ => {}
            },
            Visit::BadTree(rel, why) => {
                v.damaged_dirs += 1;
                v.damaged.push(Damaged {
                    path: rel.escaped(),
                    kind: "directory".into(),
                    reason: why,
                });
            }
            Visit::UnreadableTree(rel, why) => {
                v.unreadable += 1;
                v.problems.push((rel.escaped(), why));
            }
        },
    )?;
    v.tree_blobs = trees.len() as u64;
    v.data_blobs = blobs.len() as u64;
    // 2. The data blobs not checked yet, pack by pack.
    let mut by_pack: HashMap<Id, Vec<Entry>> = HashMap::new();
    let unchecked: Vec<Id> = blobs
        .iter()
        .filter(|b| !verdicts.contains_key(*b))
        .copied()
        .collect();
    for b in &unchecked {
        match repo.index.get(BlobType::Data, b) {
            Some(Location { pack, entry }) => by_pack.entry(pack).or_default().push(entry),
            None => {
                let why = format!("data blob {b} is not in any index");
                verdicts.insert(*b, Verdict::Damaged(why));
            }
        }
    }
    let (read, mut bytes) = read_packs(repo, by_pack, verdicts, jobs, cancel)?;
    // A blob whose first copy is bad: its other copies, one by one.
    for b in &unchecked {
        let (mut why, first_unreadable) = match verdicts.get(b) {
            Some(Verdict::Damaged(why)) => (why.clone(), false),
            Some(Verdict::Unreadable(why)) => (why.clone(), true),
            _ => continue,
        };
        // Whether a copy could not be read: then the blob is not known to be damaged.
        let mut unreadable = first_unreadable;
        let copies = repo.index.locations(BlobType::Data, b);
        let mut good = false;
        for loc in copies.iter().skip(1) {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            match repo.read_blob_at(loc) {
                Ok((plain, _)) => {
                    // The first copy is either not checked (it did not read) or bad.
                    let (first, other) = (copies[0].pack, loc.pack);
                    if first_unreadable {
                        tracing::warn!(
                            "data blob {b}: its copy in pack {first} could not be read ({why}; \
                             an I/O error, not a checksum mismatch: not checked, verify \
                             again); its copy in pack {other} is intact"
                        );
                        v.unreadable_copies += 1;
                    } else {
                        tracing::warn!(
                            "data blob {b}: its copy in pack {first} is damaged or gone \
                             ({why}); its copy in pack {other} is intact (`restic check \
                             --read-data` and `restic repair packs` say more)"
                        );
                        v.bad_copies += 1;
                    }
                    bytes += plain.len() as u64;
                    good = true;
                    break;
                }
                Err(e) => match failed(&e, String::new()) {
                    // Says nothing of the copy (the stop's, say): the verify stops.
                    None => return Err(e),
                    Some(v) => {
                        unreadable |= matches!(v, Verdict::Unreadable(_));
                        why = format!("{why}; its copy in pack {}: {e}", loc.pack);
                    }
                },
            }
        }
        let verdict = match (good, unreadable) {
            (true, _) => Verdict::Good,
            (false, true) => Verdict::Unreadable(why),
            (false, false) => Verdict::Damaged(why),
        };
        verdicts.insert(*b, verdict);
    }
    v.data_blobs_read = read;
    v.data_bytes_read = bytes;
    let mut unchecked: Vec<(Id, String)> = Vec::new();
    for (pack, verdict) in check_headers(repo, &trees, &blobs, packs, jobs, cancel)? {
        let why = match verdict {
            Verdict::Damaged(why) => why,
            // Not checked: a problem (the snapshot not clean, not damaged either),
            // added below unless a read of its blobs failed already.
            Verdict::Unreadable(why) => {
                v.unchecked_packs.push(pack.hex());
                unchecked.push((pack, why));
                continue;
            }
            Verdict::Good => continue,
        };
        v.damaged_packs.push(pack.hex());
        v.damaged.push(Damaged {
            path: ".".into(),
            kind: "pack".into(),
            reason: format!(
                "{why} (the pack's header does not read or does not describe its size: \
                 `restic check --read-data` fails it; its blobs were checked at the places \
                 the index gives)"
            ),
        });
    }
    // 3. Damage found, or blobs not read: which files use them (the trees again, from
    // the repository; a damaged or unreadable tree is listed already).
    if blobs
        .iter()
        .any(|b| !matches!(verdicts.get(b), Some(Verdict::Good)))
    {
        let mut seen = HashSet::new();
        walk(
            repo,
            start,
            &RelPath::root(),
            &mut seen,
            cancel,
            &mut |ev| {
                let Visit::Node(rel, n) = ev else { return };
                if n.kind != "file" {
                    return;
                }
                // A damaged blob makes the file damaged, whatever else did not read.
                let of = |damaged: bool| {
                    n.content
                        .iter()
                        .flatten()
                        .find_map(|b| match verdicts.get(b) {
                            Some(Verdict::Damaged(why)) if damaged => Some(why.clone()),
                            Some(Verdict::Unreadable(why)) if !damaged => Some(why.clone()),
                            _ => None,
                        })
                };
                if let Some(why) = of(true) {
                    v.corrupt += 1;
                    v.damaged.push(Damaged {
                        path: rel.escaped(),
                        kind: "file".into(),
                        reason: why,
                    });
                } else if let Some(why) = of(false) {
                    v.unreadable += 1;
                    v.problems.push((rel.escaped(), why));
                }
            },
        )?;
    }
    // A pack whose header could not be read: a problem, unless one is listed for it
    // already (its blobs did not read either: the same pack, counted once).
    for (pack, why) in unchecked {
        let hex = pack.hex();
        if v.problems.iter().any(|(_, w)| w.contains(&hex)) {
            continue;
        }
        v.unreadable += 1;
        v.problems.push((
            ".".into(),
            format!(
                "the header of pack {pack}: {why} (the pack's header was not checked; its \
                 blobs were checked at the places the index gives)"
            ),
        ));
    }
    v.damaged.sort_by(|a, b| {
        RelPath::from_escaped(&a.path)
            .ok()
            .cmp(&RelPath::from_escaped(&b.path).ok())
    });
    v.problems
        .sort_by_key(|(p, _)| RelPath::from_escaped(p).ok());
    v.clean = v.damaged.is_empty() && v.problems.is_empty();
    Ok(v)
}

/// What `walk` reports: a node (with its path), a tree blob that does not check (or
/// is gone), or one that could not be read (an I/O error: not known to be damaged).
pub(crate) enum Visit<'a> {
    Node(&'a RelPath, &'a Node),
    BadTree(&'a RelPath, String),
    UnreadableTree(&'a RelPath, String),
}

/// Depth first, names in tree order, from tree `id` at `rel`. A tree that does not
/// read or check is reported (`UnreadableTree` for a read failure, else `BadTree`)
/// and not descended into; a name that is not one
/// path component is reported the same way. `trees` collects the tree ids read.
pub(crate) fn walk(
    repo: &Repo,
    id: Id,
    rel: &RelPath,
    trees: &mut HashSet<Id>,
    cancel: &AtomicBool,
    f: &mut dyn FnMut(Visit<'_>),
) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    trees.insert(id);
    let t = match repo.read_tree(&id) {
        Ok(t) => t,
        // (A server failing past its retries stops the walk, as before.)
        Err(e @ Error::Io { .. }) if super::backend::is_read_failure(&e) => {
            f(Visit::UnreadableTree(rel, e.to_string()));
            return Ok(());
        }
        Err(e @ (Error::Corrupt { .. } | Error::Io { .. } | Error::Missing(_))) => {
            f(Visit::BadTree(rel, e.to_string()));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let mut names: HashSet<Vec<u8>> = HashSet::with_capacity(t.nodes.len());
    for n in &t.nodes {
        let name = n.name_bytes();
        if !valid_name(&name) {
            f(Visit::BadTree(
                rel,
                format!("tree {id} has an unsafe name {:?}", n.name),
            ));
            continue;
        }
        // Two entries of one name (a crafted or damaged tree: restic never writes
        // one): damage in the snapshot; the first is checked, as restore restores it.
        if !names.insert(name.clone()) {
            f(Visit::BadTree(rel, duplicate_name(&id, n)));
            continue;
        }
        let child = rel.join(&name);
        f(Visit::Node(&child, n));
        if let ("dir", Some(sub)) = (n.kind.as_str(), n.subtree) {
            walk(repo, sub, &child, trees, cancel, f)?;
        }
    }
    Ok(())
}

/// Why the entry `n` of tree `id` is damage: an entry before it has its name.
pub(crate) fn duplicate_name(id: &Id, n: &Node) -> String {
    format!(
        "tree {id} names {:?} twice (this one a {}): damage in the snapshot, not \
         something a rerun changes; the first entry of the name is restored, this one left \
         out",
        n.name, n.kind
    )
}

/// Reads the blobs `by_pack` names, each pack's span in one read, `jobs` packs at once;
/// records a verdict for each blob. Returns the blobs read and their plaintext bytes.
/// Memory: one span (at most a pack, ~16 MiB) per worker.
fn read_packs(
    repo: &Repo,
    by_pack: HashMap<Id, Vec<Entry>>,
    verdicts: &mut HashMap<Id, Verdict>,
    jobs: usize,
    cancel: &AtomicBool,
) -> Result<(u64, u64)> {
    let queue = Mutex::new(by_pack.into_iter().collect::<Vec<_>>());
    let found = Mutex::new(Vec::new());
    let plain = std::sync::atomic::AtomicU64::new(0);
    // The first error that stops the verify (`failed`'s `None`), which stops the others.
    let stop: Mutex<Option<Error>> = Mutex::new(None);
    let stopped = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    if cancel.load(Ordering::Relaxed) || stopped.load(Ordering::Relaxed) {
                        return;
                    }
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    let Some((pack, mut entries)) = next else {
                        return;
                    };
                    entries.sort_by_key(|e| e.offset);
                    let got = match check_pack(repo, &pack, &entries) {
                        Ok(got) => got,
                        Err(e) => {
                            stopped.store(true, Ordering::Relaxed);
                            stop.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                            return;
                        }
                    };
                    let bytes: u64 = got.iter().map(|(_, _, n)| n).sum();
                    plain.fetch_add(bytes, Ordering::Relaxed);
                    found
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(got.into_iter().map(|(id, v, _)| (id, v)));
                }
            });
        }
    });
    // (The error first: a read given up as the verify was stopped names what it read.)
    if let Some(e) = stop.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    let found = found.into_inner().unwrap_or_else(|e| e.into_inner());
    // Blobs whose pack could not be read were not read.
    let n = found
        .iter()
        .filter(|(_, v)| !matches!(v, Verdict::Unreadable(_)))
        .count() as u64;
    verdicts.extend(found);
    Ok((n, plain.into_inner()))
}

/// Each entry's verdict and plaintext length, from one read of the pack's span. A span
/// whose blobs do not all check is read again before they are called damaged
/// ([`super::reread::read_checked`]: damaged once two reads agree byte for byte); one
/// read garbled in transit is no damage. `Err`: an error that says nothing of the pack
/// (`failed`), which stops the verify.
fn check_pack(repo: &Repo, pack: &Id, entries: &[Entry]) -> Result<Vec<(Id, Verdict, u64)>> {
    use super::reread::{Outcome, garbled_reason, read_checked};
    let start = entries.first().map_or(0, |e| e.offset as u64);
    let end = entries
        .iter()
        .map(|e| e.offset as u64 + e.length as u64)
        .max()
        .unwrap_or(start);
    let got = read_checked(
        &|| format!("pack {pack}"),
        "restic.read_garbled",
        || repo.backend.read_range(pack, start, (end - start) as usize),
        |span| check_span(repo, pack, entries, start, span),
        |v| v.iter().all(|(_, why, _)| why.is_none()),
    );
    Ok(match got {
        Ok((_, v, Outcome::Garbled)) => v
            .into_iter()
            .map(|(id, why, n)| match why {
                None => (id, Verdict::Good, n),
                Some(w) => (
                    id,
                    Verdict::Damaged(format!("{w}; {}", garbled_reason())),
                    n,
                ),
            })
            .collect(),
        Ok((_, v, _)) => v
            .into_iter()
            .map(|(id, why, n)| (id, why.map_or(Verdict::Good, Verdict::Damaged), n))
            .collect(),
        // The pack could not be read (an I/O error), or is gone or shorter.
        Err(x) => {
            let Some(verdict) = failed(&x, format!("pack {pack}: {x}")) else {
                return Err(x);
            };
            entries.iter().map(|e| (e.id, verdict.clone(), 0)).collect()
        }
    })
}

/// Each entry's verdict and plaintext length in `span`, the pack's bytes from `start`.
fn check_span(
    repo: &Repo,
    pack: &Id,
    entries: &[Entry],
    start: u64,
    span: &[u8],
) -> Vec<(Id, Option<String>, u64)> {
    entries
        .iter()
        .map(|e| {
            let at = (e.offset as u64 - start) as usize;
            let Some(sealed) = span.get(at..at + e.length as usize) else {
                return (
                    e.id,
                    Some(format!("pack {pack} is shorter than the index says")),
                    0,
                );
            };
            match open_blob(&repo.key, sealed, e) {
                Ok(plain) => (e.id, None, plain.len() as u64),
                Err(x) => (e.id, Some(format!("in pack {pack}: {x}")), 0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a read failure or the server's refusal leaves a blob not checked; damage is
    /// damage; any other error (the stop's, above all) gives no verdict at all.
    #[test]
    fn a_verdict_only_from_errors_that_say_something_of_the_bytes() {
        let io = |kind| Error::Io {
            action: "read",
            path: "data/ab/abcd".into(),
            source: std::io::Error::from(kind),
        };
        let unreadable = |e: Error| matches!(failed(&e, "w".into()), Some(Verdict::Unreadable(_)));
        let damaged = |e: Error| matches!(failed(&e, "w".into()), Some(Verdict::Damaged(_)));
        let none = |e: Error| failed(&e, "w".into()).is_none();
        assert!(unreadable(io(std::io::ErrorKind::Other)));
        assert!(unreadable(Error::Unreachable("HTTP 500".into())));
        assert!(unreadable(Error::Refused("HTTP 403: AccessDenied".into())));
        assert!(damaged(io(std::io::ErrorKind::NotFound)));
        assert!(damaged(io(std::io::ErrorKind::UnexpectedEof)));
        assert!(damaged(Error::Missing("HTTP 404".into())));
        assert!(damaged(Error::Corrupt {
            what: "blob".into(),
            why: "MAC".into()
        }));
        assert!(none(Error::Cancelled));
        assert!(none(Error::Other(
            "cannot read data/ab/abcd (after 2 attempts; not retried, the run is stopping): \
             HTTP 500"
                .into()
        )));
        assert!(none(Error::Other("the bucket \"b\" does not exist".into())));
    }
}
