//! The run report: one JSON document per run (`.snapring/runs/<id>.json`) holding the
//! KPIs (docs/format.md), the status and every listed problem. The catalog, metrics and
//! notifications are all fed from it. Pure data plus the atomic write of the file.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Version of the run-record format; bumped only with a fixture of the old one.
pub const RUN_FORMAT: u32 = 1;

/// How many problems a report lists by name; the rest are counted.
pub const MAX_LISTED_PROBLEMS: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Still going, or killed before it could say otherwise (repaired to `incomplete`).
    Running,
    Complete,
    /// Finished and published; some entries were unreadable or vanished (listed).
    Partial,
    /// Interrupted or out of time; nothing published, nothing rotated.
    Incomplete,
    Failed,
}

/// The exit code (and the report's `exit_code`) of a run to try again later
/// (EX_TEMPFAIL): recorded `failed`, but nothing was lost. Two causes: the store or
/// repository in use by another process (a lock: nothing was done), or the repository's
/// storage not answering (a local repository's disk or NFS server down: its packs and
/// `config` answer EIO; S3 not reached once its retries were spent: connections
/// refused, reset or timed out, HTTP 500/502/503/504), where a restore keeps its record
/// and a shard worker its claimed units, and the same command run later resumes. A
/// mistake that retrying will not mend (a TLS certificate that does not verify, a host
/// name that does not exist, credentials refused: 403) is 1, not this.
pub const EXIT_IN_USE: i32 = 75;

impl Status {
    pub fn exit_code(self) -> i32 {
        match self {
            Status::Complete => 0,
            Status::Failed | Status::Running => 1,
            Status::Partial => 2,
            Status::Incomplete => 3,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Complete => "complete",
            Status::Partial => "partial",
            Status::Incomplete => "incomplete",
            Status::Failed => "failed",
        }
    }
}

/// Why an entry is not in the snapshot as the source has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The source entry could not be read (permission denied, I/O error).
    Unreadable,
    /// Listed in its directory, gone when we came to it.
    Vanished,
    /// Kept changing while it was copied, past every retry: the copy may be torn.
    ChangedDuringCopy,
    /// Some metadata could not be reproduced (for example an xattr the target refuses).
    Metadata,
    /// A restore's: the snapshot's entry was read, but it is not what its manifest
    /// recorded at backup (content, symlink target, device number, mode, owner, time or
    /// extended attributes: bit rot or tampering in the store). The problem says what
    /// the restore did with it.
    Damaged,
    /// A restore's: the target refused to create or write the entry (a name, type or
    /// size its file system cannot hold, a permission), so it is not in the target.
    NotRestored,
    /// A directory of the source that is the store (or local repository) the run writes
    /// into, reached through another mount of the same file system (a bind mount, an NFS
    /// export's subdirectory mounted apart): left out, never walked into.
    StoreInSource,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Escaped path relative to the source root (see docs/format.md).
    pub path: String,
    pub kind: ProblemKind,
    /// What snapring was doing: "stat", "read", "open directory", …
    pub action: String,
    pub error: String,
}

