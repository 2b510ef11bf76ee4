//! `snapring list`: the snapshots of a store, newest first, with the run that made each.
//! Opening the store repairs it (an interrupted rotation is rolled forward, a dead run
//! is marked incomplete), so this is also the cheapest way to repair a store.

use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::report::{self, Status};
use crate::store::{Store, lock::Holder};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Listed {
    pub name: String,
    pub label: String,
    pub slot: u32,
    /// The run that made it; `None` for a tree taken over from rsnapshot/cp -a.
    pub id: Option<String>,
    pub finished_at: Option<String>,
    pub status: Option<Status>,
    pub files: Option<u64>,
    pub bytes: Option<u64>,
}

/// Lists the store at `root` (repairing it first).
pub fn list(root: &Path) -> Result<Vec<Listed>> {
    let store = Store::open(root, false)?;
    let holder = Holder {
        pid: std::process::id(),
        host: report::hostname(),
        run: None,
        command: "list".into(),
        since: report::now_rfc3339(),
    };
    let lock = store.lock(&holder)?;
    store.repair(&lock, "list")?;
    let mut out = Vec::new();
    for s in store.snapshots()? {
        let run = match &s.rec {
            Some(r) => store.read_run(&r.id)?,
            None => None,
        };
        out.push(Listed {
            id: s.rec.as_ref().map(|r| r.id.clone()),
            finished_at: s.rec.as_ref().map(|r| r.finished_at.clone()),
            status: run.as_ref().map(|r| r.status),
            files: run.as_ref().map(|r| r.files_total),
            bytes: run.as_ref().map(|r| r.bytes_total),
            name: s.name,
            label: s.label,
            slot: s.slot,
        });
    }
    lock.release();
    Ok(out)
}
