//! A damaged restic repository, as an operator meets one: the pack of the parent
//! snapshot's trees lost (a disk error, a bucket lifecycle rule, a hand-made "cleanup")
//! must not stop every later backup; the run reads the source in full, says so, and
//! once the index is repaired (`restic rebuild-index`, as restic's own troubleshooting
//! asks) the next backup stores what was lost again and its snapshot verifies clean.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::restic::*;
use common::*;

/// snapring with the test password and no tree cache (another machine, or the cache
/// cleared: the trees must come from the repository); (exit code, stdout, stderr).
fn sr_nocache(args: &[&str]) -> (i32, String, String) {
    let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let out = snapring(
        &a,
        &[("SNAPRING_PASSWORD", PASSWORD), ("SNAPRING_CACHE", "off")],
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn backup_json(src: &Path, url: &str) -> serde_json::Value {
    let args = [
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        url,
        "--json",
    ];
    let (code, out, err) = sr_nocache(&args);
    assert_eq!(code, 0, "backup: {out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Every pack of the repository at `repo`, smallest first.
fn packs_by_size(repo: &Path) -> Vec<(u64, PathBuf)> {
    let mut packs = Vec::new();
    for sub in std::fs::read_dir(repo.join("data")).unwrap().flatten() {
        for e in std::fs::read_dir(sub.path()).unwrap().flatten() {
            packs.push((e.metadata().unwrap().len(), e.path()));
        }
    }
    packs.sort();
    packs
}

#[test]
fn a_parent_whose_tree_pack_is_lost_does_not_stop_the_next_backups() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    // One big file (the data pack is the biggest), small files in two directories.
    write(&src.join("big/random"), &pseudo_random(3 << 20, 7));
    for d in ["a", "b/c"] {
        for i in 0..3 {
            write(
                &src.join(d).join(format!("f{i}")),
                format!("{d} {i}\n").as_bytes(),
            );
        }
    }
    let url = file_url(&repo);
    let (code, out, err) = sr_nocache(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{out}\n{err}");
    let first = backup_json(&src, &url);
    let first_id = first["snapshot"].as_str().unwrap().to_string();

    // Data and tree blobs are in separate packs; the smallest holds every tree.
    let packs = packs_by_size(&repo);
    assert_eq!(packs.len(), 2, "{packs:?}");
    std::fs::remove_file(&packs[0].1).unwrap();

    // The next backup cannot read its parent's trees: it reads every file instead,
    // writes its snapshot, and says what happened (before, it failed, and so did every
    // later one: no more backups until the parent snapshot was forgotten by hand).
    write(&src.join("a/f0"), b"changed\n");
    let second = backup_json(&src, &url);
    assert_eq!(second["status"], "complete", "{second}");
    assert_eq!(second["based_on"], first_id.as_str(), "{second}");
    let r = &second["repository"];
    assert_eq!(r["files_read"], 7, "{second}");
    assert_eq!(r["files_unchanged"], 0, "{second}");
    let warnings = second["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| {
            let w = w.as_str().unwrap();
            w.contains(&format!("parent snapshot {}", &first_id[..8]))
                && w.contains("cannot be read")
                && w.contains("read in full")
        }),
        "{second}"
    );
    // The text output says it too.
    write(&src.join("a/f1"), b"changed too\n");
    let (code, out, err) =
        sr_nocache(&["backup", "--source", src.to_str().unwrap(), "--dest", &url]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("snapring: warning: the parent snapshot"),
        "{out}\n{err}"
    );

    // With restic's index repaired (the lost trees no longer indexed), the next backup
    // stores them again: its snapshot is whole.
    let Some(restic) = restic_binary("repair by rebuild-index, then a clean backup") else {
        return;
    };
    run_restic(&restic, &repo, &["rebuild-index"]);
    let fourth = backup_json(&src, &url);
    assert_eq!(fourth["status"], "complete", "{fourth}");
    let (code, out, err) = sr_nocache(&["verify", "--dest", &url, "latest"]);
    assert_eq!(code, 0, "verify: {out}\n{err}");
    let to = t.path().join("restored");
    let (code, out, err) = sr_nocache(&[
        "restore",
        "--dest",
        &url,
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "restore: {out}\n{err}");
    assert_same_tree(&describe(&src), &describe(&to), "restored after the repair");
}

/// A repository of a format version this snapring does not know (a newer restic's) is
/// refused by every command with what it is, not called damaged, and left as it was.
#[test]
fn a_repository_of_a_newer_format_is_refused_clearly_and_left_alone() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("f"), b"data\n");
    let url = file_url(&repo);
    let (code, out, err) = sr_nocache(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{out}\n{err}");
    let r = snapring::restic::repo::Repo::open(&repo, PASSWORD.as_bytes()).unwrap();
    let mut config = r.config.clone();
    config.version = 3;
    let sealed = r.key.seal(&serde_json::to_vec(&config).unwrap());
    chmod(&repo.join("config"), 0o644);
    std::fs::write(repo.join("config"), &sealed).unwrap();
    let before = describe(&repo);
    for args in [
        vec!["backup", "--source", src.to_str().unwrap(), "--dest", &url],
        vec!["list", "--dest", &url],
        vec!["prune", "--dest", &url],
        vec![
            "restore",
            "--dest",
            &url,
            "latest",
            "--to",
            "/nonexistent/x",
        ],
    ] {
        let (code, out, err) = sr_nocache(&args);
        assert_eq!(code, 1, "{args:?}: {out}\n{err}");
        assert!(
            err.contains(&format!(
                "{} is a format version 3 repository; this snapring reads versions 1 and 2",
                repo.display()
            )),
            "{args:?}: {err}"
        );
    }
    assert_same_tree(
        &before,
        &describe(&repo),
        "the repository after the refusals",
    );
}

/// A snapshot file that does not read (the truncated file a killed restic 0.14 leaves,
/// as it writes in place; or bit rot) is left out with a warning by list, restore,
/// backup and retention, as `restic snapshots` leaves it out; prune refuses and
/// deletes nothing. Before, every command failed on it: no list, no restore of any
/// snapshot, no more backups.
#[test]
fn a_damaged_snapshot_file_stops_prune_but_not_list_restore_or_backup() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("f"), b"one\n");
    let url = file_url(&repo);
    let (code, out, err) = sr_nocache(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{out}\n{err}");
    backup_json(&src, &url);
    write(&src.join("f"), b"two\n");
    let second = backup_json(&src, &url);
    let second_id = second["snapshot"].as_str().unwrap().to_string();
    // Half of a snapshot file, under a name of its own.
    let whole = std::fs::read(repo.join("snapshots").join(&second_id)).unwrap();
    let bad = "ab".repeat(32);
    std::fs::write(repo.join("snapshots").join(&bad), &whole[..whole.len() / 2]).unwrap();

    let (code, out, err) = sr_nocache(&["list", "--dest", &url, "--json"]);
    assert_eq!(code, 0, "list: {out}\n{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert!(err.contains("snapshot abababab left out"), "{err}");

    let to = t.path().join("to");
    let (code, out, err) = sr_nocache(&[
        "restore",
        "--dest",
        &url,
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "restore: {out}\n{err}");
    assert_eq!(std::fs::read(to.join("f")).unwrap(), b"two\n");

    write(&src.join("f"), b"three\n");
    let args = [
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &url,
        "--retain",
        "1",
        "--json",
    ];
    let (code, out, err) = sr_nocache(&args);
    assert_eq!(code, 0, "backup: {out}\n{err}");
    let third: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(third["based_on"], second_id.as_str(), "{third}");
    assert_eq!(third["expired"].as_array().unwrap().len(), 2, "{third}");
    // Retention left the damaged file alone.
    assert!(repo.join("snapshots").join(&bad).is_file());

    let before = describe(&repo.join("data"));
    let (code, out, err) = sr_nocache(&["prune", "--dest", &url]);
    assert_eq!(code, 1, "prune: {out}\n{err}");
    assert!(err.contains(&format!("snapshots file {bad}")), "{err}");
    assert_same_tree(&before, &describe(&repo.join("data")), "data after prune");
}
