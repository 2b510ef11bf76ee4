//! The hard-link tree store as a backup [`Sink`]: the new snapshot is built in
//! `.snapring/staging/<run>/`, unchanged entries are hard links into the previous
//! snapshot, changed ones are copies made with as few calls as NFS allows, and the
//! manifest is written beside it. Every call is relative to an open directory (no
//! PATH_MAX, no symlink followed). Does the file I/O of a backup's writes.

use std::collections::HashMap;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustix::io::Errno;

use crate::fsx::{self, CopyError, Kind, Meta, XattrTarget, Xattrs, b};
use crate::manifest::{self, Entry};
use crate::relpath::RelPath;
use crate::sink::{CopyReason, Linked, Refused, Resumed, Sink};

use super::adopt::{self, Done};

/// One directory of the new snapshot, with the same directory in the previous snapshot
/// and in an interrupted run's staging tree, where they exist.
pub struct TreeDir {
    dst: OwnedFd,
    prev: Option<OwnedFd>,
    resume: Option<OwnedFd>,
    /// Its path in the snapshot (the adopted tree's record is by path).
    rel: Vec<u8>,
    /// In an adopted tree, a directory that was there: the names it still holds that
    /// this run has not written (removed before `finish_dir` sets its times).
    adopted: Option<Arc<Adopted>>,
}

/// A directory of an adopted tree that existed before this run.
pub struct Adopted {
    key: u64,
    fd: OwnedFd,
    /// Names not yet written by this run, with their kind as listed.
    names: Mutex<HashMap<Vec<u8>, Option<Kind>>>,
}

/// A regular file being copied into staging.
pub struct TreeFile {
    fd: OwnedFd,
    /// The mode it was created with.
    created_perm: u32,
    /// Its path in the snapshot, and the hash of its last complete write.
    rel: Vec<u8>,
    hash: std::cell::Cell<Option<[u8; 32]>>,
}

/// The adopted tree's bookkeeping ([`TreeSink::adopting`]).
struct Adopting {
    /// Whether the staging tree was an interrupted run's (else it was made empty).
    adopted: bool,
    /// Where the record is written when the run is cut (`record.tmp` as it runs).
    record: PathBuf,
    record_tmp: PathBuf,
    /// This run's start less the racy margin: the bound of the copies it makes.
    before: fsx::Time,
    /// The start (less the racy margin) of the first run that wrote into the tree.
    oldest: Option<fsx::Time>,
    /// Finished copies of earlier runs this run has not touched.
    carried: Mutex<HashMap<Vec<u8>, Done>>,
    /// The record of the copies this run made or kept, streamed as they finish (a run
    /// writes each name once, so none of them is ever taken back) through a 64 KiB
    /// buffer: a killed run's `.tmp` holds the header and the entries that reached
    /// it, not flushed to disk with their copies, so a later run trusts them only in
    /// this boot of this host ([`adopt::Record::untrusted`]).
    fresh: Mutex<Option<std::io::BufWriter<std::fs::File>>>,
    /// Adopted directories whose leftover names are not removed yet.
    open: Mutex<HashMap<u64, Arc<Adopted>>>,
    next: AtomicU64,
    /// `.snapring/trash`, for directories the source no longer has, and their prefix.
    trash: OwnedFd,
    trash_prefix: String,
}

/// What [`Sink::still_refuses_xattr`] found in a run: by (name, value length, kind
/// probed), whether the store refused it; the names it refused as not supported, by
/// kind probed ([`probe_kind`]).
type XattrProbes = (
    HashMap<(Vec<u8>, usize, Kind), bool>,
    std::collections::HashSet<(Vec<u8>, Kind)>,
);

pub struct TreeSink {
    staging: OwnedFd,
    prev: Option<OwnedFd>,
    resume: Option<OwnedFd>,
    manifest: Mutex<manifest::Writer>,
    /// The owner a file created in staging gets by itself (euid, egid), when the staging
    /// root has no setgid bit; a copy of a file with that owner needs no `fchown`.
    creates_as: Option<(u32, u32)>,
    /// When this process cannot give files away (no `CAP_CHOWN`) and [`creates_as`] is
    /// known: the groups it may give them to (a directory's owner is then foretold:
    /// [`Sink::dir_owner_held`]).
    chown_groups: Option<Vec<u32>>,
    /// The store refuses owners even to a process that may give files away (an NFS
    /// export with `root_squash`): every file there has this owner ([`owners_refused`]).
    /// No `fchown` is tried; the manifest records the source's owners all the same.
    owners_held: Option<(u32, u32)>,
    /// The store keeps file times to this many ns only ([`probe`]): the manifest
    /// records the source's exact times all the same.
    times_held: Option<u64>,
    umask: u32,
    /// The path the staging root has in the snapshot (a shard worker's unit starts at
    /// a directory of the source; the walk's paths are from the source's root).
    base: RelPath,
    /// List each previous-snapshot directory as it is opened ([`TreeSink::listing_prev`]).
    list_prev: bool,
    /// `staging` is an interrupted run's tree taken over in place.
    adopting: Option<Adopting>,
    /// What [`Sink::still_refuses_xattr`] found this run: by (name, value length),
    /// whether the store refused it; and the names it refused as not supported
    /// (whatever the value). Probes are few (one a name and length), one at a time.
    xattr_probes: Mutex<XattrProbes>,
}

impl TreeSink {
    /// `staging`: the new snapshot's root, created empty; `prev`: the previous
    /// snapshot's root; `resume`: an interrupted run's staging tree, and when that run's
    /// walk began (or earlier). A file copied there is reused only if its bytes hash as
    /// its source's do ([`Sink::resume`]): size, mtime, mode and owner alone do not tell
    /// a file replaced under the same name with the same size and mtime.
    pub fn new(
        staging: OwnedFd,
        prev: Option<OwnedFd>,
        resume: Option<(OwnedFd, fsx::Time)>,
        manifest: manifest::Writer,
    ) -> TreeSink {
        // The interrupted walk's start is not a bound of what this run takes from its
        // tree: each file's bytes are hashed as its source's, now ([`Sink::resume`]).
        let resume = resume.map(|(fd, _started)| fd);
        let creates_as = fsx::fstat(b(&staging))
            .ok()
            .filter(|m| m.perm & 0o2000 == 0)
            .map(|_| {
                (
                    rustix::process::geteuid().as_raw(),
                    rustix::process::getegid().as_raw(),
                )
            });
        TreeSink {
            staging,
            prev,
            resume,
            manifest: Mutex::new(manifest),
            chown_groups: creates_as.and_then(|(_, egid)| groups_without_chown(egid)),
            owners_held: None,
            times_held: None,
            creates_as,
            umask: fsx::process_umask(),
            base: RelPath::root(),
            list_prev: false,
            adopting: None,
            xattr_probes: Mutex::default(),
        }
    }

