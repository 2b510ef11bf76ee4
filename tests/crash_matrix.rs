//! The crash matrix: SIGKILL at every failpoint of backup (full and incremental),
//! rotation (one label and several), expiry, resume, the repair of a journal, a job run
//! recording to the catalog, and restore (whole, `--path`, a rerun), at several hit
//! numbers; after each kill the next commands run and the invariants are checked. Every
//! case must die by SIGKILL (a point that never fires is a test bug, not a pass), and
//! every failpoint in `src/` must be in the matrix.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

type Model = BTreeMap<Vec<u8>, Desc>;

/// Published snapshots compared with their models after a kill (any difference fails
/// its case: a snapshot lost or corrupted).
static SNAPSHOTS_CHECKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What the killed command was doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scn {
    /// The first backup into an empty store.
    Full,
    /// A backup on top of two snapshots (retain 3: nothing expires).
    Incr,
    /// A backup with `--retain 2` on top of three snapshots: two expire.
    Expire,
    /// A `weekly` backup (retain 2, one expires) in a store that also holds `daily`.
    Labels,
    /// A backup resuming from the staging tree of a run killed mid-walk.
    Resume,
    /// `list` repairing a rotation whose backup was killed after its journal.
    RepairJournal,
    /// `list` repairing a run that died mid-walk (its record still `running`).
    RepairDead,
    /// `snapring run JOB --config` (catalog, a notifier), then `history`.
    Job,
    /// A whole snapshot restored into a new directory, then the restore run again.
    Restore,
    /// `--path d1` restored into a target whose `d1` exists, then run again.
    RestorePath,
    /// A restore killed, its rerun killed at the point, then run again.
    RestoreRerun,
}

/// Whether the killed run's snapshot is published once the store is repaired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pubs {
    Yes,
    No,
    /// A restore: nothing is published.
    Na,
}

struct Case {
    scn: Scn,
    point: &'static str,
    nth: u32,
    publishes: Pubs,
}

const fn c(scn: Scn, point: &'static str, nth: u32, publishes: Pubs) -> Case {
    Case {
        scn,
        point,
        nth,
        publishes,
    }
}

use Pubs::{Na, No, Yes};
use Scn::*;

