//! `snapring backup` and `snapring run`: resolve a job's options (config file, then
//! flags over it), run it through `snapring::job` (the backup, then its notifications)
//! and print the run report as a summary or as JSON. The exit code is the run's status.

use std::io::IsTerminal;

use snapring::config::{self, JobConfig};
use snapring::engine::BackupOptions;
use snapring::notify::NotifierConfig;
use snapring::report::{RunReport, Status};

use super::args::{BackupArgs, RunArgs};
use super::catalog_choice::CatalogChoice;
use super::exit_code::ExitCode;
use super::print::{self, errln, human};

/// `snapring run JOB`: a backup of one job of a config file, no flags over it.
pub fn run_job(a: RunArgs, cat: &CatalogChoice) -> anyhow::Result<ExitCode> {
    // From the daemon: the umask its user gave it, for this run's hooks (the run
    // inherits the daemon's working one, the owner's bits taken out).
    if let Some(u) = a.user_umask
        && let Err(why) = snapring::fsx::take_user_umask(u)
    {
        return Err(super::exit_code::usage!(
            "--user-umask {u:04o} (the umask the daemon that starts this run was given, \
             for the run's hooks and command notifiers) is refused: {why}"
        ));
    }
    // From the daemon: its running configuration, moved out of the descriptor that
    // hooks and notifier commands would inherit (held open for the whole run).
    let (_copy, config_path) = config::private_copy(&a.config)?;
    // No flags fill in a missing source or dest here: the job must be complete, as the
    // daemon and `config check` require.
    let loaded = if a.config == std::path::Path::new(config::FROM_STDIN) {
        // A run the daemon started, of the configuration it checked as a whole when it
        // loaded it: only this job's part is checked again (what changed since is of
        // the file system). Another job's problem (its `exclude_from` file gone) does
        // not stop this job's runs; this job's own is a failed run, recorded and
        // notified, not a silent exit 1.
        let shown = a.config_name.clone().unwrap_or_else(|| a.config.clone());
        match config::load_for_job(&config_path, &shown, &a.job) {
            Ok(c) => Some(Box::new(c)),
            Err(r) => {
                if let Some(cfg) = &r.parsed {
                    record_refused(cfg, &a.job, &r.error, cat);
                }
                return Err(r.error.into());
            }
        }
    } else {
        // From the command line: the whole file, as `config check` sees it.
        config::load_complete(&config_path)?;
        None
    };
    let args = BackupArgs {
        config: Some(config_path),
        loaded,
        job: Some(a.job),
        json: a.json,
        no_progress: a.no_progress,
        textfile: a.textfile,
        ..Default::default()
    };
    backup(args, cat)
}

/// A run of job `name` that its own config refused (`load_for_job`): recorded
/// `failed` in the catalog and notified, as a run that cannot start is, when the job
/// still says where its store, catalog and notifiers are.
fn record_refused(
    cfg: &config::Config,
    name: &str,
    e: &snapring::error::Error,
    cat: &CatalogChoice,
) {
    let Some(j) = cfg.job.get(name) else { return };
    let Ok(opts) = config::resolve_unchecked(
        Some(name.to_string()),
        Some(j.clone()),
        JobConfig::default(),
    ) else {
        return;
    };
    let catalog = cat
        .for_config(cfg.catalog.clone())
        .map(|path| snapring::job::CatalogTarget {
            path,
            on_nfs: cat.on_nfs,
        });
    let notifiers = snapring::job::notifiers(cfg, j);
    snapring::job::refused(
        &opts,
        e,
        catalog.as_ref(),
        &notifiers,
        j.notify_success.unwrap_or(false),
    );
}

/// The config file of `a`: the one `snapring run` loaded, else `path` read and checked.
pub(super) fn config_of(a: &BackupArgs, path: &std::path::Path) -> anyhow::Result<config::Config> {
    Ok(match &a.loaded {
        Some(c) => (**c).clone(),
        None => config::load(path)?,
    })
}

