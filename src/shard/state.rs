//! The files of one shard run, under `<store>/.snapring/shards/<run-id>/`, and the
//! atomic steps on them (docs/scale-out.md has the layout). Every file another worker
//! may race for is made by an exclusive create: the plan, each commit marker and the
//! finalized marker with their complete content (written under a private name, then
//! `link`ed to their final name, which fails if it exists); the claims of units and of
//! the plan by one `O_EXCL` create, then written (their lease is their mtime, whatever
//! they hold, so one seen empty needs no special case). Does file I/O.
//!
//! - `plan.json`: the cut (`plan.rs`), the run's parameters, the previous snapshot;
//! - `planning.g<generation>`: who makes the plan (one worker sizes the source, the
//!   others wait for `plan.json`); a lease like a unit's, taken over the same way;
//! - `claims/<unit>.g<generation>`: who works on a unit; the lease is the file's mtime plus the
//!   lease length, renewed by touching it; a claim past its lease is taken over by
//!   creating generation `generation+1`;
//! - `done/<unit>`: the unit's commit, naming the generation whose work counts, with
//!   its counters and problems;
//! - `parts/<k>/<unit>.g<generation>.mf`: that generation's manifest part
//!   ([`RunDir::part_dir`]); a run of an older snapring has its parts in `parts/`
//!   itself (an `.idx` beside each) and its counters in `counts/<unit>.g<generation>.json`;
//! - `work/<unit>.g<generation>/`: where it is built; `tree/`: the run's tree once committed
//!   units are moved in; `finalized`: the run's report, once published;
//! - `refused/w<index>`: a worker refused because its settings differ from the plan's
//!   ([`Refused`]); finalize publishes no run that has one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::plan::{Cut, Unit};
use crate::error::{Ctx, Error, Result};
use crate::relpath::{RelPath, escape, unescape};
use crate::report::Problem;

/// The lease of a claim when `SNAPRING_SHARD_LEASE` does not say (renewed every third
/// of it while the unit is worked on).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// The lease length: `SNAPRING_SHARD_LEASE` (`2s`, `5m`), else [`DEFAULT_LEASE`].
pub fn lease() -> Duration {
    std::env::var("SNAPRING_SHARD_LEASE")
        .ok()
        .and_then(|v| crate::util::parse_duration(&v).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_LEASE)
}

/// Now, as a claim's `at` has it (to the millisecond, rounded down), for
/// [`Holder::made_before`].
pub fn started_now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(&crate::util::now_rfc3339())
        .map(|t| t.to_utc())
        .unwrap_or_else(|_| chrono::Utc::now())
}

/// One unit as `plan.json` holds it (names `%XX`-escaped).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnitRec {
    pub id: String,
    pub dir: String,
    pub lo: Option<String>,
    pub hi: Option<String>,
    pub weight: u64,
    pub home: usize,
    /// See [`Unit::anchor`]; absent (false) in plans written before it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anchor: bool,
}

/// `plan.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlanFile {
    pub format: u32,
    pub run: String,
    pub workers: usize,
    /// The source directory backed up (after `--prefix`), canonical. Not UTF-8:
    /// `source_raw` beside it holds the bytes (`crate::localpath`).
    #[serde(flatten, with = "crate::localpath::source")]
    pub source: PathBuf,
    pub label: String,
    pub retain: u32,
    /// The snapshot every worker links against, and its run.
    pub prev: Option<String>,
    pub prev_run: Option<String>,
    /// Where the weights came from: `manifest` or `walk`.
    pub sized_by: String,
    pub created_at: String,
    pub created_by: String,
    /// A run into a restic repository: the hostname its snapshot records, its parent's
    /// (the lineage's), else the planner's, so that retention, which groups snapshots
    /// by host and paths, sees one lineage whichever node plans each night.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub cap: u64,
    /// Manifest parts are spread over this many subdirectories of `parts/`
    /// ([`RunDir::part_dir`]); absent (0: all in `parts/`) in plans written before.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub part_dirs: u32,
    /// `one_file_system` (`-x`): the plan's sizes and spine, every unit's walk and
    /// finalize stay on the source's file system; a worker started otherwise is
    /// refused. Part of the plan's hash, as every field. Absent (false) in plans
    /// written before it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_file_system: bool,
    pub spine: Vec<String>,
    pub units: Vec<UnitRec>,
    /// The source directory's inode number where the plan was made: a worker or
    /// finalize whose source has another is on a node where it is not mounted (an
    /// empty mount point, a failed automount) and is refused, instead of committing
    /// its units empty into a snapshot called complete. NFS and EFS give every client
    /// the same number; FUSE and SMB may not, and there it is not recorded
    /// (`concurrency::inode_numbers_shared`). Absent in plans written before it, or
    /// not recorded: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ino: Option<u64>,
    /// What the planner warned of for the whole run (a `--retain` that expires more
    /// than the label's last run kept): finalize puts them in the run's report.
    /// Absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// `--allow-empty` of the worker that made the plan: finalize publishes a run that
    /// keeps no file (only directories) while the label's previous snapshot holds files
    /// (else `Error::NoFilesLeft`; a finalize given `--allow-empty` itself publishes it
    /// too). Absent (false) in plans written before it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_empty: bool,
    /// The owner the store gives every file when it refuses owners even to a process
    /// that may give files away (an NFS export with `root_squash`), as the planner
    /// probed it once for the run (`store::tree_sink::probe_store`): workers
    /// try no `fchown`, finalize marks the manifest (`manifest::owners_marker`). Absent:
    /// the store keeps owners (or plans written before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owners_held: Option<(u32, u32)>,
    /// The granularity (ns) to which the store keeps file times, when coarser than the
    /// nanosecond (whole seconds: some NFS servers), as the planner probed it with the
    /// owners: finalize marks the manifest (`manifest::times_marker`), which records the
    /// source's exact times. Absent: the store keeps times whole (or older plans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times_held: Option<u64>,
    /// What the run leaves out (`crate::exclude::Settings`, the pattern files as the
    /// planner read them): every worker must have the same, and finalize records it
    /// in the run record. Absent: nothing.
    #[serde(flatten)]
    pub exclusion: crate::exclude::Settings,
}

