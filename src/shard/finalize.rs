//! Finalize of a shard run, exactly once: under the store's exclusive lock, and only
//! while `finalized` is absent. It completes the move of every committed unit, joins
//! hard-link groups that crossed units (one inode for every name, as a single-node run
//! makes), merges the units' manifest parts into the run's manifest (the spine
//! directories' blocks put together, their entries and metadata taken from the source),
//! moves the tree to `.snapring/staging/<run-id>` and publishes it through the same
//! `Repository::publish` (journal, rotation, retention) as a single-node run; then the
//! run record with every worker's figures, the `expiring` marker that opens the
//! deletion of the expired snapshots to the workers still alive (`expire.rs`), the
//! `finalized` marker, and the finalizer's own part of that deletion. Each step can be
//! repeated after a crash. Does file I/O.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::plan::Cut;
use super::sizes::SpineMounts;
use super::state::{Commit, PlanFile, RunDir, UnitCounts, create_exclusive};
use super::{ShardError, sort_err};
use crate::engine::BackupOptions;
use crate::error::{Ctx, Error, io_error};
use crate::fsx::{self, Kind, Time, XattrTarget, b};
use crate::manifest::{self, Entry};
use crate::relpath::RelPath;
use crate::repo::Repository;
use crate::report::{self, Counters, RunReport, ShardSummary, Status, WorkerKpi};
use crate::store::Store;

/// Most threads finalize's round trips run on.
const FINALIZE_THREADS: usize = 64;
/// Finalize keeps the parts' blocks its first pass read for its second while they hold
/// at most this many entries in all (some hundred bytes each: tens of MiB); the parts
/// beyond are read again, at most `threads` at a time. `SNAPRING_FINALIZE_KEPT_ENTRIES`
/// says otherwise (the tests: 0 reads every part again).
const KEPT_ENTRIES: usize = 1 << 18;

fn kept_entries() -> usize {
    std::env::var("SNAPRING_FINALIZE_KEPT_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KEPT_ENTRIES)
}

/// What finalize found.
pub enum Finalized {
    /// Published now: the run's report.
    Done(Box<RunReport>),
    /// Published before (its report, if readable).
    Already(Option<Box<RunReport>>),
    /// Another process holds the store (who).
    Busy(String),
    /// Units not committed yet (how many).
    NotReady(usize),
}

/// Finalizes run `rd` of `store`, waiting up to `wait` for the store's lock: worker
/// `worker`, or `snapring finalize` (none). `allow_empty`: that process's
/// `--allow-empty` (with the plan's, it lets a run that keeps no file publish:
/// [`refuse_no_files`]).
pub fn finalize(
    store: &Store,
    rd: &RunDir,
    worker: Option<usize>,
    (jobs, allow_empty): (usize, bool),
    cancel: &AtomicBool,
    wait: Duration,
) -> Result<Finalized, ShardError> {
    if rd.is_finalized() {
        if worker.is_none() {
            if super::expire::read_marker(rd).is_some() && !super::expire::is_finished(rd) {
                return resume_expiry(store, rd, jobs, cancel);
            }
            // Its finalizer may have died before its clean-up: done here, under the
            // store's lock (which that finalizer held to its end), if it is free.
            if let Ok(lock) = store.lock_and_repair_as(&rd.run, holder_command(worker)) {
                if let Ok(Some((plan, _))) = rd.read_plan() {
                    tidy(store, rd, plan.workers);
                }
                Repository::unlock(store, lock);
            }
        }
        return Ok(Finalized::Already(read_finalized(rd)));
    }
    let t0 = Instant::now();
    let lock = loop {
        match store.lock_and_repair_as(&rd.run, holder_command(worker)) {
            Ok(l) => break l,
            Err(Error::Locked { holder, .. }) => {
                if t0.elapsed() >= wait || rd.is_finalized() {
                    if rd.is_finalized() {
                        return Ok(Finalized::Already(read_finalized(rd)));
                    }
                    return Ok(Finalized::Busy(holder));
                }
                // The other workers let go of the store within tens of milliseconds
                // of the last commit: one try (a lock request) every 5 ms for the
                // first tenth of a second, then every 25 ms.
                let poll = if t0.elapsed() < Duration::from_millis(100) {
                    5
                } else {
                    25
                };
                std::thread::sleep(Duration::from_millis(poll));
            }
            Err(e) => return Err(sort_err(e)),
        }
    };
    tracing::info!(
        "finalize: the store is locked after waiting {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    let r = locked(store, rd, worker, (jobs, allow_empty), cancel);
    Repository::unlock(store, lock);
    r
}

/// What the store's lock names its holder: a worker's finalize runs in its `backup`,
/// `snapring finalize` (no `worker`) is a `finalize`.
fn holder_command(worker: Option<usize>) -> &'static str {
    match worker {
        Some(_) => "backup",
        None => "finalize",
    }
}

/// The store's lock holder `holder` (as [`Finalized::Busy`] names it) is a `snapring
/// finalize` of run `run`: that one publishes the run, nothing is wrong.
pub fn held_by_finalize_of(holder: &str, run: &str) -> bool {
    holder.starts_with("snapring finalize (") && holder.ends_with(&format!(", run {run})"))
}

/// `snapring finalize` (no `worker`) stopped by SIGINT/SIGTERM: before the run's tree is
/// built, and once it is built but not yet staged, it gives up (`Stopped`, exit 3) with
/// nothing published: the tree, the commits and the journal are left as a finalize
/// killed there leaves them, and the next finalize publishes the run. A worker's
/// finalize is not stopped here: its `cancel` is also the end of its `--window`, which
/// cuts only the deletion of expired snapshots (docs/scale-out.md).
fn stop_point(worker: Option<usize>, cancel: &AtomicBool) -> Result<(), ShardError> {
    if worker.is_none() && cancel.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ShardError::Stopped);
    }
    Ok(())
}

fn read_finalized(rd: &RunDir) -> Option<Box<RunReport>> {
    let bytes = std::fs::read(rd.finalized_path()).ok()?;
    serde_json::from_slice(&bytes).ok().map(Box::new)
}

