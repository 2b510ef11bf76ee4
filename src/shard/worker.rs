//! One shard worker: joins run `<run-id>` (writing its plan if it is the first), then
//! claims units (its home set first, then units nobody has started, then units whose
//! lease ran out), backs each up with the engine's own walk (`engine::walk::Walk`, the
//! store's `TreeSink`: hard links into the previous snapshot, copies, a manifest part)
//! into a private directory `work/<unit>.g<generation>/`, commits it exactly once (an
//! exclusive create of `done/<unit>` naming the generation, refused once a newer
//! generation has claimed the unit), and only then moves its entries into the run's
//! tree. When every unit is committed it tries to finalize (`finalize.rs`).
//!
//! Locks: a worker holds the store's lock *shared* for its lifetime, so workers do not
//! block each other while a single-node backup (exclusive) is refused as long as any
//! worker lives, and finalize (exclusive) waits for the last worker to let go. Does
//! file I/O on the source and the store.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::plan::{Cut, Unit};
use super::sizes::{self, ManifestSizes};
use super::state::{Claim, Commit, Holder, PlanFile, RunDir, UnitCounts};
use super::{ShardError, Spec, sort_err};
use crate::engine::BackupOptions;
use crate::engine::walk::Walk;
use crate::error::{Ctx, Error, io_error};
use crate::fsx::{self, Kind, b};
use crate::manifest::{self, Entry};
use crate::relpath::RelPath;
use crate::repo::{Previous, Repository};
use crate::report::{Counters, Problem, ProblemKind};
use crate::store::Store;
use crate::store::tree_sink::TreeSink;

/// What a worker did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub index: usize,
    pub run_id: String,
    /// Units this process committed.
    pub committed: Vec<String>,
    /// Problems (entries left out, metadata not kept: a user's run cannot set owners)
    /// in the units this process committed: its part of the run is `partial`, and it
    /// exits 2, as a single-node run does, whoever finalizes.
    pub problems: u64,
    /// Units this process built but another generation had claimed or committed.
    pub lost: Vec<String>,
    /// Units it was building when it was stopped, left claimed (to a rerun of this
    /// index, or to a takeover when the lease lapses).
    pub left: Vec<String>,
    /// SIGTERM/SIGINT or the end of its backup window stopped it; its unit stays
    /// claimed until the lease runs out (a rerun takes its own claims over at once).
    pub interrupted: bool,
    /// The backup window (`--window`, from the worker's start) ended before its part
    /// of the run did.
    pub window_ended: bool,
    /// The run was finalized by this process (its report) …
    pub finalized: Option<crate::report::RunReport>,
    /// … or had been already.
    pub already_finalized: bool,
    /// The run was finalized before this worker started, at this time (the finalized
    /// report's end, else the marker's mtime): it backed nothing up.
    pub finalized_before_start: Option<String>,
    /// Every unit is committed but another process holds the store: the last worker
    /// to let go, or `snapring finalize`, publishes the run.
    pub finalize_pending: bool,
    /// Every unit is committed, but another process held the store past the wait
    /// (who, and how long this worker waited): finalize did not run (exit 75).
    pub finalize_blocked: Option<(String, Duration)>,
    /// Pieces of the expired snapshots this process deleted after the publish
    /// (`expire.rs`).
    pub expired: super::expire::Helped,
    /// How the job's `pre_command` went (each worker runs it before it looks at the
    /// source).
    pub pre_command: Option<crate::report::HookOutcome>,
    /// A dry run (`--dry-run`): what this worker's home units hold (`dry.rs`).
    pub dry_run: Option<super::dry::DryRun>,
    /// What its own part of the run warns of: copies under `--bwlimit` a stop gave up
    /// (`Counters::given_up_warnings`), in the units it left. A file the window never
    /// leaves time for is never backed up, run after run: the worker's report says so,
    /// as a single-node run's does.
    pub warnings: Vec<String>,
}

/// What one worker needs to build units.
struct Worker<'a> {
    opts: &'a BackupOptions,
    spec: &'a Spec,
    rd: &'a RunDir,
    cut: &'a Cut,
    plan_hash: &'a str,
    /// The plan's [`PlanFile::part_dirs`].
    part_dirs: u32,
    source: PathBuf,
    /// `one_file_system`: the device of the source's root, as this host sees it (a
    /// network file system's device number differs between hosts). Every unit's walk
    /// stays on it, whatever device the unit's own directory is on.
    one_fs: Option<u64>,
    /// The store's `(st_dev, st_ino)` as this host sees it: no unit's walk enters it
    /// (`engine::walk::Walk::fenced`).
    store_fence: Option<crate::traverse::Fence>,
    prev: Option<Previous>,
    prev_root: Option<OwnedFd>,
    /// The source's root, opened once by the path the user gave: each unit's directory
    /// is opened beneath it with no symlink followed ([`fsx::open_dir_beneath`]).
    src_root: OwnedFd,
    excludes: crate::exclude::Excludes,
    cancel: &'a AtomicBool,
    lease: Duration,
    /// The store's clock, which the leases of `claims/` are judged by.
    clock: super::state::StoreClock,
    /// When this process started (before its first claim).
    started: chrono::DateTime<chrono::Utc>,
    /// When the plan was made: every generation of every unit began after it, so a file
    /// an older generation copied is reused only if its source has not changed since
    /// ([`TreeSink::new`]). `None` (unreadable): nothing is reused.
    planned_at: Option<fsx::Time>,
    /// The store is on NFS or FUSE ([`crate::concurrency::is_remote`]).
    remote: bool,
    /// The plan's [`PlanFile::owners_held`] and [`PlanFile::times_held`]: what the
    /// store does not keep.
    held: crate::store::tree_sink::StoreProbe,
    /// `--jobs` permits, shared by the walks of the units built at once ([`lanes`]).
    gate: crate::pool::Gate,
    /// `--bwlimit`: one bucket for the worker, whatever units it builds at once.
    throttle: Option<std::sync::Arc<crate::throttle::Throttle>>,
    /// The next of its home units (in claim order) a lane of this worker tries to claim
    /// straight away ([`pick_home`]); shared by the lanes, so each is tried once.
    home_next: std::sync::atomic::AtomicUsize,
    /// The warnings of units a stop cut short ([`Outcome::warnings`]).
    warnings: std::sync::Mutex<Vec<String>>,
    /// What the lanes of this worker share between units: one listing of `done/` and
    /// one search of the claims for all of them ([`Idle`]).
    idle: Idle,
}

/// How often the waiting lanes of a worker of `lanes` lanes look at `done/` (one
/// listing for all of them; a listing is itself a few round trips): every 25 ms with
/// one lane, as before session 48; with more, as often as their own listings every
/// 25 ms each were (three lanes waiting: every 8–10 ms, which the end of a run is seen
/// by: the last commit lets the others go), but not below 8 ms.
fn done_poll(lanes: usize) -> Duration {
    (DONE_POLL_ONE_LANE / lanes.max(1) as u32).max(Duration::from_millis(8))
}

/// [`done_poll`] of a worker of one lane.
const DONE_POLL_ONE_LANE: Duration = Duration::from_millis(25);

/// A listing of `done/` shared by a worker's lanes ([`Idle::listed`]).
type Listing = (
    u64,
    Instant,
    std::sync::Arc<std::collections::BTreeSet<String>>,
);

/// One poller a worker, not one a lane: the last listing of `done/`, taken by whichever
/// lane asks first and used by the others while it is younger than [`Idle::poll`] (or
/// until a lane of this worker commits: [`Idle::forget`]), and the count of commits at
/// which a search of the claims ([`pick`]) last found nothing: another lane finding
/// the same count within the wait of [`wait_for_a_commit`] waits without searching
/// again (units only become free when a lease lapses or a holder dies, which a search a
/// wait later finds as well). Before session 48 each idle lane listed `done/` every
/// 25 ms and read every live claim after each commit on its own: 1.4k of the split's
/// delayed calls on `small` at 1 ms, 2% of them.
struct Idle {
    /// How long a listing serves ([`done_poll`]).
    poll: Duration,
    /// Bumped by each commit of this worker: a listing begun before it is not used.
    epoch: std::sync::atomic::AtomicU64,
    /// The listing: the epoch it began in, when it began, the names.
    listed: Mutex<Option<Listing>>,
    /// The commits a fruitless search saw, and when it began. Held while a lane searches.
    fruitless: Mutex<Option<(usize, Instant)>>,
}

impl Idle {
    /// The shared state of a worker of `lanes` lanes.
    fn new(lanes: usize) -> Idle {
        Idle {
            poll: done_poll(lanes),
            epoch: Default::default(),
            listed: Default::default(),
            fruitless: Default::default(),
        }
    }

    /// The units committed, listed at most [`Idle::poll`] before the call and after
    /// this worker's last commit.
    fn done(
        &self,
        rd: &RunDir,
    ) -> Result<std::sync::Arc<std::collections::BTreeSet<String>>, ShardError> {
        self.done_at(rd, Instant::now())
    }

    /// [`Idle::done`] of a call at `arrived`: taken before the lock, so lanes that
    /// queued behind a slow listing use it rather than list again one after another
    /// (a listing that began less than a poll before they arrived).
    fn done_at(
        &self,
        rd: &RunDir,
        arrived: Instant,
    ) -> Result<std::sync::Arc<std::collections::BTreeSet<String>>, ShardError> {
        let mut g = self.listed.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = self.epoch.load(Ordering::SeqCst);
        if let Some((e, at, names)) = g.as_ref()
            && *e == epoch
            && *at + self.poll > arrived
        {
            return Ok(names.clone());
        }
        let at = Instant::now();
        let names = std::sync::Arc::new(rd.done_names()?);
        *g = Some((epoch, at, names.clone()));
        Ok(names)
    }

    /// A lane of this worker committed: the next look lists `done/` again.
    fn forget(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// [`pick`], by one lane at a time, and not again while a search that found nothing
    /// at `done`'s count is younger than `wait`.
    fn pick<'c>(
        &self,
        ctx: &Worker<'c>,
        order: &[&'c Unit],
        done: &std::collections::BTreeSet<String>,
        wait: Duration,
    ) -> Result<Option<(&'c Unit, u32)>, ShardError> {
        let mut f = self.fruitless.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, at)) = *f
            && n >= done.len()
            && at.elapsed() < wait
        {
            return Ok(None);
        }
        let at = Instant::now();
        let r = pick(ctx, order, done)?;
        *f = r.is_none().then_some((done.len(), at));
        Ok(r)
    }
}

