//! One backup run, start to end: lock and repair the store, check the source, pick the
//! previous snapshot to link against, build the new snapshot in staging, flush, publish
//! it through the journal, delete expired snapshots, and write the run record. The
//! status rules of ARCHITECTURE.md live here. It runs against the [`Repository`] and
//! [`Sink`] seams (the hard-link store is their one implementation); it reads the
//! source, and writes only through them.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::options::BackupOptions;
use super::walk::Walk;
use crate::error::{Ctx, Error, Result};
use crate::fsx::{self, b};
use crate::manifest::Entry;
use crate::repo::{Previous, Repository, Rotation, RunProgress};
use crate::report::{self, Counters, Phase, Phases, RunReport, Status};
use crate::sink::{Plan, Sink};
use crate::store::Store;
use crate::store::plan_sink::PlanSink;

/// A new run id: sortable by start time, unique across hosts and processes.
pub fn new_run_id() -> String {
    let now = chrono::Utc::now();
    let salt = blake3::hash(
        format!(
            "{}{}{}",
            std::process::id(),
            now.timestamp_nanos_opt().unwrap_or(0),
            report::hostname()
        )
        .as_bytes(),
    );
    format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), &salt.to_hex()[..6])
}

/// Where a dry run prints its plan.
fn plan_sink(opts: &BackupOptions) -> Box<dyn Write + Send> {
    if opts.plan_on_stderr {
        Box::new(std::io::BufWriter::new(std::io::stderr()))
    } else {
        Box::new(std::io::BufWriter::new(std::io::stdout()))
    }
}

fn phase(start: &str, t0: Instant) -> Phase {
    Phase {
        start: Some(start.to_string()),
        stop: Some(report::now_rfc3339()),
        seconds: t0.elapsed().as_secs_f64(),
    }
}

/// What the layer above the engine does at two moments of a (not dry) run: the job
/// layer records the run in the catalog there. The engine knows nothing of catalogs or
/// notifiers; it only calls these.
pub trait Observer {
    /// The run has started: the store is locked and repaired, and the run's record
    /// (status `running`) is written, or could not be (then the run fails at once, and
    /// `finished` follows: the catalog is where such a run is recorded). Warnings pushed
    /// to `rep` are kept.
    fn started(&self, _store: &Store, _rep: &mut RunReport) {}
    /// The run has ended; called before its final record is written to the store (and
    /// while its log is still open), so warnings pushed to `rep` are kept.
    fn finished(&self, _rep: &mut RunReport) {}
    /// The run's history is kept elsewhere: every run of the store is in the catalog
    /// (its `started` imported those it had no row for). Only then are old run records
    /// pruned from the store (`store::runs`): with the catalog off, damaged or locked
    /// they are the only history, and `catalog rebuild` recreates the catalog from them.
    fn history_kept(&self) -> bool {
        false
    }
}

/// Observes nothing.
pub struct NoObserver;

impl Observer for NoObserver {}

/// Runs one backup. `Err` only when no run could start (bad options, the store is
/// locked or cannot be opened); every run that starts ends with a report, also written
/// to `.snapring/runs/<id>.json` (not for a dry run). `cancel` stops it gracefully
/// (status `incomplete`).
pub fn backup(opts: &BackupOptions, cancel: &AtomicBool) -> Result<RunReport> {
    backup_observed(opts, cancel, &NoObserver)
}

/// `backup`, telling `observer` when the run has started and when it has ended.
pub fn backup_observed(
    opts: &BackupOptions,
    cancel: &AtomicBool,
    observer: &dyn Observer,
) -> Result<RunReport> {
    opts.validate()?;
    let resolved;
    let opts = if opts.jobs == crate::engine::options::AUTO_JOBS {
        let jobs = crate::concurrency::resolve(0, &[&opts.source, &opts.store]);
        resolved = BackupOptions {
            jobs,
            ..opts.clone()
        };
        &resolved
    } else {
        opts
    };
    fsx::raise_fd_limit();
    let id = new_run_id();
    let t0 = Instant::now();
    if opts.dry_run && !opts.store.join(crate::store::META_DIR).is_dir() {
        // Nothing to lock or repair; plan against an empty store without creating it.
        return run_dry_without_store(opts, &id, cancel);
    }
    refuse_to_begin_a_store(opts)?;
    let store = Store::open(&opts.store, !opts.dry_run)?;
    let lock = if opts.dry_run {
        let l = Repository::lock_shared(&store)?;
        if Repository::needs_repair(&store) {
            println!(
                "repair: an interrupted rotation will be rolled forward first (the plan below assumes it)"
            );
        }
        l
    } else {
        store.lock_and_repair(&id)?
    };
    let abs = std::fs::canonicalize(&store.root).unwrap_or_else(|_| store.root.clone());
    let mut rep = new_report(opts, &id, &abs);
    if let Ok(src) = std::fs::canonicalize(&opts.source) {
        rep.source = src;
    }
    let mut recorded = Ok(());
    let mut catalog_wait = Duration::ZERO;
    if !opts.dry_run {
        if opts.log_file {
            let log = crate::store::log_path(&rep);
            if let Err(e) = crate::runlog::start(&log) {
                rep.warnings.push(format!(
                    "cannot write the run log {}: {e}",
                    crate::relpath::shown(&log)
                ));
            }
        }
        tracing::info!(
            run = %id, source = %crate::relpath::shown(&rep.source), store = %crate::relpath::shown(&abs), label = %opts.label,
            retain = opts.retain, jobs = opts.jobs, "backup started by snapring {} on {}", rep.version, rep.host
        );
        // A record that cannot be written (a full file system) fails the run, which
        // still ends with a report and reaches the observer.
        recorded = store.write_run(&rep);
        let _ = crate::failpoint::hit("run.after_first_record");
        if let Err(e) = &recorded {
            tracing::error!("{e}");
        }
        // Recording the run's start in the catalog may wait for a writer's lock (the
        // busy wait, seconds): not the backup's time, so not in its duration (it
        // inflated the durations of `stats` and the dashboard; the window still counts
        // from `t0`, the run's start).
        let t_cat = Instant::now();
        observer.started(&store, &mut rep);
        catalog_wait = t_cat.elapsed();
    }
    let counters = Arc::new(Counters {
        throttle: opts
            .bwlimit
            .map(|r| Arc::new(crate::throttle::Throttle::new(r))),
        ..Counters::default()
    });
    // The backup window is counted from here, the run's start (`t0`), through its
    // pre_command: a long one (a database dump, a volume snapshot) is inside it.
    let outcome = match recorded {
        Ok(()) => match pre_command(opts, &mut rep, cancel, t0) {
            (Ok(()), _) => run(opts, &store, &id, &counters, cancel, &mut rep, t0),
            // Stopped (a signal, a daemon stop) while its pre_command ran: an
            // interrupted run, as one stopped in its walk is (resumed at the next
            // daemon start), not a failure of the pre_command. Or its window ended
            // then: cut short as a walk its window ends is (the next run goes on at
            // its time).
            (Err(_), window_ended) if pre_command_killed(&rep) => {
                // The window killed it, not a stop: its error said "snapring was
                // interrupted".
                if window_ended && let Some(h) = rep.pre_command.as_mut() {
                    h.error = Some(crate::hooks::WINDOW_ENDED.into());
                }
                rep.message = match window_ended {
                    true => PRE_COMMAND_WINDOW_ENDED,
                    false => PRE_COMMAND_INTERRUPTED,
                }
                .into();
                Ok(Status::Incomplete)
            }
            (Err(e), _) => Err(e),
        },
        Err(e) => Err(e),
    };
    conclude(&mut rep, &counters, outcome, t0);
    rep.duration_seconds = (rep.duration_seconds - catalog_wait.as_secs_f64()).max(0.0);
    if !opts.dry_run {
        tracing::info!(
            status = rep.status.as_str(),
            files = rep.files_total,
            copied = rep.files_transferred,
            linked = rep.files_linked,
            bytes_copied = rep.bytes_transferred,
            errors = rep.errors,
            seconds = rep.duration_seconds,
            bwlimit_wait_seconds = rep.bwlimit_wait_seconds,
            "backup finished: {}",
            rep.message
        );
        observer.finished(&mut rep);
        let _ = crate::failpoint::hit("run.before_final_record");
        // A failed run has discarded its staging tree by now, so a file system that
        // was full has room again for the record.
        if let Err(e) = store.write_run(&rep) {
            tracing::error!(
                "the run record keeps its last state until the next command that can write the store settles it: {}",
                e.cause()
            );
        }
        // Under the lock still, once the run is recorded: the records and logs of old
        // runs that nothing needs (`store::runs`; said in this run's log). Not after a
        // walk abandoned with its threads still at work.
        if !counters.walk_abandoned.load(Ordering::Relaxed) {
            if observer.history_kept() {
                store.prune_runs(&opts.run_records, &rep.id, chrono::Utc::now());
            } else if opts.run_records.keep_for.is_some() {
                tracing::debug!(
                    "old run records kept: no catalog holds this store's runs (off, or it could not be written)"
                );
            }
        }
        crate::runlog::stop();
    }
    release(&store, lock, &counters);
    Ok(rep)
}

