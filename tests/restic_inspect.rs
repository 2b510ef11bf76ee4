//! The read-only views of a restic repository (`--dest file:///PATH`): `verify` re-reads
//! every blob and names the files a flipped byte in a pack damaged (exit 2), passes a
//! clean repository and one `restic backup` wrote (exit 0); `diff` between two real
//! backups lists what changed in the store's shape, skipping unchanged subtrees unread;
//! `history PATH` lists one path's versions across snapshots. The S3 case of verify is
//! in restic_s3.rs. Also `restore --config` of a job whose `dest` is a repository.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::restic::*;
use common::*;

fn sr_ok(args: &[&str]) -> String {
    let (code, out, err) = sr(args);
    assert_eq!(code, 0, "snapring {args:?}: {out}\n{err}");
    out
}

fn sr_json(args: &[&str]) -> serde_json::Value {
    let out = sr_ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn backup(src: &Path, url: &str) -> serde_json::Value {
    sr_json(&backup_json_args(src, url))
}

/// The largest file under `dir` (recursively): in a repository's `data/`, the pack
/// of the biggest file's blobs.
fn largest_file(dir: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else if best.as_ref().is_none_or(|(n, _)| md.len() > *n) {
                best = Some((md.len(), p));
            }
        }
    }
    best.expect("a file").1
}

/// Flips one byte in the middle of `p`.
fn flip_middle_byte(p: &Path) {
    let mut b = std::fs::read(p).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x40;
    // Pack files are written read-only.
    chmod(p, 0o644);
    std::fs::write(p, b).unwrap();
}

/// A source whose only big file is `big/random` (3 MiB, several chunks): the largest
/// pack holds its blobs and almost nothing else. Also an empty file.
fn source(src: &Path) {
    write(&src.join("big/random"), &pseudo_random(3 << 20, 1));
    for i in 0..5 {
        write(
            &src.join(format!("small/f{i}")),
            format!("small {i}\n").as_bytes(),
        );
    }
    std::os::unix::fs::symlink("../small/f1", src.join("big/link")).unwrap();
    std::fs::create_dir_all(src.join("empty")).unwrap();
    write(&src.join("zero"), b"");
}

/// A temp dir with [`source`] backed up once into a new repository in it: (the temp
/// dir, the source, the repository, its URL).
fn backed_up() -> (tempfile::TempDir, PathBuf, PathBuf, String) {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    source(&src);
    let url = file_url(&repo);
    sr_ok(&["init", "--dest", &url]);
    backup(&src, &url);
    (t, src, repo, url)
}

