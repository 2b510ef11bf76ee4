//! One backup run, start to end: lock and repair the store, check the source, pick the
//! previous snapshot to link against, build the new snapshot in staging, flush, publish
//! it through the journal, delete expired snapshots, and write the run record. The
//! status rules of ARCHITECTURE.md live here. Does I/O through `store` and `walk`.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::options::BackupOptions;
use super::walk::{Root, Walk};
use crate::error::{Ctx, Error, Result};
use crate::fsx::{self, b};
use crate::manifest::{self, Entry};
use crate::report::{self, Counters, Phase, Phases, RunReport, Status};
use crate::store::{
    SnapRec, Snapshot, State, Store, journal::Journal, lock::Holder, rotation, trash,
};

/// A new run id: sortable by start time, unique across hosts and processes.
pub fn new_run_id() -> String {
    let now = chrono::Utc::now();
    let salt = blake3::hash(
        format!(
            "{}{}{}",
            std::process::id(),
            now.timestamp_nanos_opt().unwrap_or(0),
            report::hostname()
        )
        .as_bytes(),
    );
    format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), &salt.to_hex()[..6])
}

/// Where a dry run prints its plan.
fn plan_sink(opts: &BackupOptions) -> Box<dyn Write + Send> {
    if opts.plan_on_stderr {
        Box::new(std::io::BufWriter::new(std::io::stderr()))
    } else {
        Box::new(std::io::BufWriter::new(std::io::stdout()))
    }
}

fn wall_clock() -> crate::fsx::Time {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    crate::fsx::Time {
        sec: d.as_secs() as i64,
        nsec: d.subsec_nanos(),
    }
}

fn phase(start: &str, t0: Instant) -> Phase {
    Phase {
        start: Some(start.to_string()),
        stop: Some(report::now_rfc3339()),
        seconds: t0.elapsed().as_secs_f64(),
    }
}

/// What the layer above the engine does at two moments of a (not dry) run: the job
/// layer records the run in the catalog there. The engine knows nothing of catalogs or
/// notifiers; it only calls these.
pub trait Observer {
    /// The run has started: the store is locked and repaired, and the run's record
    /// (status `running`) is written. Warnings pushed to `rep` are kept.
    fn started(&self, _store: &Store, _rep: &mut RunReport) {}
    /// The run has ended; called before its final record is written to the store (and
    /// while its log is still open), so warnings pushed to `rep` are kept.
    fn finished(&self, _rep: &mut RunReport) {}
}

/// Observes nothing.
pub struct NoObserver;

impl Observer for NoObserver {}

/// Runs one backup. `Err` only when no run could start (bad options, the store is
/// locked or cannot be opened); every run that starts ends with a report, also written
/// to `.snapring/runs/<id>.json` (not for a dry run). `cancel` stops it gracefully
/// (status `incomplete`).
pub fn backup(opts: &BackupOptions, cancel: &AtomicBool) -> Result<RunReport> {
    backup_observed(opts, cancel, &NoObserver)
}

