//! The local cache of a repository's tree blobs, so an incremental backup (and a
//! restore, a prune) reads the parent snapshot's trees from local disk, not from the
//! server: `$XDG_CACHE_HOME/snapring/restic/<repository id>/trees/<xx>/<tree id>`
//! (`$HOME/.cache` without `XDG_CACHE_HOME`; no cache without either, or with
//! `SNAPRING_CACHE=off`). An entry is the blob as the pack holds it (encrypted, so the
//! cache shows no file names), after its uncompressed length. Entries are written when a
//! backup saves a tree and when a tree is read from the server. Every read is checked
//! (the MAC, then the SHA-256 against the id): a damaged or foreign entry is removed
//! and the tree read from the server, so the cache is always safe to delete or lose.
//! Writes are best-effort (a full disk costs only speed). Does file I/O.

use std::path::{Path, PathBuf};

use super::Id;
use super::crypto::Key;
use super::pack::{BlobType, Entry, open_blob};

/// Where one repository's trees are cached.
#[derive(Debug, Clone)]
pub struct TreeCache {
    dir: PathBuf,
}

/// Marks the cache as one, for backup tools (<https://bford.info/cachedir/>).
const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by snapring (restic repository trees).\n";

impl TreeCache {
    /// The cache of the repository with id `repo_id` (its config's `id`), under the
    /// user's cache directory; `None` when there is none or `SNAPRING_CACHE=off`.
    pub fn for_repository(repo_id: &str) -> Option<TreeCache> {
        if std::env::var("SNAPRING_CACHE").is_ok_and(|v| v == "off") {
            return None;
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| Path::new(&h).join(".cache"))
            })?;
        // The id names a directory: only hex, as restic writes it.
        if repo_id.is_empty() || !repo_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(TreeCache::at(&base.join("snapring"), repo_id))
    }

    /// The cache of repository `repo_id` under `root` (`…/snapring`).
    pub fn at(root: &Path, repo_id: &str) -> TreeCache {
        TreeCache {
            dir: root.join("restic").join(repo_id).join("trees"),
        }
    }

    /// The directory of the trees (for tests and messages).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &Id) -> PathBuf {
        let hex = id.hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// The tree `id`'s plaintext, if the cache has it intact. A damaged entry is
    /// removed.
    pub fn get(&self, key: &Key, id: &Id) -> Option<Vec<u8>> {
        let p = self.path(id);
        let bytes = std::fs::read(&p).ok()?;
        let plain = decode(key, id, &bytes);
        if plain.is_none() {
            tracing::debug!(path = %p.display(), "damaged tree cache entry removed");
            let _ = std::fs::remove_file(&p);
        }
        plain
    }

    /// Keeps the sealed tree blob `id` (as packed: `sealed`, with its uncompressed length).
    pub fn put(&self, id: &Id, sealed: &[u8], uncompressed_length: Option<u32>) {
        let p = self.path(id);
        if p.exists() {
            return;
        }
        let mut bytes = Vec::with_capacity(4 + sealed.len());
        bytes.extend_from_slice(&uncompressed_length.unwrap_or(u32::MAX).to_le_bytes());
        bytes.extend_from_slice(sealed);
        if let Err(e) = self.write(&p, &bytes) {
            tracing::debug!(path = %p.display(), error = %e, "cannot write the tree cache");
        }
    }

    /// Writes `bytes` to `p` through a temp file and a rename (no fsync: a torn entry
    /// fails its check and is read from the server again).
    fn write(&self, p: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let dir = p.parent().expect("an entry has a directory");
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)?;
            let root = self
                .dir
                .ancestors()
                .nth(3)
                .expect("…/snapring/restic/ID/trees");
            let tag = root.join("CACHEDIR.TAG");
            if !tag.exists() {
                let _ = std::fs::write(tag, CACHEDIR_TAG);
            }
        }
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            p.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
            std::process::id()
        ));
        // A full cache disk fails the write half way: the half-written file goes too.
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, p))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
    }
}

/// An entry's plaintext, if it is the tree `id` sealed with `key`.
fn decode(key: &Key, id: &Id, bytes: &[u8]) -> Option<Vec<u8>> {
    let (len, sealed) = bytes.split_first_chunk::<4>()?;
    let n = u32::from_le_bytes(*len);
    let e = Entry {
        kind: BlobType::Tree,
        id: *id,
        offset: 0,
        length: u32::try_from(sealed.len()).ok()?,
        uncompressed_length: (n != u32::MAX).then_some(n),
    };
    open_blob(key, sealed, &e).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restic::pack::seal_blob;

    #[test]
    fn an_entry_round_trips_and_a_damaged_one_is_dropped() {
        let t = tempfile::tempdir().unwrap();
        let cache = TreeCache::at(t.path(), "abcd");
        let key = Key::random();
        let plain = br#"{"nodes":[]}"#.repeat(50);
        let id = Id::hash(&plain);
        assert_eq!(cache.get(&key, &id), None);
        let (sealed, n) = seal_blob(&key, &plain);
        cache.put(&id, &sealed, n);
        assert_eq!(cache.get(&key, &id).as_deref(), Some(&plain[..]));
        assert!(t.path().join("CACHEDIR.TAG").is_file());
        // Another key (another repository under the same id): not taken, removed.
        assert_eq!(cache.get(&Key::random(), &id), None);
        assert!(!cache.path(&id).exists());
        // One flipped bit: not taken, removed.
        cache.put(&id, &sealed, n);
        let p = cache.path(&id);
        let mut b = std::fs::read(&p).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert_eq!(cache.get(&key, &id), None);
        assert!(!p.exists());
        // A truncated entry: not taken.
        std::fs::write(&p, [1u8, 2]).unwrap();
        assert_eq!(cache.get(&key, &id), None);
    }

    /// Files under `dir` whose name ends in `.tmp`.
    fn temp_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(temp_files(&p));
            } else if p.to_string_lossy().ends_with(".tmp") {
                out.push(p);
            }
        }
        out
    }

    /// A cache on a full disk (a real 64 KiB tmpfs) keeps what fitted, and no
    /// half-written temp file of the entries that did not.
    #[test]
    fn a_full_cache_disk_leaves_no_temp_files() {
        let t = tempfile::tempdir().unwrap();
        let at = t.path().join("small");
        std::fs::create_dir(&at).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&at)
            .output();
        match mounted {
            Ok(o) if o.status.success() => {}
            other => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs at {}: {other:?}",
                    at.display()
                );
                return;
            }
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(self.0)
                    .status();
            }
        }
        let _unmount = Unmount(&at);
        let cache = TreeCache::at(&at, "abcd");
        let key = Key::random();
        let mut kept = 0;
        for i in 0..40u32 {
            // Random bytes do not compress: each entry takes about 12 KiB.
            let plain: Vec<u8> = (0..3000u32)
                .flat_map(|j| (i.wrapping_mul(7919) ^ j.wrapping_mul(104_729)).to_le_bytes())
                .collect();
            let id = Id::hash(&plain);
            let (sealed, n) = seal_blob(&key, &plain);
            cache.put(&id, &sealed, n);
            if cache.get(&key, &id).is_some() {
                kept += 1;
            }
        }
        assert!(kept > 0, "nothing fitted in the cache");
        assert!(
            kept < 40,
            "the 64 KiB cache was never full ({kept} entries kept)"
        );
        assert_eq!(temp_files(&at), Vec::<PathBuf>::new());
    }
}
