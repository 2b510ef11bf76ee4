//! The rotation journal: a rotation's renames are written to `.snapring/journal` before
//! the first one happens, then applied; any command that opens the store rolls an
//! unfinished journal forward. Every step is idempotent ("target exists" means done),
//! so a crash at any instant, even during repair, is repaired by the next command.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::rotation::Step;
use super::{State, Store};
use crate::error::{Ctx, Error, Result};
use crate::failpoint;
use crate::fsx;
use crate::report::{RunReport, Status};
use crate::util::write_atomic;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Journal {
    pub format: u32,
    /// The run whose snapshot this rotation publishes.
    pub run: String,
    /// The final status of that run (written to its record once the renames are done).
    pub status: Status,
    pub steps: Vec<Step>,
    /// The snapshot state once every step is done.
    pub state_after: State,
    /// The runs whose snapshots this rotation expires: their manifests are deleted
    /// once the state no longer names them. A manifest is deleted only with its
    /// snapshot (or with the staging tree of a run never published), never because a
    /// state file fails to name it.
    #[serde(default)]
    pub drop_manifests: Vec<String>,
}

/// Parses a journal and checks every name in it: run ids plain, each step's ends a
/// snapshot name or a plain name in `.snapring/staging/` or `.snapring/trash/`, its
/// state a valid one (`parse_state`). A journal is followed blindly by the repair, so a
/// damaged or hostile one must not name anything outside the store.
pub fn parse_journal(bytes: &[u8]) -> std::result::Result<Journal, String> {
    let j: Journal = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let end_ok = |n: &str| {
        super::rotation::parse_slot(n).is_some()
            || [".snapring/staging/", ".snapring/trash/"]
                .iter()
                .any(|d| n.strip_prefix(d).is_some_and(super::plain_name))
    };
    if !super::plain_name(&j.run) || !j.drop_manifests.iter().all(|i| super::plain_name(i)) {
        return Err("a run id that is not a plain name".into());
    }
    if let Some(s) = j.steps.iter().find(|s| !end_ok(&s.from) || !end_ok(&s.to)) {
        return Err(format!(
            "step {:?} -> {:?} leads outside the store's snapshots, staging and trash",
            s.from, s.to
        ));
    }
    let state = serde_json::to_vec(&j.state_after).map_err(|e| e.to_string())?;
    super::parse_state(&state).map_err(|e| format!("its state: {e:?}"))?;
    Ok(j)
}

/// One rename of a rotation. Moving a directory to another parent (staging to
/// `daily.0`, an expired snapshot to trash) needs write permission on the directory
/// itself, for its `..`: without `CAP_DAC_OVERRIDE` (a store written by a user other
/// than root) a snapshot whose root has the source root's mode without the owner's
/// write bit (0555) refused it, after the journal was written, so every later command
/// failed rolling the journal forward and no backup was ever published. The owner's
/// write bit is lent for the rename and the mode put back at once (a crash between
/// leaves only that bit set on the snapshot's root).
fn rename_step(root: std::os::fd::BorrowedFd<'_>, from: &[u8], to: &[u8]) -> std::io::Result<()> {
    match fsx::rename_noreplace(root, from, root, to) {
        Err(e) if fsx::errno_is(&e, rustix::io::Errno::ACCESS) => {
            let Ok(dir) = fsx::open_dir_beneath(root, from) else {
                return Err(e);
            };
            let perm = fsx::fstat(fsx::b(&dir))?.perm;
            if perm & 0o200 != 0 {
                return Err(e);
            }
            let mode = |p| rustix::fs::fchmod(&dir, rustix::fs::Mode::from_raw_mode(p));
            mode(perm | 0o200)?;
            let r = fsx::rename_noreplace(root, from, root, to);
            mode(perm)?;
            r
        }
        r => r,
    }
}

impl Journal {
    /// The name this journal publishes its run's snapshot under.
    fn published(&self) -> Option<String> {
        self.state_after
            .snapshots
            .iter()
            .find(|s| s.id == self.run)
            .map(|s| s.name.clone())
    }
}

impl Store {
    pub fn journal_path(&self) -> std::path::PathBuf {
        self.meta.join("journal")
    }

