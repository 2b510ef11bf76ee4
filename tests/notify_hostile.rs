//! Notifiers and hooks against hostile or broken receivers, commands and names: a
//! webhook that redirects, an SMTP server that trickles its replies or offers no
//! STARTTLS, a command that leaves a process holding its output or outlives its
//! timeout, a hook that prints hundreds of megabytes, and names that are not ASCII or
//! hold a line that is a single dot. Every receiver is a real server started here and
//! every command a real process.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `snapring ARGS` with the test environment of `common::snapring`, killed if it has
/// not ended within `secs`: (exit code, `None` if it was killed; report; stderr; time).
fn run_within(
    secs: u64,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, serde_json::Value, String, Duration) {
    let t0 = Instant::now();
    let mut c = Command::new(bin());
    c.args(args)
        .env("SNAPRING_CATALOG", "off")
        .env(
            "XDG_CACHE_HOME",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    // A process the run left behind may hold its pipes: do not wait for it.
    let join = |h: std::thread::JoinHandle<Vec<u8>>| {
        let t = Instant::now();
        while !h.is_finished() && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if h.is_finished() {
            h.join().unwrap()
        } else {
            Vec::new()
        }
    };
    let (out, err) = (join(o), join(e));
    (
        code,
        serde_json::from_slice(&out).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&err).into_owned(),
        took,
    )
}

/// A config with job `home` (`job_extra` added to it) naming `names` as its notifiers,
/// which `notifiers` defines.
fn config(dir: &Path, dest: &Path, job_extra: &str, names: &[&str], notifiers: &str) -> String {
    let src = dir.join("src");
    write(&src.join("a/f"), b"data");
    let cfg = dir.join("s.toml");
    let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    std::fs::write(
        &cfg,
        format!(
            "[job.home]\nsource = {src:?}\ndest = {dest:?}\n{job_extra}\nnotify = [{}]\n\n{notifiers}\n",
            names.join(", "),
            src = src.to_str().unwrap(),
            dest = dest.to_str().unwrap(),
        ),
    )
    .unwrap();
    cfg.to_str().unwrap().to_string()
}

fn notification<'a>(rep: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    rep["notifications"]
        .as_array()
        .and_then(|n| n.iter().find(|o| o["notifier"] == name))
        .unwrap_or_else(|| panic!("no notification by {name}: {rep}"))
}

/// A server that answers each request with `answer` and records each request's head.
fn http_answering(answer: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&h);
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            g.lock().unwrap().push(head);
            let _ = s.write_all(answer.as_bytes());
        }
    });
    (port, got)
}

/// A webhook receiver that redirects to another host got the report re-posted there,
/// with the webhook's URL, token and all, as the Referer. Redirects are not followed
/// now: the notification fails and says where it was sent, redacted.
#[test]
fn a_webhook_redirect_is_not_followed_and_the_token_goes_nowhere_else() {
    let t = tempfile::tempdir().unwrap();
    let (other, other_got) =
        http_answering("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    let answer: &'static str = Box::leak(
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://localhost:{other}/collect?k=v\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .into_boxed_str(),
    );
    let (port, got) = http_answering(answer);
    let cfg = config(
        t.path(),
        &t.path().join("b"),
        "require_mount = true",
        &["hook"],
        "[notify.hook]\ntype = \"webhook\"\nurl_env = \"HOOK_URL\"\nretries = 0\n",
    );
    let url = format!("http://127.0.0.1:{port}/hook/T0KEN-SECRET");
    let (code, rep, err, _) = run_within(
        60,
        &["run", "home", "--config", &cfg, "--json"],
        &[("HOOK_URL", &url)],
    );
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(got.lock().unwrap().len(), 1);
    let leaked = other_got.lock().unwrap().clone();
    assert!(
        leaked.is_empty(),
        "the redirect target got the report: {leaked:?}"
    );
    let n = notification(&rep, "hook");
    assert_eq!(n["ok"], false, "{rep}");
    let e = n["error"].as_str().unwrap();
    assert!(
        e.contains("307") && e.contains("not followed") && e.contains("localhost"),
        "{e}"
    );
    assert!(!e.contains("T0KEN") && !err.contains("T0KEN"), "{e}\n{err}");
}

