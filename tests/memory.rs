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