/// The message of a run stopped while its pre_command ran (which was killed).
const PRE_COMMAND_INTERRUPTED: &str = "interrupted during its pre_command (killed); nothing was read, published or rotated, the next run starts again";

/// The message of a run whose backup window ended while its pre_command ran (which
/// was killed).
const PRE_COMMAND_WINDOW_ENDED: &str = "backup window ended during the pre_command (killed); nothing was read, published or rotated, the next run starts again";

/// Whether the run's pre_command was killed by its `cancel` (`hooks::interrupted`).
fn pre_command_killed(rep: &RunReport) -> bool {
    rep.pre_command
        .as_ref()
        .is_some_and(crate::hooks::interrupted)
}

/// Runs the job's `pre_command` (never in a dry run), before the source is looked at
/// (it may be what mounts or freezes it). `Err` when it fails: the run fails with
/// nothing read or published, and its output is in the run log; or when the run was
/// stopped while it ran (`hooks::interrupted` of `rep.pre_command`): by a signal, or
/// by the end of its backup window (counted from `t_run`, the run's start: the second
/// value is whether it ended); the run is then `incomplete`, not failed.
fn pre_command(
    opts: &BackupOptions,
    rep: &mut RunReport,
    cancel: &AtomicBool,
    t_run: Instant,
) -> (Result<()>, bool) {
    let Some(h) = opts.pre_command.as_ref().filter(|_| !opts.dry_run) else {
        return (Ok(()), false);
    };
    let (out, r, ended) = run_pre_command(
        h,
        [&rep.id, rep.job.as_deref().unwrap_or_default()],
        [&rep.source, &rep.store],
        &[],
        "nothing was backed up or published (its output is in the run log)",
        cancel,
        (t_run, opts.window),
    );
    rep.pre_command = Some(out);
    (r, ended)
}

