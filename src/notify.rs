//! Notifications about finished runs: a webhook (JSON POST, or Slack's `{"text"}`
//! form), SMTP email (lettre, STARTTLS/TLS/plain, with auth), or a command that gets
//! the run report as JSON on stdin. Failed, partial and incomplete runs always notify;
//! complete ones only with `notify_success`. A notifier that fails is retried, logged and
//! recorded, and never changes the run's outcome. Secrets come from the environment or
//! files, and no URL or password is ever logged. Does network and process I/O.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::report::{RunReport, Status};

/// One `[notify.NAME]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierConfig {
    /// `webhook`, `email` or `command`.
    #[serde(rename = "type")]
    pub kind: String,
    // webhook
    /// The URL itself (avoid: it usually holds a token); prefer `url_env`/`url_file`.
    pub url: Option<String>,
    /// Environment variable holding the URL.
    pub url_env: Option<String>,
    /// File holding the URL.
    pub url_file: Option<PathBuf>,
    /// `json` (default: the text plus the whole report) or `slack` (`{"text": ...}`).
    pub format: Option<String>,
    // email
    pub smtp_host: Option<String>,
    pub smtp_port: Option<u16>,
    /// `starttls` (default), `tls` (implicit, port 465) or `none` (plain, local relays).
    pub tls: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub from: Option<String>,
    #[serde(default)]
    pub to: Vec<String>,
    // command
    /// Program and arguments (no shell); the report arrives as JSON on stdin.
    #[serde(default)]
    pub command: Vec<String>,
    // all
    /// Attempts after the first (default 2).
    pub retries: Option<u32>,
    /// Per-attempt timeout (default 30s).
    pub timeout: Option<String>,
}

impl NotifierConfig {
    /// What is missing or wrong, one line each, with the key it is about (`None`: the
    /// table as a whole), for `config check`.
    pub fn problems(&self) -> Vec<(Option<&'static str>, String)> {
        let mut p = Vec::new();
        let one_of = |xs: &[bool]| xs.iter().filter(|x| **x).count() == 1;
        match self.kind.as_str() {
            "webhook" => {
                if !one_of(&[
                    self.url.is_some(),
                    self.url_env.is_some(),
                    self.url_file.is_some(),
                ]) {
                    p.push((
                        None,
                        "a webhook needs exactly one of url, url_env, url_file".into(),
                    ));
                }
                if let Some(u) = &self.url
                    && let Err(e) = web_url(u)
                {
                    p.push((Some("url"), e));
                }
                if !matches!(self.format.as_deref(), None | Some("json") | Some("slack")) {
                    p.push((
                        Some("format"),
                        "format must be \"json\" or \"slack\"".into(),
                    ));
                }
            }
            "email" => p.extend(self.email_problems()),
            "command" => {
                if self.command.first().is_none_or(|p| p.is_empty()) {
                    p.push((
                        Some("command"),
                        "a command notifier needs command = [\"program\", \"arg\", ...]".into(),
                    ));
                }
            }
            k => p.push((
                Some("type"),
                format!("unknown type {k:?}: use webhook, email or command"),
            )),
        }
        if let Some(t) = &self.timeout {
            match crate::util::parse_duration(t) {
                Err(e) => p.push((Some("timeout"), format!("timeout: {e}"))),
                Ok(d) if d < Duration::from_secs(1) => p.push((
                    Some("timeout"),
                    format!("timeout {t:?}: give a duration of at least 1s (30s, 2m)"),
                )),
                Ok(_) => {}
            }
        }
        p
    }

