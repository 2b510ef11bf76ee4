//! Retention of the run records (`.snapring/runs/<id>.json`) and run logs
//! (`.snapring/logs/<id>.log`, a shard run's `<id>.w<i>.log`): every run writes one of
//! each (a log is ~8 KiB), so a job every minute made half a million files a year, and
//! every backup lists `runs/` (`catalog::record_start`). After a run has written its
//! final record, under the store's lock (a shard run: once its finalizer has recorded
//! it in the catalog, `job::record_finalized`), [`Store::prune_runs`] removes those of the
//! runs that the policy ([`RunRetention`]) lets go and nothing needs: the catalog keeps
//! its rows (it is the long-term history). Never removed: the newest
//! [`RunRetention::keep_last`] records, those younger than `keep_for`, a failed or
//! interrupted run's younger than `keep_failed_for`, and whatever a command still reads
//! a record for: a run whose snapshot is in the store (the state names it, or its
//! manifest is there), a run still `running`, a run with a staging tree (a resumable
//! run's, taken over by the next one) or a shard run directory (not finalized or not
//! cleaned up: `finalize`, `status` and the abandon sweep read its record), a damaged
//! or unreadable record. `catalog rebuild` keeps the catalog rows of pruned runs
//! ([`pruned_up_to`]).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Store;
use crate::report::Status;

/// Run records and logs younger than this are kept (the config's `keep_run_records`).
pub const DEFAULT_KEEP_FOR: Duration = Duration::from_secs(30 * 86400);
/// The newest this many run records are kept, however old.
pub const KEEP_LAST: usize = 100;
/// A failed or incomplete run's record is kept at least this long: it is
/// what explains what happened.
pub const KEEP_FAILED_FOR: Duration = Duration::from_secs(90 * 86400);

/// At most this many run records (with their logs) are removed by one run, the oldest
/// first.
pub const MAX_PRUNED_PER_RUN: usize = 2000;

/// Which run records and logs a run leaves in its store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRetention {
    /// Records (and logs) younger than this are kept; `None`: all are kept forever.
    pub keep_for: Option<Duration>,
    /// The newest this many are kept, however old.
    pub keep_last: usize,
    /// A run that did not publish (failed, incomplete) is kept this long, or
    /// `keep_for` if longer.
    pub keep_failed_for: Duration,
}

impl Default for RunRetention {
    fn default() -> Self {
        RunRetention {
            keep_for: Some(DEFAULT_KEEP_FOR),
            keep_last: KEEP_LAST,
            keep_failed_for: KEEP_FAILED_FOR,
        }
    }
}

impl RunRetention {
    /// From the config's `keep_run_records`: a duration (`30d`, `12h`), or `forever`.
    pub fn parse(v: &str) -> std::result::Result<RunRetention, String> {
        let keep_for = match v.trim() {
            "forever" => None,
            d => Some(crate::util::parse_duration(d).map_err(|e| {
                format!("keep_run_records {v:?}: {e}; give a duration (30d) or \"forever\"")
            })?),
        };
        Ok(RunRetention {
            keep_for,
            ..RunRetention::default()
        })
    }
}

/// A duration as the config writes it: `30d`, else in seconds.
fn shown(d: Duration) -> String {
    match d.as_secs() {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s => format!("{s}s"),
    }
}

/// What [`Store::prune_runs`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub records: usize,
    pub logs: usize,
}

/// `.snapring/runs-pruned`: the newest run id whose record was pruned. `catalog
/// rebuild` keeps the rows of runs up to it that have no record (see
/// [`pruned_up_to`]).
pub const PRUNED_MARK: &str = "runs-pruned";

/// The newest run id whose record the store at `root` pruned, if any: `catalog
/// rebuild` keeps the catalog's rows of runs without a record up to it (ids sort by
/// their start), and removes only newer ones.
pub fn pruned_up_to(root: &std::path::Path) -> Option<String> {
    let p = root.join(super::META_DIR).join(PRUNED_MARK);
    let t = crate::fsx::read_regular(&p).ok()?;
    let id = String::from_utf8(t).ok()?.trim().to_string();
    crate::store::plain_name(&id).then_some(id)
}

