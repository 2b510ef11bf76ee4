//! `snapring daemon`: runs every scheduled job of a config file at its times. Each run
//! is a child process (`snapring run JOB`), so runs keep their own logs, signals and
//! crashes apart from the scheduler. One run per job at a time: a trigger that comes
//! while the job still runs is skipped and recorded. SIGHUP reloads the config (a bad
//! one is reported and the old one kept); SIGTERM/SIGINT stop it: running backups are
//! sent SIGTERM, reach a safe point, record themselves `incomplete`, and the daemon
//! waits for them before it exits.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::catalog::Catalog;
use crate::config::{self, Config, Missed};
use crate::schedule::Schedule;

mod marker;

pub struct DaemonOptions {
    pub config: PathBuf,
    /// The `snapring` executable that runs each job (`snapring run`).
    pub exe: PathBuf,
    /// The catalog (also handed to each run); `None`: no catalog.
    pub catalog: Option<PathBuf>,
    pub catalog_on_nfs: bool,
    /// How often the loop wakes up to look at the clock and the children.
    pub tick: Duration,
    /// Extra environment for each run (wrappers, tests).
    pub env: Vec<(String, String)>,
    /// Global flags the daemon was started with that each run gets too, so its log
    /// lines look like the daemon's (`--log-format json`, `-v`).
    pub run_args: Vec<String>,
}

/// One daemon per config file and per catalog: `flock`s held for the daemon's life on
/// the config file and on `<catalog>.daemon.lock` beside the catalog (which holds the
/// daemon's pid, for the message of a second one). Two daemons would both start every
/// job, and the store's lock would fail one of each pair of runs, recorded and notified
/// as a failure. The files are opened close-on-exec, so runs and hooks do not inherit
/// the locks; the kernel drops them when the daemon exits, however it ends.
pub struct DaemonLock {
    _held: Vec<std::fs::File>,
}

/// Why `lock` failed.
#[derive(Debug)]
pub enum LockError {
    /// Another daemon holds it: the message says which file and that daemon's pid.
    Busy(String),
    /// The lock file could not be opened.
    Io(String),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Busy(m) | LockError::Io(m) => f.write_str(m),
        }
    }
}

/// Takes the daemon's locks (see `DaemonLock`); `catalog` `None`: the config's alone.
pub fn lock(config: &Path, catalog: Option<&Path>) -> Result<DaemonLock, LockError> {
    use rustix::fs::{FlockOperation, flock};
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let busy = |what: &str, holder: String| {
        LockError::Busy(format!(
            "another snapring daemon{holder} is running on {what}: stop it first (two daemons would both start every job, and the store's lock would fail one run of each pair)"
        ))
    };
    let mut held = Vec::new();
    if let Some(cat) = catalog {
        let name = cat.file_name().unwrap_or_default().to_string_lossy();
        let path = cat.with_file_name(format!("{name}.daemon.lock"));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            crate::util::create_private_dir(dir, true).map_err(|e| {
                LockError::Io(format!(
                    "cannot create the catalog's directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                LockError::Io(format!(
                    "cannot open the daemon lock {}: {e}",
                    path.display()
                ))
            })?;
        if flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let holder = match pid.trim() {
                "" => String::new(),
                p => format!(" (pid {p})"),
            };
            return Err(busy(
                &format!("the catalog {} (lock {})", cat.display(), path.display()),
                holder,
            ));
        }
        let pid = std::process::id();
        let _ = f
            .set_len(0)
            .and_then(|_| f.rewind())
            .and_then(|_| writeln!(f, "{pid}"));
        held.push(f);
    }
    let f = std::fs::File::open(config)
        .map_err(|e| LockError::Io(format!("cannot open {}: {e}", config.display())))?;
    if flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
        return Err(busy(
            &format!("the config {}", config.display()),
            String::new(),
        ));
    }
    held.push(f);
    Ok(DaemonLock { _held: held })
}

struct Job {
    schedule: Schedule,
    missed: Missed,
    next: Option<DateTime<Utc>>,
    /// The latest trigger this daemon handled (run, queued or skipped): a clock stepped
    /// back does not bring it, or one before it, round again (a daily job ran twice at
    /// 02:00 after a 30-minute step back, and the extra snapshot took a slot of the
    /// ring). Kept across reloads.
    handled: Option<DateTime<Utc>>,
}

/// What the daemon did, for tests and the final log line.
#[derive(Default, Debug, Clone)]
pub struct Summary {
    pub started: u64,
    pub skipped: u64,
    pub reloads: u64,
}

/// A run going: its process, when it started and the configuration it started under.
struct Running {
    child: Child,
    /// A dead child's run is a catalog row of its job started since ([`State::died`]).
    since: DateTime<Utc>,
    /// The notifiers told if it dies are those of this configuration, not of a reload
    /// since (which may have removed the job: its death went untold).
    cfg: Arc<Config>,
    /// The hard-link store it writes ([`store_of`]): another job's run on it waits.
    store: Option<PathBuf>,
}

/// A run whose process ended while its store had not answered whether it recorded its
/// end ([`State::ended`]): judged when it answers ([`State::reap`]).
struct Unjudged {
    name: String,
    status: std::process::ExitStatus,
    run: Running,
    /// When it was reaped.
    at: DateTime<Utc>,
}

/// A dead run whose death the loop told without its store ([`State::died`], given up):
/// its record is settled and marked told ([`TOLD_BEFORE_STORE`]) once the store
/// answers ([`State::mark_told`]). Its settling call may never have been made (the
/// store's worker was busy with another call, which makes none): its record stayed
/// `running`, the next run's repair made it an untold death, and a daemon start told
/// it again.
struct Unmarked {
    /// The store's worker ([`configured_store`]).
    key: PathBuf,
    root: PathBuf,
    id: String,
    cause: String,
    /// The settling call's question: its late answer, if it was made, is this one's.
    question: String,
}

/// A run due and not started yet: `max_runs` runs are going, or a run of another job
/// holds its store ([`State::start_queued`]).
struct Queued {
    name: String,
    /// The trigger it runs for: the queue is in this order, and its window counts from it.
    due: DateTime<Utc>,
    store: Option<PathBuf>,
}

/// Job `name`'s settings as a run of it would resolve them (no flags), if it resolves.
fn job_options(cfg: &Config, name: &str) -> Option<crate::engine::BackupOptions> {
    let job = cfg.job.get(name)?;
    config::resolve_unchecked(
        Some(name.to_string()),
        Some(job.clone()),
        config::JobConfig::default(),
    )
    .ok()
}

/// The hard-link store job `name` of `cfg` writes, where its path leads (`None` for a
/// repository, which takes several runs at once, or a job that does not resolve). Two
/// runs on one store: the store's lock refused the second, recorded and notified
/// `failed`; the daemon starts it when the first has ended instead. Resolved off the
/// loop ([`StoreCalls`]): a store whose file system hangs (a hard-mounted NFS export
/// whose server is down) held the whole loop in `canonicalize` (no other job's run
/// started, a SIGTERM unheeded). One that does not answer in time is where it last led,
/// or its path made absolute.
fn store_of(cfg: &Config, name: &str, calls: &StoreCalls) -> Option<PathBuf> {
    let raw = configured_store(cfg, name)?;
    let asked = raw.clone();
    let resolved = calls.call(&raw, "resolve its path", "resolve", move || {
        std::fs::canonicalize(&asked).ok()
    });
    let mut known = calls.resolved.lock().unwrap_or_else(|e| e.into_inner());
    match resolved {
        Answer::Got(Some(p)) => {
            known.insert(raw, p.clone());
            Some(p)
        }
        Answer::Got(None) => std::path::absolute(&raw).ok().or(Some(raw)),
        Answer::NotYet => known
            .get(&raw)
            .cloned()
            .or_else(|| std::path::absolute(&raw).ok())
            .or(Some(raw)),
    }
}

/// The hard-link store job `name` of `cfg` writes, as configured (`None` for a
/// repository, or a job that does not resolve): the key of its [`StoreCalls`].
fn configured_store(cfg: &Config, name: &str) -> Option<PathBuf> {
    let opts = job_options(cfg, name)?;
    if crate::catalog::is_repository(&opts.store.to_string_lossy()) {
        return None;
    }
    Some(opts.store)
}

/// How long the loop waits for a store's file system to answer one call
/// ([`StoreCalls`]).
const STORE_BUSY: Duration = Duration::from_secs(1);

/// How long the answer of a call that came after the loop stopped waiting for it is
/// kept for the same question asked again ([`StoreCalls::call`]): a store slower than
/// [`STORE_BUSY`] but alive (an automount's first access, a busy NFS server) answers
/// the loop one turn late instead of never.
const LATE_KEPT: Duration = Duration::from_secs(10);

/// How long the end of a run whose store does not answer waits for it ([`State::reap`])
/// before it is judged with what the daemon knows without it: a run that died while its
/// store hangs (killed as its NFS server went down) was told to nobody, and had no
/// `failed` row, for as long as the store hung. `SNAPRING_DAEMON_DEATH_WAIT` (`5s`)
/// says otherwise (tests). A stopping daemon waits no more.
const DEATH_WAIT: Duration = Duration::from_secs(60);

fn death_wait() -> chrono::Duration {
    let d = std::env::var("SNAPRING_DAEMON_DEATH_WAIT")
        .ok()
        .and_then(|v| crate::util::parse_duration(&v).ok())
        .unwrap_or(DEATH_WAIT);
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// A warning in the record of a run whose death the daemon told before its store
/// answered ([`State::died`]): told, not to be told again ([`died_untold`]).
const TOLD_BEFORE_STORE: &str = "its death was told before its store answered";

/// Who has the say on a dead run's record ([`State::died`]): nobody yet, its settling
/// call (it answered: the loop takes its answer), or the loop (it gave up waiting).
const PENDING: u8 = 0;
const ANSWERED: u8 = 1;
const GAVE_UP: u8 = 2;

/// Settles the record of dead run `id` in the store at `root`, as the next command
/// would (the catalog's `settle_running`), with `cause` after its message and, if the
/// loop gave up waiting and told the death without it (`fate` [`GAVE_UP`]), marked
/// told ([`TOLD_BEFORE_STORE`]); the store and the record as written. On the store's
/// worker ([`State::died`], [`State::mark_told`]).
fn settle_dead(
    root: &Path,
    id: &str,
    cause: &str,
    fate: &std::sync::atomic::AtomicU8,
) -> Option<(crate::store::Store, crate::report::RunReport)> {
    let settled = crate::catalog::settle_in_store(root, id, "catalog");
    let store = crate::store::Store::open(root, false).ok()?;
    // Read and written under the claim: a run of the job that tells the death
    // meanwhile ([`tell_untold_deaths`]) has its notifiers' outcomes in the record
    // first (they were written over, and the death told again).
    let _claim = death_claim(&store);
    let mut r = store.read_run(id).ok().flatten().or(settled)?;
    // Still `running` once settled: a live command holds the store (a run by hand, a
    // restore's shared lock): not to be written without the lock; given as it is, for
    // the loop to ask again ([`State::died`], [`State::mark_told`]).
    if r.status == crate::report::Status::Running {
        return Some((store, r));
    }
    let told = fate
        .compare_exchange(PENDING, ANSWERED, Ordering::SeqCst, Ordering::SeqCst)
        .is_err_and(|f| f == GAVE_UP);
    let mut changed = false;
    // The cause, after the settled message (which says `interrupted` first, as a
    // restart looks for to resume it).
    if r.status != crate::report::Status::Complete && !r.message.contains(cause) {
        r.message = format!("{} ({cause})", r.message);
        changed = true;
    }
    if told && !r.warnings.iter().any(|w| w == TOLD_BEFORE_STORE) {
        r.warnings.push(TOLD_BEFORE_STORE.into());
        changed = true;
    }
    if changed && let Err(e) = store.write_run(&r) {
        tracing::error!("job {}: {e}", r.job.as_deref().unwrap_or("-"));
    }
    Some((store, r))
}

/// What the loop got from a store's file system ([`StoreCalls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer<T> {
    /// The store answered this.
    Got(T),
    /// It has not answered yet (slow, or hung): the loop knows nothing either way, and
    /// asks again next turn.
    NotYet,
}

impl<T> Answer<T> {
    fn got(self) -> Option<T> {
        match self {
            Answer::Got(t) => Some(t),
            Answer::NotYet => None,
        }
    }
}

/// A late answer kept for its question: when it came, and the answer.
type Late = (std::time::Instant, Box<dyn std::any::Any + Send>);

/// What a store's worker and the loop share.
#[derive(Default)]
struct WorkerState {
    /// The question under way (at most one per store: a hung call leaves one thread
    /// stuck, never more).
    asked: Option<String>,
    /// Answers by question, taken by the loop as they come or at its next ask.
    answers: BTreeMap<String, Late>,
}

/// The thread that makes one store's calls, one after the other.
struct Worker {
    tx: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
    state: Arc<(std::sync::Mutex<WorkerState>, std::sync::Condvar)>,
    /// It did not answer, and the loop logged that it does not (logged again once it
    /// answers).
    silent: bool,
}

/// The calls the scheduling loop makes on stores' file systems (resolving a store's
/// path, reading its lock file or its run records), each made by the store's own
/// worker thread, which the loop waits for [`STORE_BUSY`] at most: a store that hangs
/// holds up neither the other jobs' runs nor a stop. A store whose call has not
/// answered is asked nothing more until it has ([`Answer::NotYet`] at once): at most
/// one thread is stuck per store that hangs, and no thread is started per call (one
/// was started for each call, several per turn of the loop). A call that answers
/// after the loop stopped waiting has its answer kept ([`LATE_KEPT`]) for the same
/// question asked again. The first call a store does not answer is logged, and the
/// first it answers after.
#[derive(Clone)]
struct StoreCalls {
    workers: Arc<std::sync::Mutex<BTreeMap<PathBuf, Worker>>>,
    /// Where each store's path (as configured) last led ([`store_of`]): for a store
    /// that does not answer.
    resolved: Arc<std::sync::Mutex<BTreeMap<PathBuf, PathBuf>>>,
    /// How long the loop waits for an answer ([`STORE_BUSY`]).
    wait: Duration,
}

impl Default for StoreCalls {
    fn default() -> StoreCalls {
        StoreCalls {
            workers: Arc::default(),
            resolved: Arc::default(),
            wait: STORE_BUSY,
        }
    }
}

impl StoreCalls {
    /// `f`'s answer, made by the worker of `store` (`what` says what it does, for the
    /// log; `question` names its question, the same for the same question asked again),
    /// or [`Answer::NotYet`] if it did not answer within [`STORE_BUSY`] or an earlier
    /// call on `store` has not answered yet.
    fn call<T: Send + 'static>(
        &self,
        store: &Path,
        what: &str,
        question: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Answer<T> {
        self.call_keeping(store, what, question, |_| true, f)
    }

