//! One configured job, run once: the backup, recorded in the catalog, then its
//! notifications, then the outcome of those written back into the run record and the
//! catalog. Used by `snapring backup`, `snapring run JOB` and (through `snapring run`)
//! the daemon. The engine below knows nothing of the catalog or the notifiers: this
//! layer hooks the catalog into a run through `engine::Observer`. A restore is a run
//! too (`restore`): its own id, a log beside the catalog, a catalog row, notifications.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::config::{Config, JobConfig};
use crate::engine::progress::within_window;
use crate::engine::{BackupOptions, Observer};
use crate::error::{Error, Result};
use crate::notify;
use crate::report::RunReport;
use crate::restore::{RestoreOptions, RestoreReport};
use crate::store::Store;

/// The run catalog a job records its runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogTarget {
    pub path: PathBuf,
    /// Allow the catalog on NFS (SQLite's locks are unreliable there).
    pub on_nfs: bool,
}

/// The notifiers a job names, resolved from the config.
pub fn notifiers(cfg: &Config, job: &JobConfig) -> Vec<(String, notify::NotifierConfig)> {
    job.notify
        .iter()
        .filter_map(|n| cfg.notify.get(n).map(|c| (n.clone(), c.clone())))
        .collect()
}

/// Records a run in the catalog as it goes: a `running` row once it has started (with
/// the store's other runs the catalog still thinks are running), the final row at its
/// end. A catalog that cannot be written only adds a warning to the run.
pub struct CatalogRecorder<'a>(pub &'a CatalogTarget, AtomicBool);

impl<'a> CatalogRecorder<'a> {
    pub fn new(target: &'a CatalogTarget) -> Self {
        CatalogRecorder(target, AtomicBool::new(false))
    }
}

