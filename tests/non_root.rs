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
    // A hard link where it can be (the same file system): a copy is written through a
    // descriptor that a process another test forks meanwhile holds until its exec, and
    // running the copy then fails with ETXTBSY ("Text file busy").
    if std::fs::hard_link(common::bin(), &bin).is_err() {
        std::fs::copy(common::bin(), &bin).unwrap();
        chmod(&bin, 0o755);
    }
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
    fn command(&self, args: &[&std::ffi::OsStr]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env_clear()
            .env("HOME", self.root.join("home"))
            .env("SNAPRING_CATALOG", "off")
            .uid(USER)
            .gid(USER);
        c
    }

    /// [`Setup::command`], run to its end.
    fn run(&self, args: &[&std::ffi::OsStr]) -> Output {
        // A copy (another file system) may still be held open for writing by a child
        // another test forked before its exec: tried again for a while.
        for _ in 0..100 {
            match self.command(args).output() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                r => return r.unwrap(),
            }
        }
        self.command(args).output().unwrap()
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
    use common::restic::PASSWORD;
    let s = setup();
    let src = s.root.join("src");
    for i in 0..20 {
        write(
            &src.join(format!("f{i:02}")),
            format!("file {i}\n").as_bytes(),
        );
        chmod(&src.join(format!("f{i:02}")), 0o640);
    }
    let url = user_repo(&s, &src);
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

/// A restic repository at `<root>/repo` holding one backup of `src` (made by root),
/// given to the backup user: its URL.
fn user_repo(s: &Setup, src: &Path) -> String {
    let repo = s.root.join("repo");
    let url = common::restic::repo_of(&repo, src);
    let st = Command::new("chown")
        .args(["-R", &format!("{USER}:{USER}")])
        .arg(&repo)
        .status()
        .unwrap();
    assert!(st.success());
    url
}

/// `bin` run under umask `umask` (a shell sets it and execs it): the flags follow.
fn under_umask(umask: u32, bin: &Path) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!("umask {umask:o} && exec \"$0\" \"$@\""))
        .arg(bin);
    c
}

/// `snapring ARGS` as the backup user under umask `umask` (a shell sets it), with the
/// repository password in the environment and `catalog` as the catalog.
fn run_under(s: &Setup, umask: u32, catalog: &str, args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = under_umask(umask, &s.bin)
        .args(args)
        .env_clear()
        .env("HOME", s.root.join("home"))
        .env("SNAPRING_CATALOG", catalog)
        .env("SNAPRING_PASSWORD", common::restic::PASSWORD)
        .uid(USER)
        .gid(USER)
        .output()
        .unwrap();
    let said = format!(
        "umask {umask:03o}: snapring {args:?}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), said)
}

/// A source tree with subdirectories of several modes, the backup user's.
fn tree_with_subdirectories(s: &Setup, name: &str) -> PathBuf {
    let src = s.user_dir(name);
    for d in ["d1", "d1/d2", "e"] {
        std::fs::create_dir(src.join(d)).unwrap();
    }
    for (f, mode) in [
        ("f", 0o640),
        ("d1/g", 0o644),
        ("d1/d2/h", 0o600),
        ("e/x", 0o444),
    ] {
        write(&src.join(f), f.as_bytes());
        chmod(&src.join(f), mode);
    }
    for (d, mode) in [("d1/d2", 0o705), ("d1", 0o750), ("e", 0o755)] {
        chmod(&src.join(d), mode);
    }
    let st = Command::new("chown")
        .args(["-R", &format!("{USER}:{USER}")])
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    src
}

/// `snapring restore --dest FROM SNAPSHOT --to TO [--path PATH]` as the user under
/// `umask`, which must succeed: what it said.
fn restore_under(
    s: &Setup,
    umask: u32,
    from: &std::ffi::OsStr,
    snapshot: &str,
    to: &Path,
    path: Option<&str>,
) -> String {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "restore".as_ref(),
        "--dest".as_ref(),
        from,
        snapshot.as_ref(),
        "--to".as_ref(),
        to.as_os_str(),
    ];
    if let Some(p) = path {
        args.extend::<[&std::ffi::OsStr; 2]>(["--path".as_ref(), p.as_ref()]);
    }
    let (code, said) = run_under(s, umask, "off", &args);
    assert_eq!(code, 0, "{said}");
    said
}

