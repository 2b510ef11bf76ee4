//! The run catalog: one SQLite file (rusqlite, bundled) holding a row per run with every
//! KPI, its problems and where its log is, for `history`, `show` and `stats`. It is a
//! cache of the run records in each store (`.snapring/runs/<id>.json`): `rebuild`
//! recreates it from them, so losing the machine loses nothing. Does the database I/O.
//!
//! The schema is versioned by `PRAGMA user_version` and moved forward by frozen
//! migrations, each in one transaction; a catalog from a newer snapring is refused.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::report::{Problem, RunReport, Status};
use crate::restore::RestoreReport;

/// The schema this snapring writes.
pub const SCHEMA_VERSION: i64 = 11;

/// How far ahead of now a run may be dated and still count as the newest
/// (`Catalog::recent`): clocks of the hosts of one catalog a little apart.
const FUTURE_SLACK: chrono::Duration = chrono::Duration::minutes(5);

/// The latest start time (RFC 3339, as runs record it) a run may have and still be
/// taken for the newest: now and `FUTURE_SLACK`.
fn not_after() -> String {
    (chrono::Utc::now() + FUTURE_SLACK).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// How many run records an import (`rebuild`, `record_start`) writes per transaction:
/// few fsyncs, and a bounded number of records in memory at once.
const IMPORT_BATCH: usize = 1000;

/// How long a command waits for another connection's lock on the catalog.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a passed check of the whole catalog file (`PRAGMA quick_check` or
/// `integrity_check`) is trusted by `history`, `show` and `stats` before they run it
/// again ([`Catalog::check_if_due`]); `SNAPRING_CATALOG_CHECK_INTERVAL` overrides it
/// (`0`: every time). The check reads every page: 16 s for `history` on a catalog of
/// 250,000 runs, each time, while the query itself reads a few pages.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// When the current request of `serve` stops waiting for another connection's lock
/// (`Catalog::open_read_per_request`): `BUSY_TIMEOUT` after it arrived, for all its reads
/// together. Process-wide: only serve's one read-only connection uses it.
static REQUEST_DEADLINE: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

/// Begins a request of `serve` that arrived at `arrived`: its reads of the catalog wait
/// for a lock until `BUSY_TIMEOUT` after it arrived, in all. Counted from its arrival,
/// not from when its turn came: requests are answered one at a time, so with the
/// catalog locked, four queued requests each waiting `BUSY_TIMEOUT` from their turn were
/// answered after 5, 10, 15 and 20 s (past Prometheus' 10 s scrape timeout); now each
/// is answered within `BUSY_TIMEOUT` of its arrival, those that waited in the queue
/// with what reads without the catalog.
pub fn start_request(arrived: std::time::Instant) {
    *REQUEST_DEADLINE.lock().unwrap_or_else(|e| e.into_inner()) = Some(arrived + BUSY_TIMEOUT);
}

/// SQLite's busy handler of a connection that waits per request: retries until the
/// request's deadline.
fn wait_until_deadline(_tries: i32) -> bool {
    let end = *REQUEST_DEADLINE.lock().unwrap_or_else(|e| e.into_inner());
    let left = end.map_or(Duration::ZERO, |t| {
        t.saturating_duration_since(std::time::Instant::now())
    });
    if left.is_zero() {
        return false;
    }
    std::thread::sleep(left.min(Duration::from_millis(10)));
    true
}

/// Frozen migrations: `MIGRATIONS[i]` takes a catalog from version `i` to `i + 1`.
/// Never edit one that has shipped; add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: runs with the headline KPIs and the full run record as JSON.
    "CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        job TEXT,
        label TEXT NOT NULL,
        store TEXT NOT NULL,
        source TEXT NOT NULL,
        host TEXT NOT NULL,
        version TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        duration_seconds REAL NOT NULL,
        status TEXT NOT NULL,
        exit_code INTEGER NOT NULL,
        message TEXT NOT NULL,
        snapshot TEXT,
        files_total INTEGER NOT NULL,
        files_transferred INTEGER NOT NULL,
        files_linked INTEGER NOT NULL,
        bytes_total INTEGER NOT NULL,
        bytes_transferred INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        report TEXT NOT NULL
    );
    CREATE INDEX runs_job_started ON runs(job, started_at);
    CREATE INDEX runs_store_started ON runs(store, started_at);",
    // 2: every other KPI as a column, problems as rows, the log's path. Backfilled from
    // the stored run records.
    "ALTER TABLE runs ADD COLUMN retain INTEGER;
    ALTER TABLE runs ADD COLUMN window TEXT;
    ALTER TABLE runs ADD COLUMN prefix TEXT;
    ALTER TABLE runs ADD COLUMN based_on TEXT;
    ALTER TABLE runs ADD COLUMN expired TEXT;
    ALTER TABLE runs ADD COLUMN dirs_total INTEGER;
    ALTER TABLE runs ADD COLUMN link_fallbacks INTEGER;
    ALTER TABLE runs ADD COLUMN changed_during_backup INTEGER;
    ALTER TABLE runs ADD COLUMN source_bytes INTEGER;
    ALTER TABLE runs ADD COLUMN backup_bytes_added INTEGER;
    ALTER TABLE runs ADD COLUMN throughput_files_per_second REAL;
    ALTER TABLE runs ADD COLUMN throughput_bytes_per_second REAL;
    ALTER TABLE runs ADD COLUMN peak_rss_bytes INTEGER;
    ALTER TABLE runs ADD COLUMN walk_copy_seconds REAL;
    ALTER TABLE runs ADD COLUMN sync_seconds REAL;
    ALTER TABLE runs ADD COLUMN rotation_seconds REAL;
    ALTER TABLE runs ADD COLUMN remove_expired_seconds REAL;
    ALTER TABLE runs ADD COLUMN log_path TEXT;
    UPDATE runs SET
        retain = json_extract(report, '$.retain'),
        window = json_extract(report, '$.window'),
        prefix = json_extract(report, '$.prefix'),
        based_on = json_extract(report, '$.based_on'),
        expired = json_extract(report, '$.expired'),
        dirs_total = json_extract(report, '$.dirs_total'),
        link_fallbacks = json_extract(report, '$.link_fallbacks'),
        changed_during_backup = json_extract(report, '$.changed_during_backup'),
        source_bytes = json_extract(report, '$.source_bytes'),
        backup_bytes_added = json_extract(report, '$.backup_bytes_added'),
        throughput_files_per_second = json_extract(report, '$.throughput_files_per_second'),
        throughput_bytes_per_second = json_extract(report, '$.throughput_bytes_per_second'),
        peak_rss_bytes = json_extract(report, '$.peak_rss_bytes'),
        walk_copy_seconds = json_extract(report, '$.phases.walk_copy.seconds'),
        sync_seconds = json_extract(report, '$.phases.sync.seconds'),
        rotation_seconds = json_extract(report, '$.phases.rotation.seconds'),
        remove_expired_seconds = json_extract(report, '$.phases.remove_expired.seconds');
    CREATE TABLE problems (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        kind TEXT NOT NULL,
        action TEXT NOT NULL,
        error TEXT NOT NULL
    );
    CREATE INDEX problems_run ON problems(run_id);
    INSERT INTO problems (run_id, path, kind, action, error)
        SELECT runs.id, json_extract(p.value, '$.path'), json_extract(p.value, '$.kind'),
               json_extract(p.value, '$.action'), json_extract(p.value, '$.error')
        FROM runs, json_each(runs.report, '$.problems') AS p;",
    // 3: daemon events that are not runs (a trigger skipped because the job was still
    // running, a reload, a stop).
    "CREATE TABLE events (
        at TEXT NOT NULL,
        job TEXT,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX events_job_at ON events(job, at);",
    // 4: restores are runs too (`kind`: `backup` or `restore`; every older row is a
    // backup), with the directory a restore wrote into and its conflicts; the time a
    // backup waited on its bandwidth limit.
    "ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'backup';
    ALTER TABLE runs ADD COLUMN target TEXT;
    ALTER TABLE runs ADD COLUMN conflicts INTEGER;
    ALTER TABLE runs ADD COLUMN bwlimit_wait_seconds REAL;
    CREATE INDEX runs_kind_started ON runs(kind, started_at);",
    // 5: a job's runs counted by status (`status_counts`, every `/metrics` scrape after
    // a write) from the index alone, not from each of the job's rows.
    "CREATE INDEX runs_job_kind_status ON runs(job, kind, status);",
    // 6: backups into a restic repository: bytes uploaded, objects written and the
    // dedup ratio (NULL for the hard-link store's runs). Backfilled from the records.
    "ALTER TABLE runs ADD COLUMN bytes_uploaded INTEGER;
    ALTER TABLE runs ADD COLUMN objects_written INTEGER;
    ALTER TABLE runs ADD COLUMN dedup_ratio REAL;
    UPDATE runs SET
        bytes_uploaded = json_extract(report, '$.repository.bytes_uploaded'),
        objects_written = json_extract(report, '$.repository.objects_written'),
        dedup_ratio = json_extract(report, '$.repository.dedup_ratio')
    WHERE kind = 'backup';",
    // 7: a job's newest runs (`recent`, every `/metrics` scrape after a write) read
    // from the index in order (`id` breaks ties, as `ORDER BY` does), not found among
    // every backup of all jobs by `runs_kind_started` and sorted.
    "CREATE INDEX runs_job_kind_started ON runs(job, kind, started_at, id);",
    // 8: whether a run was ever recorded `failed` (1), kept when a later repair publishes
    // its rotation and rewrites it `complete` ("published by a later repair after: ..."):
    // `snapring_runs_failed_total` counts these, so it never goes down (Prometheus took
    // the drop for a reset and `increase()` counted every earlier failure again).
    // Counted from the index, as `status_counts` reads it. Backfilled from status and
    // message.
    "ALTER TABLE runs ADD COLUMN failed_once INTEGER NOT NULL DEFAULT 0;
    UPDATE runs SET failed_once = 1
        WHERE status = 'failed' OR substr(message, 1, 34) = 'published by a later repair after:';
    DROP INDEX runs_job_kind_status;
    CREATE INDEX runs_job_kind_status ON runs(job, kind, status, failed_once);",
    // 9: a store, source, target or log path that is not UTF-8 (a Latin-1 directory):
    // its text column holds it lossily (for reading), the `_raw` column its bytes
    // (`crate::localpath`); NULL for every UTF-8 path, whose text is exact. A store's
    // runs are found by both columns, so two stores differing only in such bytes stay
    // apart.
    "ALTER TABLE runs ADD COLUMN store_raw BLOB;
    ALTER TABLE runs ADD COLUMN source_raw BLOB;
    ALTER TABLE runs ADD COLUMN target_raw BLOB;
    ALTER TABLE runs ADD COLUMN log_path_raw BLOB;",
    // 10: `snapring copy` runs are kind `copy` (they were recorded as `backup`s into
    // their repository, without a job: counted in `stats` with the backups, and not to
    // be told apart by `history --kind` or `serve`). A copy recorded before this whose
    // report names the store snapshot it copied becomes one; a copy of an older
    // snapring that failed before it found its snapshot says nothing of being one and
    // stays `backup`. Copies go into repositories only (`is_repository`): other rows
    // are passed over before their report is parsed (this runs in the migration's
    // IMMEDIATE transaction, which a backup recording meanwhile waits for).
    "UPDATE runs SET kind = 'copy'
        WHERE kind = 'backup'
          AND (store LIKE 's3://%' OR store LIKE 'file://%')
          AND json_valid(report)
          AND (json_extract(report, '$.repository.copied_from') IS NOT NULL
               OR json_extract(report, '$.copy_of') IS NOT NULL);",
    // 11: the daemon's dead runs told before their store answered whose record there
    // is not marked told yet (`Catalog::note_told_death`): kept in the daemon's memory
    // only, a daemon stopped before the store answered left the record unmarked, to be
    // told again. `key` is the store's worker (the store as configured), `root` the
    // store the record is in, each with its bytes when not UTF-8 (`crate::localpath`).
    // `IF NOT EXISTS`: a catalog whose version was set back by hand keeps the table.
    "CREATE TABLE IF NOT EXISTS told_deaths (
        id TEXT PRIMARY KEY,
        key TEXT NOT NULL,
        key_raw BLOB,
        root TEXT NOT NULL,
        root_raw BLOB,
        cause TEXT NOT NULL
    );",
];

