//! Fd-relative file-system primitives used by every other module: stat, open, readdir,
//! extended attributes, sparse-aware copy-with-hash, metadata application. All I/O in
//! snapring goes through here; no `unsafe` (rustix does the syscalls).
//!
//! Everything works relative to an open directory (`openat`, `fstatat`, `linkat`, …),
//! so paths of any depth work (no PATH_MAX limit) and no path is ever re-resolved
//! through a symlink an attacker could swap in.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, SeekFrom, Timespec, Timestamps};

/// The kind of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
}

impl Kind {
    pub fn from_mode(mode: u32) -> Kind {
        match mode & 0o170000 {
            0o040000 => Kind::Dir,
            0o120000 => Kind::Symlink,
            0o010000 => Kind::Fifo,
            0o020000 => Kind::Char,
            0o060000 => Kind::Block,
            0o140000 => Kind::Socket,
            _ => Kind::File,
        }
    }
    /// One-letter code used in manifests and plans.
    pub fn code(self) -> char {
        match self {
            Kind::File => 'f',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            Kind::Fifo => 'p',
            Kind::Char => 'c',
            Kind::Block => 'b',
            Kind::Socket => 's',
        }
    }
    /// The name reports use: `file`, `directory`, `symlink`, …
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Char => "character device",
            Kind::Block => "block device",
            Kind::Socket => "socket",
        }
    }
    pub fn from_code(c: char) -> Option<Kind> {
        Some(match c {
            'f' => Kind::File,
            'd' => Kind::Dir,
            'l' => Kind::Symlink,
            'p' => Kind::Fifo,
            'c' => Kind::Char,
            'b' => Kind::Block,
            's' => Kind::Socket,
            _ => return None,
        })
    }
    fn type_bits(self) -> u32 {
        match self {
            Kind::File => 0o100000,
            Kind::Dir => 0o040000,
            Kind::Symlink => 0o120000,
            Kind::Fifo => 0o010000,
            Kind::Char => 0o020000,
            Kind::Block => 0o060000,
            Kind::Socket => 0o140000,
        }
    }
}

/// A time with nanoseconds, as stored by the file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

impl Time {
    /// Nanoseconds since the epoch.
    pub fn nanos(self) -> i128 {
        self.sec as i128 * 1_000_000_000 + self.nsec as i128
    }

    /// Whether `stored` is what a store keeping times to `granularity` ns keeps of time
    /// `self` (0 or 1: equal). A store with coarse timestamps (whole seconds: some NFS
    /// servers; FAT) truncates what it is given, so only `self` rounded down to the
    /// granularity is the same time: a stored time later than `self`, or earlier by a
    /// granularity or more, is another one (a tolerance both ways hid a real change).
    pub fn kept_as(self, stored: Time, granularity: u64) -> bool {
        if granularity <= 1 {
            return self == stored;
        }
        let g = granularity as i128;
        stored.nanos() == self.nanos().div_euclid(g) * g
    }
}

/// How a store's time granularity (ns) is said: `the second`, `2 s`, `1000 ns`.
pub fn granularity_words(g: u64) -> String {
    match g {
        1_000_000_000 => "the second".into(),
        g if g % 1_000_000_000 == 0 => format!("{} s", g / 1_000_000_000),
        g => format!("{g} ns"),
    }
}

impl<Tz: chrono::TimeZone> From<chrono::DateTime<Tz>> for Time {
    fn from(t: chrono::DateTime<Tz>) -> Time {
        Time {
            sec: t.timestamp(),
            nsec: t.timestamp_subsec_nanos(),
        }
    }
}

impl Time {
    /// As people read it: RFC 3339 in UTC with the nanoseconds
    /// (`2026-11-22T00:45:15.978447443Z`), as `history` shows it. The manifest keeps the
    /// `SEC.NSEC` form of [`Display`](std::fmt::Display); reports (`diff`, `verify`,
    /// `history`) use this one.
    pub fn rfc3339(self) -> String {
        match chrono::DateTime::from_timestamp(self.sec, self.nsec) {
            Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            None => self.to_string(),
        }
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:09}", self.sec, self.nsec)
    }
}

impl std::str::FromStr for Time {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('.').ok_or_else(|| format!("bad time {s:?}"))?;
        let sec = a.parse().map_err(|_| format!("bad time {s:?}"))?;
        let nsec: u32 = b.parse().map_err(|_| format!("bad time {s:?}"))?;
        if b.len() != 9 || nsec >= 1_000_000_000 {
            return Err(format!("bad time {s:?}"));
        }
        Ok(Time { sec, nsec })
    }
}

/// The subset of `struct stat` snapshot cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission and special bits (`0o7777`), without the type bits.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: Time,
    pub ctime: Time,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub rdev: u64,
    /// Allocated 512-byte blocks (to tell a sparse file).
    pub blocks: u64,
}

impl Meta {
    pub fn from_stat(st: &rfs::Stat) -> Meta {
        #[allow(clippy::unnecessary_cast)]
        Meta {
            kind: Kind::from_mode(st.st_mode as u32),
            perm: st.st_mode as u32 & 0o7777,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            size: st.st_size as u64,
            mtime: Time {
                sec: st.st_mtime as i64,
                nsec: st.st_mtime_nsec as u32,
            },
            ctime: Time {
                sec: st.st_ctime as i64,
                nsec: st.st_ctime_nsec as u32,
            },
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            nlink: st.st_nlink as u64,
            rdev: st.st_rdev as u64,
            blocks: st.st_blocks as u64,
        }
    }
    /// The full `st_mode` (type and permission bits).
    pub fn mode(&self) -> u32 {
        self.kind.type_bits() | self.perm
    }
}

/// When the inode at `path` (not followed) was created (`statx`'s `btime`), `None`
/// where the file system or the kernel does not tell.
pub fn birth_time(path: &std::path::Path) -> Option<Time> {
    let x = rfs::statx(
        rfs::CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        rfs::StatxFlags::BTIME,
    )
    .ok()?;
    (x.stx_mask & rfs::StatxFlags::BTIME.bits() != 0).then_some(Time {
        sec: x.stx_btime.tv_sec,
        nsec: x.stx_btime.tv_nsec,
    })
}

/// The attributes of open file `fd` as the kernel has them cached (`statx` with
/// `AT_STATX_DONT_SYNC`): no round trip over NFS or FUSE, where an `fstat` with expired
/// attributes costs one. Only for a descriptor whose attributes the kernel was just
/// given and that nobody else changes: a file just created (the create's reply carries
/// them), or a snapshot's file just opened (the open checked them; a snapshot does
/// not change). `None` where `statx` is missing.
pub fn fstat_cached(fd: BorrowedFd<'_>) -> Option<Meta> {
    let flags = AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC;
    let x = rfs::statx(fd, c"", flags, rfs::StatxFlags::BASIC_STATS).ok()?;
    let t = |t: rfs::StatxTimestamp| Time {
        sec: t.tv_sec,
        nsec: t.tv_nsec,
    };
    let mode = u32::from(x.stx_mode);
    Some(Meta {
        kind: Kind::from_mode(mode),
        perm: mode & 0o7777,
        uid: x.stx_uid,
        gid: x.stx_gid,
        size: x.stx_size,
        mtime: t(x.stx_mtime),
        ctime: t(x.stx_ctime),
        dev: rfs::makedev(x.stx_dev_major, x.stx_dev_minor),
        ino: x.stx_ino,
        nlink: u64::from(x.stx_nlink),
        rdev: rfs::makedev(x.stx_rdev_major, x.stx_rdev_minor),
        blocks: x.stx_blocks,
    })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Meta> {
    Ok(Meta::from_stat(&rfs::statat(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
    )?))
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Meta> {
    Ok(Meta::from_stat(&rfs::fstat(fd)?))
}

/// Opens a directory for reading and as an anchor for `*at` calls; never follows a symlink.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens subdirectory `name` of `dir`, which a listing `lstat`ed as the directory `id`
/// (device, inode). The name may have been replaced since (a source changing under a
/// backup, a restore's target under a user who can write it): by a symlink (not
/// followed), by a file, or by another directory, whose contents would otherwise be
/// read or written as the listed one's (a private directory renamed into place shown
/// with a public one's mode; a symlink to `/etc` read into a snapshot). Each is an
/// error of kind `NotFound` naming what the name is now. With `noatime`, opened with
/// `O_NOATIME` where the caller may (as [`open_read_at`]).
pub fn open_same_dir(
    dir: BorrowedFd<'_>,
    name: &[u8],
    id: (u64, u64),
    noatime: bool,
) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let opened = match noatime {
        true => match rfs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
            Err(rustix::io::Errno::PERM) => rfs::openat(dir, name, flags, Mode::empty()),
            r => r,
        },
        false => rfs::openat(dir, name, flags, Mode::empty()),
    };
    let fd = match opened {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
            let now = lstat_at(dir, name)
                .map(|m| m.kind.name())
                .unwrap_or("something else");
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no longer a directory: replaced by a {now}"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    // The attributes the open has just given the kernel: no round trip.
    let now = match fstat_cached(fd.as_fd()) {
        Some(m) => m,
        None => fstat(fd.as_fd())?,
    };
    if (now.dev, now.ino) != id {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "replaced by another directory after it was listed",
        ));
    }
    Ok(fd)
}

