//! `config check` reports every problem of a file at once, one line each at the line
//! and column of the key (`FILE:LINE:COL: KEY: MESSAGE (did you mean `X`?)`), then
//! their count, and exits 1; `run`, `daemon` and `backup --config` refuse the same file
//! with the same list, before anything is written.

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};

fn run_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .current_dir(dir)
        .args(args)
        .env("SNAPRING_CATALOG", "off")
        // `[notify.ops]`'s `url_env` of BAD: `config check` looks for it.
        .env("HOOK", "https://hooks.example.com/x")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Twelve mistakes of nine kinds, across three jobs, a notifier and the top level.
const BAD: &str = r#"catalog = "catalog.db"

[job.home]
source = "src"
dest = "ROOT/bk"
retian = 3
window = "0s"
schedule = "0 0 31 2 *"
notify = ["ops", "opps"]
label = "da ily"

[job.efs]
dest = "ROOT/bk2"
retain = 0
jobs = "8"
  exclude = ["*.tmp", "a["]

[job.inside]
source = "ROOT/src"
dest = "ROOT/src/backups"
timezone = "Mars/Base"

[notify.ops]
type = "webhook"
url_env = "HOOK"
fromat = "slack"

[notfy.x]
type = "command"
"#;

/// (line:col, key, part of the message), in file order.
const WANT: &[(&str, &str, &str)] = &[
    (
        "1:1",
        "catalog",
        "\"catalog.db\" is a relative path; give an absolute one",
    ),
    ("4:1", "job.home.source", "\"src\" is a relative path"),
    (
        "6:1",
        "job.home.retian",
        "unknown key (did you mean `retain`?)",
    ),
    ("7:1", "job.home.window", "window must be at least 1s"),
    ("8:1", "job.home.schedule", "it never fires"),
    (
        "9:18",
        "job.home.notify",
        "no [notify.opps] table (defined: ops) (did you mean `ops`?)",
    ),
    ("10:1", "job.home.label", "label \"da ily\" is not valid"),
    ("12:6", "job.efs", "no source: set source ="),
    ("14:1", "job.efs.retain", "retain must be at least 1"),
    (
        "15:1",
        "job.efs.jobs",
        "must be an integer (e.g. jobs = 64), not a string",
    ),
    ("16:23", "job.efs.exclude", "unclosed character class"),
    ("20:1", "job.inside.dest", "overlap"),
    (
        "21:1",
        "job.inside.timezone",
        "unknown time zone \"Mars/Base\"",
    ),
    (
        "26:1",
        "notify.ops.fromat",
        "unknown key (did you mean `format`?)",
    ),
    ("28:2", "notfy", "unknown key (did you mean `notify`?)"),
];

/// The problem lines in `text` for `cfg`, checked against `want` in order.
fn assert_lines(text: &str, cfg: &str, want: &[&(&str, &str, &str)]) {
    let got: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{cfg}:")) && l.matches(':').count() >= 3)
        .collect();
    assert_eq!(got.len(), want.len(), "{text}");
    for (line, (at, key, what)) in got.iter().zip(want) {
        let head = format!("{cfg}:{at}: {key}: ");
        assert!(
            line.starts_with(&head) && line.contains(what),
            "expected {head}…{what}\n got {line}\nin:\n{text}"
        );
    }
}

