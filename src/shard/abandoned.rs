//! Shard runs that can never be published, and the removal of their copies. A run is
//! planned against its label's newest snapshot (`plan.prev_run`); once another run of
//! the label has published (a single-node backup, or a shard run under another run id,
//! as a Kubernetes CronJob gives each night), finalize refuses it ("another backup
//! published since the plan") and it stays unfinalized for good, its copies (`work/`,
//! `tree/`, the parts, a staged tree) taking the store's space. Such a run is
//! **abandoned**: everything it was built in is moved to `.snapring/trash/` (as
//! `shard-<run-id>-<entry>`, its staged tree as `staging-<run-id>`) and deleted there
//! as expired snapshots are, and its `abandoned` marker is written. What a finalized
//! run keeps stays (`plan.json`, `claims/`, `done/`), with the marker, for `snapring
//! status` and to refuse a late worker of the run (a retried pod) before it copies
//! anything again.
//!
//! Done only under the store's exclusive lock, when no worker of any run is alive
//! (workers hold it shared for their lives): by a shard finalize's publish of the label
//! for the label's other runs, and by finalize for the run it refuses. (A single-node
//! backup does not sweep: the engine is a lower layer than the shard runs; the run it
//! made unpublishable goes at the label's next shard finalize, or when its own
//! finalize is tried.) Every step can be repeated after a crash. Does file I/O.

use std::sync::atomic::AtomicBool;

use rustix::io::Errno;

use serde::{Deserialize, Serialize};

use super::ShardError;
use super::state::{PlanFile, RunDir};
use crate::error::{Ctx, Error, Result};
use crate::fsx;
use crate::report::Status;
use crate::store::{SnapRec, State, Store};

/// The marker's name in the run's directory.
pub const MARKER: &str = "abandoned";

/// What stays in an abandoned run's directory (with the marker and `planning.g*`).
const KEPT: [&str; 4] = [MARKER, "plan.json", "claims", "done"];

/// The `abandoned` marker: why and when the run's copies were removed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mark {
    pub run: String,
    pub label: String,
    /// When the run was planned (its plan's `created_at`).
    pub planned_at: String,
    /// The snapshot it was planned against, and its run (none: the label had none).
    pub planned_against: Option<String>,
    pub planned_against_run: Option<String>,
    /// The run `<label>.0` is now, which makes it unpublishable.
    pub head_run: String,
    /// When its copies were removed, and by the process of which run (the publishing
    /// run, or the run itself when its finalize refused it).
    pub at: String,
    pub by: String,
    pub units: usize,
    pub committed: usize,
}

impl Mark {
    /// `planned …, never finalized; daily.0 is now run …`.
    pub fn describe(&self) -> String {
        format!(
            "planned {} against {}, never finalized ({} of {} units committed); {}.0 is now run {}",
            self.planned_at,
            snapshot_named(
                self.planned_against.as_deref(),
                self.planned_against_run.as_deref()
            ),
            self.committed,
            self.units,
            self.label,
            self.head_run
        )
    }

    /// Who abandoned it, as the messages say: `its own finalize` (which refused it:
    /// `by` is the run itself), or `the publish of run X`.
    pub fn by_whom(&self) -> String {
        if self.by == self.run {
            "its own finalize, which refused it".into()
        } else {
            format!("the publish of run {}", self.by)
        }
    }

    /// What the report of the run that removed it says.
    pub fn removed_line(&self) -> String {
        format!(
            "removed abandoned shard run {} ({}): its copies were moved to trash",
            self.run,
            self.describe()
        )
    }

    /// The error of a worker or finalize of the run after it was abandoned.
    pub fn refusal(&self, rd: &RunDir) -> Error {
        Error::Store {
            path: rd.root.join(MARKER),
            msg: format!(
                "run {} was abandoned at {} by {} ({}): its copies were removed; nothing backed up or published, start a new run id",
                self.run,
                self.at,
                self.by_whom(),
                self.describe()
            ),
        }
    }
}

/// A snapshot as the messages name it: `daily.0 (run ID)`, `daily.0` (its run not
/// recorded), or `no snapshot`.
pub fn snapshot_named(name: Option<&str>, run: Option<&str>) -> String {
    match (name, run) {
        (Some(n), Some(r)) => format!("{n} (run {r})"),
        (Some(n), None) => n.to_string(),
        _ => "no snapshot".into(),
    }
}

