//! restic repositories on S3 (`--dest s3://BUCKET/PREFIX`, docs/format.md), against a
//! real S3 server started in the test (s3s-fs, in-process, on 127.0.0.1, from
//! tests/common/s3.rs; restic_faults puts a faulty proxy in front of it): init, backup,
//! incremental backup, list, restore equal to the source; the wrong password and a
//! missing bucket fail clearly; `config` is created conditionally; 503s are retried;
//! `--retain` and `prune` thin the repository out over S3; an endpoint that never answers
//! fails each attempt in the answer bound and does not hold a stopped run (SIGTERM).
//! Conformance: Debian's `restic` checks (`check --read-data`) and restores what snapring
//! wrote to S3 (skipped with a printed line when `restic` is not installed).
//! With `SNAPRING_TEST_S3_ENDPOINT=http://HOST:PORT` the same tests run against that
//! server instead (`.ci/run` runs them a second time against moto's); the two that need
//! the in-process server's fault injection or its view of the headers are skipped.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::restic::*;
use common::*;

use s3::{ACCESS_KEY, SECRET_KEY};
const BUCKET: &str = "backups";

/// An s3s-fs server on 127.0.0.1, serving the directory `root` (a bucket is a
/// directory in it), until dropped. With `Fault` every Nth request is answered 503 or
/// has its connection dropped instead of being served.
struct Server {
    port: u16,
    _runtime: tokio::runtime::Runtime,
    pub requests: Arc<AtomicU64>,
    /// The uploads served: (path, x-amz-server-side-encryption, x-amz-storage-class).
    pub puts: Arc<Mutex<Vec<Put>>>,
    /// The paths of the GET requests served.
    pub gets: Arc<Mutex<Vec<String>>>,
    /// The GET requests served with a `Range` header: (path, range).
    pub ranges: Arc<Mutex<Vec<(String, String)>>>,
    /// While set, every GET of a path ending so is answered 500 (a server failing for
    /// one object, after the retries).
    pub fail_gets: Arc<Mutex<Option<String>>>,
    /// While set, every GET of a path ending so (the first) is answered with that
    /// status and S3 error code: 403 AccessDenied (a policy refusing the object), 404
    /// NoSuchBucket (the bucket gone).
    pub deny_gets: Arc<Mutex<Option<Denial>>>,
}

/// A path's end, and the status and S3 error code a GET of it is answered.
type Denial = (String, u16, &'static str);

type Put = (String, Option<String>, Option<String>);

/// What the server does to every Nth request (N = the number; 0: nothing).
#[derive(Clone, Copy)]
enum Fault {
    /// Answers 503 Slow Down, as an overloaded S3 does.
    Status503(u64),
    /// Closes the connection without an answer.
    Drop(u64),
    /// Ignores `If-None-Match` on PUT (no conditional writes).
    NoConditionalWrites,
    /// Lists `snapshots/` as a server that speaks only the older ListObjects: pages of
    /// this many keys, cut with no `NextContinuationToken` (`s3::Fs`).
    V1Listing(i32),
}

const NONE: Fault = Fault::Status503(0);

/// Wraps the S3 service to inject a `Fault`.
#[derive(Clone)]
struct Flaky {
    inner: s3s::service::S3Service,
    fault: Fault,
    count: Arc<AtomicU64>,
    puts: Arc<Mutex<Vec<Put>>>,
    gets: Arc<Mutex<Vec<String>>>,
    ranges: Arc<Mutex<Vec<(String, String)>>>,
    fail_gets: Arc<Mutex<Option<String>>>,
    deny_gets: Arc<Mutex<Option<Denial>>>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Flaky {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        let hit = |every: u64| every > 0 && n.is_multiple_of(every);
        if let Fault::Drop(every) = self.fault
            && hit(every)
        {
            // An error from the service makes hyper close the connection unanswered.
            return Box::pin(async move { Err(s3s::HttpError::new("test fault: dropped".into())) });
        }
        if let Fault::Status503(every) = self.fault
            && hit(every)
        {
            let body = "<Error><Code>SlowDown</Code><Message>test fault</Message></Error>";
            let resp = hyper::Response::builder()
                .status(503)
                .body(s3s::Body::from(body.to_string()))
                .unwrap();
            return Box::pin(async move { Ok(resp) });
        }
        if req.method() == hyper::Method::PUT {
            let h = |name: &str| {
                req.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_string())
            };
            let put = (
                req.uri().path().to_string(),
                h("x-amz-server-side-encryption"),
                h("x-amz-storage-class"),
            );
            self.puts.lock().unwrap().push(put);
        }
        if req.method() == hyper::Method::GET {
            let path = req.uri().path().to_string();
            let fail = self.fail_gets.lock().unwrap().clone();
            if fail.is_some_and(|end| path.ends_with(&end)) {
                let body = "<Error><Code>InternalError</Code><Message>test fault</Message></Error>";
                let resp = hyper::Response::builder()
                    .status(500)
                    .body(s3s::Body::from(body.to_string()))
                    .unwrap();
                return Box::pin(async move { Ok(resp) });
            }
            let deny = self.deny_gets.lock().unwrap().clone();
            if let Some((_, status, code)) = deny.filter(|(end, ..)| path.ends_with(end)) {
                let body = format!("<Error><Code>{code}</Code><Message>test</Message></Error>");
                let resp = hyper::Response::builder()
                    .status(status)
                    .body(s3s::Body::from(body))
                    .unwrap();
                return Box::pin(async move { Ok(resp) });
            }
            if let Some(r) = req.headers().get("range") {
                let r = r.to_str().unwrap().to_string();
                self.ranges.lock().unwrap().push((path.clone(), r));
            }
            self.gets.lock().unwrap().push(path);
        }
        hyper::service::Service::call(&self.inner, req)
    }
}

fn start_server(root: &Path, fault: Fault) -> Server {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let puts = Arc::new(Mutex::new(Vec::new()));
    let gets = Arc::new(Mutex::new(Vec::new()));
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let fail_gets = Arc::new(Mutex::new(None));
    let deny_gets = Arc::new(Mutex::new(None));
    let service = Flaky {
        inner: s3::service_listing(
            root,
            matches!(fault, Fault::NoConditionalWrites),
            match fault {
                Fault::V1Listing(n) => Some(n),
                _ => None,
            },
        ),
        fault,
        count: count.clone(),
        puts: puts.clone(),
        gets: gets.clone(),
        ranges: ranges.clone(),
        fail_gets: fail_gets.clone(),
        deny_gets: deny_gets.clone(),
    };
    let port = s3::serve_http(&runtime, service);
    Server {
        port,
        _runtime: runtime,
        requests: count,
        puts,
        gets,
        ranges,
        fail_gets,
        deny_gets,
    }
}

/// A server with the bucket made, its temp dir, and a source dir.
struct Setup {
    /// The in-process s3s-fs server, or `None` with `SNAPRING_TEST_S3_ENDPOINT`.
    server: Option<Server>,
    /// `SNAPRING_TEST_S3_ENDPOINT`: another S3 implementation (`.ci/run` starts moto's).
    external: Option<String>,
    t: tempfile::TempDir,
    /// More environment for snapring.
    extra_env: Vec<(String, String)>,
}

