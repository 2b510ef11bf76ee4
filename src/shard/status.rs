//! `snapring status --run-id`: what the files of a shard run say, as a value (the CLI
//! prints it or its JSON): the plan, each unit's state (committed, claimed with a live
//! lease, claimed with a lapsed lease, pending), each worker's units, whether the
//! run is finalized (or was abandoned, its copies removed), its workers refused for
//! settings that differ from the plan's, and how the shared deletion of its expired snapshots went
//! (`expire.rs`). Reads the run's directory only; takes no lock, writes nothing.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::state::RunDir;
use crate::error::{Error, Result};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct UnitStatus {
    pub id: String,
    pub dir: String,
    pub weight: u64,
    pub home: usize,
    /// `done`, `claimed`, `stale` (claimed, lease lapsed) or `pending`; `abandoned`
    /// (not committed, never to be built: the run was abandoned).
    pub state: String,
    /// The generation committed or claimed.
    pub generation: Option<u32>,
    /// The worker that committed or holds it.
    pub worker: Option<usize>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct WorkerStatus {
    pub index: usize,
    pub home_units: usize,
    pub committed: usize,
    pub claimed: usize,
    /// Pieces of the expired snapshots it deleted, and their entries.
    pub expired_pieces: usize,
    pub expired_entries: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RunStatus {
    pub run: String,
    pub source: String,
    pub label: String,
    pub workers: usize,
    /// What the plan's weights came from: `manifest` or `snapshot` (the previous
    /// backup's), or `walk` (a quick walk of the source).
    pub sized_by: String,
    pub units: usize,
    pub done: usize,
    pub claimed: usize,
    pub stale: usize,
    pub pending: usize,
    pub finalized: bool,
    /// The published snapshot, once finalized (a run into a repository: the snapshot
    /// its `final` decided, from then on).
    pub snapshot: Option<String>,
    /// A run into a repository, once its `final` is written: where its snapshot is.
    /// `decided` (in `final`, the snapshot file not written: a finalizer stopped
    /// there), `written` (the snapshot file is there, the run not marked `published`),
    /// `published`, or `forgotten` (published, then removed by a later retention or
    /// `forget`). `finalized` is true for the last two only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_state: Option<String>,
    /// The deletion of the expired snapshots: `none` (nothing expired, or not opened
    /// yet), `open` (workers claim pieces), `finished`.
    pub expiry: String,
    /// Pieces claimed so far, and of those deleted.
    pub expiry_claimed: usize,
    pub expiry_done: usize,
    pub per_worker: Vec<WorkerStatus>,
    pub unit_list: Vec<UnitStatus>,
    /// Never finalized, and unpublishable since another run of its label published:
    /// its copies were removed (`abandoned.rs`), when, by which run, and why.
    pub abandoned: Option<super::abandoned::Mark>,
    /// Workers refused because their settings differ from the plan's
    /// (`state::Refused`): finalize publishes nothing while one is there.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<super::state::Refused>,
    /// The run's markers (`finalized`, `abandoned`) that are there but do not read:
    /// what they would have said is not known (`abandoned` then holds no facts).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<DamagedMarker>,
    /// Why no worker can build the run's units, when its plan was made from an empty
    /// source while the previous snapshot is not empty (`state::unbuildable`: an
    /// unmounted node's plan): finalize refuses the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unbuildable: Option<String>,
}

/// A marker of the run that is there but does not read.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DamagedMarker {
    /// `finalized` or `abandoned`.
    pub marker: String,
    pub path: String,
    /// Why: its length when it does not parse, else the read's error.
    pub why: String,
}

impl DamagedMarker {
    /// Marker `name` at `path`, if it is there and does not parse as `T`.
    fn check<T: serde::de::DeserializeOwned>(name: &str, path: &Path) -> Option<DamagedMarker> {
        let why = match std::fs::read(path) {
            Ok(b) if serde_json::from_slice::<T>(&b).is_ok() => return None,
            Ok(b) => format!("{} bytes that are no {name} marker", b.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => format!("cannot be read: {e}"),
        };
        Some(DamagedMarker {
            marker: name.into(),
            path: crate::relpath::shown(path),
            why,
        })
    }
}

/// The state of run `run` in the store whose `.snapring/` is `meta`.
pub fn status(meta: &Path, run: &str) -> Result<RunStatus> {
    super::check_run_id(run).map_err(Error::Config)?;
    let rd = RunDir::new(meta, run);
    let Some((plan, _)) = rd.read_plan()? else {
        return Err(Error::Store {
            path: rd.root.clone(),
            msg: format!("no shard run {run} here (no worker has written its plan)"),
        });
    };
    let lease = super::state::lease();
    // By this host's clock: `status` writes nothing into the store, so it does not
    // read the store's clock as workers do (`StoreClock`); a host whose clock is off
    // sees leases lapse early or late.
    let now = std::time::SystemTime::now();
    let commits = rd.commits(8)?;
    let claims = rd.claims()?;
    let abandoned = super::abandoned::read(&rd);
    let (mut per, list) = units_of(&plan, |id| match (commits.get(id), claims.get(id)) {
        (Some(c), _) => ("done", Some(c.generation), Some(c.worker)),
        // Abandoned: a unit not committed is never built; its claim (if any) is no
        // lease a worker could take over (a worker of the run is refused).
        (None, c) if abandoned.is_some() => (
            "abandoned",
            c.map(|c| c.generation),
            c.and_then(|c| c.holder.as_ref().map(|h| h.worker)),
        ),
        // A claim whose content does not read: its holder is not known, its lease
        // (the file's mtime) is, as any claim's.
        // Past its lease, or its holder exited on this host (a worker killed here: the
        // next worker takes it over at once, as a repository's status says too).
        (None, Some(c))
            if c.expired_at(now, lease) || c.holder.as_ref().is_some_and(|h| h.is_dead_here()) =>
        {
            (
                "stale",
                Some(c.generation),
                c.holder.as_ref().map(|h| h.worker),
            )
        }
        (None, Some(c)) => (
            "claimed",
            Some(c.generation),
            c.holder.as_ref().map(|h| h.worker),
        ),
        (None, None) => ("pending", None, None),
    });
    let tally = super::expire::tally(&rd);
    for (i, h) in &tally.per_worker {
        if let Some(w) = per.get_mut(i) {
            w.expired_pieces = h.pieces;
            w.expired_entries = h.entries;
        }
    }
    let snapshot = std::fs::read(rd.finalized_path())
        .ok()
        .and_then(|b| serde_json::from_slice::<crate::report::RunReport>(&b).ok())
        .and_then(|r| r.snapshot);
    let damaged = [
        DamagedMarker::check::<crate::report::RunReport>("finalized", &rd.finalized_path()),
        DamagedMarker::check::<super::abandoned::Mark>(
            "abandoned",
            &rd.root.join(super::abandoned::MARKER),
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    let pending = count_of(&list, "pending") + count_of(&list, "stale");
    let unbuildable = match rd.is_finalized() || abandoned.is_some() || pending == 0 {
        true => None,
        false => super::state::unbuildable(
            &plan,
            meta.parent()
                .is_some_and(|root| super::state::snapshot_has_entries(root, plan.prev.as_deref())),
        ),
    };
    Ok(RunStatus {
        expiry: tally.state.into(),
        expiry_claimed: tally.claimed,
        expiry_done: tally.done,
        abandoned,
        refused: rd.refused()?,
        damaged,
        unbuildable,
        ..RunStatus::of(run, &plan, per, list, rd.is_finalized(), snapshot)
    })
}

impl RunStatus {
    /// The status of run `run` from its plan and the states [`units_of`] gave; no
    /// expiry (the store's `status` adds its own).
    pub(crate) fn of(
        run: &str,
        plan: &super::state::PlanFile,
        per: BTreeMap<usize, WorkerStatus>,
        list: Vec<UnitStatus>,
        finalized: bool,
        snapshot: Option<String>,
    ) -> RunStatus {
        let count = |s: &str| count_of(&list, s);
        RunStatus {
            run: run.into(),
            source: plan.source.display().to_string(),
            label: plan.label.clone(),
            workers: plan.workers,
            sized_by: plan.sized_by.clone(),
            units: list.len(),
            done: count("done"),
            claimed: count("claimed"),
            stale: count("stale"),
            pending: count("pending"),
            finalized,
            snapshot,
            snapshot_state: None,
            expiry: "none".into(),
            expiry_claimed: 0,
            expiry_done: 0,
            per_worker: per.into_values().collect(),
            unit_list: list,
            abandoned: None,
            refused: Vec::new(),
            damaged: Vec::new(),
            unbuildable: None,
        }
    }
}

/// Units in state `s`.
fn count_of(list: &[UnitStatus], s: &str) -> usize {
    list.iter().filter(|u| u.state == s).count()
}

/// Each worker's and each unit's state, given the state of each unit by id: `done`,
/// `stale`, `claimed` or `pending`, with the generation and the worker committed or
/// claiming (the hard-link store's run and a repository's run alike).
pub(crate) fn units_of(
    plan: &super::state::PlanFile,
    state_of: impl Fn(&str) -> (&'static str, Option<u32>, Option<usize>),
) -> (BTreeMap<usize, WorkerStatus>, Vec<UnitStatus>) {
    let mut per: BTreeMap<usize, WorkerStatus> = (0..plan.workers)
        .map(|i| {
            (
                i,
                WorkerStatus {
                    index: i,
                    ..WorkerStatus::default()
                },
            )
        })
        .collect();
    let mut list = Vec::new();
    for u in &plan.units {
        if let Some(w) = per.get_mut(&u.home) {
            w.home_units += 1;
        }
        let (state, generation, worker) = state_of(&u.id);
        if let Some(w) = worker.and_then(|w| per.get_mut(&w)) {
            match state {
                "done" => w.committed += 1,
                "claimed" => w.claimed += 1,
                _ => {}
            }
        }
        list.push(UnitStatus {
            id: u.id.clone(),
            dir: u.dir.clone(),
            weight: u.weight,
            home: u.home,
            state: state.into(),
            generation,
            worker,
        });
    }
    (per, list)
}