/// Errors of the catalog: always with the file, and never fatal to a backup.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {}: {msg}", crate::relpath::shown(path))]
    Db { path: PathBuf, msg: String },
    /// The file is not a SQLite database, or SQLite found it corrupt: says so, and how
    /// to get a working catalog back (`catalog rebuild` moves such a file aside).
    #[error(
        "catalog {} is damaged ({what}: {detail}); `snapring catalog rebuild --dest STORE` moves it aside to {}.damaged and recreates each store's backup runs from the store's run records (restores, and runs into a restic repository, were recorded in the catalog alone: with a repository's URL as STORE it starts an empty catalog)",
        crate::relpath::shown(path),
        crate::relpath::shown(path)
    )]
    Damaged {
        path: PathBuf,
        what: String,
        detail: String,
    },
}

impl CatalogError {
    pub fn is_damaged(&self) -> bool {
        matches!(self, CatalogError::Damaged { .. })
    }
}

pub type Result<T> = std::result::Result<T, CatalogError>;

trait DbCtx<T> {
    fn db(self, path: &Path, what: &str) -> Result<T>;
}

/// Whether an error says the file is not a database or is corrupt.
trait Damage: std::fmt::Display {
    fn damaged(&self) -> bool {
        false
    }
    /// Another connection held its lock past the busy timeout.
    fn busy(&self) -> bool {
        false
    }
    /// A read-only connection found a hot journal (a writer killed mid-transaction)
    /// that it may not roll back.
    fn hot_journal(&self) -> bool {
        false
    }
}

impl Damage for rusqlite::Error {
    fn damaged(&self) -> bool {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        matches!(
            self.sqlite_error_code(),
            Some(NotADatabase | DatabaseCorrupt)
        )
    }
    fn busy(&self) -> bool {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
        matches!(
            self.sqlite_error_code(),
            Some(DatabaseBusy | DatabaseLocked)
        )
    }
    fn hot_journal(&self) -> bool {
        matches!(self, rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_READONLY_ROLLBACK)
    }
}

impl Damage for std::io::Error {}
impl Damage for serde_json::Error {}

impl<T, E: Damage> DbCtx<T> for std::result::Result<T, E> {
    fn db(self, path: &Path, what: &str) -> Result<T> {
        self.map_err(|e| {
            if e.damaged() {
                // Whatever passed before, the file is damaged now: the next read
                // command checks it whole again.
                forget_check(path);
                CatalogError::Damaged {
                    path: path.to_path_buf(),
                    what: what.to_string(),
                    detail: e.to_string(),
                }
            } else if e.busy() {
                CatalogError::Db {
                    path: path.to_path_buf(),
                    msg: format!(
                        "{what}: {e}: another process has held it locked for longer than the {} s this waits (`fuser {}` names it); try again when it is done",
                        BUSY_TIMEOUT.as_secs(),
                        crate::relpath::shown(path)
                    ),
                }
            } else if e.hot_journal() {
                CatalogError::Db {
                    path: path.to_path_buf(),
                    msg: format!(
                        "{what}: the catalog has an unfinished transaction left by a writer that was killed \
                         ({}-journal); reading it read-only cannot roll that back: the next command that \
                         writes the catalog (a backup, `snapring history`) does ({e})",
                        crate::relpath::shown(path)
                    ),
                }
            } else {
                CatalogError::Db {
                    path: path.to_path_buf(),
                    msg: format!("{what}: {e}"),
                }
            }
        })
    }
}

/// Where the catalog lives unless told otherwise: `/var/lib/snapring/catalog.db` for a
/// system service (root under systemd, or no home), else
/// `$XDG_STATE_HOME/snapring/catalog.db` (default `~/.local/state/...`).
pub fn default_path() -> PathBuf {
    let root = rustix::process::geteuid().is_root();
    let service = std::env::var_os("INVOCATION_ID").is_some();
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty());
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty())
        && !(root && service)
    {
        return PathBuf::from(x).join("snapring/catalog.db");
    }
    match home {
        Some(h) if !(root && service) => PathBuf::from(h).join(".local/state/snapring/catalog.db"),
        _ => PathBuf::from("/var/lib/snapring/catalog.db"),
    }
}

const NFS_SUPER_MAGIC: u64 = 0x6969;

/// One run as `history` lists it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RunRow {
    pub id: String,
    /// `backup`, `restore` or `copy`.
    pub kind: String,
    pub job: Option<String>,
    pub label: String,
    pub store: String,
    pub snapshot: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_seconds: f64,
    pub status: String,
    pub files_total: u64,
    pub files_transferred: u64,
    pub bytes_transferred: u64,
    pub errors: u64,
    /// The notifications sent of the run (its record's `notifications`), and how many of
    /// them failed: `history` marks those runs (`NOTIFY`), not only `show`.
    pub notifications: u64,
    pub notifications_failed: u64,
    /// The columns of the row that hold what no run writes (edited by hand: a negative
    /// count, a time without its offset), with what they hold: a count shows as
    /// 18446744073709551613 no more, but as `invalid` (its field holds 0, and `stats`
    /// leaves the run out of its sums and trends); a time's field keeps the text.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<Invalid>,
}

/// A column of a catalog row whose value no run writes, and that value as text.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Invalid {
    pub column: &'static str,
    pub value: String,
}

impl RunRow {
    /// Whether column `column` holds what no run writes.
    pub fn is_invalid(&self, column: &str) -> bool {
        self.invalid.iter().any(|i| i.column == column)
    }

    /// `column value, …` of the invalid columns, for a warning.
    pub fn invalid_text(&self) -> String {
        self.invalid
            .iter()
            .map(|i| format!("{} {}", i.column, i.value))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Whether `t` is a time as a run records it (RFC 3339, with its offset).
pub fn valid_time(t: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(t).is_ok()
}

/// The copies (`snapring copy`) from one store into one repository
/// ([`Catalog::copies`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Copies {
    /// The store copied from (the runs' `source`).
    pub from: PathBuf,
    /// The repository's URL (the runs' `store`).
    pub to: String,
    /// The newest copy, and its message.
    pub last: RunRow,
    pub last_message: String,
    /// When the newest `complete` copy finished (one of a snapshot copied before
    /// included: the repository has it); `None` before the first.
    pub last_success_at: Option<String>,
    pub runs: u64,
    pub complete: u64,
    pub partial: u64,
    pub incomplete: u64,
    pub failed: u64,
    /// Copies ever recorded `failed` (`runs.failed_once`).
    pub failed_once: u64,
    pub running: u64,
}

/// A snapshot in a restic repository, as the catalog knows it from the run that wrote
/// it (`Catalog::repository_snapshots`).
#[derive(Clone, Debug, PartialEq)]
pub struct RepoSnapshot {
    pub run_id: String,
    pub snapshot: String,
    pub finished_at: Option<String>,
    pub bytes_total: Option<u64>,
    pub bytes_added: Option<u64>,
}

/// One run as `show` prints it: the whole run record, its problems and its log.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Shown {
    /// `backup` or `restore`.
    pub kind: String,
    pub report: Record,
    pub problems: Vec<Problem>,
    pub log_path: Option<String>,
    pub log_exists: bool,
}

/// A run's whole record: a backup's run report, or a restore's report.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Record {
    Backup(Box<RunReport>),
    Restore(Box<RestoreReport>),
}

impl Record {
    /// The backup's report, if this is a backup.
    pub fn backup(&self) -> Option<&RunReport> {
        match self {
            Record::Backup(r) => Some(r),
            Record::Restore(_) => None,
        }
    }

    pub fn into_backup(self) -> Option<RunReport> {
        match self {
            Record::Backup(r) => Some(*r),
            Record::Restore(_) => None,
        }
    }

    pub fn status(&self) -> Status {
        match self {
            Record::Backup(r) => r.status,
            Record::Restore(r) => r.status,
        }
    }
}

/// Something the daemon did that is not a run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Event {
    pub at: String,
    pub job: Option<String>,
    pub kind: String,
    pub message: String,
}

/// Which runs a query covers.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `backup`, `restore` or `copy`; `None`: all.
    pub kind: Option<String>,
    pub job: Option<String>,
    /// Exactly this store (by its text and, not UTF-8, its bytes).
    pub store: Option<PathBuf>,
    /// RFC 3339: runs started at or after.
    pub since: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Stats {
    /// The job name, or the store for runs without one.
    pub job: String,
    pub runs: u64,
    pub complete: u64,
    pub partial: u64,
    pub incomplete: u64,
    pub failed: u64,
    pub running: u64,
    /// complete / finished runs (running ones excluded).
    pub success_rate: f64,
    pub first_started_at: String,
    pub last_started_at: String,
    pub last_status: String,
    pub duration_p50_seconds: f64,
    pub duration_p95_seconds: f64,
    pub duration_mean_seconds: f64,
    /// Mean duration of the newer half of the finished runs against the older half, in
    /// percent (+20 means 20% slower); `None` with fewer than 4 finished runs with a
    /// duration (`timed_runs`), or when the older half's mean is 0 and the newer's not.
    pub duration_trend_percent: Option<f64>,
    /// Finished runs with a duration (a killed run settled `incomplete` has none): the
    /// runs `duration_trend_percent` is taken over.
    pub timed_runs: u64,
    /// Least-squares slope of duration over time in seconds per day (0 when the runs
    /// span less than a day).
    pub duration_slope_seconds_per_day: f64,
    pub bytes_transferred_mean: f64,
    /// As `duration_trend_percent`, for bytes copied per run, over every finished run
    /// (`runs - running`).
    pub bytes_transferred_trend_percent: Option<f64>,
    pub files_total_last: u64,
    /// The runs whose rows hold values no run writes (edited by hand), each as `ID
    /// (column value, …)`: counted by status, left out of the durations and bytes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invalid_runs: Vec<String>,
}

pub struct Catalog {
    conn: Connection,
    pub path: PathBuf,
}

impl Catalog {
    /// Opens (creating it and its directory) and migrates the catalog at `path`.
    /// Refuses a file on NFS unless `allow_nfs`: SQLite's locking is unreliable there.
    pub fn open(path: &Path, allow_nfs: bool) -> Result<Catalog> {
        Catalog::open_waiting(path, allow_nfs, BUSY_TIMEOUT)
    }

    /// [`Catalog::open`] whose statements wait `busy` for another connection's lock
    /// (the daemon's loop, which must not be held up by a catalog another process
    /// holds).
    pub fn open_waiting(path: &Path, allow_nfs: bool, busy: Duration) -> Result<Catalog> {
        refuse_not_a_file(path)?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // Private (0700/0600): the catalog holds every run's record, problems included
        // (paths in directories other users may not read).
        if !dir.is_dir() {
            crate::util::create_private_dir(dir, true).db(dir, "create the catalog's directory")?;
        }
        if !allow_nfs
            && let Ok(fs) = rustix::fs::statfs(dir)
            && fs.f_type as u64 == NFS_SUPER_MAGIC
        {
            return Err(CatalogError::Db {
                path: path.to_path_buf(),
                msg: "is on NFS, where SQLite's locks are unreliable; put it on a local disk (--catalog), or set SNAPRING_CATALOG_ON_NFS=1 to insist".into(),
            });
        }
        make_private(path)?;
        let conn = Connection::open(path).db(path, "open")?;
        conn.busy_timeout(busy).db(path, "set busy timeout")?;
        conn.pragma_update(None, "foreign_keys", true)
            .db(path, "enable foreign keys")?;
        let mut c = Catalog {
            conn,
            path: path.to_path_buf(),
        };
        c.migrate()?;
        Ok(c)
    }

    /// Opens an existing catalog for reading only: creates, migrates and settles
    /// nothing (`serve`, which must not write). `Ok(None)` when there is no file yet, or
    /// an empty one a writer has just created.
    /// A catalog of another schema version is refused with what to do.
    pub fn open_read(path: &Path) -> Result<Option<Catalog>> {
        Catalog::open_read_waiting(path, false)
    }

    /// [`Catalog::open_read`] whose waits for another connection's lock share one
    /// deadline per request of `serve` ([`start_request`]) instead of each waiting
    /// `BUSY_TIMEOUT`: a request reads the catalog many times (each job's runs, counts,
    /// last run; each snapshot's run), and while a writer holds it each read would wait
    /// again, past a scrape's timeout (Prometheus' default is 10 s). From the start, the
    /// schema's check included: a `serve` started while a writer held the catalog
    /// answered each queued request after a full wait of its own.
    pub fn open_read_per_request(path: &Path) -> Result<Option<Catalog>> {
        Catalog::open_read_waiting(path, true)
    }

