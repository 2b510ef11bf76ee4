//! A frozen store (tests/fixtures/store-v1.tar.gz, made by `generate_store_v1_fixture`
//! below with the snapring of its day; see tests/fixtures/README.md) must stay readable:
//! list, verify, diff, history and the catalog read it; restores give back its source
//! exactly; a backup on top links every unchanged file. The archive keeps hard links,
//! owners, modes, ns mtimes and xattrs, but extraction gives every directory a new inode,
//! as `cp -a` or a restore from tape does: the store's records must survive that.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const FIXTURE: &str = "tests/fixtures/store-v1.tar.gz";

/// The archive's paths: the source as at the last backup, the store, the catalog.
struct Extracted {
    _t: tempfile::TempDir,
    source: PathBuf,
    store: PathBuf,
    catalog: PathBuf,
}

fn extract_into(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "--same-owner",
            "-xpzf",
        ])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE))
        .arg("-C")
        .arg(dir)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The recorded (name, run id, root inode) of every snapshot, from snapshots.json.
fn records(store: &Path) -> Vec<(String, String, u64)> {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join(".snapring/snapshots.json")).unwrap())
            .unwrap();
    state["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["id"].as_str().unwrap().to_string(),
                r["ino"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Extracts the fixture where no snapshot directory happens to get an inode its record
/// names (that would be the record's own directory as far as the store can tell).
fn extract() -> Extracted {
    let t = tempfile::tempdir().unwrap();
    for attempt in 0..5 {
        let dir = t.path().join(format!("x{attempt}"));
        extract_into(&dir);
        let store = dir.join("store");
        let recorded: BTreeSet<u64> = records(&store).iter().map(|r| r.2).collect();
        if snapshot_names(&store)
            .iter()
            .all(|n| !recorded.contains(&ino(&store.join(n))))
        {
            return Extracted {
                source: dir.join("source"),
                catalog: dir.join("catalog.db"),
                store,
                _t: t,
            };
        }
    }
    panic!("every extraction reused a recorded inode");
}

fn run(args: &[&OsStr], env: &[(&str, &str)]) -> (i32, serde_json::Value, String) {
    let out = snapring(args, env);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn on_store(store: &Path, cmd: &str, args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut a: Vec<&OsStr> = vec![cmd.as_ref(), "--dest".as_ref(), store.as_os_str()];
    a.extend(args.iter().map(OsStr::new));
    run(&a, &[])
}

/// Every manifest-related file of the store, with its content.
fn bookkeeping(store: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in ["", "manifests", "runs"] {
        for e in std::fs::read_dir(store.join(".snapring").join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                out.insert(
                    format!("{sub}/{}", e.file_name().to_string_lossy()),
                    std::fs::read(e.path()).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn a_v1_store_reads_restores_and_backs_up_after_being_copied() {
    let x = extract();
    let recs = records(&x.store);
    assert_eq!(
        recs.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["daily.0", "daily.1", "daily.2"]
    );
    let id = |name: &str| recs.iter().find(|r| r.0 == name).unwrap().1.clone();
    let before = bookkeeping(&x.store);

    // list: every snapshot keeps its run, though every inode changed.
    let (code, l, err) = on_store(&x.store, "list", &["--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<(String, String, String)> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["id"].as_str().unwrap_or("-").to_string(),
                s["status"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = ["daily.0", "daily.1", "daily.2"]
        .iter()
        .map(|n| (n.to_string(), id(n), "complete".to_string()))
        .collect();
    assert_eq!(listed, want, "{l}");
    assert!(l[0]["files"].as_u64().unwrap() > 10, "{l}");

    // verify --all: every snapshot against its manifest, clean.
    let (code, v, err) = on_store(&x.store, "verify", &["--all", "--json"]);
    assert_eq!(code, 0, "{err}\n{v}");
    for s in v.as_array().unwrap() {
        assert_eq!(s["against"], "manifest", "{s}");
        assert_eq!(s["clean"], true, "{s}");
        assert_eq!(
            s["run_id"],
            id(s["snapshot"].as_str().unwrap()).as_str(),
            "{s}"
        );
        assert!(s["totals"]["files_hashed"].as_u64().unwrap() > 5, "{s}");
    }
    assert_eq!(v.as_array().unwrap().len(), 3);

    // diff: what the generator changed between the first and the last backup.
    let (code, d, err) = on_store(&x.store, "diff", &["daily.2", "daily.0", "--json"]);
    assert_eq!(code, 0, "{err}");
    let got: BTreeSet<(String, String)> = d["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap().to_string(),
                d["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("added-1", "added"),
        ("added-2", "added"),
        ("attrs/file", "metadata"),
        ("docs/readme.txt", "content"),
        ("links/a", "content"),
        ("links/b", "content"),
        ("links/sub/c", "content"),
        ("modes/private", "metadata"),
        ("with%20space.txt", "removed"),
    ]
    .iter()
    .map(|(p, c)| (p.to_string(), c.to_string()))
    .collect();
    assert_eq!(got, want, "{d}");

    // history of a path, by run.
    let (code, h, err) = on_store(&x.store, "history", &["docs/readme.txt", "--json"]);
    assert_eq!(code, 0, "{err}");
    let versions: Vec<(String, String)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["run_id"].as_str().unwrap().to_string(),
                v["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            (id("daily.0"), "same".to_string()),
            (id("daily.1"), "changed".to_string()),
            (id("daily.2"), "first".to_string())
        ]
    );

    // The catalog written with the store, and one rebuilt from the copy: same runs.
    let cat = |c: &Path, args: &[&str]| {
        let mut a: Vec<&OsStr> = vec!["--catalog".as_ref(), c.as_os_str()];
        a.extend(args.iter().map(OsStr::new));
        run(&a, &[])
    };
    let ids = |h: &serde_json::Value| -> Vec<String> {
        h.as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (code, h, err) = cat(&x.catalog, &["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        ids(&h),
        [id("daily.2"), id("daily.1"), id("daily.0")],
        "{h}"
    );
    assert!(
        h.as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "complete")
    );
    let fresh = x.store.parent().unwrap().join("rebuilt.db");
    let (code, _, err) = cat(
        &fresh,
        &["catalog", "rebuild", "--dest", x.store.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let (_, h2, _) = cat(&fresh, &["history", "--json"]);
    assert_eq!(ids(&h2), ids(&h));

    // Restores: the newest equals the source as archived; the oldest equals its tree.
    let out = x.store.parent().unwrap().join("restored");
    for (snap, model) in [
        ("daily.0", describe(&x.source)),
        ("daily.2", describe(&x.store.join("daily.2"))),
    ] {
        let to = out.join(snap);
        let (code, r, err) = run(
            &[
                "restore".as_ref(),
                "--json".as_ref(),
                "--dest".as_ref(),
                x.store.as_os_str(),
                snap.as_ref(),
                "--to".as_ref(),
                to.as_os_str(),
            ],
            &[],
        );
        assert_eq!(code, 0, "{err}\n{r}");
        assert_eq!(r["status"], "complete", "{r}");
        assert_same_tree(&model, &describe(&to), &format!("restore of {snap}"));
    }
    assert_eq!(
        before,
        bookkeeping(&x.store),
        "a read command wrote to the store"
    );

    // A backup on top: the source as archived plus one change. Every unchanged file is
    // linked from the old daily.0, whose record and manifest are kept. The source is
    // at another path than the one it was backed up from: refused without
    // `--new-source`, which says it is the same data moved.
    let total = l[0]["files"].as_u64().unwrap();
    write(&x.source.join("docs/notes.md"), b"changed after the copy\n");
    let (code, rep, err) = backup(&x.source, &x.store, &["--retain", "3"], &[]);
    assert_eq!(code, 1, "{err}\n{rep}");
    assert!(
        rep["message"].as_str().unwrap().contains("--new-source"),
        "{rep}"
    );
    let (code, rep, err) = backup(&x.source, &x.store, &["--retain", "3", "--new-source"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["status"], "complete", "{rep}");
    assert_eq!(rep["based_on"], id("daily.0").as_str(), "{rep}");
    assert_eq!(rep["files_total"], total, "{rep}");
    assert_eq!(rep["files_transferred"], 1, "{rep}");
    assert_eq!(rep["link_fallbacks"], 0, "{rep}");
    assert_eq!(rep["files_linked"], total - 1, "{rep}");
    for unchanged in ["docs/readme.txt", "links/a", "modes/private", "attrs/file"] {
        assert_eq!(
            ino(&x.store.join("daily.0").join(unchanged)),
            ino(&x.store.join("daily.1").join(unchanged)),
            "{unchanged} was copied"
        );
    }
    assert_ne!(
        ino(&x.store.join("daily.0/docs/notes.md")),
        ino(&x.store.join("daily.1/docs/notes.md"))
    );
    // The kept records now name the new inodes; the old manifests are marked copied.
    let recs_after = records(&x.store);
    assert_eq!(
        recs_after.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        [
            rep["id"].as_str().unwrap().to_string(),
            id("daily.0"),
            id("daily.1")
        ]
    );
    for (name, run_id, recorded) in &recs_after {
        assert_eq!(*recorded, ino(&x.store.join(name)), "{name}");
        let copied = x
            .store
            .join(format!(".snapring/manifests/{run_id}.copied"))
            .exists();
        assert_eq!(copied, run_id != rep["id"].as_str().unwrap(), "{name}");
    }
    let (code, v, err) = on_store(&x.store, "verify", &["--all", "--json"]);
    assert_eq!(code, 0, "{err}\n{v}");
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|s| s["clean"] == true && s["against"] == "manifest"),
        "{v}"
    );
    assert_same_tree(
        &describe(&x.source),
        &describe(&x.store.join("daily.0")),
        "the new snapshot",
    );
    // And the next one is an ordinary incremental.
    let (code, rep, err) = backup(&x.source, &x.store, &["--retain", "3"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (
            rep["files_transferred"].as_u64(),
            rep["files_linked"].as_u64()
        ),
        (Some(0), Some(total)),
        "{rep}"
    );
}

/// A copy whose snapshot directories were also renamed (so each name holds a tree its
/// record does not describe) keeps no record a backup trusts: the trees differ from the
/// manifests. Kept by name alone, the records would make the backup link the old version
/// of `a/deep/f` from the tree now called daily.0 on the word of the other tree's
/// manifest. Readers are given the records of the names all the same, to report every
/// difference as damage (`store/copied.rs`): `list` says the trees differ, `verify`
/// names what does. The backup keeps those records for readers as the snapshots rotate.
#[test]
fn a_copied_store_with_swapped_names_keeps_no_record() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    write(&src.join("a/deep/f"), b"version 1");
    write(&src.join("g"), b"same");
    set_mtime(&src.join("a/deep/f"), 1_500_000_000, 1);
    assert_eq!(backup(&src, &store, &[], &[]).0, 0);
    write(&src.join("a/deep/f"), b"version 2");
    set_mtime(&src.join("a/deep/f"), 1_500_000_000, 2);
    assert_eq!(backup(&src, &store, &[], &[]).0, 0);
    let copy = t.path().join("copy");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&store)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(ok.success());
    let ids: Vec<(String, String, u64)> = records(&copy);
    std::fs::rename(copy.join("daily.0"), copy.join("tmp")).unwrap();
    std::fs::rename(copy.join("daily.1"), copy.join("daily.0")).unwrap();
    std::fs::rename(copy.join("tmp"), copy.join("daily.1")).unwrap();
    let (code, l, err) = on_store(&copy, "list", &["--json"]);
    assert_eq!(code, 0, "{err}");
    for s in l.as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let id = &ids.iter().find(|r| r.0 == name).unwrap().1;
        assert_eq!(s["id"], id.as_str(), "{l}");
        assert!(
            s["differs"].is_string(),
            "the tree differs from its record's manifest: {l}"
        );
    }
    assert!(err.contains("does not match"), "{err}");
    let (code, v, err) = on_store(&copy, "verify", &["daily.0", "--json"]);
    assert_eq!(code, 2, "{err}\n{v}");
    assert_eq!(v[0]["against"], "manifest", "{v}");
    assert_eq!(v[0]["corrupt"], 1, "{v}");
    let names_f = |v: &serde_json::Value| {
        v[0]["differences"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["path"] == "a/deep/f" && d["change"] == "content")
    };
    assert!(names_f(&v), "{v}");
    let (code, rep, err) = backup(&src, &copy, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["files_transferred"], 1, "{rep}");
    assert_same_tree(
        &describe(&src),
        &describe(&copy.join("daily.0")),
        "backup of a swapped copy",
    );
    // The untrusted records rotated with their trees, under inode 0: never a directory's.
    let after = records(&copy);
    assert_eq!(
        after[1..],
        [
            ("daily.1".to_string(), ids[0].1.clone(), 0),
            ("daily.2".to_string(), ids[1].1.clone(), 0)
        ],
        "{after:?}"
    );
    let (code, v, err) = on_store(&copy, "verify", &["--json"]);
    assert_eq!(code, 0, "{err}\n{v}");
    let (code, v, err) = on_store(&copy, "verify", &["daily.1", "--json"]);
    assert_eq!(code, 2, "{err}\n{v}");
    assert_eq!(v[0]["run_id"], ids[0].1.as_str(), "{v}");
    assert!(names_f(&v), "{v}");
}

/// A store copied to new inodes with one file's bytes rotted and another's mtime moved
/// (anything `stat` sees makes the tree differ from its manifest as a whole): readers
/// still check it against its manifest. `verify` names both (before, it refused: "no
/// usable manifest"); a restore reports the rotted file against its checksum and the
/// moved mtime against the manifest (restoring the recorded one), `partial` (before,
/// `complete`, the rot restored silently). A backup does not trust the record
/// (it compares with the tree by stat), and once the tree is put back as recorded the
/// record is kept for good.
#[test]
fn a_copied_store_whose_tree_changed_is_read_against_its_manifest() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    write(&src.join("a"), b"hello\n");
    write(&src.join("sub/big"), &vec![7u8; 100_000]);
    for f in ["a", "sub/big"] {
        set_mtime(&src.join(f), 1_500_000_000, 5);
    }
    let (code, rep, err) = backup(&src, &store, &[], &[]);
    assert_eq!(code, 0, "{err}");
    let id = rep["id"].as_str().unwrap().to_string();
    let copy = t.path().join("copy");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&store)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(ok.success());
    assert_ne!(ino(&copy.join("daily.0")), ino(&store.join("daily.0")));
    rot(&copy.join("daily.0/sub/big"));
    set_mtime(&copy.join("daily.0/a"), 1_577_836_800, 0);

    let (code, l, err) = on_store(&copy, "list", &["--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(l[0]["id"], id.as_str(), "{l}");
    assert_eq!(l[0]["taken_over"], false, "{l}");
    assert!(l[0]["differs"].as_str().unwrap().contains("mtime"), "{l}");

    let (code, v, err) = on_store(&copy, "verify", &["daily.0", "--json"]);
    assert_eq!(code, 2, "{err}\n{v}");
    assert_eq!(v[0]["against"], "manifest", "{v}");
    assert_eq!(v[0]["run_id"], id.as_str(), "{v}");
    assert_eq!(
        (&v[0]["corrupt"], &v[0]["metadata"]),
        (&1.into(), &1.into()),
        "{v}"
    );
    let named: BTreeSet<(String, String)> = v[0]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap().to_string(),
                d["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        named,
        [("a", "metadata"), ("sub/big", "content")]
            .iter()
            .map(|(p, c)| (p.to_string(), c.to_string()))
            .collect(),
        "{v}"
    );

    let to = t.path().join("restored");
    let (code, r, err) = run(
        &[
            "restore".as_ref(),
            "--json".as_ref(),
            "--dest".as_ref(),
            copy.as_os_str(),
            "daily.0".as_ref(),
            "--to".as_ref(),
            to.as_os_str(),
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}\n{r}");
    assert_eq!(r["status"], "partial", "{r}");
    let problems: Vec<(&str, &str)> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["path"].as_str().unwrap(), p["action"].as_str().unwrap()))
        .collect();
    // The moved mtime too (since session 47), and `a` gets the recorded one back.
    assert_eq!(
        problems,
        [
            ("a", "check metadata against the manifest"),
            ("sub/big", "check content against the manifest")
        ],
        "{r}"
    );
    let m = std::fs::metadata(to.join("a")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_500_000_000, 5));

    // A backup does not link on the manifest's word from a tree that differs from it.
    let (code, rep, err) = backup(&src, &copy, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    // (Compared by stat with the tree, as one taken over: `based_on` names it, no run.)
    assert_eq!(rep["based_on"], "daily.0", "{rep}");
    let recs = records(&copy);
    assert_eq!(recs[1], ("daily.1".to_string(), id.clone(), 0), "{recs:?}");
    assert!(
        !copy
            .join(format!(".snapring/manifests/{id}.copied"))
            .exists()
    );
    // Put back as recorded, the tree matches its manifest (`verify` checks it each time
    // it is run), but the verdict stays with the record for the snapshot's lifetime: the
    // next backup still does not trust it.
    std::fs::write(copy.join("daily.1/sub/big"), vec![7u8; 100_000]).unwrap();
    for f in ["a", "sub/big"] {
        set_mtime(&copy.join("daily.1").join(f), 1_500_000_000, 5);
    }
    let (code, v, err) = on_store(&copy, "verify", &["daily.1", "--json"]);
    assert_eq!(code, 0, "{err}\n{v}");
    let (code, rep, err) = backup(&src, &copy, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let recs = records(&copy);
    assert_eq!(recs[2], ("daily.2".to_string(), id.clone(), 0), "{recs:?}");
    assert!(
        !copy
            .join(format!(".snapring/manifests/{id}.copied"))
            .exists()
    );
}

/// The verdict on a copied tree that differs from its manifest is kept with its record
/// (`SnapRec::differs`, with the directory's inode): no command walks that tree again to
/// find it, neither a reader (`list`, run by `serve` on every scrape) nor a backup. A
/// tree changed further after the verdict is not seen by `list` (it still gives the
/// first difference as found), only by `verify`, which checks the tree each time.
#[test]
fn a_copied_tree_found_to_differ_is_not_walked_again() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    write(&src.join("a"), b"hello\n");
    write(&src.join("b"), b"world\n");
    for f in ["a", "b"] {
        set_mtime(&src.join(f), 1_500_000_000, 5);
    }
    let (code, rep, err) = backup(&src, &store, &[], &[]);
    assert_eq!(code, 0, "{err}");
    let id = rep["id"].as_str().unwrap().to_string();
    let copy = t.path().join("copy");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&store)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(ok.success());
    set_mtime(&copy.join("daily.0/a"), 1_577_836_800, 0);

    // Not yet recorded: a reader walks the tree (it writes nothing).
    let (code, l, err) = on_store(&copy, "list", &["--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("does not match"), "{err}");
    let why = l[0]["differs"].as_str().unwrap().to_string();
    assert!(why.contains("1 differences, first a"), "{l}");

    // A writer records the verdict, with the directory's inode.
    let (code, rep, err) = backup(&src, &copy, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join(".snapring/snapshots.json")).unwrap())
            .unwrap();
    let r = &state["snapshots"][1];
    assert_eq!(
        (&r["name"], &r["id"], &r["ino"]),
        (&"daily.1".into(), &id.as_str().into(), &0.into()),
        "{state}"
    );
    assert_eq!(r["differs"]["ino"], ino(&copy.join("daily.1")), "{state}");
    assert!(
        r["differs"]["why"].as_str().unwrap().contains("first a"),
        "{state}"
    );

    // Changed further: a walk would find two differences now.
    set_mtime(&copy.join("daily.1/b"), 1_577_836_800, 0);
    let (code, l, err) = on_store(&copy, "list", &["--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("does not match"), "walked again: {err}");
    assert_eq!(l[1]["name"], "daily.1", "{l}");
    assert_eq!(l[1]["id"], id.as_str(), "{l}");
    let again = l[1]["differs"].as_str().unwrap();
    assert!(
        again.contains("1 differences, first a"),
        "walked again: {l}"
    );
    // A reader still reads it against its manifest: `verify` checks the tree itself.
    let (code, v, err) = on_store(&copy, "verify", &["daily.1", "--json"]);
    assert_eq!(code, 2, "{err}\n{v}");
    assert_eq!(v[0]["run_id"], id.as_str(), "{v}");
    assert_eq!(v[0]["metadata"], 2, "{v}");
    // Nor does a backup walk it, and the verdict rotates with the record.
    let (code, rep, err) = backup(&src, &copy, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert!(!err.contains("does not match"), "walked again: {err}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join(".snapring/snapshots.json")).unwrap())
            .unwrap();
    let r = &state["snapshots"][2];
    assert_eq!(
        (&r["name"], &r["ino"]),
        (&"daily.2".into(), &0.into()),
        "{state}"
    );
    assert_eq!(r["differs"]["ino"], ino(&copy.join("daily.2")), "{state}");
    assert!(
        !copy
            .join(format!(".snapring/manifests/{id}.copied"))
            .exists()
    );
}

/// A copied tree that differs from its record's manifest is compared by stat by a
/// backup; a file whose bytes rotted in the copy with its stat kept was linked into
/// every later snapshot although `verify` had named it. Now its `.damaged` list is
/// used as a trusted manifest's is: the file is copied from the source.
#[test]
fn a_backup_copies_what_verify_found_damaged_in_a_copied_tree_it_does_not_trust() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    write(&src.join("a"), b"hello\n");
    write(&src.join("b"), b"world\n");
    for f in ["a", "b"] {
        set_mtime(&src.join(f), 1_500_000_000, 5);
    }
    let (code, _, err) = backup(&src, &store, &[], &[]);
    assert_eq!(code, 0, "{err}");
    let copy = t.path().join("copy");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&store)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(ok.success());
    // Bit rot in `a`, its stat kept; `b` touched, so the tree is not trusted.
    std::fs::write(copy.join("daily.0/a"), b"hellO\n").unwrap();
    set_mtime(&copy.join("daily.0/a"), 1_500_000_000, 5);
    set_mtime(&copy.join("daily.0/b"), 1_577_836_800, 0);

    let (code, v, err) = on_store(&copy, "verify", &["daily.0", "--json"]);
    assert_eq!(code, 2, "{err}\n{v}");
    assert_eq!(v[0]["corrupt"], 1, "{v}");

    let (code, rep, err) = backup(&src, &copy, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(std::fs::read(copy.join("daily.0/a")).unwrap(), b"hello\n");
    assert_ne!(
        ino(&copy.join("daily.0/a")),
        ino(&copy.join("daily.1/a")),
        "the damaged file was linked forward"
    );
    // `b` changed in the copy only: copied as a changed file by stat.
    assert_eq!(std::fs::read(copy.join("daily.0/b")).unwrap(), b"world\n");
}

/// Writes tests/fixtures/store-v1.tar.gz. The committed archive is frozen: it was made
/// once, with the snapring of its day, and is never regenerated (a new format gets a
/// new fixture beside it). Run:
///
/// ```text
/// SNAPRING_FIXTURE_OUT=/tmp/store-v1.tar.gz [SNAPRING_FIXTURE_BIN=path/to/snapring] \
///     cargo test --test store_fixture -- --ignored generate_store_v1_fixture
/// ```
#[test]
#[ignore = "writes a new fixture; see tests/fixtures/README.md"]
fn generate_store_v1_fixture() {
    let out =
        PathBuf::from(std::env::var_os("SNAPRING_FIXTURE_OUT").expect("SNAPRING_FIXTURE_OUT"));
    let bin = std::env::var_os("SNAPRING_FIXTURE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(bin);
    let t = tempfile::tempdir().unwrap();
    let (src, store, catalog) = (
        t.path().join("source"),
        t.path().join("store"),
        t.path().join("catalog.db"),
    );
    let backup = || {
        let o = Command::new(&bin)
            .args(["--catalog"])
            .arg(&catalog)
            .args([
                "backup", "--json", "--retain", "3", "--jobs", "2", "--source",
            ])
            .arg(&src)
            .arg("--dest")
            .arg(&store)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let dirs_last = |src: &Path| {
        for d in [
            "docs",
            "odd",
            "links/sub",
            "links",
            "modes/shared",
            "modes",
            "attrs",
            "empty/dir",
            "empty",
            "",
        ] {
            if src.join(d).exists() {
                set_mtime(&src.join(d), 1_600_000_000, 100_000_001);
            }
        }
    };
    // Backup 1: one of most things.
    write(&src.join("docs/readme.txt"), b"version 1\n");
    write(&src.join("docs/notes.md"), b"# notes\n");
    write(&src.join("with space.txt"), b"spaces\n");
    write(&pb(&src, b"odd/\xff\xfe not utf8"), b"bytes\n");
    write(&pb(&src, b"odd/new\nline"), b"newline\n");
    write(&src.join("links/a"), b"shared inode, version 1\n");
    std::fs::create_dir_all(src.join("links/sub")).unwrap();
    std::fs::hard_link(src.join("links/a"), src.join("links/b")).unwrap();
    std::fs::hard_link(src.join("links/a"), src.join("links/sub/c")).unwrap();
    write(&src.join("modes/private"), b"private\n");
    chown(&src.join("modes/private"), 1234, 5678);
    chmod(&src.join("modes/private"), 0o600);
    write(&src.join("modes/setgid"), b"setgid\n");
    chmod(&src.join("modes/setgid"), 0o2755);
    std::fs::create_dir_all(src.join("modes/shared")).unwrap();
    chown(&src.join("modes/shared"), 42, 4242);
    chmod(&src.join("modes/shared"), 0o2775);
    std::os::unix::fs::symlink("../docs/readme.txt", src.join("links/to-readme")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", src.join("links/dangling")).unwrap();
    write(&src.join("attrs/file"), b"xattrs\n");
    set_xattr(&src.join("attrs/file"), "user.color", b"blue");
    set_xattr(&src.join("attrs/file"), "user.bin", b"\x00\x01\xff");
    set_xattr(&src.join("attrs"), "user.dir", b"on a directory");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    std::fs::create_dir_all(src.join("empty/dir")).unwrap();
    for (i, f) in [
        "docs/readme.txt",
        "docs/notes.md",
        "with space.txt",
        "links/a",
        "modes/private",
        "modes/setgid",
        "attrs/file",
        "fifo",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&src.join(f), 1_500_000_000 + i as i64, 123_456_789);
    }
    set_mtime(&src.join("links/dangling"), 1_400_000_000, 1);
    set_mtime(&src.join("links/to-readme"), 1_400_000_000, 2);
    set_mtime(&pb(&src, b"odd/\xff\xfe not utf8"), 1_450_000_000, 3);
    set_mtime(&pb(&src, b"odd/new\nline"), 1_450_000_000, 4);
    dirs_last(&src);
    backup();
    // Backup 2: content, mode, xattr, an added and a removed file.
    write(&src.join("docs/readme.txt"), b"version 2, longer\n");
    set_mtime(&src.join("docs/readme.txt"), 1_550_000_000, 5);
    chmod(&src.join("modes/private"), 0o640);
    set_xattr(&src.join("attrs/file"), "user.color", b"red");
    write(&src.join("added-1"), b"added in backup 2\n");
    set_mtime(&src.join("added-1"), 1_550_000_000, 6);
    std::fs::remove_file(src.join("with space.txt")).unwrap();
    dirs_last(&src);
    backup();
    // Backup 3: a hard-linked file changes (in place, all three names), another added.
    std::fs::write(src.join("links/a"), b"shared inode, version 3\n").unwrap();
    set_mtime(&src.join("links/a"), 1_560_000_000, 7);
    write(&src.join("added-2"), b"added in backup 3\n");
    set_mtime(&src.join("added-2"), 1_560_000_000, 8);
    dirs_last(&src);
    backup();
    let o = Command::new("tar")
        .arg("-C")
        .arg(t.path())
        .args([
            "--format=posix",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "--sort=name",
            "-czf",
        ])
        .arg(&out)
        .args(["source", "store", "catalog.db"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