/// Every entry under `root` (its own `.` too) with its permission bits, sorted; the
/// restore's and the store's own names left out.
fn modes_of(root: &Path) -> Vec<(String, u32)> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<(String, u32)>) {
        let p = root.join(rel);
        out.push((rel.display().to_string(), mode_mtime(&p).0));
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                let n = e.unwrap().file_name();
                if !n.to_string_lossy().starts_with(".snapring") {
                    walk(root, &rel.join(n), out);
                }
            }
        }
    }
    let mut v = Vec::new();
    walk(root, Path::new(""), &mut v);
    v.sort();
    v
}

/// What `mkdir -p` gives a directory it makes on the way under `umask`: its mode less
/// the umask, with the owner's write and search (0700 under 0277, 0755 under 0222).
fn mkdir_p_mode(umask: u32) -> u32 {
    (0o777 & !umask) | 0o300
}

/// A restore from the store, by a user whose umask takes the owner's write away (0277,
/// 0222), of a tree with subdirectories: into a new `--to` (and a directory above it),
/// an existing empty one, a subdirectory and one file. Every restore completes and the
/// restored entries have the snapshot's modes; the directories it made that the
/// snapshot has no mode for get what `mkdir -p` gives them. A new `--to` was made 0500
/// and its record of unfinished work could not be created in it (exit 1); into an
/// existing `--to`, each subdirectory was made 0500 and its entries could not be (exit
/// 2).
#[test]
fn a_store_restore_under_a_umask_without_owner_write_keeps_the_snapshot_modes() {
    let s = setup();
    let src = tree_with_subdirectories(&s, "src");
    let dest = s.user_dir("dest");
    let (code, rep, err) = s.backup(&src, &dest);
    assert_eq!(code, Some(0), "{rep}\n{err}");
    let snap = dest.join("daily.0");
    let want = modes_of(&snap);
    assert_eq!(want, modes_of(&src));
    let sub = |p: &str| -> Vec<(String, u32)> {
        let mut v: Vec<_> = modes_of(&snap.join(p))
            .into_iter()
            .map(|(r, m)| match r.is_empty() {
                true => (p.to_string(), m),
                false => (format!("{p}/{r}"), m),
            })
            .collect();
        v.sort();
        v
    };
    for umask in [0o277, 0o222] {
        let base = s.user_dir(&format!("to-{umask:o}"));
        let restore = |to: &Path, path: Option<&str>| {
            restore_under(&s, umask, dest.as_os_str(), "daily.0", to, path)
        };
        // A new --to, and a directory above it the restore makes too.
        let said = restore(&base.join("new/to"), None);
        assert_eq!(modes_of(&base.join("new/to")), want, "{said}");
        assert_eq!(mode_mtime(&base.join("new")).0, mkdir_p_mode(umask));
        // An existing, empty --to: its mode is the snapshot's root's after the restore.
        let existing = s.user_dir(&format!("to-{umask:o}/existing"));
        let said = restore(&existing, None);
        assert_eq!(modes_of(&existing), want, "{said}");
        // A subdirectory into a new --to, which has no mode in the snapshot.
        let said = restore(&base.join("sub"), Some("d1"));
        let mut got = modes_of(&base.join("sub"));
        assert_eq!(
            got.remove(0),
            (String::new(), mkdir_p_mode(umask)),
            "{said}"
        );
        assert_eq!(got, sub("d1"), "{said}");
        // One file: the directories above it get the snapshot's modes.
        let said = restore(&base.join("one"), Some("d1/d2/h"));
        let mut got = modes_of(&base.join("one"));
        assert_eq!(
            got.remove(0),
            (String::new(), mkdir_p_mode(umask)),
            "{said}"
        );
        let mut wanted = vec![("d1".to_string(), 0o750), ("d1/d2".to_string(), 0o705)];
        wanted.push(("d1/d2/h".to_string(), 0o600));
        assert_eq!(got, wanted, "{said}");
    }
}

/// A restore from a restic repository, by a user whose umask takes the owner's write
/// away, of a tree with subdirectories: complete, with the recorded modes. The
/// directories it made were 0500, so nothing could be created in them (exit 1).
#[test]
fn a_repository_restore_of_subdirectories_under_a_umask_without_owner_write() {
    let s = setup();
    let src = tree_with_subdirectories(&s, "src");
    let url = user_repo(&s, &src);
    let want = modes_of(&src);
    for umask in [0o277, 0o222] {
        let base = s.user_dir(&format!("to-{umask:o}"));
        for (to, path) in [("new/to", None), ("existing", None), ("sub", Some("d1"))] {
            let to = base.join(to);
            if to.ends_with("existing") {
                s.user_dir(&format!("to-{umask:o}/existing"));
            }
            let said = restore_under(&s, umask, url.as_ref(), "latest", &to, path);
            let got = modes_of(&to);
            let expected: Vec<_> = match path {
                None => want.iter().skip(1).cloned().collect(),
                Some(p) => want
                    .iter()
                    .filter(|(r, _)| r.starts_with(p))
                    .cloned()
                    .collect(),
            };
            let got: Vec<_> = got.into_iter().skip(1).collect();
            assert_eq!(got, expected, "{said}");
            for (r, _) in got
                .iter()
                .filter(|(r, _)| r.ends_with('f') || r.ends_with('g'))
            {
                assert_eq!(std::fs::read(to.join(r)).unwrap(), r.as_bytes(), "{said}");
            }
        }
        assert_eq!(mode_mtime(&base.join("new")).0, mkdir_p_mode(umask));
    }
}

