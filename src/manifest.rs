//! The per-snapshot manifest: every entry's metadata and BLAKE3 hash, grouped in one
//! block per directory, with an index for random access by directory. Does file I/O on
//! `.snapring/manifests/<id>.mf` and `<id>.idx`; the format is in docs/format.md.
//!
//! The walker finishes directories in no fixed order, so blocks are appended as they
//! come and found again through the index: fixed 24-byte records (path hash, offset,
//! length) sorted by hash, searched with `pread`. Reading a directory's previous entries
//! costs a few small reads and no memory beyond that one directory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::fsx::{Kind, Meta, Time};
use crate::relpath::{RelPath, escape, unescape};

pub const MAGIC: &str = "snapring-manifest 1";
const IDX_MAGIC: &[u8; 8] = b"SRIDX01\n";
const IDX_HEADER: u64 = 24;
const IDX_REC: u64 = 24;

/// How close to the previous walk's start a change makes an entry racy (and a file of
/// an interrupted run's staging tree not reusable). Generous, to cover timestamp
/// granularity and modest clock skew between an NFS server and us.
pub const RACY_MARGIN_SECS: i64 = 2;

/// One entry of a directory as recorded in a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: Time,
    /// The *source's* ctime at backup time: unchanged ctime means unchanged inode.
    pub ctime: Time,
    /// BLAKE3 of the content (regular files).
    pub hash: Option<blake3::Hash>,
    /// Digest of the extended attributes (see `fsx::xattr_digest`), `None` if there are none.
    pub xattrs: Option<String>,
    /// The source's inode number: a different one under the same name means the file
    /// was replaced, even if size and times match.
    pub ino: u64,
    /// Source inode number when the source file had several links: entries with the
    /// same group in one snapshot are one inode.
    pub group: Option<u64>,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Device number (character and block devices).
    pub rdev: u64,
    /// The names of the extended attributes the store refused to keep on this entry as
    /// not supported, sorted (a value refused as too large is not recorded: it depends
    /// on the entry's other attributes too): `xattrs` is the digest of the others, the
    /// ones the snapshot holds. The next run compares the source's
    /// attributes less these with `xattrs`, and links an unchanged entry rather than
    /// copying it again to be refused again. Recorded for files, fifos and sockets
    /// only ([`Entry::records_refused`]).
    pub refused: Vec<Vec<u8>>,
}

impl Entry {
    pub fn from_meta(name: &[u8], m: &Meta) -> Entry {
        Entry {
            name: name.to_vec(),
            kind: m.kind,
            perm: m.perm,
            uid: m.uid,
            gid: m.gid,
            size: if matches!(m.kind, Kind::File | Kind::Symlink) {
                m.size
            } else {
                0
            },
            mtime: m.mtime,
            ctime: m.ctime,
            hash: None,
            xattrs: None,
            ino: m.ino,
            group: (m.kind != Kind::Dir && m.nlink > 1).then_some(m.ino),
            target: None,
            rdev: if matches!(m.kind, Kind::Char | Kind::Block) {
                m.rdev
            } else {
                0
            },
            refused: Vec::new(),
        }
    }

    /// Whether an entry of `kind` records the attributes the store refused
    /// ([`Entry::refused`]): in field 12, which readers before this addition ignore for
    /// every kind but symlinks (their target) and devices (their number). A symlink or
    /// a device cannot hold `user.*` attributes nor (a symlink) ACLs, and its copy reads
    /// no data: its refused attributes stay unrecorded, and it is made again when they
    /// are compared (docs/format.md).
    pub fn records_refused(kind: Kind) -> bool {
        matches!(kind, Kind::File | Kind::Fifo | Kind::Socket)
    }

    /// The text line (without newline).
    pub fn to_line(&self) -> String {
        let hash = self
            .hash
            .map(|h| h.to_hex().to_string())
            .unwrap_or_else(|| "-".into());
        let xat = self.xattrs.clone().unwrap_or_else(|| "-".into());
        let group = self
            .group
            .map(|g| g.to_string())
            .unwrap_or_else(|| "-".into());
        let extra = match (self.kind, &self.target) {
            (Kind::Symlink, Some(t)) => format!(":{}", escape(t)),
            (Kind::Char | Kind::Block, _) => format!(":{}", self.rdev),
            (k, _) if Entry::records_refused(k) && !self.refused.is_empty() => {
                refused_field(&self.refused)
            }
            _ => "-".into(),
        };
        format!(
            "{} {:o} {} {} {} {} {} {} {} {} {} {} {}",
            self.kind.code(),
            self.perm,
            self.uid,
            self.gid,
            self.size,
            self.mtime,
            self.ctime,
            self.ino,
            hash,
            xat,
            group,
            extra,
            escape(&self.name)
        )
    }

