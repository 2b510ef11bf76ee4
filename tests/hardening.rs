//! A hostile user's attempts: a store inside the source reached through `..` or a
//! symlink, a prefix that leads out of the source, a notifier that does not exist, a
//! zero backup window, a closed stdout, usage errors (clap's and the handlers' own:
//! a flag's bad value, flags that do not go together), colours in logs that are not on
//! a terminal, and the daemon's JSON logs from its child runs.

mod common;
use common::*;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A temp dir with `src/a/f` and an empty `other/`.
fn setup() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("src/a/f"), b"hello");
    std::fs::create_dir(t.path().join("other")).unwrap();
    let root = t.path().to_path_buf();
    (t, root)
}

/// Every path under `p` (relative), sorted.
fn listing(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = describe(p)
        .into_keys()
        .map(|k| String::from_utf8_lossy(&k).into_owned())
        .collect();
    v.sort();
    v
}

/// `snapring ARGS` run in `dir`, with a timeout (a recursive backup would not end soon).
fn run_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(bin());
    c.current_dir(dir)
        .args(args)
        .env("SNAPRING_CATALOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let watchdog = std::thread::spawn(move || {
        for _ in 0..300 {
            if d2.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
        true
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(!watchdog.join().unwrap(), "snapring {args:?} ran for 30 s");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_store_inside_the_source_through_dotdot_or_a_symlink_is_refused() {
    let (_t, root) = setup();
    std::os::unix::fs::symlink("src", root.join("linktosrc")).unwrap();
    let before = listing(&root.join("src"));
    for dest in [
        "other/../src/store",
        "missing/../src/store",
        "linktosrc/bk",
        "linktosrc/deeper/still/bk",
    ] {
        let (code, _, err) = run_in(
            &root,
            &["backup", "--source", "src", "--dest", dest, "--no-progress"],
        );
        // Given as flags: a usage error (64; 1 before session 27, as a config problem).
        assert_eq!(code, 64, "--dest {dest}: {err}");
        assert!(err.contains("overlap"), "--dest {dest}: {err}");
        assert!(
            err.contains(dest) && err.contains("src"),
            "names both paths: {err}"
        );
        assert_eq!(listing(&root.join("src")), before, "--dest {dest} created");
    }
    // The same through a config job and `--folder`.
    let (code, _, err) = run_in(
        &root,
        &[
            "backup",
            "--source",
            "src",
            "--dest",
            "linktosrc",
            "--folder",
            "bk",
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert_eq!(listing(&root.join("src")), before);
    // A store beside the source is still fine.
    let (code, _, err) = run_in(
        &root,
        &[
            "backup",
            "--source",
            "src",
            "--dest",
            "other/../bk",
            "--no-progress",
        ],
    );
    assert_eq!(code, 0, "{err}");
}

/// A `file://` repository inside the source, or the source inside it or equal to it,
/// is refused on the command line as a store there is and as `config check` refuses it
/// in a job (a repository inside the source: `partial`, with a warning about another
/// mount; the source equal to it: `complete`, the repository backed up into itself).
/// One inside the source that an `--exclude` leaves out is allowed.
#[test]
fn a_file_repository_inside_the_source_or_around_it_is_refused() {
    let (_t, root) = setup();
    let run = |args: &[&str]| {
        let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        snapring(&a, &[("SNAPRING_PASSWORD", "pw-hardening")])
    };
    let r = root.to_str().unwrap();
    let inside = format!("file://{r}/src/repo");
    let out = run(&["init", "--dest", &inside]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let src = format!("{r}/src");
    let repo_dir = format!("{r}/src/repo");
    let snapshots = || {
        std::fs::read_dir(root.join("src/repo/snapshots"))
            .unwrap()
            .count()
    };
    for (source, what) in [
        (&src, "repository inside the source"),
        (&repo_dir, "source = repository"),
    ] {
        let out = run(&[
            "backup",
            "--source",
            source,
            "--dest",
            &inside,
            "--no-progress",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{what}: {err}");
        assert!(
            err.contains("overlap") && err.contains(&inside) && err.contains(source.as_str()),
            "{what}: names both and what is wrong: {err}"
        );
        assert_eq!(snapshots(), 0, "{what}: a snapshot was written");
    }
    // The source inside the repository.
    std::fs::create_dir(root.join("src/repo/data/mine")).unwrap();
    let out = run(&[
        "backup",
        "--source",
        &format!("{repo_dir}/data/mine"),
        "--dest",
        &inside,
    ]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert_eq!(snapshots(), 0);
    std::fs::remove_dir(root.join("src/repo/data/mine")).unwrap();
    // Excluded, the repository inside the source is left out: allowed.
    let out = run(&[
        "backup",
        "--source",
        &src,
        "--dest",
        &inside,
        "--exclude",
        "/repo/",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(snapshots(), 1);
}

#[test]
fn a_prefix_through_a_symlink_out_of_the_source_is_refused() {
    let (_t, root) = setup();
    write(&root.join("other/secret"), b"not in the source");
    std::os::unix::fs::symlink(root.join("other"), root.join("src/out")).unwrap();
    std::os::unix::fs::symlink("../..", root.join("src/a/up")).unwrap();
    for prefix in ["out", "a/up", "a/up/other"] {
        let (code, _, err) = run_in(
            &root,
            &[
                "backup", "--source", "src", "--dest", "bk", "--prefix", prefix,
            ],
        );
        assert_eq!(code, 64, "--prefix {prefix}: {err}");
        assert!(
            err.contains("prefix") && err.contains(prefix),
            "--prefix {prefix}: {err}"
        );
        assert!(!root.join("bk").exists(), "--prefix {prefix} created bk");
    }
    let (code, _, err) = run_in(
        &root,
        &["backup", "--source", "src", "--dest", "bk", "--prefix", "a"],
    );
    assert_eq!(code, 0, "{err}");
}

fn config(root: &Path, extra: &str) -> PathBuf {
    let cfg = root.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.j]\nsource = \"{}\"\ndest = \"{}\"\n{extra}\n[notify.ops]\ntype = \"command\"\ncommand = [\"true\"]\n",
            root.join("src").display(),
            root.join("bk").display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn an_unknown_notifier_fails_config_check_and_the_run() {
    let (_t, root) = setup();
    let cfg = config(&root, "notify = [\"ops\", \"nope\"]");
    let c = cfg.to_str().unwrap();
    let (code, out, err) = run_in(&root, &["config", "check", c]);
    assert_eq!(code, 1, "{out}{err}");
    for part in ["c.toml:4:18: job.j.notify:", "\"nope\"", "defined: ops"] {
        assert!(out.contains(part), "config check names {part}: {out}");
    }
    let (code, out, err) = run_in(&root, &["run", "j", "--config", c, "--no-progress"]);
    assert_eq!(code, 1, "{out}{err}");
    for part in ["c.toml:4:18: job.j.notify:", "\"nope\"", "defined: ops"] {
        assert!(err.contains(part), "run names {part}: {err}");
    }
    assert!(!root.join("bk").exists(), "the run started anyway");
    let (code, _, err) = run_in(
        &root,
        &["backup", "--config", c, "--job", "j", "--no-progress"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("\"nope\""), "{err}");
}

#[test]
fn a_zero_window_is_rejected() {
    let (_t, root) = setup();
    let cfg = config(&root, "window = \"0s\"");
    let c = cfg.to_str().unwrap();
    let (code, out, err) = run_in(&root, &["config", "check", c]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("c.toml:4:") && out.contains("window must be at least 1s"),
        "{out}"
    );
    let (code, _, err) = run_in(&root, &["run", "j", "--config", c, "--no-progress"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("window"), "{err}");
    assert!(!root.join("bk").exists());
    // On the command line it is a usage error (64); in the file, a config error (1).
    for w in ["0m", "0h0s"] {
        let (code, _, err) = run_in(
            &root,
            &["backup", "--source", "src", "--dest", "bk", "--window", w],
        );
        assert_eq!(code, 64, "--window {w}: {err}");
        assert!(err.contains(&format!("'{w}' for '--window")), "{err}");
    }
    // `next --count` past 10,000 is a usage error: it reserved room for the count at
    // once and aborted, out of memory, at 10^11 (exit 134).
    for n in ["100000000000", "0"] {
        let (code, _, err) = run_in(&root, &["next", "--schedule", "@hourly", "--count", n]);
        assert_eq!(code, 64, "--count {n}: {err}");
        assert!(err.contains("--count"), "{err}");
    }
    let mut o = snapring::engine::BackupOptions::new(root.join("src"), root.join("bk"));
    o.window = Some(std::time::Duration::from_millis(500));
    assert!(o.validate().is_err(), "a sub-second window");
    o.window = Some(std::time::Duration::from_secs(1));
    o.validate().unwrap();
}

/// `snapring ARGS` with stdout a pipe nobody reads any more (`| head -1` after `head`
/// exited): every write fails with EPIPE. Returns (exit code, stderr).
fn with_closed_stdout(args: &[&OsStr], catalog: &Path) -> (i32, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(bin())
        .args(args)
        .env("SNAPRING_CATALOG", catalog)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_stops_the_output_quietly_and_keeps_the_exit_code() {
    let (_t, root) = setup();
    let catalog = root.join("cat.db");
    let (src, bk) = (root.join("src"), root.join("bk"));
    let cfg = config(&root, "schedule = \"@daily\"");
    let s = |p: &Path| p.as_os_str().to_owned();
    let o = |x: &str| OsStr::new(x).to_owned();
    let backup = [
        o("backup"),
        o("--source"),
        s(&src),
        o("--dest"),
        s(&bk),
        o("--no-progress"),
    ];
    for json in [false, true] {
        let mut args: Vec<&OsStr> = backup.iter().map(|a| a.as_os_str()).collect();
        if json {
            args.push(OsStr::new("--json"));
        }
        let (code, err) = with_closed_stdout(&args, &catalog);
        assert_eq!(code, 0, "backup --json={json}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let runs: Vec<String> = std::fs::read_dir(bk.join(".snapring/runs"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .replace(".json", "")
        })
        .collect();
    assert_eq!(runs.len(), 2, "both backups ran: {runs:?}");
    let commands: Vec<Vec<std::ffi::OsString>> = vec![
        vec![o("history")],
        vec![o("history"), o("--json")],
        vec![o("show"), o(&runs[0])],
        vec![o("show"), o(&runs[0]), o("--json")],
        vec![o("stats")],
        vec![o("stats"), o("--json")],
        vec![o("list"), o("--dest"), s(&bk)],
        vec![o("list"), o("--dest"), s(&bk), o("--json")],
        vec![o("diff"), o("--dest"), s(&bk), o("daily.1"), o("daily.0")],
        vec![
            o("diff"),
            o("--dest"),
            s(&bk),
            o("daily.1"),
            o("daily.0"),
            o("--json"),
        ],
        vec![o("verify"), o("--dest"), s(&bk)],
        vec![o("history"), o("a/f"), o("--dest"), s(&bk)],
        vec![
            o("next"),
            o("--schedule"),
            o("@hourly"),
            o("--count"),
            o("500"),
        ],
        vec![
            o("next"),
            o("--schedule"),
            o("@hourly"),
            o("--count"),
            o("500"),
            o("--json"),
        ],
        vec![o("next"), o("--job"), o("j"), o("--config"), s(&cfg)],
        vec![o("config"), o("check"), s(&cfg)],
        vec![o("--help")],
        vec![o("--version")],
    ];
    for c in &commands {
        let args: Vec<&OsStr> = c.iter().map(|a| a.as_os_str()).collect();
        let (code, err) = with_closed_stdout(&args, &catalog);
        assert!(!err.contains("panicked"), "{c:?}: {err}");
        assert_eq!(code, 0, "{c:?}: {err}");
    }
}

/// `--help`, `--version`, `help CMD` and `CMD --help` whose stdout cannot be written
/// (`>/dev/full`: ENOSPC) exit 1 saying so, as any command's write error on stdout does
/// (README, "Exit codes"); a closed pipe stays quiet and 0 (the test above). Before,
/// they exited 0 silently: the help was lost and nothing said so.
#[test]
fn help_and_version_that_cannot_be_written_exit_1() {
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    for args in [
        &["--help"][..],
        &["--version"],
        &["help", "backup"],
        &["backup", "--help"],
    ] {
        let out = Command::new(bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(full()))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("snapring: error: cannot write to stdout: No space left on device"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn usage_errors_exit_64_apart_from_partial() {
    let (_t, root) = setup();
    for args in [
        &["--bogus"][..],
        &["backup", "--retain", "many"],
        &["restore"],
        &["nosuchcommand"],
        &["--log-format", "xml", "history"],
    ] {
        let (code, out, err) = run_in(&root, args);
        assert_eq!(code, 64, "{args:?}: {out}{err}");
        assert!(err.contains("error:"), "{err}");
    }
    for args in [&["--help"][..], &["--version"], &["backup", "--help"]] {
        let (code, out, err) = run_in(&root, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!out.is_empty());
    }
    let (_, help, _) = run_in(&root, &["--help"]);
    assert!(
        help.contains("64"),
        "--help documents the exit codes: {help}"
    );
}

/// Mistakes on the command line past clap's own checks are usage errors too (64, not
/// 1), naming the flag and the value, and nothing is written: `backup --retain 0` was a
/// config error (1), `diff` of one snapshot and `next --schedule` with a bad cron
/// expression exited 1. The same mistake in a config file stays a config error (1).
#[test]
fn command_line_mistakes_exit_64_naming_the_flag_and_the_value() {
    let (_t, root) = setup();
    let (code, _, err) = run_in(&root, &["backup", "--source", "src", "--dest", "bk"]);
    assert_eq!(code, 0, "{err}");
    let before = listing(&root.join("bk"));
    let backup = |flag: &'static str, value: &'static str| -> Vec<&'static str> {
        vec!["backup", "--source", "src", "--dest", "bk", flag, value]
    };
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            backup("--retain", "0"),
            &["'0' for '--retain", "at least 1"],
        ),
        (backup("--label", "a/b"), &["'a/b' for '--label"]),
        // `copy --label` as backup's (restic splits tags at commas: this wrote the tag
        // `label=x,store=/evil`, and `''` the tag `label=`).
        (
            vec![
                "copy",
                "--dest",
                "bk",
                "daily.0",
                "--to",
                "file:///nonexistent-copy-label-repo",
                "--label",
                "x,store=/evil",
            ],
            &["'x,store=/evil' for '--label", "letters, digits"],
        ),
        (
            vec![
                "copy",
                "--dest",
                "bk",
                "daily.0",
                "--to",
                "file:///nonexistent-copy-label-repo",
                "--label",
                "",
            ],
            &["'' for '--label", "letters, digits"],
        ),
        (backup("--window", "soon"), &["'soon' for '--window"]),
        (backup("--bwlimit", "fast"), &["'fast' for '--bwlimit"]),
        (backup("--jobs", "5000"), &["'5000' for '--jobs", "4096"]),
        (backup("--prefix", "a/../.."), &["'a/../..' for '--prefix"]),
        (backup("--folder", "../up"), &["'../up' for '--folder"]),
        (
            backup("--pre-command", "'open"),
            &["--pre-command", "unbalanced"],
        ),
        (vec!["backup", "--source", "src"], &["needs --dest"]),
        (
            vec!["diff", "--dest", "bk", "daily.0"],
            &["\"daily.0\" needs a second snapshot", "--against"],
        ),
        (
            vec![
                "diff",
                "--dest",
                "bk",
                "daily.0",
                "daily.0",
                "--against",
                "src",
            ],
            &["not both"],
        ),
        (
            vec!["next", "--schedule", "0 2 * *"],
            &["--schedule \"0 2 * *\"", "5 fields"],
        ),
        (
            vec!["next", "--schedule", "@daily", "--timezone", "Mars/Base"],
            &["--timezone", "\"Mars/Base\""],
        ),
        (
            vec!["next", "--schedule", "@daily", "--at", "soon"],
            &["--at \"soon\""],
        ),
        (vec!["next"], &["--job NAME", "--schedule"]),
        (
            vec!["history", "--catalog", "c.db", "--since", "lately"],
            &["--since \"lately\""],
        ),
        (
            vec!["stats", "--catalog", "c.db", "--since", "lately"],
            &["--since \"lately\""],
        ),
        (vec!["history", "a/f"], &["needs --dest"]),
        (
            vec!["history", "--dest", "bk", "/"],
            &["absolute", "(for example users/alice)"],
        ),
        (
            vec![
                "restore", "--dest", "bk", "daily.0", "--to", "out", "--path", "../x",
            ],
            &["--path ../x"],
        ),
        (
            vec!["--catalog", "off", "show", "x"],
            &["catalog is turned off"],
        ),
    ];
    for (args, said) in &cases {
        let (code, out, err) = run_in(&root, args);
        assert_eq!(code, 64, "{args:?}: {out}{err}");
        for s in *said {
            assert!(err.contains(s), "{args:?}: {s:?} not in {err}");
        }
    }
    assert_eq!(
        listing(&root.join("bk")),
        before,
        "a usage error wrote nothing"
    );
    assert!(!root.join("out").exists());
    // The same value in a config file is the file's error: 1, as documented.
    let cfg = config(&root, "retain = 0");
    let (code, _, err) = run_in(&root, &["run", "j", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("retain must be at least 1"), "{err}");
}

#[test]
fn log_lines_have_no_colours_when_stderr_is_not_a_terminal() {
    let (_t, root) = setup();
    let (code, _, err) = run_in(&root, &["-vv", "backup", "--source", "src", "--dest", "bk"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("INFO"), "there are log lines: {err}");
    assert!(!err.contains('\x1b'), "ANSI escapes in a pipe: {err:?}");
}

/// To a terminal the log lines are coloured, unless `NO_COLOR` is set to anything but
/// the empty string (https://no-color.org: it was ignored). The terminal is a pty
/// `script` (util-linux) makes.
#[test]
fn log_lines_to_a_terminal_have_no_colours_with_no_color_set() {
    let (_t, root) = setup();
    let cmd = format!(
        "{} -vv backup --source src --dest bk --no-progress",
        bin().display()
    );
    let in_pty = |no_color: Option<&str>| {
        let mut c = Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"])
            .current_dir(&root)
            .env("SNAPRING_CATALOG", "off")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let o = c.output().expect("script (util-linux) runs");
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = in_pty(None);
    assert!(
        out.contains("INFO") && out.contains('\x1b'),
        "a terminal gets colours: {out:?}"
    );
    let out = in_pty(Some("1"));
    assert!(out.contains("INFO"), "there are log lines: {out:?}");
    assert!(
        !out.contains('\x1b'),
        "NO_COLOR=1, yet ANSI escapes: {out:?}"
    );
    // Set but empty: as unset.
    assert!(in_pty(Some("")).contains('\x1b'));
}

#[test]
fn the_daemon_passes_its_log_format_to_its_runs() {
    let (_t, root) = setup();
    let cfg = config(&root, "schedule = \"* * * * * *\"");
    let log = root.join("daemon.log");
    let mut child = Command::new(bin())
        .args(["--catalog", "off", "--log-format", "json", "-v", "daemon"])
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !(root.join("bk/daily.0").exists()
        && std::fs::read_to_string(&log).unwrap().contains("run ended"))
    {
        assert!(t0.elapsed().as_secs() < 60, "no run in 60 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{text}"));
    }
    assert!(
        text.contains("backup started"),
        "the run's own lines are there, as JSON: {text}"
    );
}

/// An error names its cause once. A `--dest` or `--to` that is a file printed
/// `cannot open store X: Not a directory (os error 20): Not a directory (os error 20)`.
/// (A `--to` that is a file says so in words of its own: "the restore target is not a
/// directory; give --to a directory".)
#[test]
fn an_error_names_its_cause_once() {
    let (_t, root) = setup();
    assert_eq!(
        run_in(&root, &["backup", "--source", "src", "--dest", "b"]).0,
        0
    );
    for args in [
        &["list", "--dest", "src/a/f"][..],
        &["verify", "--dest", "src/a/f"],
        &["restore", "--dest", "b", "latest", "--to", "src/a/f"],
    ] {
        let (code, _, err) = run_in(&root, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_eq!(
            err.to_lowercase().matches("not a directory").count(),
            1,
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}
