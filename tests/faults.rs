//! Faults under the real binary, injected by the FUSE fault layer of bench/tools
//! (`latencyfs` with fault flags, docs/testing.md) mounted over a temporary directory:
//! an I/O error reading a source file, a directory it may not open, I/O errors and a full disk writing the store,
//! the EFS hard-link limit, and a stalled call against a backup window. Each test skips
//! (and says why) where FUSE is not usable.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// 20 small files in four directories, with old mtimes; returns once they are old
/// enough (2 s) not to count as "racy" for the next run, so an unchanged file is linked
/// without being read.
fn source(src: &Path) {
    for i in 0..20 {
        let p = src.join(format!("d{}/f{i}", i % 4));
        write(&p, format!("content {i}").as_bytes());
        set_mtime(&p, 1_600_000_000, i);
    }
    std::thread::sleep(Duration::from_millis(2100));
}

/// A tree's entries without their hard-link groups: what "complete" means for a
/// snapshot whose links had to become copies.
fn contents(root: &Path) -> BTreeMap<Vec<u8>, Desc> {
    let mut d = describe(root);
    for v in d.values_mut() {
        v.link_group = None;
        if v.kind == "dir" {
            v.mtime = 0;
        }
    }
    d
}

fn problems(rep: &serde_json::Value) -> Vec<(String, String)> {
    rep["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["path"].as_str().unwrap_or("").to_string(),
                        p["kind"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `t/src` is the source as written, `t/src-fs` the same through the layer.
fn dirs(t: &tempfile::TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let (src, mnt, dest) = (
        t.path().join("src"),
        t.path().join("src-fs"),
        t.path().join("backup"),
    );
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&dest).unwrap();
    (src, mnt, dest)
}

/// An I/O error reading one changed source file: `partial` (exit 2), the file named
/// among the problems, everything else published.
#[test]
fn source_eio_gives_partial_and_names_the_file() {
    let t = tempfile::tempdir().unwrap();
    let (src, mnt, dest) = dirs(&t);
    source(&src);
    let Some(fs) = FaultFs::mount(&src, &mnt, &[]) else {
        return;
    };
    let (code, rep, err) = backup(&mnt, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    drop(fs);
    write(&src.join("d1/f1"), b"changed content 1");
    set_mtime(&src.join("d1/f1"), 1_700_000_000, 0);
    let _fs = FaultFs::mount(&src, &mnt, &["--eio-read", "/d1/f1"]).unwrap();
    let (code, rep2, err) = backup(&mnt, &dest, &[], &[]);
    assert_eq!(code, 2, "{rep2}\n{err}");
    assert_eq!(rep2["status"], "partial");
    assert_eq!(
        problems(&rep2),
        [("d1/f1".to_string(), "unreadable".to_string())],
        "{rep2}"
    );
    assert_eq!(snapshot_names(&dest), ["daily.0", "daily.1"]);
    assert_eq!(rep2["files_linked"], 19, "{rep} {rep2}");
    for i in (0..20).filter(|i| *i != 1) {
        assert_eq!(
            std::fs::read(dest.join(format!("daily.0/d{}/f{i}", i % 4))).unwrap(),
            format!("content {i}").as_bytes()
        );
    }
    assert_eq!(
        std::fs::read(dest.join("daily.1/d1/f1")).unwrap(),
        b"content 1"
    );
}

/// EACCES opening one source directory: `partial`, the directory listed, the rest
/// published.
#[test]
fn eacces_on_a_directory_gives_partial() {
    let t = tempfile::tempdir().unwrap();
    let (src, mnt, dest) = dirs(&t);
    source(&src);
    let Some(_fs) = FaultFs::mount(&src, &mnt, &["--eacces", "/d2"]) else {
        return;
    };
    let (code, rep, err) = backup(&mnt, &dest, &[], &[]);
    assert_eq!(code, 2, "{rep}\n{err}");
    assert_eq!(rep["status"], "partial");
    assert_eq!(
        problems(&rep),
        [("d2".to_string(), "unreadable".to_string())],
        "{rep}"
    );
    assert_eq!(rep["problems"][0]["action"], "open directory");
    assert_eq!(
        std::fs::read(dest.join("daily.0/d0/f0")).unwrap(),
        b"content 0"
    );
    assert!(dest.join("daily.0/d2").is_dir());
}

/// A changed file that cannot be read keeps its previous version in the new snapshot
/// (linked, with its previous manifest entry), the problem says so, and the new
/// snapshot verifies clean; once readable again, the next run copies the new content.
#[test]
fn source_eio_keeps_the_previous_version() {
    let t = tempfile::tempdir().unwrap();
    let (src, mnt, dest) = dirs(&t);
    source(&src);
    let Some(fs) = FaultFs::mount(&src, &mnt, &[]) else {
        return;
    };
    assert_eq!(backup(&mnt, &dest, &[], &[]).0, 0);
    drop(fs);
    write(&src.join("d1/f1"), b"changed content 1");
    set_mtime(&src.join("d1/f1"), 1_700_000_000, 0);
    let _fs = FaultFs::mount(&src, &mnt, &["--eio-read", "/d1/f1"]).unwrap();
    let (code, rep, _) = backup(&mnt, &dest, &[], &[]);
    assert_eq!(code, 2, "{rep}");
    assert_eq!(
        std::fs::read(dest.join("daily.0/d1/f1")).ok(),
        Some(b"content 1".to_vec()),
        "the previous version of d1/f1 is in the new snapshot"
    );
    assert_eq!(rep["status"], "partial");
    assert_eq!(
        problems(&rep),
        [("d1/f1".to_string(), "unreadable".to_string())],
        "{rep}"
    );
    let error = rep["problems"][0]["error"].as_str().unwrap_or("");
    assert!(
        error.contains("Input/output error") && error.contains("the previous version (from "),
        "{rep}"
    );
    assert_eq!(
        ino(&dest.join("daily.0/d1/f1")),
        ino(&dest.join("daily.1/d1/f1")),
        "linked, not copied"
    );
    assert_eq!(rep["files_linked"], 19, "{rep}");
    assert_eq!(rep["files_transferred"], 0, "{rep}");
    assert_verify_clean(&dest, "daily.0");
    drop(_fs);
    // The same tree without the fault layer: the same data at another path.
    let (code, rep, err) = backup(&src, &dest, &["--new-source"], &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    assert_eq!(
        std::fs::read(dest.join("daily.0/d1/f1")).unwrap(),
        b"changed content 1",
        "readable again: copied"
    );
    assert_verify_clean(&dest, "daily.0");
}

/// One name of a hard-linked inode cannot be read (`walk.open_source`, the first file
/// opened) and keeps its previous version, while the other name is copied afresh: in
/// the snapshot they are two inodes, so the manifest must not put them in one
/// hard-link group (`group` equal means one inode in the snapshot).
#[test]
fn a_kept_previous_version_joins_no_hard_link_group() {
    let t = tempfile::tempdir().unwrap();
    let (src, _, dest) = dirs(&t);
    write(&src.join("a"), b"version 1");
    std::fs::hard_link(src.join("a"), src.join("b")).unwrap();
    assert_eq!(backup(&src, &dest, &["--jobs", "1"], &[]).0, 0);
    write(&src.join("a"), b"version 2, longer");
    let (code, rep, err) = backup(
        &src,
        &dest,
        &["--jobs", "1"],
        &[("SNAPRING_FAILPOINTS", "walk.open_source=error")],
    );
    assert_eq!(code, 2, "{rep}\n{err}");
    let (a, b) = (dest.join("daily.0/a"), dest.join("daily.0/b"));
    let contents = [std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap()];
    assert!(
        contents.contains(&b"version 1".to_vec())
            && contents.contains(&b"version 2, longer".to_vec()),
        "one name kept, the other copied: {contents:?}"
    );
    assert_ne!(ino(&a), ino(&b));
    let id = rep["id"].as_str().unwrap();
    let mf = std::fs::read_to_string(dest.join(format!(".snapring/manifests/{id}.mf"))).unwrap();
    let groups: Vec<(String, String)> = mf
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() == 13 && (f[12] == "a" || f[12] == "b"))
        .map(|f| (f[12].to_string(), f[10].to_string()))
        .collect();
    assert_eq!(groups.len(), 2, "{mf}");
    assert_ne!(
        groups[0].1, groups[1].1,
        "two inodes, one group: {groups:?}"
    );
    assert_verify_clean(&dest, "daily.0");
}

/// `snapring verify SNAPSHOT` of the store reports it clean.
fn assert_verify_clean(dest: &Path, snap: &str) {
    let out = snapring(
        &[
            "verify".as_ref(),
            "--json".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            snap.as_ref(),
        ],
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        (out.status.code(), &v[0]["clean"]),
        (Some(0), &serde_json::Value::Bool(true)),
        "verify {snap}: {v}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The store behind the layer; `t/store` is the same store without it.
fn store_dirs(t: &tempfile::TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let (src, under, mnt) = (
        t.path().join("src"),
        t.path().join("under"),
        t.path().join("store-fs"),
    );
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&under).unwrap();
    (src, under, mnt)
}

/// An I/O error (EIO) reading a snapshot's file while verifying it is not bit rot: the
/// file is named as one that could not be read (`unreadable`, a problem), never
/// `corrupt`, and the verdict is NOT FULLY CHECKED, not DAMAGED (still exit 2: not
/// clean). A rerun without the fault is clean. It said `M d1/f5  content unreadable`,
/// `1 corrupt`, DAMAGED.
#[test]
fn verify_tells_a_read_error_from_corruption() {
    let t = tempfile::tempdir().unwrap();
    let (src, under, mnt) = store_dirs(&t);
    source(&src);
    let store = under.join("store");
    let (code, _, err) = backup(&src, &store, &[], &[]);
    assert_eq!(code, 0, "{err}");
    let Some(fs) = FaultFs::mount(&under, &mnt, &["--eio-read", "/store/daily.0/d1/f5"]) else {
        return;
    };
    let dest = mnt.join("store");
    let verify = |json: bool| {
        let mut args: Vec<&std::ffi::OsStr> = vec!["verify".as_ref()];
        if json {
            args.push("--json".as_ref());
        }
        args.extend(["--dest".as_ref(), dest.as_os_str(), "daily.0".as_ref()]);
        let out = snapring(&args, &[]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = verify(true);
    assert_eq!(code, Some(2), "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let v = &v[0];
    assert_eq!(
        (&v["clean"], &v["corrupt"], &v["unreadable"]),
        (&false.into(), &0.into(), &1.into()),
        "{v}"
    );
    assert_eq!(v["differences"], serde_json::json!([]), "{v}");
    assert_eq!(v["problems"][0][0], "d1/f5", "{v}");
    assert!(
        v["problems"][0][1]
            .as_str()
            .unwrap()
            .contains("Input/output error"),
        "{v}"
    );
    let (code, out, err) = verify(false);
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(out.contains("? d1/f5  could not be read: "), "{out}");
    assert!(out.contains("NOT FULLY CHECKED (I/O errors"), "{out}");
    assert!(out.contains("1 could not be read"), "{out}");
    assert!(!out.contains("DAMAGED") && !out.contains(" M "), "{out}");
    drop(fs);
    assert_verify_clean(&store, "daily.0");
}

/// Writes to the store fail with EIO after 4 KiB per file: `failed` (exit 1), nothing
/// published or rotated, the previous snapshot untouched, no staging tree left.
#[test]
fn destination_eio_fails_and_publishes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (src, under, mnt) = store_dirs(&t);
    source(&src);
    let Some(fs) = FaultFs::mount(&under, &mnt, &[]) else {
        return;
    };
    let dest = mnt.join("store");
    let (code, _, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    drop(fs);
    let before = describe(&under.join("store/daily.0"));
    write(&src.join("big"), &vec![7u8; 256 << 10]);
    let fs = FaultFs::mount(&under, &mnt, &["--eio-after", "4096", "--per-file"]).unwrap();
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    drop(fs);
    assert_eq!(code, 1, "{rep}\n{err}");
    assert_eq!(rep["status"], "failed");
    assert!(
        rep["message"]
            .as_str()
            .unwrap_or("")
            .contains("Input/output error"),
        "{rep}"
    );
    let store = under.join("store");
    assert_eq!(snapshot_names(&store), ["daily.0"], "nothing published");
    assert_same_tree(&before, &describe(&store.join("daily.0")), "daily.0");
    let staging: Vec<_> = std::fs::read_dir(store.join(".snapring/staging"))
        .unwrap()
        .collect();
    assert!(
        staging.is_empty(),
        "the partial tree is removed: {staging:?}"
    );
}

/// The store's file system fills up (ENOSPC after 64 KiB in total): `failed`, nothing
/// published; once there is space again the next run completes.
#[test]
fn destination_enospc_fails_and_the_next_run_completes() {
    let t = tempfile::tempdir().unwrap();
    let (src, under, mnt) = store_dirs(&t);
    source(&src);
    let Some(fs) = FaultFs::mount(&under, &mnt, &[]) else {
        return;
    };
    let dest = mnt.join("store");
    let (code, _, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    drop(fs);
    let store = under.join("store");
    let before = describe(&store.join("daily.0"));
    let first = contents(&src);
    write(&src.join("big"), &vec![7u8; 1 << 20]);
    let fs = FaultFs::mount(&under, &mnt, &["--enospc-after", "65536"]).unwrap();
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    drop(fs);
    assert_eq!(code, 1, "{rep}\n{err}");
    assert_eq!(rep["status"], "failed");
    assert!(
        rep["message"]
            .as_str()
            .unwrap_or("")
            .contains("file system is full"),
        "{rep}"
    );
    assert_eq!(snapshot_names(&store), ["daily.0"], "nothing published");
    assert_same_tree(&before, &describe(&store.join("daily.0")), "daily.0");
    // Space is back.
    let _fs = FaultFs::mount(&under, &mnt, &[]).unwrap();
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    assert_eq!(rep["status"], "complete");
    assert_eq!(snapshot_names(&store), ["daily.0", "daily.1"]);
    assert_same_tree(
        &contents(&src),
        &contents(&store.join("daily.0")),
        "daily.0",
    );
    assert_same_tree(&first, &contents(&store.join("daily.1")), "daily.1");
}

/// EFS allows 177 links per file. A file already linked 177 times (as if by 177
/// snapshots) and a source hard-link group of 200 names both run into the limit: the
/// links past it become copies, counted in `link_fallbacks`, and every snapshot has
/// every file with its content.
#[test]
fn efs_link_limit_falls_back_to_copies_and_snapshots_stay_complete() {
    let t = tempfile::tempdir().unwrap();
    let (src, under, mnt) = store_dirs(&t);
    source(&src);
    write(&src.join("many/0"), b"one inode, 200 names");
    for i in 1..200 {
        std::fs::hard_link(src.join("many/0"), src.join(format!("many/{i}"))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(2100));
    let Some(_fs) = FaultFs::mount(&under, &mnt, &["--link-limit", "177"]) else {
        return;
    };
    let dest = mnt.join("store");
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    assert!(rep["link_fallbacks"].as_u64().unwrap() > 0, "{rep}");
    let store = under.join("store");
    assert_same_tree(&contents(&src), &contents(&store.join("daily.0")), "run 1");
    // As if 177 snapshots held d0/f0 already.
    let scratch = under.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let f0 = store.join("daily.0/d0/f0");
    let mut i = 0;
    while std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(&f0).unwrap()) < 177 {
        std::fs::hard_link(&f0, scratch.join(i.to_string())).unwrap();
        i += 1;
    }
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    assert_eq!(rep["status"], "complete");
    assert!(rep["link_fallbacks"].as_u64().unwrap() > 0, "{rep}");
    assert_eq!(snapshot_names(&store), ["daily.0", "daily.1"]);
    for s in ["daily.0", "daily.1"] {
        assert_same_tree(&contents(&src), &contents(&store.join(s)), s);
    }
}

/// A call the layer stalls for 30 s does not hold a `--window 3s` run past its window:
/// its report says `incomplete` (and its record and exit code 3 agree) well before the
/// stall ends, and nothing is published.
///
/// The process itself may outlive its report: Linux's FUSE waits out a request that
/// the server has taken (the layer, like fuser, does not honour FUSE_INTERRUPT), so
/// the exit of a thread stuck in it waits too. An NFS client's calls are killable, so
/// there the process ends with its report. The test times the report, then unmounts
/// the layer to let the process go.
fn stalled(ops: &str) {
    use std::io::Read;
    let t = tempfile::tempdir().unwrap();
    let (src, mnt, dest) = dirs(&t);
    source(&src);
    let faults = [
        "--stall",
        "/d1/f1",
        "--stall-secs",
        "30",
        "--stall-ops",
        ops,
    ];
    let Some(fs) = FaultFs::mount(&src, &mnt, &faults) else {
        return;
    };
    let t0 = Instant::now();
    let mut child = std::process::Command::new(bin())
        .args(["backup", "--json", "--window", "3s", "--source"])
        .arg(&mnt)
        .arg("--dest")
        .arg(&dest)
        .env("SNAPRING_CATALOG", "off")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
    let rep: serde_json::Value = loop {
        let n = out.read(&mut chunk).unwrap();
        assert!(n > 0, "no report: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(v) = serde_json::from_slice(&buf) {
            break v;
        }
    };
    let took = t0.elapsed();
    drop(fs);
    let code = child.wait().unwrap().code();
    assert_eq!(rep["status"], "incomplete", "{rep}");
    assert!(
        took < Duration::from_secs(15),
        "a 3 s window ended after {took:?}"
    );
    assert!(
        rep["message"].as_str().unwrap().contains("still stalled"),
        "{rep}"
    );
    assert_eq!(code, Some(3), "{rep}");
    let id = rep["id"].as_str().unwrap();
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dest.join(format!(".snapring/runs/{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["status"], "incomplete", "{rec}");
    assert!(snapshot_names(&dest).is_empty(), "nothing published");
}

#[test]
fn stalled_read_does_not_outlast_the_window() {
    stalled("read");
}

#[test]
fn stalled_lookup_does_not_outlast_the_window() {
    stalled("lookup");
}

/// Allocated bytes of `p`.
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// A 64 MiB file `src/sparse` with 16 KiB of data blocks, holes elsewhere; its content.
fn sparse_file(src: &Path) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let size = 64u64 << 20;
    let f = std::fs::File::create(src.join("sparse")).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&[b'x'; 8192], 1 << 20).unwrap();
    // Not aligned: the two blocks it touches are data.
    f.write_all_at(b"tail", size - 4098).unwrap();
    drop(f);
    std::fs::read(src.join("sparse")).unwrap()
}

/// The premise of the two tests below: through the layer SEEK_HOLE finds no hole
/// before the end, though the file's blocks say it is sparse.
fn assert_no_seek_hole(p: &Path) {
    let f = std::fs::File::open(p).unwrap();
    let size = f.metadata().unwrap().len();
    let hole = rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(0)).unwrap();
    assert_eq!(
        hole, size,
        "the layer has SEEK_HOLE now: these tests need another"
    );
    assert!(allocated(p) < 64 * 1024, "{} not sparse", p.display());
}

/// A sparse file read through a file system without SEEK_DATA/SEEK_HOLE (the layer, as
/// FUSE, and NFS before 4.2 such as EFS) is stored sparse: its blocks say it is sparse,
/// so its blocks of zeros are left holes, its content and hash unchanged. A 256 MiB hole
/// through FUSE was stored as 256 MiB of disk (`cp --sparse=auto` made it 0).
#[test]
fn a_sparse_file_through_a_layer_without_seek_data_is_stored_sparse() {
    let t = tempfile::tempdir().unwrap();
    let (src, mnt, dest) = dirs(&t);
    let want = sparse_file(&src);
    let Some(fs) = FaultFs::mount(&src, &mnt, &[]) else {
        return;
    };
    assert_no_seek_hole(&mnt.join("sparse"));
    let (code, rep, err) = backup(&mnt, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    drop(fs);
    let stored = dest.join("daily.0/sparse");
    assert_eq!(std::fs::read(&stored).unwrap(), want);
    assert!(
        allocated(&stored) <= 64 * 1024,
        "the stored copy uses {} bytes",
        allocated(&stored)
    );
    // Only the data blocks were written (what the bandwidth limit counts too).
    assert_eq!(rep["bytes_transferred"], 8192 + 8192, "{rep}");
    // The recorded hash is the content's.
    assert_verify_clean(&dest, "daily.0");
}

/// A sparse file restored from a store read through a file system without SEEK_DATA
/// (a store on FUSE, or on NFS before 4.2 such as EFS) is restored sparse.
#[test]
fn a_sparse_file_restored_from_a_store_without_seek_data_stays_sparse() {
    let t = tempfile::tempdir().unwrap();
    let (src, mnt, dest) = dirs(&t);
    let want = sparse_file(&src);
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let Some(fs) = FaultFs::mount(&dest, &mnt, &[]) else {
        return;
    };
    assert_no_seek_hole(&mnt.join("daily.0/sparse"));
    let to = t.path().join("restored");
    let out = snapring(
        &[
            "restore".as_ref(),
            "--dest".as_ref(),
            mnt.as_os_str(),
            "daily.0".as_ref(),
            "--to".as_ref(),
            to.as_os_str(),
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(fs);
    let restored = to.join("sparse");
    assert_eq!(std::fs::read(&restored).unwrap(), want);
    assert!(
        allocated(&restored) <= 64 * 1024,
        "the restored file uses {} bytes",
        allocated(&restored)
    );
}

/// A listing that gives every name twice (an NFS server's readdir cookies gone wrong):
/// each is backed up once, and the run completes (it failed every run with `File
/// exists`, the first in staging, the next from the previous snapshot).
#[test]
fn a_name_listed_twice_is_backed_up_once() {
    let t = tempfile::tempdir().unwrap();
    let (src, mnt, dest) = dirs(&t);
    source(&src);
    let Some(_fs) = FaultFs::mount(&src, &mnt, &["--dup-list", "/d1"]) else {
        return;
    };
    assert_eq!(std::fs::read_dir(mnt.join("d1")).unwrap().count(), 10);
    for run in 0..2 {
        let (code, rep, err) = backup(&mnt, &dest, &[], &[]);
        assert_eq!(code, 0, "run {run}: {rep}\n{err}");
        assert_eq!(rep["status"], "complete");
        assert_eq!(contents(&dest.join("daily.0")), contents(&src));
        assert_verify_clean(&dest, "daily.0");
    }
}

/// `lstat` failing (EIO, as NFS's GETATTR can) on a file and on a directory, and a
/// listing failing after 2 of its 6 entries: run after run (`--retain 2`), each
/// `partial` naming them, the newest snapshot still holds the previous version of what
/// could not be seen (a directory with everything under it), and the current version
/// of what could. Dropped, three such runs rotated the last copy away.
#[test]
fn entries_that_cannot_be_seen_keep_their_previous_version() {
    let t = tempfile::tempdir().unwrap();
    let (src, mnt, dest) = dirs(&t);
    source(&src);
    write(&src.join("d3/sub/deep"), b"deep");
    write(&src.join("d2/sub/deep2"), b"deep2");
    set_mtime(&src.join("d3/sub/deep"), 1_600_000_000, 0);
    set_mtime(&src.join("d2/sub/deep2"), 1_600_000_000, 0);
    let Some(fs) = FaultFs::mount(&src, &mnt, &[]) else {
        return;
    };
    let (code, rep, err) = backup(&mnt, &dest, &["--retain", "2"], &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    drop(fs);
    let before = contents(&dest.join("daily.0"));
    // What the runs can read is changed: they back it up.
    write(&src.join("d0/f0"), b"changed 0");
    set_mtime(&src.join("d0/f0"), 1_700_000_000, 0);
    let faults = [
        "--eio-stat",
        "/d3",
        "--eio-stat",
        "/d1/f5",
        "--eio-list",
        "/d2:2",
        "--eio-stat",
        "/d2/f6",
    ];
    let _fs = FaultFs::mount(&src, &mnt, &faults).unwrap();
    for run in 0..3 {
        let (code, rep, err) = backup(&mnt, &dest, &["--retain", "2"], &[]);
        assert_eq!(code, 2, "run {run}: {rep}\n{err}");
        assert_eq!(rep["status"], "partial");
        let mut probs = problems(&rep);
        probs.sort();
        let u = |p: &str| (p.to_string(), "unreadable".to_string());
        assert_eq!(probs, [u("d1/f5"), u("d2"), u("d2/f6"), u("d3")], "{rep}");
        let now = contents(&dest.join("daily.0"));
        let mut want = before.clone();
        want.insert(b"d0/f0".to_vec(), now[&b"d0/f0".to_vec()].clone());
        assert_eq!(now, want, "run {run}");
        // The kept versions are in the snapshot: counted among its files and bytes
        // (d1/f5 and d2/f6, whose `lstat` failed, were not).
        let files = now.values().filter(|d| d.kind != "dir").count() as u64;
        let bytes: u64 = walk_files(&dest.join("daily.0"))
            .iter()
            .map(|f| std::fs::symlink_metadata(f).unwrap().len())
            .sum();
        assert_eq!(rep["files_total"], files, "run {run}: {rep}");
        assert_eq!(rep["source_bytes"], bytes, "run {run}: {rep}");
        assert_eq!(
            std::fs::read(dest.join("daily.0/d0/f0")).unwrap(),
            b"changed 0"
        );
        assert_eq!(
            std::fs::read(dest.join("daily.0/d3/sub/deep")).unwrap(),
            b"deep"
        );
        assert_eq!(
            std::fs::read(dest.join("daily.0/d2/sub/deep2")).unwrap(),
            b"deep2"
        );
        assert_verify_clean(&dest, "daily.0");
    }
}

/// A directory that cannot be opened (EACCES) keeps the previous snapshot's entries of
/// it, as a file that cannot be read keeps its previous version.
#[test]
fn eacces_on_a_directory_keeps_its_previous_entries() {
    let t = tempfile::tempdir().unwrap();
    let (src, mnt, dest) = dirs(&t);
    write(&src.join("d2/image.iso"), b"excluded since");
    source(&src);
    let Some(fs) = FaultFs::mount(&src, &mnt, &[]) else {
        return;
    };
    let (code, rep, err) = backup(&mnt, &dest, &[], &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    drop(fs);
    let mut before = contents(&dest.join("daily.0"));
    assert!(before.remove(&b"d2/image.iso"[..]).is_some());
    let _fs = FaultFs::mount(&src, &mnt, &["--eacces", "/d2"]).unwrap();
    let (code, rep, err) = backup(&mnt, &dest, &["--exclude", "*.iso"], &[]);
    assert_eq!(code, 2, "{rep}\n{err}");
    assert_eq!(
        problems(&rep),
        [("d2".to_string(), "unreadable".to_string())],
        "{rep}"
    );
    // The problem says what the snapshot holds instead of the directory's entries.
    let said = rep["problems"][0]["error"].as_str().unwrap();
    assert!(
        said.contains("Permission denied")
            && said.contains("its 5 entries of the previous snapshot (from ")
            && said.ends_with(") were kept"),
        "{rep}"
    );
    // Kept entries obey today's exclusions, as walked ones do.
    assert_eq!(contents(&dest.join("daily.0")), before);
    assert_verify_clean(&dest, "daily.0");
}

/// Entries the walk keeps from the previous snapshot (a directory it may not open, a
/// file it may not read) in a store that refuses the link (EMLINK: an EFS inode takes
/// 177 links; here 1) are copied from the previous snapshot instead: a copy is as much
/// a kept version as a link. Each is named among the problems, saying it was copied;
/// the snapshot holds them, and verifies clean. (Before: they were left out of the
/// snapshot, each named "could not be linked … not in this snapshot".)
#[test]
fn kept_entries_the_store_cannot_link_are_copied_from_the_previous_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let (src, under, mnt) = store_dirs(&t);
    source(&src);
    let src_mnt = t.path().join("src-fs");
    let Some(store_fs) = FaultFs::mount(&under, &mnt, &["--link-limit", "1"]) else {
        return;
    };
    let dest = mnt.join("store");
    let src_fs = FaultFs::mount(&src, &src_mnt, &[]).unwrap();
    let (code, rep, err) = backup(&src_mnt, &dest, &[], &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    drop(src_fs);
    let _src_fs =
        FaultFs::mount(&src, &src_mnt, &["--eacces", "/d2", "--eacces", "/d1/f5"]).unwrap();
    let (code, rep, err) = backup(&src_mnt, &dest, &[], &[]);
    assert_eq!(code, 2, "{rep}\n{err}");
    let mut named: Vec<(String, String)> = problems(&rep);
    named.sort();
    let want: Vec<(String, String)> = [
        "d1/f5", "d2", "d2/f10", "d2/f14", "d2/f18", "d2/f2", "d2/f6",
    ]
    .iter()
    .map(|p| (p.to_string(), "unreadable".to_string()))
    .collect();
    assert_eq!(named, want, "{rep}");
    let a = rep["problems"].as_array().unwrap();
    assert!(
        a.iter().filter(|p| p["path"] != "d2").all(|p| {
            let e = p["error"].as_str().unwrap();
            e.contains("was kept") && e.contains("copied") && e.contains("link limit")
        }),
        "{rep}"
    );
    for i in [2, 5, 6, 10, 14, 18] {
        let p = dest.join(format!("daily.0/d{}/f{i}", i % 4));
        assert_eq!(
            std::fs::read(&p).unwrap(),
            format!("content {i}").as_bytes(),
            "{}",
            p.display()
        );
    }
    assert_verify_clean(&dest, "daily.0");
    drop(store_fs);
}

/// The regular files under `root`.
fn walk_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(walk_files(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out
}

/// The inode of `dest/name`'s root: which snapshot a name holds now.
fn root_ino(dest: &Path, name: &str) -> u64 {
    ino(&dest.join(name))
}

/// The source's FUSE server dies in the middle of a run (every later call: ENOTCONN):
/// the run is `failed` (exit 1) with an error naming the source and the errno, nothing
/// is published nor rotated, and the complete snapshot is there as it was. Before:
/// `partial`, every entry "kept from the previous snapshot", published, and with
/// `--retain 1` the complete snapshot expired (three such runs with `--retain 3` left
/// only partial ones).
#[test]
fn a_source_that_goes_away_mid_run_fails_the_run_and_rotates_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (src, mnt, dest) = dirs(&t);
    source(&src);
    let Some(fs) = FaultFs::mount(&src, &mnt, &[]) else {
        return;
    };
    let (code, rep, err) = backup(&mnt, &dest, &["--retain", "1"], &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    let complete = root_ino(&dest, "daily.0");
    // Paused after the root's listing, the layer is killed (not unmounted): ENOTCONN.
    let run = spawn_paused(&mnt, &dest, &["--retain", "1"], "walk.after_readdir", 1);
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &fs.pid().to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(200));
    let (code, rep) = run.resume();
    assert_eq!(code, 1, "{rep}");
    assert_eq!(rep["status"], "failed", "{rep}");
    let msg = rep["message"].as_str().unwrap_or("");
    assert!(
        msg.contains(&mnt.display().to_string()) && msg.contains("not connected"),
        "{msg}"
    );
    assert!(msg.contains("went away"), "{msg}");
    assert_eq!(rep["expired"].as_array().map_or(0, |a| a.len()), 0, "{rep}");
    assert_eq!(snapshot_names(&dest), ["daily.0"]);
    assert_eq!(root_ino(&dest, "daily.0"), complete);
    drop(fs);
    assert_verify_clean(&dest, "daily.0");
}

/// A dead FUSE mount inside the source (a user's sshfs in /home, killed) answers
/// ENOTCONN for its mount point while the source answers: that entry's problem
/// (`partial`, named), not a source gone away. Before (review of acl-48): every run
/// failed until someone unmounted it.
#[test]
fn a_dead_mount_inside_the_source_is_that_entrys_problem_not_the_runs() {
    let t = tempfile::tempdir().unwrap();
    let (src, _mnt, dest) = dirs(&t);
    source(&src);
    let under = t.path().join("under");
    write(&under.join("x"), b"inside the mount");
    let nested = src.join("nested");
    std::fs::create_dir(&nested).unwrap();
    let Some(fs) = FaultFs::mount(&under, &nested, &[]) else {
        return;
    };
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &fs.pid().to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(200));
    let e = std::fs::symlink_metadata(&nested).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(107), "{e}");
    for extra in [&[][..], &["--one-file-system"][..]] {
        let (code, rep, err) = backup(&src, &dest, extra, &[]);
        assert_eq!(code, 2, "{extra:?}: {rep}\n{err}");
        assert_eq!(rep["status"], "partial", "{extra:?}: {rep}");
        let named = rep["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.to_string().contains("nested"));
        assert!(named, "{extra:?}: {rep}");
    }
    drop(fs);
    assert!(src.join("d1/f1").exists());
}

/// `partial` runs (a file that answers EIO) with `--retain 1` keep the newest complete
/// snapshot past retain, and say so; the next complete run expires it. Before: the
/// first partial run expired the only complete snapshot (invariant 3).
#[test]
fn partial_runs_never_expire_the_last_complete_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let (src, mnt, dest) = dirs(&t);
    source(&src);
    let Some(fs) = FaultFs::mount(&src, &mnt, &[]) else {
        return;
    };
    let (code, rep, err) = backup(&mnt, &dest, &["--retain", "1"], &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    drop(fs);
    let complete = root_ino(&dest, "daily.0");
    write(&src.join("d1/f1"), b"changed content 1");
    set_mtime(&src.join("d1/f1"), 1_700_000_000, 0);
    let fs = FaultFs::mount(&src, &mnt, &["--eio-read", "/d1/f1"]).unwrap();
    let mut partial = 0;
    for run in 0..2 {
        let (code, rep, err) = backup(&mnt, &dest, &["--retain", "1"], &[]);
        assert_eq!(code, 2, "run {run}: {rep}\n{err}");
        assert_eq!(rep["status"], "partial");
        assert_eq!(snapshot_names(&dest), ["daily.0", "daily.1"], "run {run}");
        assert_eq!(root_ino(&dest, "daily.1"), complete, "run {run}");
        // The second partial run expires the first (not the complete one).
        let expired: Vec<String> = serde_json::from_value(rep["expired"].clone()).unwrap();
        let want: Vec<String> = match run {
            0 => vec![],
            _ => vec!["daily.0".into()],
        };
        assert_eq!(expired, want, "run {run}: {rep}");
        assert_ne!(root_ino(&dest, "daily.0"), partial);
        partial = root_ino(&dest, "daily.0");
        let warned = rep["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("daily.1 kept past retain 1"));
        assert!(warned, "run {run}: {rep}");
    }
    drop(fs);
    let _fs = FaultFs::mount(&src, &mnt, &[]).unwrap();
    let (code, rep, err) = backup(&mnt, &dest, &["--retain", "1"], &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    assert_eq!(snapshot_names(&dest), ["daily.0"]);
    let mut expired: Vec<String> = serde_json::from_value(rep["expired"].clone()).unwrap();
    expired.sort();
    assert_eq!(expired, ["daily.0", "daily.1"], "{rep}");
    assert_verify_clean(&dest, "daily.0");
}
