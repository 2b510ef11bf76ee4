//! The hard-link tree store as a [`Repository`]: the flock, the repair, the previous
//! snapshot picked by label and record, staging trees under `.snapring/staging/`, the
//! rotation planned by `rotation::plan` and published through the journal, expired
//! snapshots deleted from `.snapring/trash/`, run records under `.snapring/runs/`.
//! Does file I/O.

use std::sync::atomic::AtomicBool;

use super::lock::{Holder, Lock};
use super::plan_sink::PlanSink;
use super::tree_sink::TreeSink;
use super::{SnapRec, Snapshot, State, Store, adopt, hold, journal::Journal, rotation, trash};
use crate::error::{Ctx, Result};
use crate::fsx::{self, b};
use crate::manifest;
use crate::repo::{Previous, Repository, Ring, Rotation, RunProgress};
use crate::report::{self, RunReport, Status};

/// The renames that publish a run, and what they expire.
pub struct TreeRotation {
    steps: Vec<rotation::Step>,
    expired: Vec<String>,
    staging: String,
    trash_prefix: String,
    /// The snapshots before the rotation (their records move with them).
    before: Vec<Snapshot>,
    /// Expiring snapshots a reader holds: kept, past `retain` (see `hold.rs`).
    deferred: Vec<String>,
    /// The label's newest complete snapshot, kept past `retain` by a run that is not
    /// complete ([`Rotation::kept_complete`]): its name before and after the rotation.
    kept_complete: Option<(String, String)>,
    /// The exclusive holds on the expiring snapshots, until they are in trash.
    _holds: Vec<std::os::fd::OwnedFd>,
}

impl Rotation for TreeRotation {
    fn expired(&self) -> &[String] {
        &self.expired
    }

    fn deferred(&self) -> &[String] {
        &self.deferred
    }

    fn kept_complete(&self) -> Option<&str> {
        self.kept_complete.as_ref().map(|(_, to)| to.as_str())
    }

    fn describe(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|s| match s.to.strip_prefix(&self.trash_prefix) {
                Some(name) => format!("expire {name}"),
                None if s.from == self.staging => format!("publish {}", s.to),
                None if self.kept_complete.as_ref().is_some_and(|(f, _)| *f == s.from) => {
                    format!(
                        "rename {} -> {} (kept past retain: the newest complete snapshot, and this run is partial)",
                        s.from, s.to
                    )
                }
                None if self.deferred.contains(&s.from) => {
                    format!(
                        "rename {} -> {} (expiry deferred: a reader holds it)",
                        s.from, s.to
                    )
                }
                None => format!("rename {} -> {}", s.from, s.to),
            })
            .collect()
    }
}

/// The snapshot to link against: the newest recorded one of this label, else the newest
/// recorded one of any label, else an unrecorded `<label>.0` (a taken-over rsnapshot
/// tree), else any unrecorded one.
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

fn staging_name(id: &str) -> String {
    format!("{}/staging/{id}", super::META_DIR)
}

impl Store {
    /// Takes interrupted run `n`'s staging tree over as run `id`'s: its record (what
    /// its copies hold), then the rename. `None`: it is gone (nothing to adopt).
    fn adopt(&self, n: &str, id: &str, started: fsx::Time) -> Result<Option<adopt::Record>> {
        let mdir = self.meta.join("manifests");
        // No record (a tree of an earlier version, or unreadable): each copy is
        // checked, against the start of the run that made the tree.
        // A record whose copies may not be on disk (not marked synced, and written
        // before a restart or elsewhere) gives its bound alone (`adopt::load`).
        let rec = adopt::load(&mdir, n).unwrap_or_else(|| adopt::Record {
            oldest: self.walk_started(n).map(|t| fsx::Time {
                sec: t.sec - crate::manifest::RACY_MARGIN_SECS,
                nsec: t.nsec,
            }),
            ..adopt::Record::default()
        });
        // The bound of every copy in the tree, before the tree is this run's: a run
        // killed at any point after leaves at least this record of it.
        let oldest = adopt::earlier(rec.oldest, Some(adopt::margin(started)));
        let tmp = adopt::tmp_path(&mdir, id);
        crate::util::write_atomic(&tmp, &adopt::header(oldest)).ctx("write", &tmp)?;
        let r = b(&self.root_fd);
        let (from, to) = (format!("{}/staging/{n}", super::META_DIR), staging_name(id));
        match fsx::rename_noreplace(r, from.as_bytes(), r, to.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx("take over", self.root.join(&from)),
        }
        crate::failpoint::hit("staging.adopted").ctx("take over", self.root.join(&to))?;
        // Its record is this run's now (written anew as it goes); its manifest was
        // never finished.
        self.remove_manifest(n);
        let _ = std::fs::remove_file(adopt::tmp_path(&mdir, n));
        Ok(Some(rec))
    }

