//! A source that changes under the backup in hostile ways (run as root): a regular
//! file replaced by a fifo or a character device between the walk's `lstat` and the
//! open of its copy or of its content check. Nothing but a regular file's bytes is
//! read as a file, the run does not wait for ever, ends `partial` naming the entry, and
//! the snapshot holds no entry the manifest describes as something else.

mod common;
use common::*;

use std::path::Path;
use std::time::{Duration, Instant};

/// Replaces `p` with a fifo (`dev` `None`) or a character device.
fn replace(p: &Path, dev: Option<(u32, u32)>) {
    std::fs::remove_file(p).unwrap();
    let (ft, rdev) = match dev {
        None => (rustix::fs::FileType::Fifo, 0),
        Some((maj, min)) => (
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::makedev(maj, min),
        ),
    };
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        ft,
        rustix::fs::Mode::from_raw_mode(0o644),
        rdev,
    )
    .unwrap();
}

/// Waits up to `limit` for a paused run resumed by removing its pause file; kills it
/// past that. Returns (exit code, report), or `None` if it had to be killed.
fn resume_within(run: Paused, limit: Duration) -> Option<(i32, serde_json::Value)> {
    std::fs::remove_file(&run.pause).unwrap();
    let mut child = run.child;
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return Some((
                out.status.code().unwrap_or(-1),
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
            ));
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The problems of a report as `path|kind|action|error` lines.
fn problems(rep: &serde_json::Value) -> Vec<String> {
    rep["problems"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    format!(
                        "{}|{}|{}|{}",
                        p["path"].as_str().unwrap_or(""),
                        p["kind"].as_str().unwrap_or(""),
                        p["action"].as_str().unwrap_or(""),
                        p["error"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A file replaced by a fifo or by `/dev/zero`'s device between its `lstat` and the
/// open of its copy (the first copy of a run): the name is reported as replaced, the
/// run ends `partial`, and the snapshot has no file described as a device. Before the
/// check a device was read as the file's content, then recorded as a character device
/// over a regular file in the tree (`complete`, exit 0); a fifo was an unclear "Illegal
/// seek" with the old file kept.
#[test]
fn a_file_replaced_by_a_fifo_or_a_device_before_its_copy_is_not_read_as_it() {
    for (what, dev) in [("fifo", None), ("character device", Some((1, 5)))] {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("src"), t.path().join("backup"));
        write(&src.join("f"), &vec![7u8; 100_000]);
        // The run's only copy: `f`, paused just before its open.
        let run = spawn_paused(&src, &dest, &[], "walk.open_source", 1);
        replace(&src.join("f"), dev);
        let (code, rep) = resume_within(run, Duration::from_secs(120))
            .unwrap_or_else(|| panic!("{what}: the backup did not end within 120 s"));
        let ps = problems(&rep);
        assert_eq!(code, 2, "{what}: {rep}");
        assert!(
            ps.iter().any(|p| p.starts_with("f|vanished|open|")
                && p.contains(&format!("replaced by a {what}"))),
            "{what}: {ps:?}"
        );
        // Nothing of the device entered the snapshot as a file.
        match std::fs::symlink_metadata(dest.join("daily.0/f")) {
            Err(_) => {}
            Ok(m) => assert!(
                !m.file_type().is_file(),
                "{what}: a regular file f in the snapshot: {m:?}"
            ),
        }
        assert_verify_clean(&dest, &[]);
    }
}

/// A file in the racy window of the previous run (its content is read to compare it
/// with the previous snapshot's hash) replaced by `/dev/zero`'s device before that
/// read: the run ends `partial` naming it, in seconds. Before the check the hash read
/// `/dev/zero` for ever and the run never ended.
#[test]
fn a_racy_file_replaced_by_a_device_before_its_content_check_does_not_hang_the_run() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    write(&src.join("f"), b"content");
    // Written just before the first run: within 2 s of its start, so the second run
    // checks `f`'s content against the first run's hash.
    let (code, rep, _) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{rep}");
    let before = describe(&dest.join("daily.0"));
    let run = spawn_paused(&src, &dest, &[], "walk.verify_content", 1);
    replace(&src.join("f"), Some((1, 5)));
    let (code, rep) = resume_within(run, Duration::from_secs(120))
        .expect("the backup did not end within 120 s (reading /dev/zero as f)");
    let ps = problems(&rep);
    assert_eq!(code, 2, "{rep}");
    assert!(
        ps.iter()
            .any(|p| p.starts_with("f|vanished|read|")
                && p.contains("replaced by a character device")),
        "{ps:?}"
    );
    assert_eq!(snapshot_names(&dest), ["daily.0", "daily.1"]);
    assert_same_tree(
        &before,
        &describe(&dest.join("daily.1")),
        "previous snapshot",
    );
    assert_verify_clean(&dest, &[]);
}

/// A directory listed as one of the user's (0755, uid 1000) and, before the walk opens
/// it, replaced by another user's private directory (0700, uid 2000) renamed into its
/// place from outside the source: the name is reported as replaced and the snapshot
/// holds the listed directory empty, nothing of the private one. Before the check the
/// private directory's files were backed up under the listed one's owner and mode
/// (readable by all in the snapshot; `complete`, exit 0). Also a directory replaced by
/// a symlink to `/`: reported as such, nothing under `/` followed.
#[test]
fn a_directory_replaced_after_its_listing_is_not_backed_up_as_the_listed_one() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for swap in ["private directory", "symlink"] {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("src"), t.path().join("backup"));
        write(&src.join("top"), b"top");
        write(&src.join("pub/readme"), b"public");
        chown(&src.join("pub"), 1000, 1000);
        chmod(&src.join("pub"), 0o755);
        let outside = t.path().join("outside");
        write(&outside.join("priv/secret"), b"secret");
        chmod(&outside.join("priv/secret"), 0o644);
        chown(&outside.join("priv"), 2000, 2000);
        chmod(&outside.join("priv"), 0o700);
        // The run's only subdirectory: `pub`, paused just before its open.
        let run = spawn_paused(&src, &dest, &[], "walk.open_dir", 1);
        std::fs::rename(src.join("pub"), t.path().join("pub-away")).unwrap();
        match swap {
            "symlink" => std::os::unix::fs::symlink("/", src.join("pub")).unwrap(),
            _ => std::fs::rename(outside.join("priv"), src.join("pub")).unwrap(),
        }
        let (code, rep) = resume_within(run, Duration::from_secs(120))
            .unwrap_or_else(|| panic!("{swap}: the backup did not end within 120 s"));
        let ps = problems(&rep);
        assert_eq!(code, 2, "{swap}: {rep}");
        let want = match swap {
            "symlink" => "replaced by a symlink",
            _ => "replaced by another directory",
        };
        assert!(
            ps.iter()
                .any(|p| p.starts_with("pub|vanished|open directory|") && p.contains(want)),
            "{swap}: {ps:?}"
        );
        let snap = dest.join("daily.0/pub");
        let m = std::fs::symlink_metadata(&snap).unwrap();
        assert!(m.is_dir(), "{swap}: {m:?}");
        assert_eq!(
            (m.uid(), m.permissions().mode() & 0o7777),
            (1000, 0o755),
            "{swap}: the listed directory's owner and mode"
        );
        let inside: Vec<_> = std::fs::read_dir(&snap)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            inside.is_empty(),
            "{swap}: {inside:?} under pub in the snapshot"
        );
        assert_eq!(std::fs::read(dest.join("daily.0/top")).unwrap(), b"top");
        assert_verify_clean(&dest, &[]);
    }
}

