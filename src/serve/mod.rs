//! `snapring serve`: a small, read-only HTTP server showing the config's jobs and every
//! run in the catalog: the dashboard (`html`, charts in `svg`), `/metrics` for
//! Prometheus (`metrics`) and `/api/…` JSON, all gathered per request by `data` (the
//! catalog opened read-only, stores by `Store::open_read`). Does network I/O.
//!
//! **Why no web framework:** the server answers a handful of GETs from one operator's
//! browser and one Prometheus every 15 s or so; every answer is a few SQLite reads and
//! string formatting on the sync core. `http` is its own small HTTP/1.x transport on
//! std's TCP (a thread per connection for the I/O, at most 32 at once, with timeouts;
//! the answers made one at a time), where axum would bring tokio's runtime, hyper and
//! tower for concurrency this server has no use for. `http` says why not tiny_http.
//! TLS is left to a reverse proxy.
//!
//! **Access:** bound to a loopback address by default. Any other address needs a token
//! (a file, or `SNAPRING_SERVE_TOKEN`), and `serve` refuses to start without one; with a
//! token every request must carry `Authorization: Bearer TOKEN` (as Prometheus' scrape
//! config sends it) or gets 401. The comparison is of BLAKE3 digests, whose equality is
//! constant-time, so neither the token's bytes nor its length leak through timing.
//! Without a token, the `Host` header must be an IP address or `localhost`, against DNS
//! rebinding. Every answer carries security headers (a CSP of `default-src 'self'`, no framing,
//! no sniffing, no referrer). No page shows a notifier's settings.

pub mod data;
pub mod html;
pub mod http;
pub mod metrics;
pub mod svg;
pub mod text;
pub mod textfile;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use chrono::Utc;

use crate::catalog::Catalog;
use crate::config::Config;
use data::Depth;

/// Where `serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";

/// Headers on every answer.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "Content-Security-Policy",
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
];

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {0} without a token: any address but loopback needs one (serve --token-file FILE, token_file in the config's [server], or SNAPRING_SERVE_TOKEN), which clients send as `Authorization: Bearer TOKEN`"
    )]
    NoToken(SocketAddr),
    #[error(
        "the token has {0} characters: a token needs at least {MIN_TOKEN}, or it can be guessed (head -c 24 /dev/urandom | base64)"
    )]
    ShortToken(usize),
    #[error("cannot listen on {addr}: {msg}")]
    Bind { addr: SocketAddr, msg: String },
}

/// What `serve` serves.
pub struct ServeOptions {
    pub config: Config,
    /// The catalog; `None` when turned off (pages then show jobs and stores only).
    pub catalog: Option<PathBuf>,
    pub listen: SocketAddr,
    pub token: Option<String>,
    /// The daemon's config file, for the server of its `[server]`: the jobs served are
    /// those of the configuration the daemon last (re)loaded from it ([`reloaded`]), not
    /// only those it started with. `None` (`snapring serve`): `config` alone.
    pub follow: Option<PathBuf>,
}

/// The configurations daemons of this process reloaded (SIGHUP), by config file, each
/// with its generation: the server of a daemon's `[server]` (a thread of the daemon's
/// process) serves the jobs of the newest. By file, so daemons of other configs in the
/// same process (tests) do not see each other's.
type Reloaded = Vec<(PathBuf, u64, std::sync::Arc<Config>)>;
static RELOADED: std::sync::Mutex<Reloaded> = std::sync::Mutex::new(Vec::new());

/// Says that the daemon of config file `path` reloaded it as `cfg`: its server shows
/// `cfg`'s jobs from its next request on (a job added is served, a removed one's
/// series, its `next_run` gauge too, go). Its listen address, token and catalog stay
/// those it started with, as the daemon's catalog does.
pub fn reloaded(path: &std::path::Path, cfg: std::sync::Arc<Config>) {
    let mut all = RELOADED.lock().unwrap_or_else(|e| e.into_inner());
    let generation = all.iter().map(|r| r.1).max().unwrap_or(0) + 1;
    all.retain(|r| r.0 != path);
    all.push((path.to_path_buf(), generation, cfg));
}

