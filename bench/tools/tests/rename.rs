//! Renames through latencyfs: the layer keeps each inode as (parent, name) and builds
//! paths from these links, so after a directory is renamed (within a directory, across
//! directories, over an existing entry, or exchanged) what lies under it must still
//! resolve, also through a directory handle opened before the rename. Mounts the real
//! binary over a temporary directory (needs /dev/fuse and fusermount3; skipped, with a
//! message, without them).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// latencyfs (no delay) mounted over `under` at `mnt`; unmounted when dropped.
struct Mount {
    child: Child,
    mnt: PathBuf,
}

impl Mount {
    fn new(under: &Path, mnt: &Path, args: &[&str]) -> Option<Mount> {
        if !Path::new("/dev/fuse").exists()
            || !Command::new("fusermount3")
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success())
        {
            eprintln!("skipped: no /dev/fuse or no fusermount3");
            return None;
        }
        std::fs::create_dir_all(mnt).unwrap();
        let dev = std::fs::metadata(mnt.parent().unwrap()).unwrap().dev();
        let mut child = Command::new(env!("CARGO_BIN_EXE_latencyfs"))
            .args(["--delay-us", "0", "--threads", "4"])
            .args(args)
            .arg(under)
            .arg(mnt)
            .spawn()
            .expect("start latencyfs");
        let t0 = Instant::now();
        while std::fs::metadata(mnt).unwrap().dev() == dev {
            if let Ok(Some(s)) = child.try_wait() {
                panic!("latencyfs exited: {s}");
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "latencyfs did not mount"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Mount {
            child,
            mnt: mnt.to_path_buf(),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mnt)
            .status();
        let _ = self.child.wait();
    }
}

fn write(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, s).unwrap();
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// A file read relative to a directory handle: the kernel asks latencyfs by the
/// directory's inode, not by a path.
fn read_at(dir: &std::fs::File, rel: &str) -> String {
    let fd = rustix::fs::openat(
        dir,
        rel,
        rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )
    .unwrap_or_else(|e| panic!("openat {rel}: {e}"));
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s).unwrap();
    s
}

fn renames(args: &[&str], tag: &str) {
    let base = std::env::temp_dir().join(format!("latencyfs-rename-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let under = base.join("under");
    write(&under.join("a/b/c/f"), "f");
    write(&under.join("a/b/g"), "g");
    write(&under.join("x/keep"), "keep");
    write(&under.join("y"), "old y");
    write(&under.join("z/old"), "z");
    std::fs::create_dir_all(under.join("empty")).unwrap();
    write(&under.join("p/in_p"), "p");
    write(&under.join("q/in_q"), "q");
    let Some(fs) = Mount::new(&under, &base.join("mnt"), args) else {
        return;
    };
    let m = fs.mnt.clone();

    // The kernel learns every inode first (lookups and listings).
    assert_eq!(read(&m.join("a/b/c/f")), "f");
    assert_eq!(std::fs::read_dir(m.join("a/b")).unwrap().count(), 2);
    let b = std::fs::File::open(m.join("a/b")).unwrap();

    // A directory with children, across directories.
    std::fs::rename(m.join("a"), m.join("x/a2")).unwrap();
    assert!(!m.join("a").exists());
    assert_eq!(read(&m.join("x/a2/b/c/f")), "f");
    assert_eq!(read(&m.join("x/a2/b/g")), "g");
    assert_eq!(read_at(&b, "c/f"), "f");
    write(&m.join("x/a2/b/c/new"), "new");
    assert_eq!(read(&under.join("x/a2/b/c/new")), "new");
    assert_eq!(read(&m.join("x/keep")), "keep");

    // Within one directory, then back across: the handle follows.
    std::fs::rename(m.join("x/a2/b"), m.join("x/a2/b2")).unwrap();
    std::fs::rename(m.join("x/a2/b2"), m.join("b3")).unwrap();
    assert_eq!(read_at(&b, "c/new"), "new");
    assert_eq!(read(&m.join("b3/g")), "g");
    let names: Vec<_> = std::fs::read_dir(m.join("b3/c"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // Over an existing file, and a directory over an empty one.
    write(&m.join("y2"), "new y");
    std::fs::rename(m.join("y2"), m.join("y")).unwrap();
    assert_eq!(read(&m.join("y")), "new y");
    assert!(!m.join("y2").exists());
    std::fs::rename(m.join("z"), m.join("empty")).unwrap();
    assert_eq!(read(&m.join("empty/old")), "z");
    assert!(!m.join("z").exists());
    write(&m.join("z/again"), "again");
    assert_eq!(read(&under.join("z/again")), "again");

    // Exchanged directories: each one's children go with it.
    let _ = read(&m.join("p/in_p")) + &read(&m.join("q/in_q"));
    let p = std::fs::File::open(m.join("p")).unwrap();
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        m.join("p"),
        rustix::fs::CWD,
        m.join("q"),
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .unwrap();
    assert_eq!(read(&m.join("q/in_p")), "p");
    assert_eq!(read(&m.join("p/in_q")), "q");
    assert_eq!(read_at(&p, "in_p"), "p");
    write(&m.join("q/more"), "more");
    assert_eq!(read(&under.join("q/more")), "more");

    drop(b);
    drop(p);
    drop(fs);
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn renames_keep_paths_under_them() {
    renames(&[], "plain");
}

/// Names learnt from READDIRPLUS listings, and kernel caching of entries.
#[test]
fn renames_keep_paths_under_them_with_readdirplus() {
    renames(&["--readdirplus", "--ttl-ms", "1000"], "plus");
}

/// A file written under a temporary name, linked into place and its temporary name
/// removed (how snapring creates a file exclusively), then read under a 60 s TTL: the
/// kernel keeps using the inode it was given by the link, which latencyfs must reach by
/// its new name (it reached it by the removed one: ENOENT, "the shard plan vanished just
/// after it was written").
#[test]
fn a_file_linked_into_place_is_read_after_its_temporary_name_is_removed() {
    let base = std::env::temp_dir().join(format!("latencyfs-link-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let under = base.join("under");
    std::fs::create_dir_all(under.join("d")).unwrap();
    let Some(fs) = Mount::new(
        &under,
        &base.join("mnt"),
        &["--ttl-ms", "60000", "--readdirplus"],
    ) else {
        return;
    };
    let d = base.join("mnt/d");
    // Looked up first (as a reader that found no plan does): a cached negative entry.
    assert!(!d.join("plan.json").exists());
    write(&d.join(".plan.json.tmp"), "plan");
    std::fs::hard_link(d.join(".plan.json.tmp"), d.join("plan.json")).unwrap();
    std::fs::remove_file(d.join(".plan.json.tmp")).unwrap();
    assert_eq!(read(&d.join("plan.json")), "plan");
    drop(fs);
    std::fs::remove_dir_all(&base).unwrap();
}
