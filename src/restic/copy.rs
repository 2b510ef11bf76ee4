//! `snapring copy --dest STORE_DEST [--folder F] SNAPSHOT --to URL`: one snapshot of a
//! hard-link store pushed into a restic repository, reading only the files that changed
//! since the last snapshot of the same store copied there. The parent is the newest
//! repository snapshot tagged `copy` and `store=<store>`; a file is reused unread
//! (its parent node's blob list) when the two snapshots' manifests give it the same
//! size and BLAKE3 hash, or, where the parent's manifest is gone (its snapshot expired
//! from the store), when it is the same inode with the same size and mtime as the
//! parent's node: a file linked into a store snapshot is never changed in place
//! (ARCHITECTURE.md, invariant 2). restic's own compare key cannot be used: every
//! rotation's new hard links change each file's ctime. A snapshot already copied (tag
//! `run=<id>`) is not copied again, unless that copy was `partial` (tag `partial`);
//! once written, a copy leaves one copy of its store run ([`settle_run`]), and its
//! retention counts store runs of the label, not restic's host/paths groups
//! ([`plan_copies`]).
//! Reads the store, writes the repository.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde::Serialize;

use super::backup::{BackupReport, Check, Reuse, Spec, Stat};
use super::repo::Repo;
use super::snapshot::{self, Snapshot};
use super::tree::Node;
use super::{Error, Id, Result};
use crate::fsx::{Kind, Time};
use crate::manifest;
use crate::relpath::RelPath;
use crate::same::{Delta, Facts};

pub struct CopyOptions {
    /// The store snapshot: a name (`daily.0`), a run id, `latest` or `@TIME`.
    pub snapshot: String,
    /// The label tag (default: the store snapshot's label).
    pub label: Option<String>,
    /// Keep the copies of the newest N store runs of the label, one each, and the newest
    /// whole copy ([`plan_copies`]).
    pub retain: Option<u32>,
    pub cancel: Arc<AtomicBool>,
    /// File-system calls in flight reading the store (`--jobs`); 0: the default.
    pub jobs: usize,
    /// For the retention's forget ([`super::forget::Policy::before_remove`]).
    pub before_forget: Option<super::forget::BeforeRemove>,
}

#[derive(Debug, Serialize)]
pub struct CopyReport {
    /// The store snapshot copied, and the run that made it.
    pub store_snapshot: String,
    pub run: String,
    /// The label tag the copy got.
    pub label: String,
    /// It was copied before: `backup.snapshot` is that copy, nothing was written.
    pub already_copied: bool,
    /// Files reused because the manifests give them the same hash (and their blobs
    /// are in the index: with `reused_by_inode`, `backup.files_unchanged`).
    pub reused_by_manifest: u64,
    /// Files reused because they are the parent's inode, size and mtime.
    pub reused_by_inode: u64,
    pub backup: BackupReport,
}

/// The tag of a copy that says when it began (RFC 3339).
const COPIED_AT: &str = "copied_at";

/// The tag values of a copy.
fn tag_is(s: &Snapshot, key: &str, value: &str) -> bool {
    s.tag(key) == Some(value)
}

