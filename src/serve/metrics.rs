//! `/metrics`: the jobs' figures in the Prometheus/OpenMetrics text format, encoded by
//! `prometheus-client` from a registry built afresh for each scrape from `JobView`s
//! (the catalog and the stores are the state; nothing is kept between scrapes). Every
//! series is named `snapring_…` and labelled `job_name` and `store` (a copy's also
//! `to`, its repository): not `job`, which
//! Prometheus sets to the scrape job's name and would rename ours to `exported_job`.
//! Pure apart from the encoding.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::data::{CopyView, Counts, JobView};

type Labels = Vec<(String, String)>;
type GaugeFam = Family<Labels, Gauge<f64, AtomicU64>>;
type CounterFam = Family<Labels, Counter<u64>>;

/// The content type of what `render` returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of what `classic` returns (Prometheus' text format 0.0.4).
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A gauge per job: its name (after `snapring_`), help, and value (none: no series).
type GaugeDef = (&'static str, &'static str, fn(&JobView) -> Option<f64>);

const GAUGES: &[GaugeDef] = &[
    (
        "last_run_start_timestamp_seconds",
        "When the newest run started (Unix time)",
        |j| {
            let t = crate::store::select::parse_time(&j.last.as_ref()?.started_at)?;
            Some(t.timestamp_millis() as f64 / 1e3)
        },
    ),
    (
        "last_run_duration_seconds",
        "How long the newest run took",
        |j| {
            let l = j.last.as_ref()?;
            super::html::known_duration(l.duration_seconds, l.finished_at.as_deref())
        },
    ),
    (
        "last_run_files",
        "Files the newest run found in the source",
        |j| Some(j.last.as_ref()?.files_total as f64),
    ),
    (
        "last_run_files_copied",
        "Files the newest run copied (new or changed)",
        |j| Some(j.last.as_ref()?.files_transferred as f64),
    ),
    (
        "last_run_bytes_copied",
        "Bytes the newest run copied",
        |j| Some(j.last.as_ref()?.bytes_transferred as f64),
    ),
    (
        "last_run_files_linked",
        "Unchanged files the newest run hard-linked",
        |j| Some(j.last.as_ref()?.files_linked as f64),
    ),
    (
        "last_run_link_fallbacks",
        "Links that failed (EMLINK, EXDEV) and were copied instead",
        |j| Some(j.last.as_ref()?.link_fallbacks as f64),
    ),
    (
        "last_run_problems",
        "Entries the newest run could not back up as the source has them",
        |j| Some(j.last.as_ref()?.errors as f64),
    ),
    (
        "last_run_throughput_bytes_per_second",
        "Bytes per second of the newest run",
        |j| Some(j.last.as_ref()?.throughput_bytes_per_second),
    ),
    (
        "last_run_throughput_files_per_second",
        "Files per second of the newest run",
        |j| Some(j.last.as_ref()?.throughput_files_per_second),
    ),
    (
        "next_run_timestamp_seconds",
        "When the schedule runs the job next (Unix time)",
        |j| {
            let t = crate::store::select::parse_time(j.next_run.as_ref()?)?;
            Some(t.timestamp() as f64)
        },
    ),
    ("snapshots", "Snapshots in the job's store", |j| {
        Some(j.snapshots.len() as f64)
    }),
    (
        "newest_snapshot_age_seconds",
        "Age of the newest snapshot in the store",
        |j| j.newest_snapshot_age_seconds,
    ),
    (
        "store_free_bytes",
        "Bytes free (to unprivileged users) on the store's file system",
        |j| Some(j.space.as_ref()?.free_bytes as f64),
    ),
    ("store_size_bytes", "Size of the store's file system", |j| {
        Some(j.space.as_ref()?.total_bytes as f64)
    }),
    (
        "store_free_inodes",
        "Inodes free on the store's file system",
        |j| Some(j.space.as_ref()?.free_inodes as f64),
    ),
    ("store_inodes", "Inodes of the store's file system", |j| {
        Some(j.space.as_ref()?.total_inodes as f64)
    }),
    (
        "catalog_behind",
        "1 if the job's store has a finished run the catalog has no row for (or has as running): the catalog is damaged, recreated or was not writable; the last_run series then come from the store's run record",
        |j| Some(f64::from(j.catalog_behind.is_some())),
    ),
    (
        "job_errors",
        "Errors gathering the job's figures (its store, the catalog, its schedule); its page lists them",
        |j| Some(j.errors.len() as f64),
    ),
    (
        "run_progress_files",
        "Files the running run has walked so far",
        |j| Some(j.progress.as_ref()?.files_done as f64),
    ),
    (
        "run_expected_files",
        "Files the running run expects to walk (the previous snapshot's count)",
        |j| Some(j.progress.as_ref()?.files_expected? as f64),
    ),
    (
        "run_eta_seconds",
        "Seconds until the running run has walked the expected files, at its rate so far",
        |j| Some(j.progress.as_ref()?.eta_seconds? as f64),
    ),
];