    pub fn parse_line(line: &str) -> Result<Entry, String> {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() != 13 {
            return Err(format!(
                "manifest line has {} fields, expected 13: {line:?}",
                f.len()
            ));
        }
        let bad = |what: &str| format!("bad {what} in manifest line {line:?}");
        let kind = f[0]
            .chars()
            .next()
            .and_then(Kind::from_code)
            .ok_or_else(|| bad("kind"))?;
        let opt = |s: &str| if s == "-" { None } else { Some(s.to_string()) };
        let hash = match opt(f[8]) {
            Some(h) => Some(blake3::Hash::from_hex(&h).map_err(|_| bad("hash"))?),
            None => None,
        };
        let (target, rdev) = match (kind, f[11].strip_prefix(':')) {
            (Kind::Symlink, Some(t)) => (Some(unescape(t)?), 0),
            (Kind::Char | Kind::Block, Some(r)) => (None, r.parse().map_err(|_| bad("rdev"))?),
            _ => (None, 0),
        };
        let refused = match f[11].strip_prefix(REFUSED_PREFIX) {
            Some(names) if Entry::records_refused(kind) => {
                parse_refused(names).ok_or_else(|| bad("refused attributes"))?
            }
            _ => Vec::new(),
        };
        Ok(Entry {
            kind,
            perm: u32::from_str_radix(f[1], 8).map_err(|_| bad("mode"))?,
            uid: f[2].parse().map_err(|_| bad("uid"))?,
            gid: f[3].parse().map_err(|_| bad("gid"))?,
            size: f[4].parse().map_err(|_| bad("size"))?,
            mtime: f[5].parse()?,
            ctime: f[6].parse()?,
            ino: f[7].parse().map_err(|_| bad("inode"))?,
            hash,
            xattrs: opt(f[9]),
            group: match opt(f[10]) {
                Some(g) => Some(g.parse().map_err(|_| bad("group"))?),
                None => None,
            },
            target,
            rdev,
            name: unescape(f[12])?,
            refused,
        })
    }
}

/// Field 12's start when it names the attributes the store refused ([`Entry::refused`]).
const REFUSED_PREFIX: &str = "x=";

/// Field 12 of an entry whose attributes `names` the store refused: `x=` and the names,
/// each escaped as a path is (and `,` as `%2C`), separated by `,`.
fn refused_field(names: &[Vec<u8>]) -> String {
    let mut s = String::from(REFUSED_PREFIX);
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&escape(n).replace(',', "%2C"));
    }
    s
}

/// The names [`refused_field`] wrote; `None` if one is empty or not escaped right.
fn parse_refused(s: &str) -> Option<Vec<Vec<u8>>> {
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(',')
        .map(|n| unescape(n).ok().filter(|n| !n.is_empty()))
        .collect()
}

