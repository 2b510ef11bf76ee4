//! Where a repository's files live: the `Backend` trait (write-once files named by
//! id, `config`, listing, ranged reads), its local-directory implementation (`file:///PATH`)
//! and the parsing of `--dest` into one (`s3://` goes to `super::s3`). restic's layout:
//! `config`, `keys/`, `data/xx/` (packs under the first two hex digits of their id),
//! `index/`, `snapshots/`, `locks/`. Every file is written once, crash-safely (temp file,
//! fsync, rename), and named by the SHA-256 of its bytes (except `config`). Does file I/O.

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

/// A repository's storage. Files other than `config` are content-addressed, so writing
/// one that exists already (a retry, a second run) is harmless.
pub trait Backend: Send + Sync {
    /// Where the repository is, for messages (`/path` or `s3://bucket/prefix`).
    fn location(&self) -> String;
    /// Where one file is, for messages.
    fn file_location(&self, kind: Kind, id: &Id) -> String;
    /// The `config` file, or `None` if there is none (no repository here).
    fn read_config(&self) -> Result<Option<Vec<u8>>>;
    /// Creates `config`; fails if one exists.
    fn create_config(&self, bytes: &[u8]) -> Result<()>;
    /// Prepares an empty repository's layout (directories, where there are any).
    fn create_layout(&self) -> Result<()>;
    fn write(&self, kind: Kind, id: &Id, bytes: &[u8]) -> Result<()>;
    /// `write`, given the bytes to keep: a backend that would copy them (an HTTP
    /// request's body) sends them as they are, so a 16 MiB pack is held once.
    fn write_vec(&self, kind: Kind, id: &Id, bytes: Vec<u8>) -> Result<()> {
        self.write(kind, id, &bytes)
    }
    fn read(&self, kind: Kind, id: &Id) -> Result<Vec<u8>>;
    /// `len` bytes at `offset` of a pack.
    fn read_range(&self, pack: &Id, offset: u64, len: usize) -> Result<Vec<u8>>;
    fn remove(&self, kind: Kind, id: &Id) -> Result<()>;
    /// The ids of every file of a kind, sorted (names that are not ids are left out).
    fn list(&self, kind: Kind) -> Result<Vec<Id>>;
    /// [`Backend::list`], each file with its size in bytes (`repair index` tells a
    /// pack cut short or grown from one the index describes without reading it).
    fn list_sizes(&self, kind: Kind) -> Result<Vec<(Id, u64)>>;

    /// snapring's own files beside restic's, under `snapring/` (a shard run's plan,
    /// claims and commits, `shard::repository`): `rel` is relative to the repository's
    /// root. restic leaves directories it does not know alone.
    /// The file `rel`, or `None` if there is none.
    fn read_extra(&self, rel: &str) -> Result<Option<Vec<u8>>>;
    /// [`Backend::read_extra`], with how long ago the file was last written by the
    /// storage's own clock ([`Written`]; `None` where the storage does not say), so
    /// that a shard run's leases are judged by one clock whatever the hosts' say.
    fn read_extra_written(&self, rel: &str) -> Result<Option<(Vec<u8>, Option<Written>)>> {
        Ok(self.read_extra(rel)?.map(|b| (b, None)))
    }
    /// Creates `rel` with `bytes` only if nothing is there (an exclusive create; a
    /// conditional `If-None-Match: *` write on S3); `false`: something was.
    fn create_extra(&self, rel: &str, bytes: &[u8]) -> Result<bool>;
    /// Writes `rel`, replacing what is there.
    fn put_extra(&self, rel: &str, bytes: &[u8]) -> Result<()>;
    /// The names in the folder `rel`, files and folders (one level), sorted; none if it
    /// does not exist.
    fn list_extra(&self, rel: &str) -> Result<Vec<String>>;
    /// Removes `rel`; a file already gone is no error.
    fn remove_extra(&self, rel: &str) -> Result<()>;
    /// Removes the folder `rel` with everything in it; none is no error.
    fn remove_extra_tree(&self, rel: &str) -> Result<()>;
    /// The run's cancel flag (SIGINT/SIGTERM, the backup window): a backend that waits
    /// long before retrying (S3 while throttled) stops waiting once it is set.
    fn watch_cancel(&self, _cancel: &std::sync::Arc<std::sync::atomic::AtomicBool>) {}
    /// The repository's directory, for a repository on a local path (`None` on S3): a
    /// backup does not walk into it where the source holds it through another mount.
    fn local_root(&self) -> Option<&Path> {
        None
    }
    /// `Some(why)` once the storage has answered no pack read at all: reads of
    /// [`STORAGE_DOWN_PACKS`] distinct packs failed with EIO (each read twice), no
    /// pack read of this process succeeded, and a read of a file known to be there
    /// (`config`: [`Backend::probe_down`]) fails too: a disk or NFS server that is down,
    /// not bad sectors under the first packs read (then `config` reads, and the packs'
    /// files are each a problem). A restore stops then, retryable, rather than try every
    /// file (two reads and a pause per pack) and end `partial` with every file lost.
    fn storage_down(&self) -> Option<String> {
        None
    }
    /// Asked once a read failed with EIO: `Some(why)` if a read of a file known to be
    /// there (`config`) fails too (the storage is down), `None` if it reads (the storage
    /// is up: what failed is damaged there).
    fn probe_down(&self) -> Option<String> {
        None
    }
}

