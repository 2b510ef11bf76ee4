//! The library's typed errors. Every I/O error carries the action and the path, so a
//! message says what snapring was doing, where, and why it failed. Pure; no I/O.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// In the message of a run whose rotation failed after its journal was written
/// (`Error::PublishPending`): the catalog looks for it to re-read such runs once a
/// repair has published them.
pub const PUBLISH_PENDING: &str = "its rotation journal was written";

/// How the message of such a run begins once a later repair published its snapshot
/// (status then `complete` or `partial`): the catalog keeps counting it as a run that
/// failed (`runs.failed_once`), so `snapring_runs_failed_total` never goes down.
pub const PUBLISHED_LATER: &str = "published by a later repair after: ";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {}: {source}", crate::relpath::shown(path))]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("source {} does not exist (is the file system mounted?)", crate::relpath::shown(.0))]
    SourceMissing(PathBuf),
    #[error(
        "source {} is not a directory: snapring backs up a directory tree; give --source the directory to back up (for one file, the directory that holds it)",
        crate::relpath::shown(.0)
    )]
    SourceNotDir(PathBuf),
    #[error(
        "source {} is not a mount point, but require_mount is set: mount the file system there, or drop --require-mount",
        crate::relpath::shown(.0)
    )]
    NotMounted(PathBuf),
    /// The source's file system went away during the run (invariant 4: a source not
    /// mounted is refused): ENOTCONN from an entry (a FUSE server that died), or the
    /// source root no longer there, stale, or another file system when the walk ends.
    /// `root`: the source root, when known (the walk knows paths in it only).
    #[error(
        "source {} went away during the run ({detail}): its file system is no longer mounted there, or no longer answers; nothing was published or rotated (the previous snapshots are as they were); mount it again and run again",
        .root.as_deref().map(crate::relpath::shown).unwrap_or_else(|| "of this run".into())
    )]
    SourceLost {
        root: Option<PathBuf>,
        detail: String,
    },
    #[error(
        "source {} is empty but the previous snapshot {prev} is not; refusing, because a failed mount looks exactly like this. Pass --allow-empty if the source really is empty",
        crate::relpath::shown(path)
    )]
    EmptySource { path: PathBuf, prev: String },
    /// The source has entries, but the exclusions leave none of them (a pattern file
    /// that matches everything): published, it would expire history as an empty source
    /// would. `by` names the settings (the options and pattern files).
    #[error(
        "source {} is not empty, but the exclusions ({by}) leave nothing of it, and the previous snapshot {prev} is not empty; refusing, because an empty snapshot would expire history as a failed mount would. Check the patterns; pass --allow-empty if nothing of the source is to be backed up",
        crate::relpath::shown(path)
    )]
    ExcludedAll {
        path: PathBuf,
        prev: String,
        by: String,
    },
    /// The walk kept no file (only directories: the exclusions left out every file, or
    /// the source holds none) while the previous snapshot holds files: published, it
    /// would expire history as an empty source would. `by` names the exclusion settings
    /// (empty without any); `unread` counts the directories whose listing failed (their
    /// files unseen: the message says that may be why, not that only directories are
    /// there). Also a shard run's finalize's, for the run's merged figures.
    #[error("{}", no_files_left(path, prev, by, *unread))]
    NoFilesLeft {
        path: PathBuf,
        prev: String,
        by: String,
        unread: u64,
    },
    /// The walk kept files, but far fewer than the label's previous snapshot holds
    /// ([`shrank`]: a failed mount whose mount point holds a marker file, a wrong bind
    /// mount, a pattern that leaves out nearly everything): published, its retention
    /// would expire the history as an empty source's would. `kept` and `prev_files`
    /// are the two counts; `by` and `unread` as [`Error::NoFilesLeft`]'s. Also a shard
    /// run's finalize's, for the run's merged figures.
    #[error("{}", shrank_message(path, (prev, *prev_files), *kept, by, *unread))]
    SourceShrank {
        path: PathBuf,
        prev: String,
        prev_files: u64,
        kept: u64,
        by: String,
        unread: u64,
    },
    #[error(
        "store {} is in use: {holder}. Wait for that run to end; a lock left by a dead process is released by the kernel and taken over automatically",
        crate::relpath::shown(store)
    )]
    Locked { store: PathBuf, holder: String },
    #[error("config: {0}")]
    Config(String),
    /// The command as given would lose data the user probably means to keep; nothing
    /// was done, and the message says which flag allows it (exit 64, like a usage error).
    #[error("refused: {0}")]
    Refused(String),
    /// The job's `pre_command` failed: the run failed before reading anything.
    #[error("{0}")]
    Hook(String),
    #[error("store {}: {msg}", crate::relpath::shown(path))]
    Store { path: PathBuf, msg: String },
    /// A shard run's source, on this node, is another directory than the one its plan
    /// was made from (another inode number): not mounted here, or mounted elsewhere.
    #[error(
        "source {} is not the directory this run was planned from (inode {here}, the plan's {planned}): is the source file system mounted on this node?",
        crate::relpath::shown(path)
    )]
    SourceNotPlanned {
        path: PathBuf,
        planned: u64,
        here: u64,
    },
    /// A restore's `--to` that cannot be restored into as it is.
    #[error("restore target {}: {msg}", crate::relpath::shown(path))]
    Target { path: PathBuf, msg: String },
    /// A restic repository's error, as its message says (it names the repository).
    #[error("{0}")]
    Repository(String),
    /// The rotation failed after its journal was written: the run failed, but the next
    /// command that can write the store rolls the journal forward and publishes it.
    /// `renamed`: the failure came after every rename (the new snapshot is in place
    /// under its name, only the state file, the run record or the journal's removal
    /// were left), else during the renames (some may be done). Either way no snapshot
    /// is lost: the journal names where each one goes.
    #[error("{}", pending_text(snapshot, *renamed, source))]
    PublishPending {
        snapshot: String,
        renamed: bool,
        #[source]
        source: Box<Error>,
    },
    /// A command could not roll an interrupted rotation forward (its journal stays, and
    /// the next command that can write the store tries again).
    #[error("{}", roll_forward_text(run, cause))]
    RollForward { run: String, cause: Box<Error> },
    #[error("destination file system is full ({}) while writing {}: the run was abandoned, nothing was published and older snapshots are intact; {} and run again", why.as_str(), crate::relpath::shown(path), why.remedy())]
    DiskFull { path: PathBuf, why: Full },
    /// A restore's target ran full: the restore stopped; the store was never written.
    #[error("the restore's target file system is full ({}) while writing {}: the restore stopped; the store is untouched and what was restored stays; {} and run it again (identical files are skipped, the rest is finished)", why.as_str(), crate::relpath::shown(path), why.remedy())]
    TargetFull { path: PathBuf, why: Full },
}