/// The S3 server another implementation runs, if `SNAPRING_TEST_S3_ENDPOINT` names one
/// (`http://127.0.0.1:PORT`; it must accept the test's keys, as moto's server does).
fn external_endpoint() -> Option<String> {
    std::env::var("SNAPRING_TEST_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
}

/// With an external server, a test that needs the in-process one (its faults, the
/// headers it saw) says so and is skipped.
fn needs_in_process_server(what: &str) -> bool {
    if let Some(e) = external_endpoint() {
        eprintln!("SKIPPED against {e}: {what} needs the in-process s3s-fs server");
        return true;
    }
    false
}

fn setup(fault: Fault) -> Setup {
    let t = tempfile::tempdir().unwrap();
    if let Some(endpoint) = external_endpoint() {
        // The bucket, made once per server (made again, it is already ours): a plain
        // unsigned PUT, which moto's server takes.
        use std::io::{Read, Write};
        let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
        let mut c = std::net::TcpStream::connect(host).expect("reach SNAPRING_TEST_S3_ENDPOINT");
        write!(
            c,
            "PUT /{BUCKET} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.contains("BucketAlreadyOwnedByYou"),
            "creating the bucket at {endpoint}: {answer}"
        );
        return Setup {
            server: None,
            external: Some(endpoint),
            t,
            extra_env: Vec::new(),
        };
    }
    let root = t.path().join("s3");
    std::fs::create_dir_all(root.join(BUCKET)).unwrap();
    let server = start_server(&root, fault);
    Setup {
        server: Some(server),
        external: None,
        t,
        extra_env: Vec::new(),
    }
}

impl Setup {
    fn endpoint(&self) -> String {
        match (&self.external, &self.server) {
            (Some(e), _) => e.clone(),
            (None, Some(server)) => format!("http://127.0.0.1:{}", server.port),
            (None, None) => unreachable!("a setup has a server"),
        }
    }

    /// The in-process server (tests that need it are skipped against another).
    fn server(&self) -> &Server {
        self.server.as_ref().expect("the in-process server")
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("SNAPRING_S3_PATH_STYLE".into(), "true".into()),
            // No credentials or config file of the machine's user.
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/nonexistent".into()),
            ("AWS_CONFIG_FILE".into(), "/nonexistent".into()),
        ];
        env.extend(self.extra_env.iter().cloned());
        env
    }

    /// snapring with `args`, the S3 settings, the test's password and no catalog, for a
    /// test to add its own environment to.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .envs(self.env())
            .env("SNAPRING_PASSWORD", PASSWORD)
            .env("SNAPRING_CATALOG", "off");
        c
    }

    /// Runs snapring with the S3 settings and `password`; returns (code, stdout, stderr).
    fn sr_with(&self, args: &[&str], password: &str) -> (i32, String, String) {
        let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let env = self.env();
        let mut env: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.push(("SNAPRING_PASSWORD", password));
        let out = snapring(&a, &env);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn sr_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.sr_with(args, PASSWORD);
        assert_eq!(code, 0, "snapring {args:?}: {out}\n{err}");
        out
    }

    fn backup(&self, src: &Path, dest: &str) -> serde_json::Value {
        let out = self.sr_ok(&[
            "backup",
            "--source",
            src.to_str().unwrap(),
            "--dest",
            dest,
            "--json",
        ]);
        serde_json::from_str(&out).unwrap()
    }

    /// The objects the server holds under the bucket's `prefix`, relative paths: the
    /// in-process server's files, or an external server's listing of each kind.
    fn objects(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.external.is_some() {
            use snapring::restic::backend::{Backend, Kind, rel_path};
            let b = lib_s3(self, prefix);
            if b.read_config().unwrap().is_some() {
                out.push("config".to_string());
            }
            for kind in [
                Kind::Key,
                Kind::Pack,
                Kind::Index,
                Kind::Snapshot,
                Kind::Lock,
            ] {
                for id in b.list(kind).unwrap() {
                    out.push(rel_path(kind, &id));
                }
            }
        } else {
            let root = self.t.path().join("s3").join(BUCKET).join(prefix);
            walk(&root, &root, &mut out);
        }
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// A source with multi-chunk files, small files, a symlink, a hard link, a subdirectory.
fn source(src: &Path) {
    let mut x = 7u64;
    let random: Vec<u8> = (0..(3 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as u8
        })
        .collect();
    write(&src.join("big/random"), &random);
    write(&src.join("big/zeros"), &vec![0u8; 2 << 20]);
    for i in 0..20 {
        write(
            &src.join(format!("small/f{i}")),
            format!("file {i}\n").as_bytes(),
        );
    }
    write(&src.join("names/with space & <amp>"), b"odd name");
    std::os::unix::fs::symlink("../small/f1", src.join("names/link")).unwrap();
    std::fs::hard_link(src.join("small/f2"), src.join("names/hard")).unwrap();
    std::fs::create_dir_all(src.join("empty/dir")).unwrap();
}

#[test]
fn init_backup_incremental_list_restore_on_s3() {
    let s = setup(NONE);
    let src = s.t.path().join("src");
    source(&src);
    let dest = format!("s3://{BUCKET}/repos/one");
    let out = s.sr_ok(&["init", "--dest", &dest]);
    assert!(out.contains("created restic repository"), "{out}");
    let objs = s.objects("repos/one");
    assert!(objs.contains(&"config".to_string()), "{objs:?}");
    assert_eq!(objs.iter().filter(|o| o.starts_with("keys/")).count(), 1);

    let r1 = s.backup(&src, &dest);
    assert_eq!(r1["status"], "complete", "{r1}");
    assert!(
        r1["repository"]["packs_written"].as_u64().unwrap() >= 1,
        "{r1}"
    );
    assert!(
        s.objects("repos/one")
            .iter()
            .any(|o| o.starts_with("data/"))
    );

    // Incremental: one file changed; the rest is not read again.
    write(&src.join("small/f3"), b"changed\n");
    let r2 = s.backup(&src, &dest);
    assert_eq!(r2["status"], "complete", "{r2}");
    assert!(
        r2["repository"]["bytes_read"].as_u64().unwrap() < 100,
        "{r2}"
    );
    assert!(
        r2["repository"]["files_unchanged"].as_u64().unwrap() >= 20,
        "{r2}"
    );

    let list: serde_json::Value =
        serde_json::from_str(&s.sr_ok(&["list", "--dest", &dest, "--json"])).unwrap();
    let snaps = list.as_array().unwrap();
    assert_eq!(snaps.len(), 2, "{list}");
    assert_eq!(snaps[1]["id"], r2["snapshot"], "{list}");
    assert!(
        s.objects("repos/one")
            .iter()
            .all(|o| !o.starts_with("locks/"))
    );

    let to = s.t.path().join("restored");
    s.sr_ok(&restore_latest(&dest, &to));
    assert_same_tree(&describe(&src), &describe(&to), "restore from S3");
}

/// The parent snapshot's trees come from the local cache (`$XDG_CACHE_HOME/snapring`):
/// an incremental backup reads no tree blob (no pack GET) from the server. Deleted or
/// damaged, the cache costs only reads: the trees come from the server again and the
/// snapshot restores equal to the source.
#[test]
fn parent_trees_come_from_the_local_cache() {
    if needs_in_process_server("counting the GETs") {
        return;
    }
    let mut s = setup(NONE);
    let cache = s.t.path().join("cache");
    s.extra_env
        .push(("XDG_CACHE_HOME".into(), cache.to_str().unwrap().into()));
    let src = s.t.path().join("src");
    source(&src);
    for i in 0..5 {
        write(&src.join(format!("deep/d{i}/e/f")), b"nested\n");
    }
    let dest = format!("s3://{BUCKET}/cached");
    s.sr_ok(&["init", "--dest", &dest]);
    let pack_gets = || {
        let gets = s.server().gets.lock().unwrap();
        let data = format!("/{BUCKET}/cached/data/");
        gets.iter().filter(|p| p.starts_with(&data)).count()
    };
    let backup = |what: &str, n: u32| {
        write(&src.join("small/f3"), format!("change {n}\n").as_bytes());
        s.server().gets.lock().unwrap().clear();
        let r = s.backup(&src, &dest);
        assert_eq!(r["status"], "complete", "{what}: {r}");
        assert!(
            n == 0 || r["repository"]["files_unchanged"].as_u64().unwrap() >= 20,
            "{what}: {r}"
        );
        let read = pack_gets();
        let to = s.t.path().join(format!("restored-{n}"));
        s.sr_ok(&restore_latest(&dest, &to));
        assert_same_tree(&describe(&src), &describe(&to), what);
        read
    };
    backup("full", 0);
    let trees = s.t.path().join("cache/snapring/restic");
    assert!(trees.is_dir(), "no cache under {}", trees.display());
    assert_eq!(
        backup("first incremental", 1),
        0,
        "trees read from the server"
    );
    assert_eq!(
        backup("second incremental", 2),
        0,
        "trees read from the server"
    );

    // Deleted: read from the server again (and cached again).
    std::fs::remove_dir_all(&trees).unwrap();
    assert!(backup("without the cache", 3) > 0);
    assert_eq!(backup("cache filled again", 4), 0);

    // Every entry damaged: each is found out and read from the server.
    let mut entries = Vec::new();
    walk(&trees, &trees, &mut entries);
    let entries: Vec<_> = entries.iter().filter(|e| e.contains("trees/")).collect();
    assert!(entries.len() >= 8, "{entries:?}");
    for e in &entries {
        let p = trees.join(e);
        let mut b = std::fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x40;
        std::fs::write(&p, b).unwrap();
    }
    assert!(backup("damaged cache", 5) > 0);
    assert_eq!(backup("cache repaired", 6), 0);
}

#[test]
fn wrong_password_and_missing_bucket_fail_clearly() {
    let s = setup(NONE);
    let dest = format!("s3://{BUCKET}/p");
    s.sr_ok(&["init", "--dest", &dest]);
    let (code, _, err) = s.sr_with(&["list", "--dest", &dest], "not the password");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("wrong password"), "{err}");

    let missing = "s3://no-such-bucket/p";
    for args in [
        vec!["init", "--dest", missing],
        vec!["list", "--dest", missing],
    ] {
        let (code, _, err) = s.sr_with(&args, PASSWORD);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("bucket \"no-such-bucket\" does not exist"),
            "{args:?}: {err}"
        );
    }

    let (code, _, err) = s.sr_with(
        &["list", "--dest", &format!("s3://{BUCKET}/none")],
        PASSWORD,
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not a restic repository"), "{err}");
    assert!(
        err.contains("snapring init --dest s3://backups/none"),
        "{err}"
    );

    let (code, _, err) = s.sr_with(&["init", "--dest", &dest], PASSWORD);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already holds a repository"), "{err}");
}