/// The inode number of source directory `source` (followed if a symlink, as the walk
/// opens it).
pub fn source_ino(source: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(source)?.ino())
}

/// Refuses a source that is not the directory `plan` was made from
/// ([`PlanFile::source_ino`]).
pub fn check_source_ino(
    plan: &PlanFile,
    source: &Path,
) -> std::result::Result<(), super::ShardError> {
    let Some(planned) = plan.source_ino else {
        return Ok(());
    };
    let here = source_ino(source)
        .map_err(|e| crate::error::io_error(e, "stat source", source.to_path_buf()))?;
    if here != planned {
        return Err(super::ShardError::Failed(
            crate::error::Error::SourceNotPlanned {
                path: source.to_path_buf(),
                planned,
                here,
            },
        ));
    }
    Ok(())
}

/// Whether `plan` was made from an empty source and does not allow one: its units
/// weigh nothing (a walk that found no entry, or none the exclusions keep; a plan sized
/// from a manifest weighs what the previous snapshot holds).
pub fn planned_from_nothing(plan: &PlanFile) -> bool {
    !plan.allow_empty && plan.units.iter().all(|u| u.weight == 0)
}

/// Whether snapshot `name` of the store at `root` has any entry (a plan's `prev`).
pub fn snapshot_has_entries(root: &Path, name: Option<&str>) -> bool {
    name.is_some_and(|n| std::fs::read_dir(root.join(n)).is_ok_and(|mut d| d.next().is_some()))
}

