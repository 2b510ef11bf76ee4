//! Holding a snapshot while it is read, so a backup never deletes it under a reader.
//!
//! A reader (restore, diff, verify, `list --space`) takes `flock(LOCK_SH)` on the
//! descriptor of the snapshot's root directory it already holds open, for as long as it
//! holds that descriptor (the lock goes with it). A backup's rotation tries
//! `flock(LOCK_EX|LOCK_NB)` on every snapshot it would expire: if a reader holds it, the
//! expiry is deferred (the snapshot is kept, moved with the kept ones past `retain`, and the next run
//! that finds it free expires it); else the backup keeps its lock until the rotation has
//! moved the snapshot to trash, so a reader that opened it meanwhile waits, then sees
//! that its name no longer leads to it and opens the snapshot by that name again.
//!
//! `flock` needs no write access, so it works on read-only mounts. Caveat: on NFS,
//! Linux emulates `flock` with byte-range locks, and an exclusive one needs a descriptor
//! open for writing, which a directory never is: the backup's `LOCK_EX` fails (EBADF),
//! is taken as "not held", and expiry is not deferred there; a reader that loses its
//! snapshot then ends `failed`, never `complete` (see `snapshot.rs`). With
//! `local_lock=flock` the locks are local to one client. A backup killed after writing
//! its journal leaves the expiry to the next command's roll-forward, which does not look
//! at holds (the journal is replayed as written); a reader opening a snapshot in that
//! window is not protected. Does I/O (flock, stat).

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

use crate::fsx;

/// Takes the reader's shared hold on an open snapshot root (waits while a backup is
/// moving it). A file system without `flock` gives no hold; the reader goes on.
pub fn share(root: &OwnedFd) {
    if let Err(e) = flock(root.as_fd(), FlockOperation::LockShared) {
        tracing::debug!("no hold on the snapshot ({e}); a backup may expire it meanwhile");
    }
}

/// Whether the snapshot at `path`, held open as `root`, is still there by that name
/// (a rotation may have renamed it between the open and the hold).
pub fn still_named(path: &Path, root: &OwnedFd) -> bool {
    match (std::fs::symlink_metadata(path), fsx::fstat(fsx::b(root))) {
        (Ok(p), Ok(r)) => std::os::unix::fs::MetadataExt::ino(&p) == r.ino,
        _ => false,
    }
}

/// What a backup's try at an expiring snapshot found.
pub enum Expiry {
    /// Nobody reads it: the descriptor holds the exclusive lock until dropped.
    Free(Option<OwnedFd>),
    /// A reader holds it: defer.
    Held,
}

/// Tries the exclusive hold on the snapshot at `path`. Anything but "held by another"
/// (no such directory, a file system without `flock`, NFS's EBADF) counts as free.
pub fn try_expire(path: &Path) -> Expiry {
    let Ok(fd) = fsx::open_dir(path) else {
        return Expiry::Free(None);
    };
    match flock(fd.as_fd(), FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Expiry::Free(Some(fd)),
        Err(Errno::WOULDBLOCK) => Expiry::Held,
        Err(e) => {
            tracing::debug!(
                "{}: cannot tell whether a reader holds it ({e})",
                path.display()
            );
            Expiry::Free(None)
        }
    }
}