    /// [`StoreCalls::call`], where a late answer ([`LATE_KEPT`]) is given only if
    /// `keep_late` says it may be (else the question is asked again): a late "nobody
    /// holds the lock" may be stale by then (a run started by hand took it since),
    /// while a late "held" only holds the job back a turn.
    fn call_keeping<T: Send + 'static>(
        &self,
        store: &Path,
        what: &str,
        question: &str,
        keep_late: impl FnOnce(&T) -> bool,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Answer<T> {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if !workers.contains_key(store) {
            let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
            let spawned = std::thread::Builder::new()
                .name("store-calls".into())
                .spawn(move || {
                    for task in rx {
                        task();
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(
                    "cannot start a thread for the calls on the store {}: {e}",
                    store.display()
                );
                return Answer::NotYet;
            }
            workers.insert(
                store.to_path_buf(),
                Worker {
                    tx,
                    state: Arc::default(),
                    silent: false,
                },
            );
        }
        let w = workers.get_mut(store).expect("inserted above");
        let state = w.state.clone();
        let (m, cv) = &*state;
        let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
        s.answers.retain(|_, (at, _)| at.elapsed() < LATE_KEPT);
        let late = s
            .answers
            .remove(question)
            .and_then(|(_, late)| late.downcast::<T>().ok())
            .filter(|a| keep_late(a));
        let answer = match late {
            Some(late) => Some(late),
            None if s.asked.is_some() => None,
            None => {
                s.asked = Some(question.to_string());
                let shared = state.clone();
                let q = question.to_string();
                let (on, doing) = (store.to_path_buf(), what.to_string());
                let task = Box::new(move || {
                    // A call that panics has no answer, and the question is asked
                    // again: it left `asked` set and ended the worker, and the store
                    // read as not answering for good.
                    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                    let (m, cv) = &*shared;
                    let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
                    s.asked = None;
                    match answer {
                        Ok(a) => {
                            let a: Box<dyn std::any::Any + Send> = Box::new(a);
                            s.answers.insert(q, (std::time::Instant::now(), a));
                        }
                        Err(p) => {
                            let why = p
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| p.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "no message".into());
                            tracing::error!(
                                "the call on the store {} to {doing} ({q}) panicked: {why}; asked again next turn",
                                on.display()
                            );
                        }
                    }
                    cv.notify_all();
                });
                if w.tx.send(task).is_err() {
                    s.asked = None;
                    None
                } else {
                    let (mut s2, _) = cv
                        .wait_timeout_while(s, self.wait, |s| s.asked.is_some())
                        .unwrap_or_else(|e| e.into_inner());
                    let got = s2
                        .answers
                        .remove(question)
                        .and_then(|(_, a)| a.downcast::<T>().ok());
                    s = s2;
                    got
                }
            }
        };
        drop(s);
        match answer {
            Some(a) => {
                if w.silent {
                    w.silent = false;
                    tracing::info!("the store {} answers again ({what})", store.display());
                }
                Answer::Got(*a)
            }
            None => {
                if !w.silent {
                    w.silent = true;
                    tracing::warn!(
                        "the store {} has not answered in {}s ({what}: its file system is slow or hangs); until it does, the daemon neither starts its jobs' runs nor takes a run of them that ended for dead, and asks again each turn",
                        store.display(),
                        self.wait.as_secs_f32()
                    );
                }
                Answer::NotYet
            }
        }
    }

    /// Whether a call on `store` is under way (it has not answered yet).
    fn busy(&self, store: &Path) -> bool {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(store)
            .is_some_and(|w| {
                w.state
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .asked
                    .is_some()
            })
    }

    /// Whether `store` did not answer the last call on it.
    fn silent(&self, store: &Path) -> bool {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(store)
            .is_some_and(|w| w.silent)
    }

    /// Ends the workers of the stores not in `keep` (a reload that left them out),
    /// each once its call under way (if any) has returned.
    fn keep_only(&self, keep: &BTreeSet<PathBuf>) {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p, _| keep.contains(p));
    }
}

/// At most this many notices of dead runs are sent at once ([`State::died`]); past
/// it, the loop waits for the oldest.
const MAX_NOTIFYING: usize = 8;

/// The running executable, for runs whose own path is gone (`State::program`).
const SELF_EXE: &str = "/proc/self/exe";

/// A wall clock that moves this much more or less than the monotonic clock between
/// two turns of the loop was stepped ([`State::clock`]); NTP's slewing is far slower.
const CLOCK_STEP: chrono::Duration = chrono::Duration::seconds(5);

/// Triggers a held-up loop missed, each recorded as a `skipped` event; past it, one
/// more event for the rest.
const MAX_MISSED_SHOWN: usize = 20;

/// How long a stopping daemon waits for its events still queued to be written (the
/// catalog held locked by another process): past it, each is logged as not recorded
/// and the daemon exits (it waited 5 s per event on the catalog's lock: 16 s to stop).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long the loop waits for another process's lock on the catalog when it reads
/// whether a run that exited non-zero recorded itself ([`State::ended`]).
const LOOP_BUSY: Duration = Duration::from_millis(250);

/// How long the event writer waits before it tries a catalog it could not write again.
const EVENT_RETRY: Duration = Duration::from_millis(500);

/// A daemon event not yet written into the catalog: when it happened, its job, kind
/// and message.
struct QueuedEvent {
    at: String,
    job: Option<String>,
    kind: String,
    message: String,
}

/// At most this many daemon events wait for a catalog that cannot be written (read-only,
/// full, locked for days); past it the oldest are dropped and counted
/// ([`EventQueue::push`]). Each `skipped` trigger of every job is an event: a daemon of a
/// job due every minute that keeps running, with its catalog on a file system that went
/// read-only, queued one a minute for ever, each a few hundred bytes of a daemon meant
/// to run for months. 10,000 events are a few MiB.
const MAX_QUEUED_EVENTS: usize = 10_000;

/// The queue of the event writer, shared with the loop.
struct EventQueue {
    events: std::collections::VecDeque<QueuedEvent>,
    /// Events dropped (the oldest) since the writer last recorded that some were.
    dropped: u64,
    /// How many events it holds at most ([`MAX_QUEUED_EVENTS`]).
    cap: usize,
    /// The daemon stops: the writer writes what is queued and ends.
    closed: bool,
    /// The stop's grace is over: the writer ends after its current attempt.
    abandoned: bool,
}

impl Default for EventQueue {
    fn default() -> EventQueue {
        EventQueue {
            events: Default::default(),
            dropped: 0,
            cap: MAX_QUEUED_EVENTS,
            closed: false,
            abandoned: false,
        }
    }
}

impl EventQueue {
    /// Queues `e`, dropping the oldest event when `cap` are queued: the newest say
    /// what the daemon does now. The first one dropped (since the writer last wrote
    /// that some were) is logged; the writer records how many as an `error` event
    /// once the catalog can be written again.
    fn push(&mut self, e: QueuedEvent) {
        while self.events.len() >= self.cap.max(1) {
            if let Some(old) = self.events.pop_front() {
                if self.dropped == 0 {
                    tracing::error!(
                        "{} daemon events wait for the catalog, which cannot be written: the oldest are dropped from now on (each logged here as it happened), and their number recorded once it can be; the first dropped: {} {} {}: {}",
                        self.cap,
                        old.at,
                        old.job.as_deref().unwrap_or("-"),
                        old.kind,
                        old.message
                    );
                }
                self.dropped += 1;
            }
        }
        self.events.push_back(e);
    }

    /// The event that says `dropped` events were dropped, if any were.
    fn dropped_note(&self) -> Option<QueuedEvent> {
        (self.dropped > 0).then(|| QueuedEvent {
            at: self
                .events
                .front()
                .map_or_else(crate::util::now_rfc3339, |e| e.at.clone()),
            job: None,
            kind: "error".into(),
            message: format!(
                "{} daemon events were not recorded: the catalog could not be written while they happened, and the daemon keeps only the newest {} (they are in its log)",
                self.dropped, self.cap
            ),
        })
    }
}

/// Writes the daemon's events (`skipped`, `reload`, `error`, ...) into the catalog on
/// a thread of its own, in order, each with the time it happened, retrying while the
/// catalog cannot be written. The loop only queues them: it opened the catalog for
/// each, on its own thread, and while another process held the catalog locked each
/// event waited the 5 s busy timeout there (runs started and ended runs were reaped
/// 15 s late, which missed more triggers, each another 5 s; a stop took 16 s), and
/// then was lost.
struct EventWriter {
    queue: Arc<(std::sync::Mutex<EventQueue>, std::sync::Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl EventWriter {
    fn start(catalog: Option<PathBuf>, on_nfs: bool) -> EventWriter {
        let queue: Arc<(std::sync::Mutex<EventQueue>, std::sync::Condvar)> = Arc::default();
        let thread = catalog.and_then(|path| {
            let q = queue.clone();
            std::thread::Builder::new()
                .name("catalog-events".into())
                .spawn(move || write_events(&path, on_nfs, &q))
                .map_err(|e| tracing::error!("cannot start the catalog's event writer: {e}"))
                .ok()
        });
        EventWriter { queue, thread }
    }

    fn push(&self, e: QueuedEvent) {
        if self.thread.is_none() {
            return;
        }
        let (m, cv) = &*self.queue;
        m.lock().unwrap_or_else(|e| e.into_inner()).push(e);
        cv.notify_all();
    }

    /// Lets the writer write what is queued, for `grace` at most; what is left is
    /// logged as not recorded.
    fn finish(&mut self, grace: Duration) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let (m, cv) = &*self.queue;
        m.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        cv.notify_all();
        let end = std::time::Instant::now() + grace;
        while !thread.is_finished() && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
            return;
        }
        let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
        q.abandoned = true;
        if let Some(note) = q.dropped_note() {
            tracing::error!("{}", note.message);
        }
        for e in q.events.drain(..) {
            tracing::error!(
                "daemon event not recorded in the catalog (it could not be written for {} s as the daemon stopped): {} {} {}: {}",
                grace.as_secs(),
                e.at,
                e.job.as_deref().unwrap_or("-"),
                e.kind,
                e.message
            );
        }
    }
}

/// The event writer's thread: writes the queued events in order, the catalog opened
/// for each batch (a catalog removed meanwhile is created again, as a run does);
/// an event is put back first in the queue when it could not be written.
fn write_events(
    path: &Path,
    on_nfs: bool,
    queue: &(std::sync::Mutex<EventQueue>, std::sync::Condvar),
) {
    let (m, cv) = queue;
    let mut failing = false;
    loop {
        {
            let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
            while q.events.is_empty() && !q.closed {
                q = cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.abandoned || q.events.is_empty() {
                return;
            }
        }
        let res = Catalog::open(path, on_nfs).and_then(|mut c| {
            loop {
                let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
                if q.abandoned {
                    return Ok(());
                }
                // How many were dropped first, where they were: before the oldest kept.
                if let Some(note) = q.dropped_note() {
                    let n = q.dropped;
                    drop(q);
                    c.event_at(&note.at, None, &note.kind, &note.message)?;
                    m.lock().unwrap_or_else(|e| e.into_inner()).dropped -= n;
                    continue;
                }
                // Taken out while it is written (a full queue drops its oldest
                // meanwhile, which must not be another one), put back first if not.
                let Some(e) = q.events.pop_front() else {
                    return Ok(());
                };
                drop(q);
                if let Err(err) = c.event_at(&e.at, e.job.as_deref(), &e.kind, &e.message) {
                    let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
                    if q.abandoned {
                        // `finish` logged the others already.
                        tracing::error!(
                            "daemon event not recorded in the catalog ({err}): {} {} {}: {}",
                            e.at,
                            e.job.as_deref().unwrap_or("-"),
                            e.kind,
                            e.message
                        );
                    } else {
                        q.events.push_front(e);
                    }
                    return Err(err);
                }
            }
        });
        match res {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("{}: daemon events recorded again", path.display());
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    tracing::error!(
                        "{e}; the daemon's events are kept and written when it can be (runs are not held up)"
                    );
                }
                failing = true;
                let q = m.lock().unwrap_or_else(|e| e.into_inner());
                let _ = cv.wait_timeout_while(q, EVENT_RETRY, |q| !q.abandoned);
            }
        }
    }
}

struct State<'a> {
    opts: &'a DaemonOptions,
    /// Writes the events into the catalog off the loop.
    events: EventWriter,
    /// The running configuration's text, as loaded at start or by the last good reload.
    text: String,
    /// The same, parsed: each run's notifiers, should it die ([`Running::cfg`]).
    cfg: Arc<Config>,
    jobs: BTreeMap<String, Job>,
    running: BTreeMap<String, Running>,
    /// Runs due and waiting to start, in due order ([`State::start_queued`]).
    queue: Vec<Queued>,
    /// Threads sending the notices of dead runs, off the scheduling loop: a slow
    /// notifier held the loop for its retries times its timeout (other jobs' runs
    /// started late, their triggers merged without a trace, signals unheeded).
    notifying: Vec<JoinHandle<()>>,
    /// The thread refreshing this daemon's heartbeat markers in the stores it serves
    /// ([`marker::Heartbeat`]), off the loop.
    markers: marker::Heartbeat,
    /// The loop's calls on stores' file systems, each bounded ([`StoreCalls`]).
    calls: StoreCalls,
    /// Runs ended whose store has not answered whether they recorded their end.
    unjudged: Vec<Unjudged>,
    /// Dead runs told before their store answered, their records not marked told yet.
    unmarked: Vec<Unmarked>,
    /// Who has the say on the record of a dead run whose settling call is under way,
    /// by its question ([`State::died`]).
    settling: BTreeMap<String, Arc<std::sync::atomic::AtomicU8>>,
    /// Jobs whose store had not answered at the start ([`State::look_again`]).
    unlooked: BTreeSet<String>,
    summary: Summary,
}

/// The config at `path`, its text (what every run gets until the next reload) and its
/// scheduled jobs.
fn load(path: &Path) -> Result<(Config, String, BTreeMap<String, Job>), String> {
    // Every problem of the file, as `config check` lists them.
    let (cfg, text) = config::load_complete_text(path).map_err(|e| e.to_string())?;
    let mut jobs = BTreeMap::new();
    for (name, j) in &cfg.job {
        if let Some(schedule) = j.schedule()? {
            jobs.insert(
                name.clone(),
                Job {
                    schedule,
                    missed: j.missed()?,
                    next: None,
                    handled: None,
                },
            );
        }
    }
    if jobs.is_empty() {
        return Err(format!(
            "{}: no job has a schedule; add schedule = \"cron(0 2 * * ? *)\" (or use `snapring run JOB` from another scheduler)",
            path.display()
        ));
    }
    Ok((cfg, text, jobs))
}

