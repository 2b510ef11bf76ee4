//! Scale-out: one backup run of the hard-link store split across N worker processes
//! (Kubernetes Indexed Jobs, Slurm job arrays, AWS Batch arrays, or by hand), with no
//! coordinator: the workers meet only in files on the backup file system, under
//! `<store>/.snapring/shards/<run-id>/` (docs/scale-out.md).
//!
//! - `plan.rs` (pure): the cut of the source into units and the home set of each worker;
//! - `sizes.rs`: the weights the cut needs, from the previous manifest or a quick walk;
//! - `state.rs`: the run's files (plan, claims with leases and generations, commit
//!   markers, counters), every create exclusive;
//! - `worker.rs`: one worker: claim a unit, back it up with the engine's walk into a
//!   private directory, commit it exactly once, move it into the run's tree;
//! - `finalize.rs`: merge the manifest parts, apply the spine's metadata, join hard-link
//!   groups across units, publish through the store's journal exactly once;
//! - `status.rs`: what `snapring status` shows;
//! - `abandoned.rs`: runs a publish of their label made unpublishable, their copies
//!   removed;
//! - `repository.rs`: the same run into a restic repository (state as objects beside
//!   restic's files, claims by conditional writes, one snapshot made by finalize).
//!
//! This file: which worker this process is (flags or the engines' variables), the
//! errors with the exit code each maps to, a parallel map and a [`Bell`] for the other
//! files. No I/O beyond reading the environment through the caller's function.

pub mod abandoned;
pub mod dry;
pub mod expire;
pub mod finalize;
pub mod plan;
pub mod repository;
pub mod sizes;
pub mod state;
pub mod status;
pub mod worker;

/// Exit code of a failure worth retrying (EX_TEMPFAIL): the store is held by another
/// run, the finalize lock is busy, units are still being worked on.
pub const EXIT_RETRY: i32 = 75;

/// Which worker this process is, of how many, in which run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// 0-based.
    pub index: usize,
    pub count: usize,
    pub run_id: String,
}

/// What went wrong in a shard command, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The command line or the environment is wrong (exit 64): nothing was done.
    #[error("{0}")]
    Usage(String),
    /// Try again later (exit 75): nothing was lost.
    #[error("{0}")]
    Retry(String),
    /// Will not get better by retrying (exit 1).
    #[error(transparent)]
    Failed(#[from] crate::error::Error),
    /// Stopped (SIGINT/SIGTERM, the window) while it talked to the repository: a
    /// request given up (`restic::Error::Cancelled`). Exit 3, as a stopped worker's
    /// (`incomplete`): nothing was lost, a rerun resumes. [`repository::work`] turns
    /// it into its `incomplete` report; it surfaces as an error only before that
    /// (while the repository was being opened).
    #[error("interrupted")]
    Stopped,
}

impl ShardError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ShardError::Usage(_) => 64,
            ShardError::Retry(_) => EXIT_RETRY,
            ShardError::Failed(_) => 1,
            ShardError::Stopped => 3,
        }
    }

    /// What a worker that ended with this error says. A full file system is told as a
    /// worker's: the single-node wording ("the run was abandoned") is not true of a
    /// shard run, which a rerun of the worker resumes.
    pub fn worker_text(&self) -> String {
        match self {
            ShardError::Failed(e @ crate::error::Error::DiskFull { why, .. }) => format!(
                "{}: this worker stopped; nothing was published, and older snapshots and the units already committed are kept; {} and rerun this worker (same index and run id): it takes its unit up where its copies stopped",
                e.cause(),
                why.remedy()
            ),
            e => e.to_string(),
        }
    }
}

/// A store error, sorted: a store held by another run is worth a retry.
pub(crate) fn sort_err(e: crate::error::Error) -> ShardError {
    match e {
        crate::error::Error::Locked { .. } => ShardError::Retry(e.to_string()),
        e => ShardError::Failed(e),
    }
}

