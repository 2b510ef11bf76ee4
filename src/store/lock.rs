//! The store lock: `flock` on `.snapring/lock`, whose content names the holder (pid,
//! host, run id, start time) so a refused second run can say who holds the store. The
//! kernel drops the lock when its holder dies, so a stale lock recovers by itself; the
//! holder text it leaves tells the next run which run to mark `incomplete`.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Ctx, Error, Result};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub run: Option<String>,
    pub command: String,
    pub since: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "snapring {} (pid {} on {}, since {}",
            self.command, self.pid, self.host, self.since
        )?;
        if let Some(r) = &self.run {
            write!(f, ", run {r}")?;
        }
        write!(f, ")")
    }
}

/// Held for as long as this value lives.
pub struct Lock {
    file: File,
    /// What the lock file said when we took it: a holder that died without cleaning up.
    pub previous: Option<Holder>,
}

/// The lock file could not be opened for writing: on a read-only store (a read-only
/// mount, a snapshot of the file system) or one this user may not write, the message
/// says what to do; it said only "cannot open lock file …: Read-only file system".
fn cannot_write(store: &Path, path: &Path, e: std::io::Error) -> Error {
    use rustix::io::Errno;
    let remedy = match Errno::from_io_error(&e) {
        Some(Errno::ROFS) => "the store is on a read-only file system, and a backup writes it: remount it read-write (`mount -o remount,rw` on its mount point), or back up into another --dest (`snapring list`, `restore`, `diff` and `verify` read a read-only store as it is)".to_string(),
        Some(Errno::ACCESS | Errno::PERM) => format!(
            "this user may not write the store: run as its owner (or root), or check the permissions of {}",
            crate::relpath::shown(path.parent().unwrap_or(store))
        ),
        _ => return Error::Io {
            action: "open lock file",
            path: path.to_path_buf(),
            source: e,
        },
    };
    Error::Store {
        path: store.to_path_buf(),
        msg: format!(
            "cannot open lock file {}: {e}; {remedy}",
            crate::relpath::shown(path)
        ),
    }
}

impl Lock {
    /// A shared lock for commands that only read (a dry run): several readers at once,
    /// none while a backup holds the store. Writes nothing.
    pub fn acquire_shared(store: &Path, path: &Path) -> Result<Lock> {
        // Never blocks on a fifo in the lock's place, nor reads a device's endless bytes.
        let mut file = match crate::fsx::open_regular(path, true) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Store {
                    path: store.to_path_buf(),
                    msg: "no lock file: not a snapring store".into(),
                });
            }
            Err(e) => return Err(e).ctx("open lock file", path),
        };
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Ok(()) => Ok(Lock {
                file,
                previous: None,
            }),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let who = serde_json::from_str::<Holder>(&text)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|_| "another snapring process".into());
                Err(Error::Locked {
                    store: store.to_path_buf(),
                    holder: who,
                })
            }
            Err(e) => Err(std::io::Error::from(e)).ctx("lock", path),
        }
    }

    pub fn acquire(store: &Path, path: &Path, holder: &Holder) -> Result<Lock> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
            .map_err(|e| cannot_write(store, path, e))?;
        // A fifo in the lock's place would stall the read below for ever.
        crate::fsx::check_regular(std::os::fd::AsFd::as_fd(&file)).ctx("open lock file", path)?;
        let mut text = String::new();
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let _ = file.read_to_string(&mut text);
                let who = serde_json::from_str::<Holder>(&text)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|_| "another snapring process".into());
                return Err(Error::Locked {
                    store: store.to_path_buf(),
                    holder: who,
                });
            }
            Err(e) => return Err(std::io::Error::from(e)).ctx("lock", path),
        }
        let _ = file.read_to_string(&mut text);
        let previous = serde_json::from_str::<Holder>(&text).ok();
        let body = serde_json::to_vec_pretty(holder).expect("holder serializes");
        file.set_len(0).ctx("write lock file", path)?;
        file.rewind().ctx("write lock file", path)?;
        file.write_all(&body).ctx("write lock file", path)?;
        file.sync_all().ctx("write lock file", path)?;
        Ok(Lock { file, previous })
    }

    /// Marks a clean end: the next holder finds nothing to repair.
    pub fn release(self) {
        if self.file.metadata().map(|m| m.len() > 0).unwrap_or(false) {
            let _ = self.file.set_len(0);
            let _ = self.file.sync_all();
        }
    }
}
