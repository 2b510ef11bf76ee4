//! Exclusion, rsync-, tar- and restic-like. Patterns: a pattern without `/` matches a
//! name at any depth; a pattern with `/` matches the path from the backup root (a
//! leading `/` is optional); a trailing `/` matches directories only; `**` crosses
//! directories. Pattern files (`--exclude-from`): one pattern a line, blank lines and
//! `#` comments ignored, a trailing `\r` stripped, rsync's `- PATTERN` read as
//! `PATTERN`; white space around a line's pattern is taken off, with a warning. Include rules
//! (`+ PATTERN`) and restic's negation (`!PATTERN`) are refused ([`check_given`]).
//! Tagged directories (`--exclude-caches`, `--exclude-if-present NAME[:HEADER]`): a directory whose
//! listing holds the tag keeps itself and the tag, and loses the rest of its contents,
//! as restic's `--exclude-caches` and `--exclude-if-present` do. The tag is found among
//! the names the walk has listed anyway (no call of its own); only a tag with a header
//! (CACHEDIR.TAG's signature) is opened, and only where its name is there. Pure, except
//! [`read_file`] (a pattern file), [`Excludes::keep_in`] (a tag's header) and
//! [`Excludes::leave_nothing_of`] (a directory's entries' types).

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::relpath::RelPath;

/// The tag `--exclude-caches` looks for (<https://bford.info/cachedir/>).
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
/// The first 43 bytes of a valid `CACHEDIR.TAG`.
pub const CACHEDIR_SIGNATURE: &str = "Signature: 8a477f597d28d172789f06886806bc55";

/// Every exclusion setting of a run, as resolved and as recorded (run record, restic
/// snapshot tags): the patterns (those given and those read from the files), the files
/// they came from, and the tags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// `--exclude` and the lines of every `--exclude-from` file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// The `--exclude-from` files the patterns were read from (for the record). One
    /// that is not UTF-8: `exclude_from_raw` beside them holds the bytes of each.
    #[serde(
        flatten,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::localpath::exclude_from"
    )]
    pub exclude_from: Vec<PathBuf>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclude_caches: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_if_present: Vec<String>,
}

impl Settings {
    /// Whether nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.excludes.is_empty() && !self.exclude_caches && self.exclude_if_present.is_empty()
    }

    /// The settings as options, for a message: the pattern files by name (else the
    /// first patterns), the tag rules.
    pub fn named(&self) -> String {
        let mut v: Vec<String> = self
            .exclude_from
            .iter()
            .map(|f| format!("--exclude-from {}", f.display()))
            .collect();
        if self.exclude_from.is_empty() {
            v.extend(
                self.excludes
                    .iter()
                    .take(3)
                    .map(|p| format!("--exclude {p:?}")),
            );
            if self.excludes.len() > 3 {
                v.push(format!("{} more --exclude", self.excludes.len() - 3));
            }
        }
        if self.exclude_caches {
            v.push("--exclude-caches".into());
        }
        v.extend(
            self.exclude_if_present
                .iter()
                .map(|t| format!("--exclude-if-present {t}")),
        );
        v.join(", ")
    }

    /// The patterns to apply: `given`, then each file's lines (read now).
    pub fn resolve(
        given: &[String],
        files: &[PathBuf],
        caches: bool,
        if_present: &[String],
    ) -> Result<Settings> {
        for p in given {
            check_given(p)?;
        }
        let mut excludes = given.to_vec();
        for f in files {
            excludes.extend(read_file(f)?);
        }
        let s = Settings {
            excludes,
            exclude_from: files.to_vec(),
            exclude_caches: caches,
            exclude_if_present: if_present.to_vec(),
        };
        s.build()?;
        Ok(s)
    }

    pub fn build(&self) -> Result<Excludes> {
        let mut e = build(&self.excludes)?;
        if self.exclude_caches {
            e.tags.push(Tag {
                name: CACHEDIR_TAG.as_bytes().to_vec(),
                header: Some(CACHEDIR_SIGNATURE.as_bytes().to_vec()),
            });
        }
        for t in &self.exclude_if_present {
            e.tags.push(tag(t)?);
        }
        Ok(e)
    }
}

/// One tag: a directory holding an entry `name` (which, with a header, is a regular
/// file starting with it) has its contents left out.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tag {
    name: Vec<u8>,
    header: Option<Vec<u8>>,
}