impl Store {
    /// Removes the run records and logs `policy` lets go of (see the module). Call
    /// with the store's exclusive lock held, once run `current` has written its final
    /// record. One listing of `runs/` (kept short by this very pruning); a record is
    /// read only when its run is older than both bounds. Never fails: what cannot be
    /// removed is warned about and tried again by the next run.
    pub fn prune_runs(&self, policy: &RunRetention, current: &str, now: DateTime<Utc>) -> Pruned {
        let mut done = Pruned::default();
        let Some(keep_for) = policy.keep_for else {
            return done;
        };
        // A rotation waiting to be rolled forward reads its run's record.
        if self.needs_repair() {
            return done;
        }
        // Only ids that begin with their start (`new_run_id`) are ranked and pruned: a
        // shard run's own id (`--run-id nightly-2912`, a Slurm job id) tells no time,
        // and sorted by name it took the newest places of the runs that do. Such
        // records are kept, as is any record whose time cannot be told.
        let mut ids = self.run_ids();
        ids.retain(|id| super::select::run_id_time(id).is_some());
        if ids.len() <= policy.keep_last {
            return done;
        }
        // Newest first (an id begins with its start, `%Y%m%dT%H%M%SZ`).
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let age = |d: Duration| {
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_sub_signed(d))
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        };
        let cutoff = age(keep_for);
        let failed_cutoff = age(policy.keep_failed_for.max(keep_for));
        // The oldest first, at most [`MAX_PRUNED_PER_RUN`] removed: the first run after an
        // upgrade on a store of half a million records does not hold the store's lock
        // for minutes (on NFS each costs a few round trips); the next runs go on.
        let mut candidates: Vec<String> = ids
            .into_iter()
            .skip(policy.keep_last)
            .filter(|id| id != current)
            .filter(|id| super::select::run_id_time(id).is_some_and(|t| t < cutoff))
            .collect();
        candidates.reverse();
        if candidates.is_empty() {
            return done;
        }
        let in_state: HashSet<String> = match self.read_state_checked() {
            Ok((s, false)) => s.snapshots.into_iter().map(|r| r.id).collect(),
            // A damaged state: its records are recovered from the run records.
            _ => return done,
        };
        let mut gone = Vec::new();
        for id in candidates {
            // The cap counts what goes, not what is looked at: records kept for good
            // (a long `retain`'s, unreadable ones) never hold the rest back.
            if gone.len() >= MAX_PRUNED_PER_RUN {
                break;
            }
            if in_state.contains(&id)
                || self
                    .meta
                    .join("manifests")
                    .join(format!("{id}.mf"))
                    .exists()
                || self.meta.join("staging").join(&id).exists()
                || self.meta.join("shards").join(&id).exists()
            {
                continue;
            }
            let Ok(Some(r)) = self.read_run(&id) else {
                continue;
            };
            let published = matches!(r.status, Status::Complete | Status::Partial);
            if r.status == Status::Running
                || (!published
                    && super::select::run_id_time(&id).is_none_or(|t| t >= failed_cutoff))
            {
                continue;
            }
            gone.push(r);
        }
        let Some(newest) = gone.iter().map(|r| r.id.clone()).max() else {
            return done;
        };
        // The mark first: a rebuild that reads it never removes a row whose record
        // this removes.
        let mark = self.meta.join(PRUNED_MARK);
        if pruned_up_to(&self.root).is_none_or(|m| m < newest)
            && let Err(e) = crate::util::write_atomic(&mark, newest.as_bytes())
        {
            tracing::warn!(
                "{}: cannot write ({e}); no run record pruned",
                crate::relpath::shown(&mark)
            );
            return done;
        }
        let logs = self.meta.join("logs");
        for r in &gone {
            // The logs first: a record outlives them, and is pruned again next time. A
            // shard run's workers' logs are `<id>.w<i>.log` (`shard::worker_log_name`).
            let mut names = vec![format!("{}.log", r.id)];
            if let Some(s) = &r.shards {
                names.extend((0..s.workers).map(|i| format!("{}.w{i}.log", r.id)));
            }
            for n in names {
                match std::fs::remove_file(logs.join(&n)) {
                    Ok(()) => done.logs += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(
                        "{}: cannot delete ({e})",
                        crate::relpath::shown(&logs.join(&n))
                    ),
                }
            }
            let p = self.run_path(&r.id);
            match std::fs::remove_file(&p) {
                Ok(()) => done.records += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("{}: cannot delete ({e})", crate::relpath::shown(&p)),
            }
        }
        if done.records > 0 {
            tracing::info!(
                records = done.records,
                logs = done.logs,
                "removed the run records and logs of runs older than {} beyond the newest {} (the catalog keeps their history)",
                shown(keep_for),
                policy.keep_last
            );
        }
        done
    }
}