/// Why run `plan` can never be built, if its plan was made from an empty source
/// ([`planned_from_nothing`]) while its previous snapshot has entries
/// (`prev_has_entries`): by a worker on a node where the source was not mounted, of a
/// snapring that refused such a worker only after it had planned. A worker whose source
/// is mounted is another directory than the plan's and is refused; one whose source is
/// empty is refused as empty: no worker builds its units, so asking for their reruns
/// (exit 75) would have a Job retry it for ever.
pub fn unbuildable(plan: &PlanFile, prev_has_entries: bool) -> Option<String> {
    // A plan with no recorded inode (FUSE, SMB sources) is built by any mounted worker.
    (prev_has_entries && plan.source_ino.is_some() && planned_from_nothing(plan)).then(|| {
        format!(
            "run {} was planned from an empty source {} ({}{}), but the previous snapshot {} is not empty: the plan was made on a node where the source file system was not mounted, so no worker can build it (a mounted source is another directory than the plan's); nothing was backed up: start a new run id",
            plan.run,
            crate::relpath::shown(&plan.source),
            plan.created_by,
            plan.source_ino
                .map(|i| format!(", inode {i}"))
                .unwrap_or_default(),
            plan.prev.as_deref().unwrap_or("-"),
        )
    })
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Subdirectories of `parts/` in a new plan. Creating, renaming and removing names
/// takes the directory's lock in the kernel, one round trip at a time on NFS: finalize
/// removed 94 parts of `parts/` in 0.25 s at 1 ms latency, one after the other, at the
/// end of every run. Spread over 8 directories they are removed 8 at a time.
pub const PART_DIRS: u32 = 8;

impl PlanFile {
    pub fn cut(&self) -> std::result::Result<Cut, String> {
        let rel = |s: &str| RelPath::from_escaped(s);
        let name = |s: &Option<String>| s.as_deref().map(unescape).transpose();
        let units = self
            .units
            .iter()
            .map(|u| {
                Ok(Unit {
                    id: u.id.clone(),
                    dir: rel(&u.dir)?,
                    lo: name(&u.lo)?,
                    hi: name(&u.hi)?,
                    weight: u.weight,
                    home: u.home,
                    anchor: u.anchor,
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        let mut anchored = std::collections::BTreeSet::new();
        for u in &units {
            if !plain(&u.id) || u.home >= self.workers || (u.anchor && !anchored.insert(&u.dir)) {
                return Err(format!("bad unit {:?} in plan", u.id));
            }
        }
        Ok(Cut {
            spine: self
                .spine
                .iter()
                .map(|s| rel(s))
                .collect::<std::result::Result<_, _>>()?,
            units,
            cap: self.cap,
        })
    }

    pub fn units_of(cut: &Cut) -> Vec<UnitRec> {
        cut.units
            .iter()
            .map(|u| UnitRec {
                id: u.id.clone(),
                dir: u.dir.escaped(),
                lo: u.lo.as_deref().map(escape),
                hi: u.hi.as_deref().map(escape),
                weight: u.weight,
                home: u.home,
                anchor: u.anchor,
            })
            .collect()
    }
}

/// A commit marker's contents (read from `p`).
fn parse_commit(p: PathBuf, bytes: &[u8]) -> Result<Commit> {
    serde_json::from_slice(bytes).map_err(|err| Error::Store {
        path: p,
        msg: format!(
            "unreadable commit marker ({} bytes): {err}; commit markers are created whole, so it was damaged since, and the unit's copies may already be in the run's tree: the run cannot be finalized with it (removing it does not rebuild the unit safely); back the source up again under a new run id",
            bytes.len()
        ),
    })
}

/// A name read from a file that becomes a path component: letters, digits, `.`, `_`,
/// `-`, not starting with `.`.
fn plain(s: &str) -> bool {
    super::check_run_id(s).is_ok()
}

/// Who holds a claim (the file's content; its mtime is the lease).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    pub worker: usize,
    pub host: String,
    pub pid: u32,
    pub at: String,
    /// Random, new for each holder made: two claims written by one process in the same
    /// millisecond (two lanes of a worker) differ. A conditional write to S3 that is
    /// refused takes the object as its own when it holds its bytes (its own earlier
    /// try landed), so equal bodies would let both lanes build the unit. Absent in
    /// files written before it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nonce: String,
    /// The holder's pid namespace ([`crate::util::pid_namespace`]) and boot
    /// ([`crate::util::boot_id`]): its pid says whether it lives only where both are
    /// this process's. Absent in files written before them (then the host name alone
    /// decides, as it did).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pid_ns: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
}

impl Holder {
    pub fn me(worker: usize) -> Holder {
        Holder {
            worker,
            host: crate::util::hostname(),
            pid: std::process::id(),
            at: crate::util::now_rfc3339(),
            nonce: hex::encode(crate::restic::random_bytes::<8>()),
            pid_ns: crate::util::pid_namespace().to_string(),
            boot_id: crate::util::boot_id().to_string(),
        }
    }

    /// Whether the holder's pid names a process this one can see: same host name, and
    /// (where the holder recorded them) the same pid namespace and boot. Two pods of
    /// one node with `hostNetwork: true` share the node's host name but not their pids.
    pub fn shares_pids_here(&self) -> bool {
        crate::util::same_pids(&self.host, &self.pid_ns, &self.boot_id)
    }

    /// Whether the claim was made before `t` (its `at`, by its holder's clock; `false`
    /// when unreadable). With `t` from [`started_now`] taken before a process's first
    /// claim: of two processes, only the later one can find the other's claims made
    /// before it started, whatever their clocks say (each claim is made after its
    /// maker's `t`), so a retried process takes its dead predecessor's claims at once
    /// and two live ones cannot take units back and forth.
    pub fn made_before(&self, t: chrono::DateTime<chrono::Utc>) -> bool {
        chrono::DateTime::parse_from_rfc3339(&self.at).is_ok_and(|at| at < t)
    }

    /// Whether this is a process of this host (in this pid namespace, this boot) that
    /// has exited (a zombie included). Elsewhere only the lease can tell.
    pub fn is_dead_here(&self) -> bool {
        if !self.shares_pids_here() {
            return false;
        }
        let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) else {
            return true;
        };
        match rustix::process::test_kill_process(pid) {
            Err(rustix::io::Errno::SRCH) => true,
            // A zombie has exited; only its parent has not collected its status yet.
            _ => std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .ok()
                .and_then(|s| Some(s.get(s.rfind(')')? + 2..)?.starts_with('Z')))
                .unwrap_or(false),
        }
    }
}

/// The newest claim of a unit.
#[derive(Clone, Debug)]
pub struct Claim {
    pub generation: u32,
    /// `None`: the file is there but its content cannot be read (empty or short while
    /// its maker writes it, or for good if it died then; garbled, as a crash of the
    /// store's file server can leave it). Its lease still runs from its mtime, so it is
    /// held until that lapses and then taken over, as any claim.
    pub holder: Option<Holder>,
    /// When its lease was last renewed.
    pub renewed: SystemTime,
}

impl Claim {
    /// Past its lease at `now`, the time by the store's clock ([`StoreClock`]): a
    /// claim's mtime is set by the store's clock too (its create, and [`touch`]), so a
    /// worker whose own clock is behind still takes a dead worker's units over, and
    /// one whose clock is ahead does not take live ones.
    pub fn expired_at(&self, now: SystemTime, lease: Duration) -> bool {
        now.duration_since(self.renewed).is_ok_and(|d| d > lease)
    }
}

/// `done/<unit>`: the generation whose work the run keeps.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Commit {
    pub generation: u32,
    pub worker: usize,
    pub host: String,
    pub pid: u32,
    pub at: String,
    /// BLAKE3 of `plan.json`: every commit of a run is for the same plan.
    pub plan: String,
    /// The generation's figures. Absent in a commit written before they moved here;
    /// then they are in `counts/<unit>.g<gen>.json` ([`RunDir::read_counts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<UnitCounts>,
}

/// A unit's figures, in its commit (before: a file of its own, written before the commit).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct UnitCounts {
    pub files_total: u64,
    pub dirs_total: u64,
    pub files_transferred: u64,
    pub files_linked: u64,
    /// Of `files_linked`: taken from an interrupted run's copy (`RunReport`'s).
    #[serde(default)]
    pub files_resumed: u64,
    pub link_fallbacks: u64,
    pub changed_during_backup: u64,
    pub bytes_total: u64,
    pub bytes_transferred: u64,
    pub errors: u64,
    pub problems: Vec<Problem>,
    pub seconds: f64,
    pub started_at: String,
    /// With `one_file_system`: the directories on another file system the unit's walk
    /// kept empty, and the first of them (escaped paths of the source, in path order;
    /// at most `traverse::MOUNT_POINTS_NAMED`). Absent when none.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub mount_points_skipped: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_points: Vec<String>,
    /// With `one_file_system`: the unit's directory, or the shallowest one above it, on
    /// another file system than the source's root when the unit was built (escaped
    /// path): it walked nothing. What finalize decides the spine's mount points by
    /// (`sizes::SpineMounts`). Absent when none, and in commits written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crossed: Option<String>,
    /// Entries the unit linked unchanged without attributes the store refused
    /// (`report::Counters::xattrs_not_kept`), and the first of those names (escaped):
    /// finalize adds them up into the run's one warning. Absent when none, and in
    /// commits written before it.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub xattrs_not_kept: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs_not_kept_names: Vec<String>,
}

fn is_zero64(n: &u64) -> bool {
    *n == 0
}

/// A worker refused because its settings differ from the run's plan, as it left its mark
/// (`refused/w<index>`, one per worker index, the first kept). Which of the two was
/// started wrong cannot be told: the worker that wrote the plan may be the wrong one
/// (its plan the wrong source), so finalize publishes no run with a mark
/// ([`refusal`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Refused {
    pub worker: usize,
    pub host: String,
    pub pid: u32,
    pub at: String,
    /// What differs, each naming the setting, the plan's value, then the worker's.
    pub differs: Vec<String>,
}

