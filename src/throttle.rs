//! The bandwidth limit (`--bwlimit`, `bwlimit = "50MiB"`): one token bucket shared by
//! every worker of a run, charged with the bytes read from the source and the bytes
//! written to the backup. It is smooth (a worker that takes more than the bucket holds
//! waits for exactly its share, GCRA-style, so the total rate holds across any number
//! of workers) with a small burst (100 ms of the rate), and it measures how long the run
//! was held back: the wall-clock time during which at least one worker was asleep in it.
//! A stopped run (window ended, signal) is not held back any more, and not let through
//! either: [`Paced::take`] says stop, and the caller gives up its copy. Also the
//! parser of rates. No I/O; it sleeps the calling thread.
//!
//! The copies in flight are served in the order they started ([`Throttle::copy`]): the
//! oldest one that is taking bytes has the whole rate, the others wait for it. Shared
//! evenly, two copies that each need 5 s of the rate both need 10 s, and a backup window
//! of 8 s would cut (and throw away) both, run after run: no window would ever finish
//! one. Served in order, the first finishes after 5 s, and every window that leaves one
//! copy time enough finishes at least one more. The total rate is the same. A copy that
//! has not taken bytes for [`GRACE`] (stalled on a slow read or write, or between its
//! reads) does not hold the younger ones back meanwhile.
//!
//! Only copies that need a second or more of the rate ([`Throttle::copy`]) stand in
//! line, and a younger one waits only while the rate is spent (the bucket in debt): the
//! line decides who gets a rate that does not go round, and never leaves it unused. In
//! line, small files went one at a time, each waiting for the one before to be created,
//! written and closed (three or four round trips on NFS): 20,000 small files through a
//! 1 ms latency layer with `--bwlimit 100MiB` took 54 s instead of 15 s. Nor does a
//! large copy that cannot use the whole rate on its own (one slow stream) hold the
//! others back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The burst: how much of the rate may go at once after a pause.
const BURST: Duration = Duration::from_millis(100);

/// The longest single sleep, so a stop is noticed soon.
const SLICE: Duration = Duration::from_millis(50);

/// How long after its booked bytes may go an older copy still keeps the rate from the
/// younger ones: the time it may take to read or write them and ask for the next.
const GRACE: Duration = Duration::from_millis(250);

pub struct Throttle {
    /// Bytes per second.
    rate: u64,
    state: Mutex<State>,
    /// Signalled when a copy ends (a younger one may go on at once).
    ended: Condvar,
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
    /// The copies in flight by their place in line (the order they started), each with
    /// the time until which it keeps the rate from the younger ones.
    copies: BTreeMap<u64, Instant>,
    /// The place in line of the next copy.
    next: u64,
}

/// One copy's share of a [`Throttle`]: its place in line, if it has one. Dropped when
/// the copy ends.
pub struct Paced<'a> {
    throttle: &'a Throttle,
    place: Option<u64>,
}

impl Paced<'_> {
    /// Takes `n` bytes from the bucket, sleeping until every older copy that is taking
    /// bytes has finished and the rate allows them. `false` once `stop` is set (before
    /// or during the sleep, which then ends at once): the bytes may not go, and the
    /// caller abandons what it was copying, which would otherwise finish at full speed,
    /// past the limit.
    pub fn take(&self, n: u64, stop: &AtomicBool) -> bool {
        self.throttle.take_in_line(self.place, n, stop)
    }
}