impl Observer for CatalogRecorder<'_> {
    fn started(&self, store: &Store, rep: &mut RunReport) {
        match crate::catalog::record_start(&self.0.path, self.0.on_nfs, store, rep) {
            Some(w) => rep.warnings.push(w),
            // Every run of the store is in the catalog now (those it had no row for
            // were imported): old run records may go.
            None => self.1.store(true, std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn history_kept(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn finished(&self, rep: &mut RunReport) {
        if let Some(w) = crate::catalog::record_quietly(&self.0.path, self.0.on_nfs, rep) {
            rep.warnings.push(w);
        }
    }
}

/// Runs one backup (`engine::backup`) and records it in `catalog` (`None`: no catalog):
/// `running` at its start, its outcome at its end. A dry run is not recorded.
pub fn run_backup(
    opts: &BackupOptions,
    catalog: Option<&CatalogTarget>,
    cancel: &AtomicBool,
) -> Result<RunReport> {
    match catalog {
        Some(c) => {
            refuse_vanished_store(opts, c)?;
            crate::engine::backup_observed(opts, cancel, &CatalogRecorder::new(c))
        }
        None => crate::engine::backup(opts, cancel),
    }
}

/// A store without `.snapring` that the catalog has runs with snapshots in: its file
/// system not mounted (an empty mount point), or the store removed. Refused before
/// anything is written: the run would begin a new store from scratch on whatever file
/// system is under the mount point, say `complete`, and the real store miss the run
/// (rsnapshot's `no_create_root` guards the same). Making `<store>/.snapring` by hand
/// begins a new store there on purpose.
pub fn refuse_vanished_store(opts: &BackupOptions, catalog: &CatalogTarget) -> Result<()> {
    let meta = opts.store.join(crate::store::META_DIR);
    if opts.dry_run {
        return Ok(());
    }
    // Missing is `ENOENT` only: any other error of the stat (a FUSE mount whose
    // process died, `ENOTCONN`; a hung NFS server's `EIO`) is what is wrong, and was
    // reported as "no store here … is the backup file system mounted?".
    let stat_error = match std::fs::symlink_metadata(&meta) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(e),
    };
    // The catalog's key for the store: its canonical path (its parent's, when the
    // store's own directory is not there either).
    let key = std::fs::canonicalize(&opts.store).ok().or_else(|| {
        let parent = opts.store.parent().filter(|p| !p.as_os_str().is_empty());
        let parent = std::fs::canonicalize(parent.unwrap_or(Path::new("."))).ok()?;
        Some(parent.join(opts.store.file_name()?))
    });
    let Some(key) = key else { return Ok(()) };
    // A catalog that does not open guards nothing, as it records nothing.
    let Ok(Some(c)) = crate::catalog::Catalog::open_read(&catalog.path) else {
        return Ok(());
    };
    let filter = crate::catalog::Filter {
        kind: Some("backup".into()),
        store: Some(key.clone()),
        ..Default::default()
    };
    let made: Vec<_> = c
        .runs(&filter)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.snapshot.is_some())
        .collect();
    let Some(newest) = made.last() else {
        return Ok(());
    };
    if let Some(e) = stat_error {
        return Err(Error::Store {
            path: opts.store.clone(),
            msg: format!(
                "cannot read {}: {e}, though {} run{} recorded in the catalog {} made snapshots in it, the newest {} ({}): its file system does not answer (a FUSE mount whose process died, an NFS server gone?). Nothing was written",
                crate::relpath::shown(&meta),
                made.len(),
                if made.len() == 1 { "" } else { "s" },
                crate::relpath::shown(&catalog.path),
                newest.id,
                newest.started_at,
            ),
        });
    }
    Err(Error::Store {
        path: opts.store.clone(),
        msg: format!(
            "no store here ({} is missing), though {} run{} recorded in the catalog {} made snapshots in it, the newest {} ({}): is the backup file system mounted? Nothing was written. If the store was removed on purpose, create {} to begin a new one there",
            crate::relpath::shown(&meta),
            made.len(),
            if made.len() == 1 { "" } else { "s" },
            crate::relpath::shown(&catalog.path),
            newest.id,
            newest.started_at,
            crate::relpath::shown(&meta),
        ),
    })
}

/// Runs the backup (`run_backup`), then the job's `post_command` (whatever the status),
/// then notifies (failures always, success if `notify_success`). The post command's and
/// the notifications' outcomes go into the report, the run record, the catalog and the
/// run log; they never change the run's status or exit code. A backup that could not
/// start (its store missing or in use, a setting refused) is recorded `failed`, its
/// post command run and notified all the same: [`NotStarted`] has its report.
pub fn run(
    opts: &BackupOptions,
    catalog: Option<&CatalogTarget>,
    notifiers: &[(String, notify::NotifierConfig)],
    notify_success: bool,
    cancel: &AtomicBool,
) -> std::result::Result<RunReport, NotStarted> {
    let t0 = std::time::Instant::now();
    let mut rep = match run_backup(opts, catalog, cancel) {
        Ok(r) => r,
        Err(error) if opts.dry_run => {
            return Err(NotStarted {
                error,
                report: None,
            });
        }
        Err(error) => {
            let report = not_started(opts, &error, t0, catalog, (notifiers, notify_success));
            return Err(NotStarted {
                error,
                report: Some(Box::new(report)),
            });
        }
    };
    if opts.dry_run {
        return Ok(rep);
    }
    let after = After {
        log: crate::store::log_path(&rep),
        record: true,
        env: Vec::new(),
    };
    conclude(opts, &mut rep, &after, catalog, notifiers, notify_success);
    Ok(rep)
}

/// A backup that could not start ([`run`]): why, and the `failed` report recorded,
/// post-commanded and notified for it (none for a dry run, which records nothing). The
/// caller prints the report where it prints a run's (`--json`, `--textfile`) and exits
/// as the error says (75 for a store in use).
#[derive(Debug)]
pub struct NotStarted {
    pub error: Error,
    pub report: Option<Box<RunReport>>,
}

/// A run refused before it could start (its job's config: an `exclude_from` file
/// gone, a store path that now leads into the source): recorded `failed` and notified
/// as [`not_started`] does, so a scheduled run that fails this early is not silent.
pub fn refused(
    opts: &BackupOptions,
    e: &crate::error::Error,
    catalog: Option<&CatalogTarget>,
    notifiers: &[(String, notify::NotifierConfig)],
    notify_success: bool,
) {
    not_started(
        opts,
        e,
        std::time::Instant::now(),
        catalog,
        (notifiers, notify_success),
    );
}

/// A backup that could not start: its store missing (the backup file system not
/// mounted), not a directory, not writable, or in use by another run; a setting the
/// engine refuses. No run record can go into the store, so the run is recorded
/// `failed` in the catalog, with its log beside it (as a restore's); its post command
/// runs (it runs whatever the status) and it is notified: failed runs always notify,
/// and a scheduled job whose store is gone is the failure its owners most need to hear
/// about. Returns the report; the caller still returns the error.
fn not_started(
    opts: &BackupOptions,
    e: &crate::error::Error,
    t0: std::time::Instant,
    catalog: Option<&CatalogTarget>,
    (notifiers, notify_success): (&[(String, notify::NotifierConfig)], bool),
) -> RunReport {
    let id = crate::engine::backup::new_run_id();
    let store = std::fs::canonicalize(&opts.store).unwrap_or_else(|_| opts.store.clone());
    let mut rep = crate::engine::backup::new_report(opts, &id, &store);
    if let Ok(src) = std::fs::canonicalize(&opts.source) {
        rep.source = src;
    }
    rep.status = crate::report::Status::Failed;
    rep.message = e.to_string();
    crate::engine::backup::finish_report(&mut rep, t0);
    if matches!(e, Error::Locked { .. }) {
        rep.exit_code = crate::report::EXIT_IN_USE;
    }
    let log = catalog_log(catalog, &id);
    if log.is_some() {
        tracing::info!(
            run = %id, source = %crate::relpath::shown(&rep.source), store = %crate::relpath::shown(&store),
            "backup could not start (snapring {} on {}): {e}", rep.version, rep.host
        );
    }
    rep.log = log.clone();
    let record = |rep: &RunReport| {
        if let Some(c) = catalog
            && let Some(w) = crate::catalog::record_quietly(&c.path, c.on_nfs, rep)
        {
            tracing::warn!("{w}");
        }
    };
    record(&rep);
    let notify = !notifiers.is_empty() && notify::wanted(rep.status, notify_success);
    if let Some(h) = &opts.post_command {
        let after = After {
            log: log.clone().unwrap_or_default(),
            record: false,
            env: Vec::new(),
        };
        rep.post_command = Some(post_command(h, &rep, &after));
    }
    if notify {
        let shown = log.clone().unwrap_or_default();
        rep.notifications =
            notify::send_notice(notifiers, &notify::Notice::backup_logged(&rep, &shown));
    }
    if notify || opts.post_command.is_some() {
        record(&rep);
    }
    if log.is_some() {
        crate::runlog::stop();
    }
    rep
}

/// Where [`conclude`] logs, and whether it records what it did.
pub struct After {
    /// The log its lines are appended to, and `SNAPRING_LOG` of the post command.
    pub log: PathBuf,
    /// Write the outcomes into the store's run record and the catalog. Not for a
    /// shard worker's own failure: the run's record is the finalizer's.
    pub record: bool,
    /// More variables for the post command (a shard worker's index and count).
    pub env: Vec<(&'static str, String)>,
}

/// Records a finalized shard run `rep` in the catalog at `c`, with the runs of its
/// store the catalog has no row for (as a single-node run's start does), then, if that
/// worked, removes the store's old run records and logs that `policy` lets go
/// (`store::runs`), as a single-node run does at its end: shard runs never pruned, so
/// a store backed up only by them kept every record. Under the store's lock, taken
/// once without waiting: a store held by another run is left to that run, which
/// prunes too. Returns the catalog's warning, if it could not be written (nothing is
/// pruned then: the records are the only history).
pub fn record_finalized(
    c: &CatalogTarget,
    rep: &RunReport,
    policy: &crate::store::runs::RunRetention,
) -> Option<String> {
    let store = match Store::open(Path::new(&rep.store), false) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("old run records not pruned: {e}");
            return crate::catalog::record_quietly(&c.path, c.on_nfs, rep);
        }
    };
    if let Some(w) = crate::catalog::record_start(&c.path, c.on_nfs, &store, rep) {
        return Some(w);
    }
    // `forever`: nothing to prune.
    policy.keep_for?;
    let holder = crate::store::lock::Holder {
        pid: std::process::id(),
        host: crate::util::hostname(),
        run: Some(rep.id.clone()),
        command: "finalize".into(),
        since: crate::util::now_rfc3339(),
    };
    match store.lock(&holder) {
        Ok(lock) => {
            store.prune_runs(policy, &rep.id, chrono::Utc::now());
            lock.release();
        }
        Err(e) => tracing::debug!("old run records left to the store's next run: {e}"),
    }
    None
}