const CASES: &[Case] = &[
    c(Full, "walk.dir", 1, No),
    c(Full, "walk.dir", 4, No),
    c(Full, "walk.after_readdir", 3, No),
    c(Full, "walk.copy", 1, No),
    c(Full, "walk.copy", 12, No),
    c(Full, "walk.after_copy", 20, No),
    c(Full, "manifest.block", 2, No),
    c(Full, "staging.dir_meta", 3, No),
    c(Full, "manifest.between_renames", 1, No),
    c(Full, "run.after_first_record", 1, No),
    c(Full, "backup.before_publish", 1, No),
    c(Full, "journal.before_write", 1, No),
    c(Full, "journal.after_write", 1, Yes),
    c(Full, "rotate.step", 1, Yes),
    c(Full, "journal.after_state", 1, Yes),
    c(Full, "journal.after_record", 1, Yes),
    c(Full, "journal.before_remove", 1, Yes),
    c(Full, "backup.after_publish", 1, Yes),
    c(Full, "run.before_final_record", 1, Yes),
    c(Full, "catalog.before_commit", 1, No),
    c(Full, "catalog.after_commit", 1, No),
    c(Full, "catalog.before_commit", 2, Yes),
    c(Incr, "walk.copy", 2, No),
    c(Incr, "walk.dir", 6, No),
    c(Incr, "journal.after_write", 1, Yes),
    c(Incr, "rotate.step", 2, Yes),
    c(Incr, "rotate.step", 3, Yes),
    c(Incr, "journal.after_state", 1, Yes),
    c(Incr, "backup.after_publish", 1, Yes),
    c(Incr, "catalog.after_commit", 2, Yes),
    c(Expire, "backup.before_publish", 1, No),
    c(Expire, "rotate.step", 1, Yes),
    c(Expire, "rotate.step", 2, Yes),
    c(Expire, "rotate.step", 4, Yes),
    c(Expire, "journal.before_state", 1, Yes),
    c(Expire, "journal.after_record", 1, Yes),
    c(Expire, "trash.dir", 1, Yes),
    c(Expire, "trash.dir", 3, Yes),
    c(Expire, "trash.file", 1, Yes),
    c(Expire, "trash.file", 15, Yes),
    c(Expire, "trash.file", 40, Yes),
    c(Labels, "walk.copy", 1, No),
    c(Labels, "journal.after_write", 1, Yes),
    c(Labels, "rotate.step", 1, Yes),
    c(Labels, "rotate.step", 3, Yes),
    c(Labels, "trash.file", 5, Yes),
    c(Labels, "journal.before_remove", 1, Yes),
    c(Resume, "walk.dir", 2, No),
    c(Resume, "staging.adopted", 1, No),
    c(Resume, "walk.copy", 3, No),
    c(Resume, "staging.discarded", 1, Yes),
    c(Resume, "backup.after_publish", 1, Yes),
    c(RepairJournal, "rotate.step", 1, Yes),
    c(RepairJournal, "rotate.step", 3, Yes),
    c(RepairJournal, "journal.before_state", 1, Yes),
    c(RepairJournal, "journal.after_state", 1, Yes),
    c(RepairJournal, "journal.before_remove", 1, Yes),
    c(RepairDead, "repair.marked", 1, No),
    c(Job, "walk.copy", 1, No),
    c(Job, "catalog.before_commit", 1, No),
    c(Job, "catalog.after_commit", 1, No),
    c(Job, "rotate.step", 2, Yes),
    c(Job, "catalog.before_commit", 2, Yes),
    c(Job, "catalog.after_commit", 2, Yes),
    c(Job, "run.before_final_record", 1, Yes),
    c(Job, "job.after_notify", 1, Yes),
    c(Job, "catalog.before_commit", 3, Yes),
    c(Job, "catalog.after_commit", 3, Yes),
    c(Restore, "restore.recorded", 1, Na),
    c(Restore, "restore.recorded", 2, Na),
    c(Restore, "restore.dir", 2, Na),
    c(Restore, "restore.dir", 5, Na),
    c(Restore, "restore.file", 1, Na),
    c(Restore, "restore.file", 10, Na),
    c(Restore, "restore.file", 25, Na),
    c(Restore, "restore.dir_meta", 2, Na),
    c(Restore, "restore.dir_meta", 6, Na),
    c(Restore, "restore.special", 1, Na),
    c(Restore, "restore.special", 2, Na),
    c(Restore, "restore.before_done", 1, Na),
    c(Restore, "restore.after_done", 1, Na),
    c(RestorePath, "restore.before_rename", 1, Na),
    c(RestorePath, "restore.before_rename", 3, Na),
    c(RestorePath, "restore.file", 2, Na),
    c(RestorePath, "restore.recorded", 1, Na),
    c(RestorePath, "restore.dir_meta", 1, Na),
    c(RestorePath, "restore.special", 1, Na),
    c(RestorePath, "restore.before_done", 1, Na),
    c(RestoreRerun, "restore.file", 3, Na),
    c(RestoreRerun, "restore.dir", 2, Na),
    c(RestoreRerun, "restore.dir_meta", 3, Na),
    c(RestoreRerun, "restore.before_done", 1, Na),
];