    /// Probes what the store keeps ([`probe`]): whether it keeps owners, when this
    /// process may give files away (where it does not, no `fchown` is tried, the
    /// manifest records the source's owners and is marked: `manifest::owners_marker`),
    /// and to what granularity it keeps times (where coarser than the nanosecond, the
    /// manifest records the source's exact times and is marked: `manifest::times_marker`).
    /// A single-node run's; a shard run's planner probes once for all its units
    /// ([`probe_store`], then [`TreeSink::held_by_store`]).
    pub fn probing_store(self) -> TreeSink {
        let chown = self.chown_groups.is_none() && may_chown();
        let p = probe(b(&self.staging), chown);
        self.held_by_store(p)
    }

    /// `m` with the owner the store keeps, when it keeps none of its own: no `fchown`
    /// is then tried (nor reported, file by file).
    fn kept(&self, m: &Meta) -> Meta {
        match self.owners_held {
            Some((uid, gid)) => Meta { uid, gid, ..*m },
            None => *m,
        }
    }

    /// [`check_copy`] of `name` in `dir` against the source `m` as this store keeps it
    /// (owners, time granularity).
    fn check_copy(
        &self,
        dir: &OwnedFd,
        name: &[u8],
        m: &Meta,
        src_xattrs: &dyn Fn() -> io::Result<Xattrs>,
        src_hash: &dyn Fn() -> io::Result<blake3::Hash>,
    ) -> Option<(blake3::Hash, Option<String>)> {
        let granularity = self.times_held.unwrap_or(0);
        check_copy(dir, name, &self.kept(m), granularity, src_xattrs, src_hash)
    }

    /// What the store keeps, as probed once for the run ([`probe`]; a shard run's
    /// planner: [`probe_store`]): where it keeps no owners (`owners_held`: the owner it
    /// gives every file) no `fchown` is tried; the manifest (part) records the source's
    /// owners and times all the same, and is marked (a shard run's manifest by
    /// finalize): `manifest::owners_marker`, `manifest::times_marker`.
    pub fn held_by_store(mut self, p: StoreProbe) -> TreeSink {
        if let Some(held) = p.owners_held {
            self.owners_held = Some(held);
            self.creates_as = Some(held);
        }
        self.times_held = p.times_held;
        let mf = self.manifest.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = p.owners_held {
            mf.owners_not_kept(held);
        }
        if let Some(g) = p.times_held {
            mf.times_not_kept(g);
        }
        self
    }

    /// Records the copies this run finishes (`adopt.rs`), so that the next run, if
    /// this one is cut, takes the tree over and keeps them in place. `adopted`: the
    /// tree is an interrupted run's, whose record is `record` (`None`: a new tree);
    /// `record_path`: where this run's goes (`.tmp` while it runs); `started`: this
    /// run's start; `trash`: `.snapring/trash`, where directories the source no longer
    /// has are moved, under names starting with `trash_prefix`.
    pub fn recording(
        mut self,
        adopted: Option<adopt::Record>,
        (record, record_tmp): (PathBuf, PathBuf),
        started: fsx::Time,
        trash: OwnedFd,
        trash_prefix: String,
    ) -> io::Result<TreeSink> {
        let before = adopt::margin(started);
        let is_adopted = adopted.is_some();
        let rec = adopted.unwrap_or(adopt::Record {
            oldest: Some(before),
            ..adopt::Record::default()
        });
        let oldest = adopt::earlier(rec.oldest, Some(before));
        // An adopted tree's record has its header already (`Store::adopt`).
        let f = match is_adopted {
            true => std::fs::OpenOptions::new().append(true).open(&record_tmp)?,
            false => crate::util::create_private(&record_tmp)?,
        };
        let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
        if !is_adopted {
            std::io::Write::write_all(&mut w, &adopt::header(oldest))?;
        }
        self.adopting = Some(Adopting {
            adopted: is_adopted,
            record,
            record_tmp,
            before,
            oldest,
            carried: Mutex::new(rec.done),
            fresh: Mutex::new(Some(w)),
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            trash,
            trash_prefix,
        });
        Ok(self)
    }

    /// Adds a finished copy to this run's record.
    fn record(&self, a: &Adopting, key: &[u8], d: &Done) {
        let mut v = Vec::new();
        adopt::entry(&mut v, key, d);
        let mut f = a.fresh.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = f.as_mut()
            && std::io::Write::write_all(w, &v).is_err()
        {
            // The record is lost from here on: the next run checks each copy.
            *f = None;
        }
    }

