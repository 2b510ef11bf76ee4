//! Naming a snapshot on the command line: by directory name (`daily.2`), by the id of
//! the run that made it, by `latest`, or by time (`@2026-11-20T02:00`: the newest
//! snapshot taken at or before then). Reads the store's records; writes nothing.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use super::{Snapshot, Store};
use crate::error::{Error, Result};
use crate::fsx;
use crate::manifest;
use crate::report::RunReport;

/// A snapshot picked by the user, opened for reading.
pub struct Selected {
    pub snap: Snapshot,
    /// `<store>/<name>`
    pub path: PathBuf,
    /// The snapshot's root directory, held open: a rotation that renames it meanwhile
    /// does not disturb a reader.
    pub fd: OwnedFd,
    pub run: Option<RunReport>,
    /// `None` for a tree taken over without a manifest, or a damaged manifest (warned).
    pub manifest: Option<manifest::Reader>,
    /// Why a snapshot with a run record has no usable manifest (missing, damaged): a
    /// restore then cannot check content, and says so.
    pub manifest_error: Option<String>,
    /// When its source was read (the run's start), else the directory's mtime.
    pub taken_at: DateTime<Utc>,
}

impl Selected {
    /// What the snapshot's run left out (`excludes`, `exclude_caches`,
    /// `exclude_if_present`; the patterns of its `exclude_from` files as read then),
    /// `None` when nothing (or no run record: a taken-over tree). A compare with a live
    /// tree leaves the same out (`compare::Options::excludes`), and `restore --mirror`
    /// keeps it.
    pub fn exclusions(&self) -> Result<Option<crate::exclude::Excludes>> {
        match self.run.as_ref().map(|r| &r.exclusion) {
            Some(s) if !s.is_empty() => s.build().map(Some),
            _ => Ok(None),
        }
    }
}

/// The forms [`parse_time`] accepts, for the messages that refuse a time.
pub const TIME_FORMS: &str = "RFC 3339 with or without seconds (2026-12-07T03:00:00+01:00, 2026-12-07T03:00Z), or YYYY-MM-DD[ HH:MM[:SS]] in UTC";

