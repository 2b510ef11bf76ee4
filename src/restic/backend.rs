//! A repository on a local directory (`file:///PATH`): restic's layout, `config`,
//! `keys/`, `data/xx/` (packs under the first two hex digits of their id), `index/`,
//! `snapshots/`, `locks/`. Every file is written once, crash-safely (temp file, fsync,
//! rename), and named by the SHA-256 of its bytes (except `config`). Does file I/O.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{Error, Id, Result, io_err};

/// The kinds of files in a repository, each in its own directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Key,
    Pack,
    Index,
    Snapshot,
    Lock,
}

impl Kind {
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Key => "keys",
            Kind::Pack => "data",
            Kind::Index => "index",
            Kind::Snapshot => "snapshots",
            Kind::Lock => "locks",
        }
    }
}

/// A repository's directory.
#[derive(Clone, Debug)]
pub struct Local {
    pub root: PathBuf,
}

/// The directory of a `file:///PATH` destination, or `None` if `dest` is not one.
pub fn parse_file_url(dest: &str) -> Option<PathBuf> {
    dest.strip_prefix("file://").map(PathBuf::from)
}

impl Local {
    pub fn new(root: &Path) -> Local {
        Local {
            root: root.to_path_buf(),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config")
    }

    pub fn path(&self, kind: Kind, id: &Id) -> PathBuf {
        let hex = id.hex();
        let dir = self.root.join(kind.dir());
        if kind == Kind::Pack {
            dir.join(&hex[..2]).join(hex)
        } else {
            dir.join(hex)
        }
    }

    /// Creates the directories of a new repository (256 under `data/`, as restic does).
    pub fn create_layout(&self) -> Result<()> {
        for d in ["keys", "index", "snapshots", "locks"] {
            let p = self.root.join(d);
            std::fs::create_dir_all(&p).map_err(io_err("create directory", &p))?;
        }
        for i in 0..256 {
            let p = self.root.join("data").join(format!("{i:02x}"));
            std::fs::create_dir_all(&p).map_err(io_err("create directory", &p))?;
        }
        Ok(())
    }

    /// Writes a file under its id; an existing file of that id is already right.
    pub fn write(&self, kind: Kind, id: &Id, bytes: &[u8]) -> Result<()> {
        let p = self.path(kind, id);
        if p.exists() {
            return Ok(());
        }
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        crate::util::write_atomic(&p, bytes).map_err(io_err("write", &p))
    }

    pub fn write_config(&self, bytes: &[u8]) -> Result<()> {
        let p = self.config_path();
        crate::util::write_atomic(&p, bytes).map_err(io_err("write", &p))
    }

    pub fn read(&self, kind: Kind, id: &Id) -> Result<Vec<u8>> {
        let p = self.path(kind, id);
        std::fs::read(&p).map_err(io_err("read", &p))
    }

    /// `len` bytes at `offset` of a pack.
    pub fn read_range(&self, pack: &Id, offset: u64, len: usize) -> Result<Vec<u8>> {
        let p = self.path(Kind::Pack, pack);
        let mut f = std::fs::File::open(&p).map_err(io_err("open", &p))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(io_err("seek in", &p))?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).map_err(io_err("read", &p))?;
        Ok(buf)
    }

    pub fn remove(&self, kind: Kind, id: &Id) -> Result<()> {
        let p = self.path(kind, id);
        std::fs::remove_file(&p).map_err(io_err("remove", &p))
    }

    /// The ids of every file of a kind (names that are not ids are left out: a temp
    /// file of an interrupted write).
    pub fn list(&self, kind: Kind) -> Result<Vec<Id>> {
        let dir = self.root.join(kind.dir());
        let mut out = Vec::new();
        if kind == Kind::Pack {
            for sub in read_names(&dir)? {
                out.extend(ids_in(&dir.join(sub))?);
            }
        } else {
            out = ids_in(&dir)?;
        }
        out.sort();
        Ok(out)
    }
}

fn read_names(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(io_err("list", dir))?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(io_err("list", dir))?;
        if let Some(n) = e.file_name().to_str() {
            names.push(n.to_string());
        }
    }
    Ok(names)
}

fn ids_in(dir: &Path) -> Result<Vec<Id>> {
    Ok(read_names(dir)?
        .iter()
        .filter(|n| n.len() == 64)
        .filter_map(|n| Id::parse(n).ok())
        .collect())
}

/// Says a destination is not a repository, and how to make one.
pub fn not_a_repository(root: &Path) -> Error {
    Error::Other(format!(
        "{} is not a restic repository (no config file); create one with \
         `snapring init --dest file://{}`",
        root.display(),
        root.display()
    ))
}
