//! Link or copy: the pure decision for one non-directory entry, given the source's
//! `lstat` and what the previous snapshot says about the same name. No I/O.

use crate::fsx::{Kind, Meta, Time};
use crate::manifest::Entry;
use crate::same::{Delta, Facts};

/// What the previous snapshot says about a name: from its manifest (with the source
/// ctime recorded at that backup), or from `lstat` of the previous tree (a tree taken
/// over from rsnapshot/`cp -a`/rsync, with no ctime to trust).
#[derive(Clone, Copy, Debug)]
pub struct PrevView<'a> {
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: Time,
    pub ctime: Option<Time>,
    pub target: Option<&'a [u8]>,
    pub rdev: u64,
    /// The source inode it was copied from (manifest only).
    pub ino: Option<u64>,
    /// Changed so close to the previous walk that equal times prove nothing: timestamps
    /// are coarse (ext4 ticks every few ms), so a rewrite in the same tick as our stat
    /// keeps size, mtime and ctime. Such files are copied again ("racy", as in git).
    pub racy: bool,
}

pub use crate::manifest::RACY_MARGIN_SECS;

impl<'a> PrevView<'a> {
    /// `walk_started`: when the walk that wrote the entry began.
    pub fn from_entry(e: &'a Entry, walk_started: Time) -> Self {
        let limit = Time {
            sec: walk_started.sec - RACY_MARGIN_SECS,
            nsec: walk_started.nsec,
        };
        // 0 is no inode and no time: the manifest does not know them (a copied store,
        // `manifest::Reader::source_ids`), so they are not compared.
        let ctime = (e.ctime != Time::default()).then_some(e.ctime);
        // Racy by the ctime where the manifest has it: any write after the stat moves
        // the ctime, and the kernel sets it from the clock, so an older one proves the
        // inode was not written in the stat's tick. An mtime set ahead by hand (`touch
        // -d 2100-01-01`, an archive from a machine with a wrong clock) made the file
        // racy in every run for ever, so read whole each time.
        let changed = ctime.unwrap_or(e.mtime);
        PrevView {
            ino: (e.ino != 0).then_some(e.ino),
            racy: e.kind == Kind::File && changed >= limit,
            kind: e.kind,
            perm: e.perm,
            uid: e.uid,
            gid: e.gid,
            size: e.size,
            mtime: e.mtime,
            ctime,
            target: e.target.as_deref(),
            rdev: e.rdev,
        }
    }
    /// The facts "same" compares (xattrs are compared separately, after the ctime).
    fn facts(&self) -> Facts<'a> {
        Facts {
            kind: self.kind,
            perm: self.perm,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            mtime: self.mtime,
            rdev: self.rdev,
            target: self.target,
            xattrs: None,
        }
    }

    pub fn from_stat(m: &Meta, target: Option<&'a [u8]>) -> Self {
        PrevView {
            kind: m.kind,
            perm: m.perm,
            uid: m.uid,
            gid: m.gid,
            size: m.size,
            mtime: m.mtime,
            ctime: None,
            target,
            rdev: m.rdev,
            ino: None,
            racy: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    New,
    /// Another inode under the same name (replaced, e.g. by an editor's rename).
    Replaced,
    /// Changed within the previous backup's timestamp window, and the bytes differ.
    Racy,
    TypeChanged,
    ContentChanged,
    MetadataChanged,
    /// Unchanged in the source, but `verify` found the previous snapshot's inode damaged
    /// (`manifest::damaged_list`): linking it would carry the damage forward.
    Damaged,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::Replaced => "replaced",
            Reason::Racy => "changed during the previous backup",
            Reason::TypeChanged => "type changed",
            Reason::ContentChanged => "content changed",
            Reason::MetadataChanged => "metadata changed",
            Reason::Damaged => "damaged in the previous snapshot",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Unchanged: hard-link the previous snapshot's inode.
    Link,
    /// Everything compared is equal but the ctime moved (or is unknown): only the
    /// extended attributes can differ, so compare them before linking.
    CompareXattrs,
    /// Everything compared is equal, but that proves nothing: the entry changed so close
    /// to the previous walk that equal times say nothing (git's "racily clean" check,
    /// [`Reason::Racy`]), or its ctime moved since ([`Reason::ContentChanged`]: bytes
    /// rewritten in place with the mtime put back, `touch -r`, as well as an extended
    /// attribute or a link count changed). Hash the source and compare it with the
    /// recorded hash, and compare the xattrs, before linking; a different hash is a copy
    /// for the reason carried.
    VerifyContent(Reason),
    Copy(Reason),
}

/// Decides for one entry. `src_target` is the source symlink's target (symlinks only).
///
/// A changed mode, owner or group means a new inode even when the bytes are the same:
/// linking would make the older snapshot's file show the new metadata (the `cp -al`
/// bug). A regular file whose size and mtime are unchanged but whose ctime moved is
/// read and its hash compared ([`Decision::VerifyContent`]): a rewrite that put the
/// mtime back is copied (rsync's quick check would link the old bytes). Without a
/// recorded ctime (a tree taken over without a manifest) size and mtime decide, as in
/// rsync.
pub fn decide(src: &Meta, src_target: Option<&[u8]>, prev: Option<&PrevView<'_>>) -> Decision {
    let Some(p) = prev else {
        return Decision::Copy(Reason::New);
    };
    let d = Delta::between(&Facts::of_meta(src, src_target), &p.facts());
    if d.kind {
        return Decision::Copy(Reason::TypeChanged);
    }
    // A regular file's new mtime counts as a content change (rsync's quick check).
    if d.size || d.target || (src.kind == Kind::File && d.mtime) {
        return Decision::Copy(Reason::ContentChanged);
    }
    if d.mtime || d.perm || d.owner {
        return Decision::Copy(Reason::MetadataChanged);
    }
    if d.rdev {
        return Decision::Copy(Reason::ContentChanged);
    }
    if p.ino.is_some_and(|i| i != src.ino) {
        return Decision::Copy(Reason::Replaced);
    }
    if p.racy {
        return Decision::VerifyContent(Reason::Racy);
    }
    match p.ctime {
        Some(c) if c == src.ctime => Decision::Link,
        Some(_) if src.kind == Kind::File => Decision::VerifyContent(Reason::ContentChanged),
        _ => Decision::CompareXattrs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: Kind) -> Meta {
        Meta {
            kind,
            perm: 0o644,
            uid: 1,
            gid: 2,
            size: 10,
            mtime: Time { sec: 100, nsec: 5 },
            ctime: Time { sec: 200, nsec: 7 },
            dev: 1,
            ino: 9,
            nlink: 1,
            rdev: 0,
            blocks: 8,
        }
    }

    #[test]
    fn unchanged_with_same_ctime_links() {
        let m = meta(Kind::File);
        let p = PrevView::from_stat(&m, None);
        let p = PrevView {
            ctime: Some(m.ctime),
            ..p
        };
        assert_eq!(decide(&m, None, Some(&p)), Decision::Link);
    }

    #[test]
    fn a_moved_ctime_reads_a_file_and_checks_the_xattrs_of_others() {
        let m = meta(Kind::File);
        // No ctime recorded (a tree without a manifest): size and mtime decide.
        assert_eq!(
            decide(&m, None, Some(&PrevView::from_stat(&m, None))),
            Decision::CompareXattrs
        );
        let p = PrevView {
            ctime: Some(Time { sec: 1, nsec: 0 }),
            ..PrevView::from_stat(&m, None)
        };
        assert_eq!(
            decide(&m, None, Some(&p)),
            Decision::VerifyContent(Reason::ContentChanged)
        );
        let l = meta(Kind::Symlink);
        let p = PrevView {
            ctime: Some(Time { sec: 1, nsec: 0 }),
            ..PrevView::from_stat(&l, Some(b"t"))
        };
        assert_eq!(decide(&l, Some(b"t"), Some(&p)), Decision::CompareXattrs);
    }

    #[test]
    fn every_difference_copies_with_its_reason() {
        let m = meta(Kind::File);
        let base = PrevView {
            ctime: Some(m.ctime),
            ..PrevView::from_stat(&m, None)
        };
        let cases: Vec<(PrevView, Reason)> = vec![
            (PrevView { size: 11, ..base }, Reason::ContentChanged),
            (
                PrevView {
                    mtime: Time { sec: 100, nsec: 6 },
                    ..base
                },
                Reason::ContentChanged,
            ),
            (
                PrevView {
                    perm: 0o4644,
                    ..base
                },
                Reason::MetadataChanged,
            ),
            (PrevView { uid: 0, ..base }, Reason::MetadataChanged),
            (PrevView { gid: 0, ..base }, Reason::MetadataChanged),
            (
                PrevView {
                    kind: Kind::Symlink,
                    ..base
                },
                Reason::TypeChanged,
            ),
        ];
        for (p, why) in cases {
            assert_eq!(decide(&m, None, Some(&p)), Decision::Copy(why), "{p:?}");
        }
        assert_eq!(decide(&m, None, None), Decision::Copy(Reason::New));
    }

    #[test]
    fn replaced_and_racy_files_are_copied() {
        let m = meta(Kind::File);
        let base = PrevView {
            ctime: Some(m.ctime),
            ino: Some(m.ino),
            ..PrevView::from_stat(&m, None)
        };
        assert_eq!(decide(&m, None, Some(&base)), Decision::Link);
        assert_eq!(
            decide(
                &m,
                None,
                Some(&PrevView {
                    ino: Some(10),
                    ..base
                })
            ),
            Decision::Copy(Reason::Replaced)
        );
        assert_eq!(
            decide(&m, None, Some(&PrevView { racy: true, ..base })),
            Decision::VerifyContent(Reason::Racy)
        );
        let mut e = Entry::from_meta(b"x", &m);
        // Changed 1s before the previous walk began: racy. 10s before: trusted.
        assert!(PrevView::from_entry(&e, Time { sec: 201, nsec: 0 }).racy);
        e.ctime = Time { sec: 190, nsec: 0 };
        assert!(!PrevView::from_entry(&e, Time { sec: 201, nsec: 0 }).racy);
        // An mtime ahead of the walk (set by hand) with an older ctime: not racy;
        // without a ctime (a copied store's manifest) the mtime decides.
        e.mtime = Time {
            sec: 4_102_444_800,
            nsec: 0,
        };
        assert!(!PrevView::from_entry(&e, Time { sec: 201, nsec: 0 }).racy);
        e.ctime = Time::default();
        assert!(PrevView::from_entry(&e, Time { sec: 201, nsec: 0 }).racy);
    }

    #[test]
    fn unknown_source_ids_compare_like_a_tree_without_manifest() {
        let m = meta(Kind::File);
        let mut e = Entry::from_meta(b"x", &m);
        e.ino = 0;
        e.ctime = Time::default();
        let p = PrevView::from_entry(&e, Time { sec: 1000, nsec: 0 });
        assert_eq!((p.ino, p.ctime, p.racy), (None, None, false));
        // Another inode, unknown ctime: the xattrs are compared, then it is linked.
        let moved = Meta { ino: 77, ..m };
        assert_eq!(decide(&moved, None, Some(&p)), Decision::CompareXattrs);
        assert_eq!(
            decide(&Meta { size: 11, ..moved }, None, Some(&p)),
            Decision::Copy(Reason::ContentChanged)
        );
    }

    #[test]
    fn symlink_target_and_device_numbers_count() {
        let l = meta(Kind::Symlink);
        let p = PrevView {
            ctime: Some(l.ctime),
            ..PrevView::from_stat(&l, Some(b"a"))
        };
        assert_eq!(
            decide(&l, Some(b"b"), Some(&p)),
            Decision::Copy(Reason::ContentChanged)
        );
        assert_eq!(decide(&l, Some(b"a"), Some(&p)), Decision::Link);
        let c = Meta {
            rdev: 5,
            ..meta(Kind::Char)
        };
        let p = PrevView {
            ctime: Some(c.ctime),
            rdev: 6,
            ..PrevView::from_stat(&c, None)
        };
        assert_eq!(
            decide(&c, None, Some(&p)),
            Decision::Copy(Reason::ContentChanged)
        );
    }
}
