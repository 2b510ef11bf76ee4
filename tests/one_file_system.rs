//! `--one-file-system` (`-x`, the job key `one_file_system`), as `rsync -x`, rsnapshot's
//! `one_fs` and restic's `--one-file-system`: a directory below the source on another
//! file system (here a real tmpfs mounted there) is kept in the snapshot as an empty
//! directory with the mode `stat` shows for it (the mounted root's), its contents are
//! left out, the entries beside it are backed up, and the run's report counts and names
//! it while the run stays `complete`. Without the option the mount's contents are backed
//! up, as before. Both targets: the hard-link store and a restic repository (read back
//! with `snapring restore`). A shard worker refuses the option rather than ignore it.
//! Mounting needs root: where `mount` fails the tests print SKIPPED and return.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::restic::*;
use common::*;

/// A tmpfs mounted for a test; unmounted when dropped (also when the test fails).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a tmpfs whose root has `mode` at `at` (made if missing); `None`, with a
/// SKIPPED line, where mounting is not possible (not root, no `mount`).
fn tmpfs(at: &Path, mode: &str) -> Option<Mounted> {
    std::fs::create_dir_all(at).unwrap();
    let out = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("mode={mode},size=4m"),
            "tmpfs",
        ])
        .arg(at)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(Mounted(at.to_path_buf())),
        Ok(o) => {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs at {}: {}",
                at.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("SKIPPED: cannot run mount: {e}");
            None
        }
    }
}

