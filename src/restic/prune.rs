//! `snapring prune --dest …`: removes the data no snapshot references, under an
//! exclusive lock (restic's rule: it refuses while any live lock of another process,
//! shared or exclusive, exists). First a plan, a value: every tree of every snapshot is
//! read once to mark the blobs in use; each indexed pack is then kept (every blob used),
//! deleted (none used) or repacked (some used, or a pack of another size than its
//! index entries imply, as `repair index --read-data` leaves one whose damaged blob it
//! dropped: the used blobs, checked, are copied as they are sealed into new packs; a
//! copy that does not read or check is replaced by the blob's other copy the index
//! knows, with a warning, and prune stops only when no copy checks); `data/` is listed
//! with sizes for this; packs that no index names (left by a killed run)
//! are deleted too; an indexed pack that is gone stops prune unless every used blob of
//! it has a copy in a pack that is there (the new index then leaves it out). Then the
//! plan is carried out in restic's order: new packs, one new index (superseding every
//! old index file), the old index files, the old packs.
//! A crash at any point leaves a repository that `restic check` accepts: until the old
//! index files go, they still name every pack that is still there. The cancel flag
//! (SIGINT/SIGTERM) stops it while it plans or repacks, before the new index: nothing
//! is removed then (new packs already written are unindexed, and the next prune
//! deletes them); once the new index is written the removals are finished. Does I/O
//! through `repo`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use super::backend::Kind;
use super::index::{IndexFile, Location, PackJson};
use super::pack::{BlobType, Entry, PackBuilder};
use super::repair::implied_size;
use super::repo::{Repo, Span};
use super::snapshot;
use super::tree::Tree;
use super::{Error, Id, Result, corrupt};

/// What becomes of one pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackFate {
    Keep,
    Repack,
    Delete,
}

/// The prune plan: what is used and what each pack becomes.
#[derive(Debug, Default, Serialize)]
pub struct PrunePlan {
    pub snapshots: u64,
    /// Unfinished shard runs whose committed units' data is kept (`Roots`).
    pub shard_runs_kept: u64,
    pub blobs_used: u64,
    pub blobs_unused: u64,
    pub packs_kept: u64,
    pub packs_repacked: u64,
    pub packs_deleted: u64,
    /// Packs in `data/` that no index file names.
    pub packs_unindexed: u64,
    /// Packs an index file names that are gone from `data/`, every used blob of which
    /// has a copy in another pack: left out of the new index (nothing to delete).
    pub packs_missing: u64,
    /// Packs in `data/` of another size than their index entries imply (a blob left
    /// out by `repair index --read-data`, or a file cut short or grown): repacked (or
    /// deleted when none of their indexed blobs is used), never kept as they are.
    pub packs_partly_indexed: u64,
    /// Sealed bytes of the blobs the repacked packs keep (copied into new packs).
    pub bytes_to_repack: u64,
    /// Sealed bytes of the blobs no snapshot uses.
    pub bytes_unused: u64,
    #[serde(skip)]
    fates: Vec<(Id, PackFate)>,
    #[serde(skip)]
    unindexed: Vec<Id>,
    #[serde(skip)]
    missing: HashSet<Id>,
    /// The blobs to keep, by pack: exactly one location for each used blob.
    #[serde(skip)]
    keep: HashMap<Id, Vec<Entry>>,
    #[serde(skip)]
    old_indexes: Vec<Id>,
}

/// What `prune` did.
#[derive(Debug, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub plan: PrunePlan,
    pub packs_written: u64,
    pub bytes_written: u64,
    pub packs_removed: u64,
    pub index_files_removed: u64,
    /// Blobs of repacked packs copied from another copy because the planned one did
    /// not read or check (a warning names each bad pack).
    pub blobs_from_other_copy: u64,
    pub duration_seconds: f64,
}

/// Blobs that no snapshot references yet that prune must keep, with everything they
/// reference: what an unfinished shard run has committed (`shard::repository`: its
/// units' nodes, or the tree of the snapshot its `final` holds), found by the caller
/// under prune's exclusive lock.
#[derive(Debug, Default)]
pub struct Roots {
    pub trees: Vec<Id>,
    pub data: Vec<Id>,
    /// The unfinished shard runs they are of.
    pub runs: u64,
}

