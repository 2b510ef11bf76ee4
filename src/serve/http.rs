//! The HTTP/1.x transport of `serve`, on std's TCP alone: one request per connection
//! (`Connection: close`), only the request's head is read (never a body: the server
//! answers GET and HEAD), and every limit a hostile client could push on is bounded:
//! at most `MAX_CONNECTIONS` open at once (more get `503` at once), a head of at most
//! `MAX_HEAD` bytes (`431`), `TIMEOUT` to send it (a silent close, or `408` for a
//! partial one) and no more than `TIMEOUT` without progress while the answer is
//! written. Each connection has a thread of its own for that I/O; the answers are
//! made one at a time on the thread that calls `serve`, which touches no socket, so a
//! slow or stalled client holds only its own connection.
//!
//! Why not tiny_http (used until 2026-12): it drains an unread request body on a
//! buffer as long as the declared `Content-Length` (`Content-Length: 2^62` aborted
//! the process, a daemon with `[server]` included, before any access check), wrote
//! answers on the answering thread with no timeout (a client that never reads stalled
//! every page) and kept a thread per idle connection for ever. Does network I/O.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Connections open at once; more are answered `503` and closed.
pub const MAX_CONNECTIONS: usize = 32;
/// The longest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// How long a client has to send its head, and to take each part of the answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A request's head.
pub struct Request {
    pub method: String,
    /// The request target as sent (`/job/home?x=1`).
    pub target: String,
    headers: Vec<(String, String)>,
    /// When its head was read: requests are answered one at a time, so one may wait
    /// behind others; what it may still wait (for a locked catalog) counts from here.
    pub arrived: Instant,
}

impl Request {
    /// The value of the first header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An answer: status, headers and body (left out for `HEAD`, with its length kept).
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, &'static str)>,
    pub body: Vec<u8>,
}

/// A bound listener; `addr` is where it listens (the port chosen when 0 was asked).
pub struct Listener {
    tcp: TcpListener,
    pub addr: SocketAddr,
}

/// Binds `addr`.
pub fn bind(addr: SocketAddr) -> std::io::Result<Listener> {
    let tcp = TcpListener::bind(addr)?;
    let addr = tcp.local_addr()?;
    Ok(Listener { tcp, addr })
}

type Job = (Request, mpsc::SyncSender<Vec<u8>>);