/// A directory's key in the index: the first 8 bytes of the BLAKE3 of its path (public
/// for the fuzz targets, which build indexes for arbitrary manifest text).
pub fn dir_key(dir: &RelPath) -> u64 {
    let h = blake3::hash(dir.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The two files of a manifest, by run id.
pub fn paths(manifest_dir: &Path, id: &str) -> (PathBuf, PathBuf) {
    (
        manifest_dir.join(format!("{id}.mf")),
        manifest_dir.join(format!("{id}.idx")),
    )
}

/// Appends directory blocks as the walker finishes them. Holds one 24-byte index record
/// per directory until `finish` sorts and writes them.
pub struct Writer {
    mf_path: PathBuf,
    idx_path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    index: Vec<(u64, u64, u64)>,
    entries: u64,
    /// A shard unit's part ([`Writer::part`]): no temporary name, no index.
    part: bool,
    /// [`Writer::owners_not_kept`].
    owners_held: Option<(u32, u32)>,
    /// [`Writer::times_not_kept`].
    times_held: Option<u64>,
    /// Entries of blocks already written to correct ([`Writer::correct`]), by block.
    corrections: Vec<(RelPath, Entry)>,
    /// The start line's time, as written (the filler of a superseded block repeats it).
    started: Time,
}

impl Writer {
    /// Starts `<id>.mf.tmp` / `<id>.idx.tmp`; `finish` renames them into place.
    /// `started` is when the walk began: entries changed around then are "racy" for the
    /// next run (see `Reader::started`).
    pub fn create(manifest_dir: &Path, id: &str, started: Time) -> io::Result<Writer> {
        Self::start(manifest_dir, id, started, false)
    }

    /// Starts a shard unit's manifest part, `<id>.mf` under its own name and with no
    /// index: finalize reads it once, through, and only once the unit's commit says it
    /// is whole. (Two renames and an index file less per unit, each a round trip on
    /// NFS, on the path from one unit to the next.)
    pub fn part(dir: &Path, id: &str, started: Time) -> io::Result<Writer> {
        Self::start(dir, id, started, true)
    }

    fn start(manifest_dir: &Path, id: &str, started: Time, part: bool) -> io::Result<Writer> {
        let (mf, idx) = paths(manifest_dir, id);
        let path = if part {
            mf.clone()
        } else {
            mf.with_extension("mf.tmp")
        };
        let mut out = BufWriter::with_capacity(256 * 1024, crate::util::create_private(&path)?);
        let header = format!("{MAGIC}\nS {started}\n");
        out.write_all(header.as_bytes())?;
        Ok(Writer {
            mf_path: mf,
            idx_path: idx,
            out,
            offset: header.len() as u64,
            index: Vec::new(),
            entries: 0,
            part,
            owners_held: None,
            times_held: None,
            corrections: Vec::new(),
            started,
        })
    }

    /// Writes the block of `dir`'s children (sorted here by name).
    pub fn write_block(&mut self, dir: &RelPath, entries: &mut [Entry]) -> io::Result<()> {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut s = format!("D {}\n", dir.escaped());
        for e in entries.iter() {
            s.push_str(&e.to_line());
            s.push('\n');
        }
        self.out.write_all(s.as_bytes())?;
        self.index.push((dir_key(dir), self.offset, s.len() as u64));
        self.offset += s.len() as u64;
        self.entries += entries.len() as u64;
        Ok(())
    }

    /// Writes a block of `n` entry lines exactly as another writer wrote them (a shard
    /// unit's part: sorted by name, each line ending in a newline), without parsing and
    /// formatting each entry again.
    pub fn write_raw_block(&mut self, dir: &RelPath, lines: &str, n: u64) -> io::Result<()> {
        let head = format!("D {}\n", dir.escaped());
        self.out.write_all(head.as_bytes())?;
        self.out.write_all(lines.as_bytes())?;
        let len = (head.len() + lines.len()) as u64;
        self.index.push((dir_key(dir), self.offset, len));
        self.offset += len;
        self.entries += n;
        Ok(())
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The entry `e.name` of `dir`'s block, written already, is to be `e` (a
    /// subdirectory whose own listing took a later stat than its parent's listing, after
    /// the parent's block was written: `engine::walk`). Applied by [`Writer::finish`]:
    /// the block is written again, corrected, after the others, and its first copy is
    /// overwritten by start lines (see [`Writer::supersede`]). Rare: a directory that
    /// changed while the walk reached it. A directory's block used to be held in memory
    /// until each of its subdirectories was opened, which with the walk's depth-first
    /// order is until its subtree is done: nested large directories held each block.
    pub fn correct(&mut self, dir: &RelPath, e: Entry) {
        self.corrections.push((dir.clone(), e));
    }

    /// Applies the corrections ([`Writer::correct`]), before the root line.
    fn apply_corrections(&mut self) -> io::Result<()> {
        if self.corrections.is_empty() {
            return Ok(());
        }
        self.out.flush()?;
        let mut corrections = std::mem::take(&mut self.corrections);
        corrections.sort_by(|a, b| a.0.cmp(&b.0));
        let mut at = 0;
        while at < corrections.len() {
            let dir = corrections[at].0.clone();
            let end = at + corrections[at..].iter().take_while(|c| c.0 == dir).count();
            self.supersede(&dir, &corrections[at..end])?;
            at = end;
        }
        Ok(())
    }

    /// Writes `dir`'s block again with `fixes` applied (each replaces the entry of its
    /// name, a directory) and points the index at the new copy. The first copy is
    /// overwritten in place, to its exact length, by lines `S <start time>` (the time's
    /// seconds zero-padded to fill): every reader skips or repeats a start line, so a
    /// manifest read through (`for_each`, a shard part at finalize) holds the block
    /// once, and readers of the format before this one read it as well.
    fn supersede(&mut self, dir: &RelPath, fixes: &[(RelPath, Entry)]) -> io::Result<()> {
        let key = dir_key(dir);
        // An earlier supersede's new copy may still be in the buffer, and a block of
        // another directory with the same key is read back below (R2).
        self.out.flush()?;
        // The writer's descriptor is write-only.
        let file = File::open(match self.part {
            true => self.mf_path.clone(),
            false => self.mf_path.with_extension("mf.tmp"),
        })?;
        let mut found = None;
        for (i, (k, off, len)) in self.index.iter().enumerate() {
            if *k != key {
                continue;
            }
            let mut buf = vec![0u8; *len as usize];
            file.read_exact_at(&mut buf, *off)?;
            let text = String::from_utf8(buf)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "block is not text"))?;
            let head = text.lines().next().and_then(|l| l.strip_prefix("D "));
            if head.and_then(|h| RelPath::from_escaped(h).ok()).as_ref() == Some(dir) {
                found = Some((i, *off, *len, text));
                break;
            }
        }
        // A correction is recorded only for a block this writer wrote, so each finds
        // its block; should one not, the entry keeps the listing's stat (the snapshot's
        // directory may then `verify` as changed), said rather than dropped unseen (R2).
        let Some((i, off, len, text)) = found else {
            tracing::warn!(
                "manifest: no written block of {dir} to correct; its entries keep the listing's times"
            );
            return Ok(());
        };
        let block = self.patched(dir, &text, fixes)?;
        self.out
            .get_ref()
            .write_all_at(&filler(len, self.started), off)?;
        self.out.write_all(block.as_bytes())?;
        self.index[i] = (key, self.offset, block.len() as u64);
        self.offset += block.len() as u64;
        Ok(())
    }

    /// `dir`'s block `text` with `fixes` applied, sorted as it was.
    fn patched(&self, dir: &RelPath, text: &str, fixes: &[(RelPath, Entry)]) -> io::Result<String> {
        let mut s = format!("D {}\n", dir.escaped());
        for line in text.lines().skip(1) {
            let e = Entry::parse_line(line)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            match fixes
                .iter()
                .rev()
                .find(|f| f.1.name == e.name && e.kind == Kind::Dir)
            {
                Some((_, fixed)) => s.push_str(&fixed.to_line()),
                None => s.push_str(line),
            }
            s.push('\n');
        }
        Ok(s)
    }

    /// The store gives every file the owner `held` instead of the source's: said by
    /// [`owners_marker`], written with the manifest.
    pub fn owners_not_kept(&mut self, held: (u32, u32)) {
        self.owners_held = Some(held);
    }

    /// The store keeps file times to `granularity` ns only (whole seconds: 10^9), the
    /// manifest the source's exact times: said by [`times_marker`], written with the
    /// manifest.
    pub fn times_not_kept(&mut self, granularity: u64) {
        self.times_held = Some(granularity);
    }

    /// Writes the root directory's own metadata, sorts and writes the index, fsyncs
    /// both files and renames them into place.
    pub fn finish(mut self, root: &Entry) -> io::Result<()> {
        self.apply_corrections()?;
        let line = format!("R {}\n", root.to_line());
        self.out.write_all(line.as_bytes())?;
        let root_off = self.offset;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        if self.part {
            return Ok(());
        }
        self.index.sort_unstable();
        let idx_tmp = self.idx_path.with_extension("idx.tmp");
        let mut idx = BufWriter::new(crate::util::create_private(&idx_tmp)?);
        idx.write_all(IDX_MAGIC)?;
        idx.write_all(&root_off.to_le_bytes())?;
        idx.write_all(&(line.len() as u64).to_le_bytes())?;
        for (k, o, l) in &self.index {
            idx.write_all(&k.to_le_bytes())?;
            idx.write_all(&o.to_le_bytes())?;
            idx.write_all(&l.to_le_bytes())?;
        }
        let idx = idx.into_inner().map_err(|e| e.into_error())?;
        idx.sync_all()?;
        std::fs::rename(&idx_tmp, &self.idx_path)?;
        // The marks of what the store did not keep, beside the manifest.
        let dir = self.mf_path.parent().unwrap_or(Path::new("."));
        let id = self
            .mf_path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy();
        let mark = |path: PathBuf, text: String| -> std::io::Result<()> {
            let mut f = crate::util::create_private(&path)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        };
        if let Some((u, g)) = self.owners_held {
            mark(owners_marker(dir, &id), format!("{u}:{g}\n"))?;
        }
        if let Some(g) = self.times_held {
            mark(times_marker(dir, &id), format!("{g}\n"))?;
        }
        crate::failpoint::hit("manifest.between_renames")?;
        std::fs::rename(self.mf_path.with_extension("mf.tmp"), &self.mf_path)?;
        Ok(())
    }

    /// Removes the temporary files of an abandoned manifest.
    pub fn abandon(self) {
        if self.part {
            let _ = std::fs::remove_file(&self.mf_path);
            return;
        }
        let _ = std::fs::remove_file(self.mf_path.with_extension("mf.tmp"));
        let _ = std::fs::remove_file(self.idx_path.with_extension("idx.tmp"));
    }
}

/// `len` bytes of start lines `S <started>\n` (each at least as long as the start
/// line, the time's seconds zero-padded to fill), which every reader skips: the
/// first copy of a block written again ([`Writer::supersede`]). `len` is at least a
/// block header and one entry line, more than one start line.
fn filler(len: u64, started: Time) -> Vec<u8> {
    let time = started.to_string();
    let min = (2 + time.len() + 1) as u64;
    let lines = (len / min).max(1);
    let (each, extra) = (len / lines, len % lines);
    let mut out = Vec::with_capacity(len as usize);
    for i in 0..lines {
        let n = each + u64::from(i < extra);
        let zeros = n.saturating_sub(min) as usize;
        // After the sign of a time before 1970: `-0005.…` reads as `-5.…`.
        let (sign, digits) = time.split_at(usize::from(time.starts_with('-')));
        out.extend_from_slice(b"S ");
        out.extend_from_slice(sign.as_bytes());
        out.extend(std::iter::repeat_n(b'0', zeros));
        out.extend_from_slice(digits.as_bytes());
        out.push(b'\n');
    }
    out.truncate(len as usize);
    out
}

/// Random access to a finished manifest.
pub struct Reader {
    mf: File,
    /// The manifest's length when opened: every span the index names must lie inside.
    mf_len: u64,
    idx: File,
    records: u64,
    root_off: u64,
    root_len: u64,
    pub mf_path: PathBuf,
    /// When the walk that wrote this manifest began (wall clock of the backup host).
    pub started: Time,
    /// Whether the source inode numbers and ctimes it records still identify the
    /// source's files. `false` once its snapshot was found copied (`<id>.copied`, see
    /// `copied_marker`): a store copied with `cp -a` or restored from a tar may back up
    /// a source that moved too. Entries then read with both unknown (0), and the
    /// backup compares them by type, size, mtime, mode, owner and xattrs, as it does a
    /// tree without a manifest.
    pub source_ids: bool,
    /// The entries the last `verify` of this snapshot found damaged ([`damaged_list`]):
    /// a backup copies them from the source rather than link them.
    pub damaged: std::collections::HashSet<RelPath>,
    /// The owner the store gave every file instead of the source's, which the manifest
    /// records ([`owners_marker`]); `None`: the snapshot's files have their owners.
    pub owners_held: Option<(u32, u32)>,
    /// The granularity (ns) to which the store kept the snapshot's file times, when it
    /// truncated them ([`times_marker`]); the manifest records the source's exact times.
    pub times_held: Option<u64>,
}

/// `<manifest_dir>/<id>.copied`: present once the snapshot of run `id` was found in a
/// copied store (its directory had a new inode) and its tree matched this manifest.
pub fn copied_marker(manifest_dir: &Path, id: &str) -> PathBuf {
    manifest_dir.join(format!("{id}.copied"))
}

/// `<manifest_dir>/<id>.owners`: present when the store refused to give the snapshot's
/// files their owners (chown refused to root: an NFS export with `root_squash`). It
/// holds `uid:gid`, the owner the store gave them instead; the manifest records the
/// source's owners all the same (the next backup compares them with the source's, and
/// links what is unchanged), so `verify` does not compare owners there.
pub fn owners_marker(manifest_dir: &Path, id: &str) -> PathBuf {
    manifest_dir.join(format!("{id}.owners"))
}

/// The owner [`owners_marker`] of run `id` names, if there is one.
pub fn read_owners_marker(manifest_dir: &Path, id: &str) -> Option<(u32, u32)> {
    let s = std::fs::read_to_string(owners_marker(manifest_dir, id)).ok()?;
    let (u, g) = s.trim().split_once(':')?;
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// `<manifest_dir>/<id>.times`: present when the store kept the snapshot's file times
/// to a coarser granularity than the source's (whole seconds: some NFS servers, FAT).
/// It holds that granularity in ns (`1000000000`); the manifest records the source's
/// exact times all the same (the next backup compares them with the source's), so
/// `verify` compares times to that granularity, and `restore` gives the manifest's.
pub fn times_marker(manifest_dir: &Path, id: &str) -> PathBuf {
    manifest_dir.join(format!("{id}.times"))
}

/// The granularity [`times_marker`] of run `id` names, if there is one (above 1 ns).
pub fn read_times_marker(manifest_dir: &Path, id: &str) -> Option<u64> {
    let s = std::fs::read_to_string(times_marker(manifest_dir, id)).ok()?;
    s.trim().parse().ok().filter(|g| *g > 1)
}

/// `<manifest_dir>/<id>.damaged`: the entries of run `id`'s snapshot that the last
/// `verify` of it found damaged (bytes, metadata, or unreadable), as JSON
/// (`{"verified_at", "paths": [escaped path, ...]}`). A backup whose previous snapshot
/// this is copies those entries from the source instead of linking their damaged
/// inodes into the new snapshot (docs/format.md, "Damage found by verify").
pub fn damaged_list(manifest_dir: &Path, id: &str) -> PathBuf {
    manifest_dir.join(format!("{id}.damaged"))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct DamagedList {
    verified_at: String,
    paths: Vec<String>,
}

/// The entries [`damaged_list`] names for run `id`; none when there is no list. A list
/// that does not read is warned about and taken as none (the backup then links as it
/// would have before any verify).
pub fn read_damaged(manifest_dir: &Path, id: &str) -> std::collections::HashSet<RelPath> {
    let path = damaged_list(manifest_dir, id);
    let list = match crate::fsx::read_regular(&path) {
        Ok(b) => serde_json::from_slice::<DamagedList>(&b)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Default::default(),
        Err(e) => Err(e),
    };
    match list {
        Ok(l) => l
            .paths
            .iter()
            .filter_map(|p| RelPath::from_escaped(p).ok())
            .collect(),
        Err(e) => {
            tracing::warn!(
                "{}: cannot read the entries verify found damaged ({e}); they may be linked again",
                path.display()
            );
            Default::default()
        }
    }
}

/// When [`damaged_list`] of run `id` names entries: when the verify that found them
/// ran, and how many it names (`list` shows them). `None` when there is no list, or it
/// does not read (warned about by [`read_damaged`], which a backup uses).
pub fn damaged_summary(manifest_dir: &Path, id: &str) -> Option<(String, u64)> {
    let b = crate::fsx::read_regular(&damaged_list(manifest_dir, id)).ok()?;
    let l = serde_json::from_slice::<DamagedList>(&b).ok()?;
    (!l.paths.is_empty()).then_some((l.verified_at, l.paths.len() as u64))
}

/// Records what a `verify` of run `id`'s snapshot found damaged, replacing what an
/// earlier one found; nothing damaged removes the list.
pub fn write_damaged(manifest_dir: &Path, id: &str, paths: &[RelPath]) -> io::Result<()> {
    let path = damaged_list(manifest_dir, id);
    if paths.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let list = DamagedList {
        verified_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        paths: paths.iter().map(RelPath::escaped).collect(),
    };
    let bytes = serde_json::to_vec_pretty(&list).map_err(io::Error::other)?;
    crate::util::write_atomic(&path, &bytes)
}

/// A manifest that does not read as written (cut short, overwritten, an index naming
/// bytes it does not have): the error inside the `io::Error` its reads return, so that
/// a reader of the record ([`crate::compare`]) can tell a damaged record from a tree it
/// could not read ([`Damaged::of`]).
#[derive(Debug)]
pub struct Damaged {
    /// The manifest (or index) file.
    pub path: PathBuf,
    pub what: String,
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "manifest {}: {}", self.path.display(), self.what)
    }
}

impl std::error::Error for Damaged {}

impl Damaged {
    /// The damage `e` reports, when it is a damaged manifest's.
    pub fn of(e: &io::Error) -> Option<&Damaged> {
        e.get_ref().and_then(|i| i.downcast_ref::<Damaged>())
    }
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        Damaged {
            path: path.to_path_buf(),
            what: what.to_string(),
        },
    )
}