/// Marks every blob the snapshots use, reading each tree once, then what `roots` keep.
fn used_blobs(
    repo: &Repo,
    roots: &Roots,
    cancel: &AtomicBool,
) -> Result<(u64, HashSet<(BlobType, Id)>)> {
    let snaps = snapshot::load_all(repo)?;
    let mut used = HashSet::new();
    // One snapshot at a time (what one marked is not read again for the next), so
    // that a blob not in any index names its snapshot.
    for (id, s) in &snaps {
        mark(repo, vec![s.tree], &mut used, Some(id), cancel)?;
    }
    for c in &roots.data {
        if repo.index.contains(BlobType::Data, c) {
            used.insert((BlobType::Data, *c));
        }
    }
    mark(repo, roots.trees.clone(), &mut used, None, cancel)?;
    Ok((snaps.len() as u64, used))
}

/// Marks the trees `todo` and everything under them. `snapshot`: a blob not in any
/// index stops prune, naming that snapshot; `None`: it is passed over (an unfinished
/// run's, which its rerun will find damaged).
fn mark(
    repo: &Repo,
    mut todo: Vec<Id>,
    used: &mut HashSet<(BlobType, Id)>,
    snapshot: Option<&Id>,
    cancel: &AtomicBool,
) -> Result<()> {
    // A tree's blob (`repair index` found its pack gone) stopped prune with the index's
    // bare "Tree blob …: not in any index", naming no snapshot and giving no advice.
    let lost = |what: String| {
        corrupt(
            format!(
                "{what} of snapshot {}",
                snapshot
                    .map(|s| s.hex()[..8].to_string())
                    .unwrap_or_default()
            ),
            "not in any index; prune would lose data, so it stops \
             (`snapring repair index` adds packs no index names, and names the \
             snapshots that reference lost data: forget those with \
             `snapring forget --dest URL ID...`, then prune)",
        )
    };
    let strict = snapshot.is_some();
    while let Some(t) = todo.pop() {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        if !repo.index.contains(BlobType::Tree, &t) {
            if !strict {
                continue;
            }
            return Err(lost(format!("tree blob {t}")));
        }
        if !used.insert((BlobType::Tree, t)) {
            continue;
        }
        let tree = Tree::from_blob(&repo.read_blob(BlobType::Tree, &t)?, &t)?;
        for n in tree.nodes {
            if let Some(sub) = n.subtree {
                todo.push(sub);
            }
            for c in n.content.unwrap_or_default() {
                if !repo.index.contains(BlobType::Data, &c) {
                    if !strict {
                        continue;
                    }
                    return Err(lost(format!("data blob {c} of tree {t}")));
                }
                used.insert((BlobType::Data, c));
            }
        }
    }
    Ok(())
}

/// Plans a prune: reads the snapshots, their trees and every index file.
pub fn plan(repo: &Repo) -> Result<PrunePlan> {
    plan_keeping(repo, &Roots::default(), &AtomicBool::new(false))
}

