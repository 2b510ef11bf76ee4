//! Schedules, the daemon, backup windows and notifications, against real processes, a
//! real HTTP receiver and a real SMTP sink started here, and a real SQLite catalog.

mod common;
use common::*;

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

fn tree(src: &Path, files: usize, size: usize) {
    for i in 0..files {
        write(
            &src.join(format!("d{}/f{i}", i % 4)),
            &vec![b'a' + (i % 26) as u8; size],
        );
    }
}

fn cli(
    catalog: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, serde_json::Value, String, String) {
    let mut a: Vec<&OsStr> = vec!["--catalog".as_ref(), catalog.as_os_str()];
    a.extend(args.iter().map(OsStr::new));
    let out = snapring(&a, env);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn b64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn wait_until(what: &str, secs: u64, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn notifications_reach_a_real_http_server_smtp_sink_and_command() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest, catalog) = (
        t.path().join("src"),
        t.path().join("b"),
        t.path().join("cat.db"),
    );
    tree(&src, 8, 100);
    let (http, smtp) = (
        http_server(),
        smtp_sink("250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"),
    );
    let hook_out = t.path().join("hook.json");
    let cfg = t.path().join("s.toml");
    let write_cfg = |extra: &str, notify_success: bool| {
        std::fs::write(
            &cfg,
            format!(
                r#"
[job.home]
source = "{src}"
dest = "{dest}"
{extra}
notify = ["hook", "mail", "cmd"]
notify_success = {notify_success}

[notify.hook]
type = "webhook"
url_env = "HOOK_URL"

[notify.mail]
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {sport}
tls = "none"
username = "snapring"
password_env = "SMTP_PW"
from = "snapring <snapring@example.com>"
to = ["ops@example.com"]

[notify.cmd]
type = "command"
command = ["/bin/sh", "-c", "cat > {hook}"]
"#,
                src = src.display(),
                dest = dest.display(),
                sport = smtp.port,
                hook = hook_out.display(),
            ),
        )
        .unwrap();
    };
    let url = format!("http://127.0.0.1:{}/hook/T0KEN-SECRET", http.port);
    let env = [("HOOK_URL", url.as_str()), ("SMTP_PW", "pa55-SECRET")];
    let cfgs = cfg.to_str().unwrap();

    // A failed run notifies all three.
    write_cfg("require_mount = true", false);
    let (code, rep, err, _) = cli(&catalog, &["run", "home", "--config", cfgs, "--json"], &env);
    assert_eq!(code, 1, "{err}");
    assert_eq!(rep["status"], "failed");
    let n = rep["notifications"].as_array().unwrap();
    assert!(n.iter().all(|o| o["ok"] == true), "{rep}");
    let hooks = http.got.lock().unwrap().clone();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].0, "/hook/T0KEN-SECRET");
    let body: serde_json::Value = serde_json::from_str(&hooks[0].1).unwrap();
    assert_eq!(body["status"], "failed");
    assert_eq!(body["job"], "home");
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains("home: failed")
            && text.contains("not a mount point")
            && text.contains(".snapring/logs/"),
        "{text}"
    );
    let mails = smtp.mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].contains("Subject: [snapring] home: failed"),
        "{}",
        mails[0]
    );
    assert!(mails[0].contains("files: 0"), "{}", mails[0]);
    assert_eq!(
        smtp.auth.lock().unwrap()[0],
        format!("AUTH PLAIN {}", b64(b"\0snapring\0pa55-SECRET"))
    );
    let piped: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&hook_out).unwrap()).unwrap();
    assert_eq!(piped["id"], rep["id"]);
    // Secrets appear in no log and no output.
    let log = std::fs::read_to_string(dest.join(format!(
        ".snapring/logs/{}.log",
        rep["id"].as_str().unwrap()
    )))
    .unwrap();
    for secret in ["T0KEN-SECRET", "pa55-SECRET"] {
        assert!(
            !log.contains(secret) && !err.contains(secret),
            "{secret} leaked"
        );
    }
    assert!(log.contains("notified hook"), "{log}");

    // Success is quiet unless asked.
    write_cfg("", false);
    let (code, rep, _, _) = cli(&catalog, &["run", "home", "--config", cfgs, "--json"], &env);
    assert_eq!(code, 0);
    assert_eq!(rep["notifications"].as_array().unwrap().len(), 0);
    assert_eq!(http.got.lock().unwrap().len(), 1);
    write_cfg("", true);
    let (code, _, _, _) = cli(&catalog, &["run", "home", "--config", cfgs], &env);
    assert_eq!(code, 0);
    assert_eq!(http.got.lock().unwrap().len(), 2);
    assert_eq!(smtp.mails.lock().unwrap().len(), 2);

    // A dead webhook and a failing command: retried, recorded, status unchanged.
    let dead = "http://127.0.0.1:9/hook/T0KEN-SECRET";
    std::fs::remove_file(&hook_out).unwrap();
    write_cfg("", true);
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("cat > ", "exit 7; "),
    )
    .unwrap();
    let (code, rep, err, _) = cli(
        &catalog,
        &["run", "home", "--config", cfgs, "--json"],
        &[("HOOK_URL", dead), ("SMTP_PW", "pa55-SECRET")],
    );
    assert_eq!(
        code, 0,
        "a notifier must not change the run's outcome: {err}"
    );
    assert_eq!(rep["status"], "complete");
    let n = rep["notifications"].as_array().unwrap();
    let hook = n.iter().find(|o| o["notifier"] == "hook").unwrap();
    assert_eq!(
        (hook["ok"].as_bool(), hook["attempts"].as_u64()),
        (Some(false), Some(3)),
        "{rep}"
    );
    assert!(!hook["error"].as_str().unwrap().contains("T0KEN"), "{hook}");
    let cmd = n.iter().find(|o| o["notifier"] == "cmd").unwrap();
    assert_eq!(cmd["ok"], false);
    assert!(!err.contains("T0KEN-SECRET"));
    // Recorded in the store's run record and the catalog.
    let (_, shown, _, _) = cli(
        &catalog,
        &["show", "--json", rep["id"].as_str().unwrap()],
        &[],
    );
    assert_eq!(shown["report"]["notifications"], rep["notifications"]);
}

/// A job whose run cannot start (its backup file system not mounted, its store in use
/// by another run) exited 1 with the error on stderr and nothing else: no notification
/// (failed runs always notify), no row in the catalog (the dashboard, `history` and
/// `stats` showed the last success), while the daemon's schedule moved on. It is now
/// recorded `failed` in the catalog, with a log beside it, and notified; the exit code
/// and the error stay as they were.
#[test]
fn a_run_that_cannot_start_is_recorded_and_notified() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 4, 10);
    let hook_out = t.path().join("hook.json");
    let cfg = t.path().join("s.toml");
    let write_cfg = |dest: &Path| {
        std::fs::write(
            &cfg,
            format!(
                r#"
[job.home]
source = "{src}"
dest = "{dest}"
notify = ["cmd"]

[notify.cmd]
type = "command"
command = ["/bin/sh", "-c", "cat > {hook}"]
"#,
                src = src.display(),
                dest = dest.display(),
                hook = hook_out.display(),
            ),
        )
        .unwrap();
    };
    let cfgs = cfg.to_str().unwrap();
    let rows = || {
        let (code, rows, err, _) = cli(&catalog, &["history", "--json"], &[]);
        assert_eq!(code, 0, "{err}");
        rows.as_array().unwrap().clone()
    };

    // The backup file system is not mounted: its mount point is missing.
    write_cfg(&t.path().join("mnt/backup"));
    let (code, _, err, _) = cli(&catalog, &["run", "home", "--config", cfgs], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is the backup file system mounted?"), "{err}");
    let notice: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&hook_out).expect("no notification")).unwrap();
    assert_eq!(notice["status"], "failed", "{notice}");
    assert_eq!(notice["job"], "home");
    assert!(
        notice["message"]
            .as_str()
            .unwrap()
            .contains("is the backup file system mounted?"),
        "{notice}"
    );
    let r = rows();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["status"], "failed");
    assert_eq!(r[0]["job"], "home");
    let id = r[0]["id"].as_str().unwrap().to_string();
    let log = t.path().join(format!("logs/{id}.log"));
    let text = std::fs::read_to_string(&log).expect("the run's log beside the catalog");
    assert!(text.contains("could not start"), "{text}");
    assert!(!t.path().join("mnt").exists(), "nothing is created");

    // The store is in use by another run.
    let dest = t.path().join("b");
    write_cfg(&dest);
    std::fs::remove_file(&hook_out).unwrap();
    let first = spawn_paused(&src, &dest, &[], "walk.dir", 1);
    let (code, _, err, _) = cli(&catalog, &["run", "home", "--config", cfgs], &[]);
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("is in use"), "{err}");
    let notice: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&hook_out).expect("no notification")).unwrap();
    assert_eq!(notice["status"], "failed", "{notice}");
    let r = rows();
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[1]["status"], "failed");
    assert_eq!(
        first.resume().0,
        0,
        "the run holding the store is not disturbed"
    );
}

#[test]
fn a_window_that_ends_mid_run_publishes_nothing_and_the_next_run_resumes() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest, catalog) = (
        t.path().join("src"),
        t.path().join("b"),
        t.path().join("cat.db"),
    );
    tree(&src, 40, 4096);
    // Older than the racy margin before the first run: resumable (interrupt.rs).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let http = http_server();
    let cfg = t.path().join("s.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.j]\nsource = \"{}\"\ndest = \"{}\"\njobs = 1\nwindow = \"1s\"\nnotify = [\"hook\"]\n\n[notify.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{}/w\"\n",
            src.display(),
            dest.display(),
            http.port
        ),
    )
    .unwrap();
    let (code, rep, err, _) = cli(
        &catalog,
        &["run", "j", "--config", cfg.to_str().unwrap(), "--json"],
        &[("SNAPRING_FAILPOINTS", "walk.copy=sleep:100")],
    );
    assert_eq!(code, 3, "{err}");
    assert_eq!(rep["status"], "incomplete");
    assert!(
        rep["message"]
            .as_str()
            .unwrap()
            .contains("backup window ended"),
        "{rep}"
    );
    assert!(snapshot_names(&dest).is_empty(), "nothing may be published");
    let copied_first = rep["bytes_transferred"].as_u64().unwrap();
    assert!(copied_first > 0 && copied_first < 40 * 4096, "{rep}");
    // Notified (incomplete always notifies) and recorded.
    let hooks = http.got.lock().unwrap().clone();
    assert_eq!(hooks.len(), 1);
    assert!(hooks[0].1.contains("\"status\":\"incomplete\""));
    let (_, h, _, _) = cli(&catalog, &["history", "--json"], &[]);
    assert_eq!(h[0]["status"], "incomplete");

    // The next run (no window) resumes: it copies only what the first did not.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("window = \"1s\"\n", ""),
    )
    .unwrap();
    let (code, rep, err, _) = cli(
        &catalog,
        &["run", "j", "--config", cfg.to_str().unwrap(), "--json"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let copied_second = rep["bytes_transferred"].as_u64().unwrap();
    assert_eq!(copied_second, 40 * 4096 - copied_first, "{rep}");
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "resumed snapshot",
    );

    // Deleting an expired snapshot is cut off by the window too, after publishing, and
    // finished by the next run.
    for i in 0..12 {
        write(&src.join(format!("many/d{i}/f")), b"x");
    }
    let run = |extra: &[&str], fp: &str| {
        let mut a = vec![
            "--source",
            src.to_str().unwrap(),
            "--dest",
            dest.to_str().unwrap(),
            "--retain",
            "1",
        ];
        a.extend(extra);
        backup(&src, &dest, &a[4..], &[("SNAPRING_FAILPOINTS", fp)])
    };
    let (code, _, err) = run(&[], "");
    assert_eq!(code, 0, "{err}");
    let (code, rep, err) = run(&["--window", "1s", "--jobs", "1"], "trash.dir=sleep:300");
    assert_eq!(code, 0, "published before the window ended: {err}");
    assert_eq!(rep["expired"].as_array().unwrap().len(), 1);
    // The log names the window, not what was left of it when the deletion began.
    assert!(err.contains("backup window of 1s ended"), "{err}");
    let trash = dest.join(".snapring/trash");
    assert!(
        std::fs::read_dir(&trash).unwrap().count() > 0,
        "the window should have cut the deletion short"
    );
    assert!(
        rep["phases"]["remove_expired"]["seconds"].as_f64().unwrap() < 3.0,
        "{rep}"
    );
    let (code, _, _) = run(&[], "");
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0);
}

#[test]
fn an_in_process_daemon_runs_records_skips_overlaps_and_stops_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest, catalog) = (
        t.path().join("src"),
        t.path().join("b"),
        t.path().join("cat.db"),
    );
    tree(&src, 30, 10);
    let cfg = t.path().join("d.toml");
    // Every second; each run takes about 3 s (a slow "file system": 0.6 s per directory),
    // so triggers overlap.
    std::fs::write(
        &cfg,
        format!(
            "[job.every-second]\nsource = \"{}\"\ndest = \"{}\"\njobs = 1\nretain = 50\nschedule = \"* * * * * *\"\n",
            src.display(),
            dest.display()
        ),
    )
    .unwrap();
    let opts = snapring::daemon::DaemonOptions {
        config: cfg.clone(),
        exe: bin(),
        catalog: Some(catalog.clone()),
        catalog_on_nfs: false,
        tick: Duration::from_millis(50),
        env: vec![("SNAPRING_FAILPOINTS".into(), "walk.dir=sleep:600".into())],
        run_args: vec![],
    };
    let stop = AtomicBool::new(false);
    let reload = AtomicBool::new(false);
    let summary = std::thread::scope(|s| {
        let h = s.spawn(|| snapring::daemon::run(&opts, &stop, &reload));
        // Let it finish one run and start another, then stop it mid-run.
        wait_until("a published snapshot", 60, || dest.join("daily.0").exists());
        // Records only: a record being rewritten has a temporary file beside it.
        wait_until("a second run", 60, || {
            std::fs::read_dir(dest.join(".snapring/runs"))
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                        .count()
                })
                .unwrap_or(0)
                >= 2
        });
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap().unwrap()
    });
    assert!(summary.started >= 2, "{summary:?}");
    assert!(
        summary.skipped >= 1,
        "overlapping triggers must be skipped: {summary:?}"
    );

    let (_, h, _, _) = cli(&catalog, &["history", "--json"], &[]);
    let runs = h.as_array().unwrap();
    assert_eq!(runs.len() as u64, summary.started, "{h}");
    // Never two runs at once.
    for w in runs.windows(2) {
        assert!(
            w[0]["finished_at"].as_str().unwrap() <= w[1]["started_at"].as_str().unwrap(),
            "runs overlap: {h}"
        );
    }
    // The run that was going when the daemon stopped is incomplete, not half-published.
    let last = runs.last().unwrap();
    assert_eq!(last["status"], "incomplete", "{h}");
    let complete = runs.iter().filter(|r| r["status"] == "complete").count();
    assert_eq!(snapshot_names(&dest).len(), complete);
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "daemon snapshot",
    );
    // Skips are recorded.
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    let skipped = c
        .events(Some("every-second"))
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "skipped")
        .count();
    assert_eq!(skipped as u64, summary.skipped);
}

#[test]
fn the_daemon_binary_stops_on_sigterm_and_reloads_on_sighup() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest, catalog) = (
        t.path().join("src"),
        t.path().join("b"),
        t.path().join("cat.db"),
    );
    tree(&src, 30, 10);
    let cfg = t.path().join("d.toml");
    let body = |sched: &str| {
        format!(
            "[job.j]\nsource = \"{}\"\ndest = \"{}\"\njobs = 1\nschedule = \"{sched}\"\n",
            src.display(),
            dest.display()
        )
    };
    std::fs::write(&cfg, body("*/2 * * * * *")).unwrap();
    let mut child = Command::new(bin())
        .args(["--catalog"])
        .arg(&catalog)
        .args(["daemon", "--config"])
        .arg(&cfg)
        .env("SNAPRING_FAILPOINTS", "walk.copy=sleep:200")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    wait_until("a run to start", 30, || {
        std::fs::read_dir(dest.join(".snapring/runs"))
            .map(|d| d.count())
            .unwrap_or(0)
            >= 1
    });
    // A bad config on SIGHUP is refused; the daemon keeps going.
    std::fs::write(&cfg, body("not a schedule")).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "a bad reload must not stop the daemon"
    );
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let t0 = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(t0.elapsed() < Duration::from_secs(30));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("reload failed"), "{err}");
    let (_, h, _, _) = cli(&catalog, &["history", "--json"], &[]);
    for r in h.as_array().unwrap() {
        assert_ne!(r["status"], "running", "{h}");
    }
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    let kinds: Vec<String> = c
        .events(None)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds.contains(&"reload-failed".to_string())
            && kinds.last().map(String::as_str) == Some("stop"),
        "{kinds:?}"
    );
}

/// A reload that fails keeps the running configuration, and so do the runs. Each run
/// is a child that read the config file again: with the file broken (mid-edit, or a
/// bad edit the reload refused) or gone, every scheduled run failed at once, with no
/// row in the catalog and no notification, while the daemon said it kept the running
/// configuration. Runs now get the text the daemon loaded.
#[test]
fn runs_keep_the_running_configuration_when_the_file_breaks() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest, catalog) = (
        t.path().join("src"),
        t.path().join("b"),
        t.path().join("cat.db"),
    );
    tree(&src, 4, 10);
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.j]\nsource = \"{}\"\ndest = \"{}\"\nschedule = \"* * * * * *\"\n",
            src.display(),
            dest.display()
        ),
    )
    .unwrap();
    let mut child = Daemon::start(&catalog, &cfg, "");
    let pid = rustix::process::Pid::from_raw(child.0.id() as i32).unwrap();
    let runs = || {
        let (_, h, _, _) = cli(&catalog, &["history", "--json"], &[]);
        h.as_array().cloned().unwrap_or_default()
    };
    let done = |n: usize| {
        move || {
            let r = runs();
            r.len() >= n && r.iter().all(|r| r["status"] != "running")
        }
    };
    wait_until("a first run", 30, done(1));
    // A bad edit, not reloaded; then reloaded (refused); then the file is gone.
    std::fs::write(&cfg, "[job.j]\nsource = \n").unwrap();
    let n = runs().len();
    wait_until("a run after a bad edit", 30, done(n + 2));
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    std::fs::remove_file(&cfg).unwrap();
    let n = runs().len();
    wait_until("a run with the file gone", 30, done(n + 2));
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(child.0.wait().unwrap().success());
    let r = runs();
    for run in &r {
        assert_eq!(run["status"], "complete", "{r:?}");
    }
}