/// Runs worker `spec.index` of `spec.count` of run `spec.run_id`.
pub fn run(opts: &BackupOptions, spec: &Spec, cancel: &AtomicBool) -> Result<Outcome, ShardError> {
    let t_start = Instant::now();
    let started = super::state::started_now();
    opts.validate().map_err(|e| match e {
        Error::Config(m) => ShardError::Usage(m),
        e => ShardError::Failed(e),
    })?;
    let resolved;
    let opts = if opts.jobs == crate::engine::options::AUTO_JOBS {
        resolved = BackupOptions {
            jobs: crate::concurrency::resolve(0, &[&opts.source, &opts.store]),
            ..opts.clone()
        };
        &resolved
    } else {
        opts
    };
    fsx::raise_fd_limit();
    if opts.dry_run {
        return super::dry::run(opts, spec, cancel);
    }
    let mut out = Outcome {
        index: spec.index,
        run_id: spec.run_id.clone(),
        ..Outcome::default()
    };
    crate::engine::backup::refuse_to_begin_a_store(opts).map_err(sort_err)?;
    let store = Store::open(&opts.store, true).map_err(sort_err)?;
    let rd = RunDir::new(&store.meta, &spec.run_id);
    let finalized = rd.is_finalized();
    if finalized {
        // A worker with other settings is refused as it is before the finalize (exit
        // 64). One with the same settings is a duplicate (a retried pod, a late array
        // task): it backs nothing up and only helps delete the expired snapshots. A
        // run finalized longer ago than any retry comes (`reuse_after`) is a job that
        // reuses a fixed run id: refused (exit 64) before it writes anything, its log
        // included, else it would go green every night with nothing backed up.
        if let Some((plan, _)) = rd.read_plan()? {
            check_settings(opts, spec, &plan, &settled_source(opts))?;
        }
        let at = super::finalize::finalized_at(&rd);
        if let Some(e) = super::reused(&spec.run_id, &at, started, super::reuse_after()) {
            return Err(e);
        }
        out.finalized_before_start = Some(at);
    }
    let _log = opts
        .log_file
        .then(|| WorkerLog::start(&store, spec))
        .flatten();
    if finalized {
        out.already_finalized = true;
        help_expire(&store, &rd, opts.jobs, cancel, &mut out);
        return Ok(out);
    }
    if Repository::needs_repair(&store) {
        let l = Repository::lock_and_repair(&store, &spec.run_id).map_err(sort_err)?;
        Repository::unlock(&store, l);
    }
    // The lock file exists once any writer has opened the store (a new store's
    // workers come first).
    {
        use std::os::unix::fs::OpenOptionsExt;
        let lp = store.meta.join("lock");
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lp)
            .ctx("create", &lp)?;
    }
    let shared = store.lock_shared().map_err(sort_err)?;
    // A publish of its label made the run unpublishable and removed its copies (a
    // retried pod of last night's Job): nothing is copied again.
    if let Some(mark) = super::abandoned::read(&rd) {
        return Err(ShardError::Failed(mark.refusal(&rd)));
    }
    if !rd.exists() && store.run_path(&spec.run_id).exists() {
        return Err(ShardError::Usage(format!(
            "run id {} was used by an earlier run of this store ({}); give this run a new one",
            spec.run_id,
            store.run_path(&spec.run_id).display()
        )));
    }
    // The run's own directory; the planner makes the rest (`make_plan`).
    rd.create_root()?;
    // A rerun after every unit was committed (a finalize that crashed, perhaps after
    // publishing, so the store's previous snapshot is this run's): finalize only, after
    // the pre command (finalize reads the source, which that command may mount).
    if let Some((plan, _)) = rd.read_plan()?
        && let Ok(cut) = plan.cut()
    {
        let done = rd.done_names()?;
        if cut.units.iter().all(|u| done.contains(&u.id)) {
            if !pre_command(opts, spec, &store, (cancel, t_start), &mut out)? {
                return Ok(out);
            }
            // A worker started otherwise than the plan (the plan's maker may be the one
            // started wrong, and every unit built by its like) leaves its mark here too:
            // the run is not published.
            refuse_other_settings(opts, spec, &plan, &settled_source(opts), &rd)?;
            drop(shared);
            let wait = finalize_wait(super::state::lease());
            finish(
                &store,
                &rd,
                (opts.jobs, opts.allow_empty),
                cancel,
                wait,
                &mut out,
            )?;
            return Ok(out);
        }
    }
    if !pre_command(opts, spec, &store, (cancel, t_start), &mut out)? {
        return Ok(out);
    }
    let source = crate::engine::backup::check_source(opts)?;
    // Canonical: `snapring finalize` may run from another directory.
    let source = std::fs::canonicalize(&source).ctx("resolve source", &source)?;
    let prev = Repository::previous(&store, &opts.label)?;
    // The worker's refusals of its own source (empty, or emptied by the exclusions,
    // while the previous snapshot is not: a node where the source is not mounted) come
    // before the plan: a plan made from such a source (one unit of nothing, its inode
    // the mount point's) refused every healthy worker after it, and the run never
    // finished. Refused here, this worker claims nothing and another one plans.
    let src_fd = fsx::open_dir(&source).ctx("open source", &source)?;
    let excludes = opts.exclude_settings()?.build()?;
    crate::engine::backup::refuse_empty(opts, prev.as_ref(), (&src_fd, &source), &excludes)?;
    let (plan, plan_hash) = join_plan(opts, spec, &rd, &source, prev.as_ref(), cancel)?;
    check_plan(opts, spec, &plan, &source, prev.as_ref(), &rd)?;
    let cut = plan.cut().map_err(|m| {
        ShardError::Failed(Error::Store {
            path: rd.plan_path(),
            msg: m,
        })
    })?;
    let prev_root = match &prev {
        Some(p) => {
            let path = store.root.join(&p.name);
            Some(fsx::open_dir(&path).ctx("open previous snapshot", &path)?)
        }
        None => None,
    };
    let one_fs = match plan.one_file_system {
        true => Some(fsx::fstat(b(&src_fd)).ctx("stat source", &source)?.dev),
        false => None,
    };
    let ctx = Worker {
        one_fs,
        store_fence: crate::engine::walk::store_fence(&store.root),
        opts,
        spec,
        rd: &rd,
        cut: &cut,
        plan_hash: &plan_hash,
        part_dirs: plan.part_dirs,
        source,
        prev,
        prev_root,
        src_root: src_fd,
        excludes,
        cancel,
        lease: super::state::lease(),
        clock: super::state::StoreClock::new(rd.root.join("claims"), super::state::lease()),
        started,
        planned_at: chrono::DateTime::parse_from_rfc3339(&plan.created_at)
            .ok()
            .map(fsx::Time::from),
        remote: crate::concurrency::is_remote(&store.root),
        held: crate::store::tree_sink::StoreProbe {
            owners_held: plan.owners_held,
            times_held: plan.times_held,
        },
        gate: crate::pool::Gate::new(opts.jobs.max(1)),
        throttle: opts
            .bwlimit
            .map(|r| std::sync::Arc::new(crate::throttle::Throttle::new(r))),
        home_next: Default::default(),
        warnings: Default::default(),
        idle: Idle::new(lanes(opts.jobs.max(1))),
    };
    tracing::info!(
        run = %spec.run_id, worker = spec.index, workers = spec.count, units = cut.units.len(),
        "shard worker started ({} units, {} at home)", cut.units.len(), cut.home(spec.index).len()
    );
    // The backup window counts from the worker's start. When it ends the worker stops
    // as on SIGTERM: units being built are left to a rerun (or to a takeover once their
    // lease lapses), and it exits "incomplete". A finalize under way publishes anyway;
    // the window cuts only its deletion of expired snapshots, which the next run goes
    // on with, as a single-node run's window does.
    let run = || {
        let all_done = work(&ctx, &mut out)?;
        drop(shared);
        if !all_done {
            out.interrupted = true;
            return Ok(());
        }
        tracing::info!("every unit is committed; finalizing");
        finish(
            &store,
            &rd,
            (opts.jobs, opts.allow_empty),
            cancel,
            finalize_wait(ctx.lease),
            &mut out,
        )
    };
    let (r, window_ended) =
        crate::engine::progress::within_window(t_start, opts.window, cancel, run);
    r?;
    out.window_ended = window_ended;
    out.warnings = ctx.warnings.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(out)
}

/// Runs the job's `pre_command` in this worker, before it looks at the source (it may be
/// what mounts or freezes the source on this node): every worker runs it, a rerun that
/// only finalizes too, with the run id and its index and count in its environment. A failure stops the worker with
/// nothing claimed (its home units go to the others) and is permanent (exit 1), as a
/// single-node run's is. `Ok(false)`: a stop killed it (SIGTERM/SIGINT, or the end of
/// the backup window, counted from the worker's start `t_start`): the worker ends
/// interrupted (exit 3, retryable) with nothing claimed, as a single-node run ends
/// `incomplete`; a rerun with the same run id starts again (it failed, exit 1, before).
fn pre_command(
    opts: &BackupOptions,
    spec: &Spec,
    store: &Store,
    (cancel, t_start): (&AtomicBool, Instant),
    out: &mut Outcome,
) -> Result<bool, ShardError> {
    let Some(h) = &opts.pre_command else {
        return Ok(true);
    };
    let (o, r, ended) = crate::engine::backup::run_pre_command(
        h,
        [&spec.run_id, opts.job.as_deref().unwrap_or_default()],
        [&opts.source, &store.root],
        &[
            ("SNAPRING_SHARD_INDEX", spec.index.to_string()),
            ("SNAPRING_SHARD_COUNT", spec.count.to_string()),
        ],
        "this worker claimed nothing (its output is in its log)",
        cancel,
        (t_start, opts.window),
    );
    let killed = crate::hooks::interrupted(&o);
    out.pre_command = Some(o);
    if r.is_err() && killed {
        out.interrupted = true;
        out.window_ended = ended;
        return Ok(false);
    }
    r?;
    Ok(true)
}

/// The worker's own log file, `.snapring/logs/<run-id>.w<index>.log` (appended to by a
/// rerun): one file per worker, since appends from several NFS clients to one file can
/// overwrite each other. Finalize puts them together as the run's log. Stopped when
/// dropped.
struct WorkerLog;

impl WorkerLog {
    fn start(store: &Store, spec: &Spec) -> Option<WorkerLog> {
        let dir = store.meta.join("logs");
        let path = dir.join(worker_log_name(&spec.run_id, spec.index));
        match std::fs::create_dir_all(&dir).and_then(|()| crate::runlog::start(&path)) {
            Ok(()) => Some(WorkerLog),
            Err(e) => {
                tracing::warn!(
                    "cannot write the worker's log {}: {e}",
                    crate::relpath::shown(&path)
                );
                None
            }
        }
    }
}

impl Drop for WorkerLog {
    fn drop(&mut self) {
        crate::runlog::stop();
    }
}

/// The file name of worker `index`'s log of run `run`.
pub fn worker_log_name(run: &str, index: usize) -> String {
    format!("{run}.w{index}.log")
}

/// Tries to finalize once every unit is committed: `jobs`, and the worker's
/// `--allow-empty` (`finalize::finalize`).
fn finish(
    store: &Store,
    rd: &RunDir,
    (jobs, allow_empty): (usize, bool),
    cancel: &AtomicBool,
    wait: Duration,
    out: &mut Outcome,
) -> Result<(), ShardError> {
    use super::finalize::Finalized;
    match super::finalize::finalize(
        store,
        rd,
        Some(out.index),
        (jobs, allow_empty),
        cancel,
        wait,
    )? {
        Finalized::Done(rep) => out.finalized = Some(*rep),
        Finalized::Already(_) => {
            out.already_finalized = true;
            help_expire(store, rd, jobs, cancel, out);
        }
        // Held past the wait: by a worker of this run that is stopped, by another run's
        // workers or a dry run. None of those finalizes this run, so the worker says so
        // and is retried (exit 75) rather than leave the run unpublished with exit 0.
        Finalized::Busy(who) => out.finalize_blocked = Some((who, wait)),
        Finalized::NotReady(_) => out.finalize_pending = true,
    }
    Ok(())
}

