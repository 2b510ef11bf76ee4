//! Reading a snapshot directory by directory: the one seam through which restore, diff
//! and verify read a snapshot, or a live tree. [`SnapshotReader`] names the operations;
//! [`TreeReader`] implements them for a tree on disk: a hard-link store's snapshot (its
//! directory, plus its manifest when it has one) or a live directory; `restic::reader`
//! implements them for a snapshot of a restic repository. Reads only.
//!
//! A directory is opened by name relative to its parent's open directory, never by a
//! path from the root: depth is unlimited (no PATH_MAX), no symlink is followed, and
//! nothing outside the tree can be reached. Listing gives names only where a stat is
//! needed, so the stats of one large directory are spread over the walk's workers
//! (`traverse` chunks) instead of being made by the one worker that listed it.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::io::Errno;

use crate::fsx::{self, Kind, Meta, XattrTarget, Xattrs, b};
use crate::manifest::{self, Entry};
use crate::relpath::RelPath;

/// One name of a directory's listing.
#[derive(Clone, Debug)]
pub enum Listed {
    /// An entry the snapshot's record describes completely (a manifest entry): no tree
    /// I/O is needed to know it.
    Recorded(Entry),
    /// A name read from the tree, with the record's entry for that name when the reader
    /// keeps one beside the tree (for its hash and hard-link group), and its kind when
    /// the listing gave it (`d_type`).
    Name(Vec<u8>, Option<Entry>, Option<Kind>),
}

impl Listed {
    pub fn name(&self) -> &[u8] {
        match self {
            Listed::Recorded(e) => &e.name,
            Listed::Name(n, ..) => n,
        }
    }
}

/// A name on which a snapshot's tree and its record (manifest block) disagree: the
/// snapshot is damaged there, and the name is not listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub name: Vec<u8>,
    /// What disagrees, for a report.
    pub why: String,
}

/// What a reader knows about one entry.
#[derive(Clone, Debug)]
pub struct Stat {
    /// The facts compared and restored: type, mode, owner, size, mtime, symlink target,
    /// device number, xattr digest (as far as the reader reads them), recorded hash,
    /// hard-link group.
    pub entry: Entry,
    /// The tree's own `lstat` (allocated blocks, link count, the tree's inode), when the
    /// entry was read from a tree; `None` for an entry known from a record only.
    pub meta: Option<Meta>,
    /// The entry's hash, hard-link group and xattr digest are the snapshot's record
    /// (its manifest): `entry.xattrs == None` then means the entry has no extended
    /// attributes, with no need to list them.
    pub recorded: bool,
}

/// Reads one snapshot (or tree). Methods run on the walk's workers, concurrently.
pub trait SnapshotReader: Sync {
    /// An open directory: a descriptor, a manifest block's path, a tree blob's id.
    type Dir: Send + Sync;

    /// Opens the root directory.
    fn root(&self) -> io::Result<Self::Dir>;

    /// Opens directory `name` of `parent`, relative to it. Never follows a symlink:
    /// `ELOOP`/`ENOTDIR` when `name` is not a directory, `ENOENT` when it is not there.
    fn open_dir(&self, parent: &Self::Dir, name: &[u8]) -> io::Result<Self::Dir>;

    /// `dir`'s names, sorted by bytes.
    fn list(&self, dir: &Self::Dir) -> io::Result<Vec<Listed>>;

    /// [`list`](Self::list), with where the directory's tree and its record disagree
    /// (a reader keeping a record beside a tree: [`Damage`]); the names listed are
    /// those [`list`](Self::list) gives.
    fn list_checked(&self, dir: &Self::Dir) -> io::Result<(Vec<Listed>, Vec<Damage>)> {
        Ok((self.list(dir)?, Vec::new()))
    }

    /// One name of `dir` as [`list`](Self::list) would give it, without listing `dir`
    /// (`ENOENT` when a record-only reader does not have it).
    fn find(&self, dir: &Self::Dir, name: &[u8]) -> io::Result<Listed>;

    /// The facts of one listed name (`ENOENT`: gone since it was listed).
    fn stat(&self, dir: &Self::Dir, item: Listed) -> io::Result<Stat>;

