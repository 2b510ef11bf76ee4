//! snapring and restic on the same repositories (docs/format.md, "restic repositories"):
//! what snapring writes passes `restic check --read-data` and restores with `restic
//! restore` into a tree equal to the source; what restic writes, snapring restores;
//! restic backing up the same data into a snapring-made repository adds no data blob
//! (same chunker, same blob ids). Tests that need Debian's `restic` print a line and
//! skip when it is not installed. Also snapring's own round trip (any byte-string
//! name), the incremental that reads nothing unchanged, and the password errors.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use common::restic::*;
use common::*;

fn sr_ok(args: &[&str]) -> String {
    let (code, out, err) = sr(args);
    assert_eq!(code, 0, "snapring {args:?}: {out}\n{err}");
    out
}

/// `snapring restore --dest file://REPO latest --to TARGET`, which must succeed.
fn restore_latest(repo: &Path, target: &Path) {
    sr_ok(&[
        "restore",
        "--dest",
        &file_url(repo),
        "latest",
        "--to",
        target.to_str().unwrap(),
    ]);
}

fn sr_backup(src: &Path, repo: &Path) -> serde_json::Value {
    sr_backup_with(src, repo, &[])
}

fn sr_backup_with(src: &Path, repo: &Path, extra: &[&str]) -> serde_json::Value {
    let url = file_url(repo);
    let mut args = vec![
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &url,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = sr_ok(&args);
    serde_json::from_str(&out).unwrap()
}

/// `snapring backup --json` of `src` into `repo`, paused at failpoint `point` until
/// the test removes `pause`; returns once it is paused there.
fn spawn_paused(src: &Path, repo: &Path, point: &str, pause: &Path) -> std::process::Child {
    let mut cmd = Command::new(bin());
    cmd.env("SNAPRING_CATALOG", "off")
        .args(["backup", "--json", "--source"])
        .arg(src)
        .arg("--dest")
        .arg(file_url(repo))
        .env("SNAPRING_PASSWORD", PASSWORD);
    paused_at(cmd, point, pause)
}

/// A source of every kind of entry with names restic 0.14 writes and reads alike (it
/// does not quote names: a name with `"`, `\`, control characters or bytes that are
/// not UTF-8 survives only between snapring and restic 0.17 and later; see
/// `snapring_round_trip_keeps_odd_names`). Multi-chunk files, so the chunker counts.
fn conformance_tree(src: &Path) {
    for n in [
        "with space",
        "caf\u{e9} \u{1f600}",
        "-leading-dash",
        "%41 percent",
        "<html>&",
    ] {
        write(&src.join("names").join(n), n.as_bytes());
    }
    write(&src.join("big/random"), &pseudo_random(5 << 20, 1));
    write(&src.join("big/zeros"), &vec![0u8; 3 << 20]);
    let mut mixed = pseudo_random(2 << 20, 2);
    mixed.extend(vec![b'x'; 1 << 20]);
    write(&src.join("big/mixed"), &mixed);
    write(&src.join("modes/setuid"), b"su");
    chown(&src.join("modes/setuid"), 1234, 5678);
    chmod(&src.join("modes/setuid"), 0o4755);
    write(&src.join("modes/none"), b"");
    chmod(&src.join("modes/none"), 0o000);
    std::fs::create_dir_all(src.join("modes/sticky")).unwrap();
    chmod(&src.join("modes/sticky"), 0o1777);
    std::os::unix::fs::symlink("../names/with space", src.join("modes/rel-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", src.join("modes/dangling")).unwrap();
    chown(&src.join("modes/dangling"), 7, 8);
    write(&src.join("links/a"), b"shared inode");
    std::fs::create_dir_all(src.join("links/sub")).unwrap();
    std::fs::hard_link(src.join("links/a"), src.join("links/sub/c")).unwrap();
    write(&src.join("attrs/file"), b"xattrs");
    set_xattr(&src.join("attrs/file"), "user.color", b"blue");
    set_xattr(&src.join("attrs/file"), "user.bin", b"\x00\x01\xff");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    std::fs::create_dir_all(src.join("empty/dir")).unwrap();
    set_mtime(&src.join("modes/dangling"), 1_500_000_000, 999_999_999);
    set_mtime(&src.join("fifo"), 1_300_000_000, 42);
    set_mtime(&src.join("big/zeros"), 1_600_000_000, 123_456_789);
    for d in [
        "names",
        "big",
        "modes/sticky",
        "modes",
        "links/sub",
        "links",
        "attrs",
        "empty/dir",
        "empty",
        "",
    ] {
        set_mtime(&src.join(d), 1_200_000_000, 987_654_321);
    }
}

#[test]
fn restic_checks_and_restores_what_snapring_wrote() {
    let Some(restic) = restic_binary("conformance") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo, target) = (
        t.path().join("src"),
        t.path().join("repo"),
        t.path().join("T"),
    );
    conformance_tree(&src);
    let want = describe(&src);
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    let r = sr_backup(&src, &repo);
    assert_eq!(r["status"], "complete", "{r}");
    run_restic(
        &restic,
        &repo,
        &[OsStr::new("check"), OsStr::new("--read-data")],
    );
    run_restic(
        &restic,
        &repo,
        &[
            OsStr::new("restore"),
            OsStr::new("latest"),
            OsStr::new("--target"),
            target.as_os_str(),
        ],
    );
    // restic nests the source's absolute path under the target.
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_same_tree(
        &want,
        &describe(&restored),
        "restic restore of a snapring backup",
    );
}

#[test]
fn restic_backup_of_the_same_data_adds_no_data_blobs() {
    let Some(restic) = restic_binary("conformance") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    conformance_tree(&src);
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    let r = sr_backup(&src, &repo);
    assert!(
        r["repository"]["data_blobs_added"].as_u64().unwrap() > 10,
        "{r}"
    );
    // --force: restic reads and chunks every file again instead of trusting the parent.
    let out = run_restic(
        &restic,
        &repo,
        &[
            OsStr::new("backup"),
            OsStr::new("--force"),
            OsStr::new("--json"),
            src.as_os_str(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message_type"] == "summary")
        .unwrap_or_else(|| panic!("no summary in restic's output:\n{text}"));
    assert_eq!(
        summary["data_blobs"], 0,
        "restic cut different chunks: {summary}"
    );
}

#[test]
fn snapring_restores_what_restic_wrote() {
    let Some(restic) = restic_binary("conformance") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo, target) = (
        t.path().join("src"),
        t.path().join("repo"),
        t.path().join("T"),
    );
    conformance_tree(&src);
    let want = describe(&src);
    run_restic(
        &restic,
        &repo,
        &[
            OsStr::new("init"),
            OsStr::new("--repository-version"),
            OsStr::new("2"),
        ],
    );
    run_restic(&restic, &repo, &[OsStr::new("backup"), src.as_os_str()]);
    let list = sr_ok(&["list", "--dest", &file_url(&repo), "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["paths"][0], src.to_str().unwrap());
    restore_latest(&repo, &target);
    assert_same_tree(
        &want,
        &describe(&target),
        "snapring restore of a restic backup",
    );
    // And a snapring backup on top of restic's uses restic's snapshot as its parent.
    let r = sr_backup(&src, &repo);
    assert_eq!(r["repository"]["bytes_read"], 0, "{r}");
    run_restic(
        &restic,
        &repo,
        &[OsStr::new("check"), OsStr::new("--read-data")],
    );
}

/// restic before 0.17 records a relative path (`restic backup data`, run in its parent)
/// absolute in the snapshot's `paths` but stores the tree as `data/...` from the root.
/// snapring restores that path's contents into `--to` (not `--to/data/...`), and
/// `verify --against` the source finds nothing missing. Before, `source_tree` fell back
/// to the root: the restore nested `data/`, verify called every file missing.
#[test]
fn a_restic_snapshot_of_a_relative_path_lines_up_with_its_source() {
    let Some(restic) = restic_binary("conformance") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo, target) = (
        t.path().join("data"),
        t.path().join("repo"),
        t.path().join("T"),
    );
    std::fs::create_dir_all(src.join("sub")).unwrap();
    write(&src.join("x"), b"one");
    write(&src.join("sub/y"), b"two");
    run_restic(&restic, &repo, &[OsStr::new("init")]);
    let mut c = restic_cmd(&restic, &repo);
    c.current_dir(t.path());
    restic_ok(c, &["backup", "data"]);
    restore_latest(&repo, &target);
    assert_same_tree(
        &describe(&src),
        &describe(&target),
        "snapring restore of restic's snapshot of a relative path",
    );
    let (code, out, err) = sr(&[
        "verify",
        "--dest",
        &file_url(&repo),
        "latest",
        "--against",
        src.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "verify --against the source: {out}\n{err}");
}

/// restic (0.14 as 0.17+) made of `cwd` with `args`, in `repo`.
fn restic_backup_in(restic: &Path, repo: &Path, cwd: &Path, args: &[&OsStr]) {
    run_restic(restic, repo, &[OsStr::new("init")]);
    let mut c = restic_cmd(restic, repo);
    c.current_dir(cwd);
    let mut all = vec![OsStr::new("backup")];
    all.extend_from_slice(args);
    restic_ok(c, &all);
}

/// snapring's restore of `latest` into `target` is `want` (the source directory's
/// tree), says `complete`, and `verify --against` and `diff --against` the source find
/// nothing.
fn restore_verify_diff_line_up(repo: &Path, src: &Path, target: &Path, what: &str) {
    let out = sr_ok(&[
        "restore",
        "--dest",
        &file_url(repo),
        "latest",
        "--to",
        target.to_str().unwrap(),
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["status"], "complete", "{what}: {r}");
    assert_same_tree(&below_root(src), &below_root(target), what);
    for cmd in ["verify", "diff"] {
        let (code, out, err) = sr(&[
            cmd,
            "--dest",
            &file_url(repo),
            "latest",
            "--against",
            src.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(code, 0, "{what}: {cmd} --against the source: {out}\n{err}");
    }
}

/// `describe(root)` without the root itself (a snapshot of `.` or of several paths has
/// no node for it: the target root keeps its own metadata, as with restic).
fn below_root(root: &Path) -> std::collections::BTreeMap<Vec<u8>, Desc> {
    let mut d = describe(root);
    d.remove(&Vec::new());
    d
}

/// A source in the common Python layout: `myproj/` holding files and a subdirectory
/// also named `myproj`.
fn python_layout(src: &Path) {
    write(&src.join("README"), b"readme");
    write(&src.join("setup.py"), b"setup()");
    write(&src.join("myproj/__init__.py"), b"# init");
    write(&src.join("myproj/core.py"), b"x = 1");
}

/// `cd myproj && restic backup .` puts myproj's *contents* at the tree's root and
/// records `/…/myproj` in `paths`. snapring restores, verifies and diffs from the root:
/// README, setup.py and myproj/ all come back. Before, the path's tail `myproj` was
/// found as the inner directory: the restore wrote only `__init__.py` and `core.py`,
/// said `complete`, and `verify --against` found it clean (HA, session 49).
#[test]
fn a_restic_snapshot_of_dot_is_read_from_the_root_not_a_same_named_subdirectory() {
    let Some(restic) = restic_binary("conformance") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("myproj"), t.path().join("repo"));
    python_layout(&src);
    restic_backup_in(&restic, &repo, &src, &[OsStr::new(".")]);
    restore_verify_diff_line_up(&repo, &src, &t.path().join("T"), "restic backup .");
}

/// `restic backup /abs/myproj` nests the absolute path's ancestors; the whole path is
/// found (and the inner `myproj/` is not taken for it).
#[test]
fn a_restic_snapshot_of_an_absolute_path_is_read_from_that_path() {
    let Some(restic) = restic_binary("conformance") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("myproj"), t.path().join("repo"));
    python_layout(&src);
    restic_backup_in(&restic, &repo, t.path(), &[src.as_os_str()]);
    restore_verify_diff_line_up(
        &repo,
        &src,
        &t.path().join("T"),
        "restic backup /abs/myproj",
    );
}

/// `restic backup work/myproj` run in the parent of `work` nests `work` → `myproj` from
/// the root (a chain of one-entry trees ending in the path's tail `work/myproj`).
#[test]
fn a_restic_snapshot_of_a_relative_path_of_two_components_lines_up() {
    let Some(restic) = restic_binary("conformance") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("work/myproj"), t.path().join("repo"));
    python_layout(&src);
    write(&t.path().join("work/beside"), b"not backed up");
    restic_backup_in(&restic, &repo, t.path(), &[OsStr::new("work/myproj")]);
    restore_verify_diff_line_up(
        &repo,
        &src,
        &t.path().join("T"),
        "restic backup work/myproj",
    );
}

/// A restic snapshot of two paths is restored from the root, as `restic restore`
/// lays it out (both relative paths side by side).
#[test]
fn a_restic_snapshot_of_two_paths_restores_both_from_the_root() {
    let Some(restic) = restic_binary("conformance") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    python_layout(&t.path().join("myproj"));
    write(&t.path().join("other/file"), b"other");
    restic_backup_in(
        &restic,
        &repo,
        t.path(),
        &[OsStr::new("myproj"), OsStr::new("other")],
    );
    let (ours, theirs) = (t.path().join("T"), t.path().join("R"));
    restore_latest(&repo, &ours);
    run_restic(
        &restic,
        &repo,
        &[
            OsStr::new("restore"),
            OsStr::new("latest"),
            OsStr::new("--target"),
            theirs.as_os_str(),
        ],
    );
    assert!(ours.join("myproj/myproj/__init__.py").is_file());
    assert!(ours.join("other/file").is_file());
    assert_same_tree(
        &below_root(&theirs),
        &below_root(&ours),
        "snapring and restic restore of a snapshot of two paths",
    );
}

#[test]
fn snapring_round_trip_keeps_odd_names_and_the_incremental_reads_only_changes() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    odd_tree(&src);
    write(&src.join("big/random"), &pseudo_random(3 << 20, 3));
    set_mtime(&src.join("big"), 1_200_000_000, 5);
    set_mtime(&src, 1_200_000_000, 987_654_321);
    let want = describe(&src);
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    let atime = |p: &Path| std::fs::symlink_metadata(p).unwrap().accessed().unwrap();
    let before = (atime(&src.join("big/random")), atime(&src.join("big")));
    let first = sr_backup(&src, &repo);
    assert_eq!(first["status"], "complete", "{first}");
    let target = t.path().join("T1");
    restore_latest(&repo, &target);
    assert_same_tree(&want, &describe(&target), "snapring round trip");

    // Nothing changed: nothing read, nothing added; reading the files and listing the
    // directories (O_NOATIME) left their access times, so the trees are the same too.
    let second = sr_backup(&src, &repo);
    assert_eq!(
        (atime(&src.join("big/random")), atime(&src.join("big"))),
        before
    );
    // At most the trees wrapping the source that changed meanwhile: the temp dir's (it
    // gained T1) and the root's (/tmp's times move with other tests' temp dirs).
    assert!(
        second["repository"]["tree_blobs_added"].as_u64().unwrap() <= 2,
        "{second}"
    );
    assert_eq!(second["repository"]["bytes_read"], 0, "{second}");
    assert_eq!(
        second["repository"]["files_unchanged"], second["files_total"],
        "{second}"
    );
    assert_eq!(second["repository"]["data_blobs_added"], 0, "{second}");
    assert_eq!(second["based_on"], first["snapshot"]);

    // One file changed: only it is read.
    write(&src.join("big/random"), &pseudo_random(3 << 20, 4));
    let third = sr_backup(&src, &repo);
    assert_eq!(third["repository"]["files_read"], 1, "{third}");
    assert_eq!(third["repository"]["bytes_read"], 3 << 20, "{third}");
    let want = describe(&src);
    let target = t.path().join("T3");
    restore_latest(&repo, &target);
    assert_same_tree(&want, &describe(&target), "restore after an incremental");
    let list: serde_json::Value =
        serde_json::from_str(&sr_ok(&["list", "--dest", &file_url(&repo), "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
    assert_eq!(list[0]["label"], "daily");
}

/// Reads by others move access times and nothing else (an NFS or EFS server moves them
/// on every read, whatever the client opens with). An entry of the parent snapshot's
/// kind, inode, mtime and ctime keeps the access time recorded there, so the next
/// backup writes no new tree; an entry that did change gets its access time of now.
#[test]
fn access_times_moved_by_reads_alone_make_no_new_trees() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    for d in 0..5 {
        let dir = src.join(format!("d{d}"));
        for f in 0..3 {
            write(&dir.join(format!("f{f}")), format!("{d}/{f}").as_bytes());
            set_mtime(&dir.join(format!("f{f}")), 1_200_000_000, 0);
        }
        std::os::unix::fs::symlink("f0", dir.join("l")).unwrap();
        set_mtime(&dir.join("l"), 1_200_000_000, 0);
        set_mtime(&dir, 1_200_000_000, 0);
    }
    // Access times not after the mtime: a plain read moves them (relatime).
    set_mtime(&src, 1_200_000_000, 0);
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    let first = sr_backup_with(&src, &repo, &["--with-atime"]);
    assert_eq!(first["status"], "complete", "{first}");

    let atime = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(p).unwrap().atime()
    };
    for d in 0..5 {
        let dir = src.join(format!("d{d}"));
        std::fs::read_dir(&dir).unwrap().for_each(drop);
        for f in 0..3 {
            std::fs::read(dir.join(format!("f{f}"))).unwrap();
        }
        std::fs::read_link(dir.join("l")).unwrap();
    }
    std::fs::read_dir(&src).unwrap().for_each(drop);
    for p in ["d1/f2", "d1/l", "d1", ""] {
        assert!(
            atime(&src.join(p)) > 1_200_000_000,
            "reading {p:?} did not move its access time: the file system must update them \
             (relatime or strictatime) for this test"
        );
    }

    let second = sr_backup_with(&src, &repo, &["--with-atime"]);
    assert_eq!(second["status"], "complete", "{second}");
    // At most the trees wrapping the source: the temp dir's and the root's (/tmp's
    // times move with other tests' temp dirs). Six directories with moved access times
    // would be six more.
    assert!(
        second["repository"]["tree_blobs_added"].as_u64().unwrap() <= 2,
        "{second}"
    );

    // A changed entry (here its mode, so its ctime) records its access time of now.
    chmod(&src.join("d0/f0"), 0o600);
    let third = sr_backup_with(&src, &repo, &["--with-atime"]);
    assert_eq!(third["status"], "complete", "{third}");
    let target = t.path().join("T");
    restore_latest(&repo, &target);
    let restored = &target;
    assert_eq!(atime(&restored.join("d0/f0")), atime(&src.join("d0/f0")));
    assert!(atime(&src.join("d0/f0")) > 1_200_000_000);
    // An unchanged one, the access time of the first backup.
    assert_eq!(atime(&restored.join("d1/f2")), 1_200_000_000);
    assert_eq!(atime(&restored.join("d1")), 1_200_000_000);
}

/// By default the access time recorded is the mtime, as `restic backup` records
/// without `--with-atime`, so both write the same tree blob for the same directory:
/// restic backing up a tree snapring backed up adds only the trees wrapping it (whose
/// directories' times may have moved), none of the source's own. Real access times,
/// unlike mtimes, made every tree differ, and compress worse (docs/performance.md,
/// issue 14's bytes).
#[test]
fn restic_finds_every_tree_of_the_source_that_snapring_wrote() {
    let Some(restic) = restic_binary("conformance") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    conformance_tree(&src);
    // Access times apart from the mtimes, deepest first (setting a directory's times
    // after its entries').
    let mut all: Vec<_> = walkdir(&src);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in all.iter().chain([&src]) {
        set_times(
            p,
            (1_300_000_000, 123_456_789),
            (1_200_000_000, 987_654_321),
        );
    }
    let dirs = all.iter().filter(|p| p.is_dir() && !p.is_symlink()).count();
    assert!(dirs >= 2, "the test tree has subdirectories");
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    let r = sr_backup(&src, &repo);
    assert_eq!(r["status"], "complete", "{r}");
    let out = run_restic(
        &restic,
        &repo,
        &[OsStr::new("backup"), OsStr::new("--json"), src.as_os_str()],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message_type"] == "summary")
        .unwrap_or_else(|| panic!("no summary in restic's output:\n{text}"));
    // The trees of `/`, of each ancestor of src, none of src's own (1 + `dirs`).
    let wrapping = std::fs::canonicalize(t.path())
        .unwrap()
        .components()
        .count() as u64;
    assert!(
        summary["tree_blobs"].as_u64().unwrap() <= wrapping,
        "restic wrote trees of the source anew ({wrapping} wrap it): {summary}"
    );
    assert_eq!(summary["data_blobs"], 0, "{summary}");
}

/// `--with-atime` is a repository setting; a hard-link store refuses it.
#[test]
fn with_atime_is_refused_for_a_hard_link_store() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("f"), b"x");
    let dest = t.path().join("store");
    let (code, out, err) = sr(&[
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        dest.to_str().unwrap(),
        "--with-atime",
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("with_atime") && err.contains("restic repository"),
        "{err}"
    );
    assert!(!dest.join("daily.0").exists());
}

/// Every entry under `root` (not `root`), symlinks not followed.
fn walkdir(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Sets the access and modification times of `p` (not following a symlink).
fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let ts = |(s, n)| rustix::fs::Timespec {
        tv_sec: s,
        tv_nsec: n,
    };
    let t = rustix::fs::Timestamps {
        last_access: ts(atime),
        last_modification: ts(mtime),
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &t,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

#[test]
fn wrong_password_and_missing_repository_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("f"), b"x");
    let (code, _, err) = sr(&[
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &file_url(&repo),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not a restic repository") && err.contains("snapring init"),
        "{err}"
    );
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    let pwfile = t.path().join("pw");
    std::fs::write(&pwfile, "not it\n").unwrap();
    let args = [
        "list",
        "--dest",
        &file_url(&repo),
        "--password-file",
        pwfile.to_str().unwrap(),
    ];
    let (code, out, err) = sr(&args);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("wrong password"), "{err}");
    assert!(
        !err.contains("not it") && !err.contains(PASSWORD),
        "password in: {err}"
    );
    // The file's password with its newline stripped opens it.
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
    let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let out = snapring(&a, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A repository backup paused at failpoint `point`, sent SIGTERM there, then let go:
/// it must end `incomplete` (exit 3). Returns its JSON report.
fn sigterm_at(src: &Path, repo: &Path, point: &str, pause: &Path) -> serde_json::Value {
    let child = spawn_paused(src, repo, point, pause);
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    std::fs::remove_file(pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(3), "{r}");
    assert_eq!(r["status"], "incomplete", "{r}");
    r
}

#[test]
fn sigterm_stops_as_incomplete_and_the_next_run_reuses_its_packs() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    // 20 MiB: more than one pack (about 16 MiB each).
    for i in 0..2u64 {
        write(&src.join(format!("f{i}")), &pseudo_random(10 << 20, 10 + i));
    }
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    // Paused right after its first pack is written; SIGTERM, then let it go on.
    let pause = t.path().join("paused");
    let r = sigterm_at(&src, &repo, "restic.pack_written", &pause);
    let kept = r["repository"]["data_blobs_added"].as_u64().unwrap();
    assert!(kept >= 1, "{r}");
    let count = |d: &str| std::fs::read_dir(repo.join(d)).unwrap().count();
    assert_eq!(count("snapshots"), 0, "an interrupted run wrote a snapshot");
    assert!(count("index") >= 1, "the packs it wrote are not indexed");
    assert_eq!(count("locks"), 0, "the lock was left behind");
    if let Some(restic) = restic_binary("conformance") {
        run_restic(
            &restic,
            &repo,
            &[OsStr::new("check"), OsStr::new("--read-data")],
        );
    }
    // The next run completes and stores only what the first did not: the stop may come
    // mid-file (data left to store) or after the last read, while the last pack was
    // written (none left), as the walk's threads and the pause interleave.
    let full: u64 = 20 << 20;
    let next = sr_backup(&src, &repo);
    assert_eq!(next["status"], "complete", "{next}");
    let added = next["repository"]["data_blobs_added"].as_u64().unwrap();
    assert!(
        next["repository"]["bytes_uploaded"].as_u64().unwrap() < full,
        "{next}"
    );
    if r["repository"]["bytes_read"].as_u64().unwrap() < full {
        assert!(added > 0, "the first run stopped mid-file: {r}\n{next}");
    }
    let target = t.path().join("T");
    restore_latest(&repo, &target);
    assert_same_tree(
        &describe(&src),
        &describe(&target),
        "restore after an interrupted run",
    );
}

#[test]
fn sigkill_after_a_pack_leaves_a_repository_restic_checks_and_the_next_run_completes() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    for i in 0..2u64 {
        write(&src.join(format!("f{i}")), &pseudo_random(10 << 20, 20 + i));
    }
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    let out = Command::new(bin())
        .env("SNAPRING_CATALOG", "off")
        .args([
            "backup",
            "--source",
            src.to_str().unwrap(),
            "--dest",
            &file_url(&repo),
        ])
        .env("SNAPRING_PASSWORD", PASSWORD)
        .env("SNAPRING_FAILPOINTS", "restic.pack_written=kill")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "not killed: {out:?}");
    let count = |d: &str| std::fs::read_dir(repo.join(d)).unwrap().count();
    assert_eq!(count("snapshots"), 0);
    assert_eq!(
        count("locks"),
        1,
        "the killed run's lock stays, as restic's would"
    );
    if let Some(restic) = restic_binary("conformance") {
        // restic 0.14 refuses any lock while another exists; `unlock` removes stale
        // ones (same host, dead pid): it reads snapring's lock as restic's own.
        run_restic(&restic, &repo, &[OsStr::new("unlock")]);
        assert_eq!(count("locks"), 0, "restic did not take the lock for stale");
        run_restic(
            &restic,
            &repo,
            &[OsStr::new("check"), OsStr::new("--read-data")],
        );
    }
    // A shared lock, even a dead process's, does not block the next backup.
    let next = sr_backup(&src, &repo);
    assert_eq!(next["status"], "complete", "{next}");
    let target = t.path().join("T");
    restore_latest(&repo, &target);
    assert_same_tree(
        &describe(&src),
        &describe(&target),
        "restore after a killed run",
    );
    if let Some(restic) = restic_binary("conformance") {
        run_restic(
            &restic,
            &repo,
            &[OsStr::new("check"), OsStr::new("--read-data")],
        );
    }
}

/// A backup refused by an exclusive lock (a running prune) exits 75, not 1, and says
/// whose lock it is.
#[test]
fn an_exclusive_lock_of_a_live_process_refuses_a_backup() {
    use snapring::restic::{lock, repo::Repo};
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("f"), b"x");
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    // This test process holds it (as `restic prune` would).
    let opened = Repo::open(&repo, PASSWORD.as_bytes()).unwrap();
    let held = lock::acquire(&opened, true).unwrap();
    let (code, out, err) = sr(&[
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &file_url(&repo),
    ]);
    // Exit 75 (EX_TEMPFAIL, "try again later"), naming who holds it; it was 1, as a
    // run that will not get better by retrying.
    assert_eq!(code, 75, "{out}{err}");
    assert!(err.contains("locked exclusively by pid"), "{err}");
    assert!(
        err.contains(&format!(
            "by pid {} on {}",
            std::process::id(),
            snapring::util::hostname()
        )),
        "{err}"
    );
    held.release().unwrap();
    sr_backup(&src, &repo);
}

/// A lock file that is there but does not read (an I/O error, a lock being written,
/// damaged bytes) may be a running prune's exclusive lock: it refuses a backup and a
/// prune (exit 75, naming the file), as restic refuses. It was taken for no lock, and a
/// `prune` ran beside a live `restic backup`, deleting its new packs.
#[test]
fn a_lock_file_that_does_not_read_refuses_a_backup_and_a_prune() {
    use sha2::Digest;
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("f"), b"x");
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    // Named by the hash of its bytes, as every repository file is, but not sealed with
    // the repository's key.
    let bytes = vec![7u8; 200];
    let name = hex::encode(sha2::Sha256::digest(&bytes));
    std::fs::write(repo.join("locks").join(&name), &bytes).unwrap();
    for args in [
        vec![
            "backup",
            "--source",
            src.to_str().unwrap(),
            "--dest",
            &file_url(&repo),
        ],
        vec!["prune", "--dest", &file_url(&repo)],
    ] {
        let (code, out, err) = sr(&args);
        assert_eq!(code, 75, "{args:?}: {out}{err}");
        assert!(
            err.contains(&format!("its lock file locks/{name} cannot be read")),
            "{args:?}: {err}"
        );
    }
    assert!(
        std::fs::read_dir(repo.join("snapshots"))
            .unwrap()
            .next()
            .is_none(),
        "a snapshot was written beside a lock that may be a prune's"
    );
    std::fs::remove_file(repo.join("locks").join(&name)).unwrap();
    assert_eq!(sr_backup(&src, &repo)["status"], "complete");
}

/// A lock as restic writes it (no pid namespace nor boot: the host name alone), of this
/// host, of a pid that runs no process here, `age_secs` old.
fn restic_lock(repo: &Path, exclusive: bool, age_secs: i64) {
    use snapring::restic::{backend::Kind, lock::LockFile, repo::Repo};
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id() as i64;
    gone.wait().unwrap();
    let time = chrono::Local::now() - chrono::Duration::seconds(age_secs);
    let opened = Repo::open(repo, PASSWORD.as_bytes()).unwrap();
    let l = LockFile {
        time: snapring::restic::go_time(time),
        exclusive,
        hostname: snapring::util::hostname(),
        username: "restic".into(),
        pid,
        uid: 0,
        gid: 0,
        pid_ns: String::new(),
        boot_id: String::new(),
    };
    opened.save_json(Kind::Lock, &l).unwrap();
}

/// restic's lock of this host name whose pid runs no process here may be another pid
/// namespace's live process (a container with a fixed `--hostname`, another machine
/// called `localhost`): it refuses a conflicting lock and stays until it is 30
/// minutes old (restic's stale age); then it is removed as a dead process's.
#[test]
fn a_restic_lock_of_this_host_and_a_dead_pid_is_kept_until_it_is_old() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("f"), b"x");
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    let count = || std::fs::read_dir(repo.join("locks")).unwrap().count();
    let clear = || {
        for l in std::fs::read_dir(repo.join("locks")).unwrap() {
            std::fs::remove_file(l.unwrap().path()).unwrap();
        }
    };
    let backup = [
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &file_url(&repo),
    ];
    let prune = ["prune", "--dest", &file_url(&repo)];
    // A running `restic prune` of another container: no backup meanwhile.
    restic_lock(&repo, true, 60);
    let (code, out, err) = sr(&backup);
    assert_eq!(code, 75, "{out}{err}");
    assert!(err.contains("locked exclusively by pid"), "{err}");
    // Why a dead pid's lock still counts, and how to clear it sooner.
    assert!(
        err.contains("runs here; the lock names no pid namespace"),
        "{err}"
    );
    assert!(err.contains("`restic unlock` removes it"), "{err}");
    assert_eq!(count(), 1, "restic's live prune's lock was removed");
    clear();
    // A running `restic backup` of another container: no prune meanwhile.
    restic_lock(&repo, false, 60);
    let (code, out, err) = sr(&prune);
    assert_eq!(code, 75, "{out}{err}");
    assert!(err.contains("locked by pid"), "{err}");
    assert_eq!(count(), 1, "restic's live backup's lock was removed");
    clear();
    // 31 minutes old: stale on any host, and removed.
    restic_lock(&repo, true, 31 * 60);
    assert_eq!(sr_backup(&src, &repo)["status"], "complete");
    restic_lock(&repo, false, 31 * 60);
    let (code, out, err) = sr(&prune);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(count(), 0, "the old locks were left");
}

