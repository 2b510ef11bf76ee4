//! What the dashboard, `/api/…` and `/metrics` show, gathered for each request from the
//! config's jobs, the run catalog (opened read-only; the copies of `snapring copy` per
//! store and repository too) and each job's store (`Store::open_read`, `statvfs`); the
//! overview and `/metrics` keep what they read of the catalog while it is unchanged and
//! of each store while its stamp is (`Summaries`, `Kept`). Reads only; never a
//! notifier's settings, so no secret (webhook URL, SMTP password) can reach a page.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{Catalog, RunRow};
use crate::config::Config;
use crate::repo::RunProgress;
use crate::report::{RunReport, Status};
use crate::store::Store;

/// How many of a job's newest runs the overview reads (its sparkline and success rate
/// over the recent past).
pub const OVERVIEW_RUNS: usize = 30;
/// How many of a job's newest runs its page and `/api/jobs/NAME` read.
pub const JOB_RUNS: usize = 500;

/// How much of a job to gather.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// The overview and `/metrics`: newest runs for a sparkline, counts, last run.
    Summary,
    /// A job's page: more runs, and each snapshot's size from its run.
    Detail,
}

/// Runs of one job by status, over the whole catalog.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub runs: u64,
    pub complete: u64,
    pub partial: u64,
    pub incomplete: u64,
    pub failed: u64,
    /// Runs ever recorded `failed`: those `failed` now, and failed rotations a later
    /// repair published (now `complete` or `partial`). `snapring_runs_failed_total`: it
    /// never goes down when such a run is published.
    pub failed_once: u64,
    pub running: u64,
    /// Daemon triggers skipped because the job was still running.
    pub skipped: u64,
}

impl Counts {
    /// complete / finished runs, or `None` before the first finished run.
    pub fn success_rate(&self) -> Option<f64> {
        let finished = self.runs - self.running;
        (finished > 0).then(|| self.complete as f64 / finished as f64)
    }
}

/// The store's file system: free and total bytes and inodes.
#[derive(Clone, Debug, Serialize)]
pub struct Space {
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub free_inodes: u64,
    pub total_inodes: u64,
}

/// One snapshot of a job's store.
#[derive(Clone, Debug, Serialize)]
pub struct SnapView {
    pub name: String,
    /// The run that made it (none for a tree taken over from rsnapshot or by hand).
    pub run_id: Option<String>,
    pub finished_at: Option<String>,
    /// Its logical size (the source's bytes) and what its run added, from the run.
    pub bytes_total: Option<u64>,
    pub bytes_added: Option<u64>,
}

/// Everything shown about one job.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    pub name: String,
    /// Not UTF-8: `store_raw` beside it holds the bytes (`crate::localpath`).
    #[serde(flatten, serialize_with = "crate::localpath::store::serialize")]
    pub store: PathBuf,
    pub schedule: Option<String>,
    pub next_run: Option<String>,
    /// The newest run's record without its list of problems (`problems` empty,
    /// `problems_not_listed` all of them, `errors` their count): the run's page lists
    /// them.
    pub last: Option<RunReport>,
    /// Newest runs, newest first.
    pub recent: Vec<RunRow>,
    /// `None` (`null` in `/api/jobs`) when the catalog could not be read (locked by a
    /// writer for longer than serve waits, damaged, a writer's unfinished transaction):
    /// the job's runs are then unknown, not none, and `/metrics` leaves its counters out
    /// rather than show 0, which Prometheus takes for a reset of each counter.
    pub counts: Option<Counts>,
    pub success_rate: Option<f64>,
    pub snapshots: Vec<SnapView>,
    pub newest_snapshot_at: Option<String>,
    pub newest_snapshot_age_seconds: Option<f64>,
    pub space: Option<Space>,
    /// How far the newest run's walk is, while that run is running and writing it.
    pub progress: Option<RunProgress>,
    /// Why the store or the catalog could not be read, if so.
    pub errors: Vec<String>,
    /// Set when the job's store has a finished run the catalog has no row for (or
    /// still has as `running`): the catalog is behind the store, damaged or recreated
    /// without the job's runs (`catalog_behind`). `last` is then that run, from its
    /// record, the counts unknown (`None`), and `errors` says it too.
    pub catalog_behind: Option<String>,
}

/// The store of a job: `dest`, or `dest/folder`; `None` without a `dest`.
pub fn store_of(job: &crate::config::JobConfig) -> Option<PathBuf> {
    let dest = job.dest.as_ref()?;
    Some(match &job.folder {
        Some(f) => dest.join(f),
        None => dest.clone(),
    })
}

/// Is `store` a restic repository's URL (`file://…`, `s3://…`)? Such a job has no
/// store to read: its snapshots are those the catalog's runs wrote, and no check of a
/// store's `.snapring` applies.
pub fn is_repository(store: &Path) -> bool {
    store.to_str().is_some_and(crate::catalog::is_repository)
}

/// The jobs of the overview and `/metrics`, with each job's part from the catalog
/// (newest runs, counts, last run) kept while the catalog is unchanged, which `PRAGMA
/// data_version` of the server's one connection tells: counting a job's runs reads each
/// of its rows, which is most of a scrape's cost with thousands of runs. Each store's
/// snapshots and each job's newest run record there are kept while the store is
/// unchanged ([`Kept`]); its free space is read afresh every time.
#[derive(Default)]
pub struct Summaries {
    version: Option<i64>,
    parts: HashMap<String, Part>,
    kept: Kept,
}

impl Summaries {
    /// Every job of `cfg`, in name order, at `Depth::Summary`.
    pub fn jobs(
        &mut self,
        cfg: &Config,
        cat: Option<&Catalog>,
        now: DateTime<Utc>,
    ) -> Vec<JobView> {
        let version = cat.map(|c| c.data_version().unwrap_or(-1));
        if version != self.version || version == Some(-1) {
            self.parts.clear();
            self.version = version;
        }
        cfg.job
            .iter()
            .map(|(name, jc)| {
                let store = store_of(jc).unwrap_or_default();
                // Taken once for this request, for both reads of the store it keeps.
                let look = (!store.as_os_str().is_empty() && !is_repository(&store)).then(|| {
                    let mut l = Look::at(&store, std::time::SystemTime::now());
                    l.stamp = self.kept.trust(&store, l.stamp, std::time::Instant::now());
                    l
                });
                let stamp = look.as_ref().and_then(|l| l.stamp);
                let kept = look.as_ref().map(|l| (&mut self.kept, l));
                let mut v = view(name, store, jc, None, now, Depth::Summary, kept);
                if let Some(c) = cat {
                    let limit = OVERVIEW_RUNS;
                    let repo = is_repository(&v.store);
                    let p = self
                        .parts
                        .entry(name.clone())
                        .or_insert_with(|| part(c, name, limit, repo));
                    p.apply(&mut v, now);
                    live_progress(&mut v, Some(c));
                    catalog_behind(&mut v, c, Some((&mut self.kept, stamp)));
                }
                store_missing(&mut v);
                v
            })
            .collect()
    }
}