/// Opens a directory by a plain path (store roots, source roots).
pub fn open_dir(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens a regular file for reading without following symlinks. Tries `O_NOATIME`
/// first (a backup should not disturb access times) and drops it where not permitted.
///
/// The name may have been replaced since the caller's `lstat` (a source changing
/// under a backup): `O_NONBLOCK` keeps a fifo's open from waiting, and what was opened
/// must still be a regular file, else a fifo or a device would be read as the file's
/// content (`/dev/zero` for ever). Anything else is an error of kind `NotFound` (the
/// file is gone) naming what the name is now. The check reads the attributes the open
/// has just given the kernel (no round trip; an inode's type never changes).
pub fn open_read_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let base = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rfs::openat(dir, name, base | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => rfs::openat(dir, name, base, Mode::empty())?,
        r => r?,
    };
    let kind = match fstat_cached(fd.as_fd()) {
        Some(m) => m.kind,
        None => fstat(fd.as_fd())?.kind,
    };
    if kind != Kind::File {
        return Err(not_a_file(kind));
    }
    Ok(fd)
}

/// Opens `path` for reading only if it is a regular file: `O_NONBLOCK`, so a fifo
/// put in its place does not stall the open (nor, refused, the read); a device
/// (`/dev/zero`), a directory or a socket is refused too, with an error of kind
/// `InvalidData` (not `NotFound`: the name is there, as something else) saying what
/// it is. Follows a symlink only when `follow`. For the small files a store or a
/// catalog folder keeps (`snapshots.json`, run records, the lock, the progress), which
/// whoever can write the store can replace.
pub fn open_regular(path: &std::path::Path, follow: bool) -> io::Result<std::fs::File> {
    let mut flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = rfs::open(path, flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP if !follow => io::Error::new(
            io::ErrorKind::InvalidData,
            "is a symlink, not a regular file: not followed",
        ),
        e => e.into(),
    })?;
    check_regular(fd.as_fd())?;
    Ok(std::fs::File::from(fd))
}

/// `Ok` when `fd` is a regular file; else the `InvalidData` error of [`open_regular`].
pub fn check_regular(fd: BorrowedFd<'_>) -> io::Result<()> {
    let kind = fstat(fd)?.kind;
    if kind != Kind::File {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("is a {}, not a regular file: not read", kind.name()),
        ));
    }
    Ok(())
}

/// The whole of the regular file `path` (symlinks followed), as [`open_regular`]
/// opens it: never blocks on a fifo, never reads a device.
pub fn read_regular(path: &std::path::Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = open_regular(path, true)?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

/// The error of [`open_read_at`] for a name that is no longer a regular file.
pub fn not_a_file(kind: Kind) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no longer a regular file: replaced by a {}", kind.name()),
    )
}

/// Creates a new file for writing; fails if the name exists.
pub fn create_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?)
}

/// Creates a new file for writing with mode `perm` (less the umask); fails if the name
/// exists. The creating open may write even when `perm` has no write bit.
pub fn create_at_mode(dir: BorrowedFd<'_>, name: &[u8], perm: u32) -> io::Result<OwnedFd> {
    Ok(rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(perm),
    )?)
}

/// The umask the process was started with, before [`owner_usable_umask`] took the
/// owner's bits out of it (the same when it had none).
static USER_UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Takes the owner's bits out of the process umask (0277 becomes 0077, 0222 becomes
/// 0022; group and other keep theirs), as the first thing the command does, before any
/// thread is started. Everything snapring creates is then usable by its owner while it
/// works, as `mkdir -p` and `cp -r` make their directories `u+wx`: a directory made
/// 0500 under umask 0277 could not be written into (a restore's `--to` could not hold
/// its record, a snapshot's or a restored tree's subdirectories their files, a new
/// store its `.snapring/`), and the files snapring itself writes (locks, journal,
/// catalog, manifests, a repository's objects) could not be opened again. Final modes
/// are unchanged: a snapshot's and a restore's entries get their recorded mode, and
/// what has none (a `--to` made, a new store) gets what `mkdir -p` gives the
/// directories it makes on the way. No permission of group or other is widened. Hooks
/// run under the umask the user gave ([`user_umask`]).
pub fn owner_usable_umask() {
    USER_UMASK.get_or_init(|| {
        let old = rustix::process::umask(Mode::from_raw_mode(0o077)).bits();
        rustix::process::umask(Mode::from_raw_mode(old & 0o077));
        old
    });
}

/// The user's umask as the daemon that started this run handed it on
/// ([`take_user_umask`]).
static HANDED_UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The umask the user started the process with ([`owner_usable_umask`]), or the one
/// handed on by the daemon that started it ([`take_user_umask`]); the process umask
/// when neither was called.
pub fn user_umask() -> u32 {
    HANDED_UMASK
        .get()
        .or(USER_UMASK.get())
        .copied()
        .unwrap_or_else(process_umask)
}

/// Takes `umask` as the user's (for the hooks, [`user_umask`]): a `snapring daemon`
/// starts each run with the umask it works under, the owner's bits already taken out
/// ([`owner_usable_umask`]), and hands on the one the user gave it
/// (`run --user-umask`). Refused (nothing changed; why, and what is accepted) unless it
/// is that working umask with only owner bits added: a run started another way keeps
/// its own.
pub fn take_user_umask(umask: u32) -> Result<(), String> {
    let started = USER_UMASK.get().copied().unwrap_or_else(process_umask);
    let why = if umask & !0o777 != 0 {
        "it is not a umask (0000 to 0777)".to_string()
    } else if started & 0o700 != 0 {
        format!(
            "this run was started under umask {started:04o}, which keeps bits from the \
             owner: only a run a `snapring daemon` starts takes the umask the daemon was \
             given (it starts its runs under that umask without the owner's bits); no \
             value is accepted here"
        )
    } else if umask & 0o077 != started {
        format!(
            "the daemon hands on the umask it was started under, which differs from the \
             umask this run was started under ({started:04o}) only in the owner's digit; \
             accepted: 0{g:03o} to 0{o:03o}, the last two digits {g:02o}",
            g = started,
            o = started | 0o700,
        )
    } else {
        match HANDED_UMASK.set(umask) {
            Ok(()) => return Ok(()),
            Err(_) if HANDED_UMASK.get() == Some(&umask) => return Ok(()),
            Err(_) => format!(
                "this run already took umask {:04o}",
                HANDED_UMASK.get().copied().unwrap_or_default()
            ),
        }
    };
    Err(why)
}

/// The process umask, read once (the first call sets and restores it, so make it before
/// other threads create files).
pub fn process_umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        if let Some(u) = USER_UMASK.get() {
            return u & 0o077;
        }
        let old = rustix::process::umask(Mode::from_raw_mode(0o077));
        rustix::process::umask(old);
        old.bits()
    })
}

/// The names in a directory (without `.` and `..`), in the order `readdir` gives them.
pub fn read_dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut d = rfs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(e) = d.read() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    Ok(names)
}

/// Buffer of one `getdents64` in [`list_dir`]: about a thousand short names, so most
/// directories are listed in one round trip over NFS or FUSE (plus the one that says
/// there are no more). READDIRPLUS replies carry attributes too, so a larger request
/// also brings more of them at once.
const LIST_BUF: usize = 32 * 1024;

/// The names in the open directory `dir` (no "." or ".."), read through `dir` itself
/// from its start. Unlike [`read_dir_names`] it opens nothing (no second `openat` of
/// ".", which costs a round trip and a permission check over NFS or FUSE) and reads
/// with a large buffer. `dir`'s offset is shared by its duplicates: the caller must be
/// the only one listing it at a time (the backup walk lists each directory once, from
/// the worker that opened it, on a descriptor fresh from `openat`).
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    read_dir_with(dir, |n| names.push(n.to_vec()))?;
    Ok(names)
}

/// [`list_dir`] with the kind of each entry as the listing gives it (`d_type`; `None`
/// where the file system does not say, as an NFSv3 client without READDIRPLUS: the
/// caller `lstat`s those). No call per entry: a walk that needs only names and types
/// (the shard planner's, a restore's) costs one listing per directory.
pub fn list_dir_typed(dir: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, Option<Kind>)>> {
    let mut names = Vec::new();
    read_dir_typed(dir, |n, t| names.push((n.to_vec(), t)))?;
    Ok(names)
}