/// `NAME` or `NAME:HEADER` (restic's `--exclude-if-present` form).
fn tag(spec: &str) -> Result<Tag> {
    let (name, header) = match spec.split_once(':') {
        Some((n, h)) => (n, Some(h.as_bytes().to_vec())),
        None => (spec, None),
    };
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::Config(format!(
            "exclude_if_present {spec:?}: give the name of an entry (NAME or NAME:HEADER), without '/'"
        )));
    }
    Ok(Tag {
        name: name.as_bytes().to_vec(),
        header,
    })
}

/// Checks one `exclude_if_present` value (for `config check`).
pub fn check_tag(spec: &str) -> Result<()> {
    tag(spec).map(|_| ())
}

/// Reads a pattern file: one pattern a line; blank lines and lines starting with `#`
/// are skipped, a trailing `\r` is stripped. An unreadable file, a line that is not
/// UTF-8 or a pattern that does not parse is an error naming the file and the line.
pub fn read_file(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::Config(format!(
            "exclude file {}: cannot read it: {e}",
            path.display()
        ))
    })?;
    parse_file(path, &bytes)
}

/// The patterns of pattern file `path` holding `bytes` ([`read_file`]).
pub fn parse_file(path: &Path, bytes: &[u8]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|e| {
            Error::Config(format!(
                "{}: exclude pattern is not UTF-8 (invalid byte at column {})",
                at(),
                e.valid_up_to() + 1
            ))
        })?;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        // White space around a pattern is taken off (as restic does), with a warning: a
        // name beginning or ending with a space is written `[ ]`. (Refused for a while
        // this session: that stopped a daemon whose existing file had a stray space.)
        if line.trim() != line {
            tracing::warn!(
                "{}: exclude pattern {line:?}: the white space around it is not part of the pattern (a space that is part of a name is written [ ])",
                at()
            );
        }
        let line = line.trim();
        // rsync's and rsnapshot's exclude rule `- PATTERN`: the pattern.
        let line = line.strip_prefix("- ").unwrap_or(line);
        check_given(line).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", at())),
            e => e,
        })?;
        out.push(line.to_string());
    }
    Ok(out)
}

/// Checks an exclude pattern as a user gives it (`--exclude`, a job's `exclude`, a
/// pattern file's line after its `- `): it must parse, and must not be a rule of
/// another tool that snapring would take literally and so match nothing or less than
/// meant: rsync's include rule `+ PATTERN` and exclude rule `- PATTERN` (outside a
/// pattern file), restic's negation `!PATTERN`. A name that starts so is written
/// escaped: `\+ `, `\- `, `\!`.
pub fn check_given(p: &str) -> Result<()> {
    let refuse = |what: &str, how: &str| {
        Err(Error::Config(format!(
            "exclude pattern {p:?} is {what}; {how}"
        )))
    };
    if let Some(rest) = p.strip_prefix("+ ") {
        return refuse(
            "an rsync include rule ('+ PATTERN')",
            &format!(
                "snapring's exclusions have no include rules: remove it and narrow the exclude patterns it made an exception to (to exclude a name starting with '+ ', write \\+ {rest})"
            ),
        );
    }
    if let Some(rest) = p.strip_prefix('!') {
        return refuse(
            "a restic negation ('!PATTERN')",
            &format!(
                "snapring's exclusions have no negation: remove it and narrow the exclude patterns it made an exception to (to exclude a name starting with '!', write \\!{rest})"
            ),
        );
    }
    if let Some(rest) = p.strip_prefix("- ") {
        return refuse(
            "an rsync exclude rule ('- PATTERN')",
            &format!(
                "give the pattern alone ({rest:?}; a pattern file's line may keep the '- '), or write \\- {rest} for a name starting with '- '"
            ),
        );
    }
    build(&[p.to_string()]).map(|_| ())
}

pub struct Excludes {
    names: GlobSet,
    paths: GlobSet,
    dir_names: GlobSet,
    dir_paths: GlobSet,
    empty: bool,
    tags: Vec<Tag>,
}

