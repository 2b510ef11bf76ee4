//! The TOML config file: one `[job.NAME]` table per backup job. A file is checked
//! whole before it is used (`check.rs`: every problem at once, each at its key's line),
//! so `run`, the daemon and `config check` refuse it with the same list. `resolve`
//! merges a job with command-line flags (flags win) into `BackupOptions`. Reads the
//! file; otherwise pure.

pub mod check;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::options::{AUTO_JOBS, BackupOptions, parse_duration};
use crate::error::{Ctx, Error, Result};
use crate::relpath::RelPath;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The run catalog (SQLite); default: see `catalog::default_path`.
    pub catalog: Option<PathBuf>,
    #[serde(default)]
    pub job: BTreeMap<String, JobConfig>,
    /// Notifiers by name; jobs refer to them in `notify = [...]`.
    #[serde(default)]
    pub notify: BTreeMap<String, crate::notify::NotifierConfig>,
    /// When set, `snapring daemon` also serves the dashboard and `/metrics`, as
    /// `snapring serve` does (docs/monitoring.md).
    pub server: Option<ServerConfig>,
    /// How many runs `snapring daemon` has going at once (default
    /// [`default_max_runs`]); runs due past it wait in due order (docs/daemon.md).
    pub max_runs: Option<u32>,
}

/// The daemon's `max_runs` when the file sets none: the number of CPUs, at least 4 (a
/// backup mostly waits on disks and the network, not on a CPU).
pub fn default_max_runs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(4)
}

impl Config {
    /// How many runs the daemon has going at once ([`Config::max_runs`]).
    pub fn max_runs(&self) -> usize {
        match self.max_runs {
            Some(n) if n > 0 => n as usize,
            _ => default_max_runs(),
        }
    }
}

/// The `[server]` table: `snapring serve`'s flags for the daemon's own server.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `ADDR:PORT` (default `127.0.0.1:9477`); any address but loopback needs a token.
    pub listen: Option<String>,
    /// A file holding the bearer token (else `SNAPRING_SERVE_TOKEN`).
    pub token_file: Option<PathBuf>,
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
    /// Pattern files, one pattern a line (rsync's `--exclude-from`); absolute paths.
    #[serde(default)]
    pub exclude_from: Vec<PathBuf>,
    /// Leave out the contents of a directory holding a valid `CACHEDIR.TAG`.
    pub exclude_caches: Option<bool>,
    /// Leave out the contents of a directory holding an entry of one of these names
    /// (`NAME`, or `NAME:HEADER` for a file starting with HEADER).
    #[serde(default)]
    pub exclude_if_present: Vec<String>,
    pub jobs: Option<usize>,
    pub require_mount: Option<bool>,
    pub allow_empty: Option<bool>,
    /// Stay on the source's file system (`rsync -x`): a directory on another file
    /// system is kept as an empty directory, its contents left out.
    pub one_file_system: Option<bool>,
    pub window: Option<String>,
    /// Bandwidth limit, bytes per second read plus written: `50MiB`, `800K` (1024-based,
    /// as rsync), `0` for none.
    pub bwlimit: Option<String>,
    /// Into a restic repository: record real access times (restic's `--with-atime`);
    /// by default the mtime is recorded as the access time, as restic does.
    pub with_atime: Option<bool>,
    /// Into a restic repository: the hostname its snapshots record, their parent is
    /// picked by and their retention groups by (restic's `backup --host`); for a source
    /// backed up from a container whose hostname changes each run.
    pub host: Option<String>,
    /// Program and arguments run before the walk (no shell); if it fails, the run fails
    /// and nothing is published.
    pub pre_command: Option<Vec<String>>,
    /// Program and arguments run after the run, whatever its status, with the report
    /// on stdin and `SNAPRING_STATUS`, `SNAPRING_RUN_ID`, `SNAPRING_SNAPSHOT` set.
    pub post_command: Option<Vec<String>>,
    /// Timeout of each of them (default 10m); the command's process group is killed.
    pub hook_timeout: Option<String>,
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
    /// The repository password's file, for a `dest` that is a restic repository
    /// (`file:///PATH` or `s3://BUCKET/PREFIX`).
    pub password_file: Option<PathBuf>,
    /// How long the store keeps run records and logs (`.snapring/runs`, `logs`):
    /// a duration (default `30d`) or `forever`; the newest 100, those of snapshots
    /// still in the store and those of failed runs for 90 days are kept whatever it
    /// says (`store::runs`).
    pub keep_run_records: Option<String>,
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