/// A backup whose lock file was removed while it ran (`restic unlock`, or taken for
/// stale while the process was stopped: an exclusive `prune` may then have removed
/// packs it needs) writes no snapshot, fails saying why, and the next run completes.
#[test]
fn a_backup_whose_lock_was_removed_writes_no_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("f"), &pseudo_random(1 << 20, 7));
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    let pause = t.path().join("paused");
    let child = spawn_paused(&src, &repo, "restic.backup.before_snapshot", &pause);
    let locks: Vec<_> = std::fs::read_dir(repo.join("locks")).unwrap().collect();
    assert_eq!(locks.len(), 1, "the backup's shared lock");
    for l in locks {
        std::fs::remove_file(l.unwrap().path()).unwrap();
    }
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("was removed"), "{err}");
    let count = |d: &str| std::fs::read_dir(repo.join(d)).unwrap().count();
    assert_eq!(count("snapshots"), 0, "a snapshot written without its lock");
    assert_eq!(sr_backup(&src, &repo)["status"], "complete");
    assert_eq!(count("snapshots"), 1);
}

/// SIGTERM after the walk's last read, while the last packs are written (here: just
/// before the snapshot file): the run still stops `incomplete` (exit 3) with no
/// snapshot, its packs indexed, and the next run completes without storing them again.
#[test]
fn sigterm_after_the_last_read_still_stops_before_the_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("f"), &pseudo_random(1 << 20, 8));
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    let pause = t.path().join("paused");
    sigterm_at(&src, &repo, "restic.backup.before_snapshot", &pause);
    let count = |d: &str| std::fs::read_dir(repo.join(d)).unwrap().count();
    assert_eq!(count("snapshots"), 0, "a stopped run wrote a snapshot");
    assert_eq!(count("locks"), 0, "the lock was left behind");
    let next = sr_backup(&src, &repo);
    assert_eq!(next["status"], "complete", "{next}");
    assert_eq!(next["repository"]["data_blobs_added"], 0, "{next}");
}