/// Parses a user-given time: RFC 3339, with or without its seconds
/// (`2026-12-07T03:00+01:00`, `2026-12-07T03:00Z`), or `YYYY-MM-DD[ T]HH:MM[:SS]` or
/// `YYYY-MM-DD`, taken as UTC when it names no offset ([`TIME_FORMS`]). The form
/// without seconds was taken without an offset only: `03:00+01:00` was refused.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // `Z` is the offset +00:00 (`%:z` reads only the numeric form); RFC 3339 allows
    // `t` and `z` in lower case.
    let upper = s.to_ascii_uppercase();
    let zoned = match upper.strip_suffix('Z') {
        Some(rest) => format!("{rest}+00:00"),
        None => upper.clone(),
    };
    for f in ["%Y-%m-%dT%H:%M%:z", "%Y-%m-%d %H:%M%:z"] {
        if let Ok(t) = DateTime::parse_from_str(&zoned, f) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for f in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// When a snapshot's source was read: its run's start, else (its record deleted) the
/// second its run id names, else (a tree taken over) the root directory's mtime. The
/// mtime is the source root's: with the record gone, `latest` and a copy's time went
/// back to whenever the source's root last changed.
pub fn taken_at(snap: &Snapshot, run: Option<&RunReport>) -> DateTime<Utc> {
    run.and_then(|r| parse_time(&r.started_at))
        .or_else(|| snap.rec.as_ref().and_then(|r| run_id_time(&r.id)))
        .or_else(|| DateTime::from_timestamp(snap.mtime, 0))
        .unwrap_or_default()
}

/// The second a run id names (`engine::backup::new_run_id`: `%Y%m%dT%H%M%SZ-…`), when
/// it has that form (a shard run's id is the user's).
pub fn run_id_time(id: &str) -> Option<DateTime<Utc>> {
    let stamp = id.split('-').next()?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

/// A snapshot with the record of the run that made it and when its source was read.
pub type Dated = (Snapshot, Option<RunReport>, DateTime<Utc>);

impl Store {
    /// Every snapshot with its run record and time, newest first: within a label by
    /// slot (`daily.0` is its newest, whatever the clock said), the labels interleaved
    /// by time taken. A clock set wrong for one run (a year ahead) then cannot make
    /// `latest` an old snapshot: by time alone it was the first until it expired.
    pub fn snapshots_with_runs(&self) -> Result<Vec<Dated>> {
        let mut labels: std::collections::BTreeMap<String, Vec<Dated>> = Default::default();
        for s in self.snapshots()? {
            let run = match &s.rec {
                Some(r) => self.read_run(&r.id)?,
                None => None,
            };
            let t = taken_at(&s, run.as_ref());
            labels.entry(s.label.clone()).or_default().push((s, run, t));
        }
        let mut heads: Vec<std::collections::VecDeque<Dated>> = labels
            .into_values()
            .map(|mut v| {
                v.sort_by_key(|d| d.0.slot);
                v.into()
            })
            .collect();
        let mut v = Vec::new();
        // Take the newest of the labels' newest, until none is left.
        while let Some(i) = (0..heads.len())
            .filter(|&i| !heads[i].is_empty())
            .max_by(|&a, &b| {
                let (x, y) = (&heads[a][0], &heads[b][0]);
                x.2.cmp(&y.2).then(y.0.slot.cmp(&x.0.slot)).then(b.cmp(&a))
            })
        {
            v.push(heads[i].pop_front().expect("not empty"));
        }
        Ok(v)
    }

    /// Resolves `spec` (name, run id, `latest`, or `@TIME`/a bare time) to one snapshot,
    /// opened and held (see `hold.rs`): a backup defers its expiry while it is read.
    pub fn select(&self, spec: &str) -> Result<Selected> {
        // A rotation between the listing and the hold renames it: resolve again.
        for _ in 0..4 {
            if let Some(sel) = self.select_once(spec)? {
                return Ok(sel);
            }
        }
        Err(self.rotated(spec))
    }

    /// What `spec` names in this store, without opening it: `Ok(None)` a snapshot (or
    /// none because the store has none yet, which is the store's state, not a mistake
    /// in `spec`); `Ok(Some(why))` nothing, though the store has snapshots: a name,
    /// run id or time that none of them has, as `select` would say it. `snapring copy`
    /// refuses such a spec as a mistake on its command line before it starts a run.
    pub fn names_nothing(&self, spec: &str) -> Result<Option<String>> {
        let all = self.snapshots_with_runs()?;
        Ok(match position(&all, spec) {
            Ok(_) | Err(Miss::Empty) => None,
            Err(m) => Some(self.unknown(m).to_string()),
        })
    }

    /// The error of a `spec` that names no snapshot here.
    fn unknown(&self, m: Miss) -> Error {
        let why = match m {
            Miss::Empty => "the store has no snapshots yet".to_string(),
            Miss::Before(t) => format!("no snapshot was taken at or before {}", t.to_rfc3339()),
            Miss::Name(spec) => format!(
                "no snapshot named {spec:?} (give a name like daily.0, a run id, `latest` or @YYYY-MM-DDTHH:MM, a time in UTC, or @ and any of these times: {TIME_FORMS})"
            ),
        };
        Error::Store {
            path: self.root.clone(),
            msg: format!(
                "{why}; `snapring list --dest {}` shows the snapshots there",
                self.root.display()
            ),
        }
    }

    fn rotated(&self, name: &str) -> Error {
        Error::Store {
            path: self.root.join(name),
            msg: "backups kept rotating this snapshot while it was being opened; try again".into(),
        }
    }

    fn select_once(&self, spec: &str) -> Result<Option<Selected>> {
        let all = self.snapshots_with_runs()?;
        let i = position(&all, spec).map_err(|m| self.unknown(m))?;
        let (snap, run, taken_at) = all.into_iter().nth(i).expect("index from the same list");
        self.hold_snapshot(snap, run, taken_at)
    }

    /// Opens a listed snapshot, held for reading (see `hold.rs`), and its manifest (a
    /// damaged manifest is warned about).
    pub fn open_snapshot(
        &self,
        snap: Snapshot,
        run: Option<RunReport>,
        taken_at: DateTime<Utc>,
    ) -> Result<Selected> {
        let name = snap.name.clone();
        self.hold_snapshot(snap, run, taken_at)?
            .ok_or_else(|| self.rotated(&name))
    }

    /// `None`: a rotation moved it away from its name before the hold was taken.
    fn hold_snapshot(
        &self,
        snap: Snapshot,
        run: Option<RunReport>,
        taken_at: DateTime<Utc>,
    ) -> Result<Option<Selected>> {
        let path = self.snapshot_path(&snap.name);
        let fd = match fsx::open_dir(&path) {
            Ok(fd) => fd,
            Err(e) if fsx::errno_is(&e, rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(crate::error::io_error(e, "open snapshot", &path)),
        };
        super::hold::share(&fd);
        // The name must still lead to this descriptor, and this descriptor must be the
        // directory that was listed: a rotation between the listing and the open moves
        // another run's tree under the name, which must not be read as `snap`'s run.
        if !super::hold::still_named(&path, &fd) || !listed_here(&fd, snap.ino) {
            return Ok(None);
        }
        let mdir = self.meta.join("manifests");
        let (manifest, manifest_error) = match snap.rec.as_ref() {
            None => (None, None),
            Some(r) => match manifest::Reader::open(&mdir, &r.id) {
                Ok(m) => (Some(m), None),
                Err(e) => {
                    tracing::warn!("manifest of {} unusable: {e}", snap.name);
                    let at = mdir.join(&r.id);
                    (None, Some(format!("manifest {}: {e}", at.display())))
                }
            },
        };
        Ok(Some(Selected {
            snap,
            path,
            fd,
            run,
            manifest,
            manifest_error,
            taken_at,
        }))
    }
}

/// Whether the opened directory is the inode seen when listing.
fn listed_here(fd: &OwnedFd, ino: u64) -> bool {
    fsx::fstat(fsx::b(fd)).is_ok_and(|m| m.ino == ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_the_forms_users_type() {
        let want = "2026-11-20T02:00:00+00:00";
        for s in [
            "2026-11-20T02:00:00Z",
            "2026-11-20 02:00",
            "2026-11-20T02:00",
            "2026-11-20 02:00:00",
            "2026-11-20T03:00:00+01:00",
            "2026-11-20T03:00+01:00",
            "2026-11-20 03:00+01:00",
            "2026-11-19T21:30-04:30",
            "2026-11-20T02:00Z",
            "2026-11-20t02:00z",
        ] {
            assert_eq!(parse_time(s).unwrap().to_rfc3339(), want, "{s}");
        }
        assert_eq!(
            parse_time("2026-11-20").unwrap().to_rfc3339(),
            "2026-11-20T00:00:00+00:00"
        );
        assert!(parse_time("daily.2").is_none());
        assert!(parse_time("yesterday").is_none());
        for bad in [
            "2026-11-20T03:00+01",
            "2026-11-20T03:00+25:00",
            "2026-11-20T03Z",
        ] {
            assert!(parse_time(bad).is_none(), "{bad}");
        }
    }
}

#[cfg(test)]
mod rotation_tests {
    use super::*;

    #[test]
    fn a_snapshot_rotated_between_listing_and_open_is_not_opened_under_its_old_listing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = Store::open(&root, true).unwrap();
        std::fs::create_dir(root.join("daily.0")).unwrap();
        std::fs::create_dir(root.join("daily.1")).unwrap();
        let listed = store.snapshots_with_runs().unwrap();
        assert_eq!(listed.len(), 2);
        // A rotation swaps the trees under the names after the listing.
        std::fs::rename(root.join("daily.0"), root.join("x")).unwrap();
        std::fs::rename(root.join("daily.1"), root.join("daily.0")).unwrap();
        std::fs::rename(root.join("x"), root.join("daily.1")).unwrap();
        for (snap, run, at) in listed {
            assert!(
                store.hold_snapshot(snap, run, at).unwrap().is_none(),
                "a listing taken before the rotation opened another tree"
            );
        }
        // Resolving again finds each name's current tree.
        let sel = store.select("daily.1").unwrap();
        assert!(listed_here(&sel.fd, sel.snap.ino));
    }
}

/// Why a spec names no snapshot of a store.
enum Miss {
    /// The store has none.
    Empty,
    /// A time before every snapshot.
    Before(DateTime<Utc>),
    /// Neither a name, a run id nor a time of one.
    Name(String),
}

/// Which of `all` (newest first) `spec` names.
fn position(all: &[Dated], spec: &str) -> std::result::Result<usize, Miss> {
    if all.is_empty() {
        return Err(Miss::Empty);
    }
    let by_name = all.iter().position(|(s, _, _)| s.name == spec);
    let by_id = || {
        all.iter()
            .position(|(s, _, _)| s.rec.as_ref().is_some_and(|r| r.id == spec))
    };
    let by_time = || {
        let t = spec
            .strip_prefix('@')
            .or_else(|| spec.strip_prefix("before:"))
            .unwrap_or(spec);
        let t = parse_time(t)?;
        Some(all.iter().position(|(_, _, at)| *at <= t).ok_or(t))
    };
    if matches!(spec, "latest" | "newest") {
        Ok(0)
    } else if let Some(i) = by_name.or_else(by_id) {
        Ok(i)
    } else {
        match by_time() {
            Some(Ok(i)) => Ok(i),
            Some(Err(t)) => Err(Miss::Before(t)),
            None => Err(Miss::Name(spec.to_string())),
        }
    }
}