/// When run `rd` was finalized: its report's end, else the `finalized` marker's mtime,
/// else "an unknown time".
pub(super) fn finalized_at(rd: &RunDir) -> String {
    if let Some(t) = read_finalized(rd).and_then(|r| r.finished_at) {
        return t;
    }
    std::fs::metadata(rd.finalized_path())
        .and_then(|m| m.modified())
        .map(|t| {
            chrono::DateTime::<chrono::Utc>::from(t)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
        .unwrap_or_else(|_| "an unknown time".into())
}

/// The refusal of run `rd`, planned as `plan` and overtaken by snapshot `now` of its
/// label (`abandoned::overtaken_by`): its copies are removed (`abandoned::refuse`).
fn refuse_overtaken(
    store: &Store,
    rd: &RunDir,
    plan: &PlanFile,
    now: &crate::store::SnapRec,
    threads: usize,
    cancel: &AtomicBool,
) -> ShardError {
    let head = format!("{}.0", plan.label);
    let refused = Error::Store {
        path: store.root.join(&head),
        msg: format!(
            "run {} was planned against {}, but {head} is now run {} (published {}): another backup published meanwhile, so the run can never be published; nothing published, start a new run id",
            rd.run,
            super::abandoned::snapshot_named(plan.prev.as_deref(), plan.prev_run.as_deref()),
            now.id,
            now.finished_at,
        ),
    };
    super::abandoned::refuse(store, rd, Some((plan, now)), refused, threads, cancel)
}

fn locked(
    store: &Store,
    rd: &RunDir,
    worker: Option<usize>,
    (jobs, allow_empty): (usize, bool),
    cancel: &AtomicBool,
) -> Result<Finalized, ShardError> {
    if rd.is_finalized() {
        return Ok(Finalized::Already(read_finalized(rd)));
    }
    // A `finalized` that does not read (damaged: it is created whole) is no proof of a
    // publish: removed, and the run finalized as one that was not, which completes a
    // run published by a finalize that died before its marker (the state or the run's
    // record name it) and publishes one that was not published.
    if let Some(len) = rd.finalized_damaged() {
        tracing::warn!(
            "{} does not read ({len} bytes: damaged); not taken as finalized: finalizing the run",
            rd.finalized_path().display()
        );
        std::fs::remove_file(rd.finalized_path()).ctx("remove", rd.finalized_path())?;
    }
    // Abandoned by a publish of its label: what a removal cut short is completed.
    if let Some(mark) = super::abandoned::read(rd) {
        let threads = jobs.clamp(1, FINALIZE_THREADS);
        let refused = mark.refusal(rd);
        return Err(super::abandoned::refuse(
            store, rd, None, refused, threads, cancel,
        ));
    }
    let t_fin = Instant::now();
    let fin_start = report::now_rfc3339();
    let Some((plan, hash)) = rd.read_plan()? else {
        return Err(ShardError::Failed(Error::Store {
            path: rd.root.clone(),
            msg: format!("no shard run {} here (no worker has started it)", rd.run),
        }));
    };
    let cut = plan.cut().map_err(|m| {
        ShardError::Failed(Error::Store {
            path: rd.plan_path(),
            msg: m,
        })
    })?;
    // Finalize runs once every unit is built: the other workers only wait for it, so
    // its reads and writes (a round trip each on NFS) take the whole run's `--jobs`.
    let threads = (jobs.max(1) * plan.workers.max(1)).min(FINALIZE_THREADS);
    let commits = rd.commits(threads)?;
    let missing = cut
        .units
        .iter()
        .filter(|u| !commits.contains_key(&u.id))
        .count();
    if missing > 0 {
        // Overtaken by another publish of its label, the run can never be published,
        // committed or not: refused and abandoned now, as once all its units are in
        // (its workers refuse to build the rest, so asking for their reruns would leave
        // it unfinished for good).
        let state = store.read_state()?;
        if !super::abandoned::published(store, &state, &rd.run)
            && let Some(now) = super::abandoned::overtaken_by(&state, &plan)
        {
            return Err(refuse_overtaken(store, rd, &plan, now, threads, cancel));
        }
        // A worker refused as its settings differ from the plan's (a retry with another
        // worker count, say): the run is refused once its units are in, so asking for
        // reruns (exit 75) would have a Job retry it for ever.
        let refused = rd.refused()?;
        if !refused.is_empty() {
            return Err(super::state::refusal(&rd.run, &refused));
        }
        // A plan made from an empty source (an unmounted node's): no worker builds it.
        let prev_has_entries =
            super::state::snapshot_has_entries(&store.root, plan.prev.as_deref());
        if let Some(msg) = super::state::unbuildable(&plan, prev_has_entries) {
            return Err(ShardError::Failed(Error::Store {
                path: rd.plan_path(),
                msg,
            }));
        }
        return Ok(Finalized::NotReady(missing));
    }
    if let Some((u, _)) = commits.iter().find(|(_, c)| c.plan != hash) {
        return Err(ShardError::Failed(Error::Store {
            path: rd.done_path(u),
            msg: "unit committed for another plan than plan.json".into(),
        }));
    }
    let mut opts = BackupOptions::new(plan.source.clone(), store.root.clone());
    opts.label = plan.label.clone();
    opts.retain = plan.retain;
    opts.one_file_system = plan.one_file_system;
    let abs = std::fs::canonicalize(&store.root).unwrap_or_else(|_| store.root.clone());
    let mut rep = crate::engine::backup::new_report(&opts, &rd.run, &abs);
    rep.exclusion = plan.exclusion.clone();
    rep.warnings.extend(plan.warnings.iter().cloned());
    rep.started_at = plan.created_at.clone();
    rep.based_on = plan.prev_run.clone().or(plan.prev.clone());
    let counters = Counters::default();
    let mut per_worker: BTreeMap<usize, WorkerKpi> = BTreeMap::new();
    // In the commits; a commit written before they moved there has them in a file.
    let counts = super::par_map(threads, &cut.units, |u| match &commits[&u.id].counts {
        Some(n) => Ok(n.clone()),
        None => rd.read_counts(&u.id, commits[&u.id].generation),
    });
    // With `one_file_system`: what each unit recorded of a mount (`UnitCounts::crossed`).
    let mut crossed: Vec<Option<String>> = Vec::new();
    for (u, n) in cut.units.iter().zip(counts) {
        let c = &commits[&u.id];
        let n: UnitCounts = n?;
        add(&counters, &n);
        if plan.one_file_system {
            crossed.push(n.crossed.clone());
        }
        let k = per_worker.entry(c.worker).or_insert_with(|| WorkerKpi {
            index: c.worker,
            ..WorkerKpi::default()
        });
        k.units += 1;
        k.files_total += n.files_total;
        k.files_transferred += n.files_transferred;
        k.bytes_transferred += n.bytes_transferred;
        k.seconds += n.seconds;
    }
    // Decided by what the units recorded, never by a `stat` here: a finalize repeated
    // after a crash, or on a host without the mount, decides the same way.
    let mounts = match plan.one_file_system {
        true => SpineMounts::of(&cut.units, |i| crossed[i].as_deref()).map_err(|m| {
            ShardError::Failed(Error::Store {
                path: rd.root.join("done"),
                msg: m,
            })
        })?,
        false => SpineMounts::default(),
    };
    let points = mounts.sorted();
    if !points.is_empty() {
        counters.mount_points(points.len() as u64, points.iter().map(|d| d.escaped()));
    }
    for d in &mounts.partly {
        counters.problem(SpineMounts::partly_problem(d));
    }
    rep.shards = Some(ShardSummary {
        workers: plan.workers,
        units: cut.units.len(),
        takeovers: commits.values().filter(|c| c.generation > 1).count() as u64,
        per_worker: per_worker.into_values().collect(),
        expired_by_finalize: 0,
    });
    let state = store.read_state()?;
    let before = store.read_run(&rd.run)?;
    // Published by an earlier finalize whose snapshot another backup's retention has
    // expired since: the state no longer names the run, but its record does (the
    // publish's journal settles it with the name before it is removed; finalize writes
    // no name there before its publish, nor does the repair of a run that died).
    let expired_since = before
        .as_ref()
        .filter(|r| matches!(r.status, Status::Complete | Status::Partial))
        .and_then(|r| r.snapshot.clone())
        .filter(|_| !state.snapshots.iter().any(|s| s.id == rd.run));
    let published = expired_since.is_some() || state.snapshots.iter().any(|s| s.id == rd.run);
    let mut cleanup = None;
    let staging = store.meta.join("staging").join(&rd.run);
    if !published {
        // A worker refused as its settings differ from the plan's: the plan may be the
        // wrong one (made by a worker started wrong), so nothing is published.
        let refused = rd.refused()?;
        if !refused.is_empty() {
            return Err(super::state::refusal(&rd.run, &refused));
        }
        // Another backup of this label published since the plan (a single-node run
        // while no worker held the store, say): this run's tree is older than the
        // store's newest snapshot, and publishing it would rotate that one down, or
        // expire it. (A snapshot of another label is no harm.)
        // It never can be now: its copies go (`abandoned.rs`).
        if let Some(now) = super::abandoned::overtaken_by(&state, &plan) {
            return Err(refuse_overtaken(store, rd, &plan, now, threads, cancel));
        }
        if rd.tree().is_dir() || !staging.is_dir() {
            stop_point(worker, cancel)?;
            // Finalize reads the spine directories from the source: not where it is
            // missing (a host where it is not mounted).
            if !plan.source.is_dir() {
                return Err(ShardError::Failed(Error::SourceMissing(
                    plan.source.clone(),
                )));
            }
            super::state::check_source_ino(&plan, &plan.source)?;
            if !rd.tree().is_dir() {
                check_nothing_moved(rd, threads, plan.part_dirs, &cut, &commits, &staging)?;
            }
            super::worker::place_all(rd, threads, &cut, &|u| commits[&u.id].generation)?;
            let t_moved = t_fin.elapsed().as_secs_f64();
            let root_fd = super::worker::make_dirs(&rd.tree(), &RelPath::root())?;
            // The label's previous snapshot, which the guard below compares with, is
            // read while the parts are merged (the store's snapshots do not change under
            // its exclusive lock): two dozen round trips one after the other, off the
            // chain since session 48.
            let guard = !(allow_empty || plan.allow_empty);
            let (assembled, previous) = std::thread::scope(|s| {
                let previous = guard.then(|| s.spawn(|| Repository::previous(store, &plan.label)));
                let a = assemble(
                    store, rd, threads, &plan, &cut, &commits, &mounts, &counters,
                );
                // A panic of the look-up is re-raised, unless `assemble` failed: its
                // error is the one to report then.
                let p = previous.and_then(|h| match h.join() {
                    Ok(p) => Some(p),
                    Err(_) if a.is_err() => None,
                    Err(p) => std::panic::resume_unwind(p),
                });
                (a, p)
            });
            assembled?;
            // Before the tree is staged (a staged tree passed this already): the run's
            // figures as merged, with what `assemble` left out taken off.
            if let Some(previous) = previous {
                refuse_no_files(&plan, previous?, &counters, &mut rep, store)?;
            }
            fsx::sync_fs(b(&root_fd)).ctx("flush", rd.tree())?;
            tracing::info!(
                "finalize: units read and moved in {t_moved:.2}s, manifest merged and spine applied by {:.2}s",
                t_fin.elapsed().as_secs_f64()
            );
            crate::failpoint::hit("shard.finalize.before_staging").ctx("finalize", rd.tree())?;
            stop_point(worker, cancel)?;
            std::fs::rename(rd.tree(), &staging).ctx("move the run's tree to", &staging)?;
        }
        // From here on a finalize (this one, or one after a crash) publishes the staged
        // tree with the manifest as merged: what it was built in (the parts, the units'
        // emptied work directories) is removed while it publishes, not after.
        cleanup = Some(remove_build_dirs_behind(rd, threads));
        let status = if counters_errors(&counters) > 0 {
            Status::Partial
        } else {
            Status::Complete
        };
        counters.fill(&mut rep);
        rep.status = Status::Running;
        let rotation = Repository::plan_rotation(store, &plan.label, plan.retain, &rd.run, status);
        if let Ok(r) = &rotation {
            rep.expired = crate::repo::Rotation::expired(r).to_vec();
            let kept = crate::engine::backup::kept_complete_warning(r, plan.retain);
            rep.warnings.extend(kept);
        }
        // Recorded before the publish, with the snapshots it expires: a finalize after a
        // crash past it reads them here.
        store.write_run(&rep)?;
        let rotation = rotation?;
        crate::failpoint::hit("shard.finalize.before_publish").ctx("publish", &staging)?;
        let ino = fsx::fstat(b(&fsx::open_dir(&staging).ctx("open", &staging)?))
            .ctx("stat", &staging)?
            .ino;
        let t_rot = Instant::now();
        let rot_start = report::now_rfc3339();
        let name = Repository::publish(store, &rd.run, status, &plan.label, rotation, ino)?;
        rep.phases.rotation = report::Phase {
            start: Some(rot_start),
            stop: Some(report::now_rfc3339()),
            seconds: t_rot.elapsed().as_secs_f64(),
        };
        rep.snapshot = Some(name);
        rep.status = status;
        tracing::info!(
            "finalize: published by {:.2}s",
            t_fin.elapsed().as_secs_f64()
        );
    } else {
        // Published by an earlier finalize (or the repair of its journal): the snapshot
        // under the name it has now (another backup may have published since; none if
        // that one's retention expired it), and the snapshots its publish expired, from
        // the record written before it.
        counters.fill(&mut rep);
        rep.status = if counters_errors(&counters) > 0 {
            Status::Partial
        } else {
            Status::Complete
        };
        rep.snapshot = state
            .snapshots
            .iter()
            .find(|s| s.id == rd.run)
            .map(|s| s.name.clone());
        if let Some(before) = before {
            rep.expired = before.expired;
        }
        if let Some(name) = &expired_since {
            tracing::info!(
                "finalize: run {} was published as {name} and has since been expired; nothing published again",
                rd.run
            );
        }
    }
    let _ = crate::failpoint::hit("shard.finalize.after_publish");
    // The label's other runs planned against an older snapshot can never be published
    // now: their copies go to trash, which the expiry below empties.
    rep.warnings
        .extend(super::abandoned::sweep(store, &plan.label, &rd.run));
    let created = chrono::DateTime::parse_from_rfc3339(&plan.created_at)
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|_| chrono::Utc::now());
    rep.phases.walk_copy = report::Phase {
        start: Some(plan.created_at.clone()),
        stop: Some(fin_start),
        seconds: (chrono::Utc::now() - created).num_milliseconds().max(0) as f64 / 1000.0
            - t_fin.elapsed().as_secs_f64(),
    };
    crate::engine::backup::finish_report(&mut rep, Instant::now());
    if let Some(name) = &expired_since {
        rep.message = format!(
            "published as {name}, since expired (another backup's retention, or a deletion); {}",
            rep.message
        );
    }
    rep.duration_seconds = (chrono::Utc::now() - created).num_milliseconds().max(0) as f64 / 1000.0;
    // Nothing to expire: the deletion's phase is empty now, and the record written
    // below is the last one unless the sweep of trash finds leftovers
    // (`expire_and_record`). Before session 48 the record was written again after it
    // whatever it found: a write, a flush and a rename more at the run's very end.
    let idle_expiry = rep.expired.is_empty();
    if idle_expiry {
        let now = report::now_rfc3339();
        rep.phases.remove_expired = report::Phase {
            start: Some(now.clone()),
            stop: Some(now),
            seconds: 0.0,
        };
    }
    // The record, and the `expiring` marker that opens the expiry to the workers still
    // alive, both before `finalized` and at once (neither needs the other: a finalize
    // after a crash between them writes the record again and finds the marker).
    let (recorded, expiring) = std::thread::scope(|s| {
        let marker = s.spawn(|| super::expire::open(store, rd, &rep.expired));
        let recorded = store.write_run(&rep);
        let m = marker
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (recorded, m)
    });
    recorded?;
    if let Err(e) = &expiring {
        tracing::warn!("expiry not shared with the workers ({e}); this process deletes alone");
    }
    let body = serde_json::to_vec_pretty(&rep).expect("report serializes");
    create_exclusive(&rd.finalized_path(), &body).ctx("write", rd.finalized_path())?;
    tracing::info!(
        "shard run {} finalized: {} ({} files, {} copied, {} linked)",
        rd.run,
        rep.snapshot.as_deref().unwrap_or("-"),
        rep.files_total,
        rep.files_transferred,
        rep.files_linked
    );
    // Tests: a finalizer killed before its clean-up.
    let _ = crate::failpoint::hit("shard.finalize.after_finalized");
    // Clean-up; what is left is removed by `snapring finalize` or by hand. The run's
    // log is put together meanwhile (it ends with the `finalized` line above), not
    // after: the three are independent, and each a chain of round trips at the run's
    // very end. An expiry that did anything (rare: a run that expires a snapshot)
    // logged after that merge, so the log is merged again after it.
    let expired = std::thread::scope(|s| {
        let logs = s.spawn(|| merge_logs(store, &rd.run, plan.workers));
        match cleanup {
            Some(h) => {
                let _ = h.join();
            }
            None => remove_build_dirs(rd, threads),
        }
        let expired = expire_and_record(
            store,
            rd,
            &cut,
            (worker, jobs),
            cancel,
            &mut rep,
            idle_expiry,
        );
        logs.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        expired
    });
    if expired {
        merge_logs(store, &rd.run, plan.workers);
    }
    Ok(Finalized::Done(Box::new(rep)))
}

/// The guard of a run that keeps no file (`Error::NoFilesLeft`, as a single-node run's
/// in `engine::backup`) against `previous`, the label's previous snapshot
/// (`Repository::previous`), or far fewer than its previous snapshot (`Error::SourceShrank`,
/// `error::shrank`, against that snapshot's recorded count): the run's merged figures
/// (`counters`) hold no file (or too few) while the previous snapshot of the plan's
/// label holds files (its record's count; without a
/// record, whether it holds anything; another label's, which a new label's first run
/// compares with, does not count). Published, its `--retain` would expire the good
/// history. Refused: nothing is published or expired, the run record says `failed`
/// with the message, and the run stays as it is (its units committed, its tree of
/// directories built): a finalize tried again refuses the same way, one given
/// `--allow-empty` publishes it, and the label's next publish abandons it (its copies,
/// directories only, go to trash).
fn refuse_no_files(
    plan: &PlanFile,
    previous: Option<crate::repo::Previous>,
    counters: &Counters,
    rep: &mut RunReport,
    store: &Store,
) -> Result<(), ShardError> {
    use std::sync::atomic::Ordering::Relaxed;
    let kept = counters.files_total.load(Relaxed);
    let Some(prev) =
        previous.filter(|p| p.label_slots > 0 && p.expected_files.map_or(p.has_entries, |n| n > 0))
    else {
        return Ok(());
    };
    let by = match plan.exclusion.is_empty() {
        true => String::new(),
        false => plan.exclusion.named(),
    };
    let e = match prev.files_of_label(&plan.label) {
        _ if kept == 0 => Error::NoFilesLeft {
            path: plan.source.clone(),
            prev: prev.name,
            by,
            unread: counters.unread_dirs(),
        },
        // A run that keeps files is compared with a recorded count of its label only: a
        // previous snapshot without a record, or of another label, passes.
        Some(prev_files) if crate::error::shrank(prev_files, kept) => Error::SourceShrank {
            path: plan.source.clone(),
            prev: prev.name,
            prev_files,
            kept,
            by,
            unread: counters.unread_dirs(),
        },
        _ => return Ok(()),
    };
    counters.fill(rep);
    rep.status = Status::Failed;
    rep.message = e.to_string();
    rep.finished_at = Some(report::now_rfc3339());
    if let Err(w) = store.write_run(rep) {
        tracing::warn!("the refused run's record was not written: {w}");
    }
    Err(ShardError::Failed(e))
}

/// Removes what the run was built in (moved into the published snapshot by now), on
/// `threads` threads: each subdirectory of `parts/` at once (removing names takes the
/// directory's lock: one directory's names go one at a time).
fn remove_build_dirs(rd: &RunDir, threads: usize) {
    let parts = rd.parts();
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(&parts)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.extend(["work", "tree", "joins"].map(|d| rd.root.join(d)));
    super::par_map(threads, &dirs, |d| {
        let _ = std::fs::remove_dir_all(d);
    });
    let _ = std::fs::remove_dir_all(parts);
}

/// [`remove_build_dirs`] in a thread of its own.
fn remove_build_dirs_behind(rd: &RunDir, threads: usize) -> std::thread::JoinHandle<()> {
    let rd = RunDir {
        root: rd.root.clone(),
        run: rd.run.clone(),
    };
    std::thread::spawn(move || {
        // Tests: a clean-up slower than the rest of finalize.
        let _ = crate::failpoint::hit("shard.finalize.cleanup");
        remove_build_dirs(&rd, threads)
    })
}

/// The clean-up of a finalized run whose finalizer died before its end (it held the
/// store's lock; the caller holds it now): the build directories, and the run's log
/// if it was not written.
fn tidy(store: &Store, rd: &RunDir, workers: usize) {
    remove_build_dirs(rd, FINALIZE_THREADS);
    if !store
        .meta
        .join("logs")
        .join(format!("{}.log", rd.run))
        .exists()
    {
        merge_logs(store, &rd.run, workers);
    }
}

/// The run's log, `logs/<run-id>.log` (where `snapring show` and the catalog look for
/// it): the workers' log files one after the other, each starting with its `shard
/// worker started … worker=I` line. Written as finalize ends (again after an expiry
/// that did anything, and by `snapring finalize` completing one); what the workers
/// log after that (their part of the expiry) is in their own files only.
fn merge_logs(store: &Store, run: &str, workers: usize) {
    let dir = store.meta.join("logs");
    // Read at once (a few round trips each on NFS, at the very end of the run).
    let indexes: Vec<usize> = (0..workers).collect();
    let logs = super::par_map(workers.min(FINALIZE_THREADS), &indexes, |&i| {
        std::fs::read(dir.join(super::worker::worker_log_name(run, i))).unwrap_or_default()
    });
    let all: Vec<u8> = logs.concat();
    if all.is_empty() {
        return;
    }
    let path = dir.join(format!("{run}.log"));
    if let Err(e) = crate::util::write_atomic(&path, &all) {
        tracing::warn!("cannot write the run's log {}: {e}", path.display());
    }
}

/// The finalizer's part of the deletion of the expired snapshots (`expire.rs`), then
/// the run record again, with each worker's part of it. `idle`: the record was written
/// with nothing to expire and an empty phase for it; it is not written again if the
/// deletion found nothing either (no piece, nothing swept from trash). Returns whether
/// it deleted or logged anything (then the record is written again): false only in
/// that idle case.
fn expire_and_record(
    store: &Store,
    rd: &RunDir,
    cut: &Cut,
    (worker, jobs): (Option<usize>, usize),
    cancel: &AtomicBool,
    rep: &mut RunReport,
    idle: bool,
) -> bool {
    let rm_start = report::now_rfc3339();
    let t_rm = Instant::now();
    let (swept, failed) =
        match super::expire::finalize(store, rd, cut, worker, &rep.expired, jobs, cancel) {
            Ok(n) => (n, false),
            Err(e) => {
                tracing::warn!(
                    "expired snapshots not fully deleted yet ({e}); the next run continues"
                );
                (0, true)
            }
        };
    let tally = super::expire::tally(rd);
    if idle && !failed && swept == 0 && tally.state == "none" && tally.done == 0 {
        return false;
    }
    rep.phases.remove_expired = report::Phase {
        start: Some(rm_start),
        stop: Some(report::now_rfc3339()),
        seconds: t_rm.elapsed().as_secs_f64(),
    };
    if let Some(sh) = rep.shards.as_mut() {
        // A worker that only deleted (it built no unit) gets a row too.
        for &i in tally.per_worker.keys() {
            if !sh.per_worker.iter().any(|k| k.index == i) {
                sh.per_worker.push(WorkerKpi {
                    index: i,
                    ..WorkerKpi::default()
                });
            }
        }
        sh.per_worker.sort_by_key(|k| k.index);
        for k in &mut sh.per_worker {
            if let Some(h) = tally.per_worker.get(&k.index) {
                k.expired_pieces = h.pieces;
                k.expired_entries = h.entries;
            }
        }
        sh.expired_by_finalize = swept + tally.by_finalize.entries;
    }
    if tally.state != "none" || swept > 0 {
        tracing::info!(
            "expiry: {} pieces by {} workers, {} entries swept by this process, in {:.2}s",
            tally.done,
            tally.per_worker.len(),
            swept + tally.by_finalize.entries,
            t_rm.elapsed().as_secs_f64()
        );
    }
    if let Err(e) = store.write_run(rep) {
        tracing::warn!("run record not updated with the expiry's figures: {e}");
    }
    true
}

/// `snapring finalize` of a finalized run whose finalizer died while expired snapshots
/// were being deleted: takes over the pieces of dead claimers, deletes what is left in
/// trash, and completes the run record.
fn resume_expiry(
    store: &Store,
    rd: &RunDir,
    jobs: usize,
    cancel: &AtomicBool,
) -> Result<Finalized, ShardError> {
    let lock = match store.lock_and_repair_as(&rd.run, holder_command(None)) {
        Ok(l) => l,
        // The run is finalized whoever holds the store (another finalize completing
        // the same deletion, most likely): a finalize of a finalized run is never
        // refused (exit 0, docs/scale-out.md); what is left of the deletion is the
        // holder's, or the next finalize's or run's.
        Err(Error::Locked { holder, .. }) => {
            tracing::info!(
                "run {} is finalized; the deletion of its expired snapshots is left to {holder} (the store's holder) or the next finalize",
                rd.run
            );
            return Ok(Finalized::Already(read_finalized(rd)));
        }
        Err(e) => return Err(sort_err(e)),
    };
    let r = (|| {
        let Some((plan, _)) = rd.read_plan()? else {
            return Ok(Finalized::Already(read_finalized(rd)));
        };
        let cut = plan.cut().map_err(|m| {
            ShardError::Failed(Error::Store {
                path: rd.plan_path(),
                msg: m,
            })
        })?;
        let Some(mut rep) = store.read_run(&rd.run)? else {
            return Ok(Finalized::Already(read_finalized(rd)));
        };
        tracing::info!(
            "run {} is finalized; completing the deletion of its expired snapshots",
            rd.run
        );
        remove_build_dirs(rd, FINALIZE_THREADS);
        expire_and_record(store, rd, &cut, (None, jobs), cancel, &mut rep, false);
        // Whether or not the dead finalizer merged the log: what it and the workers
        // logged of the expiry after that merge is put in now.
        merge_logs(store, &rd.run, plan.workers);
        Ok(Finalized::Already(Some(Box::new(rep))))
    })();
    Repository::unlock(store, lock);
    r
}

/// Neither the run's tree nor its staged tree is there: no unit was moved yet, so each
/// one with entries still has its work directory. One without it was moved into a tree
/// that is lost since (its staged tree removed): finalize would publish the spine
/// directories alone under a manifest that lists every file.
fn check_nothing_moved(
    rd: &RunDir,
    threads: usize,
    part_dirs: u32,
    cut: &Cut,
    commits: &BTreeMap<String, Commit>,
    staging: &Path,
) -> Result<(), ShardError> {
    let lost = super::par_map(threads, &cut.units, |u| {
        let generation = commits[&u.id].generation;
        if rd.work(&u.id, generation).is_dir() {
            return Ok(false);
        }
        let part = rd.part_path(&u.id, &commits[&u.id], part_dirs);
        if !part.exists() {
            // Removed once the tree was staged: the unit was in it.
            return Ok(true);
        }
        let entries: usize = read_part(&part, false)?.blocks.iter().map(|b| b.n).sum();
        Ok::<_, ShardError>(entries > 0)
    });
    let mut n = 0;
    for l in lost {
        n += usize::from(l?);
    }
    if n > 0 {
        return Err(ShardError::Failed(Error::Store {
            path: staging.to_path_buf(),
            msg: format!(
                "the run's tree is gone: {n} units were moved into it, and neither {} nor its staged tree is there; nothing published, start a new run id",
                rd.tree().display()
            ),
        }));
    }
    Ok(())
}

/// Takes entries `es` of a block left out of the snapshot off the run's figures, as
/// the unit's walk counted them (`engine::walk`: every non-directory in `files_total`,
/// a regular file's size in `bytes_total`, a directory in `dirs_total`).
fn uncount(c: &Counters, es: &[Entry]) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let sub = |a: &AtomicU64, n: u64| {
        let _ = a.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
    };
    for e in es {
        match e.kind {
            Kind::Dir => sub(&c.dirs_total, 1),
            Kind::File => {
                sub(&c.files_total, 1);
                sub(&c.bytes_total, e.size);
            }
            _ => sub(&c.files_total, 1),
        }
    }
}

