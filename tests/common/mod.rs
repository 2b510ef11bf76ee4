//! Test helpers: build odd trees, describe a tree completely (content, type, mode,
//! owner, ns times, symlink targets, xattrs, device numbers, hard-link groups) so two
//! trees can be compared exactly, run the real `snapring` binary (also without root's
//! capabilities to read and write anything), and a real HTTP receiver for webhooks.
#![allow(dead_code)]

pub mod restic;
pub mod state;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Everything a snapshot must reproduce about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desc {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// mtime in ns (files, dirs, symlinks, specials)
    pub mtime: i128,
    pub content: Option<String>,
    pub target: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub rdev: u64,
    /// Index of the first path (in sorted order) sharing this inode, for nlink > 1.
    pub link_group: Option<Vec<u8>>,
}

fn kind_of(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_char_device() {
        "char"
    } else if t.is_block_device() {
        "block"
    } else if t.is_socket() {
        "socket"
    } else {
        "file"
    }
}

pub fn xattrs_of(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v = Vec::new();
    let mut list = vec![0u8; 65536];
    let Ok(n) = rustix::fs::llistxattr(p, &mut list[..]) else {
        return v;
    };
    for name in list[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let mut val = vec![0u8; 65536];
        if let Ok(k) = rustix::fs::lgetxattr(p, name, &mut val[..]) {
            v.push((name.to_vec(), val[..k].to_vec()));
        }
    }
    v.sort();
    v
}

/// Describes every entry under `root` (root itself as ""), keyed by raw relative path.
/// Uses chdir-free relative walking through std (paths here stay short enough), except
/// for trees that the caller knows are deep: see `describe_deep`.
pub fn describe(root: &Path) -> BTreeMap<Vec<u8>, Desc> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::<u8>::new())];
    let mut all = Vec::new();
    while let Some((p, rel)) = stack.pop() {
        let m =
            std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        if m.is_dir() {
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
        all.push((p, rel, m));
    }
    all.sort_by(|a, b| a.1.cmp(&b.1));
    // A hard-link group is a set of paths *of this tree* sharing an inode (a snapshot's
    // files also have links into other snapshots; those do not count).
    let mut count: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for (_, _, m) in &all {
        if !m.is_dir() {
            *count.entry((m.dev(), m.ino())).or_default() += 1;
        }
    }
    for (p, rel, m) in all {
        let kind = kind_of(&m);
        let key = (m.dev(), m.ino());
        let link_group = if kind != "dir" && count[&key] > 1 {
            Some(inodes.entry(key).or_insert_with(|| rel.clone()).clone())
        } else {
            None
        };
        out.insert(
            rel,
            Desc {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                content: (kind == "file").then(|| {
                    blake3::hash(&std::fs::read(&p).unwrap())
                        .to_hex()
                        .to_string()
                }),
                target: (kind == "symlink").then(|| {
                    std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                }),
                xattrs: xattrs_of(&p),
                rdev: if kind == "char" || kind == "block" {
                    m.rdev()
                } else {
                    0
                },
                link_group,
            },
        );
    }
    out
}

/// The differences between two described trees, path by path: `missing` (in
/// `expected` only), `differs` (both, unequal), `extra` (in `actual` only), each named
/// by the given words (`["missing", "differs", "extra"]`, or `removed`/`changed`/`added`).
pub fn tree_diffs<T: PartialEq + std::fmt::Debug>(
    expected: &BTreeMap<Vec<u8>, T>,
    actual: &BTreeMap<Vec<u8>, T>,
    [missing, differs, extra]: [&str; 3],
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => diffs.push(format!("{missing} {:?}", String::from_utf8_lossy(k))),
            Some(a) if a != v => diffs.push(format!(
                "{differs} {:?}:\n  expected {v:?}\n  actual   {a:?}",
                String::from_utf8_lossy(k)
            )),
            _ => {}
        }
    }
    for k in actual.keys().filter(|k| !expected.contains_key(*k)) {
        diffs.push(format!("{extra} {:?}", String::from_utf8_lossy(k)));
    }
    diffs
}

