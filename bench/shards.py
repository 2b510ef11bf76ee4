#!/usr/bin/env python3
"""Scale-out benchmark (docs/scale-out.md, "Measured"): one single-node snapring run
with `--jobs W*J` against W shard workers (`--shard I/W`, each `--jobs J`) started
together, a full backup and then an unchanged incremental, source and store both
behind latencyfs (or on the local disk with --delay-us 0). Wall time of the whole run,
finalize included, and latencyfs's count of delayed calls by kind (its `--stats`);
every snapshot is compared with the source.

    sudo python3 bench/shards.py --preset small --delay-us 1000 --runs 3

With --repository the destination is a restic repository (`--dest file://…` behind the
same latency layer, docs/scale-out.md "Into a restic repository"): each snapshot is
restored and compared with the source.

Uses the release binaries (target/release/snapring, bench/tools/target/release/
latencyfs) unless --snapring/--latencyfs name others (a before/after of either).
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as harness  # noqa: E402  (bench/run.py: gen, drop_caches, checks)


def proc_cpu(pid):
    """User + system CPU seconds of process `pid` so far (0 without one)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fs_calls(stats_file):
    """latencyfs's counts of delayed calls by kind so far (`--stats`), {} before its first write."""
    try:
        with open(stats_file) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def timed(cmds, env, logs=None):
    """Wall seconds of the commands run together, and their CPU seconds (user +
    system, every process); every one must exit 0. With `logs` (a path prefix), each
    command's stderr is kept in `<logs>-<i>.log`."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
    errs = [p.communicate()[1] for p in procs]
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    for c, p, e in zip(cmds, procs, errs):
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(c)} failed ({p.returncode}): {e.decode(errors='replace')[-2000:]}")
    if logs:
        for i, e in enumerate(errs):
            with open(f"{logs}-{i}.log", "wb") as f:
                f.write(e)
    return wall, cpu


def where_time_went(prefix, workers):
    """Where a shard run's wall time went, from its workers' -v logs (`<prefix>-<i>.log`):
    the start (first line to the first unit), the units (to the last commit) with the
    share of the lanes' time spent between units and idle at the end (each unit's start
    is its commit's time less its duration; a worker's lanes are its most units open at
    once), and finalize (last commit to the finalized line). None without the logs."""
    import datetime
    import re

    def ts(line):
        return datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()

    firsts, units, fin = [], [], None
    for i in range(workers):
        try:
            with open(f"{prefix}-{i}.log", errors="replace") as f:
                lines = [ln for ln in f.read().splitlines() if ln[:4].isdigit()]
        except OSError:
            return None
        if not lines:
            return None
        firsts.append(ts(lines[0]))
        mine = []
        for ln in lines:
            m = re.search(r"unit \S+ committed \(generation \d+\) in ([\d.]+) s", ln)
            if m:
                end = ts(ln)
                mine.append((end - float(m.group(1)), end))
            elif " finalized: " in ln:
                fin = ts(ln)
        units.append(mine)
    if fin is None or not any(units):
        return None
    t0 = min(firsts)
    first = min(s for u in units for s, _ in u)
    last = max(e for u in units for _, e in u)
    busy = lanes_time = 0.0
    for mine in units:
        if not mine:
            continue
        edges = sorted([(s, 1) for s, _ in mine] + [(e, -1) for _, e in mine])
        open_, most = 0, 0
        for _, d in edges:
            open_ += d
            most = max(most, open_)
        busy += sum(e - s for s, e in mine)
        lanes_time += most * (last - first)
    return dict(start=first - t0, units=last - first, finalize=fin - last,
                lanes_busy=busy / lanes_time if lanes_time else 0.0)


def check_restored(snapring, env, url, src, work, what):
    """Restores the repository's newest snapshot with snapring and compares it with
    `src`."""
    to = os.path.join(work, "restored")
    shutil.rmtree(to, ignore_errors=True)
    subprocess.run([snapring, "restore", "--dest", url, "latest", "--to", to], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    harness.check_same(src, to, what)
    shutil.rmtree(to)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=harness.PRESETS)
    ap.add_argument("--delay-us", type=int, default=1000, help="latencyfs delay per metadata call; 0: local disk, no FUSE")
    ap.add_argument("--ttl-ms", type=int, default=0,
                    help="latencyfs attribute/entry cache time (0: every call reaches it; NFS caches for seconds)")
    ap.add_argument("--readdirplus", action="store_true", help="latencyfs answers listings with attributes, as NFS does")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=4, help="--jobs per worker; the single-node run gets workers x jobs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--modes", default="single,shards")
    ap.add_argument("--snapring", default=os.path.join(harness.ROOT, "target/release/snapring"))
    ap.add_argument("--latencyfs", default=os.path.join(harness.ROOT, "bench/tools/target/release/latencyfs"))
    ap.add_argument("--work", default="/var/tmp/snapring-shards")
    ap.add_argument("--json", help="append each result here as a JSON line")
    ap.add_argument("--logs", help="keep each process's -v log (stderr) in this directory")
    ap.add_argument("--repository", action="store_true",
                    help="back up into a restic repository (file://, behind the latency layer) instead of a store")
    a = ap.parse_args()
    under = os.path.join(a.work, "data")
    mnt = os.path.join(a.work, "mnt")
    shutil.rmtree(under, ignore_errors=True)
    os.makedirs(under)
    fuse = None
    # latencyfs keeps its counts of delayed calls here (read before and after each run).
    stats_file = os.path.join(a.work, "latencyfs-stats.json")
    if a.delay_us:
        subprocess.run(["fusermount3", "-uz", mnt], stderr=subprocess.DEVNULL)
        os.makedirs(mnt, exist_ok=True)
        fuse = subprocess.Popen([a.latencyfs, "--delay-us", str(a.delay_us), "--threads", "128",
                                 "--ttl-ms", str(a.ttl_ms), *(["--readdirplus"] if a.readdirplus else []),
                                 "--stats", stats_file, under, mnt])
        for _ in range(100):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        else:
            raise SystemExit("latencyfs did not mount")
    view = mnt if fuse else under
    env = dict(os.environ, SNAPRING_CATALOG="off", SNAPRING_PASSWORD="bench")
    results = {}
    cpus = {}
    try:
        nfiles = harness.gen(os.path.join(under, "src"), a.preset)
        print(f"{a.preset}: {nfiles} files", file=sys.stderr)
        # Past snapring's 2 s window for entries changed just before a walk ("racy").
        time.sleep(2.1)
        src = os.path.join(view, "src")
        for r in range(a.runs):
            for mode in a.modes.split(","):
                dst_u = os.path.join(under, "dst-" + mode)
                shutil.rmtree(dst_u, ignore_errors=True)
                dst = os.path.join(view, "dst-" + mode)
                if a.repository:
                    dst = "file://" + dst
                    subprocess.run([a.snapring, "init", "--dest", dst], env=env, check=True,
                                   stdout=subprocess.DEVNULL)
                base = [a.snapring, "backup", "--source", src, "--dest", dst, "--label", "snap",
                        "--retain", "3"] + ([] if a.repository else ["--no-progress"]) + (["-v"] if a.logs else [])
                for case in ["full", "incr"]:
                    if mode == "single":
                        cmds = [base + ["--jobs", str(a.workers * a.jobs)]]
                    else:
                        cmds = [base + ["--jobs", str(a.jobs), "--shard", f"{i}/{a.workers}",
                                        "--run-id", f"{case}-{r}"] for i in range(a.workers)]
                    harness.drop_caches()
                    logs = None
                    if a.logs:
                        os.makedirs(a.logs, exist_ok=True)
                        logs = os.path.join(a.logs, f"{mode}-{case}-{r}")
                    fs0 = proc_cpu(fuse.pid if fuse else None)
                    calls0 = fs_calls(stats_file) if fuse else {}
                    started = time.time()
                    wall, cpu = timed(cmds, env, logs)
                    ended = time.time()
                    fs_cpu = proc_cpu(fuse.pid if fuse else None) - fs0
                    calls = {}
                    if fuse:
                        time.sleep(0.2)  # latencyfs rewrites its stats within 50 ms
                        calls = {k: v - calls0.get(k, 0) for k, v in fs_calls(stats_file).items()
                                 if v - calls0.get(k, 0)}
                    if a.repository:
                        check_restored(a.snapring, env, dst, os.path.join(under, "src"), a.work, f"{mode} {case}")
                    else:
                        harness.check_same(os.path.join(under, "src"), os.path.join(dst_u, "snap.0"),
                                           f"{mode} {case}")
                    if case == "incr" and not a.repository:
                        harness.check_shared(os.path.join(dst_u, "snap.1"), os.path.join(dst_u, "snap.0"),
                                             f"{mode} {case}")
                    split = where_time_went(logs, a.workers) if logs and mode == "shards" else None
                    if split:
                        print(f"  {mode} {case}: start {split['start']:.2f} s, units {split['units']:.2f} s "
                              f"(lanes busy {100 * split['lanes_busy']:.0f}%), finalize {split['finalize']:.2f} s",
                              file=sys.stderr)
                    results.setdefault((mode, case), []).append(wall)
                    cpus.setdefault((mode, case), []).append((cpu, fs_cpu))
                    print(f"run {r + 1}/{a.runs}: {mode} {case} {wall:.1f} s, CPU snapring {cpu:.1f} s, "
                          f"latencyfs {fs_cpu:.1f} s, calls {harness.delayed(calls)} "
                          f"({', '.join(f'{k} {v}' for k, v in sorted(calls.items()))})", file=sys.stderr)
                    if a.json:
                        with open(a.json, "a") as f:
                            f.write(json.dumps(dict(mode=mode, case=case, run=r, wall=wall, delay_us=a.delay_us,
                                                    workers=a.workers, jobs=a.jobs, preset=a.preset,
                                                    ttl_ms=a.ttl_ms, readdirplus=a.readdirplus,
                                                    cpu=cpu, latencyfs_cpu=fs_cpu, calls=calls, delayed=harness.delayed(calls),
                                                    started=started, ended=ended)) + "\n")
    finally:
        if fuse:
            subprocess.run(["fusermount3", "-u", mnt])
            fuse.wait()
    print(f"{'mode':8} {'case':5} {'median s':>9} {'CPU s':>6} {'fs CPU s':>8}  runs")
    for (mode, case), v in results.items():
        c = cpus[(mode, case)]
        print(f"{mode:8} {case:5} {statistics.median(v):9.1f} {statistics.median(x for x, _ in c):6.1f} "
              f"{statistics.median(y for _, y in c):8.1f}  {', '.join(f'{x:.1f}' for x in v)}")


if __name__ == "__main__":
    main()