    /// [`stat`](Self::stat) of a listed name, with a regular file opened to read (as
    /// [`open_file`](Self::open_file)) when the listing said it is one: its facts then
    /// come from the open descriptor, which over NFS or FUSE saves the lookup and
    /// permission checks of a stat by name before the open. No descriptor when the
    /// reader does not know the kind from the listing; the caller opens it if it must.
    fn stat_open(&self, dir: &Self::Dir, item: Listed) -> io::Result<(Stat, Option<OwnedFd>)> {
        Ok((self.stat(dir, item)?, None))
    }

    /// The metadata of the open directory itself.
    fn dir_meta(&self, dir: &Self::Dir) -> io::Result<Meta>;

    /// The record of the open directory itself (its parent's entry for it, or the
    /// snapshot's root line), when the reader keeps a record beside a tree: what a
    /// restore checks the directory's metadata against. `None` by default.
    fn recorded_dir(&self, _dir: &Self::Dir) -> Option<Entry> {
        None
    }

    /// The BLAKE3 of regular file `e` of `dir`: its recorded hash, else its bytes read
    /// now; `None` when the reader has neither (a record without its tree).
    fn hash(&self, dir: &Self::Dir, e: &Entry) -> io::Result<Option<blake3::Hash>>;

    /// Opens regular file `name` of `dir` to read its bytes (without touching its atime).
    fn open_file(&self, dir: &Self::Dir, name: &[u8]) -> io::Result<OwnedFd>;

    /// The extended attributes of entry `name` of `dir`, or of `dir` itself (`None`).
    fn xattrs(&self, dir: &Self::Dir, name: Option<&[u8]>) -> io::Result<Xattrs>;

    /// The target of symlink `name` of `dir`.
    fn read_link(&self, dir: &Self::Dir, name: &[u8]) -> io::Result<Vec<u8>>;
}

/// How a [`TreeReader`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The manifest's entries only; the tree is never touched.
    Manifest,
    /// The tree as it is: `lstat`, symlink targets, xattr digests; bytes hashed on demand.
    Tree,
    /// The tree's names and `lstat`, with the manifest's hash and hard-link group for
    /// each name; symlink targets and xattrs are read only when asked for.
    Restore,
}

/// A directory tree on disk: a snapshot of the hard-link store (with its manifest, when
/// it has one) or a live directory.
pub struct TreeReader<'a> {
    root: BorrowedFd<'a>,
    manifest: Option<&'a manifest::Reader>,
    mode: Mode,
    /// The directories whose manifest block did not read, and why
    /// ([`TreeReader::unusable_blocks`]).
    unusable: std::sync::Mutex<Vec<(RelPath, String)>>,
}

/// An open directory of a [`TreeReader`].
pub struct TreeDir {
    /// From the tree's root: the manifest's key for the directory.
    rel: RelPath,
    /// `None` when the directory is read from the manifest only.
    fd: Option<OwnedFd>,
}

impl<'a> TreeReader<'a> {
    /// What a snapshot records: its manifest's entries and hashes when it has a usable
    /// manifest (the tree is not read at all), else its tree as it is.
    /// `root`: the snapshot's tree; `manifest`: its manifest, if it has a usable one.
    pub fn recorded(root: BorrowedFd<'a>, manifest: Option<&'a manifest::Reader>) -> Self {
        match manifest {
            Some(m) => TreeReader {
                root,
                manifest: Some(m),
                mode: Mode::Manifest,
                unusable: Default::default(),
            },
            None => TreeReader::tree(root),
        }
    }

    /// A tree as it is now: a live directory, or a snapshot read back to be checked
    /// against its manifest.
    pub fn tree(root: BorrowedFd<'a>) -> Self {
        TreeReader {
            root,
            manifest: None,
            mode: Mode::Tree,
            unusable: Default::default(),
        }
    }

    /// A snapshot to copy out: names and metadata from its tree, hashes and hard-link
    /// groups from its manifest (a tree without one: groups from the link count).
    pub fn for_restore(root: BorrowedFd<'a>, manifest: Option<&'a manifest::Reader>) -> Self {
        TreeReader {
            root,
            manifest,
            mode: Mode::Restore,
            unusable: Default::default(),
        }
    }