/// No server listening, or no credentials: a clear error, exit 1 (the unreachable
/// endpoint after the retries).
#[test]
fn unreachable_endpoint_and_missing_credentials_fail_clearly() {
    let s = setup(NONE);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let run = |endpoint: String, with_keys: bool| {
        let mut c = s.command(&["list", "--dest", "s3://backups/p"]);
        c.env("AWS_ENDPOINT_URL", endpoint);
        if !with_keys {
            c.env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY");
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    let started = std::time::Instant::now();
    let (code, err) = run(format!("http://127.0.0.1:{port}"), true);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot read s3://backups/p/config"), "{err}");
    assert!(err.contains("after 6 attempts"), "{err}");
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    // Backed off between the attempts: 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s.
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(6),
        "{err}"
    );

    // No keys, and no instance metadata (a closed port stands for 169.254.169.254 off
    // EC2, so an EC2 test machine's own role does not count).
    let out = s
        .command(&["list", "--dest", "s3://backups/p"])
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no S3 credentials"), "{err}");
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
    assert!(
        err.contains(&format!("no instance role at http://127.0.0.1:{port}")),
        "{err}"
    );
    // Off entirely: said so.
    let (code, err) = {
        let out = s
            .command(&["list", "--dest", "s3://backups/p"])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("AWS_EC2_METADATA_DISABLED"), "{err}");
}

/// A listener on 127.0.0.1 that takes every connection and never answers (a hung
/// proxy or load balancer); its port.
fn hung_endpoint() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        // Held open, unread: the client waits for an answer that never comes.
        let mut held = Vec::new();
        for conn in l.incoming().flatten() {
            held.push(conn);
        }
    });
    port
}

/// Waits for `child` at most `limit`; kills it past that. (code, stdout and stderr,
/// time taken).
fn wait_at_most(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> (Option<i32>, String, std::time::Duration) {
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let took = started.elapsed();
    let out = child.wait_with_output().unwrap();
    let err =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), err, took)
}

/// SIGTERM to a backup, and to an init, talking to an endpoint that never answers:
/// each stops within seconds, `incomplete` (exit 3), saying it was interrupted. Before,
/// the request could not be interrupted and was retried whatever the stop: the backup
/// ended 30 minutes after the signal (6 attempts of 300 s), `failed` (exit 1).
#[test]
fn sigterm_stops_a_run_on_a_hung_endpoint_within_seconds() {
    let s = setup(NONE);
    let src = s.t.path().join("hung-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"f").unwrap();
    let endpoint = format!("http://127.0.0.1:{}", hung_endpoint());
    let src = src.to_str().unwrap();
    for args in [
        &[
            "backup",
            "--source",
            src,
            "--dest",
            "s3://backups/hung",
            "--json",
        ][..],
        &["init", "--dest", "s3://backups/hung"][..],
    ] {
        let child = s
            .command(args)
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_secs(1));
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let (code, err, took) = wait_at_most(child, std::time::Duration::from_secs(60));
        assert!(
            took < std::time::Duration::from_secs(10),
            "{args:?} took {took:?} after SIGTERM: {err}"
        );
        assert_eq!(code, Some(3), "{args:?}: {err}");
        assert!(err.contains("interrupted"), "{args:?}: {err}");
    }
}

/// An endpoint that takes the connection and never answers: a request without a body
/// fails each attempt once no answer came within `SNAPRING_S3_ANSWER_TIMEOUT` (here
/// 1 s; 60 s by default, `s3::tests::timeouts_default`), not after the whole
/// `SNAPRING_S3_TIMEOUT` (300 s: 30 minutes for the six attempts).
#[test]
fn a_request_nothing_answers_fails_within_the_answer_bound() {
    let s = setup(NONE);
    let endpoint = format!("http://127.0.0.1:{}", hung_endpoint());
    let child = s
        .command(&["list", "--dest", "s3://backups/hung"])
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("SNAPRING_S3_ANSWER_TIMEOUT", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // 6 attempts of 1 s and 6.2 s of backoff.
    let (code, err, took) = wait_at_most(child, std::time::Duration::from_secs(60));
    assert!(
        took < std::time::Duration::from_secs(40),
        "took {took:?}: {err}"
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot read s3://backups/hung/config"),
        "{err}"
    );
    assert!(err.contains("after 6 attempts"), "{err}");
    assert!(err.contains("no answer within 1s"), "{err}");
}

/// A wrong key id or secret, an endpoint with a path and a prefix with `..`: each
/// error says what to check. The keys got a bare `HTTP 403: SignatureDoesNotMatch`;
/// the endpoint's path and the `..` were sent and refused the same way.
#[test]
fn wrong_keys_and_bad_addresses_say_what_to_check() {
    if needs_in_process_server("the in-process server's refusals") {
        return;
    }
    let s = setup(NONE);
    let dest = format!("s3://{BUCKET}/p");
    s.sr_ok(&["init", "--dest", &dest]);
    let run = |env: &[(&str, &str)], dest: &str| {
        let mut c = s.command(&["list", "--dest", dest]);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (what, env) in [
        ("secret", [("AWS_SECRET_ACCESS_KEY", "not-the-secret")]),
        ("key", [("AWS_ACCESS_KEY_ID", "no-such-key")]),
    ] {
        let (code, err) = run(&env, &dest);
        assert_eq!(code, Some(1), "{what}: {err}");
        assert!(err.contains("HTTP 403"), "{what}: {err}");
        assert!(
            err.contains("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
            "{what}: {err}"
        );
    }
    let with_path = format!("{}/some/path", s.endpoint());
    let (code, err) = run(&[("AWS_ENDPOINT_URL", &with_path)], &dest);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("with no path"), "{err}");
    let (code, err) = run(&[], &format!("s3://{BUCKET}/p/../q"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("`.` or `..` parts"), "{err}");
}

/// snapring `args` in the setup's directory with `env` added: (code, stderr, time taken).
fn run_at(
    s: &Setup,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String, std::time::Duration) {
    let mut c = s.command(args);
    c.current_dir(s.t.path());
    for (k, v) in env {
        c.env(k, v);
    }
    let started = std::time::Instant::now();
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// `SNAPRING_S3_PATH_STYLE=false` with an IP endpoint retried a client error 6 times
/// (over 6 s): a configuration error, it fails at once saying why.
#[test]
fn virtual_host_style_on_an_ip_endpoint_fails_at_once() {
    let s = setup(NONE);
    let (code, err, took) = run_at(
        &s,
        &["init", "--dest", &format!("s3://{BUCKET}/p")],
        &[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("SNAPRING_S3_PATH_STYLE", "false"),
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("needs a DNS name, not an IP address"), "{err}");
    assert!(!err.contains("attempts"), "{err}");
    assert!(took < std::time::Duration::from_secs(3), "{took:?}: {err}");
}

/// restic's `s3:http://HOST:PORT/BUCKET/PREFIX` was read as a local path, with no hint:
/// it is refused naming snapring's form, and nothing is made locally.
#[test]
fn restics_s3_syntax_is_refused_naming_snaprings() {
    let s = setup(NONE);
    let restic_form = format!("s3:http://127.0.0.1:9000/{BUCKET}/p");
    let src = s.t.path().join("src");
    write(&src.join("f"), b"x");
    for args in [
        &["init", "--dest", &restic_form][..],
        &[
            "backup",
            "--source",
            src.to_str().unwrap(),
            "--dest",
            &restic_form,
        ],
        &["list", "--dest", &restic_form],
    ] {
        let (code, err, _) = run_at(&s, args, &[]);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "give --dest s3://{BUCKET}/p with AWS_ENDPOINT_URL=http://127.0.0.1:9000"
            )),
            "{args:?}: {err}"
        );
    }
    assert!(
        !s.t.path().join("s3:http:").exists(),
        "a local store was made"
    );
}

/// An endpoint that answers an HTML page (HTTP 200) to every request made `init` say
/// the location "already holds a repository": it says the endpoint does not behave
/// like S3, with the content type and the page's first bytes.
#[test]
fn an_endpoint_answering_html_is_not_taken_for_a_repository() {
    let s = setup(NONE);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let body = "<!DOCTYPE html>\n<html><body>Welcome to the portal</body></html>";
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let endpoint = format!("http://127.0.0.1:{port}");
    let (code, err, _) = run_at(
        &s,
        &["init", "--dest", &format!("s3://{BUCKET}/p")],
        &[("AWS_ENDPOINT_URL", &endpoint)],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("already holds a repository"), "{err}");
    assert!(
        err.contains(&format!("the endpoint {endpoint} does not behave like S3"))
            && err.contains("text/html")
            && err.contains("<!DOCTYPE html>"),
        "{err}"
    );
}

/// A one-thread HTTP server on 127.0.0.1 for credential endpoints: `answer` gets the
/// request line and the lower-cased header lines, and gives the status and body.
fn fake_http(answer: impl Fn(&str, &[String]) -> (&'static str, String) + Send + 'static) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut first = String::new();
            r.read_line(&mut first).unwrap();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
                headers.push(h.to_lowercase());
            }
            let (status, body) = answer(&first, &headers);
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// The test's keys as an instance-metadata or container credentials answer, expiring
/// `valid` from now.
fn role_answer(valid: chrono::TimeDelta) -> String {
    let expires = (chrono::Utc::now() + valid).to_rfc3339();
    format!(
        "{{\"Code\":\"Success\",\"AccessKeyId\":\"{ACCESS_KEY}\",\"SecretAccessKey\":\"{SECRET_KEY}\",\"Token\":\"session\",\"Expiration\":\"{expires}\"}}"
    )
}

/// A stand-in for the EC2 instance metadata service (IMDSv2) on 127.0.0.1: a token for
/// a PUT, then the role's name and its keys for GETs that carry the token; keys that
/// expire `valid` from now. Counts the tokens handed out.
fn fake_imds(valid: chrono::TimeDelta) -> (u16, Arc<AtomicU64>) {
    let tokens = Arc::new(AtomicU64::new(0));
    let count = tokens.clone();
    let port = fake_http(move |first, headers| {
        let token_ok = headers
            .iter()
            .any(|h| h == "x-aws-ec2-metadata-token: t0k3n\r\n");
        let path = first.split(' ').nth(1).unwrap_or("");
        let creds = "/latest/meta-data/iam/security-credentials/";
        if first.starts_with("PUT /latest/api/token ") {
            count.fetch_add(1, Ordering::SeqCst);
            ("200 OK", "t0k3n".to_string())
        } else if !token_ok {
            ("401 Unauthorized", String::new())
        } else if path == creds {
            ("200 OK", "backup-role\n".to_string())
        } else if path == format!("{creds}backup-role") {
            ("200 OK", role_answer(valid))
        } else {
            ("404 Not Found", String::new())
        }
    });
    (port, tokens)
}

/// A stand-in for a container credentials endpoint (ECS task role, EKS Pod Identity) on
/// 127.0.0.1: the keys, expiring `valid` from now, for a GET of `/creds` that carries
/// `Authorization: pod-token`; 401 without it. Counts the keys handed out.
fn fake_container_role(valid: chrono::TimeDelta) -> (u16, Arc<AtomicU64>) {
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    let port = fake_http(move |first, headers| {
        if !headers.iter().any(|h| h == "authorization: pod-token\r\n") {
            ("401 Unauthorized", String::new())
        } else if first.starts_with("GET /creds ") {
            count.fetch_add(1, Ordering::SeqCst);
            ("200 OK", role_answer(valid))
        } else {
            ("404 Not Found", String::new())
        }
    });
    (port, served)
}

/// No keys in the environment or a credentials file, in a container with a role: the
/// container credentials endpoint's keys sign the requests, with the token from
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, and are renewed before they expire. A wrong
/// token, and a plain-HTTP endpoint that is not local, are clear errors.
#[test]
fn credentials_from_a_container_role_are_used_and_renewed() {
    if needs_in_process_server("the test's keys behind a stand-in container endpoint") {
        return;
    }
    let s = setup(NONE);
    let src = s.t.path().join("src");
    write(&src.join("f"), b"from a pod's role\n");
    let token = s.t.path().join("eks-pod-identity-token");
    std::fs::write(&token, "pod-token\n").unwrap();
    let run = |uri: String, args: &[&str]| {
        let out = s
            .command(args)
            .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri)
            .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let dest = format!("s3://{BUCKET}/pod");
    let (fresh, served) = fake_container_role(chrono::TimeDelta::hours(6));
    let (code, out) = run(
        format!("http://127.0.0.1:{fresh}/creds"),
        &["init", "--dest", &dest],
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        served.load(Ordering::SeqCst),
        1,
        "fetched once, not renewed"
    );
    let (expiring, renewed) = fake_container_role(chrono::TimeDelta::minutes(1));
    let (code, out) = run(
        format!("http://127.0.0.1:{expiring}/creds"),
        &["backup", "--source", src.to_str().unwrap(), "--dest", &dest],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        renewed.load(Ordering::SeqCst) >= 3,
        "renewed before requests"
    );
    let (code, out) = run(
        format!("http://127.0.0.1:{fresh}/creds"),
        &["list", "--dest", &dest],
    );
    assert_eq!((code, out.lines().count()), (Some(0), 2), "{out}");

    std::fs::write(&token, "someone-else\n").unwrap();
    let (code, out) = run(
        format!("http://127.0.0.1:{fresh}/creds"),
        &["list", "--dest", &dest],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "no S3 credentials from the container credentials endpoint http://127.0.0.1:{fresh}/creds"
        )) && out.contains("401"),
        "{out}"
    );
    let (code, out) = run(
        "http://203.0.113.9/creds".into(),
        &["list", "--dest", &dest],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("use https://"), "{out}");
}