/// What the catalog says about a job.
#[derive(Clone, Default)]
struct Part {
    recent: Vec<RunRow>,
    counts: Counts,
    last: Option<RunReport>,
    /// A repository job's snapshots, from its runs.
    snapshots: Option<Vec<SnapView>>,
    error: Option<String>,
}

impl Part {
    fn apply(&self, v: &mut JobView, now: DateTime<Utc>) {
        v.recent = self.recent.clone();
        v.counts = self.error.is_none().then(|| self.counts.clone());
        v.success_rate = v.counts.as_ref().and_then(Counts::success_rate);
        v.last = self.last.clone();
        v.errors.extend(self.error.clone());
        if let Some(snaps) = &self.snapshots {
            v.snapshots = snaps.clone();
            let at = snaps
                .first()
                .and_then(|s| s.finished_at.as_deref())
                .and_then(crate::store::select::parse_time);
            newest_snapshot(v, at, now);
        }
    }
}

fn newest_snapshot(v: &mut JobView, at: Option<DateTime<Utc>>, now: DateTime<Utc>) {
    v.newest_snapshot_at = at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    v.newest_snapshot_age_seconds = at.map(|t| (now - t).num_milliseconds() as f64 / 1e3);
}

/// The job `name` of `cfg`, or `None` when the config has no such job.
pub fn job(
    cfg: &Config,
    cat: Option<&Catalog>,
    name: &str,
    now: DateTime<Utc>,
    d: Depth,
) -> Option<JobView> {
    let jc = cfg.job.get(name)?;
    Some(view(
        name,
        store_of(jc).unwrap_or_default(),
        jc,
        cat,
        now,
        d,
        None,
    ))
}

/// The job of a run that just ended (`--textfile`): its config (if it has one), the
/// catalog's counts, the store, and `r` as the newest run. A run without a job has the
/// name `""` and no counts (the catalog counts runs by job).
pub fn of_run(
    r: &RunReport,
    jc: Option<&crate::config::JobConfig>,
    cat: Option<&Catalog>,
    now: DateTime<Utc>,
) -> JobView {
    let none = crate::config::JobConfig::default();
    let name = r.job.as_deref().unwrap_or("");
    let mut v = view(
        name,
        r.store.clone(),
        jc.unwrap_or(&none),
        cat,
        now,
        Depth::Summary,
        None,
    );
    v.last = Some(r.clone());
    v
}

fn view(
    name: &str,
    store: PathBuf,
    jc: &crate::config::JobConfig,
    cat: Option<&Catalog>,
    now: DateTime<Utc>,
    d: Depth,
    kept: Option<(&mut Kept, &Look)>,
) -> JobView {
    let mut errors = Vec::new();
    let schedule = jc.schedule().unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let mut v = JobView {
        name: name.to_string(),
        store,
        schedule: jc.schedule.clone(),
        next_run: schedule
            .and_then(|s| s.next_after(now))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        last: None,
        recent: vec![],
        counts: None,
        success_rate: None,
        snapshots: vec![],
        newest_snapshot_at: None,
        newest_snapshot_age_seconds: None,
        space: None,
        progress: None,
        errors,
        catalog_behind: None,
    };
    if let Some(c) = cat
        && !name.is_empty()
    {
        let limit = match d {
            Depth::Summary => OVERVIEW_RUNS,
            Depth::Detail => JOB_RUNS,
        };
        part(c, name, limit, is_repository(&v.store)).apply(&mut v, now);
    }
    if is_repository(&v.store) {
        // A local repository's file system; an S3 bucket has no free space to tell.
        v.space = v
            .store
            .to_str()
            .and_then(|s| s.strip_prefix("file://"))
            .and_then(|p| space(Path::new(p)));
    } else if !v.store.as_os_str().is_empty() {
        from_store(&mut v, cat, now, d, kept);
    }
    live_progress(&mut v, cat);
    if let Some(c) = cat
        && !name.is_empty()
    {
        catalog_behind(&mut v, c, None);
    }
    store_missing(&mut v);
    v
}

/// How many of a store's newest run records [`newest_store_run`] reads, looking for
/// one of the job (a store several jobs write holds the others' too).
const STORE_RECORDS_READ: usize = 16;

/// The newest finished run record of job `name` in `store` (`.snapring/runs/`): one
/// listing and, usually, one read. Newest by the second its id names, then (runs
/// started within one second, whose ids differ by a random suffix) by its start; a
/// `running` record is passed over (the run's `running` row follows its record at
/// once, its last catalog write comes before its final record).
fn newest_store_run(store: &Path, name: &str) -> Option<RunReport> {
    use crate::store::select::{parse_time, run_id_time};
    let s = Store::open_read(store).ok()?;
    let mut ids: Vec<(Option<DateTime<Utc>>, String)> = s
        .run_ids()
        .into_iter()
        .map(|id| (run_id_time(&id), id))
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let mut best: Option<(Option<DateTime<Utc>>, RunReport)> = None;
    for (t, id) in ids.into_iter().take(STORE_RECORDS_READ) {
        if best.as_ref().is_some_and(|b| b.0 != t) {
            break;
        }
        let Some(r) = s.read_run(&id).ok().flatten() else {
            continue;
        };
        if r.job.as_deref() != Some(name) || r.status == Status::Running {
            continue;
        }
        let later = |b: &RunReport| parse_time(&r.started_at) > parse_time(&b.started_at);
        if best.as_ref().is_none_or(|b| later(&b.1)) {
            best = Some((t, r));
        }
    }
    best.map(|b| b.1)
}

