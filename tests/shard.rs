//! Scale-out (docs/scale-out.md): one backup run split across worker processes of the
//! real binary, named by `--shard` and by the engines' variables (Kubernetes, Slurm,
//! AWS Batch). Each time the snapshot must equal the source (content, modes, owners, ns
//! times, xattrs, hard links, including links between units) and what a single-node run
//! makes, the previous snapshot must be untouched, every unit committed once and the run
//! finalized once: with all workers at once, a worker SIGKILLed mid-unit and rerun, two
//! processes for one index, crashes during finalize followed by `snapring finalize`, and
//! a worker SIGSTOPped past its lease whose late commit is refused.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A source with one of everything (`odd_tree`), a directory heavy enough to be cut
/// into name ranges, nested directories, and hard links between directories that land
/// in different units.
fn source(src: &Path) {
    odd_tree(src);
    for d in 0..4 {
        for f in 0..25 {
            write(
                &src.join(format!("deep/d{d}/s{}/f{f:02}", f % 3)),
                format!("deep {d} {f} {}", "x".repeat(f * 37)).as_bytes(),
            );
        }
    }
    for f in 0..150 {
        write(
            &src.join(format!("flat/n{f:03} with space")),
            format!("flat {f}").repeat(f % 7 + 1).as_bytes(),
        );
    }
    std::fs::hard_link(src.join("deep/d0/s0/f00"), src.join("flat/zz-link-to-deep")).unwrap();
    std::fs::hard_link(src.join("deep/d0/s0/f00"), src.join("deep/d3/s1/link-too")).unwrap();
    std::fs::hard_link(src.join("links/a"), src.join("flat/n000-link-to-links")).unwrap();
    // Links within one unit whose walk starts below the root (a name range of `flat`,
    // and a subdirectory of `deep`).
    std::fs::hard_link(src.join("flat/n001 with space"), src.join("flat/n001 twin")).unwrap();
    std::fs::hard_link(src.join("deep/d1/s2/f02"), src.join("deep/d1/s2/f02 twin")).unwrap();
    chown(&src.join("deep/d2"), 321, 654);
    chmod(&src.join("deep/d2"), 0o750);
    for d in ["deep/d2", "deep", "flat", ""] {
        set_mtime(&src.join(d), 1_100_000_000, 5_000 + d.len() as i64);
    }
}

struct Env {
    _t: tempfile::TempDir,
    src: PathBuf,
    dest: PathBuf,
}

fn env() -> Env {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    source(&src);
    let dest = t.path().join("dest");
    Env { src, dest, _t: t }
}

/// `snapring backup` as a worker: `args` name it, `vars` are its environment.
fn worker(e: &Env, args: &[&str], vars: &[(&str, &str)]) -> Command {
    worker_with_jobs(e, "2", args, vars)
}

/// [`worker`] with `--jobs jobs`.
fn worker_with_jobs(e: &Env, jobs: &str, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin());
    c.args(["backup", "--jobs", jobs, "--source"])
        .arg(&e.src)
        .arg("--dest")
        .arg(&e.dest)
        .args(args)
        .env("SNAPRING_CATALOG", "off")
        .env_remove("SNAPRING_FAILPOINTS")
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

/// `snapring CMD --dest STORE --run-id RUN [EXTRA…]` (`finalize` or `status`).
fn run_cmd(e: &Env, cmd: &str, run: &str, extra: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut a: Vec<&OsStr> = vec![cmd.as_ref(), "--dest".as_ref(), e.dest.as_os_str()];
    a.extend([OsStr::new("--run-id"), OsStr::new(run)]);
    a.extend(extra.iter().map(OsStr::new));
    snapring(&a, vars)
}

fn run_dir(e: &Env, run: &str) -> PathBuf {
    e.dest.join(".snapring/shards").join(run)
}

fn plan_units(e: &Env, run: &str) -> Vec<String> {
    let p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir(e, run).join("plan.json")).unwrap()).unwrap();
    p["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every unit of the plan committed exactly once (one marker each, nothing else), the
/// run finalized once, the run record published; returns the commit markers.
fn check_run(e: &Env, run: &str) -> Vec<serde_json::Value> {
    check_run_with(e, run, None)
}

/// [`check_run`] of a run whose spine directory `gone` was gone from the source when it
/// was finalized: the run is `partial` with a `vanished` problem naming it, and its
/// `files_total` counts what the snapshot holds (not what the units had backed up).
fn check_run_with(e: &Env, run: &str, gone: Option<&str>) -> Vec<serde_json::Value> {
    let units = plan_units(e, run);
    assert!(
        units.len() > 4,
        "the test tree should be cut into several units: {units:?}"
    );
    let mut done: Vec<String> = std::fs::read_dir(run_dir(e, run).join("done"))
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    done.sort();
    assert_eq!(done, units, "each unit committed once");
    assert!(run_dir(e, run).join("finalized").is_file());
    for d in ["work", "parts", "tree"] {
        assert!(!run_dir(e, run).join(d).exists(), "{d} left behind");
    }
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(e.dest.join(format!(".snapring/runs/{run}.json"))).unwrap(),
    )
    .unwrap();
    match gone {
        None => assert_eq!(rec["status"], "complete", "{rec}"),
        Some(d) => {
            assert_eq!(rec["status"], "partial", "{rec}");
            let ps = rec["problems"].as_array().unwrap();
            assert!(
                ps.iter()
                    .any(|p| p["path"] == d && p["kind"].as_str() == Some("vanished")),
                "{rec}"
            );
        }
    }
    assert_eq!(rec["snapshot"], "daily.0");
    assert_eq!(rec["shards"]["units"], units.len());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(e.dest.join(".snapring/snapshots.json")).unwrap())
            .unwrap();
    let published: Vec<&serde_json::Value> = state["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["id"] == run)
        .collect();
    assert_eq!(published.len(), 1, "published once: {state}");
    let commits: Vec<serde_json::Value> = units
        .iter()
        .map(|u| {
            serde_json::from_slice(&std::fs::read(run_dir(e, run).join("done").join(u)).unwrap())
                .unwrap()
        })
        .collect();
    // Each commit carries its unit's figures; the record adds them up.
    let files: u64 = commits
        .iter()
        .map(|c| {
            c["counts"]["files_total"]
                .as_u64()
                .expect("counts in the commit")
        })
        .sum();
    match gone {
        None => assert_eq!(rec["files_total"], files, "{rec}"),
        Some(_) => assert_eq!(
            rec["files_total"],
            non_dirs(&e.dest.join("daily.0")),
            "{rec}"
        ),
    }
    commits
}

/// Entries other than directories under `root`.
fn non_dirs(root: &Path) -> u64 {
    let mut n = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for f in std::fs::read_dir(&d).unwrap() {
            let f = f.unwrap();
            if f.file_type().unwrap().is_dir() {
                dirs.push(f.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

/// The snapshot equals the source, and `verify` finds it clean against its manifest.
fn check_snapshot(e: &Env, what: &str) {
    assert_same_tree(&describe(&e.src), &describe(&e.dest.join("daily.0")), what);
    verify_clean(e, "daily.0");
}

/// `verify` finds snapshot `name` of the store clean against its manifest.
fn verify_clean(e: &Env, name: &str) {
    let out = snapring(
        &[
            "verify".as_ref(),
            "--dest".as_ref(),
            e.dest.as_os_str(),
            name.as_ref(),
        ],
        &[],
    );
    assert!(out.status.success(), "verify {name}: {}", text(&out));
}

/// A single-node run of the same source, for comparison.
fn single_node(e: &Env) -> PathBuf {
    let other = e.dest.with_file_name("single");
    let (code, rep, err) = backup(&e.src, &other, &["--jobs", "2"], &[]);
    assert_eq!(code, 0, "{err} {rep}");
    other.join("daily.0")
}

#[test]
fn four_workers_named_by_flag_and_by_each_engines_variables_make_the_single_node_snapshot() {
    let e = env();
    let run = "slurm-77";
    // Worker 0 by flag, 1 as a Kubernetes Indexed Job, 2 as a Slurm array element
    // (its run id from SLURM_ARRAY_JOB_ID), 3 as an AWS Batch array child.
    let kids = vec![
        worker(&e, &["--shard", "0/4", "--run-id", run], &[])
            .spawn()
            .unwrap(),
        worker(
            &e,
            &["--shards", "4"],
            &[("JOB_COMPLETION_INDEX", "1"), ("SNAPRING_RUN_ID", run)],
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
            &[],
            &[
                ("AWS_BATCH_JOB_ARRAY_INDEX", "3"),
                ("SNAPRING_SHARDS", "4"),
                ("SNAPRING_RUN_ID", run),
            ],
        )
        .spawn()
        .unwrap(),
    ];
    let outs: Vec<Output> = kids
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        assert_eq!(o.status.code(), Some(0), "{}", text(o));
    }
    let finalizers = outs
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stdout).contains("finalized: complete"))
        .count();
    assert_eq!(finalizers, 1, "one worker finalizes");
    check_run(&e, run);
    // Each process knew its own index from its flag or its engine's variables (which
    // units each committed depends on when it started: the others take over what a
    // late one has not claimed).
    for (i, o) in outs.iter().enumerate() {
        let said = format!("shard run {run} worker {i}/4:");
        assert!(
            String::from_utf8_lossy(&o.stdout).starts_with(&said),
            "{}",
            text(o)
        );
    }
    check_snapshot(&e, "4 workers");
    // Links between units are one inode, as a single-node run makes them.
    let s = e.dest.join("daily.0");
    assert_eq!(
        ino(&s.join("deep/d0/s0/f00")),
        ino(&s.join("flat/zz-link-to-deep"))
    );
    assert_eq!(
        ino(&s.join("links/a")),
        ino(&s.join("flat/n000-link-to-links"))
    );
    let single = single_node(&e);
    assert_same_tree(
        &describe(&single),
        &describe(&s),
        "shard run vs single-node run",
    );
    let status = run_cmd(&e, "status", run, &["--json"], &[]);
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(st["finalized"], true);
    assert_eq!(st["done"], st["units"]);
    assert_eq!(st["pending"], 0);
    assert_eq!(
        st["sized_by"], "walk",
        "the first run has no manifest: {st}"
    );

    // A second run, incremental: the previous snapshot stays as it was, unchanged
    // files are linked, and the result is again the source.
    let before = common::state::full_state(&s);
    write(&e.src.join("flat/n010 with space"), b"changed");
    std::fs::remove_file(e.src.join("deep/d1/s1/f01")).unwrap();
    write(&e.src.join("deep/d3/new file"), b"new");
    let kids: Vec<Child> = (0..3).map(|i| spawn(&e, i, 3, "second", &[])).collect();
    for c in kids {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    check_run(&e, "second");
    check_snapshot(&e, "second run");
    let mut after = common::state::full_state(&e.dest.join("daily.1"));
    let mut before = before;
    // The rename to daily.1 changes its root's ctime; the new snapshot's links change
    // link counts and ctimes; nothing else may change.
    before.remove(&Vec::new());
    after.remove(&Vec::new());
    for f in before.values_mut().chain(after.values_mut()) {
        f.ctime_ns = 0;
        f.nlink = 0;
    }
    common::state::assert_unchanged(&before, &after, "the previous snapshot");
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(e.dest.join(".snapring/runs/second.json")).unwrap())
            .unwrap();
    assert_eq!(rec["files_transferred"], 2, "{rec}");
    assert_eq!(rec["based_on"], run);
    // Finalize again by hand: nothing to do.
    let out = run_cmd(&e, "finalize", "second", &[], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already finalized"));
}

#[test]
fn bad_worker_names_are_usage_errors_and_a_single_node_backup_waits_for_the_workers() {
    let e = env();
    for (args, vars) in [
        (vec!["--run-id", "r"], vec![("JOB_COMPLETION_INDEX", "0")]),
        (
            vec![],
            vec![("AWS_BATCH_JOB_ARRAY_INDEX", "1"), ("SNAPRING_RUN_ID", "r")],
        ),
        (vec!["--shards", "2"], vec![("JOB_COMPLETION_INDEX", "0")]),
        (vec!["--shard", "2/2", "--run-id", "r"], vec![]),
        (vec!["--shard", "0/2", "--run-id", "../x"], vec![]),
        (vec!["--run-id", "r"], vec![]),
    ] {
        let o = worker(&e, &args, &vars).output().unwrap();
        assert_eq!(o.status.code(), Some(64), "{args:?} {vars:?}: {}", text(&o));
    }
    assert!(!e.dest.exists(), "nothing written");
    // A worker that finds a single-node backup holding the store may retry later.
    let single = spawn_paused(&e.src, &e.dest, &[], "walk.copy", 2);
    let o = worker(&e, &["--shard", "0/2", "--run-id", "busy"], &[])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(75), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use"),
        "{}",
        text(&o)
    );
    let (code, _) = single.resume();
    assert_eq!(code, 0);
    // A worker that stalls holds the store: a single-node backup is refused (not
    // corrupting the run), and after the run it works.
    let pause = e.dest.with_file_name("pause");
    let mut w0 = spawn(
        &e,
        0,
        1,
        "r",
        &[(
            "SNAPRING_FAILPOINTS",
            &format!("walk.dir=pause:{}@3", pause.display()),
        )],
    );
    wait_for(&pause);
    let (code, _, err) = backup(&e.src, &e.dest, &[], &[]);
    // Try again later (EX_TEMPFAIL): nothing was lost.
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("in use"), "{err}");
    std::fs::remove_file(&pause).unwrap();
    let o = w0.wait().unwrap();
    assert_eq!(o.code(), Some(0));
    check_run(&e, "r");
    check_snapshot(&e, "one worker");
    let (code, rep, err) = backup(&e.src, &e.dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["files_transferred"], 0, "{rep}");
    assert_eq!(
        snapshot_names(&e.dest),
        vec!["daily.0", "daily.1", "daily.2"]
    );
    // A finalized run's worker has nothing to do.
    let o = worker(&e, &["--shard", "0/1", "--run-id", "r"], &[])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "a finalized run: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("already finalized"));
    // A run id a single-node run or a removed shard run used is not taken again.
    std::fs::remove_dir_all(run_dir(&e, "r")).unwrap();
    let o = worker(&e, &["--shard", "0/2", "--run-id", "r"], &[])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("new one"),
        "{}",
        text(&o)
    );
    // A worker of a run that was planned with other settings is refused.
    let o = worker(
        &e,
        &["--shard", "0/3", "--run-id", "other"],
        &[("SNAPRING_FAILPOINTS", "walk.dir=kill@1")],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), None, "{}", text(&o));
    for (args, said) in [
        (
            vec!["--shard", "1/2", "--run-id", "other"],
            "3 workers, not 2",
        ),
        (
            vec!["--shard", "1/3", "--run-id", "other", "--label", "weekly"],
            "label daily, not weekly:",
        ),
    ] {
        let o = worker(&e, &args, &[]).output().unwrap();
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(&format!("was planned with {said}")),
            "{}",
            text(&o)
        );
    }
}

/// A run id reused after its run was finalized: a worker with other settings is
/// refused (exit 64) as before the finalize and as its dry run is; one with the same
/// settings (a retried pod, or a cron job with a fixed run id) backs nothing up, exits
/// 0 and says so, naming the run id and when it was finalized.
#[test]
fn a_worker_of_a_finalized_run_is_checked_against_its_plan_and_says_nothing_was_backed_up() {
    let e = env();
    all_ok(&run_workers(&e, 2, "nightly-1", &[], |_| vec![]), "the run");
    check_run(&e, "nightly-1");
    let names = snapshot_names(&e.dest);
    let finished = run_record(&e, "nightly-1")["finished_at"]
        .as_str()
        .unwrap()
        .to_string();
    write(&e.src.join("flat/new since"), b"new");
    for dry in [false, true] {
        for args in [
            vec!["--shard", "0/5", "--run-id", "nightly-1"],
            vec![
                "--shard",
                "0/2",
                "--run-id",
                "nightly-1",
                "--label",
                "weekly",
            ],
            vec!["--shard", "0/2", "--run-id", "nightly-1", "--retain", "1"],
            vec![
                "--shard",
                "0/2",
                "--run-id",
                "nightly-1",
                "--exclude",
                "flat",
            ],
        ] {
            let mut args = args;
            if dry {
                args.push("--dry-run");
            }
            let o = worker(&e, &args, &[]).output().unwrap();
            assert_eq!(o.status.code(), Some(64), "{args:?}: {}", text(&o));
            assert!(stderr_of(&o).contains("was planned with"), "{}", text(&o));
        }
    }
    // Another source: refused too, also when it does not exist.
    let other = e.src.with_file_name("other");
    std::fs::create_dir(&other).unwrap();
    for src in [&other, &e.src.with_file_name("absent")] {
        let o = Command::new(bin())
            .args(["backup", "--source"])
            .arg(src)
            .arg("--dest")
            .arg(&e.dest)
            .args(["--shard", "1/2", "--run-id", "nightly-1"])
            .env("SNAPRING_CATALOG", "off")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(64), "{}", text(&o));
        assert!(stderr_of(&o).contains("was planned with"), "{}", text(&o));
    }
    for i in 0..2 {
        let shard = format!("{i}/2");
        let o = worker(&e, &["--shard", &shard, "--run-id", "nightly-1"], &[])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains(&format!(
                "nothing was backed up: run id nightly-1 was already finalized at {finished}; a new backup needs a new run id"
            )),
            "{}",
            text(&o)
        );
        let o = worker(
            &e,
            &["--shard", &shard, "--run-id", "nightly-1", "--json"],
            &[],
        )
        .output()
        .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["finalized_before_start"], finished.as_str(), "{j}");
    }
    assert_eq!(snapshot_names(&e.dest), names, "nothing published");
    assert!(!e.dest.join("daily.0/flat/new since").exists());
}

/// H2 (session 47): a job that passes a fixed run id (a cron job, a script) found its
/// run finalized each night after the first and exited 0 with nothing backed up. A
/// worker that finds its run finalized longer ago than any retry comes
/// (`SNAPRING_SHARD_REUSE_AFTER`, default 6 h; the finalized report's end is put back
/// here) is refused, exit 64, saying the run id is used again, and writes nothing (no
/// log, no deletion); within the bound (set longer) it is a late duplicate, exit 0, as
/// before.
#[test]
fn a_worker_of_a_run_finalized_hours_before_is_refused_as_a_reused_run_id() {
    let e = env();
    all_ok(&run_workers(&e, 2, "fixed", &[], |_| vec![]), "the run");
    check_run(&e, "fixed");
    let marker = run_dir(&e, "fixed").join("finalized");
    let mut rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    let end = chrono::Utc::now() - chrono::Duration::hours(7);
    let at = end.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    rep["finished_at"] = at.clone().into();
    std::fs::write(&marker, serde_json::to_vec(&rep).unwrap()).unwrap();
    write(&e.src.join("flat/new since"), b"new");
    let names = snapshot_names(&e.dest);
    let before = store_listing(&e.dest);
    for i in 0..2 {
        let shard = format!("{i}/2");
        let o = worker(&e, &["--shard", &shard, "--run-id", "fixed"], &[])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(64), "{}", text(&o));
        let err = stderr_of(&o);
        assert!(
            err.contains(&format!(
                "run id fixed was already finalized at {at}, 7h 00m before this worker started"
            )) && err.contains("nothing was backed up or written")
                && err.contains("Give each run its own id"),
            "{}",
            text(&o)
        );
    }
    assert_eq!(store_listing(&e.dest), before, "nothing written");
    // A late duplicate of that run (a requeue held 7 hours) with the bound set longer.
    let o = worker(
        &e,
        &["--shard", "1/2", "--run-id", "fixed"],
        &[("SNAPRING_SHARD_REUSE_AFTER", "8h")],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!(
            "nothing was backed up: run id fixed was already finalized at {at}"
        )),
        "{}",
        text(&o)
    );
    assert_eq!(snapshot_names(&e.dest), names, "nothing published");
    assert!(!e.dest.join("daily.0/flat/new since").exists());
}

/// Kills `failpoint` in worker 0 while workers 1 and 2 run, reruns worker 0 (same
/// index, same run), and checks the result.
fn killed_and_rerun(failpoint: &str) {
    let e = env();
    let run = "killed";
    let lease = [("SNAPRING_SHARD_LEASE", "20s")];
    let o = worker(
        &e,
        &["--shard", "0/3", "--run-id", run],
        &[("SNAPRING_FAILPOINTS", failpoint)],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), None, "{failpoint}: killed: {}", text(&o));
    let others: Vec<Child> = (1..3).map(|i| spawn(&e, i, 3, run, &lease)).collect();
    // Worker 0's unit is claimed by a dead process of this host: the rerun takes it
    // over at once (no lease to wait for) and reuses what the dead one copied.
    let o = worker(&e, &["--shard", "0/3", "--run-id", run], &lease)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{failpoint}: rerun: {}", text(&o));
    for c in others {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{failpoint}: {}", text(&o));
    }
    let commits = check_run(&e, run);
    check_snapshot(&e, failpoint);
    if failpoint.starts_with("walk") {
        assert!(
            commits.iter().any(|c| c["generation"] == 2),
            "{failpoint}: the killed unit is committed by its second generation: {commits:?}"
        );
    }
}

#[test]
fn a_worker_killed_mid_unit_is_resumed_by_its_rerun() {
    killed_and_rerun("walk.copy=kill@20");
}

/// A unit built whole but killed before its commit, of files changed just before the
/// run (within the racy margin, as a tree that filled the disk and is retried at once
/// is): its rerun's new generation reuses the copies whose bytes are the source's.
/// They were refused by the source's ctime and copied again, beside the older copies,
/// by every rerun (after a full disk, each rerun then filled it again).
#[test]
fn a_rerun_reuses_a_killed_units_copies_of_files_changed_just_before_the_run() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in 0..3u8 {
        for f in 0..12u8 {
            write(&src.join(format!("d{d}/f{f:02}")), &vec![d * 12 + f; 5_000]);
        }
    }
    let e = Env {
        dest: t.path().join("store"),
        src,
        _t: t,
    };
    let args = ["--shard", "0/1", "--run-id", "racy"];
    let o = worker(
        &e,
        &args,
        &[("SNAPRING_FAILPOINTS", "shard.before_commit=kill@2")],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), None, "killed: {}", text(&o));
    let o = worker(&e, &args, &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let linked: u64 = out
        .split(" copied, ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of linked files in {out}"));
    assert!(
        linked >= 2,
        "the killed unit's copies are reused (counted as linked): {out}"
    );
    check_snapshot(&e, "after the rerun");
}

/// A shard worker that filled its store says so as a worker: it stopped, nothing was
/// published, the committed units are kept, rerun it (it said "the run was abandoned",
/// which a shard run's docs keep for a run that can never be published); given the
/// room the tree needs, the rerun finishes.
#[test]
fn a_worker_that_fills_the_disk_says_to_rerun_it_and_its_rerun_finishes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    // 36 files of 170,000 bytes (42 pages each on a tmpfs): 6.2 MB.
    for d in 0..3u8 {
        for f in 0..12u8 {
            write(
                &src.join(format!("d{d}/f{f:02}")),
                &vec![d * 12 + f; 170_000],
            );
        }
    }
    let e = Env {
        dest: t.path().join("store/b"),
        src,
        _t: t,
    };
    let Some(fs) = Tmpfs::mount(e.dest.parent().unwrap(), "size=3m") else {
        return;
    };
    let args = ["--shard", "0/1", "--run-id", "full"];
    let o = worker(&e, &args, &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("destination file system is full")
            && err.contains("rerun this worker (same index and run id)")
            && !err.contains("abandoned"),
        "{err}"
    );
    // Room for the tree and the run's own files, not for a second copy of what the
    // first attempt copied (some 2.5 MB).
    fs.remount("size=7m");
    let o = worker(&e, &args, &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    check_snapshot(&e, "after a full disk");
}

#[test]
fn a_worker_killed_between_commit_and_move_leaves_the_move_to_its_rerun_or_finalize() {
    killed_and_rerun("shard.after_commit=kill@2");
    killed_and_rerun("shard.move=kill@1");
    // Before an anchor's work directory is renamed into the run's tree.
    killed_and_rerun("shard.place=kill@1");
    killed_and_rerun("shard.before_commit=kill@1");
}

#[test]
fn two_processes_for_one_index_commit_every_unit_once() {
    let e = env();
    let run = "dup";
    let kids: Vec<Child> = [0, 0, 1, 1, 2]
        .iter()
        .map(|&i| spawn(&e, i, 3, run, &[]))
        .collect();
    for c in kids {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    check_run(&e, run);
    check_snapshot(&e, "duplicate workers");
}

/// Run `run` of three workers in a new environment, its finalizing worker killed at
/// failpoint `point` (asserted): the environment.
fn killed_finalizing(point: &str, run: &str) -> Env {
    let e = env();
    let fp = format!("{point}=kill");
    let kids: Vec<Child> = (0..3)
        .map(|i| spawn(&e, i, 3, run, &[("SNAPRING_FAILPOINTS", &fp)]))
        .collect();
    let outs: Vec<Output> = kids
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    assert!(
        outs.iter().any(|o| o.status.code().is_none()),
        "{point}: a finalizing worker was killed"
    );
    e
}

/// `snapring finalize` of run `run`, which finalizes it `complete` (asserted; `what`
/// names the case in messages): its output.
fn finalized(e: &Env, run: &str, what: &str) -> Output {
    let o = run_cmd(e, "finalize", run, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{what}: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("finalized run {run}: complete")),
        "{what}: {}",
        text(&o)
    );
    o
}

/// Run `run` is checked and published once, as the store's only snapshot, equal to the
/// source.
fn published_once(e: &Env, run: &str, what: &str) {
    check_run(e, run);
    check_snapshot(e, what);
    assert_eq!(snapshot_names(&e.dest), vec!["daily.0"], "{what}");
}