#[test]
fn verify_passes_a_clean_repository_and_names_the_file_a_flipped_byte_damaged() {
    let (_t, src, repo, url) = backed_up();
    write(&src.join("small/f0"), b"changed\n");
    let second = backup(&src, &url);

    let v = sr_json(&["verify", "--dest", &url, "--all", "--json"]);
    let v = v.as_array().unwrap();
    assert_eq!(v.len(), 2, "{v:?}");
    for x in v {
        assert_eq!(x["clean"], true, "{x}");
        assert_eq!(x["files"], 7, "{x}");
        assert_eq!(x["bytes"], (3 << 20) + 5 * 8, "{x}");
        assert!(x["data_blobs"].as_u64().unwrap() >= 4, "{x}");
        assert!(x["tree_blobs"].as_u64().unwrap() >= 4, "{x}");
    }
    // The second snapshot shares all but one data blob with the first: they are read
    // once.
    assert_eq!(v[0]["data_blobs_read"], v[0]["data_blobs"], "{v:?}");
    assert_eq!(v[1]["data_blobs_read"], 1, "{v:?}");
    assert!(v[0]["data_bytes_read"].as_u64().unwrap() >= 3 << 20);
    // Text: the newest by default, its verdict, exit 0.
    let out = sr_ok(&["verify", "--dest", &url]);
    let short = &second["snapshot"].as_str().unwrap()[..8];
    assert!(
        out.starts_with(&format!("{short}: clean against repository: 7 files")),
        "{out}"
    );

    // Bit rot in the pack of big/random's blobs.
    flip_middle_byte(&largest_file(&repo.join("data")));
    let (code, out, err) = sr(&["verify", "--dest", &url, "latest"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        out.contains(&format!("{short} ! big/random  in pack "))
            && out.contains("MAC check failed"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{short}: DAMAGED against repository")),
        "{out}"
    );
    assert!(
        out.contains("1 damaged files, 0 damaged directories"),
        "{out}"
    );
    assert!(!out.contains("small/"), "{out}");
    let (code, out, _) = sr(&["verify", "--dest", &url, "--all", "--json"]);
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for x in v.as_array().unwrap() {
        assert_eq!(x["clean"], false, "{x}");
        assert_eq!(x["corrupt"], 1, "{x}");
        assert_eq!(x["damaged"][0]["path"], "big/random", "{x}");
        assert_eq!(x["damaged"][0]["kind"], "file", "{x}");
    }
    // A snapshot that does not exist is an error, exit 1.
    let (code, _, err) = sr(&["verify", "--dest", &url, "ffffffffff"]);
    assert_eq!(code, 1);
    assert!(err.contains("no snapshot \"ffffffffff\""), "{err}");
}

#[test]
fn verify_reports_a_snapshot_whose_tree_pack_is_gone() {
    let (_t, _src, repo, url) = backed_up();
    // Packs hold either data or tree blobs; the smallest pack is the trees'.
    let mut packs = Vec::new();
    let mut stack = vec![repo.join("data")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                packs.push((e.metadata().unwrap().len(), e.path()));
            }
        }
    }
    packs.sort();
    assert!(packs.len() >= 2, "{packs:?}");
    std::fs::remove_file(&packs[0].1).unwrap();
    let (code, out, err) = sr(&["verify", "--dest", &url, "--json"]);
    assert_eq!(code, 2, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let x = &v[0];
    assert_eq!(x["clean"], false, "{x}");
    assert!(x["damaged_dirs"].as_u64().unwrap() >= 1, "{x}");
    assert_eq!(x["damaged"][0]["kind"], "directory", "{x}");
    assert_eq!(x["damaged"][0]["path"], ".", "{x}");
    assert!(
        x["damaged"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot open"),
        "{x}"
    );
}

#[test]
fn verify_passes_a_repository_restic_wrote() {
    let Some(restic) = restic_binary("verify of a restic-written repository") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    source(&src);
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
    let v = sr_json(&["verify", "--dest", &file_url(&repo), "--json"]);
    let x = &v[0];
    assert_eq!(x["clean"], true, "{x}");
    assert_eq!(x["files"], 7, "{x}");
    assert!(x["data_bytes_read"].as_u64().unwrap() >= 3 << 20, "{x}");
    // And a byte flipped in restic's pack is caught the same way.
    flip_middle_byte(&largest_file(&repo.join("data")));
    let (code, out, err) = sr(&["verify", "--dest", &file_url(&repo)]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.contains(" ! big/random  "), "{out}");
}

/// The same changes, backed up into a store and into a repository, are diffed in the
/// same words: each entry's `kind` (`directory`, `character device`, …) and a type
/// change's detail (`type file -> directory`). Before, the repository said restic's
/// node types (`dir`, `chardev`, `type file -> dir`) where the store said `directory`.
#[test]
fn a_store_and_a_repository_diff_name_kinds_in_the_same_words() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo, store) = (
        t.path().join("src"),
        t.path().join("repo"),
        t.path().join("store"),
    );
    write(&src.join("was_file"), b"a file\n");
    write(&src.join("was_dir/x"), b"x\n");
    write(&src.join("keep"), b"kept\n");
    let url = file_url(&repo);
    sr_ok(&["init", "--dest", &url]);
    let one = backup(&src, &url);
    assert_eq!(common::backup(&src, &store, &[], &[]).0, 0);
    std::fs::remove_file(src.join("was_file")).unwrap();
    write(&src.join("was_file/inside"), b"i\n");
    std::fs::remove_dir_all(src.join("was_dir")).unwrap();
    write(&src.join("was_dir"), b"now a file\n");
    write(&src.join("new/n"), b"n\n");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o644),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    backup(&src, &url);
    assert_eq!(common::backup(&src, &store, &[], &[]).0, 0);

    let kinds = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v["differences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let types: Vec<&str> = d["detail"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|x| x.as_str().filter(|x| x.starts_with("type ")))
                    .collect();
                format!("{} {} {} {types:?}", d["change"], d["path"], d["kind"])
            })
            .collect();
        k.sort();
        k
    };
    let first = one["snapshot"].as_str().unwrap();
    let from_repo = sr_json(&["diff", "--dest", &url, &first[..10], "latest", "--json"]);
    let from_store = sr_json(&[
        "diff",
        "--dest",
        store.to_str().unwrap(),
        "daily.1",
        "daily.0",
        "--json",
    ]);
    assert_eq!(
        kinds(&from_repo),
        kinds(&from_store),
        "{from_repo}\n{from_store}"
    );
    let k = kinds(&from_repo);
    for want in [
        "\"content\" \"was_file\" \"directory\" [\"type file -> directory\"]",
        "\"content\" \"was_dir\" \"file\" [\"type directory -> file\"]",
        "\"added\" \"new\" \"directory\" []",
        "\"added\" \"null\" \"character device\" []",
    ] {
        assert!(k.iter().any(|x| x == want), "{want} in {k:?}");
    }
}