    fn email_problems(&self) -> Vec<(Option<&'static str>, String)> {
        let mut p = Vec::new();
        if self.smtp_host.is_none() {
            p.push((None, "an email notifier needs smtp_host".into()));
        }
        if self.from.is_none() || self.to.is_empty() {
            p.push((None, "an email notifier needs from and to".into()));
        }
        if let Some(f) = &self.from
            && let Err(e) = f.parse::<lettre::message::Mailbox>()
        {
            p.push((Some("from"), format!("from {f:?}: {e}")));
        }
        for t in &self.to {
            if let Err(e) = t.parse::<lettre::message::Mailbox>() {
                p.push((Some("to"), format!("to {t:?}: {e}")));
            }
        }
        if !matches!(
            self.tls.as_deref(),
            None | Some("starttls") | Some("tls") | Some("none")
        ) {
            p.push((
                Some("tls"),
                "tls must be \"starttls\", \"tls\" or \"none\"".into(),
            ));
        }
        if self.username.is_some()
            && [self.password_env.is_some(), self.password_file.is_some()]
                .iter()
                .filter(|x| **x)
                .count()
                != 1
        {
            p.push((
                Some("username"),
                "with a username, give exactly one of password_env, password_file".into(),
            ));
        }
        p
    }

    /// The secrets it names that cannot be had here and now (an environment variable
    /// that is not set, a file that cannot be read), and a webhook URL read from one
    /// that is not one: a notifier with such a secret fails every time it is tried, and
    /// the alert of a failed run is never sent. For `config check` only, which judges
    /// the machine it runs on as it judges `exclude_from` files: a run or the daemon
    /// does not refuse a backup for them (they are told when the notifier is tried).
    pub fn secret_problems(&self) -> Vec<(Option<&'static str>, String)> {
        let mut p = Vec::new();
        let (env, file, what) = match self.kind.as_str() {
            "webhook" => (&self.url_env, &self.url_file, "webhook url"),
            "email" => (&self.password_env, &self.password_file, "smtp password"),
            // A program that is not there, or not executable, fails every time too.
            "command" => {
                if let Some(prog) = self.command.first().filter(|c| !c.is_empty())
                    && let Err(e) = program_found(prog)
                {
                    p.push((
                        Some("command"),
                        format!("{e}: the notifier would fail every time"),
                    ));
                }
                return p;
            }
            _ => return p,
        };
        let key = match (env, file, what) {
            (Some(_), _, "webhook url") => "url_env",
            (Some(_), ..) => "password_env",
            (None, Some(_), "webhook url") => "url_file",
            (None, Some(_), _) => "password_file",
            (None, None, _) => return p,
        };
        match secret(env, file, what) {
            Err(e) if key.ends_with("_env") => p.push((
                Some(key),
                format!(
                    "{e} in the environment of this check: set it where snapring runs (the daemon's too), or the notifier fails every time"
                ),
            )),
            Err(e) => p.push((Some(key), format!("{e}: the notifier would fail every time"))),
            Ok(Some(url)) if what == "webhook url" => {
                if let Err(e) = web_url(&url) {
                    p.push((Some(key), format!("{what} read from {key}: {e}")));
                }
            }
            Ok(_) => {}
        }
        p
    }

    fn timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(|t| crate::util::parse_duration(t).ok())
            .unwrap_or(Duration::from_secs(30))
    }
}

/// Whether a command notifier's program `prog` can be started here: a path (with a
/// `/`) names a regular file this process may execute; a bare name is found so on
/// `PATH` (as `Command` looks it up). The error says which, for `config check`
/// ([`NotifierConfig::secret_problems`]).
fn program_found(prog: &str) -> std::result::Result<(), String> {
    let runnable = |p: &std::path::Path| -> std::result::Result<(), String> {
        let shown = crate::relpath::shown(p);
        match std::fs::metadata(p) {
            Err(e) => Err(format!("program {shown}: {e}")),
            Ok(m) if !m.is_file() => Err(format!("program {shown} is not a regular file")),
            Ok(_) => rustix::fs::access(p, rustix::fs::Access::EXEC_OK)
                .map_err(|e| format!("program {shown} cannot be executed: {e}")),
        }
    };
    if prog.contains('/') {
        return runnable(std::path::Path::new(prog));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| runnable(&d.join(prog)).is_ok()) {
        return Ok(());
    }
    Err(format!(
        "program {prog} is not found on the PATH of this check ({}): give its absolute path",
        path.to_string_lossy()
    ))
}

