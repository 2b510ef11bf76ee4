//! A real S3 server and a faulty network in front of it, for the tests on repositories
//! in S3 (restic_s3, restic_faults): the s3s-fs server on 127.0.0.1 (in-process, a
//! directory per bucket), with one fix to its listing, and `Proxy`, a plain HTTP/1.1
//! relay between snapring and that server that, by rule, answers 500/503 (503 SlowDown
//! with `Retry-After` too), delays or holds replies, reads bodies slowly or not at all,
//! or drops the connection mid-request or mid-response, and logs every request it saw. Included with `#[path = "common/s3.rs"]` by the tests that need it (the
//! others are not built with the server). Does network I/O.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const ACCESS_KEY: &str = "snapring-test";
pub const SECRET_KEY: &str = "snapring-test-secret";

/// s3s-fs with two fixes:
/// - ListObjectsV2 with an empty `delimiter=` lists recursively, as AWS does (s3s-fs
///   0.14 takes it as a delimiter and lists nothing under `data/`; restic's S3 client
///   sends it);
/// - a conditional PutObject (`If-None-Match: *`) is atomic, as on AWS: s3s-fs checks
///   that the key is free, then receives the body, so two such writes racing for a key
///   would both succeed; here they take turns (a shard run's claims and commits).
///
/// With its third field set it ignores `If-None-Match` instead (a server that does not
/// implement conditional writes, for the test that snapring notices). With its fourth,
/// it answers a listing of `snapshots/` as a server that speaks only the older
/// ListObjects does: pages of that many keys, cut (`IsTruncated`) with no
/// `NextContinuationToken` (1000 keys a page on a real one).
pub struct Fs(
    s3s_fs::FileSystem,
    tokio::sync::Mutex<()>,
    bool,
    Option<i32>,
);

/// The `s3s::S3` impl of `Fs`: the methods listed are passed to s3s-fs as they are.
macro_rules! delegating_impl {
    ($($name:ident: $input:ident => $output:ident),* $(,)?) => {
        #[async_trait::async_trait]
        impl s3s::S3 for Fs {
            $(
                async fn $name(
                    &self,
                    req: s3s::S3Request<s3s::dto::$input>,
                ) -> s3s::S3Result<s3s::S3Response<s3s::dto::$output>> {
                    self.0.$name(req).await
                }
            )*

            async fn put_object(
                &self,
                mut req: s3s::S3Request<s3s::dto::PutObjectInput>,
            ) -> s3s::S3Result<s3s::S3Response<s3s::dto::PutObjectOutput>> {
                if self.2 {
                    req.input.if_none_match = None;
                }
                let _turn = match req.input.if_none_match {
                    Some(_) => Some(self.1.lock().await),
                    None => None,
                };
                self.0.put_object(req).await
            }

            async fn list_objects_v2(
                &self,
                mut req: s3s::S3Request<s3s::dto::ListObjectsV2Input>,
            ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListObjectsV2Output>> {
                if req.input.delimiter.as_deref() == Some("") {
                    req.input.delimiter = None;
                }
                let v1_page = self
                    .3
                    .filter(|_| req.input.prefix.as_deref().is_some_and(|p| p.ends_with("snapshots/")));
                if let Some(n) = v1_page {
                    req.input.max_keys = Some(n);
                    req.input.continuation_token = None;
                }
                let mut resp = self.0.list_objects_v2(req).await?;
                if v1_page.is_some() {
                    resp.output.next_continuation_token = None;
                }
                Ok(resp)
            }
        }
    };
}

delegating_impl! {
    delete_object: DeleteObjectInput => DeleteObjectOutput,
    get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput,
    get_object: GetObjectInput => GetObjectOutput,
    head_bucket: HeadBucketInput => HeadBucketOutput,
    head_object: HeadObjectInput => HeadObjectOutput,
    list_buckets: ListBucketsInput => ListBucketsOutput,
    list_objects: ListObjectsInput => ListObjectsOutput,
}

/// The S3 service on the directory `root` (a bucket is a directory in it), taking the
/// test's keys.
pub fn service(root: &Path) -> s3s::service::S3Service {
    service_with(root, false)
}

/// The S3 service; with `ignore_if_none_match`, one whose PUTs ignore `If-None-Match`.
pub fn service_with(root: &Path, ignore_if_none_match: bool) -> s3s::service::S3Service {
    service_listing(root, ignore_if_none_match, None)
}

/// The S3 service; with `v1_page`, one that lists `snapshots/` in pages of that many
/// keys with no way to the next (see `Fs`).
pub fn service_listing(
    root: &Path,
    ignore_if_none_match: bool,
    v1_page: Option<i32>,
) -> s3s::service::S3Service {
    let fs = Fs(
        s3s_fs::FileSystem::new(root).unwrap(),
        Default::default(),
        ignore_if_none_match,
        v1_page,
    );
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    b.build()
}

/// A server on 127.0.0.1 until dropped.
pub struct Server {
    pub port: u16,
    _runtime: tokio::runtime::Runtime,
}

/// Serves `service` over HTTP on 127.0.0.1 from `runtime`'s threads; its port.
pub fn serve_http<S>(runtime: &tokio::runtime::Runtime, service: S) -> u16
where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = s3s::HttpResponse,
            Error = s3s::HttpError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move {
        let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    port
}

/// Serves `root` (buckets are its directories) with s3s-fs.
pub fn start(root: &Path) -> Server {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let port = serve_http(&runtime, service(root));
    Server {
        port,
        _runtime: runtime,
    }
}

/// What the proxy does to a request a rule matches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Answers this status (500 InternalError, 503 SlowDown, 409
    /// ConditionalRequestConflict) without asking the server.
    Status(u16),
    /// Waits this long, then forwards the request.
    Delay(Duration),
    /// Waits until `Proxy::release` (at most 120 s), then forwards the request.
    Hold,
    /// Reads half the request's body, then closes the connection: the server never
    /// sees the request.
    DropRequest,
    /// Forwards the request (the server acts on it), then sends the client half of the
    /// answer and closes the connection.
    DropResponse,
    /// Answers 503 SlowDown with `Retry-After: N` (seconds) without asking the server,
    /// as a throttling S3 does.
    SlowDown(u32),
    /// Reads the request's body at this many bytes a second (a slow uplink), then
    /// forwards it.
    SlowBody(usize),
    /// Reads the request's head and nothing more, answering nothing, until
    /// `Proxy::release` (at most 120 s): a connection that stalls mid-upload.
    Stall,
}

