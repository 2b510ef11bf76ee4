//! A shard run's plan, pure: how the source tree is cut into work units and which
//! worker starts with which. No I/O (the sizes come in through [`Sizes`]; `sizes.rs`
//! reads them from the previous manifest or a quick walk).
//!
//! A **unit** is a name range `[lo, hi)` of one directory of the source, its **spine
//! directory**: the unit backs up every entry of that directory whose name falls in the
//! range, with everything below it, except the spine's own subdirectories that are spine
//! directories themselves (cut further). The ranges of one spine directory follow each
//! other with no gap (the first starts at `None`, the last ends at `None`), so a name
//! that appears after planning still lands in exactly one unit. A tree no bigger than a
//! unit is one unit: the root, all names.
//!
//! Sizes are weights: one per entry plus one per MiB ([`weight`]). A directory heavier
//! than `cap` is cut: its heavy subdirectories become spine directories in turn (down to
//! [`MAX_DEPTH`]), the rest of its names are packed into consecutive ranges of at most
//! `cap` (one entry heavier than `cap` is a range of its own).
//!
//! Assignment: largest unit first, onto the least-loaded worker (LPT). That is each
//! worker's home set; a worker that is done with it claims units nobody has started
//! (`worker.rs`), which absorbs what the weights got wrong.

use std::collections::{BTreeMap, BTreeSet};

use crate::relpath::RelPath;

/// Units per worker the cap aims at at least: small enough that stealing evens out the
/// end of the run, few enough that claims cost little.
pub const UNITS_PER_WORKER: u64 = 8;
/// A larger tree gets more units: about `sqrt(total / WEIGHT_PER_UNIT_SQUARED)`. A unit
/// costs a fixed number of round trips (its claim, commit, part and moves: ~90), so the
/// units' cost grows with their count `n`; the run's idle end is about one unit's walk
/// long (the last unit goes on while the other workers have nothing left), so it shrinks
/// as `total / n`. Their sum is least for `n` growing as the square root of the tree:
/// on `bench/run.py`'s `large` tree (500,000 files) 47 units left three of four workers
/// idle for 5-9 s of a 120 s unchanged incremental, 237 for under 0.4 s (docs/scale-out.md,
/// session 37). `small` (20,000 files) keeps the floor of 8 per worker.
pub const WEIGHT_PER_UNIT_SQUARED: u64 = 20;
/// At most this many units (claim and commit files on the backup file system).
pub const MAX_UNITS: u64 = 10_000;
/// Spine directories are not cut below this depth (the weights of deeper directories
/// are not kept; memory stays bounded by the directories near the top).
pub const MAX_DEPTH: usize = 6;

/// The weight of one entry: one, plus one per MiB of a regular file (a copy costs its
/// bytes; a link costs a call, like a directory entry).
pub fn weight(size: u64) -> u64 {
    1 + size / (1 << 20)
}

/// One entry of a directory as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    pub name: Vec<u8>,
    /// The entry's weight, with everything below it for a directory.
    pub weight: u64,
    pub dir: bool,
}

/// Where the planner gets weights from.
pub trait Sizes {
    /// The whole tree's weight.
    fn total(&self) -> u64;
    /// The entries of directory `dir` with their weights (called only for directories
    /// heavier than the cap).
    fn children(&self, dir: &RelPath) -> Vec<Child>;
}

/// One unit of work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// `u0000`, `u0001`, … in plan order.
    pub id: String,
    /// The spine directory whose names it covers.
    pub dir: RelPath,
    /// First name covered (`None`: from the start).
    pub lo: Option<Vec<u8>>,
    /// First name no longer covered (`None`: to the end).
    pub hi: Option<Vec<u8>>,
    pub weight: u64,
    /// The worker that starts with it.
    pub home: usize,
    /// The unit of its spine directory with the most entries: its committed work
    /// directory is renamed into the run's tree as that directory (one call), and the
    /// entries of the directory's other units are moved into it one by one (`worker.rs`,
    /// `place_unit`). One per spine directory at most (none in a plan written before
    /// anchors: every unit's entries are moved).
    pub anchor: bool,
}

