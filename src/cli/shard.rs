//! The shard commands: `snapring backup --shard I/N --run-id ID` (one worker of a run
//! split across processes), `snapring finalize` and `snapring status` of such a run.
//! They call `snapring::shard` and print what it returns; a finalized run is recorded
//! in the catalog here, like a single-node run. Exit codes: docs/scale-out.md.

use std::path::PathBuf;

use snapring::engine::BackupOptions;
use snapring::job::{After, CatalogTarget};
use snapring::notify::NotifierConfig;
use snapring::report::{RunReport, Status};
use snapring::shard::finalize::Finalized;
use snapring::shard::{ShardError, Spec};
use snapring::store::runs::RunRetention;

use super::args::{FinalizeArgs, ShardRunArgs};
use super::catalog_choice::CatalogChoice;
use super::exit_code::ExitCode;
use super::print::{self, errln, outln};

fn exit_of(e: &ShardError) -> ExitCode {
    match e.exit_code() {
        64 => ExitCode::Usage,
        75 => ExitCode::Retry,
        3 => ExitCode::Incomplete,
        _ => ExitCode::Failed,
    }
}

/// Records a finalized run in the catalog and prunes the store's old run records as
/// `policy` says (`job::record_finalized`; never fails the command).
fn record(rep: &RunReport, catalog: Option<&CatalogTarget>, policy: &RunRetention) {
    if let Some(c) = catalog
        && let Some(w) = snapring::job::record_finalized(c, rep, policy)
    {
        errln!("snapring: warning: {w}");
    }
}

/// The job's notifiers and whether a complete run is notified too.
type Notify<'a> = (&'a [(String, NotifierConfig)], bool);