/// Everything else a user with a umask without owner write runs (0277, 0222): backups
/// into a new store (rotating), `verify`, `diff`, `list`, a shard run of two workers, a
/// repository's `init` and backup, `copy` and `verify` of it, with a catalog. All
/// complete; the snapshots have the source's modes, and every file and directory of
/// the store's, the repository's, the cache's and the catalog's own is its owner's to
/// read and write, none more open to group or other than the umask allows. Each failed at its first directory or file: `.snapring/`
/// could not be created in a store made 0500, a repository's `keys/` in one made 0500,
/// and the catalog, created 0400, could not be written.
#[test]
fn every_command_works_under_a_umask_without_owner_write() {
    let s = setup();
    let src = tree_with_subdirectories(&s, "src");
    let want = modes_of(&src);
    for umask in [0o277, 0o222] {
        let base = s.user_dir(&format!("u{umask:o}"));
        let catalog = base.join("catalog.db");
        let cat = catalog.to_str().unwrap();
        let store = base.join("store");
        let repo = format!("file://{}", base.join("repo").display());
        let go = |args: &[&str], ok: &[i32]| {
            let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
            let (code, said) = run_under(&s, umask, cat, &args);
            assert!(ok.contains(&code), "exit {code}: {said}");
        };
        let src_s = src.to_str().unwrap();
        let store_s = store.to_str().unwrap();
        for _ in 0..3 {
            go(
                &[
                    "backup", "--source", src_s, "--dest", store_s, "--retain", "2",
                ],
                &[0],
            );
        }
        assert_eq!(modes_of(&store.join("daily.0")), want);
        assert!(!store.join("daily.2").exists());
        go(&["verify", "--dest", store_s], &[0]);
        go(&["diff", "--dest", store_s, "daily.1", "daily.0"], &[0]);
        go(&["list", "--dest", store_s], &[0]);
        go(&["history"], &[0]);
        for shard in ["0/2", "1/2"] {
            go(
                &[
                    "backup", "--source", src_s, "--dest", store_s, "--folder", "fs", "--shard",
                    shard, "--run-id", "r1", "--retain", "2",
                ],
                &[0],
            );
        }
        let sharded = store.join("fs");
        go(
            &[
                "status", "--dest", store_s, "--folder", "fs", "--run-id", "r1",
            ],
            &[0],
        );
        assert_eq!(modes_of(&sharded.join("daily.0")), want);
        go(&["verify", "--dest", store_s, "--folder", "fs"], &[0]);
        go(&["init", "--dest", &repo], &[0]);
        go(&["backup", "--source", src_s, "--dest", &repo], &[0]);
        go(&["copy", "--dest", store_s, "--to", &repo, "daily.0"], &[0]);
        go(&["verify", "--dest", &repo], &[0]);
        // The store's, the repository's and the catalog's own files and directories.
        let mut own = vec![catalog.clone()];
        let mut todo = vec![store.join(".snapring"), sharded.join(".snapring")];
        todo.extend([base.join("repo"), s.root.join("home/.cache")]);
        while let Some(d) = todo.pop() {
            own.push(d.clone());
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                match std::fs::symlink_metadata(&p).unwrap().is_dir() {
                    true => todo.push(p),
                    false => own.push(p),
                }
            }
        }
        for p in own {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let need = if m.is_dir() { 0o700 } else { 0o600 };
            let mode = m.mode() & 0o777;
            assert_eq!(
                mode & need,
                need,
                "umask {umask:o}: {} is {mode:o}",
                p.display()
            );
            assert_eq!(
                mode & umask & 0o077,
                0,
                "umask {umask:o}: {} is {mode:o}",
                p.display()
            );
        }
    }
}

