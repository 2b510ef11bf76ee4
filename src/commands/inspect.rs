//! `snapring diff`, `verify` and `history` (of one path): read-only views of a store.
//! They take no lock and never repair or write: a backup may run meanwhile (its
//! rotation only renames, and the snapshots read here are held open by descriptor).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde::Serialize;

use crate::compare::{self, Difference, OneFsSummary, Options, Totals};
use crate::error::{Ctx, Error, Result};
use crate::fsx::{self, Kind, b};
use crate::manifest::{self, Entry};
use crate::relpath::RelPath;
use crate::same::{Delta, Facts};
use crate::snapshot::TreeReader;
use crate::store::Store;
use crate::store::select::Selected;

#[derive(Serialize, Debug)]
pub struct DiffReport {
    /// The old side: a snapshot name.
    pub from: String,
    /// The new side: a snapshot name, or the live directory's path.
    pub to: String,
    pub added: u64,
    pub removed: u64,
    pub content_changed: u64,
    pub metadata_changed: u64,
    pub differences: Vec<Difference>,
    pub totals: Totals,
    pub problems: Vec<(String, String)>,
    /// `--against` only: whether the compare stayed on `DIR`'s file system, and the
    /// mount points whose contents it did not compare.
    #[serde(flatten)]
    pub one_fs: OneFsSummary,
    /// Directories whose contents were not compared because a snapshot's manifest
    /// does not read there (cut short, overwritten), and why: neither added nor
    /// removed, unknown.
    pub not_compared: Vec<(String, String)>,
    /// The damaged manifest files (`.snapring/manifests/<run-id>.mf`).
    pub damaged_manifests: Vec<String>,
    /// Stopped by SIGINT/SIGTERM/SIGHUP before the compare was done: the differences
    /// are those found so far, and what was not reached is not compared (neither same
    /// nor different).
    pub interrupted: bool,
}

fn report(from: String, to: String, o: compare::Outcome, cancel: &AtomicBool) -> DiffReport {
    let n = |c| o.differences.iter().filter(|d| d.change == c).count() as u64;
    DiffReport {
        from,
        to,
        added: n(compare::Change::Added),
        removed: n(compare::Change::Removed),
        content_changed: n(compare::Change::Content),
        metadata_changed: n(compare::Change::Metadata),
        differences: o.differences,
        totals: o.totals,
        problems: o.problems,
        one_fs: o.one_fs,
        not_compared: o.not_compared,
        damaged_manifests: o.damaged_manifests,
        interrupted: stopped(cancel),
    }
}

/// Whether a signal stopped the command (the compare it cut short returned early).
fn stopped(cancel: &AtomicBool) -> bool {
    cancel.load(std::sync::atomic::Ordering::Relaxed)
}

/// `diff OLD NEW` between two snapshots, or `diff OLD --against DIR` with a live tree.
/// Against a live tree, the compare stays on `DIR`'s file system when `one_file_system`
/// is asked for or the snapshot's run was made with it ([`stays_on_one_fs`]).
pub fn diff(
    store: &Path,
    old: &str,
    new: Option<&str>,
    against: Option<&Path>,
    one_file_system: bool,
    jobs: usize,
    cancel: &AtomicBool,
) -> Result<DiffReport> {
    let store = Store::open_read(store)?;
    let a = store.select(old)?;
    let mut paths = vec![store.root.as_path()];
    paths.extend(against);
    let mut opts = Options {
        checksum: false,
        dir_times: false,
        jobs: crate::concurrency::resolve(jobs, &paths),
        stay_on: None,
        excludes: None,
        owners: true,
        time_granularity: 0,
        lossy_link_targets: false,
    };
    match (new, against) {
        (Some(new), None) => {
            let bsel = store.select(new)?;
            let (ra, rb) = (recorded(&a), recorded(&bsel));
            let o = compare::compare(&ra, &rb, &opts, cancel);
            let mut r = report(a.snap.name.clone(), bsel.snap.name.clone(), o, cancel);
            unusable_manifests(&[&a, &bsel], &mut r);
            Ok(r)
        }
        (None, Some(dir)) => {
            let fd = fsx::open_dir(dir).map_err(|e| live_error(e, dir))?;
            if stays_on_one_fs(one_file_system, &a) {
                opts.stay_on = Some(device(&fd, dir)?);
            }
            opts.excludes = a.exclusions()?;
            let live = TreeReader::tree(b(&fd));
            let o = compare::compare(&recorded(&a), &live, &opts, cancel);
            let mut r = report(a.snap.name.clone(), dir.display().to_string(), o, cancel);
            unusable_manifests(&[&a], &mut r);
            Ok(r)
        }
        _ => Err(Error::Config(
            "diff needs a second snapshot or --against DIR (not both)".into(),
        )),
    }
}

