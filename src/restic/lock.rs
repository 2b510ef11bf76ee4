//! Repository locks as restic takes them: a file in `locks/` (sealed JSON: time,
//! exclusive, host, user, pid). A backup holds a shared lock; `forget` and `prune` an
//! exclusive one. A lock of a live process (younger than 30 minutes, or on this host
//! with its pid alive) refuses a conflicting one. While held, a lock is refreshed every
//! 5 minutes as restic refreshes its own (a new file with the current time, then the
//! old one removed), so a long run never looks stale to another host. The lock file is
//! removed when the guard is released or dropped. Taking a lock first removes the
//! locks of dead processes of this host (a killed run's), as `restic unlock` does;
//! but a lock that does not record snapring's pid namespace and boot (restic's own)
//! only once it is also 30 minutes old: its host name may be another container's.
//! A lock whose file is gone (removed by `restic unlock` once it looked stale), or that
//! was not refreshed in time (the process frozen for 25 minutes), is *lost*: as restic
//! writes no snapshot with its lock lost, [`Guard::check`] says so before a write that
//! an exclusive `forget` may have made wrong meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::backend::Kind;
use super::repo::Repo;
use super::{Error, Id, Result};

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LockFile {
    pub time: String,
    pub exclusive: bool,
    pub hostname: String,
    #[serde(default)]
    pub username: String,
    pub pid: i64,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// snapring's own (restic ignores them): the pid namespace and boot of the process
    /// ([`crate::util::same_pids`]): two containers of one host name (pods with
    /// `hostNetwork: true`) do not see each other's pids.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pid_ns: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
}