/// Undoes quoted-printable (soft line breaks and `=XX`).
fn unqp(s: &str) -> String {
    let s = s.replace("=\r\n", "");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'='
            && i + 3 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn email_notifier(port: u16, tls: &str) -> String {
    format!(
        "[notify.mail]\ntype = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\ntls = \"{tls}\"\nusername = \"snapring\"\npassword_env = \"SMTP_PW\"\nfrom = \"snapring <snapring@example.com>\"\nto = [\"ops@example.com\"]\nretries = 0\ntimeout = \"3s\"\n"
    )
}

/// The mail was a bare body: no MIME-Version and no Content-Type, so its
/// quoted-printable UTF-8 (a store path that is not ASCII) read as US-ASCII, or
/// undecoded. It is a text/plain part in UTF-8 now. A line that is a single dot in the
/// text (a path holding "\n.\n") is dot-stuffed, so the rest of the mail is not taken
/// for SMTP commands; a job name with CR/LF does not make a header of its own.
#[test]
fn a_mail_is_mime_utf8_and_odd_names_neither_end_it_nor_add_headers() {
    let t = tempfile::tempdir().unwrap();
    let sink = smtp_sink("250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n");
    let dest = t.path().join("bäckup\n.\nQUIT");
    let cfg = config(
        t.path(),
        &dest,
        "require_mount = true",
        &["mail"],
        &email_notifier(sink.port, "none"),
    );
    // A job whose name holds a CR/LF and what would be a header.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[job.home]", "[job.\"home\\r\\nBcc: victim@example.com\"]");
    std::fs::write(&cfg, text).unwrap();
    let (code, rep, err, _) = run_within(
        60,
        &[
            "run",
            "home\r\nBcc: victim@example.com",
            "--config",
            &cfg,
            "--json",
        ],
        &[("SMTP_PW", "pw")],
    );
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(notification(&rep, "mail")["ok"], true, "{rep}");
    let mails = sink.mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    let (head, body) = m.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("MIME-Version: 1.0"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; charset=utf-8"),
        "{head}"
    );
    assert!(
        !head.lines().any(|l| l.starts_with("Bcc:")),
        "a header was injected: {head}"
    );
    assert!(
        head.contains("Content-Transfer-Encoding: quoted-printable"),
        "{head}"
    );
    let body = unqp(body);
    // Whole: the line with a single dot (stuffed, or encoded) did not end it, and
    // nothing after it was taken for a command.
    assert!(
        body.contains("bäckup\r\n") && body.contains("\r\nQUIT") && body.contains("log: "),
        "the mail was cut: {body}"
    );
}

/// A server that trickles its greeting a byte at a time never trips lettre's
/// per-read timeout: the run waited for ever. The attempt is given up when the
/// notifier's timeout passes. A server that answers nothing times out too, and one
/// that offers no STARTTLS (the default `tls`) never gets the password in clear.
#[test]
fn a_trickling_silent_or_plain_smtp_server_neither_holds_the_run_nor_gets_the_password() {
    let t = tempfile::tempdir().unwrap();
    let trickle = TcpListener::bind("127.0.0.1:0").unwrap();
    let tport = trickle.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in trickle.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.write_all(b"220-");
                while s.write_all(b"x").is_ok() {
                    std::thread::sleep(Duration::from_millis(300));
                }
            });
        }
    });
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let sport = silent.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in silent.incoming().flatten() {
            h.lock().unwrap().push(s);
        }
    });
    let plain = smtp_sink("250 AUTH PLAIN LOGIN\r\n");
    let notifiers = [
        email_notifier(tport, "none").replace("[notify.mail]", "[notify.trickle]"),
        email_notifier(sport, "none").replace("[notify.mail]", "[notify.silent]"),
        email_notifier(plain.port, "starttls").replace("[notify.mail]", "[notify.plain]"),
    ]
    .join("\n");
    let cfg = config(
        t.path(),
        &t.path().join("b"),
        "require_mount = true",
        &["trickle", "silent", "plain"],
        &notifiers,
    );
    let (code, rep, err, took) = run_within(
        90,
        &["run", "home", "--config", &cfg, "--json"],
        &[("SMTP_PW", "pa55-SECRET")],
    );
    assert_eq!(code, Some(1), "the run did not end in 90s: {err}");
    assert!(took < Duration::from_secs(40), "{took:?}");
    for n in ["trickle", "silent", "plain"] {
        assert_eq!(notification(&rep, n)["ok"], false, "{rep}");
    }
    let e = notification(&rep, "trickle")["error"].as_str().unwrap();
    assert!(e.contains("no answer within 3s"), "{e}");
    assert!(
        plain.auth.lock().unwrap().is_empty() && plain.mails.lock().unwrap().is_empty(),
        "credentials or mail sent without TLS"
    );
    assert!(!err.contains("pa55-SECRET"));
}

