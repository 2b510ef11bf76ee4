//! The complete state of a tree for "nothing was written" checks (every byte and
//! metadata field, ctime included), and a read-only bind mount for read commands.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::xattrs_of;

/// Everything about one entry of the store that a write could change (atime aside).
#[derive(Debug, PartialEq, Eq)]
pub struct Full {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    pub nlink: u64,
    pub size: u64,
    pub content: Option<String>,
    pub target: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Every entry under `root` (root itself as ""), `.snapring/` included.
pub fn full_state(root: &Path) -> BTreeMap<Vec<u8>, Full> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::<u8>::new())];
    while let Some((p, rel)) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(e.file_name().as_bytes());
                stack.push((e.path(), r));
            }
        }
        out.insert(
            rel,
            Full {
                kind: if ft.is_dir() {
                    "dir"
                } else if ft.is_symlink() {
                    "symlink"
                } else if ft.is_file() {
                    "file"
                } else {
                    "special"
                },
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
                ino: m.ino(),
                nlink: m.nlink(),
                size: m.len(),
                content: ft.is_file().then(|| {
                    blake3::hash(&std::fs::read(&p).unwrap())
                        .to_hex()
                        .to_string()
                }),
                target: ft.is_symlink().then(|| {
                    std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                }),
                xattrs: xattrs_of(&p),
            },
        );
    }
    out
}

pub fn assert_unchanged(
    before: &BTreeMap<Vec<u8>, Full>,
    after: &BTreeMap<Vec<u8>, Full>,
    what: &str,
) {
    let diffs = super::tree_diffs(before, after, ["removed", "changed", "added"]);
    assert!(
        diffs.is_empty(),
        "{what}: the store changed:\n{}",
        diffs.join("\n")
    );
}

/// Bind-mounts `from` read-only at `to`; unmounts when dropped.
pub struct RoMount(PathBuf);

impl RoMount {
    pub fn new(from: &Path, to: &Path) -> Result<RoMount, String> {
        std::fs::create_dir_all(to).unwrap();
        let run = |args: &[&OsStr]| -> Result<(), String> {
            let out = Command::new("mount")
                .args(args)
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        };
        run(&["--bind".as_ref(), from.as_os_str(), to.as_os_str()])?;
        let m = RoMount(to.to_path_buf());
        run(&["-o".as_ref(), "remount,bind,ro".as_ref(), to.as_os_str()])?;
        Ok(m)
    }
}

impl Drop for RoMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

pub fn ro_mount_or_skip(from: &Path, to: &Path) -> Option<RoMount> {
    match RoMount::new(from, to) {
        Ok(m) => {
            let probe = to.join("probe");
            assert!(
                std::fs::write(&probe, b"x").is_err(),
                "the mount is not read-only"
            );
            Some(m)
        }
        Err(e) => {
            println!("skipped: cannot bind-mount read-only here ({})", e.trim());
            None
        }
    }
}
