//! The dashboard's pages, rendered on the server as plain HTML with `format!`: the
//! overview (every job), a job (history, charts, snapshots) and a run (every KPI,
//! phases, problems, notifications, the tail of its log). Every value goes through
//! `text::esc` (names in URLs through `text::url_seg`); no script, no inline style
//! (the CSP forbids both), one stylesheet served by us. Pure apart from reading a
//! run's log.

use std::fmt::Write;

use crate::catalog::{RunRow, Shown};

use super::data::{CopyView, JobView};
use super::svg::{self, Point};
use super::text::{bytes, duration, esc, url_seg, when};

/// How much of a run's log its page shows (the end of it).
pub const LOG_TAIL_BYTES: u64 = 16 * 1024;
/// How many runs a job's page lists in its table.
const TABLE_RUNS: usize = 100;

/// The stylesheet, served as `/style.css`.
pub const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
th{background:#f4f4f4}.num{text-align:right}.status{padding:.1em .5em;border-radius:3px;color:#fff;font-weight:600}
.complete{background:#2e7d32}.partial{background:#d08700}.incomplete{background:#6d6d6d}.failed{background:#c62828}.running{background:#1565c0}.none{background:#aaa}
pre{background:#f6f6f6;padding:.8em;overflow:auto;max-height:30em}svg text{font-size:11px;fill:#444}svg .title{font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:1em}.err{color:#c62828}nav a{margin-right:1em}
td.name,h1,code{overflow-wrap:anywhere}td.name{min-width:8em;max-width:24em}";

/// A whole page around `body`.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} · snapring</title>\
         <link rel=\"stylesheet\" href=\"/style.css\"></head><body><nav><a href=\"/\">snapring</a>\
         <a href=\"/metrics\">metrics</a><a href=\"/api/jobs\">api</a></nav><h1>{t}</h1>{body}</body></html>\n",
        t = esc(title)
    )
}

fn badge(status: Option<&str>) -> String {
    let s = status.unwrap_or("none");
    let class = match s {
        "complete" | "partial" | "incomplete" | "failed" | "running" => s,
        _ => "none",
    };
    format!("<span class=\"status {class}\">{}</span>", esc(s))
}

fn job_link(name: &str) -> String {
    format!("<a href=\"/job/{}\">{}</a>", url_seg(name), esc(name))
}

fn run_link(id: &str, text: &str) -> String {
    format!("<a href=\"/run/{}\">{}</a>", url_seg(id), esc(text))
}

fn opt(v: Option<String>) -> String {
    v.unwrap_or_else(|| "–".into())
}

/// The overview: one row per job, one per store-and-repository pair of copies (when
/// there are copies), then `notes` and each job's errors.
pub fn overview(jobs: &[JobView], copies: &[CopyView], notes: &[String]) -> String {
    let mut b = String::from(
        "<table id=\"jobs\"><tr><th>job</th><th>status</th><th>last run</th><th>took</th>\
         <th>next run</th><th>newest snapshot</th><th>success</th><th>snapshots</th>\
         <th>durations</th></tr>",
    );
    for j in jobs {
        let last = j.last.as_ref();
        let durations: Vec<f64> = j
            .recent
            .iter()
            .rev()
            .filter_map(|r| known_duration(r.duration_seconds, r.finished_at.as_deref()))
            .collect();
        let _ = write!(
            b,
            "<tr class=\"job\"><td class=\"name\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td>\
             <td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            job_link(&j.name),
            badge(last.map(|l| l.status.as_str())) + &progress(j),
            opt(last.map(|l| run_link(&l.id, &when(&l.started_at)))),
            opt(last
                .and_then(|l| known_duration(l.duration_seconds, l.finished_at.as_deref()))
                .map(duration)),
            opt(j.next_run.as_deref().map(|t| esc(&when(t)))),
            opt(j
                .newest_snapshot_age_seconds
                .map(|a| format!("{} ago", duration(a)))),
            opt(j.success_rate.map(|r| format!("{:.0}%", r * 100.0))),
            j.snapshots.len(),
            svg::sparkline(&durations, 120.0, 24.0),
        );
    }
    b.push_str("</table>");
    copies_table(&mut b, copies);
    errors(
        &mut b,
        notes.iter().chain(jobs.iter().flat_map(|j| &j.errors)),
    );
    page("Backup jobs", &b)
}

/// The copies (`snapring copy`): per store and repository, the newest copy's status,
/// when it ran and its message, when a copy last completed, and the copies by status.
fn copies_table(b: &mut String, copies: &[CopyView]) {
    if copies.is_empty() {
        return;
    }
    b.push_str(
        "<h2>Copies into repositories</h2><table id=\"copies\"><tr><th>store</th><th>to</th>\
         <th>job</th><th>status</th><th>last copy</th><th>took</th><th>last complete</th>\
         <th>copies</th><th>failed</th><th>message</th></tr>",
    );
    for c in copies {
        let _ = write!(
            b,
            "<tr class=\"copy\"><td class=\"name\"><code>{}</code></td><td class=\"name\"><code>{}</code></td>\
             <td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&c.store.to_string_lossy()),
            esc(&c.to),
            opt(c.job.as_deref().map(job_link)),
            badge(Some(&c.last.status)),
            run_link(&c.last.id, &when(&c.last.started_at)),
            opt(
                known_duration(c.last.duration_seconds, c.last.finished_at.as_deref())
                    .map(duration)
            ),
            opt(c
                .last_success_age_seconds
                .map(|a| format!("{} ago", duration(a)))),
            c.counts.runs,
            c.counts.failed_once,
            esc(&c.last_message),
        );
    }
    b.push_str("</table>");
}

/// A running run's walk in words (` 120/200 files (60%) · 40 files/s · ETA 2s`), or
/// nothing.
fn progress(j: &JobView) -> String {
    let Some(p) = &j.progress else {
        return String::new();
    };
    let files = match (p.files_expected, p.percent) {
        (Some(n), Some(pc)) => format!("{}/{n} files ({pc:.0}%)", p.files_done),
        _ => format!("{} files", p.files_done),
    };
    let eta = p
        .eta_seconds
        .map(|s| format!(" · ETA {}", crate::engine::progress::eta_words(s)))
        .unwrap_or_default();
    format!(
        " <span class=\"progress\">{files} · {:.0} files/s{eta}</span>",
        p.files_per_second
    )
}

fn errors<'a>(b: &mut String, errs: impl Iterator<Item = &'a String>) {
    for e in errs {
        let _ = write!(b, "<p class=\"err\">{}</p>", esc(e));
    }
}

