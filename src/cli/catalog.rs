//! The commands that read the run catalog: `history` (of runs), `show`, `stats`,
//! `catalog check` and `catalog rebuild`. Each opens the catalog (settling runs left `running` by dead
//! processes), queries it and prints rows as a table or JSON.

use std::path::Path;

use chrono::SecondsFormat;
use snapring::catalog::{Catalog, Filter, Record, RunRow, Shown, Stats};
use snapring::restore::RestoreReport;

use super::args::{HistoryArgs, ShowArgs, StatsArgs};
use super::catalog_choice::CatalogChoice;
use super::exit_code::ExitCode;
use super::print::{self, errln, human, outln};

/// `snapring history` without a path: the catalog's runs, newest last.
pub fn history(a: HistoryArgs, cat: &CatalogChoice) -> anyhow::Result<ExitCode> {
    // The flags first: a mistake in them is named whatever the catalog is.
    let mut f = filter(a.job, a.dest.as_deref(), a.since.as_deref())?;
    let c = cat.open_settled()?;
    f.kind = a.kind;
    let rows = c.runs(&f)?;
    if a.json {
        print::json(&rows)?;
    } else if let Some(job) = f.job.as_deref().filter(|_| rows.is_empty()) {
        // A bare "(no runs in cat.db)" read as an empty catalog, of a typo too.
        let what = match f.kind.as_deref() {
            Some(k) => format!("{k} runs"),
            None => "runs".to_string(),
        };
        outln!("{}", no_runs_of(&c, &f, job, &what)?);
    } else {
        print_runs(&rows, &c.path);
    }
    Ok(ExitCode::Complete)
}

/// What `history` and `stats` say of `--job JOB` without `what` (`backup runs`): a
/// typo, or a job that has not run yet (no error: exit 0, and `--json` gives `[]`),
/// said with the jobs that have runs.
fn no_runs_of(c: &Catalog, f: &Filter, job: &str, what: &str) -> anyhow::Result<String> {
    let known = c.job_names()?;
    let known = match known.len() {
        0 => "no job has backup runs in it".to_string(),
        n if n <= 20 => format!("jobs with runs: {}", known.join(", ")),
        n => format!("jobs with runs: {}, … ({n} in all)", known[..20].join(", ")),
    };
    let within = match (&f.store, &f.since) {
        (None, None) => String::new(),
        _ => " (within --dest/--since)".to_string(),
    };
    Ok(format!(
        "(no {what} of job {job:?}{within} in {}; {known})",
        snapring::relpath::shown(&c.path)
    ))
}

/// `snapring show RUN`: from the catalog, else (with `--dest`) from the store's run
/// record, which is then recorded in the catalog.
pub fn show(a: ShowArgs, cat: &CatalogChoice) -> anyhow::Result<ExitCode> {
    let mut c = cat.open_settled()?;
    let shown = match c.show(&a.run)? {
        Some(s) => s,
        None => match a.dest.and_then(|d| import_run(&mut c, &d, &a.run)) {
            Some(s) => s,
            None => anyhow::bail!(
                "no run {:?} in the catalog {}; `snapring history` lists runs, and `snapring catalog rebuild --dest STORE` imports a store's runs",
                a.run,
                snapring::relpath::shown(&c.path)
            ),
        },
    };
    if a.json {
        print::json(&shown)?;
    } else {
        print_shown(&shown);
    }
    Ok(ExitCode::Complete)
}

/// Records run `run` of the store at `dest` in the catalog and shows it; `None` when
/// the store or the run record cannot be read.
fn import_run(c: &mut Catalog, dest: &Path, run: &str) -> Option<Shown> {
    let store = snapring::store::Store::open_read(dest).ok()?;
    let r = store.read_run(run).ok()??;
    c.record(&r).ok()?;
    c.show(run).ok()?
}

/// `snapring stats`: per job, success rate, durations and trends.
pub fn stats(a: StatsArgs, cat: &CatalogChoice) -> anyhow::Result<ExitCode> {
    let mut f = filter(a.job, a.dest.as_deref(), a.since.as_deref())?;
    let c = cat.open_settled()?;
    // Success rates and durations are the backups' (restores are listed by `history`),
    // or with `--kind copy` the copies'.
    f.kind = Some(a.kind);
    let stats = c.stats(&f)?;
    if a.json {
        print::json(&stats)?;
    } else if let Some(job) = f.job.as_deref().filter(|_| stats.is_empty()) {
        // No runs of the job asked for: said with the jobs that have runs.
        outln!("{}", no_runs_of(&c, &f, job, "backup runs")?);
    } else {
        print_stats(&stats, &c.path);
    }
    Ok(ExitCode::Complete)
}

