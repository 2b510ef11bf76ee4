//! Scale-out into a restic repository (`--dest file://…` or `s3://…` with `--shard`):
//! the hard-link store's plan and units (`plan.rs`), the run's state kept as snapring's
//! own files in the repository, every one another worker may race for made by an
//! exclusive create (`Backend::create_extra`: `link` on a file system, a conditional
//! `If-None-Match: *` write on S3), each unit's nodes committed once, and a finalize
//! that makes the spine directories' trees from the units' nodes and writes the run's
//! one snapshot. Does I/O (the source, the repository).
//!
//! Under `snapring/shards/<run-id>/` (names of the source are sealed with the
//! repository's key, as everything restic writes):
//! - `plan`: the cut, the run's parameters, the parent snapshot (sealed JSON);
//! - `claims/<unit>.g<generation>`: who works on a unit (a `Holder`, plain JSON); its
//!   lease runs from when it or `beats/<unit>.g<generation>` was last written,
//!   whichever is later, by the storage's clock (S3: each GET's `Date` less its
//!   `Last-Modified`; a file system: the mtime against `state::StoreClock`), so workers
//!   whose clocks disagree judge it alike; the beat is rewritten every third of the
//!   lease while the unit is built; a claim past its lease, or of a process of this
//!   host that has exited, is taken over by creating the next generation;
//! - `done/<unit>`: the unit's commit (sealed JSON: the nodes of its names, its counts,
//!   problems and warnings), written after its packs and index; the first commit of a
//!   unit is the one kept, any later one (a stalled generation's, a duplicate worker's)
//!   is refused by the exclusive create;
//! - `claims/finalize.g<generation>`: who publishes (the first worker to find every
//!   unit committed; the same lease and takeover);
//! - `final`: the run's snapshot, its id and its sealed bytes, created *before* the
//!   snapshot file: whoever finds `final` without that file writes those same bytes,
//!   so a run makes one snapshot whatever crashes;
//! - `published`: who publishes the run (records it, notifies, applies `--retain`),
//!   created exclusively once the snapshot file is there: the worker that wrote
//!   `final`, or the rerun after it crashed (the run's figures are sealed in `final`).
//!   That process then replaces each commit by a small tombstone (still refusing a late
//!   commit) and removes `beats/`. A `forget` of the run's snapshot creates it first if
//!   it is missing (the publisher killed between the snapshot file and `published`), so
//!   that no finalize writes the forgotten snapshot back; and no process writes the
//!   snapshot file with its repository lock lost (`restic::lock::Guard::check`);
//! - `refused/w<index>`: a worker refused because its settings differ from the plan's
//!   (`state::Refused`, sealed); finalize publishes no run that has one;
//! - `settled`: the publisher's retention and tidy are done. A process that finds
//!   `published` without it, its publisher gone (dead on this host, or `published`
//!   older than two leases, or `snapring finalize` asked), completes them.
//!
//! Nothing is moved, unlike in the hard-link store: blobs are content-addressed, so a
//! unit built twice leaves only unreferenced blobs, for `prune`. Hard links need no
//! join either: restic's nodes carry their inode and device, and a restore links the
//! names of one inode wherever they are; finalize only checks that the units recorded
//! one inode alike (`join_links_across_units`).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::plan::{Cut, Unit};
use super::sizes::SpineMounts;
use super::state::{Holder, PlanFile, StoreClock, lease};
use super::{ShardError, Spec};
use crate::relpath::RelPath;
use crate::restic::backend::{Backend, Kind, Written};
use crate::restic::backup::{DirAt, EntryProblem, Names, UnitLink, UnitSpec, Wrap, dir_node_at};
use crate::restic::index::Index;
use crate::restic::pack::BlobType;
use crate::restic::repo::{Packer, PackerStats, Repo};
use crate::restic::snapshot::Snapshot;
use crate::restic::tree::{Node, Tree};
use crate::restic::{self, Id};

/// The plan's format.
const FORMAT: u32 = 1;

/// Where the runs are, under the repository's root.
const RUNS: &str = "snapring/shards";

/// How long a worker waits for another process's exclusive lock before it exits 75
/// (a finalizer's forget is a moment; a prune may not be).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The worker index `snapring finalize` claims and publishes as.
pub const BY_HAND: usize = usize::MAX;

/// Whether `worker` is [`BY_HAND`] (`snapring finalize`, no worker).
fn is_by_hand(worker: &usize) -> bool {
    *worker == BY_HAND
}

/// The claim of making the plan (`claims/plan.g<generation>`).
const PLAN: &str = "plan";

/// The claim of finalizing the run (`claims/finalize.g<generation>`; unit ids are
/// `u0000`…).
const FINALIZE: &str = "finalize";

/// What a worker backs up, and how.
pub struct Options {
    pub source: PathBuf,
    pub label: String,
    /// Keep the newest N snapshots of the label after the run (restic `forget
    /// --keep-last N`), applied by the worker that publishes.
    pub retain: Option<u32>,
    /// File-system calls in flight while a unit is built (resolved: not 0).
    pub jobs: usize,
    /// Set by SIGINT/SIGTERM.
    pub cancel: Arc<AtomicBool>,
    /// `--one-file-system` (`-x`): recorded in the plan; a worker started otherwise
    /// than the plan says is refused.
    pub one_file_system: bool,
    /// What the run leaves out, the pattern files read (`crate::exclude::Settings`):
    /// in the plan (every worker must have the same), applied by each unit's walk,
    /// recorded in the snapshot.
    pub exclusion: crate::exclude::Settings,
    /// `--allow-empty`: without it a worker refuses a source that is empty, or of which
    /// the exclusions leave nothing, while the plan's parent snapshot is not
    /// (`restic::backup::refuse_empty`, the store's invariant 4).
    pub allow_empty: bool,
}

/// What a walk counted: a unit's (from its `BackupReport`), or the run's, summed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Figures {
    pub files: u64,
    pub dirs: u64,
    pub files_unchanged: u64,
    pub files_read: u64,
    pub bytes_read: u64,
    pub bytes_total: u64,
    /// What it added to the repository: packs and index files.
    pub added: PackerStats,
    /// With `one_file_system`: the directories on another file system kept as empty
    /// trees, and the first of them (escaped paths of the source, in path order).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mount_points_skipped: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_points: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Figures {
    fn of(r: &restic::backup::BackupReport) -> Figures {
        Figures {
            files: r.files,
            dirs: r.dirs,
            files_unchanged: r.files_unchanged,
            files_read: r.files_read,
            bytes_read: r.bytes_read,
            bytes_total: r.bytes_total,
            added: r.added,
            mount_points_skipped: r.mount_points_skipped,
            mount_points: r.mount_points.clone(),
        }
    }

    fn add(&mut self, o: &Figures) {
        self.files += o.files;
        self.dirs += o.dirs;
        self.files_unchanged += o.files_unchanged;
        self.files_read += o.files_read;
        self.bytes_read += o.bytes_read;
        self.bytes_total += o.bytes_total;
        self.added.add(&o.added);
        self.add_mount_points(o.mount_points_skipped, &o.mount_points);
    }

    /// Adds `count` mount points, the first of them `first`: the run keeps the first
    /// `traverse::MOUNT_POINTS_NAMED` in path order.
    fn add_mount_points(&mut self, count: u64, first: &[String]) {
        self.mount_points_skipped += count;
        self.mount_points.extend(first.iter().cloned());
        self.mount_points.sort();
        self.mount_points.dedup();
        self.mount_points
            .truncate(crate::traverse::MOUNT_POINTS_NAMED);
    }

    /// The run as one backup's report (the catalog's record, the notifications).
    fn report(&self) -> restic::backup::BackupReport {
        restic::backup::BackupReport {
            files: self.files,
            dirs: self.dirs,
            files_unchanged: self.files_unchanged,
            files_read: self.files_read,
            bytes_read: self.bytes_read,
            bytes_total: self.bytes_total,
            added: self.added,
            mount_points_skipped: self.mount_points_skipped,
            mount_points: self.mount_points.clone(),
            ..Default::default()
        }
    }
}

/// A unit's figures, as its commit records them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UnitFigures {
    #[serde(flatten)]
    pub counts: Figures,
    pub seconds: f64,
    /// With `one_file_system`: the unit's directory, or the shallowest one above it, on
    /// another file system than the source's root when the unit was built (escaped
    /// path): it built nothing. What finalize decides the spine's mount points by
    /// (`sizes::SpineMounts`). Absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crossed: Option<String>,
}

/// `done/<unit>`.
#[derive(Debug, Serialize, Deserialize)]
struct UnitDone {
    generation: u32,
    worker: usize,
    host: String,
    pid: u32,
    at: String,
    /// BLAKE3 of the plan's plain JSON: every commit of a run is for the same plan.
    plan: String,
    nodes: Vec<Node>,
    figures: UnitFigures,
    problems: Vec<EntryProblem>,
    /// Trees of the parent snapshot this unit's build could not read (it read their
    /// directories in full); the worker's own, of the source's tree, in each of its
    /// commits. Finalize keeps each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    /// The unit's inodes of several links whose other names may be in other units
    /// (names relative to the source): finalize's check across units
    /// ([`join_links_across_units`]). A commit of an older snapring has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    links: Vec<UnitLink>,
}

/// `final`.
#[derive(Debug, Serialize, Deserialize)]
struct FinalFile {
    snapshot: String,
    /// The snapshot file's bytes (already encrypted), base64.
    sealed: String,
    /// The run's figures (`RunTotals`, sealed JSON), base64: for whoever publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    totals: Option<String>,
    /// The generation of each unit's commit that was kept, for the units committed by
    /// a later generation than the first (a claim taken over): once the run is
    /// published its commits are tombstones, and the claim of the kept generation
    /// says who built the unit (not the newest claim: a takeover's commit may have
    /// been refused, the earlier generation's coming first). `None`: a `final` made
    /// before this was kept (its status goes by the newest claims).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kept: Option<BTreeMap<String, u32>>,
    worker: usize,
    at: String,
}

/// One worker's share of the run, in the run's totals.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerTotals {
    pub worker: usize,
    pub units: u64,
    pub files: u64,
    pub files_read: u64,
    pub bytes_read: u64,
    pub seconds: f64,
}

/// The whole run's figures, summed over the committed units (by the worker that
/// publishes).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunTotals {
    pub units: u64,
    /// Units committed by a later generation than the first (a claim taken over).
    pub takeovers: u64,
    /// The units' figures, summed, and finalize's: the spine's directories, and what
    /// their trees added.
    #[serde(flatten)]
    pub counts: Figures,
    pub problems: Vec<EntryProblem>,
    /// What went wrong beside the snapshot without changing it, from every unit's
    /// commit, each once, at most a hundred (`restic::backup::add_warning`): trees of
    /// the parent snapshot that could not be read (their directories were read in
    /// full), as a single-node run's `warnings`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub per_worker: Vec<WorkerTotals>,
}

/// What one worker did (its `--json` output).
#[derive(Debug, Default, Serialize)]
pub struct WorkerReport {
    pub run: String,
    /// Absent for `snapring finalize` ([`BY_HAND`]: no worker), as in the store's
    /// finalize report.
    #[serde(skip_serializing_if = "is_by_hand")]
    pub worker: usize,
    pub workers: usize,
    /// `complete`, `partial` (published, with entries left out), `incomplete`
    /// (interrupted: the units it did not commit are left to a rerun).
    pub status: String,
    /// Units this worker committed.
    pub units: Vec<String>,
    /// Units it built whose commit another worker made first (its work is dropped).
    pub units_refused: Vec<String>,
    /// The units this worker was building when SIGINT/SIGTERM or its window stopped it
    /// (one per lane; left to the others or a rerun); empty if it was only waiting.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interrupted_units: Vec<String>,
    /// Whether this worker published the snapshot.
    pub finalized: bool,
    /// The run was published before this worker started (a retry of a finished run,
    /// or a run id used again: a new backup needs a new run id).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub published_before: bool,
    /// The run's publisher was gone before it applied the retention and tidied: this
    /// worker (or `finalize`) completed that.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub completed: bool,
    pub snapshot: Option<String>,
    pub parent: Option<String>,
    /// The run's figures (from the worker that published).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals: Option<RunTotals>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<restic::forget::ForgetReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_skipped: Option<String>,
    pub duration_seconds: f64,
    /// The run as one backup's report, from the worker that published it (what the
    /// catalog records and the notifications tell).
    #[serde(skip)]
    pub published: Option<restic::backup::BackupReport>,
}

/// The run's files in the repository.
struct State<'a> {
    b: &'a dyn Backend,
    base: String,
    /// The store's clock, for a repository on a file system (the claims' mtimes are
    /// set by it); S3 answers each read with the object's age ([`Written::Ago`]).
    clock: Option<StoreClock>,
}

impl<'a> State<'a> {
    fn new(b: &'a dyn Backend, run: &str) -> State<'a> {
        let base = format!("{RUNS}/{run}");
        State {
            b,
            clock: b
                .local_root()
                .map(|root| StoreClock::new(root.join(&base).join("claims"), lease())),
            base,
        }
    }

    /// For reading only (`status`): file mtimes are judged by this host's clock, as the
    /// store's `status` does, since measuring the store's clock creates a file.
    fn read_only(b: &'a dyn Backend, run: &str) -> State<'a> {
        State {
            clock: None,
            ..State::new(b, run)
        }
    }

    fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.base)
    }

    fn claim_key(&self, unit: &str, generation: u32) -> String {
        self.key(&format!("claims/{unit}.g{generation}"))
    }

    fn beat_key(&self, unit: &str, generation: u32) -> String {
        self.key(&format!("beats/{unit}.g{generation}"))
    }

    fn done_key(&self, unit: &str) -> String {
        self.key(&format!("done/{unit}"))
    }

    /// The newest generation claimed of each unit.
    fn claim_gens(&self) -> restic::Result<BTreeMap<String, u32>> {
        let mut out = BTreeMap::new();
        for name in self.b.list_extra(&self.key("claims"))? {
            let Some((unit, g)) = name.rsplit_once(".g") else {
                continue;
            };
            let Ok(g) = g.parse::<u32>() else { continue };
            let e = out.entry(unit.to_string()).or_insert(g);
            *e = (*e).max(g);
        }
        Ok(out)
    }

