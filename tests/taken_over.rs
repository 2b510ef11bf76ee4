//! Old trees are readable before the first backup: on an untouched rsnapshot tree (made
//! by the real `rsnapshot`, when it is installed; CI installs it) and on an EFSBackup
//! tree (made by the commands of the AWS EFSBackup Data Pipeline's `efs-backup.sh`:
//! `rm -rf`, `mv`, `cp -al daily.0 daily.1`, `rsync -ah --delete --numeric-ids`), with
//! no `.snapring/` folder, `list`, `diff`, `verify --against` and `restore` work, show
//! the snapshots as taken over (no run, no manifest, time from the directory), and write
//! nothing into the tree: every byte and metadata field (ctime included) stays as it
//! was, no `.snapring/` appears, and the same commands work on a read-only bind mount.

mod common;
use common::state::*;
use common::*;

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `snapring ARGS…`; returns (exit, stdout, stderr).
fn run(args: &[&OsStr]) -> (i32, String, String) {
    let out = snapring(args, &[]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The source as it is before round `round` of the old tool: `a` grows each round,
/// `sub/b` stays, `gone` exists only in the first round.
fn mutate(src: &Path, round: u32) {
    let mut a = b"one\n".to_vec();
    for i in 0..round {
        a.extend_from_slice(format!("round {i}\n").as_bytes());
    }
    write(&src.join("a"), &a);
    if round == 0 {
        write(&src.join("sub/b"), b"two\n");
        write(&src.join("gone"), b"only in the oldest\n");
    } else {
        let _ = std::fs::remove_file(src.join("gone"));
    }
    // Snapshot roots get distinct second-resolution times (rsnapshot touches daily.0).
    std::thread::sleep(std::time::Duration::from_millis(1100));
}

/// Whether the real `rsnapshot` is installed (CI installs it); says so when not.
fn have_rsnapshot() -> bool {
    let ok = Command::new("rsnapshot").arg("-V").output().is_ok();
    if !ok {
        println!("skipped: rsnapshot is not installed (apt-get install rsnapshot)");
    }
    ok
}

/// Runs the real `rsnapshot` once per entry of `levels` (`daily`, `hourly`), with
/// `retain` lines `retains`, `backup SRC/ localhost/` and no `--relative` (so the tree
/// under `localhost/` is the source's); before each run the source is `mutate`d.
fn rsnapshot_runs(t: &Path, retains: &str, levels: &[&str]) -> (PathBuf, PathBuf) {
    let (src, snaps) = (t.join("src"), t.join("snaps"));
    std::fs::create_dir_all(&snaps).unwrap();
    let conf = t.join("rsnapshot.conf");
    std::fs::write(
        &conf,
        format!(
            "config_version\t1.2\nsnapshot_root\t{}/\ncmd_rsync\t/usr/bin/rsync\ncmd_cp\t/bin/cp\nlockfile\t{}\nrsync_long_args\t--delete --numeric-ids --delete-excluded\n{retains}backup\t{}/\tlocalhost/\n",
            snaps.display(),
            t.join("rsnapshot.pid").display(),
            src.display()
        ),
    )
    .unwrap();
    for (round, level) in levels.iter().enumerate() {
        mutate(&src, round as u32);
        sh(Command::new("rsnapshot").arg("-c").arg(&conf).arg(level));
    }
    (snaps, src)
}

/// Three rounds of the real `rsnapshot` (`retain daily 3`); `None` when rsnapshot is
/// not installed.
fn rsnapshot_tree(t: &Path) -> Option<(PathBuf, PathBuf, &'static str)> {
    if !have_rsnapshot() {
        return None;
    }
    let (snaps, src) = rsnapshot_runs(t, "retain\tdaily\t3\n", &["daily"; 3]);
    Some((snaps, src, "localhost/"))
}

/// Three rounds of EFSBackup's `efs-backup.sh` (retain 3): drop the oldest, shift the
/// others up, `cp -al daily.0 daily.1`, then rsync the source into `daily.0` in place.
fn efsbackup_tree(t: &Path) -> (PathBuf, PathBuf, &'static str) {
    let (src, bk) = (t.join("src"), t.join("fs-1"));
    std::fs::create_dir_all(&bk).unwrap();
    for round in 0..3 {
        mutate(&src, round);
        let _ = std::fs::remove_dir_all(bk.join("daily.2"));
        if bk.join("daily.1").exists() {
            std::fs::rename(bk.join("daily.1"), bk.join("daily.2")).unwrap();
        }
        if bk.join("daily.0").exists() {
            sh(Command::new("cp")
                .arg("-al")
                .arg(bk.join("daily.0"))
                .arg(bk.join("daily.1")));
        }
        let mut from = src.clone().into_os_string();
        from.push("/");
        let mut to = bk.join("daily.0").into_os_string();
        to.push("/");
        sh(Command::new("rsync")
            .args(["-ah", "--delete", "--numeric-ids"])
            .arg(from)
            .arg(to));
    }
    (bk, src, "")
}

/// A live tree laid out as the snapshot root is (`prefix` is the old tool's level above
/// the source's tree), equal to `src`, its root with the snapshot root's mode and mtime.
fn live_like(t: &Path, src: &Path, prefix: &str, snap_root: &Path) -> PathBuf {
    let live = t.join("live");
    std::fs::create_dir_all(&live).unwrap();
    let inner = live.join(prefix.trim_end_matches('/'));
    sh(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(&inner));
    sh(Command::new("chmod")
        .arg("--reference")
        .arg(snap_root)
        .arg(&live));
    sh(Command::new("touch").arg("-r").arg(snap_root).arg(&live));
    live
}

/// `list`: three snapshots, newest first, each taken over (no run), timed by its
/// directory's mtime.
fn check_list(store: &Path) {
    let (code, out, err) = run(&[
        "list".as_ref(),
        "--dest".as_ref(),
        store.as_os_str(),
        "--json".as_ref(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v.as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["daily.0", "daily.1", "daily.2"], "{out}");
    for r in rows {
        assert_eq!(r["taken_over"], true, "{r}");
        assert!(r["id"].is_null() && r["status"].is_null(), "{r}");
        let mtime = std::fs::metadata(store.join(r["name"].as_str().unwrap()))
            .unwrap()
            .mtime();
        let want = chrono::DateTime::from_timestamp(mtime, 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        assert_eq!(r["taken_at"], want.as_str(), "{r}");
    }
    let (code, out, err) = run(&["list".as_ref(), "--dest".as_ref(), store.as_os_str()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().filter(|l| l.contains("(taken over)")).count() == 3
            && out.contains("no manifest, compared by stat"),
        "{out}"
    );
}

/// `diff daily.2 daily.0`: `a` changed, `gone` removed, `sub/b` the same (by stat).
fn check_diff(store: &Path, prefix: &str) {
    let (code, out, err) = run(&[
        "diff".as_ref(),
        "--dest".as_ref(),
        store.as_os_str(),
        "daily.2".as_ref(),
        "daily.0".as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut got: Vec<(String, String)> = v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] != "directory")
        .map(|d| {
            let p = d["path"].as_str().unwrap();
            (
                p.strip_prefix(prefix).unwrap_or(p).to_string(),
                d["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("a".to_string(), "content".to_string()),
            ("gone".into(), "removed".into())
        ],
        "{out}"
    );
}

/// `verify daily.0 --against LIVE`: clean against an equal tree; against a changed one,
/// the changed file is reported (exit 2).
fn check_verify(store: &Path, live: &Path, prefix: &str) {
    let verify = || {
        run(&[
            "verify".as_ref(),
            "--dest".as_ref(),
            store.as_os_str(),
            "daily.0".as_ref(),
            "--against".as_ref(),
            live.as_os_str(),
            "--json".as_ref(),
        ])
    };
    let (code, out, err) = verify();
    assert_eq!(code, 0, "{out}{err}");
    // Without --against there is no manifest to check the tree against: said so.
    let (code, _, err) = run(&[
        "verify".as_ref(),
        "--dest".as_ref(),
        store.as_os_str(),
        "daily.0".as_ref(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("has no usable manifest")
            && err.contains(&format!(
                "verify --dest {} daily.0 --against",
                store.display()
            )),
        "{err}"
    );
    let changed = live.join(prefix).join("sub/b");
    let m = std::fs::metadata(&changed).unwrap();
    std::fs::write(&changed, b"TWO\n").unwrap();
    set_mtime(&changed, m.mtime(), m.mtime_nsec());
    let (code, out, err) = verify();
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains(&format!("\"{prefix}sub/b\"")), "{out}");
}

/// `restore daily.1` (whole) and `restore daily.2 --path …/gone` equal the old tree.
fn check_restore(store: &Path, t: &Path, prefix: &str) {
    let out = t.join("restored");
    let (code, o, err) = run(&[
        "restore".as_ref(),
        "--dest".as_ref(),
        store.as_os_str(),
        "daily.1".as_ref(),
        "--to".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(code, 0, "{o}{err}");
    assert!(o.contains("of daily.1 (taken over, no run) into"), "{o}");
    assert_same_tree(
        &describe(&store.join("daily.1")),
        &describe(&out),
        "restore",
    );
    let one = t.join("one");
    let path = format!("{prefix}gone");
    let (code, o, err) = run(&[
        "restore".as_ref(),
        "--dest".as_ref(),
        store.as_os_str(),
        "daily.2".as_ref(),
        "--path".as_ref(),
        path.as_ref(),
        "--flat".as_ref(),
        "--to".as_ref(),
        one.as_os_str(),
    ]);
    assert_eq!(code, 0, "{o}{err}");
    assert_eq!(
        std::fs::read(one.join("gone")).unwrap(),
        b"only in the oldest\n"
    );
}

/// Every read command on `store`, then: nothing in it changed and no `.snapring/`.
fn reads_without_writing(t: &Path, store: &Path, src: &Path, prefix: &str) {
    let before = full_state(store);
    let live = live_like(t, src, prefix, &store.join("daily.0"));
    check_list(store);
    check_diff(store, prefix);
    check_verify(store, &live, prefix);
    check_restore(store, t, prefix);
    assert!(
        !store.join(".snapring").exists(),
        "a .snapring/ was created"
    );
    assert_unchanged(
        &before,
        &full_state(store),
        "read commands on a taken-over tree",
    );
    // The same on a read-only mount (where any write would fail).
    if let Some(_m) = ro_mount_or_skip(store, &t.join("ro")) {
        let ro = t.join("ro");
        check_list(&ro);
        check_diff(&ro, prefix);
        let (code, out, err) = run(&[
            "restore".as_ref(),
            "--dest".as_ref(),
            ro.as_os_str(),
            "daily.0".as_ref(),
            "--to".as_ref(),
            t.join("from-ro").as_os_str(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
    }
    assert_unchanged(&before, &full_state(store), "read-only mount");
}

#[test]
fn an_rsnapshot_tree_reads_before_the_first_backup_without_writing() {
    let t = tempfile::tempdir().unwrap();
    let Some((store, src, prefix)) = rsnapshot_tree(t.path()) else {
        return;
    };
    reads_without_writing(t.path(), &store, &src, prefix);
}

#[test]
fn an_efsbackup_tree_reads_before_the_first_backup_without_writing() {
    let t = tempfile::tempdir().unwrap();
    let (store, src, prefix) = efsbackup_tree(t.path());
    reads_without_writing(t.path(), &store, &src, prefix);
}

/// A directory with neither `.snapring/` nor snapshot directories is still refused,
/// with a message that says what was looked for.
#[test]
fn a_directory_without_snapshots_is_not_a_store() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("daily.x/f"), b"x");
    write(&t.path().join("notes.0"), b"a file, not a snapshot");
    let (code, _, err) = run(&["list".as_ref(), "--dest".as_ref(), t.path().as_os_str()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not a snapring store")
            && err.contains("no snapshot directory such as daily.0"),
        "{err}"
    );
    assert!(!t.path().join(".snapring").exists());
}

/// rsnapshot with two levels (`retain hourly 2`, `retain daily 2`): three hourly runs,
/// then a daily one, which moves the oldest hourly to `daily.0`. Both labels list,
/// newest first by their directories' times, and each restores as it is.
#[test]
fn an_rsnapshot_tree_with_hourly_and_daily_levels_lists_and_restores() {
    let t = tempfile::tempdir().unwrap();
    if !have_rsnapshot() {
        return;
    }
    let levels = ["hourly", "hourly", "hourly", "daily"];
    let (store, _) = rsnapshot_runs(t.path(), "retain\thourly\t2\nretain\tdaily\t2\n", &levels);
    let before = full_state(&store);
    let (code, out, err) = run(&[
        "list".as_ref(),
        "--dest".as_ref(),
        store.as_os_str(),
        "--json".as_ref(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<(&str, bool)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["taken_over"] == true))
        .collect();
    assert_eq!(names, [("hourly.0", true), ("daily.0", true)], "{out}");
    for snap in ["hourly.0", "daily.0"] {
        let to = t.path().join(format!("restored-{snap}"));
        let (code, o, err) = run(&restore_args(&store, snap, &to));
        assert_eq!(code, 0, "{o}{err}");
        assert_same_tree(&describe(&store.join(snap)), &describe(&to), snap);
    }
    // daily.0 is the second hourly run (the oldest hourly kept): `a` has one round.
    assert_eq!(
        std::fs::read(t.path().join("restored-daily.0/localhost/a")).unwrap(),
        b"one\nround 0\n"
    );
    assert_unchanged(&before, &full_state(&store), "list and restore");
    assert!(!store.join(".snapring").exists());
}

/// rsnapshot run on a snapring store deletes its oldest snapshot and makes a new tree
/// with `cp -al`, and ext4 gives the new directory the deleted one's inode number at
/// once. That record was taken for the new tree: `list` showed it as the deleted
/// snapshot's run, and `verify` called it damaged. A record names a directory only
/// if its birth time (`statx` btime) matches too. The reuse is made exact here: the
/// record of run A is given the new directory's inode, as the kernel would have.
#[test]
fn a_new_directory_in_a_deleted_snapshots_inode_is_not_taken_for_it() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    write(&src.join("f"), b"v1");
    let (code, rep, err) = backup(&src, &store, &[], &[]);
    assert_eq!(code, 0, "{err}");
    let a = rep["id"].as_str().unwrap().to_string();
    sh(Command::new("cp")
        .arg("-al")
        .arg(store.join("daily.0"))
        .arg(store.join("daily.1")));
    let state_path = store.join(".snapring/snapshots.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    assert!(
        state["snapshots"][0]["btime"].is_array(),
        "this file system records birth times: {state}"
    );
    state["snapshots"][0]["ino"] = std::fs::metadata(store.join("daily.1"))
        .unwrap()
        .ino()
        .into();
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    let (code, out, err) = run(&[
        "list".as_ref(),
        "--json".as_ref(),
        "--dest".as_ref(),
        store.as_os_str(),
    ]);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let d1 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "daily.1")
        .unwrap();
    assert_eq!(d1["taken_over"], true, "{list}");
    assert_ne!(d1["id"], a.as_str(), "{list}");
}