/// The marker of run `rd`, if it was abandoned (an unreadable one reads as a marker
/// with what the run's directory name tells).
pub fn read(rd: &RunDir) -> Option<Mark> {
    let p = rd.root.join(MARKER);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(_) => Vec::new(),
    };
    Some(serde_json::from_slice(&bytes).unwrap_or_else(|_| Mark {
        run: rd.run.clone(),
        label: "?".into(),
        planned_at: "an unknown time".into(),
        planned_against: None,
        planned_against_run: None,
        head_run: "?".into(),
        at: "an unknown time".into(),
        by: "?".into(),
        units: 0,
        committed: 0,
    }))
}

/// The snapshot that makes the run of `plan` unpublishable: `<label>.0` is a snapshot
/// of another run than the one the plan was made against (finalize refuses the run:
/// publishing its older tree would rotate the newer snapshot down, or expire it).
pub fn overtaken_by<'s>(state: &'s State, plan: &PlanFile) -> Option<&'s SnapRec> {
    let head = format!("{}.0", plan.label);
    state
        .snapshots
        .iter()
        .find(|s| s.name == head)
        .filter(|now| Some(&now.id) != plan.prev_run.as_ref())
}

/// Whether run `run` was published (by a finalize that died before `finalized`): the
/// state names it, or its record does (its snapshot expired since). Finalize completes
/// such a run; it is never abandoned.
pub(super) fn published(store: &Store, state: &State, run: &str) -> bool {
    state.snapshots.iter().any(|s| s.id == run)
        || store.read_run(run).ok().flatten().is_some_and(|r| {
            matches!(r.status, Status::Complete | Status::Partial) && r.snapshot.is_some()
        })
}

/// Abandons run `rd` (planned as `plan`, made unpublishable by `head`): moves its
/// copies to trash ([`clear`]), deletes the manifest a finalize may have merged, then
/// writes its marker (after the moves: on a full file system the marker may not fit,
/// the moves always do; a process that dies between them leaves a run the next sweep
/// abandons again). Called with the store's exclusive lock held, by the process of run
/// `by`.
pub fn abandon(
    store: &Store,
    rd: &RunDir,
    plan: &PlanFile,
    head: &SnapRec,
    by: &str,
) -> Result<Mark> {
    crate::failpoint::hit("shard.abandon").ctx("abandon", &rd.root)?;
    clear(store, rd)?;
    store.remove_manifest(&rd.run);
    // Tests: a process killed between the moves and the marker.
    crate::failpoint::hit("shard.abandon.cleared").ctx("abandon", &rd.root)?;
    let mark = Mark {
        run: rd.run.clone(),
        label: plan.label.clone(),
        planned_at: plan.created_at.clone(),
        planned_against: plan.prev.clone(),
        planned_against_run: plan.prev_run.clone(),
        head_run: head.id.clone(),
        at: crate::util::now_rfc3339(),
        by: by.to_string(),
        units: plan.units.len(),
        committed: rd.done_names().map(|d| d.len()).unwrap_or(0),
    };
    let marker = rd.root.join(MARKER);
    let body = serde_json::to_vec_pretty(&mark).expect("marker serializes");
    crate::util::write_atomic(&marker, &body).ctx("write", &marker)?;
    Ok(mark)
}

/// Moves what abandoned run `rd` was built in to trash: every entry of its directory
/// but the marker, the plan, the claims and the commits, each renamed to
/// `.snapring/trash/shard-<run-id>-<entry>` (no directory made: a full file system
/// takes a rename), and its staged tree (a finalize that died after staging) to
/// `trash/staging-<run-id>`. Returns the entries moved; nothing to move is 0.
pub fn clear(store: &Store, rd: &RunDir) -> Result<usize> {
    use std::os::unix::ffi::OsStrExt;
    let mut moving: Vec<std::ffi::OsString> = Vec::new();
    for e in std::fs::read_dir(&rd.root).ctx("read", &rd.root)? {
        let name = e.ctx("read", &rd.root)?.file_name();
        let keep = name
            .to_str()
            .is_some_and(|n| KEPT.contains(&n) || n.starts_with("planning.g"));
        if !keep {
            moving.push(name);
        }
    }
    let meta = crate::store::META_DIR;
    let root = fsx::b(&store.root_fd);
    let mut moved = 0;
    for name in &moving {
        let mut from = format!("{meta}/shards/{}/", rd.run).into_bytes();
        from.extend_from_slice(name.as_bytes());
        let mut n = 1;
        loop {
            let mut to = format!("{meta}/trash/shard-{}-", rd.run).into_bytes();
            to.extend_from_slice(name.as_bytes());
            if n > 1 {
                to.extend_from_slice(format!(".{n}").as_bytes());
            }
            match fsx::rename_noreplace(root, &from, root, &to) {
                Ok(()) => {
                    moved += 1;
                    break;
                }
                // An earlier removal's entry of that name is still in trash.
                Err(e) if fsx::errno_is(&e, Errno::EXIST) && n < 1000 => n += 1,
                Err(e) if fsx::errno_is(&e, Errno::NOENT) => break,
                Err(e) => {
                    return Err(crate::error::io_error(
                        e,
                        "move to trash",
                        rd.root.join(name),
                    ));
                }
            }
        }
    }
    if store.meta.join("staging").join(&rd.run).exists() {
        store.discard_staging(&rd.run)?;
        moved += 1;
    }
    Ok(moved)
}