/// [`Error::RollForward`]'s message. It does not say [`PUBLISH_PENDING`]: the command
/// that failed is not the run the journal publishes.
fn roll_forward_text(run: &str, cause: &Error) -> String {
    format!(
        "cannot finish the interrupted rotation of run {run}: {}; its journal stays, so no snapshot is lost: the next command that can write the store (a backup, or `snapring list`) finishes it{}",
        cause.cause(),
        cause.remedy()
    )
}

/// [`Error::PublishPending`]'s message: what failed, where the rotation stood, and what
/// finishes it.
fn pending_text(snapshot: &str, renamed: bool, source: &Error) -> String {
    let stood = if renamed {
        format!("after its renames, with the new snapshot in place as {snapshot}")
    } else {
        "during its renames".to_string()
    };
    format!(
        "{}: the rotation failed {stood}, but {PUBLISH_PENDING}, so no snapshot is lost: the next command that can write the store (a backup, or `snapring list`) finishes the rotation, publishes {snapshot} and records the run as published{}",
        source.cause(),
        source.remedy()
    )
}

impl Error {
    /// What failed, without what it means for a run: a full file system without the
    /// "the run was abandoned, nothing was published" of a run that fails before its
    /// rotation, which is not true once a rotation's journal is written, nor of a
    /// record written after the run.
    pub fn cause(&self) -> String {
        match self {
            Error::DiskFull { path, why } => format!(
                "destination file system is full ({}) while writing {}",
                why.as_str(),
                crate::relpath::shown(path)
            ),
            e => e.to_string(),
        }
    }

    /// After [`Error::cause`]: what to do first, as a sentence (empty where nothing
    /// can be said).
    fn remedy(&self) -> String {
        match self {
            Error::DiskFull { why, .. } => format!(". {} so it can", capitalized(why.remedy())),
            _ => String::new(),
        }
    }

    /// A restore's view of an error: a full file system is its target's, and the
    /// backup's wording ("nothing was published and older snapshots are intact") does
    /// not apply.
    pub fn on_restore_target(self) -> Error {
        match self {
            Error::DiskFull { path, why } => Error::TargetFull { path, why },
            e => e,
        }
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// What ran out on a full file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// No free blocks.
    Space,
    /// No free inodes: not even an empty file can be created.
    Inodes,
    /// The user's or group's quota (EDQUOT).
    Quota,
}

impl Full {
    pub fn as_str(self) -> &'static str {
        match self {
            Full::Space => "out of space",
            Full::Inodes => "out of inodes: no file can be created",
            Full::Quota => "disk quota exceeded",
        }
    }

    pub fn remedy(self) -> &'static str {
        match self {
            Full::Space => "free space",
            Full::Inodes => "free inodes (delete files) or grow the file system's inode count",
            Full::Quota => "free space or raise the quota",
        }
    }
}