/// Once another process has finalized the run: deletes pieces of the expired snapshots
/// while any is left to claim (`expire.rs`). A failure here costs the run nothing (the
/// finalizer, or the next run, deletes what is left), so it is only logged.
fn help_expire(store: &Store, rd: &RunDir, jobs: usize, cancel: &AtomicBool, out: &mut Outcome) {
    // Nothing expired (the finalizer writes the marker before `finalized`): the plan is
    // not read either, at the run's very end.
    if super::expire::read_marker(rd).is_none() {
        return;
    }
    let Some(cut) = rd
        .read_plan()
        .ok()
        .flatten()
        .and_then(|(p, _)| p.cut().ok())
    else {
        return;
    };
    match super::expire::help(store, rd, &cut, Some(out.index), jobs, cancel) {
        Ok(h) => out.expired = h,
        Err(e) => tracing::warn!("expired snapshots: this worker's part stopped ({e})"),
    }
}

/// How long a worker that committed the last unit waits for the others to let go of
/// the store before it leaves finalize to them.
fn finalize_wait(lease: Duration) -> Duration {
    lease.clamp(Duration::from_secs(5), Duration::from_secs(30))
}

/// The run's plan: read, or made and written by this worker if it is the first to
/// claim the making of it (`planning.g<generation>`, exclusive). The others wait for
/// `plan.json` instead of sizing the source too (a walk of the whole source when there
/// is no previous snapshot: four at once cost four times the calls, and the plan that
/// counts is the first one written anyway). A planner whose lease lapsed (stopped, or
/// on an unreachable host) or that died on this host is taken over by the next
/// generation; two planners are harmless, since `plan.json` is created exclusively and
/// every worker uses the one that was written.
fn join_plan(
    opts: &BackupOptions,
    spec: &Spec,
    rd: &RunDir,
    source: &std::path::Path,
    prev: Option<&Previous>,
    cancel: &AtomicBool,
) -> Result<(PlanFile, String), ShardError> {
    let lease = super::state::lease();
    let me = Holder::me(spec.index);
    let t0 = Instant::now();
    let mut waiting = false;
    let clock = super::state::StoreClock::new(rd.root.clone(), lease);
    loop {
        if let Some(p) = rd.read_plan()? {
            if waiting {
                tracing::info!(
                    "shard plan of {} read after waiting {:.2}s",
                    p.0.created_by,
                    t0.elapsed().as_secs_f64()
                );
            }
            return Ok(p);
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(ShardError::Retry(format!(
                "stopped while waiting for the plan of run {}",
                spec.run_id
            )));
        }
        let next = match rd.plan_claim()? {
            None => Some(1),
            // A claim whose content does not read (being written, or damaged) is taken
            // over once its mtime is past the lease, as any.
            Some((g, Some(c)))
                if c.expired_at(clock.now(), lease)
                    || c.holder.as_ref().is_some_and(Holder::is_dead_here) =>
            {
                if c.holder.is_none() {
                    tracing::warn!(
                        "planning claim {} cannot be read and is past its lease: taking it over",
                        rd.plan_claim_path(g).display()
                    );
                }
                Some(g + 1)
            }
            // Gone since the listing: the next generation settles it.
            Some((g, None)) => Some(g + 1),
            // Live.
            Some(_) => None,
        };
        if let Some(g) = next
            && rd.claim_plan(g, &me)?
        {
            if g > 1 {
                tracing::info!("making the shard plan, taken over at generation {g}");
            }
            let path = rd.plan_claim_path(g);
            let done = super::Bell::default();
            return std::thread::scope(|s| {
                s.spawn(|| {
                    let every = (lease / 3).max(Duration::from_millis(50));
                    let mut last = Instant::now();
                    while !done.wait(0, Duration::from_millis(20).min(every)) {
                        if last.elapsed() >= every {
                            last = Instant::now();
                            if let Err(e) = super::state::touch(&path) {
                                tracing::warn!(
                                    "cannot renew the lease of {}: {e}",
                                    crate::relpath::shown(&path)
                                );
                            }
                        }
                    }
                });
                let r = make_plan(opts, spec, rd, source, prev);
                done.ring();
                r
            });
        }
        if !waiting {
            tracing::info!("waiting for another worker's shard plan");
            waiting = true;
        }
        // One lookup of `plan.json` a poll: the plan takes a fraction of a second to
        // make from a manifest, and every worker waits for it (every 10 ms for the
        // first tenth of a second, then every 25 ms).
        let poll = if t0.elapsed() < Duration::from_millis(100) {
            10
        } else {
            25
        };
        std::thread::sleep(Duration::from_millis(poll));
    }
}

/// The `retain` a run's plan keeps: the run continues the label's snapshots as a
/// single-node run does (`repo::continue_ring`): not from another tree, and without a
/// `retain` of its own keeping what the label keeps. Also a dry run's, without a plan.
/// With it, the warning of a `retain` that expires more than the label's last run
/// kept, for the run's report.
pub(super) fn plan_retain(
    opts: &BackupOptions,
    source: &std::path::Path,
    prev: Option<&Previous>,
) -> Result<(u32, Option<String>), ShardError> {
    crate::repo::continue_ring(
        prev,
        &opts.store,
        &opts.label,
        source,
        opts.new_source,
        opts.retain,
        opts.retain_default,
    )
    .map_err(sort_err)
}

