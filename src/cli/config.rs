//! `snapring config check FILE`: every problem of a config file, one line each
//! (`FILE:LINE:COL: KEY: MESSAGE`), then their count; or `FILE: ok`. Exit 1 when there
//! are problems.

use std::path::Path;

use super::exit_code::ExitCode;
use super::print::outln;

/// `snapring config check FILE`.
pub fn check(file: &Path) -> anyhow::Result<ExitCode> {
    let problems = snapring::config::check(file);
    for p in &problems {
        outln!("{p}");
    }
    if problems.is_empty() {
        outln!("{}: ok", snapring::relpath::shown(file));
        Ok(ExitCode::Complete)
    } else {
        outln!(
            "{}: {}",
            snapring::relpath::shown(file),
            snapring::config::count(problems.len())
        );
        Ok(ExitCode::Failed)
    }
}

/// A job named on the command line that the config lacks (or none named where the
/// config has several): a usage error (exit 64, nothing ran), not a broken file.
pub fn job_usage(e: snapring::error::Error) -> anyhow::Error {
    match e {
        snapring::error::Error::Config(m) => super::exit_code::usage!("{m}"),
        e => e.into(),
    }
}