/// `plan`, keeping what `roots` reference too; `cancel` set stops it.
pub fn plan_keeping(repo: &Repo, roots: &Roots, cancel: &AtomicBool) -> Result<PrunePlan> {
    let (snapshots, used) = used_blobs(repo, roots, cancel)?;
    let mut p = PrunePlan {
        snapshots,
        shard_runs_kept: roots.runs,
        blobs_used: used.len() as u64,
        ..Default::default()
    };
    // Every pack the index files name, with its entries (a pack named by two index
    // files is listed once).
    let mut packs: Vec<(Id, Vec<Entry>)> = Vec::new();
    let mut seen_pack = HashSet::new();
    for idx in repo.backend.list(Kind::Index)? {
        let f: IndexFile = repo.load_json(Kind::Index, &idx)?;
        p.old_indexes.push(idx);
        for pj in f.packs {
            if !seen_pack.insert(pj.id) {
                continue;
            }
            let entries = pj.entries();
            packs.push((pj.id, entries));
        }
    }
    let sizes: HashMap<Id, u64> = repo.backend.list_sizes(Kind::Pack)?.into_iter().collect();
    let present = |id: &Id| sizes.contains_key(id);
    // A pack its entries do not account for whole (`repair index --read-data` left a
    // damaged blob out, or the file was cut short or grew): never kept as it is, as
    // `restic check --read-data` would keep reporting it.
    let whole = |id: &Id, entries: &[Entry]| sizes.get(id) == Some(&implied_size(entries));
    // Packs whose blobs are all used come first, so a blob stored twice is kept where
    // no copying is needed; packs that are gone come last, so a blob with a copy in a
    // pack that is there is kept there.
    let mut taken: HashSet<(BlobType, Id)> = HashSet::new();
    let fully_used = |id: &Id, entries: &[Entry]| {
        whole(id, entries) && entries.iter().all(|e| used.contains(&(e.kind, e.id)))
    };
    packs.sort_by_key(|(id, e)| (!present(id), !fully_used(id, e), *id));
    for (pack, entries) in packs {
        if !present(&pack) {
            let needed = entries
                .iter()
                .find(|e| used.contains(&(e.kind, e.id)) && !taken.contains(&(e.kind, e.id)));
            if let Some(e) = needed {
                return Err(corrupt(
                    format!("pack {pack}"),
                    format!(
                        "named by the index but missing, and {:?} blob {} is in no other \
                         pack; prune stops (`snapring repair index` rebuilds the index from \
                         the packs there and names the snapshots that lost data; the next \
                         backup stores again what the source still has)",
                        e.kind, e.id
                    ),
                ));
            }
            tracing::warn!(
                "pack {pack} is named by the index but missing; every used blob of it has \
                 a copy in another pack, so the new index leaves it out"
            );
            p.blobs_unused += entries.len() as u64;
            p.packs_missing += 1;
            p.missing.insert(pack);
            p.fates.push((pack, PackFate::Delete));
            p.keep.insert(pack, Vec::new());
            continue;
        }
        let mut keep = Vec::new();
        for e in &entries {
            if used.contains(&(e.kind, e.id)) && taken.insert((e.kind, e.id)) {
                keep.push(e.clone());
            } else {
                p.blobs_unused += 1;
                p.bytes_unused += e.length as u64;
            }
        }
        let is_whole = whole(&pack, &entries);
        if !is_whole {
            p.packs_partly_indexed += 1;
            tracing::warn!(
                "pack {} has {} bytes, its {} index entries account for {}; {}",
                repo.backend.file_location(Kind::Pack, &pack),
                sizes[&pack],
                entries.len(),
                implied_size(&entries),
                if keep.is_empty() {
                    "no used blob is in it, so it is deleted"
                } else {
                    "its used blobs are copied into a new pack and it is deleted"
                }
            );
        }
        let fate = if keep.len() == entries.len() && is_whole {
            p.packs_kept += 1;
            PackFate::Keep
        } else if keep.is_empty() {
            p.packs_deleted += 1;
            PackFate::Delete
        } else {
            p.packs_repacked += 1;
            p.bytes_to_repack += keep.iter().map(|e| e.length as u64).sum::<u64>();
            PackFate::Repack
        };
        p.fates.push((pack, fate));
        p.keep.insert(pack, keep);
    }
    if let Some((kind, id)) = used.iter().find(|b| !taken.contains(b)) {
        return Err(corrupt(
            format!("{kind:?} blob {id}"),
            "used by a snapshot but in no pack an index names; prune stops",
        ));
    }
    p.unindexed = sizes
        .into_keys()
        .filter(|id| !seen_pack.contains(id))
        .collect();
    p.unindexed.sort();
    p.packs_unindexed = p.unindexed.len() as u64;
    Ok(p)
}

/// Prunes the repository (or, with `dry_run`, only plans it, under no lock).
pub fn prune(repo: &mut Repo, dry_run: bool) -> Result<PruneReport> {
    prune_keeping(
        repo,
        dry_run,
        &|_| Ok(Roots::default()),
        &AtomicBool::new(false),
    )
}

