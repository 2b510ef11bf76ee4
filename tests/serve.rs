//! `snapring serve` as a user meets it: the binary on a free port over a catalog filled
//! by real runs (complete, partial, incomplete, failed) of a config whose notifiers
//! hold secrets; every page and endpoint, the escaping of a hostile job name, the
//! security headers, `promtool check metrics` on `/metrics`, that serving writes
//! nothing to the catalog, the token rules, and hostile clients (a huge declared body,
//! clients that never read, a flood of idle connections, a huge head).

mod common;
use common::*;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const EVIL: &str = "<script>alert(1)</script>";
const SECRETS: [&str; 2] = ["T0KEN-SECRET", "pa55-SECRET"];

struct Fixture {
    t: tempfile::TempDir,
    cfg: PathBuf,
    catalog: PathBuf,
}

/// A config with two jobs, `home` (webhook and mail notifiers holding secrets) and one
/// named `EVIL`, over two sources.
fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    for i in 0..5 {
        write(&t.path().join(format!("src/d{i}/f{i}")), b"content");
    }
    write(&t.path().join("src2/a"), b"a");
    let cfg = t.path().join("snapring.toml");
    let f = Fixture {
        cfg,
        catalog: t.path().join("state/catalog.db"),
        t,
    };
    f.write_cfg(&f.cfg, "");
    f
}

impl Fixture {
    fn write_cfg(&self, path: &Path, home_extra: &str) {
        let p = self.t.path().display();
        std::fs::write(
            path,
            format!(
                r#"
[job.home]
source = "{p}/src"
dest = "{p}/dest"
schedule = "0 2 * * *"
notify = ["hook", "mail"]
notify_success = true
{home_extra}

[job."{EVIL}"]
source = "{p}/src2"
dest = "{p}/dest2"

[notify.hook]
type = "webhook"
url = "http://127.0.0.1:1/hook/T0KEN-SECRET"
retries = 0
timeout = "2s"

[notify.mail]
type = "email"
smtp_host = "127.0.0.1"
smtp_port = 1
tls = "none"
username = "snapring"
password_env = "SMTP_PW"
from = "snapring <snapring@example.com>"
to = ["ops@example.com"]
retries = 0
timeout = "2s"
"#
            ),
        )
        .unwrap();
    }

    /// `snapring run JOB --config CFG --json` (optionally under `setpriv ARGS`, with
    /// failpoints); returns the child.
    fn run_cmd(&self, job: &str, cfg: &Path, setpriv: &[&str], failpoints: &str) -> Command {
        let mut c = if setpriv.is_empty() {
            Command::new(bin())
        } else {
            let mut c = Command::new("setpriv");
            c.args(setpriv).arg(bin());
            c
        };
        c.env("SNAPRING_CATALOG", &self.catalog)
            .env("SMTP_PW", "pa55-SECRET")
            .env("SNAPRING_FAILPOINTS", failpoints)
            .args(["run", job, "--json", "--config"])
            .arg(cfg);
        c
    }

    fn run(&self, job: &str, cfg: &Path, setpriv: &[&str]) -> i32 {
        let out = self.run_cmd(job, cfg, setpriv, "").output().unwrap();
        out.status.code().unwrap_or(-1)
    }