    /// Writes the journal, then applies it.
    pub fn run_journal(&self, j: &Journal) -> Result<()> {
        let path = self.journal_path();
        failpoint::hit("journal.before_write").ctx("write journal", &path)?;
        write_atomic(
            &path,
            &serde_json::to_vec_pretty(j).expect("journal serializes"),
        )
        .ctx("write journal", &path)?;
        // From here on the journal is written: a failure leaves the rotation to the next
        // command that can write the store, and says whether the renames were done.
        let pending = |renamed: bool| {
            move |e: Error| Error::PublishPending {
                snapshot: j.published().unwrap_or_else(|| "the run's snapshot".into()),
                renamed,
                source: Box::new(e),
            }
        };
        failpoint::hit("journal.after_write")
            .ctx("write journal", &path)
            .map_err(pending(false))?;
        self.rename_steps(j).map_err(pending(false))?;
        self.settle_journal(j, false).map_err(pending(true))
    }

    /// Rolls a journal found on disk forward, if there is one. Returns its run id.
    pub fn recover_journal(&self) -> Result<Option<String>> {
        let path = self.journal_path();
        let text = match crate::fsx::read_regular(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx("read journal", &path),
        };
        let j: Journal = parse_journal(&text)
            .map_err(|e| Error::Store { path: path.clone(), msg: format!("journal is unreadable ({e}); move it aside only after checking the snapshots by hand") })?;
        tracing::warn!(run = %j.run, "rolling an interrupted rotation forward");
        self.apply_journal(&j, true)
            .map_err(|e| Error::RollForward {
                run: j.run.clone(),
                cause: Box::new(e),
            })?;
        self.note_repaired(&j.run);
        Ok(Some(j.run))
    }

    fn apply_journal(&self, j: &Journal, rolled_forward: bool) -> Result<()> {
        self.rename_steps(j)?;
        self.settle_journal(j, rolled_forward)
    }

    /// The journal's renames, each skipped where its target exists (done before), then
    /// the directories they changed synced.
    fn rename_steps(&self, j: &Journal) -> Result<()> {
        let root = fsx::b(&self.root_fd);
        for step in &j.steps {
            failpoint::hit("rotate.step").ctx("rename", self.root.join(&step.from))?;
            let from = step.from.as_bytes();
            let to = step.to.as_bytes();
            if fsx::exists_at(root, to).ctx("check", self.root.join(&step.to))? {
                continue;
            }
            if !fsx::exists_at(root, from).ctx("check", self.root.join(&step.from))? {
                return Err(Error::Store {
                    path: self.root.clone(),
                    msg: format!(
                        "journal step {} -> {}: neither exists; the store was changed by hand during a rotation",
                        step.from, step.to
                    ),
                });
            }
            rename_step(root, from, to).ctx("rename", self.root.join(&step.from))?;
        }
        for d in [
            &self.root,
            &self.meta.join("staging"),
            &self.meta.join("trash"),
        ] {
            std::fs::File::open(d)
                .and_then(|f| f.sync_all())
                .ctx("sync directory", d)?;
        }
        Ok(())
    }

    /// After the renames: the state file, the run record, the expired manifests, and
    /// the journal's removal.
    fn settle_journal(&self, j: &Journal, rolled_forward: bool) -> Result<()> {
        failpoint::hit("journal.before_state").ctx("write state", self.state_path())?;
        self.write_state(&j.state_after)?;
        failpoint::hit("journal.after_state").ctx("write run record", self.run_path(&j.run))?;
        self.finish_run_record(&j.run, j.status, j.published().as_deref(), rolled_forward)?;
        failpoint::hit("journal.after_record")
            .ctx("remove manifests", self.meta.join("manifests"))?;
        for id in &j.drop_manifests {
            self.remove_manifest(id);
        }
        failpoint::hit("journal.before_remove").ctx("remove journal", self.journal_path())?;
        std::fs::remove_file(self.journal_path()).ctx("remove journal", self.journal_path())?;
        std::fs::File::open(&self.meta)
            .and_then(|f| f.sync_all())
            .ctx("sync directory", &self.meta)?;
        Ok(())
    }

    /// Gives the journal's run its final status and snapshot once its snapshot is
    /// published (see `settle_published`).
    fn finish_run_record(
        &self,
        id: &str,
        status: Status,
        snapshot: Option<&str>,
        rolled_forward: bool,
    ) -> Result<()> {
        let Some(mut r) = self.read_run(id)? else {
            return Ok(());
        };
        if settle_published(&mut r, status, snapshot, rolled_forward) {
            self.write_run(&r)?;
        }
        Ok(())
    }