/// What the server keeps of each store between requests of the overview and
/// `/metrics`: its snapshots as [`read_snapshots`] read them (the store opened, its root
/// listed, `snapshots.json` and a pending journal read, each snapshot directory
/// `lstat`ed: tens of calls a job, each a round trip on an NFS store) and each job's
/// newest finished run record there ([`newest_store_run`]: a listing of
/// `.snapring/runs/` and a read or more), both kept while the store's [`StoreStamp`]
/// is as it was when they were read. A request then costs a few `stat`s a store (and
/// its `statvfs`, read afresh: free space changes with no directory changing).
///
/// The changes those reads are meant to follow change a stamped directory or file: a snapshot
/// published, rotated, expired or removed by hand renames or removes an entry of the
/// root; a run record created or rewritten is renamed into `runs/`; `snapshots.json`,
/// `store.json` and the rotation journal are written by a rename into `.snapring/`
/// (and the journal removed from it), and `snapshots.json` and the journal are stamped
/// themselves too, for an edit in place; a copied store's manifests (which give its
/// snapshots their records) arrive in `manifests/`. The change time is in each stamp:
/// a tool that sets a directory's modification time back (`rsync -a`, `touch -d`)
/// moves its change time on. A stamp is not trusted (a second change within the file
/// system's tick of time would leave it as it was) while any of its times is less than
/// [`SETTLED`] before the request by the local clock, nor until the same stamp was
/// already taken at a request [`SETTLED`] or more before by the monotonic clock (the
/// first rule alone protects nothing when the file server's clock is behind ours):
/// what is read then is not kept, and the next request reads again (so a store a run
/// is writing is read afresh until it has been quiet for [`SETTLED`]). What a read
/// passed over or could not read is not in any stamp: hence [`MAX_KEEP`].
///
/// Not stamped: a snapshot directory's own modification time, shown (as its time) only
/// for a tree without a record (taken over from another tool) and read again when the
/// root changes; the trees' contents, which serve never reads but for a copied tree's
/// check against its manifest, made once per process anyway.
///
/// Trusted only once seen: a stamp is kept under only when the same stamp was taken at
/// an earlier request at least [`SETTLED`] before, by this process's monotonic clock
/// ([`Kept::trust`]), whatever the file times say (an NFS server's clock behind ours
/// would make them look old at once). And nothing is kept longer than [`max_keep`]
/// (60 s): what was read is read afresh then, whatever the stamp, so that a change no
/// stamp tells (a snapshot directory that could not be `lstat`ed and was passed over,
/// a journal or run record that could not be read, read as none) is seen within it.
#[derive(Default)]
struct Kept {
    snapshots: HashMap<PathBuf, (StoreStamp, Instant, Listed)>,
    runs: HashMap<(PathBuf, String), (StoreStamp, Instant, Option<RunReport>)>,
    /// Each store's stamp as first taken, and when (monotonic).
    seen: HashMap<PathBuf, (StoreStamp, Instant)>,
}

use std::time::Instant;

/// How long what is read of a store is kept at most ([`Kept`]), whatever its stamp.
const MAX_KEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// [`MAX_KEEP`], or `SNAPRING_SERVE_MAX_KEEP_MS` (for the tests only: a short one
/// shows what is kept, and that it goes).
fn max_keep() -> std::time::Duration {
    std::env::var("SNAPRING_SERVE_MAX_KEEP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(MAX_KEEP, std::time::Duration::from_millis)
}

/// How long before a request the times of a store's stamp must be for what is read
/// under it to be kept ([`Kept`]): well above any file system's tick, and some clock
/// skew with an NFS server.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

/// What tells a directory or file changed: its identity, size and its modification
/// and change times.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// The stamp of what `st` (a `stat` of it) says, when it can be trusted at `now`:
    /// its times at least [`SETTLED`] before `now`.
    fn settled(st: &rustix::fs::Stat, now: std::time::SystemTime) -> Result<Stamp, ()> {
        let before = now.checked_sub(SETTLED).ok_or(())?;
        let at = |s: i64, ns: i64| {
            let d = std::time::Duration::new(u64::try_from(s).ok()?, u32::try_from(ns).ok()?);
            std::time::UNIX_EPOCH.checked_add(d)
        };
        let mtime = (st.st_mtime, st.st_mtime_nsec as i64);
        let ctime = (st.st_ctime, st.st_ctime_nsec as i64);
        let settled = |t: (i64, i64)| at(t.0, t.1).is_some_and(|t| t <= before);
        if !settled(mtime) || !settled(ctime) {
            return Err(());
        }
        Ok(Stamp {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime,
            ctime,
        })
    }
}

/// The stamps a store's reading is kept under ([`Kept`]): its root, `.snapring/`, the
/// snapshot state, the rotation journal, `runs/` and `manifests/` (each `None` when
/// absent).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct StoreStamp {
    root: Stamp,
    meta: Option<Stamp>,
    state: Option<Stamp>,
    journal: Option<Stamp>,
    runs: Option<Stamp>,
    manifests: Option<Stamp>,
}

/// What serve looks at of a store for each request of the overview and `/metrics`: its
/// stamp, and its free space (read on the directory the stamp was taken of).
struct Look {
    /// `None` when it cannot be trusted (a part changed less than [`SETTLED`] before,
    /// or cannot be read) or there is no store directory: then nothing is kept, and the
    /// store is read afresh.
    stamp: Option<StoreStamp>,
    /// `None` when the store's root could not be opened (not made yet: the free space
    /// is then that of its nearest existing parent, [`space`]).
    space: Option<Option<Space>>,
}

impl Look {
    /// Looks at `store` at `now`. The root is opened once (`O_PATH`, followed, as
    /// `Store::open_read` follows it) and `.snapring/` beside it, and what is stamped
    /// is `stat`ed from those: on an NFS store without attribute caching, each
    /// component of a path costs a round trip or two every time it is walked.
    fn at(store: &Path, now: std::time::SystemTime) -> Look {
        use rustix::fs::{AtFlags, CWD, Mode, OFlags};
        let dir = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let Ok(root) = rustix::fs::openat(CWD, store, dir, Mode::empty()) else {
            return Look {
                stamp: None,
                space: None,
            };
        };
        let space = Some(rustix::fs::fstatvfs(&root).ok().map(|s| Space {
            free_bytes: s.f_bavail.saturating_mul(s.f_frsize),
            total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
            free_inodes: s.f_favail,
            total_inodes: s.f_files,
        }));
        let stamp = (|| {
            let root_stamp = Stamp::settled(&rustix::fs::fstat(&root).ok()?, now).ok()?;
            let meta = match rustix::fs::openat(&root, crate::store::META_DIR, dir, Mode::empty()) {
                Ok(m) => m,
                Err(rustix::io::Errno::NOENT) => {
                    return Some(StoreStamp {
                        root: root_stamp,
                        meta: None,
                        state: None,
                        journal: None,
                        runs: None,
                        manifests: None,
                    });
                }
                Err(_) => return None,
            };
            // A file is read without following a symbolic link; a directory is
            // followed, as `read_dir` follows it.
            let of = |name: &str, flags: AtFlags| -> Result<Option<Stamp>, ()> {
                match rustix::fs::statat(&meta, name, flags) {
                    Ok(st) => Stamp::settled(&st, now).map(Some),
                    Err(rustix::io::Errno::NOENT) => Ok(None),
                    Err(_) => Err(()),
                }
            };
            let file = AtFlags::SYMLINK_NOFOLLOW;
            Some(StoreStamp {
                root: root_stamp,
                meta: Some(Stamp::settled(&rustix::fs::fstat(&meta).ok()?, now).ok()?),
                state: of("snapshots.json", file).ok()?,
                journal: of("journal", file).ok()?,
                runs: of("runs", AtFlags::empty()).ok()?,
                manifests: of("manifests", AtFlags::empty()).ok()?,
            })
        })();
        Look { stamp, space }
    }
}

