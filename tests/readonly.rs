//! Read commands only read: `list`, `diff`, `verify`, `history` and `restore` leave
//! every byte and every metadata field of the store (`.snapring/` included) as they
//! found it, work on a read-only mount, and show a store whose rotation was interrupted
//! as rolling it forward will leave it, without writing.

mod common;
use common::state::*;
use common::*;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Runs `snapring CMD --dest STORE ARGS…`; returns (exit, stdout JSON, stderr).
fn cmd(store: &Path, c: &str, args: &[&OsStr]) -> (i32, serde_json::Value, String) {
    let mut a: Vec<&OsStr> = vec![c.as_ref(), "--dest".as_ref(), store.as_os_str()];
    a.extend_from_slice(args);
    let out = snapring(&a, &[]);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mutate(src: &Path, round: u32) {
    write(&src.join("links/a"), format!("round {round}").as_bytes());
    write(&src.join(format!("added-{round}")), b"new file");
    chmod(&src.join("modes/setgid"), 0o2700 + round);
    set_xattr(
        &src.join("attrs/file"),
        "user.color",
        format!("c{round}").as_bytes(),
    );
}

/// A store of three backups of an odd tree; returns (tempdir, store, the source as it
/// was at each backup, oldest first).
fn three_backups() -> (tempfile::TempDir, PathBuf, Vec<BTreeMap<Vec<u8>, Desc>>) {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    std::fs::create_dir(&src).unwrap();
    odd_tree(&src);
    let mut models = Vec::new();
    for round in 0..3 {
        if round > 0 {
            mutate(&src, round);
        }
        let (code, rep, err) = backup(&src, &store, &[], &[]);
        assert_eq!(code, 0, "{err}\n{rep}");
        models.push(describe(&src));
    }
    (t, store, models)
}

/// Runs every read command against `store` and checks what they say; restores go
/// under `out`. `models`: the source at each backup, oldest first (daily.0 is last).
fn read_everything(store: &Path, out: &Path, models: &[BTreeMap<Vec<u8>, Desc>], what: &str) {
    let o = OsStr::new;
    let n = models.len();
    let (code, l, err) = cmd(store, "list", &[o("--json")]);
    assert_eq!(code, 0, "{what}: list: {err}");
    let names: Vec<&str> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..n).map(|i| format!("daily.{i}")).collect();
    assert_eq!(names, want, "{what}: {l}");
    assert!(
        l.as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "complete"),
        "{what}: {l}"
    );
    let (code, l, err) = cmd(store, "list", &[o("--space"), o("--json")]);
    assert_eq!(code, 0, "{what}: list --space: {err}");
    assert!(l[0]["unique_bytes"].as_u64().unwrap() > 0, "{what}: {l}");
    let oldest = format!("daily.{}", n - 1);
    let (code, d, err) = cmd(store, "diff", &[o(&oldest), o("daily.0"), o("--json")]);
    assert_eq!(code, 0, "{what}: diff: {err}");
    assert!(
        !d["differences"].as_array().unwrap().is_empty(),
        "{what}: {d}"
    );
    let (code, v, err) = cmd(store, "verify", &[o("--json")]);
    assert_eq!(code, 0, "{what}: verify: {err}\n{v}");
    let (code, v, err) = cmd(store, "verify", &[o("--all"), o("--json")]);
    assert_eq!(code, 0, "{what}: verify --all: {err}\n{v}");
    assert_eq!(v.as_array().unwrap().len(), n, "{what}: {v}");
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|s| s["clean"] == true && s["against"] == "manifest"),
        "{what}: {v}"
    );
    let (code, h, err) = cmd(store, "history", &[o("links/a"), o("--json")]);
    assert_eq!(code, 0, "{what}: history: {err}");
    assert_eq!(h.as_array().unwrap().len(), n, "{what}: {h}");

    // Restores: the whole newest snapshot, one directory of the oldest, one file.
    let whole = out.join("whole");
    let (code, r, err) = cmd(
        store,
        "restore",
        &[o("--json"), o("daily.0"), o("--to"), whole.as_os_str()],
    );
    assert_eq!(code, 0, "{what}: restore: {err}\n{r}");
    assert_same_tree(
        &models[n - 1],
        &describe(&whole),
        &format!("{what}: restore of daily.0"),
    );
    let dir = out.join("dir");
    let (code, r, err) = cmd(
        store,
        "restore",
        &[
            o("--json"),
            o(&oldest),
            o("--path"),
            o("links"),
            o("--to"),
            dir.as_os_str(),
        ],
    );
    assert_eq!(code, 0, "{what}: restore --path links: {err}\n{r}");
    let sub = |m: &BTreeMap<Vec<u8>, Desc>, p: &[u8]| -> BTreeMap<Vec<u8>, Desc> {
        m.iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(p)?;
                let rest = if rest.is_empty() {
                    rest
                } else {
                    rest.strip_prefix(b"/")?
                };
                let mut v = v.clone();
                v.link_group = v.link_group.map(|g| g[p.len() + 1..].to_vec());
                Some((rest.to_vec(), v))
            })
            .collect()
    };
    assert_same_tree(
        &sub(&models[0], b"links"),
        &describe(&dir.join("links")),
        &format!("{what}: restore of links"),
    );
    let file = out.join("file");
    let (code, r, err) = cmd(
        store,
        "restore",
        &[
            o("--json"),
            o("daily.0"),
            o("--path"),
            o("attrs/file"),
            o("--to"),
            file.as_os_str(),
        ],
    );
    assert_eq!(code, 0, "{what}: restore --path attrs/file: {err}\n{r}");
    assert_eq!(
        describe(&file.join("attrs/file"))[&Vec::new()],
        models[n - 1][&b"attrs/file".to_vec()],
        "{what}: restore of one file"
    );
}