/// Reads and checks the config at `path`. Every problem of the file is the error
/// (`check::check_text`), except a job's missing `source` or `dest`, which
/// `backup --config` may get from a flag (`resolve` refuses it if not).
pub fn load(path: &Path) -> Result<Config> {
    load_checked(path, false)
}

/// As [`load`], and a job without `source` or `dest` is a problem too (for `run` and
/// the daemon, which take no flags).
pub fn load_complete(path: &Path) -> Result<Config> {
    load_checked(path, true)
}

/// As [`load_complete`], with the text it checked: the daemon hands that text, not the
/// file as it may be by the time a job runs, to each run.
pub fn load_complete_text(path: &Path) -> Result<(Config, String)> {
    let text = read(path)?;
    Ok((checked(path, &text, true)?, text))
}

/// A config `snapring run JOB` does not take ([`load_for_job`]): the error, and the
/// config as parsed when it parses, so the job's own problem can be recorded and
/// notified as a failed run of it.
#[derive(Debug)]
pub struct Refused {
    pub error: Error,
    pub parsed: Option<Box<Config>>,
}

/// For a run of job `name` the daemon started: the running configuration at `path`
/// (named `shown` in messages: the daemon's file, not the descriptor a run reads it
/// through), refused for a problem of the file as a whole, of job `name` (missing
/// `source`/`dest` included) or of a notifier it names. Another job's problem is
/// logged and does not stop this one: the daemon checked the whole text when it
/// loaded it, so what is found now is of the file system (an `exclude_from` file gone,
/// a store path that now leads into a source), and one job's must not stop every
/// other job's runs.
pub fn load_for_job(path: &Path, shown: &Path, name: &str) -> std::result::Result<Config, Refused> {
    let refused = |error, parsed: Option<Config>| Refused {
        error,
        parsed: parsed.map(Box::new),
    };
    let text = read_as(path, shown).map_err(|e| refused(e, None))?;
    let parsed = parse(&text);
    let own = check::dotted("job", name);
    let notifiers: Vec<String> = parsed
        .as_ref()
        .ok()
        .and_then(|c| c.job.get(name))
        .map(|j| {
            j.notify
                .iter()
                .map(|n| check::dotted("notify", n))
                .collect()
        })
        .unwrap_or_default();
    let under = |k: &str, t: &str| k == t || k.strip_prefix(t).is_some_and(|r| r.starts_with('.'));
    let (mine, others): (Vec<_>, Vec<_>) = check::check_text(&text).into_iter().partition(|p| {
        if p.key.starts_with("job.") {
            under(&p.key, &own)
        } else if p.key.starts_with("notify.") {
            notifiers.iter().any(|n| under(&p.key, n))
        } else {
            true
        }
    });
    for p in &others {
        tracing::warn!("{} (not job {name}'s: its run goes on)", p.render(shown));
    }
    match parsed {
        Ok(cfg) if mine.is_empty() => Ok(cfg),
        Ok(cfg) => Err(refused(problems_error(shown, &mine), Some(cfg))),
        Err(_) if !mine.is_empty() => Err(refused(problems_error(shown, &mine), None)),
        Err(e) => Err(refused(
            Error::Config(format!("{}: {e}", shown.display())),
            None,
        )),
    }
}

/// `FILE has N problems:` and one line each.
fn problems_error(shown: &Path, problems: &[check::Problem]) -> Error {
    let lines: Vec<String> = problems.iter().map(|p| p.render(shown)).collect();
    Error::Config(format!(
        "{} has {}:\n{}",
        shown.display(),
        count(lines.len()),
        lines.join("\n")
    ))
}

fn load_checked(path: &Path, complete: bool) -> Result<Config> {
    checked(path, &read(path)?, complete)
}

