//! Guards and errors: bad sources are refused with a clear message and lose nothing; a
//! second run is refused naming the holder; a dead holder's lock is recovered; EMLINK
//! and EXDEV fall back to copies; unreadable and vanished entries give `partial`; a file
//! changing during its copy is retried and counted; a full disk fails cleanly.

mod common;
use common::*;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&dest).unwrap();
    for i in 0..20 {
        write(
            &src.join(format!("d{}/f{i}", i % 4)),
            format!("content {i}").as_bytes(),
        );
    }
    (t, src, dest)
}

#[test]
fn missing_source_is_refused_and_nothing_changes() {
    let (t, src, dest) = setup();
    backup(&src, &dest, &[], &[]);
    let before = describe(&dest.join("daily.0"));
    let (code, rep, _) = backup(&t.path().join("not-there"), &dest, &[], &[]);
    assert_eq!(code, 1);
    assert_eq!(rep["status"], "failed");
    assert!(
        rep["message"]
            .as_str()
            .unwrap()
            .contains("does not exist (is the file system mounted?)"),
        "{rep}"
    );
    assert_eq!(snapshot_names(&dest), ["daily.0"]);
    assert_same_tree(
        &before,
        &describe(&dest.join("daily.0")),
        "snapshot after refused run",
    );
}

#[test]
fn source_that_should_be_a_mount_point_is_refused() {
    let (_t, src, dest) = setup();
    let (code, rep, _) = backup(&src, &dest, &["--require-mount"], &[]);
    assert_eq!(code, 1);
    assert!(
        rep["message"]
            .as_str()
            .unwrap()
            .contains("is not a mount point"),
        "{rep}"
    );
    assert_eq!(snapshot_names(&dest), Vec::<String>::new());
    // A real mount point passes.
    let mnt = dest.parent().unwrap().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success()
    );
    write(&mnt.join("file"), b"on a mount");
    let (code, rep, err) = backup(&mnt, &dest, &["--require-mount"], &[]);
    Command::new("umount").arg(&mnt).status().unwrap();
    assert_eq!(code, 0, "{err}\n{rep}");
}

#[test]
fn empty_source_against_a_full_snapshot_is_refused_unless_allowed() {
    let (_t, src, dest) = setup();
    backup(&src, &dest, &[], &[]);
    // The source as an unmounted file system leaves it: an empty directory.
    let empty = src;
    std::fs::remove_dir_all(&empty).unwrap();
    std::fs::create_dir(&empty).unwrap();
    let (code, rep, _) = backup(&empty, &dest, &[], &[]);
    assert_eq!(code, 1);
    assert!(
        rep["message"]
            .as_str()
            .unwrap()
            .contains("is empty but the previous snapshot daily.0 is not"),
        "{rep}"
    );
    assert_eq!(snapshot_names(&dest), ["daily.0"]);
    let (code, _, _) = backup(&empty, &dest, &["--allow-empty"], &[]);
    assert_eq!(code, 0);
    assert_eq!(snapshot_names(&dest), ["daily.0", "daily.1"]);
}

#[test]
fn second_run_is_refused_naming_the_holder_and_a_dead_holder_is_recovered() {
    let (_t, src, dest) = setup();
    let Paused {
        child: mut first,
        pause,
    } = spawn_paused(&src, &dest, &[], "walk.dir", 1);
    // The refused run is a run like any other for whoever watches it: its `failed`
    // report on stdout (`--json`), its post command (which runs whatever the status),
    // its textfile for node_exporter.
    let seen = dest.parent().unwrap().join("post-seen");
    let textfile = dest.parent().unwrap().join("textfile");
    std::fs::create_dir(&textfile).unwrap();
    let post = format!(
        "sh -c 'echo \"$SNAPRING_STATUS $SNAPRING_RUN_ID\" > {}'",
        seen.display()
    );
    let (code, rep, err) = backup(
        &src,
        &dest,
        &[
            "--post-command",
            &post,
            "--textfile",
            textfile.to_str().unwrap(),
        ],
        &[],
    );
    // EX_TEMPFAIL: try again later, as a locked restic repository exits.
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("is in use: snapring backup (pid"), "{err}");
    assert!(err.contains(&format!("pid {} on", first.id())), "{err}");
    assert_eq!(rep["status"], "failed", "{rep}\n{err}");
    assert!(
        rep["message"]
            .as_str()
            .unwrap()
            .contains("is in use: snapring backup (pid"),
        "{rep}"
    );
    let id = rep["id"].as_str().unwrap();
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap().trim(),
        format!("failed {id}"),
        "the post command of the refused run"
    );
    assert_eq!(rep["post_command"]["exit_code"], 0, "{rep}");
    let prom: String = std::fs::read_dir(&textfile)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        prom.lines()
            .any(|l| l.starts_with("snapring_last_run_status{")
                && l.contains("status=\"failed\"")
                && l.ends_with(" 1.0")),
        "{prom}"
    );

    // Kill the holder: the kernel releases its lock; the next run repairs and proceeds.
    first.kill().unwrap();
    first.wait().unwrap();
    std::fs::remove_file(&pause).unwrap();
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    let runs: Vec<serde_json::Value> = std::fs::read_dir(dest.join(".snapring/runs"))
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    assert_eq!(runs.len(), 2);
    let dead = runs.iter().find(|r| r["id"] != rep["id"]).unwrap();
    assert_eq!(dead["status"], "incomplete", "{dead}");
    assert_eq!(dead["exit_code"], 3);
}

/// ext4 allows 65,000 links per inode (EFS 177): past that, link() fails with EMLINK and
/// the file is copied instead, and counted.
#[test]
fn emlink_falls_back_to_a_copy() {
    let (t, src, dest) = setup();
    backup(&src, &dest, &[], &[]);
    let target = dest.join("daily.0/d0/f0");
    let scratch = t.path().join("links");
    std::fs::create_dir(&scratch).unwrap();
    let nlink = std::fs::metadata(&target).unwrap().nlink();
    let mut i = 0;
    loop {
        match std::fs::hard_link(&target, scratch.join(i.to_string())) {
            Ok(()) => i += 1,
            Err(e) if e.raw_os_error() == Some(31) => break, // EMLINK
            Err(e) => panic!("link: {e}"),
        }
        assert!(i < 70_000);
    }
    assert!(nlink + i >= 65_000);
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["link_fallbacks"], 1, "{rep}");
    assert_eq!(rep["files_transferred"], 1);
    assert_eq!(rep["files_linked"], 19);
    assert_eq!(
        std::fs::read(dest.join("daily.0/d0/f0")).unwrap(),
        b"content 0"
    );
    std::fs::remove_dir_all(&scratch).unwrap();
}

/// A previous snapshot on another file system (here: a tmpfs mounted over a snapshot of
/// another label) cannot be linked from: EXDEV, copied instead, counted.
#[test]
fn exdev_falls_back_to_a_copy() {
    let (_t, src, dest) = setup();
    let hourly = dest.join("hourly.0");
    std::fs::create_dir(&hourly).unwrap();
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&hourly)
            .status()
            .unwrap()
            .success()
    );
    let cp = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(&hourly)
        .status()
        .unwrap();
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    Command::new("umount").arg(&hourly).status().unwrap();
    assert!(cp.success());
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["based_on"], "hourly.0");
    assert_eq!(rep["link_fallbacks"], 20, "{rep}");
    assert_eq!(rep["files_transferred"], 20);
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "snapshot after EXDEV fallbacks",
    );
}