fn counters_errors(c: &Counters) -> u64 {
    c.problems_total.load(std::sync::atomic::Ordering::Relaxed)
}

fn add(c: &Counters, n: &UnitCounts) {
    Counters::add(&c.files_total, n.files_total);
    Counters::add(&c.dirs_total, n.dirs_total);
    Counters::add(&c.files_transferred, n.files_transferred);
    Counters::add(&c.files_linked, n.files_linked);
    Counters::add(&c.files_resumed, n.files_resumed);
    Counters::add(&c.link_fallbacks, n.link_fallbacks);
    Counters::add(&c.changed_during_backup, n.changed_during_backup);
    Counters::add(&c.bytes_total, n.bytes_total);
    Counters::add(&c.bytes_transferred, n.bytes_transferred);
    Counters::add(&c.problems_total, n.errors);
    for p in &n.problems {
        report::push_listed(&c.problems, p.clone());
    }
    if n.mount_points_skipped > 0 {
        c.mount_points(n.mount_points_skipped, n.mount_points.iter().cloned());
    }
    if n.xattrs_not_kept > 0 {
        let names: Vec<Vec<u8>> = n
            .xattrs_not_kept_names
            .iter()
            .filter_map(|s| crate::relpath::unescape(s).ok())
            .collect();
        c.xattrs_not_kept_n(n.xattrs_not_kept, &names);
    }
}

