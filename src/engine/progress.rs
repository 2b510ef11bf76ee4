//! What runs beside the walk: the progress line on a terminal (fed from the run's
//! counters), the backup window's deadline, and SIGINT/SIGTERM handling. Each of them
//! only reads the counters or sets the run's cancel flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::report::Counters;

/// Sets `cancel` on SIGINT/SIGTERM; a second signal ends the process at once (exit 130).
pub fn install_signal_handlers(cancel: &Arc<AtomicBool>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the shutdown check sees the flag as it was before this signal.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, cancel.clone());
        let _ = signal_hook::flag::register(sig, cancel.clone());
    }
}

fn line(c: &Counters) -> String {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "{} files, {} dirs | {} linked, {} copied ({}) | {} problems",
        g(&c.files_total),
        g(&c.dirs_total),
        g(&c.files_linked),
        g(&c.files_transferred),
        indicatif::HumanBytes(g(&c.bytes_transferred)),
        g(&c.problems_total)
    )
}

/// Shows a spinner with the counters on stderr until `done` is set.
pub fn show(counters: &Counters, done: &AtomicBool) {
    spin(done, || line(counters));
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
