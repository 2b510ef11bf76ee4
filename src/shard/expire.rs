//! Expiry of old snapshots shared between a shard run's workers. Finalize publishes the
//! run first (the expired snapshots are then `.snapring/trash/<run-id>-<name>`), then
//! writes the marker `expiring` in the run's directory, naming them, before `finalized`.
//! Every worker still alive (those waiting for the end of the run) and the finalizer
//! itself then claim **pieces**: one per unit of the plan, the names that unit covers in
//! its directory of each expired snapshot (an expired snapshot has, roughly, the shape
//! of the source the plan cut), the worker's home units first, then the others, largest
//! first. A claim is the exclusive create of `expiry/claims/<unit>` (its mtime is the
//! lease, renewed while the piece is deleted); the claimer moves the piece's names out of
//! trash into `.snapring/expiring/<run-id>.<unit>/<trash name>/` (one `rename` each),
//! deletes that directory with the store's parallel walker (`store::trash::remove`) and
//! writes `expiry/done/<unit>` with what it removed. The finalizer, once no unit is left
//! to claim, takes over the pieces of claimers that died or whose lease lapsed, waits
//! for the live ones, deletes what is left in trash (the spine directories, leftovers
//! of earlier runs), and writes `expiry/finished`. A finalizer that dies meanwhile is
//! followed by `snapring finalize`, which does the same, or by the next run.
//!
//! Only this run's trash entries and the claim directories are touched, never a
//! published snapshot (paths below a trash entry are opened without following symlinks).
//! A piece left by a killed worker is deleted by the next run's emptying of trash
//! (`trash::empty` covers `.snapring/expiring/`). Does file I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::plan::{Cut, Unit};
use super::state::{Holder, RunDir, create_exclusive, touch};
use crate::error::{Ctx, Result, io_error};
use crate::fsx::{self, b};
use crate::store::{Store, trash};

/// `expiring`: the trash entries of the run's expired snapshots.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Marker {
    pub trash: Vec<String>,
    pub at: String,
}

/// `expiry/claims/<unit>`: who deletes a piece; the file's mtime is its lease.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PieceClaim {
    /// The worker's index; none for `snapring finalize`.
    pub worker: Option<usize>,
    pub host: String,
    pub pid: u32,
    pub at: String,
    /// Its pid namespace and boot (as a unit claim's [`Holder`]); absent in claims
    /// written before them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pid_ns: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
}

/// `expiry/done/<unit>`: a piece deleted.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PieceDone {
    /// Who deleted it: the claimer's index; none for `snapring finalize` and for a piece
    /// the finalizer took over from a claimer that died or stalled.
    pub worker: Option<usize>,
    pub entries: u64,
    pub seconds: f64,
    pub taken_over: bool,
    /// The first error, if some entries could not be removed (the next run goes on).
    #[serde(default)]
    pub error: Option<String>,
}

/// What one process deleted in its pieces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Helped {
    pub pieces: usize,
    pub entries: u64,
}

/// The expiry's state, from the run's files.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// `none` (nothing expired, or expiry not opened yet), `open`, `finished`.
    pub state: &'static str,
    /// Pieces deleted per worker index (taken-over pieces not included).
    pub per_worker: BTreeMap<usize, Helped>,
    /// Pieces deleted by `snapring finalize` or taken over by the finalizer.
    pub by_finalize: Helped,
    /// Pieces claimed, and of those deleted.
    pub claimed: usize,
    pub done: usize,
}

fn marker_path(rd: &RunDir) -> PathBuf {
    rd.root.join("expiring")
}
fn claims_dir(rd: &RunDir) -> PathBuf {
    rd.root.join("expiry").join("claims")
}
fn done_dir(rd: &RunDir) -> PathBuf {
    rd.root.join("expiry").join("done")
}
fn finished_path(rd: &RunDir) -> PathBuf {
    rd.root.join("expiry").join("finished")
}
/// Where a claimed piece is moved to and deleted from.
fn piece_dir(store: &Store, rd: &RunDir, unit: &str) -> PathBuf {
    store
        .meta
        .join(trash::EXPIRING)
        .join(format!("{}.{unit}", rd.run))
}