    fn open_read_waiting(path: &Path, per_request: bool) -> Result<Option<Catalog>> {
        use rusqlite::OpenFlags;
        if !path.exists() {
            return Ok(None);
        }
        refuse_not_a_file(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).db(path, "open read-only")?;
        match per_request {
            true => conn.busy_handler(Some(wait_until_deadline)),
            false => conn.busy_timeout(BUSY_TIMEOUT),
        }
        .db(path, "set busy handler")?;
        let c = Catalog {
            conn,
            path: path.to_path_buf(),
        };
        let mut v = c.version()?;
        // A writer migrates in one transaction, so a reader sees a schema before or
        // after it; an old one may be about to be migrated by a writer that has just
        // opened it: give it a moment rather than call it old at once.
        for _ in 0..20 {
            if v == 0 || v >= SCHEMA_VERSION {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
            v = c.version()?;
        }
        if v == 0 {
            // Created, not yet migrated by the writer that is creating it: no runs yet.
            return Ok(None);
        }
        if v != SCHEMA_VERSION {
            let what = if v < SCHEMA_VERSION {
                "older; any snapring command that writes it (history, a backup) migrates it"
            } else {
                "newer than this snapring understands; upgrade snapring"
            };
            return Err(CatalogError::Db {
                path: path.to_path_buf(),
                msg: format!("schema version {v} (this snapring reads {SCHEMA_VERSION}) is {what}"),
            });
        }
        Ok(Some(c))
    }

    /// SQLite's `PRAGMA data_version`: changes when another connection commits, so a
    /// reader that keeps its connection knows when what it read is stale.
    pub fn data_version(&self) -> Result<i64> {
        self.conn
            .pragma_query_value(None, "data_version", |r| r.get(0))
            .db(&self.path, "read data_version")
    }

    /// Checks the whole file with SQLite's `PRAGMA quick_check` (every page's b-tree
    /// structure), or `PRAGMA integrity_check` when `thorough` (also that each index
    /// matches its table). A damaged page that a query never reads goes unnoticed
    /// otherwise: `history` answered from the intact pages while every backup's write
    /// hit the damaged index ("database disk image is malformed"), and `catalog rebuild`
    /// trusted the file and failed the same way. [`CatalogError::Damaged`] when either
    /// finds a problem.
    pub fn check(&self, thorough: bool) -> Result<()> {
        let pragma = if thorough {
            "integrity_check"
        } else {
            "quick_check"
        };
        let what = format!("PRAGMA {pragma}");
        let mut st = self
            .conn
            .prepare(&format!("PRAGMA {pragma}(5)"))
            .db(&self.path, &what)?;
        let found = st
            .query_map([], |r| r.get::<_, String>(0))
            .db(&self.path, &what)?
            .collect::<std::result::Result<Vec<_>, _>>()
            .db(&self.path, &what)?;
        if found.len() == 1 && found[0] == "ok" {
            note_check(&self.path);
            return Ok(());
        }
        forget_check(&self.path);
        Err(CatalogError::Damaged {
            path: self.path.clone(),
            what,
            // One line: without the "*** in database main ***" heading of the rows.
            detail: found
                .iter()
                .flat_map(|f| f.lines())
                .filter(|l| !l.starts_with("*** in database"))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    /// [`Catalog::check`] (`quick_check`) unless one of this file passed less than
    /// [`CHECK_INTERVAL`] ago (its stamp, [`check_stamp_path`]); returns whether it ran.
    /// A damaged-file error met by any command since (a backup's write, a query)
    /// removed the stamp, so the check runs again at once; damage in pages no command
    /// has read since the last check goes unnoticed until the interval is over (or
    /// `snapring catalog check`, which always checks).
    pub fn check_if_due(&self) -> Result<bool> {
        if checked_within(&self.path, check_interval()) {
            return Ok(false);
        }
        self.check(false)?;
        Ok(true)
    }

    /// The schema version of the file.
    pub fn version(&self) -> Result<i64> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .db(&self.path, "read schema version")
    }

    fn migrate(&mut self) -> Result<()> {
        let newer = |path: &Path, v: i64| CatalogError::Db {
            path: path.to_path_buf(),
            msg: format!(
                "schema version {v} is newer than this snapring understands ({SCHEMA_VERSION}); upgrade snapring"
            ),
        };
        let v = self.version()?;
        if v > SCHEMA_VERSION {
            return Err(newer(&self.path, v));
        }
        if v == SCHEMA_VERSION {
            return Ok(());
        }
        // Several first runs may open a new (or old) catalog at once: the version read
        // above can be stale by now. Under the write lock (waited for as long as any
        // write is, `BUSY_TIMEOUT`), read it again and apply what is still missing, so
        // that no migration runs twice ("duplicate column name").
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .db(&self.path, "begin migration")?;
        let v: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .db(&self.path, "read schema version")?;
        if v > SCHEMA_VERSION {
            return Err(newer(&self.path, v));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(v as usize) {
            let to = i as i64 + 1;
            tx.execute_batch(sql)
                .db(&self.path, &format!("migrate to schema {to}"))?;
            tx.pragma_update(None, "user_version", to)
                .db(&self.path, "set schema version")?;
        }
        tx.commit().db(&self.path, "commit migration")?;
        if v > 0 {
            tracing::info!(
                "{}: migrated catalog to schema {SCHEMA_VERSION}",
                crate::relpath::shown(&self.path)
            );
        }
        Ok(())
    }

    /// Inserts or updates one run (and replaces its problems) in one transaction.
    pub fn record(&mut self, r: &RunReport) -> Result<()> {
        self.record_all(std::slice::from_ref(r))
    }

    /// Inserts or updates runs (and replaces their problems), all in one transaction:
    /// importing a store's records (`rebuild`, the first backup after a catalog was
    /// lost) took a transaction, so an fsync or more, per record (25,000 records: 117 s
    /// for a rebuild, 33 s before a backup started, holding its store's lock).
    pub fn record_all(&mut self, rs: &[RunReport]) -> Result<()> {
        let path = self.path.clone();
        let tx = self.conn.transaction().db(&path, "begin")?;
        for r in rs {
            upsert_run(&tx, &path, r)?;
        }
        crate::failpoint::hit("catalog.before_commit").db(&path, "commit")?;
        tx.commit().db(&path, "commit")?;
        crate::failpoint::hit("catalog.after_commit").db(&path, "commit")?;
        Ok(())
    }

    /// Inserts or updates one restore (kind `restore`) and its problems. Its store and
    /// target are keyed canonicalized, as backups' stores are. `files_total` counts the
    /// restored set's entries other than directories: regular files, symlinks and
    /// special files (FIFOs, sockets, device nodes), restored, identical or in conflict
    /// (`files_restored + others_restored + skipped_identical + conflicts_total`);
    /// `files_transferred` and `bytes_transferred` the regular files restored.
    pub fn record_restore(&mut self, r: &RestoreReport) -> Result<()> {
        let path = self.path.clone();
        let id = r.id.as_deref().ok_or_else(|| CatalogError::Db {
            path: path.clone(),
            msg: "a restore without a run id cannot be recorded".into(),
        })?;
        let json = serde_json::to_string(r).db(&path, "encode restore")?;
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let store = canon(&r.store);
        let source = store.join(&r.snapshot);
        let target = canon(&r.to);
        let tx = self.conn.transaction().db(&path, "begin")?;
        tx.execute("DELETE FROM runs WHERE id = ?1", [id])
            .db(&path, "record restore")?;
        tx.execute(
            "INSERT INTO runs (id, kind, job, label, store, source, target, host, version,
                started_at, finished_at, duration_seconds, status, exit_code, message,
                snapshot, files_total, files_transferred, files_linked, bytes_total,
                bytes_transferred, errors, conflicts, report, log_path, dirs_total,
                store_raw, source_raw, target_raw, log_path_raw)
             VALUES (?1, 'restore', ?2, '', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,
                ?14, ?15, ?16, 0, ?17, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26)",
            params![
                id,
                r.job,
                text(&store),
                text(&source),
                text(&target),
                r.host,
                r.version,
                r.started_at,
                r.finished_at,
                r.duration_seconds,
                r.status.as_str(),
                r.exit_code,
                r.message,
                r.snapshot,
                (r.files_restored + r.others_restored + r.skipped_identical + r.conflicts_total)
                    as i64,
                r.files_restored as i64,
                r.bytes_restored as i64,
                r.errors as i64,
                r.conflicts_total as i64,
                json,
                r.log.as_deref().map(text),
                r.dirs_created as i64,
                raw(&store),
                raw(&source),
                raw(&target),
                r.log.as_deref().and_then(raw),
            ],
        )
        .db(&path, "record restore")?;
        insert_problems(&tx, &path, id, &r.problems)?;
        tx.commit().db(&path, "commit")?;
        Ok(())
    }

    /// Runs matching `f`, oldest first.
    pub fn runs(&self, f: &Filter) -> Result<Vec<RunRow>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT id, job, label, store, snapshot, started_at, finished_at,
                    duration_seconds, status, files_total, files_transferred,
                    bytes_transferred, errors, kind, {NOTIFICATIONS}
                 FROM runs
                 WHERE (?1 IS NULL OR job = ?1)
                   AND (?2 IS NULL OR (store = ?2 AND store_raw IS ?5))
                   AND (?3 IS NULL OR started_at >= ?3) AND (?4 IS NULL OR kind = ?4)
                 ORDER BY started_at, id",
            ))
            .db(&self.path, "query runs")?;
        let store = f.store.as_deref();
        let rows = st
            .query_map(
                params![f.job, store.map(text), f.since, f.kind, store.and_then(raw)],
                run_row,
            )
            .db(&self.path, "query runs")?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .db(&self.path, "read runs")
    }

    /// The newest `limit` runs of `job`, newest first (the dashboard's history and
    /// charts, and its newest run, without reading every run): by start time, except
    /// that runs dated after now (more than `FUTURE_SLACK` ahead: made while the clock
    /// was ahead, then set right) come after every other. Else one run made with the
    /// clock 30 days ahead stayed the newest for 30 days, hiding every later failure
    /// from the last run's status and its alerts. Read from `runs_job_kind_started`.
    pub fn recent(&self, job: &str, limit: usize) -> Result<Vec<RunRow>> {
        let now = not_after();
        let mut rows = self.recent_where(job, "started_at <= ?3", &now, limit)?;
        if rows.len() < limit {
            let more = self.recent_where(job, "started_at > ?3", &now, limit - rows.len())?;
            rows.extend(more);
        }
        Ok(rows)
    }