/// `backup`, telling `observer` when the run has started and when it has ended.
pub fn backup_observed(
    opts: &BackupOptions,
    cancel: &AtomicBool,
    observer: &dyn Observer,
) -> Result<RunReport> {
    opts.validate()?;
    let resolved;
    let opts = if opts.jobs == crate::engine::options::AUTO_JOBS {
        let jobs = crate::concurrency::resolve(0, &[&opts.source, &opts.store]);
        resolved = BackupOptions {
            jobs,
            ..opts.clone()
        };
        &resolved
    } else {
        opts
    };
    fsx::raise_fd_limit();
    let id = new_run_id();
    let t0 = Instant::now();
    if opts.dry_run && !opts.store.join(crate::store::META_DIR).is_dir() {
        // Nothing to lock or repair; plan against an empty store without creating it.
        return run_dry_without_store(opts, &id, cancel);
    }
    let store = Store::open(&opts.store, !opts.dry_run)?;
    let holder = Holder {
        pid: std::process::id(),
        host: report::hostname(),
        run: (!opts.dry_run).then(|| id.clone()),
        command: if opts.dry_run {
            "backup --dry-run".into()
        } else {
            "backup".into()
        },
        since: report::now_rfc3339(),
    };
    let lock = if opts.dry_run {
        let l = store.lock_shared()?;
        if store.needs_repair() {
            println!(
                "repair: an interrupted rotation will be rolled forward first (the plan below assumes it)"
            );
        }
        l
    } else {
        let l = store.lock(&holder)?;
        store.repair(&l, &id)?;
        l
    };
    let abs = std::fs::canonicalize(&store.root).unwrap_or_else(|_| store.root.clone());
    let mut rep = new_report(opts, &id, &abs);
    if let Ok(src) = std::fs::canonicalize(&opts.source) {
        rep.source = src;
    }
    if !opts.dry_run {
        if opts.log_file {
            let log = crate::store::log_path(&rep);
            if let Err(e) = crate::runlog::start(&log) {
                rep.warnings
                    .push(format!("cannot write the run log {}: {e}", log.display()));
            }
        }
        tracing::info!(
            run = %id, source = %rep.source.display(), store = %abs.display(), label = %opts.label,
            retain = opts.retain, jobs = opts.jobs, "backup started by snapring {} on {}", rep.version, rep.host
        );
        store.write_run(&rep)?;
        observer.started(&store, &mut rep);
    }
    let counters = Counters::default();
    let outcome = run(opts, &store, &id, &counters, cancel, &mut rep);
    conclude(&mut rep, &counters, outcome, t0);
    if !opts.dry_run {
        tracing::info!(
            status = rep.status.as_str(),
            files = rep.files_total,
            copied = rep.files_transferred,
            linked = rep.files_linked,
            bytes_copied = rep.bytes_transferred,
            errors = rep.errors,
            seconds = rep.duration_seconds,
            "backup finished: {}",
            rep.message
        );
        observer.finished(&mut rep);
        if let Err(e) = store.write_run(&rep) {
            tracing::error!("{e}");
        }
        crate::runlog::stop();
    }
    lock.release();
    Ok(rep)
}