#[test]
fn restore_of_a_subdirectory_and_of_one_file() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("a/b/f"), b"deep file");
    write(&src.join("a/g"), b"g");
    write(&src.join("top"), b"top");
    set_mtime(&src.join("a/b"), 1_300_000_000, 7);
    set_mtime(&src.join("a"), 1_300_000_000, 8);
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    sr_backup(&src, &repo);
    let dest = file_url(&repo);
    let restore = |to: &Path, extra: &[&str]| {
        let mut a = vec![
            "restore",
            "--dest",
            &dest,
            "latest",
            "--to",
            to.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        sr(&a)
    };
    // A subdirectory, at the same relative place.
    let t1 = t.path().join("T1");
    assert_eq!(restore(&t1, &["--path", "a/b"]).0, 0);
    assert_same_tree(
        &describe(&src.join("a/b")),
        &describe(&t1.join("a/b")),
        "--path a/b",
    );
    assert!(!t1.join("a/g").exists() && !t1.join("top").exists());
    // Its contents straight into --to.
    let t2 = t.path().join("T2");
    assert_eq!(restore(&t2, &["--path", "a", "--flat"]).0, 0);
    assert_same_tree(&describe(&src.join("a")), &describe(&t2), "--path a --flat");
    // One file.
    let t3 = t.path().join("T3");
    assert_eq!(restore(&t3, &["--path", "a/b/f", "--flat"]).0, 0);
    assert_eq!(std::fs::read(t3.join("f")).unwrap(), b"deep file");
    // Missing and escaping paths are clear errors.
    let (code, _, err) = restore(&t.path().join("T4"), &["--path", "a/nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("a/nope is not in the snapshot"), "{err}");
    let (code, _, err) = restore(&t.path().join("T5"), &["--path", "a/../.."]);
    assert_eq!(code, 64, "a usage error");
    assert!(err.contains("leaves the snapshot"), "{err}");
}

/// A restore from a local repository never checked whether `--to` was inside the
/// repository: `--to REPO/data/evil` was `complete`, the file written into `data/`.
/// Refused now (exit 1, by device and inode, so through a bind mount too), and a `..`
/// below the existing part of `--to` (exit 64); the repository is unchanged, byte for
/// byte (no lock was taken either: the check comes first), and nothing was made.
#[test]
fn a_restore_never_writes_into_the_repository_it_reads() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("top.txt"), b"top");
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    sr_backup(&src, &repo);
    let dest = file_url(&repo);
    let before = describe(&repo);
    let refused = |to: &Path, code: i32, says: &str| {
        let a = [
            &common::restic::restore_latest(&dest, to)[..],
            &["--path", "top.txt"],
        ]
        .concat();
        let (c, out, err) = sr(&a);
        assert_eq!(c, code, "{}: {out}\n{err}", to.display());
        assert!(
            err.contains(&to.display().to_string()) && err.contains(says),
            "{}: {err}",
            to.display()
        );
        assert_same_tree(&before, &describe(&repo), "the repository");
    };
    refused(
        &repo.join("data/evil"),
        1,
        "refusing to restore into the repository",
    );
    refused(
        &repo.join("evil"),
        1,
        "refusing to restore into the repository",
    );
    refused(&t.path().join("nx3/../repo/evil2"), 64, "`..`");
    assert!(!t.path().join("nx3").exists());
    let bind = t.path().join("repobind");
    std::fs::create_dir(&bind).unwrap();
    if Command::new("mount")
        .arg("--bind")
        .arg(&repo)
        .arg(&bind)
        .status()
        .is_ok_and(|s| s.success())
    {
        let to = bind.join("snapshots/evil");
        let a = [
            &common::restic::restore_latest(&dest, &to)[..],
            &["--path", "top.txt"],
        ]
        .concat();
        let (c, out, err) = sr(&a);
        let _ = Command::new("umount").arg("-l").arg(&bind).status();
        assert_eq!(c, 1, "{out}\n{err}");
        assert!(
            err.contains("refusing to restore into the repository"),
            "{err}"
        );
        assert_same_tree(&before, &describe(&repo), "the repository");
    } else {
        eprintln!("the bind-mount case skipped: mount --bind is not permitted here");
    }
    // Beside the repository it works.
    let ok = t.path().join("restored");
    sr_ok(&common::restic::restore_latest(&dest, &ok));
    assert_eq!(std::fs::read(ok.join("top.txt")).unwrap(), b"top");
}

