//! A restore's `--to`, resolved and checked before anything is written; shared by the
//! restore from a store and from a restic repository. Does I/O (stat, open, mkdir).
//!
//! The rule (docs/restore.md, "Never modifies the backup"): `--to` is taken as an
//! absolute path (relative ones from the working directory) and split in two: its
//! longest prefix that exists, opened (a symlink there is followed, as the user named
//! it), and the components below it that the restore will create. That second part
//! must not hold `..`: `new/..` means whatever the directory `new`, not made yet, has
//! as its parent, so the path could not be checked before the restore made `new`
//! (it reached into the store past a check of the existing prefix, and it made an
//! existing directory look like one the restore had created). Refused, exit 64. A `.`
//! there names the directory just made and is dropped. A symlink loop on the way
//! (ELOOP) is no missing directory: refused, naming it. Then every directory from the
//! existing prefix up to `/`, reached by `..` from its descriptor and compared by
//! (device, inode), must not be the store's root (or a local repository's): a second
//! mount of the store (a bind mount) has another path but the same (device, inode), so
//! no comparison of paths sees it.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Ctx, Error, Result, io_error};
use crate::fsx::{self, b};

/// A `--to` split into what exists and what the restore creates.
pub struct Target {
    /// `--to` as given, for messages.
    to: PathBuf,
    /// The longest prefix of `--to` (made absolute) that exists.
    existing: PathBuf,
    /// The components below `existing` the restore creates, in order, without `.`.
    missing: Vec<Vec<u8>>,
}

impl Target {
    /// Splits `to` (see the module's rule); refuses a `..` in the part that does not
    /// exist yet. Writes nothing.
    pub fn resolve(to: &Path) -> Result<Target> {
        let abs = if to.is_absolute() {
            to.to_path_buf()
        } else {
            std::env::current_dir()
                .ctx("resolve the working directory for", to)?
                .join(to)
        };
        let comps: Vec<&[u8]> = abs
            .as_os_str()
            .as_bytes()
            .split(|&c| c == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        let mut existing = PathBuf::from("/");
        let mut i = 0;
        while let Some(c) = comps.get(i) {
            let next = existing.join(OsStr::from_bytes(c));
            match std::fs::metadata(&next) {
                Ok(_) => {}
                // A symlink loop is no missing directory to make: taken for one, it
                // ended in "cannot open target: Not a directory" (or, as `--to` itself,
                // "a symlink to …, which does not exist").
                Err(e) if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
                    return Err(Error::Target {
                        path: to.to_path_buf(),
                        msg: format!(
                            "cannot open {} to restore into: it is a symlink loop (too many levels of symbolic links, ELOOP); nothing was written. Point the symlink at a directory, remove it, or give another --to",
                            crate::relpath::shown(&next)
                        ),
                    });
                }
                Err(_) => break,
            }
            existing = next;
            i += 1;
        }
        let rest = &comps[i..];
        if rest.contains(&&b".."[..]) {
            let first = existing.join(OsStr::from_bytes(rest[0]));
            return Err(Error::Refused(format!(
                "--to {}: {} does not exist yet, and the `..` after it would be resolved through directories the restore has to create, so where it leads cannot be checked before writing; nothing was written. Give --to without `..` below its last existing directory {}",
                crate::relpath::shown(to),
                crate::relpath::shown(&first),
                crate::relpath::shown(&existing),
            )));
        }
        Ok(Target {
            to: to.to_path_buf(),
            missing: rest
                .iter()
                .filter(|c| **c != b".")
                .map(|c| c.to_vec())
                .collect(),
            existing,
        })
    }

    /// Whether `--to` exists already.
    pub fn exists(&self) -> bool {
        self.missing.is_empty()
    }

    /// The longest prefix of `--to` that exists, made absolute.
    pub fn existing(&self) -> &Path {
        &self.existing
    }