/// Copies one snapshot of the store `store` into `repo`.
pub fn copy(
    store: &crate::store::Store,
    repo: &mut Repo,
    opts: &CopyOptions,
) -> Result<CopyReport> {
    repo.check_writable()?;
    let other = |e: crate::error::Error| Error::Other(e.to_string());
    let sel = store.select(&opts.snapshot).map_err(other)?;
    let run = sel.snap.rec.as_ref().map(|r| r.id.clone()).ok_or_else(|| {
        Error::Other(format!(
            "{} has no run record (a tree taken over from another tool): copy needs its manifest",
            crate::relpath::shown(&sel.path)
        ))
    })?;
    let store_root =
        std::fs::canonicalize(&store.root).map_err(super::io_err("open the store", &store.root))?;
    // The snapshot's path and the `store=` tag are UTF-8 text: a store whose path is
    // not would share its lineage with another's (as a source's would).
    let store_tag = crate::localpath::utf8(&store_root)
        .map_err(|why| {
            Error::Other(format!(
                "the store {} cannot be copied into a restic repository: {why}, and a repository records a snapshot's path as UTF-8 text, by which it groups snapshots for retention and picks the parent; nothing was written. To copy from it, give the directory with that name (or the one above it that has it) a UTF-8 name; its snapshots stay restorable with `snapring restore` meanwhile",
                crate::relpath::shown(&store_root)
            ))
        })?
        .to_string();
    let label = opts.label.clone().unwrap_or_else(|| sel.snap.label.clone());
    // A prune between the opening (the index read) and the lock (the race tests).
    crate::failpoint::hit("restic.copy.before_lock")
        .map_err(|e| Error::Other(format!("lock {}: {e}", repo.backend.location())))?;
    let lock = super::lock::acquire(repo, false)?;
    // Brought up to date under the lock: a prune since the opening deleted packs the
    // index read then still names, and a blob found there would not be stored.
    if let Err(e) = repo.refresh_index() {
        let _ = lock.release();
        return Err(e);
    }
    let all = snapshot::load_readable(repo)?;
    let copies: Vec<&(Id, Snapshot)> = all
        .iter()
        .filter(|(_, s)| s.tags.iter().any(|t| t == "copy") && tag_is(s, "store", &store_tag))
        .collect();
    let mut report = CopyReport {
        store_snapshot: sel.snap.name.clone(),
        run: run.clone(),
        label: label.clone(),
        already_copied: false,
        reused_by_manifest: 0,
        reused_by_inode: 0,
        backup: BackupReport::default(),
    };
    // A copy that left entries out (`partial`) is not the snapshot copied: copied
    // again (the store repaired, or the file readable now), as a new snapshot.
    let whole = |s: &Snapshot| !s.tags.iter().any(|t| t == super::snapshot::PARTIAL_TAG);
    if let Some((id, _)) = copies
        .iter()
        .find(|(_, s)| tag_is(s, "run", &run) && whole(s))
    {
        lock.release()?;
        report.already_copied = true;
        report.backup.snapshot = id.hex();
        report.backup.status = "complete".into();
        return Ok(report);
    }
    let parent = copies
        .iter()
        .rev()
        .find(|(_, s)| tag_is(s, "label", &label))
        .or(copies.last())
        .map(|e| (*e).clone());
    let mdir = store.meta.join("manifests");
    let prev = parent
        .as_ref()
        .and_then(|(_, s)| s.tag("run"))
        .and_then(|r| manifest::Reader::open(&mdir, r).ok());
    let walk_root = PathBuf::from(format!("/proc/self/fd/{}", sel.fd.as_raw_fd()));
    let parent_time = parent
        .as_ref()
        .and_then(|(_, s)| s.tag(COPIED_AT))
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(crate::fsx::Time::from);
    let mut reuse = ManifestReuse {
        root: walk_root.clone(),
        cur: sel.manifest,
        prev,
        parent_time,
        cache: HashMap::new(),
        by_manifest: 0,
        by_inode: 0,
    };
    let mut tags = vec![
        "snapring".to_string(),
        format!("label={label}"),
        "copy".into(),
        format!("run={run}"),
        format!("store={store_tag}"),
        // Before the walk: every inode it records existed then ([`ManifestReuse`]).
        format!("{COPIED_AT}={}", crate::util::now_rfc3339()),
    ];
    if let Some(r) = &sel.run {
        tags.push(format!("source={}", r.source.display()));
        // Its mount points are empty directories: a compare with the source stays on
        // the source's file system, as with the store's snapshot.
        if r.one_file_system {
            tags.push(super::snapshot::ONE_FILE_SYSTEM_TAG.into());
        }
        // What its run left out, as a backup into the repository records it: a compare
        // with the source (`verify`/`diff --against`) does not count it as unexpected.
        tags.extend(super::backup::exclusion_tags(&r.exclusion));
    }
    let spec = Spec {
        walk_root,
        path: store_root.join(&sel.snap.name),
        parent,
        tags,
        label,
        // Applied here, after the run's other copies are settled ([`retain_copies`]).
        retain: None,
        cancel: opts.cancel.clone(),
        reuse: Some(&mut reuse),
        jobs: crate::concurrency::resolve(opts.jobs, &[&store_root]),
        time: Some(sel.taken_at.with_timezone(&chrono::Local)),
        // A store snapshot's access times are the copy's and restores', not the
        // source's: the mtime, as restic records by default.
        with_atime: false,
        before_forget: opts.before_forget,
        // A store snapshot is one tree on one file system.
        one_file_system: false,
        exclusion: sel
            .run
            .as_ref()
            .map(|r| r.exclusion.clone())
            .unwrap_or_default(),
        exclusion_recorded_only: true,
        host: crate::util::hostname(),
        // A copy writes what the store holds, empty or not.
        refuse_no_files: false,
    };
    report.backup = super::backup::snapshot_locked(repo, spec, lock)?;
    // Without its manifest nothing of the snapshot could be checked: copied as found,
    // as a restore does, and said so (when a snapshot was written: a copy stopped
    // before it stays `incomplete`).
    if let Some(e) = sel
        .manifest_error
        .as_ref()
        .filter(|_| !report.backup.snapshot.is_empty())
    {
        let b = &mut report.backup;
        b.problems.insert(
            0,
            super::backup::EntryProblem {
                path: ".".into(),
                kind: "unreadable".into(),
                action: "open the manifest".into(),
                error: format!(
                    "{e}: the snapshot's content copied unchecked against the checksums \
                     recorded at backup (bit rot would go unnoticed); run `snapring verify`"
                ),
            },
        );
        b.status = "partial".into();
    }
    report.reused_by_manifest = reuse.by_manifest;
    report.reused_by_inode = reuse.by_inode;
    if report.backup.snapshot.is_empty() {
        return Ok(report);
    }
    let written = Id::parse(&report.backup.snapshot)?;
    settle_run(repo, &store_tag, &run, written, opts, &mut report)?;
    if let Some(n) = opts.retain {
        // restic's `forget` takes an exclusive lock; a concurrent run's shared lock
        // makes it wait for the next run rather than fail this one.
        match super::lock::acquire(repo, true) {
            Ok(ex) => {
                let snaps = snapshot::load_readable(repo)?;
                let keep = Id::parse(&report.backup.snapshot)?;
                let plan = plan_copies(&snaps, &store_tag, &report.label, n.max(1), keep);
                let r = super::forget::remove_planned(
                    repo,
                    &snaps,
                    plan,
                    opts.before_forget,
                    &opts.cancel,
                );
                let released = ex.release();
                report.backup.retention = Some(r?);
                released?;
            }
            Err(e) => report.backup.retention_skipped = Some(e.to_string()),
        }
    }
    Ok(report)
}