fn new_report(opts: &BackupOptions, id: &str, store: &Path) -> RunReport {
    RunReport {
        format: report::RUN_FORMAT,
        id: id.to_string(),
        job: opts.job.clone(),
        label: opts.label.clone(),
        retain: opts.retain,
        window: opts.window.map(|w| format!("{}s", w.as_secs())),
        prefix: opts.prefix.as_ref().map(|p| p.escaped()),
        source: opts.source.clone(),
        store: store.to_path_buf(),
        host: report::hostname(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        jobs: opts.jobs,
        dry_run: opts.dry_run,
        started_at: report::now_rfc3339(),
        finished_at: None,
        duration_seconds: 0.0,
        status: Status::Running,
        exit_code: 1,
        message: String::new(),
        snapshot: None,
        based_on: None,
        expired: vec![],
        files_total: 0,
        dirs_total: 0,
        files_transferred: 0,
        files_linked: 0,
        link_fallbacks: 0,
        changed_during_backup: 0,
        errors: 0,
        bytes_total: 0,
        bytes_transferred: 0,
        source_bytes: 0,
        backup_bytes_added: 0,
        throughput_files_per_second: 0.0,
        throughput_bytes_per_second: 0.0,
        peak_rss_bytes: 0,
        phases: Phases::default(),
        problems: vec![],
        problems_not_listed: 0,
        warnings: vec![],
        notifications: vec![],
    }
}

/// `complete`, or `partial` when any entry had a problem.
fn walked_status(counters: &Counters) -> Status {
    if counters.problems_total.load(Ordering::Relaxed) > 0 {
        Status::Partial
    } else {
        Status::Complete
    }
}

/// Fills the report from the counters and the run's outcome.
fn conclude(rep: &mut RunReport, counters: &Counters, outcome: Result<Status>, t0: Instant) {
    counters.fill(rep);
    match outcome {
        Ok(status) => rep.status = status,
        Err(e) => {
            rep.status = Status::Failed;
            rep.message = e.to_string();
        }
    }
    finish_report(rep, t0);
}

fn finish_report(rep: &mut RunReport, t0: Instant) {
    let secs = t0.elapsed().as_secs_f64();
    rep.finished_at = Some(report::now_rfc3339());
    rep.duration_seconds = secs;
    rep.exit_code = rep.status.exit_code();
    let walk = rep.phases.walk_copy.seconds.max(1e-9);
    rep.throughput_files_per_second = rep.files_total as f64 / walk;
    rep.throughput_bytes_per_second = rep.bytes_transferred as f64 / walk;
    rep.peak_rss_bytes = report::peak_rss_bytes();
    if rep.message.is_empty() {
        rep.message = match rep.status {
            Status::Complete => format!(
                "{} files ({} copied, {} linked)",
                rep.files_total, rep.files_transferred, rep.files_linked
            ),
            Status::Partial => format!(
                "{} entries could not be backed up as they are; see problems",
                rep.errors
            ),
            Status::Incomplete => {
                "interrupted; nothing was published or rotated, the next run resumes".into()
            }
            _ => rep.message.clone(),
        };
    }
}

/// The source directory to back up (`source/prefix`), after the guards.
fn check_source(opts: &BackupOptions) -> Result<PathBuf> {
    let s = &opts.source;
    match std::fs::symlink_metadata(s) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::SourceMissing(s.clone()));
        }
        Err(e) => return Err(e).ctx("stat source", s),
        Ok(_) if !s.is_dir() => return Err(Error::SourceNotDir(s.clone())),
        Ok(_) => {}
    }
    if opts.require_mount && !is_mount_point(s)? {
        return Err(Error::NotMounted(s.clone()));
    }
    let root = match &opts.prefix {
        Some(p) => s.join(p.as_path()),
        None => s.clone(),
    };
    if !root.is_dir() {
        return Err(Error::SourceMissing(root));
    }
    Ok(root)
}

/// Whether `p` is a mount point, from /proc/self/mountinfo (falls back to comparing
/// devices with the parent).
pub fn is_mount_point(p: &Path) -> Result<bool> {
    let canon = std::fs::canonicalize(p).ctx("resolve", p)?;
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        let mut points = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(unescape_mountinfo);
        return Ok(points.any(|m| Path::new(&m) == canon));
    }
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata(&canon).ctx("stat", &canon)?;
    let parent = std::fs::metadata(canon.join("..")).ctx("stat", &canon)?;
    Ok(me.dev() != parent.dev() || me.ino() == parent.ino())
}

fn unescape_mountinfo(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The snapshot to link against: the newest recorded one of this label, else the newest
/// recorded of any label, else an unrecorded `<label>.0` (a taken-over rsnapshot tree),
/// else any unrecorded one.
fn pick_previous(snaps: &[Snapshot], label: &str) -> Option<Snapshot> {
    let recorded = |s: &&Snapshot| s.rec.is_some();
    snaps
        .iter()
        .filter(recorded)
        .find(|s| s.label == label)
        .or_else(|| {
            snaps.iter().filter(recorded).max_by(|a, b| {
                a.rec
                    .as_ref()
                    .map(|r| &r.finished_at)
                    .cmp(&b.rec.as_ref().map(|r| &r.finished_at))
            })
        })
        .or_else(|| snaps.iter().find(|s| s.label == label && s.slot == 0))
        .or_else(|| snaps.iter().max_by_key(|s| s.mtime))
        .cloned()
}

struct Previous {
    snap: Snapshot,
    fd: OwnedFd,
    manifest: Option<manifest::Reader>,
}

fn open_previous(store: &Store, label: &str) -> Result<Option<Previous>> {
    let snaps = store.snapshots()?;
    let Some(snap) = pick_previous(&snaps, label) else {
        return Ok(None);
    };
    let path = store.root.join(&snap.name);
    let fd = fsx::open_dir(&path).ctx("open previous snapshot", &path)?;
    let manifest = snap.rec.as_ref().and_then(|r| {
        match manifest::Reader::open(&store.meta.join("manifests"), &r.id) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(
                    "manifest of {} unusable ({e}); comparing with that snapshot by stat",
                    snap.name
                );
                None
            }
        }
    });
    Ok(Some(Previous { snap, fd, manifest }))
}