/// What happened when one notifier was tried (defined beside the run report).
pub use crate::report::NotifyOutcome as Outcome;

/// Whether a run with this status is notified.
pub fn wanted(status: Status, notify_success: bool) -> bool {
    match status {
        Status::Complete => notify_success,
        Status::Running => false,
        _ => true,
    }
}

/// The subject and text of a message about `r`.
pub fn message(r: &RunReport) -> (String, String) {
    message_with_log(r, &crate::store::log_path(r))
}

/// [`message`], naming `log` as the run's log.
fn message_with_log(r: &RunReport, log: &std::path::Path) -> (String, String) {
    let job = r
        .job
        .clone()
        .unwrap_or_else(|| r.store.display().to_string());
    // A copy (`snapring copy`) says so: its store is the repository copied into.
    let copy = r.copy_of.is_some()
        || r.repository
            .as_ref()
            .is_some_and(|k| k.copied_from.is_some());
    let subject = format!(
        "[snapring] {job}: {}{}{}",
        if copy { "copy " } else { "" },
        r.status.as_str(),
        r.snapshot
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    );
    let mut text = format!(
        "snapring {} {job}: {}\nreason: {}\nrun: {} on {}\nsource: {}\nstore: {}\nstarted: {}, took {:.1}s\nfiles: {} ({} copied, {} linked), errors: {}\nbytes: {} in files, {} copied\nlog: {}\n",
        if copy { "copy" } else { "backup" },
        r.status.as_str(),
        r.message,
        r.id,
        r.host,
        r.source.display(),
        r.store.display(),
        r.started_at,
        r.duration_seconds,
        r.files_total,
        r.files_transferred,
        r.files_linked,
        r.errors,
        indicatif::HumanBytes(r.bytes_total),
        indicatif::HumanBytes(r.bytes_transferred),
        log.display()
    );
    if let Some(k) = &r.repository {
        text.push_str(&format!(
            "repository: uploaded {} in {} objects, dedup ratio {:.2}, {} files read, {} unchanged\n",
            indicatif::HumanBytes(k.bytes_uploaded),
            k.objects_written,
            k.dedup_ratio,
            k.files_read,
            k.files_unchanged
        ));
    }
    for p in r.problems.iter().take(10) {
        text.push_str(&format!(
            "  {:?} {}: {} ({})\n",
            p.kind, p.path, p.error, p.action
        ));
    }
    if r.errors > 10 {
        text.push_str(&format!("  … {} more in the run record\n", r.errors - 10));
    }
    (subject, text)
}

/// What a notification says about one run, whatever its kind: the webhook's body
/// fields, the mail's subject and text, the command's environment and stdin.
#[derive(Clone)]
pub struct Notice {
    pub id: String,
    pub job: Option<String>,
    pub status: Status,
    pub subject: String,
    pub text: String,
    pub log: PathBuf,
    /// The whole report, as JSON.
    pub report: serde_json::Value,
}

impl Notice {
    /// A backup's notice.
    pub fn backup(r: &RunReport) -> Notice {
        Notice::backup_logged(r, &crate::store::log_path(r))
    }

    /// A backup's notice, naming `log` as its log (a shard worker's own).
    pub fn backup_logged(r: &RunReport, log: &std::path::Path) -> Notice {
        let (subject, text) = message_with_log(r, log);
        Notice {
            id: r.id.clone(),
            job: r.job.clone(),
            status: r.status,
            subject,
            text,
            log: log.to_path_buf(),
            report: serde_json::to_value(r).unwrap_or_default(),
        }
    }

