//! `snapring repair index --dest …`: rebuilds the index from the packs that are really
//! in `data/` (restic's `repair index`), so a lost or damaged pack stops being counted
//! on: the next backup reads again every file whose blobs it held (`backup`'s unchanged
//! files keep their blob list only while every blob is indexed) and stores them anew,
//! and `prune` runs again. Under the exclusive lock: the index files are read (one
//! that does not read is left out; its packs are found in `data/`), `data/` is listed
//! with sizes; an indexed pack of the size its entries imply keeps its entries unread;
//! the header of every other pack there (not indexed, or of another size) is read and
//! its blobs added, or the pack is left out if the header does not read or does not
//! match its size (the next `prune` deletes it, as any pack no index names); indexed
//! packs that are gone are left out. With `read_data` every pack is read whole and
//! every blob decrypted and hashed; a pack with a blob that does not check is never
//! indexed in part (restic's `repair packs`): its good blobs are copied as they are
//! sealed into a new pack, which is indexed instead, and the damaged pack is deleted
//! once the new index is in place (so the next backup stores the damaged blob again
//! rather than deduplicating against it, and no later repair finds the damaged pack
//! unindexed and adds it back whole). An indexed pack whose header does not read has
//! the blobs its index entries name checked where they say (with `read_data` in the
//! same bytes, the pack not downloaded again): those that check are salvaged the same
//! way; none: the pack is left out, its blobs counted damaged. The new packs are written first, then the new
//! index files, then the old ones removed, then the damaged packs: a crash between
//! leaves both index files, which restic accepts (a blob named twice). The cancel flag
//! stops it before the new index is written, with the index unchanged (new packs
//! already written are in no index: the next prune deletes them). Then every snapshot's trees
//! are walked against the new index to tell which snapshots reference data no pack
//! holds. Does I/O through `repo`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use super::backend::Kind;
use super::crypto::OVERHEAD;
use super::index::{Index, IndexFile, PackJson};
use super::pack::{BlobType, Entry, PackBuilder, open_blob, read_header};
use super::repo::Repo;
use super::snapshot;
use super::{Error, Id, Result};

/// Packs whose header is read at once (each one or two ranged reads; on S3 a round
/// trip each).
const HEADER_READS: usize = 8;
/// Packs read whole at once with `read_data` (each held in memory while checked).
const PACK_READS: usize = 4;
/// Bytes read from a pack's end for its header in one go: the header of a pack of up
/// to about 1,500 blobs; a bigger one takes a second read.
const TAIL: u64 = 64 * 1024;

/// What `repair index` did.
#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    /// Whether every pack was read whole and every blob checked (`--read-data`).
    pub read_data: bool,
    /// Index files read, and those that did not read (their packs found in `data/`).
    pub index_files_read: u64,
    pub index_files_unreadable: u64,
    /// Packs in `data/`.
    pub packs_listed: u64,
    /// Indexed packs of the size their entries imply, kept as indexed (unread).
    pub packs_kept: u64,
    /// Packs no index named, their headers read and their blobs added.
    pub packs_added: u64,
    /// Indexed packs of another size than their entries imply, or (with `read_data`)
    /// whose header differs from their entries: their headers read, taken as they say.
    pub packs_reread: u64,
    /// Indexed packs gone from `data/`: left out.
    pub packs_missing: u64,
    /// Packs whose header does not read or does not match their size: left out (the
    /// next `prune` deletes them).
    pub packs_unreadable: u64,
    pub unreadable: Vec<String>,
    pub missing: Vec<String>,
    /// Blobs (with `read_data`) that do not decrypt or hash to their id: left out.
    pub blobs_damaged: u64,
    /// Packs (with `read_data`) with damaged blobs: their good blobs copied into new
    /// packs (`packs_written`), indexed instead; the damaged packs deleted once the new
    /// index is in place (`packs_removed`).
    pub packs_salvaged: u64,
    pub salvaged: Vec<String>,
    pub packs_written: u64,
    pub packs_removed: u64,
    /// Blobs the old index named that no pack of the new one holds.
    pub blobs_lost: u64,
    /// Blobs in the new index.
    pub blobs_indexed: u64,
    /// Whether a new index was written (not when it would say what the old one says).
    pub index_rewritten: bool,
    pub index_files_written: u64,
    pub index_files_removed: u64,
    /// Whether every snapshot's trees were walked against the new index (not when
    /// interrupted after the index was written).
    pub snapshots_checked: bool,
    pub snapshots: u64,
    /// Snapshot files that do not read (do not decrypt or parse): left out of the
    /// check, and counted as damage (exit 2).
    pub unreadable_snapshots: Vec<String>,
    /// The snapshots that reference a blob no pack holds (or a tree that does not
    /// read), oldest first.
    pub damaged_snapshots: Vec<DamagedSnapshot>,
    /// Distinct blobs the snapshots reference that no pack holds.
    pub missing_data_blobs: u64,
    pub missing_tree_blobs: u64,
    pub duration_seconds: f64,
}