/// The newest configuration the daemon of `path` reloaded, with its generation.
fn reloaded_config(path: &std::path::Path) -> Option<(u64, std::sync::Arc<Config>)> {
    let all = RELOADED.lock().unwrap_or_else(|e| e.into_inner());
    all.iter().find(|r| r.0 == path).map(|r| (r.1, r.2.clone()))
}

/// The shortest token taken (after trimming white space).
pub const MIN_TOKEN: usize = 16;

/// Checks the access rule: a non-loopback address needs a token; a token has at least
/// `MIN_TOKEN` characters.
pub fn check_access(listen: &SocketAddr, token: Option<&str>) -> Result<(), ServeError> {
    match token.map(|t| t.trim().chars().count()) {
        Some(n) if n < MIN_TOKEN => Err(ServeError::ShortToken(n)),
        None if !listen.ip().is_loopback() => Err(ServeError::NoToken(*listen)),
        _ => Ok(()),
    }
}

/// What to tell of a token file of permission bits `mode` that every user of the
/// machine may read or write (`None` otherwise): anyone logged in could take the token
/// (or put their own). Group bits are left alone (`0640` with a group that needs it).
pub fn token_file_warning(path: &std::path::Path, mode: u32) -> Option<String> {
    let what = match (mode & 0o004 != 0, mode & 0o002 != 0) {
        (false, false) => return None,
        (true, false) => "readable",
        (false, true) => "writable",
        (true, true) => "readable and writable",
    };
    let shown = crate::relpath::shown(path);
    Some(format!(
        "the token file {shown} is {what} by every user of this machine (mode {:04o}): \
         any of them can {} the token that opens the dashboard, /metrics and /api; \
         chmod 600 {shown} (or 640 for a group that needs it)",
        mode & 0o7777,
        match what {
            "writable" => "replace",
            "readable" => "read",
            _ => "read or replace",
        },
    ))
}

/// A bound server: `addr` is where it listens (the port chosen when 0 was asked for).
pub struct Server {
    listener: http::Listener,
    pub addr: SocketAddr,
    opts: ServeOptions,
    state: std::cell::RefCell<State>,
}

/// What the server keeps between requests: one read-only connection to the catalog
/// (with the file's identity, to reopen a catalog replaced under its name) and the
/// summaries cached while the catalog is unchanged.
#[derive(Default)]
struct State {
    cat: Option<(Catalog, (u64, u64))>,
    summaries: data::Summaries,
    /// This process has read the catalog: if it is not there now, it was deleted or
    /// moved, not yet to be made by a first run.
    seen: bool,
    /// The configuration the daemon reloaded (`ServeOptions::follow`), with its
    /// generation; `None`: the one served from the start.
    config: Option<(u64, std::sync::Arc<Config>)>,
}

impl State {
    /// The catalog, opened (or reopened, when its file was replaced) as needed; `None`
    /// when it is turned off or does not exist yet.
    fn catalog(
        &mut self,
        path: Option<&std::path::Path>,
    ) -> crate::catalog::Result<Option<&Catalog>> {
        use std::os::unix::fs::MetadataExt;
        let Some(path) = path else {
            return Ok(None);
        };
        let id = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        if self.cat.as_ref().map(|c| c.1) != id {
            self.cat = None;
            self.summaries = data::Summaries::default();
            if let Some(id) = id {
                self.cat = Catalog::open_read_per_request(path)?.map(|c| (c, id));
            }
        }
        self.seen |= self.cat.is_some();
        Ok(self.cat.as_ref().map(|c| &c.0))
    }
}

pub use crate::config::parse_listen;