    /// Fills the catalog: `home` complete, partial, incomplete (killed, settled by the
    /// next run), complete, failed; the evil job complete.
    fn fill(&self) {
        std::fs::create_dir(self.t.path().join("textfile")).unwrap();
        assert_eq!(self.run("home", &self.cfg, &[]), 0);
        let src = self.t.path().join("src");
        chmod(&src.join("d1/f1"), 0o000);
        let drop_caps = [
            "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-dac_override,-dac_read_search",
        ];
        assert_eq!(self.run("home", &self.cfg, &drop_caps), 2);
        chmod(&src.join("d1/f1"), 0o644);
        let pause = self.t.path().join("paused");
        let fp = format!("walk.dir=pause:{}@2", pause.display());
        let mut child = self
            .run_cmd("home", &self.cfg, &[], &fp)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(&pause);
        child.kill().unwrap();
        child.wait().unwrap();
        write(&src.join("d0/new"), b"a new file");
        assert_eq!(self.run("home", &self.cfg, &[]), 0);
        let failing = self.t.path().join("failing.toml");
        self.write_cfg(&failing, "require_mount = true");
        assert_eq!(self.run("home", &failing, &[]), 1);
        let out = self
            .run_cmd(EVIL, &self.cfg, &[], "")
            .arg("--textfile")
            .arg(self.t.path().join("textfile"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
    }
}

/// A running `snapring serve`, killed when dropped.
struct Serve {
    child: Child,
    addr: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `snapring serve ARGS --listen LISTEN` and waits for its address.
fn serve(f: &Fixture, listen: &str, args: &[&str], env: &[(&str, &str)]) -> Serve {
    serve_logging_to(f, listen, args, env, Stdio::inherit())
}

/// `serve`, its stderr (its log) to `stderr`.
fn serve_logging_to(
    f: &Fixture,
    listen: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stderr: Stdio,
) -> Serve {
    let mut c = Command::new(bin());
    c.arg("--catalog")
        .arg(&f.catalog)
        .args(["serve", "--listen", listen, "--config"])
        .arg(&f.cfg)
        .args(args)
        .env_remove("SNAPRING_SERVE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(stderr);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("snapring serve: listening on http://")
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_string();
    Serve { child, addr }
}

/// Starts `snapring daemon` on `f`'s config (which has a `[server]` table), waits for
/// the address it serves on, and then until `path` answers 200 (the daemon creates and
/// migrates the catalog as it starts; until then a page may say the catalog's schema
/// is older). Its log is drained so that it never blocks on a full pipe.
fn daemon_serving(f: &Fixture, path: &str) -> Serve {
    let mut child = Command::new(bin())
        .arg("--catalog")
        .arg(&f.catalog)
        .args(["daemon", "--config"])
        .arg(&f.cfg)
        .env_remove("SNAPRING_SERVE_TOKEN")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "no address");
        if let Some(a) = line
            .trim()
            .strip_prefix("snapring daemon: serving on http://")
        {
            break a.trim_end_matches('/').to_string();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let s = Serve { child, addr };
    let t0 = std::time::Instant::now();
    while http(&s.addr, "GET", path, &[]).status != 200 {
        assert!(
            t0.elapsed().as_secs() < 10,
            "the daemon's server never answered 200 to {path}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    s
}

/// An answer: status, headers (lower-case names), body.
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `METHOD path` over HTTP/1.0, with extra header lines.
fn http(addr: &str, method: &str, path: &str, headers: &[&str]) -> Got {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\n");
    if !headers.iter().any(|h| h.starts_with("Host:")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Got {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(addr: &str, path: &str) -> Got {
    let g = http(addr, "GET", path, &[]);
    assert_eq!(g.status, 200, "GET {path}: {}", g.body);
    check_headers(path, &g);
    g
}

fn check_headers(path: &str, g: &Got) {
    let csp = g.header("content-security-policy").unwrap_or("");
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(
        g.header("x-content-type-options"),
        Some("nosniff"),
        "{path}"
    );
    assert_eq!(g.header("x-frame-options"), Some("DENY"), "{path}");
    assert_eq!(g.header("referrer-policy"), Some("no-referrer"), "{path}");
    for s in SECRETS {
        assert!(!g.body.contains(s), "{path} shows the secret {s}");
    }
    // Only HTML is markup; JSON and the metrics carry the name as data (with nosniff).
    if g.header("content-type")
        .is_some_and(|t| t.starts_with("text/html"))
    {
        assert!(
            !g.body.contains(EVIL),
            "{path} shows the job name unescaped"
        );
    }
}

fn json(addr: &str, path: &str) -> serde_json::Value {
    let g = get(addr, path);
    assert_eq!(g.header("content-type"), Some("application/json"), "{path}");
    serde_json::from_str(&g.body).unwrap()
}

/// The percent-encoded form the pages use in links.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn file_digest(p: &Path) -> (Vec<u8>, i64) {
    use std::os::unix::fs::MetadataExt;
    (
        std::fs::read(p).unwrap(),
        std::fs::metadata(p).unwrap().mtime_nsec(),
    )
}

#[test]
fn every_page_and_endpoint_shows_real_runs_escaped_and_without_secrets() {
    let f = fixture();
    f.fill();
    let cfg_text = std::fs::read_to_string(&f.cfg).unwrap();
    assert!(cfg_text.contains(SECRETS[0]), "the config holds a secret");
    let before = file_digest(&f.catalog);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);

    let home = json(&s.addr, "/api/jobs/home");
    let c = &home["counts"];
    let counts: Vec<u64> = ["runs", "complete", "partial", "incomplete", "failed"]
        .iter()
        .map(|k| c[k].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [5, 2, 1, 1, 1], "{c}");
    assert_eq!(home["last"]["status"], "failed");
    assert_eq!(home["snapshots"].as_array().unwrap().len(), 3, "{home}");
    assert!(home["snapshots"][0]["bytes_total"].as_u64().unwrap() > 0);
    assert!(home["next_run"].as_str().unwrap().ends_with("T02:00:00Z"));
    assert!(home["space"]["free_bytes"].as_u64().unwrap() > 0);
    let last_notes = &home["last"]["notifications"];
    assert_eq!(
        last_notes.as_array().unwrap().len(),
        2,
        "notifiers ran: {home}"
    );

    overview(&s.addr);
    job_page(&s.addr);
    run_pages(&s.addr, &home);
    metrics(&s.addr);
    errors(&s.addr);
    assert_eq!(json(&s.addr, "/api/jobs").as_array().unwrap().len(), 2);
    textfile(&f);
    browser(&f, &s.addr, &home);
    assert!(
        file_digest(&f.catalog) == before,
        "serve wrote to the catalog"
    );
    // A run while it serves shows at once (the cached counts follow the catalog).
    let runs_of_evil = |addr: &str| {
        let jobs = json(addr, "/api/jobs");
        jobs.as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == EVIL)
            .unwrap()["counts"]["runs"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(runs_of_evil(&s.addr), 1);
    assert_eq!(f.run(EVIL, &f.cfg, &[]), 0);
    assert_eq!(runs_of_evil(&s.addr), 2);
    let m = get(&s.addr, "/metrics").body;
    let evil_started = format!("snapring_runs_started_total{{job_name=\"{EVIL}\",");
    let line = m.lines().find(|l| l.starts_with(&evil_started)).unwrap();
    assert!(line.ends_with(" 2"), "{line}");
}

fn overview(addr: &str) {
    let g = get(addr, "/");
    assert_eq!(g.header("content-type"), Some("text/html; charset=utf-8"));
    let b = &g.body;
    assert!(b.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{b}");
    assert!(b.contains(&format!("href=\"/job/{}\"", seg(EVIL))), "{b}");
    assert!(b.contains("href=\"/job/home\""));
    assert!(b.contains("class=\"status failed\"") && b.contains("class=\"status complete\""));
    assert_eq!(b.matches("<tr class=\"job\">").count(), 2);
    assert_eq!(b.matches("<svg class=\"spark\"").count(), 2);
    assert!(b.contains("40%"), "success rate 2 of 5: {b}");
    assert!(
        !b.contains("<script") && !b.contains("style="),
        "no script, no inline style"
    );
    let css = get(addr, "/style.css");
    assert!(css.header("content-type").unwrap().starts_with("text/css"));
    let evil = get(addr, &format!("/job/{}", seg(EVIL)));
    assert!(evil.body.contains("Job &lt;script&gt;"), "{}", evil.body);
}

fn job_page(addr: &str) {
    let b = get(addr, "/job/home").body;
    for st in ["complete", "partial", "incomplete", "failed"] {
        assert!(b.contains(&format!("class=\"status {st}\"")), "{st}: {b}");
    }
    assert_eq!(b.matches("<svg class=\"chart\"").count(), 4);
    assert_eq!(
        b.matches("<circle class=\"pt\"").count(),
        4 * 5 - 2,
        "a point per run, but none for the killed run's unknown duration and throughput"
    );
    assert_eq!(b.matches("<tr class=\"run\">").count(), 5);
    for snap in ["daily.0", "daily.1", "daily.2"] {
        assert!(b.contains(&format!("<td>{snap}</td>")), "{snap}");
    }
}

fn run_pages(addr: &str, home: &serde_json::Value) {
    let runs = home["recent"].as_array().unwrap();
    for r in runs {
        let id = r["id"].as_str().unwrap();
        let b = get(addr, &format!("/run/{}", seg(id))).body;
        assert!(b.contains(&format!("Run {id}")));
        for t in ["kpis", "phases", "problems", "notifications"] {
            assert!(b.contains(&format!("id=\"{t}\"")), "{t} on {id}");
        }
        let api = json(addr, &format!("/api/runs/{id}"));
        assert_eq!(api["report"]["status"], r["status"]);
        if r["status"] == "partial" {
            assert!(b.contains("<code>d1/f1</code>"), "the unreadable file: {b}");
            assert!(b.contains("<pre id=\"log\">") && b.contains("backup finished"));
            assert_eq!(api["problems"][0]["path"], "d1/f1");
        }
    }
    assert_eq!(http(addr, "GET", "/run/no-such-run", &[]).status, 404);
    // A prefix names no run here (`show` accepts one; a link must be exact).
    let id = runs[0]["id"].as_str().unwrap();
    assert_eq!(
        http(addr, "GET", &format!("/run/{}", &id[..8]), &[]).status,
        404
    );
}

fn metrics(addr: &str) {
    let g = get(addr, "/metrics");
    assert!(
        g.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let m = &g.body;
    let home = "job_name=\"home\"";
    let line = |name: &str| {
        m.lines()
            .find(|l| l.starts_with(name) && l.contains(home))
            .unwrap_or_else(|| panic!("no {name} for home in\n{m}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(line("snapring_runs_started_total{"), 5.0);
    assert_eq!(line("snapring_runs_failed_total{"), 1.0);
    assert_eq!(line("snapring_snapshots{"), 3.0);
    assert!(line("snapring_store_free_bytes{") > 0.0);
    assert!(line("snapring_next_run_timestamp_seconds{") > 1.7e9);
    assert!(line("snapring_newest_snapshot_age_seconds{") >= 0.0);
    assert!(m.contains("snapring_last_run_status{job_name=\"home\""));
    assert!(m.contains(",status=\"failed\"} 1"), "{m}");
    assert!(
        m.contains("job_name=\"<script>alert(1)</script>\""),
        "label values are raw text"
    );
    promtool(m);
    grafana_names_exist(m);
    let om = http(
        addr,
        "GET",
        "/metrics",
        &["Accept: application/openmetrics-text; version=1.0.0"],
    );
    assert!(
        om.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(om.body.ends_with("# EOF\n"));
}

/// Every series examples/grafana/snapring.json queries is one `/metrics` has.
fn grafana_names_exist(metrics: &str) {
    let dash = std::fs::read_to_string("examples/grafana/snapring.json").unwrap();
    let _: serde_json::Value = serde_json::from_str(&dash).unwrap();
    let mut names: Vec<&str> = dash
        .match_indices("snapring_")
        .map(|(i, _)| {
            let rest = &dash[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| *n != "snapring_")
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for n in names {
        assert!(
            metrics.contains(&format!("\n{n}{{")),
            "the dashboard queries {n}"
        );
    }
}

/// `promtool check metrics` on `text`; skipped (saying so) without promtool, which
/// `.ci/run` installs.
fn promtool(text: &str) {
    let Ok(mut c) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIPPED promtool check: promtool is not installed (apt-get install prometheus)");
        return;
    };
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Headless Chromium (Debian's `chromium`) on `url`: `--dump-dom` (the DOM after
/// rendering) or `--screenshot=PATH`. Returns (stdout, the console lines of its log).
fn chromium(dir: &Path, url: &str, action: &str) -> (String, Vec<String>) {
    let profile = tempfile::tempdir_in(dir).unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1000",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(action)
        .arg(url)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium {action} {url}: {out:?}");
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}

/// The overview, a job and a partial run in a real browser: the DOM has the jobs, the
/// charts as SVG with their points, the run's problem, no script; the console is
/// silent (a CSP violation would show there). Screenshots go to a temp dir, or to
/// `$SNAPRING_SCREENSHOTS` (how docs/images/ is made). Skipped without chromium.
fn browser(f: &Fixture, addr: &str, home: &serde_json::Value) {
    if Command::new("chromium").arg("--version").output().is_err() {
        eprintln!("SKIPPED browser check: chromium is not installed (apt-get install chromium)");
        return;
    }
    let partial = home["recent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "partial")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pages = [
        ("overview", "/".to_string(), "<tr class=\"job\">", 2),
        // A point per run and chart, but the killed run's unknown duration and throughput.
        ("job", "/job/home".to_string(), "<circle class=\"pt\"", 18),
        ("run", format!("/run/{partial}"), "<code>d1/f1</code>", 1),
    ];
    let shots = std::env::var_os("SNAPRING_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| f.t.path().join("shots"));
    std::fs::create_dir_all(&shots).unwrap();
    for (name, path, marker, n) in pages {
        let url = format!("http://{addr}{path}");
        let (dom, console) = chromium(f.t.path(), &url, "--dump-dom");
        assert_eq!(dom.matches(marker).count(), n, "{name}: {dom}");
        assert!(dom.contains("<svg") || name == "run", "{name}: {dom}");
        assert!(!dom.contains("<script"), "{name}: {dom}");
        assert!(console.is_empty(), "{name}: console says {console:?}");
        let png = shots.join(format!("serve-{name}.png"));
        let (_, console) = chromium(f.t.path(), &url, &format!("--screenshot={}", png.display()));
        assert!(console.is_empty(), "{name}: console says {console:?}");
        let bytes = std::fs::read(&png).unwrap();
        // A PNG of the window's size (IHDR: width and height, big-endian).
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000,
            "{name}"
        );
        assert_eq!(
            bytes[16..24],
            [0, 0, 5, 0, 0, 0, 3, 232],
            "{name}: 1280x1000"
        );
    }
}

/// `run --textfile DIR` left one world-readable `.prom` file (and no temp file) that
/// promtool accepts, with the job's figures.
fn textfile(f: &Fixture) {
    use std::os::unix::fs::PermissionsExt;
    let dir = f.t.path().join("textfile");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let hash = names[0]
        .strip_prefix("snapring-_script_alert_1___script_-")
        .and_then(|n| n.strip_suffix(".prom"))
        .unwrap_or_else(|| panic!("{names:?}"));
    assert!(
        hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{hash}"
    );
    let p = dir.join(&names[0]);
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let text = std::fs::read_to_string(&p).unwrap();
    promtool(&text);
    let labels = format!(
        "job_name=\"{EVIL}\",store=\"{}/dest2\"",
        f.t.path().display()
    );
    assert!(
        text.contains(&format!("snapring_runs_started_total{{{labels}}} 1\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("snapring_snapshots{{{labels}}} 1")),
        "{text}"
    );
    assert!(!text.contains("# EOF"));
}

fn errors(addr: &str) {
    // DNS rebinding: without a token, a Host that is a name but localhost is refused.
    let rebound = http(addr, "GET", "/", &["Host: evil.example"]);
    assert_eq!(rebound.status, 403);
    for host in ["Host: [::1]evil.example", "Host: localhost:evil.example"] {
        assert_eq!(http(addr, "GET", "/", &[host]).status, 403, "{host}");
    }
    check_headers("Host: evil.example", &rebound);
    let port = addr.rsplit(':').next().unwrap();
    let local = format!("Host: localhost:{port}");
    assert_eq!(http(addr, "GET", "/", &[local.as_str()]).status, 200);
    assert_eq!(http(addr, "GET", "/job/nope", &[]).status, 404);
    assert_eq!(http(addr, "GET", "/api/jobs/nope", &[]).status, 404);
    assert_eq!(http(addr, "GET", "/nothing", &[]).status, 404);
    assert_eq!(http(addr, "GET", "/job/%zz", &[]).status, 404);
    let post = http(addr, "POST", "/", &[]);
    assert_eq!(post.status, 405);
    check_headers("POST /", &post);
}

#[test]
fn with_a_token_every_request_needs_it() {
    let f = fixture();
    let token = f.t.path().join("token");
    std::fs::write(&token, "correct-horse-battery-staple\n").unwrap();
    let tf = token.to_str().unwrap();
    let s = serve(&f, "127.0.0.1:0", &["--token-file", tf], &[]);
    for path in ["/", "/metrics", "/api/jobs", "/job/home", "/style.css"] {
        let none = http(&s.addr, "GET", path, &[]);
        assert_eq!(none.status, 401, "{path}");
        assert!(
            none.header("www-authenticate")
                .unwrap()
                .starts_with("Bearer")
        );
        check_headers(path, &none);
        let wrong = http(
            &s.addr,
            "GET",
            path,
            &["Authorization: Bearer correct-horse"],
        );
        assert_eq!(wrong.status, 401, "{path}");
        let ok = http(
            &s.addr,
            "GET",
            path,
            &["Authorization: Bearer correct-horse-battery-staple"],
        );
        assert_eq!(ok.status, 200, "{path}");
        let lower = http(
            &s.addr,
            "GET",
            path,
            &["Authorization: bearer correct-horse-battery-staple"],
        );
        assert_eq!(lower.status, 200, "{path}: the scheme is case-insensitive");
    }
    drop(s);
    // A token short enough to guess is refused, naming where it came from.
    std::fs::write(&token, "abc\n").unwrap();
    let err = refused_on_any_address(&f, &["--token-file", tf]);
    assert!(
        err.contains(&format!("the token file {tf}: the token has 3 characters")),
        "{err}"
    );
}

/// `serve --listen 0.0.0.0:0` with `extra` flags and no token in the environment: it
/// must refuse to start (exit 1). Returns its stderr.
fn refused_on_any_address(f: &Fixture, extra: &[&str]) -> String {
    let out = Command::new(bin())
        .args([
            "--catalog",
            "off",
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--config",
        ])
        .arg(&f.cfg)
        .args(extra)
        .env_remove("SNAPRING_SERVE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn only_loopback_goes_without_a_token_and_sigterm_stops_serve() {
    let f = fixture();
    // Any address but loopback: refused without a token, before listening.
    let err = refused_on_any_address(&f, &[]);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without a token"),
        "{err}"
    );
    // With one from the environment it starts, and wants it.
    let s = serve(
        &f,
        "0.0.0.0:0",
        &[],
        &[("SNAPRING_SERVE_TOKEN", "from-the-env-1234")],
    );
    let port = s.addr.rsplit(':').next().unwrap();
    let local = format!("127.0.0.1:{port}");
    assert_eq!(http(&local, "GET", "/", &[]).status, 401);
    let ok = http(
        &local,
        "GET",
        "/",
        &["Authorization: Bearer from-the-env-1234"],
    );
    assert_eq!(ok.status, 200);
    stop_with_sigterm(s);
}

/// SIGTERM stops `serve` with exit 0 within a few ticks.
fn stop_with_sigterm(mut s: Serve) {
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed().as_secs() < 10, "serve did not stop on SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn an_old_catalog_is_refused_with_what_to_do_and_left_as_it_is() {
    let f = fixture();
    std::fs::create_dir_all(f.catalog.parent().unwrap()).unwrap();
    std::fs::copy("tests/fixtures/catalog-v1.db", &f.catalog).unwrap();
    let before = file_digest(&f.catalog);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let g = http(&s.addr, "GET", "/", &[]);
    assert_eq!(g.status, 500);
    assert!(
        g.body.contains("schema version 1") && g.body.contains("migrates it"),
        "{}",
        g.body
    );
    check_headers("/", &g);
    drop(s);
    assert!(
        file_digest(&f.catalog) == before,
        "serve migrated the catalog"
    );
}

#[test]
fn the_daemon_serves_when_its_config_has_a_server_table() {
    let f = fixture();
    let mut cfg = std::fs::read_to_string(&f.cfg).unwrap();
    let bad = f.t.path().join("bad.toml");
    std::fs::write(&bad, format!("{cfg}\n[server]\nlisten = \"localhost\"\n")).unwrap();
    let out = snapring(&["config".as_ref(), "check".as_ref(), bad.as_os_str()], &[]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("listen = \"localhost\" is not ADDR:PORT"),
        "{text}"
    );
    cfg.push_str("\n[server]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&f.cfg, cfg).unwrap();
    let s = daemon_serving(&f, "/");
    let b = get(&s.addr, "/").body;
    assert_eq!(b.matches("<tr class=\"job\">").count(), 2, "{b}");
    assert!(get(&s.addr, "/metrics").body.contains("snapring_snapshots"));
    // One request declaring a 4 EiB body aborted the whole daemon under tiny_http.
    let mut huge = TcpStream::connect(&s.addr).unwrap();
    write!(
        huge,
        "POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: 4611686018427387904\r\n\r\n",
        s.addr
    )
    .unwrap();
    let mut answer = String::new();
    huge.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
    answers_at_once(&s.addr, "a POST declaring a 4 EiB body, in the daemon");
    stop_with_sigterm(s);
}

/// The `home` job's series `name` in `metrics`, if it has one.
fn home_series(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("job_name=\"home\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

/// Waits until the progress file has an ETA (the walk has run `ETA_AFTER`); returns it.
fn progress_with_eta(p: &Path) -> serde_json::Value {
    let t0 = std::time::Instant::now();
    loop {
        if let Ok(t) = std::fs::read(p)
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&t)
            && v["eta_seconds"].is_u64()
        {
            return v;
        }
        assert!(t0.elapsed().as_secs() < 30, "no ETA in {}", p.display());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_running_backup_shows_its_progress_against_the_previous_snapshot() {
    let f = fixture();
    f.write_cfg(&f.cfg, "jobs = 1");
    assert_eq!(f.run("home", &f.cfg, &[]), 0, "the first run: 5 files");
    for i in 0..5 {
        write(&f.t.path().join(format!("src/d{i}/f{i}")), b"changed!");
    }
    // One worker, paused in its third copy: three files walked of the five expected.
    let pause = f.t.path().join("paused");
    let fp = format!("walk.copy=pause:{}@3", pause.display());
    let mut child = f
        .run_cmd("home", &f.cfg, &[], &fp)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&pause);
    let file = f.t.path().join("dest/.snapring/progress.json");
    let p = progress_with_eta(&file);
    assert_eq!(
        (p["files_done"].as_u64(), p["files_expected"].as_u64()),
        (Some(3), Some(5))
    );
    assert_eq!(p["percent"].as_f64(), Some(60.0));
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let page = get(&s.addr, "/").body;
    assert!(
        page.contains("3/5 files (60%)") && page.contains("ETA"),
        "{page}"
    );
    let page = get(&s.addr, "/job/home").body;
    assert!(
        page.contains("<p id=\"progress\">Walking: <span class=\"progress\">3/5 files (60%)"),
        "{page}"
    );
    let api = json(&s.addr, "/api/jobs/home");
    assert_eq!(api["last"]["status"], "running");
    assert_eq!(api["progress"]["files_done"], 3);
    assert_eq!(api["progress"]["files_expected"], 5);
    assert!(api["progress"]["eta_seconds"].is_u64(), "{api}");
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(
        home_series(&m, "snapring_run_progress_files"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(home_series(&m, "snapring_run_expected_files"), Some(5.0));
    assert!(home_series(&m, "snapring_run_eta_seconds").is_some_and(|e| e >= 0.0));
    promtool(&m);
    std::fs::remove_file(&pause).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!file.exists(), "the progress file outlived the walk");
    let page = get(&s.addr, "/job/home").body;
    assert!(!page.contains("id=\"progress\""), "{page}");
    assert!(json(&s.addr, "/api/jobs/home")["progress"].is_null());
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(home_series(&m, "snapring_run_progress_files"), None, "{m}");
}

/// The threads of process `pid`.
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// GET / answers 200 within 5 s.
fn answers_at_once(addr: &str, after: &str) {
    let t0 = std::time::Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(s, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let read = s.read_to_end(&mut got);
    assert!(
        read.is_ok() && got.starts_with(b"HTTP/1.1 200 "),
        "after {after}: no answer to GET / in {:?}: {read:?} {}",
        t0.elapsed(),
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn a_hostile_client_neither_kills_nor_stalls_serve() {
    let f = fixture();
    let mut s = serve(&f, "127.0.0.1:0", &[], &[]);
    let addr = s.addr.clone();
    let pid = s.child.id();
    assert!(threads(pid) <= 4, "{} threads at rest", threads(pid));
    // Sends nothing at all: the server closes it after its timeout.
    let mut silent = TcpStream::connect(&addr).unwrap();
    let silent_since = std::time::Instant::now();

    // A body declared 2^62 bytes long, never sent: tiny_http drained it on a buffer of
    // that size when the request was dropped, and the allocation aborted the process.
    let mut huge = TcpStream::connect(&addr).unwrap();
    write!(
        huge,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 4611686018427387904\r\n\r\n"
    )
    .unwrap();
    huge.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut head = [0u8; 12];
    huge.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 405");
    answers_at_once(&addr, "a POST declaring a 4 EiB body");
    assert!(s.child.try_wait().unwrap().is_none(), "serve died");

    // Clients that ask and ask (pipelined) and never read: 16 MiB of answers queued
    // stalled every page while tiny_http wrote them on the answering thread.
    let size = http(&addr, "GET", "/api/jobs", &[]).body.len() + 600;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let c = TcpStream::connect(&addr).unwrap();
        let w = c.try_clone().unwrap();
        let reqs =
            format!("GET /api/jobs HTTP/1.1\r\nHost: {addr}\r\n\r\n").repeat((16 << 20) / size);
        std::thread::spawn(move || {
            let mut w = w;
            let _ = w.write_all(reqs.as_bytes());
        });
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        stalled.push(c);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    answers_at_once(&addr, "two clients that never read");

    // A flood of idle connections: a bounded number of threads, the rest refused at
    // once (tiny_http kept a thread per connection for ever).
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let n = threads(pid);
    assert!(n <= 40, "{n} threads for 200 idle connections");
    let mut refused = TcpStream::connect(&addr).unwrap();
    refused
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    refused.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    drop(idle);
    drop(stalled);
    std::thread::sleep(std::time::Duration::from_millis(300));
    answers_at_once(&addr, "the idle connections closed");

    // A head larger than 16 KiB: 431, and the server goes on.
    let big = format!("X-Big: {}", "a".repeat(64 * 1024));
    assert_eq!(http(&addr, "GET", "/", &[big.as_str()]).status, 431);
    answers_at_once(&addr, "a 64 KiB header");

    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        silent.read_to_end(&mut rest).unwrap(),
        0,
        "closed without a word"
    );
    let waited = silent_since.elapsed().as_secs_f64();
    assert!(
        (9.0..15.0).contains(&waited),
        "the silent one was closed after {waited} s"
    );
    assert!(s.child.try_wait().unwrap().is_none(), "serve died");
    stop_with_sigterm(s);
}

#[test]
fn jobs_whose_names_differ_only_in_odd_characters_get_textfiles_of_their_own() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("src/f"), b"f");
    let p = t.path().display();
    let cfg = t.path().join("snapring.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.\"db.main\"]\nsource = \"{p}/src\"\ndest = \"{p}/d1\"\n\n\
             [job.db_main]\nsource = \"{p}/src\"\ndest = \"{p}/d2\"\n"
        ),
    )
    .unwrap();
    let dir = t.path().join("textfile");
    std::fs::create_dir(&dir).unwrap();
    for job in ["db.main", "db_main"] {
        let out = Command::new(bin())
            .arg("--catalog")
            .arg(t.path().join("catalog.db"))
            .args(["run", job, "--config"])
            .arg(&cfg)
            .arg("--textfile")
            .arg(&dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        2,
        "one job's figures overwrote the other's: {names:?}"
    );
    assert_eq!(
        names[1], "snapring-db_main.prom",
        "a plain name stays as it is"
    );
    for (name, job) in names.iter().zip(["db.main", "db_main"]) {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(
            text.contains(&format!("job_name=\"{job}\"")),
            "{name}: {text}"
        );
        promtool(&text);
    }
}

#[test]
fn a_store_gone_from_under_its_jobs_runs_is_an_error_not_an_empty_store() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(home_series(&m, "snapring_job_errors"), Some(0.0), "{m}");
    // Unmounted: an empty mount point where the store was.
    let dest = f.t.path().join("dest");
    std::fs::rename(&dest, f.t.path().join("dest.away")).unwrap();
    std::fs::create_dir(&dest).unwrap();
    let home = json(&s.addr, "/api/jobs/home");
    let errors = home["errors"].to_string();
    assert!(
        errors.contains(&format!("the store {} has no .snapring", dest.display()))
            && errors.contains("mounted"),
        "{home}"
    );
    let page = get(&s.addr, "/").body;
    assert!(page.contains("<p class=\"err\">the store "), "{page}");
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(home_series(&m, "snapring_job_errors"), Some(1.0), "{m}");
    promtool(&m);
    // Back in place: no error.
    std::fs::remove_dir(&dest).unwrap();
    std::fs::rename(f.t.path().join("dest.away"), &dest).unwrap();
    assert_eq!(
        json(&s.addr, "/api/jobs/home")["errors"],
        serde_json::json!([])
    );
}

#[test]
fn a_locked_catalog_never_shows_counters_at_zero() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let runs = |m: &str| home_series(m, "snapring_runs_started_total");
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(
        (runs(&m), home_series(&m, "snapring_job_errors")),
        (Some(1.0), Some(0.0))
    );
    // A writer holds the catalog (a long transaction, a migration): serve's reads time
    // out. Counters at 0 would be a reset to Prometheus (increase() then counts every
    // run again once the lock goes); they are left out instead, and the error shows.
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    db.execute_batch(
        "BEGIN EXCLUSIVE; INSERT INTO events (at, job, kind, message) \
         VALUES ('2026-01-01T00:00:00Z', 'home', 'test', 'lock');",
    )
    .unwrap();
    // One wait for the lock per request (serve's 5 s), not one per read: two jobs,
    // each read several times, must still answer within Prometheus' default 10 s
    // scrape timeout.
    let t0 = std::time::Instant::now();
    let m = get(&s.addr, "/metrics").body;
    let took = t0.elapsed();
    assert!(took < std::time::Duration::from_secs(7), "{took:?}");
    assert_eq!(runs(&m), None, "{m}");
    assert_eq!(home_series(&m, "snapring_job_errors"), Some(1.0), "{m}");
    promtool(&m);
    // Nor are the counts 0 in the JSON: unknown is `null`, not zero runs.
    let t0 = std::time::Instant::now();
    let jobs = json(&s.addr, "/api/jobs");
    let took = t0.elapsed();
    assert!(took < std::time::Duration::from_secs(7), "{took:?}");
    for j in jobs.as_array().unwrap() {
        assert!(j["counts"].is_null(), "{j}");
        assert!(j["success_rate"].is_null(), "{j}");
        assert!(j["errors"].to_string().contains("locked"), "{j}");
    }
    let t0 = std::time::Instant::now();
    let home = json(&s.addr, "/api/jobs/home");
    assert!(t0.elapsed() < std::time::Duration::from_secs(7), "{home}");
    assert!(home["counts"].is_null(), "{home}");
    // Rolled back: the counters are back, with no error.
    db.execute_batch("ROLLBACK").unwrap();
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(
        (runs(&m), home_series(&m, "snapring_job_errors")),
        (Some(1.0), Some(0.0)),
        "{m}"
    );
}

/// Requests are answered one at a time: with the catalog locked, four sent at once
/// were answered after 5, 10, 15 and 20 s, each waiting its own 5 s once its turn
/// came, so a scrape queued behind a dashboard's requests passed Prometheus' 10 s
/// timeout. Each request's wait for the lock now counts from its arrival.
#[test]
fn requests_queued_behind_a_locked_catalog_share_one_wait() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    // A server that has read the catalog before (it keeps it open).
    get(&s.addr, "/metrics");
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    db.execute_batch(
        "BEGIN EXCLUSIVE; INSERT INTO events (at, job, kind, message) \
         VALUES ('2026-01-01T00:00:00Z', 'home', 'test', 'lock');",
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    let took: Vec<(std::time::Duration, String, String)> = std::thread::scope(|sc| {
        let hs: Vec<_> = ["/metrics", "/api/jobs", "/api/jobs/home", "/metrics"]
            .into_iter()
            .map(|u| {
                let addr = &s.addr;
                sc.spawn(move || {
                    let body = get(addr, u).body;
                    (t0.elapsed(), u.to_string(), body)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (t, u, body) in &took {
        assert!(
            *t < std::time::Duration::from_secs(8),
            "{u} answered after {t:?} (all: {:?})",
            took.iter().map(|x| x.0).collect::<Vec<_>>()
        );
        // Each answered without the catalog, saying so.
        match u.as_str() {
            "/metrics" => assert_eq!(
                home_series(body, "snapring_job_errors"),
                Some(1.0),
                "{body}"
            ),
            _ => assert!(body.contains("locked"), "{u}: {body}"),
        }
    }
    // A server started while the catalog is locked cannot open it: its queued
    // requests fail (500, naming the lock), all within the same one wait.
    let s2 = serve(&f, "127.0.0.1:0", &[], &[]);
    let t0 = std::time::Instant::now();
    let got: Vec<(std::time::Duration, Got)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let addr = &s2.addr;
                sc.spawn(move || {
                    let g = http(addr, "GET", "/metrics", &[]);
                    (t0.elapsed(), g)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (t, g) in &got {
        assert!(
            *t < std::time::Duration::from_secs(8),
            "answered after {t:?} (all: {:?})",
            got.iter().map(|x| x.0).collect::<Vec<_>>()
        );
        assert_eq!(g.status, 500, "{}", g.body);
        assert!(g.body.contains("locked"), "{}", g.body);
    }
    db.execute_batch("ROLLBACK").unwrap();
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(
        home_series(&m, "snapring_runs_started_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        home_series(
            &get(&s2.addr, "/metrics").body,
            "snapring_runs_started_total"
        ),
        Some(1.0)
    );
}

/// A run that failed while a writer held the catalog past its busy wait: its final row
/// could not be written, so the catalog still says `running` (until a command that
/// writes the catalog settles it), though its lock file is empty and its run record in
/// the store says `failed`. serve shows it as that record says, at once: else
/// `snapring_last_run_status{status="failed"}` stays 0 for as long as nobody else
/// writes the catalog (a day, for a daily job) and no alert on a failed run fires.
#[test]
fn a_run_whose_end_the_catalog_missed_shows_as_its_record_says_not_running() {
    let f = fixture();
    let p = f.t.path().display();
    let gate = f.t.path().join("gate");
    let g = gate.display();
    std::fs::write(
        &f.cfg,
        format!(
            r#"
[job.home]
source = "{p}/src"
dest = "{p}/dest"
pre_command = ["sh", "-c", "touch {g}; while [ -e {g} ]; do sleep 0.05; done; exit 1"]
"#
        ),
    )
    .unwrap();
    let mut child = f
        .run_cmd("home", &f.cfg, &[], "")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&gate);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    // Alive (it holds the store's lock): running.
    let api = json(&s.addr, "/api/jobs/home");
    assert_eq!(api["last"]["status"], "running", "{api}");
    assert_eq!(
        home_last_status(&get(&s.addr, "/metrics").body, "running"),
        Some(true)
    );
    // It fails while a writer holds the catalog: its end is not recorded there.
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    std::fs::remove_file(&gate).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(1));
    db.execute_batch("ROLLBACK").unwrap();
    let row: String = db
        .query_row("SELECT status FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(row, "running");
    assert_eq!(
        std::fs::read(f.t.path().join("dest/.snapring/lock")).unwrap(),
        b""
    );
    for api in [
        json(&s.addr, "/api/jobs/home"),
        json(&s.addr, "/api/jobs")[0].clone(),
    ] {
        assert_eq!(api["last"]["status"], "failed", "{api}");
        assert!(
            api["last"]["message"]
                .as_str()
                .unwrap()
                .contains("pre_command"),
            "{api}"
        );
        assert_eq!(api["recent"][0]["status"], "failed", "{api}");
        assert_eq!(api["counts"]["running"], 0, "{api}");
        assert_eq!(api["counts"]["failed"], 1, "{api}");
        assert!(api["progress"].is_null(), "{api}");
    }
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(home_last_status(&m, "running"), Some(false), "{m}");
    assert_eq!(home_last_status(&m, "failed"), Some(true), "{m}");
    assert_eq!(
        home_series(&m, "snapring_runs_failed_total"),
        Some(1.0),
        "{m}"
    );
    promtool(&m);
    assert!(!get(&s.addr, "/").body.contains("status running"));
    // serve wrote nothing: the catalog still has it running, until a writer settles it
    // as serve showed it.
    let row: String = db
        .query_row("SELECT status FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(row, "running");
    let out = snapring(
        &[
            std::ffi::OsStr::new("--catalog"),
            f.catalog.as_os_str(),
            std::ffi::OsStr::new("history"),
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let row: String = db
        .query_row("SELECT status FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(row, "failed");
    assert_eq!(json(&s.addr, "/api/jobs/home")["counts"]["failed"], 1);
}

/// A run into a repository whose final catalog write fails (another process holds the
/// catalog past the busy wait) wrote its snapshot and ends `complete`; the catalog row
/// stays `running`. Its marker beside the catalog (`logs/<run>.running`) keeps its final
/// report, let go: serve shows the run as that report says, and the next command that
/// writes the catalog records it (then removes the marker). Before, the marker was
/// removed and the row stayed `running` for ever (history, serve, later runs).
#[test]
fn a_repository_run_whose_end_the_catalog_missed_is_recorded_from_its_marker() {
    let f = fixture();
    let p = f.t.path().display();
    let pw = f.t.path().join("pw");
    std::fs::write(&pw, "repo-pw-31c\n").unwrap();
    let url = format!("file://{p}/repo");
    let out = snapring(
        &[
            std::ffi::OsStr::new("--catalog"),
            f.catalog.as_os_str(),
            std::ffi::OsStr::new("init"),
            std::ffi::OsStr::new("--dest"),
            std::ffi::OsStr::new(&url),
            std::ffi::OsStr::new("--password-file"),
            pw.as_os_str(),
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    std::fs::write(
        &f.cfg,
        format!(
            "[job.home]\nsource = \"{p}/src\"\ndest = \"{url}\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
    )
    .unwrap();
    let pause = f.t.path().join("pause");
    let child = f
        .run_cmd(
            "home",
            &f.cfg,
            &[],
            &format!("restic.backup.before_snapshot=pause:{}", pause.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&pause);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    assert_eq!(json(&s.addr, "/api/jobs/home")["last"]["status"], "running");
    // It ends while a writer holds the catalog: its end is not recorded there.
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    db.execute_batch("ROLLBACK").unwrap();
    assert_eq!(out.status.code(), Some(0));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "complete", "{r}");
    let snap = r["snapshot"].as_str().unwrap().to_string();
    let id = r["id"].as_str().unwrap().to_string();
    let row = |db: &rusqlite::Connection| -> String {
        db.query_row("SELECT status FROM runs WHERE id = ?1", [&id], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(row(&db), "running");
    // serve (read-only) shows it as it ended, not running.
    for api in [
        json(&s.addr, "/api/jobs/home"),
        json(&s.addr, "/api/jobs")[0].clone(),
    ] {
        assert_eq!(api["last"]["status"], "complete", "{api}");
        assert_eq!(api["last"]["snapshot"], snap.as_str(), "{api}");
        assert_eq!(api["recent"][0]["status"], "complete", "{api}");
        assert_eq!(api["counts"]["running"], 0, "{api}");
        assert_eq!(api["counts"]["complete"], 1, "{api}");
    }
    let m = get(&s.addr, "/metrics").body;
    assert!(
        m.lines().any(|l| l.starts_with("snapring_last_run_status{")
            && l.contains("status=\"running\"")
            && l.ends_with(" 0.0")),
        "{m}"
    );
    assert_eq!(row(&db), "running", "serve wrote nothing");
    // The next command that writes the catalog records it as it ended.
    let out = snapring(
        &[
            std::ffi::OsStr::new("--catalog"),
            f.catalog.as_os_str(),
            std::ffi::OsStr::new("history"),
            std::ffi::OsStr::new("--json"),
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(h[0]["id"], id.as_str(), "{h}");
    assert_eq!(h[0]["status"], "complete", "{h}");
    assert_eq!(h[0]["snapshot"], snap.as_str(), "{h}");
    assert_eq!(row(&db), "complete");
    assert!(!f.t.path().join(format!("state/logs/{id}.running")).exists());
    assert_eq!(json(&s.addr, "/api/jobs/home")["counts"]["complete"], 1);

    // A `running` row whose marker is gone (a version that removed it though the final
    // write failed) is not left running for ever either: incomplete, its end unrecorded.
    let mut child = f
        .run_cmd(
            "home",
            &f.cfg,
            &[],
            &format!("restic.backup.before_snapshot=pause:{}", pause.display()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&pause);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_file(&pause);
    let logs = f.t.path().join("state/logs");
    let markers: Vec<_> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "running"))
        .collect();
    assert_eq!(markers.len(), 1, "{markers:?}");
    std::fs::remove_file(&markers[0]).unwrap();
    let api = json(&s.addr, "/api/jobs/home");
    assert_eq!(api["last"]["status"], "incomplete", "{api}");
    assert_eq!(api["counts"]["running"], 0, "{api}");
    let out = snapring(
        &[
            std::ffi::OsStr::new("--catalog"),
            f.catalog.as_os_str(),
            std::ffi::OsStr::new("history"),
            std::ffi::OsStr::new("--json"),
        ],
        &[],
    );
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(h[1]["status"], "incomplete", "{h}");
    let msg: String = db
        .query_row(
            "SELECT message FROM runs WHERE id = ?1",
            [&h[1]["id"].as_str().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert!(msg.contains("not recorded"), "{msg}");
    assert_eq!(h[0]["status"], "complete", "{h}");
}

/// A writer killed mid-transaction leaves a hot journal, which serve's read-only
/// connection may not roll back: the error says what it is and what clears it (not
/// SQLite's "attempt to write a readonly database"), the counts are unknown, not 0,
/// and the catalog is left as it is until a command that writes it rolls it back.
#[test]
fn a_hot_journal_left_by_a_killed_writer_is_named_and_the_counts_are_unknown() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    assert_eq!(json(&s.addr, "/api/jobs/home")["counts"]["runs"], 2);
    // A copy of the catalog written to mid-transaction (pages spilled into the file,
    // their old contents in the journal), put in the catalog's place as a killed
    // writer leaves it: the file and its `-journal`, with nobody holding a lock.
    let work = f.t.path().join("work.db");
    std::fs::copy(&f.catalog, &work).unwrap();
    let w = rusqlite::Connection::open(&work).unwrap();
    w.execute_batch(
        "PRAGMA cache_size = 1; BEGIN; UPDATE runs SET status = 'failed', message = 'half';",
    )
    .unwrap();
    for _ in 0..50 {
        w.execute("UPDATE runs SET message = ?1", [&"y".repeat(3000)])
            .unwrap();
    }
    let journal = |db: &Path| PathBuf::from(format!("{}-journal", db.display()));
    assert!(journal(&work).exists());
    let before = std::fs::read(&f.catalog).unwrap();
    std::fs::copy(journal(&work), journal(&f.catalog)).unwrap();
    std::fs::copy(&work, &f.catalog).unwrap();
    drop(w);
    let hot = std::fs::read(&f.catalog).unwrap();
    assert_ne!(before, hot, "the transaction did not spill into the file");
    let home = json(&s.addr, "/api/jobs/home");
    let errors = home["errors"].to_string();
    assert!(
        errors.contains("unfinished transaction left by a writer that was killed")
            && errors.contains("snapring history"),
        "{home}"
    );
    assert!(home["counts"].is_null(), "{home}");
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(home_series(&m, "snapring_runs_started_total"), None, "{m}");
    assert_eq!(home_series(&m, "snapring_job_errors"), Some(1.0), "{m}");
    promtool(&m);
    // serve rolled nothing back: the catalog and its journal are as they were.
    assert_eq!(std::fs::read(&f.catalog).unwrap(), hot);
    assert!(journal(&f.catalog).exists());
    // A command that writes the catalog rolls it back: both runs complete again.
    let out = snapring(
        &[
            std::ffi::OsStr::new("--catalog"),
            f.catalog.as_os_str(),
            std::ffi::OsStr::new("history"),
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let home = json(&s.addr, "/api/jobs/home");
    assert_eq!(home["counts"]["runs"], 2, "{home}");
    assert_eq!(home["counts"]["complete"], 2, "{home}");
    assert_eq!(home["errors"], serde_json::json!([]), "{home}");
}

#[test]
fn a_catalog_that_is_not_there_is_said_at_start_and_on_the_overview() {
    let f = fixture();
    let elsewhere = f.t.path().join("not-the-daemons/catalog.db");
    let mut child = Command::new(bin())
        .arg("--catalog")
        .arg(&elsewhere)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&f.cfg)
        .env_remove("SNAPRING_SERVE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("snapring serve: listening on http://")
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut warning = String::new();
        let _ = std::io::BufReader::new(err).read_line(&mut warning);
        let _ = tx.send(warning);
    });
    let s = Serve { child, addr };
    let warning = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .unwrap_or_default();
    let said = format!("no catalog at {}: no runs are shown", elsewhere.display());
    assert!(warning.contains(&said), "{warning}");
    let page = get(&s.addr, "/").body;
    assert!(page.contains(&format!("<p class=\"err\">{said}")), "{page}");
    assert!(page.contains("give it with --catalog"), "{page}");
}

#[test]
fn names_with_quotes_backslashes_and_newlines_stay_valid_metrics_json_and_links() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("src/f"), b"f");
    let p = t.path().display();
    let job = "q\"uo\\te\nnl <b>&amp;";
    let cfg = t.path().join("snapring.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.\"q\\\"uo\\\\te\\nnl <b>&amp;\"]\nsource = \"{p}/src\"\n\
             dest = \"{p}/d\\\"st\\\\x\\ny\"\n"
        ),
    )
    .unwrap();
    let catalog = t.path().join("catalog.db");
    let out = Command::new(bin())
        .arg("--catalog")
        .arg(&catalog)
        .args(["run", job, "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let f = Fixture { t, cfg, catalog };
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let m = get(&s.addr, "/metrics").body;
    promtool(&m);
    assert!(
        m.contains("snapring_snapshots{job_name=\"q\\\"uo\\\\te\\nnl <b>&amp;\",store=\""),
        "{m}"
    );
    let om = http(
        &s.addr,
        "GET",
        "/metrics",
        &["Accept: application/openmetrics-text; version=1.0.0"],
    );
    assert!(om.body.contains("job_name=\"q\\\"uo\\\\te\\nnl <b>&amp;\""));
    let jobs = json(&s.addr, "/api/jobs");
    assert_eq!(jobs[0]["name"], job);
    assert!(jobs[0]["store"].as_str().unwrap().ends_with("/d\"st\\x\ny"));
    let page = get(&s.addr, "/").body;
    let link = format!("href=\"/job/{}\"", seg(job));
    assert!(page.contains(&link) && !page.contains("<b>&amp;"), "{page}");
    let one = get(&s.addr, &format!("/job/{}", seg(job))).body;
    assert!(
        one.contains("q&quot;uo\\te\nnl &lt;b&gt;&amp;amp;"),
        "{one}"
    );
    assert_eq!(
        json(&s.addr, &format!("/api/jobs/{}", seg(job)))["name"],
        job
    );
}

/// `GET path`, failing (not hanging) when no answer comes within 10 s: a server stuck
/// on one request answers no other.
fn get_within(addr: &str, path: &str) -> Got {
    let (tx, rx) = std::sync::mpsc::channel();
    let (a, p) = (addr.to_string(), path.to_string());
    std::thread::spawn(move || {
        let _ = tx.send(http(&a, "GET", &p, &[]));
    });
    let g = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("GET {path}: no answer in 10 s (serve is stuck)"));
    assert_eq!(g.status, 200, "GET {path}: {}", g.body);
    g
}

fn mkfifo(p: &Path) {
    let _ = std::fs::remove_file(p);
    let ok = Command::new("mkfifo").arg(p).status().unwrap().success();
    assert!(ok, "mkfifo {}", p.display());
}

/// The id of the newest run of `home`.
fn home_last_id(addr: &str) -> String {
    json(addr, "/api/jobs/home")["last"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_runs_log_is_shown_only_as_a_plain_file_where_snapring_puts_it() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let id = home_last_id(&s.addr);
    let log = f.t.path().join(format!("dest/.snapring/logs/{id}.log"));
    let tail = |s: &Serve| {
        let api: serde_json::Value =
            serde_json::from_str(&get_within(&s.addr, &format!("/api/runs/{id}")).body).unwrap();
        let page = get_within(&s.addr, &format!("/run/{id}")).body;
        (api["log_tail"].as_str().map(str::to_string), page)
    };
    // A long log: its end only, no more than 16 KiB of it.
    let mut long = String::new();
    for i in 0..20_000 {
        long.push_str(&format!("line {i}\n"));
    }
    std::fs::write(&log, &long).unwrap();
    let (t, _) = tail(&s);
    let t = t.expect("the log's tail");
    assert!(
        t.len() <= 16 * 1024 && t.ends_with("line 19999\n"),
        "{}",
        t.len()
    );
    // The store's owner points the log at a file it cannot read: not shown.
    let secret = f.t.path().join("secret");
    std::fs::write(&secret, "TOP-SECRET-CONTENT\n").unwrap();
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&secret, &log).unwrap();
    let (t, page) = tail(&s);
    assert_eq!(t, None);
    assert!(!page.contains("TOP-SECRET"), "{page}");
    // A hard link to it is no better.
    std::fs::remove_file(&log).unwrap();
    std::fs::hard_link(&secret, &log).unwrap();
    assert_eq!(tail(&s).0, None);
    // The logs folder a symlink to the secret's folder.
    std::fs::remove_file(&log).unwrap();
    let logs = log.parent().unwrap();
    std::fs::rename(logs, f.t.path().join("logs.away")).unwrap();
    let elsewhere = f.t.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join(format!("{id}.log")), "TOP-SECRET-CONTENT\n").unwrap();
    std::os::unix::fs::symlink(&elsewhere, logs).unwrap();
    assert_eq!(tail(&s).0, None);
    std::fs::remove_file(logs).unwrap();
    std::fs::rename(f.t.path().join("logs.away"), logs).unwrap();
    // A path in the catalog outside the logs folders (a forged run record, rebuilt).
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    db.execute(
        "UPDATE runs SET log_path = ?1 WHERE id = ?2",
        rusqlite::params![secret.to_str().unwrap(), id],
    )
    .unwrap();
    assert_eq!(tail(&s).0, None);
    db.execute(
        "UPDATE runs SET log_path = ?1 WHERE id = ?2",
        rusqlite::params![log.to_str().unwrap(), id],
    )
    .unwrap();
    // A fifo as the log neither stalls that page nor every other answer; nor does a
    // device.
    mkfifo(&log);
    assert_eq!(tail(&s).0, None);
    get_within(&s.addr, "/metrics");
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &log).unwrap();
    assert_eq!(tail(&s).0, None);
    // Back to a plain log: shown.
    std::fs::remove_file(&log).unwrap();
    std::fs::write(&log, "the end\n").unwrap();
    assert_eq!(tail(&s).0.as_deref(), Some("the end\n"));
}

#[test]
fn a_fifo_in_a_store_is_an_error_of_that_job_and_stalls_nothing() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    assert_eq!(f.run(EVIL, &f.cfg, &[]), 0);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let state = f.t.path().join("dest2/.snapring/snapshots.json");
    mkfifo(&state);
    let m = get_within(&s.addr, "/metrics").body;
    assert_eq!(home_series(&m, "snapring_job_errors"), Some(0.0), "{m}");
    let errors: Vec<String> = m
        .lines()
        .filter(|l| l.starts_with("snapring_job_errors{") && !l.contains("job_name=\"home\""))
        .map(str::to_string)
        .collect();
    assert_eq!(errors.len(), 1, "{m}");
    assert!(errors[0].ends_with(" 1.0"), "{m}");
    let evil: serde_json::Value =
        serde_json::from_str(&get_within(&s.addr, &format!("/api/jobs/{}", seg(EVIL))).body)
            .unwrap();
    let e = evil["errors"].to_string();
    assert!(
        e.contains(&state.display().to_string()) && e.contains("fifo"),
        "{e}"
    );
    get_within(&s.addr, "/");
    // `list` says the same, at once.
    let mut child = Command::new(bin())
        .args(["list", "--dest"])
        .arg(f.t.path().join("dest2"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed().as_secs() > 10 {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("list --dest with a fifo in the store: stuck");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(
        err.contains(&state.display().to_string()) && err.contains("fifo"),
        "{err}"
    );
    // A fifo as the progress file of a run the catalog says is running (the store's
    // lock file, a fifo too, is no better).
    std::fs::remove_file(&state).unwrap();
    let id = home_last_id(&s.addr);
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    db.execute(
        "UPDATE runs SET status = 'running', report = json_set(report, '$.status', 'running') WHERE id = ?1",
        [&id],
    )
    .unwrap();
    mkfifo(&f.t.path().join("dest/.snapring/progress.json"));
    mkfifo(&f.t.path().join("dest/.snapring/lock"));
    get_within(&s.addr, "/metrics");
    get_within(&s.addr, "/job/home");
}

/// The value of `name` for job `job` in a metrics text.
fn job_series(metrics: &str, name: &str, job: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("job_name=\"{job}\"")))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

#[test]
fn a_repository_job_shows_its_snapshots_from_the_catalog_without_a_store_error() {
    let f = fixture();
    let p = f.t.path();
    let pw = p.join("pw");
    std::fs::write(&pw, "pw-123456\n").unwrap();
    let url = format!("file://{}/repo", p.display());
    let out = snapring(
        &[
            "init".as_ref(),
            "--dest".as_ref(),
            url.as_ref(),
            "--password-file".as_ref(),
            pw.as_os_str(),
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    std::fs::write(
        &f.cfg,
        format!(
            "[job.repo]\nsource = \"{}/src\"\ndest = \"{url}\"\npassword_file = \"{}\"\n",
            p.display(),
            pw.display()
        ),
    )
    .unwrap();
    let tf = p.join("textfile");
    std::fs::create_dir(&tf).unwrap();
    for _ in 0..2 {
        let out = f
            .run_cmd("repo", &f.cfg, &[], "")
            .arg("--textfile")
            .arg(&tf)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        write(&p.join("src/d0/new"), b"changed");
    }
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let m = get(&s.addr, "/metrics").body;
    let series = |n: &str| job_series(&m, n, "repo");
    assert_eq!(series("snapring_job_errors"), Some(0.0), "{m}");
    assert_eq!(series("snapring_snapshots"), Some(2.0), "{m}");
    let age = series("snapring_newest_snapshot_age_seconds").expect("an age");
    assert!((0.0..600.0).contains(&age), "{age}");
    assert!(series("snapring_store_free_bytes").is_some(), "{m}");
    promtool(&m);
    let api = json(&s.addr, "/api/jobs/repo");
    assert_eq!(api["errors"], serde_json::json!([]), "{api}");
    let snaps = api["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2, "{api}");
    assert_eq!(snaps[0]["run_id"], api["last"]["id"], "{api}");
    assert!(snaps[0]["bytes_total"].is_u64(), "{api}");
    let page = get(&s.addr, "/").body;
    assert!(!page.contains("has no .snapring"), "{page}");
    let text = std::fs::read_dir(&tf)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<String>();
    assert_eq!(
        job_series(&text, "snapring_job_errors", "repo"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        job_series(&text, "snapring_snapshots", "repo"),
        Some(2.0),
        "{text}"
    );
}

/// Job `home` with one worker: its first run, then five files changed and a second run
/// paused in its third copy, its progress written: (that run, its pause file).
fn second_run_paused(f: &Fixture) -> (Child, PathBuf) {
    f.write_cfg(&f.cfg, "jobs = 1");
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    for i in 0..5 {
        write(&f.t.path().join(format!("src/d{i}/f{i}")), b"changed!");
    }
    let pause = f.t.path().join("paused");
    let fp = format!("walk.copy=pause:{}@3", pause.display());
    let child = f
        .run_cmd("home", &f.cfg, &[], &fp)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&pause);
    progress_with_eta(&f.t.path().join("dest/.snapring/progress.json"));
    (child, pause)
}

/// Whether job `home`'s `snapring_last_run_status` series for `status` is 1 in `m`
/// (`None`: no such series).
fn home_last_status(m: &str, status: &str) -> Option<bool> {
    m.lines()
        .find(|l| {
            l.starts_with("snapring_last_run_status{")
                && l.contains("job_name=\"home\"")
                && l.contains(&format!("status=\"{status}\""))
        })
        .map(|l| l.ends_with(" 1.0"))
}

/// A scheduled run refused because the job's run started by hand still holds the store
/// (exit 75, recorded `failed` and notified) does not hide that run: the dashboard and
/// /metrics show it running, with its progress; the refused run is in `recent`.
#[test]
fn a_run_refused_because_the_store_is_in_use_does_not_hide_the_run_holding_it() {
    let f = fixture();
    let (mut child, pause) = second_run_paused(&f);
    assert_eq!(f.run("home", &f.cfg, &[]), 75, "the store is in use");
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let api = json(&s.addr, "/api/jobs/home");
    assert_eq!(api["recent"][0]["status"], "failed", "{api}");
    assert_eq!(api["recent"][1]["status"], "running", "{api}");
    assert_eq!(api["last"]["status"], "running", "{api}");
    assert_eq!(api["last"]["id"], api["recent"][1]["id"], "{api}");
    assert_eq!(api["progress"]["files_done"], 3, "{api}");
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(home_last_status(&m, "running"), Some(true), "{m}");
    assert_eq!(home_last_status(&m, "failed"), Some(false), "{m}");
    assert_eq!(
        home_series(&m, "snapring_run_progress_files"),
        Some(3.0),
        "{m}"
    );
    promtool(&m);
    std::fs::remove_file(&pause).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    // Once it ends it is the last run (it ended after the refused one, though it
    // started before): shown as it ended, not hidden behind the refused run either.
    let api = json(&s.addr, "/api/jobs/home");
    assert_eq!(api["recent"][0]["status"], "failed", "{api}");
    assert_eq!(api["recent"][1]["status"], "complete", "{api}");
    assert_eq!(api["last"]["status"], "complete", "{api}");
    assert!(api["progress"].is_null(), "{api}");
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(home_last_status(&m, "complete"), Some(true), "{m}");
    // A later run refused with nothing running: that one is the last, `failed`.
    // The store's lock (an `flock`) held by this process: not a backup of the job.
    let held = std::fs::File::options()
        .append(true)
        .open(f.t.path().join("dest/.snapring/lock"))
        .unwrap();
    held.lock().unwrap();
    assert_eq!(f.run("home", &f.cfg, &[]), 75);
    drop(held);
    let api = json(&s.addr, "/api/jobs/home");
    assert_eq!(api["last"]["status"], "failed", "{api}");
    assert_eq!(api["last"]["exit_code"], 75, "{api}");
}

#[test]
fn a_killed_backup_shows_as_incomplete_not_running() {
    let f = fixture();
    let (mut child, _pause) = second_run_paused(&f);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    assert_eq!(
        home_last_status(&get(&s.addr, "/metrics").body, "running"),
        Some(true)
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let api = json(&s.addr, "/api/jobs/home");
    assert_eq!(api["last"]["status"], "incomplete", "{api}");
    assert!(api["progress"].is_null(), "{api}");
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(home_last_status(&m, "running"), Some(false), "{m}");
    assert_eq!(home_series(&m, "snapring_run_eta_seconds"), None, "{m}");
    promtool(&m);
    let page = get(&s.addr, "/").body;
    assert!(!page.contains("class=\"progress\""), "{page}");
    // What the next command records.
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let runs = json(&s.addr, "/api/jobs/home")["recent"].clone();
    assert_eq!(runs[1]["status"], "incomplete", "{runs}");
}

#[test]
fn a_run_dated_in_the_future_does_not_hide_later_failures() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    // Made while the clock was 30 days ahead.
    let ahead = (chrono::Utc::now() + chrono::Duration::days(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    db.execute(
        "UPDATE runs SET started_at = ?1, report = json_set(report, '$.started_at', ?1)",
        [&ahead],
    )
    .unwrap();
    let failing = f.t.path().join("failing.toml");
    f.write_cfg(&failing, "require_mount = true");
    assert_eq!(f.run("home", &failing, &[]), 1);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let api = json(&s.addr, "/api/jobs/home");
    assert_eq!(api["last"]["status"], "failed", "{api}");
    assert_eq!(api["recent"][1]["started_at"], ahead.as_str(), "{api}");
    let m = get(&s.addr, "/metrics").body;
    let failed = m.lines().find(|l| {
        l.starts_with("snapring_last_run_status{")
            && l.contains("job_name=\"home\"")
            && l.contains("status=\"failed\"")
    });
    assert!(failed.is_some_and(|l| l.ends_with(" 1.0")), "{m}");
}

/// Gives run `id` `n` problems, in its record and as the catalog's rows, as a run that
/// met `n` unreadable files records them.
fn give_problems(db: &rusqlite::Connection, id: &str, n: usize) {
    let problems: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "path": format!("some/rather/long/directory/name/file-{i:05}.dat"),
                "kind": "unreadable",
                "action": "skipped",
                "error": "Permission denied (os error 13)",
            })
        })
        .collect();
    db.execute(
        "UPDATE runs SET errors = ?2, status = 'partial',
            report = json_set(report, '$.problems', json(?3), '$.errors', ?2,
                '$.status', 'partial')
         WHERE id = ?1",
        rusqlite::params![id, n as i64, serde_json::to_string(&problems).unwrap()],
    )
    .unwrap();
    for p in &problems {
        db.execute(
            "INSERT INTO problems (run_id, path, kind, action, error) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![
                id,
                p["path"].as_str(),
                p["kind"].as_str(),
                p["action"].as_str(),
                p["error"].as_str()
            ],
        )
        .unwrap();
    }
}

/// The overview, `/metrics` and `/api/jobs` read what they show of each job's newest
/// run (its counts), not its list of problems: a run lists up to 10,000, and with 32
/// such jobs `/api/jobs` was 105 MB and serve kept 245 MB. The run's own page lists
/// them a page at a time, with how many there are and where the next page starts.
#[test]
fn a_newest_run_with_thousands_of_problems_keeps_the_overview_and_metrics_small() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    assert_eq!(f.run(EVIL, &f.cfg, &[]), 0);
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    let ids: Vec<String> = db
        .prepare("SELECT id FROM runs")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ids.len(), 2);
    for id in &ids {
        give_problems(&db, id, 3000);
    }
    drop(db);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let jobs = get(&s.addr, "/api/jobs").body;
    assert!(jobs.len() < 2 * 16_000, "/api/jobs is {} bytes", jobs.len());
    let jobs: serde_json::Value = serde_json::from_str(&jobs).unwrap();
    for j in jobs.as_array().unwrap() {
        assert_eq!(j["last"]["errors"], 3000, "{j}");
        assert_eq!(j["last"]["problems_not_listed"], 3000, "{j}");
        assert_eq!(j["last"]["problems"].as_array().unwrap().len(), 0, "{j}");
    }
    let m = get(&s.addr, "/metrics").body;
    assert!(m.len() < 40_000, "/metrics is {} bytes", m.len());
    assert_eq!(
        home_series(&m, "snapring_last_run_problems"),
        Some(3000.0),
        "{m}"
    );
    let page = get(&s.addr, "/").body;
    assert!(page.len() < 20_000, "/ is {} bytes", page.len());
    let job = get(&s.addr, "/api/jobs/home").body;
    assert!(job.len() < 30_000, "/api/jobs/home is {} bytes", job.len());

    // The run's page: a page of its problems, the count, the next page.
    let id = json(&s.addr, "/api/jobs/home")["last"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = get(&s.addr, &format!("/api/runs/{id}")).body;
    assert!(run.len() < 200_000, "/api/runs/ID is {} bytes", run.len());
    let run: serde_json::Value = serde_json::from_str(&run).unwrap();
    assert_eq!(run["problems"].as_array().unwrap().len(), 500, "{run}");
    assert_eq!(run["problems_listed"], 3000);
    assert_eq!(run["problems_next"], 500);
    assert_eq!(run["report"]["errors"], 3000);
    assert!(
        run["problems"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("file-00000.dat")
    );
    let last = json(&s.addr, &format!("/api/runs/{id}?from=2900"));
    assert_eq!(last["problems"].as_array().unwrap().len(), 100);
    assert!(last["problems_next"].is_null(), "{last}");
    assert!(
        last["problems"][99]["path"]
            .as_str()
            .unwrap()
            .ends_with("file-02999.dat")
    );
    let html = get(&s.addr, &format!("/run/{id}")).body;
    assert!(html.len() < 200_000, "/run/ID is {} bytes", html.len());
    assert!(html.contains("<h2>Problems (3000)</h2>"), "{html}");
    assert!(html.contains("problems 1–500 of 3000 listed"), "{html}");
    assert!(
        html.contains(&format!("/run/{id}?from=500\">next 500</a>")),
        "{html}"
    );
    // `snapring show` still lists them all.
    let out = Command::new(bin())
        .arg("--catalog")
        .arg(&f.catalog)
        .args(["show", &id, "--json"])
        .output()
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["problems"].as_array().unwrap().len(), 3000);
}

/// A killed run (kill -9) is `incomplete` on its own page as on the overview, and has no
/// duration (`–`, not "0 ms"): none in the charts, the history, `snapring stats`.
#[test]
fn a_killed_run_is_incomplete_on_its_page_too_and_has_no_duration() {
    let f = fixture();
    let (mut child, _pause) = second_run_paused(&f);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let id = json(&s.addr, "/api/jobs/home")["last"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = json(&s.addr, &format!("/api/runs/{id}"));
    assert_eq!(run["report"]["status"], "running", "{run}");
    let html = get(&s.addr, &format!("/run/{id}")).body;
    assert!(
        html.contains("took –"),
        "a running run has no duration yet: {html}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let run = json(&s.addr, &format!("/api/runs/{id}"));
    assert_eq!(run["report"]["status"], "incomplete", "{run}");
    let html = get(&s.addr, &format!("/run/{id}")).body;
    assert!(html.contains("status incomplete"), "{html}");
    assert!(!html.contains("0 ms"), "{html}");
    let page = get(&s.addr, "/").body;
    assert!(!page.contains(">0 ms<"), "{page}");
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(
        home_series(&m, "snapring_last_run_duration_seconds"),
        None,
        "{m}"
    );
    // Recorded by the next run: still no duration in the history, the charts or stats.
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let jp = get(&s.addr, "/job/home").body;
    assert!(
        jp.contains("incomplete</span></td><td class=\"num\">–</td>"),
        "{jp}"
    );
    let durations = jp
        .split("aria-label=\"duration\"")
        .nth(1)
        .unwrap()
        .split("</svg>")
        .next()
        .unwrap();
    assert_eq!(
        durations.matches("class=\"pt\"").count(),
        2,
        "the killed run is plotted: {durations}"
    );
    let out = Command::new(bin())
        .arg("--catalog")
        .arg(&f.catalog)
        .args(["stats", "--json"])
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let home = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["job"] == "home")
        .unwrap()
        .clone();
    assert_eq!(home["incomplete"], 1, "{home}");
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    let mean: f64 = db
        .query_row(
            "SELECT avg(duration_seconds) FROM runs WHERE job = 'home' AND finished_at IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let got = home["duration_mean_seconds"].as_f64().unwrap();
    assert!(
        (got - mean).abs() < 1e-9,
        "mean {got}, of the finished runs {mean}: {home}"
    );
}

/// A job named `.` or `..` is refused: its page `/job/..` would be `/` in any browser.
#[test]
fn a_job_named_dot_or_dot_dot_is_refused() {
    let t = tempfile::tempdir().unwrap();
    for name in [".", ".."] {
        let cfg = t.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "[job.\"{name}\"]\nsource = \"{p}/src\"\ndest = \"{p}/dest\"\n",
                p = t.path().display()
            ),
        )
        .unwrap();
        let out = Command::new(bin())
            .args(["config", "check"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{name:?} accepted: {err}");
        assert!(err.contains(&format!("cannot be named {name:?}")), "{err}");
    }
}

/// A long job name without break points wraps in its cell rather than push the
/// overview's other columns off screen.
#[test]
fn a_long_job_name_wraps_in_its_cell() {
    let f = fixture();
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let css = get(&s.addr, "/style.css").body;
    assert!(
        css.contains("td.name,h1,code{overflow-wrap:anywhere}"),
        "{css}"
    );
    let page = get(&s.addr, "/").body;
    assert!(
        page.contains("<td class=\"name\"><a href=\"/job/home\">"),
        "{page}"
    );
}

/// A run page's `?from=N`: a page after the first links back to the first and the
/// previous page; a `from` at or past the end says there is nothing there, with the
/// right numbers and a way back ("problems 3000–3000 of 3000 listed" over no rows, and
/// "5–5 of 0"); a `from` that is not a whole number is a 400 saying why, on the page and
/// the API. It was taken as 0: the first page, 200.
#[test]
fn a_run_pages_from_past_the_end_or_malformed_is_answered_as_such() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    assert_eq!(f.run(EVIL, &f.cfg, &[]), 0);
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    let ids: Vec<String> = db
        .prepare("SELECT id FROM runs ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let (id, clean) = (&ids[0], &ids[1]);
    give_problems(&db, id, 1200);
    drop(db);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let page = |q: &str| get(&s.addr, &format!("/run/{id}{q}")).body;

    let second = page("?from=500");
    assert!(
        second.contains("problems 501–1000 of 1200 listed"),
        "{second}"
    );
    for link in [
        format!("<a href=\"/run/{id}\">first</a>"),
        format!("<a href=\"/run/{id}\">previous 500</a>"),
        format!("<a href=\"/run/{id}?from=1000\">next 200</a>"),
    ] {
        assert!(second.contains(&link), "{link}: {second}");
    }
    let third = page("?from=1000");
    assert!(
        third.contains("problems 1001–1200 of 1200 listed"),
        "{third}"
    );
    assert!(
        third.contains(&format!("<a href=\"/run/{id}?from=500\">previous 500</a>")),
        "{third}"
    );
    assert!(!third.contains("next"), "{third}");
    assert!(!page("").contains(">previous"));

    for q in ["?from=1200", "?from=20000", "?from=18446744073709551615"] {
        let past = page(q);
        assert!(
            past.contains("no problems past the 1200 listed"),
            "{q}: {past}"
        );
        assert!(!past.contains("1200–1200"), "{q}: {past}");
        assert!(
            past.contains(&format!("<a href=\"/run/{id}\">first page</a>"))
                && past.contains(&format!("<a href=\"/run/{id}?from=1000\">last page</a>")),
            "{q}: {past}"
        );
        let api = json(&s.addr, &format!("/api/runs/{id}{q}"));
        assert_eq!(api["problems"].as_array().unwrap().len(), 0, "{q}");
        assert_eq!(api["problems_listed"], 1200, "{q}");
        assert!(api["problems_next"].is_null(), "{q}: {api}");
        assert_eq!(api["problems_previous"], 1000, "{q}: {api}");
    }
    let none = get(&s.addr, &format!("/run/{clean}?from=5")).body;
    assert!(none.contains("no problems listed"), "{none}");
    assert!(!none.contains("5–5"), "{none}");

    for bad in [
        "-1",
        "abc",
        "1e3",
        "0x10",
        "+5",
        "18446744073709551616",
        "",
        "%2D1",
    ] {
        for path in [format!("/run/{id}"), format!("/api/runs/{id}")] {
            let got = http(&s.addr, "GET", &format!("{path}?from={bad}"), &[]);
            assert_eq!(got.status, 400, "{path}?from={bad}: {}", got.body);
            assert!(
                got.body.starts_with(&format!("bad from={bad:?}: ")),
                "{path}?from={bad}: {}",
                got.body
            );
        }
    }
    // Another parameter, or `from` in the fragment, is not a `from`.
    assert!(page("?x=1&y=abc").contains("problems 1–500 of 1200 listed"));
    assert!(page("#from=abc").contains("problems 1–500 of 1200 listed"));
}

/// `snapring_catalog_writable{catalog=…}` in `metrics`, if there.
fn catalog_writable(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with("snapring_catalog_writable{catalog="))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

/// A catalog that cannot be written (its file system read-only, or full) is 0 in
/// `snapring_catalog_writable` and a note on the overview, at once and without a
/// failed write: runs go on without their rows, and nothing else said so. 1 again once
/// it can be written.
#[test]
fn metrics_say_when_the_catalog_cannot_be_written() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let state = f.catalog.parent().unwrap().to_path_buf();
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let m = get(&s.addr, "/metrics").body;
    assert!(
        m.contains(&format!(
            "snapring_catalog_writable{{catalog=\"{}\"}} 1",
            f.catalog.display()
        )),
        "{m}"
    );
    promtool(&m);
    {
        let Some(_ro) = common::state::ro_mount_or_skip(&state, &state) else {
            return;
        };
        let m = get(&s.addr, "/metrics").body;
        assert_eq!(catalog_writable(&m), Some(0.0), "{m}");
        promtool(&m);
        let page = get(&s.addr, "/").body;
        assert!(
            page.contains("cannot be written") && page.contains("mounted read-only"),
            "{page}"
        );
        // Its figures are still read.
        assert_eq!(home_series(&m, "snapring_runs_started_total"), Some(1.0));
    }
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(catalog_writable(&m), Some(1.0), "{m}");
    // A full file system: a small tmpfs over the catalog's directory, filled.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&state)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        println!("skipped the full case: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _tmpfs = Unmount(state.clone());
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(catalog_writable(&m), Some(1.0), "an empty tmpfs: {m}");
    let fill = state.join("fill");
    let mut file = std::fs::File::create(&fill).unwrap();
    while file.write_all(&[0u8; 65536]).is_ok() {}
    drop(file);
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(catalog_writable(&m), Some(0.0), "{m}");
    promtool(&m);
    assert!(get(&s.addr, "/").body.contains("is full"));
    std::fs::remove_file(&fill).unwrap();
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(catalog_writable(&m), Some(1.0), "{m}");
}

/// A store copied with `cp -a` (new inodes) whose tree no longer matches its manifest is
/// walked to find that out; serve opens the store on every request, and walked it on
/// every request until a backup recorded the verdict. Now once per process.
#[test]
fn serve_walks_a_copied_tree_that_differs_once_not_per_request() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let dest = f.t.path().join("dest");
    let copy = f.t.path().join("dest.copy");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&dest)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::remove_dir_all(&dest).unwrap();
    std::fs::rename(&copy, &dest).unwrap();
    set_mtime(&dest.join("daily.0/d0/f0"), 1_577_836_800, 0);

    let log = f.t.path().join("serve.log");
    let s = serve_logging_to(
        &f,
        "127.0.0.1:0",
        &[],
        &[],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    for _ in 0..3 {
        let g = get(&s.addr, "/job/home");
        assert_eq!(g.status, 200, "{}", g.body);
        assert!(g.body.contains("<td>daily.0</td>"), "{}", g.body);
    }
    // A walk now would find a second difference: the first verdict stands.
    set_mtime(&dest.join("daily.0/d1/f1"), 1_577_836_800, 0);
    assert_eq!(get(&s.addr, "/").status, 200);
    drop(s);
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        log.matches("does not match run").count(),
        1,
        "the copied tree was walked more than once:\n{log}"
    );
    assert!(log.contains("1 differences, first d0/f0"), "{log}");
}

/// `snapring_catalog_present{catalog=…}` in `metrics`, if there.
fn catalog_present(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with("snapring_catalog_present{catalog="))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

/// A catalog deleted while `serve` runs is an error of every job (`errors`,
/// `snapring_job_errors`) and `snapring_catalog_present` 0: every `last_run_status` and
/// counter series went away, `snapring_job_errors` stayed 0, `errors` `[]` and
/// `snapring_catalog_writable` 1, so no documented alert fired; only the overview said
/// "no catalog". A `serve` started without the catalog says so of a job whose store
/// has snapshots (runs were made), not of one that never ran.
#[test]
fn a_catalog_deleted_under_serve_is_an_error_of_every_job_not_silence() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(catalog_present(&m), Some(1.0), "{m}");
    assert_eq!(home_series(&m, "snapring_job_errors"), Some(0.0), "{m}");
    assert_eq!(
        home_series(&m, "snapring_runs_started_total"),
        Some(1.0),
        "{m}"
    );
    std::fs::remove_file(&f.catalog).unwrap();
    let m = get(&s.addr, "/metrics").body;
    promtool(&m);
    assert_eq!(catalog_present(&m), Some(0.0), "{m}");
    assert_eq!(home_series(&m, "snapring_job_errors"), Some(1.0), "{m}");
    assert_eq!(home_series(&m, "snapring_runs_started_total"), None, "{m}");
    let jobs = json(&s.addr, "/api/jobs");
    for j in jobs.as_array().unwrap() {
        let e = j["errors"].to_string();
        assert!(
            e.contains(&format!("the catalog {} is gone", f.catalog.display()))
                && e.contains("runs are unknown, not none"),
            "{j}"
        );
        assert!(j["counts"].is_null(), "{j}");
    }
    let home = json(&s.addr, "/api/jobs/home");
    assert!(home["errors"].to_string().contains("is gone"), "{home}");
    let page = get(&s.addr, "/").body;
    assert!(page.contains("is gone (deleted or moved"), "{page}");
    drop(s);
    // Started without it: the job whose store has snapshots has the error, the job
    // that never ran none.
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(catalog_present(&m), Some(0.0), "{m}");
    assert_eq!(home_series(&m, "snapring_job_errors"), Some(1.0), "{m}");
    let home = json(&s.addr, "/api/jobs/home");
    assert!(
        home["errors"]
            .to_string()
            .contains("does not exist, though the job's store has snapshots"),
        "{home}"
    );
    let evil = json(&s.addr, &format!("/api/jobs/{}", seg(EVIL)));
    assert_eq!(evil["errors"], serde_json::json!([]), "{evil}");
    // A run makes a new catalog: its row is read, the error is gone.
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(catalog_present(&m), Some(1.0), "{m}");
    assert_eq!(home_series(&m, "snapring_job_errors"), Some(0.0), "{m}");
}

/// `snapring serve ARGS…` with the fixture's config, run to its end (it fails at start);
/// returns (exit, stderr).
fn serve_fails(f: &Fixture, pre: &[&str], args: &[&str], catalog: &Path) -> (i32, String) {
    let out = Command::new("setpriv")
        .args(pre)
        .arg(bin())
        .arg("--catalog")
        .arg(catalog)
        .args(["serve", "--config"])
        .arg(&f.cfg)
        .args(args)
        .env_remove("SNAPRING_SERVE_TOKEN")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What stops `serve` at start says what to do: a port another process listens on
/// (it said only "Address already in use"), a port below 1024 without the capability
/// ("Permission denied"), `--listen localhost:0` (clap's "invalid socket address
/// syntax"), and a catalog that is a fifo (each request a 500 of "disk I/O error").
#[test]
fn serve_says_what_to_do_when_it_cannot_start() {
    let f = fixture();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (code, err) = serve_fails(
        &f,
        &[],
        &["--listen", &format!("127.0.0.1:{port}")],
        &f.catalog,
    );
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(&format!("another process listens on port {port} already"))
            && err.contains("--listen"),
        "{err}"
    );
    let unprivileged: u32 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .map_or(1024, |s| s.trim().parse().unwrap_or(1024));
    if unprivileged > 1 {
        let drop_cap = [
            "--bounding-set=-net_bind_service",
            "--inh-caps=-net_bind_service",
        ];
        let (code, err) = serve_fails(&f, &drop_cap, &["--listen", "127.0.0.1:1"], &f.catalog);
        assert_ne!(code, 0, "{err}");
        assert!(
            err.contains("ports below 1024 need root or the capability CAP_NET_BIND_SERVICE"),
            "{err}"
        );
    } else {
        println!("skipped the privileged port: every port is unprivileged here");
    }
    let (code, err) = serve_fails(&f, &[], &["--listen", "localhost:0"], &f.catalog);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("\"localhost:0\" is not ADDR:PORT") && err.contains("give 127.0.0.1"),
        "{err}"
    );
    let fifo = f.t.path().join("fifo.db");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let (code, err) = serve_fails(&f, &[], &["--listen", "127.0.0.1:0"], &fifo);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("is a fifo (named pipe), not a regular file"),
        "{err}"
    );
    // The daemon too, at start, before the lock file it makes beside the catalog.
    let mut daemon = Command::new(bin())
        .arg("--catalog")
        .arg(&fifo)
        .args(["daemon", "--config"])
        .arg(&f.cfg)
        .env("SMTP_PW", "pa55-SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while daemon.try_wait().unwrap().is_none() && t0.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = daemon.kill();
    let out = daemon.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is a fifo (named pipe), not a regular file"),
        "{:?}: {err}",
        out.status
    );
    assert!(!f.t.path().join("fifo.db.daemon.lock").exists());
}

/// `snapring copy` runs from cron, outside the config's jobs: its copies show on the
/// overview, in `/api/copies` and in `/metrics` per store and repository, under the job
/// whose store they copy (docs/monitoring.md, "Copies"). A failed nightly copy is
/// `snapring_copy_last_status{status="failed"} 1`, the last complete one's time stays,
/// and the job's own runs do not count the copies. They were nowhere.
#[test]
fn copies_show_on_the_overview_in_the_api_and_in_metrics() {
    let f = fixture();
    let p = f.t.path();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let url = format!("file://{}/repo", p.display());
    let sr = |args: &[&str], password: &str| {
        let mut a: Vec<&std::ffi::OsStr> = vec!["--catalog".as_ref(), f.catalog.as_os_str()];
        a.extend(args.iter().map(std::ffi::OsStr::new));
        snapring(&a, &[("SNAPRING_PASSWORD", password)])
    };
    let out = sr(&["init", "--dest", &url], "pw-123456");
    assert!(out.status.success(), "{out:?}");
    let store = p.join("dest");
    let copy = [
        "copy",
        "--dest",
        store.to_str().unwrap(),
        "latest",
        "--to",
        &url,
        "--json",
    ];
    let out = sr(&copy, "pw-123456");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let good: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = sr(&copy, "wrong-password");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let bad: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let m = get(&s.addr, "/metrics").body;
    let series = |name: &str, extra: &str| {
        m.lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{"))
                    && l.contains("job_name=\"home\"")
                    && l.contains(&format!("to=\"{url}\""))
                    && l.contains(extra)
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
    };
    assert_eq!(
        series("snapring_copy_last_status", "status=\"failed\""),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        series("snapring_copy_last_status", "status=\"complete\""),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        series("snapring_copy_runs_started_total", ""),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        series("snapring_copy_runs_failed_total", ""),
        Some(1.0),
        "{m}"
    );
    let done = series("snapring_copy_last_success_timestamp_seconds", "").expect("a success");
    let finished = chrono::DateTime::parse_from_rfc3339(good["finished_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis() as f64
        / 1e3;
    assert!((done - finished).abs() < 0.01, "{done} {finished}");
    let age = series("snapring_copy_last_success_age_seconds", "").unwrap();
    assert!((0.0..600.0).contains(&age), "{age}");
    // The job's runs are its backups: one, not three.
    assert_eq!(
        job_series(&m, "snapring_runs_started_total", "home"),
        Some(1.0),
        "{m}"
    );
    promtool(&m);

    let api = json(&s.addr, "/api/copies");
    let all = api.as_array().unwrap();
    assert_eq!(all.len(), 1, "{api}");
    assert_eq!(all[0]["job"], "home", "{api}");
    assert_eq!(all[0]["to"], url.as_str(), "{api}");
    assert_eq!(all[0]["last"]["id"], bad["id"], "{api}");
    assert_eq!(all[0]["last"]["status"], "failed", "{api}");
    assert_eq!(all[0]["counts"]["runs"], 2, "{api}");
    let page = get(&s.addr, "/").body;
    assert!(page.contains("Copies into repositories"), "{page}");
    assert!(page.contains(&url), "{page}");
    assert!(
        page.contains(&format!("/run/{}", bad["id"].as_str().unwrap())),
        "{page}"
    );
}

/// RFC 9112 §3.2 and §2.2 on a raw socket: a request with two `Host` headers was
/// answered for the first (400 now), an HTTP/1.1 request without one was answered
/// (400 now; HTTP/1.0 needs none), and a head with bare LF line ends waited 10 s for a
/// 408 (taken now, as §2.2 allows). A CR inside a line is refused.
#[test]
fn host_headers_and_line_ends_are_taken_as_rfc_9112_says() {
    let f = fixture();
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let addr = s.addr.as_str();
    for (req, want) in [
        (
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nHost: evil.example\r\n\r\n"),
            "HTTP/1.1 400 ",
        ),
        ("GET / HTTP/1.1\r\n\r\n".to_string(), "HTTP/1.1 400 "),
        ("GET / HTTP/1.0\r\n\r\n".to_string(), "HTTP/1.1 200 "),
        (format!("GET / HTTP/1.1\nHost: {addr}\n\n"), "HTTP/1.1 200 "),
        (
            format!("GET / HTTP/1.1\r\nHost: {addr}\n\r\n"),
            "HTTP/1.1 200 ",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: {addr}\rX-A: b\r\n\r\n"),
            "HTTP/1.1 400 ",
        ),
    ] {
        let t0 = std::time::Instant::now();
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        c.write_all(req.as_bytes()).unwrap();
        let mut got = Vec::new();
        let read = c.read_to_end(&mut got);
        let got = String::from_utf8_lossy(&got);
        assert!(
            read.is_ok() && got.starts_with(want),
            "{req:?}: {read:?} after {:?}: {got}",
            t0.elapsed()
        );
    }
}

/// A token file every user can read was taken without a word: `serve` warns (as ssh
/// does of a private key), naming the file and its mode, and serves; a 0600 one has no
/// warning.
#[test]
fn a_token_file_every_user_can_read_is_warned_of() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture();
    let token = f.t.path().join("token");
    std::fs::write(&token, "correct-horse-battery-staple\n").unwrap();
    let tf = token.to_str().unwrap();
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        let log = f.t.path().join("serve.log");
        let s = serve_logging_to(
            &f,
            "127.0.0.1:0",
            &["--token-file", tf],
            &[],
            Stdio::from(std::fs::File::create(&log).unwrap()),
        );
        let ok = http(
            &s.addr,
            "GET",
            "/",
            &["Authorization: Bearer correct-horse-battery-staple"],
        );
        assert_eq!(ok.status, 200);
        drop(s);
        let log = std::fs::read_to_string(&log).unwrap();
        let want = format!(
            "snapring: warning: the token file {tf} is readable by every user of this machine (mode 0644)"
        );
        assert_eq!(log.contains(&want), warned, "{mode:o}: {log}");
        assert_eq!(log.contains("token file"), warned, "{mode:o}: {log}");
    }
}

/// A catalog that is a symbolic link to a deleted file was counted present
/// (`snapring_catalog_present` 1, no error of any job); a `serve` started on such a
/// link is refused, naming it and its target.
#[test]
fn a_catalog_link_to_a_deleted_file_is_not_present() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let real = f.catalog.with_file_name("real.db");
    std::fs::rename(&f.catalog, &real).unwrap();
    std::os::unix::fs::symlink(&real, &f.catalog).unwrap();
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(catalog_present(&m), Some(1.0), "{m}");
    assert_eq!(home_series(&m, "snapring_job_errors"), Some(0.0), "{m}");
    std::fs::remove_file(&real).unwrap();
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(catalog_present(&m), Some(0.0), "{m}");
    assert_eq!(home_series(&m, "snapring_job_errors"), Some(1.0), "{m}");
    drop(s);
    let (code, err) = serve_fails(&f, &[], &["--listen", "127.0.0.1:0"], &f.catalog);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}: is a symbolic link to {}, which does not exist",
            f.catalog.display(),
            real.display()
        )),
        "{err}"
    );
    assert!(!real.exists(), "the link's target was created");
}

/// A count edited to -3 in the catalog showed as 18446744073709551613 on the job's
/// page, a time without its offset as if in UTC: both are `invalid` now, with a note
/// naming the run, and `/api` lists them.
#[test]
fn values_edited_into_the_catalog_by_hand_are_shown_invalid() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let conn = rusqlite::Connection::open(&f.catalog).unwrap();
    conn.execute(
        "UPDATE runs SET files_total = -3, started_at = substr(started_at, 1, 19)",
        [],
    )
    .unwrap();
    let id: String = conn
        .query_row("SELECT id FROM runs", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let page = get(&s.addr, "/job/home").body;
    assert!(!page.contains("18446744073709551613"), "{page}");
    let row = page
        .split("<tr class=\"run\">")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap();
    assert_eq!(row.matches(">invalid<").count(), 2, "{row}");
    assert!(
        page.contains(&format!("id=\"invalid\">runs whose rows in the catalog hold values no run writes (edited by hand?), shown as invalid: {id} (files_total -3, started_at &quot;")),
        "{page}"
    );
    let api = json(&s.addr, "/api/jobs/home");
    assert!(
        api.to_string().contains("\"column\":\"files_total\""),
        "{api}"
    );
}

/// The newest run record (by its start) in the store `store`, parsed. Not by file name:
/// two runs within one second have ids that differ by a random suffix.
fn newest_record(store: &Path) -> serde_json::Value {
    std::fs::read_dir(store.join(".snapring/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| serde_json::from_slice::<serde_json::Value>(&std::fs::read(p).unwrap()).unwrap())
        .max_by_key(|r| r["started_at"].as_str().unwrap().to_string())
        .unwrap()
}

/// Session 48 (H2 2, 5b): a run that could not record itself in the catalog (a
/// damaged catalog whose pages serve's reads miss, or one held by a writer past both
/// of the run's waits) failed; its store record says `failed`, the catalog still has
/// the run before it as the newest, `complete`. serve showed that one: `last_run_status
/// {status="complete"} 1`, `job_errors 0`, the counts as if nothing ran, and no alert
/// fired. It now compares the store's newest run record with the catalog: the failed
/// run shows (from its record), `snapring_catalog_behind` is 1, the counts are unknown
/// and the job has an error quoting the run's own warning.
#[test]
fn a_run_the_catalog_could_not_record_shows_from_its_store_record() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let failing = f.t.path().join("failing.toml");
    f.write_cfg(&failing, r#"pre_command = ["false"]"#);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    assert_eq!(f.run("home", &failing, &[]), 1);
    db.execute_batch("ROLLBACK").unwrap();
    let rec = newest_record(&f.t.path().join("dest"));
    assert_eq!(rec["status"], "failed", "{rec}");
    let n: i64 = db
        .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "the failed run reached the catalog");
    let all = json(&s.addr, "/api/jobs");
    let listed = all
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "home")
        .unwrap()
        .clone();
    for api in [json(&s.addr, "/api/jobs/home"), listed] {
        assert_eq!(api["last"]["status"], "failed", "{api}");
        assert_eq!(api["last"]["id"], rec["id"], "{api}");
        assert!(api["counts"].is_null(), "{api}");
        let behind = api["catalog_behind"].as_str().unwrap_or_default();
        assert!(
            behind.contains("the catalog is behind the store") && behind.contains("the run said"),
            "{api}"
        );
        assert!(api["errors"].to_string().contains("behind"), "{api}");
    }
    let m = get(&s.addr, "/metrics").body;
    promtool(&m);
    assert_eq!(home_last_status(&m, "failed"), Some(true), "{m}");
    assert_eq!(home_last_status(&m, "complete"), Some(false), "{m}");
    assert_eq!(home_series(&m, "snapring_catalog_behind"), Some(1.0), "{m}");
    assert_eq!(home_series(&m, "snapring_job_errors"), Some(1.0), "{m}");
    assert_eq!(home_series(&m, "snapring_runs_started_total"), None, "{m}");
    assert!(get(&s.addr, "/").body.contains("behind the store"));
    // The next run brings the missed one into the catalog: nothing behind.
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let m = get(&s.addr, "/metrics").body;
    assert_eq!(home_series(&m, "snapring_catalog_behind"), Some(0.0), "{m}");
    assert_eq!(home_series(&m, "snapring_job_errors"), Some(0.0), "{m}");
    assert_eq!(
        home_series(&m, "snapring_runs_failed_total"),
        Some(1.0),
        "{m}"
    );
}

/// Session 49: serve keeps each job's newest run record in its store while the store's
/// `.snapring/runs/` is unchanged (a `stat` a job for each scrape, not a listing and a
/// read). A failed run the catalog could not record, made after scrapes that kept the
/// record before it, shows at the next scrape, and goes on showing once kept.
#[test]
fn a_run_after_a_kept_store_record_shows_at_the_next_scrape() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let failing = f.t.path().join("failing.toml");
    f.write_cfg(&failing, r#"pre_command = ["false"]"#);
    let settle = || std::thread::sleep(std::time::Duration::from_millis(2100));
    // `runs/` settled (its times 2 s old): a scrape keeps what it read.
    settle();
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    scraped_until_kept(&s.addr);
    for _ in 0..2 {
        let m = get(&s.addr, "/metrics").body;
        assert_eq!(home_last_status(&m, "complete"), Some(true), "{m}");
        assert_eq!(home_series(&m, "snapring_catalog_behind"), Some(0.0), "{m}");
    }
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    assert_eq!(f.run("home", &failing, &[]), 1);
    db.execute_batch("ROLLBACK").unwrap();
    let rec = newest_record(&f.t.path().join("dest"));
    assert_eq!(rec["status"], "failed", "{rec}");
    let shown = |m: &str| {
        assert_eq!(home_last_status(m, "failed"), Some(true), "{m}");
        assert_eq!(home_series(m, "snapring_catalog_behind"), Some(1.0), "{m}");
        assert_eq!(home_series(m, "snapring_runs_started_total"), None, "{m}");
    };
    shown(&get(&s.addr, "/metrics").body);
    settle();
    for _ in 0..2 {
        shown(&get(&s.addr, "/metrics").body);
        let api = json(&s.addr, "/api/jobs");
        let home = api
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == "home")
            .unwrap()
            .clone();
        assert_eq!(home["last"]["id"], rec["id"], "{home}");
    }
}

/// Session 48 (H2 3): the catalog deleted, then another job's run makes a new one with
/// its own store's runs alone. serve showed `home` as a job that never ran (`last`
/// none, counts 0, no error): its `last_run_status` series went, and an alert on its
/// failed newest run resolved. It shows the store's newest run, counts unknown.
#[test]
fn a_catalog_recreated_without_a_jobs_runs_shows_its_store_run_and_unknown_counts() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let failing = f.t.path().join("failing.toml");
    f.write_cfg(&failing, r#"pre_command = ["false"]"#);
    assert_eq!(f.run("home", &failing, &[]), 1);
    std::fs::remove_file(&f.catalog).unwrap();
    assert_eq!(f.run(EVIL, &f.cfg, &[]), 0);
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let api = json(&s.addr, "/api/jobs/home");
    assert_eq!(api["last"]["status"], "failed", "{api}");
    assert!(api["counts"].is_null(), "{api}");
    assert!(!api["catalog_behind"].is_null(), "{api}");
    let m = get(&s.addr, "/metrics").body;
    promtool(&m);
    assert_eq!(home_last_status(&m, "failed"), Some(true), "{m}");
    assert_eq!(home_series(&m, "snapring_catalog_behind"), Some(1.0), "{m}");
    assert_eq!(home_series(&m, "snapring_runs_started_total"), None, "{m}");
    assert!(
        home_series(&m, "snapring_job_errors").unwrap() >= 1.0,
        "{m}"
    );
    // The other job, whose runs the new catalog has, is as it was.
    assert_eq!(
        job_series(&m, "snapring_catalog_behind", EVIL),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        job_series(&m, "snapring_runs_started_total", EVIL),
        Some(1.0),
        "{m}"
    );
}

/// Session 48 (H2 4): a job added to the daemon's config and reloaded (SIGHUP) runs,
/// but its `[server]` kept serving the jobs of the start: `/api/jobs/c` 404, no series
/// of it (a failing new job unseen by monitoring). The server follows the daemon's
/// reloads: the new job is served, and a removed one's series (its `next_run` gauge
/// too) go.
#[test]
fn the_daemons_server_serves_the_jobs_of_a_reloaded_config() {
    let f = fixture();
    let p = f.t.path().display();
    let server = "\n[server]\nlisten = \"127.0.0.1:0\"\n";
    let base = std::fs::read_to_string(&f.cfg).unwrap();
    std::fs::write(&f.cfg, format!("{base}{server}")).unwrap();
    let s = daemon_serving(&f, "/metrics");
    let m = get(&s.addr, "/metrics").body;
    assert!(
        home_series(&m, "snapring_next_run_timestamp_seconds").is_some(),
        "{m}"
    );
    assert_eq!(http(&s.addr, "GET", "/api/jobs/c", &[]).status, 404);
    // `home` removed, `c` added.
    let evil_only = base
        .split("[job.\"")
        .nth(1)
        .map(|rest| format!("[job.\"{rest}"))
        .unwrap();
    std::fs::write(
        &f.cfg,
        format!(
            "[job.c]\nsource = \"{p}/src\"\ndest = \"{p}/dest-c\"\nschedule = \"0 3 * * *\"\n\n{evil_only}{server}"
        ),
    )
    .unwrap();
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let t0 = std::time::Instant::now();
    while http(&s.addr, "GET", "/api/jobs/c", &[]).status != 200 {
        assert!(
            t0.elapsed().as_secs() < 10,
            "the reloaded job c is not served"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let c = json(&s.addr, "/api/jobs/c");
    assert!(c["next_run"].is_string(), "{c}");
    let m = get(&s.addr, "/metrics").body;
    promtool(&m);
    assert!(
        job_series(&m, "snapring_next_run_timestamp_seconds", "c").is_some(),
        "{m}"
    );
    assert!(!m.contains("job_name=\"home\""), "{m}");
    assert_eq!(http(&s.addr, "GET", "/api/jobs/home", &[]).status, 404);
    stop_with_sigterm(s);
}

/// Session 48 (H2 5b): a run's duration is its own, not its wait for the catalog: with
/// a writer holding the catalog, a run whose walk took 0.00 s was recorded as 5.2 s
/// (its start's busy wait), inflating `stats`' p95 and the dashboard.
#[test]
fn a_runs_duration_leaves_out_its_wait_for_a_locked_catalog() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let t0 = std::time::Instant::now();
    assert_eq!(f.run(EVIL, &f.cfg, &[]), 0);
    let took = t0.elapsed().as_secs_f64();
    db.execute_batch("ROLLBACK").unwrap();
    let rec = newest_record(&f.t.path().join("dest2"));
    assert_eq!(rec["status"], "complete", "{rec}");
    assert!(
        rec["warnings"].to_string().contains("catalog"),
        "the run did not wait for the catalog: {rec}"
    );
    let secs = rec["duration_seconds"].as_f64().unwrap();
    assert!(took > 4.0, "the run did not wait for the catalog: {took} s");
    assert!(
        secs < 2.0,
        "the run's duration counts its wait for the catalog: {secs} s of {took} s"
    );
}

/// Waits until every time of the store is more than serve's 2 s old, so that a scrape
/// keeps what it reads of it.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(2100));
}

/// `home` of `/api/jobs`.
fn home_of_api(addr: &str) -> serde_json::Value {
    json(addr, "/api/jobs")
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "home")
        .unwrap()
        .clone()
}

/// `home`'s snapshots in `/api/jobs`, newest first: (name, run id), and
/// `snapring_snapshots` of `/metrics`, which must agree.
fn home_snapshots(addr: &str) -> Vec<(String, String)> {
    let home = home_of_api(addr);
    let snaps: Vec<(String, String)> = home["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let id = s["run_id"].as_str().unwrap_or("").to_string();
            (s["name"].as_str().unwrap().to_string(), id)
        })
        .collect();
    let m = get(addr, "/metrics").body;
    assert_eq!(
        home_series(&m, "snapring_snapshots"),
        Some(snaps.len() as f64),
        "{m}"
    );
    snaps
}

/// Session 50: serve keeps each store's reading (its snapshots, its newest run record)
/// while the store's stamp is unchanged. A rotation journal written after the store's
/// `runs/` last changed (a shard finalize writes its run's record, then publishes;
/// here the journal of a run killed after writing it is put back by hand after a
/// scrape) changes what the store reads as: its run as published. Session 49's stamp
/// was `runs/` alone: with the catalog missing that run's row, serve went on showing
/// the run before it, `catalog_behind` 0. The journal and `.snapring/` are stamped now.
#[test]
fn a_rotation_journal_written_after_a_kept_store_record_shows_its_run() {
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let dest = f.t.path().join("dest");
    let first = newest_record(&dest);
    let out = f
        .run_cmd("home", &f.cfg, &[], "journal.after_write=kill")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let journal = dest.join(".snapring/journal");
    assert!(journal.exists(), "no journal left");
    let rec = newest_record(&dest);
    assert_eq!(rec["status"], "running", "{rec}");
    assert_ne!(rec["id"], first["id"]);
    // The catalog missed the run (held by another writer past the run's waits, say).
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    let id = rec["id"].as_str().unwrap();
    assert_eq!(
        db.execute("DELETE FROM runs WHERE id = ?1", [id]).unwrap(),
        1
    );
    drop(db);
    let aside = f.t.path().join("journal.aside");
    std::fs::rename(&journal, &aside).unwrap();
    settle();
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    scraped_until_kept(&s.addr);
    for _ in 0..2 {
        let m = get(&s.addr, "/metrics").body;
        assert_eq!(home_last_status(&m, "complete"), Some(true), "{m}");
        assert_eq!(home_series(&m, "snapring_catalog_behind"), Some(0.0), "{m}");
        assert_eq!(home_of_api(&s.addr)["last"]["id"], first["id"]);
    }
    std::fs::rename(&aside, &journal).unwrap();
    // Not scraped before the change is settled (a scrape sooner reads afresh whatever
    // the stamp, and keeps nothing).
    settle();
    let shown = || {
        let m = get(&s.addr, "/metrics").body;
        assert_eq!(home_series(&m, "snapring_catalog_behind"), Some(1.0), "{m}");
        assert_eq!(home_last_status(&m, "complete"), Some(true), "{m}");
        let home = home_of_api(&s.addr);
        assert_eq!(home["last"]["id"], rec["id"], "{home}");
        assert_eq!(home["last"]["status"], "complete", "{home}");
        assert_eq!(home["snapshots"][0]["run_id"], rec["id"], "{home}");
    };
    shown();
    shown();
}

/// Session 50: a store's snapshots are kept between scrapes while the store is
/// unchanged. A run that ends while serve runs, and the rotation of a later one (the
/// names moved on, the oldest expired, as many snapshots as before), show at the next
/// scrape, not what was kept.
#[test]
fn kept_snapshots_follow_a_run_that_ends_and_a_rotation() {
    let f = fixture();
    f.write_cfg(&f.cfg, "label = \"daily\"\nretain = 2");
    let dest = f.t.path().join("dest");
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let r1 = newest_record(&dest)["id"].as_str().unwrap().to_string();
    settle();
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    let snap = |n: &str, id: &str| (n.to_string(), id.to_string());
    scraped_until_kept(&s.addr);
    for _ in 0..2 {
        assert_eq!(home_snapshots(&s.addr), [snap("daily.0", &r1)]);
    }
    // A run ends while serve runs: its snapshot shows at the next scrape.
    write(&f.t.path().join("src/d0/second"), b"2");
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let r2 = newest_record(&dest)["id"].as_str().unwrap().to_string();
    let two = [snap("daily.0", &r2), snap("daily.1", &r1)];
    assert_eq!(home_snapshots(&s.addr), two);
    let home = home_of_api(&s.addr);
    assert_eq!(home["last"]["id"], r2.as_str(), "{home}");
    scraped_until_kept(&s.addr);
    for _ in 0..2 {
        assert_eq!(home_snapshots(&s.addr), two);
    }
    // A rotation: daily.0 becomes daily.1, daily.1 expires; two snapshots still. No
    // scrape until it is settled: what is kept must not be given then (a scrape
    // sooner reads afresh whatever the stamp).
    write(&f.t.path().join("src/d0/third"), b"3");
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let r3 = newest_record(&dest)["id"].as_str().unwrap().to_string();
    let rotated = [snap("daily.0", &r3), snap("daily.1", &r2)];
    settle();
    for _ in 0..2 {
        assert_eq!(home_snapshots(&s.addr), rotated);
        let m = get(&s.addr, "/metrics").body;
        assert_eq!(home_last_status(&m, "complete"), Some(true), "{m}");
    }
}

/// Session 50: a snapshot removed by hand (`rm -rf`) while serve keeps the store's
/// snapshots is gone at the next scrape, and the newest snapshot's time is the one
/// left's.
#[test]
fn a_snapshot_removed_by_hand_goes_at_the_next_scrape() {
    let f = fixture();
    f.write_cfg(&f.cfg, "label = \"daily\"\nretain = 2");
    let dest = f.t.path().join("dest");
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let r1 = newest_record(&dest);
    // Its end a second later than the first's: the newest snapshot's time tells them.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write(&f.t.path().join("src/d0/second"), b"2");
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let r2 = newest_record(&dest);
    let id = |r: &serde_json::Value| r["id"].as_str().unwrap().to_string();
    // Its end to the second, as `newest_snapshot_at` gives it.
    let at = |r: &serde_json::Value| format!("{}Z", &r["finished_at"].as_str().unwrap()[..19]);
    assert_ne!(at(&r1), at(&r2));
    settle();
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    scraped_until_kept(&s.addr);
    for _ in 0..2 {
        assert_eq!(
            home_snapshots(&s.addr),
            [("daily.0".into(), id(&r2)), ("daily.1".into(), id(&r1))]
        );
        let home = home_of_api(&s.addr);
        assert_eq!(home["newest_snapshot_at"], at(&r2), "{home}");
    }
    let rm = Command::new("rm")
        .arg("-rf")
        .arg(dest.join("daily.0"))
        .status()
        .unwrap();
    assert!(rm.success());
    // No scrape until the change is settled: what is kept must not be given then (a
    // scrape sooner reads afresh whatever the stamp, and keeps nothing).
    settle();
    let left = || {
        assert_eq!(home_snapshots(&s.addr), [("daily.1".into(), id(&r1))]);
        let home = home_of_api(&s.addr);
        assert_eq!(home["newest_snapshot_at"], at(&r1), "{home}");
    };
    left();
    left();
    // And at once, as well.
    let rm = Command::new("rm")
        .arg("-rf")
        .arg(dest.join("daily.1"))
        .status()
        .unwrap();
    assert!(rm.success());
    assert_eq!(home_snapshots(&s.addr), Vec::<(String, String)>::new());
}

/// A scrape, then another [`settle`] later: serve trusts a store's stamp only once it
/// took the same stamp at a request 2 s or more before (by its own monotonic clock),
/// so the second keeps what it reads.
fn scraped_until_kept(addr: &str) {
    let _ = home_of_api(addr);
    settle();
    let _ = home_of_api(addr);
}

/// Review of session 50 (MEDIUM-3 a): the rotation journal edited in place (its own
/// stamp changes; `.snapring/` and the root do not) shows at the next scrape once
/// settled. Here the killed run's journal is emptied in place (an unreadable journal:
/// the store is read as it is, the run before shown), then written back in place (its
/// run published: shown, `catalog_behind` 1).
#[test]
fn a_rotation_journal_edited_in_place_shows_at_the_next_scrape() {
    use std::os::unix::fs::MetadataExt;
    let f = fixture();
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let dest = f.t.path().join("dest");
    let first = newest_record(&dest);
    let out = f
        .run_cmd("home", &f.cfg, &[], "journal.after_write=kill")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let journal = dest.join(".snapring/journal");
    let rec = newest_record(&dest);
    assert_eq!(rec["status"], "running", "{rec}");
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    let id = rec["id"].as_str().unwrap();
    assert_eq!(
        db.execute("DELETE FROM runs WHERE id = ?1", [id]).unwrap(),
        1
    );
    drop(db);
    let text = std::fs::read(&journal).unwrap();
    let in_place = |bytes: &[u8]| {
        let ino = std::fs::metadata(&journal).unwrap().ino();
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&journal)
            .unwrap();
        w.write_all(bytes).unwrap();
        drop(w);
        assert_eq!(std::fs::metadata(&journal).unwrap().ino(), ino);
    };
    let meta = || {
        std::fs::metadata(dest.join(".snapring"))
            .unwrap()
            .mtime_nsec()
    };
    let meta_before = meta();
    in_place(b"");
    settle();
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    scraped_until_kept(&s.addr);
    let before = || {
        let m = get(&s.addr, "/metrics").body;
        assert_eq!(home_series(&m, "snapring_catalog_behind"), Some(0.0), "{m}");
        assert_eq!(home_of_api(&s.addr)["last"]["id"], first["id"]);
    };
    before();
    before();
    in_place(&text);
    assert_eq!(meta(), meta_before, "only the journal changed");
    settle();
    let shown = || {
        let m = get(&s.addr, "/metrics").body;
        assert_eq!(home_series(&m, "snapring_catalog_behind"), Some(1.0), "{m}");
        let home = home_of_api(&s.addr);
        assert_eq!(home["last"]["id"], rec["id"], "{home}");
        assert_eq!(home["last"]["status"], "complete", "{home}");
        assert_eq!(home["snapshots"][0]["run_id"], rec["id"], "{home}");
    };
    shown();
    shown();
}

/// Review of session 50 (MEDIUM-3 b): `.snapring/store.json` replaced by a rename
/// (only `.snapring/` changes: the root, `snapshots.json`, the journal, `runs/` and
/// `manifests/` do not) shows at the next scrape once settled: a store of a newer
/// format is refused, its snapshots no longer shown; put back, they are again.
#[test]
fn store_json_replaced_by_a_rename_shows_at_the_next_scrape() {
    use std::os::unix::fs::MetadataExt;
    let f = fixture();
    let dest = f.t.path().join("dest");
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let r1 = newest_record(&dest)["id"].as_str().unwrap().to_string();
    let info = dest.join(".snapring/store.json");
    let text = std::fs::read(&info).unwrap();
    let mut newer: serde_json::Value = serde_json::from_slice(&text).unwrap();
    newer["format"] = serde_json::json!(999);
    let replace = |bytes: &[u8]| {
        let tmp = dest.join(".snapring/store.json.new");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &info).unwrap();
    };
    let root = || std::fs::metadata(&dest).unwrap().mtime_nsec();
    let root_before = root();
    settle();
    let s = serve(&f, "127.0.0.1:0", &[], &[]);
    scraped_until_kept(&s.addr);
    let one = [("daily.0".to_string(), r1.clone())];
    assert_eq!(home_snapshots(&s.addr), one);
    replace(&serde_json::to_vec(&newer).unwrap());
    assert_eq!(root(), root_before, "only .snapring/ changed");
    settle();
    for _ in 0..2 {
        assert_eq!(home_snapshots(&s.addr), []);
        let home = home_of_api(&s.addr);
        let errors = home["errors"].to_string();
        assert!(errors.contains("store format 999"), "{home}");
    }
    scraped_until_kept(&s.addr);
    replace(&text);
    settle();
    for _ in 0..2 {
        assert_eq!(home_snapshots(&s.addr), one);
    }
}

/// Review of session 50 (MEDIUM-3 c, MEDIUM-2): what serve reads of a store IS kept
/// while its stamp is unchanged (a run record edited in place changes no stamped item:
/// the kept record is given), and not longer than the longest keep
/// (`SNAPRING_SERVE_MAX_KEEP_MS`, test-only, here 10 s; 60 s otherwise), after which
/// the store is read afresh and the edit shows.
#[test]
fn a_stores_reading_is_kept_under_its_stamp_and_no_longer_than_the_longest_keep() {
    let f = fixture();
    let dest = f.t.path().join("dest");
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    write(&f.t.path().join("src/d0/second"), b"2");
    assert_eq!(f.run("home", &f.cfg, &[]), 0);
    let rec = newest_record(&dest);
    let id = rec["id"].as_str().unwrap();
    // The catalog missed the run: serve shows it from its store record.
    let db = rusqlite::Connection::open(&f.catalog).unwrap();
    assert_eq!(
        db.execute("DELETE FROM runs WHERE id = ?1", [id]).unwrap(),
        1
    );
    drop(db);
    settle();
    let s = serve(
        &f,
        "127.0.0.1:0",
        &[],
        &[("SNAPRING_SERVE_MAX_KEEP_MS", "10000")],
    );
    let status = || {
        let m = get(&s.addr, "/metrics").body;
        assert_eq!(home_series(&m, "snapring_catalog_behind"), Some(1.0), "{m}");
        let home = home_of_api(&s.addr);
        assert_eq!(home["last"]["id"], rec["id"], "{home}");
        home["last"]["status"].as_str().unwrap().to_string()
    };
    assert_eq!(status(), "complete");
    settle();
    // Read and kept now (the stamp seen 2 s before).
    assert_eq!(status(), "complete");
    let kept_at = std::time::Instant::now();
    let path = dest.join(format!(".snapring/runs/{id}.json"));
    let mut edited = rec.clone();
    edited["status"] = serde_json::json!("failed");
    std::fs::write(&path, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    assert_eq!(status(), "complete", "kept: the stamp is unchanged");
    settle();
    assert_eq!(status(), "complete", "kept: the stamp is unchanged");
    assert!(
        kept_at.elapsed() < std::time::Duration::from_secs(9),
        "too slow a machine for this test's 10 s"
    );
    std::thread::sleep(std::time::Duration::from_secs(10).saturating_sub(kept_at.elapsed()));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(status(), "failed", "read afresh after the longest keep");
}
