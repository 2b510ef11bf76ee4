//! latencyfs: a multi-threaded FUSE passthrough file system that adds a fixed delay to
//! every metadata call (lookup, getattr, setattr, readdir, open, create, mkdir, mknod,
//! symlink, readlink, link, unlink, rmdir, rename, statfs, xattrs), to emulate NFS/EFS
//! latency on a local disk. Data reads and writes pass through without delay.
//!
//! Usage: latencyfs [--delay-us 1000] [--threads 64] [--ttl-ms 0] [--readdirplus]
//! [--stats FILE] [FAULTS] UNDERLYING MOUNTPOINT. `--stats FILE` keeps FILE at the count
//! of delayed calls by kind; `LATENCYFS_TRACE=FILE` writes a line per delayed call (its
//! kind, the directory or inode it was made on, and the time).
//!
//! `--ttl-ms N` lets the kernel cache attributes and entries for N ms, like an NFS
//! client's attribute cache (0: every stat and lookup reaches latencyfs).
//! `--readdirplus` models NFS's READDIRPLUS: the kernel lists directories with
//! READDIRPLUS (`FUSE_DO_READDIRPLUS`), and each batch, one delayed reply, carries every
//! entry's attributes with the TTL, so a stat or lookup of a listed name within the TTL
//! costs no round trip (at TTL 0 the attributes expire at once and it changes nothing).
//! Runs in the foreground until the mount point is unmounted (`fusermount3 -u`).
//! FUSE inode numbers are the underlying inode numbers (the root swapped with 1). Each
//! inode the kernel knows is kept as (parent inode, name), the name it was last seen
//! under, and its path is built on demand from these links: a rename updates one link
//! (O(1), as one round trip on NFS), and what lies under a renamed directory moves with
//! it.
//!
//! FAULTS inject errors and stalls for reliability tests (tests/faults.rs): EIO on
//! reads, EIO or ENOSPC on writes past a byte budget, EMLINK past a link limit, EACCES,
//! stalled calls, refused owners, and times kept in whole seconds. See `faults.rs` and docs/testing.md.

mod faults;

use faults::{Faults, Op};

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

/// The delayed calls, counted one by one for `--stats` (a negative lookup, one that
/// answers ENOENT, is also counted as `lookup_negative`).
#[derive(Clone, Copy)]
enum Call {
    Lookup,
    LookupNegative,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Opendir,
    Readdir,
    Readdirplus,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Create,
}

const CALLS: [&str; 22] = [
    "lookup",
    "lookup_negative",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "opendir",
    "readdir",
    "readdirplus",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "create",
];

/// A directory entry as listed: name, FUSE inode, type.
type Listed = (OsString, u64, FileType);

struct LatFs {
    root: PathBuf,
    root_ino: u64,
    delay: Duration,
    ttl: Duration,
    /// `--readdirplus`: ask the kernel for READDIRPLUS and answer it.
    readdirplus: bool,
    /// FUSE inode -> (parent FUSE inode, name): where the kernel last saw it.
    names: RwLock<HashMap<u64, (u64, OsString)>>,
    files: Mutex<HashMap<u64, File>>,
    next_fh: AtomicU64,
    /// Delayed calls by kind (`Call`), shared with the `--stats` writer.
    calls: std::sync::Arc<[AtomicU64; CALLS.len()]>,
    faults: Faults,
    trace: Option<Mutex<std::io::LineWriter<File>>>,
}

fn errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The FUSE generation of an inode: its birth time in nanoseconds. The FUSE inode is
/// the underlying inode number, which ext4 hands to a new file as soon as the old one
/// is deleted; the kernel takes an inode number it still holds with the same
/// generation for the same file, with its cached entries below it (a directory made
/// where a deleted one's number was free showed the old one's children: `mkdir` failed
/// with EEXIST). An NFS file handle carries a generation for the same reason.
fn generation(m: &std::fs::Metadata) -> Generation {
    let ns = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    Generation(ns)
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs((-sec) as u64) + Duration::from_nanos(nsec as u64)
    }
}

