//! Restores that race a backup's expiry, and restores interrupted (SIGTERM, SIGKILL)
//! then run again: the result always equals the snapshot, or the restore does not say
//! `complete`.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A source of `dirs` directories of 5 files each, with modes and mtimes that a restore
/// must set (not the defaults it creates with).
fn tree(src: &Path, dirs: usize) {
    for d in 0..dirs {
        let dir = src.join(format!("d{d:02}"));
        for f in 0..5 {
            write(
                &dir.join(format!("f{f}")),
                format!("{d}/{f}").repeat(50).as_bytes(),
            );
            set_mtime(&dir.join(format!("f{f}")), 1_600_000_000 + f, 0);
        }
        chmod(&dir, 0o755);
        set_mtime(&dir, 1_500_000_000 + d as i64, 0);
    }
}

/// `snapring restore --json --jobs 1 --dest STORE SNAP --to TO`, with `failpoints`.
fn spawn_restore(store: &Path, snap: &str, to: &Path, failpoints: &str) -> Child {
    Command::new(bin())
        .args(["restore", "--json", "--jobs", "1", "--dest"])
        .arg(store)
        .arg(snap)
        .arg("--to")
        .arg(to)
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_FAILPOINTS", failpoints)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> (i32, serde_json::Value, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok_backup(src: &Path, store: &Path) -> serde_json::Value {
    let (code, rep, err) = backup(src, store, &["--retain", "3"], &[]);
    assert_eq!(code, 0, "backup failed: {err}\n{rep}");
    rep
}

fn setup(dirs: usize) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    std::fs::create_dir(&src).unwrap();
    tree(&src, dirs);
    (t, src, store)
}

