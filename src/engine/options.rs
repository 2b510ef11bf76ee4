//! The resolved settings of one backup run (after config file and flags are merged).
//! Pure data and validation; no I/O.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::relpath::RelPath;

/// `jobs` when none is given: chosen per run from the file systems of the source and
/// the store (`crate::concurrency::resolve`).
pub const AUTO_JOBS: usize = 0;

#[derive(Clone, Debug)]
pub struct BackupOptions {
    pub job: Option<String>,
    pub source: PathBuf,
    /// The store directory: `<dest>/<folder>`, or `<dest>` when no folder is given.
    pub store: PathBuf,
    pub label: String,
    pub retain: u32,
    /// Back up only this subdirectory of the source (its contents become the snapshot root).
    pub prefix: Option<RelPath>,
    pub excludes: Vec<String>,
    pub jobs: usize,
    pub dry_run: bool,
    /// Refuse unless the source is a mount point (an unmounted EFS looks like an empty dir).
    pub require_mount: bool,
    /// Allow an empty source even when the previous snapshot is not empty.
    pub allow_empty: bool,
    /// Stop gracefully (status `incomplete`, nothing published) after this long.
    pub window: Option<Duration>,
    /// Show a progress line on a terminal.
    pub progress: bool,
    /// Dry run: print the plan on stderr instead of stdout (stdout carries JSON).
    pub plan_on_stderr: bool,
    /// Write the run's log to `.snapring/logs/<id>.log`.
    pub log_file: bool,
}

impl BackupOptions {
    pub fn new(source: impl Into<PathBuf>, store: impl Into<PathBuf>) -> Self {
        BackupOptions {
            job: None,
            source: source.into(),
            store: store.into(),
            label: "daily".into(),
            retain: 7,
            prefix: None,
            excludes: vec![],
            jobs: AUTO_JOBS,
            dry_run: false,
            require_mount: false,
            allow_empty: false,
            window: None,
            progress: false,
            plan_on_stderr: false,
            log_file: true,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !crate::store::rotation::valid_label(&self.label) {
            return Err(Error::Config(format!(
                "label {:?} is not valid: use letters, digits, '_' or '-', starting with a letter (daily, hourly, weekly)",
                self.label
            )));
        }
        if self.retain == 0 {
            return Err(Error::Config("retain must be at least 1".into()));
        }
        if self.jobs > 4096 {
            return Err(Error::Config(format!(
                "jobs must be between 1 and 4096 (or 0 for the default), not {}",
                self.jobs
            )));
        }
        let (s, d) = (absolute(&self.source), absolute(&self.store));
        if d.starts_with(&s) || s.starts_with(&d) {
            return Err(Error::Config(format!(
                "source {} and store {} overlap: the backup would back itself up",
                self.source.display(),
                self.store.display()
            )));
        }
        crate::engine::exclude::build(&self.excludes)?;
        Ok(())
    }
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
}

/// Parses `180m`, `3h`, `45s`, `1h30m`, `2d` (kept here for callers of
/// `engine::options::parse_duration`; it lives in `util`).
pub use crate::util::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_source_and_store_are_refused() {
        let o = BackupOptions::new("/data", "/data/backup");
        assert!(o.validate().unwrap_err().to_string().contains("overlap"));
        assert!(BackupOptions::new("/data", "/backup").validate().is_ok());
    }
}
