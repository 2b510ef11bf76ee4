//! The repository password: `--password-file FILE`, else `SNAPRING_PASSWORD`,
//! `SNAPRING_PASSWORD_FILE`, `RESTIC_PASSWORD`, `RESTIC_PASSWORD_FILE`, in that order.
//! A file's trailing newline is not part of the password (as restic reads it). The
//! password is never logged, and errors never show it. Reads the environment and files.

use std::path::Path;

use super::{Error, Result, io_err};

/// The password, as bytes.
pub fn resolve(file_flag: Option<&Path>) -> Result<Vec<u8>> {
    if let Some(f) = file_flag {
        return from_file(f);
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    use std::os::unix::ffi::OsStrExt;
    if let Some(v) = env("SNAPRING_PASSWORD") {
        return Ok(v.as_bytes().to_vec());
    }
    if let Some(f) = env("SNAPRING_PASSWORD_FILE") {
        return from_file(Path::new(&f));
    }
    if let Some(v) = env("RESTIC_PASSWORD") {
        return Ok(v.as_bytes().to_vec());
    }
    if let Some(f) = env("RESTIC_PASSWORD_FILE") {
        return from_file(Path::new(&f));
    }
    Err(Error::Other(
        "no repository password: give --password-file FILE, or set SNAPRING_PASSWORD, \
         SNAPRING_PASSWORD_FILE, RESTIC_PASSWORD or RESTIC_PASSWORD_FILE"
            .into(),
    ))
}

fn from_file(p: &Path) -> Result<Vec<u8>> {
    let mut b = std::fs::read(p).map_err(io_err("read the password file", p))?;
    if b.ends_with(b"\n") {
        b.pop();
        if b.ends_with(b"\r") {
            b.pop();
        }
    }
    if b.is_empty() {
        return Err(Error::Other(format!(
            "the password file {} is empty",
            p.display()
        )));
    }
    Ok(b)
}
