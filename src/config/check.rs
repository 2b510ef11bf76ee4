//! Checks a config file's text and reports every problem at once, each at the line and
//! column of the key it is about (of the table header for a key that is missing): keys
//! no table knows (with a "did you mean" among the keys of that table), values of the
//! wrong type, values that make every run fail (`retain = 0`, `window = "0s"`, an empty
//! source, a schedule that never fires, a store or `file://` repository inside the
//! source, two jobs whose retentions would expire each other's snapshots, a hook with
//! no program, a job name that is empty), and names of
//! notifiers no `[notify.NAME]` table defines. The known keys of
//! each table are one list each (`JOB_KEYS`, `NOTIFY_KEYS`, `TOP_KEYS`): a new key is
//! one line there (and its field in `JobConfig`/`NotifierConfig`; a test keeps the two
//! in step). Reads the file system only to resolve where the source and store really
//! lead.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::engine::options as opt;
use crate::notify::NotifierConfig;
use crate::relpath::RelPath;

type Check = Result<(), String>;

/// What a key's value must be, and the check of its value.
#[derive(Clone, Copy)]
pub enum Kind {
    Str(fn(&str) -> Check),
    Int(fn(i64) -> Check),
    Bool,
    /// An array of strings, each checked (and reported at its own place).
    List(fn(&str) -> Check),
    /// A table of named tables (`[job.NAME]`), each with these keys.
    Tables(&'static [Key]),
    /// One table (`[server]`) with these keys.
    Table(&'static [Key]),
}

/// One key a table may have.
pub struct Key {
    pub name: &'static str,
    pub kind: Kind,
    /// A valid value, as written in TOML (shown in type errors).
    pub example: &'static str,
}

const fn key(name: &'static str, kind: Kind, example: &'static str) -> Key {
    Key {
        name,
        kind,
        example,
    }
}

/// The keys of a `[job.NAME]` table (`config::JobConfig`).
pub const JOB_KEYS: &[Key] = &[
    key("source", Kind::Str(path), "\"/mnt/efs\""),
    key("dest", Kind::Str(path), "\"/mnt/backup\""),
    key("folder", Kind::Str(folder), "\"fs-12345678\""),
    key("label", Kind::Str(opt::check_label), "\"daily\""),
    key("retain", Kind::Int(opt::check_retain), "7"),
    key("prefix", Kind::Str(prefix), "\"home\""),
    key("exclude", Kind::List(exclude), "[\"*.tmp\", \"cache/\"]"),
    key(
        "exclude_from",
        Kind::List(exclude_file),
        "[\"/etc/snapring/efs.exclude\"]",
    ),
    key("exclude_caches", Kind::Bool, "true"),
    key(
        "exclude_if_present",
        Kind::List(exclude_tag),
        "[\".nobackup\"]",
    ),
    key("jobs", Kind::Int(opt::check_jobs), "64"),
    key("require_mount", Kind::Bool, "true"),
    key("allow_empty", Kind::Bool, "false"),
    key("one_file_system", Kind::Bool, "true"),
    key("window", Kind::Str(window), "\"3h\""),
    key("schedule", Kind::Str(schedule), "\"cron(0 2 * * ? *)\""),
    key("timezone", Kind::Str(timezone), "\"Europe/Berlin\""),
    key("missed", Kind::Str(missed), "\"run-once\""),
    key("notify", Kind::List(any), "[\"ops\"]"),
    key("notify_success", Kind::Bool, "true"),
    key("bwlimit", Kind::Str(bwlimit), "\"50MiB\""),
    key("with_atime", Kind::Bool, "true"),
    key("host", Kind::Str(opt::check_host), "\"backup-efs\""),
    key(
        "pre_command",
        Kind::List(any),
        "[\"/usr/local/bin/freeze\", \"--on\"]",
    ),
    key("post_command", Kind::List(any), "[\"/usr/local/bin/thaw\"]"),
    key("hook_timeout", Kind::Str(hook_timeout), "\"10m\""),
    key("keep_run_records", Kind::Str(keep_run_records), "\"30d\""),
    key(
        "password_file",
        Kind::Str(path),
        "\"/etc/snapring/repo-password\"",
    ),
];

/// The keys of a job that a restic repository `dest` does not take (yet); the binary
/// refuses them too (`cli/restic.rs`).
pub const REPOSITORY_REFUSES: &[&str] = &[
    "folder",
    "prefix",
    "require_mount",
    "bwlimit",
    "pre_command",
    "post_command",
    "keep_run_records",
];

/// The keys of a `[notify.NAME]` table (`notify::NotifierConfig`); their values are
/// checked together by `NotifierConfig::problems`.
pub const NOTIFY_KEYS: &[Key] = &[
    key("type", Kind::Str(any), "\"webhook\""),
    key("url", Kind::Str(any), "\"https://hooks.example.com/x\""),
    key("url_env", Kind::Str(any), "\"SNAPRING_WEBHOOK_URL\""),
    key("url_file", Kind::Str(any), "\"/etc/snapring/webhook-url\""),
    key("format", Kind::Str(any), "\"slack\""),
    key("smtp_host", Kind::Str(any), "\"smtp.example.com\""),
    key("smtp_port", Kind::Int(port), "587"),
    key("tls", Kind::Str(any), "\"starttls\""),
    key("username", Kind::Str(any), "\"backup\""),
    key("password_env", Kind::Str(any), "\"SMTP_PASSWORD\""),
    key(
        "password_file",
        Kind::Str(any),
        "\"/etc/snapring/smtp-password\"",
    ),
    key("from", Kind::Str(any), "\"backup@example.com\""),
    key("to", Kind::List(any), "[\"ops@example.com\"]"),
    key(
        "command",
        Kind::List(any),
        "[\"/usr/local/bin/page\", \"--team\", \"ops\"]",
    ),
    key("retries", Kind::Int(retries), "2"),
    key("timeout", Kind::Str(any), "\"30s\""),
];

/// The top level of the file (`config::Config`).
pub const TOP_KEYS: &[Key] = &[
    key(
        "catalog",
        Kind::Str(catalog),
        "\"/var/lib/snapring/catalog.db\"",
    ),
    key("job", Kind::Tables(JOB_KEYS), "{}"),
    key("max_runs", Kind::Int(max_runs), "4"),
    key("notify", Kind::Tables(NOTIFY_KEYS), "{}"),
    key("server", Kind::Table(SERVER_KEYS), "{}"),
];

/// The keys of the `[server]` table (`config::ServerConfig`).
pub const SERVER_KEYS: &[Key] = &[
    key("listen", Kind::Str(listen), "\"127.0.0.1:9477\""),
    key(
        "token_file",
        Kind::Str(path),
        "\"/etc/snapring/serve-token\"",
    ),
];

fn listen(l: &str) -> Check {
    super::parse_listen(l)
        .map(|_| ())
        .map_err(|e| format!("listen = {e}"))
}

/// Other tools' names for snapring's keys, for "did you mean".
const ALIASES: &[(&str, &str)] = &[
    ("keep", "retain"),
    ("interval", "label"),
    ("destination", "dest"),
    ("target", "dest"),
    ("src", "source"),
    ("cron", "schedule"),
    ("tz", "timezone"),
    ("concurrency", "jobs"),
    ("threads", "jobs"),
    ("excludes", "exclude"),
    ("exclude_file", "exclude_from"),
    ("exclude_files", "exclude_from"),
    ("one_fs", "one_file_system"),
    ("xdev", "one_file_system"),
    ("jobs", "job"),
    ("notifiers", "notify"),
];

fn any(_: &str) -> Check {
    Ok(())
}

/// A path in a config file: absolute (or a repository URL, for `dest`). A relative
/// one would name another place for each directory snapring is started from: the
/// shell's for a manual run, the daemon's for a scheduled one.
fn path(p: &str) -> Check {
    if p.is_empty() {
        return Err("an empty path: every run would fail; give a directory".into());
    }
    if let Some(rest) = p.strip_prefix("file://")
        && !rest.starts_with('/')
    {
        return Err(format!(
            "{p:?}: a file:// repository is file:///ABSOLUTE/PATH (three slashes)"
        ));
    }
    if let Some(hint) = crate::restic::backend::restic_syntax_in_config(p) {
        return Err(hint);
    }
    if !Path::new(p).is_absolute() && !p.starts_with("s3://") && !p.starts_with("file://") {
        let tilde = match p.starts_with('~') {
            true => "; `~` is not expanded in a config file",
            false => "",
        };
        return Err(format!(
            "{p:?} is a relative path; give an absolute one (a relative path would depend on the directory snapring is started from){tilde}"
        ));
    }
    Ok(())
}

/// The catalog: an absolute path, or `off`.
fn catalog(p: &str) -> Check {
    if p == "off" { Ok(()) } else { path(p) }
}

fn folder(f: &str) -> Check {
    RelPath::new(f.as_bytes())
        .map(|_| ())
        .map_err(|e| format!("folder {f:?}: {e}"))
}

fn prefix(p: &str) -> Check {
    let t = p.trim_matches('/');
    if t.is_empty() {
        return Ok(());
    }
    RelPath::new(t.as_bytes())
        .map(|_| ())
        .map_err(|e| format!("prefix {p:?}: {e}"))
}

fn exclude(p: &str) -> Check {
    crate::exclude::check_given(p)
        .map(|_| ())
        .map_err(|e| e.to_string().trim_start_matches("config: ").to_string())
}

/// An `exclude_from` file: absolute, readable, every line a valid pattern (the error
/// names the file and the line).
fn exclude_file(p: &str) -> Check {
    let path = std::path::Path::new(p);
    if !path.is_absolute() {
        return Err(format!("exclude file {p:?}: give an absolute path"));
    }
    crate::exclude::read_file(path)
        .map(|_| ())
        .map_err(|e| e.to_string().trim_start_matches("config: ").to_string())
}

fn exclude_tag(t: &str) -> Check {
    crate::exclude::check_tag(t)
        .map_err(|e| e.to_string().trim_start_matches("config: ").to_string())
}

fn window(w: &str) -> Check {
    let d = crate::util::parse_duration(w).map_err(|e| format!("window: {e}"))?;
    opt::check_window(d)
}

fn bwlimit(b: &str) -> Check {
    crate::throttle::parse_rate(b).map(|_| ())
}

fn hook_timeout(t: &str) -> Check {
    match crate::util::parse_duration(t) {
        Ok(d) if d >= std::time::Duration::from_secs(1) => Ok(()),
        _ => Err(format!(
            "hook_timeout {t:?}: give a duration of at least 1s (30s, 10m)"
        )),
    }
}

fn keep_run_records(k: &str) -> Check {
    crate::store::runs::RunRetention::parse(k).map(|_| ())
}

fn schedule(s: &str) -> Check {
    crate::schedule::parse(s, None).map(|_| ())
}

fn timezone(tz: &str) -> Check {
    crate::schedule::parse("@daily", Some(tz)).map(|_| ())
}

fn missed(m: &str) -> Check {
    match m {
        "run-once" | "skip" => Ok(()),
        x => Err(format!("missed = {x:?}: use \"run-once\" or \"skip\"")),
    }
}

fn port(p: i64) -> Check {
    match p {
        1..=65535 => Ok(()),
        _ => Err(format!("smtp_port must be between 1 and 65535, not {p}")),
    }
}

/// The daemon's `max_runs`: 0 is the default (the CPUs, at least 4).
fn max_runs(n: i64) -> Check {
    match n {
        0..=4096 => Ok(()),
        _ => Err(format!(
            "max_runs must be between 1 and 4096 (0: the default), not {n}"
        )),
    }
}

fn retries(r: i64) -> Check {
    match r {
        0..=1000 => Ok(()),
        _ => Err(format!("retries must be between 0 and 1000, not {r}")),
    }
}

/// One problem of a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column (in characters) of the key, of the element of a list, or
    /// of the table header for a key that is missing; 0 when there is no place.
    pub line: usize,
    pub col: usize,
    /// The dotted key (`job.home.retain`); empty for the file as a whole.
    pub key: String,
    pub message: String,
    /// What was probably meant (a known key, a defined notifier).
    pub suggestion: Option<String>,
    /// A required key (source, dest) is missing: `backup --config` may still get it
    /// from a flag, so only `config check`, `run` and the daemon count it.
    pub missing: bool,
}

impl Problem {
    /// `FILE:LINE:COL: KEY: MESSAGE (did you mean `X`?)`.
    pub fn render(&self, file: &Path) -> String {
        let mut s = file.display().to_string();
        if self.line > 0 {
            s.push_str(&format!(":{}:{}", self.line, self.col));
        }
        s.push_str(": ");
        if !self.key.is_empty() {
            s.push_str(&self.key);
            s.push_str(": ");
        }
        s.push_str(&self.message);
        if let Some(x) = &self.suggestion {
            s.push_str(&format!(" (did you mean `{x}`?)"));
        }
        s
    }
}

/// A store and label one job writes ([`Checker::stores`]).
struct SharedStore {
    store: PathBuf,
    label: String,
    source: PathBuf,
    retain: Option<String>,
    job: String,
}

/// Every problem of the config `text`, in file order.
pub fn check_text(text: &str) -> Vec<Problem> {
    check_text_as(text, false)
}

/// [`check_text`], and the notifiers' secrets are looked for where this process runs
/// (`NotifierConfig::secret_problems`): `config check`'s, not a run's.
pub fn check_text_secrets(text: &str) -> Vec<Problem> {
    check_text_as(text, true)
}

fn check_text_as(text: &str, secrets: bool) -> Vec<Problem> {
    let mut c = Checker {
        secrets,
        starts: std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect(),
        text,
        out: Vec::new(),
        stores: Vec::new(),
        repos: Vec::new(),
        resolver: Resolver::default(),
    };
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        // A syntax error makes the rest of the file's meaning a guess: report only these.
        for e in errors {
            let span = e.span().unwrap_or(0..0);
            c.push(span, String::new(), e.message().trim().to_string(), None);
        }
        return c.out;
    }
    let doc = doc.get_ref();
    c.keys(doc, "", TOP_KEYS);
    let notifiers: Vec<String> = table_of(doc, "notify")
        .map(|t| t.iter().map(|(k, _)| k.get_ref().to_string()).collect())
        .unwrap_or_default();
    match table_of(doc, "job") {
        Some(jobs) if !jobs.is_empty() => {
            for (name, job) in jobs.iter() {
                if let Some(m) = bad_job_name(name.get_ref()) {
                    c.push(name.span(), dotted("job", name.get_ref()), m, None);
                }
                if let DeValue::Table(t) = job.get_ref() {
                    let at = name.span();
                    c.job(at, &dotted("job", name.get_ref()), t, &notifiers);
                }
            }
        }
        _ => c.push(0..0, String::new(), "no [job.NAME] table".into(), None),
    }
    if let Some(ns) = table_of(doc, "notify") {
        for (name, n) in ns.iter() {
            c.notifier(name.span(), &dotted("notify", name.get_ref()), n);
        }
    }
    c.out.sort_by_key(|p| (p.line, p.col));
    c.out
}