/// `snapring backup`.
pub fn backup(a: BackupArgs, cat: &CatalogChoice) -> anyhow::Result<ExitCode> {
    if a.config.is_none() {
        // Without a config file the flags are the whole job: a missing one is a usage
        // error (with one, the job may set it; a file's gaps are its own error, exit 1).
        for (flag, missing) in [
            ("--source", a.source.is_none()),
            ("--dest", a.dest.is_none()),
        ] {
            if missing {
                return Err(super::exit_code::usage!(
                    "backup needs {flag} (or --config FILE with a job that sets it)"
                ));
            }
        }
    }
    if let Some(code) = super::restic::backup_job(&a, cat)? {
        return Ok(code);
    }
    let spec =
        match snapring::shard::detect(a.shard.as_deref(), a.shards, a.run_id.as_deref(), &|k| {
            std::env::var(k).ok()
        }) {
            Ok(s) => s,
            Err(e) => {
                errln!("snapring: {e}");
                return Ok(ExitCode::Usage);
            }
        };
    if spec.is_none() && a.run_id.is_some() {
        errln!(
            "snapring: --run-id names a shard run: give --shard I/N too (or the engine's index variable)"
        );
        return Ok(ExitCode::Usage);
    }
    let job = resolve(&a, cat)?;
    if let Some(spec) = spec {
        return super::shard::worker(
            &job.opts,
            &spec,
            job.catalog.as_ref(),
            (&job.notifiers, job.notify_success),
            a.json,
        );
    }
    let cancel = super::cancel_on_signal();
    // The job's runs that died untold (killed while run by cron or a timer, which no
    // daemon saw die): told now, before this run, which may die the same way.
    if !job.opts.dry_run
        && let Some(name) = &job.opts.job
        && snapring::daemon::tell_untold_deaths(
            &job.opts.store,
            name,
            job.catalog.as_ref().map(|c| (c.path.as_path(), c.on_nfs)),
            &job.notifiers,
        )
    {
        // Stopped while it told them: not started (a record of its own, newer, would
        // make the death it did not finish telling history, told by nobody).
        errln!(
            "snapring: job {name}: stopped while its notifiers were told of an earlier run's death; this run did not start (the death is told by the next run)"
        );
        return Ok(ExitCode::Incomplete);
    }
    let (report, refused) = match snapring::job::run(
        &job.opts,
        job.catalog.as_ref(),
        &job.notifiers,
        job.notify_success,
        &cancel,
    ) {
        Ok(r) => (r, None),
        // Could not start (the store missing or in use, say): its `failed` report goes
        // where a run's goes, then the error decides the exit code (75: in use).
        Err(snapring::job::NotStarted {
            error,
            report: Some(r),
        }) => (*r, Some(error)),
        Err(snapring::job::NotStarted { error, .. }) => return Err(error.into()),
    };
    if let Some(dir) = &a.textfile {
        // Monitoring that cannot be written never changes the run's outcome.
        let cat = job.catalog.as_ref().map(|c| c.path.as_path());
        if let Err(e) = snapring::serve::textfile::write(dir, &report, job.file_job.as_ref(), cat) {
            errln!("snapring: warning: {e}");
        }
    }
    if a.json {
        print::json(&report)?;
    } else if refused.is_none() {
        print_summary(&report);
    }
    match refused {
        Some(e) => Err(e.into()),
        None => Ok(ExitCode::from(report.status)),
    }
}