    /// Who holds a claim (`None`: its content does not read, a damaged object, as its
    /// write is conditional and whole), and how long ago its lease was last renewed:
    /// when the claim or its latest beat was written, whichever is newer, by the
    /// storage's clock (`Backend::read_extra_written`), so that hosts whose clocks
    /// disagree judge a lease alike. Where the storage does not say, by the holder's
    /// time in it against this host's clock (the epoch when it does not read, so a
    /// damaged claim counts as old unless its holder still beats). `None`: no such
    /// claim.
    fn claim_at(
        &self,
        unit: &str,
        generation: u32,
    ) -> restic::Result<Option<(Option<Holder>, Duration)>> {
        let Some((bytes, written)) = self
            .b
            .read_extra_written(&self.claim_key(unit, generation))?
        else {
            return Ok(None);
        };
        let holder = serde_json::from_slice::<Holder>(&bytes).ok();
        let mut age = self.age(written, holder.as_ref());
        if let Some((beat, written)) = self
            .b
            .read_extra_written(&self.beat_key(unit, generation))?
        {
            let h = serde_json::from_slice::<Holder>(&beat).ok();
            // A beat that does not read, by the storage's clock, still renews.
            if written.is_some() || h.is_some() {
                age = age.min(self.age(written, h.as_ref()));
            }
        }
        Ok(Some((holder, age)))
    }

    /// How long ago a file was written: by the storage's clock, else by the holder's
    /// time in it against this host's clock (the longest when it does not read).
    fn age(&self, written: Option<Written>, holder: Option<&Holder>) -> Duration {
        let since = |now: SystemTime, at: SystemTime| now.duration_since(at).unwrap_or_default();
        match written {
            Some(Written::Ago(d)) => d,
            Some(Written::At(at)) => since(
                self.clock
                    .as_ref()
                    .map_or_else(SystemTime::now, StoreClock::now),
                at,
            ),
            None => since(
                SystemTime::now(),
                holder.map_or(SystemTime::UNIX_EPOCH, |h| parse_at(&h.at)),
            ),
        }
    }

    fn claim(&self, unit: &str, generation: u32, worker: usize) -> restic::Result<bool> {
        let body = serde_json::to_vec(&Holder::me(worker)).expect("a claim serializes");
        self.b
            .create_extra(&self.claim_key(unit, generation), &body)
    }

    fn done(&self) -> restic::Result<BTreeSet<String>> {
        Ok(self.b.list_extra(&self.key("done"))?.into_iter().collect())
    }

    fn read_final(&self) -> restic::Result<Option<FinalFile>> {
        let Some(bytes) = self.b.read_extra(&self.key("final"))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| restic::corrupt(self.key("final"), e))
    }
}

/// A holder's time; the epoch when it cannot be read (so the claim counts as old).
fn parse_at(at: &str) -> SystemTime {
    chrono::DateTime::parse_from_rfc3339(at)
        .map(SystemTime::from)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn failed(e: restic::Error) -> ShardError {
    super::sort_repo_err(e)
}

/// One worker of a shard run into `repo`: makes or reads the plan, builds units (its
/// home units first, then any nobody has started, then any whose claim is past its
/// lease) until every unit is committed, and the worker that sees that publishes
/// (`finalize`). Returns when the run is published, or on SIGINT/SIGTERM: stopped,
/// its report is `incomplete` whether the stop found it between two requests or
/// gave up a request that hung (`restic::Error::Cancelled`, or any failure once
/// stopping: the stop's, as a single-node backup takes it), so a stopped worker exits
/// 3 whatever the endpoint does.
pub fn work(repo: &mut Repo, spec: &Spec, opts: &Options) -> Result<WorkerReport, ShardError> {
    let started = Instant::now();
    let mut report = WorkerReport {
        run: spec.run_id.clone(),
        worker: spec.index,
        workers: spec.count,
        ..Default::default()
    };
    match work_in(repo, spec, opts, started, &mut report) {
        Ok(()) => Ok(report),
        Err(e)
            if matches!(e, ShardError::Stopped)
                || (opts.cancel.load(Ordering::Relaxed)
                    && matches!(e, ShardError::Failed(_) | ShardError::Retry(_))) =>
        {
            if !matches!(e, ShardError::Stopped) {
                tracing::warn!("stopped: {e}");
            }
            tracing::info!(
                "run {}: stopped while it talked to the repository; a rerun resumes",
                spec.run_id
            );
            report.status = "incomplete".into();
            report.duration_seconds = started.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(e) => Err(e),
    }
}

/// [`work`], filling `report`.
fn work_in(
    repo: &mut Repo,
    spec: &Spec,
    opts: &Options,
    started: Instant,
    report: &mut WorkerReport,
) -> Result<(), ShardError> {
    if spec.index == BY_HAND {
        tracing::info!(
            "finalize of shard run {} ({} workers) into {}",
            spec.run_id,
            spec.count,
            repo.backend.location()
        );
    } else {
        tracing::info!(
            "shard worker {} of {} of run {} into {}",
            spec.index,
            spec.count,
            spec.run_id,
            repo.backend.location()
        );
    }
    repo.check_writable().map_err(failed)?;
    let source = std::fs::canonicalize(&opts.source).map_err(|e| {
        ShardError::Failed(crate::error::Error::Repository(format!(
            "cannot open the source {}: {e}",
            crate::relpath::shown(&opts.source)
        )))
    })?;
    if !source.is_dir() {
        return Err(ShardError::Usage(format!(
            "the source {} is not a directory",
            crate::relpath::shown(&source)
        )));
    }
    if let Some(why) = restic::backup::non_utf8_source(&source) {
        return Err(ShardError::Usage(why));
    }
    // Published longer ago than any retry of its workers comes (`reuse_after`): a job
    // that reuses a fixed run id, refused (exit 64) before it writes anything (its
    // lock included), else it would go green every night with nothing backed up.
    // `final` and `published` are each written once, so no lock is needed to read them.
    // `snapring finalize` is not refused.
    if spec.index != BY_HAND {
        let st = State::new(repo.backend.as_ref(), &spec.run_id);
        if let Some(at) = published_at(&st).map_err(failed)?
            && let Some(e) = super::reused(
                &spec.run_id,
                &at,
                super::state::started_now(),
                super::reuse_after(),
            )
        {
            return Err(e);
        }
    }
    // A prune between the opening (the index read) and the lock (the race tests).
    crate::failpoint::hit("shard.repo.before_lock")
        .map_err(|e| failed(restic::Error::Other(e.to_string())))?;
    // An exclusive lock held a moment (the run's finalizer forgetting by --retain, as
    // its other workers finish) is waited for, up to `LOCK_WAIT`, rather than failing
    // a worker that started late (exit 75, seen in CI with four workers on two cores);
    // a longer one (a prune) is still a retry later.
    let until = Instant::now() + LOCK_WAIT;
    let lock = loop {
        match restic::lock::acquire(repo, false) {
            Err(restic::Error::Locked(_)) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(100));
            }
            r => break r,
        }
    }
    .map_err(|e| match &e {
        restic::Error::Locked(m) => ShardError::Retry(m.clone()),
        _ => failed(e),
    })?;
    // Read again under the lock: a prune between the opening and the lock deleted
    // packs the index read at open still names, and a blob found there is not stored.
    if let Err(e) = repo.refresh_index() {
        let _ = lock.release();
        return Err(failed(e));
    }
    let backend = repo.backend.clone();
    let st = State::new(backend.as_ref(), &spec.run_id);
    // `final` written before this worker started: its units are all built (the
    // empty-source guard is past); published only once `published` is there too (a
    // finalizer killed between the two leaves the publish to this one).
    let final_before = st.read_final().map_err(failed)?.is_some();
    report.published_before =
        final_before && matches!(read_published(&st).map_err(failed)?, Marker::Reads(_));
    // The leases of the claims held (the plan, the units being built, finalize) are
    // renewed by this thread.
    let held: Arc<Held> = Arc::default();
    let beating = Arc::new(AtomicBool::new(true));
    let beat = {
        let (held, beating, b, run) = (
            held.clone(),
            beating.clone(),
            backend.clone(),
            spec.run_id.clone(),
        );
        let worker = spec.index;
        std::thread::spawn(move || {
            let st = State::new(b.as_ref(), &run);
            let every = lease() / 3;
            let mut last = Instant::now();
            while beating.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100).min(every));
                if last.elapsed() < every {
                    continue;
                }
                last = Instant::now();
                for (unit, g) in held.now() {
                    let body = serde_json::to_vec(&Holder::me(worker)).expect("serializes");
                    if let Err(e) = st.b.put_extra(&st.beat_key(&unit, g), &body) {
                        tracing::warn!("cannot renew the claim of {unit}: {e}");
                    }
                }
            }
        })
    };
    let result = (|| {
        // The empty-source guard before the plan too (as the store's workers,
        // `shard::worker`): a worker on a node where the source is not mounted that
        // planned first wrote a plan of nothing (one unit, the mount point's inode)
        // that refused every healthy worker after it. Refused here, it claims nothing
        // and another worker plans; the parent is the one the plan would take.
        if !opts.allow_empty && !final_before && spec.index != BY_HAND {
            restic::backup::refuse_empty(
                repo,
                &source,
                || latest_parent(repo, opts, &source),
                &opts.exclusion,
            )
            .map_err(failed)?;
        }
        let (plan_file, plan_hash) = plan_of(repo, &st, spec, opts, &source, &held, !final_before)?;
        let cut = plan_file
            .cut()
            .map_err(|e| failed(restic::corrupt(st.key("plan"), e)))?;
        report.parent = plan_file.prev.clone();
        let parent_id = match &plan_file.prev {
            Some(id) => Some(Id::parse(id).map_err(failed)?),
            None => None,
        };
        let mut warning = None;
        let mut no_tree = None;
        let tree = match parent_id {
            Some(id) => {
                // Forgotten since the plan (another run's retention, `forget`): the units
                // still to build read every file, rather than the run failing for good.
                if repo
                    .backend
                    .list(Kind::Snapshot)
                    .map_err(failed)?
                    .contains(&id)
                {
                    let snap: Snapshot = repo.load_json(Kind::Snapshot, &id).map_err(failed)?;
                    // The empty-source guard: a failed mount looks exactly like an empty
                    // source, and the publisher's retention would forget good snapshots.
                    // Every worker checks (as the store's do); not once the run is
                    // published (a rerun only reports it).
                    if !opts.allow_empty && !final_before && spec.index != BY_HAND {
                        restic::backup::refuse_empty(
                            repo,
                            &source,
                            || Ok(Some((id, snap.clone()))),
                            &opts.exclusion,
                        )
                        .map_err(failed)?;
                    }
                    let comps: Vec<&OsStr> = source.iter().skip(1).collect();
                    // Its trees down to the source's do not read (a pack lost): every
                    // unit reads in full, as a single-node run does, and says so.
                    match restic::backup::descend(repo, snap.tree, &comps) {
                        Ok(Some(t)) => Some(t),
                        Ok(None) => {
                            no_tree = Some("it has no directory at the source's path".into());
                            None
                        }
                        Err(e) => {
                            let w = restic::backup::unreadable_parent(Some(&id), ".", &e);
                            tracing::warn!("{w}");
                            warning = Some(w);
                            no_tree = Some(format!("its tree of the source cannot be read ({e})"));
                            None
                        }
                    }
                } else {
                    tracing::warn!(
                        "run {}: its parent snapshot {id} is gone; the units still to build read every file",
                        spec.run_id
                    );
                    no_tree = Some("it is gone (forgotten since the run was planned)".into());
                    None
                }
            }
            None => None,
        };
        let parent = ParentOf {
            id: parent_id,
            tree,
            warning,
            no_tree,
        };
        build_units(
            repo,
            &st,
            spec,
            opts,
            &source,
            &cut,
            &plan_hash,
            &parent,
            &held,
            lock.watch(),
            report,
        )
        .and_then(|all_done| match all_done {
            true => publish(repo, &st, spec, opts, &held, |repo| {
                let watch = lock.watch();
                let lock_held = || watch.check();
                finalize(
                    repo,
                    &st,
                    (&plan_file, opts.allow_empty || plan_file.allow_empty),
                    &plan_hash,
                    &cut,
                    &source,
                    (spec, final_before),
                    (&lock_held, &watch),
                    &opts.cancel,
                )
            }),
            false => Ok(None),
        })
        .map(|fin| fin.map(|f| (f, plan_file.label.clone())))
    })();
    beating.store(false, Ordering::Relaxed);
    let _ = beat.join();
    let Some((fin, label)) = result? else {
        report.status = "incomplete".into();
        report.duration_seconds = started.elapsed().as_secs_f64();
        let _ = lock.release();
        return Ok(());
    };
    // The publisher tidies the run's files while it releases its lock, applies the
    // retention and reports (tens of calls, not on the run's path); so does a process
    // that completes what a publisher that is gone left undone.
    let settle = fin.won || fin.complete;
    if fin.complete {
        tracing::info!(
            "run {}: its publisher is gone before it applied the retention and tidied; completing that",
            spec.run_id
        );
    }
    let tidying = Tidying(settle.then(|| {
        let (b, run) = (backend.clone(), spec.run_id.clone());
        std::thread::spawn(move || tidy(&State::new(b.as_ref(), &run)))
    }));
    // Published: a stop now (its request given up) leaves the lock to expire, not the
    // run incomplete.
    match lock.release() {
        Err(e) if opts.cancel.load(Ordering::Relaxed) => {
            tracing::warn!("stopped while it removed its lock ({e}); the lock is left to expire")
        }
        r => r.map_err(failed)?,
    }
    report.snapshot = Some(fin.snapshot.clone());
    report.finalized = fin.won || fin.unmarked.is_some();
    report.completed = fin.complete;
    report.status = match &fin.totals {
        Some(t) if !t.problems.is_empty() => "partial",
        _ => "complete",
    }
    .into();
    report.totals = fin.totals;
    if let Some(w) = fin.unmarked {
        // Published, not marked: the rerun that marks it records it (recorded here
        // too, it would be twice).
        match report.totals.as_mut() {
            Some(t) => t.warnings.push(w),
            None => tracing::warn!("{w}"),
        }
        report.duration_seconds = started.elapsed().as_secs_f64();
        return Ok(());
    }
    if settle && let Some(n) = opts.retain {
        let policy = restic::forget::Policy {
            label,
            keep_last: n.max(1),
            group: Some(fin.group),
            before_remove: Some(before_forget),
            written: restic::Id::parse(&fin.snapshot).ok(),
        };
        // The run's other workers hold their shared locks until they see `final` (a
        // poll, at most `POLL_MAX`): wait for them, up to a lease, rather than skip.
        let until = Instant::now() + lease();
        let ex = loop {
            match restic::lock::acquire(repo, true) {
                Err(restic::Error::Locked(_))
                    if Instant::now() < until && !opts.cancel.load(Ordering::Relaxed) =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                r => break r,
            }
        };
        match ex {
            Ok(ex) => match restic::forget::forget_locked(repo, &policy) {
                // Stopped meanwhile: the run is published; the retention is left to the
                // next run, as when the lock could not be had.
                Err(e) if opts.cancel.load(Ordering::Relaxed) => {
                    drop(ex);
                    report.retention_skipped = Some(format!("interrupted: {e}"));
                }
                r => {
                    let r = r.map_err(failed)?;
                    if let Err(e) = ex.release() {
                        if !opts.cancel.load(Ordering::Relaxed) {
                            return Err(failed(e));
                        }
                        tracing::warn!(
                            "stopped while it removed its lock ({e}); the lock is left to expire"
                        );
                    }
                    if let Some(w) = kept_beyond_retain(repo, &r, &fin.snapshot, n.max(1), spec) {
                        tracing::warn!("{w}");
                        if let Some(t) = report.totals.as_mut() {
                            t.warnings.push(w);
                        }
                    }
                    report.retention = Some(r);
                }
            },
            Err(e) => report.retention_skipped = Some(e.to_string()),
        }
    }
    if settle {
        drop(tidying);
        let body = serde_json::to_vec(&Holder::me(spec.index)).expect("serializes");
        if let Err(e) = st.b.put_extra(&st.key("settled"), &body) {
            tracing::warn!("cannot mark run {} settled: {e}", spec.run_id);
        }
    }
    report.duration_seconds = started.elapsed().as_secs_f64();
    if let Some(t) = &report.totals {
        let mut run = restic::backup::BackupReport {
            snapshot: report.snapshot.clone().unwrap_or_default(),
            parent: report.parent.clone(),
            status: report.status.clone(),
            problems: t.problems.clone(),
            warnings: t.warnings.clone(),
            retention: report.retention.clone(),
            retention_skipped: report.retention_skipped.clone(),
            duration_seconds: report.duration_seconds,
            ..t.counts.report()
        };
        // The snapshot file: one more object.
        let snap_len = base64_len(&fin.sealed);
        run.count_uploads(1, snap_len);
        report.published = Some(run);
    }
    Ok(())
}

