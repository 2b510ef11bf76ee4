//! restic repositories, format version 2 (restic's `doc/design.rst`), written and read by
//! snapring's own code: the crypto (`crypto`), the chunker with the repository's
//! polynomial (`chunker`), the storage (`backend`: a local directory; `s3`), packs and index files (`pack`,
//! `index`), trees and snapshots (`tree`, `snapshot`), locks (`lock`), the opened
//! repository (`repo`), and the operations on it: `init`, `backup`, `list`, `restore`,
//! `forget` (retention, a pure plan with reasons), `prune`, and `copy` (a hard-link
//! store's snapshot pushed into a repository) (`ops`, `backup`, `restore`, `forget`,
//! `prune`, `copy`), and the read-only views `verify` (every blob re-read and re-hashed),
//! `diff` (two snapshots, by subtree ids) and `history` (one path across snapshots);
//! `reader` lets the store's `compare` walk read a snapshot (`--against DIR`).
//! The repository password comes from `password`.
//! docs/format.md, "restic repositories", says how snapring maps its runs onto it.

pub mod backend;
pub mod backup;
pub mod cache;
pub mod chunker;
pub mod copy;
pub mod crypto;
pub mod diff;
pub mod forget;
pub mod history;
pub mod index;
pub mod keep;
pub mod lock;
pub mod ops;
pub mod pack;
pub mod password;
pub mod prune;
pub mod reader;
pub mod repair;
pub mod repo;
pub mod reread;
pub mod restore;
pub mod s3;
pub mod snapshot;
pub mod tree;
pub mod verify;

use std::fmt;
use std::path::PathBuf;

/// What goes wrong with a repository. I/O errors carry the action and the path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the repository: wrong password: no key in {0} opens with it")]
    WrongPassword(String),
    #[error("{what}: {why}")]
    Corrupt { what: String, why: String },
    /// A file the repository should hold is not there, or holds less than the index
    /// says (a pack deleted or cut short: S3's 404 `NoSuchKey`, a range past its end):
    /// damage to the repository, as [`Error::Corrupt`] is, not a failing transport.
    #[error("{0}")]
    Missing(String),
    #[error("interrupted")]
    Cancelled,
    /// Another process holds a lock that conflicts with the one asked for
    /// ([`lock::acquire`]'s refusal, naming the holder): nothing was done; try again
    /// later (exit 75).
    #[error("{0}")]
    Locked(String),
    /// The repository's storage could not be reached, and still could not once the
    /// retries were spent (S3: connection refused or reset, a time limit, HTTP 500, 502,
    /// 503, 504 or throttling to the end): a failing transport, not damage or a refusal;
    /// the same operation may well work later. A shard worker exits 75 on it
    /// (docs/scale-out.md, "Exit codes").
    #[error("{0}")]
    Unreachable(String),
    /// The repository's storage answered a request with a refusal that is not retried
    /// (S3: 403 AccessDenied, 400, 501, another status than those retried or the 404 and
    /// 416 of [`Error::Missing`]; its status named in the message): neither damage nor
    /// an outage; access or the server's settings to fix. `verify` counts a pack so
    /// refused as not checked, as it does one that does not read.
    #[error("{0}")]
    Refused(String),
    /// The source's file system went away during a backup (invariant 4, as the store's
    /// `crate::error::Error::SourceLost`): ENOTCONN from an entry while the source
    /// root's descriptor no longer answers either, or the root gone, stale, failing
    /// with EIO or another directory when the walk ends. No snapshot is written and
    /// nothing is forgotten; the packs written stay, indexed, for the next run.
    #[error(
        "source {} went away during the run ({detail}): its file system is no longer mounted there, or no longer answers; no snapshot was written and nothing was forgotten (the previous snapshots are as they were; what this run uploaded stays in the repository, indexed, for the next run to reuse); mount it again and run again",
        crate::relpath::shown(.root)
    )]
    SourceLost { root: PathBuf, detail: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Wraps an I/O error with what was being done to which path.
pub fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// A corruption error about `what`.
pub fn corrupt(what: impl fmt::Display, why: impl fmt::Display) -> Error {
    Error::Corrupt {
        what: what.to_string(),
        why: why.to_string(),
    }
}

/// A storage or blob id: the SHA-256 of a file's or a blob's plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// The SHA-256 of `data`.
    pub fn hash(data: &[u8]) -> Id {
        use sha2::Digest;
        Id(sha2::Sha256::digest(data).into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn parse(s: &str) -> Result<Id> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| corrupt(format!("id {s:?}"), e))?;
        Ok(Id(out))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", &self.hex()[..16])
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Id, D::Error> {
        let s = String::deserialize(d)?;
        Id::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the operating system's random source failed");
    b
}

/// A time as Go's `time.RFC3339Nano` writes it (fraction without trailing zeros, `Z`
/// for UTC), in the local time zone as restic writes it.
pub fn go_time(t: chrono::DateTime<chrono::Local>) -> String {
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = t.timestamp_subsec_nanos();
    let frac = if nanos == 0 {
        String::new()
    } else {
        let s = format!(".{nanos:09}");
        s.trim_end_matches('0').to_string()
    };
    let off = t.offset().local_minus_utc();
    let zone = if off == 0 {
        "Z".to_string()
    } else {
        t.format("%:z").to_string()
    };
    format!("{base}{frac}{zone}")
}

/// A time from seconds and nanoseconds since the epoch, in the local time zone.
pub fn local_time(secs: i64, nanos: u32) -> chrono::DateTime<chrono::Local> {
    chrono::DateTime::from_timestamp(secs, nanos)
        .unwrap_or_default()
        .with_timezone(&chrono::Local)
}

/// Parses an RFC 3339 time (as restic and Go write it) into seconds and nanoseconds.
pub fn parse_time(s: &str) -> Result<(i64, u32)> {
    let t =
        chrono::DateTime::parse_from_rfc3339(s).map_err(|e| corrupt(format!("time {s:?}"), e))?;
    Ok((t.timestamp(), t.timestamp_subsec_nanos()))
}