/// A snapshot whose run recorded a manifest that cannot be opened at all (cut to a
/// few bytes, overwritten, gone) was compared by stat alone: a change of content that
/// kept size and time (bit rot) went unseen. A problem of the report (exit 2), named
/// by the snapshot (`damaged_manifests` and `not_compared` are of manifests that read
/// in part: no directory here was left out).
fn unusable_manifests(sels: &[&Selected], r: &mut DiffReport) {
    for sel in sels {
        let Some(e) = &sel.manifest_error else {
            continue;
        };
        r.problems.push((
            sel.snap.name.clone(),
            format!(
                "{e}: {} compared by stat alone (type, size, time, mode, owner), not by content",
                sel.snap.name
            ),
        ));
    }
}

/// Whether a compare of snapshot `sel` with a live tree stays on the tree's file system:
/// asked for (`--one-file-system`), or the snapshot's run stayed on its source's (a
/// mount point is an empty directory in it, so its contents are not compared).
fn stays_on_one_fs(asked: bool, sel: &Selected) -> bool {
    asked || sel.run.as_ref().is_some_and(|r| r.one_file_system)
}

/// The device of the live tree `fd` (`dir`), which a compare may stay on.
fn device(fd: &std::os::fd::OwnedFd, dir: &Path) -> Result<u64> {
    fsx::fstat(b(fd))
        .map(|m| m.dev)
        .map_err(|e| crate::error::io_error(e, "stat", dir))
}

fn live_error(e: std::io::Error, dir: &Path) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::SourceMissing(dir.to_path_buf())
    } else {
        crate::error::io_error(e, "open", dir)
    }
}

#[derive(Serialize, Debug)]
pub struct Verified {
    pub snapshot: String,
    pub run_id: Option<String>,
    /// What the snapshot was checked against: `manifest`, or a live directory.
    pub against: String,
    pub clean: bool,
    /// Files in the manifest whose bytes differ on disk (bit rot, tampering).
    pub corrupt: u64,
    /// Entries that could not be read (an I/O error such as `EIO`: the disk, the
    /// network, the file system), listed in `problems` but those in `denied`: not
    /// checked, so not known to be damaged (a rerun may read them); never `corrupt`.
    pub unreadable: u64,
    pub missing: u64,
    pub unexpected: u64,
    pub metadata: u64,
    pub differences: Vec<Difference>,
    pub totals: Totals,
    pub problems: Vec<(String, String)>,
    /// Of `problems`, the entries this user may not read (`EACCES`): not checked,
    /// not damaged, and not recorded as damage. A snapshot with only these is not
    /// `clean` (not all of it was checked), nor damaged.
    pub denied: Vec<String>,
    /// `--against` only: whether the compare stayed on `SRC`'s file system, and the
    /// mount points whose contents it did not compare.
    #[serde(flatten)]
    pub one_fs: OneFsSummary,
    /// Directories whose contents were not checked because the snapshot's manifest does
    /// not read there (cut short, overwritten), and why. A snapshot with any is not
    /// `clean`; they are not recorded as damage (nothing under them was checked).
    pub not_checked: Vec<(String, String)>,
    /// The damaged manifest files (`.snapring/manifests/<run-id>.mf`).
    pub damaged_manifests: Vec<String>,
    /// Why this snapshot could not be checked at all (`--all` goes on past it): it
    /// has no usable manifest. Such a snapshot is not `clean`.
    pub unchecked: Option<String>,
    /// Against the manifest: the damaged entries (bytes, metadata, unreadable) that a
    /// backup linking from this snapshot copies from the source instead, as recorded
    /// in `.snapring/manifests/<run-id>.damaged` (`manifest::damaged_list`); 0 when
    /// none, or when the list could not be written (warned: a read-only store).
    pub next_backup_copies: u64,
    /// Stopped by SIGINT/SIGTERM/SIGHUP: this snapshot was checked in part (the
    /// differences are those found so far, and recorded as damage), or not at all
    /// (`unchecked`: the signal came before its turn). Never `clean`.
    pub interrupted: bool,
}