fn verify_against(store: &Path, snap: &str, to: &Path) {
    let out = snapring(
        &[
            "verify".as_ref(),
            "--json".as_ref(),
            "--dest".as_ref(),
            store.as_os_str(),
            snap.as_ref(),
            "--against".as_ref(),
            to.as_os_str(),
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify --against the restored tree: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_backup_defers_the_expiry_of_a_snapshot_a_restore_is_reading() {
    let (t, src, store) = setup(30);
    for _ in 0..3 {
        ok_backup(&src, &store);
    }
    let want = describe(&store.join("daily.2"));
    let (to, pause) = (t.path().join("restored"), t.path().join("paused"));
    let child = spawn_restore(
        &store,
        "daily.2",
        &to,
        &format!("restore.dir=pause:{}@3", pause.display()),
    );
    wait_for(&pause);

    // The backup that would expire daily.2 keeps it, one slot up, and says so.
    let rep = ok_backup(&src, &store);
    assert_eq!(rep["expired"], serde_json::json!([]), "{rep}");
    let warnings = rep["warnings"].to_string();
    assert!(warnings.contains("expiry of daily.2 deferred"), "{rep}");
    assert_eq!(
        snapshot_names(&store),
        ["daily.0", "daily.1", "daily.2", "daily.3"]
    );

    std::fs::remove_file(&pause).unwrap();
    let (code, rep, err) = finish(child);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["status"], "complete", "{rep}");
    assert_same_tree(&want, &describe(&to), "restore raced by an expiry");

    // No reader now: the next run expires it.
    let rep = ok_backup(&src, &store);
    assert!(rep["expired"].to_string().contains("daily.3"), "{rep}");
    assert_eq!(snapshot_names(&store), ["daily.0", "daily.1", "daily.2"]);
}

/// Two restores into one new `--to`: each took it as its own and wrote files under
/// their final names, so each failed on the other's ("cannot create directory: File
/// exists"), both could end `failed` with the tree unfinished. The second is refused
/// while the first runs, which finishes undisturbed.
#[test]
fn a_second_restore_into_the_same_target_is_refused() {
    let (t, src, store) = setup(10);
    ok_backup(&src, &store);
    let want = describe(&store.join("daily.0"));
    let (to, pause) = (t.path().join("restored"), t.path().join("paused"));
    let first = spawn_restore(
        &store,
        "daily.0",
        &to,
        &format!("restore.dir=pause:{}@3", pause.display()),
    );
    wait_for(&pause);
    let (code, rep, err) = finish(spawn_restore(&store, "daily.0", &to, ""));
    assert_eq!(code, 1, "{err}\n{rep}");
    assert!(err.contains("another restore is writing into"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    std::fs::remove_file(&pause).unwrap();
    let (code, rep, err) = finish(first);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_same_tree(&want, &describe(&to), "the first restore, undisturbed");
    // Once it is done, the target is free again.
    let (code, rep, err) = finish(spawn_restore(&store, "daily.0", &to, ""));
    assert_eq!(code, 0, "{err}\n{rep}");
}

#[test]
fn a_restore_whose_snapshot_is_deleted_under_it_fails_instead_of_saying_complete() {
    let (t, src, store) = setup(10);
    ok_backup(&src, &store);
    let (to, pause) = (t.path().join("restored"), t.path().join("paused"));
    let child = spawn_restore(
        &store,
        "daily.0",
        &to,
        &format!("restore.dir=pause:{}@3", pause.display()),
    );
    wait_for(&pause);
    // Deleted by hand (or by an expiry on a file system without flock).
    std::fs::remove_dir_all(store.join("daily.0")).unwrap();
    std::fs::remove_file(&pause).unwrap();
    let (code, rep, err) = finish(child);
    // Never `complete`, and not a mere `partial` either: the tree is incomplete.
    assert_eq!(code, 1, "{err}\n{rep}");
    assert_eq!(rep["status"], "failed", "{rep}");
}

/// Kills a restore paused at its `nth` `point` with `signal`, then runs it again.
fn interrupted_then_rerun(point: &str, nth: u32, signal: rustix::process::Signal) {
    let (t, src, store) = setup(30);
    ok_backup(&src, &store);
    let (to, pause) = (t.path().join("restored"), t.path().join("paused"));
    let child = spawn_restore(
        &store,
        "daily.0",
        &to,
        &format!("{point}=pause:{}@{nth}", pause.display()),
    );
    wait_for(&pause);
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, signal).unwrap();
    if signal == rustix::process::Signal::TERM {
        // The pause ends; the restore sees the signal and stops.
        std::fs::remove_file(&pause).unwrap();
    }
    let (code, rep, _) = finish(child);
    assert_ne!(rep["status"], "complete", "interrupted: {code} {rep}");
    let _ = std::fs::remove_file(&pause);

    let again = spawn_restore(&store, "daily.0", &to, "");
    let (code, rep, err) = finish(again);
    assert_eq!(code, 0, "rerun: {err}\n{rep}");
    assert_eq!(rep["status"], "complete", "{rep}");
    assert_eq!(rep["conflicts_total"], 0, "{rep}");
    verify_against(&store, "daily.0", &to);
    assert_same_tree(&describe(&src), &describe(&to), "rerun restore");
}

#[test]
fn a_restore_rerun_after_sigterm_fixes_the_directories_it_left_unfinished() {
    interrupted_then_rerun("restore.dir", 10, rustix::process::Signal::TERM);
}

#[test]
fn a_restore_rerun_after_sigkill_replaces_its_own_half_written_file() {
    interrupted_then_rerun("restore.file", 40, rustix::process::Signal::KILL);
}

#[test]
fn a_restore_rerun_gives_a_symlink_the_killed_run_made_its_time() {
    let (t, src, store) = setup(5);
    std::os::unix::fs::symlink("f0", src.join("d02/link")).unwrap();
    set_mtime(&src.join("d02/link"), 1_400_000_000, 7);
    set_mtime(&src.join("d02"), 1_500_000_002, 0);
    ok_backup(&src, &store);
    let to = t.path().join("restored");
    // Killed with the symlink made and its time not yet set.
    let (code, _, _) = finish(spawn_restore(
        &store,
        "daily.0",
        &to,
        "restore.special=kill",
    ));
    assert_eq!(code, -1, "the failpoint fired");
    assert!(to.join("d02/link").symlink_metadata().is_ok());
    let (code, rep, err) = finish(spawn_restore(&store, "daily.0", &to, ""));
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["status"], "complete", "{rep}");
    assert_same_tree(&describe(&src), &describe(&to), "rerun restore");
}

#[test]
fn a_restore_rerun_still_leaves_a_users_file_alone() {
    let (t, src, store) = setup(5);
    ok_backup(&src, &store);
    let (to, pause) = (t.path().join("restored"), t.path().join("paused"));
    // d04 is the user's, there before the restore: not one the restore made.
    write(&to.join("d04/other"), b"theirs");
    let child = spawn_restore(
        &store,
        "daily.0",
        &to,
        &format!("restore.file=pause:{}@3", pause.display()),
    );
    wait_for(&pause);
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let _ = finish(child);
    let _ = std::fs::remove_file(&pause);
    // The user puts a file of their own where the snapshot has one.
    write(&to.join("d04/f0"), b"mine");
    let (code, rep, err) = finish(spawn_restore(&store, "daily.0", &to, ""));
    assert_eq!(code, 2, "{err}\n{rep}");
    assert_eq!(rep["conflicts"][0]["path"], "d04/f0", "{rep}");
    assert_eq!(std::fs::read(to.join("d04/f0")).unwrap(), b"mine");
}

#[test]
fn a_restore_rerun_replaces_what_differs_in_a_directory_the_stopped_run_made() {
    let (t, src, store) = setup(5);
    ok_backup(&src, &store);
    let (to, pause) = (t.path().join("restored"), t.path().join("paused"));
    let child = spawn_restore(
        &store,
        "daily.0",
        &to,
        &format!("restore.file=pause:{}@3", pause.display()),
    );
    wait_for(&pause);
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let _ = finish(child);
    let _ = std::fs::remove_file(&pause);
    // A file under its own name in a directory the stopped run recorded is that run's.
    write(&to.join("d04/f0"), b"half-written");
    let (code, rep, err) = finish(spawn_restore(&store, "daily.0", &to, ""));
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["conflicts_total"], 0, "{rep}");
    verify_against(&store, "daily.0", &to);
    assert_same_tree(&describe(&src), &describe(&to), "rerun restore");
}

#[test]
fn a_restore_rerun_after_sigkill_keeps_hard_links_to_what_it_restored_before() {
    let (t, src, store) = setup(30);
    // Root entries come first: `a` is restored before any file of a subdirectory.
    write(&src.join("a"), b"linked");
    std::fs::hard_link(src.join("a"), src.join("d29/z")).unwrap();
    ok_backup(&src, &store);
    let (to, pause) = (t.path().join("restored"), t.path().join("paused"));
    let child = spawn_restore(
        &store,
        "daily.0",
        &to,
        &format!("restore.file=pause:{}@2", pause.display()),
    );
    wait_for(&pause);
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let _ = finish(child);
    let _ = std::fs::remove_file(&pause);
    assert!(to.join("a").exists() && !to.join("d29/z").exists());

    let (code, rep, err) = finish(spawn_restore(&store, "daily.0", &to, ""));
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(ino(&to.join("a")), ino(&to.join("d29/z")), "{rep}");
    verify_against(&store, "daily.0", &to);
}

#[test]
fn verify_all_checks_each_snapshot_by_its_run_even_when_a_backup_rotates_them_meanwhile() {
    let (t, src, store) = setup(5);
    let runs: Vec<String> = (0..2)
        .map(|_| ok_backup(&src, &store)["id"].as_str().unwrap().to_string())
        .collect();
    let pause = t.path().join("paused");
    let child = Command::new(bin())
        .args(["verify", "--all", "--json", "--dest"])
        .arg(&store)
        .env("SNAPRING_CATALOG", "off")
        .env(
            "SNAPRING_FAILPOINTS",
            format!("verify.snapshot=pause:{}@2", pause.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&pause);
    // daily.1 (runs[0]) becomes daily.2 between the listing and its turn.
    ok_backup(&src, &store);
    std::fs::remove_file(&pause).unwrap();
    let (code, v, err) = finish(child);
    assert_eq!(code, 0, "{err}\n{v}");
    let v = v.as_array().unwrap();
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v.iter().all(|s| s["clean"] == true), "{v:?}");
    assert_eq!(v[0]["run_id"], runs[1].as_str(), "{v:?}");
    assert_eq!(v[1]["run_id"], runs[0].as_str(), "{v:?}");
    assert_eq!(v[1]["snapshot"], "daily.2", "{v:?}");
}

#[test]
fn a_rerun_of_a_stopped_single_file_restore_removes_its_temporary_file() {
    let (t, src, store) = setup(2);
    ok_backup(&src, &store);
    let to = t.path().join("restored");
    let run = |failpoints: &str| {
        let out = Command::new(bin())
            .args(["restore", "--json", "--dest"])
            .arg(&store)
            .args(["daily.0", "--path", "d01/f3", "--to"])
            .arg(&to)
            .env("SNAPRING_CATALOG", "off")
            .env("SNAPRING_FAILPOINTS", failpoints)
            .output()
            .unwrap();
        out.status.code().unwrap_or(-1)
    };
    assert_ne!(run("restore.file=kill"), 0);
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let left = names(&to.join("d01"));
    assert!(
        left.iter().any(|n| n.starts_with(".snapring-restore.")),
        "the kill left no temporary file: {left:?}"
    );
    assert_eq!(run(""), 0);
    assert_eq!(names(&to.join("d01")), ["f3"]);
    assert_eq!(
        std::fs::read(to.join("d01/f3")).unwrap(),
        std::fs::read(src.join("d01/f3")).unwrap()
    );
}

/// A fifo restored into a directory that was there before (its temporary name, then a
/// rename), whose owner swaps that temporary name for a symlink to a file outside the
/// target between the `mknod` and the mode being set: the mode is not set through the
/// symlink, the symlink is not renamed into place, and the restore says what happened.
/// `chmodat` followed the symlink: a root restore made the outside file mode 0666.
#[test]
fn a_symlink_swapped_in_for_a_restored_fifo_does_not_pass_its_mode_outside() {
    let (t, src, store) = setup(1);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("d00/pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o666),
        0,
    )
    .unwrap();
    chmod(&src.join("d00/pipe"), 0o666);
    ok_backup(&src, &store);
    let victim = t.path().join("victim");
    write(&victim, b"secret");
    chmod(&victim, 0o600);
    let (to, pause) = (t.path().join("restored"), t.path().join("paused"));
    // d00 is there before the restore: the fifo is made under a temporary name.
    std::fs::create_dir_all(to.join("d00")).unwrap();
    let child = spawn_restore(
        &store,
        "daily.0",
        &to,
        &format!("restore.special=pause:{}", pause.display()),
    );
    wait_for(&pause);
    let tmp: Vec<PathBuf> = std::fs::read_dir(to.join("d00"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains("snapring-restore")
        })
        .collect();
    assert_eq!(tmp.len(), 1, "the fifo under its temporary name: {tmp:?}");
    std::fs::remove_file(&tmp[0]).unwrap();
    std::os::unix::fs::symlink(&victim, &tmp[0]).unwrap();
    std::fs::remove_file(&pause).unwrap();
    let (code, rep, err) = finish(child);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777,
        0o600,
        "the outside file's mode is untouched"
    );
    assert_eq!(code, 2, "{err}\n{rep}");
    assert_eq!(rep["status"], "partial", "{rep}");
    assert!(
        rep.to_string().contains("replaced by a symlink"),
        "the problem says what happened: {rep}"
    );
    assert!(
        to.join("d00/pipe").symlink_metadata().is_err(),
        "the planted symlink is not restored under the fifo's name"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"secret");
}

