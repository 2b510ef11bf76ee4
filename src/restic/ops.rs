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
}

pub fn list(repo: &Repo) -> Result<Vec<Listed>> {
    Ok(snapshot::load_readable(repo)?
        .into_iter()
        .map(|(id, s)| Listed {
            id: id.hex(),
            short_id: id.hex()[..8].to_string(),
            label: s.tag("label").map(str::to_string),
            time: s.time,
            hostname: s.hostname,
            paths: s.paths,
            tags: s.tags,
        })
        .collect())
}