/// A job's pre and post commands run under the umask the user gave snapring, not the
/// one snapring works under (the owner's bits taken out): a command's own files are
/// made as the user asked.
#[test]
fn hooks_run_under_the_users_umask() {
    let s = setup();
    let src = tree_with_subdirectories(&s, "src");
    let base = s.user_dir("u");
    let cfg = base.join("job.toml");
    let hook = |name: &str| {
        format!(
            "{name} = [\"/bin/sh\", \"-c\", \"umask > {}/{name}\"]",
            base.display()
        )
    };
    write(
        &cfg,
        format!(
            "[job.j]\nsource = \"{}\"\ndest = \"{}\"\n{}\n{}\n",
            src.display(),
            base.join("store").display(),
            hook("pre_command"),
            hook("post_command"),
        )
        .as_bytes(),
    );
    chmod(&cfg, 0o644);
    for umask in [0o277, 0o022] {
        let args: Vec<&std::ffi::OsStr> =
            vec!["backup".as_ref(), "--config".as_ref(), cfg.as_os_str()];
        let (code, said) = run_under(&s, umask, "off", &args);
        assert_eq!(code, 0, "{said}");
        for name in ["pre_command", "post_command"] {
            let seen = std::fs::read_to_string(base.join(name)).unwrap();
            assert_eq!(seen.trim(), format!("{umask:04o}"), "{name}: {said}");
            std::fs::remove_file(base.join(name)).unwrap();
        }
    }
}

/// Under `snapring daemon` too: each run is a child `snapring run`, started under the
/// daemon's working umask (the owner's bits taken out), and its pre command and
/// command notifier still get the umask the user gave the daemon. They got 0077 for
/// the user's 0277.
#[test]
fn hooks_under_the_daemon_run_under_the_users_umask() {
    let s = setup();
    let src = tree_with_subdirectories(&s, "src");
    let base = s.user_dir("d");
    let cfg = base.join("job.toml");
    let logged = |name: &str| {
        let p = base.join(name).display().to_string();
        format!("[\"/bin/sh\", \"-c\", \"umask > {p}.tmp && mv {p}.tmp {p}\"]")
    };
    write(
        &cfg,
        format!(
            "[job.j]\nsource = \"{}\"\ndest = \"{}\"\nschedule = \"* * * * * *\"\n\
             pre_command = {}\nnotify = [\"cmd\"]\nnotify_success = true\n\n[notify.cmd]\ntype = \"command\"\ncommand = {}\n",
            src.display(),
            base.join("store").display(),
            logged("pre_command"),
            logged("notifier"),
        )
        .as_bytes(),
    );
    chmod(&cfg, 0o644);
    let log = std::fs::File::create(s.root.join("daemon.log")).unwrap();
    let mut daemon = under_umask(0o277, &s.bin)
        .args(["daemon".as_ref(), "--config".as_ref(), cfg.as_os_str()])
        .env_clear()
        .env("HOME", s.root.join("home"))
        .env("SNAPRING_CATALOG", base.join("catalog.db"))
        .uid(USER)
        .gid(USER)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let both = || {
        ["pre_command", "notifier"]
            .iter()
            .all(|n| base.join(n).exists())
    };
    while !both() && t0.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = rustix::process::Pid::from_raw(daemon.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    daemon.wait().unwrap();
    let said = std::fs::read_to_string(s.root.join("daemon.log")).unwrap();
    for name in ["pre_command", "notifier"] {
        let seen = std::fs::read_to_string(base.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}\n{said}"));
        assert_eq!(seen.trim(), "0277", "{name}: {said}");
    }
}

/// A user's repository restore of a snapshot whose top directory is 0555: the record
/// inside `--to` is removed before `--to` gets that mode (a user cannot unlink in a
/// directory without write). With `--to` given its mode first, every such restore
/// ended "cannot remove …/.snapring-restore-unfinished: Permission denied", exit 1,
/// and every rerun the same.
#[test]
fn a_repository_restore_of_a_read_only_top_directory_as_a_user_completes() {
    let s = setup();
    let src = tree_with_subdirectories(&s, "src");
    chmod(&src, 0o555);
    let url = user_repo(&s, &src);
    let base = s.user_dir("base");
    let to = base.join("to");
    let said = restore_under(&s, 0o022, url.as_ref(), "latest", &to, None);
    assert_eq!(modes_of(&to), modes_of(&src), "{said}");
    assert!(
        !to.join(".snapring-restore-unfinished").exists(),
        "the record stays: {said}"
    );
    assert_eq!(std::fs::read(to.join("d1/g")).unwrap(), b"d1/g", "{said}");
}

/// The rerun of a user's repository restore into a `--to` the user may write but not
/// chmod (root's, 0777) goes on: the rerun makes a directory writable again only where
/// its mode lacks the owner's bits, and a mode it cannot change is warned about. It
/// failed at once: "cannot set the mode of …: Operation not permitted".
#[test]
fn the_rerun_of_a_user_restore_into_a_directory_of_another_owner_goes_on() {
    let s = setup();
    let src = tree_with_subdirectories(&s, "src");
    let url = user_repo(&s, &src);
    let to = s.root.join("shared");
    std::fs::create_dir(&to).unwrap();
    chmod(&to, 0o777);
    let args: Vec<&std::ffi::OsStr> = vec![
        "restore".as_ref(),
        "--dest".as_ref(),
        url.as_ref(),
        "latest".as_ref(),
        "--to".as_ref(),
        to.as_os_str(),
    ];
    // Killed once the files are written, at the first directory's metadata.
    let out = under_umask(0o022, &s.bin)
        .args(&args)
        .env_clear()
        .env("HOME", s.root.join("home"))
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_PASSWORD", common::restic::PASSWORD)
        .env("SNAPRING_FAILPOINTS", "restic.restore.dirs=kill@1")
        .uid(USER)
        .gid(USER)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "killed: {out:?}");
    assert!(to.join(".snapring-restore-unfinished").exists());
    let (code, said) = run_under(&s, 0o022, "off", &args);
    // `--to` keeps root's owner and mode: its metadata is a problem (partial), no more.
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("partial: restored"), "{said}");
    // `--to`'s own problem is named `.` (it was "snapring: : set metadata").
    assert!(said.contains("snapring: .: set metadata"), "{said}");
    assert!(!to.join(".snapring-restore-unfinished").exists(), "{said}");
    let want: Vec<_> = modes_of(&src).into_iter().skip(1).collect();
    let got: Vec<_> = modes_of(&to).into_iter().skip(1).collect();
    assert_eq!(got, want, "{said}");
}