/// Someone else's file at the restore's next temporary name in a directory that was
/// there before (anyone who may write there can guess it: pid and a counter): that one
/// entry is a conflict naming the file in the way, the others are restored, and the
/// file in the way is left alone. It failed the whole restore, exit 1, naming the
/// entry's final name.
#[test]
fn a_file_at_the_restores_temporary_name_is_one_conflict_not_a_failed_restore() {
    let (t, src, store) = setup(2);
    ok_backup(&src, &store);
    let (to, pause) = (t.path().join("restored"), t.path().join("paused"));
    std::fs::create_dir_all(to.join("d01")).unwrap();
    let child = spawn_restore(
        &store,
        "daily.0",
        &to,
        &format!("restore.dir=pause:{}", pause.display()),
    );
    wait_for(&pause);
    let theirs = to.join(format!(".snapring-restore.{}-0.tmp", child.id()));
    let theirs = to.join("d01").join(theirs.file_name().unwrap());
    write(&theirs, b"theirs");
    std::fs::remove_file(&pause).unwrap();
    let (code, rep, err) = finish(child);
    assert_eq!(code, 2, "{err}\n{rep}");
    assert_eq!(rep["status"], "partial", "{rep}");
    assert_eq!(rep["conflicts_total"], 1, "{rep}");
    assert!(
        rep["conflicts"][0]["reason"]
            .to_string()
            .contains(".snapring-restore."),
        "the conflict names the file in the way: {rep}"
    );
    assert_eq!(rep["files_restored"], 9, "{rep}");
    assert_eq!(std::fs::read(&theirs).unwrap(), b"theirs");
}