/// Runs pre command `h` with `SNAPRING_RUN_ID` and `SNAPRING_JOB` (`ids`),
/// `SNAPRING_SOURCE` and `SNAPRING_STORE` (`paths`) and `extra` in its environment:
/// its outcome, the run's error if it failed (`then`: what that means for the run), and
/// whether the backup window (`window`: its start and length, if any) ended while it
/// ran: `cancel`, which the window's end sets, kills it. A single-node run and every
/// shard worker run it so.
pub fn run_pre_command(
    h: &crate::hooks::Hook,
    ids: [&str; 2],
    paths: [&Path; 2],
    extra: &[(&'static str, String)],
    then: &str,
    cancel: &AtomicBool,
    (start, window): (Instant, Option<Duration>),
) -> (crate::report::HookOutcome, Result<()>, bool) {
    // The paths as they are: a name that is not UTF-8 reaches the hook unchanged.
    let mut env: Vec<(&str, std::ffi::OsString)> = vec![
        ("SNAPRING_RUN_ID", ids[0].into()),
        ("SNAPRING_JOB", ids[1].into()),
        ("SNAPRING_SOURCE", paths[0].as_os_str().to_owned()),
        ("SNAPRING_STORE", paths[1].as_os_str().to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.into())));
    let (out, ended) = super::progress::within_window(start, window, cancel, || {
        crate::hooks::run("pre_command", h, &env, b"", cancel)
    });
    let r = match &out.error {
        None => Ok(()),
        Some(e) => Err(Error::Hook(format!(
            "pre_command {:?} failed: {e}; {then}",
            h.argv
        ))),
    };
    (out, r, ended)
}

/// Unlocks the store, unless the walk was left behind on a stalled call: its workers
/// may still write into the staging tree when the call returns, so the store stays
/// locked until this process exits (the lock is a `flock`).
fn release(store: &Store, lock: <Store as Repository>::Lock, counters: &Counters) {
    if counters.walk_abandoned.load(Ordering::Relaxed) {
        std::mem::forget(lock);
    } else {
        Repository::unlock(store, lock);
    }
}

pub fn new_report(opts: &BackupOptions, id: &str, store: &Path) -> RunReport {
    RunReport {
        format: report::RUN_FORMAT,
        id: id.to_string(),
        job: opts.job.clone(),
        label: opts.label.clone(),
        retain: opts.retain,
        window: opts.window.map(|w| format!("{}s", w.as_secs())),
        prefix: opts.prefix.as_ref().map(|p| p.escaped()),
        exclusion: opts
            .exclude_settings()
            .unwrap_or_else(|_| crate::exclude::Settings {
                excludes: opts.excludes.clone(),
                exclude_from: opts.exclude_from.clone(),
                exclude_caches: opts.exclude_caches,
                exclude_if_present: opts.exclude_if_present.clone(),
            }),
        source: opts.source.clone(),
        store: store.to_path_buf(),
        host: report::hostname(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        jobs: opts.jobs,
        dry_run: opts.dry_run,
        started_at: report::now_rfc3339(),
        finished_at: None,
        duration_seconds: 0.0,
        status: Status::Running,
        exit_code: 1,
        message: String::new(),
        snapshot: None,
        based_on: None,
        expired: vec![],
        files_total: 0,
        dirs_total: 0,
        files_transferred: 0,
        files_linked: 0,
        files_resumed: 0,
        link_fallbacks: 0,
        changed_during_backup: 0,
        errors: 0,
        bytes_total: 0,
        bytes_transferred: 0,
        source_bytes: 0,
        backup_bytes_added: 0,
        throughput_files_per_second: 0.0,
        throughput_bytes_per_second: 0.0,
        peak_rss_bytes: 0,
        phases: Phases::default(),
        problems: vec![],
        problems_not_listed: 0,
        warnings: vec![],
        one_file_system: opts.one_file_system,
        mount_points_skipped: 0,
        mount_points: vec![],
        notifications: vec![],
        bwlimit: None,
        bwlimit_wait_seconds: 0.0,
        pre_command: None,
        post_command: None,
        shards: None,
        repository: None,
        copy_of: None,
        log: None,
    }
}

/// `complete`, or `partial` when any entry had a problem.
fn walked_status(counters: &Counters) -> Status {
    if counters.problems_total.load(Ordering::Relaxed) > 0 {
        Status::Partial
    } else {
        Status::Complete
    }
}

/// Fills the report from the counters and the run's outcome.
fn conclude(rep: &mut RunReport, counters: &Counters, outcome: Result<Status>, t0: Instant) {
    counters.fill(rep);
    match outcome {
        Ok(status) => rep.status = status,
        Err(e) => {
            rep.status = Status::Failed;
            rep.message = e.to_string();
        }
    }
    finish_report(rep, t0);
}

pub(crate) fn finish_report(rep: &mut RunReport, t0: Instant) {
    let secs = t0.elapsed().as_secs_f64();
    rep.finished_at = Some(report::now_rfc3339());
    rep.duration_seconds = secs;
    rep.exit_code = rep.status.exit_code();
    let walk = rep.phases.walk_copy.seconds.max(1e-9);
    rep.throughput_files_per_second = rep.files_total as f64 / walk;
    rep.throughput_bytes_per_second = rep.bytes_transferred as f64 / walk;
    rep.peak_rss_bytes = report::peak_rss_bytes();
    if rep.message.is_empty() {
        rep.message = match rep.status {
            Status::Complete => format!(
                "{} files ({} copied, {} linked)",
                rep.files_total, rep.files_transferred, rep.files_linked
            ),
            Status::Partial => format!(
                "{} entries could not be backed up as they are; see problems",
                rep.errors
            ),
            Status::Incomplete => {
                "interrupted; nothing was published or rotated, the next run resumes".into()
            }
            _ => rep.message.clone(),
        };
    }
}

/// The source directory to back up (`source/prefix`), after the guards.
/// A missing source (or prefix, or a source symlink to nothing) does not begin a
/// store: there would be nothing in it but the record of this failure. Not asked
/// before a pre_command, which may be what mounts or makes it. A single-node run and
/// each shard worker ask it before they open (and so create) the store. Nor does a
/// source that is not a directory (a regular file given as `--source`): it made the
/// store, then failed.
pub(crate) fn refuse_to_begin_a_store(opts: &BackupOptions) -> Result<()> {
    if opts.pre_command.is_some() || opts.store.join(crate::store::META_DIR).is_dir() {
        return Ok(());
    }
    if std::fs::metadata(&opts.source).is_ok_and(|m| !m.is_dir()) {
        return Err(Error::SourceNotDir(opts.source.clone()));
    }
    let root = opts.tree_of(&opts.source);
    if std::fs::metadata(&root).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Err(Error::SourceMissing(root));
    }
    Ok(())
}

pub(crate) fn check_source(opts: &BackupOptions) -> Result<PathBuf> {
    let s = &opts.source;
    match std::fs::symlink_metadata(s) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::SourceMissing(s.clone()));
        }
        Err(e) => return Err(e).ctx("stat source", s),
        Ok(_) if !s.is_dir() => return Err(Error::SourceNotDir(s.clone())),
        Ok(_) => {}
    }
    if opts.require_mount && !is_mount_point(s)? {
        return Err(Error::NotMounted(s.clone()));
    }
    let root = match &opts.prefix {
        Some(p) => s.join(p.as_path()),
        None => s.clone(),
    };
    if !root.is_dir() {
        return Err(Error::SourceMissing(root));
    }
    Ok(root)
}

/// The prefix as the run records it: where it leads below the canonical source
/// `source` (a prefix that is a symlink recorded as its target, as the source is), so
/// that the next run of the label compares trees by what they were, not by where the
/// symlink leads now (retargeted, it would pass as the same tree and expire the
/// other's history). `None` (kept as given) when it does not resolve below `source`.
fn resolved_prefix(opts: &BackupOptions, source: &Path) -> Option<String> {
    let p = opts.prefix.as_ref()?;
    let real = std::fs::canonicalize(opts.source.join(p.as_path())).ok()?;
    let rel = real.strip_prefix(source).ok()?;
    use std::os::unix::ffi::OsStrExt;
    crate::relpath::RelPath::new(rel.as_os_str().as_bytes())
        .ok()
        .map(|r| r.escaped())
}