    /// When the interrupted run `id` began (its record's start, else its id's second,
    /// which is never later); `None` when neither tells: nothing of it is reused.
    fn walk_started(&self, id: &str) -> Option<fsx::Time> {
        let recorded = self.read_run(id).ok().flatten().and_then(|r| {
            chrono::DateTime::parse_from_rfc3339(&r.started_at)
                .ok()
                .map(|t| t.to_utc())
        });
        let t = recorded.or_else(|| super::select::run_id_time(id))?;
        Some(fsx::Time::from(t))
    }

    /// Deletes the records of a cut run's copies (`manifests/<id>.done`, `.done.tmp`)
    /// whose staging tree is gone: a tree discarded by a snapring before 2026-12-06
    /// left its record behind for good (some hundred bytes a file: 192 MiB for a
    /// million files). A record is kept while `staging/<id>` is there (it is what the
    /// next run takes over), and for a shard run's id. Called after a publish, with the
    /// store's exclusive lock held (no run writes a record then); a failure is warned
    /// about.
    fn remove_stray_done_records(&self) {
        let mdir = self.meta.join("manifests");
        let Ok(names) = std::fs::read_dir(&mdir) else {
            return;
        };
        for name in names.filter_map(|e| e.ok()).map(|e| e.file_name()) {
            let Some(id) = name.to_str().and_then(|n| {
                n.strip_suffix(".done")
                    .or_else(|| n.strip_suffix(".done.tmp"))
            }) else {
                continue;
            };
            if id.is_empty()
                || self.meta.join("staging").join(id).exists()
                || self.meta.join("shards").join(id).exists()
            {
                continue;
            }
            let p = mdir.join(&name);
            tracing::info!(
                "{}: the record of a staging tree that is gone, deleted",
                p.display()
            );
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("{}: cannot delete ({e})", p.display()),
            }
        }
    }

    fn open_prev_root(&self, prev: Option<&Previous>) -> Result<Option<std::os::fd::OwnedFd>> {
        prev.map(|p| {
            let path = self.root.join(&p.name);
            fsx::open_dir(&path).ctx("open previous snapshot", &path)
        })
        .transpose()
    }
}

impl Store {
    /// [`Repository::lock_and_repair`] with the lock's holder named `command` (what a
    /// refused process says holds the store): `snapring finalize` takes it as
    /// `finalize`, not as a `backup`.
    pub fn lock_and_repair_as(&self, run: &str, command: &str) -> Result<Lock> {
        let holder = Holder {
            pid: std::process::id(),
            host: report::hostname(),
            run: Some(run.to_string()),
            command: command.into(),
            since: report::now_rfc3339(),
        };
        let l = self.lock(&holder)?;
        self.repair(&l, run)?;
        // Temp files of bookkeeping writes killed mid-write (a finalize SIGKILLed as it
        // wrote a run's record): nothing else removes them.
        for dir in [self.meta.clone(), self.meta.join("runs")] {
            crate::util::sweep_atomic_tmps(&dir);
        }
        // The xattr probes of a backup killed as it probed (`tree_sink::probe_xattr`):
        // never an interrupted run's tree (`leftover_staging`), nothing else removed
        // them.
        super::tree_sink::sweep_xattr_probes(&self.meta.join("staging"));
        Ok(l)
    }
}

impl Repository for Store {
    type Lock = Lock;
    type Sink = TreeSink;
    /// The staging root's inode: the new snapshot's identity in `snapshots.json`.
    type Sealed = u64;
    type DrySink = PlanSink;
    type Rotation = TreeRotation;

    fn lock_and_repair(&self, run: &str) -> Result<Lock> {
        self.lock_and_repair_as(run, "backup")
    }

    fn lock_shared(&self) -> Result<Lock> {
        Store::lock_shared(self)
    }

    fn unlock(&self, lock: Lock) {
        lock.release();
    }

    fn needs_repair(&self) -> bool {
        Store::needs_repair(self)
    }

