//! Limits: a directory with 100,000 subdirectories is backed up, expired (the trash
//! emptied) and measured by `list --space` with only 256 descriptors (`ulimit -n 256`):
//! every walk holds descriptors for the directories in flight, not for those queued.

mod common;
use common::*;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const NOFILE: u32 = 256;

/// A tmpfs mounted over a directory, unmounted when dropped (also when a test fails).
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(at: &'a Path) -> Tmpfs<'a> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs on {}", at.display());
        Tmpfs(at)
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0).status();
    }
}

fn run(args: &[&OsStr]) -> (i32, serde_json::Value, String) {
    let out = snapring_nofile(NOFILE, args);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `list --space`'s definition, computed independently: allocated bytes of every entry
/// under `root` that is a directory or whose every link is inside `root`.
fn unique_bytes(root: &Path) -> u64 {
    let (mut total, mut links) = (0, HashMap::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let bytes = m.blocks() * 512;
            if m.is_dir() {
                total += bytes;
                stack.push(p);
            } else if m.nlink() == 1 {
                total += bytes;
            } else {
                links.entry(m.ino()).or_insert((0, m.nlink(), bytes)).0 += 1;
            }
        }
    }
    total
        + links
            .values()
            .filter(|(seen, nlink, _)| seen == nlink)
            .map(|(_, _, b)| b)
            .sum::<u64>()
}

#[test]
fn a_directory_of_100k_subdirectories_under_ulimit_n_256() {
    // On a tmpfs of its own: making and deleting 100,000 directories on a loaded disk
    // takes minutes.
    let t = tempfile::tempdir().unwrap();
    let _mount = Tmpfs::mount(t.path());
    let (src, dest) = (t.path().join("src"), t.path().join("b"));
    let wide = src.join("wide");
    std::fs::create_dir_all(&wide).unwrap();
    for i in 0..100_000 {
        let d = wide.join(format!("d{i}"));
        std::fs::create_dir(&d).unwrap();
        // Every 100th holds a file, so a subdirectory left unwalked changes the sum.
        if i % 100 == 0 {
            std::fs::write(d.join("f"), [b'x'; 5000]).unwrap();
        }
    }
    std::fs::hard_link(wide.join("d0/f"), wide.join("d0/g")).unwrap();

    let backup = |retain: &str| {
        run(&[
            "backup".as_ref(),
            "--json".as_ref(),
            "--source".as_ref(),
            src.as_os_str(),
            "--dest".as_ref(),
            dest.as_os_str(),
            "--retain".as_ref(),
            retain.as_ref(),
        ])
    };
    let (code, rep, err) = backup("1");
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["status"], "complete", "{rep}");
    // The second run expires the first snapshot and empties the trash.
    std::fs::write(src.join("second"), b"2").unwrap();
    let (code, rep, err) = backup("1");
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["status"], "complete", "{rep}");
    assert_eq!(rep["expired"].as_array().unwrap().len(), 1, "{rep}");
    assert_eq!(snapshot_names(&dest), ["daily.0"]);
    let trash = dest.join(".snapring/trash");
    assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0, "{err}");

    let expected = unique_bytes(&dest.join("daily.0"));
    for jobs in ["1", "8"] {
        let (code, l, err) = run(&[
            "list".as_ref(),
            "--json".as_ref(),
            "--space".as_ref(),
            "--jobs".as_ref(),
            jobs.as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
        ]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(l[0]["unique_bytes"], expected, "--jobs {jobs}: {l}");
    }
}