#[test]
fn a_crash_during_finalize_is_finished_by_snapring_finalize_once() {
    for point in [
        "shard.finalize.before_staging",
        "shard.finalize.before_publish",
        "shard.finalize.after_publish",
    ] {
        let run = "fin";
        let e = killed_finalizing(point, run);
        assert!(!run_dir(&e, run).join("finalized").exists(), "{point}");
        if point.ends_with("after_publish") {
            // A rerun worker finds every unit committed and finalizes (the store's
            // previous snapshot is now this run's own: no plan check stands in its way).
            let o = spawn(&e, 1, 3, run, &[]).wait_with_output().unwrap();
            assert_eq!(o.status.code(), Some(0), "{point}: {}", text(&o));
            assert!(
                String::from_utf8_lossy(&o.stdout).contains("finalized: complete"),
                "{point}: {}",
                text(&o)
            );
        } else {
            finalized(&e, run, point);
        }
        published_once(&e, run, point);
        let o = run_cmd(&e, "finalize", run, &[], &[]);
        assert_eq!(o.status.code(), Some(0), "{point}: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("already finalized"));
    }
}

/// `snapring finalize` stopped by SIGTERM once the run's tree is built (held at
/// `shard.finalize.before_staging`): exit 3, "interrupted", nothing published; the
/// next finalize publishes the run, equal to the source. (It went on and published,
/// exit 0, before: the first signal was caught and never looked at.)
#[test]
fn a_sigterm_stops_snapring_finalize_before_its_publish_and_the_next_one_publishes() {
    let e = env();
    let run = "term";
    let kids: Vec<Child> = (0..3)
        .map(|i| {
            spawn(
                &e,
                i,
                3,
                run,
                &[("SNAPRING_FAILPOINTS", "shard.finalize.before_staging=kill")],
            )
        })
        .collect();
    for c in kids {
        c.wait_with_output().unwrap();
    }
    assert!(!run_dir(&e, run).join("finalized").exists());
    let pause = e.dest.with_extension("paused");
    let mut cmd = Command::new(bin());
    cmd.args(["finalize", "--dest"])
        .arg(&e.dest)
        .args(["--run-id", run])
        .env("SNAPRING_CATALOG", "off");
    let child = terminated_at(cmd, "shard.finalize.before_staging", &pause);
    let o = output_within(child, Duration::from_secs(60), "the stopped finalize");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("finalize of run term: interrupted; nothing was published"),
        "{}",
        text(&o)
    );
    assert!(!run_dir(&e, run).join("finalized").exists());
    assert!(snapshot_names(&e.dest).is_empty(), "nothing published");
    let o = run_cmd(&e, "finalize", run, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("finalized run term: complete"),
        "{}",
        text(&o)
    );
    check_run(&e, run);
    check_snapshot(&e, "finalize after a SIGTERM");
    assert_eq!(snapshot_names(&e.dest), vec!["daily.0"]);
}

/// `snapring finalize --json` stopped by SIGTERM prints a report, `incomplete` (as a
/// repository's finalize does), on stdout: before the fix only its message on stderr.
#[test]
fn a_sigterm_stopped_finalize_with_json_prints_an_incomplete_report() {
    let e = env();
    let run = "tj";
    let kids: Vec<Child> = (0..3)
        .map(|i| {
            spawn(
                &e,
                i,
                3,
                run,
                &[("SNAPRING_FAILPOINTS", "shard.finalize.before_staging=kill")],
            )
        })
        .collect();
    for c in kids {
        c.wait_with_output().unwrap();
    }
    let pause = e.dest.with_extension("paused");
    let mut cmd = Command::new(bin());
    cmd.args(["finalize", "--json", "--dest"])
        .arg(&e.dest)
        .args(["--run-id", run])
        .env("SNAPRING_CATALOG", "off");
    let child = terminated_at(cmd, "shard.finalize.before_staging", &pause);
    let o = output_within(child, Duration::from_secs(60), "the stopped finalize");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|err| panic!("no JSON on stdout ({err}): {}", text(&o)));
    assert_eq!(
        (&r["run"], &r["status"], &r["finalized"], &r["exit_code"]),
        (&run.into(), &"incomplete".into(), &false.into(), &3.into()),
        "{r}"
    );
    assert!(r["snapshot"].is_null() && r["report"].is_null(), "{r}");
    assert!(r.get("worker").is_none(), "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("finalize of run tj: interrupted; nothing was published in ")
            && msg.contains(&e.dest.display().to_string()),
        "{r}"
    );
    assert!(snapshot_names(&e.dest).is_empty(), "nothing published");
    let o = run_cmd(&e, "finalize", run, &["--json"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    check_run(&e, run);
}

#[test]
fn finalize_before_every_unit_is_committed_is_a_retry() {
    let e = env();
    let o = worker(
        &e,
        &["--shard", "0/3", "--run-id", "early"],
        &[("SNAPRING_FAILPOINTS", "walk.copy=kill@1")],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), None);
    let o = run_cmd(&e, "finalize", "early", &[], &[]);
    assert_eq!(o.status.code(), Some(75), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not committed yet"),
        "{}",
        text(&o)
    );
    let o = run_cmd(&e, "status", "early", &[], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    // Its holder is dead on this host: stale at once, as it is taken over at once.
    assert!(
        s.contains("0 done")
            && s.contains("0 claimed")
            && s.contains("1 stale")
            && s.contains("not finalized"),
        "{s}"
    );
    // A holder on another host (its claim renewed now) is claimed until its lease
    // lapses, then stale.
    let claims = run_dir(&e, "early").join("claims");
    let claim = std::fs::read_dir(&claims)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut holder: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&claim).unwrap()).unwrap();
    holder["host"] = "another-host".into();
    std::fs::write(&claim, serde_json::to_vec(&holder).unwrap()).unwrap();
    let o = run_cmd(&e, "status", "early", &[], &[]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("1 claimed") && s.contains("0 stale"), "{s}");
    std::thread::sleep(Duration::from_millis(1100));
    let o = run_cmd(
        &e,
        "status",
        "early",
        &[],
        &[("SNAPRING_SHARD_LEASE", "1s")],
    );
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("1 stale") && s.contains("stale lease: unit u"),
        "{s}"
    );
}

/// Worker 0 of 2 of run `run` (lease `lease`) stopped (SIGSTOP) at its third copy,
/// holding its unit: the child, its pid, and the pause file that holds it there once
/// it is continued (remove it to let it go on).
fn worker0_stopped_mid_unit(
    e: &Env,
    run: &str,
    lease: &str,
) -> (Child, rustix::process::Pid, PathBuf) {
    let pause = e.dest.with_file_name("pause");
    let w0 = spawn(
        e,
        0,
        2,
        run,
        &[
            ("SNAPRING_SHARD_LEASE", lease),
            (
                "SNAPRING_FAILPOINTS",
                &format!("walk.copy=pause:{}@3", pause.display()),
            ),
        ],
    );
    wait_for(&pause);
    let pid = rustix::process::Pid::from_child(&w0);
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    (w0, pid, pause)
}