    /// Completes the record of the tree as this run leaves it, for the next run: the
    /// staging tree is flushed first (`syncfs`, as [`Sink::commit`] does), so that the
    /// record's end mark ([`adopt::SYNCED`]) tells any later run, after a power cut
    /// too, that every copy it names is on disk; then the record is synced, renamed,
    /// and its directory synced.
    fn write_record(&self) -> io::Result<()> {
        let Some(a) = &self.adopting else {
            return Ok(());
        };
        let w = a.fresh.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut w) = w else {
            return Err(io::Error::other("the record could not be written"));
        };
        fsx::sync_fs(b(&self.staging))?;
        let carried = a.carried.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = Vec::new();
        for (p, d) in carried.iter() {
            adopt::entry(&mut v, p, d);
            if v.len() >= 1 << 16 {
                std::io::Write::write_all(&mut w, &v)?;
                v.clear();
            }
        }
        adopt::synced_mark(&mut v);
        std::io::Write::write_all(&mut w, &v)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&a.record_tmp, &a.record)?;
        if let Some(dir) = a.record.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// `dst`, a directory of the adopted tree that was there: what it holds, for
    /// [`TreeSink::claim`] and `finish_dir`.
    fn adopted_dir(&self, dst: &OwnedFd) -> io::Result<Option<Arc<Adopted>>> {
        let Some(a) = self.adopting.as_ref().filter(|a| a.adopted) else {
            return Ok(None);
        };
        let mut names = HashMap::new();
        fsx::read_dir_typed(b(dst), |n, k| {
            names.insert(n.to_vec(), k);
        })?;
        let d = Arc::new(Adopted {
            key: a.next.fetch_add(1, Ordering::Relaxed),
            fd: fsx::open_dir_at(b(dst), b".")?,
            names: Mutex::new(names),
        });
        a.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d.key, d.clone());
        Ok(Some(d))
    }

    /// `name` in `dir` is about to be written by this run: what the adopted tree held
    /// there goes (and its record with it). `Ok(Some(kind))`: it held a directory,
    /// left in place for `mkdir` to reuse when `keep_dir`.
    fn claim(&self, dir: &TreeDir, name: &[u8], keep_dir: bool) -> io::Result<Option<Kind>> {
        let Some(ad) = &dir.adopted else {
            return Ok(None);
        };
        let Some(kind) = ad
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
        else {
            return Ok(None);
        };
        if let Some(a) = &self.adopting {
            a.carried
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&child(&dir.rel, name));
        }
        if keep_dir && kind == Some(Kind::Dir) {
            return Ok(kind);
        }
        self.remove_stale(&dir.dst, name, kind)?;
        Ok(None)
    }

    /// Removes `name` from `dst` (a file: unlinked; a directory: moved to trash).
    fn remove_stale(&self, dst: &OwnedFd, name: &[u8], kind: Option<Kind>) -> io::Result<()> {
        if kind != Some(Kind::Dir) {
            match fsx::unlink_at(b(dst), name) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e)
                    if kind.is_some()
                        || !(fsx::errno_is(&e, Errno::ISDIR) || fsx::errno_is(&e, Errno::PERM)) =>
                {
                    return Err(e);
                }
                Err(_) => {}
            }
        }
        let Some(a) = &self.adopting else {
            return Ok(());
        };
        let to = format!(
            "{}{}",
            a.trash_prefix,
            a.next.fetch_add(1, Ordering::Relaxed)
        );
        match fsx::rename_noreplace(b(dst), name, b(&a.trash), to.as_bytes()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Removes what adopted directory `ad` still holds that this run did not write.
    fn sweep(&self, ad: &Adopted) -> io::Result<()> {
        let names = std::mem::take(&mut *ad.names.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(a) = &self.adopting {
            a.open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ad.key);
        }
        for (n, k) in names {
            self.remove_stale(&ad.fd, &n, k)?;
        }
        Ok(())
    }

    /// A file of the adopted tree still holding its source's content: kept in place.
    fn resume_in_place(
        &self,
        dir: &TreeDir,
        name: &[u8],
        m: &Meta,
        src_xattrs: &dyn Fn() -> io::Result<Xattrs>,
        src_hash: &dyn Fn() -> io::Result<blake3::Hash>,
    ) -> Option<Resumed> {
        let (a, ad) = (self.adopting.as_ref()?, dir.adopted.as_ref()?);
        let listed = *ad
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)?;
        if !matches!(listed, None | Some(Kind::File)) {
            return None;
        }
        let key = child(&dir.rel, name);
        let known = a
            .carried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let done = match known {
            Some(d) if d.matches(m) => d,
            Some(_) => return None,
            // Not in the record (a run of the tree was killed before the entry reached
            // the record, or the record could not be trusted: `Store::adopt`): checked
            // as a copy in a separate tree is, against the first run of the tree's start.
            None => {
                let before = a.oldest?;
                if m.kind != Kind::File || m.ctime >= before {
                    return None;
                }
                let (hash, xattrs) = self.check_copy(&dir.dst, name, m, src_xattrs, src_hash)?;
                Done::new(hash, m, before, xattrs)
            }
        };
        ad.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        a.carried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.record(a, &key, &done);
        Some(Resumed {
            hash: blake3::Hash::from_bytes(done.hash),
            xattrs: done.xattrs,
        })
    }
}

/// The path of `name` in directory `dir` of the snapshot.
fn child(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut k = dir.to_vec();
    k.push(b'/');
    k.extend_from_slice(name);
    k
}

/// Whether `name` in `dir`, a copy an interrupted run made, is finished and of the
/// source `m` (its metadata, set last, matches, as the store keeps it: `m`'s owner the
/// one the store gives, times to `granularity` ns; its xattrs match the source's): its
/// hash and xattr digest.
fn check_copy(
    dir: &OwnedFd,
    name: &[u8],
    m: &Meta,
    granularity: u64,
    src_xattrs: &dyn Fn() -> io::Result<Xattrs>,
    src_hash: &dyn Fn() -> io::Result<blake3::Hash>,
) -> Option<(blake3::Hash, Option<String>)> {
    let s = fsx::lstat_at(b(dir), name).ok()?;
    if s.kind != m.kind
        || s.size != m.size
        || !m.mtime.kept_as(s.mtime, granularity)
        || s.perm != m.perm
        || s.uid != m.uid
        || s.gid != m.gid
    {
        return None;
    }
    let xs = src_xattrs().ok()?;
    if fsx::read_xattrs(&XattrTarget::At(b(dir), name)).ok()? != xs {
        return None;
    }
    let hash = fsx::open_read_at(b(dir), name)
        .and_then(|fd| fsx::hash_file(b(&fd)))
        .ok()?;
    // Equal metadata is not enough without a record: a file of a directory moved or
    // swapped since keeps its ctime, and a previous snapshot's inode linked here may
    // have rotted. Its bytes must be the source's.
    if src_hash().ok()? != hash {
        return None;
    }
    Some((hash, fsx::xattr_digest(&xs)))
}

impl TreeSink {
    /// The staging root is directory `base` of the snapshot being built: paths the
    /// walk gives (`link_within`'s first name) are made relative to it.
    pub fn rooted_at(mut self, base: RelPath) -> TreeSink {
        self.base = base;
        self
    }

    /// `on`: list each previous-snapshot directory when it is opened, before its names
    /// are linked. On NFS (and FUSE with READDIRPLUS) a listing fills the client's
    /// entry and attribute cache, one round trip per batch of names, so the `linkat` of
    /// each unchanged file then finds its previous version without a LOOKUP of its own.
    /// Worth it where calls cross a network; on a local disk it is only more work.
    pub fn listing_prev(mut self, on: bool) -> TreeSink {
        self.list_prev = on;
        self
    }