/// Failpoints that are not kill points of a writer (a reader's pause).
/// `restic.pack_written`: the restic repository's kill point, killed and checked with
/// `restic check` in tests/restic_conformance.rs (the matrix covers the hard-link store);
/// `restic.prune_pack_written` likewise, for `prune` (tests/restic_prune.rs).
/// `shard.*`: a shard run's kill points, killed among several worker processes and
/// checked (every unit committed once, finalize once, the snapshot equal to the
/// source) in tests/shard.rs; `shard.expire_piece` kills workers deleting pieces of an
/// expired snapshot there, and the next run or `snapring finalize` removes the rest.
const NOT_IN_MATRIX: &[&str] = &[
    // The end-of-walk stat of the source's root answering EIO, once or twice
    // (tests/faults.rs): a read of the source, nothing of the store written there.
    "backup.source_root_stat",
    // A pause in the daemon before it settles a dead run's record, a store that hangs
    // (tests/daemon.rs): the daemon's death is no crash of a store's writer.
    "daemon.settle_dead",
    // A pause before a command notifier's leftovers are killed, for a new process group
    // to be made then (tests/notify_hostile.rs): nothing of the store is touched there.
    "hooks.leftovers",
    "verify.snapshot",
    // A `verify`/`diff` paused as it opens a directory, then sent a signal: it says
    // `interrupted`, never clean (tests/damage.rs). A reader: nothing to crash.
    "compare.dir",
    "restic.pack_written",
    "restic.prune_pack_written",
    // A sleep before a new blob is sealed, for a test that one big file's chunks are
    // sealed by several threads at once (tests/restic_runs.rs).
    "restic.packer.seal",
    // `repair index` paused before its new index (SIGTERM: nothing changed) and killed
    // between writing it and removing the old one: tests/restic_repair.rs.
    "restic.repair_index_before_write",
    "restic.repair_index_written",
    // A pause of `repair index` after it listed the packs, for a pack to be deleted
    // before it is read (tests/restic_s3.rs): nothing written there yet.
    "restic.repair_packs_listed",
    // A pack's read garbled on its way (one byte flipped) in `repair index
    // --read-data`: read again, not salvaged (tests/restic_repair.rs).
    "restic.repair_pack_garbled",
    // A pause of a repository backup between the reads of a hard-linked file's names,
    // for the file to change meanwhile (tests/restic_runs.rs): nothing written there.
    "restic.backup.hard_link",
    // The parent snapshot's trees down to a shard unit's directory that cannot be
    // opened made not to read (tests/restic_shard.rs): nothing written there yet.
    "shard.repo.keep_descend",
    // A blob's or a pack span's read garbled on its way (one byte flipped) in
    // `verify`, `restore`, `prune`: read again, not damage (tests/restic_damaged.rs).
    "restic.read_garbled",
    // A local repository's pack read failing with EIO once (a passing NFS EIO), in
    // `restore` and every reader: read again after a pause (tests/restic_damaged.rs).
    // A reader: nothing to crash.
    "restic.local_read",
    // A pack header's read answering EIO (tests/restic_repair.rs): a read; verify
    // counts the pack as not checked.
    "restic.pack_header_read",
    // The read of a local repository's `config` that tells storage that is down from
    // packs answering EIO (`Backend::probe_down`), failing (tests/restic_damaged.rs).
    // A reader: nothing to crash.
    "restic.storage_probe",
    // A pause of a fill thread before it opens the file the walk created, for a test
    // to replace or delete it (tests/restore_races.rs): that file is a problem.
    "restic.restore.before_fill",
    // A kill while directories get their metadata, after every file is written
    // (tests/restic_runs.rs): the rerun finishes them.
    "restic.restore.dirs",
    // A pause just after a directory's listing, for a test to rename in it
    // (tests/hostile_source.rs): the listing is read again, nothing written yet.
    "walk.listed",
    "shard.size",
    "shard.before_commit",
    "shard.after_commit",
    "shard.move",
    "shard.place",
    "shard.finalize.before_staging",
    "shard.finalize.before_publish",
    "shard.finalize.after_publish",
    "shard.finalize.join",
    "shard.finalize.after_finalized",
    // The clean-up of the build directories, in a thread of its own once the tree is
    // staged (a kill or a delay there: tests/shard.rs).
    "shard.finalize.cleanup",
    "shard.expire_piece",
    // An abandoned run's copies removed: a failure only warns, a kill between the
    // moves and the marker is redone by the next sweep (tests/shard.rs).
    "shard.abandon",
    "shard.abandon.cleared",
    // The lease thread and a lane of a shard worker, raced: tests/shard.rs.
    "shard.beat",
    "shard.unit_started",
    // A resent NFS link answered "exists" (an error, not a kill): tests/shard.rs.
    "create_exclusive.link_resent",
    // A source that cannot be read (an error, not a kill): tests/faults.rs.
    "walk.open_source",
    // A source changed under the walk, before a subdirectory's open and before a racy
    // file's content check, and while a file is copied (pauses, not kills):
    // tests/hostile_source.rs.
    "walk.open_dir",
    "fsx.copy.read",
    "walk.verify_content",
    // The same for a backup into a repository: a file replaced before its open, and
    // rewritten while it is read (pauses): tests/hostile_source.rs.
    "restic.backup.before_open",
    "restic.backup.read",
    // A source directory swapped for a symlink before a backup into a repository opens
    // it (a pause): tests/hostile_source.rs.
    "restic.backup.open_dir",
    // A restore from a repository whose target's user swaps a directory just made for
    // a symlink (a pause, not a kill): tests/restore_races.rs.
    "restic.restore.dir",
    // A prune or a backup between opening a repository and taking its lock (pauses
    // and races, not kills): tests/restic_shard.rs and tests/restic_prune.rs.
    "prune.after_open",
    "prune.before_drop_lock",
    "restic.backup.before_lock",
    "restic.copy.before_lock",
    // Before a single-node backup's (or copy's) snapshot file, its lock checked:
    // tests/restic_conformance.rs.
    "restic.backup.before_snapshot",
    "shard.repo.before_lock",
    // A shard run into a restic repository: tests/restic_shard.rs.
    "shard.repo.before_commit",
    "shard.repo.before_walk",
    "shard.repo.before_finalize",
    "shard.repo.before_snapshot",
    "shard.repo.before_commits_read",
    "shard.repo.before_final",
    "shard.repo.before_snapshot_file",
    "shard.repo.before_published",
    "shard.repo.after_published",
];