#[test]
fn examples_parse_and_next_previews_schedules() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let ex = root.join("examples/snapring.toml");
    let (code, _, err, out) = cli(
        Path::new("off"),
        &["config", "check", ex.to_str().unwrap()],
        // `config check` looks for the notifiers' secrets where it runs.
        &[
            (
                "SNAPRING_SLACK_WEBHOOK",
                "https://hooks.slack.com/services/T/B/X",
            ),
            ("SMTP_PASSWORD", "pw"),
        ],
    );
    // `config check` looks for a command notifier's program where it runs: the
    // example's pager, unless installed here, is its one problem, and the only one.
    if Path::new("/usr/local/bin/page-oncall").exists() {
        assert_eq!(code, 0, "{err}{out}");
    } else {
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(code, 1, "{err}{out}");
        assert_eq!(lines.len(), 2, "{err}{out}");
        assert!(
            lines[0].contains("notify.pager-hook.command: program /usr/local/bin/page-oncall"),
            "{err}{out}"
        );
        assert!(lines[1].ends_with(": 1 problem"), "{err}{out}");
    }
    // systemd units: every line a section, a comment or Key=Value; the keys that matter.
    for (unit, must) in [
        (
            "snapring.service",
            vec![
                "ExecStart=/usr/local/bin/snapring daemon --config",
                "ExecReload=/bin/kill -HUP $MAINPID",
                "WantedBy=multi-user.target",
            ],
        ),
        (
            "snapring-run@.service",
            vec![
                "ExecStart=/usr/local/bin/snapring run %i --config",
                "Type=oneshot",
                "SuccessExitStatus=2 3",
            ],
        ),
        (
            "snapring-run@.timer",
            vec![
                "OnCalendar=*-*-* 02:00:00 UTC",
                "Persistent=true",
                "WantedBy=timers.target",
            ],
        ),
    ] {
        let text = std::fs::read_to_string(root.join("examples/systemd").join(unit)).unwrap();
        let mut section = None;
        for l in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            if l.starts_with('[') {
                assert!(l.ends_with(']'), "{unit}: {l}");
                section = Some(l.to_string());
            } else {
                assert!(
                    section.is_some() && l.contains('='),
                    "{unit}: {l:?} outside a section or not Key=Value"
                );
            }
        }
        for m in must {
            assert!(text.contains(m), "{unit} lacks {m}");
        }
    }
    // The commented example's weekly job: Sundays 03:30 Berlin, across the October change.
    let (code, v, err, _) = cli(
        Path::new("off"),
        &[
            "next",
            "--job",
            "efs-weekly",
            "--config",
            ex.to_str().unwrap(),
            "--at",
            "2026-10-18T00:00:00Z",
            "--count",
            "2",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        v,
        serde_json::json!(["2026-10-18T01:30:00Z", "2026-10-25T02:30:00Z"])
    );
    let (_, _, _, out) = cli(
        Path::new("off"),
        &[
            "next",
            "--schedule",
            "cron(0 2 * * ? *)",
            "--at",
            "2026-11-22 03:00",
            "--count",
            "1",
        ],
        &[],
    );
    assert_eq!(out.trim(), "2026-11-23T02:00:00Z");

    // config check: every problem, with its line.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bad.path(),
        "[job.a]\nsource = \"/s\"\ndest = \"/d\"\nschedule = \"cron(0 2 * * * *)\"\nnotify = [\"nobody\"]\n\n[job.b]\nsource = \"/s\"\ndest = \"/d2\"\ntimezone = \"Mars/Base\"\nschedule = \"@daily\"\nmissed = \"sometimes\"\n\n[notify.x]\ntype = \"webhook\"\n",
    )
    .unwrap();
    let (code, _, _, out) = cli(
        Path::new("off"),
        &["config", "check", bad.path().to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(lines[5].ends_with(": 5 problems"), "{out}");
    for (line, (at, what)) in lines.iter().zip([
        (":4:1: job.a.schedule", "exactly one"),
        (":5:11: job.a.notify", "nobody"),
        (":10:1: job.b.timezone", "time zone"),
        (":12:1: job.b.missed", "missed"),
        (":14:9: notify.x", "url"),
    ]) {
        assert!(line.contains(at) && line.contains(what), "{out}");
    }
}

/// A second `snapring daemon` on the same config, or on the same catalog, refuses to
/// start: exit 75 naming the first one's pid, no event of its own in the catalog. Two
/// ran side by side and both started every job, the store's lock failing one run of
/// each pair. Once the first stops, a new one starts.
#[test]
fn a_second_daemon_on_the_same_config_or_catalog_refuses_to_start() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("state/cat.db"));
    tree(&src, 2, 10);
    let cfg = t.path().join("d.toml");
    let body = format!(
        "[job.j]\nsource = \"{}\"\ndest = \"{}\"\nschedule = \"0 3 1 1 *\"\n",
        src.display(),
        t.path().join("b").display()
    );
    std::fs::write(&cfg, &body).unwrap();
    let other_cfg = t.path().join("other.toml");
    std::fs::write(&other_cfg, &body).unwrap();
    let daemon = |cfg: &Path, catalog: &Path| {
        Command::new(bin())
            .arg("--catalog")
            .arg(catalog)
            .args(["daemon", "--config"])
            .arg(cfg)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let started = |catalog: &Path| {
        let c = rusqlite::Connection::open(catalog).unwrap();
        c.query_row(
            "SELECT count(*) FROM events WHERE kind = 'start'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0)
    };
    /// Stops a daemon however the test ends (a failed assertion would leave it running).
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut first = Stop(daemon(&cfg, &catalog));
    wait_until("the first daemon to start", 30, || {
        catalog.exists() && started(&catalog) == 1
    });
    for (what, c, cat) in [
        ("same config and catalog", &cfg, catalog.clone()),
        ("same config", &cfg, t.path().join("other.db")),
        ("same catalog", &other_cfg, catalog.clone()),
    ] {
        let mut second = daemon(c, &cat);
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = second.try_wait().unwrap() {
                break Some(s);
            }
            if t0.elapsed() > Duration::from_secs(10) {
                second.kill().unwrap();
                second.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        second
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = status.unwrap_or_else(|| panic!("{what}: a second daemon kept running"));
        assert_eq!(status.code(), Some(75), "{what}: {err}");
        assert!(
            err.contains("another snapring daemon") && err.contains("stop it first"),
            "{what}: {err}"
        );
        if cat == catalog {
            assert!(
                err.contains(&format!("(pid {})", first.0.id())),
                "{what}: {err}"
            );
        }
    }
    assert_eq!(started(&catalog), 1, "the second daemons never started");
    let pid = rustix::process::Pid::from_raw(first.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(first.0.wait().unwrap().success());
    // The first one gone, a new one starts.
    let mut again = Stop(daemon(&cfg, &catalog));
    wait_until("a new daemon to start", 30, || started(&catalog) == 2);
    assert!(again.0.try_wait().unwrap().is_none());
    let pid = rustix::process::Pid::from_raw(again.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(again.0.wait().unwrap().success());
}

/// The running configuration the daemon hands a run (a memfd: it may hold notifier
/// credentials) does not reach the run's hooks: a `pre_command` listing its own open
/// descriptors sees no `memfd:snapring-config`. The memfd was inherited by every hook and notifier command of every run.
#[test]
fn a_runs_hooks_do_not_inherit_the_daemons_config_descriptor() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 2, 10);
    let seen = t.path().join("fds.txt");
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.j]\nsource = \"{}\"\ndest = \"{}\"\nschedule = \"* * * * * *\"\n\
             pre_command = [\"sh\", \"-c\", \"ls -l /proc/self/fd/ > {}.tmp && mv {}.tmp {}\"]\n",
            src.display(),
            t.path().join("b").display(),
            seen.display(),
            seen.display(),
            seen.display()
        ),
    )
    .unwrap();
    let mut daemon = Command::new(bin())
        .arg("--catalog")
        .arg(&catalog)
        .args(["daemon", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let waited = std::panic::catch_unwind(|| {
        wait_until("a run's pre_command", 30, || seen.exists());
    });
    let pid = rustix::process::Pid::from_raw(daemon.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    daemon.wait().unwrap();
    waited.unwrap();
    let fds = std::fs::read_to_string(&seen).unwrap();
    assert!(fds.contains(" 1 -> "), "the listing: {fds}");
    assert!(!fds.contains("snapring-config"), "{fds}");
}

/// One SIGTERM after the backup window ended, while the stopped run's post command
/// runs: the run still ends as an incomplete run does, exit 3, recorded and notified.
/// The window's end set the flag a first signal sets, so the SIGTERM was taken for a
/// second one: exit 130 at once, no notification, the record left `running`.
#[test]
fn a_signal_after_the_window_ended_is_not_taken_for_a_second_one() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest, catalog) = (
        t.path().join("src"),
        t.path().join("b"),
        t.path().join("cat.db"),
    );
    tree(&src, 40, 4096);
    let (post, told) = (t.path().join("post-started"), t.path().join("told"));
    let cfg = t.path().join("s.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.j]\nsource = \"{}\"\ndest = \"{}\"\njobs = 1\nwindow = \"1s\"\npost_command = [\"/bin/sh\", \"-c\", \"touch {}; sleep 2\"]\nnotify = [\"cmd\"]\n\n[notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"cat > {}\"]\n",
            src.display(),
            dest.display(),
            post.display(),
            told.display(),
        ),
    )
    .unwrap();
    let child = std::process::Command::new(bin())
        .arg("--catalog")
        .arg(&catalog)
        .args(["run", "j", "--config", cfg.to_str().unwrap(), "--json"])
        .env("SNAPRING_FAILPOINTS", "walk.copy=sleep:100")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&post);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["status"], "incomplete", "{rep}");
    let note = std::fs::read_to_string(&told).expect("the incomplete run notified");
    let note: serde_json::Value = serde_json::from_str(&note).unwrap();
    assert_eq!(note["status"], "incomplete", "{note}");
    let (_, h, _, _) = cli(&catalog, &["history", "--json"], &[]);
    assert_eq!(h[0]["status"], "incomplete", "{h}");
}

/// Stops an in-process daemon when dropped: a test that fails while it runs ends
/// instead of waiting for it for ever.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn in_process_daemon(
    cfg: &Path,
    catalog: &Path,
    failpoints: &str,
) -> snapring::daemon::DaemonOptions {
    snapring::daemon::DaemonOptions {
        config: cfg.to_path_buf(),
        exe: bin(),
        catalog: Some(catalog.to_path_buf()),
        catalog_on_nfs: false,
        tick: Duration::from_millis(50),
        env: vec![("SNAPRING_FAILPOINTS".into(), failpoints.into())],
        run_args: vec![],
    }
}

/// A run killed under the daemon (SIGKILL, as the out-of-memory killer sends) cannot
/// record or notify itself: the daemon settles its record and catalog row
/// (`incomplete`), records an `error` event and tells the job's notifiers. The row
/// stayed `running` until another command came, nobody was told, and the daemon
/// logged the exit at INFO only.
#[test]
fn a_run_killed_under_the_daemon_is_settled_and_notified() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest, catalog) = (
        t.path().join("src"),
        t.path().join("b"),
        t.path().join("cat.db"),
    );
    tree(&src, 30, 10);
    let (pid_file, told) = (t.path().join("pid"), t.path().join("told"));
    std::fs::create_dir(&told).unwrap();
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.k]\nsource = \"{}\"\ndest = \"{}\"\njobs = 1\nschedule = \"* * * * * *\"\npre_command = [\"/bin/sh\", \"-c\", \"[ -e {pid} ] || echo $PPID > {pid}\"]\nnotify = [\"cmd\"]\n\n[notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"cat > {told}/$$\"]\n",
            src.display(),
            dest.display(),
            pid = pid_file.display(),
            told = told.display(),
        ),
    )
    .unwrap();
    let opts = in_process_daemon(&cfg, &catalog, "walk.dir=sleep:600");
    let (stop, reload) = (AtomicBool::new(false), AtomicBool::new(false));
    let notices = || -> Vec<serde_json::Value> {
        std::fs::read_dir(&told)
            .unwrap()
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).ok()?).ok())
            .collect()
    };
    let killed = |n: &serde_json::Value| {
        n["message"]
            .as_str()
            .is_some_and(|m| m.contains("killed by signal 9"))
    };
    std::thread::scope(|s| {
        let h = s.spawn(|| snapring::daemon::run(&opts, &stop, &reload));
        let _stop = StopOnDrop(&stop);
        wait_until("the run's pid", 60, || {
            std::fs::read_to_string(&pid_file).is_ok_and(|p| p.ends_with('\n'))
        });
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_until("the run's record", 60, || {
            std::fs::read_dir(dest.join(".snapring/runs")).is_ok_and(|mut d| d.next().is_some())
        });
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        wait_until("the notice of the killed run", 60, || {
            notices().iter().any(killed)
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap().unwrap();
    });
    let notice = notices().into_iter().find(killed).unwrap();
    assert_eq!(notice["status"], "incomplete", "{notice}");
    let id = notice["id"].as_str().unwrap().to_string();
    let (_, h, _, _) = cli(&catalog, &["history", "--json"], &[]);
    let row = h
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} in {h}"));
    assert_eq!(row["status"], "incomplete", "{h}");
    // The cause and the notice's outcome are in the catalog (and the run record).
    assert!(message_of(&catalog, &id).contains("killed by signal 9"));
    let (_, shown, _, _) = cli(&catalog, &["show", &id, "--json"], &[]);
    let n = &shown["report"]["notifications"];
    assert!(
        n[0]["notifier"] == "cmd" && n[0]["ok"] == true,
        "the notice's outcome is recorded: {shown}"
    );
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    assert!(
        c.events(Some("k"))
            .unwrap()
            .iter()
            .any(|e| e.kind == "error" && e.message.contains("killed by signal 9")),
        "an error event"
    );
}

/// Reloads (SIGHUP) that come as a trigger falls due do not drop it. A reload planned
/// every job again from "now", so a trigger already due and not yet run was lost
/// without a trace: with a reload before every tick, no run at all.
#[test]
fn a_reload_as_a_trigger_falls_due_does_not_drop_it() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest, catalog) = (
        t.path().join("src"),
        t.path().join("b"),
        t.path().join("cat.db"),
    );
    tree(&src, 4, 10);
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.j]\nsource = \"{}\"\ndest = \"{}\"\nretain = 50\nschedule = \"* * * * * *\"\n",
            src.display(),
            dest.display()
        ),
    )
    .unwrap();
    let opts = in_process_daemon(&cfg, &catalog, "");
    let (stop, reload) = (AtomicBool::new(false), AtomicBool::new(false));
    let summary = std::thread::scope(|s| {
        let h = s.spawn(|| snapring::daemon::run(&opts, &stop, &reload));
        let _stop = StopOnDrop(&stop);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(3500) {
            reload.store(true, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap().unwrap()
    });
    assert!(summary.reloads >= 20, "{summary:?}");
    assert!(summary.started >= 2, "{summary:?}");
}

/// A job whose name starts with `-` runs under the daemon as any other: its name was
/// handed to `snapring run` where a flag goes, so `--help` printed the help and `-v`
/// was a usage error, with no backup, nothing recorded and nobody told.
#[test]
fn a_job_named_like_a_flag_runs_under_the_daemon() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest, catalog) = (
        t.path().join("src"),
        t.path().join("b"),
        t.path().join("cat.db"),
    );
    tree(&src, 4, 10);
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.\"--help\"]\nsource = \"{}\"\ndest = \"{}\"\nschedule = \"* * * * * *\"\n",
            src.display(),
            dest.display()
        ),
    )
    .unwrap();
    let opts = in_process_daemon(&cfg, &catalog, "");
    let (stop, reload) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let h = s.spawn(|| snapring::daemon::run(&opts, &stop, &reload));
        let _stop = StopOnDrop(&stop);
        wait_until("a snapshot of job --help", 20, || {
            dest.join("daily.0").exists()
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap().unwrap();
    });
    let (_, h, _, _) = cli(&catalog, &["history", "--json"], &[]);
    assert_eq!(h[0]["job"], "--help", "{h}");
}

/// Ctrl-C at the terminal of a daemon run in the foreground (SIGINT to its whole
/// process group): the running backup is stopped once, by the daemon, and records
/// itself `incomplete`. It got the terminal's SIGINT and then the daemon's SIGTERM, a
/// second signal, so it ended at once (exit 130) with its record and row `running`.
#[test]
fn ctrl_c_at_a_foreground_daemon_stops_its_runs_cleanly() {
    use std::os::unix::process::CommandExt;
    let t = tempfile::tempdir().unwrap();
    let (src, dest, catalog) = (
        t.path().join("src"),
        t.path().join("b"),
        t.path().join("cat.db"),
    );
    tree(&src, 30, 10);
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.j]\nsource = \"{}\"\ndest = \"{}\"\njobs = 1\nschedule = \"* * * * * *\"\n",
            src.display(),
            dest.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(bin())
        .arg("--catalog")
        .arg(&catalog)
        .args(["daemon", "--config"])
        .arg(&cfg)
        .env("SNAPRING_FAILPOINTS", "walk.copy=sleep:200")
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    wait_until("a run to start", 30, || {
        std::fs::read_dir(dest.join(".snapring/runs"))
            .map(|d| d.count())
            .unwrap_or(0)
            >= 1
    });
    std::thread::sleep(Duration::from_millis(300));
    rustix::process::kill_process_group(pgid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    // The records as the runs left them (a `history` would settle a dead run's).
    let records: Vec<serde_json::Value> = std::fs::read_dir(dest.join(".snapring/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    assert!(!records.is_empty());
    for r in &records {
        assert_ne!(r["status"], "running", "{r}");
    }
    assert!(
        records.iter().any(|r| r["status"] == "incomplete"),
        "{records:?}"
    );
}

/// A run interrupted with the daemon (the machine went down, or the daemon was stopped
/// mid-run) resumes when the daemon starts again, with `missed = "run-once"`: it waited
/// for its next scheduled time, a year here. A run its window cut short waits, as it
/// would had the daemon kept running.
#[test]
fn a_run_interrupted_with_the_daemon_resumes_when_it_starts_again() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 30, 10);
    // `@yearly`: its last time (1 January) is before every run here, so none is missed.
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.killed]\nsource = \"{0}\"\ndest = \"{1}/k\"\njobs = 1\nschedule = \"@yearly\"\n\n\
             [job.windowed]\nsource = \"{0}\"\ndest = \"{1}/w\"\njobs = 1\nschedule = \"@yearly\"\nwindow = \"1s\"\n",
            src.display(),
            t.path().display()
        ),
    )
    .unwrap();
    let run = |job: &str| slow_run(&catalog, &cfg, job);
    // Killed mid-run, as with the machine: its row stays `running`.
    let runs = t.path().join("k/.snapring/runs");
    stopped_mid_walk(&mut run("killed"), &runs, rustix::process::Signal::KILL);
    // Cut short by its window: `incomplete`, exit 3.
    let windowed = run("windowed").status().unwrap();
    assert_eq!(windowed.code(), Some(3), "the window ends the run");

    let opts = in_process_daemon(&cfg, &catalog, "");
    let (stop, reload) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let h = s.spawn(|| snapring::daemon::run(&opts, &stop, &reload));
        let _stop = StopOnDrop(&stop);
        wait_until("the interrupted run to be resumed", 60, || {
            t.path().join("k/daily.0/d0/f0").exists()
        });
        // The windowed job had as long again; it did not start.
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap().unwrap();
    });
    assert!(
        !t.path().join("w/daily.0").exists(),
        "the windowed run waits"
    );
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    let resumed: Vec<_> = c
        .events(None)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "resumed")
        .collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0].job.as_deref(), Some("killed"));
    let (_, h, _, _) = cli(&catalog, &["history", "--json", "--job", "killed"], &[]);
    let statuses: Vec<_> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["incomplete", "complete"], "{h}");
}

/// `snapring --catalog CATALOG run JOB --config CFG --no-progress` (`off`: no catalog)
/// with its copy slowed (`walk.copy=sleep:200`), its output discarded: a run to stop
/// or kill in its walk ([`stopped_mid_walk`]).
fn slow_run(catalog: &Path, cfg: &Path, job: &str) -> Command {
    let mut c = job_run(catalog, cfg, job);
    c.env("SNAPRING_FAILPOINTS", "walk.copy=sleep:200")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

/// `snapring --catalog CATALOG run JOB --config CFG --no-progress`, by hand.
fn job_run(catalog: &Path, cfg: &Path, job: &str) -> Command {
    let mut c = Command::new(bin());
    c.arg("--catalog")
        .arg(catalog)
        .args(["run", job, "--config"])
        .arg(cfg)
        .arg("--no-progress");
    c
}

/// The id of the one run record in `runs` (a store's `.snapring/runs`).
fn only_run_id(runs: &Path) -> String {
    std::fs::read_dir(runs)
        .unwrap()
        .flatten()
        .find_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            Some(n.strip_suffix(".json")?.to_string())
        })
        .unwrap()
}

/// Waits for a run paused at a `pause:` failpoint (its pid written to `pause`); its pid.
fn paused_pid(pause: &Path) -> i32 {
    wait_until("the run's pause", 60, || {
        std::fs::read_to_string(pause).is_ok_and(|p| !p.trim().is_empty())
    });
    std::fs::read_to_string(pause)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The daemon on `cfg` (logging to `log`) with its runs paused in their walk (their
/// pid written to `walking`: [`paused_pid`]) and its settling of a dead run's record
/// paused (`settling`), as a call stuck in a hung store would be; a death is told
/// after 2 s (`SNAPRING_DAEMON_DEATH_WAIT`).
fn daemon_settling_paused(
    catalog: &Path,
    cfg: &Path,
    log: &Path,
    walking: &Path,
    settling: &Path,
) -> Daemon {
    let fps = format!(
        "walk.dir=pause:{};daemon.settle_dead=pause:{}",
        walking.display(),
        settling.display()
    );
    daemon_logging_with(
        catalog,
        cfg,
        log,
        &[
            ("SNAPRING_FAILPOINTS", fps.as_str()),
            ("SNAPRING_DAEMON_DEATH_WAIT", "2s"),
        ],
    )
}

/// The `[notify.cmd]` section that appends each notice's status and run id to `told`
/// (read with [`told_lines`]).
fn told_notifier(told: &Path) -> String {
    format!(
        "[notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_STATUS $SNAPRING_RUN_ID >> {told}\"]\n",
        told = told.display(),
    )
}

/// Starts `run`, waits for a new record in `runs` (its store's `.snapring/runs`) and
/// half a second more (its walk under way), then sends it `signal` (SIGKILL, as with
/// the machine: its record stays `running`; SIGTERM: it ends `incomplete`). Its exit
/// status and its run's id.
fn stopped_mid_walk(
    run: &mut Command,
    runs: &Path,
    signal: rustix::process::Signal,
) -> (std::process::ExitStatus, String) {
    let ids = || -> Vec<String> {
        std::fs::read_dir(runs).map_or(Vec::new(), |d| {
            d.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    Some(n.strip_suffix(".json")?.to_string())
                })
                .collect()
        })
    };
    let before = ids();
    let mut child = run.spawn().unwrap();
    wait_until("the run's record", 60, || ids().len() > before.len());
    std::thread::sleep(Duration::from_millis(500));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        signal,
    )
    .unwrap();
    let st = child.wait().unwrap();
    let id = ids().into_iter().find(|i| !before.contains(i)).unwrap();
    (st, id)
}

/// The rows of `job` in the catalog (`history --json`).
fn rows_of(catalog: &Path, job: &str) -> Vec<serde_json::Value> {
    let (_, h, _, _) = cli(catalog, &["history", "--json", "--job", job], &[]);
    h.as_array().cloned().unwrap_or_default()
}

/// The message of run `id` as the catalog has it (`show --json`).
fn message_of(catalog: &Path, id: &str) -> String {
    let (_, shown, err, _) = cli(catalog, &["show", id, "--json"], &[]);
    shown["report"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{shown} {err}"))
        .to_string()
}

/// The lines a `command` notifier wrote (`JOB STATUS`).
/// A daemon process of a test, killed (SIGKILL) and reaped if the test ends before it
/// stops it.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Daemon {
    /// `snapring --catalog CATALOG daemon --config CFG`, its output discarded, with
    /// `SNAPRING_FAILPOINTS=failpoints` (none if empty).
    fn start(catalog: &Path, cfg: &Path, failpoints: &str) -> Daemon {
        let mut c = Command::new(bin());
        c.arg("--catalog")
            .arg(catalog)
            .args(["daemon", "--config"])
            .arg(cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if !failpoints.is_empty() {
            c.env("SNAPRING_FAILPOINTS", failpoints);
        }
        Daemon(c.spawn().unwrap())
    }

    /// Stops it as an init system would (SIGTERM); it must exit 0.
    fn stop(mut self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.0.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        assert!(self.0.wait().unwrap().success());
    }
}

/// Job `a` of the tests that kill a daemon with its run, in `dir/d.toml`: a backup of
/// `src` into `dir/a` every second, one job; its pre command writes the run's process
/// id to `dir/pid` (the first run only), its `cmd` notifier appends
/// `$SNAPRING_JOB $SNAPRING_STATUS $SNAPRING_RUN_ID` to `dir/told`. The config, the pid
/// file and `told`.
fn killable_job(dir: &Path, src: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (pid_file, told) = (dir.join("pid"), dir.join("told"));
    let cfg = dir.join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/a\"\njobs = 1\nschedule = \"* * * * * *\"\n\
             pre_command = [\"/bin/sh\", \"-c\", \"[ -e {pid} ] || echo $PPID > {pid}\"]\nnotify = [\"cmd\"]\n\n\
             [notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_JOB $SNAPRING_STATUS $SNAPRING_RUN_ID >> {told}\"]\n",
            src = src.display(),
            d = dir.display(),
            pid = pid_file.display(),
            told = told.display(),
        ),
    )
    .unwrap();
    (cfg, pid_file, told)
}

