//! A repository in an S3 bucket (`s3://BUCKET/PREFIX`): the `Backend` on S3's REST API
//! (PUT, ranged GET, DELETE, ListObjectsV2), signed with AWS Signature Version 4, with
//! retries and backoff on 5xx, 429 and transport errors. Objects use restic's layout
//! under the prefix (`config`, `keys/ID`, `data/XX/ID`, ...), so `restic -r
//! s3:ENDPOINT/BUCKET/PREFIX` reads what snapring writes. Does network I/O.
//!
//! Why hand-rolled SigV4 over the crate's blocking `reqwest` (rustls) rather than
//! `object_store` or `rust-s3`: the repository code is synchronous, and these two bring
//! an async runtime (or their own HTTP and TLS stacks) to call five requests; SigV4 is
//! ~60 lines on `hmac`/`sha2`, which the crate has already, and is checked here against
//! AWS's published example and, in tests/restic_s3.rs, against a real S3 server.
//!
//! Settings, from the environment as AWS's own tools read them: `AWS_ENDPOINT_URL`
//! (default `https://s3.REGION.amazonaws.com`), `AWS_REGION` / `AWS_DEFAULT_REGION`
//! (default `us-east-1`), `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
//! `AWS_SESSION_TOKEN`, else the `AWS_PROFILE` (or `default`) section of
//! `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`), else the profile's keys in
//! `~/.aws/config` (`AWS_CONFIG_FILE`; its `region` and `endpoint_url` are read there
//! too, after the variables), else a container's role (ECS task roles and EKS Pod
//! Identity: `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` on `http://169.254.170.2`, or
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI`, with `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`
//! or `AWS_CONTAINER_AUTHORIZATION_TOKEN`), else the EC2 instance role's
//! from the instance metadata (IMDSv2 at `AWS_EC2_METADATA_SERVICE_ENDPOINT`, default
//! `http://169.254.169.254`; off with `AWS_EC2_METADATA_DISABLED=true`), renewed before
//! they expire. Path-style addressing
//! (`ENDPOINT/BUCKET/KEY`) is used with a custom endpoint, virtual-hosted style
//! (`BUCKET.ENDPOINT/KEY`) with AWS's; `SNAPRING_S3_PATH_STYLE=true|false` overrides.
//! `SNAPRING_S3_SSE` (`AES256` or `aws:kms`, with `SNAPRING_S3_SSE_KMS_KEY_ID`) asks for
//! server-side encryption of every object; `SNAPRING_S3_STORAGE_CLASS` stores packs in
//! a storage class (the small files stay in the default one).
//!
//! Timeouts scale with the bytes moved, so a slow uplink is not a failure: a request
//! may take `SNAPRING_S3_TIMEOUT` seconds (default 300) plus one second for every
//! `SNAPRING_S3_MIN_RATE` bytes (default 8192, 8 KiB/s) of its body or of the
//! response's known length (a ranged GET); a stalled connection fails in that bound.
//! A request without a body (GET, HEAD, a listing, DELETE) must also have the answer's
//! head (its status line) within `SNAPRING_S3_ANSWER_TIMEOUT` seconds (default 60): a
//! server sends that as soon as it has the request, whatever the object's size, so an
//! endpoint that takes connections and never answers fails each attempt in 60 s, not
//! 300 (its six attempts took 30 minutes); the body that follows still has the full
//! bound. An upload's answer comes only once its body is sent: it has the full bound.
//! Throttling (503, 429) is retried for up to 5 minutes, honouring `Retry-After` in
//! seconds or as an HTTP date (capped at 60 s), unless the run is cancelled; other
//! failures get 6 attempts. A request that still fails on a transport error, a time
//! limit, 500, 502, 503, 504 or throttling is [`Error::Unreachable`] (an outage: a
//! shard worker exits 75 on it); on any other status, an error of its own.
//!
//! Each attempt runs on a thread of its own while `send` waits for it in 100 ms slices,
//! watching the run's cancel flag (SIGINT/SIGTERM, the backup window): a blocking
//! request cannot be interrupted, and a hung endpoint held a stopping run for 6 × 300 s.
//! Once the flag is set, each request may go on for [`STOP_GRACE`] (5 s) from the stop
//! (or from its start, if later), so a stopping run on a working endpoint still stores
//! its last packs, its index and removes its lock; one that does not end by then is
//! given up ([`Error::Cancelled`]; its thread ends at its own time limit), and so is
//! every request of the run after it, at once: the endpoint is taken as hung, and a
//! stop then ends within about 5 s. Failures are not retried once the run is stopping.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::backend::{Backend, Kind, Written, already_a_repository, rel_path};
use super::{Error, Id, Result};

/// Attempts per request (the first and the retries).
const ATTEMPTS: u32 = 6;
/// The first retry's delay; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// How long throttling (503 SlowDown, 429) is retried in all: S3 asks clients to back
/// off and try again, and a burst of SlowDown can last minutes (restic retries for
/// about 15 minutes); failing the run after the 6.2 s other failures get would lose it.
const THROTTLE_BUDGET: Duration = Duration::from_secs(300);
/// The longest wait between two tries while throttled (the backoff's cap).
const THROTTLE_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured: a server asking for more is asked again sooner.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How long a request may go on once the run's cancel flag is set (from the stop, or
/// from its start if later): enough for a working endpoint to take the stopping run's
/// last writes (a pack at 3 MB/s, its index, the lock's removal), short enough that a
/// hung one does not hold the stop (systemd's stop timeout is 90 s; the tests give a
/// stop 10 s). One given up gives up the run's later requests too (`S3::give_up`).
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often a request in flight looks at the cancel flag.
const POLL: Duration = Duration::from_millis(100);

/// Whether a 5xx answer is of a server that may answer later (retried, and after the
/// retries [`Error::Unreachable`]): 500 InternalError, 502, 503, 504 are; 501 (not
/// implemented), 505, 507 (insufficient storage: a full disk, as MinIO's
/// `XMinioStorageFull` also says) and the like are not. A full disk a server reports as
/// a plain 500 `InternalError` cannot be told from a passing fault.
fn transient_status(status: u16, body: &[u8]) -> bool {
    let full = matches!(
        error_code(body).as_deref(),
        Some("XMinioStorageFull" | "StorageFull" | "InsufficientStorage")
    );
    matches!(status, 500 | 502 | 503 | 504) && !full
}

/// A transport failure that a later run would meet the same way: a mistake to fix
/// (exit 1), not an outage to wait out ([`Error::Unreachable`], exit 75). Each with
/// what to fix.
enum Permanent {
    /// The endpoint's TLS certificate does not verify (an unknown issuer, a self-signed
    /// certificate, another host's name, expired): not retried.
    Certificate(&'static str),
    /// The endpoint's host name does not exist, or has no address (DNS: `EAI_NONAME`,
    /// glibc's "Name or service not known", musl's "Name does not resolve" (Alpine),
    /// macOS's "nodename nor servname provided"; `EAI_NODATA`, glibc's "No address
    /// associated with hostname", musl's "Name has no usable address"), still after the
    /// retries: a typo in `AWS_ENDPOINT_URL` or the region. A resolver that cannot
    /// answer for now (`EAI_AGAIN`: glibc's "Temporary failure in name resolution",
    /// musl's "Try again") is an outage, retryable.
    Name(&'static str),
}

/// Whether the transport error `e` (its chain of causes, as `send_once` words it) is
/// [`Permanent`].
fn permanent_transport(e: &str) -> Option<Permanent> {
    if e.contains("invalid peer certificate") || e.contains("certificate verify failed") {
        return Some(Permanent::Certificate(
            "the endpoint's TLS certificate does not verify against the system's \
             trusted roots: check the host name in AWS_ENDPOINT_URL, or give the server a \
             certificate a trusted authority signed; retrying will not help",
        ));
    }
    let no_such_name = [
        "Name or service not known",
        "Name does not resolve",
        "nodename nor servname provided",
        "No address associated with hostname",
        "Name has no usable address",
    ];
    if e.contains("dns error") && no_such_name.iter().any(|m| e.contains(m)) {
        return Some(Permanent::Name(
            "no such host (or it has no address): check the host name in AWS_ENDPOINT_URL (or AWS_REGION for \
             AWS); retrying later will not help",
        ));
    }
    None
}

/// The wait a `Retry-After` header asks for (RFC 9110, 10.2.3): seconds, or an HTTP
/// date (IMF-fixdate, or the obsolete RFC 850 and asctime forms recipients must also
/// accept). A date is measured from the response's `Date` when it has a valid one (the
/// server's clock against the server's clock), else from `now`; a date already past
/// asks for no wait. `None`: neither form.
fn retry_after(value: &str, date: Option<&str>, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let from = date
        .and_then(|d| httpdate::parse_http_date(d.trim()).ok())
        .unwrap_or(now);
    Some(at.duration_since(from).unwrap_or(Duration::ZERO))
}

/// How long a request may take: `base` plus one second per `min_rate` bytes moved.
///
/// Why a timeout that grows with the size rather than reqwest's flat total (it was
/// 300 s, so a 16 MiB pack needed 56 KB/s, four in flight 1.8 Mbit/s, and a slower
/// uplink failed every pack) or a stall timeout: blocking reqwest has no per-read
/// timeout, and the async client's `read_timeout` runs from the request's start until
/// the response head, so it bounds an upload's total time as well. A bound of
/// `base + bytes / min_rate` lets an upload at any rate above `min_rate` finish and
/// still fails a connection that stalls (sends or reads nothing) in bounded time.
///
/// `answer` bounds the wait for the answer's head of a request without a body: the
/// server answers it at once however big the object is, so waiting the whole `base`
/// for a first byte only delays the retry when an endpoint takes the connection and
/// never answers (a hung proxy, a blackholed load balancer).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub base: Duration,
    /// Bytes per second; at least 1.
    pub min_rate: u64,
    /// The answer's head of a request without a body comes within this (and within
    /// the request's whole bound, if that is shorter).
    pub answer: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            base: Duration::from_secs(300),
            min_rate: 8192,
            answer: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    /// From `SNAPRING_S3_TIMEOUT` (seconds), `SNAPRING_S3_MIN_RATE` (bytes a second)
    /// and `SNAPRING_S3_ANSWER_TIMEOUT` (seconds).
    pub fn from_env() -> Result<Timeouts> {
        let mut t = Timeouts::default();
        let num = |name: &str| -> Result<Option<u64>> {
            match env(name) {
                None => Ok(None),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(Error::Other(format!(
                        "{name}={v:?}: expected a whole number above 0"
                    ))),
                },
            }
        };
        if let Some(s) = num("SNAPRING_S3_TIMEOUT")? {
            t.base = Duration::from_secs(s);
        }
        if let Some(r) = num("SNAPRING_S3_MIN_RATE")? {
            t.min_rate = r;
        }
        if let Some(s) = num("SNAPRING_S3_ANSWER_TIMEOUT")? {
            t.answer = Duration::from_secs(s);
        }
        Ok(t)
    }

