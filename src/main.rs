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
    /// Log lines as JSON.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
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
        /// File-system calls in flight for --space.
        #[arg(long, default_value_t = 32)]
        jobs: usize,
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
        #[arg(long, default_value_t = 32)]
        jobs: usize,
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
        #[arg(long, default_value_t = 32)]
        jobs: usize,
        #[arg(long)]
        json: bool,
    },
    /// Every retained version of one path: when it changed, its size and hash.
    History {
        /// The store: <dest>/<folder>.
        #[arg(long)]
        dest: PathBuf,
        /// Path relative to the snapshot root.
        path: PathBuf,
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
    /// File-system calls in flight.
    #[arg(long, default_value_t = 32)]
    jobs: usize,
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
    /// File-system calls in flight [default: 32, sized for NFS latency]
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
    let level = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_format == "json");
    let code = match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("snapring: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Backup(a) => backup(*a),
        Cmd::Restore(a) => restore(a),
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
                jobs,
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
                jobs,
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
        Cmd::History { dest, path, json } => {
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
        Cmd::List {
            dest,
            space,
            jobs,
            json,
        } => {
            let snaps = snapring::commands::list::list(&dest, space, jobs)?;
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

fn backup(a: BackupArgs) -> anyhow::Result<i32> {
    use std::io::IsTerminal;
    let (name, file_job) = match &a.config {
        Some(path) => {
            let cfg = config::load(path)?;
            let (n, j) = cfg.pick(a.job.as_deref())?;
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
    };
    let mut opts = config::resolve(name, file_job, flags)?;
    opts.dry_run = a.dry_run;
    opts.plan_on_stderr = a.json;
    opts.progress = !a.no_progress && !a.json && !a.dry_run && std::io::stderr().is_terminal();
    let cancel = Arc::new(AtomicBool::new(false));
    snapring::engine::progress::install_signal_handlers(&cancel);
    let report = snapring::engine::backup(&opts, &cancel)?;
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
        jobs: a.jobs,
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
