//! The one path type of snapring: a validated, byte-exact path relative to a tree root,
//! and the escaping used wherever a path must be written as text. Pure; no I/O.
//!
//! Any byte string except NUL and `/` is a valid component (spaces, newlines, quotes,
//! non-UTF-8). `.`/`..`/empty components and absolute paths are rejected, so a `RelPath`
//! can never leave the tree it is joined to (invariant 6 in ARCHITECTURE.md).

use std::cmp::Ordering;
use std::fmt;

/// A path relative to a tree root, stored as raw bytes with `/` separators.
/// The empty path is the root itself.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct RelPath(Vec<u8>);

/// Why a byte string is not a valid relative path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelPathError {
    #[error("absolute path {0:?} is not allowed here")]
    Absolute(String),
    #[error("path {0:?} has an empty, '.' or '..' component")]
    BadComponent(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
}

/// True when `name` is usable as a single directory-entry name.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

impl RelPath {
    /// The root of the tree.
    pub fn root() -> Self {
        RelPath(Vec::new())
    }

    /// Validates `bytes` as a relative path (`a/b/c`, no leading `/`, no `.`/`..`).
    pub fn new(bytes: &[u8]) -> Result<Self, RelPathError> {
        let shown = || escape(bytes);
        if bytes.is_empty() {
            return Ok(Self::root());
        }
        if bytes[0] == b'/' {
            return Err(RelPathError::Absolute(shown()));
        }
        if bytes.contains(&0) {
            return Err(RelPathError::Nul(shown()));
        }
        if bytes.split(|b| *b == b'/').any(|c| !valid_name(c)) {
            return Err(RelPathError::BadComponent(shown()));
        }
        Ok(RelPath(bytes.to_vec()))
    }

    /// This path with one more component. `name` must satisfy [`valid_name`]
    /// (names come from `readdir`, which guarantees it).
    pub fn join(&self, name: &[u8]) -> Self {
        debug_assert!(valid_name(name), "invalid name {:?}", escape(name));
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.len());
        v.extend_from_slice(&self.0);
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(name);
        RelPath(v)
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|b| *b == b'/').filter(|c| !c.is_empty())
    }

    /// The last component (empty for the root).
    pub fn file_name(&self) -> &[u8] {
        self.components().last().unwrap_or(b"")
    }

    /// The parent path (the root's parent is the root).
    pub fn parent(&self) -> RelPath {
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => RelPath(self.0[..i].to_vec()),
            None => RelPath::root(),
        }
    }

    /// Whether this path is `dir` or below it.
    pub fn at_or_below(&self, dir: &RelPath) -> bool {
        dir.is_root()
            || self.0 == dir.0
            || (self.0.starts_with(&dir.0) && self.0.get(dir.0.len()) == Some(&b'/'))
    }

    /// Whether this path is one of `dirs` or below one (false at once when `dirs` is
    /// empty: asked of every block of a manifest).
    pub fn at_or_below_any(&self, dirs: &std::collections::HashSet<RelPath>) -> bool {
        if dirs.is_empty() {
            return false;
        }
        let mut a = self.clone();
        loop {
            if dirs.contains(&a) {
                return true;
            }
            if a.is_root() {
                return false;
            }
            a = a.parent();
        }
    }

    /// The text form used in manifests, logs and reports: see [`escape`]; the root is `.`.
    pub fn escaped(&self) -> String {
        if self.is_root() {
            ".".to_string()
        } else {
            escape(&self.0)
        }
    }

    /// Parses the text form written by [`RelPath::escaped`].
    pub fn from_escaped(s: &str) -> Result<Self, String> {
        if s == "." {
            return Ok(Self::root());
        }
        let bytes = unescape(s)?;
        RelPath::new(&bytes).map_err(|e| e.to_string())
    }

    /// A `std::path::Path` view (lossless on Unix), for messages and path-based APIs.
    pub fn as_path(&self) -> &std::path::Path {
        use std::os::unix::ffi::OsStrExt;
        std::path::Path::new(std::ffi::OsStr::from_bytes(&self.0))
    }
}

/// The one total order of paths: component by component, bytewise. A directory sorts
/// immediately before its contents (`a` < `a/z` < `a b`), which `Vec<u8>` order does not give.
impl Ord for RelPath {
    fn cmp(&self, other: &Self) -> Ordering {
        self.components().cmp(other.components())
    }
}
impl PartialOrd for RelPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPath({})", self.escaped())
    }
}
impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.escaped())
    }
}