/// Why a snapshot the signal stopped `verify` before is not checked.
const NOT_REACHED: &str = "interrupted before its turn (SIGINT/SIGTERM/SIGHUP)";

impl Verified {
    /// A snapshot `verify --all` could not check, and why.
    fn unchecked(sel: &Selected, why: String) -> Verified {
        Verified::not_checked(
            sel.snap.name.clone(),
            sel.snap.rec.as_ref().map(|r| r.id.clone()),
            why,
        )
    }

    /// A snapshot the signal stopped `verify` before: not checked.
    fn not_reached(target: &Target) -> Verified {
        let (name, run_id) = match target {
            Target::Held(sel) => (
                sel.snap.name.clone(),
                sel.snap.rec.as_ref().map(|r| r.id.clone()),
            ),
            Target::Later { spec, by_run, name } => (name.clone(), by_run.then(|| spec.clone())),
        };
        Verified {
            interrupted: true,
            ..Verified::not_checked(name, run_id, NOT_REACHED.into())
        }
    }

    fn not_checked(snapshot: String, run_id: Option<String>, why: String) -> Verified {
        Verified {
            snapshot,
            run_id,
            against: "manifest".into(),
            clean: false,
            corrupt: 0,
            unreadable: 0,
            missing: 0,
            unexpected: 0,
            metadata: 0,
            differences: vec![],
            totals: Totals::default(),
            problems: vec![],
            denied: vec![],
            one_fs: OneFsSummary::default(),
            not_checked: vec![],
            damaged_manifests: vec![],
            unchecked: Some(why),
            next_backup_copies: 0,
            interrupted: false,
        }
    }
}