/// `snapring catalog rebuild --dest STORE`.
/// A damaged catalog file (not SQLite, or corrupt anywhere in the file: it is checked
/// whole with `PRAGMA integrity_check` before it is trusted) is moved aside to
/// `FILE.damaged` first, and a new one started: the store's rows come back from its run
/// records. With a restic repository's URL (no run records) it only does that: a
/// damaged catalog is moved aside and a new, empty one started; an intact one is a
/// usage error.
pub fn rebuild(dest: &Path, cat: &CatalogChoice) -> anyhow::Result<ExitCode> {
    let repo = super::restic::is_repo(Some(dest));
    // A repository keeps snapshots, not snapring's run records: opening it as a store
    // would say "no such store", as if the path were wrong.
    let no_records = || {
        super::exit_code::usage!(
            "catalog rebuild --dest {}: a restic repository has no run records to rebuild \
             from (only a store has, in .snapring/runs); its runs are in the catalog only",
            snapring::relpath::shown(dest)
        )
    };
    let store = if !repo {
        Some(snapring::store::Store::open_read(dest)?)
    } else if cat.path.as_deref().is_some_and(|p| !p.exists()) {
        return Err(no_records());
    } else {
        None
    };
    let checked = |cat: &CatalogChoice| -> anyhow::Result<Catalog> {
        let c = cat.open()?;
        c.check(true)?;
        Ok(c)
    };
    let (mut c, moved) = match checked(cat) {
        Err(e) if damaged(&e) => (start_anew(e, cat)?, true),
        r => (r?, false),
    };
    let Some(store) = store else {
        if moved {
            outln!(
                "catalog {}: new and empty; {} is a restic repository, which keeps no run records: its runs were recorded in the damaged catalog alone",
                snapring::relpath::shown(&c.path),
                snapring::relpath::shown(dest)
            );
            return Ok(ExitCode::Complete);
        }
        return Err(no_records());
    };
    let key = std::fs::canonicalize(&store.root)?;
    let n = match c.rebuild(&key, &key) {
        // Damage the check did not see, found by a write: moved aside all the same.
        Err(e) if e.is_damaged() && !moved => {
            drop(c);
            c = start_anew(e.into(), cat)?;
            c.rebuild(&key, &key)?
        }
        r => r?,
    };
    outln!(
        "catalog {}: {n} run{} of {} recorded from its run records",
        snapring::relpath::shown(&c.path),
        if n == 1 { "" } else { "s" },
        snapring::relpath::shown(&key)
    );
    Ok(ExitCode::Complete)
}

/// `snapring catalog check`: the whole file, with `PRAGMA integrity_check` (also that
/// each index matches its table), whenever it was checked last; a pass is the stamp
/// `history`, `show` and `stats` go by (`Catalog::check_if_due`).
pub fn check(cat: &CatalogChoice) -> anyhow::Result<ExitCode> {
    let c = cat.open_existing()?;
    c.check(true)?;
    outln!(
        "catalog {}: intact (PRAGMA integrity_check)",
        snapring::relpath::shown(&c.path)
    );
    Ok(ExitCode::Complete)
}

/// Whether `e` says the catalog file is damaged.
fn damaged(e: &anyhow::Error) -> bool {
    e.downcast_ref::<snapring::catalog::CatalogError>()
        .is_some_and(|c| c.is_damaged())
}

/// Moves the damaged catalog (`e` says how) aside, says so, and opens a new one.
fn start_anew(e: anyhow::Error, cat: &CatalogChoice) -> anyhow::Result<Catalog> {
    let path = cat
        .path
        .as_deref()
        .expect("a catalog that failed to open has a path");
    let cause = match e.downcast_ref::<snapring::catalog::CatalogError>() {
        Some(snapring::catalog::CatalogError::Damaged { what, detail, .. }) => {
            format!("{what}: {detail}")
        }
        _ => format!("{e:#}"),
    };
    let aside = set_aside(path)?;
    print::errln!(
        "snapring: the catalog {} was damaged ({cause}); moved it to {} and started a new one",
        snapring::relpath::shown(path),
        snapring::relpath::shown(&aside)
    );
    cat.open()
}

