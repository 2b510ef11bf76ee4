//! The commands on a restic repository (`--dest file:///PATH` or `s3://BUCKET/PREFIX`):
//! `init`, `backup` (with `--retain`), `list`, `restore`, `forget`, `prune`, `repair index`, `copy`
//! from a hard-link store, and the read-only `verify`, `diff` and `history PATH`. Flags a restic repository does not take yet are
//! refused rather than ignored. The password comes from `snapring::restic::password`,
//! never printed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use snapring::restic::{self, backend, ops, repo::Repo};

use snapring::config;
use snapring::report::{RunReport, Status};

use super::args::{
    BackupArgs, CopyArgs, DiffArgs, FinalizeArgs, ForgetArgs, HistoryArgs, InitArgs, ListArgs,
    PruneArgs, RepairIndexArgs, RestoreArgs, ShardRunArgs, VerifyArgs,
};
use super::catalog_choice::CatalogChoice;
use super::exit_code::{ExitCode, usage};
use super::print::{self, human, outln};

/// Is `dest` a restic repository's URL?
pub fn is_repo(dest: Option<&Path>) -> bool {
    // restic's `s3:http://HOST/BUCKET/PREFIX` goes where a repository is opened, which
    // refuses it naming snapring's form (`backend::restic_syntax`), not to a local path.
    dest.and_then(|d| d.to_str()).is_some_and(|d| {
        d.starts_with("file://") || d.starts_with("s3://") || backend::restic_syntax(d).is_some()
    })
}

/// Opens the repository with the user's tree cache (`restic::cache`). `cancel`: the
/// command's cancel flag (`cancel_on_signal`), if it stops cleanly on a signal; the
/// backend watches it from the start (`Backend::watch_cancel`: a throttled S3 wait
/// ends when it is set).
fn open(
    dest: &Path,
    password_file: Option<&Path>,
    cancel: Option<&Arc<AtomicBool>>,
) -> anyhow::Result<Repo> {
    let mut repo = open_uncached(dest, password_file, cancel)?;
    repo.use_user_cache();
    Ok(repo)
}

/// Opens the repository without the tree cache: `verify` re-reads every blob from the
/// repository itself, so a tree whose pack is damaged or gone is found even when a
/// good copy sits in the cache.
fn open_uncached(
    dest: &Path,
    password_file: Option<&Path>,
    cancel: Option<&Arc<AtomicBool>>,
) -> anyhow::Result<Repo> {
    let (b, pw) = backend_and_password(dest, password_file, cancel)?;
    Ok(Repo::open_with(b, &pw)?)
}

/// The backend of `dest`, stopped by `cancel`, and the password to open it with.
fn backend_and_password(
    dest: &Path,
    password_file: Option<&Path>,
    cancel: Option<&Arc<AtomicBool>>,
) -> anyhow::Result<(
    Arc<dyn restic::backend::Backend>,
    restic::password::Password,
)> {
    let b = backend::from_dest(&dest.to_string_lossy())?;
    if let Some(c) = cancel {
        b.watch_cancel(c);
    }
    Ok((b, restic::password::resolve(password_file)?))
}

/// Opens the repository without reading its index: for a command that touches no
/// blob (`forget` removes snapshot files only), whose memory would otherwise grow with
/// the repository's files (the index of 300,000 files is ~100 MiB in memory).
fn open_unindexed(
    dest: &Path,
    password_file: Option<&Path>,
    cancel: Option<&Arc<AtomicBool>>,
) -> anyhow::Result<Repo> {
    let (b, pw) = backend_and_password(dest, password_file, cancel)?;
    Ok(Repo::open_unindexed_with(b, &pw)?)
}

/// A repository opened for a command that only reads, under a shared lock
/// (`restic::lock::acquire_reader`: a prune cannot start meanwhile), its index brought
/// up to date under that lock (a prune that ended between the opening and the lock
/// moved blobs). `cached`: with the user's tree cache.
fn open_reading(
    dest: &Path,
    password_file: Option<&Path>,
    cached: bool,
    cancel: Option<&Arc<AtomicBool>>,
) -> anyhow::Result<(Repo, Option<restic::lock::Guard>)> {
    let mut repo = match cached {
        true => open(dest, password_file, cancel)?,
        false => open_uncached(dest, password_file, cancel)?,
    };
    let lock = restic::lock::acquire_reader(&repo);
    repo.refresh_index()?;
    Ok((repo, lock))
}

/// `snapring init --dest file:///PATH|s3://BUCKET/PREFIX`.
pub fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    let b = backend::from_dest(&a.dest)?;
    // A hard-link store or a directory holding data (a source) is refused: `init` made
    // a repository inside either (the config checked first: a repository there is
    // "already holds a repository").
    if let Some(dir) = b.local_root()
        && b.read_config()?.is_none()
        && let Some(why) = backend::unfit_for_init(dir)
    {
        return Err(snapring::restic::Error::Other(format!(
            "{}: no repository was created: {why}",
            dir.display()
        ))
        .into());
    }
    let pw = restic::password::resolve(a.password_file.as_deref())?;
    pw.check_for_a_new_key()?;
    let cancel = super::cancel_on_signal();
    b.watch_cancel(&cancel);
    let at = b.location();
    let r = ops::init(b.as_ref(), &pw, &cancel);
    let config = match stopped(r, &cancel, &format!("no repository was created at {at}"))? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if a.json {
        print::json(
            &serde_json::json!({ "repository": at, "id": config.id, "version": config.version }),
        )?;
    } else {
        outln!("created restic repository {} at {at}", &config.id[..10]);
    }
    Ok(ExitCode::Complete)
}

/// `snapring backup` or `snapring run` of a job whose `dest` (flag, else the config
/// file's job) is a restic repository; `None` when it is not one. The run goes through
/// `snapring::job::run_repository`: catalog, run log and notifications as for any run.
/// Settings a repository does not take yet are refused rather than ignored.
/// A scale-out worker (`--shard`, `--run-id`, or an engine's index variable): into a
/// repository it is one worker of a shard run (`shard_worker`, docs/scale-out.md "Into
/// a restic repository"), not a backup of the whole source.
fn is_shard_worker(a: &BackupArgs) -> bool {
    let env = |k: &str| std::env::var(k).ok();
    a.shard.is_some()
        || a.run_id.is_some()
        || !matches!(
            snapring::shard::detect(a.shard.as_deref(), a.shards, a.run_id.as_deref(), &env),
            Ok(None)
        )
}