/// A store's snapshots as shown: each one, and when the newest was taken.
#[derive(Clone)]
struct Listed {
    snaps: Vec<SnapView>,
    newest_at: Option<DateTime<Utc>>,
}

impl Kept {
    /// `stamp` (of `store`, taken for the request at `now`), when it can be trusted:
    /// the same stamp was taken at least [`SETTLED`] before `now`, by the monotonic
    /// clock. A stamp new or changed is noted, and `None` (read afresh, nothing kept).
    fn trust(
        &mut self,
        store: &Path,
        stamp: Option<StoreStamp>,
        now: Instant,
    ) -> Option<StoreStamp> {
        let Some(stamp) = stamp else {
            self.seen.remove(store);
            return None;
        };
        match self.seen.get(store) {
            Some((s, at)) if *s == stamp => {
                (now.saturating_duration_since(*at) >= SETTLED).then_some(stamp)
            }
            _ => {
                self.seen.insert(store.to_path_buf(), (stamp, now));
                None
            }
        }
    }

    /// [`newest_store_run`] of job `name` in `store`, kept while the store's stamp
    /// (`stamp`, taken for this request; `None`: not to be trusted) is unchanged.
    fn newest(&mut self, store: &Path, name: &str, stamp: Option<StoreStamp>) -> Option<RunReport> {
        let key = (store.to_path_buf(), name.to_string());
        let Some(stamp) = stamp else {
            self.runs.remove(&key);
            return newest_store_run(store, name);
        };
        if let Some((s, at, r)) = self.runs.get(&key)
            && *s == stamp
            && at.elapsed() < max_keep()
        {
            return r.clone();
        }
        let r = newest_store_run(store, name);
        self.runs.insert(key, (stamp, Instant::now(), r.clone()));
        r
    }

    /// [`read_snapshots`] of `store`, kept while its stamp is unchanged, for
    /// [`max_keep`] at most (an error it returns is never kept: it may pass; one it
    /// passed over, such as a snapshot that could not be `lstat`ed, is, up to then).
    fn snapshots(
        &mut self,
        store: &Path,
        stamp: Option<StoreStamp>,
    ) -> Result<Listed, crate::error::Error> {
        let Some(stamp) = stamp else {
            self.snapshots.remove(store);
            return read_snapshots(store);
        };
        if let Some((s, at, l)) = self.snapshots.get(store)
            && *s == stamp
            && at.elapsed() < max_keep()
        {
            return Ok(l.clone());
        }
        let l = read_snapshots(store);
        match &l {
            Ok(l) => {
                self.snapshots
                    .insert(store.to_path_buf(), (stamp, Instant::now(), l.clone()));
            }
            Err(_) => {
                self.snapshots.remove(store);
            }
        }
        l
    }
}

/// Compares the job's newest finished run in its store (the truth: a run writes its
/// record there before the catalog, and its final record after its catalog row) with
/// the catalog: when the catalog has no row for it, or still has it `running`, the
/// catalog is behind — damaged where serve's queries do not reach (a run's `record
/// run` failed with "database disk image is malformed" while serve read older pages
/// well), locked past a run's wait, or deleted and recreated by another job's run
/// (which imports its own store's records only). The job then shows that run, as its
/// record says (a `failed` one raises the alerts on failed runs), with its counts
/// unknown (`null`, no counter series) rather than the catalog's stale or zero ones,
/// an error, and `snapring_catalog_behind` 1. The run's own warning about the catalog
/// (a run that could not record itself says so in its record) is quoted.
/// `kept`: the server's records read before ([`Kept`]) and the store's stamp for this
/// request; `None` reads afresh.
fn catalog_behind(v: &mut JobView, c: &Catalog, kept: Option<(&mut Kept, Option<StoreStamp>)>) {
    if is_repository(&v.store) || v.store.as_os_str().is_empty() {
        return;
    }
    let newest = match kept {
        Some((k, stamp)) => k.newest(&v.store, &v.name, stamp),
        None => newest_store_run(&v.store, &v.name),
    };
    let Some(r) = newest else {
        return;
    };
    // The catalog's newest run, shown (a `running` row whose record is final already
    // shows as its record says: `live_progress`).
    if v.last.as_ref().is_some_and(|l| l.id == r.id) {
        return;
    }
    let how = match c.run_summary(&r.id) {
        Ok(Some(row)) if row.status != Status::Running => return,
        Ok(Some(_)) => "still has it as running",
        Ok(None) => "has no row for it",
        // Unreadable (locked, damaged where this read goes): the job has that error
        // already, and its counts are unknown.
        Err(_) => return,
    };
    let mut note = format!(
        "the catalog is behind the store (damaged, recreated, or not writable when the run \
         ended): the store's newest run of this job, {} ({}, started {}), is shown from its \
         run record in {}, and the catalog {how}; the job's run counts are unknown until \
         `snapring catalog rebuild --dest {}` (or the job's next run that can write the \
         catalog) brings its runs back",
        r.id,
        r.status.as_str(),
        r.started_at,
        v.store.join(crate::store::META_DIR).join("runs").display(),
        v.store.display()
    );
    if let Some(w) = r.warnings.iter().find(|w| w.contains("catalog")) {
        note.push_str(&format!("; the run said: {w}"));
    }
    v.catalog_behind = Some(note.clone());
    v.errors.push(note);
    v.counts = None;
    v.success_rate = None;
    v.progress = None;
    v.last = Some(without_problems(r));
}

/// An error when the catalog says runs of the job made snapshots but its store has no
/// `.snapring`: an unmounted file system (an empty mount point) or a removed store,
/// which would otherwise show as a job with no snapshots and no error.
fn store_missing(v: &mut JobView) {
    if is_repository(&v.store) {
        return;
    }
    let made_snapshots = v.recent.iter().any(|r| r.snapshot.is_some());
    if made_snapshots
        && v.snapshots.is_empty()
        && !v.store.as_os_str().is_empty()
        && !v.store.join(".snapring").exists()
    {
        v.errors.push(format!(
            "the store {} has no .snapring, though runs of this job made snapshots there: \
             is its file system mounted? (its free space is then that of another one)",
            v.store.display()
        ));
    }
}