/// One worker of a shard run. The job's `post_command` and notifications: the worker
/// that finalizes the run runs and sends them for the run (as a single-node run does);
/// a worker that fails (exit 1), or is interrupted while it builds units, for its own
/// part (its index and count in `SNAPRING_SHARD_INDEX`/`_COUNT`, its log in
/// `SNAPRING_LOG`). A worker that just did its part (or is stopped while it waits for
/// the others), finds the store held by another run (exit 75, retried) or was
/// called wrongly (exit 64, as a single-node run's usage errors) says nothing.
pub fn worker(
    opts: &BackupOptions,
    spec: &Spec,
    catalog: Option<&CatalogTarget>,
    notify: Notify,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let cancel = super::cancel_on_signal();
    // A store the catalog knows, gone (its file system not mounted on this node): as a
    // single-node run, refused before the worker makes a new store under the mount
    // point.
    if let Some(c) = catalog
        && let Err(e) = snapring::job::refuse_vanished_store(opts, c)
    {
        let msg = format!(
            "shard worker {}/{} of run {}: {e}",
            spec.index, spec.count, spec.run_id
        );
        errln!("snapring: {msg}");
        worker_ended(opts, spec, Status::Failed, msg, &[], catalog, notify);
        return Ok(ExitCode::Failed);
    }
    let mut out = match snapring::shard::worker::run(opts, spec, &cancel) {
        Ok(o) => o,
        Err(e) => {
            let msg = format!(
                "shard worker {}/{} of run {}: {}",
                spec.index,
                spec.count,
                spec.run_id,
                e.worker_text()
            );
            errln!("snapring: {msg}");
            if matches!(e, ShardError::Failed(_)) {
                worker_ended(opts, spec, Status::Failed, msg, &[], catalog, notify);
            }
            return Ok(exit_of(&e));
        }
    };
    if let Some(d) = &out.dry_run {
        if json {
            print::json(&serde_json::json!({
                "run": spec.run_id,
                "worker": spec.index,
                "workers": spec.count,
                "dry_run": d,
            }))?;
        } else {
            outln!(
                "dry run of shard run {} worker {}/{}: {} home units of {} (cut from {}): {} to copy, {} to link; nothing written (a real run's workers also take units left by others)",
                spec.run_id,
                spec.index,
                spec.count,
                d.units.len(),
                d.units_total,
                d.cut_from,
                d.copies,
                d.links
            );
        }
        return Ok(if out.interrupted {
            ExitCode::Incomplete
        } else {
            ExitCode::Complete
        });
    }
    if let Some(rep) = &mut out.finalized {
        record(rep, catalog, &opts.run_records);
        let after = After {
            log: snapring::store::log_path(rep),
            record: true,
            env: vec![("SNAPRING_SHARD_COUNT", spec.count.to_string())],
        };
        snapring::job::conclude(opts, rep, &after, catalog, notify.0, notify.1);
    } else if let Some(why) = pre_command_stopped(&out) {
        // Stopped in its pre_command: recorded and told `incomplete`, as a single-node
        // run is (it was `failed`, exit 1, before).
        let msg = format!(
            "shard worker {}/{} of run {}: {why}",
            spec.index, spec.count, spec.run_id
        );
        worker_ended(opts, spec, Status::Incomplete, msg, &[], catalog, notify);
    } else if out.interrupted && !out.left.is_empty() {
        // Stopped holding nothing (it only waited for the others): nothing to report.
        let why = if out.window_ended {
            "the backup window ended"
        } else {
            "interrupted"
        };
        let msg = format!(
            "shard worker {}/{} of run {}: {why}; its units {} are resumed by a rerun with the same run id, or taken over when their lease lapses",
            spec.index,
            spec.count,
            spec.run_id,
            out.left.join(", ")
        );
        worker_ended(
            opts,
            spec,
            Status::Incomplete,
            msg,
            &out.warnings,
            catalog,
            notify,
        );
    }
    let code = match (&out.finalized, out.interrupted) {
        (Some(rep), _) => ExitCode::from(rep.status),
        (None, true) => ExitCode::Incomplete,
        (None, false) if out.finalize_blocked.is_some() => ExitCode::Retry,
        // Its own units left entries out: its part is partial, as a single-node run.
        (None, false) if out.problems > 0 => ExitCode::Partial,
        (None, false) => ExitCode::Complete,
    };
    let what = if let Some(rep) = &out.finalized {
        format!(
            "finalized: {} {} ({} files, {} copied, {} linked)",
            rep.status.as_str(),
            rep.snapshot.as_deref().unwrap_or("-"),
            rep.files_total,
            rep.files_transferred,
            rep.files_linked
        )
    } else if let Some(at) = &out.finalized_before_start {
        let helped = if out.expired.pieces > 0 {
            format!(
                "; deleted {} pieces of its expired snapshots ({} entries)",
                out.expired.pieces, out.expired.entries
            )
        } else {
            String::new()
        };
        format!(
            "nothing was backed up: run id {} was already finalized at {at}; a new backup needs a new run id{helped}",
            spec.run_id
        )
    } else if out.already_finalized && out.expired.pieces > 0 {
        format!(
            "the run is finalized; deleted {} pieces of the expired snapshots ({} entries)",
            out.expired.pieces, out.expired.entries
        )
    } else if out.already_finalized {
        "the run is already finalized".into()
    } else if let Some((who, waited)) = &out.finalize_blocked
        && snapring::shard::finalize::held_by_finalize_of(who, &spec.run_id)
    {
        format!(
            "every unit is committed; {who} held the store for {:.0} s and publishes this run: nothing is wrong (`snapring status --run-id {}` shows when it is done; if that finalize fails, rerun it)",
            waited.as_secs_f64(),
            spec.run_id
        )
    } else if let Some((who, waited)) = &out.finalize_blocked {
        format!(
            "every unit is committed, but the store was held by {who} for {:.0} s: this run is not published. Rerun this worker (same index and run id) or `snapring finalize --run-id {}` once it lets go (a stopped worker of this run, another run's workers, a dry run)",
            waited.as_secs_f64(),
            spec.run_id
        )
    } else if out.finalize_pending {
        "every unit is committed; finalize is left to the worker still holding the store (or run `snapring finalize`)".into()
    } else if let Some(why) = pre_command_stopped(&out) {
        why
    } else if out.interrupted && out.left.is_empty() {
        "stopped while it held no unit; the other workers finish the run".into()
    } else if out.interrupted && out.window_ended {
        "the backup window ended; this worker's unit is resumed by a rerun with the same run id, or taken over when its lease lapses"
            .into()
    } else if out.interrupted {
        "interrupted; this worker's unit is taken over when its lease lapses, or resumed by a rerun"
            .into()
    } else {
        "done".into()
    };
    if json {
        print::json(&serde_json::json!({
            "run": spec.run_id,
            "worker": spec.index,
            "workers": spec.count,
            "committed": out.committed,
            "problems": out.problems,
            "lost": out.lost,
            "left": out.left,
            "pre_command": out.pre_command,
            "warnings": out.warnings,
            "interrupted": out.interrupted,
            "window_ended": out.window_ended,
            "already_finalized": out.already_finalized,
            "finalized_before_start": out.finalized_before_start,
            "finalize_pending": out.finalize_pending,
            "finalize_blocked_by": out.finalize_blocked.as_ref().map(|(who, _)| who),
            "expired_pieces": out.expired.pieces,
            "expired_entries": out.expired.entries,
            "report": out.finalized,
            "exit_code": code.code(),
        }))?;
    } else {
        outln!(
            "shard run {} worker {}/{}: {} units committed{}{}; {what}",
            spec.run_id,
            spec.index,
            spec.count,
            out.committed.len(),
            match out.problems {
                0 => String::new(),
                1 => " (1 problem in them: partial)".into(),
                n => format!(" ({n} problems in them: partial)"),
            },
            if out.lost.is_empty() {
                String::new()
            } else {
                format!(", {} lost to a takeover", out.lost.len())
            }
        );
        if let Some(note) = out.finalized.as_ref().and_then(print::mount_points_note) {
            outln!("{note}");
        }
        let finalized = out.finalized.iter().flat_map(|r| r.warnings.iter());
        for w in out.warnings.iter().chain(finalized) {
            outln!("  warning: {w}");
        }
    }
    Ok(code)
}