/// Whether `s` is a copy of the store `store_tag` (tags `copy`, `store=`).
fn is_copy_of(s: &Snapshot, store_tag: &str) -> bool {
    s.tags.iter().any(|t| t == "copy") && tag_is(s, "store", store_tag)
}

fn is_whole(s: &Snapshot) -> bool {
    !s.tags.iter().any(|t| t == super::snapshot::PARTIAL_TAG)
}

/// Which of two copies of one store run is the one kept: a whole copy before a partial
/// one; of two whole copies the first made (a later one is a duplicate, by a
/// concurrent copy: `copied_at`, then the id); of two partial ones the last made (a
/// retry replaces the copy it retried). `Greater`: `a` is kept rather than `b`.
fn prefer(a: &(Id, Snapshot), b: &(Id, Snapshot)) -> std::cmp::Ordering {
    let at = |(id, s): &(Id, Snapshot)| {
        let t = s
            .tag(COPIED_AT)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| (t.timestamp(), t.timestamp_subsec_nanos()));
        (t, *id)
    };
    match (is_whole(&a.1), is_whole(&b.1)) {
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        (true, true) => at(b).cmp(&at(a)),
        (false, false) => at(a).cmp(&at(b)),
    }
}

/// After a copy of `run` was written (`written`): one copy of a store run is left. The
/// run's other copies are the ones a retried `partial` copy replaces, or duplicates
/// written by copies of the same run at once, each of which checked before the other
/// had written. The copy kept is [`prefer`]'s, which every process settling the run
/// picks alike. This run's own copy, when it is not that one, is removed under a
/// shared lock (as if it had not been written: a concurrent copy holds one too, and
/// each must drop its own duplicate); the report then names the copy kept. The run's
/// other copies are forgotten under an exclusive lock, with the retention's
/// `before_forget`; when another process holds a lock they stay for the next run (or
/// its retention) to forget.
fn settle_run(
    repo: &Repo,
    store_tag: &str,
    run: &str,
    written: Id,
    opts: &CopyOptions,
    report: &mut CopyReport,
) -> Result<()> {
    let snaps = snapshot::load_readable(repo)?;
    let of_run: Vec<&(Id, Snapshot)> = snaps
        .iter()
        .filter(|(_, s)| is_copy_of(s, store_tag) && tag_is(s, "run", run))
        .collect();
    let Some(best) = of_run.iter().copied().max_by(|a, b| prefer(a, b)) else {
        return Ok(());
    };
    let best_id = best.0;
    if best_id != written {
        // Under a prune's exclusive lock: left, for the retention to forget as a repeat.
        let lock = match super::lock::acquire(repo, false) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(
                    "copy {} of run {run} is a duplicate of {}, not removed: {e}",
                    &written.hex()[..8],
                    &best_id.hex()[..8]
                );
                return Ok(());
            }
        };
        let r = repo
            .backend
            .remove(super::backend::Kind::Snapshot, &written);
        let released = lock.release();
        r?;
        released?;
        tracing::info!(
            "copy {} of run {run} removed: {} is its copy",
            &written.hex()[..8],
            &best_id.hex()[..8]
        );
        report.already_copied = is_whole(&best.1);
        report.backup.snapshot = best_id.hex();
    }
    let others: Vec<Id> = of_run
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| *id != best_id && *id != written)
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    let Ok(ex) = super::lock::acquire(repo, true) else {
        return Ok(());
    };
    let r = (|| -> Result<()> {
        // Listed again under the lock: what another process forgot meanwhile is not
        // removed twice.
        let now = snapshot::load_readable(repo)?;
        for (id, s) in now.iter().filter(|(id, _)| others.contains(id)) {
            if let Some(before) = opts.before_forget {
                before(repo.backend.as_ref(), id, s)?;
            }
            repo.backend.remove(super::backend::Kind::Snapshot, id)?;
            tracing::info!(
                "copy {} of run {run} forgotten: {} replaces it",
                &id.hex()[..8],
                &best_id.hex()[..8]
            );
        }
        Ok(())
    })();
    let released = ex.release();
    r?;
    released
}

