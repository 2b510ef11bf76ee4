//! The commands on a restic repository (`--dest file:///PATH` or `s3://BUCKET/PREFIX`):
//! `init`, `backup`, `list`, `restore`. Flags a restic repository does not take yet are
//! refused rather than ignored. The password comes from `snapring::restic::password`,
//! never printed.

use std::path::Path;

use anyhow::{Context, bail};
use snapring::restic::{self, backend, ops, repo::Repo};

use super::args::{BackupArgs, InitArgs, ListArgs, RestoreArgs};
use super::exit_code::ExitCode;
use super::print::{self, human, outln};

/// Is `dest` a restic repository's URL?
pub fn is_repo(dest: Option<&Path>) -> bool {
    dest.and_then(|d| d.to_str())
        .is_some_and(|d| d.starts_with("file://") || d.starts_with("s3://"))
}

fn open(dest: &Path, password_file: Option<&Path>) -> anyhow::Result<Repo> {
    let b = backend::from_dest(&dest.to_string_lossy())?;
    let pw = restic::password::resolve(password_file)?;
    Ok(Repo::open_in(b, &pw)?)
}

/// `snapring init --dest file:///PATH|s3://BUCKET/PREFIX`.
pub fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    let b = backend::from_dest(&a.dest)?;
    let pw = restic::password::resolve(a.password_file.as_deref())?;
    let config = ops::init(b.as_ref(), &pw)?;
    let at = b.location();
    if a.json {
        print::json(
            &serde_json::json!({ "repository": at, "id": config.id, "version": config.version }),
        )?;
    } else {
        outln!("created restic repository {} at {at}", &config.id[..10]);
    }
    Ok(ExitCode::Complete)
}

/// `snapring backup --source S --dest file:///PATH`.
pub fn backup(a: BackupArgs) -> anyhow::Result<ExitCode> {
    let unsupported = [
        (a.config.is_some(), "--config"),
        (a.job.is_some(), "--job"),
        (a.folder.is_some(), "--folder"),
        (a.retain.is_some(), "--retain"),
        (a.prefix.is_some(), "--prefix"),
        (!a.exclude.is_empty(), "--exclude"),
        (a.dry_run, "--dry-run"),
        (a.window.is_some(), "--window"),
        (a.require_mount, "--require-mount"),
    ];
    if let Some((_, flag)) = unsupported.iter().find(|(set, _)| *set) {
        bail!("{flag} is not supported with a restic repository yet");
    }
    let source = a.source.context("--source is required")?;
    let dest = a.dest.context("--dest is required")?;
    let mut repo = open(&dest, a.password_file.as_deref())?;
    let opts = restic::backup::BackupOptions {
        source,
        label: a.label.unwrap_or_else(|| "daily".into()),
        cancel: super::cancel_on_signal(),
    };
    let r = restic::backup::backup(&mut repo, &opts)?;
    if a.json {
        print::json(&r)?;
    } else {
        if r.status == "incomplete" {
            outln!(
                "incomplete: interrupted, no snapshot written; {} in {} packs kept and indexed for the next run",
                human(r.added.bytes),
                r.added.packs
            );
            return Ok(ExitCode::Incomplete);
        }
        outln!(
            "{}: snapshot {} of {} files ({}), {} read, {} unchanged; added {} in {} packs; took {:.2}s",
            r.status,
            &r.snapshot[..8],
            r.files,
            human(r.bytes_total),
            human(r.bytes_read),
            r.files_unchanged,
            human(r.added.bytes),
            r.added.packs,
            r.duration_seconds
        );
        for p in r.problems.iter().take(20) {
            print::errln!("  problem: {p}");
        }
    }
    Ok(match r.status.as_str() {
        "incomplete" => ExitCode::Incomplete,
        "partial" => ExitCode::Partial,
        _ => ExitCode::Complete,
    })
}

/// `snapring list --dest file:///PATH`.
pub fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    if a.space {
        bail!("--space is not supported with a restic repository yet");
    }
    let repo = open(&a.dest, a.password_file.as_deref())?;
    let snaps = ops::list(&repo)?;
    if a.json {
        print::json(&snaps)?;
        return Ok(ExitCode::Complete);
    }
    outln!(
        "{:<10} {:<32} {:<10} {:<16} PATHS",
        "ID",
        "TIME",
        "LABEL",
        "HOST"
    );
    for s in snaps.iter().rev() {
        outln!(
            "{:<10} {:<32} {:<10} {:<16} {}",
            s.short_id,
            s.time,
            s.label.as_deref().unwrap_or("-"),
            s.hostname,
            s.paths.join(" ")
        );
    }
    Ok(ExitCode::Complete)
}

/// `--path`'s components, relative to the snapshot's source; `..` and absolute paths
/// are refused.
fn components(p: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = p.as_os_str().as_bytes();
    if bytes.starts_with(b"/") {
        bail!(
            "--path {} is absolute; give it relative to the snapshot's source",
            p.display()
        );
    }
    let parts: Vec<Vec<u8>> = bytes
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect();
    if parts.iter().any(|c| c == b"..") {
        bail!("--path {} leaves the snapshot (..)", p.display());
    }
    Ok(parts)
}

/// `snapring restore --dest file:///PATH SNAPSHOT --to DIR [--path P [--flat]]`.
pub fn restore(a: RestoreArgs) -> anyhow::Result<ExitCode> {
    let unsupported = [
        (a.config.is_some(), "--config"),
        (a.job.is_some(), "--job"),
        (a.to_is_dedicated, "--to-is-dedicated"),
        (a.overwrite, "--overwrite"),
        (a.mirror, "--mirror"),
        (a.dry_run, "--dry-run"),
    ];
    if let Some((_, flag)) = unsupported.iter().find(|(set, _)| *set) {
        bail!("{flag} is not supported with a restic repository yet");
    }
    let dest = a.dest.as_deref().context("--dest is required")?;
    let repo = open(dest, a.password_file.as_deref())?;
    let sub = match &a.path {
        Some(p) => components(p)?,
        None => Vec::new(),
    };
    let r = restic::restore::restore(&repo, &a.snapshot, &a.to, &sub, a.flat)?;
    if a.json {
        print::json(&r)?;
    } else {
        outln!(
            "complete: restored snapshot {} into {}: {} files ({}), {} directories, {} symlinks, {} hard links; took {:.2}s",
            &r.snapshot[..8],
            r.to.display(),
            r.files,
            human(r.bytes),
            r.dirs,
            r.symlinks,
            r.hard_links,
            r.duration_seconds
        );
    }
    Ok(ExitCode::Complete)
}