/// When a file was last written, by the storage's clock ([`Backend::read_extra_written`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Its age, measured by the storage itself (S3: the answer's `Date` less the
    /// object's `Last-Modified`, both of the same answer, so no host's clock is
    /// involved), rounded down so that it is never more than the true age.
    Ago(std::time::Duration),
    /// Its mtime, set by the store's clock (a local or NFS file system): to be
    /// compared with the store's clock (`shard::state::StoreClock`).
    At(std::time::SystemTime),
}

/// Distinct packs answering EIO, with no pack read at all, that make a local
/// repository's storage count as down ([`Backend::storage_down`]).
pub const STORAGE_DOWN_PACKS: usize = 3;

/// The path (object key) of a file relative to the repository's root, restic's layout.
pub fn rel_path(kind: Kind, id: &Id) -> String {
    let hex = id.hex();
    if kind == Kind::Pack {
        format!("data/{}/{hex}", &hex[..2])
    } else {
        format!("{}/{hex}", kind.dir())
    }
}

/// Opens the storage `--dest` names: `file:///ABSOLUTE/PATH` or `s3://BUCKET/PREFIX`.
/// What is wrong with the form of a repository `--dest` (`s3://` without a bucket,
/// `file://` with a relative path), or `None`: a flag's value is checked with it where
/// it is read, a usage error (exit 64) before anything runs. `--dest s3://` failed
/// later, as a run (exit 1). (restic's own syntax and a prefix with `..` parts are
/// refused by [`from_dest`], as before.)
pub fn url_form(dest: &str) -> Option<String> {
    if let Some(rest) = dest.strip_prefix("s3://") {
        if rest.split('/').next().unwrap_or("").is_empty() {
            return Some(format!(
                "--dest {dest:?}: expected s3://BUCKET/PREFIX (no bucket named)"
            ));
        }
    } else if dest.starts_with("file://") && !parse_file_url(dest).is_some_and(|p| p.is_absolute())
    {
        return Some(format!(
            "--dest {dest:?}: expected file:///ABSOLUTE/PATH or s3://BUCKET/PREFIX"
        ));
    }
    None
}

pub fn from_dest(dest: &str) -> Result<std::sync::Arc<dyn Backend>> {
    if let Some(hint) = restic_syntax(dest) {
        return Err(Error::Other(hint));
    }
    if dest.starts_with("s3://") {
        return Ok(std::sync::Arc::new(super::s3::S3::from_url(dest)?));
    }
    match parse_file_url(dest).filter(|p| p.is_absolute()) {
        Some(p) => Ok(std::sync::Arc::new(Local::new(&p))),
        None => Err(Error::Other(format!(
            "--dest {dest:?}: expected file:///ABSOLUTE/PATH or s3://BUCKET/PREFIX"
        ))),
    }
}

