//! floor: the physical limit of a hard-link snapshot, for the benchmark's ratios. It does
//! only what any tool must: a parallel `lstat` of every source entry, and a parallel
//! hard-link tree of the previous snapshot (one `mkdir` per directory, one `link` per
//! file), with N calls in flight. No comparison, no copy, no metadata.
//!
//! Usage: floor [--jobs 32] SOURCE PREVIOUS NEW

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{AtFlags, Mode, OFlags};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

/// Directories as open descriptors: every call is relative to its directory, as in
/// snapring (a path-based tool pays a lookup per component per call on NFS/FUSE).
enum Task {
    Stat(OwnedFd),
    Link(OwnedFd, OwnedFd),
}

fn open_dir(at: impl AsFd, name: &std::ffi::OsStr) -> OwnedFd {
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open directory")
}

fn names(dir: &OwnedFd) -> Vec<(std::ffi::OsString, bool)> {
    use std::os::unix::ffi::OsStrExt;
    let mut d = rustix::fs::Dir::read_from(dir).expect("read directory");
    let mut v = Vec::new();
    while let Some(e) = d.read() {
        let e = e.expect("entry");
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            v.push((
                std::ffi::OsStr::from_bytes(n).to_os_string(),
                e.file_type() == rustix::fs::FileType::Directory,
            ));
        }
    }
    v
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut jobs = 32;
    if let Some(i) = args.iter().position(|a| a == "--jobs") {
        jobs = args[i + 1].parse().expect("--jobs N");
        args.drain(i..=i + 1);
    }
    if args.len() != 3 {
        eprintln!("usage: floor [--jobs N] SOURCE PREVIOUS NEW");
        std::process::exit(2);
    }
    let (src, prev, new) = (
        PathBuf::from(&args[0]),
        PathBuf::from(&args[1]),
        PathBuf::from(&args[2]),
    );
    std::fs::create_dir(&new).expect("create NEW");
    let cwd = rustix::fs::CWD;
    let queue = Mutex::new(vec![
        Task::Stat(open_dir(cwd, src.as_os_str())),
        Task::Link(
            open_dir(cwd, prev.as_os_str()),
            open_dir(cwd, new.as_os_str()),
        ),
    ]);
    let cv = Condvar::new();
    let busy = AtomicUsize::new(0);
    let (stats, links) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let task = {
                        let mut q = queue.lock().unwrap();
                        loop {
                            if let Some(t) = q.pop() {
                                busy.fetch_add(1, Ordering::SeqCst);
                                break Some(t);
                            }
                            if busy.load(Ordering::SeqCst) == 0 {
                                break None;
                            }
                            q = cv.wait(q).unwrap();
                        }
                    };
                    let Some(task) = task else {
                        cv.notify_all();
                        return;
                    };
                    let mut more = Vec::new();
                    match task {
                        Task::Stat(dir) => {
                            for (n, _) in names(&dir) {
                                let m = rustix::fs::statat(&dir, &n, AtFlags::SYMLINK_NOFOLLOW)
                                    .expect("lstat");
                                stats.fetch_add(1, Ordering::Relaxed);
                                if rustix::fs::FileType::from_raw_mode(m.st_mode)
                                    == rustix::fs::FileType::Directory
                                {
                                    more.push(Task::Stat(open_dir(&dir, &n)));
                                }
                            }
                        }
                        Task::Link(from, to) => {
                            for (n, is_dir) in names(&from) {
                                if is_dir {
                                    rustix::fs::mkdirat(&to, &n, Mode::from_raw_mode(0o755))
                                        .expect("mkdir");
                                    more.push(Task::Link(open_dir(&from, &n), open_dir(&to, &n)));
                                } else {
                                    rustix::fs::linkat(&from, &n, &to, &n, AtFlags::empty())
                                        .expect("link");
                                    links.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    let mut q = queue.lock().unwrap();
                    q.extend(more);
                    busy.fetch_sub(1, Ordering::SeqCst);
                    drop(q);
                    cv.notify_all();
                }
            });
        }
    });
    println!(
        "floor: {} lstat, {} links",
        stats.load(Ordering::Relaxed),
        links.load(Ordering::Relaxed)
    );
}
