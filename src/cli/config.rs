//! `snapring config check FILE`: every problem of a config file with its line, or
//! `FILE: ok`; exit 1 when there are problems.

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
        Ok(ExitCode::Failed)
    }
}