impl Refused {
    pub fn me(worker: usize, differs: Vec<String>) -> Refused {
        Refused {
            worker,
            host: crate::util::hostname(),
            pid: std::process::id(),
            at: crate::util::now_rfc3339(),
            differs,
        }
    }

    /// The mark of worker `index` whose content, at `what`, does not read: it counts.
    pub fn unreadable(index: usize, what: &str, err: impl std::fmt::Display) -> Refused {
        Refused {
            worker: index,
            host: "?".into(),
            pid: 0,
            at: "?".into(),
            differs: vec![format!("its mark {what} does not read ({err})")],
        }
    }

    /// `worker 2 (host, at): source /a, not /a/sub`.
    pub fn describe(&self) -> String {
        format!(
            "worker {} ({}, {}): {}",
            self.worker,
            self.host,
            self.at,
            self.differs.join(", ")
        )
    }
}

/// Finalize's refusal of run `run`, whose workers `marks` were refused (exit 64).
pub fn refusal(run: &str, marks: &[Refused]) -> super::ShardError {
    let each: Vec<String> = marks.iter().map(Refused::describe).collect();
    super::ShardError::Usage(format!(
        "run {run} is not published: its plan's settings differ from those of {} of its workers, refused ({}); either the plan or those workers were started wrong; nothing published, the previous snapshot is untouched: fix the deployment and start a new run id",
        marks.len(),
        each.join("; ")
    ))
}

/// One run's directory.
pub struct RunDir {
    pub root: PathBuf,
    pub run: String,
}

impl RunDir {
    pub fn new(meta: &Path, run: &str) -> RunDir {
        RunDir {
            root: meta.join("shards").join(run),
            run: run.to_string(),
        }
    }

    pub fn plan_path(&self) -> PathBuf {
        self.root.join("plan.json")
    }
    pub fn finalized_path(&self) -> PathBuf {
        self.root.join("finalized")
    }
    pub fn tree(&self) -> PathBuf {
        self.root.join("tree")
    }
    pub fn parts(&self) -> PathBuf {
        self.root.join("parts")
    }
    /// The directory of `unit`'s manifest parts: `parts/<n mod part_dirs>` (unit
    /// `u<n>`), or `parts/` itself for a plan without [`PlanFile::part_dirs`].
    pub fn part_dir(&self, unit: &str, part_dirs: u32) -> PathBuf {
        let n: u32 = unit.bytes().filter(u8::is_ascii_digit).fold(0u32, |n, d| {
            n.wrapping_mul(10).wrapping_add(u32::from(d - b'0'))
        });
        match part_dirs {
            0 => self.parts(),
            k => self.parts().join(format!("{}", n % k)),
        }
    }
    /// The manifest part that `c`, `unit`'s commit, keeps: in the plan's subdirectory
    /// of `parts/` ([`RunDir::part_dir`]), or in `parts/` itself for a commit without
    /// figures, made by an older snapring, which knows no `part_dirs` and put its part
    /// there whatever the plan says (a worker not yet upgraded in a newer binary's run).
    pub fn part_path(&self, unit: &str, c: &Commit, part_dirs: u32) -> PathBuf {
        let dir = match c.counts {
            Some(_) => self.part_dir(unit, part_dirs),
            None => self.parts(),
        };
        dir.join(format!("{unit}.g{}.mf", c.generation))
    }
    pub fn work(&self, unit: &str, generation: u32) -> PathBuf {
        self.root.join("work").join(format!("{unit}.g{generation}"))
    }
    pub fn counts_path(&self, unit: &str, generation: u32) -> PathBuf {
        self.root
            .join("counts")
            .join(format!("{unit}.g{generation}.json"))
    }
    pub fn claim_path(&self, unit: &str, generation: u32) -> PathBuf {
        self.root
            .join("claims")
            .join(format!("{unit}.g{generation}"))
    }
    pub fn done_path(&self, unit: &str) -> PathBuf {
        self.root.join("done").join(unit)
    }
    /// Generation `generation` of the claim to make the plan.
    pub fn plan_claim_path(&self, generation: u32) -> PathBuf {
        self.root.join(format!("planning.g{generation}"))
    }

