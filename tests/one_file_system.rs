//! `--one-file-system` (`-x`, the job key `one_file_system`), as `rsync -x`, rsnapshot's
//! `one_fs` and restic's `--one-file-system`: a directory below the source on another
//! file system (here a real tmpfs mounted there) is kept in the snapshot as an empty
//! directory with the mode `stat` shows for it (the mounted root's), its contents are
//! left out, the entries beside it are backed up, and the run's report counts and names
//! it while the run stays `complete`. Without the option the mount's contents are backed
//! up, as before. Both targets: the hard-link store and a restic repository (read back
//! with `snapring restore`); shard runs with it are tests/shard_one_fs.rs.
//! `diff`/`verify --against SRC` of such a snapshot stay on SRC's file system (the
//! snapshot's run record, or its repository tag, says so; `--one-file-system` forces
//! it): a healthy `-x` backup verifies clean, a mount point compared as a directory.
//! Mounting needs root: where `mount` fails the tests print SKIPPED and return.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::restic::*;
use common::*;

/// A tmpfs mounted for a test (unmounted when dropped).
type Mounted = Tmpfs;

/// Mounts a tmpfs whose root has `mode` at `at` (made if missing); `None`, with a
/// SKIPPED line, where mounting is not possible (not root, no `mount`).
fn tmpfs(at: &Path, mode: &str) -> Option<Mounted> {
    Tmpfs::mount(at, &format!("mode={mode},size=4m"))
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

/// Runs `snapring ARGS`; (exit code, stdout) with stderr appended on failure.
fn run(args: &[&str]) -> (i32, String) {
    let (code, out, err) = sr(args);
    (
        code,
        if code == 0 {
            out
        } else {
            format!("{out}{err}")
        },
    )
}

/// `ARGS --json` as JSON, and its exit code.
fn json(args: &[&str]) -> (i32, serde_json::Value) {
    let a: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    let (code, out, err) = sr(&a);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{a:?}: {e}: {out}{err}"));
    (code, v)
}

/// What `diff`/`verify --against` of a `-x` snapshot of [`source`] report in JSON.
fn assert_compared_on_one_fs(v: &serde_json::Value, what: &str) {
    assert_eq!(v["one_file_system"], true, "{what}: {v}");
    assert_eq!(v["mount_points_skipped"], 2, "{what}: {v}");
    assert_eq!(
        v["mount_points"],
        serde_json::json!(["dir/mnt", "zmnt"]),
        "{what}: {v}"
    );
}

const NOTE: &str =
    "one file system: 2 mount points compared as directories, their contents not: dir/mnt, zmnt";

/// Paths of a JSON report's differences.
fn paths(v: &serde_json::Value) -> Vec<String> {
    v["differences"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d["change"].as_str().unwrap(),
                d["path"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn verify_and_diff_against_the_source_stay_on_its_file_system_for_a_one_file_system_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let Some((src, _mounts)) = source(t.path()) else {
        return;
    };
    let dest = t.path().join("backup");
    std::fs::create_dir(&dest).unwrap();
    let (s, d) = (src.to_str().unwrap(), dest.to_str().unwrap());
    // daily.1 without the option, daily.0 with it.
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let (code, rep, err) = backup(&src, &dest, &["-x"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");

    // The -x snapshot against its source: clean, the mount points' contents not
    // compared (the run record says -x), and the output says so.
    let (code, out) = run(&["verify", "--dest", d, "daily.0", "--against", s]);
    assert_eq!(code, 0, "a healthy -x backup verifies clean: {out}");
    assert!(
        out.contains(&format!("daily.0: clean against {s}")),
        "{out}"
    );
    assert!(out.ends_with(&format!("daily.0: {NOTE}\n")), "{out}");
    let (code, v) = json(&["verify", "--dest", d, "daily.0", "--against", s]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v[0]["clean"], true, "{v}");
    assert_eq!(v[0]["unexpected"], 0, "{v}");
    assert_eq!(v[0]["totals"]["files_hashed"], 3, "top, beside, deep: {v}");
    assert_compared_on_one_fs(&v[0], "verify --against of a -x snapshot");
    let (code, out) = run(&["diff", "--dest", d, "daily.0", "--against", s]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!("daily.0 -> {s}: 0 added, 0 removed, 0 changed, 0 metadata only\n  {NOTE}\n")
    );
    let (code, v) = json(&["diff", "--dest", d, "daily.0", "--against", s]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["added"], 0, "{v}");
    assert_compared_on_one_fs(&v, "diff --against of a -x snapshot");

    // The snapshot made without it is compared whole, unless -x is asked for.
    let (code, v) = json(&["verify", "--dest", d, "daily.1", "--against", s]);
    assert_eq!((code, &v[0]["clean"]), (0, &serde_json::json!(true)), "{v}");
    assert_eq!(v[0]["one_file_system"], false, "{v}");
    assert_eq!(v[0]["totals"]["files_hashed"], 6, "{v}");
    let (code, v) = json(&["verify", "--dest", d, "daily.1", "--against", s, "-x"]);
    assert_eq!((code, &v[0]["clean"]), (0, &serde_json::json!(true)), "{v}");
    assert_compared_on_one_fs(&v[0], "verify --against -x of a whole snapshot");
    assert_eq!(v[0]["totals"]["files_hashed"], 3, "{v}");
    let (code, v) = json(&[
        "diff",
        "--dest",
        d,
        "daily.1",
        "--against",
        s,
        "--one-file-system",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_compared_on_one_fs(&v, "diff --against --one-file-system of a whole snapshot");

    // A mount point is compared as a directory: a file added in it moves its mtime,
    // which verify reports; the file itself is not compared. One added beside it is.
    write(
        &src.join("dir/mnt/new.txt"),
        b"new on the other file system",
    );
    write(&src.join("dir/new-beside.txt"), b"new beside");
    let (code, v) = json(&["verify", "--dest", d, "daily.0", "--against", s]);
    assert_eq!(code, 2, "{v}");
    assert_eq!(
        paths(&v[0]),
        [
            "metadata dir",
            "metadata dir/mnt",
            "added dir/new-beside.txt"
        ],
        "{v}"
    );
    let (code, v) = json(&["diff", "--dest", d, "daily.0", "--against", s]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(paths(&v), ["added dir/new-beside.txt"], "{v}");

    // -x needs --against (two snapshots compare their records, on no file system).
    let (code, _, err) = sr(&["diff", "--dest", d, "daily.1", "daily.0", "-x"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--against"), "{err}");
}

#[test]
fn verify_and_diff_against_the_source_stay_on_its_file_system_for_a_repository_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let Some((src, _mounts)) = source(t.path()) else {
        return;
    };
    let url = file_url(&t.path().join("repo"));
    let s = src.to_str().unwrap();
    let (code, out) = run(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["backup", "--source", s, "--dest", &url, "-x"]);
    assert_eq!(code, 0, "{out}");
    // The snapshot says it was made with -x (a tag restic shows too).
    let (_, v) = json(&["list", "--dest", &url]);
    let tags = v.to_string();
    assert!(tags.contains("\"one_file_system\""), "{v}");

    let (code, out) = run(&["verify", "--dest", &url, "latest", "--against", s]);
    assert_eq!(code, 0, "a healthy -x backup verifies clean: {out}");
    assert!(out.contains(&format!(": clean against {s}")), "{out}");
    assert!(out.contains(NOTE), "{out}");
    let (code, v) = json(&["verify", "--dest", &url, "latest", "--against", s]);
    assert_eq!(
        (code, &v[0]["unexpected"]),
        (0, &serde_json::json!(0)),
        "{v}"
    );
    assert_compared_on_one_fs(&v[0], "repository verify --against of a -x snapshot");
    let (code, out) = run(&["diff", "--dest", &url, "latest", "--against", s]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            " -> {s}: 0 added, 0 removed, 0 changed, 0 metadata only\n  {NOTE}\n"
        )),
        "{out}"
    );
    let (code, v) = json(&["diff", "--dest", &url, "latest", "--against", s]);
    assert_eq!((code, &v["added"]), (0, &serde_json::json!(0)), "{v}");
    assert_compared_on_one_fs(&v, "repository diff --against of a -x snapshot");

    // Without -x the snapshot is whole and compared whole, unless -x is asked for.
    let (code, out) = run(&["backup", "--source", s, "--dest", &url]);
    assert_eq!(code, 0, "{out}");
    let (code, v) = json(&["verify", "--dest", &url, "latest", "--against", s]);
    assert_eq!((code, &v[0]["clean"]), (0, &serde_json::json!(true)), "{v}");
    assert_eq!(v[0]["one_file_system"], false, "{v}");
    let (code, v) = json(&["verify", "--dest", &url, "latest", "--against", s, "-x"]);
    assert_eq!((code, &v[0]["clean"]), (0, &serde_json::json!(true)), "{v}");
    assert_compared_on_one_fs(&v[0], "repository verify --against -x of a whole snapshot");

    // A store's -x snapshot copied into the repository keeps the tag.
    let dest = t.path().join("store");
    std::fs::create_dir(&dest).unwrap();
    let (code, rep, err) = backup(&src, &dest, &["-x"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let (code, out) = run(&[
        "copy",
        "--dest",
        dest.to_str().unwrap(),
        "daily.0",
        "--to",
        &url,
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, v) = json(&["verify", "--dest", &url, "latest", "--against", s]);
    assert_eq!((code, &v[0]["clean"]), (0, &serde_json::json!(true)), "{v}");
    assert_compared_on_one_fs(&v[0], "verify --against of a copied -x snapshot");
}

/// `snapring restore ARGS --json`: exit code and report.
fn restore_json(args: &[&OsStr]) -> (Option<i32>, serde_json::Value, String) {
    let mut a: Vec<&OsStr> = vec!["restore".as_ref(), "--json".as_ref()];
    a.extend_from_slice(args);
    let out = snapring(&a, &[]);
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--mirror` deletes nothing on another file system mounted below `--to`. Restored
/// into the live source of a `-x` backup, whose snapshot holds the mount points as
/// empty directories, it deleted every file on the mounted file systems ("complete,
/// deleted 2"); an entry the snapshot does not have with a file system mounted below
/// it had that file system emptied before its `rmdir` failed, and the failure ended
/// the restore. Now the mounts' contents are kept as what the backup left out, and a
/// mount inside an entry to delete is a conflict that leaves it, the restore going on.
#[test]
fn a_mirror_restore_deletes_nothing_on_another_file_system_below_to() {
    let t = tempfile::tempdir().unwrap();
    let Some((src, _mounts)) = source(t.path()) else {
        return;
    };
    let dest = t.path().join("backup");
    std::fs::create_dir(&dest).unwrap();
    let (code, rep, err) = backup(&src, &dest, &["-x"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    write(&src.join("top.txt"), b"changed since");
    write(&src.join("dir/plain/new.txt"), b"not in the snapshot");
    let (code, rep, err) = restore_json(&[
        "--dest".as_ref(),
        dest.as_os_str(),
        "daily.0".as_ref(),
        "--to".as_ref(),
        src.as_os_str(),
        "--mirror".as_ref(),
    ]);
    assert_eq!(
        (code, &rep["status"]),
        (Some(0), &"complete".into()),
        "{err}\n{rep}"
    );
    assert_eq!(std::fs::read(src.join("top.txt")).unwrap(), b"top");
    assert!(!src.join("dir/plain/new.txt").exists(), "{rep}");
    assert_eq!(rep["deleted"], 1, "{rep}");
    assert_eq!(rep["kept_excluded"], 3, "the mounts' entries: {rep}");
    assert_crossed(
        &src,
        "the live source after a --mirror restore of its -x snapshot",
    );

    // A plain (not -x) snapshot, into a target where an entry it does not have holds a
    // mount: the mount and what is on it stay, the rest is restored.
    let to = t.path().join("to");
    let Some(_m) = tmpfs(&to.join("extra/mnt"), "0755") else {
        return;
    };
    write(&to.join("extra/mnt/precious"), b"on another file system");
    write(&to.join("extra/beside"), b"deleted: not in the snapshot");
    let (code, rep, err) = restore_json(&[
        "--dest".as_ref(),
        dest.as_os_str(),
        "daily.0".as_ref(),
        "--to".as_ref(),
        to.as_os_str(),
        "--mirror".as_ref(),
    ]);
    assert_eq!(
        (code, &rep["status"]),
        (Some(2), &"partial".into()),
        "{err}\n{rep}"
    );
    assert_eq!(
        std::fs::read(to.join("extra/mnt/precious")).unwrap(),
        b"on another file system"
    );
    let conflicts = rep["conflicts"].to_string();
    assert!(
        conflicts.contains("extra/mnt is where another file system is mounted"),
        "{rep}"
    );
    assert_eq!(std::fs::read(to.join("top.txt")).unwrap(), b"top", "{rep}");
    assert_eq!(
        std::fs::read(to.join("dir/plain/deep.txt")).unwrap(),
        b"deep",
        "{rep}"
    );
}

/// A bind mount below `--to` of a directory in the store: a restore into `--to` wrote
/// into that snapshot (`verify` then said DAMAGED), and `--mirror` deleted from it. No
/// comparison of paths sees it; refused (exit 64) before anything is written.
#[test]
fn a_restore_into_a_tree_holding_a_bind_mount_of_the_store_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("sub/one"), b"one");
    let dest = t.path().join("backup");
    std::fs::create_dir(&dest).unwrap();
    let (code, _, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    write(&src.join("sub/two"), b"two");
    let (code, _, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    for (mode, bound) in [(None, "daily.1/sub"), (Some("--mirror"), "daily.1")] {
        let to = t.path().join(format!("to-{}", mode.unwrap_or("plain")));
        let at = to.join("sub");
        std::fs::create_dir_all(&at).unwrap();
        let out = Command::new("mount")
            .arg("--bind")
            .arg(dest.join(bound))
            .arg(&at)
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot bind mount: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let _m = Tmpfs(at.clone());
        let mut args: Vec<&OsStr> = vec![
            "--dest".as_ref(),
            dest.as_os_str(),
            "daily.0".as_ref(),
            "--to".as_ref(),
            to.as_os_str(),
        ];
        args.extend(mode.map(OsStr::new));
        let (code, _, err) = restore_json(&args);
        assert_eq!(code, Some(64), "{mode:?}: {err}");
        assert!(
            err.contains("is a mount of the store's file system that shows the store's"),
            "{err}"
        );
        drop(_m);
        assert_verify_clean(&dest, &["--all"]);
    }
    assert!(!dest.join("daily.1/sub/two").exists());
}