#[test]
fn config_check_reports_every_mistake_at_its_key() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(&root.join("src/f"), b"x");
    std::fs::write(
        root.join("c.toml"),
        BAD.replace("ROOT", &root.to_string_lossy()),
    )
    .unwrap();

    let (code, out, err) = run_in(root, &["config", "check", "c.toml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_lines(&out, "c.toml", &WANT.iter().collect::<Vec<_>>());
    assert_eq!(out.lines().last(), Some("c.toml: 15 problems"), "{out}");

    // `run` and the daemon refuse the file with the same list; `backup --config` too,
    // but for the missing source, which a flag could give.
    for args in [
        &["run", "home", "--config", "c.toml"][..],
        &["daemon", "--config", "c.toml"][..],
    ] {
        let (code, out, err) = run_in(root, args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(err.contains("c.toml has 15 problems:"), "{args:?}: {err}");
        assert_lines(&err, "c.toml", &WANT.iter().collect::<Vec<_>>());
    }
    let (code, _, err) = run_in(
        root,
        &[
            "backup",
            "--config",
            "c.toml",
            "--job",
            "home",
            "--no-progress",
        ],
    );
    assert_eq!(code, 1, "{err}");
    let not_missing: Vec<_> = WANT.iter().filter(|w| w.1 != "job.efs").collect();
    assert_lines(&err, "c.toml", &not_missing);
    for d in ["bk", "bk2", "src/backups", "catalog.db"] {
        assert!(!root.join(d).exists(), "{d} was created");
    }
}

/// Fixed, the same file checks clean and runs.
#[test]
fn a_corrected_config_checks_clean_and_runs() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(&root.join("src/f"), b"x");
    let good = BAD
        .replace("\"catalog.db\"", "\"ROOT/catalog.db\"")
        .replace("source = \"src\"", "source = \"ROOT/src\"")
        .replace("retian = 3", "retain = 3")
        .replace("window = \"0s\"", "window = \"3h\"")
        .replace("0 0 31 2 *", "0 2 * * *")
        .replace("\"ops\", \"opps\"", "\"ops\"")
        .replace("da ily", "daily")
        .replace("[job.efs]\n", "[job.efs]\nsource = \"ROOT/src\"\n")
        .replace("retain = 0", "retain = 1")
        .replace("jobs = \"8\"", "jobs = 8")
        .replace("\"a[\"", "\"a[]]\"")
        .replace("dest = \"ROOT/src/backups\"", "dest = \"ROOT/bk3\"")
        .replace("Mars/Base", "Europe/Berlin")
        .replace("fromat", "format")
        .replace("[notfy.x]\ntype = \"command\"\n", "")
        .replace("ROOT", &root.to_string_lossy());
    std::fs::write(root.join("c.toml"), good).unwrap();
    let (code, out, err) = run_in(root, &["config", "check", "c.toml"]);
    assert_eq!((code, out.trim()), (0, "c.toml: ok"), "{err}");
    let (code, out, err) = run_in(root, &["run", "efs", "--config", "c.toml", "--no-progress"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(root.join("bk2/daily.0/f").exists());
}

/// Notifiers that could never deliver passed the check: a webhook `url` without a
/// scheme, a `to` that is no address, a `timeout` of 0s (every attempt failing at
/// once). Each was found only when a run failed and its notification failed with it.
/// They are problems at their key now, as `hook_timeout = "0s"` is.
#[test]
fn notifiers_that_could_never_deliver_are_problems_at_their_key() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(&root.join("src/f"), b"x");
    let cfg = r#"[job.home]
source = "ROOT/src"
dest = "ROOT/bk"
notify = ["hook", "mail", "cmd"]

[notify.hook]
type = "webhook"
url = "hooks.example.com/T0KEN-SECRET"
timeout = "0s"

[notify.mail]
type = "email"
smtp_host = "smtp.example.com"
from = "snapring"
to = ["ops@example.com", "ops at example.com"]

[notify.cmd]
type = "command"
command = ["", "--page"]
"#;
    std::fs::write(
        root.join("c.toml"),
        cfg.replace("ROOT", &root.to_string_lossy()),
    )
    .unwrap();
    let (code, out, err) = run_in(root, &["config", "check", "c.toml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_lines(
        &out,
        "c.toml",
        &[
            &("8:1", "notify.hook.url", "not a URL"),
            &("9:1", "notify.hook.timeout", "at least 1s"),
            &("14:1", "notify.mail.from", "from \"snapring\""),
            &("15:1", "notify.mail.to", "to \"ops at example.com\""),
            &("19:1", "notify.cmd.command", "needs command"),
        ],
    );
    assert!(!out.contains("T0KEN-SECRET"), "{out}");
}

/// Two jobs writing one store with one label from two sources: a problem at the second
/// job's `dest`, whose retention would expire the first's snapshots (`config check`
/// said ok, and a `retain = 1` job deleted the other's three snapshots). The same
/// store with another label is a weekly beside a daily, and one source with one
/// `retain` in two jobs (a scheduled one and a manual one) is one history: both fine.
#[test]
fn two_jobs_on_one_store_and_label_are_a_problem() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(&root.join("src/f"), b"x");
    write(&root.join("src2/f"), b"x");
    std::fs::write(
        root.join("c.toml"),
        "[job.keep7]\nsource = \"ROOT/src\"\ndest = \"ROOT/bk\"\nretain = 7\n\n\
         [job.keep1]\nsource = \"ROOT/src2\"\ndest = \"ROOT/bk/\"\nretain = 1\n\n\
         [job.weekly]\nsource = \"ROOT/src\"\ndest = \"ROOT/bk\"\nlabel = \"weekly\"\n\n\
         [job.nightly]\nsource = \"ROOT/src\"\ndest = \"ROOT/bk2\"\nretain = 7\n\n\
         [job.manual]\nsource = \"ROOT/./src\"\ndest = \"ROOT/bk2/x/..\"\nretain = 7\n"
            .replace("ROOT", &root.to_string_lossy()),
    )
    .unwrap();
    let (code, out, err) = run_in(root, &["config", "check", "c.toml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_lines(
        &out,
        "c.toml",
        &[&(
            "3:1",
            "job.keep7.dest",
            &format!(
                "job.keep1 writes the same store ({}/bk) with the same label (daily) from another source",
                root.display()
            ),
        )],
    );
}

/// A `file://` repository with two slashes is a relative path: a problem at its key.
/// It passed the check, and every run failed ("expected file:///ABSOLUTE/PATH").
#[test]
fn a_file_repository_with_a_relative_path_is_a_problem() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    std::fs::write(
        root.join("c.toml"),
        "[job.r]\nsource = \"/srv\"\ndest = \"file://repo\"\n",
    )
    .unwrap();
    let (code, out, err) = run_in(root, &["config", "check", "c.toml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_lines(
        &out,
        "c.toml",
        &[&("3:1", "job.r.dest", "file:///ABSOLUTE/PATH (three slashes)")],
    );
}

/// restic's S3 syntax as a job's `dest` is named for what it is, with snapring's form
/// to write instead. It was "is a relative path; give an absolute one": true, but no
/// help to someone who copied the URL from restic.
#[test]
fn restic_s3_syntax_as_a_dest_names_the_form_to_write() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    std::fs::write(
        root.join("c.toml"),
        "[job.r]\nsource = \"/srv\"\ndest = \"s3:http://127.0.0.1:9000/bucket/p\"\n",
    )
    .unwrap();
    let (code, out, err) = run_in(root, &["config", "check", "c.toml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_lines(
        &out,
        "c.toml",
        &[&(
            "3:1",
            "job.r.dest",
            "is restic's repository syntax; snapring names an S3 repository s3://BUCKET/PREFIX and reads the endpoint from the environment: write dest = \"s3://bucket/p\" and run with AWS_ENDPOINT_URL=http://127.0.0.1:9000",
        )],
    );
}

/// `catalog = "off"` in the file turns the catalog off, as `--catalog off` does. It
/// was taken for a path: a SQLite file named `off` in whatever directory the run
/// started from.
#[test]
fn catalog_off_in_the_file_turns_the_catalog_off() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(&root.join("src/f"), b"x");
    let cfg = format!(
        "catalog = \"off\"\n[job.home]\nsource = \"{0}/src\"\ndest = \"{0}/bk\"\n",
        root.display()
    );
    std::fs::write(root.join("c.toml"), cfg).unwrap();
    let out = Command::new(bin())
        .current_dir(root)
        .args(["run", "home", "--config", "c.toml", "--no-progress"])
        .env_remove("SNAPRING_CATALOG")
        .env("HOME", root.join("home"))
        .env("XDG_STATE_HOME", root.join("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(root.join("bk/daily.0/f").exists());
    assert!(!root.join("off").exists(), "a catalog file named off");
    assert!(
        !root.join("state").exists(),
        "the default catalog was opened"
    );
}

/// Two jobs on one store through a symlink (or a bind mount) are one store: the check
/// compared the paths by name only, said ok, and the `retain = 2` job expired the
/// other's snapshots.
#[test]
fn two_jobs_on_one_store_through_a_symlink_are_a_problem() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(&root.join("src/f"), b"x");
    std::fs::create_dir(root.join("bk")).unwrap();
    std::os::unix::fs::symlink(root.join("bk"), root.join("bklink")).unwrap();
    std::fs::write(
        root.join("c.toml"),
        "[job.a]\nsource = \"ROOT/src\"\ndest = \"ROOT/bk\"\nfolder = \"fs1\"\nretain = 7\n\n\
         [job.b]\nsource = \"ROOT/src\"\ndest = \"ROOT/bklink\"\nfolder = \"fs1\"\nretain = 2\n"
            .replace("ROOT", &root.to_string_lossy()),
    )
    .unwrap();
    let (code, out, err) = run_in(root, &["config", "check", "c.toml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_lines(
        &out,
        "c.toml",
        &[&("9:1", "job.b.dest", "job.a writes the same store")],
    );
}

/// `pre_command = []` or `post_command = [""]` passed the check (and a daemon reload),
/// and every run then failed with "post_command is empty", naming neither file nor job,
/// recorded nowhere. It is a problem at its key now, so a reload keeps the last good
/// config.
#[test]
fn an_empty_hook_is_a_problem_at_its_key() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(&root.join("src/f"), b"x");
    std::fs::write(
        root.join("c.toml"),
        "[job.a]\nsource = \"ROOT/src\"\ndest = \"ROOT/bk\"\npre_command = []\n\n\
         [job.b]\nsource = \"ROOT/src\"\ndest = \"ROOT/bk2\"\npost_command = [\"\", \"x\"]\n\n\
         [job.c]\nsource = \"ROOT/src\"\ndest = \"ROOT/bk3\"\npost_command = [\"/bin/true\", \"\"]\n"
            .replace("ROOT", &root.to_string_lossy()),
    )
    .unwrap();
    let (code, out, err) = run_in(root, &["config", "check", "c.toml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_lines(
        &out,
        "c.toml",
        &[
            &("4:1", "job.a.pre_command", "pre_command has no program"),
            &("9:1", "job.b.post_command", "post_command has no program"),
        ],
    );
    let (code, out, err) = run_in(root, &["run", "c", "--config", "c.toml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("c.toml has 2 problems:"), "{err}");
    assert!(!root.join("bk3").exists());
}

/// A repository `dest` skipped the checks a store gets: a `file://` repository inside
/// the source passed, and so did two jobs of one source on one repository with two
/// `retain`s, where the `retain = 1` job's forget removed the other's snapshots. Jobs of
/// two sources on one repository are two histories there (forget groups by paths), and
/// `s3://b/p/` is `s3://b/p`.
#[test]
fn a_repository_gets_the_checks_a_store_gets() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(&root.join("src/f"), b"x");
    write(&root.join("src2/f"), b"x");
    std::fs::write(
        root.join("c.toml"),
        "[job.inside]\nsource = \"ROOT/src\"\ndest = \"file://ROOT/src/repo\"\n\n\
         [job.keep5]\nsource = \"ROOT/src\"\ndest = \"file://ROOT/repo\"\nretain = 5\n\n\
         [job.keep1]\nsource = \"ROOT/./src\"\ndest = \"file://ROOT/repo/\"\nretain = 1\n\n\
         [job.other]\nsource = \"ROOT/src2\"\ndest = \"file://ROOT/repo\"\nretain = 1\n\n\
         [job.s3a]\nsource = \"ROOT/src\"\ndest = \"s3://bucket/p\"\nretain = 5\n\n\
         [job.s3b]\nsource = \"ROOT/src\"\ndest = \"s3://bucket/p/\"\nretain = 2\n\n\
         [job.s3c]\nsource = \"ROOT/src\"\ndest = \"s3://bucket/q\"\nretain = 2\n"
            .replace("ROOT", &root.to_string_lossy()),
    )
    .unwrap();
    let (code, out, err) = run_in(root, &["config", "check", "c.toml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_lines(
        &out,
        "c.toml",
        &[
            &("3:1", "job.inside.dest", "overlap"),
            &(
                "7:1",
                "job.keep5.dest",
                "job.keep1 writes the same repository (file://",
            ),
            &(
                "27:1",
                "job.s3b.dest",
                "job.s3a writes the same repository (s3://bucket/p) from the same source",
            ),
        ],
    );
}

/// `config check /dev/zero` read until memory ran out. A config file is read only if
/// it is a regular file, of at most 16 MiB.
#[test]
fn a_config_that_is_no_regular_file_or_too_big_is_refused_unread() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let (code, out, err) = run_in(root, &["config", "check", "/dev/zero"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        (out.clone() + &err).contains("/dev/zero")
            && (out.clone() + &err).contains("not a regular file"),
        "{out}{err}"
    );
    let big = std::fs::File::create(root.join("big.toml")).unwrap();
    big.set_len(17 << 20).unwrap();
    let (code, out, err) = run_in(root, &["config", "check", "big.toml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        (out.clone() + &err).contains("big.toml: larger than 16 MiB"),
        "{out}{err}"
    );
    let (code, _, err) = run_in(root, &["run", "a", "--config", "/dev/zero"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a regular file"), "{err}");
}

/// A job named "" passed, and every run of it failed. (Other names, newlines and
/// quotes too, are escaped where shown: tests/notify_hostile.rs, tests/serve.rs.)
#[test]
fn an_empty_job_name_is_a_problem() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(&root.join("src/f"), b"x");
    std::fs::write(
        root.join("c.toml"),
        "[job.\"\"]\nsource = \"ROOT/src\"\ndest = \"ROOT/bk\"\n"
            .replace("ROOT", &root.to_string_lossy()),
    )
    .unwrap();
    let (code, out, err) = run_in(root, &["config", "check", "c.toml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_lines(
        &out,
        "c.toml",
        &[&("1:6", "job.\"\"", "a job's name is empty")],
    );
}

/// What a repository check must not refuse: a `file://` repository inside the source
/// that the job excludes (the run leaves it out, complete), and a job without `retain`
/// beside one with it on the same repository and source (a run without `retain`
/// forgets nothing there: a manual job beside a scheduled one, docs/daemon.md).
#[test]
fn a_repository_excluded_from_its_source_or_a_job_without_retain_passes() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(&root.join("src/f"), b"x");
    std::fs::write(
        root.join("c.toml"),
        "[job.excluded]\nsource = \"ROOT/src\"\ndest = \"file://ROOT/src/repo\"\nexclude = [\"/repo\"]\n\n\
         [job.below]\nsource = \"ROOT/src\"\ndest = \"file://ROOT/src/cache/repo\"\nexclude = [\"cache/\"]\n\n\
         [job.nightly]\nsource = \"ROOT/src\"\ndest = \"file://ROOT/repo\"\nretain = 14\n\n\
         [job.manual]\nsource = \"ROOT/src\"\ndest = \"file://ROOT/repo/\"\n"
            .replace("ROOT", &root.to_string_lossy()),
    )
    .unwrap();
    let (code, out, err) = run_in(root, &["config", "check", "c.toml"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// `SNAPRING_CONFIG=` (set but empty, as a unit file's `Environment=SNAPRING_CONFIG=`
/// leaves it) made clap say "a value is required for '--config <CONFIG>'" of a
/// `--config` nobody gave. Empty is unset now, as `SNAPRING_CATALOG=` already was: the
/// default file is used (and named when it is missing), or the one on the command line.
#[test]
fn an_empty_snapring_config_is_unset() {
    let t = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(bin())
            .current_dir(t.path())
            .args(args)
            .env("SNAPRING_CATALOG", "off")
            .env("SNAPRING_CONFIG", "")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["run", "home"]);
    assert!(!err.contains("a value is required"), "{err}");
    assert!(err.contains("/etc/snapring/snapring.toml"), "{err}");
    assert_ne!(code, 0, "{err}");
    std::fs::create_dir(t.path().join("src")).unwrap();
    write(&t.path().join("src/f"), b"x");
    std::fs::write(
        t.path().join("c.toml"),
        format!(
            "[job.home]\nsource = {:?}\ndest = {:?}\nlabel = \"daily\"\nretain = 2\n",
            t.path().join("src"),
            t.path().join("bk")
        ),
    )
    .unwrap();
    let (code, err) = run(&["run", "home", "--config", "c.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(t.path().join("bk/daily.0/f").exists(), "{err}");
}

/// A path that is not UTF-8 written into a config file (a Latin-1 directory name): the
/// file is refused saying that TOML is UTF-8 and where, and what to do instead; it was
/// "stream did not contain valid UTF-8".
#[test]
fn a_config_with_a_path_that_is_not_utf8_says_toml_cannot_hold_it() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("latin1.toml");
    std::fs::write(
        &cfg,
        b"[job.a]\ndest = \"/srv/backup\"\nsource = \"/mnt/caf\xe9\"\n",
    )
    .unwrap();
    for args in [
        vec!["config", "check", "latin1.toml"],
        vec!["backup", "--config", "latin1.toml"],
    ] {
        let (code, out, err) = run_in(t.path(), &args);
        let err = out + &err;
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("latin1.toml: line 3 is not UTF-8; a TOML file is UTF-8 text")
                && err.contains("--source"),
            "{args:?}: {err}"
        );
    }
}

/// A notifier whose secret is not there where `config check` runs: a `url_env` that
/// names an unset variable, a `url_file` or `password_file` that does not exist, a
/// `url_file` that holds no URL. Each is a problem at its key, as a missing
/// `exclude_from` file is (the check said ok, and a failed run's alert was never sent).
#[test]
fn a_notifier_secret_not_found_here_is_a_problem_at_its_key() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(&root.join("src/f"), b"x");
    write(&root.join("not-a-url"), b"hooks.example.com/T0KEN\n");
    let cfg = r#"[job.home]
source = "ROOT/src"
dest = "ROOT/bk"
notify = ["env", "file", "mail", "bad"]

[notify.env]
type = "webhook"
url_env = "SNAPRING_TEST_NO_SUCH_VARIABLE"

[notify.file]
type = "webhook"
url_file = "ROOT/no-such-file"

[notify.mail]
type = "email"
smtp_host = "smtp.example.com"
username = "u"
password_file = "ROOT/no-such-password"
from = "snapring@example.com"
to = ["ops@example.com"]

[notify.bad]
type = "webhook"
url_file = "ROOT/not-a-url"
"#;
    std::fs::write(
        root.join("c.toml"),
        cfg.replace("ROOT", &root.to_string_lossy()),
    )
    .unwrap();
    let (code, out, err) = run_in(root, &["config", "check", "c.toml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_lines(
        &out,
        "c.toml",
        &[
            &(
                "8:1",
                "notify.env.url_env",
                "environment variable SNAPRING_TEST_NO_SUCH_VARIABLE is not set",
            ),
            &("12:1", "notify.file.url_file", "cannot read"),
            &("18:1", "notify.mail.password_file", "cannot read"),
            &("24:1", "notify.bad.url_file", "give https://HOST/PATH"),
        ],
    );
    assert!(!out.contains("T0KEN"), "{out}");
    // A run is not refused for them: the notifier fails when it is tried.
    let (code, out, err) = run_in(
        root,
        &["run", "home", "--config", "c.toml", "--no-progress"],
    );
    assert_eq!(code, 0, "{out}{err}");
    // With the secrets there, the check is clean.
    write(&root.join("no-such-file"), b"https://hooks.example.com/x\n");
    write(&root.join("no-such-password"), b"pw\n");
    write(&root.join("not-a-url"), b"https://hooks.example.com/y\n");
    let out = Command::new(bin())
        .current_dir(root)
        .args(["config", "check", "c.toml"])
        .env("SNAPRING_CATALOG", "off")
        .env(
            "SNAPRING_TEST_NO_SUCH_VARIABLE",
            "https://hooks.example.com/z",
        )
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        (out.status.code(), said.trim()),
        (Some(0), "c.toml: ok"),
        "{said}"
    );
}

/// A `command` notifier whose program is not there, or not executable, or a bare name
/// not on `PATH`, passed `config check`: every failure notice then failed three times
/// and nobody was told. Each is a problem at its `command` key, as a missing
/// `password_file` is; a run is not refused for it.
#[test]
fn a_command_notifiers_program_not_found_here_is_a_problem_at_its_key() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(&root.join("src/f"), b"x");
    write(&root.join("nox.sh"), b"#!/bin/sh\nexit 0\n");
    std::fs::set_permissions(root.join("nox.sh"), std::fs::Permissions::from_mode(0o644)).unwrap();
    write(&root.join("ok.sh"), b"#!/bin/sh\nexit 0\n");
    std::fs::set_permissions(root.join("ok.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = r#"[job.home]
source = "ROOT/src"
dest = "ROOT/bk"
notify = ["gone", "nox", "dir", "bare", "ok", "sh"]

[notify.gone]
type = "command"
command = ["ROOT/nope.sh"]

[notify.nox]
type = "command"
command = ["ROOT/nox.sh", "x"]

[notify.dir]
type = "command"
command = ["ROOT/src"]

[notify.bare]
type = "command"
command = ["snapring-test-no-such-program"]

[notify.ok]
type = "command"
command = ["ROOT/ok.sh"]

[notify.sh]
type = "command"
command = ["sh", "-c", "true"]
"#;
    std::fs::write(
        root.join("c.toml"),
        cfg.replace("ROOT", &root.to_string_lossy()),
    )
    .unwrap();
    let (code, out, err) = run_in(root, &["config", "check", "c.toml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_lines(
        &out,
        "c.toml",
        &[
            &("8:1", "notify.gone.command", "No such file or directory"),
            &("12:1", "notify.nox.command", "cannot be executed"),
            &("16:1", "notify.dir.command", "is not a regular file"),
            &("20:1", "notify.bare.command", "is not found on the PATH"),
        ],
    );
    // A run is not refused for them: the notifier fails when it is tried.
    let (code, out, err) = run_in(
        root,
        &["run", "home", "--config", "c.toml", "--no-progress"],
    );
    assert_eq!(code, 0, "{out}{err}");
}