    fn recent_where(&self, job: &str, cond: &str, now: &str, limit: usize) -> Result<Vec<RunRow>> {
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT id, job, label, store, snapshot, started_at, finished_at,
                    duration_seconds, status, files_total, files_transferred,
                    bytes_transferred, errors, kind, {NOTIFICATIONS}
                 FROM runs WHERE job = ?1 AND kind = 'backup' AND {cond}
                 ORDER BY started_at DESC, id DESC LIMIT ?2"
            ))
            .db(&self.path, "query recent runs")?;
        let rows = st
            .query_map(params![job, limit as i64, now], run_row)
            .db(&self.path, "query recent runs")?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .db(&self.path, "read recent runs")
    }

    /// The snapshots that runs of `job` into a restic repository wrote and no later run
    /// of it forgot (its retention), newest first: (run id, snapshot id, finished at,
    /// bytes of the source, bytes uploaded). The dashboard's view of a repository job,
    /// which has no store to list; a snapshot forgotten by other means (`restic forget`)
    /// still counts.
    pub fn repository_snapshots(&self, job: &str) -> Result<Vec<RepoSnapshot>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, snapshot, finished_at, bytes_total, backup_bytes_added FROM runs
                 WHERE job = ?1 AND kind = 'backup' AND snapshot IS NOT NULL
                   AND snapshot NOT IN (
                     SELECT e.value FROM runs AS x, json_each(x.expired) AS e
                     WHERE x.job = ?1 AND x.kind = 'backup' AND json_valid(x.expired))
                 ORDER BY finished_at DESC, id DESC",
            )
            .db(&self.path, "query repository snapshots")?;
        let rows = st
            .query_map([job], |r| {
                Ok(RepoSnapshot {
                    run_id: r.get(0)?,
                    snapshot: r.get(1)?,
                    finished_at: r.get(2)?,
                    bytes_total: r.get::<_, Option<i64>>(3)?.map(|n| n as u64),
                    bytes_added: r.get::<_, Option<i64>>(4)?.map(|n| n as u64),
                })
            })
            .db(&self.path, "query repository snapshots")?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .db(&self.path, "read repository snapshots")
    }

    /// How many runs of `job` ended with each status: (status, count, how many of them
    /// were ever recorded `failed`: a failed rotation a later repair published is
    /// `complete` now, and still one of the runs that failed).
    pub fn status_counts(&self, job: &str) -> Result<Vec<(String, u64, u64)>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT status, count(*), sum(failed_once) FROM runs \
                 WHERE job = ?1 AND kind = 'backup' GROUP BY status",
            )
            .db(&self.path, "count runs")?;
        let rows = st
            .query_map([job], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .db(&self.path, "count runs")?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .db(&self.path, "count runs")
    }

    /// The copies in the catalog (kind `copy`), one entry per store copied from and
    /// repository copied into, in that order: the copies by status, the newest copy (by
    /// start time, those dated after now last, as [`Catalog::recent`] orders them) and
    /// when the newest `complete` one finished. `serve`'s view of `snapring copy`,
    /// which runs from cron or a timer, outside any job of the config.
    pub fn copies(&self) -> Result<Vec<Copies>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT source, source_raw, store, store_raw, count(*),
                    sum(status = 'complete'), sum(status = 'partial'),
                    sum(status = 'incomplete'), sum(status = 'failed'), sum(failed_once),
                    sum(status = 'running'),
                    max(CASE WHEN status = 'complete' THEN coalesce(finished_at, started_at) END)
                 FROM runs WHERE kind = 'copy'
                 GROUP BY source, source_raw, store, store_raw ORDER BY source, store",
            )
            .db(&self.path, "query copies")?;
        type Group = (
            String,
            Option<Vec<u8>>,
            String,
            Option<Vec<u8>>,
            [u64; 7],
            Option<String>,
        );
        let groups = st
            .query_map([], |r| {
                let n = |i| r.get::<_, Option<i64>>(i).map(|v| v.unwrap_or(0) as u64);
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    [n(4)?, n(5)?, n(6)?, n(7)?, n(8)?, n(9)?, n(10)?],
                    r.get(11)?,
                ))
            })
            .db(&self.path, "query copies")?
            .collect::<std::result::Result<Vec<Group>, _>>()
            .db(&self.path, "read copies")?;
        let mut newest = self
            .conn
            .prepare_cached(&format!(
                "SELECT id, job, label, store, snapshot, started_at, finished_at,
                    duration_seconds, status, files_total, files_transferred,
                    bytes_transferred, errors, kind, {NOTIFICATIONS}, message
                 FROM runs WHERE kind = 'copy' AND source = ?1 AND source_raw IS ?2
                   AND store = ?3 AND store_raw IS ?4
                 ORDER BY started_at > ?5, started_at DESC, id DESC LIMIT 1"
            ))
            .db(&self.path, "query copies")?;
        let now = not_after();
        let mut out = Vec::with_capacity(groups.len());
        for (from, from_raw, to, to_raw, n, last_success_at) in groups {
            let last = newest
                .query_row(params![from, from_raw, to, to_raw, now], |r| {
                    Ok((run_row(r)?, r.get::<_, String>(16)?))
                })
                .db(&self.path, "query copies")?;
            let [
                runs,
                complete,
                partial,
                incomplete,
                failed,
                failed_once,
                running,
            ] = n;
            out.push(Copies {
                from: crate::localpath::from_fields(&from, from_raw),
                to,
                last: last.0,
                last_message: last.1,
                last_success_at,
                runs,
                complete,
                partial,
                incomplete,
                failed,
                failed_once,
                running,
            });
        }
        Ok(out)
    }

    /// How many daemon events of `kind` (`skipped`, ...) `job` has.
    pub fn event_count(&self, job: &str, kind: &str) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT count(*) FROM events WHERE job = ?1 AND kind = ?2",
                [job, kind],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .db(&self.path, "count events")
    }

    /// The run with this id, or the only one whose id starts with it.
    pub fn show(&self, id: &str) -> Result<Option<Shown>> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM runs WHERE id = ?1 OR id LIKE ?2 || '%' ORDER BY id")
            .db(&self.path, "find run")?;
        let ids: Vec<String> = st
            .query_map(params![id, id.replace(['%', '_'], "")], |r| r.get(0))
            .db(&self.path, "find run")?
            .collect::<std::result::Result<_, _>>()
            .db(&self.path, "find run")?;
        let found = if ids.iter().any(|i| i == id) {
            id.to_string()
        } else if ids.len() == 1 {
            ids[0].clone()
        } else if ids.is_empty() {
            return Ok(None);
        } else {
            return Err(CatalogError::Db {
                path: self.path.clone(),
                msg: format!(
                    "run id {id:?} is ambiguous ({} runs start with it); give more of it",
                    ids.len()
                ),
            });
        };
        self.show_exact(&found)?
            .ok_or_else(|| CatalogError::Db {
                path: self.path.clone(),
                msg: format!("run {found} vanished while it was read"),
            })
            .map(Some)
    }

    /// The record of backup `id` without its list of problems (`problems` empty,
    /// `problems_not_listed` all of them: `errors` still counts them), for the
    /// dashboard's overview, `/metrics` and `/api/jobs`, which show counts: a record
    /// lists up to `MAX_LISTED_PROBLEMS` problems (300 KB for 3000), and reading,
    /// decoding and keeping each job's newest whole record made a scrape's time and the
    /// server's memory grow with them. SQLite drops the list before the record is read.
    pub fn run_summary(&self, id: &str) -> Result<Option<RunReport>> {
        let json = self
            .conn
            .query_row(
                "SELECT json_set(report, '$.problems', json('[]'),
                    '$.problems_not_listed', json_extract(report, '$.errors'))
                 FROM runs WHERE id = ?1 AND kind = 'backup'",
                [id],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .db(&self.path, "read run")?;
        json.map(|j| serde_json::from_str(&j).db(&self.path, "decode run"))
            .transpose()
    }

    /// Run `id` as its page shows it: its record without the list of problems (which
    /// the record repeats), and at most `limit` of its problems from the `from`-th on;
    /// the second value is how many problems the catalog lists for it.
    pub fn show_page(&self, id: &str, from: u64, limit: u64) -> Result<Option<(Shown, u64)>> {
        let row = self
            .conn
            .query_row(
                "SELECT json_set(report, '$.problems', json('[]')), log_path, kind,
                    (SELECT count(*) FROM problems WHERE run_id = ?1), log_path_raw
                 FROM runs WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)? as u64,
                        r.get::<_, Option<Vec<u8>>>(4)?,
                    ))
                },
            )
            .optional()
            .db(&self.path, "read run")?;
        let Some((json, log, kind, total, log_raw)) = row else {
            return Ok(None);
        };
        let problems = self.problems_of(id, from, limit)?;
        let shown = self.shown(&json, log, log_raw, kind, problems)?;
        Ok(Some((shown, total)))
    }

    fn problems_of(&self, id: &str, from: u64, limit: u64) -> Result<Vec<Problem>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT path, kind, action, error FROM problems WHERE run_id = ?1
                 ORDER BY rowid LIMIT ?2 OFFSET ?3",
            )
            .db(&self.path, "read problems")?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        st.query_map(params![id, limit, from], |r| {
            let kind: String = r.get(1)?;
            Ok(Problem {
                path: r.get(0)?,
                kind: serde_json::from_value(serde_json::Value::String(kind))
                    .unwrap_or(crate::report::ProblemKind::Unreadable),
                action: r.get(2)?,
                error: r.get(3)?,
            })
        })
        .db(&self.path, "read problems")?
        .collect::<std::result::Result<Vec<_>, _>>()
        .db(&self.path, "read problems")
    }

    fn shown(
        &self,
        json: &str,
        log: Option<String>,
        log_raw: Option<Vec<u8>>,
        kind: String,
        problems: Vec<Problem>,
    ) -> Result<Shown> {
        let report = if kind == "restore" {
            Record::Restore(serde_json::from_str(json).db(&self.path, "decode restore")?)
        } else {
            Record::Backup(serde_json::from_str(json).db(&self.path, "decode run")?)
        };
        let log_exists = log
            .as_deref()
            .is_some_and(|l| crate::localpath::from_fields(l, log_raw).exists());
        Ok(Shown {
            kind,
            report,
            problems,
            log_path: log,
            log_exists,
        })
    }

    /// The run with exactly this id (by the primary key; `show` also takes a prefix,
    /// which costs a scan of the table).
    pub fn show_exact(&self, id: &str) -> Result<Option<Shown>> {
        let row = self
            .conn
            .query_row(
                "SELECT report, log_path, kind, log_path_raw FROM runs WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                    ))
                },
            )
            .optional()
            .db(&self.path, "read run")?;
        let Some((json, log, kind, log_raw)) = row else {
            return Ok(None);
        };
        let problems = self.problems_of(id, 0, u64::MAX)?;
        self.shown(&json, log, log_raw, kind, problems).map(Some)
    }

    /// Notes that the death of run `id`, whose record is in the store at `root` (on the
    /// daemon's worker `key`), was told before its store answered, so that its record
    /// is marked told once the store answers, by this daemon or the next one started
    /// ([`Catalog::told_deaths`], [`Catalog::marked_told`]).
    pub fn note_told_death(
        &mut self,
        id: &str,
        key: &Path,
        root: &Path,
        cause: &str,
    ) -> Result<()> {
        use crate::localpath::{raw, text};
        self.conn
            .execute(
                "INSERT OR REPLACE INTO told_deaths (id, key, key_raw, root, root_raw, cause)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, text(key), raw(key), text(root), raw(root), cause],
            )
            .db(&self.path, "note a death told before its store answered")?;
        Ok(())
    }

    /// The deaths told before their store answered whose records are not marked told
    /// yet: (id, key, root, cause), as [`Catalog::note_told_death`] noted them.
    pub fn told_deaths(&self) -> Result<Vec<(String, PathBuf, PathBuf, String)>> {
        let mut st = self
            .conn
            .prepare("SELECT id, key, key_raw, root, root_raw, cause FROM told_deaths ORDER BY id")
            .db(
                &self.path,
                "read the deaths told before their store answered",
            )?;
        st.query_map([], |r| {
            Ok((
                r.get(0)?,
                crate::localpath::from_fields(&r.get::<_, String>(1)?, r.get(2)?),
                crate::localpath::from_fields(&r.get::<_, String>(3)?, r.get(4)?),
                r.get(5)?,
            ))
        })
        .db(
            &self.path,
            "read the deaths told before their store answered",
        )?
        .collect::<std::result::Result<Vec<_>, _>>()
        .db(
            &self.path,
            "read the deaths told before their store answered",
        )
    }

    /// Run `id`'s record is marked told ([`Catalog::note_told_death`]).
    pub fn marked_told(&mut self, id: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM told_deaths WHERE id = ?1", [id])
            .db(&self.path, "forget a death marked told")?;
        Ok(())
    }

    /// Records a daemon event (`skipped`, `reload`, `stop`, ...).
    pub fn event(&mut self, job: Option<&str>, kind: &str, message: &str) -> Result<()> {
        self.event_at(&crate::util::now_rfc3339(), job, kind, message)
    }

    /// Records a daemon event that happened at `at` (RFC 3339): the daemon queues its
    /// events and writes them off its scheduling loop, maybe later.
    pub fn event_at(
        &mut self,
        at: &str,
        job: Option<&str>,
        kind: &str,
        message: &str,
    ) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO events (at, job, kind, message) VALUES (?1, ?2, ?3, ?4)",
                params![at, job, kind, message],
            )
            .db(&self.path, "record event")?;
        Ok(())
    }

    /// Events, oldest first: (at, job, kind, message).
    pub fn events(&self, job: Option<&str>) -> Result<Vec<Event>> {
        let mut st = self
            .conn
            .prepare("SELECT at, job, kind, message FROM events WHERE ?1 IS NULL OR job = ?1 ORDER BY rowid")
            .db(&self.path, "query events")?;
        st.query_map([job], |r| {
            Ok(Event {
                at: r.get(0)?,
                job: r.get(1)?,
                kind: r.get(2)?,
                message: r.get(3)?,
            })
        })
        .db(&self.path, "query events")?
        .collect::<std::result::Result<Vec<_>, _>>()
        .db(&self.path, "query events")
    }

    /// The newest backup of `job`: its id, status, message and start, if it has one.
    /// Newest as `recent` has it: a run dated more than `FUTURE_SLACK` ahead (made while
    /// the clock was ahead) comes after every other, else it hid the real newest run
    /// from the daemon's start (an interrupted run behind it was not resumed). Read
    /// from `runs_job_kind_started`, as `recent`.
    fn newest(&self, job: &str) -> Result<Option<(String, String, String, String)>> {
        let now = not_after();
        for cond in ["started_at <= ?2", "started_at > ?2"] {
            let row = self
                .conn
                .prepare_cached(&format!(
                    "SELECT id, status, message, started_at FROM runs
                     WHERE job = ?1 AND kind = 'backup' AND {cond}
                     ORDER BY started_at DESC, id DESC LIMIT 1"
                ))
                .and_then(|mut st| {
                    st.query_row(params![job, now], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .optional()
                })
                .db(&self.path, "query runs")?;
            if row.is_some() {
                return Ok(row);
            }
        }
        Ok(None)
    }

    /// The newest backup of `job` (`newest`): its id, status and message, if it has
    /// one.
    pub fn newest_backup(&self, job: &str) -> Result<Option<(String, String, String)>> {
        Ok(self
            .newest(job)?
            .map(|(id, status, message, _)| (id, status, message)))
    }

    /// When the newest run of `job` (`newest`) started (RFC 3339), if any: a run dated
    /// more than `FUTURE_SLACK` ahead counts only when there is no other, else it hid a
    /// missed run from `missed = "run-once"` until its date.
    pub fn last_start(&self, job: &str) -> Result<Option<String>> {
        Ok(self.newest(job)?.map(|(.., started)| started))
    }

    /// Runs (id, store) recorded `failed` after their rotation's journal was written
    /// (`error::PUBLISH_PENDING`): the next repair publishes them.
    pub fn publish_pending(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, store, store_raw FROM runs
                 WHERE kind = 'backup' AND status = 'failed' AND snapshot IS NULL
                   AND instr(message, ?1) > 0",
            )
            .db(&self.path, "query runs")?;
        st.query_map([crate::error::PUBLISH_PENDING], id_and_store)
            .db(&self.path, "query runs")?
            .collect::<std::result::Result<Vec<_>, _>>()
            .db(&self.path, "query runs")
    }

    /// The backups of `job` that a dead run may have left unsettled, with their stores:
    /// those still marked `running` and those whose publication is pending
    /// ([`Catalog::running_in`], [`Catalog::publish_pending`], of one job: the daemon's
    /// start settles every one of its jobs', not only their newest).
    pub fn unsettled_of(&self, job: &str) -> Result<Vec<(String, PathBuf)>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, store, store_raw FROM runs
                 WHERE job = ?1 AND kind = 'backup'
                   AND (status = 'running'
                        OR (status = 'failed' AND snapshot IS NULL AND instr(message, ?2) > 0))",
            )
            .db(&self.path, "query runs")?;
        st.query_map(params![job, crate::error::PUBLISH_PENDING], id_and_store)
            .db(&self.path, "query runs")?
            .collect::<std::result::Result<Vec<_>, _>>()
            .db(&self.path, "query runs")
    }

    /// Backups and copies still marked `running`: (id, store).
    pub fn running_in(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, store, store_raw FROM runs WHERE status = 'running' AND kind IN ('backup', 'copy')",
            )
            .db(&self.path, "query runs")?;
        st.query_map([], id_and_store)
            .db(&self.path, "query runs")?
            .collect::<std::result::Result<Vec<_>, _>>()
            .db(&self.path, "query runs")
    }

    /// The status of run `id`, if the catalog has a row for it.
    fn status_of(&self, id: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT status FROM runs WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .db(&self.path, "query runs")
    }

    /// Ids of every backup recorded for `store` (restores have no record in the store).
    fn ids_of_store(&self, store: &Path) -> Result<HashSet<String>> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM runs WHERE store = ?1 AND store_raw IS ?2 AND kind = 'backup'")
            .db(&self.path, "query runs")?;
        st.query_map(params![text(store), raw(store)], |r| r.get(0))
            .db(&self.path, "query runs")?
            .collect::<std::result::Result<HashSet<_>, _>>()
            .db(&self.path, "query runs")
    }

    /// Makes the catalog's rows for a store equal to its run records: every record
    /// upserted, rows without a record removed, except those of runs the store pruned
    /// (`store::runs`: an id up to its `runs-pruned` mark), which the catalog alone
    /// keeps now. Returns how many records it read.
    pub fn rebuild(&mut self, store_root: &Path, store_key: &Path) -> Result<u64> {
        let runs = store_root.join(crate::store::META_DIR).join("runs");
        let mut n = 0;
        let mut seen = HashSet::new();
        // A store without a `runs` folder (never written, or a read-only copy) has no runs.
        let listing = match std::fs::read_dir(&runs) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            r => Some(r.db(&runs, "read run records")?),
        };
        let mut entries: Vec<PathBuf> = listing
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        entries.sort();
        let mut batch = Vec::with_capacity(IMPORT_BATCH);
        for p in entries {
            let text = match crate::fsx::read_regular(&p) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(
                        "{}: unreadable run record ({e}); skipped",
                        crate::relpath::shown(&p)
                    );
                    continue;
                }
            };
            let r: RunReport = match serde_json::from_slice(&text) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(
                        "{}: damaged run record ({e}); skipped",
                        crate::relpath::shown(&p)
                    );
                    continue;
                }
            };
            // A record is the one of its file name, with a run id as the store gives
            // them (`store::plain_name`, as `Store::read_run` reads records): a forged
            // one (`../../tmp/x`, `<script>`, another run's id) imported as a row
            // `running` was never settled, since settling reads the record by its id.
            let stem = p.file_stem().and_then(|s| s.to_str());
            if !crate::store::plain_name(&r.id) || stem != Some(r.id.as_str()) {
                tracing::warn!(
                    "{}: a run record whose id {:?} is not a run id, or not its file's name; skipped",
                    crate::relpath::shown(&p),
                    r.id
                );
                continue;
            }
            if r.dry_run {
                continue;
            }
            seen.insert(r.id.clone());
            batch.push(r);
            n += 1;
            if batch.len() >= IMPORT_BATCH {
                self.record_all(&batch)?;
                batch.clear();
            }
        }
        self.record_all(&batch)?;
        let pruned = crate::store::runs::pruned_up_to(store_root);
        let gone: Vec<String> = self
            .ids_of_store(store_key)?
            .into_iter()
            .filter(|id| !seen.contains(id))
            .filter(|id| pruned.as_ref().is_none_or(|m| id > m))
            .collect();
        let tx = self.conn.transaction().db(&self.path, "begin")?;
        for id in gone {
            tx.execute("DELETE FROM runs WHERE id = ?1", [&id])
                .db(&self.path, "remove run")?;
        }
        tx.commit().db(&self.path, "commit")?;
        Ok(n)
    }

    /// The jobs with backup runs in the catalog, in name order (`stats --job` of a job
    /// with none names them).
    pub fn job_names(&self) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT DISTINCT job FROM runs WHERE job IS NOT NULL AND kind = 'backup' ORDER BY job",
            )
            .db(&self.path, "query jobs")?;
        st.query_map([], |r| r.get(0))
            .db(&self.path, "query jobs")?
            .collect::<std::result::Result<Vec<String>, _>>()
            .db(&self.path, "query jobs")
    }

    /// Summaries per job (or per store for runs without a job) over the runs in `f`.
    pub fn stats(&self, f: &Filter) -> Result<Vec<Stats>> {
        let rows = self.runs(f)?;
        let mut groups: Vec<(String, Vec<RunRow>)> = Vec::new();
        for r in rows {
            let key = r.job.clone().unwrap_or_else(|| r.store.clone());
            match groups.iter_mut().find(|g| g.0 == key) {
                Some(g) => g.1.push(r),
                None => groups.push((key, vec![r])),
            }
        }
        Ok(groups.into_iter().map(|(k, v)| summarize(k, &v)).collect())
    }
}

