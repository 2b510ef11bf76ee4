//! `--textfile DIR` on `backup` and `run`: after a run, the same figures `/metrics`
//! has for its job, written for node_exporter's textfile collector as
//! `DIR/snapring-<job>.prom` (Prometheus' classic text format); on `copy`, the
//! `snapring_copy_*` series of its store-and-repository pair as
//! `DIR/snapring-copy-<digest>.prom`. Atomically: a temp file
//! not ending in `.prom` (the collector skips it), fsync, rename, fsync of the
//! directory. World-readable (0644), as the collector often runs as another user; it
//! holds no secret. Writes that one file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::catalog::Catalog;
use crate::config::JobConfig;
use crate::report::RunReport;

/// The file a run's figures go to: `snapring-<job>.prom`, the job's name with anything
/// but `[A-Za-z0-9_-]` as `_` and then, if anything was replaced, `-` and 8 hex digits
/// of its digest (so `db.main` and `db_main` do not write over each other's file); a run
/// without a job is named by its store's digest.
pub fn file_name(r: &RunReport) -> String {
    let stem = match r.job.as_deref() {
        Some(j) => {
            let plain: String = j
                .chars()
                .map(|c| match c {
                    'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => c,
                    _ => '_',
                })
                .collect();
            if plain == j {
                plain
            } else {
                format!("{plain}-{}", &blake3::hash(j.as_bytes()).to_hex()[..8])
            }
        }
        None => {
            let h = blake3::hash(r.store.as_os_str().as_encoded_bytes());
            format!("store-{}", &h.to_hex()[..12])
        }
    };
    format!("snapring-{stem}.prom")
}

/// Writes the figures of the run `r` (its job `jc`, the catalog at `catalog`) into
/// `dir`; returns the file written.
pub fn write(
    dir: &Path,
    r: &RunReport,
    jc: Option<&JobConfig>,
    catalog: Option<&Path>,
) -> Result<PathBuf, String> {
    let cat = match catalog.map(Catalog::open_read).transpose() {
        Ok(c) => c.flatten(),
        Err(e) => return Err(e.to_string()),
    };
    let view = super::data::of_run(r, jc, cat.as_ref(), chrono::Utc::now());
    let text = super::metrics::classic(&super::metrics::render(&[view], &[], None));
    let path = dir.join(file_name(r));
    write_atomic_public(&path, text.as_bytes())
        .map_err(|e| format!("cannot write the metrics textfile {}: {e}", path.display()))?;
    Ok(path)
}

/// The file a copy's figures go to: `snapring-copy-<digest>.prom`, 12 hex digits of
/// the digest of its store and repository: each pair its own file, beside the backups'
/// `snapring-<job>.prom`.
pub fn copy_file_name(r: &RunReport) -> String {
    let mut h = blake3::Hasher::new();
    h.update(r.source.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    h.update(r.store.as_os_str().as_encoded_bytes());
    format!("snapring-copy-{}.prom", &h.finalize().to_hex()[..12])
}

/// Writes the figures of the copy `r` (the catalog at `catalog`) into `dir`: the
/// `snapring_copy_*` series `/metrics` has for its store and repository; returns the
/// file written.
pub fn write_copy(dir: &Path, r: &RunReport, catalog: Option<&Path>) -> Result<PathBuf, String> {
    let cat = match catalog.map(Catalog::open_read).transpose() {
        Ok(c) => c.flatten(),
        Err(e) => return Err(e.to_string()),
    };
    let view = super::data::of_copy(r, cat.as_ref(), chrono::Utc::now());
    let text = super::metrics::classic(&super::metrics::render(&[], &[view], None));
    let path = dir.join(copy_file_name(r));
    write_atomic_public(&path, text.as_bytes())
        .map_err(|e| format!("cannot write the metrics textfile {}: {e}", path.display()))?;
    Ok(path)
}

/// Writes `bytes` to `path` through a temp file beside it. The temp file is made anew
/// (`O_EXCL`, after removing whatever has its name): the directory may be writable by
/// the collector's user, who must not get a symlink there followed, as root, to
/// truncate another file.
fn write_atomic_public(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let done = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_planted_at_the_temp_name_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = d.path().join("snapring-home.prom");
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        write_atomic_public(&path, b"metrics\n").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&path).unwrap(), b"metrics\n");
        assert!(!tmp.exists() && std::fs::symlink_metadata(&tmp).is_err());
    }
}