/// Whether `p` is a mount point, from /proc/self/mountinfo (falls back to comparing
/// devices with the parent).
pub fn is_mount_point(p: &Path) -> Result<bool> {
    let canon = std::fs::canonicalize(p).ctx("resolve", p)?;
    if let Ok(mounts) = fsx::mounts() {
        return Ok(mounts.iter().any(|m| m.point == canon));
    }
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata(&canon).ctx("stat", &canon)?;
    let parent = std::fs::metadata(canon.join("..")).ctx("stat", &canon)?;
    Ok(me.dev() != parent.dev() || me.ino() == parent.ino())
}

/// What a run starts from, once the guards passed.
struct Start {
    src_fd: OwnedFd,
    src_meta: fsx::Meta,
    prev: Option<Previous>,
    excludes: crate::exclude::Excludes,
}

/// Checks the source and opens it.
fn open_source(opts: &BackupOptions, prev: Option<Previous>) -> Result<Start> {
    let src_root = check_source(opts)?;
    let src_fd = fsx::open_dir(&src_root).ctx("open source", &src_root)?;
    let src_meta = fsx::fstat(b(&src_fd)).ctx("stat source", &src_root)?;
    let excludes = opts.exclude_settings()?.build()?;
    refuse_empty(opts, prev.as_ref(), (&src_fd, &src_root), &excludes)?;
    Ok(Start {
        src_fd,
        src_meta,
        prev,
        excludes,
    })
}

/// The empty-source guard (invariant 4): unless `allow_empty`, a source root `src` that
/// is empty while the previous snapshot is not is refused ([`Error::EmptySource`]: a
/// failed mount looks exactly like this), and so is one whose entries the exclusions
/// leave none of ([`Error::ExcludedAll`]: a pattern file matching everything would
/// expire history the same way). Shared by a run and a shard worker.
pub(crate) fn refuse_empty(
    opts: &BackupOptions,
    prev: Option<&Previous>,
    (src, src_root): (&OwnedFd, &Path),
    excludes: &crate::exclude::Excludes,
) -> Result<()> {
    let Some(p) = prev.filter(|p| p.has_entries && !opts.allow_empty) else {
        return Ok(());
    };
    if !fsx::dir_has_entries(b(src)).ctx("read source", src_root)? {
        return Err(Error::EmptySource {
            path: src_root.to_path_buf(),
            prev: p.name.clone(),
        });
    }
    let unset = opts.excludes.is_empty()
        && opts.exclude_from.is_empty()
        && !opts.exclude_caches
        && opts.exclude_if_present.is_empty();
    if unset {
        return Ok(());
    }
    let names = fsx::read_dir_names(b(src)).ctx("read source", src_root)?;
    if !names.is_empty()
        && excludes.leave_nothing_of(b(src), &crate::relpath::RelPath::root(), &names)
        // A root always tagged: the previous run backed up its tags alone (no more files
        // than they), and this run loses nothing.
        && excludes
            .keep_in(b(src), &names)
            .is_none_or(|k| p.expected_files.is_none_or(|n| n > k.len() as u64))
    {
        return Err(Error::ExcludedAll {
            path: src_root.to_path_buf(),
            prev: p.name.clone(),
            by: exclusions_named(opts),
        });
    }
    Ok(())
}

/// The exclusion options of `opts` as a user gave them (flags, or the config keys they
/// stand for), for a message: the pattern files by name, the first patterns given.
fn exclusions_named(opts: &BackupOptions) -> String {
    let mut v: Vec<String> = opts
        .exclude_from
        .iter()
        .map(|f| format!("--exclude-from {}", crate::relpath::shown(f)))
        .collect();
    v.extend(
        opts.excludes
            .iter()
            .take(3)
            .map(|p| format!("--exclude {p:?}")),
    );
    if opts.excludes.len() > 3 {
        v.push(format!("{} more --exclude", opts.excludes.len() - 3));
    }
    if opts.exclude_caches {
        v.push("--exclude-caches".into());
    }
    v.extend(
        opts.exclude_if_present
            .iter()
            .map(|t| format!("--exclude-if-present {t}")),
    );
    v.join(", ")
}

/// Picks the previous snapshot, then checks the source against it.
fn start<R: Repository>(opts: &BackupOptions, repo: &R, rep: &mut RunReport) -> Result<Start> {
    let prev = repo.previous(&opts.label)?;
    rep.based_on = prev
        .as_ref()
        .map(|p| p.run.clone().unwrap_or_else(|| p.name.clone()));
    let st = open_source(opts, prev)?;
    // After the source's own guards: a missing or unmounted source is told as such.
    continue_ring(opts, st.prev.as_ref(), rep)?;
    match &st.prev {
        Some(p) => tracing::info!(
            "unchanged files are linked from {} (run {}{})",
            p.name,
            rep.based_on.as_deref().unwrap_or("-"),
            if p.manifest.is_some() {
                ""
            } else {
                ", no manifest: compared by stat"
            }
        ),
        None => tracing::info!("no previous snapshot: this is a full copy"),
    }
    Ok(st)
}

/// A run continues its label's snapshots (`repo::continue_ring`): refused when they are
/// of another tree, and `rep.retain` set to what the rotation keeps.
fn continue_ring(opts: &BackupOptions, prev: Option<&Previous>, rep: &mut RunReport) -> Result<()> {
    // The prefix is recorded where it leads, as the source is: the label's next run
    // compares its tree with that, not with where a symlink leads by then.
    if let Some(p) = resolved_prefix(opts, &rep.source) {
        rep.prefix = Some(p);
    }
    let root = opts.tree_of(&rep.source);
    let (retain, warning) = crate::repo::continue_ring(
        prev,
        &opts.store,
        &opts.label,
        &root,
        opts.new_source,
        rep.retain,
        opts.retain_default,
    )?;
    rep.retain = retain;
    rep.warnings.extend(warning);
    Ok(())
}

/// How long a stopped walk (window ended, signal, fatal error) may take to return
/// before the run ends without it: a call stalled on a hung mount can take minutes,
/// and a backup window is a promise to the file system's other users.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the walk's waiting loop calls on each turn: `publish` with the walk's progress,
/// at most once per `PROGRESS_EVERY`.
fn ticker<'a>(
    id: String,
    started_at: String,
    counters: &'a Counters,
    expected: Option<u64>,
    t_walk: Instant,
    publish: &'a mut dyn FnMut(&RunProgress),
) -> impl FnMut() + 'a {
    let mut last: Option<Instant> = None;
    move || {
        if last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        last = Some(Instant::now());
        let e = t_walk.elapsed();
        publish(&super::progress::snapshot(
            &id,
            &started_at,
            counters,
            expected,
            e,
        ));
    }
}