/// Inserts or updates run `r` and replaces its problems, inside the caller's
/// transaction.
fn upsert_run(tx: &rusqlite::Transaction<'_>, path: &Path, r: &RunReport) -> Result<()> {
    let json = serde_json::to_string(r).db(path, "encode run")?;
    let log = log_path(r);
    tx.prepare_cached(
        "INSERT INTO runs (id, job, label, store, source, host, version, started_at,
            finished_at, duration_seconds, status, exit_code, message, snapshot,
            files_total, files_transferred, files_linked, bytes_total, bytes_transferred,
            errors, report, retain, window, prefix, based_on, expired, dirs_total,
            link_fallbacks, changed_during_backup, source_bytes, backup_bytes_added,
            throughput_files_per_second, throughput_bytes_per_second, peak_rss_bytes,
            walk_copy_seconds, sync_seconds, rotation_seconds, remove_expired_seconds,
            log_path, bwlimit_wait_seconds, bytes_uploaded, objects_written, dedup_ratio,
            failed_once, store_raw, source_raw, log_path_raw, kind)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
            ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31,
            ?32, ?33, ?34, ?35, ?36, ?37, ?38, ?39, ?40, ?41, ?42, ?43, ?44, ?45, ?46, ?47,
            ?48)
         ON CONFLICT(id) DO UPDATE SET job=excluded.job, label=excluded.label, kind=excluded.kind,
            store=excluded.store, source=excluded.source, host=excluded.host,
            version=excluded.version, started_at=excluded.started_at,
            finished_at=excluded.finished_at, duration_seconds=excluded.duration_seconds,
            status=excluded.status, exit_code=excluded.exit_code, message=excluded.message,
            snapshot=excluded.snapshot, files_total=excluded.files_total,
            files_transferred=excluded.files_transferred, files_linked=excluded.files_linked,
            bytes_total=excluded.bytes_total, bytes_transferred=excluded.bytes_transferred,
            errors=excluded.errors, report=excluded.report, retain=excluded.retain,
            window=excluded.window, prefix=excluded.prefix, based_on=excluded.based_on,
            expired=excluded.expired, dirs_total=excluded.dirs_total,
            link_fallbacks=excluded.link_fallbacks,
            changed_during_backup=excluded.changed_during_backup,
            source_bytes=excluded.source_bytes, backup_bytes_added=excluded.backup_bytes_added,
            throughput_files_per_second=excluded.throughput_files_per_second,
            throughput_bytes_per_second=excluded.throughput_bytes_per_second,
            peak_rss_bytes=excluded.peak_rss_bytes, walk_copy_seconds=excluded.walk_copy_seconds,
            sync_seconds=excluded.sync_seconds, rotation_seconds=excluded.rotation_seconds,
            remove_expired_seconds=excluded.remove_expired_seconds, log_path=excluded.log_path,
            bwlimit_wait_seconds=excluded.bwlimit_wait_seconds,
            bytes_uploaded=excluded.bytes_uploaded, objects_written=excluded.objects_written,
            dedup_ratio=excluded.dedup_ratio,
            failed_once=max(runs.failed_once, excluded.failed_once),
            store_raw=excluded.store_raw, source_raw=excluded.source_raw,
            log_path_raw=excluded.log_path_raw",
    )
    .db(path, "record run")?
    .execute(params![
        r.id,
        r.job,
        r.label,
        text(&r.store),
        text(&r.source),
        r.host,
        r.version,
        r.started_at,
        r.finished_at,
        r.duration_seconds,
        r.status.as_str(),
        r.exit_code,
        r.message,
        r.snapshot,
        r.files_total as i64,
        r.files_transferred as i64,
        r.files_linked as i64,
        r.bytes_total as i64,
        r.bytes_transferred as i64,
        r.errors as i64,
        json,
        r.retain,
        r.window,
        r.prefix,
        r.based_on,
        serde_json::to_string(&r.expired).unwrap_or_default(),
        r.dirs_total as i64,
        r.link_fallbacks as i64,
        r.changed_during_backup as i64,
        r.source_bytes as i64,
        r.backup_bytes_added as i64,
        r.throughput_files_per_second,
        r.throughput_bytes_per_second,
        r.peak_rss_bytes as i64,
        r.phases.walk_copy.seconds,
        r.phases.sync.seconds,
        r.phases.rotation.seconds,
        r.phases.remove_expired.seconds,
        text(&log),
        r.bwlimit_wait_seconds,
        r.repository.as_ref().map(|k| k.bytes_uploaded as i64),
        r.repository.as_ref().map(|k| k.objects_written as i64),
        r.repository.as_ref().map(|k| k.dedup_ratio),
        failed_once(r),
        raw(&r.store),
        raw(&r.source),
        raw(&log),
        kind_of(r),
    ])
    .db(path, "record run")?;
    insert_problems(tx, path, &r.id, &r.problems)
}

