//! What runs beside the walk: the progress line on a terminal (fed from the run's
//! counters, measured against the previous snapshot's file count), the figures of the
//! progress file `serve` shows, the backup window's deadline, and SIGINT/SIGTERM/SIGHUP
//! handling. Each of them only reads the counters or sets the run's cancel flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::repo::RunProgress;
use crate::report::Counters;

/// Sets `cancel` on SIGINT/SIGTERM/SIGHUP; a second signal ends the process at once
/// (exit 130). "Second" counts signals only: `cancel` set by the backup window's end is
/// not a first one (a single SIGTERM then ended the stopping run at once, before its
/// record, post command and notifications). SIGHUP (the terminal closed, an ssh session
/// dropped) is a stop like SIGTERM for the one-shot commands that call this: by default
/// it killed them at once (exit 129: no report, no post command, no notification, the
/// catalog row left `running`, a restic lock left). The daemon does not call this: its
/// SIGHUP reloads the config (`daemon::install_signals`). A SIGHUP ignored when
/// snapring started (`nohup`) stays ignored ([`hangup_ignored`]).
pub fn install_signal_handlers(cancel: &Arc<AtomicBool>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the shutdown check sees the flag as it was before this signal.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, signalled.clone());
        let _ = signal_hook::flag::register(sig, signalled.clone());
        let _ = signal_hook::flag::register(sig, cancel.clone());
    }
    // A hangup stops the run and is never a "second signal": a closing terminal or ssh
    // session often sends it twice (the shell passes its own on to its jobs), which
    // ended the run at once (exit 130, no report, the catalog row left `running`).
    if !hangup_ignored() {
        let _ = signal_hook::flag::register(SIGHUP, cancel.clone());
    }
}

/// Whether SIGHUP was ignored when snapring started (`nohup snapring backup …`: the
/// user asked for the command to outlive the terminal), from `SigIgn` of
/// `/proc/self/status`, read once (before any handler of ours is installed: the first
/// call is [`install_signal_handlers`]'s). Unknown (no `/proc`) is not ignored.
pub fn hangup_ignored() -> bool {
    static IGNORED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IGNORED.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("SigIgn:"))
                    .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            })
            // Bit N-1 is signal N; SIGHUP is 1.
            .is_some_and(|m| m & 1 != 0)
    })
}

/// No ETA before the walk has run this long: the first seconds' rate says little.
pub const ETA_AFTER: Duration = Duration::from_secs(3);

/// How far a walk is against the previous snapshot's file count.
#[derive(Debug, PartialEq)]
pub struct Estimate {
    /// Files per second since the walk started.
    pub rate: f64,
    /// Percent of the expected files, at most 99 (the walk is not done yet).
    pub percent: Option<f64>,
    /// Seconds left at `rate`; `None` early on, or once past the expected count.
    pub eta: Option<u64>,
}

pub fn estimate(done: u64, expected: Option<u64>, elapsed: Duration) -> Estimate {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let expected = expected.filter(|&e| e > 0);
    Estimate {
        rate,
        percent: expected.map(|e| (done as f64 * 100.0 / e as f64).min(99.0)),
        eta: expected
            .filter(|&e| elapsed >= ETA_AFTER && rate > 0.0 && done < e)
            .map(|e| ((e - done) as f64 / rate).ceil() as u64),
    }
}

