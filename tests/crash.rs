//! Crash safety: SIGKILL the backup at many points of the walk, the publish and the
//! rotation (and kill the repair itself), then check that the next command repairs the
//! store, that every published snapshot equals the source as it was at its backup, and
//! that no history was lost.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

type Model = BTreeMap<Vec<u8>, Desc>;

fn list(store: &Path, failpoints: &str) -> std::process::Output {
    snapring(
        &[
            "list".as_ref(),
            "--json".as_ref(),
            "--dest".as_ref(),
            store.as_os_str(),
        ],
        &[("SNAPRING_FAILPOINTS", failpoints)],
    )
}

fn mutate(src: &Path, round: usize) {
    write(
        &src.join(format!("new/round{round}")),
        format!("round {round}").as_bytes(),
    );
    write(
        &src.join("d0/f0"),
        format!("changed in round {round}").as_bytes(),
    );
    chmod(&src.join("d1/f1"), 0o600 + round as u32 % 2 * 0o40);
    let _ = std::fs::remove_file(src.join(format!("d2/f{}", 2 + 4 * round)));
}

/// Checks that the store holds exactly `expected` (newest first) and that each equals
/// its model.
fn check_store(store: &Path, expected: &[&Model], what: &str) {
    let names = snapshot_names(store);
    let want: Vec<String> = (0..expected.len()).map(|i| format!("daily.{i}")).collect();
    assert_eq!(names, want, "{what}: snapshots");
    for (i, m) in expected.iter().enumerate() {
        assert_same_tree(
            m,
            &describe(&store.join(format!("daily.{i}"))),
            &format!("{what}: daily.{i}"),
        );
    }
    assert!(
        !store.join(".snapring/journal").exists(),
        "{what}: journal left behind"
    );
}