pub fn backup_job(a: &BackupArgs, cat: &CatalogChoice) -> anyhow::Result<Option<ExitCode>> {
    let mut file_catalog = None;
    let mut notifiers = Vec::new();
    let mut notify_success = false;
    let (name, file) = match &a.config {
        Some(path) => {
            let cfg = super::backup::config_of(a, path)?;
            let (n, j) = cfg
                .pick(a.job.as_deref())
                .map_err(super::config::job_usage)?;
            file_catalog = cfg.catalog.clone();
            notifiers = cfg.notifiers_of(&n, &j)?;
            notify_success = j.notify_success.unwrap_or(false);
            (Some(n), j)
        }
        None => (a.job.clone(), Default::default()),
    };
    let f: config::JobConfig = file;
    let dest = a.dest.clone().or(f.dest.clone());
    // The flag, else SNAPRING_HOST, else the job's `host`. The flag and the key are
    // refused where they do not apply (a hard-link store, a shard worker); the variable
    // is left alone there: set for a whole machine, pod or daemon, it must not fail the
    // store jobs beside the repository ones.
    let env_host = std::env::var("SNAPRING_HOST")
        .ok()
        .filter(|h| !h.is_empty());
    let applies = is_repo(dest.as_deref()) && !is_shard_worker(a);
    if let Some(h) = &env_host
        && applies
        && a.host.is_none()
    {
        snapring::engine::options::check_host(h).map_err(|e| usage!("SNAPRING_HOST: {e}"))?;
    }
    let given = a.host.clone().or(f.host.clone());
    if let Some(h) = &given {
        snapring::engine::options::check_host(h).map_err(|e| usage!("--host: {e}"))?;
        if !is_repo(dest.as_deref()) {
            // A hard-link store has no hostname lineage: its snapshots follow the
            // label's rotation whatever the machine (as with_atime, refused).
            return Err(usage!(
                "host (--host or the job's `host`) applies to a restic repository \
                 (--dest file:///PATH or s3://BUCKET/PREFIX) only: a hard-link store's \
                 snapshots do not depend on the hostname"
            ));
        }
        if is_shard_worker(a) {
            return Err(usage!(
                "host (--host or the job's `host`) does not apply to a shard worker: a \
                 shard run's plan names its parent from any host and its snapshot records \
                 the lineage's hostname (docs/scale-out.md)"
            ));
        }
    }
    let host = match a.host.clone() {
        Some(h) => Some(h),
        None => env_host.filter(|_| applies).or(f.host.clone()),
    };
    if !is_repo(dest.as_deref()) {
        if a.with_atime || f.with_atime.is_some() {
            bail!(
                "with_atime (--with-atime or the job's `with_atime`) applies to a restic \
                 repository (--dest file:///PATH or s3://BUCKET/PREFIX) only"
            );
        }
        return Ok(None);
    }
    let unsupported = [
        (a.folder.is_some() || f.folder.is_some(), "folder"),
        (a.prefix.is_some() || f.prefix.is_some(), "prefix"),
        (a.dry_run, "dry-run"),
        (
            a.require_mount || f.require_mount == Some(true),
            "require_mount",
        ),
        (a.bwlimit.is_some() || f.bwlimit.is_some(), "bwlimit"),
        (
            is_shard_worker(a) && (a.with_atime || f.with_atime == Some(true)),
            "with_atime",
        ),
        (
            a.pre_command.is_some() || f.pre_command.is_some(),
            "pre_command",
        ),
        (
            a.post_command.is_some() || f.post_command.is_some(),
            "post_command",
        ),
        (f.keep_run_records.is_some(), "keep_run_records"),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(set, _)| *set) {
        bail!(
            "{what} (--{} or the job's `{what}`) is not supported with a restic repository yet",
            what.replace('_', "-")
        );
    }
    let file_job = a.config.as_ref().map(|_| f.clone());
    // Every exclusion setting, the pattern files read now: a bad one is a usage error
    // before anything runs.
    let exclusion = super::backup::exclusion(a, &f)?;
    let source = a
        .source
        .clone()
        .or(f.source)
        .context("no source: give --source or set source in the job")?;
    // A file:// repository inside the source (not excluded), or the source inside it
    // or equal to it, is refused before anything runs, as `config check` refuses it in
    // a job and as a store there is: the backup would back itself up.
    if let Some(p) = dest
        .as_deref()
        .and_then(|d| d.to_str())
        .and_then(|d| d.strip_prefix("file://"))
    {
        snapring::engine::options::check_repository_overlap(
            &source,
            std::path::Path::new(p),
            &exclusion.excludes,
            |rel| format!("--exclude '/{rel}/'"),
        )
        .map_err(|m| usage!("backup --dest file://{p} refused: {m}"))?;
    }
    let window = match a.window.as_deref().or(f.window.as_deref()) {
        Some(w) => {
            let d =
                snapring::util::parse_duration(w).map_err(|e| anyhow::anyhow!("--window: {e}"))?;
            snapring::engine::options::check_window(d)
                .map_err(|e| anyhow::anyhow!("--window: {e}"))?;
            Some(d)
        }
        None => None,
    };
    let retain = a.retain.or(f.retain);
    if retain == Some(0) {
        bail!("--retain 0 would forget every snapshot of the label; give 1 or more");
    }
    let job = snapring::job::RepositoryJob {
        job: name,
        source,
        dest: dest.expect("is_repo").to_string_lossy().into_owned(),
        label: a
            .label
            .clone()
            .or(f.label)
            .unwrap_or_else(|| "daily".into()),
        retain,
        copy_of: None,
        label_given: true,
        password_file: a.password_file.clone().or(f.password_file),
        jobs: a.jobs.or(f.jobs).unwrap_or(0),
        window,
        with_atime: a.with_atime || f.with_atime.unwrap_or(false),
        one_file_system: a.one_file_system || f.one_file_system.unwrap_or(false),
        exclusion,
        allow_empty: a.allow_empty || f.allow_empty.unwrap_or(false),
        host,
    };
    let catalog = cat
        .for_config(file_catalog)
        .map(|path| snapring::job::CatalogTarget {
            path,
            on_nfs: cat.on_nfs,
        });
    if is_shard_worker(a) {
        return shard_worker(a, &job, catalog.as_ref(), &notifiers, notify_success).map(Some);
    }
    let r = snapring::job::run_repository(
        &job,
        catalog.as_ref(),
        &notifiers,
        notify_success,
        super::cancel_on_signal(),
    );
    if let Some(dir) = &a.textfile {
        let cat = catalog.as_ref().map(|c| c.path.as_path());
        if let Err(e) = snapring::serve::textfile::write(dir, &r, file_job.as_ref(), cat) {
            print::errln!("snapring: warning: {e}");
        }
    }
    if a.json {
        print::json(&r)?;
        if r.status == Status::Failed {
            print::errln!("snapring: backup failed: {}", r.message);
        }
    } else {
        print_run(&r);
    }
    Ok(Some(run_exit_code(&r)))
}

/// A run's exit code: its status's, except that a run refused because another process
/// (a `prune`, `forget`, restic's `check`) holds the repository's lock exits 75
/// (EX_TEMPFAIL, "try again later", as a shard worker does), not 1: nothing was lost.
fn run_exit_code(r: &RunReport) -> ExitCode {
    if r.status == Status::Failed && restic::lock::is_conflict_message(&r.message) {
        ExitCode::Retry
    } else {
        ExitCode::from(r.status)
    }
}

/// One worker of a shard run into a repository (`shard::repository`, through
/// `job::run_repository_worker`: the catalog and the notifications): its report on
/// stdout (`--json`: the JSON document), exit 0 once the run is published (2 if entries
/// were left out), 3 when interrupted or out of its window, 75 when the repository is
/// locked exclusively, 64 for a worker started with other parameters than the run's.
fn shard_worker(
    a: &BackupArgs,
    job: &snapring::job::RepositoryJob,
    catalog: Option<&snapring::job::CatalogTarget>,
    notifiers: &[(String, snapring::notify::NotifierConfig)],
    notify_success: bool,
) -> anyhow::Result<ExitCode> {
    use snapring::shard;
    let env = |k: &str| std::env::var(k).ok();
    let spec = match shard::detect(a.shard.as_deref(), a.shards, a.run_id.as_deref(), &env) {
        Ok(Some(s)) => s,
        Ok(None) => {
            print::errln!(
                "snapring: --run-id names a shard run: give --shard I/N too (or the engine's index variable)"
            );
            return Ok(ExitCode::Usage);
        }
        Err(e) => {
            print::errln!("snapring: {e}");
            return Ok(ExitCode::Usage);
        }
    };
    let r = match snapring::job::run_repository_worker(
        job,
        &spec,
        catalog,
        notifiers,
        notify_success,
        super::cancel_on_signal(),
    ) {
        Ok(r) => r,
        Err(e) => {
            let code = match e.exit_code() {
                64 => ExitCode::Usage,
                75 => ExitCode::Retry,
                3 => ExitCode::Incomplete,
                _ => ExitCode::Failed,
            };
            if a.json {
                print::json(&serde_json::json!({
                    "run": spec.run_id, "worker": spec.index, "status": "failed",
                    "message": e.to_string(), "exit_code": code.code()
                }))?;
            }
            print::errln!(
                "snapring: worker {} of run {}: {e}",
                spec.index,
                spec.run_id
            );
            return Ok(code);
        }
    };
    print_worker(&r, a.json)
}

