//! One definition of "these two entries are the same": which recorded facts of two
//! entries differ (type, size, symlink target, device number, mode, owner, mtime,
//! extended attributes). Backup's link-or-copy decision (`engine::decide`), `diff` and
//! `verify` (`compare`), restore's identical-or-conflict check and `history` all ask it,
//! and differ only in what they do with the answer. The bytes of two regular files of
//! the same size are the caller's to compare (by hash), since only it knows whether a
//! hash is at hand or must be read. Pure.

use crate::fsx::{Kind, Meta, Time};
use crate::manifest::Entry;

/// The facts of one entry that "same" looks at.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files: their length (other kinds: not compared).
    pub size: u64,
    pub mtime: Time,
    /// Character and block devices.
    pub rdev: u64,
    /// Symlinks.
    pub target: Option<&'a [u8]>,
    /// The extended attributes' digest (`fsx::xattr_digest`; `Some(None)`: none), or
    /// `None` when not known on this side (then they are not compared).
    pub xattrs: Option<Option<&'a str>>,
}

impl<'a> Facts<'a> {
    /// A manifest entry, or an entry built from a tree (`Entry::from_meta`).
    pub fn of_entry(e: &'a Entry) -> Self {
        Facts {
            kind: e.kind,
            perm: e.perm,
            uid: e.uid,
            gid: e.gid,
            size: e.size,
            mtime: e.mtime,
            rdev: e.rdev,
            target: e.target.as_deref(),
            xattrs: Some(e.xattrs.as_deref()),
        }
    }

    /// An `lstat` (xattrs unknown), with the symlink's target when it is one.
    pub fn of_meta(m: &Meta, target: Option<&'a [u8]>) -> Self {
        Facts {
            kind: m.kind,
            perm: m.perm,
            uid: m.uid,
            gid: m.gid,
            size: m.size,
            mtime: m.mtime,
            rdev: m.rdev,
            target,
            xattrs: None,
        }
    }

    /// The same facts with the extended attributes' digest known.
    pub fn with_xattrs(self, digest: Option<&'a str>) -> Self {
        Facts {
            xattrs: Some(digest),
            ..self
        }
    }
}

/// Which facts differ between two entries. When the types differ nothing else is
/// compared (every other field is `false`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub kind: bool,
    /// Regular files only.
    pub size: bool,
    /// Symlinks only.
    pub target: bool,
    /// Character and block devices only.
    pub rdev: bool,
    pub perm: bool,
    /// uid or gid.
    pub owner: bool,
    pub mtime: bool,
    /// Only when both sides' attributes are known.
    pub xattrs: bool,
}

impl Delta {
    pub fn between(a: &Facts<'_>, b: &Facts<'_>) -> Delta {
        if a.kind != b.kind {
            return Delta {
                kind: true,
                ..Delta::default()
            };
        }
        Delta {
            kind: false,
            size: a.kind == Kind::File && a.size != b.size,
            target: a.kind == Kind::Symlink && a.target != b.target,
            rdev: matches!(a.kind, Kind::Char | Kind::Block) && a.rdev != b.rdev,
            perm: a.perm != b.perm,
            owner: (a.uid, a.gid) != (b.uid, b.gid),
            mtime: a.mtime != b.mtime,
            xattrs: matches!((a.xattrs, b.xattrs), (Some(x), Some(y)) if x != y),
        }
    }

    /// Type, length, symlink target or device number differ: not the same content.
    pub fn content(&self) -> bool {
        self.kind || self.size || self.target || self.rdev
    }

    /// Mode, owner, mtime or extended attributes differ.
    pub fn metadata(&self) -> bool {
        self.perm || self.owner || self.mtime || self.xattrs
    }

    /// Two regular files of the same length: only their bytes can still differ, and
    /// the caller compares them (by hash) when it needs to know.
    pub fn bytes_undecided(&self, a: &Facts<'_>) -> bool {
        !self.kind && !self.size && a.kind == Kind::File
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Entry {
        Entry::from_meta(
            b"f",
            &Meta {
                kind: Kind::File,
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
            },
        )
    }

    #[test]
    fn equal_entries_are_the_same() {
        let e = file();
        let d = Delta::between(&Facts::of_entry(&e), &Facts::of_entry(&e));
        assert_eq!(d, Delta::default());
        assert!(!d.content() && !d.metadata());
        assert!(d.bytes_undecided(&Facts::of_entry(&e)));
    }

    #[test]
    fn each_fact_is_told_apart() {
        let a = file();
        type Case = (fn(&mut Entry), Delta);
        let cases: Vec<Case> = vec![
            (
                |e| e.size = 11,
                Delta {
                    size: true,
                    ..Delta::default()
                },
            ),
            (
                |e| e.perm = 0o600,
                Delta {
                    perm: true,
                    ..Delta::default()
                },
            ),
            (
                |e| e.gid = 3,
                Delta {
                    owner: true,
                    ..Delta::default()
                },
            ),
            (
                |e| e.mtime.nsec = 6,
                Delta {
                    mtime: true,
                    ..Delta::default()
                },
            ),
            (
                |e| e.xattrs = Some("x".into()),
                Delta {
                    xattrs: true,
                    ..Delta::default()
                },
            ),
            (
                |e| e.kind = Kind::Dir,
                Delta {
                    kind: true,
                    ..Delta::default()
                },
            ),
        ];
        for (change, want) in cases {
            let mut b = a.clone();
            change(&mut b);
            assert_eq!(
                Delta::between(&Facts::of_entry(&a), &Facts::of_entry(&b)),
                want
            );
        }
    }

    #[test]
    fn unknown_xattrs_are_not_compared_and_fields_apply_to_their_kinds() {
        let mut a = file();
        a.xattrs = Some("x".into());
        let m = Facts::of_meta(
            &Meta {
                kind: Kind::File,
                perm: a.perm,
                uid: a.uid,
                gid: a.gid,
                size: a.size,
                mtime: a.mtime,
                ctime: a.ctime,
                dev: 0,
                ino: 0,
                nlink: 1,
                rdev: 7,
                blocks: 0,
            },
            None,
        );
        // xattrs unknown on one side; rdev is not a regular file's fact.
        assert_eq!(Delta::between(&Facts::of_entry(&a), &m), Delta::default());
        assert!(Delta::between(&Facts::of_entry(&a), &m.with_xattrs(None)).xattrs);
    }
}