impl Problem {
    /// A directory of the source that could not be opened or listed (its entries unseen):
    /// what `Error::NoFilesLeft` counts.
    pub fn is_unread_dir(&self) -> bool {
        self.kind == ProblemKind::Unreadable
            && matches!(self.action.as_str(), "open directory" | "read directory")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub start: Option<String>,
    pub stop: Option<String>,
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    /// Walk, compare, link and copy.
    pub walk_copy: Phase,
    /// Flush of the destination file system.
    pub sync: Phase,
    /// The journalled renames that publish the snapshot and shift the older ones.
    pub rotation: Phase,
    /// Deleting expired snapshots from `.snapring/trash/`.
    pub remove_expired: Phase,
}

/// Every KPI of one run. Field names are the stable JSON API (docs/format.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub format: u32,
    pub id: String,
    pub job: Option<String>,
    pub label: String,
    pub retain: u32,
    pub window: Option<String>,
    pub prefix: Option<String>,
    /// Every exclusion setting of the run (`excludes`: the patterns given and those
    /// read from the `exclude_from` files; `exclude_caches`; `exclude_if_present`), so
    /// `verify`/`diff --against` leave out what the backup left out.
    #[serde(flatten)]
    pub exclusion: crate::exclude::Settings,
    /// Not UTF-8: `source_raw` beside it holds the bytes (`crate::localpath`).
    #[serde(flatten, with = "crate::localpath::source")]
    pub source: PathBuf,
    /// Not UTF-8: `store_raw` beside it holds the bytes.
    #[serde(flatten, with = "crate::localpath::store")]
    pub store: PathBuf,
    pub host: String,
    pub version: String,
    pub jobs: usize,
    pub dry_run: bool,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_seconds: f64,
    pub status: Status,
    pub exit_code: i32,
    pub message: String,
    /// The snapshot this run published (`daily.0`), if any.
    pub snapshot: Option<String>,
    /// The run whose snapshot unchanged files were linked from.
    pub based_on: Option<String>,
    /// Snapshots this run expired (moved to trash, then deleted).
    pub expired: Vec<String>,
    pub files_total: u64,
    pub dirs_total: u64,
    pub files_transferred: u64,
    pub files_linked: u64,
    /// Of `files_linked`: files an interrupted run had copied into its staging tree,
    /// taken as they are (their bytes hashed as the source's), neither copied nor
    /// linked from the previous snapshot. Absent when 0 (added without a format bump).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_resumed: u64,
    pub link_fallbacks: u64,
    pub changed_during_backup: u64,
    pub errors: u64,
    pub bytes_total: u64,
    pub bytes_transferred: u64,
    /// Sum of the source's regular-file sizes (the EFS-to-EFS "source size").
    pub source_bytes: u64,
    /// Bytes this run added to the backup file system (new copies only).
    pub backup_bytes_added: u64,
    pub throughput_files_per_second: f64,
    pub throughput_bytes_per_second: f64,
    pub peak_rss_bytes: u64,
    pub phases: Phases,
    pub problems: Vec<Problem>,
    /// Problems counted but not listed (past `MAX_LISTED_PROBLEMS`).
    pub problems_not_listed: u64,
    /// Things that went wrong beside the backup itself and did not change its status
    /// (for example the catalog could not be written).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The run stayed on the source's file system (`one_file_system`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_file_system: bool,
    /// With `one_file_system`: the directories on another file system than the
    /// source's, each kept as an empty directory with its own metadata. A note, not a
    /// problem: the user asked for it, so the status stays `complete`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mount_points_skipped: u64,
    /// The first of them (escaped paths, in path order; at most
    /// `traverse::MOUNT_POINTS_NAMED`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_points: Vec<String>,
    /// Who was told about this run, and whether it worked (`snapring run`, the daemon).
    #[serde(default)]
    pub notifications: Vec<NotifyOutcome>,
    /// The bandwidth limit in bytes per second (`--bwlimit`), if one was set.
    #[serde(default)]
    pub bwlimit: Option<u64>,
    /// Wall-clock seconds during which at least one worker waited on the bandwidth limit.
    #[serde(default)]
    pub bwlimit_wait_seconds: f64,
    /// The job's `pre_command`, run before the walk, if it has one.
    #[serde(default)]
    pub pre_command: Option<HookOutcome>,
    /// The job's `post_command`, run after the run, if it has one.
    #[serde(default)]
    pub post_command: Option<HookOutcome>,
    /// A run split across shard workers (`snapring backup --shard`): its workers'
    /// figures. Absent for a single-node run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardSummary>,
    /// A backup into a restic repository: what it uploaded (`None` for the hard-link
    /// store). `store` is then the repository's URL and `snapshot` the snapshot's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<RepositoryKpis>,
    /// A `snapring copy` run: the store snapshot it was asked to copy, as given (a
    /// name, a run id, `latest`, `@TIME`), from its `running` row on, failed or not
    /// (`repository.copied_from` names the snapshot found, once it was). Such a run is
    /// kind `copy` in the catalog. `None` for every other run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<String>,
    /// The run's log, where it is not `<store>/.snapring/logs/<id>.log` (a repository
    /// run's log is beside the catalog).
    /// Not UTF-8: `log_raw` beside it holds the bytes.
    #[serde(flatten, with = "crate::localpath::log::option")]
    pub log: Option<PathBuf>,
}

