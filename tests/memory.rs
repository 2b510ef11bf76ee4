//! Memory is bounded by the directories in flight, not by the tree: peak RSS of a full
//! and of an incremental backup at 100k and at 400k files stays within 20%.

mod common;
use common::*;

use std::path::Path;

/// `dirs` directories of 100 small files, two levels deep. Nine files in each hold data,
/// the rest are empty: memory is per entry, not per byte, and 400k files of data in one
/// 4 KiB block each (source and backup) once filled a CI machine's disk.
fn make_tree(root: &Path, dirs: usize) {
    for d in 0..dirs {
        let p = root.join(format!("top{}", d / 100)).join(format!("dir{d}"));
        std::fs::create_dir_all(&p).unwrap();
        for f in 0..100 {
            std::fs::write(
                p.join(format!("file{f}")),
                vec![b'x'; if f < 10 { f * 7 } else { 0 }],
            )
            .unwrap();
        }
    }
}

/// Peak RSS (bytes) of a full and then an incremental backup.
fn peaks(src: &Path, dest: &Path, files: u64) -> (u64, u64) {
    let mut out = Vec::new();
    for _ in 0..2 {
        let (code, rep, err) = backup(src, dest, &["--jobs", "64"], &[]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(rep["files_total"], files);
        out.push(rep["peak_rss_bytes"].as_u64().unwrap());
    }
    (out[0], out[1])
}

#[test]
fn peak_memory_does_not_grow_with_the_number_of_files() {
    let t = tempfile::tempdir().unwrap();
    let (small, big) = (t.path().join("small"), t.path().join("big"));
    make_tree(&small, 1000);
    let (s_full, s_incr) = peaks(&small, &t.path().join("b-small"), 100_000);
    for done in [small, t.path().join("b-small")] {
        std::fs::remove_dir_all(&done).unwrap();
    }
    make_tree(&big, 4000);
    let (b_full, b_incr) = peaks(&big, &t.path().join("b-big"), 400_000);
    eprintln!(
        "peak RSS: 100k files full {s_full} incremental {s_incr}; 400k files full {b_full} incremental {b_incr}"
    );
    for (a, b, what) in [(s_full, b_full, "full"), (s_incr, b_incr, "incremental")] {
        let ratio = b as f64 / a as f64;
        assert!(
            ratio <= 1.2,
            "{what}: peak RSS grew {ratio:.2}x from 100k to 400k files ({a} -> {b} bytes)"
        );
    }
    assert!(b_full < 64 << 20, "400k files took {b_full} bytes");
}

/// Peak RSS of a one-worker shard run of `src` into a new store `dest` (the finalizer's,
/// from its run record).
fn shard_peak(src: &Path, dest: &Path) -> u64 {
    std::fs::create_dir_all(dest).unwrap();
    let out = snapring(
        &[
            "backup".as_ref(),
            "--jobs".as_ref(),
            "8".as_ref(),
            "--source".as_ref(),
            src.as_os_str(),
            "--dest".as_ref(),
            dest.as_os_str(),
            "--shard".as_ref(),
            "0/1".as_ref(),
            "--run-id".as_ref(),
            "mem".as_ref(),
        ],
        &[("SNAPRING_CATALOG", "off")],
    );
    assert!(out.status.success(), "{out:?}");
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join(".snapring/runs/mem.json")).unwrap())
            .unwrap();
    assert_eq!(rec["files_total"], 100_000, "{rec}");
    rec["peak_rss_bytes"].as_u64().unwrap()
}

/// Found by a hostile run: a shard run's finalizer took 1.3 KB more per file whose inode
/// has a second name outside the source (a source holding other backup trees): 454 MB
/// at 300k such files, against 75 MB without the outside names, since each of those
/// files was a hard-link group of its own, given room for four members. Groups are
/// counted first now, and only those with several members in the run are kept.
#[test]
fn files_linked_from_outside_the_source_cost_a_shard_finalizer_little_memory() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_tree(&src, 1000);
    let plain = shard_peak(&src, &t.path().join("b-plain"));
    // A second name for every file, outside the source.
    for e in walkdir_files(&src) {
        let to = t.path().join("outside").join(e.strip_prefix(&src).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::hard_link(&e, &to).unwrap();
    }
    let linked = shard_peak(&src, &t.path().join("b-linked"));
    let per_file = linked.saturating_sub(plain) as f64 / 100_000.0;
    eprintln!(
        "shard finalizer peak RSS: {plain} plain, {linked} with outside links ({per_file:.0} bytes more per file)"
    );
    assert!(
        per_file < 900.0,
        "{per_file:.0} bytes more per file linked from outside ({plain} -> {linked})"
    );
}

/// The regular files under `root`.
fn walkdir_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}