/// `copy --retain N`: the copies of the store `store_tag` with the label `label`, per
/// host, keep the newest N store runs copied (by the store snapshot's time), one copy
/// of each ([`prefer`]'s; the run's other copies are forgotten as repeats). They are
/// grouped by store and label, not by restic's host and paths: a copy's path names the
/// store snapshot's slot (`daily.0`, `daily.1`), which a rotation renames. The newest
/// whole copy is kept whatever partial copies are newer, and `written` (this run's) is
/// kept. Copies of other stores and labels, and snapshots other than copies, are left
/// alone. Verdicts newest first within each host.
fn plan_copies(
    snaps: &[(Id, Snapshot)],
    store_tag: &str,
    label: &str,
    n: u32,
    written: Id,
) -> super::forget::Plan {
    use super::forget::{Group, Plan, Verdict};
    let mut copies: Vec<&(Id, Snapshot)> = snaps
        .iter()
        .filter(|(_, s)| is_copy_of(s, store_tag) && tag_is(s, "label", label))
        .collect();
    // Per host, newest first; one run's copies together, the one kept first.
    copies.sort_by(|a, b| {
        a.1.hostname
            .cmp(&b.1.hostname)
            .then_with(|| b.1.unix_time().cmp(&a.1.unix_time()))
            .then_with(|| b.1.tag("run").cmp(&a.1.tag("run")))
            .then_with(|| prefer(b, a))
    });
    let mut verdicts = Vec::with_capacity(copies.len());
    let mut i = 0;
    while i < copies.len() {
        let host = &copies[i].1.hostname;
        let end = i + copies[i..]
            .iter()
            .take_while(|(_, s)| s.hostname == *host)
            .count();
        let hosts = &copies[i..end];
        let newest_whole = hosts.iter().find(|(_, s)| is_whole(s)).map(|(id, _)| *id);
        let mut rank = 0u32;
        let mut last_run: Option<&str> = None;
        for (id, s) in hosts.iter().copied() {
            let run = s.tag("run");
            let repeat = last_run.is_some() && last_run == run;
            if !repeat {
                rank += 1;
            }
            last_run = run;
            let (keep, reason) = if repeat {
                (
                    false,
                    format!(
                        "forgotten: another copy of store run {} is kept",
                        run.unwrap_or("?")
                    ),
                )
            } else if rank <= n {
                (
                    true,
                    format!("kept: newest {n} copied runs of label {label} ({rank} of {n})"),
                )
            } else if newest_whole == Some(*id) {
                (
                    true,
                    format!(
                        "kept: the newest whole copy of label {label} (the newer copies are partial)"
                    ),
                )
            } else if *id == written {
                (
                    true,
                    "kept: written by this run, though newer runs of the label are copied"
                        .to_string(),
                )
            } else {
                (
                    false,
                    format!("forgotten: older than the newest {n} copied runs of label {label}"),
                )
            };
            verdicts.push(Verdict {
                id: id.hex(),
                short_id: id.hex()[..8].to_string(),
                time: s.time.clone(),
                group: Group::of(s),
                keep,
                reason,
            });
        }
        i = end;
    }
    Plan { verdicts }
}