/// No keys in the environment or a credentials file: the instance role's, from the
/// instance metadata, sign the requests; keys about to expire are renewed before
/// requests (here every time, as they expire within the renewal margin).
#[test]
fn credentials_from_the_instance_metadata_are_used_and_renewed() {
    if needs_in_process_server("the test's keys behind a stand-in instance metadata") {
        return;
    }
    let s = setup(NONE);
    let src = s.t.path().join("src");
    write(&src.join("f"), b"from an instance role\n");
    let run = |imds: u16, args: &[&str]| {
        let out = s
            .command(args)
            .env(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                format!("http://127.0.0.1:{imds}"),
            )
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?}: {text}");
        text
    };
    let dest = format!("s3://{BUCKET}/imds");
    let (fresh, tokens) = fake_imds(chrono::TimeDelta::hours(6));
    run(fresh, &["init", "--dest", &dest]);
    assert_eq!(
        tokens.load(Ordering::SeqCst),
        1,
        "fetched once, not renewed"
    );
    let (expiring, renewed) = fake_imds(chrono::TimeDelta::minutes(1));
    run(
        expiring,
        &["backup", "--source", src.to_str().unwrap(), "--dest", &dest],
    );
    assert!(
        renewed.load(Ordering::SeqCst) >= 3,
        "renewed before requests"
    );
    let out = run(fresh, &["list", "--dest", &dest]);
    assert_eq!(out.lines().count(), 2, "{out}");
}

/// Server-side encryption on every upload, the storage class on packs only; the
/// server checked the signature over these headers (s3s-fs takes STANDARD and
/// REDUCED_REDUNDANCY only, and refuses others: so the class reached it). Classes that need a restore request
/// before a read are refused.
#[test]
fn encryption_and_storage_class_headers_are_sent() {
    if needs_in_process_server("seeing the headers of each upload") {
        return;
    }
    let mut s = setup(NONE);
    s.extra_env = vec![
        ("SNAPRING_S3_SSE".into(), "AES256".into()),
        (
            "SNAPRING_S3_STORAGE_CLASS".into(),
            "REDUCED_REDUNDANCY".into(),
        ),
    ];
    let src = s.t.path().join("src");
    source(&src);
    let dest = format!("s3://{BUCKET}/sse");
    s.sr_ok(&["init", "--dest", &dest]);
    let r = s.backup(&src, &dest);
    assert_eq!(r["status"], "complete", "{r}");
    let puts = s.server().puts.lock().unwrap().clone();
    assert!(puts.iter().any(|p| p.0.contains("/data/")), "{puts:?}");
    assert!(puts.iter().any(|p| p.0.contains("/snapshots/")), "{puts:?}");
    for (path, sse, class) in &puts {
        assert_eq!(sse.as_deref(), Some("AES256"), "{path}");
        let want = path.contains("/data/").then_some("REDUCED_REDUNDANCY");
        assert_eq!(class.as_deref(), want, "{path}");
    }
    s.extra_env = vec![("SNAPRING_S3_STORAGE_CLASS".into(), "GLACIER".into())];
    let (code, _, err) = s.sr_with(&["list", "--dest", &dest], PASSWORD);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("SNAPRING_S3_STORAGE_CLASS=GLACIER"), "{err}");
}

/// Settings for the library's S3 backend pointed at the test server.
fn lib_s3(s: &Setup, prefix: &str) -> snapring::restic::s3::S3 {
    let creds = snapring::restic::s3::Credentials {
        access_key: ACCESS_KEY.into(),
        secret_key: SECRET_KEY.into(),
        session_token: None,
    };
    snapring::restic::s3::S3::new(&s.endpoint(), BUCKET, prefix, "us-east-1", true, creds).unwrap()
}