    /// Opens `name` in the previous snapshot's directory `parent` (see
    /// [`TreeSink::listing_prev`]).
    fn open_prev(&self, parent: &Option<OwnedFd>, name: &[u8]) -> Option<OwnedFd> {
        let fd = side(parent, name)?;
        if self.list_prev {
            // Only to fill the client's cache: a failure costs a LOOKUP per link later.
            let _ = fsx::read_dir_with(b(&fd), |_| {});
        }
        Some(fd)
    }
}

/// Removes the POSIX ACLs `names` from staging directory `dst` (a file system without
/// them, or one not there, is no error), so that nothing this run creates in it
/// inherits a default ACL: an entry of a snapshot has exactly its source's ACLs, and
/// its mode is the one it was created with (the umask's, not an ACL's mask), with no
/// call per entry to take an inherited ACL off. The staging root may have inherited
/// both from `.snapring/staging` (a default ACL on the store's directory is passed down
/// to everything created under it), an interrupted run's directory taken over may hold
/// the source's default ACL (its metadata was set); every directory this run makes is
/// made in a directory without one, and gets its source's ACLs last (`finish_dir`).
/// Two calls per run and one per directory taken over.
fn no_inherited_acls(dst: &OwnedFd, names: &[&[u8]]) -> io::Result<()> {
    fsx::remove_xattrs(&XattrTarget::Fd(b(dst)), names, &Vec::new()).map(|_| ())
}

fn side(parent: &Option<OwnedFd>, name: &[u8]) -> Option<OwnedFd> {
    parent
        .as_ref()
        .and_then(|p| fsx::open_dir_at(b(p), name).ok())
}

fn dup(fd: &Option<OwnedFd>) -> Option<OwnedFd> {
    fd.as_ref().and_then(|f| fsx::open_dir_at(b(f), b".").ok())
}

/// Reads the previous snapshot's facts of `name` in `prev` (shared with the dry run).
pub fn prev_stat(prev: Option<&OwnedFd>, name: &[u8]) -> Option<(Meta, Option<Vec<u8>>)> {
    let p = prev?;
    let s = fsx::lstat_at(b(p), name).ok()?;
    let target = match s.kind {
        Kind::Symlink => fsx::read_link_at(b(p), name).ok(),
        _ => None,
    };
    Some((s, target))
}

/// Reads the previous snapshot's extended attributes of `name` in `prev`.
pub fn prev_xattrs(prev: Option<&OwnedFd>, name: &[u8]) -> Option<Xattrs> {
    fsx::read_xattrs(&XattrTarget::At(b(prev?), name)).ok()
}

impl Sink for TreeSink {
    type Dir = TreeDir;
    type File = TreeFile;
    type Sealed = u64;

    fn root(&self) -> io::Result<TreeDir> {
        let dst = fsx::open_dir_at(b(&self.staging), b".")?;
        no_inherited_acls(&dst, fsx::INHERITED_DIR)?;
        Ok(TreeDir {
            adopted: self.adopted_dir(&dst)?,
            dst,
            prev: self.open_prev(&self.prev, b"."),
            resume: dup(&self.resume),
            rel: Vec::new(),
        })
    }

