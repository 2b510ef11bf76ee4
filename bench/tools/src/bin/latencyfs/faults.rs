//! Fault injection for latencyfs, configured by flags (see docs/testing.md):
//!
//! - `--eio-read PATTERN`: reads of matching files fail with EIO.
//! - `--eio-after N` / `--enospc-after N`: writes fail with EIO / ENOSPC once N bytes
//!   have been written through the mount (in total, or per file with `--per-file`).
//!   Once an ENOSPC budget is used up, creating files, directories, symlinks, device
//!   nodes and links fails with ENOSPC too, as on a full disk.
//! - `--link-limit N`: `link` fails with EMLINK when the inode already has N links.
//! - `--no-user-xattrs`: setting a `user.*` extended attribute fails with EOPNOTSUPP,
//!   as on a file system (or an NFS export) without them.
//! - `--no-xattrs PREFIX`: setting an extended attribute whose name starts with PREFIX
//!   (`trusted.`, `security.`) fails with EOPNOTSUPP, as `security.selinux` onto NFS.
//! - `--no-special-xattrs PREFIX`: the same, only on entries that are neither regular
//!   files nor directories (fifos, sockets, devices), as on a file system whose
//!   special files' inodes have no ACL operations.
//! - `--no-chown`: changing an owner or group to another than the file has fails with
//!   EPERM, whoever asks, as on an NFS export with `root_squash` (knfsd's default).
//! - `--time-granularity-ns N` (`--whole-second-times`: N = 10^9): file times are kept
//!   to N ns only, as on an NFS server or file system with coarse timestamps (FAT,
//!   ext3's small inodes): a time set (`utimensat`) is stored truncated, and every time
//!   given back (`stat`, a created file's) is truncated.
//! - `--eacces PATTERN`: opening matching files or directories fails with EACCES.
//! - `--eio-stat PATTERN`: looking up or `stat`ing matching paths fails with EIO (as
//!   an NFS server's GETATTR can); the name is still listed.
//! - `--eio-list PATTERN[:N]`: listing matching directories fails with EIO after N
//!   entries (default 0), as a listing whose server fails halfway.
//! - `--dup-list PATTERN`: listings of matching directories give every name twice (an
//!   NFS server's readdir cookies gone wrong).
//! - `--stall PATTERN`, `--stall-secs N` (30), `--stall-ops LIST` (`read`): calls of the
//!   listed kinds (`lookup`, `getattr`, `open`, `read`, `write`, `readdir`) on matching
//!   paths sleep N seconds before they are answered.
//!
//! A PATTERN without `/` is a glob (`*`, `?`) on the file name; one with `/` is a
//! substring of the path from the mount's root, which starts with `/` (`/dir/file`).
//! Every pattern flag can be repeated.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use fuser::Errno;

/// Which calls a stall applies to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    Lookup,
    Getattr,
    Open,
    Read,
    Write,
    Readdir,
}

impl Op {
    fn parse(s: &str) -> Result<Op, String> {
        Ok(match s {
            "lookup" => Op::Lookup,
            "getattr" => Op::Getattr,
            "open" => Op::Open,
            "read" => Op::Read,
            "write" => Op::Write,
            "readdir" => Op::Readdir,
            _ => return Err(format!("unknown call {s:?} in --stall-ops")),
        })
    }
}

#[derive(Default)]
pub struct Faults {
    eio_read: Vec<String>,
    eacces: Vec<String>,
    eio_stat: Vec<String>,
    /// Directory pattern and the entries listed before EIO.
    eio_list: Vec<(String, usize)>,
    dup_list: Vec<String>,
    no_user_xattrs: bool,
    /// `--no-xattrs`: name prefixes whose attributes are refused (EOPNOTSUPP).
    no_xattrs: Vec<String>,
    /// `--no-special-xattrs`: the same, on special files only.
    no_special_xattrs: Vec<String>,
    no_chown: bool,
    /// `--time-granularity-ns`: times are kept to this many ns (0: exactly).
    time_granularity: u64,
    stall: Vec<String>,
    stall_ops: Vec<Op>,
    stall_for: Duration,
    /// Write budget in bytes and the errno once it is used up.
    write_limit: Option<(u64, Errno)>,
    per_file: bool,
    link_limit: Option<u64>,
    /// Bytes written: in total (key 0) or per FUSE inode.
    written: Mutex<HashMap<u64, u64>>,
}

/// `*` and `?` over bytes.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

fn matches(patterns: &[String], rel: &Path) -> bool {
    if patterns.is_empty() {
        return false;
    }
    let name = rel.file_name().map(OsStr::as_bytes).unwrap_or(b"");
    let mut full = b"/".to_vec();
    full.extend_from_slice(rel.as_os_str().as_bytes());
    patterns.iter().any(|p| {
        let p = p.as_bytes();
        if p.contains(&b'/') {
            full.windows(p.len()).any(|w| w == p)
        } else {
            glob(p, name)
        }
    })
}