/// The KPIs of a backup into a restic repository (docs/format.md, "Runs into a
/// repository"). The run's common KPIs map onto the store's: `files_transferred` are
/// the files read, `files_linked` the files whose blob list came from the parent
/// snapshot unread, `backup_bytes_added` is `bytes_uploaded`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RepositoryKpis {
    /// The snapshot's full id (`snapshot` has it too).
    pub snapshot_id: String,
    /// The snapshot the run compared against.
    pub parent: Option<String>,
    pub files_read: u64,
    pub files_unchanged: u64,
    pub bytes_read: u64,
    /// Bytes of the files the run wrote to the repository (packs, index files, the
    /// snapshot file; not its lock).
    pub bytes_uploaded: u64,
    /// Files (S3 objects) the run wrote: packs, index files, the snapshot file.
    pub objects_written: u64,
    pub packs_written: u64,
    pub data_blobs_added: u64,
    pub tree_blobs_added: u64,
    /// The share of the bytes read that the repository had already: 0 all new, 1 all
    /// found (0 when nothing was read).
    pub dedup_ratio: f64,
    /// Retention after the run (`--retain`): every verdict with its reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<serde_json::Value>,
    /// Why retention did not run this time (another process held a lock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_skipped: Option<String>,
    /// A `snapring copy`: the store snapshot it copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<CopiedFrom>,
}

/// What a `snapring copy` run copied, and how it found the unchanged files.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CopiedFrom {
    /// The store snapshot (`daily.0`) and the run that made it.
    pub store_snapshot: String,
    pub run: String,
    /// It was in the repository already (`snapshot` is that copy; nothing written).
    pub already_copied: bool,
    /// Files reused unread (their blobs taken from the parent copy) because both
    /// manifests give the same hash… Found unchanged but with blobs the index no longer
    /// has (a lost pack), a file is read, and not counted here: the two counts add up to
    /// `files_unchanged`.
    pub reused_by_manifest: u64,
    /// …or because they are the parent copy's inode, size and mtime.
    pub reused_by_inode: u64,
}

/// The workers of a shard run, as finalize found them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ShardSummary {
    pub workers: usize,
    pub units: usize,
    /// Units whose claim was taken over from a stalled or dead worker.
    pub takeovers: u64,
    pub per_worker: Vec<WorkerKpi>,
    /// Entries of expired snapshots the finalizing process deleted outside the pieces
    /// counted per worker: what was left in trash once every piece was claimed (the
    /// spine directories, leftovers of earlier runs), the pieces of claimers that died,
    /// and the pieces of a `snapring finalize` run by hand.
    #[serde(default)]
    pub expired_by_finalize: u64,
}

/// One worker's committed units and their figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerKpi {
    pub index: usize,
    pub units: usize,
    pub files_total: u64,
    pub files_transferred: u64,
    pub bytes_transferred: u64,
    /// Seconds its committed units' walks took, added up.
    pub seconds: f64,
    /// Pieces of the expired snapshots it claimed and deleted after the publish
    /// (`shard::expire`), and the entries it removed there.
    #[serde(default)]
    pub expired_pieces: usize,
    #[serde(default)]
    pub expired_entries: u64,
}

/// How a pre or post command went (defined beside the commands that run them).
pub use crate::hooks::HookOutcome;

/// What happened when one notifier was tried (`notify` sends; the report only holds
/// the outcome, so the report does not depend on the notifiers).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NotifyOutcome {
    pub notifier: String,
    pub kind: String,
    pub ok: bool,
    pub attempts: u32,
    /// The last error (secrets removed).
    pub error: Option<String>,
    pub at: String,
}

