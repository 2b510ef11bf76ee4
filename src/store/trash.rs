//! Deletes expired snapshots from `.snapring/trash/` in parallel on the one traversal
//! ([`crate::traverse`]): many unlinks in flight instead of one `rm -rf`, depth-first,
//! each directory removed once everything under it is. The trash directory itself stays.
//! Also the pieces of expired snapshots that shard workers claimed for deletion
//! (`.snapring/expiring/<claim>/`, `shard::expire`): one such directory with everything
//! under it ([`remove`]), and the leftovers of killed workers ([`empty`]). Stops early
//! when cancelled; what remains is deleted by a later run.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustix::io::Errno;

use super::Store;
use crate::error::{Ctx, Error, Result, io_error};
use crate::fsx::{self, b};
use crate::relpath::RelPath;
use crate::traverse::{self, Dir, Opened, Step, Visitor};

/// Removes everything under `.snapring/trash`, and under `.snapring/expiring` (pieces
/// of expired snapshots that shard workers claimed and did not finish deleting).
/// Returns the number of entries removed. An entry that cannot be removed is left with
/// its ancestors, the others go on; the first such error is returned.
pub fn empty(store: &Store, threads: usize, cancel: &AtomicBool) -> Result<u64> {
    empty_except(store, None, threads, cancel)
}

