//! An opened repository: `init` (layout, master key, key file, config), `open` (find
//! the key the password opens, read the config), unpacked files (index, snapshots,
//! locks: `0x02 || zstd(JSON)`, sealed, named by the SHA-256 of the sealed bytes), the
//! in-memory index, reading blobs, and the `Packer` that collects new blobs into packs
//! (data and tree blobs in separate packs, filled and uploaded by many workers at once) and
//! writes their index file. Does file I/O
//! through `backend`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::backend::{Backend, Kind, Local, already_a_repository, not_a_repository};
use super::cache::TreeCache;
use super::chunker::{Pol, Tables};
use super::crypto::{DEFAULT_KDF, KdfParams, Key, KeyFile};
use super::index::{Index, IndexFile, Location, PackJson};
use super::pack::{BlobType, Entry, PackBuilder, open_blob, seal_blob};
use super::password::Password;
use super::{Error, Id, Result, corrupt, io_err};

/// Index files read at once when a repository is opened.
const INDEX_READS: usize = 8;

/// The decrypted `config` file.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Config {
    pub version: u32,
    pub id: String,
    pub chunker_polynomial: String,
}

pub struct Repo {
    pub backend: Arc<dyn Backend>,
    pub key: Key,
    pub config: Config,
    pub pol: Pol,
    pub index: Index,
    /// The index files `index` was read from (by `open`, `reload_index`,
    /// `refresh_index`).
    index_files: std::collections::BTreeSet<Id>,
    /// The local cache of tree blobs (`cache`); `None` unless `use_user_cache` set one.
    pub tree_cache: Option<TreeCache>,
    /// Index files that do not read (damaged: they do not match their name, do not
    /// open, do not parse) and why, left out of `index`: only when opened with
    /// [`Repo::open_tolerant`] (`verify` reports them); otherwise such a file is an
    /// error naming `snapring repair index`.
    pub damaged_index_files: Vec<(Id, String)>,
    tolerate_damaged_index: bool,
}

/// Creates a repository (format version 2) in the directory `root`, which must not
/// hold one yet.
pub fn init(root: &Path, password: &[u8], kdf: KdfParams) -> Result<Config> {
    init_in(&Local::new(root), password, kdf)
}

/// Creates a repository (format version 2) in `b`, which must not hold one yet.
pub fn init_in(b: &dyn Backend, password: &[u8], kdf: KdfParams) -> Result<Config> {
    init_stoppable(b, password, kdf, &std::sync::atomic::AtomicBool::new(false))
}

