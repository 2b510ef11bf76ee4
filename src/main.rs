//! The `snapring` command: parses arguments, resolves the config, calls the library
//! and maps the outcome to an exit code (0 complete, 2 partial, 3 incomplete, 1 failed).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Args, Parser, Subcommand};
use snapring::config::{self, JobConfig};
use snapring::report::RunReport;

#[derive(Parser)]
#[command(
    name = "snapring",
    version,
    about = "Incremental, rotating hard-link snapshots of file systems (EFS/NFS or any POSIX tree)"
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log lines (stderr and the run's log file) as JSON.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    /// The run catalog (SQLite) [default: $XDG_STATE_HOME/snapring/catalog.db, or
    /// /var/lib/snapring/catalog.db for a system service]; `off` disables it.
    #[arg(long, global = true, env = "SNAPRING_CATALOG", value_name = "FILE")]
    catalog: Option<PathBuf>,
    /// Allow the catalog on NFS (SQLite locking is unreliable there).
    #[arg(long, global = true, env = "SNAPRING_CATALOG_ON_NFS")]
    catalog_on_nfs: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Back up a source tree into <dest>/<folder>/<label>.0 and rotate older snapshots.
    Backup(Box<BackupArgs>),
    /// List the snapshots of a store, newest first (also repairs an interrupted run).
    List {
        /// The store: <dest>/<folder>.
        #[arg(long)]
        dest: PathBuf,
        /// Also compute the space only each snapshot uses (walks every snapshot).
        #[arg(long)]
        space: bool,
        /// File-system calls in flight for --space [default: 64 on NFS/FUSE, 4 per CPU
        /// on local disks]
        #[arg(long)]
        jobs: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot, a subdirectory or one file into a directory (never deletes or
    /// overwrites unless told to).
    Restore(RestoreArgs),
    /// What changed between two snapshots, or between a snapshot and a live directory.
    Diff {
        /// The store: <dest>/<folder>.
        #[arg(long)]
        dest: PathBuf,
        /// The older snapshot: name (daily.3), run id, `latest` or @TIME.
        from: String,
        /// The newer snapshot.
        to: Option<String>,
        /// Compare with this live directory instead of a second snapshot.
        #[arg(long, value_name = "DIR")]
        against: Option<PathBuf>,
        /// File-system calls in flight [default: 64 on NFS/FUSE, 4 per CPU on local disks]
        #[arg(long)]
        jobs: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Re-hash snapshots against their manifests (bit rot, tampering, missing files);
    /// exit 0 when clean, 2 when something differs.
    Verify {
        /// The store: <dest>/<folder>.
        #[arg(long)]
        dest: PathBuf,
        /// Snapshots to verify [default: the newest].
        snapshots: Vec<String>,
        /// Verify every snapshot.
        #[arg(long, conflicts_with = "snapshots")]
        all: bool,
        /// Compare the snapshot's manifest with this live tree instead (hashing every file).
        #[arg(long, value_name = "SRC")]
        against: Option<PathBuf>,
        /// File-system calls in flight [default: 64 on NFS/FUSE, 4 per CPU on local disks]
        #[arg(long)]
        jobs: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Runs from the catalog (newest last); with a PATH and --dest, every retained
    /// version of that path instead.
    History {
        /// The store: <dest>/<folder> (filters runs; required with PATH).
        #[arg(long)]
        dest: Option<PathBuf>,
        /// Path relative to the snapshot root: list its versions across snapshots.
        path: Option<PathBuf>,
        /// Only runs of this job.
        #[arg(long)]
        job: Option<String>,
        /// Only runs started within this long (30d, 12h) or since this time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One run from the catalog: its KPIs, errors and where its log is.
    Show {
        /// Run id (or a unique prefix of it).
        run: String,
        /// Look the run up in this store when the catalog does not have it.
        #[arg(long)]
        dest: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Summary of a job's runs over time: success rate, p50/p95 duration, trends.
    Stats {
        #[arg(long)]
        job: Option<String>,
        /// Only runs of this store.
        #[arg(long)]
        dest: Option<PathBuf>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The run catalog.
    Catalog {
        #[command(subcommand)]
        cmd: CatalogCmd,
    },
    /// Run one job of a config file now (backup, then its notifications).
    Run {
        /// The job's name (a [job.NAME] table).
        job: String,
        #[arg(
            long,
            env = "SNAPRING_CONFIG",
            default_value = "/etc/snapring/snapring.toml"
        )]
        config: PathBuf,
        /// Print the run report as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        no_progress: bool,
    },
    /// Run every scheduled job of a config file at its times, until SIGTERM/SIGINT
    /// (SIGHUP reloads the config).
    Daemon {
        #[arg(
            long,
            env = "SNAPRING_CONFIG",
            default_value = "/etc/snapring/snapring.toml"
        )]
        config: PathBuf,
    },
    /// Print the next run times (RFC 3339, UTC) of a job or of a bare schedule.
    Next {
        /// A job of --config.
        #[arg(long, conflicts_with = "schedule")]
        job: Option<String>,
        #[arg(
            long,
            env = "SNAPRING_CONFIG",
            default_value = "/etc/snapring/snapring.toml"
        )]
        config: PathBuf,
        /// A schedule: "0 2 * * *", "@daily" or "cron(0 2 * * ? *)".
        #[arg(long)]
        schedule: Option<String>,
        /// IANA time zone for --schedule (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// Count from this time instead of now (RFC 3339 or YYYY-MM-DD HH:MM, UTC).
        #[arg(long)]
        at: Option<String>,
        /// How many times to print.
        #[arg(long, default_value_t = 5)]
        count: usize,
        #[arg(long)]
        json: bool,
    },
    /// Configuration files.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
}

#[derive(Subcommand)]
enum CatalogCmd {
    /// Recreate the catalog's rows for a store from its run records (.snapring/runs).
    Rebuild {
        #[arg(long)]
        dest: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check a config file; prints every problem with its line.
    Check { file: PathBuf },
}

#[derive(Args)]
struct RestoreArgs {
    /// The store: <dest>/<folder>.
    #[arg(long)]
    dest: PathBuf,
    /// Snapshot: name (daily.2), run id, `latest`, or @TIME (the newest taken at or
    /// before TIME, e.g. @2026-11-20T02:00, UTC unless an offset is given).
    snapshot: String,
    /// Directory to restore into (created if missing).
    #[arg(long)]
    to: PathBuf,
    /// Restore only this path of the snapshot (a directory or a file), to the same
    /// relative place under --to.
    #[arg(long)]
    path: Option<PathBuf>,
    /// Put --path straight into --to: a directory's contents, or the file itself.
    #[arg(long, requires = "path")]
    flat: bool,
    /// Replace existing entries that differ from the snapshot.
    #[arg(long)]
    overwrite: bool,
    /// Also delete what the snapshot does not have, inside the restored subtree only.
    #[arg(long, conflicts_with = "overwrite")]
    mirror: bool,
    /// Print what would be created (+), replaced (~), deleted (-) and left as a
    /// conflict (!); change nothing.
    #[arg(long)]
    dry_run: bool,
    /// File-system calls in flight [default: 64 on NFS/FUSE, 4 per CPU on local disks]
    #[arg(long)]
    jobs: Option<usize>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress line, even on a terminal.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct BackupArgs {
    /// TOML config file with [job.NAME] tables; flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Job to run from the config (optional when it has one job).
    #[arg(long)]
    job: Option<String>,
    /// Directory to back up (an EFS/NFS mount or any directory).
    #[arg(long)]
    source: Option<PathBuf>,
    /// Backup file system (where the store lives).
    #[arg(long)]
    dest: Option<PathBuf>,
    /// Store folder under --dest (for example the file system id); default: --dest itself.
    #[arg(long)]
    folder: Option<String>,
    /// Interval label: snapshots are <label>.0 (newest) … <label>.N [default: daily]
    #[arg(long)]
    label: Option<String>,
    /// How many snapshots of this label to keep [default: 7]
    #[arg(long)]
    retain: Option<u32>,
    /// Back up only this subdirectory of the source.
    #[arg(long)]
    prefix: Option<String>,
    /// Leave out matching entries (repeatable): NAME-GLOB at any depth, /PATH-GLOB from
    /// the root, trailing / for directories only, ** across directories.
    #[arg(long = "exclude", value_name = "GLOB")]
    exclude: Vec<String>,
    /// File-system calls in flight [default: 64 when the source or the store is on
    /// NFS/FUSE, 4 per CPU (at most 32) when both are local]
    #[arg(long)]
    jobs: Option<usize>,
    /// Print what would be copied, linked and rotated; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Refuse unless the source is a mount point.
    #[arg(long)]
    require_mount: bool,
    /// Allow an empty source even if the previous snapshot has files.
    #[arg(long)]
    allow_empty: bool,
    /// Stop gracefully after this long (e.g. 180m); the run is `incomplete` and the next resumes.
    #[arg(long)]
    window: Option<String>,
    /// Print the run report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress line, even on a terminal.
    #[arg(long)]
    no_progress: bool,
}

fn init_logging(verbose: u8, json: bool) {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::prelude::*;
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    };
    // Each run's log file in the store (see runlog.rs) gets INFO and up, no colours.
    type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;
    let fmt = tracing_subscriber::fmt::layer;
    let layers: Vec<Boxed> = if json {
        vec![
            fmt()
                .with_writer(std::io::stderr)
                .with_target(false)
                .json()
                .with_filter(level)
                .boxed(),
            fmt()
                .with_writer(snapring::runlog::RunLog)
                .with_ansi(false)
                .with_target(false)
                .json()
                .with_filter(LevelFilter::INFO)
                .boxed(),
        ]
    } else {
        vec![
            fmt()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_filter(level)
                .boxed(),
            fmt()
                .with_writer(snapring::runlog::RunLog)
                .with_ansi(false)
                .with_target(false)
                .with_filter(LevelFilter::INFO)
                .boxed(),
        ]
    };
    tracing_subscriber::registry().with(layers).init();
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_format == "json");
    let cat = CatalogChoice {
        explicit: cli.catalog.is_some(),
        path: match cli.catalog {
            Some(p) if p.as_os_str() == "off" => None,
            Some(p) => Some(p),
            None => Some(snapring::catalog::default_path()),
        },
        on_nfs: cli.catalog_on_nfs,
    };
    let code = match run(cli.cmd, cat) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("snapring: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// Where the catalog is, from --catalog/SNAPRING_CATALOG, else the default; `None`
/// when turned off.
struct CatalogChoice {
    path: Option<PathBuf>,
    /// Given by flag or environment (wins over a config file's `catalog`).
    explicit: bool,
    on_nfs: bool,
}

fn open_catalog(c: &CatalogChoice) -> anyhow::Result<snapring::catalog::Catalog> {
    let Some(p) = &c.path else {
        anyhow::bail!("the catalog is turned off (--catalog off); give it a file");
    };
    Ok(snapring::catalog::Catalog::open(p, c.on_nfs)?)
}

/// The catalog, with rows left `running` by dead runs settled first.
fn settled_catalog(c: &CatalogChoice) -> anyhow::Result<snapring::catalog::Catalog> {
    let mut cat = open_catalog(c)?;
    snapring::catalog::settle_running(&mut cat);
    Ok(cat)
}

impl CatalogChoice {
    /// The catalog a job uses: a flag or environment value wins, then the config
    /// file's `catalog`, then the default; `None` when turned off.
    fn for_config(&self, from_file: Option<PathBuf>) -> Option<PathBuf> {
        match (&self.path, from_file) {
            (Some(p), _) if self.explicit => Some(p.clone()),
            (None, _) => None,
            (_, Some(f)) => Some(f),
            (Some(p), None) => Some(p.clone()),
        }
    }
}

fn filter(
    job: Option<String>,
    dest: Option<&std::path::Path>,
    since: Option<&str>,
) -> anyhow::Result<snapring::catalog::Filter> {
    let store = match dest {
        Some(d) => Some(
            std::fs::canonicalize(d)
                .map_err(|e| anyhow::anyhow!("store {}: {e}", d.display()))?
                .to_string_lossy()
                .into_owned(),
        ),
        None => None,
    };
    let since = match since {
        None => None,
        Some(s) => Some(match snapring::engine::options::parse_duration(s) {
            Ok(d) => (chrono::Utc::now() - chrono::Duration::from_std(d)?)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            Err(_) => snapring::store::select::parse_time(s)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--since {s:?}: give a duration (30d, 12h) or a time (2026-11-01)"
                    )
                })?
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }),
    };
    Ok(snapring::catalog::Filter { job, store, since })
}