    /// How rolling the journal forward will leave the store, worked out without
    /// renaming anything (for `open_read`). `None` without a journal, or with one that
    /// cannot be followed (unreadable, or a step whose source and target are both gone:
    /// the repair would stop there too); those are warned about and the store is read
    /// as it is.
    pub(super) fn pending_view(&self) -> Option<Pending> {
        let path = self.journal_path();
        let text = match crate::fsx::read_regular(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("{}: {e}; reading the store as it is", path.display());
                return None;
            }
        };
        let j: Journal = match parse_journal(&text) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(
                    "{}: unreadable journal ({e}); reading the store as it is",
                    path.display()
                );
                return None;
            }
        };
        let root = fsx::b(&self.root_fd);
        // Virtual name -> where that entry is now (`None`: renamed away).
        let mut moved: HashMap<String, Option<String>> = HashMap::new();
        let exists = |moved: &HashMap<String, Option<String>>, n: &str| match moved.get(n) {
            Some(at) => Ok(at.is_some()),
            None => fsx::exists_at(root, n.as_bytes()),
        };
        for step in &j.steps {
            match (exists(&moved, &step.to), exists(&moved, &step.from)) {
                (Ok(true), _) => continue,
                (Ok(false), Ok(true)) => {
                    let at = match moved.insert(step.from.clone(), None) {
                        Some(Some(at)) => at,
                        _ => step.from.clone(),
                    };
                    moved.insert(step.to.clone(), Some(at));
                }
                (Ok(false), Ok(false)) => {
                    tracing::warn!(
                        "{}: journal step {} -> {}: neither exists; reading the store as it is",
                        path.display(),
                        step.from,
                        step.to
                    );
                    return None;
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!("{}: {e}; reading the store as it is", path.display());
                    return None;
                }
            }
        }
        let on_disk = fsx::read_dir_names(root).ok()?;
        let mut names: Vec<(String, String)> = on_disk
            .into_iter()
            .filter_map(|n| String::from_utf8(n).ok())
            .filter(|n| !moved.contains_key(n))
            .map(|n| (n.clone(), n))
            .collect();
        names.extend(
            moved
                .into_iter()
                .filter(|(n, _)| !n.contains('/'))
                .filter_map(|(n, at)| at.map(|at| (n, at))),
        );
        names.sort();
        tracing::warn!(
            run = %j.run,
            "{}: a rotation was interrupted; reading the store as rolling it forward will leave it (the next backup, or `snapring list` where the store can be written, finishes it)",
            self.root.display()
        );
        Some(Pending {
            snapshot: j.published(),
            run: j.run,
            status: j.status,
            names,
            state: j.state_after,
        })
    }
}

/// A rotation waiting to be rolled forward, as `open_read` shows it.
pub(super) struct Pending {
    pub run: String,
    pub status: Status,
    /// The name the journal publishes the run's snapshot under (`daily.0`).
    pub snapshot: Option<String>,
    /// Top-level names once rolled forward, each with where (relative to the store
    /// root) that entry is now.
    pub names: Vec<(String, String)>,
    pub state: State,
}

/// What publishing does to the record of the run a journal publishes: a record still
/// `running` (killed during the rotation) or `failed` (the rotation hit an error and a
/// later command finished it) gets the journal's status and the name it published the
/// snapshot under, as the run would have had it finished. Returns whether it changed.
/// `rolled_forward`: by a later command (the run was stopped during its rotation), not by
/// the run's own publish; only then is an empty message filled in.
pub(super) fn settle_published(
    r: &mut RunReport,
    status: Status,
    snapshot: Option<&str>,
    rolled_forward: bool,
) -> bool {
    if !matches!(r.status, Status::Running | Status::Failed) {
        return false;
    }
    if r.status == Status::Failed {
        r.message = format!("{}{}", crate::error::PUBLISHED_LATER, r.message);
    } else if rolled_forward && r.message.is_empty() {
        // Killed during its rotation: its figures were recorded before the journal.
        let what = match status {
            Status::Partial => format!(
                "{} entries could not be backed up as they are; see problems",
                r.errors
            ),
            _ => format!(
                "{} files ({} copied, {} linked)",
                r.files_total, r.files_transferred, r.files_linked
            ),
        };
        r.message = format!("{what}; stopped during its rotation, which a later command finished");
    }
    r.status = status;
    r.exit_code = status.exit_code();
    if r.snapshot.is_none() {
        r.snapshot = snapshot.map(str::to_string);
    }
    true
}
