//! Odd store states a user can make (run as root): snapshots or entries in them made
//! immutable or append-only (`chattr +i`, `+a`). A rotation that cannot rename a
//! snapshot is refused before anything moves, saying which and how to clear it; an
//! expired snapshot whose entries cannot be deleted loses no newer history, is named in
//! the run's report, and later runs keep working and delete it once the flag is gone.
//! And stores that keep less than a local file system: one that refuses owners even to
//! root (an NFS export with `root_squash`: latencyfs `--no-chown`), one that keeps file
//! times in whole seconds (some NFS servers, FAT: latencyfs `--whole-second-times`).

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Clears every immutable and append-only flag under a test's directory when dropped
/// (also when the test fails), so the temporary directory can be deleted.
struct Unflag(PathBuf);

impl Drop for Unflag {
    fn drop(&mut self) {
        let _ = Command::new("chattr")
            .arg("-R")
            .arg("-ia")
            .arg(&self.0)
            .status();
    }
}

fn chattr(flag: &str, p: &Path) {
    let ok = Command::new("chattr")
        .arg(flag)
        .arg(p)
        .status()
        .unwrap()
        .success();
    assert!(ok, "chattr {flag} {}", p.display());
}

/// Whether this file system has the flags (`chattr` works on a probe file).
fn has_flags(dir: &Path) -> bool {
    let p = dir.join("probe");
    std::fs::write(&p, b"").unwrap();
    let ok = Command::new("chattr")
        .arg("+i")
        .arg(&p)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = Command::new("chattr").arg("-i").arg(&p).status();
    std::fs::remove_file(&p).unwrap();
    ok
}

fn setup() -> Option<(tempfile::TempDir, Unflag, PathBuf, PathBuf)> {
    let t = tempfile::tempdir().unwrap();
    if !has_flags(t.path()) {
        eprintln!("skipped: no chattr flags on this file system");
        return None;
    }
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    for i in 0..8 {
        write(
            &src.join(format!("d{}/f{i}", i % 2)),
            format!("v1 {i}").as_bytes(),
        );
    }
    let guard = Unflag(t.path().to_path_buf());
    Some((t, guard, src, dest))
}

fn run(src: &Path, dest: &Path) -> (i32, serde_json::Value) {
    let (code, rep, _) = backup(src, dest, &["--retain", "2"], &[]);
    (code, rep)
}

/// A snapshot the rotation must rename made immutable (`daily.1`, which it expires) or
/// append-only (`daily.0`, which it shifts): the run fails at once naming it and the
/// `chattr` that clears it, writes no journal and renames nothing; `list` still works;
/// once the flag is gone the next run completes. Before the check the journal was
/// written and the rename failed ("Operation not permitted"): the store stayed half
/// rotated and every later command failed rolling the journal forward.
#[test]
fn a_snapshot_the_rotation_cannot_rename_is_refused_before_anything_moves() {
    let Some((_t, _guard, src, dest)) = setup() else {
        return;
    };
    assert_eq!(run(&src, &dest).0, 0);
    write(&src.join("d0/f0"), b"v2");
    assert_eq!(run(&src, &dest).0, 0);
    for (snap, flag, word) in [
        ("daily.1", "+i", "immutable"),
        ("daily.0", "+a", "append-only"),
    ] {
        let before = (
            describe(&dest.join("daily.0")),
            describe(&dest.join("daily.1")),
        );
        chattr(flag, &dest.join(snap));
        write(&src.join("d1/f1"), format!("changed for {snap}").as_bytes());
        let (code, rep) = run(&src, &dest);
        assert_eq!(code, 1, "{snap}: {rep}");
        let msg = rep["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(&format!("{}", dest.join(snap).display()))
                && msg.contains(word)
                && msg.contains(&format!("chattr -{}", &flag[1..]))
                && msg.contains("nothing was published"),
            "{snap}: {msg}"
        );
        assert!(
            !dest.join(".snapring/journal").exists(),
            "{snap}: a journal was left to roll forward"
        );
        assert_eq!(snapshot_names(&dest), ["daily.0", "daily.1"], "{snap}");
        assert_same_tree(&before.0, &describe(&dest.join("daily.0")), "daily.0");
        assert_same_tree(&before.1, &describe(&dest.join("daily.1")), "daily.1");
        let out = snapring(&["list".as_ref(), "--dest".as_ref(), dest.as_os_str()], &[]);
        assert_eq!(out.status.code(), Some(0), "{snap}: list after the refusal");
        chattr(&format!("-{}", &flag[1..]), &dest.join(snap));
        let (code, rep) = run(&src, &dest);
        assert_eq!(code, 0, "{snap}: the run after the flag is cleared: {rep}");
        assert_same_tree(&describe(&src), &describe(&dest.join("daily.0")), "new");
    }
    assert_verify_clean(&dest, &["--all"]);
}