    /// Where worker `index`'s refusal mark is ([`Refused`]).
    pub fn refused_path(&self, index: usize) -> PathBuf {
        self.root.join("refused").join(format!("w{index}"))
    }

    /// Leaves `r`'s mark, unless its worker index has one; `true`: written now.
    pub fn mark_refused(&self, r: &Refused) -> Result<bool> {
        let p = self.refused_path(r.worker);
        let dir = self.root.join("refused");
        crate::util::create_private_dir(&dir, true)
            .or_else(|e| if dir.is_dir() { Ok(()) } else { Err(e) })
            .ctx("create", &dir)?;
        let bytes = serde_json::to_vec_pretty(r).expect("a refusal serializes");
        create_exclusive(&p, &bytes).ctx("write", &p)
    }

    /// The refusal marks of the run's workers, by worker index (one that does not read
    /// is named by its file).
    pub fn refused(&self) -> Result<Vec<Refused>> {
        let dir = self.root.join("refused");
        let names = match std::fs::read_dir(&dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).ctx("read", &dir),
        };
        let mut out = Vec::new();
        for e in names {
            let e = e.ctx("read", &dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(index) = name.strip_prefix('w').and_then(|i| i.parse().ok()) else {
                continue;
            };
            let p = e.path();
            let bytes = std::fs::read(&p).ctx("read", &p)?;
            out.push(
                serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                    Refused::unreadable(index, &p.display().to_string(), err)
                }),
            );
        }
        out.sort_by_key(|r| r.worker);
        Ok(out)
    }

    /// Makes the run's directories (each step tolerates another worker's). The
    /// planner makes them before it writes the plan: a worker that read the plan finds
    /// them.
    pub fn create(&self) -> Result<()> {
        for d in ["claims", "done", "parts", "work"] {
            let p = self.root.join(d);
            crate::util::create_private_dir(&p, true)
                .or_else(|e| if p.is_dir() { Ok(()) } else { Err(e) })
                .ctx("create", &p)?;
        }
        Ok(())
    }

    /// Makes the run's own directory (and the store's `shards/`), where the planning
    /// claims and the plan are made.
    pub fn create_root(&self) -> Result<()> {
        crate::util::create_private_dir(&self.root, true)
            .or_else(|e| if self.root.is_dir() { Ok(()) } else { Err(e) })
            .ctx("create", &self.root)
    }

    pub fn exists(&self) -> bool {
        self.root.is_dir()
    }

    /// Whether `finalized` is there and reads (a report). One that does not read
    /// (damaged: it is created whole) is no proof of a publish: the finalize decides
    /// under the store's lock ([`Self::finalized_damaged`]).
    pub fn is_finalized(&self) -> bool {
        match std::fs::read(self.finalized_path()) {
            Ok(b) => serde_json::from_slice::<crate::report::RunReport>(&b).is_ok(),
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        }
    }

    /// `finalized` is there but does not read (its length).
    pub fn finalized_damaged(&self) -> Option<u64> {
        let b = std::fs::read(self.finalized_path()).ok()?;
        match serde_json::from_slice::<crate::report::RunReport>(&b) {
            Ok(_) => None,
            Err(_) => Some(b.len() as u64),
        }
    }

    /// The plan and its hash, if written.
    pub fn read_plan(&self) -> Result<Option<(PlanFile, String)>> {
        let p = self.plan_path();
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx("read", &p),
        };
        let plan: PlanFile = serde_json::from_slice(&bytes).map_err(|e| Error::Store {
            path: p.clone(),
            msg: format!("unreadable shard plan: {e}"),
        })?;
        Ok(Some((plan, blake3::hash(&bytes).to_hex().to_string())))
    }

    /// Writes the plan unless one exists; returns the plan that counts and its hash.
    pub fn create_plan(&self, plan: &PlanFile) -> Result<(PlanFile, String)> {
        let bytes = serde_json::to_vec_pretty(plan).expect("plan serializes");
        create_exclusive(&self.plan_path(), &bytes).ctx("write", self.plan_path())?;
        self.read_plan()?.ok_or_else(|| Error::Store {
            path: self.plan_path(),
            msg: "the shard plan vanished just after it was written".into(),
        })
    }

    /// The newest claim generation of each unit, from the names alone (one listing).
    pub fn claim_gens(&self) -> Result<BTreeMap<String, u32>> {
        let dir = self.root.join("claims");
        let mut out: BTreeMap<String, u32> = BTreeMap::new();
        for e in std::fs::read_dir(&dir).ctx("read", &dir)? {
            let e = e.ctx("read", &dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((unit, generation)) = name
                .rsplit_once(".g")
                .filter(|(u, _)| plain(u))
                .and_then(|(u, g)| Some((u.to_string(), g.parse::<u32>().ok()?)))
            else {
                continue;
            };
            let g = out.entry(unit).or_insert(generation);
            *g = (*g).max(generation);
        }
        Ok(out)
    }

    /// Claim `generation` of `unit`: its holder and when its lease was renewed; `None`
    /// if it is not there.
    pub fn claim_at(&self, unit: &str, generation: u32) -> Result<Option<Claim>> {
        read_claim(&self.claim_path(unit, generation), generation)
    }

    /// The newest claim to make the plan: its generation and, unless it has gone since
    /// the listing, the claim.
    pub fn plan_claim(&self) -> Result<Option<(u32, Option<Claim>)>> {
        let mut newest = None;
        for e in std::fs::read_dir(&self.root).ctx("read", &self.root)? {
            let name = e.ctx("read", &self.root)?.file_name();
            let g = name
                .to_str()
                .and_then(|n| n.strip_prefix("planning.g"))
                .and_then(|g| g.parse::<u32>().ok());
            newest = newest.max(g);
        }
        newest
            .map(|g| Ok((g, read_claim(&self.plan_claim_path(g), g)?)))
            .transpose()
    }

    /// Claims generation `generation` of the right to make the plan; `false` if another
    /// process got it first.
    pub fn claim_plan(&self, generation: u32, holder: &Holder) -> Result<bool> {
        let p = self.plan_claim_path(generation);
        let bytes = serde_json::to_vec(holder).expect("holder serializes");
        crate::util::create_new_then_write(&p, &bytes).ctx("claim", &p)
    }

    /// The newest claim of each unit.
    pub fn claims(&self) -> Result<BTreeMap<String, Claim>> {
        let mut out = BTreeMap::new();
        for (u, g) in self.claim_gens()? {
            if let Some(c) = self.claim_at(&u, g)? {
                out.insert(u, c);
            }
        }
        Ok(out)
    }

    /// The units committed, from the names alone (one listing).
    pub fn done_names(&self) -> Result<std::collections::BTreeSet<String>> {
        let dir = self.root.join("done");
        let mut out = std::collections::BTreeSet::new();
        for e in std::fs::read_dir(&dir).ctx("read", &dir)? {
            let name = e
                .ctx("read", &dir)?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if plain(&name) {
                out.insert(name);
            }
        }
        Ok(out)
    }

    /// Claims generation `generation` of `unit`; `false` if another process got it first.
    pub fn claim(&self, unit: &str, generation: u32, holder: &Holder) -> Result<bool> {
        let p = self.claim_path(unit, generation);
        let bytes = serde_json::to_vec(holder).expect("holder serializes");
        crate::util::create_new_then_write(&p, &bytes).ctx("claim", &p)
    }

    /// Renews a claim's lease.
    pub fn renew(&self, unit: &str, generation: u32) -> std::io::Result<()> {
        touch(&self.claim_path(unit, generation))
    }

    /// The commit of each unit (the markers read on `threads` threads).
    pub fn commits(&self, threads: usize) -> Result<BTreeMap<String, Commit>> {
        let dir = self.root.join("done");
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).ctx("read", &dir)? {
            let e = e.ctx("read", &dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !plain(&name) {
                continue;
            }
            names.push(name);
        }
        let read = |name: &String| -> Result<Commit> {
            let p = dir.join(name);
            let bytes = std::fs::read(&p).ctx("read", &p)?;
            parse_commit(p, &bytes)
        };
        let commits = super::par_map(threads, &names, read);
        names
            .into_iter()
            .zip(commits)
            .map(|(n, c)| Ok((n, c?)))
            .collect()
    }

    /// The commit of `unit`, if it is committed.
    pub fn read_commit(&self, unit: &str) -> Result<Option<Commit>> {
        let p = self.done_path(unit);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(crate::error::io_error(e, "read", &p)),
        };
        parse_commit(p, &bytes).map(Some)
    }

    /// Commits `unit` for generation `c.generation`, unless a newer generation claimed it
    /// (this one's lease was lost) or another generation committed first. `true`: this
    /// generation's work is the unit's. The commit is written under a private name in
    /// the unit's directory of manifest parts (`part_dirs`, the plan's), not in `done/`,
    /// where every worker's lanes link their commits.
    pub fn commit(&self, unit: &str, c: &Commit, part_dirs: u32) -> Result<bool> {
        if self.claim_path(unit, c.generation + 1).exists() {
            return Ok(false);
        }
        let p = self.done_path(unit);
        let bytes = serde_json::to_vec_pretty(c).expect("commit serializes");
        crate::util::create_exclusive_via(&self.part_dir(unit, part_dirs), &p, &bytes)
            .ctx("commit", &p)
    }

    /// A unit's figures where a commit written before they moved into it left them.
    pub fn read_counts(&self, unit: &str, generation: u32) -> Result<UnitCounts> {
        let p = self.counts_path(unit, generation);
        let bytes = std::fs::read(&p).ctx("read", &p)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Store {
            path: p,
            msg: format!("unreadable unit counters: {e}"),
        })
    }

    /// The newest generation below `generation` whose work directory is still there (a
    /// killed or stalled attempt: the new one reuses its finished copies).
    pub fn older_work(&self, unit: &str, generation: u32) -> Option<PathBuf> {
        (1..generation)
            .rev()
            .map(|g| self.work(unit, g))
            .find(|p| p.is_dir())
    }
}

