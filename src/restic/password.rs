//! The repository password: `--password-file FILE`, else `SNAPRING_PASSWORD_FILE`,
//! `SNAPRING_PASSWORD`, `RESTIC_PASSWORD_FILE`, `RESTIC_PASSWORD`, in that order (a
//! file before a password in the environment, as restic reads its own two: with both
//! set, snapring and restic use the same password).
//! A file's surrounding white space is not part of the password, as restic reads it
//! (`strings.TrimSpace`). snapring once stripped only a trailing newline: a file whose
//! password opens no key trimmed is tried that older way too, with a warning, so a
//! repository made with it still opens ([`Password`]). The password is never logged,
//! and errors never show it. Reads the environment and files.

use std::path::{Path, PathBuf};

use super::{Error, Result, io_err};

/// The password, as bytes (it dereferences to them), and for one from a file that
/// snapring read differently before, that older reading.
pub struct Password {
    bytes: Vec<u8>,
    older: Option<(Vec<u8>, PathBuf)>,
    /// The password the order before 2026-12-07 chose, where both a file and a
    /// variable are set and differ (it read the variable first): a repository keyed
    /// with it still opens, with a warning.
    variable_first: Option<(Vec<u8>, &'static str, &'static str)>,
    /// The file it came from held only white space (restic refuses it as empty).
    blank_file: Option<PathBuf>,
}

impl Password {
    /// A password used as it is.
    pub fn exact(bytes: &[u8]) -> Password {
        Password {
            bytes: bytes.to_vec(),
            older: None,
            variable_first: None,
            blank_file: None,
        }
    }

    /// Refuses a password a new key should not be made with: a file of white space
    /// only, which snapring takes as it is (to open a repository made with its older
    /// reading) and restic reads as empty and refuses, so that restic could never open
    /// the repository with that file.
    pub fn check_for_a_new_key(&self) -> Result<()> {
        match &self.blank_file {
            Some(p) => Err(Error::Other(format!(
                "the password file {} holds only white space: restic reads it as empty and \
                 refuses it, so it could not open the repository; write the password in it",
                p.display()
            ))),
            None => Ok(()),
        }
    }

    /// The file's older reading (only its trailing newline stripped), where it differs
    /// from the password: to try when the password opens no key.
    pub fn older_reading(&self) -> Option<&[u8]> {
        self.older.as_ref().map(|(b, _)| b.as_slice())
    }

    /// The variable the older order chose over the file, with the warning for a
    /// repository that opened only with it.
    pub fn variable_first(&self) -> Option<(&[u8], String)> {
        self.variable_first.as_ref().map(|(b, var, file)| {
            (
                b.as_slice(),
                format!(
                    "the repository opened with {var}, not with {file}: both are set, and \
                     snapring now reads the file first, as restic does (restic in this \
                     environment does not open the repository); make the two agree, or unset one"
                ),
            )
        })
    }

    /// The warning for a repository that opened only with the older reading.
    pub fn older_reading_warning(&self) -> String {
        let file = self
            .older
            .as_ref()
            .map(|(_, p)| p.display().to_string())
            .unwrap_or_default();
        format!(
            "the repository opened with the password file {file} read with its white space \
             kept: restic trims the white space around a password file's contents and would \
             not open it; add a key with the trimmed password (`restic key add`, giving the \
             current password with its white space) or re-create the repository's key"
        )
    }
}