/// The catalog's `kind` of run `r`: `copy` for a `snapring copy` (from its `running`
/// row on: `copy_of`), else `backup`.
pub fn kind_of(r: &RunReport) -> &'static str {
    let copied = r
        .repository
        .as_ref()
        .is_some_and(|k| k.copied_from.is_some());
    match r.copy_of.is_some() || copied {
        true => "copy",
        false => "backup",
    }
}

/// Whether run `r` is one that failed (`runs.failed_once`): recorded `failed`, or
/// published by a later repair after its rotation failed.
fn failed_once(r: &RunReport) -> bool {
    r.status == Status::Failed || r.message.starts_with(crate::error::PUBLISHED_LATER)
}

/// Replaces the problems of run `id` (inside the caller's transaction).
fn insert_problems(
    tx: &rusqlite::Transaction<'_>,
    path: &Path,
    id: &str,
    problems: &[Problem],
) -> Result<()> {
    tx.prepare_cached("DELETE FROM problems WHERE run_id = ?1")
        .and_then(|mut st| st.execute([id]))
        .db(path, "record problems")?;
    let mut ins = tx
        .prepare_cached(
            "INSERT INTO problems (run_id, path, kind, action, error) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .db(path, "record problems")?;
    for p in problems {
        let kind = serde_json::to_value(p.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        ins.execute(params![id, p.path, kind, p.action, p.error])
            .db(path, "record problems")?;
    }
    Ok(())
}

/// The stamp of the last check of the catalog `catalog` that passed
/// (`<catalog>.checked`, beside it: a file rather than a row, so that a read command
/// writes nothing into the catalog and a damaged catalog, which may not take a write,
/// can still lose its stamp): when, and the catalog file's device and inode (a file put
/// in its place, `catalog rebuild`'s new one say, is checked anew).
pub fn check_stamp_path(catalog: &Path) -> PathBuf {
    let mut s = catalog.as_os_str().to_owned();
    s.push(".checked");
    PathBuf::from(s)
}

/// [`CHECK_INTERVAL`], or `SNAPRING_CATALOG_CHECK_INTERVAL` (a duration: `0`, `1h`,
/// `7d`); an invalid value is the default.
fn check_interval() -> Duration {
    match std::env::var("SNAPRING_CATALOG_CHECK_INTERVAL") {
        Ok(v) if v.trim() == "0" => Duration::ZERO,
        Ok(v) => crate::util::parse_duration(&v).unwrap_or(CHECK_INTERVAL),
        Err(_) => CHECK_INTERVAL,
    }
}

/// (device, inode) of the file at `path`.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

/// Whether a check of the catalog at `path` (this very file) passed less than
/// `interval` ago, by its stamp. A stamp from the future (a clock set back) does not
/// count.
fn checked_within(path: &Path, interval: Duration) -> bool {
    let Ok(text) = crate::fsx::read_regular(&check_stamp_path(path)) else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return false;
    };
    let (Some(at), Some(dev), Some(ino)) = (
        v["checked_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()),
        v["dev"].as_u64(),
        v["ino"].as_u64(),
    ) else {
        return false;
    };
    if file_id(path) != Some((dev, ino)) {
        return false;
    }
    let age = chrono::Utc::now().signed_duration_since(at);
    age >= chrono::Duration::zero() && age.to_std().is_ok_and(|a| a < interval)
}

/// Writes the stamp of a check of `path` that passed now; a stamp that cannot be
/// written only means the next read command checks again.
fn note_check(path: &Path) {
    let Some((dev, ino)) = file_id(path) else {
        return;
    };
    let stamp = serde_json::json!({
        "checked_at": crate::util::now_rfc3339(),
        "dev": dev,
        "ino": ino,
    });
    let at = check_stamp_path(path);
    if let Err(e) = crate::util::write_atomic(&at, stamp.to_string().as_bytes()) {
        tracing::debug!("{}: cannot write ({e})", crate::relpath::shown(&at));
    }
}

/// Removes the stamp of the catalog at `path`: its next read command checks it whole.
fn forget_check(path: &Path) {
    let at = check_stamp_path(path);
    match std::fs::remove_file(&at) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("{}: cannot delete ({e})", crate::relpath::shown(&at)),
    }
}

/// Where a restore's log goes: `logs/<id>.log` beside the catalog file (a restore
/// writes nothing into the store, so its log cannot live there).
pub fn restore_log_path(catalog: &Path, id: &str) -> PathBuf {
    catalog
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("logs")
        .join(format!("{id}.log"))
}

/// Removes the logs beside the catalog at `catalog` (`logs/<id>.log`: restores',
/// repository runs', backups that could not start) that the default run-record policy
/// lets go (`store::runs::RunRetention`, as a store's own logs are pruned: older than
/// 30 days beyond the newest 100, a failed or incomplete run's kept 90 days). They
/// were never removed: a restore every minute left half a million a year. The
/// catalog's rows stay (`show` says the log is gone). Never `current`'s, never one of
/// a run still `running` or holding its marker (`logs/<id>.running`), never one whose
/// run has no row (the catalog could not record it, or was lost: the log is all
/// there is). At most [`crate::store::runs::MAX_PRUNED_PER_RUN`] a call, the
/// oldest first; a catalog that cannot be read prunes nothing. Returns how many went.
pub fn prune_logs(
    catalog: &Path,
    allow_nfs: bool,
    current: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> usize {
    use crate::store::runs::{MAX_PRUNED_PER_RUN, RunRetention};
    let policy = RunRetention::default();
    let Some(keep_for) = policy.keep_for else {
        return 0;
    };
    let logs = restore_log_path(catalog, current);
    let Some(dir) = logs.parent() else { return 0 };
    let Ok(listing) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut ids: Vec<String> = listing
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(".log")?;
            (id != current && crate::store::plain_name(id)).then(|| id.to_string())
        })
        .collect();
    if ids.len() <= policy.keep_last {
        return 0;
    }
    let age = |d: std::time::Duration| {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
    };
    let (cutoff, failed_cutoff) = (age(keep_for), age(policy.keep_failed_for.max(keep_for)));
    // Newest first (an id begins with its start), the newest `keep_last` kept.
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let mut candidates: Vec<(String, chrono::DateTime<chrono::Utc>)> = ids
        .into_iter()
        .skip(policy.keep_last)
        .filter_map(|id| {
            let t = crate::store::select::run_id_time(&id)?;
            (t < cutoff).then_some((id, t))
        })
        .collect();
    if candidates.is_empty() {
        return 0;
    }
    candidates.reverse();
    let Ok(cat) = Catalog::open(catalog, allow_nfs) else {
        return 0;
    };
    let mut gone = 0;
    for (id, t) in candidates {
        if gone >= MAX_PRUNED_PER_RUN {
            break;
        }
        if dir.join(format!("{id}.running")).exists() {
            continue;
        }
        let keep = match cat.status_of(&id) {
            Err(_) => true,
            Ok(Some(s)) if s == "complete" || s == "partial" => false,
            Ok(Some(s)) if s == "running" => true,
            // Failed or incomplete: what explains what went wrong.
            Ok(Some(_)) => t >= failed_cutoff,
            // No row (the catalog could not record it, or was lost since): the log is
            // all there is of that run.
            Ok(None) => true,
        };
        if keep {
            continue;
        }
        let p = dir.join(format!("{id}.log"));
        match std::fs::remove_file(&p) {
            Ok(()) => gone += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("{}: cannot delete ({e})", crate::relpath::shown(&p)),
        }
    }
    if gone > 0 {
        tracing::info!(
            logs = gone,
            "removed the logs beside the catalog of runs older than 30d beyond the newest {} (the catalog keeps their history)",
            policy.keep_last
        );
    }
    gone
}

/// A path's text column (`crate::localpath`): exact when it is UTF-8, else lossy.
fn text(p: &Path) -> String {
    crate::localpath::text(p).into_owned()
}

/// A path's `_raw` column: its bytes when it is not UTF-8, else NULL.
fn raw(p: &Path) -> Option<&[u8]> {
    crate::localpath::raw(p)
}

/// `(id, store)` of a row selected as `id, store, store_raw`.
fn id_and_store(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, PathBuf)> {
    let store: String = r.get(1)?;
    Ok((r.get(0)?, crate::localpath::from_fields(&store, r.get(2)?)))
}

/// One `runs` row in the column order of the `SELECT`s of `runs` and `recent`
/// (`kind` last, at 13).
fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    use rusqlite::types::ValueRef;
    let mut invalid = Vec::new();
    let mut count = |i: usize, column: &'static str| -> rusqlite::Result<u64> {
        let value = match r.get_ref(i)? {
            ValueRef::Integer(n) if n >= 0 => return Ok(n as u64),
            ValueRef::Integer(n) => n.to_string(),
            ValueRef::Real(f) => f.to_string(),
            ValueRef::Text(t) => format!("{:?}", String::from_utf8_lossy(t)),
            ValueRef::Blob(_) => "a blob".to_string(),
            ValueRef::Null => "NULL".to_string(),
        };
        invalid.push(Invalid { column, value });
        Ok(0)
    };
    let counts = [
        count(9, "files_total")?,
        count(10, "files_transferred")?,
        count(11, "bytes_transferred")?,
        count(12, "errors")?,
        count(14, "notifications")?,
        count(15, "notifications_failed")?,
    ];
    let started_at: String = r.get(5)?;
    let finished_at: Option<String> = r.get(6)?;
    for (column, t) in [
        ("started_at", Some(&started_at)),
        ("finished_at", finished_at.as_ref()),
    ] {
        if let Some(t) = t.filter(|t| !valid_time(t)) {
            invalid.push(Invalid {
                column,
                value: format!("{t:?}"),
            });
        }
    }
    // Read as the counts are: a value of another type (a hand edit) is this row's
    // invalid column, not the whole query's error.
    let duration_seconds = match r.get_ref(7)? {
        ValueRef::Real(f) if f >= 0.0 && f.is_finite() => f,
        ValueRef::Integer(n) if n >= 0 => n as f64,
        other => {
            let value = match other {
                ValueRef::Integer(n) => n.to_string(),
                ValueRef::Real(f) => f.to_string(),
                ValueRef::Text(t) => format!("{:?}", String::from_utf8_lossy(t)),
                ValueRef::Blob(_) => "a blob".to_string(),
                ValueRef::Null => "NULL".to_string(),
            };
            invalid.push(Invalid {
                column: "duration_seconds",
                value,
            });
            0.0
        }
    };
    Ok(RunRow {
        id: r.get(0)?,
        kind: r.get(13)?,
        job: r.get(1)?,
        label: r.get(2)?,
        store: r.get(3)?,
        snapshot: r.get(4)?,
        started_at,
        finished_at,
        duration_seconds,
        status: r.get(8)?,
        files_total: counts[0],
        files_transferred: counts[1],
        bytes_transferred: counts[2],
        errors: counts[3],
        notifications: counts[4],
        notifications_failed: counts[5],
        invalid,
    })
}

/// The columns `run_row` reads as its last two: how many notifications the run's
/// record holds, and how many of them failed (`ok` false).
const NOTIFICATIONS: &str = "coalesce(json_array_length(report, '$.notifications'), 0),
    (SELECT count(*) FROM json_each(report, '$.notifications') AS n
     WHERE json_extract(n.value, '$.ok') = 0)";

