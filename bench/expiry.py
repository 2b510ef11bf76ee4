#!/usr/bin/env python3
"""Expiry benchmark (docs/scale-out.md, "Measured"): how long deleting an expired
snapshot takes at the end of a run, source and store behind latencyfs (or on the local
disk with --delay-us 0). Each mode backs up the tree twice with `--retain 1`, so the
second run expires the first one's snapshot (every entry of the tree); the figure is
that run's `phases.remove_expired.seconds` from its run record, with its wall time.

Modes: `single` (a single-node run with `--jobs J`: the path a shard run's finalizer
took alone before the deletion was shared), `alone` (one shard worker, `--shard 0/1`:
the finalizer with no other worker alive), `shared` (W shard workers, each `--jobs J`:
the workers still alive claim pieces of the expired snapshot with the finalizer).

    sudo python3 bench/expiry.py --preset small --delay-us 1000 --runs 2

Uses the release binaries unless --snapring/--latencyfs name others.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as harness  # noqa: E402  (bench/run.py: gen, drop_caches, checks)
import shards  # noqa: E402  (bench/shards.py: timed)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=harness.PRESETS)
    ap.add_argument("--delay-us", type=int, default=1000, help="latencyfs delay per metadata call; 0: local disk")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=4, help="--jobs of every process")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--modes", default="single,alone,shared")
    ap.add_argument("--snapring", default=os.path.join(harness.target_dir(""), "release/snapring"))
    ap.add_argument("--latencyfs", default=harness.tools_bin("latencyfs"))
    ap.add_argument("--work", default="/var/tmp/snapring-expiry")
    ap.add_argument("--json", help="append each result here as a JSON line")
    ap.add_argument("--logs", help="keep each process's -v log (stderr) in this directory")
    a = ap.parse_args()
    under = os.path.join(a.work, "data")
    mnt = os.path.join(a.work, "mnt")
    shutil.rmtree(under, ignore_errors=True)
    os.makedirs(under)
    fuse = None
    if a.delay_us:
        subprocess.run(["fusermount3", "-uz", mnt], stderr=subprocess.DEVNULL)
        os.makedirs(mnt, exist_ok=True)
        fuse = subprocess.Popen([a.latencyfs, "--delay-us", str(a.delay_us), "--threads", "128", under, mnt])
        for _ in range(100):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        else:
            raise SystemExit("latencyfs did not mount")
    view = mnt if fuse else under
    env = dict(os.environ, SNAPRING_CATALOG="off")
    results = {}
    try:
        nfiles = harness.gen(os.path.join(under, "src"), a.preset)
        print(f"{a.preset}: {nfiles} files", file=sys.stderr)
        time.sleep(2.1)
        src = os.path.join(view, "src")
        for r in range(a.runs):
            for mode in a.modes.split(","):
                dst_u = os.path.join(under, "dst-" + mode)
                shutil.rmtree(dst_u, ignore_errors=True)
                dst = os.path.join(view, "dst-" + mode)
                base = [a.snapring, "backup", "--source", src, "--dest", dst, "--label", "snap", "--retain", "1",
                        "--no-progress", "--jobs", str(a.jobs)] + (["-v"] if a.logs else [])
                n = {"single": 0, "alone": 1, "shared": a.workers}[mode]
                for case in ["first", "expiring"]:
                    run_id = f"{mode}-{case}-{r}"
                    if n == 0:
                        cmds = [base]
                    else:
                        cmds = [base + ["--shard", f"{i}/{n}", "--run-id", run_id] for i in range(n)]
                    harness.drop_caches()
                    logs = None
                    if a.logs:
                        os.makedirs(a.logs, exist_ok=True)
                        logs = os.path.join(a.logs, f"{mode}-{case}-{r}")
                    wall = shards.timed(cmds, env, logs)
                    harness.check_same(os.path.join(under, "src"), os.path.join(dst_u, "snap.0"), f"{mode} {case}")
                    if case == "first":
                        continue
                    rec = newest_record(dst_u)
                    if rec["expired"] != ["snap.0"]:
                        raise SystemExit(f"{mode}: expected snap.0 expired, got {rec['expired']}")
                    left = os.listdir(os.path.join(dst_u, ".snapring/trash"))
                    if left:
                        raise SystemExit(f"{mode}: trash not empty: {left[:5]}")
                    secs = rec["phases"]["remove_expired"]["seconds"]
                    per = [(w["index"], w.get("expired_pieces", 0), w.get("expired_entries", 0))
                           for w in (rec.get("shards") or {}).get("per_worker", [])]
                    by_fin = (rec.get("shards") or {}).get("expired_by_finalize")
                    results.setdefault(mode, []).append((secs, wall))
                    print(f"run {r + 1}/{a.runs}: {mode}: expiry {secs:.2f} s, run {wall:.1f} s, "
                          f"pieces per worker (index, pieces, entries) {per}, by finalize {by_fin}; "
                          f"load {os.getloadavg()[0]:.1f}", file=sys.stderr)
                    if a.json:
                        with open(a.json, "a") as f:
                            f.write(json.dumps(dict(mode=mode, run=r, expiry=secs, wall=wall, per_worker=per,
                                                    by_finalize=by_fin, delay_us=a.delay_us, workers=n,
                                                    jobs=a.jobs, preset=a.preset)) + "\n")
    finally:
        if fuse:
            subprocess.run(["fusermount3", "-u", mnt])
            fuse.wait()
    print(f"{'mode':8} {'expiry median s':>16}  expiry s (run wall s)")
    for mode, v in results.items():
        print(f"{mode:8} {statistics.median(x for x, _ in v):16.2f}  "
              f"{', '.join(f'{x:.2f} ({w:.1f})' for x, w in v)}")


def newest_record(store):
    runs = os.path.join(store, ".snapring/runs")
    recs = [json.load(open(os.path.join(runs, f))) for f in os.listdir(runs) if f.endswith(".json")]
    return max(recs, key=lambda r: r["started_at"])


if __name__ == "__main__":
    main()
