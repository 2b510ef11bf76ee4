//! A daemon's heartbeat markers: `<store>/.snapring/daemons/<host>-<hash of config path>.json`
//! in each hard-link store its scheduled jobs write, refreshed every
//! [`period`] and removed when it stops cleanly. A fresh marker of another daemon (another
//! host, or another config file on this one) is a second scheduler on the store: warned
//! about, not refused (the store's own lock keeps two runs apart; each such meeting is a
//! run refused, recorded and notified `failed`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The folder of the markers, in a store's `.snapring/`.
pub const DIR: &str = "daemons";

/// How often a marker is refreshed when `SNAPRING_DAEMON_HEARTBEAT` does not say.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(60);

/// A marker is fresh (its daemon alive) for this many periods (the longer of the
/// reader's and the writer's) after its last refresh.
const FRESH_PERIODS: u32 = 3;

/// The refresh period: `SNAPRING_DAEMON_HEARTBEAT` (`2s`, `5m`), else [`DEFAULT_PERIOD`].
pub fn period() -> Duration {
    std::env::var("SNAPRING_DAEMON_HEARTBEAT")
        .ok()
        .and_then(|v| crate::util::parse_duration(&v).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_PERIOD)
}

/// What a marker says of its daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Marker {
    pub host: String,
    pub pid: u32,
    #[serde(default)]
    pub pid_ns: String,
    #[serde(default)]
    pub boot: String,
    /// Its config file, absolute.
    pub config: String,
    /// Its catalog (`None`: off).
    pub catalog: Option<String>,
    pub started: String,
    pub refreshed: String,
    /// Its refresh period, in seconds.
    pub period_secs: u64,
}

/// A file name's characters other than these become `_` (a host name is not trusted to
/// be a file name).
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What a store's refresh found ([`Markers::refresh`]): whether this daemon's marker
/// was written, and the other daemons' fresh markers (file name, marker, age).
type Refreshed = (std::io::Result<()>, Vec<(String, Marker, Duration)>);

/// A store's answer to a refresh: the store and what it found.
type Answer = (PathBuf, Refreshed);

/// The markers of one daemon, and the other daemons it has warned about.
pub struct Markers {
    /// Its file name in each store: `<host>-<16 hex digits of blake3(config path)>.json`.
    name: String,
    body: Marker,
    period: Duration,
    /// The stores holding this daemon's marker.
    written: BTreeSet<PathBuf>,
    /// Stores whose marker could not be written (warned once).
    unwritable: BTreeSet<PathBuf>,
    /// The other daemons' fresh markers seen at the last refresh (store, file name):
    /// each is warned about when it appears, not at every refresh.
    seen: BTreeSet<(PathBuf, String)>,
    /// The stores whose refresh (or removal) is under way, each on a thread of its own:
    /// one that hangs is not asked again until it answers, and holds up no other.
    pending: Arc<Mutex<BTreeSet<PathBuf>>>,
    /// The stores' answers, also those that came after their refresh stopped waiting.
    answers: (mpsc::Sender<Answer>, mpsc::Receiver<Answer>),
}

/// How long a refresh waits for the stores to answer: a store that hangs (a
/// hard-mounted NFS export whose server is down) held up the refresh of every store
/// after it (their markers aged out: other daemons were not warned of this one).
fn refresh_wait(period: Duration) -> Duration {
    (period / 2).min(Duration::from_secs(1))
}

impl Markers {
    pub fn new(config: &Path, catalog: Option<&Path>) -> Markers {
        let config = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
        let hash = blake3::hash(config.as_os_str().as_encoded_bytes());
        let host = crate::util::hostname();
        let now = crate::util::now_rfc3339();
        let period = period();
        Markers {
            name: format!("{}-{}.json", safe(&host), &hash.to_hex()[..16]),
            body: Marker {
                host,
                pid: std::process::id(),
                pid_ns: crate::util::pid_namespace().to_string(),
                boot: crate::util::boot_id().to_string(),
                config: config.display().to_string(),
                catalog: catalog.map(|c| c.display().to_string()),
                started: now.clone(),
                refreshed: now,
                period_secs: period.as_secs().max(1),
            },
            period,
            written: BTreeSet::new(),
            unwritable: BTreeSet::new(),
            seen: BTreeSet::new(),
            pending: Arc::default(),
            answers: mpsc::channel(),
        }
    }