/// A snapshot that references data no pack holds.
#[derive(Debug, Serialize)]
pub struct DamagedSnapshot {
    pub snapshot: String,
    pub id: String,
    pub time: String,
    pub hostname: String,
    pub paths: Vec<String>,
}

/// What became of one pack in `data/`.
enum Fate {
    /// Its index entries (`None`: as indexed, unread; `Some`: its blobs that checked).
    Kept(Option<Vec<Entry>>),
    Added(Vec<Entry>),
    Reread(Vec<Entry>),
    /// A pack with damaged blobs: the new packs its good blobs were copied into.
    Salvaged(Vec<(Id, Vec<Entry>)>),
    Unreadable(String),
}

/// The size of a pack holding `entries` (restic's `pack.CalculateHeaderSize` plus the
/// blobs): the blobs, the sealed header of 37 bytes per entry (41 compressed), and the
/// header's 4-byte length.
pub fn implied_size(entries: &[Entry]) -> u64 {
    let blobs: u64 = entries.iter().map(|e| e.length as u64).sum();
    let header: u64 = entries
        .iter()
        .map(|e| {
            37 + if e.uncompressed_length.is_some() {
                4
            } else {
                0
            }
        })
        .sum();
    blobs + OVERHEAD as u64 + header + 4
}

/// A pack's read that leaves the pack out of the index: it does not decrypt or parse,
/// or it is gone since the listing. Any other error (a disk or a server failing) stops
/// the repair: a good pack left out would be deleted by the next prune.
fn unreadable(e: &Error) -> bool {
    match e {
        // A server's 404 (or a read cut short: the object replaced by a shorter one)
        // is the same loss as a local file gone.
        Error::Corrupt { .. } | Error::Missing(_) => true,
        Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// The header of the pack `id` of `size` bytes, checked against the size.
pub(crate) fn read_pack_header(repo: &Repo, id: &Id, size: u64) -> Result<Vec<Entry>> {
    read_pack_header_tail(repo, id, size, TAIL)
}

/// [`read_pack_header`], its first read the last `tail` bytes of the pack (at least
/// the header's sealed overhead and length; a header longer than that takes a second
/// read of exactly the header): `verify` passes the bytes after the pack's last
/// indexed blob, which is the header of a pack the index describes whole.
pub(crate) fn read_pack_header_tail(
    repo: &Repo,
    id: &Id,
    size: u64,
    tail: u64,
) -> Result<Vec<Entry>> {
    let what = format!("pack {}", repo.backend.file_location(Kind::Pack, id));
    if size < (4 + OVERHEAD) as u64 {
        return Err(super::corrupt(
            &what,
            format!("{size} bytes is too short for a pack"),
        ));
    }
    // Tests: the header's read answering EIO (verify: the pack not checked).
    if crate::failpoint::hit("restic.pack_header_read").is_err() {
        return Err(super::io_err(
            "read",
            repo.backend.file_location(Kind::Pack, id),
        )(std::io::Error::from_raw_os_error(
            rustix::io::Errno::IO.raw_os_error(),
        )));
    }
    // Capped at TAIL: an index describing a pack only in part (an index file that did
    // not read) would otherwise make the first read most of the pack (review of
    // reader-50); a longer header takes the second read below.
    let tail_len = size.min(tail.clamp((4 + OVERHEAD) as u64, TAIL));
    let mut tail = repo
        .backend
        .read_range(id, size - tail_len, tail_len as usize)?;
    let n = u32::from_le_bytes(tail[tail.len() - 4..].try_into().expect("4 bytes")) as u64;
    if n + 4 > size {
        return Err(super::corrupt(
            &what,
            format!("header length {n} beyond the pack's {size} bytes"),
        ));
    }
    if n + 4 > tail_len {
        tail = repo
            .backend
            .read_range(id, size - n - 4, (n + 4) as usize)?;
    }
    let entries = read_header(&repo.key, &tail, &what)?;
    check_size(&entries, size, &what)?;
    Ok(entries)
}

/// A header that does not describe a pack of `size` bytes is not taken.
fn check_size(entries: &[Entry], size: u64, what: &str) -> Result<()> {
    let implied = implied_size(entries);
    if implied != size {
        return Err(super::corrupt(
            what,
            format!("its header describes {implied} bytes, the pack has {size}"),
        ));
    }
    Ok(())
}

/// Whether two lists name the same blobs at the same places, in any order (restic's
/// index lists a pack's blobs in another order than its header).
fn same_entries(a: &[Entry], b: &[Entry]) -> bool {
    let key = |e: &Entry| {
        (
            e.offset,
            e.length,
            e.id,
            e.uncompressed_length,
            e.kind == BlobType::Tree,
        )
    };
    let sorted = |x: &[Entry]| {
        let mut v: Vec<_> = x.iter().map(key).collect();
        v.sort();
        v
    };
    a.len() == b.len() && sorted(a) == sorted(b)
}

/// The pack `id` read whole: its bytes, and either its header and the entries whose
/// blobs check, or why its header does not read with the indexed entries (of
/// `indexed`) whose blobs check at their indexed places.
type WholePack = (
    Vec<u8>,
    std::result::Result<(Vec<Entry>, Vec<Entry>), (Error, Vec<Entry>)>,
);

/// What one read of a whole pack says: [`check_whole_pack`]'s verdict, or why the header
/// does not read and the indexed entries whose blobs check.
type PackCheck = std::result::Result<(Vec<Entry>, Vec<Entry>, Vec<String>), (Error, Vec<Entry>)>;

/// The pack `id` read whole, by the rule every reader follows
/// ([`super::reread::read_checked`]): a read that does not check (a header that does not
/// open, a blob whose MAC fails) is read again; the pack is damaged only once two reads
/// give the same bytes (damage at rest); a pack that reads differently each time stops
/// the repair, as a failing disk or server does, rather than salvage a healthy pack from
/// one garbled read (its original deleted) or leave it out of the index. A pack whose
/// header does not read has its `indexed` entries checked in the same bytes, which
/// [`salvage_from`] salvages: the pack is downloaded once (two reads when damaged, as
/// the rule wants), where until session 50 it was downloaded again to salvage it.
fn read_whole_pack(
    repo: &Repo,
    id: &Id,
    size: u64,
    indexed: Option<&[Entry]>,
) -> Result<WholePack> {
    use super::reread::{Outcome, READ_TRIES, read_checked};
    let what = format!("pack {}", repo.backend.file_location(Kind::Pack, id));
    let check = |bytes: &[u8]| -> PackCheck {
        check_whole_pack(repo, &what, bytes, size).map_err(|e| {
            (
                e,
                indexed.map_or_else(Vec::new, |ix| good_at(repo, &what, bytes, ix)),
            )
        })
    };
    let (bytes, checked, outcome) = read_checked(
        &|| what.clone(),
        "restic.repair_pack_garbled",
        || repo.backend.read(Kind::Pack, id),
        check,
        |c| matches!(c, Ok((header, good, _)) if header.len() == good.len()),
    )?;
    match outcome {
        Outcome::Whole { .. } | Outcome::Damaged => match checked {
            Ok((header, good, bad)) => {
                for x in bad {
                    tracing::warn!("{what}: {x}; left out of the index");
                }
                Ok((bytes, Ok((header, good))))
            }
            Err(x) => Ok((bytes, Err(x))),
        },
        Outcome::Garbled => Err(Error::Other(format!(
            "{what} read differently each of {READ_TRIES} times, never whole: the storage or \
             the network garbles reads ({}); the repair stopped, nothing changed",
            match &checked {
                Err((e, _)) => e.to_string(),
                Ok((_, _, bad)) => bad.join("; "),
            }
        ))),
    }
}

/// The entries of `indexed` whose blobs check at their places in `bytes` (the pack
/// `what`).
fn good_at(repo: &Repo, what: &str, bytes: &[u8], indexed: &[Entry]) -> Vec<Entry> {
    indexed
        .iter()
        .filter(|e| {
            blob_bytes(bytes, e, what)
                .and_then(|sealed| open_blob(&repo.key, sealed, e))
                .is_ok()
        })
        .cloned()
        .collect()
}

/// A pack's `bytes` checked: its header, the entries whose blobs open, and why the
/// others do not.
fn check_whole_pack(
    repo: &Repo,
    what: &str,
    bytes: &[u8],
    size: u64,
) -> Result<(Vec<Entry>, Vec<Entry>, Vec<String>)> {
    let header = read_header(&repo.key, bytes, what)?;
    check_size(&header, bytes.len() as u64, what)?;
    if bytes.len() as u64 != size {
        tracing::warn!("{what}: {size} bytes listed, {} read", bytes.len());
    }
    let mut good = Vec::with_capacity(header.len());
    let mut bad = Vec::new();
    for e in &header {
        let sealed = blob_bytes(bytes, e, what)?;
        match open_blob(&repo.key, sealed, e) {
            Ok(_) => good.push(e.clone()),
            Err(x) => bad.push(x.to_string()),
        }
    }
    Ok((header, good, bad))
}

/// The sealed bytes of the blob `e` in the pack `bytes` (`what`), in `usize`: a
/// crafted header's offset and length do not overflow `u32` here, and a blob past the
/// pack's end is an error naming the pack, not a panic.
fn blob_bytes<'a>(bytes: &'a [u8], e: &Entry, what: &str) -> Result<&'a [u8]> {
    let (start, len) = (e.offset as usize, e.length as usize);
    start
        .checked_add(len)
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(|| {
            super::corrupt(
                what,
                format!(
                    "its header places blob {} at {start}+{len}, past its {} bytes",
                    e.id,
                    bytes.len()
                ),
            )
        })
}