    /// A restore's notice (`log`: its log file beside the catalog).
    pub fn restore(r: &crate::restore::RestoreReport) -> Notice {
        let job = r
            .job
            .clone()
            .unwrap_or_else(|| r.store.display().to_string());
        let subject = format!(
            "[snapring] {job}: restore {} ({})",
            r.status.as_str(),
            r.snapshot
        );
        let text = format!(
            "snapring restore {job}: {}\nreason: {}\nrun: {} on {}\nrestored: {}{} of {} in {}\ninto: {}\nstarted: {}, took {:.1}s\nfiles: {} ({}), conflicts: {}, errors: {}\nlog: {}\n",
            r.status.as_str(),
            r.message,
            r.id.as_deref().unwrap_or("-"),
            r.host,
            r.path.as_deref().unwrap_or("all"),
            if r.dry_run { " (dry run)" } else { "" },
            r.snapshot,
            r.store.display(),
            r.to.display(),
            r.started_at,
            r.duration_seconds,
            r.files_restored,
            indicatif::HumanBytes(r.bytes_restored),
            r.conflicts_total,
            r.errors,
            r.log
                .as_deref()
                .map(|l| l.display().to_string())
                .unwrap_or_else(|| "-".into()),
        );
        Notice {
            id: r.id.clone().unwrap_or_default(),
            job: r.job.clone(),
            status: r.status,
            subject,
            text,
            log: r.log.clone().unwrap_or_default(),
            report: serde_json::to_value(r).unwrap_or_default(),
        }
    }
}

/// Sends `r` to every notifier of the job that wants it. Never fails.
pub fn send_all(notifiers: &[(String, NotifierConfig)], r: &RunReport) -> Vec<Outcome> {
    send_notice(notifiers, &Notice::backup(r))
}

/// Set by SIGINT/SIGTERM ([`stop_on_signals`]; SIGHUP too in a one-shot command,
/// [`stop_on_hangup`]): the process is stopping, so a notifier
/// is not retried and an attempt under way when the signal came is cut short (a service
/// manager waits `TimeoutStopSec` and then kills: a hanging receiver tried again and
/// again held a stopping run, and a stopping daemon, for minutes).
pub fn stop_flag() -> &'static std::sync::Arc<std::sync::atomic::AtomicBool> {
    static STOP: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
        std::sync::OnceLock::new();
    STOP.get_or_init(Default::default)
}

/// Makes SIGINT and SIGTERM set [`stop_flag`] (beside whatever else they do).
pub fn stop_on_signals() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let _ = signal_hook::flag::register(s, stop_flag().clone());
        }
    });
}

/// Makes SIGHUP set [`stop_flag`] too: a one-shot command stops on it as on SIGTERM
/// (`cli::cancel_on_signal`), unless it was ignored at start (`nohup`). Not the daemon,
/// whose SIGHUP reloads.
pub fn stop_on_hangup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !crate::engine::progress::hangup_ignored() {
            let _ = signal_hook::flag::register(signal_hook::consts::SIGHUP, stop_flag().clone());
        }
    });
}

fn stopping() -> bool {
    stop_flag().load(std::sync::atomic::Ordering::Relaxed)
}

/// What an outcome's error says of a notifier that shutdown left unretried.
pub const CUT_BY_SHUTDOWN: &str = "cut short by shutdown (SIGTERM/SIGINT): not retried";

/// Sends `n` to every notifier given. Never fails. Once the process is stopping
/// ([`stop_flag`]), each notifier gets one attempt at most, and an attempt under way
/// when the stop came is given up: a run stopped before its notices still sends them,
/// once each, and a stop that comes while they are sent ends them.
pub fn send_notice(notifiers: &[(String, NotifierConfig)], r: &Notice) -> Vec<Outcome> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    notifiers
        .iter()
        .map(|(name, c)| {
            let attempts = 1 + c.retries.unwrap_or(2);
            let mut last = None;
            let mut n = 0;
            let mut cut = false;
            for i in 0..attempts {
                n = i + 1;
                let stopped_before = stopping();
                match attempt(name, c, r) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(Failed { error: e, permanent }) => {
                        tracing::warn!("notifier {name} ({}): attempt {n} of {attempts} failed: {e}", c.kind);
                        if permanent {
                            last = Some(format!("{e}; a permanent refusal, not retried"));
                            break;
                        }
                        last = Some(e);
                        // An attempt the stop ended (a command killed, a request
                        // given up), its last one too: cut short, not failed.
                        if !stopped_before && stopping() {
                            cut = true;
                            break;
                        }
                        if n < attempts {
                            let pause = std::time::Instant::now()
                                + Duration::from_millis(250 * u64::from(n));
                            while !stopping() && std::time::Instant::now() < pause {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                        if stopping() && n < attempts {
                            cut = true;
                            break;
                        }
                    }
                }
            }
            if cut && let Some(e) = last.as_mut() {
                *e = format!("{e}; {CUT_BY_SHUTDOWN}");
            }
            match &last {
                None => tracing::info!("notified {name} ({}) of run {}", c.kind, r.id),
                Some(e) => tracing::error!("notifier {name} ({}) failed after {n} attempt{}: {e}; the run's status is unchanged", c.kind, if n == 1 { "" } else { "s" }),
            }
            Outcome {
                notifier: name.clone(),
                kind: c.kind.clone(),
                ok: last.is_none(),
                attempts: n,
                error: last,
                at: crate::util::now_rfc3339(),
            }
        })
        .collect()
}