/// The warning of a run whose snapshot `written` the retention (`keep` newest) kept
/// only as the one it has just written: `keep` or more of its label are dated later
/// (runs published while this one was stopped, whose plans were made after its own),
/// so the label keeps one more than `--retain`, until the next run's retention, which
/// ranks by snapshot time, forgets it. `None`: it is among the newest `keep`.
fn kept_beyond_retain(
    repo: &Repo,
    r: &restic::forget::ForgetReport,
    written: &str,
    keep: u32,
    spec: &Spec,
) -> Option<String> {
    let verdicts = &r.plan.verdicts;
    let at = verdicts.iter().position(|v| v.id == written)?;
    let own = &verdicts[at];
    // Newest first: those before it in its group are dated later.
    let newer: Vec<_> = verdicts[..at]
        .iter()
        .filter(|v| v.group == own.group)
        .collect();
    if newer.len() < keep as usize {
        return None;
    }
    let named: Vec<String> = newer
        .iter()
        .filter(|v| v.keep)
        .map(|v| {
            let run = Id::parse(&v.id)
                .ok()
                .and_then(|id| repo.load_json::<Snapshot>(Kind::Snapshot, &id).ok())
                .and_then(|s| s.tag("shard-run").map(|r| format!(" (run {r})")))
                .unwrap_or_default();
            format!("snapshot {}{run} of {}", v.short_id, v.time)
        })
        .collect();
    Some(format!(
        "run {} published late: {} of the same label, published while it was stopped, {} dated later than its snapshot {} of {} (when its plan was made); its retention kept {} only because this run has just written it, so the label now keeps {} snapshots, one more than --retain {keep}; the next run's retention (newest by snapshot time) removes {}",
        spec.run_id,
        named.join(", "),
        if named.len() == 1 { "is" } else { "are" },
        own.short_id,
        own.time,
        own.short_id,
        keep + 1,
        own.short_id
    ))
}

/// The length of the bytes `b64` holds.
fn base64_len(b64: &str) -> u64 {
    (b64.len() as u64 / 4) * 3 - b64.bytes().rev().take_while(|&c| c == b'=').count() as u64
}

/// The run's plan: read, or made by this worker (a quick walk of the source for the
/// weights) and created exclusively; a worker that loses the race reads the winner's.
/// Its parameters must be this worker's: a worker whose settings differ is refused
/// (exit 64), having left its mark first with `mark` ([`mark_refused`]).
fn plan_of(
    repo: &Repo,
    st: &State<'_>,
    spec: &Spec,
    opts: &Options,
    source: &Path,
    held: &Held,
    mark: bool,
) -> Result<(PlanFile, String), ShardError> {
    let read = || -> Result<Option<(PlanFile, String)>, ShardError> {
        let Some(sealed) = st.b.read_extra(&st.key("plan")).map_err(failed)? else {
            return Ok(None);
        };
        let p: PlanFile = repo.open_json(&sealed, &st.key("plan")).map_err(failed)?;
        let hash = blake3::hash(&serde_json::to_vec(&p).expect("serializes"))
            .to_hex()
            .to_string();
        Ok(Some((p, hash)))
    };
    // One worker sizes the source (claim `plan`); the others wait for its plan.
    let planned = || Ok(st.b.read_extra(&st.key("plan")).map_err(failed)?.is_some());
    if let Turn::Mine(g) = take_turn(st, PLAN, spec.index, &opts.cancel, planned)? {
        check_exclusive_creates(st, g)?;
        held.hold(PLAN, g);
        let t = Instant::now();
        let made = make_plan(repo, spec, opts, source);
        held.release(PLAN, g);
        if let Ok(p) = &made {
            tracing::info!(
                "shard plan made (generation {g}): {} units, sized by {} in {:.2} s",
                p.units.len(),
                p.sized_by,
                t.elapsed().as_secs_f64()
            );
        }
        let (_, sealed) = repo.seal_json(&made?).map_err(failed)?;
        st.b.create_extra(&st.key("plan"), &sealed)
            .map_err(failed)?;
    }
    let Some((p, hash)) = read()? else {
        return Err(ShardError::Retry(format!(
            "run {}: interrupted before its plan was made",
            spec.run_id
        )));
    };
    let refuse = |differs: String, msg: String| {
        if mark {
            mark_refused(repo, st, spec.index, differs);
        }
        ShardError::Usage(msg)
    };
    if p.workers != spec.count {
        return Err(refuse(
            format!("{} workers, not {}", p.workers, spec.count),
            format!(
                "run {}: its plan is for {} workers, this worker was started as one of {}",
                spec.run_id, p.workers, spec.count
            ),
        ));
    }
    if p.one_file_system != opts.one_file_system {
        let differs = super::worker::one_fs_differs(p.one_file_system);
        return Err(refuse(
            differs.clone(),
            format!(
                "run {}: its plan was made with {differs}: every worker of a run needs the same settings (or use a new --run-id)",
                spec.run_id,
            ),
        ));
    }
    if p.exclusion != opts.exclusion {
        let (planned, given) = (
            serde_json::to_string(&p.exclusion).unwrap_or_default(),
            serde_json::to_string(&opts.exclusion).unwrap_or_default(),
        );
        return Err(refuse(
            format!("exclusion settings {planned}, not {given}"),
            format!(
                "run {}: its plan has the exclusion settings {planned}, this worker was given {given}: every worker of a run needs the same (a pattern file must say the same on every node)",
                spec.run_id,
            ),
        ));
    }
    if p.source != source || p.label != opts.label {
        return Err(refuse(
            format!(
                "source {} as {:?}, not {} as {:?}",
                crate::relpath::shown(&p.source),
                p.label,
                crate::relpath::shown(source),
                opts.label
            ),
            format!(
                "run {}: its plan backs up {} as {:?}, this worker was given {} as {:?}",
                spec.run_id,
                crate::relpath::shown(&p.source),
                p.label,
                crate::relpath::shown(source),
                opts.label
            ),
        ));
    }
    Ok((p, hash))
}

/// Leaves the mark of worker `index`, refused as its settings differ from the plan's
/// (`differs`: the plan's, then the worker's): `refused/w<index>`, sealed (it names
/// the source), the first of an index kept. Finalize publishes no run with one.
fn mark_refused(repo: &Repo, st: &State<'_>, index: usize, differs: String) {
    let key = st.key(&format!("refused/w{index}"));
    let mark = super::state::Refused::me(index, vec![differs]);
    let made = repo
        .seal_json(&mark)
        .and_then(|(_, sealed)| st.b.create_extra(&key, &sealed));
    if let Err(e) = made {
        tracing::error!("cannot leave this worker's refusal at {key}: {e}");
    }
}

/// The run's refusal marks ([`mark_refused`]), by worker index.
fn refused_marks(repo: &Repo, st: &State<'_>) -> restic::Result<Vec<super::state::Refused>> {
    let mut out = Vec::new();
    for name in st.b.list_extra(&st.key("refused"))? {
        let Some(index) = name.strip_prefix('w').and_then(|i| i.parse().ok()) else {
            continue;
        };
        let key = st.key(&format!("refused/{name}"));
        let Some(sealed) = st.b.read_extra(&key)? else {
            continue;
        };
        out.push(
            repo.open_json(&sealed, &key)
                .unwrap_or_else(|e| super::state::Refused::unreadable(index, &key, e)),
        );
    }
    out.sort_by_key(|r| r.worker);
    Ok(out)
}

/// Checks, once per run, that the storage refuses a second exclusive create of one
/// name: an S3 server that ignores `If-None-Match: *` would let two workers each win a
/// claim, a commit or `final` (two snapshots for one run).
fn check_exclusive_creates(st: &State<'_>, generation: u32) -> Result<(), ShardError> {
    let key = st.key(&format!("probe.g{generation}"));
    let first = st.b.create_extra(&key, b"first").map_err(failed)?;
    let second = st.b.create_extra(&key, b"second").map_err(failed)?;
    if first && second {
        return Err(failed(restic::Error::Other(format!(
            "{} does not refuse a second create of {key} (an S3 server that ignores \
             If-None-Match: *): shard runs need it to claim units and publish once",
            st.b.location()
        ))));
    }
    Ok(())
}

/// A new plan, the newest snapshot of the same path and label as the parent: weights
/// from the parent's trees (`sizes::TreeSizes`, no source I/O), or from a quick walk
/// of the source when there is no parent or its trees cannot be read.
/// The parent snapshot a plan is made against: the latest readable one of the source's
/// path with the run's label.
fn latest_parent(
    repo: &Repo,
    opts: &Options,
    source: &Path,
) -> restic::Result<Option<(Id, restic::snapshot::Snapshot)>> {
    let path = source.to_string_lossy().into_owned();
    Ok(restic::snapshot::load_readable(repo)?
        .into_iter()
        .filter(|(_, s)| s.paths == [path.as_str()] && s.tag("label") == Some(&opts.label))
        .max_by(|a, b| a.1.time.cmp(&b.1.time)))
}

fn make_plan(
    repo: &Repo,
    spec: &Spec,
    opts: &Options,
    source: &Path,
) -> Result<PlanFile, ShardError> {
    let parent = latest_parent(repo, opts, source).map_err(failed)?;
    let threads = super::sizes::planning_threads(opts.jobs, spec.count);
    let one_fs = super::sizes::source_device(source, opts.one_file_system).map_err(|e| {
        ShardError::Failed(crate::error::Error::Repository(format!(
            "cannot stat the source {}: {e}",
            crate::relpath::shown(source)
        )))
    })?;
    // No spine directory where the walk leaves contents out (`sizes::Excluding`).
    let excludes = opts
        .exclusion
        .build()
        .map_err(|e| ShardError::Usage(e.to_string()))?;
    let from_parent = parent.as_ref().and_then(|(id, snap)| {
        let comps: Vec<&OsStr> = source.iter().skip(1).collect();
        let sized = restic::backup::descend(repo, snap.tree, &comps).and_then(|t| match t {
            Some(t) => super::sizes::TreeSizes::read(repo, t, threads).map(Some),
            None => Ok(None),
        });
        match sized {
            Ok(Some(sizes)) => super::sizes::cut_if_fits(
                &super::sizes::Excluding {
                    sizes: &sizes,
                    excludes: &excludes,
                    source,
                },
                spec.count,
                source,
                &format!("snapshot {}'s trees", id.hex()),
                one_fs,
            ),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(
                    "cannot size the plan by snapshot {}'s trees ({e}); walking the source",
                    id.hex()
                );
                None
            }
        }
    });
    let (cut, sized_by) = match from_parent {
        Some(cut) => (cut, "snapshot"),
        None => {
            let fd = crate::fsx::open_dir(source).map_err(|e| {
                ShardError::Failed(crate::error::Error::Repository(format!(
                    "cannot open the source {}: {e}",
                    crate::relpath::shown(source)
                )))
            })?;
            let store = repo
                .backend
                .local_root()
                .and_then(crate::engine::walk::store_fence);
            let walked =
                super::sizes::WalkSizes::walk(source.to_path_buf(), fd, threads, one_fs, store);
            let seen = super::sizes::Excluding {
                sizes: &walked,
                excludes: &excludes,
                source,
            };
            (super::sizes::cut_for(&seen, spec.count), "walk")
        }
    };
    let host = match &parent {
        Some((_, p)) if !p.hostname.is_empty() => p.hostname.clone(),
        _ => crate::util::hostname(),
    };
    Ok(PlanFile {
        format: FORMAT,
        run: spec.run_id.clone(),
        workers: spec.count,
        source: source.to_path_buf(),
        label: opts.label.clone(),
        retain: opts.retain.unwrap_or(0),
        prev: parent.map(|(id, _)| id.hex()),
        prev_run: None,
        sized_by: sized_by.into(),
        created_at: crate::util::now_rfc3339(),
        created_by: crate::util::hostname(),
        host: Some(host),
        cap: cut.cap,
        part_dirs: 0,
        one_file_system: opts.one_file_system,
        spine: cut.spine.iter().map(RelPath::escaped).collect(),
        units: PlanFile::units_of(&cut),
        source_ino: None,
        warnings: Vec::new(),
        allow_empty: opts.allow_empty,
        owners_held: None,
        times_held: None,
        exclusion: opts.exclusion.clone(),
    })
}