/// `1h02m`, `4m05s`, `12s`.
pub fn eta_words(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// The progress file's figures of the moment.
pub fn snapshot(
    run: &str,
    started_at: &str,
    c: &Counters,
    expected: Option<u64>,
    elapsed: Duration,
) -> RunProgress {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let files_done = g(&c.files_total);
    let e = estimate(files_done, expected, elapsed);
    RunProgress {
        run: run.to_string(),
        started_at: started_at.to_string(),
        updated_at: crate::report::now_rfc3339(),
        files_done,
        dirs_done: g(&c.dirs_total),
        bytes_copied: g(&c.bytes_transferred),
        files_expected: expected,
        files_per_second: e.rate,
        percent: e.percent,
        eta_seconds: e.eta,
    }
}

fn line(c: &Counters, expected: Option<u64>, elapsed: Duration) -> String {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let files = g(&c.files_total);
    let e = estimate(files, expected, elapsed);
    let files = match (expected, e.percent) {
        (Some(n), Some(p)) => format!("{files}/{n} files ({p:.0}%)"),
        _ => format!("{files} files"),
    };
    let eta = e
        .eta
        .map(|s| format!(" | ETA {}", eta_words(s)))
        .unwrap_or_default();
    format!(
        "{files}, {} dirs | {} linked, {} copied ({}) | {} problems{eta}",
        g(&c.dirs_total),
        g(&c.files_linked),
        g(&c.files_transferred),
        indicatif::HumanBytes(g(&c.bytes_transferred)),
        g(&c.problems_total)
    )
}

/// Shows a spinner with the counters on stderr until `done` is set; with the previous
/// snapshot's file count, a percentage and an ETA.
pub fn show(counters: &Counters, expected: Option<u64>, done: &AtomicBool) {
    let t0 = Instant::now();
    spin(done, || line(counters, expected, t0.elapsed()));
}

/// Shows a spinner with `msg()` on stderr, refreshed five times a second, until `done`.
pub fn spin(done: &AtomicBool, msg: impl Fn() -> String) {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .expect("valid template"),
    );
    while !done.load(Ordering::Relaxed) {
        bar.set_message(msg());
        bar.tick();
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
}

/// Sets `cancel` and `expired` once `window` has passed since `start`, unless `done`
/// comes first.
pub fn watch_window(
    start: Instant,
    window: Duration,
    cancel: &AtomicBool,
    expired: &AtomicBool,
    done: &AtomicBool,
) {
    while !done.load(Ordering::Relaxed) {
        if start.elapsed() >= window {
            tracing::warn!(
                "backup window of {}s ended; stopping at a safe point",
                window.as_secs()
            );
            expired.store(true, Ordering::Relaxed);
            cancel.store(true, Ordering::Relaxed);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `f` within a backup `window` counted from `start` (`None`: no window, `f`
/// alone): meanwhile a thread sets `cancel` once the window has passed
/// ([`watch_window`]); it stops when `f` returns. Returns `f`'s value and whether the
/// window ended while it ran.
pub fn within_window<T>(
    start: Instant,
    window: Option<Duration>,
    cancel: &AtomicBool,
    f: impl FnOnce() -> T,
) -> (T, bool) {
    let (done, ended) = (AtomicBool::new(false), AtomicBool::new(false));
    let got = std::thread::scope(|s| {
        if let Some(w) = window {
            let (ended, done) = (&ended, &done);
            s.spawn(move || watch_window(start, w, cancel, ended, done));
        }
        let got = f();
        done.store(true, Ordering::Relaxed);
        got
    });
    (got, ended.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_window_sets_cancel_once_the_window_ends_and_says_so() {
        let cancel = AtomicBool::new(false);
        let (got, ended) = within_window(Instant::now(), None, &cancel, || 7);
        assert_eq!(
            (got, ended, cancel.load(Ordering::Relaxed)),
            (7, false, false)
        );
        let w = Some(Duration::from_secs(60));
        let (_, ended) = within_window(Instant::now(), w, &cancel, || ());
        assert!(!ended && !cancel.load(Ordering::Relaxed));
        // A window that ends while `f` runs: `f` sees the stop.
        let w = Some(Duration::from_millis(50));
        let (seen, ended) = within_window(Instant::now(), w, &cancel, || {
            let t = Instant::now();
            while !cancel.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
            }
            cancel.load(Ordering::Relaxed)
        });
        assert!(seen && ended);
    }

    #[test]
    fn percent_is_capped_and_eta_waits_and_stops_past_the_expected_count() {
        let s = Duration::from_secs;
        let e = estimate(50, Some(200), s(10));
        assert_eq!((e.rate, e.percent, e.eta), (5.0, Some(25.0), Some(30)));
        assert_eq!(estimate(50, Some(200), s(1)).eta, None);
        assert_eq!(estimate(300, Some(200), s(10)).percent, Some(99.0));
        assert_eq!(estimate(300, Some(200), s(10)).eta, None);
        assert_eq!(estimate(5, None, s(10)).percent, None);
        assert_eq!(estimate(5, Some(0), s(10)).eta, None);
        assert_eq!(eta_words(3725), "1h02m");
        assert_eq!(eta_words(245), "4m05s");
    }

    #[test]
    fn the_line_shows_a_percentage_and_an_eta_when_the_count_is_known() {
        let c = Counters::default();
        c.files_total.store(50, Ordering::Relaxed);
        let l = line(&c, Some(200), Duration::from_secs(10));
        assert!(l.starts_with("50/200 files (25%)"), "{l}");
        assert!(l.ends_with("| ETA 30s"), "{l}");
        let l = line(&c, None, Duration::from_secs(10));
        assert!(l.starts_with("50 files,") && !l.contains("ETA"), "{l}");
    }
}
