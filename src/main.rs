//! The `snapring` command: parses arguments, sets up logging, hands the command to its
//! handler in `cli/` and maps the outcome to an exit code (0 complete, 2 partial,
//! 3 incomplete, 1 failed, 64 usage error; see `cli/exit_code.rs`). The work is in the
//! library.

mod cli;

use cli::args::{CatalogCmd, Cli, Cmd, ConfigCmd, RepairCmd, in_folder};
use cli::catalog_choice::CatalogChoice;
use cli::exit_code::ExitCode;
use cli::print::errln;
use cli::{backup, catalog, config, daemon, inspect, list, restic, restore, serve, shard};

fn main() {
    // Before any thread starts: the umask's owner bits do not stop snapring's own work.
    snapring::fsx::owner_usable_umask();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            // `--help` and `--version` go to stdout and exit 0; a usage error has its own
            // code, apart from the run statuses. A closed pipe is not worth a panic, nor
            // an error (the output stops, as any command's); any other write error on
            // stdout (`>/dev/full`) is one, as after a command: the help was not shown.
            let printed = e
                .print()
                .and_then(|()| std::io::Write::flush(&mut std::io::stdout()));
            let code = if e.use_stderr() {
                ExitCode::Usage
            } else {
                match printed {
                    Err(w) if w.kind() != std::io::ErrorKind::BrokenPipe => {
                        errln!("snapring: error: cannot write to stdout: {w}");
                        ExitCode::Failed
                    }
                    _ => ExitCode::Complete,
                }
            };
            std::process::exit(code.code());
        }
    };
    let log = cli::logging::LogFlags {
        verbose: args.verbose,
        json: args.log_format == "json",
    };
    cli::logging::init(log.verbose, log.json);
    let on_nfs = match catalog_on_nfs_env() {
        Ok(on_nfs) => args.catalog_on_nfs || on_nfs,
        Err(e) => {
            errln!("snapring: error: {e}");
            std::process::exit(ExitCode::Usage.code());
        }
    };
    let flag = args.catalog.or_else(|| {
        std::env::var_os("SNAPRING_CATALOG")
            .filter(|v| !v.is_empty())
            .map(Into::into)
    });
    let cat = CatalogChoice::from_flags(flag, on_nfs);
    let mut code = match run(args.cmd, &cat, &log) {
        Ok(code) => code,
        // SIGINT/SIGTERM while a command was opening the repository (a hung S3
        // endpoint's request given up): stopped, as the command's own stops are.
        Err(e)
            if matches!(
                e.downcast_ref::<snapring::restic::Error>(),
                Some(snapring::restic::Error::Cancelled)
            ) =>
        {
            errln!("snapring: interrupted");
            ExitCode::Incomplete
        }
        Err(e) => {
            errln!("snapring: error: {}", message(&e));
            if e.downcast_ref::<cli::exit_code::Usage>().is_some() {
                ExitCode::Usage
            } else if matches!(
                e.downcast_ref::<snapring::restic::Error>(),
                Some(snapring::restic::Error::Locked(_))
            ) {
                // A repository locked by another process (a `prune`, restic's `mount`
                // or `check`): nothing was done, try again later, as a backup exits.
                ExitCode::Retry
            } else {
                match e.downcast_ref::<snapring::error::Error>() {
                    Some(snapring::error::Error::Refused(_)) => ExitCode::Usage,
                    // Another run holds the store: nothing was lost, try again later
                    // (as a locked restic repository and a shard worker exit).
                    Some(snapring::error::Error::Locked { .. }) => ExitCode::Retry,
                    _ => ExitCode::Failed,
                }
            }
        }
    };
    if let Some(e) = cli::print::stdout_error()
        && code == ExitCode::Complete
    {
        errln!("snapring: error: cannot write to stdout: {e}");
        code = ExitCode::Failed;
    }
    std::process::exit(code.code());
}

/// `SNAPRING_CATALOG_ON_NFS`: `1`, `true`, `yes` or `on` allow the catalog on NFS;
/// unset, empty, `0`, `false`, `no` or `off` do not (any case); anything else is an
/// error. (`SNAPRING_CATALOG`, read beside it, takes any non-empty value.)
fn catalog_on_nfs_env() -> Result<bool, String> {
    let Some(v) = std::env::var_os("SNAPRING_CATALOG_ON_NFS") else {
        return Ok(false);
    };
    let s = v.to_string_lossy().to_ascii_lowercase();
    match s.as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "SNAPRING_CATALOG_ON_NFS={v:?}: give 1 (allow the catalog on NFS) or 0"
        )),
    }
}