impl Drop for Paced<'_> {
    fn drop(&mut self) {
        let Some(place) = self.place else {
            return;
        };
        let mut s = self.throttle.lock();
        s.copies.remove(&place);
        drop(s);
        self.throttle.ended.notify_all();
    }
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
                copies: BTreeMap::new(),
                next: 0,
            }),
            ended: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of `size` bytes starts. One that needs a second of the rate or more (read
    /// and written, `2 × size` bytes) takes its place in line, behind the copies in
    /// flight; a smaller one takes its bytes as they come (it is over in a moment, and
    /// the time it would wait for the one before to end, a few round trips, would be
    /// lost).
    pub fn copy(&self, size: u64) -> Paced<'_> {
        if size.saturating_mul(2) < self.rate {
            return Paced {
                throttle: self,
                place: None,
            };
        }
        let mut s = self.lock();
        let place = s.next;
        s.next += 1;
        s.copies.insert(place, Instant::now() + GRACE);
        Paced {
            throttle: self,
            place: Some(place),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// [`Paced::take`] for the copy at `place` (none: not in line).
    fn take_in_line(&self, place: Option<u64>, n: u64, stop: &AtomicBool) -> bool {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let mut waiting = false;
        let until = {
            let mut s = self.lock();
            while let Some(place) = place {
                let now = Instant::now();
                // The latest time until which an older copy keeps the rate.
                let older = s.copies.range(..place).map(|(_, t)| *t).max();
                match older {
                    // Only while the rate is spent: else the older copies leave some of
                    // it unused (a slow stream), and this one may take it.
                    Some(t) if t > now && s.full_at > now => {
                        // Waiting in line is wanting bytes: the younger copies wait too.
                        s.copies.insert(place, now + GRACE);
                        if !waiting {
                            waiting = true;
                            Self::begin_wait(&mut s, now);
                        }
                        if stop.load(Ordering::Relaxed) {
                            Self::end_wait(&mut s, now);
                            return false;
                        }
                        let left = (t - now).min(SLICE);
                        s = self
                            .ended
                            .wait_timeout(s, left)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    _ => break,
                }
            }
            let now = Instant::now();
            let until = Self::book(&mut s, self.rate, n, now);
            if let Some(place) = place {
                s.copies.insert(place, until.max(now) + GRACE);
            }
            if until > now && !waiting {
                waiting = true;
                Self::begin_wait(&mut s, now);
            }
            until
        };
        if waiting {
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
    #[cfg(test)]
    fn reserve(&self, n: u64, now: Instant) -> Instant {
        Self::book(&mut self.lock(), self.rate, n, now)
    }

    fn book(s: &mut State, rate: u64, n: u64, now: Instant) -> Instant {
        let cost = Duration::from_secs_f64(n as f64 / rate as f64);
        s.full_at = s.full_at.max(now) + cost;
        s.full_at.checked_sub(BURST).unwrap_or(now).max(now)
    }

    /// A worker starts to sleep at `now`.
    #[cfg(test)]
    fn wait_begins(&self, now: Instant) {
        Self::begin_wait(&mut self.lock(), now);
    }

    fn begin_wait(s: &mut State, now: Instant) {
        if s.waiting == 0 {
            s.since = now;
        }
        s.waiting += 1;
    }

    /// A worker wakes at `now`: the stretch during which some worker slept ends with
    /// the last one.
    fn wait_ends(&self, now: Instant) {
        Self::end_wait(&mut self.lock(), now);
    }

    fn end_wait(s: &mut State, now: Instant) {
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
        let s = self.lock();
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
        let c = t.copy(10_000);
        assert!(c.take(100, &stop), "the burst");
        std::thread::scope(|sc| {
            sc.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                stop.store(true, Ordering::Relaxed);
            });
            let t0 = Instant::now();
            // 10 s of bytes at this rate: the stop ends the wait after about 200 ms.
            assert!(!c.take(10_000, &stop));
            let took = t0.elapsed();
            assert!(took < Duration::from_secs(2), "{took:?}");
            assert!(t.waited() <= took, "{:?} > {took:?}", t.waited());
        });
        assert!(!c.take(1, &stop), "stopped before");
    }

    #[test]
    fn the_oldest_copy_is_served_first_and_the_next_goes_on_when_it_ends() {
        let t = Throttle::new(1_000_000);
        let stop = AtomicBool::new(false);
        let (old, young) = (t.copy(1 << 30), t.copy(1 << 30));
        // More than the rate, back to back: the bucket stays in debt.
        assert!(old.take(300_000, &stop));
        std::thread::scope(|sc| {
            let waited = sc.spawn(|| {
                let t0 = Instant::now();
                assert!(young.take(1000, &stop));
                t0.elapsed()
            });
            // The older copy keeps asking for more than the rate: the younger waits
            // all along.
            for _ in 0..4 {
                assert!(old.take(300_000, &stop));
            }
            assert!(
                !waited.is_finished(),
                "the younger copy went before the older"
            );
            drop(old);
            let w = waited.join().unwrap();
            assert!(w >= Duration::from_millis(550), "{w:?}");
        });
        // A copy that stops asking (stalled) holds the others back only for GRACE.
        let (stalled, next) = (t.copy(1 << 30), t.copy(1 << 30));
        assert!(stalled.take(1, &stop));
        let t0 = Instant::now();
        assert!(next.take(1, &stop));
        assert!(t0.elapsed() < GRACE + Duration::from_millis(200));
        // A stop ends the wait in line.
        stop.store(true, Ordering::Relaxed);
        assert!(!next.take(1, &stop));
    }

    #[test]
    fn only_large_copies_stand_in_line_and_only_while_the_rate_is_spent() {
        let t = Throttle::new(1_000_000);
        let stop = AtomicBool::new(false);
        let big = t.copy(1 << 30);
        // A small file (under a second of the rate) takes its bytes at once while an
        // older large copy holds its place.
        let small = t.copy(1000);
        assert!(small.place.is_none());
        assert!(big.take(1000, &stop));
        let t0 = Instant::now();
        assert!(small.take(1000, &stop));
        assert!(
            t0.elapsed() < Duration::from_millis(50),
            "{:?}",
            t0.elapsed()
        );
        // A younger large copy goes on while the older one leaves the rate unused (a
        // slow stream: 1 kB now and then of 1 MB/s).
        let young = t.copy(1 << 30);
        std::thread::sleep(Duration::from_millis(20));
        assert!(big.take(1000, &stop));
        std::thread::sleep(Duration::from_millis(20));
        let t0 = Instant::now();
        assert!(young.take(1000, &stop));
        assert!(
            t0.elapsed() < Duration::from_millis(50),
            "{:?}",
            t0.elapsed()
        );
    }
}
