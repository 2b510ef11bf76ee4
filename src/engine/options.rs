//! The resolved settings of one backup run (after config file and flags are merged).
//! Data and validation; validation only reads the file system (to resolve symlinks and
//! `..` in the source, store and prefix), it never writes.

use std::path::{Component, Path, PathBuf};
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
    /// `retain` was not given (flag or config): the run keeps as many as the label's
    /// previous run kept, and `retain` only when the label has no run yet.
    pub retain_default: bool,
    /// Continue the label's snapshots from a source other than the one they are of (the
    /// same data moved); without it such a run is refused (`--new-source`).
    pub new_source: bool,
    /// Back up only this subdirectory of the source (its contents become the snapshot root).
    pub prefix: Option<RelPath>,
    pub excludes: Vec<String>,
    /// Pattern files (`--exclude-from`), read when the run starts.
    pub exclude_from: Vec<PathBuf>,
    /// Every exclusion setting with the pattern files already read, once
    /// ([`BackupOptions::read_exclusions`]): a file that can be read only once (a
    /// pipe, `/dev/stdin`, `<(...)`) gives its patterns to every later use, and the
    /// run applies and records the same patterns. `None`: read on each use.
    pub exclusion: Option<crate::exclude::Settings>,
    /// Leave out the contents of directories holding a valid `CACHEDIR.TAG`.
    pub exclude_caches: bool,
    /// Leave out the contents of directories holding one of these entries.
    pub exclude_if_present: Vec<String>,
    pub jobs: usize,
    pub dry_run: bool,
    /// Refuse unless the source is a mount point (an unmounted EFS looks like an empty dir).
    pub require_mount: bool,
    /// Allow an empty source even when the previous snapshot is not empty.
    pub allow_empty: bool,
    /// Stay on the source's file system (`--one-file-system`, as `rsync -x`): a
    /// directory on another device is kept as an empty directory with its own
    /// metadata, its contents not backed up (`traverse::OneFs`).
    pub one_file_system: bool,
    /// Stop gracefully (status `incomplete`, nothing published) after this long.
    pub window: Option<Duration>,
    /// Show a progress line on a terminal.
    pub progress: bool,
    /// Dry run: print the plan on stderr instead of stdout (stdout carries JSON).
    pub plan_on_stderr: bool,
    /// Write the run's log to `.snapring/logs/<id>.log`.
    pub log_file: bool,
    /// Bytes per second read from the source plus written to the store, across all
    /// workers (`--bwlimit`); `None`: no limit.
    pub bwlimit: Option<u64>,
    /// Run before the walk (not in a dry run); if it fails, so does the run.
    pub pre_command: Option<crate::hooks::Hook>,
    /// Run after the run, whatever its status (by the job layer, `job::run`).
    pub post_command: Option<crate::hooks::Hook>,
    /// Which run records and logs the run leaves in the store (`keep_run_records`).
    pub run_records: crate::store::runs::RunRetention,
}

impl BackupOptions {
    pub fn new(source: impl Into<PathBuf>, store: impl Into<PathBuf>) -> Self {
        BackupOptions {
            job: None,
            source: source.into(),
            store: store.into(),
            label: "daily".into(),
            retain: 7,
            retain_default: false,
            new_source: false,
            prefix: None,
            excludes: vec![],
            exclude_from: vec![],
            exclusion: None,
            exclude_caches: false,
            exclude_if_present: vec![],
            jobs: AUTO_JOBS,
            dry_run: false,
            require_mount: false,
            allow_empty: false,
            one_file_system: false,
            window: None,
            progress: false,
            plan_on_stderr: false,
            log_file: true,
            bwlimit: None,
            pre_command: None,
            post_command: None,
            run_records: crate::store::runs::RunRetention::default(),
        }
    }

    /// Checks every setting; the first problem is the error (`config check` asks the
    /// `check_*` functions one by one, to report every problem of a file at once).
    pub fn validate(&self) -> Result<()> {
        let c = |r: std::result::Result<(), String>| r.map_err(Error::Config);
        c(check_label(&self.label))?;
        c(check_retain(self.retain.into()))?;
        c(check_jobs(self.jobs as i64))?;
        if let Some(w) = self.window {
            c(check_window(w))?;
        }
        c(check_overlap(&self.source, &self.store))?;
        if let Some(p) = &self.prefix {
            c(check_prefix(&self.source, p))?;
        }
        self.exclude_settings()?;
        Ok(())
    }