fn told_lines(told: &Path) -> Vec<String> {
    std::fs::read_to_string(told)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// An `exclude_from` file of one job that is gone after the daemon loaded the config
/// (it lived on the source's file system, now unmounted). Each run checked every job's
/// files: every run of every job exited 1 at once, before its catalog row and its
/// notifications, and the daemon took exit 1 for a run's own end, so nothing was
/// recorded or told, and the error named `/proc/self/fd/3`. Now the other job runs
/// on, and the job's own runs are `failed` in the catalog (naming the config file) and
/// notified.
#[test]
fn a_jobs_exclude_file_gone_fails_its_runs_recorded_and_notified_and_not_the_others() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 4, 10);
    let (ex, told) = (t.path().join("ex"), t.path().join("told"));
    std::fs::write(&ex, "*.tmp\n").unwrap();
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/a\"\nretain = 50\nschedule = \"* * * * * *\"\nexclude_from = [\"{ex}\"]\nnotify = [\"cmd\"]\n\n\
             [job.b]\nsource = \"{src}\"\ndest = \"{d}/b\"\nretain = 50\nschedule = \"* * * * * *\"\nnotify = [\"cmd\"]\n\n\
             [notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_JOB $SNAPRING_STATUS >> {told}\"]\n",
            src = src.display(),
            d = t.path().display(),
            ex = ex.display(),
            told = told.display(),
        ),
    )
    .unwrap();
    let opts = in_process_daemon(&cfg, &catalog, "");
    let (stop, reload) = (AtomicBool::new(false), AtomicBool::new(false));
    let complete_since = |job: &str, n: usize| {
        rows_of(&catalog, job)
            .iter()
            .skip(n)
            .filter(|r| r["status"] == "complete")
            .count()
    };
    std::thread::scope(|s| {
        let h = s.spawn(|| snapring::daemon::run(&opts, &stop, &reload));
        let _stop = StopOnDrop(&stop);
        wait_until("a first run of each job", 60, || {
            complete_since("a", 0) >= 1 && complete_since("b", 0) >= 1
        });
        std::fs::remove_file(&ex).unwrap();
        let (na, nb) = (rows_of(&catalog, "a").len(), rows_of(&catalog, "b").len());
        wait_until("a failed run of a, and b going on", 60, || {
            rows_of(&catalog, "a")
                .iter()
                .skip(na)
                .any(|r| r["status"] == "failed")
                && complete_since("b", nb) >= 2
                && told_lines(&told).iter().any(|l| l == "a failed")
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap().unwrap();
    });
    let failed = rows_of(&catalog, "a")
        .into_iter()
        .find(|r| r["status"] == "failed")
        .unwrap();
    let msg = message_of(&catalog, failed["id"].as_str().unwrap());
    assert!(
        msg.contains(&cfg.display().to_string())
            && msg.contains("job.a.exclude_from")
            && !msg.contains("/proc/self/fd"),
        "{msg}"
    );
    // b was never failed nor told of a's problem.
    assert!(
        rows_of(&catalog, "b")
            .iter()
            .all(|r| r["status"] == "complete"),
        "{:?}",
        rows_of(&catalog, "b")
    );
    assert!(
        !told_lines(&told).iter().any(|l| l.starts_with("b ")),
        "{:?}",
        told_lines(&told)
    );
}

/// A run that exits 1 before it records anything (here: its config cannot even be
/// read through the descriptor it was given, as with a wrapper that breaks stdin) is
/// not a run's own failure to the daemon: it records an `error` event and tells the
/// job's notifiers, as for a run killed. It took exit 1 for a run's end and said
/// nothing.
#[test]
fn a_run_that_exits_before_recording_anything_is_told_by_the_daemon() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 4, 10);
    let (told, wrap) = (t.path().join("told"), t.path().join("wrap.sh"));
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/a\"\nschedule = \"* * * * * *\"\nnotify = [\"cmd\"]\n\n\
             [notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_JOB $SNAPRING_STATUS >> {told}\"]\n",
            src = src.display(),
            d = t.path().display(),
            told = told.display(),
        ),
    )
    .unwrap();
    // The run's stdin (its configuration) is not handed on.
    std::fs::write(
        &wrap,
        format!("#!/bin/sh\nexec {} \"$@\" < /dev/null\n", bin().display()),
    )
    .unwrap();
    std::fs::set_permissions(&wrap, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut opts = in_process_daemon(&cfg, &catalog, "");
    opts.exe = wrap.clone();
    let (stop, reload) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let h = s.spawn(|| snapring::daemon::run(&opts, &stop, &reload));
        let _stop = StopOnDrop(&stop);
        wait_until("the notice", 60, || {
            told_lines(&told).iter().any(|l| l == "a failed")
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap().unwrap();
    });
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    assert!(
        c.events(Some("a"))
            .unwrap()
            .iter()
            .any(|e| e.kind == "error" && e.message.contains("exit code 1 without recording")),
        "an error event"
    );
}

/// The pid a job's `pre_command` wrote (the run's), once it is there.
fn run_pid(pid_file: &Path) -> i32 {
    wait_until("the run's pid", 60, || {
        std::fs::read_to_string(pid_file).is_ok_and(|p| p.ends_with('\n'))
    });
    std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn sigkill(pid: i32) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
}

/// The notice of a run killed under the daemon goes out on a thread of its own: a
/// slow notifier (here one that hangs until its 10 s timeout) held the scheduling
/// loop, so another job's runs did not start meanwhile (their triggers merged without
/// a trace) and signals were not acted on. Its outcome goes into the killed run's
/// record and catalog row, with the cause in the row's message; both were dropped.
#[test]
fn a_slow_notice_of_a_killed_run_holds_neither_other_jobs_nor_its_record() {
    let t = tempfile::tempdir().unwrap();
    let (src_a, src_b, catalog) = (
        t.path().join("a"),
        t.path().join("b"),
        t.path().join("cat.db"),
    );
    tree(&src_a, 30, 10);
    write(&src_b.join("x"), b"x");
    let (pid_file, told) = (t.path().join("pid"), t.path().join("told"));
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{a}\"\ndest = \"{d}/sa\"\njobs = 1\nschedule = \"* * * * * *\"\n\
             pre_command = [\"/bin/sh\", \"-c\", \"[ -e {pid} ] || echo $PPID > {pid}\"]\nnotify = [\"slow\"]\n\n\
             [job.b]\nsource = \"{b}\"\ndest = \"{d}/sb\"\nretain = 100\nschedule = \"* * * * * *\"\n\n\
             [notify.slow]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"grep -q 'killed by signal' || exit 0; echo $SNAPRING_STATUS >> {told}; sleep 60\"]\ntimeout = \"10s\"\nretries = 0\n",
            a = src_a.display(),
            b = src_b.display(),
            d = t.path().display(),
            pid = pid_file.display(),
            told = told.display(),
        ),
    )
    .unwrap();
    let opts = in_process_daemon(&cfg, &catalog, "walk.dir=sleep:600");
    let (stop, reload) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let h = s.spawn(|| snapring::daemon::run(&opts, &stop, &reload));
        let _stop = StopOnDrop(&stop);
        let pid = run_pid(&pid_file);
        wait_until("the run's record", 60, || {
            std::fs::read_dir(t.path().join("sa/.snapring/runs"))
                .is_ok_and(|mut d| d.next().is_some())
        });
        let nb = rows_of(&catalog, "b").len();
        sigkill(pid);
        wait_until("the notifier to be started", 30, || {
            !told_lines(&told).is_empty()
        });
        // The notifier hangs for 10 s; b's runs go on meanwhile.
        wait_until("two runs of b while the notice hangs", 7, || {
            rows_of(&catalog, "b").len() >= nb + 2
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap().unwrap();
    });
    // The first run of a is the one killed.
    let killed = rows_of(&catalog, "a").remove(0);
    let msg = message_of(&catalog, killed["id"].as_str().unwrap());
    assert!(
        msg.starts_with("interrupted") && msg.contains("killed by signal 9"),
        "{msg}"
    );
    let id = killed["id"].as_str().unwrap();
    let (_, shown, err, _) = cli(&catalog, &["show", id, "--json"], &[]);
    let n = shown["report"]["notifications"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        n.len() == 1 && n[0]["notifier"] == "slow" && n[0]["ok"] == false,
        "{shown} {err}"
    );
    let (_, _, _, text) = cli(&catalog, &["show", id], &[]);
    assert!(
        text.contains("notification slow (command): FAILED"),
        "{text}"
    );
}

/// Triggers that came and went while the daemon's loop was held up (here: the daemon
/// stopped with SIGSTOP for 3 s) are recorded as `skipped` events; one late run stood
/// for them all without a trace.
#[test]
fn triggers_missed_while_the_daemon_was_held_up_are_recorded_as_skipped() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    write(&src.join("x"), b"x");
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.j]\nsource = \"{}\"\ndest = \"{}/s\"\nretain = 100\nschedule = \"* * * * * *\"\n",
            src.display(),
            t.path().display()
        ),
    )
    .unwrap();
    let mut d = Daemon::start(&catalog, &cfg, "");
    let pid = rustix::process::Pid::from_raw(d.0.id() as i32).unwrap();
    wait_until("a first run", 30, || {
        rows_of(&catalog, "j")
            .iter()
            .any(|r| r["status"] == "complete")
    });
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    let held_up = || {
        snapring::catalog::Catalog::open(&catalog, false)
            .and_then(|c| c.events(Some("j")))
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.kind == "skipped" && e.message.contains("held up"))
            .count()
    };
    wait_until("skipped events", 30, || held_up() >= 2);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(d.0.wait().unwrap().success());
}

/// A run of a job that a reload (SIGHUP) removed, and which then dies, is told to the
/// notifiers of the configuration it started under: the daemon looked the job up in
/// the new one, found nothing, and told nobody.
#[test]
fn a_killed_run_of_a_job_a_reload_removed_is_still_notified() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 30, 10);
    let (pid_file, told) = (t.path().join("pid"), t.path().join("told"));
    let cfg = t.path().join("d.toml");
    let a = format!(
        "[job.a]\nsource = \"{src}\"\ndest = \"{d}/a\"\njobs = 1\nschedule = \"* * * * * *\"\n\
         pre_command = [\"/bin/sh\", \"-c\", \"[ -e {pid} ] || echo $PPID > {pid}\"]\nnotify = [\"cmd\"]\n\n",
        src = src.display(),
        d = t.path().display(),
        pid = pid_file.display(),
    );
    let rest = format!(
        "[job.b]\nsource = \"{src}\"\ndest = \"{d}/b\"\nschedule = \"@yearly\"\nmissed = \"skip\"\n\n\
         [notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_JOB $SNAPRING_STATUS >> {told}\"]\n",
        src = src.display(),
        d = t.path().display(),
        told = told.display(),
    );
    std::fs::write(&cfg, format!("{a}{rest}")).unwrap();
    let opts = in_process_daemon(&cfg, &catalog, "walk.dir=sleep:1500");
    let (stop, reload) = (AtomicBool::new(false), AtomicBool::new(false));
    let reloads = || {
        snapring::catalog::Catalog::open(&catalog, false)
            .and_then(|c| c.events(None))
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.kind == "reload")
            .count()
    };
    std::thread::scope(|s| {
        let h = s.spawn(|| snapring::daemon::run(&opts, &stop, &reload));
        let _stop = StopOnDrop(&stop);
        let pid = run_pid(&pid_file);
        wait_until("the run's record", 60, || {
            std::fs::read_dir(t.path().join("a/.snapring/runs"))
                .is_ok_and(|mut d| d.next().is_some())
        });
        std::fs::write(&cfg, &rest).unwrap();
        reload.store(true, std::sync::atomic::Ordering::Relaxed);
        wait_until("the reload", 30, || reloads() >= 1);
        sigkill(pid);
        wait_until("the notice of the killed run", 30, || {
            told_lines(&told).iter().any(|l| l.starts_with("a "))
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap().unwrap();
    });
    assert_eq!(told_lines(&told), ["a incomplete"]);
}

/// `snapring show RUN` prints the run's notifications, a failed one as such; only
/// `--json` had them.
#[test]
fn show_prints_the_notifications_and_a_failed_one_clearly() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    write(&src.join("x"), b"x");
    let cfg = t.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{}\"\ndest = \"/nonexistent/snapring-test\"\nnotify = [\"h\"]\n\n\
             [notify.h]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/down\"\nretries = 0\n",
            src.display()
        ),
    )
    .unwrap();
    let (code, _, err, _) = cli(
        &catalog,
        &["run", "a", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    let rows = rows_of(&catalog, "a");
    let id = rows[0]["id"].as_str().unwrap();
    let (code, _, _, text) = cli(&catalog, &["show", id], &[]);
    assert_eq!(code, 0);
    assert!(
        text.contains("notification h (webhook): FAILED after 1 attempt: "),
        "{text}"
    );
}

/// `snapring history` did not show that a run's notification failed (only `show RUN`
/// did): a complete run nobody was told of looked like any other. Its `NOTIFY` column
/// says `FAILED` now, `ok` for a run whose notice went out, `-` for one with none.
#[test]
fn history_marks_a_run_whose_notification_failed() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    write(&src.join("x"), b"x");
    let cfg = t.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{}\"\ndest = \"{}\"\nnotify = [\"h\"]\nnotify_success = true\n\n\
             [notify.h]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/down\"\nretries = 0\n",
            src.display(),
            t.path().join("b").display()
        ),
    )
    .unwrap();
    let run = |cfg: &Path| {
        let (code, _, err, _) = cli(
            &catalog,
            &["run", "a", "--config", cfg.to_str().unwrap()],
            &[],
        );
        assert_eq!(code, 0, "{err}");
    };
    run(&cfg);
    let (_, h, _, _) = cli(&catalog, &["history", "--json"], &[]);
    assert_eq!(h[0]["status"], "complete", "{h}");
    assert_eq!(h[0]["notifications_failed"], 1, "{h}");
    let (code, _, _, text) = cli(&catalog, &["history"], &[]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains(" NOTIFY "), "{text}");
    assert!(
        lines[1].contains(" complete ") && lines[1].contains(" FAILED "),
        "{text}"
    );
    // Without notifiers: `-`.
    let quiet = t.path().join("q.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&quiet, text.replace("notify = [\"h\"]\n", "")).unwrap();
    run(&quiet);
    let (_, _, _, text) = cli(&catalog, &["history"], &[]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines[2].contains("FAILED"), "{text}");
}

/// A daemon killed with SIGKILL leaves its run going (a process group of its own); a
/// daemon started again on the same config finds the job's store held by that run and
/// skips the job's triggers (event `skipped`) until it ends. It started the job again,
/// the store lock refused that run, and it was recorded `failed` and notified as a
/// failure.
#[test]
fn a_run_left_by_a_killed_daemon_is_skipped_by_the_next_not_failed() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 30, 10);
    let (cfg, pid_file, told) = killable_job(t.path(), &src);
    let daemon = || Daemon::start(&catalog, &cfg, "walk.dir=sleep:1500");
    let mut first = daemon();
    let orphan = run_pid(&pid_file);
    wait_until("the run's record", 60, || {
        std::fs::read_dir(t.path().join("a/.snapring/runs")).is_ok_and(|mut d| d.next().is_some())
    });
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let second = daemon();
    let skipped = || {
        snapring::catalog::Catalog::open(&catalog, false)
            .and_then(|c| c.events(Some("a")))
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.kind == "skipped" && e.message.contains("did not start"))
            .count()
    };
    wait_until("a skipped trigger", 30, || skipped() >= 2);
    second.stop();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(orphan).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    wait_until("the orphan's end", 60, || {
        rows_of(&catalog, "a")
            .iter()
            .all(|r| r["status"] != "running")
    });
    let rows = rows_of(&catalog, "a");
    assert!(rows.iter().all(|r| r["status"] != "failed"), "{rows:?}");
    assert!(
        !told_lines(&told)
            .iter()
            .any(|l| l.split(' ').nth(1) == Some("failed")),
        "{:?}",
        told_lines(&told)
    );
}

/// The store's lock file names its last holder whether or not anyone holds the lock (a
/// run killed with SIGKILL leaves it). A daemon that finds it naming a live process
/// whose command line reads `run a` (a reused pid), while nothing holds the lock,
/// starts job `a`: it skipped every trigger of the job for as long as that process
/// lived.
#[test]
fn a_lock_file_naming_a_live_process_that_holds_nothing_does_not_skip_the_job() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 3, 3);
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/a\"\nschedule = \"* * * * * *\"\n",
            src = src.display(),
            d = t.path().display(),
        ),
    )
    .unwrap();
    // Something else that happens to read `run a`, and a lock file naming it.
    let mut other = Command::new("python3")
        .args(["-c", "import time; time.sleep(120)", "run", "a"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::fs::create_dir_all(t.path().join("a/.snapring")).unwrap();
    let host = snapring::util::hostname();
    std::fs::write(
        t.path().join("a/.snapring/lock"),
        format!(
            "{{\"pid\":{},\"host\":\"{}\",\"run\":\"20990101T000000Z-dead00\",\"command\":\"backup\",\"since\":\"2026-01-01T00:00:00Z\"}}",
            other.id(),
            host
        ),
    )
    .unwrap();
    let mut daemon = Command::new(bin())
        .arg("--catalog")
        .arg(&catalog)
        .args(["daemon", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let complete = || {
        rows_of(&catalog, "a")
            .iter()
            .any(|r| r["status"] == "complete")
    };
    let ok = (0..300).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        complete()
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = other.kill();
    let _ = other.wait();
    let skipped: Vec<String> = snapring::catalog::Catalog::open(&catalog, false)
        .and_then(|c| c.events(Some("a")))
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.kind == "skipped")
        .map(|e| e.message)
        .collect();
    assert!(ok, "no complete run of a in 30 s; skipped: {skipped:?}");
}

/// A reload whose file names another `catalog`: the daemon keeps the catalog it chose
/// at start (its lock is one daemon per catalog) and says so, on stderr and as an
/// event in the catalog it records in. It said "configuration reloaded" and nothing
/// else, while every run went on writing to the old catalog.
#[test]
fn a_reload_that_changes_the_catalog_says_it_takes_effect_at_restart() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("b"));
    let (first, second) = (t.path().join("first.db"), t.path().join("second.db"));
    tree(&src, 4, 10);
    let cfg = t.path().join("d.toml");
    let body = |catalog: &Path| {
        format!(
            "catalog = \"{}\"\n[job.j]\nsource = \"{}\"\ndest = \"{}\"\nschedule = \"0 3 * * *\"\n",
            catalog.display(),
            src.display(),
            dest.display()
        )
    };
    std::fs::write(&cfg, body(&first)).unwrap();
    let mut child = Command::new(bin())
        .args(["daemon", "--config"])
        .arg(&cfg)
        .env_remove("SNAPRING_CATALOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let events = |db: &Path| -> Vec<String> {
        snapring::catalog::Catalog::open(db, false)
            .ok()
            .and_then(|c| c.events(None).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|e| format!("{} {}", e.kind, e.message))
            .collect()
    };
    wait_until("the daemon to start", 30, || {
        events(&first).iter().any(|e| e.starts_with("start"))
    });
    std::fs::write(&cfg, body(&second)).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    wait_until("the reload", 30, || {
        events(&first)
            .iter()
            .any(|e| e.contains("until it is restarted"))
    });
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(child.wait().unwrap().success());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains(&format!("keeps recording in {}", first.display())),
        "{err}"
    );
    assert!(!second.exists(), "nothing recorded in the new catalog");
}

/// libfaketime's preload library, for the tests of a clock that steps; `None` (with a
/// notice: `apt-get install faketime`, as .ci/run does) when it is not installed.
fn libfaketime() -> Option<PathBuf> {
    let lib = PathBuf::from("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1");
    if !lib.exists() {
        eprintln!(
            "SKIPPED: {} is not installed (apt-get install faketime)",
            lib.display()
        );
        return None;
    }
    Some(lib)
}

/// `c` under libfaketime, its clock offset read from the file `offset` at every call
/// (a clock the test steps by rewriting it); the monotonic clock left alone, as NTP
/// leaves it.
fn faked(c: &mut Command, lib: &Path, offset: &Path) {
    c.env("LD_PRELOAD", lib)
        .env("FAKETIME_TIMESTAMP_FILE", offset)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
}

/// `dir/d.toml`: job `j`, `src` into `dir/s` daily at `at`'s time of day.
fn daily_job_at(dir: &Path, src: &Path, at: chrono::DateTime<chrono::Utc>) -> PathBuf {
    let cfg = dir.join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.j]\nsource = \"{}\"\ndest = \"{}/s\"\nschedule = \"{} {} {} * * *\"\n",
            src.display(),
            dir.display(),
            at.format("%S"),
            at.format("%M"),
            at.format("%H"),
        ),
    )
    .unwrap();
    cfg
}

/// `snapring -v daemon` on `cfg` under the faked clock of [`faked`], its log in `log`.
fn faked_daemon(lib: &Path, offset: &Path, catalog: &Path, cfg: &Path, log: &Path) -> Daemon {
    let mut c = Command::new(bin());
    c.arg("--catalog")
        .arg(catalog)
        .args(["-v", "daemon", "--config"])
        .arg(cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    faked(&mut c, lib, offset);
    Daemon(c.spawn().unwrap())
}

/// A wall clock stepped back (a machine that booted with its hardware clock ahead,
/// corrected by NTP later; here libfaketime, its offset in a file the test rewrites)
/// has every job planned again from the new time. The daemon kept the next time it had
/// planned from the later clock: the trigger between went by without a run or a
/// `skipped` event, and it waited a day. Its monotonic clock is left alone, as NTP
/// leaves it.
#[test]
fn a_clock_stepped_back_plans_every_job_again() {
    let Some(lib) = libfaketime() else { return };
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    write(&src.join("x"), b"x");
    let offset = t.path().join("faketime");
    std::fs::write(&offset, "+3600\n").unwrap();
    // libfaketime works here: `date` an hour ahead.
    let mut date = Command::new("date");
    date.arg("+%s");
    faked(&mut date, &lib, &offset);
    let ahead: i64 = String::from_utf8(date.output().unwrap().stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let now = chrono::Utc::now();
    assert!(
        (ahead - now.timestamp() - 3600).abs() < 30,
        "libfaketime does not move the clock: {ahead} at {now}"
    );
    // Daily, at a time of day 12 s from now: an hour ahead, its next time is tomorrow.
    let at = now + chrono::Duration::seconds(12);
    let cfg = daily_job_at(t.path(), &src, at);
    let log = t.path().join("log");
    let mut d = faked_daemon(&lib, &offset, &catalog, &cfg, &log);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the daemon's plan", 30, || logged().contains("next run at"));
    assert!(
        logged().contains(&format!(
            "next run at {}",
            (at + chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%S")
        )),
        "{}",
        logged()
    );
    assert!(
        chrono::Utc::now() < at - chrono::Duration::seconds(3),
        "the daemon took too long to start: the test's trigger is past"
    );
    // NTP steps the clock back an hour, to before the trigger.
    std::fs::write(&offset, "+0\n").unwrap();
    wait_until("the run due today", 40, || {
        rows_of(&catalog, "j")
            .iter()
            .any(|r| r["status"] == "complete")
    });
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    let events = c.events(None).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "clock" && e.message.contains("went back")),
        "{events:?}"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(d.0.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(d.0.wait().unwrap().success(), "{}", logged());
    assert!(logged().contains("the clock went back by"), "{}", logged());
}

/// A run killed together with its daemon (SIGKILL both) cannot tell its notifiers, and
/// no daemon saw it die: the next daemon settles it (`incomplete`) and resumes the
/// job, and now tells the job's notifiers of it too, once (its record keeps the
/// outcome: a later start does not tell it again). Nobody was told.
#[test]
fn a_run_killed_with_its_daemon_is_notified_at_the_next_start_once() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 30, 10);
    let (cfg, pid_file, told) = killable_job(t.path(), &src);
    let daemon = |failpoints: &str| Daemon::start(&catalog, &cfg, failpoints);
    let mut killed_daemon = daemon("walk.copy=sleep:200");
    let pid = run_pid(&pid_file);
    wait_until("the run's row", 60, || {
        rows_of(&catalog, "a")
            .iter()
            .any(|r| r["status"] == "running")
    });
    killed_daemon.0.kill().unwrap();
    killed_daemon.0.wait().unwrap();
    sigkill(pid);
    wait_until("the run's end", 30, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.split(' ').nth(2) == Some("Z"))
    });
    // Its row, left `running` (read without settling it, as `history` would; a
    // command that settles it first does not change what follows).
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    let row = c.recent("a", 1).unwrap().remove(0);
    drop(c);
    assert_eq!(row.status, "running");
    let id = row.id;
    assert!(told_lines(&told).is_empty(), "{:?}", told_lines(&told));

    let second = daemon("");
    let line = format!("a incomplete {id}");
    wait_until("the notice of the killed run", 30, || {
        told_lines(&told).contains(&line)
    });
    wait_until("the resumed run", 60, || {
        rows_of(&catalog, "a")
            .iter()
            .any(|r| r["status"] == "complete")
    });
    // The outcome is in the record and the catalog row.
    wait_until("the notice's outcome in the record", 30, || {
        let (_, shown, _, _) = cli(&catalog, &["show", &id, "--json"], &[]);
        shown["report"]["notifications"][0]["ok"] == true
    });
    second.stop();
    // A later start tells nobody again.
    let third = daemon("");
    std::thread::sleep(Duration::from_secs(3));
    third.stop();
    let lines = told_lines(&told);
    assert_eq!(lines.iter().filter(|l| **l == line).count(), 1, "{lines:?}");
}