/// Creates the catalog file private (0600) before SQLite opens it (SQLite would make it
/// 0644, and gives its `-journal`, `-wal` and `-shm` files the database's mode), or
/// makes an existing one of ours private if it is not (a catalog made before snapring
/// created it 0600).
/// Refuses a catalog path that exists and is not a regular file (a symbolic link is
/// followed), before SQLite opens it: SQLite writes its header and pages into whatever
/// it is given, so `--catalog /dev/loop0` wrote a database over the device's data (and
/// `catalog rebuild` then renamed the device node aside as damaged), `/dev/zero` left
/// `/dev/zero-journal`, and a fifo said only "disk I/O error". A symbolic link to
/// nothing (its target deleted, or a typo) is refused too: opening it created the
/// link's target, wherever it points, and `serve` counted it as a catalog present.
pub fn refuse_not_a_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(m) = std::fs::metadata(path) else {
        if let Ok(l) = std::fs::symlink_metadata(path)
            && l.file_type().is_symlink()
        {
            let to = std::fs::read_link(path).unwrap_or_default();
            return Err(CatalogError::Db {
                path: path.to_path_buf(),
                msg: format!(
                    "is a symbolic link to {}, which does not exist (deleted, or a typo): nothing was opened or created; point the link at the catalog file, remove the link (a new catalog is then started there), or name the file itself with --catalog, SNAPRING_CATALOG or the config's `catalog`",
                    crate::relpath::shown(&to)
                ),
            });
        }
        return Ok(());
    };
    let t = m.file_type();
    let what = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a fifo (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    let hint = if t.is_dir() {
        format!(
            "name a file in it, e.g. --catalog {}",
            crate::relpath::shown(&path.join("catalog.db"))
        )
    } else {
        "name a regular file (one that does not exist yet is created)".to_string()
    };
    Err(CatalogError::Db {
        path: path.to_path_buf(),
        msg: format!(
            "is {what}, not a regular file: the catalog is a SQLite database file, and SQLite would write over whatever is there; nothing was opened or written; {hint} with --catalog, SNAPRING_CATALOG or the config's `catalog`"
        ),
    })
}

fn make_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).db(path, "create"),
    }
    if let Ok(m) = std::fs::metadata(path)
        && m.is_file()
        && m.uid() == rustix::process::geteuid().as_raw()
        && m.permissions().mode() & 0o077 != 0
        && let Err(e) = std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(m.permissions().mode() & 0o700),
        )
    {
        tracing::warn!(
            "catalog {}: other users can read it, and it cannot be made private ({e}); chmod 600 it",
            crate::relpath::shown(path)
        );
    }
    Ok(())
}

/// Where a run's log is: `<store>/.snapring/logs/<id>.log` (the store owns its layout).
pub use crate::store::log_path;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Least-squares slope of `y` over `x` (0 with fewer than two distinct x).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return 0.0;
    }
    points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx
}

/// The newer half's mean against the older half's, in percent (oldest first input):
/// `None` with fewer than 4 values, or when the older half's mean is 0 and the newer
/// half's is not (no percentage of nothing); 0 when both are 0.
fn half_over_half(v: &[f64]) -> Option<f64> {
    if v.len() < 4 {
        return None;
    }
    let h = v.len() / 2;
    let old = v[..h].iter().sum::<f64>() / h as f64;
    let new = v[v.len() - h..].iter().sum::<f64>() / h as f64;
    if old > 0.0 {
        Some((new - old) / old * 100.0)
    } else {
        (new <= 0.0).then_some(0.0)
    }
}

fn summarize(job: String, runs: &[RunRow]) -> Stats {
    let count = |s: Status| runs.iter().filter(|r| r.status == s.as_str()).count() as u64;
    let (complete, partial, incomplete, failed, running) = (
        count(Status::Complete),
        count(Status::Partial),
        count(Status::Incomplete),
        count(Status::Failed),
        count(Status::Running),
    );
    let finished = runs.len() as u64 - running;
    // A run with a value no run writes (edited by hand) counts by its status alone:
    // its time, duration or counts would skew the sums and trends.
    let valid: Vec<&RunRow> = runs.iter().filter(|r| r.invalid.is_empty()).collect();
    let done: Vec<&RunRow> = valid
        .iter()
        .copied()
        .filter(|r| r.status != "running")
        .collect();
    // A run that never ended (killed: settled `incomplete` without a `finished_at`)
    // has no duration (its record's 0 is none): left out of the durations.
    let timed: Vec<&RunRow> = done
        .iter()
        .copied()
        .filter(|r| r.finished_at.is_some())
        .collect();
    let mut durations: Vec<f64> = timed.iter().map(|r| r.duration_seconds).collect();
    durations.sort_by(|a, b| a.total_cmp(b));
    let day = |r: &RunRow| {
        chrono::DateTime::parse_from_rfc3339(&r.started_at)
            .map(|t| t.timestamp_millis() as f64 / 86_400_000.0)
            .unwrap_or(0.0)
    };
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let bytes: Vec<f64> = done.iter().map(|r| r.bytes_transferred as f64).collect();
    let last = runs.last();
    Stats {
        job,
        runs: runs.len() as u64,
        complete,
        partial,
        incomplete,
        failed,
        running,
        success_rate: if finished == 0 {
            0.0
        } else {
            complete as f64 / finished as f64
        },
        first_started_at: runs
            .first()
            .map(|r| r.started_at.clone())
            .unwrap_or_default(),
        last_started_at: last.map(|r| r.started_at.clone()).unwrap_or_default(),
        last_status: last.map(|r| r.status.clone()).unwrap_or_default(),
        duration_p50_seconds: percentile(&durations, 50.0),
        duration_p95_seconds: percentile(&durations, 95.0),
        duration_mean_seconds: mean(&durations),
        duration_trend_percent: half_over_half(
            &timed.iter().map(|r| r.duration_seconds).collect::<Vec<_>>(),
        ),
        timed_runs: timed.len() as u64,
        duration_slope_seconds_per_day: {
            let pts: Vec<(f64, f64)> = timed.iter().map(|r| (day(r), r.duration_seconds)).collect();
            let span =
                pts.last().map(|l| l.0).unwrap_or(0.0) - pts.first().map(|f| f.0).unwrap_or(0.0);
            if span >= 1.0 { slope(&pts) } else { 0.0 }
        },
        bytes_transferred_mean: mean(&bytes),
        bytes_transferred_trend_percent: half_over_half(&bytes),
        files_total_last: done.last().map(|r| r.files_total).unwrap_or(0),
        invalid_runs: runs
            .iter()
            .filter(|r| !r.invalid.is_empty())
            .map(|r| format!("{} ({})", r.id, r.invalid_text()))
            .collect(),
    }
}

/// Records `r` in the catalog at `path`, never failing: a problem is returned as a
/// message for the run's warnings (the run record in the store is what counts).
pub fn record_quietly(path: &Path, allow_nfs: bool, r: &RunReport) -> Option<String> {
    let res = Catalog::open(path, allow_nfs).and_then(|mut c| c.record(r));
    res.err().map(|e| quiet_error(e, r))
}

/// Records a run that has just started (status `running`) in the catalog at `path`,
/// with the runs of the same store whose records the store's repair rewrote (a failed
/// rotation it published, a dead run it marked `incomplete`), any the catalog still
/// thinks is running, and any it has no row for (a run killed before it reached the
/// catalog, or one whose catalog could not be written). Never fails: a problem is
/// returned as a message for the run's warnings.
pub fn record_start(
    path: &Path,
    allow_nfs: bool,
    store: &crate::store::Store,
    r: &RunReport,
) -> Option<String> {
    let res = Catalog::open(path, allow_nfs).and_then(|mut c| {
        let mut ids = store.repaired_runs();
        for (id, s) in c.running_in()? {
            if s == r.store && !ids.contains(&id) {
                ids.push(id);
            }
        }
        let known = c.ids_of_store(&r.store)?;
        for id in store.run_ids() {
            if !known.contains(&id) && !ids.contains(&id) {
                ids.push(id);
            }
        }
        // In batches, each one transaction (a record at a time took an fsync each:
        // 33 s for 23,000 records of a catalog that was lost, holding the store lock).
        for batch in ids
            .iter()
            .filter(|id| **id != r.id)
            .collect::<Vec<_>>()
            .chunks(IMPORT_BATCH)
        {
            let olds: Vec<RunReport> = batch
                .iter()
                .filter_map(|id| store.read_run(id).ok().flatten())
                .collect();
            if !olds.is_empty() {
                c.record_all(&olds)?;
            }
        }
        c.record(r)
    });
    res.err().map(|e| quiet_error(e, r))
}

/// The warning for a catalog that could not be written (also logged).
fn quiet_error(e: CatalogError, r: &RunReport) -> String {
    // A repository's run, or a store's that could not start (no record in the store;
    // its log is beside the catalog): nothing to rebuild this run from.
    let unrecorded = if r.repository.is_some() {
        "this run into a repository is not in the catalog (its snapshot is)"
    } else {
        "this run, which could not start, is not in the catalog and has no run record in its store (its log is beside the catalog)"
    };
    let msg = if (r.repository.is_some() || r.log.is_some()) && e.is_damaged() {
        // No run records to rebuild from: what to do for it.
        format!(
            "{e}; {unrecorded}: `snapring catalog rebuild --dest {}` moves the damaged file aside and starts an empty catalog",
            crate::relpath::shown(&r.store)
        )
    } else if r.repository.is_some() || r.log.is_some() {
        format!("{e}; {unrecorded}")
    } else {
        format!(
            "{e}; the run record in the store is intact (`snapring catalog rebuild --dest {}` restores the catalog)",
            crate::relpath::shown(&r.store)
        )
    };
    tracing::error!("{msg}");
    msg
}

/// Brings rows still marked `running`, and rows `failed` after their rotation's journal
/// was written, up to date: if their store can be locked (so no run is really going
/// on), the store is repaired (which marks a dead run `incomplete` and publishes a
/// journalled rotation) and the row re-read from its run record.
pub fn settle_running(c: &mut Catalog) {
    settle_repository_runs(c);
    let Ok(mut rows) = c.running_in() else { return };
    rows.extend(c.publish_pending().unwrap_or_default());
    for (id, store) in rows {
        // A restic repository's run has no store to repair or record to re-read: its
        // marker says whether it is alive (`settle_repository_runs`).
        if is_repository(&text(&store)) {
            continue;
        }
        if let Some(r) = settle_in_store(&store, &id, "catalog")
            && let Err(e) = c.record(&r)
        {
            tracing::warn!("{e}");
        }
    }
}

/// Settles run `id` of the hard-link store at `root` if it died: its record, read
/// under the store's lock (after a repair), still `running` is rewritten `incomplete`
/// ("interrupted: the process ended before finishing"), as the repair would. The
/// record as it is then; `None` when the store is locked (the run may be alive), cannot
/// be repaired, or has no record of it. `by`: the command that settles it, for the
/// store's lock and the record.
pub fn settle_in_store(root: &Path, id: &str, by: &str) -> Option<RunReport> {
    let s = crate::store::Store::open(root, false).ok()?;
    let holder = crate::store::lock::Holder {
        pid: std::process::id(),
        host: crate::util::hostname(),
        run: None,
        command: by.into(),
        since: crate::util::now_rfc3339(),
    };
    let lock = s.lock(&holder).ok()?;
    // A repair that cannot roll a journal forward (a full file system) leaves the
    // row as it is: the record may still say `running` (its run's final write
    // failed), but that run's snapshot is published by the next repair that can
    // write, so it must not be marked `incomplete`, "nothing was published".
    if s.repair(&lock, by).is_err() || s.needs_repair() {
        lock.release();
        return None;
    }
    if let Ok(Some(r)) = s.read_run(id)
        && r.status == Status::Running
    {
        // The lock was free, so nothing is running it: it died before any command
        // saw its lock. Record it as the repair would.
        let mut r = r;
        r.status = Status::Incomplete;
        r.exit_code = Status::Incomplete.exit_code();
        r.message = "interrupted: the process ended before finishing; nothing was published".into();
        let _ = s.write_run(&r);
    }
    lock.release();
    s.read_run(id).ok().flatten()
}

/// Is a run's `store` a restic repository's URL?
pub fn is_repository(store: &str) -> bool {
    store.starts_with("s3://") || store.starts_with("file://")
}

/// The marker a run into a repository holds a `flock` on while it runs
/// (`logs/<id>.running` beside the catalog): a repository has no store whose lock
/// would tell a live run from a dead one.
pub fn running_marker_path(catalog: &Path, id: &str) -> PathBuf {
    restore_log_path(catalog, id).with_extension("running")
}

/// A run into a repository, marked alive: the marker file, created and locked
/// (`flock`, exclusive) until `finish` or `leave`; the lock goes with the process
/// however it ends. Once the run's outcome is known its report is written into the
/// marker (`note`), so that a run killed after that (while it notifies, before its
/// final row) is settled as it ended, and a run whose final catalog write failed
/// leaves its report there (`leave`) for the next command that writes the catalog.
pub struct RunningMarker {
    path: PathBuf,
    file: std::fs::File,
}

