//! `--one-file-system` (`-x`) in shard runs (docs/scale-out.md), into the hard-link
//! store and into a restic repository: four worker processes of the real binary over a
//! source with real tmpfs mounts at a top-level directory (many files: the planner's
//! sizing walk must not count them, nor cut a unit inside), deeper inside a unit, and at
//! a spine directory mounted after the plan was made (a unit whose root is itself a
//! mount point, with spine directories below it). The snapshot must be the one a
//! single-node `backup -x` makes (same tree; the mount points empty directories with
//! their own metadata), the run's report must say `one_file_system`,
//! `mount_points_skipped` and `mount_points`, `verify --against` the source must be
//! clean, and `restic check --read-data` must pass. A worker started with another
//! `-x` than the run's plan is refused (exit 64). Mounting needs root: where `mount`
//! fails the tests print SKIPPED and return.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::restic::*;
use common::*;
use snapring::restic::{Id, backup::descend, repo::Repo, snapshot};

/// A tmpfs mounted for a test (unmounted when dropped).
type Mounted = Tmpfs;

/// Mounts a tmpfs whose root has `mode` at `at` (made if missing); `None`, with a
/// SKIPPED line, where mounting is not possible (not root, no `mount`).
fn tmpfs(at: &Path, mode: &str) -> Option<Mounted> {
    Tmpfs::mount(at, &format!("mode={mode},size=8m"))
}

/// The mount points of the test, as the reports name them (path order).
const MOUNT_POINTS: [&str; 3] = ["big/b1/deep/mnt", "big/b2", "tmnt"];

/// A source heavy enough to be cut into many units (about 40 for 4 workers): `flat`
/// (names cut into ranges), `big/b0` … `big/b3` (spine directories; `big/b2/s0` …
/// `s3` too), with tmpfs mounts at `tmnt` (300 files: without `-x` the planner would
/// make it a spine directory) and `big/b1/deep/mnt` (inside a unit of `big/b1`).
/// `big/b2` is mounted later ([`mount_at_unit_root`]).
fn source(t: &Path) -> Option<(PathBuf, Vec<Mounted>)> {
    let src = t.join("src");
    write(&src.join("top.txt"), b"top");
    for f in 0..120 {
        write(
            &src.join(format!("flat/n{f:03}")),
            format!("flat {f}").as_bytes(),
        );
    }
    for d in [0, 1, 3] {
        for f in 0..60 {
            write(
                &src.join(format!("big/b{d}/f{f:03}")),
                format!("big {d} {f}").as_bytes(),
            );
        }
    }
    for s in 0..4 {
        for f in 0..60 {
            write(
                &src.join(format!("big/b2/s{s}/f{f:02}")),
                format!("hidden by the later mount {s} {f}").as_bytes(),
            );
        }
    }
    write(&src.join("big/b1/deep/x.txt"), b"beside the deep mount");
    std::fs::create_dir_all(src.join("big/b1/deep/mnt")).unwrap();
    std::fs::create_dir_all(src.join("tmnt")).unwrap();
    let a = tmpfs(&src.join("tmnt"), "0710")?;
    let b = tmpfs(&src.join("big/b1/deep/mnt"), "0750")?;
    for f in 0..300 {
        write(
            &src.join(format!("tmnt/many/f{f:03}")),
            b"on the top-level mount",
        );
    }
    write(&src.join("big/b1/deep/mnt/in.txt"), b"on the deep mount");
    write(&src.join("big/b1/deep/mnt/sub/in2.txt"), b"deeper on it");
    Some((src, vec![a, b]))
}