/// Once a run (or a shard worker's part of one) has ended: the job's `post_command`
/// (whatever the status), then the notifications (failures always, success if
/// `notify_success`), their outcomes into `rep` and, with `after.record`, into the run
/// record and the catalog. Never changes the status.
pub fn conclude(
    opts: &BackupOptions,
    rep: &mut RunReport,
    after: &After,
    catalog: Option<&CatalogTarget>,
    notifiers: &[(String, notify::NotifierConfig)],
    notify_success: bool,
) {
    let notify = !notifiers.is_empty() && notify::wanted(rep.status, notify_success);
    if !notify && opts.post_command.is_none() {
        return;
    }
    let logging = opts.log_file && crate::runlog::start(&after.log).is_ok();
    if let Some(h) = &opts.post_command {
        // Not stopped by the signal that may have ended the run: an interrupted run
        // is one it must hear about. Its timeout bounds it.
        rep.post_command = Some(post_command(h, rep, after));
    }
    if notify {
        rep.notifications =
            notify::send_notice(notifiers, &notify::Notice::backup_logged(rep, &after.log));
    }
    let _ = crate::failpoint::hit("job.after_notify");
    if after.record {
        if let Ok(store) = Store::open(&opts.store, false)
            && let Err(e) = store.write_run(rep)
        {
            tracing::error!("{e}");
        }
        if let Some(c) = catalog
            && let Some(w) = crate::catalog::record_quietly(&c.path, c.on_nfs, rep)
        {
            rep.warnings.push(w);
        }
    }
    if logging {
        crate::runlog::stop();
    }
}