/// An expired snapshot holding an immutable file and an append-only directory: the
/// run still completes and keeps the newer snapshots whole, and its report (not only
/// its log) names what could not be deleted and how to clear the flag; every later
/// run says so again until the flag is cleared, and then deletes it. Before, the
/// report had no warning: trash grew run after run with nothing in the report.
#[test]
fn an_expired_snapshot_with_immutable_entries_is_named_in_the_report_and_deleted_later() {
    let Some((_t, _guard, src, dest)) = setup() else {
        return;
    };
    assert_eq!(run(&src, &dest).0, 0);
    // Changed, so daily.1's f0 and d1/f1 are inodes of their own (not shared with
    // daily.0, whose link from them the flag would refuse).
    write(&src.join("d0/f0"), b"v2 0");
    write(&src.join("d1/f1"), b"v2 1");
    assert_eq!(run(&src, &dest).0, 0);
    chattr("+i", &dest.join("daily.1/d0/f0"));
    chattr("+a", &dest.join("daily.1/d1"));
    write(&src.join("d0/f2"), b"v3 2");
    let (code, rep) = run(&src, &dest);
    assert_eq!(code, 0, "{rep}");
    assert_eq!(rep["status"], "complete", "{rep}");
    let warnings = rep["warnings"].to_string();
    assert!(
        warnings.contains("not fully deleted") && warnings.contains("immutable or append-only"),
        "{warnings}"
    );
    assert_eq!(snapshot_names(&dest), ["daily.0", "daily.1"]);
    assert_same_tree(&describe(&src), &describe(&dest.join("daily.0")), "daily.0");
    assert_verify_clean(&dest, &["--all"]);
    // The next run says it again; with the flags cleared, the one after empties trash.
    let (code, rep) = run(&src, &dest);
    assert_eq!(code, 0, "{rep}");
    assert!(
        rep["warnings"].to_string().contains("not fully deleted"),
        "{rep}"
    );
    let _ = Command::new("chattr")
        .arg("-R")
        .arg("-ia")
        .arg(dest.join(".snapring/trash"))
        .status();
    let (code, rep) = run(&src, &dest);
    assert_eq!(code, 0, "{rep}");
    assert_eq!(rep["warnings"], serde_json::json!([]), "{rep}");
    let left: Vec<_> = std::fs::read_dir(dest.join(".snapring/trash"))
        .unwrap()
        .collect();
    assert!(
        left.is_empty(),
        "trash after the flags are cleared: {left:?}"
    );
    assert_verify_clean(&dest, &["--all"]);
}

/// A source whose root has no owner write bit (0555), backed up without
/// `CAP_DAC_OVERRIDE`: the snapshot's root gets mode 0555, and moving it (staging to
/// `daily.0`, then the expired one to trash) needs write permission on it. Every run
/// publishes and the third expires the first; each snapshot's root keeps 0555. Before,
/// the first run's rename failed EACCES after its journal was written and every later
/// run failed rolling that journal forward: no backup was ever published.
#[test]
fn a_read_only_source_root_backed_up_without_dac_override_publishes_and_rotates() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    write(&src.join("f"), b"v0");
    for i in 1..=3 {
        chmod(&src, 0o755);
        write(&src.join("f"), format!("v{i}").as_bytes());
        chmod(&src, 0o555);
        // Without the capabilities that let root write anything (as a backup user
        // other than root would).
        let (code, rep, _) = backup_without_dac(&src, &dest, &["--retain", "2"]);
        assert_eq!(code, Some(0), "run {i}: {rep}");
    }
    assert_eq!(snapshot_names(&dest), ["daily.0", "daily.1"]);
    for s in ["daily.0", "daily.1"] {
        let m = std::fs::metadata(dest.join(s)).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o555, "{s}");
    }
    assert_eq!(std::fs::read(dest.join("daily.0/f")).unwrap(), b"v3");
    assert_eq!(std::fs::read(dest.join("daily.1/f")).unwrap(), b"v2");
    let trash: Vec<_> = std::fs::read_dir(dest.join(".snapring/trash"))
        .unwrap()
        .collect();
    assert!(trash.is_empty(), "{trash:?}");
    chmod(&src, 0o755);
}