/// The next unit to claim, and its generation: a home unit nobody has claimed, else
/// anyone's, largest first; else one whose claim is past its lease, or whose holder
/// is a process of this host that has exited, or this index's process on another host
/// that claimed it before this one started (a retried worker takes its own units back
/// at once; a live twin's later claims wait for their lease).
fn next_unit<'c>(
    st: &State<'_>,
    cut: &'c Cut,
    me: usize,
    started: chrono::DateTime<chrono::Utc>,
    done: &BTreeSet<String>,
) -> restic::Result<Option<(&'c Unit, u32)>> {
    let gens = st.claim_gens()?;
    let open: Vec<&Unit> = cut.units.iter().filter(|u| !done.contains(&u.id)).collect();
    let mut fresh: Vec<&Unit> = open
        .iter()
        .copied()
        .filter(|u| !gens.contains_key(&u.id))
        .collect();
    fresh.sort_by(|a, b| {
        (b.home == me)
            .cmp(&(a.home == me))
            .then(b.weight.cmp(&a.weight))
            .then(a.id.cmp(&b.id))
    });
    if let Some(u) = fresh.first() {
        return Ok(Some((u, 1)));
    }
    for u in open {
        let g = gens[&u.id];
        match st.claim_at(&u.id, g)? {
            Some((h, age)) => {
                // This index's claim made on another host (pid namespace, boot) before
                // this process started: a retried worker's dead predecessor's. One
                // that does not read has only its lease (its beats) to go by.
                let predecessor = h.as_ref().is_some_and(|h| {
                    h.worker == me && !h.shares_pids_here() && h.made_before(started)
                });
                if past_lease(age) || h.as_ref().is_some_and(Holder::is_dead_here) || predecessor {
                    return Ok(Some((u, g + 1)));
                }
            }
            // Gone: the next generation settles it.
            None => return Ok(Some((u, g + 1))),
        }
    }
    Ok(None)
}

/// Who finalizes: the worker that claims `finalize` (a claim like a unit's, with its
/// lease, taken over the same way when its holder stalls or dies), so that normally one
/// worker builds the spine's trees; `final` still settles a race. Waits for the
/// holder's `final` otherwise. `None` on SIGINT/SIGTERM.
fn publish(
    repo: &mut Repo,
    st: &State<'_>,
    spec: &Spec,
    opts: &Options,
    held: &Held,
    finalize: impl Fn(&mut Repo) -> Result<Finalized, ShardError>,
) -> Result<Option<Finalized>, ShardError> {
    let published = || Ok(st.read_final().map_err(failed)?.is_some());
    match take_turn(st, FINALIZE, spec.index, &opts.cancel, published)? {
        Turn::Cancelled => Ok(None),
        Turn::Done => finalize(repo).map(Some),
        Turn::Mine(g) => {
            held.hold(FINALIZE, g);
            crate::failpoint::hit("shard.repo.before_finalize").map_err(|e| {
                ShardError::Failed(crate::error::Error::Repository(format!("finalize: {e}")))
            })?;
            tracing::info!("every unit is committed; finalizing (generation {g})");
            let t = Instant::now();
            let r = finalize(repo);
            held.release(FINALIZE, g);
            if r.is_ok() {
                tracing::info!("finalized in {:.2} s", t.elapsed().as_secs_f64());
            }
            r.map(Some)
        }
    }
}

/// What [`take_turn`] found.
enum Turn {
    /// This worker holds the claim, of this generation.
    Mine(u32),
    /// What the claim is for is done (by another worker).
    Done,
    Cancelled,
}

/// Claims `name` (`claims/<name>.g<generation>`: the plan, finalize) unless `done`
/// says it is done already; while a live worker holds it within its lease, waits (a
/// poll backing off from 50 ms to 1 s); a stale or dead holder's claim is taken over
/// with the next generation.
fn take_turn(
    st: &State<'_>,
    name: &str,
    worker: usize,
    cancel: &AtomicBool,
    done: impl Fn() -> Result<bool, ShardError>,
) -> Result<Turn, ShardError> {
    let mut poll = Poll::new();
    loop {
        if done()? {
            return Ok(Turn::Done);
        }
        if cancel.load(Ordering::Relaxed) {
            return Ok(Turn::Cancelled);
        }
        let g = match st.claim_gens().map_err(failed)?.get(name) {
            None => 1,
            Some(&g) => match st.claim_at(name, g).map_err(failed)? {
                Some((h, age))
                    if !h.as_ref().is_some_and(Holder::is_dead_here) && !past_lease(age) =>
                {
                    poll.wait();
                    continue;
                }
                _ => g + 1,
            },
        };
        if st.claim(name, g, worker).map_err(failed)? {
            return Ok(Turn::Mine(g));
        }
    }
}

/// The longest wait between two looks of a waiting worker. Each look is a few requests
/// (`final`, the claims' listing, the open claims); the run ends when its slowest
/// waiting worker sees `final` and lets go of its lock (measured: with 1 s, the last
/// worker left 0.5 s after finalize, a sixth of a small run).
const POLL_MAX: Duration = Duration::from_millis(250);

/// Waiting for other workers: 50 ms, then half as long again each time, up to
/// [`POLL_MAX`].
struct Poll {
    next: Duration,
}

impl Poll {
    fn new() -> Poll {
        Poll {
            next: Duration::from_millis(50),
        }
    }

    fn wait(&mut self) {
        std::thread::sleep(self.next);
        self.next = (self.next * 3 / 2).min(POLL_MAX);
    }
}

/// Whether a lease renewed `age` ago ([`State::claim_at`]) has run out.
fn past_lease(age: Duration) -> bool {
    age > lease()
}

/// The claims this worker holds, whose leases the beat thread renews.
#[derive(Default)]
struct Held(Mutex<BTreeSet<(String, u32)>>);

impl Held {
    fn hold(&self, name: &str, generation: u32) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((name.to_string(), generation));
    }

    fn release(&self, name: &str, generation: u32) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(name.to_string(), generation));
    }

    fn now(&self) -> Vec<(String, u32)> {
        let held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        held.iter().cloned().collect()
    }
}

/// What one lane of [`build_units`] did.
#[derive(Default)]
struct Lane {
    units: Vec<String>,
    refused: Vec<String>,
    interrupted: Option<String>,
}

/// Builds units until every unit is committed (`true`) or SIGINT/SIGTERM (`false`),
/// in as many lanes as a store worker's (`super::worker::lanes`: three from 4 jobs on):
/// each lane claims, builds and commits one unit at a time, the lanes' walks share
/// `--jobs` permits, so one unit's ramp, drain and commit overlap the other's walk.
/// Each unit has a packer of its own (its packs and index written before its commit);
/// a blob an earlier unit of this worker stored is not stored again.
#[allow(clippy::too_many_arguments)]
fn build_units(
    repo: &mut Repo,
    st: &State<'_>,
    spec: &Spec,
    opts: &Options,
    source: &Path,
    cut: &Cut,
    plan_hash: &str,
    parent: &ParentOf,
    held: &Held,
    lock: restic::lock::Watch,
    report: &mut WorkerReport,
) -> Result<bool, ShardError> {
    let jobs = opts.jobs.max(1);
    // The plan's `one_file_system` (a worker started otherwise was refused): the
    // source root's device as this host sees it.
    let one_fs = super::sizes::source_device(source, opts.one_file_system).map_err(|e| {
        ShardError::Failed(crate::error::Error::Repository(format!(
            "cannot stat the source {}: {e}",
            crate::relpath::shown(source)
        )))
    })?;
    let src_root = crate::fsx::open_dir(source).map_err(|e| {
        ShardError::Failed(crate::error::Error::Repository(format!(
            "cannot open the source {}: {e}",
            crate::relpath::shown(source)
        )))
    })?;
    let lanes = LaneCtx {
        one_fs,
        st,
        spec,
        opts,
        source,
        src_root,
        cut,
        plan_hash,
        parent,
        held,
        lock,
        gate: crate::pool::Gate::new(jobs),
        known: Arc::default(),
        failed: AtomicBool::new(false),
        started: super::state::started_now(),
    };
    let shared: &Repo = repo;
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..super::worker::lanes(jobs))
            .map(|_| {
                let lanes = &lanes;
                s.spawn(move || {
                    let mut lane = Lane::default();
                    // A request given up as the worker was stopped: the lane stops,
                    // with the unit it held (if any) left to the others or a rerun.
                    let r = match lanes.run(shared, &mut lane) {
                        Err(ShardError::Stopped) => Ok(false),
                        r => r,
                    };
                    if r.is_err() {
                        lanes.failed.store(true, Ordering::Relaxed);
                    }
                    (r, lane)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Vec<_>>()
    });
    let known = std::mem::take(&mut *lanes.known.write().unwrap_or_else(|e| e.into_inner()));
    repo.index.absorb(known);
    let mut all = Ok(true);
    for (r, lane) in results {
        report.units.extend(lane.units);
        report.units_refused.extend(lane.refused);
        report.interrupted_units.extend(lane.interrupted);
        all = super::both_lanes(all, r);
    }
    all
}

/// What the lanes of [`build_units`] share.
struct LaneCtx<'a> {
    st: &'a State<'a>,
    spec: &'a Spec,
    opts: &'a Options,
    source: &'a Path,
    /// The source's root, opened once: each unit's directory is opened beneath it.
    src_root: std::os::fd::OwnedFd,
    cut: &'a Cut,
    plan_hash: &'a str,
    parent: &'a ParentOf,
    held: &'a Held,
    /// The worker's repository lock: a unit writes no index file once it is lost.
    lock: restic::lock::Watch,
    gate: crate::pool::Gate,
    /// Blobs the units this worker built stored.
    known: Arc<RwLock<Index>>,
    /// A lane failed: the others claim no more units.
    failed: AtomicBool,
    /// Before this process's first unit claim ([`super::state::started_now`]).
    started: chrono::DateTime<chrono::Utc>,
    /// `one_file_system`: the device of the source's root.
    one_fs: Option<u64>,
}

impl LaneCtx<'_> {
    /// One lane: claims, builds and commits units one at a time until every unit is
    /// committed (`true`), or the worker is stopped or another lane failed (`false`).
    fn run(&self, repo: &Repo, lane: &mut Lane) -> Result<bool, ShardError> {
        let (st, spec, cut) = (self.st, self.spec, self.cut);
        let mut poll = Poll::new();
        loop {
            if self.opts.cancel.load(Ordering::Relaxed) || self.failed.load(Ordering::Relaxed) {
                return Ok(false);
            }
            if st.read_final().map_err(failed)?.is_some() {
                return Ok(true);
            }
            let done = st.done().map_err(failed)?;
            if cut.units.iter().all(|u| done.contains(&u.id)) {
                return Ok(true);
            }
            let Some((unit, g)) =
                next_unit(st, cut, spec.index, self.started, &done).map_err(failed)?
            else {
                poll.wait();
                continue;
            };
            poll = Poll::new();
            if !st.claim(&unit.id, g, spec.index).map_err(failed)? {
                continue;
            }
            self.held.hold(&unit.id, g);
            // Until its commit is settled: a stop before that leaves it to others.
            lane.interrupted = Some(unit.id.clone());
            tracing::info!("unit {} claimed (generation {g})", unit.id);
            let t = Instant::now();
            let built = self.build(repo, unit);
            self.held.release(&unit.id, g);
            let Built {
                nodes,
                figures,
                problems,
                warnings,
                links,
            } = match built {
                Ok(b) => b,
                Err(restic::Error::Cancelled) => {
                    lane.interrupted = Some(unit.id.clone());
                    return Ok(false);
                }
                Err(e) => return Err(failed(e)),
            };
            crate::failpoint::hit("shard.repo.before_commit").map_err(|e| {
                ShardError::Failed(crate::error::Error::Repository(format!(
                    "commit {}: {e}",
                    unit.id
                )))
            })?;
            let commit = UnitDone {
                generation: g,
                worker: spec.index,
                host: crate::util::hostname(),
                pid: std::process::id(),
                at: crate::util::now_rfc3339(),
                plan: self.plan_hash.to_string(),
                nodes,
                figures,
                problems,
                warnings,
                links,
            };
            let (_, sealed) = repo.seal_json(&commit).map_err(failed)?;
            if st
                .b
                .create_extra(&st.done_key(&unit.id), &sealed)
                .map_err(failed)?
            {
                lane.interrupted = None;
                tracing::info!(
                    "unit {} committed (generation {g}) in {:.2} s",
                    unit.id,
                    t.elapsed().as_secs_f64()
                );
                lane.units.push(unit.id.clone());
            } else {
                lane.interrupted = None;
                tracing::warn!(
                    "unit {}: {}; this one's (generation {g}) is dropped",
                    unit.id,
                    first_commit(repo, st, &unit.id, g)
                );
                lane.refused.push(unit.id.clone());
            }
        }
    }

    fn build(&self, repo: &Repo, unit: &Unit) -> restic::Result<Built> {
        build_unit(
            repo,
            self.cut,
            unit,
            self.source,
            std::os::fd::AsFd::as_fd(&self.src_root),
            self.parent,
            self.opts,
            &self.gate,
            &self.known,
            self.one_fs,
            &self.lock,
        )
    }
}

/// What came first of a unit whose commit of generation `mine` was refused: the
/// commit of an earlier generation (its claim taken over while it was still being
/// built, or committed), or of a later one (this worker's claim taken over), or the
/// run published meanwhile (the commit a tombstone).
fn first_commit(repo: &Repo, st: &State<'_>, unit: &str, mine: u32) -> String {
    let key = st.done_key(unit);
    // (generation, worker, published since) of the commit that came first.
    let first = match st.b.read_extra(&key) {
        // Tidied: `final` names the generation kept, its claim the worker.
        Ok(Some(b)) if b == TOMBSTONE => st.read_final().ok().flatten().and_then(|f| {
            let g = f.kept.map(|k| k.get(unit).copied().unwrap_or(1))?;
            let w = st.claim_at(unit, g).ok().flatten().and_then(|(h, _)| h);
            Some((g, w.map(|h| h.worker), true))
        }),
        Ok(Some(b)) => repo
            .open_json::<UnitDone>(&b, &key)
            .ok()
            .map(|c| (c.generation, Some(c.worker), false)),
        _ => None,
    };
    match first {
        Some((g, w, published)) => format!(
            "{} generation's commit came first (generation {g}{}{})",
            if g < mine { "an earlier" } else { "a later" },
            w.map(|w| format!(", worker {w}")).unwrap_or_default(),
            if published {
                "; the run is published since"
            } else {
                ""
            }
        ),
        None => "another generation's commit came first".into(),
    }
}

/// One unit built, for its commit.
#[derive(Default)]
struct Built {
    nodes: Vec<Node>,
    figures: UnitFigures,
    problems: Vec<EntryProblem>,
    /// Trees of the parent snapshot that did not read ([`UnitDone::warnings`]).
    warnings: Vec<String>,
    /// [`UnitDone::links`].
    links: Vec<UnitLink>,
}