/// What to do about a failed bind of `addr`.
fn bind_message(addr: &SocketAddr, e: &std::io::Error) -> String {
    let pick = "pick another port (serve --listen ADDR:PORT, or listen in the config's [server]; port 0 picks a free one)";
    match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "{e}: another process listens on port {} already (`ss -ltnp 'sport = :{}'` names it, a snapring serve or daemon already running, say); stop it, or {pick}",
            addr.port(),
            addr.port()
        ),
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            "{e}: ports below 1024 need root or the capability CAP_NET_BIND_SERVICE (AmbientCapabilities=CAP_NET_BIND_SERVICE in a systemd unit); or {pick}, from 1024 up (the default is {DEFAULT_LISTEN})"
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "{e}: no network interface of this machine has the address {}; give one it has (127.0.0.1 for this machine alone)",
            addr.ip()
        ),
        _ => e.to_string(),
    }
}

/// Checks the access rule and binds.
pub fn bind(opts: ServeOptions) -> Result<Server, ServeError> {
    check_access(&opts.listen, opts.token.as_deref())?;
    let listener = http::bind(opts.listen).map_err(|e| ServeError::Bind {
        addr: opts.listen,
        msg: bind_message(&opts.listen, &e),
    })?;
    let addr = listener.addr;
    Ok(Server {
        listener,
        addr,
        opts,
        state: Default::default(),
    })
}

impl Server {
    /// The catalog it reads; `None` when turned off.
    pub fn catalog(&self) -> Option<&std::path::Path> {
        self.opts.catalog.as_deref()
    }

    /// Answers requests, one at a time, until `stop` is set.
    pub fn run(&self, stop: &AtomicBool) {
        http::serve(&self.listener, stop, |req| {
            let reply = self.reply(req);
            let mut headers = vec![("Content-Type", reply.content_type)];
            headers.extend(SECURITY_HEADERS.iter().chain(&reply.extra).copied());
            http::Response {
                status: reply.status,
                headers,
                body: reply.body,
            }
        });
    }

    /// The answer to `req`: the access rules first, then the route.
    fn reply(&self, req: &http::Request) -> Reply {
        let token = self.opts.token.as_deref();
        if token.is_none() && !host_ok(req.header("Host")) {
            return Reply::text(
                403,
                "without a token, only localhost or an IP address as Host\n",
            );
        }
        if !authorized(token, req.header("Authorization")) {
            return Reply::text(401, "a token is needed: send Authorization: Bearer TOKEN\n")
                .header("WWW-Authenticate", "Bearer realm=\"snapring\"");
        }
        if !matches!(req.method.as_str(), "GET" | "HEAD") {
            return Reply::text(405, "read-only: GET and HEAD only\n").header("Allow", "GET, HEAD");
        }
        let om = req
            .header("Accept")
            .is_some_and(|a| a.contains("application/openmetrics-text"));
        route(
            &self.opts,
            &mut self.state.borrow_mut(),
            (&req.target, req.arrived),
            om,
        )
    }
}

/// Whether a request with this `Authorization` value may pass.
fn authorized(token: Option<&str>, auth: Option<&str>) -> bool {
    let Some(want) = token else {
        return true;
    };
    // The scheme's name is case-insensitive (RFC 9110 §11.1).
    let got = auth
        .and_then(|a| a.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map_or("", |(_, t)| t);
    blake3::hash(got.trim().as_bytes()) == blake3::hash(want.trim().as_bytes())
}

/// Without a token, a request must name the server by an IP address or `localhost`
/// (or name none): a web page that points its own domain at 127.0.0.1 (DNS
/// rebinding) must not read the dashboard through the user's browser.
fn host_ok(host: Option<&str>) -> bool {
    let Some(h) = host else {
        return true;
    };
    // `name`, `name:port`, `[v6]` or `[v6]:port`, the port all digits: nothing else is
    // a Host a browser sends, so nothing else is taken.
    let (name, port) = match h.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((a, rest)) => match rest {
                "" => (a, None),
                _ => (a, Some(rest.strip_prefix(':').unwrap_or("x"))),
            },
            None => return false,
        },
        None => match h.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (h, None),
        },
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let v6 = h.starts_with('[');
    port_ok
        && match name.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_ipv6() == v6,
            Err(_) => !v6 && name.eq_ignore_ascii_case("localhost"),
        }
}

/// An answer before it goes out.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    extra: Vec<(&'static str, &'static str)>,
}