    /// Runs `f` on `store` on a thread of its own, unless a call on it is under way
    /// (`false` then).
    fn on_thread(&self, store: &Path, f: impl FnOnce() + Send + 'static) -> bool {
        if !self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(store.to_path_buf())
        {
            return false;
        }
        let pending = self.pending.clone();
        let done = store.to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("heartbeat-store".into())
            .spawn(move || {
                f();
                pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&done);
            });
        if let Err(e) = spawned {
            tracing::warn!(
                "cannot start a thread for the daemon's marker in {}: {e}",
                store.display()
            );
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(store);
            return false;
        }
        true
    }

    /// Writes this daemon's marker into each of `stores` that is a store (has its
    /// `.snapring/`; a store its first run has not made yet gets one at the next
    /// refresh), removes it from the stores it no longer serves, and returns a warning
    /// for each fresh marker of another daemon that was not there at the last refresh.
    /// Each store on a thread of its own, waited for [`refresh_wait`] at most: a store
    /// that has not answered keeps what it said last (and is not asked again until it
    /// answers), and holds up no other store.
    pub fn refresh(&mut self, stores: &BTreeSet<PathBuf>) -> Vec<String> {
        self.body.refreshed = crate::util::now_rfc3339();
        for gone in self.written.difference(stores).cloned().collect::<Vec<_>>() {
            self.remove_from(&gone);
        }
        let body = serde_json::to_vec_pretty(&self.body).expect("marker serializes");
        let mut asked = BTreeSet::new();
        for store in stores {
            let (tx, at, name, body) = (
                self.answers.0.clone(),
                store.clone(),
                self.name.clone(),
                body.clone(),
            );
            let period = self.period;
            if self.on_thread(store, move || {
                if let Some(found) = refresh_store(&at, &name, &body, period) {
                    let _ = tx.send((at, found));
                }
            }) {
                asked.insert(store.clone());
            }
        }
        let deadline = std::time::Instant::now() + refresh_wait(self.period);
        let mut answered = BTreeMap::new();
        // Answers of this refresh, and any that came late from an earlier one.
        while asked
            .iter()
            .any(|s| !answered.contains_key(s) && self.pending.lock().is_ok_and(|p| p.contains(s)))
        {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self
                .answers
                .1
                .recv_timeout(left.min(Duration::from_millis(50)))
            {
                Ok((store, found)) => {
                    answered.insert(store, found);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if left.is_zero() => break,
                Err(_) => {}
            }
        }
        answered.extend(self.answers.1.try_iter());
        let mut fresh = BTreeMap::new();
        // A store that has not answered: the other daemons seen there last stand.
        for (store, name) in &self.seen {
            if stores.contains(store) && !answered.contains_key(store) {
                fresh.insert((store.clone(), name.clone()), None);
            }
        }
        for (store, (wrote, others)) in answered {
            if !stores.contains(&store) {
                continue;
            }
            let ours = store
                .join(crate::store::META_DIR)
                .join(DIR)
                .join(&self.name);
            match wrote {
                Ok(()) => {
                    self.written.insert(store.clone());
                    self.unwritable.remove(&store);
                }
                Err(e) => {
                    if self.unwritable.insert(store.clone()) {
                        tracing::warn!(
                            "cannot write the daemon's marker {} ({e}): other daemons scheduling into this store are not told of this one",
                            ours.display()
                        );
                    }
                }
            }
            for (name, m, age) in others {
                fresh.insert((store.clone(), name), Some((m, age)));
            }
        }
        let mut warnings = Vec::new();
        for ((store, name), found) in &fresh {
            let Some((m, age)) = found else { continue };
            if self.seen.contains(&(store.clone(), name.clone())) {
                continue;
            }
            warnings.push(format!(
                "another snapring daemon schedules jobs into the store {store}: host {host}, config {config} (pid {pid}, catalog {catalog}, started {started}, its marker {marker} refreshed {age}s ago). Two daemons on one store: whenever their runs on it meet, the store's lock refuses one, recorded and notified failed; let one daemon schedule the jobs of a store",
                store = store.display(),
                host = m.host,
                config = m.config,
                pid = m.pid,
                catalog = m.catalog.as_deref().unwrap_or("off"),
                started = m.started,
                marker = store
                    .join(crate::store::META_DIR)
                    .join(DIR)
                    .join(name)
                    .display(),
                age = age.as_secs(),
            ));
        }
        self.seen = fresh.into_keys().collect();
        warnings
    }

    /// Removes this daemon's marker from `store`, on a thread of its own (one that
    /// hangs holds up no other store).
    fn remove_from(&mut self, store: &Path) {
        let ours = store
            .join(crate::store::META_DIR)
            .join(DIR)
            .join(&self.name);
        let asked = self.on_thread(store, move || match std::fs::remove_file(&ours) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!("cannot remove the daemon's marker {}: {e}", ours.display());
            }
            _ => {}
        });
        if !asked {
            tracing::warn!(
                "the daemon's marker in {} is left (the store does not answer): it ages out",
                store.display()
            );
        }
        self.written.remove(store);
    }

    /// Removes this daemon's markers (a clean stop), each store on a thread of its own;
    /// waits for them `wait` at most.
    pub fn remove_all(&mut self, wait: Duration) {
        for store in std::mem::take(&mut self.written) {
            self.remove_from(&store);
        }
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline
            && !self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Writes marker `body` as `name` into `store`'s `.snapring/daemons/` and lists the
/// fresh markers of other daemons there (`None`: not a store, no `.snapring/`).
fn refresh_store(store: &Path, name: &str, body: &[u8], period: Duration) -> Option<Refreshed> {
    let meta = store.join(crate::store::META_DIR);
    if !meta.is_dir() {
        return None;
    }
    let dir = meta.join(DIR);
    let ours = dir.join(name);
    let wrote = match crate::util::create_private_dir(&dir, false) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => crate::util::write_atomic(&ours, body),
    };
    // Ages are read against this refresh's own marker where it could be written: the
    // file server's clock for both, whatever this host's says.
    let reference = std::fs::metadata(&ours)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| SystemTime::now());
    Some((wrote, others(&dir, name, period, reference)))
}