/// The progress file of the job's store, when the newest run is running and the file
/// is that run's; a missing or unreadable one is no progress.
///
/// A newest run that the catalog says is `running` but that is not shows as it ended,
/// as the next command that writes the catalog settles it (`catalog::settle_running`,
/// here read-only): when its store's run record is final (the run ended, but its last
/// write into the catalog failed: the catalog locked past the busy wait), as that
/// record says; else, when its process is gone (killed, the machine lost: nobody holds
/// the store's lock, which a run holds from before its `running` row to after its final
/// record), as `incomplete`. For a run into a repository, nobody holding its marker
/// beside the catalog says so (as `catalog::settle_repository_runs` decides). Else such
/// a run stayed `running`, with a frozen progress and ETA, and no alert on failed or
/// incomplete runs fired, until another command settled it. The catalog is not
/// written; the run's row in `recent` and the counts show it as settled too.
fn live_progress(v: &mut JobView, cat: Option<&Catalog>) {
    v.progress = None;
    let Some(last) = v.last.as_ref().filter(|l| l.status == Status::Running) else {
        return;
    };
    match settled(last, &v.store, cat) {
        Settled::Ended(r) => settle_shown(v, *r),
        Settled::Running(p) => v.progress = p,
    }
}

/// What a run the catalog has as `running` is (`live_progress` says how it is told).
pub enum Settled {
    /// It ended: as this record says.
    Ended(Box<RunReport>),
    /// It is running (or its store cannot tell), with its progress if any.
    Running(Option<RunProgress>),
}

/// Whether `last`, a run the catalog has as `running`, still runs or ended, as
/// `live_progress` shows it: the overview, a job's page, `/metrics` and the run's own
/// page (`/run/ID`, `/api/runs/ID`) all say the same of it. `store`: its job's store
/// (the run's own, for a run page).
pub fn settled(last: &RunReport, store: &Path, cat: Option<&Catalog>) -> Settled {
    let id = last.id.clone();
    if last.status != Status::Running {
        return Settled::Ended(Box::new(last.clone()));
    }
    if is_repository(store) {
        let Some(c) = cat else {
            return Settled::Running(None);
        };
        return match crate::catalog::repository_run(c, &id, &store.to_string_lossy(), false) {
            crate::catalog::RepositoryRun::Alive => Settled::Running(None),
            crate::catalog::RepositoryRun::Recorded(r)
            | crate::catalog::RepositoryRun::Ended { report: r, .. } => Settled::Ended(r),
        };
    }
    let Ok(s) = Store::open_read(store) else {
        return Settled::Running(None);
    };
    match s.read_run(&id) {
        Ok(Some(r)) if r.status != Status::Running => Settled::Ended(Box::new(r)),
        Ok(_) if s.lock_free() => {
            let mut r = last.clone();
            show_dead(&mut r, "nobody holds the store's lock");
            Settled::Ended(Box::new(r))
        }
        _ => Settled::Running(s.read_progress().filter(|p| p.run == id)),
    }
}

/// Shows `r`, a run the catalog still has as `running`, as it ended: the last run, its
/// row in `recent`, and the counts (one run less `running`, one more of its status).
fn settle_shown(v: &mut JobView, r: RunReport) {
    if let Some(row) = v.recent.iter_mut().find(|row| row.id == r.id) {
        row.status = r.status.as_str().to_string();
        row.snapshot = r.snapshot.clone();
        row.finished_at = r.finished_at.clone();
        row.duration_seconds = r.duration_seconds;
        row.files_total = r.files_total;
        row.files_transferred = r.files_transferred;
        row.bytes_transferred = r.bytes_transferred;
        row.errors = r.errors;
    }
    if let Some(c) = v.counts.as_mut()
        && c.running > 0
    {
        c.running -= 1;
        match r.status {
            Status::Complete => c.complete += 1,
            Status::Partial => c.partial += 1,
            Status::Incomplete => c.incomplete += 1,
            Status::Failed => c.failed += 1,
            Status::Running => c.running += 1,
        }
        if r.status == Status::Failed {
            c.failed_once += 1;
        }
        v.success_rate = c.success_rate();
    }
    v.last = Some(without_problems(r));
}

/// `r` without its list of problems, as `Catalog::run_summary` reads a record.
fn without_problems(mut r: RunReport) -> RunReport {
    r.problems = Vec::new();
    r.problems_not_listed = r.errors;
    r
}

fn show_dead(r: &mut RunReport, why: &str) {
    r.status = Status::Incomplete;
    r.exit_code = Status::Incomplete.exit_code();
    r.message = format!(
        "interrupted: the process ended before finishing ({why}); the next command on the store records it so"
    );
}

/// The newest `limit` runs, the counts and the last run of job `name`.
fn part(c: &Catalog, name: &str, limit: usize, repo: bool) -> Part {
    let mut p = Part::default();
    if let Err(e) = fill(&mut p, c, name, limit, repo) {
        p.error = Some(e.to_string());
    }
    p
}

fn fill(
    p: &mut Part,
    c: &Catalog,
    name: &str,
    limit: usize,
    repo: bool,
) -> crate::catalog::Result<()> {
    p.recent = c.recent(name, limit)?;
    if repo {
        let snaps = c.repository_snapshots(name)?;
        p.snapshots = Some(
            snaps
                .into_iter()
                .map(|s| SnapView {
                    name: s.snapshot,
                    run_id: Some(s.run_id),
                    finished_at: s.finished_at,
                    bytes_total: s.bytes_total,
                    bytes_added: s.bytes_added,
                })
                .collect(),
        );
    }
    for (status, n, failed_once) in c.status_counts(name)? {
        p.counts.runs += n;
        p.counts.failed_once += failed_once;
        match status.as_str() {
            "complete" => p.counts.complete += n,
            "partial" => p.counts.partial += n,
            "incomplete" => p.counts.incomplete += n,
            "failed" => p.counts.failed += n,
            _ => p.counts.running += n,
        }
    }
    p.counts.skipped = c.event_count(name, "skipped")?;
    if let Some(newest) = p.recent.first() {
        p.last = c.run_summary(&newest.id)?;
        // A run refused because the store was in use (exit 75: a scheduled run while
        // the job's run started by hand still runs) does not hide the run that was
        // running then: its progress and `running` while it runs, its outcome once it
        // ended (after the refused run), not `failed`, on the dashboard and /metrics.
        // The refused one stays in `recent` (and was notified).
        if let Some(refused) = p
            .last
            .as_ref()
            .filter(|l| l.exit_code == crate::report::EXIT_IN_USE)
            && let Some(held) = p.recent.iter().skip(1).find(|r| {
                r.status == "running"
                    || r.finished_at.as_deref() > Some(refused.started_at.as_str())
            })
            && let Some(r) = c.run_summary(&held.id)?
        {
            p.last = Some(r);
        }
    }
    Ok(())
}