impl RunningMarker {
    /// Creates and locks the marker of run `id` of the catalog at `catalog`; `None` if
    /// it cannot (the run then cannot be settled if it dies, as before markers).
    pub fn take(catalog: &Path, id: &str) -> Option<RunningMarker> {
        let path = running_marker_path(catalog, id);
        let file = std::fs::File::create(&path).ok()?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
        Some(RunningMarker { path, file })
    }

    /// The marker's path (`logs/<id>.running` beside the catalog).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `r`, the run's report as it stands, into the marker, in place (the lock is
    /// on this file: a new one renamed over it would be free while the run lives). A
    /// failed or torn write leaves a marker that is not a report: settled as a dead run.
    pub fn note(&self, r: &RunReport) {
        use std::io::{Seek, Write};
        let Ok(json) = serde_json::to_vec(r) else {
            return;
        };
        let mut f = &self.file;
        let res = f
            .set_len(0)
            .and_then(|()| f.seek(std::io::SeekFrom::Start(0)))
            .and_then(|_| f.write_all(&json))
            .and_then(|()| f.sync_data());
        if let Err(e) = res {
            tracing::warn!("{}: {e}", crate::relpath::shown(&self.path));
        }
    }

    /// Removes the marker (after the run's final row is recorded); the lock goes with
    /// the file's descriptor.
    pub fn finish(self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Lets go of the marker, keeping it with the report last `note`d in it: the run's
    /// final row could not be written, and the next command that writes the catalog
    /// records that report (`settle_repository_runs`); serve shows it meanwhile.
    pub fn leave(self) {}
}

/// The report a run into a repository left in its marker `file` (`RunningMarker::note`),
/// if the file holds run `id`'s.
pub fn report_left_in_marker(file: &std::fs::File, id: &str) -> Option<RunReport> {
    use std::io::Read;
    let mut buf = Vec::new();
    file.take(64 << 20).read_to_end(&mut buf).ok()?;
    let r: RunReport = serde_json::from_slice(&buf).ok()?;
    (r.id == id && r.status != Status::Running).then_some(r)
}

/// The message of a run into a repository the catalog still has as `running` whose
/// marker is gone: its end was not recorded (a version before markers, or one that
/// removed the marker of a run whose final catalog write failed).
pub fn unrecorded_end_message(store: &str) -> String {
    format!(
        "the end of this run was not recorded: its marker beside the catalog is gone; \
         a snapshot it wrote, if any, is in {store}"
    )
}

/// Settles the runs into a repository that the catalog still thinks are running but
/// whose process is gone (its marker's `flock` is free). A marker that holds the run's
/// report (`RunningMarker::note`: the outcome was known; its final catalog write failed,
/// or it was killed while it notified) is recorded as that report says. Else the run
/// died before its outcome was known: `incomplete`, as a killed store run is. No
/// snapshot of theirs is visible (a snapshot file is written last); packs they uploaded
/// without an index are left for `snapring prune`. A run without a marker (from a
/// version before markers, or whose marker was removed though its end was not
/// recorded) is settled `incomplete`, its message saying that its end was not recorded.
/// The marker is removed once the row is recorded.
///
/// Also a marker that holds its run's report while the catalog has no row of that run
/// at all ([`unrowed_markers`]: the catalog was locked for the whole run, its `running`
/// row as its final one not written): recorded as the report says. Looked for only
/// among `running` rows, such a run was never recorded and its marker stayed for ever.
pub fn settle_repository_runs(c: &mut Catalog) {
    if let Ok(rows) = c.running_in() {
        for (id, store) in rows.into_iter().filter(|(_, s)| is_repository(&text(s))) {
            let RepositoryRun::Ended { report, marker } =
                repository_run(c, &id, &text(&store), true)
            else {
                continue;
            };
            match c.record(&report) {
                Ok(()) => {
                    if marker.is_some() {
                        let _ = std::fs::remove_file(running_marker_path(&c.path, &id));
                    }
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
    }
    for (id, report, _held) in unrowed_markers(c) {
        match c.record(&report) {
            Ok(()) => {
                let _ = std::fs::remove_file(running_marker_path(&c.path, &id));
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// The markers beside the catalog (`logs/<id>.running`) of runs the catalog has no row
/// of, whose process is gone (the `flock` taken here, exclusive: held in the third
/// field until the caller recorded the run and removed the marker) and that hold the
/// run's report ([`report_left_in_marker`]). A marker without a report (its run died
/// before its outcome was known, and never reached the catalog) is left: there is
/// nothing of its run to record.
fn unrowed_markers(c: &Catalog) -> Vec<(String, RunReport, std::fs::File)> {
    let dir = running_marker_path(&c.path, "x");
    let Some(dir) = dir.parent() else {
        return Vec::new();
    };
    let Ok(list) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in list.flatten() {
        let name = e.file_name();
        // Only a run id's marker (`store::plain_name`, as records are imported): another
        // `*.running` name is not a run's, and never becomes a row.
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".running"))
            .filter(|id| crate::store::plain_name(id))
        else {
            continue;
        };
        // Empty: no report to record, or a run creating its marker this moment (a lock
        // taken here would leave it without one).
        if e.metadata().map_or(true, |m| m.len() == 0) || !matches!(c.show_exact(id), Ok(None)) {
            continue;
        }
        let Ok(f) = std::fs::File::open(e.path()) else {
            continue;
        };
        if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        // Read again under the lock: a run that just ended recorded its row first.
        if !matches!(c.show_exact(id), Ok(None)) {
            continue;
        }
        if let Some(r) = report_left_in_marker(&f, id) {
            out.push((id.to_string(), r, f));
        }
    }
    out
}

/// How run `id` into repository `store`, which the catalog had as `running`, stands by
/// its marker beside the catalog: the one rule [`settle_repository_runs`] records and
/// serve shows (read-only) before anybody records it.
pub enum RepositoryRun {
    /// Somebody holds its marker (or the marker or the run's row cannot be read): it
    /// may be running.
    Alive,
    /// The catalog has its end now (recorded meanwhile).
    Recorded(Box<RunReport>),
    /// It ended and the catalog does not say so: the report to record. `marker`: its
    /// marker, if there is one, with the lock taken on it (held until this is dropped:
    /// the caller records the run and removes the marker under it).
    Ended {
        report: Box<RunReport>,
        marker: Option<std::fs::File>,
    },
}

/// [`RepositoryRun`] of run `id` into `store`. `settle`: the marker's `flock` is taken
/// exclusively (a second settler skips the run); else a shared probe, which writes
/// nothing. A marker nobody holds that
/// holds the run's report (`RunningMarker::note`: the outcome was known; its final
/// catalog write failed, or it was killed while it notified) gives that report; one
/// without a report, a run that died before its outcome was known: `incomplete`, as a
/// killed store run is. No marker at all: its end was not recorded (an older version).
pub fn repository_run(c: &Catalog, id: &str, store: &str, settle: bool) -> RepositoryRun {
    let marker = running_marker_path(&c.path, id);
    let file = match std::fs::File::open(&marker) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(_) => return RepositoryRun::Alive,
    };
    let lock = match settle {
        true => rustix::fs::FlockOperation::NonBlockingLockExclusive,
        false => rustix::fs::FlockOperation::NonBlockingLockShared,
    };
    if let Some(f) = &file
        && rustix::fs::flock(f, lock).is_err()
    {
        return RepositoryRun::Alive;
    }
    // Re-read once the marker is free: a run that just ended recorded its final row
    // before it let go of its marker.
    let Ok(Some(Shown {
        report: Record::Backup(mut r),
        ..
    })) = c.show_exact(id)
    else {
        return RepositoryRun::Alive;
    };
    if r.status != Status::Running {
        return RepositoryRun::Recorded(r);
    }
    match file.as_ref().map(|f| report_left_in_marker(f, id)) {
        Some(Some(left)) => *r = left,
        Some(None) => {
            r.status = Status::Incomplete;
            r.exit_code = Status::Incomplete.exit_code();
            r.message = format!(
                "interrupted: the process ended before finishing; no snapshot written into {store} \
                 (packs it uploaded without an index are left for `snapring prune`)"
            );
        }
        None => {
            r.status = Status::Incomplete;
            r.exit_code = Status::Incomplete.exit_code();
            r.message = unrecorded_end_message(store);
        }
    }
    RepositoryRun::Ended {
        report: r,
        marker: file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_slopes() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 10.0);
        assert_eq!(percentile(&v, 95.0), 19.0);
        assert_eq!(percentile(&[3.0], 95.0), 3.0);
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), 2.0);
        assert_eq!(slope(&[(1.0, 1.0)]), 0.0);
        assert_eq!(half_over_half(&[1.0, 1.0, 2.0, 2.0]), Some(100.0));
        assert_eq!(half_over_half(&[1.0, 2.0, 3.0]), None);
        // An older half that copied nothing: no percentage of it, unless both are 0.
        assert_eq!(half_over_half(&[0.0, 0.0, 5.0, 5.0]), None);
        assert_eq!(half_over_half(&[0.0, 0.0, 0.0, 0.0]), Some(0.0));
    }

    /// `recent` reads a job's runs from `runs_job_kind_started` in order: no scan of
    /// every backup, no sort.
    #[test]
    fn recent_runs_are_read_from_the_jobs_index_in_order() {
        let t = tempfile::tempdir().unwrap();
        let c = Catalog::open(&t.path().join("catalog.db"), false).unwrap();
        for cond in ["started_at <= ?3", "started_at > ?3"] {
            let sql = format!(
                "EXPLAIN QUERY PLAN SELECT id FROM runs WHERE job = ?1 AND kind = 'backup' \
                 AND {cond} ORDER BY started_at DESC, id DESC LIMIT ?2"
            );
            let mut st = c.conn.prepare(&sql).unwrap();
            let plan: Vec<String> = st
                .query_map(params!["home", 30, "2026-01-01T00:00:00Z"], |r| {
                    r.get::<_, String>(3)
                })
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            assert!(
                plan.iter()
                    .any(|p| p.contains("INDEX runs_job_kind_started"))
                    && !plan.iter().any(|p| p.contains("TEMP B-TREE")),
                "{plan:?}"
            );
        }
    }

    /// A run dated hours ahead (made while the clock was wrong) is not the job's
    /// newest run nor its last start while an earlier one exists (as in `recent`): it
    /// hid an interrupted run from the daemon's resume at start, and a missed run from
    /// `missed = "run-once"`. Alone, it still counts.
    #[test]
    fn a_run_dated_ahead_is_not_the_newest_or_the_last_start() {
        let t = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&t.path().join("catalog.db"), false).unwrap();
        let opts = crate::engine::options::BackupOptions {
            job: Some("home".into()),
            ..crate::engine::options::BackupOptions::new("/src", "/store")
        };
        let at = |h: i64| {
            (chrono::Utc::now() + chrono::Duration::hours(h))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let mut ahead = crate::engine::backup::new_report(&opts, "ahead", Path::new("/store"));
        ahead.started_at = at(3);
        ahead.status = Status::Complete;
        ahead.message = "complete".into();
        c.record(&ahead).unwrap();
        assert_eq!(
            c.newest_backup("home").unwrap().map(|r| r.0).as_deref(),
            Some("ahead"),
            "alone, it counts"
        );
        let mut cut = crate::engine::backup::new_report(&opts, "cut", Path::new("/store"));
        cut.started_at = at(-1);
        cut.status = Status::Incomplete;
        cut.message = "interrupted; nothing was published or rotated".into();
        c.record(&cut).unwrap();
        let newest = c.newest_backup("home").unwrap().unwrap();
        assert_eq!(
            (newest.0.as_str(), newest.1.as_str()),
            ("cut", "incomplete")
        );
        assert_eq!(c.last_start("home").unwrap(), Some(cut.started_at.clone()));
        assert_eq!(c.last_start("other").unwrap(), None);
    }

    /// `status_counts` reads the covering index, not the job's rows.
    #[test]
    fn status_counts_use_the_covering_index() {
        let t = tempfile::tempdir().unwrap();
        let c = Catalog::open(&t.path().join("catalog.db"), false).unwrap();
        let sql = "EXPLAIN QUERY PLAN SELECT status, count(*), sum(failed_once) FROM runs \
                   WHERE job = ?1 AND kind = 'backup' GROUP BY status";
        let mut st = c.conn.prepare(sql).unwrap();
        let plan: Vec<String> = st
            .query_map(["home"], |r| r.get::<_, String>(3))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert!(
            plan.iter()
                .any(|p| p.contains("USING COVERING INDEX runs_job_kind_status")),
            "{plan:?}"
        );
    }
}