/// How a walk ended.
struct Walked<S> {
    /// The sink back; `None` when the walk was abandoned on a stalled call (its
    /// workers still hold the sink; see `walk_into`).
    sink: Option<S>,
    fatal: Option<Error>,
    window_ended: bool,
    /// The root's metadata as the walk gave it to the snapshot ([`Walk::root_meta`]).
    root_meta: Option<fsx::Meta>,
}

impl<S> Walked<S> {
    /// The manifest's root entry: the root's stat the walk kept (the `fstat` after its
    /// listing when it changed since `before`, the source's `fstat` from before the
    /// walk), which is what the snapshot's root was given.
    fn root_entry(&self, before: &fsx::Meta) -> Entry {
        let mut e = Entry::from_meta(b".", self.root_meta.as_ref().unwrap_or(before));
        e.group = None;
        e
    }
}

/// How often a run rewrites its progress file while it walks.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Walks the source into `sink` on the run's workers, with the progress line and the
/// backup window beside it; `publish` gets the walk's progress about once a second
/// (from this thread).
///
/// The walk runs on a thread of its own that owns what it uses, so that the run can
/// end without it: once asked to stop, it has `STOP_GRACE` to return; a walk whose
/// workers are still stuck in a call then (a stalled NFS or FUSE server) is abandoned.
/// Its staging tree stays for the next run to resume, and `counters.walk_abandoned`
/// tells the caller to keep the store locked until the process exits (the stuck
/// workers may still write into staging when their call returns).
#[allow(clippy::too_many_arguments)]
fn walk_into<S: Sink + Send + 'static>(
    opts: &BackupOptions,
    st: Start,
    sink: S,
    counters: &Arc<Counters>,
    cancel: &AtomicBool,
    rep: &mut RunReport,
    publish: &mut dyn FnMut(&RunProgress),
    t_run: Instant,
) -> Walked<S> {
    let walk_start = report::now_rfc3339();
    let t_walk = Instant::now();
    let expected = st.prev.as_ref().and_then(|p| p.expected_files);
    let (id, started) = (rep.id.clone(), walk_start.clone());
    let mut tick = ticker(id, started, counters, expected, t_walk, publish);
    let stop = Arc::new(AtomicBool::new(false));
    let rx = match spawn_walk(opts, st, sink, counters, &stop, rep.based_on.clone()) {
        Ok(rx) => rx,
        Err(e) => {
            return Walked {
                sink: None,
                fatal: Some(e),
                window_ended: false,
                root_meta: None,
            };
        }
    };
    let done = AtomicBool::new(false);
    let (got, window_ended) = std::thread::scope(|s| {
        if opts.progress {
            s.spawn(|| super::progress::show(counters, expected, &done));
        }
        // From the run's start, not the walk's: its pre_command is inside the window.
        let got = super::progress::within_window(t_run, opts.window, cancel, || {
            wait_for_walk(&rx, cancel, &stop, &mut tick)
        });
        done.store(true, Ordering::Relaxed);
        got
    });
    rep.phases.walk_copy = phase(&walk_start, t_walk);
    tracing::info!(
        files = counters.files_total.load(Ordering::Relaxed),
        copied = counters.files_transferred.load(Ordering::Relaxed),
        linked = counters.files_linked.load(Ordering::Relaxed),
        problems = counters.problems_total.load(Ordering::Relaxed),
        "walk finished in {:.2}s",
        rep.phases.walk_copy.seconds
    );
    match got {
        Some((sink, fatal, root_meta)) => Walked {
            sink: Some(sink),
            fatal,
            window_ended,
            root_meta,
        },
        None => {
            counters.walk_abandoned.store(true, Ordering::Relaxed);
            Walked {
                sink: None,
                fatal: None,
                window_ended,
                root_meta: None,
            }
        }
    }
}

/// What the walk thread hands back: the sink, the first fatal error and the root's
/// metadata as its listing kept it ([`Walk::root_meta`]).
type WalkResult<S> = (S, Option<Error>, Option<fsx::Meta>);

/// Starts the walk on a thread of its own, which owns everything it uses (see
/// `walk_into`); its result arrives on the returned channel.
fn spawn_walk<S: Sink + Send + 'static>(
    opts: &BackupOptions,
    st: Start,
    sink: S,
    counters: &Arc<Counters>,
    stop: &Arc<AtomicBool>,
    based_on: Option<String>,
) -> Result<std::sync::mpsc::Receiver<WalkResult<S>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (counters, stop, jobs) = (counters.clone(), stop.clone(), opts.jobs);
    let one_fs = opts
        .one_file_system
        .then(|| crate::traverse::OneFs::new(st.src_meta.dev));
    // The store's identity, once: the walk does not enter it where another mount makes
    // it part of the source (the path check, `check_overlap`, cannot see that).
    let store = opts.store.clone();
    let fence = super::walk::store_fence(&store);
    let worker = move || {
        let manifest = st.prev.as_ref().and_then(|p| p.manifest.as_ref());
        let damaged = st.prev.as_ref().map(|p| &p.damaged);
        let record = st.prev.as_ref().and_then(|p| p.record.as_ref());
        let mut walk = Walk::new(&counters, &stop, &st.excludes, manifest, &sink)
            .kept_from(based_on)
            .damaged(damaged)
            .record(record)
            .fenced(&store, fence);
        if let Some(fs) = &one_fs {
            walk = walk.stay_on(fs);
        }
        walk.run(st.src_fd, st.src_meta, jobs);
        let fatal = walk.fatal.lock().unwrap_or_else(|e| e.into_inner()).take();
        let root_meta = walk.root_meta();
        drop(walk);
        if let Some(fs) = &one_fs {
            let m = fs.skipped();
            counters.mount_points(m.count, m.first.iter().map(|p| p.escaped()));
        }
        let _ = tx.send((sink, fatal, root_meta));
    };
    std::thread::Builder::new()
        .name("walk".into())
        .spawn(worker)
        .ctx("start the walk thread for", &opts.source)?;
    Ok(rx)
}