/// A shard worker's (or `finalize`'s) report, and the exit code its status maps to.
fn print_worker(
    r: &snapring::shard::repository::WorkerReport,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let code = match r.status.as_str() {
        "complete" => ExitCode::Complete,
        "partial" => ExitCode::Partial,
        _ => ExitCode::Incomplete,
    };
    if json {
        print::json(r)?;
    } else {
        let who = if r.worker == snapring::shard::repository::BY_HAND {
            "finalize".to_string()
        } else {
            format!("worker {}/{}", r.worker, r.workers)
        };
        outln!(
            "{who} of run {}: {}; units built: {}{}",
            r.run,
            r.status,
            r.units.len(),
            if r.units_refused.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} built again by another worker first)",
                    r.units_refused.len()
                )
            }
        );
        // `snapring finalize` is no worker: it is told as the command it is.
        let this = match r.worker == snapring::shard::repository::BY_HAND {
            true => "this finalize",
            false => "this worker",
        };
        if r.published_before && r.completed {
            outln!(
                "run {} was published before {this} started; its publisher was gone before it applied the retention and tidied: completed that (a new backup needs a new --run-id)",
                r.run
            );
        } else if r.published_before {
            outln!(
                "run {} was published before {this} started: nothing to do (a new backup needs a new --run-id)",
                r.run
            );
        }
        if let Some(s) = &r.snapshot {
            outln!(
                "snapshot {} {}",
                &s[..8.min(s.len())],
                if r.finalized {
                    "published by this process"
                } else {
                    "published by another worker"
                }
            );
        }
        if let Some(t) = &r.totals {
            outln!(
                "run: {} units, {} files ({} unchanged, {} read, {}), {} left out",
                t.units,
                t.counts.files,
                t.counts.files_unchanged,
                t.counts.files_read,
                human(t.counts.bytes_read),
                t.problems.len()
            );
            if let Some(note) =
                print::mount_points_kept(t.counts.mount_points_skipped, &t.counts.mount_points)
            {
                outln!("{note}");
            }
        }
        // The publisher's (or the completer's) retention, as a single-node backup
        // prints it.
        let retention = r
            .retention
            .as_ref()
            .and_then(|f| serde_json::to_value(f).ok());
        print_retention(retention.as_ref(), r.retention_skipped.as_deref());
        if let Some(t) = &r.totals {
            for w in &t.warnings {
                print::errln!("snapring: warning: {w}");
            }
        }
    }
    Ok(code)
}

/// `snapring status --dest URL --run-id RUN` of a run into a repository.
pub fn shard_status(a: &ShardRunArgs) -> anyhow::Result<snapring::shard::status::RunStatus> {
    let repo = open(&a.dest, a.password_file.as_deref(), None)?;
    Ok(snapring::shard::repository::status(&repo, &a.run_id)?)
}

/// `snapring finalize --dest URL --run-id RUN`: publishes a run into a repository
/// whose units are all committed (exit 75 while some are not).
pub fn shard_finalize(f: &FinalizeArgs) -> anyhow::Result<ExitCode> {
    if f.config.is_some() {
        bail!(
            "finalize --config serves a hard-link store's job; a run into a repository is \
             recorded and notified by the worker that publishes it"
        );
    }
    // SIGINT/SIGTERM: before its `final`, it gives up (exit 3, nothing published); a
    // request it waits on is given up (`watch_cancel`). Without a handler the signal
    // ended it with no word and no exit code.
    let cancel = super::cancel_on_signal();
    let mut repo = open(&f.run.dest, f.run.password_file.as_deref(), Some(&cancel))?;
    match snapring::shard::repository::finalize_run(
        &mut repo,
        &f.run.run_id,
        (None, f.allow_empty),
        cancel,
    ) {
        // Stopped (`work` turns it into its `incomplete` report): nothing published.
        Ok(r) if r.status == "incomplete" && r.snapshot.is_none() && !f.run.json => {
            print::errln!(
                "snapring: finalize of run {}: interrupted; nothing was published, `snapring finalize --run-id {}` publishes the run",
                f.run.run_id,
                f.run.run_id
            );
            Ok(ExitCode::Incomplete)
        }
        Ok(r) => print_worker(&r, f.run.json),
        Err(snapring::shard::ShardError::Stopped) => {
            print::errln!(
                "snapring: finalize of run {}: interrupted; nothing was published, `snapring finalize --run-id {}` publishes the run",
                f.run.run_id,
                f.run.run_id
            );
            Ok(ExitCode::Incomplete)
        }
        Err(e) => {
            print::errln!("snapring: {e}");
            Ok(match e.exit_code() {
                64 => ExitCode::Usage,
                75 => ExitCode::Retry,
                3 => ExitCode::Incomplete,
                _ => ExitCode::Failed,
            })
        }
    }
}

/// The human summary of a run into a repository.
fn print_run(r: &RunReport) {
    let Some(k) = &r.repository else {
        // No figures: failed, or stopped before any work (a hung S3 endpoint's request
        // given up while the repository was being opened).
        match r.status {
            Status::Incomplete => print::errln!("snapring: {}", r.message),
            _ => print::errln!("snapring: backup failed: {}", r.message),
        }
        return;
    };
    if r.status == Status::Incomplete {
        outln!(
            "incomplete: interrupted, no snapshot written; {} in {} packs kept and indexed for the next run (run {})",
            human(k.bytes_uploaded),
            k.packs_written,
            r.id
        );
        return;
    }
    outln!(
        "{}: snapshot {} of {} files ({}), {} read, {} unchanged; uploaded {} in {} objects, dedup ratio {:.2}; took {:.2}s (run {})",
        r.status.as_str(),
        &k.snapshot_id[..8.min(k.snapshot_id.len())],
        r.files_total,
        human(r.bytes_total),
        human(k.bytes_read),
        k.files_unchanged,
        human(k.bytes_uploaded),
        k.objects_written,
        k.dedup_ratio,
        r.duration_seconds,
        r.id
    );
    if let Some(note) = print::mount_points_note(r) {
        outln!("{note}");
    }
    for p in r.problems.iter().take(20) {
        print::problem(p);
    }
    print_retention(k.retention.as_ref(), k.retention_skipped.as_deref());
    for w in &r.warnings {
        print::errln!("snapring: warning: {w}");
    }
}

/// A run's retention, as its summary shows it (a single-node backup's, a shard run's
/// publisher's): each snapshot of the label with its verdict (what was kept and why,
/// what was forgotten; a snapshot dated later than the run's own, by a clock ahead,
/// says so), how many were forgotten, or why the retention was skipped.
fn print_retention(retention: Option<&serde_json::Value>, skipped: Option<&str>) {
    if let Some(v) = retention
        && let Ok(f) = serde_json::from_value::<RetentionShown>(v.clone())
    {
        for v in &f.plan.verdicts {
            outln!("  {} {}  {}", v.short_id, shown_time(&v.time), v.reason);
        }
        outln!(
            "forgot {} snapshots (their data stays until `snapring prune`)",
            f.removed
        );
    }
    if let Some(why) = skipped {
        print::errln!("retention skipped this time (the next run catches up): {why}");
    }
}

/// The parts of a retention report the summary prints.
#[derive(serde::Deserialize)]
struct RetentionShown {
    plan: PlanShown,
    removed: u64,
}

#[derive(serde::Deserialize)]
struct PlanShown {
    verdicts: Vec<VerdictShown>,
}

#[derive(serde::Deserialize)]
struct VerdictShown {
    short_id: String,
    time: String,
    reason: String,
}

/// A snapshot's time (RFC 3339, as restic wrote it) in a table or a listing: in UTC
/// to the second, `2026-12-07T03:44:54Z`, as a store's `list` shows its snapshots, so
/// the column lines up whatever offset and fraction the time was written with (restic
/// writes the local offset of the machine that took it: `-05:00` under
/// `TZ=America/New_York`). The JSON keeps the time as written; one that does not
/// parse is shown as it is.
fn shown_time(t: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(d) => d
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        Err(_) => t.to_string(),
    }
}

/// `snapring list --dest file:///PATH`.
pub fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    if a.space {
        return Err(usage!(
            "--space is not supported with a restic repository yet"
        ));
    }
    // Unindexed: listing reads snapshot files only, so a damaged index file does not
    // stop it (`verify` reports it).
    let repo = open_unindexed(&a.dest, a.password_file.as_deref(), None)?;
    let snaps = ops::list(&repo)?;
    let damaged: Vec<&ops::Listed> = snaps.iter().filter(|s| s.damaged.is_some()).collect();
    for s in &damaged {
        tracing::warn!(
            "snapshot file {} does not read: {}; it is listed as DAMAGED (its time is not \
             known: `latest` is refused until it is removed; name a snapshot by its id)",
            s.short_id,
            s.damaged.as_deref().unwrap_or("")
        );
    }
    if a.json {
        print::json(&snaps)?;
        return Ok(ExitCode::Complete);
    }
    outln!(
        "{:<10} {:<20} {:<10} {:<16} PATHS",
        "ID",
        "TIME",
        "LABEL",
        "HOST"
    );
    for s in snaps.iter().rev() {
        if let Some(why) = &s.damaged {
            outln!(
                "{:<10} {:<20} {:<10} {:<16} {}",
                s.short_id,
                "?",
                "-",
                "-",
                format_args!("DAMAGED: the snapshot file does not read: {why}")
            );
            continue;
        }
        outln!(
            "{:<10} {:<20} {:<10} {:<16} {}",
            s.short_id,
            shown_time(&s.time),
            s.label.as_deref().unwrap_or("-"),
            s.hostname,
            s.paths.join(" ")
        );
    }
    Ok(ExitCode::Complete)
}