fn print_shown(s: &snapring::catalog::Shown) {
    let r = &s.report;
    println!("run {} ({})", r.id, r.status.as_str());
    println!(
        "  job {}  label {}  retain {}",
        r.job.as_deref().unwrap_or("-"),
        r.label,
        r.retain
    );
    println!("  source {}", r.source.display());
    println!(
        "  store {}  snapshot {}",
        r.store.display(),
        r.snapshot.as_deref().unwrap_or("-")
    );
    println!("  host {}  snapring {}  jobs {}", r.host, r.version, r.jobs);
    println!(
        "  started {}  finished {}  took {:.2}s",
        r.started_at,
        r.finished_at.as_deref().unwrap_or("-"),
        r.duration_seconds
    );
    println!(
        "  files {} (copied {}, linked {}, link fallbacks {}, changed during backup {}), directories {}",
        r.files_total,
        r.files_transferred,
        r.files_linked,
        r.link_fallbacks,
        r.changed_during_backup,
        r.dirs_total
    );
    println!(
        "  bytes {} in files, {} copied; {:.0} files/s, {}/s",
        human(r.bytes_total),
        human(r.bytes_transferred),
        r.throughput_files_per_second,
        human(r.throughput_bytes_per_second as u64)
    );
    let p = &r.phases;
    println!(
        "  phases: walk+copy {:.2}s, sync {:.2}s, rotation {:.2}s, remove expired {:.2}s; peak memory {}",
        p.walk_copy.seconds,
        p.sync.seconds,
        p.rotation.seconds,
        p.remove_expired.seconds,
        human(r.peak_rss_bytes)
    );
    if !r.expired.is_empty() {
        println!("  expired {}", r.expired.join(", "));
    }
    println!("  message: {}", r.message);
    for w in &r.warnings {
        println!("  warning: {w}");
    }
    println!("  errors {}", r.errors);
    for pr in s.problems.iter().take(50) {
        println!(
            "    {:?}: {} ({}: {})",
            pr.kind, pr.path, pr.action, pr.error
        );
    }
    if let Some(l) = &s.log_path {
        println!(
            "  log {}{}",
            l,
            if s.log_exists { "" } else { " (missing)" }
        );
    }
}