/// Waits for the walk thread's result, passing a cancel on to it (`stop`, which a
/// fatal error also sets); `None` if it has not returned `STOP_GRACE` after a stop.
fn wait_for_walk<T>(
    rx: &std::sync::mpsc::Receiver<T>,
    cancel: &AtomicBool,
    stop: &AtomicBool,
    tick: &mut dyn FnMut(),
) -> Option<T> {
    let mut stopping: Option<Instant> = None;
    loop {
        tick();
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(v) => return Some(v),
            // The walk thread panicked: its workers are gone, nothing holds the sink.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if cancel.load(Ordering::Relaxed) {
            stop.store(true, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) {
            let since = *stopping.get_or_insert_with(Instant::now);
            if since.elapsed() >= STOP_GRACE {
                tracing::error!(
                    "the walk did not stop within {}s of being asked to (a call to the source or the backup file system is stalled); ending the run without it",
                    STOP_GRACE.as_secs()
                );
                return None;
            }
        }
    }
}

/// A walk that stopped on a fatal error and did not return (its error is in the log).
fn stalled_error(opts: &BackupOptions) -> Error {
    Error::Store {
        path: opts.source.clone(),
        msg: format!(
            "the walk was stopped and did not return within {}s: a call to the source or the backup file system is stalled (see the log)",
            STOP_GRACE.as_secs()
        ),
    }
}

/// The message of a run stopped before publishing.
fn stopped_message(window_ended: bool) -> String {
    if window_ended {
        "backup window ended; nothing was published or rotated, the next run resumes from staging"
            .into()
    } else {
        "interrupted; nothing was published or rotated, the next run resumes from staging".into()
    }
}

/// The previous snapshot of this label, when it holds files (its record's count;
/// without a record, whether it holds anything): a walk that keeps none, or far fewer
/// ([`crate::error::shrank`]), is refused ([`no_files_left`]). Its name, and its
/// record's count of files when it has one and is of this label
/// ([`Previous::files_of_label`]). Not another label's (a new label's first run in a
/// shared store compares with the newest snapshot of any label).
fn prev_with_files(opts: &BackupOptions, prev: Option<&Previous>) -> Option<(String, Option<u64>)> {
    prev.filter(|p| {
        !opts.allow_empty && p.label_slots > 0 && p.expected_files.map_or(p.has_entries, |n| n > 0)
    })
    .map(|p| (p.name.clone(), p.files_of_label(&opts.label)))
}

/// [`Error::NoFilesLeft`] when the walk kept no file while `prev_with_files` (from
/// [`prev_with_files`]) holds files: a snapshot of empty directories would expire
/// history as an empty source would; [`Error::SourceShrank`] when it kept files, but
/// fewer than a tenth of the previous snapshot's (of at least 100:
/// [`crate::error::shrank`]), as a failed mount holding a marker file does.
fn no_files_left(
    opts: &BackupOptions,
    prev_with_files: Option<(String, Option<u64>)>,
    counters: &Counters,
) -> Option<Error> {
    let (prev, prev_files) = prev_with_files?;
    let kept = counters.files_total.load(Ordering::Relaxed);
    let by = || {
        if opts.exclude_settings().is_ok_and(|s| s.is_empty()) {
            String::new()
        } else {
            exclusions_named(opts)
        }
    };
    if kept != 0 {
        let prev_files = prev_files.filter(|&n| crate::error::shrank(n, kept))?;
        return Some(Error::SourceShrank {
            path: opts.tree_of(&opts.source),
            prev,
            prev_files,
            kept,
            by: by(),
            unread: counters.unread_dirs(),
        });
    }
    Some(Error::NoFilesLeft {
        path: opts.tree_of(&opts.source),
        prev,
        by: by(),
        unread: counters.unread_dirs(),
    })
}

/// Prints a dry run's plan where the options say.
pub fn print_plan(opts: &BackupOptions, plan: &Plan) {
    let mut w = plan_sink(opts);
    let _ = write!(w, "{plan}");
    let _ = w.flush();
}

/// A dry run: the same walk into a recording sink, and the rotation it would make,
/// printed as a plan.
fn run_dry<R: Repository>(
    opts: &BackupOptions,
    repo: &R,
    id: &str,
    counters: &Arc<Counters>,
    cancel: &AtomicBool,
    rep: &mut RunReport,
    t_run: Instant,
) -> Result<Status> {
    let st = start(opts, repo, rep)?;
    let sink = repo.dry_sink(st.prev.as_ref())?;
    let src_meta = st.src_meta;
    let prev_with_files = prev_with_files(opts, st.prev.as_ref());
    let w = walk_into(opts, st, sink, counters, cancel, rep, &mut |_| {}, t_run);
    let root = w.root_entry(&src_meta);
    if let Some(e) = w.fatal {
        return Err(e);
    }
    let Some(sink) = w.sink else {
        return Err(stalled_error(opts));
    };
    // The run would be refused (it used to print a plan that published and expired).
    if !cancel.load(Ordering::Relaxed)
        && let Some(e) = no_files_left(opts, prev_with_files, counters)
    {
        return Err(e);
    }
    let mut plan = sink.commit(&root).ctx("plan", &opts.store)?;
    let rotation = repo.plan_rotation(&opts.label, rep.retain, id, walked_status(counters))?;
    rep.expired = rotation.expired().to_vec();
    rep.warnings.extend(deferred_warnings(rotation.deferred()));
    rep.warnings
        .extend(kept_complete_warning(&rotation, rep.retain));
    plan.rotation = rotation.describe();
    // The rotation holds the snapshots it would expire: let go before printing (a plan
    // piped into a pager must not keep a restore waiting).
    drop(rotation);
    print_plan(opts, &plan);
    Ok(walked_status(counters))
}

/// The one message of a run into a store that keeps no owners (docs/stores.md).
pub fn owners_not_kept(store: &std::path::Path, (uid, gid): (u32, u32)) -> String {
    format!(
        "the store {} does not keep file owners: it refused to give a file another owner, although this process may (an NFS export with root_squash, the default, maps root to nobody), so every file of the snapshot is owned by {uid}:{gid}; the manifest records the source's owners, which the next backup compares (unchanged files are linked) and verify does not check; to keep owners, export the store with no_root_squash",
        crate::relpath::shown(store)
    )
}