/// The copies (`snapring copy`) from one store into one repository, as the overview,
/// `/api/copies` and `/metrics` show them. A copy runs from cron or a timer, outside
/// the config's jobs; `job` names the job whose store it copies, if the config has one.
#[derive(Clone, Debug, Serialize)]
pub struct CopyView {
    /// The store copied from. Not UTF-8: `store_raw` beside it holds the bytes.
    #[serde(flatten, serialize_with = "crate::localpath::store::serialize")]
    pub store: PathBuf,
    /// The repository copied into (its URL).
    pub to: String,
    /// The config's job whose store this is (the first by name), if any.
    pub job: Option<String>,
    /// The newest copy: its row (a `running` one whose process is gone shown as it
    /// ended, as `settled` tells) and its message.
    pub last: RunRow,
    pub last_message: String,
    /// When the newest `complete` copy finished, and how long ago; `None` before the
    /// first.
    pub last_success_at: Option<String>,
    pub last_success_age_seconds: Option<f64>,
    pub counts: Counts,
}

/// The view of the catalog's pair of copies `k`, under job `job` (its age not yet
/// known).
fn copy_view(k: crate::catalog::Copies, job: Option<String>) -> CopyView {
    CopyView {
        store: k.from,
        to: k.to,
        job,
        last: k.last,
        last_message: k.last_message,
        last_success_at: k.last_success_at,
        last_success_age_seconds: None,
        counts: Counts {
            runs: k.runs,
            complete: k.complete,
            partial: k.partial,
            incomplete: k.incomplete,
            failed: k.failed,
            failed_once: k.failed_once,
            running: k.running,
            skipped: 0,
        },
    }
}

/// Every store-and-repository pair of copies in the catalog, in that order;
/// `Err`: why the catalog could not tell (the overview says it).
pub fn copies(
    cfg: &Config,
    cat: Option<&Catalog>,
    now: DateTime<Utc>,
) -> Result<Vec<CopyView>, String> {
    let Some(c) = cat else { return Ok(Vec::new()) };
    let all = c.copies().map_err(|e| e.to_string())?;
    Ok(all
        .into_iter()
        .map(|k| {
            let job = cfg
                .job
                .iter()
                .find(|(_, jc)| {
                    store_of(jc).is_some_and(|s| {
                        s == k.from || std::fs::canonicalize(&s).is_ok_and(|s| s == k.from)
                    })
                })
                .map(|(n, _)| n.clone());
            let mut v = copy_view(k, job);
            settle_copy(&mut v, c);
            v.last_success_age_seconds = v
                .last_success_at
                .as_deref()
                .and_then(crate::store::select::parse_time)
                .map(|t| (now - t).num_milliseconds() as f64 / 1e3);
            v
        })
        .collect())
}

/// The copies from the store into the repository of the copy `r` that just ended
/// (`copy --textfile`): the catalog's pair (its counts, its newest complete copy) with
/// `r` as the newest; without a catalog, or before it has the pair, `r` alone.
pub fn of_copy(r: &RunReport, cat: Option<&Catalog>, now: DateTime<Utc>) -> CopyView {
    let to = r.store.to_string_lossy().into_owned();
    let row = crate::catalog::RunRow {
        id: r.id.clone(),
        kind: "copy".into(),
        job: r.job.clone(),
        label: r.label.clone(),
        store: to.clone(),
        snapshot: r.snapshot.clone(),
        started_at: r.started_at.clone(),
        finished_at: r.finished_at.clone(),
        duration_seconds: r.duration_seconds,
        status: r.status.as_str().to_string(),
        files_total: r.files_total,
        files_transferred: r.files_transferred,
        bytes_transferred: r.bytes_transferred,
        errors: r.errors,
        notifications: r.notifications.len() as u64,
        notifications_failed: r.notifications.iter().filter(|n| !n.ok).count() as u64,
        invalid: Vec::new(),
    };
    let done = |s: Status| u64::from(r.status == s);
    let found = cat
        .and_then(|c| c.copies().ok())
        .and_then(|all| all.into_iter().find(|k| k.from == r.source && k.to == to));
    let mut v = match found {
        Some(k) => copy_view(k, r.job.clone()),
        None => CopyView {
            store: r.source.clone(),
            to,
            job: r.job.clone(),
            last: row.clone(),
            last_message: r.message.clone(),
            last_success_at: (r.status == Status::Complete)
                .then(|| r.finished_at.clone())
                .flatten(),
            last_success_age_seconds: None,
            counts: Counts {
                runs: 1,
                complete: done(Status::Complete),
                partial: done(Status::Partial),
                incomplete: done(Status::Incomplete),
                failed: done(Status::Failed),
                failed_once: done(Status::Failed),
                running: 0,
                skipped: 0,
            },
        },
    };
    // The copy that just ended is the newest, whatever the catalog says (its row not
    // written: the catalog locked or full).
    if v.last.id != r.id {
        v.last = row;
        v.last_message = r.message.clone();
    }
    v.last_success_age_seconds = v
        .last_success_at
        .as_deref()
        .and_then(crate::store::select::parse_time)
        .map(|t| (now - t).num_milliseconds() as f64 / 1e3);
    v
}

/// A newest copy the catalog has as `running` whose process is gone (nobody holds its
/// marker beside the catalog) shows as it ended, as the next command that writes the
/// catalog records it (`catalog::settle_repository_runs`); the catalog is not written.
fn settle_copy(v: &mut CopyView, c: &Catalog) {
    if v.last.status != "running" {
        return;
    }
    use crate::catalog::RepositoryRun;
    let r = match crate::catalog::repository_run(c, &v.last.id, &v.to, false) {
        RepositoryRun::Alive => return,
        RepositoryRun::Recorded(r) | RepositoryRun::Ended { report: r, .. } => r,
    };
    v.last.status = r.status.as_str().to_string();
    v.last.snapshot = r.snapshot.clone();
    v.last.finished_at = r.finished_at.clone();
    v.last.duration_seconds = r.duration_seconds;
    v.last.files_total = r.files_total;
    v.last.files_transferred = r.files_transferred;
    v.last.bytes_transferred = r.bytes_transferred;
    v.last.errors = r.errors;
    v.last_message = r.message.clone();
    let n = &mut v.counts;
    n.running = n.running.saturating_sub(1);
    match r.status {
        Status::Complete => {
            n.complete += 1;
            if r.finished_at.as_deref() > v.last_success_at.as_deref() {
                v.last_success_at = r.finished_at.clone();
            }
        }
        Status::Partial => n.partial += 1,
        Status::Incomplete => n.incomplete += 1,
        Status::Failed => {
            n.failed += 1;
            n.failed_once += 1;
        }
        Status::Running => n.running += 1,
    }
}