/// Mounts a tmpfs at `big/b2`, a spine directory of the plan (with spine directories
/// `s0` … `s3` below it, one of which the tmpfs has too).
fn mount_at_unit_root(src: &Path) -> Mounted {
    let m = tmpfs(&src.join("big/b2"), "0705").expect("mounted the others");
    write(&src.join("big/b2/c.txt"), b"on the mount at a unit's root");
    write(&src.join("big/b2/s0/c0.txt"), b"a spine name on the mount");
    m
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn names(p: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(p)
        .unwrap_or_else(|e| panic!("list {}: {e}", p.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// The mount points are empty directories with the mounted roots' modes; what is
/// beside them is there.
fn assert_mount_points_empty(root: &Path, what: &str) {
    for (mp, m) in [
        ("tmnt", 0o710),
        ("big/b1/deep/mnt", 0o750),
        ("big/b2", 0o705),
    ] {
        let p = root.join(mp);
        assert!(p.is_dir(), "{what}: {mp} is kept as a directory");
        assert_eq!(names(&p), Vec::<String>::new(), "{what}: {mp} is empty");
        assert_eq!(mode(&p), m, "{what}: {mp} has the mounted root's mode");
    }
    assert_eq!(
        std::fs::read(root.join("big/b1/deep/x.txt")).unwrap(),
        b"beside the deep mount",
        "{what}"
    );
    assert_eq!(names(&root.join("flat")).len(), 120, "{what}");
}

fn assert_report_names_the_mount_points(rep: &serde_json::Value, what: &str) {
    assert_eq!(rep["one_file_system"], true, "{what}: {rep}");
    assert_eq!(rep["mount_points_skipped"], 3, "{what}: {rep}");
    assert_eq!(
        rep["mount_points"],
        serde_json::json!(MOUNT_POINTS),
        "{what}: {rep}"
    );
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `snapring backup --jobs 2 --source SRC --dest DEST --shard I/N --run-id RUN ARGS…`,
/// with `vars` in its environment (the engines' variables of the test's own removed).
fn worker(
    src: &Path,
    dest: &str,
    (i, n, run): (usize, usize, &str),
    args: &[&str],
    vars: &[(&str, &str)],
) -> Command {
    worker_jobs(src, dest, (i, n, run), "2", args, vars)
}

/// [`worker`] with `--jobs JOBS`.
fn worker_jobs(
    src: &Path,
    dest: &str,
    (i, n, run): (usize, usize, &str),
    jobs: &str,
    args: &[&str],
    vars: &[(&str, &str)],
) -> Command {
    let mut c = Command::new(bin());
    c.args(["backup", "--jobs", jobs, "--source"])
        .arg(src)
        .args(["--dest", dest])
        .args(["--shard", &format!("{i}/{n}"), "--run-id", run])
        .args(args)
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_PASSWORD", PASSWORD)
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

/// Worker 0 of `n` makes the run's plan and is SIGKILLed at `failpoint` (before its
/// first unit's walk), leaving the plan and its claim to the others.
fn plan_only(src: &Path, dest: &str, n: usize, run: &str, args: &[&str], failpoint: &str) {
    let o = worker(
        src,
        dest,
        (0, n, run),
        args,
        &[("SNAPRING_FAILPOINTS", &format!("{failpoint}=kill"))],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), None, "killed: {}", text(&o));
}

/// Workers 0 … n-1 at once; each must exit 0. Their outputs.
fn all_workers(src: &Path, dest: &str, n: usize, run: &str, args: &[&str]) -> Vec<Output> {
    workers_with(src, dest, n, run, args, &[])
}

/// [`all_workers`] with `vars` in their environment.
fn workers_with(
    src: &Path,
    dest: &str,
    n: usize,
    run: &str,
    args: &[&str],
    vars: &[(&str, &str)],
) -> Vec<Output> {
    let kids: Vec<_> = (0..n)
        .map(|i| worker(src, dest, (i, n, run), args, vars).spawn().unwrap())
        .collect();
    let outs: Vec<Output> = kids
        .into_iter()
        .map(|k| k.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        assert_eq!(o.status.code(), Some(0), "{}", text(o));
    }
    outs
}

/// `ARGS --json` of `snapring` as JSON, and its exit code.
fn json(args: &[&str]) -> (i32, serde_json::Value) {
    let a: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    let (code, out, err) = sr(&a);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{a:?}: {e}: {out}{err}"));
    (code, v)
}

/// The catalog at `catalog` has run `run` with the report's `-x` fields (what the
/// notifications and `show` tell).
fn assert_catalog_names_the_mount_points(catalog: &Path, run: &str) {
    let out = snapring(
        &[
            "--catalog".as_ref(),
            catalog.as_os_str(),
            "show".as_ref(),
            "--json".as_ref(),
            run.as_ref(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shown = v.to_string();
    for want in [
        "\"one_file_system\":true".to_string(),
        "\"mount_points_skipped\":3".to_string(),
        format!("\"mount_points\":{}", serde_json::json!(MOUNT_POINTS)),
    ] {
        assert!(shown.contains(&want), "catalog: {want} in {v}");
    }
}

/// `verify --against SRC` of `snap` is clean, its contents of the mount points not
/// compared (the snapshot says `-x`).
fn assert_verify_against_clean(dest: &str, snap: &str, src: &Path) {
    let (code, v) = json(&[
        "verify",
        "--dest",
        dest,
        snap,
        "--against",
        src.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "a healthy -x backup verifies clean: {v}");
    assert_eq!(v[0]["clean"], true, "{v}");
    assert_report_names_the_mount_points(&v[0], "verify --against");
}

/// The plan's spine directories and its `one_file_system`.
fn plan_of(plan: &serde_json::Value) -> (Vec<String>, bool) {
    let spine = plan["spine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    (spine, plan["one_file_system"] == true)
}

/// The planner stayed on the source's file system: `big/b2` (mounted later) is cut,
/// nothing on the mounts is.
fn assert_plan_stays_on_one_fs(plan: &serde_json::Value) {
    let (spine, one_fs) = plan_of(plan);
    assert!(one_fs, "the plan records -x: {plan}");
    assert!(
        spine.iter().any(|s| s == "big/b2") && spine.iter().any(|s| s == "big/b2/s0"),
        "{spine:?}"
    );
    assert!(
        !spine
            .iter()
            .any(|s| s.starts_with("tmnt") || s.starts_with("big/b1/deep")),
        "no unit is cut inside a mount: {spine:?}"
    );
    assert!(plan["units"].as_array().unwrap().len() > 16, "{plan}");
}

#[test]
fn four_workers_with_one_file_system_make_the_single_node_snapshot_in_the_store() {
    let t = tempfile::tempdir().unwrap();
    let Some((src, _mounts)) = source(t.path()) else {
        return;
    };
    let dest = t.path().join("dest");
    let d = dest.to_str().unwrap();
    let run = "x1";
    plan_only(&src, d, 4, run, &["-x"], "shard.unit_started");
    assert_plan_stays_on_one_fs(&store_plan(&dest, run));
    let _c = mount_at_unit_root(&src);
    let catalog = t.path().join("catalog.db");
    let cat = catalog.to_str().unwrap();
    let outs = workers_with(&src, d, 4, run, &["-x"], &[("SNAPRING_CATALOG", cat)]);
    assert_catalog_names_the_mount_points(&catalog, run);
    // The finalizer's summary, as a single-node run's.
    let said: Vec<String> = outs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .filter(|o| o.contains("finalized: complete"))
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains(
            "\n  one file system: 3 mount points kept as empty directories: big/b1/deep/mnt, big/b2, tmnt\n"
        ),
        "{}",
        said[0]
    );

    let rec = store_record(&dest, run);
    assert_eq!(rec["status"], "complete", "a note, not a problem: {rec}");
    assert_eq!(rec["errors"], 0, "{rec}");
    assert_report_names_the_mount_points(&rec, "the run record");
    assert_mount_points_empty(&dest.join("daily.0"), "the shard run's snapshot");

    // What a single-node -x run of the same source makes.
    let single = t.path().join("single");
    let (code, rep, err) = backup(&src, &single, &["-x", "--jobs", "2"], &[]);
    assert_eq!(code, 0, "{err} {rep}");
    assert_report_names_the_mount_points(&rep, "the single-node run");
    // Nothing on a mount was read (a unit rooted at one walked nothing).
    assert_eq!(rec["files_total"], rep["files_total"], "{rec}\n{rep}");
    assert_same_tree(
        &describe(&single.join("daily.0")),
        &describe(&dest.join("daily.0")),
        "shard -x against single-node -x",
    );
    assert_verify_clean(&dest, &["daily.0"]);
    assert_verify_against_clean(d, "daily.0", &src);
}

/// `plan.json` of run `run` of the store at `dest`.
fn store_plan(dest: &Path, run: &str) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(dest.join(".snapring/shards").join(run).join("plan.json")).unwrap(),
    )
    .unwrap()
}

/// The run record of run `run` of the store at `dest`.
fn store_record(dest: &Path, run: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dest.join(format!(".snapring/runs/{run}.json"))).unwrap())
        .unwrap()
}

/// A previous snapshot made without `-x` weighs the mounts' contents: its cut (a
/// spine directory on a mount) does not fit a `-x` run, which walks the source
/// instead; the next `-x` run is cut by the `-x` snapshot's manifest, links everything
/// and names the same mount points.
#[test]
fn a_cut_by_a_previous_snapshot_that_crossed_a_mount_is_walked_again() {
    let t = tempfile::tempdir().unwrap();
    let Some((src, _mounts)) = source(t.path()) else {
        return;
    };
    let dest = t.path().join("dest");
    let d = dest.to_str().unwrap();
    all_workers(&src, d, 4, "w1", &[]);
    let (spine, one_fs) = plan_of(&store_plan(&dest, "w1"));
    assert!(!one_fs && spine.iter().any(|s| s == "tmnt"), "{spine:?}");
    assert_eq!(
        std::fs::read(dest.join("daily.0/big/b1/deep/mnt/in.txt")).unwrap(),
        b"on the deep mount",
        "without -x the mounts are backed up"
    );
    let two = serde_json::json!(["big/b1/deep/mnt", "tmnt"]);
    for (run, sized_by) in [("w2", "walk"), ("w3", "manifest")] {
        all_workers(&src, d, 4, run, &["-x"]);
        let plan = store_plan(&dest, run);
        assert_eq!(plan["sized_by"], sized_by, "{run}: {plan}");
        let (spine, one_fs) = plan_of(&plan);
        assert!(
            one_fs && !spine.iter().any(|s| s.starts_with("tmnt")),
            "{run}: {spine:?}"
        );
        let rec = store_record(&dest, run);
        assert_eq!(rec["status"], "complete", "{run}: {rec}");
        assert_eq!(rec["mount_points_skipped"], 2, "{run}: {rec}");
        assert_eq!(rec["mount_points"], two, "{run}: {rec}");
    }
    let rec = store_record(&dest, "w3");
    assert_eq!(rec["files_linked"], rec["files_total"], "unchanged: {rec}");
    let single = t.path().join("single");
    let (code, rep, err) = backup(&src, &single, &["-x", "--jobs", "2"], &[]);
    assert_eq!(code, 0, "{err} {rep}");
    assert_same_tree(
        &describe(&single.join("daily.0")),
        &describe(&dest.join("daily.0")),
        "an incremental shard -x run against single-node -x",
    );
    assert_verify_clean(&dest, &["daily.0"]);
}

#[test]
fn a_worker_started_with_another_one_file_system_than_the_plan_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for f in 0..40 {
        write(&src.join(format!("d{}/f{f}", f % 4)), b"f");
    }
    let dest = t.path().join("dest");
    let d = dest.to_str().unwrap();
    let repo = t.path().join("repo");
    let url = file_url(&repo);
    let (code, _, err) = sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{err}");
    for (target, failpoint) in [
        (d, "shard.unit_started"),
        (url.as_str(), "shard.repo.before_walk"),
    ] {
        for (run, planned, started, says) in [
            ("with", &["-x"][..], &[][..], "started without it"),
            ("without", &[][..], &["-x"][..], "started with -x"),
        ] {
            plan_only(&src, target, 2, run, planned, failpoint);
            let o = worker(&src, target, (1, 2, run), started, &[])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(64), "{target} {run}: {}", text(&o));
            assert!(
                err.contains("one_file_system") && err.contains(says),
                "{target} {run}: {err}"
            );
            // Which of the two was started wrong cannot be told: the run publishes
            // nothing (exit 64); a new run id with one setting everywhere does.
            let o = worker(&src, target, (0, 2, run), planned, &[])
                .output()
                .unwrap();
            assert_eq!(o.status.code(), Some(64), "{target} {run}: {}", text(&o));
            assert!(text(&o).contains("not published"), "{}", text(&o));
            let outs = all_workers(&src, target, 2, &format!("{run}-again"), planned);
            assert!(!outs.is_empty());
        }
    }
    assert_eq!(snapshot_names(&dest), ["daily.0", "daily.1"]);
}

fn open(repo: &Path) -> Repo {
    Repo::open(repo, PASSWORD.as_bytes()).unwrap()
}

/// The tree of the source directory in snapshot `id`.
fn source_tree(repo: &Path, src: &Path, id: &Id) -> Id {
    let r = open(repo);
    let snap: snapshot::Snapshot = r
        .load_json(snapring::restic::backend::Kind::Snapshot, id)
        .unwrap();
    let src = std::fs::canonicalize(src).unwrap();
    let comps: Vec<&std::ffi::OsStr> = src.iter().skip(1).collect();
    descend(&r, snap.tree, &comps).unwrap().unwrap()
}

#[test]
fn four_workers_with_one_file_system_make_the_single_node_snapshot_in_a_repository() {
    let t = tempfile::tempdir().unwrap();
    let Some((src, _mounts)) = source(t.path()) else {
        return;
    };
    let repo = t.path().join("repo");
    let url = file_url(&repo);
    let (code, _, err) = sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{err}");
    let run = "rx1";
    plan_only(&src, &url, 4, run, &["-x"], "shard.repo.before_walk");
    let (code, status) = json(&["status", "--dest", &url, "--run-id", run]);
    assert_eq!(code, 0, "{status}");
    let _c = mount_at_unit_root(&src);
    let catalog = t.path().join("catalog.db");
    let cat = catalog.to_str().unwrap();
    let outs = workers_with(
        &src,
        &url,
        4,
        run,
        &["-x", "--json"],
        &[("SNAPRING_CATALOG", cat)],
    );
    assert_catalog_names_the_mount_points(&catalog, run);
    let reports: Vec<serde_json::Value> = outs
        .iter()
        .map(|o| serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o))))
        .collect();
    let fin: Vec<&serde_json::Value> = reports.iter().filter(|r| r["finalized"] == true).collect();
    assert_eq!(fin.len(), 1, "{reports:?}");
    assert_eq!(fin[0]["status"], "complete", "{}", fin[0]);
    let totals = &fin[0]["totals"];
    assert_eq!(totals["mount_points_skipped"], 3, "{totals}");
    assert_eq!(
        totals["mount_points"],
        serde_json::json!(MOUNT_POINTS),
        "{totals}"
    );
    let shard_id = Id::parse(fin[0]["snapshot"].as_str().unwrap()).unwrap();
    let snap: snapshot::Snapshot = open(&repo)
        .load_json(snapring::restic::backend::Kind::Snapshot, &shard_id)
        .unwrap();
    assert!(
        snap.tags.iter().any(|t| t == "one_file_system"),
        "{:?}",
        snap.tags
    );
    // The plan it was cut by (sealed: through `status`, which names its spine units).
    let units = status["unit_list"].as_array().unwrap();
    assert!(
        units
            .iter()
            .all(|u| !u["dir"].as_str().unwrap_or("").starts_with("tmnt")),
        "no unit is cut inside a mount: {status}"
    );
    assert!(
        units.iter().any(|u| u["dir"] == "big/b2"),
        "big/b2 (mounted after the plan) is a unit's root: {status}"
    );

    // A single-node -x run of the same source: the very same tree of the source.
    let (code, single, err) = sr(&[
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &url,
        "--label",
        "single",
        "-x",
        "--json",
    ]);
    assert_eq!(code, 0, "{single}\n{err}");
    let single: serde_json::Value = serde_json::from_str(&single).unwrap();
    assert_report_names_the_mount_points(&single, "the single-node run");
    assert_eq!(totals["files"], single["files_total"], "{totals}\n{single}");
    let single_id = Id::parse(single["snapshot"].as_str().unwrap()).unwrap();
    assert_eq!(
        source_tree(&repo, &src, &shard_id),
        source_tree(&repo, &src, &single_id),
        "the shard run's tree of the source is the single-node run's"
    );
    let to = t.path().join("restored");
    let (code, out, err) = sr(&[
        "restore",
        "--dest",
        &url,
        &shard_id.hex(),
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_mount_points_empty(&to, "the shard run's snapshot, restored");
    assert_verify_against_clean(&url, &shard_id.hex(), &src);
    if let Some(restic) = restic_binary("restic check of a shard run's -x snapshot") {
        run_restic(&restic, &repo, &["check", "--read-data"]);
    }
}

/// A source for a mount that comes or goes while a run walks it: `big/s1` … `s6`
/// (150 files each: spine directories, each cut into a few units) and `other` (20
/// files: one unit of the root). `None`, with a SKIPPED line, where mounting is not
/// possible.
fn race_source(t: &Path) -> Option<PathBuf> {
    drop(tmpfs(&t.join("probe"), "0755")?);
    let src = t.join("src");
    for s in 1..=6 {
        for f in 0..150 {
            write(
                &src.join(format!("big/s{s}/f{f:03}")),
                format!("big {s} {f}").as_bytes(),
            );
        }
    }
    for f in 0..20 {
        write(&src.join(format!("other/f{f:02}")), b"other");
    }
    Some(src)
}

/// The regular files below `p`.
fn files_below(p: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap_or_else(|e| panic!("list {}: {e}", p.display())) {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            n += files_below(&e.path());
        } else if t.is_file() {
            n += 1;
        }
    }
    n
}

/// `snapring finalize --dest DEST --run-id RUN` with `vars` in its environment.
fn finalize(dest: &str, run: &str, vars: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(["finalize", "--dest", dest, "--run-id", run])
        .env("SNAPRING_CATALOG", "off")
        .env_remove("SNAPRING_FAILPOINTS");
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Finalize decides a spine directory's mount by what the units recorded, not by a
/// `stat` of its own: the units walked `big` (no mount then), a finalize killed before
/// the tree is staged leaves it, `big` is mounted and finalize repeated (refused: it
/// cannot read what the mount hides, and throws nothing of the run's tree away),
/// unmounted and finalize repeated again: the snapshot holds every file the units
/// backed up, and verifies clean.
#[test]
fn a_finalize_repeated_while_a_spine_directory_is_mounted_throws_nothing_away() {
    let t = tempfile::tempdir().unwrap();
    let Some(src) = race_source(t.path()) else {
        return;
    };
    let dest = t.path().join("dest");
    let d = dest.to_str().unwrap();
    let run = "ra";
    let kill = [("SNAPRING_FAILPOINTS", "shard.finalize.before_staging=kill")];
    let o = worker(&src, d, (0, 2, run), &["-x"], &kill)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), None, "killed in finalize: {}", text(&o));
    let mounted = tmpfs(&src.join("big"), "0755").expect("mounted the probe");
    let under_mount = finalize(d, run, &kill);
    drop(mounted);
    let o = finalize(d, run, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_verify_clean(&dest, &["daily.0"]);
    assert_eq!(
        files_below(&dest.join("daily.0")),
        920,
        "every file backed up"
    );
    let rec = store_record(&dest, run);
    assert_eq!(rec["status"], "complete", "{rec}");
    assert_eq!(rec["files_total"], 920, "{rec}");
    assert!(
        rec.get("mount_points_skipped").is_none_or(|m| m == 0),
        "{rec}"
    );
    // The finalize under the mount stopped before changing anything, naming it.
    assert_eq!(under_mount.status.code(), Some(1), "{}", text(&under_mount));
    let err = String::from_utf8_lossy(&under_mount.stderr);
    assert!(
        err.contains("big") && err.contains("on another file system now"),
        "{err}"
    );
}

/// A unit that finds its directory on another device records it; finalize decides by
/// what the units recorded: `big` mounted after some of its units were walked (and
/// unmounted before the finalize that publishes) is partly backed up, a problem of a
/// partial run, and the snapshot holds what the units backed up (verifies clean).
#[test]
fn a_mount_that_comes_while_the_units_walk_makes_a_partial_run_in_the_store() {
    let t = tempfile::tempdir().unwrap();
    let Some(src) = race_source(t.path()) else {
        return;
    };
    let dest = t.path().join("dest");
    let d = dest.to_str().unwrap();
    let run = "rb";
    let pause = t.path().join("pause");
    let fp = format!(
        "shard.unit_started=pause:{}@4;shard.finalize.before_staging=kill",
        pause.display()
    );
    // One lane: three units walked before the mount, the others after it.
    let w0 = worker_jobs(
        &src,
        d,
        (0, 2, run),
        "1",
        &["-x"],
        &[("SNAPRING_FAILPOINTS", &fp)],
    )
    .spawn()
    .unwrap();
    wait_for(&pause);
    let mounted = tmpfs(&src.join("big"), "0755").expect("mounted the probe");
    std::fs::remove_file(&pause).unwrap();
    let o = w0.wait_with_output().unwrap();
    // Its finalize refuses `big` mounted now (a problem once unmounted), or is killed.
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    drop(mounted);
    let o = worker(&src, d, (1, 2, run), &["-x"], &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "partial: {}", text(&o));
    let rec = store_record(&dest, run);
    assert_eq!(rec["status"], "partial", "{rec}");
    let problems = rec["problems"].to_string();
    assert!(
        problems.contains("\"path\":\"big\"") && problems.contains("partly backed up"),
        "{rec}"
    );
    assert!(
        rec.get("mount_points_skipped").is_none_or(|m| m == 0),
        "{rec}"
    );
    assert_verify_clean(&dest, &["daily.0"]);
    let files = files_below(&dest.join("daily.0"));
    assert_eq!(rec["files_total"], files, "{rec}");
    assert!(files > 20 && files < 920, "{files}");
}

/// The same into a restic repository: units of `big` walked before it was mounted,
/// the others after. The worker's finalize, `big` still mounted, is refused (it cannot
/// read what the mount hides); `snapring finalize` once it is unmounted keeps what the
/// units backed up and reports `big` partly backed up (partial), rather than keeping
/// it empty as a mount point or leaving its spine directories out by a `stat` of its
/// own.
#[test]
fn a_mount_that_comes_while_the_units_walk_makes_a_partial_run_in_a_repository() {
    let t = tempfile::tempdir().unwrap();
    let Some(src) = race_source(t.path()) else {
        return;
    };
    let repo = t.path().join("repo");
    let url = file_url(&repo);
    let (code, _, err) = sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{err}");
    let run = "rr";
    let pause = t.path().join("pause");
    let fp = format!("shard.repo.before_commit=pause:{}@3", pause.display());
    // One lane: three units walked before the mount, the others after it.
    let w0 = worker_jobs(
        &src,
        &url,
        (0, 1, run),
        "1",
        &["-x"],
        &[("SNAPRING_FAILPOINTS", &fp)],
    )
    .spawn()
    .unwrap();
    wait_for(&pause);
    let mounted = tmpfs(&src.join("big"), "0755").expect("mounted the probe");
    std::fs::remove_file(&pause).unwrap();
    let under_mount = w0.wait_with_output().unwrap();
    drop(mounted);
    let (code, out, err) = sr(&["finalize", "--dest", &url, "--run-id", run, "--json"]);
    assert_eq!(code, 2, "partial: {out}\n{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["status"], "partial", "{r}");
    let problems = r.to_string();
    assert!(
        problems.contains("\"path\":\"big\"") && problems.contains("partly backed up"),
        "{r}"
    );
    let totals = &r["totals"];
    assert!(
        totals.get("mount_points_skipped").is_none_or(|m| m == 0),
        "{totals}"
    );
    let files = totals["files"].as_u64().unwrap();
    assert!(files > 20 && files < 920, "{totals}");
    let id = r["snapshot"].as_str().unwrap().to_string();
    let to = t.path().join("restored");
    let (code, out, err) = sr(&["restore", "--dest", &url, &id, "--to", to.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        files_below(&to) as u64,
        files,
        "the snapshot holds what the units backed up"
    );
    // The worker's finalize under the mount stopped before publishing, naming it.
    assert_eq!(under_mount.status.code(), Some(1), "{}", text(&under_mount));
    let err = String::from_utf8_lossy(&under_mount.stderr);
    assert!(
        err.contains("big") && err.contains("on another file system now"),
        "{err}"
    );
}