/// Unreadable entries (EACCES, here by running without CAP_DAC_OVERRIDE) are listed
/// and give `partial` with exit code 2; everything else is backed up.
#[test]
fn unreadable_entries_give_partial() {
    let (_t, src, dest) = setup();
    chmod(&src.join("d1/f1"), 0o000);
    chmod(&src.join("d2"), 0o000);
    let out = snapring_without_dac()
        .args(["backup", "--json", "--source"])
        .arg(&src)
        .arg("--dest")
        .arg(&dest)
        .output()
        .unwrap();
    chmod(&src.join("d2"), 0o755);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["status"], "partial");
    let problems: Vec<(String, String, String)> = rep["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().into(),
                p["kind"].as_str().unwrap().into(),
                p["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        problems,
        [
            (
                "d1/f1".to_string(),
                "unreadable".to_string(),
                "open".to_string()
            ),
            ("d2".into(), "unreadable".into(), "open directory".into())
        ]
    );
    // Published, with everything readable in it; the unreadable directory is there, empty.
    assert_eq!(
        std::fs::read(dest.join("daily.0/d0/f0")).unwrap(),
        b"content 0"
    );
    assert!(!dest.join("daily.0/d1/f1").exists());
    assert!(dest.join("daily.0/d2").is_dir());
}

/// A directory the backup user can neither read nor give its owner to (root's, 0700,
/// for a user other than root; here: no CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH or
/// CAP_CHOWN) is kept as an empty directory and listed, and the run is `partial` with
/// the rest published. The owner its empty stand-in was refused (EPERM) failed the
/// whole run ("cannot create directory d2"), exit 1, nothing published.
#[test]
fn an_unreadable_directory_of_another_owner_gives_partial() {
    let (_t, src, dest) = setup();
    let d2 = src.join("d2");
    std::os::unix::fs::chown(&d2, Some(4321), Some(4321)).unwrap();
    chmod(&d2, 0o700);
    let out = Command::new("setpriv")
        .args([
            "--bounding-set=-dac_override,-dac_read_search,-chown",
            "--inh-caps=-dac_override,-dac_read_search,-chown",
        ])
        .arg(bin())
        .env("SNAPRING_CATALOG", "off")
        .args(["backup", "--json", "--source"])
        .arg(&src)
        .arg("--dest")
        .arg(&dest)
        .output()
        .unwrap();
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        (out.status.code(), &rep["status"]),
        (Some(2), &serde_json::Value::from("partial")),
        "{rep}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let problems: Vec<(&str, &str, &str)> = rep["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap(),
                p["kind"].as_str().unwrap(),
                p["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        problems,
        [
            ("d2", "unreadable", "open directory"),
            ("d2", "metadata", "set owner")
        ],
        "{rep}"
    );
    assert_eq!(
        std::fs::read(dest.join("daily.0/d0/f0")).unwrap(),
        b"content 0"
    );
    let kept = dest.join("daily.0/d2");
    assert!(kept.is_dir());
    assert_eq!(std::fs::read_dir(&kept).unwrap().count(), 0);
}

/// `snapring verify SNAPSHOT` of the store reports it clean.
fn assert_verify_clean(dest: &Path, snap: &str) {
    let out = snapring(
        &[
            "verify".as_ref(),
            "--json".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            snap.as_ref(),
        ],
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        (out.status.code(), &v[0]["clean"]),
        (Some(0), &serde_json::Value::Bool(true)),
        "verify {snap}: {v}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Old mtimes, and old enough (2 s) that the next run does not count them as racy.
fn age(src: &Path) {
    for i in 0..20 {
        set_mtime(&src.join(format!("d{}/f{i}", i % 4)), 1_600_000_000, i);
    }
    std::thread::sleep(std::time::Duration::from_millis(2100));
}

/// A changed file that cannot be read keeps its previous
/// version: linked from the previous snapshot with its previous manifest entry, listed
/// as a problem that says so; the snapshot verifies clean. The next readable run copies.
#[test]
fn unreadable_changed_entry_keeps_the_previous_version() {
    let (_t, src, dest) = setup();
    age(&src);
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    write(&src.join("d1/f1"), b"changed 1");
    set_mtime(&src.join("d1/f1"), 1_700_000_000, 0);
    chmod(&src.join("d1/f1"), 0o000);
    // A new unreadable file has no previous version: it stays out.
    write(&src.join("d1/new"), b"new");
    chmod(&src.join("d1/new"), 0o000);
    let (code, rep, err) = backup_without_dac(&src, &dest, &[]);
    chmod(&src.join("d1/f1"), 0o644);
    assert_eq!(code, Some(2), "{rep}\n{err}");
    assert_eq!(rep["status"], "partial");
    let problems: Vec<(&str, &str, &str)> = rep["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap(),
                p["kind"].as_str().unwrap(),
                p["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        problems,
        [
            ("d1/f1", "unreadable", "open"),
            ("d1/new", "unreadable", "open")
        ],
        "{rep}"
    );
    let kept = rep["problems"][0]["error"].as_str().unwrap();
    let run = rep["based_on"].as_str().unwrap();
    assert!(
        kept.contains("Permission denied")
            && kept.ends_with(&format!("; the previous version (from {run}) was kept")),
        "{kept}"
    );
    assert!(
        !rep["problems"][1]["error"]
            .as_str()
            .unwrap()
            .contains("previous version"),
        "{rep}"
    );
    assert_eq!(
        std::fs::read(dest.join("daily.0/d1/f1")).unwrap(),
        b"content 1"
    );
    assert_eq!(
        ino(&dest.join("daily.0/d1/f1")),
        ino(&dest.join("daily.1/d1/f1"))
    );
    assert!(!dest.join("daily.0/d1/new").exists());
    assert_verify_clean(&dest, "daily.0");
    // Readable again: the next run sees the change (the kept entry is the old one).
    chmod(&src.join("d1/new"), 0o644);
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    assert_eq!(
        std::fs::read(dest.join("daily.0/d1/f1")).unwrap(),
        b"changed 1"
    );
    assert_eq!(std::fs::read(dest.join("daily.0/d1/new")).unwrap(), b"new");
    assert_verify_clean(&dest, "daily.0");
}

/// A changed file deleted from the source between its listing and its copy is not
/// kept from the previous snapshot: it disappears, as a `vanished` problem.
#[test]
fn file_deleted_before_its_copy_is_not_kept() {
    let (_t, src, dest) = setup();
    age(&src);
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    write(&src.join("d2/f2"), b"changed 2");
    set_mtime(&src.join("d2/f2"), 1_700_000_000, 0);
    // The only copy of the run: paused after its lstat, before its open.
    let run = spawn_paused(&src, &dest, &[], "walk.copy", 1);
    std::fs::remove_file(src.join("d2/f2")).unwrap();
    let (code, rep) = run.resume();
    assert_eq!(code, 2, "{rep}");
    assert_eq!(rep["problems"].as_array().map(Vec::len), Some(1), "{rep}");
    assert_eq!(rep["problems"][0]["path"], "d2/f2");
    assert_eq!(rep["problems"][0]["kind"], "vanished");
    assert_eq!(rep["problems"][0]["action"], "open");
    assert!(
        !rep["problems"][0]["error"]
            .as_str()
            .unwrap()
            .contains("previous version"),
        "{rep}"
    );
    assert!(!dest.join("daily.0/d2/f2").exists());
    assert_eq!(
        std::fs::read(dest.join("daily.1/d2/f2")).unwrap(),
        b"content 2"
    );
    assert_verify_clean(&dest, "daily.0");
}

#[test]
fn vanished_entries_give_partial() {
    let (_t, src, dest) = setup();
    let run = spawn_paused(&src, &dest, &[], "walk.after_readdir", 1);
    // The root was listed; now its subdirectory d3 and its files disappear.
    std::fs::remove_dir_all(src.join("d3")).unwrap();
    let (code, rep) = run.resume();
    assert_eq!(code, 2);
    assert_eq!(rep["problems"][0]["kind"], "vanished", "{rep}");
    assert_eq!(rep["problems"][0]["path"], "d3");
    assert_eq!(rep["snapshot"], "daily.0");
}

#[test]
fn file_changed_while_copied_is_retried_and_counted() {
    let (_t, src, dest) = setup();
    let run = spawn_paused(&src, &dest, &[], "walk.after_copy", 1);
    // Exactly one file has just been copied; change every source file under it.
    for i in 0..20 {
        let p = src.join(format!("d{}/f{i}", i % 4));
        std::fs::write(&p, format!("changed {i}")).unwrap();
    }
    let (code, rep) = run.resume();
    assert_eq!(code, 0, "{rep}");
    assert_eq!(rep["changed_during_backup"], 1, "{rep}");
    // Every file in the snapshot has the new content (the changed one was copied again).
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "snapshot after retry",
    );
}

#[test]
fn full_disk_fails_cleanly_and_keeps_history() {
    let (t, src, _) = setup();
    let dest = t.path().join("small");
    std::fs::create_dir(&dest).unwrap();
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&dest)
            .status()
            .unwrap()
            .success()
    );
    let run = || {
        let (code, rep, _) = backup(&src, &dest, &["--folder", "fs"], &[]);
        (code, rep)
    };
    let (code, _) = run();
    assert_eq!(code, 0);
    let store = dest.join("fs");
    let before = describe(&store.join("daily.0"));
    write(&src.join("big"), &vec![1u8; 4 << 20]);
    let (code, rep) = run();
    let staging: Vec<_> = std::fs::read_dir(store.join(".snapring/staging"))
        .unwrap()
        .collect();
    let names = snapshot_names(&store);
    let after = describe(&store.join("daily.0"));
    Command::new("umount").arg(&dest).status().unwrap();
    assert_eq!(code, 1, "{rep}");
    assert_eq!(rep["status"], "failed");
    assert!(
        rep["message"]
            .as_str()
            .unwrap()
            .contains("file system is full"),
        "{rep}"
    );
    assert_eq!(names, ["daily.0"], "nothing published or rotated");
    assert!(staging.is_empty(), "the partial tree is removed");
    assert_same_tree(&before, &after, "older snapshot after disk full");
}