/// Renames a damaged catalog (and SQLite's `-wal`, `-shm`, `-journal` beside it) to
/// `FILE.damaged`, or `FILE.damaged.N` when that is taken; returns the new name.
fn set_aside(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    let with = |p: &Path, suffix: &str| {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        std::path::PathBuf::from(s)
    };
    let mut aside = with(path, ".damaged");
    let mut n = 1;
    while aside.symlink_metadata().is_ok() {
        aside = with(path, &format!(".damaged.{n}"));
        n += 1;
    }
    for extra in ["", "-wal", "-shm", "-journal"] {
        let from = with(path, extra);
        if from.symlink_metadata().is_ok() {
            std::fs::rename(&from, with(&aside, extra)).map_err(|e| {
                anyhow::anyhow!(
                    "cannot move the damaged catalog {} aside: {e}",
                    snapring::relpath::shown(&from)
                )
            })?;
        }
    }
    Ok(aside)
}

/// The catalog filter from `--job`, `--dest` (canonicalized, as the catalog keys
/// stores; a restic repository's URL as it is) and `--since` (a duration back from
/// now, or a time).
fn filter(job: Option<String>, dest: Option<&Path>, since: Option<&str>) -> anyhow::Result<Filter> {
    let store = match dest {
        Some(d) if super::restic::is_repo(Some(d)) => Some(d.to_path_buf()),
        Some(d) => Some(
            std::fs::canonicalize(d)
                .map_err(|e| anyhow::anyhow!("store {}: {e}", snapring::relpath::shown(d)))?,
        ),
        None => None,
    };
    let since = match since {
        None => None,
        Some(s) => Some(since_time(s)?),
    };
    Ok(Filter {
        kind: None,
        job,
        store,
        since,
    })
}

/// `--since`: `30d`/`12h` back from now, or a time; RFC 3339 with milliseconds, UTC.
fn since_time(s: &str) -> anyhow::Result<String> {
    let t = match snapring::engine::options::parse_duration(s) {
        Ok(d) => chrono::Utc::now() - chrono::Duration::from_std(d)?,
        Err(_) => snapring::store::select::parse_time(s).ok_or_else(|| {
            super::exit_code::usage!(
                "--since {s:?}: give a duration (30d, 12h) or a time: {}",
                snapring::store::select::TIME_FORMS
            )
        })?,
    };
    Ok(t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// A job name or path as one line of a table: as it is, unless it holds a control
/// character (a newline in a job name or a directory name would start a fake row);
/// then quoted with Rust's escapes (`"a\nb"`).
fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        format!("{s:?}").into()
    } else {
        s.into()
    }
}

fn print_runs(rows: &[RunRow], catalog: &Path) {
    outln!(
        "{:<24} {:<7} {:<10} {:<10} {:<21} {:>9} {:>9} {:>9} {:>10} {:>6} {:<6}  STORE",
        "RUN",
        "KIND",
        "JOB",
        "STATUS",
        "STARTED",
        "SECONDS",
        "FILES",
        "COPIED",
        "BYTES",
        "ERRORS",
        "NOTIFY"
    );
    for r in rows {
        // `-` nobody was told, `ok`, or `FAILED` (N of M failed: `show RUN` says why).
        let notify = match (r.notifications, r.notifications_failed) {
            (0, _) => "-".to_string(),
            (_, 0) => "ok".to_string(),
            (n, f) if n == f => "FAILED".to_string(),
            (n, f) => format!("FAILED {f}/{n}"),
        };
        outln!(
            "{:<24} {:<7} {:<10} {:<10} {:<21} {:>9} {:>9} {:>9} {:>10} {:>6} {:<6}  {}",
            r.id,
            r.kind,
            one_line(r.job.as_deref().unwrap_or("-")),
            r.status,
            // In UTC, as recorded: a time given another offset by hand was shown as
            // its local digits with a Z, one without an offset as valid.
            match chrono::DateTime::parse_from_rfc3339(&r.started_at) {
                Ok(t) => t
                    .with_timezone(&chrono::Utc)
                    .format("%Y-%m-%dT%H:%M:%SZ")
                    .to_string(),
                Err(_) => "invalid".into(),
            },
            // A run that never ended (running, killed) has no duration.
            match r.finished_at {
                _ if r.is_invalid("duration_seconds") || r.is_invalid("finished_at") => {
                    "invalid".into()
                }
                Some(_) => format!("{:.1}", r.duration_seconds),
                None => "-".into(),
            },
            cell(r, "files_total", r.files_total.to_string()),
            cell(r, "files_transferred", r.files_transferred.to_string()),
            cell(r, "bytes_transferred", human(r.bytes_transferred)),
            cell(r, "errors", r.errors.to_string()),
            notify,
            one_line(&r.store)
        );
    }
    let invalid: Vec<&RunRow> = rows.iter().filter(|r| !r.invalid.is_empty()).collect();
    for r in &invalid {
        // A count of -3 showed as 18446744073709551613.
        errln!(
            "snapring: warning: run {} in the catalog holds values no run writes (edited by hand?), shown as `invalid`: {}",
            r.id,
            one_line(&r.invalid_text())
        );
    }
    if rows.is_empty() {
        outln!("(no runs in {})", snapring::relpath::shown(catalog));
    }
}