/// The blobs `good` of a damaged pack (`bytes`) copied as they are sealed into new
/// packs, one blob type to a pack, as `prune` repacks: the new packs and their entries.
fn salvage(repo: &Repo, bytes: &[u8], good: &[Entry]) -> Result<Vec<(Id, Vec<Entry>)>> {
    let mut out = Vec::new();
    let mut builders: [PackBuilder; 2] = Default::default();
    let mut write = |b: PackBuilder| -> Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        let (id, bytes, entries) = b.finish(&repo.key);
        repo.backend.write_vec(Kind::Pack, &id, bytes)?;
        out.push((id, entries));
        Ok(())
    };
    for e in good {
        let b = &mut builders[(e.kind == BlobType::Tree) as usize];
        b.add_sealed(e, blob_bytes(bytes, e, "the pack salvaged")?);
        if super::repo::pack_full(b) {
            write(std::mem::take(b))?;
        }
    }
    for b in builders {
        write(b)?;
    }
    Ok(out)
}

/// An indexed pack whose header does not read or does not match its size (`why`: a
/// pack cut short at its end, its header damaged): its blobs at the places the index
/// gives are read and each hashed; those that check are salvaged as a damaged pack's
/// good blobs are (copied into new packs, indexed instead, the pack deleted once the
/// new index is in place), the others left out. Without this a pack whose blobs all
/// read was dropped whole, and a restorable snapshot became damaged. The pack read by
/// the rule every reader follows (a read whose blobs do not all check is read again).
/// Returns the fate and the blobs left out.
fn salvage_indexed(repo: &Repo, id: &Id, indexed: &[Entry], why: Error) -> Result<(Fate, usize)> {
    use super::reread::{Outcome, READ_TRIES, read_checked};
    let what = format!("pack {}", repo.backend.file_location(Kind::Pack, id));
    let check = |bytes: &[u8]| good_at(repo, &what, bytes, indexed);
    let got = read_checked(
        &|| what.clone(),
        "restic.repair_pack_garbled",
        || repo.backend.read(Kind::Pack, id),
        check,
        |good| good.len() == indexed.len(),
    );
    let (bytes, good) = match got {
        Ok((_, _, Outcome::Garbled)) => {
            return Err(Error::Other(format!(
                "{what} read differently each of {READ_TRIES} times: the storage or the \
                 network garbles reads ({why}); the repair stopped, nothing changed"
            )));
        }
        Ok((bytes, good, _)) => (bytes, good),
        Err(e) if unreadable(&e) => return Ok((Fate::Unreadable(why.to_string()), 0)),
        Err(e) => return Err(e),
    };
    salvage_from(repo, indexed, &why, &bytes, good)
}