/// `--path`'s components, relative to the snapshot's source; `..` and absolute paths
/// are refused.
fn components(p: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = p.as_os_str().as_bytes();
    if bytes.starts_with(b"/") {
        return Err(usage!(
            "--path {} is absolute; give it relative to the snapshot's source",
            snapring::relpath::shown(p)
        ));
    }
    let parts: Vec<Vec<u8>> = bytes
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect();
    if parts.iter().any(|c| c == b"..") {
        return Err(usage!(
            "--path {} leaves the snapshot (..)",
            snapring::relpath::shown(p)
        ));
    }
    Ok(parts)
}

/// Where `snapring restore` restores from when that is a repository: `--dest`, else
/// (with `--config`) the job's `dest`; with the job's `password_file` unless
/// `--password-file` is given. `None`: a hard-link store (`cli::restore`).
pub fn restore_source(a: &RestoreArgs) -> anyhow::Result<Option<(PathBuf, Option<PathBuf>)>> {
    let job = match &a.config {
        Some(path) => Some(
            config::load(path)?
                .pick(a.job.as_deref())
                .map_err(super::config::job_usage)?
                .1,
        ),
        None => None,
    };
    let dest = a
        .dest
        .clone()
        .or_else(|| job.as_ref().and_then(|j| j.dest.clone()));
    if !is_repo(dest.as_deref()) {
        return Ok(None);
    }
    let password_file = a
        .password_file
        .clone()
        .or_else(|| job.and_then(|j| j.password_file));
    Ok(dest.map(|d| (d, password_file)))
}

