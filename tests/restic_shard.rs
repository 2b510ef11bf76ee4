//! Scale-out into a restic repository (`backup --dest file://… --shard I/N`,
//! `shard::repository`, docs/scale-out.md): N worker processes named by the flags or
//! the engines' variables make one snapshot; it restores equal to the source (modes,
//! times, odd names, hard links across units, sparse and special files), its source
//! tree is the very tree a single-node run makes, and `restic check --read-data` passes
//! (when Debian's `restic` is installed). Then the attacks: a worker SIGKILLed before
//! its commit, a worker SIGSTOPped past its lease and resumed after the run was
//! published, a finalizer SIGSTOPped past its lease and resumed after the publisher's
//! tidy, crashes during finalize (before and after `final`), a duplicate worker
//! for one index, an incremental run, a worker started with another count, a parent
//! snapshot whose trees do not read (a lost pack: read in full, the run's report warns).
//! Runs processes on real temp directories.

mod common;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::restic::*;
use common::*;
use snapring::restic::{Id, backup::descend, repo::Repo, snapshot};

struct Env {
    t: tempfile::TempDir,
    src: PathBuf,
    repo: PathBuf,
    url: String,
}

/// A source with one of everything (`odd_tree`) plus 12 directories of 25 files each,
/// so the plan cuts it into many units, and a hard link between two of them.
fn env() -> Env {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    odd_tree(&src);
    for d in 0..12 {
        for f in 0..25 {
            write(
                &src.join(format!("d{d:02}/sub/f{f}")),
                format!("dir {d} file {f}\n").repeat(f + 1).as_bytes(),
            );
        }
    }
    std::fs::hard_link(src.join("d00/sub/f3"), src.join("d11/linked-to-d00")).unwrap();
    let repo = t.path().join("repo");
    let url = file_url(&repo);
    let (code, _, err) = sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{err}");
    Env { t, src, repo, url }
}

/// `snapring backup --json` of the source into the repository: `args` name the worker,
/// `vars` are its environment (the engines' variables of the test's own are removed).
fn worker(e: &Env, args: &[&str], vars: &[(&str, &str)]) -> Command {
    worker_jobs(e, 2, args, vars)
}

/// [`worker`] with `--jobs jobs` (2: one unit at a time; from 4: two).
fn worker_jobs(e: &Env, jobs: usize, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin());
    c.args(["backup", "--json", "--jobs", &jobs.to_string(), "--source"])
        .arg(&e.src)
        .args(["--dest", &e.url])
        .args(args)
        .env("SNAPRING_PASSWORD", PASSWORD)
        .env("SNAPRING_CATALOG", "off")
        .env("XDG_CACHE_HOME", e.t.path().join("cache"))
        .env_remove("SNAPRING_FAILPOINTS")
        .env_remove("SNAPRING_SHARD_LEASE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for v in [
        "JOB_COMPLETION_INDEX",
        "SLURM_ARRAY_TASK_ID",
        "AWS_BATCH_JOB_ARRAY_INDEX",
        "SNAPRING_RUN_ID",
        "SNAPRING_SHARDS",
    ] {
        c.env_remove(v);
    }
    for (k, v) in vars {
        c.env(k, v);
    }
    c
}