/// Runs `post_command` with the run's status, id, snapshot, job, store and log (and
/// `after.env`) in its environment and the report as JSON on stdin.
fn post_command(
    h: &crate::hooks::Hook,
    rep: &RunReport,
    after: &After,
) -> crate::report::HookOutcome {
    let mut env: Vec<(&str, std::ffi::OsString)> = vec![
        ("SNAPRING_STATUS", rep.status.as_str().into()),
        ("SNAPRING_RUN_ID", rep.id.clone().into()),
        (
            "SNAPRING_SNAPSHOT",
            rep.snapshot.clone().unwrap_or_default().into(),
        ),
        ("SNAPRING_JOB", rep.job.clone().unwrap_or_default().into()),
        // The paths as they are: a name that is not UTF-8 reaches the hook unchanged.
        ("SNAPRING_STORE", rep.store.clone().into_os_string()),
        ("SNAPRING_LOG", after.log.clone().into_os_string()),
    ];
    env.extend(after.env.iter().map(|(k, v)| (*k, v.into())));
    let json = serde_json::to_vec_pretty(rep).unwrap_or_default();
    crate::hooks::run("post_command", h, &env, &json, &AtomicBool::new(false))
}

/// How a restore is recorded and told about: the catalog (`None`: not recorded), the
/// configured job it runs for, and that job's notifiers.
#[derive(Default)]
pub struct RestoreRun<'a> {
    pub catalog: Option<&'a CatalogTarget>,
    pub job: Option<String>,
    pub notifiers: &'a [(String, notify::NotifierConfig)],
    pub notify_success: bool,
}

/// Runs one restore as a run: its own run id, a log file beside the catalog (the store
/// is never written), a row of kind `restore` in the catalog, then the job's
/// notifications (recorded too). A restore that cannot start (no such snapshot, a
/// target it cannot open) is recorded and notified as `failed`, and its error
/// returned. A dry run is only run: no id, no record, no log, no notification.
pub fn restore(
    opts: &RestoreOptions,
    run: &RestoreRun<'_>,
    cancel: &AtomicBool,
) -> Result<RestoreReport> {
    if opts.dry_run {
        return crate::restore::restore(opts, cancel);
    }
    recorded_restore(opts, run, || {
        refuse_catalog_inside(opts, run.catalog)?;
        crate::restore::restore(opts, cancel)
    })
}

/// `--mirror` deletes whatever the snapshot does not have under the restored directory:
/// the catalog this restore is recorded in, and the restore logs beside it (`logs/`,
/// this restore's own among them), must not be there (they were deleted, with every
/// run's history, and a new catalog begun; a `--to` of the logs directory deleted every
/// log). Refused before anything is written, as the store inside `--to` is: a restored
/// directory that holds the catalog's folder or its logs directory, or lies inside the
/// logs directory.
fn refuse_catalog_inside(
    opts: &crate::restore::RestoreOptions,
    catalog: Option<&CatalogTarget>,
) -> Result<()> {
    let Some(c) = catalog.filter(|_| opts.mode == crate::restore::Mode::Mirror) else {
        return Ok(());
    };
    // The restore's log is already started (`recorded_restore`), so the logs directory
    // exists when it can; a --to not made yet, or a catalog folder not made yet, holds
    // nothing to lose.
    let logs_at = crate::catalog::restore_log_path(&c.path, "x");
    let logs_at = logs_at.parent().unwrap_or(Path::new("."));
    let (Ok(to), Ok(dir)) = (
        std::fs::canonicalize(&opts.to),
        std::fs::canonicalize(logs_at.parent().unwrap_or(Path::new("."))),
    ) else {
        return Ok(());
    };
    let logs = std::fs::canonicalize(logs_at).unwrap_or_else(|_| dir.join("logs"));
    let root = match &opts.path {
        Some(p) if !opts.flat => to.join(p.as_path()),
        _ => to,
    };
    let what = if dir.starts_with(&root) {
        format!(
            "the catalog {} (with its restore logs) is there",
            crate::relpath::shown(&c.path)
        )
    } else if logs.starts_with(&root) || root.starts_with(&logs) {
        format!(
            "it is the catalog's restore log directory {} (or inside it), which holds the log of every restore recorded in {}, this one's too",
            crate::relpath::shown(&logs),
            crate::relpath::shown(&c.path)
        )
    } else {
        return Ok(());
    };
    Err(Error::Refused(format!(
        "--mirror deletes every entry under {} that the snapshot does not have, and {what}: it would delete the history this restore is recorded in; nothing was changed. Keep the catalog elsewhere (SNAPRING_CATALOG, or the config's catalog), restore somewhere else, or restore without --mirror",
        crate::relpath::shown(&root),
    )))
}

/// [`restore`]'s run around `body`, the restore itself: also a restore from a restic
/// repository (`opts.store` is then its URL), which the binary runs.
pub fn recorded_restore(
    opts: &RestoreOptions,
    run: &RestoreRun<'_>,
    body: impl FnOnce() -> Result<RestoreReport>,
) -> Result<RestoreReport> {
    let id = crate::engine::backup::new_run_id();
    let started_at = crate::util::now_rfc3339();
    let log = catalog_log(run.catalog, &id);
    tracing::info!(
        run = %id, store = %crate::relpath::shown(&opts.store), snapshot = %opts.snapshot, to = %crate::relpath::shown(&opts.to),
        "restore started by snapring {} on {}", env!("CARGO_PKG_VERSION"), crate::util::hostname()
    );
    let (mut r, err) = match body() {
        Ok(r) => (r, None),
        Err(e) => (
            RestoreReport::not_started(opts, started_at, e.to_string()),
            Some(e),
        ),
    };
    r.id = Some(id);
    r.job = run.job.clone();
    r.log = log.clone();
    log_restore(&r);
    record_restore(run.catalog, &mut r);
    if !run.notifiers.is_empty() && notify::wanted(r.status, run.notify_success) {
        r.notifications = notify::send_notice(run.notifiers, &notify::Notice::restore(&r));
        record_restore(run.catalog, &mut r);
    }
    if log.is_some() {
        crate::runlog::stop();
    }
    match err {
        Some(e) => Err(e),
        None => Ok(r),
    }
}