/// Answers each request with `answer`, one at a time on this thread, until `stop`.
pub fn serve(l: &Listener, stop: &AtomicBool, mut answer: impl FnMut(&Request) -> Response) {
    let (tx, rx) = mpsc::sync_channel::<Job>(MAX_CONNECTIONS);
    let closed = Arc::new(AtomicBool::new(false));
    let accepting = match l.tcp.try_clone() {
        Ok(tcp) => {
            let closed = closed.clone();
            std::thread::Builder::new()
                .name("serve-accept".into())
                .spawn(move || accept(tcp, tx, &closed))
        }
        Err(e) => Err(e),
    };
    if let Err(e) = accepting {
        tracing::error!("serve: cannot start accepting on {}: {e}", l.addr);
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((req, reply)) => {
                let resp = answer(&req);
                let _ = reply.send(encode(&resp, req.method == "HEAD"));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Wake the accepting thread so it sees `closed` and lets go of the socket.
    closed.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect_timeout(&l.addr, Duration::from_secs(1));
}

/// Accepts connections until `closed`, each on a thread of its own, at most
/// `MAX_CONNECTIONS` at once.
fn accept(tcp: TcpListener, tx: mpsc::SyncSender<Job>, closed: &AtomicBool) {
    let open = Arc::new(AtomicUsize::new(0));
    for conn in tcp.incoming() {
        if closed.load(Ordering::Relaxed) {
            return;
        }
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: wait a little instead of spinning.
                tracing::warn!("serve: accepting a connection: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            // Without blocking: the answer fits an empty socket buffer, and what the
            // client sent so far is read so that closing does not reset the answer.
            let _ = conn.set_nonblocking(true);
            let _ = conn.write_all(&encode(&plain(503, "too many connections\n"), false));
            let _ = conn.shutdown(Shutdown::Write);
            let mut sink = [0u8; 4096];
            for _ in 0..16 {
                if !matches!(conn.read(&mut sink), Ok(1..)) {
                    break;
                }
            }
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let guard = Open(open.clone());
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("serve-conn".into())
            .spawn(move || {
                let _guard = guard;
                connection(conn, &tx);
            });
        if let Err(e) = spawned {
            tracing::warn!("serve: cannot start a thread for a connection: {e}");
        }
    }
}

/// Counts an open connection until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection: its head, the answer from the answering thread, written back.
fn connection(mut conn: TcpStream, tx: &mpsc::SyncSender<Job>) {
    let reply = match read_head(&mut conn) {
        Ok(head) => match parse_head(&head) {
            Some(req) => {
                let (rtx, rrx) = mpsc::sync_channel(1);
                if tx.send((req, rtx)).is_err() {
                    return;
                }
                match rrx.recv() {
                    Ok(bytes) => bytes,
                    Err(_) => return,
                }
            }
            None => encode(&plain(400, "bad request\n"), false),
        },
        Err(Some(status)) => encode(
            &plain(status, "request head too large or too slow\n"),
            false,
        ),
        Err(None) => return,
    };
    let _ = conn.set_write_timeout(Some(TIMEOUT));
    if conn.write_all(&reply).is_err() {
        return;
    }
    // Close gently: a client still sending a body would get a reset, not the answer.
    let _ = conn.shutdown(Shutdown::Write);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        if matches!(conn.read(&mut sink), Ok(0) | Err(_)) {
            break;
        }
    }
}

/// The request's head (up to the blank line), read within `TIMEOUT`. `Err(None)`: the
/// client sent nothing or went away (close without a word); `Err(Some(status))`: too
/// large (431) or too slow (408).
fn read_head(conn: &mut TcpStream) -> Result<Vec<u8>, Option<u16>> {
    let deadline = Instant::now() + TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            return Err((!head.is_empty()).then_some(408));
        }
        let n = match conn.read(&mut buf) {
            Ok(0) => return Err(None),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err((!head.is_empty()).then_some(408));
            }
            Err(_) => return Err(None),
        };
        let from = head.len().saturating_sub(2);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head_end(&head, from) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(Some(431));
        }
    }
}

/// Where the head in `head` ends (the index of the line end before the blank line),
/// looking from `from` on: the blank line is CRLF CRLF, or bare LFs, which RFC 9112
/// §2.2 lets a server take as line ends (a client sending them waited 10 s for a 408).
fn head_end(head: &[u8], from: usize) -> Option<usize> {
    let at = head[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| from + i)?;
    let mut i = at;
    loop {
        // `i` is an LF: a blank line follows when the next is LF, or CR then LF.
        match (head.get(i + 1), head.get(i + 2)) {
            (Some(b'\n'), _) | (Some(b'\r'), Some(b'\n')) => {
                return Some(if i > 0 && head[i - 1] == b'\r' {
                    i - 1
                } else {
                    i
                });
            }
            _ => {}
        }
        i = head[i + 1..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|j| i + 1 + j)?;
    }
}

/// The request line and headers of `head` (without the blank line); `None` when it is
/// not an HTTP/1.x request head. Lines end in CRLF or a bare LF (RFC 9112 §2.2); a CR
/// anywhere else is refused. An HTTP/1.1 request must have exactly one `Host` header
/// (RFC 9112 §3.2: 400 without one, or with two, where the first one won).
fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    if lines.clone().any(|l| l.contains('\r')) {
        return None;
    }
    let mut first = lines.next()?.split(' ');
    let (method, target, version) = (first.next()?, first.next()?, first.next()?);
    if first.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || target.is_empty()
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return None;
    }
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line.split_once(':')?;
        // No folded lines, no space before the colon (RFC 9112 §5).
        if k.is_empty() || k.bytes().any(|b| b.is_ascii_whitespace()) {
            return None;
        }
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let hosts = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("Host"))
        .count();
    if hosts > 1 || (hosts == 0 && version == "HTTP/1.1") {
        return None;
    }
    Some(Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        arrived: Instant::now(),
    })
}