/// Counters the workers bump while a run goes on.
#[derive(Default)]
pub struct Counters {
    /// The walk was left running on a stalled call (`engine::backup::walk_into`).
    pub walk_abandoned: std::sync::atomic::AtomicBool,
    pub files_total: AtomicU64,
    pub dirs_total: AtomicU64,
    pub files_transferred: AtomicU64,
    pub files_linked: AtomicU64,
    pub files_resumed: AtomicU64,
    pub link_fallbacks: AtomicU64,
    pub changed_during_backup: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes_transferred: AtomicU64,
    pub problems: Mutex<Vec<Problem>>,
    pub problems_total: AtomicU64,
    /// The run's bandwidth limit, shared by its workers (`--bwlimit`; a shard
    /// worker's units share one).
    pub throttle: Option<std::sync::Arc<crate::throttle::Throttle>>,
    /// Mount points not walked into (`one_file_system`): how many, and the first ones
    /// (escaped, in path order).
    pub mount_points: Mutex<(u64, Vec<String>)>,
    /// Copies a stop gave up under the bandwidth limit (escaped path, size): the next
    /// run copies them again from their start.
    pub given_up: Mutex<Vec<(String, u64)>>,
    /// Copies whose setuid/setgid bits were cleared because their owner could not be
    /// set (`fsx::OwnerNotSet::cleared`): said once in the report's warnings
    /// ([`setid_cleared_warning`]), each copy's own `set owner` problem says it too.
    pub setid_cleared: AtomicU64,
    /// Entries linked unchanged whose previous copy lacks attributes the store refused
    /// (`manifest::Entry::refused`), and the first of those names: said once in the
    /// report's warnings ([`xattrs_not_kept_warning`]), not as a problem each (the
    /// run that copied them and was refused reported each).
    pub xattrs_not_kept: Mutex<(u64, Vec<Vec<u8>>)>,
}

/// How many attribute names [`xattrs_not_kept_warning`] names. [`Counters`] keeps one
/// more: whether there were more than these, which the warning says with "…".
const XATTRS_NOT_KEPT_NAMED: usize = 8;

/// The warning of a run that linked `n` entries without the attributes `names` (the
/// first ones, sorted) the store refused ([`Counters::xattrs_not_kept`]): it names
/// [`XATTRS_NOT_KEPT_NAMED`] of them, and "…" only when there are more (at exactly
/// that many it said "…" with nothing left out).
pub fn xattrs_not_kept_warning(n: u64, names: &[Vec<u8>]) -> String {
    let mut shown: Vec<String> = names
        .iter()
        .take(XATTRS_NOT_KEPT_NAMED)
        .map(|n| crate::relpath::shown_bytes(n))
        .collect();
    if names.len() > XATTRS_NOT_KEPT_NAMED {
        shown.push("…".into());
    }
    format!(
        "{n} unchanged entr{} linked without extended attributes the backup file system refused when {} copied ({}): the snapshot does not keep them, nor does a restore give them back",
        if n == 1 { "y" } else { "ies" },
        if n == 1 { "it was" } else { "they were" },
        shown.join(", "),
    )
}

impl Counters {
    /// An entry linked whose previous copy lacks the attributes `names` the store
    /// refused ([`Counters::xattrs_not_kept`]).
    pub fn xattrs_not_kept(&self, names: &[Vec<u8>]) {
        self.xattrs_not_kept_n(1, names);
    }

    /// `n` entries linked without attributes the store refused, among them `names`
    /// (a shard unit's, added up by finalize).
    pub fn xattrs_not_kept_n(&self, n: u64, names: &[Vec<u8>]) {
        let mut x = self
            .xattrs_not_kept
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        x.0 += n;
        for n in names {
            // One past those named: the warning's "…" (more names than it shows).
            if x.1.len() > XATTRS_NOT_KEPT_NAMED {
                break;
            }
            if !x.1.contains(n) {
                x.1.push(n.clone());
            }
        }
    }
}

/// The warning of a run that cleared the setuid/setgid bits of `n` copies
/// ([`Counters::setid_cleared`]).
pub fn setid_cleared_warning(n: u64) -> String {
    format!(
        "setuid/setgid bits cleared on {n} cop{}: this process (not root) could not give {} owner, and those bits are not safe on a file of another owner (as `cp -p` run by a user clears them); each is a `set owner` problem, the manifest records the mode the copy has, and a backup as root keeps the bits",
        if n == 1 { "y" } else { "ies" },
        if n == 1 { "it its" } else { "them their" },
    )
}

