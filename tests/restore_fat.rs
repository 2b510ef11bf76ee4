//! Restores into a target whose file system cannot hold everything a snapshot has: a
//! real FAT file system (`fusefat` on an image `mkfs.vfat` made, through FUSE: no
//! loop device, no kernel module). FAT has no symlinks, no `:` in a name, one name for
//! `d` and `D`, no modes, no owners and 2 s times.

mod common;
use common::*;

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A FAT file system mounted with `fusefat`, unmounted when dropped. `None` (reason
/// printed) where it cannot run; where `SNAPRING_TEST_NEED_FUSE` is set (`.ci/run`,
/// which installs `fusefat` and `dosfstools`), a panic.
struct Fat {
    mnt: PathBuf,
}

impl Fat {
    fn mount(dir: &Path) -> Option<Fat> {
        let why = if !Path::new("/dev/fuse").exists() {
            Some("/dev/fuse is absent".to_string())
        } else {
            ["fusefat", "mkfs.vfat", "fusermount3"]
                .into_iter()
                .find(|t| {
                    !Command::new("sh")
                        .arg("-c")
                        .arg(format!("command -v {t}"))
                        .output()
                        .is_ok_and(|o| o.status.success())
                })
                .map(|t| format!("{t} is not installed (Debian: fusefat, dosfstools, fuse3)"))
        };
        if let Some(why) = why {
            if std::env::var_os("SNAPRING_TEST_NEED_FUSE").is_some() {
                panic!(
                    "SNAPRING_TEST_NEED_FUSE is set, but a FAT file system cannot be mounted: {why}"
                );
            }
            eprintln!("skipped: {why}");
            return None;
        }
        let img = dir.join("fat.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(32 << 20).unwrap();
        drop(f);
        let made = Command::new("mkfs.vfat").arg(&img).output().unwrap();
        assert!(made.status.success(), "mkfs.vfat: {made:?}");
        let mnt = dir.join("fat");
        std::fs::create_dir(&mnt).unwrap();
        let parent_dev = std::fs::metadata(dir).unwrap().dev();
        let out = Command::new("fusefat")
            .args(["-o", "rw+"])
            .arg(&img)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(out.status.success(), "fusefat: {out:?}");
        let fat = Fat { mnt };
        let t0 = std::time::Instant::now();
        while std::fs::metadata(&fat.mnt).unwrap().dev() == parent_dev {
            assert!(t0.elapsed().as_secs() < 20, "fusefat did not mount");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(fat)
    }
}

impl Drop for Fat {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mnt)
            .status();
    }
}

/// `snapring restore --dest STORE daily.0 --to TO EXTRA…`: exit code, the report
/// (`--json`) or stdout, stderr.
fn restore(store: &Path, to: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut a: Vec<&OsStr> = vec![
        "restore".as_ref(),
        "--dest".as_ref(),
        store.as_os_str(),
        "daily.0".as_ref(),
        "--to".as_ref(),
        to.as_os_str(),
    ];
    a.extend(extra.iter().map(OsStr::new));
    let out = snapring(&a, &[]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// A tree with what FAT cannot hold beside what it can.
fn source(src: &Path) {
    write(&src.join("a"), b"a");
    write(&src.join("a:b"), b"colon");
    write(&src.join("d/f"), b"lower");
    write(&src.join("D/g"), b"upper");
    write(&src.join("sub/f"), b"f");
    write(&src.join("sub/g"), b"g");
    std::os::unix::fs::symlink("a", src.join("link")).unwrap();
    std::fs::set_permissions(
        src.join("a"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    set_mtime(&src.join("sub/f"), 1_600_000_001, 123_456_789);
}

fn problem<'a>(rep: &'a serde_json::Value, path: &str) -> Vec<&'a serde_json::Value> {
    rep["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["path"] == path)
        .collect()
}

/// What FAT cannot hold stopped the restore at the first such entry (`failed`, exit
/// 1, "cannot create link: Function not implemented"), every rerun alike. Now each is
/// a problem of its own entry, with the action that failed and saying the target
/// cannot hold it and a rerun will not change it (kind `not_restored`, not `metadata`:
/// nothing of it is there); `d` and `D` are a conflict naming both, and the summary
/// does not offer `--overwrite` for it; the rest is restored, `partial`, exit 2.
#[test]
fn a_fat_target_restores_what_it_can_hold_and_names_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let Some(fat) = Fat::mount(t.path()) else {
        return;
    };
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    source(&src);
    let (code, rep, err) = backup(&src, &store, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let to = fat.mnt.join("r");
    let (code, out, err) = restore(&store, &to, &["--json"]);
    let rep = json(&out);
    assert_eq!(code, 2, "{err}\n{rep}");
    assert_eq!(rep["status"], "partial", "{rep}");
    for (path, action) in [("link", "create"), ("a:b", "create file")] {
        let p = problem(&rep, path);
        assert_eq!(p.len(), 1, "{path}: {rep}");
        assert_eq!(p[0]["kind"], "not_restored", "{rep}");
        assert_eq!(p[0]["action"], action, "{rep}");
    }
    // Worded alike: the symlink (ENOSYS) and the name `a:b` (EPERM from `fusefat`,
    // which was the bare "Operation not permitted").
    for path in ["link", "a:b"] {
        let e = problem(&rep, path)[0]["error"].as_str().unwrap();
        assert!(
            e.contains("cannot hold") && e.contains("will not change"),
            "{path}: {e}"
        );
    }
    // One of `d` and `D` is there, the other a conflict naming both.
    assert_eq!(rep["conflicts_total"], 1, "{rep}");
    let c = &rep["conflicts"][0];
    let reason = c["reason"].as_str().unwrap();
    assert!(
        reason.contains("cannot hold both") && reason.contains(" d ") && reason.contains(" D "),
        "{rep}"
    );
    // `--overwrite` does not put both names there: the summary did say it replaces them.
    let msg = rep["message"].as_str().unwrap();
    assert!(
        !msg.contains("--overwrite") && msg.contains("no option restores both"),
        "{msg}"
    );
    let kept = if c["path"] == "d" { "D/g" } else { "d/f" };
    let want: &[u8] = if kept == "D/g" { b"upper" } else { b"lower" };
    assert_eq!(std::fs::read(to.join(kept)).unwrap(), want);
    for (f, data) in [("a", &b"a"[..]), ("sub/f", b"f"), ("sub/g", b"g")] {
        assert_eq!(std::fs::read(to.join(f)).unwrap(), data, "{f}");
    }
    // Modes are not kept: said once, at the root, not as a problem per entry.
    let modes = problem(&rep, ".");
    assert!(
        modes.len() == 1 && modes[0]["error"].as_str().unwrap().contains("mode of"),
        "{rep}"
    );
    assert!(
        rep["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("modification time")),
        "{rep}"
    );
    // The headline says what was and was not restored.
    let (code, out, err) = restore(&store, &to, &[]);
    assert_eq!(code, 2, "{err}\n{out}");
    let head = out.lines().next().unwrap();
    assert!(
        head.starts_with("partial: restored all of daily.0") && head.contains("except"),
        "{out}"
    );
}

/// A target without modes and with 2 s times said `complete`, and every rerun called
/// each restored file a conflict (`mode differs`, `modification time differs`): it
/// never converged. Now the restore notices what the target did not keep (read back
/// after setting it, and on a rerun by a probe file): a rerun takes its own entries as
/// restored (identical, none replaced, no conflict but `d`/`D`), with `--overwrite`
/// too, and says the same about modes and times.
#[test]
fn a_rerun_into_a_fat_target_takes_its_own_entries_as_restored() {
    let t = tempfile::tempdir().unwrap();
    let Some(fat) = Fat::mount(t.path()) else {
        return;
    };
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    source(&src);
    let (code, rep, err) = backup(&src, &store, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let to = fat.mnt.join("r");
    let (_, out, _) = restore(&store, &to, &["--json"]);
    let first = json(&out);
    let restored = first["files_restored"].as_u64().unwrap();
    assert_eq!(restored, 4, "a, sub/f, sub/g, and d/f or D/g: {first}");
    for extra in [&[][..], &["--overwrite"]] {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let (code, out, err) = restore(&store, &to, &args);
        let rep = json(&out);
        assert_eq!(code, 2, "{extra:?}: {err}\n{rep}");
        assert_eq!(rep["conflicts_total"], 1, "{extra:?}: only d/D: {rep}");
        assert_eq!(rep["skipped_identical"], restored, "{extra:?}: {rep}");
        assert_eq!(rep["overwritten"], 0, "{extra:?}: {rep}");
        assert_eq!(rep["files_restored"], 0, "{extra:?}: {rep}");
        let modes = problem(&rep, ".");
        assert!(
            modes.len() == 1 && modes[0]["error"].as_str().unwrap().contains("mode of"),
            "{extra:?}: {rep}"
        );
    }
}

/// Every entry under `root` (hidden ones too) with its kind, size and mtime (s): what
/// a restore that should write nothing must leave as it was.
fn state(root: &Path) -> Vec<(PathBuf, bool, u64, i64)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let m = std::fs::symlink_metadata(&d).unwrap();
        out.push((d.clone(), m.is_dir(), m.len(), m.mtime()));
        if m.is_dir() {
            for e in std::fs::read_dir(&d).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

/// The part of a [`state`] at or below `dir`.
fn state_of(s: &[(PathBuf, bool, u64, i64)], dir: &Path) -> Vec<(PathBuf, bool, u64, i64)> {
    s.iter().filter(|e| e.0.starts_with(dir)).cloned().collect()
}

/// The target's temporary files (`.snapring-restore.*.tmp`) anywhere under `root`.
fn leftovers(root: &Path) -> Vec<PathBuf> {
    state(root)
        .into_iter()
        .map(|s| s.0)
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(".snapring-restore.") && n.ends_with(".tmp")
        })
        .collect()
}

/// A fifo on FAT: `mknod` answers EIO there (and `fusefat` leaves an empty regular
/// file of the name). EIO stopped the restore (`failed`, exit 1, "running it again once
/// the target works finishes it"), on every rerun alike, with an empty `sub/fifo` (or
/// a temporary file) left in the target. Now the probe finds the target holds no
/// special files: the fifo is a problem of its own entry (`not_restored`, "cannot hold
/// a fifo"), nothing of it is left, the rest is restored, `partial`, exit 2; into a
/// directory that was there before (temporary names) as into one the restore made,
/// and on a rerun. A dry run plans it so.
#[test]
fn a_fifo_on_a_fat_target_is_a_problem_of_its_own_entry() {
    let t = tempfile::tempdir().unwrap();
    let Some(fat) = Fat::mount(t.path()) else {
        return;
    };
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    write(&src.join("a"), b"a");
    write(&src.join("sub/f"), b"f");
    write(&src.join("old/f"), b"f");
    for fifo in ["sub/fifo", "old/fifo"] {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.join(fifo),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }
    let (code, rep, err) = backup(&src, &store, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let to = fat.mnt.join("r");
    // `old` is there before the restore: its entries are written under temporary names.
    std::fs::create_dir_all(to.join("old")).unwrap();
    for run in ["first", "rerun"] {
        let (code, out, err) = restore(&store, &to, &["--json"]);
        let rep = json(&out);
        assert_eq!(code, 2, "{run}: {err}\n{rep}");
        assert_eq!(rep["status"], "partial", "{run}: {rep}");
        for fifo in ["sub/fifo", "old/fifo"] {
            let p = problem(&rep, fifo);
            assert_eq!(p.len(), 1, "{run}: {fifo}: {rep}");
            assert_eq!(p[0]["kind"], "not_restored", "{run}: {rep}");
            assert_eq!(p[0]["action"], "create", "{run}: {rep}");
            let e = p[0]["error"].as_str().unwrap();
            assert!(
                e.contains("cannot hold a fifo") && e.contains("will not change"),
                "{run}: {e}"
            );
            assert!(!to.join(fifo).exists(), "{run}: {fifo} left in the target");
        }
        for f in ["a", "sub/f", "old/f"] {
            assert!(to.join(f).exists(), "{run}: {f}");
        }
        assert_eq!(leftovers(&to), Vec::<PathBuf>::new(), "{run}");
    }
    // A dry run into a target that does not exist yet probes the nearest directory
    // that does, and leaves it as it was.
    let before = state(&fat.mnt);
    let (code, out, err) = restore(&store, &fat.mnt.join("new/r"), &["--dry-run", "--json"]);
    let plan = json(&out);
    assert_eq!(state(&fat.mnt), before, "the dry run changed the target");
    assert_eq!(code, 2, "{err}\n{plan}");
    for fifo in ["sub/fifo", "old/fifo"] {
        let p = problem(&plan, fifo);
        assert!(p.len() == 1 && p[0]["kind"] == "not_restored", "{plan}");
        assert!(
            !err.contains(&format!("+ {fifo}")),
            "planned as created: {err}"
        );
    }
}

/// A rerun onto a FAT target (files restored, the target holding no modes and 2 s
/// times) compared modes and times exactly in a dry run (it did not probe): its plan
/// showed every restored file as a conflict (`mode differs`) the real run does not
/// report. Now the dry run probes as the real run does and plans the same, and leaves
/// the target as it was: no probe file, and every directory's mtime as it was (the
/// probe's file touched the mtime of the directory it was made in, in a real run too).
#[test]
fn a_dry_run_onto_a_fat_target_plans_what_the_rerun_does_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let Some(fat) = Fat::mount(t.path()) else {
        return;
    };
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    source(&src);
    let (code, rep, err) = backup(&src, &store, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let to = fat.mnt.join("r");
    let (_, out, _) = restore(&store, &to, &["--json"]);
    let first = json(&out);
    let restored = first["files_restored"].as_u64().unwrap();
    let before = state(&to);
    let (code, out, err) = restore(&store, &to, &["--dry-run", "--json"]);
    let plan = json(&out);
    assert_eq!(state(&to), before, "the dry run changed the target");
    assert_eq!(code, 2, "{err}\n{plan}");
    assert!(!err.contains("mode differs"), "{err}");
    assert_eq!(plan["conflicts_total"], 1, "only d/D: {plan}\n{err}");
    assert_eq!(plan["skipped_identical"], restored, "{plan}");
    assert_eq!(plan["overwritten"], 0, "{plan}");
    let modes = problem(&plan, ".");
    assert!(
        modes.len() == 1 && modes[0]["error"].as_str().unwrap().contains("mode of"),
        "{plan}"
    );
    // The real rerun: the same conflicts, the same count skipped.
    let (_, out, _) = restore(&store, &to, &["--json"]);
    let rerun = json(&out);
    for k in [
        "conflicts_total",
        "conflicts",
        "skipped_identical",
        "overwritten",
    ] {
        assert_eq!(plan[k], rerun[k], "{k}: {plan}\n{rerun}");
    }
}

/// The probe (a rerun finds files differing only in mode and time) made and removed
/// its file in a directory of the target, whose mtime a rerun that replaced nothing
/// then showed as changed. Now the directory gets its mtime back. (The files are in
/// `sub`, where the probe is made: the target root's mtime a rerun changes anyway, by
/// its record of unfinished work.)
#[test]
fn the_probe_leaves_the_mtime_of_its_directory_as_it_was() {
    let t = tempfile::tempdir().unwrap();
    let Some(fat) = Fat::mount(t.path()) else {
        return;
    };
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    write(&src.join("sub/a"), b"a");
    write(&src.join("sub/f"), b"f");
    chmod(&src.join("sub/a"), 0o640);
    chmod(&src.join("sub/f"), 0o640);
    set_mtime(&src.join("sub"), 1_500_000_000, 0);
    set_mtime(&src, 1_500_000_000, 0);
    let (code, rep, err) = backup(&src, &store, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let to = fat.mnt.join("r");
    let (code, out, err) = restore(&store, &to, &["--json"]);
    assert_eq!(code, 2, "{err}\n{out}");
    let before = state(&to);
    assert!(
        before.iter().all(|s| !s.1 || s.3 < 1_600_000_000),
        "restored directories have the snapshot's times: {before:?}"
    );
    let (code, out, err) = restore(&store, &to, &["--json"]);
    let rep = json(&out);
    assert_eq!(code, 2, "{err}\n{rep}");
    assert_eq!(rep["skipped_identical"], 2, "{rep}");
    assert_eq!(
        state(&to.join("sub")),
        state_of(&before, &to.join("sub")),
        "{rep}"
    );
}
