//! Rendering helpers shared by the command modules: JSON on stdout, byte sizes, the
//! `-` for a missing value, the stream a report goes to, and one line per problem.
//! Each command module keeps its own `print_*` functions for its tables and summaries.
//!
//! All output goes through `outln!`/`errln!` (or the `Out`/`Err` writers), never
//! `println!`: a reader that goes away (`snapring history | head -1`) closes stdout, and
//! `println!` would panic on the broken pipe. Here the rest of the output is dropped
//! quietly and the command finishes with its usual exit code. Any other write error on
//! stdout (a full disk behind `>`) is remembered and turns a clean exit into 1.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use snapring::report::Problem;

/// Set once stdout failed: nothing more is written to it.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
/// The first stdout error that was not a broken pipe.
static STDOUT_ERROR: OnceLock<String> = OnceLock::new();

/// Stdout that never fails: after a broken pipe (or any error) the rest is dropped.
pub struct Out;

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !STDOUT_CLOSED.load(Ordering::Relaxed)
            && let Err(e) = std::io::stdout().write_all(buf)
        {
            closed(e);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !STDOUT_CLOSED.load(Ordering::Relaxed)
            && let Err(e) = std::io::stdout().flush()
        {
            closed(e);
        }
        Ok(())
    }
}

fn closed(e: std::io::Error) {
    STDOUT_CLOSED.store(true, Ordering::Relaxed);
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        let _ = STDOUT_ERROR.set(e.to_string());
    }
}

/// A stdout error other than a broken pipe, if there was one.
pub fn stdout_error() -> Option<&'static str> {
    STDOUT_ERROR.get().map(String::as_str)
}

/// Stderr that never fails (there is nowhere left to report a failure).
pub struct ErrOut;

impl Write for ErrOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// `println!` that survives a closed stdout (see the module comment).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!($crate::cli::print::Out, $($arg)*);
    }};
}
pub(crate) use outln;

/// `eprintln!` that survives a closed stderr.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!($crate::cli::print::ErrOut, $($arg)*);
    }};
}
pub(crate) use errln;

/// Prints `value` as pretty JSON on stdout (the `--json` form of every command).
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
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
        Box::new(ErrOut)
    } else {
        Box::new(Out)
    }
}

/// `Unreadable: a/b (open: Permission denied)`, indented, on stderr.
pub fn problem(p: &Problem) {
    errln!("  {:?}: {} ({}: {})", p.kind, p.path, p.action, p.error);
}

/// `diff`'s lines, for a store and a repository alike: one line per difference,
/// unreadable paths on stderr, then the counts (added, removed, changed, metadata only)
/// and the one-file-system note.
pub fn diff_lines(
    (from, to): (&str, &str),
    [added, removed, changed, metadata]: [u64; 4],
    differences: &[snapring::compare::Difference],
    problems: &[(String, String)],
    one_fs: &snapring::compare::OneFsSummary,
    (not_compared, damaged_manifests): (&[(String, String)], &[String]),
) {
    for d in differences {
        outln!("{} {}  {}", d.change.sign(), d.path, d.detail.join(", "));
    }
    for (p, e) in problems {
        errln!("snapring: cannot read {p}: {e}");
    }
    for (p, e) in not_compared {
        errln!("snapring: {p}: contents not compared, the manifest is damaged there: {e}");
    }
    outln!(
        "{from} -> {to}: {added} added, {removed} removed, {changed} changed, {metadata} metadata only"
    );
    if let Some(note) = one_fs_note(one_fs) {
        outln!("  {note}");
    }
    if let Some(note) = damaged_manifest_note(not_compared.len(), damaged_manifests, "compared") {
        outln!("  {note}");
    }
}

/// The summary's note on damaged manifests (cut short, overwritten) a `diff` or
/// `verify` met: which files, and how many directories' contents it did not `done`
/// (`compared`, `checked`) for it.
pub fn damaged_manifest_note(dirs: usize, manifests: &[String], done: &str) -> Option<String> {
    if manifests.is_empty() {
        return None;
    }
    Some(format!(
        "MANIFEST DAMAGED: {} {} not read as written (cut short or overwritten): the contents of {dirs} {} not {done} (not counted as added, removed, missing or unexpected)",
        manifests.join(", "),
        if manifests.len() == 1 { "does" } else { "do" },
        if dirs == 1 {
            "directory were"
        } else {
            "directories were"
        },
    ))
}

/// The line `diff`/`verify --against` add when the compare stayed on the live tree's
/// file system (`--one-file-system`, or a snapshot made with it).
pub fn one_fs_note(s: &snapring::compare::OneFsSummary) -> Option<String> {
    if !s.one_file_system {
        return None;
    }
    if s.mount_points_skipped == 0 {
        return Some("one file system: no mount point below the live tree".into());
    }
    Some(mount_points_line(
        s.mount_points_skipped,
        &s.mount_points,
        [
            "mount point compared as a directory, its contents not",
            "mount points compared as directories, their contents not",
        ],
    ))
}

/// The summary's note on the mount points a `--one-file-system` run did not enter, if
/// any: how many, and the first ones by name. A note, not a problem: the run asked for
/// it, and its status is not changed by it.
pub fn mount_points_note(r: &snapring::report::RunReport) -> Option<String> {
    mount_points_kept(r.mount_points_skipped, &r.mount_points)
}

/// [`mount_points_note`] of `count` mount points, the first of them `named` (a shard
/// run's totals into a repository).
pub fn mount_points_kept(count: u64, named: &[String]) -> Option<String> {
    if count == 0 {
        return None;
    }
    Some(format!(
        "  {}",
        mount_points_line(
            count,
            named,
            [
                "mount point kept as an empty directory",
                "mount points kept as empty directories",
            ],
        )
    ))
}

/// `one file system: N <what>: a, b, and M more`, `what` in the singular and plural.
fn mount_points_line(count: u64, named: &[String], what: [&str; 2]) -> String {
    let more = count.saturating_sub(named.len() as u64);
    format!(
        "one file system: {count} {}: {}{}",
        what[usize::from(count != 1)],
        named.join(", "),
        if more > 0 {
            format!(", and {more} more")
        } else {
            String::new()
        }
    )
}
