//! `snapring copy` (docs/format.md, "Copying a store's snapshots"): a hard-link store's
//! snapshot pushed into a restic repository restores equal to the snapshot and passes
//! `restic check --read-data`; copying a snapshot of an unchanged source reads no file
//! and uploads only tree and snapshot data (counted); a changed file is the only one
//! read; a snapshot already copied is not copied again; once the parent copy's snapshot
//! has expired from the store (its manifest gone), unchanged files are still reused by
//! inode; the reuse counts are the files reused; a copy is a run of kind `copy`, and a
//! mistake on its command line exits 64 and is no run. Tests that need Debian's
//! `restic` skip those checks without it.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::restic::*;
use common::*;

fn sr(args: &[&str]) -> (i32, serde_json::Value, String) {
    let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let out = snapring(&a, &[("SNAPRING_PASSWORD", PASSWORD)]);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Fixture {
    t: tempfile::TempDir,
    src: PathBuf,
    backups: PathBuf,
    repo: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let t = tempfile::tempdir().unwrap();
        let f = Fixture {
            src: t.path().join("src"),
            backups: t.path().join("backups"),
            repo: t.path().join("repo"),
            t,
        };
        for i in 0..30u64 {
            write(
                &f.src.join(format!("d{}/f{i}", i % 3)),
                &pseudo_random(20_000 + i as usize * 1000, i),
            );
        }
        write(&f.src.join("big"), &pseudo_random(2 << 20, 99));
        std::os::unix::fs::symlink("big", f.src.join("link")).unwrap();
        std::fs::hard_link(f.src.join("d0/f0"), f.src.join("d1/hard")).unwrap();
        std::fs::create_dir_all(&f.backups).unwrap();
        let (code, _, err) = sr(&["init", "--dest", &f.url()]);
        assert_eq!(code, 0, "{err}");
        f
    }

    fn url(&self) -> String {
        format!("file://{}", self.repo.display())
    }

    /// A store backup of the source into `backups/fs-1`.
    fn store_backup(&self, retain: &str) {
        let (code, r, err) = backup(
            &self.src,
            &self.backups,
            &["--folder", "fs-1", "--retain", retain],
            &[],
        );
        assert_eq!(code, 0, "{r}{err}");
    }

    fn copy(&self, snapshot: &str) -> serde_json::Value {
        let (code, r, err) = sr(&[
            "copy",
            "--dest",
            self.backups.to_str().unwrap(),
            "--folder",
            "fs-1",
            snapshot,
            "--to",
            &self.url(),
            "--json",
        ]);
        assert_eq!(code, 0, "{r}{err}");
        r
    }

    fn restore(&self, id: &str, name: &str) -> PathBuf {
        let to = self.t.path().join(name);
        let (code, _, err) = sr(&[
            "restore",
            "--dest",
            &self.url(),
            id,
            "--to",
            to.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        to
    }
}

#[test]
fn copies_read_only_what_changed_and_restore_equal_to_the_store_snapshot() {
    let f = Fixture::new();
    let daily0 = f.backups.join("fs-1/daily.0");
    f.store_backup("7");
    let first = f.copy("daily.0");
    let b = &first["repository"];
    assert_eq!(first["status"], "complete", "{first}");
    assert_eq!(
        b["files_read"], 32,
        "every file read the first time: {first}"
    );
    let restored = f.restore(first["snapshot"].as_str().unwrap(), "r1");
    assert_same_tree(&describe(&daily0), &describe(&restored), "copy of daily.0");

    // The same snapshot again: nothing is copied.
    let again = f.copy("daily.0");
    assert_eq!(
        again["repository"]["copied_from"]["already_copied"], true,
        "{again}"
    );
    assert_eq!(again["snapshot"], first["snapshot"], "{again}");

    // An unchanged source: the store's new daily.0 is all hard links (every ctime
    // changed); the copy reads nothing and uploads only tree and snapshot data.
    f.store_backup("7");
    let second = f.copy("daily.0");
    let b2 = &second["repository"];
    assert_eq!(second["based_on"], first["snapshot"], "{second}");
    assert_eq!(b2["files_read"], 0, "{second}");
    assert_eq!(b2["bytes_read"], 0, "{second}");
    assert_eq!(b2["copied_from"]["reused_by_manifest"], 32, "{second}");
    assert_eq!(b2["data_blobs_added"], 0, "{second}");
    // Tree blobs only: at most one tree pack, one index file, the snapshot file.
    assert!(b2["objects_written"].as_u64().unwrap() <= 3, "{second}");
    assert!(b2["bytes_uploaded"].as_u64().unwrap() < 20_000, "{second}");

    // One changed file is the only one read.
    write(&f.src.join("d2/f2"), b"changed");
    f.store_backup("7");
    let third = f.copy("daily.0");
    let b3 = &third["repository"];
    assert_eq!(b3["files_read"], 1, "{third}");
    assert_eq!(b3["bytes_read"], 7, "{third}");
    let restored = f.restore(third["snapshot"].as_str().unwrap(), "r3");
    assert_same_tree(&describe(&daily0), &describe(&restored), "third copy");

    // An older snapshot copied later is its own copy.
    let older = f.copy("daily.2");
    assert_eq!(
        older["repository"]["copied_from"]["already_copied"], true,
        "daily.2 is the first copy's run: {older}"
    );

    if let Some(restic) = restic_binary("conformance of copies") {
        run_restic(
            &restic,
            &f.repo,
            &[OsStr::new("check"), OsStr::new("--read-data")],
        );
        let target = f.t.path().join("by-restic");
        run_restic(
            &restic,
            &f.repo,
            &[
                OsStr::new("restore"),
                OsStr::new("latest"),
                OsStr::new("--target"),
                target.as_os_str(),
            ],
        );
        let daily0_real = std::fs::canonicalize(&daily0).unwrap();
        assert_same_tree(
            &describe(&daily0),
            &describe(&target.join(daily0_real.strip_prefix("/").unwrap())),
            "restic restore of a copy",
        );
    }
}

/// Store snapshots that differ only by a `user.*` xattr on one file (the store copies
/// that file, same content): each copy carries its own snapshot's xattrs, whichever
/// way they differ from its parent copy's (gained, lost), though the content is reused
/// by the manifests.
#[test]
fn copies_of_snapshots_differing_only_by_an_xattr_carry_each_ones_xattrs() {
    let f = Fixture::new();
    let file = "d0/f3";
    let xattrs = |root: &Path| -> Vec<(Vec<u8>, Vec<u8>)> {
        xattrs_of(&root.join(file))
            .into_iter()
            .filter(|(n, _)| n.starts_with(b"user."))
            .collect()
    };
    let tagged = vec![(b"user.snapring-test".to_vec(), b"v1".to_vec())];
    f.store_backup("7");
    set_xattr(&f.src.join(file), "user.snapring-test", b"v1");
    f.store_backup("7");
    std::fs::remove_file(f.src.join(file)).unwrap();
    write(&f.src.join(file), &pseudo_random(20_000 + 3000, 3));
    f.store_backup("7");
    let store = f.backups.join("fs-1");
    let want = [
        ("daily.1", tagged.clone()),
        ("daily.2", Vec::new()),
        ("daily.0", Vec::new()),
    ];
    for (name, x) in &want {
        assert_eq!(&xattrs(&store.join(name)), x, "store {name}");
    }
    // The one with the xattr first, then the one without (its parent has it), then
    // the newest (its parent, the one without).
    for (i, (name, x)) in want.iter().enumerate() {
        let r = f.copy(name);
        assert_eq!(r["status"], "complete", "{r}");
        let restored = f.restore(r["snapshot"].as_str().unwrap(), &format!("r{i}"));
        assert_eq!(&xattrs(&restored), x, "copy of {name}: {r}");
        assert_same_tree(
            &describe(&store.join(name)),
            &describe(&restored),
            &format!("copy of {name}"),
        );
    }
}

#[test]
fn without_the_parents_manifest_unchanged_files_are_reused_by_inode() {
    let f = Fixture::new();
    // retain 1: each store run expires the previous snapshot and its manifest.
    f.store_backup("1");
    f.copy("daily.0");
    f.store_backup("1");
    let r = f.copy("daily.0");
    let b = &r["repository"];
    assert_eq!(b["files_read"], 0, "{r}");
    assert_eq!(b["copied_from"]["reused_by_manifest"], 0, "{r}");
    assert_eq!(b["copied_from"]["reused_by_inode"], 32, "{r}");
    assert_eq!(b["data_blobs_added"], 0, "{r}");
    // A file the store copied anew (new inode) is read; the copy is a run in the
    // catalog, with the repository's KPIs.
    write(&f.src.join("d0/f3"), b"new content");
    f.store_backup("1");
    let catalog = f.t.path().join("catalog.db");
    let out = snapring(
        &[
            OsStr::new("--catalog"),
            catalog.as_os_str(),
            OsStr::new("copy"),
            OsStr::new("--dest"),
            f.backups.as_os_str(),
            OsStr::new("--folder"),
            OsStr::new("fs-1"),
            OsStr::new("latest"),
            OsStr::new("--to"),
            OsStr::new(&f.url()),
            OsStr::new("--json"),
        ],
        &[("SNAPRING_PASSWORD", PASSWORD)],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = rusqlite::Connection::open(&catalog).unwrap();
    let (status, label, store, snapshot, up): (String, String, String, String, i64) = c
        .query_row(
            "SELECT status, label, store, snapshot, bytes_uploaded FROM runs WHERE id = ?1",
            [r["id"].as_str().unwrap()],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            },
        )
        .unwrap();
    assert_eq!(
        (status.as_str(), label.as_str(), store.as_str()),
        ("complete", "daily", f.url().as_str())
    );
    assert_eq!(Some(snapshot.as_str()), r["snapshot"].as_str());
    assert_eq!(Some(up as u64), r["repository"]["bytes_uploaded"].as_u64());
    assert_eq!(r["repository"]["files_read"], 1, "{r}");
    let restored = f.restore(r["snapshot"].as_str().unwrap(), "r");
    assert_same_tree(
        &describe(&f.backups.join("fs-1/daily.0")),
        &describe(&restored),
        "copy after expiry",
    );
}

/// A prune between a copy's opening of the repository (its index read) and its lock
/// (`restic.copy.before_lock`), after the earlier copy was forgotten: the copy stores
/// the blobs the prune deleted instead of taking them for stored (its snapshot named
/// data the repository no longer had; `verify` failed).
#[test]
fn a_prune_between_a_copys_open_and_its_lock_loses_none_of_its_data() {
    let f = Fixture::new();
    f.store_backup("2");
    let first = f.copy("daily.0");
    let id = first["snapshot"].as_str().unwrap().to_string();
    std::fs::remove_file(f.repo.join("snapshots").join(&id)).unwrap();
    write(&f.src.join("d0/f3"), b"changed");
    f.store_backup("2");
    let pause = f.t.path().join("paused");
    let w = std::process::Command::new(bin())
        .args(["copy", "--json", "--dest"])
        .arg(&f.backups)
        .args(["--folder", "fs-1", "daily.0", "--to", &f.url()])
        .env("SNAPRING_PASSWORD", PASSWORD)
        .env("SNAPRING_CATALOG", "off")
        .env(
            "SNAPRING_FAILPOINTS",
            format!("restic.copy.before_lock=pause:{}", pause.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&pause);
    let (code, p, err) = sr(&["prune", "--json", "--dest", &f.url()]);
    assert_eq!(code, 0, "{p}{err}");
    assert!(p["packs_removed"].as_u64().unwrap() > 0, "{p}");
    std::fs::remove_file(&pause).unwrap();
    let out = w.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let (code, r, err) = sr(&["verify", "--dest", &f.url()]);
    assert_eq!(code, 0, "{r}{err}");
}

/// A store snapshot damaged after its backup (a file's content no longer its recorded
/// BLAKE3, a file deleted): the copy checks what it reads against the snapshot's
/// manifest, leaves the damaged file out and says so (`partial`, exit 2), naming the
/// missing one. The damage is not carried into later copies as "unchanged": the next
/// copy reads the file again and finds it again. Without a manifest the whole copy is
/// unchecked, and says so. (It copied rotten content as `complete`, exit 0, and later
/// copies reused it by the manifests.)
#[test]
fn a_damaged_store_snapshot_is_copied_partial_without_its_damage() {
    use std::io::{Seek, SeekFrom, Write};
    let f = Fixture::new();
    f.store_backup("7");
    let daily0 = f.backups.join("fs-1/daily.0");
    let backed_up = describe(&daily0);
    // Bit rot: one byte of d0/f3 flipped in place, same size.
    let rot = |path: &std::path::Path| {
        let mut b = std::fs::read(path).unwrap();
        b[100] ^= 0x40;
        let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.seek(SeekFrom::Start(100)).unwrap();
        file.write_all(&b[100..101]).unwrap();
    };
    rot(&daily0.join("d0/f3"));
    std::fs::remove_file(daily0.join("d1/f4")).unwrap();
    let copy = |snapshot: &str| {
        let (code, r, err) = sr(&[
            "copy",
            "--dest",
            f.backups.to_str().unwrap(),
            "--folder",
            "fs-1",
            snapshot,
            "--to",
            &f.url(),
            "--json",
        ]);
        (code, r, err)
    };
    let kinds = |r: &serde_json::Value| -> Vec<(String, String, String)> {
        r["problems"]
            .as_array()
            .unwrap_or_else(|| panic!("no problems: {r}"))
            .iter()
            .map(|p| {
                let s = |k: &str| p[k].as_str().unwrap().to_string();
                (s("path"), s("kind"), s("action"))
            })
            .collect()
    };
    let damaged = |p: &str| {
        let s = |s: &str| s.to_string();
        (s(p), s("unreadable"), s("check against the manifest"))
    };
    let missing = |p: &str| {
        let s = |s: &str| s.to_string();
        (s(p), s("vanished"), s("check against the manifest"))
    };
    // The deletion moved d1's mtime: copied with the recorded one, a problem.
    let moved = |p: &str| {
        let s = |s: &str| s.to_string();
        (s(p), s("metadata"), s("check against the manifest"))
    };
    let (code, first, err) = copy("daily.0");
    assert_eq!(code, 2, "{first}{err}");
    assert_eq!(first["status"], "partial", "{first}");
    assert_eq!(
        kinds(&first),
        vec![damaged("d0/f3"), moved("d1"), missing("d1/f4")],
        "{first}"
    );
    let restored = f.restore(first["snapshot"].as_str().unwrap(), "r1");
    assert!(
        !restored.join("d0/f3").exists(),
        "the damaged file left out"
    );
    let mut rest = backed_up;
    rest.remove(b"d0/f3".as_slice());
    rest.remove(b"d1/f4".as_slice());
    assert_same_tree(&rest, &describe(&restored), "the copy holds the rest");
    // The store's next snapshot links the rotten file again (its source unchanged):
    // the next copy's parent does not have it, so it is read, and found, again.
    f.store_backup("7");
    let (code, second, err) = copy("daily.0");
    assert_eq!(code, 2, "{second}{err}");
    assert_eq!(kinds(&second), vec![damaged("d0/f3")], "{second}");
    assert_eq!(
        second["repository"]["copied_from"]["reused_by_manifest"], 30,
        "{second}"
    );

    // Without its manifest, a copy is unchecked as a whole.
    let manifests = f.backups.join("fs-1/.snapring/manifests");
    let mfs = |d: &std::path::Path| -> std::collections::BTreeSet<PathBuf> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "mf"))
            .collect()
    };
    let before = mfs(&manifests);
    write(&f.src.join("d2/new"), b"new");
    f.store_backup("7");
    let new: Vec<PathBuf> = mfs(&manifests).difference(&before).cloned().collect();
    assert_eq!(new.len(), 1, "{new:?}");
    std::fs::remove_file(&new[0]).unwrap();
    let (code, fourth, err) = copy("daily.0");
    assert_eq!(code, 2, "{fourth}{err}");
    let problems = fourth["problems"].as_array().unwrap();
    assert_eq!(problems[0]["path"], ".", "{fourth}");
    assert_eq!(problems[0]["action"], "open the manifest", "{fourth}");
    assert!(
        problems[0]["error"]
            .as_str()
            .unwrap()
            .contains("copied unchecked"),
        "{fourth}"
    );
}