/// One case's files: a source, a store, a catalog, a job config and a restore target.
struct Env {
    _t: tempfile::TempDir,
    src: PathBuf,
    store: PathBuf,
    catalog: PathBuf,
    config: PathBuf,
    to: PathBuf,
}

impl Env {
    fn new() -> Env {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        source(&src);
        let config = t.path().join("snapring.toml");
        let toml = format!(
            "[job.j]\nsource = {:?}\ndest = {:?}\nfolder = \"store\"\nlabel = \"daily\"\n\
             retain = 3\njobs = 2\nnotify = [\"done\"]\nnotify_success = true\n\n\
             [notify.done]\ntype = \"command\"\ncommand = [\"cat\"]\n",
            src.display(),
            t.path().display()
        );
        std::fs::write(&config, toml).unwrap();
        Env {
            store: t.path().join("store"),
            catalog: t.path().join("catalog.db"),
            to: t.path().join("restored"),
            src,
            config,
            _t: t,
        }
    }

    /// Runs `snapring ARGS` with this case's catalog and `failpoints`.
    fn run(&self, args: &[&OsStr], failpoints: &str) -> Output {
        Command::new(bin())
            .args(args)
            .env("SNAPRING_CATALOG", &self.catalog)
            .env("SNAPRING_FAILPOINTS", failpoints)
            .output()
            .expect("run snapring")
    }

    fn backup(&self, label: &str, retain: u32, failpoints: &str) -> Output {
        let retain = retain.to_string();
        let args: Vec<&OsStr> = vec![
            "backup".as_ref(),
            "--json".as_ref(),
            "--jobs".as_ref(),
            "2".as_ref(),
            "--label".as_ref(),
            label.as_ref(),
            "--retain".as_ref(),
            retain.as_ref(),
            "--source".as_ref(),
            self.src.as_os_str(),
            "--dest".as_ref(),
            self.store.as_os_str(),
        ];
        self.run(&args, failpoints)
    }