/// A counter per job, from the catalog's runs (monotonic while runs are kept).
type CounterDef = (&'static str, &'static str, fn(&Counts) -> u64);

const COUNTERS: &[CounterDef] = &[
    ("runs_started", "Runs started", |c| c.runs),
    (
        "runs_failed",
        "Runs that ended failed (a failed rotation published later included)",
        |c| c.failed_once,
    ),
    ("runs_partial", "Runs that ended partial", |c| c.partial),
    ("runs_incomplete", "Runs that ended incomplete", |c| {
        c.incomplete
    }),
    (
        "runs_skipped",
        "Daemon triggers skipped because the job was still running",
        |c| c.skipped,
    ),
];

const STATUSES: [&str; 5] = ["running", "complete", "partial", "incomplete", "failed"];

/// A gauge per store-and-repository pair of copies (`snapring copy`).
type CopyGaugeDef = (&'static str, &'static str, fn(&CopyView) -> Option<f64>);

const COPY_GAUGES: &[CopyGaugeDef] = &[
    (
        "copy_last_start_timestamp_seconds",
        "When the newest copy of the store into the repository started (Unix time)",
        |c| {
            let t = crate::store::select::parse_time(&c.last.started_at)?;
            Some(t.timestamp_millis() as f64 / 1e3)
        },
    ),
    (
        "copy_last_duration_seconds",
        "How long the newest copy took",
        |c| super::html::known_duration(c.last.duration_seconds, c.last.finished_at.as_deref()),
    ),
    (
        "copy_last_problems",
        "Entries the newest copy left out or copied with the manifest's metadata",
        |c| Some(c.last.errors as f64),
    ),
    (
        "copy_last_success_timestamp_seconds",
        "When the newest complete copy finished (Unix time); none before the first",
        |c| {
            let t = crate::store::select::parse_time(c.last_success_at.as_deref()?)?;
            Some(t.timestamp_millis() as f64 / 1e3)
        },
    ),
    (
        "copy_last_success_age_seconds",
        "Seconds since the newest complete copy finished; none before the first",
        |c| c.last_success_age_seconds,
    ),
];

const COPY_COUNTERS: &[CounterDef] = &[
    ("copy_runs_started", "Copies started", |c| c.runs),
    ("copy_runs_failed", "Copies that ended failed", |c| {
        c.failed_once
    }),
    ("copy_runs_partial", "Copies that ended partial", |c| {
        c.partial
    }),
    (
        "copy_runs_incomplete",
        "Copies that ended incomplete",
        |c| c.incomplete,
    ),
];

/// A copy's labels: the job whose store it copies (`""` for none), the store, the
/// repository.
fn copy_labels(c: &CopyView) -> Labels {
    vec![
        ("job_name".into(), c.job.clone().unwrap_or_default()),
        ("store".into(), c.store.to_string_lossy().into_owned()),
        ("to".into(), c.to.clone()),
    ]
}

fn labels(j: &JobView) -> Labels {
    vec![
        ("job_name".into(), j.name.clone()),
        ("store".into(), j.store.to_string_lossy().into_owned()),
    ]
}

/// The catalog as `/metrics` tells it: the series not of a job.
pub struct CatalogState<'a> {
    pub path: &'a std::path::Path,
    /// `data::catalog_writable`.
    pub writable: bool,
    /// The file exists.
    pub present: bool,
}