/// The copy's check against the manifest goes both ways: what the store snapshot holds
/// and its manifest does not list (a file or directory added to the store), an entry of
/// another type than the recorded one (a file replaced by a symlink to /etc/shadow), and
/// an entry whose mode, owner or mtime is not the recorded one (setuid added, the
/// directories' mtimes moved by the additions) are each a problem, and the copy
/// `partial` (exit 2). The first two are left out; the last is copied with the metadata
/// the manifest records. The copy restores equal to the snapshot as backed up, less the
/// file replaced. (All of it went off-site as found, `complete`, exit 0.)
#[test]
fn what_the_store_snapshot_gained_or_changed_since_its_manifest_is_not_copied_as_good() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    f.store_backup("7");
    let daily0 = f.backups.join("fs-1/daily.0");
    let backed_up = describe(&daily0);
    write(&daily0.join("d0/evil"), b"evil");
    std::fs::remove_file(daily0.join("d1/f1")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", daily0.join("d1/f1")).unwrap();
    write(&daily0.join("newdir/y"), b"x");
    std::fs::set_permissions(
        daily0.join("d2/f2"),
        std::fs::Permissions::from_mode(0o4777),
    )
    .unwrap();
    let (code, r, err) = sr(&[
        "copy",
        "--dest",
        f.backups.to_str().unwrap(),
        "--folder",
        "fs-1",
        "daily.0",
        "--to",
        &f.url(),
        "--json",
    ]);
    assert_eq!(code, 2, "{r}{err}");
    assert_eq!(r["status"], "partial", "{r}");
    let problems: Vec<(String, String, String)> = r["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems: {r}"))
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap().to_string();
            (s("path"), s("kind"), s("action"))
        })
        .collect();
    let p = |path: &str, kind: &str| {
        (
            path.to_string(),
            kind.to_string(),
            "check against the manifest".to_string(),
        )
    };
    assert_eq!(
        problems,
        vec![
            // The root's and the directories' mtimes, moved by the additions.
            p(".", "metadata"),
            p("d0", "metadata"),
            p("d0/evil", "unreadable"),
            p("d1", "metadata"),
            p("d1/f1", "unreadable"),
            p("d2/f2", "metadata"),
            p("newdir", "unreadable"),
        ],
        "{r}"
    );
    let error = |path: &str| {
        r["problems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["path"] == path)
            .unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(error("d1/f1").contains("symlink"), "{r}");
    assert!(error("d2/f2").contains("mode 4777 (recorded 644)"), "{r}");
    assert!(error("d0/evil").contains("not in its manifest"), "{r}");
    // 32 files backed up, one replaced by a symlink and left out.
    assert_eq!(r["files_total"], 31, "{r}");
    let restored = f.restore(r["snapshot"].as_str().unwrap(), "r1");
    let mut want = backed_up;
    want.remove(b"d1/f1".as_slice());
    assert_same_tree(
        &want,
        &describe(&restored),
        "the copy is the snapshot as backed up, less the replaced file",
    );
    assert!(
        std::fs::symlink_metadata(restored.join("d1/f1")).is_err(),
        "no symlink where the manifest has a file"
    );
}

/// A copy counts the files its snapshot holds: a file left out because its content is
/// not the checksum the manifest records is a problem, not one of them (it was counted:
/// "of 32 files" for a snapshot of 31, `files_total` too).
#[test]
fn a_copy_counts_only_the_files_its_snapshot_holds() {
    use std::io::{Seek, SeekFrom, Write};
    let f = Fixture::new();
    f.store_backup("7");
    let daily0 = f.backups.join("fs-1/daily.0");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(daily0.join("d0/f3"))
        .unwrap();
    file.seek(SeekFrom::Start(10)).unwrap();
    file.write_all(b"rot").unwrap();
    drop(file);
    let (code, r, err) = sr(&[
        "copy",
        "--dest",
        f.backups.to_str().unwrap(),
        "--folder",
        "fs-1",
        "daily.0",
        "--to",
        &f.url(),
        "--json",
    ]);
    assert_eq!(code, 2, "{r}{err}");
    assert_eq!(r["problems"].as_array().map(Vec::len), Some(1), "{r}");
    let restored = f.restore(r["snapshot"].as_str().unwrap(), "r1");
    let files = describe(&restored)
        .values()
        .filter(|d| d.kind == "file")
        .count();
    assert_eq!(files, 31, "32 files backed up, one left out");
    assert_eq!(r["files_total"], 31, "{r}");
    assert_eq!(r["repository"]["files_read"], 32, "{r}");
}

/// The inode number of a file the parent copy recorded, given to another file once the
/// parent's snapshot expired and the number was freed (ext4 hands freed numbers out
/// again), with the same size and mtime: the copy reads it instead of taking it for
/// the parent's file. It was "reused by inode" and the repository kept the old content,
/// `complete`. Made deterministic on a loop-mounted ext4 image: every free inode is
/// taken but the one freed, so the new file must get its number. (The new file here is
/// put into the store snapshot by hand, so the copy also finds it is not what the
/// manifest recorded.) Needs root.
#[test]
fn a_reused_inode_number_is_not_taken_for_the_parents_file() {
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;
    let f = Fixture::new();
    let (img, fs) = (f.t.path().join("e4.img"), f.t.path().join("e4"));
    std::fs::create_dir(&fs).unwrap();
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(Command::new("mkfs.ext4")
        .args(["-q", "-N", "128"])
        .arg(&img));
    ok(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&fs));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(fs.clone());
    let (src, store) = (f.t.path().join("src5"), fs.join("st"));
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_577_836_800);
    let put = |p: &Path, v: u32| {
        write(p, format!("version-{v:05}-{:090}", 0).as_bytes());
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    };
    put(&src.join("P"), 1);
    let run = || {
        let (code, r, err) = backup(&src, &store, &["--retain", "1"], &[]);
        assert_eq!(code, 0, "{r}{err}");
    };
    let url = f.url();
    let copy = || {
        let (code, r, err) = sr(&[
            "copy",
            "--dest",
            store.to_str().unwrap(),
            "daily.0",
            "--to",
            &url,
            "--json",
        ]);
        (code, r, err)
    };
    run();
    let (code, r, err) = copy();
    assert_eq!(code, 0, "{r}{err}");
    // The next run links P again and expires the copied snapshot with its manifest.
    run();
    let p = store.join("daily.0/P");
    let ino = std::fs::metadata(&p).unwrap().ino();
    // Every free inode taken, then P's freed and given to a new file of the same size
    // and mtime and other content.
    let fill = fs.join("fill");
    std::fs::create_dir(&fill).unwrap();
    let mut n = 0;
    while std::fs::File::create(fill.join(n.to_string())).is_ok() {
        n += 1;
    }
    std::fs::remove_file(&p).unwrap();
    put(&p, 2);
    assert_eq!(
        std::fs::metadata(&p).unwrap().ino(),
        ino,
        "{n} inodes filled"
    );
    std::fs::remove_dir_all(&fill).unwrap();
    let (code, r, err) = copy();
    let b = &r["repository"];
    assert_eq!(b["copied_from"]["reused_by_inode"], 0, "{r}{err}");
    assert_eq!(b["files_read"], 1, "{r}{err}");
    // The content read is checked against the manifest, which recorded version 1 (and
    // the root's mtime, which the new file moved: copied with the recorded one).
    assert_eq!(code, 2, "{r}{err}");
    let at = |path: &str| {
        r["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["path"] == path)
            .map(|p| p["kind"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(at("P"), vec!["unreadable"], "{r}");
    assert_eq!(at("."), vec!["metadata"], "{r}");
}

/// A store snapshot whose run record was deleted (an operator's clean-up) keeps its
/// run's time: its copy is the repository's `latest`. It took the source root's mtime,
/// which had not changed, so the copy was dated before the older copy and `restore
/// latest` gave the older content.
#[test]
fn a_snapshot_whose_run_record_is_gone_is_dated_by_its_run() {
    let f = Fixture::new();
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_735_689_600);
    let age_root = || {
        std::fs::File::open(&f.src)
            .unwrap()
            .set_modified(old)
            .unwrap()
    };
    age_root();
    f.store_backup("7");
    f.copy("daily.0");
    write(&f.src.join("d2/f2"), b"v2");
    age_root();
    // Run ids name the second: the two runs in two seconds, as real ones are.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    f.store_backup("7");
    let runs = f.backups.join("fs-1/.snapring/runs");
    let newest = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .max_by_key(|p| {
            let r: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            r["started_at"].as_str().unwrap().to_string()
        })
        .unwrap();
    std::fs::remove_file(newest).unwrap();
    let second = f.copy("daily.0");
    let to = f.t.path().join("latest");
    let (code, _, err) = sr(&restore_latest(&f.url(), &to));
    assert_eq!(code, 0, "{err}");
    let daily0 = std::fs::canonicalize(f.backups.join("fs-1/daily.0")).unwrap();
    let restored = std::fs::read(to.join(daily0.strip_prefix("/").unwrap()).join("d2/f2"))
        .or_else(|_| std::fs::read(to.join("d2/f2")))
        .unwrap();
    assert_eq!(restored, b"v2", "latest is the second copy: {second}");
}

/// A copy stopped (SIGINT) before its snapshot, of a store snapshot without its
/// manifest: `incomplete`, exit 3, as any stopped copy. The "copied unchecked" problem
/// made it `partial`, exit 2, though no snapshot was written.
#[test]
fn a_stopped_copy_without_a_manifest_is_incomplete() {
    let f = Fixture::new();
    f.store_backup("7");
    let manifests = f.backups.join("fs-1/.snapring/manifests");
    for e in std::fs::read_dir(&manifests).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "mf") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let pause = f.t.path().join("paused");
    let child = std::process::Command::new(bin())
        .args(["copy", "--dest"])
        .arg(&f.backups)
        .args(["--folder", "fs-1", "daily.0", "--to", &f.url(), "--json"])
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_PASSWORD", PASSWORD)
        .env(
            "XDG_CACHE_HOME",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache"),
        )
        .env(
            "SNAPRING_FAILPOINTS",
            format!("restic.backup.read=pause:{}@1", pause.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&pause);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(out.status.code(), Some(3), "{r}{out:?}");
    assert_eq!(r["status"], "incomplete", "{r}");
}

/// A copy that left a damaged file out is tagged `partial`, and the same store
/// snapshot, once repaired, is copied again: the copy said "is in the repository
/// already … nothing copied", exit 0, for ever, and the repository never got the file.
#[test]
fn a_partial_copy_is_copied_again_once_the_store_is_repaired() {
    use std::io::{Seek, SeekFrom, Write};
    let f = Fixture::new();
    f.store_backup("7");
    let file = f.backups.join("fs-1/daily.0/d0/f3");
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    let flip = || {
        let mut b = std::fs::read(&file).unwrap();
        b[100] ^= 0x40;
        let mut w = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        w.seek(SeekFrom::Start(100)).unwrap();
        w.write_all(&b[100..101]).unwrap();
    };
    flip();
    let copy = || {
        sr(&[
            "copy",
            "--dest",
            f.backups.to_str().unwrap(),
            "--folder",
            "fs-1",
            "daily.0",
            "--to",
            &f.url(),
            "--json",
        ])
    };
    let (code, first, err) = copy();
    assert_eq!(
        (code, &first["status"]),
        (2, &"partial".into()),
        "{first}{err}"
    );
    let tags = |id: &serde_json::Value| {
        let (code, list, err) = sr(&["list", "--dest", &f.url(), "--json"]);
        assert_eq!(code, 0, "{err}");
        list.as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == *id)
            .unwrap_or_else(|| panic!("{id} not in {list}"))["tags"]
            .clone()
    };
    let partial = tags(&first["snapshot"]);
    assert!(partial.to_string().contains("\"partial\""), "{partial}");
    // Repaired (the byte flipped back, and the mtime the flips moved): copied again,
    // whole.
    flip();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let (code, second, err) = copy();
    assert_eq!(
        (code, &second["status"]),
        (0, &"complete".into()),
        "{second}{err}"
    );
    assert_eq!(
        second["repository"]["copied_from"]["already_copied"], false,
        "{second}"
    );
    assert_ne!(second["snapshot"], first["snapshot"], "{second}");
    let whole = tags(&second["snapshot"]);
    assert!(!whole.to_string().contains("\"partial\""), "{whole}");
    let restored = f.restore(second["snapshot"].as_str().unwrap(), "r");
    assert_same_tree(
        &describe(&f.backups.join("fs-1/daily.0")),
        &describe(&restored),
        "the second copy",
    );
    // Copied whole now: not again.
    let (code, third, err) = copy();
    assert_eq!(code, 0, "{third}{err}");
    assert_eq!(
        third["repository"]["copied_from"]["already_copied"], true,
        "{third}"
    );
}

impl Fixture {
    /// `snapring copy --json SNAPSHOT` with `extra` arguments: exit code, report, stderr.
    fn copy_with(&self, snapshot: &str, extra: &[&str]) -> (i32, serde_json::Value, String) {
        let mut args = vec![
            "copy",
            "--dest",
            self.backups.to_str().unwrap(),
            "--folder",
            "fs-1",
            snapshot,
            "--to",
        ];
        let url = self.url();
        args.push(&url);
        args.push("--json");
        args.extend_from_slice(extra);
        sr(&args)
    }

    /// The repository's snapshots: (id, tags), oldest first.
    fn snapshots(&self) -> Vec<(String, Vec<String>)> {
        let (code, list, err) = sr(&["list", "--dest", &self.url(), "--json"]);
        assert_eq!(code, 0, "{err}");
        list.as_array()
            .unwrap_or_else(|| panic!("{list}"))
            .iter()
            .map(|s| {
                let tags = s["tags"].as_array().unwrap().iter();
                (
                    s["id"].as_str().unwrap().to_string(),
                    tags.map(|t| t.as_str().unwrap().to_string()).collect(),
                )
            })
            .collect()
    }

    /// Flips one byte of `daily.0/e` in place (bit rot; again: repaired).
    /// Flips a bit of `daily.0/e` in place, its mtime kept (bit rot: only the content
    /// differs from the manifest, and flipped back it is the file backed up).
    fn flip(&self) {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::MetadataExt;
        let file = self.backups.join("fs-1/daily.0/e");
        let m = std::fs::metadata(&file).unwrap();
        let mut b = std::fs::read(&file).unwrap();
        b[100] ^= 0x40;
        let mut w = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        w.seek(SeekFrom::Start(100)).unwrap();
        w.write_all(&b[100..101]).unwrap();
        drop(w);
        set_mtime(&file, m.mtime(), m.mtime_nsec());
    }
}

/// Found by review (F3): while backups fail, `daily.0` stays the same run, and a daily
/// `copy latest --retain 2` of it, damaged, made a new `partial` copy each time, which
/// restic's forget counted as one more snapshot: after three runs the repository held
/// two partial copies of one run and had forgotten the last whole copy. A retry's
/// partial copy now replaces the run's earlier one, retention counts store runs, and
/// the newest whole copy is kept whatever partial copies are newer.
#[test]
fn retried_partial_copies_replace_each_other_and_never_expire_the_last_whole_copy() {
    let f = Fixture::new();
    let mut whole = Vec::new();
    for _ in 0..2 {
        f.store_backup("3");
        let (code, r, err) = f.copy_with("latest", &["--retain", "2"]);
        assert_eq!((code, &r["status"]), (0, &"complete".into()), "{r}{err}");
        whole.push(r["snapshot"].as_str().unwrap().to_string());
    }
    // A new file, read by the copy: damaged in the store.
    write(&f.src.join("e"), &pseudo_random(5000, 7));
    f.store_backup("3");
    f.flip();
    let mut partial = Vec::new();
    for _ in 0..3 {
        let (code, r, err) = f.copy_with("latest", &["--retain", "2"]);
        assert_eq!((code, &r["status"]), (2, &"partial".into()), "{r}{err}");
        partial.push(r["snapshot"].as_str().unwrap().to_string());
    }
    let ids =
        |f: &Fixture| -> Vec<String> { f.snapshots().into_iter().map(|(id, _)| id).collect() };
    let mut want = vec![whole[1].clone(), partial[2].clone()];
    want.sort();
    let mut got = ids(&f);
    got.sort();
    assert_eq!(got, want, "the last partial copy and the newest whole one");
    // --retain 1: the newest run's copy is partial, the newest whole copy stays too.
    let (code, r, err) = f.copy_with("latest", &["--retain", "1"]);
    assert_eq!(code, 2, "{r}{err}");
    let mut got = ids(&f);
    got.sort();
    let mut want = vec![
        whole[1].clone(),
        r["snapshot"].as_str().unwrap().to_string(),
    ];
    want.sort();
    assert_eq!(got, want, "{r}");
    // Repaired: the whole copy of the run replaces its partial one, and with
    // --retain 1 it is the only copy left.
    f.flip();
    let (code, r, err) = f.copy_with("latest", &["--retain", "1"]);
    assert_eq!((code, &r["status"]), (0, &"complete".into()), "{r}{err}");
    assert_eq!(
        ids(&f),
        vec![r["snapshot"].as_str().unwrap().to_string()],
        "{r}"
    );
}

/// Found by review (F4): a copy's path names the store snapshot's slot (`daily.2`,
/// `daily.1`, `daily.0`), and restic's grouping by host and paths made `--retain 1`
/// keep one copy per slot, not one of the label as `copy --help` says.
#[test]
fn copy_retention_counts_copies_of_the_label_whatever_slot_they_came_from() {
    let f = Fixture::new();
    for _ in 0..3 {
        f.store_backup("5");
    }
    let mut last = String::new();
    for slot in ["daily.2", "daily.1", "daily.0"] {
        let (code, r, err) = f.copy_with(slot, &["--retain", "1"]);
        assert_eq!((code, &r["status"]), (0, &"complete".into()), "{r}{err}");
        last = r["snapshot"].as_str().unwrap().to_string();
    }
    let snaps = f.snapshots();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0].0, last);
}