/// Files with times far ahead (year 2100) and before 1970 (with nanoseconds), written
/// well before the first run: the second run links them without reading a byte (the
/// content check is armed to kill the run). Before, a file whose mtime was ahead of
/// the previous walk counted as "changed during the previous backup" in every run, so
/// each run read it whole again.
#[test]
fn files_dated_far_ahead_or_before_1970_are_not_reread_every_run() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    write(&src.join("future"), b"from 2100");
    set_mtime(&src.join("future"), 4_102_444_800, 123_456_789);
    write(&src.join("past"), b"from 1960");
    set_mtime(&src.join("past"), -315_619_200, 987_654_321);
    // Their ctimes (now) more than the 2 s racy margin before the first run.
    std::thread::sleep(Duration::from_secs(3));
    let (code, rep, _) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{rep}");
    let (code, rep, err) = backup(
        &src,
        &dest,
        &[],
        &[("SNAPRING_FAILPOINTS", "walk.verify_content=kill")],
    );
    assert_eq!(
        code, 0,
        "the second run read a file's content again: {rep} {err}"
    );
    assert_eq!(rep["files_linked"], 2, "{rep}");
    assert_same_tree(&describe(&src), &describe(&dest.join("daily.0")), "times");
    assert_verify_clean(&dest, &[]);
}