/// One unit's walk: its nodes, figures, problems and warnings (named from the source's
/// root). A tree of the parent snapshot that does not read is read in full, with a
/// warning, as in a single-node run.
#[allow(clippy::too_many_arguments)]
fn build_unit(
    repo: &Repo,
    cut: &Cut,
    unit: &Unit,
    source: &Path,
    src_root: std::os::fd::BorrowedFd<'_>,
    parent: &ParentOf,
    opts: &Options,
    gate: &crate::pool::Gate,
    known: &Arc<RwLock<Index>>,
    one_fs: Option<u64>,
    lock: &restic::lock::Watch,
) -> restic::Result<Built> {
    let comps: Vec<&OsStr> = unit.dir.components().map(OsStr::from_bytes).collect();
    let walk_root = if unit.dir.is_root() {
        source.to_path_buf()
    } else {
        source.join(unit.dir.as_path())
    };
    // The unit's directory, or one above it, replaced since the plan by a file or a
    // symlink: the unit has nothing (finalize leaves the entry out, a problem), rather
    // than failing every attempt or following the symlink out of the source.
    // With `one_file_system`, one on another file system than the source's root
    // (mounted since the plan: the planner cuts no mount) has nothing either, and
    // records that directory: finalize decides the mount points by what the units
    // recorded (`sizes::SpineMounts`), never by a `stat` of its own.
    if let Some(crossed) = one_fs.and_then(|dev| super::sizes::crossed_at(source, &unit.dir, dev)) {
        tracing::info!(
            "unit {}: {crossed} is on another file system (one_file_system): nothing walked",
            unit.id
        );
        return Ok(Built {
            figures: UnitFigures {
                crossed: Some(crossed.escaped()),
                ..UnitFigures::default()
            },
            ..Built::default()
        });
    }
    // A slow start of a unit's walk in the tests (tests/restic_shard.rs).
    crate::failpoint::hit("shard.repo.before_walk")
        .map_err(|e| restic::Error::Other(format!("unit {}: {e}", unit.id)))?;
    // The unit's directory beneath the source's root (opened once, by the path the user
    // gave), no symlink followed: one on the way swapped for a symlink since the plan
    // must not lead the walk out of the source.
    let opened = crate::fsx::open_dir_beneath(src_root, unit.dir.as_bytes());
    if let Err(e) = &opened
        && crate::fsx::gone_beneath(e)
    {
        return Ok(Built::default());
    }
    let mut warnings: Vec<String> = parent.warning.iter().cloned().collect();
    let descended = match parent.tree {
        Some(t) => restic::backup::descend(repo, t, &comps),
        None => Ok(None),
    };
    let take = cut.unit_names(unit);
    let excludes = match opts.exclusion.is_empty() {
        true => None,
        false => Some(
            opts.exclusion
                .build()
                .map_err(|e| restic::Error::Other(e.to_string()))?,
        ),
    };
    let walk_fd = match opened {
        Ok(fd) => fd,
        // There but not to be opened (permission denied, an I/O error, a stale handle):
        // the unit keeps the parent snapshot's entries of its names, as the store's
        // keeps its previous manifest's (`worker::keep_unreadable`). Without a parent
        // snapshot there is nothing to keep: the worker fails, saying what to do,
        // rather than publish the directory empty.
        Err(e) if parent.tree.is_none() => {
            return Err(restic::Error::Other(format!(
                "unit {}: cannot open {}: {e}: the directory is there but cannot be read, and {}; nothing of this run is published until it can be read (make it readable, or exclude it), then rerun with the same --run-id",
                unit.id,
                crate::relpath::shown(&walk_root),
                parent.none_to_keep()
            )));
        }
        Err(e) => {
            let kept = KeepPrev {
                repo,
                excludes: excludes.as_ref(),
                known,
                lock,
            };
            // Tests make the parent's trees down to the unit's directory not read here
            // (tests/restic_shard.rs): the directory's two faults at once.
            let descended = crate::failpoint::hit("shard.repo.keep_descend")
                .map_err(restic::io_err(
                    "read the parent snapshot's tree of",
                    &walk_root,
                ))
                .and(descended);
            return kept.unit(unit, descended, &take, e, warnings);
        }
    };
    // A tree of the parent that does not read: the unit's directory is read in full.
    // The parent's tree of the source not read (`parent.warning`) leaves it unknown too.
    let mut parent_unread = parent.tree.is_none() && parent.warning.is_some();
    let parent_tree = descended.unwrap_or_else(|e| {
        let w = restic::backup::unreadable_parent(parent.id.as_ref(), &unit.dir.escaped(), &e);
        tracing::warn!("{w}");
        warnings.push(w);
        parent_unread = true;
        None
    });
    let built = restic::backup::unit(
        repo,
        UnitSpec {
            walk_root,
            walk_fd: Some(walk_fd),
            dir: match unit.dir.is_root() {
                true => String::new(),
                false => unit.dir.escaped(),
            },
            names: &take,
            parent: parent.id,
            parent_tree,
            parent_unread,
            cancel: opts.cancel.clone(),
            jobs: opts.jobs,
            gate: Some(gate),
            known: known.clone(),
            lock: Some(lock.clone()),
            one_fs,
            excludes: excludes.as_ref(),
            rel: unit.dir.clone(),
        },
    )?;
    let r = built.report;
    let prefix = if unit.dir.is_root() {
        String::new()
    } else {
        format!("{}/", unit.dir.escaped())
    };
    let mut figures = UnitFigures {
        counts: Figures::of(&r),
        seconds: r.duration_seconds,
        crossed: None,
    };
    // Paths of the source, as the problems' (the unit's walk is rooted at its
    // directory).
    for m in &mut figures.counts.mount_points {
        *m = format!("{prefix}{m}");
    }
    let problems = r
        .problems
        .into_iter()
        .map(|mut p| {
            p.path = format!("{prefix}{}", p.path);
            p
        })
        .collect();
    for w in r.warnings {
        restic::backup::add_warning(&mut warnings, w);
    }
    let mut links = built.links;
    for n in links.iter_mut().flat_map(|l| l.names.iter_mut()) {
        *n = format!("{prefix}{n}");
    }
    Ok(Built {
        nodes: built.nodes,
        figures,
        problems,
        warnings,
        links,
    })
}

/// A unit whose directory cannot be opened: the parent snapshot's entries of its names
/// are kept ([`KeepPrev::unit`]).
struct KeepPrev<'a> {
    repo: &'a Repo,
    excludes: Option<&'a crate::exclude::Excludes>,
    known: &'a Arc<RwLock<Index>>,
    lock: &'a restic::lock::Watch,
}

impl KeepPrev<'_> {
    /// Unit `unit`'s commit when its directory could not be opened (`e`): the parent
    /// snapshot's nodes of its names (`tree`, the parent's tree of the unit's
    /// directory; `Ok(None)`: the parent has none; `Err`: the parent's trees down to it
    /// do not read), their blobs already in the repository, with an `unreadable`
    /// problem (the run `partial`), as the store's unit keeps its previous manifest's
    /// entries (`worker::keep_unreadable`) and a single-node run a subdirectory's
    /// ([`restic::keep`]: today's exclusions, entries lost left out, those of several
    /// links unlinked). Where the parent's tree does not read either, the unit has none
    /// of its names and the problem says both faults.
    fn unit(
        &self,
        unit: &Unit,
        tree: restic::Result<Option<Id>>,
        take: &(dyn Fn(&[u8]) -> bool + Sync),
        e: std::io::Error,
        warnings: Vec<String>,
    ) -> restic::Result<Built> {
        let packer = Packer::sharing(self.known.clone()).under(self.lock.clone());
        let keep = restic::keep::Keep {
            repo: self.repo,
            packer: &packer,
            excludes: self.excludes,
        };
        let mut counts = restic::keep::Kept::default();
        let mut nodes = Vec::new();
        let read = tree.and_then(|t| t.map(|id| keep.tree(&id)).transpose());
        let unread = match read {
            Ok(Some(t)) => {
                let mine: Vec<Node> = t
                    .nodes
                    .into_iter()
                    .filter(|n| take(&n.name_bytes()))
                    .collect();
                nodes = keep.nodes(&unit.dir, mine, &mut counts)?;
                None
            }
            Ok(None) => None,
            Err(u) => Some(u),
        };
        let (new, added) = packer.close(self.repo, true)?;
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .absorb(new);
        let shown = match unit.dir.is_root() {
            true => ".".to_string(),
            false => unit.dir.escaped(),
        };
        let error = match (nodes.len(), unread) {
            (_, Some(u)) => restic::keep::missing_message(
                &e,
                "this unit's names of it are",
                &format!(
                    "the directory could not be read, and the previous snapshot's tree of it does not read either ({u})"
                ),
            ),
            (0, None) => format!(
                "{e}; the previous snapshot holds none of this unit's names there{}",
                restic::keep::lost_note(counts.lost)
            ),
            (n, None) => restic::keep::kept_message(&e, n, " in this unit's names", counts.lost),
        };
        tracing::warn!("{shown}: list: {error}");
        Ok(Built {
            nodes,
            figures: UnitFigures {
                counts: Figures {
                    files: counts.files,
                    dirs: counts.dirs,
                    bytes_total: counts.bytes,
                    added,
                    ..Figures::default()
                },
                ..UnitFigures::default()
            },
            problems: vec![EntryProblem {
                path: shown,
                kind: "unreadable".into(),
                // As a single-node run names a directory it cannot open.
                action: "list".into(),
                error,
            }],
            warnings,
            links: Vec::new(),
        })
    }
}

/// The run's parent snapshot, as this worker's units read it.
#[derive(Default)]
struct ParentOf {
    id: Option<Id>,
    /// Its tree of the source (`None`: no parent, gone, or its trees do not read).
    tree: Option<Id>,
    /// Why its tree of the source does not read: in each commit of this worker.
    warning: Option<String>,
    /// Why a parent gives no tree of the source (its tree does not read, it is gone,
    /// it has no directory there): for the message of a unit that needed one.
    no_tree: Option<String>,
}

impl ParentOf {
    /// Why a unit's directory that cannot be read keeps none of its entries: the run
    /// has no previous snapshot, or has one that cannot give them (a unit with both
    /// faults said "no previous snapshot" while the run had one).
    fn none_to_keep(&self) -> String {
        match (&self.id, &self.no_tree) {
            (Some(id), Some(why)) => format!(
                "the run's previous snapshot {} cannot give its entries of it to keep: {why}",
                &id.hex()[..8]
            ),
            _ => "the run has no previous snapshot whose entries of it it could keep".into(),
        }
    }
}

/// What finalize leaves.
struct Finalized {
    snapshot: String,
    /// The snapshot file's bytes, base64 (as `final` holds them).
    sealed: String,
    /// This process publishes the run (created `published`).
    won: bool,
    /// The run was published by a process that is gone before it settled (applied the
    /// retention, tidied): this one completes that.
    complete: bool,
    /// The run's figures (when this process read the commits).
    totals: Option<RunTotals>,
    group: restic::forget::Group,
    /// This process wrote the snapshot file (the run is published), then could not
    /// create `published` (a full disk): why. Nobody is marked as the publisher, so
    /// this process neither applies the retention nor tidies nor records the run: a
    /// rerun (the worker, or `snapring finalize`) marks it and completes that.
    unmarked: Option<String>,
}

/// Publishes the run: the spine directories' trees (deepest first) from the committed
/// units' nodes and the spine's own metadata, the ancestors of the source, then
/// `final`, then the snapshot file. A run already published only has its snapshot
/// file written if a crash left it missing; one that another process published while
/// this one made its `final` (its inputs tidied away meanwhile) is that process's.
/// `lock_held` checks this process's repository lock before the snapshot file is
/// written.
#[allow(clippy::too_many_arguments)]
fn finalize(
    repo: &mut Repo,
    st: &State<'_>,
    (plan_file, allow_empty): (&PlanFile, bool),
    plan_hash: &str,
    cut: &Cut,
    source: &Path,
    (spec, final_before): (&Spec, bool),
    (lock_held, lock): (&dyn Fn() -> restic::Result<()>, &restic::lock::Watch),
    cancel: &AtomicBool,
) -> Result<Finalized, ShardError> {
    let group = restic::forget::Group {
        hostname: plan_file
            .host
            .clone()
            .unwrap_or_else(|| plan_file.created_by.clone()),
        paths: vec![source.to_string_lossy().into_owned()],
    };
    // `final` there when this process took its lock: a prune (restic's own, which
    // knows nothing of the run) may have deleted what its snapshot needs since.
    if let Some(f) = st.read_final().map_err(failed)? {
        return published(repo, st, (f, false, final_before), spec, group, lock_held);
    }
    // A worker refused as its settings differ from the plan's: the plan may be the
    // wrong one (made by a worker started wrong), so nothing is published.
    let refused = refused_marks(repo, st).map_err(failed)?;
    if !refused.is_empty() {
        return Err(super::state::refusal(&plan_file.run, &refused));
    }
    let (f, mine) = match make_final(
        repo,
        st,
        (plan_file, allow_empty),
        plan_hash,
        cut,
        source,
        spec,
        &group,
        lock,
        cancel,
    ) {
        Ok(f) => f,
        // Its inputs gone because another process published the run meanwhile (this
        // one stalled past its lease, taken over): the publisher's tidy replaced the
        // commits by tombstones, a prune since may have removed blobs. `final` settles
        // it; with no `final`, the failure is real.
        Err(e) => match st.read_final() {
            Ok(Some(f)) => {
                tracing::info!(
                    "run {}: published by another process meanwhile ({e})",
                    plan_file.run
                );
                (f, false)
            }
            _ => return Err(e),
        },
    };
    crate::failpoint::hit("shard.repo.before_snapshot").map_err(|e| {
        ShardError::Failed(crate::error::Error::Repository(format!(
            "write the snapshot: {e}"
        )))
    })?;
    published(repo, st, (f, mine, final_before), spec, group, lock_held)
}

/// Spine directory `d`'s problem of `kind` (`vanished`, `metadata`), from `e`.
fn spine_problem(d: &RelPath, kind: &str, e: restic::Error) -> EntryProblem {
    let action = match &e {
        restic::Error::Io { action, .. } => action.to_string(),
        _ => "stat".to_string(),
    };
    EntryProblem {
        path: d.escaped(),
        kind: kind.into(),
        action,
        error: e.to_string(),
    }
}

