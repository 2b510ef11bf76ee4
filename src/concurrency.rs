//! How many file-system calls to keep in flight when the user does not say (`--jobs`):
//! many on network and FUSE file systems, where each call waits a round trip, and few on
//! local disks, where calls cost CPU and extra threads only contend; and `Slots`, which
//! bounds the memory-heavy part of that work. Reads file-system types (statfs).

use std::path::Path;

/// Calls in flight on a network (or FUSE) file system. Each call there waits about a
/// millisecond, so throughput grows with the calls in flight until the server or the
/// kernel's per-directory lock is the limit. At 1 ms, 64 ran 1.5× faster than 32 and
/// as fast as 128 (docs/performance.md has the sweep).
pub const NETWORK_JOBS: usize = 64;

/// The most calls in flight the local default picks, however many CPUs there are.
pub const LOCAL_MAX_JOBS: usize = 32;

/// Calls in flight when every path is on a local file system: a few per CPU, enough to
/// overlap the odd disk read, not so many that threads fight over two cores.
pub fn local_jobs() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (4 * cpus).clamp(4, LOCAL_MAX_JOBS)
}

/// `jobs` when the user gave one (non-zero), else the default for these paths: the
/// network default if any of them is on a network or FUSE file system (or cannot be
/// told), the local one otherwise. A path that does not exist yet (a new store, a
/// restore target) is judged by its nearest existing ancestor.
pub fn resolve(jobs: usize, paths: &[&Path]) -> usize {
    if jobs != 0 {
        return jobs;
    }
    if paths.iter().any(|p| is_remote(p)) {
        NETWORK_JOBS
    } else {
        local_jobs()
    }
}

/// Whether `path` (or its nearest existing ancestor) is on a network or FUSE file system.
/// Unknown counts as remote: too many calls in flight costs a little CPU on a local disk;
/// too few costs hours on NFS.
pub fn is_remote(path: &Path) -> bool {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let fs = path
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .find_map(|p| rustix::fs::statfs(p).ok());
    match fs {
        Some(fs) => REMOTE_MAGIC.contains(&(fs.f_type as u64)),
        None => true,
    }
}

/// Whether every client of the file system holding `path` sees a file under the same
/// inode number (NFS's fileid, a cluster file system's): not for FUSE (sshfs, s3fs,
/// rclone number inodes per mount) or SMB/CIFS (`noserverino`). A shard plan records
/// the source's inode only where it is (`shard::state::check_source_ino`).
pub fn inode_numbers_shared(path: &Path) -> bool {
    match rustix::fs::statfs(path) {
        Ok(fs) => !PER_MOUNT_INODES.contains(&(fs.f_type as u64)),
        Err(_) => false,
    }
}

/// statfs(2) `f_type` of file systems whose inode numbers may be the client's own.
const PER_MOUNT_INODES: &[u64] = &[
    0x65735546, // FUSE
    0x517b,     // SMB
    0xff534d42, // CIFS
    0xfe534d42, // SMB2
];

/// statfs(2) `f_type` of file systems whose metadata calls cross a network (or a FUSE
/// daemon, which is how s3fs, sshfs, gcsfuse and the benchmark's latency layer appear).
const REMOTE_MAGIC: &[u64] = &[
    0x6969,     // NFS (also EFS)
    0x517b,     // SMB
    0xff534d42, // CIFS
    0xfe534d42, // SMB2
    0x65735546, // FUSE
    0x00c36400, // Ceph
    0x01021997, // 9p
    0x5346414f, // AFS
    0x6b414653, // kAFS
    0x0bd00bd0, // Lustre
    0x47504653, // GPFS
    0x01161970, // GFS2
    0x7461636f, // OCFS2
    0x73757245, // Coda
    0x564c,     // NCP
];

/// A counting semaphore: at most N holders at once, the others wait. Bounds work that
/// holds memory (packs being uploaded, large files being read) below the calls in
/// flight.
#[derive(Default)]
pub struct Slots {
    taken: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

/// One slot of [`Slots`], given back when dropped.
pub struct Slot<'a>(&'a Slots);

impl Slots {
    /// Waits until fewer than `max` slots are taken, then takes one.
    pub fn take(&self, max: usize) -> Slot<'_> {
        let mut n = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= max.max(1) {
            n = self.freed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut n = self.0.taken.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        drop(n);
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_jobs_win_and_local_paths_get_the_local_default() {
        let dir = std::env::temp_dir();
        assert_eq!(resolve(7, &[&dir]), 7);
        // The test machine's temp dir is a local file system (ext4 or tmpfs).
        assert!(!is_remote(&dir), "{} judged remote", dir.display());
        assert_eq!(resolve(0, &[&dir]), local_jobs());
        // A path that does not exist yet is judged by its nearest existing ancestor.
        let missing = dir.join("snapring-no-such-dir/deeper");
        assert_eq!(resolve(0, &[&missing]), local_jobs());
        assert!((4..=LOCAL_MAX_JOBS).contains(&local_jobs()));
    }

    #[test]
    fn slots_never_let_more_than_max_holders_in() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let slots = Slots::default();
        let (now, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..20 {
                        let _slot = slots.take(3);
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }
}