/// Unmounts a test's file system when dropped (also when the test fails).
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A source on tmpfs (which keeps 64 KiB attribute values) with a file and a
/// directory holding a 64 KiB `user.*` value, backed up to a store on ext4 (one block
/// per value: it answers ENOSPC): the run is `partial` naming each attribute as too
/// large, everything else is in the snapshot, and the next run completes. Before, the
/// ENOSPC failed every run as "file system is full" on a store with room to spare: one
/// user's `setfattr` stopped every backup.
#[test]
fn an_xattr_value_too_large_for_the_store_is_the_entrys_problem_not_a_full_disk() {
    let t = tempfile::tempdir().unwrap();
    let probe = t.path().join("probe");
    std::fs::write(&probe, b"").unwrap();
    if rustix::fs::setxattr(
        &probe,
        "user.big",
        &[1u8; 65536],
        rustix::fs::XattrFlags::empty(),
    )
    .is_ok()
    {
        eprintln!("skipped: this store's file system keeps 64 KiB attribute values");
        return;
    }
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    std::fs::create_dir(&src).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&src)
        .status()
        .unwrap()
        .success();
    assert!(mounted, "mount tmpfs");
    let _m = Mounted(src.clone());
    write(&src.join("big"), b"data");
    write(&src.join("bigdir/inside"), b"inside");
    write(&src.join("plain"), b"plain");
    if rustix::fs::setxattr(
        src.join("big"),
        "user.big",
        &[7u8; 65536],
        rustix::fs::XattrFlags::empty(),
    )
    .is_err()
    {
        eprintln!("skipped: tmpfs here keeps no 64 KiB user.* values");
        return;
    }
    set_xattr(&src.join("bigdir"), "user.big", &[8u8; 65536]);
    set_xattr(&src.join("plain"), "user.small", b"small");
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 2, "{rep} {err}");
    let ps = problems(&rep);
    for p in ["big", "bigdir"] {
        assert!(
            ps.contains(&format!(
                "{p}|metadata|set extended attribute|user.big too large for the backup file system"
            )),
            "{ps:?}"
        );
    }
    assert_eq!(ps.len(), 2, "{ps:?}");
    let snap = dest.join("daily.0");
    assert_eq!(std::fs::read(snap.join("big")).unwrap(), b"data");
    assert_eq!(
        std::fs::read(snap.join("bigdir/inside")).unwrap(),
        b"inside"
    );
    assert_eq!(
        xattrs_of(&snap.join("plain")),
        [(b"user.small".to_vec(), b"small".to_vec())]
    );
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert!(matches!(code, 0 | 2), "the next run: {rep} {err}");
    assert_eq!(snapshot_names(&dest), ["daily.0", "daily.1"]);
}