/// Escapes bytes so the result is printable ASCII with no spaces: bytes outside
/// `!`..=`~`, and `%` itself, become `%XX` (upper-case hex). Reversible by [`unescape`].
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// A local path (a source, a store, a restore's target, as given or canonical) in a
/// message: a control character (a newline, an escape sequence) and a byte that is not
/// UTF-8 are written `\xNN` (a control character beyond ASCII `\u{85}`), so none
/// reaches a terminal or a log raw; every other character is itself (`%`, a space,
/// `é`), so the path reads as the user typed it. For humans only: records keep the
/// exact bytes (`crate::localpath`).
pub fn shown(p: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    shown_bytes(p.as_os_str().as_bytes())
}

/// A name that need not be UTF-8 (an extended attribute's) in a message, as [`shown`]
/// writes a path: a byte that is not UTF-8 is `\xNN`, so a message naming an entry
/// and one of its attributes escapes both alike.
pub fn shown_bytes(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                c if c.is_ascii_control() => {
                    let _ = write!(s, "\\x{:02X}", c as u32);
                }
                c if c.is_control() => {
                    let _ = write!(s, "\\u{{{:x}}}", c as u32);
                }
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(s, "\\x{b:02X}");
        }
    }
    s
}

/// Reverses [`escape`].
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    unescape_bytes(s.as_bytes())
}

