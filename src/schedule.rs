//! Schedules: 5-field cron (optionally with a leading seconds field), `@hourly`,
//! `@daily`, `@weekly`, `@monthly`, `@yearly`, and the AWS form `cron(m h dom mon dow
//! year)` with `?`, `L`, `W` and `#` and Quartz weekday numbers (1 = Sunday). Evaluated
//! with croner in UTC or a named IANA time zone. A step from a start (`0/15`, Quartz's and
//! AWS's "from 0, every 15") is read as the range from that start to the field's end
//! (`0-59/15`), which croner accepts. The two day fields combine as in Vixie cron (both
//! must match when either starts with `*`). Pure: every function takes the instant
//! to count from, so nothing here reads the clock.

use chrono::{DateTime, LocalResult, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::{Cron, YEAR_UPPER_LIMIT};

/// The year in which croner stops computing run times
/// ([`Schedule::past_the_horizon`]).
pub const LAST_YEAR: i32 = YEAR_UPPER_LIMIT;

#[derive(Clone, Debug)]
pub struct Schedule {
    /// As the user wrote it.
    pub expr: String,
    pub tz: Option<Tz>,
    cron: Cron,
    /// The years it fires in have no end (no year field, or one with `*` or a step
    /// from a start, `2030/5`): past the year 5000, where croner stops, it still fires.
    /// `false`: the year field's last year is named (`2030`, `2030-5000`).
    years_open: bool,
}

/// Parses a schedule. `tz` is an IANA zone name (`Europe/Berlin`); `None` means UTC.
pub fn parse(expr: &str, tz: Option<&str>) -> Result<Schedule, String> {
    let e = expr.trim();
    let tz = match tz {
        Some(name) => Some(name.parse::<Tz>().map_err(|_| {
            format!("unknown time zone {name:?} (use an IANA name such as Europe/Berlin or UTC)")
        })?),
        None => None,
    };
    let bad = |why: String| format!("schedule {expr:?}: {why}");
    let mut years_open = true;
    let cron = if let Some(inner) = e.strip_prefix("cron(").and_then(|r| r.strip_suffix(')')) {
        let fields: Vec<&str> = inner.split_whitespace().collect();
        if fields.len() != 6 {
            return Err(bad(format!(
                "the AWS form has 6 fields (minutes hours day-of-month month day-of-week year), this has {}",
                fields.len()
            )));
        }
        no_empty_items(
            &fields,
            &[
                "minutes",
                "hours",
                "day-of-month",
                "month",
                "day-of-week",
                "year",
            ],
        )
        .map_err(bad)?;
        check_fields(&fields, AWS_FIELDS).map_err(bad)?;
        years_open = fields[5].split(',').any(|item| match item.split_once('/') {
            Some((base, _)) => !base.contains('-'),
            None => item == "*" || item == "?",
        });
        if (fields[2] == "?") == (fields[4] == "?") {
            return Err(bad(
                "the AWS form needs `?` in exactly one of day-of-month and day-of-week".into(),
            ));
        }
        // `L` alone in day-of-week is the week's last day, Saturday (7), in Quartz and
        // EventBridge; croner reads it as no day at all, so the job never fired.
        let dow = fields[4]
            .split(',')
            .map(|i| if i.eq_ignore_ascii_case("L") { "7" } else { i })
            .collect::<Vec<_>>()
            .join(",");
        let mut fields = fields;
        fields[4] = &dow;
        // Croner's year field comes with a seconds field: fire at second 0. Quartz
        // weekdays run 1 (Sunday) to 7.
        let fields = steps_from_a_start(&fields, &[59, 23, 31, 12, 7, YEAR_UPPER_LIMIT as u32]);
        CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Required)
            .alternative_weekdays(true)
            .build()
            .parse(&format!("0 {}", fields.join(" ")))
            .map_err(|e| bad(e.to_string()))?
    } else if e.starts_with("rate(") {
        return Err(bad(
            "AWS rate() expressions are not supported; write the cron form, e.g. cron(0 * * * ? *) for every hour".into(),
        ));
    } else {
        let fields: Vec<&str> = e.split_whitespace().collect();
        let n = fields.len();
        if !e.starts_with('@') && !(5..=6).contains(&n) {
            return Err(bad(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, @daily-style, or cron(...) in the AWS form; this has {n}"
            )));
        }
        let names = ["minute", "hour", "day-of-month", "month", "day-of-week"];
        let seconds = ["second", names[0], names[1], names[2], names[3], names[4]];
        no_empty_items(&fields, if n == 6 { &seconds } else { &names }).map_err(bad)?;
        let ends: &[u32] = if n == 6 {
            &[59, 59, 23, 31, 12, 6]
        } else {
            &[59, 23, 31, 12, 6]
        };
        let expr = if e.starts_with('@') {
            nickname(e).map_err(bad)?.to_string()
        } else {
            check_fields(&fields, &CRON_FIELDS[6 - n..]).map_err(bad)?;
            steps_from_a_start(&fields, ends).join(" ")
        };
        // Vixie cron's day rule (cronie's, that of the crontabs operators know): when
        // either day field starts with `*` (`*`, `*/2`), a day must match both;
        // otherwise either is enough. Croner ORs them unless one is exactly `*`, so
        // `0 0 */2 * 1` would fire every odd day and every Monday.
        let star = |i: usize| fields.get(i).is_some_and(|f| f.starts_with('*'));
        let (dom, dow) = if n == 6 { (3, 5) } else { (2, 4) };
        CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .dom_and_dow(!e.starts_with('@') && (star(dom) || star(dow)))
            .build()
            .parse(&expr)
            .map_err(|e| bad(e.to_string()))?
    };
    let s = Schedule {
        expr: expr.to_string(),
        tz,
        cron,
        years_open,
    };
    // A pattern that never fires (31 February) is an error, not a silent idle job. One
    // whose last time is past (a year that is over) is not: it fired, and a config must
    // not break by itself when a date passes (every run parses it, a one-time job's
    // own run included). The daemon says so at start and reload, and tells the job's
    // notifiers; `config check` refuses it (`config::check`).
    if s.next_after(DateTime::<Utc>::from_timestamp(0, 0).expect("epoch"))
        .is_none()
        && s.next_after(Utc::now()).is_none()
    {
        return Err(bad("it never fires".into()));
    }
    Ok(s)
}

/// A `@` nickname as croner takes it: Vixie cron's, `@midnight` being `@daily`.
/// `@reboot` is no time of day (the init system starts a job at boot); anything else
/// is named with the nicknames there are (croner's own message asked for 5 or 6 fields).
fn nickname(e: &str) -> Result<&str, String> {
    match e.to_ascii_lowercase().as_str() {
        "@midnight" => Ok("@daily"),
        "@hourly" | "@daily" | "@weekly" | "@monthly" | "@yearly" | "@annually" => Ok(e),
        "@reboot" => Err(
            "@reboot is not a time: start the job at boot from the init system instead (`snapring run JOB` in a systemd unit, examples/systemd)".into(),
        ),
        _ => Err(format!(
            "unknown nickname {e}: use @hourly, @daily (or @midnight), @weekly, @monthly or @yearly (or @annually)"
        )),
    }
}

