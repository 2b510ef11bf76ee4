//! A backup user other than root: snapring run with a uid and gid of its own (the
//! test suite runs as root and drops to them in the child), over sources holding
//! entries of other owners, and snapshots holding entries it may not read.

mod common;
use common::*;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The backup user: no entry in /etc/passwd is needed for a uid.
const USER: u32 = 4242;

/// A scratch directory the backup user may enter, with a copy of the binary in it
/// (the target directory need not be theirs to search).
struct Setup {
    _t: tempfile::TempDir,
    root: PathBuf,
    bin: PathBuf,
}

fn setup() -> Setup {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    chmod(&root, 0o755);
    let bin = root.join("snapring");
    std::fs::copy(common::bin(), &bin).unwrap();
    chmod(&bin, 0o755);
    let home = root.join("home");
    std::fs::create_dir(&home).unwrap();
    chown(&home, USER, USER);
    Setup { _t: t, root, bin }
}

impl Setup {
    /// A directory made by root and given to the backup user.
    fn user_dir(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        std::fs::create_dir(&p).unwrap();
        chown(&p, USER, USER);
        p
    }

    /// `snapring ARGS` as the backup user (no supplementary groups, no capabilities).
    fn run(&self, args: &[&std::ffi::OsStr]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env_clear()
            .env("HOME", self.root.join("home"))
            .env("SNAPRING_CATALOG", "off")
            .uid(USER)
            .gid(USER)
            .output()
            .unwrap()
    }