/// Why a worker stopped in its `pre_command` (a signal or the end of its window killed
/// it, `worker::pre_command`), if it did: it claimed nothing, and a rerun with the
/// same run id starts again.
fn pre_command_stopped(out: &snapring::shard::worker::Outcome) -> Option<String> {
    let killed = out
        .pre_command
        .as_ref()
        .is_some_and(snapring::hooks::interrupted);
    (out.interrupted && killed).then(|| {
        let why = if out.window_ended {
            "the backup window ended during its pre_command"
        } else {
            "interrupted during its pre_command"
        };
        format!("{why} (killed); it claimed nothing, a rerun with the same run id starts again")
    })
}

/// The post command and notifications of a worker that failed or was interrupted: a
/// report of its part (status, message, the run's id), not written to the store or the
/// catalog (the run's record is the finalizer's).
fn worker_ended(
    opts: &BackupOptions,
    spec: &Spec,
    status: Status,
    msg: String,
    warnings: &[String],
    catalog: Option<&CatalogTarget>,
    notify: Notify,
) {
    if opts.post_command.is_none() && notify.0.is_empty() {
        return;
    }
    let store = std::fs::canonicalize(&opts.store).unwrap_or_else(|_| opts.store.clone());
    let mut rep = snapring::engine::backup::new_report(opts, &spec.run_id, &store);
    rep.status = status;
    rep.message = msg;
    rep.warnings = warnings.to_vec();
    rep.finished_at = Some(snapring::report::now_rfc3339());
    let log = store.join(snapring::store::META_DIR).join("logs").join(
        snapring::shard::worker::worker_log_name(&spec.run_id, spec.index),
    );
    let after = After {
        log,
        record: false,
        env: vec![
            ("SNAPRING_SHARD_INDEX", spec.index.to_string()),
            ("SNAPRING_SHARD_COUNT", spec.count.to_string()),
        ],
    };
    snapring::job::conclude(opts, &mut rep, &after, catalog, notify.0, notify.1);
}

fn store_of(dest: &std::path::Path, folder: &Option<String>) -> anyhow::Result<PathBuf> {
    Ok(match folder {
        Some(f) => {
            let p = snapring::relpath::RelPath::new(f.as_bytes())
                .map_err(|e| anyhow::anyhow!("--folder: {e}"))?;
            dest.join(p.as_path())
        }
        None => dest.to_path_buf(),
    })
}

/// What `snapring finalize --config FILE [--job NAME]` takes from the job: the job
/// (its post command and log, resolved once the run's source is known), its store,
/// notifiers and catalog.
struct FinalizeJob {
    name: String,
    job: snapring::config::JobConfig,
    /// The job's store: `--dest`, and `--folder` or else the job's folder.
    store: PathBuf,
    notifiers: Vec<(String, NotifierConfig)>,
    notify_success: bool,
    catalog: Option<CatalogTarget>,
}