/// [`unescape`] of bytes that need not be UTF-8 (a command-line argument): `%XX` is the
/// byte XX, every other byte is itself. The message shows `b` escaped.
pub fn unescape_bytes(b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .ok_or_else(|| {
                    let at = String::from_utf8_lossy(&b[i..b.len().min(i + 3)]).into_owned();
                    format!(
                        "{at:?} in {:?} is not an escape (%XX, two hex digits)",
                        String::from_utf8_lossy(b)
                    )
                })?;
            out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// A path as a `--path` argument is typed ([`unescape_bytes`] reads it back): `%` is
/// `%25`, a control character or a byte that is not UTF-8 `%XX` (it cannot be typed);
/// every other character is itself (a space, `é`), as the user named the file.
pub fn typed(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '%' || c.is_control() {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    s.push_str(&format!("%{b:02X}"));
                }
            } else {
                s.push(c);
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// One word for a POSIX shell, to be pasted: as it is when it holds only characters
/// no shell treats specially (`/work/bk-1`, `daily.0`); else in single quotes (a `'`
/// as `'\''`); and one with a control character or a byte that is not UTF-8 as the
/// output of `printf` with octal escapes, `"$(printf 'a\012b\377')"`, so no such byte
/// reaches the terminal raw. Every POSIX shell reads that form: bash's `$'…'` was
/// read by Debian's `sh` (dash) as `$` and the text, so a pasted hint named another
/// directory. A command substitution drops the newlines its output ends with: those
/// the word ends with follow it in single quotes, as they are (a newline is no
/// terminal escape).
pub fn shell_quote(bytes: &[u8]) -> String {
    let plain = |b: &u8| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(b);
    if !bytes.is_empty() && bytes.iter().all(plain) {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => format!("'{}'", s.replace('\'', "'\\''")),
        _ => {
            let body_len = bytes.len() - bytes.iter().rev().take_while(|&&b| b == b'\n').count();
            let (body, newlines) = bytes.split_at(body_len);
            let octal = |s: &mut String, b: u8| s.push_str(&format!("\\{b:03o}"));
            let mut s = String::from("\"$(printf '");
            for chunk in body.utf8_chunks() {
                for c in chunk.valid().chars() {
                    match c {
                        '\'' => s.push_str("'\\''"),
                        '\\' => s.push_str("\\\\"),
                        '%' => s.push_str("%%"),
                        // Not read as an option of printf.
                        '-' if s.len() == "\"$(printf '".len() => octal(&mut s, b'-'),
                        c if c.is_control() => {
                            let mut buf = [0; 4];
                            for b in c.encode_utf8(&mut buf).bytes() {
                                octal(&mut s, b);
                            }
                        }
                        c => s.push(c),
                    }
                }
                for &b in chunk.invalid() {
                    octal(&mut s, b);
                }
            }
            s.push_str("')\"");
            if !newlines.is_empty() {
                s.push('\'');
                s.push_str(&"\n".repeat(newlines.len()));
                s.push('\'');
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restore's hint printed its command's paths escaped (`my%20store`): `--dest`
    /// does not read that form. Quoted for a shell now, `--path` as it is typed.
    #[test]
    fn words_are_quoted_for_a_shell_and_paths_written_as_typed() {
        assert_eq!(shell_quote(b"/work/bk-1/daily.0"), "/work/bk-1/daily.0");
        assert_eq!(shell_quote(b"/work/my store"), "'/work/my store'");
        assert_eq!(shell_quote(b"it's"), "'it'\\''s'");
        assert_eq!(shell_quote(b"$HOME;rm *"), "'$HOME;rm *'");
        assert_eq!(shell_quote(b""), "''");
        assert_eq!(shell_quote("é".as_bytes()), "'é'");
        assert_eq!(
            shell_quote(b"a\nb'\\\xff%"),
            "\"$(printf 'a\\012b'\\''\\\\\\377%%')\""
        );
        assert_eq!(typed(b"my dir/100%/x\ty\xff"), "my dir/100%25/x%09y%FF");
        for b in [&b"my dir/100%/x\ty\xff"[..], "é/ü".as_bytes()] {
            assert_eq!(unescape(&typed(b)).unwrap(), b);
        }
    }

    /// The hint's `$'a\x0Ab'` was read by Debian's `sh` (dash) as `$a\x0Ab`: a pasted
    /// command named another directory. Each word, run through `sh`, is the bytes it
    /// was made from: control characters, bytes that are not UTF-8, a `-` first, `%`,
    /// `\`, `'`, and newlines inside and at the end (which a command substitution drops).
    #[test]
    fn a_quoted_word_is_read_back_by_sh_as_its_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let words: [&[u8]; 10] = [
            b"/t\no",
            b"a\nb'\\\xff%s%%\\n",
            b"-x\x1b]0;X\x07",
            b"\xff\xfe-",
            b"ends\n\n",
            b"\n",
            b"\n\xffmid\n",
            "caf\u{e9}\u{85} 5%".as_bytes(),
            b"it's $HOME `x`",
            b"",
        ];
        for w in words {
            let q = shell_quote(w);
            assert!(
                !q.bytes().any(|b| b.is_ascii_control() && b != b'\n'),
                "{q:?}"
            );
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(std::ffi::OsStr::from_bytes(
                    format!("printf '%s|' {q}").as_bytes(),
                ))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{q}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.stdout, [w, b"|"].concat(), "{q:?} read back");
        }
    }

    /// A local path in a message: control characters and bytes that are not UTF-8
    /// as `\xNN`; `%`, a space and `é` as typed.
    #[test]
    fn a_shown_path_escapes_only_control_characters_and_invalid_bytes() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(
            shown(std::path::Path::new("/e\x1b]0;X\x07\n y")),
            "/e\\x1B]0;X\\x07\\x0A y"
        );
        assert_eq!(
            shown(std::path::Path::new(std::ffi::OsStr::from_bytes(
                b"/mnt/caf\xc3\xa9 data/50%/src%E9/\xff\xe9\xc2\x85"
            ))),
            "/mnt/caf\u{e9} data/50%/src%E9/\\xFF\\xE9\\u{85}"
        );
    }

    #[test]
    fn rejects_escapes_from_the_tree() {
        assert!(matches!(
            RelPath::new(b"/etc/passwd"),
            Err(RelPathError::Absolute(_))
        ));
        assert!(matches!(
            RelPath::new(b"a/../../x"),
            Err(RelPathError::BadComponent(_))
        ));
        assert!(matches!(
            RelPath::new(b"a//b"),
            Err(RelPathError::BadComponent(_))
        ));
        assert!(matches!(
            RelPath::new(b"./a"),
            Err(RelPathError::BadComponent(_))
        ));
        assert!(matches!(RelPath::new(b"a\0b"), Err(RelPathError::Nul(_))));
        assert!(RelPath::new(b"a b/\n/\xff\"'").is_ok());
    }

    #[test]
    fn escape_round_trips_every_byte() {
        let all: Vec<u8> = (1u8..=255).filter(|b| *b != b'/').collect();
        let p = RelPath::new(&all).unwrap();
        let text = p.escaped();
        assert!(!text.contains(' ') && !text.contains('\n'));
        assert_eq!(RelPath::from_escaped(&text).unwrap(), p);
        assert_eq!(RelPath::from_escaped(".").unwrap(), RelPath::root());
    }

    #[test]
    fn order_is_component_wise() {
        let mut v: Vec<RelPath> = ["a b", "a/z", "a", "a-b", "b"]
            .iter()
            .map(|s| RelPath::new(s.as_bytes()).unwrap())
            .collect();
        v.sort();
        let names: Vec<String> = v.iter().map(|p| p.escaped()).collect();
        assert_eq!(names, ["a", "a/z", "a%20b", "a-b", "b"]);
    }

    #[test]
    fn shown_bytes_escapes_what_is_not_utf8_or_printable_and_keeps_the_rest() {
        assert_eq!(
            shown_bytes(b"user.n\xe9 caf\xc3\xa9%\n"),
            "user.n\\xE9 caf\u{e9}%\\x0A"
        );
        assert_eq!(shown_bytes(b"x"), shown(std::path::Path::new("x")));
    }

    #[test]
    fn parent_and_join() {
        let p = RelPath::root().join(b"x").join(b"y z");
        assert_eq!(p.parent(), RelPath::new(b"x").unwrap());
        assert_eq!(p.file_name(), b"y z");
        assert_eq!(RelPath::root().parent(), RelPath::root());
    }
}