    fn previous(&self, label: &str) -> Result<Option<Previous>> {
        let snaps = self.snapshots()?;
        let of_label = || snaps.iter().filter(|s| s.label == label);
        let label_slots = of_label().map(|s| s.slot + 1).max().unwrap_or(0);
        let label_taken_over = of_label().any(|s| s.rec.is_none());
        let mut label_slot_list: Vec<u32> = of_label().map(|s| s.slot).collect();
        label_slot_list.sort_unstable();
        label_slot_list.dedup();
        let Some(snap) = pick_previous(&snaps, label) else {
            return Ok(None);
        };
        let path = self.root.join(&snap.name);
        let fd = fsx::open_dir(&path).ctx("open previous snapshot", &path)?;
        let manifest = snap.rec.as_ref().and_then(|r| {
            match manifest::Reader::open(&self.meta.join("manifests"), &r.id) {
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
        let damaged = match (&manifest, &snap.differs) {
            (None, Some((_, r))) => manifest::read_damaged(&self.meta.join("manifests"), &r.id),
            _ => Default::default(),
        };
        let paired = match (&manifest, &snap.differs) {
            (None, Some((_, r))) => {
                match manifest::Reader::open(&self.meta.join("manifests"), &r.id) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!(
                            "{}: the manifest of run {} it is paired with is unusable ({e}); its files are compared by stat and hashed as they are",
                            snap.name,
                            r.id
                        );
                        None
                    }
                }
            }
            _ => None,
        };
        let record = snap
            .rec
            .as_ref()
            .and_then(|r| self.read_run(&r.id).ok().flatten());
        Ok(Some(Previous {
            label_slots,
            label_taken_over,
            label_slot_list,
            expected_files: record.as_ref().map(|r| r.files_total),
            ring: record.map(|r| Ring {
                run: r.id,
                label: r.label,
                source: r.source,
                prefix: r.prefix,
                retain: r.retain,
            }),
            has_entries: fsx::dir_has_entries(b(&fd)).ctx("read", &path)?,
            run: snap.rec.as_ref().map(|r| r.id.clone()),
            name: snap.name,
            manifest,
            damaged,
            record: paired,
        }))
    }

    fn leftovers(&self) -> Result<Vec<String>> {
        self.leftover_staging()
    }

    /// The newest leftover tree is taken over in place (`adopt.rs`): renamed to this
    /// run's staging name, its record read first. The newest of the others, if any, is
    /// resumed from as a separate tree (each file checked and linked).
    fn begin(&self, id: &str, prev: Option<&Previous>, leftovers: &[String]) -> Result<TreeSink> {
        let started = fsx::wall_clock();
        let staging_path = self.root.join(staging_name(id));
        let mdir = self.meta.join("manifests");
        let adopted = match leftovers.last() {
            Some(n) => self.adopt(n, id, started)?,
            None => None,
        };
        if adopted.is_some() {
            self.adopted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(id.to_string());
        } else {
            std::fs::create_dir(&staging_path).ctx("create staging directory", &staging_path)?;
        }
        let staging = fsx::open_dir(&staging_path).ctx("open staging directory", &staging_path)?;
        let writer = manifest::Writer::create(&mdir, id, fsx::wall_clock())
            .ctx("create manifest in", &mdir)?;
        let prev = self.open_prev_root(prev)?;
        let others = match adopted {
            Some(_) => &leftovers[..leftovers.len() - 1],
            None => leftovers,
        };
        let resume = others.last().and_then(|n| {
            let started = self.walk_started(n)?;
            Some((
                fsx::open_dir(&self.meta.join("staging").join(n)).ok()?,
                started,
            ))
        });
        let remote = crate::concurrency::is_remote(&self.root);
        let trash_path = self.meta.join("trash");
        let trash = fsx::open_dir(&trash_path).ctx("open", &trash_path)?;
        let record = (adopt::path(&mdir, id), adopt::tmp_path(&mdir, id));
        TreeSink::new(staging, prev, resume, writer)
            .probing_store()
            .listing_prev(remote)
            .recording(
                adopted,
                record,
                started,
                trash,
                format!("staging-{id}-stale-"),
            )
            .ctx("create", adopt::tmp_path(&mdir, id))
    }

    fn dry_sink(&self, prev: Option<&Previous>) -> Result<PlanSink> {
        Ok(PlanSink::new(self.open_prev_root(prev)?))
    }

    fn plan_rotation(
        &self,
        label: &str,
        retain: u32,
        id: &str,
        status: Status,
    ) -> Result<TreeRotation> {
        let before = self.snapshots()?;
        let slots: Vec<u32> = before
            .iter()
            .filter(|s| s.label == label)
            .map(|s| s.slot)
            .collect();
        let staging = staging_name(id);
        let trash_prefix = format!("{}/trash/{id}-", super::META_DIR);
        let mut held = Vec::new();
        let mut holds = Vec::new();
        let expiring = rotation::expiring(&slots, retain);
        // Invariant 3: a run that is not complete never expires the last complete
        // snapshot of its label (a source that answers every read with an error made
        // `partial` runs that rotated the only complete one away).
        let keep = match status {
            Status::Complete => None,
            _ => self
                .newest_complete(&before, label)
                .filter(|s| expiring.contains(s)),
        };
        for s in expiring {
            if Some(s) == keep {
                held.push(s);
                continue;
            }
            match hold::try_expire(&self.root.join(format!("{label}.{s}"))) {
                hold::Expiry::Held => held.push(s),
                hold::Expiry::Free(fd) => holds.extend(fd),
            }
        }
        let mut p = rotation::plan_holding(label, &slots, retain, &held, &staging, &trash_prefix);
        self.check_way_clear(&p.steps)?;
        let kept_complete = keep.map(|s| {
            let from = format!("{label}.{s}");
            let to = p
                .steps
                .iter()
                .find(|st| st.from == from)
                .map(|st| st.to.clone());
            (from.clone(), to.unwrap_or(from))
        });
        p.deferred
            .retain(|n| kept_complete.as_ref().is_none_or(|(from, _)| from != n));
        Ok(TreeRotation {
            steps: p.steps,
            expired: p.expired,
            staging,
            trash_prefix,
            before,
            deferred: p.deferred,
            kept_complete,
            _holds: holds,
        })
    }

    /// The state after the rotation, then the journalled renames.
    fn publish(
        &self,
        id: &str,
        status: Status,
        label: &str,
        rotation: TreeRotation,
        staging_ino: u64,
    ) -> Result<String> {
        let mut state = State {
            format: 1,
            snapshots: Vec::new(),
        };
        for s in &rotation.before {
            // The record of a copied snapshot whose tree differs from its manifest is
            // kept for readers to check the tree against, with that verdict and the
            // directory's inode in `differs` (`copied.rs`): never walked again.
            let differs = s.differs.as_ref().map(|(_, r)| r);
            let Some(rec) = s.rec.as_ref().or(differs) else {
                continue;
            };
            if s.label != label {
                state.snapshots.push(rec.clone());
            } else if !rotation.expired.contains(&s.name) {
                // Where the rotation moves it (one slot up, or down to close a gap);
                // one already at its slot past a gap has no step and stays.
                let name = rotation
                    .steps
                    .iter()
                    .find(|st| st.from == s.name)
                    .map_or_else(|| s.name.clone(), |st| st.to.clone());
                state.snapshots.push(SnapRec {
                    name,
                    ..rec.clone()
                });
            }
        }
        let name = format!("{label}.0");
        state.snapshots.insert(
            0,
            SnapRec {
                name: name.clone(),
                id: id.to_string(),
                ino: staging_ino,
                finished_at: report::now_rfc3339(),
                btime: super::birth(&self.root.join(staging_name(id))),
                differs: None,
            },
        );
        let drop_manifests = rotation
            .before
            .iter()
            .filter(|s| s.label == label && rotation.expired.contains(&s.name))
            .filter_map(|s| {
                let r = s.rec.as_ref().or(s.differs.as_ref().map(|(_, r)| r));
                r.map(|r| r.id.clone())
            })
            .collect();
        self.run_journal(&Journal {
            format: 1,
            run: id.to_string(),
            status,
            steps: rotation.steps,
            state_after: state,
            drop_manifests,
        })?;
        // Published: the record of its copies (kept until now, for a next run to take
        // the tree over if this one failed) has no use left.
        let mdir = self.meta.join("manifests");
        for p in [adopt::path(&mdir, id), adopt::tmp_path(&mdir, id)] {
            let _ = std::fs::remove_file(p);
        }
        Ok(name)
    }

    /// A tree taken over from an interrupted run is kept (with its record): it holds
    /// that run's copies too, and the next run resumes from it as it would have from
    /// the interrupted run's tree had this run never started. A tree this run made
    /// fresh is discarded.
    fn discard(&self, id: &str) -> Result<()> {
        let adopted = self.adopted.lock().unwrap_or_else(|e| e.into_inner());
        if adopted.iter().any(|a| a == id) {
            tracing::info!(
                "the failed run's staging tree holds an interrupted run's copies: kept for the next run"
            );
            return Ok(());
        }
        drop(adopted);
        self.discard_staging(id)
    }

    fn tidy(&self, leftovers: &[String]) {
        for n in leftovers {
            if let Err(e) = self.discard_staging(n) {
                tracing::warn!("{e}");
            }
        }
        self.remove_stray_done_records();
    }

    fn delete_expired(&self, jobs: usize, cancel: &AtomicBool) -> Result<u64> {
        trash::empty(self, jobs, cancel)
    }

    fn write_run(&self, rep: &RunReport) -> Result<()> {
        Store::write_run(self, rep)
    }

    fn write_progress(&self, p: &RunProgress) -> Result<()> {
        let path = self.progress_path();
        crate::util::write_atomic(&path, &serde_json::to_vec(p).expect("serializes"))
            .ctx("write progress", path)
    }

    fn clear_progress(&self) {
        let path = self.progress_path();
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("remove {}: {e}", path.display());
        }
    }
}