    fn backup(&self, src: &Path, dest: &Path) -> (Option<i32>, serde_json::Value, String) {
        let out = self.run(&[
            "backup".as_ref(),
            "--json".as_ref(),
            "--retain".as_ref(),
            "2".as_ref(),
            "--source".as_ref(),
            src.as_os_str(),
            "--dest".as_ref(),
            dest.as_os_str(),
        ]);
        (
            out.status.code(),
            serde_json::from_slice(&out.stdout).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn verify(&self, dest: &Path) -> (Option<i32>, String) {
        let out = self.run(&["verify".as_ref(), "--dest".as_ref(), dest.as_os_str()]);
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

/// (path, kind, action) of each problem of a JSON report.
fn problems(rep: &serde_json::Value) -> Vec<(String, String, String)> {
    rep["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                    (s("path"), s("kind"), s("action"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn mode_mtime(p: &Path) -> (u32, i64) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.mode() & 0o7777, m.mtime())
}

const Y2020: i64 = 1_577_836_800;

/// An owner the backup user may not give (root's) is reported, and only that: the
/// copy keeps the source's mode and times, a directory's too, in the snapshot and in
/// a restore by the same user (as `rsync -a` run by a user does). The owner's error
/// stopped `fchmod` and `futimens` from running: the snapshot's file had the copy's
/// mtime, its directory mode 0700 and the time of the backup.
#[test]
fn an_owner_not_settable_keeps_mode_and_times() {
    let s = setup();
    let src = s.user_dir("src");
    let dest = s.user_dir("dest");
    write(&src.join("r604"), b"hi\n");
    chmod(&src.join("r604"), 0o604);
    set_mtime(&src.join("r604"), Y2020, 0);
    std::fs::create_dir(src.join("rdir")).unwrap();
    write(&src.join("rdir/q"), b"q\n");
    chown(&src.join("rdir/q"), USER, USER);
    chmod(&src.join("rdir"), 0o755);
    set_mtime(&src.join("rdir"), Y2020, 0);

    let (code, rep, err) = s.backup(&src, &dest);
    assert_eq!(code, Some(2), "{rep}\n{err}");
    let snap = dest.join("daily.0");
    assert_eq!(mode_mtime(&snap.join("r604")), (0o604, Y2020));
    assert_eq!(mode_mtime(&snap.join("rdir")), (0o755, Y2020));
    let mut ps = problems(&rep);
    ps.sort();
    let owner = |p: &str| {
        (
            p.to_string(),
            "metadata".to_string(),
            "set owner".to_string(),
        )
    };
    assert_eq!(ps, [owner("r604"), owner("rdir")], "{rep}");
    let text = rep["problems"][0]["error"].as_str().unwrap();
    assert!(
        text.contains("cannot set owner 0:0") && text.contains("not root"),
        "{text}"
    );

    // A restore by the same user of a snapshot that holds root's owner (made by root,
    // the store then given to the user but for those two): the same, for the same
    // reason.
    let rdest = s.root.join("rdest");
    std::fs::create_dir(&rdest).unwrap();
    let (code, rep, err) = backup(&src, &rdest, &[], &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    let st = Command::new("chown")
        .args(["-R", &format!("{USER}:{USER}")])
        .arg(&rdest)
        .status()
        .unwrap();
    assert!(st.success());
    // The restore reads owners from the snapshot's tree: root's, as root made them.
    let rsnap = rdest.join("daily.0");
    chown(&rsnap.join("r604"), 0, 0);
    chown(&rsnap.join("rdir"), 0, 0);
    set_mtime(&rsnap.join("rdir"), Y2020, 0);
    let to = s.user_dir("to");
    let out = s.run(&[
        "restore".as_ref(),
        "--dest".as_ref(),
        rdest.as_os_str(),
        "daily.0".as_ref(),
        "--to".as_ref(),
        to.join("r").as_os_str(),
    ]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert_eq!(mode_mtime(&to.join("r/r604")), (0o604, Y2020), "{log}");
    assert_eq!(mode_mtime(&to.join("r/rdir")), (0o755, Y2020), "{log}");
    // Each problem is logged once (and listed once in the summary).
    assert_eq!(log.matches("WARN Metadata path=r604").count(), 1, "{log}");
}

/// While the snapshot cannot hold a file's owner, every run says so alike: the
/// manifest records the owner the copy holds (`verify` finds it as recorded), and the
/// next backup, seeing the source's owner differ from it, copies it again and
/// reports it again. The manifest recorded the source's owner: runs after the first
/// linked the file and reported `complete`, while `verify` called the snapshot
/// damaged (and the backup after it `partial` again).
#[test]
fn an_owner_not_settable_gives_the_same_outcome_every_run() {
    let s = setup();
    let src = s.user_dir("src");
    let dest = s.user_dir("dest");
    write(&src.join("rootowned"), b"root\n");
    write(&src.join("mine"), b"mine\n");
    chown(&src.join("mine"), USER, USER);
    for run in 1..=4 {
        let (code, rep, err) = s.backup(&src, &dest);
        assert_eq!(code, Some(2), "run {run}: {rep}\n{err}");
        assert_eq!(rep["status"], "partial", "run {run}: {rep}");
        let (code, out) = s.verify(&dest);
        assert_eq!(code, Some(0), "run {run}: {out}");
        assert_eq!(
            problems(&rep),
            [(
                "rootowned".to_string(),
                "metadata".to_string(),
                "set owner".to_string()
            )],
            "run {run}: {rep}"
        );
    }
    // The file holds what the manifest says: the backup user's.
    let m = std::fs::metadata(dest.join("daily.0/rootowned")).unwrap();
    assert_eq!((m.uid(), m.gid()), (USER, USER));
}

/// A directory of another owner (root's) in the user's source: as for a file, the
/// manifest records the owner the snapshot's directory holds (the backup user's: it
/// cannot be given away), so `verify` finds it as recorded and every run reports the
/// owner alike (`set owner`). The entry is written in its parent's block before the
/// directory is made: it recorded root's owner, and `verify` called every snapshot
/// DAMAGED (`owner 0:0 -> 4242:4242`).
#[test]
fn a_directory_owner_not_settable_is_recorded_as_held_not_damage() {
    let s = setup();
    let src = s.user_dir("src");
    let dest = s.user_dir("dest");
    std::fs::create_dir(src.join("rootdir")).unwrap();
    chmod(&src.join("rootdir"), 0o755);
    write(&src.join("rootdir/mine"), b"mine\n");
    chown(&src.join("rootdir/mine"), USER, USER);
    for run in 1..=3 {
        let (code, rep, err) = s.backup(&src, &dest);
        assert_eq!(code, Some(2), "run {run}: {rep}\n{err}");
        assert_eq!(
            problems(&rep),
            [(
                "rootdir".to_string(),
                "metadata".to_string(),
                "set owner".to_string()
            )],
            "run {run}: {rep}"
        );
        let (code, out) = s.verify(&dest);
        assert_eq!(code, Some(0), "run {run}: {out}");
        assert!(!out.contains("DAMAGED"), "run {run}: {out}");
    }
    let m = std::fs::metadata(dest.join("daily.0/rootdir")).unwrap();
    assert_eq!((m.uid(), m.gid()), (USER, USER));
}

/// An entry of a snapshot its user may not read (a directory of mode 0111, theirs)
/// is not checked, and that is not damage: `verify` says so, records nothing for the
/// next backup to copy, and is not `clean` (not all of it was checked). It said
/// `DAMAGED` and recorded it as a damaged entry.
#[test]
fn verify_of_an_entry_the_user_may_not_read_is_not_damage() {
    let s = setup();
    let src = s.user_dir("src");
    let dest = s.user_dir("dest");
    std::fs::create_dir(src.join("xonly")).unwrap();
    write(&src.join("f"), b"f\n");
    for p in ["xonly", "f"] {
        chown(&src.join(p), USER, USER);
    }
    chmod(&src.join("xonly"), 0o111);
    let (code, rep, err) = s.backup(&src, &dest);
    assert_eq!(code, Some(2), "{rep}\n{err}");
    let (code, out) = s.verify(&dest);
    assert_eq!(code, Some(2), "{out}");
    assert!(!out.contains("DAMAGED"), "{out}");
    assert!(out.contains("? xonly  not checked: "), "{out}");
    assert!(out.contains("NOT FULLY CHECKED"), "{out}");
    let manifests = dest.join(".snapring/manifests");
    let damaged: Vec<_> = std::fs::read_dir(&manifests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "damaged"))
        .filter(|p| std::fs::read_to_string(p).unwrap().contains("xonly"))
        .collect();
    assert!(damaged.is_empty(), "{damaged:?}\n{out}");
}

/// A restore from a restic repository by a user whose umask takes away the owner's
/// write permission (0277, 0222): the files are written and get their recorded mode.
/// The walk created each file 0400 and closed it, and the fill could not open it again
/// (EACCES): exit 1, every file left empty.
#[test]
fn a_repository_restore_under_a_umask_without_owner_write_writes_the_files() {
    use common::restic::{PASSWORD, repo_of};
    let s = setup();
    let src = s.root.join("src");
    for i in 0..20 {
        write(
            &src.join(format!("f{i:02}")),
            format!("file {i}\n").as_bytes(),
        );
        chmod(&src.join(format!("f{i:02}")), 0o640);
    }
    let repo = s.root.join("repo");
    let url = repo_of(&repo, &src);
    let st = Command::new("chown")
        .args(["-R", &format!("{USER}:{USER}")])
        .arg(&repo)
        .status()
        .unwrap();
    assert!(st.success());
    for umask in [0o277, 0o222] {
        let to = s.user_dir(&format!("to-{umask:o}"));
        let out = under_umask(umask, &s.bin)
            .args(["restore", "--json", "--dest", &url, "latest", "--to"])
            .arg(&to)
            .env_clear()
            .env("HOME", s.root.join("home"))
            .env("SNAPRING_CATALOG", "off")
            .env("SNAPRING_PASSWORD", PASSWORD)
            .uid(USER)
            .gid(USER)
            .output()
            .unwrap();
        let said = format!(
            "umask {umask:o}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{said}");
        for i in 0..20 {
            let p = to.join(format!("f{i:02}"));
            assert_eq!(
                std::fs::read(&p).unwrap(),
                format!("file {i}\n").as_bytes(),
                "{said}"
            );
            assert_eq!(mode_mtime(&p).0, 0o640, "{said}");
        }
    }
}

/// `bin` run under umask `umask` (a shell sets it and execs it): the flags follow.
fn under_umask(umask: u32, bin: &Path) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!("umask {umask:o} && exec \"$0\" \"$@\""))
        .arg(bin);
    c
}