/// A source with two mount points: `dir/mnt` (its root 0710) and `zmnt` (0750), each
/// holding files, beside ordinary files and directories.
fn source(t: &Path) -> Option<(PathBuf, [Mounted; 2])> {
    let src = t.join("src");
    write(&src.join("top.txt"), b"top");
    write(&src.join("dir/beside.txt"), b"beside the mount");
    write(&src.join("dir/plain/deep.txt"), b"deep");
    // The directories mounted over, with another mode than the mounted roots'.
    std::fs::create_dir_all(src.join("dir/mnt")).unwrap();
    std::fs::create_dir_all(src.join("zmnt")).unwrap();
    let a = tmpfs(&src.join("dir/mnt"), "0710")?;
    let b = tmpfs(&src.join("zmnt"), "0750")?;
    write(&src.join("dir/mnt/inside.txt"), b"on the other file system");
    write(&src.join("dir/mnt/sub/deeper.txt"), b"deeper on it");
    write(&src.join("zmnt/z.txt"), b"z");
    Some((src, [a, b]))
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

/// What a snapshot (or a restore) of [`source`] holds with the option: the mount
/// points empty, with the mounted roots' modes; everything beside them.
fn assert_stayed_on_one_fs(root: &Path, what: &str) {
    for (mp, m) in [("dir/mnt", 0o710), ("zmnt", 0o750)] {
        let p = root.join(mp);
        assert!(p.is_dir(), "{what}: {mp} is kept as a directory");
        assert_eq!(names(&p), Vec::<String>::new(), "{what}: {mp} is empty");
        assert_eq!(mode(&p), m, "{what}: {mp} has the mounted root's mode");
    }
    assert_eq!(std::fs::read(root.join("top.txt")).unwrap(), b"top");
    assert_eq!(
        std::fs::read(root.join("dir/beside.txt")).unwrap(),
        b"beside the mount"
    );
    assert_eq!(
        std::fs::read(root.join("dir/plain/deep.txt")).unwrap(),
        b"deep"
    );
}

/// What a snapshot of [`source`] holds without the option: the mounts' contents too.
fn assert_crossed(root: &Path, what: &str) {
    assert_eq!(
        std::fs::read(root.join("dir/mnt/inside.txt")).unwrap(),
        b"on the other file system",
        "{what}"
    );
    assert_eq!(
        std::fs::read(root.join("dir/mnt/sub/deeper.txt")).unwrap(),
        b"deeper on it",
        "{what}"
    );
    assert_eq!(
        std::fs::read(root.join("zmnt/z.txt")).unwrap(),
        b"z",
        "{what}"
    );
}

fn assert_report_names_the_mount_points(rep: &serde_json::Value) {
    assert_eq!(rep["status"], "complete", "a note, not a problem: {rep}");
    assert_eq!(rep["errors"], 0, "{rep}");
    assert_eq!(rep["one_file_system"], true, "{rep}");
    assert_eq!(rep["mount_points_skipped"], 2, "{rep}");
    assert_eq!(
        rep["mount_points"],
        serde_json::json!(["dir/mnt", "zmnt"]),
        "{rep}"
    );
}

#[test]
fn a_mount_point_is_kept_empty_in_the_store_and_named_in_the_report() {
    let t = tempfile::tempdir().unwrap();
    let Some((src, _mounts)) = source(t.path()) else {
        return;
    };
    let dest = t.path().join("backup");
    std::fs::create_dir(&dest).unwrap();

    // Without the option (the default): the mounts' contents are backed up.
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_crossed(&dest.join("daily.0"), "without --one-file-system");
    assert!(rep.get("mount_points_skipped").is_none(), "{rep}");
    assert!(rep.get("one_file_system").is_none(), "{rep}");

    // With it: the mount points are empty directories, the rest is there, linked from
    // the previous snapshot.
    let (code, rep, err) = backup(&src, &dest, &["--one-file-system"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_report_names_the_mount_points(&rep);
    let snap = dest.join("daily.0");
    assert_stayed_on_one_fs(&snap, "store snapshot with --one-file-system");
    assert!(!snap.join("dir/mnt/inside.txt").exists());
    assert!(!snap.join("zmnt/z.txt").exists());
    // The older snapshot still has what it had.
    assert_crossed(&dest.join("daily.1"), "the older snapshot");
    assert_eq!(rep["files_linked"], 3, "top, beside, deep unchanged: {rep}");

    // The verify of the new snapshot agrees with its manifest (empty blocks included).
    let out = snapring(
        &[
            "verify".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            "daily.0".as_ref(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // `-x`, and the human summary's note.
    let out = snapring(
        &[
            "backup".as_ref(),
            "-x".as_ref(),
            "--source".as_ref(),
            src.as_os_str(),
            "--dest".as_ref(),
            dest.as_os_str(),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("one file system: 2 mount points kept as empty directories: dir/mnt, zmnt"),
        "{stdout}"
    );
    assert_stayed_on_one_fs(&dest.join("daily.0"), "store snapshot with -x");
}

#[test]
fn a_mount_point_is_an_empty_tree_in_a_restic_repository() {
    let t = tempfile::tempdir().unwrap();
    let Some((src, _mounts)) = source(t.path()) else {
        return;
    };
    let repo = t.path().join("repo");
    let url = file_url(&repo);
    let (code, out, err) = sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{out}\n{err}");
    let restore = |to: &Path| {
        let (code, out, err) = sr(&[
            "restore",
            "--dest",
            &url,
            "latest",
            "--to",
            to.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "restore: {out}\n{err}");
    };
    let s = src.to_str().unwrap();

    let (code, out, err) = sr(&["backup", "--source", s, "--dest", &url, "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let full = t.path().join("full");
    restore(&full);
    assert_crossed(&full, "restic snapshot without --one-file-system");

    let (code, out, err) = sr(&[
        "backup",
        "--source",
        s,
        "--dest",
        &url,
        "--one-file-system",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_report_names_the_mount_points(&rep);
    let one = t.path().join("one");
    restore(&one);
    assert_stayed_on_one_fs(&one, "restic snapshot with --one-file-system");
    // restic itself reads it: the mount points are empty trees.
    if let Some(restic) = restic_binary("restic check of a --one-file-system snapshot") {
        run_restic(&restic, &repo, &["check", "--read-data"]);
        let target = t.path().join("by-restic");
        let to = target.to_str().unwrap();
        run_restic(&restic, &repo, &["restore", "latest", "--target", to]);
        assert_stayed_on_one_fs(
            &target.join(src.strip_prefix("/").unwrap()),
            "restic restore of a --one-file-system snapshot",
        );
    }

    // The summary names them too.
    let (code, out, err) = sr(&["backup", "--source", s, "--dest", &url, "-x"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("one file system: 2 mount points kept as empty directories: dir/mnt, zmnt"),
        "{out}"
    );
}

#[test]
fn the_job_key_one_file_system_is_checked_and_used() {
    let t = tempfile::tempdir().unwrap();
    let Some((src, _mounts)) = source(t.path()) else {
        return;
    };
    let dest = t.path().join("backup");
    std::fs::create_dir(&dest).unwrap();
    let cfg = t.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.efs]\nsource = {:?}\ndest = {:?}\none_file_system = true\n",
            src.to_str().unwrap(),
            dest.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = snapring(&["config".as_ref(), "check".as_ref(), cfg.as_os_str()], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.ends_with(": ok\n"),
        "{stdout}"
    );
    let out = snapring(
        &[
            "backup".as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
            "--json".as_ref(),
        ],
        &[],
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{rep}");
    assert_report_names_the_mount_points(&rep);
    assert_stayed_on_one_fs(&dest.join("daily.0"), "a job with one_file_system");

    // rsnapshot's name for it is pointed at snapring's.
    std::fs::write(
        &cfg,
        format!(
            "[job.efs]\nsource = {:?}\ndest = {:?}\none_fs = 1\n",
            src.to_str().unwrap(),
            dest.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = snapring(&["config".as_ref(), "check".as_ref(), cfg.as_os_str()], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && stdout.contains("one_file_system"),
        "{stdout}"
    );
}

#[test]
fn a_shard_worker_refuses_one_file_system_rather_than_ignore_it() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    write(&src.join("f"), b"f");
    std::fs::create_dir(&dest).unwrap();
    let repo = file_url(&t.path().join("repo"));
    for d in [dest.to_str().unwrap(), repo.as_str()] {
        let (code, out, err) = sr(&[
            "backup",
            "--source",
            src.to_str().unwrap(),
            "--dest",
            d,
            "--shard",
            "0/1",
            "--run-id",
            "r1",
            "--one-file-system",
        ]);
        assert_eq!(code, 64, "{d}: {out}\n{err}");
        assert!(
            err.contains("one_file_system") && err.contains("not supported by shard workers"),
            "{d}: {err}"
        );
    }
    assert_eq!(snapshot_names(&dest), Vec::<String>::new());
    assert!(!t.path().join("repo").exists());
}