fn spawn(e: &Env, i: usize, n: usize, run: &str, vars: &[(&str, &str)]) -> Child {
    let shard = format!("{i}/{n}");
    worker(e, &["--shard", &shard, "--run-id", run], vars)
        .spawn()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A worker's JSON report, once it exited 0.
fn report(o: &Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn open(e: &Env) -> Repo {
    Repo::open(&e.repo, PASSWORD.as_bytes()).unwrap()
}

/// The repository's snapshots.
fn snapshots(e: &Env) -> Vec<(Id, snapshot::Snapshot)> {
    snapshot::load_all(&open(e)).unwrap()
}

/// A single-node backup of the source into the repository (label `single`): its JSON
/// report and its snapshot.
fn single_node(e: &Env) -> (serde_json::Value, Id) {
    let (code, single, err) = sr(&[
        "backup",
        "--source",
        e.src.to_str().unwrap(),
        "--dest",
        &e.url,
        "--label",
        "single",
        "--json",
    ]);
    assert_eq!(code, 0, "{single}\n{err}");
    let single: serde_json::Value = serde_json::from_str(&single).unwrap();
    let id = Id::parse(single["snapshot"].as_str().unwrap()).unwrap();
    (single, id)
}

/// The tree of the source directory in snapshot `id` (under the ancestors' trees).
fn source_tree(e: &Env, id: &Id) -> Id {
    let repo = open(e);
    let snap: snapshot::Snapshot = repo
        .load_json(snapring::restic::backend::Kind::Snapshot, id)
        .unwrap();
    let src = std::fs::canonicalize(&e.src).unwrap();
    let comps: Vec<&OsStr> = src.iter().skip(1).collect();
    descend(&repo, snap.tree, &comps).unwrap().unwrap()
}

/// The run's claims of units (not of the plan or finalize).
fn unit_claims(e: &Env, run: &str) -> Vec<String> {
    let mut v = run_files(e, run, "claims");
    v.retain(|c| c.starts_with('u'));
    v
}

/// `snapring status --json` of the run.
fn run_status(e: &Env, run: &str) -> serde_json::Value {
    let (code, out, err) = sr(&["status", "--dest", &e.url, "--run-id", run, "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// The run's units, from `snapring status`.
fn plan_units(e: &Env, run: &str) -> Vec<String> {
    run_status(e, run)["unit_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect()
}

/// The run's files of one kind (`done`, `claims`), by name.
fn run_files(e: &Env, run: &str, kind: &str) -> Vec<String> {
    let dir = e.repo.join("snapring/shards").join(run).join(kind);
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.map(|x| x.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Restores snapshot `id` with snapring and checks it equals the source.
fn assert_restores_to_source(e: &Env, id: &str, to: &str) {
    let to = e.t.path().join(to);
    let (code, out, err) = sr(&[
        "restore",
        "--dest",
        &e.url,
        id,
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_same_tree(
        &describe(&e.src),
        &describe(&to),
        "a shard run's snapshot, restored",
    );
}

fn units_of(r: &serde_json::Value, key: &str) -> Vec<String> {
    r[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} in {r}"))
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn four_workers_make_one_snapshot_equal_to_the_source_and_to_a_single_node_runs() {
    let e = env();
    let run = "slurm-77";
    // Worker 0 from the flags, 1 as a Kubernetes Indexed Job's pod, 2 as a Slurm array
    // element (its run id from SLURM_ARRAY_JOB_ID), 3 as an AWS Batch array child.
    let kids = vec![
        spawn(&e, 0, 4, run, &[]),
        worker(
            &e,
            &[],
            &[
                ("JOB_COMPLETION_INDEX", "1"),
                ("SNAPRING_SHARDS", "4"),
                ("SNAPRING_RUN_ID", run),
            ],
        )
        .spawn()
        .unwrap(),
        worker(
            &e,
            &[],
            &[
                ("SLURM_ARRAY_TASK_ID", "12"),
                ("SLURM_ARRAY_TASK_MIN", "10"),
                ("SLURM_ARRAY_TASK_COUNT", "4"),
                ("SLURM_ARRAY_JOB_ID", "77"),
            ],
        )
        .spawn()
        .unwrap(),
        worker(
            &e,
            &["--shards", "4", "--run-id", run],
            &[("AWS_BATCH_JOB_ARRAY_INDEX", "3")],
        )
        .spawn()
        .unwrap(),
    ];
    let reports: Vec<serde_json::Value> = kids
        .into_iter()
        .map(|k| report(&k.wait_with_output().unwrap()))
        .collect();
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r["worker"], i, "{r}");
        assert_eq!(r["status"], "complete", "{r}");
    }
    // One snapshot, published by one worker, named alike by all.
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let id = snaps[0].0.hex();
    assert!(reports.iter().all(|r| r["snapshot"] == id.as_str()));
    let finalizers: Vec<_> = reports.iter().filter(|r| r["finalized"] == true).collect();
    assert_eq!(finalizers.len(), 1, "{reports:?}");
    // One worker claimed the finalize, once: the spine's trees were built once.
    let claims = run_files(&e, run, "claims");
    let fin: Vec<_> = claims
        .iter()
        .filter(|c| c.starts_with("finalize"))
        .collect();
    assert_eq!(fin, ["finalize.g1"], "{claims:?}");
    // One worker sized the source for the plan; the others waited for it.
    let plan: Vec<_> = claims.iter().filter(|c| c.starts_with("plan")).collect();
    assert_eq!(plan, ["plan.g1"], "{claims:?}");
    assert!(snaps[0].1.tags.contains(&format!("shard-run={run}")));
    // Every unit committed exactly once, by the worker that reports it.
    // Published: each commit is a tombstone now, the claims stay.
    let done = plan_units(&e, run);
    assert_eq!(run_files(&e, run, "done"), done);
    for u in &done {
        let p = e
            .repo
            .join("snapring/shards")
            .join(run)
            .join("done")
            .join(u);
        assert_eq!(std::fs::read(p).unwrap(), b"published\n");
    }
    assert!(done.len() >= 8, "the tree is cut into units: {done:?}");
    let mut built: Vec<String> = reports.iter().flat_map(|r| units_of(r, "units")).collect();
    built.sort();
    assert_eq!(built, done);
    let totals = &finalizers[0]["totals"];
    assert_eq!(totals["units"], done.len(), "{totals}");
    assert_eq!(
        totals["per_worker"].as_array().unwrap().len(),
        4,
        "{totals}"
    );
    assert_eq!(totals["problems"].as_array().unwrap().len(), 0, "{totals}");

    assert_restores_to_source(&e, &id, "restored");
    // Hard links across units come back as one inode.
    let to = e.t.path().join("restored");
    assert_eq!(
        ino(&to.join("d00/sub/f3")),
        ino(&to.join("d11/linked-to-d00"))
    );
    assert_eq!(ino(&to.join("links/a")), ino(&to.join("links/sub/c")));

    // A single-node run of the same source makes the very same source tree.
    let (single, single_id) = single_node(&e);
    // It found the shard run's snapshot a valid parent: nothing read again.
    assert_eq!(single["repository"]["files_read"], 0, "{single}");
    assert_eq!(source_tree(&e, &snaps[0].0), source_tree(&e, &single_id));

    if let Some(restic) = restic_binary("a shard run's repository") {
        run_restic(&restic, &e.repo, &["check", "--read-data"]);
        let target = e.t.path().join("by-restic");
        run_restic(
            &restic,
            &e.repo,
            &["restore", &id, "--target", target.to_str().unwrap()],
        );
        let src = std::fs::canonicalize(&e.src).unwrap();
        assert_same_tree(
            &describe(&e.src),
            &describe(&target.join(src.strip_prefix("/").unwrap())),
            "restic restore of a shard run's snapshot",
        );
    }
}

#[test]
fn a_worker_killed_before_its_commit_leaves_its_unit_to_the_others() {
    let e = env();
    let lease = [("SNAPRING_SHARD_LEASE", "2s")];
    let kill = [
        ("SNAPRING_SHARD_LEASE", "2s"),
        ("SNAPRING_FAILPOINTS", "shard.repo.before_commit=kill"),
    ];
    let k1 = spawn(&e, 1, 3, "r", &kill);
    let out1 = k1.wait_with_output().unwrap();
    assert_eq!(out1.status.code(), None, "SIGKILLed: {}", text(&out1));
    let claims = unit_claims(&e, "r");
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert!(run_files(&e, "r", "done").is_empty());
    // The others take the dead worker's claim over at once (its process is gone).
    let others: Vec<Child> = [0, 2]
        .iter()
        .map(|&i| spawn(&e, i, 3, "r", &lease))
        .collect();
    let reports: Vec<serde_json::Value> = others
        .into_iter()
        .map(|k| report(&k.wait_with_output().unwrap()))
        .collect();
    let taken = claims[0].split_once(".g").unwrap().0.to_string();
    assert!(
        run_files(&e, "r", "claims").contains(&format!("{taken}.g2")),
        "{taken} claimed again"
    );
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
    let mut built: Vec<String> = reports.iter().flat_map(|r| units_of(r, "units")).collect();
    built.sort();
    assert_eq!(built, plan_units(&e, "r"));
    assert!(built.contains(&taken));
    // The retried worker finds the run published and exits 0, building nothing.
    let retry = report(&spawn(&e, 1, 3, "r", &lease).wait_with_output().unwrap());
    assert_eq!(retry["status"], "complete", "{retry}");
    assert_eq!(retry["finalized"], false);
    assert_eq!(retry["published_before"], true, "{retry}");
    assert_eq!(retry["snapshot"], snaps[0].0.hex().as_str());
    assert!(units_of(&retry, "units").is_empty(), "{retry}");
    assert_eq!(snapshots(&e).len(), 1);
}

/// A claim object whose content does not read (emptied): `status` counts it stale
/// once its lease (its last beat) has lapsed, not pending, and a worker takes it over
/// (generation 2) and publishes the run.
#[test]
fn an_unreadable_claim_is_stale_past_its_lease_and_taken_over() {
    let e = env();
    let lease = [("SNAPRING_SHARD_LEASE", "2s")];
    let kill = [
        ("SNAPRING_SHARD_LEASE", "2s"),
        ("SNAPRING_FAILPOINTS", "shard.repo.before_commit=kill"),
    ];
    let o = spawn(&e, 1, 3, "r", &kill).wait_with_output().unwrap();
    assert_eq!(o.status.code(), None, "SIGKILLed: {}", text(&o));
    let claims = unit_claims(&e, "r");
    assert_eq!(claims.len(), 1, "{claims:?}");
    let claim = e.repo.join("snapring/shards/r/claims").join(&claims[0]);
    std::fs::File::create(&claim).unwrap();
    let taken = claims[0].split_once(".g").unwrap().0.to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let claims_dir = e.repo.join("snapring/shards/r/claims");
    let before = std::fs::metadata(&claims_dir).unwrap().modified().unwrap();
    let args = ["status", "--dest", &e.url, "--run-id", "r", "--json"].map(OsStr::new);
    let o = snapring(&args, &[("SNAPRING_PASSWORD", PASSWORD), lease[0]]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // `status` writes nothing, not even a file to read the storage's clock by.
    assert_eq!(
        std::fs::metadata(&claims_dir).unwrap().modified().unwrap(),
        before,
        "status changed {}",
        claims_dir.display()
    );
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let unit = st["unit_list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == taken.as_str())
        .unwrap();
    assert_eq!(unit["state"], "stale", "{unit}");
    assert_eq!(unit["generation"], 1, "{unit}");
    assert_eq!(st["stale"], 1, "{st}");
    let others: Vec<Child> = [0, 2]
        .iter()
        .map(|&i| spawn(&e, i, 3, "r", &lease))
        .collect();
    for k in others {
        let o = k.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    assert!(
        run_files(&e, "r", "claims").contains(&format!("{taken}.g2")),
        "{taken} claimed again"
    );
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
}

/// A claim object emptied while its holder still works on the unit and beats: it is
/// left to it (the beat is its lease) rather than taken over at once, and the holder
/// commits it (generation 1).
#[test]
fn an_unreadable_claim_whose_holder_still_beats_is_left_to_it() {
    let e = env();
    let pause = e.t.path().join("paused");
    let fp = format!("shard.repo.before_walk=pause:{}", pause.display());
    let w1 = spawn(
        &e,
        1,
        2,
        "r",
        &[SHORT_LEASE[0], ("SNAPRING_FAILPOINTS", &fp)],
    );
    wait_for(&pause);
    let claims = unit_claims(&e, "r");
    assert_eq!(claims.len(), 1, "{claims:?}");
    std::fs::File::create(e.repo.join("snapring/shards/r/claims").join(&claims[0])).unwrap();
    let held = claims[0].split_once(".g").unwrap().0.to_string();
    // Its first beat (until then only the claim's own time could tell, and it does not
    // read: taken over at once, as a dead holder's).
    wait_for(&e.repo.join("snapring/shards/r/beats").join(&claims[0]));
    // Worker 0 builds every other unit, then waits on this one for two leases.
    let w0 = spawn(&e, 0, 2, "r", &SHORT_LEASE);
    let units = plan_units(&e, "r").len();
    let t0 = Instant::now();
    while run_files(&e, "r", "done").len() < units - 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "worker 0 did not build the other units"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(
        unit_claims(&e, "r")
            .iter()
            .filter(|c| c.starts_with(&format!("{held}.")))
            .collect::<Vec<_>>(),
        [&claims[0]],
        "taken over from a holder that beats"
    );
    std::fs::remove_file(&pause).unwrap();
    for k in [w1, w0] {
        let o = k.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
}

/// The lease of the SIGSTOP tests' workers.
const SHORT_LEASE: [(&str, &str); 1] = [("SNAPRING_SHARD_LEASE", "2s")];

/// A worker stopped past its lease: worker `i` of `n` of run `run` paused at failpoint
/// `point`, then SIGSTOPped (its lease is no longer renewed) with the pause lifted, so
/// that [`Stopped::resume`] lets it go on from there.
struct Stopped {
    child: Child,
    pid: rustix::process::Pid,
}

impl Stopped {
    fn at(e: &Env, i: usize, n: usize, run: &str, point: &str) -> Stopped {
        let pause = e.t.path().join(format!("paused-{run}-{i}"));
        let fp = format!("{point}=pause:{}", pause.display());
        let child = spawn(
            e,
            i,
            n,
            run,
            &[SHORT_LEASE[0], ("SNAPRING_FAILPOINTS", &fp)],
        );
        wait_for(&pause);
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
        std::fs::remove_file(&pause).unwrap();
        Stopped { child, pid }
    }

    /// SIGCONT, and its output once it exits.
    fn resume(self) -> Output {
        rustix::process::kill_process(self.pid, rustix::process::Signal::CONT).unwrap();
        self.child.wait_with_output().unwrap()
    }
}

/// Every commit of the published run `run` is a tombstone (tidied by its publisher).
fn assert_tidied(e: &Env, run: &str) {
    let done = run_files(e, run, "done");
    assert_eq!(done, plan_units(e, run), "{run}");
    let dir = e.repo.join("snapring/shards").join(run).join("done");
    for u in done {
        assert_eq!(std::fs::read(dir.join(&u)).unwrap(), b"published\n", "{u}");
    }
}

#[test]
fn a_worker_stopped_past_its_lease_is_taken_over_and_its_late_commit_refused() {
    let e = env();
    // Stopped with its unit built and not committed.
    let stalled = Stopped::at(&e, 0, 2, "r", "shard.repo.before_commit");
    let claims = unit_claims(&e, "r");
    assert_eq!(claims.len(), 1, "{claims:?}");
    let unit = claims[0].split_once(".g").unwrap().0.to_string();
    let other = report(
        &spawn(&e, 1, 2, "r", &SHORT_LEASE)
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(other["finalized"], true, "{other}");
    assert!(units_of(&other, "units").contains(&unit), "{other}");
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    // Resumed after the run was published: its commit is refused, it publishes nothing.
    let late = report(&stalled.resume());
    assert_eq!(units_of(&late, "units_refused"), [unit], "{late}");
    assert!(units_of(&late, "units").is_empty(), "{late}");
    assert_eq!(late["finalized"], false);
    assert_eq!(late["snapshot"], snaps[0].0.hex().as_str());
    assert_eq!(snapshots(&e).len(), 1);
    let mut by_other = units_of(&other, "units");
    by_other.sort();
    assert_eq!(plan_units(&e, "r"), by_other);
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
}

/// The finalizer stopped past its lease once it found `final` missing, before it read
/// the commits: the other worker takes finalize over, publishes and tidies (the commits
/// become tombstones). Resumed, the stalled one finds the run published by another and
/// exits 0 (not 1: a Job's failure policy would fail the whole run), publishing nothing.
#[test]
fn a_finalizer_stopped_past_its_lease_and_resumed_after_the_tidy_ends_published_by_another() {
    let e = env();
    // Alone, worker 0 builds every unit and claims finalize.
    let stalled = Stopped::at(&e, 0, 2, "f", "shard.repo.before_commits_read");
    let other = report(
        &spawn(&e, 1, 2, "f", &SHORT_LEASE)
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(other["finalized"], true, "{other}");
    assert!(units_of(&other, "units").is_empty(), "{other}");
    let claims = run_files(&e, "f", "claims");
    assert!(
        claims.contains(&"finalize.g2".to_string()),
        "taken over: {claims:?}"
    );
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    assert_tidied(&e, "f");
    let out = stalled.resume();
    let late = report(&out);
    assert_eq!(late["status"], "complete", "{late}");
    assert_eq!(late["finalized"], false, "{late}");
    assert_eq!(late["snapshot"], snaps[0].0.hex().as_str(), "{late}");
    assert_eq!(
        late["units"].as_array().unwrap().len(),
        plan_units(&e, "f").len()
    );
    assert_eq!(snapshots(&e).len(), 1);
    assert_tidied(&e, "f");
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
}

#[test]
fn a_crash_in_finalize_before_or_after_final_still_makes_exactly_one_snapshot() {
    for (point, run) in [
        ("shard.repo.before_finalize", "before"),
        ("shard.repo.before_snapshot", "after"),
    ] {
        let e = env();
        let fp = format!("{point}=kill");
        let out = spawn(&e, 0, 1, run, &[("SNAPRING_FAILPOINTS", &fp)])
            .wait_with_output()
            .unwrap();
        assert_eq!(out.status.code(), None, "{point}: {}", text(&out));
        assert!(snapshots(&e).is_empty(), "{point}");
        let final_file = e.repo.join("snapring/shards").join(run).join("final");
        assert_eq!(final_file.exists(), run == "after", "{point}");
        let again = report(&spawn(&e, 0, 1, run, &[]).wait_with_output().unwrap());
        let snaps = snapshots(&e);
        assert_eq!(snaps.len(), 1, "{point}");
        assert_eq!(again["snapshot"], snaps[0].0.hex().as_str(), "{point}");
        // After `final`, the rerun writes the snapshot `final` holds (it did not make
        // it) and publishes the run, with the figures `final` keeps.
        assert_eq!(again["finalized"], true, "{point}: {again}");
        assert_eq!(again["totals"]["units"], run_files(&e, run, "done").len());
        assert!(units_of(&again, "units").is_empty(), "{point}: {again}");
        // Tidied up by whoever published or mended it: every commit a tombstone.
        let dir = e.repo.join("snapring/shards").join(run);
        assert!(dir.join("published").exists(), "{point}");
        assert_tidied(&e, run);
        assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
    }
}

#[test]
fn two_workers_for_one_index_and_an_incremental_run() {
    let e = env();
    // Two processes for index 0 and one for index 1: one snapshot, each unit once.
    let kids: Vec<Child> = [0, 0, 1]
        .iter()
        .map(|&i| spawn(&e, i, 2, "one", &[]))
        .collect();
    let reports: Vec<serde_json::Value> = kids
        .into_iter()
        .map(|k| report(&k.wait_with_output().unwrap()))
        .collect();
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    assert_eq!(
        reports.iter().filter(|r| r["finalized"] == true).count(),
        1,
        "{reports:?}"
    );
    let mut built: Vec<String> = reports.iter().flat_map(|r| units_of(r, "units")).collect();
    built.sort();
    assert_eq!(built, plan_units(&e, "one"));
    // No parent: the plan's weights come from a walk of the source.
    assert_eq!(run_status(&e, "one")["sized_by"], "walk");
    let first = snaps[0].0;

    // The next run reads only the file that changed, from the first run's snapshot.
    write(&e.src.join("d05/sub/f7"), b"changed since the first run\n");
    let kids: Vec<Child> = (0..3).map(|i| spawn(&e, i, 3, "two", &[])).collect();
    let reports: Vec<serde_json::Value> = kids
        .into_iter()
        .map(|k| report(&k.wait_with_output().unwrap()))
        .collect();
    let fin = reports
        .iter()
        .find(|r| r["finalized"] == true)
        .unwrap_or_else(|| panic!("{reports:?}"));
    assert_eq!(fin["parent"], first.hex().as_str(), "{fin}");
    // From the parent's trees, not from the source.
    assert_eq!(run_status(&e, "two")["sized_by"], "snapshot");
    let t = &fin["totals"];
    assert_eq!(t["files_read"], 1, "{t}");
    assert_eq!(
        t["files_unchanged"].as_u64().unwrap() + 1,
        t["files"].as_u64().unwrap(),
        "{t}"
    );
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 2);
    let second = snaps.iter().find(|(id, _)| *id != first).unwrap();
    assert_eq!(second.1.parent, Some(first));
    assert_restores_to_source(&e, &second.0.hex(), "restored");
}

#[test]
fn a_worker_started_with_another_count_or_with_atime_is_refused() {
    let e = env();
    report(&spawn(&e, 0, 1, "r", &[]).wait_with_output().unwrap());
    let out = spawn(&e, 1, 2, "r", &[]).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("plan is for 1 workers"),
        "{}",
        text(&out)
    );
    let out = worker(
        &e,
        &["--shard", "0/2", "--run-id", "x", "--with-atime"],
        &[],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("with_atime"),
        "{}",
        text(&out)
    );
    assert!(!e.repo.join("snapring/shards/x").exists());
    assert_eq!(snapshots(&e).len(), 1);
}

/// With a job's config: the worker that publishes records the run once in the catalog
/// (its id the run's, with each worker's figures) and sends the job's notification
/// once; a worker that fails tells the notifiers about its own part, unrecorded, and
/// the others build its unit.
#[test]
fn the_publisher_records_and_notifies_the_run_once_and_a_failed_worker_its_part() {
    let e = env();
    let http = http_server();
    let catalog = e.t.path().join("state/catalog.db");
    let pw = e.t.path().join("pw");
    write(&pw, PASSWORD.as_bytes());
    let cfg = e.t.path().join("s.toml");
    write(
        &cfg,
        format!(
            "[job.offsite]\nsource = \"{}\"\ndest = \"{}\"\npassword_file = \"{}\"\n\
             notify = [\"hook\"]\nnotify_success = true\n\n\
             [notify.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{}/n\"\n",
            e.src.display(),
            e.url,
            pw.display(),
            http.port
        )
        .as_bytes(),
    );
    let kids: Vec<Child> = (0..3)
        .map(|i| {
            let shard = format!("{i}/3");
            let mut c = Command::new(bin());
            c.args(["--catalog", catalog.to_str().unwrap(), "backup", "--json"])
                .args(["--config", cfg.to_str().unwrap()])
                .args(["--shard", &shard, "--run-id", "nrun"])
                .env("XDG_CACHE_HOME", e.t.path().join("cache"))
                .env_remove("SNAPRING_PASSWORD")
                .env_remove("SNAPRING_CATALOG")
                .env_remove("SNAPRING_FAILPOINTS")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if i == 1 {
                c.env("SNAPRING_FAILPOINTS", "shard.repo.before_commit=error");
            }
            c.spawn().unwrap()
        })
        .collect();
    let outs: Vec<Output> = kids
        .into_iter()
        .map(|k| k.wait_with_output().unwrap())
        .collect();
    assert_eq!(outs[1].status.code(), Some(1), "{}", text(&outs[1]));
    report(&outs[0]);
    report(&outs[2]);
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");

    let mut got: Vec<serde_json::Value> = http
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| serde_json::from_str(b).unwrap())
        .collect();
    got.sort_by_key(|b| b["status"].as_str().unwrap_or_default().to_string());
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["status"], "complete", "{got:?}");
    assert_eq!(got[0]["run"], "nrun", "{got:?}");
    assert_eq!(got[1]["status"], "failed", "{got:?}");
    assert!(
        got[1].to_string().contains("worker 1 of 3"),
        "the failed worker names itself: {}",
        got[1]
    );

    let c = rusqlite::Connection::open(&catalog).unwrap();
    let rows: Vec<(String, String, Option<String>)> = c
        .prepare("SELECT id, status, snapshot FROM runs")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        [(
            "nrun".to_string(),
            "complete".to_string(),
            Some(snaps[0].0.hex())
        )]
    );
}

/// A run whose workers all stopped before publishing: `status` shows every unit
/// committed and nothing published; `prune` keeps what it committed (its packs are
/// referenced by no snapshot yet); `finalize` publishes it. A run whose packs were
/// pruned anyway (a prune that knows nothing of shard runs: restic's own) is refused
/// at finalize, nothing published; `prune --drop-unfinished-runs` gives it up.
#[test]
fn an_unpublished_run_is_kept_from_prune_and_published_by_finalize() {
    let e = env();
    let kill = [("SNAPRING_FAILPOINTS", "shard.repo.before_finalize=kill")];
    let out = spawn(&e, 0, 1, "r1", &kill).wait_with_output().unwrap();
    assert_eq!(out.status.code(), None, "{}", text(&out));
    let (code, st, err) = sr(&["status", "--dest", &e.url, "--run-id", "r1", "--json"]);
    assert_eq!(code, 0, "{err}");
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["finalized"], false, "{st}");
    assert_eq!(st["done"], st["units"], "{st}");
    let (code, out, err) = sr(&["prune", "--dest", &e.url, "--json"]);
    assert_eq!(code, 0, "{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["plan"]["shard_runs_kept"], 1, "{p}");
    assert_eq!(p["plan"]["packs_deleted"], 0, "{p}");
    let (code, out, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "r1", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let fin: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(fin["finalized"], true, "{fin}");
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    assert_eq!(fin["snapshot"], snaps[0].0.hex().as_str());
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
    let (code, st, _) = sr(&["status", "--dest", &e.url, "--run-id", "r1", "--json"]);
    assert_eq!(code, 0);
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["finalized"], true, "{st}");

    // New content, committed, not published; then pruned by a prune that does not ask.
    write(&e.src.join("d03/new"), &pseudo_random(300_000, 3));
    let out = spawn(&e, 0, 1, "r2", &kill).wait_with_output().unwrap();
    assert_eq!(out.status.code(), None, "{}", text(&out));
    let mut repo = open(&e);
    snapring::restic::prune::prune(&mut repo, false).unwrap();
    let out = spawn(&e, 0, 1, "r2", &[]).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no index of the repository holds"),
        "{}",
        text(&out)
    );
    assert_eq!(snapshots(&e).len(), 1, "nothing published");
    let (code, _, err) = sr(&["prune", "--dest", &e.url, "--drop-unfinished-runs"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("gave up the unfinished shard run r2"), "{err}");
    assert!(!e.repo.join("snapring/shards/r2").exists());
    assert!(e.repo.join("snapring/shards/r1/final").exists());
}

/// `snapring finalize` into a repository, held before it reads the commits
/// (`shard.repo.before_commits_read`), then SIGTERM: exit 3, "interrupted", nothing
/// published; the next finalize publishes the run, equal to the source. (It set no
/// signal handler: the signal ended it, no exit code, no word.)
#[test]
fn a_sigterm_stops_finalize_into_a_repository_and_the_next_one_publishes() {
    sigterm_stops_finalize_at("shard.repo.before_commits_read");
}

/// The same, the signal come while it read the commits and wrote the spine's trees:
/// checked again before its `final` (else a local repository, whose requests are not
/// given up, published on, exit 0).
#[test]
fn a_sigterm_after_the_commits_are_read_stops_finalize_before_its_final() {
    sigterm_stops_finalize_at("shard.repo.before_final");
}

fn sigterm_stops_finalize_at(failpoint: &str) {
    let e = env();
    let kill = [("SNAPRING_FAILPOINTS", "shard.repo.before_finalize=kill")];
    let out = spawn(&e, 0, 1, "r1", &kill).wait_with_output().unwrap();
    assert_eq!(out.status.code(), None, "{}", text(&out));
    let pause = e.t.path().join("paused");
    let mut cmd = Command::new(bin());
    cmd.args(["finalize", "--dest", &e.url, "--run-id", "r1"])
        .env("SNAPRING_PASSWORD", PASSWORD)
        .env("SNAPRING_CATALOG", "off");
    let child = terminated_at(cmd, failpoint, &pause);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("finalize of run r1: interrupted; nothing was published"),
        "{}",
        text(&out)
    );
    assert!(snapshots(&e).is_empty(), "nothing published");
    assert!(!e.repo.join("snapring/shards/r1/final").exists());
    let (code, out, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "r1", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let fin: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(fin["finalized"], true, "{fin}");
    // No worker: no `worker` (as the store's finalize; before the fix 2^64 − 1).
    assert!(fin.get("worker").is_none(), "{fin}");
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
}

/// The report of the only worker of run `run` with `--jobs jobs` and `--window 3s`,
/// slowed by `failpoints`: it exits 3, `incomplete`. (3 s, not 1 s: its plan and first
/// claims must come well within the window on a loaded machine.)
fn out_of_window(e: &Env, jobs: usize, run: &str, failpoints: &str) -> serde_json::Value {
    let args = ["--shard", "0/1", "--run-id", run, "--window", "3s"];
    let out = worker_jobs(e, jobs, &args, &[("SNAPRING_FAILPOINTS", failpoints)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "incomplete", "{r}");
    r
}

/// A worker's `--window` ends the worker, not the run: it stops at its next step (here
/// after its first commit, slowed past the window), exits 3 (`incomplete`, retried by
/// the engines) and publishes nothing; a rerun of the same index builds the rest and
/// publishes the run.
#[test]
fn a_workers_window_ends_it_and_its_rerun_finishes_the_run() {
    let e = env();
    let r = out_of_window(&e, 2, "w", "shard.repo.before_commit=sleep:4000");
    assert_eq!(units_of(&r, "units").len(), 1, "{r}");
    assert!(snapshots(&e).is_empty());
    let again = report(&spawn(&e, 0, 1, "w", &[]).wait_with_output().unwrap());
    assert_eq!(again["finalized"], true, "{again}");
    assert_eq!(
        units_of(&again, "units").len() + 1,
        plan_units(&e, "w").len(),
        "{again}"
    );
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
}

/// A worker of three lanes stopped by its window while each builds a unit (each
/// unit's walk starts 4 s late, the window is 3 s): all three units are named in its
/// report, and nothing is committed or published.
#[test]
fn a_window_that_ends_three_lanes_names_every_unit() {
    let e = env();
    let r = out_of_window(&e, 4, "w2", "shard.repo.before_walk=sleep:4000");
    let mut stopped = units_of(&r, "interrupted_units");
    assert_eq!(stopped.len(), 3, "{r}");
    stopped.sort();
    stopped.dedup();
    assert_eq!(stopped.len(), 3, "three different units: {r}");
    assert!(units_of(&r, "units").is_empty(), "{r}");
    assert!(snapshots(&e).is_empty());
}

/// Two hosts (the dead worker runs in its own UTS namespace, as host `other-host`):
/// a holder on another host cannot be seen to have died, so its unit is taken over
/// only once its lease has lapsed (measured between the two claims' own times), and
/// the run is published all the same.
#[test]
fn a_dead_worker_on_another_host_is_taken_over_only_after_its_lease() {
    let e = env();
    if !common::uts_namespaces() {
        return;
    }
    let lease = [("SNAPRING_SHARD_LEASE", "3s")];
    let mut c = worker(&e, &["--shard", "0/2", "--run-id", "hosts"], &lease);
    common::killed_on_host(&c, "other-host", "shard.repo.before_commit=kill");
    let claims = unit_claims(&e, "hosts");
    assert_eq!(claims.len(), 1, "{claims:?}");
    let unit = claims[0].split_once(".g").unwrap().0.to_string();
    let holder = |g: u32| -> serde_json::Value {
        let p = e
            .repo
            .join("snapring/shards/hosts/claims")
            .join(format!("{unit}.g{g}"));
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    assert_eq!(holder(1)["host"], "other-host");
    c = worker(&e, &["--shard", "1/2", "--run-id", "hosts"], &lease);
    let r = report(&c.output().unwrap());
    assert_eq!(r["finalized"], true, "{r}");
    assert!(units_of(&r, "units").contains(&unit), "{r}");
    let at = |v: serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v["at"].as_str().unwrap()).unwrap()
    };
    let waited = at(holder(2)) - at(holder(1));
    assert!(
        waited >= chrono::TimeDelta::seconds(3),
        "taken over after {waited:?}, within the 3 s lease"
    );
    assert_ne!(holder(2)["host"], "other-host");
    assert_eq!(snapshots(&e).len(), 1);
}

/// A retried pod: index 0's first process runs on another host and is SIGKILLed before
/// its first commit; its rerun here takes over the claim the dead one made before the
/// rerun started at once, not after the 60 s lease, and publishes the run.
#[test]
fn a_rerun_on_another_host_takes_its_predecessors_claim_over_at_once() {
    let e = env();
    if !common::uts_namespaces() {
        return;
    }
    let lease = [("SNAPRING_SHARD_LEASE", "60s")];
    let c = worker(&e, &["--shard", "0/1", "--run-id", "retried"], &lease);
    common::killed_on_host(&c, "other-host", "shard.repo.before_commit=kill");
    let claims = unit_claims(&e, "retried");
    assert_eq!(claims.len(), 1, "{claims:?}");
    let t0 = Instant::now();
    let r = report(
        &worker(&e, &["--shard", "0/1", "--run-id", "retried"], &lease)
            .output()
            .unwrap(),
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the rerun took {:?}: it waited for the lease",
        t0.elapsed()
    );
    assert_eq!(r["finalized"], true, "{r}");
    let unit = claims[0].split_once(".g").unwrap().0.to_string();
    assert!(
        unit_claims(&e, "retried").contains(&format!("{unit}.g2")),
        "{:?}",
        unit_claims(&e, "retried")
    );
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
}

/// Worker 1's clock is 10 minutes behind (libfaketime): the claim of a worker stopped
/// past its lease is still taken over once the lease has lapsed by the repository's
/// clock (the claim's and its beat's mtimes), not 10 minutes later; the run is
/// published and the stopped worker's late commit refused.
#[test]
fn a_worker_whose_clock_is_behind_takes_a_stalled_workers_unit_over_after_the_lease() {
    let e = env();
    let run = "behind";
    let mut c = worker(&e, &["--shard", "1/2", "--run-id", run], &SHORT_LEASE);
    if !with_clock_off(&mut c, "-600") {
        return;
    }
    let stalled = Stopped::at(&e, 0, 2, run, "shard.repo.before_commit");
    let claims = unit_claims(&e, run);
    let [name] = claims.as_slice() else {
        panic!("one claim expected: {claims:?}")
    };
    let unit = name.strip_suffix(".g1").unwrap().to_string();
    let mut w1 = c.spawn().unwrap();
    let t0 = Instant::now();
    let ended = loop {
        if w1.try_wait().unwrap().is_some() {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = w1.kill();
    let o = w1.wait_with_output().unwrap();
    let late = stalled.resume();
    assert!(
        ended,
        "worker 1 (clock 10 min behind) did not take the unit over within 60 s \
         (a 2 s lease): {}",
        text(&o)
    );
    let r1 = report(&o);
    assert_eq!(r1["finalized"], true, "{r1}");
    assert!(units_of(&r1, "units").contains(&unit), "{r1}");
    let late = report(&late);
    assert_eq!(units_of(&late, "units_refused"), [unit], "{late}");
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
}

/// Worker 1's clock is 2 hours ahead (libfaketime): a live worker's claim (held in its
/// unit's walk), renewed by its beats, is not past its lease by the repository's clock, so worker 1 builds the
/// other units and waits rather than build it again; the run is published once.
#[test]
fn a_worker_whose_clock_is_ahead_leaves_a_live_workers_unit_to_it() {
    let e = env();
    let run = "ahead";
    let mut c = worker(&e, &["--shard", "1/2", "--run-id", run], &SHORT_LEASE);
    if !with_clock_off(&mut c, "+7200") {
        return;
    }
    let pause = e.t.path().join("paused");
    let fp = format!("shard.repo.before_walk=pause:{}", pause.display());
    let w0 = spawn(
        &e,
        0,
        2,
        run,
        &[SHORT_LEASE[0], ("SNAPRING_FAILPOINTS", &fp)],
    );
    wait_for(&pause);
    let claims = unit_claims(&e, run);
    let [name] = claims.as_slice() else {
        panic!("one claim expected: {claims:?}")
    };
    let unit = name.strip_suffix(".g1").unwrap().to_string();
    let w1 = c.spawn().unwrap();
    // Worker 1 commits every other unit, then only waits, three leases (a takeover
    // would follow its last commit at once).
    let units = plan_units(&e, run);
    let t0 = Instant::now();
    while run_files(&e, run, "done").len() < units.len() - 1 {
        assert!(t0.elapsed() < Duration::from_secs(60), "worker 1 is stuck");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(6));
    let claims = unit_claims(&e, run);
    std::fs::remove_file(&pause).unwrap();
    let r0 = report(&w0.wait_with_output().unwrap());
    let r1 = report(&w1.wait_with_output().unwrap());
    assert_eq!(
        claims
            .iter()
            .filter(|c| c.starts_with(&format!("{unit}.g")))
            .count(),
        1,
        "worker 1 (clock 2 h ahead) took over the unit of a live worker: {claims:?}"
    );
    assert_eq!(units_of(&r0, "units"), [unit.as_str()], "{r0}");
    assert!(!units_of(&r1, "units").contains(&unit), "{r1}");
    assert_eq!(snapshots(&e).len(), 1);
}

/// Two pods of one node with `hostNetwork: true`: the same host name, not the same pid
/// namespace. Worker 0 runs in a pid namespace of its own, under a pid that no process
/// has here, and is held before its commit; worker 1 must not take `kill(pid, 0)` (no
/// such process here) for its death and build its unit again: with a long lease, it
/// builds the other units and waits, and worker 0's unit is built once.
#[test]
fn a_live_worker_in_another_pid_namespace_of_this_host_keeps_its_unit() {
    let e = env();
    if !common::pid_namespaces() {
        return;
    }
    let run = "pidns";
    let lease = ("SNAPRING_SHARD_LEASE", "10m");
    let pause = e.t.path().join("paused");
    let fp = format!("shard.repo.before_commit=pause:{}", pause.display());
    let c = worker(
        &e,
        &["--shard", "0/2", "--run-id", run],
        &[lease, ("SNAPRING_FAILPOINTS", &fp)],
    );
    let (w0, free) = common::spawn_in_pid_namespace(&c);
    wait_for(&pause);
    let claims = unit_claims(&e, run);
    let [name] = claims.as_slice() else {
        panic!("one claim expected: {claims:?}")
    };
    let unit = name.strip_suffix(".g1").unwrap().to_string();
    let holder: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            e.repo
                .join("snapring/shards")
                .join(run)
                .join("claims")
                .join(name),
        )
        .unwrap(),
    )
    .unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(holder["host"], host.trim(), "{holder}");
    assert_eq!(holder["pid"], free, "{holder}");
    assert!(
        !std::path::Path::new(&format!("/proc/{free}")).exists(),
        "pid {free} was taken here meanwhile: the test proves nothing"
    );
    let w1 = spawn(&e, 1, 2, run, &[lease]);
    // Worker 1 commits every other unit, then only waits (a takeover would follow its
    // last commit at once).
    let units = plan_units(&e, run);
    let t0 = Instant::now();
    while run_files(&e, run, "done").len() < units.len() - 1 {
        assert!(t0.elapsed() < Duration::from_secs(60), "worker 1 is stuck");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        unit_claims(&e, run)
            .iter()
            .filter(|c| c.starts_with(&format!("{unit}.g")))
            .count(),
        1,
        "worker 1 took over the unit of a live worker of another pid namespace: {:?}",
        unit_claims(&e, run)
    );
    std::fs::remove_file(&pause).unwrap();
    let r0 = report(&w0.wait_with_output().unwrap());
    let r1 = report(&w1.wait_with_output().unwrap());
    assert_eq!(units_of(&r0, "units"), [unit.as_str()], "{r0}");
    assert!(!units_of(&r1, "units").contains(&unit), "{r1}");
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
}

/// A spine directory (one the plan cut into units of their own) replaced by a file
/// after its units were committed and before finalize: it is left out, the run is
/// published `partial` naming it, everything else restores equal to the source.
#[test]
fn a_spine_directory_replaced_before_finalize_is_left_out_and_named() {
    let e = env();
    for d in ["x", "y"] {
        for f in 0..150 {
            write(&e.src.join(format!("big/{d}/f{f}")), b"x");
        }
    }
    let pause = e.t.path().join("paused");
    let point = format!("shard.repo.before_finalize=pause:{}", pause.display());
    let child = spawn(&e, 0, 1, "sp", &[("SNAPRING_FAILPOINTS", &point)]);
    wait_for(&pause);
    let (code, st, err) = sr(&["status", "--dest", &e.url, "--run-id", "sp", "--json"]);
    assert_eq!(code, 0, "{err}");
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    let spine = st["unit_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["dir"].as_str().unwrap().to_string())
        .find(|d| d.starts_with("big/"))
        .unwrap_or_else(|| panic!("big/x or big/y is cut into units of its own: {st}"));
    std::fs::remove_dir_all(e.src.join(&spine)).unwrap();
    write(&e.src.join(&spine), b"a file now");
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "partial", "{r}");
    let problems = r["totals"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{r}");
    assert_eq!(problems[0]["path"], spine.as_str(), "{r}");
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    let to = e.t.path().join("restored");
    let (code, _, err) = sr(&[
        "restore",
        "--dest",
        &e.url,
        &snaps[0].0.hex(),
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!to.join(&spine).exists(), "{spine} left out");
    // The report counts what the snapshot holds (it counted the 150 files the left-out
    // directory's units had backed up).
    assert_eq!(r["totals"]["files"], regular_files(&to), "{r}");
    // The source without the file, its directory's time as the snapshot has it.
    let parent = e.src.join(&spine).parent().unwrap().to_path_buf();
    let md = std::fs::metadata(&parent).unwrap();
    std::fs::remove_file(e.src.join(&spine)).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        set_mtime(&parent, md.mtime(), md.mtime_nsec());
    }
    assert_same_tree(
        &describe(&e.src),
        &describe(&to),
        "all but the replaced directory",
    );
}

/// Regular files under `root` (what a report's `files` counts).
fn regular_files(root: &std::path::Path) -> u64 {
    let mut n = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for f in std::fs::read_dir(&d).unwrap() {
            let f = f.unwrap();
            let t = f.file_type().unwrap();
            if t.is_dir() {
                dirs.push(f.path());
            } else if t.is_file() {
                n += 1;
            }
        }
    }
    n
}

/// A spine directory that finalize cannot `lstat` (an I/O error: latencyfs
/// `--eio-stat`, a GETATTR failing on NFS) is not gone from the source: finalize fails,
/// nothing published, and a finalize that can read it publishes the whole tree. It
/// was left out with everything its units had backed up, the run `partial`, and with
/// retention the snapshot without it could be the only one left. (The store's
/// finalize refuses alike.)
#[test]
fn a_spine_directory_finalize_cannot_stat_stops_it_rather_than_being_left_out() {
    let e = env();
    let under = big_under(&e);
    let spine = {
        let Some(_fs) = FaultFs::mount(&under, &e.src, &[]) else {
            return;
        };
        let kill = [("SNAPRING_FAILPOINTS", "shard.repo.before_finalize=kill")];
        let out = spawn(&e, 0, 1, "eio", &kill).wait_with_output().unwrap();
        assert_eq!(out.status.code(), None, "{}", text(&out));
        let (code, st, err) = sr(&["status", "--dest", &e.url, "--run-id", "eio", "--json"]);
        assert_eq!(code, 0, "{err}");
        let st: serde_json::Value = serde_json::from_str(&st).unwrap();
        st["unit_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["dir"].as_str().unwrap().to_string())
            .find(|d| d.starts_with("big/"))
            .unwrap_or_else(|| panic!("big/x or big/y is cut into units of its own: {st}"))
    };
    {
        let _fs = FaultFs::mount(&under, &e.src, &["--eio-stat", &format!("/{spine}")]).unwrap();
        let (code, out, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "eio"]);
        assert_eq!(code, 1, "{out}\n{err}");
        assert!(
            err.contains(&spine) && err.contains("Input/output error"),
            "{out}\n{err}"
        );
        assert!(snapshots(&e).is_empty(), "nothing published: {out}\n{err}");
    }
    let _fs = FaultFs::mount(&under, &e.src, &[]).unwrap();
    let (code, out, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "eio", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
}

/// A spine directory the workers cannot open (EACCES: latencyfs `--eacces`): its units
/// keep the parent snapshot's entries of their names (their blobs are in the
/// repository), each an `unreadable` problem, the run `partial`, as the store's units
/// keep their previous manifest's (before 2026-12-06 the worker failed and nothing was
/// published until the directory could be read). Both restores give the directory its
/// previous content (a file changed since, a file added since not there); `restic
/// check --read-data` is clean; once it can be read, the next run has it all.
#[test]
fn a_spine_directory_the_workers_cannot_open_keeps_its_previous_entries() {
    let e = env();
    let under = big_under(&e);
    let r0 = {
        // A first run: the next one's plan comes from its trees, with `big/x` a spine
        // directory.
        let Some(_fs) = FaultFs::mount(&under, &e.src, &[]) else {
            return;
        };
        report(&spawn(&e, 0, 1, "r0", &[]).wait_with_output().unwrap())
    };
    let before = snapshots(&e).len();
    // Since: one file changed, one added.
    std::fs::write(under.join("big/x/f7"), b"changed since").unwrap();
    write(&under.join("big/x/added"), b"added since");
    let id = {
        let (r, said) = denied_big_x(&e, &under, &[]);
        for s in said {
            assert!(s.contains("previous snapshot"), "{r}");
        }
        // The kept files are counted, as the parent's.
        assert_eq!(r["totals"]["files"], r0["totals"]["files"], "{r}\n{r0}");
        assert_eq!(snapshots(&e).len(), before + 1);
        r["snapshot"].as_str().unwrap().to_string()
    };
    let kept_as_before = |big: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(big.join("x"))
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = (0..150).map(|f| format!("f{f}")).collect();
        want.sort();
        assert_eq!(names, want, "the previous entries, not the added one");
        for f in 0..150 {
            assert_eq!(std::fs::read(big.join(format!("x/f{f}"))).unwrap(), b"x");
        }
        assert_same_tree(
            &describe(&under.join("big/y")),
            &describe(&big.join("y")),
            "the readable directory beside it",
        );
    };
    let to = e.t.path().join("restored-denied");
    let (code, out, err) = sr(&[
        "restore",
        "--dest",
        &e.url,
        &id,
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    kept_as_before(&to.join("big"));
    if let Some(restic) = restic_binary("restic's restore of a kept directory") {
        let target = e.t.path().join("by-restic");
        run_restic(
            &restic,
            &e.repo,
            &["restore", &id, "--target", target.to_str().unwrap()],
        );
        let src = std::fs::canonicalize(&e.src).unwrap();
        kept_as_before(&target.join(src.strip_prefix("/").unwrap()).join("big"));
        run_restic(&restic, &e.repo, &["check", "--read-data"]);
    }
    // Readable again: the next run has it as it is now.
    let _fs = FaultFs::mount(&under, &e.src, &[]).unwrap();
    let r = report(&spawn(&e, 0, 1, "readable", &[]).wait_with_output().unwrap());
    assert_eq!(r["status"], "complete", "{r}");
    assert_restores_to_source(&e, r["snapshot"].as_str().unwrap(), "restored");
}

/// A spine directory the workers cannot open whose parent snapshot's tree does not
/// read either (a failpoint makes the parent's trees down to it fail, as a lost pack
/// does): its units keep nothing, and their problem says both faults, not that the
/// previous snapshot held none of their names (it said so, and the run looked as if
/// the directory had been emptied). The run is `partial`, its snapshot holds the rest.
#[test]
fn a_spine_directory_unopened_whose_previous_tree_does_not_read_says_both() {
    let e = env();
    let under = big_under(&e);
    {
        let Some(_fs) = FaultFs::mount(&under, &e.src, &[]) else {
            return;
        };
        report(&spawn(&e, 0, 1, "r0", &[]).wait_with_output().unwrap());
    }
    let before = snapshots(&e).len();
    // Every unit of `big/x` meets the failpoint (each hit fires once).
    let fp: Vec<String> = (1..=40)
        .map(|n| format!("shard.repo.keep_descend=error@{n}"))
        .collect();
    let fp = fp.join(";");
    let (r, said) = denied_big_x(&e, &under, &[("SNAPRING_FAILPOINTS", &fp)]);
    for said in said {
        assert!(
            said.contains("this unit's names of it are missing from this snapshot: the directory could not be read, and the previous snapshot's tree of it does not read either (")
                && said.contains("failpoint shard.repo.keep_descend fired"),
            "{r}"
        );
    }
    // No warning claims the directory was read in full.
    assert!(!r.to_string().contains("read in full"), "{r}");
    assert_eq!(snapshots(&e).len(), before + 1);
    // The snapshot holds the rest; nothing of `big/x`.
    let to = e.t.path().join("restored");
    let (code, out, err) = sr(&[
        "restore",
        "--dest",
        &e.url,
        r["snapshot"].as_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        std::fs::read_dir(to.join("big/x"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    );
    assert_same_tree(
        &describe(&under.join("big/y")),
        &describe(&to.join("big/y")),
        "the readable directory beside it",
    );
}

/// The source with `big/x` and `big/y` of 150 files each (a first run's plan cuts them
/// into spine directories), moved to `under` (returned) for a FaultFs to mount at the
/// source's path.
fn big_under(e: &Env) -> PathBuf {
    for d in ["x", "y"] {
        for f in 0..150 {
            write(&e.src.join(format!("big/{d}/f{f}")), b"x");
        }
    }
    let under = e.t.path().join("under");
    std::fs::rename(&e.src, &under).unwrap();
    under
}

/// A run's previous snapshot whose tree of the source does not read (its pack lost),
/// after a first run `r0` of [`big_under`]'s tree: that snapshot's id.
fn parent_whose_source_tree_is_lost(e: &Env, under: &std::path::Path) -> Option<String> {
    let p1 = {
        let _fs = FaultFs::mount(under, &e.src, &[])?;
        let r = report(&spawn(e, 0, 1, "r0", &[]).wait_with_output().unwrap());
        r["snapshot"].as_str().unwrap().to_string()
    };
    let root = source_tree(e, &Id::parse(&p1).unwrap());
    std::fs::remove_file(tree_pack_file(e, &root)).unwrap();
    Some(p1)
}

/// A directory a unit's walk cannot open, in a run whose previous snapshot's tree of
/// the source does not read: its problem says the previous snapshot's tree of a
/// directory holding it does not read (it said "the previous snapshot does not hold
/// it", and the run looked as if the directory were new and unreadable). The planner,
/// which cannot size the plan by the lost trees, walks the source and cannot list
/// `big/x`: it is inside a unit.
#[test]
fn a_directory_unopened_below_a_parent_tree_that_does_not_read_says_both() {
    let e = env();
    let under = big_under(&e);
    let Some(_) = parent_whose_source_tree_is_lost(&e, &under) else {
        return;
    };
    let (r, said) = denied_big_x(&e, &under, &[("SNAPRING_CACHE", "off")]);
    for said in said {
        assert!(
            said.contains("the previous snapshot's tree of a directory holding it does not read")
                && !said.contains("does not hold it"),
            "{r}"
        );
    }
}

/// A unit whose directory cannot be opened, in a run whose previous snapshot's tree of
/// the source does not read (the plan was made before the pack was lost: the run
/// killed at its first unit, rerun): nothing of the directory can be kept, and the
/// worker fails, naming the previous snapshot and why it cannot give its entries. It
/// said "the run has no previous snapshot" while the run had one (session 42's note).
#[test]
fn a_unit_unopened_whose_parent_tree_of_the_source_does_not_read_names_the_parent() {
    let e = env();
    let under = big_under(&e);
    {
        let Some(_fs) = FaultFs::mount(&under, &e.src, &[]) else {
            return;
        };
        report(&spawn(&e, 0, 1, "r0", &[]).wait_with_output().unwrap());
        // The plan of run `denied`, cut by the parent's trees (`big/x` split among
        // units); nothing built.
        let vars = [("SNAPRING_FAILPOINTS", "shard.repo.before_walk=kill")];
        let out = spawn(&e, 0, 1, "denied", &vars).wait_with_output().unwrap();
        assert_eq!(out.status.code(), None, "{}", text(&out));
    }
    let p1 = snapshots(&e)[0].0.hex();
    let root = source_tree(&e, &Id::parse(&p1).unwrap());
    std::fs::remove_file(tree_pack_file(&e, &root)).unwrap();
    let _fs = FaultFs::mount(&under, &e.src, &["--eacces", "/big/x"]).unwrap();
    let vars = [("SNAPRING_CACHE", "off")];
    let out = spawn(&e, 0, 1, "denied", &vars).wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("has no previous snapshot"), "{all}");
    let short = &p1[..8];
    assert!(
        all.contains(&format!(
            "the run's previous snapshot {short} cannot give its entries of it to keep: its tree of the source cannot be read ("
        )),
        "{all}"
    );
}

/// A run `denied` of the source mounted from `under` with `big/x` not to be opened
/// (EACCES), `vars` its environment: its report, `partial` (exit 2), whose problems
/// are all of `big/x`, `unreadable`; and their messages.
fn denied_big_x(
    e: &Env,
    under: &std::path::Path,
    vars: &[(&str, &str)],
) -> (serde_json::Value, Vec<String>) {
    let _fs = FaultFs::mount(under, &e.src, &["--eacces", "/big/x"]).unwrap();
    let out = spawn(e, 0, 1, "denied", vars).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "partial", "{r}");
    let problems = r["totals"]["problems"].as_array().unwrap();
    assert!(!problems.is_empty(), "{r}");
    let mut said = Vec::new();
    for p in problems {
        assert_eq!(p["path"], "big/x", "{r}");
        assert_eq!(p["kind"], "unreadable", "{r}");
        said.push(p["error"].as_str().unwrap().to_string());
    }
    (r, said)
}

/// A run whose units are all committed but that has not published (its finalizer
/// killed before finalize, or after `final` but before the snapshot file): `snapring
/// prune` meanwhile keeps what its commits (or `final`'s snapshot) reference, so the
/// rerun publishes a snapshot whose data is all there. Once published, the run's data
/// is an ordinary snapshot's.
#[test]
fn prune_keeps_what_an_unfinished_run_committed_for_its_rerun() {
    for (point, run) in [
        ("shard.repo.before_finalize", "before"),
        ("shard.repo.before_snapshot", "after"),
    ] {
        let e = env();
        let fp = format!("{point}=kill");
        let out = spawn(&e, 0, 1, run, &[("SNAPRING_FAILPOINTS", &fp)])
            .wait_with_output()
            .unwrap();
        assert_eq!(out.status.code(), None, "{point}: {}", text(&out));
        assert!(snapshots(&e).is_empty(), "{point}");
        let (code, out, err) = sr(&["prune", "--json", "--dest", &e.url]);
        assert_eq!(code, 0, "{point}: {out}\n{err}");
        let p: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(p["plan"]["shard_runs_kept"], 1, "{point}: {p}");
        assert_eq!(p["plan"]["packs_deleted"], 0, "{point}: {p}");
        let again = report(&spawn(&e, 0, 1, run, &[]).wait_with_output().unwrap());
        let snaps = snapshots(&e);
        assert_eq!(snaps.len(), 1, "{point}");
        assert_eq!(again["snapshot"], snaps[0].0.hex().as_str(), "{point}");
        let (code, out, err) = sr(&["verify", "--dest", &e.url]);
        assert_eq!(code, 0, "{point}: {out}\n{err}");
        assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
        // Published: nothing more is kept for the run.
        let (code, out, err) = sr(&["prune", "--json", "--dest", &e.url]);
        assert_eq!(code, 0, "{point}: {out}\n{err}");
        let p: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(p["plan"]["shard_runs_kept"], 0, "{point}: {p}");
    }
}

/// `--retain 1` with three workers: the worker that publishes waits for the others'
/// shared locks to go (they see `final` within a poll) and applies the retention,
/// rather than skipping it every time.
#[test]
fn retain_with_several_workers_is_applied_not_skipped() {
    let e = env();
    for run in ["k1", "k2"] {
        let kids: Vec<Child> = (0..3)
            .map(|i| {
                let shard = format!("{i}/3");
                worker(
                    &e,
                    &["--shard", &shard, "--run-id", run, "--retain", "1"],
                    &[],
                )
                .spawn()
                .unwrap()
            })
            .collect();
        let reports: Vec<serde_json::Value> = kids
            .into_iter()
            .map(|k| report(&k.wait_with_output().unwrap()))
            .collect();
        let fin = reports
            .iter()
            .find(|r| r["finalized"] == true)
            .unwrap_or_else(|| panic!("{reports:?}"));
        assert!(fin.get("retention_skipped").is_none(), "{run}: {fin}");
        assert!(fin["retention"].is_object(), "{run}: {fin}");
    }
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert!(snaps[0].1.tags.contains(&"shard-run=k2".to_string()));
}

/// The empty-source guard holds for shard workers into a repository (they had none: a
/// source that is empty, as a failed mount leaves it, made an empty snapshot, and
/// `--retain 1` forgot the good one). Every worker exits 1 with the store's message,
/// no snapshot is written and none forgotten; exclusions that leave nothing of the
/// source the same; `--allow-empty` accepts it.
#[test]
fn an_empty_source_is_refused_by_every_worker_unless_allowed() {
    let e = env();
    let run = |id: &str, extra: &[&str]| -> Vec<Output> {
        let kids: Vec<Child> = (0..2)
            .map(|i| {
                let shard = format!("{i}/2");
                let args = [
                    &["--shard", &shard, "--run-id", id, "--retain", "1"][..],
                    extra,
                ]
                .concat();
                worker(&e, &args, &[]).spawn().unwrap()
            })
            .collect();
        kids.into_iter()
            .map(|k| k.wait_with_output().unwrap())
            .collect()
    };
    for o in run("e1", &[]) {
        report(&o);
    }
    let first: Vec<Id> = snapshots(&e).into_iter().map(|(id, _)| id).collect();
    assert_eq!(first.len(), 1);
    // Exclusions that leave nothing of the source.
    for o in run("e2", &["--exclude", "*"]) {
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            text(&o).contains("leave nothing of it, and the previous snapshot"),
            "{}",
            text(&o)
        );
    }
    // An empty source: the mount failed, its mount point is left.
    let away = e.t.path().join("src.away");
    std::fs::rename(&e.src, &away).unwrap();
    std::fs::create_dir(&e.src).unwrap();
    for o in run("e3", &[]) {
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            text(&o).contains("is empty but the previous snapshot")
                && text(&o).contains("a failed mount looks exactly like this"),
            "{}",
            text(&o)
        );
    }
    let now: Vec<Id> = snapshots(&e).into_iter().map(|(id, _)| id).collect();
    assert_eq!(now, first, "a snapshot written or forgotten");
    // Accepted on purpose: the empty snapshot replaces the other (--retain 1).
    let published: Vec<serde_json::Value> =
        run("e4", &["--allow-empty"]).iter().map(report).collect();
    assert!(
        published.iter().any(|r| r["finalized"] == true),
        "{published:?}"
    );
    let now: Vec<Id> = snapshots(&e).into_iter().map(|(id, _)| id).collect();
    assert_eq!(now.len(), 1);
    assert_ne!(now, first);
}

/// A worker on a node where the source is not mounted (an empty file system over the
/// source's path), started first, is refused by the empty-source guard BEFORE it plans
/// (as the store's workers are, tests/shard.rs): it planned first, and its plan of
/// nothing (one unit, the mount point's inode) was the run's, refusing every healthy
/// worker after it. No plan is written; the healthy worker plans, builds every unit and
/// publishes the run.
#[test]
fn a_worker_whose_source_is_not_mounted_is_refused_before_it_plans() {
    let e = env();
    let kids: Vec<Child> = (0..2).map(|i| spawn(&e, i, 2, "r1", &[])).collect();
    for k in kids {
        report(&k.wait_with_output().unwrap());
    }
    let run = "r2";
    let o = {
        let Some(_fs) = Tmpfs::mount(&e.src, "size=1m") else {
            return;
        };
        spawn(&e, 0, 2, run, &[]).wait_with_output().unwrap()
    };
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("is empty but the previous snapshot"),
        "{}",
        text(&o)
    );
    let plan = e.repo.join("snapring/shards").join(run).join("plan");
    assert!(!plan.exists(), "the refused worker wrote a plan");
    let r = report(&spawn(&e, 1, 2, run, &[]).wait_with_output().unwrap());
    assert_eq!(r["finalized"], true, "{r}");
    assert_eq!(snapshots(&e).len(), 2);
}

/// The parent snapshot a run's plan names forgotten while the run is unfinished
/// (another run's retention, `forget`): the rerun builds the units left without it
/// and publishes, rather than failing on every attempt.
#[test]
fn a_run_whose_parent_was_forgotten_meanwhile_still_publishes() {
    let e = env();
    let first = report(&spawn(&e, 0, 1, "p1", &[]).wait_with_output().unwrap());
    let parent = first["snapshot"].as_str().unwrap().to_string();
    let out = spawn(
        &e,
        0,
        1,
        "p2",
        &[("SNAPRING_FAILPOINTS", "shard.repo.before_commit=kill")],
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(out.status.code(), None, "{}", text(&out));
    // What `restic forget` does to a local repository.
    std::fs::remove_file(e.repo.join("snapshots").join(&parent)).unwrap();
    let again = report(&spawn(&e, 0, 1, "p2", &[]).wait_with_output().unwrap());
    assert_eq!(again["parent"], parent.as_str(), "{again}");
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(again["snapshot"], snaps[0].0.hex().as_str());
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
}

/// Unit directories replaced between the plan and their build: one by a file, one by a
/// symlink to a directory outside the source. The run publishes (partial: both left
/// out, named as problems) instead of failing on every attempt, nothing outside the
/// source is backed up, and the snapshot passes `restic check`.
#[test]
fn unit_directories_replaced_by_a_file_or_a_symlink_after_the_plan() {
    let e = env();
    let outside = e.t.path().join("outside");
    write(&outside.join("secret"), b"not in the source\n");
    // The plan is made; the worker dies before its first commit.
    let out = spawn(
        &e,
        0,
        2,
        "rp",
        &[("SNAPRING_FAILPOINTS", "shard.repo.before_commit=kill")],
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(out.status.code(), None, "{}", text(&out));
    std::fs::remove_dir_all(e.src.join("d05")).unwrap();
    write(&e.src.join("d05"), b"a file now\n");
    std::fs::remove_dir_all(e.src.join("d06")).unwrap();
    std::os::unix::fs::symlink(&outside, e.src.join("d06")).unwrap();
    let kids: Vec<Child> = (0..2).map(|i| spawn(&e, i, 2, "rp", &[])).collect();
    let outs: Vec<Output> = kids
        .into_iter()
        .map(|k| k.wait_with_output().unwrap())
        .collect();
    let reports: Vec<serde_json::Value> = outs
        .iter()
        .map(|o| {
            assert!(matches!(o.status.code(), Some(0 | 2)), "{}", text(o));
            serde_json::from_slice(&o.stdout).unwrap()
        })
        .collect();
    let fin = reports
        .iter()
        .find(|r| r["finalized"] == true)
        .unwrap_or_else(|| panic!("{reports:?}"));
    assert_eq!(fin["status"], "partial", "{fin}");
    let problems = fin["totals"]["problems"].to_string();
    assert!(
        problems.contains("\"d05\"") && problems.contains("\"d06\""),
        "{problems}"
    );
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let repo = open(&e);
    let src = source_tree(&e, &snaps[0].0);
    let names: Vec<Vec<u8>> = snapring::restic::tree::Tree::from_blob(
        &repo
            .read_blob(snapring::restic::pack::BlobType::Tree, &src)
            .unwrap(),
        &src,
    )
    .unwrap()
    .nodes
    .iter()
    .map(|n| n.name_bytes())
    .collect();
    for gone in ["d05", "d06"] {
        assert!(
            !names.contains(&gone.as_bytes().to_vec()),
            "{gone} is left out"
        );
    }
    assert!(descend(&repo, src, &[OsStr::new("d07")]).unwrap().is_some());
    // The symlink was not followed: the file outside is not even uploaded.
    assert!(!repo.index.contains(
        snapring::restic::pack::BlobType::Data,
        &Id::hash(b"not in the source\n")
    ));
    if let Some(restic) = restic_binary("a shard run with replaced unit directories") {
        run_restic(&restic, &e.repo, &["check", "--read-data"]);
        let found = run_restic(&restic, &e.repo, &["find", "secret"]);
        assert!(
            !String::from_utf8_lossy(&found.stdout).contains("/secret"),
            "{found:?}"
        );
    }
}

/// The worker that wrote `final` killed before the snapshot file: the rerun that writes
/// it publishes the run, so the run's `--retain` is applied (and it is recorded and
/// notified), not left undone with a "published by another worker" that no longer runs.
#[test]
fn the_rerun_after_a_crash_past_final_applies_the_retention() {
    let e = env();
    let args = |run: &'static str| ["--shard", "0/1", "--run-id", run, "--retain", "1"];
    report(&worker(&e, &args("c1"), &[]).output().unwrap());
    let out = worker(
        &e,
        &args("c2"),
        &[("SNAPRING_FAILPOINTS", "shard.repo.before_snapshot=kill")],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), None, "{}", text(&out));
    let again = report(&worker(&e, &args("c2"), &[]).output().unwrap());
    assert_eq!(again["finalized"], true, "{again}");
    assert!(again["retention"].is_object(), "{again}");
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(again["snapshot"], snaps[0].0.hex().as_str());
    // A later rerun finds the run published: it publishes nothing again.
    let third = report(&worker(&e, &args("c2"), &[]).output().unwrap());
    assert_eq!(third["finalized"], false, "{third}");
}

/// A run killed before it published, a newer run of its label published meanwhile,
/// then the first resumed with `--retain 1`: its snapshot (the older, dated by its
/// plan) is kept as the one it has just written, so two of the label stay, and its
/// report warns, naming the newer run's snapshot (before 2026-12-05 nothing said so);
/// the next run's retention forgets it.
#[test]
fn a_run_published_late_warns_that_its_label_keeps_one_more_until_the_next_run() {
    let e = env();
    let args = |run: &'static str| ["--shard", "0/1", "--run-id", run, "--retain", "1"];
    let die = [("SNAPRING_FAILPOINTS", "shard.repo.before_finalize=kill")];
    let out = worker(&e, &args("late"), &die).output().unwrap();
    assert_eq!(out.status.code(), None, "{}", text(&out));
    let newer = report(&worker(&e, &args("newer"), &[]).output().unwrap());
    let late = report(&worker(&e, &args("late"), &[]).output().unwrap());
    assert_eq!(late["finalized"], true, "{late}");
    assert_eq!(snapshots(&e).len(), 2);
    let warned = late["totals"]["warnings"].to_string();
    let short = &newer["snapshot"].as_str().unwrap()[..8];
    assert!(
        warned.contains(&format!("snapshot {short} (run newer)"))
            && warned.contains("one more than --retain 1"),
        "{late}"
    );
    let next = report(&worker(&e, &args("next"), &[]).output().unwrap());
    assert_eq!(next["retention"]["removed"], 2, "{next}");
    assert!(!next.to_string().contains("published late"), "{next}");
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(next["snapshot"], snaps[0].0.hex().as_str());
}

/// A worker started with a wrong `--source` (a subdirectory of the real one) writes
/// the plan; a right worker is refused (exit 64) and leaves its mark; the wrong
/// worker builds every unit, but neither it nor `snapring finalize` publishes the run
/// (exit 64, naming the refused worker and the setting; before 2026-12-05 it published
/// a snapshot of the subdirectory, exit 0); the previous snapshot stays, `status`
/// shows the mark, and a new run id with the right settings publishes.
#[test]
fn a_run_whose_worker_was_refused_for_other_settings_is_not_published() {
    let e = env();
    let first = report(&spawn(&e, 0, 1, "first", &[]).wait_with_output().unwrap());
    let wrong = Env {
        t: tempfile::tempdir().unwrap(),
        src: e.src.join("d00"),
        repo: e.repo.clone(),
        url: e.url.clone(),
    };
    let die = [("SNAPRING_FAILPOINTS", "shard.repo.before_walk=kill")];
    let out = spawn(&wrong, 0, 2, "wrong", &die)
        .wait_with_output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        None,
        "the planner killed: {}",
        text(&out)
    );
    let out = spawn(&e, 1, 2, "wrong", &[]).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert_eq!(run_files(&e, "wrong", "refused"), ["w1"]);
    let refused = |out: &Output| {
        assert_eq!(out.status.code(), Some(64), "{}", text(out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not published") && err.contains("worker 1") && err.contains("d00"),
            "{}",
            text(out)
        );
    };
    refused(
        &spawn(&wrong, 0, 2, "wrong", &[])
            .wait_with_output()
            .unwrap(),
    );
    let fin = snapring(
        &[
            OsStr::new("finalize"),
            OsStr::new("--dest"),
            OsStr::new(&e.url),
            OsStr::new("--run-id"),
            OsStr::new("wrong"),
        ],
        &[("SNAPRING_PASSWORD", PASSWORD)],
    );
    refused(&fin);
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(first["snapshot"], snaps[0].0.hex().as_str());
    let st = run_status(&e, "wrong");
    assert_eq!(st["refused"][0]["worker"], 1, "{st}");
    assert!(
        st["refused"][0]["differs"][0].to_string().contains("d00"),
        "{st}"
    );
    let kids: Vec<Child> = (0..2).map(|i| spawn(&e, i, 2, "fixed", &[])).collect();
    for k in kids {
        report(&k.wait_with_output().unwrap());
    }
    assert_eq!(snapshots(&e).len(), 2);
}

/// The repository's lock files (`locks/`).
fn lock_files(e: &Env) -> Vec<PathBuf> {
    std::fs::read_dir(e.repo.join("locks"))
        .unwrap()
        .map(|x| x.unwrap().path())
        .collect()
}

/// `restic check --read-data` of the repository, when Debian's `restic` is installed.
fn restic_check(e: &Env, what: &str) {
    if let Some(restic) = restic_binary(what) {
        run_restic(&restic, &e.repo, &["check", "--read-data"]);
    }
}

/// A later run `run_id` of one worker with `--retain 1`: its retention forgets the one
/// snapshot before it. Returns the repository's snapshots: the later run's alone.
fn retention_forgets_one(e: &Env, run_id: &str) -> Vec<(Id, snapshot::Snapshot)> {
    let later = report(
        &worker(
            e,
            &["--shard", "0/1", "--run-id", run_id, "--retain", "1"],
            &[],
        )
        .output()
        .unwrap(),
    );
    assert_eq!(later["retention"]["removed"], 1, "{later}");
    let snaps = snapshots(e);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(later["snapshot"], snaps[0].0.hex().as_str(), "{later}");
    snaps
}

/// A publisher killed between its snapshot file and `published`, the snapshot then
/// forgotten by a later run's retention: neither `snapring finalize` of the run nor a
/// rerun of its worker writes the forgotten snapshot back (the forget marked the run
/// published before it removed the snapshot file; before 2026-12-03 the rerun wrote
/// it back, naming data a prune may have freed since). The run is tidied.
#[test]
fn a_snapshot_forgotten_before_its_run_was_marked_published_is_not_written_back() {
    let e = env();
    let out = worker(
        &e,
        &["--shard", "0/1", "--run-id", "k1"],
        &[("SNAPRING_FAILPOINTS", "shard.repo.before_published=kill")],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), None, "{}", text(&out));
    let k1 = snapshots(&e);
    assert_eq!(k1.len(), 1, "{k1:?}");
    let dir = e.repo.join("snapring/shards/k1");
    assert!(!dir.join("published").exists());
    let snaps = retention_forgets_one(&e, "k2");
    let (code, out, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "k1", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let after = snapshots(&e);
    assert_eq!(after.len(), 1, "forgotten snapshot written back: {after:?}");
    assert_eq!(after[0].0, snaps[0].0);
    let fin: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(fin["finalized"], false, "{fin}");
    let again = report(
        &worker(&e, &["--shard", "0/1", "--run-id", "k1"], &[])
            .output()
            .unwrap(),
    );
    assert_eq!(again["finalized"], false, "{again}");
    assert_eq!(snapshots(&e).len(), 1, "written back by a rerun");
    assert_tidied(&e, "k1");
    let (code, out, err) = sr(&["prune", "--dest", &e.url]);
    assert_eq!(code, 0, "{out}\n{err}");
    restic_check(&e, "a forgotten shard run's repository");
    assert_restores_to_source(&e, &after[0].0.hex(), "restored");
}

/// A finalizer stopped between its look at `published` (none yet) and the snapshot
/// file, its repository lock lost meanwhile (removed, as `restic unlock` removes a lock
/// 30 minutes old; the process is frozen that long): another worker publishes, a later
/// run's retention forgets the snapshot. Resumed, the finalizer does not write the
/// snapshot back: as restic, it writes no snapshot with its lock lost, and ends
/// published by another (exit 0).
#[test]
fn a_finalizer_whose_lock_was_lost_while_stopped_does_not_write_a_forgotten_snapshot_back() {
    let e = env();
    // Alone, worker 0 builds every unit, writes `final` and finds no `published`.
    let stalled = Stopped::at(&e, 0, 2, "b1", "shard.repo.before_snapshot_file");
    assert!(e.repo.join("snapring/shards/b1/final").exists());
    assert!(snapshots(&e).is_empty());
    let locks = lock_files(&e);
    assert_eq!(locks.len(), 1, "{locks:?}");
    std::fs::remove_file(&locks[0]).unwrap();
    let other = report(
        &spawn(&e, 1, 2, "b1", &SHORT_LEASE)
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(other["finalized"], true, "{other}");
    let snaps = retention_forgets_one(&e, "b2");
    let out = stalled.resume();
    let after = snapshots(&e);
    assert_eq!(after.len(), 1, "forgotten snapshot written back: {after:?}");
    assert_eq!(after[0].0, snaps[0].0);
    let late = report(&out);
    assert_eq!(late["finalized"], false, "{late}");
    assert_eq!(late["snapshot"], other["snapshot"], "{late}");
    assert!(lock_files(&e).is_empty(), "{:?}", lock_files(&e));
    restic_check(&e, "a stalled finalizer's repository");
}

/// The publisher killed right after `published`, before its retention and tidy:
/// `snapring finalize` of the run, or a rerun of its worker, applies the run's
/// `--retain` and tidies its files, once (before 2026-12-03 nothing ever did).
#[test]
fn a_publisher_killed_after_published_has_its_retention_and_tidy_completed() {
    for by_hand in [true, false] {
        let e = env();
        let args = |run: &'static str| ["--shard", "0/1", "--run-id", run, "--retain", "1"];
        report(&worker(&e, &args("t1"), &[]).output().unwrap());
        let out = worker(
            &e,
            &args("t2"),
            &[("SNAPRING_FAILPOINTS", "shard.repo.after_published=kill")],
        )
        .output()
        .unwrap();
        assert_eq!(out.status.code(), None, "{}", text(&out));
        assert!(e.repo.join("snapring/shards/t2/published").exists());
        assert_eq!(snapshots(&e).len(), 2);
        let done = e.repo.join("snapring/shards/t2/done");
        let u = &plan_units(&e, "t2")[0];
        assert_ne!(std::fs::read(done.join(u)).unwrap(), b"published\n");
        let fin = if by_hand {
            let (code, out, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "t2", "--json"]);
            assert_eq!(code, 0, "{out}\n{err}");
            serde_json::from_str::<serde_json::Value>(&out).unwrap()
        } else {
            report(&worker(&e, &args("t2"), &[]).output().unwrap())
        };
        assert!(fin["retention"].is_object(), "by hand {by_hand}: {fin}");
        assert_eq!(fin["retention"]["removed"], 1, "by hand {by_hand}: {fin}");
        let snaps = snapshots(&e);
        assert_eq!(snaps.len(), 1, "by hand {by_hand}: {snaps:?}");
        assert!(snaps[0].1.tags.contains(&"shard-run=t2".to_string()));
        assert_eq!(fin["snapshot"], snaps[0].0.hex().as_str());
        assert_tidied(&e, "t2");
        // Once: a later rerun finds the run settled.
        let third = report(&worker(&e, &args("t2"), &[]).output().unwrap());
        assert!(third.get("retention").is_none(), "{third}");
        assert_eq!(third["finalized"], false, "{third}");
        assert_eq!(snapshots(&e).len(), 1);
        restic_check(&e, "a completed publish's repository");
    }
}

/// The worker that publishes killed between any two steps of its publish (after it
/// found no `published`, after the snapshot file, after `published`): its rerun
/// leaves exactly one snapshot, `published` and `settled`, every commit a tombstone;
/// a second rerun changes nothing.
#[test]
fn a_publish_killed_between_any_two_of_its_steps_is_completed_once_by_the_rerun() {
    for (point, won) in [
        ("shard.repo.before_snapshot_file", true),
        ("shard.repo.before_published", true),
        ("shard.repo.after_published", false),
    ] {
        let e = env();
        let fp = format!("{point}=kill");
        let out = spawn(&e, 0, 1, "p", &[("SNAPRING_FAILPOINTS", &fp)])
            .wait_with_output()
            .unwrap();
        assert_eq!(out.status.code(), None, "{point}: {}", text(&out));
        let again = report(&spawn(&e, 0, 1, "p", &[]).wait_with_output().unwrap());
        assert_eq!(again["finalized"], won, "{point}: {again}");
        let snaps = snapshots(&e);
        assert_eq!(snaps.len(), 1, "{point}: {snaps:?}");
        assert_eq!(again["snapshot"], snaps[0].0.hex().as_str(), "{point}");
        let dir = e.repo.join("snapring/shards/p");
        assert!(dir.join("published").exists(), "{point}");
        assert!(dir.join("settled").exists(), "{point}");
        assert_tidied(&e, "p");
        let third = report(&spawn(&e, 0, 1, "p", &[]).wait_with_output().unwrap());
        assert_eq!(third["finalized"], false, "{point}: {third}");
        assert_eq!(snapshots(&e).len(), 1, "{point}");
        assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
    }
}

/// Each night another node plans the run (its own hostname: a UTS namespace here):
/// the snapshots keep their lineage's hostname (the parent's), so `--retain 1`, which
/// groups snapshots by host and paths as restic does, keeps one, not one per node.
#[test]
fn retention_sees_one_lineage_whichever_node_plans_each_run() {
    let e = env();
    if !common::uts_namespaces() {
        return;
    }
    for night in 1..=3 {
        write(&e.src.join("night"), format!("{night}\n").as_bytes());
        let run = format!("n{night}");
        let c = worker(
            &e,
            &["--shard", "0/1", "--run-id", &run, "--retain", "1"],
            &[],
        );
        let mut node = common::on_host(&c, &format!("node{night}"));
        let r = report(&node.output().unwrap());
        assert_eq!(r["finalized"], true, "{r}");
    }
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0].1.hostname, "node1");
    assert!(snaps[0].1.tags.contains(&"shard-run=n3".to_string()));
}

/// From `--jobs 4` a worker builds three units at once (its lanes, sharing the jobs):
/// each unit here takes at least 400 ms before its commit, and in the worker's log
/// (`-v`: a line when a unit is claimed, one when it is committed) a third unit is
/// claimed while two others are still open. One lane never has two open. The order of
/// the lines, not their times, decides, so a slow machine does not fail it. The
/// snapshot is the same as one lane's.
#[test]
fn a_worker_of_four_jobs_builds_three_units_at_once() {
    let e = env();
    let slow = [("SNAPRING_FAILPOINTS", "shard.repo.before_commit=sleep:400")];
    let out = worker_jobs(&e, 4, &["-v", "--shard", "0/1", "--run-id", "lanes"], &slow)
        .output()
        .unwrap();
    let r = report(&out);
    assert_eq!(r["status"], "complete", "{r}");
    let claims = unit_claims(&e, "lanes");
    assert!(claims.len() >= 4, "{claims:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    let (mut open, mut most, mut events) = (0i32, 0, 0);
    for line in log.lines() {
        if line.contains(" claimed (generation ") {
            open += 1;
            events += 1;
        } else if line.contains(" committed (generation ") {
            open -= 1;
            events += 1;
        }
        most = most.max(open);
    }
    assert_eq!(
        events,
        2 * claims.len(),
        "a line per claim and commit: {log}"
    );
    assert_eq!(most, 3, "units open at once at most: {log}");
    let id = r["snapshot"].as_str().unwrap().to_string();
    assert_restores_to_source(&e, &id, "restored");
    let (_, single_id) = single_node(&e);
    assert_eq!(
        source_tree(&e, &Id::parse(&id).unwrap()),
        source_tree(&e, &single_id)
    );
    if let Some(restic) = restic_binary("a shard run of three lanes") {
        run_restic(&restic, &e.repo, &["check", "--read-data"]);
    }
}

/// The plan of a run with a parent is cut by the parent's trees: spine directories of
/// the parent (cut into units of their own) that are gone from the source, or are a
/// file now, must not cost the next run an entry (the file left out) nor a problem (a
/// directory deleted between two backups is no error). The run is `complete` and
/// restores equal to the source.
#[test]
fn spine_directories_of_the_parent_replaced_or_deleted_before_the_next_run() {
    let e = env();
    for d in ["x", "y"] {
        for f in 0..150 {
            write(&e.src.join(format!("big/{d}/f{f}")), b"x");
        }
    }
    let first = report(&spawn(&e, 0, 1, "s1", &[]).wait_with_output().unwrap());
    assert_eq!(first["status"], "complete", "{first}");
    let spine: Vec<String> = run_status(&e, "s1")["unit_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["dir"].as_str().unwrap().to_string())
        .collect();
    assert!(
        spine.contains(&"big/x".to_string()) && spine.contains(&"big/y".to_string()),
        "big/x and big/y are cut into units of their own: {spine:?}"
    );
    std::fs::remove_dir_all(e.src.join("big/x")).unwrap();
    write(&e.src.join("big/x"), b"a file now\n");
    std::fs::remove_dir_all(e.src.join("big/y")).unwrap();
    let out = spawn(&e, 0, 1, "s2", &[]).wait_with_output().unwrap();
    let second = report(&out);
    assert_eq!(second["status"], "complete", "{second}");
    assert_eq!(second["parent"], first["snapshot"], "{second}");
    // The parent's cut no longer fits the source: the plan comes from a walk.
    assert_eq!(run_status(&e, "s2")["sized_by"], "walk");
    assert_restores_to_source(&e, second["snapshot"].as_str().unwrap(), "restored");
}

/// Two runs of one label, the second with `--retain 1`: the first run's snapshot is
/// forgotten by the second's retention.
fn two_runs_the_first_forgotten(e: &Env) {
    // Data only the first run's snapshot holds.
    write(&e.src.join("only-in-f1"), &b"f1's own data\n".repeat(1000));
    for (run, retain) in [("f1", "0"), ("f2", "1")] {
        if run == "f2" {
            std::fs::remove_file(e.src.join("only-in-f1")).unwrap();
        }
        let mut args = vec!["--shard", "0/1", "--run-id", run];
        if retain != "0" {
            args.extend(["--retain", retain]);
        }
        report(&worker(e, &args, &[]).output().unwrap());
    }
    let snaps = snapshots(e);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert!(snaps[0].1.tags.contains(&"shard-run=f2".to_string()));
}

/// Review: a published run whose snapshot was forgotten since (a later run's
/// `--retain`, `forget`) is not an unfinished run: `prune` frees its data rather than
/// keeping the forgotten snapshot's trees for good (its `final` names a snapshot file
/// that is gone, as a crash between `final` and the snapshot file leaves it).
#[test]
fn prune_frees_a_forgotten_shard_runs_data() {
    let e = env();
    two_runs_the_first_forgotten(&e);
    let (code, out, err) = sr(&["prune", "--json", "--dest", &e.url]);
    assert_eq!(code, 0, "{out}\n{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["plan"]["shard_runs_kept"], 0, "forgotten run kept: {p}");
    assert!(
        p["plan"]["blobs_unused"].as_u64().unwrap() > 0,
        "nothing freed: {p}"
    );
    let (code, out, err) = sr(&["verify", "--dest", &e.url]);
    assert_eq!(code, 0, "{out}\n{err}");
    if let Some(restic) = restic_binary("a repository pruned of a forgotten shard run") {
        run_restic(&restic, &e.repo, &["check", "--read-data"]);
    }
    let snaps = snapshots(&e);
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
}

/// H2 (session 47): a job that passes a fixed run id exited 0 every night after the
/// first, "published before this worker started: nothing to do". A worker that finds
/// its run published longer ago than any retry comes (`SNAPRING_SHARD_REUSE_AFTER`,
/// default 6 h; the `published` holder's time is put back here) is refused, exit 64,
/// saying the run id is used again, with nothing written (not even its lock); with the
/// bound set longer it is a late duplicate (exit 0, `published_before`), and `snapring
/// finalize` of the run is not refused.
#[test]
fn a_worker_of_a_run_published_hours_before_is_refused_as_a_reused_run_id() {
    let e = env();
    let first = report(
        &worker(&e, &["--shard", "0/1", "--run-id", "fixed"], &[])
            .output()
            .unwrap(),
    );
    assert_eq!(first["finalized"], true, "{first}");
    let marker = e.repo.join("snapring/shards/fixed/published");
    let mut h: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    let at = (chrono::Utc::now() - chrono::Duration::hours(7))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    h["at"] = at.clone().into();
    std::fs::write(&marker, serde_json::to_vec(&h).unwrap()).unwrap();
    write(&e.src.join("d00/new since"), b"new");
    let before = describe(&e.repo);
    let o = worker(&e, &["--shard", "0/1", "--run-id", "fixed"], &[])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "run id fixed was already finalized at {at}, 7h 00m before this worker started"
        )) && err.contains("nothing was backed up or written"),
        "{}",
        text(&o)
    );
    assert!(describe(&e.repo) == before, "nothing written");
    assert_eq!(snapshots(&e).len(), 1);
    let late = report(
        &worker(
            &e,
            &["--shard", "0/1", "--run-id", "fixed"],
            &[("SNAPRING_SHARD_REUSE_AFTER", "8h")],
        )
        .output()
        .unwrap(),
    );
    assert_eq!(late["published_before"], true, "{late}");
    let (code, out, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "fixed"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(snapshots(&e).len(), 1);
}

/// Review: a worker of a published run started again later (a retried job, the run id
/// used again) after the run's snapshot was forgotten does not write the forgotten
/// snapshot back (a run publishes its snapshot once).
#[test]
fn a_late_worker_does_not_write_a_forgotten_snapshot_back() {
    let e = env();
    two_runs_the_first_forgotten(&e);
    let again = report(
        &worker(&e, &["--shard", "0/1", "--run-id", "f1"], &[])
            .output()
            .unwrap(),
    );
    assert_eq!(again["published_before"], true, "{again}");
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1, "forgotten snapshot written back: {snaps:?}");
}

/// Review: a run killed before finalize whose units reuse its parent's trees and data
/// (an unchanged source), the parent then forgotten and pruned: prune keeps everything
/// the committed units name, however deep, and the rerun publishes a snapshot that
/// restores equal to the source and passes `restic check --read-data`.
#[test]
fn a_parent_forgotten_and_pruned_before_finalize_loses_nothing_the_units_reused() {
    let e = env();
    let first = report(&spawn(&e, 0, 1, "q1", &[]).wait_with_output().unwrap());
    let parent = first["snapshot"].as_str().unwrap().to_string();
    let out = spawn(
        &e,
        0,
        2,
        "q2",
        &[("SNAPRING_FAILPOINTS", "shard.repo.before_finalize=kill")],
    );
    let other = spawn(
        &e,
        1,
        2,
        "q2",
        &[("SNAPRING_FAILPOINTS", "shard.repo.before_finalize=kill")],
    );
    for o in [
        out.wait_with_output().unwrap(),
        other.wait_with_output().unwrap(),
    ] {
        assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    }
    std::fs::remove_file(e.repo.join("snapshots").join(&parent)).unwrap();
    assert!(snapshots(&e).is_empty());
    let (code, out, err) = sr(&["prune", "--json", "--dest", &e.url]);
    assert_eq!(code, 0, "{out}\n{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["plan"]["shard_runs_kept"], 1, "{p}");
    let (code, out, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "q2"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
    if let Some(restic) = restic_binary("a run whose parent was pruned before finalize") {
        run_restic(&restic, &e.repo, &["check", "--read-data"]);
    }
}

/// Review: a published run's `final` damaged (truncated) in the repository: `prune`
/// does not need it (the run's snapshot file was written, `published` says so), so it
/// still prunes the repository rather than failing on it for good (`--drop-unfinished-runs`
/// does not drop a run with a `final`).
#[test]
fn a_published_runs_damaged_final_does_not_stop_prune() {
    let e = env();
    report(&spawn(&e, 0, 1, "d1", &[]).wait_with_output().unwrap());
    let fin = e.repo.join("snapring/shards/d1/final");
    let bytes = std::fs::read(&fin).unwrap();
    std::fs::write(&fin, &bytes[..bytes.len() / 2]).unwrap();
    let (code, out, err) = sr(&["prune", "--json", "--dest", &e.url]);
    assert_eq!(code, 0, "{out}\n{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["plan"]["shard_runs_kept"], 0, "{p}");
    assert_eq!(snapshots(&e).len(), 1);
}

/// A worker that starts while another process holds the repository's exclusive lock a
/// moment (its run's finalizer forgetting by --retain as the other workers finish;
/// here the test, for 2 s) waits for it (up to `LOCK_WAIT`, 10 s) and does its part:
/// it exited 75 at once (a late worker failed restic_shard's after-run in CI). A lock
/// held past the wait (a prune) is still a retry, exit 75, after the 10 s.
#[test]
fn a_worker_waits_for_an_exclusive_lock_held_a_moment_and_retries_one_held_longer() {
    let e = env();
    let repo = open(&e);
    let held = snapring::restic::lock::acquire(&repo, true).unwrap();
    let t0 = Instant::now();
    let w = spawn(&e, 0, 1, "waits", &[]);
    std::thread::sleep(Duration::from_secs(2));
    held.release().unwrap();
    let r = report(&w.wait_with_output().unwrap());
    assert_eq!(r["finalized"], true, "{r}");
    assert!(t0.elapsed() >= Duration::from_secs(2));
    assert_eq!(snapshots(&e).len(), 1, "{r}");
    let held = snapring::restic::lock::acquire(&repo, true).unwrap();
    let t0 = Instant::now();
    let o = spawn(&e, 0, 1, "refused", &[]).wait_with_output().unwrap();
    let waited = t0.elapsed();
    held.release().unwrap();
    assert_eq!(o.status.code(), Some(75), "{}", text(&o));
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(30),
        "{waited:?}: {}",
        text(&o)
    );
    assert!(text(&o).contains("locked"), "{}", text(&o));
    assert_eq!(snapshots(&e).len(), 1);
}

/// Review: `prune --drop-unfinished-runs` lists the unfinished runs, then takes the
/// exclusive lock. A run whose workers publish it and exit in between is not
/// unfinished any more: its files (`final`, `published`) stay, or a late worker of the
/// run (a retried job) would plan it again and publish a second snapshot.
#[test]
fn drop_unfinished_runs_keeps_a_run_published_before_its_lock() {
    let e = env();
    let w_pause = e.t.path().join("worker-paused");
    let p_pause = e.t.path().join("prune-paused");
    let fp = format!("shard.repo.before_finalize=pause:{}", w_pause.display());
    let w = spawn(&e, 0, 1, "race", &[("SNAPRING_FAILPOINTS", &fp)]);
    wait_for(&w_pause);
    // The run is unfinished (no final) when prune lists the runs.
    let mut prune = Command::new(bin());
    prune
        .args([
            "prune",
            "--json",
            "--drop-unfinished-runs",
            "--dest",
            &e.url,
        ])
        .env("SNAPRING_PASSWORD", PASSWORD)
        .env("SNAPRING_CATALOG", "off")
        .env("XDG_CACHE_HOME", e.t.path().join("cache"))
        .env(
            "SNAPRING_FAILPOINTS",
            format!("prune.before_drop_lock=pause:{}", p_pause.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let prune = prune.spawn().unwrap();
    wait_for(&p_pause);
    // The worker publishes and exits before prune takes its lock.
    std::fs::remove_file(&w_pause).unwrap();
    let first = report(&w.wait_with_output().unwrap());
    assert_eq!(first["finalized"], true, "{first}");
    std::fs::remove_file(&p_pause).unwrap();
    let out = prune.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        e.repo.join("snapring/shards/race/final").exists(),
        "the published run's files were dropped: {}",
        text(&out)
    );
    // A retried worker of the run finds it published.
    let again = report(&spawn(&e, 0, 1, "race", &[]).wait_with_output().unwrap());
    assert_eq!(again["published_before"], true, "{again}");
    assert_eq!(snapshots(&e).len(), 1, "{again}");
}

/// Review: `prune` reads the index when it opens the repository and takes its lock
/// after. A shard worker that commits units in between and is then killed (its lock is
/// a dead process's, removed): prune keeps what the run committed (it reads the
/// commits under its lock) by the index read under the lock, not the older one, which
/// lacks those units' blobs and would have their packs deleted.
#[test]
fn prune_keeps_units_committed_between_its_open_and_its_lock() {
    let e = env();
    let w_pause = e.t.path().join("worker-paused");
    let p_pause = e.t.path().join("prune-paused");
    let fp = format!(
        "shard.repo.before_commit=pause:{};shard.repo.before_finalize=kill",
        w_pause.display()
    );
    let w = spawn(&e, 0, 1, "late", &[("SNAPRING_FAILPOINTS", &fp)]);
    wait_for(&w_pause);
    let mut prune = Command::new(bin());
    prune
        .args(["prune", "--json", "--dest", &e.url])
        .env("SNAPRING_PASSWORD", PASSWORD)
        .env("SNAPRING_CATALOG", "off")
        .env("XDG_CACHE_HOME", e.t.path().join("cache"))
        .env(
            "SNAPRING_FAILPOINTS",
            format!("prune.after_open=pause:{}", p_pause.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let prune = prune.spawn().unwrap();
    wait_for(&p_pause);
    // The worker commits every unit, then is killed before finalize.
    std::fs::remove_file(&w_pause).unwrap();
    let out = w.wait_with_output().unwrap();
    assert_eq!(out.status.code(), None, "{}", text(&out));
    std::fs::remove_file(&p_pause).unwrap();
    let out = prune.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["plan"]["shard_runs_kept"], 1, "{p}");
    assert_eq!(
        p["plan"]["packs_deleted"], 0,
        "the run's packs deleted: {p}"
    );
    let again = report(&spawn(&e, 0, 1, "late", &[]).wait_with_output().unwrap());
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1, "{again}");
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");
}

/// Review: a worker reads the index when it opens the repository and takes its shared
/// lock after. A prune that runs in between deletes the packs of a forgotten
/// snapshot's data; the worker must not skip storing a file because that stale index
/// still names its blob, or the run's snapshot names data the repository lacks.
#[test]
fn a_prune_between_a_workers_open_and_its_lock_loses_none_of_its_data() {
    let e = env();
    // A file only a forgotten snapshot holds, with data of its own.
    write(&e.src.join("d05/sub/big"), &pseudo_random(300_000, 7));
    let first = report(&spawn(&e, 0, 1, "g1", &[]).wait_with_output().unwrap());
    std::fs::rename(e.src.join("d05/sub/big"), e.t.path().join("big")).unwrap();
    report(&spawn(&e, 0, 1, "g2", &[]).wait_with_output().unwrap());
    std::fs::remove_file(
        e.repo
            .join("snapshots")
            .join(first["snapshot"].as_str().unwrap()),
    )
    .unwrap();
    // The file is back for the third run, whose worker opens the repository first.
    std::fs::rename(e.t.path().join("big"), e.src.join("d05/sub/big")).unwrap();
    let pause = e.t.path().join("paused");
    let fp = format!("shard.repo.before_lock=pause:{}", pause.display());
    let w = spawn(&e, 0, 1, "g3", &[("SNAPRING_FAILPOINTS", &fp)]);
    wait_for(&pause);
    let (code, out, err) = sr(&["prune", "--json", "--dest", &e.url]);
    assert_eq!(code, 0, "{out}\n{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(p["packs_removed"].as_u64().unwrap() > 0, "{p}");
    std::fs::remove_file(&pause).unwrap();
    let third = report(&w.wait_with_output().unwrap());
    let (code, out, err) = sr(&["verify", "--dest", &e.url]);
    assert_eq!(code, 0, "{third}\n{out}\n{err}");
    assert_restores_to_source(&e, third["snapshot"].as_str().unwrap(), "restored");
}

/// The file of the pack that holds tree `tree` (by the repository's index).
fn tree_pack_file(e: &Env, tree: &Id) -> PathBuf {
    let repo = open(e);
    let pack = repo
        .index
        .get(snapring::restic::pack::BlobType::Tree, tree)
        .unwrap_or_else(|| panic!("tree {} is not indexed", tree.hex()))
        .pack
        .hex();
    e.repo.join("data").join(&pack[..2]).join(pack)
}

/// The publisher's report among a run's workers' (each exited 0).
fn publisher(outs: &[Output]) -> serde_json::Value {
    let reports: Vec<serde_json::Value> = outs.iter().map(report).collect();
    reports
        .into_iter()
        .find(|r| r["finalized"] == true)
        .unwrap_or_else(|| panic!("no worker published: {outs:?}"))
}

/// The warnings of a run's totals that say a tree of snapshot `parent` did not read.
fn unreadable_parent_warnings(fin: &serde_json::Value, parent: &str) -> Vec<String> {
    fin["totals"]["warnings"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| w.as_str().unwrap().to_string())
                .filter(|w| {
                    w.contains(&format!("parent snapshot {}", &parent[..8]))
                        && w.contains("cannot be read")
                        && w.contains("read in full")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A run of 2 workers with no tree cache (the trees must come from the repository, as
/// on another machine), the run recorded in the catalog `catalog`: each worker's output.
fn uncached_run(e: &Env, id: &str, catalog: &str) -> Vec<Output> {
    let vars = [("SNAPRING_CACHE", "off"), ("SNAPRING_CATALOG", catalog)];
    let kids: Vec<Child> = (0..2).map(|i| spawn(e, i, 2, id, &vars)).collect();
    kids.into_iter()
        .map(|k| k.wait_with_output().unwrap())
        .collect()
}

/// A tree of the parent snapshot that does not read (its pack lost, as in
/// tests/restic_damaged.rs) under a shard run, as under a single-node one: the unit
/// reads that directory in full, the run publishes, and the warning reaches the run's
/// report (the publisher's totals, the catalog). Before, it stayed in the log of the
/// worker that built the unit.
#[test]
fn a_units_unreadable_parent_tree_is_a_warning_of_the_run() {
    let e = env();
    // A small subtree, inside one unit (the plan cuts the spine only where it splits a
    // directory's names among units).
    write(&e.src.join("deep/a/b/c/f"), b"deep\n");
    let catalog = e.t.path().join("state/catalog.db");
    let catalog = catalog.to_str().unwrap();
    let first = publisher(&uncached_run(&e, "one", catalog));
    let p1 = first["snapshot"].as_str().unwrap().to_string();

    // The pack of one unit's trees: that of deep/a (the unit's packer's; the spine's
    // trees are finalize's, in another pack, which stays).
    let root = source_tree(&e, &Id::parse(&p1).unwrap());
    let deep = descend(&open(&e), root, &[OsStr::new("deep"), OsStr::new("a")])
        .unwrap()
        .unwrap();
    let lost = tree_pack_file(&e, &deep);
    assert_ne!(lost, tree_pack_file(&e, &root));
    std::fs::remove_file(&lost).unwrap();
    let outs = uncached_run(&e, "two", catalog);
    let second = publisher(&outs);
    assert_eq!(second["parent"], p1.as_str(), "{second}");
    assert_eq!(second["status"], "complete", "{second}");
    let t = &second["totals"];
    assert!(t["files_read"].as_u64().unwrap() >= 1, "{t}");
    let ws = unreadable_parent_warnings(&second, &p1);
    assert!(
        ws.iter().any(|w| w.contains("tree of deep")),
        "{second}\n{outs:?}"
    );
    // The catalog's record of the run has them too.
    let (code, shown, err) = sr(&["--catalog", catalog, "show", "--json", "two"]);
    assert_eq!(code, 0, "{shown}\n{err}");
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let recorded: Vec<&str> = shown["report"]["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("{shown}"))
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(ws.iter().all(|w| recorded.contains(&w.as_str())), "{shown}");
    // (Its snapshot names the lost trees again, as a single-node run's does, until the
    // index is repaired: tests/restic_damaged.rs.)
}

/// The parent snapshot's tree of the source that does not read (the pack of finalize's
/// trees lost): every unit reads in full and the run publishes, saying so once though
/// each of its 2 workers met it (and put it in each of its commits). Before, every
/// worker failed, and so did every later run (the parent stays the newest snapshot).
#[test]
fn a_parent_whose_source_tree_does_not_read_is_read_in_full_with_one_warning() {
    let e = env();
    let catalog = e.t.path().join("state/catalog.db");
    let catalog = catalog.to_str().unwrap();
    let first = publisher(&uncached_run(&e, "one", catalog));
    let p1 = first["snapshot"].as_str().unwrap().to_string();
    let root = source_tree(&e, &Id::parse(&p1).unwrap());
    std::fs::remove_file(tree_pack_file(&e, &root)).unwrap();
    let outs = uncached_run(&e, "two", catalog);
    let second = publisher(&outs);
    assert_eq!(second["parent"], p1.as_str(), "{second}");
    assert_eq!(second["status"], "complete", "{second}");
    let t = &second["totals"];
    assert_eq!(t["files_unchanged"], 0, "{t}");
    assert_eq!(t["files_read"], t["files"], "{t}");
    let ws = unreadable_parent_warnings(&second, &p1);
    assert_eq!(ws.len(), 1, "{second}");
    assert!(ws[0].contains("tree of . cannot be read"), "{second}");
    assert_eq!(t["warnings"].as_array().unwrap().len(), 1, "{second}");
}

/// [`shard.rs`'s test of the same name] into a repository: the unit's walk opened
/// `source/big/subK` by its path and the snapshot held the outside files. Now the
/// directory is opened beneath the source's root with no symlink followed.
#[test]
fn a_directory_above_a_unit_swapped_for_a_symlink_is_not_followed_out_of_the_source() {
    let t = tempfile::tempdir().unwrap();
    let (src, outside) = swap_tree(t.path());
    let repo = t.path().join("repo");
    let url = file_url(&repo);
    let (code, _, err) = sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{err}");
    let e = Env { t, src, repo, url };
    let (claimed, listed) = (e.t.path().join("claimed"), e.t.path().join("listed"));
    let fp = format!(
        "shard.repo.before_walk=pause:{}@1;restic.backup.before_open=pause:{}@1",
        claimed.display(),
        listed.display()
    );
    let w = spawn(&e, 0, 1, "swap", &[("SNAPRING_FAILPOINTS", &fp)]);
    // The plan's order here: `big/sub0`'s units first.
    let o = swap_above_unit(w, &e.src, &outside, &claimed, &listed, || {
        let claimed: Vec<serde_json::Value> = run_status(&e, "swap")["unit_list"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["state"] == "claimed")
            .cloned()
            .collect();
        assert_eq!(claimed.len(), 1, "{claimed:?}");
        claimed[0]["dir"].as_str().unwrap().to_string()
    });
    assert_eq!(snapshots(&e).len(), 1, "{}", text(&o));
    let to = e.t.path().join("to");
    let (code, out, err) = sr(&restore_latest(&e.url, &to));
    assert_eq!(code, 0, "restore: {out}\n{err}\n{}", text(&o));
    assert!(
        secrets_under(&to).is_empty(),
        "files from outside the source in the snapshot: {:?}\n{}",
        secrets_under(&to),
        text(&o)
    );
}

/// The first line of `snapring status` of the run.
fn status_line(e: &Env, run: &str) -> String {
    let (code, out, err) = sr(&["status", "--dest", &e.url, "--run-id", run]);
    assert_eq!(code, 0, "{err}");
    out.lines().next().unwrap_or_default().to_string()
}

/// Every finalizer killed right after `final`, before the snapshot file: `status` says
/// the snapshot is decided, not written (it said `finalized (ID)` with no snapshot in
/// the repository); `snapring finalize` publishes it and says so, once (it also said
/// "published before this worker started: nothing to do"); a second says nothing to
/// do. Forgotten by a later run's retention, `status` says so. A publisher killed after
/// `published`: `finalize` says it completed the retention and tidy, not "nothing to
/// do".
#[test]
fn status_and_finalize_after_a_kill_at_final_say_what_is_true() {
    let e = env();
    let fp = [("SNAPRING_FAILPOINTS", "shard.repo.before_snapshot=kill")];
    let out = spawn(&e, 0, 1, "k", &fp).wait_with_output().unwrap();
    assert_eq!(out.status.code(), None, "{}", text(&out));
    assert!(snapshots(&e).is_empty());
    let st = run_status(&e, "k");
    assert_eq!(st["finalized"], false, "{st}");
    assert_eq!(st["snapshot_state"], "decided", "{st}");
    let id = st["snapshot"].as_str().unwrap().to_string();
    let line = status_line(&e, "k");
    assert!(
        line.ends_with(&format!(
            "; finalizing: snapshot {id} decided, not written yet; `snapring finalize` writes it if the repository still holds every blob it needs (if a prune removed any since, it refuses: back the source up again under a new run id)"
        )),
        "{line}"
    );

    let finalize = ["finalize", "--dest", &e.url, "--run-id", "k"];
    let (code, out, err) = sr(&finalize);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!("snapshot {} published by this process", &id[..8])),
        "{out}"
    );
    assert!(!out.contains("nothing to do"), "{out}");
    assert!(!out.contains("published before"), "{out}");
    assert_eq!(snapshots(&e).len(), 1);
    assert!(status_line(&e, "k").ends_with(&format!("; finalized ({id})")));
    assert_eq!(run_status(&e, "k")["snapshot_state"], "published");
    let (code, out, err) = sr(&finalize);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("nothing to do"), "{out}");
    assert!(!out.contains("published by this process"), "{out}");
    // `snapring finalize` is no worker.
    assert!(
        out.contains("run k was published before this finalize started: nothing to do"),
        "{out}"
    );

    retention_forgets_one(&e, "k2");
    assert!(
        status_line(&e, "k").ends_with(&format!("; finalized ({id}, since forgotten)")),
        "{}",
        status_line(&e, "k")
    );
    let st = run_status(&e, "k");
    assert_eq!(st["snapshot_state"], "forgotten", "{st}");
    assert_eq!(st["finalized"], true, "{st}");

    let fp = [("SNAPRING_FAILPOINTS", "shard.repo.after_published=kill")];
    let out = spawn(&e, 0, 1, "k3", &fp).wait_with_output().unwrap();
    assert_eq!(out.status.code(), None, "{}", text(&out));
    let (code, out, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "k3"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("completed that"), "{out}");
    assert!(out.contains("before this finalize started"), "{out}");
    assert!(!out.contains("nothing to do"), "{out}");
    assert!(e.repo.join("snapring/shards/k3/settled").exists());
}

/// A worker into a repository on a directory whose file system fills says what to do
/// (free space, rerun this worker), as a store's worker does: it said a bare "cannot
/// write …: No space left on device".
#[test]
fn a_worker_into_a_full_repository_says_to_free_space_and_rerun_it() {
    let Env { t, src, .. } = env();
    let mnt = t.path().join("mnt");
    let Some(_fs) = Tmpfs::mount(&mnt, "size=6m") else {
        return;
    };
    let repo = mnt.join("repo");
    let url = file_url(&repo);
    let (code, _, err) = sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{err}");
    let e = Env { t, src, repo, url };
    // 12 MiB that do not compress: twice the file system.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..12 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    write(&e.src.join("random"), &data);
    let out = worker(&e, &["--shard", "0/1", "--run-id", "full"], &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("No space left on device")
            && err.contains("free space")
            && err.contains("rerun this worker (same index and run id)"),
        "{err}"
    );
}

/// A takeover whose commit lost: worker 0 stopped past its lease with unit U built
/// (generation 1), worker 1 takes U over (generation 2) and is held before its commit
/// while worker 0 resumes, commits U first and publishes the run. Worker 1's commit is
/// refused, and its warning says what came first: the earlier generation's (not "a
/// later generation's"). `snapring status` credits U to worker 0, whose commit was
/// kept, not to worker 1, whose claim is the newest (it showed each worker's count off
/// by one the wrong way).
#[test]
fn status_credits_a_unit_to_the_worker_whose_commit_was_kept_not_the_newest_claim() {
    let e = env();
    let stalled = Stopped::at(&e, 0, 2, "tk", "shard.repo.before_commit");
    let claims = unit_claims(&e, "tk");
    assert_eq!(claims.len(), 1, "{claims:?}");
    let unit = claims[0].split_once(".g").unwrap().0.to_string();
    let n = plan_units(&e, "tk").len();
    // Worker 1 builds every other unit, then takes U over once its lease lapsed, and
    // stops before that commit (its n-th).
    let held = e.t.path().join("held-1");
    let fp = format!("shard.repo.before_commit=pause:{}@{n}", held.display());
    let other = spawn(
        &e,
        1,
        2,
        "tk",
        &[SHORT_LEASE[0], ("SNAPRING_FAILPOINTS", &fp)],
    );
    wait_for(&held);
    assert!(
        run_files(&e, "tk", "claims").contains(&format!("{unit}.g2")),
        "{:?}",
        run_files(&e, "tk", "claims")
    );
    let first = report(&stalled.resume());
    assert_eq!(
        units_of(&first, "units"),
        std::slice::from_ref(&unit),
        "{first}"
    );
    assert_eq!(first["finalized"], true, "{first}");
    std::fs::remove_file(&held).unwrap();
    let out = other.wait_with_output().unwrap();
    let late = report(&out);
    assert_eq!(
        units_of(&late, "units_refused"),
        std::slice::from_ref(&unit),
        "{late}"
    );
    assert_eq!(units_of(&late, "units").len(), n - 1, "{late}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "unit {unit}: an earlier generation's commit came first (generation 1, worker 0"
        )),
        "{err}"
    );
    assert!(!err.contains("a later generation"), "{err}");

    let st = run_status(&e, "tk");
    assert_eq!(st["finalized"], true, "{st}");
    let committed = |w: usize| {
        st["per_worker"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["index"] == w)
            .map_or(0, |p| p["committed"].as_u64().unwrap())
    };
    assert_eq!(committed(0), 1, "{st}");
    assert_eq!(committed(1), n as u64 - 1, "{st}");
    let u = st["unit_list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == unit.as_str())
        .unwrap();
    assert_eq!(u["worker"], 0, "{u}");
    assert_eq!(u["generation"], 1, "{u}");
}

/// A shard worker's text output (no `--json`): (exit code, stdout, stderr).
fn worker_text(e: &Env, args: &[&str]) -> (i32, String, String) {
    let mut c = worker(e, args, &[]);
    let mut a: Vec<std::ffi::OsString> = c.get_args().map(Into::into).collect();
    a.retain(|x| x != "--json");
    let mut t = Command::new(c.get_program());
    t.args(a);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    c = t;
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The publisher of a shard run prints its retention's verdicts, as a single-node
/// backup does: each snapshot of the label kept or forgotten, with why, and how many
/// were forgotten (it printed nothing of it: a clock-skewed snapshot that made the
/// retention forget the previous run's went unsaid). So does `snapring finalize`.
#[test]
fn the_publisher_prints_its_retentions_verdicts() {
    let e = env();
    let (code, out, err) = worker_text(&e, &["--shard", "0/1", "--run-id", "v1", "--retain", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let first = snapshots(&e);
    assert_eq!(first.len(), 1);
    let old = first[0].0.hex()[..8].to_string();
    assert!(out.contains(&format!("{old} ")), "{out}");
    assert!(out.contains("kept: newest 1 of label"), "{out}");
    assert!(out.contains("forgot 0 snapshots"), "{out}");

    let (code, out, err) = worker_text(&e, &["--shard", "0/1", "--run-id", "v2", "--retain", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let now = snapshots(&e);
    assert_eq!(now.len(), 1);
    let new = now[0].0.hex()[..8].to_string();
    assert_ne!(new, old);
    let line = |id: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(id))
            .unwrap_or_else(|| panic!("no verdict on {id}: {out}"))
            .to_string()
    };
    assert!(
        line(&old).contains("forgotten: older than the newest 1 of label"),
        "{out}"
    );
    assert!(line(&new).contains("kept: newest 1 of label"), "{out}");
    assert!(out.contains("forgot 1 snapshots"), "{out}");

    // `snapring finalize` of a run whose publisher died before finalize.
    let die = [("SNAPRING_FAILPOINTS", "shard.repo.before_finalize=kill")];
    let o = worker(
        &e,
        &["--shard", "0/1", "--run-id", "v3", "--retain", "1"],
        &die,
    )
    .output()
    .unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    let (code, out, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "v3"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        line_in(&out, &new).contains("forgotten: older than the newest 1"),
        "{out}"
    );
    assert!(out.contains("forgot 1 snapshots"), "{out}");
}

fn line_in(out: &str, id: &str) -> String {
    out.lines()
        .find(|l| l.trim_start().starts_with(id))
        .unwrap_or_else(|| panic!("no verdict on {id}: {out}"))
        .to_string()
}

/// A shard run into a repository whose exclusions leave only directories, after a run
/// with files: finalize writes no snapshot and forgets none (it published a snapshot
/// of empty directories, and `--retain 1` forgot the one with the files), every worker
/// exits 1 with the single-node message; `snapring finalize` refuses the same way, and
/// `snapring finalize --allow-empty` publishes it.
#[test]
fn a_shard_run_that_keeps_no_file_is_refused_into_a_repository_unless_allowed() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in 0..6 {
        for f in 0..3 {
            write(&src.join(format!("d{d}/sub/f{f}.dat")), b"data");
        }
    }
    let repo = t.path().join("repo");
    let url = file_url(&repo);
    assert_eq!(sr(&["init", "--dest", &url]).0, 0);
    let e = Env { t, src, repo, url };
    let run = |id: &str, extra: &[&str]| -> Vec<Output> {
        let kids: Vec<Child> = (0..4)
            .map(|i| {
                let shard = format!("{i}/4");
                let mut a = vec!["--shard", &shard, "--run-id", id, "--retain", "1"];
                a.extend(extra);
                worker(&e, &a, &[]).spawn().unwrap()
            })
            .collect();
        kids.into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect()
    };
    for o in run("good", &[]) {
        report(&o);
    }
    let good = snapshots(&e);
    assert_eq!(good.len(), 1);
    let said = |err: &str| {
        err.contains("holds no file to back up once the exclusions (--exclude \"*.dat\")")
            && err.contains(&good[0].0.hex()[..8])
            && err.contains("--allow-empty")
    };
    for o in run("dirs", &["--exclude", "*.dat"]) {
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(said(&String::from_utf8_lossy(&o.stderr)), "{}", text(&o));
    }
    let ids = |e: &Env| -> Vec<Id> { snapshots(e).into_iter().map(|(id, _)| id).collect() };
    assert_eq!(
        ids(&e),
        vec![good[0].0],
        "nothing written, nothing forgotten"
    );
    assert!(!e.repo.join("snapring/shards/dirs/final").exists());
    let (code, _, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "dirs"]);
    assert_eq!(code, 1, "{err}");
    assert!(said(&err), "{err}");
    assert_eq!(ids(&e), vec![good[0].0]);
    let (code, out, err) = sr(&[
        "finalize",
        "--dest",
        &e.url,
        "--run-id",
        "dirs",
        "--allow-empty",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let fin: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(fin["finalized"], true, "{fin}");
    let now = ids(&e);
    assert_eq!(now.len(), 1, "--retain 1 forgot the run with files");
    assert_ne!(now[0], good[0].0);
}

/// A shard run into a repository that keeps fewer than a tenth of the parent's files
/// (of at least 100: the source replaced by a marker file) is refused by the worker
/// that would publish, as a single-node backup is: every worker exits 1 naming the
/// counts and the parent, nothing written or forgotten, no `final`; `snapring finalize`
/// refuses the same, `snapring finalize --allow-empty` publishes it (`--retain 1`
/// forgets the one with files), and the next run is not refused.
#[test]
fn a_shard_run_that_keeps_far_fewer_files_is_refused_into_a_repository_unless_allowed() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in 0..6 {
        for f in 0..20 {
            write(&src.join(format!("d{d}/sub/f{f}.dat")), b"data");
        }
    }
    let repo = t.path().join("repo");
    let url = file_url(&repo);
    assert_eq!(sr(&["init", "--dest", &url]).0, 0);
    let e = Env { t, src, repo, url };
    let run = |id: &str, extra: &[&str]| -> Vec<Output> {
        let kids: Vec<Child> = (0..4)
            .map(|i| {
                let shard = format!("{i}/4");
                let mut a = vec!["--shard", &shard, "--run-id", id, "--retain", "1"];
                a.extend(extra);
                worker(&e, &a, &[]).spawn().unwrap()
            })
            .collect();
        kids.into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect()
    };
    for o in run("good", &[]) {
        report(&o);
    }
    let good = snapshots(&e);
    assert_eq!(good.len(), 1);
    let said = |err: &str| {
        err.contains("keeps 1 file to back up, but the previous snapshot")
            && err.contains(&good[0].0.hex()[..8])
            && err.contains("holds 120")
            && err.contains("--allow-empty")
    };
    std::fs::remove_dir_all(&e.src).unwrap();
    write(&e.src.join(".placeholder"), b"");
    for o in run("marker", &[]) {
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(said(&String::from_utf8_lossy(&o.stderr)), "{}", text(&o));
    }
    let ids = |e: &Env| -> Vec<Id> { snapshots(e).into_iter().map(|(id, _)| id).collect() };
    assert_eq!(
        ids(&e),
        vec![good[0].0],
        "nothing written, nothing forgotten"
    );
    assert!(!e.repo.join("snapring/shards/marker/final").exists());
    let (code, _, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "marker"]);
    assert_eq!(code, 1, "{err}");
    assert!(said(&err), "{err}");
    assert_eq!(ids(&e), vec![good[0].0]);
    let (code, out, err) = sr(&[
        "finalize",
        "--dest",
        &e.url,
        "--run-id",
        "marker",
        "--allow-empty",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let now = ids(&e);
    assert_eq!(now.len(), 1, "--retain 1 forgot the run with files");
    assert_ne!(now[0], good[0].0);
    for o in run("after", &[]) {
        report(&o);
    }
}

/// A hard-linked file whose two names fall in two units, changed between the units'
/// reads of them (a pause at the first name's read, `restic.backup.hard_link`): each
/// unit records its one name as the inode, with its own content; finalize compares the
/// units' records of the inode and records the later unit's name as no hard link
/// (`inode: 0`, `links: 1`), a `metadata` problem "join hard link", as a single-node
/// run does within its walk (tests/restic_runs.rs). Recorded as one inode, restic's
/// restore gave both names one content.
#[test]
fn a_hard_link_across_units_changed_between_their_reads_restores_each_names_content() {
    let e = env();
    // Only the pair across units has several links: the pause is at one of its names.
    std::fs::remove_dir_all(e.src.join("links")).unwrap();
    let (a, z) = ("d00/sub/f3", "d11/linked-to-d00");
    let old = std::fs::read(e.src.join(a)).unwrap();
    let new = b"BBBB newer content, longer than before".to_vec();
    let pause = e.t.path().join("between");
    let fp = format!("restic.backup.hard_link=pause:{}", pause.display());
    let child = spawn(&e, 0, 1, "hl", &[("SNAPRING_FAILPOINTS", &fp)]);
    wait_for(&pause);
    // One name is read; the other, in another unit, is not yet.
    std::fs::write(e.src.join(a), &new).unwrap();
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "partial", "{r}");
    let problems = r["totals"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{r}");
    assert_eq!(problems[0]["action"], "join hard link", "{r}");
    assert_eq!(problems[0]["kind"], "metadata", "{r}");
    let named = problems[0]["path"].as_str().unwrap();
    assert!(named == a || named == z, "{r}");
    let id = snapshots(&e)[0].0.hex();

    let contents = |to: &std::path::Path| {
        let (pa, pz) = (to.join(a), to.join(z));
        assert_ne!(ino(&pa), ino(&pz), "restored as one inode");
        let mut got = [std::fs::read(&pa).unwrap(), std::fs::read(&pz).unwrap()];
        got.sort();
        got
    };
    let mut want = [old, new];
    want.sort();
    let to = e.t.path().join("restored");
    let (code, out, err) = sr(&[
        "restore",
        "--dest",
        &e.url,
        &id,
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(contents(&to), want);
    if let Some(restic) = restic_binary("restic's restore of two names across units") {
        let target = e.t.path().join("by-restic");
        run_restic(
            &restic,
            &e.repo,
            &["restore", &id, "--target", target.to_str().unwrap()],
        );
        let src = std::fs::canonicalize(&e.src).unwrap();
        assert_eq!(contents(&target.join(src.strip_prefix("/").unwrap())), want);
        run_restic(&restic, &e.repo, &["check", "--read-data"]);
    }
}

/// A run decided (`final` written) but its snapshot file not written (its publisher
/// killed at `shard.repo.before_snapshot`), or written and then removed by a forget
/// that does not mark the run (restic's own: the file deleted here) before `published`
/// (killed at `shard.repo.before_published`), then a prune that knows nothing of
/// shard runs (restic's own: the library's prune without the runs' roots): the run's
/// packs are gone. The next finalize (or worker) refuses the run, exit 1, and writes
/// no snapshot; it wrote the snapshot, exit 0, and `verify` then found it damaged.
#[test]
fn a_decided_run_whose_packs_were_pruned_is_refused_not_published_damaged() {
    for (point, forget) in [
        ("shard.repo.before_snapshot", false),
        ("shard.repo.before_published", true),
    ] {
        let e = env();
        // A published run first: the pruned run's unchanged files keep their blobs.
        report(&spawn(&e, 0, 1, "p1", &[]).wait_with_output().unwrap());
        write(&e.src.join("d03/new"), &pseudo_random(300_000, 3));
        let fp = format!("{point}=kill");
        let out = spawn(&e, 0, 1, "p2", &[("SNAPRING_FAILPOINTS", &fp)])
            .wait_with_output()
            .unwrap();
        assert_eq!(out.status.code(), None, "{point}: {}", text(&out));
        assert!(e.repo.join("snapring/shards/p2/final").exists(), "{point}");
        if forget {
            let snaps = snapshots(&e);
            assert_eq!(snaps.len(), 2, "{point}");
            let p2 = snaps
                .iter()
                .find(|(_, s)| s.tag("shard-run") == Some("p2"))
                .unwrap();
            std::fs::remove_file(e.repo.join("snapshots").join(p2.0.hex())).unwrap();
        }
        let mut repo = open(&e);
        snapring::restic::prune::prune(&mut repo, false).unwrap();
        drop(repo);
        // `status` promises no publish finalize refuses (it said "`snapring finalize`
        // completes it").
        let line = status_line(&e, "p2");
        assert!(
            line.contains("decided, not written yet; `snapring finalize` writes it if the repository still holds every blob it needs (if a prune removed any since, it refuses")
                && !line.contains("completes it"),
            "{point}: {line}"
        );
        let (code, out, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "p2"]);
        assert_eq!(code, 1, "{point}: {out}\n{err}");
        assert!(
            err.contains("no index of the repository holds") && err.contains("new run id"),
            "{point}: {err}"
        );
        assert_eq!(snapshots(&e).len(), 1, "{point}: nothing published");
        let out = spawn(&e, 0, 1, "p2", &[]).wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{point}: {}", text(&out));
        assert_eq!(snapshots(&e).len(), 1, "{point}: nothing published");
        let (code, _, err) = sr(&["verify", "--dest", &e.url]);
        assert_eq!(code, 0, "{point}: {err}");
    }
}

/// A `published` that does not read (0 bytes: damaged, as it is created whole) is no
/// proof of a publish. Put there before `final`: the worker that then decides the run
/// publishes it and writes the marker anew (it said "published by another worker",
/// exit 0, and wrote no snapshot). Put there after `final`, with no snapshot file:
/// finalize refuses, exit 1, naming the marker and what to do; once the marker is
/// removed, finalize publishes the run.
#[test]
fn an_empty_published_marker_is_not_taken_for_a_publish() {
    let e = env();
    let kill = [("SNAPRING_FAILPOINTS", "shard.repo.before_finalize=kill")];
    let out = spawn(&e, 0, 1, "m1", &kill).wait_with_output().unwrap();
    assert_eq!(out.status.code(), None, "{}", text(&out));
    let marker = e.repo.join("snapring/shards/m1/published");
    std::fs::write(&marker, b"").unwrap();
    let r = report(&spawn(&e, 0, 1, "m1", &[]).wait_with_output().unwrap());
    assert_eq!(r["finalized"], true, "{r}");
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1);
    assert_eq!(r["snapshot"], snaps[0].0.hex().as_str());
    assert!(std::fs::metadata(&marker).unwrap().len() > 0);
    assert_restores_to_source(&e, &snaps[0].0.hex(), "restored");

    write(&e.src.join("d03/new"), &pseudo_random(300_000, 3));
    let kill = [("SNAPRING_FAILPOINTS", "shard.repo.before_snapshot=kill")];
    let out = spawn(&e, 0, 1, "m2", &kill).wait_with_output().unwrap();
    assert_eq!(out.status.code(), None, "{}", text(&out));
    let marker = e.repo.join("snapring/shards/m2/published");
    std::fs::write(&marker, b"").unwrap();
    let (code, out, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "m2"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("does not read") && err.contains("remove"),
        "{err}"
    );
    assert_eq!(snapshots(&e).len(), 1, "nothing published");
    std::fs::remove_file(&marker).unwrap();
    let (code, out, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "m2"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(snapshots(&e).len(), 2);
}

/// A commit that does not read (0 bytes: damaged since, as it is created whole) stops
/// finalize, which says what to do (it said only "0 bytes is too short to be sealed").
#[test]
fn an_empty_commit_stops_finalize_saying_what_to_do() {
    let e = env();
    let kill = [("SNAPRING_FAILPOINTS", "shard.repo.before_finalize=kill")];
    let out = spawn(&e, 0, 1, "dm", &kill).wait_with_output().unwrap();
    assert_eq!(out.status.code(), None, "{}", text(&out));
    let unit = plan_units(&e, "dm").remove(0);
    std::fs::write(e.repo.join("snapring/shards/dm/done").join(&unit), b"").unwrap();
    let (code, out, err) = sr(&["finalize", "--dest", &e.url, "--run-id", "dm"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("damaged") && err.contains("new run id"),
        "{err}"
    );
    assert!(snapshots(&e).is_empty());
}

/// The disk fills after the run's snapshot file is written, before `published` is:
/// the worker says the run is published and what failed after it, exit 0 (it exited 1
/// with a bare "No space left on device" while `status` showed the snapshot), and
/// records nothing; its rerun, with room again, marks the run published, applies the
/// retention and tidies, once.
#[test]
fn a_full_disk_after_the_snapshot_file_is_told_as_after_the_publish() {
    let Env { t, src, .. } = env();
    let mnt = t.path().join("mnt");
    let Some(fs) = Tmpfs::mount(&mnt, "size=8m") else {
        return;
    };
    let repo = mnt.join("repo");
    let url = file_url(&repo);
    let (code, _, err) = sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{err}");
    let e = Env { t, src, repo, url };
    let pause = e.t.path().join("pause");
    let fp = format!("shard.repo.before_published=pause:{}", pause.display());
    let args = ["--shard", "0/1", "--run-id", "nospace", "--retain", "1"];
    let child = worker(&e, &args, &[("SNAPRING_FAILPOINTS", &fp)])
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while !pause.exists() {
        assert!(
            Instant::now() < until,
            "the worker never reached its publish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Fill the file system.
    let fill = fs.0.join("fill");
    let _ = std::fs::write(&fill, vec![0u8; 16 << 20]);
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let r = report(&out);
    let err = r["totals"]["warnings"].to_string();
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let id = snaps[0].0.hex();
    assert_eq!(r["snapshot"], id.as_str(), "{r}");
    assert_eq!(r["finalized"], true, "{r}");
    assert_eq!(r["status"], "complete", "{r}");
    assert!(
        err.contains(&format!(
            "its snapshot {} is written (the run is published), but marking it published failed",
            &id[..8]
        )) && err.contains("No space left on device")
            && err.contains("rerun this worker"),
        "{err}"
    );
    assert!(!e.repo.join("snapring/shards/nospace/published").exists());
    std::fs::remove_file(&fill).unwrap();
    let again = report(&worker(&e, &args, &[]).output().unwrap());
    assert_eq!(again["finalized"], true, "{again}");
    assert!(again["retention"].is_object(), "{again}");
    assert_eq!(snapshots(&e).len(), 1);
    assert!(e.repo.join("snapring/shards/nospace/settled").exists());
    assert_tidied(&e, "nospace");
}

/// The publisher of a run, on another host, killed right after `published` (before its
/// retention and tidy): a rerun of its worker judges whether that publisher is gone
/// by the age of `published` by the repository's clock (its mtime), as leases are,
/// not by the publisher's time in it against its own clock. A rerun whose clock is 2
/// hours ahead, at once, leaves the run to the publisher (within two leases it may be
/// at work: its retention is not done twice at once); one whose clock is 10 minutes
/// behind, once `published` is older than two leases (2 s each), completes them.
/// Judged by this host's clock, the first completed them at once and the second never
/// did (`published` was from its future for 10 minutes).
#[test]
fn a_rerun_judges_a_publisher_gone_by_the_repositorys_clock_not_its_own() {
    let e = env();
    if !common::uts_namespaces() {
        return;
    }
    let args = |run: &'static str| ["--shard", "0/1", "--run-id", run, "--retain", "1"];
    report(&worker(&e, &args("s1"), &[]).output().unwrap());
    let lease = [("SNAPRING_SHARD_LEASE", "60s")];
    let c = worker(&e, &args("s2"), &lease);
    common::killed_on_host(&c, "other-host", "shard.repo.after_published=kill");
    let dir = e.repo.join("snapring/shards/s2");
    assert!(dir.join("published").exists());
    assert_eq!(snapshots(&e).len(), 2);

    let mut ahead = worker(&e, &args("s2"), &lease);
    if !with_clock_off(&mut ahead, "+7200") {
        return;
    }
    let r = report(&ahead.output().unwrap());
    assert_eq!(r["finalized"], false, "{r}");
    assert!(r.get("completed").is_none(), "{r}");
    assert!(r.get("retention").is_none(), "{r}");
    assert!(!dir.join("settled").exists());
    assert_eq!(snapshots(&e).len(), 2);

    // Two leases of 2 s past `published` by the repository's clock. The killed
    // publisher's repository lock (a process of another host: stale only after 30
    // minutes) is removed, as `restic unlock --remove-all` does, for the retention.
    std::thread::sleep(Duration::from_secs(5));
    let locks = lock_files(&e);
    assert_eq!(locks.len(), 1, "{locks:?}");
    std::fs::remove_file(&locks[0]).unwrap();
    let mut behind = worker(&e, &args("s2"), &SHORT_LEASE);
    assert!(with_clock_off(&mut behind, "-600"));
    let r = report(&behind.output().unwrap());
    assert_eq!(r["completed"], true, "{r}");
    assert_eq!(r["retention"]["removed"], 1, "{r}");
    assert!(dir.join("settled").exists());
    let snaps = snapshots(&e);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert!(snaps[0].1.tags.contains(&"shard-run=s2".to_string()));
    assert_tidied(&e, "s2");
}