impl Reader {
    pub fn open(manifest_dir: &Path, id: &str) -> io::Result<Reader> {
        let (mf_path, idx_path) = paths(manifest_dir, id);
        let mf = File::open(&mf_path)?;
        let idx = File::open(&idx_path)?;
        let mut idx_head = [0u8; IDX_HEADER as usize];
        idx.read_exact_at(&mut idx_head, 0)
            .map_err(|_| corrupt(&idx_path, "index too short"))?;
        if &idx_head[..8] != IDX_MAGIC {
            return Err(corrupt(&idx_path, "not a snapring manifest index"));
        }
        let len = idx.metadata()?.len();
        let mf_len = mf.metadata()?.len();
        if !(len.saturating_sub(IDX_HEADER)).is_multiple_of(IDX_REC) {
            return Err(corrupt(&idx_path, "index length is not whole records"));
        }
        let mut head = vec![0u8; 64];
        let n = mf.read_at(&mut head, 0)?;
        let head = String::from_utf8_lossy(&head[..n]).into_owned();
        let mut lines = head.lines();
        if lines.next() != Some(MAGIC) {
            return Err(corrupt(&mf_path, "unknown manifest version"));
        }
        let started = lines
            .next()
            .and_then(|l| l.strip_prefix("S "))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| corrupt(&mf_path, "no start time"))?;
        Ok(Reader {
            mf,
            mf_len,
            idx,
            records: len.saturating_sub(IDX_HEADER) / IDX_REC,
            root_off: u64::from_le_bytes(idx_head[8..16].try_into().expect("8")),
            root_len: u64::from_le_bytes(idx_head[16..24].try_into().expect("8")),
            mf_path,
            started,
            source_ids: !copied_marker(manifest_dir, id).exists(),
            damaged: read_damaged(manifest_dir, id),
            owners_held: read_owners_marker(manifest_dir, id),
            times_held: read_times_marker(manifest_dir, id),
        })
    }

    /// An entry as read, with the source's ids forgotten when they are not valid.
    fn read_entry(&self, line: &str) -> Result<Entry, String> {
        let mut e = Entry::parse_line(line)?;
        if !self.source_ids {
            e.ino = 0;
            e.ctime = Time::default();
        }
        Ok(e)
    }

    fn record(&self, i: u64) -> io::Result<(u64, u64, u64)> {
        let mut r = [0u8; IDX_REC as usize];
        self.idx.read_exact_at(&mut r, IDX_HEADER + i * IDX_REC)?;
        let w = |k: usize| u64::from_le_bytes(r[k * 8..k * 8 + 8].try_into().expect("8"));
        Ok((w(0), w(1), w(2)))
    }

    /// The `len` bytes of the manifest at `off`, as the index names them. The index is
    /// checked first: a damaged one naming a span past the end of the manifest is an
    /// error, not an allocation of whatever length it holds.
    fn span(&self, off: u64, len: u64) -> io::Result<Vec<u8>> {
        if off.checked_add(len).is_none_or(|end| end > self.mf_len) {
            return Err(corrupt(
                &self.mf_path,
                format!(
                    "the index names bytes {off}+{len}, past the end of the manifest ({} bytes)",
                    self.mf_len
                ),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.mf
            .read_exact_at(&mut buf, off)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => corrupt(&self.mf_path, "cut short while read"),
                _ => e,
            })?;
        Ok(buf)
    }

    /// The root directory's own entry.
    pub fn root(&self) -> io::Result<Entry> {
        let buf = self.span(self.root_off, self.root_len)?;
        let s =
            String::from_utf8(buf).map_err(|_| corrupt(&self.mf_path, "root line is not text"))?;
        let line = s
            .trim_end()
            .strip_prefix("R ")
            .ok_or_else(|| corrupt(&self.mf_path, "no root line"))?;
        Entry::parse_line(line).map_err(|e| corrupt(&self.mf_path, e))
    }

    /// The entries of directory `dir`, sorted by name; `None` if the manifest has no
    /// such directory.
    pub fn lookup(&self, dir: &RelPath) -> io::Result<Option<Vec<Entry>>> {
        let key = dir_key(dir);
        let (mut lo, mut hi) = (0u64, self.records);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.record(mid)?.0 < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        // Several directories may share a 64-bit key: check each block's header.
        let mut i = lo;
        while i < self.records {
            let (k, off, len) = self.record(i)?;
            if k != key {
                break;
            }
            let buf = self.span(off, len)?;
            let text =
                String::from_utf8(buf).map_err(|_| corrupt(&self.mf_path, "block is not text"))?;
            let mut lines = text.lines();
            let head = lines
                .next()
                .and_then(|l| l.strip_prefix("D "))
                .ok_or_else(|| corrupt(&self.mf_path, "block without header"))?;
            if RelPath::from_escaped(head).map_err(|e| corrupt(&self.mf_path, e))? == *dir {
                let entries = lines
                    .map(|l| self.read_entry(l))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| corrupt(&self.mf_path, e))?;
                return Ok(Some(entries));
            }
            i += 1;
        }
        Ok(None)
    }

    /// Each entry's directory, type and size, in file order: what a plan's sizing needs,
    /// without parsing the rest of each line (a hash in hex, times, a name to unescape).
    pub fn for_each_kind_size(
        &self,
        mut f: impl FnMut(&RelPath, Kind, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut r = BufReader::with_capacity(256 * 1024, File::open(&self.mf_path)?);
        let mut dir = RelPath::root();
        let mut line = String::new();
        let mut n = 0u64;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                break;
            }
            n += 1;
            let l = line.strip_suffix('\n').unwrap_or(&line);
            if n == 1 || l.starts_with("S ") || l.starts_with("R ") {
                continue;
            }
            if let Some(d) = l.strip_prefix("D ") {
                dir = RelPath::from_escaped(d).map_err(|e| corrupt(&self.mf_path, e))?;
                continue;
            }
            let fields = line_fields(l).map_err(|e| corrupt(&self.mf_path, e))?;
            let kind = fields[0]
                .chars()
                .next()
                .and_then(Kind::from_code)
                .ok_or_else(|| {
                    corrupt(&self.mf_path, format!("bad kind in manifest line {l:?}"))
                })?;
            let size = fields[4]
                .parse()
                .map_err(|_| corrupt(&self.mf_path, format!("bad size in manifest line {l:?}")))?;
            f(&dir, kind, size)?;
        }
        Ok(())
    }

    /// Every (directory, entry) in file order, streaming (for verify, list, diff).
    pub fn for_each(&self, mut f: impl FnMut(&RelPath, Entry) -> io::Result<()>) -> io::Result<()> {
        let r = BufReader::new(File::open(&self.mf_path)?);
        let mut dir = RelPath::root();
        for (n, line) in r.lines().enumerate() {
            let line = line?;
            if n == 0 || line.starts_with("S ") {
                continue;
            }
            if let Some(d) = line.strip_prefix("D ") {
                dir = RelPath::from_escaped(d).map_err(|e| corrupt(&self.mf_path, e))?;
            } else if line.starts_with("R ") {
                continue;
            } else {
                f(
                    &dir,
                    self.read_entry(&line)
                        .map_err(|e| corrupt(&self.mf_path, e))?,
                )?;
            }
        }
        Ok(())
    }
}