/// The log beside the catalog of a run recorded only there (a restore, a backup into a
/// repository, a backup that could not start), started; older such logs are pruned
/// first (`catalog::prune_logs`, said in this log). `None`: no catalog, or the log
/// cannot be written.
fn catalog_log(catalog: Option<&CatalogTarget>, id: &str) -> Option<PathBuf> {
    let c = catalog?;
    let log = crate::catalog::restore_log_path(&c.path, id);
    if !start_log(&log) {
        return None;
    }
    crate::catalog::prune_logs(&c.path, c.on_nfs, id, chrono::Utc::now());
    Some(log)
}

/// Starts a restore's log at `path` (its folder created private); false if it cannot.
fn start_log(path: &Path) -> bool {
    let dir = path.parent().unwrap_or(Path::new("."));
    let made = dir.is_dir() || crate::util::create_private_dir(dir, true).is_ok();
    match made.then(|| crate::runlog::start(path)) {
        Some(Ok(())) => true,
        _ => {
            tracing::warn!(
                "cannot write the restore's log {}",
                crate::relpath::shown(path)
            );
            false
        }
    }
}

/// The restore's outcome and conflicts (the first 1,000) in its log. Its problems are
/// in it already: each is logged when met (`Restore::problem`), as a backup's are.
fn log_restore(r: &RestoreReport) {
    for c in r.conflicts.iter().take(1000) {
        tracing::warn!(path = %c.path, "conflict: {}", c.reason);
    }
    tracing::info!(
        status = r.status.as_str(),
        files = r.files_restored,
        bytes = r.bytes_restored,
        conflicts = r.conflicts_total,
        errors = r.errors,
        seconds = r.duration_seconds,
        "restore finished: {}",
        r.message
    );
}

/// Records a restore in the catalog, if there is one; a failure becomes a warning.
fn record_restore(catalog: Option<&CatalogTarget>, r: &mut RestoreReport) {
    let Some(c) = catalog else { return };
    let res =
        crate::catalog::Catalog::open(&c.path, c.on_nfs).and_then(|mut cat| cat.record_restore(r));
    if let Err(e) = res {
        tracing::error!("{e}");
        r.warnings.push(e.to_string());
    }
}

/// A backup into a restic repository, as a job runs it.
#[derive(Clone, Debug)]
pub struct RepositoryJob {
    pub job: Option<String>,
    /// The directory to back up, or with `copy_of` the hard-link store to copy from.
    pub source: PathBuf,
    /// `snapring copy`: the store snapshot to copy (a name, run id, `latest`, @TIME).
    pub copy_of: Option<String>,
    /// `file:///PATH` or `s3://BUCKET/PREFIX`.
    pub dest: String,
    pub label: String,
    /// `--retain N`: restic `forget --keep-last N` on the label after the run.
    pub retain: Option<u32>,
    /// A copy's label when not given: the store snapshot's own.
    pub label_given: bool,
    /// The password's file (else the environment, `restic::password`). The password
    /// itself is never in the report, the log or the catalog.
    pub password_file: Option<PathBuf>,
    /// File-system calls in flight on the source (`--jobs`); 0: the default.
    pub jobs: usize,
    /// `--window`: the run stops at a safe point this long after it started, as on
    /// SIGTERM (`incomplete`, its packs indexed, no snapshot written).
    pub window: Option<std::time::Duration>,
    /// `--with-atime`: record real access times (else the mtime, as restic's default).
    pub with_atime: bool,
    /// `--one-file-system`: stay on the source's file system.
    pub one_file_system: bool,
    /// What is left out, the pattern files read (`crate::exclude::Settings`).
    pub exclusion: crate::exclude::Settings,
    /// `--allow-empty`: see `restic::backup::BackupOptions::allow_empty`.
    pub allow_empty: bool,
    /// `--host NAME` (the job's `host`, `SNAPRING_HOST`): see
    /// `restic::backup::BackupOptions::host`. `None`: this machine's hostname.
    pub host: Option<String>,
}