/// `list`'s orders, as documented (docs/format.md): a repository's `--json` is oldest
/// first, as restic's `snapshots --json` (the newest is `.[-1]`), while its table is
/// newest first; a store's `--json` is newest first, as its table (`daily.0` first).
#[test]
fn list_orders_a_repositorys_json_as_restic_and_a_stores_as_its_table() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo, store) = (
        t.path().join("src"),
        t.path().join("repo"),
        t.path().join("store"),
    );
    write(&src.join("f"), b"1\n");
    let url = file_url(&repo);
    sr_ok(&["init", "--dest", &url]);
    let one = backup(&src, &url);
    assert_eq!(common::backup(&src, &store, &[], &[]).0, 0);
    write(&src.join("f"), b"2\n");
    let two = backup(&src, &url);
    assert_eq!(common::backup(&src, &store, &[], &[]).0, 0);
    let id = |v: &serde_json::Value| v["snapshot"].as_str().unwrap()[..8].to_string();

    let json = sr_json(&["list", "--dest", &url, "--json"]);
    let ids: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["short_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id(&one), id(&two)], "oldest first: {json}");
    let table = sr_ok(&["list", "--dest", &url]);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert!(rows[0].starts_with(&id(&two)), "newest first: {table}");
    assert!(rows[1].starts_with(&id(&one)), "{table}");

    let store = store.to_str().unwrap();
    let json = sr_json(&["list", "--dest", store, "--json"]);
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["daily.0", "daily.1"], "newest first: {json}");
    let table = sr_ok(&["list", "--dest", store]);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert!(
        rows[0].starts_with("daily.0") && rows[1].starts_with("daily.1"),
        "{table}"
    );
    let help = sr_ok(&["list", "--help"]);
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains("oldest first") && help.contains("newest first"),
        "{help}"
    );
}

#[test]
fn diff_between_two_backups_lists_the_changes_and_skips_unchanged_subtrees() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("a"), b"first\n");
    write(&src.join("d/x"), b"x\n");
    write(&src.join("d/y"), b"y\n");
    for i in 0..10 {
        write(&src.join(format!("same/deep/f{i}")), b"unchanged\n");
    }
    let url = file_url(&repo);
    sr_ok(&["init", "--dest", &url]);
    // A second backup of the unchanged source (its trees are the first's: the mtime
    // is recorded as the access time), then the changes.
    backup(&src, &url);
    let one = backup(&src, &url);
    write(&src.join("a"), b"second, longer\n");
    chmod(&src.join("d/x"), 0o600);
    std::fs::remove_file(src.join("d/y")).unwrap();
    write(&src.join("d/z"), b"z\n");
    write(&src.join("new/n"), b"n\n");
    let two = backup(&src, &url);
    let (a, b) = (
        one["snapshot"].as_str().unwrap(),
        two["snapshot"].as_str().unwrap(),
    );

    let r = sr_json(&["diff", "--dest", &url, &a[..10], "latest", "--json"]);
    let lines: Vec<String> = r["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("{} {} {}", d["change"], d["path"], d["kind"]))
        .collect();
    assert_eq!(
        lines,
        [
            "\"content\" \"a\" \"file\"",
            "\"metadata\" \"d/x\" \"file\"",
            "\"removed\" \"d/y\" \"file\"",
            "\"added\" \"d/z\" \"file\"",
            "\"added\" \"new\" \"directory\"",
            "\"added\" \"new/n\" \"file\"",
        ],
        "{r}"
    );
    assert_eq!(r["differences"][0]["detail"][0], "size 6 -> 15", "{r}");
    assert_eq!(r["differences"][1]["detail"][0], "mode 644 -> 600", "{r}");
    assert_eq!(
        (
            &r["added"],
            &r["removed"],
            &r["content_changed"],
            &r["metadata_changed"]
        ),
        (&3.into(), &1.into(), &1.into(), &1.into()),
        "{r}"
    );
    assert_eq!(r["from"], &a[..8]);
    assert_eq!(r["to"], &b[..8]);
    // `same/` has the same tree id in both snapshots: skipped, never read.
    assert!(r["subtrees_skipped"].as_u64().unwrap() >= 1, "{r}");

    // Text, the store's shape; a snapshot against itself: nothing, no tree read.
    let out = sr_ok(&["diff", "--dest", &url, &a[..8], b]);
    assert!(out.contains("M a  size 6 -> 15, content"), "{out}");
    assert!(out.contains("m d/x  mode 644 -> 600"), "{out}");
    assert!(out.contains("- d/y  size 2\n"), "{out}");
    assert!(out.ends_with(&format!(
        "{} -> {}: 3 added, 1 removed, 1 changed, 1 metadata only\n",
        &a[..8],
        &b[..8]
    )));
    let same = sr_json(&["diff", "--dest", &url, "latest", "latest", "--json"]);
    assert_eq!(same["differences"], serde_json::json!([]), "{same}");
    assert_eq!(same["trees_read"], 0, "{same}");

    // One snapshot is not enough.
    let (code, _, err) = sr(&["diff", "--dest", &url, "latest"]);
    assert_eq!(code, 64, "a usage error: {err}");
    assert!(
        err.contains("needs a second snapshot to compare with") && err.contains("or --against DIR"),
        "{err}"
    );
}

