//! The storage seam of a backup: everything the engine writes goes through a [`Sink`].
//! The engine walks the source and decides (`decide.rs`, pure); a sink makes the new
//! snapshot: make a directory, link an unchanged entry from the previous snapshot (or
//! say it cannot), put a file and get its hash, put a special file, finish a directory,
//! then commit or abandon. It also answers what the previous snapshot holds under a
//! name when there is no manifest to ask (a tree taken over from rsnapshot or `cp -a`).
//!
//! The engine depends on this trait, the stores implement it; it depends on neither.
//!
//! Implementations: `store::tree_sink::TreeSink` (the hard-link tree store, the only
//! real target today) and `store::plan_sink::PlanSink` (a dry run: it records the plan and
//! writes nothing). An object-store sink and a shard worker's sink are the next ones.

use std::fmt;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::fsx::{CopyError, Kind, Meta, Xattrs};
use crate::manifest::Entry;
use crate::relpath::RelPath;

/// Extended attributes the target refused to store, each with why.
pub type Refused = crate::fsx::Refused;

/// What linking an unchanged entry gave.
pub enum Linked {
    /// The new snapshot has the previous snapshot's entry under this name.
    Done,
    /// It cannot be linked (link limit, another file system, the previous copy is gone):
    /// copy it instead. Counted as a link fallback.
    Fallback,
    /// A target-side error.
    Failed(io::Error),
}

/// Why the engine copies an entry, in words (`engine::decide::Reason::as_str`), for
/// a plan or a log.
pub type CopyReason = &'static str;

/// A file reused from an interrupted run ([`Sink::resume`]): its hash and xattr digest.
pub struct Resumed {
    pub hash: blake3::Hash,
    pub xattrs: Option<String>,
}

/// Where a backup writes. Methods are called from the walk's workers, concurrently;
/// per-directory state lives in [`Sink::Dir`].
pub trait Sink: Sync {
    /// A directory of the new snapshot being written, with the same directory of the
    /// previous snapshot (and of an interrupted run's tree) when the target has them.
    type Dir: Send + Sync;
    /// A regular file being written.
    type File;
    /// What a committed run leaves (the snapshot's identity, or a dry run's plan).
    type Sealed;

    /// The new snapshot's root directory.
    fn root(&self) -> io::Result<Self::Dir>;

    /// Makes directory `name` in `parent`. Its metadata comes with [`Sink::finish_dir`].
    fn mkdir(&self, parent: &Self::Dir, name: &[u8], rel: &RelPath) -> io::Result<Self::Dir>;

    /// Makes `name` in `dir` the previous snapshot's unchanged entry of that name.
    fn link_unchanged(&self, dir: &Self::Dir, name: &[u8], rel: &RelPath) -> Linked;

    /// Makes `name` in `dir` another name of the entry already written at `first` (a
    /// hard-link group of the source).
    fn link_within(&self, dir: &Self::Dir, name: &[u8], rel: &RelPath, first: &RelPath) -> Linked;

    /// Reuses the copy an interrupted run left for `name`, when it is finished (its
    /// metadata, set last, matches `m` and its attributes match the source's, read by
    /// `src_xattrs` only when needed) and its bytes hash as the source's do
    /// (`src_hash`: the metadata alone cannot tell a file from another moved to its
    /// path with its directory, nor a copy from a previous snapshot's inode that
    /// rotted), or a copy an adopted tree holds that its record says is of the
    /// source's content (inode, size, times, mode, owner). Returns its hash and xattr
    /// digest.
    fn resume(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        m: &Meta,
        src_xattrs: &dyn Fn() -> io::Result<Xattrs>,
        src_hash: &dyn Fn() -> io::Result<blake3::Hash>,
    ) -> Option<Resumed>;

    /// Starts regular file `name` in `dir`; `m` is the source's `lstat`, `why` the
    /// reason it is copied.
    fn create_file(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
        why: CopyReason,
    ) -> io::Result<Self::File>;

    /// Copies the open source file into `file` (sparse-aware); returns its BLAKE3 hash,
    /// the bytes written and the copy's length ([`crate::fsx::copy_hash`]). `before`: the source's stat the copy is checked against.
    /// `pace`: told the size of every read and write (the bandwidth limit); `false`
    /// from it gives the copy up (`CopyError::Stopped`).
    fn write_file(
        &self,
        file: &Self::File,
        src: BorrowedFd<'_>,
        before: &Meta,
        pace: &dyn Fn(u64) -> bool,
    ) -> Result<crate::fsx::Copied, CopyError>;

    /// Empties `file` for another attempt (the source changed while it was copied).
    fn restart_file(&self, file: &Self::File) -> io::Result<()>;

    /// Removes a file whose copy failed on the source side (best effort).
    fn discard_file(&self, dir: &Self::Dir, name: &[u8]);

    /// Gives `file` its metadata (owner, mode, xattrs, times: times last).
    fn finish_file(&self, file: Self::File, m: &Meta, xattrs: &Xattrs) -> io::Result<Refused>;

    /// Puts a symlink (`target`), fifo, socket or device `name`; its metadata comes
    /// with [`Sink::finish_special`], so a refused owner is a problem of the entry, not
    /// a missing entry.
    fn put_special(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        rel: &RelPath,
        m: &Meta,
        target: Option<&[u8]>,
        why: CopyReason,
    ) -> io::Result<()>;

    /// Gives a special file put by [`Sink::put_special`] its owner, mode, xattrs and
    /// times (times last).
    fn finish_special(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        m: &Meta,
        xattrs: &Xattrs,
    ) -> io::Result<Refused>;