impl LatFs {
    fn wait(&self, call: Call) {
        self.calls[call as usize].fetch_add(1, Ordering::Relaxed);
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
    }

    /// `LATENCYFS_TRACE=FILE`: one line per delayed call, its kind, the path of the
    /// directory (name calls) or inode it was made on, and when (seconds since the Unix
    /// epoch, as the logs' clock): benchmarks, which calls a run adds, by place and time.
    fn trace(&self, call: Call, ino: INodeNo) {
        let Some(t) = &self.trace else {
            return;
        };
        let rel = self.rel(ino).unwrap_or_else(|| PathBuf::from("?"));
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let line = format!("{}\t{}\t{at:.6}\n", CALLS[call as usize], rel.display());
        let _ = t.lock().unwrap().write_all(line.as_bytes());
    }

    fn fuse_ino(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_ino {
            1
        } else if st_ino == 1 {
            self.root_ino
        } else {
            st_ino
        }
    }

    /// The path of `ino` relative to `root`, built from the (parent, name) links up to
    /// the root; `None` for an inode the kernel was never given, or one whose chain does
    /// not reach the root (a stale link to a reused inode number).
    fn rel(&self, ino: INodeNo) -> Option<PathBuf> {
        let names = self.names.read().unwrap();
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut at = ino.0;
        while at != 1 {
            // Deeper than any real tree: a cycle of stale links.
            if parts.len() > 4096 {
                return None;
            }
            let (parent, name) = names.get(&at)?;
            parts.push(name);
            at = *parent;
        }
        Some(parts.iter().rev().collect())
    }

    /// Remembers that `ino` is `name` in `parent`.
    fn remember(&self, ino: u64, parent: INodeNo, name: &OsStr) {
        if ino != 1 {
            self.names
                .write()
                .unwrap()
                .insert(ino, (parent.0, name.to_os_string()));
        }
    }

    fn full(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// A time as given back: truncated to the store's granularity, if it has one
    /// (`--time-granularity-ns`).
    fn time(&self, sec: i64, nsec: i64) -> SystemTime {
        let (sec, nsec) = self.faults.time(sec, nsec);
        time(sec, nsec)
    }

    fn attr(&self, m: &std::fs::Metadata) -> FileAttr {
        let ft = m.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            FileType::Directory
        } else if ft.is_symlink() {
            FileType::Symlink
        } else if ft.is_fifo() {
            FileType::NamedPipe
        } else if ft.is_char_device() {
            FileType::CharDevice
        } else if ft.is_block_device() {
            FileType::BlockDevice
        } else if ft.is_socket() {
            FileType::Socket
        } else {
            FileType::RegularFile
        };
        FileAttr {
            ino: INodeNo(self.fuse_ino(m.ino())),
            size: m.size(),
            blocks: m.blocks(),
            atime: self.time(m.atime(), m.atime_nsec()),
            mtime: self.time(m.mtime(), m.mtime_nsec()),
            ctime: self.time(m.ctime(), m.ctime_nsec()),
            crtime: self.time(m.ctime(), m.ctime_nsec()),
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: m.blksize() as u32,
            flags: 0,
        }
    }

    /// A time to set, as the store keeps it (`--time-granularity-ns`: truncated).
    fn ts(&self, t: TimeOrNow) -> rustix::fs::Timespec {
        let mut t = ts(t);
        if t.tv_nsec != rustix::fs::UTIME_NOW && t.tv_nsec != rustix::fs::UTIME_OMIT {
            (t.tv_sec, t.tv_nsec) = self.faults.time(t.tv_sec, t.tv_nsec);
        }
        t
    }

    /// Stats `rel` (`name` in `parent`), remembers where it is, and replies with the
    /// entry; `false` when it does not exist.
    fn entry(&self, rel: &Path, parent: INodeNo, name: &OsStr, reply: ReplyEntry) -> bool {
        match std::fs::symlink_metadata(self.full(rel)) {
            Ok(m) => {
                let a = self.attr(&m);
                self.remember(a.ino.0, parent, name);
                reply.entry(&self.ttl, &a, generation(&m));
                true
            }
            Err(e) => {
                reply.error(errno(&e));
                e.kind() != std::io::ErrorKind::NotFound
            }
        }
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        self.rel(parent).map(|p| p.join(name)).ok_or(Errno::ENOENT)
    }