    fn mkdir(&self, parent: &TreeDir, name: &[u8], _rel: &RelPath) -> io::Result<TreeDir> {
        let had = self.claim(parent, name, true)?;
        let (dst, adopted) = match had {
            Some(_) => match fsx::open_dir_at(b(&parent.dst), name) {
                Ok(fd) => {
                    // Its mode may be a finished directory's (0500): this run writes
                    // in it first, `finish_dir` sets it again.
                    let st = fsx::fstat(b(&fd))?;
                    if st.perm & 0o700 != 0o700 {
                        rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(0o700))?;
                    }
                    // And maybe a finished directory's default ACL: `finish_dir` sets
                    // the source's again (and removes what the source has not).
                    no_inherited_acls(&fd, &[fsx::ACL_DEFAULT])?;
                    let ad = self.adopted_dir(&fd)?;
                    (fd, ad)
                }
                Err(_) => {
                    self.remove_stale(&parent.dst, name, None)?;
                    fsx::mkdir_at(b(&parent.dst), name)?;
                    (fsx::open_dir_at(b(&parent.dst), name)?, None)
                }
            },
            None => {
                fsx::mkdir_at(b(&parent.dst), name)?;
                (fsx::open_dir_at(b(&parent.dst), name)?, None)
            }
        };
        Ok(TreeDir {
            dst,
            prev: self.open_prev(&parent.prev, name),
            resume: side(&parent.resume, name),
            rel: child(&parent.rel, name),
            adopted,
        })
    }

    fn link_unchanged(&self, dir: &TreeDir, name: &[u8], rel: &RelPath) -> Linked {
        let Some(prev) = &dir.prev else {
            return Linked::Fallback;
        };
        if let Err(e) = self.claim(dir, name, false) {
            return Linked::Failed(e);
        }
        match fsx::link_at(b(prev), name, b(&dir.dst), name) {
            Ok(()) => Linked::Done,
            Err(e) if fsx::errno_is(&e, Errno::MLINK) || fsx::errno_is(&e, Errno::XDEV) => {
                tracing::debug!("{rel}: link failed ({e}); copying instead");
                Linked::Fallback
            }
            Err(e) if fsx::errno_is(&e, Errno::NOENT) || fsx::errno_is(&e, Errno::PERM) => {
                tracing::warn!(
                    "{rel}: previous snapshot's copy cannot be linked ({e}); copying instead"
                );
                Linked::Fallback
            }
            Err(e) => Linked::Failed(e),
        }
    }

    fn link_within(&self, dir: &TreeDir, name: &[u8], _rel: &RelPath, first: &RelPath) -> Linked {
        let rel;
        let first = if self.base.is_root() {
            first
        } else {
            match first
                .as_bytes()
                .strip_prefix(self.base.as_bytes())
                .and_then(|r| r.strip_prefix(b"/"))
                .map(RelPath::new)
            {
                Some(Ok(r)) => {
                    rel = r;
                    &rel
                }
                _ => return Linked::Fallback,
            }
        };
        if let Err(e) = self.claim(dir, name, false) {
            return Linked::Failed(e);
        }
        let r = match fsx::open_parent(&self.staging, first) {
            Ok(pfd) => fsx::link_at(b(&pfd), first.file_name(), b(&dir.dst), name),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => Linked::Done,
            Err(e) if fsx::errno_is(&e, Errno::MLINK) => Linked::Fallback,
            Err(e) => Linked::Failed(e),
        }
    }

    fn resume(
        &self,
        dir: &TreeDir,
        name: &[u8],
        m: &Meta,
        src_xattrs: &dyn Fn() -> io::Result<Xattrs>,
        src_hash: &dyn Fn() -> io::Result<blake3::Hash>,
    ) -> Option<Resumed> {
        if let Some(r) = self.resume_in_place(dir, name, m, src_xattrs, src_hash) {
            return Some(r);
        }
        let res = dir.resume.as_ref()?;
        // A source changed since the interrupted walk began (or just before it) is
        // taken all the same when its bytes are the copy's: `check_copy` hashes both.
        // Refused by its ctime, as it was, a file changed just before a run that then
        // filled the disk was copied again by every retry of a shard unit (each a new
        // work directory), so a retry given more space never caught up.
        if m.kind != Kind::File {
            return None;
        }
        let (hash, xattrs) = self.check_copy(res, name, m, src_xattrs, src_hash)?;
        self.claim(dir, name, false).ok()?;
        fsx::link_at(b(res), name, b(&dir.dst), name).ok()?;
        // Its bytes were hashed as the source's by this run: a copy as good as one it
        // makes, with the same bound. The interrupted run's start was its bound: a
        // source changed just before that run (within the racy margin) was copied again
        // by the next run that took this tree over.
        if let Some(a) = &self.adopting {
            let d = Done::new(hash, m, a.before, xattrs.clone());
            self.record(a, &child(&dir.rel, name), &d);
        }
        Some(Resumed { hash, xattrs })
    }

    /// Created with its final mode (no `fchmod` when the umask leaves it whole and there
    /// are no special bits): calls are what a backup over NFS pays for.
    fn create_file(
        &self,
        dir: &TreeDir,
        name: &[u8],
        _rel: &RelPath,
        m: &Meta,
        _why: CopyReason,
    ) -> io::Result<TreeFile> {
        let created_perm = if m.perm & 0o7000 == 0 {
            m.perm & 0o777
        } else {
            0o600
        };
        self.claim(dir, name, false)?;
        Ok(TreeFile {
            fd: fsx::create_at_mode(b(&dir.dst), name, created_perm)?,
            created_perm,
            rel: child(&dir.rel, name),
            hash: std::cell::Cell::new(None),
        })
    }

    fn write_file(
        &self,
        file: &TreeFile,
        src: BorrowedFd<'_>,
        before: &Meta,
        pace: &dyn Fn(u64) -> bool,
    ) -> Result<fsx::Copied, CopyError> {
        let r = fsx::copy_hash(src, b(&file.fd), before, pace);
        file.hash.set(r.as_ref().ok().map(|c| *c.hash.as_bytes()));
        r
    }

    fn restart_file(&self, file: &TreeFile) -> io::Result<()> {
        Ok(rustix::fs::ftruncate(&file.fd, 0)?)
    }

    fn discard_file(&self, dir: &TreeDir, name: &[u8]) {
        let _ = fsx::unlink_at(b(&dir.dst), name);
    }

    /// `fchown` is skipped when the file already has the owner it gets by creation.
    fn finish_file(&self, file: TreeFile, m: &Meta, xattrs: &Xattrs) -> io::Result<Refused> {
        let need_chown = self.creates_as != Some((m.uid, m.gid)) && self.owners_held.is_none();
        let need_chmod =
            file.created_perm & !self.umask != m.perm || (need_chown && m.perm & 0o6000 != 0);
        // An owner this process may not give (not root) keeps nothing else from being
        // set: its error (`fsx::OwnerNotSet`) comes once mode, xattrs and times are.
        let owner = match need_chown {
            true => fsx::owner_later(fsx::chown_fd(b(&file.fd), m))?,
            false => None,
        };
        // Less the setuid/setgid bits not safe on a copy left owned by this process
        // (`fsx::OwnerNotSet`, as `cp -p` run by a user): root's `-rwsr-xr-x`
        // program would otherwise be the backup user's, run as them by anyone.
        if need_chmod || owner.is_some() {
            let perm = fsx::perm_kept(m, owner.as_ref());
            rustix::fs::fchmod(&file.fd, rustix::fs::Mode::from_raw_mode(perm))?;
        }
        let refused = fsx::write_xattrs(&XattrTarget::Fd(b(&file.fd)), xattrs)?;
        fsx::apply_times(b(&file.fd), m)?;
        // A copy the next run may keep in place, if this one is cut: only a whole one,
        // with everything the source has (as a resume from its own metadata demands).
        if let (Some(a), Some(h), None, true) =
            (&self.adopting, file.hash.get(), &owner, refused.is_empty())
        {
            let d = Done::new(
                blake3::Hash::from_bytes(h),
                m,
                a.before,
                fsx::xattr_digest(xattrs),
            );
            self.record(a, &file.rel, &d);
        }
        fsx::owner_after(Ok(refused), owner)
    }

    fn put_special(
        &self,
        dir: &TreeDir,
        name: &[u8],
        _rel: &RelPath,
        m: &Meta,
        target: Option<&[u8]>,
        _why: CopyReason,
    ) -> io::Result<()> {
        self.claim(dir, name, false)?;
        match (m.kind, target) {
            (Kind::Symlink, Some(t)) => fsx::symlink_at(t, b(&dir.dst), name),
            _ => fsx::mknod_at(b(&dir.dst), name, m),
        }
    }

    fn finish_special(
        &self,
        dir: &TreeDir,
        name: &[u8],
        m: &Meta,
        xattrs: &Xattrs,
    ) -> io::Result<Refused> {
        let owner = fsx::owner_later(fsx::apply_meta_at(b(&dir.dst), name, &self.kept(m)))?;
        let refused = fsx::write_xattrs(&XattrTarget::At(b(&dir.dst), name), xattrs)?;
        fsx::apply_times_at(b(&dir.dst), name, m)?;
        fsx::owner_after(Ok(refused), owner)
    }

    /// Without `CAP_CHOWN`, `fchown` of a directory (made by this process: `creates_as`,
    /// the staging tree has no setgid bit) gives it `m`'s owner only if `m`'s uid is the
    /// process's and its gid one of the process's groups; refused, the group alone is
    /// given when it is one of them ([`fsx::chown_fd`]), else the directory keeps the
    /// egid it was made with.
    fn dir_owner_held(&self, m: &Meta) -> Option<(u32, u32)> {
        let groups = self.chown_groups.as_ref()?;
        let (euid, egid) = self.creates_as?;
        let gid_ok = groups.contains(&m.gid);
        if m.uid == euid && gid_ok {
            return None;
        }
        Some((euid, if gid_ok { m.gid } else { egid }))
    }

    /// [`owners_refused`].
    fn owners_held(&self) -> Option<(u32, u32)> {
        self.owners_held
    }

    fn times_held(&self) -> Option<u64> {
        self.times_held
    }

    fn finish_dir(&self, dir: &TreeDir, m: &Meta, xattrs: &Xattrs) -> io::Result<Refused> {
        crate::failpoint::hit("staging.dir_meta")?;
        if let Some(ad) = &dir.adopted {
            self.sweep(ad)?;
            // Attributes the cut run gave it that the source no longer has.
            for (n, _) in fsx::read_xattrs(&XattrTarget::Fd(b(&dir.dst)))? {
                if !xattrs.iter().any(|(k, _)| *k == n) {
                    rustix::fs::fremovexattr(&dir.dst, n.as_slice())?;
                }
            }
        }
        fsx::apply_dir_meta(b(&dir.dst), &self.kept(m), xattrs)
    }

    fn write_block(&self, rel: &RelPath, entries: &mut [Entry]) -> io::Result<()> {
        crate::failpoint::hit("manifest.block")?;
        self.manifest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_block(rel, entries)
    }

    fn correct_entry(&self, rel: &RelPath, e: Entry) -> io::Result<()> {
        self.manifest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .correct(rel, e);
        Ok(())
    }

    fn prev_stat(&self, dir: &TreeDir, name: &[u8]) -> Option<(Meta, Option<Vec<u8>>)> {
        prev_stat(dir.prev.as_ref(), name)
    }

    fn open_prev(&self, dir: &TreeDir, name: &[u8]) -> Option<io::Result<OwnedFd>> {
        let prev = dir.prev.as_ref()?;
        Some(fsx::open_read_at(b(prev), name))
    }

    fn prev_xattrs(&self, dir: &TreeDir, name: &[u8]) -> Option<Xattrs> {
        prev_xattrs(dir.prev.as_ref(), name)
    }

    fn refuses_xattr_name(&self, name: &[u8], kind: Kind) -> bool {
        let p = self.xattr_probes.lock().unwrap_or_else(|e| e.into_inner());
        p.1.contains(&(name.to_vec(), probe_kind(kind)))
    }

    /// Sets the attribute on an entry of the kind (a regular file, a fifo, a socket:
    /// [`probe_kind`]) made for the probe beside the staging root, then removes it:
    /// once a name, value length and kind a run (a name the store does not support,
    /// once a name and kind).
    fn still_refuses_xattr(&self, name: &[u8], value: &[u8], kind: Kind) -> bool {
        let kind = probe_kind(kind);
        let mut p = self.xattr_probes.lock().unwrap_or_else(|e| e.into_inner());
        if p.1.contains(&(name.to_vec(), kind)) {
            return true;
        }
        let key = (name.to_vec(), value.len(), kind);
        if let Some(r) = p.0.get(&key) {
            return *r;
        }
        let (refused, unsupported) = probe_xattr(b(&self.staging), name, value, kind);
        if unsupported {
            p.1.insert((name.to_vec(), kind));
        }
        p.0.insert(key, refused);
        refused
    }

    fn prev_hash(&self, dir: &TreeDir, name: &[u8]) -> Option<io::Result<blake3::Hash>> {
        Some(fsx::hash_at(b(dir.prev.as_ref()?), name))
    }

    fn has_prev(&self, dir: &TreeDir) -> bool {
        dir.prev.is_some()
    }

    fn linked_facts(
        &self,
        dir: &TreeDir,
        name: &[u8],
        m: &Meta,
        xattrs_known: bool,
    ) -> (Option<blake3::Hash>, Option<String>) {
        let xattrs = if xattrs_known {
            None
        } else {
            fsx::read_xattrs(&XattrTarget::At(b(&dir.dst), name))
                .ok()
                .and_then(|x| fsx::xattr_digest(&x))
        };
        let hash = (m.kind == Kind::File)
            .then(|| {
                fsx::open_read_at(b(&dir.dst), name)
                    .and_then(|fd| fsx::hash_file(b(&fd)))
                    .ok()
            })
            .flatten();
        (hash, xattrs)
    }

    /// Finishes the manifest and flushes the backup file system; returns the staging
    /// root's inode (the snapshot's identity in `snapshots.json`).
    fn commit(self, root: &Entry) -> io::Result<u64> {
        if let Some(a) = &self.adopting {
            // Adopted directories the walk did not finish: what it did not write in
            // them is not in the snapshot.
            let open: Vec<_> = a
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .map(|(_, d)| d)
                .collect();
            for d in open {
                self.sweep(&d)?;
            }
        }
        let w = self
            .manifest
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        w.finish(root)?;
        if let Some(a) = &self.adopting {
            // Its record (`.tmp`: the oldest bound and this run's copies) stays until
            // the snapshot is published (`Store::publish`): a run that fails after
            // this keeps an adopted tree for the next run, which reads it. Flushed
            // here, synced with the tree.
            drop(a.fresh.lock().unwrap_or_else(|e| e.into_inner()).take());
        }
        fsx::sync_fs(b(&self.staging))?;
        Ok(fsx::fstat(b(&self.staging))?.ino)
    }

    fn abandon(self) {
        if let Err(e) = self.write_record()
            && let Some(a) = &self.adopting
        {
            tracing::warn!(
                "{}: cannot write ({e}); the next run checks each copy of this run's tree again",
                a.record.display()
            );
        }
        self.manifest
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .abandon();
    }
}