/// `repair index` on S3: the listing's sizes match the packs the index describes (none
/// re-read); a lost data pack is left out and the snapshot that lost data named; the
/// next backup reads the unchanged files whose blobs were lost again, and its snapshot
/// restores equal to the source.
#[test]
fn repair_index_leaves_a_lost_pack_out_and_the_next_backup_stores_it_again() {
    use snapring::restic::backend::{Backend, Kind};
    let s = setup(NONE);
    let src = s.t.path().join("src");
    source(&src);
    let dest = format!("s3://{BUCKET}/repos/repair");
    s.sr_ok(&["init", "--dest", &dest]);
    let first = s.backup(&src, &dest);
    let b = lib_s3(&s, "repos/repair");
    let packs = b.list_sizes(Kind::Pack).unwrap();
    assert_eq!(packs.len(), 2, "a data and a tree pack: {packs:?}");
    let out = s.sr_ok(&["repair", "index", "--dest", &dest, "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["packs_kept"], 2, "sizes as the index implies: {r}");
    assert_eq!(r["index_rewritten"], false, "{r}");

    let (data, _) = packs.iter().max_by_key(|(_, size)| *size).unwrap();
    b.remove(Kind::Pack, data).unwrap();
    let (code, out, err) = s.sr_with(&["repair", "index", "--dest", &dest, "--json"], PASSWORD);
    assert_eq!(code, 2, "{out}\n{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["packs_missing"], 1, "{r}");
    assert_eq!(r["missing"][0], data.hex(), "{r}");
    assert_eq!(r["damaged_snapshots"][0]["id"], first["snapshot"], "{r}");

    let second = s.backup(&src, &dest);
    assert_eq!(second["status"], "complete", "{second}");
    assert!(
        second["repository"]["files_read"].as_u64().unwrap() >= 2,
        "the big files read again: {second}"
    );
    s.sr_ok(&["verify", "--dest", &dest, "latest"]);
    let to = s.t.path().join("restored");
    s.sr_ok(&restore_latest(&dest, &to));
    assert_same_tree(&describe(&src), &describe(&to), "restore after the repair");
}

/// `repair index --read-data` and an indexed pack whose header is damaged (its blobs
/// whole): the pack is downloaded as every damaged pack is, twice (two reads that agree
/// make damage at rest), and salvaged from those bytes. Until session 50 it was
/// downloaded twice to find its header bad and then again to salvage it (three GETs;
/// four when a blob was bad too).
#[test]
fn repair_read_data_downloads_a_pack_with_a_bad_header_twice_not_three_times() {
    if needs_in_process_server("damaging an object on the server's disk") {
        return;
    }
    use snapring::restic::backend::{Backend, Kind, rel_path};
    let s = setup(NONE);
    let src = s.t.path().join("src");
    source(&src);
    let dest = format!("s3://{BUCKET}/badheader");
    s.sr_ok(&["init", "--dest", &dest]);
    s.backup(&src, &dest);
    let b = lib_s3(&s, "badheader");
    let packs = b.list_sizes(Kind::Pack).unwrap();
    let (data, _) = packs.iter().max_by_key(|(_, size)| *size).unwrap();
    let rel = rel_path(Kind::Pack, data);
    let file =
        s.t.path()
            .join("s3")
            .join(BUCKET)
            .join("badheader")
            .join(&rel);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x55;
    std::fs::write(&file, bytes).unwrap();
    s.server().gets.lock().unwrap().clear();
    let out = s.sr_ok(&["repair", "index", "--dest", &dest, "--read-data", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["packs_salvaged"], 1, "{r}");
    assert_eq!(r["blobs_lost"], 0, "{r}");
    let gets = s.server().gets.lock().unwrap().clone();
    let of_pack = gets.iter().filter(|p| p.ends_with(&rel)).count();
    assert_eq!(of_pack, 2, "GETs of the damaged pack: {gets:?}");
    s.sr_ok(&["verify", "--dest", &dest, "--all"]);
}

/// A pack deleted from the bucket between `repair index --read-data`'s listing and its
/// read: the server's 404 is the pack's loss, left out of the new index and named,
/// as a local pack gone since the listing is. It stopped the repair, exit 1, as if the
/// server had failed, and the lost pack stayed indexed.
#[test]
fn repair_index_leaves_out_a_pack_deleted_after_the_listing() {
    use snapring::restic::backend::{Backend, Kind};
    if needs_in_process_server("deleting objects behind the server's back") {
        return;
    }
    let s = setup(NONE);
    let src = s.t.path().join("src");
    source(&src);
    let dest = format!("s3://{BUCKET}/repos/raced");
    s.sr_ok(&["init", "--dest", &dest]);
    s.backup(&src, &dest);
    let b = lib_s3(&s, "repos/raced");
    let packs = b.list_sizes(Kind::Pack).unwrap();
    let (data, _) = packs.iter().max_by_key(|(_, size)| *size).unwrap();
    let pause = s.t.path().join("listed");
    let child = s
        .command(&["repair", "index", "--read-data", "--dest", &dest, "--json"])
        .env(
            "SNAPRING_FAILPOINTS",
            format!("restic.repair_packs_listed=pause:{}", pause.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !pause.exists() {
        assert!(t0.elapsed().as_secs() < 60, "repair never listed the packs");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    b.remove(Kind::Pack, data).unwrap();
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["packs_unreadable"], 1, "{r}");
    assert_eq!(r["unreadable"][0], data.hex(), "{r}");
    assert_eq!(r["index_rewritten"], true, "{r}");
    // The next backup stores the lost data again; its snapshot restores whole.
    let second = s.backup(&src, &dest);
    assert_eq!(second["status"], "complete", "{second}");
    s.sr_ok(&["verify", "--dest", &dest, "latest"]);
    let to = s.t.path().join("restored");
    s.sr_ok(&restore_latest(&dest, &to));
    assert_same_tree(&describe(&src), &describe(&to), "restore after the repair");
}

/// Two `init`s racing past the existence check: the server refuses the second
/// `config` (If-None-Match: *), so neither overwrites the other's.
#[test]
fn config_is_created_only_once() {
    use snapring::restic::backend::Backend;
    let s = setup(NONE);
    let b = lib_s3(&s, "race");
    b.create_config(b"first").unwrap();
    // A retry of a PUT that landed finds its own bytes: no error.
    b.create_config(b"first").unwrap();
    let err = b.create_config(b"second").unwrap_err().to_string();
    assert!(err.contains("already holds a repository"), "{err}");
    assert_eq!(b.read_config().unwrap().as_deref(), Some(&b"first"[..]));
}

/// A shard run's files beside the repository (`shard::repository`): each is created
/// once, by a conditional write (`If-None-Match: *`) that the server refuses when the
/// key exists, and the loser is told so; a retry of a create that landed finds its own
/// bytes; the rest are read, listed (folders by name), replaced and removed.
#[test]
fn run_files_are_created_once_by_conditional_writes() {
    use snapring::restic::backend::Backend;
    let s = setup(NONE);
    let b = lib_s3(&s, "runfiles");
    let claim = "snapring/shards/r/claims/u0001.g1";
    assert!(b.create_extra(claim, b"first").unwrap());
    assert!(!b.create_extra(claim, b"second").unwrap());
    assert_eq!(b.read_extra(claim).unwrap().as_deref(), Some(&b"first"[..]));
    assert!(b.create_extra(claim, b"first").unwrap());
    assert!(
        b.create_extra("snapring/shards/r/claims/u0002.g1", b"x")
            .unwrap()
    );
    assert!(
        b.create_extra("snapring/shards/r/claims/sub/deeper", b"x")
            .unwrap()
    );
    // A folder is listed by its name, as a local repository's (prune lists the runs).
    assert_eq!(
        b.list_extra("snapring/shards/r/claims").unwrap(),
        ["sub", "u0001.g1", "u0002.g1"]
    );
    assert_eq!(b.list_extra("snapring/shards").unwrap(), ["r"]);
    b.remove_extra_tree("snapring/shards/r/claims").unwrap();
    assert!(b.list_extra("snapring/shards/r/claims").unwrap().is_empty());
    assert!(b.list_extra("snapring/shards/r").unwrap().is_empty());
    assert!(b.list_extra("snapring/shards/none").unwrap().is_empty());
    let beat = "snapring/shards/r/beats/u0001.g1";
    b.put_extra(beat, b"1").unwrap();
    b.put_extra(beat, b"2").unwrap();
    assert_eq!(b.read_extra(beat).unwrap().as_deref(), Some(&b"2"[..]));
    b.remove_extra(beat).unwrap();
    assert_eq!(b.read_extra(beat).unwrap(), None);
    b.remove_extra(beat).unwrap();
}

/// A shard run on S3 killed before it published: `snapring prune` finds the run by
/// listing `snapring/shards/` and keeps its units' data, and the rerun's snapshot
/// verifies clean.
#[test]
fn prune_on_s3_keeps_an_unfinished_shard_runs_data() {
    let s = setup(NONE);
    let src = s.t.path().join("src");
    for d in 0..4 {
        for f in 0..5 {
            write(
                &src.join(format!("d{d}/f{f}")),
                format!("{d}/{f}\n").as_bytes(),
            );
        }
    }
    let dest = format!("s3://{BUCKET}/unfinished");
    s.sr_ok(&["init", "--dest", &dest]);
    let args = [
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &dest,
        "--shard",
        "0/1",
        "--run-id",
        "u1",
    ];
    let o = s
        .command(&args)
        .env("SNAPRING_FAILPOINTS", "shard.repo.before_finalize=kill")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), None, "{o:?}");
    let p: serde_json::Value =
        serde_json::from_str(&s.sr_ok(&["prune", "--json", "--dest", &dest])).unwrap();
    assert_eq!(p["plan"]["shard_runs_kept"], 1, "{p}");
    assert_eq!(p["plan"]["packs_deleted"], 0, "{p}");
    let o = s
        .command(&args)
        .env_remove("SNAPRING_FAILPOINTS")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    s.sr_ok(&["verify", "--dest", &dest]);
}

/// Three shard workers into one repository on S3: one snapshot, published once, each
/// unit committed once (as objects under `snapring/shards/RUN/`), restored equal to
/// the source.
#[test]
fn shard_workers_on_s3_make_one_snapshot() {
    let s = setup(NONE);
    let src = s.t.path().join("src");
    source(&src);
    for d in 0..6 {
        for f in 0..10 {
            write(
                &src.join(format!("d{d}/f{f}")),
                format!("{d}/{f}\n").as_bytes(),
            );
        }
    }
    let dest = format!("s3://{BUCKET}/sharded");
    s.sr_ok(&["init", "--dest", &dest]);
    let kids: Vec<std::process::Child> = (0..3)
        .map(|i| {
            let shard = format!("{i}/3");
            s.command(&[
                "backup",
                "--source",
                src.to_str().unwrap(),
                "--dest",
                &dest,
                "--json",
                "--jobs",
                "2",
                "--shard",
                &shard,
                "--run-id",
                "s3run",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let reports: Vec<serde_json::Value> = kids
        .into_iter()
        .map(|k| {
            let o = k.wait_with_output().unwrap();
            assert_eq!(
                o.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
            serde_json::from_slice(&o.stdout).unwrap()
        })
        .collect();
    assert_eq!(
        reports.iter().filter(|r| r["finalized"] == true).count(),
        1,
        "{reports:?}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&s.sr_ok(&["list", "--dest", &dest, "--json"])).unwrap();
    let snaps = list.as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{list}");
    assert!(reports.iter().all(|r| r["snapshot"] == snaps[0]["id"]));
    let mut built: Vec<String> = reports
        .iter()
        .flat_map(|r| r["units"].as_array().unwrap().clone())
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    built.sort();
    use snapring::restic::backend::Backend;
    let done = lib_s3(&s, "sharded")
        .list_extra("snapring/shards/s3run/done")
        .unwrap();
    assert!(done.len() >= 4, "{done:?}");
    assert_eq!(built, done);
    let to = s.t.path().join("restored");
    s.sr_ok(&restore_latest(&dest, &to));
    assert_same_tree(
        &describe(&src),
        &describe(&to),
        "a shard run on S3, restored",
    );
}

/// A server that ignores `If-None-Match: *` would let two workers both win a claim, a
/// commit or `final`: the worker that plans a run checks it once (a second create of
/// one key must be refused) and fails clearly, writing no plan.
#[test]
fn a_shard_run_refuses_a_server_without_conditional_writes() {
    if needs_in_process_server("a server that ignores If-None-Match") {
        return;
    }
    let s = setup(Fault::NoConditionalWrites);
    let src = s.t.path().join("src");
    source(&src);
    let dest = format!("s3://{BUCKET}/noconds");
    s.sr_ok(&["init", "--dest", &dest]);
    let (code, out, err) = s.sr_with(
        &[
            "backup",
            "--source",
            src.to_str().unwrap(),
            "--dest",
            &dest,
            "--shard",
            "0/2",
            "--run-id",
            "r",
        ],
        PASSWORD,
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("If-None-Match"), "{err}");
    use snapring::restic::backend::Backend;
    let b = lib_s3(&s, "noconds");
    assert_eq!(b.read_extra("snapring/shards/r/plan").unwrap(), None);
}

/// A server answering every third request 503, or dropping every third connection:
/// the whole cycle still completes, by retrying.
#[test]
fn server_errors_are_retried() {
    if needs_in_process_server("injecting 503s and dropped connections") {
        return;
    }
    for fault in [Fault::Status503(3), Fault::Drop(3)] {
        retried_through(fault);
    }
}

fn retried_through(fault: Fault) {
    let s = setup(fault);
    let src = s.t.path().join("src");
    source(&src);
    let dest = format!("s3://{BUCKET}/flaky");
    s.sr_ok(&["init", "--dest", &dest]);
    let r = s.backup(&src, &dest);
    assert_eq!(r["status"], "complete", "{r}");
    let to = s.t.path().join("restored");
    s.sr_ok(&restore_latest(&dest, &to));
    assert_same_tree(&describe(&src), &describe(&to), "restore through 503s");
    assert!(s.server().requests.load(Ordering::SeqCst) >= 9);
}

fn run_restic(s: &Setup, restic: &Path, repo: &str, args: &[&OsStr]) -> Output {
    let mut c = restic_cmd(restic, repo);
    c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("HOME", s.t.path());
    restic_ok(c, args)
}

#[test]
fn restic_checks_and_restores_what_snapring_wrote_to_s3() {
    let Some(restic) = restic_binary("S3 conformance") else {
        return;
    };
    let s = setup(NONE);
    let src = s.t.path().join("src");
    source(&src);
    let dest = format!("s3://{BUCKET}/conf");
    s.sr_ok(&["init", "--dest", &dest]);
    let r = s.backup(&src, &dest);
    assert_eq!(r["status"], "complete", "{r}");
    write(&src.join("small/f5"), b"second run\n");
    s.backup(&src, &dest);
    let repo = format!("s3:{}/{BUCKET}/conf", s.endpoint());
    run_restic(
        &s,
        &restic,
        &repo,
        &["check".as_ref(), "--read-data".as_ref()],
    );
    let target = s.t.path().join("T");
    run_restic(
        &s,
        &restic,
        &repo,
        &[
            "restore".as_ref(),
            "latest".as_ref(),
            "--target".as_ref(),
            target.as_os_str(),
        ],
    );
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_same_tree(
        &describe(&src),
        &describe(&restored),
        "restic restore of a snapring backup on S3",
    );
}

#[test]
fn snapring_restores_what_restic_wrote_to_s3() {
    let Some(restic) = restic_binary("S3 conformance") else {
        return;
    };
    let s = setup(NONE);
    let src = s.t.path().join("src");
    source(&src);
    let repo = format!("s3:{}/{BUCKET}/by-restic", s.endpoint());
    run_restic(
        &s,
        &restic,
        &repo,
        &[
            "init".as_ref(),
            "--repository-version".as_ref(),
            "2".as_ref(),
        ],
    );
    run_restic(&s, &restic, &repo, &["backup".as_ref(), src.as_os_str()]);
    let dest = format!("s3://{BUCKET}/by-restic");
    let list: serde_json::Value =
        serde_json::from_str(&s.sr_ok(&["list", "--dest", &dest, "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let to = s.t.path().join("restored");
    s.sr_ok(&restore_latest(&dest, &to));
    assert_same_tree(
        &describe(&src),
        &describe(&to),
        "snapring restore of restic's S3 backup",
    );
    // A snapring backup on top reads nothing (restic's tree is the parent) and restic
    // still checks the repository.
    let r = s.backup(&src, &dest);
    assert_eq!(r["repository"]["bytes_read"], 0, "{r}");
    run_restic(
        &s,
        &restic,
        &repo,
        &["check".as_ref(), "--read-data".as_ref()],
    );
}

/// A server that cuts a listing (`IsTruncated`) and gives no way to the rest (one
/// that answers ListObjectsV2 as the older ListObjects, 1000 keys a page; here 2, on
/// `snapshots/` only): the listing is not taken as complete. Before, prune saw the
/// first page of snapshots only and deleted the data of every other.
#[test]
fn a_listing_cut_without_a_continuation_token_fails_prune_and_deletes_nothing() {
    if needs_in_process_server("a server that pages listings as ListObjects (V1) does") {
        return;
    }
    let s = setup(NONE);
    let src = s.t.path().join("src");
    let dest = format!("s3://{BUCKET}/cut");
    s.sr_ok(&["init", "--dest", &dest]);
    // Four snapshots, each the only one with its file's data.
    for i in 0..4u64 {
        let _ = std::fs::remove_file(src.join(format!("run-{}", i.wrapping_sub(1))));
        write(&src.join(format!("run-{i}")), &pseudo_random(256 << 10, i));
        s.backup(&src, &dest);
    }
    let packs_before: Vec<String> = s
        .objects("cut")
        .into_iter()
        .filter(|o| o.starts_with("data/"))
        .collect();

    // The same bucket through a server that lists snapshots two at a time, cut.
    let cut = start_server(&s.t.path().join("s3"), Fault::V1Listing(2));
    let mut c = s.command(&["prune", "--dest", &dest]);
    c.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", cut.port));
    let out = c.output().unwrap();
    let (code, err) = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(code, 1, "prune through a cut listing: {err}");
    assert!(
        err.contains("snapshots/") && err.contains("no NextContinuationToken"),
        "{err}"
    );
    // Nothing was deleted: every snapshot still verifies against the honest server.
    let after: Vec<String> = s
        .objects("cut")
        .into_iter()
        .filter(|o| o.starts_with("data/"))
        .collect();
    assert_eq!(after, packs_before);
    let out = s.sr_ok(&["verify", "--dest", &dest, "--all", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 4, "{v}");
    assert!(
        v.as_array().unwrap().iter().all(|x| x["clean"] == true),
        "{v}"
    );
}

#[test]
fn retain_and_prune_on_s3() {
    let s = setup(NONE);
    let src = s.t.path().join("src");
    source(&src);
    let dest = format!("s3://{BUCKET}/pruned");
    s.sr_ok(&["init", "--dest", &dest]);
    let mut ids = Vec::new();
    for i in 0..3u8 {
        // A new 1 MiB file each run, the previous run's removed.
        let _ = std::fs::remove_file(src.join(format!("big/run-{}", i.wrapping_sub(1))));
        let data: Vec<u8> = (0..(1u32 << 20))
            .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8 ^ i)
            .collect();
        write(&src.join(format!("big/run-{i}")), &data);
        let out = s.sr_ok(&[
            "backup",
            "--source",
            src.to_str().unwrap(),
            "--dest",
            &dest,
            "--retain",
            "1",
            "--json",
        ]);
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            r["repository"]["retention"]["removed"],
            u64::from(i.min(1)),
            "{r}"
        );
        ids.push(r["snapshot"].as_str().unwrap().to_string());
    }
    let snaps: Vec<String> = s
        .objects("pruned")
        .into_iter()
        .filter(|o| o.starts_with("snapshots/"))
        .collect();
    assert_eq!(snaps, vec![format!("snapshots/{}", ids[2])]);
    let data_before = s
        .objects("pruned")
        .iter()
        .filter(|o| o.starts_with("data/"))
        .count();
    let out = s.sr_ok(&["prune", "--dest", &dest, "--json"]);
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(p["packs_removed"].as_u64().unwrap() >= 2, "{p}");
    let objs = s.objects("pruned");
    assert_eq!(objs.iter().filter(|o| o.starts_with("index/")).count(), 1);
    assert!(objs.iter().all(|o| !o.starts_with("locks/")), "{objs:?}");
    assert!(
        objs.iter().filter(|o| o.starts_with("data/")).count() < data_before,
        "{p}"
    );
    let to = s.t.path().join("restored");
    s.sr_ok(&restore_latest(&dest, &to));
    assert_same_tree(&describe(&src), &describe(&to), "restore after prune on S3");
    if let Some(restic) = restic_binary("S3 conformance") {
        let repo = format!("s3:{}/{BUCKET}/pruned", s.endpoint());
        run_restic(
            &s,
            &restic,
            &repo,
            &["check".as_ref(), "--read-data".as_ref()],
        );
    }
}

/// `verify` over S3: a clean repository passes; a byte flipped in the bucket's copy of
/// a pack (the server's file on disk), inside a blob of `big/random`, is caught and
/// names that file, exit 2.
#[test]
fn verify_on_s3_catches_a_flipped_byte_in_a_pack() {
    if needs_in_process_server("damaging an object on the server's disk") {
        return;
    }
    use snapring::restic::backend::rel_path;
    use snapring::restic::{Id, backend::Kind, pack::BlobType, repo::Repo, snapshot};
    let s = setup(NONE);
    let src = s.t.path().join("src");
    source(&src);
    let dest = format!("s3://{BUCKET}/verify");
    s.sr_ok(&["init", "--dest", &dest]);
    s.backup(&src, &dest);
    let out = s.sr_ok(&["verify", "--dest", &dest]);
    assert!(
        out.contains(": clean against repository: 24 files"),
        "{out}"
    );

    // Where big/random's first blob is, by the repository's own index.
    let repo = Repo::open_in(Arc::new(lib_s3(&s, "verify")), PASSWORD.as_bytes()).unwrap();
    let (_, snap) = snapshot::find(&repo, "latest").unwrap();
    let (start, _) = snapshot::source_tree(&repo, &snap).unwrap();
    let node = |tree: Id, name: &str| {
        repo.read_tree(&tree)
            .unwrap()
            .nodes
            .into_iter()
            .find(|n| n.name == name)
            .unwrap()
    };
    let big = node(start, "big").subtree.unwrap();
    let blob = node(big, "random").content.unwrap()[0];
    let loc = repo.index.get(BlobType::Data, &blob).unwrap().clone();
    let file =
        s.t.path()
            .join("s3")
            .join(BUCKET)
            .join("verify")
            .join(rel_path(Kind::Pack, &loc.pack));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[(loc.entry.offset + loc.entry.length / 2) as usize] ^= 1;
    std::fs::write(&file, bytes).unwrap();

    let (code, out, err) = s.sr_with(&["verify", "--dest", &dest, "--json"], PASSWORD);
    assert_eq!(code, 2, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["clean"], false, "{v}");
    assert_eq!(v[0]["corrupt"], 1, "{v}");
    assert_eq!(v[0]["damaged"][0]["path"], "big/random", "{v}");
    let why = v[0]["damaged"][0]["reason"].as_str().unwrap();
    assert!(
        why.contains(&loc.pack.hex()) && why.contains("MAC check failed"),
        "{why}"
    );
}

/// `verify` reads each pack's header with one ranged GET of the bytes after the pack's
/// last indexed blob (the sealed header and its length, about 40 bytes a blob), not a
/// 64 KiB tail: on S3 that was ~300 MiB of GETs a verify for 5,000 packs (review of
/// reader-49). Every GET ending at a pack's last byte is such a header read.
#[test]
fn verify_reads_only_each_packs_header_from_its_end() {
    if needs_in_process_server("the server's view of the requests") {
        return;
    }
    let s = setup(NONE);
    let src = s.t.path().join("src");
    source(&src);
    let dest = format!("s3://{BUCKET}/tails");
    s.sr_ok(&["init", "--dest", &dest]);
    s.backup(&src, &dest);
    let root = s.t.path().join("s3").join(BUCKET).join("tails");
    s.server().ranges.lock().unwrap().clear();
    let out = s.sr_ok(&["verify", "--dest", &dest]);
    assert!(out.contains(": clean against repository"), "{out}");
    let ranges = s.server().ranges.lock().unwrap().clone();
    let mut headers = 0;
    for (path, range) in &ranges {
        let Some(rel) = path
            .split("/tails/")
            .nth(1)
            .filter(|r| r.starts_with("data/"))
        else {
            continue;
        };
        let size = std::fs::metadata(root.join(rel)).unwrap().len();
        let (a, b) = range
            .strip_prefix("bytes=")
            .unwrap()
            .split_once('-')
            .unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        if b + 1 != size {
            continue;
        }
        headers += 1;
        assert!(
            b + 1 - a <= 4096,
            "a header read of {} bytes of the {size}-byte pack {rel}: {ranges:?}",
            b + 1 - a
        );
    }
    // The data pack (more than 64 KiB) and the tree pack.
    assert!(headers >= 2, "{ranges:?}");
}

/// No S3 variables but `AWS_PROFILE` and `AWS_CONFIG_FILE`: the profile's
/// `[profile NAME]` section in the config file gives the endpoint (so path-style), the
/// region and the keys, as AWS's tools read it.
#[test]
fn endpoint_region_and_keys_from_the_config_files_profile() {
    let s = setup(NONE);
    let cfg = s.t.path().join("aws-config");
    std::fs::write(
        &cfg,
        format!(
            "[default]\nregion = eu-north-1\n\n[profile backup]\nregion = us-east-1\nendpoint_url = {}\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n",
            s.endpoint()
        ),
    )
    .unwrap();
    let src = s.t.path().join("src");
    write(&src.join("f"), b"configured by profile\n");
    let dest = format!("s3://{BUCKET}/profile");
    let run = |args: &[&str]| {
        let out = s
            .command(args)
            .env("AWS_PROFILE", "backup")
            .env("AWS_CONFIG_FILE", &cfg)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_REGION")
            .env_remove("SNAPRING_S3_PATH_STYLE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?}: {text}");
        text
    };
    run(&["init", "--dest", &dest]);
    run(&["backup", "--source", src.to_str().unwrap(), "--dest", &dest]);
    let out = run(&["list", "--dest", &dest]);
    assert_eq!(out.lines().count(), 2, "{out}");
}

/// Restores the latest snapshot of `dest` into `to` with `--json`: (exit code, report,
/// stderr).
fn restore_json(s: &Setup, dest: &str, to: &Path) -> (i32, serde_json::Value, String) {
    let (code, out, err) = s.sr_with(
        &[&restore_latest(dest, to)[..], &["--json"]].concat(),
        PASSWORD,
    );
    // No report when the restore stopped (exit 1): the caller's check of the
    // code shows stderr.
    let rep = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    (code, rep, err)
}

/// A server (no fault) and a source of 30 small files backed up into `dest`,
/// `s3://BUCKET/prefix`, then a 4 MB file `big` in a second backup (so its data is in
/// packs of its own): the setup, `dest` and the biggest of those packs.
fn small_files_then_big(prefix: &str) -> (Setup, String, snapring::restic::Id) {
    use snapring::restic::backend::{Backend, Kind};
    let s = setup(NONE);
    let (src, dest) = (s.t.path().join("src"), format!("s3://{BUCKET}/{prefix}"));
    for i in 0..30 {
        write(
            &src.join(format!("small/f{i:02}")),
            format!("file {i}\n").as_bytes(),
        );
    }
    s.sr_ok(&["init", "--dest", &dest]);
    s.backup(&src, &dest);
    let b = lib_s3(&s, prefix);
    let before = b.list_sizes(Kind::Pack).unwrap();
    write(&src.join("big"), &pseudo_random(4 << 20, 9));
    s.backup(&src, &dest);
    let (pack, _) = b
        .list_sizes(Kind::Pack)
        .unwrap()
        .into_iter()
        .filter(|p| !before.contains(p))
        .max_by_key(|(_, size)| *size)
        .unwrap();
    (s, dest, pack)
}

/// A data pack lost from the bucket (404 NoSuchKey), or cut short: the files whose
/// data it held are the restore's problems, every other file is restored, `partial`,
/// exit 2, as on a local repository. The 404 stopped the whole restore, exit 1, and
/// the fill threads left the files still queued empty.
#[test]
fn a_lost_or_cut_pack_on_s3_is_a_problem_of_its_files_not_a_stop() {
    use snapring::restic::backend::{Kind, rel_path};
    if needs_in_process_server("changing an object behind the server's back") {
        return;
    }
    let (s, dest, pack) = small_files_then_big("lost");
    let object =
        s.t.path()
            .join("s3")
            .join(BUCKET)
            .join("lost")
            .join(rel_path(Kind::Pack, &pack));
    for case in ["cut short", "lost"] {
        if case == "lost" {
            std::fs::remove_file(&object).unwrap();
        } else {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&object)
                .unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len / 3).unwrap();
        }
        let to = s.t.path().join(case.replace(' ', "-"));
        let (code, rep, err) = restore_json(&s, &dest, &to);
        assert_eq!(code, 2, "{case}: {rep}\n{err}");
        assert_eq!(rep["status"], "partial", "{case}: {rep}");
        let problems = rep["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 1, "{case}: {rep}");
        assert_eq!(problems[0]["path"], "big", "{case}: {rep}");
        assert_eq!(
            problems[0]["action"], "read from the repository",
            "{case}: {rep}"
        );
        assert!(std::fs::symlink_metadata(to.join("big")).is_err(), "{case}");
        for i in 0..30 {
            let got = std::fs::read(to.join(format!("small/f{i:02}"))).unwrap();
            assert_eq!(got, format!("file {i}\n").as_bytes(), "{case}");
        }
    }
}

/// Every pack lost from the bucket (404 NoSuchKey for the trees as for the data):
/// `verify` reports the snapshot damaged, exit 2, as on a local repository. The 404 on
/// a tree stopped it, exit 1, as if the server had failed.
#[test]
fn verify_reports_lost_packs_on_s3_as_damage_not_a_stop() {
    if needs_in_process_server("deleting objects behind the server's back") {
        return;
    }
    let s = setup(NONE);
    let src = s.t.path().join("src");
    let dest = format!("s3://{BUCKET}/gone");
    for i in 0..5 {
        write(
            &src.join(format!("d/f{i}")),
            format!("file {i}\n").as_bytes(),
        );
    }
    s.sr_ok(&["init", "--dest", &dest]);
    s.backup(&src, &dest);
    let data = s.t.path().join("s3").join(BUCKET).join("gone").join("data");
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir(&data).unwrap();
    let (code, out, err) = s.sr_with(&["verify", "--dest", &dest, "--json"], PASSWORD);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.contains("damaged"), "{out}");
}

/// A pack the server refuses to give (403 AccessDenied: a bucket policy) is not damage:
/// `verify` counts the files with data there as could not be read (`unreadable`, not
/// `corrupt`; verify again once access is fixed), and the message names the status.
/// It counted them damaged.
#[test]
fn verify_counts_a_refused_pack_as_unreadable_not_damaged() {
    if needs_in_process_server("refusing the reads of one object") {
        return;
    }
    let (s, dest, pack) = small_files_then_big("denied");
    *s.server().deny_gets.lock().unwrap() = Some((pack.hex(), 403, "AccessDenied"));
    let (code, out, err) = s.sr_with(&["verify", "--dest", &dest, "--json"], PASSWORD);
    assert_eq!(code, 2, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let v = &v[0];
    assert_eq!(
        (&v["corrupt"], &v["damaged"], &v["unreadable"]),
        (&0.into(), &serde_json::json!([]), &1.into()),
        "{v}"
    );
    assert_eq!(v["problems"][0][0], "big", "{v}");
    assert!(
        v["problems"][0][1].as_str().unwrap().contains("HTTP 403"),
        "{v}"
    );
}

/// A pack read that fails in a way that says nothing of its bytes (the bucket gone:
/// 404 NoSuchBucket) is neither damage nor a pack that could not be read: `verify`
/// stops, saying so (exit 1), no file listed. It counted every file there as "could
/// not be read" (any error but damage did), exit 2.
#[test]
fn verify_stops_on_a_pack_read_error_that_says_nothing_of_the_pack() {
    if needs_in_process_server("refusing the reads of one object") {
        return;
    }
    let (s, dest, pack) = small_files_then_big("gone");
    *s.server().deny_gets.lock().unwrap() = Some((pack.hex(), 404, "NoSuchBucket"));
    let (code, out, err) = s.sr_with(&["verify", "--dest", &dest], PASSWORD);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(
        !out.contains("could not be read") && !out.contains("DAMAGED"),
        "{out}"
    );
}

/// SIGTERM to a `verify` while the server fails the reads of a pack (500, retried):
/// the read is not retried once the run is stopping, and its failure is the stop's,
/// not the pack's: the verify ends interrupted (exit 3, as a backup or restore stopped
/// by a signal does), naming the read it gave up, no file called unreadable or
/// damaged, within seconds.
#[test]
fn sigterm_mid_verify_ends_it_interrupted_no_pack_called_unreadable() {
    if needs_in_process_server("failing the reads of one object") {
        return;
    }
    let (s, dest, pack) = small_files_then_big("stopped");
    *s.server().fail_gets.lock().unwrap() = Some(pack.hex());
    let child = s
        .command(&["verify", "--dest", &dest])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The pack's read is retried for about 6 s (200 ms doubling, 6 attempts): the
    // signal comes in the middle.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let (code, out, took) = wait_at_most(child, std::time::Duration::from_secs(60));
    assert!(took < std::time::Duration::from_secs(10), "{took:?}: {out}");
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("interrupted") && out.contains("not retried, the run is stopping"),
        "{out}"
    );
    assert!(out.contains(&pack.hex()), "{out}");
    assert!(
        !out.contains("could not be read") && !out.contains("DAMAGED"),
        "{out}"
    );
}

/// A server that keeps failing the reads of a pack (500 after every retry) is not a
/// damaged repository: the restore stops, saying what failed, exit 75 (a retryable
/// failure: the rerun finishes it, docs/restore.md; was 1).
#[test]
fn a_server_failing_a_pack_read_stops_the_restore() {
    if needs_in_process_server("failing the reads of one object") {
        return;
    }
    let (s, dest, pack) = small_files_then_big("failing");
    *s.server().fail_gets.lock().unwrap() = Some(pack.hex());
    let to = s.t.path().join("to");
    let (code, out, err) = s.sr_with(&restore_latest(&dest, &to), PASSWORD);
    assert_eq!(code, 75, "{out}\n{err}");
    assert!(
        err.contains("attempts") && err.contains("HTTP 500") && err.contains(&pack.hex()),
        "{err}"
    );
}

/// A shard run on S3 whose worker 1's clock is 10 minutes behind (libfaketime; its
/// requests' signatures still within S3's 15 minutes): the claim of worker 0, stopped
/// past its 2 s lease, is taken over once the lease has lapsed by the server's clock
/// (each claim's and beat's `Last-Modified` against the same answer's `Date`), not 10
/// minutes later, and the run is published. Also counts the requests the waiting
/// worker makes.
#[test]
fn a_shard_worker_on_s3_whose_clock_is_behind_takes_a_stalled_unit_over_after_the_lease() {
    use std::time::Duration;
    let s = setup(NONE);
    let src = s.t.path().join("src");
    for d in 0..4 {
        for f in 0..10 {
            write(
                &src.join(format!("d{d}/f{f}")),
                format!("{d}/{f}\n").as_bytes(),
            );
        }
    }
    let dest = format!("s3://{BUCKET}/skew");
    s.sr_ok(&["init", "--dest", &dest]);
    let worker = |i: usize| {
        let shard = format!("{i}/2");
        let mut c = s.command(&[
            "backup",
            "--source",
            src.to_str().unwrap(),
            "--dest",
            &dest,
            "--json",
            "--jobs",
            "2",
            "--shard",
            &shard,
            "--run-id",
            "skew",
        ]);
        c.env("SNAPRING_SHARD_LEASE", "2s")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let mut c1 = worker(1);
    if !with_clock_off(&mut c1, "-600") {
        return;
    }
    let pause = s.t.path().join("paused");
    let w0 = worker(0)
        .env(
            "SNAPRING_FAILPOINTS",
            format!("shard.repo.before_commit=pause:{}", pause.display()),
        )
        .spawn()
        .unwrap();
    wait_for(&pause);
    let pid = rustix::process::Pid::from_raw(w0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    std::fs::remove_file(&pause).unwrap();
    use snapring::restic::backend::Backend;
    let claims = lib_s3(&s, "skew")
        .list_extra("snapring/shards/skew/claims")
        .unwrap();
    let units: Vec<&String> = claims.iter().filter(|c| c.starts_with('u')).collect();
    let [name] = units.as_slice() else {
        panic!("one unit claim expected: {claims:?}")
    };
    let unit = name.strip_suffix(".g1").unwrap().to_string();
    let before = s
        .server
        .as_ref()
        .map(|v| v.requests.load(Ordering::Relaxed));
    let t0 = std::time::Instant::now();
    let mut w1 = c1.spawn().unwrap();
    let ended = loop {
        if w1.try_wait().unwrap().is_some() {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = w1.kill();
    let o = w1.wait_with_output().unwrap();
    let took = t0.elapsed();
    let after = s
        .server
        .as_ref()
        .map(|v| v.requests.load(Ordering::Relaxed));
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    let late = w0.wait_with_output().unwrap();
    assert!(
        ended,
        "worker 1 (clock 10 min behind) did not take the unit over within 60 s (a 2 s \
         lease): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r1: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r1["finalized"], true, "{r1}");
    assert!(
        r1["units"].as_array().unwrap().iter().any(|u| u == &unit),
        "{r1}"
    );
    assert_eq!(late.status.code(), Some(0), "{late:?}");
    if let (Some(b), Some(a)) = (before, after) {
        eprintln!(
            "worker 1: {} requests in {took:?}, units {}",
            a - b,
            r1["units"]
        );
    }
    let list: serde_json::Value =
        serde_json::from_str(&s.sr_ok(&["list", "--dest", &dest, "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}
