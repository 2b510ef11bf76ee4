//! Taking over an interrupted run's staging tree in place (resume without re-reading).
//!
//! A run cut by its window or a signal leaves `.snapring/staging/<id>`. The next run
//! renames that tree to its own staging name and builds its snapshot in it: a file the
//! cut run finished stays where it is, with no call at all when its source still
//! matches, instead of being hashed again and linked into a fresh tree (which cost
//! about as much as copying a small file, so windows on a slow store lost ground).
//!
//! What a file in the tree holds is known from `manifests/<id>.done`, written when a
//! run is cut (`TreeSink::abandon`): for each file a run of that tree finished copying
//! (and that no later run of the tree touched since), its hash, the source's metadata
//! it was copied with, its xattr digest, and the time before which the source must
//! have last changed (its ctime) for the copy to still be its content (that run's
//! start less the racy margin). A name a run touches (replaces, removes) leaves the
//! record at once, in memory. The record is streamed to `<id>.done.tmp` as copies
//! finish (through a buffer), and completed at the end: a run killed (SIGKILL) leaves
//! the header written when it began plus whatever entries reached the file, possibly
//! many. Files the record does not name are checked as a resume from a separate tree
//! always was: their own metadata (set last, so only a finished copy matches), xattrs
//! and hash, against `oldest`, the start of the first run that wrote into the tree.
//!
//! An entry says a copy was finished, not that it is on disk: until the file system
//! is flushed, a power cut can lose a copy's data (ext4's delayed allocation brings
//! it back empty, a sparse copy full-size and zero-filled) and keep the record. So a
//! cut run flushes its staging tree (`syncfs`) before it writes the record's end
//! mark ([`SYNCED`]), and a reader trusts the entries only of a record with that mark,
//! or of one written in this boot of this host (the copies are then at least in the
//! page cache): [`Record::untrusted`]. Of any other record (a run killed, then the
//! machine restarted; an older version) only `oldest` is kept, and its files are
//! checked one by one.

use std::collections::HashMap;
use std::path::Path;

use crate::fsx::{self, Meta, Time};

// Version 2 adds the source's inode number (version 1 records are not read: their
// files are checked one by one). Version 3 adds the writer's host and boot, and the
// end mark [`SYNCED`]; of a version 2 record only `oldest` is read (its copies may
// never have been flushed).
const MAGIC: &[u8] = b"SNAPRING-DONE-3\n";
const MAGIC_2: &[u8] = b"SNAPRING-DONE-2\n";

/// In place of an entry's path length: the end of the record, written after the
/// staging tree was flushed to disk (`syncfs`), so every copy it names is durable.
pub const SYNCED: u32 = u32::MAX;

/// A finished copy in an adopted tree.
#[derive(Clone, Debug, PartialEq)]
pub struct Done {
    pub hash: [u8; 32],
    pub size: u64,
    pub mtime: Time,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// The source's inode number: a directory moved or swapped keeps its files'
    /// ctimes, so another inode under the same path must not pass for the copied one.
    pub ino: u64,
    /// The source's ctime must be older than this for the copy to be its content.
    pub before: Time,
    pub xattrs: Option<String>,
}

impl Done {
    pub fn new(hash: blake3::Hash, m: &Meta, before: Time, xattrs: Option<String>) -> Done {
        Done {
            hash: *hash.as_bytes(),
            size: m.size,
            mtime: m.mtime,
            perm: m.perm,
            uid: m.uid,
            gid: m.gid,
            ino: m.ino,
            before,
            xattrs,
        }
    }

    /// Whether the source, now `m`, still has the content this copy holds.
    pub fn matches(&self, m: &Meta) -> bool {
        m.kind == fsx::Kind::File
            && m.ctime < self.before
            && m.size == self.size
            && m.mtime == self.mtime
            && m.perm == self.perm
            && m.uid == self.uid
            && m.gid == self.gid
            && m.ino == self.ino
    }
}

/// What is known of an adopted tree: `oldest`, the start (less the racy margin) of the
/// first run that wrote into it, when known; the finished copies, by path.
#[derive(Default, Debug)]
pub struct Record {
    pub oldest: Option<Time>,
    pub done: HashMap<Vec<u8>, Done>,
    /// It ends with the [`SYNCED`] mark: its copies were flushed before it was.
    pub synced: bool,
    /// The host and boot (`crate::util::boot_id`) of the run that wrote it (empty: not
    /// known, a version 2 record).
    pub host: String,
    pub boot: String,
}