fn run(
    opts: &BackupOptions,
    store: &Store,
    id: &str,
    counters: &Counters,
    cancel: &AtomicBool,
    rep: &mut RunReport,
) -> Result<Status> {
    let src_root = check_source(opts)?;
    let src_fd = fsx::open_dir(&src_root).ctx("open source", &src_root)?;
    let src_meta = fsx::fstat(b(&src_fd)).ctx("stat source", &src_root)?;
    let prev = open_previous(store, &opts.label)?;
    rep.based_on = prev.as_ref().map(|p| {
        p.snap
            .rec
            .as_ref()
            .map(|r| r.id.clone())
            .unwrap_or_else(|| p.snap.name.clone())
    });
    if !opts.allow_empty
        && let Some(p) = &prev
        && !fsx::dir_has_entries(b(&src_fd)).ctx("read source", &src_root)?
        && fsx::dir_has_entries(b(&p.fd)).ctx("read", store.root.join(&p.snap.name))?
    {
        return Err(Error::EmptySource {
            path: src_root,
            prev: p.snap.name.clone(),
        });
    }
    let excludes = super::exclude::build(&opts.excludes)?;
    let leftovers = if opts.dry_run {
        vec![]
    } else {
        store.leftover_staging()?
    };
    let resume_fd = leftovers
        .last()
        .and_then(|n| fsx::open_dir(&store.meta.join("staging").join(n)).ok());
    if let Some(n) = leftovers.last() {
        tracing::info!("resuming from the staging tree of interrupted run {n}");
    }
    match &prev {
        Some(p) => tracing::info!(
            "unchanged files are linked from {} (run {}{})",
            p.snap.name,
            rep.based_on.as_deref().unwrap_or("-"),
            if p.manifest.is_some() {
                ""
            } else {
                ", no manifest: compared by stat"
            }
        ),
        None => tracing::info!("no previous snapshot: this is a full copy"),
    }

    // Build the new snapshot.
    let staging_name = format!("{}/staging/{id}", crate::store::META_DIR);
    let staging_path = store.root.join(&staging_name);
    let staging = if opts.dry_run {
        None
    } else {
        std::fs::create_dir(&staging_path).ctx("create staging directory", &staging_path)?;
        Some(fsx::open_dir(&staging_path).ctx("open staging directory", &staging_path)?)
    };
    let mdir = store.meta.join("manifests");
    let writer = if opts.dry_run {
        None
    } else {
        Some(Mutex::new(
            manifest::Writer::create(&mdir, id, wall_clock()).ctx("create manifest in", &mdir)?,
        ))
    };
    let plan: Option<Mutex<Box<dyn Write + Send>>> = opts
        .dry_run
        .then(|| Mutex::new(plan_sink(opts) as Box<dyn Write + Send>));

    let walk_start = report::now_rfc3339();
    let t_walk = Instant::now();
    let walk = Walk::new(
        counters,
        cancel,
        &excludes,
        prev.as_ref().and_then(|p| p.manifest.as_ref()),
        staging.as_ref(),
        writer.as_ref(),
        plan.as_ref(),
    );
    let root = Root {
        src: src_fd,
        dst: staging
            .as_ref()
            .map(|s| fsx::open_dir_at(b(s), b"."))
            .transpose()
            .ctx("open staging directory", &staging_path)?,
        prev: prev
            .as_ref()
            .map(|p| fsx::open_dir_at(b(&p.fd), b"."))
            .transpose()
            .ctx("open previous snapshot", &store.root)?,
        resume: resume_fd,
        meta: src_meta,
    };
    let (done, window_ended) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        if opts.progress {
            s.spawn(|| super::progress::show(counters, &done));
        }
        if let Some(w) = opts.window {
            let (ended, done) = (&window_ended, &done);
            s.spawn(move || super::progress::watch_window(t_walk, w, cancel, ended, done));
        }
        walk.run(root, opts.jobs);
        done.store(true, Ordering::Relaxed);
    });
    rep.phases.walk_copy = phase(&walk_start, t_walk);
    tracing::info!(
        files = counters.files_total.load(Ordering::Relaxed),
        copied = counters.files_transferred.load(Ordering::Relaxed),
        linked = counters.files_linked.load(Ordering::Relaxed),
        problems = counters.problems_total.load(Ordering::Relaxed),
        "walk finished in {:.2}s",
        rep.phases.walk_copy.seconds
    );
    let fatal = walk.fatal.lock().unwrap_or_else(|e| e.into_inner()).take();

    if let Some(e) = fatal {
        // Failed: discard the partial tree (frees the space a full disk needs back).
        if let Some(w) = writer {
            w.into_inner().unwrap_or_else(|e| e.into_inner()).abandon();
        }
        drop(staging);
        if !opts.dry_run {
            store.discard_staging(id)?;
            let _ = trash::empty(store, opts.jobs, &AtomicBool::new(false));
        }
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        if let Some(w) = writer {
            w.into_inner().unwrap_or_else(|e| e.into_inner()).abandon();
        }
        rep.message = if window_ended.load(Ordering::Relaxed) {
            "backup window ended; nothing was published or rotated, the next run resumes from staging".into()
        } else {
            "interrupted; nothing was published or rotated, the next run resumes from staging"
                .into()
        };
        return Ok(Status::Incomplete);
    }
    let status = walked_status(counters);

    // Rotation plan (printed in a dry run).
    let snaps = store.snapshots()?;
    let slots: Vec<u32> = snaps
        .iter()
        .filter(|s| s.label == opts.label)
        .map(|s| s.slot)
        .collect();
    let trash_prefix = format!("{}/trash/{id}-", crate::store::META_DIR);
    let (steps, expired) = rotation::plan(
        &opts.label,
        &slots,
        opts.retain,
        &staging_name,
        &trash_prefix,
    );
    rep.expired = expired.clone();
    if let Some(p) = &plan {
        let mut w = p.lock().unwrap_or_else(|e| e.into_inner());
        for s in &steps {
            let _ = match s.to.strip_prefix(&trash_prefix) {
                Some(name) => writeln!(w, "expire {name}"),
                None if s.from == staging_name => writeln!(w, "publish {}", s.to),
                None => writeln!(w, "rename {} -> {}", s.from, s.to),
            };
        }
        let _ = w.flush();
        return Ok(status);
    }
    let (Some(writer), Some(staging)) = (writer, staging) else {
        unreachable!("not a dry run")
    };

    let w = writer.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut root_entry = Entry::from_meta(b".", &src_meta);
    root_entry.group = None;
    w.finish(&root_entry).ctx("write manifest in", &mdir)?;
    let sync_start = report::now_rfc3339();
    let t_sync = Instant::now();
    fsx::sync_fs(b(&staging)).ctx("flush", &staging_path)?;
    rep.phases.sync = phase(&sync_start, t_sync);
    crate::failpoint::hit("backup.before_publish").ctx("publish", &staging_path)?;

    // Publish: the state after the rotation, then the journalled renames.
    let staging_ino = fsx::fstat(b(&staging)).ctx("stat", &staging_path)?.ino;
    drop(staging);
    let mut state = State {
        format: 1,
        snapshots: Vec::new(),
    };
    let finished = report::now_rfc3339();
    for s in &snaps {
        let Some(rec) = &s.rec else { continue };
        if s.label != opts.label {
            state.snapshots.push(rec.clone());
        } else if !expired.contains(&s.name) {
            state.snapshots.push(SnapRec {
                name: format!("{}.{}", s.label, s.slot + 1),
                ..rec.clone()
            });
        }
    }
    state.snapshots.insert(
        0,
        SnapRec {
            name: format!("{}.0", opts.label),
            id: id.to_string(),
            ino: staging_ino,
            finished_at: finished,
        },
    );
    let rot_start = report::now_rfc3339();
    let t_rot = Instant::now();
    let journal = Journal {
        format: 1,
        run: id.to_string(),
        status,
        steps,
        state_after: state.clone(),
    };
    store.run_journal(&journal)?;
    rep.phases.rotation = phase(&rot_start, t_rot);
    rep.snapshot = Some(format!("{}.0", opts.label));
    tracing::info!(
        "published {}.0; expired: {}",
        opts.label,
        if expired.is_empty() {
            "none".to_string()
        } else {
            expired.join(", ")
        }
    );

    // Clean-up after publishing: it can fail or be cut short without losing anything.
    for n in &leftovers {
        if let Err(e) = store.discard_staging(n) {
            tracing::warn!("{e}");
        }
    }
    remove_orphan_manifests(store, &state);
    let rm_start = report::now_rfc3339();
    let t_rm = Instant::now();
    // The backup window covers the deletion too: what it cuts off stays in trash and
    // the next run goes on with it after publishing (it never delays a backup).
    let left = opts.window.map(|w| w.saturating_sub(t_walk.elapsed()));
    if left == Some(Duration::ZERO) {
        tracing::warn!(
            "backup window ended before expired snapshots could be deleted; the next run continues"
        );
    } else {
        // The run's own cancel flag stops the deletion, whether a signal or the window
        // sets it; the status is settled already, so it cuts only this clean-up.
        let (done_rm, ended) = (AtomicBool::new(false), AtomicBool::new(false));
        std::thread::scope(|s| {
            if let Some(l) = left {
                let (ended, done_rm) = (&ended, &done_rm);
                s.spawn(move || super::progress::watch_window(t_rm, l, cancel, ended, done_rm));
            }
            let r = trash::empty(store, opts.jobs, cancel);
            done_rm.store(true, Ordering::Relaxed);
            if let Err(e) = r {
                tracing::warn!(
                    "expired snapshots not fully deleted yet ({e}); the next run continues"
                );
            } else if ended.load(Ordering::Relaxed) {
                tracing::warn!(
                    "backup window ended while deleting expired snapshots; the next run continues"
                );
            }
        });
    }
    rep.phases.remove_expired = phase(&rm_start, t_rm);
    Ok(status)
}