    /// The manifest's block for `dir`, when this reader keeps the manifest beside the
    /// tree. A damaged block is warned about and read as absent.
    fn block(&self, dir: &TreeDir) -> Option<Vec<Entry>> {
        let m = self.manifest?;
        m.lookup(&dir.rel).unwrap_or_else(|e| {
            tracing::warn!("manifest unusable for {}: {e}", dir.rel);
            self.unusable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((dir.rel.clone(), e.to_string()));
            None
        })
    }

    /// The directories whose manifest block was damaged when read, and the error, taken
    /// (a restore reports their content as unchecked).
    pub fn unusable_blocks(&self) -> Vec<(RelPath, String)> {
        let mut v = std::mem::take(&mut *self.unusable.lock().unwrap_or_else(|p| p.into_inner()));
        v.sort();
        v.dedup_by(|a, b| a.0 == b.0);
        v
    }

    /// What [`SnapshotReader::stat`] says of entry `name` of `d`, whose `lstat` is `m`
    /// and whose record (in Restore mode) is `rec`.
    fn facts(&self, d: BorrowedFd<'_>, name: &[u8], mut m: Meta, rec: Option<Entry>) -> Stat {
        if let Some(r) = &rec {
            self.true_owner(&mut m, r);
        }
        let mut e = Entry::from_meta(name, &m);
        let mut recorded = false;
        match self.mode {
            Mode::Tree => {
                if m.kind == Kind::Symlink {
                    e.target = fsx::read_link_at(d, name).ok();
                }
                // By name (one `llistxattr`), not by opening the file (open + list + close).
                let xs = fsx::read_xattrs(&XattrTarget::At(d, name));
                e.xattrs = xs.ok().and_then(|x| fsx::xattr_digest(&x));
            }
            // With a manifest, its record says which entries were one inode at the
            // source (every file of a snapshot has several links: the older snapshots'),
            // and whether the entry has extended attributes at all.
            Mode::Restore => {
                if let Some(r) = rec {
                    e.hash = r.hash;
                    e.group = r.group;
                    e.xattrs = r.xattrs;
                    recorded = true;
                }
            }
            Mode::Manifest => {}
        }
        Stat {
            entry: e,
            meta: Some(m),
            recorded,
        }
    }

    /// In Restore mode, of a snapshot whose store kept no owners (`manifest::owners_marker`:
    /// every file of its tree is owned by the store's user), `m` gets the owner its
    /// record `r` has, the source's: the one a restore gives back. Of one whose store
    /// kept times coarser than the source's (`manifest::times_marker`: whole seconds),
    /// `m` gets the record's exact mtime where the tree's is the same to the store's
    /// granularity (a tree changed since keeps its own). Every other fact is the
    /// tree's, as for any snapshot (the markers say only these are not there).
    fn true_owner(&self, m: &mut Meta, r: &Entry) {
        let Some(mf) = self.manifest.filter(|_| self.mode == Mode::Restore) else {
            return;
        };
        if r.kind != m.kind {
            return;
        }
        if mf.owners_held.is_some() {
            (m.uid, m.gid) = (r.uid, r.gid);
        }
        if let Some(g) = mf.times_held
            && r.mtime.kept_as(m.mtime, g)
        {
            m.mtime = r.mtime;
        }
    }

    /// The record of directory `rel` itself (its parent's entry for it, or the root
    /// line), when its owner or time is wanted from the manifest
    /// ([`TreeReader::true_owner`]).
    fn dir_record(&self, rel: &RelPath) -> Option<Entry> {
        let mf = self
            .manifest
            .filter(|mf| mf.owners_held.is_some() || mf.times_held.is_some())?;
        if self.mode != Mode::Restore {
            return None;
        }
        if rel.is_root() {
            return mf.root().ok();
        }
        let block = mf.lookup(&rel.parent()).ok()??;
        manifest::find(&block, rel.file_name()).cloned()
    }
}

fn fd(dir: &TreeDir) -> io::Result<BorrowedFd<'_>> {
    dir.fd.as_ref().map(b).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "read from the manifest only: no tree to read",
        )
    })
}

