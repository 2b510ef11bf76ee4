//! Fidelity: after every run the newest snapshot equals the source in content, type,
//! mode bits (setuid/setgid/sticky), numeric owner, ns mtimes on files, directories and
//! symlinks, symlink targets (dangling too), hard-link groups, xattrs and POSIX ACLs,
//! sparse files, fifos, devices, empty directories, odd names and paths past PATH_MAX.

mod common;
use common::*;

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use rustix::fs::{AtFlags, Mode, OFlags};

#[test]
fn snapshot_equals_source_in_everything() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&dest).unwrap();
    odd_tree(&src);
    let (code, rep, err) = backup(&src, &dest, &["--folder", "fs-1"], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let store = dest.join("fs-1");
    assert_same_tree(
        &describe(&src),
        &describe(&store.join("daily.0")),
        "first snapshot",
    );

    // Sparse stays sparse: 64 MiB apparent, a few KiB allocated.
    let m = std::fs::metadata(store.join("daily.0/sparse")).unwrap();
    assert_eq!(m.len(), 64 << 20);
    assert!(
        m.blocks() * 512 <= 64 * 1024,
        "sparse file uses {} bytes",
        m.blocks() * 512
    );
    // The hard-link group is one inode in the snapshot.
    let a = ino(&store.join("daily.0/links/a"));
    assert_eq!(a, ino(&store.join("daily.0/links/b")));
    assert_eq!(a, ino(&store.join("daily.0/links/sub/c")));

    // A second run: still equal, now through hard links to the first.
    let before = describe(&store.join("daily.0"));
    let (code, rep, err) = backup(&src, &dest, &["--folder", "fs-1"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["bytes_transferred"], 0, "{rep}");
    assert_same_tree(
        &describe(&src),
        &describe(&store.join("daily.0")),
        "second snapshot",
    );
    assert_same_tree(
        &before,
        &describe(&store.join("daily.1")),
        "first snapshot after rotation",
    );
}

fn mkdir_open(dir: &OwnedFd, name: &[u8]) -> OwnedFd {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)).unwrap();
    rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
}

fn open_dir(dir: &OwnedFd, name: &[u8]) -> OwnedFd {
    rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
}

#[test]
fn paths_longer_than_path_max() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    std::fs::create_dir(&src).unwrap();
    let name = vec![b'd'; 200];
    let mut cur =
        rustix::fs::open(&src, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    let depth = 30; // 30 × 201 bytes > 4096
    for _ in 0..depth {
        cur = mkdir_open(&cur, &name);
    }
    let f = rustix::fs::openat(
        &cur,
        "leaf",
        OFlags::WRONLY | OFlags::CREATE,
        Mode::from_raw_mode(0o600),
    )
    .unwrap();
    rustix::io::write(&f, b"deep content").unwrap();
    drop(f);

    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["files_total"], 1);
    assert_eq!(rep["dirs_total"], depth);
    let mut cur = rustix::fs::open(
        dest.join("daily.0"),
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    for _ in 0..depth {
        cur = open_dir(&cur, &name);
    }
    let f = rustix::fs::openat(&cur, "leaf", OFlags::RDONLY, Mode::empty()).unwrap();
    let mut buf = [0u8; 64];
    let n = rustix::io::read(&f, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"deep content");
    let st = rustix::fs::statat(&cur, "leaf", AtFlags::empty()).unwrap();
    assert_eq!(st.st_mode & 0o7777, 0o600);

    // And incrementally: the deep file is linked, not copied.
    let (code, rep, _) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0);
    assert_eq!(rep["files_linked"], 1);
    assert_eq!(rep["bytes_transferred"], 0);
    let _ = OsStrExtUse::used();
}

struct OsStrExtUse;
impl OsStrExtUse {
    fn used() -> bool {
        std::ffi::OsStr::from_bytes(b"x").len() == 1
    }
}

/// `setfacl ARGS… PATH`.
fn setfacl(args: &[&str], p: &std::path::Path) {
    let st = std::process::Command::new("setfacl")
        .args(args)
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success(), "setfacl {args:?} {}", p.display());
}