    /// The directory `ino` (its path) and its entries sorted by name: the offset of an
    /// entry is its place in this order, so a listing continues where the last batch
    /// stopped. With the listing faults (`--dup-list`, `--eio-list`): a batch starting
    /// at or past the failing entry is EIO, and the listing stops there.
    fn list(&self, ino: INodeNo, offset: u64) -> Result<(PathBuf, Vec<Listed>), Errno> {
        let (rel, entries) = self.list_all(ino)?;
        let (mut entries, fail) = self.faults.listing(&rel, entries);
        if let Some(n) = fail {
            if offset as usize >= n {
                return Err(Errno::EIO);
            }
            entries.truncate(n);
        }
        Ok((rel, entries))
    }

    fn list_all(&self, ino: INodeNo) -> Result<(PathBuf, Vec<Listed>), Errno> {
        let rel = self.rel(ino).ok_or(Errno::ENOENT)?;
        self.faults.stall(Op::Readdir, &rel);
        let mut entries = Vec::new();
        for e in io(std::fs::read_dir(self.full(&rel)))? {
            let e = io(e)?;
            let kind = match e.file_type().ok() {
                Some(t) if t.is_dir() => FileType::Directory,
                Some(t) if t.is_symlink() => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            entries.push((e.file_name(), self.fuse_ino(e.ino()), kind));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((rel, entries))
    }
}

fn ts(t: TimeOrNow) -> rustix::fs::Timespec {
    match t {
        TimeOrNow::Now => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        TimeOrNow::SpecificTime(s) => {
            let (sec, nsec) = match s.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let mut sec = -(d.as_secs() as i64);
                    let mut nsec = -(d.subsec_nanos() as i64);
                    if nsec < 0 {
                        sec -= 1;
                        nsec += 1_000_000_000;
                    }
                    (sec, nsec)
                }
            };
            rustix::fs::Timespec {
                tv_sec: sec,
                tv_nsec: nsec as _,
            }
        }
    }
}

/// Answers getxattr/listxattr: the size when asked for it (`size == 0`), else the
/// bytes if they fit.
fn xattr_reply(r: rustix::io::Result<usize>, buf: &[u8], size: u32, reply: ReplyXattr) {
    match r {
        Ok(n) if size == 0 => reply.size(n as u32),
        Ok(n) if n <= size as usize => reply.data(&buf[..n]),
        Ok(_) => reply.error(Errno::ERANGE),
        Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
    }
}

macro_rules! tryr {
    ($reply:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => {
                $reply.error(e);
                return;
            }
        }
    };
}

fn io<T>(r: std::io::Result<T>) -> Result<T, Errno> {
    r.map_err(|e| errno(&e))
}