#[test]
fn a_worker_stopped_past_its_lease_loses_its_unit_and_its_late_commit_is_refused() {
    let e = env();
    let run = "stopped";
    let lease = "1s";
    let (mut w0, pid, pause) = worker0_stopped_mid_unit(&e, run, lease);
    // Worker 1 does everything else, takes over worker 0's unit once its lease lapsed,
    // and commits it; it cannot finalize while worker 0 holds the store, and says the
    // run is not published, exit 75 (retry): it said "finalize is left to the worker
    // still holding the store", exit 0, also when that holder would never finalize it.
    let t0 = Instant::now();
    let o = spawn(&e, 1, 2, run, &[("SNAPRING_SHARD_LEASE", lease)])
        .wait_with_output()
        .unwrap();
    assert_eq!(o.status.code(), Some(75), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("this run is not published"),
        "{}",
        text(&o)
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
    assert!(!run_dir(&e, run).join("finalized").exists());
    // Worker 0 wakes up: its commit is refused, it finalizes the run as the last one.
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    std::fs::remove_file(&pause).unwrap();
    let out = w0.wait().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(w0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert_eq!(out.code(), Some(0), "{stdout}");
    assert!(stdout.contains("1 lost to a takeover"), "{stdout}");
    assert!(stdout.contains("finalized: complete"), "{stdout}");
    // What failed in its walk once it went on (the work directory the takeover's
    // commit removed) is no error of the run: no `ERROR` line for alerts to fire on.
    let mut stderr = String::new();
    std::io::Read::read_to_string(w0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!stderr.contains("ERROR"), "{stderr}");
    assert!(stderr.contains("was taken over"), "{stderr}");
    let commits = check_run(&e, run);
    let taken: Vec<&serde_json::Value> = commits.iter().filter(|c| c["generation"] == 2).collect();
    assert_eq!(taken.len(), 1, "{commits:?}");
    assert_eq!(taken[0]["worker"], 1);
    check_snapshot(&e, "after a takeover");
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(e.dest.join(format!(".snapring/runs/{run}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["shards"]["takeovers"], 1);
}

/// A worker of several lanes (`--jobs 4`) stopped (SIGSTOP) past its lease while two or
/// more of its lanes each hold a unit: another worker of several lanes takes each of
/// them over once, the stopped one's late commits are refused, and the snapshot equals
/// the source with every unit committed once (the lanes of a worker share one listing
/// of `done/` and one search of the claims: session 48).
#[test]
fn a_stopped_worker_with_several_lanes_has_each_lanes_unit_taken_over_once() {
    let e = env();
    let run = "lanes";
    let lease = "1s";
    let mut w0 = worker_with_jobs(
        &e,
        "4",
        &["--shard", "0/2", "--run-id", run],
        &[
            ("SNAPRING_SHARD_LEASE", lease),
            ("SNAPRING_FAILPOINTS", "walk.copy=sleep:100"),
        ],
    )
    .spawn()
    .unwrap();
    let pid = rustix::process::Pid::from_child(&w0);
    let rd = run_dir(&e, run);
    // The units worker 0 holds: its claims of units not committed.
    let held = || -> Vec<String> {
        let Ok(d) = std::fs::read_dir(rd.join("claims")) else {
            return Vec::new();
        };
        let mut v: Vec<String> = d
            .flatten()
            .filter_map(|c| {
                let n = c.file_name().to_string_lossy().into_owned();
                let (unit, _) = n.split_once(".g")?;
                let h: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(c.path()).ok()?).ok()?;
                (h["pid"] == pid.as_raw_nonzero().get() && !rd.join("done").join(unit).exists())
                    .then(|| unit.to_string())
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let t0 = Instant::now();
    let stopped = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "worker 0 never held two units"
        );
        if held().len() >= 2 {
            rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
            let h = held();
            if h.len() >= 2 {
                break h;
            }
            rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let o = worker_with_jobs(
        &e,
        "4",
        &["--shard", "1/2", "--run-id", run],
        &[("SNAPRING_SHARD_LEASE", lease)],
    )
    .spawn()
    .unwrap()
    .wait_with_output()
    .unwrap();
    // It cannot finalize while worker 0 holds the store: a retry, as in the test above.
    assert_eq!(o.status.code(), Some(75), "{}", text(&o));
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    let out = w0.wait().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(w0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert_eq!(out.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("{} lost to a takeover", stopped.len())),
        "{stopped:?}: {stdout}"
    );
    assert!(stdout.contains("finalized: complete"), "{stdout}");
    check_run(&e, run);
    for u in &stopped {
        let c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(rd.join("done").join(u)).unwrap()).unwrap();
        assert_eq!(c["generation"], 2, "{u}: {c}");
        assert_eq!(c["worker"], 1, "{u}: {c}");
    }
    check_snapshot(&e, "after the takeover of several lanes' units");
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(e.dest.join(format!(".snapring/runs/{run}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["shards"]["takeovers"], stopped.len(), "{rec}");
}

/// A worker whose clock is ten minutes behind takes over a stalled worker's unit once
/// its lease has lapsed by the store's clock: it judged the lease by its own clock
/// against the claim's mtime (the store's), so it waited ten minutes more (a hostile
/// user, session 44: still waiting after 212 s with a 5 s lease).
#[test]
fn a_worker_whose_clock_is_behind_takes_a_stalled_workers_unit_over_after_the_lease() {
    let lib = PathBuf::from("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1");
    if !lib.exists() {
        eprintln!(
            "SKIPPED: {} is not installed (apt-get install faketime)",
            lib.display()
        );
        return;
    }
    let e = env();
    let run = "skew";
    let lease = "1s";
    let (mut w0, pid, pause) = worker0_stopped_mid_unit(&e, run, lease);
    let mut w1 = worker(
        &e,
        &["--shard", "1/2", "--run-id", run],
        &[("SNAPRING_SHARD_LEASE", lease)],
    );
    w1.env("LD_PRELOAD", &lib)
        .env("FAKETIME", "-600")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let mut w1 = w1.spawn().unwrap();
    let t0 = Instant::now();
    let taken = loop {
        if let Some(st) = w1.try_wait().unwrap() {
            break Some(st);
        }
        if t0.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = w1.kill();
    let o = w1.wait_with_output().unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    std::fs::remove_file(&pause).unwrap();
    let _ = w0.wait();
    // Worker 1 committed worker 0's unit, and could not finalize while the stopped
    // worker held the store (exit 75, as in the test above).
    assert_eq!(
        taken.and_then(|s| s.code()),
        Some(75),
        "worker 1 ended within 60 s: {}",
        text(&o)
    );
    let commits = check_run(&e, run);
    assert!(
        commits
            .iter()
            .any(|c| c["generation"] == 2 && c["worker"] == 1),
        "{commits:?}"
    );
    check_snapshot(&e, "after a takeover by a worker whose clock is behind");
}

/// The lease thread reads the unit a lane builds; before it sees that unit taken over,
/// the lane finishes it (its commit refused, its copy discarded) and claims the next.
/// The late takeover must stop the unit it was about, not the lane's next one: that
/// would be discarded too, its claim naming a live process nobody renews, and wait a
/// whole lease before anyone took it over.
#[test]
fn a_late_beat_for_a_unit_taken_over_leaves_the_lanes_next_unit_alone() {
    let e = env();
    let run = "late-beat";
    let fp = |n: &str| e.dest.with_file_name(n);
    let (lane1, lane2, beat1, beat2) = (fp("lane1"), fp("lane2"), fp("beat1"), fp("beat2"));
    let points = format!(
        "shard.unit_started=pause:{}@1;shard.unit_started=pause:{}@2;shard.beat=pause:{}@1;shard.beat=pause:{}@2",
        lane1.display(),
        lane2.display(),
        beat1.display(),
        beat2.display()
    );
    // `--jobs 2`: one lane.
    let w = worker(
        &e,
        &["--json", "--shard", "0/1", "--run-id", run],
        &[
            ("SNAPRING_SHARD_LEASE", "3s"),
            ("SNAPRING_FAILPOINTS", &points),
        ],
    )
    .spawn()
    .unwrap();
    // The lane has taken its first unit, and the lease thread has read it.
    wait_for(&lane1);
    wait_for(&beat1);
    let claims = run_dir(&e, run).join("claims");
    let names = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&claims)
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    let first = match names().as_slice() {
        [one] => one.strip_suffix(".g1").unwrap().to_string(),
        other => panic!("one claim expected: {other:?}"),
    };
    // Another process takes it over, and dies (this worker takes it back at once when
    // every other unit is done, as a dead process's claim of its own index).
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let holder = serde_json::json!({
        "worker": 0, "host": host.trim(), "pid": pid, "at": "2026-01-01T00:00:00Z",
    });
    std::fs::write(
        claims.join(format!("{first}.g2")),
        serde_json::to_vec(&holder).unwrap(),
    )
    .unwrap();
    // The lane builds the first unit, loses it at its commit, and takes the next.
    std::fs::remove_file(&lane1).unwrap();
    wait_for(&lane2);
    let second = names()
        .into_iter()
        .filter_map(|n| n.strip_suffix(".g1").map(str::to_string))
        .find(|u| *u != first)
        .unwrap();
    // Only now does the lease thread look for the first unit's next generation; its
    // next round shows it has finished that one.
    std::fs::remove_file(&beat1).unwrap();
    wait_for(&beat2);
    std::fs::remove_file(&lane2).unwrap();
    std::fs::remove_file(&beat2).unwrap();
    let o = w.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        rep["lost"],
        serde_json::json!([first]),
        "only the unit taken over is lost: {}",
        text(&o)
    );
    let units = plan_units(&e, run);
    let commits = check_run(&e, run);
    let generation =
        |u: &str| commits[units.iter().position(|x| x == u).unwrap()]["generation"].clone();
    assert_eq!(generation(&second), 1, "{commits:?}");
    assert_eq!(generation(&first), 3, "{commits:?}");
    check_snapshot(&e, "after a late takeover check");
}

/// On NFS a `LINK` whose reply was lost is sent again, and can be answered "exists"
/// although the first one made the name. Every exclusive create by a link of a run (its
/// plan, each unit's commit, `finalized`; the claims are one `O_EXCL` create, which NFS
/// makes safe to resend by the client's verifier) is hit that way in turn
/// (`create_exclusive.link_resent=error@K`): each run still completes, every unit
/// committed once, the snapshot equal to the source. The commit so hit was taken as
/// refused: its work discarded while `done/` named it, and finalize could never read
/// its counts.
#[test]
fn an_exclusive_create_answered_exists_for_its_own_resent_link_is_its_own() {
    for k in 1..=8 {
        let e = env();
        let run = format!("resent{k}");
        let fp = format!("create_exclusive.link_resent=error@{k}");
        let mut child = spawn(
            &e,
            0,
            1,
            &run,
            &[("SNAPRING_FAILPOINTS", &fp), ("SNAPRING_SHARD_LEASE", "2s")],
        );
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("{fp}: the worker did not finish in 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{fp}: {}", text(&o));
        check_run(&e, &run);
        check_snapshot(&e, &fp);
    }
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn only_one_worker_sizes_the_source_and_the_others_wait_for_its_plan() {
    let e = env();
    let run = "one-plan";
    // Worker 0 alone first, held inside its sizing (its first directory's listing)
    // until the other three are seen waiting for its plan: however slowly they start,
    // none of them could size the source meanwhile without it showing.
    let pause = e.dest.with_file_name("pause");
    let log = |i: usize, ext: &str| e.dest.with_file_name(format!("worker{i}.{ext}"));
    let start = |i: usize, vars: &[(&str, &str)]| -> Child {
        let shard = format!("{i}/4");
        let file = |ext| std::fs::File::create(log(i, ext)).unwrap();
        worker(&e, &["-v", "--shard", &shard, "--run-id", run], vars)
            .stdout(file("out"))
            .stderr(file("err"))
            .spawn()
            .unwrap()
    };
    let stderr = |i: usize| std::fs::read_to_string(log(i, "err")).unwrap_or_default();
    // Whatever fails, no worker is left behind, held or running.
    struct Kids<'p>(Vec<Child>, &'p Path);
    impl Drop for Kids<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.1);
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let fp = format!("shard.size=pause:{}@1", pause.display());
    let mut kids = Kids(vec![start(0, &[("SNAPRING_FAILPOINTS", &fp)])], &pause);
    wait_for(&pause);
    kids.0.extend((1..4).map(|i| start(i, &[])));
    let t0 = Instant::now();
    let waits = "waiting for another worker's shard plan";
    while !(1..4).all(|i| stderr(i).contains(waits)) {
        for (i, c) in kids.0.iter_mut().enumerate() {
            assert!(
                c.try_wait().unwrap().is_none(),
                "worker {i} ended while worker 0 was held in its sizing: {}",
                stderr(i)
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "workers 1..3 not all waiting for the plan: {}",
            (1..4).map(stderr).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_file(&pause).unwrap();
    for (i, c) in kids.0.iter_mut().enumerate() {
        let status = c.wait().unwrap();
        assert_eq!(status.code(), Some(0), "worker {i}: {}", stderr(i));
    }
    let all = (0..4).map(stderr).collect::<Vec<_>>().join("\n");
    let sized: Vec<usize> = (0..4)
        .filter(|&i| stderr(i).contains("sized by walk"))
        .collect();
    assert_eq!(sized, [0], "only worker 0 sizes the source: {all}");
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir(&e, run).join("plan.json")).unwrap())
            .unwrap();
    assert!(
        plan["created_by"].as_str().unwrap().ends_with("worker 0"),
        "{plan}"
    );
    for i in 1..4 {
        let log = stderr(i);
        assert!(log.contains(waits), "worker {i}: {log}");
        assert!(
            log.contains("shard plan of") && log.contains("worker 0 read after waiting"),
            "worker {i} works to worker 0's plan: {log}"
        );
    }
    check_run(&e, run);
    check_snapshot(&e, "one planner");
}

#[test]
fn a_planner_that_dies_or_stalls_is_taken_over() {
    // Killed while sizing: its claim names a dead process of this host, so the next
    // worker takes the planning over at once (the lease is long).
    let e = env();
    let run = "dead-planner";
    let long = ("SNAPRING_SHARD_LEASE", "10m");
    let o = worker(
        &e,
        &["--shard", "0/2", "--run-id", run],
        &[long, ("SNAPRING_FAILPOINTS", "shard.size=kill@2")],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), None, "killed: {}", text(&o));
    assert!(run_dir(&e, run).join("planning.g1").is_file());
    assert!(!run_dir(&e, run).join("plan.json").exists());
    let t0 = Instant::now();
    let kids: Vec<Child> = (0..2).map(|i| spawn(&e, i, 2, run, &[long])).collect();
    for c in kids {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    assert!(t0.elapsed() < Duration::from_secs(60));
    assert!(run_dir(&e, run).join("planning.g2").is_file());
    check_run(&e, run);
    check_snapshot(&e, "after a dead planner");

    // Stopped past its lease while sizing: another worker plans instead; when the
    // stopped one wakes up its plan is not the one written, and it works to the one
    // that was.
    let e = env();
    let run = "stalled-planner";
    let lease = ("SNAPRING_SHARD_LEASE", "1s");
    let pause = e.dest.with_file_name("pause");
    let fp = format!("shard.size=pause:{}@2", pause.display());
    let mut w0 = spawn(&e, 0, 2, run, &[lease, ("SNAPRING_FAILPOINTS", &fp)]);
    wait_for(&pause);
    let pid = rustix::process::Pid::from_child(&w0);
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    // Worker 1 does every unit; the stopped planner holds the store, so worker 1
    // cannot publish and says so (75, a retry), and the planner, woken, publishes.
    let o = spawn(&e, 1, 2, run, &[lease]).wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(75), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("this run is not published"),
        "{}",
        text(&o)
    );
    assert!(run_dir(&e, run).join("planning.g2").is_file());
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir(&e, run).join("plan.json")).unwrap())
            .unwrap();
    assert!(
        plan["created_by"].as_str().unwrap().ends_with("worker 1"),
        "{plan}"
    );
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    std::fs::remove_file(&pause).unwrap();
    let out = w0.wait().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(w0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert_eq!(out.code(), Some(0), "{stdout}");
    check_run(&e, run);
    check_snapshot(&e, "after a stalled planner");
}

/// `c`'s output once it exits; killed (and the test failed) if it runs past `limit`:
/// a worker waiting for ever is the failure looked for.
fn output_within(c: Child, limit: Duration, what: &str) -> Output {
    let pid = rustix::process::Pid::from_child(&c);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(c.wait_with_output().unwrap()));
    match rx.recv_timeout(limit) {
        Ok(o) => o,
        Err(_) => {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let o = rx.recv().unwrap();
            panic!("{what}: still running after {limit:?}: {}", text(&o));
        }
    }
}

/// A claim file whose content cannot be read (emptied, as a crash of the store's file
/// server can leave it: a claim is linked to its name complete, so it is never seen
/// half written) is damaged, not being written: its lease runs from its mtime as any
/// claim's. Within it `status` counts it claimed, past it stale, and a worker takes it
/// over (generation 2) and the run completes. It held its unit for ever: the other
/// worker and the dead one's rerun waited without end, `status` said pending.
#[test]
fn an_unreadable_claim_is_taken_over_once_its_mtime_is_past_the_lease() {
    let e = env();
    let run = "damaged";
    let lease = ("SNAPRING_SHARD_LEASE", "2s");
    let o = worker(
        &e,
        &["--shard", "0/2", "--run-id", run],
        &[("SNAPRING_FAILPOINTS", "shard.before_commit=kill")],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), None, "killed: {}", text(&o));
    let claims = claim_generations(&e, run);
    assert!(!claims.is_empty(), "the killed worker claimed nothing");
    for (u, g) in &claims {
        let p = run_dir(&e, run).join(format!("claims/{u}.g{g}"));
        std::fs::File::create(&p).unwrap();
    }
    let n = claims.len();
    let o = run_cmd(&e, "status", run, &[], &[lease]);
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains(&format!("{n} claimed")), "within its lease: {s}");
    std::thread::sleep(Duration::from_millis(2100));
    let o = run_cmd(&e, "status", run, &[], &[lease]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains(&format!("{n} stale")), "past its lease: {s}");
    let o = output_within(
        spawn(&e, 1, 2, run, &[lease]),
        Duration::from_secs(60),
        "worker 1",
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    check_run(&e, run);
    for (u, _) in &claims {
        let c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run_dir(&e, run).join("done").join(u)).unwrap())
                .unwrap();
        assert_eq!(c["generation"], 2, "unit {u} taken over: {c}");
    }
    check_snapshot(&e, "after damaged claims");
}

/// The same for the claim to make the plan: an empty `planning.g1` an hour old is
/// taken over (generation 2) by the first worker, whatever the lease; it held every
/// worker from planning for ever. A fresh one is waited for while its lease lasts.
#[test]
fn an_unreadable_planning_claim_is_taken_over_once_its_mtime_is_past_the_lease() {
    let e = env();
    let run = "damaged-plan";
    let dir = run_dir(&e, run);
    std::fs::create_dir_all(&dir).unwrap();
    let claim = dir.join("planning.g1");
    std::fs::File::create(&claim).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    set_mtime(&claim, now - 3600, 0);
    let o = output_within(
        spawn(&e, 0, 2, run, &[]),
        Duration::from_secs(50),
        "worker 0 (default lease, 60 s)",
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(dir.join("planning.g2").is_file());
    check_run(&e, run);
    // A fresh one: worker 1 waits for its 2 s lease, then plans, alone in the run.
    let e = env();
    let dir = run_dir(&e, run);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::File::create(dir.join("planning.g1")).unwrap();
    let kids: Vec<Child> = (0..2)
        .map(|i| spawn(&e, i, 2, run, &[("SNAPRING_SHARD_LEASE", "2s")]))
        .collect();
    for c in kids {
        let o = output_within(c, Duration::from_secs(60), "a worker (2 s lease)");
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    // Taken over no sooner than the lease after the damaged claim's mtime (both file
    // times from the kernel's coarse clock, up to a tick behind the clock the taker
    // read: 10 ms of slack).
    let mtime = |p: PathBuf| std::fs::metadata(p).unwrap().modified().unwrap();
    let waited = mtime(dir.join("planning.g2"))
        .duration_since(mtime(dir.join("planning.g1")))
        .unwrap();
    assert!(
        waited >= Duration::from_millis(1990),
        "taken over {waited:?} after the claim was made, within its 2 s lease"
    );
    check_run(&e, run);
    check_snapshot(&e, "after a damaged planning claim");
}

/// A count or a run id from the environment with no index (a Job without
/// `completionMode: Indexed`, an `sbatch` without `--array`) is a usage error, as the
/// flags are: it ran a whole single-node backup in every process, each publishing a
/// snapshot and expiring history.
#[test]
fn a_count_or_run_id_from_the_environment_without_an_index_is_a_usage_error() {
    let e = env();
    for vars in [
        vec![("SNAPRING_SHARDS", "3"), ("SNAPRING_RUN_ID", "job-123")],
        vec![("SNAPRING_SHARDS", "3")],
    ] {
        let o = worker(&e, &[], &vars).output().unwrap();
        assert_eq!(o.status.code(), Some(64), "{vars:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(vars[0].0) && err.contains("index"),
            "{vars:?}: {}",
            text(&o)
        );
    }
    for args in [
        vec!["--shards", "3", "--run-id", "job-123"],
        vec!["--run-id", "r"],
    ] {
        let o = worker(&e, &args, &[]).output().unwrap();
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", text(&o));
    }
    assert!(!e.dest.exists(), "nothing written");
    // Blank, they are not set: a single-node backup.
    let o = worker(
        &e,
        &[],
        &[("SNAPRING_SHARDS", ""), ("SNAPRING_RUN_ID", " ")],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(snapshot_names(&e.dest), vec!["daily.0"]);
    // SNAPRING_RUN_ID alone is what a hook's environment has: a backup of its own.
    let o = worker(&e, &[], &[("SNAPRING_RUN_ID", "20261204T010203Z-abcdef")])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(snapshot_names(&e.dest), vec!["daily.0", "daily.1"]);
}

#[test]
fn a_worker_with_four_jobs_builds_two_units_at_once() {
    let e = env();
    let run = "lanes";
    let pause = e.dest.with_file_name("pause");
    let fp = format!("walk.copy=pause:{}@1", pause.display());
    let mut c = Command::new(bin());
    c.args(["backup", "--jobs", "4", "--source"])
        .arg(&e.src)
        .arg("--dest")
        .arg(&e.dest)
        .args(["--shard", "0/1", "--run-id", run])
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_FAILPOINTS", &fp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut w = c.spawn().unwrap();
    wait_for(&pause);
    let done = || {
        std::fs::read_dir(run_dir(&e, run).join("done"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    // One unit's walk is held in its first copy; the other lane goes on committing.
    let at_pause = done();
    let t0 = Instant::now();
    while done() < at_pause + 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no unit was committed while one unit's walk was held"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_file(&pause).unwrap();
    let o = w.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(w.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(o.code(), Some(0), "{err}");
    check_run(&e, run);
    check_snapshot(&e, "two lanes");
}

/// Runs workers `0..n` of run `run` with `extra` flags, worker `i` with `vars(i)`, and
/// waits for them.
fn run_workers(
    e: &Env,
    n: usize,
    run: &str,
    extra: &[&str],
    vars: impl Fn(usize) -> Vec<(&'static str, &'static str)>,
) -> Vec<Output> {
    let kids: Vec<Child> = (0..n)
        .map(|i| {
            let shard = format!("{i}/{n}");
            let mut a = vec!["-v", "--shard", &shard, "--run-id", run];
            a.extend(extra);
            worker(e, &a, &vars(i)).spawn().unwrap()
        })
        .collect();
    kids.into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn all_ok(outs: &[Output], what: &str) {
    for o in outs {
        assert_eq!(o.status.code(), Some(0), "{what}: {}", text(o));
    }
}

fn run_record(e: &Env, run: &str) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(e.dest.join(format!(".snapring/runs/{run}.json"))).unwrap(),
    )
    .unwrap()
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).map_or(true, |mut d| d.next().is_none())
}

/// Each worker's expired pieces and entries from the run record, and the finalizer's.
fn expiry_counts(rec: &serde_json::Value) -> (Vec<(u64, u64)>, u64) {
    let per: Vec<(u64, u64)> = rec["shards"]["per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["expired_pieces"].as_u64().unwrap(),
                w["expired_entries"].as_u64().unwrap(),
            )
        })
        .collect();
    (per, rec["shards"]["expired_by_finalize"].as_u64().unwrap())
}

#[test]
fn workers_still_alive_share_the_deletion_of_the_expired_snapshot() {
    let e = env();
    let retain = ["--retain", "2"];
    all_ok(&run_workers(&e, 4, "r1", &retain, |_| vec![]), "r1");
    write(&e.src.join("flat/n020 with space"), b"second");
    all_ok(&run_workers(&e, 4, "r2", &retain, |_| vec![]), "r2");
    // The third run expires the first one's snapshot (daily.1). Each piece takes 300 ms more to delete, so that the workers waiting
    // for the end of the run join in.
    let expired_entries = describe(&e.dest.join("daily.1")).len() as u64;
    let kept = common::state::full_state(&e.dest.join("daily.0"));
    write(&e.src.join("deep/d3/third"), b"third");
    let slow = |_| vec![("SNAPRING_FAILPOINTS", "shard.expire_piece=sleep:300")];
    let outs = run_workers(&e, 4, "r3", &retain, slow);
    all_ok(&outs, "r3");
    check_run(&e, "r3");
    check_snapshot(&e, "r3");
    assert_eq!(snapshot_names(&e.dest), vec!["daily.0", "daily.1"]);
    // The previous snapshot (r2's) is untouched by the deletion and verifies.
    let mut after = common::state::full_state(&e.dest.join("daily.1"));
    let mut before = kept;
    before.remove(&Vec::new());
    after.remove(&Vec::new());
    for f in before.values_mut().chain(after.values_mut()) {
        f.ctime_ns = 0;
        f.nlink = 0;
    }
    common::state::assert_unchanged(&before, &after, "the previous snapshot");
    let out = snapring(
        &[
            "verify".as_ref(),
            "--dest".as_ref(),
            e.dest.as_os_str(),
            "daily.1".as_ref(),
        ],
        &[],
    );
    assert!(out.status.success(), "verify daily.1: {}", text(&out));
    // Nothing of the expired snapshot is left, and more than one worker deleted part
    // of it: the run record says how much each did.
    assert!(is_empty_dir(&e.dest.join(".snapring/trash")));
    assert!(is_empty_dir(&e.dest.join(".snapring/expiring")));
    let rec = run_record(&e, "r3");
    assert_eq!(rec["expired"], serde_json::json!(["daily.1"]), "{rec}");
    let (per, by_finalize) = expiry_counts(&rec);
    let helpers = per.iter().filter(|(p, _)| *p > 0).count();
    let logs = outs.iter().map(text).collect::<Vec<_>>().join("\n");
    assert!(helpers >= 2, "{per:?} {rec}\n{logs}");
    let total: u64 = per.iter().map(|(_, n)| n).sum::<u64>() + by_finalize;
    assert_eq!(total, expired_entries, "{per:?} {by_finalize}");
    let helped = outs
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stdout).contains("pieces of the expired snapshots"))
        .count();
    assert!(helped >= 1, "{logs}");
    // `status` shows it too.
    let st = run_cmd(&e, "status", "r3", &["--json"], &[]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["expiry"], "finished", "{st}");
    // A third run: the plan is weighed by the previous snapshot's manifest.
    assert_eq!(st["sized_by"], "manifest", "{st}");
    let pieces: u64 = st["per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["expired_pieces"].as_u64().unwrap())
        .sum();
    assert_eq!(pieces, per.iter().map(|(p, _)| p).sum::<u64>(), "{st}");
    assert_eq!(st["expiry_done"], st["expiry_claimed"], "{st}");
    let human = run_cmd(&e, "status", "r3", &[], &[]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("expiry of old snapshots finished"),
        "{}",
        text(&human)
    );
}

#[test]
fn workers_killed_while_deleting_expired_pieces_leave_what_the_next_run_removes() {
    let e = env();
    let retain = ["--retain", "1"];
    all_ok(&run_workers(&e, 3, "k1", &retain, |_| vec![]), "k1");
    write(&e.src.join("flat/n030 with space"), b"k2");
    // Every process that claims a piece is killed once it has moved the piece out of
    // trash: the finalizer is one of them.
    let kill = |_| vec![("SNAPRING_FAILPOINTS", "shard.expire_piece=kill")];
    let outs = run_workers(&e, 3, "k2", &retain, kill);
    assert!(
        outs.iter().any(|o| o.status.code().is_none()),
        "{}",
        outs.iter().map(text).collect::<Vec<_>>().join("\n")
    );
    // The run is published and finalized all the same; the expired snapshot is partly
    // in trash, partly in killed workers' claims.
    check_run(&e, "k2");
    check_snapshot(&e, "k2");
    assert_eq!(snapshot_names(&e.dest), vec!["daily.0"]);
    assert!(!is_empty_dir(&e.dest.join(".snapring/expiring")));
    let st = run_cmd(&e, "status", "k2", &["--json"], &[]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["expiry"], "open", "{st}");
    // The next run (a single-node one) deletes what they left.
    write(&e.src.join("flat/n031 with space"), b"k3");
    let (code, rep, err) = backup(&e.src, &e.dest, &["--jobs", "2", "--retain", "1"], &[]);
    assert_eq!(code, 0, "{err} {rep}");
    assert!(is_empty_dir(&e.dest.join(".snapring/trash")));
    assert!(is_empty_dir(&e.dest.join(".snapring/expiring")));
    check_snapshot(&e, "after the next run");
    assert_eq!(snapshot_names(&e.dest), vec!["daily.0"]);
}

#[test]
fn snapring_finalize_takes_over_the_pieces_of_workers_killed_while_deleting() {
    let e = env();
    let retain = ["--retain", "1"];
    all_ok(&run_workers(&e, 3, "t1", &retain, |_| vec![]), "t1");
    let expired_entries = describe(&e.dest.join("daily.0")).len() as u64;
    write(&e.src.join("flat/n040 with space"), b"t2");
    let kill = |_| vec![("SNAPRING_FAILPOINTS", "shard.expire_piece=kill")];
    let outs = run_workers(&e, 3, "t2", &retain, kill);
    assert!(outs.iter().any(|o| o.status.code().is_none()));
    check_run(&e, "t2");
    assert!(!is_empty_dir(&e.dest.join(".snapring/expiring")));
    // `snapring finalize` of the finalized run completes the deletion: the claimers
    // are dead (this host), so their pieces are taken over at once.
    let o = run_cmd(&e, "finalize", "t2", &["-v", "--jobs", "2"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("already finalized"));
    assert!(stderr_of(&o).contains("taken over"), "{}", text(&o));
    assert!(is_empty_dir(&e.dest.join(".snapring/trash")));
    assert!(is_empty_dir(&e.dest.join(".snapring/expiring")));
    let rec = run_record(&e, "t2");
    assert_eq!(rec["status"], "complete");
    let (per, by_finalize) = expiry_counts(&rec);
    let total: u64 = per.iter().map(|(_, n)| n).sum::<u64>() + by_finalize;
    assert_eq!(total, expired_entries, "{per:?} {by_finalize} {rec}");
    let st = run_cmd(&e, "status", "t2", &["--json"], &[]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["expiry"], "finished", "{st}");
    check_snapshot(&e, "t2");
    // Once finished, finalize has nothing more to do.
    let o = run_cmd(&e, "finalize", "t2", &["-v"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        !stderr_of(&o).contains("completing the deletion"),
        "{}",
        text(&o)
    );
}

#[test]
fn the_finalizer_alone_expires_everything_when_the_workers_are_gone() {
    let e = env();
    let retain = ["--retain", "1"];
    all_ok(&run_workers(&e, 3, "f1", &retain, |_| vec![]), "f1");
    let expired_entries = describe(&e.dest.join("daily.0")).len() as u64;
    write(&e.src.join("flat/n050 with space"), b"f2");
    // Every worker that tries to finalize dies before publishing; the others have
    // left. `snapring finalize` then does it all.
    killed_at(&e, "f2", &retain, "shard.finalize.before_publish=kill");
    assert!(!run_dir(&e, "f2").join("finalized").exists());
    let o = run_cmd(&e, "finalize", "f2", &["-v", "--jobs", "2"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    check_run(&e, "f2");
    check_snapshot(&e, "finalized by hand");
    assert_eq!(snapshot_names(&e.dest), vec!["daily.0"]);
    assert!(is_empty_dir(&e.dest.join(".snapring/trash")));
    assert!(is_empty_dir(&e.dest.join(".snapring/expiring")));
    let rec = run_record(&e, "f2");
    let (per, by_finalize) = expiry_counts(&rec);
    assert!(per.iter().all(|(p, _)| *p == 0), "{rec}");
    assert_eq!(by_finalize, expired_entries, "{rec}");
    assert!(rec["phases"]["remove_expired"]["seconds"].as_f64().unwrap() > 0.0);
    let st = run_cmd(&e, "status", "f2", &["--json"], &[]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["expiry"], "finished", "{st}");
}

/// Review: a finalize killed after it moved the run's tree to `staging/<run-id>` and
/// before the publish; every worker has left, so the store is free and a single-node
/// backup of another label (`weekly`) runs; then `snapring finalize`. The single-node
/// run must not take the shard run's staged tree for a leftover of its own and discard
/// it (with the run's manifest): finalize would then rebuild `tree/` from the emptied
/// work directories and publish the spine directories alone as `daily.0`, `complete`,
/// under a manifest that lists every file.
#[test]
fn a_single_node_backup_after_a_finalize_killed_before_its_publish_leaves_the_run_whole() {
    let e = env();
    killed_at(&e, "k1", &[], "shard.finalize.before_publish=kill");
    assert!(!run_dir(&e, "k1").join("finalized").exists());
    assert!(e.dest.join(".snapring/staging/k1").is_dir());
    let (code, rep, err) = backup(&e.src, &e.dest, &["--jobs", "2", "--label", "weekly"], &[]);
    assert_eq!(code, 0, "{err} {rep}");
    let o = run_cmd(&e, "finalize", "k1", &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(snapshot_names(&e.dest), vec!["daily.0", "weekly.0"]);
    // Every snapshot of the store equals the source (unchanged throughout) and its
    // manifest.
    let want = describe(&e.src);
    for name in snapshot_names(&e.dest) {
        let what = format!("{name} after finalize: {}", text(&o));
        assert_same_tree(&want, &describe(&e.dest.join(&name)), &what);
        let v = snapring(
            &[
                "verify".as_ref(),
                "--dest".as_ref(),
                e.dest.as_os_str(),
                name.as_ref(),
            ],
            &[],
        );
        assert!(v.status.success(), "{what}: verify: {}", text(&v));
    }
}

/// The source changes (a file rewritten, one added) and a single-node backup with
/// `--retain 1` publishes it: the store's only snapshot is then that one.
fn another_backup_publishes_a_changed_source(e: &Env) {
    write(&e.src.join("flat/n050 with space"), b"newer");
    write(&e.src.join("after-the-shard-run"), b"newer");
    let (code, rep, err) = backup(&e.src, &e.dest, &["--jobs", "2", "--retain", "1"], &[]);
    assert_eq!(code, 0, "{err} {rep}");
}

/// Review: every unit committed, the finalizer killed before its publish and the workers
/// gone; the source changes and a single-node backup (retain 1) publishes it; then
/// `snapring finalize` of the older run. Publishing it would make the older tree
/// `daily.0` and expire the newer single-node snapshot: the newest history lost. The
/// store changed under the run: finalize refuses it (exit 1) and publishes nothing.
#[test]
fn finalize_after_another_backup_published_refuses_instead_of_expiring_the_newer_snapshot() {
    // Killed before its publish, or in it just before its journal is written (the
    // last instant nothing is published yet): the run's record names no snapshot.
    for fp in [
        "shard.finalize.before_publish=kill",
        "journal.before_write=kill",
    ] {
        let e = env();
        let retain = ["--retain", "1"];
        killed_at(&e, "old", &retain, fp);
        assert!(!e.dest.join(".snapring/journal").exists(), "{fp}");
        another_backup_publishes_a_changed_source(&e);
        let o = run_cmd(&e, "finalize", "old", &[], &[]);
        assert_eq!(snapshot_names(&e.dest), vec!["daily.0"]);
        check_snapshot(
            &e,
            &format!("the newer snapshot stays daily.0: {}", text(&o)),
        );
        assert_eq!(o.status.code(), Some(1), "{fp}: {}", text(&o));
        assert!(stderr_of(&o).contains("start a new run id"), "{}", text(&o));
        assert!(!run_dir(&e, "old").join("finalized").exists());
        let rec = run_record(&e, "old");
        assert_eq!(rec["snapshot"], serde_json::Value::Null, "{fp}: {rec}");
    }
}

/// A worker started with a wrong `--source` (a subdirectory of the real one) writes
/// the plan; a right worker is refused (exit 64) and leaves its mark; the wrong worker
/// then builds every unit, but neither its finalize nor `snapring finalize` publishes
/// the run (exit 64, naming the refused worker and the setting; before 2026-12-05 it
/// published a snapshot of the subdirectory, exit 0), `status` shows the mark, and a
/// new run id with the right settings publishes. The label's first run: once it has a
/// snapshot, a worker of another source is refused before it plans (`continue_ring`).
#[test]
fn a_run_whose_worker_was_refused_for_other_settings_is_not_published() {
    let (e, wrong, args, _) = wrong_planner("wrong", "shard.unit_started=kill");
    let mark = run_dir(&e, "wrong").join("refused/w1");
    let said = String::from_utf8_lossy(&std::fs::read(&mark).unwrap()).into_owned();
    assert!(said.contains("deep") && said.contains("source"), "{said}");
    let refused = |o: &Output| {
        assert_eq!(o.status.code(), Some(64), "{}", text(o));
        let err = stderr_of(o);
        assert!(
            err.contains("not published") && err.contains("worker 1") && err.contains("source"),
            "{}",
            text(o)
        );
    };
    refused(&worker(&wrong, &args("0/2"), &[]).output().unwrap());
    refused(&run_cmd(&e, "finalize", "wrong", &[], &[]));
    assert!(snapshot_names(&e.dest).is_empty());
    assert!(!run_dir(&e, "wrong").join("finalized").exists());
    let o = run_cmd(&e, "status", "wrong", &["--json"], &[]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["refused"][0]["worker"], 1, "{st}");
    let o = run_cmd(&e, "status", "wrong", &[], &[]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("refused worker 1"),
        "{}",
        text(&o)
    );
    all_ok(
        &run_workers(&e, 2, "fixed", &[], |_| vec![]),
        "a new run id",
    );
    assert_eq!(snapshot_names(&e.dest), vec!["daily.0"]);
    check_snapshot(&e, "the new run");
}

/// A run with a refused worker and units never built: `finalize` refuses it (64), as
/// once its units are in. It said "units are not committed yet; rerun their workers"
/// with exit 75, so a Job retried a run that can never be published (a hostile user,
/// session 44).
#[test]
fn finalize_refuses_a_run_with_a_refused_worker_before_its_units_are_in() {
    let (e, _wrong, _, _) = wrong_planner("early", "shard.unit_started=kill");
    let o = run_cmd(&e, "finalize", "early", &[], &[]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("not published") && stderr_of(&o).contains("worker 1"),
        "{}",
        text(&o)
    );
    assert!(snapshot_names(&e.dest).is_empty());
}

/// A run `run` planned by worker 0 of 2 started with a wrong `--source` (a
/// subdirectory), killed at failpoint `fp`, then worker 1 started right and refused
/// (exit 64): the right env, the wrong one, the worker flags of an index, and the
/// right worker's output.
fn wrong_planner(
    run: &'static str,
    fp: &str,
) -> (Env, Env, impl Fn(&'static str) -> [&'static str; 4], Output) {
    let e = env();
    let wrong = Env {
        _t: tempfile::tempdir().unwrap(),
        src: e.src.join("deep"),
        dest: e.dest.clone(),
    };
    let args = move |i: &'static str| ["--shard", i, "--run-id", run];
    let o = worker(&wrong, &args("0/2"), &[("SNAPRING_FAILPOINTS", fp)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), None, "{fp}: {}", text(&o));
    let o = worker(&e, &args("1/2"), &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    (e, wrong, args, o)
}

/// A worker started wrong planned and built every unit, then died before publishing;
/// a worker started right came after: it found every unit committed and finalized the
/// wrong tree (exit 0, a snapshot of the subdirectory alone), its settings never
/// compared with the plan's. It is refused and leaves its mark, as one that comes
/// before the units are done: nothing is published.
#[test]
fn a_right_worker_that_comes_after_every_unit_is_committed_is_compared_with_the_plan() {
    let (e, _wrong, _, o) = wrong_planner("late", "shard.finalize.before_staging=kill");
    assert!(stderr_of(&o).contains("source"), "{}", text(&o));
    assert!(run_dir(&e, "late").join("refused/w1").exists());
    let o = run_cmd(&e, "finalize", "late", &[], &[]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(
        snapshot_names(&e.dest).is_empty(),
        "published: {}",
        text(&o)
    );
}

/// The names left in run `run`'s directory (`planning.g*` left out).
fn run_dir_names(e: &Env, run: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(run_dir(e, run))
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("planning.g"))
        .collect();
    v.sort();
    v
}

/// The regular files below `root` and their bytes.
fn file_bytes(root: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let m = e.as_ref().unwrap().path().symlink_metadata().unwrap();
            if m.is_dir() {
                stack.push(e.unwrap().path());
            } else if m.is_file() {
                files += 1;
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

/// What an abandoned run keeps: its marker, plan, claims and commits, no copies, and
/// the store's trash is empty.
fn check_abandoned(e: &Env, run: &str, by: &str, what: &str) -> serde_json::Value {
    assert_eq!(
        run_dir_names(e, run),
        ["abandoned", "claims", "done", "plan.json"],
        "{what}"
    );
    let (files, bytes) = file_bytes(&run_dir(e, run));
    // The plan and its claim, a claim and a commit per unit at most, the marker.
    assert!(
        files <= 3 + 2 * plan_units(e, run).len() as u64,
        "{what}: {files} files"
    );
    assert!(bytes < 64 << 10, "{what}: {bytes} bytes left");
    assert!(
        !e.dest.join(".snapring/staging").join(run).exists(),
        "{what}"
    );
    assert!(
        !e.dest
            .join(format!(".snapring/manifests/{run}.mf"))
            .exists(),
        "{what}"
    );
    assert!(
        is_empty_dir(&e.dest.join(".snapring/trash")),
        "{what}: trash emptied"
    );
    let mark: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir(e, run).join("abandoned")).unwrap()).unwrap();
    assert_eq!(mark["by"], by, "{what}: {mark}");
    mark
}

/// The issue (a CronJob gives each night a new run id): a shard run whose workers all
/// died before committing (`night-1`) kept its copies under its run directory for good,
/// through every later run. Once `night-2` of the same label publishes, `night-1` can
/// never be published (it was planned against another snapshot than `daily.0`'s run):
/// its copies are moved to trash and deleted, the report names it, `status` says so, and
/// a late worker of it (a retried pod) copies nothing again. A run of another label
/// (its finalizer killed) is left alone and can still be finalized.
#[test]
fn an_abandoned_run_is_removed_when_a_later_run_of_its_label_publishes() {
    let e = env();
    let kill = |_| vec![("SNAPRING_FAILPOINTS", "shard.before_commit=kill")];
    for o in run_workers(&e, 3, "night-1", &[], kill) {
        assert_eq!(o.status.code(), None, "killed: {}", text(&o));
    }
    let weekly = ["--label", "weekly"];
    killed_before_staging_with(&e, "weekly-1", &weekly);
    let (files, bytes) = file_bytes(&run_dir(&e, "night-1").join("work"));
    assert!(files > 3 && bytes > 1000, "night-1 copied: {files} {bytes}");
    let weekly_before = store_listing(&run_dir(&e, "weekly-1"));
    let outs = run_workers(&e, 3, "night-2", &[], |_| vec![]);
    all_ok(&outs, "night-2");
    check_run(&e, "night-2");
    check_snapshot(&e, "night-2");
    let mark = check_abandoned(&e, "night-1", "night-2", "night-1 after night-2");
    assert_eq!(
        (
            &mark["head_run"],
            &mark["committed"],
            &mark["planned_against"]
        ),
        (&"night-2".into(), &0.into(), &serde_json::Value::Null),
        "{mark}"
    );
    let rec = run_record(&e, "night-2");
    let said: Vec<&str> = rec["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w.as_str())
        .filter(|w| w.starts_with("removed abandoned shard run night-1 (planned "))
        .collect();
    assert_eq!(said.len(), 1, "{rec}");
    assert!(said[0].contains("never finalized"), "{}", said[0]);
    let finalizer = outs
        .iter()
        .find(|o| String::from_utf8_lossy(&o.stdout).contains("finalized:"))
        .expect("one worker finalized");
    assert!(
        String::from_utf8_lossy(&finalizer.stdout).contains("removed abandoned shard run night-1"),
        "{}",
        text(finalizer)
    );
    // H2 (session 47): `snapring finalize` of the finalized run told the removal again,
    // each time, as if made now; it says the run's warnings were given then.
    for _ in 0..2 {
        let o = run_cmd(&e, "finalize", "night-2", &[], &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("run night-2 is already finalized")
                && !out.contains("removed abandoned")
                && out.contains("given when it was finalized: `snapring show night-2 --dest "),
            "{}",
            text(&o)
        );
    }
    // Another label's run is not touched.
    assert_eq!(store_listing(&run_dir(&e, "weekly-1")), weekly_before);
    assert!(!run_dir(&e, "weekly-1").join("abandoned").exists());
    // `status` says what became of it.
    let o = run_cmd(&e, "status", "night-1", &["--json"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["abandoned"]["by"], "night-2", "{st}");
    assert_eq!(st["finalized"], false, "{st}");
    let o = run_cmd(&e, "status", "night-1", &[], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("; abandoned") && out.contains("abandoned at "),
        "{out}"
    );
    // A late worker of it copies nothing again, nor does finalize publish it (exit 1).
    let o = worker(&e, &["--shard", "1/3", "--run-id", "night-1"], &[])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("was abandoned") && stderr_of(&o).contains("start a new run id"),
        "{}",
        text(&o)
    );
    let o = run_cmd(&e, "finalize", "night-1", &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    check_abandoned(
        &e,
        "night-1",
        "night-2",
        "after its late worker and finalize",
    );
    // The other label's run is finalized.
    let o = run_cmd(&e, "finalize", "weekly-1", &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(snapshot_names(&e.dest), ["daily.0", "weekly.0"]);
    assert_same_tree(
        &describe(&e.src),
        &describe(&e.dest.join("weekly.0")),
        "weekly.0",
    );
}

/// A single-node backup of the label makes a shard run whose finalize was killed
/// before its publish unpublishable; it does not sweep it (the engine is a lower layer
/// than shard runs), and the finalize then tried refuses the run and removes its
/// staged tree, manifest and copies, and says so again when repeated.
#[test]
fn a_finalize_refused_after_a_single_node_backup_removes_the_runs_copies() {
    let e = env();
    killed_at(&e, "old", &[], "shard.finalize.before_publish=kill");
    assert!(e.dest.join(".snapring/staging/old").is_dir());
    assert!(e.dest.join(".snapring/manifests/old.mf").is_file());
    let (code, rep, err) = backup(&e.src, &e.dest, &["--jobs", "2"], &[]);
    assert_eq!(code, 0, "{err} {rep}");
    let o = run_cmd(&e, "finalize", "old", &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("another backup published meanwhile")
            && stderr_of(&o).contains("its copies were removed"),
        "{}",
        text(&o)
    );
    assert!(!e.dest.join(".snapring/staging/old").exists());
    assert!(!e.dest.join(".snapring/manifests/old.mf").exists());
    // Abandoned by its own finalize, the label's head being the single-node run.
    let mark = check_abandoned(&e, "old", "old", "old");
    assert_eq!(mark["committed"], mark["units"], "{mark}");
    assert_eq!(mark["head_run"], rep["id"], "{mark}");
    let o = run_cmd(&e, "finalize", "old", &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("was abandoned") && stderr_of(&o).contains("start a new run id"),
        "{}",
        text(&o)
    );
    assert_eq!(snapshot_names(&e.dest), ["daily.0"]);
    check_snapshot(&e, "the single-node snapshot");
}

/// The tester's case: a shard run half done (its worker killed after two commits),
/// then a single-node backup publishes the label. `snapring finalize` said "18 units
/// are not committed yet; rerun their workers" (exit 75) while those workers said the
/// run was "planned against Some(\"daily.0\"), but the store's previous snapshot is
/// now Some(\"daily.0\")": opposite instructions, and the run was never abandoned.
/// Now the worker names the snapshots by their runs, and finalize refuses the run as
/// it does once every unit is in (exit 1, start a new run id) and abandons it, its
/// copies removed. `status` shows the killed worker's claim as stale at once (its
/// process is gone from this host), not "claimed now" for the lease.
#[test]
fn finalize_of_a_half_done_run_overtaken_by_another_backup_abandons_it() {
    let e = env();
    let die = [("SNAPRING_FAILPOINTS", "shard.before_commit=kill@3")];
    let o = worker(&e, &["--shard", "0/2", "--run-id", "n1"], &die)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), None, "killed: {}", text(&o));
    let units = plan_units(&e, "n1").len();
    let o = run_cmd(&e, "status", "n1", &["--json"], &[]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (&st["done"], &st["claimed"], &st["stale"]),
        (&2.into(), &0.into(), &1.into()),
        "the dead worker's claim is stale: {st}"
    );
    write(&e.src.join("after-the-shard-run"), b"newer");
    let (code, rep, err) = backup(&e.src, &e.dest, &["--jobs", "2"], &[]);
    assert_eq!(code, 0, "{err} {rep}");
    let head = rep["id"].clone();
    let o = worker(&e, &["--shard", "1/2", "--run-id", "n1"], &[])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr_of(&o);
    assert!(
        !err.contains("Some(")
            && err.contains(&format!("daily.0 is now run {}", head.as_str().unwrap()))
            && err.contains("can never be published")
            && err.contains("start a new run id"),
        "{}",
        text(&o)
    );
    let o = run_cmd(&e, "finalize", "n1", &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr_of(&o);
    assert!(
        err.contains("another backup published meanwhile")
            && err.contains("can never be published")
            && err.contains("its copies were removed")
            && err.contains("start a new run id"),
        "{}",
        text(&o)
    );
    let mark = check_abandoned(&e, "n1", "n1", "half done, refused at finalize");
    assert_eq!(
        (&mark["committed"], &mark["units"], &mark["head_run"]),
        (&2.into(), &units.into(), &head),
        "{mark}"
    );
    // `status` says it was abandoned, by what and why, and shows the dead worker's
    // claim as no stale lease to take over (before the fix: "abandoned at … by run n1",
    // the run itself, and "stale lease: unit …").
    let o = run_cmd(&e, "status", "n1", &[], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "2 done, {} never built; abandoned: it can never be published",
            units - 2
        )) && out.contains("by its own finalize, which refused it: planned ")
            && out.contains(&format!("daily.0 is now run {}", head.as_str().unwrap()))
            && out.contains("start a new run id")
            && !out.contains("by run n1")
            && !out.contains("stale")
            && !out.contains("claimed"),
        "{out}"
    );
    let o = run_cmd(&e, "status", "n1", &["--json"], &[]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (&st["done"], &st["claimed"], &st["stale"], &st["pending"]),
        (&2.into(), &0.into(), &0.into(), &0.into()),
        "{st}"
    );
    assert_eq!(st["abandoned"]["by"], "n1", "{st}");
    let o = run_cmd(&e, "finalize", "n1", &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr_of(&o).contains("was abandoned"), "{}", text(&o));
    assert_eq!(snapshot_names(&e.dest), ["daily.0"]);
    check_snapshot(&e, "the single-node snapshot");
}

/// The publish's removal of an unpublishable run fails (a warning: the backup is
/// published all the same); the run's own finalize, refusing it, removes its copies,
/// also when a finalize killed between the moves and the marker went before it.
#[test]
fn a_run_refused_at_finalize_removes_its_own_copies_and_a_failed_removal_only_warns() {
    let e = env();
    killed_before_staging(&e, "old");
    assert!(run_dir(&e, "old").join("tree").is_dir());
    // The next run of the label publishes, and its sweep of the abandoned run fails:
    // only a warning.
    let fail = [("SNAPRING_FAILPOINTS", "shard.abandon=error")];
    let o = worker(&e, &["--shard", "0/1", "--run-id", "new"], &fail)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let rep = run_record(&e, "new");
    assert_eq!(rep["status"], "complete", "{rep}");
    let w = rep["warnings"].to_string();
    assert!(
        w.contains("abandoned shard run old") && w.contains("not fully removed"),
        "{rep}"
    );
    assert!(run_dir(&e, "old").join("tree").is_dir());
    let kill = [("SNAPRING_FAILPOINTS", "shard.abandon.cleared=kill")];
    let o = run_cmd(&e, "finalize", "old", &[], &kill);
    assert_eq!(o.status.code(), None, "killed: {}", text(&o));
    assert!(!run_dir(&e, "old").join("tree").exists());
    assert!(!run_dir(&e, "old").join("abandoned").exists());
    let o = run_cmd(&e, "finalize", "old", &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr_of(&o);
    assert!(
        err.contains("another backup published meanwhile")
            && err.contains("its copies were removed")
            && err.contains("start a new run id"),
        "{}",
        text(&o)
    );
    check_abandoned(&e, "old", "old", "refused at finalize");
    assert_eq!(snapshot_names(&e.dest), ["daily.0"]);
    check_snapshot(&e, "the snapshot of run new");
}

/// Review: the finalizer killed before it moves the tree to staging (the parts are still
/// there); one unit's manifest part then loses its end (a torn or truncated file: its
/// last block and its root line gone, cut at a line). `snapring finalize` must not
/// publish a `complete` snapshot whose manifest lacks that block's entries.
#[test]
fn a_truncated_manifest_part_is_not_merged_into_a_complete_snapshot() {
    let e = env();
    killed_before_staging(&e, "torn");
    let parts = run_dir(&e, "torn").join("parts");
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir(&e, "torn").join("plan.json")).unwrap())
            .unwrap();
    let spine: Vec<String> = plan["spine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("D {}", d.as_str().unwrap()))
        .collect();
    // The part with the most blocks is cut at its last block of a directory no other
    // unit has (not a spine directory): that block and the root line are lost.
    // The parts are spread over subdirectories of `parts/`.
    let (part, body) = std::fs::read_dir(&parts)
        .unwrap()
        .map(|d| d.unwrap().path())
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|f| f.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|x| x == "mf"))
        .map(|p| {
            let t = std::fs::read_to_string(&p).unwrap();
            (p, t)
        })
        .max_by_key(|(p, t)| (t.matches("\nD ").count(), p.clone()))
        .unwrap();
    let cut = body
        .match_indices("\nD ")
        .map(|(i, _)| i + 1)
        .filter(|&i| !spine.iter().any(|h| body[i..].lines().next() == Some(h)))
        .last()
        .unwrap();
    let header = body[cut..].lines().next().unwrap().to_string();
    assert!(body[cut..].lines().count() > 1, "{body}");
    std::fs::write(&part, &body[..cut]).unwrap();
    let o = run_cmd(&e, "finalize", "torn", &[], &[]);
    if o.status.success() {
        let mf = std::fs::read_to_string(e.dest.join(".snapring/manifests/torn.mf")).unwrap();
        assert!(
            mf.lines().any(|l| l == header),
            "{header} lost from the manifest of a snapshot finalized from a torn part: {}",
            text(&o)
        );
        check_snapshot(&e, &format!("finalized from a torn part: {}", text(&o)));
    } else {
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(snapshot_names(&e.dest).is_empty());
    }
}

/// The non-spine blocks of the parts of run `id` (killed before staging), each as
/// (part file, its text, the byte offset of a block's first entry line, that line).
fn non_spine_lines(e: &Env, id: &str) -> Vec<(PathBuf, String, usize, String)> {
    let rd = run_dir(e, id);
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rd.join("plan.json")).unwrap()).unwrap();
    let spine: Vec<String> = plan["spine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("D {}", d.as_str().unwrap()))
        .collect();
    let mut out = Vec::new();
    for d in std::fs::read_dir(rd.join("parts")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_none_or(|x| x != "mf") {
                continue;
            }
            let t = std::fs::read_to_string(&p).unwrap();
            for (i, _) in t.match_indices("\nD ") {
                let head = t[i + 1..].lines().next().unwrap();
                if spine.iter().any(|h| h == head) {
                    continue;
                }
                let first = i + 1 + head.len() + 1;
                if let Some(l) = t[first..].lines().next()
                    && !l.starts_with("D ")
                    && !l.starts_with("R ")
                {
                    out.push((p.clone(), t.clone(), first, l.to_string()));
                }
            }
        }
    }
    out
}

/// Review (session 40): finalize copies a unit's blocks into the run's manifest as
/// text; a line damaged in its part (here a file's hash made not hex) must still refuse
/// the finalize, as it did when every entry was parsed and written again, not reach a
/// published manifest that `verify` then calls damaged. A block whose names are out of
/// order is sorted, not copied (the manifest's lookups search each block by name).
#[test]
fn a_damaged_line_of_a_manifest_part_refuses_the_finalize_and_a_block_out_of_order_is_sorted() {
    let e = env();
    killed_before_staging(&e, "bad");
    let (part, body, at, line) = non_spine_lines(&e, "bad")
        .into_iter()
        .find(|(_, _, _, l)| l.split(' ').nth(8).is_some_and(|h| h.len() == 64))
        .expect("a non-spine block whose first entry is a file with a hash");
    let hash_at = at + line.match_indices(' ').nth(7).unwrap().0 + 1;
    let mut damaged = body.clone();
    damaged.replace_range(hash_at..hash_at + 1, "z");
    std::fs::write(&part, &damaged).unwrap();
    let o = run_cmd(&e, "finalize", "bad", &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("bad hash"), "{}", text(&o));
    assert!(snapshot_names(&e.dest).is_empty(), "{}", text(&o));

    // Put back, then a block with two entries swapped: finalized, and the manifest
    // still finds every name (verify clean).
    std::fs::write(&part, &body).unwrap();
    let (part, body, at, first) = non_spine_lines(&e, "bad")
        .into_iter()
        .find(|(_, t, at, l)| {
            t[at + l.len() + 1..]
                .lines()
                .next()
                .is_some_and(|n| !n.starts_with("D ") && !n.starts_with("R "))
        })
        .expect("a non-spine block of two entries or more");
    let second = body[at + first.len() + 1..]
        .lines()
        .next()
        .unwrap()
        .to_string();
    let mut swapped = body.clone();
    swapped.replace_range(
        at..at + first.len() + 1 + second.len(),
        &format!("{second}\n{first}"),
    );
    std::fs::write(&part, &swapped).unwrap();
    let o = run_cmd(&e, "finalize", "bad", &[], &[]);
    assert!(o.status.success(), "{}", text(&o));
    check_snapshot(
        &e,
        &format!("finalized from a part out of order: {}", text(&o)),
    );
}

/// A run whose workers ran an older snapring: its plan has no `part_dirs` (every
/// manifest part in `parts/` itself) and its commits no figures (they are in
/// `counts/<unit>.g<gen>.json`). `snapring finalize` of today merges those parts and
/// adds up those figures: made here from a run killed in finalize, rewritten to the
/// older layout.
#[test]
fn finalize_reads_a_run_written_in_the_older_layout_of_parts_and_figures() {
    let e = env();
    killed_before_staging(&e, "older");
    let rd = run_dir(&e, "older");
    let plan_path = rd.join("plan.json");
    let mut plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&plan_path).unwrap()).unwrap();
    assert!(plan["part_dirs"].as_u64().unwrap() > 1, "{plan}");
    plan.as_object_mut().unwrap().remove("part_dirs");
    let bytes = serde_json::to_vec_pretty(&plan).unwrap();
    std::fs::write(&plan_path, &bytes).unwrap();
    let hash = blake3::hash(&bytes).to_hex().to_string();
    // The parts out of their subdirectories.
    let parts = rd.join("parts");
    let mut moved = 0;
    for d in std::fs::read_dir(&parts)
        .unwrap()
        .map(|d| d.unwrap().path())
    {
        for f in std::fs::read_dir(&d).unwrap().map(|f| f.unwrap().path()) {
            std::fs::rename(&f, parts.join(f.file_name().unwrap())).unwrap();
            moved += 1;
        }
        std::fs::remove_dir(&d).unwrap();
    }
    // The figures out of the commits, into files of their own.
    std::fs::create_dir(rd.join("counts")).unwrap();
    let mut files = 0;
    for u in plan_units(&e, "older") {
        let (_, f) = commit_as_an_older_worker(&rd, &u, Some(&hash));
        files += f;
    }
    assert_eq!(moved, plan_units(&e, "older").len());
    finalize_completes(&e, "older", files, "finalized from the older layout");
}

/// Finalize keeps the parts it read in its first pass for its second, within a budget
/// of entries; the parts beyond it are read again. Whichever it does for each part,
/// the manifest is the whole snapshot's (`verify` finds every entry), once.
#[test]
fn finalize_merges_the_same_manifest_with_parts_kept_read_again_or_both() {
    for (run, kept) in [("none", "0"), ("some", "40"), ("all", "100000")] {
        let e = env();
        killed_before_staging(&e, run);
        let units = plan_units(&e, run).len();
        assert!(units > 4, "{units} units");
        let o = run_cmd(
            &e,
            "finalize",
            run,
            &["-v"],
            &[("SNAPRING_FINALIZE_KEPT_ENTRIES", kept)],
        );
        assert_eq!(o.status.code(), Some(0), "{run}: {}", text(&o));
        let once = match run {
            "none" => "0".to_string(),
            "all" => units.to_string(),
            _ => {
                let line = text(&o);
                let n: usize = line
                    .split_once("merged in ")
                    .and_then(|(_, r)| r.split_once("s ("))
                    .and_then(|(_, r)| r.split_once(" of "))
                    .map(|(n, _)| n.parse().unwrap())
                    .unwrap_or_else(|| panic!("{line}"));
                assert!(n > 0 && n < units, "{n} of {units} kept: {line}");
                n.to_string()
            }
        };
        let said = format!("({once} of {units} read once)");
        assert!(text(&o).contains(&said), "{run}: {said}: {}", text(&o));
        check_snapshot(&e, run);
    }
}

/// Runs 3 workers of run `id` to the end of their units; the finalizer is killed
/// before it stages, so every unit is committed and nothing is published.
fn killed_before_staging(e: &Env, id: &str) {
    killed_before_staging_with(e, id, &[]);
}

/// [`killed_before_staging`] with `args`.
fn killed_before_staging_with(e: &Env, id: &str, args: &[&str]) {
    killed_at(e, id, args, "shard.finalize.before_staging=kill");
}

/// Runs 3 workers of run `id` (with `args`) under failpoints `points`, one of which
/// kills a worker (the finalizer, for the failpoints of finalize).
fn killed_at(e: &Env, id: &str, args: &[&str], points: &'static str) {
    let die = |_| vec![("SNAPRING_FAILPOINTS", points)];
    let outs = run_workers(e, 3, id, args, die);
    assert!(outs.iter().any(|o| o.status.code().is_none()), "{points}");
}

/// Rewrites unit `u`'s commit in run directory `rd` as an older worker wrote it: its
/// figures out of the commit into `counts/<u>.g<gen>.json` (made by the caller), and
/// the plan's hash replaced by `plan` if given. Returns `<u>.g<gen>` and its files.
fn commit_as_an_older_worker(rd: &Path, u: &str, plan: Option<&str>) -> (String, u64) {
    let p = rd.join("done").join(u);
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let counts = c.as_object_mut().unwrap().remove("counts").unwrap();
    let name = format!("{u}.g{}", c["generation"]);
    std::fs::write(
        rd.join("counts").join(format!("{name}.json")),
        counts.to_string(),
    )
    .unwrap();
    if let Some(h) = plan {
        c["plan"] = h.into();
    }
    std::fs::write(&p, c.to_string()).unwrap();
    (name, counts["files_total"].as_u64().unwrap())
}

/// `snapring finalize` of run `id` completes it: the snapshot equals the source, the
/// run's record says complete with `files` files, and no part is left.
fn finalize_completes(e: &Env, id: &str, files: u64, what: &str) {
    let o = run_cmd(e, "finalize", id, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    check_snapshot(e, what);
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(e.dest.join(format!(".snapring/runs/{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["status"], "complete", "{rec}");
    assert_eq!(rec["files_total"], files, "{rec}");
    assert!(!run_dir(e, id).join("parts").exists(), "parts left behind");
}

/// A run planned by today's snapring (`part_dirs` in its plan) where some units were
/// committed by a worker of an older snapring (a host not yet upgraded, a retried pod
/// on an older image): that binary knows no `part_dirs` and puts its parts in `parts/`
/// itself, its figures in `counts/<unit>.g<gen>.json`, its commits without them.
/// Finalize reads each unit's part where its committer put it (it looked in the
/// plan's subdirectories for every unit: exit 1, "open manifest part", every time).
#[test]
fn finalize_reads_the_parts_of_older_workers_in_a_run_planned_by_a_newer_one() {
    let e = env();
    killed_before_staging(&e, "mixed");
    let rd = run_dir(&e, "mixed");
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rd.join("plan.json")).unwrap()).unwrap();
    let part_dirs = plan["part_dirs"].as_u64().unwrap();
    assert!(part_dirs > 1, "{plan}");
    let parts = rd.join("parts");
    std::fs::create_dir(rd.join("counts")).unwrap();
    let (mut files, mut older) = (0, 0);
    // Every other unit as an older worker committed it.
    for (i, u) in plan_units(&e, "mixed").into_iter().enumerate() {
        if i % 2 == 1 {
            let c: serde_json::Value =
                serde_json::from_slice(&std::fs::read(rd.join("done").join(&u)).unwrap()).unwrap();
            files += c["counts"]["files_total"].as_u64().unwrap();
            continue;
        }
        let (name, f) = commit_as_an_older_worker(&rd, &u, None);
        files += f;
        let n: u64 = u.trim_start_matches('u').parse().unwrap();
        let k = (n % part_dirs).to_string();
        let mf = format!("{name}.mf");
        std::fs::rename(parts.join(&k).join(&mf), parts.join(&mf)).unwrap();
        older += 1;
    }
    assert!(older > 0 && older < plan_units(&e, "mixed").len());
    finalize_completes(&e, "mixed", files, "finalized with parts of older workers");
}

/// Review: every unit committed and moved into the run's tree, the finalizer killed
/// before staging; `snapring finalize` then runs where the source is not there (an
/// admin host, or a node where the workers' `pre_command` mounted it; or an empty mount
/// point). Finalize reads
/// the spine directories from the source: it must fail without touching the run's
/// tree, so that a finalize with the source back publishes the whole snapshot.
#[test]
fn snapring_finalize_where_the_source_is_missing_keeps_the_runs_tree() {
    let e = env();
    killed_before_staging(&e, "away");
    let aside = e.src.with_file_name("src-not-mounted");
    std::fs::rename(&e.src, &aside).unwrap();
    let o = run_cmd(&e, "finalize", "away", &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(snapshot_names(&e.dest).is_empty(), "{}", text(&o));
    // An empty mount point where the source is mounted elsewhere.
    std::fs::create_dir(&e.src).unwrap();
    let o = run_cmd(&e, "finalize", "away", &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(snapshot_names(&e.dest).is_empty(), "{}", text(&o));
    std::fs::remove_dir(&e.src).unwrap();
    std::fs::rename(&aside, &e.src).unwrap();
    let o = run_cmd(&e, "finalize", "away", &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    check_run(&e, "away");
    check_snapshot(&e, "finalized once the source is back");
}

/// A spine directory (`flat`, cut into name ranges) deleted from the source after its
/// units backed it up, before finalize: with the source there, it is gone from the
/// source, and the snapshot leaves it out (the run is not stuck failing on it).
#[test]
fn a_spine_directory_deleted_before_finalize_is_left_out_of_the_snapshot() {
    let e = env();
    killed_before_staging(&e, "gone");
    std::fs::remove_dir_all(e.src.join("flat")).unwrap();
    let o = run_cmd(&e, "finalize", "gone", &[], &[]);
    // Partial, as a single-node run with an entry that vanished under it.
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("is gone from the source"),
        "{}",
        text(&o)
    );
    check_run_with(&e, "gone", Some("flat"));
    check_snapshot(&e, "a spine directory deleted before finalize");
}

/// A spine directory with subdirectories in its units (`deep`, and the first name of a
/// hard-link group that crosses units) deleted from the source before finalize: it is
/// left out with everything below it, and `verify` finds the snapshot clean.
#[test]
fn a_spine_directory_with_subdirectories_deleted_before_finalize_leaves_no_entry_behind() {
    let e = env();
    killed_before_staging(&e, "deep-gone");
    std::fs::remove_dir_all(e.src.join("deep")).unwrap();
    let o = run_cmd(&e, "finalize", "deep-gone", &[], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("spine directory")
            && stderr_of(&o).contains("is gone from the source"),
        "{}",
        text(&o)
    );
    check_run_with(&e, "deep-gone", Some("deep"));
    check_snapshot(
        &e,
        "a spine directory with subdirectories deleted before finalize",
    );
}

/// A finalize killed after it left out a spine directory gone from the source (its
/// tree in the run removed), then repeated once the directory is back: the repeat
/// leaves it out as the first did (it failed, exit 1, on the removed tree's
/// directories, every time: the run was stuck).
#[test]
fn a_finalize_repeated_after_a_gone_spine_directory_came_back_leaves_it_out_as_the_first() {
    let e = env();
    killed_before_staging(&e, "back");
    let aside = e.src.with_file_name("deep-aside");
    std::fs::rename(e.src.join("deep"), &aside).unwrap();
    let o = run_cmd(
        &e,
        "finalize",
        "back",
        &[],
        &[("SNAPRING_FAILPOINTS", "shard.finalize.before_staging=kill")],
    );
    assert_eq!(o.status.code(), None, "killed: {}", text(&o));
    std::fs::rename(&aside, e.src.join("deep")).unwrap();
    // The root's time as the repeat reads it (the moves change it).
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata(&e.src).unwrap();
    let o = run_cmd(&e, "finalize", "back", &[], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("when an earlier finalize of this run read it"),
        "{}",
        text(&o)
    );
    check_run_with(&e, "back", Some("deep"));
    // The snapshot is the source as the first finalize found it: without `deep`.
    std::fs::rename(e.src.join("deep"), &aside).unwrap();
    set_mtime(&e.src, root.mtime(), root.mtime_nsec());
    check_snapshot(
        &e,
        "a finalize repeated after a gone spine directory came back",
    );
}

/// A spine directory that finalize cannot open (EACCES: latencyfs `--eacces`, as an
/// export that maps finalize's node to another user) is not gone from the source:
/// finalize stops, nothing published, and a finalize that can read it publishes the
/// whole tree (it was left out, with everything its units backed up).
#[test]
fn a_spine_directory_finalize_cannot_open_stops_it_rather_than_being_left_out() {
    let t = tempfile::tempdir().unwrap();
    let under = t.path().join("under");
    std::fs::create_dir(&under).unwrap();
    source(&under);
    let e = Env {
        src: t.path().join("src"),
        dest: t.path().join("dest"),
        _t: tempfile::tempdir().unwrap(),
    };
    {
        let Some(_fs) = FaultFs::mount(&under, &e.src, &[]) else {
            return;
        };
        killed_before_staging(&e, "denied");
    }
    {
        let _fs = FaultFs::mount(&under, &e.src, &["--eacces", "/deep"]).unwrap();
        let o = run_cmd(&e, "finalize", "denied", &[], &[]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            stderr_of(&o).contains("deep") && stderr_of(&o).contains("ermission denied"),
            "{}",
            text(&o)
        );
        assert!(snapshot_names(&e.dest).is_empty(), "{}", text(&o));
    }
    let _fs = FaultFs::mount(&under, &e.src, &[]).unwrap();
    let o = run_cmd(&e, "finalize", "denied", &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    check_run(&e, "denied");
    check_snapshot(&e, "finalized once the spine directory could be read");
}

/// A source whose listings give names twice (an NFS server's readdir cookies gone
/// wrong: latencyfs `--dup-list`), on a first run (the plan comes from a walk of the
/// source): each name is planned once. The planner cut a heavy directory once per
/// copy, wrote two anchors for it and then refused its own plan (`bad unit … in
/// plan`): every worker failed, every run.
#[test]
fn a_name_listed_twice_on_a_first_run_is_planned_once() {
    let t = tempfile::tempdir().unwrap();
    let under = t.path().join("under");
    std::fs::create_dir(&under).unwrap();
    source(&under);
    let e = Env {
        src: t.path().join("src"),
        dest: t.path().join("dest"),
        _t: tempfile::tempdir().unwrap(),
    };
    let Some(_fs) = FaultFs::mount(&under, &e.src, &["--dup-list", "/", "--dup-list", "/deep"])
    else {
        return;
    };
    let outs = run_workers(&e, 3, "twice", &[], |_| vec![]);
    all_ok(&outs, "names listed twice");
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir(&e, "twice").join("plan.json")).unwrap())
            .unwrap();
    let spine: Vec<&str> = plan["spine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let mut once = spine.clone();
    once.dedup();
    assert_eq!(spine, once, "{plan}");
    assert!(spine.contains(&"deep"), "{plan}");
    check_run(&e, "twice");
    assert_same_tree(
        &describe(&under),
        &describe(&e.dest.join("daily.0")),
        "names listed twice",
    );
    verify_clean(&e, "daily.0");
}

/// A spine directory the workers cannot open (EACCES: latencyfs `--eacces`; an I/O
/// error or a stale handle alike) keeps its entries of the previous snapshot, each
/// unit those of its names, and finalize its metadata: the run is `partial` with an
/// `unreadable` problem naming it, as a single-node run keeps an unreadable
/// directory's entries. It failed every worker and the whole run, night after night.
#[test]
fn a_spine_directory_the_workers_cannot_open_keeps_its_previous_entries() {
    let t = tempfile::tempdir().unwrap();
    let under = t.path().join("under");
    std::fs::create_dir(&under).unwrap();
    source(&under);
    let e = Env {
        src: t.path().join("src"),
        dest: t.path().join("dest"),
        _t: tempfile::tempdir().unwrap(),
    };
    {
        let Some(_fs) = FaultFs::mount(&under, &e.src, &[]) else {
            return;
        };
        all_ok(&run_workers(&e, 3, "r0", &[], |_| vec![]), "first run");
        check_run(&e, "r0");
    }
    let before = describe(&e.dest.join("daily.0/deep"));
    // Changed since: the change in `deep` is not seen, the one in `flat` is.
    write(&under.join("deep/d1/s0/f00"), b"changed, unseen");
    write(&under.join("flat/new"), b"new, seen");
    let _fs = FaultFs::mount(&under, &e.src, &["--eacces", "/deep"]).unwrap();
    let plan_dirs = || -> Vec<String> {
        let p: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run_dir(&e, "r1").join("plan.json")).unwrap())
                .unwrap();
        p["units"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["dir"].as_str().unwrap().to_string())
            .collect()
    };
    let outs = run_workers(&e, 3, "r1", &[], |_| vec![]);
    for o in &outs {
        assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(o));
    }
    assert!(plan_dirs().iter().any(|d| d == "deep"), "{:?}", plan_dirs());
    let rec = run_record(&e, "r1");
    assert_eq!(rec["status"], "partial", "{rec}");
    assert_eq!(rec["snapshot"], "daily.0", "{rec}");
    let ps = rec["problems"].as_array().unwrap();
    assert!(
        ps.iter()
            .any(|p| p["path"] == "deep" && p["kind"] == "unreadable"),
        "{rec}"
    );
    assert_same_tree(
        &before,
        &describe(&e.dest.join("daily.0/deep")),
        "the unreadable spine directory, kept",
    );
    assert_eq!(
        std::fs::read(e.dest.join("daily.0/flat/new")).unwrap(),
        b"new, seen"
    );
    verify_clean(&e, "daily.0");
}

/// A worker rerun that finds every unit committed (the finalizer was killed) runs the
/// job's pre command before it finalizes: on a node where that command is what mounts
/// the source, finalize needs it (without it the rerun failed, exit 1, source missing).
#[test]
fn a_rerun_that_only_finalizes_runs_the_pre_command_first() {
    let e = env();
    killed_before_staging(&e, "mount");
    let elsewhere = e.src.with_file_name("src-elsewhere");
    std::fs::rename(&e.src, &elsewhere).unwrap();
    let mount = format!("mv {} {}", elsewhere.display(), e.src.display());
    let args = [
        "--shard",
        "0/3",
        "--run-id",
        "mount",
        "--pre-command",
        &mount,
    ];
    let o = worker(&e, &args, &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    check_run(&e, "mount");
    check_snapshot(&e, "finalized once the pre command mounted the source");
}

/// Finalize killed right after its publish, which expired the store's older snapshot
/// (`--retain 1`); another backup publishes before `snapring finalize` completes the run:
/// the run's record names the snapshot it published as it is named now (`daily.1`, not
/// `daily.0`, the other backup's) and the snapshot its publish expired (it said none).
#[test]
fn finalize_after_a_crash_past_its_publish_records_the_snapshot_and_what_it_expired() {
    let e = env();
    let (code, _, err) = backup(&e.src, &e.dest, &["--jobs", "2", "--retain", "1"], &[]);
    assert_eq!(code, 0, "{err}");
    killed_at(
        &e,
        "past",
        &["--retain", "1"],
        "shard.finalize.after_publish=kill",
    );
    write(&e.src.join("after"), b"the other backup's");
    let (code, _, err) = backup(&e.src, &e.dest, &["--jobs", "2", "--retain", "2"], &[]);
    assert_eq!(code, 0, "{err}");
    let o = run_cmd(&e, "finalize", "past", &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let rec = run_record(&e, "past");
    assert_eq!(rec["snapshot"], "daily.1", "{rec}");
    assert_eq!(rec["expired"], serde_json::json!(["daily.0"]), "{rec}");
}

/// Finalize killed right after its publish (or within it, its journal written: the next
/// backup's repair rolls it forward); another backup (`--retain 1`) then expires the
/// run's snapshot before `snapring finalize`. The run was published: its record,
/// settled by the publish's journal, names the snapshot (a run never published has none
/// there, and is still refused: above). Finalize completes it (exit 0, `finalized`)
/// without publishing anything again or touching the newer snapshot, and says the
/// snapshot was published and has since been expired; before, it refused the run as
/// one another backup had overtaken, and the run stayed unfinished for good.
#[test]
fn finalize_of_a_run_published_then_expired_by_another_backup_completes_it() {
    for fp in [
        "shard.finalize.after_publish=kill",
        // A worker that takes finalize over is killed as it rolls the journal forward:
        // the other backup's repair does it.
        "journal.after_write=kill;journal.before_state=kill",
    ] {
        let e = env();
        let (code, _, err) = backup(&e.src, &e.dest, &["--jobs", "2", "--retain", "1"], &[]);
        assert_eq!(code, 0, "{err}");
        killed_at(&e, "gone", &["--retain", "1"], fp);
        assert!(!run_dir(&e, "gone").join("finalized").exists());
        // Published, or its journal left for the next backup to roll forward.
        let journal = e.dest.join(".snapring/journal").exists();
        assert_eq!(journal, fp.starts_with("journal"), "{fp}");
        another_backup_publishes_a_changed_source(&e);
        let state_path = e.dest.join(".snapring/snapshots.json");
        let state = std::fs::read(&state_path).unwrap();
        assert!(
            !String::from_utf8_lossy(&state).contains("\"gone\""),
            "the run's snapshot is expired"
        );
        let newer = ino(&e.dest.join("daily.0"));
        let o = run_cmd(&e, "finalize", "gone", &[], &[]);
        assert_eq!(o.status.code(), Some(0), "{fp}: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("published as daily.0") && out.contains("since expired"),
            "{}",
            text(&o)
        );
        assert!(run_dir(&e, "gone").join("finalized").is_file());
        // Nothing published again: the newer snapshot is still daily.0, alone, unchanged.
        assert_eq!(snapshot_names(&e.dest), vec!["daily.0"]);
        assert_eq!(ino(&e.dest.join("daily.0")), newer);
        assert_eq!(std::fs::read(&state_path).unwrap(), state);
        check_snapshot(
            &e,
            &format!("the newer snapshot stays daily.0: {}", text(&o)),
        );
        let rec = run_record(&e, "gone");
        assert_eq!(rec["status"], "complete", "{fp}: {rec}");
        assert_eq!(rec["snapshot"], serde_json::Value::Null, "{fp}: {rec}");
        assert!(
            rec["message"].as_str().unwrap().contains("since expired"),
            "{rec}"
        );
        assert_eq!(
            rec["expired"],
            serde_json::json!(["daily.0"]),
            "{fp}: {rec}"
        );
        for d in ["work", "parts", "tree"] {
            assert!(!run_dir(&e, "gone").join(d).exists(), "{d} left behind");
        }
        let st = run_cmd(&e, "status", "gone", &["--json"], &[]);
        let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        assert_eq!(st["finalized"], true, "{st}");
        // Again: already finalized.
        let o = run_cmd(&e, "finalize", "gone", &[], &[]);
        assert_eq!(o.status.code(), Some(0), "{fp}: {}", text(&o));
        assert_eq!(ino(&e.dest.join("daily.0")), newer, "{fp}");
    }
}

/// A finalizer killed after writing `finalized`, before its clean-up: `snapring
/// finalize` answers "already finalized" and does the clean-up (the build directories
/// removed, the run's log written); before, they stayed for good.
#[test]
fn finalize_of_a_run_whose_finalizer_died_after_finalized_cleans_up() {
    let e = env();
    // Its clean-up (removing the parts while it publishes) slower than the publish.
    let points = "shard.finalize.cleanup=sleep:3000;shard.finalize.after_finalized=kill";
    killed_at(&e, "tidy", &[], points);
    assert!(run_dir(&e, "tidy").join("finalized").is_file());
    assert!(run_dir(&e, "tidy").join("parts").exists());
    let log = e.dest.join(".snapring/logs/tidy.log");
    assert!(!log.exists());
    let o = run_cmd(&e, "finalize", "tidy", &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    check_run(&e, "tidy");
    check_snapshot(&e, "a run whose finalizer died after finalized");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("shard worker started"), "{text}");
}

/// With nothing to expire, the run record written before `finalized` is the last one:
/// it is not written again after the marker (session 48: the fourth write of the record,
/// a chain of round trips at the very end of every run). Its expiry phase is there,
/// empty, and the run's log is put together as before.
#[test]
fn with_nothing_expired_the_record_is_not_written_again_after_finalized() {
    let e = env();
    let run = "once";
    // Whatever comes after `finalized` comes a while after it.
    let late = |_| {
        vec![(
            "SNAPRING_FAILPOINTS",
            "shard.finalize.after_finalized=sleep:300",
        )]
    };
    let outs = run_workers(&e, 2, run, &[], late);
    all_ok(&outs, "two workers");
    check_run(&e, run);
    let m = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let record = e.dest.join(format!(".snapring/runs/{run}.json"));
    let finalized = run_dir(&e, run).join("finalized");
    assert!(
        m(&record) <= m(&finalized),
        "the record was written again after finalized: {:?} > {:?}",
        m(&record),
        m(&finalized)
    );
    let rec = run_record(&e, run);
    assert_eq!(rec["status"], "complete", "{rec}");
    assert!(rec["phases"]["remove_expired"]["stop"].is_string(), "{rec}");
    let phase = &rec["phases"]["remove_expired"];
    assert_eq!(phase["seconds"].as_f64(), Some(0.0), "{rec}");
    assert_eq!(phase["start"], phase["stop"], "{rec}");
    assert!(rec["finished_at"].is_string(), "{rec}");
    let log = std::fs::read_to_string(e.dest.join(format!(".snapring/logs/{run}.log"))).unwrap();
    assert!(log.contains(&format!("shard run {run} finalized")), "{log}");
}

/// Review of session 48: the run's log is merged beside the expiry, so a run that
/// expires a snapshot merges it again after it: the log holds what the finalizer logged
/// of the expiry (its summary), as it did before session 48.
#[test]
fn the_run_log_holds_the_finalizers_expiry_lines() {
    let e = env();
    let retain = ["--retain", "1"];
    all_ok(&run_workers(&e, 2, "x1", &retain, |_| vec![]), "x1");
    write(&e.src.join("flat/n050 with space"), b"x2");
    all_ok(&run_workers(&e, 2, "x2", &retain, |_| vec![]), "x2");
    check_run(&e, "x2");
    assert_eq!(snapshot_names(&e.dest), vec!["daily.0"]);
    let rec = run_record(&e, "x2");
    assert_eq!(rec["expired"], serde_json::json!(["daily.0"]), "{rec}");
    let log = std::fs::read_to_string(e.dest.join(".snapring/logs/x2.log")).unwrap();
    assert!(log.contains("shard run x2 finalized"), "{log}");
    assert!(
        log.contains("expiry: "),
        "the expiry's summary is not in the run's log: {log}"
    );
}

/// A finalizer killed during the expiry, after it merged the run's log: the other
/// worker helped delete the expired pieces and logged its part after that merge, in its
/// own log only. `snapring finalize` resuming the expiry merges the log again: the run's
/// log holds the helper's expiry line. Before session 48 it merged only a log that was
/// not there yet (`tidy`), so the helper's line was never in the run's log.
#[test]
fn finalize_resuming_an_expiry_merges_the_lines_logged_after_the_dead_finalizers_merge() {
    let e = env();
    let retain = ["--retain", "1"];
    all_ok(&run_workers(&e, 2, "m1", &retain, |_| vec![]), "m1");
    write(&e.src.join("flat/n060 with space"), b"m2");
    let run = "m2";
    // Each piece takes 300 ms. The finalizer (whichever worker it is) pauses after
    // `finalized`; let go, it merges the log and is killed once the log is there, while
    // the other worker still deletes its pieces.
    let pause = e.dest.with_file_name("pause");
    let fp = format!(
        "shard.finalize.after_finalized=pause:{};shard.expire_piece=sleep:300",
        pause.display()
    );
    let kids: Vec<Child> = (0..2)
        .map(|i| {
            let shard = format!("{i}/2");
            worker(
                &e,
                &["-v", "--shard", &shard, "--run-id", run, "--retain", "1"],
                &[("SNAPRING_FAILPOINTS", &fp)],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    // The failpoint's file is created, then written: wait for its pid.
    let t0 = Instant::now();
    let finalizer: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pause)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no finalizer paused"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let merged_log = e.dest.join(format!(".snapring/logs/{run}.log"));
    std::fs::remove_file(&pause).unwrap();
    let t0 = Instant::now();
    while !merged_log.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the finalizer's merge"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(finalizer).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let outs: Vec<Output> = kids
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let helper_index = outs
        .iter()
        .position(|o| o.status.code() == Some(0))
        .unwrap_or_else(|| panic!("{}", outs.iter().map(text).collect::<Vec<_>>().join("\n")));
    assert_eq!(
        outs[1 - helper_index].status.code(),
        None,
        "{}",
        text(&outs[1 - helper_index])
    );
    assert!(run_dir(&e, run).join("finalized").is_file());
    let logs = e.dest.join(".snapring/logs");
    let helper = std::fs::read_to_string(logs.join(format!("{run}.w{helper_index}.log"))).unwrap();
    let line = "pieces of the expired snapshots deleted";
    assert!(helper.contains(line), "{helper}");
    let merged = || std::fs::read_to_string(logs.join(format!("{run}.log"))).unwrap();
    // The dead finalizer's merge: before the helper's part.
    assert!(
        merged().contains(&format!("shard run {run} finalized")) && !merged().contains(line),
        "{}",
        merged()
    );
    let o = run_cmd(&e, "finalize", run, &["-v", "--jobs", "2"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("completing the deletion"),
        "{}",
        text(&o)
    );
    assert!(
        merged().contains(line),
        "the helper's expiry line is not in the run's log: {}",
        merged()
    );
    assert!(is_empty_dir(&e.dest.join(".snapring/expiring")));
    assert_eq!(snapshot_names(&e.dest), vec!["daily.0"]);
    check_snapshot(&e, run);
}

/// Review: the run's staged tree lost after a finalize killed before its publish (removed
/// by hand as a leftover, say). The units' work directories are gone (moved), so
/// `snapring finalize` can only rebuild the spine directories: it must not publish
/// them as a `complete` snapshot under a manifest listing every file.
#[test]
fn finalize_does_not_publish_an_empty_tree_when_the_staged_tree_is_lost() {
    let e = env();
    killed_at(&e, "lost", &[], "shard.finalize.before_publish=kill");
    std::fs::remove_dir_all(e.dest.join(".snapring/staging/lost")).unwrap();
    let o = run_cmd(&e, "finalize", "lost", &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // Whether or not the killed finalizer's clean-up had removed the parts already.
    assert!(text(&o).contains("the run's tree is gone"), "{}", text(&o));
    assert!(snapshot_names(&e.dest).is_empty(), "{}", text(&o));
    assert!(!run_dir(&e, "lost").join("finalized").exists());
}

/// Review: a source file named like finalize's temporary name for a hard-link join
/// (`.snapring-link-<name>`) beside a name whose group crosses units (`links/a`, linked
/// from `flat`): the join must not remove it from the snapshot.
#[test]
fn a_file_named_like_the_joins_temporary_name_stays_in_the_snapshot() {
    let e = env();
    write(
        &e.src.join("links/.snapring-link-a"),
        b"mine, not snapring's",
    );
    all_ok(&run_workers(&e, 3, "tmpname", &[], |_| vec![]), "tmpname");
    check_run(&e, "tmpname");
    check_snapshot(&e, "a file named like the join's temporary name");
}

/// Review: a finalize killed between its hard-link joins (each renames a name in a
/// directory of the run's tree, which sets that directory's times), then `snapring
/// finalize`: the directories' times must still be the source's.
#[test]
fn a_finalize_killed_between_its_hard_link_joins_leaves_no_directory_time_changed() {
    for n in 1..=3 {
        let e = env();
        let run = format!("joins{n}");
        let fp = format!("shard.finalize.join=kill@{n}");
        let kids: Vec<Child> = (0..3)
            .map(|i| spawn(&e, i, 3, &run, &[("SNAPRING_FAILPOINTS", &fp)]))
            .collect();
        for c in kids {
            c.wait_with_output().unwrap();
        }
        if run_dir(&e, &run).join("finalized").exists() {
            // Fewer joins than `n`: nothing was killed.
            continue;
        }
        std::thread::sleep(Duration::from_millis(20));
        let o = run_cmd(&e, "finalize", &run, &[], &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        check_run(&e, &run);
        check_snapshot(&e, &format!("killed at join {n}"));
    }
}

/// Each worker writes its own log file in the store (one file per worker: appends from
/// several NFS clients to one file can overwrite each other), and finalize puts them
/// together as the run's log, where `snapring show` and the catalog look for it.
#[test]
fn each_worker_logs_to_its_own_file_and_finalize_makes_the_run_log_of_them() {
    let e = env();
    let run = "logged";
    let outs = run_workers(&e, 2, run, &[], |_| vec![]);
    all_ok(&outs, "two workers");
    let logs = e.dest.join(".snapring/logs");
    let mut finalized = 0;
    for i in 0..2 {
        let p = logs.join(format!("{run}.w{i}.log"));
        let text = std::fs::read_to_string(&p)
            .unwrap_or_else(|err| panic!("worker {i}'s log {}: {err}", p.display()));
        assert!(
            text.contains("shard worker started") && text.contains(&format!("worker={i}")),
            "worker {i}'s log: {text}"
        );
        finalized += text.matches(&format!("shard run {run} finalized")).count();
    }
    assert_eq!(
        finalized, 1,
        "one of the two logs says the run was finalized"
    );
    let all = std::fs::read_to_string(logs.join(format!("{run}.log"))).unwrap();
    for i in 0..2 {
        assert!(all.contains(&format!("worker={i}")), "run log: {all}");
    }
    assert!(
        all.contains(&format!("shard run {run} finalized")),
        "run log: {all}"
    );
    assert_eq!(
        run_record(&e, run)["log"],
        serde_json::Value::Null,
        "the record names no other log than the run's own"
    );
}

/// `--window` with `--shard` counts from the worker's start. When it ends the worker
/// leaves the unit it is building, commits nothing more and exits "incomplete" (3,
/// retryable) saying so; a rerun of the same worker (same run id) resumes and
/// finalizes, and the snapshot is the source.
#[test]
fn a_worker_whose_window_ends_leaves_its_units_to_a_rerun() {
    let e = env();
    let run = "windowed";
    let pause = e.dest.with_file_name("pause");
    let fp = format!("walk.copy=pause:{}@1", pause.display());
    // The interrupted worker's post command hears of its part.
    let heard = e.dest.with_file_name("heard");
    let post = format!(
        "sh -c 'echo \"$SNAPRING_STATUS $SNAPRING_SHARD_INDEX/$SNAPRING_SHARD_COUNT\" > {}'",
        heard.display()
    );
    let t0 = Instant::now();
    let w = worker(
        &e,
        &[
            "--shard",
            "0/1",
            "--run-id",
            run,
            "--window",
            "1s",
            "--post-command",
            &post,
        ],
        &[("SNAPRING_FAILPOINTS", fp.as_str())],
    )
    .spawn()
    .unwrap();
    // One unit's walk is held in its first copy until the window has ended.
    wait_for(&pause);
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(t0.elapsed()));
    std::fs::remove_file(&pause).unwrap();
    let o = w.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("the backup window ended"),
        "{}",
        text(&o)
    );
    let units = plan_units(&e, run);
    let done = std::fs::read_dir(run_dir(&e, run).join("done"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        done < units.len(),
        "{done} of {} units committed",
        units.len()
    );
    assert!(!run_dir(&e, run).join("finalized").exists());
    assert_eq!(
        std::fs::read_to_string(&heard).unwrap().trim(),
        "incomplete 0/1"
    );
    let o = worker(&e, &["--shard", "0/1", "--run-id", run], &[])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    check_run(&e, run);
    check_snapshot(&e, "a rerun after the window");
}

/// A config with one job `j` for `e` plus `extra` lines.
fn job_config(e: &Env, extra: &str) -> PathBuf {
    let cfg = e.dest.with_file_name("job.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.j]\nsource = \"{}\"\ndest = \"{}\"\n{extra}\n",
            e.src.display(),
            e.dest.display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn every_worker_runs_the_pre_command_and_the_run_its_post_command_and_notification_once() {
    let e = env();
    let out = e.dest.with_file_name("hooks");
    std::fs::create_dir(&out).unwrap();
    let http = http_server();
    // The pre command leaves one file per worker; the post command appends a line per
    // call (status, run, snapshot, worker index, count) and keeps its stdin.
    let cfg = job_config(
        &e,
        &format!(
            "pre_command = [\"/bin/sh\", \"-c\", \"[ \\\"$SNAPRING_RUN_ID\\\" != bad ] || [ \\\"$SNAPRING_SHARD_INDEX\\\" != 1 ] || exit 7; echo \\\"$SNAPRING_SHARD_INDEX/$SNAPRING_SHARD_COUNT $SNAPRING_RUN_ID\\\" > {o}/pre-$SNAPRING_RUN_ID-$SNAPRING_SHARD_INDEX\"]\n\
             post_command = [\"/bin/sh\", \"-c\", \"cat > {o}/stdin-$SNAPRING_RUN_ID-${{SNAPRING_SHARD_INDEX:-run}}; echo \\\"$SNAPRING_STATUS|$SNAPRING_RUN_ID|$SNAPRING_SNAPSHOT|$SNAPRING_SHARD_INDEX|$SNAPRING_SHARD_COUNT|$SNAPRING_LOG\\\" >> {o}/post\"]\n\
             notify = [\"hook\"]\nnotify_success = true\n\n[notify.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{}/n\"\n",
            http.port,
            o = out.display()
        ),
    );
    let cfg_s = cfg.to_string_lossy().into_owned();
    let run_all = |run: &str| -> Vec<Output> {
        let kids: Vec<Child> = (0..3)
            .map(|i| {
                let shard = format!("{i}/3");
                worker(
                    &e,
                    &["--config", &cfg_s, "--shard", &shard, "--run-id", run],
                    &[],
                )
                .spawn()
                .unwrap()
            })
            .collect();
        kids.into_iter()
            .map(|k| k.wait_with_output().unwrap())
            .collect()
    };
    let lines = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_to_string(out.join("post"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    let logs = e.dest.join(".snapring/logs");

    for o in run_all("good") {
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    for i in 0..3 {
        let pre = std::fs::read_to_string(out.join(format!("pre-good-{i}"))).unwrap();
        assert_eq!(pre.trim(), format!("{i}/3 good"));
    }
    check_snapshot(&e, "a run with hooks");
    // One post command for the run, by the finalizer, with the run's report.
    assert_eq!(
        lines(),
        vec![format!(
            "complete|good|daily.0||3|{}",
            logs.join("good.log").display()
        )]
    );
    let piped: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("stdin-good-run")).unwrap()).unwrap();
    assert_eq!(piped["id"], "good");
    assert_eq!(piped["shards"]["workers"], 3);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(e.dest.join(".snapring/runs/good.json")).unwrap())
            .unwrap();
    assert_eq!(record["post_command"]["ok"], true, "{record}");
    assert_eq!(record["notifications"][0]["ok"], true, "{record}");
    let got = http.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let body: serde_json::Value = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!(
        (body["status"].as_str(), body["run"].as_str()),
        (Some("complete"), Some("good"))
    );

    // Worker 1's pre command fails: it claims nothing, exits 1, and its post command
    // and notification say so for its part; workers 0 and 2 back up its units too,
    // and the run is published, with its own post command and notification.
    let outs = run_all("bad");
    assert_eq!(outs[1].status.code(), Some(1), "{}", text(&outs[1]));
    let err = stderr_of(&outs[1]);
    assert!(
        err.contains("worker 1/3 of run bad") && err.contains("pre_command"),
        "{err}"
    );
    for i in [0, 2] {
        assert_eq!(outs[i].status.code(), Some(0), "{}", text(&outs[i]));
    }
    assert!(!out.join("pre-bad-1").exists());
    let claims: Vec<String> = std::fs::read_dir(run_dir(&e, "bad").join("claims"))
        .unwrap()
        .map(|d| std::fs::read_to_string(d.unwrap().path()).unwrap())
        .collect();
    assert!(
        claims.iter().all(|c| !c.contains("\"worker\":1")),
        "{claims:?}"
    );
    check_run(&e, "bad");
    check_snapshot(&e, "a run one of whose workers' pre command failed");
    let l = lines();
    assert_eq!(l.len(), 3, "{l:?}");
    assert_eq!(
        l[0],
        format!("complete|bad|daily.0||3|{}", logs.join("bad.log").display())
    );
    assert_eq!(
        l[2],
        format!("failed|bad||1|3|{}", logs.join("bad.w1.log").display())
    );
    let piped: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("stdin-bad-1")).unwrap()).unwrap();
    assert!(
        piped["message"].as_str().unwrap().contains("exit"),
        "{piped}"
    );
    let got = http.got.lock().unwrap().clone();
    let mut seen: Vec<(String, String)> = got[1..]
        .iter()
        .map(|(_, b)| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            (
                v["status"].as_str().unwrap().into(),
                v["run"].as_str().unwrap().into(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("complete".into(), "bad".into()),
            ("failed".into(), "bad".into())
        ]
    );
    assert!(
        std::fs::read_to_string(logs.join("bad.w1.log"))
            .unwrap()
            .contains("pre_command")
    );
}

#[test]
fn snapring_finalize_with_the_job_runs_its_post_command_and_notification_for_the_run() {
    let e = env();
    let run = "byhand";
    let heard = e.dest.with_file_name("heard");
    let http = http_server();
    // A job with no source of its own (its workers are given `--source`) and a
    // folder: `finalize --config` needs neither `--source` nor `--folder`.
    let cfg = e.dest.with_file_name("job.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.j]\ndest = \"{}\"\nfolder = \"sub\"\n\
             post_command = [\"/bin/sh\", \"-c\", \"echo \\\"$SNAPRING_STATUS|$SNAPRING_RUN_ID|$SNAPRING_SNAPSHOT|$SNAPRING_SHARD_COUNT\\\" >> {}\"]\n\
             notify = [\"hook\"]\nnotify_success = true\n\n[notify.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{}/n\"\n",
            e.dest.display(),
            heard.display(),
            http.port
        ),
    )
    .unwrap();
    let cfg_s = cfg.to_string_lossy().into_owned();
    // The backup file system is there; the job's folder in it is made by the run.
    std::fs::create_dir(&e.dest).unwrap();
    let store = e.dest.join("sub");
    // The finalizing worker dies before it publishes: nothing is heard of the run.
    let kids: Vec<Child> = (0..2)
        .map(|i| {
            let shard = format!("{i}/2");
            worker(
                &e,
                &["--config", &cfg_s, "--shard", &shard, "--run-id", run],
                &[("SNAPRING_FAILPOINTS", "shard.finalize.before_publish=kill")],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(matches!(o.status.code(), None | Some(0)), "{}", text(&o));
    }
    assert!(store.join(".snapring/shards").join(run).is_dir());
    assert!(
        !store
            .join(".snapring/shards")
            .join(run)
            .join("finalized")
            .exists()
    );
    assert!(!heard.exists());
    assert!(http.got.lock().unwrap().is_empty());
    // `snapring finalize --config` publishes it with the job's post command and
    // notifier; a second one finds it finalized and says nothing more.
    for _ in 0..2 {
        let o = run_cmd(&e, "finalize", run, &["--config", &cfg_s], &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    assert_same_tree(
        &describe(&e.src),
        &describe(&store.join("daily.0")),
        "finalized by hand",
    );
    assert_eq!(
        std::fs::read_to_string(&heard).unwrap(),
        "complete|byhand|daily.0|2\n"
    );
    let got = http.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let body: serde_json::Value = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!(body["status"], "complete");
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.join(format!(".snapring/runs/{run}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(record["post_command"]["ok"], true, "{record}");
}

/// Every path under `root` with its mtime and link count (what a dry run must leave
/// as it was).
fn store_listing(root: &Path) -> Vec<(PathBuf, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.path().symlink_metadata().unwrap();
            out.push((
                e.path(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
                m.nlink(),
            ));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The plan lines of a dry run's stdout: (copies, links, the copy lines).
fn plan_lines(stdout: &[u8]) -> (u64, u64, Vec<String>) {
    let s = String::from_utf8_lossy(stdout);
    let copies: Vec<String> = s
        .lines()
        .filter(|l| l.starts_with("copy "))
        .map(String::from)
        .collect();
    let links = s.lines().filter(|l| l.starts_with("link ")).count() as u64;
    (copies.len() as u64, links, copies)
}

#[test]
fn a_dry_run_of_each_worker_covers_its_home_units_and_all_of_them_the_single_node_plan() {
    let e = env();
    let (code, _, err) = backup(&e.src, &e.dest, &["--jobs", "2"], &[]);
    assert_eq!(code, 0, "{err}");
    write(
        &e.src.join("flat/n005 with space"),
        b"changed since the backup",
    );
    write(
        &e.src.join("deep/d2/s1/f04"),
        b"changed too, and longer than before",
    );
    write(&e.src.join("deep/d1/new file"), b"new");
    let before = store_listing(&e.dest);
    let single = snapring(
        &[
            "backup".as_ref(),
            "--dry-run".as_ref(),
            "--source".as_ref(),
            e.src.as_os_str(),
            "--dest".as_ref(),
            e.dest.as_os_str(),
        ],
        &[("SNAPRING_CATALOG", "off")],
    );
    assert_eq!(single.status.code(), Some(0), "{}", text(&single));
    let (copies, links, _) = plan_lines(&single.stdout);
    assert_eq!(copies, 3, "{}", text(&single));
    let (mut c, mut l, mut lines, mut units) = (0, 0, Vec::new(), 0);
    for i in 0..3 {
        let shard = format!("{i}/3");
        let o = worker(
            &e,
            &["--dry-run", "--shard", &shard, "--run-id", "dry"],
            &[],
        )
        .output()
        .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains(&format!("worker {i}/3"))
                && out.contains("cut from manifest")
                && out.contains("nothing written"),
            "{out}"
        );
        // Each worker plans its home units; the rotation finalize would make is there.
        assert!(out.contains("publish daily.0"), "{out}");
        let (ci, li, ls) = plan_lines(&o.stdout);
        c += ci;
        l += li;
        lines.extend(ls);
        let j: serde_json::Value = {
            let o = worker(
                &e,
                &["--dry-run", "--json", "--shard", &shard, "--run-id", "dry"],
                &[],
            )
            .output()
            .unwrap();
            serde_json::from_slice(&o.stdout).unwrap()
        };
        units += j["dry_run"]["units"].as_array().unwrap().len();
        assert_eq!(j["dry_run"]["copies"], ci);
    }
    // Together the workers' home units are the whole tree: the same copies and links
    // as the single-node plan, each changed file in exactly one worker's plan.
    assert_eq!((c, l), (copies, links));
    // (Paths escaped, as plans print them.)
    for p in [
        "flat/n005%20with%20space",
        "deep/d2/s1/f04",
        "deep/d1/new%20file",
    ] {
        let n = lines
            .iter()
            .filter(|x| x.starts_with(&format!("copy {p} (")))
            .count();
        assert_eq!(n, 1, "{p}: {lines:?}");
    }
    // Nothing written: no run directory, the store as it was.
    assert!(!run_dir(&e, "dry").exists());
    assert!(
        store_listing(&e.dest) == before,
        "a dry run changed the store"
    );
    // The home units of the three are every unit of the run's real cut.
    assert_eq!(units, plan_units_of_cut(&e));
}

/// How many units a real run of 3 workers makes of `e`'s source (it writes its plan).
fn plan_units_of_cut(e: &Env) -> usize {
    for i in 0..3 {
        let shard = format!("{i}/3");
        let o = worker(e, &["--shard", &shard, "--run-id", "real"], &[])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    plan_units(e, "real").len()
}

#[test]
fn a_workers_bandwidth_limit_holds_for_the_units_it_builds_at_once() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    // Two directories of one 3 MiB file each: two units (the largest), built at once
    // by a worker's two lanes.
    for d in ["a", "b"] {
        write(&src.join(d).join("big"), &vec![d.as_bytes()[0]; 3 << 20]);
    }
    let t0 = Instant::now();
    let o = Command::new(bin())
        .args(["backup", "--jobs", "4", "--bwlimit", "4MiB", "--source"])
        .arg(&src)
        .arg("--dest")
        .arg(&dest)
        .args(["--shard", "0/1", "--run-id", "bw"])
        .env("SNAPRING_CATALOG", "off")
        .env_remove("SNAPRING_FAILPOINTS")
        .output()
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // 6 MiB read and 6 MiB written at 4 MiB/s: 3 s through one bucket (less its
    // 0.1 s burst). A bucket per unit let the two lanes go at twice the rate (about
    // 2 s here, start and finalize included).
    assert!(took >= Duration::from_millis(2600), "took {took:?}");
    assert_eq!(
        std::fs::read(dest.join("daily.0/b/big")).unwrap().len(),
        3 << 20
    );
}

#[test]
fn a_worker_stopped_while_it_only_waits_for_the_others_reports_nothing() {
    let e = env();
    let run = "waiting";
    let heard = e.dest.with_file_name("heard");
    let post = format!(
        "sh -c 'echo \"$SNAPRING_STATUS ${{SNAPRING_SHARD_INDEX:-run}}\" >> {}'",
        heard.display()
    );
    let pause = e.dest.with_file_name("pause");
    let fp = format!("walk.copy=pause:{}@1", pause.display());
    let with_post = |i: usize, vars: &[(&str, &str)]| {
        let shard = format!("{i}/2");
        worker(
            &e,
            &["--shard", &shard, "--run-id", run, "--post-command", &post],
            vars,
        )
        .spawn()
        .unwrap()
    };
    // Worker 1 holds a unit, held in its first copy; worker 0 backs up every other
    // unit and then only waits for it.
    let w1 = with_post(1, &[("SNAPRING_FAILPOINTS", fp.as_str())]);
    wait_for(&pause);
    let w0 = with_post(0, &[]);
    let units = plan_units(&e, run).len();
    let t0 = Instant::now();
    while std::fs::read_dir(run_dir(&e, run).join("done"))
        .map(|d| d.count())
        .unwrap_or(0)
        < units - 1
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "worker 0 did not finish its part"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = rustix::process::Pid::from_child(&w0);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let o = w0.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("held no unit"),
        "{}",
        text(&o)
    );
    // Nothing to report for it: no post command ran.
    assert!(!heard.exists());
    std::fs::remove_file(&pause).unwrap();
    let o = w1.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    check_run(&e, run);
    check_snapshot(&e, "after a waiting worker was stopped");
    assert_eq!(std::fs::read_to_string(&heard).unwrap(), "complete run\n");
}

#[test]
fn names_waiting_for_their_inodes_first_copy_leave_the_jobs_to_the_other_lane() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    // One inode with 8 names in 8 directories of one unit: the first name's copy is
    // held, and the other names' tasks wait for it. Every other unit holds only
    // symlinks (no copy to hold).
    write(&src.join("big/s0/f"), b"the one inode");
    for i in 1..8 {
        std::fs::create_dir_all(src.join(format!("big/s{i}"))).unwrap();
        std::fs::hard_link(src.join("big/s0/f"), src.join(format!("big/s{i}/f"))).unwrap();
    }
    for d in 0..30 {
        let dir = src.join(format!("small{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for l in 0..10 {
            std::os::unix::fs::symlink("target", dir.join(format!("l{l}"))).unwrap();
        }
    }
    let pause = t.path().join("pause");
    let fp = format!("walk.copy=pause:{}@1", pause.display());
    let w = Command::new(bin())
        .args(["backup", "--jobs", "4", "--source"])
        .arg(&src)
        .arg("--dest")
        .arg(&dest)
        .args(["--shard", "0/1", "--run-id", "lend"])
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_FAILPOINTS", &fp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&pause);
    // While the copy is held, the worker's other lane commits every other unit: the
    // waiting names lend it their permits (held, they took all 4 and it stalled).
    let rd = dest.join(".snapring/shards/lend");
    let units = {
        let p: serde_json::Value =
            serde_json::from_slice(&std::fs::read(rd.join("plan.json")).unwrap()).unwrap();
        p["units"].as_array().unwrap().len()
    };
    assert!(units > 4, "{units} units");
    let t0 = Instant::now();
    let done = || {
        std::fs::read_dir(rd.join("done"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    while done() < units - 1 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let committed = done();
    std::fs::remove_file(&pause).unwrap();
    let o = w.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        committed,
        units - 1,
        "units committed while the copy was held"
    );
    assert_same_tree(&describe(&src), &describe(&dest.join("daily.0")), "lend");
}

/// Two hosts (the dead worker runs in its own UTS namespace, as host `other-host`):
/// a holder on another host cannot be seen to have died, so its unit is taken over only
/// once its lease has lapsed (measured between the two claims' own times); the run is
/// published equal to the source.
#[test]
fn a_dead_worker_on_another_host_is_taken_over_only_after_its_lease() {
    let e = env();
    if !common::uts_namespaces() {
        return;
    }
    let lease = [("SNAPRING_SHARD_LEASE", "3s")];
    let c = worker(&e, &["--shard", "0/2", "--run-id", "hosts"], &lease);
    common::killed_on_host(&c, "other-host", "shard.before_commit=kill");
    let dir = e.dest.join(".snapring/shards/hosts/claims");
    let claims: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|x| x.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('u'))
        .collect();
    assert_eq!(claims.len(), 1, "{claims:?}");
    let unit = claims[0].split_once(".g").unwrap().0.to_string();
    let holder = |g: u32| -> serde_json::Value {
        let p = dir.join(format!("{unit}.g{g}"));
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    assert_eq!(holder(1)["host"], "other-host");
    let out = worker(&e, &["--shard", "1/2", "--run-id", "hosts"], &lease)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let at = |v: serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v["at"].as_str().unwrap()).unwrap()
    };
    // The lease runs from the claim file's mtime (its last renewal), as the taker reads
    // it: measured from the `at` written inside, a file time from the kernel's coarse
    // clock (up to a tick behind) made it look 2 ms short. `at` is kept to the
    // millisecond, so the taker's reading of its clock was up to 1 ms after it.
    let renewed: chrono::DateTime<chrono::Utc> = std::fs::metadata(dir.join(format!("{unit}.g1")))
        .unwrap()
        .modified()
        .unwrap()
        .into();
    let waited = at(holder(2)).to_utc() + chrono::TimeDelta::milliseconds(1) - renewed;
    assert!(
        waited >= chrono::TimeDelta::seconds(3),
        "taken over {waited:?} after the dead worker's last renewal, within the 3 s lease"
    );
    assert!(at(holder(2)) - at(holder(1)) >= chrono::TimeDelta::milliseconds(2900));
    assert_ne!(holder(2)["host"], "other-host");
    check_snapshot(&e, "a run whose worker died on another host");
}

/// The generation of each claim file of run `run` (`u0003.g2` → 2).
fn claim_generations(e: &Env, run: &str) -> Vec<(String, u32)> {
    std::fs::read_dir(run_dir(e, run).join("claims"))
        .map(|d| {
            d.map(|x| x.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('u'))
                .filter_map(|n| {
                    let (u, g) = n.split_once(".g")?;
                    Some((u.to_string(), g.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A retried pod: index 0's first process runs on another host and is SIGKILLed mid-unit;
/// its rerun here takes over the claim the dead one made before the rerun started at
/// once, not after the 60 s lease, and the run completes.
#[test]
fn a_rerun_on_another_host_takes_its_predecessors_claim_over_at_once() {
    let e = env();
    if !common::uts_namespaces() {
        return;
    }
    let run = "retried";
    let lease = [("SNAPRING_SHARD_LEASE", "60s")];
    let c = worker(&e, &["--shard", "0/1", "--run-id", run], &lease);
    common::killed_on_host(&c, "other-host", "walk.copy=kill@20");
    // Its claims: the unit it died in, after any it committed first (a small anchor).
    let claims = claim_generations(&e, run);
    let done = std::fs::read_dir(run_dir(&e, run).join("done")).map_or(0, |d| d.count());
    assert!(claims.iter().all(|(_, g)| *g == 1), "{claims:?}");
    assert!(claims.len() > done, "no unit left claimed: {claims:?}");
    let t0 = Instant::now();
    let out = worker(&e, &["--shard", "0/1", "--run-id", run], &lease)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the rerun took {:?}: it waited for the lease",
        t0.elapsed()
    );
    let commits = check_run(&e, run);
    assert!(
        commits.iter().any(|c| c["generation"] == 2),
        "the dead process's unit is committed by its second generation: {commits:?}"
    );
    check_snapshot(&e, "a run whose first process died on another host");
}

/// A node partition: Kubernetes starts a second pod for an index whose pod it cannot
/// reach, and the first one still runs. Two live processes of index 0 on two hosts: the
/// later one may take over the claims the earlier one made before it started (as a
/// retried pod resumes its dead predecessor's units at once), but the earlier one must
/// not take over the later one's claims before their lease lapses. Taking them at once
/// both ways, each took back the unit the other had just taken, its build wasted.
///
/// Here the first process (this host) holds its first unit until the second (another
/// host) has claimed a unit and is held in it; then the first builds everything else
/// and must leave that unit alone. Released, the second commits it.
#[test]
fn a_live_twin_on_another_host_keeps_the_units_it_claimed() {
    let e = env();
    if !common::uts_namespaces() {
        return;
    }
    let run = "partition";
    let (hold_a, hold_b) = (
        e.dest.with_file_name("hold-a"),
        e.dest.with_file_name("hold-b"),
    );
    let [fa, fb] = [&hold_a, &hold_b].map(|p| format!("shard.unit_started=pause:{}", p.display()));
    let va = [
        ("SNAPRING_SHARD_LEASE", "60s"),
        ("SNAPRING_FAILPOINTS", fa.as_str()),
    ];
    let vb = [
        ("SNAPRING_SHARD_LEASE", "60s"),
        ("SNAPRING_FAILPOINTS", fb.as_str()),
    ];
    // Whatever fails, the held processes go on (and end) once the test returns.
    struct Release<'p>(&'p [&'p Path]);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            for p in self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let _release = Release(&[&hold_a, &hold_b]);
    let first = spawn(&e, 0, 1, run, &va);
    wait_for(&hold_a);
    let c = worker(&e, &["--shard", "0/1", "--run-id", run], &vb);
    let second = common::on_host(&c, "other-host")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&hold_b);
    let twins = claim_generations(&e, run);
    assert_eq!(twins.len(), 2, "{twins:?}");
    std::fs::remove_file(&hold_a).unwrap();
    let units = plan_units(&e, run).len();
    let done = || {
        std::fs::read_dir(run_dir(&e, run).join("done")).map_or(0, |d| {
            d.filter(|x| {
                !x.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count()
        })
    };
    let t0 = Instant::now();
    while done() < units - 1 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        done(),
        units - 1,
        "the first process built every other unit"
    );
    // It looks for work every 150 ms meanwhile.
    std::thread::sleep(Duration::from_secs(1));
    let gens = claim_generations(&e, run);
    std::fs::remove_file(&hold_b).unwrap();
    assert!(
        gens.iter().all(|(_, g)| *g == 1),
        "a unit the twin holds was taken over: {gens:?}"
    );
    for c in [first, second] {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    check_run(&e, run);
    check_snapshot(&e, "two live processes of one index on two hosts");
}

/// Two pods of one node with `hostNetwork: true`: the same host name, not the same pid
/// namespace. Worker 0 runs in a pid namespace of its own, under a pid that no process
/// has here, and is held while it sizes the source for the plan; worker 1 must not
/// take `kill(pid, 0)` (no such process here) for the planner's death and plan too:
/// with a long lease it waits for worker 0's plan.
#[test]
fn a_live_planner_in_another_pid_namespace_of_this_host_is_waited_for() {
    let e = env();
    if !common::pid_namespaces() {
        return;
    }
    let run = "pid-ns";
    let lease = ("SNAPRING_SHARD_LEASE", "10m");
    let pause = e.dest.with_file_name("pause");
    let fp = format!("shard.size=pause:{}@2", pause.display());
    let c = worker(
        &e,
        &["--shard", "0/2", "--run-id", run],
        &[lease, ("SNAPRING_FAILPOINTS", &fp)],
    );
    let (w0, free) = common::spawn_in_pid_namespace(&c);
    wait_for(&pause);
    let claim = |g: u32| run_dir(&e, run).join(format!("planning.g{g}"));
    let holder: serde_json::Value =
        serde_json::from_slice(&std::fs::read(claim(1)).unwrap()).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(holder["host"], host.trim(), "{holder}");
    assert_eq!(holder["pid"], free, "{holder}");
    assert!(
        !Path::new(&format!("/proc/{free}")).exists(),
        "pid {free} was taken here meanwhile: the test proves nothing"
    );
    let log = e.dest.with_file_name("w1.log");
    let w1 = worker(&e, &["-v", "--shard", "1/2", "--run-id", run], &[lease])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !claim(2).exists()
        && !std::fs::read_to_string(&log)
            .unwrap()
            .contains("waiting for another worker's shard plan")
    {
        assert!(t0.elapsed() < Duration::from_secs(60), "worker 1 is stuck");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !claim(2).exists(),
        "worker 1 took the planning over from a live worker of another pid namespace"
    );
    std::fs::remove_file(&pause).unwrap();
    for (i, w) in [w0, w1].into_iter().enumerate() {
        let o = w.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "worker {i}: {}", text(&o));
    }
    assert!(!claim(2).exists());
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir(&e, run).join("plan.json")).unwrap())
            .unwrap();
    assert!(
        plan["created_by"].as_str().unwrap().ends_with("worker 0"),
        "{plan}"
    );
    check_run(&e, run);
    check_snapshot(&e, "a run planned in another pid namespace");
}

/// The plan of an incremental run is cut by the previous manifest: its spine
/// directories (cut into units of their own) that are gone from the source since, or a
/// file now, must not cost the run an entry (the file left out) nor a problem (a
/// directory deleted between two backups is no error). The run is `complete` and its
/// snapshot equals the source.
#[test]
fn spine_directories_of_the_previous_snapshot_replaced_or_deleted_before_the_next_run() {
    let e = env();
    let out = spawn(&e, 0, 1, "m1", &[]).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir(&e, "m1").join("plan.json")).unwrap())
            .unwrap();
    let spine: Vec<String> = plan["spine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    assert!(
        spine.contains(&"deep".to_string()) && spine.contains(&"flat".to_string()),
        "deep and flat are cut into units of their own: {spine:?}"
    );
    std::fs::remove_dir_all(e.src.join("deep")).unwrap();
    write(&e.src.join("deep"), b"a file now\n");
    std::fs::remove_dir_all(e.src.join("flat")).unwrap();
    // What is left is under a tenth of the previous snapshot's files: allowed (the
    // guard against a nearly empty source is a_shard_run_that_keeps_far_fewer_files_*).
    let out = worker(
        &e,
        &["--shard", "0/1", "--run-id", "m2", "--allow-empty"],
        &[],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rec = run_record(&e, "m2");
    assert_eq!(rec["status"], "complete", "{rec}");
    check_snapshot(&e, "a run after spine directories changed kind or vanished");
    let st = run_cmd(&e, "status", "m2", &["--json"], &[]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["sized_by"], "walk", "{st}");
}

/// A spine directory whose mode lacks write permission (0500: read-only data), with
/// an xattr and old times, backed up by workers that, like an
/// unprivileged user, are refused writes into it (no CAP_DAC_OVERRIDE): each unit's
/// walk set the source's 0500 on its work directory's root, so the other units'
/// entries could not be moved into it, nor the anchor's work directory renamed into
/// the run's tree (EACCES; the run could not be finalized either). The snapshot has
/// the directory's own metadata, which finalize applies.
#[test]
fn a_read_only_spine_directory_is_backed_up_by_workers_without_dac_override() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for f in 0..60 {
        write(
            &src.join(format!("ro/f{f:02}")),
            "r".repeat(f * 10).as_bytes(),
        );
    }
    for f in 0..20 {
        write(&src.join(format!("rw/g{f:02}")), b"g");
    }
    let ro = src.join("ro");
    set_xattr(&ro, "user.note", b"read only");
    chmod(&ro, 0o500);
    set_mtime(&ro, 1_000_000_000, 17);
    let dest = t.path().join("dest");
    let kids: Vec<Child> = (0..2)
        .map(|i| {
            Command::new("setpriv")
                .args([
                    "--bounding-set=-dac_override,-dac_read_search",
                    "--inh-caps=-dac_override,-dac_read_search",
                ])
                .arg(bin())
                .args(["backup", "--jobs", "2", "--source"])
                .arg(&src)
                .arg("--dest")
                .arg(&dest)
                .args(["--shard", &format!("{i}/2"), "--run-id", "ro"])
                .env("SNAPRING_CATALOG", "off")
                .env_remove("SNAPRING_FAILPOINTS")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join(".snapring/shards/ro/plan.json")).unwrap())
            .unwrap();
    let ro_units = plan["units"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["dir"] == "ro")
        .count();
    assert!(ro_units > 1, "ro is cut into name ranges: {plan}");
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "a read-only spine directory",
    );
}

/// A `user.*` attribute the backup file system refuses (an NFS export without them:
/// latencyfs `--no-user-xattrs`) on a spine directory is a problem of the shard run, as
/// of a single-node run: the units' walks leave their roots, the spine directories, to
/// finalize, which reports what it could not set.
#[test]
fn an_xattr_the_store_refuses_on_a_spine_directory_is_a_problem_as_in_a_single_node_run() {
    let e = env();
    for d in ["", "flat", "deep/d1"] {
        set_xattr(&e.src.join(d), "user.note", d.as_bytes());
    }
    let t = tempfile::tempdir().unwrap();
    let (under, mnt) = (t.path().join("under"), t.path().join("mnt"));
    std::fs::create_dir(&under).unwrap();
    let Some(_fs) = FaultFs::mount(&under, &mnt, &["--no-user-xattrs"]) else {
        return;
    };
    let refused = |problems: &serde_json::Value| -> std::collections::BTreeSet<String> {
        problems
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["error"].as_str().unwrap_or("").contains("user.note"))
            .map(|p| p["path"].as_str().unwrap().to_string())
            .collect()
    };
    let (code, rep, err) = backup(&e.src, &mnt.join("single"), &[], &[]);
    assert_eq!(code, 2, "a partial run: {err}");
    let single = refused(&rep["problems"]);
    assert_eq!(single.len(), 3, "{rep}");
    let s = Env {
        _t: tempfile::tempdir().unwrap(),
        src: e.src.clone(),
        dest: mnt.join("shard"),
    };
    let kids: Vec<Child> = (0..2).map(|i| spawn(&s, i, 2, "x", &[])).collect();
    for c in kids {
        let o = c.wait_with_output().unwrap();
        assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(&o));
    }
    let rec = run_record(&s, "x");
    assert_eq!(rec["status"], "partial", "{rec}");
    // All three are spine directories here (without finalize's report, none of them
    // was listed).
    assert_eq!(refused(&rec["problems"]), single, "{rec}");
}

/// Files whose `user.*` attribute the store refuses (latencyfs `--no-user-xattrs`) are
/// reported when copied; the next shard run links them unchanged and says so once, in
/// the run's warnings, as a single-node run does: finalize adds up the units' counts.
/// (Before, the units' counts were dropped: linked silently, `complete`, every run.)
#[test]
fn files_linked_without_xattrs_the_store_refused_are_warned_of_in_a_shard_run() {
    let e = env();
    let files = ["flat/n010 with space", "deep/d1/s0/f03", "deep/d2/s1/f04"];
    for f in files {
        set_xattr(&e.src.join(f), "user.note", f.as_bytes());
    }
    let t = tempfile::tempdir().unwrap();
    let (under, mnt) = (t.path().join("under"), t.path().join("mnt"));
    std::fs::create_dir(&under).unwrap();
    let Some(_fs) = FaultFs::mount(&under, &mnt, &["--no-user-xattrs"]) else {
        return;
    };
    let s = Env {
        _t: tempfile::tempdir().unwrap(),
        src: e.src.clone(),
        dest: mnt.join("shard"),
    };
    let run = |id: &str| {
        let kids: Vec<Child> = (0..2).map(|i| spawn(&s, i, 2, id, &[])).collect();
        for c in kids {
            let o = c.wait_with_output().unwrap();
            assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(&o));
        }
        run_record(&s, id)
    };
    let rec = run("x");
    assert_eq!(rec["status"], "partial", "{rec}");
    let refused: std::collections::BTreeSet<&str> = rec["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["error"].as_str().unwrap_or("").contains("user.note"))
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(refused.len(), files.len(), "{rec}");
    // Unchanged: linked, not copied to be refused again (`attrs`, a directory with a
    // `user.*` attribute, is made every run and refused every run: a problem of each).
    let rec = run("y");
    assert_eq!(rec["files_transferred"], 0, "{rec}");
    assert!(
        rec["problems"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| !p["error"].as_str().unwrap_or("").contains("user.note")),
        "{rec}"
    );
    // Four: the three and odd_tree's `attrs/file` (`user.color`, `user.bin`), refused
    // by the first run too; the names sorted.
    let w = "4 unchanged entries linked without extended attributes the backup file system refused when they were copied (user.bin, user.color, user.note)";
    assert!(
        rec["warnings"]
            .as_array()
            .is_some_and(|ws| ws.iter().any(|x| x.as_str().unwrap_or("").contains(w))),
        "{rec}"
    );
}

/// Review 7: a finalize that fails after the run's tree is staged (its publish refused
/// at each step, or the process killed there) while its clean-up of the build
/// directories still runs in a thread of its own: the failing process exits without
/// waiting for it, publishes nothing, and `snapring finalize` (or a rerun worker)
/// publishes the staged tree once.
#[test]
fn a_finalize_failing_or_killed_after_staging_with_its_clean_up_running_is_completed() {
    for (i, point) in [
        "shard.finalize.before_publish=error",
        "journal.before_write=error",
        "rotate.step=error",
        "journal.after_state=error",
        "journal.after_write=kill",
        "rotate.step=kill",
        "journal.after_record=kill",
        "journal.before_remove=kill",
        // Killed in the clean-up itself, as it starts (the publish under way or not).
        "shard.finalize.cleanup=kill",
    ]
    .into_iter()
    .enumerate()
    {
        let e = env();
        let run = "late";
        let fp: &'static str = match point.starts_with("shard.finalize.cleanup") {
            true => point,
            false => {
                Box::leak(format!("shard.finalize.cleanup=sleep:1500;{point}").into_boxed_str())
            }
        };
        let outs = run_workers(&e, 3, run, &[], |_| vec![("SNAPRING_FAILPOINTS", fp)]);
        let killed = point.ends_with("kill");
        assert!(
            outs.iter().any(|o| if killed {
                o.status.code().is_none()
            } else {
                o.status.code() == Some(1)
            }),
            "{point}: {}",
            outs.iter().map(text).collect::<Vec<_>>().join("\n")
        );
        // Killed past the journal's write, the others' finalize (waiting for the lock)
        // may have rolled it forward and finalized.
        assert!(
            killed || !run_dir(&e, run).join("finalized").exists(),
            "{point}"
        );
        let o = if i % 2 == 0 {
            run_cmd(&e, "finalize", run, &[], &[])
        } else {
            spawn(&e, 1, 3, run, &[]).wait_with_output().unwrap()
        };
        assert_eq!(o.status.code(), Some(0), "{point}: {}", text(&o));
        check_run(&e, run);
        check_snapshot(&e, point);
        assert_eq!(snapshot_names(&e.dest), vec!["daily.0"], "{point}");
        assert!(!run_dir(&e, run).join("joins").exists(), "{point}");
    }
}

/// Review 7: the merged manifest's blocks come in the same order whether finalize kept
/// the parts it read in its first pass, read them all again, or some of each (the
/// order is that of the plan's units, then the spine deepest first).
#[test]
fn the_merged_manifest_has_its_blocks_in_one_order_whatever_parts_are_kept() {
    // One run, finalized in three copies of its store: one plan for all three.
    let e = env();
    let run = "order";
    killed_before_staging(&e, run);
    let mut orders = Vec::new();
    for (name, kept) in [("none", "0"), ("some", "40"), ("all", "100000")] {
        let dest = e.dest.with_file_name(name);
        let st = Command::new("cp")
            .arg("-a")
            .arg(&e.dest)
            .arg(&dest)
            .status()
            .unwrap();
        assert!(st.success());
        let o = snapring(
            &[
                "finalize".as_ref(),
                "--dest".as_ref(),
                dest.as_os_str(),
                "--run-id".as_ref(),
                run.as_ref(),
            ],
            &[("SNAPRING_FINALIZE_KEPT_ENTRIES", kept)],
        );
        assert_eq!(o.status.code(), Some(0), "{name}: {}", text(&o));
        let mf =
            std::fs::read_to_string(dest.join(format!(".snapring/manifests/{run}.mf"))).unwrap();
        assert!(
            mf.lines().filter(|l| l.starts_with("D ")).count() > 8,
            "{name}: {mf}"
        );
        orders.push((name, mf));
    }
    for (name, b) in &orders[1..] {
        assert_eq!(b, &orders[0].1, "{name} against none");
    }
}

/// Review 7: home units are claimed straight away (an exclusive create of generation
/// 1, no listing first). Hostile: two processes for each index with two lanes each,
/// one of them killed just after taking its second unit and rerun at once while the
/// others run. Every unit is committed once, and each unit's claims are generations
/// 1..=n with none missing (a generation 1 refused because it exists, never made
/// beside a newer one).
#[test]
fn twins_with_two_lanes_and_a_killed_rerun_claim_each_unit_in_generation_order() {
    let e = env();
    let run = "crowd";
    let go = |i: usize, vars: &[(&str, &str)]| -> Child {
        let shard = format!("{i}/3");
        worker_with_jobs(&e, "4", &["--shard", &shard, "--run-id", run], vars)
            .spawn()
            .unwrap()
    };
    let lease = [("SNAPRING_SHARD_LEASE", "20s")];
    let killed = go(0, &[("SNAPRING_FAILPOINTS", "shard.unit_started=kill@2")]);
    let mut kids: Vec<Child> = [0, 1, 1, 2, 2].iter().map(|&i| go(i, &lease)).collect();
    let o = killed.wait_with_output().unwrap();
    assert!(
        o.status.code().is_none() || o.status.code() == Some(0),
        "{}",
        text(&o)
    );
    kids.push(go(0, &lease));
    for c in kids {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    check_run(&e, run);
    check_snapshot(&e, "twins with two lanes");
    let mut gens: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    for (u, g) in claim_generations(&e, run) {
        gens.entry(u).or_default().push(g);
    }
    assert_eq!(gens.len(), plan_units(&e, run).len(), "{gens:?}");
    for (u, mut g) in gens {
        g.sort();
        assert_eq!(g, (1..=g.len() as u32).collect::<Vec<_>>(), "{u}");
    }
}

/// Review 7: finalize finds the units left to place by one listing of `work/`. Worker
/// 0 dies in the middle of moving a committed unit, worker 1 mid-unit (its work
/// directory stays as generation 1 of a unit worker 2 takes over at generation 2 once
/// the lease lapses): worker 2's finalize places the half-moved unit and leaves the
/// stale generation out, and the snapshot is the source.
#[test]
fn finalize_places_the_half_moved_unit_and_not_a_stale_generation() {
    let e = env();
    let run = "leftover";
    let lease = ("SNAPRING_SHARD_LEASE", "2s");
    let w0 = spawn(
        &e,
        0,
        3,
        run,
        &[lease, ("SNAPRING_FAILPOINTS", "shard.move=kill@1")],
    );
    let w1 = spawn(
        &e,
        1,
        3,
        run,
        &[lease, ("SNAPRING_FAILPOINTS", "walk.copy=kill@20")],
    );
    let (o0, o1) = (
        w0.wait_with_output().unwrap(),
        w1.wait_with_output().unwrap(),
    );
    assert!(o0.status.code().is_none(), "{}", text(&o0));
    assert!(o1.status.code().is_none(), "{}", text(&o1));
    let work = run_dir(&e, run).join("work");
    let stale: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!stale.is_empty(), "{stale:?}");
    let o = spawn(&e, 2, 3, run, &[lease]).wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}\n{}", text(&o), text(&o0));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("finalized: complete"),
        "{}",
        text(&o)
    );
    let commits = check_run(&e, run);
    assert!(commits.iter().any(|c| c["generation"] == 2), "{commits:?}");
    check_snapshot(&e, "units placed by finalize");
}

/// Review 7: finalize writes the run's record once before its publish, with the
/// snapshots the publish will expire. Killed there (or in the publish before its
/// journal is written) and marked `incomplete` by the next process's repair ("nothing
/// was published"), the record must not say it expired the store's snapshots: they
/// are all still there (it said `expired daily.0` for a `daily.0` the next backup
/// rotated and kept).
#[test]
fn a_finalize_killed_before_its_publish_leaves_a_record_that_expired_nothing() {
    for fp in [
        "shard.finalize.before_publish=kill",
        "journal.before_write=kill",
    ] {
        let e = env();
        let (code, rep, err) = backup(&e.src, &e.dest, &["--jobs", "2"], &[]);
        assert_eq!(code, 0, "{err} {rep}");
        killed_at(&e, "dead", &["--retain", "1"], fp);
        assert_eq!(
            run_record(&e, "dead")["expired"],
            serde_json::json!(["daily.0"])
        );
        // The next backup repairs the store first: the dead finalizer's run is marked
        // incomplete.
        let (code, rep, err) = backup(&e.src, &e.dest, &["--jobs", "2"], &[]);
        assert_eq!(code, 0, "{err} {rep}");
        assert_eq!(snapshot_names(&e.dest), vec!["daily.0", "daily.1"], "{fp}");
        let rec = run_record(&e, "dead");
        assert_eq!(rec["status"], "incomplete", "{fp}: {rec}");
        assert_eq!(rec["expired"], serde_json::json!([]), "{fp}: {rec}");
        let o = snapring(
            &[
                "show".as_ref(),
                "--dest".as_ref(),
                e.dest.as_os_str(),
                "dead".as_ref(),
            ],
            &[],
        );
        assert!(!text(&o).contains("expired daily"), "{fp}: {}", text(&o));
    }
}

/// A shard run continues its label's snapshots as a single-node run does: a run of
/// another tree is refused (it expired the ring's history, and the next single-node
/// run of the real source was refused instead), and without a `retain` of its own it
/// keeps what the label kept (it kept 7 of a ring kept at 10). A shard run with
/// `--prefix` and a single-node run with the same prefix are one history (the shard
/// records the source with the prefix joined).
#[test]
fn a_shard_run_keeps_one_history_per_label() {
    let e = env();
    let single = |src: &Path, dest: &Path, extra: &[&str]| {
        let mut c = Command::new(bin());
        c.args(["backup", "--no-progress", "--source"])
            .arg(src)
            .arg("--dest")
            .arg(dest)
            .args(extra)
            .env("SNAPRING_CATALOG", "off");
        c.output().unwrap()
    };
    for _ in 0..3 {
        let o = single(&e.src, &e.dest, &["--retain", "10"]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let other = e.dest.parent().unwrap().join("other");
    write(&other.join("x"), b"another tree");
    let o = single(&other, &e.dest, &["--shard", "0/1", "--run-id", "other-1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("snapshots in this store are of"),
        "{}",
        text(&o)
    );
    assert_eq!(snapshot_names(&e.dest).len(), 3);
    // The same source without --retain: the plan keeps the ring's 10.
    let o = worker(&e, &["--shard", "0/1", "--run-id", "same-1"], &[])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir(&e, "same-1").join("plan.json")).unwrap())
            .unwrap();
    assert_eq!(plan["retain"], 10, "{plan}");
    assert_eq!(snapshot_names(&e.dest).len(), 4);
    // A --retain lower than the ring's is obeyed and warned of in the run's report, as
    // a single-node run's is (the plan's warning was only logged).
    let o = worker(
        &e,
        &["--shard", "0/1", "--run-id", "low-1", "--retain", "2"],
        &[],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(snapshot_names(&e.dest).len(), 2);
    let said = "retain 2 is lower than what the daily snapshots had (10 in the label's last run same-1): this run expires 3 snapshots: daily.1, daily.2, daily.3";
    let warnings = run_record(&e, "low-1")["warnings"].clone();
    assert!(
        warnings
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w.as_str() == Some(said))),
        "{warnings}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("warning: {said}")), "{out}");

    // --prefix: a shard run, then a single-node run of the same source and prefix (a
    // name the records escape: a space).
    write(&e.src.join("My Docs/f"), b"a document");
    let dest2 = e.dest.parent().unwrap().join("dest2");
    let o = single(
        &e.src,
        &dest2,
        &["--shard", "0/1", "--run-id", "p-1", "--prefix", "My Docs"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = single(&e.src, &dest2, &["--prefix", "My Docs"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(snapshot_names(&dest2).len(), 2);
}

/// A worker whose source is missing begins no store, as a single-node run does
/// (`guards::a_dest_holding_data_is_not_made_a_store`): there would be nothing in it but
/// a shard run that cannot start. With a pre_command (which may mount the source) the
/// store is begun and the command runs.
#[test]
fn a_worker_with_a_missing_source_begins_no_store() {
    let e = env();
    std::fs::remove_dir_all(&e.src).unwrap();
    let o = worker(&e, &["--shard", "1/2", "--run-id", "gone-1"], &[])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr_of(&o).contains("does not exist"), "{}", text(&o));
    assert!(!e.dest.exists(), "a store was begun for a missing source");
    let made = format!("mkdir -p {}", e.src.display());
    let o = worker(
        &e,
        &[
            "--shard",
            "0/1",
            "--run-id",
            "made-1",
            "--pre-command",
            &format!("sh -c '{made}'"),
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(e.dest.join(".snapring").is_dir(), "{}", text(&o));
    assert!(e.src.is_dir(), "the pre_command did not run: {}", text(&o));
}

/// A worker whose window ends during a copy under `--bwlimit` names the copy it gave
/// up and the time it needs at the limit, as a single-node run does
/// (`interrupt::a_window_ends_a_throttled_copy_and_the_wait_reported_is_the_time_waited`):
/// a file the window never leaves time for is never backed up, run after run, and a
/// worker said only that its unit is resumed by a rerun.
#[test]
fn a_worker_whose_window_ends_a_throttled_copy_names_the_copy() {
    let e = env();
    write(&e.src.join("big"), &vec![b'x'; 64 << 20]);
    let o = worker(
        &e,
        &[
            "--shard",
            "0/1",
            "--run-id",
            "slow-1",
            "--bwlimit",
            "1MiB",
            "--window",
            "1s",
        ],
        &[],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("warning: the stop gave up")
            && out.contains("big (67108864 bytes, about 128 s at the limit)")
            && out.contains("widen the window or raise --bwlimit"),
        "{}",
        text(&o)
    );
}

/// Two runs on one store (two labels, as two CronJobs): the run whose units are all
/// committed while the other run's workers still hold the store cannot finalize. Its
/// worker said "finalize is left to the worker still holding the store" and exited 0,
/// and nobody ever finalized it (the other run's workers do not): a night's backup
/// lost with every process successful. Now it exits 75 (retry) saying the run is not
/// published, and its rerun, once the store is free, publishes it.
#[test]
fn a_run_blocked_from_finalizing_by_another_runs_workers_exits_75_and_its_rerun_publishes() {
    let e = env();
    let pause = e.dest.with_file_name("pause");
    let lease = ("SNAPRING_SHARD_LEASE", "1s");
    let points = format!("walk.copy=pause:{}@2", pause.display());
    let mut weekly = worker(
        &e,
        &[
            "--shard", "0/1", "--run-id", "weekly-1", "--label", "weekly",
        ],
        &[lease, ("SNAPRING_FAILPOINTS", &points)],
    )
    .spawn()
    .unwrap();
    wait_for(&pause);
    let daily = || {
        worker(
            &e,
            &["--shard", "0/1", "--run-id", "daily-1", "--label", "daily"],
            &[lease],
        )
        .output()
        .unwrap()
    };
    let o = daily();
    assert_eq!(o.status.code(), Some(75), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("every unit is committed, but the store was held by"),
        "{}",
        text(&o)
    );
    assert!(!e.dest.join("daily.0").exists());
    std::fs::remove_file(&pause).unwrap();
    let w = weekly.wait().unwrap();
    assert_eq!(w.code(), Some(0));
    assert!(e.dest.join("weekly.0").is_dir());
    let o = daily();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("finalized: complete"),
        "{}",
        text(&o)
    );
    assert!(e.dest.join("daily.0").is_dir());
    check_snapshot(&e, "the daily run, published by its rerun");
}

/// A worker on a node where the source is not mounted (an empty mount point, a failed
/// automount: another directory at the same path) is refused, exit 1, before it claims
/// anything, and the others take its units: it committed its units empty, and the run
/// was published `complete` with 40–65% of the files missing. Here the node is
/// simulated by putting another directory at the source's path while the worker starts.
#[test]
fn a_worker_whose_source_is_another_directory_than_the_plans_is_refused() {
    let e = env();
    let pause = e.dest.with_file_name("pause");
    let points = format!("shard.unit_started=pause:{}@1", pause.display());
    let mut w0 = spawn(&e, 0, 2, "unmounted", &[("SNAPRING_FAILPOINTS", &points)]);
    wait_for(&pause);
    let real = e.src.with_file_name("src-real");
    std::fs::rename(&e.src, &real).unwrap();
    std::fs::create_dir_all(e.src.join("lost+found")).unwrap();
    let mut w1 = spawn(&e, 1, 2, "unmounted", &[]);
    let t0 = Instant::now();
    while w1.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped = w1.try_wait().unwrap().is_some();
    if !stopped {
        let _ = w1.kill();
    }
    let o = w1.wait_with_output().unwrap();
    assert!(stopped, "worker 1 ran on past 60 s: {}", text(&o));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("is not the directory this run was planned from")
            && stderr_of(&o).contains("is the source file system mounted on this node?"),
        "{}",
        text(&o)
    );
    assert!(
        !run_dir(&e, "unmounted")
            .join("done")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()),
        "the refused worker committed nothing"
    );
    std::fs::remove_dir_all(&e.src).unwrap();
    std::fs::rename(&real, &e.src).unwrap();
    std::fs::remove_file(&pause).unwrap();
    let out = w0.wait().unwrap();
    assert_eq!(out.code(), Some(0));
    check_snapshot(&e, "published by the worker whose source was the plan's");
}

/// Damage `verify` found in the previous snapshot (a rotten file of a hard-link group
/// whose names fall in several units, a rotten file of a name-range unit) is copied
/// afresh by the workers, as by a single-node backup, not linked into the new snapshot.
#[test]
fn shard_workers_copy_afresh_what_verify_found_damaged() {
    let e = env();
    let (code, rep, err) = backup(&e.src, &e.dest, &["--jobs", "2"], &[]);
    assert_eq!(code, 0, "{err} {rep}");
    let old = e.dest.join("daily.0");
    rot(&old.join("deep/d0/s0/f00"));
    rot(&old.join("flat/n005 with space"));
    let out = snapring(
        &["verify".as_ref(), "--dest".as_ref(), e.dest.as_os_str()],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let workers: Vec<Child> = (0..3).map(|i| spawn(&e, i, 3, "healed", &[])).collect();
    for w in workers {
        let o = w.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    check_run(&e, "healed");
    check_snapshot(&e, "the workers' snapshot after the damage");
    for p in [
        "deep/d0/s0/f00",
        "flat/zz-link-to-deep",
        "flat/n005 with space",
    ] {
        assert_ne!(
            ino(&e.dest.join("daily.0").join(p)),
            ino(&e.dest.join("daily.1").join(p)),
            "{p}: copied afresh"
        );
    }
}

/// `big`, above every unit's directory, swapped for a symlink to a directory outside
/// the source between a unit's claim and its open (swapped back once the unit's
/// directory was listed): the worker opened `source/big/subK` by its path, followed
/// the symlink, and the snapshot held the outside files (`SECRET`). Now each unit's
/// directory is opened beneath the source's root with no symlink followed: the unit
/// has nothing (a problem), and nothing from outside reaches the store.
#[test]
fn a_directory_above_a_unit_swapped_for_a_symlink_is_not_followed_out_of_the_source() {
    let t = tempfile::tempdir().unwrap();
    let (src, outside) = swap_tree(t.path());
    let e = Env {
        src,
        dest: t.path().join("dest"),
        _t: t,
    };
    let (claimed, listed) = (e._t.path().join("claimed"), e._t.path().join("listed"));
    let fp = format!(
        "shard.unit_started=pause:{}@3;walk.listed=pause:{}@3",
        claimed.display(),
        listed.display()
    );
    let w = spawn(&e, 0, 1, "swap", &[("SNAPRING_FAILPOINTS", &fp)]);
    // The plan's order: the root's unit, `big`'s, then `big/sub0`'s (the third).
    let o = swap_above_unit(w, &e.src, &outside, &claimed, &listed, || {
        claimed_unit_dir(&run_cmd(&e, "status", "swap", &["--json"], &[]))
    });
    assert!(
        secrets_under(&e.dest).is_empty(),
        "files from outside the source in the store: {:?}\n{}",
        secrets_under(&e.dest),
        text(&o)
    );
    assert!(
        text(&o).contains("big/sub"),
        "the unit's directory is not named: {}",
        text(&o)
    );
}

/// The directory of the one unit `status --json` (its output `o`) shows claimed.
fn claimed_unit_dir(o: &Output) -> String {
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    let claimed: Vec<&serde_json::Value> = st["unit_list"]
        .as_array()
        .map(|l| l.iter().filter(|u| u["state"] == "claimed").collect())
        .unwrap_or_default();
    assert_eq!(claimed.len(), 1, "{st}");
    claimed[0]["dir"].as_str().unwrap().to_string()
}

/// A spine directory (one the plan cut into units) deleted after its units were
/// committed and before finalize: finalize left it out of the snapshot, but the run
/// was `complete`, exit 0, with no problem and the units' counts (the files it dropped
/// included): nothing told the operator a directory was missing. Now it is a
/// `vanished` problem naming the directory, the run `partial`, and the run's
/// `files_total` the files the snapshot holds.
#[test]
fn a_spine_directory_gone_before_finalize_makes_the_run_partial_with_true_counts() {
    let e = env();
    let (code, rep, err) = backup(&e.src, &e.dest, &["--jobs", "2"], &[]);
    assert_eq!(code, 0, "{err} {rep}");
    // The store's lock held shared: the worker commits every unit, then cannot
    // finalize (exit 75).
    let holder = std::fs::File::open(e.dest.join(".snapring/lock")).unwrap();
    holder.lock_shared().unwrap();
    let o = worker(
        &e,
        &["--shard", "0/2", "--run-id", "gone"],
        &[("SNAPRING_SHARD_LEASE", "2s")],
    )
    .output()
    .unwrap();
    drop(holder);
    assert_eq!(o.status.code(), Some(75), "{}", text(&o));
    let p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir(&e, "gone").join("plan.json")).unwrap())
            .unwrap();
    let spine = p["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["dir"].as_str().unwrap().to_string())
        .find(|d| d.starts_with("deep"))
        .expect("a unit under deep/");
    std::fs::remove_dir_all(e.src.join(&spine)).unwrap();
    let o = run_cmd(&e, "finalize", "gone", &[], &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("partial"), "{out}");
    assert!(!e.dest.join("daily.0").join(&spine).exists(), "{out}");
    let runs = e.dest.join(".snapring/runs");
    // The newest record: the shard run's (the first backup's is older).
    let rec: serde_json::Value = std::fs::read_dir(&runs)
        .unwrap()
        .map(|f| serde_json::from_slice(&std::fs::read(f.unwrap().path()).unwrap()).unwrap())
        .max_by_key(|r: &serde_json::Value| r["started_at"].as_str().unwrap_or("").to_string())
        .expect("a run record");
    assert_eq!(rec["status"], "partial", "{rec}");
    let problems = rec["problems"].to_string();
    assert!(
        problems.contains(&spine) && problems.contains("vanished"),
        "{rec}"
    );
    assert_eq!(
        rec["files_total"],
        non_dirs(&e.dest.join("daily.0")),
        "{rec}"
    );
    // The store's check agrees with the snapshot it holds.
    verify_clean(&e, "daily.0");
}

/// Each state file a worker makes by linking it into place (the plan, a unit's commit
/// in `done/`, the run's joins) has its directory flushed after the link, by the
/// process that linked it: without that fsync a power cut can lose a commit that the
/// run's finalize already counted. Seen with `strace` (skipped where it cannot run).
#[test]
fn a_worker_flushes_the_directory_of_each_state_file_it_links_into_place() {
    let e = env();
    let t = tempfile::tempdir().unwrap();
    let trace = t.path().join("trace");
    let w = worker(&e, &["--shard", "0/1", "--run-id", "st"], &[]);
    let mut c = Command::new("strace");
    c.args(["-f", "-y", "-qq", "-e", "trace=linkat,fsync", "-o"])
        .arg(&trace)
        .arg(w.get_program())
        .args(w.get_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in w.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let o = match c.output() {
        Ok(o) => o,
        Err(err) => {
            eprintln!("skipped: strace does not run here: {err}");
            return;
        }
    };
    let log = std::fs::read_to_string(&trace).unwrap_or_default();
    if !o.status.success() && !log.contains("linkat(") {
        eprintln!("skipped: strace cannot trace here: {}", text(&o));
        return;
    }
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<&str> = log.lines().collect();
    let shards = e.dest.join(".snapring/shards");
    let shards = shards.to_str().unwrap();
    let mut linked = 0;
    for (i, l) in lines.iter().enumerate() {
        // strace pads the pid to a width.
        let Some((pid, call)) = l.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        if !call.starts_with("linkat(") || !call.ends_with("= 0") {
            continue;
        }
        // The new name: the last quoted string.
        let to = call.rsplit('"').nth(1).unwrap();
        if !to.starts_with(shards) {
            continue;
        }
        linked += 1;
        let dir = Path::new(to).parent().unwrap().to_str().unwrap();
        let flushed = format!("<{dir}>) = 0");
        assert!(
            lines[i + 1..]
                .iter()
                .any(|m| m.split_once(' ').is_some_and(|(p, m)| p == pid
                    && m.trim_start().starts_with("fsync(")
                    && m.ends_with(&flushed))),
            "{to} linked, its directory not flushed after:\n{log}"
        );
    }
    assert!(linked >= 3, "the plan and commits were linked:\n{log}");
}

/// A shard run whose exclusions leave only directories, after a run with files (the
/// single-node guard, `Error::NoFilesLeft`, which shard runs lacked: the run published
/// a snapshot of empty directories and `--retain 1` expired the one with the files).
/// Finalize refuses: every worker exits 1 (permanent) with the single-node message,
/// nothing is published or expired, the run record says `failed`, and `snapring
/// finalize` refuses the same way. A run given `--allow-empty` (recorded in its plan)
/// publishes, and abandons the refused run; `snapring finalize --allow-empty`
/// publishes a refused one.
#[test]
fn a_shard_run_that_keeps_no_file_is_refused_unless_allowed() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in 0..6 {
        for f in 0..3 {
            write(&src.join(format!("d{d}/sub/f{f}.dat")), b"data");
        }
    }
    let e = Env {
        src,
        dest: t.path().join("dest"),
        _t: t,
    };
    let retain = ["--retain", "1"];
    let dirs_only = ["--retain", "1", "--exclude", "*.dat"];
    let holds_files = |e: &Env| e.dest.join("daily.0/d3/sub/f1.dat").is_file();
    let refused = |o: &Output| {
        assert_eq!(o.status.code(), Some(1), "{}", text(o));
        let err = stderr_of(o);
        assert!(
            err.contains("holds no file to back up once the exclusions (--exclude \"*.dat\")")
                && err.contains("the previous snapshot daily.0 holds files")
                && err.contains("--allow-empty"),
            "{}",
            text(o)
        );
    };
    all_ok(&run_workers(&e, 4, "good", &retain, |_| vec![]), "good");
    assert!(holds_files(&e));
    for o in run_workers(&e, 4, "dirs", &dirs_only, |_| vec![]) {
        refused(&o);
    }
    assert_eq!(snapshot_names(&e.dest), ["daily.0"]);
    assert!(holds_files(&e), "daily.0 untouched");
    assert!(!run_dir(&e, "dirs").join("finalized").exists());
    let rec = run_record(&e, "dirs");
    assert_eq!(rec["status"], "failed", "{rec}");
    assert!(
        rec["message"].as_str().unwrap().contains("holds no file"),
        "{rec}"
    );
    refused(&run_cmd(&e, "finalize", "dirs", &[], &[]));
    assert!(holds_files(&e));

    // Allowed from the start: published (its plan says so), the refused run abandoned.
    let allowed = ["--retain", "1", "--exclude", "*.dat", "--allow-empty"];
    all_ok(
        &run_workers(&e, 4, "allowed", &allowed, |_| vec![]),
        "allowed",
    );
    assert_eq!(snapshot_names(&e.dest), ["daily.0"]);
    assert!(!holds_files(&e) && e.dest.join("daily.0/d3/sub").is_dir());
    assert!(run_dir(&e, "dirs").join("abandoned").exists());

    // Allowed by `snapring finalize --allow-empty`.
    all_ok(&run_workers(&e, 4, "good-2", &retain, |_| vec![]), "good-2");
    assert!(holds_files(&e));
    for o in run_workers(&e, 4, "dirs-2", &dirs_only, |_| vec![]) {
        refused(&o);
    }
    assert!(holds_files(&e));
    let o = run_cmd(&e, "finalize", "dirs-2", &["--allow-empty"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(snapshot_names(&e.dest), ["daily.0"]);
    assert!(!holds_files(&e) && e.dest.join("daily.0/d3/sub").is_dir());
    assert_eq!(run_record(&e, "dirs-2")["status"], "complete");
}

/// A shard run that keeps fewer than a tenth of the files of the label's previous
/// snapshot (of at least 100: the source replaced by a directory holding only a marker
/// file, a failed mount) is refused by finalize as a single-node run is: every worker
/// exits 1 with the counts, the snapshot and `--allow-empty` named, nothing published
/// or expired, the run record `failed`; `snapring finalize` refuses the same, `snapring
/// finalize --allow-empty` publishes it, and the next run (compared with that snapshot)
/// is not refused. Before: `complete`, and `--retain 1` expired the 120 files.
#[test]
fn a_shard_run_that_keeps_far_fewer_files_is_refused_unless_allowed() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in 0..6 {
        for f in 0..20 {
            write(&src.join(format!("d{d}/sub/f{f}.dat")), b"data");
        }
    }
    let e = Env {
        src,
        dest: t.path().join("dest"),
        _t: t,
    };
    let retain = ["--retain", "1"];
    let holds_files = |e: &Env| e.dest.join("daily.0/d3/sub/f1.dat").is_file();
    let refused = |o: &Output| {
        assert_eq!(o.status.code(), Some(1), "{}", text(o));
        let err = stderr_of(o);
        assert!(
            err.contains("keeps 1 file to back up, but the previous snapshot daily.0 holds 120")
                && err.contains("--allow-empty"),
            "{}",
            text(o)
        );
    };
    all_ok(&run_workers(&e, 4, "good", &retain, |_| vec![]), "good");
    assert!(holds_files(&e));
    std::fs::remove_dir_all(&e.src).unwrap();
    write(&e.src.join(".placeholder"), b"");
    for o in run_workers(&e, 4, "marker", &retain, |_| vec![]) {
        refused(&o);
    }
    assert_eq!(snapshot_names(&e.dest), ["daily.0"]);
    assert!(holds_files(&e), "daily.0 untouched");
    assert!(!run_dir(&e, "marker").join("finalized").exists());
    let rec = run_record(&e, "marker");
    assert_eq!(rec["status"], "failed", "{rec}");
    assert!(
        rec["message"].as_str().unwrap().contains("holds 120"),
        "{rec}"
    );
    refused(&run_cmd(&e, "finalize", "marker", &[], &[]));
    assert!(holds_files(&e));
    let o = run_cmd(&e, "finalize", "marker", &["--allow-empty"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(snapshot_names(&e.dest), ["daily.0"]);
    assert!(!holds_files(&e) && e.dest.join("daily.0/.placeholder").is_file());
    assert_eq!(run_record(&e, "marker")["status"], "complete");
    all_ok(&run_workers(&e, 4, "after", &retain, |_| vec![]), "after");
}

/// A worker stopped (SIGTERM) while its pre_command runs, or whose backup window (from
/// the worker's start) ends then, kills the command and ends interrupted: exit 3
/// (retryable), nothing claimed, its post command told `incomplete`, and a rerun with
/// the same run id finishes the run, as a single-node run stopped there ends
/// `incomplete` and resumes. It failed, exit 1 ("pre_command … failed: killed: snapring
/// was interrupted"), its post command told `failed`; the window waited for the
/// pre_command to end.
#[test]
fn a_worker_stopped_during_its_pre_command_ends_interrupted_and_a_rerun_finishes() {
    let e = env();
    let dir = e.dest.with_file_name("hooks");
    std::fs::create_dir(&dir).unwrap();
    let (started, heard) = (dir.join("started"), dir.join("heard"));
    let pre = format!("sh -c 'touch {}; sleep 30'", started.display());
    let post = format!("sh -c 'echo $SNAPRING_STATUS >> {}'", heard.display());
    let args = |run: &'static str, window: &'static str| {
        let mut a = vec!["--shard", "0/1", "--run-id", run];
        if !window.is_empty() {
            a.extend(["--window", window]);
        }
        a
    };
    // Stopped by SIGTERM.
    let mut a = args("stopped", "");
    a.extend(["--pre-command", &pre, "--post-command", &post]);
    let w = worker(&e, &a, &[]).spawn().unwrap();
    wait_for(&started);
    let pid = rustix::process::Pid::from_child(&w);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let o = w.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("interrupted during its pre_command"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_to_string(&heard).unwrap(), "incomplete\n");
    // A rerun of the stopped one finishes it.
    let o = worker(&e, &args("stopped", ""), &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    check_run(&e, "stopped");
    check_snapshot(
        &e,
        "a run whose worker was stopped in its pre_command, rerun",
    );
    // Its window ends during the pre_command.
    let mut a = args("windowed", "1s");
    a.extend(["--pre-command", "sleep 8", "--post-command", &post]);
    let t0 = Instant::now();
    let o = worker(&e, &a, &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("the backup window ended during its pre_command"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_to_string(&heard).unwrap(),
        "incomplete\nincomplete\n"
    );
}

/// A `finalized` that does not read (0 bytes: damaged, as it is created whole) is no
/// proof of a publish: a run killed before its publish, or after it but before its
/// marker, with an empty `finalized` put there, is finalized by `snapring finalize`
/// (published, or completed), not reported "already finalized" with nothing published.
#[test]
fn an_empty_finalized_marker_is_not_taken_for_a_publish() {
    for point in [
        "shard.finalize.before_staging",
        "shard.finalize.after_publish",
    ] {
        let run = "fin";
        let e = killed_finalizing(point, run);
        std::fs::write(run_dir(&e, run).join("finalized"), b"").unwrap();
        let o = finalized(&e, run, point);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("does not read"),
            "{point}: {}",
            text(&o)
        );
        published_once(&e, run, point);
    }
}

/// A commit marker that does not read (0 bytes: damaged since, as it is created
/// whole) stops finalize, which says what to do (it said only "unreadable commit
/// marker"): the unit's copies may be in the run's tree already, so the run cannot be
/// finalized; a new run id.
#[test]
fn an_empty_commit_marker_stops_finalize_saying_what_to_do() {
    let e = env();
    let run = "dm";
    let fp = "shard.finalize.before_staging=kill";
    let o = spawn(&e, 0, 1, run, &[("SNAPRING_FAILPOINTS", fp)])
        .wait_with_output()
        .unwrap();
    assert_eq!(o.status.code(), None, "{}", text(&o));
    let unit = plan_units(&e, run).remove(0);
    std::fs::write(run_dir(&e, run).join("done").join(&unit), b"").unwrap();
    let o = run_cmd(&e, "finalize", run, &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("done/{unit}")) && err.contains("new run id"),
        "{}",
        text(&o)
    );
    assert!(snapshot_names(&e.dest).is_empty());
}

/// A worker copying under `--bwlimit` with no `--window`, stopped past its lease and
/// continued after another worker took its unit over: its warning of the copy it gave
/// up says the unit was taken over and that the taker copies the file; it told the
/// user to "widen the window", which there is none of.
#[test]
fn a_throttled_copy_given_up_to_a_takeover_says_so_not_widen_the_window() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("a/big"), &vec![b'x'; 16 << 20]);
    let e = Env {
        dest: t.path().join("dest"),
        src,
        _t: t,
    };
    let run = "slow-taken";
    let lease = ("SNAPRING_SHARD_LEASE", "1s");
    let args = ["--shard", "0/1", "--run-id", run];
    let mut w0 = worker(&e, &[&args[..], &["--bwlimit", "1MiB"]].concat(), &[lease])
        .spawn()
        .unwrap();
    // Its claim made, its copy under way (the copy needs some 32 s at the limit).
    let claims = run_dir(&e, run).join("claims");
    let until = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&claims)
        .map(|d| d.count() == 0)
        .unwrap_or(true)
    {
        assert!(Instant::now() < until, "worker 0 never claimed its unit");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let pid = rustix::process::Pid::from_child(&w0);
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // Another process takes the unit over, commits it, and cannot finalize while the
    // stopped worker holds the store.
    let o = worker(&e, &args, &[lease]).output();
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    let o = o.unwrap();
    assert_eq!(o.status.code(), Some(75), "{}", text(&o));
    let out = w0.wait().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(w0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert_eq!(out.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(
            "another worker took it over: this worker gave up 1 copy under the bandwidth limit: "
        ) && stdout.contains("big (16777216 bytes")
            && stdout.contains("the worker that took the unit over copies it from the start")
            && !stdout.contains("window"),
        "{stdout}"
    );
}

/// Two `snapring finalize` of one run at once: the one that waits exits 75 saying that
/// another finalize of the run is running and that nothing is wrong (it said only "the
/// store is held by snapring backup …"), and a worker racing them names the holder a
/// `finalize`, not a "snapring backup".
#[test]
fn of_two_finalizes_at_once_the_other_says_a_finalize_publishes_the_run() {
    let e = env();
    let run = "twice";
    let o = worker(
        &e,
        &["--shard", "0/1", "--run-id", run],
        &[("SNAPRING_FAILPOINTS", "shard.finalize.before_staging=kill")],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), None, "{}", text(&o));
    let pause = e.dest.with_file_name("pause");
    let first = Command::new(bin())
        .args(["finalize", "--dest"])
        .arg(&e.dest)
        .args(["--run-id", run])
        .env("SNAPRING_CATALOG", "off")
        .env(
            "SNAPRING_FAILPOINTS",
            format!("shard.finalize.before_publish=pause:{}", pause.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&pause);
    let holder = format!("snapring finalize (pid {} on ", first.id());
    let second = run_cmd(&e, "finalize", run, &[], &[]);
    let racing = worker(
        &e,
        &["--shard", "0/1", "--run-id", run],
        &[("SNAPRING_SHARD_LEASE", "1s")],
    )
    .output()
    .unwrap();
    std::fs::remove_file(&pause).unwrap();
    let o = first.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(second.status.code(), Some(75), "{}", text(&second));
    let said = text(&second);
    assert!(
        said.contains(&format!(
            "another finalize of run {run} is running ({holder}"
        )) && said.contains("nothing is wrong"),
        "{said}"
    );
    assert_eq!(racing.status.code(), Some(75), "{}", text(&racing));
    let said = text(&racing);
    assert!(
        said.contains(&holder) && !said.contains("snapring backup"),
        "{said}"
    );
}

/// `status` of a run whose `finalized` or `abandoned` marker is junk says that the
/// marker does not read and what to do (it said "not finalized" of a finalized run,
/// and "abandoned at an unknown time by the publish of run ?: … ?.0 is now run ?").
#[test]
fn status_of_a_damaged_finalized_or_abandoned_marker_says_it_is_damaged() {
    let e = env();
    let run = "junk";
    let o = spawn(&e, 0, 1, run, &[]).wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let rd = run_dir(&e, run);
    std::fs::write(rd.join("finalized"), b"junk").unwrap();
    let o = run_cmd(&e, "status", run, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("finalized? its marker ")
            && out.contains(
                "finalized does not read (4 bytes that are no finalized marker: damaged)"
            )
            && out.contains(&format!(
                "`snapring finalize --run-id {run}` removes it and finalizes the run"
            ))
            && !out.contains("not finalized"),
        "{out}"
    );
    let o = run_cmd(&e, "status", run, &["--json"], &[]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["damaged"][0]["marker"], "finalized", "{st}");

    std::fs::remove_file(rd.join("finalized")).unwrap();
    std::fs::write(rd.join("abandoned"), b"").unwrap();
    let o = run_cmd(&e, "status", run, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("abandoned does not read (0 bytes that are no abandoned marker: damaged): when, by what and why it was abandoned is not known")
            && out.contains("start a new run id")
            && !out.contains('?'),
        "{out}"
    );
}

/// A file removed from the run's tree by hand after every unit was committed and the
/// units were moved in, before finalize published (the finalizing worker killed at
/// `shard.finalize.before_staging`; a `snapring finalize` then publishes): the
/// snapshot lacks it while its manifest (merged from the units' parts) lists it, and
/// `verify` of the published snapshot says so (not clean, the file missing). Finalize
/// does not count the tree's files against the manifest: `verify` is what finds it.
#[test]
fn verify_finds_a_file_removed_from_the_runs_tree_before_finalize_published() {
    let run = "gone";
    let e = killed_finalizing("shard.finalize.before_staging", run);
    let victim = run_dir(&e, run).join("tree/flat/n042 with space");
    assert!(victim.exists(), "{}", victim.display());
    std::fs::remove_file(&victim).unwrap();
    finalized(&e, run, "a file removed from the run's tree");
    assert_eq!(snapshot_names(&e.dest), vec!["daily.0"]);
    assert!(!e.dest.join("daily.0/flat/n042 with space").exists());
    let out = snapring(
        &[
            "verify".as_ref(),
            "--dest".as_ref(),
            e.dest.as_os_str(),
            "daily.0".as_ref(),
        ],
        &[],
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("daily.0 - flat/n042%20with%20space  size 7"),
        "{said}"
    );
    assert!(
        said.contains("daily.0: DAMAGED against manifest")
            && said.contains("0 corrupt, 1 missing, 0 unexpected, 0 metadata"),
        "{said}"
    );
}

/// A shard run's snapshot restores whole, `complete`, equal to the source: its root
/// and directories (with extended attributes, a unit's root among them) are checked
/// against the records the workers and finalize wrote (since session 48 the restored
/// root too), and nothing of what they recorded may read as damaged.
#[test]
fn a_shard_runs_snapshot_restores_whole_and_complete() {
    let e = env();
    set_xattr(&e.src, "user.k", b"root");
    set_xattr(&e.src.join("deep"), "user.k", b"deep");
    set_xattr(&e.src.join("deep/d1"), "user.k", b"d1");
    all_ok(&run_workers(&e, 2, "rs1", &[], |_| vec![]), "rs1");
    check_run(&e, "rs1");
    check_snapshot(&e, "rs1");
    let restore = |to: &Path, extra: &[&str]| {
        let mut a: Vec<&OsStr> = vec![
            "restore".as_ref(),
            "--json".as_ref(),
            "--dest".as_ref(),
            e.dest.as_os_str(),
            "daily.0".as_ref(),
            "--to".as_ref(),
            to.as_os_str(),
        ];
        a.extend(extra.iter().map(OsStr::new));
        let out = snapring(&a, &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "restore {extra:?}: {}",
            text(&out)
        );
        let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rep["status"], "complete", "{rep}");
        assert_eq!(rep["problems"].as_array().map_or(0, Vec::len), 0, "{rep}");
    };
    let to = e.dest.with_file_name("restored");
    restore(&to, &[]);
    assert_same_tree(&describe(&e.src), &describe(&to), "whole restore");
    let to = e.dest.with_file_name("flat");
    restore(&to, &["--path", "deep", "--flat"]);
    assert_same_tree(
        &describe(&e.src.join("deep")),
        &describe(&to),
        "--path deep --flat",
    );
}

/// A worker on a node where the source is not mounted (an empty directory there, a
/// tmpfs mounted over it here) while the previous snapshot is not empty is refused,
/// exit 1, before it plans or claims anything: another worker plans from the real
/// source and the run finishes without it. It wrote `plan.json` from the empty
/// directory first (one unit of weight 0, its inode the mount point's), so every
/// healthy worker after it was refused as "not the directory this run was planned
/// from" and finalize asked for reruns (exit 75) for ever (a hostile tester, session
/// 49).
#[test]
fn a_worker_whose_source_is_not_mounted_is_refused_before_it_plans() {
    let e = env();
    all_ok(&run_workers(&e, 2, "r1", &[], |_| vec![]), "r1");
    let run = "r2";
    let o = {
        let Some(_fs) = Tmpfs::mount(&e.src, "size=1m") else {
            return;
        };
        spawn(&e, 0, 2, run, &[]).wait_with_output().unwrap()
    };
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr_of(&o).contains("is empty but the previous snapshot daily.0 is not"),
        "{}",
        text(&o)
    );
    assert!(
        !run_dir(&e, run).join("plan.json").exists(),
        "the refused worker wrote no plan"
    );
    // Worker 1, on a node where the source is mounted, plans, builds every unit (worker
    // 0's home units too) and publishes the run.
    let o = spawn(&e, 1, 2, run, &[]).wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("finalized: complete"),
        "{}",
        text(&o)
    );
    check_run(&e, run);
    check_snapshot(&e, "after a worker refused for an empty source");
}

/// A plan made from an empty source while the previous snapshot is not (by an older
/// snapring on a node where the source was not mounted) can never be built: a healthy
/// worker is refused naming the plan (not its own node), `status` says why, and
/// `snapring finalize` refuses the run, exit 1 (it said "rerun their workers", exit 75,
/// for ever: a finalize Job retrying it looped).
#[test]
fn a_plan_made_from_an_empty_source_is_refused_by_name_not_retried_for_ever() {
    let e = env();
    all_ok(&run_workers(&e, 2, "r1", &[], |_| vec![]), "r1");
    let run = "bad";
    // A plan written, its worker killed before it built anything; then made to look as
    // an unmounted node's: nothing weighed, the mount point's inode.
    let fp = [("SNAPRING_FAILPOINTS", "shard.unit_started=kill")];
    let o = spawn(&e, 0, 2, run, &fp).wait_with_output().unwrap();
    assert_eq!(o.status.code(), None, "{}", text(&o));
    let plan_path = run_dir(&e, run).join("plan.json");
    let mut plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&plan_path).unwrap()).unwrap();
    for u in plan["units"].as_array_mut().unwrap() {
        u["weight"] = 0.into();
    }
    plan["source_ino"] = 1.into();
    std::fs::write(&plan_path, serde_json::to_vec_pretty(&plan).unwrap()).unwrap();
    let empty_plan = "was planned from an empty source";
    let o = spawn(&e, 1, 2, run, &[]).wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr_of(&o).contains(empty_plan), "{}", text(&o));
    assert!(!stderr_of(&o).contains("is the source file system mounted on this node"));
    let st = run_cmd(&e, "status", run, &[], &[]);
    assert_eq!(st.status.code(), Some(0), "{}", text(&st));
    let out = String::from_utf8_lossy(&st.stdout).to_string();
    assert!(
        out.contains("refused: never buildable") && out.contains(empty_plan),
        "{out}"
    );
    let o = run_cmd(&e, "finalize", run, &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr_of(&o).contains(empty_plan) && stderr_of(&o).contains("start a new run id"),
        "{}",
        text(&o)
    );
    assert_eq!(snapshot_names(&e.dest), vec!["daily.0"]);
}

/// Two `snapring finalize` of a run that is finalized, the deletion of its expired
/// snapshot left open by workers killed in it: the one that completes the deletion
/// holds the store, and the other says the run is already finalized, exit 0 (it said
/// "another finalize … is running", exit 75: a Slurm finalize job FAILED).
#[test]
fn a_finalize_of_a_finalized_run_is_never_a_retry_while_another_completes_it() {
    let e = env();
    let retain = ["--retain", "1"];
    all_ok(&run_workers(&e, 3, "t1", &retain, |_| vec![]), "t1");
    write(&e.src.join("flat/n040 with space"), b"t2");
    let kill = |_| vec![("SNAPRING_FAILPOINTS", "shard.expire_piece=kill")];
    let outs = run_workers(&e, 3, "t2", &retain, kill);
    assert!(outs.iter().any(|o| o.status.code().is_none()));
    assert!(run_dir(&e, "t2").join("finalized").exists());
    assert!(!is_empty_dir(&e.dest.join(".snapring/expiring")));
    let pause = e.dest.with_file_name("pause-expiry");
    let fp = format!("shard.expire_piece=pause:{}", pause.display());
    let mut a: Vec<&OsStr> = vec!["finalize".as_ref(), "--dest".as_ref(), e.dest.as_os_str()];
    a.extend([OsStr::new("--run-id"), OsStr::new("t2")]);
    let first = Command::new(bin())
        .args(&a)
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_FAILPOINTS", &fp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&pause);
    let o = run_cmd(&e, "finalize", "t2", &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("run t2 is already finalized"),
        "{}",
        text(&o)
    );
    std::fs::remove_file(&pause).unwrap();
    let o = first.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(is_empty_dir(&e.dest.join(".snapring/trash")));
    assert!(is_empty_dir(&e.dest.join(".snapring/expiring")));
    check_snapshot(&e, "t2");
}

/// The temp files of bookkeeping writes killed mid-write (`util::write_atomic`'s
/// `<name>.tmp<pid>`: a finalize SIGKILLed as it wrote the run's record) are removed by
/// the next run or finalize once their writer is gone and they are ten minutes old, or
/// once an hour old whoever wrote them; a recent one or a live writer's is left.
#[test]
fn temp_files_of_writes_killed_midway_are_swept_and_a_live_writers_kept() {
    let e = env();
    all_ok(&run_workers(&e, 2, "r1", &[], |_| vec![]), "r1");
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let me = std::process::id();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let meta = e.dest.join(".snapring");
    let file = |rel: String, age: i64| {
        let p = meta.join(rel);
        write(&p, b"{\"half\":");
        set_mtime(&p, now - age, 0);
        p
    };
    let swept = [
        file(format!("runs/r0.tmp{dead}"), 20 * 60),
        file(format!("state.tmp{dead}"), 20 * 60),
        file(format!("runs/r00.tmp{me}"), 2 * 3600),
    ];
    let kept = [
        file(format!("runs/r000.tmp{dead}"), 10),
        file(format!("runs/r0000.tmp{me}"), 20 * 60),
        file("runs/r5.tmp".to_string(), 2 * 3600),
    ];
    let o = run_cmd(&e, "finalize", "r1", &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for p in &swept {
        assert!(!p.exists(), "{} was not swept", p.display());
    }
    for p in &kept {
        assert!(p.exists(), "{} was swept", p.display());
    }
}