/// Fills the snapshots and the free space of `v` from its store, read-only: the
/// snapshots as kept (`kept`: the server's, with the store's stamp for this request)
/// or read afresh, the free space always afresh (it changes as any writer of the file
/// system writes, which no stamp tells; one `statvfs` a job).
fn from_store(
    v: &mut JobView,
    cat: Option<&Catalog>,
    now: DateTime<Utc>,
    d: Depth,
    kept: Option<(&mut Kept, &Look)>,
) {
    v.space = match &kept {
        Some((_, Look { space: Some(s), .. })) => s.clone(),
        _ => space(&v.store),
    };
    let listed = match kept {
        Some((k, look)) => k.snapshots(&v.store, look.stamp),
        None => read_snapshots(&v.store),
    };
    let listed = match listed {
        Ok(l) => l,
        Err(e) => {
            // No store yet is normal before the first run.
            if v.store.join(".snapring").exists() {
                v.errors.push(e.to_string());
            }
            return;
        }
    };
    v.snapshots = listed.snaps;
    if !v.snapshots.is_empty() {
        newest_snapshot(v, listed.newest_at, now);
    }
    if d == Depth::Detail
        && let Some(c) = cat
    {
        sizes(&mut v.snapshots, c);
    }
}

/// The snapshots of the store at `store`, newest first, and when the newest was taken
/// (its run's end, or the directory's time for a tree without a record).
fn read_snapshots(store: &Path) -> crate::error::Result<Listed> {
    let snaps = Store::open_read(store).and_then(|s| s.snapshots())?;
    let views = snaps
        .iter()
        .map(|s| SnapView {
            name: s.name.clone(),
            run_id: s.rec.as_ref().map(|r| r.id.clone()),
            finished_at: s.rec.as_ref().map(|r| r.finished_at.clone()),
            bytes_total: None,
            bytes_added: None,
        })
        .collect();
    let newest_at = snaps.first().and_then(|newest| match &newest.rec {
        Some(r) => crate::store::select::parse_time(&r.finished_at),
        None => DateTime::from_timestamp(newest.mtime, 0),
    });
    Ok(Listed {
        snaps: views,
        newest_at,
    })
}

/// Each snapshot's size and what its run added, from its run in the catalog.
fn sizes(snaps: &mut [SnapView], c: &Catalog) {
    for s in snaps {
        if let Some(id) = &s.run_id
            && let Ok(Some(r)) = c.run_summary(id)
        {
            s.bytes_total = Some(r.bytes_total);
            s.bytes_added = Some(r.bytes_transferred);
        }
    }
}

/// Free and total bytes and inodes of the file system holding `store` (or its nearest
/// existing parent, before the first run).
pub fn space(store: &Path) -> Option<Space> {
    let s = store
        .ancestors()
        .find_map(|p| rustix::fs::statvfs(p).ok())?;
    Some(Space {
        free_bytes: s.f_bavail.saturating_mul(s.f_frsize),
        total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
        free_inodes: s.f_favail,
        total_inodes: s.f_files,
    })
}

/// Free bytes (to unprivileged users) below which the catalog's file system counts as
/// full for [`catalog_writable`]: a transaction writes each page it changes twice (the
/// rollback journal, then the database), and a run's row with its listed problems is
/// up to hundreds of KiB.
pub const CATALOG_MIN_FREE: u64 = 1 << 20;

/// Whether the catalog at `path` can be written, by a cheap check made afresh for each
/// `/metrics` (`snapring_catalog_writable`): `Err` says why not. Its directory (the
/// nearest existing one, before the first run creates it) is on a file system mounted
/// read-write with at least [`CATALOG_MIN_FREE`] bytes and one inode free (SQLite
/// creates `catalog.db-journal` beside it for every write), and this process may write
/// the directory and the file (`faccessat` with the effective ids).
///
/// Why a check of the file system and not the last write error the daemon saw: `serve`
/// runs without a daemon as often as in one and has no writer's errors to read; the
/// daemon writes the catalog for its events only (the runs write their own rows, in
/// processes of their own), so its last error is hours old or absent; and a disk that
/// filled between two nightly runs must raise the alert before the next run's row is
/// lost, not after. The permission is this process's: the catalog and its directory
/// are private to their owner (0600, 0700), so a `serve` that can read it runs as that
/// owner (or root), as the writers do; in the daemon (`[server]`) it is the writer's
/// own.
pub fn catalog_writable(path: &Path) -> Result<(), String> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    catalog_writable_from(path, &cwd)
}