/// A store that refuses owners even to root (NFS `root_squash`, knfsd's default:
/// latencyfs `--no-chown`), with source files owned by another user: each run says so
/// once (a warning, the run complete) instead of a problem per file; the manifest keeps
/// the source's owners, so the next run links the unchanged files, and `verify` does
/// not call the owner it was told could not be kept damage. Before, every run was
/// partial (`left owned by 0:0` per file), copied every such file again (the manifest
/// had 0:0, the source 1234) and verify reported them DAMAGED (exit 2).
#[test]
fn a_store_refusing_owners_to_root_says_so_once_links_unchanged_files_and_verifies_clean() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (to own source files by another user)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for f in ["f1", "d/f2", "d/f3"] {
        write(&src.join(f), f.as_bytes());
    }
    std::os::unix::fs::symlink("f1", src.join("l")).unwrap();
    for f in ["f1", "d/f2", "d/f3", "d", "l"] {
        std::os::unix::fs::lchown(src.join(f), Some(1234), Some(1234)).unwrap();
    }
    let (under, mnt) = (t.path().join("under"), t.path().join("mnt"));
    std::fs::create_dir(&under).unwrap();
    let Some(_fs) = FaultFs::mount(&under, &mnt, &["--no-chown"]) else {
        return;
    };
    let dest = mnt.join("backup");
    let said = |rep: &serde_json::Value| {
        rep["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| {
                let w = w.as_str().unwrap();
                w.contains("does not keep file owners") && w.contains("no_root_squash")
            })
            .count()
    };
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["status"], "complete", "{rep}");
    assert_eq!(said(&rep), 1, "{rep}");
    assert_eq!(
        rep["files_transferred"], 4,
        "three files and a symlink: {rep}"
    );
    // The store's owner, not the source's: what the store could keep.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dest.join("daily.0/d/f2")).unwrap();
    assert_ne!(m.uid(), 1234);
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(said(&rep), 1, "{rep}");
    assert_eq!(rep["files_transferred"], 0, "unchanged files linked: {rep}");
    assert!(rep["files_linked"].as_u64().unwrap() >= 3, "{rep}");
    let out = snapring(
        &[
            "verify".as_ref(),
            "--all".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
        ],
        &[],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("owners not checked"), "{text}");
    // A changed owner in the source is still a change the next run copies.
    std::os::unix::fs::lchown(src.join("f1"), Some(1235), Some(1234)).unwrap();
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["files_transferred"], 1, "{rep}");
}