/// `verify --against` reads a file's bytes on both sides (the repository's blobs, the
/// live file) and counts it once, as a store's verify does: a 1-file, 6-byte source is
/// `1 files hashed (6 B)` on both (it said `2 files hashed (12 B)` for a repository).
#[test]
fn verify_against_counts_each_file_once_as_on_a_store() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo, store) = (
        t.path().join("src"),
        t.path().join("repo"),
        t.path().join("store"),
    );
    write(&src.join("one"), b"hello\n");
    let (s, url) = (src.to_str().unwrap(), file_url(&repo));
    sr_ok(&["init", "--dest", &url]);
    backup(&src, &url);
    backup(&src, store.to_str().unwrap());
    for dest in [url.as_str(), store.to_str().unwrap()] {
        let v = sr_json(&["verify", "--dest", dest, "--against", s, "--json"]);
        let totals = &v[0]["totals"];
        assert_eq!(totals["files_hashed"], 1, "{dest}: {v}");
        assert_eq!(totals["bytes_hashed"], 6, "{dest}: {v}");
        let out = sr_ok(&["verify", "--dest", dest, "--against", s]);
        assert!(
            out.contains("clean against") && out.contains(": 1 files hashed (6 B);"),
            "{dest}: {out}"
        );
    }
}

#[test]
fn verify_and_diff_against_the_live_source() {
    let (_t, src, _repo, url) = backed_up();
    let s = src.to_str().unwrap();
    let v = sr_json(&["verify", "--dest", &url, "--against", s, "--json"]);
    assert_eq!(v[0]["clean"], true, "{v}");
    assert_eq!(v[0]["against"], s, "{v}");
    assert_eq!(
        v[0]["totals"]["files_hashed"], 7,
        "7 files, each counted once though both sides are read: {v}"
    );
    let d = sr_json(&["diff", "--dest", &url, "latest", "--against", s, "--json"]);
    assert_eq!(d["differences"], serde_json::json!([]), "{d}");

    // Same size and mtime, other bytes (only verify sees it); a chmod; one gone; one new.
    let f0 = src.join("small/f0");
    let mtime = std::fs::metadata(&f0).unwrap().modified().unwrap();
    write(&f0, b"SMALL 0\n");
    std::fs::File::options()
        .write(true)
        .open(&f0)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    chmod(&src.join("small/f1"), 0o600);
    std::fs::remove_file(src.join("small/f2")).unwrap();
    write(&src.join("small/new"), b"new\n");
    let (code, out, err) = sr(&["verify", "--dest", &url, "--against", s]);
    assert_eq!(code, 2, "{out}\n{err}");
    for want in [
        " M small/f0  content",
        " m small/f1  mode 644 -> 600",
        " - small/f2  size 8",
        " + small/new  size 4",
        &format!("DIFFERS from {s}: "),
        // The directory's mtime too (verify reports directory times, as the store's).
        " m small  mtime ",
        "1 corrupt, 1 missing, 1 unexpected, 2 metadata",
    ] {
        assert!(out.contains(want), "{want:?} in {out}");
    }
    let (code, out, err) = sr(&["diff", "--dest", &url, "latest", "--against", s]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        !out.contains("small/f0"),
        "same size and mtime: diff does not read: {out}"
    );
    assert!(out.contains("m small/f1  mode 644 -> 600"), "{out}");
    assert!(
        out.contains(": 1 added, 1 removed, 0 changed, 1 metadata only"),
        "{out}"
    );
}