impl Reply {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            extra: vec![],
        }
    }
    fn text(status: u16, body: &str) -> Reply {
        Reply::new(status, "text/plain; charset=utf-8", body)
    }
    fn html(body: String) -> Reply {
        Reply::new(200, "text/html; charset=utf-8", body)
    }
    fn json(v: &impl serde::Serialize) -> Reply {
        let body = serde_json::to_vec_pretty(v).expect("serializes");
        Reply::new(200, "application/json", body)
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Reply {
        self.extra.push((k, v));
        self
    }
}

/// The answer to `GET url`; `openmetrics`: the client accepts OpenMetrics.
fn route(
    o: &ServeOptions,
    st: &mut State,
    (url, arrived): (&str, std::time::Instant),
    openmetrics: bool,
) -> Reply {
    let path = url.split(['?', '#']).next().unwrap_or("");
    if let Some(f) = &o.follow
        && let Some((generation, cfg)) = reloaded_config(f)
        && st.config.as_ref().map(|c| c.0) != Some(generation)
    {
        st.config = Some((generation, cfg));
        // A job's cached part is by name: a reloaded job may write another store.
        st.summaries = data::Summaries::default();
    }
    let reloaded = st.config.as_ref().map(|c| c.1.clone());
    let config: &Config = reloaded.as_deref().unwrap_or(&o.config);
    // One wait for a writer's lock per request, however many reads it makes, counted
    // from the request's arrival.
    crate::catalog::start_request(arrived);
    if let Err(e) = st.catalog(o.catalog.as_deref()) {
        return Reply::text(500, &format!("{e}\n"));
    }
    let cat = st.cat.as_ref().map(|c| &c.0);
    // No catalog file (a file being created, not yet migrated, is not missing).
    let missing = o
        .catalog
        .as_deref()
        // Followed: a symbolic link to a deleted catalog is no catalog present.
        .filter(|p| cat.is_none() && std::fs::metadata(p).is_err());
    let seen = st.seen;
    let gone = |mut jobs: Vec<data::JobView>| {
        if let Some(p) = missing {
            for v in &mut jobs {
                catalog_missing(v, p, seen);
            }
        }
        jobs
    };
    let summaries = &mut st.summaries;
    let now = Utc::now();
    let seg = |p: &str| path.strip_prefix(p).and_then(text::url_decode);
    match path {
        "/" => {
            let mut notes: Vec<String> = match (&o.catalog, cat) {
                (Some(p), None) if seen && missing.is_some() => vec![catalog_gone(p)],
                (Some(p), None) => vec![no_catalog(p)],
                _ => vec![],
            };
            if let Some(p) = &o.catalog
                && let Err(e) = data::catalog_writable(p)
            {
                notes.push(format!(
                    "the catalog {} cannot be written ({e}): runs go on, but their rows and the daemon's events are not recorded",
                    p.display()
                ));
            }
            let copies = data::copies(config, cat, now).unwrap_or_else(|e| {
                notes.push(format!("the copies are unknown: {e}"));
                Vec::new()
            });
            Reply::html(html::overview(
                &gone(summaries.jobs(config, cat, now)),
                &copies,
                &notes,
            ))
        }
        "/style.css" => Reply::new(200, "text/css; charset=utf-8", html::CSS),
        "/favicon.ico" => Reply::new(204, "text/plain", ""),
        "/metrics" => {
            // Checked afresh each scrape (a statvfs and two faccessat): not cached.
            let catalog = o.catalog.as_deref().map(|p| metrics::CatalogState {
                path: p,
                writable: data::catalog_writable(p).is_ok(),
                present: missing.is_none(),
            });
            // The copies' series are left out while the catalog cannot tell them (as a
            // job's counters are): 0 would read as a reset, none as no copy.
            let copies = data::copies(config, cat, now).unwrap_or_default();
            let m = metrics::render(&gone(summaries.jobs(config, cat, now)), &copies, catalog);
            match openmetrics {
                true => Reply::new(200, metrics::CONTENT_TYPE, m),
                false => Reply::new(200, metrics::CLASSIC_CONTENT_TYPE, metrics::classic(&m)),
            }
        }
        "/api/jobs" => Reply::json(&gone(summaries.jobs(config, cat, now))),
        "/api/copies" => match data::copies(config, cat, now) {
            Ok(c) => Reply::json(&c),
            Err(e) => Reply::text(500, &format!("{e}\n")),
        },
        _ if path.starts_with("/job/") => match seg("/job/") {
            Some(n) => job_reply(config, cat, &n, false, missing.map(|p| (p, seen))),
            None => not_found(),
        },
        _ if path.starts_with("/api/jobs/") => match seg("/api/jobs/") {
            Some(n) => job_reply(config, cat, &n, true, missing.map(|p| (p, seen))),
            None => not_found(),
        },
        _ if path.starts_with("/run/") || path.starts_with("/api/runs/") => {
            let api = path.starts_with("/api/");
            match seg(if api { "/api/runs/" } else { "/run/" }) {
                Some(id) => match problems_from(url) {
                    Ok(from) => run_reply(cat, &id, api, from),
                    Err(e) => Reply::text(400, &format!("{e}\n")),
                },
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}

/// What the overview (and `serve` at start) says when the catalog does not exist: no
/// run can show, and a catalog elsewhere is the likely cause (the default path of an
/// interactive shell is not a service's).
pub fn no_catalog(path: &std::path::Path) -> String {
    format!(
        "no catalog at {}: no runs are shown until a run writes it; if runs were made, \
         their catalog is elsewhere (a service's default is /var/lib/snapring/catalog.db): \
         give it with --catalog",
        path.display()
    )
}

/// What the overview says when the catalog this process read is not there any more.
pub fn catalog_gone(path: &std::path::Path) -> String {
    format!(
        "the catalog {} is gone (deleted or moved since serve read it): the jobs' runs are \
         unknown, not none; the next run makes a new one with its own row alone \
         (`snapring catalog rebuild --dest STORE` brings back a store's runs)",
        path.display()
    )
}

/// A job's error when there is no catalog file at `path` and the job has runs that it
/// would hold: `seen`, this process read the catalog before (deleted or moved since),
/// or the job's store has snapshots (runs were made, recorded elsewhere or in a
/// catalog since deleted). Else the job's page, `/api/jobs` and `/metrics` said
/// nothing: every `last_run_status` and counter series gone, `snapring_job_errors` 0,
/// `errors` `[]`, as for jobs that never ran; no alert fired. A job of a new config,
/// before its first run, has neither, and no error.
fn catalog_missing(v: &mut data::JobView, path: &std::path::Path, seen: bool) {
    let why = if seen {
        "is gone (deleted or moved since serve read it)"
    } else if !v.snapshots.is_empty() {
        "does not exist, though the job's store has snapshots (its runs are recorded in a catalog elsewhere, or in one since deleted)"
    } else {
        return;
    };
    v.errors.push(format!(
        "the catalog {} {why}: the job's runs are unknown, not none; give the catalog the runs use with --catalog, or `snapring catalog rebuild --dest {}` to recreate it from the store's run records",
        path.display(),
        v.store.display()
    ));
}

fn not_found() -> Reply {
    Reply::text(404, "not found\n")
}

fn job_reply(
    config: &Config,
    cat: Option<&Catalog>,
    name: &str,
    api: bool,
    missing: Option<(&std::path::Path, bool)>,
) -> Reply {
    let job = data::job(config, cat, name, Utc::now(), Depth::Detail).map(|mut j| {
        if let Some((p, seen)) = missing {
            catalog_missing(&mut j, p, seen);
        }
        j
    });
    match job {
        Some(j) if api => Reply::json(&j),
        Some(j) => Reply::html(html::job(&j)),
        None => not_found(),
    }
}

/// How many of a run's problems its page (`/run/ID`, `/api/runs/ID`) lists at once; the
/// rest are counted, and the next ones are at `?from=N`. A run lists up to
/// `MAX_LISTED_PROBLEMS` (10,000) problems; a page of all of them was megabytes.
pub const RUN_PROBLEMS: u64 = 500;

/// The `from` of a run page's URL (`/run/ID?from=500`): the first problem it lists
/// (0 without one). Anything but a whole number (`-1`, `+5`, `1e3`, `0x10`, `abc`, one
/// past `u64`) is refused with its reason, a 400: it was taken as 0, the first page
/// shown as if asked for.
fn problems_from(url: &str) -> Result<u64, String> {
    let query = url.split('#').next().and_then(|u| u.split_once('?'));
    let given = query
        .into_iter()
        .flat_map(|(_, q)| q.split('&'))
        .find_map(|kv| match kv.split_once('=') {
            Some(("from", v)) => Some(v),
            None if kv == "from" => Some(""),
            _ => None,
        });
    let Some(v) = given else {
        return Ok(0);
    };
    let bad = |why: &str| format!("bad from={v:?}: {why}");
    let v = text::url_decode(v).ok_or_else(|| bad("not percent-encoded text"))?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(
            "the first problem to list is a whole number from 0, in digits (?from=500)",
        ));
    }
    v.parse()
        .map_err(|_| bad(&format!("more than {} problems are never listed", u64::MAX)))
}

/// A run's page or JSON: its record, a page of its problems and the tail of its log. A
/// run the catalog has as `running` shows as the overview shows it (`data::settled`):
/// as it ended, when it did (its record final in its store, or nobody holding the
/// store's lock: killed).
fn run_reply(cat: Option<&Catalog>, id: &str, api: bool, from: u64) -> Reply {
    let Some(cat) = cat else {
        return not_found();
    };
    // Only whole ids (`show` also takes a prefix): a link names one run.
    let (mut shown, mut total) = match cat.show_page(id, from, RUN_PROBLEMS) {
        Ok(Some(s)) => s,
        Ok(None) => return not_found(),
        Err(e) => return Reply::text(500, &format!("{e}\n")),
    };
    if let crate::catalog::Record::Backup(r) = &shown.report
        && r.status == crate::report::Status::Running
        && let data::Settled::Ended(mut ended) = data::settled(r, &r.store.clone(), Some(cat))
    {
        if total == 0 {
            // The catalog has none of its problems yet: those of its final record.
            total = ended.problems.len() as u64;
            shown.problems = std::mem::take(&mut ended.problems)
                .into_iter()
                .skip(usize::try_from(from).unwrap_or(usize::MAX))
                .take(RUN_PROBLEMS as usize)
                .collect();
        }
        ended.problems = Vec::new();
        shown.report = crate::catalog::Record::Backup(ended);
    }
    let page = html::ProblemPage {
        from,
        listed: total,
        next: (from.saturating_add(shown.problems.len() as u64) < total)
            .then_some(from + shown.problems.len() as u64),
    };
    let tail = run_log(cat, &shown, id);
    if api {
        #[derive(serde::Serialize)]
        struct Run<'a> {
            #[serde(flatten)]
            shown: &'a crate::catalog::Shown,
            /// The first problem listed, how many the catalog lists, where the next
            /// ones start (`?from=N`; null: no more).
            problems_from: u64,
            problems_listed: u64,
            problems_next: Option<u64>,
            /// Where the page before starts (null on the first page).
            problems_previous: Option<u64>,
            log_tail: Option<String>,
        }
        return Reply::json(&Run {
            shown: &shown,
            problems_from: page.from,
            problems_listed: page.listed,
            problems_next: page.next,
            problems_previous: page.previous(),
            log_tail: tail,
        });
    }
    Reply::html(html::run(&shown, &page, tail.as_deref()))
}

