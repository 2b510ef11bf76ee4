//! Operations a run has around it, through the binary: a restore recorded as a run
//! (run id, catalog row of kind `restore`, log beside the catalog, the job's webhook
//! notified, the store untouched), pre and post commands, and the bandwidth limit.

mod common;
use common::*;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

struct Env {
    t: tempfile::TempDir,
    src: PathBuf,
    store: PathBuf,
    catalog: PathBuf,
}

fn setup(files: usize, size: usize) -> Env {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for i in 0..files {
        write(
            &src.join(format!("d{}/f{i}", i % 3)),
            &vec![b'a' + (i % 26) as u8; size],
        );
    }
    Env {
        src,
        store: t.path().join("store"),
        catalog: t.path().join("state/catalog.db"),
        t,
    }
}

impl Env {
    /// `snapring --catalog CATALOG ARGS…`: (exit, stdout JSON, stderr, stdout).
    fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, serde_json::Value, String, String) {
        let mut a: Vec<&OsStr> = vec!["--catalog".as_ref(), self.catalog.as_os_str()];
        a.extend(args.iter().map(OsStr::new));
        let out = snapring(&a, env);
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn backup(&self, extra: &[&str]) -> (i32, serde_json::Value, String) {
        let c = self.catalog.to_string_lossy().into_owned();
        backup(&self.src, &self.store, extra, &[("SNAPRING_CATALOG", &c)])
    }

    fn s(&self, p: &Path) -> String {
        p.to_str().unwrap().to_string()
    }
}