/// `prune`, keeping what `roots` finds too (called under the exclusive lock, so no
/// writer adds to it meanwhile). `cancel` set stops it with [`Error::Cancelled`]
/// before the new index is written (see the module's notes), with nothing removed.
pub fn prune_keeping(
    repo: &mut Repo,
    dry_run: bool,
    roots: &dyn Fn(&Repo) -> Result<Roots>,
    cancel: &AtomicBool,
) -> Result<PruneReport> {
    let started = std::time::Instant::now();
    // A dry run says what the real one would: that it refuses.
    repo.check_writable()?;
    if dry_run {
        return Ok(PruneReport {
            dry_run,
            plan: plan_keeping(repo, &roots(repo)?, cancel)?,
            packs_written: 0,
            bytes_written: 0,
            packs_removed: 0,
            index_files_removed: 0,
            blobs_from_other_copy: 0,
            duration_seconds: started.elapsed().as_secs_f64(),
        });
    }
    let lock = super::lock::acquire(repo, true)?;
    // What was written between opening the repository and the lock (a backup, a shard
    // worker's commit, then its exit) is in index files this process has not read: a
    // blob the roots name that the index read at open lacks would be passed over, and
    // its pack deleted.
    if let Err(e) = repo.refresh_index() {
        let _ = lock.release();
        return Err(e);
    }
    let repo = &*repo;
    let p = plan_keeping(repo, &roots(repo)?, cancel)?;
    let mut report = PruneReport {
        dry_run,
        packs_written: 0,
        bytes_written: 0,
        packs_removed: 0,
        index_files_removed: 0,
        blobs_from_other_copy: 0,
        duration_seconds: 0.0,
        plan: PrunePlan::default(),
    };
    let nothing_to_do = p.packs_repacked == 0
        && p.packs_deleted == 0
        && p.packs_unindexed == 0
        && p.packs_missing == 0;
    if !nothing_to_do {
        carry_out(repo, &p, &mut report, cancel)?;
    }
    lock.release()?;
    report.plan = p;
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn carry_out(
    repo: &Repo,
    p: &PrunePlan,
    report: &mut PruneReport,
    cancel: &AtomicBool,
) -> Result<()> {
    let stop = || match cancel.load(Ordering::Relaxed) {
        true => Err(Error::Cancelled),
        false => Ok(()),
    };
    let mut new_index: Vec<PackJson> = Vec::new();
    let mut from_other = 0u64;
    let mut builder: [PackBuilder; 2] = Default::default();
    let slot = |k: BlobType| match k {
        BlobType::Data => 0,
        BlobType::Tree => 1,
    };
    // The new packs, in no index until the new index is written.
    let mut written: Vec<Id> = Vec::new();
    let mut write_pack = |b: PackBuilder, new_index: &mut Vec<PackJson>| -> Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        let (id, bytes, entries) = b.finish(&repo.key);
        repo.backend.write(Kind::Pack, &id, &bytes)?;
        written.push(id);
        crate::failpoint::hit("restic.prune_pack_written").map_err(super::io_err(
            "write",
            repo.backend.file_location(Kind::Pack, &id),
        ))?;
        report.packs_written += 1;
        report.bytes_written += bytes.len() as u64;
        new_index.push(PackJson::new(id, &entries));
        Ok(())
    };
    let mut repack = || -> Result<()> {
        for (pack, fate) in &p.fates {
            let keep = &p.keep[pack];
            match fate {
                PackFate::Keep => new_index.push(PackJson::new(*pack, keep)),
                PackFate::Delete => {}
                PackFate::Repack => {
                    let mut keep: Vec<&Entry> = keep.iter().collect();
                    keep.sort_by_key(|e| e.offset);
                    let mut span: Option<Span> = None;
                    // After a span that does not read, the pack's blobs are read one by one.
                    let mut spans = true;
                    for (i, e) in keep.iter().enumerate() {
                        stop()?;
                        if spans && span.as_ref().is_none_or(|s| !s.holds(e)) {
                            span =
                                Span::read(repo, pack, &keep[i..], SPAN_GAP, u64::MAX, false).ok();
                            spans = span.is_some();
                        }
                        let (e, sealed) = match span.as_ref().and_then(|s| s.checked(e)) {
                            Some(sealed) => ((*e).clone(), sealed),
                            None => read_checked(repo, pack, e, &mut from_other)?,
                        };
                        let b = &mut builder[slot(e.kind)];
                        b.add_sealed(&e, &sealed);
                        if super::repo::pack_full(b) {
                            let full = std::mem::take(b);
                            write_pack(full, &mut new_index)?;
                        }
                    }
                }
            }
        }
        for b in std::mem::take(&mut builder) {
            write_pack(b, &mut new_index)?;
        }
        Ok(())
    };
    let repacked = repack();
    if let Err(e) = &repacked
        && matches!(e, Error::Io { source, .. } if crate::fsx::is_disk_full(source))
    {
        // A full file system: the new packs (in no index, under the exclusive lock) are
        // removed again, so that they do not hold the room the next prune needs.
        for id in &written {
            let _ = repo.backend.remove(Kind::Pack, id);
        }
    }
    repacked?;
    report.blobs_from_other_copy = from_other;
    // The last point to stop at with nothing removed; past it the removals finish.
    stop()?;
    // One index for everything kept, in files of at most 50,000 blobs (as the backup
    // writes them); each names the old index files it supersedes.
    for packs in super::repo::index_file_groups(new_index) {
        let f = IndexFile {
            supersedes: p.old_indexes.clone(),
            packs,
        };
        repo.save_json(Kind::Index, &f)?;
    }
    for idx in &p.old_indexes {
        repo.backend.remove(Kind::Index, idx)?;
        report.index_files_removed += 1;
    }
    let gone = p
        .fates
        .iter()
        .filter(|(id, f)| *f != PackFate::Keep && !p.missing.contains(id))
        .map(|(id, _)| id)
        .chain(&p.unindexed);
    for pack in gone {
        repo.backend.remove(Kind::Pack, pack)?;
        report.packs_removed += 1;
    }
    Ok(())
}