/// A permanent refusal (550 to RCPT) was retried like a 4xx one, each attempt sending
/// the password and being refused again. A 5xx answer fails at once with the server's
/// reply; a 4xx one keeps its retries.
#[test]
fn a_permanent_smtp_refusal_is_not_retried_a_transient_one_is() {
    let t = tempfile::tempdir().unwrap();
    let refuse = smtp_sink_rcpt(
        "250 AUTH PLAIN LOGIN\r\n",
        "550 5.1.1 no such user here\r\n",
    );
    let busy = smtp_sink_rcpt("250 AUTH PLAIN LOGIN\r\n", "451 4.3.0 try again later\r\n");
    let notifiers = [
        email_notifier(refuse.port, "none")
            .replace("[notify.mail]", "[notify.refuse]")
            .replace("retries = 0", "retries = 2"),
        email_notifier(busy.port, "none")
            .replace("[notify.mail]", "[notify.busy]")
            .replace("retries = 0", "retries = 2"),
    ]
    .join("\n");
    let cfg = config(
        t.path(),
        &t.path().join("b"),
        "require_mount = true",
        &["refuse", "busy"],
        &notifiers,
    );
    let (code, rep, err, _) = run_within(
        90,
        &["run", "home", "--config", &cfg, "--json"],
        &[("SMTP_PW", "pw")],
    );
    assert_eq!(code, Some(1), "{err}");
    let r = notification(&rep, "refuse");
    assert_eq!(r["ok"], false, "{rep}");
    assert_eq!(r["attempts"], 1, "a permanent refusal was retried: {rep}");
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("550") && e.contains("no such user here"), "{e}");
    assert_eq!(refuse.auth.lock().unwrap().len(), 1);
    let b = notification(&rep, "busy");
    assert_eq!(b["ok"], false, "{rep}");
    assert_eq!(
        b["attempts"], 3,
        "a transient refusal was not retried: {rep}"
    );
    assert_eq!(busy.auth.lock().unwrap().len(), 3);
}

