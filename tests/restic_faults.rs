//! Faults between snapring and a repository in S3 (docs/format.md, "Faults and
//! retries"): the real binary talks to a real S3 server (s3s-fs, in-process) through a
//! proxy (tests/common/s3.rs) that answers 500/503, delays replies and drops
//! connections mid-request and mid-response. A fault that heals is retried with
//! backoff and the backup is whole (`restic check --read-data` passes, the restore
//! equals the source); one that never heals fails the run clearly, exit 1, with no
//! snapshot visible and a repository `restic check` still passes. SIGKILL during the
//! upload leaves a checkable repository and the next run completes; its catalog row,
//! left `running`, is settled `incomplete` by the next run. SIGTERM and `--window` stop
//! the run as `incomplete` with its packs indexed and reused by the next run. Wrong
//! password, missing bucket and no network fail quickly, exit 1, naming the repository.
//! A slow upload is waited for (the time limit grows with the size) and a stalled one
//! fails in bounded time; throttling (503 SlowDown with `Retry-After`) is waited out
//! for longer than other faults, yet SIGTERM still stops a run waiting on it promptly.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::restic::*;
use common::*;
use s3::{Fault, Proxy, Rule};

const BUCKET: &str = "backups";
const MIB: usize = 1 << 20;

/// An S3 server, a proxy in front of it, a temp dir with a source.
struct Setup {
    t: tempfile::TempDir,
    server: s3::Server,
    proxy: Proxy,
    src: PathBuf,
}

fn setup(rules: Vec<Rule>) -> Setup {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("s3");
    std::fs::create_dir_all(root.join(BUCKET)).unwrap();
    let server = s3::start(&root);
    let proxy = Proxy::start(server.port, rules);
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    Setup {
        t,
        server,
        proxy,
        src,
    }
}

impl Setup {
    fn env(&self, endpoint: &str) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), endpoint.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), s3::ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), s3::SECRET_KEY.into()),
            ("SNAPRING_S3_PATH_STYLE".into(), "true".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/nonexistent".into()),
            ("SNAPRING_PASSWORD".into(), PASSWORD.into()),
            ("SNAPRING_CATALOG".into(), "off".into()),
            (
                "XDG_CACHE_HOME".into(),
                self.t.path().join("cache").to_string_lossy().into_owned(),
            ),
        ]
    }

    /// snapring through the proxy.
    fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_at(&self.proxy.endpoint(), args)
    }

    fn cmd_at(&self, endpoint: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args);
        for (k, v) in self.env(endpoint) {
            c.env(k, v);
        }
        c
    }

    /// Runs snapring through the proxy: (code, stdout, stderr).
    fn sr(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn sr_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.sr(args);
        assert_eq!(code, 0, "snapring {args:?}: {out}\n{err}");
        out
    }

    fn dest(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    fn backup_args<'a>(&'a self, dest: &'a str) -> Vec<&'a str> {
        vec![
            "backup",
            "--source",
            self.src.to_str().unwrap(),
            "--dest",
            dest,
            "--json",
        ]
    }

    /// A restore of the latest snapshot of `dest` into `restored`, through the proxy,
    /// which holds every read of a pack under `held` (`/PREFIX/data/`) until
    /// `proxy.release()`: its reads of file contents wait, its trees come from the
    /// local cache the backups filled (tree packs are under data/ too: read from the
    /// server, they would be held as well). The restore's directory, and its command.
    fn restore_held(&self, dest: &str, held: &'static str) -> (PathBuf, Command) {
        self.proxy
            .set_rules(vec![Rule::new("GET", held, Fault::Hold, u64::MAX)]);
        let to = self.t.path().join("restored");
        let c = self.cmd(&restore_latest(dest, &to));
        (to, c)
    }

    /// A backup through the proxy: (code, report, stderr).
    fn backup(&self, dest: &str) -> (i32, serde_json::Value, String) {
        let (code, out, err) = self.sr(&self.backup_args(dest));
        (
            code,
            serde_json::from_str(&out).unwrap_or(serde_json::Value::Null),
            err,
        )
    }

    /// The objects of the repository under `prefix` of kind `dir` (`snapshots`, ...).
    fn objects(&self, prefix: &str, dir: &str) -> Vec<String> {
        let mut out = Vec::new();
        let root = self.t.path().join("s3").join(BUCKET).join(prefix).join(dir);
        walk(&root, &mut out);
        out.sort();
        out
    }

    /// `restic check --read-data` straight at the server (not through the proxy).
    fn restic_check(&self, prefix: &str) {
        self.restic_check_with(prefix, &[]);
    }

    /// `restic check --read-data` with restic's global flags `flags` first.
    fn restic_check_with(&self, prefix: &str, flags: &[&str]) {
        let Some(restic) = restic_binary("restic check of the repository") else {
            return;
        };
        let repo = format!("s3:http://127.0.0.1:{}/{BUCKET}/{prefix}", self.server.port);
        let mut c = restic_cmd(&restic, repo);
        c.env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY)
            .env("HOME", self.t.path());
        c.args(flags);
        restic_ok(c, &["check", "--read-data"]);
    }

    /// Restores the latest snapshot through the proxy and compares it with the source.
    fn restore_equals_source(&self, dest: &str, what: &str) {
        let to = self.t.path().join(format!("restored-{}", unique()));
        self.sr_ok(&restore_latest(dest, &to));
        assert_same_tree(&describe(&self.src), &describe(&to), what);
        std::fs::remove_dir_all(&to).unwrap();
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
}

/// A source of `mib` MiB of incompressible data in 4 MiB files (several chunks each),
/// small files and a subdirectory.
fn source(src: &Path, mib: usize, seed: u64) {
    for i in 0..mib.div_ceil(4) {
        let n = (mib - 4 * i).min(4) * MIB;
        write(
            &src.join(format!("big/f{i}")),
            &pseudo_random(n, seed + i as u64),
        );
    }
    for i in 0..10 {
        write(
            &src.join(format!("small/s{i}")),
            format!("small {i}\n").as_bytes(),
        );
    }
    std::fs::create_dir_all(src.join("empty")).unwrap();
}

/// A backup through `rules` completes, retried; the proxy saw every fault it was
/// given; restic checks the repository and the restore (through the same faults)
/// equals the source.
fn retried_through(prefix: &str, rules: Vec<Rule>) -> (Setup, serde_json::Value) {
    let s = setup(Vec::new());
    source(&s.src, 3, 1);
    let dest = s.dest(prefix);
    s.sr_ok(&["init", "--dest", &dest]);
    let wanted: u64 = rules.iter().map(|r| r.times).sum();
    s.proxy.set_rules(rules);
    let (code, r, err) = s.backup(&dest);
    assert_eq!(code, 0, "{r}\n{err}");
    assert_eq!(r["status"], "complete", "{r}");
    s.restore_equals_source(&dest, prefix);
    let faults = s.proxy.seen().iter().filter(|x| x.fault.is_some()).count() as u64;
    assert_eq!(faults, wanted, "{:?}", s.proxy.seen());
    assert_eq!(s.objects(prefix, "snapshots").len(), 1);
    s.restic_check(prefix);
    (s, r)
}