/// The entries of the manifest of `store`'s newest run, each with the block it is in
/// (its start time left out): what two runs of one source may be compared by.
fn manifest_entries(store: &Path) -> Vec<(String, String)> {
    let mdir = store.join(".snapring/manifests");
    let mut mfs: Vec<PathBuf> = std::fs::read_dir(&mdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "mf"))
        .collect();
    mfs.sort();
    let text = std::fs::read_to_string(mfs.last().unwrap()).unwrap();
    let mut block = String::new();
    let mut out = Vec::new();
    for l in text.lines().skip(1) {
        if let Some(d) = l.strip_prefix("D ") {
            block = d.to_string();
        } else if l.starts_with("R ") {
            out.push((String::new(), l.to_string()));
        } else if !l.starts_with("S ") {
            out.push((block.clone(), l.to_string()));
        }
    }
    out.sort();
    out
}

/// A shard run by the backup user over a source of root's: each spine directory (one
/// its units span, whose metadata finalize applies) gets its mode and times, its owner
/// is a `set owner` problem and its manifest entry records the owner it holds, as a
/// single-node run by the same user does. The run is `partial` with the single-node
/// run's problems and manifest, and `verify` finds it clean, run after run. Finalize
/// failed on the first spine directory (`cannot set owner 0:0`): nothing published.
#[test]
fn a_users_shard_run_over_roots_tree_is_its_single_node_run() {
    let s = setup();
    let src = s.root.join("src");
    for d in ["a", "b", "c"] {
        for n in 1..=3 {
            for f in 1..=20 {
                write(
                    &src.join(format!("{d}/s{n}/f{f:02}")),
                    format!("{d} {n} {f}").as_bytes(),
                );
            }
        }
    }
    for f in 1..=60 {
        write(
            &src.join(format!("flat{f:02}")),
            format!("flat {f}").as_bytes(),
        );
    }
    let dirs = ["a", "b", "c"].into_iter().flat_map(|d| {
        [d.to_string()]
            .into_iter()
            .chain((1..=3).map(move |n| format!("{d}/s{n}")))
    });
    for d in dirs {
        chmod(&src.join(&d), 0o755);
    }
    chmod(&src, 0o755);
    chmod(&src.join("b"), 0o705);
    for d in ["b", "a/s2"] {
        set_mtime(&src.join(d), Y2020, 0);
    }

    let single = s.user_dir("single");
    let shard = s.user_dir("shard");
    for run in 1..=2 {
        let (code, rep, err) = s.backup(&src, &single);
        assert_eq!(code, Some(2), "run {run}: {rep}\n{err}");
        let mut want = problems(&rep);
        want.sort();
        assert!(
            want.contains(&("b".into(), "metadata".into(), "set owner".into())),
            "run {run}: {want:?}"
        );

        let id = format!("r{run}");
        let workers: Vec<_> = (0..2)
            .map(|i| {
                let shard_arg = format!("{i}/2");
                s.command(&[
                    "backup".as_ref(),
                    "--jobs".as_ref(),
                    "2".as_ref(),
                    "--retain".as_ref(),
                    "2".as_ref(),
                    "--source".as_ref(),
                    src.as_os_str(),
                    "--dest".as_ref(),
                    shard.as_os_str(),
                    "--shard".as_ref(),
                    shard_arg.as_ref(),
                    "--run-id".as_ref(),
                    id.as_ref(),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        let outs: Vec<Output> = workers
            .into_iter()
            .map(|w| w.wait_with_output().unwrap())
            .collect();
        let log: String = outs
            .iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .collect();
        let codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
        assert!(
            codes.iter().all(|c| matches!(c, Some(0 | 2))) && codes.contains(&Some(2)),
            "run {run}: {codes:?}\n{log}"
        );
        // Every file is root's: a worker that committed units left owners unset in
        // them, so its part is partial (exit 2), as the single-node run's; a worker
        // that did not finalize exited 0.
        for o in &outs {
            let out = String::from_utf8_lossy(&o.stdout);
            if !out.contains(": 0 units committed") {
                assert_eq!(o.status.code(), Some(2), "run {run}: {out}");
                assert!(
                    out.contains("problems in them: partial)"),
                    "run {run}: {out}"
                );
            }
        }
        let rec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(shard.join(format!(".snapring/runs/{id}.json"))).unwrap(),
        )
        .unwrap_or_else(|e| panic!("run {run}: no run record ({e}): {log}"));
        let plan: serde_json::Value = serde_json::from_slice(
            &std::fs::read(shard.join(format!(".snapring/shards/{id}/plan.json"))).unwrap(),
        )
        .unwrap();
        assert!(
            plan["spine"].as_array().unwrap().len() > 4,
            "run {run}: the tree should be cut below its root: {plan}"
        );
        assert_eq!(rec["status"], "partial", "run {run}: {rec}");
        let mut got = problems(&rec);
        got.sort();
        assert_eq!(got, want, "run {run}: {rec}");
        // Each spine directory's problem once, said as a single-node run says it.
        assert_eq!(log.matches("path=b action=set owner").count(), 1, "{log}");
        let text = |r: &serde_json::Value| {
            r["problems"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["path"] == "b")
                .map(|p| p["error"].to_string())
        };
        assert_eq!(text(&rec), text(&rep), "run {run}");

        let (got, want) = (manifest_entries(&shard), manifest_entries(&single));
        let only = |a: &[(String, String)], b: &[(String, String)]| -> Vec<(String, String)> {
            a.iter().filter(|e| !b.contains(e)).cloned().collect()
        };
        assert_eq!(
            only(&got, &want),
            only(&want, &got),
            "run {run}: shard, single"
        );
        for store in [&single, &shard] {
            let snap = store.join("daily.0");
            assert_eq!(mode_mtime(&snap.join("b")), (0o705, Y2020), "run {run}");
            assert_eq!(mode_mtime(&snap.join("a/s2")).1, Y2020, "run {run}");
            let m = std::fs::metadata(snap.join("a/s1")).unwrap();
            assert_eq!((m.uid(), m.gid()), (USER, USER), "run {run}");
            let (code, out) = s.verify(store);
            assert_eq!(code, Some(0), "run {run}: {}: {out}", store.display());
            assert!(!out.contains("DAMAGED"), "run {run}: {out}");
        }
    }
}

/// A live process of another user (root's `restic prune`, say) holds the repository's
/// lock: signalling it is refused (EPERM), which was taken for "no such process", so
/// the user's snapring removed the lock as a dead process's and ran beside it.
#[test]
fn a_lock_of_another_users_live_process_is_not_taken_for_a_dead_ones() {
    use snapring::restic::{lock, repo::Repo};
    use std::os::unix::fs::PermissionsExt;
    let s = setup();
    let src = s.user_dir("src");
    std::fs::write(src.join("f"), b"x").unwrap();
    chown(&src.join("f"), USER, USER);
    let repo = s.user_dir("repo");
    let url = format!("file://{}", repo.display());
    let as_user = |args: &[&str]| {
        let a: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        s.command(&a)
            .env("SNAPRING_PASSWORD", "pw")
            .env("SNAPRING_CACHE", "off")
            .output()
            .unwrap()
    };
    let out = as_user(&["init", "--dest", &url]);
    assert!(out.status.success(), "{out:?}");
    // This test process (root) holds an exclusive lock, readable by the user.
    let opened = Repo::open(&repo, b"pw").unwrap();
    let held = lock::acquire(&opened, true).unwrap();
    for l in std::fs::read_dir(repo.join("locks")).unwrap() {
        let p = l.unwrap().path();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = as_user(&["backup", "--source", src.to_str().unwrap(), "--dest", &url]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(err.contains("locked exclusively by pid"), "{err}");
    assert_eq!(
        std::fs::read_dir(repo.join("locks")).unwrap().count(),
        1,
        "root's live lock was removed"
    );
    held.release().unwrap();
}

/// A restore by a user who cannot give a file its owner clears the setuid and setgid
/// bits the owner made safe (as `cp -p` run by the same user does): root's
/// `-rwsr-xr-x` program became `-rwsr-xr-x` of the user, a program running as them for
/// anyone who runs it. The problem says so. A bit of an owner the user is (their own
/// setuid file) stays, and a directory keeps its setgid (it only passes the group on).
#[test]
fn a_user_restore_clears_setuid_and_setgid_bits_it_cannot_make_safe() {
    let s = setup();
    let src = s.root.join("src");
    write(&src.join("suid"), b"#!/bin/sh\n");
    write(&src.join("sgid"), b"#!/bin/sh\n");
    write(&src.join("mine"), b"#!/bin/sh\n");
    std::fs::create_dir(src.join("gdir")).unwrap();
    chown(&src.join("mine"), USER, USER);
    chmod(&src.join("suid"), 0o4755);
    chmod(&src.join("sgid"), 0o2755);
    chmod(&src.join("mine"), 0o6755);
    chmod(&src.join("gdir"), 0o2755);
    let want = |to: &Path, said: &str| {
        assert_eq!(mode_mtime(&to.join("suid")).0, 0o755, "{said}");
        assert_eq!(mode_mtime(&to.join("sgid")).0, 0o755, "{said}");
        assert_eq!(mode_mtime(&to.join("mine")).0, 0o6755, "{said}");
        assert_eq!(mode_mtime(&to.join("gdir")).0, 0o2755, "{said}");
    };

    // From a store root made, given to the user but for the snapshot's entries.
    let dest = s.root.join("dest");
    std::fs::create_dir(&dest).unwrap();
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    let st = Command::new("chown")
        .args(["-R", &format!("{USER}:{USER}")])
        .arg(&dest)
        .status()
        .unwrap();
    assert!(st.success());
    let snap = dest.join("daily.0");
    for (n, m) in [("suid", 0o4755), ("sgid", 0o2755), ("gdir", 0o2755)] {
        chown(&snap.join(n), 0, 0);
        chmod(&snap.join(n), m);
    }
    chmod(&snap.join("mine"), 0o6755);
    let to = s.user_dir("to");
    let out = s.run(&restore_json_args(&dest, "daily.0", &to.join("r")));
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{said}");
    want(&to.join("r"), &said);
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = |p: &str| {
        rep["problems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["path"] == p)
            .map(|x| x["error"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(text("suid").contains("setuid bit cleared"), "{said}");
    assert!(text("sgid").contains("setgid bit cleared"), "{said}");
    assert_eq!(text("mine"), "", "{said}");

    // From a restic repository root made, given to the user.
    let url = user_repo(&s, &src);
    let to = s.user_dir("to-repo");
    let out = s
        .command(&[
            "restore".as_ref(),
            "--json".as_ref(),
            "--dest".as_ref(),
            url.as_ref(),
            "latest".as_ref(),
            "--to".as_ref(),
            to.as_os_str(),
        ])
        .env("SNAPRING_PASSWORD", common::restic::PASSWORD)
        .output()
        .unwrap();
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{said}");
    want(&to, &said);
    assert!(said.contains("setuid bit cleared"), "{said}");
    assert!(said.contains("setgid bit cleared"), "{said}");
}

/// A backup by a user who cannot give a copy its owner clears the setuid and setgid
/// bits that owner made safe, as its restore does (and `cp -p` run by a user): root's
/// `-rwsr-xr-x` program was the user's `-rwsr-xr-x` in the snapshot, run as them by
/// anyone. The bit of an owner the copy has (the user's own setuid file, the setuid of
/// their file of root's group) stays; a directory keeps its setgid; a second name of
/// the same source inode is the same copy. The manifest records the mode the copy has,
/// as it records the owner it holds: `verify` finds it as recorded, and still finds a
/// bit the copy gains later (the manifest is not loosened). Said once in the report's
/// warnings, with the count; each copy's own `set owner` problem names its bits. Every
/// run alike (the source's owner differs from the recorded one: copied again, never a
/// link to the previous copy).
#[test]
fn a_user_backup_clears_setuid_and_setgid_bits_of_copies_it_cannot_give_their_owner() {
    let s = setup();
    let src = s.user_dir("src");
    let dest = s.user_dir("dest");
    for n in ["suid", "sgid", "mine", "ugrp"] {
        write(&src.join(n), b"#!/bin/sh\n");
    }
    std::fs::hard_link(src.join("suid"), src.join("suid-link")).unwrap();
    std::fs::create_dir(src.join("gdir")).unwrap();
    chown(&src.join("mine"), USER, USER);
    chown(&src.join("ugrp"), USER, 0);
    chmod(&src.join("suid"), 0o4755);
    chmod(&src.join("sgid"), 0o2755);
    chmod(&src.join("mine"), 0o6755);
    chmod(&src.join("ugrp"), 0o6755);
    chmod(&src.join("gdir"), 0o2755);
    let warned = |rep: &serde_json::Value| -> Vec<String> {
        rep["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_string())
            .filter(|w| w.contains("setuid/setgid"))
            .collect()
    };
    for run in 1..=3 {
        let (code, rep, err) = s.backup(&src, &dest);
        assert_eq!(code, Some(2), "run {run}: {rep}\n{err}");
        let snap = dest.join("daily.0");
        let mode = |n: &str| mode_mtime(&snap.join(n)).0;
        assert_eq!(mode("suid"), 0o755, "run {run}: {rep}");
        assert_eq!(mode("suid-link"), 0o755, "run {run}: {rep}");
        assert_eq!(mode("sgid"), 0o755, "run {run}: {rep}");
        assert_eq!(mode("mine"), 0o6755, "run {run}: {rep}");
        assert_eq!(mode("ugrp"), 0o4755, "run {run}: {rep}");
        assert_eq!(mode("gdir"), 0o2755, "run {run}: {rep}");
        let ino = |n: &str| std::fs::metadata(snap.join(n)).unwrap().ino();
        assert_eq!(ino("suid"), ino("suid-link"), "run {run}");
        let text = |p: &str| {
            rep["problems"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["path"] == p)
                .map(|x| x["error"].as_str().unwrap().to_string())
                .unwrap_or_default()
        };
        // One copy of the two names (the one walked first; the other is its link).
        let (a, b) = (text("suid"), text("suid-link"));
        assert!(
            (a + &b).matches("setuid bit cleared").count() == 1,
            "run {run}: {rep}"
        );
        assert!(
            text("sgid").contains("setgid bit cleared"),
            "run {run}: {rep}"
        );
        assert!(
            text("ugrp").contains("setgid bit cleared"),
            "run {run}: {rep}"
        );
        assert_eq!(text("mine"), "", "run {run}: {rep}");
        let w = warned(&rep);
        assert_eq!(w.len(), 1, "run {run}: {rep}");
        assert!(
            w[0].starts_with("setuid/setgid bits cleared on 3 copies: "),
            "run {run}: {rep}"
        );
        // The manifest records the mode the copy has.
        let mf = manifest_entries(&dest);
        let mode_of = |n: &str| {
            mf.iter()
                .map(|(_, l)| l.split(' ').collect::<Vec<_>>())
                .find(|f| f.len() == 13 && f[12] == n)
                .map(|f| f[1].to_string())
                .unwrap_or_default()
        };
        for (n, m) in [
            ("suid", "755"),
            ("suid-link", "755"),
            ("sgid", "755"),
            ("ugrp", "4755"),
            ("mine", "6755"),
        ] {
            assert_eq!(mode_of(n), m, "run {run}: {n}: {mf:?}");
        }
        let (code, out) = s.verify(&dest);
        assert_eq!(code, Some(0), "run {run}: {out}");
        assert!(!out.contains("DAMAGED"), "run {run}: {out}");
    }
    // A bit the copy gains afterwards is damage (root does it: the copy is the user's).
    let snap = dest.join("daily.0");
    chmod(&snap.join("sgid"), 0o2755);
    let (code, out) = s.verify(&dest);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("DAMAGED"), "{out}");
    assert!(out.contains("sgid"), "{out}");
}