/// A snapshot whose store refused owners even to root (latencyfs `--no-chown`) restores
/// with the owners its manifest records, the source's, when restored as root: its tree
/// has only the store's (`.owners` marker). Files, a symlink, a subdirectory and the
/// restored root get them. Before, every restored entry was owned by the store's user
/// (the squashed `root`), and the true owners were only in the manifest. `diff` between
/// two such snapshots and `diff --against` the source report no owner change.
#[test]
fn a_snapshot_whose_store_refused_owners_restores_the_manifests_owners() {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (to own source files by another user)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for f in ["f1", "d/f2", "d/e/f3"] {
        write(&src.join(f), f.as_bytes());
    }
    std::os::unix::fs::symlink("f1", src.join("l")).unwrap();
    for (i, f) in ["f1", "d/f2", "d/e/f3", "d", "d/e", "l", ""]
        .iter()
        .enumerate()
    {
        let p = if f.is_empty() {
            src.clone()
        } else {
            src.join(f)
        };
        std::os::unix::fs::lchown(p, Some(1234 + i as u32), Some(2345)).unwrap();
    }
    let (under, mnt) = (t.path().join("under"), t.path().join("mnt"));
    std::fs::create_dir(&under).unwrap();
    let Some(_fs) = FaultFs::mount(&under, &mnt, &["--no-chown"]) else {
        return;
    };
    let dest = mnt.join("backup");
    for _ in 0..2 {
        let (code, rep, err) = backup(&src, &dest, &[], &[]);
        assert_eq!(code, 0, "{err}\n{rep}");
    }
    assert_ne!(
        std::fs::metadata(dest.join("daily.0/d/f2")).unwrap().uid(),
        1235,
        "the store keeps its own owner"
    );
    let to = t.path().join("restored");
    let out = snapring(&restore_json_args(&dest, "daily.0", &to), &[]);
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{rep}");
    assert_eq!(rep["status"], "complete", "{rep}");
    for (i, f) in ["f1", "d/f2", "d/e/f3", "d", "d/e", "l", ""]
        .iter()
        .enumerate()
    {
        let p = if f.is_empty() { to.clone() } else { to.join(f) };
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234 + i as u32, 2345), "{f:?}");
    }
    assert_eq!(std::fs::read(to.join("d/e/f3")).unwrap(), b"d/e/f3");
    // `--path` of a directory (its owner from the parent's record) and of a file.
    let to2 = t.path().join("restored2");
    let out = snapring(
        &[
            "restore".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            "daily.1".as_ref(),
            "--path".as_ref(),
            "d/e".as_ref(),
            "--flat".as_ref(),
            "--to".as_ref(),
            to2.as_os_str(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let m = std::fs::metadata(&to2).unwrap();
    assert_eq!((m.uid(), m.gid()), (1238, 2345), "d/e itself");
    let m = std::fs::metadata(to2.join("f3")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1236, 2345), "d/e/f3");
    // Nothing misleading: the manifests' owners on both sides, and the source's.
    for against in [
        vec!["daily.1", "daily.0"],
        vec!["daily.0", "--against", src.to_str().unwrap()],
    ] {
        let mut a: Vec<&std::ffi::OsStr> = vec![
            "diff".as_ref(),
            "--json".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
        ];
        a.extend(against.iter().map(std::ffi::OsStr::new));
        let out = snapring(&a, &[]);
        let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(out.status.code(), Some(0), "{against:?}: {rep}");
        assert_eq!(
            rep["differences"],
            serde_json::json!([]),
            "{against:?}: {rep}"
        );
        assert_eq!(rep["problems"], serde_json::json!([]), "{against:?}: {rep}");
    }
}

/// A shard run (`--shard I/N`) into a store that refuses owners even to root (latencyfs
/// `--no-chown`): its planner probes the store once and records the answer in the plan,
/// so every worker, as a single-node run, tries no `chown`, the run says so once (a
/// warning) and stays complete, and finalize writes the `.owners` mark, so verify
/// skips owners and is clean. Before, every refused owner was a problem of the run
/// (partial) and verify reported every file damaged.
#[test]
fn a_shard_run_into_a_store_refusing_owners_probes_once_and_marks_the_snapshot() {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (to own source files by another user)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in 0..4 {
        for f in 0..30 {
            let p = src.join(format!("d{d}/s{}/f{f:02}", f % 3));
            write(&p, format!("{d} {f}").as_bytes());
            std::os::unix::fs::lchown(&p, Some(1234), Some(1234)).unwrap();
        }
        std::os::unix::fs::lchown(src.join(format!("d{d}")), Some(1234), Some(1234)).unwrap();
    }
    let (under, mnt) = (t.path().join("under"), t.path().join("mnt"));
    std::fs::create_dir(&under).unwrap();
    let Some(_fs) = FaultFs::mount(&under, &mnt, &["--no-chown"]) else {
        return;
    };
    let dest = mnt.join("backup");
    let run = "r1";
    // Worker 0 of 2 alone: it claims every unit (its own, then the other's) and
    // finalizes; worker 1 then finds the run finalized.
    let mut reps = Vec::new();
    for i in 0..2 {
        let shard = format!("{i}/2");
        let (code, rep, err) = backup(
            &src,
            &dest,
            &["--shard", &shard, "--run-id", run, "--jobs", "2"],
            &[],
        );
        assert_eq!(code, 0, "worker {i}: {err}\n{rep}");
        reps.push((rep, err));
    }
    let (out, err) = &reps[0];
    let rep = &out["report"];
    assert_eq!(rep["status"], "complete", "{err}\n{out}");
    assert_eq!(rep["problems"], serde_json::json!([]), "{rep}");
    let said = rep["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w.as_str().unwrap().contains("does not keep file owners"))
        .count();
    assert_eq!(said, 1, "{rep}");
    let plan: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dest.join(".snapring/shards").join(run).join("plan.json"))
            .unwrap_or_else(|_| b"null".to_vec()),
    )
    .unwrap();
    // The plan may be gone once finalized (tidied): the mark is what lasts.
    if !plan.is_null() {
        assert!(plan["owners_held"].is_array(), "{plan}");
    }
    let mark = dest
        .join(".snapring/manifests")
        .join(format!("{run}.owners"));
    let held = std::fs::read_to_string(&mark).unwrap_or_default();
    let m = std::fs::metadata(dest.join("daily.0/d1/s1/f01")).unwrap();
    assert_eq!(
        held.trim(),
        format!("{}:{}", m.uid(), m.gid()),
        "{}",
        mark.display()
    );
    let out = snapring(
        &["verify".as_ref(), "--dest".as_ref(), dest.as_os_str()],
        &[],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("owners not checked"), "{text}");
    // The next run (single-node) links the unchanged files: the manifest has the
    // source's owners.
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["files_transferred"], 0, "{rep}");
}