/// Which requests a rule applies to, and how many times.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `PUT`, `GET`, ...; empty: any.
    pub method: &'static str,
    /// A substring of the request's path (`/data/`); empty: any.
    pub path: &'static str,
    pub fault: Fault,
    /// The first this many matching requests get the fault; `u64::MAX`: every one.
    pub times: u64,
    /// Matching requests so far.
    pub hits: u64,
}

impl Rule {
    pub fn new(method: &'static str, path: &'static str, fault: Fault, times: u64) -> Rule {
        Rule {
            method,
            path,
            fault,
            times,
            hits: 0,
        }
    }
}

/// One request the proxy saw (logged as it arrives).
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The fault it got, if any.
    pub fault: Option<Fault>,
    /// The server's status, when the request reached it.
    pub status: Option<u16>,
    /// When its head arrived.
    pub at: std::time::Instant,
    /// When its answer was sent to the client whole.
    pub done: Option<std::time::Instant>,
}

/// An HTTP/1.1 relay on 127.0.0.1 to a server, with faults by rule, until dropped.
pub struct Proxy {
    pub port: u16,
    state: Arc<ProxyState>,
}

struct ProxyState {
    upstream: u16,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
    /// Lets held requests (`Fault::Hold`) go.
    released: AtomicBool,
}

impl Proxy {
    /// A relay to the server on 127.0.0.1:`upstream`, applying `rules` (the first that
    /// matches and has hits left).
    pub fn start(upstream: u16, rules: Vec<Rule>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            upstream,
            rules: Mutex::new(rules),
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            released: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(&st, conn);
                });
            }
        });
        Proxy { port, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests seen with `method` whose path contains `path`.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path.contains(path))
            .count()
    }

    /// Requests seen with `method` whose path contains `path` that the server answered
    /// 200 (the object was written, for a PUT).
    pub fn served(&self, method: &str, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path.contains(path) && s.status == Some(200))
            .count()
    }

    /// The most requests with `method` whose path contains `path` that were in flight
    /// at once (from the head's arrival to the whole answer sent), among those answered.
    pub fn most_at_once(&self, method: &str, path: &str) -> usize {
        let seen: Vec<_> = self
            .seen()
            .into_iter()
            .filter(|s| s.method == method && s.path.contains(path))
            .filter_map(|s| Some((s.at, s.done?)))
            .collect();
        seen.iter()
            .map(|(at, _)| seen.iter().filter(|(a, d)| a <= at && at < d).count())
            .max()
            .unwrap_or(0)
    }

    /// Lets the requests held by `Fault::Hold` go on, and those to come.
    pub fn release(&self) {
        self.state.released.store(true, Ordering::SeqCst);
    }

    /// Replaces the rules (the faults heal, or start).
    pub fn set_rules(&self, rules: Vec<Rule>) {
        *self.state.rules.lock().unwrap() = rules;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One request as read from the client.
struct Request {
    method: String,
    path: String,
    /// The head's lines after the request line, without `Connection`.
    headers: Vec<String>,
    length: usize,
}

/// Reads a request head; `None` at the end of the connection.
fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    let mut length = 0;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end().to_string();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if !lower.starts_with("connection:") {
            headers.push(h);
        }
    }
    Ok(Some(Request {
        method,
        path,
        headers,
        length,
    }))
}

