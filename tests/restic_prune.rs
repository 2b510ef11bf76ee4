//! Retention and prune on a restic repository (docs/format.md, "Retention and prune"):
//! `backup --retain N` and `forget` remove only the snapshot files restic's `forget
//! --keep-last N` would; `prune` deletes and repacks what no snapshot uses, after which
//! `restic check --read-data` passes, `restic snapshots` lists exactly the kept ones,
//! they restore byte-equal and the repository is smaller. Locks: prune refuses while a
//! real `restic backup` or a snapring backup holds its lock, restic refuses while
//! snapring's prune holds its exclusive one, and a prune killed after writing a pack
//! leaves a repository restic checks. Tests that need Debian's `restic` skip without it.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::restic::*;
use common::*;

fn sr_json(args: &[&str]) -> serde_json::Value {
    let (code, out, err) = sr(args);
    assert_eq!(code, 0, "snapring {args:?}: {out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn backup(src: &Path, repo: &Path, extra: &[&str]) -> serde_json::Value {
    let mut a = vec![
        "backup",
        "--json",
        "--source",
        src.to_str().unwrap(),
        "--dest",
    ];
    let u = file_url(repo);
    a.push(&u);
    a.extend_from_slice(extra);
    sr_json(&a)
}

/// Total bytes of the files under `p`.
fn size_of(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

fn count(repo: &Path, dir: &str) -> usize {
    let mut n = 0;
    let mut stack = vec![repo.join(dir)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

/// The `id` of each snapshot of a JSON list (`snapring list --json`, `restic snapshots
/// --json`), in the list's order.
fn ids_of(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The ids of the snapshots restic lists, sorted.
fn restic_snapshot_ids(restic: &Path, repo: &Path) -> Vec<String> {
    let out = run_restic(restic, repo, &["snapshots", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids = ids_of(&v);
    ids.sort();
    ids
}

/// `restic check --read-data` of the repository at `repo` passes, and `restic restore
/// latest` into `to` equals the source `src` (restic restores under the source's
/// absolute path).
fn restic_checks_and_restores(restic: &Path, repo: &Path, src: &Path, to: &Path, what: &str) {
    run_restic(restic, repo, &["check", "--read-data"]);
    run_restic(
        restic,
        repo,
        &["restore", "latest", "--target", to.to_str().unwrap()],
    );
    assert_same_tree(
        &describe(src),
        &describe(&to.join(src.strip_prefix("/").unwrap())),
        what,
    );
}

/// Run `i` of the source: a file kept from then on (`keep-i`), a file only this run has
/// (`tmp-i`, 1 MiB, so its pack is part used, part not once the run is forgotten), and
/// a file that is rewritten every run.
fn change_source(src: &Path, i: u64) {
    write(
        &src.join(format!("keep/keep-{i}")),
        &pseudo_random(300 << 10, i),
    );
    if i > 0 {
        let _ = std::fs::remove_file(src.join(format!("tmp/tmp-{}", i - 1)));
    }
    write(
        &src.join(format!("tmp/tmp-{i}")),
        &pseudo_random(1 << 20, 1000 + i),
    );
    write(
        &src.join("every-run"),
        format!("run {i}\n").repeat(1000).as_bytes(),
    );
}

/// A snapshot of the same group dated later than now (a clock that ran ahead for one
/// run, or `restic backup --time`) stays "the newest": before, every `backup --retain 1`
/// forgot the snapshot it had just written and reported `complete`. The run's own
/// snapshot is kept, with its reason.
#[test]
fn retain_never_forgets_the_snapshot_the_run_just_wrote() {
    use snapring::restic::backend::Kind;
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("f"), b"first\n");
    sr_json(&["init", "--dest", &file_url(&repo), "--json"]);
    let first = backup(&src, &repo, &[]);
    // The same snapshot again, dated 2099.
    let r = snapring::restic::repo::Repo::open(&repo, PASSWORD.as_bytes()).unwrap();
    let (_, mut ahead) = snapring::restic::snapshot::load_all(&r)
        .unwrap()
        .pop()
        .unwrap();
    ahead.time = "2099-01-01T00:00:00+00:00".into();
    let ahead_id = r.save_json(Kind::Snapshot, &ahead).unwrap().hex();

    write(&src.join("f"), b"second\n");
    let second = backup(&src, &repo, &["--retain", "1"]);
    assert_eq!(second["status"], "complete", "{second}");
    let own = second["snapshot"].as_str().unwrap().to_string();
    let verdicts = second["repository"]["retention"]["plan"]["verdicts"]
        .as_array()
        .unwrap();
    let reason = |id: &str| {
        verdicts
            .iter()
            .find(|v| v["id"] == id)
            .map(|v| v["reason"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(
        reason(&own).starts_with("kept: written by this run"),
        "{second}"
    );
    assert!(
        reason(first["snapshot"].as_str().unwrap()).starts_with("forgotten"),
        "{second}"
    );
    let listed = sr_json(&["list", "--dest", &file_url(&repo), "--json"]);
    let mut ids = ids_of(&listed);
    ids.sort();
    let mut want = vec![own.clone(), ahead_id];
    want.sort();
    assert_eq!(ids, want, "{listed}");
    // And it restores as written.
    let to = t.path().join("to");
    sr_json(&[
        "restore",
        "--dest",
        &file_url(&repo),
        &own,
        "--to",
        to.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(std::fs::read(to.join("f")).unwrap(), b"second\n");
}

#[test]
fn retain_then_prune_keeps_exactly_the_newest_and_shrinks_the_repository() {
    let restic = restic_binary("conformance");
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let u = file_url(&repo);
    sr_json(&["init", "--dest", &u, "--json"]);
    // Four runs of `daily` with --retain 2, one `weekly` that retention leaves alone.
    let mut wanted: BTreeMap<String, _> = BTreeMap::new();
    let mut ids = Vec::new();
    let mut daily = Vec::new();
    for i in 0..4 {
        change_source(&src, i);
        let r = backup(&src, &repo, &["--label", "daily", "--retain", "2"]);
        assert_eq!(r["status"], "complete", "{r}");
        let id = r["snapshot"].as_str().unwrap().to_string();
        let verdicts = r["repository"]["retention"]["plan"]["verdicts"]
            .as_array()
            .unwrap();
        assert_eq!(verdicts.len() as u64, (i + 1).min(3), "{r}");
        assert_eq!(verdicts[0]["id"], id.as_str(), "{r}");
        assert_eq!(
            verdicts[0]["reason"], "kept: newest 2 of label daily (1 of 2)",
            "{r}"
        );
        if i >= 2 {
            assert_eq!(r["repository"]["retention"]["removed"], 1, "{r}");
            assert_eq!(verdicts[2]["id"], daily[i as usize - 2], "{r}");
            assert_eq!(
                verdicts[2]["reason"], "forgotten: older than the newest 2 of label daily",
                "{r}"
            );
        }
        wanted.insert(id.clone(), describe(&src));
        daily.push(id.clone());
        ids.push(id);
        if i == 0 {
            let w = backup(&src, &repo, &["--label", "weekly", "--retain", "1"]);
            ids.push(w["snapshot"].as_str().unwrap().to_string());
            wanted.insert(ids[1].clone(), describe(&src));
        }
    }
    // ids: daily0, weekly, daily1, daily2, daily3.
    let kept = vec![ids[1].clone(), ids[3].clone(), ids[4].clone()];
    let mut kept_sorted = kept.clone();
    kept_sorted.sort();
    let listed = ids_of(&sr_json(&["list", "--dest", &u, "--json"]));
    assert_eq!(listed, kept, "snapring list after retention");
    // Forgetting removed snapshot files only: every pack is still there.
    let packs_before = count(&repo, "data");
    let before = size_of(&repo);

    let dry = sr_json(&["prune", "--dest", &u, "--dry-run", "--json"]);
    assert_eq!(
        count(&repo, "data"),
        packs_before,
        "a dry run changed packs"
    );
    let plan = &dry["plan"];
    assert_eq!(plan["snapshots"], 3, "{dry}");
    assert!(plan["packs_repacked"].as_u64().unwrap() >= 1, "{dry}");
    assert!(plan["packs_deleted"].as_u64().unwrap() >= 1, "{dry}");
    // tmp-1 is only in the forgotten daily1 (tmp-0 is in the kept weekly too).
    assert!(plan["bytes_unused"].as_u64().unwrap() >= 1 << 20, "{dry}");

    let r = sr_json(&["prune", "--dest", &u, "--json"]);
    assert_eq!(r["plan"]["packs_repacked"], plan["packs_repacked"], "{r}");
    let after = size_of(&repo);
    assert!(
        after + (1 << 20) <= before,
        "the repository did not shrink by the forgotten 1 MiB file: {before} -> {after}"
    );
    assert_eq!(count(&repo, "index"), 1, "{r}");
    assert_eq!(count(&repo, "locks"), 0, "prune left its lock");
    // A second prune finds nothing to do.
    let again = sr_json(&["prune", "--dest", &u, "--json"]);
    assert_eq!(again["plan"]["blobs_unused"], 0, "{again}");
    assert_eq!(again["packs_removed"], 0, "{again}");

    if let Some(restic) = &restic {
        run_restic(restic, &repo, &["check", "--read-data"]);
        assert_eq!(restic_snapshot_ids(restic, &repo), kept_sorted);
    }
    for id in &kept {
        let to = t.path().join(format!("restored-{id}"));
        let (code, out, err) = sr(&["restore", "--dest", &u, id, "--to", to.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}{err}");
        assert_same_tree(&wanted[id], &describe(&to), "a kept snapshot after prune");
    }
    // The next backup still finds its parent and reads only what changed.
    change_source(&src, 4);
    let next = backup(&src, &repo, &["--label", "daily", "--retain", "2"]);
    assert_eq!(next["based_on"], ids[4].as_str(), "{next}");
    assert_eq!(next["repository"]["files_read"], 3, "{next}");
    if let Some(restic) = &restic {
        run_restic(restic, &repo, &["check", "--read-data"]);
    }
}

#[test]
fn forget_standalone_plans_with_reasons_and_leaves_other_labels() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let u = file_url(&repo);
    sr_json(&["init", "--dest", &u, "--json"]);
    write(&src.join("f"), b"x");
    let mut daily = Vec::new();
    for _ in 0..3 {
        daily.push(
            backup(&src, &repo, &[])["snapshot"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let hourly = backup(&src, &repo, &["--label", "hourly"])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, out, _) = sr(&[
        "forget",
        "--dest",
        &u,
        "--label",
        "daily",
        "--retain",
        "1",
        "--dry-run",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("would forget 2 snapshots"), "{out}");
    let line = |id: &str| out.lines().find(|l| l.contains(&id[..8])).unwrap_or("");
    assert!(
        line(&daily[0]).ends_with("forgotten: older than the newest 1 of label daily"),
        "{out}"
    );
    assert!(
        line(&daily[2]).ends_with("kept: newest 1 of label daily (1 of 1)"),
        "{out}"
    );
    assert_eq!(count(&repo, "snapshots"), 4, "a dry run removed snapshots");
    let r = sr_json(&[
        "forget", "--dest", &u, "--label", "daily", "--retain", "1", "--json",
    ]);
    assert_eq!(r["removed"], 2, "{r}");
    let listed = ids_of(&sr_json(&["list", "--dest", &u, "--json"]));
    assert_eq!(listed, vec![daily[2].clone(), hourly]);
    // A usage error (64), naming the flag and the value.
    let (code, _, err) = sr(&["forget", "--dest", &u, "--label", "daily", "--retain", "0"]);
    assert_eq!(code, 64);
    assert!(
        err.contains("'0' for '--retain") && err.contains("0 would keep no snapshot"),
        "{err}"
    );
    let (code, _, err) = sr(&[
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &u,
        "--retain",
        "0",
    ]);
    assert_eq!(code, 64);
    assert!(err.contains("'0' for '--retain"), "{err}");
    // A label backup's `--label` refuses (a comma splits restic's tags, `daily.0` is a
    // slot) is refused here too: it matched no tag, and forgot nothing without a word.
    for bad in ["daily,hourly", "daily.0", "1daily", ""] {
        let (code, _, err) = sr(&["forget", "--dest", &u, "--label", bad, "--retain", "1"]);
        assert_eq!(code, 64, "{bad:?}: {err}");
        assert!(
            err.contains(&format!("label {bad:?} is not valid: use letters, digits")),
            "{bad:?}: {err}"
        );
    }
    assert_eq!(count(&repo, "snapshots"), 2);
}

/// A `restic backup --stdin` that holds its (shared) lock until its stdin closes.
struct ResticHolding {
    child: std::process::Child,
}

impl ResticHolding {
    fn start(restic: &Path, repo: &Path) -> ResticHolding {
        let locks = count(repo, "locks");
        let child = restic_cmd(restic, repo)
            .args(["backup", "--stdin", "--stdin-filename", "held"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while count(repo, "locks") == locks {
            assert!(t0.elapsed().as_secs() < 30, "restic took no lock");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        ResticHolding { child }
    }

    fn finish(mut self) {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"held data").unwrap();
        drop(stdin);
        let out = self.child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

#[test]
fn prune_refuses_while_restic_or_snapring_back_up_and_backup_retention_waits() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let u = file_url(&repo);
    sr_json(&["init", "--dest", &u, "--json"]);
    write(&src.join("f"), &pseudo_random(100 << 10, 1));
    backup(&src, &repo, &[]);
    write(&src.join("f"), &pseudo_random(100 << 10, 2));
    backup(&src, &repo, &[]);

    // snapring's own backup, paused after its packs are written: its shared lock stays.
    // (A changed file, so it writes a pack: an unchanged tree writes none.)
    write(&src.join("f"), &pseudo_random(100 << 10, 3));
    let pause = t.path().join("paused");
    let child = Command::new(bin())
        .env("SNAPRING_CATALOG", "off")
        .args(["backup", "--json", "--source"])
        .arg(&src)
        .args(["--dest", &u])
        .env("SNAPRING_PASSWORD", PASSWORD)
        .env(
            "SNAPRING_FAILPOINTS",
            format!("restic.pack_written=pause:{}", pause.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&pause);
    let (code, out, err) = sr(&["prune", "--dest", &u]);
    // Locked by another process: try again later (EX_TEMPFAIL).
    assert_eq!(code, 75, "{out}{err}");
    assert!(
        err.contains(&format!("locked by pid {}", child.id())),
        "{err}"
    );
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");

    let Some(restic) = restic_binary("conformance") else {
        return;
    };
    // A real, running `restic backup`.
    let held = ResticHolding::start(&restic, &repo);
    let (code, out, err) = sr(&["prune", "--dest", &u]);
    // Locked by another process: try again later (EX_TEMPFAIL).
    assert_eq!(code, 75, "{out}{err}");
    assert!(err.contains("the repository is locked"), "{err}");
    // A backup with --retain completes; its retention waits for the next run.
    let r = backup(&src, &repo, &["--retain", "1"]);
    assert_eq!(r["status"], "complete", "{r}");
    assert!(
        r["repository"]["retention_skipped"]
            .as_str()
            .is_some_and(|s| s.contains("locked")),
        "{r}"
    );
    assert!(r["repository"].get("retention").is_none(), "{r}");
    held.finish();
    // restic's snapshot has no label: retention leaves it; snapring's are thinned.
    let r = backup(&src, &repo, &["--retain", "1"]);
    assert_eq!(r["repository"]["retention"]["removed"], 4, "{r}");
    let p = sr_json(&["prune", "--dest", &u, "--json"]);
    assert!(p["packs_removed"].as_u64().unwrap() >= 1, "{p}");
    run_restic(&restic, &repo, &["check", "--read-data"]);
    assert_eq!(restic_snapshot_ids(&restic, &repo).len(), 2);
}

#[test]
fn restic_refuses_while_snapring_prunes_and_a_killed_prune_leaves_a_checked_repository() {
    let Some(restic) = restic_binary("conformance") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let u = file_url(&repo);
    sr_json(&["init", "--dest", &u, "--json"]);
    for i in 0..3 {
        change_source(&src, i);
        backup(&src, &repo, &["--retain", "1"]);
    }
    let prune_with = |failpoint: String| {
        Command::new(bin())
            .env("SNAPRING_CATALOG", "off")
            .args(["prune", "--json", "--dest", &u])
            .env("SNAPRING_PASSWORD", PASSWORD)
            .env("SNAPRING_FAILPOINTS", failpoint)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Paused with its exclusive lock: restic backs off.
    let pause = t.path().join("paused");
    let child = prune_with(format!(
        "restic.prune_pack_written=pause:{}",
        pause.display()
    ));
    wait_for(&pause);
    let out = restic_cmd(&restic, &repo)
        .arg("backup")
        .arg(&src)
        .output()
        .unwrap();
    assert!(!out.status.success(), "restic backed up during a prune");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked exclusively"), "{err}");
    // Killed right after its first new pack: the old index still names every pack.
    let mut child = child;
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_file(&pause).unwrap();
    let out = prune_with("restic.prune_pack_written=kill".into())
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), None, "not killed: {out:?}");
    run_restic(&restic, &repo, &["unlock"]);
    run_restic(&restic, &repo, &["check", "--read-data"]);
    // The next prune completes, and restic agrees with the result.
    let r = sr_json(&["prune", "--dest", &u, "--json"]);
    assert!(r["packs_removed"].as_u64().unwrap() >= 1, "{r}");
    restic_checks_and_restores(
        &restic,
        &repo,
        &src,
        &t.path().join("T"),
        "restic restore after snapring's prune",
    );
}

#[test]
fn a_held_lock_is_refreshed_as_a_new_file_and_removed_on_release() {
    use snapring::restic::backend::Kind;
    use snapring::restic::{lock, repo::Repo};
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    sr_json(&["init", "--dest", &file_url(&repo), "--json"]);
    let opened = Repo::open(&repo, PASSWORD.as_bytes()).unwrap();
    let held = lock::acquire(&opened, false).unwrap();
    let first = held.id().unwrap();
    let before: lock::LockFile = opened.load_json(Kind::Lock, &first).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    held.refresh().unwrap();
    let second = held.id().unwrap();
    assert_ne!(first, second);
    assert_eq!(opened.backend.list(Kind::Lock).unwrap(), vec![second]);
    let after: lock::LockFile = opened.load_json(Kind::Lock, &second).unwrap();
    let t0 = chrono::DateTime::parse_from_rfc3339(&before.time).unwrap();
    let t1 = chrono::DateTime::parse_from_rfc3339(&after.time).unwrap();
    assert!(t1 > t0, "{} -> {}", before.time, after.time);
    assert_eq!((after.pid, after.exclusive), (before.pid, before.exclusive));
    if let Some(restic) = restic_binary("conformance") {
        let out = run_restic(&restic, &repo, &["list", "locks", "--no-lock"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            second.hex(),
            "restic reads the refreshed lock"
        );
    }
    held.release().unwrap();
    assert!(opened.backend.list(Kind::Lock).unwrap().is_empty());
    // Releasing at once does not wait for the refresher's first 5 minutes (a release
    // before the thread first waited was a lost wake-up).
    let t0 = std::time::Instant::now();
    for _ in 0..50 {
        lock::acquire(&opened, true).unwrap().release().unwrap();
    }
    assert!(t0.elapsed().as_secs() < 20, "{:?}", t0.elapsed());
}

#[test]
fn snapring_prunes_a_repository_restic_wrote_and_forgot_in() {
    let Some(restic) = restic_binary("conformance") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    run_restic(&restic, &repo, &["init", "--repository-version", "2"]);
    for i in 0..3 {
        change_source(&src, i);
        run_restic(&restic, &repo, &["backup", src.to_str().unwrap()]);
    }
    run_restic(&restic, &repo, &["forget", "--keep-last", "1"]);
    let before = size_of(&repo);
    let r = sr_json(&["prune", "--dest", &file_url(&repo), "--json"]);
    assert_eq!(r["plan"]["snapshots"], 1, "{r}");
    assert!(r["packs_removed"].as_u64().unwrap() >= 1, "{r}");
    let after = size_of(&repo);
    // tmp-0 and tmp-1 (1 MiB each) are in no kept snapshot.
    assert!(after + (2 << 20) <= before, "{before} -> {after}: {r}");
    restic_checks_and_restores(
        &restic,
        &repo,
        &src,
        &t.path().join("T"),
        "restic restore after snapring pruned restic's repository",
    );
}

/// Review: a backup reads the index when it opens the repository and takes its shared
/// lock after. A prune in between deletes the packs of a forgotten snapshot's data; the
/// backup must not skip storing a file because that stale index still names its blobs,
/// or its snapshot names data the repository lacks.
#[test]
fn a_prune_between_a_backups_open_and_its_lock_loses_none_of_its_data() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let url = file_url(&repo);
    let (code, _, err) = sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{err}");
    write(&src.join("keep"), b"kept\n");
    write(&src.join("big"), &pseudo_random(300_000, 11));
    let first = backup(&src, &repo, &[]);
    std::fs::rename(src.join("big"), t.path().join("big")).unwrap();
    backup(&src, &repo, &[]);
    std::fs::remove_file(
        repo.join("snapshots")
            .join(first["snapshot"].as_str().unwrap()),
    )
    .unwrap();
    std::fs::rename(t.path().join("big"), src.join("big")).unwrap();
    let pause = t.path().join("paused");
    let w = Command::new(bin())
        .args([
            "backup",
            "--json",
            "--source",
            src.to_str().unwrap(),
            "--dest",
            &url,
        ])
        .env("SNAPRING_PASSWORD", PASSWORD)
        .env("SNAPRING_CATALOG", "off")
        .env("XDG_CACHE_HOME", t.path().join("cache"))
        .env(
            "SNAPRING_FAILPOINTS",
            format!("restic.backup.before_lock=pause:{}", pause.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&pause);
    let p = sr_json(&["prune", "--json", "--dest", &url]);
    assert!(p["packs_removed"].as_u64().unwrap() > 0, "{p}");
    std::fs::remove_file(&pause).unwrap();
    let out = w.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let (code, out, err) = sr(&["verify", "--dest", &url]);
    assert_eq!(code, 0, "{out}\n{err}");
}

/// `forget` removes snapshot files only and reads no index file, as restic's
/// `forget` does: its memory does not grow with the repository's files, and it works
/// while an index file is damaged (the snapshots can be forgotten before `repair
/// index`). Before, it loaded the whole index first and failed on the damaged file.
#[test]
fn forget_reads_no_index_file() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let u = file_url(&repo);
    sr_json(&["init", "--dest", &u, "--json"]);
    let mut ids = Vec::new();
    for i in 0..3 {
        write(
            &src.join(format!("f{i}")),
            format!("content {i}").as_bytes(),
        );
        ids.push(
            backup(&src, &repo, &[])["snapshot"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Every index file garbled in place: one that is read fails the command.
    let mut garbled = 0;
    for e in std::fs::read_dir(repo.join("index")).unwrap() {
        let p = e.unwrap().path();
        std::fs::write(&p, b"not an index file").unwrap();
        garbled += 1;
    }
    assert!(garbled > 0, "no index file to garble");
    let r = sr_json(&[
        "forget", "--dest", &u, "--label", "daily", "--retain", "1", "--json",
    ]);
    assert_eq!(r["removed"], 2, "{r}");
    let (code, out, err) = sr(&["forget", "--dest", &u, "--json", &ids[2]]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(count(&repo, "snapshots"), 0);
    // What reads blobs still refuses the garbled index, naming it and its repair
    // (`list` reads no index since session 47: it lists snapshot files).
    let (code, _, err) = sr(&["prune", "--dest", &u]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("index file") && err.contains("`snapring repair index --dest"),
        "{err}"
    );
    let (code, out, err) = sr(&["list", "--dest", &u]);
    assert_eq!(code, 0, "{out}\n{err}");
}