/// A source tree whose files, symlink, directories and root have mtimes with
/// nanoseconds (set last, deepest first), for the stores keeping whole seconds.
fn ns_times_source(src: &Path) -> Vec<(&'static str, (i64, i64))> {
    for f in ["f1", "d/f2", "d/e/f3"] {
        write(&src.join(f), f.as_bytes());
    }
    std::os::unix::fs::symlink("f1", src.join("l")).unwrap();
    let times: Vec<(&str, (i64, i64))> = ["f1", "d/f2", "d/e/f3", "l", "d/e", "d", ""]
        .into_iter()
        .enumerate()
        .map(|(i, f)| (f, (1_700_000_000 + i as i64, 286_786_234 + i as i64)))
        .collect();
    for (f, (sec, nsec)) in &times {
        set_mtime(&src.join(f), *sec, *nsec);
    }
    times
}

/// `(sec, nsec)` of `p`'s mtime (not following a symlink).
fn mtime_of(p: &Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

/// How many of a report's warnings say the store keeps whole-second times.
fn says_whole_seconds(rep: &serde_json::Value) -> usize {
    rep["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| {
            w.as_str()
                .unwrap()
                .contains("keeps file times to the second only")
        })
        .count()
}

/// `snapring verify ARGS --dest DEST`: exit code, stdout and stderr together.
fn verify(dest: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut a: Vec<&std::ffi::OsStr> = vec!["verify".as_ref()];
    a.extend(args.iter().map(std::ffi::OsStr::new));
    a.extend(["--dest".as_ref(), dest.as_os_str()]);
    let out = snapring(&a, &[]);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The `.times` marks of a store's manifests: (run id, content).
fn times_marks(dest: &Path) -> Vec<(String, String)> {
    let mut v: Vec<_> = std::fs::read_dir(dest.join(".snapring/manifests"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "times").then(|| {
                (
                    p.file_stem().unwrap().to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
        })
        .collect();
    v.sort();
    v
}

/// A store that keeps file times in whole seconds (some NFS servers, FAT: latencyfs
/// `--whole-second-times`), a source whose mtimes have nanoseconds: the run probes the
/// store once (folded into the owner probe), says so once (a warning, the run complete)
/// and marks the manifest (`<id>.times`), which keeps the source's exact times; the next
/// run links every unchanged file; `verify` compares times to the second and is clean,
/// saying so; `restore` gives every entry its exact time from the manifest. Before,
/// verify reported every entry (`mtime x.286786234 -> x.000000000`, exit 2, and so marked
/// them damaged, which the next backup copied again), and a restore gave the truncated
/// times.
#[test]
fn a_store_keeping_whole_second_times_verifies_clean_and_restores_the_exact_times() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let times = ns_times_source(&src);
    let (under, mnt) = (t.path().join("under"), t.path().join("mnt"));
    std::fs::create_dir(&under).unwrap();
    let Some(_fs) = FaultFs::mount(&under, &mnt, &["--whole-second-times"]) else {
        return;
    };
    let dest = mnt.join("backup");
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["status"], "complete", "{rep}");
    assert_eq!(says_whole_seconds(&rep), 1, "{rep}");
    assert_eq!(rep["files_transferred"], 4, "three files, a symlink: {rep}");
    // The store's times, whole seconds: what it could keep.
    assert_eq!(mtime_of(&dest.join("daily.0/d/f2")), (1_700_000_001, 0));
    let marks = times_marks(&dest);
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert_eq!(marks[0].1.trim(), "1000000000", "{marks:?}");
    let (code, text) = verify(&dest, &["--all"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("times checked to the second"), "{text}");
    // Unchanged files are linked (the manifest has the source's exact times), and the
    // run says it again (its own probe).
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(says_whole_seconds(&rep), 1, "{rep}");
    assert_eq!(rep["files_transferred"], 0, "unchanged files linked: {rep}");
    assert!(rep["files_linked"].as_u64().unwrap() >= 4, "{rep}");
    assert_eq!(times_marks(&dest).len(), 2);
    let (code, text) = verify(&dest, &["--all"]);
    assert_eq!(code, Some(0), "{text}");
    // A restore gives back the source's times, not the store's.
    let to = t.path().join("restored");
    let out = snapring(&restore_json_args(&dest, "daily.1", &to), &[]);
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{rep}");
    assert_eq!(rep["status"], "complete", "{rep}");
    for (f, want) in &times {
        assert_eq!(mtime_of(&to.join(f)), *want, "{f:?}");
    }
    // `--path` of a directory (its time from the parent's record) and of a file.
    let to2 = t.path().join("restored2");
    let out = snapring(
        &[
            "restore".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            "daily.0".as_ref(),
            "--path".as_ref(),
            "d/e".as_ref(),
            "--flat".as_ref(),
            "--to".as_ref(),
            to2.as_os_str(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(mtime_of(&to2), times[4].1, "d/e itself");
    assert_eq!(mtime_of(&to2.join("f3")), times[2].1, "d/e/f3");
    // A real change in the store's tree is still found: a time a second off.
    set_mtime(&dest.join("daily.0/d/f2"), 1_700_000_003, 0);
    let (code, text) = verify(&dest, &["daily.0"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("d/f2") && text.contains("mtime"), "{text}");
    // Shown as `history` shows times (RFC 3339, UTC), not as the manifest keeps them.
    assert!(text.contains("-> 2023-11-14T22:13:23.000000000Z"), "{text}");
}

/// The same store backed up by a process that may not give files away (no
/// `CAP_CHOWN`, as a backup user other than root): there is no owner probe, and the
/// times are probed on the staging root itself (no file made); the run says so once,
/// marks the manifest, and verify is clean.
#[test]
fn a_store_keeping_whole_second_times_is_probed_without_chown_too() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    ns_times_source(&src);
    let (under, mnt) = (t.path().join("under"), t.path().join("mnt"));
    std::fs::create_dir(&under).unwrap();
    let Some(_fs) = FaultFs::mount(&under, &mnt, &["--whole-second-times"]) else {
        return;
    };
    let dest = mnt.join("backup");
    for i in 0..2 {
        let mut c = Command::new("setpriv");
        c.args(["--bounding-set=-chown", "--inh-caps=-chown"])
            .arg(bin())
            .env("SNAPRING_CATALOG", "off")
            .args(["backup", "--json", "--source"])
            .arg(&src)
            .arg("--dest")
            .arg(&dest);
        let out = c.output().unwrap();
        let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "run {i}: {err}\n{rep}");
        assert_eq!(rep["status"], "complete", "run {i}: {rep}");
        assert_eq!(says_whole_seconds(&rep), 1, "run {i}: {rep}");
        let copied = if i == 0 { 4 } else { 0 };
        assert_eq!(rep["files_transferred"], copied, "run {i}: {rep}");
    }
    assert_eq!(times_marks(&dest).len(), 2);
    let (code, text) = verify(&dest, &["--all"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("times checked to the second"), "{text}");
}

/// A shard run into a store keeping whole-second times: its planner probes once for
/// the run and records the granularity in the plan; the run says so once, finalize
/// marks the manifest, verify is clean, and the next (single-node) run links every
/// unchanged file.
#[test]
fn a_shard_run_into_a_store_keeping_whole_second_times_marks_the_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in 0..4 {
        for f in 0..30 {
            let p = src.join(format!("d{d}/s{}/f{f:02}", f % 3));
            write(&p, format!("{d} {f}").as_bytes());
            set_mtime(&p, 1_700_000_000 + f, 123_456_789 + d);
        }
    }
    let (under, mnt) = (t.path().join("under"), t.path().join("mnt"));
    std::fs::create_dir(&under).unwrap();
    let Some(_fs) = FaultFs::mount(&under, &mnt, &["--whole-second-times"]) else {
        return;
    };
    let dest = mnt.join("backup");
    let run = "r1";
    let mut reps = Vec::new();
    for i in 0..2 {
        let shard = format!("{i}/2");
        let (code, rep, err) = backup(
            &src,
            &dest,
            &["--shard", &shard, "--run-id", run, "--jobs", "2"],
            &[],
        );
        assert_eq!(code, 0, "worker {i}: {err}\n{rep}");
        reps.push((rep, err));
    }
    let (out, err) = &reps[0];
    let rep = &out["report"];
    assert_eq!(rep["status"], "complete", "{err}\n{out}");
    assert_eq!(rep["problems"], serde_json::json!([]), "{rep}");
    assert_eq!(says_whole_seconds(rep), 1, "{rep}");
    assert_eq!(
        times_marks(&dest),
        [(run.to_string(), "1000000000\n".to_string())]
    );
    let (code, text) = verify(&dest, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("times checked to the second"), "{text}");
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["files_transferred"], 0, "{rep}");
}

/// The xattr probes of a backup killed between a probe's creation and its removal
/// (`.snapring/staging/.snapring-xattr-probe-<pid>-<time>-<n>.tmp`) are removed by the
/// next run under the store's lock, by the rules of `write_atomic`'s temp files: a
/// gone process's once 10 minutes old, any once an hour old; a recent one or a live
/// process's is left (review N4: nothing removed them). A fifo probe too.
#[test]
fn xattr_probes_left_by_a_killed_run_are_swept_by_the_next() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write(&src.join("f"), b"f");
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{rep} {err}");
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let me = std::process::id();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let staging = dest.join(".snapring/staging");
    let probe = |pid: u32, n: u32, age: i64| {
        let p = staging.join(format!(
            ".snapring-xattr-probe-{pid}-18a2b3c4d5e6f7-{n}.tmp"
        ));
        write(&p, b"");
        set_mtime(&p, now - age, 0);
        p
    };
    // A fifo probe (for a fifo entry) left by a killed run: swept as a regular one is
    // (review L1: only regular files were).
    let fifo = staging.join(format!(".snapring-xattr-probe-{dead}-18a2b3c4d5e6f7-4.tmp"));
    let ok = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mkfifo");
    set_mtime(&fifo, now - 20 * 60, 0);
    let swept = [probe(dead, 0, 20 * 60), probe(me, 1, 2 * 3600), fifo];
    let kept = [
        probe(dead, 2, 10),
        probe(me, 3, 20 * 60),
        // Not a probe's name: not this sweep's.
        {
            let p = staging.join(".snapring-xattr-probe-x-1-2.tmp");
            write(&p, b"");
            set_mtime(&p, now - 2 * 3600, 0);
            p
        },
    ];
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{rep} {err}");
    for p in &swept {
        assert!(
            p.symlink_metadata().is_err(),
            "{} was not swept",
            p.display()
        );
    }
    for p in &kept {
        assert!(p.exists(), "{} was swept", p.display());
    }
    assert_eq!(snapshot_names(&dest), ["daily.0", "daily.1"]);
}