/// One directory's block of a manifest part: its entry lines as the unit's writer wrote
/// them (sorted by name, each ending in a newline) and how many. The merge copies them
/// into the run's manifest as they are, unless it changes an entry of the block (a
/// joined hard-link group's member) or puts it together with others (a spine
/// directory's pieces). Parsing and formatting every entry again, on one thread, was
/// most of the merge (`large`'s 500,000 entries on the local disk: 0.72 s, now 0.14 s).
struct RawBlock {
    dir: RelPath,
    lines: String,
    n: usize,
    /// Its names in the order the Reader's binary search needs (a part's writer sorts
    /// them; a block out of order is parsed and sorted again, not copied).
    sorted: bool,
    /// The last name read, to tell `sorted`.
    last: Vec<u8>,
}

impl RawBlock {
    /// The block's entries, parsed (`part`: the file it came from, for the message).
    fn entries(&self, part: &Path) -> Result<Vec<Entry>, ShardError> {
        self.lines
            .lines()
            .map(|l| {
                Entry::parse_line(l).map_err(|m| {
                    ShardError::Failed(Error::Store {
                        path: part.to_path_buf(),
                        msg: m,
                    })
                })
            })
            .collect()
    }
}

/// A manifest part as read: the time its walk started, its blocks (a block with no
/// entries included), and, when asked for, the entries of its names of hard-link groups
/// (every line is parsed, to refuse one the run's manifest could not be read by, and
/// kept as text).
struct Part {
    started: Option<Time>,
    blocks: Vec<RawBlock>,
    members: Vec<Member>,
}

