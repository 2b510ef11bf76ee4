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
/// Like rsnapshot, slot numbers shift by one (gaps are kept, never compacted), and
/// every slot that would reach `retain` or beyond expires. Steps are ordered so no
/// rename ever targets an existing name: expiries first, then shifts from the highest
/// slot down, then the new snapshot. Returns the steps and the expired names.
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

/// A rotation plan: its renames, the snapshots it expires, and those it would expire
/// but keeps because a reader holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub expired: Vec<String>,
    /// Held by a reader: shifted one slot up like a kept snapshot (past `retain`), so
    /// the next run that finds it free expires it as any slot at or past `retain`.
    pub deferred: Vec<String>,
}

/// [`plan`], where the slots in `held` are read right now: their expiry is deferred
/// (they shift up a slot instead of moving to trash; names stay in one rename chain).
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
    let expires = |s: u32| s + 1 >= retain && !held.contains(&s);
    let mut p = Plan {
        steps: Vec::new(),
        expired: Vec::new(),
        deferred: Vec::new(),
    };
    for &s in slots.iter().rev().filter(|&&s| expires(s)) {
        let name = format!("{label}.{s}");
        p.steps.push(Step {
            from: name.clone(),
            to: format!("{trash_prefix}{name}"),
        });
        p.expired.push(name);
    }
    for &s in slots.iter().rev().filter(|&&s| !expires(s)) {
        if s + 1 >= retain {
            p.deferred.push(format!("{label}.{s}"));
        }
        p.steps.push(Step {
            from: format!("{label}.{s}"),
            to: format!("{label}.{}", s + 1),
        });
    }
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
    fn gaps_are_kept_and_lowered_retain_expires_everything_above() {
        let (steps, expired) = plan("d", &[0, 2, 5, 9], 3, "S", "T/");
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