/// Why a job's name is not one: empty, or `.` or `..`. (Any other name is escaped where
/// it is shown: mails, the dashboard and `/metrics` are tested with quotes and newlines
/// in it.) The dashboard links a job as `/job/NAME`, its name percent-encoded but for
/// `A-Za-z0-9-._~` (`text::url_seg`); a browser (and any client following RFC 3986)
/// removes a `.` or `..` segment before it asks, so `/job/..` was `/`: the job could not
/// be reached. No other name makes such a segment: `/`, `%`, `\`, `?`, `#` and
/// white space are encoded, and a browser takes `%2E` for a dot only when it is the
/// whole segment, which only these two names are.
fn bad_job_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a job's name is empty: give it one ([job.home])".into());
    }
    if name == "." || name == ".." {
        return Some(format!(
            "a job cannot be named {name:?}: its dashboard page /job/{name} would be \
             normalized away by browsers; give it another name"
        ));
    }
    None
}

fn table_of<'a, 'i>(t: &'a DeTable<'i>, name: &str) -> Option<&'a DeTable<'i>> {
    entry(t, name).and_then(|(_, v)| match v.get_ref() {
        DeValue::Table(t) => Some(t),
        _ => None,
    })
}

fn entry<'a, 'i>(
    t: &'a DeTable<'i>,
    name: &str,
) -> Option<(Range<usize>, &'a Spanned<DeValue<'i>>)> {
    t.iter()
        .find(|(k, _)| k.get_ref() == name)
        .map(|(k, v)| (k.span(), v))
}