/// A listing's entry: its name, its kind if the listing says, its inode number.
pub type TypedEntry = (Vec<u8>, Option<Kind>, u64);

/// [`list_dir_typed`] with each entry's inode number as the listing gives it (`d_ino`:
/// the `st_ino` of an entry on the directory's own file system), for a walk that must
/// tell one directory by its inode without an `lstat` of each (the shard planner's, and
/// the store it must not enter).
pub fn list_dir_typed_ino(dir: BorrowedFd<'_>) -> io::Result<Vec<TypedEntry>> {
    let mut names = Vec::new();
    read_dir_entries(dir, |n, t, ino| names.push((n.to_vec(), t, ino)))?;
    Ok(names)
}

/// [`list_dir`] giving each name to `f` instead of collecting them (a listing made
/// only to fill an NFS client's cache keeps none of them).
pub fn read_dir_with(dir: BorrowedFd<'_>, mut f: impl FnMut(&[u8])) -> io::Result<()> {
    read_dir_typed(dir, |n, _| f(n))
}

pub fn read_dir_typed(
    dir: BorrowedFd<'_>,
    mut f: impl FnMut(&[u8], Option<Kind>),
) -> io::Result<()> {
    read_dir_entries(dir, |n, t, _| f(n, t))
}

fn read_dir_entries(
    dir: BorrowedFd<'_>,
    mut f: impl FnMut(&[u8], Option<Kind>, u64),
) -> io::Result<()> {
    // Back to the start for a descriptor listed before; a fresh one is there already,
    // so a file system that cannot seek a directory still lists it whole.
    let _ = rfs::seek(dir, SeekFrom::Start(0));
    let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); LIST_BUF];
    let mut d = rfs::RawDir::new(dir, &mut buf);
    while let Some(e) = d.next() {
        let e = match e {
            Ok(e) => e,
            // Removed while listed: it has no more entries (as `read_dir_names`).
            Err(rustix::io::Errno::NOENT) => break,
            Err(e) => return Err(e.into()),
        };
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            let kind = match e.file_type() {
                rfs::FileType::Unknown => None,
                t => Some(Kind::from_mode(t.as_raw_mode())),
            };
            f(n, kind, e.ino());
        }
    }
    Ok(())
}

/// True when the directory has at least one entry.
pub fn dir_has_entries(dir: BorrowedFd<'_>) -> io::Result<bool> {
    let mut d = rfs::Dir::read_from(dir)?;
    while let Some(e) = d.read() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            return Ok(true);
        }
    }
    Ok(false)
}

pub fn read_link_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    Ok(rfs::readlinkat(dir, name, Vec::new())?.into_bytes())
}

/// Extended attributes (name, value) sorted by name. ACLs are the `system.posix_acl_*`
/// attributes, so they travel with the rest. A file system without xattr support
/// yields an empty list.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// How to reach an entry's xattrs: through an open fd (files, directories), or by the
/// `/proc/self/fd/<dir>/<name>` path with the `l*` calls (symlinks, fifos, devices,
/// which must not be opened).
pub enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a [u8]),
}

/// `/proc/self/fd/<dir>/<name>`: `name` in the directory open as `dir`, for the calls
/// that take no directory descriptor (the `l*xattr` ones); no symlink on the way to
/// `dir` is followed again.
pub fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    p
}

fn unsupported(e: &rustix::io::Errno) -> bool {
    *e == rustix::io::Errno::NOTSUP || *e == rustix::io::Errno::OPNOTSUPP
}