/// A repository error, sorted: storage not reached once its retries were spent (an S3
/// outage: `restic::Error::Unreachable`) is worth a retry (exit 75), as nothing was
/// lost and a rerun with the same run id resumes; anything else will not get better
/// by retrying (exit 1). A request given up as the worker was stopped
/// (`restic::Error::Cancelled`) is the stop's ([`ShardError::Stopped`], exit 3).
pub fn sort_repo_err(e: crate::restic::Error) -> ShardError {
    match e {
        crate::restic::Error::Cancelled => ShardError::Stopped,
        // A full file system under a repository on a directory: told as a store's
        // (what to do, and that a rerun resumes), not as a bare write error.
        crate::restic::Error::Io { ref source, .. } if crate::fsx::is_disk_full(source) => {
            ShardError::Failed(crate::error::Error::Repository(format!(
                "{e}: the repository's file system is full; nothing was published, and the units already committed are kept; free space (or raise the quota) and rerun this worker (same index and run id), or `snapring finalize` once every unit is committed: the run resumes where it stopped"
            )))
        }
        crate::restic::Error::Unreachable(m) => ShardError::Retry(format!(
            "the repository could not be reached: {m}; nothing is lost: a rerun with the \
             same --run-id (the worker, or `snapring finalize`) resumes the run"
        )),
        e => ShardError::Failed(crate::error::Error::Repository(e.to_string())),
    }
}

pub(crate) use crate::util::par_map;

/// Two lanes' outcomes as one: the first error, else whether both finished the run.
pub(crate) fn both_lanes(
    a: Result<bool, ShardError>,
    b: Result<bool, ShardError>,
) -> Result<bool, ShardError> {
    match (a, b) {
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        (Ok(a), Ok(b)) => Ok(a && b),
    }
}

/// A run id names a directory and a run record: letters, digits, `.`, `_`, `-`, at
/// most 100, not starting with `.`.
pub fn check_run_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 100
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "run id {id:?}: use 1 to 100 letters, digits, '.', '_' or '-', not starting with '.'"
        ))
    }
}

/// Which worker this is, from `--shard I/N` (`shard`), `--shards N` (`shards`),
/// `--run-id` (`run_id`) and, where no `--shard` is given, the engines' variables
/// (read through `env`): `JOB_COMPLETION_INDEX` (Kubernetes Indexed Job),
/// `SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_COUNT`/`_MIN`/`SLURM_ARRAY_JOB_ID`,
/// `AWS_BATCH_JOB_ARRAY_INDEX`; the count from `--shards` or `SNAPRING_SHARDS` where
/// the engine does not give it, the run id from `--run-id` or `SNAPRING_RUN_ID`.
/// `Ok(None)`: not a shard run. An index without a count, or without a run id, and a
/// count or a run id (flag or variable) without an index, is an error (a usage error:
/// exit 64).
pub fn detect(
    shard: Option<&str>,
    shards: Option<usize>,
    run_id: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Spec>, String> {
    let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let num = |k: &str, v: &str| -> Result<usize, String> {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("{k}={v:?} is not a number"))
    };
    let count_flag = || -> Result<Option<usize>, String> {
        match (shards, var("SNAPRING_SHARDS")) {
            (Some(n), _) => Ok(Some(n)),
            (None, Some(v)) => num("SNAPRING_SHARDS", &v).map(Some),
            (None, None) => Ok(None),
        }
    };
    let run_flag = run_id
        .map(str::to_string)
        .or_else(|| var("SNAPRING_RUN_ID"));
    let (index, count, run, from) = if let Some(s) = shard {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--shard {s:?}: expected I/N, like 0/4"))?;
        let i = num("--shard", i)?;
        let n = num("--shard", n)?;
        (i, Some(n), run_flag, "--shard")
    } else if let Some(v) = var("JOB_COMPLETION_INDEX") {
        (
            num("JOB_COMPLETION_INDEX", &v)?,
            count_flag()?,
            run_flag,
            "JOB_COMPLETION_INDEX",
        )
    } else if let Some(v) = var("SLURM_ARRAY_TASK_ID") {
        let id = num("SLURM_ARRAY_TASK_ID", &v)?;
        let min = match var("SLURM_ARRAY_TASK_MIN") {
            Some(m) => num("SLURM_ARRAY_TASK_MIN", &m)?,
            None => 0,
        };
        let tasks = match var("SLURM_ARRAY_TASK_COUNT") {
            Some(c) => Some(num("SLURM_ARRAY_TASK_COUNT", &c)?),
            None => None,
        };
        let count = match tasks {
            Some(c) => Some(c),
            None => count_flag()?,
        };
        let step = match var("SLURM_ARRAY_TASK_STEP") {
            Some(s) => num("SLURM_ARRAY_TASK_STEP", &s)?,
            None => 1,
        };
        let max = match var("SLURM_ARRAY_TASK_MAX") {
            Some(m) => Some(num("SLURM_ARRAY_TASK_MAX", &m)?),
            None => None,
        };
        let run =
            run_flag.or_else(|| var("SLURM_ARRAY_JOB_ID").map(|j| format!("slurm-{}", j.trim())));
        let index = slurm_index(id, min, max, step, tasks)?;
        (index, count, run, "SLURM_ARRAY_TASK_ID")
    } else if let Some(v) = var("AWS_BATCH_JOB_ARRAY_INDEX") {
        (
            num("AWS_BATCH_JOB_ARRAY_INDEX", &v)?,
            count_flag()?,
            run_flag,
            "AWS_BATCH_JOB_ARRAY_INDEX",
        )
    } else {
        // A count or a run id names a shard run: without an index each process would
        // back up the whole source on its own (a Job without `completionMode:
        // Indexed`, an `sbatch` without `--array`).
        let what = if shards.is_some() {
            Some("--shards")
        } else if var("SNAPRING_SHARDS").is_some() {
            Some("SNAPRING_SHARDS")
        } else if run_id.is_some() {
            Some("--run-id")
        } else {
            // `SNAPRING_RUN_ID` alone is not one: every hook gets it (its own run's
            // id), and a `snapring backup` a hook starts is a backup of its own.
            None
        };
        return match what {
            Some(what) => Err(format!(
                "{what} names a shard run but nothing gives this worker's index: pass --shard I/N, or set JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID or AWS_BATCH_JOB_ARRAY_INDEX (an Indexed Job, a job array); unset it for a backup of the whole source"
            )),
            None => Ok(None),
        };
    };
    let count = count.ok_or_else(|| {
        format!("{from} gives the worker index {index} but nothing gives the number of workers: pass --shards N or set SNAPRING_SHARDS")
    })?;
    if count == 0 || index >= count {
        return Err(format!(
            "worker index {index} is not below the number of workers {count}"
        ));
    }
    let run_id = run.ok_or_else(|| {
        format!("{from}: a shard run needs a run id shared by all its workers: pass --run-id ID or set SNAPRING_RUN_ID (for a Kubernetes CronJob, the Job's name)")
    })?;
    check_run_id(&run_id)?;
    Ok(Some(Spec {
        index,
        count,
        run_id,
    }))
}