impl SnapshotReader for TreeReader<'_> {
    type Dir = TreeDir;

    fn root(&self) -> io::Result<TreeDir> {
        let fd = match self.mode {
            Mode::Manifest => None,
            _ => Some(fsx::open_dir_at(self.root, b".")?),
        };
        Ok(TreeDir {
            rel: RelPath::root(),
            fd,
        })
    }

    fn open_dir(&self, parent: &TreeDir, name: &[u8]) -> io::Result<TreeDir> {
        let fd = match self.mode {
            Mode::Manifest => None,
            _ => Some(fsx::open_dir_at(fd(parent)?, name)?),
        };
        Ok(TreeDir {
            rel: parent.rel.join(name),
            fd,
        })
    }

    fn list(&self, dir: &TreeDir) -> io::Result<Vec<Listed>> {
        if self.mode == Mode::Manifest {
            let block = self.manifest.expect("manifest mode").lookup(&dir.rel)?;
            return Ok(block
                .unwrap_or_default()
                .into_iter()
                .map(Listed::Recorded)
                .collect());
        }
        Ok(self.list_checked(dir)?.0)
    }

    fn list_checked(&self, dir: &TreeDir) -> io::Result<(Vec<Listed>, Vec<Damage>)> {
        if self.mode == Mode::Manifest {
            return Ok((self.list(dir)?, Vec::new()));
        }
        // Through the directory's own descriptor (listed once, by the worker that opened
        // it): no second open of it, and a large buffer (fewer READDIR round trips).
        let mut names = fsx::list_dir_typed(fd(dir)?)?;
        // A removed directory lists as empty: say it is gone instead (an expiry
        // deleting the snapshot under its reader must not pass for an empty directory).
        // Only an empty listing can be one, so only then the `fstat` (a round trip).
        if names.is_empty() && fsx::fstat(fd(dir)?)?.nlink == 0 {
            return Err(io::Error::from_raw_os_error(Errno::NOENT.raw_os_error()));
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let Some(block) = self.block(dir) else {
            let l = names
                .into_iter()
                .map(|(n, k)| Listed::Name(n, None, k))
                .collect();
            return Ok((l, Vec::new()));
        };
        // Both sorted by name: one merge, no lookups.
        let mut damage = Vec::new();
        let l = merge(names, block, &mut damage);
        Ok((l, damage))
    }

    fn find(&self, dir: &TreeDir, name: &[u8]) -> io::Result<Listed> {
        match self.mode {
            Mode::Manifest => {
                let es = self.manifest.expect("manifest mode").lookup(&dir.rel)?;
                es.and_then(|es| manifest::find(&es, name).cloned())
                    .map(Listed::Recorded)
                    .ok_or_else(|| Errno::NOENT.into())
            }
            Mode::Tree => Ok(Listed::Name(name.to_vec(), None, None)),
            // A name the directory's usable manifest block does not record was not
            // backed up (as in `list`): the snapshot does not have it, whatever its tree
            // holds.
            Mode::Restore => match self.block(dir) {
                Some(es) => manifest::find(&es, name)
                    .map(|r| Listed::Name(name.to_vec(), Some(r.clone()), None))
                    .ok_or_else(|| Errno::NOENT.into()),
                None => Ok(Listed::Name(name.to_vec(), None, None)),
            },
        }
    }

    fn stat(&self, dir: &TreeDir, item: Listed) -> io::Result<Stat> {
        let (name, rec) = match item {
            Listed::Recorded(e) => {
                return Ok(Stat {
                    entry: e,
                    meta: None,
                    recorded: true,
                });
            }
            Listed::Name(n, rec, _) => (n, rec),
        };
        let d = fd(dir)?;
        let m = fsx::lstat_at(d, &name)?;
        same_kind(&rec, &m)?;
        Ok(self.facts(d, &name, m, rec))
    }

    fn stat_open(&self, dir: &TreeDir, item: Listed) -> io::Result<(Stat, Option<OwnedFd>)> {
        let Listed::Name(name, rec, Some(Kind::File)) = item else {
            return Ok((self.stat(dir, item)?, None));
        };
        if self.mode != Mode::Restore {
            return Ok((self.stat(dir, Listed::Name(name, rec, None))?, None));
        }
        let d = fd(dir)?;
        // O_NOFOLLOW and O_NONBLOCK: whatever the name is now, the open neither follows
        // a symlink nor waits on a fifo; anything but a regular file is stated by name.
        // The attributes the open has just checked (a snapshot's file does not change).
        let opened = fsx::open_read_at(d, &name).and_then(|f| {
            let m = fsx::fstat_cached(b(&f)).map_or_else(|| fsx::fstat(b(&f)), Ok)?;
            Ok((m, f))
        });
        match opened {
            Ok((m, f)) if m.kind == Kind::File => {
                same_kind(&rec, &m)?;
                Ok((self.facts(d, &name, m, rec), Some(f)))
            }
            Err(e) if fsx::errno_is(&e, Errno::NOENT) => Err(e),
            _ => Ok((self.stat(dir, Listed::Name(name, rec, None))?, None)),
        }
    }

    fn dir_meta(&self, dir: &TreeDir) -> io::Result<Meta> {
        let mut m = fsx::fstat(fd(dir)?)?;
        if let Some(r) = self.dir_record(&dir.rel) {
            self.true_owner(&mut m, &r);
        }
        Ok(m)
    }

    fn recorded_dir(&self, dir: &TreeDir) -> Option<Entry> {
        let mf = self.manifest.filter(|_| self.mode == Mode::Restore)?;
        if dir.rel.is_root() {
            return mf.root().ok();
        }
        let block = self.block(&TreeDir {
            rel: dir.rel.parent(),
            fd: None,
        })?;
        manifest::find(&block, dir.rel.file_name()).cloned()
    }

    fn hash(&self, dir: &TreeDir, e: &Entry) -> io::Result<Option<blake3::Hash>> {
        if e.hash.is_some() || self.mode == Mode::Manifest {
            return Ok(e.hash);
        }
        let f = fsx::open_read_at(fd(dir)?, &e.name)?;
        fsx::hash_file(b(&f)).map(Some)
    }

    fn open_file(&self, dir: &TreeDir, name: &[u8]) -> io::Result<OwnedFd> {
        fsx::open_read_at(fd(dir)?, name)
    }

    fn xattrs(&self, dir: &TreeDir, name: Option<&[u8]>) -> io::Result<Xattrs> {
        let d = fd(dir)?;
        match name {
            Some(n) => fsx::read_xattrs(&XattrTarget::At(d, n)),
            None => fsx::read_xattrs(&XattrTarget::Fd(d)),
        }
    }

    fn read_link(&self, dir: &TreeDir, name: &[u8]) -> io::Result<Vec<u8>> {
        fsx::read_link_at(fd(dir)?, name)
    }
}