/// The job's `exclude` patterns: a repository inside the source that they leave out is
/// left out by the run, as the user meant (`check_repository_overlap`; a store is
/// refused all the same: its hard links into the source's tree are not safe).
fn exclude_patterns(t: &DeTable<'_>) -> Vec<String> {
    match entry(t, "exclude").map(|(_, v)| v.get_ref()) {
        Some(DeValue::Array(a)) => a
            .iter()
            .filter_map(|v| match v.get_ref() {
                DeValue::String(p) => Some(p.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The string value of key `name` of `t`, with the key's place.
fn str_of<'a>(t: &'a DeTable<'_>, name: &str) -> Option<(&'a str, Range<usize>)> {
    entry(t, name).and_then(|(at, v)| match v.get_ref() {
        DeValue::String(s) => Some((s.as_ref(), at)),
        _ => None,
    })
}

/// `parent.name`, quoting a name that is not a bare TOML key.
pub(crate) fn dotted(parent: &str, name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let name = if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    };
    if parent.is_empty() {
        name
    } else {
        format!("{parent}.{name}")
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Str(_) => "a string",
        Kind::Int(_) => "an integer",
        Kind::Bool => "true or false",
        Kind::List(_) => "an array of strings",
        Kind::Tables(_) => "a table of [NAME] tables",
        Kind::Table(_) => "a table",
    }
}

/// The closest of `known` to `name`: another tool's name for it, or one within a small
/// edit distance (a typo, two swapped letters).
pub fn suggest<'a>(name: &str, known: impl IntoIterator<Item = &'a str> + Clone) -> Option<String> {
    if let Some((_, to)) = ALIASES.iter().find(|(from, _)| *from == name)
        && known.clone().into_iter().any(|k| k == *to)
    {
        return Some(to.to_string());
    }
    let limit = (name.chars().count() / 3).max(1);
    known
        .into_iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k.to_string())
}

/// Optimal string alignment distance: insertions, deletions, substitutions and
/// swaps of two neighbouring characters each cost 1.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * w + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let sub = d[(i - 1) * w + j - 1] + usize::from(a[i - 1] != b[j - 1]);
                let mut best = sub.min(d[(i - 1) * w + j] + 1).min(d[i * w + j - 1] + 1);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * w + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * w + b.len()]
}