    fn job(&self, failpoints: &str) -> Output {
        let args: Vec<&OsStr> = vec![
            "run".as_ref(),
            "j".as_ref(),
            "--json".as_ref(),
            "--config".as_ref(),
            self.config.as_os_str(),
        ];
        self.run(&args, failpoints)
    }

    fn list(&self, failpoints: &str) -> Output {
        let args: Vec<&OsStr> = vec![
            "list".as_ref(),
            "--json".as_ref(),
            "--dest".as_ref(),
            self.store.as_os_str(),
        ];
        self.run(&args, failpoints)
    }

    fn history(&self) -> serde_json::Value {
        let out = self.run(&["history".as_ref(), "--json".as_ref()], "");
        ok(&out, "history");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `restore --json --jobs 2 --dest STORE SNAP --to TO EXTRA…`.
    fn restore(&self, snap: &str, extra: &[&str], failpoints: &str) -> Output {
        let mut args: Vec<&OsStr> = vec![
            "restore".as_ref(),
            "--json".as_ref(),
            "--jobs".as_ref(),
            "2".as_ref(),
            "--dest".as_ref(),
            self.store.as_os_str(),
            snap.as_ref(),
            "--to".as_ref(),
            self.to.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        self.run(&args, failpoints)
    }
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The point fired: the process died by SIGKILL.
fn killed(out: &Output, what: &str) {
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{what}: the failpoint never fired (exit {:?})\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small tree with what a snapshot must keep: modes, ns mtimes, a symlink, a hard-link
/// pair, a nested directory and a read-only one.
fn source(src: &Path) {
    for d in 0..4 {
        for f in 0..6 {
            let p = src.join(format!("d{d}/f{f}"));
            write(&p, format!("{d}/{f} ").repeat(40).as_bytes());
            chmod(&p, [0o644, 0o600, 0o755][f % 3]);
            set_mtime(&p, 1_600_000_000 + (d * 10 + f) as i64, 123_456_789);
        }
    }
    for f in 0..3 {
        write(
            &src.join(format!("d1/sub/s{f}")),
            format!("sub {f}").as_bytes(),
        );
    }
    write(&src.join("links/a"), b"shared inode");
    std::fs::hard_link(src.join("links/a"), src.join("links/b")).unwrap();
    std::os::unix::fs::symlink("../d0/f0", src.join("links/to-f0")).unwrap();
    std::os::unix::fs::symlink("s0", src.join("d1/sub/link")).unwrap();
    set_mtime(&src.join("d1/sub/link"), 1_400_000_000, 7);
    write(&src.join("ro/r0"), b"read-only dir");
    write(&src.join("ro/r1"), b"read-only dir too");
    chmod(&src.join("ro"), 0o555);
    write(&src.join("top"), b"top-level file");
    for d in ["d1/sub", "d2", "ro"] {
        set_mtime(&src.join(d), 1_500_000_000, 42);
    }
}

/// Changes the source between runs: a new file, new content, a new mode, a removal.
fn mutate(src: &Path, round: u32) {
    write(
        &src.join(format!("d3/new{round}")),
        format!("round {round}").as_bytes(),
    );
    write(
        &src.join("d0/f0"),
        format!("changed in round {round}").as_bytes(),
    );
    chmod(&src.join("d1/f1"), 0o600 + round % 2 * 0o40);
    let _ = std::fs::remove_file(src.join(format!("d2/f{}", round % 6)));
}

/// The published snapshots the store must hold: per label, newest first.
type Ledger = BTreeMap<String, Vec<Model>>;

fn push(ledger: &mut Ledger, label: &str, retain: u32, m: Model) {
    let v = ledger.entry(label.to_string()).or_default();
    v.insert(0, m);
    v.truncate(retain as usize);
}

/// The store holds exactly the ledger's snapshots, each equal to its model, and no
/// journal.
fn check_store(e: &Env, ledger: &Ledger, what: &str) {
    let mut want: Vec<String> = ledger
        .iter()
        .flat_map(|(l, v)| (0..v.len()).map(move |i| format!("{l}.{i}")))
        .collect();
    want.sort();
    assert_eq!(snapshot_names(&e.store), want, "{what}: snapshots");
    for (l, v) in ledger {
        for (i, m) in v.iter().enumerate() {
            let name = format!("{l}.{i}");
            assert_same_tree(
                m,
                &describe(&e.store.join(&name)),
                &format!("{what}: {name}"),
            );
            SNAPSHOTS_CHECKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    assert!(
        !e.store.join(".snapring/journal").exists(),
        "{what}: journal left behind"
    );
}

/// Before any repair: every `<label>.N` directory on disk is a complete snapshot, one of
/// the published ones or the killed run's (never a half-built tree).
fn check_no_half_snapshot(e: &Env, ledger: &Ledger, attempted: &Model, what: &str) {
    let mut known: Vec<&Model> = ledger.values().flatten().collect();
    known.push(attempted);
    for name in snapshot_names(&e.store) {
        let got = describe(&e.store.join(&name));
        assert!(
            known.iter().any(|m| **m == got),
            "{what}: {name} on disk is none of the published snapshots nor the killed run's"
        );
    }
}

fn run_records(store: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(store.join(".snapring/runs"))
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect()
}

/// No run record stays `running` once a command has repaired the store.
fn check_no_record_running(e: &Env, what: &str) {
    for r in run_records(&e.store) {
        assert_ne!(r["status"], "running", "{what}: run record {r}");
    }
}

/// The catalog agrees with the store's run records: every run reached it, with the same
/// status and snapshot, and no row is `running`.
fn check_catalog(e: &Env, what: &str) {
    let h = e.history();
    let rows: BTreeMap<String, (serde_json::Value, serde_json::Value)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap().to_string();
            (id, (r["status"].clone(), r["snapshot"].clone()))
        })
        .collect();
    let records: BTreeMap<String, (serde_json::Value, serde_json::Value)> = run_records(&e.store)
        .into_iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap().to_string();
            (id, (r["status"].clone(), r["snapshot"].clone()))
        })
        .collect();
    assert_eq!(rows, records, "{what}: catalog rows vs run records");
    assert!(
        rows.values().all(|(s, _)| s != "running"),
        "{what}: a catalog row stays running: {h}"
    );
}

fn empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).unwrap().next().is_none()
}