/// The marker, if written and readable.
pub fn read_marker(rd: &RunDir) -> Option<Marker> {
    serde_json::from_slice(&std::fs::read(marker_path(rd)).ok()?).ok()
}

pub fn is_finished(rd: &RunDir) -> bool {
    finished_path(rd).exists()
}

fn make_dirs(store: &Store, rd: &RunDir) -> Result<()> {
    for p in [
        claims_dir(rd),
        done_dir(rd),
        store.meta.join(trash::EXPIRING),
    ] {
        crate::util::create_private_dir(&p, true)
            .or_else(|e| if p.is_dir() { Ok(()) } else { Err(e) })
            .ctx("create", &p)?;
    }
    Ok(())
}

/// Opens the expiry of `expired` (the snapshot names the publish moved to trash), by
/// the finalizer after the publish and before `finalized`: writes the marker naming
/// those of their trash entries that exist. The marker of an earlier attempt counts.
pub fn open(store: &Store, rd: &RunDir, expired: &[String]) -> Result<Option<Marker>> {
    if let Some(m) = read_marker(rd) {
        return Ok(Some(m));
    }
    let trash: Vec<String> = expired
        .iter()
        .map(|n| format!("{}-{n}", rd.run))
        .filter(|t| store.meta.join("trash").join(t).is_dir())
        .collect();
    if trash.is_empty() {
        return Ok(None);
    }
    make_dirs(store, rd)?;
    let m = Marker {
        trash,
        at: crate::util::now_rfc3339(),
    };
    let bytes = serde_json::to_vec_pretty(&m).expect("marker serializes");
    create_exclusive(&marker_path(rd), &bytes).ctx("write", marker_path(rd))?;
    Ok(read_marker(rd))
}

/// The units in the order worker `me` claims their pieces: its home set (largest
/// first), then the others (largest first); all largest first for `snapring finalize`.
fn order(cut: &Cut, me: Option<usize>) -> Vec<&Unit> {
    let mut v: Vec<&Unit> = match me {
        Some(i) => cut.home(i),
        None => Vec::new(),
    };
    let mut others: Vec<&Unit> = cut.units.iter().filter(|u| Some(u.home) != me).collect();
    others.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.id.cmp(&b.id)));
    v.extend(others);
    v
}

fn names_in(dir: &Path) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).ctx("read", dir),
    };
    for e in rd {
        let n = e
            .ctx("read", dir)?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if !n.starts_with('.') {
            out.insert(n);
        }
    }
    Ok(out)
}

/// Pieces one process deletes at once, at most: each piece's walk thins out at its end
/// (a last deep directory), and the next piece's fills those threads. One piece at a
/// time made the finalizer alone 1.25x slower than the single walk it replaced.
const PIECES_AT_ONCE: usize = 4;