/// The claim in file `path`, if it is there: its mtime (the lease), and its holder if
/// the content reads. One whose content does not read (being written, or empty,
/// garbled or refused for good) has its lease run from its mtime as a readable one's
/// does: held while that is fresh, taken over after, never held for ever.
/// An error: not even its mtime can be read.
fn read_claim(path: &Path, generation: u32) -> Result<Option<Claim>> {
    let renewed = match std::fs::metadata(path).and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx("stat claim", path),
    };
    let holder = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Holder>(&b).ok());
    Ok(Some(Claim {
        generation,
        holder,
        renewed,
    }))
}

/// The store's clock, the one leases' mtimes are set by: this host's clock plus an
/// offset, measured as the mtime of a file created in `dir` (closed and removed at
/// once) at most once per `every`, so a worker waiting for others' leases makes a file
/// every few seconds, not at every look. This host's clock where no file can be made
/// there.
pub struct StoreClock {
    dir: PathBuf,
    every: Duration,
    /// When the offset was measured, and the store's clock less this host's, in ns.
    offset: std::sync::Mutex<Option<(std::time::Instant, i128)>>,
}

impl StoreClock {
    /// For the leases of files in `dir` (a run's directory or its `claims/`), measured
    /// at most once per a quarter of `lease` (from 1 s to 15 s).
    pub fn new(dir: PathBuf, lease: Duration) -> StoreClock {
        StoreClock {
            dir,
            every: (lease / 4).clamp(Duration::from_secs(1), Duration::from_secs(15)),
            offset: std::sync::Mutex::new(None),
        }
    }