impl Store {
    /// The slot of `label`'s newest snapshot in `snaps` that is not known to be other
    /// than `complete`: its run's record says `complete`, or nothing says (a taken-over
    /// tree, a record gone): kept rather than lost.
    fn newest_complete(&self, snaps: &[Snapshot], label: &str) -> Option<u32> {
        let mut mine: Vec<&Snapshot> = snaps.iter().filter(|s| s.label == label).collect();
        mine.sort_by_key(|s| s.slot);
        mine.into_iter()
            .find(|s| {
                let run = s
                    .rec
                    .as_ref()
                    .and_then(|r| self.read_run(&r.id).ok().flatten());
                run.is_none_or(|r| r.status == Status::Complete)
            })
            .map(|s| s.slot)
    }

    fn progress_path(&self) -> std::path::PathBuf {
        self.meta.join("progress.json")
    }

    /// The progress of the walk under way, if one is writing it; a missing or
    /// unreadable file is no progress.
    pub fn read_progress(&self) -> Option<RunProgress> {
        serde_json::from_slice(&fsx::read_regular(&self.progress_path()).ok()?).ok()
    }
}

impl Store {
    /// Every rename of a rotation lands on a free name: one no entry has, or one an
    /// earlier step vacates. Something else named like a slot (`daily.1` a symlink, a
    /// file: not a snapshot, so not planned around) made the rename onto it count as
    /// done, as when rolling an interrupted rotation forward: the run said `complete`,
    /// published nothing (its tree stayed in staging, deleted by the next run), and
    /// recorded the old snapshot under the new run's name. Refused before anything is
    /// renamed: the run fails, and nothing changes in the store.
    fn check_way_clear(&self, steps: &[rotation::Step]) -> Result<()> {
        let mut vacated = std::collections::HashSet::new();
        for step in steps {
            if !vacated.contains(step.to.as_str())
                && let Ok(m) = fsx::lstat_at(b(&self.root_fd), step.to.as_bytes())
            {
                return Err(crate::error::Error::Store {
                    path: self.root.join(&step.to),
                    msg: format!(
                        "a {} named like a snapshot is in the way of the rotation, but it is not a snapshot of this store; move it out of the store (or delete it), then run again (nothing was published)",
                        m.kind.name()
                    ),
                });
            }
            vacated.insert(step.from.as_str());
        }
        self.check_renamable(steps)
    }

