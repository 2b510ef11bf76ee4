//! The repository seam: what a backup run needs of its target besides writing a tree
//! (that is [`Sink`]'s): the lock, the repair of what a killed run left, the previous
//! snapshot to compare with, a sink for the new snapshot (or a recording one for a dry
//! run), the journalled publish with its rotation and retention, the deletion of
//! expired snapshots, the run record, and the progress of the walk under way. The engine (`engine::backup`) runs a backup
//! against this trait; it depends on no store. No I/O of its own.
//!
//! Implementation: `store::Store` (the hard-link tree store, `store/repo.rs`). An
//! object-store repository and a shard worker's view of one are the next ones.

use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::manifest;
use crate::report::{RunReport, Status};
use crate::sink::{Plan, Sink};

/// The snapshot a new one is compared with and linked against.
pub struct Previous {
    /// Its name (`daily.0`).
    pub name: String,
    /// The run that made it, when recorded (a taken-over tree has none).
    pub run: Option<String>,
    /// Its manifest, when it has a usable one (else entries are compared by stat).
    pub manifest: Option<manifest::Reader>,
    /// Without a manifest to trust (a copied tree that differs from its record's:
    /// `store::Snapshot::differs`): the entries the last `verify` of it against that
    /// record found damaged, copied from the source rather than linked, as a manifest's
    /// own list is (`manifest::Reader::damaged`). Empty otherwise.
    pub damaged: std::collections::HashSet<crate::relpath::RelPath>,
    /// Without a manifest to trust, the manifest of the run its tree is paired with
    /// (a copied tree that differs from it, a tree paired by its run record after a
    /// damaged state: `store::Snapshot::differs`): what its files held when they were
    /// backed up. A file compared by stat is linked from the tree only when it still
    /// hashes as this record says; else it is copied from the source (a rotten file
    /// keeps its size and mtime). `None`: a trusted manifest, or a tree with no record
    /// at all (taken over from another tool).
    pub record: Option<manifest::Reader>,
    /// Whether its root has any entry (the empty-source guard compares with it).
    pub has_entries: bool,
    /// The files its run walked (its record's `files_total`): what the progress line
    /// and `serve` measure a running walk against. `None` without a record.
    pub expected_files: Option<u64>,
    /// What its run backed up and kept, from its record: `None` without one.
    pub ring: Option<Ring>,
    /// The run's label now (whatever label this snapshot is of): its highest slot plus
    /// one (0 without any), and whether any of its snapshots has no record (taken over
    /// from another tool, which recorded nothing of what it keeps).
    pub label_slots: u32,
    pub label_taken_over: bool,
    /// The slot numbers the label's snapshots have now, ascending (gaps allowed): what
    /// a `retain` expires is named from them (the store's rotation expires those past
    /// the `retain - 1` first).
    pub label_slot_list: Vec<u32>,
}

impl Previous {
    /// Its record's count of files, when it is a snapshot of `label`: the shrink guard
    /// ([`crate::error::shrank`]) compares a run with its own label's previous snapshot
    /// only (another label's newest recorded snapshot stands in when the label's own
    /// were all taken over, unrecorded, and its count says nothing of this run's).
    pub fn files_of_label(&self, label: &str) -> Option<u64> {
        self.name
            .strip_prefix(label)
            .is_some_and(|r| r.starts_with('.'))
            .then_some(self.expected_files)
            .flatten()
    }
}

