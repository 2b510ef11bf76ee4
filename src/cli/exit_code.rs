//! The process exit codes, in one place: 0 complete, 2 partial, 3 incomplete, 1 failed,
//! 64 usage error. A backup or restore maps its run status here; `diff` and `verify` use
//! `Partial` for "finished, but something could not be read or differs", `repair index`
//! for "repaired, but a snapshot references data no pack holds"; any error is
//! `Failed`; a command line clap rejects (a flag's value checked by its `value_parser`
//! in `args.rs`), or a handler rejects with a `Usage` error (flags that do not go
//! together, a value only the handler can read), is `Usage`. A closed stdout (`| head -1`) is
//! not an error: the output stops and the command keeps its own code (`cli/print.rs`).

use snapring::report::Status;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// 0: done, nothing amiss (a clean `verify`, a config without problems).
    Complete = 0,
    /// 1: an error stopped the command, or a config check found problems.
    Failed = 1,
    /// 2: done, with per-entry problems (a `partial` run, unreadable entries, damage
    /// found by `verify`).
    Partial = 2,
    /// 3: interrupted or out of time (an `incomplete` run); the next run resumes.
    Incomplete = 3,
    /// 64 (EX_USAGE from sysexits.h): the command line is wrong (unknown flag, missing
    /// or bad value), or it asks for something refused because it would lose data
    /// (`Error::Refused`: `restore --flat --mirror` into a `--to` holding other
    /// entries); nothing ran. Apart from 2 so a script can tell it from `partial`.
    Usage = 64,
    /// 75 (EX_TEMPFAIL): try again later, nothing was lost: any command found the
    /// store held by another run (`Error::Locked`: a second backup, a `prune` while a
    /// backup runs); a shard worker or `finalize` found the store held by another run, or units still being worked on,
    /// or its repository not reachable once the retries were spent (docs/scale-out.md); a backup or `copy` found its restic repository locked by
    /// another process (a `prune`; docs/format.md, "Locks"), a `prune` or `forget` found it
    /// locked by another (a backup); a `daemon` found another daemon running on its config or
    /// catalog (docs/daemon.md). Also: the repository's storage does not answer (a
    /// restore from a local repository whose disk or NFS server is down: its packs and
    /// `config` answer EIO; S3 unreachable past its retries: refused or reset
    /// connections, timeouts, HTTP 500/502/503/504), the same command run later resumes.
    /// A TLS certificate that does not verify, an S3 host name that does not exist (after
    /// the retries) and refused credentials (403) are 1: fix them first. A retry policy
    /// may retry this one; not 1 or 64.
    Retry = 75,
}

/// A mistake on the command line found past clap: flags that do not go together, or a
/// value only the handler can check (`--since`, `--schedule` with its `--timezone`).
/// `main` prints it as any error and exits 64, not 1: nothing ran. A config file's
/// mistakes are not this (`Error::Config`, exit 1).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// `return Err(usage!("--flag {v:?}: …"))`: an `anyhow::Error` holding a `Usage`.
macro_rules! usage {
    ($($t:tt)*) => {
        anyhow::Error::new($crate::cli::exit_code::Usage(format!($($t)*)))
    };
}
pub(crate) use usage;

impl ExitCode {
    /// The number handed to the operating system.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// `Complete` when `ok`, else `Partial` (for the read-only checks).
    pub fn clean_or_partial(ok: bool) -> ExitCode {
        if ok {
            ExitCode::Complete
        } else {
            ExitCode::Partial
        }
    }
}

impl From<Status> for ExitCode {
    /// A run that never concluded (`running`) counts as failed.
    fn from(s: Status) -> ExitCode {
        match s {
            Status::Complete => ExitCode::Complete,
            Status::Partial => ExitCode::Partial,
            Status::Incomplete => ExitCode::Incomplete,
            Status::Failed | Status::Running => ExitCode::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The library writes `Status::exit_code` into run records; the process must exit
    /// with the same number.
    #[test]
    fn agrees_with_the_library() {
        for s in [
            Status::Running,
            Status::Complete,
            Status::Partial,
            Status::Incomplete,
            Status::Failed,
        ] {
            assert_eq!(ExitCode::from(s).code(), s.exit_code(), "{s:?}");
        }
    }
}