/// Rewrites each list item `S/N` (a step from a start, as Quartz and AWS write it: `0/15`
/// is minutes 0, 15, 30, 45) to `S-END/N`, `END` being the field's last value; croner
/// takes only `*/N` and `A-B/N`. Anything else is left for croner to judge.
fn steps_from_a_start(fields: &[&str], ends: &[u32]) -> Vec<String> {
    fields
        .iter()
        .zip(ends)
        .map(|(field, end)| {
            field
                .split(',')
                .map(|item| match item.split_once('/') {
                    Some((start, step))
                        if !start.is_empty()
                            && start.bytes().all(|b| b.is_ascii_digit())
                            && step.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        match start.parse::<u32>() {
                            Ok(s) if s <= *end => format!("{start}-{end}/{step}"),
                            _ => item.to_string(),
                        }
                    }
                    _ => item.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

/// One field of a schedule as `check_fields` judges it: its name, its values and what
/// to tell about them, and its names (`MON`, `JAN`) with their values.
struct Field {
    name: &'static str,
    lo: u32,
    hi: u32,
    /// The largest step taken: the field's cycle (60 minutes, 24 hours, …), which
    /// picks its first value once a cycle (`*/60`: minute 0, as every 60 minutes; it
    /// was taken before these checks, and a daemon must still start on such a file).
    max_step: u32,
    allowed: &'static str,
    names: &'static [&'static str],
    /// The value of `names[0]`.
    first: u32,
}

const MONTHS: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const fn field(name: &'static str, lo: u32, hi: u32, allowed: &'static str) -> Field {
    Field {
        name,
        lo,
        hi,
        max_step: hi - lo + 1,
        allowed,
        names: &[],
        first: 0,
    }
}

/// The fields of the 5-field form, after a leading seconds field (the 6-field form).
const CRON_FIELDS: &[Field] = &[
    field("second", 0, 59, "0–59"),
    field("minute", 0, 59, "0–59"),
    field("hour", 0, 23, "0–23"),
    field("day-of-month", 1, 31, "1–31"),
    Field {
        names: MONTHS,
        first: 1,
        ..field("month", 1, 12, "1–12 or JAN–DEC")
    },
    Field {
        names: DAYS,
        first: 0,
        // 7 is Sunday again: the cycle is 7 days.
        max_step: 7,
        ..field("day-of-week", 0, 7, "0–7 (0 and 7 = Sunday) or SUN–SAT")
    },
];

/// The fields of the AWS form.
const AWS_FIELDS: &[Field] = &[
    field("minutes", 0, 59, "0–59"),
    field("hours", 0, 23, "0–23"),
    field("day-of-month", 1, 31, "1–31"),
    Field {
        names: MONTHS,
        first: 1,
        ..field("month", 1, 12, "1–12 or JAN–DEC")
    },
    Field {
        names: DAYS,
        first: 1,
        ..field(
            "day-of-week",
            1,
            7,
            "1–7 in the AWS form (1 = Sunday, 7 = Saturday) or SUN–SAT",
        )
    },
    // Croner takes no year past its limit (it said "Range out of bounds").
    field(
        "year",
        1,
        YEAR_UPPER_LIMIT as u32,
        "1–5000 (the scheduler computes no run time past the year 5000; `*` for every year)",
    ),
];

/// Judges the plain items of each field (numbers, names, ranges and steps) before
/// croner does, so that a mistake is told with the field and what it allows (croner
/// says "Position 0 is less than the input offset 1" or "Range out of bounds"): a value
/// outside the field, a range from high to low (`5-2`: write `5-23,0-2` for one across
/// the field's end; croner has no wrap-around), a step larger than the field's range
/// (`*/75` in minutes picks minute 0 alone; cronie refuses it too). Items with `L`,
/// `W` or `#`, and anything else that is no number or name, are left to croner.
fn check_fields(fields: &[&str], specs: &[Field]) -> Result<(), String> {
    for (text, f) in fields.iter().zip(specs) {
        for item in text.split(',') {
            let (base, step) = match item.split_once('/') {
                Some((b, s)) => (b, Some(s)),
                None => (item, None),
            };
            if step.and_then(|s| s.parse::<u32>().ok()) == Some(0) {
                return Err(format!(
                    "the {} field {text:?} has a step of 0: a step is the distance between the \
                     values picked, at least 1 (*/15: every 15th)",
                    f.name
                ));
            }
            if let Some((_, n)) = base.split_once('#')
                && !n.parse::<u32>().is_ok_and(|n| (1..=5).contains(&n))
            {
                return Err(format!(
                    "the {} field {text:?}{}: `#N` picks the Nth such weekday of the month, N \
                     from 1 to 5 (a month has at most five of each)",
                    f.name,
                    match item == *text {
                        true => String::new(),
                        false => format!(" has {item:?}"),
                    }
                ));
            }
            if let Some(n) = step.and_then(|s| s.parse::<u32>().ok())
                && n > f.max_step
            {
                return Err(format!(
                    "{} step {n} is larger than the field's cycle of {} ({}–{}): it could \
                     only pick the first value, and cannot mean every {n}; use at most {}",
                    f.name, f.max_step, f.lo, f.hi, f.max_step
                ));
            }
            if base == "*" || base == "?" {
                continue;
            }
            let value = |v: &str, end: bool| -> Option<u32> {
                if let Ok(n) = v.parse::<u32>() {
                    return Some(n);
                }
                let i = f.names.iter().position(|x| x.eq_ignore_ascii_case(v))? as u32;
                // `FRI-SUN` in the 5-field form: SUN at a range's end is 7.
                Some(if end && i == 0 && f.lo == 0 {
                    7
                } else {
                    f.first + i
                })
            };
            let (a, b) = match base.split_once('-') {
                Some((a, b)) => match (value(a, false), value(b, true)) {
                    (Some(a), Some(b)) => (a, Some(b)),
                    (Some(_), None) => continue,
                    // `L-3` (three days before the last, Quartz), `1W-5`: the crate
                    // said only "Component error: Invalid start of range."
                    _ => {
                        return Err(format!(
                            "the {} field {text:?}{}: a range goes from one value to another ({}–{}{}); `L-n` and `W` ranges are not supported",
                            f.name,
                            match item == *text {
                                true => String::new(),
                                false => format!(" has {item:?}"),
                            },
                            f.lo,
                            f.hi,
                            match f.names.is_empty() {
                                true => String::new(),
                                false => format!(
                                    ", or names {}–{}",
                                    f.names[0],
                                    f.names[f.names.len() - 1]
                                ),
                            }
                        ));
                    }
                },
                None => match value(base, false) {
                    Some(a) => (a, None),
                    None => continue,
                },
            };
            for v in std::iter::once(a).chain(b) {
                if v < f.lo || v > f.hi {
                    return Err(format!(
                        "the {} field {text:?} has {v}, which is out of its range: the {} is {}",
                        f.name, f.name, f.allowed
                    ));
                }
            }
            if let Some(b) = b
                && a > b
            {
                let part = |x: u32, y: u32| match x == y {
                    true => x.to_string(),
                    false => format!("{x}-{y}"),
                };
                return Err(format!(
                    "the {} field {text:?} has the range {base}, which goes from high to low: \
                     write ranges low to high, and one across the field's end as two ({},{})",
                    f.name,
                    part(a, f.hi),
                    part(f.lo, b)
                ));
            }
        }
    }
    Ok(())
}

/// Refuses a field with an empty item in its list (`0 , * * *`, `1,,5`, `3,`). Croner
/// skips empty items, so a field of commas alone selects nothing: the pattern never
/// fires, and proving that walks every day to the year 5000 (seconds per check in an
/// unoptimized build; the fuzzer found it).
fn no_empty_items(fields: &[&str], names: &[&str]) -> Result<(), String> {
    for (field, name) in fields.iter().zip(names) {
        if field.split(',').any(|item| item.trim().is_empty()) {
            return Err(format!(
                "the {name} field {field:?} has an empty item in its list (write e.g. 1,5 or *)"
            ));
        }
    }
    Ok(())
}

/// `t`'s local wall clock, carried as a `DateTime<Utc>` (see `Schedule::wall_next`).
fn wall(tz: Tz, t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.from_utc_datetime(&t.with_timezone(&tz).naive_local())
}

/// When the scheduled wall clock time `w` runs, for a pattern that does not run every
/// hour: at `w` if it happens once; at its first occurrence if the fall-back repeats
/// it; at the first instant after the gap if the spring-forward skips it. The mapping
/// never goes back in time as `w` goes forward, which `next_after` and
/// `previous_at_or_before` rely on.
fn run_instant(tz: Tz, w: DateTime<Utc>) -> DateTime<Utc> {
    match tz.from_local_datetime(&w.naive_utc()) {
        LocalResult::Single(d) => d.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => after_gap(tz, w),
    }
}

/// The first instant whose wall clock is past `w`, a wall clock time that does not
/// exist: the instant the clocks jumped over it. Found by bisection between instants
/// certainly before and after it (no offset is more than 14 hours from UTC).
fn after_gap(tz: Tz, w: DateTime<Utc>) -> DateTime<Utc> {
    let past = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).is_some_and(|x| wall(tz, x) > w);
    let (mut lo, mut hi) = (w.timestamp() - 15 * 3600, w.timestamp() + 15 * 3600);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if past(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::<Utc>::from_timestamp(hi, 0).unwrap_or(w)
}

/// If `t` is in the second pass of a wall clock range the fall-back repeats, the first
/// wall clock time after that range (whole seconds); `None` otherwise.
fn repeat_end(tz: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let w = wall(tz, t);
    let LocalResult::Ambiguous(first, second) = tz.from_local_datetime(&w.naive_utc()) else {
        return None;
    };
    if t <= first.with_timezone(&Utc) {
        return None;
    }
    // The range is as long as the clocks went back: `w + len` is past it, and every
    // wall clock time between `w` and its end is repeated.
    let len = (second.with_timezone(&Utc) - first.with_timezone(&Utc)).num_seconds();
    let repeated = |s: i64| {
        DateTime::<Utc>::from_timestamp(s, 0).is_some_and(|x| {
            matches!(
                tz.from_local_datetime(&x.naive_utc()),
                LocalResult::Ambiguous(..)
            )
        })
    };
    let (mut lo, mut hi) = (w.timestamp(), w.timestamp() + len);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if repeated(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    DateTime::<Utc>::from_timestamp(hi, 0)
}

impl Schedule {
    /// The first firing strictly after `t`.
    ///
    /// In a named zone the pattern is matched against the local wall clock, and
    /// daylight-saving changes are handled as Vixie cron handles them
    /// (`wall_clock_runs` says how).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.tz {
            Some(tz) if self.every_hour() => self
                .cron
                .find_next_occurrence(&t.with_timezone(&tz), false)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
            Some(tz) => {
                // Every wall clock time up to `t`'s own runs at or before `t`; so does
                // the rest of a repeated range `t` is in the second pass of.
                let mut w = match repeat_end(tz, t) {
                    Some(end) => self.wall_next(end, true)?,
                    None => self.wall_next(wall(tz, t), false)?,
                };
                // Past `t` at once in any real zone; the loop only guarantees progress.
                loop {
                    let at = run_instant(tz, w);
                    if at > t {
                        return Some(at);
                    }
                    w = self.wall_next(w, false)?;
                }
            }
            None => self.cron.find_next_occurrence(&t, false).ok(),
        }
    }

    /// The last firing at or before `t`.
    pub fn previous_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.tz {
            Some(tz) if self.every_hour() => self
                .cron
                .find_previous_occurrence(&t.with_timezone(&tz), true)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
            Some(tz) => {
                // In the second pass of a repeated range, the whole range ran (once, in
                // the first pass) before `t`.
                let mut w = match repeat_end(tz, t) {
                    Some(end) => self.wall_previous(end, false)?,
                    None => self.wall_previous(wall(tz, t), true)?,
                };
                loop {
                    let at = run_instant(tz, w);
                    if at <= t {
                        return Some(at);
                    }
                    w = self.wall_previous(w, false)?;
                }
            }
            None => self.cron.find_previous_occurrence(&t, true).ok(),
        }
    }

    /// Whether the pattern runs in every hour of the day (`@hourly`, `*/15 * * * *`,
    /// `0 * * * *`). Such a schedule keeps its pace in real time across a
    /// daylight-saving change, as Vixie cron runs its wildcard jobs: a wall clock time
    /// that does not exist is skipped (the next hour's run follows an hour after the
    /// previous one), and one that happens twice runs twice, an hour apart. Every other
    /// pattern (`30 2 * * *`, `0,30 2 * * *`, `15 2,14 * * *`) runs each of its wall
    /// clock times once, as Vixie cron runs its fixed-time jobs: the times that
    /// fall in a spring-forward gap run once at the first instant after it (several of
    /// them, and a time scheduled right at the gap's end, are one run), and a time the
    /// fall-back repeats runs at its first occurrence only. (Vixie cron calls a job a
    /// wildcard one when its minute or hour field starts with `*`; here the hours it
    /// runs in decide, so `*/30 2 * * *` runs once in the gap and once per repeated time
    /// too.)
    fn every_hour(&self) -> bool {
        (0..24).all(|h| self.cron.pattern.hour_match(h).unwrap_or(false))
    }

    /// The first scheduled wall clock time after `w` (at or after, `inclusive`). A
    /// wall clock time is carried in a `DateTime<Utc>` whose UTC fields are the local
    /// ones: croner evaluates it without any daylight-saving change.
    fn wall_next(&self, w: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&w, inclusive).ok()
    }

    /// The last scheduled wall clock time before `w` (at or before, `inclusive`).
    fn wall_previous(&self, w: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&w, inclusive).ok()
    }

    /// The next `n` firings after `t`.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            match self.next_after(at) {
                Some(x) => {
                    out.push(x);
                    at = x;
                }
                None => break,
            }
        }
        out
    }

    /// Why no run time after `t` was found (`upcoming` stopped short there): `true`
    /// when the schedule may still fire later but croner computes no time far into the
    /// year [`YEAR_UPPER_LIMIT`] (5000) or past it: `t` is that late, or a later
    /// year matches its year field (29 February after 4996: the next is in 5004,
    /// past the limit), or the years have no end (`*`, `2030/7`). `false`: the year
    /// field names no later year, so its last time is past (`2030-5000` after the year
    /// 5000: it was said to fire then). `t` is read in the schedule's zone.
    pub fn past_the_horizon(&self, t: DateTime<Utc>) -> bool {
        use chrono::Datelike;
        let y = match self.tz {
            Some(tz) => t.with_timezone(&tz).year(),
            None => t.year(),
        };
        // In the year 5000, croner's last, the year field is asked about 5000; past
        // it, only a field without an end fires.
        self.years_open
            || (y <= YEAR_UPPER_LIMIT
                && (y.min(YEAR_UPPER_LIMIT - 1) + 1..=YEAR_UPPER_LIMIT)
                    .any(|y| self.cron.pattern.year_match(y).unwrap_or(false)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, tz: Option<&str>, from: &str, n: usize) -> Vec<String> {
        parse(expr, tz)
            .unwrap()
            .upcoming(t(from), n)
            .iter()
            .map(|d| d.to_rfc3339())
            .collect()
    }

    /// `next --at 9999-12-31` said "its last time is past" of a daily schedule: croner
    /// computes no time past the year 5000. That is told apart from a year field that
    /// is over.
    #[test]
    fn a_time_past_the_horizon_is_not_a_schedule_whose_last_time_is_past() {
        let daily = parse("0 3 * * *", None).unwrap();
        assert!(daily.upcoming(t("9999-12-31T00:00:00Z"), 1).is_empty());
        assert!(daily.past_the_horizon(t("9999-12-31T00:00:00Z")));
        assert!(daily.past_the_horizon(t("5000-01-01T03:00:00Z")));
        let berlin = parse("0 3 * * *", Some("Europe/Berlin")).unwrap();
        assert!(berlin.past_the_horizon(t("9000-06-01T00:00:00Z")));
        let leap = parse("0 3 29 2 *", None).unwrap();
        assert!(leap.upcoming(t("4996-03-01T00:00:00Z"), 1).is_empty());
        assert!(leap.past_the_horizon(t("4996-03-01T00:00:00Z")));
        let over = parse("cron(0 3 * * ? 2030)", None).unwrap();
        for at in ["2031-01-01T00:00:00Z", "9999-12-31T00:00:00Z"] {
            assert!(over.upcoming(t(at), 1).is_empty(), "{at}");
            assert!(!over.past_the_horizon(t(at)), "{at}");
        }
        let to_5000 = parse("cron(0 3 * * ? 2030-5000)", None).unwrap();
        assert!(to_5000.past_the_horizon(t("4999-12-31T00:00:00Z")));
        assert!(to_5000.past_the_horizon(t("5000-06-01T00:00:00Z")));
    }

    /// `cron(0 3 * * ? 2030-5000)` with `next --at 9999-12-31` was said to fire then:
    /// its year field ends in 5000. A field without an end (`*`, `2030/7`) does fire
    /// then, and `2030/7`, whose last year under 5000 is 4997, after it too.
    #[test]
    fn a_year_field_that_ends_is_over_past_its_last_year() {
        for (expr, at, fires) in [
            ("cron(0 3 * * ? 2030-5000)", "9999-12-31T00:00:00Z", false),
            ("cron(0 3 * * ? 2030-5000)", "5001-01-01T00:00:00Z", false),
            (
                "cron(0 3 * * ? 2030,2040-2050/2)",
                "5001-01-01T00:00:00Z",
                false,
            ),
            ("cron(0 3 * * ? 2030/7)", "9999-12-31T00:00:00Z", true),
            ("cron(0 3 * * ? 2030/7)", "4999-01-01T00:00:00Z", true),
            ("cron(0 3 * * ? 2030,*/2)", "9999-12-31T00:00:00Z", true),
            ("0 3 * * *", "5001-01-01T00:00:00Z", true),
        ] {
            let s = parse(expr, None).unwrap();
            assert!(s.upcoming(t(at), 1).is_empty(), "{expr} {at}");
            assert_eq!(s.past_the_horizon(t(at)), fires, "{expr} {at}");
        }
        // A year past croner's limit is told as such, not as "Range out of bounds".
        let e = parse("cron(0 3 * * ? 2030-6000)", None).unwrap_err();
        assert!(
            e.contains("the year field \"2030-6000\" has 6000, which is out of its range")
                && e.contains("no run time past the year 5000"),
            "{e}"
        );
    }

    #[test]
    fn aws_daily_at_two() {
        assert_eq!(
            next("cron(0 2 * * ? *)", None, "2026-11-21T02:00:00Z", 2),
            ["2026-11-22T02:00:00+00:00", "2026-11-23T02:00:00+00:00"]
        );
    }

    #[test]
    fn aws_last_day_of_month_across_a_leap_february() {
        assert_eq!(
            next("cron(30 23 L * ? *)", None, "2028-01-31T23:30:00Z", 3),
            [
                "2028-02-29T23:30:00+00:00",
                "2028-03-31T23:30:00+00:00",
                "2028-04-30T23:30:00+00:00"
            ]
        );
        assert_eq!(
            next("cron(30 23 L * ? *)", None, "2027-02-01T00:00:00Z", 1),
            ["2027-02-28T23:30:00+00:00"]
        );
    }

    #[test]
    fn aws_weekdays_are_quartz_numbered_and_hash_is_nth() {
        // 2#1: the first Monday (AWS/Quartz: 1 = Sunday, 2 = Monday).
        assert_eq!(
            next("cron(0 9 ? * 2#1 *)", None, "2026-11-22T00:00:00Z", 2),
            ["2026-12-07T09:00:00+00:00", "2027-01-04T09:00:00+00:00"]
        );
        // MON-FRI by name, and 6L: the last Friday.
        assert_eq!(
            next("cron(15 6 ? * MON-FRI *)", None, "2026-11-20T07:00:00Z", 2),
            ["2026-11-23T06:15:00+00:00", "2026-11-24T06:15:00+00:00"]
        );
        assert_eq!(
            next("cron(0 18 ? * 6L *)", None, "2026-11-01T00:00:00Z", 1),
            ["2026-11-27T18:00:00+00:00"]
        );
    }

    #[test]
    fn aws_year_field_limits_the_years() {
        assert_eq!(
            next(
                "cron(0 0 29 2 ? 2028-2032)",
                None,
                "2026-01-01T00:00:00Z",
                3
            ),
            ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"][..2]
        );
        assert!(parse("cron(0 0 29 2 ? 2029)", None).is_err(), "never fires");
        // Vixie's @midnight is @daily; @reboot and unknown nicknames say what to do.
        let t = "2026-11-21T12:00:00Z";
        assert_eq!(next("@midnight", None, t, 2), next("@daily", None, t, 2));
        let e = parse("@reboot", None).unwrap_err();
        assert!(e.contains("init system"), "{e}");
        let e = parse("@nightly", None).unwrap_err();
        assert!(
            e.contains("unknown nickname @nightly") && e.contains("@daily"),
            "{e}"
        );
        // A year that is past is a schedule that fired: accepted (the daemon warns).
        assert!(parse("cron(0 2 * * ? 2025)", None).is_ok());
    }

    #[test]
    fn a_step_from_a_start_is_taken_as_quartz_and_aws_mean_it() {
        // AWS's own examples: every 15 minutes; every 5 minutes in office hours.
        assert_eq!(
            next("cron(0/15 * * * ? *)", None, "2026-12-04T18:40:00+00:00", 3),
            [
                "2026-12-04T18:45:00+00:00",
                "2026-12-04T19:00:00+00:00",
                "2026-12-04T19:15:00+00:00"
            ]
        );
        assert_eq!(
            next(
                "cron(0/5 8-17 ? * MON-FRI *)",
                None,
                "2026-12-04T17:52:00+00:00",
                3
            ),
            [
                "2026-12-04T17:55:00+00:00",
                "2026-12-07T08:00:00+00:00",
                "2026-12-07T08:05:00+00:00"
            ]
        );
        // A start other than 0, and in a list: minutes 10, 30, 50 and 55.
        assert_eq!(
            next(
                "cron(10/20,55 3 * * ? *)",
                None,
                "2026-12-04T00:00:00+00:00",
                4
            ),
            [
                "2026-12-04T03:10:00+00:00",
                "2026-12-04T03:30:00+00:00",
                "2026-12-04T03:50:00+00:00",
                "2026-12-04T03:55:00+00:00"
            ]
        );
        // Every second day of the month from the 1st, at 08:00: 1, 3, …, 31.
        assert_eq!(
            next("cron(0 8 1/2 * ? *)", None, "2026-12-28T09:00:00+00:00", 3),
            [
                "2026-12-29T08:00:00+00:00",
                "2026-12-31T08:00:00+00:00",
                "2027-01-01T08:00:00+00:00"
            ]
        );
        // Every 6 hours from 02:00 in the five-field form too.
        assert_eq!(
            next("0 2/6 * * *", None, "2026-12-04T09:00:00+00:00", 3),
            [
                "2026-12-04T14:00:00+00:00",
                "2026-12-04T20:00:00+00:00",
                "2026-12-05T02:00:00+00:00"
            ]
        );
        // Quartz weekdays in the AWS form: from 2 (Monday) every 2 days: Mon, Wed, Fri.
        assert_eq!(
            next("cron(0 0 ? * 2/2 *)", None, "2026-12-04T01:00:00+00:00", 3),
            [
                "2026-12-07T00:00:00+00:00",
                "2026-12-09T00:00:00+00:00",
                "2026-12-11T00:00:00+00:00"
            ]
        );
        // A step with more after it (`2/2#1`) is not rewritten: croner refuses it.
        assert!(parse("cron(0 0 ? * 2/2#1 *)", None).is_err());
        // A start past the field's end is still an error.
        assert!(parse("cron(70/15 * * * ? *)", None).is_err());
        assert!(parse("0 25/2 * * *", None).is_err());
    }

    #[test]
    fn aws_form_errors_are_explained() {
        let e = parse("cron(0 2 * * * *)", None).unwrap_err();
        assert!(e.contains("`?` in exactly one"), "{e}");
        let e = parse("cron(0 2 * *)", None).unwrap_err();
        assert!(e.contains("6 fields"), "{e}");
        let e = parse("rate(1 hour)", None).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let e = parse("0 2 * *", None).unwrap_err();
        assert!(e.contains("expected 5 fields"), "{e}");
        // Empty list items are named, not reported as a pattern that never fires.
        for (expr, field) in [
            ("0 , * * *", "hour field \",\""),
            ("1,,5 2 * * *", "minute field \"1,,5\""),
            ("0 0 1 2 3, 4", "month field \"3,\""),
            ("0 2 * * 1, ", "day-of-week field \"1,\""),
            ("cron(0 2 ? * 1, *)", "day-of-week field \"1,\""),
        ] {
            let e = parse(expr, None).unwrap_err();
            assert!(e.contains(field) && e.contains("empty item"), "{expr}: {e}");
        }
        let e = parse("0 2 * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(e.contains("unknown time zone"), "{e}");
    }

    #[test]
    fn five_fields_and_nicknames_month_ends() {
        // The 31st only in months that have one.
        assert_eq!(
            next("0 3 31 * *", None, "2026-01-31T03:00:00Z", 3),
            [
                "2026-03-31T03:00:00+00:00",
                "2026-05-31T03:00:00+00:00",
                "2026-07-31T03:00:00+00:00"
            ]
        );
        assert_eq!(
            next("@weekly", None, "2026-11-21T12:00:00Z", 1),
            ["2026-11-22T00:00:00+00:00"]
        );
        assert_eq!(
            next("@monthly", None, "2026-12-15T00:00:00Z", 1),
            ["2027-01-01T00:00:00+00:00"]
        );
        assert_eq!(
            next("@hourly", None, "2026-11-21T12:00:00Z", 1),
            ["2026-11-21T13:00:00+00:00"]
        );
        // Seconds first (for tests and fine-grained jobs).
        assert_eq!(
            next("*/5 * * * * *", None, "2026-11-21T12:00:01Z", 2),
            ["2026-11-21T12:00:05+00:00", "2026-11-21T12:00:10+00:00"]
        );
        // POSIX day of week: 0 and 7 are Sunday.
        assert_eq!(
            next("0 4 * * 0", None, "2026-11-21T00:00:00Z", 1),
            next("0 4 * * 7", None, "2026-11-21T00:00:00Z", 1)
        );
    }

    #[test]
    fn named_zone_across_daylight_saving_changes() {
        // 02:30 Berlin does not exist on 2026-03-29 (clocks go 02:00 -> 03:00): the run
        // still happens that day, once, at the first valid time, and the next day at 02:30
        // CEST (00:30 UTC).
        let spring = next(
            "30 2 * * *",
            Some("Europe/Berlin"),
            "2026-03-28T02:00:00Z",
            3,
        );
        assert_eq!(spring[0], "2026-03-29T01:00:00+00:00", "{spring:?}");
        assert_eq!(spring[1], "2026-03-30T00:30:00+00:00", "{spring:?}");
        // 02:30 Berlin happens twice on 2026-10-25: it runs once.
        let fall = next(
            "30 2 * * *",
            Some("Europe/Berlin"),
            "2026-10-24T01:00:00Z",
            3,
        );
        assert_eq!(
            fall,
            [
                "2026-10-25T00:30:00+00:00",
                "2026-10-26T01:30:00+00:00",
                "2026-10-27T01:30:00+00:00"
            ]
        );
        // A UTC schedule ignores all of that.
        assert_eq!(
            next("cron(30 2 * * ? *)", None, "2026-03-28T03:00:00Z", 1),
            ["2026-03-29T02:30:00+00:00"]
        );
        // And the previous firing, for missed-run detection.
        let s = parse("cron(0 2 * * ? *)", None).unwrap();
        assert_eq!(
            s.previous_at_or_before(t("2026-11-22T01:59:00Z"))
                .unwrap()
                .to_rfc3339(),
            "2026-11-21T02:00:00+00:00"
        );
    }

    /// Runs across the 2026 daylight-saving changes: Berlin springs forward on 29 March
    /// at 01:00Z (02:00 CET -> 03:00 CEST) and falls back on 25 October at 01:00Z
    /// (03:00 CEST -> 02:00 CET); New York on 8 March at 07:00Z (02:00 EST -> 03:00 EDT)
    /// and 1 November at 06:00Z (02:00 EDT -> 01:00 EST). Each row: zone, schedule,
    /// from, the runs that follow. Each run is also checked backwards: it is the last
    /// run at or before itself, and the one before it is the last run a second earlier.
    const DST_ROWS: &[(&str, &str, &str, &[&str])] = &[
        // Spring forward, a pattern of fixed times: each time in the gap runs once at
        // its end; several of them (and one at the end itself) are one run.
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-03-28T23:00:00Z",
            &["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"],
        ),
        (
            "Europe/Berlin",
            "0,30 2 * * *",
            "2026-03-28T23:00:00Z",
            &[
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:00:00Z",
                "2026-03-30T00:30:00Z",
            ],
        ),
        (
            "Europe/Berlin",
            "cron(0/30 2 * * ? *)",
            "2026-03-28T23:00:00Z",
            &[
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:00:00Z",
                "2026-03-30T00:30:00Z",
            ],
        ),
        (
            "Europe/Berlin",
            "15 2,14 * * *",
            "2026-03-28T23:00:00Z",
            &[
                "2026-03-29T01:00:00Z",
                "2026-03-29T12:15:00Z",
                "2026-03-30T00:15:00Z",
            ],
        ),
        (
            "Europe/Berlin",
            "0,30 2,3 * * *",
            "2026-03-28T23:00:00Z",
            &[
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:30:00Z",
                "2026-03-30T00:00:00Z",
            ],
        ),
        (
            "Europe/Berlin",
            "*/20 30 2 * * *",
            "2026-03-28T23:00:00Z",
            &[
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z",
                "2026-03-30T00:30:20Z",
            ],
        ),
        (
            "Europe/Berlin",
            "0,30 2 * * *",
            "2026-03-29T00:59:59Z",
            &["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"],
        ),
        (
            "Europe/Berlin",
            "0,30 2 * * *",
            "2026-03-29T01:00:00Z",
            &["2026-03-30T00:00:00Z"],
        ),
        (
            "Europe/Berlin",
            "*/30 2 * * *",
            "2026-03-28T23:00:00Z",
            &["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"],
        ),
        (
            "America/New_York",
            "30 1,2 * * *",
            "2026-03-07T17:00:00Z",
            &[
                "2026-03-08T06:30:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-09T05:30:00Z",
            ],
        ),
        (
            "America/New_York",
            "30 2 * * *",
            "2026-03-07T17:00:00Z",
            &["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"],
        ),
        // Fall back, fixed times: a repeated time runs at its first occurrence only.
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-10-24T12:00:00Z",
            &["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
        ),
        (
            "Europe/Berlin",
            "0,30 2 * * *",
            "2026-10-24T12:00:00Z",
            &[
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:00:00Z",
            ],
        ),
        (
            "Europe/Berlin",
            "cron(0/30 2 * * ? *)",
            "2026-10-24T12:00:00Z",
            &[
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:00:00Z",
            ],
        ),
        (
            "Europe/Berlin",
            "15 2,14 * * *",
            "2026-10-24T13:00:00Z",
            &[
                "2026-10-25T00:15:00Z",
                "2026-10-25T13:15:00Z",
                "2026-10-26T01:15:00Z",
            ],
        ),
        (
            "Europe/Berlin",
            "*/20 30 2 * * *",
            "2026-10-24T12:00:00Z",
            &[
                "2026-10-25T00:30:00Z",
                "2026-10-25T00:30:20Z",
                "2026-10-25T00:30:40Z",
                "2026-10-26T01:30:00Z",
            ],
        ),
        (
            "Europe/Berlin",
            "*/30 2 * * *",
            "2026-10-24T12:00:00Z",
            &[
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:00:00Z",
            ],
        ),
        // From inside the first pass, and from the second (02:10 CET): the repeated
        // times already ran; 03:00, the first time after them, still runs.
        (
            "Europe/Berlin",
            "0,30 2 * * *",
            "2026-10-25T00:10:00Z",
            &["2026-10-25T00:30:00Z", "2026-10-26T01:00:00Z"],
        ),
        (
            "Europe/Berlin",
            "0,30 2 * * *",
            "2026-10-25T01:10:00Z",
            &["2026-10-26T01:00:00Z"],
        ),
        (
            "Europe/Berlin",
            "0 2,3 * * *",
            "2026-10-25T01:30:00Z",
            &["2026-10-25T02:00:00Z", "2026-10-26T01:00:00Z"],
        ),
        (
            "America/New_York",
            "30 1,2 * * *",
            "2026-10-31T12:00:00Z",
            &[
                "2026-11-01T05:30:00Z",
                "2026-11-01T07:30:00Z",
                "2026-11-02T06:30:00Z",
            ],
        ),
        (
            "America/New_York",
            "30 1 * * *",
            "2026-10-31T12:00:00Z",
            &["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"],
        ),
        // A pattern that runs every hour keeps its pace in real time: a time in the gap
        // is skipped, a repeated one runs in both passes.
        (
            "Europe/Berlin",
            "0 * * * *",
            "2026-03-28T23:30:00Z",
            &[
                "2026-03-29T00:00:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T02:00:00Z",
            ],
        ),
        (
            "Europe/Berlin",
            "30 * * * *",
            "2026-03-29T00:00:00Z",
            &["2026-03-29T00:30:00Z", "2026-03-29T01:30:00Z"],
        ),
        (
            "Europe/Berlin",
            "@hourly",
            "2026-10-24T23:30:00Z",
            &[
                "2026-10-25T00:00:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T02:00:00Z",
            ],
        ),
        (
            "Europe/Berlin",
            "cron(0/30 * * * ? *)",
            "2026-10-25T00:45:00Z",
            &[
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T02:00:00Z",
            ],
        ),
        (
            "America/New_York",
            "*/30 * * * *",
            "2026-11-01T05:45:00Z",
            &[
                "2026-11-01T06:00:00Z",
                "2026-11-01T06:30:00Z",
                "2026-11-01T07:00:00Z",
            ],
        ),
    ];

    fn z(d: DateTime<Utc>) -> String {
        d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    #[test]
    fn daylight_saving_gaps_and_repeats_with_lists_and_steps() {
        // Every row is checked, and every wrong one named.
        let mut wrong = Vec::new();
        for (zone, expr, from, want) in DST_ROWS {
            let s = parse(expr, Some(zone)).unwrap();
            let got: Vec<String> = s.upcoming(t(from), want.len()).into_iter().map(z).collect();
            if got != *want {
                wrong.push(format!("next: {expr} in {zone} from {from}: {got:?}"));
                continue;
            }
            for (i, run) in want.iter().enumerate() {
                let at = s.previous_at_or_before(t(run));
                if at != Some(t(run)) {
                    wrong.push(format!("previous: {expr} in {zone} at {run}: {at:?}"));
                }
                let before = s.previous_at_or_before(t(run) - chrono::Duration::seconds(1));
                let right = match i {
                    0 => before.is_some_and(|b| b <= t(from)),
                    _ => before == Some(t(want[i - 1])),
                };
                if !right {
                    wrong.push(format!(
                        "previous: {expr} in {zone} before {run}: {before:?}"
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn daylight_saving_previous_run_from_inside_a_change() {
        let mut wrong = Vec::new();
        for (zone, expr, at, want) in [
            // 02:45 CET, the second pass: the repeated times ran in the first one.
            (
                "Europe/Berlin",
                "0,30 2 * * *",
                "2026-10-25T01:45:00Z",
                "2026-10-25T00:30:00Z",
            ),
            (
                "Europe/Berlin",
                "0,30 2 * * *",
                "2026-10-25T01:00:00Z",
                "2026-10-25T00:30:00Z",
            ),
            (
                "Europe/Berlin",
                "cron(0/30 2 * * ? *)",
                "2026-10-25T01:59:59Z",
                "2026-10-25T00:30:00Z",
            ),
            (
                "America/New_York",
                "30 1,2 * * *",
                "2026-11-01T06:45:00Z",
                "2026-11-01T05:30:00Z",
            ),
            // The gap's times ran at its end.
            (
                "Europe/Berlin",
                "0,30 2 * * *",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:00:00Z",
            ),
            (
                "Europe/Berlin",
                "15 2,14 * * *",
                "2026-03-29T11:00:00Z",
                "2026-03-29T01:00:00Z",
            ),
            (
                "Europe/Berlin",
                "0,30 2 * * *",
                "2026-03-29T00:59:59Z",
                "2026-03-28T01:30:00Z",
            ),
            // Every hour: the second pass's own run.
            (
                "Europe/Berlin",
                "0 * * * *",
                "2026-10-25T01:30:00Z",
                "2026-10-25T01:00:00Z",
            ),
        ] {
            let s = parse(expr, Some(zone)).unwrap();
            let got = s.previous_at_or_before(t(at)).map(z);
            if got.as_deref() != Some(want) {
                wrong.push(format!("{expr} in {zone} at {at}: {got:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn daylight_saving_runs_over_a_year_in_zones_with_odd_changes() {
        // 2026, counted in UTC. Lord Howe moves by 30 minutes (02:00 -> 02:30, and
        // 02:00 -> 01:30), Troll by two hours (01:00 -> 03:00, 03:00 -> 01:00), Santiago
        // at midnight, Kolkata never. `0,30 2 * * *` loses one run to a gap that holds
        // both its times (or 02:00 and the gap's own end, 02:30), and repeats none.
        let year = (t("2026-01-01T00:00:00Z"), t("2027-01-01T00:00:00Z"));
        for (zone, expr, want) in [
            ("Europe/Berlin", "0,30 2 * * *", 729),
            ("America/New_York", "0,30 2 * * *", 729),
            ("Australia/Lord_Howe", "0,30 2 * * *", 729),
            ("Antarctica/Troll", "0,30 2 * * *", 729),
            ("Antarctica/Troll", "0 1-3 * * *", 3 * 365 - 2),
            ("America/Santiago", "0,30 2 * * *", 730),
            ("Asia/Kolkata", "0,30 2 * * *", 730),
            // Every hour on the hour is every hour of real time in a zone whose
            // offsets are whole hours.
            ("Europe/Berlin", "@hourly", 8760),
        ] {
            let s = parse(expr, Some(zone)).unwrap();
            let mut runs = vec![];
            let mut at = year.0 - chrono::Duration::seconds(1);
            while let Some(r) = s.next_after(at).filter(|r| *r < year.1) {
                assert!(r > at, "{expr} in {zone}: {r} after {at}");
                assert_eq!(s.previous_at_or_before(r), Some(r), "{expr} in {zone}");
                if let Some(&last) = runs.last() {
                    let before = s.previous_at_or_before(r - chrono::Duration::seconds(1));
                    assert_eq!(before, Some(last), "{expr} in {zone} before {r}");
                }
                runs.push(r);
                at = r;
            }
            assert_eq!(runs.len(), want, "{expr} in {zone}");
        }
    }

    /// Vixie cron's rule: a day field starting with `*` makes the two day fields AND.
    /// 1 June 2026 is a Monday: its Mondays with odd day numbers are the 1st, 15th and
    /// 29th (not the 3rd, 5th, ... nor the 8th, 22nd).
    #[test]
    fn a_starred_day_field_makes_both_day_fields_match() {
        assert_eq!(
            next("0 0 */2 * 1", None, "2026-06-01T00:00:00Z", 4),
            [
                "2026-06-15T00:00:00+00:00",
                "2026-06-29T00:00:00+00:00",
                "2026-07-13T00:00:00+00:00",
                "2026-07-27T00:00:00+00:00",
            ]
        );
        // With seconds first, and the star in day-of-week: every other weekday of the
        // 1st to 7th that is also in the first seven days (Sunday, Tuesday, ...).
        assert_eq!(
            next("0 0 0 1-7 * */2", None, "2026-06-01T00:00:00Z", 4),
            [
                "2026-06-02T00:00:00+00:00",
                "2026-06-04T00:00:00+00:00",
                "2026-06-06T00:00:00+00:00",
                "2026-06-07T00:00:00+00:00",
            ]
        );
        // Neither starts with `*`: either is enough (the 1st, the 15th, every Monday).
        assert_eq!(
            next("0 0 1,15 * 1", None, "2026-06-30T00:00:00Z", 5),
            [
                "2026-07-01T00:00:00+00:00",
                "2026-07-06T00:00:00+00:00",
                "2026-07-13T00:00:00+00:00",
                "2026-07-15T00:00:00+00:00",
                "2026-07-20T00:00:00+00:00",
            ]
        );
        // A plain `*` in either is the other field alone.
        assert_eq!(
            next("0 0 * * 1", None, "2026-06-01T00:00:00Z", 2),
            ["2026-06-08T00:00:00+00:00", "2026-06-15T00:00:00+00:00"]
        );
        assert_eq!(
            next("0 0 */10 * *", None, "2026-06-01T00:00:00Z", 3),
            [
                "2026-06-11T00:00:00+00:00",
                "2026-06-21T00:00:00+00:00",
                "2026-07-01T00:00:00+00:00",
            ]
        );
        // The AWS form (`?` in one day field) is the other field alone, as before.
        assert_eq!(
            next("cron(0 0 ? * MON *)", None, "2026-06-01T00:00:00Z", 2),
            ["2026-06-08T00:00:00+00:00", "2026-06-15T00:00:00+00:00"]
        );
        assert_eq!(
            next("cron(0 0 */2 * ? *)", None, "2026-06-01T00:00:00Z", 2),
            ["2026-06-03T00:00:00+00:00", "2026-06-05T00:00:00+00:00"]
        );
    }

    fn refused(expr: &str) -> String {
        parse(expr, None).expect_err(expr)
    }

    /// `L` alone in the AWS form's day-of-week is the week's last day, Saturday (as
    /// Quartz and EventBridge read it); croner took it for no day: "it never fires".
    #[test]
    fn aws_l_alone_in_day_of_week_is_saturday() {
        // 2026-06-01 is a Monday.
        let want = ["2026-06-06T00:00:00+00:00", "2026-06-13T00:00:00+00:00"];
        for e in [
            "cron(0 0 ? * L *)",
            "cron(0 0 ? * l *)",
            "cron(0 0 ? * 7 *)",
        ] {
            assert_eq!(next(e, None, "2026-06-01T00:00:00Z", 2), want, "{e}");
        }
        assert_eq!(
            next("cron(0 0 ? * 2,L *)", None, "2026-06-01T00:00:00Z", 2),
            ["2026-06-06T00:00:00+00:00", "2026-06-08T00:00:00+00:00"]
        );
        // `6L` (the last Friday) is croner's, as before.
        assert_eq!(
            next("cron(0 0 ? * 6L *)", None, "2026-06-01T00:00:00Z", 1),
            ["2026-06-26T00:00:00+00:00"]
        );
    }

    /// A step of 0 and a `#N` past the fifth were told in croner's words ("Component
    /// error: Step cannot be zero.", "Nth specifier out of bounds."), no field named.
    #[test]
    fn a_zero_step_and_an_nth_past_five_are_told_with_their_field() {
        for (e, field, what) in [
            ("*/0 * * * *", "minute", "step of 0"),
            ("0 0/0 * * *", "hour", "step of 0"),
            ("cron(*/0 * * * ? *)", "minutes", "step of 0"),
            ("cron(0 0 ? * 2#6 *)", "day-of-week", "N from 1 to 5"),
            ("cron(0 0 ? * 2#0 *)", "day-of-week", "N from 1 to 5"),
            ("0 0 * * 1#6", "day-of-week", "N from 1 to 5"),
        ] {
            let m = refused(e);
            assert!(
                m.contains(&format!("the {field} field")) && m.contains(what),
                "{e}: {m}"
            );
            assert!(!m.contains("Component error"), "{e}: {m}");
        }
        parse("cron(0 0 ? * 2#5 *)", None).unwrap();
    }

    /// `L-3` (Quartz's third day before the last) was told in croner's words only:
    /// "Component error: Invalid start of range.", no field named.
    #[test]
    fn a_range_from_no_value_is_told_with_its_field() {
        for (e, field) in [
            ("cron(0 2 L-3 * ? *)", "day-of-month"),
            ("0 2 L-3 * *", "day-of-month"),
            ("0 2 1,L-3 * *", "day-of-month"),
            ("0 X-3 * * *", "hour"),
        ] {
            let m = refused(e);
            assert!(
                m.contains(&format!("the {field} field"))
                    && m.contains("a range goes from one value to another ("),
                "{e}: {m}"
            );
            assert!(!m.contains("  "), "{e}: {m:?}");
            assert!(!m.contains("Component error"), "{e}: {m}");
        }
        parse("0 2 * * MON-FRI", None).unwrap();
        parse("cron(0 2 ? * MON-FRI *)", None).unwrap();
    }

    #[test]
    fn a_step_larger_than_its_field_is_refused() {
        assert_eq!(
            refused("*/75 * * * *"),
            "schedule \"*/75 * * * *\": minute step 75 is larger than the field's cycle of 60 \
             (0–59): it could only pick the first value, and cannot mean every 75; use at \
             most 60"
        );
        let m = refused("0 */30 * * *");
        assert!(
            m.contains("hour step 30 is larger than the field's cycle of 24"),
            "{m}"
        );
        for (e, want) in [
            ("0/61 * * * * *", "second step 61"),
            ("0 0 */32 * *", "day-of-month step 32"),
            ("0 0 1 1/13 *", "month step 13"),
            ("0 0 * * */8", "day-of-week step 8"),
            ("cron(0/90 * * * ? *)", "minutes step 90"),
            ("cron(0 0 ? * 1/8 *)", "day-of-week step 8"),
        ] {
            let m = refused(e);
            assert!(m.contains(want), "{e}: {m}");
        }
        // A step of the field's cycle is taken (it was before these checks: a daemon
        // upgraded onto such a file must start) and picks the first value once a cycle.
        for e in [
            "*/60 * * * *",
            "0 */24 * * *",
            "0 0 */31 * *",
            "0 0 1 */12 *",
            "0 0 * * */7",
            "cron(0/60 * * * ? *)",
        ] {
            parse(e, None).expect(e);
        }
        assert_eq!(
            next("*/60 * * * *", None, "2026-06-01T00:10:00Z", 2),
            ["2026-06-01T01:00:00+00:00", "2026-06-01T02:00:00+00:00"]
        );
    }

    #[test]
    fn a_value_out_of_its_field_or_a_range_from_high_to_low_is_told_plainly() {
        assert_eq!(
            refused("cron(0 2 ? * 0 *)"),
            "schedule \"cron(0 2 ? * 0 *)\": the day-of-week field \"0\" has 0, which is out \
             of its range: the day-of-week is 1–7 in the AWS form (1 = Sunday, 7 = Saturday) \
             or SUN–SAT"
        );
        assert_eq!(
            refused("0 5-2 * * *"),
            "schedule \"0 5-2 * * *\": the hour field \"5-2\" has the range 5-2, which goes \
             from high to low: write ranges low to high, and one across the field's end as two \
             (5-23,0-2)"
        );
        for (e, want) in [
            (
                "61 * * * *",
                "the minute field \"61\" has 61, which is out of its range: the minute is 0–59",
            ),
            ("0 24 * * *", "the hour field \"24\" has 24"),
            (
                "0 0 0 * *",
                "the day-of-month field \"0\" has 0, which is out of its range: the day-of-month is 1–31",
            ),
            (
                "0 0 1 13 *",
                "the month field \"13\" has 13, which is out of its range: the month is 1–12 or JAN–DEC",
            ),
            (
                "0 0 * * 8",
                "the day-of-week field \"8\" has 8, which is out of its range: the day-of-week is 0–7 (0 and 7 = Sunday) or SUN–SAT",
            ),
            (
                "0 0 * * FRI-MON",
                "the day-of-week field \"FRI-MON\" has the range FRI-MON, which goes from high to low",
            ),
            ("0 0 1 DEC-FEB *", "(12,1-2)"),
            ("cron(0 0 ? * SAT-SUN *)", "(7,1)"),
            (
                "cron(0 0 1,40 * ? *)",
                "the day-of-month field \"1,40\" has 40",
            ),
        ] {
            let m = refused(e);
            assert!(m.contains(want), "{e}: {m}");
        }
        // Names and ranges within the field are taken; SUN ends a 5-field range as 7.
        for e in [
            "0 0 * * FRI-SUN",
            "0 0 * * MON-FRI",
            "0 0 1 JAN-MAR *",
            "cron(0 0 ? * MON-FRI *)",
            "cron(0 0 ? * 2#1 *)",
            "cron(0 0 L * ? *)",
        ] {
            parse(e, None).expect(e);
        }
    }
}