struct Checker<'t> {
    /// Byte offset of each line's start.
    starts: Vec<usize>,
    text: &'t str,
    out: Vec<Problem>,
    /// Each store (dest and folder, lexically normalized) and label a job writes, the
    /// job's source and `retain` (as written), and the job's key.
    stores: Vec<SharedStore>,
    /// The same of each restic repository a job writes (`store`: its URL, normalized).
    repos: Vec<SharedStore>,
    /// Notifiers' secrets are looked for too (`config check`).
    secrets: bool,
    /// Where the jobs' paths lead, each part of them resolved in bounded time.
    resolver: Resolver,
}

/// How long the check waits for a file system to resolve one path ([`Resolver`]).
const RESOLVE_BUSY: Duration = Duration::from_secs(3);

/// A canonicalized path, or none (it does not exist, or cannot be resolved).
type Canonical = Option<PathBuf>;

/// How long the late answer of a path a check gave up on is kept for the next check
/// that asks it ([`GIVEN_UP`]): a file system slow but alive answers that check at once.
const LATE_KEPT: Duration = Duration::from_secs(10);

/// The paths whose `canonicalize` a check gave up on ([`RESOLVE_BUSY`]), for the whole
/// process: `None` while that call is still under way, then its late answer (kept
/// [`LATE_KEPT`] for the next check that asks it). A later check (the daemon's next
/// reload) gives such a path, and every path through it, up at once, and starts no
/// thread for it: one thread stays stuck per path that hangs, not one per check (a
/// daemon reloaded while a store hung piled one up each time, and waited 3 s each).
static GIVEN_UP: std::sync::Mutex<GivenUp> = std::sync::Mutex::new(GivenUp::new());

/// [`GIVEN_UP`]'s map: by path, `None` while its call is under way, then when its late
/// answer came and the answer.
type GivenUp = std::collections::BTreeMap<PathBuf, Option<(std::time::Instant, Canonical)>>;

fn given_up() -> std::sync::MutexGuard<'static, GivenUp> {
    GIVEN_UP.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves the paths of a config's jobs for its check ([`opt::resolve_with`]), each
/// `canonicalize` made by a worker thread that the check waits for [`RESOLVE_BUSY`] at
/// most: a path that does not answer (a hard-mounted NFS export whose server is down)
/// is given up, and so is every path through it from then on, at once. Its worker is
/// left stuck there, and a new one resolves the rest. Given up for later checks too,
/// until its call returns ([`GIVEN_UP`]): one worker stuck per such path.
#[derive(Default)]
struct Resolver {
    worker: Option<std::sync::mpsc::Sender<(PathBuf, std::sync::mpsc::Sender<Canonical>)>>,
    known: std::collections::HashMap<PathBuf, Canonical>,
    hung: Vec<PathBuf>,
}