/// Found by review (F2): copies of one store snapshot at once each checked "not copied
/// yet" before the other had written, and both wrote a copy. Two copies paused just
/// before their snapshot files, released one after the other: one copy is left, the
/// first begun, and the later copy's report names it as copied before.
#[test]
fn copies_of_one_snapshot_at_once_leave_one_copy() {
    let f = Fixture::new();
    f.store_backup("3");
    let spawn = |pause: &Path| {
        let child = std::process::Command::new(bin())
            .env("SNAPRING_CATALOG", "off")
            .env(
                "XDG_CACHE_HOME",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache"),
            )
            .env("SNAPRING_PASSWORD", PASSWORD)
            .env(
                "SNAPRING_FAILPOINTS",
                format!("restic.backup.before_snapshot=pause:{}", pause.display()),
            )
            .args(["copy", "--dest"])
            .arg(&f.backups)
            .args(["--folder", "fs-1", "daily.0", "--to", &f.url(), "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(pause);
        child
    };
    let finish = |child: std::process::Child, pause: &Path| {
        std::fs::remove_file(pause).unwrap();
        let out = child.wait_with_output().unwrap();
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{r}{err}");
        r
    };
    let (pa, pb) = (f.t.path().join("pause-a"), f.t.path().join("pause-b"));
    let a = spawn(&pa);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let b = spawn(&pb);
    let ra = finish(a, &pa);
    let rb = finish(b, &pb);
    let snaps = f.snapshots();
    assert_eq!(snaps.len(), 1, "{snaps:?}\n{ra}\n{rb}");
    assert_eq!(snaps[0].0, ra["snapshot"].as_str().unwrap(), "{ra}");
    assert_eq!(rb["snapshot"], ra["snapshot"], "{rb}");
    assert_eq!(
        rb["repository"]["copied_from"]["already_copied"], true,
        "{rb}"
    );
    // The other order: the copy begun first writes last, and replaces the other.
    f.store_backup("3");
    let a = spawn(&pa);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let b = spawn(&pb);
    let rb = finish(b, &pb);
    let ra = finish(a, &pa);
    let snaps = f.snapshots();
    let run = ra["repository"]["copied_from"]["run"].as_str().unwrap();
    let of_run: Vec<_> = snaps
        .iter()
        .filter(|(_, t)| t.contains(&format!("run={run}")))
        .collect();
    assert_eq!(of_run.len(), 1, "{snaps:?}\n{ra}\n{rb}");
    assert_eq!(of_run[0].0, ra["snapshot"].as_str().unwrap(), "{ra}");
}

/// The files of `dir` and below.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// The parent copy's data pack lost and the index repaired (the store snapshot
/// intact): the next copy finds every file unchanged by the manifests, but their blobs
/// are gone, so it reads them. The report's reuse counts are the files it reused
/// (`files_unchanged`), not those it found unchanged: it said "32 by the manifests
/// … reused unread" beside `files_unchanged: 0` and 32 files read.
#[test]
fn after_lost_packs_the_reuse_counts_are_the_files_reused_not_those_found_unchanged() {
    let f = Fixture::new();
    f.store_backup("7");
    f.copy("daily.0");
    let mut packs: Vec<(u64, PathBuf)> = files_under(&f.repo.join("data"))
        .into_iter()
        .map(|p| (std::fs::metadata(&p).unwrap().len(), p))
        .collect();
    packs.sort();
    // The biggest pack holds the 2 MiB file's data: lost.
    let (_, data) = packs.pop().unwrap();
    std::fs::remove_file(&data).unwrap();
    let (code, _, err) = sr(&["repair", "index", "--dest", &f.url()]);
    assert!(code == 0 || code == 2, "{err}");
    f.store_backup("7");
    let r = f.copy("daily.0");
    let b = &r["repository"];
    let unchanged = b["files_unchanged"].as_u64().unwrap();
    let read = b["files_read"].as_u64().unwrap();
    assert!(read > 0, "the lost pack's files are read again: {r}");
    assert_eq!(unchanged + read, 32, "{r}");
    let c = &b["copied_from"];
    let reused = c["reused_by_manifest"].as_u64().unwrap() + c["reused_by_inode"].as_u64().unwrap();
    assert_eq!(
        reused, unchanged,
        "the reuse counts are the files reused: {r}"
    );
    assert_eq!(r["files_linked"].as_u64(), Some(unchanged), "{r}");
    let restored = f.restore(r["snapshot"].as_str().unwrap(), "r");
    assert_same_tree(
        &describe(&f.backups.join("fs-1/daily.0")),
        &describe(&restored),
        "copy after the lost pack",
    );
}

/// `snapring --catalog CATALOG ARGS` with the repository's password `password`: (exit
/// code, JSON on stdout, stderr).
fn copy_recorded(
    catalog: &Path,
    args: &[&str],
    password: &str,
) -> (i32, serde_json::Value, String) {
    let mut a: Vec<&OsStr> = vec![OsStr::new("--catalog"), catalog.as_os_str()];
    a.extend(args.iter().map(OsStr::new));
    let out = snapring(&a, &[("SNAPRING_PASSWORD", password)]);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `history [--kind KIND] --json` of `catalog`: its rows.
fn history(catalog: &Path, kind: Option<&str>) -> Vec<serde_json::Value> {
    catalog_json(catalog, "history", kind)
}

/// `stats [--kind KIND] --json` of `catalog`.
fn stats(catalog: &Path, kind: Option<&str>) -> Vec<serde_json::Value> {
    catalog_json(catalog, "stats", kind)
}

/// `COMMAND [--kind KIND] --json` of `catalog`, which must exit 0: the rows it prints.
fn catalog_json(catalog: &Path, command: &str, kind: Option<&str>) -> Vec<serde_json::Value> {
    let mut a = vec![
        OsStr::new("--catalog"),
        catalog.as_os_str(),
        OsStr::new(command),
        OsStr::new("--json"),
    ];
    if let Some(k) = kind {
        a.extend([OsStr::new("--kind"), OsStr::new(k)]);
    }
    let out = snapring(&a, &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `copy --dest BACKUPS --folder fs-1 SNAPSHOT --to TO --json` recorded in `catalog`.
fn copy_in(
    f: &Fixture,
    catalog: &Path,
    snapshot: &str,
    to: &str,
    password: &str,
) -> (i32, serde_json::Value, String) {
    let store = f.backups.to_str().unwrap();
    copy_recorded(
        catalog,
        &[
            "copy", "--dest", store, "--folder", "fs-1", snapshot, "--to", to, "--json",
        ],
        password,
    )
}

/// A copy is a run of kind `copy` (docs/monitoring.md, "Copies"): `history --kind copy`
/// lists it (it was refused: "invalid value 'copy'"), `stats` counts the backups alone
/// and `stats --kind copy` the copies, a failed one too. An older catalog's copies
/// become copies when migrated.
#[test]
fn copies_are_runs_of_their_own_kind_in_history_and_stats() {
    let f = Fixture::new();
    f.store_backup("7");
    let catalog = f.t.path().join("catalog.db");
    let url = f.url();
    let (code, r, err) = copy_in(&f, &catalog, "daily.0", &url, PASSWORD);
    assert_eq!(code, 0, "{r}{err}");
    let rows = history(&catalog, Some("copy"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], r["id"], "{rows:?}");
    assert_eq!(rows[0]["kind"], "copy", "{rows:?}");
    assert_eq!(rows[0]["status"], "complete", "{rows:?}");
    assert!(
        history(&catalog, Some("backup")).is_empty(),
        "a copy is not a backup"
    );
    // A copy that fails is a copy too.
    let (code, r, err) = copy_in(&f, &catalog, "daily.0", &url, "not-the-password");
    assert_eq!(code, 1, "{r}{err}");
    let rows = history(&catalog, Some("copy"));
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1]["id"], r["id"], "{rows:?}");
    assert_eq!(rows[1]["status"], "failed", "{rows:?}");
    assert!(
        stats(&catalog, None).is_empty(),
        "{:?}",
        stats(&catalog, None)
    );
    let s = stats(&catalog, Some("copy"));
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(
        (s[0]["runs"].as_u64(), s[0]["failed"].as_u64()),
        (Some(2), Some(1)),
        "{s:?}"
    );

    // A catalog of schema 9 recorded copies as backups, their reports without
    // `copy_of`: migrated, a copy that found its snapshot (`copied_from`) is a copy; a
    // failed one says nothing of being one and stays a backup.
    let conn = rusqlite::Connection::open(&catalog).unwrap();
    conn.execute_batch(
        "UPDATE runs SET kind = 'backup', report = json_remove(report, '$.copy_of');
         PRAGMA user_version = 9;",
    )
    .unwrap();
    drop(conn);
    let rows = history(&catalog, Some("copy"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["status"], "complete", "{rows:?}");
    assert_eq!(history(&catalog, Some("backup")).len(), 1);
}

/// A mistake on copy's command line (a snapshot the store does not have, a time before
/// every snapshot, a `--to` that is no repository's URL, restic's `s3:` syntax) exits 64
/// naming the flag and is no run: it exited 1, recorded `failed`, in `stats` and in the
/// copies' alerts. A copy that fails once it runs (the wrong password, the store not
/// there: not mounted) is still recorded `failed`.
#[test]
fn mistakes_on_copys_command_line_exit_64_and_are_no_runs() {
    let f = Fixture::new();
    f.store_backup("7");
    let catalog = f.t.path().join("catalog.db");
    let url = f.url();
    let copy =
        |snapshot: &str, to: &str, password: &str| copy_in(&f, &catalog, snapshot, to, password);
    let (code, r, err) = copy("daily.0", &url, PASSWORD);
    assert_eq!(code, 0, "{r}{err}");
    let (code, _, err) = copy("daily.9", &url, PASSWORD);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("no snapshot named \"daily.9\""), "{err}");
    let (code, _, err) = copy("@2001-01-01", &url, PASSWORD);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("no snapshot was taken at or before"), "{err}");
    let (code, _, err) = copy("daily.0", "file://relative/repo", PASSWORD);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--to \"file://relative/repo\""), "{err}");
    let (code, _, err) = copy("daily.0", "s3:http://127.0.0.1:1/bucket", PASSWORD);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("--to \"s3:http://127.0.0.1:1/bucket\""),
        "{err}"
    );
    assert!(!err.contains("--dest \"s3:"), "{err}");
    let (code, _, err) = copy("daily.0", "/srv/repo", PASSWORD);
    assert_eq!(code, 64, "{err}");
    let rows = history(&catalog, None);
    assert_eq!(rows.len(), 1, "mistakes are no runs: {rows:?}");

    // A copy that fails is a run, recorded `failed`.
    let (code, r, err) = copy("daily.0", &url, "not-the-password");
    assert_eq!(code, 1, "{r}{err}");
    let rows = history(&catalog, None);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1]["id"], r["id"], "{rows:?}");
    assert_eq!(rows[1]["status"], "failed", "{rows:?}");
    // So is one whose store is not there (not mounted).
    let (code, r, err) = copy_recorded(
        &catalog,
        &[
            "copy",
            "--dest",
            f.t.path().join("not-mounted").to_str().unwrap(),
            "daily.0",
            "--to",
            &url,
            "--json",
        ],
        PASSWORD,
    );
    assert_eq!(code, 1, "{r}{err}");
    let rows = history(&catalog, None);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[2]["status"], "failed", "{rows:?}");
    assert!(
        rows[2]["id"] == r["id"],
        "the failed copy's row: {rows:?} {r}"
    );
}