    /// Now by the store's clock.
    pub fn now(&self) -> SystemTime {
        let mut offset = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        let off = match *offset {
            Some((at, off)) if at.elapsed() < self.every => Some(off),
            _ => {
                let measured = self.measure().ok();
                if let Some(off) = measured {
                    *offset = Some((std::time::Instant::now(), off));
                }
                measured
            }
        };
        let here = SystemTime::now();
        match off {
            Some(n) if n >= 0 => here + Duration::from_nanos(n as u64),
            Some(n) => here - Duration::from_nanos(n.unsigned_abs() as u64),
            None => here,
        }
    }

    fn measure(&self) -> std::io::Result<i128> {
        let p = self.dir.join(format!(
            ".clock-{}",
            hex::encode(crate::restic::random_bytes::<8>())
        ));
        let f = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&p)?;
        let here = SystemTime::now();
        let t = f.metadata().and_then(|m| m.modified());
        // Closed before its removal: NFS renames a file removed while open (`.nfs*`).
        drop(f);
        let _ = std::fs::remove_file(&p);
        Ok(match t?.duration_since(here) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        })
    }
}

/// Touches a claim file: its lease runs from now by the store's clock (`UTIME_NOW`:
/// an NFS client asks the server to set it), as its create set it.
pub fn touch(path: &Path) -> std::io::Result<()> {
    use rustix::fs::{Timespec, Timestamps, UTIME_NOW, UTIME_OMIT};
    let f = std::fs::File::options().write(true).open(path)?;
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        },
    };
    Ok(rustix::fs::futimens(&f, &times)?)
}