/// A failed attempt: what went wrong, and whether it is `permanent`, so that trying
/// again cannot help (an SMTP server's 5xx answer: a recipient or message refused for
/// good). A 4xx answer, a connection or timeout error is not: it is retried.
struct Failed {
    error: String,
    permanent: bool,
}

impl From<String> for Failed {
    fn from(error: String) -> Failed {
        Failed {
            error,
            permanent: false,
        }
    }
}

impl From<&str> for Failed {
    fn from(error: &str) -> Failed {
        Failed::from(error.to_string())
    }
}

/// One attempt of notifier `name`. A stop ([`stop_flag`]) that comes while it goes
/// ends it: a command is killed, a webhook or a mail given up (its thread left to its
/// own timeout; the process is ending). A stop that came before it does not: a run
/// stopped mid-backup still tells its notifiers it ended incomplete.
fn attempt(name: &str, c: &NotifierConfig, r: &Notice) -> Result<(), Failed> {
    let stopped_before = stopping();
    if c.kind == "command" {
        let own = std::sync::atomic::AtomicBool::new(false);
        let cancel: &std::sync::atomic::AtomicBool =
            if stopped_before { &own } else { stop_flag() };
        return Ok(command(name, c, r, cancel)?);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (name2, c2, r2) = (name.to_string(), c.clone(), r.clone());
    std::thread::Builder::new()
        .name(format!("notify-{name}"))
        .spawn(move || {
            let _ = tx.send(send_one(&name2, &c2, &r2));
        })
        .map_err(|e| format!("cannot start a thread to notify: {e}"))?;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(res) => return res,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(
                    format!("{} notifier: its attempt ended without a result", c.kind).into(),
                );
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !stopped_before && stopping() => {
                return Err(format!(
                    "{} attempt given up: snapring is stopping (SIGTERM/SIGINT)",
                    c.kind
                )
                .into());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// A secret from an environment variable or a file (trailing newline removed).
fn secret(
    env: &Option<String>,
    file: &Option<PathBuf>,
    what: &str,
) -> Result<Option<String>, String> {
    if let Some(v) = env {
        return std::env::var(v)
            .map(Some)
            .map_err(|_| format!("{what}: environment variable {v} is not set"));
    }
    if let Some(f) = file {
        return std::fs::read_to_string(f)
            .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|e| format!("{what}: cannot read {}: {e}", f.display()));
    }
    Ok(None)
}

/// Whether `url` is one a webhook can POST to: `http://` or `https://` with a host
/// (the error shows it redacted, as logs do).
fn web_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        Ok(_) => Err(format!(
            "url {}: give an http:// or https:// URL",
            redact_url(url)
        )),
        Err(e) => Err(format!("url: not a URL ({e}): give https://HOST/PATH")),
    }
}

/// `scheme://host[:port]/…`: a URL without its path, query or credentials, for logs.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}/…",
            u.scheme(),
            u.host_str().unwrap_or("?"),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(unparseable URL)".into(),
    }
}