/// Every file and directory under `p` with its size and mtime: a restore must leave
/// the store exactly as it was.
fn listing(p: &Path) -> Vec<(PathBuf, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            out.push((e.path(), m.len(), m.mtime(), m.mtime_nsec()));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_restore_is_a_run_in_the_catalog_with_its_log_and_the_jobs_notification() {
    let e = setup(9, 1000);
    assert_eq!(e.backup(&[]).0, 0);
    let before = listing(&e.store);
    let http = http_server();
    let cfg = e.t.path().join("s.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.home]\nsource = \"{}\"\ndest = \"{}\"\nnotify = [\"hook\"]\nnotify_success = true\n\n[notify.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{}/restored\"\n",
            e.s(&e.src),
            e.s(&e.store),
            http.port
        ),
    )
    .unwrap();
    let to = e.t.path().join("out");
    // A plain restore (no config) records into the same catalog a backup uses.
    let (code, plain, err, _) = e.cli(
        &[
            "restore",
            "--dest",
            &e.s(&e.store),
            "latest",
            "--to",
            &e.s(&to),
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(plain["kind"], "restore");
    assert_eq!(plain["files_restored"], 9);
    // For a configured job: its store, and its notifier. A second restore into the same
    // place finds every file there already (identical, skipped).
    let (code, rep, err, _) = e.cli(
        &[
            "restore",
            "--config",
            &e.s(&cfg),
            "--job",
            "home",
            "latest",
            "--to",
            &e.s(&to),
            "--path",
            "d1",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let id = rep["id"].as_str().unwrap().to_string();
    assert_ne!(id, plain["id"].as_str().unwrap());
    assert_eq!(rep["job"], "home");
    assert_eq!(rep["skipped_identical"], 3);
    assert_eq!(rep["notifications"][0]["ok"], true, "{rep}");
    let hooks = http.got.lock().unwrap().clone();
    assert_eq!(hooks.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&hooks[0].1).unwrap();
    assert_eq!(
        (body["run"].as_str(), body["status"].as_str()),
        (Some(id.as_str()), Some("complete"))
    );
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("home: restore complete"),
        "{body}"
    );

    // The catalog has both, with their kind; --kind filters.
    let (_, h, err, _) = e.cli(&["history", "--json"], &[]);
    let kinds: Vec<&str> = h
        .as_array()
        .unwrap_or_else(|| panic!("{err}"))
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["backup", "restore", "restore"]);
    let (_, h, _, _) = e.cli(&["history", "--json", "--kind", "restore"], &[]);
    assert_eq!(h.as_array().unwrap().len(), 2);
    assert_eq!(h[1]["id"], id.as_str());
    assert_eq!(h[1]["job"], "home");
    assert_eq!(h[0]["files_total"], 9);
    // The second found its 3 files identical: 3 in the set, none restored.
    assert_eq!(
        (
            h[1]["files_total"].as_u64(),
            h[1]["files_transferred"].as_u64()
        ),
        (Some(3), Some(0))
    );
    let (_, h, _, _) = e.cli(&["history", "--json", "--kind", "backup"], &[]);
    assert_eq!(h.as_array().unwrap().len(), 1);
    let (_, _, _, table) = e.cli(&["history", "--kind", "restore"], &[]);
    let line = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(line.split_whitespace().nth(1), Some("restore"), "{table}");
    assert!(
        table.starts_with("RUN") && table.contains("KIND"),
        "{table}"
    );

    // `show` has the whole restore, with its notification and its log beside the
    // catalog; the store was not written (not even its log folder).
    let (code, shown, err, _) = e.cli(&["show", "--json", &id], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(shown["kind"], "restore");
    assert_eq!(shown["report"]["notifications"][0]["notifier"], "hook");
    let log = e.catalog.parent().unwrap().join(format!("logs/{id}.log"));
    assert_eq!(shown["log_path"], log.to_str().unwrap());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("restore started") && text.contains("restore finished"),
        "{text}"
    );
    assert!(text.contains("notified hook"), "{text}");
    assert_eq!(listing(&e.store), before, "a restore wrote into the store");

    // A snapshot the store does not have is a mistake on the command line: refused
    // (exit 64) before a run starts, neither recorded nor notified.
    let (code, _, err, _) = e.cli(
        &[
            "restore",
            "--config",
            &e.s(&cfg),
            "daily.9",
            "--to",
            &e.s(&to),
        ],
        &[],
    );
    assert_eq!(code, 64, "{err}");
    let (_, h, _, _) = e.cli(&["history", "--json", "--kind", "restore"], &[]);
    assert_eq!(h.as_array().unwrap().len(), 2, "{h}");
    assert_eq!(http.got.lock().unwrap().len(), 1);
    // A restore that cannot start (its target is a file) is recorded (and notified)
    // as failed.
    let file = to.with_extension("file");
    std::fs::write(&file, b"x").unwrap();
    let (code, _, err, _) = e.cli(
        &[
            "restore",
            "--config",
            &e.s(&cfg),
            "daily.0",
            "--to",
            &e.s(&file),
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    let (_, h, _, _) = e.cli(&["history", "--json", "--kind", "restore"], &[]);
    assert_eq!(h[2]["status"], "failed");
    assert_eq!(http.got.lock().unwrap().len(), 2);
    // A rebuild from the store keeps the restores (they have no record there).
    let (code, _, err, _) = e.cli(&["catalog", "rebuild", "--dest", &e.s(&e.store)], &[]);
    assert_eq!(code, 0, "{err}");
    let (_, h, _, _) = e.cli(&["history", "--json"], &[]);
    assert_eq!(h.as_array().unwrap().len(), 4);
}

#[test]
fn a_bandwidth_limit_paces_the_copy_and_reports_the_wait() {
    // 4 MiB copied = 4 MiB read + 4 MiB written = 8 MiB through a 4 MiB/s limit: at
    // least 2 s, less the 100 ms burst.
    let e = setup(16, 256 * 1024);
    let t0 = std::time::Instant::now();
    let (code, rep, err) = e.backup(&["--bwlimit", "4MiB", "--jobs", "4"]);
    let took = t0.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["bytes_transferred"], 4 << 20);
    assert_eq!(rep["bwlimit"], 4 << 20);
    let waited = rep["bwlimit_wait_seconds"].as_f64().unwrap();
    assert!(took >= 1.9, "8 MiB at 4 MiB/s took {took:.2}s");
    assert!(
        (1.5..=took).contains(&waited),
        "waited {waited:.2}s of {took:.2}s"
    );
    // The catalog has the figure, and `show` says it.
    let id = rep["id"].as_str().unwrap();
    let (_, _, _, shown) = e.cli(&["show", id], &[]);
    assert!(
        shown.contains("bandwidth limit 4.00 MiB/s, waited"),
        "{shown}"
    );
    let conn = rusqlite::Connection::open(&e.catalog).unwrap();
    let w: f64 = conn
        .query_row(
            "SELECT bwlimit_wait_seconds FROM runs WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    // serde_json's default float parsing may land one ULP off the value the catalog
    // stored from the report in memory (seen: 1.8996634669999999 vs 1.899663467).
    assert!((w - waited).abs() < 1e-9, "{w} vs {waited}");

    // Without a limit the same amount is not held back.
    for i in 0..16 {
        write(
            &e.src.join(format!("d{}/f{i}", i % 3)),
            &vec![b'z'; 256 * 1024],
        );
    }
    let t0 = std::time::Instant::now();
    let (code, rep, err) = e.backup(&["--jobs", "4"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["bytes_transferred"], 4 << 20);
    assert_eq!(rep["bwlimit"], serde_json::Value::Null);
    assert_eq!(rep["bwlimit_wait_seconds"], 0.0);
    assert!(
        t0.elapsed().as_secs_f64() < 1.5,
        "unthrottled took {:?}",
        t0.elapsed()
    );

    // A config's bwlimit, and a bad one explained.
    let cfg = e.t.path().join("b.toml");
    let job = |rate: &str| {
        format!(
            "[job.j]\nsource = \"{}\"\ndest = \"{}\"\nbwlimit = \"{rate}\"\n",
            e.s(&e.src),
            e.s(&e.store)
        )
    };
    std::fs::write(&cfg, job("8M")).unwrap();
    for i in 0..16 {
        write(
            &e.src.join(format!("d{}/f{i}", i % 3)),
            &vec![b'y'; 256 * 1024],
        );
    }
    let (code, rep, err, _) = e.cli(&["backup", "--config", &e.s(&cfg), "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["bwlimit"], 8 << 20);
    assert!(rep["bwlimit_wait_seconds"].as_f64().unwrap() > 0.5, "{rep}");
    std::fs::write(&cfg, job("fast")).unwrap();
    let (code, _, _, out) = e.cli(&["config", "check", &e.s(&cfg)], &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("bwlimit \"fast\": give bytes per second"),
        "{out}"
    );
}

/// A config with one job `j` of `e` plus `extra` lines.
fn job_config(e: &Env, extra: &str) -> PathBuf {
    let cfg = e.t.path().join("hooks.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.j]\nsource = \"{}\"\ndest = \"{}\"\n{extra}\n",
            e.s(&e.src),
            e.s(&e.store)
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn pre_and_post_commands_run_around_the_backup_and_a_failing_pre_command_publishes_nothing() {
    let e = setup(6, 100);
    let out = e.t.path().join("post");
    std::fs::create_dir(&out).unwrap();
    // The post command saves its environment and its stdin.
    let post = format!(
        "post_command = [\"/bin/sh\", \"-c\", \"cat > {o}/report.json; echo \\\"$SNAPRING_STATUS|$SNAPRING_RUN_ID|$SNAPRING_SNAPSHOT\\\" > {o}/env\"]",
        o = e.s(&out)
    );
    // It runs before the walk: what it writes into the source is in the snapshot.
    let pre = "pre_command = [\"/bin/sh\", \"-c\", \"echo frozen; date > \\\"$SNAPRING_SOURCE/marker\\\"\"]";
    let cfg = job_config(&e, &format!("{pre}\n{post}"));
    let (code, rep, err, _) = e.cli(&["backup", "--config", &e.s(&cfg), "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let id = rep["id"].as_str().unwrap();
    assert!(e.store.join("daily.0/marker").is_file());
    assert_eq!(rep["pre_command"]["exit_code"], 0, "{rep}");
    assert_eq!(rep["post_command"]["ok"], true, "{rep}");
    assert!(rep["post_command"]["seconds"].as_f64().unwrap() > 0.0);
    let env = std::fs::read_to_string(out.join("env")).unwrap();
    assert_eq!(env.trim(), format!("complete|{id}|daily.0"));
    let piped: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(piped["id"], id);
    assert_eq!(piped["status"], "complete");
    // Recorded in the store's run record and the catalog; the output is in the run log.
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(e.store.join(format!(".snapring/runs/{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(record["post_command"], rep["post_command"]);
    let (_, shown, _, _) = e.cli(&["show", "--json", id], &[]);
    assert_eq!(shown["report"]["pre_command"], rep["pre_command"]);
    let log = std::fs::read_to_string(e.store.join(format!(".snapring/logs/{id}.log"))).unwrap();
    assert!(log.contains("pre_command: frozen"), "{log}");

    // A failing pre command: the run fails, nothing is published, the output is in the
    // log, and the post command still runs and hears `failed`.
    let before = snapshot_names(&e.store);
    write(&e.src.join("new-file"), b"not to be backed up");
    let bad =
        "pre_command = [\"/bin/sh\", \"-c\", \"echo about to fail; echo no-freeze >&2; exit 3\"]";
    let cfg = job_config(&e, &format!("{bad}\n{post}"));
    let (code, rep, err, _) = e.cli(&["backup", "--config", &e.s(&cfg), "--json"], &[]);
    assert_eq!(code, 1, "{err}");
    let id = rep["id"].as_str().unwrap();
    assert_eq!(rep["status"], "failed");
    assert_eq!(rep["pre_command"]["exit_code"], 3);
    let msg = rep["message"].as_str().unwrap();
    assert!(
        msg.contains("pre_command") && msg.contains("no-freeze"),
        "{msg}"
    );
    assert_eq!(snapshot_names(&e.store), before);
    assert!(!e.store.join("daily.0/new-file").exists());
    let log = std::fs::read_to_string(e.store.join(format!(".snapring/logs/{id}.log"))).unwrap();
    assert!(
        log.contains("about to fail") && log.contains("no-freeze"),
        "{log}"
    );
    let env = std::fs::read_to_string(out.join("env")).unwrap();
    assert_eq!(env.trim(), format!("failed|{id}|"));
    let (_, h, _, _) = e.cli(&["history", "--json", "--kind", "backup"], &[]);
    assert_eq!(h[1]["status"], "failed");
}

/// Under a umask without the owner's bits a hook runs through `/bin/sh -c 'umask …
/// && exec "$0" "$@"'`: a missing program was reported as the shell's "exited with
/// exit status: 127" (its "not found" line in the output) rather than "cannot start
/// PROG", as it is without that umask.
#[test]
fn a_missing_hook_program_is_named_under_a_umask_without_the_owners_bits() {
    let e = setup(3, 10);
    for prog in ["/no/such/program", "no-such-program-snapring"] {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("umask 0277 && exec \"$0\" \"$@\"")
            .arg(bin())
            .args(["backup", "--json", "--source", &e.s(&e.src), "--dest"])
            .arg(&e.store)
            .args(["--pre-command", prog])
            .env("SNAPRING_CATALOG", "off")
            .output()
            .unwrap();
        let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{prog}: {rep}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let msg = rep["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(&format!("cannot start {prog}: No such file or directory")),
            "{prog}: {rep}"
        );
        assert!(snapshot_names(&e.store).is_empty());
    }
}

#[test]
fn hook_commands_that_hang_or_do_not_exist_fail_the_run_and_flags_split_like_a_shell() {
    let e = setup(3, 10);
    // A pre command past its timeout is killed, with what it started.
    let cfg = job_config(
        &e,
        "hook_timeout = \"1s\"\npre_command = [\"/bin/sh\", \"-c\", \"sleep 30; sleep 30\"]",
    );
    let t0 = std::time::Instant::now();
    let (code, rep, err, _) = e.cli(&["backup", "--config", &e.s(&cfg), "--json"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(t0.elapsed().as_secs() < 10, "took {:?}", t0.elapsed());
    assert_eq!(rep["pre_command"]["exit_code"], serde_json::Value::Null);
    assert!(
        rep["message"]
            .as_str()
            .unwrap()
            .contains("timed out after 1s"),
        "{rep}"
    );
    // SIGTERM to snapring kills a running pre command too (it has its own process
    // group, so it would not get the signal itself).
    let cfg = job_config(
        &e,
        "pre_command = [\"/bin/sh\", \"-c\", \"sleep 30; sleep 30\"]",
    );
    let t0 = std::time::Instant::now();
    let child = std::process::Command::new(bin())
        .env("SNAPRING_CATALOG", "off")
        .args(["backup", "--json", "--config", &e.s(&cfg)])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(t0.elapsed().as_secs() < 10, "took {:?}", t0.elapsed());
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        rep["message"].as_str().unwrap().contains("interrupted"),
        "{rep}"
    );
    // One that does not exist.
    let cfg = job_config(&e, "pre_command = [\"/no/such/program\"]");
    let (code, rep, _, _) = e.cli(&["backup", "--config", &e.s(&cfg), "--json"], &[]);
    assert_eq!(code, 1);
    assert!(
        rep["message"]
            .as_str()
            .unwrap()
            .contains("cannot start /no/such/program"),
        "{rep}"
    );
    assert!(snapshot_names(&e.store).is_empty());
    // The flags: one command line each, split as a shell would, run without one.
    let done = e.t.path().join("post done");
    let (code, rep, err) = e.backup(&[
        "--pre-command",
        "/bin/sh -c 'test -d \"$SNAPRING_SOURCE\"'",
        "--post-command",
        &format!("touch '{}'", e.s(&done)),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["post_command"]["command"][1], e.s(&done));
    assert!(done.is_file());
    let (code, _, err) = e.backup(&["--pre-command", "echo 'unbalanced"]);
    assert_eq!(code, 64, "a bad flag is a usage error");
    assert!(
        err.contains("--pre-command") && err.contains("unbalanced quotes"),
        "{err}"
    );
}

/// `run --user-umask` (what a daemon hands on to each run) refused names the value
/// given and what is accepted, in terms of the umask the run was started under (the
/// daemon's, or the user's own for a run started by hand), not snapring's working
/// umask with the owner's bits taken out: it said "not the umask this run was started
/// under (0077) with owner bits added" to a run started under umask 0277.
#[test]
fn a_refused_user_umask_names_the_value_and_what_is_accepted() {
    let refused = |umask: &str, given: &str| {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
            .arg(bin())
            .args([
                "run",
                "--user-umask",
                given,
                "--config",
                "/nonexistent.toml",
                "job",
            ])
            .env("SNAPRING_CATALOG", "off")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(64), "umask {umask}, {given}: {err}");
        err
    };
    // Started under the daemon's working umask (no owner bits): only the owner digit
    // may differ.
    let err = refused("0022", "0077");
    for said in [
        "--user-umask 0077",
        "is refused",
        "(0022)",
        "accepted: 0022 to 0722",
    ] {
        assert!(err.contains(said), "not said: {said:?}: {err}");
    }
    // Started by hand under a umask with owner bits: nothing is accepted, and the umask
    // named is the one it was started under.
    let err = refused("0277", "0277");
    for said in [
        "--user-umask 0277",
        "started under umask 0277",
        "no value is accepted",
    ] {
        assert!(err.contains(said), "not said: {said:?}: {err}");
    }
    assert!(!err.contains("0077"), "{err}");
}

/// SIGHUP (the terminal closed, an ssh session dropped) stops `snapring run` as
/// SIGTERM does: exit 3, the run recorded `incomplete` in the catalog, its post command
/// and its notifier run. Before, SIGHUP's default killed it at once: exit 129, no
/// report, no post command, no notification, the catalog row left `running`; then a
/// second SIGHUP ended it as a second SIGTERM does (exit 130).
#[test]
fn sighup_stops_a_run_cleanly_with_its_post_command_and_notification() {
    let e = setup(6, 100);
    let (post, told) = (e.t.path().join("post ran"), e.t.path().join("notified"));
    let cfg = job_config(
        &e,
        &format!(
            "post_command = [\"/bin/sh\", \"-c\", \"echo $SNAPRING_STATUS > '{}'\"]\nnotify = [\"cmd\"]\n\n[notify.cmd]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"cat > '{}'\"]\n",
            e.s(&post),
            e.s(&told)
        ),
    );
    // SIGHUP's default disposition in snapring, whatever the test runner's (under
    // `nohup` it is ignored, and snapring then keeps ignoring it, as it should).
    let mut cmd = std::process::Command::new("env");
    cmd.arg("--default-signal=HUP")
        .arg(bin())
        .arg("--catalog")
        .arg(&e.catalog)
        .args(["run", "j", "--json", "--config"])
        .arg(&cfg);
    // Twice, as a closing terminal often sends it (the shell passes its own on): a
    // second hangup is not a second signal that ends the run at once (exit 130).
    let pause = e.t.path().join("paused");
    let child = cmd
        .env(
            "SNAPRING_FAILPOINTS",
            format!("walk.copy=pause:{}@1", pause.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&pause);
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    for _ in 0..2 {
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["status"], "incomplete", "{rep}");
    assert_eq!(
        std::fs::read_to_string(&post).unwrap().trim(),
        "incomplete",
        "the post command ran"
    );
    let body = std::fs::read_to_string(&told).unwrap();
    assert!(body.contains("incomplete"), "the notifier ran: {body}");
    let (_, h, err, _) = e.cli(&["history", "--json"], &[]);
    assert_eq!(h[0]["status"], "incomplete", "{h} {err}");
    assert!(snapshot_names(&e.store).is_empty());
}