/// Asserts two trees are identical, naming the first differences.
pub fn assert_same_tree(
    expected: &BTreeMap<Vec<u8>, Desc>,
    actual: &BTreeMap<Vec<u8>, Desc>,
    what: &str,
) {
    let diffs = tree_diffs(expected, actual, ["missing", "differs", "extra"]);
    assert!(
        diffs.is_empty(),
        "{what}: {} differences:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_snapring"))
}

pub fn snapring(args: &[&OsStr], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args);
    // No catalog unless a test asks for one (tests/catalog.rs): keeps the machine's
    // own catalog out of the test suite.
    c.env("SNAPRING_CATALOG", "off");
    // restic repositories' tree cache: under the target directory, not the user's.
    c.env(
        "XDG_CACHE_HOME",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache"),
    );
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run snapring")
}

/// `snapring` without the capabilities that let root read and write anything
/// (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`: dropped by `setpriv`), as a backup user
/// other than root runs it; no catalog. The caller adds the arguments.
pub fn snapring_without_dac() -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--bounding-set=-dac_override,-dac_read_search",
        "--inh-caps=-dac_override,-dac_read_search",
    ])
    .arg(bin())
    .env("SNAPRING_CATALOG", "off");
    c
}

/// Runs `snapring backup --json EXTRA… --source SRC --dest DEST` without root's
/// capabilities to read and write anything ([`snapring_without_dac`]: a mode-000 file
/// is unreadable, a 0555 directory unwritable). Returns (exit code, report or null,
/// stderr).
pub fn backup_without_dac(
    src: &Path,
    dest: &Path,
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let out = snapring_without_dac()
        .args(["backup", "--json"])
        .args(extra)
        .arg("--source")
        .arg(src)
        .arg("--dest")
        .arg(dest)
        .output()
        .unwrap();
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `snapring backup --json` with the given extra args; returns (exit code, report).
pub fn backup(
    src: &Path,
    dest: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (i32, serde_json::Value, String) {
    let mut args: Vec<&OsStr> = vec![
        "backup".as_ref(),
        "--source".as_ref(),
        src.as_os_str(),
        "--dest".as_ref(),
        dest.as_os_str(),
        "--json".as_ref(),
    ];
    args.extend(extra.iter().map(|s| OsStr::new(*s)));
    let out = snapring(&args, env);
    let code = out.status.code().unwrap_or(-1);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (code, json, stderr)
}

/// The arguments of `snapring restore --dest DEST SNAPSHOT --to TO` (no `--json`).
pub fn restore_args<'a>(dest: &'a Path, snapshot: &'a str, to: &'a Path) -> [&'a OsStr; 6] {
    [
        "restore".as_ref(),
        "--dest".as_ref(),
        dest.as_os_str(),
        snapshot.as_ref(),
        "--to".as_ref(),
        to.as_os_str(),
    ]
}

/// The arguments of `snapring restore --json --dest DEST SNAPSHOT --to TO` (a test
/// runs them as it needs: [`snapring`], as another user, with more flags after them).
pub fn restore_json_args<'a>(dest: &'a Path, snapshot: &'a str, to: &'a Path) -> [&'a OsStr; 7] {
    [
        "restore".as_ref(),
        "--json".as_ref(),
        "--dest".as_ref(),
        dest.as_os_str(),
        snapshot.as_ref(),
        "--to".as_ref(),
        to.as_os_str(),
    ]
}

/// Runs `snapring list --json --dest DEST` (no environment added); the caller reads
/// the output.
pub fn list_json(dest: &Path) -> Output {
    snapring(
        &[
            "list".as_ref(),
            "--json".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
        ],
        &[],
    )
}

pub fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .ino()
}

pub fn write(p: &Path, data: &[u8]) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, data).unwrap();
}

pub fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &t,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