/// One crash scenario: three good runs (retain 3, so the next rotation expires one),
/// a mutation, a run killed at `failpoint`, then repair by `list`, then a good run.
fn scenario(failpoint: &str, publishes: bool) {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    for i in 0..40 {
        write(
            &src.join(format!("d{}/f{i}", i % 4)),
            format!("content {i}").as_bytes(),
        );
    }
    let mut models: Vec<Model> = Vec::new();
    for round in 0..3 {
        mutate(&src, round);
        let (code, _, err) = backup(&src, &store, &["--retain", "3", "--jobs", "4"], &[]);
        assert_eq!(code, 0, "{err}");
        models.insert(0, describe(&src));
    }
    mutate(&src, 3);
    let attempted = describe(&src);
    let spec = match failpoint.split_once('@') {
        Some((name, nth)) => format!("{name}=kill@{nth}"),
        None => format!("{failpoint}=kill"),
    };
    let (code, _, _) = backup(
        &src,
        &store,
        &["--retain", "3", "--jobs", "4"],
        &[("SNAPRING_FAILPOINTS", &spec)],
    );
    assert_eq!(code, -1, "{failpoint}: the run was not killed");

    let out = list(&store, "");
    assert!(
        out.status.success(),
        "{failpoint}: list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let what = format!("after kill at {failpoint}");
    if publishes {
        check_store(&store, &[&attempted, &models[0], &models[1]], &what);
    } else {
        check_store(&store, &[&models[0], &models[1], &models[2]], &what);
    }
    // The killed run's record is not left `running`.
    for e in std::fs::read_dir(store.join(".snapring/runs")).unwrap() {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
        assert_ne!(r["status"], "running", "{what}: {r}");
    }

    // The next backup works, resumes or links what it can, and cleans up.
    let (code, rep, err) = backup(&src, &store, &["--retain", "3", "--jobs", "4"], &[]);
    assert_eq!(code, 0, "{what}: next run: {err}");
    if publishes {
        assert_eq!(
            rep["files_transferred"], 0,
            "{what}: nothing changed since the published run: {rep}"
        );
        check_store(&store, &[&attempted, &attempted, &models[0]], &what);
    } else {
        check_store(&store, &[&attempted, &models[0], &models[1]], &what);
    }
    assert_eq!(
        std::fs::read_dir(store.join(".snapring/staging"))
            .unwrap()
            .count(),
        0,
        "{what}: staging left"
    );
    assert_eq!(
        std::fs::read_dir(store.join(".snapring/trash"))
            .unwrap()
            .count(),
        0,
        "{what}: trash left"
    );
}

#[test]
fn killed_during_the_walk_publishes_nothing() {
    for fp in [
        "walk.dir",
        "walk.dir@3",
        "walk.copy",
        "walk.copy@3",
        "walk.after_copy@2",
    ] {
        scenario(fp, false);
    }
}

#[test]
fn killed_before_the_journal_publishes_nothing() {
    for fp in ["backup.before_publish", "journal.before_write"] {
        scenario(fp, false);
    }
}

#[test]
fn killed_after_the_journal_is_rolled_forward() {
    for fp in [
        "journal.after_write",
        "rotate.step",
        "rotate.step@2",
        "rotate.step@3",
        "rotate.step@4",
        "journal.before_state",
        "journal.before_remove",
        "trash.dir",
        "trash.dir@3",
    ] {
        scenario(fp, true);
    }
}

/// A run killed during its rotation is published by the next command, and its record
/// then has the run's figures and what its rotation expired (the roll-forward sets only
/// the status and the name: the record said `complete` with 0 files and nothing
/// expired, and so did the catalog's row).
#[test]
fn a_run_killed_during_its_rotation_keeps_its_figures_in_its_record() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    for i in 0..10 {
        write(&src.join(format!("f{i}")), b"x");
    }
    for round in 0..2 {
        write(&src.join("round"), format!("{round}").as_bytes());
        assert_eq!(backup(&src, &store, &["--retain", "2"], &[]).0, 0);
    }
    // The record of a run killed at `failpoint`, once `list` has repaired the store.
    let killed_run = |round: &str, failpoint: &str| -> serde_json::Value {
        write(&src.join("round"), round.as_bytes());
        let runs = || -> Vec<std::path::PathBuf> {
            let mut v: Vec<_> = std::fs::read_dir(store.join(".snapring/runs"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            v.sort();
            v
        };
        let before = runs();
        let env = [("SNAPRING_FAILPOINTS", failpoint)];
        let (code, _, _) = backup(&src, &store, &["--retain", "2"], &env);
        assert_eq!(code, -1, "{failpoint}");
        let out = list(&store, "");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{failpoint}: {err}");
        let new: Vec<_> = runs().into_iter().filter(|p| !before.contains(p)).collect();
        assert_eq!(new.len(), 1, "{failpoint}: {new:?}");
        serde_json::from_slice(&std::fs::read(&new[0]).unwrap()).unwrap()
    };
    let rec = killed_run("2", "rotate.step=kill@2");
    assert_eq!(rec["status"], "complete", "{rec}");
    assert_eq!(rec["snapshot"], "daily.0", "{rec}");
    assert_eq!(rec["files_total"], 11, "{rec}");
    assert_eq!(rec["files_transferred"], 1, "only `round` changed: {rec}");
    assert_eq!(rec["files_linked"], 10, "{rec}");
    assert_eq!(rec["expired"], serde_json::json!(["daily.1"]), "{rec}");
    assert!(
        rec["message"]
            .as_str()
            .unwrap()
            .contains("stopped during its rotation"),
        "{rec}"
    );
    // Killed after its own rotation (deleting what it expired): its publish settled the
    // record, no later command finished anything, and nothing says one did.
    let rec = killed_run("3", "backup.after_publish=kill");
    assert_eq!(rec["status"], "complete", "{rec}");
    assert_eq!(rec["files_total"], 11, "{rec}");
    assert!(
        !rec["message"]
            .as_str()
            .unwrap_or_default()
            .contains("stopped during its rotation"),
        "{rec}"
    );
}

/// The repair itself is killed half-way; the next command finishes it.
#[test]
fn killed_repair_is_repaired() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    for i in 0..10 {
        write(&src.join(format!("f{i}")), b"x");
    }
    let mut models = Vec::new();
    for round in 0..2 {
        write(&src.join("round"), format!("{round}").as_bytes());
        assert_eq!(backup(&src, &store, &["--retain", "2"], &[]).0, 0);
        models.insert(0, describe(&src));
    }
    write(&src.join("round"), b"2");
    let attempted = describe(&src);
    // Killed after the first rename of the rotation (expire daily.1).
    let (code, _, _) = backup(
        &src,
        &store,
        &["--retain", "2"],
        &[("SNAPRING_FAILPOINTS", "rotate.step=kill@2")],
    );
    assert_eq!(code, -1);
    // The repair is killed after its second step.
    let out = list(&store, "rotate.step=kill@3");
    assert_eq!(out.status.signal(), Some(9));
    let out = list(&store, "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_store(&store, &[&attempted, &models[0]], "after a killed repair");
}