impl std::ops::Deref for Password {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The password.
pub fn resolve(file_flag: Option<&Path>) -> Result<Password> {
    if let Some(f) = file_flag {
        return from_file(f);
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    use std::os::unix::ffi::OsStrExt;
    // restic's order (its `resolvePassword`): the file, then the password. Before
    // 2026-12-07 snapring read the variable first: with both set and different, that
    // one is tried too when the file's opens no key.
    for (file, var) in [
        ("SNAPRING_PASSWORD_FILE", "SNAPRING_PASSWORD"),
        ("RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD"),
    ] {
        if let Some(f) = env(file) {
            let mut p = from_file(Path::new(&f))?;
            p.variable_first = env(var)
                .map(|v| v.as_bytes().to_vec())
                .filter(|v| *v != p.bytes)
                .map(|v| (v, var, file));
            return Ok(p);
        }
        if let Some(v) = env(var) {
            return Ok(Password::exact(v.as_bytes()));
        }
    }
    Err(Error::Other(
        "no repository password: give --password-file FILE, or set SNAPRING_PASSWORD_FILE, \
         SNAPRING_PASSWORD, RESTIC_PASSWORD_FILE or RESTIC_PASSWORD"
            .into(),
    ))
}

fn from_file(p: &Path) -> Result<Password> {
    let b = std::fs::read(p).map_err(io_err("read the password file", p))?;
    let (mut bytes, mut older) = readings(&b);
    let mut blank_file = None;
    if bytes.is_empty()
        && let Some(o) = older.take()
    {
        blank_file = Some(p.to_path_buf());
        // White space only: empty as restic reads it, which refuses an empty password;
        // a repository made with the older reading still opens with that.
        tracing::warn!(
            "the password file {} holds only white space: restic reads it as empty and refuses it; snapring uses it as it is (one trailing newline stripped)",
            p.display()
        );
        bytes = o;
    }
    if bytes.is_empty() {
        return Err(Error::Other(format!(
            "the password file {} is empty",
            p.display()
        )));
    }
    Ok(Password {
        bytes,
        older: older.map(|o| (o, p.to_path_buf())),
        variable_first: None,
        blank_file,
    })
}

/// A password file's contents as restic reads them (white space around them trimmed),
/// and as snapring read them before (one trailing `\n` or `\r\n` stripped) where that
/// differs and is not empty.
fn readings(b: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut older = b;
    if let Some(rest) = older.strip_suffix(b"\n") {
        older = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    let trimmed = trim_space(b);
    let older = (older != trimmed && !older.is_empty()).then(|| older.to_vec());
    (trimmed.to_vec(), older)
}

/// Go's `strings.TrimSpace` on bytes: Unicode white space removed from both ends; a
/// byte that is not UTF-8 ends the trimming there.
fn trim_space(b: &[u8]) -> &[u8] {
    // White space is trimmed from the valid UTF-8 at each end; a byte that is not
    // UTF-8 is not white space.
    let start = b
        .utf8_chunks()
        .next()
        .map_or(0, |c| c.valid().len() - c.valid().trim_start().len());
    let end = match b.utf8_chunks().last() {
        Some(c) if c.invalid().is_empty() => {
            b.len() - (c.valid().len() - c.valid().trim_end().len())
        }
        _ => b.len(),
    };
    &b[start.min(end)..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_is_trimmed_as_restic_trims_it() {
        let t = |s: &[u8]| readings(s);
        assert_eq!(t(b"pw\n"), (b"pw".to_vec(), None));
        assert_eq!(t(b"pw\r\n"), (b"pw".to_vec(), None));
        assert_eq!(t(b"pw"), (b"pw".to_vec(), None));
        assert_eq!(
            t(b"secret-pass \n"),
            (b"secret-pass".to_vec(), Some(b"secret-pass ".to_vec()))
        );
        assert_eq!(
            t(b"  pw\t\n\n"),
            (b"pw".to_vec(), Some(b"  pw\t\n".to_vec()))
        );
        assert_eq!(t(b"a b\n"), (b"a b".to_vec(), None));
        // Unicode white space (U+00A0, U+3000) too, as Go's unicode.IsSpace.
        assert_eq!(t("\u{a0}pw\u{3000}".as_bytes()).0, b"pw".to_vec());
        // Bytes that are not UTF-8 stay, and stop the trimming.
        assert_eq!(t(b"\xffpw \xfe\n").0, b"\xffpw \xfe".to_vec());
        assert_eq!(t(b"\n\n").0, Vec::<u8>::new());
    }

    /// A file of white space only: restic reads it empty (and refuses it); a repository
    /// made with snapring's older reading (`"   "`) still opens with that. It was
    /// refused as empty before the older reading was tried.
    #[test]
    fn a_password_file_of_white_space_only_is_read_the_older_way() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("pw");
        std::fs::write(&f, b"   \n").unwrap();
        let p = from_file(&f).unwrap();
        assert_eq!((p.bytes.as_slice(), p.older.is_none()), (&b"   "[..], true));
        // It opens such a repository, and makes no new one (restic could not open it).
        let e = p.check_for_a_new_key().unwrap_err().to_string();
        assert!(e.contains("holds only white space"), "{e}");
        std::fs::write(&f, b" pw \n").unwrap();
        assert!(from_file(&f).unwrap().check_for_a_new_key().is_ok());
        std::fs::write(&f, b"\n").unwrap();
        match from_file(&f) {
            Err(e) => assert!(e.to_string().contains("is empty"), "{e}"),
            Ok(_) => panic!("a file of one newline read as a password"),
        }
    }
}