/// Deletes manifests whose snapshot no longer exists.
fn remove_orphan_manifests(store: &Store, state: &State) {
    let dir = store.meta.join("manifests");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let id = name.split('.').next().unwrap_or("");
        if !state.snapshots.iter().any(|s| s.id == id) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A dry run against a store that does not exist yet: everything would be copied.
fn run_dry_without_store(opts: &BackupOptions, id: &str, cancel: &AtomicBool) -> Result<RunReport> {
    let t0 = Instant::now();
    let mut rep = new_report(opts, id, &opts.store);
    let counters = Counters::default();
    let r = (|| {
        let src_root = check_source(opts)?;
        let src_fd = fsx::open_dir(&src_root).ctx("open source", &src_root)?;
        let meta = fsx::fstat(b(&src_fd)).ctx("stat source", &src_root)?;
        let excludes = super::exclude::build(&opts.excludes)?;
        let plan: Mutex<Box<dyn Write + Send>> = Mutex::new(plan_sink(opts));
        let walk = Walk::new(&counters, cancel, &excludes, None, None, None, Some(&plan));
        walk.run(
            Root {
                src: src_fd,
                dst: None,
                prev: None,
                resume: None,
                meta,
            },
            opts.jobs,
        );
        let mut w = plan.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(w, "publish {}.0", opts.label);
        let _ = w.flush();
        Ok::<_, Error>(walked_status(&counters))
    })();
    conclude(&mut rep, &counters, r, t0);
    Ok(rep)
}