impl Filesystem for LatFs {
    fn init(&mut self, _r: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // POSIX ACLs go to the underlying file system (as on NFSv4 with ACLs), so cp -a
        // and snapring can read and write them through the mount.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_POSIX_ACL);
        let _ = config.set_max_write(1 << 20);
        if self.readdirplus {
            // Always READDIRPLUS (not the kernel's adaptive choice): an NFS client
            // uses it for every listing of a directory it has not cached.
            config
                .add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS)
                .map_err(|_| std::io::Error::other("the kernel has no FUSE READDIRPLUS"))?;
        }
        Ok(())
    }

    fn lookup(&self, _r: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.wait(Call::Lookup);
        self.trace(Call::Lookup, parent);
        let rel = tryr!(reply, self.child(parent, name));
        self.faults.stall(Op::Lookup, &rel);
        tryr!(reply, self.faults.stat(&rel));
        if !self.entry(&rel, parent, name, reply) {
            self.calls[Call::LookupNegative as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn getattr(&self, _r: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.wait(Call::Getattr);
        self.trace(Call::Getattr, ino);
        let rel = tryr!(reply, self.rel(ino).ok_or(Errno::ENOENT));
        self.faults.stall(Op::Getattr, &rel);
        tryr!(reply, self.faults.stat(&rel));
        match std::fs::symlink_metadata(self.full(&rel)) {
            Ok(m) => reply.attr(&self.ttl, &self.attr(&m)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _r: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.wait(Call::Setattr);
        self.trace(Call::Setattr, ino);
        let rel = tryr!(reply, self.rel(ino).ok_or(Errno::ENOENT));
        let p = self.full(&rel);
        if uid.is_some() || gid.is_some() {
            use std::os::unix::fs::MetadataExt;
            let m = tryr!(reply, io(std::fs::symlink_metadata(&p)));
            tryr!(reply, self.faults.chown((m.uid(), m.gid()), (uid, gid)));
            tryr!(reply, io(std::os::unix::fs::lchown(&p, uid, gid)));
        }
        if let Some(m) = mode {
            tryr!(
                reply,
                io(std::fs::set_permissions(
                    &p,
                    std::fs::Permissions::from_mode(m & 0o7777)
                ))
            );
        }
        if let Some(s) = size {
            let r =
                match fh.and_then(|f| self.files.lock().unwrap().get(&f.0).map(|f| f.set_len(s))) {
                    Some(r) => r,
                    None => std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .and_then(|f| f.set_len(s)),
                };
            tryr!(reply, io(r));
        }
        if atime.is_some() || mtime.is_some() {
            let omit = rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            };
            let t = rustix::fs::Timestamps {
                last_access: atime.map(|t| self.ts(t)).unwrap_or(omit),
                last_modification: mtime.map(|t| self.ts(t)).unwrap_or(omit),
            };
            tryr!(
                reply,
                io(rustix::fs::utimensat(
                    rustix::fs::CWD,
                    &p,
                    &t,
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW
                )
                .map_err(std::io::Error::from))
            );
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) => reply.attr(&self.ttl, &self.attr(&m)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _r: &Request, ino: INodeNo, reply: ReplyData) {
        self.wait(Call::Readlink);
        self.trace(Call::Readlink, ino);
        let rel = tryr!(reply, self.rel(ino).ok_or(Errno::ENOENT));
        match std::fs::read_link(self.full(&rel)) {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        _r: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.wait(Call::Mknod);
        self.trace(Call::Mknod, parent);
        let rel = tryr!(reply, self.child(parent, name));
        tryr!(reply, self.faults.create());
        let ft = match mode & libc::S_IFMT {
            libc::S_IFIFO => rustix::fs::FileType::Fifo,
            libc::S_IFCHR => rustix::fs::FileType::CharacterDevice,
            libc::S_IFBLK => rustix::fs::FileType::BlockDevice,
            libc::S_IFSOCK => rustix::fs::FileType::Socket,
            _ => rustix::fs::FileType::RegularFile,
        };
        tryr!(
            reply,
            io(rustix::fs::mknodat(
                rustix::fs::CWD,
                self.full(&rel),
                ft,
                rustix::fs::Mode::from_raw_mode(mode & !umask & 0o7777),
                rdev as u64,
            )
            .map_err(std::io::Error::from))
        );
        self.entry(&rel, parent, name, reply);
    }

    fn mkdir(
        &self,
        _r: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.wait(Call::Mkdir);
        self.trace(Call::Mkdir, parent);
        let rel = tryr!(reply, self.child(parent, name));
        tryr!(reply, self.faults.create());
        let p = self.full(&rel);
        tryr!(reply, io(std::fs::create_dir(&p)));
        let _ =
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & !umask & 0o7777));
        self.entry(&rel, parent, name, reply);
    }

    fn unlink(&self, _r: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.wait(Call::Unlink);
        self.trace(Call::Unlink, parent);
        let rel = tryr!(reply, self.child(parent, name));
        match std::fs::remove_file(self.full(&rel)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&self, _r: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.wait(Call::Rmdir);
        self.trace(Call::Rmdir, parent);
        let rel = tryr!(reply, self.child(parent, name));
        match std::fs::remove_dir(self.full(&rel)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn symlink(
        &self,
        _r: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.wait(Call::Symlink);
        self.trace(Call::Symlink, parent);
        let rel = tryr!(reply, self.child(parent, link_name));
        tryr!(reply, self.faults.create());
        tryr!(
            reply,
            io(std::os::unix::fs::symlink(target, self.full(&rel)))
        );
        self.entry(&rel, parent, link_name, reply);
    }

    fn rename(
        &self,
        _r: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.wait(Call::Rename);
        self.trace(Call::Rename, parent);
        let from = tryr!(reply, self.child(parent, name));
        let to = tryr!(reply, self.child(newparent, newname));
        let rflags = rustix::fs::RenameFlags::from_bits_truncate(flags.bits());
        tryr!(
            reply,
            io(rustix::fs::renameat_with(
                rustix::fs::CWD,
                self.full(&from),
                rustix::fs::CWD,
                self.full(&to),
                rflags
            )
            .map_err(std::io::Error::from))
        );
        // The moved inode is now `newname` in `newparent` (what lies under it follows
        // through its link); with RENAME_EXCHANGE the other one moved the other way. An
        // inode the rename replaced keeps its old link, a name that is gone, as the
        // kernel forgets it.
        if let Ok(m) = std::fs::symlink_metadata(self.full(&to)) {
            self.remember(self.fuse_ino(m.ino()), newparent, newname);
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            && let Ok(m) = std::fs::symlink_metadata(self.full(&from))
        {
            self.remember(self.fuse_ino(m.ino()), parent, name);
        }
        reply.ok();
    }

    fn link(
        &self,
        _r: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.wait(Call::Link);
        self.trace(Call::Link, newparent);
        let from = tryr!(reply, self.rel(ino).ok_or(Errno::ENOENT));
        let to = tryr!(reply, self.child(newparent, newname));
        tryr!(reply, self.faults.create());
        let nlink = tryr!(reply, io(std::fs::symlink_metadata(self.full(&from)))).nlink();
        tryr!(reply, self.faults.link(nlink));
        tryr!(
            reply,
            io(std::fs::hard_link(self.full(&from), self.full(&to)))
        );
        match std::fs::symlink_metadata(self.full(&to)) {
            Ok(m) => {
                // The inode is reached by its newest name from now on: the old one may
                // be unlinked next (a file written under a temporary name and linked
                // into place), and the kernel keeps using the inode, as an NFS client
                // keeps using the file handle.
                self.remember(self.fuse_ino(m.ino()), newparent, newname);
                reply.entry(&self.ttl, &self.attr(&m), generation(&m))
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _r: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.wait(Call::Open);
        self.trace(Call::Open, ino);
        let rel = tryr!(reply, self.rel(ino).ok_or(Errno::ENOENT));
        tryr!(reply, self.faults.open(&rel));
        self.faults.stall(Op::Open, &rel);
        let acc = flags.0 & libc::O_ACCMODE;
        let f = tryr!(
            reply,
            io(std::fs::OpenOptions::new()
                .read(acc != libc::O_WRONLY)
                .write(acc != libc::O_RDONLY)
                .custom_flags(flags.0 & (libc::O_TRUNC | libc::O_APPEND | libc::O_NOFOLLOW))
                .open(self.full(&rel)))
        );
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.lock().unwrap().insert(fh, f);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn read(
        &self,
        _r: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let rel = self.rel(ino).unwrap_or_default();
        self.faults.stall(Op::Read, &rel);
        tryr!(reply, self.faults.read(&rel));
        let f = self.files.lock().unwrap().get(&fh.0).map(|f| f.try_clone());
        let f = tryr!(reply, f.ok_or(Errno::EBADF).and_then(io));
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => {
                    reply.error(errno(&e));
                    return;
                }
            }
        }
        reply.data(&buf[..got]);
    }

    fn write(
        &self,
        _r: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if self.faults.stalls(Op::Write) {
            let rel = self.rel(ino).unwrap_or_default();
            self.faults.stall(Op::Write, &rel);
        }
        tryr!(reply, self.faults.write(ino.0, data.len()));
        let f = self.files.lock().unwrap().get(&fh.0).map(|f| f.try_clone());
        let f = tryr!(reply, f.ok_or(Errno::EBADF).and_then(io));
        match f.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _r: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _r: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _r: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let f = self.files.lock().unwrap().get(&fh.0).map(|f| f.sync_all());
        match f {
            Some(Err(e)) => reply.error(errno(&e)),
            _ => reply.ok(),
        }
    }

    fn opendir(&self, _r: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.wait(Call::Opendir);
        self.trace(Call::Opendir, ino);
        match self.rel(ino) {
            Some(rel) => {
                tryr!(reply, self.faults.open(&rel));
                reply.opened(FileHandle(0), FopenFlags::empty())
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _r: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.wait(Call::Readdir);
        self.trace(Call::Readdir, ino);
        let (_, entries) = tryr!(reply, self.list(ino, offset));
        for (i, (name, ino, kind)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    /// One delayed reply per batch, as `readdir`, but every entry carries its
    /// attributes and the TTL (the server stats them locally, at no extra delay).
    fn readdirplus(
        &self,
        _r: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.wait(Call::Readdirplus);
        self.trace(Call::Readdirplus, ino);
        let (rel, entries) = tryr!(reply, self.list(ino, offset));
        for (i, (name, _, _)) in entries.into_iter().enumerate().skip(offset as usize) {
            let child = rel.join(&name);
            // Gone since the listing: left out, as a server would.
            let Ok(m) = std::fs::symlink_metadata(self.full(&child)) else {
                continue;
            };
            let a = self.attr(&m);
            // The kernel now holds this inode: remember where it is, as a lookup does.
            self.remember(a.ino.0, ino, &name);
            if reply.add(a.ino, (i + 1) as u64, &name, &self.ttl, &a, generation(&m)) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _r: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.wait(Call::Statfs);
        match rustix::fs::statvfs(&self.root) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        }
    }

    fn setxattr(
        &self,
        _r: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.wait(Call::Setxattr);
        self.trace(Call::Setxattr, ino);
        let rel = tryr!(reply, self.rel(ino).ok_or(Errno::ENOENT));
        let special = std::fs::symlink_metadata(self.full(&rel))
            .is_ok_and(|m| !m.file_type().is_file() && !m.file_type().is_dir());
        tryr!(reply, self.faults.setxattr(name, special));
        match rustix::fs::lsetxattr(
            self.full(&rel),
            name,
            value,
            rustix::fs::XattrFlags::from_bits_truncate(flags as u32),
        ) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        }
    }

    fn getxattr(&self, _r: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.wait(Call::Getxattr);
        self.trace(Call::Getxattr, ino);
        let rel = tryr!(reply, self.rel(ino).ok_or(Errno::ENOENT));
        let mut buf = vec![0u8; 65536];
        let r = rustix::fs::lgetxattr(self.full(&rel), name, &mut buf[..]);
        xattr_reply(r, &buf, size, reply);
    }

    fn listxattr(&self, _r: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.wait(Call::Listxattr);
        self.trace(Call::Listxattr, ino);
        let rel = tryr!(reply, self.rel(ino).ok_or(Errno::ENOENT));
        let mut buf = vec![0u8; 65536];
        let r = rustix::fs::llistxattr(self.full(&rel), &mut buf[..]);
        xattr_reply(r, &buf, size, reply);
    }

    fn removexattr(&self, _r: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.wait(Call::Removexattr);
        self.trace(Call::Removexattr, ino);
        let rel = tryr!(reply, self.rel(ino).ok_or(Errno::ENOENT));
        match rustix::fs::lremovexattr(self.full(&rel), name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        }
    }

    fn create(
        &self,
        _r: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.wait(Call::Create);
        self.trace(Call::Create, parent);
        let rel = tryr!(reply, self.child(parent, name));
        tryr!(reply, self.faults.open(&rel));
        tryr!(reply, self.faults.create());
        let acc = flags & libc::O_ACCMODE;
        let f = tryr!(
            reply,
            io(std::fs::OpenOptions::new()
                .read(acc != libc::O_WRONLY)
                .write(true)
                .create(true)
                .custom_flags(flags & (libc::O_EXCL | libc::O_TRUNC | libc::O_NOFOLLOW))
                .mode(mode & !umask & 0o7777)
                .open(self.full(&rel)))
        );
        let m = tryr!(reply, io(f.metadata()));
        let a = self.attr(&m);
        self.remember(a.ino.0, parent, name);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.lock().unwrap().insert(fh, f);
        reply.created(
            &self.ttl,
            &a,
            generation(&m),
            FileHandle(fh),
            FopenFlags::empty(),
        );
    }
}

/// `--stats FILE`: keeps FILE at the counts of delayed calls by kind, as a JSON object
/// (rewritten atomically within 50 ms of a change), for the benchmark to read before and
/// after each timed command.
fn write_stats(file: &Path, calls: &[AtomicU64; CALLS.len()]) {
    let mut last = None;
    loop {
        let now: Vec<u64> = calls.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        if last.as_ref() != Some(&now) {
            let body = CALLS
                .iter()
                .zip(&now)
                .map(|(k, v)| format!("\"{k}\": {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let tmp = file.with_extension("tmp");
            if std::fs::write(&tmp, format!("{{{body}}}\n")).is_ok() {
                let _ = std::fs::rename(&tmp, file);
            }
            last = Some(now);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let faults = Faults::from_args(&mut args).unwrap_or_else(|e| {
        eprintln!("latencyfs: {e}");
        std::process::exit(2);
    });
    let stats = args.iter().position(|a| a == "--stats").map(|i| {
        let f = PathBuf::from(&args[i + 1]);
        args.drain(i..=i + 1);
        f
    });
    let mut opt = |name: &str, default: u64| -> u64 {
        match args.iter().position(|a| a == name) {
            Some(i) => {
                let v = args[i + 1].parse().expect("a number");
                args.drain(i..=i + 1);
                v
            }
            None => default,
        }
    };
    let delay_us = opt("--delay-us", 1000);
    let threads = opt("--threads", 64);
    let ttl_ms = opt("--ttl-ms", 0);
    let readdirplus = match args.iter().position(|a| a == "--readdirplus") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    if args.len() != 2 {
        eprintln!(
            "usage: latencyfs [--delay-us N] [--threads N] [--ttl-ms N] [--readdirplus] \
             [--eio-read PATTERN] \
             [--eio-after BYTES | --enospc-after BYTES] [--per-file] [--link-limit N] \
             [--eacces PATTERN] [--stall PATTERN] [--stall-secs N] [--stall-ops LIST] \
             [--stats FILE] UNDERLYING MOUNTPOINT"
        );
        std::process::exit(2);
    }
    let root = std::fs::canonicalize(&args[0]).expect("underlying directory");
    let root_ino = std::fs::metadata(&root).expect("stat underlying").ino();
    let fs = LatFs {
        root,
        root_ino,
        delay: Duration::from_micros(delay_us),
        ttl: Duration::from_millis(ttl_ms),
        readdirplus,
        names: RwLock::new(HashMap::new()),
        files: Mutex::new(HashMap::new()),
        next_fh: AtomicU64::new(1),
        calls: std::sync::Arc::new(std::array::from_fn(|_| AtomicU64::new(0))),
        faults,
        trace: std::env::var_os("LATENCYFS_TRACE").map(|p| {
            Mutex::new(std::io::LineWriter::new(
                File::create(p).expect("LATENCYFS_TRACE file"),
            ))
        }),
    };
    if let Some(file) = stats {
        let calls = fs.calls.clone();
        std::thread::spawn(move || write_stats(&file, &calls));
    }
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("latencyfs".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
    ];
    cfg.acl = fuser::SessionACL::All;
    cfg.n_threads = Some(threads as usize);
    if let Err(e) = fuser::mount(fs, &args[1], &cfg) {
        eprintln!("latencyfs: mount {}: {e}", args[1]);
        std::process::exit(1);
    }
}