/// `value`, or `invalid` when `r`'s `column` holds what no run writes.
fn cell(r: &RunRow, column: &str, value: String) -> String {
    match r.is_invalid(column) {
        true => "invalid".into(),
        false => value,
    }
}

fn print_stats(stats: &[Stats], catalog: &Path) {
    // No trend: too few runs, or an older half whose mean is 0 (no percentage of it).
    let pct = |p: Option<f64>, over: u64| match p {
        Some(p) => format!("{p:+.0}% newer half vs older"),
        None if over < 4 => "trend needs 4 runs".into(),
        None => "no trend: the older half's mean is 0".into(),
    };
    for s in stats {
        outln!("{}", one_line(&s.job));
        outln!(
            "  runs {} from {} to {}: {} complete, {} partial, {} incomplete, {} failed, {} running; success rate {:.0}%",
            s.runs,
            s.first_started_at,
            s.last_started_at,
            s.complete,
            s.partial,
            s.incomplete,
            s.failed,
            s.running,
            s.success_rate * 100.0
        );
        outln!(
            "  duration p50 {:.2}s, p95 {:.2}s, mean {:.2}s ({})",
            s.duration_p50_seconds,
            s.duration_p95_seconds,
            s.duration_mean_seconds,
            pct(s.duration_trend_percent, s.timed_runs)
        );
        outln!(
            "  copied per run: mean {} ({}); last run {} with {} files",
            human(s.bytes_transferred_mean as u64),
            pct(s.bytes_transferred_trend_percent, s.runs - s.running),
            s.last_status,
            s.files_total_last
        );
        if !s.invalid_runs.is_empty() {
            outln!(
                "  invalid: {} run{} of it hold{} values no run writes (edited by hand?), counted by status only: {}",
                s.invalid_runs.len(),
                if s.invalid_runs.len() == 1 { "" } else { "s" },
                if s.invalid_runs.len() == 1 { "s" } else { "" },
                one_line(&s.invalid_runs.join("; "))
            );
        }
    }
    if stats.is_empty() {
        outln!("(no runs in {})", snapring::relpath::shown(catalog));
    }
}

/// One run in full: settings, counts, phases, warnings, up to 50 problems, its log.
fn print_shown(s: &Shown) {
    let r = match &s.report {
        Record::Backup(r) => r,
        Record::Restore(r) => return print_restore(r, s),
    };
    outln!("run {} ({})", r.id, r.status.as_str());
    outln!(
        "  job {}  label {}  retain {}",
        one_line(r.job.as_deref().unwrap_or("-")),
        r.label,
        r.retain
    );
    outln!("  source {}", one_line(&r.source.to_string_lossy()));
    outln!(
        "  store {}  snapshot {}",
        one_line(&r.store.to_string_lossy()),
        r.snapshot.as_deref().unwrap_or("-")
    );
    outln!(
        "  host {}  snapring {}  jobs {}{}",
        r.host,
        r.version,
        r.jobs,
        if r.one_file_system {
            "  one file system"
        } else {
            ""
        }
    );
    outln!(
        "  started {}  finished {}  took {}",
        r.started_at,
        r.finished_at.as_deref().unwrap_or("-"),
        match r.finished_at {
            Some(_) => format!("{:.2}s", r.duration_seconds),
            None => "-".into(),
        }
    );
    outln!(
        "  files {} (copied {}, linked {}{}, link fallbacks {}, changed during backup {}), directories {}",
        r.files_total,
        r.files_transferred,
        r.files_linked,
        snapring::report::resumed_words(r.files_resumed),
        r.link_fallbacks,
        r.changed_during_backup,
        r.dirs_total
    );
    outln!(
        "  bytes {} in files, {} copied; {:.0} files/s, {}/s",
        human(r.bytes_total),
        human(r.bytes_transferred),
        r.throughput_files_per_second,
        human(r.throughput_bytes_per_second as u64)
    );
    if let Some(k) = &r.repository {
        outln!(
            "  repository: uploaded {} in {} objects ({} packs), dedup ratio {:.2}; {} files read, {} unchanged",
            human(k.bytes_uploaded),
            k.objects_written,
            k.packs_written,
            k.dedup_ratio,
            k.files_read,
            k.files_unchanged
        );
    }
    let p = &r.phases;
    outln!(
        "  phases: walk+copy {:.2}s, sync {:.2}s, rotation {:.2}s, remove expired {:.2}s; peak memory {}",
        p.walk_copy.seconds,
        p.sync.seconds,
        p.rotation.seconds,
        p.remove_expired.seconds,
        human(r.peak_rss_bytes)
    );
    if let Some(note) = super::print::mount_points_note(r) {
        outln!("{note}");
    }
    if !r.expired.is_empty() {
        outln!("  expired {}", r.expired.join(", "));
    }
    outln!("  message: {}", r.message);
    for w in &r.warnings {
        outln!("  warning: {w}");
    }
    if let Some(w) = r.bwlimit {
        outln!(
            "  bandwidth limit {}/s, waited {:.2}s",
            human(w),
            r.bwlimit_wait_seconds
        );
    }
    for (what, h) in [("pre", &r.pre_command), ("post", &r.post_command)] {
        if let Some(h) = h {
            outln!("  {what}_command {}", hook_line(h));
        }
    }
    print_notifications(&r.notifications);
    print_problems_and_log(r.errors, s);
}

