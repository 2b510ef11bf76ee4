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
        Cmd::List { dest, json } => {
            let snaps = snapring::commands::list::list(&dest)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snaps)?);
            } else {
                println!(
                    "{:<12} {:<24} {:<25} {:<10} {:>10} {:>10}",
                    "SNAPSHOT", "RUN", "FINISHED", "STATUS", "FILES", "SIZE"
                );
                for s in snaps {
                    let dash = || "-".to_string();
                    println!(
                        "{:<12} {:<24} {:<25} {:<10} {:>10} {:>10}",
                        s.name,
                        s.id.unwrap_or_else(dash),
                        s.finished_at.unwrap_or_else(dash),
                        s.status
                            .map(|x| x.as_str().to_string())
                            .unwrap_or_else(dash),
                        s.files.map(|f| f.to_string()).unwrap_or_else(dash),
                        s.bytes.map(human).unwrap_or_else(dash)
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