impl Record {
    /// Whether the copies it names can be kept unread: `None` when they can (it is
    /// marked synced, or was written in this boot of this host, whose page cache
    /// still holds what the copies' writes left there), else why not.
    pub fn untrusted(&self) -> Option<&'static str> {
        if self.synced || self.done.is_empty() {
            return None;
        }
        if self.boot.is_empty() {
            return Some(
                "its writer's boot is not known (an older version, which did not flush the copies)",
            );
        }
        if self.host != crate::util::hostname() || self.boot != crate::util::boot_id() {
            return Some(
                "it was not completed (a run was killed) and was written on another host or before a restart, so its copies may not have reached the disk",
            );
        }
        None
    }

    /// Keeps its entries only if they can be trusted ([`Record::untrusted`]); otherwise
    /// only `oldest` (the files are then checked one by one).
    pub fn checked(mut self, what: &Path) -> Record {
        if let Some(why) = self.untrusted() {
            tracing::info!(
                "{}: the {} finished copies it names are checked one by one: {why}",
                what.display(),
                self.done.len()
            );
            self.done.clear();
        }
        self
    }
}

pub fn path(mdir: &Path, id: &str) -> std::path::PathBuf {
    mdir.join(format!("{id}.done"))
}

fn put_time(v: &mut Vec<u8>, t: Time) {
    v.extend_from_slice(&t.sec.to_le_bytes());
    v.extend_from_slice(&t.nsec.to_le_bytes());
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&(s.len() as u32).to_le_bytes());
    v.extend_from_slice(s.as_bytes());
}

/// The record's header: `oldest`, and this host and boot.
pub fn header(oldest: Option<Time>) -> Vec<u8> {
    header_of(oldest, &crate::util::hostname(), crate::util::boot_id())
}

fn header_of(oldest: Option<Time>, host: &str, boot: &str) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.push(oldest.is_some() as u8);
    put_time(&mut v, oldest.unwrap_or_default());
    put_str(&mut v, host);
    put_str(&mut v, boot);
    v
}

/// The record's end: every copy it names was flushed to disk before it was written.
pub fn synced_mark(v: &mut Vec<u8>) {
    v.extend_from_slice(&SYNCED.to_le_bytes());
}

/// One finished copy, appended to a record.
pub fn entry(v: &mut Vec<u8>, p: &[u8], d: &Done) {
    v.extend_from_slice(&(p.len() as u32).to_le_bytes());
    v.extend_from_slice(p);
    v.extend_from_slice(&d.hash);
    v.extend_from_slice(&d.size.to_le_bytes());
    put_time(v, d.mtime);
    for x in [d.perm, d.uid, d.gid] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&d.ino.to_le_bytes());
    put_time(v, d.before);
    match &d.xattrs {
        Some(x) => {
            v.extend_from_slice(&(x.len() as u32).to_le_bytes());
            v.extend_from_slice(x.as_bytes());
        }
        None => v.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
}

struct Rd<'a>(&'a [u8]);

