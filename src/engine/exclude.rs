//! Exclude patterns, rsync-like: a pattern without `/` matches a name at any depth; a
//! pattern with `/` matches the path from the backup root (a leading `/` is optional);
//! a trailing `/` matches directories only; `**` crosses directories. Pure.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::relpath::RelPath;

pub struct Excludes {
    names: GlobSet,
    paths: GlobSet,
    dir_names: GlobSet,
    dir_paths: GlobSet,
    empty: bool,
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
}