/// `copy --config FILE` takes the job's store, catalog and notifiers, as a backup of
/// the job does (docs/restic.md, "Copying"): a failed copy notifies every notifier (a
/// real HTTP webhook and a real SMTP sink), a complete one only with `notify_success`;
/// `--textfile` writes the `snapring_copy_*` series `/metrics` has for the pair. A
/// nightly copy to an off-site repository failed unheard: `copy` had neither.
#[test]
fn a_copy_of_a_jobs_store_notifies_its_failure_and_writes_its_textfile() {
    let f = Fixture::new();
    f.store_backup("7");
    let catalog = f.t.path().join("catalog.db");
    let prom = f.t.path().join("prom");
    std::fs::create_dir(&prom).unwrap();
    let http = http_server();
    let smtp = smtp_sink("250 ok\r\n");
    let cfg = f.t.path().join("snapring.toml");
    let write_cfg = |notify_success: bool| {
        std::fs::write(
            &cfg,
            format!(
                r#"[job.fs]
source = "{src}"
dest = "{dest}"
folder = "fs-1"
notify = ["hook", "mail"]
notify_success = {notify_success}

[notify.hook]
type = "webhook"
url = "http://127.0.0.1:{hport}/hook"

[notify.mail]
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {sport}
tls = "none"
from = "snapring <snapring@example.com>"
to = ["ops@example.com"]
"#,
                src = f.src.display(),
                dest = f.backups.display(),
                hport = http.port,
                sport = smtp.port,
            ),
        )
        .unwrap();
    };
    let url = f.url();
    let copy = |password: &str| {
        copy_recorded(
            &catalog,
            &[
                "copy",
                "--config",
                cfg.to_str().unwrap(),
                "daily.0",
                "--to",
                &url,
                "--textfile",
                prom.to_str().unwrap(),
                "--json",
            ],
            password,
        )
    };
    let textfile = || {
        let files: Vec<_> = std::fs::read_dir(&prom)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("snapring-copy-") && name.ends_with(".prom"),
            "{name}"
        );
        std::fs::read_to_string(&files[0]).unwrap()
    };
    let store = std::fs::canonicalize(f.backups.join("fs-1")).unwrap();
    let labels = [
        "job_name=\"fs\"".to_string(),
        format!("store=\"{}\"", store.display()),
        format!("to=\"{url}\""),
    ];
    // The value of series `name` of the pair (with `extra` among its labels).
    let series = |t: &str, name: &str, extra: &str| {
        t.lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{"))
                    && labels.iter().all(|x| l.contains(x.as_str()))
                    && l.contains(extra)
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
    };

    // Failed (the wrong password): both notifiers hear it, and the textfile says it.
    write_cfg(false);
    let (code, r, err) = copy("not-the-password");
    assert_eq!(code, 1, "{r}{err}");
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["job"], "fs", "{r}");
    let n = r["notifications"].as_array().unwrap();
    assert_eq!(n.len(), 2, "{r}");
    assert!(n.iter().all(|o| o["ok"] == true), "{r}");
    let hooks = http.got.lock().unwrap().clone();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    let body: serde_json::Value = serde_json::from_str(&hooks[0].1).unwrap();
    assert_eq!(body["status"], "failed", "{body}");
    assert_eq!(body["job"], "fs", "{body}");
    let text = body["text"].as_str().unwrap();
    assert!(
        text.starts_with("[snapring] fs: copy failed")
            && text.contains("\nsnapring copy fs: failed"),
        "{text}"
    );
    let mails = smtp.mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].contains("Subject: [snapring] fs: copy failed"),
        "{}",
        mails[0]
    );
    let t = textfile();
    assert_eq!(
        series(&t, "snapring_copy_last_status", "status=\"failed\""),
        Some(1.0),
        "{t}"
    );
    assert_eq!(
        series(&t, "snapring_copy_last_status", "status=\"complete\""),
        Some(0.0),
        "{t}"
    );
    assert_eq!(
        series(&t, "snapring_copy_runs_started_total", ""),
        Some(1.0),
        "{t}"
    );
    assert_eq!(
        series(&t, "snapring_copy_runs_failed_total", ""),
        Some(1.0),
        "{t}"
    );
    assert!(
        !t.contains("snapring_copy_last_success_timestamp_seconds{"),
        "{t}"
    );

    // Complete: not told without notify_success; the textfile has it.
    let (code, r, err) = copy(PASSWORD);
    assert_eq!(code, 0, "{r}{err}");
    assert_eq!(r["notifications"].as_array().map_or(0, Vec::len), 0, "{r}");
    assert_eq!(http.got.lock().unwrap().len(), 1);
    assert_eq!(smtp.mails.lock().unwrap().len(), 1);
    let t = textfile();
    assert_eq!(
        series(&t, "snapring_copy_last_status", "status=\"complete\""),
        Some(1.0),
        "{t}"
    );
    assert_eq!(
        series(&t, "snapring_copy_runs_started_total", ""),
        Some(2.0),
        "{t}"
    );
    assert_eq!(
        series(&t, "snapring_copy_runs_failed_total", ""),
        Some(1.0),
        "{t}"
    );
    assert!(
        t.contains("snapring_copy_last_success_timestamp_seconds{"),
        "{t}"
    );

    // With notify_success, a complete copy is told too.
    write_cfg(true);
    let (code, r, err) = copy(PASSWORD);
    assert_eq!(code, 0, "{r}{err}");
    assert_eq!(http.got.lock().unwrap().len(), 2);
    let body: serde_json::Value = serde_json::from_str(&http.got.lock().unwrap()[1].1).unwrap();
    assert_eq!(body["status"], "complete", "{body}");
    let mails = smtp.mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 2);
    assert!(
        mails[1].contains("Subject: [snapring] fs: copy complete"),
        "{}",
        mails[1]
    );
    // The copies are the catalog's, under the config's job.
    let rows = history(&catalog, Some("copy"));
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r["job"] == "fs"), "{rows:?}");
}