/// The exclusion settings of job `f` with the flags of `a` added, the pattern files
/// read now: a missing one, or a bad line (named by file and line), is a usage error
/// before anything runs. A relative `exclude_from` in a config file is refused (it
/// would depend on the daemon's working directory).
pub(super) fn exclusion(
    a: &BackupArgs,
    f: &JobConfig,
) -> anyhow::Result<snapring::exclude::Settings> {
    if let Some(p) = f.exclude_from.iter().find(|p| !p.is_absolute()) {
        return Err(super::exit_code::usage!(
            "exclude_from {}: give an absolute path in a config file",
            snapring::relpath::shown(p)
        ));
    }
    let both = |x: &[String], y: &[String]| x.iter().chain(y).cloned().collect::<Vec<_>>();
    snapring::exclude::Settings::resolve(
        &both(&f.exclude, &a.exclude),
        &f.exclude_from
            .iter()
            .chain(&a.exclude_from)
            .cloned()
            .collect::<Vec<_>>(),
        a.exclude_caches || f.exclude_caches.unwrap_or(false),
        &both(&f.exclude_if_present, &a.exclude_if_present),
    )
    .map_err(|e| super::exit_code::usage!("{}", e.to_string().trim_start_matches("config: ")))
}

/// A job ready to run: its resolved options and whom to notify.
struct Job {
    opts: BackupOptions,
    /// Where the job layer records the run (`None`: no catalog).
    catalog: Option<snapring::job::CatalogTarget>,
    /// By name, as the config file defines them.
    notifiers: Vec<(String, NotifierConfig)>,
    notify_success: bool,
    /// The config file's job, if any (its schedule goes into `--textfile`).
    file_job: Option<JobConfig>,
}

/// The config file's job (if any) with the flags over it, plus the command-line-only
/// settings: dry run, progress line, catalog.
fn resolve(a: &BackupArgs, cat: &CatalogChoice) -> anyhow::Result<Job> {
    let mut file_catalog = None;
    let mut notifiers = Vec::new();
    let mut notify_success = false;
    let (name, file_job) = match &a.config {
        Some(path) => {
            let cfg = config_of(a, path)?;
            file_catalog = cfg.catalog.clone();
            let (n, j) = cfg
                .pick(a.job.as_deref())
                .map_err(super::config::job_usage)?;
            notifiers = cfg.notifiers_of(&n, &j)?;
            notify_success = j.notify_success.unwrap_or(false);
            (Some(n), Some(j))
        }
        None => (a.job.clone(), None),
    };
    // The pattern files are read here, once: a pipe or `/dev/stdin` has nothing left
    // for a second read, and the run applies and records these patterns.
    let exclusion = exclusion(a, file_job.as_ref().unwrap_or(&JobConfig::default()))?;
    let usage = |e| match e {
        // Without a config file every setting is a flag: a bad one is a usage error.
        snapring::error::Error::Config(m) if a.config.is_none() => super::exit_code::usage!("{m}"),
        e => anyhow::Error::from(e),
    };
    let mut opts = config::resolve_unchecked(name, file_job.clone(), flags(a)?).map_err(usage)?;
    opts.exclusion = Some(exclusion);
    opts.validate().map_err(usage)?;
    opts.dry_run = a.dry_run;
    opts.new_source = a.new_source;
    opts.plan_on_stderr = a.json;
    let catalog = cat
        .for_config(file_catalog)
        .map(|path| snapring::job::CatalogTarget {
            path,
            on_nfs: cat.on_nfs,
        });
    opts.progress = !a.no_progress && !a.json && !a.dry_run && std::io::stderr().is_terminal();
    Ok(Job {
        opts,
        catalog,
        notifiers,
        notify_success,
        file_job,
    })
}

