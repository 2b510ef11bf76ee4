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
//! record at once, in memory; the record is written whole, at the end, so a run killed
//! (SIGKILL) leaves only the record written when it began: the `oldest` bound and no
//! entries. Its files are then checked as a resume from a separate tree always was:
//! their own metadata (set last, so only a finished copy matches), xattrs and hash,
//! against `oldest`, the start of the first run that wrote into the tree.

use std::collections::HashMap;
use std::path::Path;

use crate::fsx::{self, Meta, Time};

// Version 2 adds the source's inode number (version 1 records are not read: their
// files are checked one by one).
const MAGIC: &[u8] = b"SNAPRING-DONE-2\n";

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
}

pub fn path(mdir: &Path, id: &str) -> std::path::PathBuf {
    mdir.join(format!("{id}.done"))
}

fn put_time(v: &mut Vec<u8>, t: Time) {
    v.extend_from_slice(&t.sec.to_le_bytes());
    v.extend_from_slice(&t.nsec.to_le_bytes());
}

/// The record's header: `oldest`.
pub fn header(oldest: Option<Time>) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.push(oldest.is_some() as u8);
    put_time(&mut v, oldest.unwrap_or_default());
    v
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
}

/// Decodes a record; `None` when it is not one (another format, no header): the tree
/// is then resumed by checking each file. A truncated entry ends it (the record of a
/// run killed as it wrote): the entries before it hold. At most [`MAX_HELD_BYTES`] of
/// entries are held; the files of the others are checked (read and hashed) instead,
/// as if the record did not name them: slower, never wrong.
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
    let mut r = Rd(b.strip_prefix(MAGIC)?);
    let has = r.take(1)?[0] == 1;
    let t = r.time()?;
    let mut rec = Record {
        oldest: has.then_some(t),
        done: HashMap::new(),
    };
    let mut held = 0;
    while !r.0.is_empty() {
        let Some((p, d)) = next(&mut r) else { break };
        // Memory is bounded by directories in flight (DESIGN.md), not by files: past
        // the budget, entries are dropped, and the files they name are checked as
        // copies without a record are (read and hashed against `oldest`).
        held += ENTRY_COST + p.len() + d.xattrs.as_ref().map_or(0, String::len);
        if held > budget {
            break;
        }
        rec.done.insert(p, d);
    }
    Some(rec)
}

fn next(r: &mut Rd<'_>) -> Option<(Vec<u8>, Done)> {
    {
        let n = r.u32()? as usize;
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
        Some((
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
        ))
    }
}

/// The record a run still writing (or killed as it wrote) has so far.
pub fn tmp_path(mdir: &Path, id: &str) -> std::path::PathBuf {
    mdir.join(format!("{id}.done.tmp"))
}

/// Reads the record of the tree run `id` left: the one written when it was cut, else
/// the one it was writing when it was killed. `None`: neither is there or readable.
pub fn load(mdir: &Path, id: &str) -> Option<Record> {
    [path(mdir, id), tmp_path(mdir, id)]
        .iter()
        .find_map(|p| decode(&std::fs::read(p).ok()?))
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
    }
}