/// Unmounts a test's file system when dropped (also when the test fails).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn inodes_used(p: &Path) -> u64 {
    let s = rustix::fs::statvfs(p).unwrap();
    s.f_files - s.f_ffree
}

/// The store's file system (a real tmpfs) runs out of inodes just as the journal is to
/// be written: the run waits there (a pause failpoint) while the tmpfs's inode limit is
/// lowered to what is in use, then goes on into a real ENOSPC. The run fails naming the
/// cause, its staging tree is discarded (trash emptied, inodes free again), its record
/// and the catalog say `failed`; with inodes back the next run completes and is in the
/// catalog too.
#[test]
fn out_of_inodes_at_the_journal_fails_the_run_discards_staging_and_the_next_run_completes() {
    let (t, src, _) = setup();
    let mnt = t.path().join("few-inodes");
    std::fs::create_dir(&mnt).unwrap();
    let mount = |opts: &str| {
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success()
    };
    let remount = |inodes: u64| {
        assert!(
            Command::new("mount")
                .args(["-o", &format!("remount,nr_inodes={inodes}")])
                .arg(&mnt)
                .status()
                .unwrap()
                .success()
        )
    };
    assert!(mount("size=64m,nr_inodes=4096"));
    let _mounted = Mounted(mnt.clone());
    let catalog = t.path().join("catalog.db");
    let cat = catalog.to_str().unwrap();
    let store = mnt.join("fs");
    let (code, first, err) = backup(
        &src,
        &mnt,
        &["--folder", "fs"],
        &[("SNAPRING_CATALOG", cat)],
    );
    assert_eq!(code, 0, "{first}\n{err}");
    let before = describe(&store.join("daily.0"));
    for i in 0..30 {
        write(
            &src.join(format!("new/f{i}")),
            format!("new {i}").as_bytes(),
        );
    }

    let pause = t.path().join("paused");
    let child = Command::new(bin())
        .args(["backup", "--json", "--folder", "fs", "--source"])
        .arg(&src)
        .arg("--dest")
        .arg(&mnt)
        .env("SNAPRING_CATALOG", &catalog)
        .env(
            "SNAPRING_FAILPOINTS",
            format!("journal.before_write=pause:{}", pause.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&pause);
    let used = inodes_used(&mnt);
    remount(used);
    assert_eq!(
        rustix::fs::statvfs(&mnt).unwrap().f_ffree,
        0,
        "no inode left"
    );
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(out.status.code(), Some(1), "{rep}\n{err}");
    assert_eq!(rep["status"], "failed", "{rep}");
    let msg = rep["message"].as_str().unwrap();
    assert!(
        msg.contains("file system is full (out of inodes") && msg.contains("journal"),
        "{msg}"
    );
    let id = rep["id"].as_str().unwrap();
    let meta = store.join(".snapring");
    let left = |d: &str| -> Vec<_> {
        std::fs::read_dir(meta.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    };
    assert_eq!(
        left("staging"),
        Vec::<std::ffi::OsString>::new(),
        "staging tree discarded"
    );
    assert_eq!(
        left("trash"),
        Vec::<std::ffi::OsString>::new(),
        "and deleted"
    );
    assert!(inodes_used(&mnt) < used, "its inodes are free again");
    assert!(!meta.join("journal").exists());
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(meta.join(format!("runs/{id}.json"))).unwrap())
            .unwrap();
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["message"], rep["message"]);
    assert_eq!(snapshot_names(&store), ["daily.0"], "nothing published");
    assert_same_tree(&before, &describe(&store.join("daily.0")), "daily.0");

    // Inodes are back: the next run completes.
    remount(4096);
    let (code, third, err) = backup(
        &src,
        &mnt,
        &["--folder", "fs"],
        &[("SNAPRING_CATALOG", cat)],
    );
    assert_eq!(code, 0, "{third}\n{err}");
    assert_eq!(third["status"], "complete");
    assert_eq!(snapshot_names(&store), ["daily.0", "daily.1"]);
    assert_same_tree(&before, &describe(&store.join("daily.1")), "daily.1");

    // Every run is in the catalog, with its outcome.
    let out = snapring(
        &[
            "--catalog".as_ref(),
            catalog.as_os_str(),
            "history".as_ref(),
            "--json".as_ref(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut runs: Vec<(String, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().into(),
                r["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    runs.sort();
    let mut want: Vec<(String, String)> =
        [(&first, "complete"), (&rep, "failed"), (&third, "complete")]
            .iter()
            .map(|(r, s)| (r["id"].as_str().unwrap().into(), s.to_string()))
            .collect();
    want.sort();
    assert_eq!(runs, want, "{history}");
}

/// The store's file system (a real 2 MiB tmpfs) fills up after the rotation's journal
/// was written, its renames done (a pause failpoint at `journal.before_state`, the disk
/// filled meanwhile). The run fails (exit 1) saying what is true: the journal was
/// written, the new snapshot is in place, the next command that can write the store
/// finishes the rotation, no snapshot is lost (it said "the run was abandoned, nothing
/// was published" and then "publishes daily.0"). While the disk stays full, `list`
/// lists the store as the roll-forward will leave it, with a warning (it failed with
/// that run's text), and a backup fails saying it cannot finish that rotation; the
/// run's record stays `running` (its final write failed). With space again, `list`
/// rolls the journal forward and the record is settled `complete` as `daily.0`.
#[test]
fn a_full_disk_after_the_rotation_journal_is_said_truly_list_still_lists_and_the_run_is_settled() {
    let (t, src, _) = setup();
    let mnt = t.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success()
    );
    let _mounted = Mounted(mnt.clone());
    let catalog = t.path().join("catalog.db");
    let cat = catalog.to_str().unwrap();
    let store = mnt.join("fs");
    let (code, first, err) = backup(
        &src,
        &mnt,
        &["--folder", "fs"],
        &[("SNAPRING_CATALOG", cat)],
    );
    assert_eq!(code, 0, "{first}\n{err}");
    write(&src.join("d0/f0"), b"second version");
    let pause = t.path().join("paused");
    let child = Command::new(bin())
        .args(["backup", "--json", "--folder", "fs", "--source"])
        .arg(&src)
        .arg("--dest")
        .arg(&mnt)
        .env("SNAPRING_CATALOG", &catalog)
        .env(
            "SNAPRING_FAILPOINTS",
            format!("journal.before_state=pause:{}", pause.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&pause);
    let fill = mnt.join("fill");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&fill).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
    }
    assert_eq!(rustix::fs::statvfs(&mnt).unwrap().f_bfree, 0, "full");
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(out.status.code(), Some(1), "{rep}\n{err}");
    assert_eq!(rep["status"], "failed", "{rep}");
    let id = rep["id"].as_str().unwrap().to_string();
    let msg = rep["message"].as_str().unwrap();
    for says in [
        "destination file system is full (out of space) while writing",
        "after its renames, with the new snapshot in place as daily.0",
        "its rotation journal was written",
        "the next command that can write the store",
        "no snapshot is lost",
        "Free space so it can",
    ] {
        assert!(msg.contains(says), "{says:?} in {msg}");
    }
    for untrue in ["abandoned", "nothing was published"] {
        assert!(!msg.contains(untrue), "{untrue:?} in {msg}");
        assert!(!err.contains(untrue), "{untrue:?} in {err}");
    }
    let record = || -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(store.join(format!(".snapring/runs/{id}.json"))).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(record()["status"], "running", "its final write failed");
    // The catalog keeps the run's failure (it said `running`, and would have said
    // `incomplete`, "nothing was published", where that record could be written).
    let history = || -> Vec<(String, String)> {
        let o = snapring(
            &["history".as_ref(), "--json".as_ref()],
            &[("SNAPRING_CATALOG", cat)],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["id"] == id.as_str())
            .map(|r| {
                (
                    r["status"].as_str().unwrap().to_string(),
                    r["snapshot"].as_str().unwrap_or("-").to_string(),
                )
            })
            .collect()
    };
    assert_eq!(history(), [("failed".to_string(), "-".to_string())]);
    assert_eq!(record()["status"], "running");

    // Still full: `list` lists the store as the roll-forward will leave it.
    let list = || {
        snapring(
            &["list".as_ref(), "--dest".as_ref(), store.as_os_str()],
            &[],
        )
    };
    let o = list();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("daily.0") && out.contains(&id), "{out}");
    assert!(
        err.contains(&format!(
            "cannot finish the interrupted rotation of run {id}"
        )),
        "{err}"
    );
    assert!(!err.contains("abandoned"), "{err}");
    assert!(store.join(".snapring/journal").exists());
    // A backup cannot run, and says why.
    let (code, _, err) = backup(
        &src,
        &mnt,
        &["--folder", "fs"],
        &[("SNAPRING_CATALOG", cat)],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "cannot finish the interrupted rotation of run {id}"
        )) && err.contains("no snapshot is lost")
            && !err.contains("abandoned"),
        "{err}"
    );
    assert_eq!(record()["status"], "running");

    // Space again: the next command settles the run.
    std::fs::remove_file(&fill).unwrap();
    let o = list();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!store.join(".snapring/journal").exists());
    let r = record();
    assert_eq!(
        (r["status"].as_str(), r["snapshot"].as_str()),
        (Some("complete"), Some("daily.0")),
        "{r}"
    );
    assert_eq!(snapshot_names(&store), ["daily.0", "daily.1"]);
    assert_eq!(
        std::fs::read(store.join("daily.0/d0/f0")).unwrap(),
        b"second version"
    );
    assert_eq!(history(), [("complete".to_string(), "daily.0".to_string())]);
}