    /// Gives a directory its metadata once everything in it is written.
    fn finish_dir(&self, dir: &Self::Dir, m: &Meta, xattrs: &Xattrs) -> io::Result<Refused>;

    /// The owner a directory made for `m` will hold when this process cannot give it
    /// `m`'s (not root, no `CAP_CHOWN`): its entry is written in its parent's block
    /// before the directory is made and [`Sink::finish_dir`] refused its owner, so the
    /// manifest records what the snapshot's directory will be (as a file's records the
    /// owner its copy got). `None`: `m`'s owner is set, or cannot be foretold.
    fn dir_owner_held(&self, _m: &Meta) -> Option<(u32, u32)> {
        None
    }

    /// The owner the store gives every file instead of the source's, when it refuses
    /// owners even to a process that may give files away (an NFS export with
    /// `root_squash`). The manifest records the source's owners all the same.
    fn owners_held(&self) -> Option<(u32, u32)> {
        None
    }

    /// The granularity (ns) to which the store keeps file times, when coarser than the
    /// nanosecond (whole seconds: some NFS servers, FAT). The manifest records the
    /// source's exact times all the same.
    fn times_held(&self) -> Option<u64> {
        None
    }

    /// Records a directory's entries (the manifest block), once all of them are known.
    fn write_block(&self, rel: &RelPath, entries: &mut [Entry]) -> io::Result<()>;

    /// The entry `e.name` (a subdirectory) of the block [`Sink::write_block`] wrote for
    /// `rel` is to be `e` (its listing took a later stat than its parent's listing).
    fn correct_entry(&self, _rel: &RelPath, _e: Entry) -> io::Result<()> {
        Ok(())
    }

    /// The previous snapshot's `lstat` (and symlink target) of `name`, when there is no
    /// manifest to ask.
    fn prev_stat(&self, dir: &Self::Dir, name: &[u8]) -> Option<(Meta, Option<Vec<u8>>)>;

    /// The previous snapshot's extended attributes of `name` (no manifest to ask).
    fn prev_xattrs(&self, dir: &Self::Dir, name: &[u8]) -> Option<Xattrs>;

    /// The hash of the previous snapshot's regular file `name`, read from it: a tree
    /// not trusted is checked against its run's record before a file is linked from
    /// it (`Previous::record`). `None`: no previous directory here.
    fn prev_hash(&self, dir: &Self::Dir, name: &[u8]) -> Option<io::Result<blake3::Hash>>;

    /// The previous snapshot's regular file `name`, opened to read: a kept version (the
    /// source cannot give it) is copied from it when [`Sink::link_unchanged`] could not
    /// link it (the store's link limit: EMLINK). `None`: this target cannot read its
    /// previous snapshot's files (the default); the entry is then left out, and named.
    fn open_prev(&self, _dir: &Self::Dir, _name: &[u8]) -> Option<io::Result<OwnedFd>> {
        None
    }

    /// Whether the previous snapshot has this directory at all.
    fn has_prev(&self, dir: &Self::Dir) -> bool;

    /// Whether this run already found the store refusing attribute `name` whatever
    /// its value (not supported) on an entry of `kind`: an entry whose previous copy
    /// lacks only such attributes ([`manifest::Entry::refused`]) is linked without
    /// reading the source's.
    fn refuses_xattr_name(&self, _name: &[u8], _kind: Kind) -> bool {
        false
    }

    /// Whether the store still refuses attribute `name` with `value` on an entry of
    /// `kind` (a regular file, a fifo, a socket), which it refused to an entry's
    /// previous copy ([`manifest::Entry::refused`]): where it takes it now (a store
    /// given xattr support), the entry is copied again so that its copy keeps it.
    /// `true` where it cannot be tried (a dry run).
    fn still_refuses_xattr(&self, _name: &[u8], _value: &[u8], _kind: Kind) -> bool {
        true
    }

    /// The hash (and, unless `xattrs_known`, the xattrs' digest) of a linked entry that
    /// had no manifest entry (a taken-over tree): read once from the new snapshot, so
    /// every snapshot has a full manifest.
    fn linked_facts(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        m: &Meta,
        xattrs_known: bool,
    ) -> (Option<blake3::Hash>, Option<String>);

    /// Seals the new snapshot once the walk is done: its manifest finished with the root
    /// entry, its data flushed. Publishing it is the repository's step, not the sink's.
    fn commit(self, root: &Entry) -> io::Result<Self::Sealed>
    where
        Self: Sized;

    /// Gives up on the new snapshot (a failure or a stop): nothing of it is published.
    fn abandon(self)
    where
        Self: Sized;
}

/// One thing a run would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Mkdir,
    /// Hard-link the previous snapshot's entry.
    Link,
    /// Hard-link to another name of the same source inode, written first.
    LinkTo(RelPath),
    /// Copy, and why.
    Copy(CopyReason),
}

/// What a backup would do: the entries in path order, then the rotation.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub entries: Vec<(RelPath, Action)>,
    /// `expire daily.6`, `rename daily.0 -> daily.1`, `publish daily.0`, in order.
    pub rotation: Vec<String>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (rel, a) in &self.entries {
            match a {
                Action::Mkdir => writeln!(f, "mkdir {rel}")?,
                Action::Link => writeln!(f, "link {rel}")?,
                Action::LinkTo(first) => writeln!(f, "link {rel} (same inode as {first})")?,
                Action::Copy(why) => writeln!(f, "copy {rel} ({why})")?,
            }
        }
        for r in &self.rotation {
            writeln!(f, "{r}")?;
        }
        Ok(())
    }
}