fn run(cmd: Cmd, cat: CatalogChoice) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Backup(a) => backup(*a, &cat),
        Cmd::Restore(a) => restore(a),
        Cmd::Run {
            job,
            config,
            json,
            no_progress,
        } => backup(
            BackupArgs {
                config: Some(config),
                job: Some(job),
                source: None,
                dest: None,
                folder: None,
                label: None,
                retain: None,
                prefix: None,
                exclude: vec![],
                jobs: None,
                dry_run: false,
                require_mount: false,
                allow_empty: false,
                window: None,
                json,
                no_progress,
            },
            &cat,
        ),
        Cmd::Daemon { config } => {
            let catalog = cat.for_config(config::load(&config)?.catalog);
            let opts = snapring::daemon::DaemonOptions {
                config,
                exe: std::env::current_exe()?,
                catalog,
                catalog_on_nfs: cat.on_nfs,
                tick: std::time::Duration::from_millis(200),
                env: vec![],
            };
            let stop = Arc::new(AtomicBool::new(false));
            let reload = Arc::new(AtomicBool::new(false));
            snapring::daemon::install_signals(&stop, &reload);
            snapring::daemon::run(&opts, &stop, &reload).map_err(anyhow::Error::msg)?;
            Ok(0)
        }
        Cmd::Next {
            job,
            config,
            schedule,
            timezone,
            at,
            count,
            json,
        } => {
            let sched = match (job, schedule) {
                (Some(j), None) => {
                    let cfg = config::load(&config)?;
                    let (_, jc) = cfg.pick(Some(&j))?;
                    jc.schedule()
                        .map_err(anyhow::Error::msg)?
                        .ok_or_else(|| anyhow::anyhow!("job {j} has no schedule"))?
                }
                (None, Some(s)) => snapring::schedule::parse(&s, timezone.as_deref())
                    .map_err(anyhow::Error::msg)?,
                _ => anyhow::bail!("give --job NAME (with --config) or --schedule EXPR"),
            };
            let from = match at {
                Some(t) => snapring::store::select::parse_time(&t).ok_or_else(|| {
                    anyhow::anyhow!("--at {t:?}: give RFC 3339 or YYYY-MM-DD HH:MM")
                })?,
                None => chrono::Utc::now(),
            };
            let times: Vec<String> = sched
                .upcoming(from, count)
                .iter()
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&times)?);
            } else {
                for t in &times {
                    println!("{t}");
                }
            }
            Ok(0)
        }
        Cmd::Diff {
            dest,
            from,
            to,
            against,
            jobs,
            json,
        } => {
            let cancel = cancel_flag();
            let r = snapring::commands::inspect::diff(
                &dest,
                &from,
                to.as_deref(),
                against.as_deref(),
                jobs.unwrap_or(0),
                &cancel,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for d in &r.differences {
                    println!("{} {}  {}", d.change.sign(), d.path, d.detail.join(", "));
                }
                for (p, e) in &r.problems {
                    eprintln!("snapring: cannot read {p}: {e}");
                }
                println!(
                    "{} -> {}: {} added, {} removed, {} changed, {} metadata only",
                    r.from, r.to, r.added, r.removed, r.content_changed, r.metadata_changed
                );
            }
            Ok(if r.problems.is_empty() { 0 } else { 2 })
        }
        Cmd::Verify {
            dest,
            snapshots,
            all,
            against,
            jobs,
            json,
        } => {
            let cancel = cancel_flag();
            let v = snapring::commands::inspect::verify(
                &dest,
                &snapshots,
                all,
                against.as_deref(),
                jobs.unwrap_or(0),
                &cancel,
            )?;
            let clean = v.iter().all(|x| x.clean);
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for x in &v {
                    for d in &x.differences {
                        println!(
                            "{} {} {}  {}",
                            x.snapshot,
                            d.change.sign(),
                            d.path,
                            d.detail.join(", ")
                        );
                    }
                    for (p, e) in &x.problems {
                        println!("{} ? {}  unreadable: {e}", x.snapshot, p);
                    }
                    println!(
                        "{}: {} against {}: {} files hashed ({}); {} corrupt, {} missing, {} unexpected, {} metadata",
                        x.snapshot,
                        if x.clean { "clean" } else { "DAMAGED" },
                        x.against,
                        x.totals.files_hashed,
                        human(x.totals.bytes_hashed),
                        x.corrupt,
                        x.missing,
                        x.unexpected,
                        x.metadata
                    );
                }
            }
            Ok(if clean { 0 } else { 2 })
        }
        Cmd::History {
            dest,
            path: Some(path),
            json,
            ..
        } => {
            let Some(dest) = dest else {
                anyhow::bail!(
                    "history of a path needs --dest STORE (the store holding the snapshots)"
                );
            };
            let rel = snapring::restore::parse_path(&path).map_err(anyhow::Error::msg)?;
            if rel.is_root() {
                anyhow::bail!(
                    "history needs a path inside the snapshot (for example users/alice/.profile)"
                );
            }
            let v = snapring::commands::inspect::history(&dest, &rel)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<12} {:<21} {:<9} {:<10} {:>10} {:<16} MTIME",
                    "SNAPSHOT", "TAKEN", "CHANGE", "KIND", "SIZE", "HASH"
                );
                for x in v {
                    let dash = || "-".to_string();
                    println!(
                        "{:<12} {:<21} {:<9} {:<10} {:>10} {:<16} {}",
                        x.snapshot,
                        x.taken_at,
                        x.change,
                        x.kind,
                        x.size.map(|s| s.to_string()).unwrap_or_else(dash),
                        x.hash.map(|h| h[..16].to_string()).unwrap_or_else(dash),
                        x.mtime.unwrap_or_else(dash)
                    );
                }
            }
            Ok(0)
        }
        Cmd::History {
            dest,
            path: None,
            job,
            since,
            json,
        } => {
            let c = settled_catalog(&cat)?;
            let f = filter(job, dest.as_deref(), since.as_deref())?;
            let rows = c.runs(&f)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<24} {:<10} {:<10} {:<21} {:>9} {:>9} {:>9} {:>10} {:>6}  STORE",
                    "RUN",
                    "JOB",
                    "STATUS",
                    "STARTED",
                    "SECONDS",
                    "FILES",
                    "COPIED",
                    "BYTES",
                    "ERRORS"
                );
                for r in &rows {
                    println!(
                        "{:<24} {:<10} {:<10} {:<21} {:>9.1} {:>9} {:>9} {:>10} {:>6}  {}",
                        r.id,
                        r.job.as_deref().unwrap_or("-"),
                        r.status,
                        r.started_at.get(..19).unwrap_or(&r.started_at).to_string() + "Z",
                        r.duration_seconds,
                        r.files_total,
                        r.files_transferred,
                        human(r.bytes_transferred),
                        r.errors,
                        r.store
                    );
                }
                if rows.is_empty() {
                    println!("(no runs in {})", c.path.display());
                }
            }
            Ok(0)
        }
        Cmd::Show { run, dest, json } => {
            let mut c = settled_catalog(&cat)?;
            let shown = match c.show(&run)? {
                Some(s) => s,
                None => {
                    let from_store = dest.as_ref().and_then(|d| {
                        let store = snapring::store::Store::open_read(d).ok()?;
                        let r = store.read_run(&run).ok()??;
                        c.record(&r).ok()?;
                        c.show(&run).ok()?
                    });
                    match from_store {
                        Some(s) => s,
                        None => anyhow::bail!(
                            "no run {run:?} in the catalog {}; `snapring history` lists runs, and `snapring catalog rebuild --dest STORE` imports a store's runs",
                            c.path.display()
                        ),
                    }
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print_shown(&shown);
            }
            Ok(0)
        }
        Cmd::Stats {
            job,
            dest,
            since,
            json,
        } => {
            let c = settled_catalog(&cat)?;
            let f = filter(job, dest.as_deref(), since.as_deref())?;
            let stats = c.stats(&f)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                for s in &stats {
                    println!("{}", s.job);
                    println!(
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
                    let pct = |p: Option<f64>| {
                        p.map(|p| format!("{p:+.0}% newer half vs older"))
                            .unwrap_or_else(|| "trend needs 4 runs".into())
                    };
                    println!(
                        "  duration p50 {:.2}s, p95 {:.2}s, mean {:.2}s ({})",
                        s.duration_p50_seconds,
                        s.duration_p95_seconds,
                        s.duration_mean_seconds,
                        pct(s.duration_trend_percent)
                    );
                    println!(
                        "  copied per run: mean {} ({}); last run {} with {} files",
                        human(s.bytes_transferred_mean as u64),
                        pct(s.bytes_transferred_trend_percent),
                        s.last_status,
                        s.files_total_last
                    );
                }
                if stats.is_empty() {
                    println!("(no runs in {})", c.path.display());
                }
            }
            Ok(0)
        }
        Cmd::Catalog {
            cmd: CatalogCmd::Rebuild { dest },
        } => {
            let mut c = open_catalog(&cat)?;
            let store = snapring::store::Store::open_read(&dest)?;
            let key = std::fs::canonicalize(&store.root)?;
            let n = c.rebuild(&key, &key.to_string_lossy())?;
            println!(
                "catalog {}: {n} runs of {} recorded from its run records",
                c.path.display(),
                key.display()
            );
            Ok(0)
        }
        Cmd::List {
            dest,
            space,
            jobs,
            json,
        } => {
            let snaps = snapring::commands::list::list(&dest, space, jobs.unwrap_or(0))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snaps)?);
            } else {
                println!(
                    "{:<12} {:>4} {:<24} {:<21} {:<10} {:>9} {:>10} {:>10}",
                    "SNAPSHOT", "SLOT", "RUN", "TAKEN", "STATUS", "FILES", "SIZE", "UNIQUE"
                );
                let any = !snaps.is_empty();
                for s in snaps {
                    let dash = || "-".to_string();
                    println!(
                        "{:<12} {:>4} {:<24} {:<21} {:<10} {:>9} {:>10} {:>10}",
                        s.name,
                        s.slot,
                        s.id.unwrap_or_else(dash),
                        s.taken_at,
                        s.status
                            .map(|x| x.as_str().to_string())
                            .unwrap_or_else(dash),
                        s.files.map(|f| f.to_string()).unwrap_or_else(dash),
                        s.bytes.map(human).unwrap_or_else(dash),
                        s.unique_bytes.map(human).unwrap_or_else(dash)
                    );
                }
                if any && !space {
                    println!(
                        "(UNIQUE: the space only that snapshot uses; add --space to compute it)"
                    );
                }
            }
            Ok(0)
        }
        Cmd::Config {
            cmd: ConfigCmd::Check { file },
        } => {
            let problems = config::check(&file);
            for p in &problems {
                println!("{p}");
            }
            if problems.is_empty() {
                println!("{}: ok", file.display());
            }
            Ok(if problems.is_empty() { 0 } else { 1 })
        }
    }
}