/// Reads a manifest part through (see [`Part`]); `members`: parse the names of
/// hard-link groups.
fn read_part(path: &Path, members: bool) -> Result<Part, ShardError> {
    let file = std::fs::File::open(path).ctx("open manifest part", path)?;
    let bad = |m: String| {
        ShardError::Failed(Error::Store {
            path: path.to_path_buf(),
            msg: m,
        })
    };
    let mut part = Part {
        started: None,
        blocks: Vec::new(),
        members: Vec::new(),
    };
    // A part ends with its root line (`Writer::finish`): one without it lost its end.
    let mut ended = false;
    let mut r = std::io::BufReader::with_capacity(256 * 1024, file);
    let mut line = String::new();
    let mut n = 0u64;
    loop {
        line.clear();
        if r.read_line(&mut line).ctx("read manifest part", path)? == 0 {
            break;
        }
        n += 1;
        if n == 1 {
            continue;
        }
        if ended {
            return Err(bad("manifest part goes on after its root line".into()));
        }
        if !line.ends_with('\n') {
            // Only a root line may end the file without a newline; anything else lost
            // its end.
            line.push('\n');
        }
        let l = &line[..line.len() - 1];
        if let Some(s) = l.strip_prefix("S ") {
            part.started = s.parse::<Time>().ok();
        } else if let Some(d) = l.strip_prefix("D ") {
            part.blocks.push(RawBlock {
                dir: RelPath::from_escaped(d).map_err(bad)?,
                lines: String::new(),
                n: 0,
                sorted: true,
                last: Vec::new(),
            });
        } else if l.starts_with("R ") {
            ended = true;
        } else if let Some(block) = part.blocks.last_mut() {
            // Every line parsed (on the units' threads), though most are copied as
            // text: a line the run's manifest could not be read back by (a bad hash,
            // mode, time or escape) refuses the finalize, as it did when each entry
            // was parsed and written again, and is never published.
            let e = Entry::parse_line(l).map_err(bad)?;
            if block.n > 0 && e.name <= block.last {
                block.sorted = false;
            }
            block.last.clone_from(&e.name);
            if members && e.group.is_some() {
                part.members.push(Member {
                    dir: block.dir.clone(),
                    entry: e,
                });
            }
            block.lines.push_str(&line);
            block.n += 1;
        }
    }
    if !ended {
        return Err(bad(
            "manifest part is truncated (no root line at its end); the unit must be built again: start a new run id".into(),
        ));
    }
    Ok(part)
}

/// One name of a hard-link group: its directory, its entry, its unit.
struct Member {
    dir: RelPath,
    entry: Entry,
}

/// What the names of one source inode share: its number (the manifest's `group`) and
/// the inode's own metadata, change time included. The manifest keeps no device
/// number, so on a source spanning several file systems two inodes with the same
/// number would otherwise be joined (the single-node walk keys by device and inode);
/// with the times and size as well they are not. Names of one inode read before and
/// after a change to it (a new link or write between two units' reads) are two groups,
/// each joined within itself.
type GroupKey = (u64, Time, Time, u64, u32, u32, u32);

fn group_key(e: &Entry) -> Option<GroupKey> {
    Some((e.group?, e.ctime, e.mtime, e.size, e.perm, e.uid, e.gid))
}

/// The hard-link groups with more than one name, each sorted by path (the first name
/// first).
fn link_groups(members: Vec<Member>) -> Vec<Vec<Member>> {
    // Counted first: most members are alone in the run (a file whose other names are
    // outside the source, in another backup tree, say), and a group's own vector for
    // each of those (room for four members) was the finalizer's peak: 454 MB at 300k
    // such files against 75 MB without the outside links.
    let mut counts: HashMap<GroupKey, u32> = HashMap::new();
    for k in members.iter().filter_map(|m| group_key(&m.entry)) {
        *counts.entry(k).or_default() += 1;
    }
    let mut groups: HashMap<GroupKey, Vec<Member>> = HashMap::new();
    for m in members {
        if let Some(k) = group_key(&m.entry)
            && counts.get(&k).is_some_and(|&n| n > 1)
        {
            groups.entry(k).or_default().push(m);
        }
    }
    groups
        .into_values()
        .filter(|ms| ms.len() > 1)
        .map(|mut ms| {
            ms.sort_by(|a, b| (&a.dir, &a.entry.name).cmp(&(&b.dir, &b.entry.name)));
            ms
        })
        .collect()
}

/// Joins the names of one hard-link group (sorted, the first name first) to the first
/// name's inode: the entries it changed, by directory. The directories' times are the
/// caller's to put back: `times_kept` is called before the first join (it keeps them).
fn join_group(
    rd: &RunDir,
    tree: std::os::fd::BorrowedFd<'_>,
    joins: &JoinDirs,
    slot: usize,
    ms: &[Member],
    counters: &Counters,
    times_kept: &(dyn Fn() -> Result<(), ShardError> + Sync),
) -> Result<Vec<(RelPath, Entry)>, ShardError> {
    let mut out = Vec::new();
    let first = &ms[0];
    let Ok(first_dir) = fsx::open_dir_beneath(tree, first.dir.as_bytes()) else {
        return Ok(out);
    };
    let Ok(first_meta) = fsx::lstat_at(b(&first_dir), &first.entry.name) else {
        return Ok(out);
    };
    for (i, m) in ms.iter().enumerate().skip(1) {
        let Ok(d) = fsx::open_dir_beneath(tree, m.dir.as_bytes()) else {
            continue;
        };
        let Ok(meta) = fsx::lstat_at(b(&d), &m.entry.name) else {
            continue;
        };
        if meta.ino == first_meta.ino {
            continue;
        }
        // The directories' times as the units left them, kept before the first join.
        times_kept()?;
        // A copy of its own (one link): a single-node run would have linked it to the
        // first name instead, and counted it so.
        let was_copy = meta.nlink == 1 && meta.kind == Kind::File;
        // Linked under a name of the run's own `joins/` directory, then renamed over the
        // member: a temporary name in the tree could be a name of the source's.
        let tmp = format!("{slot}.{i}").into_bytes();
        let joins = joins.for_slot(slot)?;
        let _ = fsx::unlink_at(joins, &tmp);
        match fsx::link_at(b(&first_dir), &first.entry.name, joins, &tmp) {
            Ok(()) => {
                fsx::rename_at(joins, &tmp, b(&d), &m.entry.name)
                    .ctx("join a hard-link group in", rd.tree().join(m.dir.as_path()))?;
                // Tests: a finalize killed between the joins.
                crate::failpoint::hit("shard.finalize.join")
                    .ctx("join a hard-link group in", rd.tree().join(m.dir.as_path()))?;
                if was_copy {
                    use std::sync::atomic::Ordering::Relaxed;
                    counters.files_transferred.fetch_sub(1, Relaxed);
                    // Joins run at once on the pool: never below zero, whatever the order.
                    let _ = counters
                        .bytes_transferred
                        .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(meta.size)));
                    Counters::add(&counters.files_linked, 1);
                }
                let mut e = first.entry.clone();
                e.name = m.entry.name.clone();
                out.push((m.dir.clone(), e));
            }
            Err(e) if fsx::errno_is(&e, Errno::MLINK) || fsx::errno_is(&e, Errno::XDEV) => {
                Counters::add(&counters.link_fallbacks, 1);
            }
            Err(e) => {
                return Err(io_error(
                    e,
                    "join a hard-link group in",
                    rd.tree().join(m.dir.as_path()),
                )
                .into());
            }
        }
    }
    Ok(out)
}

/// The run's `joins/` directory, where each join links its temporary name, spread over
/// subdirectories `joins/0` … (one per thread at most, made when first used): a link,
/// an unlink or a rename holds its directory's lock in the kernel for its round trips
/// (on NFS, two or three each), so with one directory the joins went one at a time
/// (100 groups of a full run of `medium`: 0.82 s at 1 ms latency).
struct JoinDirs {
    path: std::path::PathBuf,
    dirs: Vec<std::sync::OnceLock<OwnedFd>>,
}

impl JoinDirs {
    fn new(path: std::path::PathBuf, buckets: usize) -> JoinDirs {
        JoinDirs {
            path,
            dirs: (0..buckets.max(1))
                .map(|_| std::sync::OnceLock::new())
                .collect(),
        }
    }

    /// The directory group `slot` links its temporary names in, made if need be.
    fn for_slot(&self, slot: usize) -> Result<std::os::fd::BorrowedFd<'_>, ShardError> {
        let k = slot % self.dirs.len();
        if let Some(fd) = self.dirs[k].get() {
            return Ok(b(fd));
        }
        let path = self.path.join(k.to_string());
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(e, "create", &path).into()),
        }
        let fd = fsx::open_dir(&path).ctx("open", &path)?;
        // Two threads at once: one keeps its descriptor, the other's is closed.
        Ok(b(self.dirs[k].get_or_init(|| fd)))
    }
}

/// The modification times of the directories `dirs` of the run's tree as its units set
/// them, before any hard-link join renames a name in them: read from the tree by the
/// first finalize and kept in `joins/times`, written before its first join, so that a
/// finalize after one killed between its joins puts back those times, not the ones
/// its joins left.
fn join_times(
    joins: &Path,
    threads: usize,
    tree: std::os::fd::BorrowedFd<'_>,
    dirs: &[RelPath],
) -> Result<HashMap<RelPath, Time>, ShardError> {
    let path = joins.join("times");
    let bad = |m: String| {
        ShardError::Failed(Error::Store {
            path: path.clone(),
            msg: m,
        })
    };
    let parse = |text: &str| -> Result<HashMap<RelPath, Time>, ShardError> {
        text.lines()
            .map(|l| {
                let (t, d) = l
                    .split_once(' ')
                    .ok_or_else(|| bad(format!("bad line {l:?}")))?;
                Ok((
                    RelPath::from_escaped(d).map_err(bad)?,
                    t.parse::<Time>().map_err(bad)?,
                ))
            })
            .collect()
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => return parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(e, "read", &path).into()),
    }
    let read: HashMap<RelPath, Time> = super::par_map(threads, dirs, |d| {
        let fd = fsx::open_dir_beneath(tree, d.as_bytes()).ok()?;
        Some((d.clone(), fsx::fstat(b(&fd)).ok()?.mtime))
    })
    .into_iter()
    .flatten()
    .collect();
    let mut text = String::new();
    for (d, t) in &read {
        text.push_str(&format!("{t} {}\n", d.escaped()));
    }
    if !create_exclusive(&path, text.as_bytes()).ctx("write", &path)? {
        return Err(bad("written by another finalize at once".into()));
    }
    Ok(read)
}