pub fn build(patterns: &[String]) -> Result<Excludes> {
    let mut sets = [
        GlobSetBuilder::new(),
        GlobSetBuilder::new(),
        GlobSetBuilder::new(),
        GlobSetBuilder::new(),
    ];
    for p in patterns {
        let (p2, dir_only) = match p.strip_suffix('/') {
            Some(s) => (s, true),
            None => (p.as_str(), false),
        };
        let anchored = p2.contains('/');
        let p3 = p2.trim_start_matches('/');
        if p3.is_empty() {
            return Err(Error::Config(format!(
                "exclude pattern {p:?} matches nothing"
            )));
        }
        let g = GlobBuilder::new(p3)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| Error::Config(format!("exclude pattern {p:?}: {e}")))?;
        sets[(dir_only as usize) * 2 + anchored as usize].add(g);
    }
    let [a, b, c, d] = sets.map(|s| s.build().expect("globs already validated"));
    Ok(Excludes {
        empty: patterns.is_empty(),
        names: a,
        paths: b,
        dir_names: c,
        dir_paths: d,
        tags: Vec::new(),
    })
}

impl Excludes {
    pub fn is_excluded(&self, rel: &RelPath, is_dir: bool) -> bool {
        if self.empty {
            return false;
        }
        let name = std::path::Path::new(std::ffi::OsStr::from_bytes_compat(rel.file_name()));
        let path = rel.as_path();
        self.names.is_match(name)
            || self.paths.is_match(path)
            || (is_dir && (self.dir_names.is_match(name) || self.dir_paths.is_match(path)))
    }
}

impl Excludes {
    /// Whether any tag is set (`--exclude-caches`, `--exclude-if-present`).
    pub fn has_tags(&self) -> bool {
        !self.tags.is_empty()
    }

    /// The names of the tags.
    pub fn tag_names(&self) -> impl Iterator<Item = &[u8]> {
        self.tags.iter().map(|t| t.name.as_slice())
    }

    /// The directory `dir` listed `names`: if it is tagged, the names it keeps (the
    /// tag, as restic keeps it; none when two different tags are there, since each
    /// tag's rule leaves the other tag out), else `None`. A tag with a header is
    /// opened (no symlink followed, a regular file only) and its first bytes compared;
    /// a tag that cannot be read does not count (the directory is backed up).
    pub fn keep_in(&self, dir: BorrowedFd<'_>, names: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
        self.keep_by(names, |name, header| has_header(dir, name, header))
    }

    /// [`Excludes::keep_in`] with the header check made by `has_header(name, header)`.
    pub fn keep_by(
        &self,
        names: &[Vec<u8>],
        has_header: impl Fn(&[u8], &[u8]) -> bool,
    ) -> Option<Vec<Vec<u8>>> {
        if self.tags.is_empty() {
            return None;
        }
        let mut matched: Option<Vec<Vec<u8>>> = None;
        for t in &self.tags {
            if !names.contains(&t.name) {
                continue;
            }
            if let Some(h) = &t.header
                && !has_header(&t.name, h)
            {
                continue;
            }
            match &mut matched {
                None => matched = Some(vec![t.name.clone()]),
                Some(keep) => keep.retain(|n| *n == t.name),
            }
        }
        matched
    }
}

impl Excludes {
    /// Whether entry `rel` (from the backup root) is left out, as the backup's walk
    /// decides it: `kept` is [`Excludes::keep_in`]'s answer for its directory's listing
    /// (a tagged directory keeps only those names), then the patterns. `is_dir` is asked
    /// only when a directory-only pattern (`logs/`) decides it, so an entry costs no
    /// `lstat` otherwise. `restore --mirror` keeps what this says the snapshot left out;
    /// the empty-source guard asks it of a backup root's entries
    /// ([`Excludes::leave_nothing_of`]).
    pub fn leaves_out(
        &self,
        kept: Option<&[Vec<u8>]>,
        rel: &RelPath,
        is_dir: impl FnOnce() -> bool,
    ) -> bool {
        if kept.is_some_and(|k| !k.iter().any(|n| n.as_slice() == rel.file_name())) {
            return true;
        }
        self.is_excluded(rel, false) || (self.is_excluded(rel, true) && is_dir())
    }