/// A restore from a restic repository into a `--to` its user can write, who swaps a
/// directory the restore made for a symlink to a directory outside (one of root's):
/// nothing is written or changed there. Swapped before the restore opens it (`d01`,
/// just made): the restore stops, naming it. Swapped after its files are written
/// (`d00`, once `d02` is made): only its metadata is not set, a problem naming it
/// (`partial`). The restore worked by whole paths: it wrote the directory's files into
/// the outside one, and set the outside one's mode, as root.
#[test]
fn a_repository_restore_never_follows_a_directory_swapped_for_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let (t, src, _) = setup(3);
    let url = common::restic::repo_of(&t.path().join("repo"), &src);
    for (swapped, nth) in ["d01", "d00"].into_iter().zip([2, 3]) {
        let outside = t.path().join(format!("outside-{swapped}"));
        std::fs::create_dir(&outside).unwrap();
        chmod(&outside, 0o700);
        let (to, pause) = (
            t.path().join(format!("to-{swapped}")),
            t.path().join("paused"),
        );
        let child = paused_repo_restore(&url, &to, "restic.restore.dir", nth, &pause);
        wait_for(&pause);
        std::fs::rename(to.join(swapped), to.join(format!("{swapped}.x"))).unwrap();
        std::os::unix::fs::symlink(&outside, to.join(swapped)).unwrap();
        std::fs::remove_file(&pause).unwrap();
        let (code, rep, err) = finish(child);
        let inside: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            inside.is_empty(),
            "{swapped}: written outside --to: {inside:?}"
        );
        let mode = std::fs::metadata(&outside).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode, 0o700,
            "{swapped}: the outside directory's mode was changed"
        );
        let said = format!("{err}\n{rep}");
        assert!(
            said.contains(swapped) && said.contains("symlink"),
            "{swapped}: {said}"
        );
        if swapped == "d01" {
            assert_eq!(code, 1, "{said}");
        } else {
            assert_eq!(
                (code, rep["status"].as_str()),
                (2, Some("partial")),
                "{said}"
            );
            // Its files were written, into the directory made (moved aside).
            assert_eq!(std::fs::read_dir(to.join("d00.x")).unwrap().count(), 5);
        }
    }
}

