//! One configured job, run once: the backup, then its notifications, then the outcome
//! of those written back into the run record and the catalog. Used by `snapring
//! backup --config`, `snapring run JOB` and (through `snapring run`) the daemon.

use std::sync::atomic::AtomicBool;

use crate::config::{Config, JobConfig};
use crate::engine::BackupOptions;
use crate::error::Result;
use crate::notify;
use crate::report::RunReport;

/// The notifiers a job names, resolved from the config.
pub fn notifiers(cfg: &Config, job: &JobConfig) -> Vec<(String, notify::NotifierConfig)> {
    job.notify
        .iter()
        .filter_map(|n| cfg.notify.get(n).map(|c| (n.clone(), c.clone())))
        .collect()
}

/// Runs the backup, then notifies (failures always, success if `notify_success`).
/// Notification outcomes go into the report's `notifications`, the run record, the
/// catalog and the run log; they never change the run's status or exit code.
pub fn run(
    opts: &BackupOptions,
    notifiers: &[(String, notify::NotifierConfig)],
    notify_success: bool,
    cancel: &AtomicBool,
) -> Result<RunReport> {
    let mut rep = crate::engine::backup(opts, cancel)?;
    if opts.dry_run || notifiers.is_empty() || !notify::wanted(rep.status, notify_success) {
        return Ok(rep);
    }
    let log = crate::catalog::log_path(&rep);
    let logging = opts.log_file && crate::runlog::start(&log).is_ok();
    rep.notifications = notify::send_all(notifiers, &rep);
    if let Ok(store) = crate::store::Store::open(&opts.store, false)
        && let Err(e) = store.write_run(&rep)
    {
        tracing::error!("{e}");
    }
    if let Some(c) = &opts.catalog
        && let Some(w) = crate::catalog::record_quietly(c, opts.catalog_on_nfs, &rep)
    {
        rep.warnings.push(w);
    }
    if logging {
        crate::runlog::stop();
    }
    Ok(rep)
}
