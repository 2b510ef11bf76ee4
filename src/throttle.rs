//! The bandwidth limit (`--bwlimit`, `bwlimit = "50MiB"`): one token bucket shared by
//! every worker of a run, charged with the bytes read from the source and the bytes
//! written to the backup. It is smooth (a worker that takes more than the bucket holds
//! waits for exactly its share, GCRA-style, so the total rate holds across any number
//! of workers) with a small burst (100 ms of the rate), and it measures how long the run
//! was held back: the wall-clock time during which at least one worker was asleep in it.
//! A stopped run (window ended, signal) is not held back any more, and not let through
//! either: [`Throttle::take`] says stop, and the caller gives up its copy. Also the
//! parser of rates. No I/O; it sleeps the calling thread.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The burst: how much of the rate may go at once after a pause.
const BURST: Duration = Duration::from_millis(100);

/// The longest single sleep, so a stop is noticed soon.
const SLICE: Duration = Duration::from_millis(50);

pub struct Throttle {
    /// Bytes per second.
    rate: u64,
    state: Mutex<State>,
}

struct State {
    /// When the bucket would be full again if nothing more were taken (the
    /// "theoretical arrival time" of GCRA).
    full_at: Instant,
    /// How many workers are asleep in [`Throttle::take`] now.
    waiting: u32,
    /// Since when at least one has been (meaningful while `waiting > 0`).
    since: Instant,
    /// Wall-clock time during which at least one worker waited, up to the present
    /// stretch (from `since`) if one is under way.
    waited: Duration,
}

impl Throttle {
    /// A bucket of `rate` bytes per second (at least 1).
    pub fn new(rate: u64) -> Throttle {
        let now = Instant::now();
        Throttle {
            rate: rate.max(1),
            state: Mutex::new(State {
                full_at: now,
                waiting: 0,
                since: now,
                waited: Duration::ZERO,
            }),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Takes `n` bytes from the bucket, sleeping until the rate allows them. `false`
    /// once `stop` is set (before or during the sleep, which then ends at once): the
    /// bytes may not go, and the caller abandons what it was copying, which would
    /// otherwise finish at full speed, past the limit.
    pub fn take(&self, n: u64, stop: &AtomicBool) -> bool {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.reserve(n, Instant::now());
        if until > Instant::now() {
            self.wait_begins(Instant::now());
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                if left.is_zero() || stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(left.min(SLICE));
            }
            self.wait_ends(Instant::now());
        }
        !stop.load(Ordering::Relaxed)
    }

    /// Books `n` bytes at `now`; returns when they may go.
    fn reserve(&self, n: u64, now: Instant) -> Instant {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let cost = Duration::from_secs_f64(n as f64 / self.rate as f64);
        s.full_at = s.full_at.max(now) + cost;
        s.full_at.checked_sub(BURST).unwrap_or(now).max(now)
    }

    /// A worker starts to sleep at `now`.
    fn wait_begins(&self, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.waiting == 0 {
            s.since = now;
        }
        s.waiting += 1;
    }

    /// A worker wakes at `now`: the stretch during which some worker slept ends with
    /// the last one.
    fn wait_ends(&self, now: Instant) {
        let s = &mut *self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.waiting = s.waiting.saturating_sub(1);
        if s.waiting == 0 {
            s.waited += now.saturating_duration_since(s.since);
        }
    }

    /// Wall-clock time during which at least one worker waited so far.
    pub fn waited(&self) -> Duration {
        self.waited_at(Instant::now())
    }

    fn waited_at(&self, now: Instant) -> Duration {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.waiting > 0 {
            s.waited + now.saturating_duration_since(s.since)
        } else {
            s.waited
        }
    }
}

/// Parses a rate in bytes per second: a number (decimals allowed) with an optional
/// suffix, as rsync's `--bwlimit` reads it: `K`/`KiB` = 1024, `M`/`MiB` = 1024²,
/// `G`/`GiB` = 1024³ (rsync users expect `K` to be 1024), `KB`/`MB`/`GB` = 1000,
/// 1000², 1000³; no suffix or `B` = bytes; an optional `/s`. `0` means no limit
/// (`None`).
pub fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!(
            "bwlimit {s:?}: give bytes per second, e.g. 50MiB, 800K, 1.5G (K, M, G are 1024-based as in rsync; KB, MB, GB 1000-based), or 0 for no limit"
        )
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    match bytes as u64 {
        0 if n == 0.0 => Ok(None),
        0 => Err(format!("bwlimit {s:?} is less than one byte per second")),
        b => Ok(Some(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_rsync_units() {
        assert_eq!(parse_rate("50MiB"), Ok(Some(50 << 20)));
        assert_eq!(parse_rate("50M"), Ok(Some(50 << 20)));
        assert_eq!(parse_rate("800k"), Ok(Some(800 * 1024)));
        assert_eq!(parse_rate("1.5G/s"), Ok(Some(3 << 29)));
        assert_eq!(parse_rate("2MB"), Ok(Some(2_000_000)));
        assert_eq!(parse_rate("4096"), Ok(Some(4096)));
        assert_eq!(parse_rate("0"), Ok(None));
        for bad in ["", "fast", "5 parsecs", "-1M", "1e9"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reservations_keep_the_rate() {
        let t = Throttle::new(1000);
        let now = Instant::now();
        // The burst (100 ms = 100 bytes) goes at once.
        assert_eq!(t.reserve(100, now), now);
        // Two workers asking 500 bytes each at the same instant: the first waits 0.5 s,
        // the second 1 s.
        let a = t.reserve(500, now);
        let b = t.reserve(500, now);
        assert_eq!(a - now, Duration::from_millis(500));
        assert_eq!(b - now, Duration::from_millis(1000));
        // Booking is not waiting: nothing is counted until a worker sleeps.
        assert_eq!(t.waited_at(now + Duration::from_secs(5)), Duration::ZERO);
    }

    #[test]
    fn overlapping_waits_count_once_and_only_as_long_as_they_last() {
        let t = Throttle::new(1000);
        let t0 = Instant::now();
        let ms = |ms| t0 + Duration::from_millis(ms);
        // Two workers asleep from 0 and 100 ms, awake at 500 ms and 1 s: 1 s.
        t.wait_begins(ms(0));
        t.wait_begins(ms(100));
        t.wait_ends(ms(500));
        assert_eq!(t.waited_at(ms(800)), Duration::from_millis(800));
        t.wait_ends(ms(1000));
        assert_eq!(t.waited_at(ms(3000)), Duration::from_millis(1000));
        // Another stretch, cut short (a stop): what was slept, not what was booked.
        t.wait_begins(ms(2000));
        t.wait_ends(ms(2250));
        assert_eq!(t.waited_at(ms(9000)), Duration::from_millis(1250));
    }

    #[test]
    fn a_stop_ends_the_wait_and_refuses_the_bytes() {
        let t = Throttle::new(1000);
        let stop = AtomicBool::new(false);
        assert!(t.take(100, &stop), "the burst");
        std::thread::scope(|sc| {
            sc.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                stop.store(true, Ordering::Relaxed);
            });
            let t0 = Instant::now();
            // 10 s of bytes at this rate: the stop ends the wait after about 200 ms.
            assert!(!t.take(10_000, &stop));
            let took = t0.elapsed();
            assert!(took < Duration::from_secs(2), "{took:?}");
            assert!(t.waited() <= took, "{:?} > {took:?}", t.waited());
        });
        assert!(!t.take(1, &stop), "stopped before");
    }
}