/// Sizes the source, cuts it and writes `plan.json` (unless another planner was first).
fn make_plan(
    opts: &BackupOptions,
    spec: &Spec,
    rd: &RunDir,
    source: &std::path::Path,
    prev: Option<&Previous>,
) -> Result<(PlanFile, String), ShardError> {
    let t0 = Instant::now();
    // The run's directories, made while the source is sized (a few calls, one at a
    // time in the run's directory), by the planner alone: every other worker waits for
    // the plan, written after them, instead of making them all at once.
    let (sized, dirs) = std::thread::scope(|s| {
        let dirs = s.spawn(|| rd.create());
        let sized = plan_retain(opts, source, prev)
            .and_then(|r| Ok((r, cut_source(opts, spec, source, prev)?)));
        (
            sized,
            dirs.join().expect("making the run's directories panicked"),
        )
    });
    let ((retain, lowered), (cut, sized_by)) = sized?;
    dirs?;
    // Whether the store keeps owners, and to what granularity it keeps times: probed
    // once for the run, here in its directory (a file made, given a time and another
    // owner, removed), and recorded in the plan that every worker reads anyway. A probe
    // by each worker, or by each unit's sink, would repeat those round trips N (or
    // units) times on the file system slowest at them.
    let probe = match fsx::open_dir(&rd.root) {
        Ok(fd) => crate::store::tree_sink::probe_store(b(&fd)),
        Err(e) => {
            tracing::debug!("cannot open {} to probe the store: {e}", rd.root.display());
            Default::default()
        }
    };
    let (owners_held, times_held) = (probe.owners_held, probe.times_held);
    let mut warnings: Vec<String> = lowered.into_iter().collect();
    let store = || std::fs::canonicalize(&opts.store).unwrap_or_else(|_| opts.store.clone());
    if let Some(held) = owners_held {
        let w = crate::engine::backup::owners_not_kept(&store(), held);
        tracing::warn!("{w}");
        warnings.push(w);
    }
    if let Some(g) = times_held {
        let w = crate::engine::backup::times_not_kept(&store(), g);
        tracing::warn!("{w}");
        warnings.push(w);
    }
    let plan = PlanFile {
        format: 1,
        run: spec.run_id.clone(),
        workers: spec.count,
        source: source.to_path_buf(),
        label: opts.label.clone(),
        retain,
        prev: prev.map(|p| p.name.clone()),
        prev_run: prev.and_then(|p| p.run.clone()),
        sized_by: sized_by.into(),
        created_at: crate::util::now_rfc3339(),
        host: None,
        created_by: format!(
            "snapring {} worker {}",
            env!("CARGO_PKG_VERSION"),
            spec.index
        ),
        cap: cut.cap,
        part_dirs: super::state::PART_DIRS,
        one_file_system: opts.one_file_system,
        spine: cut.spine.iter().map(RelPath::escaped).collect(),
        units: PlanFile::units_of(&cut),
        source_ino: match crate::concurrency::inode_numbers_shared(source) {
            true => Some(super::state::source_ino(source).ctx("stat source", source)?),
            false => None,
        },
        warnings,
        allow_empty: opts.allow_empty,
        owners_held,
        times_held,
        exclusion: opts.exclude_settings()?,
    };
    tracing::info!(
        "shard plan: {} units (cap {}), {} spine directories, sized by {sized_by} in {:.2}s",
        cut.units.len(),
        cut.cap,
        cut.spine.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(rd.create_plan(&plan)?)
}

/// Sizes the source (from the previous snapshot's manifest, else by a walk of names)
/// and cuts it for `spec.count` workers; also how it was sized.
pub fn cut_source(
    opts: &BackupOptions,
    spec: &Spec,
    source: &std::path::Path,
    prev: Option<&Previous>,
) -> Result<(Cut, &'static str), ShardError> {
    // No spine directory where the walk leaves contents out (`sizes::Excluding`).
    let excludes = opts.exclude_settings()?.build()?;
    if let Some(m) = prev.and_then(|p| p.manifest.as_ref()) {
        let sizes = ManifestSizes::read(m).ctx("read manifest", &m.mf_path)?;
        let one_fs =
            sizes::source_device(source, opts.one_file_system).ctx("stat source", source)?;
        if let Some(cut) = sizes::cut_if_fits(
            &sizes::Excluding {
                sizes: &sizes,
                excludes: &excludes,
                source,
            },
            spec.count,
            source,
            "the previous snapshot's manifest",
            one_fs,
        ) {
            return Ok((cut, "manifest"));
        }
    }
    let threads = sizes::planning_threads(opts.jobs, spec.count);
    let fd = fsx::open_dir(source).ctx("open source", source)?;
    let one_fs = sizes::source_device(source, opts.one_file_system).ctx("stat source", source)?;
    let store = crate::engine::walk::store_fence(&opts.store);
    let walked = sizes::WalkSizes::walk(source.to_path_buf(), fd, threads, one_fs, store);
    let seen = sizes::Excluding {
        sizes: &walked,
        excludes: &excludes,
        source,
    };
    let cut = sizes::cut_for(&seen, spec.count);
    Ok((cut, "walk"))
}

/// Refuses a worker whose settings differ from the plan's, leaving its mark in `rd`
/// (`state::Refused`): the plan may be the wrong one (its worker started wrong), and
/// finalize publishes no run with a mark.
fn refuse_other_settings(
    opts: &BackupOptions,
    spec: &Spec,
    plan: &PlanFile,
    source: &std::path::Path,
    rd: &RunDir,
) -> Result<(), ShardError> {
    let differs = settings_differ(opts, spec, plan, source)?;
    if differs.is_empty() {
        return Ok(());
    }
    let mark = super::state::Refused::me(spec.index, differs.clone());
    if let Err(e) = rd.mark_refused(&mark) {
        tracing::error!("cannot leave this worker's refusal in the run: {e}");
    }
    Err(settings_refusal(spec, &differs))
}

/// Every worker of a run must back up the same source into the same label with the
/// same number of workers, against the same previous snapshot. A worker whose settings
/// differ leaves its mark in `rd` (`state::Refused`) before it is refused.
fn check_plan(
    opts: &BackupOptions,
    spec: &Spec,
    plan: &PlanFile,
    source: &std::path::Path,
    prev: Option<&Previous>,
    rd: &RunDir,
) -> Result<(), ShardError> {
    refuse_other_settings(opts, spec, plan, source, rd)?;
    if let Err(e) = super::state::check_source_ino(plan, source) {
        // Not this node's fault when the plan was made from an empty source (an
        // unmounted node's, by an older snapring): the run is what is wrong.
        let why = super::state::unbuildable(plan, prev.is_some_and(|p| p.has_entries));
        return Err(match why {
            Some(msg) => ShardError::Failed(Error::Store {
                path: rd.plan_path(),
                msg,
            }),
            None => e,
        });
    }
    let now = prev.map(|p| (p.name.clone(), p.run.clone()));
    if now != plan.prev.clone().map(|n| (n, plan.prev_run.clone())) {
        // Worded as finalize words it (the snapshots by their runs: the slot's name is
        // the same), since finalize refuses the run for good too and removes its copies.
        let is_now = match &now {
            Some((name, Some(run))) => format!("{name} is now run {run}"),
            Some((name, None)) => format!("{name} is now a snapshot of no recorded run"),
            None => format!("label {} has no snapshot now", opts.label),
        };
        return Err(ShardError::Failed(Error::Store {
            path: opts.store.clone(),
            msg: format!(
                "run {} was planned against {}, but {is_now}: another backup published meanwhile, so the run can never be published; nothing backed up, start a new run id (`snapring finalize --run-id {}` removes its copies)",
                spec.run_id,
                super::abandoned::snapshot_named(plan.prev.as_deref(), plan.prev_run.as_deref()),
                spec.run_id,
            ),
        }));
    }
    Ok(())
}

/// The source as a worker of a finalized run compares it with its plan: resolved as a
/// working worker resolves it, or, where that fails (the source not mounted now, gone),
/// the path as given, made absolute. No `pre_command` runs for a finalized run.
fn settled_source(opts: &BackupOptions) -> PathBuf {
    let given = match &opts.prefix {
        Some(p) => opts.source.join(p.as_path()),
        None => opts.source.clone(),
    };
    crate::engine::backup::check_source(opts)
        .ok()
        .and_then(|s| std::fs::canonicalize(s).ok())
        .or_else(|| std::path::absolute(&given).ok())
        .unwrap_or(given)
}

/// The settings of the run's plan against this worker's (count, source, label and
/// retention, `-x`, exclusions): any difference is a usage error (exit 64). Also a dry
/// run's check of an existing plan (`shard::dry`), which must refuse what the worker
/// would.
pub(super) fn check_settings(
    opts: &BackupOptions,
    spec: &Spec,
    plan: &PlanFile,
    source: &std::path::Path,
) -> Result<(), ShardError> {
    match settings_differ(opts, spec, plan, source)? {
        d if d.is_empty() => Ok(()),
        d => Err(settings_refusal(spec, &d)),
    }
}

/// What [`check_settings`] refuses (`source /a, not /a/sub`: the plan's, then this
/// worker's), empty if nothing.
fn settings_differ(
    opts: &BackupOptions,
    spec: &Spec,
    plan: &PlanFile,
    source: &std::path::Path,
) -> Result<Vec<String>, ShardError> {
    let mut diffs = Vec::new();
    if plan.workers != spec.count {
        diffs.push(format!("{} workers, not {}", plan.workers, spec.count));
    }
    if plan.source != source {
        diffs.push(format!(
            "source {}, not {}",
            crate::relpath::shown(&plan.source),
            crate::relpath::shown(source)
        ));
    }
    // A worker without a `retain` of its own takes the plan's (`continue_ring`).
    if plan.label != opts.label {
        diffs.push(format!("label {}, not {}", plan.label, opts.label));
    }
    if plan.retain != opts.retain && !opts.retain_default {
        diffs.push(format!("retain {}, not {}", plan.retain, opts.retain));
    }
    if plan.one_file_system != opts.one_file_system {
        diffs.push(one_fs_differs(plan.one_file_system));
    }
    // The pattern files are read on each node: they must say the same everywhere.
    let exclusion = opts.exclude_settings()?;
    if plan.exclusion != exclusion {
        diffs.push(format!(
            "exclusion settings {}, not {}",
            serde_json::to_string(&plan.exclusion).unwrap_or_default(),
            serde_json::to_string(&exclusion).unwrap_or_default()
        ));
    }
    Ok(diffs)
}

/// The refusal (exit 64) of a worker whose settings differ from the plan's.
fn settings_refusal(spec: &Spec, diffs: &[String]) -> ShardError {
    ShardError::Usage(format!(
        "run {} was planned with {}: every worker of a run needs the same settings (or use a new --run-id)",
        spec.run_id,
        diffs.join(", ")
    ))
}

/// What a plan mismatch of `one_file_system` says (`planned`: the plan's setting).
pub(super) fn one_fs_differs(planned: bool) -> String {
    match planned {
        true => "one_file_system (-x), but this worker was started without it".into(),
        false => "no one_file_system, but this worker was started with -x".into(),
    }
}

/// The unit being built, shared with the thread that renews its lease.
#[derive(Default)]
struct Current {
    unit: Mutex<Option<(String, u32)>>,
    /// Stops the unit's walk: the worker is stopped, or the unit was taken over.
    stop: AtomicBool,
    /// A newer generation claimed the unit: its lease lapsed (the process was stopped
    /// or starved), so its work will not count.
    lost: AtomicBool,
}

/// Units a worker builds at once (its *lanes*): three for 4 jobs, three for every four
/// jobs above (6 for 8, 12 for 16; at most [`MAX_LANES`]), one below 4. Every lane
/// walks its unit on a pool of `jobs` threads, and the lanes share `jobs` permits
/// ([`crate::pool::Gate`]): at most `jobs` tasks run at once, as in a single-node run.
/// A unit's walk starts from one directory, ramps up, drains on its own (its last
/// directories, one thread each), and is followed by tens of sequential calls (seal,
/// counters, commit, the next claim). With one lane those leave the worker's jobs idle
/// each time. Two lanes of half the jobs each still idled the draining lane's half;
/// sharing the permits, the other lanes' walks take them up, and with three a unit
/// ramping up or draining leaves two to take them (session 45, `small` at 1 ms,
/// interleaved with the single node over 4–5 rounds: unchanged incremental 1.095×
/// against 1.118× with two lanes, full 1.058× against 1.056×; four were no better and
/// varied more: docs/scale-out.md). A unit's walk keeps about four of those permits
/// busy, so a worker of more jobs needs more lanes: one worker of `--jobs 16` with three
/// took 6.9–7.3 s for `small`'s unchanged incremental against the single node's
/// 5.4–5.5 s, with twelve 5.6 s (session 46). Below 4 jobs a worker holds one claim at
/// a time: if it stalls, one unit waits for its lease to lapse.
pub(super) fn lanes(jobs: usize) -> usize {
    if jobs >= 4 {
        (jobs * 3 / 4).min(MAX_LANES)
    } else {
        1
    }
}

/// The most lanes a worker runs, whatever its `--jobs` (each lane walks on a pool of
/// `jobs` threads, so a worker runs up to `MAX_LANES * jobs` threads, most of them
/// waiting for a permit).
const MAX_LANES: usize = 12;

/// Claims and builds units until every unit is committed (`true`) or the worker is
/// stopped (`false`), in one or more lanes ([`lanes`]).
fn work(ctx: &Worker, out: &mut Outcome) -> Result<bool, ShardError> {
    let jobs = ctx.opts.jobs.max(1);
    let currents: Vec<Current> = (0..lanes(jobs)).map(|_| Current::default()).collect();
    // Rung when the lanes are done (the beat ends at once), and by a lane at each
    // commit and when it sees every unit committed (a lane waiting for a commit looks
    // again at once).
    let done = super::Bell::default();
    let commits = super::Bell::default();
    // A lane that failed stops the others from claiming more.
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Renews the lease of each unit being built every third of the lease, and stops
        // its walk when the worker is stopped or a newer generation has taken it over.
        s.spawn(|| {
            let every = (ctx.lease / 3).max(Duration::from_millis(50));
            let mut last = Instant::now();
            while !done.wait(0, Duration::from_millis(20).min(every)) {
                if ctx.cancel.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
                    for c in &currents {
                        c.stop.store(true, Ordering::Relaxed);
                    }
                }
                if last.elapsed() < every {
                    continue;
                }
                last = Instant::now();
                for current in &currents {
                    let cur = current
                        .unit
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    let Some((unit, generation)) = cur else {
                        continue;
                    };
                    // Tests: the lane goes on meanwhile (finishes this unit, takes the next).
                    let _ = crate::failpoint::hit("shard.beat");
                    if ctx.rd.claim_path(&unit, generation + 1).exists() {
                        // Only if the lane still builds that unit: by now it may have
                        // finished it (its commit refused) and taken the next one, which
                        // this must not stop (it would be discarded with its claim naming
                        // a live process, left for a whole lease). A newer generation,
                        // once claimed, stays, so the check needs no lock; the lane
                        // installs its next unit and clears the flags under this lock.
                        let held = current.unit.lock().unwrap_or_else(|e| e.into_inner());
                        if held.as_ref() == Some(&(unit, generation)) {
                            current.lost.store(true, Ordering::Relaxed);
                            current.stop.store(true, Ordering::Relaxed);
                        }
                    } else if let Err(e) = ctx.rd.renew(&unit, generation) {
                        tracing::warn!("cannot renew the lease of unit {unit}: {e}");
                    }
                }
            }
        });
        let handles: Vec<_> = currents
            .iter()
            .map(|current| {
                let (failed, commits) = (&failed, &commits);
                s.spawn(move || {
                    let mut o = Outcome::default();
                    let r = claim_loop(ctx, jobs, &mut o, current, failed, commits);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    (r, o)
                })
            })
            .collect();
        let mut all: Result<bool, ShardError> = Ok(true);
        for h in handles {
            let (r, o) = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            out.committed.extend(o.committed);
            out.problems += o.problems;
            out.lost.extend(o.lost);
            out.left.extend(o.left);
            all = super::both_lanes(all, r);
        }
        done.ring();
        all
    })
}