impl FinalizeJob {
    /// The job's options, for a run of `source`. A job whose workers were given
    /// `--source` has none of its own: the run's (from its plan) stands in.
    fn opts(&self, source: &std::path::Path) -> snapring::error::Result<BackupOptions> {
        let flags = snapring::config::JobConfig {
            dest: Some(self.store.clone()),
            folder: None,
            source: self.job.source.is_none().then(|| source.to_path_buf()),
            ..Default::default()
        };
        let mut job = self.job.clone();
        job.folder = None;
        snapring::config::resolve(Some(self.name.clone()), Some(job), flags)
    }
}

fn finalize_job(f: &FinalizeArgs, cat: &CatalogChoice) -> anyhow::Result<Option<FinalizeJob>> {
    let Some(path) = &f.config else {
        return Ok(None);
    };
    let cfg = snapring::config::load(path)?;
    let (name, job) = cfg
        .pick(f.job.as_deref())
        .map_err(super::config::job_usage)?;
    let notifiers = cfg.notifiers_of(&name, &job)?;
    let notify_success = job.notify_success.unwrap_or(false);
    let store = store_of(&f.run.dest, &f.run.folder.clone().or(job.folder.clone()))?;
    let catalog = cat
        .for_config(cfg.catalog.clone())
        .map(|path| CatalogTarget {
            path,
            on_nfs: cat.on_nfs,
        });
    Ok(Some(FinalizeJob {
        name,
        job,
        store,
        notifiers,
        notify_success,
        catalog,
    }))
}