/// How a run goes on from its label's snapshots (`prev`, with what the label holds),
/// as [`Ring`] says: refused when they are of another tree than `root` (the source,
/// below it the prefix; canonical where it exists) unless `new_source`; and the
/// `retain` it keeps, with a warning to give. Without a `retain` of its own
/// (`retain_default`) a run keeps what the label's last run kept (a manual run's
/// default of 7 expired a ring kept at 30), and while the label holds snapshots taken
/// over from another tool, at least as many slots as it has (the first run on an
/// rsnapshot store of 10 expired 3 of them). A `retain` given that expires more than
/// the ring's would, or expires taken-over snapshots, is obeyed and warned about.
pub fn continue_ring(
    prev: Option<&Previous>,
    store: &std::path::Path,
    label: &str,
    root: &std::path::Path,
    new_source: bool,
    retain: u32,
    retain_default: bool,
) -> Result<(u32, Option<String>)> {
    let Some(prev) = prev else {
        return Ok((retain, None));
    };
    let ring = prev.ring.as_ref().filter(|r| r.label == label);
    if let Some(ring) = ring
        && !same_tree(&ring.root(), root)
        && !new_source
    {
        return Err(crate::error::Error::Store {
            path: store.to_path_buf(),
            msg: format!(
                "the {label} snapshots in this store are of {} (run {}), not of {}: this run's rotation would expire their history, so it made no snapshot and expired none. Give this source a store of its own (another --dest or --folder) or another --label; if it is the same data moved, run `snapring backup` once with --new-source (for a job, with --config FILE --job NAME)",
                crate::relpath::shown(&ring.root()),
                ring.run,
                crate::relpath::shown(root),
            ),
        });
    }
    if retain_default {
        let mut keep = ring.map_or(retain, |r| r.retain);
        if let Some(r) = ring
            && r.retain != retain
        {
            tracing::info!(
                "keeping {} {label} snapshots, as the label's last run {} did (give --retain to change it)",
                r.retain,
                r.run
            );
        }
        if prev.label_taken_over && prev.label_slots > keep {
            keep = prev.label_slots;
            tracing::info!(
                "keeping {keep} {label} snapshots, as many slots as the label has: some were taken over from another tool, which recorded nothing of what it keeps (give --retain to change it)"
            );
        }
        return Ok((keep, None));
    }
    // The new snapshot makes one more: past the `retain - 1` newest the label's
    // snapshots expire, by slot order whatever the gaps between their slots.
    // (`store::rotation::expiring`'s rule, which this layer does not reach.)
    let expiring: Vec<u32> = prev
        .label_slot_list
        .iter()
        .copied()
        .skip((retain as usize).saturating_sub(1))
        .collect();
    let more_than_before = match ring {
        Some(r) => r.retain > retain,
        None => prev.label_taken_over,
    };
    if !expiring.is_empty() && more_than_before {
        let w = format!(
            "retain {retain} is lower than what the {label} snapshots had ({}): this run expires {}",
            match ring {
                Some(r) => format!("{} in the label's last run {}", r.retain, r.run),
                None => format!("{} slots taken over from another tool", prev.label_slots),
            },
            expired_names(label, &expiring),
        );
        tracing::warn!("{w}");
        return Ok((retain, Some(w)));
    }
    Ok((retain, None))
}

/// The snapshots of `label` at `slots` (ascending), as a warning names those a run
/// expires: each by its name now, the first few and the last when there are many, with
/// their count. Before, "expires daily.{retain-1} and older" named a slot, which is what
/// expires only without gaps: of daily.0, daily.4 and daily.9 with retain 2, daily.4 and
/// daily.9 expire, and there is no daily.1.
fn expired_names(label: &str, slots: &[u32]) -> String {
    const NAMED: usize = 4;
    let name = |s: &u32| format!("{label}.{s}");
    let names: Vec<String> = match slots.len() > NAMED + 1 {
        true => slots[..NAMED]
            .iter()
            .map(name)
            .chain(std::iter::once("…".to_string()))
            .chain(slots.last().map(name))
            .collect(),
        false => slots.iter().map(name).collect(),
    };
    match slots.len() {
        1 => format!("1 snapshot, {}", names[0]),
        n => format!("{n} snapshots: {}", names.join(", ")),
    }
}

/// Whether two trees are the same: by their canonical paths where they exist (a
/// symlink on one side), else by the paths as given.
fn same_tree(a: &std::path::Path, b: &std::path::Path) -> bool {
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    a == b || canon(a) == canon(b)
}

/// The settings of the run that made a snapshot, which the next run of its label
/// continues: the same source (and prefix), and by default the same `retain`.
#[derive(Clone, Debug, PartialEq)]
pub struct Ring {
    pub run: String,
    pub label: String,
    /// Canonical, as the record has it.
    pub source: std::path::PathBuf,
    /// Escaped, as the record has it.
    pub prefix: Option<String>,
    pub retain: u32,
}

impl Ring {
    /// The tree its snapshots are of: the source, below it the prefix (a shard run
    /// records the source with the prefix joined, a single-node run them apart, the
    /// prefix escaped as every recorded path is).
    pub fn root(&self) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        match &self.prefix {
            Some(p) => match crate::relpath::unescape(p) {
                Ok(bytes) => self.source.join(std::ffi::OsStr::from_bytes(&bytes)),
                Err(_) => self.source.join(p),
            },
            None => self.source.clone(),
        }
    }
}

