#!/usr/bin/env python3
"""Delayed calls of a `bench/shards.py` round sorted by the place they touched: where a
split run's extra calls go against the single node's (docs/scale-out.md, session 36).

    LATENCYFS_TRACE=/var/tmp/trace python3 bench/shards.py ... --json runs.jsonl
    python3 bench/places.py runs.jsonl /var/tmp/trace [--top 45]

Each call of latencyfs's trace (kind, path, time) is counted in the run whose window
holds its time, under its kind and its place: the source (`src`), a snapshot
(`snap.N/..`), or the store's own directories with digits folded (`.snapring/shards/
incr-N/done`, `.snapring/staging/…`), four levels deep. For each case (full,
incremental) it prints the places whose counts differ most between the two modes.
"""

import argparse
import collections
import json
import re


def place(path):
    parts = path.split("/")
    if not parts or parts[0] in ("", "?"):
        return "?"
    if parts[0] == "src":
        return "src" if len(parts) > 1 else "src(root)"
    if parts[0].startswith("dst-"):
        rest = parts[1:]
        if not rest:
            return "dst(root)"
        if rest[0].startswith("snap."):
            return rest[0] + ("" if len(rest) == 1 else "/..")
        return "/".join(re.sub(r"\d+", "N", x) for x in rest[:4])
    return parts[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", help="bench/shards.py --json output (JSON lines with started/ended)")
    ap.add_argument("trace", help="latencyfs's LATENCYFS_TRACE file of the same round")
    ap.add_argument("--top", type=int, default=45)
    a = ap.parse_args()
    with open(a.runs) as f:
        wins = [(r["mode"], r["case"], r["started"], r["ended"]) for r in map(json.loads, f) if "started" in r]
    counts = collections.defaultdict(collections.Counter)
    with open(a.trace, errors="replace") as f:
        for line in f:
            try:
                kind, path, t = line.rstrip("\n").split("\t")
                t = float(t)
            except ValueError:
                continue  # a name with a newline in it split its line
            for mode, case, s, e in wins:
                if s <= t <= e + 0.5:
                    counts[(mode, case)][(kind, place(path))] += 1
                    break
    for case in ["full", "incr"]:
        one, split = counts[("single", case)], counts[("shards", case)]
        print(f"== {case}: single {sum(one.values())} calls, shards {sum(split.values())}")
        for k in sorted(set(one) | set(split), key=lambda k: -abs(split[k] - one[k]))[: a.top]:
            if split[k] != one[k]:
                print(f"{k[0]:16} {k[1]:50} {one[k]:7} {split[k]:7} {split[k] - one[k]:+7}")


if __name__ == "__main__":
    main()