    /// Whether the exclusions leave out every entry of directory `dir` (at `rel` from
    /// the backup root), which lists `names` ([`Excludes::leaves_out`] of each; an entry
    /// whose type cannot be read counts as kept). With the backup root, a source
    /// that is not empty but of which nothing would be backed up: a pattern file that
    /// matches everything, or a tag at the root (`CACHEDIR.TAG` with `--exclude-caches`,
    /// `--exclude-if-present NAME`), which leaves only the tag itself. Either would
    /// expire history as an unmounted source would.
    pub fn leave_nothing_of(&self, dir: BorrowedFd<'_>, rel: &RelPath, names: &[Vec<u8>]) -> bool {
        if self.keep_in(dir, names).is_some() {
            return true;
        }
        names.iter().all(|n| {
            self.leaves_out(None, &rel.join(n), || {
                crate::fsx::lstat_at(dir, n).is_ok_and(|m| m.kind == crate::fsx::Kind::Dir)
            })
        })
    }
}

/// Whether `name` in `dir` is a regular file that starts with `header`.
pub fn has_header(dir: BorrowedFd<'_>, name: &[u8], header: &[u8]) -> bool {
    match crate::fsx::open_read_at(dir, name) {
        Ok(fd) => starts_with(fd.as_fd(), header),
        Err(e) => {
            tracing::debug!("tag {}: not read: {e}", String::from_utf8_lossy(name));
            false
        }
    }
}

/// Whether the file open at `fd` (at its start) begins with `header`.
pub fn starts_with(fd: BorrowedFd<'_>, header: &[u8]) -> bool {
    let mut buf = vec![0u8; header.len()];
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
    got == header.len() && buf == header
}

trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &Self;
}
impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &Self {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(p: &[&str], path: &str, dir: bool) -> bool {
        let e = build(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        e.is_excluded(&RelPath::new(path.as_bytes()).unwrap(), dir)
    }

    #[test]
    fn rules() {
        assert!(ex(&["*.tmp"], "a/b/x.tmp", false));
        assert!(!ex(&["*.tmp"], "a/b/x.tmpl", false));
        assert!(ex(&["/cache"], "cache", true));
        assert!(!ex(&["/cache"], "a/cache", true));
        assert!(ex(&["a/*/c"], "a/b/c", false));
        assert!(!ex(&["a/*/c"], "a/b/x/c", false));
        assert!(ex(&["a/**/c"], "a/b/x/c", false));
        assert!(ex(&["logs/"], "x/logs", true));
        assert!(!ex(&["logs/"], "x/logs", false));
        assert!(ex(&["name with space"], "d/name with space", false));
        assert!(build(&["[".to_string()]).is_err());
    }

    #[test]
    fn pattern_files_skip_comments_and_blank_lines_and_name_the_bad_line() {
        let p = Path::new("/etc/x.exclude");
        let got = parse_file(p, b"# c\n\n  \n*.tmp\r\ncache/\n#x\nlast").unwrap();
        assert_eq!(got, ["*.tmp", "cache/", "last"]);
        let e = parse_file(p, b"ok\n\n[\n").unwrap_err().to_string();
        assert!(e.contains("/etc/x.exclude:3: exclude pattern \"[\""), "{e}");
        let e = parse_file(p, b"ok\n\xff\n").unwrap_err().to_string();
        assert!(
            e.contains("/etc/x.exclude:2: exclude pattern is not UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn a_tagged_directory_keeps_its_tag_and_two_tags_keep_nothing_as_in_restic() {
        let s = Settings {
            exclude_caches: true,
            exclude_if_present: vec![".nobackup".into(), "MARK:hdr".into()],
            ..Default::default()
        };
        let e = s.build().unwrap();
        let n = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        let valid = |_: &[u8], _: &[u8]| true;
        let invalid = |_: &[u8], _: &[u8]| false;
        assert_eq!(e.keep_by(&n(&["a", "b"]), valid), None);
        assert_eq!(
            e.keep_by(&n(&["CACHEDIR.TAG", "a"]), valid),
            Some(n(&["CACHEDIR.TAG"]))
        );
        // A wrong signature is no tag; a tag without a header needs none.
        assert_eq!(e.keep_by(&n(&["CACHEDIR.TAG", "a"]), invalid), None);
        assert_eq!(
            e.keep_by(&n(&[".nobackup", "a"]), invalid),
            Some(n(&[".nobackup"]))
        );
        assert_eq!(e.keep_by(&n(&["MARK", "a"]), invalid), None);
        assert_eq!(
            e.keep_by(&n(&["CACHEDIR.TAG", ".nobackup"]), valid),
            Some(vec![])
        );
        assert!(tag("").is_err() && tag("a/b").is_err() && tag("..").is_err());
    }
}