/// The one message of a run into a store that keeps file times to `granularity` ns
/// only (docs/stores.md).
pub fn times_not_kept(store: &std::path::Path, granularity: u64) -> String {
    format!(
        "the store {} keeps file times to {} only (an NFS server or file system with coarse timestamps): the snapshot's files have their times truncated; the manifest records the source's exact times, which the next backup compares (unchanged files are linked), verify compares to {} and restore gives back",
        crate::relpath::shown(store),
        crate::fsx::granularity_words(granularity),
        crate::fsx::granularity_words(granularity),
    )
}

/// One run against `repo`, from the previous snapshot to the deletion of expired ones.
fn run<R: Repository>(
    opts: &BackupOptions,
    repo: &R,
    id: &str,
    counters: &Arc<Counters>,
    cancel: &AtomicBool,
    rep: &mut RunReport,
    t_run: Instant,
) -> Result<Status> {
    if opts.dry_run {
        return run_dry(opts, repo, id, counters, cancel, rep, t_run);
    }
    let st = start(opts, repo, rep)?;
    let leftovers = repo.leftovers()?;
    if let Some(n) = leftovers.last() {
        tracing::info!("resuming from the staging tree of interrupted run {n}");
    }
    let src_meta = st.src_meta;
    let sink = repo.begin(id, st.prev.as_ref(), &leftovers)?;
    if let Some(held) = sink.owners_held() {
        let w = owners_not_kept(&rep.store, held);
        tracing::warn!("{w}");
        rep.warnings.push(w);
    }
    if let Some(g) = sink.times_held() {
        let w = times_not_kept(&rep.store, g);
        tracing::warn!("{w}");
        rep.warnings.push(w);
    }
    let prev_with_files = prev_with_files(opts, st.prev.as_ref());
    let w = walk_with_progress(opts, repo, st, sink, counters, cancel, rep, t_run);
    let window_ended = w.window_ended;
    let root_entry = w.root_entry(&src_meta);
    let Some(sink) = w.sink else {
        // Stuck workers still hold the staging tree: leave it for the next run.
        if !window_ended && !cancel.load(Ordering::Relaxed) {
            return Err(stalled_error(opts));
        }
        rep.message = format!(
            "{}; a call to the file system was still stalled {}s later and was left behind",
            stopped_message(window_ended),
            STOP_GRACE.as_secs()
        );
        return Ok(Status::Incomplete);
    };
    if let Some(e) = w.fatal {
        sink.abandon();
        // A source gone: what was copied before stays for the next run to take over,
        // as an interrupted run's does (nothing of the store is wrong).
        if !matches!(e, Error::SourceLost { .. }) {
            discard_unpublished(opts, repo, id);
        }
        return Err(source_named(opts, e));
    }
    if !cancel.load(Ordering::Relaxed)
        && let Some(e) = source_gone(opts, &rep.source, &src_meta)
    {
        // Nothing is published nor rotated: the entries it could not read would be kept
        // from the previous snapshot, and the run would expire history as `partial`.
        sink.abandon();
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        sink.abandon();
        rep.message = stopped_message(window_ended);
        // On stderr too (as the report's other warnings): the run's summary is only
        // "incomplete: backup window ended", and this is what says why it never ends.
        let why = match window_ended {
            true => crate::report::GaveUp::Window,
            false => crate::report::GaveUp::Stopped,
        };
        for w in counters.given_up_warnings(why) {
            tracing::warn!("{w}");
            rep.warnings.push(w);
        }
        return Ok(Status::Incomplete);
    }
    let status = walked_status(counters);
    if let Some(e) = no_files_left(opts, prev_with_files, counters) {
        // Nothing is published: the walked tree goes (as a failed publish's does).
        drop(sink);
        discard_unpublished(opts, repo, id);
        return Err(e);
    }
    let name = match seal_and_publish(opts, repo, id, status, (sink, counters), &root_entry, rep) {
        Ok(name) => name,
        Err(e) => {
            // Until the journal is written nothing is published: discard the new tree
            // (a file system out of space or inodes gets them back for the run record
            // and the next run). A written journal needs the tree; the next command
            // rolls it forward.
            if !repo.needs_repair() {
                discard_unpublished(opts, repo, id);
            }
            return Err(e);
        }
    };
    tracing::info!(
        "published {name}; expired: {}",
        if rep.expired.is_empty() {
            "none".to_string()
        } else {
            rep.expired.join(", ")
        }
    );
    rep.snapshot = Some(name);
    let _ = crate::failpoint::hit("backup.after_publish");
    repo.tidy(&leftovers);
    delete_expired(opts, repo, t_run, cancel, rep);
    Ok(status)
}

/// [`Error::SourceLost`] of the walk (which knows paths in the source only) with the
/// source root named; any other error as it is.
fn source_named(opts: &BackupOptions, e: Error) -> Error {
    match e {
        Error::SourceLost { root: None, detail } => Error::SourceLost {
            root: Some(opts.tree_of(&opts.source)),
            detail,
        },
        e => e,
    }
}

/// Whether the source root the walk began at (`before`: its `fstat` then) is gone when
/// the walk ends (invariant 4; [`fsx::root_gone`]: gone, stale, EIO, or another
/// directory). `canonical`: the source as resolved at the start (a `--source` symlink
/// switched meanwhile is not a source gone). One call per run. A walk that met a lost
/// source on an entry failed before this (ENOTCONN, `Walk`).
fn source_gone(opts: &BackupOptions, canonical: &Path, before: &fsx::Meta) -> Option<Error> {
    let detail = fsx::root_gone(&opts.tree_of(canonical), (before.dev, before.ino))?;
    Some(Error::SourceLost {
        root: Some(opts.tree_of(&opts.source)),
        detail,
    })
}

/// `walk_into`, with its progress written to `repo` while it walks and removed after.
#[allow(clippy::too_many_arguments)]
fn walk_with_progress<R: Repository>(
    opts: &BackupOptions,
    repo: &R,
    st: Start,
    sink: R::Sink,
    counters: &Arc<Counters>,
    cancel: &AtomicBool,
    rep: &mut RunReport,
    t_run: Instant,
) -> Walked<R::Sink> {
    let mut warned = false;
    let mut publish = |p: &RunProgress| {
        if let Err(e) = repo.write_progress(p)
            && !std::mem::replace(&mut warned, true)
        {
            tracing::warn!("{e}; the run goes on without a progress file");
        }
    };
    let w = walk_into(opts, st, sink, counters, cancel, rep, &mut publish, t_run);
    repo.clear_progress();
    w
}