/// `cmd` (snapring, or a wrapper of it) given `restore --json --dest URL latest --to TO`
/// from a restic repository, with `SNAPRING_FAILPOINTS` `failpoints`.
fn repo_restore(mut cmd: Command, url: &str, to: &Path, failpoints: &str) -> Command {
    cmd.args(["restore", "--json", "--dest", url, "latest", "--to"])
        .arg(to)
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_PASSWORD", common::restic::PASSWORD)
        .env("SNAPRING_FAILPOINTS", failpoints)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// [`repo_restore`] started, paused where failpoint `fp` (at hit `nth`) makes its file
/// `pause` until it is removed.
fn paused_repo_restore(url: &str, to: &Path, fp: &str, nth: u32, pause: &Path) -> Child {
    let fp = format!("{fp}=pause:{}@{nth}", pause.display());
    repo_restore(Command::new(bin()), url, to, &fp)
        .spawn()
        .unwrap()
}

/// The output of `child`, killed (and the test failed) if it has not ended in 60 s.
fn finish_within(mut child: Child, what: &str) -> (i32, serde_json::Value, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: the restore hangs (killed after 60 s)");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    finish(child)
}

/// A restore from a restic repository whose fill thread is paused before it opens a file
/// the walk created (empty, mode 0600), which `swap` then deletes or replaces: only that
/// file is not restored, a problem naming it (`partial`, exit 2, in `--json`); the
/// others are, and what was put in its place is left as it is. A FIFO without a reader
/// hung the restore for ever (SIGINT did not end it); the others stopped the whole
/// restore (exit 1, nothing on stdout, 100+ files left empty and named nowhere).
fn a_file_replaced_before_its_fill(what: &str, swap: impl Fn(&Path, &Path)) {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 3);
    let mut files = Vec::new();
    for d in 0..3 {
        for f in 0..5 {
            let rel = format!("d{d:02}/f{f}");
            chmod(&src.join(&rel), 0o644);
            files.push(rel);
        }
    }
    let url = common::restic::repo_of(&t.path().join("repo"), &src);
    let (to, pause) = (t.path().join("to"), t.path().join("paused"));
    let child = paused_repo_restore(&url, &to, "restic.restore.before_fill", 1, &pause);
    wait_for(&pause);
    // The paused file: once every file of the other batches is written (its mode 0644
    // set), the first (in the walk's order) of those still 0600, its batch's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut last = (Vec::new(), std::time::Instant::now());
    let victim = loop {
        let unfilled: Vec<&String> = files
            .iter()
            .filter(|f| {
                std::fs::symlink_metadata(to.join(f))
                    .map(|m| m.permissions().mode() & 0o777 != 0o644)
                    .unwrap_or(true)
            })
            .collect();
        if unfilled != last.0 {
            last = (unfilled.clone(), std::time::Instant::now());
        } else if !unfilled.is_empty()
            && unfilled.len() < files.len()
            && last.1.elapsed() > std::time::Duration::from_millis(500)
        {
            break unfilled[0].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not filled: {unfilled:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(std::fs::metadata(to.join(&victim)).unwrap().len(), 0);
    swap(&to, &to.join(&victim));
    std::fs::remove_file(&pause).unwrap();
    let (code, rep, err) = finish_within(child, what);
    let said = format!("{what}: {err}\n{rep}");
    assert_eq!(
        (code, rep["status"].as_str()),
        (2, Some("partial")),
        "{said}"
    );
    let problems = rep["problems"].as_array().expect(&said);
    assert_eq!(problems.len(), 1, "{said}");
    assert_eq!(problems[0]["path"], victim.as_str(), "{said}");
    for f in files.iter().filter(|f| **f != victim) {
        assert_eq!(
            std::fs::read(to.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{what}: {f}"
        );
    }
}

#[test]
fn a_fifo_put_in_place_of_a_file_before_its_fill_does_not_hang_the_restore() {
    a_file_replaced_before_its_fill("fifo", |_, p| {
        std::fs::remove_file(p).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o666),
            0,
        )
        .unwrap();
    });
}

#[test]
fn a_file_deleted_or_replaced_before_its_fill_is_that_files_problem_only() {
    type Swap = fn(&Path, &Path);
    let cases: [(&str, Swap); 4] = [
        ("deleted", |_, p| std::fs::remove_file(p).unwrap()),
        ("symlink", |to, p| {
            std::fs::remove_file(p).unwrap();
            std::os::unix::fs::symlink(to.join("elsewhere"), p).unwrap();
        }),
        ("directory", |_, p| {
            std::fs::remove_file(p).unwrap();
            std::fs::create_dir(p).unwrap();
        }),
        ("hard link", |to, p| {
            // Made first: not given the inode number of the removed file.
            std::fs::write(to.join("theirs"), b"theirs").unwrap();
            std::fs::remove_file(p).unwrap();
            std::fs::hard_link(to.join("theirs"), p).unwrap();
        }),
    ];
    for (what, swap) in cases {
        a_file_replaced_before_its_fill(what, swap);
    }
}

/// A restore of many directories under a low limit of open files (soft and hard 128),
/// its fills slowed (2 ms a file, as on S3) so that batches wait: they hold fewer
/// directories open. With 32 a batch (352 directories open) it failed "Too many open
/// files", leaving files empty.
#[test]
fn a_repository_restore_of_many_directories_fits_a_low_limit_of_open_files() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in 0..1500 {
        for f in 0..2 {
            write(
                &src.join(format!("d{d:04}/f{f}")),
                format!("{d}/{f}").as_bytes(),
            );
        }
    }
    let url = common::restic::repo_of(&t.path().join("repo"), &src);
    let to = t.path().join("to");
    let mut prlimit = Command::new("prlimit");
    prlimit.args(["--nofile=128:128", "--"]).arg(bin());
    let mut cmd = repo_restore(prlimit, &url, &to, "restic.restore.before_fill=sleep:2@1");
    let (code, rep, err) = finish_within(cmd.spawn().unwrap(), "ulimit");
    assert_eq!(
        (code, rep["status"].as_str()),
        (0, Some("complete")),
        "{err}\n{rep}"
    );
    for d in [0, 777, 1499] {
        assert_eq!(
            std::fs::read(to.join(format!("d{d:04}/f1"))).unwrap(),
            format!("{d}/1").as_bytes()
        );
    }
}

/// `snapring restore --json --jobs 1 --dest STORE SNAP --to TO EXTRA…`, run to its end.
fn restore_with(
    store: &Path,
    snap: &str,
    to: &Path,
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    let out = Command::new(bin())
        .args(["restore", "--json", "--jobs", "1", "--dest"])
        .arg(store)
        .arg(snap)
        .arg("--to")
        .arg(to)
        .args(extra)
        .env("SNAPRING_CATALOG", "off")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A restore of `store`'s daily.0 into `to`, killed (SIGKILL) at its third file: every
/// directory of the root (`d00`…) is in its record.
fn killed_at_third_file(store: &Path, to: &Path, pause: &Path) {
    let child = spawn_restore(
        store,
        "daily.0",
        to,
        &format!("restore.file=pause:{}@3", pause.display()),
    );
    wait_for(pause);
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let _ = finish(child);
    let _ = std::fs::remove_file(pause);
}

/// The record of a stopped restore named only the target: any other restore into that
/// `--to` (another store, snapshot, `--path`, mode) took every differing file of the
/// recorded directories for the stopped run's and replaced it, a user's edit too, with
/// no `--overwrite`, `complete`, exit 0 ("replaced 12"). Now the record names its
/// restore, and another one (its dry run too) is refused, nothing written, told how to
/// finish or discard the stopped one.
#[test]
fn a_restore_into_a_target_holding_another_stopped_restore_is_refused() {
    let (t, src, store) = setup(5);
    ok_backup(&src, &store);
    let other = t.path().join("other-store");
    ok_backup(&src, &other);
    let (to, pause) = (t.path().join("restored"), t.path().join("paused"));
    killed_at_third_file(&store, &to, &pause);
    write(&to.join("d04/f0"), b"USER EDIT");
    let before = describe(&to);
    for (st, extra) in [
        (&other, &[][..]),
        (&other, &["--dry-run"][..]),
        (&store, &["--path", "d04"][..]),
        // Its ancestor `d03` is not made either (the stopped run had not reached it).
        (&store, &["--path", "d03/f1"][..]),
        (&store, &["--overwrite"][..]),
    ] {
        let (code, rep, err) = restore_with(st, "daily.0", &to, extra);
        assert_eq!(code, 64, "{extra:?}: {err}\n{rep}");
        assert!(
            err.contains("holds an unfinished restore")
                && err.contains(".snapring-restore-unfinished")
                && err.contains(&format!("--dest={}", store.display())),
            "{extra:?}: {err}"
        );
        assert_eq!(std::fs::read(to.join("d04/f0")).unwrap(), b"USER EDIT");
        assert_same_tree(&before, &describe(&to), "refused: nothing written");
    }
    // The same restore finishes it.
    let (code, rep, err) = restore_with(&store, "daily.0", &to, &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_same_tree(&describe(&src), &describe(&to), "rerun restore");
}

/// The refusal's hint printed the stopped restore's command with its paths escaped as
/// in the record (`--dest /x/my%20store --path odd%20dir --to /x/t o`): `--dest` does
/// not read `%20`, and `--to` was cut in two by the shell. Each word is quoted for a
/// shell now: the command pasted into `sh` finishes the stopped restore. A `--to` with
/// a newline and a byte that is not UTF-8 was quoted as bash's `$'…'`, which Debian's
/// `sh` (dash) reads as `$` and the text; and a `--path` that starts with `-` was
/// printed `--path '-odd dir'`, which clap refuses (an option, not a value).
#[test]
fn the_hint_for_another_stopped_restore_is_a_command_a_shell_runs() {
    use std::os::unix::ffi::OsStrExt;
    let (t, src, _) = setup(2);
    write(&src.join("-odd dir/it's 100%"), b"odd");
    let store = t.path().join("my store");
    let id = ok_backup(&src, &store)["id"].as_str().unwrap().to_string();
    let to = t.path().join(std::ffi::OsStr::from_bytes(b"t o\n\xff"));
    let out = Command::new(bin())
        .args(["restore", "--json", "--jobs", "1", "--dest"])
        .arg(&store)
        .args(["daily.0", "--path=-odd dir", "--flat", "--to"])
        .arg(&to)
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_FAILPOINTS", "restore.recorded=kill")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "killed at its record");
    let (code, rep, err) = restore_with(&store, "daily.0", &to, &["--path", "d01"]);
    assert_eq!(code, 64, "{err}\n{rep}");
    let q = |p: &Path| format!("'{}'", p.display());
    let tmp = t.path().to_str().unwrap();
    assert!(
        tmp.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./-".contains(&b)),
        "{tmp}"
    );
    let command = err
        .split_once("Finish that one by running it again (")
        .and_then(|(_, r)| r.split_once("), or discard it by deleting "))
        .map(|(c, _)| c.to_string())
        .unwrap_or_else(|| panic!("{err}"));
    assert_eq!(
        command,
        format!(
            "snapring restore --dest={} {} --path='-odd dir' --flat --to=\"$(printf '{tmp}/t o\\012\\377')\"",
            q(&store),
            id,
        ),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "deleting \"$(printf '{tmp}/t o\\012\\377/.snapring-restore-unfinished')\" ("
        )),
        "{err}"
    );
    let rest = command.strip_prefix("snapring ").unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("exec \"$SNAPRING\" {rest}"))
        .env("SNAPRING", bin())
        .env("SNAPRING_CATALOG", "off")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(to.join("it's 100%")).unwrap(), b"odd");
    assert!(!to.join(".snapring-restore-unfinished").exists());
}