/// Kept blobs further apart than this in a pack being repacked are read apart (what
/// lies between is not fetched).
const SPAN_GAP: u64 = 4 << 20;

/// The sealed bytes of the blob `e` of `pack`, checked before they are copied (a
/// damaged blob is not carried on). When that copy does not read or check, the blob's
/// other copies the index knows (`Index::locations`) are tried in turn, with a warning
/// naming the bad pack; the entry returned is the one of the copy read. No copy
/// checks: prune stops, naming the blob, before anything is removed.
fn read_checked(
    repo: &Repo,
    pack: &Id,
    e: &Entry,
    from_other: &mut u64,
) -> Result<(Entry, Vec<u8>)> {
    // Read again before it is called damaged (one garbled read is no damage).
    let read = |loc: &Location| -> Result<Vec<u8>> { Ok(repo.read_blob_at(loc)?.1) };
    let planned = Location {
        pack: *pack,
        entry: e.clone(),
    };
    let mut failed: Vec<(Id, Error)> = match read(&planned) {
        Ok(sealed) => return Ok((e.clone(), sealed)),
        Err(Error::Cancelled) => return Err(Error::Cancelled),
        Err(x) => vec![(*pack, x)],
    };
    let same =
        |l: &Location| l.pack == *pack && l.entry.offset == e.offset && l.entry.length == e.length;
    for loc in repo.index.locations(e.kind, &e.id) {
        if same(&loc) || failed.iter().any(|(p, _)| *p == loc.pack) {
            continue;
        }
        let (bad, x) = failed.last().expect("the planned copy's failure");
        tracing::warn!(
            "{:?} blob {}: its copy in pack {} cannot be used ({x}); copying its copy in \
             pack {} instead (`snapring repair index --read-data` leaves the bad copy out)",
            e.kind,
            e.id,
            repo.backend.file_location(Kind::Pack, bad),
            repo.backend.file_location(Kind::Pack, &loc.pack),
        );
        match read(&loc) {
            Ok(sealed) => {
                *from_other += 1;
                return Ok((loc.entry, sealed));
            }
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            Err(x) => failed.push((loc.pack, x)),
        }
    }
    let all: Vec<String> = failed
        .iter()
        .map(|(p, x)| format!("pack {p}: {x}"))
        .collect();
    Err(corrupt(
        format!("{:?} blob {}", e.kind, e.id),
        format!(
            "no copy of it reads and checks ({}); prune stops with nothing removed \
             (`snapring repair index --read-data` leaves the damaged copies out and names \
             the snapshots that reference the blob: the next backup stores it again, or \
             `snapring forget --dest URL ID...` forgets them; then prune)",
            all.join("; ")
        ),
    ))
}