/// A job's page: summary, charts over time, snapshots, run history.
pub fn job(j: &JobView) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<p>{} store <code>{}</code> · schedule <code>{}</code> · next run {} · {} runs, \
         success {} · {} skipped</p>",
        badge(j.last.as_ref().map(|l| l.status.as_str())),
        esc(&j.store.to_string_lossy()),
        esc(j.schedule.as_deref().unwrap_or("none")),
        opt(j.next_run.as_deref().map(|t| esc(&when(t)))),
        opt(j.counts.as_ref().map(|c| c.runs.to_string())),
        opt(j.success_rate.map(|r| format!("{:.0}%", r * 100.0))),
        opt(j.counts.as_ref().map(|c| c.skipped.to_string())),
    );
    if j.progress.is_some() {
        let _ = write!(b, "<p id=\"progress\">Walking:{}</p>", progress(j));
    }
    errors(&mut b, j.errors.iter());
    charts(&mut b, &j.recent);
    snapshots(&mut b, j);
    let total = j.counts.as_ref().map_or(j.recent.len() as u64, |c| c.runs);
    history(&mut b, &j.recent, total);
    page(&format!("Job {}", j.name), &b)
}

/// Duration, bytes copied, files changed and throughput over time.
fn charts(b: &mut String, recent: &[RunRow]) {
    // A run without an end (running, or killed) has no duration, so no throughput:
    // those charts leave it out rather than plot a 0.
    type Metric = (&'static str, fn(&RunRow) -> Option<f64>, fn(f64) -> String);
    let specs: [Metric; 4] = [
        (
            "duration",
            |r| known_duration(r.duration_seconds, r.finished_at.as_deref()),
            duration,
        ),
        ("bytes copied", |r| Some(r.bytes_transferred as f64), bytes),
        (
            "files changed",
            |r| Some(r.files_transferred as f64),
            |v| format!("{v:.0}"),
        ),
        ("throughput", throughput, |v| format!("{}/s", bytes(v))),
    ];
    b.push_str("<h2>Over time</h2><div class=\"charts\">");
    for (title, value, label) in specs {
        let pts: Vec<Point> = recent
            .iter()
            .rev()
            .filter_map(|r| {
                let t = crate::store::select::parse_time(&r.started_at)?;
                let v = value(r)?;
                Some(Point {
                    t: t.timestamp_millis() as f64 / 1e3,
                    v,
                    tip: format!("{} {}: {}", when(&r.started_at), r.status, label(v)),
                })
            })
            .collect();
        b.push_str(&svg::chart(title, &pts, &label));
    }
    b.push_str("</div>");
}

fn throughput(r: &RunRow) -> Option<f64> {
    let d = known_duration(r.duration_seconds, r.finished_at.as_deref())?;
    Some(if d > 0.0 {
        r.bytes_transferred as f64 / d
    } else {
        0.0
    })
}

/// A run's duration, when it has one: a run that did not end (running, or killed: its
/// record has no `finished_at`) has none, not 0, and shows as `–`.
pub fn known_duration(seconds: f64, finished_at: Option<&str>) -> Option<f64> {
    finished_at.map(|_| seconds)
}

fn snapshots(b: &mut String, j: &JobView) {
    b.push_str(
        "<h2>Snapshots</h2><table id=\"snapshots\"><tr><th>name</th><th>finished</th>\
         <th>size</th><th>added</th><th>run</th></tr>",
    );
    for s in &j.snapshots {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&s.name),
            opt(s.finished_at.as_deref().map(|t| esc(&when(t)))),
            opt(s.bytes_total.map(|n| bytes(n as f64))),
            opt(s.bytes_added.map(|n| bytes(n as f64))),
            opt(s.run_id.as_deref().map(|id| run_link(id, id))),
        );
    }
    b.push_str("</table>");
}