/// The tree of the source `src` in the snapshot of the backup report `r` (`snapshot` is
/// its id); not the snapshot's root, whose ancestors (`/tmp`) other tests change.
fn tree_of(repo: &Path, src: &Path, r: &serde_json::Value) -> String {
    let repo = snapring::restic::repo::Repo::open(repo, PASSWORD.as_bytes()).unwrap();
    let id = r["snapshot"].as_str().unwrap();
    let all = snapring::restic::snapshot::load_all(&repo).unwrap();
    let (_, s) = all
        .iter()
        .find(|(i, _)| i.hex().starts_with(id))
        .unwrap_or_else(|| panic!("snapshot {id} not in the repository"));
    let src = std::fs::canonicalize(src).unwrap();
    let comps: Vec<&OsStr> = src.iter().skip(1).collect();
    snapring::restic::backup::descend(&repo, s.tree, &comps)
        .unwrap()
        .expect("the source's tree")
        .hex()
}

#[test]
fn the_snapshot_does_not_depend_on_how_many_calls_are_in_flight() {
    // Directories wider than one listing chunk (256 items, so several workers share
    // one), deep ones, and files of several chunks: the trees are built bottom-up as
    // workers finish directories in any order, yet must come out the same.
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    for i in 0..600 {
        write(
            &src.join(format!("wide/f{i:03}")),
            format!("{i}").as_bytes(),
        );
    }
    for i in 0..40 {
        write(&src.join(format!("wide/d{i:02}/x")), b"x");
    }
    write(&src.join("a/b/c/d/e/f/deep"), b"deep");
    write(&src.join("a/b/big"), &pseudo_random(3 << 20, 9));
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    let backup = |jobs: &str| -> serde_json::Value {
        let out = sr_ok(&[
            "backup",
            "--source",
            src.to_str().unwrap(),
            "--dest",
            &file_url(&repo),
            "--jobs",
            jobs,
            "--json",
        ]);
        serde_json::from_str(&out).unwrap()
    };
    let full = backup("16");
    assert_eq!(full["status"], "complete", "{full}");
    assert_eq!(full["files_total"], 600 + 40 + 2, "{full}");
    // The first run's reads moved access times; from here on nothing changes.
    let one = backup("1");
    let many = backup("16");
    let three = backup("3");
    assert_eq!(many["repository"]["files_unchanged"], 642, "{many}");
    let tree = tree_of(&repo, &src, &one);
    assert_eq!(tree_of(&repo, &src, &many), tree, "jobs 16 vs jobs 1");
    assert_eq!(tree_of(&repo, &src, &three), tree, "jobs 3 vs jobs 1");
    if let Some(restic) = restic_binary("conformance") {
        run_restic(
            &restic,
            &repo,
            &[OsStr::new("check"), OsStr::new("--read-data")],
        );
    }
    let target = t.path().join("T");
    restore_latest(&repo, &target);
    assert_same_tree(&describe(&src), &describe(&target), "restore after jobs 3");
}

