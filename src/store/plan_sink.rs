//! A dry run's sink for the hard-link store: it writes nothing and records what a
//! real run would do, as a [`Plan`] value that is printed. The walk, the decisions and
//! the rotation plan are the very ones of a real run (only the sink differs), so a dry
//! run and a run cannot drift apart. It reads the previous snapshot and nothing else of
//! the store: its entries' `lstat` (to compare by stat where there is no manifest) and,
//! where that tree differs from its run's record (`store::Snapshot::differs`), the bytes
//! of each file a stat matches, hashed to check them against that record before a link
//! is planned (`Walk::vouched`), as a real run does: such a dry run reads those files
//! whole.
//!
//! A plan holds one line per entry that would change, so its memory grows with the
//! tree, unlike a real run's: a dry run of 10^7 files holds 10^7 lines.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Mutex;

use super::tree_sink::{prev_stat, prev_xattrs};
use crate::fsx::{self, CopyError, Meta, Xattrs, b};
use crate::manifest::Entry;
use crate::relpath::RelPath;
use crate::sink::{Action, CopyReason, Linked, Plan, Refused, Sink};

/// The recording sink.
pub struct PlanSink {
    prev: Option<OwnedFd>,
    entries: Mutex<Vec<(RelPath, Action)>>,
}

/// A directory as the dry run sees it: only the previous snapshot's, to compare with.
pub struct PlanDir {
    prev: Option<OwnedFd>,
}

impl PlanSink {
    /// `prev`: the previous snapshot's root, if any.
    pub fn new(prev: Option<OwnedFd>) -> PlanSink {
        PlanSink {
            prev,
            entries: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, rel: &RelPath, a: Action) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((rel.clone(), a));
    }
}

impl Sink for PlanSink {
    type Dir = PlanDir;
    type File = ();
    type Sealed = Plan;

    fn root(&self) -> io::Result<PlanDir> {
        Ok(PlanDir {
            prev: self
                .prev
                .as_ref()
                .and_then(|p| fsx::open_dir_at(b(p), b".").ok()),
        })
    }

    fn mkdir(&self, parent: &PlanDir, name: &[u8], rel: &RelPath) -> io::Result<PlanDir> {
        self.record(rel, Action::Mkdir);
        Ok(PlanDir {
            prev: parent
                .prev
                .as_ref()
                .and_then(|p| fsx::open_dir_at(b(p), name).ok()),
        })
    }

    fn link_unchanged(&self, dir: &PlanDir, _name: &[u8], rel: &RelPath) -> Linked {
        if dir.prev.is_none() {
            return Linked::Fallback;
        }
        self.record(rel, Action::Link);
        Linked::Done
    }

    fn link_within(&self, _dir: &PlanDir, _name: &[u8], rel: &RelPath, first: &RelPath) -> Linked {
        self.record(rel, Action::LinkTo(first.clone()));
        Linked::Done
    }

    fn resume(
        &self,
        _dir: &PlanDir,
        _name: &[u8],
        _m: &Meta,
        _src_xattrs: &dyn Fn() -> io::Result<Xattrs>,
        _src_hash: &dyn Fn() -> io::Result<blake3::Hash>,
    ) -> Option<crate::sink::Resumed> {
        None
    }

    fn create_file(
        &self,
        _dir: &PlanDir,
        _name: &[u8],
        rel: &RelPath,
        _m: &Meta,
        why: CopyReason,
    ) -> io::Result<()> {
        self.record(rel, Action::Copy(why));
        Ok(())
    }

    /// Reads nothing: the plan counts the file's size as the bytes a run would copy.
    fn write_file(
        &self,
        _file: &(),
        _src: BorrowedFd<'_>,
        before: &Meta,
        _pace: &dyn Fn(u64) -> bool,
    ) -> Result<crate::fsx::Copied, CopyError> {
        Ok(crate::fsx::Copied {
            hash: blake3::Hash::from_bytes([0; 32]),
            written: before.size,
            len: before.size,
        })
    }

    fn restart_file(&self, _file: &()) -> io::Result<()> {
        Ok(())
    }

    fn discard_file(&self, _dir: &PlanDir, _name: &[u8]) {}

    fn finish_file(&self, _file: (), _m: &Meta, _xattrs: &Xattrs) -> io::Result<Refused> {
        Ok(Vec::new())
    }

    fn put_special(
        &self,
        _dir: &PlanDir,
        _name: &[u8],
        rel: &RelPath,
        _m: &Meta,
        _target: Option<&[u8]>,
        why: CopyReason,
    ) -> io::Result<()> {
        self.record(rel, Action::Copy(why));
        Ok(())
    }

    fn finish_special(
        &self,
        _dir: &PlanDir,
        _name: &[u8],
        _m: &Meta,
        _xattrs: &Xattrs,
    ) -> io::Result<Refused> {
        Ok(Vec::new())
    }

    fn finish_dir(&self, _dir: &PlanDir, _m: &Meta, _xattrs: &Xattrs) -> io::Result<Refused> {
        Ok(Vec::new())
    }

    fn write_block(&self, _rel: &RelPath, _entries: &mut [Entry]) -> io::Result<()> {
        Ok(())
    }

    fn prev_stat(&self, dir: &PlanDir, name: &[u8]) -> Option<(Meta, Option<Vec<u8>>)> {
        prev_stat(dir.prev.as_ref(), name)
    }

    fn prev_xattrs(&self, dir: &PlanDir, name: &[u8]) -> Option<Xattrs> {
        prev_xattrs(dir.prev.as_ref(), name)
    }

    fn prev_hash(&self, dir: &PlanDir, name: &[u8]) -> Option<io::Result<blake3::Hash>> {
        Some(fsx::hash_at(b(dir.prev.as_ref()?), name))
    }

    fn has_prev(&self, dir: &PlanDir) -> bool {
        dir.prev.is_some()
    }

    fn linked_facts(
        &self,
        _dir: &PlanDir,
        _name: &[u8],
        _m: &Meta,
        _xattrs_known: bool,
    ) -> (Option<blake3::Hash>, Option<String>) {
        (None, None)
    }

    /// The entries in path order (the walk records them in whatever order its
    /// workers reach them).
    fn commit(self, _root: &Entry) -> io::Result<Plan> {
        let mut entries = self.entries.into_inner().unwrap_or_else(|e| e.into_inner());
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Plan {
            entries,
            rotation: Vec::new(),
        })
    }

    fn abandon(self) {}
}