/// The job settings given as flags (they override the config file's).
fn flags(a: &BackupArgs) -> anyhow::Result<JobConfig> {
    let split = |flag: &str, line: &Option<String>| {
        line.as_deref()
            .map(snapring::hooks::split)
            .transpose()
            .map_err(|e| super::exit_code::usage!("--{flag}: {e}"))
    };
    Ok(JobConfig {
        pre_command: split("pre-command", &a.pre_command)?,
        post_command: split("post-command", &a.post_command)?,
        source: a.source.clone(),
        dest: a.dest.clone(),
        folder: a.folder.clone(),
        label: a.label.clone(),
        retain: a.retain,
        prefix: a.prefix.clone(),
        exclude: a.exclude.clone(),
        exclude_from: a.exclude_from.clone(),
        exclude_caches: a.exclude_caches.then_some(true),
        exclude_if_present: a.exclude_if_present.clone(),
        jobs: a.jobs,
        require_mount: a.require_mount.then_some(true),
        allow_empty: a.allow_empty.then_some(true),
        one_file_system: a.one_file_system.then_some(true),
        window: a.window.clone(),
        bwlimit: a.bwlimit.clone(),
        ..Default::default()
    })
}

/// The human summary: a failure on stderr, then the counts (stdout, or stderr for a
/// dry run), then up to 20 problems on stderr.
fn print_summary(r: &RunReport) {
    if r.status == Status::Failed {
        errln!("snapring: backup failed: {}", r.message);
        // A dry run records nothing.
        if !r.dry_run {
            errln!(
                "  run {} recorded in {}",
                r.id,
                snapring::relpath::shown(&r.store.join(".snapring/runs"))
            );
        }
        if r.files_total == 0 {
            return;
        }
    }
    let mut out = print::summary_stream(r.dry_run);
    let _ = writeln!(
        out,
        "{}{}: {} (run {})",
        if r.dry_run { "dry run, " } else { "" },
        r.status.as_str(),
        r.snapshot
            .as_deref()
            .map(|s| format!("{} in {}", s, snapring::relpath::shown(&r.store)))
            .unwrap_or_else(|| snapring::relpath::shown(&r.store).to_string()),
        r.id
    );
    let _ = writeln!(
        out,
        "  files {} (copied {}, linked {}{}, link fallbacks {}, changed during backup {}), directories {}",
        r.files_total,
        r.files_transferred,
        r.files_linked,
        snapring::report::resumed_words(r.files_resumed),
        r.link_fallbacks,
        r.changed_during_backup,
        r.dirs_total
    );
    let _ = writeln!(
        out,
        "  bytes {} in files, {} copied",
        human(r.bytes_total),
        human(r.bytes_transferred)
    );
    if let Some(note) = print::mount_points_note(r) {
        let _ = writeln!(out, "{note}");
    }
    if !r.expired.is_empty() {
        let _ = writeln!(out, "  expired {}", r.expired.join(", "));
    }
    for (what, h) in [("pre", &r.pre_command), ("post", &r.post_command)] {
        if let Some(h) = h {
            // A command the run's stop or window killed did not fail by itself.
            let how = match (&h.error, snapring::hooks::stopped(h)) {
                (None, _) => "ok".to_string(),
                (Some(e), true) => format!("stopped: {e}"),
                (Some(e), false) => format!("failed: {e}"),
            };
            let _ = writeln!(out, "  {what}_command {how} ({:.2}s)", h.seconds);
        }
    }
    if let Some(rate) = r.bwlimit {
        let _ = writeln!(
            out,
            "  bandwidth limit {}/s: waited {:.2}s",
            human(rate),
            r.bwlimit_wait_seconds
        );
    }
    let _ = writeln!(
        out,
        "  took {:.2}s, peak memory {}",
        r.duration_seconds,
        human(r.peak_rss_bytes)
    );
    if !r.message.is_empty() && r.status != Status::Complete {
        let _ = writeln!(out, "  {}", r.message);
    }
    print_problems(r);
}

/// Up to 20 problems on stderr, then where the rest are.
fn print_problems(r: &RunReport) {
    for p in r.problems.iter().take(20) {
        print::problem(p);
    }
    if r.errors > 20 {
        errln!(
            "  … {} more problems in {}",
            r.errors - 20,
            snapring::relpath::shown(
                &r.store
                    .join(".snapring/runs")
                    .join(format!("{}.json", r.id))
            )
        );
    }
}