    /// The tree a run of `source` backs up: it, or the prefix below it.
    pub fn tree_of(&self, source: &Path) -> PathBuf {
        match &self.prefix {
            Some(p) => source.join(p.as_path()),
            None => source.to_path_buf(),
        }
    }

    /// Every exclusion setting: those read once ([`BackupOptions::read_exclusions`]),
    /// else the pattern files read now (an unreadable file or a bad line is a usage
    /// error naming the file and the line).
    pub fn exclude_settings(&self) -> Result<crate::exclude::Settings> {
        if let Some(s) = &self.exclusion {
            return Ok(s.clone());
        }
        crate::exclude::Settings::resolve(
            &self.excludes,
            &self.exclude_from,
            self.exclude_caches,
            &self.exclude_if_present,
        )
    }

    /// Reads the pattern files now, once, and keeps what they held for every later
    /// use ([`BackupOptions::exclusion`]).
    pub fn read_exclusions(&mut self) -> Result<()> {
        self.exclusion = None;
        self.exclusion = Some(self.exclude_settings()?);
        Ok(())
    }
}

pub fn check_label(label: &str) -> std::result::Result<(), String> {
    if crate::store::rotation::valid_label(label) {
        return Ok(());
    }
    Err(format!(
        "label {label:?} is not valid: use letters, digits, '_' or '-', starting with a letter (daily, hourly, weekly)"
    ))
}

/// `--host NAME` (a job's `host`): the hostname a backup into a restic repository
/// records, picks its parent by and groups its retention by (restic's `backup --host`).
/// Not empty, no control characters (it is printed in reports and logs, one a line).
pub fn check_host(host: &str) -> std::result::Result<(), String> {
    if host.trim().is_empty() {
        return Err("host must not be empty: give the name the snapshots are to record".into());
    }
    if host.chars().any(char::is_control) {
        return Err(format!("host {host:?} holds a control character"));
    }
    // " podA" would start a lineage (a parent, a retention group) apart from "podA".
    if host.trim() != host {
        return Err(format!(
            "host {host:?} begins or ends with white space: give the name alone"
        ));
    }
    Ok(())
}

pub fn check_retain(retain: i64) -> std::result::Result<(), String> {
    match retain {
        1..=0xFFFF_FFFF => Ok(()),
        0 => Err("retain must be at least 1: 0 would keep no snapshot".into()),
        n => Err(format!("retain must be between 1 and 4294967295, not {n}")),
    }
}

pub fn check_jobs(jobs: i64) -> std::result::Result<(), String> {
    if (0..=4096).contains(&jobs) {
        return Ok(());
    }
    Err(format!(
        "jobs must be between 1 and 4096 (or 0 for the default), not {jobs}"
    ))
}

/// A window shorter than 1 s ends every run before it can publish.
pub fn check_window(w: Duration) -> std::result::Result<(), String> {
    if w >= Duration::from_secs(1) {
        return Ok(());
    }
    Err(format!(
        "window must be at least 1s (e.g. 45s, 180m, 3h), not {}s: a shorter one ends every run before it can publish",
        w.as_secs_f64()
    ))
}

/// The store must not be inside the source, nor the source inside the store. Compares
/// where the paths really lead: `dest/../src/x` or a symlink into the source must not
/// slip past (the backup would copy itself forever). Reads only.
pub fn check_overlap(source: &Path, store: &Path) -> std::result::Result<(), String> {
    check_overlap_resolved(source, store, &resolve(source), &resolve(store))
}

/// [`check_overlap`] of `source` and `store`, which lead to `s` and `d` ([`resolve`]).
pub fn check_overlap_resolved(
    source: &Path,
    store: &Path,
    s: &Path,
    d: &Path,
) -> std::result::Result<(), String> {
    if !(d.starts_with(s) || s.starts_with(d)) {
        return Ok(());
    }
    Err(format!(
        "source {} and store {} overlap (they resolve to {} and {}): the backup would back itself up; put the store outside the source tree, and the source outside the store (an exclude does not make it safe)",
        crate::relpath::shown(source),
        crate::relpath::shown(store),
        crate::relpath::shown(s),
        crate::relpath::shown(d)
    ))
}

