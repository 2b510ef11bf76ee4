//! Interrupted runs: SIGINT or an expired --window stops the backup at a safe point,
//! status `incomplete` (exit 3), nothing published or rotated; the next run resumes
//! from the staging tree and copies less than a fresh run would; a copy held back by
//! `--bwlimit` is given up at the stop.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::time::Duration;

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    for i in 0..20 {
        write(&src.join(format!("f{i:02}")), &vec![i as u8; 100_000]);
    }
    std::fs::create_dir(&dest).unwrap();
    // A file changed as the interrupted run began (within the racy margin, 2 s) is
    // copied again, not resumed: the source is older than that here, as a real one is.
    std::thread::sleep(Duration::from_millis(2100));
    (t, src, dest)
}

/// A backup stopped by SIGINT after its 10th copy: its output, exit 3 checked.
fn interrupted_at_the_10th_copy(src: &Path, dest: &Path) -> std::process::Output {
    interrupted_at_copy(src, dest, 10)
}

/// A backup stopped by SIGINT after its `nth` copy: its output, exit 3 checked.
fn interrupted_at_copy(src: &Path, dest: &Path, nth: u32) -> std::process::Output {
    let Paused { child, pause } = spawn_paused(src, dest, &[], "walk.after_copy", nth);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    out
}