/// What a run's summary says of its `files_resumed` after the linked count: nothing
/// when none.
pub fn resumed_words(n: u64) -> String {
    match n {
        0 => String::new(),
        n => format!(" ({n} resumed from an interrupted run's copies)"),
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What stopped a walk whose copies under `--bwlimit` were given up
/// ([`Counters::given_up_warnings`]): what the warning advises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GaveUp {
    /// The backup window (`--window`) ended, or a stop came while one was set.
    Window,
    /// SIGTERM/SIGINT, with no window set: there is no window to widen.
    Stopped,
    /// A shard worker's unit was taken over by a newer generation (its lease lapsed):
    /// the taker copies the files.
    TakenOver,
}

impl Counters {
    /// The directories of the source that could not be read, of the problems listed
    /// ([`Problem::is_unread_dir`]).
    pub fn unread_dirs(&self) -> u64 {
        let l = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        l.iter().filter(|p| p.is_unread_dir()).count() as u64
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn problem(&self, p: Problem) {
        tracing::warn!(path = %p.path, action = %p.action, error = %p.error, "{:?}", p.kind);
        self.problems_total.fetch_add(1, Ordering::Relaxed);
        push_listed(&self.problems, p);
    }

    /// A copy under the bandwidth limit that a stop gave up, and why it matters: a file
    /// the window never leaves time for is never backed up, run after run.
    pub fn given_up(&self, path: String, size: u64) {
        let mut g = self.given_up.lock().unwrap_or_else(|e| e.into_inner());
        g.push((path, size));
    }

    /// What the run's report says of the copies a stop gave up (at most the 5 largest
    /// named, with the time each needs at the limit), and what to do, by what stopped
    /// them (`why`): only a window can be widened.
    pub fn given_up_warnings(&self, why: GaveUp) -> Vec<String> {
        let mut g = self
            .given_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if g.is_empty() {
            return Vec::new();
        }
        g.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let rate = self.throttle.as_ref().map_or(0, |t| t.rate());
        let named: Vec<String> = g
            .iter()
            .take(5)
            .map(|(p, size)| {
                // The limit counts the bytes read and the bytes written (as
                // `Throttle::copy` does); rounded up: a copy that needs 0.95 s is not
                // "about 0 s".
                let secs = match rate {
                    0 => 0,
                    r => size.saturating_mul(2).div_ceil(r),
                };
                format!("{p} ({size} bytes, about {secs} s at the limit)")
            })
            .collect();
        let it = if g.len() == 1 { "it" } else { "them" };
        let what = format!(
            "{} cop{} under the bandwidth limit: {}{}",
            g.len(),
            if g.len() == 1 { "y" } else { "ies" },
            named.join(", "),
            if g.len() > 5 {
                format!(" and {} more", g.len() - 5)
            } else {
                String::new()
            },
        );
        vec![match why {
            GaveUp::Window => format!(
                "the stop gave up {what}; the next run copies {it} again from the start, so a window that does not leave that long never backs {it} up: widen the window or raise --bwlimit"
            ),
            GaveUp::Stopped => format!(
                "the stop gave up {what}; the next run copies {it} again from the start, so a run stopped sooner than that every time never backs {it} up: let it run that long or raise --bwlimit"
            ),
            GaveUp::TakenOver => format!(
                "this worker's lease on the unit lapsed and another worker took it over: this worker gave up {what}; the worker that took the unit over copies {it} from the start"
            ),
        }]
    }

    /// Adds mount points a walk did not enter (`one_file_system`); keeps the first
    /// [`crate::traverse::MOUNT_POINTS_NAMED`] in path order.
    pub fn mount_points(&self, count: u64, first: impl IntoIterator<Item = String>) {
        let mut m = self.mount_points.lock().unwrap_or_else(|e| e.into_inner());
        m.0 += count;
        m.1.extend(first);
        m.1.sort();
        m.1.dedup();
        m.1.truncate(crate::traverse::MOUNT_POINTS_NAMED);
    }

    /// Copies the counters into the report.
    pub fn fill(&self, r: &mut RunReport) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        r.files_total = g(&self.files_total);
        r.dirs_total = g(&self.dirs_total);
        r.files_transferred = g(&self.files_transferred);
        r.files_linked = g(&self.files_linked);
        r.files_resumed = g(&self.files_resumed);
        r.link_fallbacks = g(&self.link_fallbacks);
        r.changed_during_backup = g(&self.changed_during_backup);
        r.bytes_total = g(&self.bytes_total);
        r.bytes_transferred = g(&self.bytes_transferred);
        r.source_bytes = r.bytes_total;
        r.backup_bytes_added = r.bytes_transferred;
        let mp = self.mount_points.lock().unwrap_or_else(|e| e.into_inner());
        r.mount_points_skipped = mp.0;
        r.mount_points = mp.1.clone();
        drop(mp);
        let cleared = g(&self.setid_cleared);
        if cleared > 0 {
            let w = setid_cleared_warning(cleared);
            if !r.warnings.contains(&w) {
                r.warnings.push(w);
            }
        }
        let not_kept = self
            .xattrs_not_kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if not_kept.0 > 0 {
            let mut names = not_kept.1;
            names.sort();
            let w = xattrs_not_kept_warning(not_kept.0, &names);
            r.warnings.retain(|o| {
                !o.contains("linked without extended attributes the backup file system refused")
            });
            r.warnings.push(w);
        }
        if let Some(t) = &self.throttle {
            r.bwlimit = Some(t.rate());
            r.bwlimit_wait_seconds = t.waited().as_secs_f64();
        }
        let mut problems = self
            .problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        problems.sort_by(|a, b| a.path.cmp(&b.path));
        r.errors = g(&self.problems_total);
        r.problems_not_listed = r.errors - problems.len() as u64;
        r.problems = problems;
    }
}

/// Appends `item` unless the list already holds `MAX_LISTED_PROBLEMS` (the rest are
/// only counted by the caller).
pub fn push_listed<T>(list: &Mutex<Vec<T>>, item: T) {
    let mut l = list.lock().unwrap_or_else(|e| e.into_inner());
    if l.len() < MAX_LISTED_PROBLEMS {
        l.push(item);
    }
}

// The helpers below moved to `util` (no module of the crate below them); re-exported
// for the callers that name them here.
pub use crate::util::{hostname, now_rfc3339, peak_rss_bytes, write_atomic};

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy given up under `--bwlimit` says how long it needs at the limit, its bytes
    /// read and written (what the limiter charges), rounded up: 1,000,000 bytes at 2 MiB/s
    /// need about 0.95 s, which was said as "about 0 s".
    #[test]
    fn a_given_up_copy_needs_at_least_a_second_at_the_limit() {
        let c = Counters {
            throttle: Some(std::sync::Arc::new(crate::throttle::Throttle::new(2 << 20))),
            ..Counters::default()
        };
        c.given_up("big".into(), 1_000_000);
        c.given_up("huge".into(), 3 << 20);
        let w = c.given_up_warnings(GaveUp::Window).join("\n");
        assert!(
            w.contains("big (1000000 bytes, about 1 s at the limit)"),
            "{w}"
        );
        assert!(
            w.contains("huge (3145728 bytes, about 3 s at the limit)"),
            "{w}"
        );
    }

    /// The linked-without-attributes warning says "…" only when the run had more names
    /// than it shows: at exactly [`XATTRS_NOT_KEPT_NAMED`] it said "…" with none left
    /// out (review N5), and a ninth name was never kept to tell the two apart.
    #[test]
    fn the_not_kept_warning_says_more_only_past_the_names_it_shows() {
        let warning = |count: usize| {
            let c = Counters::default();
            for i in 0..count {
                c.xattrs_not_kept(&[format!("user.a{i}").into_bytes()]);
            }
            let mut names = c.xattrs_not_kept.lock().unwrap().1.clone();
            names.sort();
            xattrs_not_kept_warning(count as u64, &names)
        };
        let eight = warning(8);
        assert!(!eight.contains('…'), "{eight}");
        assert!(
            eight.contains(
                "(user.a0, user.a1, user.a2, user.a3, user.a4, user.a5, user.a6, user.a7)"
            ),
            "{eight}"
        );
        let nine = warning(9);
        assert!(
            nine.contains(
                "(user.a0, user.a1, user.a2, user.a3, user.a4, user.a5, user.a6, user.a7, …)"
            ),
            "{nine}"
        );
        let many = warning(30);
        assert!(many.contains("user.a7, …)"), "{many}");
    }
}