/// A lock this process holds; a thread refreshes it until it is released.
pub struct Guard {
    inner: Arc<Held>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

/// What refreshing a lock needs, shared with the refreshing thread.
struct Held {
    backend: Arc<dyn super::backend::Backend>,
    key: super::crypto::Key,
    lock: LockFile,
    /// The current lock file (`None` once released).
    id: Mutex<Option<Id>>,
    /// Set on release; the thread waits on it between refreshes.
    stop: (Mutex<bool>, Condvar),
    /// When the current lock file was written (its time).
    written: Mutex<SystemTime>,
    /// Found removed, or not refreshed in time: another process may have taken it for
    /// stale and held an exclusive lock since.
    lost: AtomicBool,
}

/// How often a held lock is refreshed (restic: 5 minutes; stale after 30).
const REFRESH: Duration = Duration::from_secs(5 * 60);

const STALE_SECS: i64 = 30 * 60;

/// A held lock not refreshed for this long may be taken for stale by another process
/// (restic's 30 minutes, less one refresh for the clocks): it is lost.
const LOST_AFTER: Duration = Duration::from_secs(25 * 60);

fn is_stale(l: &LockFile) -> bool {
    is_old(l) || is_dead_here(l)
}

/// Is `l` the lock of a process of this host that no longer runs (killed, or the
/// machine restarted)? Only a pid of this pid namespace and boot can tell. snapring's
/// own locks record both, and a dead pid of ours is taken at once. restic's locks (or
/// any without them) name a host only, and one host name may be another container's
/// (a fixed `--hostname`, pods sharing one) or another machine's (`localhost`), whose
/// live pids look dead here: such a lock is taken for dead only once it is also older
/// than restic's 30 minutes (restic refreshes its locks every 5), as restic's own
/// lock would be stale by then on any host.
fn is_dead_here(l: &LockFile) -> bool {
    if !crate::util::same_pids(&l.hostname, &l.pid_ns, &l.boot_id) {
        return false;
    }
    if (l.pid_ns.is_empty() || l.boot_id.is_empty()) && !is_old(l) {
        return false;
    }
    let alive = i32::try_from(l.pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .is_some_and(pid_runs);
    !alive
}

/// Whether process `p` runs here. Only "no such process" says it does not: a signal
/// refused (EPERM) is a live process of another user (a root `restic prune` seen by a
/// user's snapring), whose lock was taken for a dead one's and removed.
fn pid_runs(p: rustix::process::Pid) -> bool {
    rustix::process::test_kill_process(p) != Err(rustix::io::Errno::SRCH)
}

/// Older than restic's stale age (30 minutes without a refresh).
fn is_old(l: &LockFile) -> bool {
    let (t, _) = super::parse_time(&l.time).unwrap_or((0, 0));
    chrono::Utc::now().timestamp() - t > STALE_SECS
}

/// Removes the locks of dead processes of this host (a SIGKILLed run's), as `restic
/// unlock` would: restic refuses an exclusive lock (`check`, `prune`) while one is
/// there. Locks of other hosts are left (their age is all that can be judged, and
/// clocks differ); a lock that cannot be removed now is left for the next run.
fn remove_dead_locks(repo: &Repo) -> Result<()> {
    for id in repo.backend.list(Kind::Lock)? {
        let Ok(l) = repo.load_json::<LockFile>(Kind::Lock, &id) else {
            continue;
        };
        if is_dead_here(&l) {
            tracing::info!(
                "removing the stale lock {id} of pid {} on {} (since {}): the process is gone",
                l.pid,
                l.hostname,
                l.time
            );
            if let Err(e) = repo.backend.remove(Kind::Lock, &id) {
                tracing::warn!("cannot remove the stale lock {id}: {e}");
            }
        }
    }
    Ok(())
}

/// The first live lock that conflicts with taking one (`exclusive` or not), other
/// than `ours`.
fn conflict(repo: &Repo, exclusive: bool, ours: Option<Id>) -> Result<Option<LockFile>> {
    for id in repo.backend.list(Kind::Lock)? {
        if Some(id) == ours {
            continue;
        }
        let Some(l) = load_other(repo, &id)? else {
            continue;
        };
        if (exclusive || l.exclusive) && !is_stale(&l) {
            return Ok(Some(l));
        }
    }
    Ok(None)
}

/// Another process's lock file `id`, or `None` when it is gone (removed meanwhile).
/// One that is there and does not read (an I/O error, storage failing past its
/// retries, bytes that do not decrypt: a lock being written, a damaged file) may be an
/// exclusive lock of a running `prune`, which would delete what this process is about
/// to write or read: it is read once more after a pause, then refuses, as restic
/// refuses ("unable to load lock"). It was taken for no lock, and a `prune` ran beside
/// a live `restic backup`, deleting its new packs.
fn load_other(repo: &Repo, id: &Id) -> Result<Option<LockFile>> {
    let mut tries = 0;
    loop {
        match repo.load_json::<LockFile>(Kind::Lock, id) {
            Ok(l) => return Ok(Some(l)),
            // Gone (a lock refreshed as a new file, or released, since the listing):
            // a local file not found, S3's 404.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(Error::Missing(_)) => return Ok(None),
            Err(e) if tries == 0 => {
                tracing::debug!("lock {id} does not read ({e}); reading it again");
                tries += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(Error::Locked(format!(
                    "{LOCKED}, or may be: its lock file locks/{id} cannot be read ({e}), and \
                     another process's exclusive lock (a prune) cannot be ruled out; try \
                     again, and if it stays so with no restic or snapring process using the \
                     repository, remove that file (`restic unlock --remove-all` removes \
                     every lock)"
                )));
            }
        }
    }
}

fn refused(l: &LockFile) -> Error {
    // A restic lock of this host whose process is gone is kept until restic's stale
    // age (`is_dead_here`): say so, and how to clear it sooner.
    let gone_here = crate::util::same_pids(&l.hostname, &l.pid_ns, &l.boot_id)
        && (l.pid_ns.is_empty() || l.boot_id.is_empty())
        && i32::try_from(l.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|p| !pid_runs(p));
    let hint = if gone_here {
        format!(
            " (no process {} runs here; the lock names no pid namespace, so it may be \
             another container's or machine's of this host name, and it counts until it \
             is 30 minutes old; if no other process uses the repository, `restic unlock` \
             removes it)",
            l.pid
        )
    } else {
        String::new()
    };
    Error::Locked(format!(
        "{LOCKED} {}by pid {} on {} (user {}) since {}{hint}: try again once it is done",
        if l.exclusive { "exclusively " } else { "" },
        l.pid,
        l.hostname,
        if l.username.is_empty() {
            "?"
        } else {
            &l.username
        },
        l.time
    ))
}

/// How [`acquire`]'s refusal starts.
const LOCKED: &str = "the repository is locked";

/// Takes a lock: checks the others, writes ours, checks again (a writer that raced us
/// makes both back off).
pub fn acquire(repo: &Repo, exclusive: bool) -> Result<Guard> {
    remove_dead_locks(repo)?;
    if let Some(l) = conflict(repo, exclusive, None)? {
        return Err(refused(&l));
    }
    let now = SystemTime::now();
    let lf = LockFile {
        time: super::go_time(chrono::DateTime::<chrono::Local>::from(now)),
        exclusive,
        hostname: crate::util::hostname(),
        username: crate::util::username(),
        pid: std::process::id() as i64,
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        pid_ns: crate::util::pid_namespace().to_string(),
        boot_id: crate::util::boot_id().to_string(),
    };
    let id = repo.save_json(Kind::Lock, &lf)?;
    let inner = Arc::new(Held {
        backend: repo.backend.clone(),
        key: repo.key.clone(),
        lock: lf,
        id: Mutex::new(Some(id)),
        stop: (Mutex::new(false), Condvar::new()),
        written: Mutex::new(now),
        lost: AtomicBool::new(false),
    });
    let mut guard = Guard {
        inner,
        refresher: None,
    };
    if let Some(l) = conflict(repo, exclusive, Some(id))? {
        return Err(refused(&l));
    }
    let held = guard.inner.clone();
    guard.refresher = std::thread::Builder::new()
        .name("restic-lock".into())
        .spawn(move || held.refresh_until_stopped())
        .ok();
    Ok(guard)
}

/// Whether `e` is [`acquire`]'s refusal: another process holds a conflicting lock.
pub fn is_conflict(e: &Error) -> bool {
    matches!(e, Error::Locked(_))
}

/// Whether a run's recorded message is [`acquire`]'s refusal (a run into a repository
/// that another process held exits 75, "try again later", not 1): a run report keeps
/// the message, not the error.
pub fn is_conflict_message(m: &str) -> bool {
    m.starts_with(LOCKED)
}

/// A shared lock for a command that only reads (restore, verify, diff, history), as
/// restic's `restore` and `check` take one: a `prune` (restic's or snapring's) refuses
/// to start while it is held, and so cannot delete or repack a pack in the middle of
/// the read (a restore failed half-way, a verify called a healthy repository damaged).
/// A read is never refused for want of a lock: with a `prune` holding its exclusive
/// lock already, or a repository this process cannot write to (read-only, or S3
/// credentials that may only read), it goes on without one, with a warning: `None`.
pub fn acquire_reader(repo: &Repo) -> Option<Guard> {
    match acquire(repo, false) {
        Ok(g) => Some(g),
        Err(e) => {
            let why = if is_conflict(&e) {
                format!("{e}: a prune or forget may be running")
            } else {
                format!("cannot write a lock: {e}")
            };
            tracing::warn!(
                "reading {} without a lock ({why}); if a prune removes packs meanwhile, this \
                 command fails: run it again when the prune is done",
                repo.backend.location()
            );
            None
        }
    }
}

impl Held {
    fn refresh_until_stopped(&self) {
        let (stopped, cv) = &self.stop;
        let mut s = stopped.lock().expect("lock state");
        loop {
            // Released before this thread first got here: no wake-up will come.
            if *s {
                return;
            }
            let (next, timeout) = cv.wait_timeout(s, REFRESH).expect("lock state");
            s = next;
            if *s {
                return;
            }
            if timeout.timed_out()
                && let Err(e) = self.refresh()
            {
                tracing::warn!("cannot refresh the repository lock: {e}");
            }
        }
    }

    /// Writes the lock anew with the current time, then removes the old file; not once
    /// the lock is lost (a refresh after the process was frozen past [`LOST_AFTER`]
    /// would hide that an exclusive lock may have been taken meanwhile).
    fn refresh(&self) -> Result<()> {
        let mut id = self.id.lock().expect("lock id");
        let Some(old) = *id else { return Ok(()) };
        self.check_time()?;
        let now = SystemTime::now();
        let mut lf = self.lock.clone();
        lf.time = super::go_time(chrono::DateTime::<chrono::Local>::from(now));
        let json = serde_json::to_vec(&lf).expect("JSON serialises");
        let mut plain = vec![2u8];
        plain
            .extend(zstd::bulk::compress(&json, 3).map_err(super::io_err("compress", "the lock"))?);
        let sealed = self.key.seal(&plain);
        let new = Id::hash(&sealed);
        self.backend.write(Kind::Lock, &new, &sealed)?;
        *id = Some(new);
        *self.written.lock().expect("lock time") = now;
        self.backend.remove(Kind::Lock, &old)
    }

    fn lost_error(&self, why: String) -> Error {
        self.lost.store(true, Ordering::Relaxed);
        Error::Other(format!("the repository lock was lost: {why}"))
    }

    /// Lost by time: not refreshed for [`LOST_AFTER`] (the process frozen, or its
    /// refreshes failing).
    fn check_time(&self) -> Result<()> {
        if self.lost.load(Ordering::Relaxed) {
            return Err(Error::Other("the repository lock was lost".into()));
        }
        let written = *self.written.lock().expect("lock time");
        let since = SystemTime::now()
            .duration_since(written)
            .unwrap_or_default();
        if since > LOST_AFTER {
            return Err(self.lost_error(format!(
                "not refreshed for {} s (another process may have taken it for stale)",
                since.as_secs()
            )));
        }
        Ok(())
    }

    fn release(&self) -> Result<()> {
        *self.stop.0.lock().expect("lock state") = true;
        self.stop.1.notify_all();
        match self.id.lock().expect("lock id").take() {
            Some(id) => match self.backend.remove(Kind::Lock, &id) {
                // Removed already (a lost lock, `restic unlock`): released.
                Err(_)
                    if self
                        .backend
                        .list(Kind::Lock)
                        .is_ok_and(|l| !l.contains(&id)) =>
                {
                    Ok(())
                }
                r => r,
            },
            None => Ok(()),
        }
    }
}

impl Held {
    fn check(&self) -> Result<()> {
        // Held across the listing: a refresh replaces the file meanwhile.
        let id = self.id.lock().expect("lock id");
        self.check_time()?;
        let Some(id) = *id else {
            return Err(Error::Other("the repository lock was released".into()));
        };
        if !self.backend.list(Kind::Lock)?.contains(&id) {
            return Err(self.lost_error(format!(
                "its file locks/{} was removed (by `restic unlock`, or as stale by another process)",
                id.hex()
            )));
        }
        Ok(())
    }
}

/// [`Guard::watch`]: whether a lock is still held, asked from where the guard is not.
#[derive(Clone)]
pub struct Watch(Arc<Held>);

impl Watch {
    /// [`Guard::check`].
    pub fn check(&self) -> Result<()> {
        self.0.check()
    }
}

impl Guard {
    pub fn release(mut self) -> Result<()> {
        let r = self.inner.release();
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        r
    }

    /// Refreshes the lock now (the thread does it every 5 minutes).
    pub fn refresh(&self) -> Result<()> {
        self.inner.refresh()
    }

    /// Whether the lock is still held, as restic asks before it writes a snapshot: its
    /// file still there (not removed by `restic unlock`, or as stale by another
    /// process) and refreshed in time. An error says how it was lost: an exclusive
    /// `forget` or `prune` may have run since.
    pub fn check(&self) -> Result<()> {
        self.inner.check()
    }

    /// A handle that asks [`Guard::check`]'s question for as long as the lock is held:
    /// for a [`super::repo::Packer`], which writes no index file once the lock is lost.
    pub fn watch(&self) -> Watch {
        Watch(self.inner.clone())
    }

    /// The current lock file.
    pub fn id(&self) -> Option<Id> {
        *self.inner.id.lock().expect("lock id")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.inner.release();
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
    }
}