/// A Restore-mode listing: the tree's `names` (sorted, with their `d_type`) merged with
/// the directory's manifest `block` (sorted): one pass, no lookups. Only names both
/// have, of the same type as far as the listing tells, are listed; every other name
/// goes to `damage` (a name the tree has and the manifest does not was not backed up).
fn merge(
    names: Vec<(Vec<u8>, Option<Kind>)>,
    block: Vec<Entry>,
    damage: &mut Vec<Damage>,
) -> Vec<Listed> {
    let mut recs = block.into_iter().peekable();
    let mut out = Vec::with_capacity(names.len());
    for (n, k) in names {
        while let Some(r) = recs.next_if(|r| r.name < n) {
            damage.push(Damage {
                why: format!(
                    "the snapshot's manifest records a {} here, its tree has nothing (the snapshot is damaged): not restored",
                    r.kind.name()
                ),
                name: r.name,
            });
        }
        match recs.next_if(|r| r.name == n) {
            Some(r) => match k {
                Some(k) if k != r.kind => damage.push(Damage {
                    why: kind_mismatch(r.kind, k),
                    name: n,
                }),
                _ => out.push(Listed::Name(n, Some(r), k)),
            },
            None => damage.push(Damage {
                name: n,
                why: "in the snapshot's tree, not in its manifest (not part of the backup: the snapshot was changed): not restored".into(),
            }),
        }
    }
    damage.extend(recs.map(|r| Damage {
        why: format!(
            "the snapshot's manifest records a {} here, its tree has nothing (the snapshot is damaged): not restored",
            r.kind.name()
        ),
        name: r.name,
    }));
    damage.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn kind_mismatch(recorded: Kind, found: Kind) -> String {
    format!(
        "the snapshot's manifest records a {}, its tree has a {} (the snapshot is damaged): not restored",
        recorded.name(),
        found.name()
    )
}

/// In Restore mode, the tree's entry `m` must be of the type its record `rec` says.
fn same_kind(rec: &Option<Entry>, m: &Meta) -> io::Result<()> {
    match rec {
        Some(r) if r.kind != m.kind => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            kind_mismatch(r.kind, m.kind),
        )),
        _ => Ok(()),
    }
}