/// What the source says of one spine directory (`None`: not there, or not a directory): its metadata, its
/// extended attributes, and the entries of its children that are spine directories.
type SpineRead = Option<(fsx::Meta, fsx::Xattrs, Vec<Entry>)>;

/// Reads each of the spine directories `order` from the source, on `threads` threads.
/// A spine directory's entries for its spine children come from those children's own
/// reads (their `fstat`), not from an `lstat` of each again: one that failed once (a
/// GETATTR error on NFS) while the child's own open had worked left the child out of
/// its parent's block, a manifest with a block for a directory no entry names.
///
/// One that is there but cannot be opened (permission denied, an I/O error, a stale
/// handle) gets its metadata and extended attributes from the previous snapshot
/// `prev`, as its units kept their names' entries from it (`worker::keep_unreadable`),
/// with an `unreadable` problem; without a previous version finalize fails: leaving it
/// out would throw away what its units backed up.
fn read_spine(
    source: &Path,
    cut: &Cut,
    threads: usize,
    order: &[&RelPath],
    prev: Option<&PrevSpine>,
    counters: &Counters,
) -> Result<Vec<SpineRead>, ShardError> {
    let own = super::par_map(threads, order, |d| {
        let src = source.join(d.as_path());
        let sfd = match fsx::open_dir(&src) {
            Ok(fd) => fd,
            // Gone, or no directory now: what the snapshot leaves out (`gone_spine`).
            Err(e) if fsx::errno_is(&e, Errno::NOENT) || fsx::errno_is(&e, Errno::NOTDIR) => {
                return Ok(None);
            }
            Err(e) => {
                let Some((meta, xattrs)) = prev.and_then(|p| p.of(d)) else {
                    return Err(io_error(e, "open", &src).into());
                };
                let from = prev.map(|p| p.from.as_str()).unwrap_or_default();
                tracing::warn!(
                    "{d}: open directory: {e}; its metadata of the previous snapshot (from {from}) kept"
                );
                counters.problem(report::Problem {
                    path: d.escaped(),
                    kind: report::ProblemKind::Unreadable,
                    action: "open directory".into(),
                    error: format!(
                        "{e}; its metadata of the previous snapshot (from {from}) was kept"
                    ),
                });
                return Ok(Some((meta, xattrs)));
            }
        };
        let meta = fsx::fstat(b(&sfd)).ctx("stat", &src)?;
        let xattrs = fsx::read_xattrs(&XattrTarget::Fd(b(&sfd))).unwrap_or_default();
        Ok(Some((meta, xattrs)))
    })
    .into_iter()
    .collect::<Result<Vec<_>, ShardError>>()?;
    let metas: HashMap<&RelPath, &fsx::Meta> = order
        .iter()
        .zip(&own)
        .filter_map(|(d, r)| Some((*d, &r.as_ref()?.0)))
        .collect();
    let kids: Vec<Vec<Entry>> = order
        .iter()
        .map(|d| {
            cut.spine_children(d)
                .into_iter()
                .filter_map(|kid| {
                    let m = metas.get(&d.join(&kid))?;
                    (m.kind == Kind::Dir).then(|| Entry::from_meta(&kid, m))
                })
                .collect()
        })
        .collect();
    Ok(own
        .into_iter()
        .zip(kids)
        .map(|(r, kids)| r.map(|(meta, xattrs)| (meta, xattrs, kids)))
        .collect())
}

/// The previous snapshot of a run's plan, for the spine directories finalize cannot
/// open ([`read_spine`]).
struct PrevSpine {
    manifest: manifest::Reader,
    /// The snapshot's directory in the store.
    root: std::path::PathBuf,
    /// Its run, for the messages.
    from: String,
    /// The source's device (what a kept directory's metadata says: it is no mount).
    dev: u64,
}

impl PrevSpine {
    /// The plan's previous snapshot (`None`: none, or without a manifest).
    fn of_plan(store: &Store, plan: &PlanFile) -> Option<PrevSpine> {
        let (name, run) = (plan.prev.as_ref()?, plan.prev_run.as_ref()?);
        let manifest = manifest::Reader::open(&store.meta.join("manifests"), run).ok()?;
        use std::os::unix::fs::MetadataExt;
        Some(PrevSpine {
            manifest,
            root: store.root.join(name),
            from: run.clone(),
            dev: std::fs::metadata(&plan.source).map_or(0, |m| m.dev()),
        })
    }

    /// Spine directory `d`'s metadata and extended attributes in the previous
    /// snapshot: its manifest entry, and the attributes its copy there holds.
    fn of(&self, d: &RelPath) -> Option<(fsx::Meta, fsx::Xattrs)> {
        let entry = if d.is_root() {
            self.manifest.root().ok()?
        } else {
            let block = self.manifest.lookup(&d.parent()).ok()??;
            manifest::find(&block, d.file_name())?.clone()
        };
        if entry.kind != Kind::Dir {
            return None;
        }
        let at = self.root.join(d.as_path());
        let fd = fsx::open_dir(&at).ok()?;
        let xattrs = fsx::read_xattrs(&XattrTarget::Fd(b(&fd))).unwrap_or_default();
        let mut meta = crate::engine::walk::meta_of(&entry);
        meta.dev = self.dev;
        Some((meta, xattrs))
    }
}