/// The label, retain and good runs before the kill of a backup-type scenario.
fn setup_backups(e: &Env, scn: Scn) -> (&'static str, u32, Ledger) {
    let mut ledger = Ledger::new();
    let good = |label: &str, retain: u32, round: u32, ledger: &mut Ledger| {
        mutate(&e.src, round);
        let out = if scn == Job {
            e.job("")
        } else {
            e.backup(label, retain, "")
        };
        ok(&out, "setup backup");
        push(ledger, label, retain, describe(&e.src));
    };
    match scn {
        Full => ("daily", 3, ledger),
        Incr | Job | RepairJournal | RepairDead => {
            (0..2).for_each(|r| good("daily", 3, r, &mut ledger));
            ("daily", 3, ledger)
        }
        Expire => {
            (0..3).for_each(|r| good("daily", 3, r, &mut ledger));
            ("daily", 2, ledger)
        }
        Labels => {
            (0..2).for_each(|r| good("daily", 3, r, &mut ledger));
            (2..4).for_each(|r| good("weekly", 2, r, &mut ledger));
            ("weekly", 2, ledger)
        }
        Resume => {
            good("daily", 3, 0, &mut ledger);
            ("daily", 3, ledger)
        }
        Restore | RestorePath | RestoreRerun => unreachable!("not a backup scenario"),
    }
}

