//! Reading pack bytes until they check: the one rule every command that reads packs
//! follows before it calls a blob damaged. A read whose bytes do not check (a header
//! that does not open, a blob whose MAC fails) is read again: a transport that garbles
//! reads (a proxy flipping a byte, a bad NIC, an S3 response cut and retried) gives
//! other bytes each time, damage at rest the same bytes every time. So the bytes are
//! damaged only once two reads give the same bytes; a read that checks out on retry is
//! no damage (a warning says a read was garbled and read again); bytes that differ on
//! every one of [`READ_TRIES`] reads are neither: the storage or network garbles reads.
//! `repair index --read-data` (whole packs), `verify` (a pack's span of blobs),
//! `restore`, `prune` and every tree read (one blob: `Repo::read_blob_at`) use it.

use super::{Id, Result};

/// How many times bytes that do not check are read before the reader gives up.
pub const READ_TRIES: usize = 5;

/// What the reads came to (with the bytes of the last read and its check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The bytes checked (perhaps after garbled reads: `garbled` of them).
    Whole { garbled: usize },
    /// Two reads gave the same bytes, which do not check: damage at rest.
    Damaged,
    /// Every one of [`READ_TRIES`] reads gave other bytes, none checked.
    Garbled,
}

/// Reads with `read` until its bytes check: `check` gives a verdict on a read's bytes,
/// `whole` says whether it is a good one. Returns the last read's bytes, its verdict and
/// what the reads came to (see the module's notes). An error of `read` itself (the
/// storage cannot be read) is returned as it is. `what` names the bytes in warnings;
/// `garble` is a failpoint that, armed, garbles one read (tests: a byte of the read
/// flipped, another each time).
pub fn read_checked<T>(
    what: &dyn Fn() -> String,
    garble: &str,
    mut read: impl FnMut() -> Result<Vec<u8>>,
    mut check: impl FnMut(&[u8]) -> T,
    whole: impl Fn(&T) -> bool,
) -> Result<(Vec<u8>, T, Outcome)> {
    let mut seen: Vec<Id> = Vec::new();
    loop {
        let mut bytes = read()?;
        if crate::failpoint::hit(garble).is_err()
            && let Some(b) = bytes.first_mut()
        {
            use std::sync::atomic::{AtomicU8, Ordering};
            static GARBLED: AtomicU8 = AtomicU8::new(0);
            *b ^= GARBLED.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        }
        let verdict = check(&bytes);
        if whole(&verdict) {
            if !seen.is_empty() {
                tracing::warn!(
                    "{}: {} read(s) garbled in transit; read again, it checks (not damage \
                     in the repository; the network or storage garbled a read)",
                    what(),
                    seen.len()
                );
            }
            let garbled = seen.len();
            return Ok((bytes, verdict, Outcome::Whole { garbled }));
        }
        let digest = Id::hash(&bytes);
        if seen.contains(&digest) {
            return Ok((bytes, verdict, Outcome::Damaged));
        }
        seen.push(digest);
        if seen.len() >= READ_TRIES {
            return Ok((bytes, verdict, Outcome::Garbled));
        }
        tracing::warn!("{} does not read whole; reading it again", what());
    }
}

/// Why bytes never checked when they read differently each time, for an error.
pub fn garbled_reason() -> String {
    format!(
        "read differently each of {READ_TRIES} times, never whole: the storage or the \
         network garbles reads"
    )
}
