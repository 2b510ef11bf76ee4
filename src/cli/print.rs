//! Rendering helpers shared by the command modules: JSON on stdout, byte sizes, the
//! `-` for a missing value, the stream a report goes to, and one line per problem.
//! Each command module keeps its own `print_*` functions for its tables and summaries.

use std::io::Write;

use serde::Serialize;
use snapring::report::Problem;

/// Prints `value` as pretty JSON on stdout (the `--json` form of every command).
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A byte count for people: `1.50 MiB`.
pub fn human(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// The placeholder for a value that is not known.
pub fn dash() -> String {
    "-".to_string()
}

/// Where a run's summary goes: stderr for a dry run (its plan is the output), else
/// stdout.
pub fn summary_stream(dry_run: bool) -> Box<dyn Write> {
    if dry_run {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    }
}

/// `Unreadable: a/b (open: Permission denied)`, indented, on stderr.
pub fn problem(p: &Problem) {
    eprintln!("  {:?}: {} ({}: {})", p.kind, p.path, p.action, p.error);
}