    /// The time allowed to a request moving `bytes` (body and known response).
    pub fn for_bytes(&self, bytes: u64) -> Duration {
        self.base + Duration::from_secs_f64(bytes as f64 / self.min_rate.max(1) as f64)
    }

    /// The time allowed to the answer's head of a request sending `body` bytes and
    /// receiving `expect` (0: not known): `answer` without a body (at most the whole
    /// bound), else the whole bound, as the answer comes after the body.
    pub fn for_head(&self, body: u64, expect: u64) -> Duration {
        let whole = self.for_bytes(body + expect);
        match body {
            0 => self.answer.min(whole),
            _ => whole,
        }
    }
}

/// AWS credentials.
#[derive(Clone)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

/// An S3 bucket and prefix.
pub struct S3 {
    client: reqwest::blocking::Client,
    /// `scheme://host[:port]`, no trailing slash.
    endpoint: String,
    bucket: String,
    /// The prefix without leading or trailing `/`; may be empty.
    prefix: String,
    region: String,
    path_style: bool,
    /// The credentials requests are signed with now; refreshed from the instance
    /// metadata before they expire when they came from there.
    creds: std::sync::Mutex<Held>,
    pub options: PutOptions,
    /// Each request's time limit.
    pub timeouts: Timeouts,
    /// The run's cancel flag (SIGINT/SIGTERM, the backup window), once a run sets it
    /// (`Backend::watch_cancel`), and how its stop goes (`S3::give_up`).
    cancel: std::sync::Mutex<Watch>,
}

/// The cancel flag watched; when it was first seen set; whether a request has been
/// given up since.
#[derive(Default)]
struct Watch {
    flag: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    stopped_at: Option<std::time::Instant>,
    gave_up: bool,
}

/// What an attempt's thread sends back: the answer's head came (the body is being
/// read), then the outcome.
enum Progress {
    Head,
    Done(std::result::Result<Resp, String>),
}

/// Credentials in use, and where to renew them.
struct Held {
    creds: Credentials,
    /// Credentials that expire: where they came from and when they expire.
    imds: FromImds,
}

/// Where expiring credentials come from, to renew them there.
#[derive(Clone, Debug)]
enum Renew {
    /// The EC2 instance metadata at this endpoint.
    Imds(String),
    /// A container credentials endpoint (the URL; the token is read again each time,
    /// as EKS rotates its file).
    Container(String),
}

/// Instance-metadata and container credentials are renewed this long before they expire (AWS makes
/// new ones available at least 5 minutes before).
const RENEW_BEFORE: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// What uploads ask of the server besides storing the bytes.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    /// `x-amz-server-side-encryption`: `AES256` or `aws:kms`.
    pub sse: Option<String>,
    /// `x-amz-server-side-encryption-aws-kms-key-id`, with `aws:kms`.
    pub sse_kms_key_id: Option<String>,
    /// `x-amz-storage-class` of packs.
    pub storage_class: Option<String>,
}

impl PutOptions {
    /// From `SNAPRING_S3_SSE`, `SNAPRING_S3_SSE_KMS_KEY_ID`, `SNAPRING_S3_STORAGE_CLASS`.
    pub fn from_env() -> Result<PutOptions> {
        let o = PutOptions {
            sse: env("SNAPRING_S3_SSE"),
            sse_kms_key_id: env("SNAPRING_S3_SSE_KMS_KEY_ID"),
            storage_class: env("SNAPRING_S3_STORAGE_CLASS"),
        };
        if let Some(v) = o
            .sse
            .as_deref()
            .filter(|v| !matches!(*v, "AES256" | "aws:kms"))
        {
            return Err(Error::Other(format!(
                "SNAPRING_S3_SSE={v:?}: expected AES256 or aws:kms"
            )));
        }
        if o.sse_kms_key_id.is_some() && o.sse.as_deref() != Some("aws:kms") {
            return Err(Error::Other(
                "SNAPRING_S3_SSE_KMS_KEY_ID needs SNAPRING_S3_SSE=aws:kms".into(),
            ));
        }
        // Objects in these must be restored before a GET: restore and backup would fail.
        if let Some(c) = o
            .storage_class
            .as_deref()
            .filter(|c| matches!(*c, "GLACIER" | "DEEP_ARCHIVE"))
        {
            return Err(Error::Other(format!(
                "SNAPRING_S3_STORAGE_CLASS={c}: objects in it cannot be read without a \
                 restore request; use e.g. STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING or \
                 GLACIER_IR"
            )));
        }
        Ok(o)
    }

    /// The headers of an upload of a file of `kind`.
    fn headers(&self, kind: Option<Kind>) -> Vec<(String, String)> {
        let mut h = Vec::new();
        if let Some(v) = &self.sse {
            h.push(("x-amz-server-side-encryption".into(), v.clone()));
        }
        if let Some(v) = &self.sse_kms_key_id {
            h.push((
                "x-amz-server-side-encryption-aws-kms-key-id".into(),
                v.clone(),
            ));
        }
        if let (Some(v), Some(Kind::Pack)) = (&self.storage_class, kind) {
            h.push(("x-amz-storage-class".into(), v.clone()));
        }
        h
    }
}

/// One HTTP request to send, before signing.
struct Req<'a> {
    method: reqwest::Method,
    /// The object key, or `None` for the bucket itself.
    key: Option<&'a str>,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    /// Shared, not copied, by each attempt.
    body: bytes::Bytes,
    /// The response's length when known (a ranged GET), for the time limit.
    expect: u64,
}