/// A password file with white space around the password (`secret-pass \n`) is read as
/// restic reads it, trimmed (`strings.TrimSpace`): the repository `init` makes with it
/// opens with `secret-pass`, and restic opens it with the same file. snapring stripped
/// only the newline, so restic refused the file snapring accepted.
#[test]
fn a_password_file_is_trimmed_as_restic_trims_it() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("f"), b"x");
    let pwfile = t.path().join("pw");
    std::fs::write(&pwfile, "secret-pass \n").unwrap();
    let url = file_url(&repo);
    let with_file = |cmd: &[&str]| {
        let mut a: Vec<&OsStr> = cmd.iter().map(OsStr::new).collect();
        a.extend([OsStr::new("--password-file"), pwfile.as_os_str()]);
        snapring(&a, &[])
    };
    let out = with_file(&["init", "--dest", &url]);
    assert!(out.status.success(), "{out:?}");
    let out = with_file(&["backup", "--source", src.to_str().unwrap(), "--dest", &url]);
    assert!(out.status.success(), "{out:?}");
    let list = ["list".as_ref(), "--dest".as_ref(), OsStr::new(&url)];
    let out = snapring(&list, &[("SNAPRING_PASSWORD", "secret-pass")]);
    assert!(out.status.success(), "the trimmed password: {out:?}");
    let out = snapring(&list, &[("SNAPRING_PASSWORD", "secret-pass ")]);
    assert_eq!(out.status.code(), Some(1), "with its space: {out:?}");
    let Some(restic) = restic_binary("restic reading the same password file") else {
        return;
    };
    let out = Command::new(restic)
        .args(["--no-cache", "--repo"])
        .arg(&repo)
        .arg("--password-file")
        .arg(&pwfile)
        .arg("snapshots")
        .env_remove("RESTIC_PASSWORD")
        .env_remove("RESTIC_PASSWORD_FILE")
        .output()
        .unwrap();
    assert!(out.status.success(), "restic with the same file: {out:?}");
}