/// An I/O error with its action and path (disk full becomes `Error::DiskFull`, saying
/// whether space, inodes or the quota ran out).
pub fn io_error(source: io::Error, action: &'static str, path: impl Into<PathBuf>) -> Error {
    let path = path.into();
    if crate::fsx::is_disk_full(&source) {
        let why = if crate::fsx::errno_is(&source, rustix::io::Errno::DQUOT) {
            Full::Quota
        } else if crate::fsx::out_of_inodes(&path) {
            Full::Inodes
        } else {
            Full::Space
        };
        Error::DiskFull { path, why }
    } else {
        Error::Io {
            action,
            path,
            source,
        }
    }
}

/// Shorthand used everywhere: `io_result.ctx("read", &path)?`.
pub trait Ctx<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| io_error(source, action, path))
    }
}

/// A snapshot of at least this many files is compared by [`shrank`] (below it, a few
/// files going is ordinary life; zero is [`Error::NoFilesLeft`]'s at any size).
pub const SHRINK_MIN_PREV: u64 = 100;

/// [`shrank`]'s factor: a run that keeps fewer than one file in this many of the
/// previous snapshot's is refused.
pub const SHRINK_FACTOR: u64 = 10;

/// The nearly-empty-source rule (invariant 4, docs/daemon.md `allow_empty`): a run
/// that keeps `kept` files while its label's previous snapshot holds `prev_files` is
/// refused ([`Error::SourceShrank`]) when that snapshot held at least
/// [`SHRINK_MIN_PREV`] files and the run keeps fewer than a tenth of them. The same
/// rule for a store, a repository and a shard run; `--allow-empty` lifts it.
pub fn shrank(prev_files: u64, kept: u64) -> bool {
    prev_files >= SHRINK_MIN_PREV && kept.saturating_mul(SHRINK_FACTOR) < prev_files
}

/// The message of [`Error::SourceShrank`].
fn shrank_message(
    path: &std::path::Path,
    (prev, prev_files): (&str, u64),
    kept: u64,
    by: &str,
    unread: u64,
) -> String {
    let after = if by.is_empty() {
        String::new()
    } else {
        format!(" once the exclusions ({by}) are applied")
    };
    let unread = if unread > 0 {
        format!(
            " ({unread} of its directories could not be read: permission denied or an I/O error, see the run's problems; that may be why)"
        )
    } else {
        String::new()
    };
    format!(
        "source {} keeps {kept} file{} to back up{after}{unread}, but the previous snapshot {prev} holds {prev_files}: fewer than a tenth of a snapshot of at least {SHRINK_MIN_PREV} files; refusing, because a failed or wrong mount (a mount point holding a marker file, a wrong bind mount) looks exactly like this, and its retention would expire the history. Check the source{}; pass --allow-empty (allow_empty in the config) if the source really shrank so",
        crate::relpath::shown(path),
        if kept == 1 { "" } else { "s" },
        if by.is_empty() {
            ""
        } else {
            " and the patterns"
        },
    )
}

/// The message of [`Error::NoFilesLeft`]: with directories that could not be read, it
/// says so (their files were never seen) instead of "only directories".
fn no_files_left(path: &std::path::Path, prev: &str, by: &str, unread: u64) -> String {
    let patterns = if by.is_empty() {
        ""
    } else {
        " and the patterns"
    };
    let why = "refusing, because a snapshot of empty directories would expire history as a failed mount would";
    let allow = "pass --allow-empty if no file of it is to be backed up";
    if unread > 0 {
        return format!(
            "source {} gave no file to back up{}, but {unread} of its directories could not be read (permission denied or an I/O error: see the run's problems), which may be why; the previous snapshot {prev} holds files; {why}. Check that the source can be read{patterns}; {allow}",
            crate::relpath::shown(path),
            if by.is_empty() {
                String::new()
            } else {
                format!(" once the exclusions ({by}) were applied")
            },
        );
    }
    format!(
        "source {} holds no file to back up{}, but the previous snapshot {prev} holds files; {why}. Check the source{patterns}; {allow}",
        crate::relpath::shown(path),
        if by.is_empty() {
            " (only directories)".to_string()
        } else {
            format!(" once the exclusions ({by}) are applied (only directories are left)")
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nearly-empty-source rule: a previous snapshot of at least 100 files, and
    /// fewer than a tenth of them kept; below 100, or at a tenth or more, it passes.
    #[test]
    fn shrank_is_fewer_than_a_tenth_of_at_least_a_hundred() {
        assert!(shrank(100, 9) && shrank(100, 1) && shrank(20_001, 1));
        assert!(shrank(20_001, 2_000) && !shrank(20_001, 2_001));
        assert!(!shrank(100, 10) && !shrank(99, 1) && !shrank(99, 9));
        assert!(!shrank(0, 0) && !shrank(1_000, 1_000) && !shrank(10, 50));
        assert!(!shrank(u64::MAX, u64::MAX / 2));
    }
}