/// A command notifier that failed while a process it started still held its stderr
/// was waited for until that process ended (`read_to_string` on the pipe); one that
/// outlived its timeout was killed, but not what it started. It runs as a hook now:
/// its output read as it comes, its process group killed at the timeout.
#[test]
fn a_command_notifier_neither_waits_for_its_leftovers_nor_leaves_them_running() {
    let t = tempfile::tempdir().unwrap();
    let pid = t.path().join("pid");
    let notifiers = format!(
        "[notify.leaves]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"sleep 30 & echo gone wrong >&2; exit 3\"]\nretries = 0\ntimeout = \"20s\"\n\n\
         [notify.hangs]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"sleep 300 & echo $! > {pid}; wait\"]\nretries = 0\ntimeout = \"2s\"\n",
        pid = pid.display()
    );
    let cfg = config(
        t.path(),
        &t.path().join("b"),
        "require_mount = true",
        &["leaves", "hangs"],
        &notifiers,
    );
    let (code, rep, err, took) = run_within(90, &["run", "home", "--config", &cfg, "--json"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        took < Duration::from_secs(15),
        "the run waited for a process the notifier left behind: {took:?}"
    );
    let leaves = notification(&rep, "leaves");
    assert_eq!(leaves["ok"], false);
    let e = leaves["error"].as_str().unwrap();
    assert!(
        e.contains("exit status: 3") && e.contains("gone wrong"),
        "{e}"
    );
    let hangs = notification(&rep, "hangs");
    assert!(
        hangs["error"].as_str().unwrap().contains("timed out"),
        "{hangs}"
    );
    let pid: u32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t0 = Instant::now();
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    while alive() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let still = alive();
    if still {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    assert!(!still, "the notifier's child {pid} outlived its timeout");
}

/// Whether process `pid` runs (not gone, not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// A command notifier that succeeded, leaving a process in the background that held
/// its output (`sleep 300 & echo sent`): the run did not wait for it, but it outlived
/// the run (and would a daemon's, one per notification). It is killed with the
/// notifier's process group once the command has ended; one that let go of the output
/// (`>/dev/null 2>&1 &`, as `nohup` is used) is meant to outlive it, and does.
#[test]
fn a_command_notifier_that_succeeds_leaves_nothing_running_that_holds_its_output() {
    let t = tempfile::tempdir().unwrap();
    let (held, free) = (t.path().join("held"), t.path().join("free"));
    let own = t.path().join("own");
    let notifiers = format!(
        "[notify.holds]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"sleep 300 & echo $! > {held}; echo sent\"]\nretries = 0\ntimeout = \"20s\"\n\n\
         [notify.detaches]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"sleep 300 >/dev/null 2>&1 & echo $! > {free}\"]\nretries = 0\ntimeout = \"20s\"\n\n\
         [notify.leaves]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"setsid sleep 300 & echo $! > {own}; echo sent\"]\nretries = 0\ntimeout = \"20s\"\n",
        held = held.display(),
        free = free.display(),
        own = own.display()
    );
    let cfg = config(
        t.path(),
        &t.path().join("b"),
        "require_mount = true",
        &["holds", "detaches", "leaves"],
        &notifiers,
    );
    let (code, rep, err, took) = run_within(90, &["run", "home", "--config", &cfg, "--json"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    for n in ["holds", "detaches", "leaves"] {
        assert_eq!(notification(&rep, n)["ok"], true, "{rep}");
    }
    let pid = |p: &Path| -> u32 { std::fs::read_to_string(p).unwrap().trim().parse().unwrap() };
    let (held, free, own) = (pid(&held), pid(&free), pid(&own));
    let t0 = Instant::now();
    while running(held) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let still = running(held);
    let kept = running(free);
    let left = running(own);
    for p in [held, free, own] {
        let _ = Command::new("kill").arg(p.to_string()).status();
    }
    assert!(
        !still,
        "the notifier's background child {held} outlived the run"
    );
    assert!(kept, "a child that let go of the output was killed");
    // Out of the group (`setsid`): not killed, and not said to be (it said "killed").
    assert!(left, "a child that left the process group was killed");
    assert!(
        err.contains("notifier leaves: its output is still held by a process it started outside")
            && !err.contains("notifier leaves: killed"),
        "{err}"
    );
}

/// A command notifier that succeeded, leaving a process that held its output and then
/// left its process group (`setsid`): once the command had been reaped, its process
/// group's id was free, and the kill of "what it left in its group" went to whatever
/// new group took that id. Here a new, unrelated process group takes the id just then
/// (the next process id set through `ns_last_pid`, at a pause before that kill): it is
/// not killed, as the command is reaped only after the kill.
#[test]
fn a_notifiers_leftover_kill_does_not_reach_a_new_group_with_its_old_id() {
    use std::os::unix::process::CommandExt;
    let t = tempfile::tempdir().unwrap();
    let (grp, own) = (t.path().join("grp"), t.path().join("own"));
    let notifiers = format!(
        "[notify.leaves]\ntype = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $$ > {grp}; setsid sleep 300 & echo $! > {own}; echo sent\"]\nretries = 0\ntimeout = \"20s\"\n",
        grp = grp.display(),
        own = own.display()
    );
    let cfg = config(
        t.path(),
        &t.path().join("b"),
        "require_mount = true",
        &["leaves"],
        &notifiers,
    );
    let mut cmd = Command::new(bin());
    cmd.args(["run", "home", "--config", &cfg, "--json"])
        .env("SNAPRING_CATALOG", "off")
        .stdin(Stdio::null());
    let pause = t.path().join("pause");
    let child = paused_at(cmd, "hooks.leftovers", &pause);
    let pid = |p: &Path| -> u32 { std::fs::read_to_string(p).unwrap().trim().parse().unwrap() };
    let (group, own) = (pid(&grp), pid(&own));
    // A new process group, made to get the notifier's old group id if that is free.
    let mut decoy = None;
    for _ in 0..50 {
        if std::fs::write("/proc/sys/kernel/ns_last_pid", (group - 1).to_string()).is_err() {
            break;
        }
        let mut c = Command::new("sleep")
            .arg("300")
            .process_group(0)
            .spawn()
            .unwrap();
        // Got it, or it is still taken (by the notifier's command, not reaped).
        if c.id() == group || Path::new(&format!("/proc/{group}")).exists() {
            decoy = Some(c);
            break;
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = Command::new("kill").arg(own.to_string()).status();
    let Some(mut decoy) = decoy else {
        eprintln!("skipped: cannot set the next process id (ns_last_pid)");
        return;
    };
    std::thread::sleep(Duration::from_millis(200));
    let alive = running(decoy.id());
    let _ = decoy.kill();
    let _ = decoy.wait();
    assert!(
        alive,
        "an unrelated process group {} (the notifier's was {group}) was killed:\n{err}",
        decoy.id()
    );
    assert!(
        err.contains("notifier leaves: its output is still held by a process it started outside")
            && !err.contains("notifier leaves: killed"),
        "{err}"
    );
}

/// A hook whose output has no newline was read into one line in memory, however
/// long; a chatty one wrote every line into the run's log. A line is cut at 4 KiB and
/// at most 1 MiB of each stream is logged now.
#[test]
fn a_hook_that_prints_hundreds_of_megabytes_fills_neither_memory_nor_the_log() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("b"));
    write(&src.join("f"), b"x");
    let (code, rep, err) = backup(
        &src,
        &dest,
        &["--pre-command", "head -c 300000000 /dev/zero"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let peak = rep["peak_rss_bytes"].as_u64().unwrap();
    assert!(peak < 150 << 20, "peak RSS {peak} bytes");
    let (code, rep, err) = backup(
        &src,
        &dest,
        &[
            "--pre-command",
            "sh -c 'head -c 20000000 /dev/zero | tr \"\\0\" y | fold -w 1000'",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let log = dest.join(format!(
        ".snapring/logs/{}.log",
        rep["id"].as_str().unwrap()
    ));
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size < 3 << 20, "the run's log has {size} bytes");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("the rest is not logged"), "{}", &text[..2000]);
}

/// Slack reads `<!channel>` in a message as a mention of everyone in it and
/// `<URL|label>` as a link: a path or file name holding them went into the text as it
/// was. The text is escaped as Slack asks (`&`, `<`, `>`).
#[test]
fn a_name_in_a_slack_message_mentions_no_one_and_links_nowhere() {
    let t = tempfile::tempdir().unwrap();
    let http = http_server();
    let dest = t
        .path()
        .join("<!channel> <mailto:a@evil.example|log in> & co");
    let cfg = config(
        t.path(),
        &dest,
        "require_mount = true",
        &["slack"],
        "[notify.slack]\ntype = \"webhook\"\nurl_env = \"HOOK_URL\"\nformat = \"slack\"\nretries = 0\n",
    );
    let url = format!("http://127.0.0.1:{}/services/T0KEN", http.port);
    let (code, rep, err, _) = run_within(
        60,
        &["run", "home", "--config", &cfg, "--json"],
        &[("HOOK_URL", &url)],
    );
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(notification(&rep, "slack")["ok"], true, "{rep}");
    let got = http.got.lock().unwrap().clone();
    let body: serde_json::Value = serde_json::from_str(&got[0].1).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(
        !text.contains('<') && !text.contains('>'),
        "markup went to Slack as it was: {text}"
    );
    assert!(
        text.contains("&lt;!channel&gt; &lt;mailto:a@evil.example|log in&gt; &amp; co"),
        "{text}"
    );
}

/// A server that accepts connections and never answers, holding each open; counts them.
fn http_silent() -> (u16, Arc<Mutex<Vec<std::net::TcpStream>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            h.lock().unwrap().push(s);
        }
    });
    (port, held)
}

/// Every transport error of a webhook read `error sending request`: a refused
/// connection, a receiver that never answers, a DNS name that does not resolve and
/// TLS to a plain HTTP server looked the same in the log and in `show`. The causes are
/// there now, and the URL's path and token still are not.
#[test]
fn a_webhook_transport_error_says_what_went_wrong() {
    let t = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then closed.
    let refused = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (silent, _held) = http_silent();
    let (plain, _) =
        http_answering("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    let hook = |n: &str, env: &str| {
        format!(
            "[notify.{n}]\ntype = \"webhook\"\nurl_env = \"{env}\"\nretries = 0\ntimeout = \"1s\"\n\n"
        )
    };
    let cfg = config(
        t.path(),
        &t.path().join("b"),
        "require_mount = true",
        &["refused", "silent", "tls", "dns"],
        &[
            hook("refused", "U_REFUSED"),
            hook("silent", "U_SILENT"),
            hook("tls", "U_TLS"),
            hook("dns", "U_DNS"),
        ]
        .concat(),
    );
    let urls = [
        (
            "U_REFUSED",
            format!("http://127.0.0.1:{refused}/hook/T0KEN-SECRET"),
        ),
        (
            "U_SILENT",
            format!("http://127.0.0.1:{silent}/hook/T0KEN-SECRET"),
        ),
        (
            "U_TLS",
            format!("https://127.0.0.1:{plain}/hook/T0KEN-SECRET"),
        ),
        // `.invalid` never resolves (RFC 2606).
        (
            "U_DNS",
            "http://no-such-host.invalid/hook/T0KEN-SECRET".to_string(),
        ),
    ];
    let env: Vec<(&str, &str)> = urls.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, rep, err, _) = run_within(60, &["run", "home", "--config", &cfg, "--json"], &env);
    assert_eq!(code, Some(1), "{err}");
    let error = |n: &str| {
        let o = notification(&rep, n);
        assert_eq!(o["ok"], false, "{rep}");
        o["error"].as_str().unwrap().to_lowercase()
    };
    let refused = error("refused");
    assert!(refused.contains("connection refused"), "{refused}");
    let silent = error("silent");
    assert!(silent.contains("timed out"), "{silent}");
    let tls = error("tls");
    assert!(
        tls.contains("tls") || tls.contains("ssl") || tls.contains("handshake"),
        "{tls}"
    );
    let dns = error("dns");
    assert!(dns.contains("dns"), "{dns}");
    for e in [&refused, &silent, &tls, &dns] {
        assert!(e.contains("127.0.0.1") || e.contains("no-such-host"), "{e}");
        assert!(!e.contains("t0ken"), "{e}");
    }
    assert!(!err.contains("T0KEN"), "{err}");
    // The log says it too.
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
}

/// `snapring run` sent SIGTERM while its webhook hung (timeout 20s, one retry) went on
/// waiting and retrying, and ended after 38s; a service manager's stop waits for that.
/// A stop that comes while a notice is sent cuts it short, nothing is retried after
/// it, and the outcome says so.
#[test]
fn sigterm_cuts_a_hanging_webhook_short_and_stops_its_retries() {
    let t = tempfile::tempdir().unwrap();
    let (port, held) = http_silent();
    let cfg = config(
        t.path(),
        &t.path().join("b"),
        "require_mount = true",
        &["hook"],
        "[notify.hook]\ntype = \"webhook\"\nurl_env = \"HOOK_URL\"\nretries = 1\ntimeout = \"20s\"\n",
    );
    let url = format!("http://127.0.0.1:{port}/hook/T0KEN-SECRET");
    let mut child = Command::new(bin())
        .args(["run", "home", "--config", &cfg, "--json"])
        .env("SNAPRING_CATALOG", "off")
        .env("HOOK_URL", &url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while held.lock().unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no request came");
        std::thread::sleep(Duration::from_millis(20));
    }
    let signalled = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if signalled.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("still running 60s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(
        took < Duration::from_secs(5),
        "ended {took:?} after SIGTERM"
    );
    assert_eq!(code, Some(1));
    assert_eq!(held.lock().unwrap().len(), 1, "retried after the stop");
    let rep: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let n = notification(&rep, "hook");
    assert_eq!(n["ok"], false, "{rep}");
    assert_eq!(n["attempts"], 1, "{rep}");
    assert!(n["error"].as_str().unwrap().contains("stopping"), "{rep}");
}