fn resumes(src: &Path, dest: &Path) {
    assert!(snapshot_names(dest).is_empty(), "nothing published");
    assert_eq!(
        std::fs::read_dir(dest.join(".snapring/staging"))
            .unwrap()
            .count(),
        1,
        "staging kept for resume"
    );
    let (code, rep, err) = backup(src, dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    let copied = rep["bytes_transferred"].as_u64().unwrap();
    assert!(
        copied <= 11 * 100_000,
        "resumed run copied {copied} bytes of 2,000,000"
    );
    assert!(rep["files_linked"].as_u64().unwrap() >= 9, "{rep}");
    // The copies taken from the cut run are counted apart (there is no previous
    // snapshot: every linked file is one), and each other file as copied, once.
    // Before, they were only among the linked, told from links to a previous snapshot
    // by nothing.
    let n = |k: &str| rep[k].as_u64().unwrap_or_else(|| panic!("{k}: {rep}"));
    assert_eq!(n("files_resumed"), n("files_linked"), "{rep}");
    assert_eq!(n("files_resumed") + n("files_transferred"), 20, "{rep}");
    assert_eq!(
        n("bytes_transferred"),
        n("files_transferred") * 100_000,
        "{rep}"
    );
    assert_same_tree(
        &describe(src),
        &describe(&dest.join("daily.0")),
        "resumed snapshot",
    );
    assert_eq!(
        std::fs::read_dir(dest.join(".snapring/staging"))
            .unwrap()
            .count(),
        0,
        "old staging cleaned up"
    );
}

#[test]
fn sigint_gives_incomplete_and_the_next_run_resumes() {
    let (_t, src, dest) = setup();
    let out = interrupted_at_the_10th_copy(&src, &dest);
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["status"], "incomplete");
    assert!(
        rep["message"].as_str().unwrap().starts_with("interrupted"),
        "{rep}"
    );
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dest.join(format!(
            ".snapring/runs/{}.json",
            rep["id"].as_str().unwrap()
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(record["status"], "incomplete");
    resumes(&src, &dest);
}

#[test]
fn expired_window_gives_incomplete_and_the_next_run_resumes() {
    let (_t, src, dest) = setup();
    let Paused { child, pause } =
        spawn_paused(&src, &dest, &["--window", "1s"], "walk.after_copy", 10);
    std::thread::sleep(Duration::from_millis(1300));
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        rep["message"]
            .as_str()
            .unwrap()
            .starts_with("backup window ended"),
        "{rep}"
    );
    assert_eq!(rep["window"], "1s");
    resumes(&src, &dest);
}

/// Every file replaced, after the interrupted run copied about half of them, by a file
/// of the same name, size and mtime and other content (a tool that keeps mtimes, a
/// restore from elsewhere): the resumed run copies each again. It took the interrupted
/// run's copies by size, mtime, mode and owner, and published the old content as
/// `complete`, which `verify` called clean.
#[test]
fn a_file_replaced_after_the_interrupted_run_copied_it_is_copied_again() {
    let (_t, src, dest) = setup();
    interrupted_at_the_10th_copy(&src, &dest);
    for i in 0..20u8 {
        let f = src.join(format!("f{i:02}"));
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        let new = src.join(format!("new{i:02}"));
        write(&new, &vec![i + 100; 100_000]);
        std::fs::File::options()
            .write(true)
            .open(&new)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::rename(&new, &f).unwrap();
    }
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        rep["files_transferred"], 20,
        "every file copied again: {rep}"
    );
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "snapshot after the replacement",
    );
    let out = snapring(
        &[
            "verify".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            "--against".as_ref(),
            src.as_os_str(),
            "daily.0".as_ref(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// A window that ends while `--bwlimit` holds a big file's copy back: the copy is given
/// up (the next run copies the file again) rather than finished, and the wait reported
/// is the time slept. The copy went on at full speed after the stop (the limit said
/// "go" at once), and the run reported the wait it had booked for the whole file, not
/// the one it slept: all 64 MiB copied, "waited 127.9s" in a 1.2 s run.
#[test]
fn a_window_ends_a_throttled_copy_and_the_wait_reported_is_the_time_waited() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    let size = 64 << 20;
    write(&src.join("big"), &vec![b'x'; size]);
    write(&src.join("small"), b"small");
    std::fs::create_dir(&dest).unwrap();
    let t0 = std::time::Instant::now();
    let (code, rep, err) = backup(&src, &dest, &["--bwlimit", "1MiB", "--window", "1s"], &[]);
    let took = t0.elapsed().as_secs_f64();
    assert_eq!((code, &rep["status"]), (3, &"incomplete".into()), "{err}");
    assert!(took < 6.0, "a 1 s window took {took:.2}s");
    let copied = rep["bytes_transferred"].as_u64().unwrap();
    assert!(copied < size as u64 / 8, "{copied} bytes copied: {rep}");
    let waited = rep["bwlimit_wait_seconds"].as_f64().unwrap();
    let duration = rep["duration_seconds"].as_f64().unwrap();
    assert!(
        waited > 0.5 && waited <= duration,
        "waited {waited:.2}s of {duration:.2}s: {rep}"
    );
    // The copy given up is named with the time it needs at the limit: a window that
    // never leaves that long never backs it up, run after run, and nothing said so.
    let warned = rep["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w.as_str())
        .any(|w| {
            w.contains("gave up 1 copy under the bandwidth limit: big (67108864 bytes, about 128 s at the limit)")
                && w.contains("widen the window or raise --bwlimit")
        });
    assert!(warned, "{rep}");
    // And on stderr: the summary says only "backup window ended" (it was in the report
    // alone before, so an operator at a terminal never saw it).
    assert!(
        err.contains("gave up 1 copy under the bandwidth limit: big"),
        "{err}"
    );
    // Nothing of the abandoned copy is taken: the next run copies it whole.
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        rep["bytes_transferred"].as_u64().unwrap(),
        size as u64 + 5,
        "{rep}"
    );
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "snapshot after the cut run",
    );
}

/// Copies under `--bwlimit` are served in the order they started, so every window
/// finishes the oldest: two files that each need 2 s of the limit alone, copied at
/// once by two workers in a 3 s window. Shared evenly, each needed 4 s: both were cut
/// and thrown away at the end of every window, and the backup never finished ("gave up
/// 2 copies ... about 2 s at the limit", run after run).
#[test]
fn throttled_copies_cut_by_every_window_still_finish_one_window_at_a_time() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    let size = 1 << 20; // read + written: 2 MiB, 2 s at 1 MiB/s
    // In two directories, so the two workers take one each.
    for (i, d) in ["a", "b"].iter().enumerate() {
        write(&src.join(d).join("big"), &vec![b'a' + i as u8; size]);
    }
    std::fs::create_dir(&dest).unwrap();
    // Older than the racy margin (2 s), so a copy finished in a cut run is resumed.
    std::thread::sleep(Duration::from_millis(2100));
    let args = ["--bwlimit", "1MiB", "--window", "3s", "--jobs", "2"];
    let (code, rep, err) = backup(&src, &dest, &args, &[]);
    assert_eq!((code, &rep["status"]), (3, &"incomplete".into()), "{err}");
    assert_eq!(
        rep["files_transferred"], 1,
        "the oldest copy finishes: {rep}"
    );
    let (code, rep, err) = backup(&src, &dest, &args, &[]);
    assert_eq!(
        code, 0,
        "the second window finishes the other: {err}\n{rep}"
    );
    assert_eq!(rep["files_transferred"], 1, "{rep}");
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "snapshot after two windows",
    );
}

