//! The TOML config file: one `[job.NAME]` table per backup job. Unknown keys are errors
//! and every error names its line. `resolve` merges a job with command-line flags
//! (flags win) into `BackupOptions`. Reads the file; otherwise pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::options::{AUTO_JOBS, BackupOptions, parse_duration};
use crate::error::{Error, Result};
use crate::relpath::RelPath;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The run catalog (SQLite); default: see `catalog::default_path`.
    pub catalog: Option<PathBuf>,
    #[serde(default)]
    pub job: BTreeMap<String, JobConfig>,
    /// Notifiers by name; jobs refer to them in `notify = [...]`.
    #[serde(default)]
    pub notify: BTreeMap<String, crate::notify::NotifierConfig>,
}

/// One backup job; every field can also be given (and overridden) on the command line.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    pub source: Option<PathBuf>,
    pub dest: Option<PathBuf>,
    pub folder: Option<String>,
    pub label: Option<String>,
    pub retain: Option<u32>,
    pub prefix: Option<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    pub jobs: Option<usize>,
    pub require_mount: Option<bool>,
    pub allow_empty: Option<bool>,
    pub window: Option<String>,
    /// When the daemon runs it: 5-field cron, `@daily`, or the AWS `cron(0 2 * * ? *)`.
    pub schedule: Option<String>,
    /// IANA time zone for the schedule (default UTC).
    pub timezone: Option<String>,
    /// Runs missed while the daemon was down: `run-once` (default) or `skip`.
    pub missed: Option<String>,
    /// Names of `[notify.NAME]` tables to tell about this job's runs.
    #[serde(default)]
    pub notify: Vec<String>,
    /// Also notify when a run is `complete` (failures, partial and incomplete runs
    /// always notify).
    pub notify_success: Option<bool>,
}

/// How the daemon treats a scheduled time that passed while it was not running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missed {
    RunOnce,
    Skip,
}

impl JobConfig {
    pub fn missed(&self) -> std::result::Result<Missed, String> {
        match self.missed.as_deref() {
            None | Some("run-once") => Ok(Missed::RunOnce),
            Some("skip") => Ok(Missed::Skip),
            Some(x) => Err(format!("missed = {x:?}: use \"run-once\" or \"skip\"")),
        }
    }

    pub fn schedule(&self) -> std::result::Result<Option<crate::schedule::Schedule>, String> {
        self.schedule
            .as_deref()
            .map(|s| crate::schedule::parse(s, self.timezone.as_deref()))
            .transpose()
    }
}

pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

pub fn parse(text: &str) -> std::result::Result<Config, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

