//! Exclusion lists as rsync, rsnapshot, tar and restic users write them: `--exclude-from`
//! files, `--exclude-caches` (CACHEDIR.TAG) and `--exclude-if-present`, as flags and as
//! job keys, on the hard-link store, a restic repository (checked by Debian's restic)
//! and a shard run of four workers (the same tree as a single-node run); `verify
//! --against` the source is clean after each; bad pattern files are usage errors
//! naming the file and the line, before anything runs; `restore --mirror` keeps what the
//! backup left out; exclusions that leave nothing are refused as an empty source.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::restic::*;
use common::*;

const SIGNATURE: &str = "Signature: 8a477f597d28d172789f06886806bc55";

/// A source with something for each rule: `*.tmp` files and a `build/` directory for
/// the pattern file, a valid cache directory (with a subdirectory), a fake one (wrong
/// signature), one whose tag is too short, a directory tagged `.nobackup`, one with
/// both tags, and a directory named `CACHEDIR.TAG` that tags nothing (not a file).
fn source(src: &Path) {
    write(&src.join("a/keep.txt"), b"keep");
    write(&src.join("a/x.tmp"), b"tmp");
    write(&src.join("a/build/out.o"), b"object");
    write(&src.join("a/build.txt"), b"a file named like the dir stays");
    write(
        &src.join("cache/CACHEDIR.TAG"),
        format!("{SIGNATURE}\n# This file is a cache directory tag.\n").as_bytes(),
    );
    write(&src.join("cache/blob"), b"cached");
    write(&src.join("cache/sub/deeper"), b"cached too");
    write(
        &src.join("fake/CACHEDIR.TAG"),
        b"Signature: 00000000000000000000000000000000\n",
    );
    write(&src.join("fake/f"), b"not a cache");
    write(&src.join("short/CACHEDIR.TAG"), &SIGNATURE.as_bytes()[..20]);
    write(&src.join("short/f"), b"not a cache either");
    write(
        &src.join("dirtag/CACHEDIR.TAG/inside"),
        b"a directory is no tag",
    );
    write(&src.join("dirtag/f"), b"kept");
    write(&src.join("proj/.nobackup"), b"");
    write(&src.join("proj/src/main.rs"), b"fn main() {}");
    write(&src.join("both/CACHEDIR.TAG"), SIGNATURE.as_bytes());
    write(&src.join("both/.nobackup"), b"");
    write(&src.join("both/f"), b"gone");
    // A symlink named CACHEDIR.TAG is not followed out of the tree: no tag.
    write(&src.join("lnk/f"), b"kept");
    std::os::unix::fs::symlink("../cache/CACHEDIR.TAG", src.join("lnk/CACHEDIR.TAG")).unwrap();
}

/// The pattern file: a comment, a blank line, a CRLF line, a directory pattern.
fn pattern_file(dir: &Path) -> PathBuf {
    let f = dir.join("efs.exclude");
    std::fs::write(&f, b"# scratch files\n\n*.tmp\r\nbuild/\n").unwrap();
    f
}

/// What each rule leaves, checked on a restored or backed-up tree at `root`.
fn assert_excluded(root: &Path) {
    let has = |p: &str| std::fs::symlink_metadata(root.join(p)).is_ok();
    for p in [
        "a/keep.txt",
        "a/build.txt",
        "cache",
        "cache/CACHEDIR.TAG",
        "fake/CACHEDIR.TAG",
        "fake/f",
        "short/f",
        "dirtag/CACHEDIR.TAG/inside",
        "dirtag/f",
        "lnk/CACHEDIR.TAG",
        "lnk/f",
        "proj",
        "proj/.nobackup",
        "both",
    ] {
        assert!(has(p), "{p} must be kept in {}", root.display());
    }
    for p in [
        "a/x.tmp",
        "a/build",
        "cache/blob",
        "cache/sub",
        "proj/src",
        // Two tags: each rule leaves the other's tag out, as restic does.
        "both/CACHEDIR.TAG",
        "both/.nobackup",
        "both/f",
    ] {
        assert!(!has(p), "{p} must be left out of {}", root.display());
    }
}

