//! Fidelity: after every run the newest snapshot equals the source in content, type,
//! mode bits (setuid/setgid/sticky), numeric owner, ns mtimes on files, directories and
//! symlinks, symlink targets (dangling too), hard-link groups, xattrs and POSIX ACLs,
//! sparse files, fifos, devices, empty directories, odd names and paths past PATH_MAX.

mod common;
use common::*;

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};

/// Builds a source with one of everything.
fn odd_tree(src: &Path) {
    let names: Vec<&[u8]> = vec![
        b"with space",
        b"new\nline",
        b"quote\"s'",
        b"\xff\xfe not utf8",
        b"-leading-dash",
        b"%41 percent",
        b"tab\there",
    ];
    for n in &names {
        write(&pb(src, &[b"names/", *n].concat()), n);
    }
    // Modes and owners (chown before chmod: chown clears setuid).
    write(&src.join("modes/setuid"), b"su");
    chown(&src.join("modes/setuid"), 1234, 5678);
    chmod(&src.join("modes/setuid"), 0o4755);
    write(&src.join("modes/setgid"), b"sg");
    chmod(&src.join("modes/setgid"), 0o2711);
    write(&src.join("modes/none"), b"");
    chmod(&src.join("modes/none"), 0o000);
    std::fs::create_dir_all(src.join("modes/sticky")).unwrap();
    chmod(&src.join("modes/sticky"), 0o1777);
    std::fs::create_dir_all(src.join("modes/setgid-dir")).unwrap();
    chown(&src.join("modes/setgid-dir"), 42, 4242);
    chmod(&src.join("modes/setgid-dir"), 0o2775);
    // Symlinks, dangling and absolute, owned by someone.
    std::os::unix::fs::symlink("../names/with space", src.join("modes/rel-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", src.join("modes/dangling")).unwrap();
    chown(&src.join("modes/dangling"), 7, 8);
    // Hard-link group of three names in two directories.
    write(&src.join("links/a"), b"shared inode");
    std::fs::create_dir_all(src.join("links/sub")).unwrap();
    std::fs::hard_link(src.join("links/a"), src.join("links/b")).unwrap();
    std::fs::hard_link(src.join("links/a"), src.join("links/sub/c")).unwrap();
    // Extended attributes and ACLs.
    write(&src.join("attrs/file"), b"xattrs");
    set_xattr(&src.join("attrs/file"), "user.color", b"blue");
    set_xattr(&src.join("attrs/file"), "user.bin", b"\x00\x01\xff");
    set_xattr(
        &src.join("attrs/file"),
        "system.posix_acl_access",
        &acl_bytes(4321),
    );
    set_xattr(&src.join("attrs"), "user.dir", b"on a directory");
    // Sparse file: 64 MiB with 4 KiB of data in the middle.
    let f = std::fs::File::create(src.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[7u8; 4096], 32 << 20).unwrap();
    drop(f);
    // Special files and an empty directory.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("fifo"),
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("null-dev"),
        rustix::fs::FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    std::fs::create_dir_all(src.join("empty/dir")).unwrap();
    // A default ACL on a directory, set after its children exist.
    let mut dflt = acl_bytes(99);
    dflt[4 + 2] = 7; // user:: rwx in the default ACL
    set_xattr(&src.join("empty"), "system.posix_acl_default", &dflt);
    // Nanosecond mtimes everywhere, directories last (children change them).
    set_mtime(&src.join("sparse"), 1_600_000_000, 123_456_789);
    set_mtime(&src.join("modes/dangling"), 1_500_000_000, 999_999_999);
    set_mtime(&src.join("modes/rel-link"), 1_400_000_000, 1);
    set_mtime(&src.join("fifo"), 1_300_000_000, 42);
    for d in [
        "names",
        "modes/sticky",
        "modes/setgid-dir",
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
