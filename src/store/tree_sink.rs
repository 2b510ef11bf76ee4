//! The hard-link tree store as a backup [`Sink`]: the new snapshot is built in
//! `.snapring/staging/<run>/`, unchanged entries are hard links into the previous
//! snapshot, changed ones are copies made with as few calls as NFS allows, and the
//! manifest is written beside it. Every call is relative to an open directory (no
//! PATH_MAX, no symlink followed). Does the file I/O of a backup's writes.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Mutex;

use rustix::io::Errno;

use crate::fsx::{self, CopyError, Kind, Meta, XattrTarget, Xattrs, b};
use crate::manifest::{self, Entry};
use crate::relpath::RelPath;
use crate::sink::{CopyReason, Linked, Refused, Sink};

/// One directory of the new snapshot, with the same directory in the previous snapshot
/// and in an interrupted run's staging tree, where they exist.
pub struct TreeDir {
    dst: OwnedFd,
    prev: Option<OwnedFd>,
    resume: Option<OwnedFd>,
}

/// A regular file being copied into staging.
pub struct TreeFile {
    fd: OwnedFd,
    /// The mode it was created with.
    created_perm: u32,
}

pub struct TreeSink {
    staging: OwnedFd,
    prev: Option<OwnedFd>,
    resume: Option<OwnedFd>,
    /// A file of `resume` is taken only if its source's ctime is older than this: the
    /// interrupted walk's start less the racy margin (see [`TreeSink::new`]).
    resume_before: fsx::Time,
    manifest: Mutex<manifest::Writer>,
    /// The owner a file created in staging gets by itself (euid, egid), when the staging
    /// root has no setgid bit; a copy of a file with that owner needs no `fchown`.
    creates_as: Option<(u32, u32)>,
    /// When this process cannot give files away (no `CAP_CHOWN`) and [`creates_as`] is
    /// known: the groups it may give them to (a directory's owner is then foretold:
    /// [`Sink::dir_owner_held`]).
    chown_groups: Option<Vec<u32>>,
    umask: u32,
    /// The path the staging root has in the snapshot (a shard worker's unit starts at
    /// a directory of the source; the walk's paths are from the source's root).
    base: RelPath,
    /// List each previous-snapshot directory as it is opened ([`TreeSink::listing_prev`]).
    list_prev: bool,
}