/// The calls `latencyfs --stats` counted, by name.
fn stats(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// A run cut after its 10th copy, on a store seen through latencyfs; then a second run
/// resumes and is counted: the copies the first run finished are kept in place, neither
/// read again (to hash them) nor linked into a new tree, so a window cut short of the
/// end loses none of its work to the next one (they cost about as much as a copy each,
/// and on a slow store a resumed window finished less than a fresh one). The second run
/// plays one after a restart (another boot id): the cut run flushed its tree before it
/// marked its record synced, so its copies are trusted across a power cut too.
#[test]
fn a_resumed_run_neither_reads_nor_links_the_copies_the_cut_run_finished() {
    let (t, src, _) = setup();
    let under = t.path().join("under");
    std::fs::create_dir(&under).unwrap();
    let mnt = t.path().join("mnt");
    let counted = t.path().join("stats.json");
    let dest = mnt.join("backup");
    {
        let Some(_fs) = FaultFs::mount(&under, &mnt, &[]) else {
            return;
        };
        std::fs::create_dir(&dest).unwrap();
        let out = interrupted_at_the_10th_copy(&src, &dest);
        let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rep["status"], "incomplete");
    }
    let s = counted.to_str().unwrap();
    let fs = FaultFs::mount(&under, &mnt, &["--stats", s]).unwrap();
    let (code, rep, err) = backup(
        &src,
        &dest,
        &[],
        &[("SNAPRING_TEST_BOOT_ID", "a-boot-after-a-restart")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(rep["files_linked"].as_u64().unwrap() >= 9, "{rep}");
    assert!(
        rep["bytes_transferred"].as_u64().unwrap() <= 11 * 100_000,
        "{rep}"
    );
    drop(fs);
    let n = stats(&counted);
    assert_eq!(n["link"], 0, "resumed copies linked again: {n}");
    // Opened for reading: the run's own files in .snapring (lock, records), never a copy.
    assert!(
        n["open"].as_u64().unwrap() < 9,
        "resumed copies read again: {n}"
    );
    assert_same_tree(
        &describe(&src),
        &describe(&under.join("backup/daily.0")),
        "resumed snapshot",
    );
    assert_verify_clean(&under.join("backup"), &[]);
}

/// A run that took a cut run's tree over and then fails (an I/O error as it walks, or
/// as it publishes) keeps that tree for the next run, as the cut run's tree was kept
/// before runs took it over: a failure never throws away what an earlier window
/// copied. The fourth run copies nothing the others finished.
#[test]
fn a_resumed_run_that_fails_keeps_the_tree_it_took_over() {
    let (_t, src, dest) = setup();
    interrupted_at_the_10th_copy(&src, &dest);
    let staged = || {
        std::fs::read_dir(dest.join(".snapring/staging"))
            .unwrap()
            .count()
    };
    for (point, what) in [
        ("walk.copy=error", "a copy failed"),
        ("backup.before_publish=error", "the publish failed"),
    ] {
        let (code, rep, err) = backup(&src, &dest, &[], &[("SNAPRING_FAILPOINTS", point)]);
        assert!(code != 0 && code != 3, "{what}: {code} {rep} {err}");
        assert!(
            snapshot_names(&dest).is_empty(),
            "{what}: nothing published"
        );
        assert_eq!(staged(), 1, "{what}: the taken-over tree is kept");
    }
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["bytes_transferred"], 0, "copied again: {rep}");
    assert_eq!(rep["files_linked"], 20, "{rep}");
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "resumed snapshot",
    );
    assert_eq!(staged(), 0, "staging cleaned up");
    assert_verify_clean(&dest, &[]);
}