/// restic's S3 repository syntax, `s3:http://HOST:PORT/BUCKET/PREFIX` or
/// `s3:s3.amazonaws.com/BUCKET/PREFIX` (it was read as a local path): the error saying
/// what snapring takes instead, `s3://BUCKET/PREFIX` with the endpoint in
/// `AWS_ENDPOINT_URL`. `None` for anything else.
pub fn restic_syntax(dest: &str) -> Option<String> {
    let (path, endpoint) = restic_syntax_parts(dest)?;
    Some(format!(
        "--dest {dest:?} is restic's repository syntax; snapring names an S3 repository \
         s3://BUCKET/PREFIX and reads the endpoint from the environment: give --dest \
         s3://{path} {endpoint}"
    ))
}

/// [`restic_syntax`] for a config file's `dest` key: the same advice in its terms.
pub fn restic_syntax_in_config(dest: &str) -> Option<String> {
    let (path, endpoint) = restic_syntax_parts(dest)?;
    Some(format!(
        "{dest:?} is restic's repository syntax; snapring names an S3 repository \
         s3://BUCKET/PREFIX and reads the endpoint from the environment: write \
         dest = \"s3://{path}\" and run {endpoint}"
    ))
}

/// The bucket and prefix of restic's S3 syntax, and where its endpoint goes.
fn restic_syntax_parts(dest: &str) -> Option<(String, String)> {
    let rest = dest.strip_prefix("s3:").filter(|r| !r.starts_with("//"))?;
    let (scheme, rest) = rest.split_once("://").unwrap_or(("https", rest));
    let (host, path) = rest.split_once('/')?;
    let path = path.trim_matches('/');
    let path = if path.is_empty() {
        "BUCKET/PREFIX"
    } else {
        path
    };
    let aws =
        host == "s3.amazonaws.com" || (host.starts_with("s3.") && host.ends_with(".amazonaws.com"));
    let endpoint = if aws {
        "(AWS: the region in AWS_REGION)".to_string()
    } else {
        format!("with AWS_ENDPOINT_URL={scheme}://{host}")
    };
    Some((path.to_string(), endpoint))
}

/// How long a local pack read that failed with EIO waits before its one more try
/// ([`Local::read_range`]).
const EIO_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// Whether `e` is an I/O error (EIO) of the storage, as a failing disk or an NFS client
/// answers.
pub fn is_eio(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. }
        if source.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()))
}