/// Runs a backup into a restic repository as a run like any other: its own run id, a
/// log beside the catalog (a repository has no `.snapring/`), a `running` row in the
/// catalog, then the final row with the repository's KPIs (bytes uploaded, objects
/// written, dedup ratio), then the job's notifications (recorded too). A repository
/// that cannot be opened (wrong password, no repository, no network) makes a `failed`
/// run, recorded and notified. Never fails itself: the outcome is the report.
pub fn run_repository(
    j: &RepositoryJob,
    catalog: Option<&CatalogTarget>,
    notifiers: &[(String, notify::NotifierConfig)],
    notify_success: bool,
    cancel: std::sync::Arc<AtomicBool>,
) -> RunReport {
    use crate::report::Status;
    use crate::restic;
    let id = crate::engine::backup::new_run_id();
    let log = catalog_log(catalog, &id);
    let mut rep = repository_report(j, &id);
    rep.log = log.clone();
    tracing::info!(
        run = %id, source = %crate::relpath::shown(&j.source), repository = %j.dest,
        "backup into a repository started by snapring {} on {}", env!("CARGO_PKG_VERSION"), rep.host
    );
    // Dead runs into repositories left `running` are settled first; this one holds its
    // marker while it runs, so that a later run can tell if it dies.
    let marker = catalog.and_then(|c| {
        if let Ok(mut cat) = crate::catalog::Catalog::open(&c.path, c.on_nfs) {
            crate::catalog::settle_repository_runs(&mut cat);
        }
        crate::catalog::RunningMarker::take(&c.path, &id)
    });
    if let Some(c) = catalog
        && let Some(w) = crate::catalog::record_quietly(&c.path, c.on_nfs, &rep)
    {
        rep.warnings.push(w);
    }
    let started = std::time::Instant::now();
    let mut copied = None;
    let stop = cancel.clone();
    let run = || -> restic::Result<restic::backup::BackupReport> {
        let backend = restic::backend::from_dest(&j.dest)?;
        // Watched before the first request: a hung S3 endpoint must not hold a stop
        // while the repository is being opened (`restic::s3`, "Each attempt").
        backend.watch_cancel(&cancel);
        let password = restic::password::resolve(j.password_file.as_deref())?;
        let mut repo = restic::repo::Repo::open_with(backend, &password)?;
        repo.use_user_cache();
        drop(password);
        let Some(spec) = &j.copy_of else {
            let opts = restic::backup::BackupOptions {
                source: j.source.clone(),
                label: j.label.clone(),
                retain: j.retain,
                cancel,
                jobs: j.jobs,
                with_atime: j.with_atime,
                before_forget: Some(crate::shard::repository::before_forget),
                one_file_system: j.one_file_system,
                exclusion: j.exclusion.clone(),
                allow_empty: j.allow_empty,
                host: j.host.clone(),
            };
            return restic::backup::backup(&mut repo, &opts);
        };
        let store = crate::store::Store::open_read(&j.source)
            .map_err(|e| restic::Error::Other(e.to_string()))?;
        let opts = restic::copy::CopyOptions {
            snapshot: spec.clone(),
            label: j.label_given.then(|| j.label.clone()),
            retain: j.retain,
            cancel,
            jobs: j.jobs,
            before_forget: Some(crate::shard::repository::before_forget),
        };
        let r = restic::copy::copy(&store, &mut repo, &opts)?;
        copied = Some((
            crate::report::CopiedFrom {
                store_snapshot: r.store_snapshot,
                run: r.run,
                already_copied: r.already_copied,
                reused_by_manifest: r.reused_by_manifest,
                reused_by_inode: r.reused_by_inode,
            },
            r.label,
        ));
        Ok(r.backup)
    };
    let (outcome, window_ended) = within_window(started, j.window, &stop, run);
    if let Some((c, label)) = &copied {
        rep.label = label.clone();
        rep.message = if c.already_copied {
            format!("{} (run {}) was copied before", c.store_snapshot, c.run)
        } else {
            String::new()
        };
    }
    match outcome {
        Ok(r) => fill_repository(&mut rep, &r, window_ended, copied.map(|(c, _)| c)),
        // Stopped (SIGINT/SIGTERM, the window) while it talked to the repository: the
        // request given up, or one that failed and was not retried, is the stop's.
        Err(e) if stop.load(std::sync::atomic::Ordering::Relaxed) => {
            rep.status = Status::Incomplete;
            let why = match e {
                restic::Error::Cancelled => String::new(),
                e => format!(" ({e})"),
            };
            rep.message = format!(
                "{}{why}: no snapshot written",
                if window_ended {
                    "backup window ended"
                } else {
                    "interrupted"
                }
            );
        }
        Err(e) => {
            rep.status = Status::Failed;
            rep.message = e.to_string();
        }
    }
    let secs = finished(&mut rep, started);
    if rep.status == Status::Failed && crate::restic::lock::is_conflict_message(&rep.message) {
        rep.exit_code = crate::report::EXIT_IN_USE;
    }
    if secs > 0.0 {
        rep.throughput_files_per_second = rep.files_total as f64 / secs;
        rep.throughput_bytes_per_second = rep.bytes_transferred as f64 / secs;
    }
    for p in rep.problems.iter().take(1000) {
        tracing::warn!(path = %p.path, action = %p.action, error = %p.error, "{:?}", p.kind);
    }
    tracing::info!(
        status = rep.status.as_str(),
        files = rep.files_total,
        bytes_uploaded = rep.backup_bytes_added,
        seconds = secs,
        "backup into a repository finished: {}",
        rep.message
    );
    // The outcome is known: a run killed from here on (while it notifies) is settled
    // as it ended, not as one that wrote no snapshot.
    if let Some(m) = &marker {
        m.note(&rep);
    }
    if !notifiers.is_empty() && notify::wanted(rep.status, notify_success) {
        rep.notifications = notify::send_all(notifiers, &rep);
    }
    let unrecorded = catalog.and_then(|c| crate::catalog::record_quietly(&c.path, c.on_nfs, &rep));
    match (marker, unrecorded) {
        // The final row could not be written (the catalog locked past the busy wait,
        // damaged, full): the report stays in the marker, which is let go, for the next
        // command that writes the catalog to record (`settle_repository_runs`) and for
        // serve to show. Removed, the row stayed `running` for ever.
        (Some(m), Some(w)) => {
            m.note(&rep);
            rep.warnings.push(format!(
                "{w}; its report is kept in {} for the next command that writes the catalog to record",
                m.path().display()
            ));
            m.leave();
        }
        (Some(m), None) => m.finish(),
        (None, Some(w)) => rep.warnings.push(w),
        (None, None) => {}
    }
    if log.is_some() {
        crate::runlog::stop();
    }
    rep
}