fn plain(status: u16, body: &str) -> Response {
    Response {
        status,
        headers: vec![("Content-Type", "text/plain; charset=utf-8")],
        body: body.as_bytes().to_vec(),
    }
}

/// `r` as bytes on the wire; without the body for `HEAD`.
fn encode(r: &Response, head_only: bool) -> Vec<u8> {
    let reason = match r.status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    // No Content-Length on a 204 (RFC 9110 §8.6).
    let length = match r.status {
        204 => String::new(),
        _ => format!("Content-Length: {}\r\n", r.body.len()),
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nDate: {}\r\n{length}Connection: close\r\n",
        r.status,
        chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT"),
    )
    .into_bytes();
    for (k, v) in &r.headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&r.body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_a_request_line_and_headers_or_nothing() {
        let r = parse_head(b"GET /job/a?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9477\r\nX-A:  b ").unwrap();
        assert_eq!(
            (r.method.as_str(), r.target.as_str()),
            ("GET", "/job/a?x=1")
        );
        assert_eq!(r.header("host"), Some("127.0.0.1:9477"));
        assert_eq!(r.header("x-a"), Some("b"));
        for bad in [
            &b"GET / HTTP/2.0"[..],
            b"GET /  HTTP/1.1",
            b"GET / HTTP/1.1\r\n folded",
            b"GET / HTTP/1.1\r\nHost : x",
            b"get / HTTP/1.1",
            b"GET / HTTP/1.1\r\nX: \xff",
        ] {
            assert!(
                parse_head(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// RFC 9112 §3.2: two `Host` headers (the first won) and an HTTP/1.1 request
    /// without one (answered) are 400; HTTP/1.0 needs none. §2.2: bare LF line ends
    /// are taken (such a head waited for a 408), a CR elsewhere is not.
    #[test]
    fn one_host_for_http_1_1_and_bare_lf_line_ends() {
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b").is_none());
        assert!(parse_head(b"GET / HTTP/1.0\r\nhost: a\r\nHOST: a").is_none());
        assert!(parse_head(b"GET / HTTP/1.1").is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nX-A: b").is_none());
        assert!(parse_head(b"GET / HTTP/1.0").is_some());
        let r = parse_head(b"GET /x HTTP/1.1\nHost: a\r\nX-A: b").unwrap();
        assert_eq!((r.target.as_str(), r.header("host")), ("/x", Some("a")));
        assert_eq!(r.header("x-a"), Some("b"));
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: a\rX-A: b").is_none());
        for (head, end) in [
            (&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..], Some(23)),
            (b"GET / HTTP/1.1\nHost: a\n\n", Some(22)),
            (b"GET / HTTP/1.1\nHost: a\n\r\n", Some(22)),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r", None),
            (b"GET / HTTP/1.1\r\nHost: a\r\n", None),
        ] {
            assert_eq!(head_end(head, 0), end, "{}", String::from_utf8_lossy(head));
            for from in 0..head.len() {
                let found = head_end(head, from);
                assert!(found.is_none() || found == end, "{from}");
            }
        }
    }

    #[test]
    fn head_answers_carry_the_length_but_no_body() {
        let r = Response {
            status: 200,
            headers: vec![("Content-Type", "text/plain")],
            body: b"hello".to_vec(),
        };
        let full = String::from_utf8(encode(&r, false)).unwrap();
        let head = String::from_utf8(encode(&r, true)).unwrap();
        assert!(full.starts_with("HTTP/1.1 200 OK\r\n") && full.ends_with("\r\n\r\nhello"));
        assert!(head.contains("Content-Length: 5\r\n") && head.ends_with("\r\n\r\n"));
        let empty = Response {
            status: 204,
            headers: vec![],
            body: vec![],
        };
        let none = String::from_utf8(encode(&empty, false)).unwrap();
        assert!(none.starts_with("HTTP/1.1 204 No Content\r\n"), "{none}");
        assert!(!none.contains("Content-Length"), "{none}");
    }
}