pub use crate::util::create_exclusive;

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiting worker looks at leases every 25–150 ms: the store's clock is measured
    /// once per quarter lease, its file removed (a reviewer found a file made, and
    /// removed while open, at every look: six a second per lane, silly-renamed on NFS).
    #[test]
    fn the_store_clock_is_measured_once_per_quarter_lease_and_leaves_no_file() {
        let d = tempfile::tempdir().unwrap();
        let c = StoreClock::new(d.path().to_path_buf(), Duration::from_secs(60));
        let before = SystemTime::now();
        let t = c.now();
        let measured = c.offset.lock().unwrap().expect("measured").0;
        assert!(c.now() >= t);
        assert_eq!(
            c.offset.lock().unwrap().unwrap().0,
            measured,
            "measured again"
        );
        assert!(t.duration_since(before).unwrap_or_default() < Duration::from_secs(5));
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "a file left"
        );
        // Where no file can be made: this host's clock, nothing measured.
        let c = StoreClock::new(d.path().join("missing"), Duration::from_secs(60));
        let t = c.now();
        assert!(c.offset.lock().unwrap().is_none());
        assert!(t.duration_since(before).is_ok());
    }

    #[test]
    fn a_plan_names_at_most_one_anchor_per_directory_and_an_older_plan_none() {
        let unit = |id: &str, lo: Option<&str>, anchor: bool| UnitRec {
            id: id.into(),
            dir: "flat".into(),
            lo: lo.map(str::to_string),
            hi: None,
            weight: 1,
            home: 0,
            anchor,
        };
        let mut plan = PlanFile {
            format: 1,
            run: "r".into(),
            workers: 1,
            source: "/src".into(),
            label: "daily".into(),
            retain: 1,
            prev: None,
            prev_run: None,
            sized_by: "walk".into(),
            created_at: String::new(),
            created_by: String::new(),
            host: None,
            part_dirs: 0,
            one_file_system: false,
            cap: 1,
            spine: vec![String::new(), "flat".into()],
            units: vec![unit("u0000", None, true), unit("u0001", Some("m"), false)],
            source_ino: None,
            warnings: Vec::new(),
            allow_empty: false,
            owners_held: None,
            times_held: None,
            exclusion: Default::default(),
        };
        assert!(plan.cut().is_ok());
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(json.matches("anchor").count(), 1, "{json}");
        // A plan written before anchors: none, every unit's entries are moved.
        let old: PlanFile = serde_json::from_str(&json.replace(",\"anchor\":true", "")).unwrap();
        assert!(old.cut().unwrap().units.iter().all(|u| !u.anchor));
        plan.units[1].anchor = true;
        assert!(plan.cut().unwrap_err().contains("u0001"));
    }

    /// `allow_empty`: absent when false (a plan reads and hashes as before it), read as
    /// false from a plan written before it, kept when true.
    #[test]
    fn a_plan_without_allow_empty_reads_as_false_and_a_true_one_keeps_it() {
        let old = r#"{"format":1,"run":"r","workers":1,"source":"/src","label":"daily","retain":1,"prev":null,"prev_run":null,"sized_by":"walk","created_at":"","created_by":"","cap":1,"spine":[""],"units":[{"id":"u0000","dir":"","lo":null,"hi":null,"weight":1,"home":0}],"excludes":["*.dat"]}"#;
        let mut plan: PlanFile = serde_json::from_str(old).unwrap();
        assert!(!plan.allow_empty);
        assert_eq!(plan.exclusion.excludes, vec!["*.dat".to_string()]);
        assert!(
            !serde_json::to_string(&plan)
                .unwrap()
                .contains("allow_empty")
        );
        plan.allow_empty = true;
        let again: PlanFile = serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
        assert!(again.allow_empty);
    }

    /// Two lanes of one worker claim a unit in the same millisecond: their claims must
    /// differ, or S3's refused conditional write finds "its own" bytes and both build
    /// the unit (seen against moto: a unit committed twice, its blobs stored twice).
    #[test]
    fn claims_made_in_the_same_millisecond_by_one_worker_differ() {
        let bodies: Vec<Vec<u8>> = (0..1000)
            .map(|_| serde_json::to_vec(&Holder::me(3)).unwrap())
            .collect();
        let distinct: std::collections::HashSet<&Vec<u8>> = bodies.iter().collect();
        assert_eq!(distinct.len(), bodies.len());
        // A holder written before the nonce existed still reads.
        let old: Holder =
            serde_json::from_str(r#"{"worker":1,"host":"h","pid":7,"at":"x"}"#).unwrap();
        assert_eq!((old.worker, old.nonce.as_str()), (1, ""));
    }

    #[test]
    fn an_exited_process_not_yet_collected_by_its_parent_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let holder = Holder {
            pid: child.id(),
            ..Holder::me(0)
        };
        // Not reaped: a zombie, which `kill(pid, 0)` still finds.
        let t0 = std::time::Instant::now();
        while !std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .unwrap()
            .contains(") Z")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the child did not exit"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(holder.is_dead_here());
        child.wait().unwrap();
        assert!(holder.is_dead_here());
        assert!(!Holder::me(0).is_dead_here());
    }

    /// Two pods of one node with `hostNetwork: true` share its host name, not their pid
    /// namespace: a pid the other pod's worker holds is not one this process can test.
    #[test]
    fn a_holder_of_this_host_name_in_another_pid_namespace_or_boot_is_not_dead_here() {
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let pid = gone.id();
        gone.wait().unwrap();
        let here = Holder {
            pid,
            ..Holder::me(1)
        };
        assert!(!here.pid_ns.is_empty() && !here.boot_id.is_empty());
        assert!(here.is_dead_here(), "an exited process of this pid space");
        let other_ns = Holder {
            pid_ns: "4026599999".into(),
            ..here.clone()
        };
        assert!(!other_ns.is_dead_here(), "a pid of another pid namespace");
        assert!(!other_ns.shares_pids_here());
        let other_boot = Holder {
            boot_id: "00000000-0000-4000-8000-000000000000".into(),
            ..here.clone()
        };
        assert!(!other_boot.is_dead_here(), "a pid of another boot");
        // A holder written before these fields: the host name alone, as before.
        let old: Holder = serde_json::from_str(&format!(
            r#"{{"worker":1,"host":"{}","pid":{pid},"at":"x"}}"#,
            crate::util::hostname()
        ))
        .unwrap();
        assert!(old.is_dead_here());
        // Written only when known.
        let v = serde_json::to_value(&here).unwrap();
        assert_eq!(v["pid_ns"], crate::util::pid_namespace());
        assert!(
            serde_json::to_string(&old)
                .unwrap()
                .find("pid_ns")
                .is_none()
        );
    }

    #[test]
    fn threads_of_one_process_racing_for_a_name_get_it_once_and_no_error() {
        let t = tempfile::tempdir().unwrap();
        for round in 0..50 {
            let p = t.path().join(format!("u{round}.g1"));
            let won = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        if create_exclusive(&p, b"claim").unwrap() {
                            won.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    });
                }
            });
            assert_eq!(won.into_inner(), 1);
        }
        let left: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