fn flags(file: &Path) -> Vec<String> {
    vec![
        "--exclude-from".into(),
        file.display().to_string(),
        "--exclude-caches".into(),
        "--exclude-if-present".into(),
        ".nobackup".into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn out_text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Writes `p` into a directory the backup left contents out of, keeping the
/// directory's mtime (which the backup did record) as it was.
fn add_behind(p: &Path, data: &[u8]) {
    use std::os::unix::fs::MetadataExt;
    let dir = p.parent().unwrap();
    let m = std::fs::metadata(dir).unwrap();
    write(p, data);
    set_mtime(dir, m.mtime(), m.mtime_nsec());
}

fn verify_against(dest: &str, src: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let args: Vec<&OsStr> = vec![
        "verify".as_ref(),
        "--dest".as_ref(),
        dest.as_ref(),
        "--against".as_ref(),
        src.as_os_str(),
        "--json".as_ref(),
    ];
    snapring(&args, env)
}

#[test]
fn exclude_from_caches_and_if_present_on_the_hard_link_store() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    source(&src);
    let file = pattern_file(t.path());
    let f = flags(&file);

    // A dry run plans none of what is left out.
    let (code, rep, err) = backup(&src, &dest, &[&strs(&f)[..], &["--dry-run"]].concat(), &[]);
    assert_eq!(code, 0, "{err} {rep}");
    assert!(
        err.contains("a/keep.txt"),
        "the plan lists the kept files: {err}"
    );
    for gone in ["cache/blob", "proj/src", "x.tmp", "build/out.o", "both/f"] {
        assert!(!err.contains(gone), "the dry run plans {gone}: {err}");
    }

    let (code, rep, err) = backup(&src, &dest, &strs(&f), &[]);
    assert_eq!(code, 0, "{err} {rep}");
    assert_excluded(&dest.join("daily.0"));
    // The run record says what was left out: the patterns read from the file too.
    assert_eq!(
        rep["excludes"],
        serde_json::json!(["*.tmp", "build/"]),
        "{rep}"
    );
    assert_eq!(rep["exclude_from"], serde_json::json!([file]), "{rep}");
    assert_eq!(rep["exclude_caches"], true, "{rep}");
    assert_eq!(rep["exclude_if_present"], serde_json::json!([".nobackup"]));
    let id = rep["id"].as_str().unwrap();
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dest.join(format!(".snapring/runs/{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["exclude_caches"], true, "{rec}");

    // The source against the snapshot: what the backup left out is not "unexpected".
    let out = verify_against(dest.to_str().unwrap(), &src, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    let diff = snapring(
        &[
            "diff".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            "daily.0".as_ref(),
            "--against".as_ref(),
            src.as_os_str(),
            "--json".as_ref(),
        ],
        &[],
    );
    let d: serde_json::Value = serde_json::from_slice(&diff.stdout).unwrap_or_default();
    assert_eq!(
        d["differences"],
        serde_json::json!([]),
        "{}",
        out_text(&diff)
    );

    // A cache filled since is still no difference; a file outside one is.
    add_behind(&src.join("cache/new-blob"), b"new");
    write(&src.join("proj/src/lib.rs"), b"new");
    let out = verify_against(dest.to_str().unwrap(), &src, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    write(&src.join("fake/new"), b"new");
    let out = verify_against(dest.to_str().unwrap(), &src, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["unexpected"], 1, "{v}");

    // The next run links what it kept and still leaves the rest out.
    let (code, rep, err) = backup(&src, &dest, &strs(&f), &[]);
    assert_eq!(code, 0, "{err} {rep}");
    assert_excluded(&dest.join("daily.0"));
    assert!(dest.join("daily.0/fake/new").is_file());
    assert_verify_clean(&dest, &["--all"]);
}

#[test]
fn job_keys_in_a_config_file_and_config_check() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    source(&src);
    let file = pattern_file(t.path());
    let cfg = t.path().join("snapring.toml");
    let job = |exclude_from: &Path| {
        format!(
            "[job.efs]\nsource = {src:?}\ndest = {dest:?}\nexclude_from = [{exclude_from:?}]\nexclude_caches = true\nexclude_if_present = [\".nobackup\"]\n"
        )
    };
    std::fs::write(&cfg, job(&file)).unwrap();
    let check = snapring(&["config".as_ref(), "check".as_ref(), cfg.as_os_str()], &[]);
    assert_eq!(check.status.code(), Some(0), "{}", out_text(&check));
    let out = snapring(
        &[
            "run".as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
            "efs".as_ref(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    assert_excluded(&dest.join("daily.0"));
    let out = verify_against(dest.to_str().unwrap(), &src, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));

    // A bad line in the file: `config check` names the key, the file and its line.
    let bad = t.path().join("bad.exclude");
    std::fs::write(&bad, b"# ok\n*.tmp\nlogs/[\n").unwrap();
    std::fs::write(&cfg, job(&bad)).unwrap();
    let check = snapring(&["config".as_ref(), "check".as_ref(), cfg.as_os_str()], &[]);
    let said = out_text(&check);
    assert_eq!(check.status.code(), Some(1), "{said}");
    assert!(
        said.contains("job.efs.exclude_from:")
            && said.contains(&format!(
                "{}:3: exclude pattern \"logs/[\": ",
                bad.display()
            )),
        "{said}"
    );
    // A relative path in a config file depends on the daemon's directory: refused.
    std::fs::write(&cfg, job(Path::new("rel.exclude"))).unwrap();
    let check = snapring(&["config".as_ref(), "check".as_ref(), cfg.as_os_str()], &[]);
    assert_eq!(check.status.code(), Some(1), "{}", out_text(&check));
    assert!(
        out_text(&check).contains("absolute path"),
        "{}",
        out_text(&check)
    );
}

#[test]
fn bad_pattern_files_are_usage_errors_naming_the_file_and_line_before_anything_runs() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    source(&src);
    let missing = t.path().join("missing.exclude");
    let bad = t.path().join("bad.exclude");
    std::fs::write(&bad, b"*.tmp\n\n[\n").unwrap();
    let latin1 = t.path().join("latin1.exclude");
    std::fs::write(&latin1, b"*.tmp\r\n# caf\xe9\n\xe9t\xe9/\n").unwrap();
    let empty_tag = ["--exclude-if-present", "a/b"];
    for (args, says) in [
        (
            vec!["--exclude-from", missing.to_str().unwrap()],
            format!("exclude file {}: cannot read it", missing.display()),
        ),
        (
            vec!["--exclude-from", bad.to_str().unwrap()],
            format!("{}:3: exclude pattern \"[\"", bad.display()),
        ),
        (
            vec!["--exclude-from", latin1.to_str().unwrap()],
            format!("{}:2: exclude pattern is not UTF-8", latin1.display()),
        ),
        (empty_tag.to_vec(), "exclude_if_present \"a/b\"".to_string()),
    ] {
        let repo = t.path().join("repo");
        for to in [dest.display().to_string(), file_url(&repo)] {
            let (code, rep, err) = backup(
                &src,
                Path::new(&to),
                &args,
                &[("SNAPRING_PASSWORD", PASSWORD)],
            );
            assert_eq!(code, 64, "{to} {args:?}: {err} {rep}");
            assert!(
                err.contains(&says),
                "{to} {args:?}: wanted {says:?} in: {err}"
            );
            assert!(
                !dest.exists() && !repo.exists(),
                "{args:?}: nothing may run"
            );
        }
    }
}

#[test]
fn a_restic_repository_leaves_the_same_out_and_restic_reads_it() {
    let Some(restic) = restic_binary("exclusion in a restic repository") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    source(&src);
    let file = pattern_file(t.path());
    let repo = t.path().join("repo");
    let url = file_url(&repo);
    assert_eq!(sr(&["init", "--dest", &url]).0, 0);
    let f = flags(&file);
    let src_s = src.to_str().unwrap();
    let (code, out, err) = sr(&[
        &["backup", "--source", src_s, "--dest", &url, "--json"][..],
        &strs(&f),
    ]
    .concat());
    assert_eq!(code, 0, "{out}\n{err}");
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        rep["excludes"],
        serde_json::json!(["*.tmp", "build/"]),
        "{rep}"
    );
    assert_eq!(rep["exclude_caches"], true, "{rep}");

    run_restic(&restic, &repo, &["check", "--read-data"]);
    // restic's own listing of the snapshot, and its own restore.
    let ls = run_restic(&restic, &repo, &["ls", "latest"]);
    let ls = String::from_utf8_lossy(&ls.stdout);
    let canon = std::fs::canonicalize(&src).unwrap();
    let listed = |p: &str| ls.lines().any(|l| l == canon.join(p).to_str().unwrap());
    assert!(listed("cache/CACHEDIR.TAG") && listed("fake/f") && listed("proj/.nobackup"));
    assert!(
        !listed("cache/blob") && !listed("a/x.tmp") && !listed("a/build"),
        "{ls}"
    );
    let to = t.path().join("restored");
    run_restic(
        &restic,
        &repo,
        &["restore", "latest", "--target", to.to_str().unwrap()],
    );
    assert_excluded(&to.join(canon.strip_prefix("/").unwrap()));
    // The snapshot records the patterns (restic's `excludes`) and the tag rules.
    let snaps = run_restic(&restic, &repo, &["snapshots", "--json"]);
    let snaps: serde_json::Value = serde_json::from_slice(&snaps.stdout).unwrap();
    assert_eq!(snaps[0]["excludes"], serde_json::json!(["*.tmp", "build/"]));
    let tags = snaps[0]["tags"].to_string();
    assert!(
        tags.contains("\"exclude_caches\"") && tags.contains("\"exclude_if_present=.nobackup\""),
        "{tags}"
    );

    // The source against the snapshot is clean: what was left out is not unexpected.
    let out = verify_against(&url, &src, &[("SNAPRING_PASSWORD", PASSWORD)]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));

    add_behind(&src.join("cache/new-blob"), b"new");
    let out = verify_against(&url, &src, &[("SNAPRING_PASSWORD", PASSWORD)]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));

    // restic's own `--exclude-caches --exclude-if-present .nobackup` of the same source
    // leaves out the same entries, but for a symlink named CACHEDIR.TAG, which restic
    // follows (snapring reads no tag outside the directory).
    let (code, out, err) = sr(&[
        "backup",
        "--source",
        src_s,
        "--dest",
        &url,
        "--label",
        "tags",
        "--exclude-caches",
        "--exclude-if-present",
        ".nobackup",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let ours: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ours = ours["snapshot"].as_str().unwrap().to_string();
    run_restic(
        &restic,
        &repo,
        &[
            "backup",
            "--exclude-caches",
            "--exclude-if-present",
            ".nobackup",
            src_s,
        ],
    );
    let listing = |id: &str| -> Vec<String> {
        let o = run_restic(&restic, &repo, &["ls", id]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with('/'))
            .map(str::to_string)
            .collect()
    };
    let theirs = listing("latest");
    let mine = listing(&ours);
    let lnk_f = canon.join("lnk/f").display().to_string();
    assert!(mine.contains(&lnk_f) && !theirs.contains(&lnk_f));
    let mine: Vec<String> = mine.into_iter().filter(|l| *l != lnk_f).collect();
    assert_eq!(mine, theirs, "snapring's tag rules against restic's");
}

/// Shard worker `i` of 4 of run `run` backing `src` up into `dest` (a store or a
/// repository URL) with `flags`.
fn worker(src: &Path, dest: &str, flags: &[String], run: &str, i: usize) -> Command {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache");
    let mut c = Command::new(bin());
    c.args(["backup", "--jobs", "2", "--json", "--source"])
        .arg(src)
        .args(["--dest", dest])
        .args(["--shard", &format!("{i}/4"), "--run-id", run])
        .args(flags)
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_PASSWORD", PASSWORD)
        .env("XDG_CACHE_HOME", &cache);
    for v in [
        "SNAPRING_FAILPOINTS",
        "SNAPRING_SHARD_LEASE",
        "JOB_COMPLETION_INDEX",
        "SLURM_ARRAY_TASK_ID",
        "AWS_BATCH_JOB_ARRAY_INDEX",
        "SNAPRING_RUN_ID",
        "SNAPRING_SHARDS",
    ] {
        c.env_remove(v);
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// The four shard workers of run `run` at once ([`worker`]); each must exit 0.
fn run_workers(src: &Path, dest: &str, flags: &[String], run: &str) {
    let workers: Vec<_> = (0..4)
        .map(|i| worker(src, dest, flags, run, i).spawn().unwrap())
        .collect();
    for w in workers {
        let o = w.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "worker: {}", out_text(&o));
    }
}

/// A source whose heaviest directory is a cache: the plan would cut it into spine
/// directories of their own, whose units hold no tag.
fn heavy_source(src: &Path) {
    source(src);
    write(&src.join("big/CACHEDIR.TAG"), SIGNATURE.as_bytes());
    for d in 0..4 {
        for f in 0..60 {
            write(&src.join(format!("big/d{d}/s{}/f{f:02}", f % 3)), b"cached");
        }
    }
    for d in 0..3 {
        for f in 0..40 {
            write(&src.join(format!("work/w{d}/f{f:02}.tmp")), b"scratch");
            write(&src.join(format!("work/w{d}/g{f:02}")), b"kept");
        }
    }
    for f in 0..40 {
        write(
            &src.join(format!("skipme/x/f{f:02}")),
            b"skipped by pattern",
        );
        write(
            &src.join(format!("skipme/y/f{f:02}")),
            b"skipped by pattern",
        );
    }
}

/// A store snapshot copied into a repository keeps its run's exclusion settings (the
/// copy recorded none): the patterns in the snapshot's `excludes`, the tag rules in its
/// tags, so `verify --against` the source counts nothing left out as unexpected (it
/// said DAMAGED, exit 2). The copy holds what the store snapshot holds, no less.
#[test]
fn a_store_snapshot_copied_into_a_repository_keeps_its_exclusion_settings() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    source(&src);
    let file = pattern_file(t.path());
    let (code, rep, err) = backup(&src, &dest, &strs(&flags(&file)), &[]);
    assert_eq!(code, 0, "{err} {rep}");
    let repo = t.path().join("repo");
    let url = file_url(&repo);
    assert_eq!(sr(&["init", "--dest", &url]).0, 0);
    let (code, out, err) = sr(&[
        "copy",
        "--dest",
        dest.to_str().unwrap(),
        "daily.0",
        "--to",
        &url,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let snaps = snapring::restic::snapshot::load_all(
        &snapring::restic::repo::Repo::open(&repo, PASSWORD.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(snaps.len(), 1);
    let snap = &snaps[0].1;
    assert_eq!(snap.excludes, ["*.tmp", "build/"], "{snap:?}");
    assert!(
        snap.has_tag("exclude_caches")
            && snap
                .tags
                .iter()
                .any(|t| t == "exclude_if_present=.nobackup"),
        "{snap:?}"
    );
    let out = verify_against(&url, &src, &[("SNAPRING_PASSWORD", PASSWORD)]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["unexpected"], 0, "{v}");
    // The copy itself left nothing more out: restored, it is the store snapshot.
    let to = t.path().join("restored");
    let (code, out, err) = sr(&[
        "restore",
        "--dest",
        &url,
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_excluded(&to);
    // What a later change outside the rules adds is still found.
    write(&src.join("fake/new"), b"new");
    let out = verify_against(&url, &src, &[("SNAPRING_PASSWORD", PASSWORD)]);
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
}

#[test]
fn a_shard_run_of_four_workers_leaves_out_what_a_single_node_run_does() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest, single) = (
        t.path().join("src"),
        t.path().join("dest"),
        t.path().join("single"),
    );
    heavy_source(&src);
    let file = pattern_file(t.path());
    let mut f = flags(&file);
    f.extend(["--exclude".into(), "/skipme/".into()]);
    let (code, rep, err) = backup(
        &src,
        &single,
        &[&strs(&f)[..], &["--jobs", "2"]].concat(),
        &[],
    );
    assert_eq!(code, 0, "{err} {rep}");
    assert_excluded(&single.join("daily.0"));
    assert!(single.join("daily.0/big/CACHEDIR.TAG").is_file());
    assert!(!single.join("daily.0/big/d0").exists());
    assert!(!single.join("daily.0/skipme").exists());

    run_workers(&src, dest.to_str().unwrap(), &f, "excl-1");
    let plan =
        std::fs::read_to_string(dest.join(".snapring/shards/excl-1/plan.json")).unwrap_or_default();
    assert_same_tree(
        &describe(&single.join("daily.0")),
        &describe(&dest.join("daily.0")),
        &format!("a shard run against a single-node run (plan {plan})"),
    );
    let out = verify_against(dest.to_str().unwrap(), &src, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
}

#[test]
fn a_restic_shard_run_of_four_workers_leaves_out_what_a_single_node_run_does() {
    let Some(restic) = restic_binary("exclusion in a shard run into a restic repository") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    heavy_source(&src);
    let file = pattern_file(t.path());
    let mut f = flags(&file);
    f.extend(["--exclude".into(), "/skipme/".into()]);
    let (single, shard) = (t.path().join("single"), t.path().join("shard"));
    let (su, hu) = (file_url(&single), file_url(&shard));
    for u in [&su, &hu] {
        assert_eq!(sr(&["init", "--dest", u]).0, 0);
    }
    let src_s = src.to_str().unwrap();
    let (code, out, err) = sr(&[
        &["backup", "--source", src_s, "--dest", &su, "--jobs", "2"][..],
        &strs(&f),
    ]
    .concat());
    assert_eq!(code, 0, "{out}\n{err}");
    run_workers(&src, &hu, &f, "excl-r1");

    run_restic(&restic, &shard, &["check", "--read-data"]);
    let ls = run_restic(&restic, &shard, &["ls", "latest"]);
    let ls = String::from_utf8_lossy(&ls.stdout);
    let canon = std::fs::canonicalize(&src).unwrap();
    let listed = |p: &str| ls.lines().any(|l| l == canon.join(p).to_str().unwrap());
    assert!(listed("big/CACHEDIR.TAG") && listed("work/w0/g00"), "{ls}");
    assert!(
        !listed("big/d0") && !listed("skipme") && !listed("work/w0/f00.tmp"),
        "{ls}"
    );
    let snaps = run_restic(&restic, &shard, &["snapshots", "--json"]);
    let snaps: serde_json::Value = serde_json::from_slice(&snaps.stdout).unwrap();
    assert_eq!(
        snaps[0]["excludes"],
        serde_json::json!(["/skipme/", "*.tmp", "build/"]),
        "{snaps}"
    );
    assert!(
        snaps[0]["tags"].to_string().contains("\"exclude_caches\""),
        "{snaps}"
    );

    // Restored, the shard run's snapshot is the single-node run's tree.
    let (to_single, to_shard) = (t.path().join("r-single"), t.path().join("r-shard"));
    for (u, to) in [(&su, &to_single), (&hu, &to_shard)] {
        let (code, out, err) = sr(&restore_latest(u, to));
        assert_eq!(code, 0, "{out}\n{err}");
    }
    assert_excluded(&to_shard);
    assert_same_tree(
        &describe(&to_single),
        &describe(&to_shard),
        "a restic shard run against a single-node run",
    );
    let out = verify_against(&hu, &src, &[("SNAPRING_PASSWORD", PASSWORD)]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
}

#[test]
fn a_worker_whose_pattern_file_says_something_else_than_the_plan_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    heavy_source(&src);
    let file = pattern_file(t.path());
    let f = flags(&file);
    let dest = t.path().join("dest");
    let repo = t.path().join("repo");
    let url = file_url(&repo);
    assert_eq!(sr(&["init", "--dest", &url]).0, 0);
    for (target, failpoint) in [
        (dest.to_str().unwrap(), "shard.unit_started"),
        (url.as_str(), "shard.repo.before_walk"),
    ] {
        // Worker 0 makes the plan and is killed before its first unit.
        let o = worker(&src, target, &f, "differs", 0)
            .env("SNAPRING_FAILPOINTS", format!("{failpoint}=kill"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), None, "killed: {}", out_text(&o));
        // On worker 1's node the file says something else.
        std::fs::write(&file, b"*.tmp\n").unwrap();
        let o = worker(&src, target, &f, "differs", 1).output().unwrap();
        let said = out_text(&o);
        assert_eq!(o.status.code(), Some(64), "{target}: {said}");
        assert!(said.contains("exclusion settings"), "{target}: {said}");
        // Its dry run says the same (it planned by the run's plan, exit 0).
        if target == dest.to_str().unwrap() {
            let o = worker(&src, target, &f, "differs", 1)
                .arg("--dry-run")
                .output()
                .unwrap();
            let said = out_text(&o);
            assert_eq!(o.status.code(), Some(64), "dry run: {said}");
            assert!(said.contains("exclusion settings"), "dry run: {said}");
        }
        // Which of the two was started wrong cannot be told: the run publishes
        // nothing (exit 64); with the same file everywhere, a new run id does.
        pattern_file(t.path());
        let o = worker(&src, target, &f, "differs", 0).output().unwrap();
        let said = out_text(&o);
        assert_eq!(o.status.code(), Some(64), "{target}: {said}");
        assert!(said.contains("not published"), "{target}: {said}");
        run_workers(&src, target, &f, "differs-again");
    }
    assert_excluded(&dest.join("daily.0"));
}

/// `restore --mirror` of a snapshot made with exclusions, into the tree it was made of:
/// the snapshot does not have what the backup left out (a pattern, a directory-only
/// pattern, a cache's and a `.nobackup` directory's contents), so a mirror used to
/// delete it, losing it for good. It keeps it, as `rsync --delete --exclude` does and
/// as `diff --against` leaves it out; what is really new is still deleted. Matched at
/// its place in the snapshot, so an anchored pattern holds under `--flat` too.
#[test]
fn restore_mirror_keeps_what_the_backup_left_out() {
    let t = tempfile::tempdir().unwrap();
    let (v, store) = (t.path().join("v"), t.path().join("vs"));
    write(&v.join("proj/main.c"), b"src");
    write(&v.join("proj/vm/disk.vmdk"), b"big, backed up elsewhere");
    write(&v.join("proj/logs/today"), b"log");
    write(&v.join("proj/logs.txt"), b"a file named like the dir");
    write(&v.join("proj/cache/CACHEDIR.TAG"), SIGNATURE.as_bytes());
    write(&v.join("proj/cache/obj"), b"cached");
    write(&v.join("proj/nb/.nobackup"), b"");
    write(&v.join("proj/nb/data"), b"not backed up");
    let excl = [
        "--exclude",
        "proj/vm/*.vmdk",
        "--exclude",
        "logs/",
        "--exclude-caches",
        "--exclude-if-present",
        ".nobackup",
    ];
    let (code, rep, err) = backup(&v, &store, &excl, &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert!(!store.join("daily.0/proj/vm/disk.vmdk").exists());
    write(&v.join("proj/main.c"), b"broken edit");
    write(&v.join("proj/stray"), b"new since the backup");
    let d = store.to_str().unwrap();
    let (vs, to) = (v.to_str().unwrap(), v.to_str().unwrap());
    let out = snapring(
        &["diff", "--dest", d, "latest", "--against", vs, "--json"].map(OsStr::new),
        &[],
    );
    let diff: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(diff["added"], 1, "the new file only: {diff}");
    assert_eq!(diff["removed"], 0, "{diff}");

    let run = |extra: &[&str]| {
        let mut a = vec!["restore", "--dest", d, "latest", "--mirror"];
        a.extend(extra);
        snapring(&a.iter().map(OsStr::new).collect::<Vec<_>>(), &[])
    };
    let restore = |extra: &[&str]| {
        let out = run(&[extra, &["--json"][..]].concat());
        let r: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", out_text(&out)));
        (r, out_text(&out))
    };
    let kept = [
        "proj/vm/disk.vmdk",
        "proj/logs/today",
        "proj/cache/obj",
        "proj/nb/data",
    ];
    // The plan deletes the new file only, and counts what it keeps.
    let out = run(&["--path", "proj", "--to", to, "--dry-run"]);
    let plan = String::from_utf8_lossy(&out.stdout);
    let deletes: Vec<&str> = plan.lines().filter(|l| l.starts_with("- ")).collect();
    assert_eq!(deletes, ["- proj/stray"], "{}", out_text(&out));
    assert!(
        out_text(&out).contains("replaced 1, deleted 1 (kept 4 the backup excluded)\n"),
        "{}",
        out_text(&out)
    );
    let (r, _) = restore(&["--path", "proj", "--to", to]);
    assert_eq!(r["status"], "complete", "{r}");
    assert_eq!(r["deleted"], 1, "{r}");
    assert_eq!(r["overwritten"], 1, "{r}");
    assert_eq!(r["kept_excluded"], 4, "{r}");
    for p in kept {
        assert!(v.join(p).is_file(), "{p} was deleted by --mirror: {r}");
    }
    assert!(!v.join("proj/stray").exists(), "{r}");
    assert_eq!(std::fs::read(v.join("proj/main.c")).unwrap(), b"src");
    assert_eq!(
        std::fs::read(v.join("proj/logs.txt")).unwrap(),
        b"a file named like the dir"
    );

    // --flat into the directory itself: the anchored pattern still matches.
    write(&v.join("proj/stray"), b"again");
    let flat = v.join("proj");
    let (r, _) = restore(&[
        "--path",
        "proj",
        "--flat",
        "--to-is-dedicated",
        "--to",
        flat.to_str().unwrap(),
    ]);
    assert_eq!(r["deleted"], 1, "{r}");
    assert_eq!(r["kept_excluded"], 4, "{r}");
    for p in kept {
        assert!(
            v.join(p).is_file(),
            "{p} was deleted by --flat --mirror: {r}"
        );
    }
    assert!(!v.join("proj/stray").exists(), "{r}");
}

/// Exclusions that leave nothing of a source that has entries (a pattern file of `*`,
/// with a CRLF line end; patterns that match every entry, one by a directory-only
/// pattern) are refused as an empty source is, on the store and by a shard worker:
/// exit 1, nothing published, nothing expired, the message naming the pattern file;
/// `--allow-empty` accepts it.
#[test]
fn exclusions_that_leave_nothing_are_refused_as_an_empty_source_unless_allowed() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write(&src.join("a"), b"1");
    write(&src.join("d/b"), b"2");
    let (code, rep, err) = backup(&src, &dest, &["--retain", "1"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let all = t.path().join("pat_all");
    std::fs::write(&all, b"*\r\n").unwrap();
    let all_s = all.to_str().unwrap();
    for (flags, named) in [
        (
            vec!["--exclude-from", all_s],
            format!("--exclude-from {all_s}"),
        ),
        (
            vec!["--exclude", "a", "--exclude", "d/"],
            "--exclude \"d/\"".into(),
        ),
    ] {
        let args = [&["--retain", "1"][..], &flags[..]].concat();
        let (code, rep, err) = backup(&src, &dest, &args, &[]);
        let msg = rep["message"].as_str().unwrap_or_default();
        assert_eq!(code, 1, "{flags:?}: {err}\n{rep}");
        assert!(
            msg.contains("is not empty, but the exclusions (")
                && msg.contains(&named)
                && msg.contains(
                    ") leave nothing of it, and the previous snapshot daily.0 is not empty"
                )
                && msg.contains("pass --allow-empty"),
            "{flags:?}: {msg}"
        );
        assert_eq!(snapshot_names(&dest), ["daily.0"], "{flags:?}");
        assert!(
            dest.join("daily.0/d/b").is_file(),
            "{flags:?}: history expired"
        );
    }
    // A shard worker refuses the same (on a store of its own: it leaves its run's plan).
    let sharded = t.path().join("sharded");
    let (code, rep, err) = backup(&src, &sharded, &["--retain", "1"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let f: Vec<String> = ["--retain", "1", "--exclude-from", all_s]
        .map(String::from)
        .into();
    let o = worker(&src, sharded.to_str().unwrap(), &f, "empty-1", 0)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    assert!(
        out_text(&o).contains("leave nothing of it, and the previous snapshot daily.0"),
        "{}",
        out_text(&o)
    );
    assert_eq!(snapshot_names(&sharded), ["daily.0"]);
    assert!(
        sharded.join("daily.0/d/b").is_file(),
        "a shard worker expired history"
    );
    // What the patterns leave something of is backed up as before.
    let (code, rep, err) = backup(&src, &dest, &["--retain", "1", "--exclude", "a"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert!(dest.join("daily.0/d/b").is_file());
    // --allow-empty accepts it: the snapshot is empty.
    let (code, rep, err) = backup(
        &src,
        &dest,
        &["--retain", "1", "--exclude-from", all_s, "--allow-empty"],
        &[],
    );
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(snapshot_names(&dest), ["daily.0"]);
    assert_eq!(std::fs::read_dir(dest.join("daily.0")).unwrap().count(), 0);
}

/// A tag at the source root (`.nobackup` with `--exclude-if-present`, a valid
/// `CACHEDIR.TAG` with `--exclude-caches`) leaves only the tag: refused as exclusions
/// that leave nothing are, on the store, by a shard worker and into a repository (a
/// snapshot of the tag alone was published, exit 0, and `--retain` expired a snapshot
/// of the whole tree). `--allow-empty` accepts it.
#[test]
fn a_tag_at_the_source_root_is_refused_as_exclusions_that_leave_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for i in 0..20 {
        write(&src.join(format!("d/f{i}")), b"data");
    }
    let dest = t.path().join("dest");
    let repo = t.path().join("repo");
    let url = file_url(&repo);
    assert_eq!(sr(&["init", "--dest", &url]).0, 0);
    let (code, rep, err) = backup(&src, &dest, &["--retain", "1"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let src_s = src.to_str().unwrap();
    let into_repo = |extra: &[&str]| {
        let (code, out, err) = sr(&[
            &["backup", "--source", src_s, "--dest", &url, "--retain", "1"][..],
            extra,
        ]
        .concat());
        (code, format!("{out}\n{err}"))
    };
    let (code, out) = into_repo(&[]);
    assert_eq!(code, 0, "{out}");
    let snapshots = || -> Vec<_> {
        std::fs::read_dir(repo.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    };
    let first = snapshots();
    for (tag, body, flags) in [
        (
            ".nobackup",
            Vec::new(),
            vec!["--exclude-if-present", ".nobackup"],
        ),
        (
            "CACHEDIR.TAG",
            SIGNATURE.as_bytes().to_vec(),
            vec!["--exclude-caches"],
        ),
    ] {
        std::fs::write(src.join(tag), &body).unwrap();
        let args = [&["--retain", "1"][..], &flags[..]].concat();
        let (code, rep, err) = backup(&src, &dest, &args, &[]);
        let msg = rep["message"].as_str().unwrap_or_default();
        assert_eq!(code, 1, "{tag}: {err}\n{rep}");
        assert!(msg.contains("leave nothing of it"), "{tag}: {msg}");
        assert_eq!(snapshot_names(&dest), ["daily.0"], "{tag}");
        assert!(
            dest.join("daily.0/d/f19").is_file(),
            "{tag}: history expired"
        );
        let f: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let o = worker(&src, dest.to_str().unwrap(), &f, &format!("tag-{tag}"), 0)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{tag}: {}", out_text(&o));
        assert!(
            out_text(&o).contains("leave nothing of it"),
            "{}",
            out_text(&o)
        );
        assert!(
            dest.join("daily.0/d/f19").is_file(),
            "{tag}: a worker expired history"
        );
        let (code, out) = into_repo(&flags);
        assert_eq!(code, 1, "{tag}: {out}");
        assert!(out.contains("leave nothing of it"), "{tag}: {out}");
        assert_eq!(snapshots(), first, "{tag}: a snapshot written or forgotten");
        std::fs::remove_file(src.join(tag)).unwrap();
    }
    // Accepted on purpose: the snapshot holds the tag alone.
    std::fs::write(src.join(".nobackup"), b"").unwrap();
    let (code, rep, err) = backup(
        &src,
        &dest,
        &[
            "--retain",
            "1",
            "--exclude-if-present",
            ".nobackup",
            "--allow-empty",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}\n{rep}");
    let left: Vec<_> = std::fs::read_dir(dest.join("daily.0"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [".nobackup"]);
    // A root always tagged: the next run loses nothing (the previous snapshot holds the
    // tag alone) and is not refused, on the store and into a repository.
    let (code, rep, err) = backup(
        &src,
        &dest,
        &["--retain", "1", "--exclude-if-present", ".nobackup"],
        &[],
    );
    assert_eq!(code, 0, "{err}\n{rep}");
    let (code, out) = into_repo(&["--exclude-if-present", ".nobackup", "--allow-empty"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = into_repo(&["--exclude-if-present", ".nobackup"]);
    assert_eq!(code, 0, "{out}");
}

/// Into a restic repository the same guard holds (it had none: an empty source, or
/// exclusions that leave nothing, made an empty snapshot, and `--retain 1` forgot the
/// good one): exit 1 with the store's messages, no snapshot written, none forgotten;
/// `--allow-empty` accepts it.
#[test]
fn an_empty_source_or_exclusions_that_leave_nothing_are_refused_into_a_repository() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("a"), b"1");
    write(&src.join("d/b"), b"2");
    let r = RetainOne::init(t.path(), &src);
    let run = |extra: &[&str]| r.run(extra);
    let (code, out) = run(&[]);
    assert_eq!(code, 0, "{out}");
    let first = r.snapshots();
    assert_eq!(first.len(), 1);
    // Exclusions that leave nothing.
    let (code, out) = run(&["--exclude", "a", "--exclude", "d"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("leave nothing of it, and the previous snapshot")
            && out.contains("--exclude \"d\""),
        "{out}"
    );
    // An empty source (a failed mount).
    std::fs::remove_file(src.join("a")).unwrap();
    std::fs::remove_dir_all(src.join("d")).unwrap();
    let (code, out) = run(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("is empty but the previous snapshot")
            && out.contains("a failed mount looks exactly like this"),
        "{out}"
    );
    assert_eq!(r.snapshots(), first, "a snapshot written or forgotten");
    // Accepted on purpose: the empty snapshot replaces the other (--retain 1).
    let (code, out) = run(&["--allow-empty"]);
    assert_eq!(code, 0, "{out}");
    let now = r.snapshots();
    assert_eq!(now.len(), 1);
    assert_ne!(now, first);
}

/// `snapring backup` with `--exclude-from /dev/stdin` fed by a pipe (as `<(...)` is):
/// stdin holding `pattern` and then closed; returns the output.
fn with_patterns_on_stdin(mut c: Command, pattern: &[u8]) -> std::process::Child {
    use std::io::Write;
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(pattern).unwrap();
    drop(stdin);
    child
}

/// A pattern file that can be read only once (a pipe: `--exclude-from <(...)`,
/// `/dev/stdin`) is read once: its patterns are applied and recorded, by a run and by
/// shard workers (it was read to check it, then read again empty: nothing excluded).
#[test]
fn a_pattern_file_on_a_pipe_is_read_once_and_applied() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest, sharded) = (
        t.path().join("src"),
        t.path().join("dest"),
        t.path().join("sharded"),
    );
    write(&src.join("a.txt"), b"1");
    write(&src.join("b.tmp"), b"2");
    write(&src.join("d/c.tmp"), b"3");
    write(&src.join("d/e.txt"), b"4");
    let mut c = Command::new(bin());
    c.args(["backup", "--json", "--source"])
        .arg(&src)
        .arg("--dest")
        .arg(&dest)
        .args(["--exclude-from", "/dev/stdin"])
        .env("SNAPRING_CATALOG", "off");
    let o = with_patterns_on_stdin(c, b"*.tmp\n")
        .wait_with_output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rep["excludes"], serde_json::json!(["*.tmp"]), "{rep}");
    assert_eq!(
        rep["exclude_from"],
        serde_json::json!(["/dev/stdin"]),
        "{rep}"
    );
    assert!(dest.join("daily.0/a.txt").is_file());
    assert!(dest.join("daily.0/d/e.txt").is_file());
    assert!(!dest.join("daily.0/b.tmp").exists(), "the pattern was lost");
    assert!(
        !dest.join("daily.0/d/c.tmp").exists(),
        "the pattern was lost"
    );

    // Shard workers, each fed its own pipe.
    let f: Vec<String> = ["--exclude-from", "/dev/stdin"].map(String::from).into();
    let workers: Vec<_> = (0..4)
        .map(|i| {
            with_patterns_on_stdin(
                worker(&src, sharded.to_str().unwrap(), &f, "pipe-1", i),
                b"*.tmp\n",
            )
        })
        .collect();
    for w in workers {
        let o = w.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "worker: {}", out_text(&o));
    }
    assert!(sharded.join("daily.0/a.txt").is_file());
    assert!(sharded.join("daily.0/d/e.txt").is_file());
    assert!(!sharded.join("daily.0/b.tmp").exists(), "a worker lost it");
    assert!(
        !sharded.join("daily.0/d/c.tmp").exists(),
        "a worker lost it"
    );
}

/// Exclusions that leave only empty directories (every file matched, the directories
/// kept) are refused as exclusions that leave nothing are: exit 1, nothing published,
/// nothing expired, the message naming the patterns (it was `complete`, files 0, and
/// `--retain 1` expired the good snapshot). So is a source left with directories only.
/// `--allow-empty` accepts both.
#[test]
fn exclusions_that_leave_only_empty_directories_are_refused_unless_allowed() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write(&src.join("d1/a.dat"), b"1");
    write(&src.join("d2/b.dat"), b"2");
    let (code, rep, err) = backup(&src, &dest, &["--retain", "1"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    // Its dry run says so (it printed a plan that published and expired daily.0).
    let (code, rep, err) = backup(
        &src,
        &dest,
        &["--retain", "1", "--exclude", "*.dat", "--dry-run"],
        &[],
    );
    let all = format!("{err}\n{rep}");
    assert_eq!(code, 1, "{all}");
    assert!(
        all.contains("holds no file to back up once the exclusions")
            && !all.contains("expire daily.0"),
        "{all}"
    );
    let (code, rep, err) = backup(&src, &dest, &["--retain", "1", "--exclude", "*.dat"], &[]);
    let msg = rep["message"].as_str().unwrap_or_default();
    assert_eq!(
        (code, rep["status"].as_str()),
        (1, Some("failed")),
        "{err}\n{rep}"
    );
    assert!(
        msg.contains("holds no file to back up once the exclusions (--exclude \"*.dat\")")
            && msg.contains("the previous snapshot daily.0 holds files")
            && msg.contains("pass --allow-empty"),
        "{msg}"
    );
    assert_eq!(snapshot_names(&dest), ["daily.0"]);
    assert!(dest.join("daily.0/d1/a.dat").is_file(), "history expired");
    assert_eq!(
        std::fs::read_dir(dest.join(".snapring/staging"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "the refused run's tree was left behind"
    );
    // The files gone from the source, the directories left: the same.
    std::fs::remove_file(src.join("d1/a.dat")).unwrap();
    std::fs::remove_file(src.join("d2/b.dat")).unwrap();
    let (code, rep, err) = backup(&src, &dest, &["--retain", "1"], &[]);
    let msg = rep["message"].as_str().unwrap_or_default();
    assert_eq!(code, 1, "{err}\n{rep}");
    assert!(
        msg.contains("holds no file to back up (only directories)"),
        "{msg}"
    );
    assert!(dest.join("daily.0/d1/a.dat").is_file(), "history expired");
    // --allow-empty accepts it: a snapshot of the directories.
    let (code, rep, err) = backup(&src, &dest, &["--retain", "1", "--allow-empty"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert!(dest.join("daily.0/d1").is_dir());
    assert!(!dest.join("daily.0/d1/a.dat").exists());
    // From a snapshot without files, another without files is no loss: not refused.
    let (code, rep, err) = backup(&src, &dest, &["--retain", "1"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
}

/// rsync's, rsnapshot's and restic's rule prefixes, as users migrating bring them: a
/// pattern file's `- PATTERN` is the pattern (rsnapshot's `exclude_file` is rsync's);
/// `+ PATTERN` (include), `!PATTERN` (negation) and `- ` in `--exclude` are usage
/// errors naming the file and the line (white space around a file's pattern is taken
/// off, with a warning),
/// before anything runs (they were taken literally: matching nothing, or leaving out
/// what restic re-includes). Escaped, a name that starts so is excluded.
#[test]
fn rule_prefixes_of_other_tools_are_read_or_refused_never_taken_literally() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write(&src.join("keep.txt"), b"1");
    write(&src.join("x.tmp"), b"2");
    write(&src.join("!bang"), b"3");
    write(&src.join("+ plus"), b"4");
    write(&src.join("d/y.tmp"), b"5");
    let file = |name: &str, text: &[u8]| {
        let f = t.path().join(name);
        std::fs::write(&f, text).unwrap();
        f
    };
    let rsync = file("rsync.exclude", b"# rsnapshot's exclude_file\n- *.tmp\n");
    let plus = file("plus.exclude", b"*.tmp\n+ keep.txt\n");
    let bang = file("bang.exclude", b"*.txt\n!keep.txt\n");
    let space = file("space.exclude", b"  # indented comment\n*.tmp\n*.txt \n");
    let lead = file("lead.exclude", b"  *.tmp\n");
    let s = |p: &PathBuf| p.to_str().unwrap().to_string();
    for (args, says) in [
        (
            vec!["--exclude-from".to_string(), s(&plus)],
            format!(
                "{}:2: exclude pattern \"+ keep.txt\" is an rsync include rule",
                plus.display()
            ),
        ),
        (
            vec!["--exclude-from".to_string(), s(&bang)],
            format!(
                "{}:2: exclude pattern \"!keep.txt\" is a restic negation",
                bang.display()
            ),
        ),
        (
            vec!["--exclude".to_string(), "!keep.txt".to_string()],
            "exclude pattern \"!keep.txt\" is a restic negation".to_string(),
        ),
        (
            vec!["--exclude=- *.tmp".to_string()],
            "exclude pattern \"- *.tmp\" is an rsync exclude rule".to_string(),
        ),
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, rep, err) = backup(&src, &dest, &a, &[]);
        assert_eq!(code, 64, "{args:?}: {err} {rep}");
        assert!(err.contains(&says), "{args:?}: wanted {says:?} in: {err}");
        assert!(!dest.exists(), "{args:?}: nothing may run");
    }
    // `- PATTERN` in a file is the pattern; escaped names are matched literally.
    let (code, rep, err) = backup(
        &src,
        &dest,
        &[
            "--exclude-from",
            &s(&rsync),
            "--exclude",
            "\\!bang",
            "--exclude",
            "\\+ plus",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err} {rep}");
    assert_eq!(
        rep["excludes"],
        serde_json::json!(["\\!bang", "\\+ plus", "*.tmp"]),
        "{rep}"
    );
    let snap = dest.join("daily.0");
    assert!(snap.join("keep.txt").is_file());
    for gone in ["x.tmp", "d/y.tmp", "!bang", "+ plus"] {
        assert!(!snap.join(gone).exists(), "{gone} was backed up");
    }
    // White space around a file's pattern is taken off, with a warning (it was a usage
    // error for a while, which stopped a daemon whose existing file had a stray space);
    // an indented `#` line is a comment.
    let dest2 = t.path().join("dest2");
    let (code, rep, err) = backup(
        &src,
        &dest2,
        &["--exclude-from", &s(&space), "--exclude-from", &s(&lead)],
        &[],
    );
    assert_eq!(code, 0, "{err} {rep}");
    assert_eq!(
        rep["excludes"],
        serde_json::json!(["*.tmp", "*.txt", "*.tmp"]),
        "{rep}"
    );
    assert!(
        err.contains(&format!(
            "{}:3: exclude pattern \"*.txt \": the white space",
            space.display()
        )),
        "{err}"
    );
    assert!(!dest2.join("daily.0/keep.txt").exists() && !dest2.join("daily.0/x.tmp").exists());
    // config check says the same at the key.
    let cfg = t.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = {:?}\ndest = {:?}\nexclude = [\"!keep.txt\"]\nexclude_from = [{:?}]\n",
            src,
            t.path().join("d2"),
            plus
        ),
    )
    .unwrap();
    let out = snapring(&["config".as_ref(), "check".as_ref(), cfg.as_os_str()], &[]);
    let text = out_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("job.a.exclude: exclude pattern \"!keep.txt\" is a restic negation"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{}:2: exclude pattern \"+ keep.txt\"",
            plus.display()
        )),
        "{text}"
    );
}

/// The first run of a new label in a store that holds another label's snapshots, of a
/// source that holds only directories, is published: the guard against a run keeping
/// no file compares with this label's previous snapshot, not another's (the newest of
/// any label is what a new label's first run links against).
#[test]
fn a_new_labels_first_run_of_only_directories_is_not_refused_for_another_labels_files() {
    let t = tempfile::tempdir().unwrap();
    let (src, dirs, dest) = (
        t.path().join("src"),
        t.path().join("dirs"),
        t.path().join("dest"),
    );
    write(&src.join("a.dat"), b"1");
    std::fs::create_dir_all(dirs.join("spool/q")).unwrap();
    let (code, rep, err) = backup(&src, &dest, &["--label", "daily"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let (code, rep, err) = backup(&dirs, &dest, &["--label", "spool"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert!(dest.join("spool.0/spool/q").is_dir());
    assert!(dest.join("daily.0/a.dat").is_file());
}

/// Into a restic repository the same: exclusions that leave only directories (or a
/// source holding only directories now) against a parent snapshot with files write no
/// snapshot and forget none (it wrote a snapshot of empty directories, and `--retain 1`
/// forgot the one with the files); `--allow-empty` accepts it.
#[test]
fn exclusions_that_leave_only_empty_directories_are_refused_into_a_repository() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("d1/a.dat"), b"1");
    write(&src.join("d2/b.dat"), b"2");
    let r = RetainOne::init(t.path(), &src);
    let (run, snaps) = (|extra: &[&str]| r.run(extra), || r.snapshots());
    let (code, out) = run(&[]);
    assert_eq!(code, 0, "{out}");
    let first = snaps();
    assert_eq!(first.len(), 1);
    let (code, out) = run(&["--exclude", "*.dat"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("holds no file to back up once the exclusions (--exclude \"*.dat\")")
            && out.contains("holds files; refusing")
            && out.contains("pass --allow-empty"),
        "{out}"
    );
    assert_eq!(snaps(), first, "a snapshot written or forgotten");
    // A new label's first run (its parent is the other label's snapshot) forgets
    // nothing of that label: not refused (as into a store).
    let (code, out) = run(&["--exclude", "*.dat", "--label", "weekly"]);
    assert_eq!(code, 0, "{out}");
    let with_weekly = snaps();
    assert_eq!(with_weekly.len(), 2);
    assert!(first.iter().all(|s| with_weekly.contains(s)));
    // The files gone, the directories left: the same, without exclusions named.
    std::fs::remove_file(src.join("d1/a.dat")).unwrap();
    std::fs::remove_file(src.join("d2/b.dat")).unwrap();
    let (code, out) = run(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("holds no file to back up (only directories)"),
        "{out}"
    );
    assert_eq!(snaps(), with_weekly, "a snapshot written or forgotten");
    // A symlink is kept, as the store counts it among its files: not refused.
    std::os::unix::fs::symlink("/etc/hostname", src.join("d1/link")).unwrap();
    let (code, out) = run(&[]);
    assert_eq!(code, 0, "{out}");
    std::fs::remove_file(src.join("d1/link")).unwrap();
    write(&src.join("d1/a.dat"), b"1");
    assert_eq!(run(&[]).0, 0);
    std::fs::remove_file(src.join("d1/a.dat")).unwrap();
    // Accepted on purpose; then a parent without files is no loss.
    let before = snaps();
    let (code, out) = run(&["--allow-empty"]);
    assert_eq!(code, 0, "{out}");
    assert_ne!(snaps(), before);
    let (code, out) = run(&[]);
    assert_eq!(code, 0, "{out}");
}

/// A `file://` repository in `<dir>/repo` and backups of one source into it with
/// `--retain 1` (the guards' tests).
struct RetainOne {
    repo: PathBuf,
    url: String,
    src: PathBuf,
}

impl RetainOne {
    fn init(dir: &Path, src: &Path) -> RetainOne {
        let repo = dir.join("repo");
        let url = file_url(&repo);
        assert_eq!(sr(&["init", "--dest", &url]).0, 0);
        RetainOne {
            repo,
            url,
            src: src.to_path_buf(),
        }
    }

    /// A backup with `extra`: its exit code, stdout and stderr.
    fn run(&self, extra: &[&str]) -> (i32, String) {
        let src = self.src.to_str().unwrap();
        let (code, out, err) = sr(&[
            &[
                "backup", "--source", src, "--dest", &self.url, "--retain", "1",
            ][..],
            extra,
        ]
        .concat());
        (code, format!("{out}\n{err}"))
    }

    /// The snapshot files' names, sorted.
    fn snapshots(&self) -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = std::fs::read_dir(self.repo.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    }
}

/// A source of `n` files in four directories (`d{i % 4}/f{i}`).
fn many_files(src: &Path, n: usize) {
    for i in 0..n {
        write(&src.join(format!("d{}/f{i}", i % 4)), b"x");
    }
}

/// The source replaced by a directory holding only a marker file (a failed mount whose
/// mount point has one, a wrong bind mount).
fn only_a_marker(src: &Path) {
    std::fs::remove_dir_all(src).unwrap();
    write(&src.join(".placeholder"), b"");
}

/// A source that keeps fewer than a tenth of the files of the label's previous snapshot
/// (of at least 100) is refused as an empty one is (invariant 4: suspiciously empty):
/// a source replaced by a marker file, or a pattern that leaves out nearly everything.
/// Exit 1, the run `failed`, the message says how many files against how many, which
/// snapshot and `--allow-empty`; nothing published or expired, no staging tree left, a
/// dry run refused the same. At a tenth it passes. `--allow-empty` publishes it, and
/// the next run compares with that snapshot: not refused. Before: `complete`, and
/// `--retain` expired the history.
#[test]
fn a_source_that_shrank_to_a_marker_file_is_refused_unless_allowed() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    many_files(&src, 200);
    let (code, rep, err) = backup(&src, &dest, &["--retain", "1"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let refused = |extra: &[&str], kept: &str| {
        let (code, rep, err) = backup(&src, &dest, &[&["--retain", "1"][..], extra].concat(), &[]);
        let all = format!("{err}\n{rep}");
        assert_eq!(code, 1, "{all}");
        assert!(
            all.contains(&format!("keeps {kept} to back up"))
                && all.contains("the previous snapshot daily.0 holds 200")
                && all.contains("pass --allow-empty")
                && !all.contains("expire daily.0"),
            "{all}"
        );
        if !extra.contains(&"--dry-run") {
            assert_eq!(rep["status"], "failed", "{rep}");
        }
        assert_eq!(snapshot_names(&dest), ["daily.0"]);
        assert!(dest.join("daily.0/d1/f1").is_file(), "history expired");
        assert_eq!(
            std::fs::read_dir(dest.join(".snapring/staging"))
                .map(|d| d.count())
                .unwrap_or(0),
            0,
            "the refused run's tree was left behind"
        );
    };
    // A pattern that leaves 19 of 200 (under a tenth); 20 (a tenth) passes the rule, as
    // a dry run shows.
    let keep_19: Vec<String> = (19..200).map(|i| format!("--exclude=f{i}")).collect();
    let keep_19: Vec<&str> = keep_19.iter().map(|s| s.as_str()).collect();
    refused(&keep_19, "19 files");
    let (code, rep, err) = backup(
        &src,
        &dest,
        &[&["--retain", "1", "--dry-run"][..], &keep_19[1..]].concat(),
        &[],
    );
    assert_eq!(code, 0, "{err}\n{rep}");
    only_a_marker(&src);
    refused(&["--dry-run"], "1 file");
    refused(&[], "1 file");
    // Allowed: published, and the next run (compared with it) is not refused.
    let (code, rep, err) = backup(&src, &dest, &["--retain", "1", "--allow-empty"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(snapshot_names(&dest), ["daily.0"]);
    assert!(dest.join("daily.0/.placeholder").is_file());
    let (code, rep, err) = backup(&src, &dest, &["--retain", "1"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
}

/// The shrink guard compares a run with its own label's previous snapshot only: a label
/// whose snapshots were all taken over from another tool (no record of their files) is
/// not compared with another label's recorded snapshot, which stands in as the run's
/// previous snapshot (R2, session 46: `etc.0` taken over beside a recorded `home.0` of
/// 200 files, the first `--label etc` run of 5 files was refused naming `home.0`). A
/// run of the recorded label that shrinks is still refused.
#[test]
fn a_taken_over_label_is_not_compared_with_another_labels_count() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    many_files(&src, 200);
    let (code, rep, err) = backup(&src, &dest, &["--label", "home"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    // A tree another tool made, taken over: no record.
    write(&dest.join("etc.0/hosts"), b"x");
    std::fs::remove_dir_all(&src).unwrap();
    for i in 0..5 {
        write(&src.join(format!("f{i}")), b"y");
    }
    let (code, rep, err) = backup(&src, &dest, &["--label", "etc"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["status"], "complete", "{rep}");
    assert!(dest.join("etc.0/f4").is_file());
    let (code, rep, err) = backup(&src, &dest, &["--label", "home"], &[]);
    let all = format!("{err}\n{rep}");
    assert_eq!(code, 1, "{all}");
    assert!(
        all.contains("the previous snapshot home.0 holds 200"),
        "{all}"
    );
}

/// The same into a restic repository: a source replaced by a marker file against a
/// parent of 150 files is refused (exit 1, the counts and the parent named), nothing
/// written or forgotten (it "forgot 3 snapshots"); `--allow-empty` writes it, and the
/// next run is not refused.
#[test]
fn a_source_that_shrank_to_a_marker_file_is_refused_into_a_repository_unless_allowed() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    many_files(&src, 150);
    let r = RetainOne::init(t.path(), &src);
    let (code, out) = r.run(&[]);
    assert_eq!(code, 0, "{out}");
    let first = r.snapshots();
    assert_eq!(first.len(), 1);
    let parent = first[0].to_str().unwrap()[..8].to_string();
    only_a_marker(&src);
    let (code, out) = r.run(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("keeps 1 file to back up, but the previous snapshot")
            && out.contains(&parent)
            && out.contains("holds 150")
            && out.contains("--allow-empty"),
        "{out}"
    );
    assert_eq!(r.snapshots(), first, "a snapshot written or forgotten");
    let (code, out) = r.run(&["--allow-empty"]);
    assert_eq!(code, 0, "{out}");
    let now = r.snapshots();
    assert_eq!(now.len(), 1);
    assert_ne!(now, first);
    let (code, out) = r.run(&[]);
    assert_eq!(code, 0, "{out}");
}