impl Faults {
    /// Takes the fault flags out of `args`, leaving the others.
    pub fn from_args(args: &mut Vec<String>) -> Result<Faults, String> {
        let mut f = Faults {
            stall_ops: vec![Op::Read],
            stall_for: Duration::from_secs(30),
            ..Faults::default()
        };
        let mut rest = Vec::new();
        let mut it = std::mem::take(args).into_iter();
        while let Some(a) = it.next() {
            let known = [
                "--eio-read",
                "--eacces",
                "--stall",
                "--stall-ops",
                "--stall-secs",
                "--eio-after",
                "--enospc-after",
                "--link-limit",
                "--eio-stat",
                "--eio-list",
                "--dup-list",
                "--time-granularity-ns",
                "--no-xattrs",
                "--no-special-xattrs",
            ];
            if a == "--per-file" {
                f.per_file = true;
                continue;
            }
            if a == "--no-chown" {
                f.no_chown = true;
                continue;
            }
            if a == "--whole-second-times" {
                f.time_granularity = 1_000_000_000;
                continue;
            }
            if a == "--no-user-xattrs" {
                f.no_user_xattrs = true;
                continue;
            }
            if !known.contains(&a.as_str()) {
                rest.push(a);
                continue;
            }
            let v = it.next().ok_or(format!("{a} needs a value"))?;
            let num = |v: &str| v.parse::<u64>().map_err(|_| format!("{a}: not a number"));
            match a.as_str() {
                "--eio-read" => f.eio_read.push(v),
                "--eacces" => f.eacces.push(v),
                "--stall" => f.stall.push(v),
                "--stall-ops" => {
                    f.stall_ops = v.split(',').map(Op::parse).collect::<Result<_, _>>()?
                }
                "--stall-secs" => f.stall_for = Duration::from_secs(num(&v)?),
                "--eio-after" => f.write_limit = Some((num(&v)?, Errno::EIO)),
                "--enospc-after" => f.write_limit = Some((num(&v)?, Errno::ENOSPC)),
                "--link-limit" => f.link_limit = Some(num(&v)?),
                "--eio-stat" => f.eio_stat.push(v),
                "--dup-list" => f.dup_list.push(v),
                "--time-granularity-ns" => f.time_granularity = num(&v)?,
                "--no-xattrs" => f.no_xattrs.push(v),
                "--no-special-xattrs" => f.no_special_xattrs.push(v),
                "--eio-list" => {
                    let (p, n) = match v.rsplit_once(':') {
                        Some((p, n)) => (p.to_string(), num(n)? as usize),
                        None => (v, 0),
                    };
                    f.eio_list.push((p, n));
                }
                _ => unreachable!(),
            }
        }
        *args = rest;
        Ok(f)
    }

    /// Can calls of kind `op` stall at all?
    pub fn stalls(&self, op: Op) -> bool {
        !self.stall.is_empty() && self.stall_ops.contains(&op)
    }

    /// Sleeps if `op` on `rel` is to stall.
    pub fn stall(&self, op: Op, rel: &Path) {
        if self.stall_ops.contains(&op) && matches(&self.stall, rel) {
            eprintln!(
                "latencyfs: stalling {op:?} of {} for {:?}",
                rel.display(),
                self.stall_for
            );
            std::thread::sleep(self.stall_for);
        }
    }