/// Opens directory `rel` under `root` without leaving it or following a symlink, at any
/// depth: one `openat2` per stretch of components shorter than PATH_MAX.
pub fn open_beneath(root: BorrowedFd<'_>, rel: &RelPath) -> io::Result<OwnedFd> {
    const STRETCH: usize = 3072;
    if rel.as_bytes().len() <= STRETCH {
        return fsx::open_dir_beneath(root, rel.as_bytes());
    }
    let mut cur = fsx::open_dir_at(root, b".")?;
    let mut part: Vec<u8> = Vec::new();
    for c in rel.components() {
        if !part.is_empty() && part.len() + 1 + c.len() > STRETCH {
            cur = fsx::open_dir_beneath(b(&cur), &part)?;
            part.clear();
        }
        if !part.is_empty() {
            part.push(b'/');
        }
        part.extend_from_slice(c);
    }
    fsx::open_dir_beneath(b(&cur), &part)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(l: &[Listed]) -> Vec<&[u8]> {
        l.iter().map(Listed::name).collect()
    }

    #[test]
    fn a_tree_is_listed_sorted_and_stat_ed_by_name_at_any_depth() {
        let t = tempfile::tempdir().unwrap();
        let root = fsx::open_dir(t.path()).unwrap();
        let long = vec![b'n'; 250];
        let mut cur = fsx::open_dir_at(b(&root), b".").unwrap();
        let mut rel = RelPath::root();
        for _ in 0..20 {
            fsx::mkdir_at(b(&cur), &long).unwrap();
            cur = fsx::open_dir_at(b(&cur), &long).unwrap();
            rel = rel.join(&long);
        }
        assert!(rel.as_bytes().len() > 4096);
        for n in [&b"b"[..], b"a", b"c"] {
            fsx::create_at(b(&cur), n).unwrap();
        }
        rustix::fs::symlinkat("a", &cur, "l").unwrap();

        let r = TreeReader::tree(b(&root));
        let mut dir = r.root().unwrap();
        for c in rel.components() {
            dir = r.open_dir(&dir, c).unwrap();
        }
        let l = r.list(&dir).unwrap();
        assert_eq!(names(&l), [&b"a"[..], b"b", b"c", b"l"]);
        let s = r.stat(&dir, l[3].clone()).unwrap();
        assert_eq!(s.entry.kind, Kind::Symlink);
        assert_eq!(s.entry.target.as_deref(), Some(&b"a"[..]));
        assert!(s.meta.is_some());
        let h = r.hash(&dir, &r.stat(&dir, l[0].clone()).unwrap().entry);
        assert_eq!(h.unwrap(), Some(blake3::hash(b"")));
        // A symlink is never followed as a directory; a missing name is ENOENT.
        let e = r.open_dir(&dir, b"l").err().unwrap();
        assert!(fsx::errno_is(&e, Errno::LOOP) || fsx::errno_is(&e, Errno::NOTDIR));
        let e = r.stat(&dir, r.find(&dir, b"zz").unwrap()).err().unwrap();
        assert!(fsx::errno_is(&e, Errno::NOENT));

        let deep = open_beneath(b(&root), &rel).unwrap();
        assert_eq!(fsx::read_dir_names(b(&deep)).unwrap().len(), 4);
        let e = open_beneath(b(&root), &rel.join(b"l")).err().unwrap();
        assert!(fsx::errno_is(&e, Errno::LOOP) || fsx::errno_is(&e, Errno::NOTDIR));
    }
}