/// The blobs `good` of `indexed` that check in the pack's `bytes` (whose header does not
/// read: `why`) salvaged; none: the pack is left out. Returns its fate and the indexed
/// blobs left out (damaged: they were read and do not check).
fn salvage_from(
    repo: &Repo,
    indexed: &[Entry],
    why: &Error,
    bytes: &[u8],
    good: Vec<Entry>,
) -> Result<(Fate, usize)> {
    if good.is_empty() {
        return Ok((
            Fate::Unreadable(format!(
                "{why}; none of its {} indexed blobs checks at its indexed place",
                indexed.len()
            )),
            indexed.len(),
        ));
    }
    tracing::warn!(
        "{why}; {} of its {} indexed blobs check at their indexed places and are salvaged",
        good.len(),
        indexed.len()
    );
    let lost = indexed.len() - good.len();
    Ok((Fate::Salvaged(salvage(repo, bytes, &good)?), lost))
}

/// Rebuilds the index of `repo` from its packs (see the module's notes). `cancel` set
/// stops it with [`Error::Cancelled`] before the new index is written; set later, it
/// ends the snapshots' check (`snapshots_checked` false). `writing` is set once the
/// first new index file is about to be written: an error from then on may leave new
/// index files beside the old ones (and a cancel no longer leaves the index as it was).
pub fn repair_index(
    repo: &mut Repo,
    read_data: bool,
    cancel: &AtomicBool,
    writing: &AtomicBool,
) -> Result<RepairReport> {
    let started = std::time::Instant::now();
    repo.check_writable()?;
    let lock = super::lock::acquire(repo, true)?;
    let r = repair_locked(repo, read_data, cancel, writing, &lock);
    let released = lock.release();
    let mut r = r?;
    released?;
    r.duration_seconds = started.elapsed().as_secs_f64();
    Ok(r)
}