/// A response: status, body, the `Retry-After` it asked for.
struct Resp {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<Duration>,
    content_type: Option<String>,
    /// The answer's `Date` and `Last-Modified`, as they read (the server's clock).
    date: Option<std::time::SystemTime>,
    last_modified: Option<std::time::SystemTime>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl S3 {
    /// `s3://BUCKET/PREFIX` with the settings from the environment.
    pub fn from_url(url: &str) -> Result<S3> {
        let rest = url.strip_prefix("s3://").unwrap_or(url);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Other(format!(
                "--dest {url:?}: expected s3://BUCKET/PREFIX"
            )));
        }
        // Keys have no `.`/`..` parts: S3 would store under them literally, or (signed
        // and normalized on the way) refuse them as a bad signature.
        if prefix.split('/').any(|c| c == "." || c == "..") {
            return Err(Error::Other(format!(
                "--dest {url:?}: a prefix with `.` or `..` parts is not one S3 resolves; write it plainly (s3://BUCKET/a/b)"
            )));
        }
        let profile = config_profile();
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| profile.get("region").cloned())
            .unwrap_or_else(|| "us-east-1".into());
        let custom = env("AWS_ENDPOINT_URL").or_else(|| profile.get("endpoint_url").cloned());
        let path_style = match env("SNAPRING_S3_PATH_STYLE").as_deref() {
            Some("1" | "true" | "yes") => true,
            Some("0" | "false" | "no") => false,
            Some(v) => {
                return Err(Error::Other(format!(
                    "SNAPRING_S3_PATH_STYLE={v:?}: expected true or false"
                )));
            }
            None => custom.is_some() || bucket.contains('.'),
        };
        let endpoint = custom.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let (creds, imds) = credentials(&profile)?;
        let mut s3 = S3::new(&endpoint, bucket, prefix, &region, path_style, creds)?;
        s3.creds.get_mut().unwrap_or_else(|e| e.into_inner()).imds = imds;
        s3.options = PutOptions::from_env()?;
        s3.timeouts = Timeouts::from_env()?;
        Ok(s3)
    }

    pub fn new(
        endpoint: &str,
        bucket: &str,
        prefix: &str,
        region: &str,
        path_style: bool,
        creds: Credentials,
    ) -> Result<S3> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let Some(("http" | "https", host)) = endpoint.split_once("://") else {
            return Err(Error::Other(format!(
                "S3 endpoint {endpoint:?}: expected http://HOST[:PORT] or https://HOST[:PORT]"
            )));
        };
        // A path (or query) would be signed as part of the host and refused by every
        // server as `SignatureDoesNotMatch`, which names neither.
        if host.is_empty() || host.contains(['/', '?', '#', '@']) {
            return Err(Error::Other(format!(
                "S3 endpoint {endpoint:?}: expected http://HOST[:PORT] or https://HOST[:PORT], with no path (the bucket and prefix go in --dest s3://BUCKET/PREFIX)"
            )));
        }
        // Virtual-host style puts the bucket in the host name (`BUCKET.HOST`), which an
        // IP address cannot take: the request failed as a client error, retried 6 times.
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        if !path_style && name.parse::<std::net::IpAddr>().is_ok() {
            return Err(Error::Other(format!(
                "S3 endpoint {endpoint:?}: SNAPRING_S3_PATH_STYLE=false (virtual-host style, \
                 {bucket}.HOST) needs a DNS name, not an IP address: give the endpoint by \
                 name, or leave path style on (SNAPRING_S3_PATH_STYLE=true, the default \
                 with AWS_ENDPOINT_URL)"
            )));
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        // No client-wide total: each request gets one for its size (`Timeouts`).
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(None)
            .build()
            .map_err(|e| Error::Other(format!("cannot set up the HTTP client: {e}")))?;
        Ok(S3 {
            client,
            endpoint,
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            region: region.to_string(),
            path_style,
            creds: std::sync::Mutex::new(Held { creds, imds: None }),
            options: PutOptions::default(),
            timeouts: Timeouts::default(),
            cancel: std::sync::Mutex::new(Watch::default()),
        })
    }

    fn cancelled(&self) -> bool {
        self.cancel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flag
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Is a request started at `start` to be given up for the run's stop? Yes once it
    /// has gone on [`STOP_GRACE`] past the stop (the first call that finds the cancel
    /// flag set marks it) and past its start, or once another request was given up:
    /// the endpoint is taken as hung, and the stop is not made to wait for it again.
    fn give_up(&self, start: std::time::Instant) -> bool {
        let mut w = self.cancel.lock().unwrap_or_else(|e| e.into_inner());
        let set = w
            .flag
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed));
        if !set {
            return false;
        }
        let now = std::time::Instant::now();
        let at = *w.stopped_at.get_or_insert(now);
        if now >= at.max(start) + STOP_GRACE {
            w.gave_up = true;
        }
        w.gave_up
    }

    /// The credentials to sign with now: instance-metadata ones renewed first when they
    /// expire within [`RENEW_BEFORE`] (a failed renewal keeps the old ones while they
    /// last, so the request's own error says what went wrong).
    fn current_creds(&self) -> Credentials {
        let mut h = self.creds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((source, expires)) = h.imds.clone()
            && expires - chrono::Utc::now() < RENEW_BEFORE
        {
            let renewed = match &source {
                Renew::Imds(endpoint) => imds_credentials(endpoint),
                Renew::Container(url) => container_credentials(url),
            };
            match renewed {
                Ok((c, e)) => {
                    h.creds = c;
                    h.imds = Some((source, e));
                }
                Err(e) => tracing::warn!("cannot renew the S3 credentials from {source:?}: {e}"),
            }
        }
        h.creds.clone()
    }

    /// The object key of a path relative to the repository's root.
    fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// `s3://bucket/key`, for messages.
    fn url_of(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// The request's host and path (the path still to be percent-encoded).
    fn host_and_path(&self, key: Option<&str>) -> (String, String) {
        let host = self.endpoint.split_once("://").expect("checked in new").1;
        let key = key.unwrap_or("");
        if self.path_style {
            let path = if key.is_empty() {
                format!("/{}", self.bucket)
            } else {
                format!("/{}/{key}", self.bucket)
            };
            (host.to_string(), path)
        } else {
            (format!("{}.{host}", self.bucket), format!("/{key}"))
        }
    }

    /// Sends a request once, signed now, on a thread of its own (module doc): `Err` is
    /// [`Error::Cancelled`] when the stop's grace ran out meanwhile, `Ok(Err)` a failed
    /// attempt (transport error, time limit).
    fn send_once(&self, r: &Req) -> Result<std::result::Result<Resp, String>> {
        let (host, path) = self.host_and_path(r.key);
        let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let path = uri_encode(&path, false);
        let signed = sign(
            &SignInput {
                method: r.method.as_str(),
                host: &host,
                path: &path,
                query: &r.query,
                headers: &r.headers,
                payload: &r.body,
                amz_date: &now,
                region: &self.region,
            },
            &self.current_creds(),
        );
        let scheme = self.endpoint.split_once("://").expect("checked in new").0;
        let mut url = format!("{scheme}://{host}{path}");
        let q = canonical_query(&r.query);
        if !q.is_empty() {
            url = format!("{url}?{q}");
        }
        let mut rb = self.client.request(r.method.clone(), url);
        for (k, v) in r.headers.iter().chain(signed.iter()) {
            rb = rb.header(k.as_str(), v.as_str());
        }
        let limit = self.timeouts.for_bytes(r.body.len() as u64 + r.expect);
        let head_limit = self.timeouts.for_head(r.body.len() as u64, r.expect);
        let rb = rb.timeout(limit).body(r.body.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("s3-request".into())
            .spawn(move || perform(rb, limit, &tx));
        if let Err(e) = spawned {
            return Ok(Err(format!("cannot start a thread for the request: {e}")));
        }
        let start = std::time::Instant::now();
        let mut head = false;
        loop {
            // An answer already in is taken before the stop is looked at.
            match rx.recv_timeout(POLL) {
                Ok(Progress::Head) => head = true,
                Ok(Progress::Done(r)) => return Ok(r),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Ok(Err("the request's thread ended without an answer".into()));
                }
            }
            if self.give_up(start) {
                return Err(Error::Cancelled);
            }
            if !head && start.elapsed() >= head_limit && head_limit < limit {
                return Ok(Err(format!(
                    "no answer within {}s (SNAPRING_S3_ANSWER_TIMEOUT)",
                    head_limit.as_secs()
                )));
            }
            // reqwest ends the request at `limit` itself; the second's slack only keeps
            // a request that somehow outlives it from holding the run.
            if start.elapsed() >= limit + Duration::from_secs(1) {
                return Ok(Err(timed_out("operation timed out".into(), limit)));
            }
        }
    }

    /// Sends a request, retrying with backoff on transport errors, 5xx and 429. `what`
    /// names the action and object for the error. Other failures get [`ATTEMPTS`] tries
    /// 200 ms, 400 ms, ... apart; throttling (503, 429) is retried until
    /// [`THROTTLE_BUDGET`] has been spent waiting, each wait the server's `Retry-After`
    /// (at most [`MAX_RETRY_AFTER`]) or a capped, jittered exponential backoff,
    /// whichever is longer. Once the run is cancelled a wait in progress ends and a
    /// failure is not retried, and a request past its stop's grace (`S3::give_up`) is
    /// given up with [`Error::Cancelled`], so SIGTERM and the window stop a run within
    /// seconds whatever the endpoint does.
    fn send(&self, r: &Req, what: &str) -> Result<Resp> {
        let mut delay = FIRST_BACKOFF;
        let mut failures = 0u32;
        // The next wait after a failure that is not throttling; `None`: give up.
        let mut ordinary = || {
            failures += 1;
            let d = delay;
            delay *= 2;
            (failures < ATTEMPTS).then_some(d)
        };
        let mut throttle_delay = FIRST_BACKOFF;
        let mut waited = Duration::ZERO;
        let mut attempts = 0u32;
        loop {
            // Whether this failure is a status that is not retried to the end.
            let mut refused = false;
            if self.give_up(std::time::Instant::now()) {
                return Err(Error::Cancelled);
            }
            attempts += 1;
            // `transient`: the last failure is one of a transport or of a server that
            // may work later ([`transient_status`]); the error after the retries is
            // then `Error::Unreachable`.
            let (last, wait, transient) = match self.send_once(r)? {
                Ok(resp) if matches!(resp.status, 503 | 429) => {
                    let last = format!("HTTP {}: {}", resp.status, error_text(&resp.body));
                    let backoff = jitter(throttle_delay);
                    throttle_delay = (throttle_delay * 2).min(THROTTLE_MAX_BACKOFF);
                    let asked = resp.retry_after.map(|d| d.min(MAX_RETRY_AFTER));
                    let wait = asked.map_or(backoff, |a| a.max(backoff));
                    if self.cancelled() || waited + wait > THROTTLE_BUDGET {
                        // Cancelled, or throttled too long: counted as the others are.
                        (last, ordinary(), true)
                    } else {
                        (last, Some(wait), true)
                    }
                }
                Ok(resp) if resp.status >= 500 => {
                    let last = format!("HTTP {}: {}", resp.status, error_text(&resp.body));
                    let transient = transient_status(resp.status, &resp.body);
                    // 501, 505, 507 to the end: the server's refusal.
                    refused = !transient;
                    (last, ordinary(), transient)
                }
                Ok(resp) => return Ok(resp),
                Err(e) => match permanent_transport(&e) {
                    // A certificate that does not verify does not verify on a retry.
                    Some(Permanent::Certificate(fix)) => {
                        return Err(Error::Other(format!("cannot {what}: {e} ({fix})")));
                    }
                    // A name that does not resolve may (a resolver's passing answer):
                    // retried, then a mistake to fix, not an outage.
                    Some(Permanent::Name(fix)) => (format!("{e} ({fix})"), ordinary(), false),
                    None => (e, ordinary(), true),
                },
            };
            if self.cancelled() {
                // A stopping run does not try again: its stop would wait for the retries.
                return Err(Error::Other(format!(
                    "cannot {what} (after {attempts} attempts; not retried, the run is \
                     stopping): {last}"
                )));
            }
            let Some(wait) = wait else {
                let msg = format!("cannot {what} (after {attempts} attempts): {last}");
                return Err(if transient {
                    Error::Unreachable(msg)
                } else if refused {
                    Error::Refused(msg)
                } else {
                    Error::Other(msg)
                });
            };
            tracing::debug!("retrying {what} in {wait:?}: {last}");
            waited += self.sleep(wait);
        }
    }

    /// Sleeps `d`, or less when the run is cancelled meanwhile (a throttled retry's
    /// long wait must not hold a stopping run); returns the time slept. (A stopping
    /// run does not retry, so it never starts one.)
    fn sleep(&self, d: Duration) -> Duration {
        let start = std::time::Instant::now();
        while start.elapsed() < d {
            if self.cancelled() {
                break;
            }
            std::thread::sleep(
                d.saturating_sub(start.elapsed())
                    .min(Duration::from_millis(100)),
            );
        }
        start.elapsed()
    }

    /// An error for an unexpected reply; a missing bucket says so.
    fn failed(&self, what: &str, resp: &Resp) -> Error {
        if error_code(&resp.body).as_deref() == Some("NoSuchBucket") {
            return self.no_bucket(what);
        }
        Error::Refused(format!(
            "cannot {what}: HTTP {}: {}{}",
            resp.status,
            error_text(&resp.body),
            self.hint(resp)
        ))
    }

    /// What to check for a refusal of the credentials or the signature: the server's
    /// code alone (`SignatureDoesNotMatch`, `InvalidAccessKeyId`) does not say which
    /// setting is wrong.
    fn hint(&self, resp: &Resp) -> String {
        let keys = "check the access key and secret (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the profile's in ~/.aws/credentials)";
        match error_code(&resp.body).as_deref() {
            Some("InvalidAccessKeyId" | "NotSignedUp") => {
                format!(" ({keys}: this server does not know the key)")
            }
            Some("SignatureDoesNotMatch") => format!(
                " ({keys}, and the region ({}: AWS_REGION) and endpoint ({}): the server computed another signature)",
                self.region, self.endpoint
            ),
            Some("AccessDenied") => format!(
                " (the credentials are valid but may not use s3://{}/{}: check the key's policy, or {keys})",
                self.bucket, self.prefix
            ),
            Some("AuthorizationHeaderMalformed") => format!(
                " (the region is probably wrong: {} is used; set AWS_REGION to the bucket's)",
                self.region
            ),
            _ => String::new(),
        }
    }

    /// An unexpected reply to a read of a repository file: a file that is not there
    /// (404 other than a missing bucket) or a range past its end (416) is
    /// [`Error::Missing`], the repository's damage; anything else as [`S3::failed`].
    fn read_failed(&self, what: &str, resp: &Resp) -> Error {
        let missing = match resp.status {
            404 => error_code(&resp.body).as_deref() != Some("NoSuchBucket"),
            416 => true,
            _ => false,
        };
        if missing {
            return Error::Missing(format!(
                "cannot {what}: HTTP {}: {}",
                resp.status,
                error_text(&resp.body)
            ));
        }
        self.failed(what, resp)
    }

    /// Fails clearly if the bucket does not exist (HEAD on the bucket).
    fn check_bucket(&self) -> Result<()> {
        let r = Req {
            method: reqwest::Method::HEAD,
            key: None,
            query: vec![],
            headers: vec![],
            body: bytes::Bytes::new(),
            expect: 0,
        };
        let what = format!("check the bucket {}", self.url_of(""));
        let resp = self.send(&r, &what)?;
        match resp.status {
            200 => Ok(()),
            404 => Err(self.no_bucket(&what)),
            _ => Err(self.failed(&what, &resp)),
        }
    }

    /// The endpoint answered a web page where S3 gives an object: it is no S3 server
    /// (a proxy's or portal's page, a wrong `AWS_ENDPOINT_URL`). `init` called that
    /// "already holds a repository".
    fn not_s3(&self, what: &str, resp: &Resp) -> Error {
        let head = String::from_utf8_lossy(&resp.body[..resp.body.len().min(80)])
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        Error::Other(format!(
            "cannot {what}: the endpoint {} does not behave like S3: it answered HTTP {} \
             with content-type {}, starting {head:?}; check AWS_ENDPOINT_URL",
            self.endpoint,
            resp.status,
            resp.content_type.as_deref().unwrap_or("(none)")
        ))
    }

    fn no_bucket(&self, what: &str) -> Error {
        Error::Other(format!(
            "cannot {what}: the bucket {:?} does not exist at {} (create it first)",
            self.bucket, self.endpoint
        ))
    }

    /// A GET; `expect`: the response's length when known (for the time limit), else 0.
    fn get(
        &self,
        key: &str,
        headers: Vec<(String, String)>,
        expect: u64,
        what: &str,
    ) -> Result<Resp> {
        let r = Req {
            method: reqwest::Method::GET,
            key: Some(key),
            query: vec![],
            headers,
            body: bytes::Bytes::new(),
            expect,
        };
        self.send(&r, what)
    }

    fn put(&self, key: &str, bytes: bytes::Bytes, headers: Vec<(String, String)>) -> Result<Resp> {
        let r = Req {
            method: reqwest::Method::PUT,
            key: Some(key),
            query: vec![],
            headers,
            body: bytes,
            expect: 0,
        };
        self.send(&r, &format!("write {}", self.url_of(key)))
    }

    /// Every key under `prefix`, page by page. A listing cut short would hide files
    /// (a prune that misses snapshots deletes their data), so a server that says there
    /// is more but gives no way to it, or the same page again, is an error.
    fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list_keys_of(prefix, false)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// [`S3::list_keys`], each key with the size the listing gives (`None`: none given).
    fn list_keys_sized(&self, prefix: &str) -> Result<Vec<SizedKey>> {
        self.list_keys_of(prefix, true)
    }

    /// Every key under `prefix`; with `sized`, each with its size (else `None`: the
    /// sizes are parsed only for the listings that use them).
    fn list_keys_of(&self, prefix: &str, sized: bool) -> Result<Vec<SizedKey>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (keys, next) = self.list_page(prefix, token.as_deref(), sized)?;
            out.extend(keys);
            match next {
                Some(t) if token.as_ref() == Some(&t) => {
                    return Err(Error::Other(format!(
                        "cannot list {}: the server gave the same continuation token \
                         twice (after {} keys); not a complete listing",
                        self.url_of(prefix),
                        out.len()
                    )));
                }
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// Deletes the object `key`; one already gone is no error.
    fn delete(&self, key: &str) -> Result<()> {
        let what = format!("remove {}", self.url_of(key));
        let r = Req {
            method: reqwest::Method::DELETE,
            key: Some(key),
            query: vec![],
            headers: vec![],
            body: bytes::Bytes::new(),
            expect: 0,
        };
        let resp = self.send(&r, &what)?;
        match resp.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.failed(&what, &resp)),
        }
    }

    /// One page of ListObjectsV2 under `prefix`: keys (with `sized`, each with its
    /// size), and the token of the next page.
    fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
        sized: bool,
    ) -> Result<(Vec<SizedKey>, Option<String>)> {
        let mut query = vec![
            ("list-type".to_string(), "2".to_string()),
            ("prefix".to_string(), prefix.to_string()),
        ];
        if let Some(t) = token {
            query.push(("continuation-token".to_string(), t.to_string()));
        }
        let r = Req {
            method: reqwest::Method::GET,
            key: None,
            query,
            headers: vec![],
            body: bytes::Bytes::new(),
            expect: 0,
        };
        let what = format!("list {}", self.url_of(prefix));
        let resp = self.send(&r, &what)?;
        if resp.status != 200 {
            return Err(self.failed(&what, &resp));
        }
        let xml = String::from_utf8_lossy(&resp.body);
        let (keys, next) =
            list_page_of(&xml).map_err(|why| Error::Other(format!("cannot {what}: {why}")))?;
        if !sized {
            return Ok((keys.into_iter().map(|k| (k, None)).collect(), next));
        }
        let mut sizes = sizes_of(&xml);
        if sizes.len() != keys.len() {
            sizes = vec![None; keys.len()];
        }
        Ok((keys.into_iter().zip(sizes).collect(), next))
    }
}