impl Unit {
    /// Whether `name` of the spine directory is in this unit's range.
    pub fn covers(&self, name: &[u8]) -> bool {
        self.lo.as_deref().is_none_or(|lo| name >= lo)
            && self.hi.as_deref().is_none_or(|hi| name < hi)
    }
}

/// The cut and the assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Spine directories, sorted: made by the workers, their metadata applied by
    /// finalize. Always holds the root.
    pub spine: Vec<RelPath>,
    pub units: Vec<Unit>,
    pub cap: u64,
}

impl Cut {
    /// The names of `dir`'s subdirectories that are spine directories (its units skip
    /// them).
    pub fn spine_children(&self, dir: &RelPath) -> BTreeSet<Vec<u8>> {
        self.spine
            .iter()
            .filter(|s| !s.is_root() && s.parent() == *dir)
            .map(|s| s.file_name().to_vec())
            .collect()
    }

    /// Which names of `unit.dir`'s listing the unit's walk takes: those in its range
    /// that are not spine directories themselves (their own units cover them).
    pub fn unit_names<'u>(&self, unit: &'u Unit) -> impl Fn(&[u8]) -> bool + Send + Sync + 'u {
        let spine_kids = self.spine_children(&unit.dir);
        move |n: &[u8]| unit.covers(n) && !spine_kids.contains(n)
    }

    /// Worker `w`'s home units, in the order it takes them (largest first).
    pub fn home(&self, w: usize) -> Vec<&Unit> {
        let mut v: Vec<&Unit> = self.units.iter().filter(|u| u.home == w).collect();
        v.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.id.cmp(&b.id)));
        v
    }

    /// The order in which worker `w` claims units: its home units, then the others'
    /// (taken once its own are all claimed). In each, the anchors first, shallowest
    /// first, then the other units; largest first within each. A unit is placed into
    /// the run's tree once its directory's anchor is, and that of every spine directory
    /// above: a small anchor taken last (largest first overall) left the units waiting
    /// on it to be moved at the end of the run, one entry at a time, while the other
    /// workers waited to finalize (0.15 to 0.2 s at 1 ms latency).
    pub fn claim_order(&self, w: usize) -> Vec<&Unit> {
        let mut v: Vec<&Unit> = self.units.iter().collect();
        v.sort_by_key(|u| {
            (
                u.home != w,
                !u.anchor,
                if u.anchor {
                    u.dir.components().count()
                } else {
                    0
                },
                std::cmp::Reverse(u.weight),
                u.id.clone(),
            )
        });
        v
    }
}

/// The cap for `workers` workers over a tree of weight `total`.
pub fn cap_for(total: u64, workers: usize) -> u64 {
    let units = (workers as u64 * UNITS_PER_WORKER).max((total / WEIGHT_PER_UNIT_SQUARED).isqrt());
    let by_workers = total / units.max(1);
    let by_count = total.div_ceil(MAX_UNITS);
    by_workers.max(by_count).max(1)
}

/// Cuts the tree into units of at most `cap` (where it can) and assigns them to
/// `workers` workers.
pub fn cut(sizes: &dyn Sizes, workers: usize, cap: u64) -> Cut {
    let mut spine = Vec::new();
    let mut ranges = Vec::new();
    cut_dir(
        sizes,
        &RelPath::root(),
        sizes.total(),
        0,
        cap,
        &mut spine,
        &mut ranges,
    );
    spine.sort();
    let mut units: Vec<Unit> = ranges
        .into_iter()
        .enumerate()
        .map(|(i, r)| Unit {
            id: format!("u{i:04}"),
            dir: r.dir,
            lo: r.lo,
            hi: r.hi,
            weight: r.weight,
            home: 0,
            anchor: r.anchor,
        })
        .collect();
    assign(&mut units, workers);
    Cut { spine, units, cap }
}