/// The killed command of a backup-type scenario (after its own set-up kill, if any).
fn kill_backup(e: &Env, c: &Case, label: &str, retain: u32, fp: &str) {
    let what = format!("{:?} {}@{}", c.scn, c.point, c.nth);
    match c.scn {
        Resume => {
            killed(&e.backup(label, retain, "walk.copy=kill@2"), "set-up kill");
            assert!(!empty_dir(&e.store.join(".snapring/staging")));
            killed(&e.backup(label, retain, fp), &what);
        }
        RepairJournal | RepairDead => {
            let first = if c.scn == RepairJournal {
                "rotate.step=kill@2"
            } else {
                "walk.copy=kill@2"
            };
            killed(&e.backup(label, retain, first), "set-up kill");
            killed(&e.list(fp), &what);
        }
        Job => killed(&e.job(fp), &what),
        _ => killed(&e.backup(label, retain, fp), &what),
    }
}

/// A backup, rotation, expiry, repair or job run killed at `c`, then repaired by the
/// next commands; the store, the run records and the catalog are checked after each.
fn backup_case(c: &Case) {
    let e = Env::new();
    let what = format!("{:?} {}@{}", c.scn, c.point, c.nth);
    let (label, retain, mut ledger) = setup_backups(&e, c.scn);
    mutate(&e.src, 9);
    let attempted = describe(&e.src);
    let fp = format!("{}=kill@{}", c.point, c.nth);
    kill_backup(&e, c, label, retain, &fp);
    check_no_half_snapshot(&e, &ledger, &attempted, &what);

    // The next commands repair: `history` (through the catalog) after a job, `list`.
    if c.scn == Job {
        e.history();
    }
    ok(&e.list(""), &format!("{what}: list"));
    if c.publishes == Yes {
        push(&mut ledger, label, retain, attempted.clone());
    }
    check_store(&e, &ledger, &format!("{what}, repaired"));
    check_no_record_running(&e, &what);

    // The next run completes, and leaves no staging tree and no trash.
    let next = if c.scn == Job {
        e.job("")
    } else {
        e.backup(label, retain, "")
    };
    ok(&next, &format!("{what}: next run"));
    push(&mut ledger, label, retain, describe(&e.src));
    check_store(&e, &ledger, &format!("{what}, next run"));
    assert!(empty_dir(&e.store.join(".snapring/staging")), "{what}");
    assert!(empty_dir(&e.store.join(".snapring/trash")), "{what}");
    check_no_record_running(&e, &what);
    check_catalog(&e, &what);
}

/// A restore killed at `c` (a rerun's, for `RestoreRerun`), then run again: the result
/// equals the snapshot and the store is unchanged.
fn restore_case(c: &Case) {
    let e = Env::new();
    let what = format!("{:?} {}@{}", c.scn, c.point, c.nth);
    for round in 0..2 {
        mutate(&e.src, round);
        ok(&e.backup("daily", 3, ""), "setup backup");
    }
    let before = [
        describe(&e.store.join("daily.0")),
        describe(&e.store.join("daily.1")),
    ];
    let extra: &[&str] = if c.scn == RestorePath {
        // The user's own d1 exists: files there go through a temporary name.
        std::fs::create_dir_all(e.to.join("d1")).unwrap();
        &["--path", "d1"]
    } else {
        &[]
    };
    if c.scn == RestoreRerun {
        killed(
            &e.restore("daily.1", extra, "restore.file=kill@8"),
            "set-up kill",
        );
    }
    let fp = format!("{}=kill@{}", c.point, c.nth);
    killed(&e.restore("daily.1", extra, &fp), &what);

    let out = e.restore("daily.1", extra, "");
    ok(&out, &format!("{what}: rerun"));
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["status"], "complete", "{what}: {rep}");
    assert_eq!(rep["conflicts_total"], 0, "{what}: {rep}");
    if c.scn == RestorePath {
        // d1 itself is the user's directory (keeps its own metadata): compare inside it.
        let inside = |m: Model| -> Model { m.into_iter().filter(|(k, _)| !k.is_empty()).collect() };
        assert_same_tree(
            &inside(describe(&e.store.join("daily.1/d1"))),
            &inside(describe(&e.to.join("d1"))),
            &what,
        );
        let names: Vec<_> = std::fs::read_dir(&e.to)
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["d1"],
            "{what}: only d1 in the target, no record left"
        );
    } else if c.point == "restore.after_done" {
        residual_root_time(&e, &what);
    } else {
        assert_same_tree(&describe(&e.store.join("daily.1")), &describe(&e.to), &what);
    }
    assert_same_tree(&before[0], &describe(&e.store.join("daily.0")), &what);
    assert_same_tree(&before[1], &describe(&e.store.join("daily.1")), &what);
    assert_eq!(snapshot_names(&e.store), ["daily.0", "daily.1"], "{what}");
}