/// The run's `final`: this process's (the spine's trees made from the commits, the
/// snapshot sealed), created exclusively, or the one another process created first.
#[allow(clippy::too_many_arguments)]
fn make_final(
    repo: &mut Repo,
    st: &State<'_>,
    (plan_file, allow_empty): (&PlanFile, bool),
    plan_hash: &str,
    cut: &Cut,
    source: &Path,
    spec: &Spec,
    group: &restic::forget::Group,
    lock: &restic::lock::Watch,
    cancel: &AtomicBool,
) -> Result<(FinalFile, bool), ShardError> {
    // A finalizer stalled here while another publishes the run (the tests).
    let _ = crate::failpoint::hit("shard.repo.before_commits_read");
    // `snapring finalize` stopped by SIGINT/SIGTERM: nothing is written yet (no spine
    // tree, no `final`): it gives up, and the next finalize publishes the run. A
    // worker's flag is also its `--window`, which lets a finalize under way publish.
    if spec.index == BY_HAND && cancel.load(Ordering::Relaxed) {
        return Err(ShardError::Stopped);
    }
    let commits = super::par_map(8, &cut.units, |u| -> Result<UnitDone, ShardError> {
        let key = st.done_key(&u.id);
        let sealed =
            st.b.read_extra(&key)
                .map_err(failed)?
                .ok_or_else(|| failed(restic::Error::Other(format!("{key} is missing"))))?;
        // Created whole (an exclusive create): one that does not read was damaged since.
        let c: UnitDone = repo.open_json(&sealed, &key).map_err(|e| {
            failed(restic::Error::Other(format!(
                "{e}; the unit's commit was damaged since it was written, so the run cannot be published: back the source up again under a new run id (`snapring prune --drop-unfinished-runs` gives this run up)"
            )))
        })?;
        if c.plan != plan_hash {
            return Err(failed(restic::corrupt(&key, "made for another plan")));
        }
        Ok(c)
    })
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    // Other workers' index files, written since this one opened the repository.
    repo.reload_index().map_err(failed)?;
    for (u, c) in cut.units.iter().zip(&commits) {
        if let Some(missing) = c.nodes.iter().find_map(|n| missing_blob(repo, n)) {
            return Err(failed(restic::Error::Other(format!(
                "run {}: unit {} names blob {missing}, which no index of the repository \
                 holds (was it pruned while the run was unfinished?); nothing was \
                 published: back the source up again under a new run id",
                plan_file.run, u.id
            ))));
        }
    }
    let mut totals = RunTotals::default();
    // With `one_file_system`: decided by what the units recorded, never by a `stat`
    // here (the store's finalize decides the same way).
    let mounts = match plan_file.one_file_system {
        true => SpineMounts::of(&cut.units, |i| commits[i].figures.crossed.as_deref())
            .map_err(|m| failed(restic::Error::Other(m)))?,
        false => SpineMounts::default(),
    };
    for d in &mounts.partly {
        let p = SpineMounts::partly_problem(d);
        tracing::warn!("{d}: {}", p.error);
        totals.problems.push(EntryProblem {
            path: p.path,
            kind: "changed".into(),
            action: p.action,
            error: p.error,
        });
    }
    let mut per_worker: BTreeMap<usize, WorkerTotals> = BTreeMap::new();
    let mut by_dir: BTreeMap<&RelPath, Vec<Node>> = BTreeMap::new();
    let mut kept = BTreeMap::new();
    let mut unit_figures: Vec<(&super::plan::Unit, Figures)> = Vec::new();
    let mut commits = commits;
    let links: Vec<(&RelPath, Vec<UnitLink>)> = cut
        .units
        .iter()
        .zip(commits.iter_mut())
        .map(|(u, c)| (&u.dir, std::mem::take(&mut c.links)))
        .collect();
    for (u, c) in cut.units.iter().zip(commits) {
        let f = &c.figures;
        totals.units += 1;
        totals.takeovers += u64::from(c.generation > 1);
        if c.generation > 1 {
            kept.insert(u.id.clone(), c.generation);
        }
        totals.counts.add(&f.counts);
        totals.problems.extend(c.problems);
        for w in c.warnings {
            restic::backup::add_warning(&mut totals.warnings, w);
        }
        let w = per_worker.entry(c.worker).or_insert_with(|| WorkerTotals {
            worker: c.worker,
            ..Default::default()
        });
        w.units += 1;
        w.files += f.counts.files;
        w.files_read += f.counts.files_read;
        w.bytes_read += f.counts.bytes_read;
        w.seconds += f.seconds;
        unit_figures.push((u, f.counts.clone()));
        by_dir.entry(&u.dir).or_default().extend(c.nodes);
    }
    totals.per_worker = per_worker.into_values().collect();
    // Before anything of the spine is written: nothing to clean up when refused.
    if !allow_empty {
        refuse_no_files(repo, plan_file, source, &totals)?;
    }

    let names = Names::load();
    // No index file once the lock is lost: a prune may have removed the packs it names.
    let packer = Packer::default().under(lock.clone());
    join_links_across_units(repo, &packer, links, &mut by_dir, &mut totals.problems)
        .map_err(failed)?;
    let mut spine: Vec<&RelPath> = cut.spine.iter().collect();
    spine.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    if plan_file.one_file_system {
        // One `lstat` per spine directory (`dir_node_at` below reads each again).
        let dev =
            |d: &RelPath| std::fs::symlink_metadata(source.join(d.as_path())).map(|m| m.dev());
        let root_dev = dev(&RelPath::root()).map_err(|e| {
            failed(restic::Error::Other(format!(
                "cannot stat the source {}: {e}",
                crate::relpath::shown(source)
            )))
        })?;
        for d in cut.spine.iter().filter(|d| !d.is_root()) {
            if dev(d).is_ok_and(|v| mounts.mounted_since(d, v, root_dev)) {
                return Err(failed(restic::Error::Other(format!(
                    "{}: {}",
                    source.join(d.as_path()).display(),
                    super::sizes::MOUNTED_SINCE
                ))));
            }
        }
    }
    let points = mounts.sorted();
    if !points.is_empty() {
        let first: Vec<String> = points.iter().map(|d| d.escaped()).collect();
        totals.counts.add_mount_points(points.len() as u64, &first);
    }
    let mut made: BTreeMap<&RelPath, Node> = BTreeMap::new();
    let mut root = None;
    // The spine directories left out (gone from the source), each with what is below.
    let mut left_out: std::collections::HashSet<RelPath> = Default::default();
    for d in spine {
        let mut nodes = by_dir.remove(d).unwrap_or_default();
        if mounts.below(d) {
            // Inside a mount point (kept empty below): not in the snapshot.
            continue;
        }
        let kids: Vec<RelPath> = cut
            .spine_children(d)
            .into_iter()
            .map(|n| d.join(&n))
            .collect();
        for k in &kids {
            if let Some(n) = made.remove(k) {
                nodes.push(n);
            }
        }
        if !mounts.points.is_empty() && mounts.points.contains(d) {
            // A mount point (mounted since the plan): an empty tree, as a
            // single-node run's `-x` records one; its units built nothing.
            tracing::info!("{d}: another file system (one_file_system): kept empty");
            nodes.clear();
        }
        let id = packer
            .save(repo, BlobType::Tree, &Tree { nodes }.to_blob())
            .map_err(failed)?;
        totals.counts.dirs += 1;
        if d.is_root() {
            root = Some(id);
            continue;
        }
        let path = source.join(d.as_path());
        // A spine directory gone since the plan is left out; one replaced by another
        // kind of entry too (its units walked no name of it): the next run has it. Any
        // other error (permission denied, an I/O error, a stale handle) fails finalize:
        // the directory is there, and leaving it out would drop what its units backed
        // up (the store's finalize refuses alike); a rerun publishes the run.
        match dir_node_at(&path, d.file_name(), &names).map_err(|e| {
            failed(restic::Error::Other(format!(
                "{e}; nothing published: the spine directory is there but could not be read; a rerun with the same --run-id (the worker, or `snapring finalize`) publishes the run"
            )))
        })? {
            DirAt::Node(mut n, xattr_error) => {
                if let Some(e) = xattr_error {
                    tracing::warn!("{d}: {e}");
                    totals.problems.push(spine_problem(d, "metadata", e));
                }
                n.subtree = Some(id);
                made.insert(d, *n);
            }
            DirAt::Gone(e) => {
                tracing::warn!("{d}: {e}; left out of the snapshot");
                totals.problems.push(spine_problem(d, "vanished", e));
                // What its units (and this loop, for the spine below it) counted is
                // not in the snapshot: the run's figures say what it holds (a spine
                // directory below it left out already took its own off).
                let counted = |p: &RelPath| p.at_or_below(d) && !p.at_or_below_any(&left_out);
                for (_, f) in unit_figures.iter().filter(|(u, _)| counted(&u.dir)) {
                    let c = &mut totals.counts;
                    c.files = c.files.saturating_sub(f.files);
                    c.dirs = c.dirs.saturating_sub(f.dirs);
                    c.files_unchanged = c.files_unchanged.saturating_sub(f.files_unchanged);
                    c.bytes_total = c.bytes_total.saturating_sub(f.bytes_total);
                }
                let spine_below = cut
                    .spine
                    .iter()
                    .filter(|s| !mounts.below(s) && counted(s))
                    .count() as u64;
                totals.counts.dirs = totals.counts.dirs.saturating_sub(spine_below);
                left_out.insert(d.clone());
            }
        }
    }
    let root = root.ok_or_else(|| failed(restic::corrupt(st.key("plan"), "no root")))?;
    let comps: Vec<&OsStr> = source.iter().skip(1).collect();
    let wrap = Wrap {
        repo: &*repo,
        packer: &packer,
        names: &names,
        with_atime: false,
        parent_root: None,
    };
    let tree = wrap.wrap(&comps, root).map_err(failed)?;
    totals
        .counts
        .added
        .add(&packer.finish(repo).map_err(failed)?);
    let time = chrono::DateTime::parse_from_rfc3339(&plan_file.created_at)
        .map(|t| t.with_timezone(&chrono::Local))
        .unwrap_or_else(|_| chrono::Local::now());
    let snap = Snapshot {
        time: restic::go_time(time),
        parent: plan_file.prev.as_deref().and_then(|p| Id::parse(p).ok()),
        tree,
        paths: group.paths.clone(),
        hostname: group.hostname.clone(),
        username: crate::util::username(),
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        tags: {
            let mut tags = vec![
                "snapring".into(),
                format!("label={}", plan_file.label),
                format!("shard-run={}", plan_file.run),
            ];
            if plan_file.one_file_system {
                tags.push(restic::snapshot::ONE_FILE_SYSTEM_TAG.into());
            }
            tags.extend(restic::backup::exclusion_tags(&plan_file.exclusion));
            tags
        },
        excludes: plan_file.exclusion.excludes.clone(),
        program_version: Some(format!("snapring {}", env!("CARGO_PKG_VERSION"))),
        ..Default::default()
    };
    let (id, sealed) = repo.seal_json(&snap).map_err(failed)?;
    let (_, sealed_totals) = repo.seal_json(&totals).map_err(failed)?;
    let mine = FinalFile {
        snapshot: id.hex(),
        sealed: base64::engine::general_purpose::STANDARD.encode(&sealed),
        totals: Some(base64::engine::general_purpose::STANDARD.encode(&sealed_totals)),
        kept: Some(kept),
        worker: spec.index,
        at: crate::util::now_rfc3339(),
    };
    let body = serde_json::to_vec(&mine).expect("serializes");
    // Stopped by a signal while it read the commits and wrote the spine: still nothing
    // published (what it uploaded is reused by the next finalize).
    let _ = crate::failpoint::hit("shard.repo.before_final");
    if spec.index == BY_HAND && cancel.load(Ordering::Relaxed) {
        return Err(ShardError::Stopped);
    }
    let made = st.b.create_extra(&st.key("final"), &body).map_err(failed)?;
    if made {
        return Ok((mine, true));
    }
    let f = st.read_final().map_err(failed)?.ok_or_else(|| {
        failed(restic::Error::Other(format!(
            "{} vanished after its create was refused",
            st.key("final")
        )))
    })?;
    Ok((f, false))
}

/// The check across units of the inodes of several links ([`UnitLink`]): each unit's
/// walk records a name whose node says otherwise than its first name of the inode as no
/// hard link ([`restic::backup`]'s `Run::hard_link`), but only within the unit. An
/// inode whose names several units recorded (`links`, in the cut's order) is compared
/// here: the names of a unit whose nodes say otherwise than the first unit's (a file
/// changed between the two units' reads, or a file system giving two files one inode
/// number) get `inode: 0`, `links: 1` (their trees, and the trees above them up to the
/// unit's nodes in `by_dir`, written anew), each a `metadata` problem "join hard link"
/// naming the first unit's first name, as a single-node run records them: restic's
/// restore links the names of one `(device, inode)` and would give them the first
/// name's content.
fn join_links_across_units(
    repo: &Repo,
    packer: &Packer,
    links: Vec<(&RelPath, Vec<UnitLink>)>,
    by_dir: &mut BTreeMap<&RelPath, Vec<Node>>,
    problems: &mut Vec<EntryProblem>,
) -> restic::Result<()> {
    // By inode: the units' records, in the cut's order.
    let mut by_inode: BTreeMap<(u64, u64), Vec<(&RelPath, UnitLink)>> = BTreeMap::new();
    for (dir, ls) in links {
        for l in ls {
            by_inode
                .entry((l.device, l.inode))
                .or_default()
                .push((dir, l));
        }
    }
    // By unit directory: the names to record as no hard link, as components below it.
    let mut unlink: BTreeMap<&RelPath, Vec<Vec<Vec<u8>>>> = BTreeMap::new();
    for ((device, inode), records) in by_inode {
        let Some(((_, first), rest)) = records.split_first() else {
            continue;
        };
        let first_name = first.names.first().cloned().unwrap_or_default();
        for (dir, l) in rest.iter().filter(|(_, l)| l.sig != first.sig) {
            for name in &l.names {
                let p = RelPath::from_escaped(name)
                    .map_err(|e| restic::Error::Other(format!("a unit's name {name}: {e}")))?;
                let below: Vec<Vec<u8>> = p
                    .components()
                    .skip(dir.components().count())
                    .map(<[u8]>::to_vec)
                    .collect();
                tracing::warn!(
                    "{name}: reports the inode number of {first_name} (device {device}, inode {inode}) but not its size, times, mode, owner or content: backed up on its own, not as a hard link to it"
                );
                problems.push(EntryProblem {
                    path: name.clone(),
                    kind: "metadata".into(),
                    action: "join hard link".into(),
                    error: format!(
                        "reports the inode of {first_name} (device {device}, inode {inode}) with another size, times, mode, owner or content (a file system reusing inode numbers, or a file changed during the backup): backed up on its own, not linked to {first_name}"
                    ),
                });
                unlink.entry(*dir).or_default().push(below);
            }
        }
    }
    for (dir, paths) in unlink {
        if let Some(nodes) = by_dir.get_mut(dir) {
            unlink_names(repo, packer, nodes, &paths)?;
        }
    }
    Ok(())
}