impl Backend for S3 {
    fn location(&self) -> String {
        self.url_of(&self.prefix)
    }

    fn file_location(&self, kind: Kind, id: &Id) -> String {
        self.url_of(&self.key(&rel_path(kind, id)))
    }

    fn read_config(&self) -> Result<Option<Vec<u8>>> {
        let key = self.key("config");
        let what = format!("read {}", self.url_of(&key));
        let resp = self.get(&key, vec![], 0, &what)?;
        match resp.status {
            200 if looks_like_a_page(&resp) => Err(self.not_s3(&what, &resp)),
            200 => Ok(Some(resp.body)),
            // A server may say NoSuchKey for a missing bucket too.
            404 if error_code(&resp.body).as_deref() != Some("NoSuchBucket") => {
                self.check_bucket()?;
                Ok(None)
            }
            _ => Err(self.failed(&what, &resp)),
        }
    }

    /// A conditional create (`If-None-Match: *`) where the server honours it; `init`
    /// has checked for a `config` before. The same bytes there already are no error.
    fn create_config(&self, bytes: &[u8]) -> Result<()> {
        let key = self.key("config");
        let mut headers = self.options.headers(None);
        headers.push(("if-none-match".into(), "*".into()));
        let resp = self.put(&key, bytes::Bytes::copy_from_slice(bytes), headers)?;
        match resp.status {
            200 => Ok(()),
            // A retried PUT whose first try did land finds its own bytes there.
            412 if self.read_config()?.as_deref() == Some(bytes) => Ok(()),
            412 => Err(already_a_repository(&self.location())),
            _ => Err(self.failed(&format!("write {}", self.url_of(&key)), &resp)),
        }
    }