/// Whether `e` is a failure to read the storage rather than a verdict on its bytes: an
/// I/O error (EIO from a failing disk, an NFS client, a FUSE layer; not a file gone
/// or cut short) or a transport failing past its retries ([`Error::Unreachable`]).
/// Such bytes are not known to be damaged (a rerun may read them): `verify` reports
/// them as not checked, never as corrupt, and `repair index` stops on them rather than
/// leave the pack out.
pub fn is_read_failure(e: &Error) -> bool {
    match e {
        Error::Unreachable(_) => true,
        Error::Io { source, .. } => !matches!(
            source.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// A repository's directory.
#[derive(Clone, Debug)]
pub struct Local {
    pub root: PathBuf,
    /// The packs a read of which failed with EIO twice: a later read of one is tried
    /// once, without the pause (another range of it may read: a bad sector spoils a
    /// blob, not its pack), so a pack of 3,000 small blobs that does not read costs
    /// 3,000 failed reads, not 3,000 pauses.
    eio_packs: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<Id>>>,
    /// A pack read succeeded ([`Backend::storage_down`]).
    read_ok: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The mode of the files it writes ([`Local::file_mode`]), found once.
    file_mode: std::sync::Arc<std::sync::OnceLock<u32>>,
}

/// The directory of a `file:///PATH` destination, or `None` if `dest` is not one.
pub fn parse_file_url(dest: &str) -> Option<PathBuf> {
    dest.strip_prefix("file://").map(PathBuf::from)
}

impl Local {
    pub fn new(root: &Path) -> Local {
        Local {
            root: root.to_path_buf(),
            eio_packs: Default::default(),
            read_ok: Default::default(),
            file_mode: Default::default(),
        }
    }

    /// The mode of the repository files it writes: 0600, or 0640 when the repository's
    /// `config` is readable by its group (`chmod -R g+rX`: a repository its group
    /// reads, restic's "group-accessible repository"), as restic then writes its files
    /// group-readable too. They were all 0600: after one snapring run the group could
    /// read no snapshot, restic's neither (the index did not read).
    fn file_mode(&self) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        *self
            .file_mode
            .get_or_init(|| match std::fs::metadata(self.config_path()) {
                Ok(m) if m.permissions().mode() & 0o040 != 0 => 0o640,
                _ => 0o600,
            })
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config")
    }

    pub fn path(&self, kind: Kind, id: &Id) -> PathBuf {
        self.root.join(rel_path(kind, id))
    }
}

impl Backend for Local {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn file_location(&self, kind: Kind, id: &Id) -> String {
        self.path(kind, id).display().to_string()
    }

    fn read_config(&self) -> Result<Option<Vec<u8>>> {
        let p = self.config_path();
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &p)(e)),
        }
    }

    /// Creates the directories of a new repository (256 under `data/`, as restic does).
    fn create_layout(&self) -> Result<()> {
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
    fn write(&self, kind: Kind, id: &Id, bytes: &[u8]) -> Result<()> {
        let p = self.path(kind, id);
        if p.exists() {
            return Ok(());
        }
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        crate::util::write_atomic_mode(&p, bytes, self.file_mode()).map_err(io_err("write", &p))
    }

    fn create_config(&self, bytes: &[u8]) -> Result<()> {
        let p = self.config_path();
        if p.exists() {
            return Err(already_a_repository(&self.location()));
        }
        crate::util::write_atomic(&p, bytes).map_err(io_err("write", &p))
    }

    fn read(&self, kind: Kind, id: &Id) -> Result<Vec<u8>> {
        let p = self.path(kind, id);
        std::fs::read(&p).map_err(io_err("read", &p))
    }

    /// A read that fails with EIO is read once more, after [`EIO_RETRY_PAUSE`], with a
    /// warning: an NFS client can answer EIO for a moment (a server restarting, a
    /// `soft` mount timing out) and the next read works. A second EIO is returned: a
    /// disk failing under this pack (the caller decides what that pack's loss means;
    /// `restore` fails only the files with blobs there).
    fn read_range(&self, pack: &Id, offset: u64, len: usize) -> Result<Vec<u8>> {
        let p = self.path(Kind::Pack, pack);
        let once = || -> Result<Vec<u8>> {
            // Tests make one read fail with EIO here (a transient fault).
            if crate::failpoint::hit("restic.local_read").is_err() {
                return Err(io_err("read", &p)(std::io::Error::from_raw_os_error(
                    rustix::io::Errno::IO.raw_os_error(),
                )));
            }
            let mut f = std::fs::File::open(&p).map_err(io_err("open", &p))?;
            f.seek(SeekFrom::Start(offset))
                .map_err(io_err("seek in", &p))?;
            let mut buf = vec![0u8; len];
            f.read_exact(&mut buf).map_err(io_err("read", &p))?;
            Ok(buf)
        };
        let known_bad = || {
            self.eio_packs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(pack)
        };
        let got = match once() {
            Err(e) if is_eio(&e) && !known_bad() => {
                tracing::warn!("{e}; reading it once more");
                std::thread::sleep(EIO_RETRY_PAUSE);
                let again = once();
                if again.as_ref().is_err_and(is_eio) {
                    self.eio_packs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(*pack);
                }
                again
            }
            r => r,
        };
        if got.is_ok() {
            self.read_ok
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        got
    }

    fn storage_down(&self) -> Option<String> {
        if self.read_ok.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let bad = self
            .eio_packs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        if bad < STORAGE_DOWN_PACKS {
            return None;
        }
        // `config` reads: the storage answers, those packs are damaged (each file's
        // problem). Asked again at the next failure (one small read): a disk that
        // fails later in the restore is still found down.
        let probe = self.probe_down()?;
        Some(format!(
            "the repository {} cannot be read: {bad} packs answered EIO (each read twice, \
             {} ms apart), no pack read, and {probe} (its disk, NFS server or mount is failing)",
            self.root.display(),
            EIO_RETRY_PAUSE.as_millis()
        ))
    }

    /// Opens and reads `config` (which a repository opened has): an NFS client asks
    /// its server on open (close-to-open consistency), so a server that is down fails
    /// it.
    fn probe_down(&self) -> Option<String> {
        let p = self.config_path();
        // Tests make the storage down here (failpoint `restic.storage_probe`).
        let read = match crate::failpoint::hit("restic.storage_probe") {
            Err(_) => Err(std::io::Error::from_raw_os_error(
                rustix::io::Errno::IO.raw_os_error(),
            )),
            Ok(()) => std::fs::File::open(&p).and_then(|f| {
                use std::io::Read;
                // From the storage, not the page cache: `Repo::open` has just read it,
                // and a disk that went away would answer from memory.
                let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
                (&f).read_to_end(&mut Vec::new()).map(drop)
            }),
        };
        read.err().map(|e| {
            format!(
                "its config file does not read either ({})",
                io_err("read", &p)(e)
            )
        })
    }

    fn remove(&self, kind: Kind, id: &Id) -> Result<()> {
        let p = self.path(kind, id);
        std::fs::remove_file(&p).map_err(io_err("remove", &p))
    }

    fn list(&self, kind: Kind) -> Result<Vec<Id>> {
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

    fn list_sizes(&self, kind: Kind) -> Result<Vec<(Id, u64)>> {
        let mut out = Vec::new();
        for id in self.list(kind)? {
            let p = self.path(kind, &id);
            // The file read (a pack's reads follow a symlink, so does its size).
            match std::fs::metadata(&p) {
                Ok(md) => out.push((id, md.len())),
                // Removed since the listing (a prune of another host): not there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("stat", &p)(e)),
            }
        }
        Ok(out)
    }

    fn read_extra(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let p = self.root.join(rel);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &p)(e)),
        }
    }

    /// The file's mtime, of the file read (its create's or its last `put_extra`'s:
    /// set by the store's clock, as NFS servers do).
    fn read_extra_written(&self, rel: &str) -> Result<Option<(Vec<u8>, Option<Written>)>> {
        use std::io::Read;
        let p = self.root.join(rel);
        let mut f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &p)(e)),
        };
        let mtime = f
            .metadata()
            .and_then(|m| m.modified())
            .map_err(io_err("stat", &p))?;
        let mut b = Vec::new();
        f.read_to_end(&mut b).map_err(io_err("read", &p))?;
        Ok(Some((b, Some(Written::At(mtime)))))
    }

    /// Written under a private name, then hard-linked to `rel` (which fails if it
    /// exists, atomically, on local file systems and NFS alike).
    fn create_extra(&self, rel: &str, bytes: &[u8]) -> Result<bool> {
        let p = self.root.join(rel);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        crate::util::create_exclusive(&p, bytes).map_err(io_err("create", &p))
    }

    /// Written under a hidden private name (which `list_extra` does not show), then
    /// renamed over `rel`.
    fn put_extra(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let p = self.root.join(rel);
        let dir = p.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let tmp = dir.join(format!(
            ".{}.{}.{}.put.tmp",
            p.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id(),
            crate::util::hostname()
        ));
        let written = crate::util::create_private(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, &p));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err("write", &p)(e));
        }
        Ok(())
    }

    fn list_extra(&self, rel: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = names_if_any(&self.root.join(rel))?
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    fn remove_extra(&self, rel: &str) -> Result<()> {
        let p = self.root.join(rel);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", &p)(e)),
            _ => Ok(()),
        }
    }

    fn remove_extra_tree(&self, rel: &str) -> Result<()> {
        let p = self.root.join(rel);
        match std::fs::remove_dir_all(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", &p)(e)),
            _ => Ok(()),
        }
    }
}