/// The run's manifest from the parts, the spine's entries and metadata, and hard-link
/// groups joined across units; with `one_file_system`, the spine's mount points as
/// `mounts` (what the units recorded) says.
#[allow(clippy::too_many_arguments)]
fn assemble(
    store: &Store,
    rd: &RunDir,
    threads: usize,
    plan: &PlanFile,
    cut: &Cut,
    commits: &BTreeMap<String, Commit>,
    mounts: &SpineMounts,
    counters: &Counters,
) -> Result<(), ShardError> {
    let source = plan.source.as_path();
    let part = |u: &str| rd.part_path(u, &commits[u], plan.part_dirs);
    // The spine directories deepest first, and their metadata and spine children read
    // from the source (used below, once the parts are merged) while pass 1 reads the
    // parts: one does not wait for the other's round trips.
    let mut order: Vec<&RelPath> = cut.spine.iter().collect();
    order.sort_by_key(|r| std::cmp::Reverse(r.components().count()));
    let prev = PrevSpine::of_plan(store, plan);
    let (firsts, read) = std::thread::scope(|s| {
        let spine_read =
            s.spawn(|| read_spine(source, cut, threads, &order, prev.as_ref(), counters));
        // Pass 1: the groups (source inodes with several names) and the earliest
        // start, the parts read at once; their blocks kept for pass 2 within
        // `KEPT_ENTRIES`.
        let budget = std::sync::atomic::AtomicUsize::new(kept_entries());
        let firsts = super::par_map(threads, &cut.units, |u| {
            let p = read_part(&part(&u.id), true)?;
            let entries: usize = p.blocks.iter().map(|b| b.n).sum();
            use std::sync::atomic::Ordering::Relaxed;
            let keep = budget
                .fetch_update(Relaxed, Relaxed, |b| {
                    b.checked_sub(entries).filter(|_| b > 0)
                })
                .is_ok();
            Ok::<_, ShardError>((p.members, p.started, keep.then_some(p.blocks)))
        });
        let read = spine_read
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (firsts, read)
    });
    let mut members: Vec<Member> = Vec::new();
    let mut started: Option<Time> = None;
    let mut kept: Vec<Option<Vec<RawBlock>>> = Vec::new();
    for r in firsts {
        let (ms, s, blocks) = r?;
        members.extend(ms);
        kept.push(blocks);
        started = match (started, s) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let kept_parts = kept.iter().filter(|k| k.is_some()).count();
    // The spine: each directory's entries for its spine children and its own metadata,
    // from the source (read during pass 1: the units did not carry them).
    let read = read?;
    // A spine directory gone from the source whose directory in the run's tree holds
    // entries was there when its units walked it: deleted since (left out below, as a
    // single-node run drops what vanished), or the source is not mounted where
    // finalize runs: its root is gone or empty (an empty mount point). Then nothing of
    // the run's tree is removed for it.
    let unmounted = || std::fs::read_dir(source).map_or(true, |mut it| it.next().is_none());
    for (d, r) in order.iter().zip(&read) {
        if r.is_some() {
            continue;
        }
        let held =
            std::fs::read_dir(rd.tree().join(d.as_path())).is_ok_and(|mut it| it.next().is_some());
        if d.is_root() || (held && unmounted()) {
            return Err(ShardError::Failed(Error::Store {
                path: source.join(d.as_path()),
                msg: "the source's directory is not there, but the run's units backed up entries under it (is the source mounted here?); nothing published: run `snapring finalize` where the source is, or start a new run id".into(),
            }));
        }
    }
    if plan.one_file_system {
        empty_mount_points(rd, source, &order, &read, mounts)?;
    }
    let gone = gone_spine(rd, source, &order, &read, mounts, counters)?;
    if !gone.is_empty() {
        members.retain(|m| !m.dir.at_or_below_any(&gone));
    }
    let t_join = Instant::now();
    let tree = fsx::open_dir(&rd.tree()).ctx("open", rd.tree())?;
    let groups = link_groups(members);
    // The joins run on the pool, so two may swap names in one directory at once: the
    // times its unit set are read for every such directory first and put back once
    // every join is done.
    let dirs: Vec<RelPath> = groups
        .iter()
        .flat_map(|ms| ms[1..].iter().map(|m| m.dir.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let joins_path = rd.root.join("joins");
    match std::fs::create_dir(&joins_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error(e, "create", &joins_path).into()),
    }
    // The directories' times are read (and `joins/times` written) before the first join,
    // by the first group that needs one; the others wait for it. An earlier finalize of
    // the run that got as far wrote the file: it is read now, and its times put back
    // whatever this call joins. When neither this call nor an earlier one joins a name
    // (a run whose groups its units left joined, as an unchanged incremental's are:
    // linked from the previous snapshot, where they are one inode), no directory's times
    // are read, written or put back.
    let times_path = joins_path.join("times");
    let dir_times: std::sync::Mutex<Option<HashMap<RelPath, Time>>> =
        std::sync::Mutex::new(match std::fs::symlink_metadata(&times_path) {
            Ok(_) => Some(join_times(&joins_path, threads, b(&tree), &dirs)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error(e, "stat", &times_path).into()),
        });
    let times_kept = || -> Result<(), ShardError> {
        let mut t = dir_times.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_none() {
            *t = Some(join_times(&joins_path, threads, b(&tree), &dirs)?);
        }
        Ok(())
    };
    let joins = JoinDirs::new(joins_path.clone(), threads.min(groups.len()));
    let slots: Vec<(usize, &Vec<Member>)> = groups.iter().enumerate().collect();
    let joined = super::par_map(threads, &slots, |(slot, ms)| {
        join_group(rd, b(&tree), &joins, *slot, ms, counters, &times_kept)
    });
    let dir_times = dir_times
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or_default();
    // Every name of a group becomes the first name's inode (as a single-node run's
    // `link_within` makes it); the manifest entries follow the first.
    let mut patched: HashMap<(RelPath, Vec<u8>), Entry> = HashMap::new();
    for r in joined {
        for (dir, e) in r? {
            patched.insert((dir, e.name.clone()), e);
        }
    }
    // Every such directory, not only those this call swapped names in: a finalize
    // killed between its joins swapped names in others.
    for r in super::par_map(threads, &dirs, |d| {
        let Some(&mtime) = dir_times.get(d) else {
            return Ok(());
        };
        let fd = fsx::open_dir_beneath(b(&tree), d.as_bytes())
            .ctx("open", rd.tree().join(d.as_path()))?;
        let mut m = fsx::fstat(b(&fd)).ctx("stat", rd.tree().join(d.as_path()))?;
        m.mtime = mtime;
        fsx::apply_times(b(&fd), &m).ctx("set directory times", rd.tree().join(d.as_path()))
    }) {
        r?;
    }
    let t_groups = t_join.elapsed();
    let patched_dirs: HashSet<&RelPath> = patched.keys().map(|(d, _)| d).collect();
    let patch = |dir: &RelPath, es: &mut [Entry]| {
        if !patched_dirs.contains(dir) {
            return;
        }
        for e in es.iter_mut() {
            if let Some(p) = patched.get(&(dir.clone(), e.name.clone())) {
                *e = p.clone();
            }
        }
    };
    let mut present: Vec<(&RelPath, fsx::Meta, fsx::Xattrs)> = Vec::new();
    let mut spine_kids: Vec<(&RelPath, Vec<Entry>)> = Vec::new();
    let mut root_entry = None;
    for (d, r) in order.iter().zip(read) {
        if mounts.below(d) || d.at_or_below_any(&gone) {
            // Inside a mount point: not in the snapshot (`spine_mounts` emptied it).
            // Gone from the source: `gone_spine` removed its tree.
            continue;
        }
        let r = match r {
            Some((meta, xattrs, _)) if !mounts.points.is_empty() && mounts.points.contains(*d) => {
                Some((meta, xattrs, Vec::new()))
            }
            r => r,
        };
        let Some((meta, xattrs, mut kids)) = r else {
            continue;
        };
        if !gone.is_empty() {
            // One back in the source since an earlier finalize left it out.
            kids.retain(|k| !d.join(&k.name).at_or_below_any(&gone));
        }
        Counters::add(&counters.dirs_total, kids.len() as u64);
        spine_kids.push((d, kids));
        if d.is_root() {
            let mut e = Entry::from_meta(b".", &meta);
            e.group = None;
            root_entry = Some(e);
        }
        present.push((d, meta, xattrs));
    }
    let Some(root) = root_entry else {
        return Err(ShardError::Failed(Error::SourceMissing(
            source.to_path_buf(),
        )));
    };
    // Pass 2: the blocks; a spine directory's pieces are put together. Meanwhile, on
    // the pool, the spine directories are made and their metadata applied: the tree's
    // round trips and the manifest's merge do not wait for each other.
    let spine: HashSet<&RelPath> = cut.spine.iter().collect();
    let mut spine_blocks: BTreeMap<RelPath, Vec<Entry>> = BTreeMap::new();
    let mdir = store.meta.join("manifests");
    let mut w = manifest::Writer::create(&mdir, &rd.run, started.unwrap_or_else(fsx::wall_clock))
        .ctx("create manifest in", &mdir)?;
    if let Some(held) = plan.owners_held {
        w.owners_not_kept(held);
    }
    if let Some(g) = plan.times_held {
        w.times_not_kept(g);
    }
    let t_spine = Instant::now();
    let (merged, applied) = std::thread::scope(|s| {
        let applied = s.spawn(|| {
            apply_spine(rd, threads, &present, plan.owners_held, counters)
                .map(|owners| (t_spine.elapsed(), owners))
        });
        // The parts not kept are read `threads` at a time (each read a few round trips
        // on NFS) and written in plan order: at most `threads` of them in memory at once.
        let merged = (|| -> Result<(), ShardError> {
            let t_pass2 = Instant::now();
            for (window, kept) in cut.units.chunks(threads).zip(kept.chunks_mut(threads)) {
                let again: Vec<usize> = (0..window.len()).filter(|&i| kept[i].is_none()).collect();
                let read = super::par_map(threads, &again, |&i| {
                    read_part(&part(&window[i].id), false).map(|p| p.blocks)
                });
                for (&i, r) in again.iter().zip(read) {
                    kept[i] = Some(r?);
                }
                for (u, blocks) in window.iter().zip(kept.iter_mut()) {
                    let Some(blocks) = blocks.take() else {
                        continue;
                    };
                    for block in blocks {
                        let dir = &block.dir;
                        if dir.at_or_below_any(&gone) {
                            // In a spine directory gone from the source (its tree
                            // removed): what its units counted is not in the snapshot.
                            uncount(counters, &block.entries(&part(&u.id))?);
                            continue;
                        }
                        if mounts.holds(dir) {
                            // A unit's block at or inside a mount point (none where
                            // the units saw the mount; one that saw the directory
                            // before it was mounted).
                            continue;
                        }
                        if spine.contains(dir) {
                            let mut es = block.entries(&part(&u.id))?;
                            patch(dir, &mut es);
                            spine_blocks.entry(block.dir).or_default().extend(es);
                        } else if patched_dirs.contains(dir) || !block.sorted {
                            let mut es = block.entries(&part(&u.id))?;
                            patch(dir, &mut es);
                            w.write_block(dir, &mut es).ctx("write manifest", &mdir)?;
                        } else {
                            // As the unit wrote it: sorted by name, nothing to change.
                            w.write_raw_block(dir, &block.lines, block.n as u64)
                                .ctx("write manifest", &mdir)?;
                        }
                    }
                }
            }
            tracing::info!(
                "finalize: groups joined in {:.2}s, manifest parts merged in {:.2}s ({} of {} read once)",
                t_groups.as_secs_f64(),
                t_pass2.elapsed().as_secs_f64(),
                kept_parts,
                cut.units.len()
            );
            Ok(())
        })();
        let applied = applied
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (merged, applied)
    });
    merged?;
    let (spine_t, owners) = applied?;
    let spine_s = spine_t.as_secs_f64();
    // The spine's blocks, deepest first, as before. A spine directory whose owner this
    // process could not set is recorded with the owner it holds (a single-node run's
    // walk records it so): `verify` finds it as recorded, the next run reports it again.
    for (d, mut kids) in spine_kids {
        for k in kids.iter_mut() {
            if let Some(&(uid, gid)) = owners.get(&d.join(&k.name)) {
                (k.uid, k.gid) = (uid, gid);
            }
        }
        let mut es = spine_blocks.remove(d).unwrap_or_default();
        es.extend(kids);
        w.write_block(d, &mut es).ctx("write manifest", &mdir)?;
    }
    w.finish(&root).ctx("finish manifest", &mdir)?;
    tracing::info!(
        "finalize: {} spine directories applied in {spine_s:.2}s",
        cut.spine.len()
    );
    Ok(())
}

/// The spine directories the snapshot leaves out: those gone from the source now
/// (`read` says `None`), and those an earlier finalize of this run found gone (the run's
/// `gone` file). Their trees in the run are removed, after they are recorded: a finalize
/// repeated after a crash, with one of them back in the source, must leave it out too,
/// or its manifest would name what the run's tree no longer holds.
/// Each is a problem of the run (`vanished`: a single-node run would have kept what it
/// had walked; this one cannot set the directory's metadata, read at finalize), so the
/// run is `partial`, never `complete` with a directory missing; the merge takes what
/// its units had counted off the run's figures ([`uncount`]).
fn gone_spine(
    rd: &RunDir,
    source: &Path,
    order: &[&RelPath],
    read: &[SpineRead],
    mounts: &SpineMounts,
    counters: &Counters,
) -> Result<HashSet<RelPath>, ShardError> {
    let path = rd.root.join("gone");
    let mut gone: HashSet<RelPath> = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .lines()
            .map(|l| {
                RelPath::from_escaped(l).map_err(|e| {
                    ShardError::Failed(Error::Store {
                        path: path.clone(),
                        msg: format!("bad line {l:?}: {e}"),
                    })
                })
            })
            .collect::<Result<_, _>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
        Err(e) => return Err(io_error(e, "read", &path).into()),
    };
    let mut new = false;
    for (d, _) in order.iter().zip(read).filter(|(_, r)| r.is_some()) {
        if gone.contains(*d) {
            tracing::warn!(
                "spine directory {} was gone from the source when an earlier finalize of this run read it: left out of the snapshot",
                source.join(d.as_path()).display()
            );
        }
    }
    for (d, _) in order.iter().zip(read).filter(|(_, r)| r.is_none()) {
        // Only spine directories below the root: a root not there stopped finalize.
        if !gone.contains(*d) {
            tracing::warn!(
                "spine directory {} is gone from the source: left out of the snapshot",
                source.join(d.as_path()).display()
            );
            gone.insert((*d).clone());
            new = true;
        }
    }
    // Not those inside a mount point the units recorded (`one_file_system`: kept as an
    // empty directory, its contents never part of the snapshot).
    // One problem for the highest gone directory of a subtree, not one for each below.
    let mut named: Vec<&RelPath> = gone
        .iter()
        .filter(|d| !mounts.holds(d))
        .filter(|d| d.is_root() || !d.parent().at_or_below_any(&gone))
        .collect();
    named.sort();
    for d in named {
        counters.problem(report::Problem {
            path: d.escaped(),
            kind: report::ProblemKind::Vanished,
            action: "read spine directory".into(),
            error: "gone from the source (deleted, renamed or no directory now) before the run was finalized: left out of the snapshot with what its units had backed up".into(),
        });
    }
    if new {
        let mut lines: Vec<String> = gone.iter().map(|d| format!("{}\n", d.escaped())).collect();
        lines.sort();
        crate::util::write_atomic(&path, lines.concat().as_bytes()).ctx("write", &path)?;
    }
    // Every time: a finalize may have been killed while it removed them.
    for d in &gone {
        let t = rd.tree().join(d.as_path());
        match std::fs::remove_dir_all(&t) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(e, "remove", &t).into()),
        }
    }
    Ok(gone)
}