impl Config {
    /// The job named `name`, or the only job when `name` is `None`.
    pub fn pick(&self, name: Option<&str>) -> Result<(String, JobConfig)> {
        match name {
            Some(n) => self
                .job
                .get(n)
                .map(|j| (n.to_string(), j.clone()))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "no job named {n:?}; the config has: {}",
                        self.job.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                }),
            None if self.job.len() == 1 => {
                let (n, j) = self.job.iter().next().expect("one job");
                Ok((n.clone(), j.clone()))
            }
            None => Err(Error::Config(format!(
                "the config has {} jobs; name one with --job ({})",
                self.job.len(),
                self.job.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

impl Config {
    /// The notifiers job `name` refers to, by name, as this config defines them; an
    /// error names the job, the key and every name without a `[notify.NAME]` table.
    pub fn notifiers_of(
        &self,
        name: &str,
        job: &JobConfig,
    ) -> Result<Vec<(String, crate::notify::NotifierConfig)>> {
        let unknown: Vec<String> = job
            .notify
            .iter()
            .filter(|n| !self.notify.contains_key(*n))
            .map(|n| format!("{n:?}"))
            .collect();
        if !unknown.is_empty() {
            let defined = if self.notify.is_empty() {
                "none is defined".to_string()
            } else {
                format!(
                    "defined: {}",
                    self.notify.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            };
            return Err(Error::Config(format!(
                "job {name}: notify names {}, but there is no such [notify.NAME] table ({defined})",
                unknown.join(", ")
            )));
        }
        Ok(job
            .notify
            .iter()
            .map(|n| (n.clone(), self.notify[n].clone()))
            .collect())
    }
}

/// Merges a job from the file (if any) with flags given as another `JobConfig` (whose
/// set fields win), and checks the result.
pub fn resolve(
    name: Option<String>,
    file: Option<JobConfig>,
    flags: JobConfig,
) -> Result<BackupOptions> {
    let f = file.unwrap_or_default();
    let source = flags
        .source
        .or(f.source)
        .ok_or_else(|| Error::Config("no source: give --source or set source in the job".into()))?;
    let dest = flags.dest.or(f.dest).ok_or_else(|| {
        Error::Config("no destination: give --dest or set dest in the job".into())
    })?;
    let folder = flags.folder.or(f.folder);
    let store = match &folder {
        Some(name) => {
            let p =
                RelPath::new(name.as_bytes()).map_err(|e| Error::Config(format!("folder: {e}")))?;
            dest.join(p.as_path())
        }
        None => dest,
    };
    let mut o = BackupOptions::new(source, store);
    o.job = name;
    if let Some(l) = flags.label.or(f.label) {
        o.label = l;
    }
    if let Some(r) = flags.retain.or(f.retain) {
        o.retain = r;
    }
    if let Some(p) = flags.prefix.or(f.prefix) {
        let trimmed = p.trim_matches('/');
        if !trimmed.is_empty() {
            o.prefix = Some(
                RelPath::new(trimmed.as_bytes())
                    .map_err(|e| Error::Config(format!("prefix: {e}")))?,
            );
        }
    }
    o.excludes = f.exclude.into_iter().chain(flags.exclude).collect();
    o.jobs = flags.jobs.or(f.jobs).unwrap_or(AUTO_JOBS);
    o.require_mount = flags.require_mount.or(f.require_mount).unwrap_or(false);
    o.allow_empty = flags.allow_empty.or(f.allow_empty).unwrap_or(false);
    if let Some(w) = flags.window.or(f.window) {
        o.window = Some(parse_duration(&w).map_err(|e| Error::Config(format!("window: {e}")))?);
    }
    o.validate()?;
    Ok(o)
}

/// The 1-based line of `key =` inside the table `[header]` of `text`, or of the header.
fn line_of(text: &str, header: &str, key: Option<&str>) -> Option<usize> {
    let mut in_table = false;
    let mut header_line = None;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            in_table = t.trim_start_matches('[').trim_end_matches(']').trim() == header;
            if in_table {
                header_line = Some(i + 1);
            }
            continue;
        }
        if in_table
            && let Some(k) = key
            && t.split('=').next().map(str::trim) == Some(k)
        {
            return Some(i + 1);
        }
    }
    header_line
}

/// Checks a whole config file: every job must resolve, every schedule parse, every
/// notifier be complete and every notifier a job names exist. Returns one line per
/// problem, each with its line number where there is one.
pub fn check(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => check_text(path, &text),
        Err(e) => vec![Error::Config(format!("cannot read {}: {e}", path.display())).to_string()],
    }
}

/// [`check`] on the text of the file at `path` (named in the messages).
pub fn check_text(path: &Path, text: &str) -> Vec<String> {
    let cfg = match parse(text) {
        Ok(c) => c,
        Err(e) => return vec![Error::Config(format!("{}: {e}", path.display())).to_string()],
    };
    let at = |header: &str, key: Option<&str>| {
        line_of(text, header, key)
            .map(|l| format!("{}:{l}: ", path.display()))
            .unwrap_or_else(|| format!("{}: ", path.display()))
    };
    if cfg.job.is_empty() {
        return vec![format!("{}: no [job.NAME] table", path.display())];
    }
    let mut out = Vec::new();
    for (n, j) in &cfg.job {
        let h = format!("job.{n}");
        if let Err(e) = resolve(Some(n.clone()), Some(j.clone()), JobConfig::default()) {
            let key = e.to_string().contains("window").then_some("window");
            out.push(format!("{}job {n}: {e}", at(&h, key)));
        }
        if let Err(e) = j.schedule() {
            let key = if e.contains("time zone") {
                "timezone"
            } else {
                "schedule"
            };
            out.push(format!("{}job {n}: {e}", at(&h, Some(key))));
        }
        if let Err(e) = j.missed() {
            out.push(format!("{}job {n}: {e}", at(&h, Some("missed"))));
        }
        if let Err(Error::Config(e)) = cfg.notifiers_of(n, j) {
            out.push(format!("{}{e}", at(&h, Some("notify"))));
        }
    }
    for (n, c) in &cfg.notify {
        for e in c.problems() {
            out.push(format!(
                "{}notify {n}: {e}",
                at(&format!("notify.{n}"), None)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let e = parse("[job.a]\nsource = \"/x\"\nretian = 3\n").unwrap_err();
        assert!(e.contains("retian"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let cfg = parse("[job.efs]\nsource = \"/mnt/efs\"\ndest = \"/mnt/b\"\nfolder = \"fs-1\"\nretain = 3\nexclude = [\"*.tmp\"]\n").unwrap();
        let (n, j) = cfg.pick(None).unwrap();
        let flags = JobConfig {
            retain: Some(9),
            exclude: vec!["cache/".into()],
            ..Default::default()
        };
        let o = resolve(Some(n), Some(j), flags).unwrap();
        assert_eq!(o.store, PathBuf::from("/mnt/b/fs-1"));
        assert_eq!(o.retain, 9);
        assert_eq!(o.excludes, ["*.tmp", "cache/"]);
        assert_eq!(o.job.as_deref(), Some("efs"));
    }

    #[test]
    fn bad_values_are_explained() {
        let j = JobConfig {
            source: Some("/a".into()),
            dest: Some("/b".into()),
            label: Some("da ily".into()),
            ..Default::default()
        };
        assert!(
            resolve(None, Some(j.clone()), JobConfig::default())
                .unwrap_err()
                .to_string()
                .contains("label")
        );
        let j2 = JobConfig {
            folder: Some("../x".into()),
            ..j
        };
        assert!(
            resolve(None, Some(j2), JobConfig::default())
                .unwrap_err()
                .to_string()
                .contains("folder")
        );
    }
}