fn send_one(name: &str, c: &NotifierConfig, r: &Notice) -> Result<(), Failed> {
    match c.kind.as_str() {
        "webhook" => Ok(webhook(c, r)?),
        "email" => email(c, r),
        "command" => Ok(command(
            name,
            c,
            r,
            &std::sync::atomic::AtomicBool::new(false),
        )?),
        k => Err(format!("unknown notifier type {k:?}").into()),
    }
}

fn webhook(c: &NotifierConfig, r: &Notice) -> Result<(), String> {
    let url = match &c.url {
        Some(u) => u.clone(),
        None => secret(&c.url_env, &c.url_file, "webhook url")?.ok_or("webhook without a url")?,
    };
    let shown = redact_url(&url);
    let (subject, text) = (&r.subject, &r.text);
    let body = if c.format.as_deref() == Some("slack") {
        // Slack reads `<!channel>`, `<@U123>` and `<URL|label>` in a message's text: a
        // file or job name must not mention anyone or make a link (Slack's escaping).
        let slack = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        serde_json::json!({ "text": format!("*{}*\n{}", slack(subject), slack(text)) })
    } else {
        serde_json::json!({
            "text": format!("{subject}\n{text}"),
            "job": r.job,
            "status": r.status,
            "run": r.id,
            "log": r.log,
            "report": r.report,
        })
    };
    // No redirect is followed: it would send the report, and as the Referer the URL
    // with its token, to wherever the receiver points.
    let client = reqwest::blocking::Client::builder()
        .timeout(c.timeout())
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .build()
        .map_err(|e| format!("webhook {shown}: {}", causes(e, &url, &shown)))?;
    let resp = client
        .post(&url)
        .json(&body)
        .send()
        .map_err(|e| format!("webhook {shown}: {}", causes(e, &url, &shown)))?;
    if resp.status().is_success() {
        Ok(())
    } else if resp.status().is_redirection() {
        Err(format!(
            "webhook {shown}: HTTP {} to {}: redirects are not followed, give the URL it points to",
            resp.status(),
            resp.headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(redact_url)
                .unwrap_or_else(|| "nowhere".into())
        ))
    } else {
        Err(format!("webhook {shown}: HTTP {}", resp.status()))
    }
}

/// `e` with the chain of its causes (`error sending request: client error (Connect):
/// tcp connect error: Connection refused (os error 111)`; alone, reqwest's message said
/// `error sending request` of every refused, timed-out, TLS or DNS failure), the URL
/// `url` shown as `shown` wherever a cause repeats it.
fn causes(e: reqwest::Error, url: &str, shown: &str) -> String {
    let timed_out = e.is_timeout();
    let e = e.without_url();
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let mut m = c.to_string();
        // rustls says `received corrupt message of type InvalidContentType` of an
        // https:// URL whose server speaks plain HTTP: say that it is TLS.
        if is_tls(c) {
            m = format!("TLS: {m}");
        }
        // A cause that only repeats the one above it (a wrapper's Display) adds nothing.
        if !parts.last().is_some_and(|l| l.ends_with(&m)) {
            parts.push(m);
        }
        cause = c.source();
    }
    let mut text = parts.join(": ");
    if timed_out && !text.contains("timed out") {
        text.push_str(" (timed out)");
    }
    // A cause may name the URL (a redirect's, an invalid one's): never its path or token.
    let mut secrets = vec![url.to_string()];
    if let Ok(u) = reqwest::Url::parse(url) {
        secrets.push(u.to_string());
        if u.path().len() > 1 {
            secrets.push(u.path().to_string());
        }
        secrets.extend(u.query().map(str::to_string));
        secrets.extend(u.password().map(str::to_string));
    }
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(s.as_str(), shown);
    }
    text
}

/// Whether `e` is rustls's, itself or inside `io::Error`s.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    match e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        Some(inner) => is_tls(inner),
        None => false,
    }
}

