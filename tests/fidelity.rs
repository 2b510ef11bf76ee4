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
