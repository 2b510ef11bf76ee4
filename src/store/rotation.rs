//! Rotation as a plan: which renames publish a new `<label>.0`, shift the older
//! snapshots up and move expired ones to trash. Planning is pure; applying and
//! repairing the plan through the journal lives in `journal.rs`.

use serde::{Deserialize, Serialize};

/// One rename, by names relative to the store root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub from: String,
    pub to: String,
}

/// A label is the `daily` of `daily.3`: letters, digits, `_` and `-`, starting with a letter.
pub fn valid_label(label: &str) -> bool {
    let mut c = label.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic())
        && label.len() <= 64
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
}

/// Splits `daily.3` into (`daily`, 3). A slot must be able to shift up one, so
/// `daily.4294967295` (u32::MAX) is not a snapshot name, like `daily.4294967296`: a
/// directory made by hand with that name made every later backup panic on the shift.
pub fn parse_slot(name: &str) -> Option<(&str, u32)> {
    let (label, n) = name.rsplit_once('.')?;
    if !valid_label(label)
        || n.is_empty()
        || !n.bytes().all(|b| b.is_ascii_digit())
        || (n.len() > 1 && n.starts_with('0'))
    {
        return None;
    }
    let n: u32 = n.parse().ok()?;
    (n < u32::MAX).then_some((label, n))
}

/// The plan that publishes `staging` as `<label>.0` keeping `retain` snapshots of the
/// label. `slots` are the label's existing slot numbers (any order, gaps allowed).
///
/// `retain N` keeps the N newest snapshots, counted by slot order (lowest slot is the
/// newest), the new one included: the existing snapshots past the `retain - 1` newest
/// expire, however high or low their slot numbers are. The kept ones take the slots
/// `1, 2, …` in their order, so a gap (a snapshot deleted by hand, one renamed to a
/// higher slot) closes as they shift and the layout stays `.0 … .N-1`, rsnapshot's.
/// Slot numbers used to shift by one with gaps kept, and every slot reaching `retain`
/// expired (rsnapshot's rule): a gap made the oldest expire while fewer than `retain`
/// snapshots existed, and a snapshot renamed past `retain` expired at once.
///
/// Steps are ordered so no rename ever targets an existing name, and no step renames
/// away the target of an earlier one (replaying the journal counts a step whose target
/// exists as done): expiries first (highest slot first), then the snapshots that move
/// down to close a gap (lowest first; each lands below the next one's slot), then those
/// that shift up one (the contiguous run `0 … k`, highest first), then the new
/// snapshot. A snapshot already at its slot (past a gap) has no step. Returns the steps
/// and the expired names.
pub fn plan(
    label: &str,
    slots: &[u32],
    retain: u32,
    staging: &str,
    trash_prefix: &str,
) -> (Vec<Step>, Vec<String>) {
    let p = plan_holding(label, slots, retain, &[], staging, trash_prefix);
    (p.steps, p.expired)
}

/// The slots a run with `retain` would expire, before holds: those past the
/// `retain - 1` newest by slot order (the new snapshot is the `retain`th).
pub fn expiring(slots: &[u32], retain: u32) -> Vec<u32> {
    let mut slots = slots.to_vec();
    slots.sort_unstable();
    slots.dedup();
    let keep = (retain as usize).saturating_sub(1);
    slots.into_iter().skip(keep).collect()
}

/// A rotation plan: its renames, the snapshots it expires, and those it would expire
/// but keeps because a reader holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub expired: Vec<String>,
    /// Held by a reader: kept and moved with the kept snapshots (past `retain`), so
    /// the next run that finds it free expires it as any snapshot past the newest
    /// `retain`.
    pub deferred: Vec<String>,
}