impl State<'_> {
    /// The hard-link stores this daemon's scheduled jobs write, where its heartbeat
    /// thread keeps its marker (`.snapring/daemons/`, [`marker`]).
    fn stores(&self) -> BTreeSet<PathBuf> {
        self.jobs
            .keys()
            .filter_map(|name| store_of(&self.cfg, name, &self.calls))
            .collect()
    }

    /// Records the warnings the heartbeat thread found (a fresh marker of another
    /// daemon: two schedulers on one store meet on its lock, which refuses one of their
    /// runs, `failed`, told) as `warning` events; the thread logged them.
    fn heartbeat(&self) {
        for w in self.markers.warnings() {
            self.event(None, "warning", &w);
        }
    }

    fn catalog(&self) -> Option<Catalog> {
        let p = self.opts.catalog.as_ref()?;
        match Catalog::open(p, self.opts.catalog_on_nfs) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!("{e}");
                None
            }
        }
    }

    /// Queues a daemon event for the catalog ([`EventWriter`]): never waits on it.
    fn event(&self, job: Option<&str>, kind: &str, message: &str) {
        self.events.push(QueuedEvent {
            at: crate::util::now_rfc3339(),
            job: job.map(str::to_string),
            kind: kind.to_string(),
            message: message.to_string(),
        });
    }

    /// Sets each job's next time. At start-up, `Missed::RunOnce` makes a job due now
    /// whose last scheduled time passed without a run (the daemon was down). Whatever
    /// its `missed`, a job whose newest run was interrupted (stopped by a signal, or
    /// killed, with the daemon or the machine) is due now too: it resumes from that
    /// run's staging (not a missed time: `missed = "skip"` skipped those resumes until
    /// 2026-12-06). A run its window cut short waits for its next time, as it would had
    /// the daemon kept running.
    fn plan(&mut self, now: DateTime<Utc>, startup: bool) {
        // Read at start-up only: a reload (or a clock stepped back) reads nothing from
        // it, so it does not wait on a catalog another process holds.
        let mut cat = startup.then(|| self.catalog()).flatten();
        let mut untold = Vec::new();
        let mut cut = Vec::new();
        // Without a catalog (`catalog = "off"`, or one that cannot be opened) the
        // stores' run records say the same of a job's newest run: it was neither
        // resumed nor told at start before.
        let mut in_store = BTreeMap::new();
        if startup {
            if let Some(c) = cat.as_mut() {
                // A run into a repository that died with the daemon is `running` until
                // settled (by its marker beside the catalog); a hard-link store's, by its
                // store ([`State::look`]).
                crate::catalog::settle_repository_runs(c);
            }
            self.take_told_deaths(cat.as_ref());
            let names: Vec<String> = self.jobs.keys().cloned().collect();
            for name in names {
                match self.look(&name, cat.as_mut()) {
                    Answer::Got(l) => {
                        untold.extend(l.untold.into_iter().map(|d| (name.clone(), d)));
                        cut.extend(l.cut.map(|c| (name.clone(), c)));
                        if let Some(n) = l.newest {
                            in_store.insert(name, n);
                        }
                    }
                    // Read when it answers ([`State::look_again`]).
                    Answer::NotYet => {
                        self.unlooked.insert(name);
                    }
                }
            }
        }
        let mut resumed = Vec::new();
        let mut handled = Vec::new();
        for (name, j) in self.jobs.iter_mut() {
            j.next = j.schedule.next_after(now);
            // The clock went back, less than one period of the schedule, past a trigger
            // already handled (NTP correcting a clock a little ahead): that time of
            // the schedule does not run twice (a daily job ran twice at 02:00 after a
            // 30-minute step back, the extra snapshot taking a slot of the ring). A
            // longer step (a clock booted days ahead) plans from now, every trigger
            // run: the times between may never have run at their true time.
            if let Some(h) = j.handled.filter(|h| *h >= now)
                && let Some(after) = j.schedule.next_after(h)
                && h - now < after - h
            {
                let mut t = now;
                while let Some(n) = j.schedule.next_after(t).filter(|n| *n <= h) {
                    handled.push((
                        name.clone(),
                        format!(
                            "trigger at {} skipped: the clock went back to {}; the daemon handled this time of the schedule before",
                            n.to_rfc3339(),
                            now.to_rfc3339()
                        ),
                    ));
                    t = n;
                }
                j.next = Some(after);
            }
            if !startup || self.unlooked.contains(name) {
                continue;
            }
            // The store's newest record when the catalog has no row of the job
            // ([`State::look`]).
            let last = cat
                .as_ref()
                .and_then(|c| c.last_start(name).ok().flatten())
                .or_else(|| in_store.get(name).map(|(.., started)| started.clone()));
            let newest = cat
                .as_ref()
                .and_then(|c| c.newest_backup(name).ok().flatten())
                .or_else(|| {
                    in_store
                        .remove(name)
                        .map(|(id, status, message, _)| (id, status, message))
                });
            if let Some((resume, msg)) = due_at_start(j, name, now, last, newest) {
                if resume {
                    resumed.push((name.clone(), msg));
                }
                j.next = Some(now);
            }
        }
        for (name, msg) in resumed {
            self.event(Some(&name), "resumed", &msg);
        }
        for (name, msg) in handled {
            tracing::warn!("job {name}: {msg}");
            self.summary.skipped += 1;
            self.event(Some(&name), "skipped", &msg);
        }
        self.tell_untold(untold, cut);
        let mut over = Vec::new();
        for (name, j) in &self.jobs {
            match j.next {
                Some(n) => tracing::info!("job {name}: next run at {}", n.to_rfc3339()),
                None => over.push(name.clone()),
            }
        }
        for name in over {
            self.schedule_over(
                &name,
                "its schedule has no time left (its last is past): it will not run",
            );
        }
    }

    /// Tells the deaths nobody was told of (`untold`) and the notices a stop cut short
    /// (`cut`) that the daemon's start found ([`State::look`]), each of its job.
    #[allow(clippy::type_complexity)]
    fn tell_untold(
        &mut self,
        untold: Vec<(String, (crate::store::Store, crate::report::RunReport))>,
        cut: Vec<(
            String,
            (
                Option<crate::store::Store>,
                crate::report::RunReport,
                Vec<String>,
            ),
        )>,
    ) {
        // A run that died with the daemon (both killed) told nobody, and nobody saw it
        // die: told now, as `died` tells a run the daemon saw die.
        for (name, (store, r)) in untold {
            tracing::warn!(
                "job {name}: its run {} ended before it recorded its end and was never notified ({}); telling its notifiers",
                r.id,
                r.message
            );
            let cfg = self.cfg.clone();
            let notice = crate::notify::Notice::backup(&r);
            self.tell(&name, &cfg, Some((store, r)), || notice);
        }
        // A run whose notice a stop cut short (`notify::CUT_BY_SHUTDOWN`: an attempt
        // killed, or its retries not made) was never told as its notifiers' settings
        // say: those notifiers are told now, once (their new outcomes replace the cut
        // ones in its record).
        for (name, (store, r, only)) in cut {
            tracing::warn!(
                "job {name}: the notice of its run {} ({}) was cut short by a shutdown; telling {} now",
                r.id,
                r.status.as_str(),
                only.join(", ")
            );
            let cfg = self.cfg.clone();
            let notice = crate::notify::Notice::backup(&r);
            self.tell_only(&name, &cfg, Some((store, r)), Some(only), || notice);
        }
    }

    /// What the daemon's start reads of job `name`'s last runs in their store ([`Look`]),
    /// off the loop ([`StoreCalls`]): [`Answer::NotYet`] if the store has not answered
    /// (its runs were read on the loop: a store that hung held the daemon's start, no
    /// other job ran, a SIGTERM unheeded). With the catalog `cat`, the runs it lists
    /// (its rows of runs that died `running` settled in their store first, and recorded
    /// in it, as `catalog::settle_running` does); without, the store's own records.
    fn look(&self, name: &str, cat: Option<&mut Catalog>) -> Answer<Look> {
        let Some(c) = cat else {
            return self.look_without_catalog(name);
        };
        let rows = c.recent(name, UNTOLD_LOOKED_AT).unwrap_or_default();
        // No row of the job (the catalog deleted, and made again by another job's run,
        // which imports its own store only; a query that failed): its store's records,
        // as without a catalog. Its missed run, its resume and its untold deaths went
        // by without a word, the job waiting for its next time.
        if rows.is_empty() {
            return self.look_without_catalog(name);
        }
        let pending: BTreeSet<String> = c
            .publish_pending()
            .unwrap_or_default()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        // The job's older rows left unsettled are settled too (only the newest were:
        // the rest stayed `running` until the next `history`); deaths among them are
        // history, not told. Those in the store the job writes, on its worker with the
        // rest; those in other stores (a `dest` since changed), on their own workers,
        // not waited for past [`STORE_BUSY`]: a store the job left that hangs does not
        // hold up its runs (the next command settles what is left).
        let here = store_of(&self.cfg, name, &self.calls);
        let (older, elsewhere): (Vec<_>, Vec<_>) = c
            .unsettled_of(name)
            .unwrap_or_default()
            .into_iter()
            .filter(|(id, store)| {
                !crate::catalog::is_repository(&store.to_string_lossy())
                    && !rows.iter().any(|r| r.id == *id)
            })
            .partition(|(_, store)| here.as_ref() == Some(store));
        let mut by_store: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for (id, store) in elsewhere {
            by_store.entry(store).or_default().push(id);
        }
        for (store, ids) in by_store {
            let question = format!("the older unsettled runs of job {name}");
            let root = store.clone();
            let answer = self
                .calls
                .call(&store, "settle its older runs", &question, move || {
                    ids.iter()
                        .filter_map(|id| crate::catalog::settle_in_store(&root, id, "catalog"))
                        .collect::<Vec<_>>()
                });
            for r in answer.got().unwrap_or_default() {
                if let Err(e) = c.record(&r) {
                    tracing::warn!("{e}");
                }
            }
        }
        let key = configured_store(&self.cfg, name).or_else(|| {
            rows.iter()
                .find(|r| !crate::catalog::is_repository(&r.store))
                .map(|r| PathBuf::from(&r.store))
        });
        let read = match key {
            None => StoreRows::default(),
            Some(key) => {
                let question = format!("the runs of job {name} the catalog lists");
                let asked = rows.clone();
                match self
                    .calls
                    .call(&key, "read its run records", &question, move || {
                        read_rows(asked, &pending, &older)
                    }) {
                    Answer::Got(read) => read,
                    Answer::NotYet => return Answer::NotYet,
                }
            }
        };
        for r in &read.settled {
            if let Err(e) = c.record(r) {
                tracing::warn!("{e}");
            }
        }
        let cut = rows
            .first()
            .filter(|row| row.notifications_failed > 0 && row.kind == "backup")
            .and_then(|row| {
                let (r, store) = match read.cut {
                    Some((s, r)) => (r, Some(s)),
                    None => (c.show_exact(&row.id).ok()??.report.into_backup()?, None),
                };
                let only = cut_notifiers(&r);
                (!only.is_empty()).then_some((store, r, only))
            });
        Answer::Got(Look {
            untold: read.untold,
            cut,
            newest: None,
        })
    }

    /// [`State::look`] of job `name` from the records in its store ([`look_in_store`]),
    /// with no catalog, or one with no row of the job.
    fn look_without_catalog(&self, name: &str) -> Answer<Look> {
        let (Some(key), Some(root)) = (
            configured_store(&self.cfg, name),
            store_of(&self.cfg, name, &self.calls),
        ) else {
            return Answer::Got(Look::default());
        };
        let job = name.to_string();
        let question = format!("the last runs of job {name}");
        self.calls
            .call(&key, "read its run records", &question, move || {
                look_in_store(&root, &job)
            })
    }

    /// The jobs whose store had not answered at the daemon's start ([`State::look`]),
    /// read again: once one answers, its untold deaths and cut notices are told, and,
    /// if nothing of it has run or waited to run since, a missed run or an interrupted
    /// one is run now, as at a start.
    fn look_again(&mut self, now: DateTime<Utc>) {
        // Not while every such store's call is still under way (the catalog is not
        // opened each turn for nothing).
        let answering = self
            .unlooked
            .iter()
            .any(|name| configured_store(&self.cfg, name).is_none_or(|s| !self.calls.busy(&s)));
        if !answering {
            return;
        }
        let mut cat = self.catalog();
        for name in self.unlooked.clone() {
            if !self.jobs.contains_key(&name) {
                self.unlooked.remove(&name);
                continue;
            }
            let Answer::Got(l) = self.look(&name, cat.as_mut()) else {
                continue;
            };
            self.unlooked.remove(&name);
            tracing::info!(
                "job {name}: its store answered: its last runs are read now, as at the daemon's start"
            );
            let untold = l.untold.into_iter().map(|d| (name.clone(), d)).collect();
            let cut = l.cut.map(|c| (name.clone(), c)).into_iter().collect();
            self.tell_untold(untold, cut);
            let fresh = !self.running.contains_key(&name)
                && !self.queue.iter().any(|q| q.name == name)
                && self.jobs.get(&name).is_some_and(|j| j.handled.is_none());
            if !fresh {
                continue;
            }
            let last = cat
                .as_ref()
                .and_then(|c| c.last_start(&name).ok().flatten())
                .or_else(|| l.newest.as_ref().map(|(.., started)| started.clone()));
            let newest = cat
                .as_ref()
                .and_then(|c| c.newest_backup(&name).ok().flatten())
                .or_else(|| {
                    l.newest
                        .map(|(id, status, message, _)| (id, status, message))
                });
            let Some(j) = self.jobs.get_mut(&name) else {
                continue;
            };
            if let Some((resume, msg)) = due_at_start(j, &name, now, last, newest) {
                j.next = Some(now);
                if resume {
                    self.event(Some(&name), "resumed", &msg);
                }
            }
        }
    }

    /// The running configuration for a run to read: a memfd holding its text, handed
    /// to the child as its stdin, which it reads as `/proc/self/fd/0` (a copy in a
    /// close-on-exec memfd of its own, stdin then `/dev/null`, so its hooks and
    /// notifier commands never see the config: `cli::backup::run_job`; any other fd the
    /// run could not close without `unsafe`). A run reads the config file
    /// again, and the file may have changed since it was loaded: edited and not yet
    /// reloaded, or broken, or gone (a reload then keeps the running configuration,
    /// and so must the runs; they failed at once, unrecorded and unnotified, as they
    /// could not even read where the catalog and the notifiers are). Without a memfd
    /// (no `/proc`), the file itself.
    fn running_config(&self) -> (Option<std::fs::File>, PathBuf) {
        use std::io::Write;
        let made = rustix::fs::memfd_create("snapring-config", rustix::fs::MemfdFlags::CLOEXEC)
            .map(std::fs::File::from)
            .map_err(std::io::Error::from)
            .and_then(|mut f| f.write_all(self.text.as_bytes()).map(|()| f));
        match made {
            Ok(f) if Path::new("/proc/self/fd").is_dir() => {
                (Some(f), PathBuf::from(crate::config::FROM_STDIN))
            }
            Ok(_) => (None, self.opts.config.clone()),
            Err(e) => {
                tracing::warn!(
                    "cannot hand the running configuration to a run ({e}); it reads {}",
                    self.opts.config.display()
                );
                (None, self.opts.config.clone())
            }
        }
    }

    /// The executable a run of job `name` starts: the one the daemon was started
    /// from, or, when that path is gone (a versioned directory of an old release
    /// deleted, an uninstall), the daemon's own image (`/proc/self/exe`, resolved in the
    /// forked child, which still runs it): such runs failed to start, told to nobody,
    /// until the daemon was restarted. A binary replaced at the path (an upgrade) is
    /// the one run, as before.
    fn program(&self, name: &str) -> PathBuf {
        let exe = &self.opts.exe;
        if exe.exists() || !Path::new(SELF_EXE).exists() {
            return exe.clone();
        }
        tracing::warn!(
            "job {name}: {} is gone; the run is started from the daemon's own executable: restart the daemon to run an installed snapring",
            exe.display()
        );
        PathBuf::from(SELF_EXE)
    }

    fn spawn(&mut self, name: &str) {
        // The child's stdin (dup2'd to fd 0, so inherited while close-on-exec here).
        let (held, config) = self.running_config();
        let mut c = Command::new(self.program(name));
        match &self.opts.catalog {
            Some(p) => c.arg("--catalog").arg(p),
            None => c.arg("--catalog").arg("off"),
        };
        if self.opts.catalog_on_nfs {
            c.arg("--catalog-on-nfs");
        }
        c.args(&self.opts.run_args);
        // The name last, after `--`: a job named `-v` or `--help` is a name, not a flag
        // (it ran as one: no backup, nothing recorded).
        c.arg("run");
        // The run starts under the daemon's umask, the owner's bits taken out
        // (`fsx::owner_usable_umask`); its hooks and command notifiers get the user's.
        let user = crate::fsx::user_umask();
        if user != crate::fsx::process_umask() {
            c.arg("--user-umask").arg(format!("{user:04o}"));
        }
        c.arg("--config")
            .arg(&config)
            // The file's name for the run's messages (not `/proc/self/fd/N`).
            .arg("--config-name")
            .arg(&self.opts.config)
            .arg("--no-progress")
            .arg("--")
            .arg(name)
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(held.map_or_else(Stdio::null, Stdio::from))
            .stdout(Stdio::null());
        // A process group of its own: a Ctrl-C at the daemon's terminal reaches the
        // daemon only, which stops each run with one SIGTERM. The run got the SIGINT
        // and then the daemon's SIGTERM, a second signal: it ended at once, exit 130,
        // its record left `running`.
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        match c.spawn() {
            Ok(child) => {
                tracing::info!("job {name}: started run (pid {})", child.id());
                self.summary.started += 1;
                self.running.insert(
                    name.to_string(),
                    Running {
                        child,
                        since: Utc::now(),
                        cfg: self.cfg.clone(),
                        store: store_of(&self.cfg, name, &self.calls),
                    },
                );
            }
            Err(e) => {
                let msg = format!("cannot start {}: {e}", c.get_program().display());
                tracing::error!("job {name}: {msg}");
                self.event(Some(name), "error", &msg);
                // No run to tell anyone: the job's notifiers hear it from here (it was
                // a log line only, and backups stopped without a word).
                let cfg = self.cfg.clone();
                let fallback = || {
                    job_notice(
                        name,
                        crate::report::Status::Failed,
                        format!("snapring: job {name}: run could not start"),
                        &msg,
                    )
                };
                self.tell(name, &cfg, None, fallback);
            }
        }
    }

    /// Marks told the records of the dead runs told before their store answered
    /// ([`Unmarked`]), each once its store answers; before anything else is asked of
    /// the store this turn (a run started first would repair the record into an untold
    /// death).
    fn mark_told(&mut self) {
        for u in std::mem::take(&mut self.unmarked) {
            let (root, id, cause) = (u.root.clone(), u.id.clone(), u.cause.clone());
            let answer = self.calls.call(
                &u.key,
                "mark a dead run's record told",
                &u.question,
                move || {
                    // No store there (not mounted yet, as at boot): `None`, to ask again.
                    crate::store::Store::open(&root, false).ok()?;
                    Some(settle_dead(
                        &root,
                        &id,
                        &cause,
                        &std::sync::atomic::AtomicU8::new(GAVE_UP),
                    ))
                },
            );
            match answer {
                // No store there (not mounted yet, as at boot), or its record still
                // `running` (a live command holds the store): still to mark, and
                // still noted in the catalog for the next daemon.
                Answer::Got(None) => self.unmarked.push(u),
                Answer::Got(Some(Some((_, r)))) if r.status == crate::report::Status::Running => {
                    self.unmarked.push(u)
                }
                Answer::Got(Some(_)) => {
                    tracing::info!(
                        "run {}: its store answered: its record there now says its death was told",
                        u.id
                    );
                    if let Some(mut c) = self.catalog()
                        && let Err(e) = c.marked_told(&u.id)
                    {
                        tracing::warn!("{e}");
                    }
                }
                Answer::NotYet => self.unmarked.push(u),
            }
        }
    }

    /// The deaths an earlier daemon on this catalog told before their store answered
    /// and stopped before it did ([`Catalog::note_told_death`]): marked told now, or
    /// once their store answers ([`State::mark_told`]), before anything reads or runs
    /// in it.
    fn take_told_deaths(&mut self, cat: Option<&Catalog>) {
        let Some(c) = cat else { return };
        let noted = match c.told_deaths() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("{e}");
                return;
            }
        };
        for (id, key, root, cause) in noted {
            if self.unmarked.iter().any(|u| u.id == id) {
                continue;
            }
            tracing::info!(
                "run {id}: its death was told before its store {} answered; its record there is marked told once it answers",
                root.display()
            );
            self.unmarked.push(Unmarked {
                question: format!("the record of run {id}, dead"),
                key,
                root,
                id,
                cause,
            });
        }
        self.mark_told();
    }

    fn reap(&mut self) {
        self.notifying.retain(|h| !h.is_finished());
        self.mark_told();
        let done: Vec<(String, Option<std::process::ExitStatus>)> = self
            .running
            .iter_mut()
            .filter_map(|(n, r)| match r.child.try_wait() {
                Ok(Some(st)) => {
                    tracing::info!("job {n}: run ended ({st})");
                    Some((n.clone(), Some(st)))
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::error!("job {n}: {e}");
                    Some((n.clone(), None))
                }
            })
            .collect();
        // The ends a store had not answered for: asked again first.
        let waited = death_wait();
        for end in std::mem::take(&mut self.unjudged) {
            let give_up = Utc::now() - end.at >= waited;
            if !self.ended(&end.name, end.status, &end.run, end.at, give_up) {
                self.unjudged.push(end);
            }
        }
        for (n, st) in done {
            let Some(run) = self.running.remove(&n) else {
                continue;
            };
            if let Some(st) = st {
                let at = Utc::now();
                if !self.ended(&n, st, &run, at, false) {
                    self.unjudged.push(Unjudged {
                        name: n,
                        status: st,
                        run,
                        at,
                    });
                }
            }
        }
    }

    /// A run's process has ended (`st`, reaped at `at`): if not as a run ends, or
    /// without recording a run (it failed before it could: a config it could not
    /// read), it is settled and told ([`State::died`]). `false`: its store has not
    /// answered yet, so whether it recorded its end is not known (asked again next
    /// turn, [`State::reap`]): a store slow but alive is not a death. `give_up`: the
    /// store is not waited for any more ([`DEATH_WAIT`], a stop): judged without it.
    fn ended(
        &mut self,
        name: &str,
        st: std::process::ExitStatus,
        run: &Running,
        at: DateTime<Utc>,
        give_up: bool,
    ) -> bool {
        if let Some(why) = abnormal(st) {
            return self.died(name, &why, run, at, give_up);
        }
        let Some(code) = st.code().filter(|c| *c != 0) else {
            return true;
        };
        // Exit 1 and the like are a run's failures, recorded and notified by it; one
        // that left no row of its job since it started was not.
        // (A catalog that cannot be read says nothing either way.)
        // A short wait for the catalog's lock: this is the scheduling loop (a catalog
        // another process holds says nothing either way).
        let recorded = self.opts.catalog.as_ref().and_then(|p| {
            let c = Catalog::open_waiting(p, self.opts.catalog_on_nfs, LOOP_BUSY)
                .map_err(|e| tracing::warn!("{e}"))
                .ok()?;
            let rows = c.recent(name, 1).ok()?;
            Some(rows.into_iter().next().is_some_and(|row| {
                crate::store::select::parse_time(&row.started_at)
                    .is_some_and(|t| t >= run.since - chrono::Duration::seconds(1))
            }))
        });
        if recorded != Some(false) {
            return true;
        }
        // A catalog that cannot be written (read-only, full) has no row of a run that
        // recorded and told everything else: its record in the store says it ended.
        // Whether it failed at all is the store's to say: not given up at a stop (a
        // run the stop interrupted exits so, and its store, slow, holds its record),
        // only once the store has not answered for [`DEATH_WAIT`].
        let give_up = give_up && Utc::now() - at >= death_wait();
        let why = match self.stored_run(name, &run.cfg, run.since, at) {
            Answer::NotYet if !give_up => return false,
            Answer::NotYet => format!(
                "ended with exit code {code}, with no row in the catalog, and its store has not answered whether it recorded its end (its error is in the daemon's log)"
            ),
            Answer::Got(r)
                if r.as_ref()
                    .is_some_and(|r| r.status != crate::report::Status::Running) =>
            {
                return true;
            }
            Answer::Got(_) => format!(
                "ended with exit code {code} without recording a run (its error is in the daemon's log)"
            ),
        };
        self.died(name, &why, run, at, give_up)
    }

    /// Without a catalog: (id, store) of the record in the store of job `name` of the
    /// run that died (`run`, started at `since`, reaped at `at`), if it has one
    /// ([`dead_record`]); on the store's worker ([`StoreCalls`]).
    fn dead_in_store(
        &self,
        name: &str,
        run: &Running,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Answer<Option<(String, String)>> {
        let (Some(key), Some(root)) = (
            configured_store(&run.cfg, name),
            store_of(&run.cfg, name, &self.calls),
        ) else {
            return Answer::Got(None);
        };
        let job = name.to_string();
        let question = format!("the record of job {name}'s run dead at {}", at.to_rfc3339());
        self.calls
            .call(&key, "find a dead run's record", &question, move || {
                dead_record(&root, &job, since, at)
                    .map(|id| (id, root.to_string_lossy().into_owned()))
            })
    }

    /// A run of job `name` whose process ended (reaped at `at`) before it could record
    /// and notify itself (`why`): its catalog row and record are settled now, as the
    /// next command would settle them, with the cause in their message, and the
    /// notifiers of the configuration it ran under told (a failure always notifies), on
    /// a thread of their own; their outcomes go into the record and the catalog row.
    /// The store's part is read and written off the loop ([`StoreCalls`]): `false`, and
    /// nothing done, if the store has not answered yet (asked again next turn); with
    /// `give_up` ([`DEATH_WAIT`], a stop), told all the same with what is known: its
    /// catalog row `failed`, and its record, once the store answers, marked told
    /// ([`TOLD_BEFORE_STORE`]), so that neither is told again.
    fn died(
        &mut self,
        name: &str,
        why: &str,
        run: &Running,
        at: DateTime<Utc>,
        give_up: bool,
    ) -> bool {
        // The job's newest run from the dead child's start to its end, with its
        // record, once settled (`incomplete`): the dead child's, if it got as far as
        // its row (else none: an older run is not told again, a newer one is alive).
        let since = run.since - chrono::Duration::seconds(1);
        let mut cat = self.catalog();
        if let Some(c) = cat.as_mut() {
            // Runs into a repository: by their markers beside the catalog.
            crate::catalog::settle_repository_runs(c);
        }
        // (id, store) of its run.
        let row = match cat.as_ref() {
            Some(c) => c
                .recent(name, UNTOLD_LOOKED_AT)
                .ok()
                .and_then(|rows| {
                    rows.into_iter().find(|row| {
                        crate::store::select::parse_time(&row.started_at)
                            .is_some_and(|t| t >= since && t <= at)
                    })
                })
                .filter(|row| !crate::catalog::is_repository(&row.store))
                .map(|row| (row.id, row.store)),
            None => None,
        };
        // No row of it: without a catalog, or with one that could not record it
        // (damaged, read-only), its record in the store (it found none, told the death
        // as a "run failed" with no run id and left the record `running`: the next
        // start settled it into an untold death and told it again). A store that has
        // not answered by the time the loop gives up is told without its record.
        let row = match row {
            Some(row) => Some(row),
            None => match self.dead_in_store(name, run, since, at) {
                Answer::Got(found) => found,
                Answer::NotYet if !give_up => return false,
                Answer::NotYet => None,
            },
        };
        let msg = format!("its run's process {why}, before it recorded its end");
        // Its catalog row, if its store was not waited for.
        let mut gave_up = None;
        let settled = match row {
            None => None,
            Some((row_id, row_store)) => {
                let root = PathBuf::from(&row_store);
                // On the worker of the store as configured, as every other call on it:
                // keyed by the catalog's path (`/mnt/x/../s`, a symlink), the store had
                // two workers, and its lock could be read and a run started while this
                // record was not settled yet (which then found the store locked and
                // left the record `running`).
                let key = configured_store(&run.cfg, name).unwrap_or_else(|| root.clone());
                let id = row_id.clone();
                let cause = msg.clone();
                let question = format!("the record of run {id}, dead");
                // Who has the say on its record: the call (it answered in time) or
                // the loop (it gave up waiting and told the death without it).
                let fate = self
                    .settling
                    .entry(question.clone())
                    .or_insert_with(|| Arc::new(std::sync::atomic::AtomicU8::new(PENDING)))
                    .clone();
                let call_fate = fate.clone();
                let answer =
                    self.calls
                        .call(&key, "settle a dead run's record", &question, move || {
                            // A store that hangs (tests).
                            let _ = crate::failpoint::hit("daemon.settle_dead");
                            settle_dead(&root, &id, &cause, &call_fate)
                        });
                match answer {
                    // Not given up, or the call has its answer (given next turn).
                    Answer::NotYet
                        if !give_up
                            || fate
                                .compare_exchange(
                                    PENDING,
                                    GAVE_UP,
                                    Ordering::SeqCst,
                                    Ordering::SeqCst,
                                )
                                .is_err_and(|f| f == ANSWERED) =>
                    {
                        return false;
                    }
                    Answer::NotYet => {
                        self.settling.remove(&question);
                        // Its settling call may never have been made (the store's
                        // worker was busy with another call): made once the store
                        // answers, to mark the record told ([`State::mark_told`]).
                        // Noted in the catalog too: a daemon stopped before the store
                        // answers leaves it for the next one to mark (it was told
                        // again, as an untold death, after the next run's repair).
                        if let Some(mut c) = self.catalog()
                            && let Err(e) =
                                c.note_told_death(&row_id, &key, Path::new(&row_store), &msg)
                        {
                            tracing::warn!("{e}");
                        }
                        self.unmarked.push(Unmarked {
                            key,
                            root: PathBuf::from(&row_store),
                            id: row_id.clone(),
                            cause: msg.clone(),
                            question,
                        });
                        gave_up = Some((row_id, row_store, "has not answered"));
                        None
                    }
                    // Still `running`: a live command holds its store (a restore or a
                    // verify, whose shared lock repairs nothing; a run by hand about to
                    // repair it). Told as a plain "failed" with no run id, its record
                    // was settled later into an untold death and told again: waited
                    // for, up to the loop's giving up.
                    Answer::Got(Some((_, r)))
                        if r.status == crate::report::Status::Running && !give_up =>
                    {
                        return false;
                    }
                    Answer::Got(Some((_, r))) if r.status == crate::report::Status::Running => {
                        // Given up: told without its record, which is marked told
                        // once it is settled ([`State::mark_told`]); noted in the
                        // catalog and its row `failed`, as when the store does not
                        // answer: a daemon stopped before the command ends left the
                        // row `running`, and the next start (or run) settled it into
                        // an untold death, told again.
                        self.settling.remove(&question);
                        if let Some(mut c) = self.catalog()
                            && let Err(e) =
                                c.note_told_death(&row_id, &key, Path::new(&row_store), &msg)
                        {
                            tracing::warn!("{e}");
                        }
                        self.unmarked.push(Unmarked {
                            key,
                            root: PathBuf::from(&row_store),
                            id: row_id.clone(),
                            cause: msg.clone(),
                            question,
                        });
                        gave_up = Some((row_id, row_store, "is held by another command"));
                        None
                    }
                    Answer::Got(s) => {
                        self.settling.remove(&question);
                        s
                    }
                }
            }
        };
        drop(cat);
        // Its death told already (by a run of the job that found it untold first,
        // [`tell_untold_deaths`]): its record, with the outcomes, stands.
        if let Some((_, r)) = &settled
            && r.status == crate::report::Status::Incomplete
            && r.message
                .starts_with("interrupted: the process ended before finishing")
            && !r.notifications.is_empty()
        {
            if let Some(c) = self.opts.catalog.as_deref() {
                record_run(Some(c), self.opts.catalog_on_nfs, None, r);
            }
            tracing::info!(
                "job {name}: its run {}'s process {why}; a run of the job told its death already",
                r.id
            );
            return true;
        }
        // A run that recorded its end `complete` and was killed after (while it
        // notified, or in its post command) did not fail: its record stands, and
        // nobody is told it failed (it was dropped here, and the generic notice below,
        // "failed", with no run id, went out for a run that had completed).
        if let Some((_, r)) = &settled
            && r.status == crate::report::Status::Complete
        {
            if let Some(c) = self.opts.catalog.as_deref() {
                record_run(Some(c), self.opts.catalog_on_nfs, None, r);
            }
            let msg = format!(
                "its run {} ended complete and recorded it; then its process {why}, while it finished (its notices or post command may have been cut short)",
                r.id
            );
            tracing::warn!("job {name}: {msg}");
            self.event(Some(name), "warning", &msg);
            return true;
        }
        let msg = match &gave_up {
            Some((_, store, why)) => format!(
                "{msg}; its store {store} {why} (its record there is settled by the next command that reaches it)"
            ),
            None => msg,
        };
        tracing::error!("job {name}: {msg}");
        self.event(Some(name), "error", &msg);
        if let Some((id, _, _)) = &gave_up
            && let Some(mut r) = self
                .catalog()
                .and_then(|c| c.run_summary(id).ok().flatten())
        {
            // `failed`, as it is told: not `running` (which the next command settles
            // from the store) nor `incomplete` (which the next start tells again).
            r.status = crate::report::Status::Failed;
            r.exit_code = crate::report::Status::Failed.exit_code();
            r.message = msg.clone();
            r.warnings.push(TOLD_BEFORE_STORE.into());
            record_run(
                self.opts.catalog.as_deref(),
                self.opts.catalog_on_nfs,
                None,
                &r,
            );
        }
        if let Some((_, r)) = &settled {
            // Its record was written in the store already ([`StoreCalls`]).
            record_run(
                self.opts.catalog.as_deref(),
                self.opts.catalog_on_nfs,
                None,
                r,
            );
        }
        let fallback = || {
            job_notice(
                name,
                crate::report::Status::Failed,
                format!("snapring: job {name}: run failed"),
                &msg,
            )
        };
        let cfg = run.cfg.clone();
        self.tell(name, &cfg, settled, fallback);
        true
    }

    /// Tells the notifiers of job `name` in `cfg` of a run that could not tell them
    /// itself: `settled`, the run's record (then its outcomes go into the record and the
    /// catalog row, as a run's own would), or else `fallback`. On a thread of its own
    /// (a slow notifier held the loop for its retries times its timeout: other jobs'
    /// runs started late, their triggers merged without a trace, signals unheeded).
    fn tell(
        &mut self,
        name: &str,
        cfg: &Config,
        settled: Option<(crate::store::Store, crate::report::RunReport)>,
        fallback: impl FnOnce() -> crate::notify::Notice,
    ) {
        let settled = settled.map(|(store, r)| (Some(store), r));
        self.tell_only(name, cfg, settled, None, fallback);
    }

    /// [`Self::tell`], to the notifiers named in `only` (all of the job's if `None`):
    /// their new outcomes replace theirs in the record, the others' are kept. A
    /// `settled` run without a store (`None`: a run that could not start, recorded in
    /// the catalog only) is recorded in the catalog only.
    fn tell_only(
        &mut self,
        name: &str,
        cfg: &Config,
        settled: Option<(Option<crate::store::Store>, crate::report::RunReport)>,
        only: Option<Vec<String>>,
        fallback: impl FnOnce() -> crate::notify::Notice,
    ) {
        let mut notifiers = match cfg.job.get(name) {
            Some(job) => crate::job::notifiers(cfg, job),
            None => Vec::new(),
        };
        if let Some(only) = &only {
            notifiers.retain(|(n, _)| only.contains(n));
        }
        // A death of a job with no notifier (`only` is a cut notice's, told again) is
        // told to nobody, and its record says so: it had no outcome to record, so each
        // start took it for untold and told it again (to the notifiers of the day).
        let nobody = match &settled {
            Some((_, r)) if notifiers.is_empty() && only.is_none() && died_untold(r) => {
                let mut r = r.clone();
                r.warnings
                    .push(format!("{TOLD_NOBODY} (job {name} has no notifier)"));
                Some(r)
            }
            _ => None,
        };
        if notifiers.is_empty() && nobody.is_none() {
            return;
        }
        let notice = match &settled {
            Some((_, r)) => crate::notify::Notice::backup(r),
            None => fallback(),
        };
        if self.notifying.len() >= MAX_NOTIFYING {
            tracing::warn!(
                "job {name}: {MAX_NOTIFYING} notices of dead runs are being sent; waiting for the oldest"
            );
            let _ = self.notifying.remove(0).join();
        }
        let catalog = self.opts.catalog.clone();
        let on_nfs = self.opts.catalog_on_nfs;
        let name = name.to_string();
        // A death, told under its store's claim ([`death_claim`]) and only if its
        // record still says untold: a `snapring run` of the job (the run this daemon
        // resumes it with, or one by cron) may have found and told it meanwhile.
        let claimed = only.is_none() && matches!(&settled, Some((Some(_), r)) if died_untold(r));
        let sent = std::thread::Builder::new()
            .name(format!("notify-{name}"))
            .spawn(move || {
                let (mut settled, mut nobody, mut notice) = (settled, nobody, notice);
                let mut _claim = None;
                if claimed && let Some((Some(store), r)) = settled.as_mut() {
                    _claim = death_claim(store);
                    match store.read_run(&r.id) {
                        Ok(Some(now)) if died_untold(&now) => {
                            if let Some(n) = nobody.as_mut() {
                                let warning = n.warnings.pop();
                                *n = now.clone();
                                n.warnings.extend(warning);
                            } else {
                                notice = crate::notify::Notice::backup(&now);
                            }
                            *r = now;
                        }
                        Ok(Some(now)) => {
                            tracing::info!(
                                "job {name}: the death of its run {} was told meanwhile (by a run of the job); not told again",
                                r.id
                            );
                            // The catalog row as the record has it, with the run's
                            // outcomes (written from the record read before, they were
                            // lost from the row).
                            record_run(catalog.as_deref(), on_nfs, None, &now);
                            return;
                        }
                        _ => {}
                    }
                }
                let outcomes = crate::notify::send_notice(&notifiers, &notice);
                for o in &outcomes {
                    if !o.ok {
                        tracing::error!(
                            "job {name}: notifier {}: {}",
                            o.notifier,
                            o.error.as_deref().unwrap_or_default()
                        );
                    }
                }
                if let Some(r) = nobody {
                    let store = settled.and_then(|(store, _)| store);
                    record_run(catalog.as_deref(), on_nfs, store.as_ref(), &r);
                } else if let Some((store, mut r)) = settled {
                    match only {
                        None => r.notifications = outcomes,
                        Some(_) => {
                            r.notifications
                                .retain(|o| !outcomes.iter().any(|n| n.notifier == o.notifier));
                            r.notifications.extend(outcomes);
                        }
                    }
                    record_run(catalog.as_deref(), on_nfs, store.as_ref(), &r);
                }
            });
        match sent {
            Ok(h) => self.notifying.push(h),
            Err(e) => tracing::error!("cannot start a thread to send a notice: {e}"),
        }
    }

    /// Watches the wall clock against the monotonic one between two turns of the loop
    /// (`last`: the previous turn's readings, updated to this one's). A wall clock
    /// that went back (a machine that booted with its hardware clock ahead, corrected
    /// by NTP later) left each job's next time planned from the later time: the runs
    /// between went by without a run or a trace, and the daemon waited days. Every job
    /// is planned again from `now` (logged, and a `clock` event). A step forward is
    /// logged: `due` runs the trigger it passed and records the others as skipped.
    fn clock(&mut self, last: &mut (std::time::Instant, DateTime<Utc>), now: DateTime<Utc>) {
        let mono = std::time::Instant::now();
        let elapsed = mono.saturating_duration_since(last.0);
        let expected = last.1 + chrono::Duration::from_std(elapsed).unwrap_or_default();
        *last = (mono, now);
        let step = now - expected;
        if step < -CLOCK_STEP {
            let msg = format!(
                "the clock went back by {}s (from about {} to {}): the next time of every job is planned again from now",
                -step.num_seconds(),
                expected.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            tracing::warn!("{msg}");
            self.event(None, "clock", &msg);
            self.plan(now, false);
        } else if step > CLOCK_STEP {
            tracing::warn!(
                "the clock jumped forward by {}s (from about {} to {}; or the machine was suspended): triggers it passed are run once, late, and the others recorded as skipped",
                step.num_seconds(),
                expected.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
    }

    fn due(&mut self, now: DateTime<Utc>) {
        // Slots freed by runs reaped since the last turn, windows that closed.
        self.start_queued(now);
        let mut due: Vec<(String, DateTime<Utc>)> = self
            .jobs
            .iter()
            .filter_map(|(n, j)| j.next.filter(|t| *t <= now).map(|t| (n.clone(), t)))
            .collect();
        // Runs beyond `max_runs` wait in due order.
        due.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        // The jobs whose schedule has no time left after this one.
        let mut ran_out = Vec::new();
        for (name, at) in due {
            let mut started = false;
            let mut queued = false;
            if self.running.contains_key(&name) {
                let msg = format!(
                    "trigger at {} skipped: the previous run is still going",
                    at.to_rfc3339()
                );
                tracing::warn!("job {name}: {msg}");
                self.summary.skipped += 1;
                self.event(Some(&name), "skipped", &msg);
            } else if let Some(q) = self.queue.iter().find(|q| q.name == name) {
                let msg = format!(
                    "trigger at {} skipped: the job's run due at {} is still waiting to start ({})",
                    at.to_rfc3339(),
                    q.due.to_rfc3339(),
                    self.waits_for(&q.name, q.store.as_deref())
                );
                tracing::warn!("job {name}: {msg}");
                self.summary.skipped += 1;
                self.event(Some(&name), "skipped", &msg);
            } else if let Answer::Got(Some(holder)) = self.orphan_run(&name) {
                let msg = format!(
                    "trigger at {} skipped: a run of the job that this daemon did not start is still going, {holder} (left by a daemon that was killed without its runs)",
                    at.to_rfc3339()
                );
                tracing::warn!("job {name}: {msg}");
                self.summary.skipped += 1;
                self.event(Some(&name), "skipped", &msg);
            } else {
                let store = store_of(&self.cfg, &name, &self.calls);
                let pos = self.queue.partition_point(|q| q.due <= at);
                self.queue.insert(
                    pos,
                    Queued {
                        name: name.clone(),
                        due: at,
                        store,
                    },
                );
                self.start_queued(now);
                started = self.running.contains_key(&name);
                if let Some(q) = self.queue.iter().find(|q| q.name == name) {
                    queued = true;
                    tracing::info!(
                        "job {name}: due at {}, waits to start ({})",
                        at.to_rfc3339(),
                        self.waits_for(&q.name, q.store.as_deref())
                    );
                }
            }
            let j = self.jobs.get_mut(&name).expect("listed above");
            // Times that came and went while the loop was held up (a slow catalog, a
            // stopped process) or that the clock jumped over (stepped forward): one
            // run, late, for all of them, and each recorded as a skipped trigger (they
            // merged without a trace).
            let mut missed = Vec::new();
            // Past the first MAX_MISSED_SHOWN: how many more, the first and the last.
            let mut rest: Option<(u64, DateTime<Utc>, DateTime<Utc>)> = None;
            let mut t = at;
            while let Some(n) = j.schedule.next_after(t).filter(|n| *n <= now) {
                match (&mut rest, missed.len() < MAX_MISSED_SHOWN) {
                    (_, true) => missed.push(format!("trigger at {}", n.to_rfc3339())),
                    (Some((more, _, last)), false) => (*more, *last) = (*more + 1, n),
                    (None, false) => rest = Some((1, n, n)),
                }
                t = n;
            }
            if let Some((more, first, last)) = rest {
                missed.push(format!(
                    "{more} more triggers from {} to {}",
                    first.to_rfc3339(),
                    last.to_rfc3339()
                ));
            }
            j.next = j.schedule.next_after(now.max(at));
            j.handled = Some(t);
            if j.next.is_none() {
                ran_out.push(name.clone());
            }
            // The run due at `at` stands for them only if it started (it was skipped
            // too, or could not start: the messages said it "started late" anyway).
            let stands = match (started, queued) {
                (true, _) => "started late and stands for it",
                (false, true) => "waits to start and stands for it",
                (false, false) => "did not start either",
            };
            for m in missed {
                let msg = format!(
                    "{m} skipped: the clock jumped or the daemon's loop was held up until {} (the run due at {} {stands})",
                    now.to_rfc3339(),
                    at.to_rfc3339()
                );
                tracing::warn!("job {name}: {msg}");
                self.summary.skipped += 1;
                self.event(Some(&name), "skipped", &msg);
            }
        }
        for name in ran_out {
            self.schedule_over(&name, "its schedule has no time left after this run (its last is past): it will not run again");
        }
    }

    /// Job `name` has no time left in its schedule (`msg` says since when): logged, an
    /// `error` event, and its notifiers told (a job that silently stopped being backed up
    /// is the failure they most need to hear of: after a `cron(… 2026)` schedule's last
    /// run the daemon went quiet, and nothing said so until its next start).
    fn schedule_over(&mut self, name: &str, msg: &str) {
        tracing::warn!("job {name}: {msg}");
        self.event(Some(name), "error", msg);
        let cfg = self.cfg.clone();
        let subject = format!("snapring: job {name}: its schedule has no time left");
        let notice = job_notice(name, crate::report::Status::Failed, subject, msg);
        self.tell(name, &cfg, None, || notice);
    }

    /// Why a queued run (of job `name`, writing `store`) has not started: another job's
    /// run on its store, its store not answering, or `max_runs` runs going.
    fn waits_for(&self, name: &str, store: Option<&Path>) -> String {
        if let Some(s) = store
            && let Some((other, _)) = self
                .running
                .iter()
                .find(|(_, r)| r.store.as_deref() == Some(s))
        {
            return format!("job {other}'s run is writing its store {}", s.display());
        }
        if let Some(s) = configured_store(&self.cfg, name).filter(|s| self.calls.silent(s)) {
            return format!(
                "its store {} has not answered yet: its file system is slow or hangs",
                s.display()
            );
        }
        format!(
            "{} runs are going, max_runs = {}",
            self.running.len(),
            self.cfg.max_runs()
        )
    }

    /// Starts the queued runs that can start, in due order: at most `max_runs` going,
    /// one run per store (the store's lock refused the second, recorded and notified
    /// `failed`). A queued run whose job has a `window` that closed while it waited
    /// (counted from its trigger) is skipped: a `skipped` event and an `incomplete`
    /// notice, as a run its window cut short. With no cap, 300 jobs due the same minute
    /// were 300 processes at once (2.3 GB), the catalog locked past its 5 s timeout
    /// for some of them (their ends not recorded), and all but one of those on one
    /// store failed.
    fn start_queued(&mut self, now: DateTime<Utc>) {
        let mut i = 0;
        while i < self.queue.len() {
            let name = self.queue[i].name.clone();
            if !self.jobs.contains_key(&name) {
                let q = self.queue.remove(i);
                let msg = format!(
                    "trigger at {} skipped: the job has no schedule since the configuration was reloaded, and its run had not started",
                    q.due.to_rfc3339()
                );
                tracing::warn!("job {name}: {msg}");
                self.summary.skipped += 1;
                self.event(Some(&name), "skipped", &msg);
                continue;
            }
            let window = self
                .cfg
                .job
                .get(&name)
                .and_then(|j| j.window.as_deref())
                .and_then(|w| crate::util::parse_duration(w).ok())
                .and_then(|w| chrono::Duration::from_std(w).ok());
            match window.filter(|w| self.queue[i].due + *w <= now) {
                Some(w) => {
                    let why = self.waits_for(&name, self.queue[i].store.as_deref());
                    let q = self.queue.remove(i);
                    self.window_closed(&q, w, &why);
                }
                None => i += 1,
            }
        }
        let max = self.cfg.max_runs();
        let mut i = 0;
        while i < self.queue.len() && self.running.len() < max {
            let busy = self.queue[i]
                .store
                .as_ref()
                .is_some_and(|s| self.running.values().any(|r| r.store.as_ref() == Some(s)));
            if busy {
                i += 1;
                continue;
            }
            // Read now, not when it was queued: a run of the job started by hand (or
            // left by a killed daemon) since holds its store, whose lock would refuse
            // this one (`failed`, told); skipped as `due` skips it. A store that has not
            // answered yet may hold one: the run waits for its answer (next turn).
            let holder = match self.orphan_run(&self.queue[i].name) {
                Answer::NotYet => {
                    i += 1;
                    continue;
                }
                Answer::Got(h) => h,
            };
            let q = self.queue.remove(i);
            if let Some(holder) = holder {
                let msg = format!(
                    "trigger at {} skipped: while its run waited to start, a run of the job that this daemon did not start began and is still going, {holder}",
                    q.due.to_rfc3339()
                );
                tracing::warn!("job {}: {msg}", q.name);
                self.summary.skipped += 1;
                self.event(Some(&q.name), "skipped", &msg);
                continue;
            }
            let waited = now - q.due;
            if waited > chrono::Duration::seconds(1) {
                tracing::info!(
                    "job {}: its run due at {} starts {}s late (it waited to start)",
                    q.name,
                    q.due.to_rfc3339(),
                    waited.num_seconds()
                );
            }
            self.spawn(&q.name);
        }
    }

    /// Queued run `q` whose job's `window` (`w`) closed before it could start (`why`):
    /// skipped, recorded as a `skipped` event, and its job's notifiers told (as of a run
    /// its window cut short: `incomplete`).
    fn window_closed(&mut self, q: &Queued, w: chrono::Duration, why: &str) {
        let name = q.name.clone();
        let msg = format!(
            "trigger at {} skipped: its backup window ({}s) closed at {} before its run could start ({why})",
            q.due.to_rfc3339(),
            w.num_seconds(),
            (q.due + w).to_rfc3339()
        );
        tracing::error!("job {name}: {msg}");
        self.summary.skipped += 1;
        self.event(Some(&name), "skipped", &msg);
        let cfg = self.cfg.clone();
        let fallback = || {
            job_notice(
                &name,
                crate::report::Status::Incomplete,
                format!("snapring: job {name}: run skipped, its backup window closed"),
                &msg,
            )
        };
        self.tell(&name, &cfg, None, fallback);
    }

    /// The runs still queued when the daemon stops: not started, each a `skipped` event.
    fn drop_queue(&mut self) {
        for q in std::mem::take(&mut self.queue) {
            let msg = format!(
                "trigger at {} skipped: its run was waiting to start when the daemon stopped",
                q.due.to_rfc3339()
            );
            tracing::warn!("job {}: {msg}", q.name);
            self.summary.skipped += 1;
            self.event(Some(&q.name), "skipped", &msg);
        }
    }

    /// A live `snapring run` of job `name` on this host that holds the job's store and
    /// that this daemon did not start (described for the message), or `None`. Runs are
    /// process groups of their own, so a daemon killed with SIGKILL (outside a service
    /// manager that kills its cgroup) leaves them going; its next start ran the job
    /// again, the store lock refused that run, and it was recorded and notified as a
    /// failure. Read from the store's lock file, which names its holder (emptied when
    /// it ends cleanly; a dead holder's pid is checked against the process's command).
    /// Read off the loop ([`StoreCalls`]): a store that has not answered yet is
    /// [`Answer::NotYet`], not "none" (the job is not started on it: a store slow but
    /// alive would have had its holder's lock refuse the run, `failed`, told).
    fn orphan_run(&self, name: &str) -> Answer<Option<String>> {
        let Some(store) = configured_store(&self.cfg, name) else {
            return Answer::Got(None);
        };
        let lock = store.join(crate::store::META_DIR).join("lock");
        let question = format!("the holder of its lock, for job {name}");
        let name = name.to_string();
        // A late "no holder" is not taken (a run started by hand may hold it since:
        // the daemon's run was refused, recorded `failed` and told).
        self.calls.call_keeping(
            &store,
            "read its lock",
            &question,
            |holder: &Option<String>| holder.is_some(),
            move || orphan_holder(&lock, &name),
        )
    }

    /// The record in the store of job `name` (as configured in `cfg`) of its newest run
    /// that started at `since` or later and no later than `until` (`None`: none, or a
    /// repository's job, which has no store), or [`Answer::NotYet`]: the store has not
    /// answered. A run writes it before its post command and notifications, so a final
    /// status there is a run that ended and recorded itself, whatever the catalog says
    /// (one that cannot be written has no row of it).
    fn stored_run(
        &self,
        name: &str,
        cfg: &Config,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Answer<Option<crate::report::RunReport>> {
        let Some(store) = configured_store(cfg, name) else {
            return Answer::Got(None);
        };
        let root = store.clone();
        let from = since - chrono::Duration::seconds(1);
        let job = name.to_string();
        let question = format!(
            "the run records of job {name} from {} to {}",
            since.to_rfc3339(),
            until.to_rfc3339()
        );
        // Off the loop ([`StoreCalls`]).
        self.calls
            .call(&store, "read its run records", &question, move || {
                let store = crate::store::Store::open(&root, false).ok()?;
                let mut ids: Vec<String> = store
                    .run_ids()
                    .into_iter()
                    .filter(|id| {
                        crate::store::select::run_id_time(id)
                            .is_some_and(|t| t >= from && t <= until)
                    })
                    .collect();
                ids.sort();
                ids.into_iter().rev().find_map(|id| {
                    let r = store.read_run(&id).ok().flatten()?;
                    (r.job.as_deref() == Some(job.as_str())).then_some(r)
                })
            })
    }

    /// Sends SIGTERM to every running backup and waits for them to record themselves.
    fn stop_children(&mut self) {
        for (n, r) in &self.running {
            match self
                .stored_run(n, &r.cfg, r.since, Utc::now())
                .got()
                .flatten()
                .filter(|rec| rec.status != crate::report::Status::Running)
            {
                // Its backup is over: what is left is its post command or notices.
                Some(rec) => tracing::warn!(
                    "job {n}: stopping its run {}, which ended {} and is finishing (post command, notices: one under way is cut short, none retried)",
                    rec.id,
                    rec.status.as_str()
                ),
                None => tracing::warn!(
                    "job {n}: stopping the running backup (it ends incomplete and resumes next time)"
                ),
            }
            if let Some(pid) = rustix::process::Pid::from_raw(r.child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        for (n, mut r) in std::mem::take(&mut self.running) {
            match r.child.wait() {
                Ok(st) => {
                    tracing::info!("job {n}: run ended ({st})");
                    let at = Utc::now();
                    if !self.ended(&n, st, &r, at, false) {
                        self.unjudged.push(Unjudged {
                            name: n,
                            status: st,
                            run: r,
                            at,
                        });
                    }
                }
                Err(e) => tracing::error!("job {n}: {e}"),
            }
        }
        // Asked once more, and a run killed by a signal judged without a store that
        // still has not answered: a death is always told ([`State::died`]).
        for end in std::mem::take(&mut self.unjudged) {
            if !self.ended(&end.name, end.status, &end.run, end.at, true) {
                let store = configured_store(&end.run.cfg, &end.name)
                    .map_or_else(String::new, |s| s.display().to_string());
                tracing::error!(
                    "job {}: its run ended ({}) and its store {store} has not answered whether it recorded its end (an exit code, which a run stopped with the daemon ends with too), or its settling call answered as the daemon stopped: not told as dead (the daemon stops)",
                    end.name,
                    end.status
                );
            }
        }
        // The notices of dead runs, each bounded by its notifiers' timeouts and retries.
        for h in std::mem::take(&mut self.notifying) {
            let _ = h.join();
        }
    }
}

/// The holder of the store lock `lock` if it is a live `snapring run` of job `name` on
/// this host other than this process ([`State::orphan_run`]).
fn orphan_holder(lock: &Path, name: &str) -> Option<String> {
    let mut f = crate::fsx::open_regular(lock, true).ok()?;
    // The file names the last holder, held or not (a run killed with SIGKILL leaves
    // it): only a lock someone holds now is a run going on (its pid may be reused).
    if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).is_ok() {
        return None;
    }
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut text).ok()?;
    let h: crate::store::lock::Holder = serde_json::from_slice(&text).ok()?;
    if h.host != crate::util::hostname() || h.pid == std::process::id() {
        return None;
    }
    // `snapring … run … NAME …`, as `spawn` starts it (or as a user would).
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", h.pid)).ok()?;
    let runs_it = cmdline
        .split(|b| *b == 0)
        .skip_while(|a| *a != b"run")
        .skip(1)
        .any(|a| a == name.as_bytes());
    runs_it.then(|| h.to_string())
}

/// How many of a job's newest runs the daemon's start looks through for deaths
/// nobody was told of ([`untold_deaths`]).
const UNTOLD_LOOKED_AT: usize = 10;

/// The backups among `rows` (a job's newest rows in the catalog, newest first), with
/// their stores, oldest first, that died before they
/// recorded their end (a process killed left each `running`, settled since:
/// `interrupted: the process ended before finishing`) and that nobody told the job's
/// notifiers of: no daemon saw them die, as when the daemon was killed with its run.
/// Looked for among the job's newest [`UNTOLD_LOOKED_AT`] runs, back to its newest run
/// that was told (its record holds its notifiers' outcomes) or that ended by itself
/// (any end but such a death: its own process told it): a death before it is history,
/// not news. Looking back to the newest `complete` run told a job whose runs end
/// `incomplete` night after night (or the first start after an upgrade) of an old
/// death that newer runs had been reported after.
/// Only the newest was looked at: a run killed with its daemon, and then the daemon
/// started again killed before it told it, with the run it resumed, was never told.
/// Once told, a run's record has the notifiers' outcomes, and it is not told again.
fn untold_deaths(
    rows: &[crate::catalog::RunRow],
) -> Vec<(crate::store::Store, crate::report::RunReport)> {
    let mut found = Vec::new();
    for row in rows {
        // A run told (its notifiers' outcomes recorded) or that ended by itself (its
        // own process told its end): the deaths before it are history.
        if row.notifications > 0
            || (row.status != crate::report::Status::Incomplete.as_str()
                && row.status != crate::report::Status::Running.as_str())
        {
            break;
        }
        // A run still `running` (its store locked: it may be alive) has not ended.
        if row.status != crate::report::Status::Incomplete.as_str()
            || crate::catalog::is_repository(&row.store)
        {
            continue;
        }
        let Ok(store) = crate::store::Store::open(Path::new(&row.store), false) else {
            continue;
        };
        match store.read_run(&row.id) {
            Ok(Some(r)) if died_untold(&r) => found.push((store, r)),
            Ok(Some(_)) => break,
            _ => {}
        }
    }
    found.reverse();
    found
}

/// The id of the newest record of job `name` in the store at `root` started between
/// `since` and `at` (the run a dead child made, if it got as far as its record), for a
/// daemon without a catalog ([`State::dead_in_store`]).
fn dead_record(root: &Path, name: &str, since: DateTime<Utc>, at: DateTime<Utc>) -> Option<String> {
    let store = crate::store::Store::open_read(root).ok()?;
    // Newest first; an id dated well before the child started (its time is its
    // start's) is not read.
    let early = since - chrono::Duration::minutes(5);
    let mut ids: Vec<String> = store
        .run_ids()
        .into_iter()
        .filter(|id| crate::store::select::run_id_time(id).is_none_or(|t| t >= early))
        .collect();
    ids.sort_by(|a, b| b.cmp(a));
    ids.into_iter().find(|id| {
        store.read_run(id).ok().flatten().is_some_and(|r| {
            r.job.as_deref() == Some(name)
                && !r.dry_run
                && crate::store::select::parse_time(&r.started_at)
                    .is_some_and(|t| t >= since && t <= at)
        })
    })
}

/// Whether run `r` died before it recorded its end (killed, or with its daemon) and
/// was never notified ([`untold_deaths`]).
fn died_untold(r: &crate::report::RunReport) -> bool {
    r.status == crate::report::Status::Incomplete
        && r.message
            .starts_with("interrupted: the process ended before finishing")
        && r.notifications.is_empty()
        && !r
            .warnings
            .iter()
            .any(|w| w.starts_with(TOLD_NOBODY) || w == TOLD_BEFORE_STORE)
}

/// The claim to tell the deaths of a store's runs: an exclusive `flock` on
/// `.snapring/told.lock`, waited for, held while a death is told and its notifiers'
/// outcomes written into its record. Whoever tells a death (the daemon, at its start
/// or when it reaps a run; a `snapring run` of the job, [`tell_untold_deaths`]) takes
/// it, then reads the record again and tells it only if it is still untold
/// ([`died_untold`]): a daemon and a run (or the daemon's own resumed run) that find the
/// same death tell it once. `None` if the file cannot be opened (a store that cannot
/// be written: the death is told all the same, as it was before the claim).
fn death_claim(store: &crate::store::Store) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = store.meta.join("told.lock");
    // Opened as the store's lock is ([`crate::store::lock`]): whoever can write the
    // store can put a fifo there (a plain open for writing waited for a reader for
    // ever: the run hung before its backup, the daemon skipped every later trigger),
    // or a symlink (a root run created a file at its target); private.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOFOLLOW).bits() as i32)
        .open(&path)
        .and_then(|f| crate::fsx::check_regular(std::os::fd::AsFd::as_fd(&f)).map(|()| f))
        .map_err(|e| {
            tracing::warn!(
                "{}: cannot open it to claim the telling of its runs' deaths (told all the same): {e}",
                crate::relpath::shown(&path)
            )
        })
        .ok()?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| tracing::warn!("{}: cannot lock it: {e}", crate::relpath::shown(&path)))
        .ok()?;
    Some(f)
}

/// Tells the notifiers of job `name` (`notifiers`; none: nothing is done, and a later
/// daemon start marks it told to nobody) of its runs in the hard-link store at
/// `root` that died before they recorded their end and that nobody was told of
/// ([`died_untold`]), oldest first, as a daemon's start finds them
/// ([`look_in_store`]: a dead `running` record is settled `incomplete` first, under the
/// store's lock). For `snapring run` / `backup --config` before its backup: a run
/// started by cron or a timer and killed (the out-of-memory killer) was settled by the
/// next command and told to nobody, night after night, unless a daemon started. Each
/// under the store's [`death_claim`], told only if still untold, and its notifiers'
/// outcomes written into its record and its catalog row (`catalog`: path, on NFS):
/// neither a later run nor a daemon's start tells it again. `true` if a stop (SIGTERM,
/// SIGINT) cut a notice short: that death is left untold, and the caller is not to
/// start its run (its record, newer, would make the death history, never told).
pub fn tell_untold_deaths(
    root: &Path,
    name: &str,
    catalog: Option<(&Path, bool)>,
    notifiers: &[(String, crate::notify::NotifierConfig)],
) -> bool {
    if notifiers.is_empty() || !root.join(crate::store::META_DIR).is_dir() {
        return false;
    }
    // The deaths a daemon told before their store answered (or while a command held
    // it), noted in the catalog for their records to be marked told
    // ([`Catalog::note_told_death`]): told already, marked here (they were told again
    // by a run that came first, as untold deaths).
    let noted: BTreeMap<String, String> = catalog
        .and_then(|(path, on_nfs)| match Catalog::open(path, on_nfs) {
            Ok(c) => c.told_deaths().map_err(|e| tracing::warn!("{e}")).ok(),
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        })
        .unwrap_or_default()
        .into_iter()
        .map(|(id, _, _, cause)| (id, cause))
        .collect();
    for (store, r) in look_in_store(root, name).untold {
        if let Some(cause) = noted.get(&r.id) {
            let marked = settle_dead(
                &store.root,
                &r.id,
                cause,
                &std::sync::atomic::AtomicU8::new(GAVE_UP),
            );
            tracing::info!(
                "job {name}: the death of its run {} was told by the daemon before its store answered; its record now says so",
                r.id
            );
            if marked.is_some_and(|(_, r)| r.status != crate::report::Status::Running)
                && let Some((path, on_nfs)) = catalog
                && let Err(e) = Catalog::open(path, on_nfs).and_then(|mut c| c.marked_told(&r.id))
            {
                tracing::warn!("{e}");
            }
            continue;
        }
        let claim = death_claim(&store);
        let mut r = match store.read_run(&r.id) {
            Ok(Some(now)) if died_untold(&now) => now,
            Ok(Some(_)) => continue,
            _ => r,
        };
        tracing::warn!(
            "job {name}: its run {} ended before it recorded its end and was never notified ({}); telling its notifiers",
            r.id,
            r.message
        );
        r.notifications = crate::notify::send_notice(notifiers, &crate::notify::Notice::backup(&r));
        // Cut short by a stop (SIGTERM, SIGINT): left untold, for the next run or
        // daemon start to tell (written, the cut outcome made it told, and a daemon's
        // start looks for cut notices in a job's newest record only: this run's own).
        if !cut_notifiers(&r).is_empty() {
            tracing::warn!(
                "job {name}: the notice of the death of its run {} was cut short by a stop; it is told again by the job's next run or daemon start",
                r.id
            );
            return true;
        }
        record_run(
            catalog.map(|c| c.0),
            catalog.is_some_and(|c| c.1),
            Some(&store),
            &r,
        );
        drop(claim);
    }
    false
}

/// The warning in the record of a run whose death the daemon told to nobody (its job
/// has no notifier): told, not to be told again ([`died_untold`]).
const TOLD_NOBODY: &str = "its death was told to nobody";

/// The newest run record of job `name` in its hard-link store (`None` for a
/// repository job, or a store with none), for a daemon with no catalog to read
/// ([`State::plan`]), and the older records of runs that died untold, oldest first, as
/// [`untold_deaths`] finds them in the catalog (among the newest
/// [`UNTOLD_LOOKED_AT`], back to the newest run told or that ended by itself): newest
/// by its id's time, one dated more than 5 minutes ahead (made while the clock was ahead) after
/// every other, as the catalog has it. A newest record still `running` whose store is
/// not locked is settled `incomplete` first ([`crate::catalog::settle_in_store`]); one
/// whose store is locked (its run may be alive) is `None`.
fn newest_in_store(
    root: &Path,
    name: &str,
) -> Option<(
    crate::store::Store,
    crate::report::RunReport,
    Vec<crate::report::RunReport>,
)> {
    let store = crate::store::Store::open(root, false).ok()?;
    let ahead = Utc::now() + chrono::Duration::minutes(5);
    let mut ids = store.run_ids();
    ids.sort_by_cached_key(|id| {
        let later = crate::store::select::run_id_time(id).is_some_and(|t| t > ahead);
        (later, std::cmp::Reverse(id.clone()))
    });
    let mut runs = ids.into_iter().filter_map(|id| {
        let r = store.read_run(&id).ok().flatten()?;
        (r.job.as_deref() == Some(name) && !r.dry_run).then_some((id, r))
    });
    let (id, newest) = runs.next()?;
    let newest = match newest.status {
        crate::report::Status::Running => {
            let r = crate::catalog::settle_in_store(root, &id, "daemon")?;
            (r.status != crate::report::Status::Running).then_some(r)?
        }
        _ => newest,
    };
    let mut older = Vec::new();
    if died_untold(&newest) {
        for (_, r) in runs.take(UNTOLD_LOOKED_AT - 1) {
            if !died_untold(&r) {
                break;
            }
            older.push(r);
        }
    }
    older.reverse();
    Some((store, newest, older))
}

/// What the daemon's start reads of a job's last runs in their store ([`State::look`]).
#[derive(Default)]
struct Look {
    /// The runs that died before they recorded their end and that nobody was told of
    /// ([`untold_deaths`]), oldest first.
    untold: Vec<(crate::store::Store, crate::report::RunReport)>,
    /// The newest backup of the job, if a stop cut its notice short
    /// ([`crate::notify::CUT_BY_SHUTDOWN`]): its store (`None` when the store has no
    /// record of it: a run that could not start is in the catalog only) and the
    /// notifiers to tell again (not tried as their settings say). Not a notice that
    /// failed otherwise (it was retried as set), nor one told again since (its outcome
    /// replaced the cut one).
    cut: Option<(
        Option<crate::store::Store>,
        crate::report::RunReport,
        Vec<String>,
    )>,
    /// Without a catalog: the job's newest run in its store (id, status, message,
    /// start).
    newest: Option<(String, String, String, String)>,
}

/// What the stores say of a job's rows in the catalog ([`State::look`]).
#[derive(Default)]
struct StoreRows {
    /// The records of the rows `running` (and those whose publication was pending) as
    /// their store settled them, to record in the catalog.
    settled: Vec<crate::report::RunReport>,
    untold: Vec<(crate::store::Store, crate::report::RunReport)>,
    /// The newest row's record, with its store, if its notices failed.
    cut: Option<(crate::store::Store, crate::report::RunReport)>,
}

/// Reads the stores of a job's newest catalog `rows` (newest first; `pending`: the
/// ids of runs whose publication is pending): its runs that died `running` are settled
/// first ([`crate::catalog::settle_in_store`], as `catalog::settle_running` does), and
/// so are its `older` unsettled runs (id, store), then its untold deaths looked for
/// among `rows`. On a store's worker ([`StoreCalls`]).
fn read_rows(
    mut rows: Vec<crate::catalog::RunRow>,
    pending: &BTreeSet<String>,
    older: &[(String, PathBuf)],
) -> StoreRows {
    let mut settled: Vec<crate::report::RunReport> = older
        .iter()
        .filter_map(|(id, store)| crate::catalog::settle_in_store(store, id, "catalog"))
        .collect();
    for row in &mut rows {
        let running = row.status == crate::report::Status::Running.as_str();
        if row.kind != "backup"
            || crate::catalog::is_repository(&row.store)
            || !(running || pending.contains(&row.id))
        {
            continue;
        }
        if let Some(r) = crate::catalog::settle_in_store(Path::new(&row.store), &row.id, "catalog")
        {
            row.status = r.status.as_str().to_string();
            settled.push(r);
        }
    }
    let untold = untold_deaths(&rows);
    let cut = rows
        .first()
        .filter(|row| {
            row.notifications_failed > 0
                && row.kind == "backup"
                && !crate::catalog::is_repository(&row.store)
        })
        .and_then(|row| {
            let s = crate::store::Store::open(Path::new(&row.store), false).ok()?;
            let r = s.read_run(&row.id).ok().flatten()?;
            Some((s, r))
        });
    StoreRows {
        settled,
        untold,
        cut,
    }
}

/// What the records in the store at `root` say of job `name`'s last runs, for a daemon
/// with no catalog ([`State::look`], [`newest_in_store`]). On a store's worker
/// ([`StoreCalls`]).
fn look_in_store(root: &Path, name: &str) -> Look {
    let mut look = Look::default();
    let Some((store, r, older)) = newest_in_store(root, name) else {
        return look;
    };
    for o in older {
        if let Ok(s) = crate::store::Store::open(&store.root, false) {
            look.untold.push((s, o));
        }
    }
    look.newest = Some((
        r.id.clone(),
        r.status.as_str().to_string(),
        r.message.clone(),
        r.started_at.clone(),
    ));
    let only = cut_notifiers(&r);
    if died_untold(&r) {
        look.untold.push((store, r));
    } else if !only.is_empty() {
        look.cut = Some((Some(store), r, only));
    }
    look
}

/// Whether job `name` (`j`) is due at the daemon's start (`now`), and why: its run due
/// at its last scheduled time was missed while the daemon was down (`missed =
/// "run-once"`, and its newest run, started at `last`, is older), or its newest backup
/// (`newest`: id, status, message) was interrupted (stopped by a signal, or killed,
/// with the daemon or the machine) and resumes from that run's staging, whatever its
/// `missed` (not a missed time: `missed = "skip"` skipped those resumes until
/// 2026-12-06). A run its window cut short waits for its next time, as it would had the
/// daemon kept running. `(true, message)` for a resume (an event), `(false, _)` for a
/// missed run.
fn due_at_start(
    j: &Job,
    name: &str,
    now: DateTime<Utc>,
    last: Option<String>,
    newest: Option<(String, String, String)>,
) -> Option<(bool, String)> {
    let prev = j.schedule.previous_at_or_before(now);
    // Only a job with history can have missed a run; a new job waits. (With no
    // catalog, the newest run record in the job's store: it had no history, and a time
    // missed while the daemon was down waited for the next.)
    if j.missed == Missed::RunOnce
        && let Some(prev) = prev
        && let Some(last) = last
        && crate::store::select::parse_time(&last).is_some_and(|l| l < prev)
        && !covered_by_next(j, name, now, prev)
    {
        let msg = format!(
            "its run due at {} was missed while the daemon was down; running it now",
            prev.to_rfc3339()
        );
        tracing::warn!("job {name}: {msg}");
        return Some((false, msg));
    }
    if let Some((id, status, message)) = newest
        && status == crate::report::Status::Incomplete.as_str()
        && message.starts_with("interrupted")
    {
        let msg = format!("its last run {id} was interrupted ({message}); resuming it now");
        tracing::warn!("job {name}: {msg}");
        return Some((true, msg));
    }
    None
}

/// How close the next scheduled time must be for a missed run to wait for it
/// ([`covered_by_next`]): this fraction of the schedule's period, at most
/// [`MISSED_COVER_MAX`].
const MISSED_COVER_FRACTION: i32 = 10;
const MISSED_COVER_MAX: chrono::Duration = chrono::Duration::minutes(15);

/// Whether the run of job `name` (`j`) missed at `prev` is covered by its next
/// scheduled time, so close to the daemon's start (`now`) that it stands for the missed
/// one (logged): within a tenth of the schedule's period (from `prev` to the next time),
/// and at most 15 minutes. A daemon started at 01:58 ran a daily 02:00 job's missed
/// run at once and again two minutes later: two near-identical snapshots, one slot of
/// the ring spent on nothing (anacron and systemd's `Persistent=` do not either).
fn covered_by_next(j: &Job, name: &str, now: DateTime<Utc>, prev: DateTime<Utc>) -> bool {
    let Some(next) = j.schedule.next_after(now) else {
        return false;
    };
    let bound = ((next - prev) / MISSED_COVER_FRACTION).min(MISSED_COVER_MAX);
    if next - now > bound {
        return false;
    }
    tracing::info!(
        "job {name}: its run due at {} was missed while the daemon was down; its next time, {} (in {}s), stands for it",
        prev.to_rfc3339(),
        next.to_rfc3339(),
        (next - now).num_seconds()
    );
    true
}

/// The notifiers of run `r` whose notice a stop cut short
/// ([`crate::notify::CUT_BY_SHUTDOWN`]).
fn cut_notifiers(r: &crate::report::RunReport) -> Vec<String> {
    r.notifications
        .iter()
        .filter(|o| {
            !o.ok
                && o.error
                    .as_deref()
                    .is_some_and(|e| e.contains(crate::notify::CUT_BY_SHUTDOWN))
        })
        .map(|o| o.notifier.clone())
        .collect()
}

/// Writes run record `r` into `store` (if any) and records it in the catalog (if any).
fn record_run(
    catalog: Option<&Path>,
    on_nfs: bool,
    store: Option<&crate::store::Store>,
    r: &crate::report::RunReport,
) {
    if let Some(store) = store
        && let Err(e) = store.write_run(r)
    {
        tracing::error!("job {}: {e}", r.job.as_deref().unwrap_or("-"));
    }
    if let Some(c) = catalog
        && let Some(w) = crate::catalog::record_quietly(c, on_nfs, r)
    {
        tracing::warn!("{w}");
    }
}

/// Why a run's process ended other than as a run ends (an exit code of the README's
/// table), `None` if it did not: killed by a signal (the kernel's out-of-memory killer
/// sends SIGKILL), a crash, or stopped at once by a second signal (130).
fn abnormal(st: std::process::ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = st.signal() {
        let hint = if sig == 9 {
            " (SIGKILL: the out-of-memory killer, or kill -9)"
        } else {
            ""
        };
        return Some(format!("was killed by signal {sig}{hint}"));
    }
    match st.code()? {
        0 | 1 | 2 | 3 | 64 | 75 => None,
        130 => Some("was stopped at once by a second signal (exit 130)".into()),
        c => Some(format!("ended with exit code {c} (a crash)")),
    }
}

/// How long a stopping daemon waits for its heartbeat thread to remove its markers
/// ([`marker::Heartbeat::stop`]): a store that does not answer does not hold the stop.
const MARKER_GRACE: Duration = Duration::from_secs(2);

/// Runs until `stop` is set; `reload` asks for the config to be read again.
pub fn run(
    opts: &DaemonOptions,
    stop: &AtomicBool,
    reload: &AtomicBool,
) -> Result<Summary, String> {
    let (cfg, text, jobs) = load(&opts.config)?;
    // The catalog is chosen once, at start (its lock is the daemon's: one daemon per
    // catalog), so a reload that changes the file's `catalog` cannot take effect.
    let started_catalog = cfg.catalog.clone();
    let mut st = State {
        opts,
        events: EventWriter::start(opts.catalog.clone(), opts.catalog_on_nfs),
        text,
        cfg: Arc::new(cfg),
        jobs,
        running: BTreeMap::new(),
        queue: Vec::new(),
        notifying: Vec::new(),
        markers: marker::Heartbeat::start(
            marker::Markers::new(&opts.config, opts.catalog.as_deref()),
            BTreeSet::new(),
        ),
        calls: StoreCalls::default(),
        unjudged: Vec::new(),
        unmarked: Vec::new(),
        settling: BTreeMap::new(),
        unlooked: BTreeSet::new(),
        summary: Summary::default(),
    };
    st.markers.stores(st.stores());
    tracing::info!(
        "daemon started with {} scheduled jobs from {}",
        st.jobs.len(),
        opts.config.display()
    );
    st.event(
        None,
        "start",
        &format!("daemon started ({})", opts.config.display()),
    );
    st.plan(Utc::now(), true);
    let mut clock = (std::time::Instant::now(), Utc::now());
    while !stop.load(Ordering::Relaxed) {
        if reload.swap(false, Ordering::Relaxed) {
            match load(&opts.config) {
                Ok((cfg, text, jobs)) => {
                    // Only where the file chose it: `--catalog` or SNAPRING_CATALOG
                    // outranks the file at every start.
                    let from_file = opts.catalog
                        == started_catalog
                            .clone()
                            .or_else(|| Some(crate::catalog::default_path()));
                    if from_file && cfg.catalog != started_catalog {
                        let shown = |c: &Option<PathBuf>| {
                            c.as_ref().map_or("(none: the default)".to_string(), |p| {
                                p.display().to_string()
                            })
                        };
                        let note = format!(
                            "catalog in {} changed from {} to {}: the daemon chose its catalog at start and keeps recording in {} until it is restarted",
                            opts.config.display(),
                            shown(&started_catalog),
                            shown(&cfg.catalog),
                            opts.catalog
                                .as_ref()
                                .map_or("none (off)".to_string(), |p| p.display().to_string()),
                        );
                        tracing::warn!("{note}");
                        st.event(None, "reload", &note);
                    }
                    st.text = text;
                    st.cfg = Arc::new(cfg);
                    // The `[server]` of this daemon serves the reloaded jobs too.
                    crate::serve::reloaded(&opts.config, st.cfg.clone());
                    // A queued run waits for the store its job writes now: the one
                    // read when it was queued may have moved (it then started beside
                    // a run on its new store, whose lock refused it: `failed`, told).
                    for q in &mut st.queue {
                        q.store = store_of(&st.cfg, &q.name, &st.calls);
                    }
                    let before = std::mem::replace(&mut st.jobs, jobs);
                    for (name, j) in st.jobs.iter_mut() {
                        j.handled = before.get(name).and_then(|b| b.handled);
                    }
                    st.markers.stores(st.stores());
                    // The workers of the stores no job writes any more end.
                    // Nor those of the runs going on or whose end is not judged yet
                    // (under the config they started with): a dead run's settle under
                    // way on one would lose its answer.
                    let kept: BTreeSet<PathBuf> = st
                        .jobs
                        .keys()
                        .filter_map(|n| configured_store(&st.cfg, n))
                        .chain(
                            st.running
                                .iter()
                                .filter_map(|(n, r)| configured_store(&r.cfg, n)),
                        )
                        .chain(
                            st.unjudged
                                .iter()
                                .filter_map(|u| configured_store(&u.run.cfg, &u.name)),
                        )
                        .collect();
                    st.calls.keep_only(&kept);
                    st.summary.reloads += 1;
                    tracing::info!("reloaded {}", opts.config.display());
                    st.event(None, "reload", "configuration reloaded");
                    let now = Utc::now();
                    st.plan(now, false);
                    // A trigger already due and not yet run (the reload came first) is
                    // kept: planning from now dropped it, silently.
                    for (name, j) in st.jobs.iter_mut() {
                        if let Some(due) =
                            before.get(name).and_then(|b| b.next).filter(|t| *t <= now)
                        {
                            j.next = Some(due);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("reload failed, keeping the running configuration: {e}");
                    st.event(None, "reload-failed", &e);
                }
            }
        }
        st.reap();
        let now = Utc::now();
        st.look_again(now);
        st.clock(&mut clock, now);
        st.due(now);
        st.heartbeat();
        std::thread::sleep(opts.tick);
    }
    st.drop_queue();
    st.stop_children();
    st.markers.stop(MARKER_GRACE);
    st.heartbeat();
    st.event(None, "stop", "daemon stopped");
    st.events.finish(STOP_GRACE);
    tracing::info!(
        "daemon stopped: {} runs started, {} triggers skipped",
        st.summary.started,
        st.summary.skipped
    );
    Ok(st.summary)
}

/// SIGTERM/SIGINT set `stop`; SIGHUP sets `reload`.
pub fn install_signals(stop: &std::sync::Arc<AtomicBool>, reload: &std::sync::Arc<AtomicBool>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for s in [SIGINT, SIGTERM] {
        let _ = signal_hook::flag::register(s, stop.clone());
    }
    let _ = signal_hook::flag::register(SIGHUP, reload.clone());
    // The notices of dead runs that a stopping daemon sends are not retried.
    crate::notify::stop_on_signals();
}

/// A notice about job `name` that has no run report of its own (a run that died before
/// it recorded its end, a queued run skipped): `status`, `subject`, and `msg` as its text.
fn job_notice(
    name: &str,
    status: crate::report::Status,
    subject: String,
    msg: &str,
) -> crate::notify::Notice {
    crate::notify::Notice {
        id: String::new(),
        job: Some(name.to_string()),
        status,
        subject,
        text: format!("job {name}: {msg}\n"),
        log: PathBuf::new(),
        report: serde_json::json!({
            "job": name,
            "status": status.as_str(),
            "message": msg,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store call that has not answered in time is `NotYet` (not "none"), and so is
    /// every other call on that store while it hangs (one thread stuck per store, not
    /// one per call); its late answer is given to the same question asked again; the
    /// calls of a store are made by one thread, not one each.
    #[test]
    fn a_store_call_not_answered_is_not_yet_and_its_late_answer_is_kept() {
        let calls = StoreCalls {
            wait: Duration::from_millis(200),
            ..StoreCalls::default()
        };
        let store = Path::new("/nowhere/s");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let got = calls.call(store, "test", "q", move || {
            let _ = rx.recv();
            7
        });
        assert_eq!(got, Answer::NotYet);
        assert!(calls.silent(store));
        let asked = Arc::new(AtomicBool::new(false));
        let a = asked.clone();
        let other = calls.call(store, "test", "other", move || {
            a.store(true, Ordering::SeqCst);
            8
        });
        assert_eq!(other, Answer::NotYet);
        tx.send(()).unwrap();
        let t0 = std::time::Instant::now();
        while calls.busy(store) && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(calls.call(store, "test", "q", || 9), Answer::Got(7));
        assert!(!calls.silent(store));
        assert!(
            !asked.load(Ordering::SeqCst),
            "asked while another call hung"
        );
        let id = || calls.call(store, "test", "thread", || std::thread::current().id());
        let first = id();
        assert!(matches!(first, Answer::Got(_)));
        assert_eq!(first, id());
        assert_ne!(first, Answer::Got(std::thread::current().id()));
    }

    /// A store call that panicked left its question "under way" for good and ended the
    /// store's worker: the store read as not answering, and its jobs never ran again.
    /// The panic is an answer of none, and the store is asked again.
    #[test]
    fn a_store_call_that_panics_leaves_the_store_answering() {
        let calls = StoreCalls::default();
        let store = Path::new("/nowhere/p");
        let got: Answer<u32> = calls.call(store, "test", "q", || panic!("a bug"));
        assert_eq!(got, Answer::NotYet);
        assert!(!calls.busy(store), "its question is not under way any more");
        assert_eq!(calls.call(store, "test", "q", || 5), Answer::Got(5));
        assert_eq!(calls.call(store, "test", "other", || 6), Answer::Got(6));
        assert!(!calls.silent(store));
    }

    /// A late lock reading that said "no holder" was given to the next turn's question
    /// up to 10 s later: a run started by hand since held the lock, and the daemon's run
    /// was started, refused, recorded `failed` and told. Only a late "held" is taken;
    /// a late "no holder" is asked again.
    #[test]
    fn a_late_lock_reading_is_taken_only_when_it_says_held() {
        let calls = StoreCalls {
            wait: Duration::from_millis(200),
            ..StoreCalls::default()
        };
        let store = Path::new("/nowhere/l");
        let held = |h: &Option<String>| h.is_some();
        for (late, now) in [(None, Some("pid 7")), (Some("pid 7"), None)] {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let late = late.map(String::from);
            let answer = late.clone();
            let got = calls.call_keeping(store, "test", "lock", held, move || {
                let _ = rx.recv();
                answer
            });
            assert_eq!(got, Answer::NotYet);
            tx.send(()).unwrap();
            let t0 = std::time::Instant::now();
            while calls.busy(store) && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let now = now.map(String::from);
            let again = now.clone();
            let got = calls.call_keeping(store, "test", "lock", held, move || again);
            let want = if late.is_some() { late } else { now };
            assert_eq!(got, Answer::Got(want));
        }
    }

    fn ev(i: usize) -> QueuedEvent {
        QueuedEvent {
            at: format!("2026-01-01T00:00:{:02}Z", i % 60),
            job: Some("j".into()),
            kind: "skipped".into(),
            message: format!("event {i}"),
        }
    }

    /// A catalog that cannot be written for a long time does not grow the daemon
    /// without end: the queue keeps the newest events, counts the others, and the
    /// count is recorded before the ones kept once the catalog can be written.
    #[test]
    fn the_event_queue_keeps_the_newest_and_counts_the_dropped() {
        let mut q = EventQueue::default();
        for i in 0..MAX_QUEUED_EVENTS + 7 {
            q.push(ev(i));
        }
        assert_eq!(q.events.len(), MAX_QUEUED_EVENTS);
        assert_eq!(q.dropped, 7);
        assert_eq!(q.events.front().unwrap().message, "event 7");
        assert_eq!(
            q.events.back().unwrap().message,
            format!("event {}", MAX_QUEUED_EVENTS + 6)
        );

        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("catalog.db");
        let mut q = EventQueue {
            cap: 3,
            closed: true,
            ..EventQueue::default()
        };
        for i in 0..5 {
            q.push(ev(i));
        }
        let queue = (std::sync::Mutex::new(q), std::sync::Condvar::new());
        write_events(&path, false, &queue);
        let c = Catalog::open(&path, false).unwrap();
        let got: Vec<(String, String)> = c
            .events(None)
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.message))
            .collect();
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].0, "error");
        assert!(
            got[0].1.starts_with("2 daemon events were not recorded"),
            "{got:?}"
        );
        let kept: Vec<&str> = got[1..].iter().map(|e| e.1.as_str()).collect();
        assert_eq!(kept, ["event 2", "event 3", "event 4"]);
        assert_eq!(queue.0.lock().unwrap().dropped, 0);
    }
}