#[test]
fn read_commands_change_nothing_in_the_store() {
    let (t, store, models) = three_backups();
    let before = full_state(&store);
    read_everything(&store, &t.path().join("out"), &models, "writable store");
    assert_unchanged(
        &before,
        &full_state(&store),
        "after list, diff, verify, history, restore",
    );
}

#[test]
fn read_commands_work_on_a_read_only_mount() {
    let (t, store, models) = three_backups();
    let before = full_state(&store);
    let Some(_m) = ro_mount_or_skip(&store, &t.path().join("ro")) else {
        return;
    };
    read_everything(
        &t.path().join("ro"),
        &t.path().join("out"),
        &models,
        "read-only mount",
    );
    assert_unchanged(&before, &full_state(&store), "read-only mount");
}

/// A rotation that failed half-way leaves its journal. Read commands show the store as
/// the roll-forward will leave it and write nothing, on a writable store (except `list`,
/// which repairs it) and on a read-only mount (where nothing can repair it).
#[test]
fn an_interrupted_rotation_reads_as_rolled_forward_without_writing() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    for i in 0..6 {
        write(
            &src.join(format!("d{}/f{i}", i % 2)),
            format!("v1 {i}").as_bytes(),
        );
    }
    let mut models = Vec::new();
    for round in 0..2 {
        write(&src.join("d0/f0"), format!("round {round}").as_bytes());
        write(&src.join("links/a"), format!("round {round}").as_bytes());
        write(&src.join("attrs/file"), b"attrs");
        write(&src.join("modes/setgid"), b"setgid");
        set_xattr(
            &src.join("attrs/file"),
            "user.round",
            format!("{round}").as_bytes(),
        );
        assert_eq!(backup(&src, &store, &["--retain", "3"], &[]).0, 0);
        models.push(describe(&src));
    }
    write(&src.join("d0/f0"), b"round 2");
    write(&src.join("links/a"), b"round 2");
    let (code, rep, _) = backup(
        &src,
        &store,
        &["--retain", "3"],
        &[("SNAPRING_FAILPOINTS", "rotate.step=error@2")],
    );
    assert_eq!(code, 1, "{rep}");
    models.push(describe(&src));
    let id = rep["id"].as_str().unwrap().to_string();
    assert!(store.join(".snapring/journal").exists());
    // Mid-shift on disk: daily.1 renamed to daily.2, daily.0 not yet moved.
    assert_eq!(snapshot_names(&store), ["daily.0", "daily.2"]);
    let before = full_state(&store);

    // Read-only mount first: list cannot repair, and shows the rolled-forward store.
    if let Some(_m) = ro_mount_or_skip(&store, &t.path().join("ro")) {
        let ro = t.path().join("ro");
        let (code, l, err) = cmd(&ro, "list", &["--json".as_ref()]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(l[0]["name"], "daily.0", "{l}");
        assert_eq!(l[0]["id"], id.as_str(), "{l}");
        assert_eq!(l[0]["status"], "complete", "{l}");
        assert_eq!(l.as_array().unwrap().len(), 3, "{l}");
        assert!(err.contains("rotation was interrupted"), "{err}");
        read_everything(
            &ro,
            &t.path().join("out-ro"),
            &models,
            "interrupted, read-only",
        );
    }
    assert_unchanged(&before, &full_state(&store), "read-only mount");

    // Writable store: everything but list reads the same view and writes nothing.
    let o = OsStr::new;
    let to = t.path().join("out-rw");
    let (code, r, err) = cmd(
        &store,
        "restore",
        &[o("--json"), o("daily.0"), o("--to"), to.as_os_str()],
    );
    assert_eq!(code, 0, "{err}\n{r}");
    assert_same_tree(
        &models[2],
        &describe(&to),
        "restore of the rolled-forward daily.0",
    );
    for args in [
        vec!["verify", "--all"],
        vec!["diff", "daily.2", "daily.0"],
        vec!["history", "d0/f0"],
    ] {
        let a: Vec<&OsStr> = args[1..].iter().map(OsStr::new).collect();
        let (code, _, err) = cmd(&store, args[0], &a);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    assert_unchanged(&before, &full_state(&store), "writable store, before list");
    // list repairs: the same names, now on disk.
    let (code, l, err) = cmd(&store, "list", &["--json".as_ref()]);
    assert_eq!(code, 0, "{err}");
    assert!(!store.join(".snapring/journal").exists());
    assert_eq!(snapshot_names(&store), ["daily.0", "daily.1", "daily.2"]);
    assert_eq!(l[0]["id"], id.as_str(), "{l}");
    assert_same_tree(
        &models[2],
        &describe(&store.join("daily.0")),
        "daily.0 after repair",
    );
}

/// `list` beside a running backup reads the store instead of refusing it.
#[test]
fn list_works_beside_a_running_backup() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    for i in 0..4 {
        write(&src.join(format!("d{i}/f")), b"x");
    }
    assert_eq!(backup(&src, &store, &[], &[]).0, 0);
    let paused = spawn_paused(&src, &store, &[], "walk.dir", 2);
    let lock = std::fs::read(store.join(".snapring/lock")).unwrap();
    let (code, l, err) = cmd(&store, "list", &["--json".as_ref()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
    assert_eq!(std::fs::read(store.join(".snapring/lock")).unwrap(), lock);
    let (code, rep) = paused.resume();
    assert_eq!(code, 0, "{rep}");
}

/// At every point a rotation can be killed, the read-only view (`verify --all`, before
/// any repair) names the same snapshots, made by the same runs, as the store once `list`
/// has repaired it, and every one of them verifies clean.
#[test]
fn the_read_view_of_an_interrupted_rotation_is_what_the_repair_makes() {
    for fp in [
        "rotate.step=kill@1",
        "rotate.step=kill@2",
        "rotate.step=kill@3",
        "rotate.step=kill@4",
        "journal.before_state=kill",
        "journal.before_remove=kill",
    ] {
        let t = tempfile::tempdir().unwrap();
        let (src, store) = (t.path().join("src"), t.path().join("store"));
        for round in 0..4 {
            write(&src.join(format!("r{round}")), b"x");
            write(&src.join("changing"), format!("{round}").as_bytes());
            let env = [("SNAPRING_FAILPOINTS", fp)];
            let (code, _, err) = backup(
                &src,
                &store,
                &["--retain", "3"],
                if round == 3 { &env } else { &[] },
            );
            assert_eq!(
                code,
                if round == 3 { -1 } else { 0 },
                "{fp}: round {round}: {err}"
            );
        }
        let seen = |what: &str| -> Vec<(String, String, bool)> {
            let (code, v, err) = cmd(&store, "verify", &["--all".as_ref(), "--json".as_ref()]);
            assert_eq!(code, 0, "{fp}: {what}: {err}\n{v}");
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["snapshot"].as_str().unwrap().to_string(),
                        s["run_id"].as_str().unwrap_or("-").to_string(),
                        s["clean"].as_bool().unwrap(),
                    )
                })
                .collect()
        };
        let before = full_state(&store);
        let view = seen("before the repair");
        assert_unchanged(&before, &full_state(&store), fp);
        let (code, _, err) = cmd(&store, "list", &[]);
        assert_eq!(code, 0, "{fp}: {err}");
        assert!(!store.join(".snapring/journal").exists(), "{fp}");
        let repaired = seen("after the repair");
        assert_eq!(view, repaired, "{fp}");
        assert_eq!(repaired.len(), 3, "{fp}: {repaired:?}");
        assert!(
            repaired.iter().all(|s| s.2 && s.1 != "-"),
            "{fp}: {repaired:?}"
        );
    }
}

/// A backup into a store on a read-only mount fails saying what to do: it said only
/// "cannot open lock file …/.snapring/lock: Read-only file system".
#[test]
fn a_backup_into_a_read_only_store_says_how_to_fix_it() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    write(&src.join("f"), b"x");
    assert_eq!(backup(&src, &store, &[], &[]).0, 0);
    let ro = t.path().join("ro");
    let Some(_m) = ro_mount_or_skip(&store, &ro) else {
        return;
    };
    let (code, rep, err) = backup(&src, &ro, &[], &[]);
    let msg = format!("{err}{}", rep["message"].as_str().unwrap_or(""));
    assert_eq!(code, 1, "{msg}");
    assert!(
        msg.contains(".snapring/lock")
            && msg.contains("Read-only file system")
            && msg.contains("remount it read-write"),
        "{msg}"
    );
}
