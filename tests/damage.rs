//! Damage: a store whose bookkeeping files are corrupt or missing still backs up
//! correctly (falling back to comparison by stat), and a rotation that fails with an
//! error is finished by the next command and its run recorded as published.

mod common;
use common::*;

use std::path::{Path, PathBuf};

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    for i in 0..30 {
        write(
            &src.join(format!("d{}/f{i}", i % 3)),
            format!("content {i}").as_bytes(),
        );
    }
    std::fs::create_dir(&dest).unwrap();
    (t, src, dest)
}

fn manifest_files(store: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(store.join(".snapring/manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect()
}

#[test]
fn corrupt_bookkeeping_degrades_to_stat_comparison() {
    for damage in ["state", "manifest", "index", "no-index"] {
        let (_t, src, dest) = setup();
        assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
        match damage {
            "state" => {
                std::fs::write(dest.join(".snapring/snapshots.json"), b"{ not json").unwrap()
            }
            "manifest" => std::fs::write(
                &manifest_files(&dest, "mf")[0],
                b"snapring-manifest 1\nS 1.000000000\nD .\ngarbage line\n",
            )
            .unwrap(),
            "index" => std::fs::write(&manifest_files(&dest, "idx")[0], b"SRIDX01\nshort").unwrap(),
            _ => std::fs::remove_file(&manifest_files(&dest, "idx")[0]).unwrap(),
        }
        write(&src.join("d0/f0"), b"changed after the damage");
        let (code, rep, err) = backup(&src, &dest, &[], &[]);
        assert_eq!(code, 0, "{damage}: {err}");
        assert_eq!(rep["status"], "complete", "{damage}");
        assert_eq!(
            rep["files_transferred"], 1,
            "{damage}: only the changed file is copied: {rep}"
        );
        assert_same_tree(&describe(&src), &describe(&dest.join("daily.0")), damage);
        // And the store is healthy again: the next run links everything by manifest.
        let (code, rep, _) = backup(&src, &dest, &[], &[]);
        assert_eq!(code, 0);
        assert_eq!(rep["files_linked"], 30, "{damage}: {rep}");
    }
}

/// A rotation step that fails with an error (not a crash) fails the run; the journal
/// stays, the next command finishes the rotation and the run's record says published.
#[test]
fn failed_rotation_is_finished_by_the_next_command() {
    let (_t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    write(&src.join("d1/f1"), b"second version");
    let (code, rep, _) = backup(
        &src,
        &dest,
        &[],
        &[("SNAPRING_FAILPOINTS", "rotate.step=error@2")],
    );
    assert_eq!(code, 1, "{rep}");
    assert!(
        rep["message"]
            .as_str()
            .unwrap()
            .contains("failpoint rotate.step fired"),
        "{rep}"
    );
    assert!(dest.join(".snapring/journal").exists());
    let out = snapring(&["list".as_ref(), "--dest".as_ref(), dest.as_os_str()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dest.join(".snapring/journal").exists());
    assert_eq!(snapshot_names(&dest), ["daily.0", "daily.1"]);
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "published by repair",
    );
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dest.join(format!(
            ".snapring/runs/{}.json",
            rep["id"].as_str().unwrap()
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(rec["status"], "complete", "{rec}");
    assert!(
        rec["message"]
            .as_str()
            .unwrap()
            .starts_with("published by a later repair"),
        "{rec}"
    );
}