/// `next` of a schedule whose last time is past (a year that is over) printed nothing,
/// exit 0, with no word why; `@midnight` (Vixie's `@daily`) and `@reboot` were refused
/// with croner's "Pattern must have 5 or 6 fields". Now `next` says the last time is
/// past, `@midnight` is `@daily`, and `@reboot` says to start the job from the init
/// system.
#[test]
fn next_says_when_a_schedule_has_no_time_left_and_knows_vixie_nicknames() {
    let run = |sched: &str| {
        let o = snapring(
            &[
                "next".as_ref(),
                "--schedule".as_ref(),
                sched.as_ref(),
                "--count".as_ref(),
                "3".as_ref(),
                "--at".as_ref(),
                "2026-06-01T00:00:00Z".as_ref(),
            ],
            &[],
        );
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, err) = run("cron(0 0 1 1 ? 2025)");
    assert_eq!((code, out.as_str()), (Some(0), ""), "{err}");
    assert!(
        err.contains("no run times after 2026-06-01T00:00:00Z: its last time is past"),
        "{err}"
    );
    let (code, out, err) = run("cron(0 0 1 1 ? 2027)");
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "2027-01-01T00:00:00Z\n"),
        "{err}"
    );
    assert!(err.contains("only 1 run time after"), "{err}");
    let (code, out, err) = run("@midnight");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, run("@daily").1, "{err}");
    let (code, _, err) = run("@reboot");
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("init system"), "{err}");
}

/// `next --at` refused RFC 3339 without seconds when it named an offset
/// (`2026-12-07T03:00+01:00`, `…03:00Z`) while taking `2026-12-07T03:00` (UTC), and its
/// message named only two forms; and `next --at 9999-12-31` of a daily schedule said
/// "its last time is past": the scheduler computes no time far into the year 5000.
#[test]
fn next_takes_offsets_without_seconds_and_tells_the_scheduler_limit_from_a_past_last_time() {
    let run = |sched: &str, at: &str, count: &str| {
        let o = snapring(
            &[
                "next".as_ref(),
                "--schedule".as_ref(),
                sched.as_ref(),
                "--count".as_ref(),
                count.as_ref(),
                "--at".as_ref(),
                at.as_ref(),
            ],
            &[],
        );
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    for at in [
        "2026-12-07T03:00+01:00",
        "2026-12-07 03:00+01:00",
        "2026-12-07T02:00Z",
        "2026-12-07T02:00",
    ] {
        let (code, out, err) = run("0 3 * * *", at, "1");
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (Some(0), "2026-12-07T03:00:00Z\n", ""),
            "{at}"
        );
    }
    let (code, _, err) = run("0 3 * * *", "2026-12-07T03:00+1", "1");
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("--at \"2026-12-07T03:00+1\"")
            && err.contains("2026-12-07T03:00Z")
            && err.contains("YYYY-MM-DD[ HH:MM[:SS]] in UTC"),
        "{err}"
    );
    for at in ["9999-12-31", "5001-01-01T00:00Z"] {
        let (code, out, err) = run("0 3 * * *", at, "2");
        assert_eq!((code, out.as_str()), (Some(0), ""), "{err}");
        assert!(
            err.contains("no run times after")
                && err.contains("cannot compute run times far into or past the year 5000")
                && !err.contains("last time is past"),
            "{at}: {err}"
        );
    }
    let (code, out, err) = run("0 3 * * *", "4999-12-30T04:00Z", "3");
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "4999-12-31T03:00:00Z\n5000-01-01T03:00:00Z\n"),
        "{err}"
    );
    assert!(
        err.contains("only 2 run times after") && err.contains("past the year 5000 (its limit)"),
        "{err}"
    );
    // A year field that is over is still that, however late `--at` is.
    let (code, _, err) = run("cron(0 3 * * ? 2030)", "9999-12-31", "1");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("its last time is past"), "{err}");
    // One that ends in 5000, croner's last year, too (it was said to fire then).
    let (code, _, err) = run("cron(0 3 * * ? 2030-5000)", "9999-12-31", "1");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("its last time is past") && !err.contains("fires then"),
        "{err}"
    );
}

/// `snapring --catalog CATALOG daemon --config CFG` without root's capabilities to
/// read and write anything (`setpriv`, as a backup user runs it: a mode-0444 catalog
/// is read-only), its stderr into `log`.
fn daemon_without_dac(catalog: &Path, cfg: &Path, log: &Path) -> Daemon {
    let mut c = snapring_without_dac();
    c.arg("--catalog")
        .arg(catalog)
        .args(["daemon", "--config"])
        .arg(cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    Daemon(c.spawn().unwrap())
}

/// The set-up of the tests of a catalog the daemon cannot write, in `dir`: a source
/// whose runs end `partial` (a file unreadable), an empty catalog made read-only
/// (`history` no longer creates one it is named), and job `a`, every second, into
/// `dests/a`, its notifier (of every run, success too) appending `STATUS RUN_ID` to
/// `told`. The catalog, the config and `told`.
fn partial_runs_and_a_read_only_catalog(dir: &Path, dests: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let src = dir.join("src");
    write(&src.join("a/f"), b"data");
    write(&src.join("a/secret"), b"unreadable: the runs end partial");
    chmod(&src.join("a/secret"), 0o000);
    let cat = dir.join("cat.db");
    drop(snapring::catalog::Catalog::open(&cat, false).unwrap());
    chmod(&cat, 0o444);
    let told = dir.join("told");
    let cfg = dir.join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/a\"\nschedule = \"* * * * * *\"\nnotify_success = true\nnotify = [\"cmd\"]\n\n{notifier}",
            src = src.display(),
            d = dests.display(),
            notifier = told_notifier(&told),
        ),
    )
    .unwrap();
    (cat, cfg, told)
}

/// A catalog the daemon cannot write has no row of a run that ended partial, recorded
/// itself in its store and told its notifiers: the daemon took each such run for one
/// that died without recording itself, and sent a second notice, a false `failed`
/// with no run id. The store's record of the run says it ended.
#[test]
fn a_catalog_that_cannot_be_written_does_not_make_a_run_a_dead_one() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (cat, cfg, told) = partial_runs_and_a_read_only_catalog(dir, dir);
    let log = dir.join("daemon.log");
    let d = daemon_without_dac(&cat, &cfg, &log);
    let lines = || told_lines(&told);
    // Three runs: the first two were reaped (and any false notice sent) by then.
    wait_until("three notices", 60, || lines().len() >= 3);
    d.stop();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("readonly database"), "{log}");
    for l in lines() {
        let (status, id) = l.split_once(' ').unwrap_or((&l, ""));
        assert_eq!(status, "partial", "{:?}\n{log}", lines());
        assert!(!id.is_empty(), "{:?}", lines());
    }
    assert!(!log.contains("without recording a run"), "{log}");
}

/// A daemon stopped (SIGTERM) while a finished run's webhook hung took 77s to exit:
/// the run went on waiting and retrying. And it logged that it stopped a backup that
/// "ends incomplete and resumes next time" of a run that had ended complete. The run
/// now cuts the notice short on the daemon's SIGTERM, and the daemon says the run had
/// ended.
#[test]
fn a_daemon_stopped_while_a_finished_run_notifies_stops_soon_and_says_the_run_ended() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let src = dir.join("src");
    tree(&src, 4, 10);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            h.lock().unwrap().push(s);
        }
    });
    let cfg = dir.join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/a\"\nschedule = \"* * * * * *\"\nnotify_success = true\nnotify = [\"hook\"]\n\n\
             [notify.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\nretries = 2\ntimeout = \"20s\"\n",
            src = src.display(),
            d = dir.display(),
        ),
    )
    .unwrap();
    let log = dir.join("daemon.log");
    let mut c = Command::new(bin());
    c.arg("--catalog")
        .arg(dir.join("cat.db"))
        .args(["daemon", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut d = Daemon(c.spawn().unwrap());
    wait_until("the run's webhook request", 60, || {
        !held.lock().unwrap().is_empty()
    });
    let signalled = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(d.0.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let st = loop {
        if let Some(st) = d.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(90),
            "the daemon is still running 90s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = signalled.elapsed();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(st.success(), "{st}\n{log}");
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM\n{log}"
    );
    assert_eq!(
        held.lock().unwrap().len(),
        1,
        "retried after the stop\n{log}"
    );
    assert!(!log.contains("ends incomplete"), "{log}");
    assert!(log.contains("ended complete"), "{log}");
}

/// `snapring --catalog CATALOG daemon --config CFG`, its stderr (the log) into `log`.
fn daemon_logging(catalog: &Path, cfg: &Path, log: &Path) -> Daemon {
    daemon_logging_with(catalog, cfg, log, &[])
}

/// [`daemon_logging`] with `env` added to its environment.
fn daemon_logging_with(catalog: &Path, cfg: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
    let mut c = Command::new(bin());
    c.arg("--catalog")
        .arg(catalog)
        .args(["daemon", "--config"])
        .arg(cfg)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    Daemon(c.spawn().unwrap())
}

/// Holds the catalog locked (`BEGIN EXCLUSIVE`, as `sqlite3` would) until dropped.
fn lock_catalog(catalog: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(catalog).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    conn
}

fn skip_lines(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("skipped: the previous run is still going"))
        .count()
}

/// A catalog another process holds locked (`BEGIN EXCLUSIVE`) does not hold up the
/// scheduling loop: the daemon's events are queued and written by a thread of their
/// own once the catalog is free, none lost. The loop wrote each itself, waiting the
/// 5 s busy timeout per event: a trigger skipped every second was seen every 5 s (the
/// others' runs started and ended runs reaped that late), and the events were lost.
/// A stop waits for the catalog a bounded grace (5 s), then logs what it could not
/// record; it took 5 s per event still to write.
#[test]
fn a_locked_catalog_holds_up_neither_the_schedule_nor_a_stop_and_loses_no_event() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog, log) = (
        t.path().join("src"),
        t.path().join("cat.db"),
        t.path().join("daemon.log"),
    );
    write(&src.join("x"), b"x");
    let cfg = t.path().join("d.toml");
    // Its run hangs in its pre command: each trigger after the first is skipped.
    std::fs::write(
        &cfg,
        format!(
            "[job.slow]\nsource = \"{}\"\ndest = \"{}/s\"\nschedule = \"* * * * * *\"\npre_command = [\"/bin/sleep\", \"600\"]\n",
            src.display(),
            t.path().display()
        ),
    )
    .unwrap();
    let mut d = daemon_logging(&catalog, &cfg, &log);
    let skipped_events = || {
        snapring::catalog::Catalog::open(&catalog, false)
            .and_then(|c| c.events(Some("slow")))
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.kind == "skipped")
            .count()
    };
    wait_until("a first skipped trigger", 60, || skipped_events() >= 1);
    let held = lock_catalog(&catalog);
    let before = skip_lines(&log);
    std::thread::sleep(Duration::from_secs(6));
    let during = skip_lines(&log) - before;
    drop(held);
    assert!(
        during >= 4,
        "a trigger a second is skipped while the catalog is locked, not one per 5 s: {during} in 6 s"
    );
    // Every skip logged is recorded once the catalog is free.
    let logged = skip_lines(&log);
    wait_until("the queued events", 30, || skipped_events() >= logged);

    // A stop while the catalog is locked: within the grace, what is left logged.
    let held = lock_catalog(&catalog);
    let pid = rustix::process::Pid::from_raw(d.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let st = d.0.wait().unwrap();
    let took = t0.elapsed();
    drop(held);
    assert!(st.success(), "{st}");
    let text = std::fs::read_to_string(&log).unwrap();
    // The run stopped (its pre command killed) waits up to 5 s for the catalog itself.
    assert!(
        took < Duration::from_secs(15),
        "stopped in {took:?}\n{text}"
    );
    assert!(
        text.contains("daemon event not recorded in the catalog")
            && text.contains("daemon stopped"),
        "{text}"
    );
}

/// A run that recorded its end `complete` and was then killed (SIGKILL, while its
/// notifier ran) is not told as failed: the daemon dropped its record and sent the
/// generic notice, "failed", with an empty run id. Its record stands; the daemon
/// logs and records (a `warning` event) that its process was killed after its end.
#[test]
fn a_complete_run_killed_while_it_notifies_is_not_told_as_failed() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 4, 10);
    let (pid_file, told) = (t.path().join("pid"), t.path().join("told"));
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/a\"\nretain = 100\nschedule = \"* * * * * *\"\nnotify = [\"cmd\"]\nnotify_success = true\n\n\
             [notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_STATUS $SNAPRING_RUN_ID >> {told}; [ -e {pid} ] && exit 0; echo $PPID > {pid}; sleep 30\"]\ntimeout = \"60s\"\n",
            src = src.display(),
            d = t.path().display(),
            told = told.display(),
            pid = pid_file.display(),
        ),
    )
    .unwrap();
    let opts = in_process_daemon(&cfg, &catalog, "");
    let (stop, reload) = (AtomicBool::new(false), AtomicBool::new(false));
    let warned = || {
        snapring::catalog::Catalog::open(&catalog, false)
            .and_then(|c| c.events(Some("a")))
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.kind == "warning")
    };
    let mut id = String::new();
    std::thread::scope(|s| {
        let h = s.spawn(|| snapring::daemon::run(&opts, &stop, &reload));
        let _stop = StopOnDrop(&stop);
        let pid = run_pid(&pid_file);
        id = told_lines(&told)[0]
            .strip_prefix("complete ")
            .unwrap()
            .to_string();
        sigkill(pid);
        wait_until("the daemon to see the killed run", 30, || {
            warned().is_some()
        });
        // Later runs go on (and notify complete).
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap().unwrap();
    });
    let lines = told_lines(&told);
    assert!(
        lines.iter().all(|l| l.starts_with("complete ")),
        "no failure notice: {lines:?}"
    );
    let w = warned().unwrap();
    assert!(
        w.message.contains(&id) && w.message.contains("killed by signal 9"),
        "{}",
        w.message
    );
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    assert!(
        !c.events(Some("a"))
            .unwrap()
            .iter()
            .any(|e| e.kind == "error"),
        "no error event"
    );
    let (_, shown, _, _) = cli(&catalog, &["show", &id, "--json"], &[]);
    assert_eq!(shown["report"]["status"], "complete", "{shown}");
}

/// A 6-field schedule (seconds first) that fires once, `secs` seconds from now (UTC).
fn once_in(secs: i64) -> String {
    use chrono::Timelike;
    let t = chrono::Utc::now() + chrono::Duration::seconds(secs);
    format!("{} {} {} * * *", t.second(), t.minute(), t.hour())
}

/// `dir/d.toml` with `max_runs = max` and `jobs`, each `(name, dest, extra keys)`: a
/// backup of its own small source, due once in 3 s; its pre command appends `start
/// NAME` to `dir/order` and sleeps `hold` seconds, its post command appends `end NAME`.
fn crowd(dir: &Path, max: u32, hold: u32, jobs: &[(&str, &str, &str)]) -> PathBuf {
    let order = dir.join("order");
    let when = once_in(3);
    let mut text = format!(
        "max_runs = {max}\n\n[notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_JOB $SNAPRING_STATUS >> {}\"]\n\n",
        dir.join("told").display()
    );
    for (name, dest, extra) in jobs {
        let src = dir.join("src").join(name);
        write(&src.join("f"), name.as_bytes());
        std::fs::create_dir_all(dir.join(dest)).unwrap();
        text.push_str(&format!(
            "[job.{name}]\nsource = \"{src}\"\ndest = \"{dest}\"\nlabel = \"l{name}\"\nschedule = \"{when}\"\nnotify = [\"cmd\"]\n\
             pre_command = [\"/bin/sh\", \"-c\", \"echo start $SNAPRING_JOB >> {order}; sleep {hold}\"]\n\
             post_command = [\"/bin/sh\", \"-c\", \"echo end $SNAPRING_JOB >> {order}\"]\n{extra}\n",
            src = src.display(),
            dest = dir.join(dest).display(),
            order = order.display(),
        ));
    }
    let cfg = dir.join("d.toml");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// The lines of `dir/order` (`start NAME`, `end NAME`).
fn order_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("order"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Jobs due at once beyond `max_runs` wait and start as others end, in due order, and
/// two jobs on one store run one after the other, both complete. The daemon started
/// every due job at once (300 jobs due the same minute: 190 to 235 processes at once,
/// 2.3 to 3.5 GB, catalog writes failing on its lock), and the store's lock failed
/// all but one run of the jobs on one store, each recorded and notified `failed`.
#[test]
fn runs_past_max_runs_wait_and_jobs_on_one_store_do_not_fail_each_other() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let catalog = dir.join("cat.db");
    let jobs = [
        ("a", "sa", ""),
        ("b", "sb", ""),
        ("c", "sc", ""),
        ("d", "shared", ""),
        ("e", "shared", ""),
    ];
    let cfg = crowd(dir, 2, 1, &jobs);
    let log = dir.join("daemon.log");
    let d = daemon_logging(&catalog, &cfg, &log);
    wait_until("every run's end", 60, || {
        order_lines(dir)
            .iter()
            .filter(|l| l.starts_with("end "))
            .count()
            >= jobs.len()
    });
    d.stop();
    let lines = order_lines(dir);
    let text = std::fs::read_to_string(&log).unwrap();
    // At most 2 at once, and 2 did run at once (a cap, not one at a time).
    let mut going = 0i32;
    let mut most = 0;
    let mut shared = 0i32;
    for l in &lines {
        let (what, job) = l.split_once(' ').unwrap();
        let step = if what == "start" { 1 } else { -1 };
        going += step;
        most = most.max(going);
        if job == "d" || job == "e" {
            shared += step;
            assert!(shared <= 1, "d and e ran on their store at once: {lines:?}");
        }
    }
    assert_eq!(most, 2, "{lines:?}\n{text}");
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    for (name, _, _) in jobs {
        let rows = c.recent(name, 10).unwrap();
        assert_eq!(rows.len(), 1, "job {name}: {lines:?}\n{text}");
        assert_eq!(
            rows[0].status, "complete",
            "job {name}: {}\n{text}",
            rows[0].id
        );
    }
    // Nobody was told of a failure (`notify_success` is off).
    assert!(!dir.join("told").exists(), "{text}");
}

/// A run that waits to start (`max_runs` runs going) past its job's `window`, counted
/// from its trigger, is skipped: a `skipped` event and an `incomplete` notice, as a
/// run its window cut short, and no run.
#[test]
fn a_queued_run_whose_window_closes_before_it_starts_is_skipped_and_told() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let catalog = dir.join("cat.db");
    // `a` is due first in name order, holds the one slot for 4 s; `b`'s window is 1 s.
    let cfg = crowd(
        dir,
        1,
        4,
        &[("a", "sa", ""), ("b", "sb", "window = \"1s\"\n")],
    );
    let log = dir.join("daemon.log");
    let d = daemon_logging(&catalog, &cfg, &log);
    let told = dir.join("told");
    wait_until("b's notice", 30, || {
        std::fs::read_to_string(&told)
            .unwrap_or_default()
            .contains("b ")
    });
    wait_until("a's end", 30, || {
        order_lines(dir).contains(&"end a".to_string())
    });
    d.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        std::fs::read_to_string(&told).unwrap().trim(),
        "b incomplete",
        "{text}"
    );
    assert!(!order_lines(dir).contains(&"start b".to_string()), "{text}");
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    assert!(c.recent("b", 10).unwrap().is_empty(), "{text}");
    let skipped: Vec<String> = c
        .events(Some("b"))
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "skipped")
        .map(|e| e.message)
        .collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0].contains("backup window (1s) closed")
            && skipped[0].contains("before its run could start (1 runs are going, max_runs = 1)"),
        "{skipped:?}"
    );
}

/// A queued run's store is the one its job writes when the run starts, not when it was
/// queued: a reload (SIGHUP) that moves a waiting job onto the store of a running one
/// (and frees a slot) makes it wait for that run, not start beside it, which the
/// store's lock refused (recorded and notified `failed`, exit 75).
#[test]
fn a_queued_run_waits_for_the_store_its_job_writes_after_a_reload() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let catalog = dir.join("cat.db");
    // `a` holds the one slot for 4 s (its pre command); `b` waits for it.
    let cfg = crowd(dir, 1, 4, &[("a", "sa", ""), ("b", "sb", "")]);
    let log = dir.join("daemon.log");
    let d = daemon_logging(&catalog, &cfg, &log);
    // Both are due at once: `b` was queued as `a` started.
    wait_until("a's start", 30, || {
        order_lines(dir).contains(&"start a".to_string())
    });
    // Two slots now, and `b` writes `a`'s store.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let moved = text.replace("max_runs = 1", "max_runs = 2").replace(
        &format!("{}\"", dir.join("sb").display()),
        &format!("{}\"", dir.join("sa").display()),
    );
    assert_ne!(moved, text);
    std::fs::write(&cfg, moved).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(d.0.id() as i32).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    wait_until("b's end", 60, || {
        order_lines(dir).contains(&"end b".to_string()) || dir.join("told").exists()
    });
    d.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = order_lines(dir);
    assert!(
        !dir.join("told").exists(),
        "a failure was told: {lines:?}\n{text}"
    );
    let pos = |l: &str| lines.iter().position(|x| x == l);
    assert!(
        pos("end a").is_some() && pos("end a") < pos("start b"),
        "b started on a's store while a ran: {lines:?}\n{text}"
    );
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    for name in ["a", "b"] {
        let rows = c.recent(name, 10).unwrap();
        assert_eq!(rows.len(), 1, "job {name}: {text}");
        assert_eq!(rows[0].status, "complete", "job {name}: {text}");
        assert_eq!(
            rows[0].store,
            dir.join("sa").display().to_string(),
            "{text}"
        );
    }
}

/// Whether a run of its job holds its store is read when a queued run starts, not when
/// it was queued: a run of the job started by hand while the daemon's run waited (for
/// `max_runs`) skips the trigger (a `skipped` event naming it), as one going when the
/// trigger came does. The queued run started, the store's lock refused it, and it was
/// recorded and told `failed`.
#[test]
fn a_queued_run_skips_when_a_run_started_by_hand_holds_its_store_by_then() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let catalog = dir.join("cat.db");
    let cfg = crowd(dir, 1, 3, &[("a", "sa", ""), ("b", "sb", "")]);
    // The run by hand holds `b`'s store for 8 s: past `a`'s end.
    let by_hand = dir.join("by-hand.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&by_hand, text.replace("sleep 3", "sleep 8")).unwrap();
    let log = dir.join("daemon.log");
    let d = daemon_logging(&catalog, &cfg, &log);
    wait_until("a's start", 30, || {
        order_lines(dir).contains(&"start a".to_string())
    });
    let mut hand = Command::new(bin())
        .arg("--catalog")
        .arg(&catalog)
        .args(["run", "b", "--config"])
        .arg(&by_hand)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("a's end", 30, || {
        order_lines(dir).contains(&"end a".to_string())
    });
    assert!(hand.wait().unwrap().success());
    d.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = order_lines(dir);
    assert!(
        !dir.join("told").exists(),
        "a failure was told: {lines:?}\n{text}"
    );
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    let rows = c.recent("b", 10).unwrap();
    assert_eq!(rows.len(), 1, "only the run by hand: {text}");
    assert_eq!(rows[0].status, "complete", "{text}");
    let skipped: Vec<String> = c
        .events(Some("b"))
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "skipped")
        .map(|e| e.message)
        .collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}\n{text}");
    assert!(
        skipped[0].contains("a run of the job that this daemon did not start"),
        "{skipped:?}"
    );
}