/// [`plan`], where the slots in `held` are read right now: their expiry is deferred
/// (they are kept, in their order, instead of moving to trash).
pub fn plan_holding(
    label: &str,
    slots: &[u32],
    retain: u32,
    held: &[u32],
    staging: &str,
    trash_prefix: &str,
) -> Plan {
    assert!(retain >= 1, "retain must be at least 1");
    let mut slots = slots.to_vec();
    slots.sort_unstable();
    slots.dedup();
    let past = |i: usize| i + 1 >= retain as usize;
    let mut p = Plan {
        steps: Vec::new(),
        expired: Vec::new(),
        deferred: Vec::new(),
    };
    // (from, to) of every kept snapshot, newest first: the k-th kept takes slot k + 1.
    let mut kept: Vec<(u32, u32)> = Vec::new();
    for (i, &s) in slots.iter().enumerate() {
        if past(i) && !held.contains(&s) {
            continue;
        }
        if past(i) {
            p.deferred.push(format!("{label}.{s}"));
        }
        kept.push((s, kept.len() as u32 + 1));
    }
    for (i, &s) in slots.iter().enumerate().rev() {
        if past(i) && !held.contains(&s) {
            let name = format!("{label}.{s}");
            p.steps.push(Step {
                from: name.clone(),
                to: format!("{trash_prefix}{name}"),
            });
            p.expired.push(name);
        }
    }
    let step = |&(from, to): &(u32, u32)| Step {
        from: format!("{label}.{from}"),
        to: format!("{label}.{to}"),
    };
    p.steps
        .extend(kept.iter().filter(|(from, to)| to < from).map(step));
    p.steps
        .extend(kept.iter().rev().filter(|(from, to)| to > from).map(step));
    p.steps.push(Step {
        from: staging.to_string(),
        to: format!("{label}.0"),
    });
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| format!("{} -> {}", s.from, s.to))
            .collect()
    }

    #[test]
    fn full_ring_expires_the_oldest() {
        let (steps, expired) = plan("daily", &[0, 1, 2], 3, "S", "T/");
        assert_eq!(
            show(&steps),
            [
                "daily.2 -> T/daily.2",
                "daily.1 -> daily.2",
                "daily.0 -> daily.1",
                "S -> daily.0"
            ]
        );
        assert_eq!(expired, ["daily.2"]);
    }

    #[test]
    fn first_run_and_partial_ring() {
        assert_eq!(show(&plan("d", &[], 7, "S", "T/").0), ["S -> d.0"]);
        assert_eq!(
            show(&plan("d", &[1, 0], 7, "S", "T/").0),
            ["d.1 -> d.2", "d.0 -> d.1", "S -> d.0"]
        );
    }

    #[test]
    fn lowered_retain_expires_all_but_the_newest() {
        let (steps, expired) = plan("d", &[0, 2, 5, 9], 2, "S", "T/");
        assert_eq!(
            show(&steps),
            [
                "d.9 -> T/d.9",
                "d.5 -> T/d.5",
                "d.2 -> T/d.2",
                "d.0 -> d.1",
                "S -> d.0"
            ]
        );
        assert_eq!(expired.len(), 3);
    }

    /// A gap (a snapshot deleted by hand) and a snapshot renamed past `retain` expire
    /// nothing while fewer than `retain` snapshots exist: the kept ones close the gaps.
    /// It expired `d.9`, and with a gap at 1 the oldest one run early.
    #[test]
    fn gaps_close_and_only_snapshots_past_the_newest_retain_expire() {
        let (steps, expired) = plan("d", &[0, 3, 9], 5, "S", "T/");
        assert_eq!(
            show(&steps),
            ["d.3 -> d.2", "d.9 -> d.3", "d.0 -> d.1", "S -> d.0"]
        );
        assert!(expired.is_empty());
        // Four kept and the new one: five; the oldest (d.9) is the one past them.
        let (steps, expired) = plan("d", &[0, 1, 3, 4, 9], 5, "S", "T/");
        assert_eq!(
            show(&steps),
            ["d.9 -> T/d.9", "d.1 -> d.2", "d.0 -> d.1", "S -> d.0"]
        );
        assert_eq!(expired, ["d.9"]);
        // A gap at the front: the ones past it stay where they are.
        let (steps, expired) = plan("d", &[2, 5], 7, "S", "T/");
        assert_eq!(show(&steps), ["d.2 -> d.1", "d.5 -> d.2", "S -> d.0"]);
        assert!(expired.is_empty());
        let (steps, _) = plan("d", &[1, 2], 7, "S", "T/");
        assert_eq!(show(&steps), ["S -> d.0"]);
    }

    /// Every plan, applied as the journal replay applies it (a step whose target
    /// exists is done), from any point it was interrupted at, ends with the kept
    /// snapshots at `1 …` in their order and the new one at 0; no step targets an
    /// existing name when first applied.
    #[test]
    fn every_plan_replays_from_any_point() {
        use std::collections::BTreeMap;
        for mask in 0u32..(1 << 9) {
            let slots: Vec<u32> = (0..9).filter(|b| mask & (1 << b) != 0).collect();
            for retain in 1..=10 {
                for held in [vec![], slots.iter().rev().take(1).copied().collect()] {
                    let p = plan_holding("d", &slots, retain, &held, "S", "T/");
                    let start: BTreeMap<String, String> = slots
                        .iter()
                        .map(|s| (format!("d.{s}"), format!("was {s}")))
                        .chain([("S".to_string(), "new".to_string())])
                        .collect();
                    let mut end = None;
                    for crash in 0..=p.steps.len() {
                        let mut fs = start.clone();
                        let run = |fs: &mut BTreeMap<String, String>,
                                   steps: &[Step],
                                   first: bool| {
                            for st in steps {
                                if fs.contains_key(&st.to) {
                                    assert!(!first, "{slots:?} {retain}: {st:?} targets an entry");
                                    continue;
                                }
                                let v = fs.remove(&st.from).unwrap_or_else(|| {
                                    panic!("{slots:?} {retain}: {st:?}: neither exists")
                                });
                                fs.insert(st.to.clone(), v);
                            }
                        };
                        run(&mut fs, &p.steps[..crash], true);
                        run(&mut fs, &p.steps, false);
                        match &end {
                            None => end = Some(fs),
                            Some(e) => assert_eq!(e, &fs, "{slots:?} {retain} crash at {crash}"),
                        }
                    }
                    let end = end.unwrap();
                    let kept: Vec<&String> = end
                        .iter()
                        .filter(|(k, _)| !k.starts_with("T/"))
                        .map(|(_, v)| v)
                        .collect();
                    let want: Vec<u32> = slots
                        .iter()
                        .enumerate()
                        .filter(|&(i, s)| i + 1 < retain as usize || held.contains(s))
                        .map(|(_, &s)| s)
                        .collect();
                    assert_eq!(kept.len(), want.len() + 1, "{slots:?} {retain} {held:?}");
                    assert_eq!(end["d.0"], "new");
                    for (k, s) in want.iter().enumerate() {
                        let at = format!("d.{}", k + 1);
                        assert_eq!(
                            end[&at],
                            format!("was {s}"),
                            "{slots:?} {retain} {held:?}: {end:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn retain_one_replaces() {
        assert_eq!(
            show(&plan("d", &[0], 1, "S", "T/").0),
            ["d.0 -> T/d.0", "S -> d.0"]
        );
    }

    #[test]
    fn a_held_snapshot_shifts_past_retain_instead_of_expiring() {
        let p = plan_holding("d", &[0, 1, 2], 3, &[2], "S", "T/");
        assert_eq!(
            show(&p.steps),
            ["d.2 -> d.3", "d.1 -> d.2", "d.0 -> d.1", "S -> d.0"]
        );
        assert!(p.expired.is_empty());
        assert_eq!(p.deferred, ["d.2"]);
        // The next run, with no reader: both slots at or past retain expire.
        let p = plan_holding("d", &[0, 1, 2, 3], 3, &[], "S", "T/");
        assert_eq!(p.expired, ["d.3", "d.2"]);
        assert!(p.deferred.is_empty());
    }

    #[test]
    fn slot_names() {
        assert_eq!(parse_slot("daily.10"), Some(("daily", 10)));
        assert_eq!(parse_slot("hourly.0"), Some(("hourly", 0)));
        for bad in [
            "daily",
            "daily.",
            "daily.01",
            ".snapring",
            "daily.x",
            "1.2",
            "a b.1",
            "daily.4294967295",
            "daily.4294967296",
        ] {
            assert_eq!(parse_slot(bad), None, "{bad}");
        }
    }
}