    /// There are no directories; checks the bucket exists (some servers would create
    /// it on the first PUT, or fail each write with a less clear message).
    fn create_layout(&self) -> Result<()> {
        self.check_bucket()
    }

    fn write(&self, kind: Kind, id: &Id, bytes: &[u8]) -> Result<()> {
        self.write_vec(kind, id, bytes.to_vec())
    }

    fn write_vec(&self, kind: Kind, id: &Id, bytes: Vec<u8>) -> Result<()> {
        let key = self.key(&rel_path(kind, id));
        let resp = self.put(&key, bytes.into(), self.options.headers(Some(kind)))?;
        if resp.status != 200 {
            return Err(self.failed(&format!("write {}", self.url_of(&key)), &resp));
        }
        Ok(())
    }

    fn read(&self, kind: Kind, id: &Id) -> Result<Vec<u8>> {
        let key = self.key(&rel_path(kind, id));
        let what = format!("read {}", self.url_of(&key));
        let resp = self.get(&key, vec![], 0, &what)?;
        if resp.status != 200 {
            return Err(self.read_failed(&what, &resp));
        }
        Ok(resp.body)
    }

    fn read_range(&self, pack: &Id, offset: u64, len: usize) -> Result<Vec<u8>> {
        let key = self.key(&rel_path(Kind::Pack, pack));
        let what = format!("read {len} bytes at {offset} of {}", self.url_of(&key));
        if len == 0 {
            return Ok(Vec::new());
        }
        let range = format!("bytes={offset}-{}", offset + len as u64 - 1);
        let resp = self.get(&key, vec![("range".into(), range)], len as u64, &what)?;
        if resp.status != 206 && resp.status != 200 {
            return Err(self.read_failed(&what, &resp));
        }
        let body = if resp.status == 200 {
            // A server that ignores Range sends the whole object.
            let start = (offset as usize).min(resp.body.len());
            resp.body[start..].iter().take(len).copied().collect()
        } else {
            resp.body
        };
        if body.len() != len {
            // The object ends before the range does (a pack cut short).
            return Err(Error::Missing(format!(
                "cannot {what}: got {} bytes",
                body.len()
            )));
        }
        Ok(body)
    }

    fn remove(&self, kind: Kind, id: &Id) -> Result<()> {
        self.delete(&self.key(&rel_path(kind, id)))
    }