impl Rd<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn time(&mut self) -> Option<Time> {
        let sec = self.u64()? as i64;
        let nsec = self.u32()?;
        Some(Time { sec, nsec })
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// Decodes a record; `None` when it is not one (another format, no header): the tree
/// is then resumed by checking each file. A truncated entry ends it (the record of a
/// run killed as it wrote): the entries before it are read, and whether they hold is
/// [`Record::untrusted`]'s to say (never, for a version 2 record). At most
/// [`MAX_HELD_BYTES`] of entries are held; the files of the others are checked (read
/// and hashed) instead, as if the record did not name them: slower, never wrong.
pub fn decode(b: &[u8]) -> Option<Record> {
    decode_within(b, MAX_HELD_BYTES)
}

/// What one entry held in memory costs besides its path and xattr digest (the
/// [`Done`], the map's slot and the path's allocation), roughly.
const ENTRY_COST: usize = 160;

/// At most this much of a record is held in memory (about 1,000,000 entries of short
/// paths); the rest is dropped (see [`decode`]).
pub const MAX_HELD_BYTES: usize = 192 << 20;

/// [`decode`], holding at most `budget` bytes of entries.
fn decode_within(b: &[u8], budget: usize) -> Option<Record> {
    let (mut r, v2) = match b.strip_prefix(MAGIC) {
        Some(b) => (Rd(b), false),
        None => (Rd(b.strip_prefix(MAGIC_2)?), true),
    };
    let has = r.take(1)?[0] == 1;
    let t = r.time()?;
    let mut rec = Record {
        oldest: has.then_some(t),
        ..Record::default()
    };
    // A version 2 record names no writer: its entries are read, and dropped
    // ([`Record::untrusted`]).
    if !v2 {
        let (Some(host), Some(boot)) = (r.str(), r.str()) else {
            // A header cut short: the bound alone.
            return Some(rec);
        };
        (rec.host, rec.boot) = (host, boot);
    }
    let mut held = 0;
    while !r.0.is_empty() {
        let Some(e) = next(&mut r) else { break };
        let Some((p, d)) = e else {
            rec.synced = true;
            break;
        };
        // Memory is bounded by directories in flight (DESIGN.md), not by files: past
        // the budget, entries are dropped, and the files they name are checked as
        // copies without a record are (read and hashed against `oldest`). The rest is
        // still read, for the end mark.
        held += ENTRY_COST + p.len() + d.xattrs.as_ref().map_or(0, String::len);
        if held <= budget {
            rec.done.insert(p, d);
        }
    }
    Some(rec)
}

/// The next entry; `Some(None)`: the end mark ([`SYNCED`]); `None`: cut short.
fn next(r: &mut Rd<'_>) -> Option<Option<(Vec<u8>, Done)>> {
    {
        let n = r.u32()?;
        if n == SYNCED {
            return Some(None);
        }
        let n = n as usize;
        let p = r.take(n)?.to_vec();
        let hash: [u8; 32] = r.take(32)?.try_into().ok()?;
        let size = r.u64()?;
        let mtime = r.time()?;
        let (perm, uid, gid) = (r.u32()?, r.u32()?, r.u32()?);
        let ino = r.u64()?;
        let before = r.time()?;
        let xattrs = match r.u32()? {
            u32::MAX => None,
            n => Some(String::from_utf8(r.take(n as usize)?.to_vec()).ok()?),
        };
        Some(Some((
            p,
            Done {
                hash,
                size,
                mtime,
                perm,
                uid,
                gid,
                ino,
                before,
                xattrs,
            },
        )))
    }
}

/// The record a run still writing (or killed as it wrote) has so far.
pub fn tmp_path(mdir: &Path, id: &str) -> std::path::PathBuf {
    mdir.join(format!("{id}.done.tmp"))
}

/// Reads the record of the tree run `id` left: the one written when it was cut, else
/// the one it was writing when it was killed. `None`: neither is there or readable.
/// Entries that cannot be trusted ([`Record::untrusted`]) are dropped (logged).
pub fn load(mdir: &Path, id: &str) -> Option<Record> {
    [path(mdir, id), tmp_path(mdir, id)]
        .iter()
        .find_map(|p| Some(decode(&std::fs::read(p).ok()?)?.checked(p)))
}

/// `t` less the racy margin: a source whose ctime is older than that has not changed
/// since `t`.
pub fn margin(t: Time) -> Time {
    Time {
        sec: t.sec - crate::manifest::RACY_MARGIN_SECS,
        nsec: t.nsec,
    }
}

pub fn earlier(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a < b { a } else { b }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back() {
        let d = Done {
            hash: [7; 32],
            size: 5,
            mtime: Time { sec: 9, nsec: 3 },
            perm: 0o644,
            uid: 1,
            gid: 2,
            ino: 77,
            before: Time { sec: 100, nsec: 0 },
            xattrs: Some("abc".into()),
        };
        let mut m = HashMap::new();
        m.insert(b"a/b\nc".to_vec(), d.clone());
        m.insert(b"x".to_vec(), Done { xattrs: None, ..d });
        let mut v = header(Some(Time { sec: 4, nsec: 1 }));
        for (p, d) in &m {
            entry(&mut v, p, d);
        }
        let r = decode(&v).unwrap();
        assert_eq!(r.oldest, Some(Time { sec: 4, nsec: 1 }));
        assert_eq!(r.done, m);
        assert_eq!(decode(&v[..v.len() - 1]).unwrap().done.len(), 1);
        assert!(decode(&v[..3]).is_none());
        // Past the budget, entries are dropped (never the header).
        let r = decode_within(&v, ENTRY_COST + 8).unwrap();
        assert_eq!(r.oldest, Some(Time { sec: 4, nsec: 1 }));
        assert_eq!(r.done.len(), 1);
        assert_eq!(decode_within(&v, 0).unwrap().done.len(), 0);
        // Written here, in this boot: trusted; not marked synced.
        assert!(!r.synced && r.untrusted().is_none());
        assert_eq!(r.boot, crate::util::boot_id());
        // The end mark, read even past the budget.
        let mut s = v.clone();
        synced_mark(&mut s);
        assert!(decode(&s).unwrap().synced);
        assert!(decode_within(&s, 0).unwrap().synced);
        assert_eq!(decode(&s).unwrap().done, m);
        // Written in another boot: its entries go unless it is marked synced.
        let mut o = header_of(Some(Time { sec: 4, nsec: 1 }), "elsewhere", "another-boot");
        for (p, d) in &m {
            entry(&mut o, p, d);
        }
        let r = decode(&o).unwrap();
        assert!(r.untrusted().is_some());
        let r = r.checked(Path::new("x"));
        assert_eq!(
            (r.oldest, r.done.len()),
            (Some(Time { sec: 4, nsec: 1 }), 0)
        );
        synced_mark(&mut o);
        let r = decode(&o).unwrap().checked(Path::new("x"));
        assert_eq!(r.done, m);
        // A version 2 record: its bound alone.
        let mut o = MAGIC_2.to_vec();
        o.push(1);
        put_time(&mut o, Time { sec: 4, nsec: 1 });
        entry(&mut o, b"x", &m[&b"x".to_vec()]);
        let r = decode(&o).unwrap();
        assert!(r.untrusted().is_some());
        let r = r.checked(Path::new("x"));
        assert_eq!(
            (r.oldest, r.done.len()),
            (Some(Time { sec: 4, nsec: 1 }), 0)
        );
    }
}