/// The next of this worker's home units nobody has claimed, claimed (generation 1),
/// until each has been tried once: an exclusive create, refused if the unit has a
/// claim of any generation (generations are created in order, and no claim is removed
/// while the run lasts), so a unit without a claim has no commit either. Spares the
/// listings of `done/` and `claims/` ([`pick`]) before each home unit, a few round
/// trips each between one unit and the next (on NFS, an eighth of the lanes' time
/// between units at 1 ms).
fn pick_home<'c>(ctx: &Worker<'c>, order: &[&'c Unit]) -> Result<Option<&'c Unit>, ShardError> {
    loop {
        let i = ctx.home_next.fetch_add(1, Ordering::Relaxed);
        let Some(&u) = order.get(i).filter(|u| u.home == ctx.spec.index) else {
            return Ok(None);
        };
        if ctx.rd.claim(&u.id, 1, &Holder::me(ctx.spec.index))? {
            return Ok(Some(u));
        }
    }
}

/// The next unit this worker may take, claimed: its home units first (largest
/// first), then others nobody has claimed (largest first), then takeovers of lapsed
/// leases and of this index's own claims left by a dead or earlier process. Costs two
/// listings plus a read of each live claim.
fn pick<'c>(
    ctx: &Worker<'c>,
    order: &[&'c Unit],
    done: &std::collections::BTreeSet<String>,
) -> Result<Option<(&'c Unit, u32)>, ShardError> {
    let claimed = ctx.rd.claim_gens()?;
    // The store's clock, read once for the claims of this pick.
    let now = std::cell::OnceCell::new();
    for pass in [false, true] {
        for u in order {
            if done.contains(&u.id) {
                continue;
            }
            let generation = match (claimed.get(&u.id), pass) {
                (None, _) => 1,
                (Some(_), false) => continue,
                (Some(&g), true) => match ctx.rd.claim_at(&u.id, g)? {
                    // Gone since the listing (claims are not removed while the run
                    // lasts).
                    None => continue,
                    // A claim whose content does not read is damaged (claims are linked
                    // to their name complete): its lease runs from its mtime too.
                    Some(c) if c.expired_at(*now.get_or_init(|| ctx.clock.now()), ctx.lease) => {
                        if c.holder.is_none() {
                            tracing::warn!(
                                "claim {} cannot be read and is past its lease: taking it over",
                                ctx.rd.claim_path(&u.id, g).display()
                            );
                        }
                        g + 1
                    }
                    Some(Claim { holder: None, .. }) => continue,
                    // This index's claim left by a dead process of this host, or made
                    // on another host (pid namespace, boot) before this process started:
                    // an earlier process of this index (a retried pod). Claims made
                    // since are a live twin's (a pod started again across a node
                    // partition) and wait for their lease; taken at once, each twin
                    // took back the unit the other had just taken, both builds wasted.
                    Some(Claim {
                        holder: Some(h), ..
                    }) if h.worker == ctx.spec.index
                        && (h.is_dead_here()
                            || (!h.shares_pids_here() && h.made_before(ctx.started))) =>
                    {
                        g + 1
                    }
                    Some(_) => continue,
                },
            };
            if ctx
                .rd
                .claim(&u.id, generation, &Holder::me(ctx.spec.index))?
            {
                if generation > 1 {
                    tracing::info!("unit {} taken over at generation {generation}", u.id);
                }
                return Ok(Some((u, generation)));
            }
        }
    }
    Ok(None)
}

/// The committed unit whose entries are being moved into the run's tree.
type Moving<'s> = Option<std::thread::ScopedJoinHandle<'s, Result<(), ShardError>>>;

/// Waits for the move in flight, if any; `true` if there was one.
fn settle(moving: &mut Moving) -> Result<bool, ShardError> {
    match moving.take() {
        Some(h) => h
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
            .map(|()| true),
        None => Ok(false),
    }
}

/// Claims, builds and commits units, one at a time in this lane, each walked on `jobs`
/// threads under the worker's gate. Moving a committed unit's entries into the run's
/// tree is a link or a rename per entry, each a few sequential metadata calls (on NFS,
/// round trips), so it runs in a thread of its own while the next unit is claimed
/// and walked. The move needs no lease (the unit is committed, and the move is
/// idempotent); at most one is in flight, and it is waited for before this returns, so
/// it ends while the worker still holds the store's lock (finalize cannot start).
fn claim_loop(
    ctx: &Worker,
    jobs: usize,
    out: &mut Outcome,
    current: &Current,
    failed: &AtomicBool,
    commits: &super::Bell,
) -> Result<bool, ShardError> {
    std::thread::scope(|s| {
        let mut moving: Moving = None;
        let r = claim_units(ctx, jobs, out, (current, failed, commits), s, &mut moving);
        let last = settle(&mut moving);
        let r = r?;
        last?;
        Ok(r)
    })
}

fn claim_units<'s>(
    ctx: &'s Worker,
    jobs: usize,
    out: &mut Outcome,
    (current, failed, commits): (&Current, &AtomicBool, &super::Bell),
    s: &'s std::thread::Scope<'s, '_>,
    moving: &mut Moving<'s>,
) -> Result<bool, ShardError> {
    let me = Holder::me(ctx.spec.index);
    let order = ctx.cut.claim_order(ctx.spec.index);
    loop {
        if ctx.cancel.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let mut seen = 0;
        let rung = commits.rings();
        let picked = match pick_home(ctx, &order)? {
            Some(u) => Some((u, 1)),
            None => {
                let done = ctx.idle.done(ctx.rd)?;
                if ctx.cut.units.iter().all(|u| done.contains(&u.id)) {
                    commits.ring();
                    return Ok(true);
                }
                seen = done.len();
                ctx.idle.pick(ctx, &order, &done, idle_wait(ctx.lease))?
            }
        };
        let Some((unit, generation)) = picked else {
            // Everything left is claimed by live workers: wait, to take over if one
            // stalls, and to finalize when the last one commits.
            settle(moving)?;
            wait_for_a_commit(ctx, seen, failed, (commits, rung))?;
            continue;
        };
        {
            // Under the lock the beat sets them by (see `work`): a late beat for the
            // unit before cannot mark this one.
            let mut held = current.unit.lock().unwrap_or_else(|e| e.into_inner());
            current.stop.store(false, Ordering::Relaxed);
            current.lost.store(false, Ordering::Relaxed);
            *held = Some((unit.id.clone(), generation));
        }
        // Tests: a lane that has just taken its next unit.
        let _ = crate::failpoint::hit("shard.unit_started");
        let built = build(ctx, unit, generation, jobs, &current.stop);
        *current.unit.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let finished = match built {
            // Taken over meanwhile (a stopped worker woken past its lease): whatever
            // failed is the newer generation's unit now, and the commit of that one
            // removes this one's work directory, which may be what failed.
            Err(e) if ctx.rd.claim_path(&unit.id, generation + 1).exists() => {
                tracing::debug!("unit {} failed after it was taken over: {e}", unit.id);
                None
            }
            r => r?,
        };
        if ctx.cancel.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
            out.left.push(unit.id.clone());
            return Ok(false);
        }
        if let Some(counts) = finished
            && !current.lost.load(Ordering::Relaxed)
        {
            crate::failpoint::hit("shard.before_commit")
                .ctx("commit", ctx.rd.done_path(&unit.id))?;
            let problems = counts.problems.len() as u64;
            let c = Commit {
                generation,
                worker: ctx.spec.index,
                host: me.host.clone(),
                pid: me.pid,
                at: crate::util::now_rfc3339(),
                plan: ctx.plan_hash.to_string(),
                counts: Some(counts),
            };
            if ctx.rd.commit(&unit.id, &c, ctx.part_dirs)? {
                ctx.idle.forget();
                out.problems += problems;
                commits.ring();
                let _ = crate::failpoint::hit("shard.after_commit");
                tracing::info!(
                    "unit {} committed (generation {generation}) in {:.2} s, weight {}",
                    unit.id,
                    c.counts.as_ref().map_or(0.0, |n| n.seconds),
                    unit.weight
                );
                settle(moving)?;
                *moving = Some(s.spawn(move || {
                    let placed = place_with_waiting(ctx.rd, ctx.cut, unit, generation);
                    // This commit is the unit's (its marker was created exclusively),
                    // so no older generation can be committed or needed: their work
                    // directories, left by killed or failed attempts, go now rather than
                    // at finalize. After a full disk, that space is the rest of the
                    // run's.
                    for g in 1..generation {
                        discard(ctx.rd, &unit.id, g, ctx.part_dirs);
                    }
                    placed
                }));
                out.committed.push(unit.id.clone());
                continue;
            }
        }
        tracing::warn!(
            "unit {} was taken over by another worker while this one built it (its lease lapsed); this copy is discarded",
            unit.id
        );
        discard(ctx.rd, &unit.id, generation, ctx.part_dirs);
        out.lost.push(unit.id.clone());
    }
}

/// Waits while every unit left is claimed by a live worker: until a unit is committed
/// (`done/` holds more than `seen` names: the last commit lets the run be finalized at
/// once), or for an eighth of the lease (then the claims are read again, to take over
/// a lapsed one). `done/` is listed every [`done_poll`] (25 ms with one lane, 8–10 ms
/// with three), one listing for all the worker's lanes ([`Idle`]); the claims, a listing and a read of each live claim, only at the
/// lease's pace, by one lane of the worker. A commit by this
/// worker's other lane, or its seeing every unit committed (the `commits` bell rung
/// past `rung`), ends the wait at once.
fn wait_for_a_commit(
    ctx: &Worker,
    seen: usize,
    failed: &AtomicBool,
    (commits, rung): (&super::Bell, u64),
) -> Result<(), ShardError> {
    let until = Instant::now() + idle_wait(ctx.lease);
    while Instant::now() < until {
        if commits.wait(rung, ctx.idle.poll) {
            break;
        }
        if ctx.cancel.load(Ordering::Relaxed)
            || failed.load(Ordering::Relaxed)
            || ctx.idle.done(ctx.rd)?.len() > seen
        {
            break;
        }
    }
    Ok(())
}

/// How long a lane with nothing to claim waits before it looks at the claims again:
/// an eighth of the lease, 50–150 ms.
fn idle_wait(lease: Duration) -> Duration {
    (lease / 8).clamp(Duration::from_millis(50), Duration::from_millis(150))
}

/// Removes a generation that lost its unit.
fn discard(rd: &RunDir, unit: &str, generation: u32, part_dirs: u32) {
    let _ = std::fs::remove_dir_all(rd.work(unit, generation));
    let _ = std::fs::remove_file(rd.counts_path(unit, generation));
    let (mf, idx) = manifest::paths(
        &rd.part_dir(unit, part_dirs),
        &format!("{unit}.g{generation}"),
    );
    let _ = std::fs::remove_file(mf);
    let _ = std::fs::remove_file(idx);
}