/// "Unchanged" for a store snapshot: the manifests' hashes, else the store's invariant.
/// The store snapshot is also checked against its own manifest as it is read: a file
/// read whose content is not the recorded hash is left out (`unreadable`), a name the
/// manifest has and the snapshot lacks is `vanished`, and a directory whose block does
/// not read is copied unchecked (`unreadable`, at the directory): each a problem.
struct ManifestReuse {
    root: PathBuf,
    cur: Option<manifest::Reader>,
    prev: Option<manifest::Reader>,
    /// When the parent copy began (its `copied_at` tag; `None` for a copy made before
    /// the tag: no file is reused by inode): an inode created before then is the one
    /// the parent recorded under its number, not a later file that reuses it.
    parent_time: Option<crate::fsx::Time>,
    /// Both manifests' blocks of recently seen directories, and why the current
    /// manifest's block did not read.
    cache: HashMap<Vec<u8>, Blocks>,
    by_manifest: u64,
    by_inode: u64,
}

/// One directory's blocks: the current manifest's, the parent's, and why the current
/// one did not read.
type Blocks = (Vec<manifest::Entry>, Vec<manifest::Entry>, Option<String>);

impl ManifestReuse {
    /// `path` relative to the walk's root: its directory and its name.
    fn split<'p>(&self, path: &'p Path) -> Option<(&'p [u8], &'p [u8])> {
        let rel = path.strip_prefix(&self.root).ok()?.as_os_str().as_bytes();
        Some(match rel.iter().rposition(|b| *b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&rel[..0], rel),
        })
    }

    fn blocks(&mut self, dir: &[u8]) -> &Blocks {
        if !self.cache.contains_key(dir) {
            if self.cache.len() >= 64 {
                self.cache.clear();
            }
            let rel = if dir.is_empty() {
                Some(RelPath::root())
            } else {
                RelPath::new(dir).ok()
            };
            let look = |m: &Option<manifest::Reader>| match m.as_ref().zip(rel.as_ref()) {
                Some((m, r)) => m.lookup(r).map(Option::unwrap_or_default),
                None => Ok(Vec::new()),
            };
            let (cur, cur_error) = match look(&self.cur) {
                Ok(v) => (v, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            let v = (cur, look(&self.prev).unwrap_or_default(), cur_error);
            self.cache.insert(dir.to_vec(), v);
        }
        &self.cache[dir]
    }
}

impl Reuse for ManifestReuse {
    fn unchanged(&mut self, path: &Path, prev: &Node, md: &super::backup::Stat) -> bool {
        let Some((dir, name)) = self.split(path) else {
            return false;
        };
        let (cur, old, _) = self.blocks(dir);
        match (manifest::find(cur, name), manifest::find(old, name)) {
            (Some(c), Some(o)) => {
                let same = c.hash.is_some()
                    && c.hash == o.hash
                    && c.size == o.size
                    && c.size == md.size()
                    && prev.size == md.size();
                self.by_manifest += u64::from(same);
                same
            }
            _ => {
                let mtime = super::local_time(md.mtime(), md.mtime_nsec() as u32);
                // The same inode number is the same file only if that inode already
                // existed when the parent was copied: once the parent's snapshot
                // expired, its files' inodes may have been freed and their numbers
                // given to new files, which may keep size and mtime (`rsync -t`). A
                // file system that does not tell the birth time reads the file.
                let same = prev.kind == "file"
                    && prev.inode == md.ino()
                    && prev.size == md.size()
                    && super::parse_time(&prev.mtime).ok()
                        == Some((mtime.timestamp(), mtime.timestamp_subsec_nanos()))
                    && self
                        .parent_time
                        .zip(crate::fsx::birth_time(path))
                        .is_some_and(|(parent, born)| born < parent);
                self.by_inode += u64::from(same);
                same
            }
        }
    }

    fn expected(&mut self, path: &Path) -> Option<blake3::Hash> {
        let (dir, name) = self.split(path)?;
        manifest::find(&self.blocks(dir).0, name)?.hash
    }

    fn check_listing(
        &mut self,
        path: &Path,
        names: &mut Vec<Vec<u8>>,
    ) -> Vec<(PathBuf, &'static str, Error)> {
        if self.cur.is_none() {
            return Vec::new();
        }
        let Ok(rel) = path.strip_prefix(&self.root) else {
            return Vec::new();
        };
        let dir = rel.as_os_str().as_bytes().to_vec();
        let (cur, _, cur_error) = self.blocks(&dir);
        if let Some(e) = cur_error {
            let e = std::io::Error::other(format!(
                "{e}: its content copied unchecked against the checksums recorded at \
                 backup (bit rot would go unnoticed)"
            ));
            return vec![(
                path.to_path_buf(),
                "unreadable",
                super::io_err("read the directory's manifest block", path)(e),
            )];
        }
        let listed: std::collections::HashSet<&[u8]> = names.iter().map(Vec::as_slice).collect();
        let mut problems: Vec<_> = cur
            .iter()
            .filter(|e| !listed.contains(e.name.as_slice()))
            .map(|e| {
                let at = path.join(std::ffi::OsStr::from_bytes(&e.name));
                let why = std::io::Error::other(
                    "in the manifest of the store snapshot, not in the snapshot (deleted from \
                     the store?): not in the copy; run `snapring verify`",
                );
                (
                    at.clone(),
                    "vanished",
                    super::io_err("check against the manifest", &at)(why),
                )
            })
            .collect();
        // A name the manifest does not list was added to the store snapshot after its
        // run: not the snapshot's, so not in the copy.
        let cur = &self.cache[&dir].0;
        names.retain(|name| {
            let known = manifest::find(cur, name).is_some();
            if !known {
                let at = path.join(std::ffi::OsStr::from_bytes(name));
                let why = std::io::Error::other(
                    "in the store snapshot, not in its manifest (added to the store since its \
                     backup: tampering?): left out of the copy; run `snapring verify`",
                );
                problems.push((
                    at.clone(),
                    "unreadable",
                    super::io_err("check against the manifest", &at)(why),
                ));
            }
            known
        });
        problems
    }

    fn check_entry(&mut self, path: &Path, md: &Stat, target: Option<&[u8]>) -> Check {
        if self.cur.is_none() {
            return Check::Good;
        }
        let Some((dir, name)) = self.split(path) else {
            return Check::Good;
        };
        let root;
        let e = if name.is_empty() {
            // The snapshot's own directory: the manifest's root line (one that does
            // not read leaves the root unchecked, as a block that does not read).
            match self.cur.as_ref().map(manifest::Reader::root) {
                Some(Ok(r)) => {
                    root = r;
                    &root
                }
                _ => return Check::Good,
            }
        } else {
            let (cur, _, cur_error) = self.blocks(dir);
            // A block that did not read: copied unchecked, said at the directory.
            if cur_error.is_some() {
                return Check::Good;
            }
            // A name not listed was left out at its directory's listing.
            match manifest::find(cur, name) {
                Some(e) => e,
                None => return Check::Good,
            }
        };
        let mode = md.mode();
        let found = Facts {
            kind: Kind::from_mode(mode),
            perm: mode & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: md.size(),
            mtime: Time {
                sec: md.mtime(),
                nsec: md.mtime_nsec() as u32,
            },
            rdev: md.rdev(),
            target,
            xattrs: None,
        };
        // What `verify` compares (`same::Delta`), but for the extended attributes.
        let d = Delta::between(&Facts::of_entry(e), &found);
        let err = |msg: String| {
            super::io_err("check against the manifest", path)(std::io::Error::other(msg))
        };
        if d.content() {
            let what = if d.kind {
                format!(
                    "it is a {} in the store snapshot, a {} in its manifest",
                    found.kind.name(),
                    e.kind.name()
                )
            } else if d.size {
                format!(
                    "its size is {}, its manifest records {}",
                    found.size, e.size
                )
            } else if d.target {
                "its symlink target is not the one its manifest records".to_string()
            } else {
                format!(
                    "its device is {}, its manifest records {}",
                    found.rdev, e.rdev
                )
            };
            return Check::LeaveOut(
                "unreadable",
                err(format!(
                    "{what} (bit rot or tampering in the store): left out of the copy; run \
                     `snapring verify`"
                )),
            );
        }
        if d.metadata() {
            let mut what = Vec::new();
            if d.perm {
                what.push(format!("mode {:o} (recorded {:o})", found.perm, e.perm));
            }
            if d.owner {
                what.push(format!(
                    "owner {}:{} (recorded {}:{})",
                    found.uid, found.gid, e.uid, e.gid
                ));
            }
            if d.mtime {
                what.push(format!("mtime {} (recorded {})", found.mtime, e.mtime));
            }
            return Check::Recorded {
                perm: e.perm,
                uid: e.uid,
                gid: e.gid,
                mtime: (e.mtime.sec, e.mtime.nsec),
                error: err(format!(
                    "{}: not the metadata its manifest records (tampering in the store?): copied with the \
                     metadata its manifest records; run `snapring verify`",
                    what.join(", ")
                )),
            };
        }
        Check::Good
    }
}