#[test]
fn server_errors_on_pack_uploads_are_retried() {
    for (prefix, code) in [("e500", 500), ("e503", 503)] {
        let (s, r) = retried_through(
            prefix,
            vec![Rule::new("PUT", "/data/", Fault::Status(code), 3)],
        );
        let packs = r["repository"]["packs_written"].as_u64().unwrap() as usize;
        // Three refused, then each pack once.
        assert_eq!(s.proxy.count("PUT", "/data/"), packs + 3, "{r}");
        assert_eq!(s.proxy.served("PUT", "/data/"), packs, "{r}");
    }
}

#[test]
fn errors_on_index_snapshot_lock_and_reads_are_retried() {
    let (s, _) = retried_through(
        "small-files",
        vec![
            Rule::new("PUT", "/index/", Fault::Status(500), 2),
            Rule::new("PUT", "/snapshots/", Fault::Status(503), 2),
            Rule::new("PUT", "/locks/", Fault::Status(503), 1),
            Rule::new("DELETE", "/locks/", Fault::DropResponse, 1),
            Rule::new("GET", "/data/", Fault::DropResponse, 2),
            Rule::new("GET", "list-type", Fault::Status(500), 1),
        ],
    );
    // The lock's DELETE landed before its answer was lost: the retry finds it gone, and
    // no lock is left.
    assert!(s.objects("small-files", "locks").is_empty());
}

#[test]
fn dropped_connections_are_retried() {
    // Mid-request: the server never saw the first try. Mid-response: it stored the
    // pack, the client did not hear so; the retry writes the same object again.
    let (s, r) = retried_through(
        "dropped",
        vec![
            Rule::new("PUT", "/data/", Fault::DropRequest, 1),
            Rule::new("PUT", "/data/", Fault::DropResponse, 1),
        ],
    );
    let packs = r["repository"]["packs_written"].as_u64().unwrap() as usize;
    assert_eq!(s.proxy.count("PUT", "/data/"), packs + 2, "{r}");
    assert_eq!(s.proxy.served("PUT", "/data/"), packs + 1, "{r}");
    assert_eq!(
        s.objects("dropped", "data").len(),
        packs,
        "one object per pack"
    );
}

/// A slow server is waited for, not retried (the request timeout is 300 s).
#[test]
fn slow_replies_are_waited_for() {
    let started = Instant::now();
    let (s, r) = retried_through(
        "slow",
        vec![
            Rule::new("PUT", "/data/", Fault::Delay(Duration::from_secs(2)), 1),
            Rule::new(
                "PUT",
                "/snapshots/",
                Fault::Delay(Duration::from_secs(2)),
                1,
            ),
        ],
    );
    assert!(started.elapsed() >= Duration::from_secs(4));
    let packs = r["repository"]["packs_written"].as_u64().unwrap() as usize;
    assert_eq!(s.proxy.count("PUT", "/data/"), packs, "no retry: {r}");
}

/// 500 on every pack upload: the run fails after the bounded retries (6 attempts,
/// 6.2 s of backoff), exit 1, naming the object and the action; no snapshot is
/// visible; restic checks the repository; healed, the next run completes. (503 is
/// throttling, retried for minutes: `sustained_throttling_is_waited_out`.)
#[test]
fn a_fault_that_never_heals_fails_the_run_clearly() {
    let s = setup(Vec::new());
    source(&s.src, 3, 2);
    let dest = s.dest("never");
    s.sr_ok(&["init", "--dest", &dest]);
    s.proxy.set_rules(vec![Rule::new(
        "PUT",
        "/data/",
        Fault::Status(500),
        u64::MAX,
    )]);
    let started = Instant::now();
    let (code, r, err) = s.backup(&dest);
    let took = started.elapsed();
    assert_eq!(code, 1, "{r}\n{err}");
    assert_eq!(r["status"], "failed", "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("cannot write s3://backups/never/data/"),
        "{msg}"
    );
    assert!(msg.contains("after 6 attempts"), "{msg}");
    assert!(msg.contains("HTTP 500: InternalError"), "{msg}");
    assert!(err.contains("backup failed"), "{err}");
    assert!(took >= Duration::from_millis(6200), "{took:?}");
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert!(s.objects("never", "snapshots").is_empty());
    assert!(s.objects("never", "data").is_empty());
    assert!(
        s.objects("never", "locks").is_empty(),
        "the lock is released"
    );
    s.restic_check("never");

    // The snapshot's upload never heals: packs and index are written, the snapshot is
    // not, and the next run finds the packs indexed.
    s.proxy.set_rules(vec![Rule::new(
        "PUT",
        "/snapshots/",
        Fault::Status(500),
        u64::MAX,
    )]);
    let (code, r, _) = s.backup(&dest);
    assert_eq!(code, 1, "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("cannot write s3://backups/never/snapshots/"),
        "{msg}"
    );
    assert!(s.objects("never", "snapshots").is_empty());
    assert!(!s.objects("never", "index").is_empty());
    s.restic_check("never");

    s.proxy.set_rules(Vec::new());
    let (code, r, err) = s.backup(&dest);
    assert_eq!(code, 0, "{r}\n{err}");
    assert!(
        r["repository"]["packs_written"].as_u64().unwrap() <= 1,
        "at most the trees: {r}"
    );
    assert!(
        r["repository"]["bytes_uploaded"].as_u64().unwrap() < MIB as u64 / 4,
        "{r}"
    );
    s.restore_equals_source(&dest, "after the faults healed");
    s.restic_check("never");
}