/// A daemon stop (SIGTERM) while a run is in its `pre_command`: the run was recorded
/// `failed` ("pre_command … failed: killed: snapring was interrupted", exit 1), told
/// as a failure, and the next daemon start neither resumed nor re-ran it. Now it ends
/// as a run stopped in its walk does: `incomplete`, "interrupted …", exit 3, its post
/// command run and its notice `incomplete`, and the next start resumes the job.
#[test]
fn a_daemon_stop_during_a_pre_command_ends_the_run_interrupted_and_the_next_start_resumes_it() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 4, 10);
    let (mark, told, post) = (
        t.path().join("mark"),
        t.path().join("told"),
        t.path().join("post"),
    );
    let cfg = t.path().join("d.toml");
    // Due once, 2 s from now (so the next start has missed nothing); the first pre
    // command hangs, later ones pass.
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/a\"\njobs = 1\nschedule = \"{when}\"\n\
             pre_command = [\"/bin/sh\", \"-c\", \"[ -e {mark} ] && exit 0; touch {mark}; exec sleep 30\"]\n\
             post_command = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_STATUS >> {post}\"]\nnotify = [\"cmd\"]\n\n\
             [notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_JOB $SNAPRING_STATUS $SNAPRING_RUN_ID >> {told}\"]\n",
            src = src.display(),
            d = t.path().display(),
            when = once_in(2),
            mark = mark.display(),
            post = post.display(),
            told = told.display(),
        ),
    )
    .unwrap();
    let first = Daemon::start(&catalog, &cfg, "");
    wait_until("the pre command", 60, || mark.exists());
    std::thread::sleep(Duration::from_millis(1000));
    first.stop();
    let rows = rows_of(&catalog, "a");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["status"], "incomplete", "{rows:?}");
    let id = rows[0]["id"].as_str().unwrap().to_string();
    let msg = message_of(&catalog, &id);
    assert!(msg.starts_with("interrupted"), "{msg}");
    let (_, shown, _, _) = cli(&catalog, &["show", &id, "--json"], &[]);
    assert_eq!(shown["report"]["exit_code"], 3, "{shown}");
    assert_eq!(told_lines(&told), [format!("a incomplete {id}")]);
    assert_eq!(std::fs::read_to_string(&post).unwrap(), "incomplete\n");

    let second = Daemon::start(&catalog, &cfg, "");
    wait_until("the resumed run", 60, || {
        rows_of(&catalog, "a")
            .iter()
            .any(|r| r["status"] == "complete")
    });
    second.stop();
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    let resumed = c
        .events(Some("a"))
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "resumed")
        .count();
    assert_eq!(resumed, 1);
}

/// A failed run whose notice a stop cut short (`snapring run`, SIGTERM while its
/// notifier hangs: "cut short by shutdown (SIGTERM/SIGINT): not retried") was never
/// told: the next daemon start told only runs that died untold. Now it tells the
/// notifiers that were cut short, once; a notice that failed by itself (retried as
/// set) is not sent again.
#[test]
fn a_notice_cut_short_by_a_stop_is_told_at_the_next_daemon_start_once() {
    let t = tempfile::tempdir().unwrap();
    let catalog = t.path().join("cat.db");
    let (mark, told, bad) = (
        t.path().join("mark"),
        t.path().join("told"),
        t.path().join("bad"),
    );
    let cfg = t.path().join("d.toml");
    // Both sources are missing: their runs fail. `slow` hangs the first time.
    std::fs::write(
        &cfg,
        format!(
            "[job.h]\nsource = \"{d}/missing\"\ndest = \"{d}/h\"\nschedule = \"@yearly\"\nnotify = [\"slow\"]\n\n\
             [job.g]\nsource = \"{d}/missing\"\ndest = \"{d}/g\"\nschedule = \"@yearly\"\nnotify = [\"bad\"]\n\n\
             [notify.slow]\ntype = \"command\"\nretries = 2\ncommand = [\"/bin/sh\", \"-c\", \"[ -e {mark} ] || {{ touch {mark}; sleep 100; }}; echo $SNAPRING_STATUS $SNAPRING_RUN_ID >> {told}\"]\n\n\
             [notify.bad]\ntype = \"command\"\nretries = 0\ncommand = [\"/bin/sh\", \"-c\", \"echo x >> {bad}; exit 1\"]\n",
            d = t.path().display(),
            mark = mark.display(),
            told = told.display(),
            bad = bad.display(),
        ),
    )
    .unwrap();
    let run = |job: &str| {
        let mut c = Command::new(bin());
        c.arg("--catalog")
            .arg(&catalog)
            .args(["run", job, "--config"])
            .arg(&cfg)
            .arg("--no-progress")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    assert_eq!(run("g").status().unwrap().code(), Some(1));
    let mut h = run("h").spawn().unwrap();
    wait_until("the notifier", 60, || mark.exists());
    std::thread::sleep(Duration::from_millis(300));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(h.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    h.wait().unwrap();
    let id = rows_of(&catalog, "h")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, shown, _, _) = cli(&catalog, &["show", &id, "--json"], &[]);
    assert_eq!(shown["report"]["status"], "failed", "{shown}");
    let error = shown["report"]["notifications"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("cut short by shutdown"), "{shown}");
    assert!(told_lines(&told).is_empty());

    let second = Daemon::start(&catalog, &cfg, "");
    let line = format!("failed {id}");
    wait_until("the notice of the cut run", 30, || {
        told_lines(&told).contains(&line)
    });
    wait_until("the notice's outcome in the catalog", 30, || {
        let (_, shown, _, _) = cli(&catalog, &["show", &id, "--json"], &[]);
        shown["report"]["notifications"][0]["ok"] == true
    });
    second.stop();
    let third = Daemon::start(&catalog, &cfg, "");
    std::thread::sleep(Duration::from_secs(3));
    third.stop();
    assert_eq!(told_lines(&told), [line]);
    assert_eq!(
        told_lines(&bad).len(),
        1,
        "a notice that failed by itself is not sent again"
    );
}

/// `missed = "skip"` is about scheduled times that passed while the daemon was down;
/// it also turned off the resume of a run interrupted with the daemon, which is not a
/// missed time. Now such a run resumes at start whatever `missed` says.
#[test]
fn missed_skip_still_resumes_an_interrupted_run() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 30, 10);
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.s]\nsource = \"{}\"\ndest = \"{}/s\"\njobs = 1\nschedule = \"@yearly\"\nmissed = \"skip\"\n",
            src.display(),
            t.path().display()
        ),
    )
    .unwrap();
    let (st, _) = stopped_mid_walk(
        &mut slow_run(&catalog, &cfg, "s"),
        &t.path().join("s/.snapring/runs"),
        rustix::process::Signal::TERM,
    );
    assert_eq!(st.code(), Some(3));

    let daemon = Daemon::start(&catalog, &cfg, "");
    wait_until("the interrupted run to be resumed", 60, || {
        rows_of(&catalog, "s")
            .iter()
            .any(|r| r["status"] == "complete")
    });
    daemon.stop();
    let statuses: Vec<_> = rows_of(&catalog, "s")
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["incomplete", "complete"]);
}

/// The path the daemon was started from is gone (an old release's versioned directory
/// deleted): every run failed to start, a log line only, and backups stopped without a
/// word until the daemon was restarted. Now its runs start from the daemon's own
/// executable, with a warning.
#[test]
fn a_daemon_whose_executable_path_is_gone_still_runs_its_jobs() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 4, 10);
    let v1 = t.path().join("v1");
    std::fs::create_dir(&v1).unwrap();
    let exe = v1.join("snapring");
    // A hard link where it can be (the same file system): a copy is written through a
    // descriptor that a child another test forks meanwhile holds until its exec, and
    // starting the copy then fails with ETXTBSY ("Text file busy"; seen once in
    // session 46). The daemon is started again for a while on that error.
    if std::fs::hard_link(bin(), &exe).is_err() {
        std::fs::copy(bin(), &exe).unwrap();
    }
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{}\"\ndest = \"{}/a\"\nschedule = \"* * * * * *\"\n",
            src.display(),
            t.path().display()
        ),
    )
    .unwrap();
    let log = t.path().join("daemon.log");
    // In the guard, so that a failed assertion does not leave the daemon running.
    let start = || {
        Command::new(&exe)
            .args(["--catalog"])
            .arg(&catalog)
            .args(["daemon", "--config"])
            .arg(&cfg)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
    };
    let mut started = start();
    for _ in 0..100 {
        match &started {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(20));
                started = start();
            }
            _ => break,
        }
    }
    let mut child = Daemon(started.unwrap());
    std::fs::remove_dir_all(&v1).unwrap();
    wait_until("a run started after the executable went", 60, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("is gone"))
            && rows_of(&catalog, "a")
                .iter()
                .any(|r| r["status"] == "complete")
    });
    let pid = rustix::process::Pid::from_raw(child.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(child.0.wait().unwrap().success());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("cannot start"), "{log}");
}

/// A run the daemon cannot start at all (here: its executable is not executable) has
/// no process to record or tell anything: the job's notifiers hear it from the daemon.
#[test]
fn a_run_the_daemon_cannot_start_is_told() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 4, 10);
    let told = t.path().join("told");
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/a\"\nschedule = \"* * * * * *\"\nnotify = [\"cmd\"]\n\n\
             [notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_JOB $SNAPRING_STATUS >> {told}\"]\n",
            src = src.display(),
            d = t.path().display(),
            told = told.display(),
        ),
    )
    .unwrap();
    let not_exe = t.path().join("snapring");
    std::fs::write(&not_exe, b"not a program").unwrap();
    let mut opts = in_process_daemon(&cfg, &catalog, "");
    opts.exe = not_exe;
    let (stop, reload) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let h = s.spawn(|| snapring::daemon::run(&opts, &stop, &reload));
        let _stop = StopOnDrop(&stop);
        wait_until("the notice", 60, || {
            told_lines(&told).iter().any(|l| l == "a failed")
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap().unwrap();
    });
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    assert!(
        c.events(Some("a"))
            .unwrap()
            .iter()
            .any(|e| e.kind == "error" && e.message.contains("cannot start")),
        "an error event"
    );
}

/// A clock stepped back past a trigger the daemon already ran (NTP correcting a clock
/// that ran ahead): the same time of the schedule came round again and the job ran a
/// second time (a daily job twice at 02:00, the extra snapshot taking a slot of the
/// ring). Each time of the schedule now runs once.
#[test]
fn a_trigger_already_run_does_not_run_again_after_the_clock_went_back() {
    let Some(lib) = libfaketime() else { return };
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    write(&src.join("x"), b"x");
    let offset = t.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    // Daily, at a time of day a few seconds from now.
    let at = chrono::Utc::now() + chrono::Duration::seconds(8);
    let cfg = daily_job_at(t.path(), &src, at);
    let log = t.path().join("log");
    let mut d = faked_daemon(&lib, &offset, &catalog, &cfg, &log);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the daemon's plan", 30, || logged().contains("next run at"));
    assert!(
        chrono::Utc::now() < at - chrono::Duration::seconds(1),
        "the daemon took too long to start: the test's trigger is past"
    );
    wait_until("the run due today", 40, || {
        rows_of(&catalog, "j")
            .iter()
            .any(|r| r["status"] == "complete")
    });
    // NTP steps the clock back 15 s, to before the trigger that ran.
    std::fs::write(&offset, "-15\n").unwrap();
    wait_until("the daemon to see the step", 20, || {
        logged().contains("the clock went back by")
    });
    // Past the trigger's time again on the stepped clock, with time for a run.
    while chrono::Utc::now() < at + chrono::Duration::seconds(15 + 5) {
        std::thread::sleep(Duration::from_millis(200));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(d.0.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(d.0.wait().unwrap().success(), "{}", logged());
    let rows = rows_of(&catalog, "j");
    assert_eq!(
        rows.len(),
        1,
        "the trigger ran twice: {rows:?}\n{}",
        logged()
    );
    assert!(
        logged().contains("the daemon handled this time of the schedule before"),
        "{}",
        logged()
    );
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    assert!(
        c.events(Some("j"))
            .unwrap()
            .iter()
            .any(|e| e.kind == "skipped" && e.message.contains("the clock went back")),
        "a skipped event"
    );
}

/// With the catalog off (`--catalog off`), a run killed mid-walk (its record left
/// `running`) is resumed at the next daemon start and told to the job's notifiers, from
/// the store's run records, as with a catalog; a run its window cut short still waits.
/// The resume and the tell read the catalog only: the job waited a year for its next
/// time and nobody was told.
#[test]
fn with_the_catalog_off_a_killed_run_is_resumed_and_told_at_the_next_start() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 30, 10);
    let told = t.path().join("told");
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.killed]\nsource = \"{0}\"\ndest = \"{1}/k\"\njobs = 1\nschedule = \"@yearly\"\nnotify = [\"cmd\"]\n\n\
             [job.windowed]\nsource = \"{0}\"\ndest = \"{1}/w\"\njobs = 1\nschedule = \"@yearly\"\nwindow = \"1s\"\n\n\
             [notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_JOB $SNAPRING_STATUS $SNAPRING_RUN_ID >> {2}\"]\n",
            src.display(),
            t.path().display(),
            told.display(),
        ),
    )
    .unwrap();
    let run = |job: &str| slow_run(Path::new("off"), &cfg, job);
    let runs = t.path().join("k/.snapring/runs");
    let (_, id) = stopped_mid_walk(&mut run("killed"), &runs, rustix::process::Signal::KILL);
    assert_eq!(run("windowed").status().unwrap().code(), Some(3));
    assert!(told_lines(&told).is_empty(), "{:?}", told_lines(&told));

    let mut opts = in_process_daemon(&cfg, &t.path().join("unused.db"), "");
    opts.catalog = None;
    let (stop, reload) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let h = s.spawn(|| snapring::daemon::run(&opts, &stop, &reload));
        let _stop = StopOnDrop(&stop);
        wait_until("the interrupted run to be resumed", 60, || {
            t.path().join("k/daily.0/d0/f0").exists()
        });
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap().unwrap();
    });
    assert!(
        !t.path().join("w/daily.0").exists(),
        "the windowed run waits"
    );
    assert!(!t.path().join("unused.db").exists());
    let lines = told_lines(&told);
    assert!(
        lines.contains(&format!("killed incomplete {id}")),
        "the killed run is told: {lines:?}"
    );
    // Its record has the notice's outcome: a later start does not tell it again.
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs.join(format!("{id}.json"))).unwrap()).unwrap();
    assert_eq!(r["status"], "incomplete", "{r}");
    assert_eq!(r["notifications"][0]["ok"], true, "{r}");
}

/// Two daemons scheduling jobs into one store (two hosts, or here two config files
/// with their own catalogs on one host) were not told of each other: their runs met
/// on the store's lock, one refused (`failed`, told) each time. Each daemon now keeps a
/// heartbeat marker in `.snapring/daemons/` of each store it serves: the second warns
/// at its start of the first, the first at its next refresh of the second (each once),
/// a clean stop removes its marker, and a daemon killed and started again is not
/// warned of its own old marker (nor of a killed daemon's).
#[test]
fn two_daemons_on_one_store_are_warned_of_each_other() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 2, 10);
    let store = t.path().join("s");
    let config = |name: &str| {
        let cfg = t.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[job.{name}]\nsource = \"{}\"\ndest = \"{}\"\nschedule = \"@yearly\"\nmissed = \"skip\"\n",
                src.display(),
                store.display()
            ),
        )
        .unwrap();
        cfg
    };
    let (a, b) = (config("a"), config("b"));
    let (ca, cb) = (t.path().join("a.db"), t.path().join("b.db"));
    // The store exists (a daemon marks only stores that do).
    let (code, _, err, _) = cli(&ca, &["run", "a", "--config", a.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    let markers = store.join(".snapring/daemons");
    let marker_count = || {
        std::fs::read_dir(&markers).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
    };
    let beat = [("SNAPRING_DAEMON_HEARTBEAT", "1s")];
    let (la, lb) = (t.path().join("a.log"), t.path().join("b.log"));
    let logged = |log: &Path| std::fs::read_to_string(log).unwrap_or_default();
    let warned = |log: &Path, of: &Path| {
        logged(log).lines().any(|l| {
            l.contains("another snapring daemon schedules jobs into the store")
                && l.contains(&of.display().to_string())
                && l.contains(&store.display().to_string())
        })
    };
    let first = daemon_logging_with(&ca, &a, &la, &beat);
    wait_until("the first daemon's marker", 30, || marker_count() == 1);
    let second = daemon_logging_with(&cb, &b, &lb, &beat);
    wait_until("the second daemon's warning", 30, || warned(&lb, &a));
    wait_until("the first daemon's warning, at its refresh", 30, || {
        warned(&la, &b)
    });
    // Once each, not at every refresh.
    std::thread::sleep(Duration::from_secs(3));
    for (log, of) in [(&la, &b), (&lb, &a)] {
        let n = logged(log)
            .lines()
            .filter(|l| {
                l.contains("another snapring daemon") && l.contains(&of.display().to_string())
            })
            .count();
        assert_eq!(n, 1, "{}", logged(log));
    }
    let c = snapring::catalog::Catalog::open(&cb, false).unwrap();
    assert!(
        c.events(None)
            .unwrap()
            .iter()
            .any(|e| e.kind == "warning" && e.message.contains("another snapring daemon")),
        "a warning event"
    );
    drop(c);
    // A clean stop removes its marker.
    second.stop();
    assert_eq!(marker_count(), 1);
    // Killed (its marker left, fresh) and started again: its own old marker is no
    // other daemon.
    drop(first);
    assert_eq!(marker_count(), 1);
    let la2 = t.path().join("a2.log");
    let again = daemon_logging_with(&ca, &a, &la2, &beat);
    // Its marker, rewritten by the new process, then three refreshes.
    let pid = again.0.id();
    wait_until("the restarted daemon's marker", 30, || {
        std::fs::read_dir(&markers).is_ok_and(|d| {
            d.flatten().any(|e| {
                std::fs::read(e.path()).is_ok_and(|b| {
                    serde_json::from_slice::<serde_json::Value>(&b).is_ok_and(|m| m["pid"] == pid)
                })
            })
        })
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !logged(&la2).contains("another snapring daemon"),
        "{}",
        logged(&la2)
    );
    again.stop();
    assert_eq!(marker_count(), 0, "a clean stop removes its marker");
    // The markers are no snapshot and nothing `list` or `verify` reads.
    std::fs::create_dir_all(&markers).unwrap();
    std::fs::write(markers.join("other-0123456789abcdef.json"), b"{}").unwrap();
    let dest = store.to_str().unwrap();
    for args in [
        vec!["list", "--dest", dest],
        vec!["verify", "--all", "--dest", dest],
    ] {
        let (code, _, err, out) = cli(&ca, &args, &[]);
        assert_eq!(code, 0, "{args:?}: {err}{out}");
        assert!(!out.contains("daemons"), "{args:?}: {out}");
    }
}

/// With the catalog off (`--catalog off`), `missed = "run-once"` had no history to
/// read: a daily time that passed while the daemon was down waited a day for the next,
/// as a new job's would. The job's newest run record in its store is its history now.
#[test]
fn with_the_catalog_off_a_missed_run_runs_once_at_start() {
    let Some(lib) = libfaketime() else { return };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("x"), b"x");
    // Daily, at the time of day an hour ago: its last time passed an hour ago.
    let cfg = daily_job_at(
        t.path(),
        &src,
        chrono::Utc::now() - chrono::Duration::hours(1),
    );
    // The job's last run, yesterday (before that time).
    let offset = t.path().join("faketime");
    std::fs::write(&offset, "-86400\n").unwrap();
    let mut run = Command::new(bin());
    run.args(["--catalog", "off", "run", "j", "--no-progress", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null());
    faked(&mut run, &lib, &offset);
    assert!(run.status().unwrap().success());
    let runs = t.path().join("s/.snapring/runs");
    let records = || {
        std::fs::read_dir(&runs)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count()
    };
    assert_eq!(records(), 1);
    std::fs::write(&offset, "+0\n").unwrap();
    let log = t.path().join("log");
    let d = faked_daemon(&lib, &offset, Path::new("off"), &cfg, &log);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the missed run", 60, || {
        logged().contains("was missed while the daemon was down")
            && t.path().join("s/daily.1").exists()
    });
    assert_eq!(records(), 2);
    d.stop();
    assert!(!t.path().join("off").exists());
}

/// The start of the tests of deaths told at a daemon's start: job `a` of
/// [`killable_job`] in a new directory, with its catalog (`off`: none), whose runs,
/// started by hand (no daemon to see them end), are stopped mid-walk by `signals` in
/// turn. The directory, the catalog, the config, the notifier's `told` and the runs'
/// ids. The runs are made with the job's notifier; [`runs_stopped_quiet`] without.
fn runs_stopped(
    off: bool,
    signals: &[rustix::process::Signal],
) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf, Vec<String>) {
    runs_stopped_with(off, signals, true)
}

/// [`runs_stopped`] with runs made by a config without the job's notifier (added after
/// them, as to a job run by hand or by a timer before its notifier was set): a run
/// tells the untold deaths before it only to notifiers, so none is told before the
/// daemon's start, which these tests are of. The config returned has the notifier.
fn runs_stopped_quiet(
    off: bool,
    signals: &[rustix::process::Signal],
) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf, Vec<String>) {
    runs_stopped_with(off, signals, false)
}

fn runs_stopped_with(
    off: bool,
    signals: &[rustix::process::Signal],
    notify: bool,
) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf, Vec<String>) {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 30, 10);
    let catalog = match off {
        true => PathBuf::from("off"),
        false => t.path().join("cat.db"),
    };
    let (cfg, _, told) = killable_job(t.path(), &src);
    let run_cfg = match notify {
        true => cfg.clone(),
        false => {
            let quiet = t.path().join("quiet.toml");
            let text = std::fs::read_to_string(&cfg).unwrap();
            assert!(text.contains("notify = [\"cmd\"]\n"), "{text}");
            std::fs::write(&quiet, text.replace("notify = [\"cmd\"]\n", "")).unwrap();
            quiet
        }
    };
    let runs = t.path().join("a/.snapring/runs");
    let ids = signals
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // Each run in a second of its own: run ids (and the catalog's start times)
            // are to the second, so two runs started within one had no order, and
            // which was the newest (told, or not) was a coin toss.
            if i > 0 {
                std::thread::sleep(Duration::from_millis(1100));
            }
            stopped_mid_walk(&mut slow_run(&catalog, &run_cfg, "a"), &runs, *s).1
        })
        .collect();
    (t, catalog, cfg, told, ids)
}

/// Two runs of a job killed one after the other (as with the machine, no daemon to see
/// them die: here run by hand, before the job had its notifier), neither told: the next
/// daemon start told the newest only, and the older death was never told to anyone.
/// Now each is told, once, with the catalog and with it off (from the store's run
/// records). (A run with notifiers tells the deaths before it itself:
/// [`killed_runs_are_told_by_the_next_run_and_not_again_at_the_next_start`].)
#[test]
fn runs_killed_one_after_another_are_each_told_at_the_next_start() {
    for off in [false, true] {
        use rustix::process::Signal;
        let (_t, catalog, cfg, told, ids) = runs_stopped_quiet(off, &[Signal::KILL, Signal::KILL]);
        let [first, second] = ids.as_slice() else {
            unreachable!()
        };
        assert!(told_lines(&told).is_empty(), "{:?}", told_lines(&told));
        let d = Daemon::start(&catalog, &cfg, "");
        let lines = [
            format!("a incomplete {first}"),
            format!("a incomplete {second}"),
        ];
        wait_until("the notices of both killed runs", 30, || {
            let got = told_lines(&told);
            lines.iter().all(|l| got.contains(l))
        });
        d.stop();
        // Once each (the notices go out each on a thread of its own, in no set order).
        let got = told_lines(&told);
        for l in &lines {
            assert_eq!(got.iter().filter(|g| *g == l).count(), 1, "{got:?}");
        }
    }
}