pub fn chown(p: &Path, uid: u32, gid: u32) {
    rustix::fs::chownat(
        rustix::fs::CWD,
        p,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

pub fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn set_xattr(p: &Path, name: &str, val: &[u8]) {
    rustix::fs::lsetxattr(p, name, val, rustix::fs::XattrFlags::empty()).unwrap();
}

/// A POSIX access ACL in the kernel's xattr form: user::rw-, user:<uid>:r--,
/// group::r--, mask::r--, other::---.
pub fn acl_bytes(uid: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, uid),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// Snapshot directory names in a store, sorted.
pub fn snapshot_names(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Path from raw bytes.
pub fn pb(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(rel))
}

/// Waits (up to 30 s) until `p` exists.
pub fn wait_for(p: &Path) {
    let t0 = std::time::Instant::now();
    while !p.exists() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "timed out waiting for {}",
            p.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `cmd` (its output piped) started with failpoint `point` set to pause at `pause`:
/// the child, once it is paused there.
pub fn paused_at(mut cmd: std::process::Command, point: &str, pause: &Path) -> std::process::Child {
    let child = cmd
        .env(
            "SNAPRING_FAILPOINTS",
            format!("{point}=pause:{}", pause.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(pause);
    child
}

/// [`paused_at`], then sent SIGTERM and let go: the child, to wait for.
pub fn terminated_at(cmd: std::process::Command, point: &str, pause: &Path) -> std::process::Child {
    let child = paused_at(cmd, point, pause);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    std::fs::remove_file(pause).unwrap();
    child
}

/// `cmd` (its output piped) paused on the `nth` hit of failpoint `point` (until `pause`
/// is removed), then sent `sig` and let go: the child, to wait for.
pub fn signalled_at(
    mut cmd: std::process::Command,
    (point, nth): (&str, u32),
    pause: &Path,
    sig: rustix::process::Signal,
) -> std::process::Child {
    let child = cmd
        .env(
            "SNAPRING_FAILPOINTS",
            format!("{point}=pause:{}@{nth}", pause.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(pause);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        sig,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    std::fs::remove_file(pause).unwrap();
    child
}

/// A paused backup: `snapring backup --json --jobs 1 --source SRC --dest DEST EXTRA…`
/// with the failpoint `point` set to pause (on its `nth` hit) until the returned file is
/// removed. Returns once the child is paused there.
pub struct Paused {
    pub child: std::process::Child,
    pub pause: PathBuf,
}

pub fn spawn_paused(src: &Path, dest: &Path, extra: &[&str], point: &str, nth: u32) -> Paused {
    spawn_paused_env(src, dest, extra, point, nth, &[])
}

/// [`spawn_paused`] with these environment variables besides.
pub fn spawn_paused_env(
    src: &Path,
    dest: &Path,
    extra: &[&str],
    point: &str,
    nth: u32,
    env: &[(&str, &str)],
) -> Paused {
    let pause = dest.with_extension("paused");
    let child = Command::new(bin())
        .envs(env.iter().copied())
        .args(["backup", "--json", "--jobs", "1", "--source"])
        .arg(src)
        .arg("--dest")
        .arg(dest)
        .args(extra)
        .env("SNAPRING_CATALOG", "off")
        .env(
            "SNAPRING_FAILPOINTS",
            format!("{point}=pause:{}@{nth}", pause.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&pause);
    Paused { child, pause }
}

impl Paused {
    /// Lets the run go on and waits for it; returns (exit code, report).
    pub fn resume(self) -> (i32, serde_json::Value) {
        std::fs::remove_file(&self.pause).unwrap();
        let out = self.child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        )
    }
}

/// Builds a source with one of everything.
pub fn odd_tree(src: &Path) {
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
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("null-dev"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
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

/// Runs `snapring` with at most `nofile` open descriptors (`ulimit -n`), as `snapring`
/// does: no catalog.
pub fn snapring_nofile(nofile: u32, args: &[&OsStr]) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -n {nofile}; exec \"$0\" \"$@\""))
        .arg(bin())
        .args(args)
        .env("SNAPRING_CATALOG", "off");
    c.output().expect("run snapring")
}

/// The latencyfs binary of bench/tools (the FUSE latency and fault layer), built once
/// per test binary with `cargo build --manifest-path bench/tools/Cargo.toml` (a no-op
/// when it is up to date). `None`, with the reason printed, when FUSE is not usable
/// here (no /dev/fuse or no fusermount3), so the caller can skip.
pub fn latencyfs() -> Option<PathBuf> {
    static BIN: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let r = BIN.get_or_init(|| {
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse is absent".into());
        }
        let fusermount = Command::new("fusermount3").arg("-V").output();
        if !fusermount.is_ok_and(|o| o.status.success()) {
            return Err("fusermount3 is not installed (Debian: fuse3)".into());
        }
        let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/tools");
        let bin = tools.join("target/debug/latencyfs");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let built = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "--locked",
                "--bin",
                "latencyfs",
                "--manifest-path",
            ])
            .arg(tools.join("Cargo.toml"))
            .env_remove("CARGO_TARGET_DIR")
            .status();
        match built {
            Ok(s) if s.success() => Ok(bin),
            _ if bin.exists() => {
                eprintln!(
                    "building latencyfs failed; using the existing {}",
                    bin.display()
                );
                Ok(bin)
            }
            _ => Err(format!("could not build {}", bin.display())),
        }
    });
    match r {
        Ok(p) => Some(p.clone()),
        // `.ci/run` sets it where /dev/fuse exists: there a test on the layer must run.
        Err(why) if std::env::var_os("SNAPRING_TEST_NEED_FUSE").is_some() => {
            panic!("SNAPRING_TEST_NEED_FUSE is set, but the FUSE latency layer cannot run: {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// A latencyfs mount of `under` at `mnt` (no added latency) with the given fault flags
/// (docs/testing.md); unmounted when dropped.
pub struct FaultFs {
    child: std::process::Child,
    pub mnt: PathBuf,
}

impl FaultFs {
    /// The layer's process id (to stop it with SIGSTOP: every call on it then hangs).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Mounts, and waits until the mount is there. `None` (reason printed) where FUSE is
    /// not usable.
    pub fn mount(under: &Path, mnt: &Path, faults: &[&str]) -> Option<FaultFs> {
        let bin = latencyfs()?;
        std::fs::create_dir_all(mnt).unwrap();
        let parent_dev = std::fs::metadata(mnt.parent().unwrap()).unwrap().dev();
        let mut child = Command::new(bin)
            .args(["--delay-us", "0", "--threads", "16"])
            .args(faults)
            .arg(under)
            .arg(mnt)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start latencyfs");
        let t0 = std::time::Instant::now();
        while std::fs::metadata(mnt)
            .map(|m| m.dev())
            .unwrap_or(parent_dev)
            == parent_dev
        {
            if let Ok(Some(s)) = child.try_wait() {
                panic!("latencyfs exited: {s}");
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(20),
                "latencyfs did not mount {}",
                mnt.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(FaultFs {
            child,
            mnt: mnt.to_path_buf(),
        })
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        // Lazily: a call the layer is stalling must not keep the mount busy.
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mnt)
            .status();
        let t0 = std::time::Instant::now();
        while t0.elapsed() < std::time::Duration::from_secs(2) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real HTTP server: records each request's path and body, answers 200.
pub struct Http {
    pub port: u16,
    pub got: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

pub fn http_server() -> Http {
    use std::io::{BufRead, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            r.read_line(&mut first).unwrap();
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
            g.lock()
                .unwrap()
                .push((path, String::from_utf8_lossy(&body).into_owned()));
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    Http { port, got }
}

/// A real SMTP sink: speaks enough ESMTP (EHLO, AUTH PLAIN/LOGIN, MAIL, RCPT, DATA,
/// QUIT) for a client to deliver, offering `ehlo` (its 250 lines after the first);
/// records the AUTH lines and each message's DATA as sent (dot-stuffed). [`smtp_sink_rcpt`]
/// answers RCPT with a reply of its own (a refusal).
pub struct Sink {
    pub port: u16,
    pub auth: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub mails: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

pub fn smtp_sink(ehlo: &'static str) -> Sink {
    smtp_sink_rcpt(ehlo, "250 ok\r\n")
}

/// [`smtp_sink`] answering each RCPT with `rcpt` (`550 5.1.1 no such user\r\n`).
pub fn smtp_sink_rcpt(ehlo: &'static str, rcpt: &'static str) -> Sink {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (auth, mails) = (Arc::new(Mutex::new(vec![])), Arc::new(Mutex::new(vec![])));
    let (a, m) = (auth.clone(), mails.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut w) = s else { continue };
            let mut r = BufReader::new(w.try_clone().unwrap());
            let _ = w.write_all(b"220 sink ESMTP\r\n");
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let up = line.to_ascii_uppercase();
                let reply: String = if up.starts_with("EHLO") {
                    format!("250-sink\r\n{ehlo}")
                } else if up.starts_with("AUTH") {
                    a.lock().unwrap().push(line.trim().to_string());
                    "235 ok\r\n".into()
                } else if up.starts_with("DATA") {
                    let _ = w.write_all(b"354 go\r\n");
                    let mut msg = String::new();
                    loop {
                        let mut l2 = String::new();
                        if r.read_line(&mut l2).unwrap_or(0) == 0 || l2 == ".\r\n" {
                            break;
                        }
                        msg.push_str(&l2);
                    }
                    m.lock().unwrap().push(msg);
                    "250 queued\r\n".into()
                } else if up.starts_with("RCPT") {
                    rcpt.into()
                } else if up.starts_with("QUIT") {
                    let _ = w.write_all(b"221 bye\r\n");
                    break;
                } else {
                    "250 ok\r\n".into()
                };
                let _ = w.write_all(reply.as_bytes());
            }
        }
    });
    Sink { port, auth, mails }
}

/// Whether this machine lets a test give a process a host name of its own
/// (`unshare -u`, a UTS namespace); says the test is skipped when not.
pub fn uts_namespaces() -> bool {
    let ok = Command::new("unshare")
        .args(["-u", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: `unshare -u` (a UTS namespace) is not available here");
    }
    ok
}

/// `c` run as on another machine: in a UTS namespace of its own, with host name `host`
/// (same program, arguments and environment).
pub fn on_host(c: &Command, host: &str) -> Command {
    under_unshare(
        c,
        &["-u"],
        &format!("hostname {host} && exec \"$0\" \"$@\""),
    )
}

/// `c` run on host `host` ([`on_host`]) with the failpoint spec `kill` (`point=kill…`):
/// it must die there by SIGKILL.
pub fn killed_on_host(c: &Command, host: &str, kill: &str) {
    let out = on_host(c, host)
        .env("SNAPRING_FAILPOINTS", kill)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        None,
        "not SIGKILLed at {kill}: stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `c` under `unshare FLAGS sh -c SCRIPT`, the script starting `"$0" "$@"` (`c`'s
/// program and arguments); `c`'s environment as it is.
fn under_unshare(c: &Command, flags: &[&str], script: &str) -> Command {
    let mut other = Command::new("unshare");
    other
        .args(flags)
        .args(["sh", "-c", script])
        .arg(c.get_program())
        .args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => other.env(k, v),
            None => other.env_remove(k),
        };
    }
    other
}

/// Whether this machine lets a test run a process in a pid namespace of its own
/// (`unshare --pid --fork`); says the test is skipped when not.
pub fn pid_namespaces() -> bool {
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: `unshare --pid` (a pid namespace) is not available here");
    }
    ok
}

/// `c` run as in another container of this host (a pod with `hostNetwork: true`: this
/// host's name, a pid namespace of its own), as a pid that no process has here (its
/// shell is pid 1 there and forks processes until that pid is next), started with its
/// output piped; and that pid.
pub fn spawn_in_pid_namespace(c: &Command) -> (std::process::Child, u32) {
    let pid = (100..30_000)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("a pid no process has");
    under_unshare(
        c,
        &["--pid", "--fork"],
        &format!(
            "i=0; while [ $i -lt {} ]; do /bin/true; i=$((i+1)); done; \"$0\" \"$@\"; exit $?",
            pid - 2
        ),
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .map(|child| (child, pid))
    .unwrap()
}

/// `snapring verify --dest DEST EXTRA…` (the newest snapshot, or `--all`): asserts exit
/// 0, with the output in the message.
pub fn assert_verify_clean(dest: &Path, extra: &[&str]) {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["verify".as_ref(), "--dest".as_ref(), dest.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let out = snapring(&args, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify {}: {}{}",
        extra.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Flips one byte of `p` in place, keeping its times (bit rot: the file system's
/// view of the inode is unchanged).
pub fn rot(p: &Path) {
    use std::os::unix::fs::FileExt;
    let m = std::fs::metadata(p).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, 3).unwrap();
    f.write_all_at(&[byte[0] ^ 0x20], 3).unwrap();
    f.set_times(
        std::fs::FileTimes::new()
            .set_accessed(m.accessed().unwrap())
            .set_modified(m.modified().unwrap()),
    )
    .unwrap();
}

/// A source whose only directory `big` holds `sub0`…`sub3` of 40 files each (so every
/// unit of a shard plan lies under `big/subK`), and beside it a directory `outside`
/// with the same names holding `SECRET`. Returns (source, outside).
pub fn swap_tree(root: &Path) -> (PathBuf, PathBuf) {
    let (src, outside) = (root.join("src"), root.join("outside"));
    for k in 0..4 {
        for f in 0..40 {
            write(&src.join(format!("big/sub{k}/f{f:02}")), b"inside");
            write(&outside.join(format!("sub{k}/f{f:02}")), b"SECRET");
        }
    }
    (src, outside)
}

/// Drives a shard worker paused at failpoint file `claimed` (a unit claimed, not yet
/// opened; `claimed_dir` must name its directory, checked to lie under `big/`): swaps `src/big` for a symlink to `outside`, lets it go on, and once
/// it pauses at `listed` (the unit's directory listed) or exits, swaps `big` back (so
/// finalize would see the tree as planned) and lets it finish. Returns its output.
pub fn swap_above_unit(
    mut w: std::process::Child,
    src: &Path,
    outside: &Path,
    claimed: &Path,
    listed: &Path,
    claimed_dir: impl FnOnce() -> String,
) -> Output {
    let t0 = std::time::Instant::now();
    while !claimed.exists() {
        if w.try_wait().unwrap().is_some() {
            let o = w.wait_with_output().unwrap();
            panic!("the worker ended before its pause: {o:?}");
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(60));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let dir = claimed_dir();
    assert!(
        dir.starts_with("big/"),
        "the paused unit is {dir:?}, not one under big/: the test needs another failpoint hit"
    );
    let big = src.join("big");
    let away = src.with_file_name("big-away");
    std::fs::rename(&big, &away).unwrap();
    std::os::unix::fs::symlink(outside, &big).unwrap();
    std::fs::remove_file(claimed).unwrap();
    let t0 = std::time::Instant::now();
    while !listed.exists() && w.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "the worker neither listed its unit nor ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::remove_file(&big).unwrap();
    std::fs::rename(&away, &big).unwrap();
    let _ = std::fs::remove_file(listed);
    w.wait_with_output().unwrap()
}

/// Regular files under `root` whose content is `SECRET` (read from `swap_tree`'s
/// outside directory), by path.
pub fn secrets_under(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                dirs.push(p);
            } else if m.is_file() && std::fs::read(&p).is_ok_and(|c| c == b"SECRET") {
                found.push(p);
            }
        }
    }
    found
}

/// A tmpfs mounted at a directory for a test, unmounted when dropped (also when the
/// test fails).
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs with mount options `opts` (`size=4m`) at `at`, made if missing;
    /// `None`, with a SKIPPED line, where mounting is not possible (not root).
    pub fn mount(at: &Path, opts: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(at.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs at {}: {}",
                    at.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    /// Mounts it again with options `opts` (`size=8m`: more room), its files kept.
    pub fn remount(&self, opts: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {} with {opts}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `c` under libfaketime, its clock `offset` seconds off (`-600`, `+7200`; its
/// monotonic clock left alone, as a host's clock that is merely set wrong). `false`,
/// saying SKIPPED, where libfaketime is not installed.
pub fn with_clock_off(c: &mut Command, offset: &str) -> bool {
    let lib = PathBuf::from("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1");
    if !lib.exists() {
        eprintln!(
            "SKIPPED: {} is not installed (apt-get install faketime)",
            lib.display()
        );
        return false;
    }
    c.env("LD_PRELOAD", &lib)
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    true
}