/// The names in `dir`; none if it does not exist.
fn names_if_any(dir: &Path) -> Result<Vec<String>> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        _ => read_names(dir),
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

/// Says a destination is not a repository, and how to make one: a local directory
/// that is a hard-link store is named one (back up into it by its path), one that
/// holds other things is not advised `init` (which refuses it, [`unfit_for_init`]).
/// It advised `snapring init --dest file://…` for both.
pub fn not_a_repository(location: &str) -> Error {
    if !location.starts_with("s3://")
        && let Some(why) = unfit_for_init(Path::new(location))
    {
        return Error::Other(format!(
            "{location} is not a restic repository (no config file): {why}"
        ));
    }
    let url = if location.starts_with("s3://") {
        location.to_string()
    } else {
        format!("file://{location}")
    };
    Error::Other(format!(
        "{location} is not a restic repository (no config file); create one with \
         `snapring init --dest {url}`"
    ))
}

/// What a local directory holds that `init` must not make a repository in, or `None`
/// (missing, empty, or holding only restic's layout directories an interrupted `init`
/// left, or a new file system's `lost+found`): a hard-link store (a directory with
/// `.snapring/`), or anything else (a source given by mistake). `init` made a
/// repository inside both, exit 0.
pub fn unfit_for_init(dir: &Path) -> Option<String> {
    let shown = dir.display();
    if dir.join(".snapring").is_dir() {
        return Some(format!(
            "it is a snapring hard-link store (it holds .snapring/), and a repository is not made inside one; back up into the store by its path, --dest {shown} (without file://), or give `snapring init` a new or empty directory"
        ));
    }
    let layout = ["keys", "index", "snapshots", "locks", "data", "lost+found"];
    let mut other: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !layout.contains(&n.as_str()) && !config_left_by_init(n))
        .collect();
    if other.is_empty() {
        return None;
    }
    other.sort();
    let n = other.len();
    other.truncate(3);
    let more = if n > 3 {
        format!(" and {} more", n - 3)
    } else {
        String::new()
    };
    Some(format!(
        "it is not empty (it holds {}{more}), and a repository is made only in a new or empty directory (is it a source?); give `snapring init --dest file:///…` a new or empty directory",
        other.join(", ")
    ))
}