/// [`catalog_writable`] with `path` relative to `cwd`. The file SQLite writes is
/// checked: a symbolic link's target (its journal is created beside the target, on the
/// target's file system), and a relative path's directory under `cwd` (not `/`, where
/// the search for an existing ancestor of `sub/catalog.db` used to end).
fn catalog_writable_from(path: &Path, cwd: &Path) -> Result<(), String> {
    use rustix::fs::{Access, AtFlags, CWD, StatVfsMountFlags, accessat, statvfs};
    let path = &cwd.join(path);
    let resolved = std::fs::canonicalize(path);
    let path = resolved.as_deref().unwrap_or(path);
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = parent
        .ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/"));
    let st = statvfs(dir)
        .map_err(|e| format!("cannot read the file system of {}: {e}", dir.display()))?;
    if st.f_flag.contains(StatVfsMountFlags::RDONLY) {
        return Err(format!(
            "{} is on a file system mounted read-only",
            dir.display()
        ));
    }
    // Root writes into the blocks a file system reserves for it (ext4's 5%).
    let avail = if rustix::process::geteuid().is_root() {
        st.f_bfree
    } else {
        st.f_bavail
    };
    let free = avail.saturating_mul(st.f_frsize);
    if free < CATALOG_MIN_FREE {
        return Err(format!(
            "the file system of {} is full: {free} bytes free (less than {CATALOG_MIN_FREE})",
            dir.display()
        ));
    }
    // A file system without a fixed number of inodes (btrfs) says 0 of 0.
    if st.f_files > 0 && st.f_favail == 0 {
        return Err(format!(
            "the file system of {} has no free inode (for the catalog's journal)",
            dir.display()
        ));
    }
    let may = |p: &Path, a: Access| {
        accessat(CWD, p, a, AtFlags::EACCESS)
            .map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    may(dir, Access::WRITE_OK | Access::EXEC_OK)?;
    if dir == parent && path.exists() {
        may(path, Access::WRITE_OK)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run record of job `job` in the store at `store` (`.snapring/runs/ID.json`),
    /// written as a run writes one: a new file renamed into `runs/`.
    fn record(store: &Path, id: &str, job: &str, status: Status) {
        let opts = crate::engine::options::BackupOptions {
            job: Some(job.into()),
            ..crate::engine::options::BackupOptions::new("/src", store)
        };
        let mut r = crate::engine::backup::new_report(&opts, id, store);
        r.status = status;
        let p = store.join(".snapring/runs").join(format!("{id}.json"));
        crate::util::write_atomic(&p, &serde_json::to_vec(&r).unwrap()).unwrap();
    }

    /// Session 49: serve read each job's store run records (a listing of
    /// `.snapring/runs/` and a record) for each request of the overview and `/metrics`,
    /// each call a round trip on an NFS store. They are kept while `runs/` is as it
    /// was, and read afresh once a record is created or rewritten in it (a rename into
    /// it), or when its times are too recent to tell.
    #[test]
    fn a_jobs_newest_store_run_is_kept_while_its_run_directory_is_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let store = t.path();
        std::fs::create_dir_all(store.join(".snapring/runs")).unwrap();
        record(store, "20261201T020000Z-aaaa", "home", Status::Complete);
        record(store, "20261201T030000Z-bbbb", "other", Status::Complete);
        let mut kept = Kept::default();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(10);
        let stamp = |now| Look::at(store, now).stamp;
        let newest = |k: &mut Kept, now| k.newest(store, "home", stamp(now)).map(|r| r.id);
        assert_eq!(
            newest(&mut kept, later).as_deref(),
            Some("20261201T020000Z-aaaa")
        );
        // Changed in place (no rename: `runs/` as it was): the record kept is given,
        // not read again.
        let p = store.join(".snapring/runs/20261201T020000Z-aaaa.json");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("\"complete\"", "\"failed\"")).unwrap();
        let r = kept.newest(store, "home", stamp(later)).unwrap();
        assert_eq!(r.status, Status::Complete, "read again: {r:?}");
        // Read afresh when the directory's time is less than `SETTLED` before the
        // request (here: a second after its last change, whatever the machine's load).
        let changed = std::fs::metadata(store.join(".snapring/runs"))
            .unwrap()
            .modified()
            .unwrap();
        let now = changed + std::time::Duration::from_secs(1);
        let r = kept.newest(store, "home", stamp(now)).unwrap();
        assert_eq!(r.status, Status::Failed, "{r:?}");
        assert_eq!(
            newest(&mut kept, later).as_deref(),
            Some("20261201T020000Z-aaaa")
        );
        // A new record, as a run writes it: read at the next request.
        record(store, "20261202T020000Z-cccc", "home", Status::Failed);
        assert_eq!(
            newest(&mut kept, later).as_deref(),
            Some("20261202T020000Z-cccc")
        );
        // Kept per job: the other job of the store is its own.
        assert_eq!(
            kept.newest(store, "other", stamp(later))
                .map(|r| r.id)
                .as_deref(),
            Some("20261201T030000Z-bbbb")
        );
        // The store gone: nothing, not what was kept.
        std::fs::remove_dir_all(store.join(".snapring")).unwrap();
        assert!(newest(&mut kept, later).is_none());
    }

    /// Session 50 review: a stamp whose file times look settled by the local clock (an
    /// NFS server's clock behind ours makes them so at once) is not trusted until the
    /// same stamp was taken at a request [`SETTLED`] or more before by the monotonic
    /// clock; a changed stamp starts again; none forgets what was seen.
    #[test]
    fn a_stores_stamp_is_trusted_only_once_seen_settled_by_the_monotonic_clock() {
        let t = tempfile::tempdir().unwrap();
        let store = t.path();
        std::fs::create_dir_all(store.join(".snapring/runs")).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(10);
        let a = Look::at(store, later).stamp;
        assert!(a.is_some(), "the file times are settled by the clock given");
        let mut kept = Kept::default();
        let t0 = Instant::now();
        let s = std::time::Duration::from_millis;
        assert_eq!(kept.trust(store, a, t0), None, "first seen");
        assert_eq!(
            kept.trust(store, a, t0 + s(1999)),
            None,
            "seen 1.999 s before"
        );
        assert_eq!(kept.trust(store, a, t0 + s(2000)), a, "seen 2 s before");
        assert_eq!(kept.trust(store, a, t0 + s(9000)), a);
        // Changed: seen afresh.
        std::fs::create_dir(store.join(".snapring/manifests")).unwrap();
        let b = Look::at(store, later).stamp;
        assert!(b.is_some() && b != a);
        assert_eq!(kept.trust(store, b, t0 + s(9000)), None);
        assert_eq!(kept.trust(store, b, t0 + s(10_000)), None);
        assert_eq!(kept.trust(store, b, t0 + s(11_000)), b);
        // Not to be trusted (a time too recent, unreadable): forgotten.
        assert_eq!(kept.trust(store, None, t0 + s(12_000)), None);
        assert_eq!(kept.trust(store, b, t0 + s(13_000)), None);
        assert_eq!(kept.trust(store, b, t0 + s(15_000)), b);
    }

    /// Review (session 40): the check looks at the file system SQLite writes on: a
    /// catalog named through a symbolic link is its target's, and a relative path's
    /// directory is under the working directory, not `/`. A full 1 MiB tmpfs holds the
    /// real catalog (skipped where a tmpfs cannot be mounted).
    #[test]
    fn the_check_follows_a_symlinked_catalog_and_a_relative_path() {
        let t = tempfile::tempdir().unwrap();
        let full = t.path().join("full");
        std::fs::create_dir(&full).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&full)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            println!("skipped: cannot mount a tmpfs here");
            return;
        }
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.0)
                    .status();
            }
        }
        let _m = Unmount(full.clone());
        std::fs::write(full.join("catalog.db"), b"").unwrap();
        std::fs::create_dir(full.join("sub")).unwrap();
        let mut f = std::fs::File::create(full.join("fill")).unwrap();
        while std::io::Write::write_all(&mut f, &[0u8; 65536]).is_ok() {}
        drop(f);
        let link = t.path().join("catalog.db");
        std::os::unix::fs::symlink(full.join("catalog.db"), &link).unwrap();
        assert!(catalog_writable(&full.join("catalog.db")).is_err());
        let e = catalog_writable(&link).expect_err("a symlink to a catalog on a full disk");
        assert!(e.contains("is full"), "{e}");
        // Not yet created, relative to a working directory on the full disk.
        let e = catalog_writable_from(Path::new("sub/new.db"), &full)
            .expect_err("a relative catalog on a full disk");
        assert!(e.contains("is full"), "{e}");
        assert!(catalog_writable_from(Path::new("new/catalog.db"), t.path()).is_ok());
        assert!(catalog_writable(&t.path().join("other.db")).is_ok());
    }
}
