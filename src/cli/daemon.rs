//! `snapring daemon` and `snapring next`: the scheduling side. `daemon` hands a config
//! file to `snapring::daemon` (which runs each due job as a child `snapring run`) until
//! a stop signal; `next` prints when a job or a bare schedule would next run.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use chrono::{SecondsFormat, Utc};
use snapring::config;
use snapring::schedule::Schedule;

use super::args::{DaemonArgs, NextArgs};
use super::catalog_choice::CatalogChoice;
use super::exit_code::{ExitCode, usage};
use super::logging::LogFlags;
use super::print::{self, errln, outln};

/// How often the daemon's loop wakes to check for due jobs and signals.
const TICK: std::time::Duration = std::time::Duration::from_millis(200);

/// `snapring daemon`: runs until SIGTERM/SIGINT (SIGHUP reloads the config).
/// `log` is the daemon's own logging (`--log-format`, `-v`), passed on to each run.
pub fn daemon(a: DaemonArgs, cat: &CatalogChoice, log: &LogFlags) -> anyhow::Result<ExitCode> {
    let cfg = config::load_complete(&a.config)?;
    let catalog = cat.for_config(cfg.catalog.clone());
    // Before the lock file beside it is made: a device, fifo or directory as the
    // catalog is refused at start, not met by every event the daemon writes.
    if let Some(p) = &catalog {
        snapring::catalog::refuse_not_a_file(p)?;
    }
    let opts = snapring::daemon::DaemonOptions {
        config: a.config,
        exe: std::env::current_exe()?,
        catalog,
        catalog_on_nfs: cat.on_nfs,
        tick: TICK,
        env: vec![],
        run_args: log.args(),
    };
    // One daemon per config and per catalog; a second one exits 75 (EX_TEMPFAIL, as a
    // shard worker or `finalize` that finds the store held by another process): nothing
    // ran, and a service manager that retries it gets it going once the first stops.
    let _lock = match snapring::daemon::lock(&opts.config, opts.catalog.as_deref()) {
        Ok(l) => l,
        Err(e @ snapring::daemon::LockError::Busy(_)) => {
            errln!("snapring: {e}");
            return Ok(ExitCode::Retry);
        }
        Err(e) => return Err(anyhow::Error::msg(e.to_string())),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    snapring::daemon::install_signals(&stop, &reload);
    let server = super::serve::for_daemon(&opts.config, cfg.server.as_ref(), cat, &stop)?;
    let ran = snapring::daemon::run(&opts, &stop, &reload).map_err(anyhow::Error::msg);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = server {
        let _ = t.join();
    }
    ran?;
    Ok(ExitCode::Complete)
}

/// `snapring next`: the next `--count` run times, one per line or as a JSON list.
pub fn next(a: NextArgs) -> anyhow::Result<ExitCode> {
    let sched = schedule(a.job, &a.config, a.schedule, a.timezone.as_deref())?;
    let from = match a.at {
        Some(t) => snapring::store::select::parse_time(&t)
            .ok_or_else(|| usage!("--at {t:?}: give {}", snapring::store::select::TIME_FORMS))?,
        None => Utc::now(),
    };
    let found = sched.upcoming(from, a.count as usize);
    let times: Vec<String> = found
        .iter()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .collect();
    if a.json {
        print::json(&times)?;
    } else {
        for t in &times {
            outln!("{t}");
        }
    }
    if times.len() < a.count as usize {
        // A year that is over (the AWS form's year field): printing nothing, or fewer
        // times than asked, said nothing of why. A time past croner's last year (`--at
        // 9999-12-31`) was said to be that too, of a schedule that fires every day.
        let why = if sched.past_the_horizon(*found.last().unwrap_or(&from)) {
            format!(
                "the scheduler cannot compute run times far into or past the year {} (its limit), though the schedule fires then",
                snapring::schedule::LAST_YEAR
            )
        } else {
            "its last time is past".to_string()
        };
        errln!(
            "snapring: the schedule has {} run time{} after {}: {why}",
            if times.is_empty() {
                "no".to_string()
            } else {
                format!("only {}", times.len())
            },
            if times.len() == 1 { "" } else { "s" },
            from.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
    }
    Ok(ExitCode::Complete)
}

/// The schedule of `--job` (from `config`) or the bare `--schedule` in `timezone`.
fn schedule(
    job: Option<String>,
    config: &Path,
    schedule: Option<String>,
    timezone: Option<&str>,
) -> anyhow::Result<Schedule> {
    match (job, schedule) {
        (Some(j), None) => {
            let cfg = config::load(config)?;
            let (_, jc) = cfg.pick(Some(&j)).map_err(super::config::job_usage)?;
            jc.schedule()
                .map_err(anyhow::Error::msg)?
                .ok_or_else(|| anyhow::anyhow!("job {j} has no schedule"))
        }
        // The library's message names the value and what is wrong with it: `schedule
        // "X": …` or `unknown time zone "Z" …`; this adds the flag.
        (None, Some(s)) => snapring::schedule::parse(&s, timezone).map_err(|e| {
            if e.starts_with("schedule ") {
                usage!("--{e}")
            } else {
                usage!("--timezone: {e}")
            }
        }),
        _ => Err(usage!("give --job NAME (with --config) or --schedule EXPR")),
    }
}