/// Directories swapped between a cut run and its resume (a release switch: `mv A C;
/// mv B A; mv C B`) keep their files' ctimes, sizes, times, modes and owners: a copy
/// the cut run finished as `A/f` is not the file now at `A/f`. Before, the resumed
/// snapshot held the old bytes at both paths, `complete`, and `verify` was clean. Both
/// ways a cut run ends: SIGINT (its record lists its copies, now with their source
/// inodes) and SIGKILL (its record has no entries: each copy left is checked, now
/// against the source's bytes too).
#[test]
fn a_resumed_run_keeps_no_copy_of_a_file_swapped_away_with_its_directory() {
    for signal in [rustix::process::Signal::INT, rustix::process::Signal::KILL] {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("src"), t.path().join("backup"));
        for i in 0..20 {
            let f = src.join(format!("d{i:02}/f"));
            write(&f, &vec![i as u8; 100_000]);
            set_mtime(&f, 1_700_000_000, 0);
        }
        std::fs::create_dir(&dest).unwrap();
        std::thread::sleep(Duration::from_millis(2100));
        let Paused { child, pause } = spawn_paused(&src, &dest, &[], "walk.after_copy", 10);
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            signal,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let _ = std::fs::remove_file(&pause);
        child.wait_with_output().unwrap();
        assert!(
            snapshot_names(&dest).is_empty(),
            "{signal:?}: nothing published"
        );
        for i in (0..20).step_by(2) {
            let (a, b, c) = (
                src.join(format!("d{i:02}")),
                src.join(format!("d{:02}", i + 1)),
                src.join("swap"),
            );
            std::fs::rename(&a, &c).unwrap();
            std::fs::rename(&b, &a).unwrap();
            std::fs::rename(&c, &b).unwrap();
        }
        let (code, rep, err) = backup(&src, &dest, &[], &[]);
        assert_eq!(code, 0, "{signal:?}: {rep} {err}");
        assert_same_tree(
            &describe(&src),
            &describe(&dest.join("daily.0")),
            &format!("resumed after {signal:?} and a swap"),
        );
        assert_verify_clean(&dest, &[]);
    }
}

/// A run killed (SIGKILL) after some 1,200 copies leaves a streamed record
/// (`.done.tmp`) naming many of them, written before its copies reached the disk. A
/// power cut can then keep the record and lose the copies' data (ext4's delayed
/// allocation brings a copy back empty; a sparse copy, sized first, full-size and
/// zero-filled), their times as set. Played here: every copy emptied or zeroed, its
/// mtime put back, and the next run in another boot (`SNAPRING_TEST_BOOT_ID`). Before,
/// that run kept every copy the record named unread: the snapshot held the empty and
/// zeroed files, `complete`, and `verify` was clean. Now a record not marked synced
/// is trusted only in the boot that wrote it: each copy is checked, and copied again.
#[test]
fn a_killed_runs_record_is_not_trusted_after_a_restart() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    for i in 0..1500 {
        let f = src.join(format!("d{}/f{i:04}", i % 10));
        write(&f, format!("file {i} ").repeat(20).as_bytes());
    }
    std::fs::create_dir(&dest).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let Paused { mut child, pause } = spawn_paused_env(
        &src,
        &dest,
        &[],
        "walk.after_copy",
        1200,
        &[("SNAPRING_TEST_BOOT_ID", "the-boot-before")],
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_file(&pause);
    assert!(snapshot_names(&dest).is_empty(), "nothing published");
    // The streamed record holds entries (its 64 KiB buffer was written out at least
    // once: hundreds of entries of some 100 bytes).
    let records: Vec<u64> = std::fs::read_dir(dest.join(".snapring/manifests"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".done.tmp"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert!(
        records.len() == 1 && records[0] >= 32 << 10,
        "the killed run's record: {records:?}"
    );
    // The power cut: every copy's data lost, its size (sparse) or not, its times kept.
    let mut lost = 0;
    let mut stack = vec![dest.join(".snapring/staging")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                f.set_len(0).unwrap();
                if lost % 2 == 1 {
                    f.set_len(m.len()).unwrap();
                }
                drop(f);
                set_mtime(&p, m.mtime(), m.mtime_nsec());
                lost += 1;
            }
        }
    }
    assert!(lost >= 1000, "{lost} copies in the killed run's tree");
    let (code, rep, err) = backup(
        &src,
        &dest,
        &[],
        &[("SNAPRING_TEST_BOOT_ID", "the-boot-after")],
    );
    assert_eq!(code, 0, "{rep} {err}");
    assert_eq!(rep["status"], "complete", "{rep}");
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "snapshot resumed after a power cut",
    );
    assert_verify_clean(&dest, &[]);
}

/// The records (`manifests/*.done`, `*.done.tmp`) in store `dest`.
fn done_records(dest: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dest.join(".snapring/manifests"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".done") || n.ends_with(".done.tmp"))
        .collect();
    v.sort();
    v
}

