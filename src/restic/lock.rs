//! Repository locks as restic takes them: a file in `locks/` (sealed JSON: time,
//! exclusive, host, user, pid). A backup holds a shared lock; an exclusive lock of a
//! live process (younger than 30 minutes, or on this host with its pid alive) refuses
//! it. The lock file is removed when the guard is released or dropped.

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
}

/// A lock this process holds.
pub struct Guard {
    backend: std::sync::Arc<dyn super::backend::Backend>,
    id: Option<Id>,
}

const STALE_SECS: i64 = 30 * 60;

fn is_stale(l: &LockFile) -> bool {
    let (t, _) = super::parse_time(&l.time).unwrap_or((0, 0));
    if chrono::Utc::now().timestamp() - t > STALE_SECS {
        return true;
    }
    if l.hostname == crate::util::hostname() {
        let alive = i32::try_from(l.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
        return !alive;
    }
    false
}

/// The first live lock that conflicts with taking one (`exclusive` or not), other
/// than `ours`.
fn conflict(repo: &Repo, exclusive: bool, ours: Option<Id>) -> Result<Option<LockFile>> {
    for id in repo.backend.list(Kind::Lock)? {
        if Some(id) == ours {
            continue;
        }
        // A lock removed meanwhile, or one that does not open, is no conflict.
        let Ok(l) = repo.load_json::<LockFile>(Kind::Lock, &id) else {
            continue;
        };
        if (exclusive || l.exclusive) && !is_stale(&l) {
            return Ok(Some(l));
        }
    }
    Ok(None)
}

fn refused(l: &LockFile) -> Error {
    Error::Other(format!(
        "the repository is locked {}by pid {} on {} since {}",
        if l.exclusive { "exclusively " } else { "" },
        l.pid,
        l.hostname,
        l.time
    ))
}

/// Takes a lock: checks the others, writes ours, checks again (a writer that raced us
/// makes both back off).
pub fn acquire(repo: &Repo, exclusive: bool) -> Result<Guard> {
    if let Some(l) = conflict(repo, exclusive, None)? {
        return Err(refused(&l));
    }
    let lf = LockFile {
        time: super::go_time(chrono::Local::now()),
        exclusive,
        hostname: crate::util::hostname(),
        username: std::env::var("USER").unwrap_or_default(),
        pid: std::process::id() as i64,
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
    };
    let id = repo.save_json(Kind::Lock, &lf)?;
    let guard = Guard {
        backend: repo.backend.clone(),
        id: Some(id),
    };
    if let Some(l) = conflict(repo, exclusive, Some(id))? {
        return Err(refused(&l));
    }
    Ok(guard)
}

impl Guard {
    pub fn release(mut self) -> Result<()> {
        match self.id.take() {
            Some(id) => self.backend.remove(Kind::Lock, &id),
            None => Ok(()),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let _ = self.backend.remove(Kind::Lock, &id);
        }
    }
}
