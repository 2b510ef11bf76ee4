//! Retention on a repository with restic's `forget` semantics: snapshots of one label
//! (snapring's `label=L` tag) are grouped by host and paths (restic's default
//! `--group-by host,paths`), and the newest N of each group are kept (`--keep-last N`).
//! `plan` is a pure function of the snapshots and the policy that returns a verdict
//! with its reason for every snapshot of the label; `apply` removes the snapshot files
//! of the ones it forgets (nothing else: their data stays until `prune`), under an
//! exclusive lock as restic's `forget` takes one. Only `apply` does I/O.
//! `forget_named` forgets the snapshots named by id, unique prefix or `latest`
//! (restic's `forget ID...`; after `repair index` names the damaged ones): every name
//! is resolved under the same lock before anything is removed, so an unknown or
//! ambiguous name removes nothing.

use serde::Serialize;

use super::backend::Kind;
use super::repo::Repo;
use super::snapshot::{self, Snapshot};
use super::{Error, Id, Result};

/// What to keep: the newest `keep_last` snapshots of `label` in each host/paths group;
/// with `group`, only that one group is considered (a backup's own).
#[derive(Clone, Debug)]
pub struct Policy {
    pub label: String,
    pub keep_last: u32,
    pub group: Option<Group>,
    /// Called before each snapshot is removed, under the exclusive lock: the
    /// operations layer's shard runs mark the run of a snapshot they wrote published
    /// first (`shard::repository::before_forget`), so that no finalize writes it back.
    pub before_remove: Option<BeforeRemove>,
    /// The snapshot the run applying the policy has just written: always kept. One
    /// dated later (by a clock that ran ahead, or `restic backup --time`) would
    /// otherwise make every run with `--retain 1` forget its own snapshot.
    pub written: Option<Id>,
}

/// See [`Policy::before_remove`].
pub type BeforeRemove = fn(&dyn super::backend::Backend, &Id, &Snapshot) -> Result<()>;

/// restic's default grouping: the host and the paths of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Group {
    pub hostname: String,
    pub paths: Vec<String>,
}

impl Group {
    pub fn of(s: &Snapshot) -> Group {
        let mut paths = s.paths.clone();
        paths.sort();
        Group {
            hostname: s.hostname.clone(),
            paths,
        }
    }
}

/// The verdict on one snapshot, with its reason.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub id: String,
    pub short_id: String,
    pub time: String,
    pub group: Group,
    pub keep: bool,
    /// Why: `kept: newest 3 of label daily (1 of 3)` or `forgotten: older than the
    /// newest 3 of label daily`.
    pub reason: String,
}

/// Every verdict, newest first within each group, groups in order.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub verdicts: Vec<Verdict>,
}

impl Plan {
    pub fn forgotten(&self) -> impl Iterator<Item = &Verdict> {
        self.verdicts.iter().filter(|v| !v.keep)
    }

    pub fn kept(&self) -> impl Iterator<Item = &Verdict> {
        self.verdicts.iter().filter(|v| v.keep)
    }
}

/// Decides which snapshots of `policy.label` to keep. Snapshots of other labels, and of
/// other groups when `policy.group` is set, get no verdict: they are left alone. Within
/// a group, newer means a later time, then a greater id (the order `load_all` gives).
pub fn plan(snaps: &[(Id, Snapshot)], policy: &Policy) -> Plan {
    let mut of_label: Vec<(Group, &(Id, Snapshot))> = snaps
        .iter()
        .filter(|(_, s)| s.tag("label") == Some(policy.label.as_str()))
        .map(|e| (Group::of(&e.1), e))
        .filter(|(g, _)| policy.group.as_ref().is_none_or(|want| want == g))
        .collect();
    // Group by group, newest first within each.
    of_label.sort_by(|(ga, (ia, sa)), (gb, (ib, sb))| {
        ga.cmp(gb)
            .then_with(|| (sb.unix_time(), ib).cmp(&(sa.unix_time(), ia)))
    });
    let n = policy.keep_last;
    let mut verdicts = Vec::with_capacity(of_label.len());
    let mut rank = 0u32;
    let mut prev: Option<&Group> = None;
    // Whether the group's newest snapshot that is not `partial` was met already.
    let mut complete_seen = false;
    for (g, (id, s)) in &of_label {
        if prev != Some(g) {
            rank = 0;
            complete_seen = false;
        }
        prev = Some(g);
        rank += 1;
        let own = policy.written == Some(*id);
        // Invariant 3: history goes only when a newer complete snapshot exists; the
        // newest complete one is kept past `keep_last` while only `partial` ones (a
        // source that answered with errors) are newer.
        let last_complete = !s.has_tag(snapshot::PARTIAL_TAG) && !complete_seen;
        complete_seen |= !s.has_tag(snapshot::PARTIAL_TAG);
        let keep = rank <= n || own || last_complete;
        let reason = if rank <= n {
            format!("kept: newest {n} of label {} ({rank} of {n})", policy.label)
        } else if last_complete {
            format!(
                "kept: the newest complete snapshot of label {}, the {} newer ones are partial (history is only removed when a newer complete snapshot exists)",
                policy.label,
                rank - 1
            )
        } else if own {
            format!(
                "kept: written by this run, though {} of label {} are dated later (a clock ahead?)",
                rank - 1,
                policy.label
            )
        } else {
            format!(
                "forgotten: older than the newest {n} of label {}",
                policy.label
            )
        };
        verdicts.push(Verdict {
            id: id.hex(),
            short_id: id.hex()[..8].to_string(),
            time: s.time.clone(),
            group: g.clone(),
            keep,
            reason,
        });
    }
    Plan { verdicts }
}