/// A repository whose key is the password with its white space (made by an older
/// snapring from `secret-pass \n`, which stripped only the newline) still opens with
/// that file, with a warning that restic would not open it; a file with another
/// password still does not.
#[test]
fn a_password_file_read_the_older_way_still_opens_with_a_warning() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let url = file_url(&repo);
    let init = ["init".as_ref(), "--dest".as_ref(), OsStr::new(&url)];
    let out = snapring(&init, &[("SNAPRING_PASSWORD", "secret-pass ")]);
    assert!(out.status.success(), "{out:?}");
    let pwfile = t.path().join("pw");
    let list = |contents: &str| {
        std::fs::write(&pwfile, contents).unwrap();
        let a = [
            "list".as_ref(),
            "--dest".as_ref(),
            OsStr::new(&url),
            "--password-file".as_ref(),
            pwfile.as_os_str(),
        ];
        let out = snapring(&a, &[]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = list("secret-pass \n");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("restic trims") && err.contains(pwfile.to_str().unwrap()),
        "the warning: {err}"
    );
    assert!(!err.contains("secret-pass"), "password in: {err}");
    let (code, err) = list("other-pass \n");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("wrong password"), "{err}");
}

/// An extended attribute whose name is not UTF-8 cannot be kept by restic's format
/// (names are JSON strings): it is stored with U+FFFD, as restic stores it, and the run
/// says so, naming the file and the attribute, as a `metadata` problem: `partial`, not
/// a silent `complete`.
#[test]
fn an_xattr_name_that_is_not_utf8_is_reported_not_silently_replaced() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("a"), b"one attribute with a binary name");
    write(&src.join("b"), b"plain");
    if rustix::fs::lsetxattr(
        src.join("a"),
        &b"user.\xff\xfe bin"[..],
        b"v1",
        rustix::fs::XattrFlags::empty(),
    )
    .is_err()
    {
        eprintln!("SKIP: no user xattrs on this file system");
        return;
    }
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    let url = file_url(&repo);
    let (code, out, err) = sr(&[
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &url,
        "--json",
    ]);
    let rep: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}\n{err}"));
    assert_ne!(code, 0, "{rep}");
    assert_eq!(rep["status"], "partial", "{rep}");
    let problems = rep["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{rep}");
    assert_eq!(problems[0]["path"], "a", "{rep}");
    assert_eq!(problems[0]["kind"], "metadata", "{rep}");
    let e = problems[0]["error"].as_str().unwrap();
    assert!(
        e.contains("not UTF-8") && e.contains("user.\\xFF\\xFE"),
        "{e}"
    );
}