    /// Every entry a rotation renames, and the directories it renames them in, can be
    /// renamed: an immutable or append-only one (`chattr +i`, `+a`; not even root may
    /// rename it) refused a step after the journal was written, so the run failed with
    /// the store half rotated, and every later command failed again rolling that
    /// journal forward until the flag was removed. Refused before anything is renamed:
    /// the run fails saying which entry and why, and nothing changes in the store.
    fn check_renamable(&self, steps: &[rotation::Step]) -> Result<()> {
        let root = b(&self.root_fd);
        let mut dirs: Vec<&str> = vec!["."];
        for step in steps {
            for end in [&step.from, &step.to] {
                if let Some((parent, _)) = end.rsplit_once('/')
                    && !dirs.contains(&parent)
                {
                    dirs.push(parent);
                }
            }
        }
        let entries = steps.iter().map(|s| (s.from.as_str(), false));
        for (rel, is_parent) in entries.chain(dirs.into_iter().map(|d| (d, true))) {
            let Ok(fd) = fsx::open_dir_beneath(root, rel.as_bytes()) else {
                continue; // not a directory, or gone: the rename says what it is
            };
            let Some(flag) = fsx::unchangeable(b(&fd)) else {
                continue;
            };
            let path = self.root.join(rel);
            let what = if is_parent {
                "the rotation renames entries in it"
            } else {
                "the rotation must rename it"
            };
            return Err(crate::error::Error::Store {
                path: path.clone(),
                msg: format!(
                    "is {flag}, and {what}; nothing was published and nothing was rotated: remove the flag (`chattr -{} {}`) and run again",
                    if flag == "immutable" { "i" } else { "a" },
                    path.display()
                ),
            });
        }
        Ok(())
    }
}
