//! Helpers for the tests on restic repositories (restic_conformance, restic_copy,
//! restic_faults, restic_prune, restic_runs, restic_s3): the test password, Debian's `restic` found on
//! the PATH (or a printed SKIPPED line), a `restic` command on a repository that panics
//! with restic's output when it fails, snapring run with the password, the arguments of
//! a restore of the latest snapshot, and deterministic pseudo-random content (so files
//! cut into several chunks). Runs processes.

use std::ffi::OsStr;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::snapring;

/// The repositories' password in these tests (restic_runs has its own, to look for it).
pub const PASSWORD: &str = "correct horse battery staple";

/// Debian's `restic`, when installed; otherwise prints that `what` is not checked.
pub fn restic_binary(what: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("restic"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!(
            "SKIPPED: `restic` is not installed (apt-get install restic); {what} not checked"
        );
    }
    found
}

/// `restic --repo REPO --no-cache` with the test password.
pub fn restic_cmd(restic: &Path, repo: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(restic);
    c.arg("--repo")
        .arg(repo)
        .arg("--no-cache")
        .env("RESTIC_PASSWORD", PASSWORD);
    c
}

/// Runs `cmd` with `args`; panics with restic's output unless it succeeds.
pub fn restic_ok<S: AsRef<OsStr> + Debug>(mut cmd: Command, args: &[S]) -> Output {
    let out = cmd.args(args).output().expect("run restic");
    assert!(
        out.status.success(),
        "restic {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs restic on the repository at `repo` (a path or URL); panics with its output on
/// failure.
pub fn run_restic<S: AsRef<OsStr> + Debug>(
    restic: &Path,
    repo: impl AsRef<OsStr>,
    args: &[S],
) -> Output {
    restic_ok(restic_cmd(restic, repo), args)
}

/// The `--dest` URL of a local repository.
pub fn file_url(repo: &Path) -> String {
    format!("file://{}", repo.display())
}

/// snapring with the test password and no tree cache (the trees come from the
/// repository, as on another machine): (exit code, stdout, stderr).
pub fn sr_nocache(args: &[&str]) -> (i32, String, String) {
    let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let out = snapring(
        &a,
        &[("SNAPRING_PASSWORD", PASSWORD), ("SNAPRING_CACHE", "off")],
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `snapring init --dest URL` ([`sr_nocache`]), which must succeed.
pub fn sr_init(url: &str) {
    let (code, out, err) = sr_nocache(&["init", "--dest", url]);
    assert_eq!(code, 0, "{out}\n{err}");
}

/// The arguments of `snapring backup --source SRC --dest URL --json`.
pub fn backup_json_args<'a>(src: &'a Path, url: &'a str) -> [&'a str; 6] {
    [
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        url,
        "--json",
    ]
}

/// `snapring backup --source SRC --dest URL --json` ([`sr_nocache`]), which must exit
/// 0: its report.
pub fn sr_backup_json(src: &Path, url: &str) -> serde_json::Value {
    let (code, out, err) = sr_nocache(&backup_json_args(src, url));
    assert_eq!(code, 0, "backup: {out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// [`sr_backup_json`]'s snapshot id.
pub fn sr_backup_id(src: &Path, url: &str) -> String {
    sr_backup_json(src, url)["snapshot"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The arguments of `snapring restore --dest DEST latest --to TO` (a test appends its
/// own flags: `[&restore_latest(..)[..], &["--json"]].concat()`).
pub fn restore_latest<'a>(dest: &'a str, to: &'a Path) -> [&'a str; 6] {
    [
        "restore",
        "--dest",
        dest,
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]
}

/// Runs snapring with the test password in the environment; returns (code, stdout,
/// stderr).
pub fn sr(args: &[&str]) -> (i32, String, String) {
    let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let out = snapring(&a, &[("SNAPRING_PASSWORD", PASSWORD)]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A repository at `repo`, made by snapring, with one snapshot of `src`: its `--dest`
/// URL.
pub fn repo_of(repo: &Path, src: &Path) -> String {
    let url = file_url(repo);
    for args in [
        &["init", "--dest", &url][..],
        &["backup", "--source", src.to_str().unwrap(), "--dest", &url],
    ] {
        let (code, out, err) = sr(args);
        assert_eq!(code, 0, "{args:?}: {out}\n{err}");
    }
    url
}

/// `n` bytes of xorshift output from `seed` (any seed, 0 too): incompressible content
/// that the chunker cuts differently for each seed.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as u8
        })
        .collect()
}