/// A repository its group reads (`chmod -R g+rX`, as restic's docs suggest for a
/// group-accessible repository): restic then writes its files group-readable, and
/// snapring does too. snapring wrote every file 0600: after one snapring run a member
/// of the group could list no snapring snapshot and restore nothing, restic's own
/// snapshots neither (the new index did not read).
#[test]
fn a_repository_its_group_reads_stays_readable_by_the_group() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("f"), b"group");
    sr_ok(&["init", "--dest", &file_url(&repo)]);
    let chmod = Command::new("chmod")
        .arg("-R")
        .arg("g+rX")
        .arg(&repo)
        .status()
        .unwrap();
    assert!(chmod.success());
    let before = std::time::SystemTime::now();
    // Under a umask that keeps the group out (`UMask=0077` in a systemd unit).
    let out = Command::new("sh")
        .args(["-c", "umask 077; exec \"$0\" \"$@\""])
        .arg(bin())
        .args(["backup", "--source"])
        .arg(&src)
        .args(["--dest", &file_url(&repo)])
        .env("SNAPRING_PASSWORD", PASSWORD)
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_CACHE", "off")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut written = 0;
    for d in ["snapshots", "index", "data"] {
        for e in walkdir(&repo.join(d)) {
            let m = std::fs::metadata(&e).unwrap();
            if m.is_file() && m.modified().unwrap() >= before {
                written += 1;
                assert_eq!(
                    m.permissions().mode() & 0o777,
                    0o640,
                    "{} is not readable by the repository's group",
                    e.display()
                );
            }
        }
    }
    assert!(written >= 3, "the backup wrote {written} files");
    // A member of the group (not the owner) lists the snapshot with restic (the test's
    // directory opened to the group for that; another user needs root to be played).
    if let Some(restic) = restic_binary("a group member's read")
        && rustix::process::geteuid().is_root()
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let gid = std::fs::metadata(repo.join("config")).unwrap().gid();
        let out = Command::new("setpriv")
            .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups"])
            .arg(&restic)
            .args(["--no-lock", "--no-cache", "--repo"])
            .arg(&repo)
            .args(["snapshots", "--json"])
            .env("RESTIC_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    }
    // Not for a repository only its owner reads.
    let (src2, repo2) = (t.path().join("src2"), t.path().join("repo2"));
    write(&src2.join("f"), b"private");
    sr_ok(&["init", "--dest", &file_url(&repo2)]);
    assert_eq!(sr_backup(&src2, &repo2)["status"], "complete");
    for e in walkdir(&repo2.join("snapshots")) {
        let mode = std::fs::metadata(&e).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} mode {mode:o}", e.display());
    }
}

/// With both `RESTIC_PASSWORD_FILE` and `RESTIC_PASSWORD` set, restic uses the file;
/// snapring used the variable, so `snapring init` keyed a repository restic in the same
/// environment could not open. And a password file of white space only (which restic
/// refuses as empty) makes no new repository.
#[test]
fn restics_password_variables_are_read_in_restics_order() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("f"), b"x");
    let pwfile = t.path().join("pw");
    std::fs::write(&pwfile, "from-the-file\n").unwrap();
    let url = file_url(&repo);
    let env = [
        ("RESTIC_PASSWORD", "from-the-variable"),
        ("RESTIC_PASSWORD_FILE", pwfile.to_str().unwrap()),
    ];
    let init = ["init".as_ref(), "--dest".as_ref(), OsStr::new(&url)];
    let out = snapring(&init, &env);
    assert!(out.status.success(), "{out:?}");
    let list = ["list".as_ref(), "--dest".as_ref(), OsStr::new(&url)];
    let out = snapring(&list, &[("SNAPRING_PASSWORD", "from-the-file")]);
    assert!(out.status.success(), "keyed with the variable: {out:?}");
    if let Some(restic) = restic_binary("restic in the same environment") {
        let out = Command::new(restic)
            .args(["--no-cache", "--repo"])
            .arg(&repo)
            .arg("snapshots")
            .envs(env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restic in the same environment: {out:?}"
        );
    }
    // A repository an older snapring keyed with the variable (it read it first) still
    // opens in that environment, with a warning.
    let url3 = file_url(&t.path().join("repo3"));
    let init3 = ["init".as_ref(), "--dest".as_ref(), OsStr::new(&url3)];
    let out = snapring(&init3, &[("SNAPRING_PASSWORD", "from-the-variable")]);
    assert!(out.status.success(), "{out:?}");
    let list3 = ["list".as_ref(), "--dest".as_ref(), OsStr::new(&url3)];
    let out = snapring(&list3, &env);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("snapring now reads the file first"),
        "{out:?}"
    );
    // White space only: refused for a new repository, nothing made.
    std::fs::write(&pwfile, "   \n").unwrap();
    let url2 = file_url(&t.path().join("repo2"));
    let init2 = ["init".as_ref(), "--dest".as_ref(), OsStr::new(&url2)];
    let out = snapring(
        &init2,
        &[("RESTIC_PASSWORD_FILE", pwfile.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds only white space"),
        "{out:?}"
    );
    assert!(!t.path().join("repo2/config").exists());
}

/// A format version 1 repository (restic before 0.14) is read, never written: a dry run
/// of `forget` or `prune` says so as the real one does. It planned "would forget 1
/// snapshots", exit 0, where the real one refused.
#[test]
fn a_dry_run_into_a_version_1_repository_refuses_as_the_real_run() {
    let Some(restic) = restic_binary("a version 1 repository") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("f"), b"v1");
    run_restic(&restic, &repo, &["init", "--repository-version", "1"]);
    run_restic(&restic, &repo, &[OsStr::new("backup"), src.as_os_str()]);
    let url = file_url(&repo);
    for args in [
        vec!["forget", "--dest", &url, "latest", "--dry-run"],
        vec!["prune", "--dest", &url, "--dry-run"],
        vec!["forget", "--dest", &url, "latest"],
    ] {
        let (code, out, err) = sr(&args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            err.contains("snapring writes version 2 only"),
            "{args:?}: {err}"
        );
    }
    // Read as ever.
    restore_latest(&repo, &t.path().join("T"));
    assert_eq!(std::fs::read(t.path().join("T/f")).unwrap(), b"v1");
}