/// Whether this process has `CAP_CHOWN` (gives files to any owner where the file
/// system lets it).
fn may_chown() -> bool {
    use rustix::thread::{CapabilitySet, capabilities};
    capabilities(None).is_ok_and(|c| c.effective.contains(CapabilitySet::CHOWN))
}

/// What a store keeps less of than the source has, as probed once per run
/// ([`probe_store`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreProbe {
    /// The owner the store gives every file when it refuses owners to this process,
    /// which may give files away (an NFS export with `root_squash`).
    pub owners_held: Option<(u32, u32)>,
    /// The granularity (ns) to which the store keeps file times, when coarser than the
    /// nanosecond (whole seconds: 10^9, some NFS servers; FAT: 2 s).
    pub times_held: Option<u64>,
}

/// The probe of [`TreeSink::probing_store`] for a shard run, made once by its planner
/// in directory `dir` of the store.
pub fn probe_store(dir: BorrowedFd<'_>) -> StoreProbe {
    probe(dir, may_chown())
}

/// The name of the file [`probe`] makes and removes in the staging root.
const OWNER_PROBE: &[u8] = b".snapring-owner-probe";

/// The time the probe sets: an odd second and the last nanosecond of it, so that a
/// store truncating to any granularity up to 2 s gives back another time, whose distance
/// to this one says the granularity.
const PROBE_TIME: fsx::Time = fsx::Time {
    sec: 1_000_000_001,
    nsec: 999_999_999,
};