/// A run killed (no daemon to see it die), then a run stopped by SIGTERM that ended
/// `incomplete` by itself, then a second run killed (all before the job had its
/// notifier): the next daemon start tells the second death only. It looked back to the
/// newest `complete` run and told the first death too, which the run after it had
/// ended after (as at the first start after an upgrade, or for a job whose runs end
/// `incomplete` night after night). With the catalog and with it off.
#[test]
fn a_death_before_a_run_that_told_its_end_is_not_told_at_the_next_start() {
    for off in [false, true] {
        use rustix::process::Signal;
        let (_t, catalog, cfg, told, ids) =
            runs_stopped_quiet(off, &[Signal::KILL, Signal::TERM, Signal::KILL]);
        let [old, _, new] = ids.as_slice() else {
            unreachable!()
        };
        assert!(
            told_lines(&told).is_empty(),
            "off: {off}: {:?}",
            told_lines(&told)
        );
        let d = Daemon::start(&catalog, &cfg, "");
        let new_line = format!("a incomplete {new}");
        wait_until("the notice of the newest killed run", 30, || {
            told_lines(&told).contains(&new_line)
        });
        // The notices go out each on a thread of their own: time for a second one.
        std::thread::sleep(Duration::from_secs(3));
        d.stop();
        let got = told_lines(&told);
        assert!(
            !got.iter().any(|l| l.ends_with(old.as_str())),
            "off: {off}: the death before a told run was told: {got:?}"
        );
        assert_eq!(got.iter().filter(|g| **g == new_line).count(), 1, "{got:?}");
    }
}

/// Runs killed one after the other by hand with the job's notifier, with a run stopped
/// by SIGTERM between (it tells its own end): each run tells the death before it,
/// before its walk (since 2026-12-08), and the next daemon start tells the last death
/// only; each death told once, with the catalog and with it off.
#[test]
fn killed_runs_are_told_by_the_next_run_and_not_again_at_the_next_start() {
    use rustix::process::Signal;
    for off in [false, true] {
        for signals in [
            &[Signal::KILL, Signal::KILL][..],
            &[Signal::KILL, Signal::TERM, Signal::KILL][..],
        ] {
            let (_t, catalog, cfg, told, ids) = runs_stopped(off, signals);
            let before: Vec<String> = ids[..ids.len() - 1]
                .iter()
                .map(|id| format!("a incomplete {id}"))
                .collect();
            assert_eq!(told_lines(&told), before, "off: {off}");
            let d = Daemon::start(&catalog, &cfg, "");
            let last = format!("a incomplete {}", ids[ids.len() - 1]);
            wait_until("the notice of the last killed run", 30, || {
                told_lines(&told).contains(&last)
            });
            std::thread::sleep(Duration::from_secs(3));
            d.stop();
            let got = told_lines(&told);
            for l in before.iter().chain([&last]) {
                assert_eq!(
                    got.iter().filter(|g| *g == l).count(),
                    1,
                    "off: {off}: {got:?}"
                );
            }
            assert_eq!(got.len(), ids.len(), "off: {off}: {got:?}");
        }
    }
}

/// The daemon of the tests of a store that hangs, in `dir` (its catalog `cat.db`, its
/// log `daemon.log`, its heartbeat every second), with two jobs: `hung`, at `schedule`
/// (`missed = "skip"`), writes `dest` (or `mnt/s` if `None`; `s` is a store already,
/// so the daemon keeps its marker there), `mnt` a latencyfs mount that stalls for a
/// minute every call on a path matching `stall`; `fast` writes `fast` every second.
/// The layer and the daemon; `None` where FUSE cannot run.
fn hung_store_daemon(
    dir: &Path,
    stall: &str,
    schedule: &str,
    dest: Option<&Path>,
) -> Option<(FaultFs, Daemon)> {
    hung_store_daemon_on(dir, stall, schedule, dest, &dir.join("cat.db"))
}

/// [`hung_store_daemon`] with the catalog `catalog` (`off`: none).
fn hung_store_daemon_on(
    dir: &Path,
    stall: &str,
    schedule: &str,
    dest: Option<&Path>,
    catalog: &Path,
) -> Option<(FaultFs, Daemon)> {
    let (src, under, mnt) = (dir.join("src"), dir.join("under"), dir.join("mnt"));
    write(&src.join("x"), b"x");
    std::fs::create_dir_all(under.join("s/.snapring")).unwrap();
    let faults = [
        "--stall",
        stall,
        "--stall-secs",
        "60",
        "--stall-ops",
        "lookup,getattr,readdir,open,write",
    ];
    let fs = FaultFs::mount(&under, &mnt, &faults)?;
    let cfg = dir.join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.hung]\nsource = \"{src}\"\ndest = \"{hung}\"\nschedule = \"{schedule}\"\nmissed = \"skip\"\n\n\
             [job.fast]\nsource = \"{src}\"\ndest = \"{d}/fast\"\nschedule = \"* * * * * *\"\n",
            src = src.display(),
            hung = dest.map_or(mnt.join("s"), Path::to_path_buf).display(),
            d = dir.display(),
        ),
    )
    .unwrap();
    let log = dir.join("daemon.log");
    let d = daemon_logging_with(catalog, &cfg, &log, &[("SNAPRING_DAEMON_HEARTBEAT", "1s")]);
    Some((fs, d))
}

/// A store whose file system hangs on `.snapring/daemons` (a hard-mounted NFS export
/// whose server is down; here latencyfs stalls the calls for a minute) holds up neither
/// another job's runs nor a stop: the heartbeat markers are refreshed, and removed at
/// the stop, by a thread of their own. The scheduling loop refreshed them itself: the
/// daemon froze in the first refresh (no run of the other job, SIGTERM unheeded).
#[test]
fn a_store_that_hangs_holds_up_neither_another_jobs_runs_nor_a_stop() {
    let t = tempfile::tempdir().unwrap();
    let (catalog, log) = (t.path().join("cat.db"), t.path().join("daemon.log"));
    let Some((fs, mut d)) = hung_store_daemon(t.path(), "/.snapring/daemons", "0 0 0 1 1 *", None)
    else {
        return;
    };
    let fast_runs =
        || std::fs::read_dir(t.path().join("fast/.snapring/runs")).map_or(0, |r| r.count());
    let t0 = Instant::now();
    while fast_runs() < 3 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let runs = fast_runs();
    // Its last act before it exits: the `stop` event (the log shows warnings only).
    let stopped = || {
        snapring::catalog::Catalog::open(&catalog, false)
            .and_then(|c| c.events(None))
            .unwrap_or_default()
            .iter()
            .any(|e| e.kind == "stop")
    };
    let pid = rustix::process::Pid::from_raw(d.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let t1 = Instant::now();
    while !stopped() && t1.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = t1.elapsed();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    // A thread still stalled in the layer holds the process's exit (Linux's FUSE waits
    // out a request the server has taken; an NFS client's calls are killable): the
    // layer goes first.
    drop(fs);
    let _ = d.0.wait();
    assert!(
        runs >= 3,
        "the other job ran {runs} times in 20 s, scheduled every second: {logged}"
    );
    assert!(
        took < Duration::from_secs(8),
        "the daemon stopped {took:?} after SIGTERM: {logged}"
    );
}

/// A store that starts to hang while the daemon runs (here its path leads, through a
/// symlink repointed, onto a latencyfs mount that stalls every call under the store
/// for a minute; as a hard-mounted NFS export whose server goes down), of a job due
/// every second, holds up neither the scheduling loop nor another store's heartbeat
/// marker. The loop resolved the store's path (`canonicalize`) and read its lock file
/// itself as the job fell due: it froze (no trigger of any job handled, signals
/// unheeded). The heartbeat thread refreshed the stores in turn: the other store's
/// marker was no longer refreshed (another daemon there would not have been warned).
/// (The other job's runs hang all the same: each run's check of the whole config
/// resolves every job's store.)
#[test]
fn a_store_that_starts_to_hang_holds_up_neither_the_loop_nor_another_stores_marker() {
    let t = tempfile::tempdir().unwrap();
    let log = t.path().join("daemon.log");
    let (link, ok) = (t.path().join("link"), t.path().join("ok"));
    std::fs::create_dir(&ok).unwrap();
    std::os::unix::fs::symlink(&ok, &link).unwrap();
    // Every call on the store, its path's lookup first.
    let Some((fs, d)) = hung_store_daemon(t.path(), "/s", "* * * * * *", Some(&link.join("s")))
    else {
        return;
    };
    let fast = t.path().join("fast/.snapring");
    let fast_runs = || std::fs::read_dir(fast.join("runs")).map_or(0, |r| r.count());
    let marked_at = || {
        std::fs::read_dir(fast.join("daemons"))
            .ok()?
            .flatten()
            .find_map(|e| e.metadata().ok()?.modified().ok())
    };
    wait_until("the other job's runs and marker", 30, || {
        fast_runs() >= 1 && marked_at().is_some()
    });
    let moved = t.path().join("link.new");
    std::os::unix::fs::symlink(&fs.mnt, &moved).unwrap();
    std::fs::rename(&moved, &link).unwrap();
    // A refresh under way as the store moved has ended by then.
    std::thread::sleep(Duration::from_millis(1500));
    // The loop's turns: each trigger of the other job handled (run or skipped) is a
    // line of the log.
    let turns = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("job fast: trigger at")
            .count()
    };
    let (before, since) = (turns(), std::time::SystemTime::now());
    let t0 = Instant::now();
    let enough = || turns() >= before + 3 && marked_at().is_some_and(|m| m > since);
    while !enough() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (runs, marked) = (turns() - before, marked_at().is_some_and(|m| m > since));
    // The hung job's run is stalled in the layer (the daemon waits for its runs at
    // its stop): the layer goes first.
    drop(fs);
    let mut d = d;
    let pid = rustix::process::Pid::from_raw(d.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let st = d.0.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(st.success(), "{st}: {logged}");
    assert!(
        runs >= 3,
        "the loop handled {runs} triggers of the other job in 20 s once the store hung, scheduled every second: {logged}"
    );
    assert!(
        marked,
        "the other job's heartbeat marker was not refreshed in 20 s once the store hung (every second): {logged}"
    );
}

/// A job with no notifier whose run was killed (no daemon to see it die): the next
/// daemon start told its death to nobody, and recorded nothing of it, so every start
/// after took it for untold and told it again (here the start after its resumed run
/// was killed with the daemon; and had a notifier been added, that notifier would have
/// been told of the old death). Now its record says it was told to nobody: the next
/// start tells the newer death only.
#[test]
fn a_death_told_to_nobody_is_not_told_again_at_the_next_start() {
    let (t, catalog, cfg, _, ids) = runs_stopped(false, &[rustix::process::Signal::KILL]);
    let first = &ids[0];
    // The same job without its notifier.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.split("notify = ").next().unwrap().to_string();
    std::fs::write(&cfg, text).unwrap();
    // The killed run's pre command's: the resumed run writes its own.
    let pid_file = t.path().join("pid");
    std::fs::remove_file(&pid_file).unwrap();
    let told_of = |log: &Path, id: &str| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("its run {id} ended before it recorded its end")))
            .count()
    };
    let log1 = t.path().join("daemon1.log");
    let mut d = daemon_logging_with(
        &catalog,
        &cfg,
        &log1,
        &[("SNAPRING_FAILPOINTS", "walk.copy=sleep:200")],
    );
    let pid = run_pid(&pid_file);
    assert_eq!(told_of(&log1, first), 1);
    wait_until("the resumed run's row", 60, || {
        rows_of(&catalog, "a")
            .iter()
            .any(|r| r["status"] == "running")
    });
    // Time for the notice thread to record the first death as told.
    std::thread::sleep(Duration::from_secs(1));
    d.0.kill().unwrap();
    d.0.wait().unwrap();
    sigkill(pid);
    wait_until("the resumed run's end", 30, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.split(' ').nth(2) == Some("Z"))
    });
    // Read without settling it (`history` would).
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    let second = c.recent("a", 1).unwrap().remove(0).id;
    drop(c);
    assert_ne!(&second, first);
    let log2 = t.path().join("daemon2.log");
    let d = daemon_logging(&catalog, &cfg, &log2);
    wait_until("the start's telling of the resumed run's death", 30, || {
        told_of(&log2, &second) == 1
    });
    d.stop();
    assert_eq!(
        told_of(&log2, first),
        0,
        "the death told at the start before was told again: {}",
        std::fs::read_to_string(&log2).unwrap_or_default()
    );
}

/// A latencyfs mount of `dir/under` at `dir/mnt` whose calls of the kinds `ops` on
/// paths matching `stall` take `secs` seconds each (a store slow but alive: an
/// automount's first access, a busy NFS server), or `None` where FUSE cannot run.
fn slow_layer(dir: &Path, stall: &str, ops: &str, secs: u32) -> Option<FaultFs> {
    let (under, mnt) = (dir.join("under"), dir.join("mnt"));
    std::fs::create_dir_all(&under).unwrap();
    let secs = secs.to_string();
    FaultFs::mount(
        &under,
        &mnt,
        &["--stall", stall, "--stall-secs", &secs, "--stall-ops", ops],
    )
}

/// A store slow to list its run records (3 s a listing, more than the 1 s the daemon
/// waits for a store) and a catalog the daemon cannot write: each run ends partial,
/// records itself in its store and tells its notifiers, and the store's record is the
/// only witness of its end. The daemon took the store's silence for "no record", and
/// each run for one that died without recording itself: a second notice, a false
/// `failed` with no run id. Now it waits for the store's answer.
#[test]
fn a_slow_store_does_not_make_a_run_that_recorded_itself_a_dead_one() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let Some(fs) = slow_layer(dir, "/.snapring/runs", "readdir", 3) else {
        return;
    };
    let (cat, cfg, told) = partial_runs_and_a_read_only_catalog(dir, &fs.mnt);
    let log = dir.join("daemon.log");
    let d = daemon_without_dac(&cat, &cfg, &log);
    // Three runs, the first two judged by then (each judgement waits ~3 s).
    wait_until("three notices", 90, || told_lines(&told).len() >= 3);
    std::thread::sleep(Duration::from_secs(5));
    d.stop();
    drop(fs);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("readonly database"), "{log}");
    let lines = told_lines(&told);
    for (i, l) in lines.iter().enumerate() {
        let (status, id) = l.split_once(' ').unwrap_or((l, ""));
        // The last may be the run the stop interrupted.
        let stopped = i + 1 == lines.len() && status == "incomplete";
        assert!(status == "partial" || stopped, "{lines:?}\n{log}");
        assert!(!id.is_empty(), "{lines:?}\n{log}");
    }
    assert!(!log.contains("without recording a run"), "{log}");
}

/// A run of a job started by hand holds its store, whose lock file is slow to open (3
/// s, more than the 1 s the daemon waits for a store): the daemon took the store's
/// silence for "no holder", started the job, the store's lock refused that run, and it
/// was recorded `failed` and notified. Now it waits for the store's answer, and skips
/// the job's triggers while the run holds the store.
#[test]
fn a_run_started_by_hand_on_a_slow_store_is_skipped_not_failed() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let Some(fs) = slow_layer(dir, "/.snapring/lock", "open", 3) else {
        return;
    };
    let (src, catalog) = (dir.join("src"), dir.join("cat.db"));
    // A run of 20 s: the daemon's start and each question wait 3 s for the store.
    tree(&src, 100, 10);
    let told = dir.join("told");
    let cfg = dir.join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/a\"\njobs = 1\nschedule = \"* * * * * *\"\nnotify = [\"cmd\"]\n\n\
             [notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_JOB $SNAPRING_STATUS >> {told}\"]\n",
            src = src.display(),
            d = fs.mnt.display(),
            told = told.display(),
        ),
    )
    .unwrap();
    let mut by_hand = slow_run(&catalog, &cfg, "a").spawn().unwrap();
    wait_until("the run's record", 60, || {
        std::fs::read_dir(fs.mnt.join("a/.snapring/runs")).is_ok_and(|mut d| d.next().is_some())
    });
    let d = Daemon::start(&catalog, &cfg, "");
    let skipped = || {
        snapring::catalog::Catalog::open(&catalog, false)
            .and_then(|c| c.events(Some("a")))
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.kind == "skipped" && e.message.contains("did not start"))
            .count()
    };
    // The first trigger's question waits 3 s for the store.
    let t0 = Instant::now();
    while skipped() < 1
        && by_hand.try_wait().unwrap().is_none()
        && t0.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    d.stop();
    let still = by_hand.try_wait().unwrap().is_none();
    let _ = by_hand.kill();
    let _ = by_hand.wait();
    drop(fs);
    let rows = rows_of(&catalog, "a");
    assert!(
        rows.iter().all(|r| r["status"] != "failed"),
        "{rows:?} {:?}",
        told_lines(&told)
    );
    assert!(
        !told_lines(&told).iter().any(|l| l.ends_with(" failed")),
        "{:?}",
        told_lines(&told)
    );
    assert!(
        still,
        "the run by hand ended before the test saw a trigger skipped"
    );
    assert!(skipped() >= 1, "no trigger skipped: {rows:?}");
}

/// With the catalog off, the daemon's start reads each job's last runs in its store
/// (to resume an interrupted one, to tell an untold death): it read them on the loop, so
/// a store that hangs (here every call under its `.snapring`, for a minute) held the
/// daemon's start: no other job ran. Now it reads them off the loop, and again once the
/// store answers.
#[test]
fn with_the_catalog_off_a_hung_store_holds_up_neither_the_start_nor_another_job() {
    let t = tempfile::tempdir().unwrap();
    let Some((fs, mut d)) = hung_store_daemon_on(
        t.path(),
        "/s/.snapring",
        "0 0 0 1 1 *",
        None,
        Path::new("off"),
    ) else {
        return;
    };
    let fast_runs =
        || std::fs::read_dir(t.path().join("fast/.snapring/runs")).map_or(0, |r| r.count());
    let t0 = Instant::now();
    while fast_runs() < 3 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let runs = fast_runs();
    drop(fs);
    let pid = rustix::process::Pid::from_raw(d.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let st = d.0.wait().unwrap();
    let logged = std::fs::read_to_string(t.path().join("daemon.log")).unwrap_or_default();
    assert!(st.success(), "{st}: {logged}");
    assert!(
        runs >= 3,
        "the other job ran {runs} times in 20 s, scheduled every second: {logged}"
    );
}

/// A run killed under the daemon while its store does not answer (here its FUSE
/// layer stopped with SIGSTOP): the daemon settled it (its record in the store) on
/// the loop, which hung there: no other job ran. Now the store's part is off the loop,
/// and the death is told once the store answers again.
#[test]
fn a_run_killed_while_its_store_hangs_holds_up_no_other_job_and_is_told_when_it_answers() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let Some(fs) = slow_layer(dir, "/nothing-stalls", "read", 0) else {
        return;
    };
    let (src, catalog) = (dir.join("src"), dir.join("cat.db"));
    tree(&src, 40, 10);
    let (pid_file, told) = (dir.join("pid"), dir.join("told"));
    let cfg = dir.join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{m}/a\"\njobs = 1\nschedule = \"* * * * * *\"\n\
             pre_command = [\"/bin/sh\", \"-c\", \"[ -e {pid} ] || echo $PPID > {pid}\"]\nnotify = [\"cmd\"]\n\n\
             [job.fast]\nsource = \"{src}\"\ndest = \"{d}/fast\"\nschedule = \"* * * * * *\"\n\n\
             [notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_JOB $SNAPRING_STATUS >> {told}\"]\n",
            src = src.display(),
            m = fs.mnt.display(),
            d = dir.display(),
            pid = pid_file.display(),
            told = told.display(),
        ),
    )
    .unwrap();
    let log = dir.join("daemon.log");
    let d = daemon_logging_with(
        &catalog,
        &cfg,
        &log,
        &[("SNAPRING_FAILPOINTS", "walk.copy=sleep:200")],
    );
    let pid = run_pid(&pid_file);
    wait_until("a's run's row", 60, || {
        rows_of(&catalog, "a")
            .iter()
            .any(|r| r["status"] == "running")
    });
    let layer = rustix::process::Pid::from_raw(fs.pid() as i32).unwrap();
    rustix::process::kill_process(layer, rustix::process::Signal::STOP).unwrap();
    sigkill(pid);
    let fast_runs = || std::fs::read_dir(dir.join("fast/.snapring/runs")).map_or(0, |r| r.count());
    // The death is reaped within a turn; then another job's runs must go on.
    std::thread::sleep(Duration::from_secs(2));
    let before = fast_runs();
    let t0 = Instant::now();
    while fast_runs() < before + 2 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let ran = fast_runs() - before;
    rustix::process::kill_process(layer, rustix::process::Signal::CONT).unwrap();
    let t1 = Instant::now();
    while !told_lines(&told).iter().any(|l| l.starts_with("a "))
        && t1.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    d.stop();
    drop(fs);
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        ran >= 2,
        "the other job ran {ran} times in 20 s while the killed run's store hung: {logged}"
    );
    let lines = told_lines(&told);
    assert!(
        lines.iter().any(|l| l == "a incomplete"),
        "the killed run was not told once its store answered: {lines:?}\n{logged}"
    );
}

/// The config of the tests of another job's store that hangs, in `dir`: job `hung`
/// (never due, `missed = "skip"`) writes `mnt/s` (made a store's directory here), job
/// `fast` writes `dir/FAST` every second, both from `dir/src` (one file).
fn hung_and_fast_config(dir: &Path, mnt: &Path, fast: &str) -> String {
    let src = dir.join("src");
    write(&src.join("x"), b"x");
    std::fs::create_dir_all(mnt.join("s/.snapring")).unwrap();
    format!(
        "[job.hung]\nsource = \"{src}\"\ndest = \"{m}/s\"\nschedule = \"0 0 0 1 1 *\"\nmissed = \"skip\"\n\n\
         [job.fast]\nsource = \"{src}\"\ndest = \"{d}/{fast}\"\nschedule = \"* * * * * *\"\n",
        src = src.display(),
        m = mnt.display(),
        d = dir.display(),
    )
}