/// Builds generation `generation` of `unit` in its work directory: its figures, or
/// `None` when `stop` stopped it (the worker was stopped, or the unit taken over).
fn build(
    ctx: &Worker,
    unit: &Unit,
    generation: u32,
    jobs: usize,
    stop: &AtomicBool,
) -> Result<Option<UnitCounts>, ShardError> {
    let t0 = Instant::now();
    let started_at = crate::util::now_rfc3339();
    let rd = ctx.rd;
    let work = rd.work(&unit.id, generation);
    if work.exists() {
        std::fs::remove_dir_all(&work).ctx("remove", &work)?;
    }
    crate::util::create_private_dir(&work, true).ctx("create", &work)?;
    let work_fd = fsx::open_dir(&work).ctx("open", &work)?;
    let resume = ctx.planned_at.and_then(|t| {
        let p = rd.older_work(&unit.id, generation)?;
        Some((fsx::open_dir(&p).ok()?, t))
    });
    let part_id = format!("{}.g{generation}", unit.id);
    let parts = rd.part_dir(&unit.id, ctx.part_dirs);
    let writer = match manifest::Writer::part(&parts, &part_id, fsx::wall_clock()) {
        // The first part of its subdirectory makes it (another worker may at once).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && parts != rd.parts() => {
            crate::util::create_private_dir(&parts, true)
                .or_else(|e| if parts.is_dir() { Ok(()) } else { Err(e) })
                .ctx("create", &parts)?;
            manifest::Writer::part(&parts, &part_id, fsx::wall_clock())
        }
        w => w,
    }
    .ctx("create manifest part in", &parts)?;
    let src_path = ctx.source.join(unit.dir.as_path());
    let counters = Counters {
        throttle: ctx.throttle.clone(),
        ..Counters::default()
    };
    // `one_file_system`: the unit's directory, or one above it, is on another file
    // system than the source's root (mounted since the plan: the planner cuts no
    // mount). Its contents are not backed up: the unit is empty and records that
    // directory in its commit; finalize decides the mount points by what the units
    // recorded (`sizes::SpineMounts`), never by a `stat` of its own.
    if let Some(crossed) = ctx
        .one_fs
        .and_then(|dev| super::sizes::crossed_at(&ctx.source, &unit.dir, dev))
    {
        tracing::info!(
            "unit {}: {crossed} is on another file system (one_file_system): nothing walked",
            unit.id,
        );
        let sink = TreeSink::new(work_fd, None, None, writer);
        let root = Entry::from_meta(b".", &fsx::fstat(b(&sink_root(&work)?)).ctx("stat", &work)?);
        crate::sink::Sink::commit(sink, &root).ctx("seal", &work)?;
        let mut counts = unit_counts(&counters, t0, started_at);
        counts.crossed = Some(crossed.escaped());
        return Ok(Some(counts));
    }
    // Beneath the source's root, following no symlink: a directory on the way swapped
    // for a symlink since the plan must not lead the walk out of the source.
    let src = match fsx::open_dir_beneath(b(&ctx.src_root), unit.dir.as_bytes()) {
        Ok(fd) => fd,
        Err(e) if fsx::gone_beneath(&e) => {
            // A directory the plan cut is gone from the source, or it or one above it is
            // no directory now (a symlink is not followed): nothing to back up.
            counters.problem(Problem {
                path: unit.dir.escaped(),
                kind: ProblemKind::Vanished,
                action: "open directory".into(),
                error: e.to_string(),
            });
            let sink = TreeSink::new(work_fd, None, None, writer);
            let root =
                Entry::from_meta(b".", &fsx::fstat(b(&sink_root(&work)?)).ctx("stat", &work)?);
            crate::sink::Sink::commit(sink, &root).ctx("seal", &work)?;
            return Ok(Some(unit_counts(&counters, t0, started_at)));
        }
        // There but not to be opened (permission denied, an I/O error, a stale
        // handle): the unit's names of the previous snapshot are kept (below), as a
        // single-node run keeps an unreadable directory's entries. Without a previous
        // manifest there is nothing to keep: the worker fails, as finalize would.
        Err(e) if ctx.prev.as_ref().is_some_and(|p| p.manifest.is_some()) => {
            return keep_unreadable(
                ctx,
                unit,
                (&work, work_fd, resume, writer),
                &counters,
                stop,
                e,
            )
            .map(|built| built.then(|| unit_counts(&counters, t0, started_at)));
        }
        Err(e) => return Err(io_error(e, "open source directory", &src_path).into()),
    };
    let src_meta = fsx::fstat(b(&src)).ctx("stat", &src_path)?;
    let one_fs = ctx.one_fs.map(crate::traverse::OneFs::new);
    let sink = unit_sink(ctx, unit, work_fd, resume, writer);
    let mut walk = unit_walk(ctx, unit, &counters, stop, &sink)
        .fenced(&ctx.opts.store, ctx.store_fence)
        // Taken over while this worker was stopped: what fails is the newer
        // generation's business (its commit removes this one's work directory).
        .moot_if(Box::new(move || {
            rd.claim_path(&unit.id, generation + 1).exists()
        }));
    if let Some(fs) = &one_fs {
        walk = walk.stay_on(fs);
    }
    walk.run_at(src, src_meta, unit.dir.clone(), jobs);
    let fatal = walk.fatal.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(walk);
    if let Some(fs) = &one_fs {
        // Paths of the source (the walk's root is the unit's directory there).
        let m = fs.skipped();
        counters.mount_points(m.count, m.first.iter().map(|p| p.escaped()));
    }
    if let Some(e) = fatal {
        crate::sink::Sink::abandon(sink);
        return Err(ShardError::Failed(e));
    }
    if stop.load(Ordering::Relaxed) {
        crate::sink::Sink::abandon(sink);
        // The worker stopped (SIGTERM/SIGINT, its window), or only this unit's walk:
        // a newer generation took the unit over.
        let why = match (ctx.cancel.load(Ordering::Relaxed), ctx.opts.window) {
            (true, Some(_)) => crate::report::GaveUp::Window,
            (true, None) => crate::report::GaveUp::Stopped,
            (false, _) => crate::report::GaveUp::TakenOver,
        };
        let given_up = counters.given_up_warnings(why);
        for w in &given_up {
            tracing::warn!("unit {}: {w}", unit.id);
        }
        ctx.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(given_up);
        return Ok(None);
    }
    let mut root = Entry::from_meta(b".", &src_meta);
    root.group = None;
    crate::sink::Sink::commit(sink, &root).ctx("seal unit", &work)?;
    Ok(Some(unit_counts(&counters, t0, started_at)))
}

/// Unit `unit` whose directory could not be opened (`e`): its work directory (`work`,
/// an interrupted build's to resume from, its manifest part's writer) holds the
/// previous snapshot's entries of its names ([`Walk::keep_prev_root`]), with an
/// `unreadable` problem; finalize takes the directory's own metadata from the
/// previous manifest when it cannot open it either. `false`: stopped.
fn keep_unreadable(
    ctx: &Worker,
    unit: &Unit,
    (work, work_fd, resume, writer): (
        &std::path::Path,
        OwnedFd,
        Option<(OwnedFd, fsx::Time)>,
        manifest::Writer,
    ),
    counters: &Counters,
    stop: &AtomicBool,
    e: std::io::Error,
) -> Result<bool, ShardError> {
    let sink = unit_sink(ctx, unit, work_fd, resume, writer);
    let walk = unit_walk(ctx, unit, counters, stop, &sink);
    walk.keep_prev_root(&unit.dir, &e);
    let fatal = walk.fatal.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(walk);
    if let Some(e) = fatal {
        crate::sink::Sink::abandon(sink);
        return Err(ShardError::Failed(e));
    }
    if stop.load(Ordering::Relaxed) {
        crate::sink::Sink::abandon(sink);
        return Ok(false);
    }
    let mut root = Entry::from_meta(b".", &fsx::fstat(b(&sink_root(work)?)).ctx("stat", work)?);
    root.group = None;
    crate::sink::Sink::commit(sink, &root).ctx("seal unit", work)?;
    Ok(true)
}

/// Unit `unit`'s sink: its work directory (`work_fd`), the previous snapshot's
/// directory of it, an interrupted build's to resume from, its manifest part's writer.
/// Over NFS each previous directory is listed as it is opened, as a single-node run's
/// sink does (`Repository::begin`): the `linkat` of an unchanged file then finds its
/// previous version in the client's cache, with no LOOKUP of its own. [`build`] and
/// [`keep_unreadable`] set it up alike.
fn unit_sink(
    ctx: &Worker,
    unit: &Unit,
    work_fd: OwnedFd,
    resume: Option<(OwnedFd, fsx::Time)>,
    writer: manifest::Writer,
) -> TreeSink {
    let prev_dir = ctx
        .prev_root
        .as_ref()
        .and_then(|r| fsx::open_dir_beneath(b(r), unit.dir.as_bytes()).ok());
    TreeSink::new(work_fd, prev_dir, resume, writer)
        .held_by_store(ctx.held)
        .rooted_at(unit.dir.clone())
        .listing_prev(ctx.remote)
}

/// Unit `unit`'s walk into `sink`: the unit's names of its directory, the previous
/// manifest to compare with (and keep from, naming the snapshot it keeps from), the
/// worker's `--jobs` permits. [`build`] fences it from the store and walks it;
/// [`keep_unreadable`] keeps the previous entries of an unreadable directory with it.
fn unit_walk<'a>(
    ctx: &'a Worker,
    unit: &'a Unit,
    counters: &'a Counters,
    stop: &'a AtomicBool,
    sink: &'a TreeSink,
) -> Walk<'a, TreeSink> {
    let keep = ctx.cut.unit_names(unit);
    let manifest = ctx.prev.as_ref().and_then(|p| p.manifest.as_ref());
    let kept_from = ctx
        .prev
        .as_ref()
        .map(|p| p.run.clone().unwrap_or_else(|| p.name.clone()));
    Walk::new(counters, stop, &ctx.excludes, manifest, sink)
        .kept_from(kept_from)
        .damaged(ctx.prev.as_ref().map(|p| &p.damaged))
        .record(ctx.prev.as_ref().and_then(|p| p.record.as_ref()))
        .only_root_names(Box::new(keep))
        .gate(&ctx.gate)
}

fn sink_root(work: &std::path::Path) -> Result<OwnedFd, ShardError> {
    Ok(fsx::open_dir(work).ctx("open", work)?)
}

/// A built unit's figures, for its commit.
fn unit_counts(c: &Counters, t0: Instant, started_at: String) -> UnitCounts {
    let mut r = crate::engine::backup::new_report(
        &BackupOptions::new("", ""),
        "",
        std::path::Path::new(""),
    );
    c.fill(&mut r);
    let not_kept = c
        .xattrs_not_kept
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    UnitCounts {
        files_total: r.files_total,
        dirs_total: r.dirs_total,
        files_transferred: r.files_transferred,
        files_linked: r.files_linked,
        files_resumed: r.files_resumed,
        link_fallbacks: r.link_fallbacks,
        changed_during_backup: r.changed_during_backup,
        bytes_total: r.bytes_total,
        bytes_transferred: r.bytes_transferred,
        errors: r.errors,
        problems: r.problems,
        seconds: t0.elapsed().as_secs_f64(),
        started_at,
        mount_points_skipped: r.mount_points_skipped,
        mount_points: r.mount_points,
        crossed: None,
        xattrs_not_kept: not_kept.0,
        xattrs_not_kept_names: not_kept
            .1
            .iter()
            .map(|n| crate::relpath::escape(n))
            .collect(),
    }
}

/// What [`place_unit`] did with a committed unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// Its work directory became its spine directory in the run's tree (an anchor).
    Renamed,
    /// Its entries are in the run's tree (moved now, or by an earlier call).
    Moved,
    /// Not yet: the directory it goes into is not in the run's tree yet.
    Waiting,
}