/// `snapring restore --dest file:///PATH SNAPSHOT --to DIR [--path P [--flat]]`, or
/// `--config FILE [--job J]` of a job whose `dest` is a repository (`restore_source`).
/// A run like a restore from a store (`snapring::job::recorded_restore`): its own run
/// id, a log beside the catalog, a catalog row of kind `restore` (the store column
/// holds the repository's URL), the job's notifications; a restore that cannot start
/// (wrong password, a repository that cannot be opened) is recorded as `failed`. A
/// snapshot the repository does not have is a usage error (exit 64), no run.
pub fn restore(
    a: RestoreArgs,
    dest: &Path,
    password_file: Option<&Path>,
    cat: &CatalogChoice,
) -> anyhow::Result<ExitCode> {
    let unsupported = [
        (a.to_is_dedicated, "--to-is-dedicated"),
        (a.overwrite, "--overwrite"),
        (a.mirror, "--mirror"),
        (a.dry_run, "--dry-run"),
    ];
    if let Some((_, flag)) = unsupported.iter().find(|(set, _)| *set) {
        return Err(usage!(
            "{flag} is not supported with a restic repository yet"
        ));
    }
    // `--path` is escaped as snapring prints paths (`restore::parse_path`).
    let sub = match &a.path {
        Some(p) => {
            use std::os::unix::ffi::OsStrExt;
            let raw = snapring::relpath::unescape_bytes(p.as_os_str().as_bytes())
                .map_err(|e| usage!("--path {}: {e}", snapring::relpath::shown(p)))?;
            components(Path::new(std::ffi::OsStr::from_bytes(&raw)))?
        }
        None => Vec::new(),
    };
    let path = match &a.path {
        Some(p) => {
            let rel = snapring::restore::parse_path(p, "--path").map_err(|e| usage!("{e}"))?;
            (!rel.is_root()).then_some(rel)
        }
        None => None,
    };
    let job = super::restore::for_job(a.config.as_deref(), a.job.as_deref(), cat)?;
    let opts = snapring::restore::RestoreOptions {
        store: dest.to_path_buf(),
        snapshot: a.snapshot.clone(),
        to: a.to.clone(),
        path,
        path_literal: None,
        flat: a.flat,
        mode: snapring::restore::Mode::Safe,
        to_is_dedicated: false,
        dry_run: false,
        plan_on_stderr: false,
        jobs: 0,
        progress: false,
    };
    let run = snapring::job::RestoreRun {
        catalog: job.catalog.as_ref(),
        job: job.name,
        notifiers: &job.notifiers,
        notify_success: job.notify_success,
    };
    let started_at = snapring::util::now_rfc3339();
    let mut restored = None;
    let cancel = super::cancel_on_signal();
    // A snapshot the repository does not have is a mistake on the command line, refused
    // as one (exit 64) before a run starts, as for a store: recorded, it was a `failed`
    // restore that notified (paged) and counted in `stats`. A repository that cannot be
    // opened (wrong password, gone, unreachable), or has no snapshot yet, is the
    // restore's own failure: recorded, as the run says it. Opened once, for both.
    // Not before `--to` is known to be outside the repository: opening takes a lock, a
    // write into the repository a refused restore must not make (the run refuses it
    // below, recorded).
    // `--to` checked before anything is written: no `..` in its part that does not
    // exist yet, and not inside a local repository, by device and inode.
    let checked = (|| {
        let target = snapring::restore::target::Target::resolve(&a.to)?;
        let existing = target.open_existing()?;
        if let Some(root) = restic::backend::parse_file_url(&dest.to_string_lossy()) {
            target.refuse_inside(&existing, &root, "repository")?;
        }
        Ok::<_, snapring::error::Error>((target, existing))
    })();
    let opened = checked
        .is_ok()
        .then(|| open_reading(dest, password_file, true, Some(&cancel)));
    if let Some(Ok((repo, _))) = &opened
        && let Ok(Some(why)) =
            restic::snapshot::names_nothing(repo, &a.snapshot, &dest.to_string_lossy())
    {
        return Err(usage!("{why}"));
    }
    let result = snapring::job::recorded_restore(&opts, &run, || {
        let failed = |e: &dyn std::fmt::Display| snapring::error::Error::Repository(e.to_string());
        // SIGINT/SIGTERM: `incomplete`, what was written stays (a throttled request
        // given up once the signal ended its wait is that too).
        let stopped = |e: Option<String>| {
            let why = e.map(|e| format!(": {e}")).unwrap_or_default();
            let mut out = snapring::restore::RestoreReport::not_started(
                &opts,
                started_at.clone(),
                format!(
                    "interrupted{why}; the restore into {} is incomplete (what it wrote stays; \
                     run the same restore again to finish it)",
                    snapring::relpath::escape(std::os::unix::ffi::OsStrExt::as_bytes(
                        a.to.as_os_str()
                    ))
                ),
            );
            out.status = Status::Incomplete;
            out.exit_code = Status::Incomplete.exit_code();
            Ok(out)
        };
        let is_stopped = || cancel.load(Ordering::Relaxed);
        // A `--to` refused above is this run's failure, recorded.
        let (target, existing) = checked?;
        // Made (its missing part one directory at a time, never through a symlink)
        // once the snapshot is found.
        let make_to = || {
            target
                .create(&existing)
                .map_err(|e| restic::Error::Other(e.to_string()))
        };
        // Opened above whenever `--to` was accepted.
        let opened =
            opened.unwrap_or_else(|| open_reading(dest, password_file, true, Some(&cancel)));
        let (repo, _lock) = match opened {
            Ok(x) => x,
            Err(e) if is_stopped() => return stopped(Some(format!("{e:#}"))),
            Err(e) => return Err(failed(&format!("{e:#}"))),
        };
        let r = match restic::restore::restore(
            &repo,
            &a.snapshot,
            &a.to,
            make_to,
            &sub,
            a.flat,
            &cancel,
        ) {
            Ok(r) => r,
            Err(restic::Error::Cancelled) => return stopped(None),
            Err(e) if is_stopped() => return stopped(Some(e.to_string())),
            // The repository's storage does not answer (a snapshot's tree answered EIO
            // and `config` does not read either; S3 past its retries): nothing was lost,
            // the rerun restores it (75), as a restore stopped for it later does.
            Err(e @ restic::Error::Unreachable(_)) => {
                let mut out = snapring::restore::RestoreReport::not_started(
                    &opts,
                    started_at.clone(),
                    format!(
                        "{e}: the restore stopped before writing a file; run the same restore \
                         again once the repository reads"
                    ),
                );
                out.status = Status::Failed;
                out.exit_code = snapring::report::EXIT_IN_USE;
                return Ok(out);
            }
            Err(e) => return Err(failed(&index_advice(e, dest))),
        };
        let mut out =
            snapring::restore::RestoreReport::not_started(&opts, started_at.clone(), String::new());
        if let Some(e) = &r.stopped {
            // Stopped before it was done: what it wrote stays, with the record of
            // unfinished work, and the same restore run again finishes it. Paths
            // escaped (`%0A` for a newline), as the files and problems are named.
            let shown = |p: &Path| {
                use std::os::unix::ffi::OsStrExt;
                snapring::relpath::escape(p.as_os_str().as_bytes())
            };
            let done = format!(
                "{} files ({}) restored{}, {} unfinished (named in {}), the rest not begun",
                r.files,
                human(r.bytes),
                match r.kept {
                    0 => String::new(),
                    k => format!(" ({k} of them by the stopped restore before)"),
                },
                r.unfinished.len(),
                shown(r.record.as_deref().unwrap_or(Path::new("?"))),
            );
            let again = "run the same restore again: it keeps the files already whole and \
                         writes the others";
            let full = match e {
                restic::Error::Io { path, source, .. } if snapring::fsx::is_disk_full(source) => {
                    Some(snapring::error::io_error(
                        std::io::Error::from_raw_os_error(source.raw_os_error().unwrap_or(28)),
                        "write",
                        path.clone(),
                    ))
                }
                _ => None,
            };
            out.message = match full {
                Some(snapring::error::Error::DiskFull { path, why }) => format!(
                    "the restore's target file system is full ({}) while writing {}: the restore \
                     stopped; the repository is untouched; {done}; {} and {again}",
                    why.as_str(),
                    shown(&path),
                    why.remedy(),
                ),
                _ if matches!(e, restic::Error::Cancelled) || is_stopped() => format!(
                    "interrupted; the restore into {} is incomplete: {done}; {again}",
                    shown(&a.to)
                ),
                _ => match e {
                    restic::Error::Io {
                        action,
                        path,
                        source,
                    } => format!(
                        "cannot {action} {}: {source}: the restore stopped; {done}; {again}",
                        shown(path)
                    ),
                    restic::Error::Corrupt { why, .. } if why == "not in any index" => {
                        format!("{e}: {}: the restore stopped; {done}", index_hint(dest))
                    }
                    e => format!("{e}: the restore stopped; {done}; {again}"),
                },
            };
            out.status = if matches!(e, restic::Error::Cancelled) || is_stopped() {
                Status::Incomplete
            } else {
                Status::Failed
            };
            out.exit_code = match e {
                // The repository could not be read at all (its storage down, S3 past
                // its retries): nothing is lost, the rerun finishes (EX_TEMPFAIL).
                restic::Error::Unreachable(_) if out.status == Status::Failed => {
                    snapring::report::EXIT_IN_USE
                }
                _ => out.status.exit_code(),
            };
            out.problems = r.problems.clone();
            kept_as_identical(&mut out, &r);
            out.dirs_created = r.dirs;
            out.duration_seconds = r.duration_seconds;
            return Ok(out);
        }
        out.status = if r.problems.is_empty() {
            Status::Complete
        } else {
            Status::Partial
        };
        out.exit_code = out.status.exit_code();
        out.run_id = Some(r.snapshot.clone());
        out.message = format!(
            "restored snapshot {} into {}",
            &r.snapshot[..8.min(r.snapshot.len())],
            snapring::relpath::shown(&r.to)
        );
        if !r.problems.is_empty() {
            out.message.push_str(&format!(
                "; {} entries could not be restored whole (each named)",
                r.problems.len()
            ));
        }
        out.problems = r.problems.clone();
        kept_as_identical(&mut out, &r);
        out.dirs_created = r.dirs;
        out.hard_links = r.hard_links;
        out.duration_seconds = r.duration_seconds;
        restored = Some(r);
        Ok(out)
    });
    let report = result?;
    let Some(r) = restored else {
        // Interrupted (`stopped`): recorded as `incomplete`.
        if a.json {
            print::json(&report)?;
        }
        print::errln!("snapring: {}", report.message);
        if report.exit_code == snapring::report::EXIT_IN_USE {
            return Ok(ExitCode::Retry);
        }
        return Ok(ExitCode::from(report.status));
    };
    if a.json {
        print::json(&report)?;
    } else {
        for p in &r.problems {
            // `--to` itself is the empty path.
            let path = if p.path.is_empty() { "." } else { &p.path };
            print::errln!("snapring: {path}: {}: {}", p.action, p.error);
        }
        outln!(
            "{}: restored snapshot {} into {}: {} files ({}), {} directories, {} symlinks, {} hard links{}; took {:.2}s{}",
            report.status.as_str(),
            &r.snapshot[..8],
            snapring::relpath::shown(&r.to),
            r.files,
            human(r.bytes),
            r.dirs,
            r.symlinks,
            r.hard_links,
            match r.kept {
                0 => String::new(),
                k => format!(" ({k} files found whole as the stopped restore left them, kept)"),
            },
            r.duration_seconds,
            report
                .id
                .as_ref()
                .map(|id| format!(" (run {id})"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::from(report.status))
}

/// A repository restore's files and bytes in the store restore's terms: the files a
/// rerun found whole and kept are `skipped_identical`, as a store restore's rerun
/// counts the files it finds identical, and `files_restored`/`bytes_restored` are
/// what this run wrote, and `others_restored` the symlinks it made. (Before, `--json`
/// counted kept files as restored and did not say how many were kept.)
fn kept_as_identical(
    out: &mut snapring::restore::RestoreReport,
    r: &restic::restore::RestoreReport,
) {
    out.files_restored = r.files - r.kept;
    out.bytes_restored = r.bytes - r.kept_bytes;
    out.skipped_identical = r.kept;
    // Symlinks, as a store restore counts them (`others_restored`); the repository
    // restore counts no FIFOs or device nodes apart.
    out.others_restored = r.symlinks;
}

fn print_forget(r: &restic::forget::ForgetReport) {
    for v in &r.plan.verdicts {
        outln!("  {} {}  {}", v.short_id, shown_time(&v.time), v.reason);
    }
    let n = r.plan.forgotten().count();
    if r.dry_run {
        outln!("dry run: would forget {n} snapshots; nothing removed");
    } else {
        outln!(
            "forgot {} snapshots (their data stays until `snapring prune`)",
            r.removed
        );
    }
}

/// `prune`/`forget` take a restic repository only: a `--dest` that names none (a
/// hard-link store's path, restic's own URL syntax) is a usage error (exit 64), as
/// `--host` with a store is, not a failure of the command; a store's snapshots expire
/// by its backups' `--retain`.
fn repository_only(cmd: &str, dest: &str) -> anyhow::Result<()> {
    if dest.starts_with("s3://") || dest.starts_with("file://") {
        return Ok(());
    }
    if let Some(hint) = restic::backend::restic_syntax(dest) {
        return Err(usage!("{hint}"));
    }
    let store = Path::new(dest).join(snapring::store::META_DIR).is_dir();
    let what = match store {
        true => format!(
            "{} is a hard-link store: its snapshots expire with its backups' --retain (older ones go to .snapring/trash/ and are deleted there), and no data outlives them; ",
            snapring::relpath::shown(Path::new(dest))
        ),
        false => String::new(),
    };
    Err(usage!(
        "{what}{cmd} is for a restic repository: --dest {dest:?}: expected file:///ABSOLUTE/PATH or s3://BUCKET/PREFIX"
    ))
}

/// `snapring forget --dest URL --label L --retain N [--dry-run]`, or
/// `snapring forget --dest URL [--dry-run] SNAPSHOT...`.
pub fn forget(a: ForgetArgs) -> anyhow::Result<ExitCode> {
    repository_only("forget", &a.dest)?;
    if a.snapshots.is_empty() == a.label.is_none() {
        return Err(usage!(
            "forget takes either --label L --retain N, or the snapshots to forget (ids, \
             unique id prefixes, latest), not both"
        ));
    }
    let cancel = super::cancel_on_signal();
    let repo = open_unindexed(
        Path::new(&a.dest),
        a.password_file.as_deref(),
        Some(&cancel),
    )?;
    let before_remove: restic::forget::BeforeRemove = snapring::shard::repository::before_forget;
    let r = match (a.label, a.retain) {
        (Some(label), Some(keep_last)) if a.snapshots.is_empty() => {
            let policy = restic::forget::Policy {
                label,
                keep_last,
                group: None,
                before_remove: Some(before_remove),
                written: None,
            };
            restic::forget::forget(&repo, &policy, a.dry_run, &cancel)
        }
        (None, None) if !a.snapshots.is_empty() => restic::forget::forget_named(
            &repo,
            &a.snapshots,
            Some(before_remove),
            a.dry_run,
            &cancel,
        ),
        _ => unreachable!("checked above; clap requires --label and --retain together"),
    };
    let left = "the snapshots not removed yet are kept (forget again to finish)";
    let r = match stopped(r, &cancel, left)? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    if a.json {
        print::json(&r)?;
    } else {
        print_forget(&r);
    }
    Ok(ExitCode::Complete)
}

/// `snapring prune --dest URL [--dry-run]`.
pub fn prune(a: PruneArgs) -> anyhow::Result<ExitCode> {
    repository_only("prune", &a.dest)?;
    let cancel = super::cancel_on_signal();
    let mut repo = open(
        Path::new(&a.dest),
        a.password_file.as_deref(),
        Some(&cancel),
    )?;
    // Others writing between the opening (the index read) and the lock (the race tests).
    snapring::failpoint::hit("prune.after_open")?;
    // Unfinished shard runs given up: their committed units' packs are pruned.
    if a.drop_unfinished_runs && !a.dry_run {
        let unfinished = snapring::shard::repository::unfinished_runs(repo.backend.as_ref())?;
        if !unfinished.is_empty() {
            // A run's workers finishing before the lock (the race tests).
            snapring::failpoint::hit("prune.before_drop_lock")?;
            // Under the exclusive lock: no worker of those runs is still at work.
            let ex = restic::lock::acquire(&repo, true).map_err(|e| prune_full(e, &a.dest))?;
            // Listed before the lock: a run published since is not given up.
            let still = snapring::shard::repository::unfinished_runs(repo.backend.as_ref())?;
            for run in unfinished.iter().filter(|r| still.contains(r)) {
                snapring::shard::repository::drop_run(repo.backend.as_ref(), run)?;
                print::errln!("snapring: gave up the unfinished shard run {run}");
            }
            ex.release()?;
        }
    }
    // What the other unfinished shard runs committed is kept for their reruns.
    let r = restic::prune::prune_keeping(
        &mut repo,
        a.dry_run,
        &snapring::shard::repository::unpublished_roots,
        &cancel,
    )
    .map_err(|e| prune_full(e, &a.dest));
    let left = match &r {
        Err(restic::Error::Cancelled) => {
            "nothing was removed (packs it wrote are in no index; the next prune removes \
             them); prune again to finish"
        }
        _ => "the repository stays whole; prune again to finish",
    };
    let r = match stopped(r, &cancel, left)? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    if a.json {
        print::json(&r)?;
        return Ok(ExitCode::Complete);
    }
    let p = &r.plan;
    outln!(
        "{} snapshots use {} blobs; {} blobs ({}) unused",
        p.snapshots,
        p.blobs_used,
        p.blobs_unused,
        human(p.bytes_unused)
    );
    if p.shard_runs_kept > 0 {
        outln!(
            "kept the data of {} unfinished shard runs (snapring/shards/)",
            p.shard_runs_kept
        );
    }
    outln!(
        "packs: {} kept, {} to repack ({} copied), {} to delete, {} not in any index",
        p.packs_kept,
        p.packs_repacked,
        human(p.bytes_to_repack),
        p.packs_deleted,
        p.packs_unindexed
    );
    if p.packs_partly_indexed > 0 {
        outln!(
            "{} packs are of another size than their index entries imply (a damaged blob left out by `repair index --read-data`?); their used blobs are repacked",
            p.packs_partly_indexed
        );
    }
    if r.blobs_from_other_copy > 0 {
        outln!(
            "{} blobs were copied from their other copy (the planned one was damaged; see the warnings)",
            r.blobs_from_other_copy
        );
    }
    if p.packs_missing > 0 {
        outln!(
            "{} packs named by the index are missing; their used blobs have copies in other packs, so the new index leaves them out",
            p.packs_missing
        );
    }
    if r.dry_run {
        outln!("dry run: nothing changed");
    } else {
        outln!(
            "complete: wrote {} packs ({}), removed {} packs and {} index files; took {:.2}s",
            r.packs_written,
            human(r.bytes_written),
            r.packs_removed,
            r.index_files_removed,
            r.duration_seconds
        );
    }
    Ok(ExitCode::Complete)
}

/// A prune that failed on a full repository file system (ENOSPC or a used-up quota
/// writing its lock, a repacked pack or the new index): the error, and what to do. Prune
/// removed nothing then (the new packs it wrote are removed again, `prune::carry_out`);
/// no file of the repository is safe to delete by hand, so the room must come from
/// elsewhere on that file system.
fn prune_full(e: restic::Error, dest: &str) -> restic::Error {
    let full =
        matches!(&e, restic::Error::Io { source, .. } if snapring::fsx::is_disk_full(source));
    if !full {
        return e;
    }
    restic::Error::Other(format!(
        "{e}: the repository's file system is full (or its quota used up); prune removed \
         nothing. Before it removes anything, prune needs room there for its lock file and \
         its new index (a few KiB up to some MiB for a large repository) and for the data \
         it copies out of partly used packs (`snapring prune --dry-run --dest {dest}` \
         shows how much: \"to repack\"). Free that much space on the file system outside \
         the repository and run prune again; do not delete files inside the repository: \
         any pack may hold data a snapshot needs (only prune tells which are unused)"
    ))
}

/// `snapring repair index --dest URL [--read-data]`: exit 0 when every snapshot is
/// whole afterwards, 2 when some reference data no pack holds (the next backup stores
/// again what the source still has; those snapshots stay damaged) or a snapshot file
/// does not read, 3 when interrupted.
pub fn repair_index(a: RepairIndexArgs) -> anyhow::Result<ExitCode> {
    let cancel = super::cancel_on_signal();
    let b = backend::from_dest(&a.dest)?;
    b.watch_cancel(&cancel);
    let pw = restic::password::resolve(a.password_file.as_deref())?;
    // Unindexed: an index file that does not read is what this repairs.
    let mut repo = restic::repo::Repo::open_unindexed_with(b, &pw)?;
    repo.use_user_cache();
    let writing = AtomicBool::new(false);
    let r = restic::repair::repair_index(&mut repo, a.read_data, &cancel, &writing);
    let left = if writing.load(Ordering::Relaxed) {
        "the new index was being written: the index files written so far are beside the \
         old ones, which restic accepts (a blob named twice); repair again to finish"
    } else {
        "the index was not changed; repair again to finish"
    };
    let r = match stopped(r, &cancel, left)? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let code = if !r.snapshots_checked {
        ExitCode::Incomplete
    } else {
        ExitCode::clean_or_partial(
            r.damaged_snapshots.is_empty() && r.unreadable_snapshots.is_empty(),
        )
    };
    if a.json {
        print::json(&r)?;
        return Ok(code);
    }
    outln!(
        "packs: {} in data/, {} kept as indexed, {} added, {} re-read, {} missing, {} unreadable{}",
        r.packs_listed,
        r.packs_kept,
        r.packs_added,
        r.packs_reread,
        r.packs_missing,
        r.packs_unreadable,
        if r.read_data {
            " (every pack read)"
        } else {
            ""
        }
    );
    for p in &r.missing {
        outln!("  missing pack {p}");
    }
    for p in &r.unreadable {
        outln!("  unreadable pack {p} (the next prune deletes it)");
    }
    if r.index_files_unreadable > 0 {
        outln!(
            "{} index files did not read; their packs were read from data/",
            r.index_files_unreadable
        );
    }
    if r.read_data {
        outln!("{} blobs damaged (left out of the index)", r.blobs_damaged);
    }
    for p in &r.salvaged {
        outln!("  damaged pack {p}: its good blobs copied into a new pack, the pack deleted");
    }
    outln!(
        "{} blobs lost (the old index named them, no pack holds them); {} blobs indexed",
        r.blobs_lost,
        r.blobs_indexed
    );
    if r.index_rewritten {
        outln!(
            "wrote {} index files, removed {} old ones; took {:.2}s",
            r.index_files_written,
            r.index_files_removed,
            r.duration_seconds
        );
    } else {
        outln!("the index matches the packs; nothing written");
    }
    if !r.snapshots_checked {
        print::errln!(
            "snapring: interrupted while checking the snapshots (the index is rebuilt); \
             `snapring verify --all` tells which are damaged"
        );
        return Ok(code);
    }
    for d in &r.damaged_snapshots {
        outln!(
            "  {} {} {} {}  references data no pack holds",
            d.snapshot,
            shown_time(&d.time),
            d.hostname,
            d.paths.join(" ")
        );
    }
    for s in &r.unreadable_snapshots {
        outln!(
            "  snapshot file {s} does not read: left out (`restic check` says more; \
             `snapring prune` refuses until it is removed)"
        );
    }
    if r.damaged_snapshots.is_empty() && r.unreadable_snapshots.is_empty() {
        outln!("{} snapshots checked: every one is whole", r.snapshots);
    } else if r.damaged_snapshots.is_empty() {
        outln!(
            "{} snapshots checked: every one is whole; {} snapshot files do not read",
            r.snapshots,
            r.unreadable_snapshots.len()
        );
    } else {
        outln!(
            "{} of {} snapshots reference {} data and {} tree blobs no pack holds; the next \
             backup stores again what the source still has (those snapshots stay damaged: \
             `snapring verify SNAPSHOT` names their files, and `snapring forget --dest URL \
             ID...` forgets them, so that `snapring prune` runs again)",
            r.damaged_snapshots.len(),
            r.snapshots,
            r.missing_data_blobs,
            r.missing_tree_blobs
        );
    }
    Ok(code)
}

/// `snapring copy --dest D [--folder F] SNAPSHOT --to URL`: a run like a backup into
/// the repository (`snapring::job::run_repository`), recorded in the catalog.
pub fn copy(a: CopyArgs, cat: &CatalogChoice) -> anyhow::Result<ExitCode> {
    if a.retain == Some(0) {
        bail!("--retain 0 would forget every snapshot of the label; give 1 or more");
    }
    if !is_repo(Some(Path::new(&a.to))) {
        return Err(usage!(
            "--to {:?}: expected a restic repository, file:///ABSOLUTE/PATH or s3://BUCKET/PREFIX",
            a.to
        ));
    }
    // With --config: the job's store, catalog and notifiers (`--dest` wins over the
    // job's store).
    let for_job = super::restore::for_job(a.config.as_deref(), a.job.as_deref(), cat)?;
    let root = match (&a.dest, &a.folder) {
        (Some(d), Some(f)) => {
            let rel = snapring::relpath::RelPath::new(f.as_bytes())
                .map_err(|e| usage!("--folder {f:?}: {e}"))?;
            d.join(rel.as_path())
        }
        (Some(d), None) => d.clone(),
        (None, _) => match for_job.store.clone() {
            Some(s) if is_repo(Some(&s)) => {
                return Err(usage!(
                    "job {}: its dest {} is a restic repository, not a store to copy from; give --dest",
                    for_job.name.as_deref().unwrap_or("-"),
                    s.display()
                ));
            }
            Some(s) => s,
            None => bail!("no store: give --dest, or a job with dest (and folder) in --config"),
        },
    };
    // A snapshot the store does not have is a mistake on the command line, refused as
    // one (exit 64) before a run starts: recorded, it was a `failed` copy, in `stats`
    // and in the copies' alerts. A store that cannot be opened (not mounted, gone), or
    // has no snapshot yet, is the copy's own failure: recorded, as the run says it.
    if let Ok(store) = snapring::store::Store::open_read(&root)
        && let Ok(Some(why)) = store.names_nothing(&a.snapshot)
    {
        return Err(usage!("{why}"));
    }
    let job = snapring::job::RepositoryJob {
        job: for_job.name.clone(),
        source: root,
        copy_of: Some(a.snapshot),
        dest: a.to,
        label_given: a.label.is_some(),
        label: a.label.unwrap_or_default(),
        retain: a.retain,
        password_file: a.password_file,
        jobs: 0,
        window: None,
        with_atime: false,
        one_file_system: false,
        exclusion: Default::default(),
        // A copy is of a snapshot named on purpose, empty or not.
        allow_empty: true,
        host: None,
    };
    // A failed copy always notifies, a complete one with the job's `notify_success`
    // (`snapring::job::run_repository`), as a backup does.
    let r = snapring::job::run_repository(
        &job,
        for_job.catalog.as_ref(),
        &for_job.notifiers,
        for_job.notify_success,
        super::cancel_on_signal(),
    );
    if let Some(dir) = &a.textfile {
        // Monitoring that cannot be written never changes the copy's outcome.
        let c = for_job.catalog.as_ref().map(|c| c.path.as_path());
        if let Err(e) = snapring::serve::textfile::write_copy(dir, &r, c) {
            print::errln!("snapring: warning: {e}");
        }
    }
    if a.json {
        print::json(&r)?;
        if r.status == Status::Failed {
            print::errln!("snapring: copy failed: {}", r.message);
        }
        return Ok(run_exit_code(&r));
    }
    if r.status == Status::Failed {
        print::errln!("snapring: copy failed: {}", r.message);
        return Ok(run_exit_code(&r));
    }
    match r.repository.as_ref().and_then(|k| k.copied_from.as_ref()) {
        Some(c) if c.already_copied => outln!(
            "{} (run {}) is in the repository already as snapshot {}; nothing copied",
            c.store_snapshot,
            c.run,
            r.snapshot.as_deref().map_or("", |s| &s[..8.min(s.len())])
        ),
        Some(c) => {
            outln!(
                "copied {} (run {}): {} by the manifests and {} by inode reused unread",
                c.store_snapshot,
                c.run,
                c.reused_by_manifest,
                c.reused_by_inode
            );
            print_run(&r);
        }
        None => print_run(&r),
    }
    Ok(ExitCode::from(r.status))
}

/// A command stopped by SIGINT/SIGTERM exits 3 (`incomplete`), as an interrupted run
/// does, saying what it leaves (`left`): its `Cancelled`, or any error once `cancel`
/// is set (a throttled request given up when the signal ended its wait).
fn stopped<T>(
    r: restic::Result<T>,
    cancel: &AtomicBool,
    left: &str,
) -> anyhow::Result<Result<T, ExitCode>> {
    match r {
        Ok(x) => Ok(Ok(x)),
        Err(restic::Error::Cancelled) => {
            print::errln!("snapring: interrupted; {left}");
            Ok(Err(ExitCode::Incomplete))
        }
        Err(e) if cancel.load(Ordering::Relaxed) => {
            print::errln!("snapring: interrupted: {e}; {left}");
            Ok(Err(ExitCode::Incomplete))
        }
        Err(e) => Err(e.into()),
    }
}

/// A blob the index does not name (`Tree blob …: not in any index`: the index files
/// gone or damaged, or a pack lost) with the way out that `verify` gives: rebuild the
/// index from the packs there. Any other error as it is.
fn index_advice(e: restic::Error, dest: &Path) -> restic::Error {
    match &e {
        restic::Error::Corrupt { why, .. } if why == "not in any index" => {
            restic::Error::Other(format!("{e}: {}", index_hint(dest)))
        }
        _ => e,
    }
}

fn index_hint(dest: &Path) -> String {
    format!(
        "the repository's index does not name it (its index files gone or damaged, or its \
         pack lost): `snapring repair index --dest {}` rebuilds the index from the packs \
         there and names the snapshots that lost data",
        snapring::relpath::shown(dest)
    )
}

/// `snapring verify --dest URL [SNAPSHOT…|--all] [--jobs N]`: every blob re-read and
/// re-hashed; exit 2 when a snapshot is damaged.
pub fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let cancel = super::cancel_on_signal();
    // Uncached (every tree read from the repository) and tolerant of a damaged index
    // file: it is damage to report (exit 2), and the snapshots are still checked.
    let (b, pw) = backend_and_password(&a.dest, a.password_file.as_deref(), Some(&cancel))?;
    let mut repo = Repo::open_tolerant(b, &pw)?;
    let _lock = restic::lock::acquire_reader(&repo);
    repo.refresh_index()?;
    let r = restic::verify::verify(
        &repo,
        &a.snapshots,
        a.all,
        a.against.as_deref(),
        a.one_file_system,
        a.jobs.unwrap_or(0),
        &cancel,
    );
    let v = match stopped(r, &cancel, "nothing was written")? {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    if a.json {
        print::json(&v)?;
    } else {
        for x in &v {
            if let Some(why) = &x.snapshot_file_damaged {
                outln!("{} ! snapshot file  {why}", x.snapshot);
                outln!(
                    "{}: DAMAGED: its snapshot file does not read; nothing of it could be checked",
                    x.snapshot
                );
                continue;
            }
            if a.against.is_some() {
                print_against(x);
                continue;
            }
            for d in &x.damaged {
                outln!("{} ! {}  {}", x.snapshot, d.path, d.reason);
            }
            // Not checked (an I/O error), worded as the store's verify words it.
            for (p, why) in &x.problems {
                outln!(
                    "{} ? {}  could not be read: {why} (an I/O error or the server's refusal, not a checksum mismatch: not checked; verify again, a rerun may read it)",
                    x.snapshot,
                    p
                );
            }
            outln!(
                "{}: {} against repository: {} files ({}), {} dirs; {} data blobs ({} read now, {}), {} tree blobs; {} damaged files, {} damaged directories{}",
                x.snapshot,
                match x.clean {
                    true => "clean",
                    false if x.damaged.is_empty() => {
                        "NOT FULLY CHECKED (I/O errors reading it; no damage found)"
                    }
                    false => "DAMAGED",
                },
                x.files,
                human(x.bytes),
                x.dirs,
                x.data_blobs,
                x.data_blobs_read,
                human(x.data_bytes_read),
                x.tree_blobs,
                x.corrupt,
                x.damaged_dirs,
                match x.unreadable {
                    0 => String::new(),
                    n => format!(
                        ", {n} could not be read (I/O errors, not damage found: verify again)"
                    ),
                }
            );
            if x.bad_copies > 0 {
                outln!(
                    "{}: {} data blobs have a damaged or missing copy in the repository (read from another copy; the warnings name the packs)",
                    x.snapshot,
                    x.bad_copies
                );
            }
            if x.unreadable_copies > 0 {
                outln!(
                    "{}: {} data blobs have a copy in the repository that could not be read (I/O errors; read from another copy; the warnings name the packs)",
                    x.snapshot,
                    x.unreadable_copies
                );
            }
        }
    }
    if !a.json {
        for (id, why) in &repo.damaged_index_files {
            outln!(
                "index file {} does not read: {why}: left out of the index read (blobs only it \
                 names count as in no index)",
                &id.hex()[..8]
            );
        }
    }
    let file_damage: Vec<&str> = v
        .iter()
        .filter(|x| x.snapshot_file_damaged.is_some())
        .map(|x| x.snapshot.as_str())
        .collect();
    if !a.json && !file_damage.is_empty() {
        outln!(
            "snapshot files do not read ({}): those snapshots cannot be restored; \
             `restore latest` is refused while they are there (name a snapshot by its id); \
             once `restic check` has said what they are, remove the files from {}/snapshots/ \
             (`prune` refuses until then)",
            file_damage.join(", "),
            repo.backend.location()
        );
    }
    let damage = |x: &restic::verify::RepoVerified| {
        (!x.damaged.is_empty() && x.snapshot_file_damaged.is_none()) || x.bad_copies > 0
    };
    if !a.json
        && (!repo.damaged_index_files.is_empty() || (a.against.is_none() && v.iter().any(damage)))
    {
        outln!(
            "a pack is damaged or gone: `snapring repair index --dest {}` rebuilds the \
             index from the packs there (`--read-data` also leaves damaged blobs out), then \
             the next backup stores again what the source still has",
            snapring::relpath::shown(&a.dest)
        );
    }
    // A pack that could not be read is no damage found: nothing to repair (`repair
    // index --read-data` would stop on it too), a rerun may read it.
    let unread = |x: &restic::verify::RepoVerified| x.unreadable > 0 || x.unreadable_copies > 0;
    if !a.json && a.against.is_none() && v.iter().any(unread) {
        outln!(
            "packs could not be read (I/O errors: a failing disk, a network file system, \
             the storage; or the server refused them: an HTTP status named above): what \
             they hold was not checked and is not known to be damaged; verify again once \
             the storage reads or access is fixed (nothing to repair for them)"
        );
    }
    // A blob read from its second copy leaves the snapshot whole, but a pack of the
    // repository is damaged or gone (bit rot, a lost object): that is what a scheduled
    // verify is run to catch, so it fails as damage does (exit 2), not only a warning.
    // A damaged index file is damage too, whatever the snapshots' verdicts.
    Ok(ExitCode::clean_or_partial(
        repo.damaged_index_files.is_empty()
            && v.iter().all(|x| {
                x.clean && (a.against.is_some() || x.bad_copies + x.unreadable_copies == 0)
            }),
    ))
}

/// A snapshot verified against a live tree, printed as the store's verify prints one.
fn print_against(x: &restic::verify::RepoVerified) {
    super::inspect::print_verified(&snapring::commands::inspect::Verified {
        snapshot: x.snapshot.clone(),
        run_id: None,
        against: x.against.clone(),
        clean: x.clean,
        corrupt: x.corrupt,
        unreadable: x.unreadable,
        missing: x.missing,
        unexpected: x.unexpected,
        metadata: x.metadata,
        differences: x.differences.clone(),
        totals: x.totals.clone(),
        problems: x.problems.clone(),
        denied: vec![],
        one_fs: x.one_fs.clone(),
        not_checked: vec![],
        damaged_manifests: vec![],
        unchecked: None,
        next_backup_copies: 0,
        interrupted: false,
    });
}

/// `snapring diff --dest URL A B|--against DIR`: exit 2 when something could not be
/// read.
pub fn diff(a: DiffArgs) -> anyhow::Result<ExitCode> {
    super::inspect::check_diff(&a)?;
    if a.to.is_some() && a.jobs.is_some() {
        return Err(usage!(
            "--jobs is not supported by diff between two repository snapshots (it reads trees only)"
        ));
    }
    let cancel = super::cancel_on_signal();
    let (repo, _lock) = open_reading(&a.dest, a.password_file.as_deref(), true, Some(&cancel))?;
    let r = match (a.to.as_deref(), a.against.as_deref()) {
        (Some(to), None) => restic::diff::diff(&repo, &a.from, to, &cancel),
        (None, Some(dir)) => restic::diff::diff_against(
            &repo,
            &a.from,
            dir,
            a.one_file_system,
            a.jobs.unwrap_or(0),
            &cancel,
        ),
        _ => unreachable!("check_diff"),
    };
    let r = r.map_err(|e| index_advice(e, &a.dest));
    let r = match stopped(r, &cancel, "nothing was written")? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    if a.json {
        print::json(&r)?;
    } else {
        let counts = [r.added, r.removed, r.content_changed, r.metadata_changed];
        print::diff_lines(
            (&r.from, &r.to),
            counts,
            &r.differences,
            &r.problems,
            &r.one_fs,
            (&[], &[]),
        );
        // Damage, worded as verify words it (its `!` lines and verdict).
        for d in &r.damaged {
            outln!("! {}  {}", d.path, d.reason);
        }
        if !r.damaged.is_empty() {
            outln!(
                "DAMAGED: {} damaged directories in the trees compared (`snapring verify` \
                 names them too; a rerun does not change them)",
                r.damaged.len()
            );
        }
    }
    Ok(ExitCode::clean_or_partial(
        r.problems.is_empty() && r.damaged.is_empty(),
    ))
}

/// `snapring history --dest URL PATH`: one line per snapshot, newest first (the other
/// flags filter catalog runs and do not apply, as with a store).
pub fn path_history(path: &Path, a: HistoryArgs) -> anyhow::Result<ExitCode> {
    let dest = a.dest.as_deref().context("--dest is required")?;
    let rel = snapring::restore::parse_path(path, "PATH").map_err(|e| usage!("{e}"))?;
    if rel.is_root() {
        return Err(usage!(
            "history needs a path inside the snapshot (for example users/alice/.profile)"
        ));
    }
    let (repo, _lock) = open_reading(dest, a.password_file.as_deref(), true, None)?;
    let versions = super::inspect::literal_reading(
        path,
        &rel,
        restic::history::history(&repo, &rel),
        |v| v.kind != "absent",
        &format!("repository {}", snapring::relpath::shown(dest)),
        |l| restic::history::history(&repo, l),
    )?;
    if a.json {
        print::json(&versions)?;
        return Ok(ExitCode::Complete);
    }
    outln!(
        "{:<10} {:<20} {:<9} {:<10} {:>10} {:<16} MTIME",
        "SNAPSHOT",
        "TAKEN",
        "CHANGE",
        "KIND",
        "SIZE",
        "HASH"
    );
    let dash = || "-".to_string();
    for x in &versions {
        outln!(
            "{:<10} {:<20} {:<9} {:<10} {:>10} {:<16} {}",
            x.snapshot,
            shown_time(&x.taken_at),
            x.change,
            x.kind,
            x.size.map(|s| s.to_string()).unwrap_or_else(dash),
            x.hash
                .as_ref()
                .map(|h| h[..16].to_string())
                .unwrap_or_else(dash),
            x.mtime.clone().unwrap_or_else(dash)
        );
    }
    Ok(ExitCode::Complete)
}
