//! Small helpers every layer may use: time stamps, the host name, the process's peak
//! memory, crash-safe file writes, duration parsing and a parallel map. Depends on no other module of
//! the crate, so anything can use it without making an import cycle.

use std::path::Path;
use std::time::Duration;

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The user running this process, as a lock and a snapshot record it: `$USER`, else
/// (cron, systemd, a container: no `USER`) the name `/etc/passwd` gives the real uid;
/// empty if neither says. Restic (Debian's 0.14, checked) asks only the passwd
/// database: for a uid without an entry it writes `"username": ""` too (and no
/// `uid`/`gid`), so an empty name is what restic and rustic read from their own locks.
pub fn username() -> String {
    let passwd = || std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    username_of(
        std::env::var("USER").ok(),
        rustix::process::getuid().as_raw(),
        passwd,
    )
}

/// [`username`] from `$USER` (`user`), the uid and the contents of `/etc/passwd`
/// (read only when `user` is unset or empty).
fn username_of(user: Option<String>, uid: u32, passwd: impl FnOnce() -> String) -> String {
    if let Some(u) = user.filter(|u| !u.is_empty()) {
        return u;
    }
    passwd_entries(&passwd())
        .find_map(|f| (f.get(2)?.parse::<u32>().ok()? == uid).then(|| f[0].to_string()))
        .unwrap_or_default()
}

/// The home directory `/etc/passwd` gives `user` (as the shell expands `~user`).
pub fn home_of(user: &str) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd_entries(&text)
        .find(|f| f.len() > 5 && f[0] == user)
        .map(|f| f[5].to_string())
}

/// The entries of `/etc/passwd`'s text, each as its `:`-separated fields.
fn passwd_entries(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines().map(|l| l.split(':').collect())
}

/// Whether a process recorded as on `host`, in pid namespace `pid_ns` and boot
/// `boot` (each empty if not recorded: files written before them) has its pid in this
/// process's pid space.
pub fn same_pids(host: &str, pid_ns: &str, boot: &str) -> bool {
    let same = |theirs: &str, ours: &str| theirs.is_empty() || theirs == ours;
    host == hostname() && same(pid_ns, pid_namespace()) && same(boot, boot_id())
}

/// This process's pid namespace: the inode number of `/proc/self/ns/pid` (empty if it
/// cannot be read).
pub fn pid_namespace() -> &'static str {
    use std::os::unix::fs::MetadataExt;
    static NS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NS.get_or_init(|| {
        std::fs::metadata("/proc/self/ns/pid")
            .map(|m| m.ino().to_string())
            .unwrap_or_default()
    })
}

/// This boot of the kernel: `/proc/sys/kernel/random/boot_id` (empty if it cannot be
/// read). A host name seen again after a reboot, or on another machine, has other pids,
/// and a page cache that lost what was not flushed.
///
/// Test hook: `SNAPRING_TEST_BOOT_ID`, when set and not empty, is taken instead (read
/// once, like `SNAPRING_FAILPOINTS`), so a test can play a run after a restart. Every
/// user of the boot (run and shard locks, the staging tree's record) sees the same
/// value, so a process's own locks stay its own; the pid of a lock or holder written
/// under another value is not judged here (as of another boot: not taken for dead by
/// its pid), as `same_pids` does for a real restart.
pub fn boot_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        if let Some(id) = std::env::var("SNAPRING_TEST_BOOT_ID")
            .ok()
            .filter(|s| !s.is_empty())
        {
            return id;
        }
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<u64>().ok())
            })
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Creates (or truncates) `path` for writing, readable and writable by its owner only
/// (0600). The store's bookkeeping and the catalog name the files inside directories
/// other users may not read (names, sizes, owners, hashes), so they are private.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    create_with_mode(path, 0o600)
}

/// Creates (or truncates) `path` for writing with `mode` (less the umask).
fn create_with_mode(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
}

/// Creates the directory `path` (and, with `recursive`, its missing parents) for its
/// owner only (0700); see `create_private`.
pub fn create_private_dir(path: &Path, recursive: bool) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(recursive)
        .mode(0o700)
        .create(path)
}

/// Writes `bytes` to `path` crash-safely: temp file, fsync, rename, fsync of the directory.
/// A temp file that could not be written in full is removed (a full disk keeps none).
/// The file is private (0600, `create_private`): every caller writes bookkeeping.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