/// Puts a committed unit's entries into the run's tree (`tree/<spine dir>/<name>`).
///
/// The anchor of a spine directory ([`Unit::anchor`], the unit with most of its
/// entries) has its work directory renamed to be that directory, once the directory's
/// parent is in the tree: one call for all its entries. Any other unit has its entries
/// moved into the directory one by one ([`move_entry`]), once the directory is there;
/// only the anchor's rename (or finalize) makes it, so a unit committed first waits
/// ([`Placed::Waiting`]) and [`place_with_waiting`] places it when its anchor is placed.
/// `finalizing`: make whatever directory is missing, and wait for nothing.
///
/// Idempotent: a placed unit's work directory is gone, so a crash at any point is
/// completed by the next call (the worker's retry, or finalize). Only the anchor's
/// rename creates its directory while workers run, so the rename never replaces an
/// empty directory that entries are being moved into.
pub fn place_unit(
    rd: &RunDir,
    unit: &Unit,
    generation: u32,
    finalizing: bool,
) -> Result<Placed, ShardError> {
    if unit.anchor {
        let tree = rd.tree();
        let (parent, name) = if unit.dir.is_root() {
            (rd.root.clone(), b"tree".to_vec())
        } else {
            (
                tree.join(unit.dir.parent().as_path()),
                unit.dir.file_name().to_vec(),
            )
        };
        let pfd = if finalizing && !unit.dir.is_root() {
            make_dirs(&tree, &unit.dir.parent())?
        } else {
            match fsx::open_dir(&parent) {
                Ok(fd) => fd,
                Err(e) if fsx::errno_is(&e, Errno::NOENT) => return Ok(Placed::Waiting),
                Err(e) => return Err(io_error(e, "open", &parent).into()),
            }
        };
        let work = rd.root.join("work");
        let wfd = match fsx::open_dir(&work) {
            Ok(fd) => fd,
            Err(e) if fsx::errno_is(&e, Errno::NOENT) => return Ok(Placed::Moved),
            Err(e) => return Err(io_error(e, "open", &work).into()),
        };
        let from = format!("{}.g{generation}", unit.id);
        crate::failpoint::hit("shard.place").ctx("place into the run's tree", &work)?;
        match fsx::rename_noreplace(b(&wfd), from.as_bytes(), b(&pfd), &name) {
            Ok(()) => return Ok(Placed::Renamed),
            // Placed by another call (the work directory is gone).
            Err(e) if fsx::errno_is(&e, Errno::NOENT) => return Ok(Placed::Moved),
            // The directory is there already (made by finalize after a crash): the
            // entries go into it one by one.
            Err(e) if fsx::errno_is(&e, Errno::EXIST) || fsx::errno_is(&e, Errno::NOTEMPTY) => {}
            Err(e) => {
                return Err(io_error(
                    e,
                    "rename a committed unit to",
                    parent.join(
                        RelPath::new(&name)
                            .map(|r| r.as_path().to_path_buf())
                            .unwrap_or_default(),
                    ),
                )
                .into());
            }
        }
    }
    move_unit(rd, unit, generation, finalizing)
}

/// Places `unit` ([`place_unit`]) and, when that made its spine directory, the
/// committed units that were waiting for it (the directory's other units, the anchors
/// of its spine subdirectories), and theirs in turn. What is still waiting after this
/// (a unit committed after the listing of `done/` places itself) finalize places.
pub fn place_with_waiting(
    rd: &RunDir,
    cut: &Cut,
    unit: &Unit,
    generation: u32,
) -> Result<(), ShardError> {
    let mut queue = vec![(unit, generation)];
    while let Some((u, g)) = queue.pop() {
        if place_unit(rd, u, g, false)? != Placed::Renamed {
            continue;
        }
        let waiting: Vec<&Unit> = cut
            .units
            .iter()
            .filter(|w| {
                w.id != u.id
                    && (w.dir == u.dir || (w.anchor && !w.dir.is_root() && w.dir.parent() == u.dir))
            })
            .collect();
        if waiting.is_empty() {
            continue;
        }
        let done = rd.done_names()?;
        for w in waiting {
            if done.contains(&w.id)
                && let Some(c) = rd.read_commit(&w.id)?
            {
                queue.push((w, c.generation));
            }
        }
    }
    Ok(())
}

/// Moves a committed unit's entries from its work directory into its spine directory
/// in the run's tree (made first when `finalizing`; else [`Placed::Waiting`] while it
/// is not there). Idempotent: a name already moved is gone from the work directory.
///
/// A file (anything but a directory) is linked into the tree, then unlinked from the
/// work directory; only directories are renamed. A rename across directories takes
/// the mount's one rename lock in the kernel (`lock_rename`), so on NFS or FUSE every
/// worker's moves on a host went one round trip at a time: 50 names took 0.7 s at the
/// end of a unit (about 14 ms each, 1 ms latency) and delayed finalize by as much. A
/// link locks only the two directories.
fn move_unit(
    rd: &RunDir,
    unit: &Unit,
    generation: u32,
    finalizing: bool,
) -> Result<Placed, ShardError> {
    let work = rd.work(&unit.id, generation);
    let wfd = match fsx::open_dir(&work) {
        Ok(fd) => fd,
        Err(e) if fsx::errno_is(&e, Errno::NOENT) => return Ok(Placed::Moved),
        Err(e) => return Err(io_error(e, "open", &work).into()),
    };
    let names = fsx::list_dir_typed(b(&wfd)).ctx("read", &work)?;
    if !names.is_empty() {
        let to = rd.tree().join(unit.dir.as_path());
        let dst = if finalizing {
            make_dirs(&rd.tree(), &unit.dir)?
        } else {
            match fsx::open_dir(&to) {
                Ok(fd) => fd,
                Err(e) if fsx::errno_is(&e, Errno::NOENT) => return Ok(Placed::Waiting),
                Err(e) => return Err(io_error(e, "open", &to).into()),
            }
        };
        let target = |n: &[u8]| {
            to.join(
                RelPath::new(n)
                    .map(|r| r.as_path().to_path_buf())
                    .unwrap_or_default(),
            )
        };
        for (i, (n, kind)) in names.iter().enumerate() {
            if i == 1 {
                crate::failpoint::hit("shard.move").ctx("move into the run's tree", &work)?;
            }
            move_entry(b(&wfd), b(&dst), n, *kind)
                .map_err(|e| io_error(e, "move a committed unit's entry to", target(n)))?;
        }
    }
    match std::fs::remove_dir(&work) {
        Ok(()) => Ok(Placed::Moved),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Placed::Moved),
        Err(e) => Err(io_error(e, "remove", &work).into()),
    }
}

/// Places every committed unit ([`place_unit`], `finalizing`): spine directories top
/// down, each level's anchors before its other units, so that an anchor is renamed
/// into place rather than moved entry by entry into a directory made for another unit.
pub fn place_all(
    rd: &RunDir,
    threads: usize,
    cut: &Cut,
    generation_of: &(dyn Fn(&Unit) -> u32 + Sync),
) -> Result<(), ShardError> {
    // Most units were placed by their workers: their work directories are gone. One
    // listing of `work/` spares the levels below (one after another, each a few round
    // trips) for them. (A lookup of each unit's name instead: on a FUSE mount those of
    // one directory go one at a time, 0.05 s for 47 units at 1 ms.) Where `work/`
    // cannot be listed, every unit is left to `place_unit`.
    let work = rd.root.join("work");
    let there: Option<std::collections::BTreeSet<std::ffi::OsString>> =
        match std::fs::read_dir(&work) {
            Ok(it) => it
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Default::default()),
            Err(_) => None,
        };
    let left = cut.units.iter().map(|u| {
        there.as_ref().is_none_or(|names| {
            rd.work(&u.id, generation_of(u))
                .file_name()
                .is_some_and(|n| names.contains(n))
        })
    });
    let mut levels: std::collections::BTreeMap<(usize, bool), Vec<&Unit>> =
        std::collections::BTreeMap::new();
    for (u, _) in cut.units.iter().zip(left).filter(|(_, l)| *l) {
        levels
            .entry((u.dir.components().count(), !u.anchor))
            .or_default()
            .push(u);
    }
    for units in levels.values() {
        for r in super::par_map(threads, units, |u| {
            place_unit(rd, u, generation_of(u), true)
        }) {
            r?;
        }
    }
    Ok(())
}