/// Sets [`PROBE_TIME`] on `fd` (a file made for the probe, or the staging root, whose
/// times are set again when the snapshot is committed) and `fstat`s it: the granularity
/// of the store's times, if it truncated them, and the `fstat`.
fn probe_times(fd: BorrowedFd<'_>) -> (Option<u64>, Option<Meta>) {
    let t = rustix::fs::Timespec {
        tv_sec: PROBE_TIME.sec,
        tv_nsec: PROBE_TIME.nsec as _,
    };
    let set = rustix::fs::futimens(
        fd,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
    );
    let m = fsx::fstat(fd).ok();
    if let Err(e) = set {
        tracing::debug!("cannot set the time probe's times: {e}");
        return (None, m);
    }
    let g = m.and_then(|m| coarse_granularity(PROBE_TIME, m.mtime));
    (g, m)
}

/// The granularity a store that was given time `set` and kept `got` keeps times to: the
/// smallest of 10 ns, 100 ns, ... 1 s, 2 s that `got` is less than apart from `set`;
/// `None` when it kept `set`, or kept a time further away (it does not keep the times
/// it is given: the copies then report what they meet).
fn coarse_granularity(set: fsx::Time, got: fsx::Time) -> Option<u64> {
    if set == got {
        return None;
    }
    let d = (set.nanos() - got.nanos()).abs();
    let g = std::iter::successors(Some(10u64), |g| (*g < 1_000_000_000).then_some(g * 10))
        .chain([2_000_000_000])
        .find(|g| d < *g as i128);
    if g.is_none() {
        tracing::debug!("the store kept time {got} for {set}");
    }
    g
}

/// Probes the store once per run, in the staging root. With `chown` (this process may
/// give files away): a file is made, given [`PROBE_TIME`] and another owner, and
/// removed; `owners_held` is the owner the file has if the new one is refused (`EPERM`:
/// the store keeps no owners of ours, as an NFS export with `root_squash`, knfsd's
/// default, maps root to `nobody`). Without: only the times, set on the staging root
/// itself (no file made). `times_held` is the granularity of the times kept, when
/// coarser than the nanosecond. A probe that could not be made finds nothing (the copies
/// then report what they meet).
fn probe(staging: BorrowedFd<'_>, chown: bool) -> StoreProbe {
    if !chown {
        return StoreProbe {
            owners_held: None,
            times_held: probe_times(staging).0,
        };
    }
    let _ = fsx::unlink_at(staging, OWNER_PROBE);
    let fd = match fsx::create_at_mode(staging, OWNER_PROBE, 0o600) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!("cannot make the owner probe in staging: {e}");
            return StoreProbe::default();
        }
    };
    let (times_held, m) = probe_times(b(&fd));
    let other = |id: u32| if id == 1 { 2 } else { 1 };
    let owners_held = m.and_then(|m| {
        match rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(other(m.uid))),
            Some(rustix::fs::Gid::from_raw(other(m.gid))),
        ) {
            Err(e) if e == Errno::PERM => Some((m.uid, m.gid)),
            _ => None,
        }
    });
    drop(fd);
    if let Err(e) = fsx::unlink_at(staging, OWNER_PROBE) {
        tracing::warn!("cannot remove the owner probe from staging: {e}");
    }
    StoreProbe {
        owners_held,
        times_held,
    }
}

/// The start of the name of the file [`probe_xattr`] makes and removes beside the
/// staging root (in its parent: `.snapring/staging/`, a shard worker's `work/`), never
/// inside the tree: a probe left there (its removal failed, the run was killed) is in
/// no snapshot. Its name ends in `.tmp`: `Store::leftover_staging` takes no such name
/// in `.snapring/staging/` for an interrupted run's tree.
const XATTR_PROBE: &str = ".snapring-xattr-probe";