/// Spawns a backup through the proxy with its output piped.
fn spawn_backup(s: &Setup, dest: &str, extra: &[&str], catalog: Option<&Path>) -> Child {
    let mut args = s.backup_args(dest);
    args.extend_from_slice(extra);
    let mut c = s.cmd(&args);
    if let Some(cat) = catalog {
        c.env("SNAPRING_CATALOG", cat);
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.spawn().unwrap()
}

/// Waits until the server has stored `n` packs through the proxy.
fn wait_for_packs(s: &Setup, n: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while s.proxy.served("PUT", "/data/") < n {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before {n} packs were stored"
        );
        assert!(Instant::now() < deadline, "no {n} packs in 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The runs in the catalog: (id, status, message).
fn catalog_runs(catalog: &Path) -> Vec<(String, String, String)> {
    let c = rusqlite::Connection::open(catalog).unwrap();
    let mut st = c
        .prepare("SELECT id, status, message FROM runs ORDER BY started_at")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// SIGKILL once a pack is stored: restic checks the repository (the pack is in no
/// index: restic calls that non-critical; the dead process's lock is stale), the next
/// run completes and restores equal to the source; the killed run's catalog row,
/// left `running`, is settled `incomplete` by the next run.
#[test]
fn sigkill_during_the_upload_leaves_a_checkable_repository() {
    // Each pack upload slowed, so the kill lands while more are to come.
    let s = setup(Vec::new());
    source(&s.src, 32, 3);
    let dest = s.dest("killed");
    s.sr_ok(&["init", "--dest", &dest]);
    s.proxy.set_rules(vec![Rule::new(
        "PUT",
        "/data/",
        Fault::Delay(Duration::from_millis(500)),
        u64::MAX,
    )]);
    let catalog = s.t.path().join("state/catalog.db");
    let mut child = spawn_backup(&s, &dest, &[], Some(&catalog));
    wait_for_packs(&s, 1, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(s.objects("killed", "snapshots").is_empty());
    assert_eq!(s.objects("killed", "locks").len(), 1, "the dead run's lock");
    let runs = catalog_runs(&catalog);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].1, "running", "{runs:?}");
    // restic's `check` takes an exclusive lock, refused while the dead run's is there
    // (restic's own killed backups leave the same; `restic unlock` removes it).
    s.restic_check_with("killed", &["--no-lock"]);

    s.proxy.set_rules(Vec::new());
    let mut child = spawn_backup(&s, &dest, &[], Some(&catalog));
    let out = std::mem::take(&mut child.stdout).unwrap();
    let r: serde_json::Value = serde_json::from_reader(out).unwrap();
    assert!(child.wait().unwrap().success(), "{r}");
    assert_eq!(r["status"], "complete", "{r}");
    s.restore_equals_source(&dest, "the run after a SIGKILL");
    // The next run removed the dead run's lock, and released its own.
    assert!(s.objects("killed", "locks").is_empty());
    s.restic_check("killed");
    let runs = catalog_runs(&catalog);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].1, "incomplete", "the killed run, settled: {runs:?}");
    assert!(runs[0].2.contains("ended before finishing"), "{runs:?}");
    assert_eq!(runs[1].1, "complete", "{runs:?}");
}

/// Stops a run (by `stop`, once `packs` packs are stored), then checks it ended
/// `incomplete` (exit 3) with its packs indexed and no snapshot, and that the next run
/// uploads the rest only.
fn stopped_then_resumed(
    prefix: &str,
    extra: &[&str],
    delay: Duration,
    min_uploaded: u64,
    stop: impl FnOnce(&Setup, &mut Child),
) {
    let s = setup(Vec::new());
    source(&s.src, 32, 4);
    let dest = s.dest(prefix);
    s.sr_ok(&["init", "--dest", &dest]);
    s.proxy.set_rules(vec![Rule::new(
        "PUT",
        "/data/",
        Fault::Delay(delay),
        u64::MAX,
    )]);
    let mut child = spawn_backup(&s, &dest, extra, None);
    stop(&s, &mut child);
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{r}\n{err}");
    // It stops at a safe point, promptly: the packs in flight and the open ones are
    // uploaded, then the index.
    assert!(started.elapsed() < Duration::from_secs(30), "{r}");
    assert_eq!(r["status"], "incomplete", "{r}");
    assert!(r["snapshot"].is_null(), "{r}");
    let k = &r["repository"];
    let packs = k["packs_written"].as_u64().unwrap();
    assert!(packs >= 1, "{r}");
    let first_upload = k["bytes_uploaded"].as_u64().unwrap();
    assert!(first_upload >= min_uploaded, "{r}");
    assert!(s.objects(prefix, "snapshots").is_empty());
    assert_eq!(s.objects(prefix, "index").len(), 1, "its packs indexed");
    assert!(s.objects(prefix, "locks").is_empty(), "its lock released");
    s.restic_check(prefix);

    s.proxy.set_rules(Vec::new());
    let (code, r2, err) = s.backup(&dest);
    assert_eq!(code, 0, "{r2}\n{err}");
    let second_upload = r2["repository"]["bytes_uploaded"].as_u64().unwrap();
    let total = r2["bytes_total"].as_u64().unwrap();
    // What the first run uploaded is not uploaded again.
    assert!(
        second_upload + first_upload <= total + MIB as u64,
        "second {second_upload} + first {first_upload} > source {total}: {r2}"
    );
    assert!(
        r2["repository"]["dedup_ratio"].as_f64().unwrap() > 0.0,
        "{r2}"
    );
    s.restore_equals_source(&dest, prefix);
    s.restic_check(prefix);
}

#[test]
fn sigterm_stops_the_run_incomplete_and_the_next_reuses_its_packs() {
    // Once the first full pack (16 MiB) is on its way, held 2 s by the proxy: the
    // walk has half the source still to read.
    let delay = Duration::from_secs(2);
    stopped_then_resumed("term", &[], delay, 15 * MIB as u64, |s, child| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while s.proxy.count("PUT", "/data/") == 0 {
            assert!(child.try_wait().unwrap().is_none(), "ended before a pack");
            assert!(Instant::now() < deadline, "no pack in 120 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    });
}

#[test]
fn a_window_stops_the_run_incomplete_and_the_next_reuses_its_packs() {
    // Each pack's upload held 3 s: the window ends before the run could (on a slow
    // machine while the big files are still being read); what was packed by then is
    // uploaded and indexed.
    let delay = Duration::from_secs(3);
    stopped_then_resumed(
        "window",
        &["--window", "3s"],
        delay,
        2 * MIB as u64,
        |_, _| {},
    );
}

/// The run's error names the repository and what was being done, exit 1, well
/// within the retry bound.
fn fails_quickly(s: &Setup, endpoint: &str, dest: &str, password: &str, wanted: &[&str]) {
    let mut args = s.backup_args(dest);
    args.retain(|a| *a != "--json");
    let mut c = s.cmd_at(endpoint, &args);
    c.env("SNAPRING_PASSWORD", password);
    let started = Instant::now();
    let out = c.output().unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for w in wanted {
        assert!(err.contains(w), "{w:?} in {err}");
    }
    assert!(took < Duration::from_secs(20), "{took:?}: {err}");
}

#[test]
fn wrong_password_missing_bucket_and_no_network_fail_quickly() {
    let s = setup(Vec::new());
    source(&s.src, 1, 5);
    let dest = s.dest("p");
    s.sr_ok(&["init", "--dest", &dest]);
    let ep = s.proxy.endpoint();
    fails_quickly(
        &s,
        &ep,
        &dest,
        "not the password",
        &[
            "cannot open the repository: wrong password",
            "s3://backups/p/keys",
        ],
    );
    fails_quickly(
        &s,
        &ep,
        "s3://no-such-bucket/p",
        PASSWORD,
        &[
            "bucket \"no-such-bucket\" does not exist",
            "create it first",
        ],
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    fails_quickly(
        &s,
        &format!("http://127.0.0.1:{port}"),
        &dest,
        PASSWORD,
        &[
            "cannot read s3://backups/p/config",
            "after 6 attempts",
            "Connection refused",
        ],
    );
    // Nothing was written by the failed runs.
    assert!(s.objects("p", "snapshots").is_empty());
    assert!(s.objects("p", "locks").is_empty());
}

/// A run that is alive is not settled: while one run into a repository waits on its
/// first pack upload (held by the proxy), another run with the same catalog
/// completes, and the first one's row is still `running`; released, the first
/// completes.
#[test]
fn a_live_run_is_not_settled_by_another() {
    let s = setup(Vec::new());
    source(&s.src, 2, 6);
    let (a, b) = (s.dest("live-a"), s.dest("live-b"));
    s.sr_ok(&["init", "--dest", &a]);
    s.sr_ok(&["init", "--dest", &b]);
    let catalog = s.t.path().join("state/catalog.db");
    s.proxy
        .set_rules(vec![Rule::new("PUT", "/live-a/data/", Fault::Hold, 1)]);
    let mut first = spawn_backup(&s, &a, &[], Some(&catalog));
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.proxy.count("PUT", "/live-a/data/") == 0 {
        assert!(first.try_wait().unwrap().is_none(), "ended before its pack");
        assert!(Instant::now() < deadline, "no pack in 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = s.cmd(&s.backup_args(&b));
    c.env("SNAPRING_CATALOG", &catalog);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run is still going"
    );
    let runs = catalog_runs(&catalog);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].1, "running", "the live run is left alone: {runs:?}");
    assert_eq!(runs[1].1, "complete", "{runs:?}");
    s.proxy.release();
    assert!(first.wait().unwrap().success());
    let runs = catalog_runs(&catalog);
    assert_eq!(runs[0].1, "complete", "{runs:?}");
}

/// A conditional write whose first try landed but whose answer was lost, retried while
/// the server answers 409 (AWS's ConditionalRequestConflict, while a conditional write
/// of the key is still in flight: here that first try): the shard worker that wrote
/// `published` finds its own bytes there and publishes the run. It took the conflicts
/// for another's `published`, and nobody published (no report, no retention).
#[test]
fn a_conditional_write_that_landed_behind_conflicts_is_taken_as_its_own() {
    let s = setup(Vec::new());
    source(&s.src, 1, 9);
    let dest = s.dest("conflicted");
    s.sr_ok(&["init", "--dest", &dest]);
    s.proxy.set_rules(vec![
        Rule::new("PUT", "/published", Fault::DropResponse, 1),
        Rule::new("PUT", "/published", Fault::Status(409), 5),
    ]);
    let mut args = s.backup_args(&dest);
    args.extend(["--shard", "0/1", "--run-id", "c1"]);
    let (code, out, err) = s.sr(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        s.proxy.served("PUT", "/published"),
        1,
        "{:?}",
        s.proxy.seen()
    );
    assert_eq!(
        s.proxy.count("PUT", "/published"),
        6,
        "{:?}",
        s.proxy.seen()
    );
    assert_eq!(r["finalized"], true, "{r}\n{err}");
    assert!(r["totals"].is_object(), "{r}");
}

/// A restore fetches many files' blobs at once: on S3 each fetch is a round trip, and
/// one at a time a restore of 20k small files from a local server took minutes. Every
/// data read is held by the proxy until 4 are waiting at once; then they all go, and
/// the restore equals the source.
#[test]
fn a_restore_fetches_many_files_at_once() {
    let s = setup(vec![]);
    for i in 0..40 {
        write(
            &s.src.join(format!("d{}/f{i}", i % 4)),
            &pseudo_random(1000 + i, i as u64),
        );
    }
    let dest = s.dest("par");
    s.sr_ok(&["init", "--dest", &dest]);
    let (code, report, err) = s.backup(&dest);
    assert_eq!(code, 0, "{report}\n{err}");
    let (to, mut restore) = s.restore_held(&dest, "/par/data/");
    let mut child = restore.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut most = 0;
    while Instant::now() < deadline && most < 4 {
        most = most.max(s.proxy.count("GET", "/par/data/"));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the restore ended while held"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    s.proxy.release();
    assert!(child.wait().unwrap().success());
    assert!(most >= 4, "at most {most} data reads were waiting at once");
    assert_same_tree(
        &describe(&s.src),
        &describe(&to),
        "restore after held reads",
    );
}

/// A prune started while a restore reads: the restore holds a shared lock (as restic's
/// does), so the prune refuses rather than repack the pack the restore is reading.
/// Before, the prune went ahead, deleted that pack, and the restore failed half-way on
/// a healthy repository (and a verify would have called it damaged).
#[test]
fn a_prune_does_not_pull_packs_from_under_a_restore() {
    let s = setup(vec![]);
    // Two files in one data pack; the second is dropped and its snapshot forgotten, so
    // a prune would repack that pack (the first file's blobs copied, the pack deleted).
    write(&s.src.join("keep"), &pseudo_random(2 * MIB, 1));
    write(&s.src.join("gone"), &pseudo_random(2 * MIB, 2));
    let dest = s.dest("busy");
    s.sr_ok(&["init", "--dest", &dest]);
    let (code, r, err) = s.backup(&dest);
    assert_eq!(code, 0, "{r}\n{err}");
    std::fs::remove_file(s.src.join("gone")).unwrap();
    let (code, r, err) = s.backup(&dest);
    assert_eq!(code, 0, "{r}\n{err}");
    s.sr_ok(&[
        "forget", "--dest", &dest, "--label", "daily", "--retain", "1",
    ]);
    let dry: serde_json::Value =
        serde_json::from_str(&s.sr_ok(&["prune", "--dest", &dest, "--dry-run", "--json"])).unwrap();
    assert_eq!(dry["plan"]["packs_repacked"], 1, "{dry}");

    // The restore's reads of file contents wait at the proxy.
    let (to, mut restore) = s.restore_held(&dest, "/busy/data/");
    let mut restore = restore
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.proxy.count("GET", "/busy/data/") == 0 {
        assert!(restore.try_wait().unwrap().is_none(), "the restore ended");
        assert!(Instant::now() < deadline, "no read of a pack in 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Meanwhile a prune, straight at the server.
    let server = format!("http://127.0.0.1:{}", s.server.port);
    let out = s
        .cmd_at(&server, &["prune", "--dest", &dest, "--json"])
        .output()
        .unwrap();
    let prune_err = String::from_utf8_lossy(&out.stderr).into_owned();
    s.proxy.release();
    let restored = restore.wait_with_output().unwrap();
    assert!(
        restored.status.success(),
        "the restore failed (the prune said: {prune_err}): {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(out.status.code(), Some(75), "prune: {prune_err}");
    assert!(
        prune_err.contains("the repository is locked by pid"),
        "{prune_err}"
    );
    assert_same_tree(&describe(&s.src), &describe(&to), "restore beside a prune");
    // The prune runs once the restore is done.
    let p: serde_json::Value =
        serde_json::from_str(&s.sr_ok(&["prune", "--dest", &dest, "--json"])).unwrap();
    assert_eq!(p["plan"]["packs_repacked"], 1, "{p}");
}

/// A prune reads the kept blobs of a pack it repacks in one ranged request, not one per
/// blob: 400 small files share a pack with a dropped one, and the prune fetches that
/// pack's kept blobs in one GET. Before, it made 400 (over real S3, a pack of 50,000
/// small blobs took 50,000 serial requests). What the prune kept still restores.
#[test]
fn a_prune_reads_a_repacked_packs_blobs_in_one_request() {
    let s = setup(vec![]);
    for i in 0..400 {
        write(&s.src.join(format!("f{i:03}")), &pseudo_random(1000, i));
    }
    write(&s.src.join("gone"), &pseudo_random(1000, 9999));
    let dest = s.dest("spans");
    s.sr_ok(&["init", "--dest", &dest]);
    let (code, r, err) = s.backup(&dest);
    assert_eq!(code, 0, "{r}\n{err}");
    std::fs::remove_file(s.src.join("gone")).unwrap();
    let (code, r, err) = s.backup(&dest);
    assert_eq!(code, 0, "{r}\n{err}");
    s.sr_ok(&[
        "forget", "--dest", &dest, "--label", "daily", "--retain", "1",
    ]);
    let before = s.proxy.count("GET", "/spans/data/");
    let p: serde_json::Value =
        serde_json::from_str(&s.sr_ok(&["prune", "--dest", &dest, "--json"])).unwrap();
    let gets = s.proxy.count("GET", "/spans/data/") - before;
    assert_eq!(p["plan"]["packs_repacked"], 1, "{p}");
    assert!(
        gets <= 2,
        "the prune read the repacked pack's 400 kept blobs in {gets} requests: {p}"
    );
    s.restore_equals_source(&dest, "restore after a prune that repacked");
}

/// A backup through the proxy with `env` set besides: (code, report, stderr, time).
fn backup_env(
    s: &Setup,
    dest: &str,
    env: &[(&str, &str)],
) -> (i32, serde_json::Value, String, Duration) {
    let mut c = s.cmd(&s.backup_args(dest));
    c.envs(env.iter().copied());
    let started = Instant::now();
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// A request's time limit grows with its size (docs/format.md, "Faults and retries"):
/// a pack upload far slower than a flat limit allows completes, and a stalled one
/// still fails in bounded time. Scaled down: a 3 s base (`SNAPRING_S3_TIMEOUT`, 300 s
/// in production) and 128 KiB/s (`SNAPRING_S3_MIN_RATE`); the proxy reads the 3 MiB
/// pack at 384 KiB/s, 8 s, so a flat 3 s limit would fail every attempt.
#[test]
fn a_slow_upload_completes_and_a_stalled_one_fails_in_bounded_time() {
    let s = setup(Vec::new());
    source(&s.src, 3, 11);
    let dest = s.dest("slow");
    s.sr_ok(&["init", "--dest", &dest]);
    s.proxy.set_rules(vec![Rule::new(
        "PUT",
        "/data/",
        Fault::SlowBody(384 << 10),
        u64::MAX,
    )]);
    let scaled = [
        ("SNAPRING_S3_TIMEOUT", "3"),
        ("SNAPRING_S3_MIN_RATE", "131072"),
    ];
    let (code, r, err, took) = backup_env(&s, &dest, &scaled);
    assert_eq!(code, 0, "{r}\n{err}");
    assert_eq!(r["status"], "complete", "{r}");
    assert!(
        took >= Duration::from_secs(7),
        "the upload was slow: {took:?}"
    );
    // Not a retry: each pack was sent once and stored.
    assert_eq!(
        s.proxy.count("PUT", "/data/"),
        s.proxy.served("PUT", "/data/"),
        "{:?}",
        s.proxy.seen()
    );
    s.restore_equals_source(&dest, "after the slow upload");

    // A connection that takes the head and then nothing: each attempt ends at its
    // limit (3 s + 1 MiB / 1 MiB/s here), and the run fails after the 6 attempts.
    write(&s.src.join("big/new"), &pseudo_random(MIB, 12));
    s.proxy
        .set_rules(vec![Rule::new("PUT", "/data/", Fault::Stall, u64::MAX)]);
    let scaled = [
        ("SNAPRING_S3_TIMEOUT", "3"),
        ("SNAPRING_S3_MIN_RATE", "1048576"),
    ];
    let (code, r, err, took) = backup_env(&s, &dest, &scaled);
    s.proxy.release();
    assert_eq!(code, 1, "{r}\n{err}");
    let msg = r["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("cannot write s3://backups/slow/data/"),
        "{msg}"
    );
    assert!(msg.contains("after 6 attempts"), "{msg}");
    assert!(msg.contains("the limit for its size"), "{msg}");
    assert!(took < Duration::from_secs(100), "{took:?}");
    assert_eq!(s.objects("slow", "snapshots").len(), 1);
}

/// Throttling that outlasts the other failures' retries (6 attempts, 6.2 s): 503
/// SlowDown with `Retry-After: 1` on every pack upload for 9 s. The waits follow
/// `Retry-After`, the run completes once the throttling ends.
#[test]
fn sustained_throttling_is_waited_out() {
    let s = setup(Vec::new());
    source(&s.src, 3, 21);
    let dest = s.dest("throttled");
    s.sr_ok(&["init", "--dest", &dest]);
    s.proxy.set_rules(vec![Rule::new(
        "PUT",
        "/data/",
        Fault::SlowDown(1),
        u64::MAX,
    )]);
    let (code, r, err, took) = std::thread::scope(|sc| {
        sc.spawn(|| {
            std::thread::sleep(Duration::from_secs(9));
            s.proxy.set_rules(Vec::new());
        });
        backup_env(&s, &dest, &[])
    });
    assert_eq!(code, 0, "{r}\n{err}");
    assert_eq!(r["status"], "complete", "{r}");
    assert!(took >= Duration::from_secs(9), "{took:?}");
    let seen = s.proxy.seen();
    let throttled: Vec<_> = seen
        .iter()
        .filter(|x| x.fault == Some(Fault::SlowDown(1)))
        .collect();
    // A pack tried more than the 6 times other failures get: 6 throttled, then stored.
    let first = &throttled.first().expect("throttled").path;
    assert!(
        seen.iter().filter(|y| &y.path == first).count() > 6,
        "{seen:?}"
    );
    assert!(throttled.len() >= 6, "{seen:?}");
    // Each pack tried again no sooner than Retry-After asked (the backoff alone starts
    // at 0.1-0.2 s).
    for x in &throttled {
        let next = seen.iter().find(|y| y.path == x.path && y.at > x.at);
        let next = next.unwrap_or_else(|| panic!("{} not tried again: {seen:?}", x.path));
        let gap = next.at - x.at;
        assert!(gap >= Duration::from_millis(950), "{gap:?}: {seen:?}");
    }
    s.restore_equals_source(&dest, "after the throttling");
    s.restic_check("throttled");
}

/// Runs snapring `args` through the proxy with every `method` request whose path has
/// `path` throttled (503 SlowDown, `Retry-After: 30`), sends it SIGTERM half a second
/// after the first such request, and returns its output and how long it took to end
/// after the signal.
fn term_while_throttled(
    s: &Setup,
    args: &[&str],
    method: &'static str,
    path: &'static str,
) -> (std::process::Output, Duration) {
    s.proxy
        .set_rules(vec![Rule::new(method, path, Fault::SlowDown(30), u64::MAX)]);
    let before = s.proxy.count(method, path);
    let mut c = s.cmd(args);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while s.proxy.count(method, path) == before {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{args:?} ended before a {method} {path}"
        );
        assert!(Instant::now() < deadline, "no {method} {path} in 120 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    s.proxy.set_rules(Vec::new());
    (out, took)
}

/// SIGTERM while a pack upload waits out a long `Retry-After` (30 s): the wait ends
/// and the run stops within the other failures' retries, not after the throttling.
#[test]
fn sigterm_while_throttled_stops_the_run_promptly() {
    let s = setup(Vec::new());
    source(&s.src, 3, 31);
    let dest = s.dest("termthrottled");
    s.sr_ok(&["init", "--dest", &dest]);
    let (out, took) = term_while_throttled(&s, &s.backup_args(&dest), "PUT", "/data/");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let err = String::from_utf8_lossy(&out.stderr);
    // Stopped (3) with its packs indexed, or failed (1) when the pack could not be
    // stored within the retries a stopping run has left; never a snapshot.
    assert!(
        matches!(out.status.code(), Some(1 | 3)),
        "{:?}: {r}\n{err}",
        out.status
    );
    assert!(took < Duration::from_secs(25), "{took:?}: {r}\n{err}");
    assert!(s.objects("termthrottled", "snapshots").is_empty());
    assert!(
        s.objects("termthrottled", "locks").is_empty(),
        "its lock released"
    );
}

/// `term_while_throttled` on `args`: the command stops promptly, `incomplete` (3),
/// saying it was interrupted and what it leaves (`left`), with its lock released.
/// Before, restore, prune, forget and init had no signal handling: SIGTERM killed them
/// where they were (no message, no exit code, a lock left behind).
fn stops_promptly_when_throttled(
    s: &Setup,
    prefix: &str,
    args: &[&str],
    method: &'static str,
    path: &'static str,
    left: &str,
) {
    let (out, took) = term_while_throttled(s, args, method, path);
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(3), "{args:?}: {stdout}\n{err}");
    assert!(took < Duration::from_secs(25), "{args:?}: {took:?}\n{err}");
    assert!(err.contains("interrupted"), "{args:?}: {err}");
    assert!(err.contains(left), "{args:?}: {err}");
    assert!(s.objects(prefix, "locks").is_empty(), "{args:?}: lock left");
}

/// SIGTERM while restore, forget or prune waits out throttling: each stops within
/// the other failures' retries, exit 3, and loses nothing (forget removed no snapshot,
/// prune no pack; restic checks the repository, and it restores).
#[test]
fn sigterm_while_throttled_stops_restore_prune_and_forget_promptly() {
    let s = setup(Vec::new());
    source(&s.src, 3, 41);
    let dest = s.dest("termops");
    s.sr_ok(&["init", "--dest", &dest]);
    for i in 0..2 {
        if i == 1 {
            write(&s.src.join("small/s0"), b"changed\n");
        }
        let (code, r, err) = s.backup(&dest);
        assert_eq!(code, 0, "{r}\n{err}");
    }
    let snapshots = s.objects("termops", "snapshots");
    let packs = s.objects("termops", "data");
    assert_eq!(snapshots.len(), 2);
    let to = s.t.path().join("restored-term");
    let restore = [
        "restore",
        "--dest",
        &dest,
        "latest",
        "--to",
        to.to_str().unwrap(),
    ];
    stops_promptly_when_throttled(&s, "termops", &restore, "GET", "/data/", "the restore into");
    let forget = [
        "forget", "--dest", &dest, "--label", "daily", "--retain", "1",
    ];
    stops_promptly_when_throttled(
        &s,
        "termops",
        &forget,
        "DELETE",
        "/snapshots/",
        "the snapshots not removed yet are kept",
    );
    assert_eq!(s.objects("termops", "snapshots"), snapshots);
    // The older snapshot forgotten, prune has packs to repack (its trees are in the
    // local cache, so the first reads from `data/` are the repacking's).
    s.sr_ok(&forget);
    let prune = ["prune", "--dest", &dest];
    stops_promptly_when_throttled(
        &s,
        "termops",
        &prune,
        "GET",
        "/data/",
        "prune again to finish",
    );
    let now = s.objects("termops", "data");
    assert!(packs.iter().all(|p| now.contains(p)), "{packs:?} {now:?}");
    s.restic_check("termops");
    s.restore_equals_source(&dest, "after the interrupted commands");
}

/// SIGTERM while init waits out throttling: it stops promptly, exit 3, with no
/// repository (and no stray key file) left, and a later init succeeds.
#[test]
fn sigterm_while_throttled_stops_init_promptly() {
    let s = setup(Vec::new());
    let dest = s.dest("terminit");
    stops_promptly_when_throttled(
        &s,
        "terminit",
        &["init", "--dest", &dest],
        "PUT",
        "/keys/",
        "no repository was created",
    );
    let root = s.t.path().join("s3").join(BUCKET).join("terminit");
    assert!(!root.join("config").exists());
    assert!(s.objects("terminit", "keys").is_empty());
    s.sr_ok(&["init", "--dest", &dest]);
    assert_eq!(s.objects("terminit", "keys").len(), 1);
}

/// `repair index` while the server fails every read of a pack (HTTP 500, past the
/// retries): the check of the snapshots stops with the error (exit 1) rather than name
/// a snapshot damaged for a tree that did not read for another reason than damage; once
/// the fault heals, the repair finds every snapshot whole.
#[test]
fn repair_index_stops_on_a_server_error_rather_than_name_snapshots_damaged() {
    let s = setup(Vec::new());
    source(&s.src, 1, 3);
    let dest = s.dest("repairfault");
    s.sr_ok(&["init", "--dest", &dest]);
    let (code, r, err) = s.backup(&dest);
    assert_eq!(code, 0, "{r}\n{err}");
    // Every pack is of the size the index implies: only the snapshots' check reads one.
    s.proxy.set_rules(vec![Rule::new(
        "GET",
        "/data/",
        Fault::Status(500),
        u64::MAX,
    )]);
    let out = s
        .cmd(&["repair", "index", "--dest", &dest, "--json"])
        .env("SNAPRING_CACHE", "off")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("HTTP 500"), "{stderr}");
    assert!(
        stderr.contains("the check of the snapshots against the new index stopped"),
        "{stderr}"
    );
    assert!(!stdout.contains("damaged_snapshots"), "{stdout}");
    assert!(
        s.objects("repairfault", "locks").is_empty(),
        "lock released"
    );
    s.proxy.set_rules(Vec::new());
    let out = s
        .cmd(&["repair", "index", "--dest", &dest, "--json"])
        .env("SNAPRING_CACHE", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["damaged_snapshots"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["index_rewritten"], false, "{r}");
}

/// Removes every lock file of the repository under `prefix` from the server's disk (as
/// `restic unlock --remove-all` would).
fn remove_locks(s: &Setup, prefix: &str) {
    let dir =
        s.t.path()
            .join("s3")
            .join(BUCKET)
            .join(prefix)
            .join("locks");
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

/// A backup whose lock is removed while its packs upload, and a prune that runs
/// meanwhile (it removes the packs no index names yet: this run's): the run fails
/// saying the lock was lost and writes no index naming those packs, so the next run
/// stores their data again and its snapshot restores (an index naming the removed
/// packs made the next run take their blobs for stored: a `complete` snapshot that did
/// not restore).
#[test]
fn a_lock_lost_to_a_prune_leaves_no_index_naming_the_removed_packs() {
    let s = setup(Vec::new());
    source(&s.src, 40, 11);
    let dest = s.dest("lost");
    s.sr_ok(&["init", "--dest", &dest]);
    // The first pack goes through; the others wait until the prune is done.
    s.proxy.set_rules(vec![
        Rule::new("PUT", "/data/", Fault::Delay(Duration::from_millis(1)), 1),
        Rule::new("PUT", "/data/", Fault::Hold, u64::MAX),
    ]);
    let mut child = spawn_backup(&s, &dest, &[], None);
    wait_for_packs(&s, 1, &mut child);
    remove_locks(&s, "lost");
    let direct = format!("http://127.0.0.1:{}", s.server.port);
    let out = s
        .cmd_at(&direct, &["prune", "--dest", &dest])
        .output()
        .unwrap();
    assert!(out.status.success(), "prune: {out:?}");
    assert!(
        s.objects("lost", "data").is_empty(),
        "the prune removed the backup's unindexed pack"
    );
    s.proxy.set_rules(Vec::new());
    s.proxy.release();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("lock was lost"), "{err}");
    assert!(s.objects("lost", "snapshots").is_empty());
    assert!(
        s.objects("lost", "index").is_empty(),
        "an index naming packs the prune removed"
    );

    let (code, r, err) = s.backup(&dest);
    assert_eq!(code, 0, "{r}\n{err}");
    assert_eq!(r["status"], "complete", "{r}");
    assert!(
        r["repository"]["bytes_uploaded"].as_u64().unwrap() >= 40 * MIB as u64,
        "the next run stores the data again: {r}"
    );
    s.restore_equals_source(&dest, "the run after a lost lock");
    s.restic_check("lost");
}

/// The lock's DELETE refused for good after the snapshot was written (a key that may
/// not delete, or a fault past the retries): the snapshot is published, so the run
/// says so (`complete`, exit 0, its id) with a warning that the lock file was left,
/// not `failed` with no snapshot.
#[test]
fn a_lock_that_cannot_be_deleted_after_the_snapshot_is_a_warning() {
    let s = setup(Vec::new());
    source(&s.src, 1, 12);
    let dest = s.dest("undeletable");
    s.sr_ok(&["init", "--dest", &dest]);
    s.proxy.set_rules(vec![Rule::new(
        "DELETE",
        "/locks/",
        Fault::Status(403),
        u64::MAX,
    )]);
    let (code, r, err) = s.backup(&dest);
    assert_eq!(code, 0, "{r}\n{err}");
    assert_eq!(r["status"], "complete", "{r}");
    let snaps = s.objects("undeletable", "snapshots");
    assert_eq!(snaps.len(), 1);
    assert_eq!(r["repository"]["snapshot_id"], snaps[0].as_str(), "{r}");
    let warned = r["warnings"].to_string();
    assert!(warned.contains("lock"), "{r}");
    assert_eq!(s.objects("undeletable", "locks").len(), 1, "the lock left");
    s.proxy.set_rules(Vec::new());
    s.restore_equals_source(&dest, "the run whose lock was left");
}

/// A shard worker's `backup --json --shard 0/1 --run-id RUN` through the proxy (or at
/// `endpoint`): (code, stdout, stderr).
fn shard_worker(s: &Setup, endpoint: &str, dest: &str, run: &str) -> (i32, String, String) {
    let mut args = s.backup_args(dest);
    args.extend(["--shard", "0/1", "--run-id", run]);
    let out = s.cmd_at(endpoint, &args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An S3 outage that outlasts the retries (connections dropped, HTTP 500, nothing
/// listening on the port) is worth a retry: the shard worker exits 75, saying the
/// repository could not be reached and that a rerun resumes, not 1 (which the
/// documented podFailurePolicy takes for `FailIndex`); once the storage is back, the
/// rerun with the same run id publishes the run. A refusal (403 AccessDenied) and a
/// full disk (507) still exit 1.
#[test]
fn an_outage_past_the_retries_makes_a_shard_worker_exit_75_and_its_rerun_publishes() {
    let s = setup(Vec::new());
    source(&s.src, 2, 13);
    let dest = s.dest("outage");
    s.sr_ok(&["init", "--dest", &dest]);
    let ep = s.proxy.endpoint();
    let retried = |fault: Fault, path: &'static str, what: &str| {
        s.proxy
            .set_rules(vec![Rule::new("PUT", path, fault, u64::MAX)]);
        let (code, out, err) = shard_worker(&s, &ep, &dest, "o1");
        assert_eq!(code, 75, "{what}: {out}\n{err}");
        assert!(
            err.contains("the repository could not be reached"),
            "{what}: {err}"
        );
        assert!(err.contains("after 6 attempts"), "{what}: {err}");
        assert!(err.contains("same --run-id"), "{what}: {err}");
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["exit_code"], 75, "{what}: {r}");
    };
    retried(Fault::DropRequest, "/data/", "dropped connections");
    retried(Fault::Status(500), "/snapring/", "HTTP 500");
    // Nothing listens on the port (the server down): the same.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (code, out, err) = shard_worker(&s, &format!("http://127.0.0.1:{port}"), &dest, "o1");
    assert_eq!(code, 75, "{out}\n{err}");
    assert!(err.contains("Connection refused"), "{err}");
    assert!(err.contains("the repository could not be reached"), "{err}");

    // Permanent: exit 1.
    for (fault, what) in [(403, "AccessDenied"), (507, "InsufficientStorage")] {
        s.proxy.set_rules(vec![Rule::new(
            "PUT",
            "/data/",
            Fault::Status(fault),
            u64::MAX,
        )]);
        let (code, out, err) = shard_worker(&s, &ep, &dest, "o1");
        assert_eq!(code, 1, "{what}: {out}\n{err}");
        assert!(err.contains(what), "{err}");
        assert!(!err.contains("could not be reached"), "{err}");
    }

    s.proxy.set_rules(Vec::new());
    let (code, out, err) = shard_worker(&s, &ep, &dest, "o1");
    assert_eq!(code, 0, "{out}\n{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["finalized"], true, "{r}\n{err}");
    assert_eq!(s.objects("outage", "snapshots").len(), 1);
    s.restic_check("outage");
    s.restore_equals_source(&dest, "the run resumed after the outage");
}

/// A shard worker stopped (SIGTERM) while a request to the repository hangs (the
/// endpoint takes the commit of a built unit and answers nothing): the request is
/// given up within the stop's grace and the worker ends `incomplete`, exit 3, as a
/// stopped worker does with the endpoint answering (and a single-node backup stopped
/// during the same stall), not 1 (`interrupted` taken for a failure, which the
/// documented podFailurePolicy takes for `FailIndex`). Its unit is left to a rerun,
/// which publishes the run.
#[test]
fn a_shard_worker_stopped_while_a_request_hangs_exits_3_and_its_rerun_publishes() {
    let s = setup(Vec::new());
    source(&s.src, 2, 17);
    let dest = s.dest("stophang");
    s.sr_ok(&["init", "--dest", &dest]);
    for sig in [rustix::process::Signal::TERM, rustix::process::Signal::INT] {
        // The unit's commit (`done/`) hangs; before it, its build went through.
        s.proxy
            .set_rules(vec![Rule::new("PUT", "/done/", Fault::Stall, u64::MAX)]);
        let before = s.proxy.count("PUT", "/done/");
        let mut args = s.backup_args(&dest);
        args.extend(["--shard", "0/1", "--run-id", "h1"]);
        let mut c = s.cmd(&args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while s.proxy.count("PUT", "/done/") == before {
            assert!(
                child.try_wait().unwrap().is_none(),
                "ended before its commit"
            );
            assert!(Instant::now() < deadline, "no commit in 120 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(500));
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
        let started = Instant::now();
        let out = child.wait_with_output().unwrap();
        let took = started.elapsed();
        s.proxy.set_rules(Vec::new());
        let (stdout, err) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(3), "{sig:?}: {stdout}\n{err}");
        assert!(took < Duration::from_secs(25), "{sig:?}: {took:?}\n{err}");
        let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(r["status"], "incomplete", "{sig:?}: {r}\n{err}");
        assert_eq!(r["finalized"], false, "{sig:?}: {r}");
        assert_eq!(r["units"].as_array().map(Vec::len), Some(0), "{sig:?}: {r}");
        // The units whose commits hung (one per lane).
        assert!(
            r["interrupted_units"]
                .as_array()
                .is_some_and(|u| !u.is_empty()),
            "{sig:?}: {r}"
        );
        assert!(s.objects("stophang", "snapshots").is_empty());
    }
    // Text output: the worker's own line, as when stopped between two requests.
    s.proxy
        .set_rules(vec![Rule::new("PUT", "/done/", Fault::Stall, u64::MAX)]);
    let before = s.proxy.count("PUT", "/done/");
    let args = [
        "backup",
        "--source",
        s.src.to_str().unwrap(),
        "--dest",
        &dest,
        "--shard",
        "0/1",
        "--run-id",
        "h1",
    ];
    let mut c = s.cmd(&args);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    while s.proxy.count("PUT", "/done/") == before {
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended before its commit"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = child.wait_with_output().unwrap();
    s.proxy.set_rules(Vec::new());
    // The stalled connections let go.
    s.proxy.release();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains("worker 0/1 of run h1: incomplete; units built: 0"),
        "{stdout}"
    );

    let (code, out, err) = shard_worker(&s, &s.proxy.endpoint(), &dest, "h1");
    assert_eq!(code, 0, "{out}\n{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["finalized"], true, "{r}\n{err}");
    s.restic_check("stophang");
    s.restore_equals_source(&dest, "the run resumed after the stop");
}

/// A restore reads the files' blobs by pack, a batch of files at once, nearby blobs in
/// one ranged read (docs/performance.md): 2,000 small files are far fewer requests than
/// files (one GET each took 142 s for 30,000 files against a local server), and the
/// restored tree equals the source.
#[test]
fn a_restore_reads_many_small_files_in_few_requests() {
    const N: usize = 2000;
    let s = setup(vec![]);
    for i in 0..N {
        write(
            &s.src.join(format!("d{}/f{i:04}", i / 100)),
            &pseudo_random(200 + (i * 37) % 3000, i as u64),
        );
    }
    let dest = s.dest("many");
    s.sr_ok(&["init", "--dest", &dest]);
    let (code, r, err) = s.backup(&dest);
    assert_eq!(code, 0, "{r}\n{err}");
    let before = s.proxy.count("GET", "/many/data/");
    s.restore_equals_source(&dest, "restore of 2,000 small files");
    let gets = s.proxy.count("GET", "/many/data/") - before;
    // Batches of up to 1,024 files (1, 2, 4, ... from the start), each pack's blobs of
    // a batch in one read: a dozen batches, a read or two each. Batches of 32 files
    // held open made 79; one read per blob, 2,000.
    assert!(
        gets <= 30,
        "the restore of {N} small files read their blobs in {gets} requests"
    );
}

/// A large file's blobs past its batch's first 8 MiB are read several at once (spans of
/// its packs, each decrypted and checked by the thread that read it, written at its
/// place), not one blob after the other: a 2 GiB file took 1,371 requests one at a
/// time, 76 s from a local S3 server, where restic took 9 s. Each data GET is delayed,
/// so reads that overlap are seen overlapping.
#[test]
fn a_restore_reads_the_blobs_of_one_large_file_several_at_once() {
    let s = setup(vec![Rule::new(
        "GET",
        "/big/data/",
        Fault::Delay(Duration::from_millis(150)),
        u64::MAX,
    )]);
    // About 40 blobs in 4 packs; 20 MiB of zeros in the middle: the chunker's largest
    // blob of zeros twice (holes), and more.
    let mut data = pseudo_random(24 << 20, 35);
    data.extend(std::iter::repeat_n(0u8, 20 << 20));
    data.extend(pseudo_random(13 << 20, 36));
    write(&s.src.join("big"), &data);
    let dest = s.dest("big");
    s.sr_ok(&["init", "--dest", &dest]);
    let (code, r, err) = s.backup(&dest);
    assert_eq!(code, 0, "{r}\n{err}");
    let before = s.proxy.count("GET", "/big/data/");
    let started = Instant::now();
    let to = s.t.path().join("restored-big");
    s.sr_ok(&restore_latest(&dest, &to));
    assert_same_tree(
        &describe(&s.src),
        &describe(&to),
        "restore of one 57 MiB file",
    );
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(to.join("big")).unwrap();
        assert!(
            m.blocks() * 512 <= (41 << 20),
            "its 16 MiB of zeros are holes: {} bytes on disk",
            m.blocks() * 512
        );
    }
    let took = started.elapsed();
    let gets = s.proxy.count("GET", "/big/data/") - before;
    let at_once = s.proxy.most_at_once("GET", "/big/data/");
    // One blob at a time: about 35 GETs, one at a time.
    assert!(
        at_once >= 3,
        "the restore of one large file read its blobs {at_once} at a time \
         ({gets} GETs, {took:?})"
    );
}