    /// EIO for a read of `rel`?
    pub fn read(&self, rel: &Path) -> Result<(), Errno> {
        if matches(&self.eio_read, rel) {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// EIO for looking up or `stat`ing `rel`?
    pub fn stat(&self, rel: &Path) -> Result<(), Errno> {
        if matches(&self.eio_stat, rel) {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// The listing of directory `rel`, as the faults make it: every name twice
    /// (`--dup-list`), and how many entries are given before EIO (`--eio-list`).
    pub fn listing<T: Clone>(&self, rel: &Path, entries: Vec<T>) -> (Vec<T>, Option<usize>) {
        let entries = if matches(&self.dup_list, rel) {
            entries.into_iter().flat_map(|e| [e.clone(), e]).collect()
        } else {
            entries
        };
        let fail = self
            .eio_list
            .iter()
            .find(|(p, _)| matches(std::slice::from_ref(p), rel))
            .map(|(_, n)| *n);
        (entries, fail)
    }

    /// EOPNOTSUPP for setting extended attribute `name` (on a `special` file: neither
    /// regular nor a directory)?
    pub fn setxattr(&self, name: &OsStr, special: bool) -> Result<(), Errno> {
        if special
            && self
                .no_special_xattrs
                .iter()
                .any(|p| name.as_bytes().starts_with(p.as_bytes()))
        {
            return Err(Errno::EOPNOTSUPP);
        }
        if self.no_user_xattrs && name.as_bytes().starts_with(b"user.") {
            return Err(Errno::EOPNOTSUPP);
        }
        if self
            .no_xattrs
            .iter()
            .any(|p| name.as_bytes().starts_with(p.as_bytes()))
        {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(())
    }

    /// EPERM for giving a file of owner `has` the owner `want` (either part `None`:
    /// left as it is)?
    pub fn chown(&self, has: (u32, u32), want: (Option<u32>, Option<u32>)) -> Result<(), Errno> {
        let moves = want.0.is_some_and(|u| u != has.0) || want.1.is_some_and(|g| g != has.1);
        if self.no_chown && moves {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// A time (`sec`, `nsec`) as the store keeps it: truncated to the time granularity
    /// (`--time-granularity-ns`, `--whole-second-times`), towards the past.
    pub fn time(&self, sec: i64, nsec: i64) -> (i64, i64) {
        let g = self.time_granularity as i128;
        if g <= 1 {
            return (sec, nsec);
        }
        let t = sec as i128 * 1_000_000_000 + nsec as i128;
        let t = t.div_euclid(g) * g;
        (
            t.div_euclid(1_000_000_000) as i64,
            t.rem_euclid(1_000_000_000) as i64,
        )
    }

    /// EACCES for opening `rel`?
    pub fn open(&self, rel: &Path) -> Result<(), Errno> {
        if matches(&self.eacces, rel) {
            return Err(Errno::EACCES);
        }
        Ok(())
    }

    /// Counts a write of `len` bytes to inode `ino`; the error once the budget is gone.
    pub fn write(&self, ino: u64, len: usize) -> Result<(), Errno> {
        let Some((limit, err)) = self.write_limit else {
            return Ok(());
        };
        let mut w = self.written.lock().unwrap();
        let n = w.entry(if self.per_file { ino } else { 0 }).or_default();
        if *n + len as u64 > limit {
            return Err(err);
        }
        *n += len as u64;
        Ok(())
    }

    /// ENOSPC for creating an entry once a total ENOSPC budget is used up.
    pub fn create(&self) -> Result<(), Errno> {
        match self.write_limit {
            Some((limit, e)) if e == Errno::ENOSPC && !self.per_file => {
                let used = self.written.lock().unwrap().get(&0).copied().unwrap_or(0);
                if used >= limit {
                    return Err(Errno::ENOSPC);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// EMLINK for a new link to an inode that has `nlink` links already?
    pub fn link(&self, nlink: u64) -> Result<(), Errno> {
        match self.link_limit {
            Some(l) if nlink >= l => Err(Errno::EMLINK),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches(&p(&["f*"]), Path::new("d/f1")));
        assert!(matches(&p(&["f?"]), Path::new("f1")));
        assert!(!matches(&p(&["f?"]), Path::new("f10")));
        assert!(matches(&p(&["/d/f1"]), Path::new("d/f1")));
        assert!(matches(&p(&["d/"]), Path::new("x/d/f1")));
        assert!(!matches(&p(&["/d/f1"]), Path::new("xd/f1")));
        assert!(!matches(&[], Path::new("f")));
    }

    #[test]
    fn no_chown() {
        let mut args = vec!["--no-chown".to_string(), "x".to_string()];
        let f = Faults::from_args(&mut args).unwrap();
        assert_eq!(args, ["x"]);
        assert!(f.chown((0, 0), (Some(0), Some(0))).is_ok());
        assert!(f.chown((0, 0), (None, None)).is_ok());
        assert_eq!(f.chown((0, 0), (Some(1), None)), Err(Errno::EPERM));
        assert_eq!(f.chown((0, 0), (None, Some(1))), Err(Errno::EPERM));
        assert!(Faults::default().chown((0, 0), (Some(1), Some(1))).is_ok());
    }

    #[test]
    fn coarse_times() {
        let mut args = vec!["--whole-second-times".to_string(), "x".to_string()];
        let f = Faults::from_args(&mut args).unwrap();
        assert_eq!(args, ["x"]);
        assert_eq!(f.time(7, 286_786_234), (7, 0));
        assert_eq!(f.time(-3, 5), (-3, 0));
        let mut args = vec![
            "--time-granularity-ns".to_string(),
            "2000000000".to_string(),
        ];
        let f = Faults::from_args(&mut args).unwrap();
        assert_eq!(f.time(7, 999_999_999), (6, 0));
        let mut args = vec!["--time-granularity-ns".to_string(), "100".to_string()];
        let f = Faults::from_args(&mut args).unwrap();
        assert_eq!(f.time(7, 999_999_999), (7, 999_999_900));
        assert_eq!(Faults::default().time(7, 5), (7, 5));
    }

    #[test]
    fn listing_faults() {
        let mut args: Vec<String> = [
            "--dup-list",
            "/d",
            "--eio-list",
            "/e:3",
            "--eio-stat",
            "x*",
            "src",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let f = Faults::from_args(&mut args).unwrap();
        assert_eq!(args, ["src"]);
        assert_eq!(
            f.listing(Path::new("d"), vec![1, 2]),
            (vec![1, 1, 2, 2], None)
        );
        assert_eq!(f.listing(Path::new("e"), vec![1, 2]), (vec![1, 2], Some(3)));
        assert_eq!(f.listing(Path::new("f"), vec![1]), (vec![1], None));
        assert_eq!(f.stat(Path::new("d/x1")), Err(Errno::EIO));
        assert_eq!(f.stat(Path::new("d/y1")), Ok(()));
    }
}