/// A `file://` repository at path `repo` against the source: refused where a store
/// would be ([`check_overlap`]: the source inside the repository, or the same
/// directory, the backup would back itself up), except a repository below the source
/// that `patterns` exclude (one of the directories from the source down to it matched
/// as a directory): every run leaves it out. `hint(rel)` says how to exclude it
/// (`rel` the repository's path below the source). Reads only (`config check` and
/// `backup --dest file://...` ask the same).
pub fn check_repository_overlap(
    source: &Path,
    repo: &Path,
    patterns: &[String],
    hint: impl Fn(&str) -> String,
) -> std::result::Result<(), String> {
    let (s, r) = (resolve(source), resolve(repo));
    check_repository_overlap_resolved(source, repo, &s, &r, patterns, hint)
}

/// [`check_repository_overlap`] of `source` and `repo`, which lead to `s` and `r`
/// ([`resolve`]).
pub fn check_repository_overlap_resolved(
    source: &Path,
    repo: &Path,
    s: &Path,
    r: &Path,
    patterns: &[String],
    hint: impl Fn(&str) -> String,
) -> std::result::Result<(), String> {
    let Err(m) = check_overlap_resolved(source, repo, s, r) else {
        return Ok(());
    };
    let rel = match r.strip_prefix(s) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel,
        _ => return Err(m),
    };
    if let Ok(ex) = crate::exclude::build(patterns) {
        let mut at = RelPath::root();
        if rel.components().any(|c| {
            at = at.join(c.as_os_str().as_encoded_bytes());
            ex.is_excluded(&at, true)
        }) {
            return Ok(());
        }
    }
    Err(format!(
        "{m}; a repository inside the source may instead be excluded ({}): every run would otherwise leave it out and end partial",
        hint(&rel.display().to_string())
    ))
}

/// The prefix must stay inside the source (not through a symlink out of it). Reads only.
pub fn check_prefix(source: &Path, prefix: &RelPath) -> std::result::Result<(), String> {
    let s = resolve(source);
    let r = resolve(&source.join(prefix.as_path()));
    check_prefix_resolved(prefix, &s, &r)
}

/// [`check_prefix`] of a source that leads to `s` and its `prefix` to `r` ([`resolve`]).
pub fn check_prefix_resolved(
    prefix: &RelPath,
    s: &Path,
    r: &Path,
) -> std::result::Result<(), String> {
    if r.starts_with(s) {
        return Ok(());
    }
    Err(format!(
        "prefix {} leads out of the source {} (it resolves to {}, a symlink): give a directory inside the source",
        prefix.as_path().display(),
        crate::relpath::shown(s),
        crate::relpath::shown(r)
    ))
}

/// Where `p` really leads, whether or not it exists yet: absolute, with every symlink
/// and `..` of its existing part resolved (as `canonicalize` does), and the part that
/// does not exist yet appended (a `..` there drops the component before it, as a later
/// `mkdir -p` would).
pub fn resolve(p: &Path) -> PathBuf {
    resolve_with(p, |q| Some(std::fs::canonicalize(q).ok())).unwrap_or_else(|| p.to_path_buf())
}

/// [`resolve`], each existing part of `p` canonicalized by `canon` (`Some(None)`: it
/// does not exist or cannot be resolved), which may give no answer (`None`: a file
/// system that does not answer in time): then `None`.
pub fn resolve_with(
    p: &Path,
    mut canon: impl FnMut(&Path) -> Option<Option<PathBuf>>,
) -> Option<PathBuf> {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = PathBuf::new();
    // Whether `out` exists (so far every component did and `out` is canonical).
    let mut exists = true;
    for c in abs.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => out.push(c.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir if !exists => {
                out.pop();
            }
            _ => out.push(c.as_os_str()),
        }
        if let Some(real) = canon(&out)? {
            out = real;
            exists = true;
        } else {
            exists = false;
        }
    }
    Some(out)
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

    #[test]
    fn resolve_follows_dotdot_and_symlinks_into_paths_that_do_not_exist_yet() {
        let t = std::env::temp_dir().join(format!("snapring-resolve-{}", std::process::id()));
        let src = t.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::os::unix::fs::symlink(&src, t.join("link")).unwrap();
        let real = std::fs::canonicalize(&src).unwrap();
        assert_eq!(resolve(&t.join("link/new/bk")), real.join("new/bk"));
        assert_eq!(resolve(&t.join("nope/../src/x")), real.join("x"));
        assert_eq!(resolve(&t.join("src/./a/../b")), real.join("b"));
        std::fs::remove_dir_all(&t).unwrap();
    }
}