/// One worker of a shard run into a repository (`shard::repository`) as a run: the
/// worker that publishes records the run (its id is the shard run's) in the catalog,
/// with the run's figures and each worker's, and sends the job's notifications (a
/// failure always, success with `notify_success`); a worker that fails (exit 1), or is
/// stopped while it builds a unit, tells the notifiers about its own part, unrecorded
/// (the run's record is the publisher's). A worker that only waited, or found the
/// repository locked (exit 75) or was started wrongly (exit 64), says nothing.
pub fn run_repository_worker(
    j: &RepositoryJob,
    spec: &crate::shard::Spec,
    catalog: Option<&CatalogTarget>,
    notifiers: &[(String, notify::NotifierConfig)],
    notify_success: bool,
    cancel: std::sync::Arc<AtomicBool>,
) -> Result<crate::shard::repository::WorkerReport, crate::shard::ShardError> {
    use crate::report::{ShardSummary, Status, WorkerKpi};
    use crate::restic;
    use crate::shard::{ShardError, repository};
    let started = std::time::Instant::now();
    let failed = crate::shard::sort_repo_err;
    let watched = cancel.clone();
    let run = || {
        let backend = restic::backend::from_dest(&j.dest).map_err(failed)?;
        backend.watch_cancel(&cancel);
        let password = restic::password::resolve(j.password_file.as_deref()).map_err(failed)?;
        let mut repo = restic::repo::Repo::open_with(backend, &password).map_err(failed)?;
        repo.use_user_cache();
        drop(password);
        let opts = repository::Options {
            source: j.source.clone(),
            label: j.label.clone(),
            retain: j.retain,
            jobs: crate::concurrency::resolve(j.jobs, &[&j.source]),
            cancel,
            one_file_system: j.one_file_system,
            exclusion: j.exclusion.clone(),
            allow_empty: j.allow_empty,
        };
        repository::work(&mut repo, spec, &opts)
    };
    let (outcome, window_ended) = within_window(started, j.window, &watched, run);
    let mut rep = repository_report(j, &spec.run_id);
    let who = format!("worker {} of {}", spec.index, spec.count);
    let record = match &outcome {
        Ok(w) => match (&w.published, w.interrupted_units.as_slice()) {
            (Some(r), _) => {
                fill_repository(&mut rep, r, false, None);
                if let Some(t) = &w.totals {
                    rep.shards = Some(ShardSummary {
                        workers: spec.count,
                        units: t.units as usize,
                        takeovers: t.takeovers,
                        per_worker: t
                            .per_worker
                            .iter()
                            .map(|p| WorkerKpi {
                                index: p.worker,
                                units: p.units as usize,
                                files_total: p.files,
                                files_transferred: p.files_read,
                                bytes_transferred: p.bytes_read,
                                seconds: p.seconds,
                                ..Default::default()
                            })
                            .collect(),
                        expired_by_finalize: 0,
                    });
                }
                true
            }
            (None, [_, ..]) => {
                let units = w.interrupted_units.join(", ");
                let (s, them) = match w.interrupted_units.len() {
                    1 => ("", "it"),
                    _ => ("s", "them"),
                };
                rep.status = Status::Incomplete;
                rep.message = format!(
                    "{who}: {} while it built unit{s} {units}; the other workers or a rerun of this one build {them}",
                    if window_ended {
                        "backup window ended"
                    } else {
                        "interrupted"
                    }
                );
                false
            }
            (None, []) => return outcome,
        },
        Err(e @ ShardError::Failed(_)) => {
            rep.status = Status::Failed;
            rep.message = format!("{who}: {e}");
            false
        }
        Err(_) => return outcome,
    };
    finished(&mut rep, started);
    tracing::info!(
        status = rep.status.as_str(),
        run = %spec.run_id,
        "shard run into a repository: {who}: {}",
        rep.message
    );
    if !notifiers.is_empty() && notify::wanted(rep.status, notify_success) {
        rep.notifications = notify::send_all(notifiers, &rep);
    }
    if record
        && let Some(c) = catalog
        && let Some(w) = crate::catalog::record_quietly(&c.path, c.on_nfs, &rep)
    {
        tracing::warn!("{w}");
    }
    outcome
}