    /// Opens the existing prefix; "not a directory" names `--to` and says what to do.
    pub fn open_existing(&self) -> Result<OwnedFd> {
        fsx::open_dir(&self.existing).map_err(|e| {
            if !fsx::errno_is(&e, Errno::NOTDIR) {
                return io_error(e, "open", &self.existing);
            }
            let msg = if self.exists() {
                "the restore target is not a directory; give --to a directory".into()
            } else {
                format!(
                    "{} is not a directory, so --to cannot be made under it; give --to a directory",
                    crate::relpath::shown(&self.existing)
                )
            };
            Error::Target {
                path: self.to.clone(),
                msg,
            }
        })
    }

    /// Refuses (before anything is written) a `--to` inside `root`, the backup a
    /// restore reads (`what`: "store" or "repository"): `existing` or a directory above
    /// it, reached by `..` from `existing_fd` up to `/`, has the (device, inode) of
    /// `root` or of a directory in it (a snapshot, `data/`: a bind mount of one of
    /// those has no path to `root` by `..`). A `root` that cannot be opened refuses
    /// nothing.
    pub fn refuse_inside(&self, existing_fd: &OwnedFd, root: &Path, what: &str) -> Result<()> {
        let Ok(root_fd) = open_path(None, root) else {
            return Ok(());
        };
        let mut guards = vec![id(&fsx::fstat(b(&root_fd)).ctx("stat", root)?)];
        for e in std::fs::read_dir(root).ctx("read", root)? {
            let e = e.ctx("read", root)?;
            if e.file_type().is_ok_and(|t| t.is_dir())
                && let Ok(m) = fsx::lstat_at(b(&root_fd), e.file_name().as_bytes())
            {
                guards.push(id(&m));
            }
        }
        let ancestors = || {
            format!(
                "the directories above {}",
                crate::relpath::shown(&self.existing)
            )
        };
        let mut cur = open_path(Some(existing_fd), Path::new(".")).ctx("open", &self.existing)?;
        let mut m = id(&fsx::fstat(b(&cur)).ctx("stat", &self.existing)?);
        loop {
            if guards.contains(&m) {
                return Err(Error::Target {
                    path: self.to.clone(),
                    msg: format!(
                        "refusing to restore into the {what} {} itself, whatever path or mount leads there (a restore never writes to the backup); choose a --to outside it",
                        crate::relpath::shown(root)
                    ),
                });
            }
            let up = open_path(Some(&cur), Path::new("..")).ctx("open", ancestors())?;
            let pm = id(&fsx::fstat(b(&up)).ctx("stat", ancestors())?);
            if pm == m {
                return Ok(()); // `/`: its `..` is itself
            }
            (cur, m) = (up, pm);
        }
    }

    /// Creates the missing components under `existing_fd`, one at a time, never
    /// following a symlink, and opens the last: `--to`.
    pub fn create(&self, existing_fd: &OwnedFd) -> Result<OwnedFd> {
        let mut cur = rfs::openat(
            existing_fd,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .ctx("open", &self.existing)?;
        let mut shown = self.existing.clone();
        for c in &self.missing {
            shown.push(OsStr::from_bytes(c));
            // Mode 0777 less the umask, whose owner bits `fsx::owner_usable_umask` took
            // out: what `mkdir -p` gives the directories it makes on the way (0700 under
            // 0277, 0755 under 0222), so the restore can write into it.
            match rfs::mkdirat(&cur, c.as_slice(), Mode::from_raw_mode(0o777)) {
                Ok(()) => {}
                Err(e) if e == Errno::EXIST => {}
                Err(e) => return Err(io_error(e.into(), "create target directory", &shown)),
            }
            cur = fsx::open_dir_at(b(&cur), c).ctx("open target", &shown)?;
        }
        Ok(cur)
    }
}

/// `O_PATH` open of a directory: needs only search permission on the way, not read.
fn open_path(dir: Option<&OwnedFd>, p: &Path) -> std::io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(match dir {
        Some(d) => rfs::openat(d, p, flags, Mode::empty())?,
        None => rfs::open(p, flags, Mode::empty())?,
    })
}

/// A directory's identity: (device, inode).
fn id(m: &fsx::Meta) -> (u64, u64) {
    (m.dev, m.ino)
}