fn repair_locked(
    repo: &mut Repo,
    read_data: bool,
    cancel: &AtomicBool,
    writing: &AtomicBool,
    lock: &super::lock::Guard,
) -> Result<RepairReport> {
    let stop = || match cancel.load(Ordering::Relaxed) {
        true => Err(Error::Cancelled),
        false => Ok(()),
    };
    let mut r = RepairReport {
        read_data,
        ..Default::default()
    };
    // 1. The old index: each pack's entries as first named.
    let old_files = repo.backend.list(Kind::Index)?;
    let mut indexed: HashMap<Id, Vec<Entry>> = HashMap::new();
    let mut order: Vec<Id> = Vec::new();
    for idx in &old_files {
        stop()?;
        let f: IndexFile = match repo.load_json(Kind::Index, idx) {
            Ok(f) => f,
            Err(e @ Error::Corrupt { .. }) => {
                tracing::warn!("{e}: left out; its packs are read from data/");
                r.index_files_unreadable += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        r.index_files_read += 1;
        for p in f.packs {
            if indexed.contains_key(&p.id) {
                continue;
            }
            let entries = p.entries();
            order.push(p.id);
            indexed.insert(p.id, entries);
        }
    }
    // 2. What is in data/, and what each pack becomes.
    let listed = repo.backend.list_sizes(Kind::Pack)?;
    r.packs_listed = listed.len() as u64;
    // Tests: a pack deleted between the listing and its read.
    crate::failpoint::hit("restic.repair_packs_listed").map_err(super::io_err(
        "read",
        format!("{}/data", repo.backend.location()),
    ))?;
    let present: HashSet<Id> = listed.iter().map(|(id, _)| *id).collect();
    for id in &order {
        if !present.contains(id) {
            tracing::warn!(
                "pack {} is named by the index but gone; left out of the new index",
                repo.backend.file_location(Kind::Pack, id)
            );
            r.packs_missing += 1;
            r.missing.push(id.hex());
        }
    }
    let repo_ro = &*repo;
    let fates: Vec<Result<Fate>> = if read_data {
        crate::util::par_map(PACK_READS, &listed, |(id, size)| {
            stop()?;
            match read_whole_pack(repo_ro, id, *size, indexed.get(id).map(Vec::as_slice)) {
                Ok((bytes, Ok((header, good)))) => {
                    let damaged = header.len() - good.len();
                    let fate = match indexed.get(id) {
                        // Never indexed in part: a later repair would find the pack
                        // of another size than its entries and add it back whole.
                        _ if damaged > 0 => Fate::Salvaged(salvage(repo_ro, &bytes, &good)?),
                        None => Fate::Added(good),
                        Some(e) if same_entries(e, &header) => Fate::Kept(Some(good)),
                        Some(_) => Fate::Reread(good),
                    };
                    Ok((fate, damaged))
                }
                // The header does not read: the indexed blobs that check in the same
                // bytes are salvaged (the pack not downloaded again).
                Ok((bytes, Err((e, good)))) => match indexed.get(id) {
                    Some(ix) => salvage_from(repo_ro, ix, &e, &bytes, good),
                    None => Ok((Fate::Unreadable(e.to_string()), 0)),
                },
                // Gone since the listing: nothing to salvage from.
                Err(e) if unreadable(&e) => Ok((Fate::Unreadable(e.to_string()), 0)),
                Err(e) => Err(e),
            }
        })
        .into_iter()
        .map(|x| {
            x.map(|(f, damaged)| {
                r.blobs_damaged += damaged as u64;
                f
            })
        })
        .collect()
    } else {
        let blobs_damaged = std::sync::atomic::AtomicU64::new(0);
        let fates = crate::util::par_map(HEADER_READS, &listed, |(id, size)| {
            if let Some(e) = indexed.get(id)
                && implied_size(e) == *size
            {
                return Ok(Fate::Kept(None));
            }
            stop()?;
            match read_pack_header(repo_ro, id, *size) {
                Ok(h) if indexed.contains_key(id) => Ok(Fate::Reread(h)),
                Ok(h) => Ok(Fate::Added(h)),
                Err(e) if unreadable(&e) => match indexed.get(id) {
                    Some(ix) => salvage_indexed(repo_ro, id, ix, e).map(|(f, damaged)| {
                        blobs_damaged.fetch_add(damaged as u64, Ordering::Relaxed);
                        f
                    }),
                    None => Ok(Fate::Unreadable(e.to_string())),
                },
                Err(e) => Err(e),
            }
        });
        r.blobs_damaged += blobs_damaged.into_inner();
        fates
    };
    // 3. The new index.
    let mut new_packs: Vec<PackJson> = Vec::new();
    // Indexed packs left out as unreadable (one in no index changes nothing).
    let mut dropped_indexed = 0u64;
    // Packs with damaged blobs, deleted once the new index no longer names them.
    let mut damaged_packs: Vec<Id> = Vec::new();
    for ((id, _), fate) in listed.iter().zip(fates) {
        let entries = match fate? {
            // As indexed: its old entries are the new ones (and none of them is lost).
            Fate::Kept(None) => {
                r.packs_kept += 1;
                indexed.remove(id).expect("a kept pack is indexed")
            }
            Fate::Kept(Some(e)) => {
                r.packs_kept += 1;
                if indexed.get(id).is_some_and(|old| same_entries(old, &e)) {
                    indexed.remove(id);
                }
                e
            }
            Fate::Added(e) => {
                tracing::warn!(
                    "pack {} is in no index; its blobs are added",
                    repo.backend.file_location(Kind::Pack, id)
                );
                r.packs_added += 1;
                e
            }
            Fate::Reread(e) => {
                tracing::warn!(
                    "pack {} differs from its index entries; taken as its header says",
                    repo.backend.file_location(Kind::Pack, id)
                );
                r.packs_reread += 1;
                e
            }
            Fate::Salvaged(new) => {
                tracing::warn!(
                    "pack {} has damaged blobs; its {} good blobs are copied into {} new \
                     packs, indexed instead, and the pack is deleted",
                    repo.backend.file_location(Kind::Pack, id),
                    new.iter().map(|(_, e)| e.len()).sum::<usize>(),
                    new.len()
                );
                r.packs_salvaged += 1;
                r.salvaged.push(id.hex());
                r.packs_written += new.len() as u64;
                damaged_packs.push(*id);
                new_packs.extend(new.iter().map(|(p, e)| PackJson::new(*p, e)));
                continue;
            }
            Fate::Unreadable(why) => {
                if indexed.contains_key(id) {
                    dropped_indexed += 1;
                }
                tracing::warn!(
                    "{why}; left out of the new index (the next prune deletes the pack)"
                );
                r.packs_unreadable += 1;
                r.unreadable.push(id.hex());
                continue;
            }
        };
        if !entries.is_empty() {
            new_packs.push(PackJson::new(*id, &entries));
        }
    }
    let mut index = Index::default();
    for p in &new_packs {
        let entries: Vec<Entry> = p.entries();
        index.add_pack(p.id, &entries);
    }
    r.blobs_indexed = index.len() as u64;
    // Only the old entries of packs not kept as they were are left to look at.
    let mut lost: HashSet<(BlobType, Id)> = HashSet::new();
    for e in indexed.values().flatten() {
        if !index.contains(e.kind, &e.id) {
            lost.insert((e.kind, e.id));
        }
    }
    r.blobs_lost = lost.len() as u64;
    // 4. Written, then the old files removed; nothing to write when the index would
    // say what it said (every indexed pack kept as it was, every index file read).
    let changed = r.packs_added
        + r.packs_reread
        + r.packs_missing
        + dropped_indexed
        + r.blobs_damaged
        + r.packs_salvaged
        + r.index_files_unreadable
        > 0;
    // A SIGTERM here (the tests pause here) stops it with nothing changed.
    crate::failpoint::hit("restic.repair_index_before_write").map_err(super::io_err(
        "write",
        format!("{}/index", repo.backend.location()),
    ))?;
    // The last point to stop at with nothing changed.
    stop()?;
    if changed {
        lock.check()?;
        writing.store(true, Ordering::Relaxed);
        r.index_rewritten = true;
        for f in new_index_files(new_packs, &old_files) {
            repo.save_json(Kind::Index, &f)?;
            r.index_files_written += 1;
        }
        crate::failpoint::hit("restic.repair_index_written").map_err(super::io_err(
            "write",
            format!("{}/index", repo.backend.location()),
        ))?;
        // Still ours (not taken over as stale while the new index was written): the
        // old files go only under the lock.
        lock.check()?;
        // A new file never has an old one's id: each is sealed with a fresh IV.
        for idx in &old_files {
            repo.backend.remove(Kind::Index, idx)?;
            r.index_files_removed += 1;
        }
        // No index names them now; their good blobs are in the new packs.
        for id in &damaged_packs {
            repo.backend.remove(Kind::Pack, id)?;
            r.packs_removed += 1;
        }
    }
    repo.index = index;
    // 5. Which snapshots reference what no pack holds.
    check_snapshots(repo, &mut r, cancel)?;
    Ok(r)
}

/// The new index files for `packs`, of at most 50,000 blobs each; the last names the
/// old files in `supersedes`. Only the last: with 10^5 old files (a shard run writes
/// one per unit) a copy in each new file would be megabytes every later load parses,
/// and restic takes the field from any one file (its own `MasterIndex.Save` adds the
/// old files to the index file being filled when it reads them, and any extra ones to
/// the last).
fn new_index_files(packs: Vec<PackJson>, old_files: &[Id]) -> Vec<IndexFile> {
    let groups = super::repo::index_file_groups(packs);
    let last = groups.len().saturating_sub(1);
    groups
        .into_iter()
        .enumerate()
        .map(|(i, packs)| IndexFile {
            supersedes: if i == last {
                old_files.to_vec()
            } else {
                Vec::new()
            },
            packs,
        })
        .collect()
}

/// Walks every readable snapshot's trees against `repo.index`; a tree is walked once.
fn check_snapshots(repo: &Repo, r: &mut RepairReport, cancel: &AtomicBool) -> Result<()> {
    // As `snapshot::load_readable`, but a file that does not read is counted: it is
    // damage the repair does not mend.
    let mut snaps: Vec<(Id, snapshot::Snapshot)> = Vec::new();
    for id in repo.backend.list(Kind::Snapshot)? {
        match repo.load_json::<snapshot::Snapshot>(Kind::Snapshot, &id) {
            Ok(s) => snaps.push((id, s)),
            Err(e @ Error::Corrupt { .. }) => {
                tracing::warn!("snapshot {} does not read: {e}", &id.hex()[..8]);
                r.unreadable_snapshots.push(id.hex());
            }
            Err(e) => return Err(e),
        }
    }
    snaps.sort_by_key(|(id, s)| (s.unix_time(), *id));
    r.snapshots = snaps.len() as u64;
    let mut memo: HashMap<Id, bool> = HashMap::new();
    let mut missing_data: HashSet<Id> = HashSet::new();
    let mut missing_trees: HashSet<Id> = HashSet::new();
    for (id, s) in &snaps {
        let bad = match damaged(
            repo,
            s.tree,
            &mut memo,
            &mut missing_data,
            &mut missing_trees,
            cancel,
        ) {
            Ok(b) => b,
            Err(Error::Cancelled) => {
                // Those found so far are not all: none is named.
                r.snapshots_checked = false;
                r.damaged_snapshots.clear();
                return Ok(());
            }
            Err(e) => {
                return Err(Error::Other(format!(
                    "{e}; the check of the snapshots against the new index stopped ({}); \
                     `snapring verify --all` tells which snapshots are damaged",
                    if r.index_rewritten {
                        "the index is rebuilt"
                    } else {
                        "the index needed no change"
                    }
                )));
            }
        };
        if bad {
            r.damaged_snapshots.push(DamagedSnapshot {
                snapshot: id.hex()[..8].to_string(),
                id: id.hex(),
                time: s.time.clone(),
                hostname: s.hostname.clone(),
                paths: s.paths.clone(),
            });
        }
    }
    r.snapshots_checked = true;
    r.missing_data_blobs = missing_data.len() as u64;
    r.missing_tree_blobs = missing_trees.len() as u64;
    Ok(())
}

/// Whether the tree `id` or anything under it is a blob no pack holds (or a tree that
/// is damaged: it does not decrypt, check or parse). Any other error reading a tree
/// (a server failing past the retries) is returned, as `verify::walk` does. Recursion
/// as deep as the directories are.
fn damaged(
    repo: &Repo,
    id: Id,
    memo: &mut HashMap<Id, bool>,
    missing_data: &mut HashSet<Id>,
    missing_trees: &mut HashSet<Id>,
    cancel: &AtomicBool,
) -> Result<bool> {
    if let Some(&b) = memo.get(&id) {
        return Ok(b);
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    let tree = if repo.index.contains(BlobType::Tree, &id) {
        match repo.read_tree(&id) {
            Ok(t) => Some(t),
            // Damage, as a pack's read is (`unreadable`): it does not decrypt, check or
            // parse, or its pack is gone.
            Err(e) if unreadable(&e) => {
                tracing::warn!("tree {id} does not read: {e}");
                None
            }
            // A server or disk failing (past the retries) says nothing of the tree:
            // the check stops rather than name snapshots damaged that may be whole.
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let Some(tree) = tree else {
        missing_trees.insert(id);
        memo.insert(id, true);
        return Ok(true);
    };
    let mut bad = false;
    for n in &tree.nodes {
        for c in n.content.iter().flatten() {
            if !repo.index.contains(BlobType::Data, c) {
                missing_data.insert(*c);
                bad = true;
            }
        }
        if let Some(sub) = n.subtree {
            bad |= damaged(repo, sub, memo, missing_data, missing_trees, cancel)?;
        }
    }
    memo.insert(id, bad);
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restic::crypto::Key;
    use crate::restic::pack::PackBuilder;

    /// Of several new index files only the last names the old ones it supersedes.
    #[test]
    fn only_the_last_new_index_file_names_the_old_ones() {
        let pack = |n: u32| {
            let entries: Vec<Entry> = (0..30_000u32)
                .map(|i| Entry {
                    kind: BlobType::Data,
                    id: Id::hash(&[n.to_le_bytes(), i.to_le_bytes()].concat()),
                    offset: i * 10,
                    length: 10,
                    uncompressed_length: None,
                })
                .collect();
            PackJson::new(Id::hash(&n.to_le_bytes()), &entries)
        };
        let old: Vec<Id> = (0..3u8).map(|i| Id::hash(&[i])).collect();
        let files = new_index_files(vec![pack(1), pack(2), pack(3)], &old);
        assert_eq!(files.len(), 3);
        assert!(files[..2].iter().all(|f| f.supersedes.is_empty()));
        assert_eq!(files[2].supersedes, old);
    }

    /// The size implied by a pack's entries is the size of the pack built from them.
    #[test]
    fn implied_size_is_the_built_packs_size() {
        let key = Key::random();
        let mut b = PackBuilder::default();
        b.add(&key, BlobType::Data, Id::hash(&[b'a'; 5000]), &[b'a'; 5000]);
        let noise: Vec<u8> = (0..3000u32).map(|i| (i * 7919 % 251) as u8).collect();
        b.add(&key, BlobType::Tree, Id::hash(&noise), &noise);
        b.add(&key, BlobType::Data, Id::hash(b""), b"");
        let (_, bytes, entries) = b.finish(&key);
        assert!(entries.iter().any(|e| e.uncompressed_length.is_some()));
        assert!(entries.iter().any(|e| e.uncompressed_length.is_none()));
        assert_eq!(implied_size(&entries), bytes.len() as u64);
    }

    /// A header entry whose offset and length overflow `u32` (crafted) is an error
    /// naming the pack, not a panic (`e.offset + e.length` in u32) or a wrong slice.
    #[test]
    fn a_blob_placed_past_u32_or_the_pack_is_an_error_naming_it() {
        let bytes = vec![0u8; 100];
        let e = Entry {
            kind: BlobType::Data,
            id: Id::hash(b"x"),
            offset: u32::MAX - 4,
            length: 10,
            uncompressed_length: None,
        };
        let err = blob_bytes(&bytes, &e, "pack data/ab/abcd").unwrap_err();
        assert!(err.to_string().contains("pack data/ab/abcd"), "{err}");
        let inside = Entry {
            offset: 10,
            length: 20,
            ..e
        };
        assert_eq!(blob_bytes(&bytes, &inside, "p").unwrap().len(), 20);
    }
}
