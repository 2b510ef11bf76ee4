#!/usr/bin/env python3
"""Calls in flight through latencyfs over each run of a `bench/shards.py` round: where a
run's time goes when it is latency-bound (docs/scale-out.md, "Measured").

    LATENCYFS_TRACE=/var/tmp/trace python3 bench/shards.py ... --json runs.jsonl
    python3 bench/inflight.py runs.jsonl /var/tmp/trace [--bin-ms 100]

latencyfs writes one line per delayed call with the time it was made (`LATENCYFS_TRACE`);
`bench/shards.py --json` records when each run started and ended. Each delayed call takes
the delay (`--delay-us`), so the calls made in a bin of B ms kept delay x calls / B of
them in flight on average. For each run this prints the delayed calls, the average in
flight, the seconds in bins with fewer than `--low` in flight, and the row of bins.
"""

import argparse
import bisect
import json


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", help="bench/shards.py --json output (JSON lines with started/ended)")
    ap.add_argument("trace", help="latencyfs's LATENCYFS_TRACE file of the same round")
    ap.add_argument("--bin-ms", type=float, default=100.0)
    ap.add_argument("--low", type=float, default=12.0, help="in flight below this counts as low")
    a = ap.parse_args()
    times = []
    with open(a.trace, errors="replace") as f:
        for line in f:
            try:
                times.append(float(line.rstrip("\n").rsplit("\t", 1)[-1]))
            except ValueError:
                pass  # a name with a newline in it split its line
    times.sort()
    with open(a.runs) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    for r in runs:
        if "started" not in r:
            continue
        t0, t1 = r["started"], r["ended"]
        calls = times[bisect.bisect_left(times, t0):bisect.bisect_right(times, t1)]
        delay = r["delay_us"] / 1e6
        width = a.bin_ms / 1000
        bins = [0] * (int((t1 - t0) / width) + 1)
        for t in calls:
            bins[int((t - t0) / width)] += 1
        flight = [c * delay / width for c in bins]
        low = sum(width for x in flight if x < a.low)
        print(f"{r['mode']} {r['case']} round {r['run'] + 1}: {r['wall']:.2f} s, {len(calls)} delayed calls, "
              f"{len(calls) * delay / (t1 - t0):.1f} in flight on average, {low:.1f} s below {a.low:g}")
        print("  " + " ".join(f"{x:.0f}" for x in flight))


if __name__ == "__main__":
    main()