/// One name range of a spine directory, as `cut_dir` makes it.
struct Range {
    dir: RelPath,
    lo: Option<Vec<u8>>,
    hi: Option<Vec<u8>>,
    weight: u64,
    /// The directory's entries in the range.
    entries: u64,
    anchor: bool,
}

fn cut_dir(
    sizes: &dyn Sizes,
    dir: &RelPath,
    w: u64,
    depth: usize,
    cap: u64,
    spine: &mut Vec<RelPath>,
    out: &mut Vec<Range>,
) {
    spine.push(dir.clone());
    let range = |lo, hi, weight, entries| Range {
        dir: dir.clone(),
        lo,
        hi,
        weight,
        entries,
        anchor: false,
    };
    if w <= cap || depth >= MAX_DEPTH {
        out.push(Range {
            anchor: true,
            ..range(None, None, w, 0)
        });
        return;
    }
    let mut children = sizes.children(dir);
    children.sort_by(|a, b| a.name.cmp(&b.name));
    // A name listed twice (an NFS server's readdir cookies gone wrong) is one entry: a
    // heavy directory cut once per copy gave two spine entries and two anchors for one
    // directory, a plan the run then refused (every worker failed, every run). Here it
    // covers every [`Sizes`].
    let before = children.len();
    children.dedup_by(|a, b| a.name == b.name);
    if children.len() != before {
        tracing::warn!(
            "{dir}: the listing gave {} name(s) more than once (a file system's readdir error); each is planned once",
            before - children.len()
        );
    }
    // This directory's ranges (those of its spine subdirectories come in between).
    let mut mine = Vec::new();
    let mut lo: Option<Vec<u8>> = None;
    let mut acc = 0u64;
    let mut entries = 0u64;
    let mut has_any = false;
    for c in &children {
        if c.dir && c.weight > cap && depth + 1 < MAX_DEPTH {
            cut_dir(
                sizes,
                &dir.join(&c.name),
                c.weight,
                depth + 1,
                cap,
                spine,
                out,
            );
            continue;
        }
        if has_any && acc + c.weight > cap {
            mine.push(out.len());
            out.push(range(lo.take(), Some(c.name.clone()), acc, entries));
            lo = Some(c.name.clone());
            acc = 0;
            entries = 0;
        }
        acc += c.weight;
        entries += 1;
        has_any = true;
    }
    // The last range runs to the end (names that appear later land there); a spine
    // directory has at least one range.
    mine.push(out.len());
    out.push(range(lo, None, acc, entries));
    // The anchor: the range with the most entries (the first of equals), whose work
    // directory becomes this directory in the run's tree, so that the fewest entries
    // are moved one by one.
    let best = mine
        .iter()
        .copied()
        .max_by_key(|&i| (out[i].entries, std::cmp::Reverse(i)));
    if let Some(i) = best {
        out[i].anchor = true;
    }
}

/// Longest processing time first: each unit, largest first, goes to the worker with
/// the least weight so far (the lowest index on a tie).
fn assign(units: &mut [Unit], workers: usize) {
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by(|&a, &b| units[b].weight.cmp(&units[a].weight).then(a.cmp(&b)));
    let mut load = vec![0u64; workers.max(1)];
    for i in order {
        let w = (0..load.len()).min_by_key(|&w| (load[w], w)).unwrap_or(0);
        load[w] += units[i].weight;
        units[i].home = w;
    }
}

/// A [`Sizes`] held in memory: every directory's children (tests, the simulation).
#[derive(Default)]
pub struct MemSizes {
    pub dirs: BTreeMap<RelPath, Vec<Child>>,
}

impl Sizes for MemSizes {
    fn total(&self) -> u64 {
        self.dirs
            .get(&RelPath::root())
            .map(|c| c.iter().map(|c| c.weight).sum())
            .unwrap_or(0)
    }