/// Records the names at `paths` (components below the directory whose `nodes` these
/// are) as no hard link: `inode: 0`, `links: 1`; the trees on the way are written anew.
fn unlink_names(
    repo: &Repo,
    packer: &Packer,
    nodes: &mut [Node],
    paths: &[Vec<Vec<u8>>],
) -> restic::Result<()> {
    for n in nodes.iter_mut() {
        let name = n.name_bytes();
        let mine: Vec<&Vec<Vec<u8>>> = paths
            .iter()
            .filter(|p| p.first().is_some_and(|c| *c == name))
            .collect();
        if mine.is_empty() {
            continue;
        }
        if mine.iter().any(|p| p.len() == 1) {
            n.inode = 0;
            n.links = 1;
        }
        let below: Vec<Vec<Vec<u8>>> = mine
            .iter()
            .filter(|p| p.len() > 1)
            .map(|p| p[1..].to_vec())
            .collect();
        let Some(id) = n.subtree.filter(|_| !below.is_empty()) else {
            continue;
        };
        let mut tree = Tree::from_blob(&repo.read_blob(BlobType::Tree, &id)?, &id)?;
        unlink_names(repo, packer, &mut tree.nodes, &below)?;
        n.subtree = Some(packer.save(repo, BlobType::Tree, &tree.to_blob())?);
    }
    Ok(())
}

/// The guard of a run that keeps no file (`Error::NoFilesLeft`, as the store's finalize
/// and a single-node backup): the units' summed figures (`totals`) hold no file while
/// the plan's parent snapshot, of the plan's label, holds a file below the source; or
/// they hold fewer than a tenth of its files, of at least 100 (`Error::SourceShrank`,
/// `restic::backup::shrunk_from`).
/// Published, the publisher's `--retain` would forget the good history. Refused before
/// `final` is written: nothing is published or forgotten, the run stays as it is (its
/// units committed, their blobs indexed), a finalize tried again refuses the same way,
/// one given `--allow-empty` publishes it, and `snapring prune
/// --drop-unfinished-runs` drops it. A parent of another label (a lineage's first run
/// of a label), or one forgotten since the plan, does not count.
fn refuse_no_files(
    repo: &Repo,
    plan: &PlanFile,
    source: &Path,
    totals: &RunTotals,
) -> Result<(), ShardError> {
    let kept = totals.counts.files;
    let Some(id) = plan.prev.as_deref().and_then(|p| Id::parse(p).ok()) else {
        return Ok(());
    };
    if !repo
        .backend
        .list(Kind::Snapshot)
        .map_err(failed)?
        .contains(&id)
    {
        return Ok(());
    }
    let snap: Snapshot = repo.load_json(Kind::Snapshot, &id).map_err(failed)?;
    if snap.tag("label") != Some(plan.label.as_str()) {
        return Ok(());
    }
    let comps: Vec<&OsStr> = source.iter().skip(1).collect();
    let tree = match restic::backup::descend(repo, snap.tree, &comps) {
        Ok(tree) => tree,
        // A run that kept files against a parent whose tree does not read (its units
        // read their directories in full and said so): nothing to compare with.
        Err(_) if kept > 0 => None,
        Err(e) => return Err(failed(e)),
    };
    let Some(tree) = tree else {
        return Ok(());
    };
    let prev = format!("{} ({})", &id.hex()[..8], snap.time);
    let by = match plan.exclusion.is_empty() {
        true => String::new(),
        false => plan.exclusion.named(),
    };
    let unread = totals
        .problems
        .iter()
        .filter(|p| p.kind == "unreadable" && p.action == "list")
        .count() as u64;
    if kept > 0 {
        return match restic::backup::shrunk_from(repo, tree, kept).map_err(failed)? {
            None => Ok(()),
            Some(prev_files) => Err(ShardError::Failed(crate::error::Error::SourceShrank {
                path: source.to_path_buf(),
                prev,
                prev_files,
                kept,
                by,
                unread,
            })),
        };
    }
    if !restic::backup::tree_has_file(repo, tree).map_err(failed)? {
        return Ok(());
    }
    Err(ShardError::Failed(crate::error::Error::NoFilesLeft {
        path: source.to_path_buf(),
        prev,
        by,
        unread,
    }))
}

/// Writes the snapshot file `final` names if it is missing, then settles who publishes
/// the run (records it, notifies, applies the retention): the process that creates
/// `published`, exclusively, once the snapshot file is there. Normally the worker that
/// wrote `final`; after a crash between `final` and the end of that, the rerun. The
/// snapshot file is written only while this process's repository lock is held
/// (`lock_held`): with it lost, a `forget` may have removed the snapshot since another
/// process wrote it. `mine`: this process has just created `final`. `check`: `final`
/// was there before this process took its lock, so a prune (restic's own) may have
/// deleted what the snapshot needs since: the snapshot file, if missing, is written
/// only once every blob of its trees is found indexed ([`first_missing_blob`]).
/// A `published` that does not read (damaged: it is created whole) is no proof of a
/// publish: the run is published if its snapshot file is there, or if it was settled;
/// else this process repairs it if it has just created `final` (the snapshot cannot
/// have been written before), and refuses otherwise, saying what to do.
fn published(
    repo: &mut Repo,
    st: &State<'_>,
    (f, mine, check): (FinalFile, bool, bool),
    spec: &Spec,
    group: restic::forget::Group,
    lock_held: &dyn Fn() -> restic::Result<()>,
) -> Result<Finalized, ShardError> {
    let by_another = |f: FinalFile, group, complete| Finalized {
        snapshot: f.snapshot,
        sealed: f.sealed,
        won: false,
        complete,
        totals: None,
        group,
        unmarked: None,
    };
    // Published already: its snapshot file was written once; if it is gone now, it was
    // forgotten (a later run's retention, `forget`) and stays so.
    let mut repair = false;
    match read_published(st).map_err(failed)? {
        Marker::Reads(by) => {
            let complete = unsettled(st, &by, spec).map_err(failed)?;
            return Ok(by_another(f, group, complete));
        }
        Marker::Damaged(by) => {
            let there = snapshot_there(repo, &f)?;
            let settled = st.b.read_extra(&st.key("settled")).map_err(failed)?;
            if there || settled.is_some() {
                tracing::warn!(
                    "run {}: {} does not read ({} bytes); the run is published (its snapshot {} {})",
                    spec.run_id,
                    st.key("published"),
                    by.len(),
                    &f.snapshot[..8.min(f.snapshot.len())],
                    if there {
                        "is there"
                    } else {
                        "was settled, and forgotten since"
                    }
                );
                let complete = unsettled(st, &by, spec).map_err(failed)?;
                // Written anew (best effort), so that `status` and the next process read it.
                let body = serde_json::to_vec(&Holder::me(spec.index)).expect("serializes");
                if let Err(e) = st.b.put_extra(&st.key("published"), &body) {
                    tracing::warn!("cannot write {} anew: {e}", st.key("published"));
                }
                return Ok(by_another(f, group, complete));
            }
            if !mine {
                return Err(failed(restic::Error::Other(format!(
                    "run {run}: {key} does not read ({n} bytes: damaged), and the snapshot `final` decided, {snap}, is not in the repository: it was never written, or it was forgotten since; nothing written. If `snapring snapshots` never listed {snap} (the run was never published), remove {key} from the repository and run `snapring finalize --dest URL --run-id {run}`; if it was forgotten, leave the run as it is",
                    run = spec.run_id,
                    key = st.key("published"),
                    n = by.len(),
                    snap = &f.snapshot[..8.min(f.snapshot.len())],
                ))));
            }
            tracing::warn!(
                "run {}: {} does not read ({} bytes: damaged) and the run has just been decided by this process: publishing it and writing the marker anew",
                spec.run_id,
                st.key("published"),
                by.len()
            );
            repair = true;
        }
        Marker::Missing => {}
    }
    // A finalizer stalled or killed between its look at `published` and the snapshot
    // file, and between the snapshot file and `published` (the tests).
    fp("shard.repo.before_snapshot_file")?;
    // As restic before it writes a snapshot: not with the lock lost (this process
    // stopped that long; another may have published the run, a `forget` removed the
    // snapshot since).
    if let Err(e) = lock_held() {
        if st
            .b
            .read_extra(&st.key("published"))
            .map_err(failed)?
            .is_some()
        {
            tracing::warn!("run {}: {e}; published by another process", spec.run_id);
            return Ok(by_another(f, group, false));
        }
        return Err(ShardError::Retry(format!(
            "run {}: {e}; its snapshot file was not written (run the worker or `snapring finalize` again)",
            spec.run_id
        )));
    }
    if check && !snapshot_there(repo, &f)? {
        refuse_pruned(repo, st, &f, spec)?;
    }
    write_snapshot(repo, &f)?;
    fp("shard.repo.before_published")?;
    // Unique to this process: a retried create that landed finds its own bytes.
    let body = serde_json::to_vec(&Holder::me(spec.index)).expect("serializes");
    let marked = match repair {
        true => st.b.put_extra(&st.key("published"), &body).map(|()| true),
        false => st.b.create_extra(&st.key("published"), &body),
    };
    // The snapshot file is written: the run is published whatever comes next. A
    // `published` not created (a full disk) is told as what failed after the publish,
    // not as the run's failure.
    let (won, unmarked) = match marked {
        Ok(won) => (won, None),
        Err(e) => {
            let again = match spec.index {
                BY_HAND => format!("run `snapring finalize --run-id {}` again", spec.run_id),
                _ => format!(
                    "rerun this worker (same index and run id) or run `snapring finalize --run-id {}`",
                    spec.run_id
                ),
            };
            let w = format!(
                "run {}: its snapshot {} is written (the run is published), but marking it published failed: {e}; its retention and tidy are not done and it is not recorded: free space (or mend what failed), then {again}, which completes them",
                spec.run_id,
                &f.snapshot[..8.min(f.snapshot.len())],
            );
            (false, Some(w))
        }
    };
    if won {
        // The publisher killed before its retention and tidy (the tests).
        fp("shard.repo.after_published")?;
    }
    let totals = match &f.totals {
        Some(t) if won || unmarked.is_some() => {
            let sealed = base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(|e| failed(restic::corrupt(st.key("final"), e)))?;
            Some(repo.open_json(&sealed, &st.key("final")).map_err(failed)?)
        }
        _ => None,
    };
    Ok(Finalized {
        snapshot: f.snapshot,
        sealed: f.sealed,
        won,
        complete: false,
        totals,
        group,
        unmarked,
    })
}

/// What `published` holds.
enum Marker {
    Missing,
    /// A holder (its bytes): the run is published.
    Reads(Vec<u8>),
    /// Bytes that are no holder (damaged: every `published` is created whole).
    Damaged(Vec<u8>),
}

/// The run's `published`, read.
fn read_published(st: &State<'_>) -> restic::Result<Marker> {
    Ok(match st.b.read_extra(&st.key("published"))? {
        None => Marker::Missing,
        Some(b) if serde_json::from_slice::<Holder>(&b).is_ok() => Marker::Reads(b),
        Some(b) => Marker::Damaged(b),
    })
}

/// When the run was published (its `published` holder's `at`, empty if it has none),
/// if `final` and a `published` that reads are there.
fn published_at(st: &State<'_>) -> restic::Result<Option<String>> {
    if st.read_final()?.is_none() {
        return Ok(None);
    }
    Ok(match read_published(st)? {
        Marker::Reads(b) => Some(
            serde_json::from_slice::<Holder>(&b)
                .map(|h| h.at)
                .unwrap_or_default(),
        ),
        _ => None,
    })
}

/// Whether the snapshot file `final` names is in the repository.
fn snapshot_there(repo: &Repo, f: &FinalFile) -> Result<bool, ShardError> {
    let id = Id::parse(&f.snapshot).map_err(failed)?;
    Ok(repo
        .backend
        .list(Kind::Snapshot)
        .map_err(failed)?
        .contains(&id))
}

/// Before the snapshot file `final` decided is written by a process that found `final`
/// there when it took its lock: the index read again, the snapshot's trees walked, and
/// the run refused for good (nothing written) if a blob they need is in no index (a
/// prune, restic's own, deleted the run's packs while its snapshot file was missing).
fn refuse_pruned(
    repo: &mut Repo,
    st: &State<'_>,
    f: &FinalFile,
    spec: &Spec,
) -> Result<(), ShardError> {
    repo.refresh_index().map_err(failed)?;
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(&f.sealed)
        .map_err(|e| failed(restic::corrupt(st.key("final"), e)))?;
    let snap: Snapshot = repo.open_json(&sealed, &st.key("final")).map_err(failed)?;
    if let Some((kind, id)) = first_missing_blob(repo, snap.tree).map_err(failed)? {
        return Err(failed(restic::Error::Other(format!(
            "run {}: its snapshot {} (decided in `final`, its file not in the repository) needs {} blob {id}, which no index of the repository holds (was it pruned while the run was unfinished, by restic's own prune?); the snapshot is not written and the run can never be published: back the source up again under a new run id",
            spec.run_id,
            &f.snapshot[..8.min(f.snapshot.len())],
            match kind {
                BlobType::Tree => "tree",
                BlobType::Data => "data",
            }
        ))));
    }
    Ok(())
}

/// The first blob below tree `root` (itself, the trees below it, their files' content)
/// that no index of `repo` holds: every distinct tree read once, a level at a time on 8
/// threads.
fn first_missing_blob(repo: &Repo, root: Id) -> restic::Result<Option<(BlobType, Id)>> {
    let mut seen: std::collections::HashSet<Id> = [root].into_iter().collect();
    let mut level = vec![root];
    while !level.is_empty() {
        if let Some(t) = level
            .iter()
            .find(|t| !repo.index.contains(BlobType::Tree, t))
        {
            return Ok(Some((BlobType::Tree, *t)));
        }
        let trees = super::par_map(8, &level, |t| {
            repo.read_blob(BlobType::Tree, t)
                .and_then(|b| Tree::from_blob(&b, t))
        });
        let mut next = Vec::new();
        for tree in trees {
            for n in tree?.nodes {
                if let Some(c) = n
                    .content
                    .iter()
                    .flatten()
                    .find(|c| !repo.index.contains(BlobType::Data, c))
                {
                    return Ok(Some((BlobType::Data, *c)));
                }
                if let Some(s) = n.subtree
                    && seen.insert(s)
                {
                    next.push(s);
                }
            }
        }
        level = next;
    }
    Ok(None)
}