/// The one window a rerun does not close: killed after the record of unfinished work
/// was removed and before the target root got its times back (removing the record sets
/// them), a rerun sees a finished restore into an existing directory, whose times the
/// default mode leaves alone. Everything else is equal; `--overwrite` sets them.
fn residual_root_time(e: &Env, what: &str) {
    let want = describe(&e.store.join("daily.1"));
    let mut got = describe(&e.to);
    let root = got.get_mut(&b""[..]).unwrap();
    assert_ne!(
        root.mtime,
        want[&b""[..]].mtime,
        "{what}: the window closed?"
    );
    root.mtime = want[&b""[..]].mtime;
    assert_same_tree(&want, &got, what);
    ok(&e.restore("daily.1", &["--overwrite"], ""), what);
    assert_same_tree(&want, &describe(&e.to), &format!("{what}, --overwrite"));
}

fn run_case(c: &Case) {
    match c.scn {
        Restore | RestorePath | RestoreRerun => restore_case(c),
        _ => backup_case(c),
    }
}

/// Every `failpoint::hit("NAME")` in `src/`.
fn failpoints_in_src() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(d) = stack.pop() {
        for ent in std::fs::read_dir(&d).unwrap() {
            let p = ent.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for part in text.split("failpoint::hit(\"").skip(1) {
                out.insert(part.split('"').next().unwrap().to_string());
            }
        }
    }
    out
}

#[test]
fn the_matrix_covers_every_failpoint_and_at_least_50_distinct_points() {
    let mut seen = BTreeSet::new();
    for c in CASES {
        assert!(
            seen.insert((c.scn, c.point, c.nth)),
            "duplicate case {:?} {}@{}",
            c.scn,
            c.point,
            c.nth
        );
    }
    assert!(CASES.len() >= 50, "{} kill points", CASES.len());
    let covered: BTreeSet<String> = CASES.iter().map(|c| c.point.to_string()).collect();
    for fp in failpoints_in_src() {
        assert!(
            covered.contains(&fp) || NOT_IN_MATRIX.contains(&fp.as_str()),
            "failpoint {fp} is in src/ but not in the crash matrix"
        );
    }
    for fp in &covered {
        assert!(
            failpoints_in_src().contains(fp),
            "{fp} is not a failpoint in src/"
        );
    }
}

/// Runs every case (three at a time) and reports the figures per scenario.
#[test]
fn every_kill_point_is_survived() {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(c) = CASES.get(i) else { break };
                    let r = std::panic::catch_unwind(|| run_case(c));
                    if let Err(p) = r {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{:?} {}@{}: {msg}", c.scn, c.point, c.nth));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let mut per: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for c in CASES {
        let e = per.entry(format!("{:?}", c.scn)).or_default();
        e.0 += 1;
        if !failures
            .iter()
            .any(|f| f.starts_with(&format!("{:?} {}@{}:", c.scn, c.point, c.nth)))
        {
            e.1 += 1;
        }
    }
    for (scn, (n, survived)) in &per {
        println!("crash matrix: {scn}: {survived} of {n} kill points survived");
    }
    println!(
        "crash matrix: {} of {} kill points survived; {} published snapshots compared equal to their models after a kill",
        CASES.len() - failures.len(),
        CASES.len(),
        SNAPSHOTS_CHECKED.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