/// `list` of a repository whose snapshots restic took under two time zones (restic
/// writes the local offset: `-05:00` under `TZ=America/New_York`, `+05:30` under
/// `Asia/Kolkata`) beside snapring's (`Z`): the TIME column shows every time in one form,
/// UTC to the second, so the columns line up (an offset pushed LABEL, HOST and PATHS
/// out of their columns). The JSON keeps each time as restic wrote it.
#[test]
fn list_shows_every_snapshot_time_in_one_form_whatever_zone_took_it() {
    let Some(restic) = restic_binary("list's times of snapshots restic took") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let url = repo_of(&repo, &src);
    for tz in ["America/New_York", "Asia/Kolkata"] {
        let mut c = restic_cmd(&restic, &repo);
        c.env("TZ", tz);
        restic_ok(c, &[OsStr::new("backup"), src.as_os_str()]);
    }
    let json: serde_json::Value =
        serde_json::from_str(&sr_ok(&["list", "--dest", &url, "--json"])).unwrap();
    let written: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["time"].as_str().unwrap())
        .collect();
    assert!(
        written.iter().any(|t| t.ends_with("-05:00"))
            && written.iter().any(|t| t.ends_with("+05:30")),
        "{written:?}"
    );
    let out = sr_ok(&["list", "--dest", &url]);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    let label_at = header.find("LABEL").unwrap();
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 3, "{out}");
    for row in rows {
        let time = row.split_whitespace().nth(1).unwrap();
        assert!(
            time.len() == 20
                && time.ends_with('Z')
                && chrono::DateTime::parse_from_rfc3339(time).is_ok(),
            "{out}"
        );
        let label = row.split_whitespace().nth(2).unwrap();
        assert_eq!(row.find(&format!(" {label} ")), Some(label_at - 1), "{out}");
    }
}

/// A symlink whose target is not UTF-8, backed up by Debian's restic 0.14: restic
/// before 0.17 stored the target as a JSON string, U+FFFD for each invalid byte, with
/// no `linktarget_raw` (snapring writes one, as restic 0.17 does). `verify --against`
/// the tree reports that known loss as a `metadata` difference that says so, not a
/// corrupt file (it counted one, as if the repository were damaged), and `diff
/// --against` says the same; snapring's own snapshot of the tree is clean.
#[test]
fn verify_against_names_a_link_target_restic_stored_lossily() {
    use std::os::unix::ffi::OsStrExt;
    let Some(restic) = restic_binary("a link target restic stored lossily") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let target = std::ffi::OsStr::from_bytes(b"caf\xe9");
    std::os::unix::fs::symlink(target, src.join("ln")).unwrap();
    run_restic(&restic, &repo, &["init", "--repository-version", "2"]);
    run_restic(&restic, &repo, &[OsStr::new("backup"), src.as_os_str()]);
    let url = file_url(&repo);
    let s = src.to_str().unwrap();
    let (code, out, err) = sr(&["verify", "--dest", &url, "--against", s, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {err}"));
    let v = &v[0];
    if v["differences"].as_array().unwrap().is_empty() {
        // A restic that keeps the bytes (0.17 and later).
        assert_eq!(code, 0, "{out}\n{err}");
        return;
    }
    assert_eq!(code, 2, "{out}\n{err}");
    assert_eq!(v["corrupt"], 0, "{v}");
    assert_eq!(v["metadata"], 1, "{v}");
    let d = &v["differences"][0];
    assert_eq!(
        (&d["path"], &d["change"]),
        (&"ln".into(), &"metadata".into()),
        "{v}"
    );
    let said = d["detail"].to_string();
    assert!(
        said.contains("stored lossily (restic before 0.17") && !said.contains("\"symlink target\""),
        "{v}"
    );
    let (_, out, err) = sr(&["diff", "--dest", &url, "--against", s, "latest"]);
    assert!(
        out.contains("m ln  symlink target not UTF-8: stored lossily"),
        "{out}\n{err}"
    );
    // snapring's own snapshot keeps the bytes.
    sr_ok(&["backup", "--source", s, "--dest", &url]);
    let (code, out, err) = sr(&["verify", "--dest", &url, "--against", s]);
    assert_eq!(code, 0, "{out}\n{err}");
}

/// `init --dest file://DIR` refuses a hard-link store and a directory holding data (a
/// source given by mistake), naming what it holds, and creates nothing; a backup with
/// `--dest file://STORE` says the store is a hard-link store to back up into by its
/// path, not "create one with `snapring init --dest file://STORE`". `init` made a
/// repository inside both (exit 0), and the backup's message advised exactly that.
/// An empty directory, or one with only what an interrupted `init` left, is taken.
#[test]
fn init_refuses_a_store_and_a_directory_holding_data() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    write(&src.join("f"), b"x");
    let out = snapring(
        &[
            "backup".as_ref(),
            "--source".as_ref(),
            src.as_os_str(),
            "--dest".as_ref(),
            store.as_os_str(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    let (code, _, err) = sr(&["init", "--dest", &file_url(&store)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is a snapring hard-link store")
            && err.contains(&format!("--dest {} (without file://)", store.display()))
            && err.contains("no repository was created"),
        "{err}"
    );
    let (code, _, err) = sr(&["init", "--dest", &file_url(&src)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is not empty (it holds f)") && err.contains("no repository was created"),
        "{err}"
    );
    for dir in [&src, &store] {
        for n in ["config", "keys", "data"] {
            assert!(!dir.join(n).exists(), "{} made in {dir:?}", n);
        }
    }
    let (code, _, err) = sr(&[
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &file_url(&store),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not a restic repository")
            && err.contains("is a snapring hard-link store")
            && !err.contains("snapring init --dest file://"),
        "{err}"
    );
    // Empty, or left by an interrupted init: taken.
    let (empty, half) = (t.path().join("empty"), t.path().join("half"));
    std::fs::create_dir(&empty).unwrap();
    std::fs::create_dir_all(half.join("keys")).unwrap();
    std::fs::create_dir_all(half.join("data/00")).unwrap();
    for r in [&empty, &half] {
        sr_ok(&["init", "--dest", &file_url(r)]);
        assert!(r.join("config").is_file());
    }
}