/// Re-hashes every file of the chosen snapshots and compares them with their manifests
/// (or, with `against`, compares the manifest with a live tree, hashing every file; a
/// snapshot without a manifest, taken over from another tool, is then read as a tree;
/// the compare stays on the live tree's file system as [`diff`]'s does).
pub fn verify(
    store: &Path,
    which: &[String],
    all: bool,
    against: Option<&Path>,
    one_file_system: bool,
    jobs: usize,
    cancel: &AtomicBool,
) -> Result<Vec<Verified>> {
    let store = Store::open_read(store)?;
    let targets = targets(&store, which, all)?;
    let live = match against {
        Some(dir) => {
            let fd = fsx::open_dir(dir).map_err(|e| live_error(e, dir))?;
            let dev = device(&fd, dir)?;
            Some((fd, dev))
        }
        None => None,
    };
    let mut paths = vec![store.root.as_path()];
    paths.extend(against);
    let mut opts = Options {
        checksum: true,
        dir_times: true,
        jobs: crate::concurrency::resolve(jobs, &paths),
        stay_on: None,
        excludes: None,
        owners: true,
        time_granularity: 0,
        lossy_link_targets: false,
    };
    let mut out = Vec::new();
    for target in targets {
        // Stopped by a signal: the snapshots not reached are not checked (said so,
        // never clean).
        if stopped(cancel) {
            out.push(Verified::not_reached(&target));
            continue;
        }
        let sel = match target {
            Target::Held(sel) => *sel,
            Target::Later { spec, by_run, name } => match select_now(&store, &spec) {
                Ok(sel) => sel,
                Err(e) if by_run && !run_still_there(&store, &spec)? => {
                    tracing::warn!("{name} (run {spec}) expired before it could be verified: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        let sel = &sel;
        if stopped(cancel) {
            out.push(Verified {
                interrupted: true,
                ..Verified::unchecked(sel, NOT_REACHED.into())
            });
            continue;
        }
        // Without a manifest (a tree taken over from another tool), only `--against`
        // has something to compare: the tree as it is, hashed file by file.
        if sel.manifest.is_none() && live.is_none() {
            let why = format!(
                "{name} has no usable manifest (a tree taken over from another tool, or its manifest is damaged), so there is nothing to verify it against on its own; `snapring verify --dest {store} {name} --against SOURCE` compares it with a live tree file by file, `snapring diff --dest {store} {name} --against SOURCE` by stat",
                name = sel.snap.name,
                store = store.root.display(),
            );
            if all {
                tracing::warn!("{why}");
                out.push(Verified::unchecked(sel, why));
                continue;
            }
            return Err(Error::Store {
                path: sel.path.clone(),
                msg: why,
            });
        }
        // The manifest's record on one side, a tree read as it is on the other.
        let (actual, against_name) = match &live {
            Some((fd, dev)) => {
                opts.stay_on = stays_on_one_fs(one_file_system, sel).then_some(*dev);
                opts.excludes = sel.exclusions()?;
                (
                    TreeReader::tree(b(fd)),
                    // Absolute: a live tree named `manifest` is not the manifest.
                    std::path::absolute(against.expect("set with live"))
                        .unwrap_or_else(|_| against.expect("set with live").to_path_buf())
                        .display()
                        .to_string(),
                )
            }
            None => (TreeReader::tree(b(&sel.fd)), "manifest".to_string()),
        };
        // A store that keeps no owners gave every file its own; the manifest has the
        // source's (docs/stores.md): owners are not compared, and that is said.
        let held = match live {
            None => sel.manifest.as_ref().and_then(|m| m.owners_held),
            Some(_) => None,
        };
        opts.owners = held.is_none();
        if let Some((u, g)) = held {
            tracing::warn!(
                "{}: owners not checked: the store did not keep them (every file is owned by {u}:{g}; the manifest has the source's)",
                sel.snap.name
            );
        }
        // A store that keeps times coarser than the source's (whole seconds) truncated
        // them; the manifest has the source's: times are compared to its granularity.
        let times_held = match live {
            None => sel.manifest.as_ref().and_then(|m| m.times_held),
            Some(_) => None,
        };
        opts.time_granularity = times_held.unwrap_or(0);
        if let Some(g) = times_held {
            tracing::warn!(
                "{}: times checked to {}: the store keeps them to {} only (the manifest has the source's exact times)",
                sel.snap.name,
                fsx::granularity_words(g),
                fsx::granularity_words(g)
            );
        }
        let o = compare::compare(&recorded(sel), &actual, &opts, cancel);
        // Cut short by a signal: what was found is real and recorded all the same
        // (added to the list, which keeps what it had: the rest was not checked).
        let interrupted = stopped(cancel);
        let next_backup_copies = match (&live, &sel.snap.rec) {
            (None, Some(rec)) => {
                record_damage(&store, &rec.id, &sel.snap.name, &sel.path, &o, interrupted)
            }
            _ => 0,
        };
        let n = |c| o.differences.iter().filter(|d| d.change == c).count() as u64;
        let corrupt = o
            .differences
            .iter()
            .filter(|d| d.change == compare::Change::Content)
            .count() as u64;
        out.push(Verified {
            snapshot: sel.snap.name.clone(),
            run_id: sel.snap.rec.as_ref().map(|r| r.id.clone()),
            against: against_name,
            clean: !interrupted
                && o.differences.is_empty()
                && o.problems.is_empty()
                && o.not_compared.is_empty(),
            corrupt,
            unreadable: o
                .problems
                .iter()
                .filter(|(p, _)| !o.denied.contains(p))
                .count() as u64,
            missing: n(compare::Change::Removed),
            unexpected: n(compare::Change::Added),
            metadata: n(compare::Change::Metadata),
            differences: o.differences,
            totals: o.totals,
            problems: o.problems,
            denied: o.denied,
            one_fs: o.one_fs,
            not_checked: o.not_compared,
            damaged_manifests: o.damaged_manifests,
            unchecked: None,
            next_backup_copies,
            interrupted,
        });
    }
    Ok(out)
}

/// Records what a verify against the manifest found damaged in the snapshot `name` of
/// run `id`, for the next backup to copy afresh rather than link: every entry other
/// than a directory whose bytes or metadata differ, and every unreadable one (a new
/// snapshot's directories are made anew, never linked) but those this user may not
/// read (`EACCES`: permissions, not damage; a copy would have the same mode). Returns how many were recorded;
/// a store that cannot be written (a read-only mount) is warned about, and 0. A verify
/// cut short (`partial`) adds what it found to the list, whose other entries were not
/// checked again, so stay; a whole one replaces it.
fn record_damage(
    store: &Store,
    id: &str,
    name: &str,
    snap: &Path,
    o: &compare::Outcome,
    partial: bool,
) -> u64 {
    let mut paths: Vec<RelPath> = o
        .differences
        .iter()
        .filter(|d| {
            matches!(
                d.change,
                compare::Change::Content | compare::Change::Metadata
            ) && d.kind != Kind::Dir.name()
        })
        .map(|d| d.path.as_str())
        .chain(
            o.problems
                .iter()
                .map(|(p, _)| p.as_str())
                .filter(|p| !o.denied.iter().any(|d| d == p)),
        )
        .filter_map(|p| RelPath::from_escaped(p).ok())
        .collect();
    paths.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    paths.dedup();
    let mdir = store.meta.join("manifests");
    if !paths.is_empty() {
        share_damage(store, &mdir, id, snap, &paths);
    }
    if partial {
        let before = crate::manifest::read_damaged(&mdir, id);
        if paths.is_empty() {
            return before.len() as u64;
        }
        paths.extend(before);
        paths.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        paths.dedup();
    }
    match crate::manifest::write_damaged(&mdir, id, &paths) {
        Ok(()) => paths.len() as u64,
        Err(e) => {
            if !paths.is_empty() {
                tracing::warn!(
                    "{name}: cannot record its {} damaged entries in {} ({e}): the next backup links them as they are",
                    paths.len(),
                    crate::manifest::damaged_list(&mdir, id).display()
                );
            }
            0
        }
    }
}

/// Adds the damaged `paths` of the snapshot at `snap` (run `id`) to the list of every
/// other snapshot where the same name is the same inode: an unchanged file is one inode
/// in every snapshot that linked it, so the damage is theirs too, and a backup linking
/// from the newest of them must copy it afresh as well (verified in an older snapshot,
/// the rot was linked on from the newest). Best effort: a list that cannot be written
/// is warned about.
fn share_damage(store: &Store, mdir: &Path, id: &str, snap: &Path, paths: &[RelPath]) {
    use std::os::unix::fs::MetadataExt;
    let (Some(dir), Ok(snapshots)) = (snap.parent(), store.snapshots()) else {
        return;
    };
    let inode = |p: &Path| {
        std::fs::symlink_metadata(p)
            .map(|m| (m.dev(), m.ino()))
            .ok()
    };
    for other in snapshots {
        let Some(rec) = other.rec.as_ref().filter(|r| r.id != id) else {
            continue;
        };
        let theirs = dir.join(&other.name);
        let shared: Vec<RelPath> = paths
            .iter()
            .filter(|p| {
                let mine = inode(&snap.join(p.as_path()));
                mine.is_some() && mine == inode(&theirs.join(p.as_path()))
            })
            .cloned()
            .collect();
        if shared.is_empty() {
            continue;
        }
        let mut all: Vec<RelPath> = crate::manifest::read_damaged(mdir, &rec.id)
            .into_iter()
            .chain(shared)
            .collect();
        all.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        all.dedup();
        if let Err(e) = crate::manifest::write_damaged(mdir, &rec.id, &all) {
            tracing::warn!(
                "{}: cannot record the damaged entries it shares with the verified snapshot ({e})",
                other.name
            );
        }
    }
}

/// The snapshots `verify` checks. `--all`: each snapshot is selected (by its run id,
/// which a rotation does not change) and held just before it is verified, released
/// after; one expired meanwhile is skipped (warned). Named ones are selected up front.
fn targets(store: &Store, which: &[String], all: bool) -> Result<Vec<Target>> {
    Ok(if all {
        store
            .snapshots_with_runs()?
            .into_iter()
            .map(|(s, _, _)| Target::Later {
                spec: s
                    .rec
                    .as_ref()
                    .map_or_else(|| s.name.clone(), |r| r.id.clone()),
                by_run: s.rec.is_some(),
                name: s.name,
            })
            .collect()
    } else if which.is_empty() {
        vec![Target::Held(Box::new(store.select("latest")?))]
    } else {
        which
            .iter()
            .map(|w| store.select(w).map(|s| Target::Held(Box::new(s))))
            .collect::<Result<_>>()?
    })
}

/// A snapshot `verify` is to check: selected already, or selected when its turn comes.
enum Target {
    Held(Box<Selected>),
    Later {
        spec: String,
        by_run: bool,
        name: String,
    },
}

/// Selects (and holds) snapshot `spec` when its turn comes; tests rotate the store
/// just before.
fn select_now(store: &Store, spec: &str) -> Result<Selected> {
    let _ = crate::failpoint::hit("verify.snapshot");
    store.select(spec)
}

/// Whether a snapshot of run `id` is still in the store.
fn run_still_there(store: &Store, id: &str) -> Result<bool> {
    Ok(store
        .snapshots()?
        .iter()
        .any(|s| s.rec.as_ref().is_some_and(|r| r.id == id)))
}

#[derive(Serialize, Debug)]
pub struct Version {
    pub snapshot: String,
    pub run_id: Option<String>,
    pub taken_at: String,
    /// `absent` when this snapshot does not have the path.
    pub kind: String,
    pub size: Option<u64>,
    pub mtime: Option<String>,
    pub hash: Option<String>,
    /// Against the next older snapshot: `new`, `changed`, `metadata`, `same`, `absent`
    /// (gone), or `first` for the oldest.
    pub change: String,
}

/// Every retained version of one path, newest first.
pub fn history(store: &Path, path: &RelPath) -> Result<Vec<Version>> {
    let store = Store::open_read(store)?;
    let mut found: Vec<(Version, Option<Entry>)> = Vec::new();
    for (snap, run, taken) in store.snapshots_with_runs()? {
        let sel = store.open_snapshot(snap, run, taken)?;
        let e = lookup(&sel, path)?;
        found.push((
            Version {
                snapshot: sel.snap.name.clone(),
                run_id: sel.snap.rec.as_ref().map(|r| r.id.clone()),
                taken_at: sel
                    .taken_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                kind: e
                    .as_ref()
                    .map(|e| e.kind.name().to_string())
                    .unwrap_or_else(|| "absent".into()),
                size: e.as_ref().map(|e| e.size),
                mtime: e.as_ref().map(|e| e.mtime.rfc3339()),
                hash: e
                    .as_ref()
                    .and_then(|e| e.hash)
                    .map(|h| h.to_hex().to_string()),
                change: String::new(),
            },
            e,
        ));
    }
    for i in 0..found.len() {
        let older = found.get(i + 1).map(|f| f.1.clone());
        let change = match (&found[i].1, older) {
            (None, None) | (None, Some(None)) => "absent",
            (None, Some(Some(_))) => "deleted",
            (Some(_), None) => "first",
            (Some(_), Some(None)) => "new",
            (Some(a), Some(Some(o))) => {
                let d = Delta::between(&Facts::of_entry(a), &Facts::of_entry(&o));
                if d.content() || (d.bytes_undecided(&Facts::of_entry(a)) && a.hash != o.hash) {
                    "changed"
                } else if d.metadata() {
                    "metadata"
                } else {
                    "same"
                }
            }
        };
        found[i].0.change = change.into();
    }
    if found.iter().all(|f| f.1.is_none()) {
        return Err(Error::Store {
            path: store.root.clone(),
            msg: format!(
                "no retained snapshot has {path}; check the path (relative to the snapshot root)"
            ),
        });
    }
    Ok(found.into_iter().map(|f| f.0).collect())
}

/// One path's entry in a snapshot: from its manifest, else from the tree (hashed).
fn lookup(sel: &Selected, path: &RelPath) -> Result<Option<Entry>> {
    if let Some(m) = &sel.manifest
        && let Some(es) = m.lookup(&path.parent()).ctx("read manifest", &m.mf_path)?
    {
        return Ok(manifest::find(&es, path.file_name()).cloned());
    }
    let dir = match crate::snapshot::open_beneath(b(&sel.fd), &path.parent()) {
        Ok(d) => d,
        Err(_) => return Ok(None),
    };
    let Ok(m) = fsx::lstat_at(b(&dir), path.file_name()) else {
        return Ok(None);
    };
    let mut e = Entry::from_meta(path.file_name(), &m);
    if m.kind == Kind::File {
        e.hash = fsx::open_read_at(b(&dir), path.file_name())
            .and_then(|f| fsx::hash_file(b(&f)))
            .ok();
    }
    if m.kind == Kind::Symlink {
        e.target = fsx::read_link_at(b(&dir), path.file_name()).ok();
    }
    Ok(Some(e))
}

/// What a selected snapshot records: its manifest, or its tree when it has none.
fn recorded(sel: &Selected) -> TreeReader<'_> {
    TreeReader::recorded(fsx::b(&sel.fd), sel.manifest.as_ref())
}