/// The pid in the name of a probe [`probe_xattr`] made
/// (`.snapring-xattr-probe-<pid>-<time>-<n>.tmp`), if it is one.
fn xattr_probe_pid(name: &[u8]) -> Option<u32> {
    let rest = name
        .strip_prefix(XATTR_PROBE.as_bytes())?
        .strip_prefix(b"-")?
        .strip_suffix(b".tmp")?;
    let digits = rest.split(|c| *c == b'-').next()?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Removes the xattr probes a backup killed between a probe's creation and its removal
/// left in `dir` (`.snapring/staging/`), by the rules of the temp files of
/// `write_atomic` ([`crate::util::sweep_tmps`]: a dead pid's after 10 minutes, any
/// after an hour; a fifo or a socket probe too, not a directory or a symlink); called under the store's lock, at a run's start. How many.
pub fn sweep_xattr_probes(dir: &std::path::Path) -> usize {
    crate::util::sweep_tmps(
        dir,
        xattr_probe_pid,
        true,
        "a backup killed as it probed the store",
    )
}

/// The probes [`probe_xattr`] made in this process: each name is unique in the run.
static XATTR_PROBES: AtomicU64 = AtomicU64::new(0);

/// The kind of entry [`probe_xattr`] makes for an entry of `kind`: its own for a fifo
/// or a socket, else a regular file (only those three kinds record refused attributes,
/// `manifest::Entry::records_refused`). Not a regular file for all: a file system may
/// take an attribute on a regular file and not on a special one (an ACL where its
/// special files' inodes have no ACL operations: `set_acl` is the inode's, EOPNOTSUPP
/// without it), and the unchanged fifo was made again every run, to be refused again.
fn probe_kind(kind: Kind) -> Kind {
    match kind {
        Kind::Fifo | Kind::Socket => kind,
        _ => Kind::File,
    }
}

/// Whether the store refuses attribute `name` with `value`, and whether as not
/// supported (any value): tried on an entry of `kind` ([`probe_kind`]: a regular file,
/// a fifo or a socket) made for it beside `staging` (in its parent directory, on the
/// same file system) and removed. Its name is the process id, the time and a counter;
/// one left by another run (EEXIST: the same pid in a container) is passed over for
/// the next name, not taken for a refusal. A probe that cannot be made counts as
/// refused (the entry stays linked, as last run).
fn probe_xattr(staging: BorrowedFd<'_>, name: &[u8], value: &[u8], kind: Kind) -> (bool, bool) {
    let parent = match rustix::fs::openat(
        staging,
        "..",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!("cannot open the staging root's parent for the xattr probe: {e}");
            return (true, false);
        }
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut tries = 0;
    let mode = rustix::fs::Mode::from_raw_mode(0o600);
    let file = loop {
        let n = XATTR_PROBES.fetch_add(1, Ordering::Relaxed);
        let file = format!("{XATTR_PROBE}-{}-{nanos:x}-{n}.tmp", std::process::id());
        let made = match kind {
            Kind::Fifo | Kind::Socket => {
                let t = match kind {
                    Kind::Fifo => rustix::fs::FileType::Fifo,
                    _ => rustix::fs::FileType::Socket,
                };
                rustix::fs::mknodat(&parent, file.as_str(), t, mode, 0)
            }
            _ => rustix::fs::openat(
                &parent,
                file.as_str(),
                rustix::fs::OFlags::CREATE
                    | rustix::fs::OFlags::EXCL
                    | rustix::fs::OFlags::WRONLY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC,
                mode,
            )
            .map(drop),
        };
        match made {
            Ok(()) => break file,
            Err(Errno::EXIST) if tries < 16 => tries += 1,
            Err(e) => {
                tracing::debug!("cannot make the xattr probe {file} beside staging: {e}");
                return (true, false);
            }
        }
    };
    // By its path (`lsetxattr`), as `finish_special` sets a fifo's: a fifo is not
    // opened (an open for writing waits for a reader).
    let xs: Xattrs = vec![(name.to_vec(), value.to_vec())];
    let set = fsx::write_xattrs(&XattrTarget::At(b(&parent), file.as_bytes()), &xs);
    if let Err(e) = fsx::unlink_at(b(&parent), file.as_bytes()) {
        tracing::warn!("cannot remove the xattr probe {file} beside staging: {e}");
    }
    match set {
        Ok(r) if r.is_empty() => (false, false),
        Ok(r) => (true, r.iter().any(|(_, why)| *why == fsx::NOT_SUPPORTED)),
        Err(_) => (true, false),
    }
}

/// The groups a process without `CAP_CHOWN` may give its files to (its egid and
/// supplementary groups); `None` when it has `CAP_CHOWN` (it gives any owner) or its
/// capabilities or groups cannot be read.
fn groups_without_chown(egid: u32) -> Option<Vec<u32>> {
    use rustix::thread::{CapabilitySet, capabilities};
    let caps = capabilities(None).ok()?;
    if caps.effective.contains(CapabilitySet::CHOWN) {
        return None;
    }
    let mut groups: Vec<u32> = rustix::process::getgroups()
        .ok()?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    groups.push(egid);
    Some(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The xattr probe is made beside the staging root, never in the tree: a staging
    /// root nothing can be created in (immutable) still has its store's answer, and
    /// nothing is left in either directory. (Made in the staging root, the probe
    /// failed there and counted as refused.)
    #[test]
    fn the_xattr_probe_is_made_beside_the_staging_root_not_in_it() {
        let t = tempfile::tempdir().unwrap();
        let st = t.path().join("staging");
        std::fs::create_dir(&st).unwrap();
        let fd = fsx::open_dir(&st).unwrap();
        let immutable = |on: bool| {
            std::process::Command::new("chattr")
                .arg(if on { "+i" } else { "-i" })
                .arg(&st)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !immutable(true) {
            eprintln!("skipped: chattr +i is not available here");
            return;
        }
        let blocked = std::fs::write(st.join("x"), b"").is_err();
        let got = probe_xattr(b(&fd), b"user.probe", b"v", Kind::File);
        assert!(immutable(false));
        if !blocked {
            eprintln!("skipped: an immutable directory takes new files here");
            return;
        }
        assert_eq!(got, (false, false), "the store takes user.* values");
        assert_eq!(std::fs::read_dir(&st).unwrap().count(), 0);
        let left: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("staging")]);
    }

    #[test]
    fn the_granularity_a_store_kept_times_to() {
        let t = |sec, nsec| fsx::Time { sec, nsec };
        let (sec, nsec) = (PROBE_TIME.sec, PROBE_TIME.nsec);
        assert_eq!(coarse_granularity(PROBE_TIME, PROBE_TIME), None);
        assert_eq!(
            coarse_granularity(PROBE_TIME, t(sec, 0)),
            Some(1_000_000_000)
        );
        assert_eq!(
            coarse_granularity(PROBE_TIME, t(sec - 1, 0)),
            Some(2_000_000_000)
        );
        assert_eq!(coarse_granularity(PROBE_TIME, t(sec, nsec - 99)), Some(100));
        assert_eq!(
            coarse_granularity(PROBE_TIME, t(sec, nsec - 999)),
            Some(1_000)
        );
        // Not a time it was given at all (the store sets its own).
        assert_eq!(coarse_granularity(PROBE_TIME, t(sec + 100, 0)), None);
        assert!(t(5, 999_999_999).kept_as(t(5, 0), 1_000_000_000));
        assert!(!t(6, 0).kept_as(t(5, 0), 1_000_000_000));
        assert!(!t(5, 1).kept_as(t(5, 0), 0));
        assert!(t(5, 1).kept_as(t(5, 1), 1));
        // A stored time later than the exact one is another time, however close; so is
        // one a whole granularity earlier (FAT's 2 s: 4 s keeps 5.7 s, not 3.9 s).
        assert!(!t(5, 700_000_000).kept_as(t(6, 0), 1_000_000_000));
        assert!(!t(5, 0).kept_as(t(5, 1), 1_000_000_000));
        assert!(t(5, 700_000_000).kept_as(t(4, 0), 2_000_000_000));
        assert!(!t(3, 900_000_000).kept_as(t(4, 0), 2_000_000_000));
        assert!(!t(5, 700_000_000).kept_as(t(3, 0), 2_000_000_000));
    }
}