/// How far the walk of a running backup is, rewritten about once a second while it
/// walks (`snapring serve` shows it). Figures of the moment, never a record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunProgress {
    pub run: String,
    pub started_at: String,
    pub updated_at: String,
    pub files_done: u64,
    pub dirs_done: u64,
    pub bytes_copied: u64,
    /// The previous snapshot's file count, if known.
    pub files_expected: Option<u64>,
    /// Files walked per second since the walk started.
    pub files_per_second: f64,
    /// `files_done / files_expected` in percent, capped at 99 while running.
    pub percent: Option<f64>,
    /// Seconds until `files_expected` at the current rate; `None` in the first seconds
    /// or once past the expected count.
    pub eta_seconds: Option<u64>,
}

/// A rotation, planned before anything is published.
pub trait Rotation {
    /// The snapshots it expires.
    fn expired(&self) -> &[String];
    /// The snapshots it would expire but keeps, because a reader holds them (the next
    /// run expires them).
    fn deferred(&self) -> &[String] {
        &[]
    }
    /// The snapshot it would expire but keeps, because it is its label's newest
    /// `complete` one and the run is not `complete` (invariant 3: history goes only
    /// when a newer complete snapshot exists; a later complete run expires it).
    fn kept_complete(&self) -> Option<&str> {
        None
    }
    /// Its steps in words (`expire daily.6`, `rename daily.0 -> daily.1`,
    /// `publish daily.0`), for a dry run's plan.
    fn describe(&self) -> Vec<String>;
}

/// A backup target's bookkeeping. Calls come from the one thread that runs the backup.
pub trait Repository {
    /// Held for the whole run; released when dropped or by [`Repository::unlock`].
    type Lock;
    type Sink: Sink<Sealed = Self::Sealed> + Send + 'static;
    /// What sealing the new snapshot leaves for the publish step.
    type Sealed;
    /// A dry run's recording sink.
    type DrySink: Sink<Sealed = Plan> + Send + 'static;
    type Rotation: Rotation;

    /// The exclusive lock of run `run` (the lock names it, so a second run can say who
    /// holds the store); the repair of what a dead holder left follows at once.
    fn lock_and_repair(&self, run: &str) -> Result<Self::Lock>;

    /// A shared lock for a dry run (no repair: it writes nothing).
    fn lock_shared(&self) -> Result<Self::Lock>;

    fn unlock(&self, lock: Self::Lock);

    /// Whether a crash left work for the repair (a dry run plans as if it were done).
    fn needs_repair(&self) -> bool;

    /// The snapshot of `label` (else of any label) to compare with.
    fn previous(&self, label: &str) -> Result<Option<Previous>>;

    /// Trees interrupted runs left, oldest first; the newest is resumed from.
    fn leftovers(&self) -> Result<Vec<String>>;

    /// Starts the new snapshot of run `id` in a staging area, resuming what
    /// `leftovers` (from [`Repository::leftovers`]) hold.
    fn begin(&self, id: &str, prev: Option<&Previous>, leftovers: &[String]) -> Result<Self::Sink>;

    /// A sink that records a dry run's plan.
    fn dry_sink(&self, prev: Option<&Previous>) -> Result<Self::DrySink>;

    /// Plans the rotation that publishing run `id` as `<label>.0` makes, keeping `retain`;
    /// a run whose `status` is not `complete` keeps its label's newest complete snapshot
    /// past `retain` ([`Rotation::kept_complete`]).
    fn plan_rotation(
        &self,
        label: &str,
        retain: u32,
        id: &str,
        status: Status,
    ) -> Result<Self::Rotation>;

    /// Publishes the sealed snapshot with its rotation, atomically as far as a reader
    /// can tell (journalled: a crash at any point is repaired by the next command).
    /// Returns the new snapshot's name.
    fn publish(
        &self,
        id: &str,
        status: Status,
        label: &str,
        rotation: Self::Rotation,
        sealed: Self::Sealed,
    ) -> Result<String>;

    /// Discards run `id`'s unpublished snapshot; one it took over from an interrupted
    /// run is kept instead, for the next run to resume from.
    fn discard(&self, id: &str) -> Result<()>;

    /// After a publish: discards the interrupted runs' trees and what no snapshot
    /// refers to any more.
    fn tidy(&self, leftovers: &[String]);

    /// Deletes expired snapshots on `jobs` workers until done or `cancel`; what is left
    /// is deleted by a later run. Returns the entries removed.
    fn delete_expired(&self, jobs: usize, cancel: &AtomicBool) -> Result<u64>;

    /// Writes the run record.
    fn write_run(&self, rep: &RunReport) -> Result<()>;

    /// Replaces the progress of the walk under way (one backup at a time holds the
    /// store, so there is one).
    fn write_progress(&self, p: &RunProgress) -> Result<()>;

    /// Removes the progress once the walk has ended; a missing one is fine.
    fn clear_progress(&self);
}
