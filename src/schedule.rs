//! Schedules: 5-field cron (optionally with a leading seconds field), `@hourly`,
//! `@daily`, `@weekly`, `@monthly`, `@yearly`, and the AWS form `cron(m h dom mon dow
//! year)` with `?`, `L`, `W` and `#` and Quartz weekday numbers (1 = Sunday). Evaluated
//! with croner in UTC or a named IANA time zone. A step from a start (`0/15`, Quartz's and
//! AWS's "from 0, every 15") is read as the range from that start to the field's end
//! (`0-59/15`), which croner accepts. Pure: every function takes the instant
//! to count from, so nothing here reads the clock.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::{Cron, YEAR_UPPER_LIMIT};

#[derive(Clone, Debug)]
pub struct Schedule {
    /// As the user wrote it.
    pub expr: String,
    pub tz: Option<Tz>,
    cron: Cron,
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
        if (fields[2] == "?") == (fields[4] == "?") {
            return Err(bad(
                "the AWS form needs `?` in exactly one of day-of-month and day-of-week".into(),
            ));
        }
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
            e.to_string()
        } else {
            steps_from_a_start(&fields, ends).join(" ")
        };
        CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(&expr)
            .map_err(|e| bad(e.to_string()))?
    };
    let s = Schedule {
        expr: expr.to_string(),
        tz,
        cron,
    };
    // A pattern that never fires (31 February) is an error, not a silent idle job. One
    // whose last time is past (a year that is over) is not: it fired, and a config must
    // not break by itself when a date passes (every run parses it, a one-time job's
    // own run included). The daemon says so at start and reload.
    if s.next_after(DateTime::<Utc>::from_timestamp(0, 0).expect("epoch"))
        .is_none()
        && s.next_after(Utc::now()).is_none()
    {
        return Err(bad("it never fires".into()));
    }
    Ok(s)
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

impl Schedule {
    /// The first firing strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.tz {
            Some(tz) => self
                .cron
                .find_next_occurrence(&t.with_timezone(&tz), false)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
            None => self.cron.find_next_occurrence(&t, false).ok(),
        }
    }

    /// The last firing at or before `t`.
    pub fn previous_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.tz {
            Some(tz) => self
                .cron
                .find_previous_occurrence(&t.with_timezone(&tz), true)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
            None => self.cron.find_previous_occurrence(&t, true).ok(),
        }
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
}