/// A stopped restore is finished from its store mounted elsewhere: the store copied
/// onto another file system (its device and inode numbers differ, as after a USB disk
/// is plugged in again or an NFS store mounted again) holds the same run, and the
/// rerun from it completes the tree (it was refused, exit 64, its hint naming the
/// refused command).
#[test]
fn a_stopped_restore_is_finished_from_its_store_on_another_mount() {
    let (t, src, store) = setup(5);
    ok_backup(&src, &store);
    let (to, pause) = (t.path().join("restored"), t.path().join("paused"));
    killed_at_third_file(&store, &to, &pause);
    let Some(fs) = Tmpfs::mount(&t.path().join("mnt"), "size=64m") else {
        return;
    };
    let moved = fs.0.join("store");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&store)
        .arg(&moved)
        .status()
        .unwrap();
    assert!(cp.success());
    let (code, rep, err) = restore_with(&moved, "daily.0", &to, &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["status"], "complete", "{rep}");
    assert_same_tree(
        &describe(&src),
        &describe(&to),
        "rerun from the moved store",
    );
}

/// A record of a stopped restore that does not name its restore (written before the
/// record had an `s` line) licenses no replacement: what differs in its directories is
/// a conflict, left alone, and the report says why. The directories it lists were made
/// by a restore (mode 0700 until their metadata is set last): they get the snapshot's
/// metadata (they were left at 0700 and their time of making, no conflict said).
#[test]
fn a_record_that_does_not_name_its_restore_licenses_no_replacement() {
    let (t, src, store) = setup(3);
    ok_backup(&src, &store);
    let to = t.path().join("restored");
    let (code, _, err) = restore_with(&store, "daily.0", &to, &[]);
    assert_eq!(code, 0, "{err}");
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&to).unwrap();
    write(
        &to.join(".snapring-restore-unfinished"),
        format!(
            "snapring-restore-unfinished 1 {}:{}\nd \nd d02\n",
            m.dev(),
            m.ino()
        )
        .as_bytes(),
    );
    write(&to.join("d02/f1"), b"USER EDIT");
    // As the stopped restore left it: made 0700, its metadata not set yet.
    chmod(&to.join("d02"), 0o700);
    set_mtime(&to.join("d02"), 1_700_000_000, 0);
    let (code, rep, err) = restore_with(&store, "daily.0", &to, &[]);
    assert_eq!(code, 2, "{err}\n{rep}");
    assert_eq!(rep["conflicts"][0]["path"], "d02/f1", "{rep}");
    assert_eq!(rep["conflicts"].as_array().map(Vec::len), Some(1), "{rep}");
    let (d, s) = (
        std::fs::metadata(to.join("d02")).unwrap(),
        std::fs::metadata(src.join("d02")).unwrap(),
    );
    assert_eq!(d.mode() & 0o7777, 0o755, "d02's mode is the snapshot's");
    assert_eq!(d.mtime(), s.mtime(), "d02's mtime is the snapshot's");
    assert_eq!(rep["overwritten"], 0, "{rep}");
    assert_eq!(std::fs::read(to.join("d02/f1")).unwrap(), b"USER EDIT");
    assert!(
        rep["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("does not say which restore")),
        "{rep}"
    );
}