impl TreeSink {
    /// `staging`: the new snapshot's root, created empty; `prev`: the previous
    /// snapshot's root; `resume`: an interrupted run's staging tree, and when that run's
    /// walk began (or earlier). A file copied there is reused only if its source has not
    /// changed since that walk began ([`Sink::resume`]): size, mtime, mode and owner
    /// alone do not tell a file replaced under the same name with the same size and
    /// mtime, which the copy would then miss.
    pub fn new(
        staging: OwnedFd,
        prev: Option<OwnedFd>,
        resume: Option<(OwnedFd, fsx::Time)>,
        manifest: manifest::Writer,
    ) -> TreeSink {
        let (resume, resume_before) = match resume {
            Some((fd, started)) => (
                Some(fd),
                fsx::Time {
                    // The racy margin of incremental runs: timestamp granularity and
                    // modest clock skew between an NFS server and us.
                    sec: started.sec - manifest::RACY_MARGIN_SECS,
                    nsec: started.nsec,
                },
            ),
            None => (None, fsx::Time::default()),
        };
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
            resume_before,
            manifest: Mutex::new(manifest),
            chown_groups: creates_as.and_then(|(_, egid)| groups_without_chown(egid)),
            creates_as,
            umask: fsx::process_umask(),
            base: RelPath::root(),
            list_prev: false,
        }
    }

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
        Ok(TreeDir {
            dst: fsx::open_dir_at(b(&self.staging), b".")?,
            prev: self.open_prev(&self.prev, b"."),
            resume: dup(&self.resume),
        })
    }

    fn mkdir(&self, parent: &TreeDir, name: &[u8], _rel: &RelPath) -> io::Result<TreeDir> {
        fsx::mkdir_at(b(&parent.dst), name)?;
        Ok(TreeDir {
            dst: fsx::open_dir_at(b(&parent.dst), name)?,
            prev: self.open_prev(&parent.prev, name),
            resume: side(&parent.resume, name),
        })
    }

    fn link_unchanged(&self, dir: &TreeDir, name: &[u8], rel: &RelPath) -> Linked {
        let Some(prev) = &dir.prev else {
            return Linked::Fallback;
        };
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
    ) -> Option<blake3::Hash> {
        let res = dir.resume.as_ref()?;
        // Changed since the interrupted walk began (or so close to it that equal times
        // prove nothing): its copy there may be of older content.
        if m.kind != Kind::File || m.ctime >= self.resume_before {
            return None;
        }
        let s = fsx::lstat_at(b(res), name).ok()?;
        if s.kind != m.kind
            || s.size != m.size
            || s.mtime != m.mtime
            || s.perm != m.perm
            || s.uid != m.uid
            || s.gid != m.gid
        {
            return None;
        }
        let xs = src_xattrs().ok()?;
        if fsx::read_xattrs(&XattrTarget::At(b(res), name)).ok()? != xs {
            return None;
        }
        let hash = fsx::open_read_at(b(res), name)
            .and_then(|fd| fsx::hash_file(b(&fd)))
            .ok()?;
        fsx::link_at(b(res), name, b(&dir.dst), name).ok()?;
        Some(hash)
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
        Ok(TreeFile {
            fd: fsx::create_at_mode(b(&dir.dst), name, created_perm)?,
            created_perm,
        })
    }

    fn write_file(
        &self,
        file: &TreeFile,
        src: BorrowedFd<'_>,
        before: &Meta,
        pace: &dyn Fn(u64) -> bool,
    ) -> Result<(blake3::Hash, u64), CopyError> {
        fsx::copy_hash(src, b(&file.fd), before, pace)
    }

    fn restart_file(&self, file: &TreeFile) -> io::Result<()> {
        Ok(rustix::fs::ftruncate(&file.fd, 0)?)
    }

    fn discard_file(&self, dir: &TreeDir, name: &[u8]) {
        let _ = fsx::unlink_at(b(&dir.dst), name);
    }

    /// `fchown` is skipped when the file already has the owner it gets by creation.
    fn finish_file(&self, file: TreeFile, m: &Meta, xattrs: &Xattrs) -> io::Result<Refused> {
        let need_chown = self.creates_as != Some((m.uid, m.gid));
        let need_chmod =
            file.created_perm & !self.umask != m.perm || (need_chown && m.perm & 0o6000 != 0);
        // An owner this process may not give (not root) keeps nothing else from being
        // set: its error (`fsx::OwnerNotSet`) comes once mode, xattrs and times are.
        let owner = match need_chown {
            true => fsx::owner_later(fsx::chown_fd(b(&file.fd), m))?,
            false => None,
        };
        if need_chmod || owner.is_some() {
            rustix::fs::fchmod(&file.fd, rustix::fs::Mode::from_raw_mode(m.perm))?;
        }
        let refused = fsx::write_xattrs(&XattrTarget::Fd(b(&file.fd)), xattrs)?;
        fsx::apply_times(b(&file.fd), m)?;
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
        let owner = fsx::owner_later(fsx::apply_meta_at(b(&dir.dst), name, m))?;
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

    fn finish_dir(&self, dir: &TreeDir, m: &Meta, xattrs: &Xattrs) -> io::Result<Refused> {
        crate::failpoint::hit("staging.dir_meta")?;
        fsx::apply_dir_meta(b(&dir.dst), m, xattrs)
    }

    fn write_block(&self, rel: &RelPath, entries: &mut [Entry]) -> io::Result<()> {
        crate::failpoint::hit("manifest.block")?;
        self.manifest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_block(rel, entries)
    }

    fn prev_stat(&self, dir: &TreeDir, name: &[u8]) -> Option<(Meta, Option<Vec<u8>>)> {
        prev_stat(dir.prev.as_ref(), name)
    }

    fn prev_xattrs(&self, dir: &TreeDir, name: &[u8]) -> Option<Xattrs> {
        prev_xattrs(dir.prev.as_ref(), name)
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
        let w = self
            .manifest
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        w.finish(root)?;
        fsx::sync_fs(b(&self.staging))?;
        Ok(fsx::fstat(b(&self.staging))?.ino)
    }

    fn abandon(self) {
        self.manifest
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .abandon();
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