/// A staging tree discarded by an older snapring left its record of copies
/// (`manifests/<id>.done`) behind, with no `staging/<id>`, and no later run removed it
/// (some hundred bytes a file: 192 MiB for a million files). Played here: a run cut by
/// SIGINT, its staging tree then removed as that version did, and a stray record of
/// another id. The next backup publishes and deletes both records.
#[test]
fn a_record_of_copies_whose_staging_tree_is_gone_is_removed_by_the_next_backup() {
    let (_t, src, dest) = setup();
    interrupted_at_the_10th_copy(&src, &dest);
    let staging: Vec<PathBuf> = std::fs::read_dir(dest.join(".snapring/staging"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(staging.len(), 1, "{staging:?}");
    let id = staging[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(done_records(&dest), [format!("{id}.done")]);
    std::fs::remove_dir_all(&staging[0]).unwrap();
    let stray = dest.join(".snapring/manifests/20261101T000000Z-0a0b0c.done.tmp");
    std::fs::copy(dest.join(format!(".snapring/manifests/{id}.done")), &stray).unwrap();
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{rep} {err}");
    assert_eq!(rep["status"], "complete", "{rep}");
    assert_eq!(done_records(&dest), Vec::<String>::new(), "{rep}");
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "the snapshot after the stray records",
    );
    assert_verify_clean(&dest, &[]);
}

/// The backup window is counted from the run's start, its pre_command inside it (as
/// docs/daemon.md says): a pre_command still running when the window ends is killed
/// and the run ends `incomplete` (exit 3) with nothing read, its post_command still
/// run (under its own timeout) and told so; the next run goes on as after any cut
/// run. The window started after the pre_command: a long one (a dump, a volume
/// snapshot) overran the window by up to `hook_timeout` (here the 8 s pre_command ran
/// to its end and the run then completed, exit 0, 8 s into a 2 s window).
#[test]
fn a_window_that_ends_during_the_pre_command_ends_the_run_incomplete() {
    let (t, src, dest) = setup();
    let heard = t.path().join("post-heard");
    let post = format!("sh -c 'echo $SNAPRING_STATUS > {}'", heard.display());
    let t0 = std::time::Instant::now();
    let (code, rep, err) = backup(
        &src,
        &dest,
        &[
            "--window",
            "2s",
            "--pre-command",
            "sleep 8",
            "--post-command",
            &post,
        ],
        &[],
    );
    let took = t0.elapsed().as_secs_f64();
    assert_eq!(
        (code, &rep["status"]),
        (3, &"incomplete".into()),
        "{err}\n{rep}"
    );
    assert!(took < 6.0, "a 2 s window took {took:.2}s");
    assert!(
        rep["message"]
            .as_str()
            .unwrap()
            .starts_with("backup window ended during the pre_command"),
        "{rep}"
    );
    // Its pre_command's error says the window killed it (it said "snapring was
    // interrupted").
    assert_eq!(
        rep["pre_command"]["error"], "killed: the backup window ended while it ran",
        "{rep}"
    );
    assert_eq!(rep["files_total"], 0, "nothing read: {rep}");
    assert!(snapshot_names(&dest).is_empty(), "nothing published");
    assert_eq!(
        std::fs::read_to_string(&heard).unwrap().trim(),
        "incomplete",
        "the post_command ran after the window ended"
    );
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!((code, &rep["status"]), (0, &"complete".into()), "{err}");
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "the run after the cut one",
    );
}

/// A file an interrupted run copied while it was changed just before that run began
/// (within the racy margin) is taken by the next run from that run's tree, its bytes
/// hashed as its source's: a copy as good as one the next run makes itself. Its
/// adoption record gave it the interrupted run's start as its bound, which the file's
/// change is past, so a third run, adopting the second's tree, copied it again. Here
/// the first run's tree is resumed from as a separate tree (a newer, empty leftover is
/// the one taken over in place), and is gone before the third run: the third copies
/// only the files the second did not reach.
#[test]
fn a_file_resumed_from_a_racy_copy_is_not_copied_again_by_the_run_after() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    for i in 0..20 {
        write(&src.join(format!("f{i:02}")), &vec![i as u8; 100_000]);
    }
    std::fs::create_dir(&dest).unwrap();
    // Changed as it began (no wait): its ten copies are racy.
    interrupted_at_the_10th_copy(&src, &dest);
    let staging = dest.join(".snapring/staging");
    let first = std::fs::read_dir(&staging)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    // A newer leftover, empty (named after the first run's second), taken over in place.
    let stamp = first.split('-').next().unwrap();
    std::fs::create_dir(staging.join(format!("{stamp}-zzzzzzzz"))).unwrap();
    // The second run starts past the racy margin of the files' change.
    std::thread::sleep(Duration::from_millis(2100));
    let out = interrupted_at_copy(&src, &dest, 5);
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["files_linked"], 10, "{rep}");
    assert_eq!(rep["files_transferred"], 5, "{rep}");
    std::fs::remove_dir_all(staging.join(&first)).unwrap();
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        rep["files_transferred"], 5,
        "the third run copied again files the second resumed: {rep}"
    );
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "the third run's snapshot",
    );
}