    fn children(&self, dir: &RelPath) -> Vec<Child> {
        self.dirs.get(dir).cloned().unwrap_or_default()
    }
}

/// The time the slowest of `workers` workers takes when each, once free, takes the
/// first unit nobody has started in its [`Cut::claim_order`] (its home units, then the
/// others'), one unit costing its weight. (The model of the run `worker.rs` makes.)
pub fn simulate(cut: &Cut, workers: usize) -> u64 {
    let orders: Vec<Vec<&Unit>> = (0..workers).map(|w| cut.claim_order(w)).collect();
    let mut taken: BTreeSet<&str> = BTreeSet::new();
    let mut clock = vec![0u64; workers];
    loop {
        let w = (0..workers).min_by_key(|&w| (clock[w], w)).unwrap_or(0);
        let next = orders[w].iter().find(|u| !taken.contains(u.id.as_str()));
        match next {
            Some(u) => {
                taken.insert(u.id.as_str());
                clock[w] += u.weight;
            }
            None => break,
        }
    }
    clock.into_iter().max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, weight: u64) -> Child {
        Child {
            name: name.as_bytes().to_vec(),
            weight,
            dir: false,
        }
    }

    fn dir(name: &str, weight: u64) -> Child {
        Child {
            name: name.as_bytes().to_vec(),
            weight,
            dir: true,
        }
    }

    fn rel(s: &str) -> RelPath {
        RelPath::new(s.as_bytes()).unwrap()
    }

    /// The root's `children`, with "big" (three files of 10) among them.
    fn with_big(children: Vec<Child>) -> MemSizes {
        let mut s = MemSizes::default();
        s.dirs.insert(RelPath::root(), children);
        s.dirs.insert(
            rel("big"),
            vec![file("x", 10), file("y", 10), file("z", 10)],
        );
        s
    }

    /// The root: two heavy files (a range each), "big" (three ranges of its own),
    /// then four light files (one range, the root's anchor).
    fn two_heavy_then_four_light() -> MemSizes {
        with_big(vec![
            file("a", 9),
            file("b", 9),
            dir("big", 30),
            file("c", 2),
            file("d", 2),
            file("e", 2),
            file("f", 2),
        ])
    }

    /// A name listed twice (a file system's readdir error) is planned once: one spine
    /// entry and one anchor per directory, whatever the `Sizes` gave.
    #[test]
    fn a_name_listed_twice_is_cut_once() {
        let mut s = with_big(vec![
            file("a", 4),
            dir("big", 30),
            dir("big", 30),
            file("c", 4),
            file("c", 4),
        ]);
        s.dirs.insert(
            rel("big"),
            vec![file("x", 10), file("x", 10), file("y", 10), file("z", 10)],
        );
        let c = cut(&s, 2, 10);
        assert_eq!(c.spine, vec![RelPath::root(), rel("big")]);
        let mut anchors: Vec<&RelPath> = c
            .units
            .iter()
            .filter(|u| u.anchor)
            .map(|u| &u.dir)
            .collect();
        anchors.sort();
        assert_eq!(anchors, vec![&RelPath::root(), &rel("big")]);
        let in_big: Vec<_> = c.units.iter().filter(|u| u.dir == rel("big")).collect();
        assert_eq!(in_big.len(), 3, "{:?}", c.units);
    }

    #[test]
    fn a_small_tree_is_one_unit_of_the_whole_root() {
        let mut s = MemSizes::default();
        s.dirs
            .insert(RelPath::root(), vec![file("a", 3), dir("b", 4)]);
        let c = cut(&s, 4, 100);
        assert_eq!(c.spine, vec![RelPath::root()]);
        assert_eq!(c.units.len(), 1);
        assert!(c.units[0].lo.is_none() && c.units[0].hi.is_none());
        assert!(c.units[0].covers(b"anything"));
    }

    #[test]
    fn heavy_directories_become_spine_and_the_rest_is_packed_into_ranges_without_gaps() {
        let s = with_big(vec![
            file("a", 4),
            dir("big", 30),
            file("c", 4),
            file("d", 4),
            file("e", 4),
        ]);
        let c = cut(&s, 2, 10);
        assert_eq!(c.spine, vec![RelPath::root(), rel("big")]);
        assert_eq!(
            c.spine_children(&RelPath::root()),
            BTreeSet::from([b"big".to_vec()])
        );
        // Every name of a spine directory is covered by exactly one of its ranges,
        // including names the plan never saw.
        for d in [RelPath::root(), rel("big")] {
            let units: Vec<&Unit> = c.units.iter().filter(|u| u.dir == d).collect();
            for name in ["", "a", "b", "big", "c", "d", "e", "f", "x", "y", "z", "zz"] {
                let n = units.iter().filter(|u| u.covers(name.as_bytes())).count();
                assert_eq!(n, 1, "{d} {name}");
            }
        }
        assert!(c.units.iter().all(|u| u.weight <= 10));
        let total: u64 = c.units.iter().map(|u| u.weight).sum();
        // "big" itself is an entry of the root that no unit carries (finalize does).
        assert_eq!(total, 16 + 30);
    }

    #[test]
    fn each_spine_directory_has_one_anchor_the_range_with_the_most_entries() {
        // The root: two heavy files (a range each), then four light ones (one range).
        let s = two_heavy_then_four_light();
        let c = cut(&s, 2, 10);
        let anchors = |d: &RelPath| -> Vec<&Unit> {
            c.units.iter().filter(|u| &u.dir == d && u.anchor).collect()
        };
        let root = anchors(&RelPath::root());
        assert_eq!(root.len(), 1, "{:?}", c.units);
        assert_eq!(root[0].lo.as_deref(), Some(&b"c"[..]), "{:?}", c.units);
        // Of ranges with as many entries, the first.
        let big = anchors(&rel("big"));
        assert_eq!(big.len(), 1, "{:?}", c.units);
        assert_eq!(big[0].lo, None);
        // A directory light enough to be one unit is that unit's anchor.
        let mut one = MemSizes::default();
        one.dirs.insert(RelPath::root(), vec![file("a", 3)]);
        assert!(cut(&one, 4, 100).units[0].anchor);
    }

    #[test]
    fn a_worker_claims_anchors_first_shallowest_first_then_the_rest_largest_first() {
        // The root's anchor is its light range (c..f), below the heavy "a" and "b"
        // and the ranges of "big".
        let s = two_heavy_then_four_light();
        let c = cut(&s, 2, 10);
        for w in 0..2 {
            let order = c.claim_order(w);
            assert_eq!(order.len(), c.units.len());
            let home = order.iter().take_while(|u| u.home == w).count();
            assert_eq!(home, c.home(w).len(), "home units first: {order:?}");
            for part in [&order[..home], &order[home..]] {
                let key = |u: &Unit| {
                    let depth = u.dir.components().count();
                    (!u.anchor, if u.anchor { depth } else { 0 })
                };
                assert!(part.windows(2).all(|p| key(p[0]) <= key(p[1])), "{part:?}");
                assert!(
                    part.windows(2)
                        .all(|p| key(p[0]) != key(p[1]) || p[0].weight >= p[1].weight),
                    "{part:?}"
                );
            }
        }
        // The root's light anchor before the heavier ranges of its own worker.
        let root = c
            .units
            .iter()
            .find(|u| u.anchor && u.dir.is_root())
            .unwrap();
        let order = c.claim_order(root.home);
        let heavier = c
            .units
            .iter()
            .filter(|u| u.home == root.home && !u.anchor && u.weight > root.weight)
            .count();
        assert!(heavier > 0, "{:?}", c.units);
        assert_eq!(order[0].id, root.id, "{order:?}");
    }

    #[test]
    fn lpt_gives_each_worker_about_the_same_weight() {
        let mut s = MemSizes::default();
        let kids: Vec<Child> = (0..40)
            .map(|i| file(&format!("f{i:02}"), 1 + i % 7))
            .collect();
        s.dirs.insert(RelPath::root(), kids);
        let c = cut(&s, 4, 3);
        let loads: Vec<u64> = (0..4)
            .map(|w| c.home(w).iter().map(|u| u.weight).sum())
            .collect();
        let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        assert!(max - min <= 3, "{loads:?}");
    }

    /// A deterministic generator (no dependency for one test).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
        /// A standard normal (Box-Muller).
        fn normal(&mut self) -> f64 {
            let (u1, u2) = (self.next().max(1e-12), self.next());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    /// 50 top-level directories with log-normal sizes (sigma 2), each holding its
    /// weight as 1,000 files of equal weight (enough to cut).
    fn skewed_tree(seed: u64) -> (MemSizes, Vec<u64>) {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut s = MemSizes::default();
        let mut top = Vec::new();
        let mut sizes = Vec::new();
        for d in 0..50 {
            let size = ((rng.normal() * 2.0).exp() * 10_000.0) as u64 + 1_000;
            let name = format!("d{d:02}");
            let per = size / 1000;
            let files: Vec<Child> = (0..1000).map(|i| file(&format!("f{i:04}"), per)).collect();
            let w: u64 = files.iter().map(|c| c.weight).sum();
            s.dirs.insert(rel(&name), files);
            top.push(dir(&name, w));
            sizes.push(w);
        }
        s.dirs.insert(RelPath::root(), top);
        (s, sizes)
    }

    /// Eight units a worker on a small tree (`bench/run.py`'s `small`: 20,000 files), more
    /// as the tree grows, as the square root of its weight (`large`: 500,000 files).
    #[test]
    fn the_cap_gives_eight_units_a_worker_to_small_trees_and_more_to_large_ones() {
        assert_eq!(cap_for(20_000, 4), 20_000 / 32);
        assert_eq!(cap_for(100, 4), 3);
        let units = |total: u64| total / cap_for(total, 4);
        assert!((150..=170).contains(&units(500_000)), "{}", units(500_000));
        assert!(
            (210..=240).contains(&units(1_000_000)),
            "{}",
            units(1_000_000)
        );
        assert!(units(100_000) > units(20_000) && units(100_000) < units(500_000));
        // Never more than MAX_UNITS.
        assert!(units(u64::MAX / 2) <= MAX_UNITS + 1);
    }

    /// The balance claim: 8 workers over 50 top-level directories of log-normal
    /// sizes. The modulus split (directory i to worker i mod 8) leaves the slowest worker
    /// at ~3x the ideal; units plus claiming unstarted units stay within 1.1x.
    #[test]
    fn units_and_stealing_stay_within_1_1x_of_ideal_where_the_modulus_split_is_about_3x() {
        let workers = 8;
        let (mut worst_units, mut sum_modulus) = (0.0f64, 0.0f64);
        let seeds = 200;
        for seed in 1..=seeds {
            let (s, sizes) = skewed_tree(seed);
            let total: u64 = sizes.iter().sum();
            let ideal = total as f64 / workers as f64;
            let mut modulus = vec![0u64; workers];
            for (i, w) in sizes.iter().enumerate() {
                modulus[i % workers] += w;
            }
            sum_modulus += *modulus.iter().max().unwrap() as f64 / ideal;
            let c = cut(&s, workers, cap_for(total, workers));
            let slowest = simulate(&c, workers) as f64 / ideal;
            worst_units = worst_units.max(slowest);
        }
        let mean_modulus = sum_modulus / seeds as f64;
        assert!(
            worst_units <= 1.1,
            "units + stealing: worst {worst_units:.3}x of ideal"
        );
        assert!(
            (2.5..4.0).contains(&mean_modulus),
            "modulus split: mean {mean_modulus:.2}x of ideal"
        );
        eprintln!("worst units+stealing {worst_units:.3}x, mean modulus {mean_modulus:.2}x");
    }
}