fn backup(a: BackupArgs, cat: &CatalogChoice) -> anyhow::Result<i32> {
    use std::io::IsTerminal;
    let mut file_catalog = None;
    let mut notifiers = Vec::new();
    let mut notify_success = false;
    let (name, file_job) = match &a.config {
        Some(path) => {
            let cfg = config::load(path)?;
            file_catalog = cfg.catalog.clone();
            let (n, j) = cfg.pick(a.job.as_deref())?;
            notifiers = snapring::job::notifiers(&cfg, &j);
            notify_success = j.notify_success.unwrap_or(false);
            (Some(n), Some(j))
        }
        None => (a.job.clone(), None),
    };
    let flags = JobConfig {
        source: a.source,
        dest: a.dest,
        folder: a.folder,
        label: a.label,
        retain: a.retain,
        prefix: a.prefix,
        exclude: a.exclude,
        jobs: a.jobs,
        require_mount: a.require_mount.then_some(true),
        allow_empty: a.allow_empty.then_some(true),
        window: a.window,
        ..Default::default()
    };
    let mut opts = config::resolve(name, file_job, flags)?;
    opts.dry_run = a.dry_run;
    opts.plan_on_stderr = a.json;
    let catalog = cat
        .for_config(file_catalog)
        .map(|path| snapring::job::CatalogTarget {
            path,
            on_nfs: cat.on_nfs,
        });
    opts.progress = !a.no_progress && !a.json && !a.dry_run && std::io::stderr().is_terminal();
    let cancel = Arc::new(AtomicBool::new(false));
    snapring::engine::progress::install_signal_handlers(&cancel);
    let report = snapring::job::run(&opts, catalog.as_ref(), &notifiers, notify_success, &cancel)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(report.exit_code)
}