#[test]
fn bad_config_is_explained() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[job.efs]\nsource = \"/mnt/efs\"\ndest = \"/mnt/b\"\nretain = 0\nkeep = 3\n",
    )
    .unwrap();
    let out = snapring(&["config".as_ref(), "check".as_ref(), cfg.as_os_str()], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    // Both problems, each at its key's line.
    assert!(
        text.contains("c.toml:4:1: job.efs.retain: retain must be at least 1")
            && text.contains("c.toml:5:1: job.efs.keep: unknown key (did you mean `retain`?)")
            && text.contains("c.toml: 2 problems"),
        "{text}"
    );
    let (code, _, err) = backup(
        Path::new("/nonexistent"),
        t.path(),
        &["--label", "bad label"],
        &[],
    );
    // A bad flag is a usage error (64); the same value in a file is `failed` (1, above).
    assert_eq!(code, 64);
    assert!(err.contains("label \"bad label\" is not valid"), "{err}");
}

#[test]
fn a_directory_that_cannot_be_deleted_from_trash_keeps_its_ancestors_only() {
    let (_t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &["--retain", "1"], &[]).0, 0);
    write(&src.join("second"), b"2");
    // The first directory opened under the expired snapshot fails.
    let (code, rep, err) = backup(
        &src,
        &dest,
        &["--retain", "1"],
        &[("SNAPRING_FAILPOINTS", "trash.dir=error@2")],
    );
    assert_eq!(code, 0, "published before the deletion: {err}");
    assert_eq!(rep["expired"].as_array().unwrap().len(), 1, "{rep}");
    assert!(
        err.contains("expired snapshots not fully deleted yet (cannot remove .snapring/trash/"),
        "{err}"
    );
    // Left: the expired snapshot holding just the one directory, untouched.
    let trash = dest.join(".snapring/trash");
    let left: Vec<_> = std::fs::read_dir(&trash).unwrap().flatten().collect();
    assert_eq!(left.len(), 1);
    let inside: Vec<_> = std::fs::read_dir(left[0].path())
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(inside.len(), 1, "{inside:?}");
    assert_eq!(std::fs::read_dir(inside[0].path()).unwrap().count(), 5);
    // The next run deletes the rest.
    assert_eq!(backup(&src, &dest, &["--retain", "1"], &[]).0, 0);
    assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0);
}