/// Relays the requests of one client connection.
fn serve(st: &ProxyState, client: TcpStream) -> std::io::Result<()> {
    let mut out = client.try_clone()?;
    let mut r = BufReader::new(client);
    while let Some(req) = read_head(&mut r)? {
        let fault = {
            let mut rules = st.rules.lock().unwrap();
            rules
                .iter_mut()
                .find(|rule| {
                    (rule.method.is_empty() || rule.method == req.method)
                        && req.path.contains(rule.path)
                        && rule.hits < rule.times
                })
                .map(|rule| {
                    rule.hits += 1;
                    rule.fault
                })
        };
        // Logged as it arrives (a held or delayed request is seen at once); the
        // server's status is filled in when it answers.
        let at = {
            let mut seen = st.seen.lock().unwrap();
            seen.push(Seen {
                method: req.method.clone(),
                path: req.path.clone(),
                fault,
                status: None,
                at: std::time::Instant::now(),
                done: None,
            });
            seen.len() - 1
        };
        if fault == Some(Fault::DropRequest) {
            let mut half = vec![0u8; req.length / 2];
            r.read_exact(&mut half)?;
            return Ok(());
        }
        if fault == Some(Fault::Stall) {
            held(st);
            return Ok(());
        }
        let mut body = vec![0u8; req.length];
        if let Some(Fault::SlowBody(rate)) = fault {
            // 10 reads a second, each of a tenth of the rate.
            let step = (rate / 10).max(1);
            for part in body.chunks_mut(step) {
                std::thread::sleep(Duration::from_millis(100));
                r.read_exact(part)?;
            }
        } else {
            r.read_exact(&mut body)?;
        }
        if let Some(Fault::SlowDown(secs)) = fault {
            let xml = "<Error><Code>SlowDown</Code><Message>proxy fault</Message></Error>";
            write!(
                out,
                "HTTP/1.1 503 Slow Down\r\nRetry-After: {secs}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{xml}",
                xml.len()
            )?;
            continue;
        }
        if let Some(Fault::Status(code)) = fault {
            let (name, reason) = match code {
                503 => ("SlowDown", "Service Unavailable"),
                // AWS, to a conditional write while another of the key is in flight.
                409 => ("ConditionalRequestConflict", "Conflict"),
                403 => ("AccessDenied", "Forbidden"),
                507 => ("InsufficientStorage", "Insufficient Storage"),
                _ => ("InternalError", "Internal Server Error"),
            };
            let xml = format!("<Error><Code>{name}</Code><Message>proxy fault</Message></Error>");
            write!(
                out,
                "HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{xml}",
                xml.len()
            )?;
            continue;
        }
        if let Some(Fault::Delay(d)) = fault {
            std::thread::sleep(d);
        }
        if fault == Some(Fault::Hold) {
            held(st);
        }
        let answer = forward(st.upstream, &req, &body)?;
        st.seen.lock().unwrap()[at].status = std::str::from_utf8(&answer[..answer.len().min(16)])
            .ok()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok());
        if fault == Some(Fault::DropResponse) {
            out.write_all(&answer[..answer.len() / 2])?;
            return Ok(());
        }
        out.write_all(&answer)?;
        st.seen.lock().unwrap()[at].done = Some(std::time::Instant::now());
    }
    Ok(())
}

/// Waits until `Proxy::release`, at most 120 s.
fn held(st: &ProxyState) {
    let until = std::time::Instant::now() + Duration::from_secs(120);
    while !st.released.load(Ordering::SeqCst) && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends one request to the server on a connection of its own (`Connection: close`)
/// and returns the whole answer as the server sent it.
fn forward(upstream: u16, req: &Request, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    for h in &req.headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    Ok(answer)
}