fn history(b: &mut String, recent: &[RunRow], total: u64) {
    let _ = write!(
        b,
        "<h2>Runs</h2><p>newest {} of {total}</p><table id=\"runs\"><tr><th>started</th>\
         <th>status</th><th>took</th><th>files</th><th>copied</th><th>bytes copied</th>\
         <th>problems</th><th>snapshot</th></tr>",
        recent.len().min(TABLE_RUNS)
    );
    for r in recent.iter().take(TABLE_RUNS) {
        let _ = write!(
            b,
            "<tr class=\"run\"><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            run_link(&r.id, &when(&r.started_at)),
            badge(Some(&r.status)),
            match r.is_invalid("duration_seconds") || r.is_invalid("finished_at") {
                true => "invalid".to_string(),
                false =>
                    opt(known_duration(r.duration_seconds, r.finished_at.as_deref()).map(duration)),
            },
            // Edited by hand (a -3 showed as 18446744073709551613): `invalid`.
            cell(r, "files_total", r.files_total.to_string()),
            cell(r, "files_transferred", r.files_transferred.to_string()),
            cell(r, "bytes_transferred", bytes(r.bytes_transferred as f64)),
            cell(r, "errors", r.errors.to_string()),
            esc(r.snapshot.as_deref().unwrap_or("–")),
        );
    }
    b.push_str("</table>");
    let invalid: Vec<String> = recent
        .iter()
        .take(TABLE_RUNS)
        .filter(|r| !r.invalid.is_empty())
        .map(|r| format!("{} ({})", r.id, r.invalid_text()))
        .collect();
    if !invalid.is_empty() {
        let _ = write!(
            b,
            "<p class=\"err\" id=\"invalid\">runs whose rows in the catalog hold values no run writes (edited by hand?), shown as invalid: {}</p>",
            esc(&invalid.join("; "))
        );
    }
}