/// The command line, as `Cli::try_parse` reads it, but for an environment variable
/// an option reads (`SNAPRING_CATALOG`, `SNAPRING_CONFIG`, …) set to the empty
/// string: that is taken as unset (as an empty `AWS_REGION` or `HOME` is), where clap
/// would refuse the command for want of a value the user never gave on the command line.
fn parse_args() -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = unset_empty_envs(Cli::command());
    let mut m = cmd.clone().try_get_matches()?;
    Cli::from_arg_matches_mut(&mut m).map_err(|e| e.format(&mut cmd))
}

/// `cmd` and its subcommands without the environment variables of their options that
/// are set to the empty string.
fn unset_empty_envs(mut cmd: clap::Command) -> clap::Command {
    let empty: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| {
            a.get_env()
                .is_some_and(|v| std::env::var_os(v).is_some_and(|v| v.is_empty()))
        })
        .map(|a| a.get_id().clone())
        .collect();
    for id in empty {
        cmd = cmd.mut_arg(id, |a| a.env(None));
    }
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for s in subs {
        cmd = cmd.mut_subcommand(s, unset_empty_envs);
    }
    cmd
}

/// Runs one command.
fn run(
    mut cmd: Cmd,
    cat: &CatalogChoice,
    log: &cli::logging::LogFlags,
) -> anyhow::Result<ExitCode> {
    // `--folder` of the commands that read a store: the store is DEST/FOLDER.
    match &mut cmd {
        Cmd::List(a) => in_folder(&mut a.dest, a.folder.take())?,
        Cmd::Diff(a) => in_folder(&mut a.dest, a.folder.take())?,
        Cmd::Verify(a) => in_folder(&mut a.dest, a.folder.take())?,
        Cmd::Restore(a) => {
            if let Some(d) = &mut a.dest {
                in_folder(d, a.folder.take())?;
            }
        }
        Cmd::History(a) => {
            if let Some(d) = &mut a.dest {
                in_folder(d, a.folder.take())?;
            }
        }
        _ => {}
    }
    match cmd {
        Cmd::Init(a) => restic::init(a),
        Cmd::Backup(a) => backup::backup(*a, cat),
        Cmd::Run(a) => backup::run_job(a, cat),
        Cmd::Forget(a) => restic::forget(a),
        Cmd::Prune(a) => restic::prune(a),
        Cmd::Repair {
            cmd: RepairCmd::Index(a),
        } => restic::repair_index(a),
        Cmd::Copy(a) => restic::copy(a, cat),
        Cmd::Restore(a) => match restic::restore_source(&a)? {
            Some((dest, pw)) => restic::restore(a, &dest, pw.as_deref(), cat),
            None => restore::restore(a, cat),
        },
        Cmd::List(a) if restic::is_repo(Some(&a.dest)) => restic::list(a),
        Cmd::List(a) => list::list(a),
        Cmd::Diff(a) if restic::is_repo(Some(&a.dest)) => restic::diff(a),
        Cmd::Diff(a) => inspect::diff(a),
        Cmd::Verify(a) if restic::is_repo(Some(&a.dest)) => restic::verify(a),
        Cmd::Verify(a) => inspect::verify(a),
        Cmd::History(mut a) => match a.path.take() {
            Some(path) if restic::is_repo(a.dest.as_deref()) => restic::path_history(&path, a),
            Some(path) => inspect::path_history(&path, a),
            None => catalog::history(a, cat),
        },
        Cmd::Show(a) => catalog::show(a, cat),
        Cmd::Stats(a) => catalog::stats(a, cat),
        Cmd::Catalog {
            cmd: CatalogCmd::Rebuild { dest },
        } => catalog::rebuild(&dest, cat),
        Cmd::Catalog {
            cmd: CatalogCmd::Check,
        } => catalog::check(cat),
        Cmd::Daemon(a) => daemon::daemon(a, cat, log),
        Cmd::Next(a) => daemon::next(a),
        Cmd::Finalize(a) => shard::finalize(a, cat),
        Cmd::Status(a) => shard::status(a),
        Cmd::Serve(a) => serve::serve(a, cat),
        Cmd::Config {
            cmd: ConfigCmd::Check { file },
        } => config::check(&file),
    }
}

/// An error and its causes, each once: `cannot open store X: Not a directory (os error
/// 20)`. The library's I/O errors already end with their cause, which `{:#}` printed a
/// second time (`…: Not a directory (os error 20): Not a directory (os error 20)`).
fn message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if msg.is_empty() {
            msg = c;
        } else if !msg.contains(&c) {
            msg = format!("{msg}: {c}");
        }
    }
    msg
}