/// Moves `name` from `from` to `to` (see [`move_unit`]): a link and an unlink, or a
/// rename for a directory (or where the link is refused: too many links, a file system
/// without them). A name already in `to` as the same inode was linked by an earlier
/// call that died before the unlink.
fn move_entry(
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    name: &[u8],
    kind: Option<Kind>,
) -> std::io::Result<()> {
    let kind = match kind {
        Some(k) => k,
        None => match fsx::lstat_at(from, name) {
            Ok(m) => m.kind,
            Err(e) if fsx::errno_is(&e, Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e),
        },
    };
    if kind != Kind::Dir {
        match fsx::link_at(from, name, to, name) {
            Ok(()) => return unlinked(fsx::unlink_at(from, name)),
            Err(e) if fsx::errno_is(&e, Errno::NOENT) => return Ok(()),
            Err(e) if fsx::errno_is(&e, Errno::EXIST) => {
                let (a, z) = (fsx::lstat_at(from, name), fsx::lstat_at(to, name));
                match (&a, &z) {
                    (Ok(a), Ok(z)) if a.ino == z.ino => {
                        return unlinked(fsx::unlink_at(from, name));
                    }
                    // Moved meanwhile by another call placing the same unit (its own
                    // worker's and its anchor's, at once: `place_with_waiting`).
                    (Err(a), Ok(_)) if fsx::errno_is(a, Errno::NOENT) => return Ok(()),
                    _ => return Err(e),
                }
            }
            Err(e)
                if fsx::errno_is(&e, Errno::MLINK)
                    || fsx::errno_is(&e, Errno::PERM)
                    || fsx::errno_is(&e, Errno::XDEV)
                    || fsx::errno_is(&e, Errno::OPNOTSUPP) => {}
            Err(e) => return Err(e),
        }
    }
    match fsx::rename_noreplace(from, name, to, name) {
        Ok(()) => Ok(()),
        Err(e) if fsx::errno_is(&e, Errno::NOENT) => Ok(()),
        // Renamed by another call placing the same unit, between its check and its
        // rename where the file system refuses the flag (`rename_noreplace`'s fallback).
        Err(e)
            if fsx::errno_is(&e, Errno::EXIST)
                && fsx::lstat_at(from, name).is_err_and(|e| fsx::errno_is(&e, Errno::NOENT)) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// An unlink that found the name gone already (another call finished it) did its job.
fn unlinked(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if fsx::errno_is(&e, Errno::NOENT) => Ok(()),
        r => r,
    }
}

/// Opens `rel` under `root`, making every missing directory on the way (another
/// worker making the same one at the same time is fine).
pub fn make_dirs(root: &std::path::Path, rel: &RelPath) -> Result<OwnedFd, ShardError> {
    match std::fs::create_dir(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error(e, "create", root).into()),
    }
    let mut cur = fsx::open_dir(root).ctx("open", root)?;
    for c in rel.components() {
        match fsx::mkdir_at(b(&cur), c) {
            Ok(()) => {}
            Err(e) if fsx::errno_is(&e, Errno::EXIST) => {}
            Err(e) => return Err(io_error(e, "create", root.join(rel.as_path())).into()),
        }
        cur = fsx::open_dir_at(b(&cur), c).ctx("open", root.join(rel.as_path()))?;
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn fd(p: &std::path::Path) -> OwnedFd {
        fsx::open_dir(p).unwrap()
    }

    /// A run directory made in `t`.
    fn run_dir(t: &tempfile::TempDir) -> RunDir {
        let rd = RunDir::new(t.path(), "r");
        rd.create().unwrap();
        rd
    }

    /// One listing of `done/` serves all the lanes of a worker for [`Idle::poll`],
    /// counted from when a lane asked (not from when it got the lock), and a commit of
    /// the worker's own is seen at once (its lane decides by it whether the run is
    /// complete and finalizes): session 48, one poller a worker. The calls are given
    /// their time ([`Idle::done_at`]): the test does not depend on the machine's speed.
    #[test]
    fn a_workers_lanes_share_one_listing_of_done_and_see_its_own_commit_at_once() {
        let t = tempfile::tempdir().unwrap();
        let rd = run_dir(&t);
        std::fs::create_dir_all(rd.root.join("done")).unwrap();
        let idle = Idle::new(3);
        let poll = idle.poll;
        // A lane arrives, then another while the first one lists (it waits for the
        // lock): the second uses the first's listing.
        let arrived = Instant::now();
        let first = idle.done_at(&rd, arrived).unwrap();
        assert!(first.is_empty());
        std::fs::write(rd.done_path("u0000"), b"{}").unwrap();
        let again = idle.done_at(&rd, arrived).unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&first, &again),
            "a second lane within the poll lists again"
        );
        // One arriving a poll after the listing began lists again.
        let later = idle.done_at(&rd, Instant::now() + poll).unwrap();
        assert!(later.contains("u0000"), "a listing older than the poll");
        idle.forget();
        std::fs::write(rd.done_path("u0001"), b"{}").unwrap();
        assert_eq!(
            idle.done_at(&rd, arrived).unwrap().len(),
            2,
            "own commit unseen"
        );
    }

    /// How often `done/` is listed: 25 ms with one lane (as each lane did before session
    /// 48), a lane's 25 ms shared by the lanes with more, not below 8 ms.
    #[test]
    fn done_is_listed_as_often_as_the_lanes_listed_it_on_their_own() {
        assert_eq!(done_poll(1), Duration::from_millis(25));
        assert_eq!(done_poll(lanes(3)), Duration::from_millis(25));
        assert_eq!(done_poll(2), Duration::from_micros(12_500));
        assert_eq!(done_poll(lanes(4)), Duration::from_nanos(8_333_333));
        assert_eq!(done_poll(lanes(16)), Duration::from_millis(8));
        assert_eq!(Idle::new(1).poll, Duration::from_millis(25));
    }

    /// Unit `id` of spine directory `dir`, names from `lo` to the end.
    fn unit(id: &str, dir: &str, lo: Option<&str>, anchor: bool) -> Unit {
        Unit {
            id: id.into(),
            dir: RelPath::new(dir.as_bytes()).unwrap(),
            lo: lo.map(|s| s.as_bytes().to_vec()),
            hi: None,
            weight: 1,
            home: 0,
            anchor,
        }
    }

    #[test]
    fn units_committed_before_their_anchor_wait_and_its_placement_places_them() {
        use super::super::state::Commit;
        let t = tempfile::tempdir().unwrap();
        let rd = run_dir(&t);
        // The root's anchor (names up to "m"), its other range, and the anchor of
        // the spine subdirectory "sub".
        let cut = Cut {
            spine: vec![RelPath::root(), RelPath::new(b"sub").unwrap()],
            units: vec![
                unit("u0000", "", None, true),
                unit("u0001", "", Some("m"), false),
                unit("u0002", "sub", None, true),
            ],
            cap: 1,
        };
        let files = [("u0000", "a"), ("u0001", "n"), ("u0002", "s")];
        for (u, f) in files {
            std::fs::create_dir_all(rd.work(u, 1).join(format!("{f}-dir"))).unwrap();
            std::fs::write(rd.work(u, 1).join(f), f).unwrap();
            let c = Commit {
                generation: 1,
                worker: 0,
                host: "h".into(),
                pid: 1,
                at: String::new(),
                plan: String::new(),
                counts: None,
            };
            assert!(rd.commit(u, &c, 0).unwrap());
        }
        let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
        let (root_ino, sub_ino) = (ino(&rd.work("u0000", 1)), ino(&rd.work("u0002", 1)));
        // Committed before the root's anchor: nowhere to go yet.
        for u in [&cut.units[1], &cut.units[2]] {
            assert_eq!(place_unit(&rd, u, 1, false).unwrap(), Placed::Waiting);
            assert!(rd.work(&u.id, 1).is_dir());
        }
        assert!(!rd.tree().exists());
        place_with_waiting(&rd, &cut, &cut.units[0], 1).unwrap();
        // The anchors' work directories became the directories; the other range's
        // entries were moved into the root's.
        assert_eq!(ino(&rd.tree()), root_ino);
        assert_eq!(ino(&rd.tree().join("sub")), sub_ino);
        for (p, body) in [("a", "a"), ("n", "n"), ("sub/s", "s")] {
            assert_eq!(std::fs::read_to_string(rd.tree().join(p)).unwrap(), body);
        }
        for d in ["a-dir", "n-dir", "sub/s-dir"] {
            assert!(rd.tree().join(d).is_dir(), "{d}");
        }
        assert!(
            fsx::list_dir(b(&fd(&rd.root.join("work"))))
                .unwrap()
                .is_empty()
        );
        // Placed already: nothing more to do, finalize included.
        for u in &cut.units {
            assert_eq!(place_unit(&rd, u, 1, true).unwrap(), Placed::Moved);
        }
    }

    #[test]
    fn finalize_places_units_whose_anchor_directory_was_made_already() {
        let t = tempfile::tempdir().unwrap();
        let rd = run_dir(&t);
        let anchor = unit("u0000", "sub", None, true);
        std::fs::create_dir_all(rd.work("u0000", 1)).unwrap();
        std::fs::write(rd.work("u0000", 1).join("s"), "s").unwrap();
        // Neither the tree nor the anchor's parent is there: finalize makes them.
        assert_eq!(place_unit(&rd, &anchor, 1, false).unwrap(), Placed::Waiting);
        assert_eq!(place_unit(&rd, &anchor, 1, true).unwrap(), Placed::Renamed);
        assert_eq!(
            std::fs::read_to_string(rd.tree().join("sub/s")).unwrap(),
            "s"
        );
        // A directory made for it already (a finalize cut short): moved into it.
        let t2 = tempfile::tempdir().unwrap();
        let rd = run_dir(&t2);
        std::fs::create_dir_all(rd.work("u0000", 1)).unwrap();
        std::fs::write(rd.work("u0000", 1).join("s"), "s").unwrap();
        std::fs::create_dir_all(rd.tree().join("sub")).unwrap();
        std::fs::write(rd.tree().join("sub/t"), "t").unwrap();
        assert_eq!(place_unit(&rd, &anchor, 1, true).unwrap(), Placed::Moved);
        for f in ["s", "t"] {
            assert_eq!(
                std::fs::read_to_string(rd.tree().join("sub").join(f)).unwrap(),
                f
            );
        }
        assert!(!rd.work("u0000", 1).exists());
    }

    #[test]
    fn an_entry_is_moved_once_and_a_move_cut_short_after_its_link_is_completed() {
        let t = tempfile::tempdir().unwrap();
        let (from, to) = (t.path().join("work"), t.path().join("tree"));
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::create_dir(&to).unwrap();
        std::fs::write(from.join("sub/inner"), b"inner").unwrap();
        for n in ["a", "b"] {
            std::fs::write(from.join(n), n.as_bytes()).unwrap();
        }
        std::os::unix::fs::symlink("a", from.join("ln")).unwrap();
        let ino_a = std::fs::metadata(from.join("a")).unwrap().ino();
        // "b" was linked into the tree by a move that died before its unlink.
        std::fs::hard_link(from.join("b"), to.join("b")).unwrap();
        let (f, d) = (fd(&from), fd(&to));
        for (n, k) in fsx::list_dir_typed(b(&f)).unwrap() {
            move_entry(b(&f), b(&d), &n, k).unwrap();
        }
        // A name already moved (gone from the work directory) is nothing to do.
        move_entry(b(&f), b(&d), b"a", Some(Kind::File)).unwrap();
        assert!(fsx::list_dir(b(&f)).unwrap().is_empty());
        let a = std::fs::metadata(to.join("a")).unwrap();
        assert_eq!((a.ino(), a.nlink()), (ino_a, 1), "a file keeps its inode");
        assert_eq!(std::fs::read(to.join("b")).unwrap(), b"b");
        assert_eq!(std::fs::metadata(to.join("b")).unwrap().nlink(), 1);
        assert_eq!(std::fs::read(to.join("sub/inner")).unwrap(), b"inner");
        assert_eq!(
            std::fs::read_link(to.join("ln")).unwrap(),
            std::path::Path::new("a")
        );
        // Another file under a name the tree has already is an error, not a loss.
        std::fs::write(from.join("c"), b"new").unwrap();
        std::fs::write(to.join("c"), b"other").unwrap();
        assert!(move_entry(b(&f), b(&d), b"c", Some(Kind::File)).is_err());
        assert_eq!(std::fs::read(from.join("c")).unwrap(), b"new");
        assert_eq!(std::fs::read(to.join("c")).unwrap(), b"other");
    }

    /// A non-anchor unit committed as its anchor is renamed is placed by its own
    /// worker and by the anchor's (`place_with_waiting`), at once: a name the other
    /// call moved between this one's link and its check is moved, not an error.
    #[test]
    fn two_placements_of_one_unit_at_once_both_succeed() {
        let t = tempfile::tempdir().unwrap();
        let rd = run_dir(&t);
        let unit = unit("u0001", "", Some("m"), false);
        std::fs::create_dir_all(rd.tree()).unwrap();
        for round in 0..8 {
            let w = rd.work("u0001", 1);
            std::fs::create_dir_all(&w).unwrap();
            for i in 0..300 {
                std::fs::write(w.join(format!("r{round}f{i:03}")), b"x").unwrap();
            }
            std::fs::create_dir(w.join(format!("r{round}dir"))).unwrap();
            let errs: Vec<String> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..2)
                    .map(|_| s.spawn(|| place_unit(&rd, &unit, 1, false)))
                    .collect();
                hs.into_iter()
                    .filter_map(|h| h.join().unwrap().err().map(|e| e.to_string()))
                    .collect()
            });
            assert!(errs.is_empty(), "round {round}: {errs:?}");
            assert!(!w.exists());
            assert_eq!(
                fsx::list_dir(b(&fd(&rd.tree()))).unwrap().len(),
                301 * (round + 1)
            );
        }
    }

    #[test]
    fn a_worker_of_more_jobs_builds_more_units_at_once() {
        // About four permits a unit's walk keeps busy: one lane below 4 jobs, three for
        // 4, three more for every four more, up to MAX_LANES.
        assert_eq!(lanes(1), 1);
        assert_eq!(lanes(3), 1);
        assert_eq!(lanes(4), 3);
        assert_eq!(lanes(8), 6);
        assert_eq!(lanes(16), 12);
        assert_eq!(lanes(64), MAX_LANES);
    }
}