/// Sends the mail. A 5xx answer (a recipient or the message refused) is a permanent
/// failure with the server's reply; a 4xx one or a lost connection is retried.
fn email(c: &NotifierConfig, r: &Notice) -> Result<(), Failed> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{Message, SmtpTransport, Transport};
    let host = c.smtp_host.as_deref().ok_or("email without smtp_host")?;
    let (subject, text) = (r.subject.clone(), r.text.clone());
    let mut b = Message::builder()
        .from(
            c.from
                .as_deref()
                .ok_or("email without from")?
                .parse()
                .map_err(|e| format!("from: {e}"))?,
        )
        .subject(subject);
    for t in &c.to {
        b = b.to(t.parse().map_err(|e| format!("to {t:?}: {e}"))?);
    }
    // A MIME text/plain part in UTF-8: file names and paths are not ASCII, and a
    // quoted-printable or base64 body means nothing without MIME-Version.
    let msg = b
        .singlepart(lettre::message::SinglePart::plain(text))
        .map_err(|e| format!("email: {e}"))?;
    let tls = c.tls.as_deref().unwrap_or("starttls");
    let mut t = match tls {
        "tls" => SmtpTransport::relay(host).map_err(|e| format!("smtp {host}: {e}"))?,
        "none" => SmtpTransport::builder_dangerous(host),
        _ => SmtpTransport::starttls_relay(host).map_err(|e| format!("smtp {host}: {e}"))?,
    };
    if let Some(p) = c.smtp_port {
        t = t.port(p);
    }
    if let Some(user) = &c.username {
        let pass = secret(&c.password_env, &c.password_file, "smtp password")?.unwrap_or_default();
        t = t.credentials(Credentials::new(user.clone(), pass));
    }
    let transport = t.timeout(Some(c.timeout())).build();
    // lettre's timeout bounds each read and write, not the whole exchange: a server
    // that trickles its replies would hold the run for ever. The attempt is given up
    // when its timeout passes (its thread is left to the socket's own timeouts).
    let (tx, rx) = std::sync::mpsc::channel();
    let host = host.to_string();
    std::thread::spawn(move || {
        let _ = tx.send(transport.send(&msg).map(|_| ()));
    });
    match rx.recv_timeout(c.timeout()) {
        Ok(r) => r.map_err(|e| Failed {
            error: format!("smtp {host}: {e}"),
            permanent: e.is_permanent(),
        }),
        Err(_) => Err(format!("smtp {host}: no answer within {}s", c.timeout().as_secs()).into()),
    }
}

/// Runs the command as a hook runs (`hooks::run`): in a process group of its own,
/// killed with everything it started when `timeout` passes, its stdin fed and its
/// output read (into the log, bounded) while it runs, so that neither a command that
/// does not read the report nor one that prints a lot or leaves a process holding its
/// output behind can hold the run; such a process is killed, with the command's process
/// group, once the command has ended (it would outlive the run, and a daemon).
fn command(
    name: &str,
    c: &NotifierConfig,
    r: &Notice,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    let prog = c.command.first().ok_or("empty command")?;
    let hook = crate::hooks::Hook {
        argv: c.command.clone(),
        timeout: c.timeout(),
        kill_leftovers: true,
    };
    let env: [(&str, std::ffi::OsString); 4] = [
        ("SNAPRING_JOB", r.job.clone().unwrap_or_default().into()),
        ("SNAPRING_STATUS", r.status.as_str().into()),
        ("SNAPRING_RUN_ID", r.id.clone().into()),
        ("SNAPRING_LOG", r.log.as_os_str().to_owned()),
    ];
    let json = serde_json::to_vec_pretty(&r.report).expect("report serializes");
    let out = crate::hooks::run(&format!("notifier {name}"), &hook, &env, &json, cancel);
    match out.error {
        None => Ok(()),
        Some(e) => Err(format!("command {prog}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_to_their_host() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T000/B000/SECRETTOKEN"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redact_url("http://user:pw@127.0.0.1:8080/hook?token=x"),
            "http://127.0.0.1:8080/…"
        );
    }

    #[test]
    fn only_failures_notify_by_default() {
        assert!(!wanted(Status::Complete, false));
        assert!(wanted(Status::Complete, true));
        for s in [Status::Partial, Status::Incomplete, Status::Failed] {
            assert!(wanted(s, false));
        }
    }
}