/// `snapring finalize`.
pub fn finalize(f: FinalizeArgs, cat: &CatalogChoice) -> anyhow::Result<ExitCode> {
    if super::restic::is_repo(Some(&f.run.dest)) {
        return super::restic::shard_finalize(&f);
    }
    let job = finalize_job(&f, cat)?;
    let allow_empty = f.allow_empty;
    let a = f.run;
    if let Err(e) = snapring::shard::check_run_id(&a.run_id) {
        errln!("snapring: {e}");
        return Ok(ExitCode::Usage);
    }
    // With a job, its store: its `folder` unless `--folder` is given.
    let root = match &job {
        Some(j) => j.store.clone(),
        None => store_of(&a.dest, &a.folder)?,
    };
    if !root.join(".snapring").is_dir() {
        errln!(
            "snapring: {} is not a snapring store",
            snapring::relpath::shown(&root)
        );
        return Ok(ExitCode::Failed);
    }
    let store = snapring::store::Store::open(&root, false)?;
    let rd = snapring::shard::state::RunDir::new(&store.meta, &a.run_id);
    let cancel = super::cancel_on_signal();
    let r = snapring::shard::finalize::finalize(
        &store,
        &rd,
        None,
        (a.jobs.max(1), allow_empty),
        &cancel,
        std::time::Duration::ZERO,
    );
    let already = matches!(r, Ok(Finalized::Already(_)));
    let (code, msg, rep) = match r {
        Ok(Finalized::Done(mut rep)) => {
            match &job {
                Some(j) => {
                    let opts = j.opts(&rep.source);
                    let policy = match &opts {
                        Ok(o) => o.run_records.clone(),
                        // The job's `keep_run_records` unknown: nothing pruned.
                        Err(_) => RunRetention {
                            keep_for: None,
                            ..RunRetention::default()
                        },
                    };
                    record(&rep, j.catalog.as_ref(), &policy);
                    let after = After {
                        log: snapring::store::log_path(&rep),
                        record: true,
                        env: vec![(
                            "SNAPRING_SHARD_COUNT",
                            rep.shards
                                .as_ref()
                                .map(|s| s.workers)
                                .unwrap_or(0)
                                .to_string(),
                        )],
                    };
                    match opts {
                        Ok(opts) => snapring::job::conclude(
                            &opts,
                            &mut rep,
                            &after,
                            j.catalog.as_ref(),
                            &j.notifiers,
                            j.notify_success,
                        ),
                        Err(e) => errln!(
                            "snapring: warning: the run is published, but job {}'s post command and notifications did not run: {e}",
                            j.name
                        ),
                    }
                }
                None => {
                    let c = cat.for_config(None).map(|path| CatalogTarget {
                        path,
                        on_nfs: cat.on_nfs,
                    });
                    // No job: its `keep_run_records` is not known, so nothing is pruned
                    // (the store's next run of the job prunes).
                    let keep = RunRetention {
                        keep_for: None,
                        ..RunRetention::default()
                    };
                    record(&rep, c.as_ref(), &keep)
                }
            }
            (
                ExitCode::from(rep.status),
                format!(
                    "finalized run {}: {} {}",
                    a.run_id,
                    rep.status.as_str(),
                    match &rep.snapshot {
                        Some(s) => s.clone(),
                        // Published, then expired by another backup: the message says so.
                        None => format!("- ({})", rep.message),
                    }
                ),
                Some(rep),
            )
        }
        Ok(Finalized::Already(rep)) => (
            ExitCode::Complete,
            format!("run {} is already finalized", a.run_id),
            rep,
        ),
        Ok(Finalized::Busy(who))
            if snapring::shard::finalize::held_by_finalize_of(&who, &a.run_id) =>
        {
            (
                ExitCode::Retry,
                format!(
                    "another finalize of run {} is running ({who}) and publishes it: nothing is wrong; `snapring status --run-id {}` shows when it is done (a finalize run again then says it is already finalized)",
                    a.run_id, a.run_id
                ),
                None,
            )
        }
        Ok(Finalized::Busy(who)) => (
            ExitCode::Retry,
            format!("the store is held by {who}; try again when it ends"),
            None,
        ),
        Ok(Finalized::NotReady(n)) => (
            ExitCode::Retry,
            format!(
                "run {}: {n} units are not committed yet; rerun their workers (same index and run id), then finalize",
                a.run_id
            ),
            None,
        ),
        Err(ShardError::Stopped) => {
            let msg = format!(
                "finalize of run {}: interrupted; nothing was published in {}, `snapring finalize --run-id {}` publishes the run",
                a.run_id,
                snapring::relpath::shown(&root),
                a.run_id
            );
            let code = ExitCode::Incomplete;
            // `--json`: a report as for any other end (a repository's finalize prints its
            // `incomplete` one), not the message on stderr alone.
            if a.json {
                print::json(&serde_json::json!({
                    "run": a.run_id, "status": "incomplete", "finalized": false,
                    "snapshot": null, "message": msg, "report": null,
                    "exit_code": code.code()
                }))?;
            } else {
                errln!("snapring: {msg}");
            }
            return Ok(code);
        }
        Err(e) => {
            errln!("snapring: finalize of run {}: {e}", a.run_id);
            return Ok(exit_of(&e));
        }
    };
    if a.json {
        print::json(&serde_json::json!({
            "run": a.run_id, "message": msg, "report": rep, "exit_code": code.code()
        }))?;
    } else if code == ExitCode::Retry {
        errln!("snapring: {msg}");
    } else {
        outln!("{msg}");
        if let Some(note) = rep.as_ref().and_then(|r| print::mount_points_note(r)) {
            outln!("{note}");
        }
        // A run finalized before: its report's warnings were told by the process that
        // finalized it (and by any earlier `snapring finalize`), not by this one; told
        // again each time, the "removed abandoned shard run …" of its sweep read as a
        // removal made now.
        match rep.as_ref().map(|r| r.warnings.len()) {
            Some(n) if already && n > 0 => outln!(
                "  ({n} warning{} given when it was finalized: `snapring show {} --dest {}` lists them)",
                if n == 1 { " was" } else { "s were" },
                a.run_id,
                snapring::relpath::shown(&root)
            ),
            _ => {
                for w in rep.iter().flat_map(|r| r.warnings.iter()) {
                    outln!("  warning: {w}");
                }
            }
        }
    }
    Ok(code)
}