/// `init_in`, stopped by `cancel` before each write with [`Error::Cancelled`]. A key
/// file written for a `config` that then is not (or is another's, by a racing `init`)
/// is removed again, best effort: a stray key the password opens may be tried first
/// (by name) and open no `config`.
pub fn init_stoppable(
    b: &dyn Backend,
    password: &[u8],
    kdf: KdfParams,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Config> {
    let stop = || match cancel.load(std::sync::atomic::Ordering::Relaxed) {
        true => Err(Error::Cancelled),
        false => Ok(()),
    };
    if b.read_config()?.is_some() {
        return Err(already_a_repository(&b.location()));
    }
    stop()?;
    b.create_layout()?;
    let master = Key::random();
    let kf = KeyFile::new(&master, password, kdf)?;
    let kf_bytes = serde_json::to_vec(&kf).expect("key file serialises");
    let key_id = Id::hash(&kf_bytes);
    stop()?;
    b.write(Kind::Key, &key_id, &kf_bytes)?;
    let config = Config {
        version: 2,
        id: hex::encode(super::random_bytes::<32>()),
        chunker_polynomial: Pol::random().to_hex(),
    };
    // The config stays plain JSON (no compression header): a reader learns the
    // version from it.
    let json = serde_json::to_vec(&config).expect("config serialises");
    let sealed = master.seal(&json);
    if let Err(e) = stop().and_then(|()| b.create_config(&sealed)) {
        // Unless the config did land (its reply lost) or cannot be read to tell.
        if let Ok(stored) = b.read_config()
            && stored.as_deref() != Some(sealed.as_slice())
        {
            let _ = b.remove(Kind::Key, &key_id);
        }
        return Err(e);
    }
    Ok(config)
}

/// `init` with snapring's scrypt cost.
pub fn init_default(root: &Path, password: &[u8]) -> Result<Config> {
    init(root, password, DEFAULT_KDF)
}

/// One ranged read of several blobs of one pack, nearby in it: over S3 one request for
/// many blobs, not one per blob. `prune` reads a repacked pack's kept blobs so (a pack
/// of 3,000 small blobs took 3,000 requests and 96 s against a local server), and
/// `restore` the blobs of a batch of files (30,000 small files took 30,000 requests).
/// Each blob of the read is decrypted and checked once, by the read: what checked is
/// kept (with its plaintext, when asked for), and [`Span::open`], [`Span::take`] and
/// [`Span::checked`] give it without decrypting again (they decrypted every blob a
/// second time). A blob that does not check in a span is read again on its own, by the
/// caller (`Repo::read_blob`, `prune`'s `read_checked`): the rule for a damaged blob,
/// its rereads and its other copies, is theirs.
pub struct Span {
    start: u64,
    bytes: Vec<u8>,
    /// The blobs of the read that checked, by offset in the pack: their plaintexts when
    /// the read kept them (else empty).
    whole: HashMap<u32, Vec<u8>>,
}

impl Span {
    /// How many of `entries` (of one pack, sorted by offset) one span reads: from the
    /// first up to a gap wider than `gap` or the blob that would make the read longer
    /// than `cap` (the first is always in).
    pub fn plan(entries: &[&Entry], gap: u64, cap: u64) -> usize {
        let Some(first) = entries.first() else {
            return 0;
        };
        let start = first.offset as u64;
        let mut end = start;
        for (i, e) in entries.iter().enumerate() {
            let e_end = e.offset as u64 + e.length as u64;
            if i > 0 && (e.offset as u64 > end + gap || e_end.max(end) - start > cap) {
                return i;
            }
            end = end.max(e_end);
        }
        entries.len()
    }

    /// The blobs [`Span::plan`] puts in the first span of `entries`, read at once, each
    /// decrypted and checked against its id once; `keep_plain` keeps their plaintexts
    /// (`restore` writes them; `prune` copies the sealed bytes and needs none). An error
    /// of the read is returned as it is (the caller reads each blob on its own then).
    pub fn read(
        repo: &Repo,
        pack: &Id,
        entries: &[&Entry],
        gap: u64,
        cap: u64,
        keep_plain: bool,
    ) -> Result<Span> {
        let n = Span::plan(entries, gap, cap);
        let Some(first) = entries.first() else {
            return Ok(Span {
                start: 0,
                bytes: Vec::new(),
                whole: HashMap::new(),
            });
        };
        let start = first.offset as u64;
        let end = entries[..n]
            .iter()
            .map(|e| e.offset as u64 + e.length as u64)
            .max()
            .unwrap_or(start);
        // Read again when its blobs do not all check (one garbled read is no damage:
        // `reread`); bytes still not checking are returned, the blobs that did not
        // check read on their own.
        let these = &entries[..n];
        let (bytes, (whole, _), _) = super::reread::read_checked(
            &|| format!("Data blobs {} and {} more in pack {pack}", first.id, n - 1),
            "restic.read_garbled",
            || repo.backend.read_range(pack, start, (end - start) as usize),
            |bytes| {
                let mut whole = HashMap::with_capacity(these.len());
                let mut all = true;
                for e in these {
                    let at = (e.offset as u64 - start) as usize;
                    let opened = bytes
                        .get(at..at + e.length as usize)
                        .and_then(|sealed| open_blob(&repo.key, sealed, e).ok());
                    match opened {
                        Some(plain) => {
                            whole.insert(e.offset, if keep_plain { plain } else { Vec::new() });
                        }
                        None => all = false,
                    }
                }
                (whole, all)
            },
            |(_, all)| *all,
        )?;
        Ok(Span {
            start,
            bytes,
            whole,
        })
    }

    pub fn holds(&self, e: &Entry) -> bool {
        let end = self.start + self.bytes.len() as u64;
        e.offset as u64 >= self.start && e.offset as u64 + e.length as u64 <= end
    }

    /// `e`'s sealed bytes and plaintext (empty unless the read kept it) if the span
    /// holds them and they checked.
    pub fn open(&self, e: &Entry) -> Option<(&[u8], &[u8])> {
        if !self.holds(e) {
            return None;
        }
        let plain = self.whole.get(&e.offset)?;
        let at = (e.offset as u64 - self.start) as usize;
        Some((&self.bytes[at..at + e.length as usize], plain))
    }

    /// `e`'s plaintext, moved out of the span (the read kept it), if it checked.
    pub fn take(&mut self, e: &Entry) -> Option<Vec<u8>> {
        if !self.holds(e) {
            return None;
        }
        self.whole.remove(&e.offset)
    }

    /// `e`'s sealed bytes if the span holds them and they checked.
    pub fn checked(&self, e: &Entry) -> Option<Vec<u8>> {
        self.open(e).map(|(sealed, _)| sealed.to_vec())
    }
}

impl Repo {
    /// Opens the repository in the directory `root` with `password`.
    pub fn open(root: &Path, password: &[u8]) -> Result<Repo> {
        Repo::open_in(Arc::new(Local::new(root)), password)
    }

    /// Opens the repository in `backend` with `password` and loads its index.
    pub fn open_in(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repo> {
        Repo::open_with(backend, &Password::exact(password))
    }

    /// [`Repo::open_in`] with a password as `password::resolve` gives it: one from a
    /// file that opens no key is tried as snapring read such files before, with a
    /// warning (restic would not open the repository with that file).
    pub fn open_with(backend: Arc<dyn Backend>, password: &Password) -> Result<Repo> {
        let mut repo = Repo::open_unindexed_with(backend, password)?;
        repo.load_index()?;
        Ok(repo)
    }

    /// [`Repo::open_with`], but an index file that does not read is left out of the
    /// index and listed in `damaged_index_files` (here and on later refreshes), for
    /// `verify`, which reports it as damage and goes on checking the snapshots.
    pub fn open_tolerant(backend: Arc<dyn Backend>, password: &Password) -> Result<Repo> {
        let mut repo = Repo::open_unindexed_with(backend, password)?;
        repo.tolerate_damaged_index = true;
        repo.load_index()?;
        Ok(repo)
    }

    /// What `--dest` names this repository as, for advice in messages.
    pub fn dest_url(&self) -> String {
        match self.backend.local_root() {
            Some(root) => format!("file://{}", root.display()),
            None => self.backend.location(),
        }
    }

    /// [`Repo::open_in`] without reading the index files (`repair index` reads them
    /// itself, one that does not read among them): the index is empty.
    pub fn open_unindexed(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repo> {
        Repo::open_unindexed_with(backend, &Password::exact(password))
    }

    /// [`Repo::open_unindexed`] with a password as [`Repo::open_with`] takes it.
    pub fn open_unindexed_with(backend: Arc<dyn Backend>, password: &Password) -> Result<Repo> {
        let Some(sealed) = backend.read_config()? else {
            return Err(not_a_repository(&backend.location()));
        };
        let key =
            match find_key(backend.as_ref(), password) {
                Err(e @ Error::WrongPassword(_)) => {
                    // The readings an older snapring used, each with its warning.
                    let older = password
                        .older_reading()
                        .map(|b| (b, password.older_reading_warning()));
                    let tried = older.into_iter().chain(password.variable_first()).find_map(
                        |(b, warning)| find_key(backend.as_ref(), b).ok().map(|k| (k, warning)),
                    );
                    match tried {
                        Some((k, warning)) => {
                            tracing::warn!("{warning}");
                            k
                        }
                        None => return Err(e),
                    }
                }
                r => r?,
            };
        let plain = key.open(&sealed, "config")?;
        let config: Config = decode_json(&plain, "config")?;
        if config.version != 1 && config.version != 2 {
            return Err(Error::Other(format!(
                "{} is a format version {} repository; this snapring reads versions 1 and 2 \
                 only (a newer restic made it? a newer snapring may read it); nothing was changed",
                backend.location(),
                config.version
            )));
        }
        let pol = u64::from_str_radix(&config.chunker_polynomial, 16)
            .map_err(|e| corrupt("config chunker_polynomial", e))?;
        Ok(Repo {
            backend,
            key,
            config,
            pol: Pol(pol),
            index: Index::default(),
            index_files: Default::default(),
            tree_cache: None,
            damaged_index_files: Vec::new(),
            tolerate_damaged_index: false,
        })
    }

    /// Keeps trees in the user's cache directory (`TreeCache::for_repository`), as the
    /// commands do; a library caller (a test) has none unless it asks.
    pub fn use_user_cache(&mut self) {
        self.tree_cache = TreeCache::for_repository(&self.config.id);
    }

    /// Reads the index files again (another process has added some since `open`).
    pub fn reload_index(&mut self) -> Result<()> {
        self.index = Index::default();
        self.index_files.clear();
        self.damaged_index_files.clear();
        self.load_index()
    }

    /// Brings the index read at `open` up to date under the lock (a prune between the
    /// two deleted packs it names): one listing when the index files are the same,
    /// only the new ones read when some were added, all of them again when one is
    /// gone (a prune rewrote the index). Before this process writes index files of
    /// its own.
    pub fn refresh_index(&mut self) -> Result<()> {
        let now: std::collections::BTreeSet<Id> =
            self.backend.list(Kind::Index)?.into_iter().collect();
        if now == self.index_files {
            return Ok(());
        }
        if !self.index_files.is_subset(&now) {
            return self.reload_index();
        }
        let new: Vec<Id> = now.difference(&self.index_files).copied().collect();
        self.read_index_files(&new)
    }

    /// Reads every index file, [`INDEX_READS`] at a time (a shard run leaves one per
    /// unit, and each read is a round trip or more on NFS and S3).
    fn load_index(&mut self) -> Result<()> {
        let ids = self.backend.list(Kind::Index)?;
        self.read_index_files(&ids)
    }

    /// Reads the index files `ids` into the index.
    fn read_index_files(&mut self, ids: &[Id]) -> Result<()> {
        // A few rounds' worth at a time: parsed files wait here until they are merged.
        for some in ids.chunks(INDEX_READS * 4) {
            let files = crate::util::par_map(INDEX_READS, some, |id| {
                self.load_json::<IndexFile>(Kind::Index, id)
            });
            for (id, f) in some.iter().zip(files) {
                match f {
                    Ok(f) => self.index.add_file(&f),
                    Err(e @ Error::Corrupt { .. }) if self.tolerate_damaged_index => {
                        self.damaged_index_files.push((*id, e.to_string()));
                    }
                    Err(Error::Corrupt { what, why }) => {
                        return Err(Error::Corrupt {
                            what,
                            why: format!(
                                "{why}; `snapring repair index --dest {}` rebuilds the index \
                                 from the packs (then `snapring verify --all` says whether \
                                 any snapshot lost data)",
                                self.dest_url()
                            ),
                        });
                    }
                    Err(e) => return Err(e),
                }
                self.index_files.insert(*id);
            }
        }
        Ok(())
    }

    /// Reads, checks and decrypts an unpacked file, then parses its JSON.
    pub fn load_json<T: serde::de::DeserializeOwned>(&self, kind: Kind, id: &Id) -> Result<T> {
        let what = format!("{} file {id}", kind.dir());
        let sealed = self.backend.read(kind, id)?;
        if Id::hash(&sealed) != *id {
            return Err(corrupt(&what, "content does not match its name"));
        }
        let plain = self.key.open(&sealed, &what)?;
        decode_json(&plain, &what)
    }

    /// Writes a JSON document as an unpacked file; returns its id.
    pub fn save_json<T: Serialize>(&self, kind: Kind, value: &T) -> Result<Id> {
        Ok(self.save_json_len(kind, value)?.0)
    }

    /// `save_json`, also returning the file's size (what was uploaded).
    pub fn save_json_len<T: Serialize>(&self, kind: Kind, value: &T) -> Result<(Id, u64)> {
        let (id, sealed) = self.seal_json(value)?;
        let len = sealed.len() as u64;
        self.backend.write_vec(kind, &id, sealed)?;
        Ok((id, len))
    }

    /// A JSON document as an unpacked file's bytes (`0x02 || zstd(JSON)`, encrypted)
    /// and the id they would be saved under; nothing is written.
    pub fn seal_json<T: Serialize>(&self, value: &T) -> Result<(Id, Vec<u8>)> {
        let json = serde_json::to_vec(value).expect("JSON serialises");
        let mut plain = vec![2u8];
        plain.extend(zstd::bulk::compress(&json, 3).map_err(io_err("compress", "JSON"))?);
        let sealed = self.key.seal(&plain);
        Ok((Id::hash(&sealed), sealed))
    }

    /// The JSON document in bytes `seal_json` made (`what` names them in errors).
    pub fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        sealed: &[u8],
        what: &str,
    ) -> Result<T> {
        let plain = self.key.open(sealed, what)?;
        decode_json(&plain, what)
    }

    /// A blob's plaintext, checked against its id. A tree comes from the local cache
    /// when it has it intact, else from the repository (and is cached). A blob stored
    /// in several packs is read from the next copy when one cannot be (its pack gone,
    /// unreadable, or the blob damaged), as restic does, with a warning naming the bad
    /// pack; the error is the first copy's, or all of them when every copy fails.
    pub fn read_blob(&self, kind: BlobType, id: &Id) -> Result<Vec<u8>> {
        let what = || format!("{kind:?} blob {id}");
        let first = self
            .index
            .get(kind, id)
            .ok_or_else(|| corrupt(what(), "not in any index"))?;
        let cache = self.tree_cache.as_ref().filter(|_| kind == BlobType::Tree);
        if let Some(plain) = cache.and_then(|c| c.get(&self.key, id)) {
            return Ok(plain);
        }
        let read = |loc: &Location| -> Result<Vec<u8>> {
            let (plain, sealed) = self.read_blob_at(loc)?;
            if let Some(c) = cache {
                c.put(id, &sealed, loc.entry.uncompressed_length);
            }
            Ok(plain)
        };
        let mut failed: Vec<(Id, Error)> = match read(&first) {
            Ok(plain) => return Ok(plain),
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            Err(e) => vec![(first.pack, e)],
        };
        // The other copies are looked up only once the first has failed (`locations`
        // lists the first first).
        for loc in self.index.locations(kind, id).iter().skip(1) {
            let (bad, e) = failed.last().expect("the first copy's failure");
            tracing::warn!(
                "{}: its copy in pack {bad} cannot be used ({e}); reading its copy in pack {} \
                 (`restic check` and `restic repair packs` say more)",
                what(),
                loc.pack
            );
            match read(loc) {
                Ok(plain) => return Ok(plain),
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                Err(e) => failed.push((loc.pack, e)),
            }
        }
        if failed.len() == 1 {
            return Err(failed.pop().expect("one").1);
        }
        // A copy that did not read (EIO, a server past its retries) is not known to be
        // damaged, nor is the blob: a rerun may read it. That failure is returned, as a
        // read failure, not damage (the others are each warned of).
        if let Some(i) = failed
            .iter()
            .position(|(_, e)| super::backend::is_read_failure(e))
        {
            let (last, e) = failed.last().expect("copies");
            if i + 1 < failed.len() {
                tracing::warn!("{}: its copy in pack {last} cannot be used ({e})", what());
            }
            return Err(failed.swap_remove(i).1);
        }
        let all: Vec<String> = failed
            .iter()
            .map(|(pack, e)| format!("pack {pack}: {e}"))
            .collect();
        Err(corrupt(
            what(),
            format!(
                "none of its {} copies can be used: {}",
                failed.len(),
                all.join("; ")
            ),
        ))
    }

    /// The blob at `loc`, checked against its id: its plaintext and sealed bytes. A
    /// read that does not check is read again before the blob is called damaged
    /// ([`super::reread::read_checked`]): one read garbled in transit is no damage.
    pub fn read_blob_at(&self, loc: &Location) -> Result<(Vec<u8>, Vec<u8>)> {
        use super::reread::{Outcome, garbled_reason, read_checked};
        let e = &loc.entry;
        let (sealed, plain, outcome) = read_checked(
            &|| format!("{:?} blob {} in pack {}", e.kind, e.id, loc.pack),
            "restic.read_garbled",
            || {
                self.backend
                    .read_range(&loc.pack, e.offset as u64, e.length as usize)
            },
            |sealed| open_blob(&self.key, sealed, e),
            |plain| plain.is_ok(),
        )?;
        match (outcome, plain) {
            (_, Ok(plain)) => Ok((plain, sealed)),
            (Outcome::Garbled, Err(x)) => Err(corrupt(
                format!("{:?} blob {}", e.kind, e.id),
                format!("{} ({x})", garbled_reason()),
            )),
            (_, Err(x)) => Err(x),
        }
    }

    /// A tree blob, checked against its id and parsed.
    pub fn read_tree(&self, id: &Id) -> Result<super::tree::Tree> {
        super::tree::Tree::from_blob(&self.read_blob(BlobType::Tree, id)?, id)
    }

    pub fn tables(&self) -> Tables {
        Tables::new(self.pol)
    }

    /// Refuses to write into a format version 1 repository.
    pub fn check_writable(&self) -> Result<()> {
        if self.config.version != 2 {
            return Err(Error::Other(format!(
                "{} is a format version {} repository; snapring writes version 2 only \
                 (`restic migrate upgrade_repo_v2` upgrades it)",
                self.backend.location(),
                self.config.version
            )));
        }
        Ok(())
    }
}

/// The key `password` opens. A key file that does not read or parse is skipped with a
/// warning, as restic does: one damaged key stopped every command, whatever the
/// password, though another key opened the repository. If no key opens and some were
/// damaged, the error names them.
fn find_key(b: &dyn Backend, password: &[u8]) -> Result<Key> {
    let mut damaged = Vec::new();
    let keys = b.list(Kind::Key)?;
    if keys.is_empty() {
        // Not a wrong password: there is no key to try it on.
        return Err(Error::Other(format!(
            "cannot open the repository: {}/keys holds no key file (removed, or not \
             copied with the repository); no password can open it without one",
            b.location()
        )));
    }
    for id in keys {
        let what = format!("key file {id}");
        let kf = b.read(Kind::Key, &id).and_then(|bytes| {
            serde_json::from_slice::<KeyFile>(&bytes).map_err(|e| corrupt(&what, e))
        });
        let opened = kf.and_then(|kf| kf.open(password, &what));
        match opened {
            Ok(Some(k)) => return Ok(k),
            Ok(None) => {}
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            // Whatever is wrong with one key file (its JSON, its KDF parameters, its
            // read) is that key's: the others are tried.
            Err(e) => {
                // The error names the key file already.
                tracing::warn!("{e}: skipped");
                damaged.push(e.to_string());
            }
        }
    }
    if damaged.is_empty() {
        return Err(Error::WrongPassword(format!("{}/keys", b.location())));
    }
    Err(Error::Other(format!(
        "cannot open the repository: no key in {}/keys opens with the password, and {} key file{} could not be read ({})",
        b.location(),
        damaged.len(),
        if damaged.len() == 1 { "" } else { "s" },
        damaged.join("; ")
    )))
}

/// Parses an unpacked file's plaintext: JSON as it is (`{` or `[` first, format 1), or
/// `0x02 || zstd(JSON)`.
fn decode_json<T: serde::de::DeserializeOwned>(plain: &[u8], what: &str) -> Result<T> {
    let json = match plain.first() {
        Some(b'{') | Some(b'[') => plain.to_vec(),
        Some(2) => zstd::stream::decode_all(&plain[1..]).map_err(|e| corrupt(what, e))?,
        Some(v) => return Err(corrupt(what, format!("unknown encoding version {v}"))),
        None => return Err(corrupt(what, "empty")),
    };
    serde_json::from_slice(&json).map_err(|e| corrupt(what, e))
}

/// Packs at least this big are written out.
const PACK_TARGET: usize = 16 * 1024 * 1024;

/// Blobs per pack and per index file, at most (restic's own index files hold 50,000):
/// a million small files make a million blobs, and an index file of all of them
/// is a 170 MB JSON document to write now and to read on every later run.
pub const MAX_BLOBS: usize = 50_000;

/// Whether a pack being built is full: [`PACK_TARGET`] bytes or [`MAX_BLOBS`] blobs.
pub fn pack_full(b: &PackBuilder) -> bool {
    b.len() >= PACK_TARGET || b.blobs() >= MAX_BLOBS
}

/// Packs grouped into index files of at most [`MAX_BLOBS`] blobs (a pack is never
/// split, so one of more blobs gets a file of its own), in order.
pub fn index_file_groups(packs: Vec<PackJson>) -> Vec<Vec<PackJson>> {
    let mut out: Vec<Vec<PackJson>> = Vec::new();
    let mut blobs = 0;
    for p in packs {
        if out.is_empty() || blobs + p.blobs.len() > MAX_BLOBS {
            out.push(Vec::new());
            blobs = 0;
        }
        blobs += p.blobs.len();
        out.last_mut().expect("pushed").push(p);
    }
    out
}

/// Full packs being uploaded at once, at most: the memory they hold is bounded by this
/// many times [`PACK_TARGET`]. While that many are out, a worker with a new blob waits
/// before adding it, so no more full packs pile up.
pub const UPLOADS_IN_FLIGHT: usize = 4;

/// Collects new blobs into packs, one pack per blob type at a time, for many workers at
/// once: a blob is hashed, compressed and sealed by the worker that saves it, outside
/// the lock; the lock covers only adding it to the open pack. The worker whose blob
/// fills a pack uploads it, outside the lock, while the others go on filling the next
/// one; at most [`UPLOADS_IN_FLIGHT`] full packs are out at once. Each [`MAX_BLOBS`]
/// blobs of written packs go into an index file as soon as their packs are written
/// (packs before the index that names them, as restic does); `finish` writes the rest
/// and adds the run's blobs to the repository's index in memory.
#[derive(Default)]
pub struct Packer {
    state: Mutex<PackerState>,
    /// Signalled when a full pack's upload ends.
    uploaded: std::sync::Condvar,
    /// Blobs written and indexed by other packers of this process since the repository
    /// was opened ([`Packer::sharing`]): a shard worker's units built at once, each with
    /// its own packer, skip what an earlier unit stored.
    known: Option<Arc<std::sync::RwLock<Index>>>,
    /// The run's lock ([`Packer::under`]): no index file is written once it is lost. A
    /// prune that ran meanwhile (after `restic unlock`, or taking the lock for stale)
    /// removed the packs no index named yet, this run's; an index naming them would make
    /// the next runs take their blobs for stored and write snapshots that do not
    /// restore.
    lock: Option<super::lock::Watch>,
}

#[derive(Default)]
struct PackerState {
    data: PackBuilder,
    tree: PackBuilder,
    /// The numbers in `new` of the open packs (data, tree), once they have a blob.
    open: [Option<u32>; 2],
    /// Blobs this run added, and where: in an open pack, being uploaded (a pack number
    /// without an id yet) or written. One compact entry per blob: a full backup of a
    /// million small files holds a million.
    new: Index,
    /// Written packs, with their entries, not in an index file yet.
    pending: Vec<(Id, Vec<Entry>)>,
    pending_blobs: usize,
    /// Full packs taken out of the builders and not yet uploaded (or failed).
    out: usize,
    stats: PackerStats,
}

fn slot(kind: BlobType) -> usize {
    match kind {
        BlobType::Data => 0,
        BlobType::Tree => 1,
    }
}

impl Packer {
    fn lock(&self) -> std::sync::MutexGuard<'_, PackerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A packer that also skips the blobs of `known` (which [`Packer::close`]'s caller
    /// adds this one's to).
    pub fn sharing(known: Arc<std::sync::RwLock<Index>>) -> Packer {
        Packer {
            known: Some(known),
            ..Packer::default()
        }
    }

    /// Writes no index file once `lock` is lost ([`Packer::lock`]).
    pub fn under(mut self, lock: super::lock::Watch) -> Packer {
        self.lock = Some(lock);
        self
    }

    fn known(&self, kind: BlobType, id: &Id) -> bool {
        self.known.as_ref().is_some_and(|k| {
            k.read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(kind, id)
        })
    }

    /// Stores a blob unless the repository or this run already has it; returns its id.
    /// A write failure is returned (the run cannot go on).
    pub fn save(&self, repo: &Repo, kind: BlobType, plain: &[u8]) -> Result<Id> {
        let id = Id::hash(plain);
        if repo.index.contains(kind, &id)
            || self.known(kind, &id)
            || self.lock().new.contains(kind, &id)
        {
            return Ok(id);
        }
        // A slow seal, for a test that one file's chunks are sealed at once.
        let _ = crate::failpoint::hit("restic.packer.seal");
        let (sealed, uncompressed_length) = seal_blob(&repo.key, plain);
        if let (BlobType::Tree, Some(c)) = (kind, &repo.tree_cache) {
            // Cached before it is packed: the next backup's parent trees are all local.
            c.put(&id, &sealed, uncompressed_length);
        }
        let full = {
            let mut s = self.lock();
            while s.out >= UPLOADS_IN_FLIGHT {
                s = self.uploaded.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.new.contains(kind, &id) {
                // Another worker saved the same blob meanwhile.
                return Ok(id);
            }
            match kind {
                BlobType::Data => {
                    s.stats.data_blobs += 1;
                    s.stats.data_bytes_new += plain.len() as u64;
                }
                BlobType::Tree => s.stats.tree_blobs += 1,
            }
            let s = &mut *s;
            let number = *s.open[slot(kind)].get_or_insert_with(|| s.new.unwritten_pack());
            let b = match kind {
                BlobType::Data => &mut s.data,
                BlobType::Tree => &mut s.tree,
            };
            let e = Entry {
                kind,
                id,
                offset: 0,
                length: sealed.len() as u32,
                uncompressed_length,
            };
            b.add_sealed(&e, &sealed);
            s.new
                .add_entry(number, b.entries.last().expect("just added"));
            let full = pack_full(b).then(|| (std::mem::take(b), number));
            if full.is_some() {
                s.open[slot(kind)] = None;
                s.out += 1;
            }
            full
        };
        if let Some((b, number)) = full {
            // Given back however the upload ends (even by a panic), or the workers
            // waiting for it would wait for ever.
            let _out = OutGuard(self);
            self.upload(repo, b, number)?;
        }
        Ok(id)
    }

    /// Writes one pack and records it; writes an index file when enough blobs of
    /// written packs wait for one.
    fn upload(&self, repo: &Repo, b: PackBuilder, number: u32) -> Result<()> {
        let (id, bytes, entries) = b.finish(&repo.key);
        let len = bytes.len() as u64;
        repo.backend.write_vec(Kind::Pack, &id, bytes)?;
        crate::failpoint::hit("restic.pack_written")
            .map_err(io_err("write", repo.backend.file_location(Kind::Pack, &id)))?;
        let ready = {
            let mut s = self.lock();
            s.stats.packs += 1;
            s.stats.bytes += len;
            s.new.set_pack(number, id);
            s.pending_blobs += entries.len();
            s.pending.push((id, entries));
            if s.pending_blobs >= MAX_BLOBS {
                s.pending_blobs = 0;
                std::mem::take(&mut s.pending)
            } else {
                Vec::new()
            }
        };
        self.write_index(repo, ready)
    }

    /// Writes index files naming `packs` (already written), at most [`MAX_BLOBS`] blobs
    /// each.
    fn write_index(&self, repo: &Repo, packs: Vec<(Id, Vec<Entry>)>) -> Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        if let Some(l) = &self.lock
            && let Err(e) = l.check()
        {
            return Err(Error::Other(format!(
                "{e}: the {} pack(s) this run wrote since its last index file are left out of \
                 the index (a prune may have removed them meanwhile); the next run stores \
                 their data again, and a prune removes what is left of them",
                packs.len()
            )));
        }
        let json: Vec<PackJson> = packs.iter().map(|(id, e)| PackJson::new(*id, e)).collect();
        drop(packs);
        for packs in index_file_groups(json) {
            let f = IndexFile {
                supersedes: vec![],
                packs,
            };
            let (_, len) = repo.save_json_len(Kind::Index, &f)?;
            let mut s = self.lock();
            s.stats.index_files += 1;
            s.stats.index_bytes += len;
        }
        Ok(())
    }

    /// Writes the open packs, then the index files of every pack written not yet in
    /// one (packs before the index that names them, as the design's write order asks).
    /// Call it after every `save` returned.
    pub fn finish(self, repo: &mut Repo) -> Result<PackerStats> {
        let (new, stats) = self.close(repo, true)?;
        repo.index.absorb(new);
        Ok(stats)
    }

    /// Writes the index of the packs written so far not yet in an index file (the open
    /// ones are dropped): also after a failure, so the next run finds and reuses what
    /// reached the repository. Adds the written packs' blobs to `repo`'s index in
    /// memory.
    pub fn index_written(self, repo: &mut Repo) -> Result<PackerStats> {
        let (new, stats) = self.close(repo, false)?;
        repo.index.absorb(new);
        Ok(stats)
    }

    /// `finish` (with `open_packs`) or `index_written`, for a caller that shares the
    /// repository with other packers: the blobs written are returned (to add to an
    /// index: [`Index::absorb`]) rather than added to `repo`'s.
    pub fn close(self, repo: &Repo, open_packs: bool) -> Result<(Index, PackerStats)> {
        if open_packs {
            let (data, tree, open) = {
                let mut s = self.lock();
                (
                    std::mem::take(&mut s.data),
                    std::mem::take(&mut s.tree),
                    std::mem::take(&mut s.open),
                )
            };
            for (b, number) in [(data, open[0]), (tree, open[1])] {
                if let (false, Some(n)) = (b.is_empty(), number) {
                    self.upload(repo, b, n)?;
                }
            }
        }
        let pending = std::mem::take(&mut self.lock().pending);
        self.write_index(repo, pending)?;
        let PackerState { new, stats, .. } =
            self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        Ok((new, stats))
    }
}

/// One full pack out of a `Packer`'s builders; dropped when its upload ended.
struct OutGuard<'a>(&'a Packer);

impl Drop for OutGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().out -= 1;
        self.0.uploaded.notify_all();
    }
}