/// A store that hangs (here its FUSE layer stopped with SIGSTOP: every call on it
/// waits, as on a hard-mounted NFS export whose server is down) of one job held every
/// run of every other job of the config, and the daemon's start, in the config's check,
/// which resolves every job's paths. Now each path is resolved in bounded time, and one
/// that does not answer is named in a warning (its job's own runs check it).
#[test]
fn a_hung_store_of_another_job_holds_up_neither_a_run_nor_the_daemons_start() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let Some(fs) = slow_layer(dir, "/nothing-stalls", "read", 0) else {
        return;
    };
    let config = |fast: &str| hung_and_fast_config(dir, &fs.mnt, fast);
    let (cfg, cfg2) = (dir.join("d.toml"), dir.join("d2.toml"));
    std::fs::write(&cfg, config("fast")).unwrap();
    // The same for a run by hand (the daemon's run may hold the first store).
    std::fs::write(&cfg2, config("fast2")).unwrap();
    let layer = rustix::process::Pid::from_raw(fs.pid() as i32).unwrap();
    rustix::process::kill_process(layer, rustix::process::Signal::STOP).unwrap();
    let log = dir.join("daemon.log");
    let d = daemon_logging(&dir.join("cat.db"), &cfg, &log);
    let fast_runs = || std::fs::read_dir(dir.join("fast/.snapring/runs")).map_or(0, |r| r.count());
    let t0 = Instant::now();
    while fast_runs() < 3 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let runs = fast_runs();
    let by_hand = Command::new(bin())
        .args(["--catalog", "off", "run", "fast", "--config"])
        .arg(&cfg2)
        .arg("--no-progress")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let waited = std::thread::spawn(move || by_hand.wait_with_output().unwrap());
    let t1 = Instant::now();
    while !waited.is_finished() && t1.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = t1.elapsed();
    rustix::process::kill_process(layer, rustix::process::Signal::CONT).unwrap();
    let out = waited.join().unwrap();
    d.stop();
    drop(fs);
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        runs >= 3,
        "the other job ran {runs} times in 30 s, scheduled every second: {logged}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        took < Duration::from_secs(20),
        "the run by hand took {took:?}: {err}"
    );
    assert_eq!(out.status.code(), Some(0), "{err}");
    let store = dir.join("mnt/s");
    assert!(
        err.contains(&store.display().to_string()) && err.contains("job.hung"),
        "{err}"
    );
}

/// The daemon's calls on stores' file systems are made by one thread per store, not one
/// thread each: a job due every second started several threads each second, for as
/// long as the daemon ran (counted here as the daemon's main thread's `clone` calls
/// that make a thread, with strace).
#[test]
fn the_daemons_store_calls_start_no_thread_per_call() {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: no strace");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    write(&src.join("x"), b"x");
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/a\"\nschedule = \"* * * * * *\"\n",
            src = src.display(),
            d = t.path().display(),
        ),
    )
    .unwrap();
    let d = Daemon::start(&catalog, &cfg, "");
    wait_until("a's runs", 60, || {
        std::fs::read_dir(t.path().join("a/.snapring/runs")).map_or(0, |r| r.count()) >= 2
    });
    let trace = t.path().join("trace");
    let out = Command::new("timeout")
        .args([
            "-s",
            "INT",
            "4",
            "strace",
            "-qq",
            "-e",
            "trace=clone,clone3",
            "-o",
        ])
        .arg(&trace)
        .arg("-p")
        .arg(d.0.id().to_string())
        .output()
        .unwrap();
    d.stop();
    let traced = std::fs::read_to_string(&trace).unwrap_or_default();
    let threads = traced
        .lines()
        .filter(|l| l.contains("CLONE_THREAD"))
        .count();
    let spawned = traced
        .lines()
        .filter(|l| !l.contains("CLONE_THREAD"))
        .count();
    assert!(
        spawned >= 2,
        "strace saw no run started in 4 s (did it attach?): {traced} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(threads <= 1, "{threads} threads started in 4 s:\n{traced}");
}

/// A run killed while its store hangs (an NFS server down; here the daemon's settling
/// of its record paused, as a call stuck in the store would be): the daemon waited for
/// the store, each turn, for as long as it hung: nobody was told, and the run's row
/// stayed `running`. After `SNAPRING_DAEMON_DEATH_WAIT` (60 s by default) its death is
/// told with what is known, its row `failed`; once the store answers, its record there
/// says it was told, and the next daemon start does not tell it again.
#[test]
fn a_run_killed_while_its_store_hangs_is_told_after_a_bound() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 3, 3);
    let (walking, settling, told) = (
        t.path().join("walking"),
        t.path().join("settling"),
        t.path().join("told"),
    );
    let cfg = t.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/sa\"\nschedule = \"* * * * * *\"\nnotify = [\"cmd\"]\n\n{notifier}",
            src = src.display(),
            d = t.path().display(),
            notifier = told_notifier(&told),
        ),
    )
    .unwrap();
    let log = t.path().join("daemon.log");
    let d = daemon_settling_paused(&catalog, &cfg, &log, &walking, &settling);
    // The run, paused in its walk (its row and record written), is killed.
    let pid = paused_pid(&walking);
    let id = rows_of(&catalog, "a")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    sigkill(pid);
    wait_until("the daemon's settling of its record", 30, || {
        settling.exists()
    });
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    let t0 = Instant::now();
    while told_lines(&told).is_empty() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(told_lines(&told), ["failed"], "{}", logged());
    let row = rows_of(&catalog, "a")
        .into_iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap();
    assert_eq!(row["status"], "failed", "{row}");
    let msg = message_of(&catalog, &id);
    assert!(
        msg.contains("killed by signal 9") && msg.contains("has not answered"),
        "{msg}"
    );
    // The store answers: its record says it was told.
    std::fs::remove_file(&settling).unwrap();
    let record = t.path().join(format!("sa/.snapring/runs/{id}.json"));
    wait_until("the record settled", 30, || {
        std::fs::read_to_string(&record)
            .is_ok_and(|r| r.contains("its death was told before its store answered"))
    });
    drop(d);
    // A run started since, paused in its walk, goes too.
    std::thread::sleep(Duration::from_millis(500));
    if let Some(p) = std::fs::read_to_string(&walking)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|p| *p != pid)
    {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(p).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    let _ = std::fs::remove_file(&walking);
    // The next start tells no death again (its runs pause no more).
    let d = daemon_logging_with(&catalog, &cfg, &t.path().join("daemon2.log"), &[]);
    std::thread::sleep(Duration::from_secs(4));
    d.stop();
    let lines = told_lines(&told);
    assert_eq!(lines[0], "failed", "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains(&id)),
        "told again: {lines:?} {}",
        logged()
    );
}

/// How many `reload` events the catalog has.
fn reload_events(catalog: &Path) -> usize {
    snapring::catalog::Catalog::open(catalog, false)
        .and_then(|c| c.events(None))
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.kind == "reload")
        .count()
}

/// The threads of process `pid` (`/proc/PID/task`).
fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// A daemon reloaded while another job's store hangs (its FUSE server stopped): the
/// config check of each reload gave the hung path up after 3 s and left the thread of
/// its `canonicalize` stuck there, one more each reload (five reloads, five threads).
/// Now a path whose call has not returned is given up at once by the next check, which
/// starts no thread for it.
#[test]
fn reloads_while_a_store_hangs_pile_up_no_threads() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let Some(fs) = slow_layer(dir, "/nothing-stalls", "read", 0) else {
        return;
    };
    let cfg = dir.join("d.toml");
    std::fs::write(&cfg, hung_and_fast_config(dir, &fs.mnt, "fast")).unwrap();
    let layer = rustix::process::Pid::from_raw(fs.pid() as i32).unwrap();
    rustix::process::kill_process(layer, rustix::process::Signal::STOP).unwrap();
    let log = dir.join("daemon.log");
    let catalog = dir.join("cat.db");
    let d = daemon_logging(&catalog, &cfg, &log);
    let pid = d.0.id();
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    let fast_runs = || std::fs::read_dir(dir.join("fast/.snapring/runs")).map_or(0, |r| r.count());
    wait_until("the other job's runs", 60, || fast_runs() >= 2);
    let reloads = || reload_events(&catalog);
    let hup = || {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::HUP,
        )
        .unwrap()
    };
    // The first reload's check meets the hung path as the start's did (still stuck).
    hup();
    wait_until("the first reload", 30, || reloads() >= 1);
    std::thread::sleep(Duration::from_secs(1));
    let before = threads_of(pid);
    let t0 = Instant::now();
    for n in 2..=6 {
        hup();
        wait_until("a reload", 30, || reloads() >= n);
    }
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let after = threads_of(pid);
    rustix::process::kill_process(layer, rustix::process::Signal::CONT).unwrap();
    d.stop();
    drop(fs);
    assert!(before > 0, "no /proc/{pid}/task");
    assert!(
        after <= before,
        "{before} threads before five reloads, {after} after: {}",
        logged()
    );
    assert!(
        took < Duration::from_secs(10),
        "five reloads took {took:?} (each waited for the hung path): {}",
        logged()
    );
}

/// The `incomplete`/`running`/... status of run `id` as the catalog has it, read
/// directly (`history` would settle it first).
fn catalog_status(catalog: &Path, id: &str) -> String {
    rusqlite::Connection::open(catalog)
        .unwrap()
        .query_row("SELECT status FROM runs WHERE id = ?1", [id], |r| {
            r.get::<_, String>(0)
        })
        .unwrap()
}

/// The daemon's start settled only its jobs' newest rows (the ten it looks through for
/// untold deaths): an older row left `running` by a killed run (here into the store the
/// job wrote before its `dest` changed) stayed `running` until the next `history`.
/// Now the start settles every row of its jobs left unsettled; a death older than the
/// newest runs is history, not told.
#[test]
fn the_daemons_start_settles_every_row_its_jobs_left_running() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (src, catalog) = (dir.join("src"), dir.join("cat.db"));
    tree(&src, 3, 3);
    let told = dir.join("told");
    let cfg = dir.join("d.toml");
    let config = |dest: &str| {
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/{dest}\"\nschedule = \"0 0 0 1 1 *\"\nmissed = \"skip\"\nnotify = [\"cmd\"]\n\n{notifier}",
            src = src.display(),
            d = dir.display(),
            notifier = told_notifier(&told),
        )
    };
    std::fs::write(&cfg, config("old")).unwrap();
    // A run killed in its walk (paused there), its row and record left `running`.
    let walking = dir.join("walking");
    let mut run = slow_run(&catalog, &cfg, "a")
        .env(
            "SNAPRING_FAILPOINTS",
            format!("walk.dir=pause:{}", walking.display()),
        )
        .spawn()
        .unwrap();
    paused_pid(&walking);
    run.kill().unwrap();
    assert!(!run.wait().unwrap().success());
    let id = only_run_id(&dir.join("old/.snapring/runs"));
    std::fs::write(&cfg, config("new")).unwrap();
    for _ in 0..10 {
        let out = job_run(&catalog, &cfg, "a").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(catalog_status(&catalog, &id), "running");
    let log = dir.join("daemon.log");
    let d = daemon_logging(&catalog, &cfg, &log);
    let t0 = Instant::now();
    while catalog_status(&catalog, &id) == "running" && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    d.stop();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(catalog_status(&catalog, &id), "incomplete", "{logged}");
    let record =
        std::fs::read_to_string(dir.join(format!("old/.snapring/runs/{id}.json"))).unwrap();
    assert!(record.contains("\"incomplete\""), "{record}");
    assert!(told_lines(&told).is_empty(), "{:?}", told_lines(&told));
}

/// A run killed while its store's worker was busy with another call (here a job added
/// by a reload asking whether a run holds the store, its lock file slow to open): the
/// daemon's call to settle the dead run's record was never made (a busy worker makes
/// none), and once its death was told without the store (after
/// `SNAPRING_DAEMON_DEATH_WAIT`), nothing marked the record told: it stayed `running`,
/// the next run's repair made it an untold death, and after a later run killed with
/// its daemon the next start told it a second time. Now the record is settled and
/// marked told once the store answers.
#[test]
fn a_death_told_before_its_store_answered_is_marked_told_when_its_settle_was_never_sent() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let Some(fs) = slow_layer(dir, "lock", "open", 10) else {
        return;
    };
    let (src, catalog) = (dir.join("src"), dir.join("cat.db"));
    tree(&src, 3, 3);
    let (walking, told) = (dir.join("walking"), dir.join("told"));
    let job = |name: &str| {
        format!(
            "[job.{name}]\nsource = \"{src}\"\ndest = \"{m}/s\"\nlabel = \"{name}\"\nschedule = \"* * * * * *\"\nnotify = [\"cmd\"]\n\n",
            src = src.display(),
            m = fs.mnt.display(),
        )
    };
    let notifier = told_notifier(&told);
    let cfg = dir.join("d.toml");
    std::fs::write(&cfg, format!("{}{notifier}", job("a"))).unwrap();
    let log = dir.join("daemon.log");
    let fps = format!("walk.dir=pause:{}", walking.display());
    let d = daemon_logging_with(
        &catalog,
        &cfg,
        &log,
        &[
            ("SNAPRING_FAILPOINTS", fps.as_str()),
            ("SNAPRING_DAEMON_DEATH_WAIT", "2s"),
        ],
    );
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    // The run, paused in its walk (its row and record written: its lock file created,
    // not opened, so not slowed).
    let pid = paused_pid(&walking);
    let runs = dir.join("under/s/.snapring/runs");
    let id = only_run_id(&runs);
    // Job b, on the same store, added: its trigger asks the store's worker whether a
    // run holds the store, and the lock file takes 10 s to open.
    std::fs::write(&cfg, format!("{}{}{notifier}", job("a"), job("b"))).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(d.0.id() as i32).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    wait_until("the reload", 30, || reload_events(&catalog) >= 1);
    std::thread::sleep(Duration::from_millis(1500));
    sigkill(pid);
    let _ = std::fs::remove_file(&walking);
    // Told without the store, after the death wait (the worker still busy).
    wait_until("the death told", 30, || !told_lines(&told).is_empty());
    assert_eq!(told_lines(&told), ["failed"], "{}", logged());
    // Once the store answers, its record says it was told (it was left `running`).
    let record = runs.join(format!("{id}.json"));
    let marked = || {
        std::fs::read_to_string(&record)
            .is_ok_and(|r| r.contains("its death was told before its store answered"))
    };
    let t0 = Instant::now();
    while !marked() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(d);
    if let Some(p) = std::fs::read_to_string(&walking)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(p).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    let _ = std::fs::remove_file(&walking);
    drop(fs);
    let rec = std::fs::read_to_string(&record).unwrap_or_default();
    assert!(marked(), "{rec}\n{}", logged());
    assert!(rec.contains("\"incomplete\""), "{rec}");
}

/// With the catalog off (`--catalog off`), a run the daemon saw die (killed in its
/// walk) was told at once, but `died` looked for its run in the catalog only: the
/// record in the store stayed `running`, and the next daemon start settled it into an
/// untold death and told it a second time. Now the daemon finds the record in the
/// store, settles it and records the notice's outcome in it: a restart tells nothing
/// again.
#[test]
fn with_the_catalog_off_a_death_the_daemon_told_is_not_told_again_at_its_next_start() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let src = dir.join("src");
    tree(&src, 3, 3);
    let (walking, told) = (dir.join("walking"), dir.join("told"));
    let cfg = dir.join("d.toml");
    let config = |schedule: &str| {
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/sa\"\nschedule = \"{schedule}\"\nmissed = \"skip\"\nnotify = [\"cmd\"]\n\n{notifier}",
            src = src.display(),
            d = dir.display(),
            notifier = told_notifier(&told),
        )
    };
    // One run only: at a time of day a few seconds ahead (UTC).
    let at = chrono::Utc::now() + chrono::Duration::seconds(10);
    std::fs::write(&cfg, config(&at.format("%S %M %H * * *").to_string())).unwrap();
    let log = dir.join("daemon.log");
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    let fps = format!("walk.dir=pause:{}", walking.display());
    let d = daemon_logging_with(
        Path::new("off"),
        &cfg,
        &log,
        &[("SNAPRING_FAILPOINTS", fps.as_str())],
    );
    let pid = paused_pid(&walking);
    let runs = dir.join("sa/.snapring/runs");
    let id = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .find_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            Some(n.strip_suffix(".json")?.to_string())
        })
        .unwrap();
    sigkill(pid);
    let _ = std::fs::remove_file(&walking);
    wait_until("the death told", 30, || !told_lines(&told).is_empty());
    std::thread::sleep(Duration::from_secs(2));
    d.stop();
    assert_eq!(told_lines(&told).len(), 1, "{:?}", told_lines(&told));
    let record = std::fs::read_to_string(runs.join(format!("{id}.json"))).unwrap();
    // The next start resumes the run, and tells its death no more.
    let log2 = dir.join("daemon2.log");
    let d = daemon_logging_with(Path::new("off"), &cfg, &log2, &[]);
    wait_until("the interrupted run resumed", 60, || {
        dir.join("sa/daily.0/d0/f0").exists()
    });
    std::thread::sleep(Duration::from_secs(2));
    d.stop();
    let lines = told_lines(&told);
    assert!(
        !lines[1..].iter().any(|l| l.contains(&id)),
        "told again at the next start: {lines:?}\n{}",
        std::fs::read_to_string(&log2).unwrap_or_default()
    );
    // Its record, as the first daemon left it: settled, with the notice's outcome.
    let r: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(r["status"], "incomplete", "{r}\n{}", logged());
    assert_eq!(r["notifications"][0]["ok"], true, "{r}");
}

/// A run killed while its store hangs (the daemon's settling of its record paused) is
/// told after `SNAPRING_DAEMON_DEATH_WAIT` without its store; the daemon is stopped
/// before the store answers. The mark it was to write in the record once the store
/// answered was kept in its memory only: the record stayed `running`, and a later start
/// (here one without the catalog, which reads the stores' records) settled it into an
/// untold death and told it again. Now the mark is noted in the catalog (schema 11),
/// and the next daemon started on it writes it once the store answers.
#[test]
fn a_death_told_before_its_store_answered_is_marked_by_the_next_daemon() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (src, catalog) = (dir.join("src"), dir.join("cat.db"));
    tree(&src, 3, 3);
    let (walking, settling, told) = (dir.join("walking"), dir.join("settling"), dir.join("told"));
    let cfg = dir.join("d.toml");
    let config = |schedule: &str| {
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/sa\"\nschedule = \"{schedule}\"\nmissed = \"skip\"\nnotify = [\"cmd\"]\n\n{notifier}",
            src = src.display(),
            d = dir.display(),
            notifier = told_notifier(&told),
        )
    };
    std::fs::write(&cfg, config("* * * * * *")).unwrap();
    let log = dir.join("daemon.log");
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    let d = daemon_settling_paused(&catalog, &cfg, &log, &walking, &settling);
    let pid = paused_pid(&walking);
    // No run after this one.
    std::fs::write(&cfg, config("@yearly")).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(d.0.id() as i32).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    wait_until("the reload", 30, || reload_events(&catalog) >= 1);
    let id = rows_of(&catalog, "a")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    sigkill(pid);
    let _ = std::fs::remove_file(&walking);
    wait_until("the daemon's settling of its record", 30, || {
        settling.exists()
    });
    wait_until("the death told", 30, || !told_lines(&told).is_empty());
    assert_eq!(told_lines(&told), ["failed"], "{}", logged());
    // Stopped before the store answers (the settling still paused).
    d.stop();
    std::fs::remove_file(&settling).unwrap();
    let record = dir.join(format!("sa/.snapring/runs/{id}.json"));
    let marked = || {
        std::fs::read_to_string(&record)
            .is_ok_and(|r| r.contains("its death was told before its store answered"))
    };
    // A daemon started while the store is not there (at boot, before its NFS mount:
    // an empty mount point) keeps the note: it dropped it (review R5 M1), and the
    // record, once mounted, was settled into an untold death and told again.
    let sa = dir.join("sa");
    let away = dir.join("sa.mounted");
    std::fs::rename(&sa, &away).unwrap();
    std::fs::create_dir(&sa).unwrap();
    let log_boot = dir.join("daemon-boot.log");
    let d = daemon_logging_with(&catalog, &cfg, &log_boot, &[]);
    // Its start marks the noted deaths at once (the store asked on its worker): given
    // a moment (its info lines are not logged without -v).
    std::thread::sleep(Duration::from_secs(3));
    d.stop();
    let noted: i64 = rusqlite::Connection::open(&catalog)
        .unwrap()
        .query_row("SELECT count(*) FROM told_deaths", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        noted,
        1,
        "the note dropped while the store was absent: {}",
        std::fs::read_to_string(&log_boot).unwrap_or_default()
    );
    std::fs::remove_dir(&sa).unwrap();
    std::fs::rename(&away, &sa).unwrap();
    assert!(!marked());
    // The next daemon on the catalog marks it.
    let log2 = dir.join("daemon2.log");
    let d = daemon_logging_with(&catalog, &cfg, &log2, &[]);
    let t0 = Instant::now();
    while !marked() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    d.stop();
    // A start without the catalog reads the store's records: nothing to tell again.
    let log3 = dir.join("daemon3.log");
    let d = daemon_logging_with(Path::new("off"), &cfg, &log3, &[]);
    std::thread::sleep(Duration::from_secs(4));
    d.stop();
    let lines = told_lines(&told);
    assert!(
        !lines.iter().any(|l| l.contains(&id)),
        "told again: {lines:?}\n{}\n{}",
        std::fs::read_to_string(&log2).unwrap_or_default(),
        std::fs::read_to_string(&log3).unwrap_or_default()
    );
    let rec = std::fs::read_to_string(&record).unwrap_or_default();
    assert!(marked(), "{rec}\n{}", logged());
    assert!(rec.contains("\"incomplete\""), "{rec}");
    // Marked, it is no longer noted.
    let noted: i64 = rusqlite::Connection::open(&catalog)
        .unwrap()
        .query_row("SELECT count(*) FROM told_deaths", [], |r| r.get(0))
        .unwrap();
    assert_eq!(noted, 0);
}

/// A run of the daemon killed while the daemon does not look (stopped here; a loop
/// busy elsewhere), and a run of the same job by hand started before the daemon reaps
/// it: the newest record of the job dated within the dead run's life is the live run's,
/// still `running` under its lock. The dead-run path must not settle it: it wrote the
/// dead run's cause into the live run's record without the lock and told the death as
/// that run, `running` (review R5 M2). Now the death is told without a record, and the
/// live run's record is its own until it ends.
#[test]
fn a_dead_runs_settling_leaves_a_live_runs_record_alone() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let src = dir.join("src");
    tree(&src, 8, 10);
    let (walking, by_hand, told) = (dir.join("walking"), dir.join("by-hand"), dir.join("told"));
    // Daily, at a time of day 10 s from now (a debug daemon on a loaded machine starts
    // slowly): one run of the daemon, none after it.
    let at = chrono::Utc::now() + chrono::Duration::seconds(10);
    let cfg = dir.join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/sa\"\njobs = 1\nschedule = \"{s} {m} {h} * * *\"\nnotify = [\"cmd\"]\n\n\
             [notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_JOB $SNAPRING_STATUS $SNAPRING_RUN_ID >> {told}\"]\n",
            src = src.display(),
            d = dir.display(),
            s = at.format("%S"),
            m = at.format("%M"),
            h = at.format("%H"),
            told = told.display(),
        ),
    )
    .unwrap();
    let log = dir.join("daemon.log");
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    let fp = format!("walk.dir=pause:{}", walking.display());
    let d = daemon_logging_with(
        Path::new("off"),
        &cfg,
        &log,
        &[("SNAPRING_FAILPOINTS", fp.as_str())],
    );
    wait_until("the daemon's run's pause", 60, || {
        std::fs::read_to_string(&walking).is_ok_and(|p| !p.trim().is_empty())
    });
    let pid: i32 = std::fs::read_to_string(&walking)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let daemon = rustix::process::Pid::from_raw(d.0.id() as i32).unwrap();
    rustix::process::kill_process(daemon, rustix::process::Signal::STOP).unwrap();
    sigkill(pid);
    let _ = std::fs::remove_file(&walking);
    // The run by hand takes the store (the dead run's lock is a dead process's) and
    // pauses in its walk, its record `running`.
    let hand = Command::new(bin())
        .args(["--catalog", "off", "run", "a", "--config"])
        .arg(&cfg)
        .arg("--json")
        .env(
            "SNAPRING_FAILPOINTS",
            format!("walk.dir=pause:{}", by_hand.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&by_hand);
    let runs = dir.join("sa/.snapring/runs");
    let live = record_ids(&runs)
        .into_iter()
        .find(|id| {
            std::fs::read_to_string(runs.join(format!("{id}.json")))
                .is_ok_and(|r| r.contains("\"running\""))
        })
        .expect("the live run's record");
    rustix::process::kill_process(daemon, rustix::process::Signal::CONT).unwrap();
    wait_until("the death told", 30, || !told_lines(&told).is_empty());
    std::thread::sleep(Duration::from_millis(500));
    let record = std::fs::read_to_string(runs.join(format!("{live}.json"))).unwrap();
    let lines = told_lines(&told);
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(&live) || l.contains("running")),
        "the death told as the live run: {lines:?}\n{}",
        logged()
    );
    assert!(
        record.contains("\"running\"") && !record.contains("its run's process"),
        "the live run's record settled as the dead one: {record}"
    );
    std::fs::remove_file(&by_hand).unwrap();
    let out = hand.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.stop();
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs.join(format!("{live}.json"))).unwrap()).unwrap();
    assert_eq!(r["status"], "complete", "{r}");
    // A complete run is told only with `notify_success`: nothing of it told here.
    let lines = told_lines(&told);
    assert!(!lines.iter().any(|l| l.contains(&live)), "{lines:?}");
}