    fn list(&self, kind: Kind) -> Result<Vec<Id>> {
        let keys = self.list_keys(&format!("{}/", self.key(kind.dir())))?;
        let mut out: Vec<Id> = keys
            .iter()
            .filter_map(|k| {
                let name = k.rsplit('/').next()?;
                (name.len() == 64).then(|| Id::parse(name).ok())?
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn list_sizes(&self, kind: Kind) -> Result<Vec<(Id, u64)>> {
        let prefix = format!("{}/", self.key(kind.dir()));
        let mut out = Vec::new();
        for (k, size) in self.list_keys_sized(&prefix)? {
            let Some(id) = k
                .rsplit('/')
                .next()
                .filter(|n| n.len() == 64)
                .and_then(|n| Id::parse(n).ok())
            else {
                continue;
            };
            let Some(size) = size else {
                return Err(Error::Other(format!(
                    "cannot list {}: the server gives no <Size> of {k}",
                    self.url_of(&prefix)
                )));
            };
            out.push((id, size));
        }
        out.sort();
        out.dedup_by_key(|(id, _)| *id);
        Ok(out)
    }

    fn read_extra(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.read_extra_written(rel)?.map(|(b, _)| b))
    }

    /// The object's age from the GET's own answer: its `Date` less its `Last-Modified`,
    /// both set by the server (no extra request, no host's clock). Both are to the
    /// second, so the difference may be up to a second more than the true age: a
    /// second is taken off.
    fn read_extra_written(&self, rel: &str) -> Result<Option<(Vec<u8>, Option<Written>)>> {
        let key = self.key(rel);
        let what = format!("read {}", self.url_of(&key));
        let resp = self.get(&key, vec![], 0, &what)?;
        match resp.status {
            200 if looks_like_a_page(&resp) => Err(self.not_s3(&what, &resp)),
            200 => {
                let written = match (resp.date, resp.last_modified) {
                    (Some(now), Some(at)) => Some(Written::Ago(
                        now.duration_since(at)
                            .unwrap_or_default()
                            .saturating_sub(Duration::from_secs(1)),
                    )),
                    _ => None,
                };
                Ok(Some((resp.body, written)))
            }
            404 => Ok(None),
            _ => Err(self.failed(&what, &resp)),
        }
    }

    /// A conditional write (`If-None-Match: *`): the server refuses it (412) when the
    /// key exists, atomically. A retried PUT whose first try did land finds its own
    /// bytes there; so does one still refused with 409 after its last try (that first
    /// try may be the conditional write in flight), rather than take the conflict for
    /// another's object.
    fn create_extra(&self, rel: &str, bytes: &[u8]) -> Result<bool> {
        let key = self.key(rel);
        let mut headers = self.options.headers(None);
        headers.push(("if-none-match".into(), "*".into()));
        for _ in 0..5 {
            let resp = self.put(&key, bytes::Bytes::copy_from_slice(bytes), headers.clone())?;
            match resp.status {
                200 => return Ok(true),
                412 => return Ok(self.read_extra(rel)?.as_deref() == Some(bytes)),
                // Another conditional write of the key is in flight (AWS answers 409
                // ConditionalRequestConflict): ask again.
                409 => std::thread::sleep(std::time::Duration::from_millis(200)),
                _ => return Err(self.failed(&format!("write {}", self.url_of(&key)), &resp)),
            }
        }
        Ok(self.read_extra(rel)?.as_deref() == Some(bytes))
    }

    fn put_extra(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let key = self.key(rel);
        let resp = self.put(
            &key,
            bytes::Bytes::copy_from_slice(bytes),
            self.options.headers(None),
        )?;
        if resp.status != 200 {
            return Err(self.failed(&format!("write {}", self.url_of(&key)), &resp));
        }
        Ok(())
    }

    fn list_extra(&self, rel: &str) -> Result<Vec<String>> {
        let prefix = format!("{}/", self.key(rel));
        // A deeper key names a folder: its first part.
        let mut out: Vec<String> = self
            .list_keys(&prefix)?
            .iter()
            .filter_map(|k| {
                let name = k.strip_prefix(&prefix)?.split('/').next()?;
                (!name.is_empty()).then(|| name.to_string())
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn remove_extra_tree(&self, rel: &str) -> Result<()> {
        for k in self.list_keys(&format!("{}/", self.key(rel)))? {
            self.delete(&k)?;
        }
        Ok(())
    }

    fn remove_extra(&self, rel: &str) -> Result<()> {
        self.delete(&self.key(rel))
    }

    /// The latest run's flag replaces an earlier one (and its stop's state); the same
    /// flag again keeps the state, so a run that watches it twice gets one grace.
    fn watch_cancel(&self, cancel: &std::sync::Arc<std::sync::atomic::AtomicBool>) {
        let mut w = self.cancel.lock().unwrap_or_else(|e| e.into_inner());
        if !w
            .flag
            .as_ref()
            .is_some_and(|f| std::sync::Arc::ptr_eq(f, cancel))
        {
            *w = Watch {
                flag: Some(cancel.clone()),
                ..Watch::default()
            };
        }
    }
}

/// One attempt, on its own thread: says when the answer's head is in, then sends the
/// outcome. A receiver gone (the request given up) is no error here: the thread ends
/// with the request, at its time limit at the latest.
fn perform(
    rb: reqwest::blocking::RequestBuilder,
    limit: Duration,
    tx: &std::sync::mpsc::Sender<Progress>,
) {
    let outcome = (|| {
        let resp = rb.send().map_err(|e| timed_out(chain(&e), limit))?;
        let _ = tx.send(Progress::Head);
        let status = resp.status().as_u16();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
        let retry_after = header("retry-after")
            .and_then(|v| retry_after(v, header("date"), std::time::SystemTime::now()));
        let content_type = header("content-type").map(str::to_string);
        let date = header("date").and_then(|d| httpdate::parse_http_date(d.trim()).ok());
        let last_modified =
            header("last-modified").and_then(|d| httpdate::parse_http_date(d.trim()).ok());
        let body = resp
            .bytes()
            .map_err(|e| timed_out(chain(&e), limit))?
            .to_vec();
        Ok(Resp {
            status,
            body,
            retry_after,
            content_type,
            date,
            last_modified,
        })
    })();
    let _ = tx.send(Progress::Done(outcome));
}

/// Whether an answer is a web page (HTML), not an object: a `text/html` body starting
/// with `<`, or any body starting `<!DOCTYPE html` or `<html` (a restic `config` is
/// sealed bytes, never that).
fn looks_like_a_page(resp: &Resp) -> bool {
    let html_type = resp
        .content_type
        .as_deref()
        .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/html"));
    let start: Vec<u8> = resp
        .body
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take(14)
        .map(u8::to_ascii_lowercase)
        .collect();
    (html_type && start.starts_with(b"<"))
        || start.starts_with(b"<!doctype html")
        || start.starts_with(b"<html")
}

/// A transport error, saying so when it was the time limit.
fn timed_out(e: String, limit: Duration) -> String {
    if e.contains("timed out") {
        format!(
            "{e} (no answer within {}s, the limit for its size)",
            limit.as_secs()
        )
    } else {
        e
    }
}

/// `d` less a random part of up to half of it, so clients throttled together do not
/// all try again at the same instant.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = getrandom::getrandom(&mut b).map_or(0, |()| u16::from_le_bytes(b));
    d.mul_f64(1.0 - f64::from(r) / f64::from(u16::MAX) / 2.0)
}

/// An error and its causes, `: `-separated (reqwest's own message hides the cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(&format!(": {c}"));
        cur = c.source();
    }
    out
}

/// Instance-metadata credentials: their endpoint and expiry.
type FromImds = Option<(Renew, chrono::DateTime<chrono::Utc>)>;

/// The `AWS_PROFILE` (or default) profile's settings in the shared config file
/// (`AWS_CONFIG_FILE`, else `~/.aws/config`): its `[default]` or `[profile NAME]`
/// section; empty when there is none.
fn config_profile() -> std::collections::HashMap<String, String> {
    let file = env("AWS_CONFIG_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| env("HOME").map(|h| std::path::Path::new(&h).join(".aws/config")));
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let section = match profile.as_str() {
        "default" => profile,
        p => format!("profile {p}"),
    };
    file.and_then(|f| std::fs::read_to_string(f).ok())
        .map(|text| ini_section(&text, &section))
        .unwrap_or_default()
}

/// The `key = value` pairs of section `[name]` of an INI text (AWS's files), keys in
/// lower case.
fn ini_section(text: &str, name: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(n) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = n.split_whitespace().collect::<Vec<_>>().join(" ") == name;
            continue;
        }
        if let Some((k, v)) = line.split_once('=').filter(|_| inside) {
            out.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

/// Keys in an INI section, if it has both.
fn keys_in(s: &std::collections::HashMap<String, String>) -> Option<Credentials> {
    Some(Credentials {
        access_key: s.get("aws_access_key_id")?.clone(),
        secret_key: s.get("aws_secret_access_key")?.clone(),
        session_token: s.get("aws_session_token").cloned(),
    })
}

/// Credentials from the environment, else from the shared credentials file, else from
/// the profile in the shared config file (`profile`), else from the container
/// credentials endpoint when one is set, else from the EC2 instance metadata (IMDSv2:
/// the instance role's); the last two with their expiry.
fn credentials(
    profile_config: &std::collections::HashMap<String, String>,
) -> Result<(Credentials, FromImds)> {
    if let (Some(access_key), Some(secret_key)) =
        (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
    {
        return Ok((
            Credentials {
                access_key,
                secret_key,
                session_token: env("AWS_SESSION_TOKEN"),
            },
            None,
        ));
    }
    let file = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| env("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials")));
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    if let Some(c) = file
        .as_deref()
        .and_then(|f| profile_credentials(f, &profile))
    {
        return Ok((c, None));
    }
    if let Some(c) = keys_in(profile_config) {
        return Ok((c, None));
    }
    if let Some(url) = container_url()? {
        return match container_credentials(&url) {
            Ok((c, expires)) => Ok((c, Some((Renew::Container(url), expires)))),
            Err(e) => Err(Error::Other(format!(
                "no S3 credentials from the container credentials endpoint {url}: {e}"
            ))),
        };
    }
    let imds = match env("AWS_EC2_METADATA_DISABLED").as_deref() {
        Some(v) if v.eq_ignore_ascii_case("true") => {
            "the instance metadata is off (AWS_EC2_METADATA_DISABLED)".to_string()
        }
        _ => {
            let endpoint = env("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                .unwrap_or_else(|| "http://169.254.169.254".into());
            let endpoint = endpoint.trim_end_matches('/').to_string();
            match imds_credentials(&endpoint) {
                Ok((c, expires)) => return Ok((c, Some((Renew::Imds(endpoint), expires)))),
                Err(e) => format!("no instance role at {endpoint}: {e}"),
            }
        }
    };
    Err(Error::Other(format!(
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put them \
         in the [{profile}] section of {}, or run in a container with a role (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or \
         _FULL_URI) or on EC2 with an instance role ({imds})",
        file.map(|f| f.display().to_string())
            .unwrap_or_else(|| "~/.aws/credentials".into())
    )))
}

/// The instance role's credentials from the EC2 instance metadata at `endpoint`
/// (IMDSv2: a session token first, then the role's name, then its keys), with their
/// expiry. Short timeouts: off EC2 nothing answers.
fn imds_credentials(
    endpoint: &str,
) -> std::result::Result<(Credentials, chrono::DateTime<chrono::Utc>), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let fail = |what: &str, e: &dyn std::error::Error| format!("{what}: {}", chain(e));
    let token = client
        .put(format!("{endpoint}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .map_err(|e| fail("token", &e))?;
    let base = format!("{endpoint}/latest/meta-data/iam/security-credentials/");
    let get = |url: &str| {
        client
            .get(url)
            .header("X-aws-ec2-metadata-token", &token)
            .send()
            .and_then(|r| r.error_for_status())
    };
    let roles = get(&base)
        .and_then(|r| r.text())
        .map_err(|e| fail("role", &e))?;
    let Some(role) = roles.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return Err("the instance has no role".into());
    };
    let doc: serde_json::Value = get(&format!("{base}{role}"))
        .and_then(|r| r.json())
        .map_err(|e| fail("credentials", &e))?;
    role_keys(&doc, &format!("role {role}"))
}

/// The keys and their expiry in an instance-metadata or container credentials answer
/// (`AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration`).
fn role_keys(
    doc: &serde_json::Value,
    what: &str,
) -> std::result::Result<(Credentials, chrono::DateTime<chrono::Utc>), String> {
    let field = |k: &str| {
        doc[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{what}: no {k} in the answer"))
    };
    let expires = chrono::DateTime::parse_from_rfc3339(&field("Expiration")?)
        .map_err(|e| format!("{what}: Expiration: {e}"))?
        .with_timezone(&chrono::Utc);
    Ok((
        Credentials {
            access_key: field("AccessKeyId")?,
            secret_key: field("SecretAccessKey")?,
            session_token: field("Token").ok(),
        },
        expires,
    ))
}

/// The container credentials endpoint, when the environment names one: ECS's
/// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (on `http://169.254.170.2`), else
/// `AWS_CONTAINER_CREDENTIALS_FULL_URI` (EKS Pod Identity, or any), which over plain
/// HTTP must be a loopback or the ECS/EKS agent's address, as AWS's SDKs require (the
/// answer is a secret).
fn container_url() -> Result<Option<String>> {
    if let Some(rel) = env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        return Ok(Some(format!("http://169.254.170.2{rel}")));
    }
    let Some(full) = env("AWS_CONTAINER_CREDENTIALS_FULL_URI") else {
        return Ok(None);
    };
    if let Some(rest) = full.strip_prefix("http://") {
        let authority = rest.split('/').next().unwrap_or("");
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.split(':').next().unwrap_or(""),
        };
        let allowed = host == "localhost"
            || host == "169.254.170.2"
            || host == "169.254.170.23"
            || host.eq_ignore_ascii_case("fd00:ec2::23")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !allowed {
            return Err(Error::Other(format!(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI={full:?}: plain http:// only to a \
                 loopback address or the ECS/EKS agent (169.254.170.2, 169.254.170.23); \
                 use https://"
            )));
        }
    } else if !full.starts_with("https://") {
        return Err(Error::Other(format!(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI={full:?}: expected an http:// or https:// URL"
        )));
    }
    Ok(Some(full))
}

/// A container role's credentials from `url`, with the authorization token from
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (read each time) or
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN`, and their expiry.
fn container_credentials(
    url: &str,
) -> std::result::Result<(Credentials, chrono::DateTime<chrono::Utc>), String> {
    let token = match env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
        Some(f) => Some(
            std::fs::read_to_string(&f)
                .map_err(|e| {
                    format!("cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {f}: {e}")
                })?
                .trim()
                .to_string(),
        ),
        None => env("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let mut req = client.get(url);
    if let Some(t) = &token {
        req = req.header("Authorization", t);
    }
    let doc: serde_json::Value = req
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .map_err(|e| chain(&e))?;
    role_keys(&doc, "the container role")
}

/// The keys of one `[profile]` section of an AWS credentials file (INI).
fn profile_credentials(file: &std::path::Path, profile: &str) -> Option<Credentials> {
    keys_in(&ini_section(&std::fs::read_to_string(file).ok()?, profile))
}

/// What SigV4 signs.
struct SignInput<'a> {
    method: &'a str,
    host: &'a str,
    /// Already percent-encoded.
    path: &'a str,
    query: &'a [(String, String)],
    /// Extra headers to sign (names in lower case).
    headers: &'a [(String, String)],
    payload: &'a [u8],
    /// `YYYYMMDDTHHMMSSZ`.
    amz_date: &'a str,
    region: &'a str,
}

/// AWS Signature Version 4 for S3: the headers to add (`x-amz-date`,
/// `x-amz-content-sha256`, `x-amz-security-token`, `authorization`).
fn sign(i: &SignInput, c: &Credentials) -> Vec<(String, String)> {
    let payload_hash = hex::encode(Sha256::digest(i.payload));
    let mut added = vec![
        ("x-amz-content-sha256".to_string(), payload_hash.clone()),
        ("x-amz-date".to_string(), i.amz_date.to_string()),
    ];
    if let Some(t) = &c.session_token {
        added.push(("x-amz-security-token".to_string(), t.clone()));
    }
    let mut all: Vec<(String, String)> = vec![("host".to_string(), i.host.to_string())];
    all.extend(i.headers.iter().cloned());
    all.extend(added.iter().cloned());
    all.sort();
    let signed_headers: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    let signed_headers = signed_headers.join(";");
    let canonical_headers: String = all
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        i.method,
        i.path,
        canonical_query(i.query)
    );
    let date = &i.amz_date[..8];
    let scope = format!("{date}/{}/s3/aws4_request", i.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        i.amz_date,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut k = hmac(format!("AWS4{}", c.secret_key).as_bytes(), date.as_bytes());
    for part in [i.region, "s3", "aws4_request"] {
        k = hmac(&k, part.as_bytes());
    }
    let signature = hex::encode(hmac(&k, to_sign.as_bytes()));
    added.push((
        "authorization".to_string(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope},SignedHeaders={signed_headers},Signature={signature}",
            c.access_key
        ),
    ));
    added
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// Percent-encodes as SigV4 asks: everything but `A-Za-z0-9-._~` (and `/` unless
/// `slash`).
fn uri_encode(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if !slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The query string, sorted and encoded as SigV4's canonical form (also sent as is).
fn canonical_query(q: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> = q
        .iter()
        .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A ListObjectsV2 reply's keys, and the token of the next page when it is cut
/// (`IsTruncated`). A cut reply without a `NextContinuationToken` (a server answering
/// the older ListObjects, which pages by `NextMarker`) is an error: taken as the end,
/// it would hide every key past the first page.
fn list_page_of(xml: &str) -> std::result::Result<(Vec<String>, Option<String>), String> {
    let keys = xml_values(xml, "Key");
    let truncated = match xml_values(xml, "IsTruncated").first().map(String::as_str) {
        Some("true") => true,
        Some("false") => false,
        other => {
            return Err(format!(
                "not a ListObjectsV2 reply (IsTruncated {other:?}): {}",
                error_text(xml.as_bytes())
            ));
        }
    };
    if !truncated {
        return Ok((keys, None));
    }
    match xml_values(xml, "NextContinuationToken").into_iter().next() {
        Some(t) if !t.is_empty() => Ok((keys, Some(t))),
        _ => Err(format!(
            "the reply is cut after {} keys but gives no NextContinuationToken (does the \
             server speak ListObjectsV2?); not a complete listing",
            keys.len()
        )),
    }
}

/// A listed key and its size, where the listing gives one.
type SizedKey = (String, Option<u64>);

/// The `<Size>` of each `<Contents>` of a listing, in order (`None` where one has none).
fn sizes_of(xml: &str) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<Contents>") {
        let after = &rest[start + "<Contents>".len()..];
        let Some(end) = after.find("</Contents>") else {
            break;
        };
        let block = &after[..end];
        out.push(
            xml_values(block, "Size")
                .first()
                .and_then(|s| s.trim().parse().ok()),
        );
        rest = &after[end..];
    }
    out
}

/// The text of every `<tag>…</tag>` in an XML document, entities decoded.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(xml_unescape(&after[..end]));
        rest = &after[end + close.len()..];
    }
    out
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The `<Code>` of an S3 error reply.
fn error_code(body: &[u8]) -> Option<String> {
    xml_values(&String::from_utf8_lossy(body), "Code")
        .into_iter()
        .next()
}

/// An S3 error reply, short: its code and message, else the start of the body.
fn error_text(body: &[u8]) -> String {
    let xml = String::from_utf8_lossy(body);
    let code = xml_values(&xml, "Code").into_iter().next();
    let msg = xml_values(&xml, "Message").into_iter().next();
    match (code, msg) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        _ if xml.trim().is_empty() => "(no details)".to_string(),
        _ => xml.chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Retry-After` as seconds or as an HTTP date in each of RFC 9110's three forms,
    /// measured from the response's `Date` when there is one, else from the clock; a
    /// past date asks for no wait, and garbage for none (the backoff then decides).
    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let at = |s: &str| httpdate::parse_http_date(s).unwrap();
        let now = at("Fri, 31 Dec 1999 23:59:00 GMT");
        let secs = |n| Some(Duration::from_secs(n));
        assert_eq!(retry_after(" 7 ", None, now), secs(7));
        assert_eq!(
            retry_after("Fri, 31 Dec 1999 23:59:59 GMT", None, now),
            secs(59)
        );
        assert_eq!(
            retry_after("Friday, 31-Dec-99 23:59:30 GMT", None, now),
            secs(30)
        );
        assert_eq!(retry_after("Fri Dec 31 23:59:45 1999", None, now), secs(45));
        // The server's `Date` is the reference: its clock 20 s behind ours.
        assert_eq!(
            retry_after(
                "Fri, 31 Dec 1999 23:59:10 GMT",
                Some("Fri, 31 Dec 1999 23:58:40 GMT"),
                now
            ),
            secs(30)
        );
        // An unreadable `Date` falls back to the clock.
        assert_eq!(
            retry_after("Fri, 31 Dec 1999 23:59:10 GMT", Some("yesterday"), now),
            secs(10)
        );
        assert_eq!(
            retry_after("Fri, 31 Dec 1999 23:00:00 GMT", None, now),
            secs(0)
        );
        assert_eq!(retry_after("soon", None, now), None);
        assert_eq!(retry_after("-5", None, now), None);
    }

    /// AWS's published example "GET Object" (Signature Version 4, "Examples of how to
    /// calculate the signature"): the same request must give the same signature.
    /// The bounds by default: a request without a body waits 60 s for its answer's
    /// head, whatever it reads; an upload has 300 s plus 1 s per 8 KiB for all of it.
    #[test]
    fn timeouts_default() {
        let t = Timeouts::default();
        let s = Duration::from_secs;
        assert_eq!(t.for_head(0, 0), s(60));
        assert_eq!(t.for_head(0, 16 << 20), s(60));
        assert_eq!(t.for_bytes(16 << 20), s(300 + 2048));
        assert_eq!(t.for_head(16 << 20, 0), s(300 + 2048));
        // Never beyond the whole bound (`SNAPRING_S3_TIMEOUT` set below 60).
        let short = Timeouts { base: s(5), ..t };
        assert_eq!(short.for_head(0, 0), s(5));
    }

    #[test]
    fn sigv4_matches_aws_example() {
        let creds = Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let headers = vec![("range".to_string(), "bytes=0-9".to_string())];
        let added = sign(
            &SignInput {
                method: "GET",
                host: "examplebucket.s3.amazonaws.com",
                path: "/test.txt",
                query: &[],
                headers: &headers,
                payload: b"",
                amz_date: "20130524T000000Z",
                region: "us-east-1",
            },
            &creds,
        );
        let auth = &added.iter().find(|(k, _)| k == "authorization").unwrap().1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn query_is_sorted_and_encoded() {
        let q = vec![
            ("prefix".to_string(), "p/keys/".to_string()),
            ("list-type".to_string(), "2".to_string()),
        ];
        assert_eq!(canonical_query(&q), "list-type=2&prefix=p%2Fkeys%2F");
    }

    #[test]
    fn a_listing_cut_without_a_token_is_an_error_not_the_end() {
        let page = |truncated: &str, token: &str| {
            format!(
                "<ListBucketResult><Name>b</Name><Prefix>p/snapshots/</Prefix>\
                 <Contents><Key>p/snapshots/a</Key></Contents>\
                 <Contents><Key>p/snapshots/b</Key></Contents>\
                 <IsTruncated>{truncated}</IsTruncated>{token}</ListBucketResult>"
            )
        };
        let (keys, next) = list_page_of(&page("false", "")).unwrap();
        assert_eq!(keys, ["p/snapshots/a", "p/snapshots/b"]);
        assert_eq!(sizes_of(&page("false", "")), [None, None]);
        let sized = "<ListBucketResult><Contents><Key>a</Key><Size>12</Size></Contents>\
                     <Contents><Key>b</Key><Size>0</Size></Contents></ListBucketResult>";
        assert_eq!(sizes_of(sized), [Some(12), Some(0)]);
        assert_eq!(next, None);
        let (_, next) = list_page_of(&page(
            "true",
            "<NextContinuationToken>t1</NextContinuationToken>",
        ))
        .unwrap();
        assert_eq!(next.as_deref(), Some("t1"));
        // A ListObjects (V1) reply to a V2 request: cut, with only a marker.
        let e = list_page_of(&page("true", "<NextMarker>p/snapshots/b</NextMarker>")).unwrap_err();
        assert!(e.contains("cut after 2 keys"), "{e}");
        // Something else than a listing.
        let e = list_page_of("<Error><Code>X</Code><Message>m</Message></Error>").unwrap_err();
        assert!(e.contains("X: m"), "{e}");
    }

    #[test]
    fn xml_values_decode_entities() {
        let xml = "<R><Key>a&amp;b</Key><Key>c</Key><IsTruncated>false</IsTruncated></R>";
        assert_eq!(xml_values(xml, "Key"), vec!["a&b", "c"]);
        assert_eq!(
            error_code(b"<Error><Code>NoSuchBucket</Code></Error>").as_deref(),
            Some("NoSuchBucket")
        );
    }

    #[test]
    fn profile_section_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("credentials");
        std::fs::write(
            &f,
            "[other]\naws_access_key_id = X\n[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n",
        )
        .unwrap();
        let c = profile_credentials(&f, "default").unwrap();
        assert_eq!((c.access_key.as_str(), c.secret_key.as_str()), ("AK", "SK"));
        assert!(profile_credentials(&f, "other").is_none());
    }

    #[test]
    fn config_file_sections_are_read() {
        let text = "# comment\n[default]\nregion = eu-west-1\n[profile  ci]\nRegion=us-west-2\nendpoint_url = http://127.0.0.1:9000\n[ci]\nregion = no\n";
        assert_eq!(ini_section(text, "default")["region"], "eu-west-1");
        let ci = ini_section(text, "profile ci");
        assert_eq!(ci["region"], "us-west-2");
        assert_eq!(ci["endpoint_url"], "http://127.0.0.1:9000");
        assert!(keys_in(&ci).is_none());
        assert!(ini_section(text, "profile other").is_empty());
    }

    /// A certificate that does not verify and a host name that does not exist are
    /// mistakes to fix (exit 1), as reqwest words them (seen against an `openssl
    /// s_server` with a self-signed certificate and `no-such-host.invalid`); they were
    /// `Unreachable` (exit 75 from a shard worker or a stopped restore: try later,
    /// forever). A resolver that cannot answer for now, a refused connection, are not.
    /// The C libraries' words for a name that does not exist or has no address, as
    /// `getaddrinfo`'s error reaches the client (Rust's std: "failed to lookup address
    /// information: " and `gai_strerror`): glibc's (Debian), musl's (Alpine images: it
    /// was exit 75, try again, forever) and glibc's `EAI_NODATA`.
    #[test]
    fn every_libc_wording_of_no_such_host_is_permanent() {
        for words in [
            "Name or service not known",
            "Name does not resolve",
            "No address associated with hostname",
            "Name has no usable address",
        ] {
            let e = format!(
                "error sending request for url (http://no-such-host.invalid:9000/bkt/p/config): \
                 client error (Connect): dns error: failed to lookup address information: {words}"
            );
            assert!(
                matches!(permanent_transport(&e), Some(Permanent::Name(_))),
                "{e}"
            );
        }
    }

    #[test]
    fn a_bad_certificate_or_an_unknown_host_is_permanent() {
        let cert = "error sending request for url (https://localhost:18443/bkt/p/config): \
                    client error (Connect): invalid peer certificate: \
                    Other(OtherError(CaUsedAsEndEntity))";
        assert!(matches!(
            permanent_transport(cert),
            Some(Permanent::Certificate(_))
        ));
        let name = "error sending request for url (http://no-such-host.invalid:9000/bkt/p/config): \
                    client error (Connect): dns error: error resolving DNS: failed to lookup \
                    address information: Name or service not known";
        assert!(matches!(
            permanent_transport(name),
            Some(Permanent::Name(_))
        ));
        for passing in [
            "client error (Connect): dns error: failed to lookup address information: \
             Temporary failure in name resolution",
            // musl's EAI_AGAIN.
            "client error (Connect): dns error: failed to lookup address information: \
             Try again",
            "client error (Connect): tcp connect error: Connection refused (os error 111)",
        ] {
            assert!(permanent_transport(passing).is_none(), "{passing}");
        }
    }
}
