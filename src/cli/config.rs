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
        outln!("{}: ok", file.display());
        Ok(ExitCode::Complete)
    } else {
        outln!(
            "{}: {}",
            file.display(),
            snapring::config::count(problems.len())
        );
        Ok(ExitCode::Failed)
    }
}