impl Resolver {
    /// `p` canonicalized, `None` if its file system did not answer in time.
    fn canonical(&mut self, p: &Path) -> Option<Canonical> {
        if self.hung.iter().any(|h| p.starts_with(h)) {
            return None;
        }
        if let Some(k) = self.known.get(p) {
            return Some(k.clone());
        }
        {
            let mut g = given_up();
            g.retain(|_, a| a.as_ref().is_none_or(|(at, _)| at.elapsed() < LATE_KEPT));
            if g.iter().any(|(h, a)| a.is_none() && p.starts_with(h)) {
                // An earlier check's call on it (or on a path it goes through) has not
                // returned: no second one.
                self.hung.push(p.to_path_buf());
                return None;
            }
            if let Some(Some((_, late))) = g.remove(p) {
                self.known.insert(p.to_path_buf(), late.clone());
                return Some(late);
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let mut sent = self
            .worker
            .as_ref()
            .is_some_and(|w| w.send((p.to_path_buf(), tx.clone())).is_ok());
        if !sent {
            let (wtx, wrx) =
                std::sync::mpsc::channel::<(PathBuf, std::sync::mpsc::Sender<Canonical>)>();
            let spawned = std::thread::Builder::new()
                .name("config-resolve".into())
                .spawn(move || {
                    for (q, answer) in wrx {
                        let c = std::fs::canonicalize(&q).ok();
                        // Under the lock: the check that waits takes the answer, or has
                        // given the path up and gets it late ([`GIVEN_UP`]).
                        let mut g = given_up();
                        if let Some(slot) = g.get_mut(&q) {
                            *slot = Some((std::time::Instant::now(), c.clone()));
                        }
                        let _ = answer.send(c);
                    }
                });
            if spawned.is_err() {
                // No thread: resolved here, unbounded, as before.
                let c = std::fs::canonicalize(p).ok();
                self.known.insert(p.to_path_buf(), c.clone());
                return Some(c);
            }
            sent = wtx.send((p.to_path_buf(), tx)).is_ok();
            self.worker = Some(wtx);
        }
        match rx.recv_timeout(RESOLVE_BUSY) {
            Ok(c) if sent => {
                self.known.insert(p.to_path_buf(), c.clone());
                Some(c)
            }
            _ => {
                let mut g = given_up();
                // It answered as the wait ended.
                if sent && let Ok(c) = rx.try_recv() {
                    self.known.insert(p.to_path_buf(), c.clone());
                    return Some(c);
                }
                if sent {
                    g.insert(p.to_path_buf(), None);
                }
                self.hung.push(p.to_path_buf());
                self.worker = None;
                None
            }
        }
    }
}

impl Checker<'_> {
    /// Where path `p` (job `dk`'s `what`) leads ([`opt::resolve`]), or `None`, logged,
    /// if its file system did not answer in time ([`Resolver`]): what needs it is not
    /// checked here (a run of the job checks it before it writes anything).
    fn resolve(&mut self, dk: &str, what: &str, p: &Path) -> Option<PathBuf> {
        let r = &mut self.resolver;
        let got = opt::resolve_with(p, |q| r.canonical(q));
        if got.is_none() {
            tracing::warn!(
                "{dk}: its {what} {} has not answered in {}s (its file system is slow or hangs): not checked against the job's other paths here (a run of the job checks it)",
                crate::relpath::shown(p),
                RESOLVE_BUSY.as_secs()
            );
        }
        got
    }

    fn push(&mut self, at: Range<usize>, key: String, message: String, suggestion: Option<String>) {
        let (line, col) = self.place(at.start);
        self.out.push(Problem {
            line,
            col,
            key,
            message,
            suggestion,
            missing: false,
        });
    }

    /// 1-based line and column of byte `offset`; (0, 0) for an empty span at 0 of an
    /// empty file.
    fn place(&self, offset: usize) -> (usize, usize) {
        if self.text.is_empty() {
            return (0, 0);
        }
        let line = self.starts.partition_point(|s| *s <= offset);
        let start = self.starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        (line, col)
    }

    /// Checks every key of table `t` (at `path`) against `known`.
    fn keys(&mut self, t: &DeTable<'_>, path: &str, known: &'static [Key]) {
        for (k, v) in t.iter() {
            let name = k.get_ref().as_ref();
            let dk = dotted(path, name);
            match known.iter().find(|x| x.name == name) {
                None => {
                    let s = suggest(name, known.iter().map(|x| x.name));
                    self.push(k.span(), dk, "unknown key".into(), s);
                }
                Some(kd) => self.value(kd, &dk, k.span(), v),
            }
        }
    }

    /// Checks one value's type and, through its key's check, the value itself.
    fn value(&mut self, kd: &Key, dk: &str, at: Range<usize>, v: &Spanned<DeValue<'_>>) {
        let r = match (kd.kind, v.get_ref()) {
            (Kind::Str(f), DeValue::String(s)) => f(s),
            (Kind::Int(f), DeValue::Integer(i)) => match i64::from_str_radix(i.as_str(), i.radix())
            {
                Ok(n) => f(n),
                Err(_) => Err(format!("{} is out of range", i.as_str())),
            },
            (Kind::Bool, DeValue::Boolean(_)) => Ok(()),
            (Kind::List(f), DeValue::Array(a)) => {
                for e in a.iter() {
                    let r = match e.get_ref() {
                        DeValue::String(s) => f(s),
                        other => Err(format!(
                            "each entry must be a string, not {}",
                            type_name(other)
                        )),
                    };
                    if let Err(m) = r {
                        self.push(e.span(), dk.to_string(), m, None);
                    }
                }
                Ok(())
            }
            (Kind::Table(keys), DeValue::Table(t)) => {
                self.keys(t, dk, keys);
                Ok(())
            }
            (Kind::Tables(keys), DeValue::Table(t)) => {
                for (name, sub) in t.iter() {
                    let sk = dotted(dk, name.get_ref());
                    match sub.get_ref() {
                        DeValue::Table(st) => self.keys(st, &sk, keys),
                        other => self.push(
                            name.span(),
                            sk,
                            format!("must be a table ([{dk}.NAME]), not {}", type_name(other)),
                            None,
                        ),
                    }
                }
                Ok(())
            }
            (k, other) => Err(format!(
                "must be {} (e.g. {} = {}), not {}",
                kind_name(k),
                kd.name,
                kd.example,
                type_name(other)
            )),
        };
        if let Err(m) = r {
            self.push(at, dk.to_string(), m, None);
        }
    }

    /// What only the job as a whole can say: a missing source or dest, a store inside
    /// the source, a prefix leading out of it, notifiers no table defines.
    fn job(&mut self, at: Range<usize>, dk: &str, t: &DeTable<'_>, notifiers: &[String]) {
        if self.secrets {
            self.schedule_over(dk, t);
        }
        for (k, example) in [("source", "\"/mnt/efs\""), ("dest", "\"/mnt/backup\"")] {
            if entry(t, k).is_none() {
                self.push(
                    at.clone(),
                    dk.to_string(),
                    format!("no {k}: set {k} = {example}"),
                    None,
                );
                self.out.last_mut().expect("pushed").missing = true;
            }
        }
        let good = |k: &str, f: fn(&str) -> Check| str_of(t, k).filter(|(v, _)| f(v).is_ok());
        if let Some((dest, _)) = good("dest", path)
            && (dest.starts_with("s3://") || dest.starts_with("file://"))
        {
            // A restic repository: the store's own settings do not apply (yet).
            for k in REPOSITORY_REFUSES {
                if let Some((at, _)) = entry(t, k) {
                    self.push(
                        at,
                        dotted(dk, k),
                        format!(
                            "{k} is not supported with a restic repository dest yet; remove it"
                        ),
                        None,
                    );
                }
            }
            self.repository(dk, t, dest);
            self.job_notifiers(dk, t, notifiers);
            return;
        }
        // An empty hook makes every run fail (`config::hook` refuses it) before anything
        // is recorded; a repository dest refuses hooks altogether, above.
        for k in ["pre_command", "post_command"] {
            if let Some((at, v)) = entry(t, k)
                && let DeValue::Array(a) = v.get_ref()
                && a.iter()
                    .next()
                    .is_none_or(|e| matches!(e.get_ref(), DeValue::String(p) if p.is_empty()))
            {
                let m = format!(
                    "{k} has no program: every run would fail; give [\"program\", \"arg\", ...] or remove it"
                );
                self.push(at, dotted(dk, k), m, None);
            }
        }
        for k in ["with_atime", "host"] {
            if good("dest", path).is_some()
                && let Some((at, _)) = entry(t, k)
            {
                self.push(
                    at,
                    dotted(dk, k),
                    format!(
                        "{k} applies to a restic repository dest (file:// or s3://) only; remove it"
                    ),
                    None,
                );
            }
        }
        if let (Some((src, _)), Some((dest, dest_at))) = (good("source", path), good("dest", path))
        {
            let mut store = PathBuf::from(dest);
            if let Some((f, _)) = good("folder", folder) {
                store.push(f);
            }
            // Where they lead, each bounded: another job's store or source that hangs
            // (a hard-mounted NFS export whose server is down) held every run of every
            // job of the file, and the daemon's start, in this check.
            let (s, d) = (
                self.resolve(dk, "source", Path::new(src)),
                self.resolve(dk, "store", &store),
            );
            if let (Some(s), Some(d)) = (s, d) {
                if let Err(m) = opt::check_overlap_resolved(Path::new(src), &store, &s, &d) {
                    self.push(dest_at.clone(), dotted(dk, "dest"), m, None);
                }
                // Two jobs on one store and label share one rotation: a run of either
                // expires the other's snapshots by its own `retain`. Of one source with
                // one `retain` (a scheduled job and a manual one, say) that is one
                // history; of two sources, or with two `retain`s, one job deletes the
                // other's. A label that is not valid is its own problem, and no label
                // here.
                let label = match entry(t, "label") {
                    None => Some("daily"),
                    Some(_) => good("label", opt::check_label).map(|(l, _)| l),
                };
                let retain = entry(t, "retain").map(|(_, v)| format!("{:?}", v.get_ref()));
                let shared = label.map(|label| SharedStore {
                    store: d.clone(),
                    label: label.to_string(),
                    source: s.clone(),
                    retain,
                    job: dk.to_string(),
                });
                if let Some(me) = &shared
                    && let Some(other) = self.stores.iter().find(|o| {
                        o.store == me.store
                            && o.label == me.label
                            && (o.source != me.source || o.retain != me.retain)
                    })
                {
                    let m = format!(
                        "{} writes the same store ({}) with the same label ({}) {}: each job's \
                         retention would expire the other's snapshots; give this job its own \
                         folder or label",
                        other.job,
                        store.display(),
                        me.label,
                        if other.source == me.source {
                            "with another retain"
                        } else {
                            "from another source"
                        },
                    );
                    self.push(dest_at, dotted(dk, "dest"), m, None);
                }
                self.stores.extend(shared);
                if let Some((p, p_at)) = good("prefix", prefix)
                    && let Ok(rel) = RelPath::new(p.trim_matches('/').as_bytes())
                    && let Some(r) = self.resolve(dk, "prefix", &Path::new(src).join(rel.as_path()))
                    && let Err(m) = opt::check_prefix_resolved(&rel, &s, &r)
                {
                    self.push(p_at, dotted(dk, "prefix"), m, None);
                }
            }
        }
        self.job_notifiers(dk, t, notifiers);
    }

    /// A restic repository `dest`: a `file://` one inside the source (or containing
    /// it), and two jobs of one source and label on one repository with two `retain`s.
    /// A repository's `forget` keeps the newest N of each label per host and paths, so
    /// jobs of two sources are two histories there (unlike on a store), but one source
    /// written with two `retain`s is one history the smaller `retain` cuts down.
    fn repository(&mut self, dk: &str, t: &DeTable<'_>, dest: &str) {
        let Some((dest_at, _)) = entry(t, "dest") else {
            return;
        };
        let source = str_of(t, "source").filter(|(v, _)| path(v).is_ok());
        // One repository, however written: a file:// one where its path leads, an
        // s3:// one by bucket and prefix (`s3://b/p/` and `s3://b//p` are `s3://b/p`).
        let repo = match dest.strip_prefix("file://") {
            Some(p) => {
                let r = self.resolve(dk, "repository", Path::new(p));
                if let Some((src, _)) = source
                    && let Some(r) = &r
                    && let Some(s) = self.resolve(dk, "source", Path::new(src))
                    && let Err(m) = opt::check_repository_overlap_resolved(
                        Path::new(src),
                        Path::new(p),
                        &s,
                        r,
                        &exclude_patterns(t),
                        |rel| format!("exclude = [\"/{rel}\"]"),
                    )
                {
                    self.push(dest_at.clone(), dotted(dk, "dest"), m, None);
                }
                let Some(r) = r else {
                    return;
                };
                format!("file://{}", r.display())
            }
            None => {
                let rest = dest.strip_prefix("s3://").unwrap_or(dest);
                let parts: Vec<&str> = rest.split('/').filter(|x| !x.is_empty()).collect();
                format!("s3://{}", parts.join("/"))
            }
        };
        let Some((src, _)) = source else {
            return;
        };
        let label = match entry(t, "label") {
            None => Some("daily"),
            Some(_) => str_of(t, "label")
                .filter(|(l, _)| opt::check_label(l).is_ok())
                .map(|(l, _)| l),
        };
        let Some(label) = label else {
            return;
        };
        let Some(source) = self.resolve(dk, "source", Path::new(src)) else {
            return;
        };
        let me = SharedStore {
            store: PathBuf::from(&repo),
            label: label.to_string(),
            source,
            retain: entry(t, "retain").map(|(_, v)| format!("{:?}", v.get_ref())),
            job: dk.to_string(),
        };
        // A job without `retain` forgets nothing in a repository: no clash with any.
        if let Some(other) = self.repos.iter().find(|o| {
            o.store == me.store
                && o.label == me.label
                && o.source == me.source
                && o.retain.is_some()
                && me.retain.is_some()
                && o.retain != me.retain
        }) {
            let m = format!(
                "{} writes the same repository ({repo}) from the same source with the same \
                 label ({}) and another retain: each job's forget would remove the other's \
                 snapshots; give this job its own label or the same retain",
                other.job, me.label,
            );
            self.push(dest_at, dotted(dk, "dest"), m, None);
        }
        self.repos.push(me);
    }

    /// Each name in a job's `notify` that no `[notify.NAME]` table defines (once each: a
    /// name listed twice is told once).
    fn job_notifiers(&mut self, dk: &str, t: &DeTable<'_>, notifiers: &[String]) {
        let Some((_, v)) = entry(t, "notify") else {
            return;
        };
        let DeValue::Array(a) = v.get_ref() else {
            return;
        };
        let defined = if notifiers.is_empty() {
            "none is defined".to_string()
        } else {
            format!("defined: {}", notifiers.join(", "))
        };
        let mut seen: Vec<&str> = Vec::new();
        for e in a.iter() {
            let DeValue::String(n) = e.get_ref() else {
                continue;
            };
            // Listed again: told once (`Config::notifiers_of`), not a problem.
            if seen.contains(&n.as_ref()) {
                continue;
            }
            seen.push(n.as_ref());
            if !notifiers.iter().any(|x| x == n.as_ref()) {
                let s = suggest(n, notifiers.iter().map(String::as_str));
                let m =
                    format!("notify names {n:?}, but there is no [notify.{n}] table ({defined})");
                self.push(e.span(), dotted(dk, "notify"), m, s);
            }
        }
    }

    /// A notifier's values together (`NotifierConfig::problems`), judged on the keys of
    /// it that are known and of the right type (those that are not are reported already,
    /// and are left out here): every problem of the table at once, so that one pass of
    /// edits fixes the file. Without a usable `type`, only what every type shares
    /// (`timeout`) is judged.
    /// A job's schedule whose last time is past (a year field that is over:
    /// `cron(0 2 * * ? 2020)`, an EventBridge rule copied with its year), for `config
    /// check` only (it judges the clock it runs by, as it judges the notifiers' secrets
    /// on the machine it runs on): refused as one that never fires is, since a daemon
    /// given it backs the job up no more and never will. A run and the daemon still
    /// load it (a config must not break by itself when a date passes: the other jobs
    /// run on), and the daemon tells the job's notifiers that it will not run.
    fn schedule_over(&mut self, dk: &str, t: &DeTable<'_>) {
        let Some((expr, at)) = str_of(t, "schedule") else {
            return;
        };
        let tz = str_of(t, "timezone").map(|(z, _)| z);
        let Ok(s) = crate::schedule::parse(expr, tz) else {
            return;
        };
        let now = chrono::Utc::now();
        if s.next_after(now).is_none() && !s.past_the_horizon(now) {
            let m = format!(
                "schedule {expr:?}: its last time is past (its year field is over): the job would never run again; give the years to come, or remove the job"
            );
            self.push(at, dotted(dk, "schedule"), m, None);
        }
    }

    fn notifier(&mut self, at: Range<usize>, dk: &str, v: &Spanned<DeValue<'_>>) {
        let DeValue::Table(t) = v.get_ref() else {
            return;
        };
        let bad: Vec<&str> = self.out.iter().map(|p| p.key.as_str()).collect();
        let mut usable = DeTable::new();
        for (k, v) in t.iter() {
            if !bad.contains(&dotted(dk, k.get_ref()).as_str()) {
                usable.insert(k.clone(), v.clone());
            }
        }
        let typed = entry(&usable, "type").is_some();
        if entry(t, "type").is_none() {
            let m = "no type: set type = \"webhook\", \"email\" or \"command\"".to_string();
            self.push(at.clone(), dk.to_string(), m, None);
        }
        if !typed {
            usable.insert(
                Spanned::new(0..0, "type".into()),
                Spanned::new(0..0, DeValue::String("".into())),
            );
        }
        let whole = Spanned::new(v.span(), DeValue::Table(usable));
        let c = match NotifierConfig::deserialize(whole.into_deserializer()) {
            Ok(c) => c,
            Err(e) => return self.push(at, dk.to_string(), e.message().to_string(), None),
        };
        let secrets = match self.secrets && typed {
            true => c.secret_problems(),
            false => Vec::new(),
        };
        for (k, m) in c.problems().into_iter().chain(secrets) {
            if !typed && !matches!(k, Some("timeout")) {
                continue;
            }
            match k.and_then(|k| entry(t, k)) {
                Some((kat, _)) => self.push(kat, dotted(dk, k.expect("some")), m, None),
                None => self.push(at.clone(), dk.to_string(), m, None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        check_text(text)
            .iter()
            .map(|p| p.render(Path::new("c.toml")))
            .collect()
    }

    #[test]
    fn typos_get_a_suggestion_at_their_own_line_and_column() {
        let got = lines(
            "[job.a]\nsource = \"/s\"\ndest = \"/d\"\n  retian = 3\nshedule = \"@daily\"\nkeep = 2\n",
        );
        assert_eq!(
            got,
            [
                "c.toml:4:3: job.a.retian: unknown key (did you mean `retain`?)",
                "c.toml:5:1: job.a.shedule: unknown key (did you mean `schedule`?)",
                "c.toml:6:1: job.a.keep: unknown key (did you mean `retain`?)",
            ]
        );
    }

    #[test]
    fn every_bad_value_is_reported() {
        let got = lines(
            "[job.a]\nsource = \"\"\ndest = \"/d\"\nretain = 0\nwindow = \"0s\"\nlabel = \"da ily\"\nschedule = \"0 0 31 2 *\"\njobs = \"8\"\nexclude = [\"ok\", \"a[\"]\n",
        );
        let want = [
            ("c.toml:2:1: job.a.source:", "empty path"),
            ("c.toml:4:1: job.a.retain:", "at least 1"),
            ("c.toml:5:1: job.a.window:", "at least 1s"),
            ("c.toml:6:1: job.a.label:", "not valid"),
            ("c.toml:7:1: job.a.schedule:", "never fires"),
            (
                "c.toml:8:1: job.a.jobs:",
                "must be an integer (e.g. jobs = 64), not a string",
            ),
            ("c.toml:9:18: job.a.exclude:", "unclosed character class"),
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, (at, what)) in got.iter().zip(want) {
            assert!(g.starts_with(at) && g.contains(what), "{g} vs {at} {what}");
        }
    }

    /// A notifier listed twice in a job is told once, and is not a problem (a daemon
    /// upgraded onto such a config keeps running); an unknown name listed twice is one
    /// problem.
    #[test]
    fn a_notifier_listed_twice_is_no_problem_and_an_unknown_one_is_told_once() {
        let got = lines(
            "[job.a]\nsource = \"/s\"\ndest = \"/d\"\nnotify = [\"w\", \"x\", \"w\", \"y\", \"y\"]\n\n[notify.w]\ntype = \"command\"\ncommand = [\"/bin/true\"]\n\n[notify.x]\ntype = \"command\"\ncommand = [\"/bin/true\"]\n",
        );
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(got[0].contains("notify names \"y\""), "{got:#?}");
    }

    /// Every problem of a notifier at once: a key of the wrong type or an unknown key no
    /// longer hides the problems of its other keys, nor does a missing `type` hide a bad
    /// `timeout`.
    #[test]
    fn every_problem_of_a_notifier_is_reported() {
        let got = lines(
            "[job.a]\nsource = \"/s\"\ndest = \"/d\"\nnotify = [\"w\", \"x\"]\n\n[notify.w]\ntype = \"webhook\"\nurl = \"ftp://example.com/x\"\nformat = \"xml\"\ntimeout = 5\nbogus = 1\n\n[notify.x]\nurl = \"ftp://example.com/x\"\ntimeout = \"0s\"\n",
        );
        let want = [
            (
                "c.toml:8:1: notify.w.url:",
                "give an http:// or https:// URL",
            ),
            (
                "c.toml:9:1: notify.w.format:",
                "format must be \"json\" or \"slack\"",
            ),
            ("c.toml:10:1: notify.w.timeout:", "must be a string"),
            ("c.toml:11:1: notify.w.bogus:", "unknown key"),
            ("c.toml:13:9: notify.x:", "no type"),
            ("c.toml:15:1: notify.x.timeout:", "at least 1s"),
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, (head, what)) in got.iter().zip(want) {
            assert!(
                g.starts_with(head) && g.contains(what),
                "{g} (want {head} {what})"
            );
        }
    }

    #[test]
    fn with_atime_belongs_to_a_repository_dest() {
        let store = lines("[job.a]\nsource = \"/s\"\ndest = \"/d\"\nwith_atime = true\n");
        assert_eq!(store.len(), 1, "{store:#?}");
        assert!(
            store[0].starts_with("c.toml:4:1: job.a.with_atime:")
                && store[0].contains("restic repository"),
            "{store:#?}"
        );
        let repo = lines("[job.a]\nsource = \"/s\"\ndest = \"s3://b/p\"\nwith_atime = true\n");
        assert_eq!(repo, Vec::<String>::new());
    }

    #[test]
    fn host_is_a_name_for_a_repository_dest() {
        let job = |dest: &str, host: &str| {
            lines(&format!(
                "[job.a]\nsource = \"/s\"\ndest = \"{dest}\"\nhost = {host}\n"
            ))
        };
        assert_eq!(job("s3://b/p", "\"efs-1\""), Vec::<String>::new());
        assert_eq!(job("file:///r", "\"pod name\""), Vec::<String>::new());
        for bad in ["\"\"", "\"  \"", "\"a\\nb\"", "\"a\\tb\""] {
            let got = job("s3://b/p", bad);
            assert_eq!(got.len(), 1, "{bad}: {got:#?}");
            assert!(got[0].starts_with("c.toml:4:1: job.a.host:"), "{got:#?}");
        }
        let store = job("/d", "\"efs-1\"");
        assert_eq!(store.len(), 1, "{store:#?}");
        assert!(
            store[0].starts_with("c.toml:4:1: job.a.host:")
                && store[0].contains("restic repository"),
            "{store:#?}"
        );
    }

    #[test]
    fn edit_distance_counts_a_swap_as_one() {
        assert_eq!(edit_distance("retian", "retain"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(suggest("zzz", ["retain", "dest"]), None);
    }

    /// `JOB_KEYS` and `JobConfig` name the same keys: every example deserializes, and
    /// serde's list of the struct's fields is the table's.
    #[test]
    fn the_key_tables_match_the_structs() {
        fn fields(err: &str) -> Vec<String> {
            let list = err.split("expected one of ").nth(1).expect(err);
            let mut v: Vec<String> = list
                .split(',')
                .map(|s| {
                    s.trim()
                        .trim_matches(|c: char| c == '`' || c.is_whitespace())
                        .to_string()
                })
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.lines()
                        .next()
                        .unwrap_or("")
                        .trim_end_matches('`')
                        .to_string()
                })
                .collect();
            v.sort();
            v
        }
        for (table, keys) in [("job", JOB_KEYS), ("notify", NOTIFY_KEYS)] {
            let mut text = format!("[{table}.x]\n");
            for k in keys {
                text.push_str(&format!("{} = {}\n", k.name, k.example));
            }
            crate::config::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let err = crate::config::parse(&format!("{text}zz_unknown = 1\n")).unwrap_err();
            let mut names: Vec<String> = keys.iter().map(|k| k.name.to_string()).collect();
            names.sort();
            assert_eq!(fields(&err), names, "{err}");
        }
    }
}