/// `value`, or `invalid` when `r`'s `column` holds what no run writes.
fn cell(r: &RunRow, column: &str, value: String) -> String {
    match r.is_invalid(column) {
        true => "invalid".into(),
        false => value,
    }
}

/// A run's page: every KPI of its record, phases, problems, notifications, log tail.
pub fn run(s: &Shown, listed: &ProblemPage, log_tail: Option<&str>) -> String {
    let Some(r) = s.report.backup() else {
        return restore(s, listed, log_tail);
    };
    let mut b = String::new();
    let _ = write!(
        b,
        "<p>{} {}{}</p><p>took {} · {} files: {} copied, {} linked · {} copied · {} problems</p>",
        badge(Some(r.status.as_str())),
        esc(&r.message),
        r.job
            .as_deref()
            .map(|j| format!(" · job {}", job_link(j)))
            .unwrap_or_default(),
        opt(known_duration(r.duration_seconds, r.finished_at.as_deref()).map(duration)),
        r.files_total,
        r.files_transferred,
        r.files_linked,
        bytes(r.bytes_transferred as f64),
        r.errors,
    );
    problems(&mut b, s, listed);
    phases(&mut b, r);
    notes(&mut b, r);
    kpis(&mut b, r);
    if let Some(t) = log_tail {
        let _ = write!(b, "<h2>Log (end)</h2><pre id=\"log\">{}</pre>", esc(t));
    }
    page(&format!("Run {}", r.id), &b)
}

/// A restore's page: its status, its whole record and the tail of its log.
fn restore(s: &Shown, listed: &ProblemPage, log_tail: Option<&str>) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<p>restore {}</p>",
        badge(Some(s.report.status().as_str()))
    );
    problems(&mut b, s, listed);
    let json = serde_json::to_string_pretty(&s.report).unwrap_or_default();
    let _ = write!(b, "<h2>Record</h2><pre id=\"record\">{}</pre>", esc(&json));
    if let Some(t) = log_tail {
        let _ = write!(b, "<h2>Log (end)</h2><pre id=\"log\">{}</pre>", esc(t));
    }
    page("Restore", &b)
}

/// Every field of the run record but those with a section of their own.
fn kpis(b: &mut String, r: &crate::report::RunReport) {
    b.push_str("<h2>All figures</h2><table id=\"kpis\">");
    let skip = ["problems", "notifications", "phases", "warnings", "message"];
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(r) {
        for (k, v) in m.iter().filter(|(k, _)| !skip.contains(&k.as_str())) {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "–".into(),
                v => v.to_string(),
            };
            let _ = write!(b, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
        }
    }
    b.push_str("</table>");
}

fn phases(b: &mut String, r: &crate::report::RunReport) {
    b.push_str("<h2>Phases</h2><table id=\"phases\"><tr><th>phase</th><th>start</th><th>stop</th><th>took</th></tr>");
    let p = &r.phases;
    for (name, ph) in [
        ("walk and copy", &p.walk_copy),
        ("sync", &p.sync),
        ("rotation", &p.rotation),
        ("remove expired", &p.remove_expired),
    ] {
        let _ = write!(
            b,
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            opt(ph.start.as_deref().map(|t| esc(&when(t)))),
            opt(ph.stop.as_deref().map(|t| esc(&when(t)))),
            // A phase that did not end (the run killed, or before it) took no known time.
            opt(ph.stop.as_ref().map(|_| duration(ph.seconds))),
        );
    }
    b.push_str("</table>");
}

/// Which of a run's problems its page lists: from the `from`-th, of `listed` in the
/// catalog; the next ones start at `next`.
pub struct ProblemPage {
    pub from: u64,
    pub listed: u64,
    pub next: Option<u64>,
}

impl ProblemPage {
    /// Where the page before starts: `RUN_PROBLEMS` before this one (0 at the least);
    /// from past the end, the last page. None on the first page.
    pub fn previous(&self) -> Option<u64> {
        let size = crate::serve::RUN_PROBLEMS;
        match self.from {
            0 => None,
            f if f >= self.listed => Some(self.listed.saturating_sub(1) / size * size),
            f => Some(f.saturating_sub(size)),
        }
    }
}