/// With `one_file_system`, before anything of the run's tree is changed: every spine
/// directory not in a mount point the units recorded (`mounts`) must be on the source
/// root's device now too, as the units saw it (one mounted since they walked it hides
/// what they backed up: its metadata and spine children cannot be read, and nothing
/// they backed up is thrown away). Then each mount point's directory in the run's tree
/// is emptied of the empty anchors of the spine directories below it (its units
/// walked nothing): only empty directories are removed, bottom-up.
fn empty_mount_points(
    rd: &RunDir,
    source: &Path,
    order: &[&RelPath],
    read: &[SpineRead],
    mounts: &SpineMounts,
) -> Result<(), ShardError> {
    let root_dev = order
        .iter()
        .zip(read)
        .find(|(d, _)| d.is_root())
        .and_then(|(_, r)| r.as_ref().map(|(m, _, _)| m.dev));
    if let Some(root_dev) = root_dev {
        for (d, r) in order.iter().zip(read) {
            if let Some((m, _, _)) = r
                && mounts.mounted_since(d, m.dev, root_dev)
            {
                return Err(ShardError::Failed(Error::Store {
                    path: source.join(d.as_path()),
                    msg: super::sizes::MOUNTED_SINCE.into(),
                }));
            }
        }
    }
    for d in mounts.sorted() {
        tracing::info!("{d}: another file system (one_file_system): kept empty");
        let at = rd.tree().join(d.as_path());
        match std::fs::read_dir(&at) {
            Ok(_) => remove_empty_below(&at)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(e, "read", &at).into()),
        }
    }
    Ok(())
}

/// Removes the directories below `at`, bottom-up, each only if empty: anything else
/// there (a unit backed up nothing below a mount point) is an error naming it.
fn remove_empty_below(at: &Path) -> Result<(), ShardError> {
    for e in std::fs::read_dir(at).ctx("read", at)? {
        let p = e.ctx("read", at)?.path();
        let md = std::fs::symlink_metadata(&p).ctx("stat", &p)?;
        if !md.is_dir() {
            return Err(ShardError::Failed(Error::Store {
                path: p,
                msg: "in the run's tree below a mount point its units recorded (they walked nothing there): not removed; nothing published".into(),
            }));
        }
        remove_empty_below(&p)?;
        std::fs::remove_dir(&p).ctx("remove empty directory", &p)?;
    }
    Ok(())
}

/// Makes each spine directory of `present` in the run's tree (all of them first: making
/// a missing one changes its parent's times), then applies its metadata as read from
/// the source, on `threads` threads. Extended attributes the store refused are the
/// run's problems, as a single-node run's walk reports them (the units' walks leave
/// their roots, the spine directories, to this). `held`: the owner a store that keeps
/// none gives them ([`PlanFile::owners_held`]): no other is asked for. An owner this
/// process may not give (not root: [`fsx::OwnerNotSet`]) is a `set owner` problem of
/// the directory, as a single-node run's walk reports it, its mode and times set all the
/// same; returned: the owner each such directory holds instead, for its manifest entry
/// to record what the snapshot is (a single-node run's `dir_owner_held`).
fn apply_spine(
    rd: &RunDir,
    threads: usize,
    present: &[(&RelPath, fsx::Meta, fsx::Xattrs)],
    held: Option<(u32, u32)>,
    counters: &Counters,
) -> Result<HashMap<RelPath, (u32, u32)>, ShardError> {
    let made = super::par_map(threads, present, |(d, _, _)| {
        super::worker::make_dirs(&rd.tree(), d)
    });
    let made: Vec<OwnedFd> = made.into_iter().collect::<Result<_, _>>()?;
    let pairs: Vec<(&OwnedFd, &(&RelPath, fsx::Meta, fsx::Xattrs))> =
        made.iter().zip(present).collect();
    let mut owners = HashMap::new();
    for (r, (_, (d, _, _))) in super::par_map(threads, &pairs, |(out, (_, meta, xattrs))| {
        let mut meta = *meta;
        if let Some((uid, gid)) = held {
            (meta.uid, meta.gid) = (uid, gid);
        }
        // Made under `.snapring/`, it may have inherited a default ACL from the store's
        // directory: the source's ACLs only.
        fsx::remove_xattrs(&fsx::XattrTarget::Fd(b(out)), fsx::INHERITED_DIR, xattrs)?;
        fsx::apply_dir_meta(b(out), &meta, xattrs)
    })
    .into_iter()
    .zip(&pairs)
    {
        let refused = match r {
            Ok(refused) => refused,
            Err(e) => match fsx::owner_not_set(&e) {
                Some(o) => {
                    if o.got != (u32::MAX, u32::MAX) {
                        owners.insert((*d).clone(), o.got);
                    }
                    counters.problem(report::Problem {
                        path: d.escaped(),
                        kind: report::ProblemKind::Metadata,
                        action: "set owner".into(),
                        error: e.to_string(),
                    });
                    continue;
                }
                None => {
                    return Err(
                        io_error(e, "set directory metadata", rd.tree().join(d.as_path())).into(),
                    );
                }
            },
        };
        for p in crate::engine::walk::refused_xattr_problems(d, &refused) {
            counters.problem(p);
        }
    }
    Ok(owners)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(path: &str, ino: u64, ctime: i64, size: u64) -> Member {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let t = |sec| Time { sec, nsec: 7 };
        Member {
            dir: RelPath::new(dir.as_bytes()).unwrap(),
            entry: Entry {
                name: name.as_bytes().to_vec(),
                kind: Kind::File,
                perm: 0o644,
                uid: 1,
                gid: 1,
                size,
                mtime: t(1_000),
                ctime: t(ctime),
                hash: None,
                xattrs: None,
                ino,
                group: Some(ino),
                target: None,
                rdev: 0,
                refused: Vec::new(),
            },
        }
    }

    fn paths(groups: &[Vec<Member>]) -> Vec<Vec<String>> {
        let mut v: Vec<Vec<String>> = groups
            .iter()
            .map(|ms| {
                ms.iter()
                    .map(|m| m.dir.join(&m.entry.name).escaped())
                    .collect()
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn only_names_of_one_inode_are_joined_not_other_inodes_with_the_same_number() {
        let groups = link_groups(vec![
            // Inode 7 of the source's file system, three names in two units.
            member("b/y", 7, 50, 10),
            member("a/x", 7, 50, 10),
            member("c/z", 7, 50, 10),
            // Inode 7 of a file system mounted at `mnt`: same number, its own times
            // and size; its two names are one group of their own.
            member("mnt/p", 7, 60, 99),
            member("mnt/q", 7, 60, 99),
            // A name whose group has no other name here: nothing to join.
            member("d/alone", 9, 50, 10),
        ]);
        assert_eq!(
            paths(&groups),
            vec![
                vec!["a/x".to_string(), "b/y".into(), "c/z".into()],
                vec!["mnt/p".to_string(), "mnt/q".into()],
            ]
        );
    }
}