/// The metrics of `jobs` and `copies` as OpenMetrics text (ends with `# EOF`); `catalog`: the
/// catalog's path, whether it can be written (`data::catalog_writable`) and whether it
/// exists, the series not of a job (`snapring_catalog_writable{catalog=PATH}`,
/// `snapring_catalog_present{catalog=PATH}`), none without a catalog.
pub fn render(jobs: &[JobView], copies: &[CopyView], catalog: Option<CatalogState<'_>>) -> String {
    let mut reg = Registry::with_prefix("snapring");
    if let Some(c) = catalog {
        let l = vec![("catalog".into(), c.path.to_string_lossy().into_owned())];
        let fam = GaugeFam::default();
        reg.register(
            "catalog_writable",
            "1 if the run catalog can be written (its file system read-write, not full, and writable by this process), 0 if not: runs then go unrecorded",
            fam.clone(),
        );
        fam.get_or_create(&l).set(f64::from(c.writable));
        let fam = GaugeFam::default();
        reg.register(
            "catalog_present",
            "1 if the run catalog's file exists, 0 if not (before the first run writes it, or deleted): no run of any job is then shown",
            fam.clone(),
        );
        fam.get_or_create(&l).set(f64::from(c.present));
    }
    let status = GaugeFam::default();
    reg.register(
        "last_run_status",
        "The newest run's status: 1 for the status it has, 0 for the others",
        status.clone(),
    );
    for j in jobs.iter().filter(|j| j.last.is_some()) {
        let last = j.last.as_ref().map(|l| l.status.as_str());
        for s in STATUSES {
            let mut l = labels(j);
            l.push(("status".into(), s.into()));
            status.get_or_create(&l).set(f64::from(last == Some(s)));
        }
    }
    for (name, help, value) in GAUGES {
        let fam = GaugeFam::default();
        reg.register(*name, *help, fam.clone());
        for j in jobs {
            if let Some(v) = value(j) {
                fam.get_or_create(&labels(j)).set(v);
            }
        }
    }
    for (name, help, value) in COUNTERS {
        let fam = CounterFam::default();
        reg.register(*name, *help, fam.clone());
        for j in jobs {
            if let Some(c) = &j.counts {
                fam.get_or_create(&labels(j)).inc_by(value(c));
            }
        }
    }
    let status = GaugeFam::default();
    reg.register(
        "copy_last_status",
        "The newest copy's status: 1 for the status it has, 0 for the others",
        status.clone(),
    );
    for c in copies {
        for s in STATUSES {
            let mut l = copy_labels(c);
            l.push(("status".into(), s.into()));
            status.get_or_create(&l).set(f64::from(c.last.status == s));
        }
    }
    for (name, help, value) in COPY_GAUGES {
        let fam = GaugeFam::default();
        reg.register(*name, *help, fam.clone());
        for c in copies {
            if let Some(v) = value(c) {
                fam.get_or_create(&copy_labels(c)).set(v);
            }
        }
    }
    for (name, help, value) in COPY_COUNTERS {
        let fam = CounterFam::default();
        reg.register(*name, *help, fam.clone());
        for c in copies {
            fam.get_or_create(&copy_labels(c)).inc_by(value(&c.counts));
        }
    }
    let mut out = String::new();
    encode(&mut out, &reg).expect("encoding into a String cannot fail");
    out
}

/// OpenMetrics text (from `render`) in Prometheus' classic text format 0.0.4, for
/// scrapers that do not ask for OpenMetrics, `promtool check metrics` and
/// node_exporter's textfile collector: a counter's `# HELP` and `# TYPE` name its
/// samples' `_total` name, and there is no `# EOF`.
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines().filter(|l| *l != "# EOF") {
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let total = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{p}{name}{total} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_form_names_counters_by_their_samples() {
        let om = "# HELP x_runs Runs.\n# TYPE x_runs counter\nx_runs_total{a=\"1\"} 2\n\
                  # HELP x_g G.\n# TYPE x_g gauge\nx_g 1.0\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP x_runs_total Runs.\n# TYPE x_runs_total counter\nx_runs_total{a=\"1\"} 2\n\
             # HELP x_g G.\n# TYPE x_g gauge\nx_g 1.0\n"
        );
    }
}