fn problems(b: &mut String, s: &Shown, page: &ProblemPage) {
    let _ = write!(
        b,
        "<h2>Problems ({})</h2><table id=\"problems\"><tr><th>path</th><th>kind</th><th>action</th><th>error</th></tr>",
        s.report
            .backup()
            .map_or(s.problems.len() as u64, |r| r.errors)
    );
    for p in &s.problems {
        let kind = serde_json::to_value(p.kind).map(|k| k.as_str().unwrap_or("").to_string());
        let _ = write!(
            b,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.path),
            esc(&kind.unwrap_or_default()),
            esc(&p.action),
            esc(&p.error),
        );
    }
    b.push_str("</table>");
    if page.from > 0 || page.next.is_some() {
        let id = match &s.report {
            crate::catalog::Record::Backup(r) => r.id.clone(),
            crate::catalog::Record::Restore(r) => r.id.clone().unwrap_or_default(),
        };
        let link = |from: u64, text: &str| match from {
            0 => format!(" · <a href=\"/run/{}\">{text}</a>", url_seg(&id)),
            f => format!(" · <a href=\"/run/{}?from={f}\">{text}</a>", url_seg(&id)),
        };
        b.push_str("<p id=\"problems-page\">");
        if page.from >= page.listed {
            // A `from` at or past the end: nothing to list, and it says so.
            let _ = match page.listed {
                0 => write!(b, "no problems listed"),
                n => write!(b, "no problems past the {n} listed"),
            };
            b.push_str(&link(0, "first page"));
            if let Some(last) = page.previous().filter(|&l| l > 0) {
                b.push_str(&link(last, "last page"));
            }
        } else {
            let _ = write!(
                b,
                "problems {}–{} of {} listed",
                page.from + 1,
                page.from + s.problems.len() as u64,
                page.listed
            );
            if let Some(p) = page.previous() {
                b.push_str(&link(0, "first"));
                b.push_str(&link(p, &format!("previous {}", page.from - p)));
            }
        }
        if let Some(n) = page.next {
            let _ = write!(
                b,
                " · <a href=\"/run/{}?from={n}\">next {}</a>",
                url_seg(&id),
                (page.listed - n).min(crate::serve::RUN_PROBLEMS)
            );
        }
        b.push_str("</p>");
    }
}

fn notes(b: &mut String, r: &crate::report::RunReport) {
    b.push_str("<h2>Notifications</h2><table id=\"notifications\"><tr><th>notifier</th><th>kind</th><th>ok</th><th>attempts</th><th>error</th><th>at</th></tr>");
    for n in &r.notifications {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&n.notifier),
            esc(&n.kind),
            if n.ok { "yes" } else { "no" },
            n.attempts,
            esc(n.error.as_deref().unwrap_or("")),
            esc(&when(&n.at)),
        );
    }
    b.push_str("</table>");
    if !r.warnings.is_empty() {
        b.push_str("<h2>Warnings</h2>");
        errors(b, r.warnings.iter());
    }
}

/// The last `LOG_TAIL_BYTES` of the log `name` in the directory `dir`, from its first
/// whole line; `None` when it cannot be read or is not a plain log. Whoever can write a
/// store can replace its log, so the log is opened as `fsx::open_read_at` opens a
/// source's file: never through a symlink (`/etc/shadow`), never blocking on a fifo
/// (which would stall the server's one answering thread), and only a regular file (not
/// `/dev/zero`), with one link (not a hard link to a file its owner cannot read); and
/// no more than the tail is read, however long the file.
pub fn log_tail(dir: std::os::fd::BorrowedFd<'_>, name: &str) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let fd = crate::fsx::open_read_at(dir, name.as_bytes()).ok()?;
    let m = crate::fsx::fstat(std::os::fd::AsFd::as_fd(&fd)).ok()?;
    if m.kind != crate::fsx::Kind::File || m.nlink != 1 {
        return None;
    }
    let mut f = std::fs::File::from(fd);
    let from = m.size.saturating_sub(LOG_TAIL_BYTES);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    f.take(LOG_TAIL_BYTES).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Some(match (from > 0, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_string(),
        _ => text,
    })
}