/// The tail of run `id`'s log, only from where snapring puts it: `<id>.log` in the
/// catalog's `logs` folder (restores, runs into a repository) or in the run's store's
/// `.snapring/logs` (reached from the store without following a symlink). The path in
/// the catalog comes from run records, which whoever owns a store writes (a `catalog
/// rebuild` reads them): a log anywhere else is not shown.
fn run_log(cat: &Catalog, shown: &crate::catalog::Shown, id: &str) -> Option<String> {
    use std::os::fd::AsFd;
    let path = std::path::Path::new(shown.log_path.as_deref()?);
    let name = format!("{id}.log");
    if path.file_name()? != name.as_str() {
        return None;
    }
    let at = path.parent()?;
    let cat_logs = crate::catalog::restore_log_path(&cat.path, id);
    let dir = if Some(at) == cat_logs.parent() {
        crate::fsx::open_dir(at).ok()?
    } else {
        let store = &shown.report.backup()?.store;
        let logs = std::path::Path::new(crate::store::META_DIR).join("logs");
        if at != store.join(&logs) {
            return None;
        }
        let root = crate::fsx::open_dir(store).ok()?;
        crate::fsx::open_dir_beneath(root.as_fd(), logs.as_os_str().as_encoded_bytes()).ok()?
    };
    html::log_tail(dir.as_fd(), &name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_goes_without_a_token() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(check_access(&a("127.0.0.1:9477"), None).is_ok());
        assert!(check_access(&a("[::1]:9477"), None).is_ok());
        assert!(check_access(&a("0.0.0.0:9477"), None).is_err());
        assert!(check_access(&a("10.1.2.3:9477"), None).is_err());
        assert!(check_access(&a("0.0.0.0:9477"), Some("s3cret-token-16ch")).is_ok());
        assert!(check_access(&a("127.0.0.1:9477"), Some(" \n")).is_err());
        let short = check_access(&a("0.0.0.0:9477"), Some(" abc\n")).unwrap_err();
        assert!(short.to_string().contains("has 3 characters"), "{short}");
        assert!(check_access(&a("0.0.0.0:9477"), Some("fifteen-chars-x")).is_err());
        assert!(check_access(&a("0.0.0.0:9477"), Some("sixteen-chars-xx")).is_ok());
    }

    #[test]
    fn without_a_token_the_host_must_be_an_address_or_localhost() {
        for ok in [
            None,
            Some("localhost:9477"),
            Some("127.0.0.1:9477"),
            Some("[::1]:9477"),
            Some("10.0.0.5"),
            Some("LOCALHOST"),
        ] {
            assert!(host_ok(ok), "{ok:?}");
        }
        for bad in [
            Some("evil.example:9477"),
            Some("evil.example"),
            Some("localhost.evil.example"),
            Some(""),
            Some("[::1]evil.example"),
            Some("[::1]:x.evil.example"),
            Some("localhost:9477@evil.example"),
            Some("localhost:evil.example"),
            Some("127.0.0.1:80:evil"),
            Some("[localhost]"),
            Some("::1"),
            Some("[127.0.0.1]"),
        ] {
            assert!(!host_ok(bad), "{bad:?}");
        }
    }

    /// A world-readable token file was taken without a word.
    #[test]
    fn a_token_file_every_user_can_read_is_warned_of() {
        let p = std::path::Path::new("/etc/snapring/serve.token");
        for mode in [0o100600, 0o600, 0o640, 0o660, 0o400] {
            assert_eq!(token_file_warning(p, mode), None, "{mode:o}");
        }
        let w = token_file_warning(p, 0o100644).unwrap();
        assert!(
            w.starts_with("the token file /etc/snapring/serve.token is readable by every user")
                && w.contains("(mode 0644)")
                && w.contains("chmod 600 /etc/snapring/serve.token"),
            "{w}"
        );
        let w = token_file_warning(p, 0o666).unwrap();
        assert!(
            w.contains("readable and writable") && w.contains("(mode 0666)"),
            "{w}"
        );
        assert!(
            token_file_warning(p, 0o602)
                .unwrap()
                .contains(" writable by")
        );
    }

    #[test]
    fn the_bearer_token_must_match() {
        assert!(authorized(None, None));
        assert!(authorized(Some("abc"), Some("Bearer abc")));
        assert!(authorized(Some("abc"), Some("bearer abc")));
        assert!(!authorized(Some("abc"), Some("Basic abc")));
        assert!(!authorized(Some("abc"), Some("Bearer abd")));
        assert!(!authorized(Some("abc"), Some("Bearer ab")));
        assert!(!authorized(Some("abc"), Some("abc")));
        assert!(!authorized(Some("abc"), None));
    }
}