/// The fresh markers of other daemons than `ours` (refreshed every `period`) in `dir`
/// (file name, marker, age against `reference`). A marker of this host and boot whose
/// pid is gone is a killed daemon's, not fresh whatever its age.
fn others(
    dir: &Path,
    ours: &str,
    period: Duration,
    reference: SystemTime,
) -> Vec<(String, Marker, Duration)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ours || !name.ends_with(".json") {
            continue;
        }
        let path = e.path();
        let Ok(text) = crate::fsx::read_regular(&path) else {
            continue;
        };
        let Ok(m) = serde_json::from_slice::<Marker>(&text) else {
            continue;
        };
        let Ok(mtime) = e.metadata().and_then(|md| md.modified()) else {
            continue;
        };
        // A marker dated after the reference (another host's clock ahead): age 0.
        let age = reference.duration_since(mtime).unwrap_or_default();
        let period = period.max(Duration::from_secs(m.period_secs));
        if age > period * FRESH_PERIODS {
            continue;
        }
        if crate::util::same_pids(&m.host, &m.pid_ns, &m.boot)
            && let Some(pid) = i32::try_from(m.pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            && rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
        {
            continue;
        }
        found.push((name, m, age));
    }
    found
}

/// What the daemon's loop tells its heartbeat thread.
#[derive(Default)]
struct Asked {
    /// The stores its scheduled jobs write now.
    stores: BTreeSet<PathBuf>,
    /// `stores` changed (start, reload): refresh now, not at the end of the period.
    changed: bool,
    stop: bool,
    /// How long the stop waits for the thread ([`Heartbeat::stop`]).
    grace: Duration,
}

/// The thread that refreshes a daemon's markers, and removes them at its stop, off the
/// scheduling loop: a store whose file system hangs (a hard-mounted NFS export whose
/// server is down) held the whole loop in the refresh (no other job's run started, a
/// SIGTERM unheeded). The loop never waits on it but for a bounded time at its stop.
pub struct Heartbeat {
    asked: Arc<(Mutex<Asked>, Condvar)>,
    warnings: mpsc::Receiver<String>,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts the thread; it refreshes `markers` in `stores` at once, then every period.
    pub fn start(mut markers: Markers, stores: BTreeSet<PathBuf>) -> Heartbeat {
        let asked = Arc::new((
            Mutex::new(Asked {
                stores,
                changed: true,
                stop: false,
                grace: Duration::ZERO,
            }),
            Condvar::new(),
        ));
        let (warn_tx, warnings) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let shared = asked.clone();
        let thread = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                let (m, cv) = &*shared;
                let grace = loop {
                    let stores = {
                        let q = m.lock().unwrap_or_else(|e| e.into_inner());
                        let (mut q, _) = cv
                            .wait_timeout_while(q, markers.period, |q| !q.stop && !q.changed)
                            .unwrap_or_else(|e| e.into_inner());
                        if q.stop {
                            break q.grace;
                        }
                        q.changed = false;
                        q.stores.clone()
                    };
                    for w in markers.refresh(&stores) {
                        tracing::warn!("{w}");
                        let _ = warn_tx.send(w);
                    }
                };
                // A refresh under way when the stop came took [`refresh_wait`] at most.
                markers.remove_all(grace / 4);
                let _ = done_tx.send(());
            })
            .expect("spawn the heartbeat thread");
        Heartbeat {
            asked,
            warnings,
            done,
            thread: Some(thread),
        }
    }

    /// The stores the daemon's jobs write after a reload: refreshed now.
    pub fn stores(&self, stores: BTreeSet<PathBuf>) {
        let (m, cv) = &*self.asked;
        let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
        q.stores = stores;
        q.changed = true;
        cv.notify_all();
    }

    /// The warnings the thread found since the last call (another daemon's fresh
    /// marker), for the catalog's events; never waits.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.try_iter().collect()
    }

    /// Stops the thread, which removes the markers: waits for it `grace` at most, then
    /// leaves it (a store that does not answer keeps a marker, which ages out).
    pub fn stop(&mut self, grace: Duration) {
        {
            let (m, cv) = &*self.asked;
            let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
            q.stop = true;
            q.grace = grace;
            cv.notify_all();
        }
        match self.done.recv_timeout(grace) {
            Ok(()) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
            Err(_) => tracing::warn!(
                "the daemon's heartbeat markers were not removed within {}s (a store does not answer): they are left, and age out",
                grace.as_secs()
            ),
        }
    }
}