/// `config.tmp<pid>`: what an `init` killed while it wrote the config leaves
/// (`util::write_atomic`), which the next `init` writes again.
fn config_left_by_init(name: &str) -> bool {
    name.strip_prefix("config.tmp")
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Says a destination holds a repository already.
pub fn already_a_repository(location: &str) -> Error {
    Error::Other(format!(
        "{location} already holds a repository (config exists)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_killed_init_left_does_not_make_its_directory_unfit_for_init() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("keys")).unwrap();
        std::fs::write(t.path().join("config.tmp4242"), b"half").unwrap();
        assert_eq!(unfit_for_init(t.path()), None);
        std::fs::write(t.path().join("config.tmpx"), b"").unwrap();
        let why = unfit_for_init(t.path()).expect("another file is refused");
        assert!(why.contains("config.tmpx"), "{why}");
        assert!(!why.contains("config.tmp4242"), "{why}");
    }

    /// A pack that is a symlink is listed with the size of the file it reads, not the
    /// link's (`repair index` would take it for a pack cut short and leave it out).
    #[test]
    fn list_sizes_follows_a_symlinked_pack() {
        let t = tempfile::tempdir().unwrap();
        let b = Local::new(&t.path().join("repo"));
        b.create_layout().unwrap();
        let bytes = vec![7u8; 5000];
        let id = Id::hash(&bytes);
        let elsewhere = t.path().join("moved-pack");
        std::fs::write(&elsewhere, &bytes).unwrap();
        std::os::unix::fs::symlink(&elsewhere, b.path(Kind::Pack, &id)).unwrap();
        assert_eq!(b.list_sizes(Kind::Pack).unwrap(), vec![(id, 5000)]);
        assert_eq!(b.read(Kind::Pack, &id).unwrap().len(), 5000);
    }
}