/// Seals the walked snapshot and publishes it with its rotation; returns its name.
fn seal_and_publish<R: Repository>(
    opts: &BackupOptions,
    repo: &R,
    id: &str,
    status: Status,
    (sink, counters): (R::Sink, &Counters),
    root_entry: &Entry,
    rep: &mut RunReport,
) -> Result<String> {
    let sync_start = report::now_rfc3339();
    let t_sync = Instant::now();
    let sealed = sink
        .commit(root_entry)
        .ctx("seal the new snapshot of", &opts.store)?;
    rep.phases.sync = phase(&sync_start, t_sync);
    crate::failpoint::hit("backup.before_publish").ctx("publish", &opts.store)?;
    // Planned after the flush: the rotation holds the snapshots it expires, and readers
    // wait for that hold, so it is taken only for the renames themselves.
    let rotation = repo.plan_rotation(&opts.label, rep.retain, id, status)?;
    rep.expired = rotation.expired().to_vec();
    rep.warnings.extend(deferred_warnings(rotation.deferred()));
    rep.warnings
        .extend(kept_complete_warning(&rotation, rep.retain));
    // The record, still `running`, with the walk's figures and what the rotation
    // expires, before the journal: a run killed during the rotation is published by the
    // next command, which sets only its status and name (it read `complete`, 0 files,
    // nothing expired). Not fatal: the publish goes on without it.
    let mut before = rep.clone();
    counters.fill(&mut before);
    if let Err(e) = repo.write_run(&before) {
        tracing::warn!("the run record keeps the walk's start until the end of the run: {e}");
    }
    let rot_start = report::now_rfc3339();
    let t_rot = Instant::now();
    let name = match repo.publish(id, status, &opts.label, rotation, sealed) {
        Ok(name) => name,
        // The journal is written: the run failed, but the next command publishes it
        // (the store says so, and whether its renames were done).
        Err(e @ Error::PublishPending { .. }) => return Err(e),
        Err(e) if repo.needs_repair() => {
            return Err(Error::PublishPending {
                snapshot: format!("{}.0", opts.label),
                renamed: false,
                source: Box::new(e),
            });
        }
        Err(e) => return Err(e),
    };
    rep.phases.rotation = phase(&rot_start, t_rot);
    Ok(name)
}

/// A failed run's unpublished tree: moved to trash, and the trash emptied, so the space
/// and inodes it took are free again. What cannot be done is left to the next run.
fn discard_unpublished<R: Repository>(opts: &BackupOptions, repo: &R, id: &str) {
    if let Err(e) = repo.discard(id) {
        tracing::warn!(
            "the failed run's staging tree stays for now ({e}); the next run resumes from it"
        );
        return;
    }
    if let Err(e) = repo.delete_expired(opts.jobs, &AtomicBool::new(false)) {
        tracing::warn!("trash not fully emptied yet ({e}); the next run continues");
    }
}

/// One warning per expiry a reader made the rotation defer.
fn deferred_warnings(deferred: &[String]) -> Vec<String> {
    deferred
        .iter()
        .map(|n| {
            let w = format!(
                "expiry of {n} deferred: a restore, diff, verify or list --space is reading it; kept past retain, a later run expires it"
            );
            tracing::warn!("{w}");
            w
        })
        .collect()
}

/// The warning of a rotation that keeps its label's newest complete snapshot past
/// `retain` ([`crate::repo::Rotation::kept_complete`]).
pub(crate) fn kept_complete_warning(rotation: &impl Rotation, retain: u32) -> Option<String> {
    let n = rotation.kept_complete()?;
    let w = format!(
        "{n} kept past retain {retain}: it is the newest complete snapshot and this run is partial (history is only removed when a newer complete snapshot exists); the next complete run expires it"
    );
    tracing::warn!("{w}");
    Some(w)
}

/// Deletes expired snapshots after publishing: it can fail or be cut short without
/// losing anything.
fn delete_expired<R: Repository>(
    opts: &BackupOptions,
    repo: &R,
    t_run: Instant,
    cancel: &AtomicBool,
    rep: &mut RunReport,
) {
    let rm_start = report::now_rfc3339();
    let t_rm = Instant::now();
    // The backup window covers the deletion too: what it cuts off stays in trash and
    // the next run goes on with it after publishing (it never delays a backup).
    let left = opts.window.map(|w| w.saturating_sub(t_run.elapsed()));
    if left == Some(Duration::ZERO) {
        tracing::warn!(
            "backup window ended before expired snapshots could be deleted; the next run continues"
        );
    } else {
        // The run's own cancel flag stops the deletion, whether a signal or the window
        // sets it; the status is settled already, so it cuts only this clean-up.
        // Watched from the run's start for the whole window (which the log names), not
        // from now for what is left of it.
        let (r, ended) = super::progress::within_window(t_run, opts.window, cancel, || {
            repo.delete_expired(opts.jobs, cancel)
        });
        if let Err(e) = r {
            // In the report too: something that stays undeletable (an immutable file)
            // fills the disk run after run, and only the log said so.
            let w =
                format!("expired snapshots not fully deleted yet ({e}); the next run continues");
            tracing::warn!("{w}");
            rep.warnings.push(w);
        } else if ended {
            tracing::warn!(
                "backup window ended while deleting expired snapshots; the next run continues"
            );
        }
    }
    rep.phases.remove_expired = phase(&rm_start, t_rm);
}

/// A dry run against a store that does not exist yet: everything would be copied.
fn run_dry_without_store(opts: &BackupOptions, id: &str, cancel: &AtomicBool) -> Result<RunReport> {
    let t0 = Instant::now();
    let mut rep = new_report(opts, id, &opts.store);
    let counters = Arc::new(Counters::default());
    let r = (|| {
        if let Ok(fd) = fsx::open_dir(&opts.store) {
            crate::store::refuse_foreign(&opts.store, &fd)?;
        }
        let st = open_source(opts, None)?;
        let sink = PlanSink::new(None);
        let src_meta = st.src_meta;
        let w = walk_into(opts, st, sink, &counters, cancel, &mut rep, &mut |_| {}, t0);
        let root = w.root_entry(&src_meta);
        if let Some(e) = w.fatal {
            return Err(e);
        }
        let Some(sink) = w.sink else {
            return Err(stalled_error(opts));
        };
        let mut plan = sink.commit(&root).ctx("plan", &opts.store)?;
        plan.rotation.push(format!("publish {}.0", opts.label));
        print_plan(opts, &plan);
        Ok(walked_status(&counters))
    })();
    conclude(&mut rep, &counters, r, t0);
    Ok(rep)
}