fn cancel_flag() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    snapring::engine::progress::install_signal_handlers(&cancel);
    cancel
}

fn restore(a: RestoreArgs) -> anyhow::Result<i32> {
    use snapring::restore::{Mode, RestoreOptions};
    use std::io::IsTerminal;
    let path = match &a.path {
        Some(p) => {
            let rel = snapring::restore::parse_path(p).map_err(anyhow::Error::msg)?;
            (!rel.is_root()).then_some(rel)
        }
        None => None,
    };
    let opts = RestoreOptions {
        store: a.dest,
        snapshot: a.snapshot,
        to: a.to,
        flat: a.flat && path.is_some(),
        path,
        mode: if a.mirror {
            Mode::Mirror
        } else if a.overwrite {
            Mode::Overwrite
        } else {
            Mode::Safe
        },
        dry_run: a.dry_run,
        jobs: a.jobs.unwrap_or(0),
        progress: !a.no_progress && !a.json && !a.dry_run && std::io::stderr().is_terminal(),
    };
    let cancel = cancel_flag();
    let r = snapring::restore::restore(&opts, &cancel)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(r.exit_code);
    }
    let out: &mut dyn std::io::Write = if r.dry_run {
        &mut std::io::stderr()
    } else {
        &mut std::io::stdout()
    };
    let _ = writeln!(
        out,
        "{}{}: restored {} of {} (run {}) into {}",
        if r.dry_run { "dry run, " } else { "" },
        r.status.as_str(),
        r.path.as_deref().unwrap_or("all"),
        r.snapshot,
        r.run_id.as_deref().unwrap_or("-"),
        r.to.display()
    );
    let _ = writeln!(
        out,
        "  files {} ({}, {} as hard links), directories {}, identical skipped {}, replaced {}, deleted {}",
        r.files_restored,
        human(r.bytes_restored),
        r.hard_links,
        r.dirs_created,
        r.skipped_identical,
        r.overwritten,
        r.deleted
    );
    let _ = writeln!(out, "  took {:.2}s", r.duration_seconds);
    if !r.message.is_empty() {
        let _ = writeln!(out, "  {}", r.message);
    }
    for c in r.conflicts.iter().take(20) {
        eprintln!("  conflict {}: {}", c.path, c.reason);
    }
    for p in r.problems.iter().take(20) {
        eprintln!("  {:?}: {} ({}: {})", p.kind, p.path, p.action, p.error);
    }
    if r.conflicts_total + r.errors > 40 {
        eprintln!("  … more in the --json report");
    }
    Ok(r.exit_code)
}

