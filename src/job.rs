//! One configured job, run once: the backup, recorded in the catalog, then its
//! notifications, then the outcome of those written back into the run record and the
//! catalog. Used by `snapring backup`, `snapring run JOB` and (through `snapring run`)
//! the daemon. The engine below knows nothing of the catalog or the notifiers: this
//! layer hooks the catalog into a run through `engine::Observer`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use crate::config::{Config, JobConfig};
use crate::engine::{BackupOptions, Observer};
use crate::error::Result;
use crate::notify;
use crate::report::RunReport;
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
pub struct CatalogRecorder<'a>(pub &'a CatalogTarget);

impl Observer for CatalogRecorder<'_> {
    fn started(&self, store: &Store, rep: &mut RunReport) {
        if let Some(w) = crate::catalog::record_start(&self.0.path, self.0.on_nfs, store, rep) {
            rep.warnings.push(w);
        }
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
        Some(c) => crate::engine::backup_observed(opts, cancel, &CatalogRecorder(c)),
        None => crate::engine::backup(opts, cancel),
    }
}

/// Runs the backup (`run_backup`), then notifies (failures always, success if
/// `notify_success`). Notification outcomes go into the report's `notifications`, the
/// run record, the catalog and the run log; they never change the run's status or exit
/// code.
pub fn run(
    opts: &BackupOptions,
    catalog: Option<&CatalogTarget>,
    notifiers: &[(String, notify::NotifierConfig)],
    notify_success: bool,
    cancel: &AtomicBool,
) -> Result<RunReport> {
    let mut rep = run_backup(opts, catalog, cancel)?;
    if opts.dry_run || notifiers.is_empty() || !notify::wanted(rep.status, notify_success) {
        return Ok(rep);
    }
    let log = crate::store::log_path(&rep);
    let logging = opts.log_file && crate::runlog::start(&log).is_ok();
    rep.notifications = notify::send_all(notifiers, &rep);
    let _ = crate::failpoint::hit("job.after_notify");
    if let Ok(store) = Store::open(&opts.store, false)
        && let Err(e) = store.write_run(&rep)
    {
        tracing::error!("{e}");
    }
    if let Some(c) = catalog
        && let Some(w) = crate::catalog::record_quietly(&c.path, c.on_nfs, &rep)
    {
        rep.warnings.push(w);
    }
    if logging {
        crate::runlog::stop();
    }
    Ok(rep)
}