/// Stamps a repository run's report as finished now: exit code, end time, duration
/// (all of it the walk's), peak memory. Returns the seconds since `started`.
fn finished(rep: &mut RunReport, started: std::time::Instant) -> f64 {
    let secs = started.elapsed().as_secs_f64();
    rep.exit_code = rep.status.exit_code();
    rep.finished_at = Some(crate::util::now_rfc3339());
    rep.duration_seconds = secs;
    rep.phases.walk_copy.seconds = secs;
    rep.peak_rss_bytes = crate::util::peak_rss_bytes();
    secs
}

/// A repository run's report filled in from the backup's: status and message, the
/// figures and the repository's KPIs.
fn fill_repository(
    rep: &mut RunReport,
    r: &crate::restic::backup::BackupReport,
    window_ended: bool,
    copied_from: Option<crate::report::CopiedFrom>,
) {
    use crate::report::{Problem, ProblemKind, RepositoryKpis, Status};
    rep.status = match r.status.as_str() {
        "complete" => Status::Complete,
        "partial" => Status::Partial,
        _ => Status::Incomplete,
    };
    rep.message = match rep.status {
        Status::Partial => format!("{} entries could not be backed up", r.problems.len()),
        _ if !rep.message.is_empty() => rep.message.clone(),
        Status::Incomplete => format!(
            "{}: no snapshot written; {} packs kept and indexed for the next run",
            if window_ended {
                "backup window ended"
            } else {
                "interrupted"
            },
            r.added.packs
        ),
        _ => String::new(),
    };
    let written = !r.snapshot.is_empty();
    rep.snapshot = written.then(|| r.snapshot.clone());
    rep.based_on = r.parent.clone();
    rep.files_total = r.files;
    rep.dirs_total = r.dirs;
    rep.files_transferred = r.files_read;
    rep.files_linked = r.files_unchanged;
    rep.bytes_total = r.bytes_total;
    rep.source_bytes = r.bytes_total;
    rep.bytes_transferred = r.bytes_read;
    rep.backup_bytes_added = r.bytes_uploaded;
    rep.errors = r.problems.len() as u64;
    rep.problems = r
        .problems
        .iter()
        .map(|p| Problem {
            path: p.path.clone(),
            // `unreadable`, `vanished` or `store_in_source`.
            kind: serde_json::from_value(serde_json::Value::String(p.kind.clone()))
                .unwrap_or(ProblemKind::Unreadable),
            action: p.action.clone(),
            error: p.error.clone(),
        })
        .collect();
    if let Some(f) = &r.retention {
        rep.expired = f.plan.forgotten().map(|v| v.id.clone()).collect();
    }
    rep.warnings.extend(r.warnings.iter().cloned());
    rep.mount_points_skipped = r.mount_points_skipped;
    rep.mount_points = r.mount_points.clone();
    rep.repository = Some(RepositoryKpis {
        snapshot_id: r.snapshot.clone(),
        parent: r.parent.clone(),
        files_read: r.files_read,
        files_unchanged: r.files_unchanged,
        bytes_read: r.bytes_read,
        bytes_uploaded: r.bytes_uploaded,
        objects_written: r.objects_written,
        packs_written: r.added.packs,
        data_blobs_added: r.added.data_blobs,
        tree_blobs_added: r.added.tree_blobs,
        dedup_ratio: r.dedup_ratio,
        retention: r
            .retention
            .as_ref()
            .and_then(|f| serde_json::to_value(f).ok()),
        retention_skipped: r.retention_skipped.clone(),
        copied_from,
    });
}

/// A repository run's report as it starts (`running`).
fn repository_report(j: &RepositoryJob, id: &str) -> RunReport {
    let mut o = BackupOptions::new(j.source.clone(), PathBuf::from(&j.dest));
    o.job = j.job.clone();
    o.label = j.label.clone();
    o.retain = j.retain.unwrap_or(0);
    o.jobs = 1;
    o.window = j.window;
    o.one_file_system = j.one_file_system;
    let mut r = crate::engine::backup::new_report(&o, id, Path::new(&j.dest));
    r.exclusion = j.exclusion.clone();
    r.source = std::fs::canonicalize(&j.source).unwrap_or_else(|_| j.source.clone());
    r.copy_of = j.copy_of.clone();
    r
}