/// What `forget` did (or, in a dry run, would do).
#[derive(Clone, Debug, Serialize)]
pub struct ForgetReport {
    pub dry_run: bool,
    pub plan: Plan,
    /// Snapshot files removed.
    pub removed: u64,
}

/// Loads the snapshots, plans, and unless `dry_run` removes the forgotten snapshots'
/// files under an exclusive lock.
/// `cancel` set stops it between two removals with [`Error::Cancelled`]; the snapshots
/// not removed yet stay.
pub fn forget(
    repo: &Repo,
    policy: &Policy,
    dry_run: bool,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<ForgetReport> {
    if policy.keep_last == 0 {
        return Err(Error::Other(
            "--retain 0 would forget every snapshot of the label; give 1 or more".into(),
        ));
    }
    // A dry run says what the real one would: that it refuses.
    repo.check_writable()?;
    if dry_run {
        let plan = plan(&snapshot::load_readable(repo)?, policy);
        return Ok(ForgetReport {
            dry_run,
            plan,
            removed: 0,
        });
    }
    let lock = super::lock::acquire(repo, true)?;
    let report = forget_stoppable(repo, policy, cancel)?;
    lock.release()?;
    Ok(report)
}

/// `forget` for a caller that holds a lock already; `policy.before_remove` first for
/// each snapshot it removes.
pub fn forget_locked(repo: &Repo, policy: &Policy) -> Result<ForgetReport> {
    forget_stoppable(repo, policy, &std::sync::atomic::AtomicBool::new(false))
}

/// `forget_locked`, stopped between two removals by `cancel`.
fn forget_stoppable(
    repo: &Repo,
    policy: &Policy,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<ForgetReport> {
    let snaps = snapshot::load_readable(repo)?;
    let plan = plan(&snaps, policy);
    remove_planned(repo, &snaps, plan, policy.before_remove, cancel)
}

/// The verdicts on the snapshots `names` name (ids, unique prefixes, `latest`; a
/// snapshot named twice once), in the order named: every one forgotten. A name that
/// names no snapshot, or more than one, is an error naming it.
pub fn plan_named(snaps: &[(Id, Snapshot)], names: &[String]) -> Result<Plan> {
    let mut verdicts: Vec<Verdict> = Vec::with_capacity(names.len());
    for name in names {
        let at = snapshot::find_in(snaps, name)?;
        let (id, s) = &snaps[at];
        if verdicts.iter().any(|v| v.id == id.hex()) {
            continue;
        }
        verdicts.push(Verdict {
            id: id.hex(),
            short_id: id.hex()[..8].to_string(),
            time: s.time.clone(),
            group: Group::of(s),
            keep: false,
            reason: format!("forgotten: named ({name})"),
        });
    }
    Ok(Plan { verdicts })
}

/// Forgets the snapshots `names` name (see [`plan_named`]); unless `dry_run`, under an
/// exclusive lock, with `before_remove` first for each (as [`Policy::before_remove`]).
/// Every name is resolved before anything is removed: one that names no snapshot or
/// several stops it with nothing removed. `cancel` as for [`forget`].
pub fn forget_named(
    repo: &Repo,
    names: &[String],
    before_remove: Option<BeforeRemove>,
    dry_run: bool,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<ForgetReport> {
    if names.is_empty() {
        return Err(Error::Other("no snapshot named to forget".into()));
    }
    // A dry run says what the real one would: that it refuses.
    repo.check_writable()?;
    if dry_run {
        let plan = plan_named(&readable_for(repo, names)?, names)?;
        return Ok(ForgetReport {
            dry_run,
            plan,
            removed: 0,
        });
    }
    let lock = super::lock::acquire(repo, true)?;
    let r = remove_named(repo, names, before_remove, cancel);
    let released = lock.release();
    let r = r?;
    released?;
    Ok(r)
}

/// The snapshots that read, for forgetting `names`: `latest` is refused while a
/// snapshot file does not read (`snapshot::refuse_latest`: it may be the newest, and
/// forgetting the newest readable one instead would lose the wrong snapshot).
fn readable_for(repo: &Repo, names: &[String]) -> Result<Vec<(Id, Snapshot)>> {
    let (snaps, damaged) = snapshot::load_listing(repo)?;
    for name in names {
        snapshot::refuse_latest(repo, &damaged, name)?;
    }
    for d in &damaged {
        tracing::warn!("{}", d.warning());
    }
    Ok(snaps)
}

fn remove_named(
    repo: &Repo,
    names: &[String],
    before_remove: Option<BeforeRemove>,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<ForgetReport> {
    // Listed under the lock: what another process forgot meanwhile is not named.
    let snaps = readable_for(repo, names)?;
    let plan = plan_named(&snaps, names)?;
    remove_planned(repo, &snaps, plan, before_remove, cancel)
}

/// Removes the snapshot files `plan` forgets (of `snaps`), `before_remove` first for
/// each; `cancel` stops it between two removals.
pub(crate) fn remove_planned(
    repo: &Repo,
    snaps: &[(Id, Snapshot)],
    plan: Plan,
    before_remove: Option<BeforeRemove>,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<ForgetReport> {
    let mut removed = 0;
    for v in plan.forgotten() {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let id = Id::parse(&v.id)?;
        if let Some(before) = before_remove
            && let Some((_, s)) = snaps.iter().find(|(i, _)| *i == id)
        {
            before(repo.backend.as_ref(), &id, s)?;
        }
        repo.backend.remove(Kind::Snapshot, &id)?;
        removed += 1;
    }
    Ok(ForgetReport {
        dry_run: false,
        plan,
        removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(time: &str, host: &str, path: &str, label: &str) -> Snapshot {
        Snapshot {
            time: time.into(),
            paths: vec![path.into()],
            hostname: host.into(),
            tags: vec!["snapring".into(), format!("label={label}")],
            ..Default::default()
        }
    }

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    fn policy(label: &str, n: u32) -> Policy {
        Policy {
            label: label.into(),
            keep_last: n,
            group: None,
            before_remove: None,
            written: None,
        }
    }

    /// `partial` snapshots (a source that answered with errors) never make the policy
    /// forget the newest complete snapshot of a group (invariant 3); once a newer
    /// complete one exists it goes as any other.
    #[test]
    fn partial_snapshots_keep_the_newest_complete_one() {
        let partial = |t: &str| {
            let mut s = snap(t, "h", "/src", "daily");
            s.tags.push(snapshot::PARTIAL_TAG.into());
            s
        };
        let mut snaps = vec![
            (id(1), snap("2026-11-01T02:00:00Z", "h", "/src", "daily")),
            (id(2), snap("2026-11-02T02:00:00Z", "h", "/src", "daily")),
            (id(3), partial("2026-11-03T02:00:00Z")),
            (id(4), partial("2026-11-04T02:00:00Z")),
        ];
        let forgotten = |snaps: &[(Id, Snapshot)], n| {
            let p = plan(snaps, &policy("daily", n));
            let mut v: Vec<String> = p.forgotten().map(|v| v.id.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(forgotten(&snaps, 1), [id(1).hex(), id(3).hex()]);
        assert_eq!(forgotten(&snaps, 2), [id(1).hex()]);
        let p = plan(&snaps, &policy("daily", 1));
        let kept = p.verdicts.iter().find(|v| v.id == id(2).hex()).unwrap();
        assert!(
            kept.keep && kept.reason.contains("newest complete"),
            "{kept:?}"
        );
        snaps.push((id(5), snap("2026-11-05T02:00:00Z", "h", "/src", "daily")));
        assert_eq!(
            forgotten(&snaps, 1),
            [id(1).hex(), id(2).hex(), id(3).hex(), id(4).hex()]
        );
    }

    /// A snapshot dated later than the run's own (a clock ahead) does not make the run
    /// forget the snapshot it has just written.
    #[test]
    fn the_runs_own_snapshot_is_kept_whatever_is_dated_later() {
        let snaps = vec![
            (id(1), snap("2026-11-01T02:00:00Z", "h", "/src", "daily")),
            (id(2), snap("2099-01-01T00:00:00Z", "h", "/src", "daily")),
            (id(3), snap("2026-11-02T02:00:00Z", "h", "/src", "daily")),
        ];
        let mut pol = policy("daily", 1);
        pol.written = Some(id(3));
        let p = plan(&snaps, &pol);
        let forgotten: Vec<String> = p.forgotten().map(|v| v.id.clone()).collect();
        assert_eq!(forgotten, vec![id(1).hex()]);
        let own = p.verdicts.iter().find(|v| v.id == id(3).hex()).unwrap();
        assert!(own.keep);
        assert_eq!(
            own.reason,
            "kept: written by this run, though 1 of label daily are dated later (a clock ahead?)"
        );
    }

    #[test]
    fn keeps_the_newest_n_of_each_group_of_the_label_with_reasons() {
        let snaps = vec![
            (id(1), snap("2026-11-01T02:00:00Z", "h", "/src", "daily")),
            (id(2), snap("2026-11-02T02:00:00Z", "h", "/src", "daily")),
            (id(3), snap("2026-11-03T02:00:00Z", "h", "/src", "daily")),
            (id(4), snap("2026-11-04T02:00:00Z", "h", "/src", "daily")),
            (id(5), snap("2026-11-01T03:00:00Z", "h", "/src", "weekly")),
            (
                id(6),
                snap("2026-11-01T02:00:00Z", "other", "/src", "daily"),
            ),
            (id(7), snap("2026-11-01T02:00:00Z", "h", "/else", "daily")),
            (id(8), snap("2026-11-02T02:00:00Z", "h", "/else", "daily")),
        ];
        let p = plan(&snaps, &policy("daily", 2));
        let show: Vec<(u8, bool, &str)> = p
            .verdicts
            .iter()
            .map(|v| (Id::parse(&v.id).unwrap().0[0], v.keep, v.reason.as_str()))
            .collect();
        assert_eq!(
            show,
            vec![
                (8, true, "kept: newest 2 of label daily (1 of 2)"),
                (7, true, "kept: newest 2 of label daily (2 of 2)"),
                (4, true, "kept: newest 2 of label daily (1 of 2)"),
                (3, true, "kept: newest 2 of label daily (2 of 2)"),
                (
                    2,
                    false,
                    "forgotten: older than the newest 2 of label daily"
                ),
                (
                    1,
                    false,
                    "forgotten: older than the newest 2 of label daily"
                ),
                (6, true, "kept: newest 2 of label daily (1 of 2)"),
            ]
        );
        // The weekly snapshot has no verdict: other labels are left alone.
        assert!(p.verdicts.iter().all(|v| v.id != id(5).hex()));
    }

    #[test]
    fn a_group_limits_the_plan_to_it() {
        let snaps = vec![
            (id(1), snap("2026-11-01T02:00:00Z", "h", "/src", "daily")),
            (id(2), snap("2026-11-02T02:00:00Z", "h", "/src", "daily")),
            (id(3), snap("2026-11-01T02:00:00Z", "h", "/else", "daily")),
            (id(4), snap("2026-11-02T02:00:00Z", "h", "/else", "daily")),
        ];
        let mut pol = policy("daily", 1);
        pol.group = Some(Group::of(&snaps[0].1));
        let p = plan(&snaps, &pol);
        let forgotten: Vec<String> = p.forgotten().map(|v| v.id.clone()).collect();
        assert_eq!(forgotten, vec![id(1).hex()]);
        assert_eq!(p.verdicts.len(), 2);
    }

    #[test]
    fn names_resolve_to_ids_prefixes_and_latest_or_fail_naming_the_name() {
        let mut a = id(0xab);
        a.0[1] = 0x01;
        let mut b = id(0xab);
        b.0[1] = 0x02;
        let snaps = vec![
            (a, snap("2026-11-01T02:00:00Z", "h", "/src", "daily")),
            (b, snap("2026-11-02T02:00:00Z", "h", "/src", "daily")),
        ];
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = plan_named(&snaps, &names(&["ab01", "latest", &b.hex()])).unwrap();
        let got: Vec<&str> = p.forgotten().map(|v| v.id.as_str()).collect();
        assert_eq!(got, vec![a.hex(), b.hex()]);
        assert_eq!(p.verdicts[1].reason, "forgotten: named (latest)");
        let e = plan_named(&snaps, &names(&["ab01", "ab"])).unwrap_err();
        assert!(
            e.to_string().contains("2 snapshots start with \"ab\""),
            "{e}"
        );
        let e = plan_named(&snaps, &names(&["cd"])).unwrap_err();
        assert!(e.to_string().contains("no snapshot \"cd\""), "{e}");
        assert!(plan_named(&snaps, &names(&[""])).is_err());
        assert!(plan_named(&[], &names(&["latest"])).is_err());
    }

    #[test]
    fn same_time_orders_by_id_and_fewer_than_n_keeps_all() {
        let snaps = vec![
            (id(9), snap("2026-11-01T02:00:00Z", "h", "/src", "daily")),
            (id(2), snap("2026-11-01T02:00:00Z", "h", "/src", "daily")),
        ];
        let p = plan(&snaps, &policy("daily", 1));
        assert_eq!(p.kept().next().unwrap().id, id(9).hex());
        assert_eq!(plan(&snaps, &policy("daily", 5)).forgotten().count(), 0);
        assert_eq!(plan(&snaps, &policy("hourly", 1)).verdicts.len(), 0);
    }
}