#[test]
fn history_lists_one_path_across_snapshots() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let url = file_url(&repo);
    sr_ok(&["init", "--dest", &url]);
    write(&src.join("other"), b"o\n");
    let s1 = backup(&src, &url); // no doc/f yet
    write(&src.join("doc/f"), b"v1\n");
    backup(&src, &url);
    backup(&src, &url); // the same
    write(&src.join("doc/f"), b"v2 longer\n");
    backup(&src, &url);
    chmod(&src.join("doc/f"), 0o600);
    backup(&src, &url);
    std::fs::remove_file(src.join("doc/f")).unwrap();
    backup(&src, &url);

    let h = sr_json(&["history", "--dest", &url, "doc/f", "--json"]);
    let h = h.as_array().unwrap();
    let changes: Vec<&str> = h.iter().map(|v| v["change"].as_str().unwrap()).collect();
    assert_eq!(
        changes,
        ["deleted", "metadata", "changed", "same", "new", "absent"],
        "{h:?}"
    );
    assert_eq!(h[1]["size"], 10);
    assert_eq!(h[3]["size"], 3);
    assert_eq!(h[3]["hash"], h[4]["hash"], "same content, same content id");
    assert_ne!(h[2]["hash"], h[3]["hash"]);
    assert_eq!(h[0]["kind"], "absent");
    assert_eq!(h[5]["snapshot"], &s1["snapshot"].as_str().unwrap()[..8]);

    let out = sr_ok(&["history", "--dest", &url, "doc/f"]);
    assert!(out.starts_with("SNAPSHOT "), "{out}");
    assert_eq!(out.lines().count(), 7, "{out}");
    let (code, _, err) = sr(&["history", "--dest", &url, "no/such"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no snapshot in") && err.contains("has no/such"),
        "{err}"
    );
}

/// `restore --config FILE --job J` of a job whose `dest` is a repository restores from
/// it, with the job's `password_file` (no password in the environment).
#[test]
fn restore_from_a_jobs_repository_with_its_password_file() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo, to) = (
        t.path().join("src"),
        t.path().join("repo"),
        t.path().join("to"),
    );
    source(&src);
    let url = file_url(&repo);
    sr_ok(&["init", "--dest", &url]);
    backup(&src, &url);
    let pw = t.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let cfg = t.path().join("s.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.offsite]\nsource = \"{}\"\ndest = \"{url}\"\npassword_file = \"{}\"\n",
            src.display(),
            pw.display()
        ),
    )
    .unwrap();
    let args = [
        "restore",
        "--config",
        cfg.to_str().unwrap(),
        "--job",
        "offsite",
        "latest",
        "--to",
        to.to_str().unwrap(),
    ];
    let out = snapring(
        &args.map(OsStr::new),
        &[("SNAPRING_PASSWORD", ""), ("RESTIC_PASSWORD", "")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&describe(&src), &describe(&to), "restore by the job");
}

/// A blob that fails its check is a problem of its file, which is not restored (the
/// blob and the file named, `partial`, exit 2), though the file is written by one of
/// the restore's fill threads, not the walk; the other files are restored
/// (tests/restic_damaged.rs has the whole case). It failed the whole restore, exit 1.
#[test]
fn a_restore_from_a_damaged_pack_fails_clearly() {
    let (t, _src, repo, url) = backed_up();
    flip_middle_byte(&largest_file(&repo.join("data")));
    let to = t.path().join("T");
    let (code, out, err) = sr(&restore_latest(&url, &to));
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.starts_with("partial: "), "{out}");
    assert!(
        err.contains("big/random: read from the repository: Data blob")
            && err.contains("MAC check failed"),
        "{err}"
    );
    assert!(
        !to.join("big/random").exists(),
        "the damaged file left behind"
    );
}