/// The names of an entry's extended attributes, as `listxattr` gives them (unsorted).
/// A file system without xattr support has none.
pub fn xattr_names(t: &XattrTarget<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut list = vec![0u8; 1024];
    loop {
        let r = match t {
            XattrTarget::Fd(fd) => rfs::flistxattr(fd, &mut list[..]),
            XattrTarget::At(d, n) => rfs::llistxattr(proc_path(*d, n).as_slice(), &mut list[..]),
        };
        match r {
            Ok(len) => {
                list.truncate(len);
                break;
            }
            Err(rustix::io::Errno::RANGE) => list.resize(list.len() * 4, 0),
            Err(e) if unsupported(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(list
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

pub fn read_xattrs(t: &XattrTarget<'_>) -> io::Result<Xattrs> {
    let names = xattr_names(t)?;
    let mut out = Vec::new();
    for name in names {
        let mut val = vec![0u8; 256];
        loop {
            let r = match t {
                XattrTarget::Fd(fd) => rfs::fgetxattr(fd, name.as_slice(), &mut val[..]),
                XattrTarget::At(d, n) => {
                    rfs::lgetxattr(proc_path(*d, n).as_slice(), name.as_slice(), &mut val[..])
                }
            };
            match r {
                Ok(len) => {
                    val.truncate(len);
                    out.push((name, val));
                    break;
                }
                Err(rustix::io::Errno::RANGE) => val.resize(val.len() * 4, 0),
                // Removed between list and get: it is simply not there any more.
                Err(rustix::io::Errno::NODATA) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Attributes a file system refused to store: each name, and why, as the words before
/// "the … file system": `not supported by` or `too large for`.
pub type Refused = Vec<(Vec<u8>, &'static str)>;

/// Why [`write_xattrs`] refused an attribute the file system does not support (any
/// value of it), in [`Refused`].
pub const NOT_SUPPORTED: &str = "not supported by";

/// Whether the store's refusal of attribute `name` (as `why`, [`Refused`]) is said to
/// the user: a problem of the entry when it is copied, a warning of each run that links
/// the entry without it and of each restore. Every refusal is, but that of a Linux
/// security module's label as not supported ([`LSM_LABELS`]: `security.selinux`,
/// `security.SMACK64*`, `security.apparmor`; an SELinux source's `security.selinux` on
/// every file, backed up onto NFS): the target system's policy applies its label again
/// (`restorecon`), so a label lost is nothing to act on. It is still recorded as refused
/// in the manifest (`manifest::Entry::refused`) but only logged, one line a walk or
/// restore with a count (docs/stores.md): a warning on every run and every restore that
/// nothing can act on buries the ones that matter. Any other name lost is a loss of
/// function, said as before: a file capability (`security.capability`: a restored
/// `ping` no longer works), an NFSv4 ACL (`system.nfs4_acl`), an IMA/EVM signature, an
/// overlay's `trusted.overlay.*`; and so is any value refused as too large.
pub fn xattr_refusal_said(name: &[u8], why: &str) -> bool {
    why != NOT_SUPPORTED || !is_lsm_label(name)
}

/// The labels of Linux security modules, which their policy gives each file (the last
/// one a prefix: Smack's `security.SMACK64`, `…EXEC`, `…TRANSMUTE`, `…MMAP`, `…IPIN`,
/// `…IPOUT`): [`xattr_refusal_said`].
pub const LSM_LABELS: &[&[u8]] = &[
    b"security.selinux",
    b"security.apparmor",
    b"security.SMACK64",
];

/// Whether `name` is a Linux security module's label ([`LSM_LABELS`]).
pub fn is_lsm_label(name: &[u8]) -> bool {
    name == b"security.selinux"
        || name == b"security.apparmor"
        || name.starts_with(b"security.SMACK64")
}

/// Sets every attribute in `xs`. Returns the ones the target file system refused: as
/// unsupported (for example `security.*` on a file system without them), or as too
/// large (ENOSPC, E2BIG: ext4 keeps a value in one block, so 4 KiB at most, where XFS,
/// btrfs and tmpfs take 64 KiB). A value too large is the entry's problem, not a full
/// disk: it failed every run of a store, however empty, as "file system is full".
pub fn write_xattrs(t: &XattrTarget<'_>, xs: &Xattrs) -> io::Result<Refused> {
    let mut refused = Vec::new();
    for (name, val) in xs {
        let r = match t {
            XattrTarget::Fd(fd) => {
                rfs::fsetxattr(fd, name.as_slice(), val, rfs::XattrFlags::empty())
            }
            XattrTarget::At(d, n) => rfs::lsetxattr(
                proc_path(*d, n).as_slice(),
                name.as_slice(),
                val,
                rfs::XattrFlags::empty(),
            ),
        };
        match r {
            Ok(()) => {}
            Err(e) if unsupported(&e) => refused.push((name.clone(), NOT_SUPPORTED)),
            Err(rustix::io::Errno::NOSPC | rustix::io::Errno::TOOBIG) => {
                refused.push((name.clone(), "too large for"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(refused)
}

/// A file capability, as an attribute: privileges its executable is granted.
pub const CAPABILITY: &[u8] = b"security.capability";

/// The POSIX access ACL, as an attribute: what a file or directory created in a
/// directory with a default ACL inherits.
pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
/// The POSIX default ACL, as an attribute: what a directory created in a directory with
/// one inherits, and passes on.
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";
/// What an entry created in a directory with a default ACL may have inherited: a
/// directory both ACLs, anything else (but a symlink) the access ACL.
pub const INHERITED_DIR: &[&[u8]] = &[ACL_ACCESS, ACL_DEFAULT];
pub const INHERITED: &[&[u8]] = &[ACL_ACCESS];

/// An attribute a restore makes equal to the snapshot's, so removes when the snapshot
/// does not have it: `user.*`, `trusted.*` and the POSIX ACLs. Never `security.*`
/// (SELinux labels are the policy's; `security.capability` is only ever set, from the
/// snapshot), nor other `system.*` ones (a file system's own).
pub fn managed_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name.starts_with(b"trusted.")
        || name == ACL_ACCESS
        || name == ACL_DEFAULT
}

/// Removes those of `names` that are managed ([`managed_xattr`]) and not in `keep`;
/// one already gone (ENODATA), or a file system without xattrs, is no error. Whether
/// one was removed.
pub fn remove_xattrs<N: AsRef<[u8]>>(
    t: &XattrTarget<'_>,
    names: &[N],
    keep: &Xattrs,
) -> io::Result<bool> {
    let mut removed = false;
    for name in names.iter().map(AsRef::as_ref) {
        if !managed_xattr(name) || keep.iter().any(|(k, _)| k == name) {
            continue;
        }
        let r = match t {
            XattrTarget::Fd(fd) => rfs::fremovexattr(fd, name),
            XattrTarget::At(d, n) => rfs::lremovexattr(proc_path(*d, n).as_slice(), name),
        };
        match r {
            Ok(()) => removed = true,
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) if unsupported(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(removed)
}

/// Removes every managed attribute ([`managed_xattr`]) the entry has and `keep` does
/// not: one `listxattr`, then a call per attribute removed.
pub fn remove_other_xattrs(t: &XattrTarget<'_>, keep: &Xattrs) -> io::Result<bool> {
    remove_xattrs(t, &xattr_names(t)?, keep)
}

/// A digest of an xattr list, stored in manifests to detect attribute-only changes.
/// `None` when there are no attributes.
pub fn xattr_digest(xs: &Xattrs) -> Option<String> {
    xattr_digest_of(xs.iter())
}

/// [`xattr_digest`] of the attributes `xs` yields (in order), borrowed: the walk's
/// digest of a source's attributes less those the store refused, with no copy of
/// their values.
pub fn xattr_digest_of<'a>(xs: impl IntoIterator<Item = &'a (Vec<u8>, Vec<u8>)>) -> Option<String> {
    let mut h = blake3::Hasher::new();
    let mut any = false;
    for (n, v) in xs {
        any = true;
        h.update(&(n.len() as u64).to_le_bytes());
        h.update(n);
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v);
    }
    any.then(|| h.finalize().to_hex()[..32].to_string())
}

const BUF: usize = 256 * 1024;
static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

fn hash_zeros(h: &mut blake3::Hasher, mut n: u64) {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::pread(fd, &mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

fn pwrite_all(fd: BorrowedFd<'_>, mut buf: &[u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::pwrite(fd, buf, off) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
            Ok(n) => {
                buf = &buf[n..];
                off += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Where a copy failed: reading the source (a per-file problem) or writing the
/// destination (fatal for the run: disk full, I/O error, read-only); or it was given up
/// because the run stopped (`pace` said so).
#[derive(Debug)]
pub enum CopyError {
    Read(io::Error),
    Write(io::Error),
    Stopped,
}

/// Whether a file has fewer allocated blocks than its size needs: then it may have holes
/// (the test `cp --sparse=auto` makes). Only such a file is searched for holes, and its
/// copy checked for blocks of zeros; an ordinary one is copied without either.
fn looks_sparse(meta: &Meta) -> bool {
    meta.size > 0 && meta.blocks.saturating_mul(512) < meta.size
}

/// The blocks of zeros a copy leaves as holes: aligned in the file, this long.
const HOLE_BLOCK: u64 = 4096;

/// Writes `buf` (read from offset `off`) to `dst` at `off` except its blocks of zeros
/// ([`HOLE_BLOCK`], aligned in the file; the part before the first boundary and after
/// the last one are blocks too), which are left as holes of a file already sized.
/// Returns the bytes written.
fn pwrite_nonzero(dst: BorrowedFd<'_>, buf: &[u8], off: u64) -> io::Result<u64> {
    let mut written = 0u64;
    // The run of non-zero blocks not yet written: `buf[run..i]`.
    let mut run = 0usize;
    let mut i = 0usize;
    while i < buf.len() {
        let at = off + i as u64;
        let end = (i + (HOLE_BLOCK - at % HOLE_BLOCK) as usize).min(buf.len());
        if is_zero(&buf[i..end]) {
            if run < i {
                pwrite_all(dst, &buf[run..i], off + run as u64)?;
                written += (i - run) as u64;
            }
            run = end;
        }
        i = end;
    }
    if run < buf.len() {
        pwrite_all(dst, &buf[run..], off + run as u64)?;
        written += (buf.len() - run) as u64;
    }
    Ok(written)
}

/// Whether `b` is all zeros (in 64-byte steps the compiler vectorizes).
fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    chunks.all(|c| c.iter().fold(0u8, |a, x| a | x) == 0)
        && chunks.remainder().iter().all(|x| *x == 0)
}

/// The data ranges of a file: `[(start, end)]`, found with SEEK_DATA/SEEK_HOLE when the
/// file looks sparse (fewer blocks than its size), else the whole file. File systems
/// without SEEK_DATA give the whole file.
fn data_ranges(src: BorrowedFd<'_>, meta: &Meta) -> Vec<(u64, u64)> {
    let size = meta.size;
    if size == 0 {
        return Vec::new();
    }
    if !looks_sparse(meta) {
        return vec![(0, size)];
    }
    let mut ranges = Vec::new();
    let mut off = 0u64;
    while off < size {
        let data = match rfs::seek(src, SeekFrom::Data(off)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return vec![(0, size)],
        };
        let hole = match rfs::seek(src, SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(_) => return vec![(0, size)],
        };
        if hole > data {
            ranges.push((data, hole));
        }
        off = hole.max(data + 1);
    }
    ranges
}

/// Copies a regular file's bytes from `src` to `dst` (a new, empty file), keeping holes
/// as holes, and returns the BLAKE3 hash of the logical content, the bytes written and
/// the length of what `dst` holds (the hashed content). Reads up to `meta.size`; bytes
/// appended meanwhile are caught by the caller's re-stat. A file that shrank while it
/// was read ends where its read did: `dst` and the hash hold that prefix (its length
/// less than `meta.size`), never the size the stat promised.
/// `pace` hears of every read and every write before the next one (a bandwidth limit
/// sleeps in it); when it answers `false` the copy stops there (`CopyError::Stopped`,
/// the destination left partial for the caller to remove).
pub fn copy_hash(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    meta: &Meta,
    pace: &dyn Fn(u64) -> bool,
) -> Result<Copied, CopyError> {
    thread_local!(static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; BUF]));
    let mut h = blake3::Hasher::new();
    let mut written = 0u64;
    let ranges = data_ranges(src, meta);
    // Its holes are left holes: those SEEK_DATA found, and any block of zeros in its
    // data. A file system without SEEK_DATA (FUSE, NFS before 4.2, so EFS) reports the
    // whole file as data; its blocks still tell that the file is sparse (a 256 MiB
    // hole through FUSE was stored as 256 MiB of disk).
    let sparse = looks_sparse(meta) || ranges.len() != 1 || ranges.first() != Some(&(0, meta.size));
    if sparse {
        rfs::ftruncate(dst, meta.size).map_err(|e| CopyError::Write(e.into()))?;
    }
    let len = BUFFER.with(|b| {
        let buf = &mut b.borrow_mut()[..];
        let mut pos = 0u64;
        for (start, end) in ranges {
            hash_zeros(&mut h, start - pos);
            let mut off = start;
            while off < end {
                let want = ((end - off) as usize).min(buf.len());
                let n = pread_full(src, &mut buf[..want], off).map_err(CopyError::Read)?;
                if n == 0 {
                    // Truncated while it was read (the re-stat notices): the copy is
                    // what was read, no more (a sparse one cut to it).
                    if sparse {
                        rfs::ftruncate(dst, off).map_err(|e| CopyError::Write(e.into()))?;
                    }
                    return Ok(off);
                }
                let _ = crate::failpoint::hit("fsx.copy.read");
                if !pace(n as u64) {
                    return Err(CopyError::Stopped);
                }
                h.update(&buf[..n]);
                let w = if sparse {
                    pwrite_nonzero(dst, &buf[..n], off).map_err(CopyError::Write)?
                } else {
                    pwrite_all(dst, &buf[..n], off).map_err(CopyError::Write)?;
                    n as u64
                };
                written += w;
                if w > 0 && !pace(w) {
                    return Err(CopyError::Stopped);
                }
                off += n as u64;
            }
            pos = off;
        }
        if pos < meta.size {
            // A hole at the end (`dst` has the size already).
            hash_zeros(&mut h, meta.size - pos);
        }
        Ok::<u64, CopyError>(meta.size)
    })?;
    Ok(Copied {
        hash: h.finalize(),
        written,
        len,
    })
}

/// What [`copy_hash`] copied.
#[derive(Debug, Clone, Copy)]
pub struct Copied {
    /// The BLAKE3 hash of the copy's content (`len` bytes, holes as zeros).
    pub hash: blake3::Hash,
    /// The bytes written (holes not).
    pub written: u64,
    /// The copy's length: the stat's size, less where the file shrank during the read.
    pub len: u64,
}

/// Hashes the content of regular file `name` of directory `dir` (opened for reading
/// without following a symlink, as [`open_read_at`] does).
pub fn hash_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<blake3::Hash> {
    hash_file(open_read_at(dir, name)?.as_fd())
}

/// Hashes a regular file's content (used for trees taken over without a manifest).
/// The holes of a sparse file (fewer blocks than its size, [`data_ranges`]) are not
/// read: their zeros are hashed from a static buffer, which gives the same hash as
/// reading them (verify of a 20 GiB all-hole file read 20 GiB of zeros: 40 s, sys 33 s).
/// Reads on past the size it was stat'ed with, to the end of the file, as before.
pub fn hash_file(fd: BorrowedFd<'_>) -> io::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; BUF];
    let mut off = 0u64;
    let meta = fstat(fd)?;
    let ranges = data_ranges(fd, &meta);
    if ranges.len() != 1 || ranges.first() != Some(&(0, meta.size)) {
        for (start, end) in ranges {
            hash_zeros(&mut h, start - off);
            off = start;
            while off < end {
                let want = ((end - off) as usize).min(buf.len());
                let n = pread_full(fd, &mut buf[..want], off)?;
                h.update(&buf[..n]);
                off += n as u64;
                if n < want {
                    // Cut short while it was read: what is there is hashed.
                    return Ok(h.finalize());
                }
            }
        }
        hash_zeros(&mut h, meta.size.saturating_sub(off));
        off = off.max(meta.size);
    }
    loop {
        let n = pread_full(fd, &mut buf, off)?;
        h.update(&buf[..n]);
        off += n as u64;
        if n < buf.len() {
            break; // pread_full only comes back short at end of file
        }
    }
    Ok(h.finalize())
}

fn ts(t: Time) -> Timespec {
    Timespec {
        tv_sec: t.sec,
        tv_nsec: t.nsec as _,
    }
}

fn times(m: &Meta) -> Timestamps {
    // atime is set to mtime: snapshots do not preserve access times (reading them on the
    // source would be a write), and a stable value keeps the tree reproducible.
    Timestamps {
        last_access: ts(m.mtime),
        last_modification: ts(m.mtime),
    }
}

/// An owner `fchown` refused (`EPERM`: the process is not root, or the file system
/// keeps its own owners). The mode and times are set all the same (as `rsync -a` run
/// by a user keeps them); `got` is the owner the inode holds instead, for the manifest
/// to record what the copy is. Found in an `io::Error` by [`owner_not_set`].
///
/// The setuid and setgid bits are the exception (as `cp -p` run by a user clears
/// them): a setuid program of root restored by a user would otherwise run as that
/// user, or one of a group it could not be given as the user's group. `cleared` holds
/// the bits [`OwnerNotSet::perm`] leaves out: setuid when the owner is not the wanted
/// one, setgid when the group is not (directories keep theirs: on a directory setgid
/// only passes the group on to new entries).
#[derive(Debug)]
pub struct OwnerNotSet {
    pub want: (u32, u32),
    pub got: (u32, u32),
    pub err: io::Error,
    pub cleared: u32,
}

impl OwnerNotSet {
    /// The mode to set on the entry in place of `m.perm`.
    pub fn perm(&self, m: &Meta) -> u32 {
        m.perm & !self.cleared
    }
}

/// The setuid and setgid bits of `m` that are not safe to set on an entry left owned
/// by `got` (see [`OwnerNotSet`]).
pub fn unsafe_bits(m: &Meta, got: (u32, u32)) -> u32 {
    if m.kind == Kind::Dir {
        return 0;
    }
    unsafe_bits_of(m.perm, (m.uid, m.gid), got)
}

/// The setuid and setgid bits of `perm`, wanted with owner `want`, not safe on an entry
/// (not a directory) left owned by `got`.
pub fn unsafe_bits_of(perm: u32, want: (u32, u32), got: (u32, u32)) -> u32 {
    let uid = if got.0 != want.0 { 0o4000 } else { 0 };
    let gid = if got.1 != want.1 { 0o2000 } else { 0 };
    perm & (uid | gid)
}

/// `m.perm`, less the setuid/setgid bits an owner that could not be set (`owner`, an
/// [`OwnerNotSet`] error) makes unsafe.
pub fn perm_kept(m: &Meta, owner: Option<&io::Error>) -> u32 {
    match owner.and_then(owner_not_set) {
        Some(o) => o.perm(m),
        None => m.perm,
    }
}

/// What [`OwnerNotSet`]'s message says of the bits it cleared.
pub fn cleared_text(cleared: u32) -> &'static str {
    match cleared & 0o6000 {
        0o6000 => "setuid and setgid bits cleared",
        0o4000 => "setuid bit cleared",
        0o2000 => "setgid bit cleared",
        _ => "",
    }
}

impl std::fmt::Display for OwnerNotSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let root = if rustix::process::geteuid().is_root() {
            ""
        } else {
            " (this process is not root and cannot give files to other owners)"
        };
        let mode = match cleared_text(self.cleared) {
            "" => String::from("mode and times were set"),
            c => format!("mode and times were set, {c}: not safe on a file of another owner"),
        };
        write!(
            f,
            "cannot set owner {}:{}: {}{root}; left owned by {}:{} ({mode})",
            self.want.0, self.want.1, self.err, self.got.0, self.got.1
        )
    }
}

impl std::error::Error for OwnerNotSet {}

/// The [`OwnerNotSet`] in `e`, if that is what it is.
pub fn owner_not_set(e: &io::Error) -> Option<&OwnerNotSet> {
    e.get_ref().and_then(|i| i.downcast_ref::<OwnerNotSet>())
}

/// `Ok(Some(e))` for an [`OwnerNotSet`] error, to be reported once the rest of the
/// metadata is set ([`owner_after`]); other errors stay errors.
pub fn owner_later(r: io::Result<()>) -> io::Result<Option<io::Error>> {
    match r {
        Ok(()) => Ok(None),
        Err(e) if owner_not_set(&e).is_some() => Ok(Some(e)),
        Err(e) => Err(e),
    }
}

/// `r`, unless it succeeded and the owner could not be set: then that.
pub fn owner_after<T>(r: io::Result<T>, owner: Option<io::Error>) -> io::Result<T> {
    match (r, owner) {
        (Ok(_), Some(e)) => Err(e),
        (r, _) => r,
    }
}

/// `fchown`/`chownat` refused with `EPERM`: the group alone is tried (a user may give
/// a file to a group of theirs), and the owner the inode holds is read back.
fn owner_refused(
    want: &Meta,
    err: rustix::io::Errno,
    group_only: impl FnOnce() -> rustix::io::Result<()>,
    now: impl FnOnce() -> io::Result<Meta>,
) -> Option<io::Error> {
    let _ = group_only();
    let got = now()
        .map(|m| (m.uid, m.gid))
        .unwrap_or((u32::MAX, u32::MAX));
    // A file system that refuses every chown (a FUSE one: ENOSYS) may hold the wanted
    // owner already.
    if got == (want.uid, want.gid) {
        return None;
    }
    Some(io::Error::new(
        io::ErrorKind::PermissionDenied,
        OwnerNotSet {
            want: (want.uid, want.gid),
            got,
            err: err.into(),
            cleared: unsafe_bits(want, got),
        },
    ))
}

/// A `chown` refused: `EPERM` (not root, or a file system that keeps its own owners,
/// as vfat), or a file system that has no owners to set (a FUSE one: `ENOSYS`,
/// `EOPNOTSUPP`).
fn owner_unsupported(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    e == Errno::PERM || e == Errno::NOSYS || e == Errno::OPNOTSUPP
}

/// `fchown` to `m`'s owner; refused ([`owner_unsupported`]), an [`OwnerNotSet`] error.
pub fn chown_fd(fd: BorrowedFd<'_>, m: &Meta) -> io::Result<()> {
    match rfs::fchown(
        fd,
        Some(rfs::Uid::from_raw(m.uid)),
        Some(rfs::Gid::from_raw(m.gid)),
    ) {
        Ok(()) => Ok(()),
        Err(e) if owner_unsupported(e) => owner_refused(
            m,
            e,
            || rfs::fchown(fd, None, Some(rfs::Gid::from_raw(m.gid))),
            || fstat(fd),
        )
        .map_or(Ok(()), Err),
        Err(e) => Err(e.into()),
    }
}

/// Owner, mode and times on an open file or directory, in the order that keeps
/// setuid/setgid bits (chown clears them, so chmod comes after). An owner that cannot
/// be set ([`OwnerNotSet`]) does not keep the mode from being set; its error comes last.
pub fn apply_owner_mode(fd: BorrowedFd<'_>, m: &Meta) -> io::Result<()> {
    let owner = owner_later(chown_fd(fd, m))?;
    rfs::fchmod(fd, Mode::from_raw_mode(perm_kept(m, owner.as_ref())))?;
    owner_after(Ok(()), owner)
}

/// A directory's metadata, once its children are written: xattrs (default ACLs too),
/// then owner and mode, then times. Returns the xattrs the file system refused. An
/// owner that cannot be set ([`OwnerNotSet`]) is its error once mode and times are set.
pub fn apply_dir_meta(fd: BorrowedFd<'_>, m: &Meta, xs: &Xattrs) -> io::Result<Refused> {
    let refused = write_xattrs(&XattrTarget::Fd(fd), xs)?;
    let owner = owner_later(apply_owner_mode(fd, m))?;
    apply_times(fd, m)?;
    owner_after(Ok(refused), owner)
}

pub fn apply_times(fd: BorrowedFd<'_>, m: &Meta) -> io::Result<()> {
    Ok(rfs::futimens(fd, &times(m))?)
}

/// Owner, mode and times by name without following a symlink (symlinks, fifos, devices).
/// As [`apply_owner_mode`], an owner that cannot be set is its error once the mode is set.
pub fn apply_meta_at(dir: BorrowedFd<'_>, name: &[u8], m: &Meta) -> io::Result<()> {
    let chown = |uid: Option<u32>| {
        rfs::chownat(
            dir,
            name,
            uid.map(rfs::Uid::from_raw),
            Some(rfs::Gid::from_raw(m.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
    };
    let owner = match chown(Some(m.uid)) {
        Ok(()) => None,
        Err(e) if owner_unsupported(e) => {
            owner_refused(m, e, || chown(None), || lstat_at(dir, name))
        }
        Err(e) => return Err(e.into()),
    };
    if m.kind != Kind::Symlink {
        chmod_nofollow_at(dir, name, perm_kept(m, owner.as_ref()))?;
    }
    owner_after(Ok(()), owner)
}

/// `chmod` of `name` in `dir` that never follows a symlink there. `fchmodat` follows
/// one (its no-follow flag is `fchmodat2`'s, which rustix does not call), and a fifo or
/// device cannot be opened to `fchmod` without side effects, so: an `O_PATH|O_NOFOLLOW`
/// descriptor pins the inode the name holds now, a symlink there is refused, and the
/// mode is set through `/proc/self/fd/N`, which names that inode and no path (glibc's
/// `fchmodat(AT_SYMLINK_NOFOLLOW)` does the same). Without `/proc` mounted, the checked
/// descriptor's inode is chmodded by name after the check (a window of one call).
pub fn chmod_nofollow_at(dir: BorrowedFd<'_>, name: &[u8], perm: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = rfs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if Meta::from_stat(&rfs::fstat(&fd)?).kind == Kind::Symlink {
        // ELOOP, as `O_NOFOLLOW` answers a symlink: callers tell it from other failures.
        return Err(rustix::io::Errno::LOOP.into());
    }
    let mode = Mode::from_raw_mode(perm);
    match rfs::chmod(format!("/proc/self/fd/{}", fd.as_raw_fd()), mode) {
        Err(rustix::io::Errno::NOENT) if !std::path::Path::new("/proc/self/fd").exists() => {
            Ok(rfs::chmodat(dir, name, mode, AtFlags::empty())?)
        }
        r => Ok(r?),
    }
}

pub fn apply_times_at(dir: BorrowedFd<'_>, name: &[u8], m: &Meta) -> io::Result<()> {
    Ok(rfs::utimensat(
        dir,
        name,
        &times(m),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// Creates a special file (fifo, device, socket) like the source one.
pub fn mknod_at(dir: BorrowedFd<'_>, name: &[u8], m: &Meta) -> io::Result<()> {
    let ft = match m.kind {
        Kind::Fifo => rfs::FileType::Fifo,
        Kind::Char => rfs::FileType::CharacterDevice,
        Kind::Block => rfs::FileType::BlockDevice,
        Kind::Socket => rfs::FileType::Socket,
        _ => return Err(io::Error::other("mknod of a non-special file")),
    };
    Ok(rfs::mknodat(
        dir,
        name,
        ft,
        Mode::from_raw_mode(m.perm & 0o777),
        m.rdev as _,
    )?)
}

pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    Ok(rfs::symlinkat(target, dir, name)?)
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    Ok(rfs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?)
}

/// `linkat` without following symlinks (a symlink is linked as itself).
pub fn link_at(
    from_dir: BorrowedFd<'_>,
    from: &[u8],
    to_dir: BorrowedFd<'_>,
    to: &[u8],
) -> io::Result<()> {
    Ok(rfs::linkat(from_dir, from, to_dir, to, AtFlags::empty())?)
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    Ok(rfs::unlinkat(dir, name, AtFlags::empty())?)
}

pub fn rmdir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    Ok(rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

/// Renames without replacing an existing target. Falls back to a check-then-rename on
/// file systems without `RENAME_NOREPLACE` (NFS); callers hold the store lock.
pub fn rename_noreplace(
    from_dir: BorrowedFd<'_>,
    from: &[u8],
    to_dir: BorrowedFd<'_>,
    to: &[u8],
) -> io::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    // NFS and FUSE refuse the flag (EINVAL): after the first refusal, no more tries (a
    // round trip each).
    static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
    let fallback = || {
        if exists_at(to_dir, to)? {
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::EXIST.raw_os_error(),
            ));
        }
        Ok(rfs::renameat(from_dir, from, to_dir, to)?)
    };
    if UNSUPPORTED.load(Ordering::Relaxed) {
        return fallback();
    }
    match rfs::renameat_with(from_dir, from, to_dir, to, rfs::RenameFlags::NOREPLACE) {
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            UNSUPPORTED.store(true, Ordering::Relaxed);
            fallback()
        }
        r => Ok(r?),
    }
}

/// Renames, replacing an existing non-directory target (the replacement is atomic).
pub fn rename_at(
    from_dir: BorrowedFd<'_>,
    from: &[u8],
    to_dir: BorrowedFd<'_>,
    to: &[u8],
) -> io::Result<()> {
    Ok(rfs::renameat(from_dir, from, to_dir, to)?)
}

/// Opens directory `rel` under `root` without ever leaving `root` or following a
/// symlink on the way (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`; a
/// component-by-component `O_NOFOLLOW` walk where the kernel lacks it).
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let path: &[u8] = if rel.is_empty() { b"." } else { rel };
    match rfs::openat2(
        root,
        path,
        flags,
        Mode::empty(),
        rfs::ResolveFlags::BENEATH | rfs::ResolveFlags::NO_SYMLINKS,
    ) {
        Err(rustix::io::Errno::NOSYS) => {
            let mut cur = open_dir_at(root, b".")?;
            for c in path
                .split(|b| *b == b'/')
                .filter(|c| !c.is_empty() && *c != b".")
            {
                cur = open_dir_at(cur.as_fd(), c)?;
            }
            Ok(cur)
        }
        r => Ok(r?),
    }
}

/// Whether [`open_dir_beneath`] failed because the directory is not reachable beneath
/// its root any more: gone (`ENOENT`), no directory now, or one on the way replaced by
/// a symlink (`ENOTDIR`, `ELOOP`) or a mount point (`EXDEV`). A shard unit whose
/// directory went so since the plan has nothing to back up.
pub fn gone_beneath(e: &io::Error) -> bool {
    use rustix::io::Errno;
    [Errno::NOENT, Errno::NOTDIR, Errno::LOOP, Errno::XDEV]
        .iter()
        .any(|&n| errno_is(e, n))
}

/// `Some("immutable")` or `Some("append-only")` when the inode of `fd` has that flag
/// (`chattr +i`, `+a`): nobody, root included, may then rename or delete it, nor
/// change what a directory holds. `None` without either flag, or where the file
/// system has no such flags.
pub fn unchangeable(fd: BorrowedFd<'_>) -> Option<&'static str> {
    let flags = rfs::ioctl_getflags(fd).ok()?;
    if flags.contains(rfs::IFlags::IMMUTABLE) {
        Some("immutable")
    } else if flags.contains(rfs::IFlags::APPEND) {
        Some("append-only")
    } else {
        None
    }
}

/// Whether the file system holding `fd` is mounted read-only.
pub fn is_read_only(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(rfs::fstatvfs(fd)?
        .f_flag
        .contains(rfs::StatVfsMountFlags::RDONLY))
}

/// The mount a file is on: the kernel's mount id (`statx`'s `STATX_MNT_ID`, Linux 5.8
/// and later), else only its device. Two mounts of one file system (a bind mount) have
/// one device and two mount ids. Read from the kernel's cache (`AT_STATX_DONT_SYNC`):
/// no round trip over NFS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountKey {
    pub dev: u64,
    pub id: Option<u64>,
}

impl MountKey {
    /// Whether `other` is the same mount (by id where both have one, else by device).
    pub fn same_mount(&self, other: &MountKey) -> bool {
        match (self.id, other.id) {
            (Some(a), Some(b)) => a == b,
            _ => self.dev == other.dev,
        }
    }
}

/// The mount open file `fd` is on ([`MountKey`]).
pub fn mount_key(fd: BorrowedFd<'_>) -> io::Result<MountKey> {
    let flags = AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC;
    let mask = rfs::StatxFlags::BASIC_STATS | rfs::StatxFlags::MNT_ID;
    let x = rfs::statx(fd, c"", flags, mask)?;
    Ok(MountKey {
        dev: rfs::makedev(x.stx_dev_major, x.stx_dev_minor),
        id: (x.stx_mask & rfs::StatxFlags::MNT_ID.bits() != 0).then_some(x.stx_mnt_id),
    })
}

/// One mount, as `/proc/self/mountinfo` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mounted {
    /// The file system's device (`major:minor`).
    pub dev: u64,
    /// The directory of that file system the mount shows (`/` for a whole file system,
    /// another for a bind mount of a directory).
    pub root: std::path::PathBuf,
    /// Where it is mounted.
    pub point: std::path::PathBuf,
}

/// This process's mounts, from `/proc/self/mountinfo`.
pub fn mounts() -> io::Result<Vec<Mounted>> {
    let info = std::fs::read("/proc/self/mountinfo")?;
    Ok(info
        .split(|&c| c == b'\n')
        .filter_map(|line| {
            let f: Vec<&[u8]> = line.split(|&c| c == b' ').collect();
            let (major, minor) = std::str::from_utf8(f.get(2)?).ok()?.split_once(':')?;
            Some(Mounted {
                dev: rfs::makedev(major.parse().ok()?, minor.parse().ok()?),
                root: unescape_mountinfo(f.get(3)?),
                point: unescape_mountinfo(f.get(4)?),
            })
        })
        .collect())
}

/// A path as mountinfo writes it: space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &[u8]) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let octal = s
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (s[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out).into()
}

/// Removes `name` in `dir` and, if it is a directory, everything under it (depth
/// first, never following a symlink), counting each entry removed in `removed` (also
/// when it fails part way). Never crosses into another mount: a directory below that is
/// another file system's mount point (or a bind mount) is an error of kind
/// `CrossesDevices`, before anything on it is touched; what was removed before it stays
/// removed.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &[u8], removed: &mut u64) -> io::Result<()> {
    let mount = mount_key(dir)?;
    remove_tree_on(dir, name, &mount, &mut name.to_vec(), removed)
}

/// [`remove_tree_at`] below the top: `path` is `name`'s path from the top entry.
fn remove_tree_on(
    dir: BorrowedFd<'_>,
    name: &[u8],
    mount: &MountKey,
    path: &mut Vec<u8>,
    removed: &mut u64,
) -> io::Result<()> {
    match unlink_at(dir, name) {
        Ok(()) => {
            *removed += 1;
            return Ok(());
        }
        Err(e)
            if errno_is(&e, rustix::io::Errno::ISDIR) || errno_is(&e, rustix::io::Errno::PERM) => {}
        Err(e) => return Err(e),
    }
    let sub = open_dir_at(dir, name)?;
    if !mount_key(sub.as_fd())?.same_mount(mount) {
        return Err(io::Error::new(
            io::ErrorKind::CrossesDevices,
            format!(
                "{} is where another file system is mounted: nothing on it is deleted",
                crate::relpath::escape(path)
            ),
        ));
    }
    for child in read_dir_names(sub.as_fd())? {
        let len = path.len();
        path.push(b'/');
        path.extend_from_slice(&child);
        let r = remove_tree_on(sub.as_fd(), &child, mount, path, removed);
        path.truncate(len);
        r?;
    }
    rmdir_at(dir, name)?;
    *removed += 1;
    Ok(())
}

/// Whether `name` exists in `dir` (without following symlinks).
pub fn exists_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<bool> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Flushes directory `path` (fsync): the names just made, linked or renamed in it
/// survive a crash or power cut once this returns.
pub fn sync_dir(path: &std::path::Path) -> io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// Flushes the whole file system holding `fd` (one call instead of an fsync per file).
pub fn sync_fs(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rfs::syncfs(fd)?)
}

/// Raises the open-file limit to its hard maximum: the walker keeps a few descriptors
/// per directory in flight.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

/// Is this error "no space left" or "quota exceeded"?
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(c) if c == rustix::io::Errno::NOSPC.raw_os_error() || c == rustix::io::Errno::DQUOT.raw_os_error())
}

/// Whether the file system holding `path` (or its nearest existing ancestor) has no
/// free inodes left. `false` where it cannot tell (no inode count, e.g. btrfs).
pub fn out_of_inodes(path: &std::path::Path) -> bool {
    path.ancestors()
        .map(|p| {
            if p.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                p
            }
        })
        .find_map(|p| rfs::statvfs(p).ok())
        .is_some_and(|s| s.f_files > 0 && s.f_ffree == 0)
}

pub fn errno_is(e: &io::Error, errno: rustix::io::Errno) -> bool {
    e.raw_os_error() == Some(errno.raw_os_error())
}

/// Whether a source root a walk began at (`before`: its `(st_dev, st_ino)` then) is
/// gone when the walk ends (invariant 4): its `stat` at `root` fails with ENOTCONN (a
/// FUSE server that died), ESTALE (an NFS export gone or replaced), EIO or ENOENT, or
/// it is another directory (the mount torn away: the directory below it). Asked twice,
/// 200 ms apart, before it counts: one EIO of a `soft` NFS mount is not a source gone.
/// `Some(what was found)`, for the run's error; `None`: there, or not telling (EACCES:
/// the walk's own problems say what it could read). The store's run and the
/// repository's backup both ask it once a run.
pub fn root_gone(root: &std::path::Path, before: (u64, u64)) -> Option<String> {
    use rustix::io::Errno;
    let look = || {
        // Tests: the stat answers EIO (a `soft` NFS mount's timeout).
        crate::failpoint::hit("backup.source_root_stat").map_err(|_| Errno::IO)?;
        rfs::stat(root).map(|st| Meta::from_stat(&st))
    };
    // Asked twice before it counts: one EIO of a `soft` NFS mount is not a source gone.
    let stat = look().or_else(|_| {
        std::thread::sleep(std::time::Duration::from_millis(200));
        look()
    });
    match stat.map_err(io::Error::from) {
        Ok(m) if (m.dev, m.ino) == before => None,
        Ok(m) => Some(format!(
            "its root is now another directory (device {}, inode {}; it was device {}, inode {} when the walk began)",
            m.dev, m.ino, before.0, before.1
        )),
        Err(e)
            if [Errno::NOTCONN, Errno::STALE, Errno::IO, Errno::NOENT]
                .iter()
                .any(|n| errno_is(&e, *n)) =>
        {
            Some(format!("stat of its root when the walk ended: {e}"))
        }
        Err(_) => None,
    }
}

/// Borrow helper so callers can pass `&OwnedFd` where a `BorrowedFd` is wanted.
pub fn b(fd: &OwnedFd) -> BorrowedFd<'_> {
    fd.as_fd()
}

/// Opens the directory holding `rel` inside the tree at `root`, one component at a
/// time (no path-length limit).
pub fn open_parent(root: &OwnedFd, rel: &crate::relpath::RelPath) -> std::io::Result<OwnedFd> {
    let comps: Vec<&[u8]> = rel.components().collect();
    let mut cur = open_dir_at(b(root), b".")?;
    for c in &comps[..comps.len().saturating_sub(1)] {
        cur = open_dir_at(b(&cur), c)?;
    }
    Ok(cur)
}

/// The wall clock as a [`Time`].
pub fn wall_clock() -> Time {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Time {
        sec: d.as_secs() as i64,
        nsec: d.subsec_nanos(),
    }
}

/// The name, in a restore's target root, of the record of its unfinished work (the
/// store's restore, `restore::Unfinished`, and a repository's, `restic::restore`).
pub const RESTORE_RECORD: &[u8] = b".snapring-restore-unfinished";

/// The record's name in target root `to`: the first of [`RESTORE_RECORD`], `….1`, `….2`, …
/// that the restore does not put there (`restored`: the names of the entries it writes
/// into the target root), and that is either absent or a record (its first line
/// [`restore_record_header`]; a user's file of that name is left alone). The same on a
/// rerun of the same restore, which so finds the record of the stopped one.
pub fn restore_record_name(to: &OwnedFd, restored: &[Vec<u8>]) -> Vec<u8> {
    use std::io::Read;
    let header = restore_record_header(to);
    let is_record = |name: &[u8]| match open_read_at(b(to), name) {
        Err(e) => errno_is(&e, rustix::io::Errno::NOENT),
        Ok(fd) => {
            let mut text = Vec::new();
            std::fs::File::from(fd)
                .take(header.len() as u64)
                .read_to_end(&mut text)
                .is_ok()
                && (text.is_empty() || text == header)
        }
    };
    (0..)
        .map(|i| match i {
            0 => RESTORE_RECORD.to_vec(),
            i => [RESTORE_RECORD, format!(".{i}").as_bytes()].concat(),
        })
        .find(|n| !restored.contains(n) && is_record(n))
        .expect("an unbounded range")
}

/// The first line of a record of unfinished work in target root `to`: its format and
/// the target's device and inode. A file of the record's name restored from a snapshot
/// (a tree where a restore was once stopped) names another directory, and is the
/// user's, not this target's record (an empty file, a record cut short before its first
/// line, is taken as one).
pub fn restore_record_header(to: &OwnedFd) -> Vec<u8> {
    let id = fstat(b(to)).map_or((0, 0), |m| (m.dev, m.ino));
    format!("snapring-restore-unfinished 1 {}:{}\n", id.0, id.1).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reports show times as `history` does, RFC 3339 with the nanoseconds; the
    /// manifest's form stays `SEC.NSEC`.
    #[test]
    fn a_time_reads_as_rfc3339_in_reports_and_sec_nsec_in_the_manifest() {
        let t = Time {
            sec: 1_795_308_315,
            nsec: 978_447_443,
        };
        assert_eq!(t.rfc3339(), "2026-11-22T00:45:15.978447443Z");
        assert_eq!(t.to_string(), "1795308315.978447443");
        assert_eq!(
            Time { sec: 0, nsec: 0 }.rfc3339(),
            "1970-01-01T00:00:00.000000000Z"
        );
    }

    /// More names than one `getdents64` buffer holds, listed twice through the same
    /// descriptor: every name once each time, without "." and "..".
    #[test]
    fn list_dir_reads_every_name_from_the_start_each_time() {
        let t = tempfile::tempdir().unwrap();
        let mut want: Vec<Vec<u8>> = (0..1500)
            .map(|i| format!("a-name-long-enough-to-fill-buffers-{i:05}").into_bytes())
            .collect();
        for n in &want {
            std::fs::write(t.path().join(std::str::from_utf8(n).unwrap()), b"").unwrap();
        }
        want.sort();
        let fd = open_dir(t.path()).unwrap();
        for _ in 0..2 {
            let mut got = list_dir(b(&fd)).unwrap();
            got.sort();
            assert_eq!(got, want);
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(
            list_dir(b(&open_dir(empty.path()).unwrap()))
                .unwrap()
                .is_empty()
        );
    }

    /// A sparse file hashes as the same bytes written out, and its holes are not read
    /// (this thread's `rchar`, /proc/thread-self/io): verify read every hole.
    #[test]
    fn hash_file_hashes_holes_as_zeros_without_reading_them() {
        use std::io::{Seek, Write};
        use std::os::fd::AsFd;
        let t = tempfile::tempdir().unwrap();
        let size = 64u64 << 20;
        let islands = [
            (0u64, b"head".as_slice()),
            (20 << 20, b"middle"),
            (40 << 20, b"late"),
        ];
        let mut dense = vec![0u8; size as usize];
        let mut f = std::fs::File::create(t.path().join("sparse")).unwrap();
        for (at, d) in islands {
            dense[at as usize..at as usize + d.len()].copy_from_slice(d);
            f.seek(std::io::SeekFrom::Start(at)).unwrap();
            f.write_all(d).unwrap();
        }
        // A hole at the end.
        f.set_len(size).unwrap();
        std::fs::write(t.path().join("dense"), &dense).unwrap();
        let rchar = || -> u64 {
            let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
            io.lines()
                .find_map(|l| l.strip_prefix("rchar: "))
                .unwrap()
                .parse()
                .unwrap()
        };
        let open = |n: &str| std::fs::File::open(t.path().join(n)).unwrap();
        let before = rchar();
        let sparse = hash_file(open("sparse").as_fd()).unwrap();
        let read = rchar() - before;
        let want = blake3::hash(&dense);
        assert_eq!(sparse, want);
        assert_eq!(hash_file(open("dense").as_fd()).unwrap(), want);
        let blocks = fstat(open("sparse").as_fd()).unwrap().blocks;
        if blocks * 512 < size {
            assert!(
                read < 4 << 20,
                "{read} bytes read of a 64 MiB file of holes"
            );
        }
        // Data after a hole, to the end; and grown past the size first seen is read.
        let mut g = std::fs::File::create(t.path().join("tail")).unwrap();
        g.seek(std::io::SeekFrom::Start(size - 3)).unwrap();
        g.write_all(b"end").unwrap();
        let mut tail = vec![0u8; size as usize];
        tail[size as usize - 3..].copy_from_slice(b"end");
        assert_eq!(
            hash_file(open("tail").as_fd()).unwrap(),
            blake3::hash(&tail)
        );
    }

    /// A file whose blocks say it is sparse, where SEEK_DATA finds no hole (a file
    /// system without it reports the whole file as data: FUSE, NFS before 4.2): its
    /// blocks of zeros are left holes (4 KiB, aligned in the file), its hash and content
    /// the same; only its data is written and paced. Here a dense file of zeros with a
    /// stat that says it has no blocks stands for one.
    #[test]
    fn copy_hash_leaves_zero_blocks_holes_where_seek_data_finds_none() {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let size = 4u64 << 20;
        let mut content = vec![0u8; size as usize];
        content[4096 * 3 + 100..4096 * 3 + 104].copy_from_slice(b"data");
        // Across a 4 KiB boundary (and a 256 KiB read): two blocks.
        content[(1 << 20) - 2..(1 << 20) + 2].copy_from_slice(b"edge");
        content[size as usize - 1] = 1;
        std::fs::write(t.path().join("src"), &content).unwrap();
        let src = std::fs::File::open(t.path().join("src")).unwrap();
        let mut meta = fstat(src.as_fd()).unwrap();
        assert!(meta.blocks * 512 >= size, "written out, not sparse");
        meta.blocks = 0;
        let dst = std::fs::File::create(t.path().join("dst")).unwrap();
        let paced = std::cell::Cell::new(0u64);
        let pace = |n| {
            paced.set(paced.get() + n);
            true
        };
        let c = copy_hash(src.as_fd(), dst.as_fd(), &meta, &pace).unwrap();
        drop(dst);
        assert_eq!(c.hash, blake3::hash(&content));
        assert_eq!(c.len, size);
        assert_eq!(c.written, 4 * 4096);
        // Every byte read, and the bytes written.
        assert_eq!(paced.get(), size + 4 * 4096);
        assert_eq!(std::fs::read(t.path().join("dst")).unwrap(), content);
        let dst = std::fs::metadata(t.path().join("dst")).unwrap();
        assert!(
            dst.blocks() * 512 <= 64 * 1024,
            "the copy uses {} bytes",
            dst.blocks() * 512
        );
        // An ordinary file (its blocks cover its size): copied whole, zeros written.
        let meta = fstat(src.as_fd()).unwrap();
        let dense = std::fs::File::create(t.path().join("dense")).unwrap();
        let c = copy_hash(src.as_fd(), dense.as_fd(), &meta, &|_| true).unwrap();
        assert_eq!(c.written, size);
        assert!(dense.metadata().unwrap().blocks() * 512 >= size);
    }
}