/// The run records (`*.json`) in `runs`, sorted by name (their ids).
fn record_ids(runs: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(runs)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_suffix(".json").map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// A run killed (SIGKILL) under a daemon whose catalog cannot record it (read-only
/// here; a damaged one has no row of it either): its record in its store is the run.
/// Its death was told as a `failed` with no run id and a subject of no run's, its
/// record left `running`, and the next daemon start told it again, `incomplete` with
/// its id. Now it is told once, `incomplete` with its id, its record holds the notice's
/// outcome, and a restart tells nobody again.
#[test]
fn a_run_killed_while_the_catalog_cannot_record_it_is_told_once_with_its_id() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let src = dir.join("src");
    tree(&src, 30, 10);
    let cat = dir.join("cat.db");
    drop(snapring::catalog::Catalog::open(&cat, false).unwrap());
    chmod(&cat, 0o444);
    let (pid_file, told) = (dir.join("pid"), dir.join("told"));
    // Daily, at a time of day 10 s from now: one run (killed), none after it.
    let at = chrono::Utc::now() + chrono::Duration::seconds(10);
    let cfg = dir.join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{src}\"\ndest = \"{d}/a\"\njobs = 1\nschedule = \"{s} {m} {h} * * *\"\n\
             pre_command = [\"/bin/sh\", \"-c\", \"[ -e {pid} ] || echo $PPID > {pid}\"]\nnotify = [\"cmd\"]\n\n\
             [notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_JOB $SNAPRING_STATUS $SNAPRING_RUN_ID >> {told}\"]\n",
            src = src.display(),
            d = dir.display(),
            s = at.format("%S"),
            m = at.format("%M"),
            h = at.format("%H"),
            pid = pid_file.display(),
            told = told.display(),
        ),
    )
    .unwrap();
    let daemon = |log: &Path, failpoints: &str| {
        let mut c = snapring_without_dac();
        c.arg("--catalog")
            .arg(&cat)
            .args(["daemon", "--config"])
            .arg(&cfg)
            .env("SNAPRING_FAILPOINTS", failpoints)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        Daemon(c.spawn().unwrap())
    };
    let log = dir.join("daemon.log");
    let d = daemon(&log, "walk.copy=sleep:200");
    let logged = |log: &Path| std::fs::read_to_string(log).unwrap_or_default();
    let pid = run_pid(&pid_file);
    let runs = dir.join("a/.snapring/runs");
    wait_until("the run's record", 60, || !record_ids(&runs).is_empty());
    let id = record_ids(&runs).remove(0);
    sigkill(pid);
    let line = format!("a incomplete {id}");
    wait_until("the notice of the killed run", 30, || {
        told_lines(&told).contains(&line)
    });
    let record = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(runs.join(format!("{id}.json"))).unwrap()).unwrap()
    };
    wait_until("the notice's outcome in the record", 30, || {
        record()["notifications"][0]["ok"] == true
    });
    d.stop();
    let r = record();
    assert_eq!(r["status"], "incomplete", "{r}");
    assert!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("killed by signal 9")),
        "{r}"
    );
    assert!(
        logged(&log).contains("readonly database"),
        "{}",
        logged(&log)
    );
    assert_eq!(told_lines(&told), vec![line.clone()], "{}", logged(&log));
    // A restart (the catalog still read-only) resumes the run and tells nobody again.
    let log2 = dir.join("daemon2.log");
    let d = daemon(&log2, "");
    wait_until("the resumed run", 60, || dir.join("a/daily.0").exists());
    std::thread::sleep(Duration::from_secs(2));
    d.stop();
    let lines = told_lines(&told);
    assert_eq!(
        lines.iter().filter(|l| **l == line).count(),
        1,
        "{lines:?}\n{}",
        logged(&log2)
    );
    assert!(
        lines
            .iter()
            .all(|l| l.split(' ').count() == 3 && !l.ends_with(' ')),
        "every notice has its run id: {lines:?}"
    );
}

/// The catalog deleted, and made again by another job's run (which imports its own
/// store only): the daemon's start read job `j`'s history from the catalog only, found
/// none, and took it for a new job: its daily time, passed while the daemon was down,
/// waited a day for the next, without a word (`missed = "run-once"`). Its store's run
/// records are its history when the catalog has no row of it.
#[test]
fn a_missed_run_of_a_job_the_catalog_lost_runs_once_at_start() {
    let Some(lib) = libfaketime() else { return };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("x"), b"x");
    // Daily, at the time of day an hour ago; job k yearly, into a store of its own.
    let cfg = daily_job_at(
        t.path(),
        &src,
        chrono::Utc::now() - chrono::Duration::hours(1),
    );
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[job.k]\nsource = \"{}\"\ndest = \"{}/k\"\nschedule = \"@yearly\"\n",
        src.display(),
        t.path().display()
    ));
    std::fs::write(&cfg, text).unwrap();
    let catalog = t.path().join("cat.db");
    let run = |job: &str, offset: &str| {
        let off = t.path().join("faketime");
        std::fs::write(&off, offset).unwrap();
        let mut c = Command::new(bin());
        c.arg("--catalog")
            .arg(&catalog)
            .args(["run", job, "--no-progress", "--config"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null());
        faked(&mut c, &lib, &off);
        assert!(c.status().unwrap().success());
    };
    // j's last run, yesterday (before that time).
    run("j", "-86400\n");
    assert_eq!(rows_of(&catalog, "j").len(), 1);
    for e in std::fs::read_dir(t.path()).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("cat.db") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    run("k", "+0\n");
    assert!(rows_of(&catalog, "j").is_empty());
    let log = t.path().join("log");
    let d = faked_daemon(&lib, &t.path().join("faketime"), &catalog, &cfg, &log);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the missed run", 60, || {
        logged().contains("job j: its run due at")
            && logged().contains("was missed while the daemon was down; running it now")
            && t.path().join("s/daily.1").exists()
    });
    d.stop();
    assert!(!logged().contains("job k: its run due at"), "{}", logged());
}

/// A daemon started just before a job's scheduled time (here 12 s before a daily
/// time, its previous time missed while the daemon was down) ran the missed run at
/// once and the scheduled one seconds later: two near-identical snapshots, a slot of
/// the ring spent. The next time stands for the missed run when it is that close (a
/// tenth of the schedule's period, at most 15 minutes), and the log says so.
#[test]
fn a_missed_run_just_before_the_next_time_waits_for_it() {
    let Some(lib) = libfaketime() else { return };
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    write(&src.join("x"), b"x");
    let at = chrono::Utc::now() + chrono::Duration::seconds(12);
    let cfg = daily_job_at(t.path(), &src, at);
    // The job's last run, two days ago: yesterday's time was missed.
    let offset = t.path().join("faketime");
    std::fs::write(&offset, "-172800\n").unwrap();
    let mut run = Command::new(bin());
    run.arg("--catalog")
        .arg(&catalog)
        .args(["run", "j", "--no-progress", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null());
    faked(&mut run, &lib, &offset);
    assert!(run.status().unwrap().success());
    std::fs::write(&offset, "+0\n").unwrap();
    let log = t.path().join("log");
    let d = faked_daemon(&lib, &offset, &catalog, &cfg, &log);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the scheduled run", 60, || {
        chrono::Utc::now() > at && t.path().join("s/daily.1").exists()
    });
    std::thread::sleep(Duration::from_secs(3));
    d.stop();
    assert!(
        chrono::Utc::now() - at < chrono::Duration::hours(1),
        "the test took too long"
    );
    assert!(
        logged().contains("stands for it") && !logged().contains("running it now"),
        "{}",
        logged()
    );
    assert_eq!(rows_of(&catalog, "j").len(), 2, "{}", logged());
    assert!(!t.path().join("s/daily.2").exists());
}

/// A `snapring run` started by cron or a systemd timer and killed (SIGKILL: the
/// out-of-memory killer) was settled `incomplete` by the next run and told to nobody:
/// only a daemon's start told such deaths, and a job run from cron killed night after
/// night was never notified. Now the next run of the job tells it, once, before its own
/// backup; two runs started together tell it once between them (the store's claim), and
/// a daemon started later does not tell it again.
#[test]
fn a_run_killed_outside_a_daemon_is_told_by_the_next_run_once() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 30, 10);
    let (cfg, _, told) = killable_job(t.path(), &src);
    let runs = t.path().join("a/.snapring/runs");
    let (st, id) = stopped_mid_walk(
        &mut slow_run(&catalog, &cfg, "a"),
        &runs,
        rustix::process::Signal::KILL,
    );
    assert!(!st.success());
    assert!(told_lines(&told).is_empty(), "{:?}", told_lines(&told));
    // Two runs at once, as overlapping cron lines: one tells the death, the other
    // finds it told (one of them also finds the store in use: its own failure).
    let mut two: Vec<_> = (0..2)
        .map(|_| {
            job_run(&catalog, &cfg, "a")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in &mut two {
        c.wait().unwrap();
    }
    let death = format!("a incomplete {id}");
    let lines = told_lines(&told);
    assert_eq!(
        lines.iter().filter(|l| **l == death).count(),
        1,
        "{lines:?}"
    );
    // The outcome is in the record and in the catalog row: told.
    let (_, shown, _, _) = cli(&catalog, &["show", &id, "--json"], &[]);
    assert_eq!(shown["report"]["notifications"][0]["ok"], true, "{shown}");
    assert!(
        rows_of(&catalog, "a")
            .iter()
            .any(|r| r["status"] == "complete"),
        "{:?}",
        rows_of(&catalog, "a")
    );
    // Neither a later run nor a daemon's start tells it again.
    assert!(
        job_run(&catalog, &cfg, "a")
            .output()
            .unwrap()
            .status
            .success()
    );
    let daemon = Daemon::start(&catalog, &cfg, "");
    std::thread::sleep(Duration::from_secs(3));
    daemon.stop();
    let lines = told_lines(&told);
    assert_eq!(
        lines.iter().filter(|l| **l == death).count(),
        1,
        "{lines:?}"
    );
}

/// A fifo at a store's `.snapring/told.lock` (whoever can write the store can put one
/// there): the claim to tell a death opened it for writing, which waits for a reader:
/// the next `snapring run` hung there for ever, before its backup (no backup, no
/// record, no notice). Opened as the store's lock is: refused (not a regular file),
/// said, and the death told all the same; the run backs up.
#[test]
fn a_fifo_at_the_told_lock_hangs_no_run_and_the_death_is_told_all_the_same() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 30, 10);
    let (cfg, _, told) = killable_job(t.path(), &src);
    let runs = t.path().join("a/.snapring/runs");
    let (st, id) = stopped_mid_walk(
        &mut slow_run(&catalog, &cfg, "a"),
        &runs,
        rustix::process::Signal::KILL,
    );
    assert!(!st.success());
    let lock = t.path().join("a/.snapring/told.lock");
    let _ = std::fs::remove_file(&lock);
    assert!(
        Command::new("mkfifo")
            .arg(&lock)
            .status()
            .unwrap()
            .success()
    );
    let err = t.path().join("run.err");
    let mut run = job_run(&catalog, &cfg, "a")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = run.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = run.kill();
            let _ = run.wait();
            panic!(
                "the run hung at the fifo at told.lock: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&err).unwrap();
    assert!(st.success(), "{err}");
    assert!(
        err.contains("told.lock") && err.contains("not a regular file"),
        "{err}"
    );
    let death = format!("a incomplete {id}");
    let lines = told_lines(&told);
    assert_eq!(
        lines.iter().filter(|l| **l == death).count(),
        1,
        "{lines:?}"
    );
    assert!(
        std::fs::symlink_metadata(&lock)
            .unwrap()
            .file_type()
            .is_fifo(),
        "the fifo was replaced"
    );
}

/// A run killed under the daemon while a command held its store with a shared lock (a
/// restore, a verify: they repair nothing) left its record `running`: the daemon told
/// it as a plain "failed" with no run id, and once the store was free the next run's
/// repair settled the record into an untold death, told again (by the next start; by
/// the next run now). The daemon waits for the record to be settled and tells the death
/// once, with its run id.
#[test]
fn a_run_killed_while_its_store_is_held_shared_is_told_once_with_its_id() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 30, 10);
    let (cfg, pid_file, told) = killable_job(t.path(), &src);
    let log = t.path().join("d.log");
    let daemon = daemon_logging_with(
        &catalog,
        &cfg,
        &log,
        &[
            ("SNAPRING_FAILPOINTS", "walk.copy=sleep:200"),
            ("SNAPRING_DAEMON_DEATH_WAIT", "20s"),
        ],
    );
    let pid = run_pid(&pid_file);
    wait_until("the run's row", 60, || {
        rows_of(&catalog, "a")
            .iter()
            .any(|r| r["status"] == "running")
    });
    let id = rows_of(&catalog, "a")
        .iter()
        .find(|r| r["status"] == "running")
        .and_then(|r| r["id"].as_str().map(str::to_string))
        .unwrap();
    // A read-only command's lock on the store, as `restore` takes it, taken as the
    // killed run's lock goes with it (before the daemon's next turn reaps it).
    let store = snapring::store::Store::open(&t.path().join("a"), false).unwrap();
    sigkill(pid);
    let t0 = std::time::Instant::now();
    let shared = loop {
        match store.lock_shared() {
            Ok(l) => break l,
            Err(e) if t0.elapsed() > Duration::from_secs(10) => panic!("{e}"),
            Err(_) => std::thread::yield_now(),
        }
    };
    std::thread::sleep(Duration::from_secs(3));
    drop(shared);
    let death = format!("a incomplete {id}");
    wait_until("the notice of the killed run", 30, || {
        told_lines(&told).contains(&death)
    });
    std::thread::sleep(Duration::from_secs(3));
    daemon.stop();
    let again = Daemon::start(&catalog, &cfg, "");
    std::thread::sleep(Duration::from_secs(3));
    again.stop();
    let lines = told_lines(&told);
    assert_eq!(
        lines.iter().filter(|l| **l == death).count(),
        1,
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.trim() == "a failed"),
        "told with no run id: {lines:?}"
    );
}

/// A run killed under the daemon while a command held its store shared for longer than
/// the daemon waits for a death's record: the daemon tells it without its record (a
/// plain "failed") and, stopped before the command ended, left nothing that said so:
/// its catalog row stayed `running` and no note was kept, so the next run of the job
/// (by hand, by cron) settled the record into an untold death and told it again (the
/// daemon's next start too). Now the row is `failed` and the death noted, as when the
/// store does not answer, and a run of the job marks the noted death told instead of
/// telling it (it looked in the store only).
#[test]
fn a_death_told_while_its_store_was_held_is_not_told_again_after_the_daemon_stops() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 30, 10);
    let (cfg, pid_file, told) = killable_job(t.path(), &src);
    let log = t.path().join("d.log");
    let daemon = daemon_logging_with(
        &catalog,
        &cfg,
        &log,
        &[
            ("SNAPRING_FAILPOINTS", "walk.copy=sleep:200"),
            ("SNAPRING_DAEMON_DEATH_WAIT", "2s"),
        ],
    );
    let pid = run_pid(&pid_file);
    wait_until("the run's row", 60, || {
        rows_of(&catalog, "a")
            .iter()
            .any(|r| r["status"] == "running")
    });
    let id = rows_of(&catalog, "a")
        .iter()
        .find(|r| r["status"] == "running")
        .and_then(|r| r["id"].as_str().map(str::to_string))
        .unwrap();
    let store = snapring::store::Store::open(&t.path().join("a"), false).unwrap();
    sigkill(pid);
    let t0 = std::time::Instant::now();
    let shared = loop {
        match store.lock_shared() {
            Ok(l) => break l,
            Err(e) if t0.elapsed() > Duration::from_secs(10) => panic!("{e}"),
            Err(_) => std::thread::yield_now(),
        }
    };
    // Given up waiting: told without its record.
    wait_until("the notice of the killed run, given up", 30, || {
        told_lines(&told).iter().any(|l| l.trim() == "a failed")
    });
    daemon.stop();
    drop(shared);
    let by_hand = job_run(&catalog, &cfg, "a").output().unwrap();
    let err = String::from_utf8_lossy(&by_hand.stderr).into_owned();
    assert!(by_hand.status.success(), "{err}");
    let again = Daemon::start(&catalog, &cfg, "");
    std::thread::sleep(Duration::from_secs(3));
    again.stop();
    let death = format!("a incomplete {id}");
    let lines = told_lines(&told);
    assert!(
        !lines.contains(&death),
        "told again, by the next run or start: {lines:?} {err}"
    );
    let (_, shown, _, _) = cli(&catalog, &["show", &id, "--json"], &[]);
    assert!(
        shown["report"]["warnings"].as_array().is_some_and(|w| w
            .iter()
            .any(|w| w == "its death was told before its store answered")),
        "{shown}"
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("is held by another command"), "{logged}");
}

/// A run of the job stopped (SIGTERM) while it told its notifiers of an earlier run's
/// death: the cut outcome was written into the death's record, which made it told,
/// and the stopped run went on to a record of its own, newer (a daemon's start looks
/// for cut notices in a job's newest record only): the death was never told. Now it is
/// left untold and the stopped run does not start: the next run tells it.
#[test]
fn a_run_stopped_while_it_tells_a_death_leaves_it_for_the_next_run() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 30, 10);
    let (cfg, _, told) = killable_job(t.path(), &src);
    // The notifier hangs once (the death's notice), while `slow` is there.
    let slow = t.path().join("slow");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let tail = format!(">> {}\"]", told.display());
    assert!(text.contains(&tail), "{text}");
    std::fs::write(
        &cfg,
        text.replace(
            &tail,
            &format!(
                ">> {}; if [ -e {s} ]; then rm {s}; sleep 30; fi\"]",
                told.display(),
                s = slow.display()
            ),
        ),
    )
    .unwrap();
    let runs = t.path().join("a/.snapring/runs");
    let (st, id) = stopped_mid_walk(
        &mut slow_run(&catalog, &cfg, "a"),
        &runs,
        rustix::process::Signal::KILL,
    );
    assert!(!st.success());
    std::fs::write(&slow, "").unwrap();
    let death = format!("a incomplete {id}");
    let mut run = job_run(&catalog, &cfg, "a")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the death's notice under way", 30, || {
        told_lines(&told).contains(&death) && !slow.exists()
    });
    std::thread::sleep(Duration::from_millis(300));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(run.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let t0 = Instant::now();
    while run.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the stopped run did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let next = job_run(&catalog, &cfg, "a").output().unwrap();
    assert!(
        next.status.success(),
        "{}",
        String::from_utf8_lossy(&next.stderr)
    );
    let lines = told_lines(&told);
    assert_eq!(
        lines.iter().filter(|l| **l == death).count(),
        2,
        "cut short once, then told: {lines:?}"
    );
    let (_, shown, _, _) = cli(&catalog, &["show", &id, "--json"], &[]);
    assert_eq!(shown["report"]["notifications"][0]["ok"], true, "{shown}");
}

/// A schedule whose last time is past (`cron(0 2 * * ? 2020)`) passed `config check`,
/// and a daemon on it went quiet after its last run: no event, no notice. `config
/// check` refuses it now, and the daemon records an `error` event and tells the job's
/// notifiers when a job has no time left.
#[test]
fn a_schedule_with_no_time_left_is_refused_by_check_and_told_by_the_daemon() {
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 2, 10);
    let told = t.path().join("told");
    let cfg = t.path().join("past.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{}\"\ndest = \"{}\"\nschedule = \"cron(0 2 * * ? 2020)\"\nnotify = [\"cmd\"]\n\n\
             [notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_JOB $SNAPRING_STATUS >> {}\"]\n",
            src.display(),
            t.path().join("d").display(),
            told.display()
        ),
    )
    .unwrap();
    let o = snapring(&["config".as_ref(), "check".as_ref(), cfg.as_os_str()], &[]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("its last time is past"), "{err}");
    let daemon = Daemon::start(&catalog, &cfg, "");
    wait_until("the notice", 30, || {
        told_lines(&told).contains(&"a failed".to_string())
    });
    daemon.stop();
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    assert!(
        c.events(Some("a"))
            .unwrap()
            .iter()
            .any(|e| e.kind == "error" && e.message.contains("no time left")),
        "an error event"
    );
}

/// After the last run of a schedule whose years end (here `cron(0 2 31 12 ? 2026)`,
/// under a clock faked to 2026-12-31 01:59:57), the daemon logged nothing, wrote no
/// event and told nobody: from then on the job was not backed up, silently. It records
/// an `error` event and tells the job's notifiers once the last run is started.
#[test]
fn a_daemon_tells_when_a_jobs_last_scheduled_time_has_passed() {
    let Some(lib) = libfaketime() else { return };
    let t = tempfile::tempdir().unwrap();
    let (src, catalog) = (t.path().join("src"), t.path().join("cat.db"));
    tree(&src, 2, 10);
    let told = t.path().join("told");
    let cfg = t.path().join("y.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.a]\nsource = \"{}\"\ndest = \"{}\"\nschedule = \"cron(0 2 31 12 ? 2026)\"\nnotify = [\"cmd\"]\n\n\
             [notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_JOB $SNAPRING_STATUS >> {}\"]\n",
            src.display(),
            t.path().join("d").display(),
            told.display()
        ),
    )
    .unwrap();
    let target = chrono::DateTime::parse_from_rfc3339("2026-12-31T01:59:57Z").unwrap();
    let offset = t.path().join("faketime");
    std::fs::write(
        &offset,
        format!(
            "{:+}\n",
            target.timestamp() - chrono::Utc::now().timestamp()
        ),
    )
    .unwrap();
    let log = t.path().join("log");
    let d = faked_daemon(&lib, &offset, &catalog, &cfg, &log);
    wait_until("the notice", 60, || {
        told_lines(&told).contains(&"a failed".to_string())
    });
    wait_until("the last run", 60, || {
        rows_of(&catalog, "a")
            .iter()
            .any(|r| r["status"] == "complete")
    });
    d.stop();
    let c = snapring::catalog::Catalog::open(&catalog, false).unwrap();
    let events = c.events(Some("a")).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "error" && e.message.contains("no time left after this run")),
        "{:?}",
        events.iter().map(|e| &e.message).collect::<Vec<_>>()
    );
    // Told once, not at every turn of the loop.
    assert_eq!(told_lines(&told), vec!["a failed".to_string()]);
}
