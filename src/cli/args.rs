//! The command line, as clap definitions and nothing else: every command, flag,
//! environment variable, default, value name and help text of `snapring`. The
//! handlers in the sibling modules take these structs by value; nothing here does I/O.
//! Doc comments (`///`) are the help text, so comments that are not meant for `--help`
//! use `//`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "snapring",
    version,
    about = "Incremental, rotating hard-link snapshots of file systems (EFS/NFS or any POSIX tree)",
    after_help = "Exit codes: 0 complete, 1 failed or refused (nothing published), 2 partial \
                  (published, but some entries could not be backed up; verify: damage \
                  found; diff: something could not be read), 3 incomplete \
                  (interrupted or out of time; the next run resumes), 64 usage error (bad \
                  command line; nothing ran), 75 try again later (a shard worker or finalize \
                  found the store busy or units not yet committed, docs/scale-out.md; a \
                  daemon found another running on its config or catalog). A \
                  closed stdout (`| head`) is not an error."
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log lines (stderr and the run's log file) as JSON.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    pub log_format: String,
    // These two read their environment variables in `main`, not through clap's `env`:
    // clap counts a value from the environment as given on the command line, and its
    // usage line after an error then listed `--catalog <FILE>` as if it were required.
    /// The run catalog (SQLite) [default: $XDG_STATE_HOME/snapring/catalog.db, or
    /// /var/lib/snapring/catalog.db for a system service]; `off` disables it [env:
    /// SNAPRING_CATALOG]
    #[arg(long, global = true, value_name = "FILE")]
    pub catalog: Option<PathBuf>,
    /// Allow the catalog on NFS (SQLite locking is unreliable there) [env:
    /// SNAPRING_CATALOG_ON_NFS=1]
    #[arg(long, global = true)]
    pub catalog_on_nfs: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

// Each variant's doc comment is its help text; the argument structs below carry none,
// so the variant's text is the one clap shows.
#[derive(Subcommand)]
pub enum Cmd {
    /// Create a restic repository (format version 2) at --dest file:///PATH or s3://BUCKET/PREFIX.
    Init(InitArgs),
    /// Back up a source tree into <dest>/<folder>/<label>.0 and rotate older snapshots.
    Backup(Box<BackupArgs>),
    /// List the snapshots of a store, newest first (also repairs an interrupted run).
    List(ListArgs),
    /// Restore a snapshot, a subdirectory or one file into a directory (never deletes or
    /// overwrites unless told to).
    Restore(RestoreArgs),
    /// What changed between two snapshots, or between a snapshot and a live directory.
    Diff(DiffArgs),
    /// Re-hash snapshots against their manifests (bit rot, tampering, missing files);
    /// exit 0 when clean, 2 when something differs.
    Verify(VerifyArgs),
    /// Runs from the catalog (newest last); with a PATH and --dest, every retained
    /// version of that path instead.
    History(HistoryArgs),
    /// One run from the catalog: its KPIs, errors and where its log is.
    Show(ShowArgs),
    /// Summary of a job's runs over time: success rate, p50/p95 duration, trends.
    Stats(StatsArgs),
    /// The run catalog.
    Catalog {
        #[command(subcommand)]
        cmd: CatalogCmd,
    },
    /// Forget snapshots of a restic repository: the old ones of a label (restic `forget
    /// --keep-last N` per host and paths), or those named by id (restic `forget ID...`,
    /// e.g. the damaged ones `repair index` names); their data stays until `prune`.
    Forget(ForgetArgs),
    /// Remove the data no snapshot of a restic repository references (deletes or
    /// repacks packs, rewrites the index) under an exclusive lock.
    Prune(PruneArgs),
    /// Repair a restic repository: `repair index` rebuilds the index from the packs
    /// that are there (after a pack was lost or damaged).
    Repair {
        #[command(subcommand)]
        cmd: RepairCmd,
    },
    /// Push a snapshot of a hard-link store into a restic repository, reading only the
    /// files that changed since the last snapshot copied there (as the manifests tell).
    Copy(CopyArgs),
    /// Run one job of a config file now (backup, then its notifications).
    Run(RunArgs),
    /// Run every scheduled job of a config file at its times, until SIGTERM/SIGINT
    /// (SIGHUP reloads the config).
    Daemon(DaemonArgs),
    /// Serve a read-only dashboard, /metrics (Prometheus) and /api JSON over HTTP for
    /// the jobs of a config file and their runs in the catalog.
    Serve(ServeArgs),
    /// Print the next run times (RFC 3339, UTC) of a job or of a bare schedule.
    Next(NextArgs),
    /// Publish a shard run whose units are all committed (the last worker does this
    /// itself; safe to repeat).
    Finalize(FinalizeArgs),
    /// A shard run's workers, units (done, claimed, stale, pending) and whether it is
    /// finalized.
    Status(ShardRunArgs),
    /// Configuration files.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
}

#[derive(Subcommand)]
pub enum CatalogCmd {
    /// Recreate the catalog's rows for a store from its run records (.snapring/runs).
    Rebuild {
        #[arg(long)]
        dest: PathBuf,
    },
    /// Check the whole catalog file (SQLite's PRAGMA integrity_check), whenever asked:
    /// `history`, `show` and `stats` check it (quick_check) at most once a day. Exit 0
    /// when intact, 1 when damaged (then `catalog rebuild` moves it aside).
    Check,
}

#[derive(Subcommand)]
pub enum RepairCmd {
    /// Rebuild a restic repository's index from the packs in data/ (restic `repair
    /// index`): packs gone or unreadable are left out, packs no index names are added;
    /// the next backup stores again what the source still has of the lost data. Exit 0
    /// when every snapshot is whole, 2 when some reference data no pack holds.
    Index(RepairIndexArgs),
}

#[derive(Args)]
pub struct RepairIndexArgs {
    /// The restic repository: file:///PATH or s3://BUCKET/PREFIX.
    #[arg(long, value_parser = repo_url)]
    pub dest: String,
    /// Read every pack whole and check every blob (decrypt, hash); a blob that does not
    /// check is left out of the index, so the next backup stores it again. Without
    /// it, only the headers of packs the index does not describe are read.
    #[arg(long)]
    pub read_data: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The repository password's file [or SNAPRING_PASSWORD_FILE, SNAPRING_PASSWORD,
    /// RESTIC_PASSWORD_FILE, RESTIC_PASSWORD]
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Check a config file; prints every problem with its line.
    Check { file: PathBuf },
}

// `Default` lets `snapring run` build the arguments of a backup of one configured job.
#[derive(Args, Default)]
pub struct BackupArgs {
    /// TOML config file with [job.NAME] tables; flags override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// After the run, write its job's metrics to DIR/snapring-<job>.prom for
    /// node_exporter's textfile collector (docs/monitoring.md).
    #[arg(long, value_name = "DIR")]
    pub textfile: Option<PathBuf>,
    /// Job to run from the config (optional when it has one job).
    #[arg(long)]
    pub job: Option<String>,
    /// The config, already loaded and checked for this job (`snapring run`:
    /// `config::load_for_job`): not read or checked again.
    #[arg(skip)]
    pub loaded: Option<Box<snapring::config::Config>>,
    /// Directory to back up (an EFS/NFS mount or any directory).
    #[arg(long, value_parser = path())]
    pub source: Option<PathBuf>,
    /// Backup file system (where the store lives), or a restic repository: file:///PATH or s3://BUCKET/PREFIX.
    #[arg(long, value_parser = dest_path())]
    pub dest: Option<PathBuf>,
    /// Store folder under --dest (for example the file system id); default: --dest itself.
    #[arg(long, value_parser = folder)]
    pub folder: Option<String>,
    /// Interval label: snapshots are <label>.0 (newest) … <label>.N [default: daily]
    #[arg(long, value_parser = label)]
    pub label: Option<String>,
    /// How many snapshots of this label to keep [default: as many as the label's last run kept; 7 for a new label]
    #[arg(long, value_parser = retain)]
    pub retain: Option<u32>,
    /// Back up only this subdirectory of the source.
    #[arg(long, value_parser = prefix)]
    pub prefix: Option<String>,
    /// Leave out matching entries (repeatable): NAME-GLOB at any depth, /PATH-GLOB from
    /// the root, trailing / for directories only, ** across directories.
    #[arg(long = "exclude", value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Read exclude patterns from FILE (repeatable): one a line, as --exclude; blank
    /// lines and lines starting with # are skipped.
    #[arg(long = "exclude-from", value_name = "FILE")]
    pub exclude_from: Vec<std::path::PathBuf>,
    /// Leave out the contents of directories holding a valid CACHEDIR.TAG (the
    /// directory and the tag are kept, as restic and tar do).
    #[arg(long)]
    pub exclude_caches: bool,
    /// Leave out the contents of directories holding an entry NAME (repeatable;
    /// NAME:HEADER: a file starting with HEADER); the directory and NAME are kept.
    #[arg(long = "exclude-if-present", value_name = "NAME")]
    pub exclude_if_present: Vec<String>,
    /// File-system calls in flight [default: 64 when the source or the store is on
    /// NFS/FUSE, 4 per CPU (at most 32) when both are local]
    #[arg(long, value_parser = jobs)]
    pub jobs: Option<usize>,
    /// Print what would be copied, linked and rotated; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse unless the source is a mount point.
    #[arg(long)]
    pub require_mount: bool,
    /// Allow an empty or nearly empty source even if the previous snapshot has files: an
    /// empty one, one whose exclusions leave nothing of it, and one that keeps fewer
    /// than a tenth of the files of the label's previous snapshot when that held at
    /// least 100 (refused otherwise: a failed or wrong mount looks like this).
    #[arg(long)]
    pub allow_empty: bool,
    /// Continue the label's snapshots from another source (the same data moved to a new
    /// path); without it a run whose source differs from the one they are of is refused.
    #[arg(long)]
    pub new_source: bool,
    /// Stay on the source's file system (as rsync -x): a directory on another file
    /// system (a mount point) is kept as an empty directory, its contents left out.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Stop gracefully after this long (e.g. 180m); the run is `incomplete` and the next resumes.
    #[arg(long, value_parser = window)]
    pub window: Option<String>,
    /// Cap the bytes read from the source plus written to the backup, per second, across
    /// all workers: 50MiB, 800K (K, M, G are 1024-based as in rsync; KB, MB, GB
    /// 1000-based); 0 for no limit.
    #[arg(long, value_name = "RATE", value_parser = bwlimit)]
    pub bwlimit: Option<String>,
    /// Run this before the walk; if it fails, the run fails and nothing is published.
    /// A command line split as a shell would (quotes, backslashes), but run without one.
    #[arg(long, value_name = "COMMAND")]
    pub pre_command: Option<String>,
    /// Run this after the run, whatever its status, with the report as JSON on stdin and
    /// SNAPRING_STATUS, SNAPRING_RUN_ID, SNAPRING_SNAPSHOT set (split as --pre-command).
    #[arg(long, value_name = "COMMAND")]
    pub post_command: Option<String>,
    /// Print the run report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// Run as worker I (0-based) of N of one backup split across N processes
    /// (docs/scale-out.md); needs --run-id. Without it, JOB_COMPLETION_INDEX,
    /// SLURM_ARRAY_TASK_ID or AWS_BATCH_JOB_ARRAY_INDEX name the worker.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// The number of workers, where the engine's index variable does not give it
    /// [or SNAPRING_SHARDS].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// The id shared by all workers of one shard run (a Kubernetes Job's name, say)
    /// [or SNAPRING_RUN_ID; on Slurm: slurm-$SLURM_ARRAY_JOB_ID].
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// The repository password's file, for a restic repository (--dest file:// or s3://)
    /// [or SNAPRING_PASSWORD_FILE, SNAPRING_PASSWORD, RESTIC_PASSWORD_FILE,
    /// RESTIC_PASSWORD]
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Into a restic repository: record each entry's real access time, as restic's
    /// --with-atime (by default the modification time is recorded as the access time,
    /// as restic does).
    #[arg(long)]
    pub with_atime: bool,
    /// Into a restic repository: the hostname the snapshot records, its parent is
    /// picked by and --retain groups by, as restic's `backup --host` (default: this
    /// machine's). For a container whose hostname changes each run (a Kubernetes
    /// CronJob's pod): without it each run reads every file again and is its own
    /// retention group. Also SNAPRING_HOST, which (unlike the flag) backups into a
    /// hard-link store and shard workers leave alone, so it can be set for a whole
    /// machine or pod. [env: SNAPRING_HOST]
    #[arg(long, value_name = "NAME", value_parser = host)]
    pub host: Option<String>,
}

#[derive(Args)]
pub struct InitArgs {
    /// Where: file:///PATH (a local directory) or s3://BUCKET/PREFIX (AWS_* settings: docs/format.md).
    #[arg(long, value_parser = repo_url)]
    pub dest: String,
    /// The repository password's file, for a restic repository (--dest file:// or s3://)
    /// [or SNAPRING_PASSWORD_FILE, SNAPRING_PASSWORD, RESTIC_PASSWORD_FILE,
    /// RESTIC_PASSWORD]
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ForgetArgs {
    /// The restic repository: file:///PATH or s3://BUCKET/PREFIX.
    #[arg(long, value_parser = repo_url)]
    pub dest: String,
    /// The snapshots to forget: ids, unique id prefixes or `latest` (as `list` shows
    /// them and `restore` takes them); every one is resolved before any is removed.
    #[arg(value_name = "SNAPSHOT", conflicts_with_all = ["label", "retain"])]
    pub snapshots: Vec<String>,
    /// The label whose snapshots to thin out (snapring's `label=L` tag), as backup's
    /// `--label` (unchecked, `x,y` or `daily.0` matched no tag and forgot nothing).
    #[arg(long, requires = "retain", value_parser = label)]
    pub label: Option<String>,
    /// Keep the newest N snapshots of the label in each host/paths group.
    #[arg(long, value_name = "N", value_parser = retain, requires = "label")]
    pub retain: Option<u32>,
    /// Print each snapshot's verdict and reason; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The repository password's file [or SNAPRING_PASSWORD_FILE, SNAPRING_PASSWORD,
    /// RESTIC_PASSWORD_FILE, RESTIC_PASSWORD]
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct CopyArgs {
    /// The backup file system of the store (as for `backup --dest`) [default with
    /// --config: the job's dest and folder].
    #[arg(long, required_unless_present = "config", value_parser = dest_path())]
    pub dest: Option<PathBuf>,
    /// The store folder under --dest; default: --dest itself.
    #[arg(long, requires = "dest")]
    pub folder: Option<String>,
    /// TOML config file: the copy is of one of its jobs' store (its store, catalog and
    /// notifiers: a failed copy always notifies, a complete one with `notify_success`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The job of --config (optional when it has one job).
    #[arg(long, requires = "config")]
    pub job: Option<String>,
    /// After the copy, write its figures (the `snapring_copy_*` series of `/metrics`)
    /// into this directory for node_exporter's textfile collector (docs/monitoring.md).
    #[arg(long, value_name = "DIR")]
    pub textfile: Option<PathBuf>,
    /// The snapshot to copy: name (daily.0), run id, `latest` or @TIME.
    pub snapshot: String,
    /// The restic repository: file:///PATH or s3://BUCKET/PREFIX.
    #[arg(long, value_parser = copy_to)]
    pub to: String,
    /// The label tag in the repository [default: the snapshot's label]: as backup's
    /// `--label` (restic splits tags at commas: `x,store=/evil` wrote a tag of its own).
    #[arg(long, value_parser = label)]
    pub label: Option<String>,
    /// After the copy, keep the copies of the newest N store runs of the label, and the
    /// newest whole copy (docs/format.md, "Copying a store's snapshots").
    #[arg(long, value_name = "N", value_parser = retain)]
    pub retain: Option<u32>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The repository password's file [or SNAPRING_PASSWORD_FILE, SNAPRING_PASSWORD,
    /// RESTIC_PASSWORD_FILE, RESTIC_PASSWORD]
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct PruneArgs {
    /// The restic repository: file:///PATH or s3://BUCKET/PREFIX.
    #[arg(long, value_parser = repo_url)]
    pub dest: String,
    /// Print what would be kept, repacked and deleted; change nothing (takes no lock).
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The repository password's file [or SNAPRING_PASSWORD_FILE, SNAPRING_PASSWORD,
    /// RESTIC_PASSWORD_FILE, RESTIC_PASSWORD]
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Give up the shard runs not yet published (their files under snapring/shards/),
    /// so their committed units' packs are pruned; without it, prune keeps what they
    /// committed, for their reruns to publish.
    #[arg(long)]
    pub drop_unfinished_runs: bool,
}

#[derive(Args)]
pub struct ListArgs {
    /// The store: <dest>/<folder>, or a restic repository: file:///PATH or s3://BUCKET/PREFIX.
    #[arg(long, value_parser = dest_path())]
    pub dest: PathBuf,
    /// Store folder under --dest (as `backup --folder` wrote it): the store is
    /// <dest>/<folder>.
    #[arg(long, value_parser = folder)]
    pub folder: Option<String>,
    /// Also compute the space only each snapshot uses (walks every snapshot).
    #[arg(long)]
    pub space: bool,
    /// File-system calls in flight for --space [default: 64 on NFS/FUSE, 4 per CPU
    /// on local disks]
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Print the result as JSON on stdout: a store's newest first, as its table; a
    /// repository's oldest first, as restic's `snapshots --json` (its table is newest
    /// first).
    #[arg(long)]
    pub json: bool,
    /// The repository password's file, for a restic repository (--dest file:// or s3://)
    /// [or SNAPRING_PASSWORD_FILE, SNAPRING_PASSWORD, RESTIC_PASSWORD_FILE,
    /// RESTIC_PASSWORD]
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The store: <dest>/<folder> [default with --config: the job's dest and folder], or a
    /// restic repository: file:///PATH or s3://BUCKET/PREFIX.
    #[arg(long, required_unless_present = "config", value_parser = dest_path())]
    pub dest: Option<PathBuf>,
    /// Store folder under --dest (as `backup --folder` wrote it): the store is
    /// <dest>/<folder>.
    #[arg(long, value_parser = folder, requires = "dest")]
    pub folder: Option<String>,
    /// TOML config file: the restore runs for one of its jobs (its store, catalog and
    /// notifiers).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The job of --config (optional when it has one job).
    #[arg(long, requires = "config")]
    pub job: Option<String>,
    /// Snapshot: name (daily.2), run id, `latest`, or @TIME (the newest taken at or
    /// before TIME, e.g. @2026-11-20T02:00, UTC unless an offset is given).
    pub snapshot: String,
    /// Directory to restore into (created if missing).
    #[arg(long, value_parser = path())]
    pub to: PathBuf,
    /// Restore only this path of the snapshot (a directory or a file), to the same
    /// relative place under --to.
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Put --path straight into --to: a directory's contents, or the file itself.
    #[arg(long, requires = "path")]
    pub flat: bool,
    /// Replace existing entries that differ from the snapshot.
    #[arg(long)]
    pub overwrite: bool,
    /// Also delete what the snapshot does not have, inside the restored subtree only
    /// (never what the snapshot's exclusions left out: it was not backed up).
    #[arg(long, conflicts_with = "overwrite")]
    pub mirror: bool,
    /// With --flat --mirror of a directory: --to holds nothing but this restore, so
    /// whatever else is in it may be deleted. Without it that restore is refused when
    /// --to has entries the directory does not have (they would be deleted).
    #[arg(long)]
    pub to_is_dedicated: bool,
    /// Print what would be created (+), replaced (~), deleted (-) and left as a
    /// conflict (!); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// File-system calls in flight [default: 64 on NFS/FUSE, 4 per CPU on local disks]
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// The repository password's file, for a restic repository (--dest file:// or s3://)
    /// [or SNAPRING_PASSWORD_FILE, SNAPRING_PASSWORD, RESTIC_PASSWORD_FILE,
    /// RESTIC_PASSWORD]
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct DiffArgs {
    /// The store: <dest>/<folder>, or a restic repository: file:///PATH or s3://BUCKET/PREFIX.
    #[arg(long, value_parser = dest_path())]
    pub dest: PathBuf,
    /// Store folder under --dest (as `backup --folder` wrote it): the store is
    /// <dest>/<folder>.
    #[arg(long, value_parser = folder)]
    pub folder: Option<String>,
    /// The older snapshot: name (daily.3), run id, `latest` or @TIME (in a repository:
    /// `latest`, an id or a unique id prefix).
    pub from: String,
    /// The newer snapshot.
    pub to: Option<String>,
    /// Compare with this live directory instead of a second snapshot.
    #[arg(long, value_name = "DIR", value_parser = path())]
    pub against: Option<PathBuf>,
    /// With --against: stay on DIR's file system (a directory on another one is compared
    /// as a directory, its contents not) [default: as the snapshot's backup did]
    #[arg(short = 'x', long, requires = "against")]
    pub one_file_system: bool,
    /// File-system calls in flight [default: 64 on NFS/FUSE, 4 per CPU on local disks]
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The repository password's file, for a restic repository (--dest file:// or s3://)
    /// [or SNAPRING_PASSWORD_FILE, SNAPRING_PASSWORD, RESTIC_PASSWORD_FILE,
    /// RESTIC_PASSWORD]
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The store: <dest>/<folder>, or a restic repository: file:///PATH or s3://BUCKET/PREFIX
    /// (every blob the snapshots use is re-read and re-hashed).
    #[arg(long, value_parser = dest_path())]
    pub dest: PathBuf,
    /// Store folder under --dest (as `backup --folder` wrote it): the store is
    /// <dest>/<folder>.
    #[arg(long, value_parser = folder)]
    pub folder: Option<String>,
    /// Snapshots to verify [default: the newest].
    pub snapshots: Vec<String>,
    /// Verify every snapshot.
    #[arg(long, conflicts_with = "snapshots")]
    pub all: bool,
    /// Compare the snapshot's manifest with this live tree instead (hashing every file).
    #[arg(long, value_name = "SRC", value_parser = path())]
    pub against: Option<PathBuf>,
    /// With --against: stay on SRC's file system (a directory on another one is compared
    /// as a directory, its contents not) [default: as the snapshot's backup did]
    #[arg(short = 'x', long, requires = "against")]
    pub one_file_system: bool,
    /// File-system calls in flight [default: 64 on NFS/FUSE, 4 per CPU on local disks]
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The repository password's file, for a restic repository (--dest file:// or s3://)
    /// [or SNAPRING_PASSWORD_FILE, SNAPRING_PASSWORD, RESTIC_PASSWORD_FILE,
    /// RESTIC_PASSWORD]
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct HistoryArgs {
    /// The store: <dest>/<folder> (filters runs; required with PATH), or with PATH a
    /// restic repository: file:///PATH or s3://BUCKET/PREFIX.
    #[arg(long, value_parser = dest_path())]
    pub dest: Option<PathBuf>,
    /// Store folder under --dest (as `backup --folder` wrote it): the store is
    /// <dest>/<folder>.
    #[arg(long, value_parser = folder, requires = "dest")]
    pub folder: Option<String>,
    /// Path relative to the snapshot root (in a repository: to the snapshot's source):
    /// list its versions across snapshots.
    pub path: Option<PathBuf>,
    /// Only runs of this job.
    #[arg(long)]
    pub job: Option<String>,
    /// Only backups, only restores or only copies (`snapring copy`).
    #[arg(long, value_parser = ["backup", "restore", "copy"])]
    pub kind: Option<String>,
    /// Only runs started within this long (30d, 12h) or since this time.
    #[arg(long)]
    pub since: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The repository password's file, for a restic repository (--dest file:// or s3://)
    /// [or SNAPRING_PASSWORD_FILE, SNAPRING_PASSWORD, RESTIC_PASSWORD_FILE,
    /// RESTIC_PASSWORD]
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct ShowArgs {
    /// Run id (or a unique prefix of it).
    pub run: String,
    /// Look the run up in this store when the catalog does not have it.
    #[arg(long, value_parser = dest_path())]
    pub dest: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct StatsArgs {
    #[arg(long)]
    pub job: Option<String>,
    /// The backups' figures, or the copies' (`snapring copy`, per repository).
    #[arg(long, value_parser = ["backup", "copy"], default_value = "backup")]
    pub kind: String,
    /// Only runs of this store.
    #[arg(long, value_parser = dest_path())]
    pub dest: Option<PathBuf>,
    #[arg(long)]
    pub since: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// The job's name (a [job.NAME] table).
    pub job: String,
    #[arg(
        long,
        env = "SNAPRING_CONFIG",
        default_value = "/etc/snapring/snapring.toml"
    )]
    pub config: PathBuf,
    /// The config file's name in messages, when `--config` is another way to its text
    /// (the daemon's running configuration, read through a descriptor).
    #[arg(long, hide = true, value_name = "FILE")]
    pub config_name: Option<PathBuf>,
    /// The umask the user gave the daemon that starts this run (octal), for the run's
    /// hooks and command notifiers: the run itself starts under the daemon's working
    /// umask, the owner's bits taken out.
    #[arg(long, hide = true, value_name = "OCTAL", value_parser = octal_umask)]
    pub user_umask: Option<u32>,
    /// Print the run report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// After the run, write its job's metrics to DIR/snapring-<job>.prom for
    /// node_exporter's textfile collector (docs/monitoring.md).
    #[arg(long, value_name = "DIR")]
    pub textfile: Option<PathBuf>,
}

#[derive(Args)]
pub struct DaemonArgs {
    #[arg(
        long,
        env = "SNAPRING_CONFIG",
        default_value = "/etc/snapring/snapring.toml"
    )]
    pub config: PathBuf,
}

#[derive(Args)]
pub struct ServeArgs {
    #[arg(
        long,
        env = "SNAPRING_CONFIG",
        default_value = "/etc/snapring/snapring.toml"
    )]
    pub config: PathBuf,
    /// Address and port to listen on; any address but loopback needs a token.
    #[arg(long, value_name = "ADDR:PORT", default_value = snapring::serve::DEFAULT_LISTEN, value_parser = listen)]
    pub listen: std::net::SocketAddr,
    /// A file holding the token clients must send as `Authorization: Bearer TOKEN`
    /// [else the environment variable SNAPRING_SERVE_TOKEN, if set].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct NextArgs {
    /// A job of --config.
    #[arg(long, conflicts_with = "schedule")]
    pub job: Option<String>,
    #[arg(
        long,
        env = "SNAPRING_CONFIG",
        default_value = "/etc/snapring/snapring.toml"
    )]
    pub config: PathBuf,
    /// A schedule: "0 2 * * *", "@daily" or "cron(0 2 * * ? *)".
    #[arg(long)]
    pub schedule: Option<String>,
    /// IANA time zone for --schedule (default UTC).
    #[arg(long)]
    pub timezone: Option<String>,
    /// Count from this time instead of now: RFC 3339, seconds optional
    /// (2026-12-07T03:00+01:00), or YYYY-MM-DD[ HH:MM[:SS]] in UTC.
    #[arg(long)]
    pub at: Option<String>,
    /// How many times to print (1 to 10000).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub count: u64,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct FinalizeArgs {
    #[command(flatten)]
    pub run: ShardRunArgs,
    /// Config file whose job's post_command, notifiers and catalog serve the run when
    /// this command publishes it (as the last worker's would).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The job in --config (needed when it has several).
    #[arg(long, requires = "config")]
    pub job: Option<String>,
    /// Publish the run even if it keeps no file (only directories), or fewer than a
    /// tenth of the files of the label's previous snapshot when that held at least 100:
    /// refused otherwise, as a backup without --allow-empty is.
    #[arg(long)]
    pub allow_empty: bool,
}

#[derive(Args)]
pub struct ShardRunArgs {
    /// Backup file system (where the store lives), or the restic repository
    /// (file:///PATH or s3://BUCKET/PREFIX) a run backs up into.
    #[arg(long, value_parser = dest_path())]
    pub dest: PathBuf,
    /// A restic repository's password file [else SNAPRING_PASSWORD_FILE,
    /// SNAPRING_PASSWORD or RESTIC_PASSWORD_FILE].
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Store folder under --dest.
    #[arg(long)]
    pub folder: Option<String>,
    /// The shard run [or SNAPRING_RUN_ID].
    #[arg(long, env = "SNAPRING_RUN_ID")]
    pub run_id: String,
    /// Deleting expired snapshots: file-system calls in flight.
    #[arg(long, default_value_t = 16)]
    pub jobs: usize,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

// The values a flag can be checked for on its own, with the library's own checks (as
// `config check` applies them to a file): a bad one is a usage error (exit 64) naming
// the flag and the value, not a failed run. clap prints `invalid value 'V' for
// '--FLAG <FLAG>': ` before the message returned here.

/// `--retain`: 1 or more.
fn retain(s: &str) -> Result<u32, String> {
    let n: i64 = s
        .parse()
        .map_err(|_| "give a whole number of snapshots, 1 or more".to_string())?;
    snapring::engine::options::check_retain(n)?;
    Ok(n as u32)
}

/// `--label`: letters, digits, `_`, `-`.
/// `--host`: not empty, no control characters.
fn host(s: &str) -> Result<String, String> {
    snapring::engine::options::check_host(s)?;
    Ok(s.to_string())
}

/// `--listen`: an IP address and a port, worded as `config check` words `[server]
/// listen` (clap's own "invalid socket address syntax" did not say what to give).
fn listen(s: &str) -> Result<std::net::SocketAddr, String> {
    snapring::serve::parse_listen(s)
}

fn label(s: &str) -> Result<String, String> {
    snapring::engine::options::check_label(s)?;
    Ok(s.to_string())
}

/// `--jobs`: 0 (the default) to 4096.
fn jobs(s: &str) -> Result<usize, String> {
    let n: i64 = s
        .parse()
        .map_err(|_| "give a whole number, 1 to 4096 (0 for the default)".to_string())?;
    snapring::engine::options::check_jobs(n)?;
    Ok(n as usize)
}

/// `--window`: a duration of at least 1s.
fn window(s: &str) -> Result<String, String> {
    let d = snapring::util::parse_duration(s)?;
    snapring::engine::options::check_window(d)?;
    Ok(s.to_string())
}

/// `--bwlimit`: a rate (50MiB, 800K) or 0.
fn bwlimit(s: &str) -> Result<String, String> {
    snapring::throttle::parse_rate(s)?;
    Ok(s.to_string())
}

/// `--dest DEST --folder F`: the store `DEST/F`. A restic repository (`file://`,
/// `s3://`) has no folders: refused (exit 64).
pub fn in_folder(dest: &mut PathBuf, folder: Option<String>) -> anyhow::Result<()> {
    let Some(f) = folder else {
        return Ok(());
    };
    if super::restic::is_repo(Some(dest)) {
        return Err(anyhow::Error::new(super::exit_code::Usage(format!(
            "--folder names a store's folder under --dest; a restic repository ({}) has none",
            snapring::relpath::shown(dest)
        ))));
    }
    *dest = dest.join(f);
    Ok(())
}

/// `--folder`: a relative path without `..`.
fn folder(s: &str) -> Result<String, String> {
    snapring::relpath::RelPath::new(s.as_bytes()).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// `run --user-umask`: an octal umask (at most 0777).
fn octal_umask(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(u) if u <= 0o777 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(u),
        _ => Err(format!("{s:?} is not an octal umask (0000 to 0777)")),
    }
}

/// `--prefix`: a relative path without `..` (leading and trailing `/` are dropped).
fn prefix(s: &str) -> Result<String, String> {
    snapring::relpath::RelPath::new(s.trim_matches('/').as_bytes()).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// A path flag's value, any bytes (a directory name need not be UTF-8): refused when it
/// starts with `~`, which only a shell expands, and only unquoted at the start of a word
/// (`--to=~/x` and `--to '~/x'` reach snapring as they are): taken literally it made a
/// directory named `~` in the working directory.
/// A repository's `--dest` (file:///PATH or s3://BUCKET/PREFIX), its form checked.
/// `copy --to`: a repository's URL, its form checked (a mistake in it exited 1 and was
/// recorded as a failed copy, saying `--dest`).
fn copy_to(s: &str) -> Result<String, String> {
    use snapring::restic::backend;
    let said = |e: String| e.replace("--dest ", "--to ");
    if let Some(e) = backend::restic_syntax(s).or_else(|| backend::url_form(s)) {
        return Err(said(e));
    }
    if !(s.starts_with("file://") || s.starts_with("s3://")) {
        return Err(format!(
            "--to {s:?}: expected a restic repository, file:///ABSOLUTE/PATH or s3://BUCKET/PREFIX"
        ));
    }
    Ok(s.to_string())
}

fn repo_url(s: &str) -> Result<String, String> {
    match snapring::restic::backend::url_form(s) {
        Some(e) => Err(e),
        None => Ok(s.to_string()),
    }
}

/// A `--dest` that is a store's path or a repository's URL: as [`path`], and a URL's
/// form checked (`--dest s3://` exited 1 as a failed run, not 64).
fn dest_path() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser;
    clap::builder::OsStringValueParser::new().try_map(|s| {
        let p = checked_path(s)?;
        match p.to_str().and_then(snapring::restic::backend::url_form) {
            Some(e) => Err(e),
            None => Ok(p),
        }
    })
}

fn path() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser;
    clap::builder::OsStringValueParser::new().try_map(checked_path)
}

fn checked_path(s: std::ffi::OsString) -> Result<PathBuf, String> {
    use std::os::unix::ffi::OsStrExt;
    let b = s.as_bytes();
    if let Some(tilde) = b.strip_prefix(b"~") {
        let (user, rest) = match tilde.iter().position(|&c| c == b'/') {
            Some(i) => (&tilde[..i], &tilde[i + 1..]),
            None => (tilde, &b""[..]),
        };
        // `~` is $HOME, `~user` that user's home directory (as the shell reads them).
        let home = match user {
            b"" => std::env::var_os("HOME").map(PathBuf::from),
            u => std::str::from_utf8(u)
                .ok()
                .and_then(snapring::util::home_of)
                .map(PathBuf::from),
        };
        let example = home
            .map(|h| {
                let p = h.join(std::ffi::OsStr::from_bytes(rest));
                format!(", e.g. {}", snapring::relpath::shown(&p))
            })
            .unwrap_or_default();
        return Err(format!(
            "\"{}\" starts with `~`, which the shell did not expand (it does only for an unquoted word, not after `=`); give the path in full{example}",
            snapring::relpath::shown(std::path::Path::new(&s))
        ));
    }
    Ok(PathBuf::from(s))
}