/// Claims and deletes pieces until none is left to claim, the finalizer has finished,
/// or `cancel` is set: worker `me` (none for `snapring finalize`), up to
/// [`PIECES_AT_ONCE`] pieces at a time, `jobs` deletions in flight in all. Does nothing
/// when expiry is not open.
pub fn help(
    store: &Store,
    rd: &RunDir,
    cut: &Cut,
    me: Option<usize>,
    jobs: usize,
    cancel: &AtomicBool,
) -> Result<Helped> {
    let Some(marker) = read_marker(rd) else {
        return Ok(Helped::default());
    };
    if is_finished(rd) {
        return Ok(Helped::default());
    }
    make_dirs(store, rd)?;
    let t0 = Instant::now();
    let lanes = PIECES_AT_ONCE.min(jobs.max(1));
    let per_lane = (jobs.max(1) / lanes).max(1);
    let results: Vec<Result<Helped>> = std::thread::scope(|s| {
        let lanes: Vec<_> = (0..lanes)
            .map(|_| s.spawn(|| lane(store, rd, cut, me, &marker, per_lane, cancel)))
            .collect();
        lanes
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut out = Helped::default();
    let mut first_error = None;
    for r in results {
        match r {
            Ok(h) => {
                out.pieces += h.pieces;
                out.entries += h.entries;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if out.pieces > 0 {
        tracing::info!(
            "expiry: {} pieces of the expired snapshots deleted ({} entries) in {:.2}s",
            out.pieces,
            out.entries,
            t0.elapsed().as_secs_f64()
        );
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// One of [`help`]'s lanes: claims the next unclaimed piece in this worker's order and
/// deletes it with `jobs` threads, until none is left. Lanes of one process, like
/// processes, meet only at the exclusive create of a claim.
fn lane(
    store: &Store,
    rd: &RunDir,
    cut: &Cut,
    me: Option<usize>,
    marker: &Marker,
    jobs: usize,
    cancel: &AtomicBool,
) -> Result<Helped> {
    let mut out = Helped::default();
    let lease = super::state::lease();
    let mut claimed = names_in(&claims_dir(rd))?;
    for u in order(cut, me) {
        if cancel.load(Ordering::Relaxed) || is_finished(rd) {
            break;
        }
        if claimed.contains(&u.id) {
            continue;
        }
        let path = claims_dir(rd).join(&u.id);
        let c = PieceClaim {
            worker: me,
            host: crate::util::hostname(),
            pid: std::process::id(),
            at: crate::util::now_rfc3339(),
            pid_ns: crate::util::pid_namespace().to_string(),
            boot_id: crate::util::boot_id().to_string(),
        };
        let won = create_exclusive(&path, &serde_json::to_vec(&c).expect("claim serializes"))
            .ctx("claim", &path)?;
        if won {
            let t = Instant::now();
            let (n, err) = renewing(&path, lease, || {
                piece(store, rd, marker, cut, u, jobs, cancel)
            });
            if let Some(e) = &err {
                tracing::warn!(
                    "expired piece {} not fully deleted ({e}); the next run continues",
                    u.id
                );
            }
            if cancel.load(Ordering::Relaxed) {
                // Left claimed: the finalizer takes it over once this process is gone.
                break;
            }
            let done = PieceDone {
                worker: me,
                entries: n,
                seconds: t.elapsed().as_secs_f64(),
                taken_over: false,
                error: err.map(|e| e.to_string()),
            };
            write_done(rd, &u.id, &done)?;
            out.pieces += 1;
            out.entries += n;
        }
        claimed = names_in(&claims_dir(rd))?;
    }
    Ok(out)
}

fn write_done(rd: &RunDir, unit: &str, d: &PieceDone) -> Result<()> {
    let p = done_dir(rd).join(unit);
    crate::util::write_atomic(&p, &serde_json::to_vec(d).expect("serializes")).ctx("write", &p)
}

/// Runs `f` while a thread renews the lease of the claim at `path` (woken at once when
/// `f` returns, so a small piece costs no wait).
fn renewing<T>(path: &Path, lease: Duration, f: impl FnOnce() -> T) -> T {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            let every = (lease / 3).max(Duration::from_millis(50));
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every)
            {
                if let Err(e) = touch(path) {
                    tracing::warn!("cannot renew the lease of {}: {e}", path.display());
                }
            }
        });
        let r = f();
        drop(stop);
        r
    })
}

/// Moves unit `u`'s piece of each expired snapshot into its claim directory and
/// deletes it. Returns the entries of the expired snapshots removed (not the claim's own
/// directories) and the first error (an entry that could not be moved stays in trash for
/// the finalizer's sweep).
fn piece(
    store: &Store,
    rd: &RunDir,
    marker: &Marker,
    cut: &Cut,
    u: &Unit,
    jobs: usize,
    cancel: &AtomicBool,
) -> (u64, Option<crate::error::Error>) {
    let dst = piece_dir(store, rd, &u.id);
    // Not counted: the claim's directory and its directory per expired snapshot.
    let mut made = 0;
    let own = |n: u64, made: u64| n.saturating_sub(made);
    if let Err(e) = gather(store, marker, cut, u, &dst, &mut made) {
        // Whatever was moved is deleted still.
        let n = trash::remove(&dst, jobs, cancel).unwrap_or(0);
        return (own(n, made), Some(e));
    }
    if let Err(e) = crate::failpoint::hit("shard.expire_piece") {
        return (0, Some(io_error(e, "delete", &dst)));
    }
    if !dst.exists() {
        return (0, None);
    }
    match trash::remove(&dst, jobs, cancel) {
        Ok(n) => (own(n, made), None),
        Err(e) => (0, Some(e)),
    }
}

/// The renames of a piece: `trash/<t>/<unit dir>/<name>` to `<dst>/<t>/<name>`;
/// `made` counts the directories it makes.
fn gather(
    store: &Store,
    marker: &Marker,
    cut: &Cut,
    u: &Unit,
    dst: &Path,
    made: &mut u64,
) -> Result<()> {
    let trash = store.meta.join("trash");
    let trash_fd = fsx::open_dir(&trash).ctx("open", &trash)?;
    let kids = cut.spine_children(&u.dir);
    let mut dst_fd: Option<OwnedFd> = None;
    for t in &marker.trash {
        // The marker names plain entries of trash; anything else is not ours.
        if t.is_empty() || t.starts_with('.') || t.contains('/') {
            continue;
        }
        let top = match fsx::open_dir_at(b(&trash_fd), t.as_bytes()) {
            Ok(fd) => fd,
            Err(e) if fsx::errno_is(&e, Errno::NOENT) => continue,
            Err(e) => return Err(io_error(e, "open", trash.join(t))),
        };
        // Gone from that snapshot, or not a directory there: nothing of this unit.
        let Ok(dir) = fsx::open_dir_beneath(b(&top), u.dir.as_bytes()) else {
            continue;
        };
        let at = trash.join(t).join(u.dir.as_path());
        let names: Vec<Vec<u8>> = fsx::read_dir_names(b(&dir))
            .ctx("read", &at)?
            .into_iter()
            .filter(|n| u.covers(n) && !kids.contains(n))
            .collect();
        if names.is_empty() {
            continue;
        }
        let root = match &dst_fd {
            Some(fd) => fd,
            None => {
                match crate::util::create_private_dir(dst, false) {
                    Ok(()) => *made += 1,
                    Err(_) if dst.is_dir() => {}
                    Err(e) => return Err(e).ctx("create", dst),
                }
                dst_fd.insert(fsx::open_dir(dst).ctx("open", dst)?)
            }
        };
        match fsx::mkdir_at(b(root), t.as_bytes()) {
            Ok(()) => *made += 1,
            Err(e) if fsx::errno_is(&e, Errno::EXIST) => {}
            Err(e) => return Err(io_error(e, "create", dst.join(t))),
        }
        let to = fsx::open_dir_at(b(root), t.as_bytes()).ctx("open", dst.join(t))?;
        for n in &names {
            match move_out(&dir, n, &to) {
                Ok(()) => {}
                // Deleted by another process meanwhile.
                Err(e) if fsx::errno_is(&e, Errno::NOENT) => {}
                Err(e) => {
                    let p = at.join(String::from_utf8_lossy(n).as_ref());
                    tracing::warn!(
                        "cannot move {} out of trash ({e}); finalize deletes it in place",
                        p.display()
                    );
                }
            }
        }
    }
    Ok(())
}

/// Renames `name` from `from` to `to`. Snapshots keep the source's modes: a read-only
/// directory is made writable first (the parent, to remove the name; a directory
/// itself, whose `..` a move to another parent rewrites).
fn move_out(from: &OwnedFd, name: &[u8], to: &OwnedFd) -> std::io::Result<()> {
    let mv = || fsx::rename_noreplace(b(from), name, b(to), name);
    match mv() {
        Err(e) if fsx::errno_is(&e, Errno::ACCESS) => {
            trash::make_writable(from)?;
            match mv() {
                Err(e) if fsx::errno_is(&e, Errno::ACCESS) => {
                    let d = fsx::open_dir_at(b(from), name)?;
                    trash::make_writable(&d)?;
                    mv()
                }
                r => r,
            }
        }
        r => r,
    }
}

/// The finalizer's part, after the publish, under the store's exclusive lock: opens
/// the expiry of `expired`, claims pieces like a worker (`me`), takes over the pieces of
/// claimers that died or stalled and waits for the live ones, deletes what is left in
/// trash and the leftovers of earlier runs, then marks the expiry finished. Returns the
/// entries the sweep removed; the pieces are in `expiry/done/` ([`tally`]).
pub fn finalize(
    store: &Store,
    rd: &RunDir,
    cut: &Cut,
    me: Option<usize>,
    expired: &[String],
    jobs: usize,
    cancel: &AtomicBool,
) -> Result<u64> {
    let opened = open(store, rd, expired)?.is_some();
    let mut first_error = None;
    if opened {
        if let Err(e) = help(store, rd, cut, me, jobs, cancel) {
            first_error = Some(e);
        }
        if let Err(e) = settle(store, rd, jobs, cancel) {
            first_error.get_or_insert(e);
        }
    }
    // What no piece took (the spine directories, names a claimer could not move or did
    // not reach before it died), and leftovers of earlier runs.
    let keep = format!("{}.", rd.run);
    let swept = match trash::empty_except(store, Some(&keep), jobs, cancel) {
        Ok(n) => n,
        Err(e) => {
            first_error.get_or_insert(e);
            0
        }
    };
    if opened && !cancel.load(Ordering::Relaxed) {
        let p = finished_path(rd);
        create_exclusive(&p, crate::util::now_rfc3339().as_bytes()).ctx("write", &p)?;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(swept),
    }
}

/// Waits until every claimed piece is deleted: a claimer of this host that died, or
/// one whose lease lapsed, has its piece taken over (deleted here).
fn settle(store: &Store, rd: &RunDir, jobs: usize, cancel: &AtomicBool) -> Result<()> {
    let lease = super::state::lease();
    // The pieces' claims are touched by the store's clock (`state::touch`): judged by it.
    let clock = super::state::StoreClock::new(claims_dir(rd), lease);
    let mut said = false;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        let done = names_in(&done_dir(rd))?;
        let mut live = 0;
        for u in names_in(&claims_dir(rd))?.difference(&done) {
            let p = claims_dir(rd).join(u);
            let renewed = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            let claim: Option<PieceClaim> = std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let lapsed =
                renewed.is_none_or(|r| clock.now().duration_since(r).is_ok_and(|d| d > lease));
            let dead = claim.as_ref().is_some_and(|c| {
                Holder {
                    worker: 0,
                    host: c.host.clone(),
                    pid: c.pid,
                    at: String::new(),
                    nonce: String::new(),
                    pid_ns: c.pid_ns.clone(),
                    boot_id: c.boot_id.clone(),
                }
                .is_dead_here()
            });
            if !(lapsed || dead) {
                live += 1;
                continue;
            }
            let t = Instant::now();
            let dir = piece_dir(store, rd, u);
            // Not counted: the claim's directory and its directory per expired snapshot.
            let made = names_in(&dir).map_or(0, |s| 1 + s.len() as u64);
            let (n, err) = match trash::remove(&dir, jobs, cancel) {
                Ok(n) => (n.saturating_sub(made), None),
                Err(e) => (0, Some(e.to_string())),
            };
            tracing::info!(
                "expiry: piece {u} of a claimer that {} taken over ({n} entries)",
                if dead { "died" } else { "stalled" }
            );
            write_done(
                rd,
                u,
                &PieceDone {
                    worker: None,
                    entries: n,
                    seconds: t.elapsed().as_secs_f64(),
                    taken_over: true,
                    error: err,
                },
            )?;
        }
        if live == 0 {
            return Ok(());
        }
        if !said {
            tracing::info!("expiry: waiting for {live} pieces other workers are deleting");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the run's files say of its expiry.
pub fn tally(rd: &RunDir) -> Tally {
    let mut t = Tally {
        state: if is_finished(rd) {
            "finished"
        } else if marker_path(rd).exists() {
            "open"
        } else {
            "none"
        },
        ..Tally::default()
    };
    t.claimed = names_in(&claims_dir(rd)).map(|s| s.len()).unwrap_or(0);
    for u in names_in(&done_dir(rd)).unwrap_or_default() {
        let Some(d) = std::fs::read(done_dir(rd).join(&u))
            .ok()
            .and_then(|b| serde_json::from_slice::<PieceDone>(&b).ok())
        else {
            continue;
        };
        t.done += 1;
        let h = match (d.worker, d.taken_over) {
            (Some(i), false) => t.per_worker.entry(i).or_default(),
            _ => &mut t.by_finalize,
        };
        h.pieces += 1;
        h.entries += d.entries;
    }
    t
}
