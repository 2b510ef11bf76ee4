//! The small operations on a repository: `init` and `list` (its snapshots, oldest
//! first, with snapring's label from the tags). Reads and writes through `repo`.

use serde::Serialize;

use super::Result;
use super::backend::Backend;
use super::crypto::DEFAULT_KDF;
use super::repo::{self, Config, Repo};
use super::snapshot;

/// Creates a repository in `backend`; `cancel` set stops it before the next write
/// (`repo::init_stoppable`).
pub fn init(
    backend: &dyn Backend,
    password: &[u8],
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Config> {
    repo::init_stoppable(backend, password, DEFAULT_KDF, cancel)
}

/// One snapshot as `snapring list` shows it.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub id: String,
    pub short_id: String,
    pub time: String,
    pub hostname: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    /// snapring's label tag, if snapring wrote the snapshot.
    pub label: Option<String>,
    /// Why the snapshot file does not read (its time, host and paths are then not
    /// known, and empty); `None` for a snapshot that reads.
    pub damaged: Option<String>,
}

/// Every snapshot, oldest first, then each snapshot file that does not read (its time
/// is not known: it may be the newest, so it comes last, where a script taking the
/// newest finds it), with `damaged` set. Reads no index.
pub fn list(repo: &Repo) -> Result<Vec<Listed>> {
    let (readable, damaged) = snapshot::load_listing(repo)?;
    let mut out: Vec<Listed> = readable
        .into_iter()
        .map(|(id, s)| Listed {
            id: id.hex(),
            short_id: id.hex()[..8].to_string(),
            label: s.tag("label").map(str::to_string),
            time: s.time,
            hostname: s.hostname,
            paths: s.paths,
            tags: s.tags,
            damaged: None,
        })
        .collect();
    out.extend(damaged.into_iter().map(|d| Listed {
        id: d.id.hex(),
        short_id: d.id.hex()[..8].to_string(),
        time: String::new(),
        hostname: String::new(),
        paths: vec![],
        tags: vec![],
        label: None,
        damaged: Some(d.reason),
    }));
    Ok(out)
}