/// Whom the run told and how that went, one line a notifier; a failed one says
/// `FAILED` and its error (they are in `--json` as `notifications`).
fn print_notifications(n: &[snapring::report::NotifyOutcome]) {
    if n.is_empty() {
        outln!("  notifications: none");
        return;
    }
    for o in n {
        let tries = if o.attempts == 1 {
            "1 attempt".to_string()
        } else {
            format!("{} attempts", o.attempts)
        };
        match (o.ok, o.error.as_deref()) {
            (true, _) => outln!("  notification {} ({}): ok ({tries})", o.notifier, o.kind),
            (false, e) => outln!(
                "  notification {} ({}): FAILED after {tries}: {}",
                o.notifier,
                o.kind,
                e.unwrap_or("no error recorded")
            ),
        }
    }
}

/// A pre or post command's outcome on one line.
fn hook_line(h: &snapring::report::HookOutcome) -> String {
    format!(
        "{:?}: {} in {:.2}s{}",
        h.command,
        match h.exit_code {
            Some(c) => format!("exit {c}"),
            None => "no exit code".into(),
        },
        h.seconds,
        h.error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    )
}

/// A restore in full: what, from where, into where, its counts, conflicts, problems.
fn print_restore(r: &RestoreReport, s: &Shown) {
    outln!(
        "restore {} ({})",
        r.id.as_deref().unwrap_or("-"),
        r.status.as_str()
    );
    outln!(
        "  job {}  mode {:?}",
        one_line(r.job.as_deref().unwrap_or("-")),
        r.mode
    );
    outln!(
        "  store {}  snapshot {} (run {})  path {}",
        one_line(&r.store.to_string_lossy()),
        r.snapshot,
        r.run_id.as_deref().unwrap_or("-"),
        r.path.as_deref().unwrap_or("all")
    );
    outln!("  into {}", one_line(&r.to.to_string_lossy()));
    outln!("  host {}  snapring {}", r.host, r.version);
    outln!(
        "  started {}  finished {}  took {}",
        r.started_at,
        r.finished_at.as_deref().unwrap_or("-"),
        match r.finished_at {
            Some(_) => format!("{:.2}s", r.duration_seconds),
            None => "-".into(),
        }
    );
    outln!(
        "  files {} ({}, {} as hard links), symlinks and special files {}, directories {}, identical skipped {}, replaced {}, deleted {}",
        r.files_restored,
        human(r.bytes_restored),
        r.hard_links,
        r.others_restored,
        r.dirs_created,
        r.skipped_identical,
        r.overwritten,
        r.deleted
    );
    outln!("  message: {}", r.message);
    for w in &r.warnings {
        outln!("  warning: {w}");
    }
    outln!("  conflicts {}", r.conflicts_total);
    for c in r.conflicts.iter().take(50) {
        outln!("    {}: {}", c.path, c.reason);
    }
    print_notifications(&r.notifications);
    print_problems_and_log(r.errors, s);
}

/// The problems (up to 50) and the log of a shown run.
fn print_problems_and_log(errors: u64, s: &Shown) {
    outln!("  errors {}", errors);
    for pr in s.problems.iter().take(50) {
        outln!(
            "    {:?}: {} ({}: {})",
            pr.kind,
            pr.path,
            pr.action,
            one_line(&pr.error)
        );
    }
    if let Some(l) = &s.log_path {
        outln!(
            "  log {}{}",
            one_line(l),
            if s.log_exists { "" } else { " (missing)" }
        );
    }
}