fn human(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

fn print_summary(r: &RunReport) {
    if r.status == snapring::report::Status::Failed {
        eprintln!("snapring: backup failed: {}", r.message);
        eprintln!(
            "  run {} recorded in {}",
            r.id,
            r.store.join(".snapring/runs").display()
        );
        if r.files_total == 0 {
            return;
        }
    }
    let out: &mut dyn std::io::Write = if r.dry_run {
        &mut std::io::stderr()
    } else {
        &mut std::io::stdout()
    };
    let _ = writeln!(
        out,
        "{}{}: {} (run {})",
        if r.dry_run { "dry run, " } else { "" },
        r.status.as_str(),
        r.snapshot
            .as_deref()
            .map(|s| format!("{} in {}", s, r.store.display()))
            .unwrap_or_else(|| r.store.display().to_string()),
        r.id
    );
    let _ = writeln!(
        out,
        "  files {} (copied {}, linked {}, link fallbacks {}, changed during backup {}), directories {}",
        r.files_total,
        r.files_transferred,
        r.files_linked,
        r.link_fallbacks,
        r.changed_during_backup,
        r.dirs_total
    );
    let _ = writeln!(
        out,
        "  bytes {} in files, {} copied",
        human(r.bytes_total),
        human(r.bytes_transferred)
    );
    if !r.expired.is_empty() {
        let _ = writeln!(out, "  expired {}", r.expired.join(", "));
    }
    let _ = writeln!(
        out,
        "  took {:.2}s, peak memory {}",
        r.duration_seconds,
        human(r.peak_rss_bytes)
    );
    if !r.message.is_empty() && r.status != snapring::report::Status::Complete {
        let _ = writeln!(out, "  {}", r.message);
    }
    for p in r.problems.iter().take(20) {
        eprintln!("  {:?}: {} ({}: {})", p.kind, p.path, p.action, p.error);
    }
    if r.errors > 20 {
        eprintln!(
            "  … {} more problems in {}",
            r.errors - 20,
            r.store
                .join(".snapring/runs")
                .join(format!("{}.json", r.id))
                .display()
        );
    }
}