/// The worker index of Slurm array task `id` of an array whose ids run from `min` to
/// `max` by `step`, `count` of them (`SLURM_ARRAY_TASK_COUNT`; `None`, or `max`
/// `None`: not given, not checked): `(id − min) / step`. An array
/// whose ids are not one evenly spaced range (`--array=1,6-7,12`: no step gives its
/// ids, however Slurm sets `SLURM_ARRAY_TASK_STEP`) is refused: its tasks would not
/// name the workers `0…count−1`, and some would be refused (exit 64) or two would be
/// the same worker. Before 2026-12-07 the step was not read: `--array=0-6:2` made
/// workers 0, 2, 4 and 6 of 4, and tasks 4 and 6 failed.
fn slurm_index(
    id: usize,
    min: usize,
    max: Option<usize>,
    step: usize,
    count: Option<usize>,
) -> Result<usize, String> {
    let vars = || {
        format!(
            "SLURM_ARRAY_TASK_ID {id}, SLURM_ARRAY_TASK_MIN {min}{}, SLURM_ARRAY_TASK_STEP {step}{}",
            max.map(|m| format!(", SLURM_ARRAY_TASK_MAX {m}"))
                .unwrap_or_default(),
            count
                .map(|c| format!(", SLURM_ARRAY_TASK_COUNT {c}"))
                .unwrap_or_default()
        )
    };
    let not_a_range = || {
        format!(
            "{}: the job array's task ids are not one evenly spaced range; a shard run's array needs ids that are one, as --array=0-3 or --array=0-6:2 give (the workers are numbered from them)",
            vars()
        )
    };
    let off = id
        .checked_sub(min)
        .ok_or_else(|| format!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"))?;
    if step == 0 || off % step != 0 {
        return Err(not_a_range());
    }
    if let (Some(max), Some(count)) = (max, count)
        && (max < min || count == 0 || (max - min) as u128 != (count as u128 - 1) * step as u128)
    {
        return Err(not_a_range());
    }
    Ok(off / step)
}

/// How long after its run was finalized a worker that finds it finalized as it starts
/// is still taken as a late duplicate of that run (a retried pod, a requeued array
/// task: exit 0): `SNAPRING_SHARD_REUSE_AFTER` (`6h`, `2d`), else 6 hours, well past
/// any engine's retry delay (Kubernetes' back-off is capped at 6 minutes, a Slurm
/// requeue takes minutes). Past it the run id is taken as used again ([`reused`]).
pub fn reuse_after() -> std::time::Duration {
    std::env::var("SNAPRING_SHARD_REUSE_AFTER")
        .ok()
        .and_then(|v| crate::util::parse_duration(&v).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_REUSE_AFTER)
}

/// [`reuse_after`] when `SNAPRING_SHARD_REUSE_AFTER` does not say.
pub const DEFAULT_REUSE_AFTER: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// A duration of minutes or more as [`reused`] says it: `45m 10s`, `7h 00m`, `1d 0h`.
fn ago_text(d: std::time::Duration) -> String {
    let t = d.as_secs_f64().round() as u64;
    match t {
        0..3600 => format!("{}m {:02}s", t / 60, t % 60),
        3600..86400 => format!("{}h {:02}m", t / 3600, t % 3600 / 60),
        _ => format!("{}d {}h", t / 86400, t % 86400 / 3600),
    }
}

/// The refusal (exit 64) of a worker of run `run` started at `started`, which found the
/// run finalized (published) at `at` (RFC 3339), longer than `after` before: not a
/// retry of that run's worker but a job that passes a fixed run id (a cron job, a
/// script), which would otherwise exit 0 every night with nothing backed up. `None`:
/// within `after` (a late duplicate: exit 0), or `at` is not a time.
pub fn reused(
    run: &str,
    at: &str,
    started: chrono::DateTime<chrono::Utc>,
    after: std::time::Duration,
) -> Option<ShardError> {
    let t = chrono::DateTime::parse_from_rfc3339(at).ok()?.to_utc();
    let ago = started.signed_duration_since(t).to_std().ok()?;
    if ago <= after {
        return None;
    }
    Some(ShardError::Usage(format!(
        "run id {run} was already finalized at {at}, {} before this worker started: a run id names one run, so this is a new backup under a used run id (a fixed --run-id or SNAPRING_RUN_ID in a cron job or script); nothing was backed up or written. Give each run its own id (nightly-$(date +%F), a CronJob's Job name). A worker of that run started later than {} after its finalize exits 0 only with SNAPRING_SHARD_REUSE_AFTER set longer",
        ago_text(ago),
        ago_text(after)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn spec(i: usize, n: usize, run: &str) -> Option<Spec> {
        Some(Spec {
            index: i,
            count: n,
            run_id: run.into(),
        })
    }

    #[test]
    fn flags_and_each_engines_variables_name_the_worker() {
        assert_eq!(
            detect(Some("2/4"), None, Some("r1"), &with(&[])),
            Ok(spec(2, 4, "r1"))
        );
        assert_eq!(detect(None, None, None, &with(&[])), Ok(None));
        let k8s = with(&[
            ("JOB_COMPLETION_INDEX", "3"),
            ("SNAPRING_RUN_ID", "backup-2912"),
        ]);
        assert_eq!(
            detect(None, Some(4), None, &k8s),
            Ok(spec(3, 4, "backup-2912"))
        );
        let k8s_env = with(&[
            ("JOB_COMPLETION_INDEX", "1"),
            ("SNAPRING_SHARDS", "2"),
            ("SNAPRING_RUN_ID", "j"),
        ]);
        assert_eq!(detect(None, None, None, &k8s_env), Ok(spec(1, 2, "j")));
        let slurm = with(&[
            ("SLURM_ARRAY_TASK_ID", "7"),
            ("SLURM_ARRAY_TASK_MIN", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_JOB_ID", "1234"),
        ]);
        assert_eq!(
            detect(None, None, None, &slurm),
            Ok(spec(2, 4, "slurm-1234"))
        );
        let batch = with(&[("AWS_BATCH_JOB_ARRAY_INDEX", "0")]);
        assert_eq!(
            detect(None, Some(3), Some("b"), &batch),
            Ok(spec(0, 3, "b"))
        );
        // The flag wins over the environment.
        assert_eq!(
            detect(Some("0/2"), None, Some("x"), &k8s),
            Ok(spec(0, 2, "x"))
        );
    }

    /// H2 (session 47): `--array=0-6:2` (ids 0, 2, 4, 6) made workers 0, 2, 4 and 6 of
    /// 4, and tasks 4 and 6 failed (exit 64); the step names them 0…3. An array whose
    /// ids are no evenly spaced range is refused, saying the ids must be one.
    #[test]
    fn a_stepped_slurm_array_names_its_workers_and_a_sparse_one_is_refused() {
        fn array(
            id: &str,
            min: &str,
            max: &str,
            step: &str,
            count: &str,
        ) -> impl Fn(&str) -> Option<String> + use<> {
            let m: HashMap<String, String> = [
                ("SLURM_ARRAY_TASK_ID", id),
                ("SLURM_ARRAY_TASK_MIN", min),
                ("SLURM_ARRAY_TASK_MAX", max),
                ("SLURM_ARRAY_TASK_STEP", step),
                ("SLURM_ARRAY_TASK_COUNT", count),
                ("SLURM_ARRAY_JOB_ID", "77"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            move |k| m.get(k).cloned()
        }
        // --array=0-6:2
        for (id, index) in [("0", 0), ("2", 1), ("4", 2), ("6", 3)] {
            assert_eq!(
                detect(None, None, None, &array(id, "0", "6", "2", "4")),
                Ok(spec(index, 4, "slurm-77")),
                "{id}"
            );
        }
        // --array=3-12:3 (3, 6, 9, 12), and a step of 1 as before.
        assert_eq!(
            detect(None, None, None, &array("9", "3", "12", "3", "4")),
            Ok(spec(2, 4, "slurm-77"))
        );
        assert_eq!(
            detect(None, None, None, &array("5", "2", "5", "1", "4")),
            Ok(spec(3, 4, "slurm-77"))
        );
        // --array=1,5,9 if Slurm gives it the step 4: a range.
        assert_eq!(
            detect(None, None, None, &array("9", "1", "9", "4", "3")),
            Ok(spec(2, 3, "slurm-77"))
        );
        // --array=1,6-7,12 (whatever the step says), --array=1,5,9 with a step of 1,
        // an id off the step: refused, saying the ids must be a range.
        for (id, min, max, step, count) in [
            ("6", "1", "12", "1", "4"),
            ("7", "1", "12", "5", "4"),
            ("12", "1", "12", "11", "4"),
            ("5", "1", "9", "1", "3"),
            ("3", "0", "6", "2", "4"),
            ("2", "0", "6", "0", "4"),
        ] {
            let e = detect(None, None, None, &array(id, min, max, step, count)).unwrap_err();
            assert!(
                e.contains("not one evenly spaced range")
                    && e.contains("--array=0-3 or --array=0-6:2")
                    && e.contains(&format!("SLURM_ARRAY_TASK_ID {id}")),
                "{id} {min}-{max}:{step} x{count}: {e}"
            );
        }
        // Without _MAX (older Slurm), the step still names the workers.
        let no_max = with(&[
            ("SLURM_ARRAY_TASK_ID", "6"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_JOB_ID", "77"),
        ]);
        assert_eq!(
            detect(None, None, None, &no_max),
            Ok(spec(3, 4, "slurm-77"))
        );
    }

    /// H2 (session 47): a worker of a run finalized longer ago than any retry comes is
    /// a reused run id (exit 64); within it, a late duplicate (none: exit 0).
    #[test]
    fn a_run_finalized_long_before_the_worker_started_is_a_reused_run_id() {
        let started = chrono::DateTime::parse_from_rfc3339("2026-12-07T20:00:00.000Z")
            .unwrap()
            .to_utc();
        let six = DEFAULT_REUSE_AFTER;
        for at in [
            "2026-12-07T20:00:00.000Z",
            "2026-12-07T14:00:00.000Z",
            "2026-12-07T19:54:00.000Z",
            // Finalized "after" it started (another host's clock): a duplicate.
            "2026-12-07T20:05:00.000Z",
            "an unknown time",
        ] {
            assert!(reused("r", at, started, six).is_none(), "{at}");
        }
        let e = reused("nightly", "2026-12-06T20:00:00.000Z", started, six).unwrap();
        assert_eq!(e.exit_code(), 64);
        let m = e.to_string();
        assert!(
            m.contains("run id nightly was already finalized at 2026-12-06T20:00:00.000Z, 1d 0h before this worker started")
                && m.contains("nothing was backed up or written")
                && m.contains("SNAPRING_SHARD_REUSE_AFTER"),
            "{m}"
        );
        assert!(
            reused(
                "r",
                "2026-12-07T13:59:59.000Z",
                started,
                std::time::Duration::from_secs(6 * 3600)
            )
            .is_some()
        );
        assert!(
            reused(
                "r",
                "2026-12-06T20:00:00.000Z",
                started,
                std::time::Duration::from_secs(2 * 86400)
            )
            .is_none()
        );
    }

    #[test]
    fn an_index_without_a_count_or_a_run_id_is_refused() {
        let e = detect(
            None,
            None,
            Some("r"),
            &with(&[("JOB_COMPLETION_INDEX", "0")]),
        )
        .unwrap_err();
        assert!(e.contains("--shards N"), "{e}");
        let e = detect(
            None,
            None,
            Some("r"),
            &with(&[("AWS_BATCH_JOB_ARRAY_INDEX", "1")]),
        )
        .unwrap_err();
        assert!(e.contains("SNAPRING_SHARDS"), "{e}");
        let e = detect(None, Some(2), None, &with(&[("JOB_COMPLETION_INDEX", "0")])).unwrap_err();
        assert!(e.contains("--run-id"), "{e}");
        assert!(detect(Some("4/4"), None, Some("r"), &with(&[])).is_err());
        assert!(detect(Some("1"), None, Some("r"), &with(&[])).is_err());
        assert!(detect(Some("0/2"), None, Some("../x"), &with(&[])).is_err());
        assert!(detect(None, Some(2), Some("r"), &with(&[])).is_err());
        // A count or a run id without an index, from the flags or the environment.
        for (shards, run, vars) in [
            (None, Some("r"), vec![]),
            (None, None, vec![("SNAPRING_SHARDS", "3")]),
            (
                None,
                None,
                vec![("SNAPRING_SHARDS", "3"), ("SNAPRING_RUN_ID", "job-123")],
            ),
        ] {
            let e = detect(None, shards, run, &with(&vars)).unwrap_err();
            assert!(e.contains("index"), "{vars:?}: {e}");
        }
        // SNAPRING_RUN_ID alone is what every hook gets: not a shard run.
        assert_eq!(
            detect(None, None, None, &with(&[("SNAPRING_RUN_ID", "r")])),
            Ok(None)
        );
        // Blank variables are not set.
        assert_eq!(
            detect(
                None,
                None,
                None,
                &with(&[("SNAPRING_SHARDS", " "), ("SNAPRING_RUN_ID", "")])
            ),
            Ok(None)
        );
    }
}

/// What a worker's threads wake each other with: a thread that waits (for a commit, or
/// to renew a lease a few times a second) sleeps on it and wakes as soon as another
/// [`ring`](Bell::ring)s (a commit, the end of the work it watched), not at the end of
/// its sleep: at the end of a run, each sleep that ran out was 20-25 ms more before
/// finalize.
#[derive(Default)]
pub(crate) struct Bell {
    rung: std::sync::Mutex<u64>,
    cv: std::sync::Condvar,
}

impl Bell {
    /// Wakes every thread waiting on the bell.
    pub fn ring(&self) {
        *self.rung.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_all();
    }

    /// How many times it has rung so far (what [`wait`](Bell::wait) compares with).
    pub fn rings(&self) -> u64 {
        *self.rung.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps up to `d`, or until the bell rings past `seen` rings (at once if it has);
    /// whether it had.
    pub fn wait(&self, seen: u64, d: std::time::Duration) -> bool {
        let g = self.rung.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, d, |n| *n == seen)
            .unwrap_or_else(|e| e.into_inner());
        *g != seen
    }
}
