//! Incremental behaviour and rotation: unchanged files share an inode with the previous
//! snapshot; a change of content or metadata makes a new inode and leaves the older
//! snapshot exactly as it was; rotation keeps `--retain` snapshots; trees without a
//! manifest (rsnapshot, cp -a) are taken over by linking; --dry-run changes nothing.

mod common;
use common::*;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&dest).unwrap();
    for i in 0..50 {
        write(
            &src.join(format!("d{}/f{i}", i % 5)),
            format!("content {i}").as_bytes(),
        );
    }
    (t, src, dest)
}

fn ok(src: &Path, dest: &Path, extra: &[&str]) -> serde_json::Value {
    let (code, rep, err) = backup(src, dest, extra, &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    rep
}

#[test]
fn unchanged_tree_copies_nothing_and_shares_inodes() {
    let (_t, src, dest) = setup();
    let first = ok(&src, &dest, &[]);
    assert_eq!(first["files_transferred"], 50);
    // No --jobs: on local temp dirs the default is the local one (4 per CPU), recorded.
    assert_eq!(first["jobs"], snapring::concurrency::local_jobs());
    let second = ok(&src, &dest, &["--jobs", "3"]);
    assert_eq!(second["jobs"], 3);
    assert_eq!(second["files_transferred"], 0);
    assert_eq!(second["bytes_transferred"], 0);
    assert_eq!(second["files_linked"], 50);
    assert_eq!(second["based_on"], first["id"]);
    for i in 0..50 {
        let rel = format!("d{}/f{i}", i % 5);
        assert_eq!(
            ino(&dest.join("daily.0").join(&rel)),
            ino(&dest.join("daily.1").join(&rel)),
            "{rel}"
        );
    }
}

/// The `cp -al` + rsync bug: a chmod/chown on the source must not reach older snapshots.
#[test]
fn metadata_change_makes_a_new_inode_and_spares_the_old_snapshot() {
    let (_t, src, dest) = setup();
    let f = src.join("d0/f0");
    chmod(&f, 0o600);
    chown(&f, 100, 200);
    let g = src.join("d1/f1");
    ok(&src, &dest, &[]);
    let old = describe(&dest.join("daily.0"));

    chmod(&f, 0o4755);
    chown(&g, 300, 400);
    set_xattr(&src.join("d2/f2"), "user.tag", b"new");
    write(&src.join("d3/f3"), b"changed content, same name");
    let rep = ok(&src, &dest, &[]);
    assert_eq!(rep["files_transferred"], 4, "{rep}");
    assert_eq!(rep["files_linked"], 46);

    // The older snapshot is exactly as it was: modes, owners, xattrs, content.
    assert_same_tree(
        &old,
        &describe(&dest.join("daily.1")),
        "older snapshot after metadata changes",
    );
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "newest snapshot",
    );
    for rel in ["d0/f0", "d1/f1", "d2/f2", "d3/f3"] {
        assert_ne!(
            ino(&dest.join("daily.0").join(rel)),
            ino(&dest.join("daily.1").join(rel)),
            "{rel} must be a new inode"
        );
    }
    let m = std::fs::metadata(dest.join("daily.1/d0/f0")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, 100, 200));
}