/// [`write_atomic`] with the file's `mode` (less the umask).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = create_with_mode(&tmp, mode)?;
    if mode != 0o600 {
        // The mode asked for whatever the umask (`UMask=0077` in a unit): a
        // group-readable repository's files must stay readable by the group.
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = f.set_permissions(std::fs::Permissions::from_mode(mode)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    if let Err(e) = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = path.parent() {
        crate::fsx::sync_dir(dir)?;
    }
    Ok(())
}

/// The pid a [`write_atomic`] temp file's name ends with (`<stem>.tmp<pid>`), if it is
/// one.
fn atomic_tmp_pid(name: &[u8]) -> Option<u32> {
    let at = name.windows(4).rposition(|w| w == b".tmp")?;
    let digits = &name[at + 4..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A [`write_atomic`] temp file whose writer is not alive on this host is removed once
/// it was last written this long ago: its writer may be another host's, whose pid means
/// nothing here, and a write takes well under this from its last byte to its rename.
pub const ATOMIC_TMP_DEAD_AFTER: Duration = Duration::from_secs(10 * 60);
/// Any [`write_atomic`] temp file last written this long ago is removed (its pid may
/// have been reused).
pub const ATOMIC_TMP_STALE_AFTER: Duration = Duration::from_secs(3600);

/// Removes the temp files that [`write_atomic`]s killed mid-write (SIGKILL, a crash)
/// left in directory `dir` (not below it): those of a pid not alive on this host last
/// written [`ATOMIC_TMP_DEAD_AFTER`] ago, and any last written [`ATOMIC_TMP_STALE_AFTER`]
/// ago. A live writer's (this process's, or a recent one's) is left alone. How many
/// were removed; failures are only logged (bookkeeping left over, nothing lost).
pub fn sweep_atomic_tmps(dir: &Path) -> usize {
    sweep_tmps(dir, atomic_tmp_pid, false, "a write that did not complete")
}

/// [`sweep_atomic_tmps`]' rules for any temp file whose name tells its writer's pid
/// (`pid_of`; other names are left alone): the xattr probes a killed backup left in
/// `.snapring/staging/` (`store::tree_sink::sweep_xattr_probes`). A regular file only,
/// unless `special`: then a fifo or a socket too (an xattr probe for a fifo or a socket
/// is one), never a directory or a symlink. `left_by` says what left one, in the log.
pub fn sweep_tmps(
    dir: &Path,
    pid_of: impl Fn(&[u8]) -> Option<u32>,
    special: bool,
    left_by: &str,
) -> usize {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    let Ok(list) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for e in list.flatten() {
        let Some(pid) = pid_of(e.file_name().as_bytes()) else {
            continue;
        };
        let Ok(md) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let ft = md.file_type();
        if !(ft.is_file() || special && (ft.is_fifo() || ft.is_socket())) {
            continue;
        }
        let age = md
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        // Our own pid: ours only while young (in containers every process may be pid 1,
        // so an old file of "our" pid was left by another, killed, process).
        if pid == std::process::id() && age < ATOMIC_TMP_STALE_AFTER {
            continue;
        }
        let alive = || {
            rustix::process::Pid::from_raw(pid as i32).is_some_and(|p| {
                !matches!(
                    rustix::process::test_kill_process(p),
                    Err(rustix::io::Errno::SRCH)
                )
            })
        };
        if age < ATOMIC_TMP_DEAD_AFTER || (age < ATOMIC_TMP_STALE_AFTER && alive()) {
            continue;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => {
                tracing::info!(
                    "removed {}, left by {left_by} (pid {pid}, {}s ago)",
                    e.path().display(),
                    age.as_secs()
                );
                removed += 1;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(
                "cannot remove {}, left by {left_by}: {err}",
                e.path().display()
            ),
        }
    }
    removed
}

/// The longest duration [`parse_duration`] accepts: 100 years. Anything longer is a
/// typo, and would overflow the clock arithmetic it feeds (`Instant + timeout`, `now -
/// since`), which panics.
pub const MAX_DURATION_SECS: u64 = 100 * 365 * 86400;

/// Parses `180m`, `3h`, `45s`, `1h30m`, `2d` (at most [`MAX_DURATION_SECS`]).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let mut total = 0u64;
    let mut num = String::new();
    if s.trim().is_empty() {
        return Err("empty duration".into());
    }
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("bad duration {s:?}: use e.g. 180m, 3h, 1h30m"))?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("bad duration {s:?}: units are s, m, h, d")),
        };
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .filter(|t| *t <= MAX_DURATION_SECS)
            .ok_or_else(|| format!("duration {s:?} is longer than 100 years"))?;
    }
    if !num.is_empty() {
        return Err(format!(
            "bad duration {s:?}: a number needs a unit (s, m, h, d)"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// Creates `path` with `bytes` as its complete content, only if it does not exist:
/// written and flushed under a private name, then hard-linked to `path` (which fails if
/// it exists, atomically, on local file systems and NFS alike), and `path`'s directory
/// flushed (the new name survives a power cut). `false`: it existed.
/// A link refused as existing whose name is this call's own inode counts as made: on
/// NFS a `LINK` whose reply was lost is sent again, and a server whose duplicate-request
/// cache no longer holds it answers "exists" to the caller's own link.
pub fn create_exclusive(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    create_exclusive_via(path.parent().unwrap_or(Path::new(".")), path, bytes)
}

/// [`create_exclusive`] with the private name in directory `dir` (on the same file
/// system as `path`), not beside `path`: creating and removing a name takes its
/// directory's lock, one call at a time, so a directory that many processes link into
/// at once (a shard run's `done/`) gets one call of each create instead of three.
/// A private name left by a crash stays in `dir` (starting with `.`).
pub fn create_exclusive_via(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    // Private to this call: two threads of one process (a worker's two lanes) may race
    // for the same name.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        hostname()
    ));
    {
        use std::io::Write;
        let mut f = create_private(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    let mut r = std::fs::hard_link(&tmp, path);
    // Tests: the link landed, and its resent request was answered "exists".
    if r.is_ok() && crate::failpoint::hit("create_exclusive.link_resent").is_err() {
        r = Err(std::io::ErrorKind::AlreadyExists.into());
    }
    let made = match &r {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => same_inode(&tmp, path),
        Err(_) => false,
    };
    let _ = std::fs::remove_file(&tmp);
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        // The new name made durable before it is acted on: a power cut must not lose a
        // plan, a unit's commit or a run's finalized mark that others already read.
        // Made: a flush that fails is warned about, not an error (the caller would take
        // its own name, made, for another's on a retry).
        _ if made => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = dir.unwrap_or(Path::new("."));
            if let Err(e) = crate::fsx::sync_dir(dir) {
                tracing::warn!(
                    "cannot flush {} after making {}: {e}",
                    dir.display(),
                    path.display()
                );
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Creates `path` with one exclusive create (`O_EXCL`) and writes `bytes` into it,
/// without flushing them: one call on the directory where [`create_exclusive`] makes
/// three (create, link, unlink), for files contended by many processes at once (a shard
/// run's claims). `false`: it existed. Unlike [`create_exclusive`] a reader can find the
/// file empty or short while it is written, and a crash can leave it so: only for files
/// whose readers take content that does not read as "being written" (a claim: its
/// lease runs from its mtime whatever it holds). NFS makes an exclusive create sent
/// again after a lost reply succeed (the client's verifier), as a local create is.
pub fn create_new_then_write(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    if let Err(e) = f.write_all(bytes) {
        // Nobody else makes this name: what this call made, it may remove.
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(true)
}

/// Whether `a` and `b` are names of one inode (neither followed if a symlink).
fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// `f` of each of `items` on up to `threads` threads, the results in the items' order
/// (reads of many small files, each a few round trips on NFS or one request
/// to S3, at once instead of one after another: a shard finalize's commits, a
/// repository's index files). No I/O of its own.
pub fn par_map<T: Sync, R: Send>(
    threads: usize,
    items: &[T],
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(t) = items.get(i) else { break };
                    let r = f(t);
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every item is mapped")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_write_atomics_temp_names_carry_a_pid() {
        assert_eq!(atomic_tmp_pid(b"r1.tmp1234"), Some(1234));
        assert_eq!(atomic_tmp_pid(b"state.tmp7"), Some(7));
        for n in [
            &b"mf.tmp"[..],
            b"done.tmp",
            b"r1.json",
            b"a.tmp12x",
            b"tmp12",
        ] {
            assert_eq!(atomic_tmp_pid(n), None, "{}", String::from_utf8_lossy(n));
        }
    }

    /// A lock's and a snapshot's user name under cron or systemd (no `USER`): looked up
    /// from the uid, as restic does; it was empty.
    #[test]
    fn the_user_name_comes_from_the_uid_without_user() {
        let passwd = || {
            "root:x:0:0:root:/root:/bin/bash\n\
             # a comment\n\
             backup:x:34:34:backup:/var/backups:/usr/sbin/nologin\n\
             alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n"
                .to_string()
        };
        assert_eq!(username_of(None, 1000, passwd), "alice");
        assert_eq!(username_of(Some(String::new()), 34, passwd), "backup");
        assert_eq!(username_of(Some("bob".into()), 1000, passwd), "bob");
        assert_eq!(username_of(None, 4242, passwd), "");
        // This process's own: whatever the environment says, a name (the test runs
        // as a user /etc/passwd knows, or with USER set).
        if std::env::var("USER").is_err() {
            let uid = rustix::process::getuid().as_raw();
            let known = std::fs::read_to_string("/etc/passwd")
                .unwrap_or_default()
                .lines()
                .any(|l| l.split(':').nth(2) == Some(&uid.to_string()));
            assert_eq!(!username().is_empty(), known);
        }
    }

    #[test]
    fn par_map_keeps_the_order_of_the_items() {
        let items: Vec<u32> = (0..100).collect();
        assert_eq!(
            par_map(7, &items, |x| x * 2),
            items.iter().map(|x| x * 2).collect::<Vec<_>>()
        );
        assert!(par_map(4, &[] as &[u32], |x| *x).is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("180m").unwrap(), Duration::from_secs(10800));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("3x").is_err());
    }
}