/// A symlink whose owner the backup may not set (no CAP_CHOWN here; a root-squashed NFS
/// store likewise) stays in the snapshot and its manifest: the refused owner is a
/// metadata problem of that entry, not a reason to leave the entry out.
#[test]
fn a_special_file_whose_owner_cannot_be_set_stays_in_the_snapshot() {
    let (_t, src, dest) = setup();
    let link = src.join("d0/link");
    std::os::unix::fs::symlink("f0", &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(4321), Some(4321)).unwrap();
    let out = Command::new("setpriv")
        .args(["--bounding-set=-chown", "--inh-caps=-chown"])
        .arg(bin())
        .env("SNAPRING_CATALOG", "off")
        .args(["backup", "--json", "--source"])
        .arg(&src)
        .arg("--dest")
        .arg(&dest)
        .output()
        .unwrap();
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        (out.status.code(), &rep["status"]),
        (Some(2), &serde_json::Value::from("partial")),
        "{rep}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let problems: Vec<(&str, &str)> = rep["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["path"].as_str().unwrap(), p["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(problems, [("d0/link", "metadata")], "{rep}");
    let made = std::fs::symlink_metadata(dest.join("daily.0/d0/link")).unwrap();
    assert!(made.file_type().is_symlink());
    // In the manifest too, with the owner the snapshot's link holds (what a `verify`
    // finds): against the source it differs in its owner only, not missing.
    let out = snapring(
        &[
            "diff".as_ref(),
            "--json".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            "daily.0".as_ref(),
            "--against".as_ref(),
            src.as_os_str(),
        ],
        &[],
    );
    let diff: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let link: Vec<_> = diff["differences"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["path"] == "d0/link")
        .collect();
    assert_eq!(link.len(), 1, "{diff}");
    assert_eq!(link[0]["change"], "metadata", "{diff}");
    assert_eq!(link[0]["detail"][0], "owner 0:0 -> 4321:4321", "{diff}");
}

/// The backup file system unmounted: its mount point is an empty directory, and the
/// store (`--folder fs-1` under it) is gone. The catalog has the store's runs with
/// snapshots, so the run is refused (exit 1, recorded `failed`) and nothing is written
/// on the file system under the mount point. It made a new store there from scratch,
/// `complete`, exit 0, while the real store missed the run. Once mounted again the next
/// run is a normal incremental; a store removed on purpose is begun anew by creating
/// its `.snapring`.
#[test]
fn a_store_on_an_unmounted_file_system_is_refused_when_the_catalog_knows_it() {
    let (t, src, _) = setup();
    // The file system: a bind mount of `fs` (a tmpfs would come back empty).
    let (fs, mnt) = (t.path().join("fs"), t.path().join("mnt"));
    std::fs::create_dir(&fs).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let mount = || {
        assert!(
            Command::new("mount")
                .arg("--bind")
                .arg(&fs)
                .arg(&mnt)
                .status()
                .unwrap()
                .success()
        )
    };
    mount();
    // Unmounted whatever happens, a panic included.
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let catalog = t.path().join("catalog.db");
    let cat = ("SNAPRING_CATALOG", catalog.to_str().unwrap());
    let store = mnt.join("fs-1");
    let (code, rep, err) = backup(&src, &mnt, &["--folder", "fs-1"], &[cat]);
    assert_eq!(code, 0, "{err}{rep}");
    Command::new("umount").arg(&mnt).status().unwrap();
    let (code, rep, err) = backup(&src, &mnt, &["--folder", "fs-1"], &[cat]);
    assert_eq!(code, 1, "{err}{rep}");
    assert!(
        err.contains("is the backup file system mounted?") && err.contains("1 run recorded"),
        "{err}"
    );
    // A shard worker on a node where it is not mounted, as well.
    let (code, rep, err) = backup(
        &src,
        &mnt,
        &["--folder", "fs-1", "--shard", "0/1", "--run-id", "r1"],
        &[cat],
    );
    assert_eq!(code, 1, "{err}{rep}");
    assert!(err.contains("is the backup file system mounted?"), "{err}");
    assert_eq!(
        std::fs::read_dir(&mnt).unwrap().count(),
        0,
        "nothing written under the mount point"
    );
    let h = snapring(&["history".as_ref(), "--json".as_ref()], &[cat]);
    let h: serde_json::Value = serde_json::from_slice(&h.stdout).unwrap();
    assert_eq!(
        h.as_array().unwrap().last().unwrap()["status"],
        "failed",
        "{h}"
    );
    // Mounted again: an incremental of the real store.
    mount();
    let (code, rep, err) = backup(&src, &mnt, &["--folder", "fs-1"], &[cat]);
    assert_eq!(code, 0, "{err}{rep}");
    assert_eq!(rep["files_linked"], 20, "{rep}");
    // Removed on purpose: its `.snapring` made by hand begins a new store.
    std::fs::remove_dir_all(&store).unwrap();
    let (code, _, err) = backup(&src, &mnt, &["--folder", "fs-1"], &[cat]);
    assert_eq!(code, 1, "{err}");
    std::fs::create_dir_all(store.join(".snapring")).unwrap();
    let (code, rep, err) = backup(&src, &mnt, &["--folder", "fs-1"], &[cat]);
    assert_eq!(code, 0, "{err}{rep}");
    assert_eq!(snapshot_names(&store), ["daily.0"]);
}

/// A store on a FUSE mount whose process died (every call on it fails with ENOTCONN,
/// "Transport endpoint is not connected") that the catalog knows: refused with the
/// error the file system gave. It was reported as "no store here (… is missing) … is
/// the backup file system mounted?", which sent its reader to the wrong cause.
#[test]
fn a_store_on_a_dead_fuse_mount_is_refused_with_the_real_error() {
    let (t, src, _) = setup();
    let (under, mnt) = (t.path().join("under"), t.path().join("mnt"));
    std::fs::create_dir(&under).unwrap();
    let Some(fs) = FaultFs::mount(&under, &mnt, &[]) else {
        return;
    };
    let catalog = t.path().join("catalog.db");
    let cat = ("SNAPRING_CATALOG", catalog.to_str().unwrap());
    // The store is the mount's root: `<dest>/mnt`.
    let (code, rep, err) = backup(&src, t.path(), &["--folder", "mnt"], &[cat]);
    assert_eq!(code, 0, "{err}{rep}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(fs.pid() as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::symlink_metadata(mnt.join(".snapring"))
        .err()
        .and_then(|e| e.raw_os_error())
        != Some(rustix::io::Errno::NOTCONN.raw_os_error())
    {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "the mount is not dead"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, rep, err) = backup(&src, t.path(), &["--folder", "mnt"], &[cat]);
    assert_eq!(code, 1, "{err}{rep}");
    assert!(
        err.contains("Transport endpoint is not connected") && !err.contains("no store here"),
        "{err}"
    );
    drop(fs);
    assert!(under.join(".snapring").exists());
}

/// A run from another source into a store's label is refused before anything is
/// written: its rotation would expire the other source's history (a second file system
/// backed up without `--folder`, or source and dest mixed up; it said `complete`, and
/// two more runs had pushed the first source out). `--new-source` continues the label
/// from a source moved to a new path.
#[test]
fn a_run_from_another_source_into_a_label_is_refused_and_its_history_kept() {
    let (t, src, dest) = setup();
    for _ in 0..3 {
        assert_eq!(backup(&src, &dest, &["--retain", "3"], &[]).0, 0);
    }
    let before: Vec<_> = snapshot_names(&dest)
        .iter()
        .map(|n| (n.clone(), describe(&dest.join(n))))
        .collect();
    let other = t.path().join("other");
    write(&other.join("x"), b"another file system");
    let (code, rep, _) = backup(&other, &dest, &["--retain", "3"], &[]);
    assert_eq!((code, rep["status"].as_str()), (1, Some("failed")), "{rep}");
    let msg = rep["message"].as_str().unwrap();
    let canon = std::fs::canonicalize(&src).unwrap();
    assert!(
        msg.contains(&format!(
            "snapshots in this store are of {}",
            canon.display()
        )) && msg.contains("it made no snapshot and expired none")
            && msg.contains("--new-source"),
        "{msg}"
    );
    for (n, d) in &before {
        assert_same_tree(d, &describe(&dest.join(n)), n);
    }
    assert_eq!(snapshot_names(&dest).len(), 3);
    // Another label is another history: allowed.
    let (code, rep, _) = backup(&other, &dest, &["--label", "other"], &[]);
    assert_eq!(code, 0, "{rep}");
    // The same data moved: continued with --new-source, unchanged files linked.
    let moved = t.path().join("moved");
    std::fs::rename(&src, &moved).unwrap();
    let (code, rep, _) = backup(&moved, &dest, &["--retain", "3", "--new-source"], &[]);
    assert_eq!(code, 0, "{rep}");
    assert_eq!(rep["files_linked"], 20, "{rep}");
    // And from then on without it.
    assert_eq!(backup(&moved, &dest, &["--retain", "3"], &[]).0, 0);
}

/// A `--prefix` that is a symlink is recorded where it leads, as the source is: retargeted
/// to another directory, the next run of the label is refused as another source's
/// (it was compared through the symlink as it leads now: `complete`, the snapshot of
/// the new target published, the old target's history expired with `--retain 1`).
#[test]
fn a_prefix_symlink_retargeted_is_refused_as_another_tree() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    write(&src.join("projA/a"), b"A");
    write(&src.join("projB/b"), b"B");
    std::os::unix::fs::symlink("projA", src.join("cur")).unwrap();
    let (code, rep, err) = backup(&src, &dest, &["--prefix", "cur", "--retain", "1"], &[]);
    assert_eq!(code, 0, "{err}{rep}");
    assert_eq!(rep["prefix"], "projA", "recorded where it leads: {rep}");
    // Unchanged: the same tree, continued.
    let (code, rep, err) = backup(&src, &dest, &["--prefix", "cur", "--retain", "1"], &[]);
    assert_eq!(code, 0, "{err}{rep}");
    // Through the real name too.
    let (code, rep, err) = backup(&src, &dest, &["--prefix", "projA", "--retain", "1"], &[]);
    assert_eq!(code, 0, "{err}{rep}");
    std::fs::remove_file(src.join("cur")).unwrap();
    std::os::unix::fs::symlink("projB", src.join("cur")).unwrap();
    let (code, rep, err) = backup(&src, &dest, &["--prefix", "cur", "--retain", "1"], &[]);
    assert_eq!(
        (code, rep["status"].as_str()),
        (1, Some("failed")),
        "{err}{rep}"
    );
    let msg = rep["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("projA") && msg.contains("it made no snapshot and expired none"),
        "{msg}"
    );
    assert_eq!(snapshot_names(&dest), ["daily.0"]);
    assert!(dest.join("daily.0/a").is_file(), "projA's history expired");
    // The same data moved is continued with --new-source.
    let (code, rep, err) = backup(
        &src,
        &dest,
        &["--prefix", "cur", "--retain", "1", "--new-source"],
        &[],
    );
    assert_eq!(code, 0, "{err}{rep}");
    assert!(dest.join("daily.0/b").is_file());
}

/// A run without `--retain` keeps as many snapshots as its label's last run kept: a
/// manual run's default of 7 expired four snapshots of a ring kept at 10, `complete`,
/// exit 0. A `retain` given lower than the ring's is obeyed, with a warning naming
/// what it expires.
#[test]
fn a_run_without_retain_keeps_what_its_label_kept() {
    let (_t, src, dest) = setup();
    for i in 0..10 {
        write(&src.join("v"), format!("{i}").as_bytes());
        assert_eq!(backup(&src, &dest, &["--retain", "10"], &[]).0, 0);
    }
    let (code, rep, _) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{rep}");
    assert_eq!(rep["retain"], 10, "{rep}");
    assert_eq!(
        rep["expired"].as_array().unwrap().len(),
        1,
        "daily.9 only: {rep}"
    );
    assert_eq!(snapshot_names(&dest).len(), 10);
    let (code, rep, _) = backup(&src, &dest, &["--retain", "4"], &[]);
    assert_eq!(code, 0, "{rep}");
    assert_eq!(rep["expired"].as_array().unwrap().len(), 7, "{rep}");
    let w = rep["warnings"].as_array().unwrap();
    assert!(
        w.iter().any(|w| w.as_str().unwrap().contains(
            "retain 4 is lower than what the daily snapshots had (10 in the label's last run"
        )),
        "{rep}"
    );
    assert_eq!(snapshot_names(&dest).len(), 4);
    // The next run without --retain keeps 4.
    let (_, rep, _) = backup(&src, &dest, &[], &[]);
    assert_eq!(rep["retain"], 4, "{rep}");
    assert_eq!(snapshot_names(&dest).len(), 4);
}

/// A lowered `--retain` warns of what it expires by the snapshots' names: with gaps
/// (snapshots deleted by hand) it expires the ones past the `retain - 1` newest, not
/// "daily.{retain-1} and older" (a slot that may not exist, or nothing at all: of
/// daily.0 and daily.5, retain 3 expires none, and was warned of as expiring daily.2
/// and older).
#[test]
fn a_lowered_retain_names_the_snapshots_it_expires_whatever_the_gaps() {
    let (_t, src, dest) = setup();
    for i in 0..6 {
        write(&src.join("v"), format!("{i}").as_bytes());
        assert_eq!(backup(&src, &dest, &["--retain", "10"], &[]).0, 0);
    }
    // daily.0 … daily.5; by hand, daily.1 … daily.4 go: daily.0 and daily.5 are left.
    for s in 1..=4 {
        std::fs::remove_dir_all(dest.join(format!("daily.{s}"))).unwrap();
    }
    let warned = |rep: &serde_json::Value| -> Vec<String> {
        rep["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|w| w.as_str())
            .filter(|w| w.contains("is lower than what the daily snapshots had"))
            .map(str::to_string)
            .collect()
    };
    // retain 3: the new one, daily.0 and daily.5 are three; nothing expires.
    let (code, rep, _) = backup(&src, &dest, &["--retain", "3"], &[]);
    assert_eq!(code, 0, "{rep}");
    assert_eq!(rep["expired"].as_array().unwrap().len(), 0, "{rep}");
    assert_eq!(warned(&rep), Vec::<String>::new(), "{rep}");
    assert_eq!(snapshot_names(&dest), ["daily.0", "daily.1", "daily.2"]);
    // Gaps again: daily.0 and daily.2 (daily.1 deleted by hand). Retain 2 after 3
    // expires daily.2 only, and says so by its name.
    std::fs::remove_dir_all(dest.join("daily.1")).unwrap();
    let (code, rep, _) = backup(&src, &dest, &["--retain", "2"], &[]);
    assert_eq!(code, 0, "{rep}");
    assert_eq!(rep["expired"].as_array().unwrap().len(), 1, "{rep}");
    let w = warned(&rep);
    assert_eq!(w.len(), 1, "{rep}");
    assert!(
        w[0].ends_with("): this run expires 1 snapshot, daily.2"),
        "{rep}"
    );
    assert_eq!(snapshot_names(&dest), ["daily.0", "daily.1"]);
    // Many: the first four, an ellipsis and the last, with their count. daily.0 …
    // daily.9, daily.3 deleted by hand: retain 2 expires the eight past daily.0.
    for i in 0..9 {
        write(&src.join("v"), format!("x{i}").as_bytes());
        assert_eq!(backup(&src, &dest, &["--retain", "10"], &[]).0, 0);
    }
    std::fs::remove_dir_all(dest.join("daily.3")).unwrap();
    let (code, rep, _) = backup(&src, &dest, &["--retain", "2"], &[]);
    assert_eq!(code, 0, "{rep}");
    assert_eq!(rep["expired"].as_array().unwrap().len(), 8, "{rep}");
    let w = warned(&rep);
    assert_eq!(w.len(), 1, "{rep}");
    assert!(
        w[0].ends_with(
            "): this run expires 8 snapshots: daily.1, daily.2, daily.4, daily.5, …, daily.9"
        ),
        "{rep}"
    );
}

/// A dest that holds data and is no store is refused before anything is written: it
/// was turned into a store, `.snapring` and `daily.0` beside the data, `complete` (the
/// source and dest mixed up, or `--folder` forgotten). What a store may hold before
/// its first run is taken: `lost+found`, snapshot trees another tool made. A missing
/// source does not begin a store either.
#[test]
fn a_dest_holding_data_is_not_made_a_store() {
    let (t, src, _) = setup();
    let data = t.path().join("data");
    write(&data.join("important.doc"), b"the only copy");
    let before = describe(&data);
    for dry in [&["--dry-run"][..], &[]] {
        let (code, rep, err) = backup(&src, &data, dry, &[]);
        let err = format!("{err}{}", rep["message"].as_str().unwrap_or(""));
        assert_eq!(code, 1, "{dry:?}: {err}");
        assert!(
            err.contains("not a snapring store, and not empty: it holds important.doc")
                && err.contains("Nothing was written"),
            "{dry:?}: {err}"
        );
        assert_same_tree(&before, &describe(&data), "the data");
    }
    // Made a store on purpose.
    std::fs::create_dir(data.join(".snapring")).unwrap();
    assert_eq!(backup(&src, &data, &[], &[]).0, 0);
    assert!(data.join("daily.0/d0/f0").exists());

    // A new file system's lost+found, an rsnapshot tree and a file server's own
    // entries are no obstacle.
    let fresh = t.path().join("fresh");
    std::fs::create_dir_all(fresh.join("lost+found")).unwrap();
    std::fs::create_dir_all(fresh.join(".snapshot")).unwrap();
    write(
        &fresh.join(".nfs000000000001234"),
        b"an open file deleted over NFS",
    );
    std::fs::create_dir_all(fresh.join("daily.0/d0")).unwrap();
    let (code, rep, err) = backup(&src, &fresh, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");

    // A missing source leaves no store behind.
    let nowhere = t.path().join("nowhere");
    let (code, _, err) = backup(&t.path().join("no-source"), &nowhere, &[], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(!nowhere.exists(), "a store was begun for a missing source");
    // A pre_command may be what makes or mounts it: not refused before it runs.
    let made = t.path().join("made-by-hook");
    let hook = format!("mkdir -p {}/sub", src.display());
    let (code, rep, err) = backup(
        &src,
        &made,
        &[
            "--prefix",
            "sub",
            "--pre-command",
            &format!("sh -c '{hook}'"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}\n{rep}");
    // Nor a missing prefix, nor a source that is a symlink to nothing (an unmounted
    // file system's mount point reached through a link).
    let dangling = t.path().join("dangling");
    std::os::unix::fs::symlink(t.path().join("unmounted"), &dangling).unwrap();
    for (source, extra) in [(&src, &["--prefix", "nope"][..]), (&dangling, &[][..])] {
        let (code, _, err) = backup(source, &nowhere, extra, &[]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("does not exist"), "{err}");
        assert!(
            !nowhere.exists(),
            "a store was begun for {source:?} {extra:?}"
        );
    }
}

/// A store taken over from rsnapshot (ten `daily.N`, no records): the first run without
/// `--retain` keeps as many as the label has, as rsnapshot's `retain daily 10` did. It
/// kept the default 7 and expired three of them at once.
#[test]
fn a_run_without_retain_on_a_taken_over_ring_keeps_as_many_as_it_has() {
    let (_t, src, dest) = setup();
    for i in 0..10 {
        let status = Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(dest.join(format!("daily.{i}")))
            .status()
            .unwrap();
        assert!(status.success());
    }
    // Another label's recorded snapshot does not hide what this label holds.
    let (code, _, err) = backup(&src, &dest, &["--label", "hourly"], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["retain"], 10, "{rep}");
    assert_eq!(rep["expired"], serde_json::json!(["daily.9"]), "{rep}");
    assert_eq!(
        snapshot_names(&dest)
            .iter()
            .filter(|n| n.starts_with("daily."))
            .count(),
        10
    );
    // A retain given that expires taken-over snapshots is obeyed, with a warning.
    let (code, rep, err) = backup(&src, &dest, &["--retain", "3"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["expired"].as_array().unwrap().len(), 8, "{rep}");
    assert!(
        rep["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("retain 3 is lower than what the daily snapshots had (10 in the label")),
        "{rep}"
    );
}

/// `snapring` run in `dir` with `args`: (exit code, stdout + stderr).
fn in_dir(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin())
        .current_dir(dir)
        .env("SNAPRING_CATALOG", "off")
        .args(args)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), said)
}

/// A path flag starting with `~` (quoted, or after `=`: no shell expands it there) is
/// refused, exit 64, with the path in full as the fix. Before, `restore --to '~/x'`
/// made a directory named `~` in the working directory and said `complete … into ~/x`.
#[test]
fn a_path_flag_starting_with_a_tilde_is_refused_not_made_literally() {
    let (t, src, dest) = setup();
    let (code, _, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    for args in [
        vec![
            "restore",
            "--dest",
            dest.to_str().unwrap(),
            "daily.0",
            "--to",
            "~/restored",
        ],
        vec![
            "restore",
            "--dest",
            dest.to_str().unwrap(),
            "daily.0",
            "--to=~/restored",
        ],
        vec![
            "backup",
            "--source",
            src.to_str().unwrap(),
            "--dest",
            "~/backup",
        ],
        vec![
            "verify",
            "--dest",
            dest.to_str().unwrap(),
            "daily.0",
            "--against",
            "~",
        ],
    ] {
        let (code, said) = in_dir(t.path(), &args);
        assert_eq!(code, Some(64), "{args:?}: {said}");
        assert!(
            said.contains("starts with `~`") && said.contains("give the path in full"),
            "{args:?}: {said}"
        );
        assert!(!t.path().join("~").exists(), "{args:?} made ./~");
    }
    // `~user` is that user's home, not $HOME (Debian's `backup` user: /var/backups).
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if let Some(home) = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[0] == "backup")
        .map(|f| f[5].to_string())
    {
        let (code, said) = in_dir(
            t.path(),
            &[
                "backup",
                "--source",
                src.to_str().unwrap(),
                "--dest",
                "~backup/store",
            ],
        );
        assert_eq!(code, Some(64), "{said}");
        assert!(said.contains(&format!("e.g. {home}/store")), "{said}");
    }
}

/// A store inside the source given by flags is a usage error (exit 64) that says what
/// to do; it was exit 1 and called a config problem with no config file.
#[test]
fn a_store_inside_the_source_given_by_flags_is_a_usage_error() {
    let (_t, src, _dest) = setup();
    let inside = src.join("backup");
    let (code, rep, err) = backup(&src, &inside, &[], &[]);
    assert_eq!(code, 64, "{rep}\n{err}");
    assert!(
        err.contains("overlap") && err.contains("put the store outside the source"),
        "{err}"
    );
    assert!(!err.contains("config:"), "{err}");
    assert!(!inside.exists(), "the store was begun inside the source");
}

/// A job name the config lacks is a usage error (exit 64) with the nearest name; it was
/// exit 1, as a broken file.
#[test]
fn an_unknown_job_name_is_a_usage_error_with_a_suggestion() {
    let (t, src, dest) = setup();
    let cfg = t.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.efs-home]\nsource = {:?}\ndest = {:?}\n",
            src.to_str().unwrap(),
            dest.to_str().unwrap()
        ),
    )
    .unwrap();
    let (code, said) = in_dir(
        t.path(),
        &["run", "efs-hme", "--config", cfg.to_str().unwrap()],
    );
    assert_eq!(code, Some(64), "{said}");
    assert!(
        said.contains("no job named \"efs-hme\" (did you mean \"efs-home\"?)"),
        "{said}"
    );
    assert!(
        std::fs::read_dir(&dest).unwrap().next().is_none(),
        "something ran"
    );
}

/// A relative `--to` and `--dest` are named absolute in the restore's report (and so in
/// the catalog and `show`): as typed they said nothing once the directory was left.
#[test]
fn a_restore_names_relative_paths_absolute() {
    let (t, src, dest) = setup();
    let (code, _, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    let out = Command::new(bin())
        .current_dir(t.path())
        .env("SNAPRING_CATALOG", "off")
        .args([
            "restore", "--json", "--dest", "backup", "daily.0", "--to", "rel-out",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = |p: &str| serde_json::Value::from(t.path().join(p).to_str().unwrap());
    assert_eq!(
        (&r["to"], &r["store"]),
        (&want("rel-out"), &want("backup")),
        "{r}"
    );
    assert_same_tree(
        &describe(&src),
        &describe(&t.path().join("rel-out")),
        "restored",
    );
}

/// A walk whose directories could not be read (mode 000, for a user without root's
/// capabilities) keeps their previous snapshot's entries (session 39: as an unreadable
/// file keeps its previous version), so it keeps files, and nothing is lost even with
/// `--retain 1`: the run is `partial`, each directory named with what was kept. (Before,
/// the walk kept no file and the no-file guard refused the run, its message naming the
/// unreadable directories; that message remains for where nothing can be kept.)
#[test]
fn a_walk_whose_directories_could_not_be_read_keeps_their_previous_entries() {
    let (_t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    let before = describe(&dest.join("daily.0"));
    let dirs: Vec<PathBuf> = (0..4).map(|i| src.join(format!("d{i}"))).collect();
    for d in &dirs {
        chmod(d, 0o000);
    }
    let (code, rep, err) = backup_without_dac(&src, &dest, &["--retain", "1"]);
    for d in &dirs {
        chmod(d, 0o755);
    }
    assert_eq!(code, Some(2), "{rep}\n{err}");
    assert_eq!(rep["status"], "partial", "{rep}");
    let problems = rep["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 4, "{rep}");
    assert!(
        problems.iter().all(|p| p["kind"] == "unreadable"
            && p["error"]
                .as_str()
                .unwrap()
                .contains("entries of the previous snapshot")),
        "{rep}"
    );
    // The complete snapshot is kept past retain 1 while the newest run is partial
    // (invariant 3: history goes only once a newer complete snapshot exists), as it was.
    assert_eq!(snapshot_names(&dest), ["daily.0", "daily.1"]);
    let mut kept = describe(&dest.join("daily.1"));
    let mut after = describe(&dest.join("daily.0"));
    let mut before = before;
    for m in [&mut before, &mut kept] {
        for v in m.values_mut() {
            v.link_group = None;
        }
    }
    assert_eq!(kept, before, "the complete snapshot kept as it was");
    // The files as they were; the directories take this run's mode (000) and times.
    for m in [&mut before, &mut after] {
        for v in m.values_mut() {
            if v.kind == "dir" {
                (v.mode, v.mtime) = (0, 0);
            }
            v.link_group = None;
        }
    }
    assert_eq!(after, before, "every file kept as it was");
    assert!(
        dest.join("daily.0/d1/f1").is_file(),
        "kept from the previous snapshot"
    );
}

/// `--retain N` keeps the N newest snapshots, whatever their slot numbers: a snapshot
/// deleted by hand (`rm -rf daily.1`) and one renamed past N (`daily.2` to `daily.9`)
/// expire nothing while fewer than N exist, and the kept ones close the gaps (the
/// layout stays `daily.0 …`). Rotation expired by slot number: with `--retain 5` and
/// `daily.0`, `daily.3`, `daily.9` the next run "expired daily.9" with four snapshots
/// in the store.
#[test]
fn retain_keeps_the_newest_snapshots_whatever_their_slots() {
    let (_t, src, dest) = setup();
    let run = |v: &str| {
        write(&src.join("v"), v.as_bytes());
        let (code, rep, err) = backup(&src, &dest, &["--retain", "5"], &[]);
        assert_eq!(code, 0, "{v}: {err}{rep}");
        rep
    };
    for v in ["r1", "r2", "r3", "r4"] {
        run(v);
    }
    // daily.0 r4, daily.1 r3, daily.2 r2, daily.3 r1.
    std::fs::remove_dir_all(dest.join("daily.1")).unwrap();
    std::fs::rename(dest.join("daily.2"), dest.join("daily.9")).unwrap();
    let rep = run("r5");
    assert_eq!(rep["expired"], serde_json::json!([]), "{rep}");
    let held = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .map(|n| std::fs::read_to_string(dest.join(n).join("v")).unwrap())
            .collect()
    };
    assert_eq!(
        snapshot_names(&dest),
        ["daily.0", "daily.1", "daily.2", "daily.3"]
    );
    assert_eq!(
        held(&["daily.0", "daily.1", "daily.2", "daily.3"]),
        ["r5", "r4", "r1", "r2"]
    );
    // The fifth snapshot: nothing expires yet; the sixth expires the oldest only.
    let rep = run("r6");
    assert_eq!(rep["expired"], serde_json::json!([]), "{rep}");
    assert_eq!(snapshot_names(&dest).len(), 5);
    let rep = run("r7");
    assert_eq!(rep["expired"], serde_json::json!(["daily.4"]), "{rep}");
    assert_eq!(
        held(&["daily.0", "daily.1", "daily.2", "daily.3", "daily.4"]),
        ["r7", "r6", "r5", "r4", "r1"]
    );
    // Every record followed its snapshot through the renames: each verifies against
    // its own manifest.
    let out = snapring(
        &[
            "verify".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            "--all".as_ref(),
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bad values say so before anything is made: `--dest s3://` (no bucket) is a usage
/// error (exit 64; it was 1, as a failed run), and a `--source` that is a regular file
/// is refused naming what to give instead, before a store is begun (the store was
/// made, then the run failed with no remedy).
#[test]
fn a_bucketless_dest_and_a_file_as_source_are_refused_before_anything_is_made() {
    let (t, src, _) = setup();
    for args in [
        &[
            "backup",
            "--source",
            src.to_str().unwrap(),
            "--dest",
            "s3://",
        ][..],
        &["init", "--dest", "s3://"],
        &["list", "--dest", "s3:///prefix"],
    ] {
        let a: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        let out = snapring(&a, &[("SNAPRING_PASSWORD", "pw")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(
            err.contains("expected s3://BUCKET/PREFIX"),
            "{args:?}: {err}"
        );
    }
    let file = t.path().join("afile");
    write(&file, b"one file");
    let store = t.path().join("new-store");
    let (code, rep, err) = backup(&file, &store, &[], &[]);
    let msg = format!("{err}{}", rep["message"].as_str().unwrap_or(""));
    assert_eq!(code, 1, "{msg}");
    assert!(
        msg.contains("is not a directory") && msg.contains("give --source the directory"),
        "{msg}"
    );
    assert!(!store.exists(), "a store was begun for a file as source");
}