/// What a `Packer` wrote.
#[derive(Debug, Default, Clone, Copy, Serialize, serde::Deserialize)]
pub struct PackerStats {
    /// Pack files written, and their bytes.
    pub packs: u64,
    pub bytes: u64,
    pub data_blobs: u64,
    pub tree_blobs: u64,
    /// Plaintext bytes of the new data blobs.
    pub data_bytes_new: u64,
    /// Index files written, and their bytes.
    pub index_files: u64,
    pub index_bytes: u64,
}

impl PackerStats {
    /// Adds `o`'s figures to these.
    pub fn add(&mut self, o: &PackerStats) {
        self.packs += o.packs;
        self.bytes += o.bytes;
        self.data_blobs += o.data_blobs;
        self.tree_blobs += o.tree_blobs;
        self.data_bytes_new += o.data_bytes_new;
        self.index_files += o.index_files;
        self.index_bytes += o.index_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restic::crypto::KdfParams;
    use std::collections::HashSet;

    /// `n` bytes from a seed (xorshift), so blobs are distinct and incompressible.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 11) as u8
            })
            .collect()
    }

    /// A new repository in `dir` (password `pw`, a cheap key derivation), opened.
    fn fresh_repo(dir: &Path) -> Repo {
        let cheap = KdfParams {
            n: 1024,
            r: 8,
            p: 1,
        };
        init(dir, b"pw", cheap).unwrap();
        Repo::open(dir, b"pw").unwrap()
    }

    /// A crafted index file (an entry shorter than the encryption's overhead) stops the
    /// repository's opening with an error naming the file, not a panic when the blob
    /// is read (`Location::plain_len` underflowed).
    #[test]
    fn a_crafted_index_entry_is_an_error_naming_its_file() {
        use super::super::index::BlobJson;
        let t = tempfile::tempdir().unwrap();
        let repo = fresh_repo(t.path());
        let f = IndexFile {
            supersedes: vec![],
            packs: vec![PackJson {
                id: Id::hash(b"pack"),
                blobs: vec![BlobJson {
                    id: Id::hash(b"blob"),
                    kind: BlobType::Data,
                    offset: 0,
                    length: 5,
                    uncompressed_length: None,
                }],
            }],
        };
        let id = repo.save_json(Kind::Index, &f).unwrap();
        let e = Repo::open(t.path(), b"pw")
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains(&format!("index file {id}")), "{e}");
        assert!(e.contains("has length 5, less than the 32 bytes"), "{e}");
    }

    /// A pack's buffer is reserved once, above glibc's mmap threshold cap, and never
    /// grows while it fills (see `PACK_CAPACITY`).
    #[test]
    fn a_pack_buffer_is_reserved_once_and_never_grows() {
        let key = crate::restic::crypto::Key::random();
        let mut b = PackBuilder::default();
        let mut seed = 1;
        while !pack_full(&b) {
            let blob = bytes(1 << 20, seed);
            b.add(&key, BlobType::Data, Id::hash(&blob), &blob);
            assert_eq!(b.bytes.capacity(), crate::restic::pack::PACK_CAPACITY);
            seed += 1;
        }
        let (_, packed, _) = b.finish(&key);
        assert_eq!(packed.capacity(), crate::restic::pack::PACK_CAPACITY);
    }

    #[test]
    fn many_workers_share_a_packer_and_every_blob_lands_once() {
        let t = tempfile::tempdir().unwrap();
        let mut repo = fresh_repo(t.path());
        let packer = Packer::default();
        // 8 workers, 40 blobs of 128 KiB each (180 distinct, 22.5 MiB: two packs), half of each
        // worker's blobs shared with another worker: saved twice, stored once.
        let seeds =
            |w: u64| (0..40u64).map(move |i| if i % 2 == 0 { 1000 + i } else { w * 100 + i });
        std::thread::scope(|s| {
            for w in 0..8u64 {
                let (packer, repo) = (&packer, &repo);
                s.spawn(move || {
                    for seed in seeds(w) {
                        let b = bytes(128 * 1024, seed);
                        let id = packer.save(repo, BlobType::Data, &b).unwrap();
                        assert_eq!(id, Id::hash(&b));
                    }
                    assert!(packer.lock().out <= UPLOADS_IN_FLIGHT);
                });
            }
        });
        let stats = packer.finish(&mut repo).unwrap();
        let distinct: HashSet<u64> = (0..8).flat_map(seeds).collect();
        assert_eq!(stats.data_blobs, distinct.len() as u64);
        assert_eq!(stats.packs, 2, "{stats:?}");
        // What a new reader of the repository finds: every blob, once, intact.
        let again = Repo::open(t.path(), b"pw").unwrap();
        for seed in distinct {
            let b = bytes(128 * 1024, seed);
            assert_eq!(again.read_blob(BlobType::Data, &Id::hash(&b)).unwrap(), b);
        }
    }

    /// A million small files make a million blobs: packs and index files hold at most
    /// 50,000 each, so no later run reads a 170 MB index document whole, and every
    /// blob is still found by a new reader.
    #[test]
    fn packs_and_index_files_hold_at_most_fifty_thousand_blobs() {
        let t = tempfile::tempdir().unwrap();
        let mut repo = fresh_repo(t.path());
        let packer = Packer::default();
        let n = 2 * MAX_BLOBS as u64 + 7;
        for i in 0..n {
            packer
                .save(&repo, BlobType::Data, &i.to_le_bytes())
                .unwrap();
        }
        let stats = packer.finish(&mut repo).unwrap();
        assert_eq!(stats.data_blobs, n);
        assert_eq!(stats.packs, 3, "{stats:?}");
        assert_eq!(stats.index_files, 3, "{stats:?}");
        let again = Repo::open(t.path(), b"pw").unwrap();
        assert_eq!(again.index.len() as u64, n);
        for id in again.backend.list(Kind::Index).unwrap() {
            let f: IndexFile = again.load_json(Kind::Index, &id).unwrap();
            let blobs: usize = f.packs.iter().map(|p| p.blobs.len()).sum();
            assert!(blobs <= MAX_BLOBS, "{blobs} blobs in one index file");
        }
        for i in [0, MAX_BLOBS as u64, n - 1] {
            assert_eq!(
                again
                    .read_blob(BlobType::Data, &Id::hash(&i.to_le_bytes()))
                    .unwrap(),
                i.to_le_bytes()
            );
        }
    }

    #[test]
    fn index_files_group_whole_packs_up_to_fifty_thousand_blobs() {
        let pack = |n: usize| PackJson {
            id: Id::hash(&n.to_le_bytes()),
            blobs: (0..n)
                .map(|i| crate::restic::index::BlobJson {
                    id: Id::hash(&i.to_le_bytes()),
                    kind: BlobType::Data,
                    offset: 0,
                    length: 40,
                    uncompressed_length: None,
                })
                .collect(),
        };
        let sizes = |g: Vec<Vec<PackJson>>| -> Vec<Vec<usize>> {
            g.iter()
                .map(|f| f.iter().map(|p| p.blobs.len()).collect())
                .collect()
        };
        let g = index_file_groups(vec![
            pack(30_000),
            pack(20_000),
            pack(1),
            pack(60_000),
            pack(7),
        ]);
        assert_eq!(
            sizes(g),
            vec![vec![30_000, 20_000], vec![1], vec![60_000], vec![7]]
        );
        assert!(index_file_groups(vec![]).is_empty());
    }

    /// A blob stored twice whose copies both fail to read (an I/O error, not bytes that
    /// do not check: here each pack a directory, EISDIR) is a read failure, not damage:
    /// `verify` says "could not be read", a restore's storage-down rule sees the I/O
    /// error. It was `Corrupt` ("none of its 2 copies can be used").
    #[test]
    fn a_blob_whose_copies_all_fail_to_read_is_a_read_failure_not_damage() {
        let t = tempfile::tempdir().unwrap();
        let mut repo = fresh_repo(t.path());
        let packer = Packer::default();
        let b = bytes(10_000, 3);
        let id = packer.save(&repo, BlobType::Data, &b).unwrap();
        packer.finish(&mut repo).unwrap();
        let mut repo = Repo::open(t.path(), b"pw").unwrap();
        let first = repo.index.get(BlobType::Data, &id).unwrap();
        // Its second copy: the same pack's bytes under another id.
        let other = Id::hash(b"another pack");
        let (p1, p2) = (
            repo.backend.file_location(Kind::Pack, &first.pack),
            repo.backend.file_location(Kind::Pack, &other),
        );
        std::fs::create_dir_all(Path::new(&p2).parent().unwrap()).unwrap();
        std::fs::copy(&p1, &p2).unwrap();
        repo.index
            .add_pack(other, std::slice::from_ref(&first.entry));
        assert_eq!(repo.index.locations(BlobType::Data, &id).len(), 2);
        assert_eq!(repo.read_blob(BlobType::Data, &id).unwrap(), b);
        for p in [&p1, &p2] {
            std::fs::remove_file(p).unwrap();
            std::fs::create_dir(p).unwrap();
        }
        let e = repo.read_blob(BlobType::Data, &id).unwrap_err();
        assert!(
            super::super::backend::is_read_failure(&e) && !matches!(e, Error::Corrupt { .. }),
            "{e:?}"
        );
    }
}