/// The fields of an entry line (13, separated by single spaces; no field holds a space,
/// names and targets are escaped), or what is wrong with it.
pub fn line_fields(line: &str) -> Result<[&str; 13], String> {
    let mut f = [""; 13];
    let mut it = line.split(' ');
    for (i, slot) in f.iter_mut().enumerate() {
        *slot = it
            .next()
            .ok_or_else(|| format!("manifest line has {i} fields, expected 13: {line:?}"))?;
    }
    if it.next().is_some() {
        return Err(format!(
            "manifest line has more than 13 fields, expected 13: {line:?}"
        ));
    }
    Ok(f)
}

/// Binary search by name in a directory's sorted entries.
pub fn find<'a>(entries: &'a [Entry], name: &[u8]) -> Option<&'a Entry> {
    entries
        .binary_search_by(|e| e.name.as_slice().cmp(name))
        .ok()
        .map(|i| &entries[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &[u8], kind: Kind) -> Entry {
        Entry {
            name: name.to_vec(),
            kind,
            perm: 0o4755,
            uid: 1000,
            gid: 100,
            size: 42,
            mtime: Time {
                sec: -5,
                nsec: 123_456_789,
            },
            ctime: Time {
                sec: 1_700_000_000,
                nsec: 1,
            },
            hash: Some(blake3::hash(b"x")),
            xattrs: Some("abc".into()),
            ino: 77,
            group: Some(77),
            target: (kind == Kind::Symlink).then(|| b"-".to_vec()),
            rdev: if kind == Kind::Char { 0x0501 } else { 0 },
            refused: Vec::new(),
        }
    }

    #[test]
    fn line_round_trip_with_odd_names() {
        for (n, k) in [
            (&b"a b\nc"[..], Kind::File),
            (b"\xff\"'%", Kind::Symlink),
            (b"-", Kind::Char),
        ] {
            let e = entry(n, k);
            assert_eq!(Entry::parse_line(&e.to_line()).unwrap(), e);
        }
    }

    /// The attributes the store refused (field 12, `x=`) read back as written, odd names
    /// too; the line keeps its 13 fields, and its other fields are what a reader before
    /// the addition reads (it ignores field 12 of a file). Not written for a symlink or
    /// a device, whose field 12 is their own.
    #[test]
    fn refused_attribute_names_round_trip_in_field_12_of_files_only() {
        let mut e = entry(b"f", Kind::File);
        e.refused = vec![
            b"system.posix_acl_access".to_vec(),
            b"user.a,b c%\xff".to_vec(),
        ];
        let line = e.to_line();
        let f = line_fields(&line).unwrap();
        assert_eq!(f[11], "x=system.posix_acl_access,user.a%2Cb%20c%25%FF");
        assert_eq!(Entry::parse_line(&line).unwrap(), e);
        let mut plain = e.clone();
        plain.refused.clear();
        assert_eq!(line.replace(f[11], "-"), plain.to_line());
        for bad in ["x=,a", "x=a,", "x=%zz"] {
            assert!(
                Entry::parse_line(&line.replace(f[11], bad)).is_err(),
                "{bad}"
            );
        }
        for k in [Kind::Symlink, Kind::Char] {
            let mut e = entry(b"s", k);
            e.refused = vec![b"user.a".to_vec()];
            let back = Entry::parse_line(&e.to_line()).unwrap();
            assert!(back.refused.is_empty() && back.target == e.target && back.rdev == e.rdev);
        }
    }

    /// A block copied as text (`write_raw_block`, a shard finalize's merge) reads back as
    /// the block written entry by entry, and `for_each_kind_size` sees what `for_each`
    /// sees.
    #[test]
    fn a_raw_block_reads_as_the_parsed_one_and_kind_size_match_for_each() {
        let dir = tempfile::tempdir().unwrap();
        let d = RelPath::new(b"a/b c").unwrap();
        let mut es = vec![
            entry(b"z", Kind::File),
            entry(b"a\n", Kind::Symlink),
            entry(b"m", Kind::Char),
        ];
        let mut w = Writer::part(dir.path(), "p", Time { sec: 1, nsec: 0 }).unwrap();
        w.write_block(&d, &mut es).unwrap();
        w.finish(&entry(b".", Kind::Dir)).unwrap();
        let text = std::fs::read_to_string(dir.path().join("p.mf")).unwrap();
        let lines: String = text
            .lines()
            .filter(|l| l.len() > 2 && !l.starts_with("D ") && !l.starts_with("S "))
            .filter(|l| !l.starts_with("R ") && !l.starts_with("snapring-"))
            .map(|l| format!("{l}\n"))
            .collect();
        for l in lines.lines() {
            assert!(line_fields(l).is_ok());
        }
        assert!(line_fields("a b").is_err());
        assert!(line_fields(&format!("{} x", lines.lines().next().unwrap())).is_err());
        let mut w = Writer::create(dir.path(), "r", Time { sec: 1, nsec: 0 }).unwrap();
        w.write_raw_block(&d, &lines, 3).unwrap();
        assert_eq!(w.entries(), 3);
        w.write_block(&RelPath::new(b"e").unwrap(), &mut [entry(b"f", Kind::File)])
            .unwrap();
        w.finish(&entry(b".", Kind::Dir)).unwrap();
        let r = Reader::open(dir.path(), "r").unwrap();
        assert_eq!(r.lookup(&d).unwrap().unwrap(), es);
        assert_eq!(
            r.lookup(&RelPath::new(b"e").unwrap()).unwrap().unwrap(),
            vec![entry(b"f", Kind::File)]
        );
        let mut all = Vec::new();
        r.for_each(|d, e| {
            all.push((d.clone(), e.kind, e.size));
            Ok(())
        })
        .unwrap();
        let mut ks = Vec::new();
        r.for_each_kind_size(|d, k, n| {
            ks.push((d.clone(), k, n));
            Ok(())
        })
        .unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all, ks);
    }

    /// An entry of a block already written is corrected at `finish` ([`Writer::correct`]):
    /// the block is written again (one line longer, one shorter, and one the same
    /// length), its first copy overwritten by start lines. Looked up, read through, and
    /// read by kind and size, the manifest holds each block once, corrected; the start
    /// time is read as it was. The same in a shard unit's part, read through.
    #[test]
    fn an_entry_corrected_after_its_block_is_written_reads_once_corrected() {
        for part in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let started = Time {
                sec: 1_765_000_000,
                nsec: 7,
            };
            let mut w = match part {
                false => Writer::create(dir.path(), "r1", started).unwrap(),
                true => Writer::part(dir.path(), "r1", started).unwrap(),
            };
            let (a, b) = (RelPath::new(b"a").unwrap(), RelPath::new(b"b").unwrap());
            w.write_block(&a, &mut [entry(b"f", Kind::File), entry(b"s", Kind::Dir)])
                .unwrap();
            w.write_block(&b, &mut [entry(b"t", Kind::Dir), entry(b"u", Kind::Dir)])
                .unwrap();
            let fix = |name: &[u8], uid: u32, sec: i64| Entry {
                uid,
                mtime: Time { sec, nsec: 5 },
                ..entry(name, Kind::Dir)
            };
            w.correct(&a, fix(b"s", 1_000_000, 1_765_000_001));
            w.correct(&b, fix(b"t", 7, 1_765_000_002));
            w.correct(&b, fix(b"u", 1000, -5));
            w.write_block(
                &RelPath::root(),
                &mut [entry(b"a", Kind::Dir), entry(b"b", Kind::Dir)],
            )
            .unwrap();
            w.finish(&entry(b".", Kind::Dir)).unwrap();
            let text = std::fs::read_to_string(dir.path().join("r1.mf")).unwrap();
            let blocks: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("D ")).collect();
            // The root's block, then the corrected copies.
            assert_eq!(blocks.len(), 3, "{text}");
            assert_eq!(blocks[1..], ["a", "b"], "{text}");
            let wanted = |d: &RelPath, e: &Entry| -> Entry {
                match (d.as_bytes(), e.name.as_slice()) {
                    (b"a", b"s") => fix(b"s", 1_000_000, 1_765_000_001),
                    (b"b", b"t") => fix(b"t", 7, 1_765_000_002),
                    (b"b", b"u") => fix(b"u", 1000, -5),
                    _ => e.clone(),
                }
            };
            if part {
                // Read through as finalize does: the start lines say the start time.
                for l in text.lines().filter(|l| l.starts_with("S ")) {
                    assert_eq!(l[2..].parse::<Time>(), Ok(started), "{l:?}");
                }
                continue;
            }
            let r = Reader::open(dir.path(), "r1").unwrap();
            assert_eq!(r.started, started);
            for d in [&a, &b] {
                let es = r.lookup(d).unwrap().unwrap();
                assert_eq!(es.len(), 2);
                for e in &es {
                    assert_eq!(*e, wanted(d, e), "{d}");
                }
            }
            let mut seen = Vec::new();
            r.for_each(|d, e| {
                assert_eq!(e, wanted(d, &e), "{d}");
                seen.push((d.clone(), e.name));
                Ok(())
            })
            .unwrap();
            assert_eq!(seen.len(), 6, "{seen:?}");
            let mut n = 0;
            r.for_each_kind_size(|_, _, _| {
                n += 1;
                Ok(())
            })
            .unwrap();
            assert_eq!(n, 6);
        }
    }

    #[test]
    fn write_then_look_up_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), "r1", Time { sec: 5, nsec: 6 }).unwrap();
        let dirs: Vec<RelPath> = (0..500)
            .map(|i| RelPath::new(format!("d{i}/x y").as_bytes()).unwrap())
            .collect();
        for (i, d) in dirs.iter().enumerate() {
            w.write_block(
                d,
                &mut [
                    entry(format!("z{i}").as_bytes(), Kind::File),
                    entry(b"a", Kind::Dir),
                ],
            )
            .unwrap();
        }
        w.write_block(&RelPath::root(), &mut []).unwrap();
        w.finish(&entry(b".", Kind::Dir)).unwrap();
        let r = Reader::open(dir.path(), "r1").unwrap();
        for (i, d) in dirs.iter().enumerate() {
            let es = r.lookup(d).unwrap().unwrap();
            assert_eq!(es.len(), 2);
            assert_eq!(es[0].name, b"a");
            assert!(find(&es, format!("z{i}").as_bytes()).is_some());
        }
        assert_eq!(r.lookup(&RelPath::root()).unwrap(), Some(vec![]));
        assert_eq!(r.lookup(&RelPath::new(b"nope").unwrap()).unwrap(), None);
        assert_eq!(r.root().unwrap().name, b".");
        assert_eq!(r.started, Time { sec: 5, nsec: 6 });
        let mut n = 0;
        r.for_each(|_, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1000);
    }
}
