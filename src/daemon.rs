//! `snapring daemon`: runs every scheduled job of a config file at its times. Each run
//! is a child process (`snapring run JOB`), so runs keep their own logs, signals and
//! crashes apart from the scheduler. One run per job at a time: a trigger that comes
//! while the job still runs is skipped and recorded. SIGHUP reloads the config (a bad
//! one is reported and the old one kept); SIGTERM/SIGINT stop it: running backups are
//! sent SIGTERM, reach a safe point, record themselves `incomplete`, and the daemon
//! waits for them before it exits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::catalog::Catalog;
use crate::config::{self, Config, Missed};
use crate::schedule::Schedule;

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
}

/// What the daemon did, for tests and the final log line.
#[derive(Default, Debug, Clone)]
pub struct Summary {
    pub started: u64,
    pub skipped: u64,
    pub reloads: u64,
}

struct State<'a> {
    opts: &'a DaemonOptions,
    /// The running configuration's text, as loaded at start or by the last good reload.
    text: String,
    /// The same, parsed: the notifiers told when a run dies ([`State::died`]).
    cfg: Config,
    jobs: BTreeMap<String, Job>,
    running: BTreeMap<String, Child>,
    /// When each running child was started: a dead child's run is a catalog row of
    /// its job started since ([`State::died`]).
    spawned: BTreeMap<String, DateTime<Utc>>,
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

    fn event(&self, job: Option<&str>, kind: &str, message: &str) {
        if let Some(mut c) = self.catalog()
            && let Err(e) = c.event(job, kind, message)
        {
            tracing::error!("{e}");
        }
    }

    /// Sets each job's next time. At start-up, `Missed::RunOnce` makes a job due now
    /// whose last scheduled time passed without a run (the daemon was down), or whose
    /// newest run was interrupted (stopped by a signal, or killed, with the daemon or
    /// the machine): it resumes from that run's staging. A run its window cut short
    /// waits for its next time, as it would had the daemon kept running.
    fn plan(&mut self, now: DateTime<Utc>, startup: bool) {
        let mut cat = self.catalog();
        if startup && let Some(c) = cat.as_mut() {
            // A run that died with the daemon is `running` until settled.
            crate::catalog::settle_running(c);
        }
        let mut resumed = Vec::new();
        for (name, j) in self.jobs.iter_mut() {
            j.next = j.schedule.next_after(now);
            if !startup || j.missed != Missed::RunOnce {
                continue;
            }
            let Some(prev) = j.schedule.previous_at_or_before(now) else {
                continue;
            };
            let last = cat.as_ref().and_then(|c| c.last_start(name).ok().flatten());
            // Only a job with history can have missed a run; a new job waits.
            if let Some(last) = last
                && crate::store::select::parse_time(&last).is_some_and(|l| l < prev)
            {
                tracing::warn!(
                    "job {name}: its run due at {} was missed while the daemon was down; running it now",
                    prev.to_rfc3339()
                );
                j.next = Some(now);
                continue;
            }
            if let Some((id, status, message)) = cat
                .as_ref()
                .and_then(|c| c.newest_backup(name).ok().flatten())
                && status == crate::report::Status::Incomplete.as_str()
                && message.starts_with("interrupted")
            {
                let msg = format!("its last run {id} was interrupted ({message}); resuming it now");
                tracing::warn!("job {name}: {msg}");
                resumed.push((name.clone(), msg));
                j.next = Some(now);
            }
        }
        for (name, msg) in resumed {
            self.event(Some(&name), "resumed", &msg);
        }
        for (name, j) in &self.jobs {
            match j.next {
                Some(n) => tracing::info!("job {name}: next run at {}", n.to_rfc3339()),
                None => {
                    let msg = "its schedule has no time left (its last is past): it will not run";
                    tracing::warn!("job {name}: {msg}");
                    self.event(Some(name), "error", msg);
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

    fn spawn(&mut self, name: &str) {
        // The child's stdin (dup2'd to fd 0, so inherited while close-on-exec here).
        let (held, config) = self.running_config();
        let mut c = Command::new(&self.opts.exe);
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
        c.arg("run")
            .arg("--config")
            .arg(&config)
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
                self.running.insert(name.to_string(), child);
                self.spawned.insert(name.to_string(), Utc::now());
            }
            Err(e) => {
                let msg = format!("cannot start {}: {e}", self.opts.exe.display());
                tracing::error!("job {name}: {msg}");
                self.event(Some(name), "error", &msg);
            }
        }
    }

    fn reap(&mut self) {
        let done: Vec<(String, Option<std::process::ExitStatus>)> = self
            .running
            .iter_mut()
            .filter_map(|(n, c)| match c.try_wait() {
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
        for (n, st) in done {
            self.running.remove(&n);
            if let Some(why) = st.and_then(abnormal) {
                self.died(&n, &why);
            }
            self.spawned.remove(&n);
        }
    }

    /// A run of job `name` whose process ended before it could record and notify
    /// itself (`why`): its catalog row and record are settled now, as the next command
    /// would settle them, and its notifiers told (a failure always notifies). It stayed
    /// `running`, unnotified, with nothing in the daemon's log at its default level.
    fn died(&self, name: &str, why: &str) {
        let msg = format!("its run's process {why}, before it recorded its end");
        tracing::error!("job {name}: {msg}");
        self.event(Some(name), "error", &msg);
        // The job's newest run, once settled (`incomplete`), with its record: the dead
        // child's, if it got as far as its row (else an older run's, not told again).
        let since = self.spawned.get(name).copied();
        let settled = self.catalog().and_then(|mut c| {
            crate::catalog::settle_running(&mut c);
            let row = c.recent(name, 1).ok()?.into_iter().next()?;
            let started = crate::store::select::parse_time(&row.started_at)?;
            if since.is_some_and(|s| started < s - chrono::Duration::seconds(1)) {
                return None;
            }
            let store = crate::store::Store::open(Path::new(&row.store), false).ok()?;
            store.read_run(&row.id).ok().flatten()
        });
        let Some(job) = self.cfg.job.get(name) else {
            return;
        };
        let notifiers = crate::job::notifiers(&self.cfg, job);
        if notifiers.is_empty() {
            return;
        }
        let notice = match settled {
            Some(mut r) if r.status != crate::report::Status::Complete => {
                r.message = format!("{msg}; {}", r.message);
                crate::notify::Notice::backup(&r)
            }
            _ => crate::notify::Notice {
                id: String::new(),
                job: Some(name.to_string()),
                status: crate::report::Status::Failed,
                subject: format!("snapring: job {name}: run failed"),
                text: format!("job {name}: {msg}\n"),
                log: PathBuf::new(),
                report: serde_json::json!({
                    "job": name,
                    "status": "failed",
                    "message": msg,
                }),
            },
        };
        for o in crate::notify::send_notice(&notifiers, &notice) {
            if !o.ok {
                tracing::error!(
                    "job {name}: notifier {}: {}",
                    o.notifier,
                    o.error.unwrap_or_default()
                );
            }
        }
    }

    fn due(&mut self, now: DateTime<Utc>) {
        let due: Vec<(String, DateTime<Utc>)> = self
            .jobs
            .iter()
            .filter_map(|(n, j)| j.next.filter(|t| *t <= now).map(|t| (n.clone(), t)))
            .collect();
        for (name, at) in due {
            if self.running.contains_key(&name) {
                let msg = format!(
                    "trigger at {} skipped: the previous run is still going",
                    at.to_rfc3339()
                );
                tracing::warn!("job {name}: {msg}");
                self.summary.skipped += 1;
                self.event(Some(&name), "skipped", &msg);
            } else {
                self.spawn(&name);
            }
            let j = self.jobs.get_mut(&name).expect("listed above");
            j.next = j.schedule.next_after(now.max(at));
        }
    }

    /// Sends SIGTERM to every running backup and waits for them to record themselves.
    fn stop_children(&mut self) {
        for (n, c) in &self.running {
            tracing::warn!(
                "job {n}: stopping the running backup (it ends incomplete and resumes next time)"
            );
            if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        for (n, mut c) in std::mem::take(&mut self.running) {
            match c.wait() {
                Ok(st) => {
                    tracing::info!("job {n}: run ended ({st})");
                    if let Some(why) = abnormal(st) {
                        self.died(&n, &why);
                    }
                }
                Err(e) => tracing::error!("job {n}: {e}"),
            }
        }
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

/// Runs until `stop` is set; `reload` asks for the config to be read again.
pub fn run(
    opts: &DaemonOptions,
    stop: &AtomicBool,
    reload: &AtomicBool,
) -> Result<Summary, String> {
    let (cfg, text, jobs) = load(&opts.config)?;
    let mut st = State {
        opts,
        text,
        cfg,
        jobs,
        running: BTreeMap::new(),
        spawned: BTreeMap::new(),
        summary: Summary::default(),
    };
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
    while !stop.load(Ordering::Relaxed) {
        if reload.swap(false, Ordering::Relaxed) {
            match load(&opts.config) {
                Ok((cfg, text, jobs)) => {
                    st.text = text;
                    st.cfg = cfg;
                    let before = std::mem::replace(&mut st.jobs, jobs);
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
        st.due(Utc::now());
        std::thread::sleep(opts.tick);
    }
    st.stop_children();
    st.event(None, "stop", "daemon stopped");
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
}