/// After run `by` published `label`, with the store's exclusive lock held: every other
/// shard run of `label` that is not finalized, not published and planned against
/// another snapshot than the label's newest is abandoned ([`abandon`]); one abandoned
/// before whose copies are still there (a removal cut short) is cleared again. Returns
/// what the publishing run's report says: one line per run abandoned now, one per
/// failure (never fatal: the publish is done). Runs of other labels, runs without a
/// plan (no copies yet) and the finalized ones are left as they are.
pub fn sweep(store: &Store, label: &str, by: &str) -> Vec<String> {
    let dir = store.meta.join("shards");
    let names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != by && super::check_run_id(n).is_ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            let w = format!(
                "abandoned shard runs not looked for: cannot read {}: {e}",
                dir.display()
            );
            tracing::warn!("{w}");
            return vec![w];
        }
    };
    let state = match store.read_state() {
        Ok(s) => s,
        Err(e) => {
            let w = format!("abandoned shard runs not looked for: {e}");
            tracing::warn!("{w}");
            return vec![w];
        }
    };
    // A stat or two per run (most are finalized), a round trip each on NFS: at once.
    let lines = super::par_map(16, &names, |name| {
        let rd = RunDir::new(&store.meta, name);
        if rd.is_finalized() {
            return None;
        }
        if let Some(m) = read(&rd) {
            if m.label != label {
                return None;
            }
            return match clear(store, &rd) {
                Ok(0) => None,
                Ok(n) => {
                    tracing::info!("abandoned shard run {name}: {n} more entries moved to trash");
                    None
                }
                Err(e) => Some(not_removed(name, &e)),
            };
        }
        let plan = match rd.read_plan() {
            Ok(Some((p, _))) => p,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!("shard run {name} left alone: {e}");
                return None;
            }
        };
        if plan.label != label || published(store, &state, name) {
            return None;
        }
        let head = overtaken_by(&state, &plan)?;
        Some(match abandon(store, &rd, &plan, head, by) {
            Ok(m) => {
                let l = m.removed_line();
                tracing::warn!("{l}");
                l
            }
            Err(e) => not_removed(name, &e),
        })
    });
    lines.into_iter().flatten().collect()
}

fn not_removed(run: &str, e: &Error) -> String {
    let w = format!(
        "abandoned shard run {run} (never finalized, unpublishable) not fully removed: {e}; the next publish of its label tries again"
    );
    tracing::warn!("{w}");
    w
}

/// Finalize of run `rd`, which can never be published (`head` published since its
/// plan), or was abandoned before: its copies are removed (moved to trash, and the
/// trash emptied on `threads` threads) and the refusal `refused` returned with what
/// became of them. Called with the store's exclusive lock held.
pub fn refuse(
    store: &Store,
    rd: &RunDir,
    plan_and_head: Option<(&PlanFile, &SnapRec)>,
    refused: Error,
    threads: usize,
    cancel: &AtomicBool,
) -> ShardError {
    // Whether anything was moved now (an abandoned run's message says its copies
    // were removed already).
    let r = match (read(rd), plan_and_head) {
        (Some(_), _) => clear(store, rd).map(|n| n > 0),
        (None, Some((plan, head))) => abandon(store, rd, plan, head, &rd.run).map(|_| true),
        (None, None) => Ok(false),
    };
    let r = r.and_then(|now| {
        crate::store::trash::empty(store, threads, cancel)?;
        Ok(now)
    });
    let note = match r {
        Ok(false) => return ShardError::Failed(refused),
        Ok(true) => "its copies were removed (moved to trash and deleted)".to_string(),
        Err(e) => {
            tracing::warn!("run {}: copies not fully removed: {e}", rd.run);
            format!(
                "its copies are not fully removed yet ({e}); its finalize or the next publish of its label tries again"
            )
        }
    };
    match refused {
        Error::Store { path, msg } => ShardError::Failed(Error::Store {
            path,
            msg: format!("{msg}; {note}"),
        }),
        e => ShardError::Failed(e),
    }
}