/// A dry run after a stopped restore listed as conflicts ("!") the files the real run
/// then replaced as the stopped run's ("replaced 8"), `--json` `conflicts: []` aside:
/// it plans what the rerun does now.
#[test]
fn a_dry_run_after_a_stopped_restore_plans_what_the_rerun_does() {
    let (t, src, store) = setup(5);
    ok_backup(&src, &store);
    let (to, pause) = (t.path().join("restored"), t.path().join("paused"));
    killed_at_third_file(&store, &to, &pause);
    write(&to.join("d04/f0"), b"half-written");
    let (_, dry, err) = restore_with(&store, "daily.0", &to, &["--dry-run"]);
    assert_eq!(dry["dry_run"], true, "{err}\n{dry}");
    let (code, real, err) = restore_with(&store, "daily.0", &to, &[]);
    assert_eq!(code, 0, "{err}\n{real}");
    for k in [
        "conflicts_total",
        "overwritten",
        "files_restored",
        "dirs_created",
    ] {
        assert_eq!(dry[k], real[k], "{k}: dry run {dry}\nrestore {real}");
    }
    assert_eq!(dry["conflicts"], real["conflicts"], "{dry}\n{real}");
    assert_same_tree(&describe(&src), &describe(&to), "rerun restore");
}

/// A rerun after a stopped restore deleted every `.snapring-restore.<pid>-<n>.tmp`
/// under `--to`, a live process's too (another restore into a `--to` nested in it).
/// Now only a stopped run's (its pid in the record, or no process of it alive), counted.
#[test]
fn a_rerun_deletes_only_the_temporary_files_of_stopped_restores() {
    let (t, src, store) = setup(5);
    ok_backup(&src, &store);
    let (to, pause) = (t.path().join("restored"), t.path().join("paused"));
    killed_at_third_file(&store, &to, &pause);
    let mut live = Command::new("sleep").arg("60").spawn().unwrap();
    let live_tmp = to.join(format!("d04/.snapring-restore.{}-0.tmp", live.id()));
    // No process has a pid above the largest one Linux gives (2^22).
    let dead_tmp = to.join("d04/.snapring-restore.99999999-3.tmp");
    write(&live_tmp, b"another restore's file in progress");
    write(&dead_tmp, b"a leftover");
    let (code, rep, err) = restore_with(&store, "daily.0", &to, &[]);
    let _ = live.kill();
    let _ = live.wait();
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(
        std::fs::read(&live_tmp).unwrap(),
        b"another restore's file in progress"
    );
    assert!(!dead_tmp.exists());
    assert_eq!(rep["temporary_removed"], 1, "{rep}");
}

/// A restore that failed (here: its record could not be written, as on a full disk)
/// said "directories 30" of directories it had only planned; it counts those it made.
#[test]
fn a_failed_restore_counts_only_the_directories_it_made() {
    let (t, src, store) = setup(30);
    ok_backup(&src, &store);
    let to = t.path().join("restored");
    // The first write of the record names `--to`, the second the root's directories.
    let (code, rep, err) = finish(spawn_restore(
        &store,
        "daily.0",
        &to,
        "restore.recorded=error@2",
    ));
    assert_eq!(rep["status"], "failed", "{code} {err}\n{rep}");
    let made = std::fs::read_dir(&to)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
        .count();
    assert_eq!(rep["dirs_created"], made as u64, "{rep}");
}