/// `snapring status`.
pub fn status(a: ShardRunArgs) -> anyhow::Result<ExitCode> {
    let st = if super::restic::is_repo(Some(&a.dest)) {
        super::restic::shard_status(&a)?
    } else {
        let root = store_of(&a.dest, &a.folder)?;
        snapring::shard::status::status(&root.join(".snapring"), &a.run_id)?
    };
    if a.json {
        print::json(&st)?;
        return Ok(ExitCode::Complete);
    }
    if let Some(m) = &st.abandoned {
        return status_abandoned(&st, m);
    }
    let fin_damaged = st.damaged.iter().find(|d| d.marker == "finalized");
    outln!(
        "shard run {}: {} workers, {} units (sized by {}): {} done, {} claimed, {} stale, {} pending; {}",
        st.run,
        st.workers,
        st.units,
        st.sized_by,
        st.done,
        st.claimed,
        st.stale,
        st.pending,
        match (
            fin_damaged,
            st.snapshot_state.as_deref(),
            st.snapshot.as_deref().unwrap_or("-")
        ) {
            (Some(d), ..) => format!(
                "finalized? its marker {} does not read ({}: damaged), so whether the run is finalized is not known from it; `snapring finalize --run-id {}` removes it and finalizes the run (completing it if it was published)",
                d.path, d.why, st.run
            ),
            // Its snapshot file is not written: a prune since `final` (restic's own)
            // may have removed data it needs, which finalize checks (costly: every tree
            // of the run read), and then refuses the run.
            (_, Some("decided"), id) => format!(
                "finalizing: snapshot {id} decided, not written yet; `snapring finalize` writes it if the repository still holds every blob it needs (if a prune removed any since, it refuses: back the source up again under a new run id)"
            ),
            (_, Some("written"), id) => format!(
                "finalizing: snapshot {id} written, the run not marked published yet; `snapring finalize` completes it"
            ),
            (_, Some("forgotten"), id) => format!("finalized ({id}, since forgotten)"),
            (_, _, id) if st.finalized => format!("finalized ({id})"),
            _ if !st.refused.is_empty() => "refused: not publishable".into(),
            _ if st.unbuildable.is_some() => "refused: never buildable".into(),
            _ => "not finalized".into(),
        }
    );
    for r in &st.refused {
        outln!(
            "  refused {}; finalize publishes nothing: fix the deployment and start a new run id",
            r.describe()
        );
    }
    if let Some(why) = &st.unbuildable {
        outln!("  {why}");
    }
    if st.expiry != "none" {
        outln!(
            "  expiry of old snapshots {}: {} pieces claimed, {} deleted",
            st.expiry,
            st.expiry_claimed,
            st.expiry_done
        );
    }
    for w in &st.per_worker {
        outln!(
            "  worker {}: {} home units, {} committed, {} claimed now{}",
            w.index,
            w.home_units,
            w.committed,
            w.claimed,
            if w.expired_pieces > 0 {
                format!(
                    "; deleted {} expired pieces ({} entries)",
                    w.expired_pieces, w.expired_entries
                )
            } else {
                String::new()
            }
        );
    }
    for u in st.unit_list.iter().filter(|u| u.state == "stale") {
        outln!(
            "  stale lease: unit {} ({}) generation {} of worker {}",
            u.id,
            u.dir,
            u.generation.unwrap_or(0),
            u.worker.unwrap_or(0)
        );
    }
    Ok(ExitCode::Complete)
}

/// `snapring status` of an abandoned run (`abandoned.rs`): what its marker records (when,
/// by what, why) and what it committed; its units left unbuilt are not work to take
/// over (a worker of the run is refused), so no claim of theirs is shown as stale.
fn status_abandoned(
    st: &snapring::shard::status::RunStatus,
    m: &snapring::shard::abandoned::Mark,
) -> anyhow::Result<ExitCode> {
    let left = st.units - st.done;
    outln!(
        "shard run {}: {} workers, {} units (sized by {}): {} done, {left} never built; abandoned: it can never be published",
        st.run,
        st.workers,
        st.units,
        st.sized_by,
        st.done
    );
    match st.damaged.iter().find(|d| d.marker == "abandoned") {
        Some(d) => outln!(
            "  its marker {} does not read ({}: damaged): when, by what and why it was abandoned is not known; the run is taken as abandoned (its workers and finalize are refused): start a new run id",
            d.path,
            d.why
        ),
        None => outln!(
            "  abandoned at {} by {}: {}; its copies were removed, start a new run id",
            m.at,
            m.by_whom(),
            m.describe()
        ),
    }
    if left > 0 {
        outln!(
            "  {left} of its {} units were never committed and are never built now (a worker of this run is refused): no lease of theirs is work to take over",
            st.units
        );
    }
    for r in &st.refused {
        outln!("  refused {}", r.describe());
    }
    for w in &st.per_worker {
        outln!(
            "  worker {}: {} home units, {} committed",
            w.index,
            w.home_units,
            w.committed
        );
    }
    Ok(ExitCode::Complete)
}
