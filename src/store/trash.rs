//! Deletes expired snapshots from `.snapring/trash/` in parallel: many unlinks in flight
//! instead of one `rm -rf`, depth-first, each directory removed once its last child is.
//! Stops early when cancelled; what remains is deleted by a later run.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use rustix::io::Errno;

use super::Store;
use crate::error::{Ctx, Result};
use crate::fsx::{self, b};
use crate::pool;

struct Node {
    fd: OwnedFd,
    /// (parent, my name); `None` for the trash directory itself, which stays.
    up: Option<(Arc<Node>, Vec<u8>)>,
    /// Subdirectories not yet removed, plus one while this directory's own listing runs.
    pending: AtomicUsize,
}

struct Task {
    parent: Arc<Node>,
    name: Vec<u8>,
}

/// Removes everything under `.snapring/trash`. Returns the number of entries removed.
pub fn empty(store: &Store, threads: usize, cancel: &AtomicBool) -> Result<u64> {
    let trash = store.meta.join("trash");
    let fd = fsx::open_dir(&trash).ctx("open", &trash)?;
    let names = fsx::read_dir_names(b(&fd)).ctx("read", &trash)?;
    if names.is_empty() {
        return Ok(0);
    }
    let root = Arc::new(Node {
        fd,
        up: None,
        pending: AtomicUsize::new(names.len()),
    });
    let removed = AtomicU64::new(0);
    let first_error: std::sync::Mutex<Option<crate::error::Error>> = std::sync::Mutex::new(None);
    let tasks = names
        .into_iter()
        .map(|name| Task {
            parent: root.clone(),
            name,
        })
        .collect();
    pool::run(threads, tasks, cancel, |t, q| {
        if let Err(e) = remove_dir(t, q, &removed) {
            cancel_with(&first_error, e);
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(removed.load(Ordering::Relaxed))
}

fn cancel_with(slot: &std::sync::Mutex<Option<crate::error::Error>>, e: crate::error::Error) {
    let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
    s.get_or_insert(e);
}

/// Lists one directory, unlinks its non-directories and queues its subdirectories.
fn remove_dir(t: Task, q: &pool::Queue<Task>, removed: &AtomicU64) -> Result<()> {
    crate::failpoint::hit("trash.dir")
        .ctx("remove", std::path::PathBuf::from(".snapring/trash"))?;
    let shown = || std::path::PathBuf::from(crate::relpath::escape(&t.name));
    let fd = match fsx::open_dir_at(b(&t.parent.fd), &t.name) {
        Ok(fd) => fd,
        // Not a directory (a file directly in trash) or already gone.
        Err(e) if fsx::errno_is(&e, Errno::NOTDIR) || fsx::errno_is(&e, Errno::LOOP) => {
            unlink(&t.parent.fd, &t.name).ctx("remove", shown())?;
            removed.fetch_add(1, Ordering::Relaxed);
            return done(&t.parent, removed);
        }
        Err(e) if fsx::errno_is(&e, Errno::NOENT) => return done(&t.parent, removed),
        Err(e) => return Err(e).ctx("open", shown()),
    };
    let names = fsx::read_dir_names(b(&fd)).ctx("read", shown())?;
    let node = Arc::new(Node {
        fd,
        up: Some((t.parent, t.name)),
        pending: AtomicUsize::new(1),
    });
    for name in names {
        match unlink(&node.fd, &name) {
            Ok(()) => {
                removed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if fsx::errno_is(&e, Errno::ISDIR) || fsx::errno_is(&e, Errno::PERM) => {
                node.pending.fetch_add(1, Ordering::Relaxed);
                q.push(Task {
                    parent: node.clone(),
                    name,
                });
            }
            Err(e) if fsx::errno_is(&e, Errno::NOENT) => {}
            Err(e) => {
                return Err(e).ctx(
                    "remove",
                    std::path::PathBuf::from(crate::relpath::escape(&name)),
                );
            }
        }
    }
    done(&node, removed)
}

/// Unlinks a non-directory; makes the directory writable first if that is what stops it
/// (snapshots keep the source's modes, read-only directories included).
fn unlink(dir: &OwnedFd, name: &[u8]) -> std::io::Result<()> {
    match fsx::unlink_at(b(dir), name) {
        Err(e) if fsx::errno_is(&e, Errno::ACCESS) => {
            rustix::fs::fchmod(dir, rustix::fs::Mode::from_raw_mode(0o700))?;
            fsx::unlink_at(b(dir), name)
        }
        r => r,
    }
}

/// One child of `node` is finished; when none are left, remove `node` and tell its parent.
fn done(node: &Arc<Node>, removed: &AtomicU64) -> Result<()> {
    if node.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
        return Ok(());
    }
    let Some((parent, name)) = &node.up else {
        return Ok(());
    };
    match fsx::rmdir_at(b(&parent.fd), name) {
        Ok(()) => {}
        Err(e) if fsx::errno_is(&e, Errno::ACCESS) => {
            rustix::fs::fchmod(&parent.fd, rustix::fs::Mode::from_raw_mode(0o700))
                .map_err(std::io::Error::from)
                .and_then(|_| fsx::rmdir_at(b(&parent.fd), name))
                .ctx(
                    "remove directory",
                    std::path::PathBuf::from(crate::relpath::escape(name)),
                )?;
        }
        Err(e) => {
            return Err(e).ctx(
                "remove directory",
                std::path::PathBuf::from(crate::relpath::escape(name)),
            );
        }
    }
    removed.fetch_add(1, Ordering::Relaxed);
    done(parent, removed)
}