/// Whether this process completes the retention and tidy of a run published by
/// `by` (the bytes of `published`): not settled, and its publisher gone (dead on this
/// host; `published` older than two leases, its publisher elsewhere; or `snapring
/// finalize` asked). A publisher still at it is left to finish (the run's other
/// workers must not all wait for the exclusive lock). The age of `published` is by
/// the storage's clock, as a lease's ([`State::age`]): judged by the publisher's time
/// in it against this host's clock, a worker whose clock was ahead took a live
/// publisher for gone, and one whose clock was behind (by more than two leases)
/// never found a dead one's run to complete.
fn unsettled(st: &State<'_>, by: &[u8], spec: &Spec) -> restic::Result<bool> {
    let gone = match serde_json::from_slice::<Holder>(by) {
        Ok(h) => spec.index == BY_HAND || h.is_dead_here() || published_age(st, &h)? > 2 * lease(),
        Err(_) => true,
    };
    Ok(gone && st.b.read_extra(&st.key("settled"))?.is_none())
}

/// How long ago `published` (its holder `h`, as read) was written, by the storage's
/// clock where it says ([`State::age`]); gone since it was read: the longest.
fn published_age(st: &State<'_>, h: &Holder) -> restic::Result<Duration> {
    Ok(match st.b.read_extra_written(&st.key("published"))? {
        Some((_, written)) => st.age(written, Some(h)),
        None => Duration::MAX,
    })
}

/// The worker index a `published` made by a forget names ([`before_forget`]).
const FORGET: usize = usize::MAX - 1;

/// Every forget snapring makes calls it (`restic::forget::Policy::before_remove`, under
/// its exclusive lock)
/// before it removes snapshot `id`: a shard run's snapshot (tags `snapring` and
/// `shard-run=RUN`, the snapshot `final` names) whose run has no `published` yet (its
/// publisher killed between the snapshot file and `published`) is marked published
/// first, so that no finalize of the run writes the forgotten snapshot back. Its
/// retention and tidy are left to the run's next finalize (the run is not settled).
pub fn before_forget(b: &dyn Backend, id: &Id, snap: &Snapshot) -> restic::Result<()> {
    let Some(run) = snap.tag("shard-run") else {
        return Ok(());
    };
    if !snap.tags.iter().any(|t| t == "snapring") {
        return Ok(());
    }
    let st = State::new(b, run);
    let marker = read_published(&st)?;
    if matches!(marker, Marker::Reads(_)) {
        return Ok(());
    }
    // Damaged or missing: not a snapshot this run's finalize would write.
    let Ok(Some(f)) = st.read_final() else {
        return Ok(());
    };
    if f.snapshot != id.hex() {
        return Ok(());
    }
    let body = serde_json::to_vec(&Holder::me(FORGET)).expect("serializes");
    // One that does not read is written anew: a finalize would not take it as a
    // publish, and would write the forgotten snapshot back.
    let made = match marker {
        Marker::Damaged(_) => b.put_extra(&st.key("published"), &body).map(|()| true)?,
        _ => b.create_extra(&st.key("published"), &body)?,
    };
    if made {
        tracing::info!(
            "run {run}: its snapshot {} is forgotten before its publisher marked the run published; marked now",
            id.hex()
        );
    }
    Ok(())
}

/// A failpoint of publishing (`crate::failpoint`), its error a failure to publish.
fn fp(name: &str) -> Result<(), ShardError> {
    crate::failpoint::hit(name)
        .map_err(|e| ShardError::Failed(crate::error::Error::Repository(format!("publish: {e}"))))
}

/// A blob the node names (its tree, or its content) that no index holds.
fn missing_blob(repo: &Repo, n: &Node) -> Option<Id> {
    if let Some(t) = n.subtree
        && !repo.index.contains(BlobType::Tree, &t)
    {
        return Some(t);
    }
    n.content
        .iter()
        .flatten()
        .find(|id| !repo.index.contains(BlobType::Data, id))
        .copied()
}

/// What the shard runs of `repo` that have not published their snapshot have written
/// and no snapshot references yet (`prune` keeps it, `restic::prune::Roots`): the
/// nodes of their committed units, or, for a run whose `final` is written but not its
/// snapshot file, that snapshot's tree. A run's rerun builds on its commits, so pruning
/// their blobs would make it publish a snapshot that names missing data. A run given
/// up for good keeps its data until `snapring/shards/<run-id>` is removed. Reads the
/// repository (call it under prune's exclusive lock).
pub fn unpublished_roots(repo: &Repo) -> restic::Result<restic::prune::Roots> {
    let b = repo.backend.clone();
    let snaps: BTreeSet<Id> = b.list(Kind::Snapshot)?.into_iter().collect();
    let mut roots = restic::prune::Roots::default();
    for run in b.list_extra("snapring/shards")? {
        let st = State::new(b.as_ref(), &run);
        // Its snapshot written, and maybe forgotten since: nothing to keep (nor is its
        // `final` needed, which may be damaged). A `published` that does not read is no
        // proof of that: the snapshot file is looked for below.
        if matches!(read_published(&st)?, Marker::Reads(_)) {
            continue;
        }
        if let Some(f) = st.read_final()? {
            let id = Id::parse(&f.snapshot)?;
            if snaps.contains(&id) {
                continue;
            }
            let sealed = base64::engine::general_purpose::STANDARD
                .decode(&f.sealed)
                .map_err(|e| restic::corrupt(st.key("final"), e))?;
            let snap: Snapshot = repo.open_json(&sealed, &st.key("final"))?;
            roots.trees.push(snap.tree);
            roots.runs += 1;
            continue;
        }
        let done = st.done()?;
        roots.runs += u64::from(!done.is_empty());
        for unit in done {
            let key = st.done_key(&unit);
            let Some(sealed) = b.read_extra(&key)? else {
                continue;
            };
            let c: UnitDone = repo.open_json(&sealed, &key)?;
            for n in c.nodes {
                roots.trees.extend(n.subtree);
                roots.data.extend(n.content.unwrap_or_default());
            }
        }
    }
    Ok(roots)
}

/// Writes the snapshot file `final` names, if it is not there (content-addressed: the
/// same bytes whoever writes them).
fn write_snapshot(repo: &Repo, f: &FinalFile) -> Result<(), ShardError> {
    let id = Id::parse(&f.snapshot).map_err(failed)?;
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(&f.sealed)
        .map_err(|e| failed(restic::corrupt("final", e)))?;
    if Id::hash(&sealed) != id {
        return Err(failed(restic::corrupt(
            "final",
            "the snapshot's bytes do not match its id",
        )));
    }
    if repo
        .backend
        .list(Kind::Snapshot)
        .map_err(failed)?
        .contains(&id)
    {
        return Ok(());
    }
    repo.backend
        .write_vec(Kind::Snapshot, &id, sealed)
        .map_err(failed)
}

/// A published run's commits (they hold the units' nodes) and lease renewals are not
/// needed any more (`final` holds the snapshot), best effort: each commit is replaced
/// by a small [`TOMBSTONE`], which still refuses a late commit of its unit; the
/// renewals are removed. The plan, the claims (who built which unit, for `status`) and
/// `final` stay, so that a late worker of the run finds it published.
fn tidy(st: &State<'_>) {
    let done = st.b.list_extra(&st.key("done")).unwrap_or_default();
    super::par_map(8, &done, |u| {
        if let Err(e) = st.b.put_extra(&st.done_key(u), TOMBSTONE) {
            tracing::warn!("cannot tidy the published run's commit of {u}: {e}");
        }
    });
    if let Err(e) = st.b.remove_extra_tree(&st.key("beats")) {
        tracing::warn!("cannot remove the published run's lease renewals: {e}");
    }
}

/// The thread running [`tidy`], joined on every way out of [`work`].
struct Tidying(Option<std::thread::JoinHandle<()>>);

impl Drop for Tidying {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// What a published run's commit is replaced by.
const TOMBSTONE: &[u8] = b"published\n";

/// The shard runs in the repository that are not published (no `final`): the packs of
/// their committed units are referenced by no snapshot yet, so a prune would delete
/// them and the run could not be published.
pub fn unfinished_runs(b: &dyn Backend) -> restic::Result<Vec<String>> {
    let mut out = Vec::new();
    for run in b.list_extra(RUNS)? {
        if b.read_extra(&format!("{RUNS}/{run}/final"))?.is_none() {
            out.push(run);
        }
    }
    Ok(out)
}

/// Removes an unfinished run's files (`prune --drop-unfinished-runs`): its committed
/// units become unreferenced packs, for the prune to remove.
pub fn drop_run(b: &dyn Backend, run: &str) -> restic::Result<()> {
    b.remove_extra_tree(&format!("{RUNS}/{run}"))
}

/// `snapring status --dest URL --run-id RUN`: the plan, each unit's state, each
/// worker's units, whether the run is published. Takes no lock, writes nothing.
pub fn status(repo: &Repo, run: &str) -> restic::Result<super::status::RunStatus> {
    let st = State::read_only(repo.backend.as_ref(), run);
    let Some(sealed) = st.b.read_extra(&st.key("plan"))? else {
        return Err(restic::Error::Other(format!(
            "no shard run {run} in {} (no worker has written its plan)",
            repo.backend.location()
        )));
    };
    let plan: PlanFile = repo.open_json(&sealed, &st.key("plan"))?;
    let fin = st.read_final()?;
    let done: Vec<String> = match fin {
        Some(_) => Vec::new(),
        None => st.done()?.into_iter().collect(),
    };
    let commits: BTreeMap<String, (u32, usize)> = super::par_map(8, &done, |u| {
        let key = st.done_key(u);
        let c =
            st.b.read_extra(&key)?
                .map(|b| repo.open_json::<UnitDone>(&b, &key))
                .transpose()?;
        Ok::<_, restic::Error>(c.map(|c| (u.clone(), (c.generation, c.worker))))
    })
    .into_iter()
    .filter_map(Result::transpose)
    .collect::<restic::Result<_>>()?;
    let gens = st.claim_gens()?;
    // Once decided, the generation whose commit was kept (the first unless `final`
    // names another): its claim's holder built the unit, whatever claims came later.
    let kept = fin.as_ref().and_then(|f| f.kept.as_ref());
    // A claim that does not read: its holder is not known; it is stale once its lease
    // (its beats) has lapsed, as a worker would take it over.
    let mut claims: BTreeMap<String, (u32, Option<usize>, bool)> = BTreeMap::new();
    for (u, newest) in &gens {
        let g = &kept.map_or(*newest, |k| k.get(u).copied().unwrap_or(1));
        if let Some((h, age)) = st.claim_at(u, *g)? {
            let stale = past_lease(age) || h.as_ref().is_some_and(Holder::is_dead_here);
            claims.insert(u.clone(), (*g, h.map(|h| h.worker), stale));
        }
    }
    let decided = fin.is_some();
    let (per, list) = super::status::units_of(&plan, |id| {
        match (commits.get(id), claims.get(id)) {
            (Some(&(g, w)), _) => ("done", Some(g), Some(w)),
            // Past `final`: every unit was committed; once published, its commits are
            // tombstones, the claims of the kept generations say who built what.
            (None, c) if decided => ("done", c.map(|c| c.0), c.and_then(|c| c.1)),
            (None, Some(&(g, w, true))) => ("stale", Some(g), w),
            (None, Some(&(g, w, false))) => ("claimed", Some(g), w),
            (None, None) => ("pending", None, None),
        }
    });
    // Where the snapshot `final` decided is: `final` alone does not make the run
    // published (a finalizer killed before the snapshot file), and a published run's
    // snapshot may have been forgotten since (one listing of `snapshots/`).
    let state = match &fin {
        None => None,
        Some(f) => {
            // One that does not read is no proof of a publish (`published`).
            let published = matches!(read_published(&st)?, Marker::Reads(_));
            let there = Id::parse(&f.snapshot)
                .map(|id| repo.backend.list(Kind::Snapshot).map(|l| l.contains(&id)))
                .unwrap_or(Ok(false))?;
            Some(match (published, there) {
                (false, false) => "decided",
                (false, true) => "written",
                (true, true) => "published",
                (true, false) => "forgotten",
            })
        }
    };
    let finalized = matches!(state, Some("published" | "forgotten"));
    Ok(super::status::RunStatus {
        snapshot_state: state.map(String::from),
        refused: refused_marks(repo, &st)?,
        ..super::status::RunStatus::of(run, &plan, per, list, finalized, fin.map(|f| f.snapshot))
    })
}

/// `snapring finalize --dest URL --run-id RUN`: publishes a run whose units are all
/// committed (its workers gone before one of them did), as the last worker would;
/// `Retry` while units are not committed. Reads the spine directories' metadata from
/// the plan's source, so it runs where the source is mounted.
pub fn finalize_run(
    repo: &mut Repo,
    run: &str,
    (opts_retain, allow_empty): (Option<u32>, bool),
    cancel: Arc<AtomicBool>,
) -> Result<WorkerReport, ShardError> {
    let st_b = repo.backend.clone();
    let st = State::new(st_b.as_ref(), run);
    let Some(sealed) = st.b.read_extra(&st.key("plan")).map_err(failed)? else {
        return Err(ShardError::Usage(format!(
            "no shard run {run} in {} (no worker has written its plan)",
            repo.backend.location()
        )));
    };
    let plan: PlanFile = repo.open_json(&sealed, &st.key("plan")).map_err(failed)?;
    let spec = Spec {
        index: BY_HAND,
        count: plan.workers,
        run_id: run.to_string(),
    };
    let opts = Options {
        source: plan.source.clone(),
        label: plan.label.clone(),
        retain: opts_retain.or((plan.retain > 0).then_some(plan.retain)),
        jobs: 1,
        cancel,
        one_file_system: plan.one_file_system,
        exclusion: plan.exclusion.clone(),
        // Every unit is built (else `Retry` below): no walk is left for the root's guard
        // (`work_in` skips it for `BY_HAND`); the run's own, a run that keeps no file,
        // is finalize's ([`refuse_no_files`]).
        allow_empty,
    };
    if st.read_final().map_err(failed)?.is_none() {
        let done = st.done().map_err(failed)?;
        let cut = plan
            .cut()
            .map_err(|e| failed(restic::corrupt(st.key("plan"), e)))?;
        let left = cut.units.iter().filter(|u| !done.contains(&u.id)).count();
        if left > 0 {
            return Err(ShardError::Retry(format!(
                "run {run}: {left} of {} units are not committed yet; its workers (or a rerun of them) build them",
                cut.units.len()
            )));
        }
    }
    work(repo, &spec, &opts)
}