fn checked(path: &Path, text: &str, complete: bool) -> Result<Config> {
    let problems: Vec<String> = check::check_text(text)
        .into_iter()
        .filter(|p| complete || !p.missing)
        .map(|p| p.render(path))
        .collect();
    if !problems.is_empty() {
        return Err(Error::Config(format!(
            "{} has {}:\n{}",
            path.display(),
            count(problems.len()),
            problems.join("\n")
        )));
    }
    parse(text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

fn read(path: &Path) -> Result<String> {
    read_as(path, path)
}

/// The most a config file may hold: far more than any real one (a thousand jobs are
/// some hundred KiB), and little enough that a wrong path does not exhaust memory.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The text of the config file `path` (named `shown` in errors): a regular file only
/// (`/dev/zero` or a fifo given by mistake would be read forever or block), of at most
/// [`MAX_CONFIG_BYTES`].
fn read_as(path: &Path, shown: &Path) -> Result<String> {
    use std::io::Read;
    let fail =
        |e: String| Error::Config(format!("cannot read {}: {e}", crate::relpath::shown(shown)));
    let f = crate::fsx::open_regular(path, true).map_err(|e| fail(e.to_string()))?;
    let too_big = || {
        fail(format!(
            "larger than {} MiB: not a config file",
            MAX_CONFIG_BYTES >> 20
        ))
    };
    let len = f.metadata().map_err(|e| fail(e.to_string()))?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    // Bounded again while reading: the file may grow after the size was taken.
    let mut buf = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| fail(e.to_string()))?;
    if buf.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    String::from_utf8(buf).map_err(|e| {
        let at = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = at.iter().filter(|&&b| b == b'\n').count() + 1;
        fail(format!(
            "line {line} is not UTF-8; a TOML file is UTF-8 text, so a path whose name is not UTF-8 (a Latin-1 directory) cannot be written in it: give it with --source, --dest or --to on the command line, which take any bytes"
        ))
    })
}

/// "1 problem", "3 problems".
pub fn count(n: usize) -> String {
    format!("{n} problem{}", if n == 1 { "" } else { "s" })
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
                    let hint = check::suggest(n, self.job.keys().map(String::as_str))
                        .map(|x| format!(" (did you mean {x:?}?)"))
                        .unwrap_or_default();
                    Error::Config(format!(
                        "no job named {n:?}{hint}; the config has: {}",
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
        // A name listed twice is told once (a config with `notify = ["w", "w"]`
        // POSTed twice; refusing it would stop a daemon an upgrade finds it in).
        let mut seen = std::collections::HashSet::new();
        Ok(job
            .notify
            .iter()
            .filter(|n| seen.insert(n.as_str()))
            .map(|n| (n.clone(), self.notify[n].clone()))
            .collect())
    }
}

/// Merges a job from the file (if any) with flags given as another `JobConfig` (whose
/// set fields win), and checks the result.
/// The `--config` the daemon gives a run: the running configuration's text on its
/// stdin (a memfd), read through `/proc` from offset 0 each time.
pub const FROM_STDIN: &str = "/proc/self/fd/0";

/// For a run the daemon started (`--config` is `FROM_STDIN`): copies the text into a
/// close-on-exec memfd of this process, whose `/proc/self/fd/N` is returned to read
/// instead (keep the `File` open while it is read), and points stdin at `/dev/null`, so
/// the run's hooks and notifier commands inherit neither. Any other path: unchanged.
pub fn private_copy(path: &Path) -> Result<(Option<std::fs::File>, PathBuf)> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    if path != Path::new(FROM_STDIN) {
        return Ok((None, path.to_path_buf()));
    }
    let text = std::fs::read(path).ctx("read the running configuration from", path)?;
    let mut f = rustix::fs::memfd_create("snapring-config", rustix::fs::MemfdFlags::CLOEXEC)
        .map(std::fs::File::from)
        .map_err(std::io::Error::from)
        .ctx("create a memfd for", path)?;
    f.write_all(&text)
        .ctx("copy the running configuration from", path)?;
    let null = std::fs::File::open("/dev/null").ctx("open", "/dev/null")?;
    rustix::stdio::dup2_stdin(&null)
        .map_err(std::io::Error::from)
        .ctx("point stdin at /dev/null instead of", path)?;
    let copy = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    Ok((Some(f), copy))
}

pub fn resolve(
    name: Option<String>,
    file: Option<JobConfig>,
    flags: JobConfig,
) -> Result<BackupOptions> {
    let mut o = resolve_unchecked(name, file, flags)?;
    // The pattern files are read once, here: the run applies and records what they
    // held then (a pipe cannot be read twice).
    o.read_exclusions()?;
    o.validate()?;
    Ok(o)
}

/// [`resolve`] without [`BackupOptions::validate`], which reads the file system (the
/// `exclude_from` files, where the source and store lead): the options of a run that
/// is refused, to record it.
pub fn resolve_unchecked(
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
    match flags.retain.or(f.retain) {
        Some(r) => o.retain = r,
        None => o.retain_default = true,
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
    if let Some(p) = f.exclude_from.iter().find(|p| !p.is_absolute()) {
        return Err(Error::Config(format!(
            "exclude_from {}: give an absolute path in a config file",
            p.display()
        )));
    }
    o.exclude_from = f
        .exclude_from
        .into_iter()
        .chain(flags.exclude_from)
        .collect();
    o.exclude_caches = flags.exclude_caches.or(f.exclude_caches).unwrap_or(false);
    o.exclude_if_present = f
        .exclude_if_present
        .into_iter()
        .chain(flags.exclude_if_present)
        .collect();
    o.jobs = flags.jobs.or(f.jobs).unwrap_or(AUTO_JOBS);
    o.require_mount = flags.require_mount.or(f.require_mount).unwrap_or(false);
    o.allow_empty = flags.allow_empty.or(f.allow_empty).unwrap_or(false);
    o.one_file_system = flags.one_file_system.or(f.one_file_system).unwrap_or(false);
    if let Some(w) = flags.window.or(f.window) {
        o.window = Some(parse_duration(&w).map_err(|e| Error::Config(format!("window: {e}")))?);
    }
    if let Some(b) = flags.bwlimit.or(f.bwlimit) {
        o.bwlimit = crate::throttle::parse_rate(&b).map_err(Error::Config)?;
    }
    let timeout = match flags.hook_timeout.or(f.hook_timeout) {
        None => crate::hooks::DEFAULT_TIMEOUT,
        Some(t) => crate::util::parse_duration(&t)
            .ok()
            .filter(|d| *d >= std::time::Duration::from_secs(1))
            .ok_or_else(|| {
                Error::Config(format!(
                    "hook_timeout {t:?}: give a duration of at least 1s (30s, 10m)"
                ))
            })?,
    };
    if let Some(k) = flags.keep_run_records.or(f.keep_run_records) {
        o.run_records = crate::store::runs::RunRetention::parse(&k).map_err(Error::Config)?;
    }
    o.pre_command = hook("pre_command", flags.pre_command.or(f.pre_command), timeout)?;
    o.post_command = hook(
        "post_command",
        flags.post_command.or(f.post_command),
        timeout,
    )?;
    Ok(o)
}

/// A pre or post command from its argument list; an empty list is an error.
fn hook(
    key: &str,
    argv: Option<Vec<String>>,
    timeout: std::time::Duration,
) -> Result<Option<crate::hooks::Hook>> {
    match argv {
        None => Ok(None),
        Some(a) if a.first().is_none_or(|p| p.is_empty()) => Err(Error::Config(format!(
            "{key} is empty: give [\"program\", \"arg\", ...]"
        ))),
        Some(argv) => Ok(Some(crate::hooks::Hook {
            argv,
            timeout,
            kill_leftovers: false,
        })),
    }
}

/// Checks a whole config file: one line per problem (`FILE:LINE:COL: KEY: MESSAGE`,
/// see `check::Problem::render`), in file order; empty when it is fine.
pub fn check(path: &Path) -> Vec<String> {
    match read(path) {
        // Notifiers' secrets too: a missing one is found here, not when a run fails.
        Ok(text) => check::check_text_secrets(&text)
            .iter()
            .map(|p| p.render(path))
            .collect(),
        Err(e) => vec![e.to_string()],
    }
}

/// [`check`] on the text of the file at `path` (named in the messages): what the fuzz
/// target `config` feeds.
pub fn check_text(path: &Path, text: &str) -> Vec<String> {
    check::check_text(text)
        .iter()
        .map(|p| p.render(path))
        .collect()
}

/// `--listen` (and `[server] listen`): an IP address and a port. A host name is not
/// taken (what it resolves to may change, and the access rule is by address); the
/// error says what to give, `localhost` its addresses. The error starts with the value
/// quoted, for the caller to prefix with where it came from.
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse::<std::net::SocketAddr>().map_err(|_| {
        let host = s.rsplit_once(':').map_or(s, |(h, _)| h);
        let hint = if host.eq_ignore_ascii_case("localhost") {
            ": for localhost give 127.0.0.1 (or [::1] for IPv6)".to_string()
        } else if !s.contains(':') {
            ": it needs a port after the address".to_string()
        } else {
            ": an IP address (IPv6 in brackets, [::1]:9477) and a port, not a host name".to_string()
        };
        format!("{s:?} is not ADDR:PORT (such as 127.0.0.1:9477; port 0 picks a free one){hint}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notifier a job lists twice is told once: it was POSTed twice.
    #[test]
    fn a_notifier_listed_twice_is_told_once() {
        let cfg = parse("[job.a]\nsource = \"/s\"\ndest = \"/d\"\nnotify = [\"w\", \"x\", \"w\"]\n\n[notify.w]\ntype = \"command\"\ncommand = [\"/bin/true\"]\n\n[notify.x]\ntype = \"command\"\ncommand = [\"/bin/true\"]\n").unwrap();
        let (n, j) = cfg.pick(None).unwrap();
        let names: Vec<String> = cfg
            .notifiers_of(&n, &j)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["w", "x"]);
    }

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