/// `getfacl` of `p`, without its comment lines (names, owner) and flags.
fn getfacl(p: &std::path::Path) -> String {
    let out = std::process::Command::new("getfacl")
        .args(["-c", "-n", "-p"])
        .arg(p)
        .output()
        .unwrap();
    assert!(out.status.success(), "getfacl {}", p.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether uid `uid` (no groups) may read `p`: `setpriv` drops root for the `cat`.
fn readable_as(uid: u32, p: &std::path::Path) -> bool {
    std::process::Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
            "cat".into(),
        ])
        .arg(p)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Each of `names` under `d` in the snapshot has exactly its source's ACLs, xattrs and
/// mode, and uid 4242 may read it only where it may in the source.
fn assert_acls_as_source(src: &std::path::Path, snap: &std::path::Path, names: &[&str]) {
    for n in names {
        let (s, d) = (src.join(n), snap.join(n));
        assert_eq!(getfacl(&d), getfacl(&s), "{n}: ACLs");
        assert_eq!(xattrs_of(&d), xattrs_of(&s), "{n}: xattrs");
        let mode = |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().mode();
        assert_eq!(
            mode(&d),
            mode(&s),
            "{n}: mode {:o} / {:o}",
            mode(&d),
            mode(&s)
        );
        if std::fs::symlink_metadata(&s).unwrap().is_file() {
            assert_eq!(
                readable_as(4242, &d),
                readable_as(4242, &s),
                "{n}: read as 4242"
            );
        }
    }
}

/// A source directory with a default ACL granting uid 4242 read, holding files and a
/// subdirectory that have no ACL of their own (`chmod 640`: 4242 may not read them).
fn default_acl_source(src: &std::path::Path) {
    let d = src.join("D");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    for f in ["D/secret", "D/sub/deep"] {
        write(&src.join(f), b"secret\n");
        chmod(&src.join(f), 0o640);
    }
    // uid 4242 may walk down to the trees (`readable_as`): a temporary directory is 0700.
    chmod(src.parent().unwrap(), 0o711);
    // Set after the files: they have none of it.
    setfacl(&["-d", "-m", "u:4242:rwx,o::-"], &d);
    write(&src.join("plain"), b"plain\n");
    chmod(&src.join("plain"), 0o644);
}

/// A run cut after its staging directory got its source's metadata (its default ACL)
/// leaves it for the next run, which takes it over: what that run creates in it must
/// not inherit the default ACL (a grant to uid 4242 the source's file never had;
/// `complete`, linked forward by later runs, silent in `diff --against`). Before: the
/// new copy had `user:4242:rwx` (effective `r--`), 4242 could read it, verify said
/// DAMAGED.
#[test]
fn a_resumed_run_gives_new_copies_no_inherited_acl() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    std::fs::create_dir(&dest).unwrap();
    default_acl_source(&src);
    // Killed at the second directory to get its metadata: `D/sub` and `D` are done
    // (deepest first), the root is not.
    let (code, _, err) = backup(
        &src,
        &dest,
        &["--jobs", "1"],
        &[("SNAPRING_FAILPOINTS", "staging.dir_meta=kill@3")],
    );
    assert_ne!(code, 0, "{err}");
    let staging: Vec<_> = std::fs::read_dir(dest.join(".snapring/staging"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(staging.len(), 1, "{staging:?}");
    assert!(
        getfacl(&staging[0].join("D")).contains("default:user:4242"),
        "the cut run's D has its default ACL: {}",
        getfacl(&staging[0].join("D"))
    );
    // New entries in D and D/sub, and a changed one: created in the taken-over tree.
    // (Without what they inherit in the source's D: no ACL of their own.)
    for f in ["D/new", "D/sub/new", "D/secret"] {
        write(&src.join(f), b"new content\n");
        setfacl(&["-b"], &src.join(f));
        chmod(&src.join(f), 0o640);
    }
    std::fs::create_dir(src.join("D/newdir")).unwrap();
    setfacl(&["-b"], &src.join("D/newdir"));
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    assert_eq!(rep["status"], "complete", "{rep}");
    let snap = dest.join("daily.0");
    assert_acls_as_source(
        &src,
        &snap,
        &[
            "D",
            "D/new",
            "D/secret",
            "D/sub",
            "D/sub/new",
            "D/sub/deep",
            "D/newdir",
            "plain",
        ],
    );
    assert!(!readable_as(4242, &snap.join("D/new")));
    assert_verify_clean(&dest, &["daily.0"]);
}

/// A default ACL on the store's directory (the operator's) is inherited by
/// `.snapring/staging/<run>` and so by everything a run creates: each entry of the
/// snapshot must have its source's ACLs and mode only. Before: every file had the
/// store's `user:4242` entry (and a mode the ACL masked: 0640 for a 0644 file).
#[test]
fn a_default_acl_on_the_store_is_not_inherited_by_snapshots() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    std::fs::create_dir(&dest).unwrap();
    default_acl_source(&src);
    std::fs::create_dir(src.join("open")).unwrap();
    chmod(&src.join("open"), 0o755);
    setfacl(&["-d", "-m", "u:4242:rwx,o::-,m::rwx"], &dest);
    let names = ["", "D", "D/secret", "D/sub", "D/sub/deep", "plain", "open"];
    for run in 0..2 {
        if run == 1 {
            write(&src.join("plain"), b"changed\n");
            write(&src.join("D/secret"), b"changed\n");
        }
        let (code, rep, err) = backup(&src, &dest, &[], &[]);
        assert_eq!(code, 0, "run {run}: {rep}\n{err}");
        assert_acls_as_source(&src, &dest.join("daily.0"), &names);
        assert!(!readable_as(4242, &dest.join("daily.0/D/secret")));
    }
    assert_verify_clean(&dest, &["daily.0"]);
    assert_verify_clean(&dest, &["daily.1"]);
}