#[test]
fn rotation_keeps_retain_snapshots_and_shifts_them() {
    let (_t, src, dest) = setup();
    let mut ids = Vec::new();
    for i in 0..5 {
        write(&src.join("counter"), format!("{i}").as_bytes());
        ids.push(
            ok(&src, &dest, &["--retain", "3", "--folder", "fs-9"])["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let store = dest.join("fs-9");
    assert_eq!(snapshot_names(&store), ["daily.0", "daily.1", "daily.2"]);
    for (slot, want) in [(0, "4"), (1, "3"), (2, "2")] {
        assert_eq!(
            std::fs::read_to_string(store.join(format!("daily.{slot}/counter"))).unwrap(),
            want
        );
    }
    // Expired snapshots and their manifests are gone; trash is empty.
    assert_eq!(
        std::fs::read_dir(store.join(".snapring/trash"))
            .unwrap()
            .count(),
        0
    );
    let manifests: Vec<_> = std::fs::read_dir(store.join(".snapring/manifests"))
        .unwrap()
        .collect();
    assert_eq!(manifests.len(), 6, "3 snapshots × (.mf + .idx)");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join(".snapring/snapshots.json")).unwrap())
            .unwrap();
    let recorded: Vec<(&str, &str)> = state["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        recorded,
        [
            ("daily.0", ids[4].as_str()),
            ("daily.1", ids[3].as_str()),
            ("daily.2", ids[2].as_str())
        ]
    );
    // Another label lives beside it and does not disturb the daily ring.
    let rep = ok(
        &src,
        &dest,
        &["--retain", "2", "--folder", "fs-9", "--label", "weekly"],
    );
    assert_eq!(
        rep["files_transferred"], 0,
        "weekly links against the newest daily"
    );
    assert_eq!(
        snapshot_names(&store),
        ["daily.0", "daily.1", "daily.2", "weekly.0"]
    );
}

#[test]
fn manifest_has_a_hash_for_every_file_inherited_when_linked() {
    let (_t, src, dest) = setup();
    ok(&src, &dest, &[]);
    ok(&src, &dest, &[]);
    let manifests = dest.join(".snapring/manifests");
    let mut files = 0;
    for e in std::fs::read_dir(&manifests).unwrap() {
        let p = e.unwrap().path();
        if p.extension().unwrap() != "mf" {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("snapring-manifest 1\n"));
        for line in text.lines().filter(|l| l.starts_with("f ")) {
            let f: Vec<&str> = line.split(' ').collect();
            let name = f[12];
            let i: usize = name.trim_start_matches('f').parse().unwrap();
            assert_eq!(
                f[8],
                blake3::hash(format!("content {i}").as_bytes())
                    .to_hex()
                    .as_str(),
                "{line}"
            );
            files += 1;
        }
    }
    assert_eq!(files, 100);
}

/// A tree made by `cp -a` (or rsnapshot, or rsync) with no manifest is taken over.
#[test]
fn takes_over_a_tree_without_manifest() {
    let (_t, src, dest) = setup();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(dest.join("daily.0"))
        .status()
        .unwrap();
    assert!(status.success());
    let rep = ok(&src, &dest, &[]);
    assert_eq!(rep["files_transferred"], 0, "{rep}");
    assert_eq!(rep["files_linked"], 50);
    assert_eq!(rep["based_on"], "daily.0");
    assert_eq!(
        ino(&dest.join("daily.0/d0/f0")),
        ino(&dest.join("daily.1/d0/f0"))
    );
    // The manifest still has every hash (read once from the linked files).
    let rep2 = ok(&src, &dest, &[]);
    assert_eq!(rep2["files_linked"], 50);
    let mf = std::fs::read_to_string(dest.join(format!(
        ".snapring/manifests/{}.mf",
        rep["id"].as_str().unwrap()
    )))
    .unwrap();
    let hashed = mf
        .lines()
        .filter(|l| l.starts_with("f "))
        .filter(|l| l.split(' ').nth(8).is_some_and(|h| h.len() == 64))
        .count();
    assert_eq!(hashed, 50, "{mf}");
}

#[test]
fn dry_run_changes_nothing_and_prints_the_plan() {
    let (_t, src, dest) = setup();
    ok(&src, &dest, &["--retain", "2"]);
    ok(&src, &dest, &["--retain", "2"]);
    write(&src.join("d0/new"), b"new");
    let before = describe(&dest);
    let out = snapring(
        &[
            "backup".as_ref(),
            "--source".as_ref(),
            src.as_os_str(),
            "--dest".as_ref(),
            dest.as_os_str(),
            "--retain".as_ref(),
            "2".as_ref(),
            "--dry-run".as_ref(),
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = String::from_utf8(out.stdout).unwrap();
    assert!(plan.contains("copy d0/new (new)"), "{plan}");
    assert!(plan.contains("link d0/f0"), "{plan}");
    assert!(plan.contains("expire daily.1"), "{plan}");
    assert!(plan.contains("rename daily.0 -> daily.1"), "{plan}");
    assert!(plan.contains("publish daily.0"), "{plan}");
    assert_same_tree(&before, &describe(&dest), "store after dry run");
    // A dry run into a store that does not exist yet creates nothing.
    let fresh = dest.parent().unwrap().join("nothing-here");
    std::fs::create_dir(&fresh).unwrap();
    let out = snapring(
        &[
            "backup".as_ref(),
            "--source".as_ref(),
            src.as_os_str(),
            "--dest".as_ref(),
            fresh.as_os_str(),
            "--dry-run".as_ref(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(std::fs::read_dir(&fresh).unwrap().count(), 0);
}

#[test]
fn excludes_and_prefix() {
    let (_t, src, dest) = setup();
    write(&src.join("d0/cache/big.tmp"), b"x");
    write(&src.join("d0/keep.tmp"), b"x");
    write(&src.join("d1/cache"), b"a file named cache stays");
    ok(&src, &dest, &["--exclude", "*.tmp", "--exclude", "cache/"]);
    assert!(!dest.join("daily.0/d0/keep.tmp").exists());
    assert!(!dest.join("daily.0/d0/cache").exists());
    assert!(dest.join("daily.0/d1/cache").is_file());
    let store = dest.join("pfx");
    ok(&src, &store, &["--prefix", "/d2", "--label", "hourly"]);
    assert!(store.join("hourly.0/f2").is_file());
    assert_eq!(snapshot_names(&store), ["hourly.0"]);
}

/// A same-size rewrite that keeps the old mtime, right after a backup (the "racy"
/// window, where equal timestamps prove nothing), is still caught: the file is re-hashed
/// and copied because its bytes differ.
#[test]
fn same_size_rewrite_in_the_racy_window_is_caught() {
    let (_t, src, dest) = setup();
    let f = src.join("d0/f0");
    ok(&src, &dest, &[]);
    let m = std::fs::metadata(&f).unwrap();
    std::fs::write(&f, b"CONTENT 0").unwrap(); // same length as "content 0"
    set_mtime(&f, m.mtime(), m.mtime_nsec());
    let rep = ok(&src, &dest, &[]);
    assert_eq!(
        std::fs::read(dest.join("daily.0/d0/f0")).unwrap(),
        b"CONTENT 0"
    );
    assert_eq!(
        std::fs::read(dest.join("daily.1/d0/f0")).unwrap(),
        b"content 0"
    );
    assert_eq!(rep["files_transferred"], 1, "{rep}");
}

/// The shipped example config parses and every job in it resolves.
#[test]
fn example_config_is_valid() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/snapring.toml");
    // `config check` looks for the notifiers' secrets where it runs.
    let out = snapring(
        &["config".as_ref(), "check".as_ref(), p.as_os_str()],
        &[
            (
                "SNAPRING_SLACK_WEBHOOK",
                "https://hooks.slack.com/services/T/B/X",
            ),
            ("SMTP_PASSWORD", "pw"),
        ],
    );
    // `config check` looks for a command notifier's program where it runs: the
    // example's pager, unless installed here, is its one problem, and the only one
    // (tests/daemon.rs `examples_parse_and_next_previews_schedules` alike).
    let text = String::from_utf8_lossy(&out.stdout);
    if std::path::Path::new("/usr/local/bin/page-oncall").exists() {
        assert_eq!(out.status.code(), Some(0), "{text}");
    } else {
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("notify.pager-hook.command: program /usr/local/bin/page-oncall"),
            "{text}"
        );
        assert!(lines[1].ends_with(": 1 problem"), "{text}");
    }
}

/// With --json, a dry run's plan goes to stderr so stdout stays one JSON document.
#[test]
fn dry_run_json_keeps_stdout_parseable() {
    let (_t, src, dest) = setup();
    let (code, rep, err) = backup(&src, &dest, &["--dry-run"], &[]);
    assert_eq!(code, 0);
    assert_eq!(rep["dry_run"], true, "stdout was not JSON");
    assert_eq!(rep["files_transferred"], 50);
    assert!(err.contains("copy d0/f0 (new)"), "{err}");
}

/// A job from a config file, with a flag overriding one of its values.
#[test]
fn backup_from_a_config_job_with_flag_overrides() {
    let (t, src, dest) = setup();
    let cfg = t.path().join("snapring.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.home]\nsource = {:?}\ndest = {:?}\nfolder = \"fs-1\"\nlabel = \"hourly\"\nretain = 5\nexclude = [\"f1*\"]\n\n[job.other]\nsource = \"/nonexistent\"\ndest = \"/nonexistent-backup\"\n",
            src.display().to_string(),
            dest.display().to_string()
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "backup".as_ref(),
            "--json".as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let out = snapring(&args, &[]);
        (
            out.status.code(),
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = run(&[]);
    // Which job to run is the command line's to say: a usage error (1 before session 27).
    assert_eq!(code, Some(64));
    assert!(
        err.contains("the config has 2 jobs; name one with --job"),
        "{err}"
    );
    let (code, rep, err) = run(&["--job", "home", "--retain", "1"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(rep["job"], "home");
    assert_eq!(rep["label"], "hourly");
    assert_eq!(rep["retain"], 1, "the flag wins over the file");
    assert_eq!(snapshot_names(&dest.join("fs-1")), ["hourly.0"]);
    assert!(
        !dest.join("fs-1/hourly.0/d1/f1").exists(),
        "excluded by the file's pattern"
    );
    assert!(dest.join("fs-1/hourly.0/d0/f0").exists());
}