/// [`empty`], except the claimed pieces under `.snapring/expiring` whose names start
/// with `keep` (a shard run's own claims, which live workers are deleting).
pub fn empty_except(
    store: &Store,
    keep: Option<&str>,
    threads: usize,
    cancel: &AtomicBool,
) -> Result<u64> {
    let trash = store.meta.join("trash");
    let shown = Path::new(super::META_DIR);
    let mut n = empty_dir(&trash, &shown.join("trash"), &|_| true, threads, cancel);
    let expiring = store.meta.join(EXPIRING);
    if expiring.is_dir() {
        let keep = keep.map(str::as_bytes);
        let pick = |name: &[u8]| keep.is_none_or(|k| !name.starts_with(k));
        let m = empty_dir(&expiring, &shown.join(EXPIRING), &pick, threads, cancel);
        n = match (n, m) {
            (Ok(a), Ok(b)) => Ok(a + b),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
    }
    n
}

/// Where shard workers put the pieces of expired snapshots they claimed, under `.snapring`.
pub const EXPIRING: &str = "expiring";

/// Removes directory `dir` and everything under it (a claimed piece of an expired
/// snapshot, `.snapring/expiring/<claim>`, as errors name it). Returns the number of entries removed, `dir` included; a missing `dir`
/// is 0.
pub fn remove(dir: &Path, threads: usize, cancel: &AtomicBool) -> Result<u64> {
    if !dir.is_dir() {
        return Ok(0);
    }
    let shown = Path::new(super::META_DIR)
        .join(EXPIRING)
        .join(dir.file_name().unwrap_or_default());
    let n = empty_dir(dir, &shown, &|_| true, threads, cancel)?;
    if cancel.load(Ordering::Relaxed) {
        return Ok(n);
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(n + 1),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(n),
        Err(e) => Err(io_error(e, "remove directory", dir)),
    }
}

/// Removes everything under `dir` whose top-level name `pick` accepts; `shown` names
/// `dir` in errors.
fn empty_dir(
    dir: &Path,
    shown: &Path,
    pick: &dyn Fn(&[u8]) -> bool,
    threads: usize,
    cancel: &AtomicBool,
) -> Result<u64> {
    let fd = match fsx::open_dir(dir) {
        Ok(fd) => fd,
        Err(e) if fsx::errno_is(&e, Errno::NOENT) => return Ok(0),
        Err(e) => return Err(io_error(e, "open", dir)),
    };
    let mut names = fsx::read_dir_names(b(&fd)).ctx("read", dir)?;
    names.retain(|n| pick(n));
    if names.is_empty() {
        return Ok(0);
    }
    let v = Trash {
        root: Mutex::new(Some((fd, names))),
        shown: shown.to_path_buf(),
        removed: AtomicU64::new(0),
        first_error: Mutex::new(None),
    };
    traverse::walk(&v, (), threads, cancel);
    if let Some(e) = v
        .first_error
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
    {
        return Err(e);
    }
    Ok(v.removed.into_inner())
}

struct Trash {
    /// The trash directory, opened and listed by `empty`; taken by the walk's first `open`.
    root: Mutex<Option<(OwnedFd, Vec<Vec<u8>>)>>,
    /// The directory being emptied, as errors name it.
    shown: PathBuf,
    removed: AtomicU64,
    first_error: Mutex<Option<Error>>,
}

struct State {
    fd: OwnedFd,
    /// Something under this directory could not be removed, so it stays too.
    kept: AtomicBool,
}

impl Visitor for Trash {
    type State = State;
    type Item = Vec<u8>;
    type Sub = ();

    fn open(
        &self,
        parent: Option<&Dir<State>>,
        name: &[u8],
        rel: &RelPath,
        _: (),
    ) -> Opened<State, Vec<u8>> {
        let state = |fd| State {
            fd,
            kept: AtomicBool::new(false),
        };
        let Some(parent) = parent else {
            let root = self.root.lock().unwrap_or_else(|e| e.into_inner()).take();
            return match root {
                Some((fd, names)) => Opened::Dir(state(fd), names),
                None => Opened::Skip,
            };
        };
        if let Err(e) = crate::failpoint::hit("trash.dir") {
            self.fail(&parent.state, e, "remove", rel);
            return Opened::Skip;
        }
        match fsx::open_dir_at(b(&parent.state.fd), name) {
            Ok(fd) => match fsx::read_dir_names(b(&fd)) {
                Ok(names) => Opened::Dir(state(fd), names),
                Err(e) => {
                    self.fail(&parent.state, e, "read", rel);
                    Opened::Skip
                }
            },
            // Not a directory after all (unlink said EPERM for another reason).
            Err(e) if fsx::errno_is(&e, Errno::NOTDIR) || fsx::errno_is(&e, Errno::LOOP) => {
                match unlink(&parent.state.fd, name) {
                    Ok(()) => {
                        self.removed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => self.fail(&parent.state, e, "remove", rel),
                }
                Opened::Skip
            }
            Err(e) if fsx::errno_is(&e, Errno::NOENT) => Opened::Skip,
            Err(e) => {
                self.fail(&parent.state, e, "open", rel);
                Opened::Skip
            }
        }
    }

    /// Unlinks a non-directory; a directory (EISDIR, or EPERM as POSIX allows) is walked.
    fn visit(&self, dir: &Arc<Dir<State>>, name: Vec<u8>) -> Step<()> {
        if let Err(e) = crate::failpoint::hit("trash.file") {
            self.fail(&dir.state, e, "remove", &dir.rel.join(&name));
            return Step::Next;
        }
        match unlink(&dir.state.fd, &name) {
            Ok(()) => {
                self.removed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if fsx::errno_is(&e, Errno::ISDIR) || fsx::errno_is(&e, Errno::PERM) => {
                return Step::Descend(name, ());
            }
            Err(e) if fsx::errno_is(&e, Errno::NOENT) => {}
            Err(e) => self.fail(&dir.state, e, "remove", &dir.rel.join(&name)),
        }
        Step::Next
    }

    /// Everything under `dir` is gone: remove it from its parent (not the trash itself).
    fn finish(&self, dir: &Dir<State>) {
        let Some(parent) = &dir.parent else {
            return;
        };
        if dir.state.kept.load(Ordering::Relaxed) {
            parent.state.kept.store(true, Ordering::Relaxed);
            return;
        }
        let name = dir.rel.file_name();
        let fd = &parent.state.fd;
        let r = match fsx::rmdir_at(b(fd), name) {
            Err(e) if fsx::errno_is(&e, Errno::ACCESS) => make_writable(fd)
                .map_err(std::io::Error::from)
                .and_then(|()| fsx::rmdir_at(b(fd), name)),
            r => r,
        };
        match r {
            Ok(()) => {
                self.removed.fetch_add(1, Ordering::Relaxed);
            }
            // Removed by another process deleting the same tree (a shard worker's claim
            // taken over, or a later run cleaning up after it).
            Err(e) if fsx::errno_is(&e, Errno::NOENT) => {}
            Err(e) => self.fail(&parent.state, e, "remove directory", &dir.rel),
        }
    }
}

impl Trash {
    /// `rel` could not be removed: keep `dir` (its parent) and remember the first error.
    fn fail(&self, dir: &State, e: std::io::Error, action: &'static str, rel: &RelPath) {
        dir.kept.store(true, Ordering::Relaxed);
        // Root gets EPERM from an immutable or append-only entry, or one in such a
        // directory: say how to find and clear it (nothing else can delete it).
        let e = if fsx::errno_is(&e, Errno::PERM) {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{e}; it or its directory is probably immutable or append-only (`lsattr -d` shows the flag, `chattr -i` or `-a` removes it); it stays in trash until then"
                ),
            )
        } else {
            e
        };
        let e = io_error(e, action, self.shown.join(rel.escaped()));
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(e);
    }
}

/// Unlinks a non-directory; makes the directory writable first if that is what stops it
/// (snapshots keep the source's modes, read-only directories included).
fn unlink(dir: &OwnedFd, name: &[u8]) -> std::io::Result<()> {
    match fsx::unlink_at(b(dir), name) {
        Err(e) if fsx::errno_is(&e, Errno::ACCESS) => {
            make_writable(dir)?;
            fsx::unlink_at(b(dir), name)
        }
        r => r,
    }
}

pub(crate) fn make_writable(dir: &OwnedFd) -> rustix::io::Result<()> {
    rustix::fs::fchmod(dir, rustix::fs::Mode::from_raw_mode(0o700))
}
