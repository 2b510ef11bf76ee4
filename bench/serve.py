#!/usr/bin/env python3
"""Measures `snapring serve` (docs/monitoring.md): the overview's render time with
10,000 runs in the catalog, the cost of a /metrics scrape, and serve's idle RSS.

    python3 bench/serve.py [--runs 10000] [--jobs 10] [--debug] [--bin SNAPRING]
    python3 bench/serve.py --latencyfs LATENCYFS [--delay-us 1000] [--ttl-ms 0]
                           [--jobs 20] [--records 300] [--scrapes 10] [--bin SNAPRING]

It makes real runs of each job (a small source each), then copies their catalog rows
under new ids and start times until the catalog holds --runs runs (a copy of a real row
is a real row; running 10,000 backups would only take longer). Then it starts the
release binary's `serve` on a free port, times 200 requests of each page after 5 to
warm up (median and p95, measured by the client over loopback, so they include HTTP),
then 50 of the overview and /metrics each right after a write to the catalog (nothing
cached), and reads VmRSS from /proc after the requests and after 2 s idle. Not part of the test
suite; it builds snapring in release mode (or debug with --debug), or uses --bin.

With --latencyfs, the stores sit behind that FUSE latency layer (--delay-us per call,
--ttl-ms its attribute and entry cache, 0 for none: an NFS mount with `noac`), each with
--records run records (copies of its real runs' records under older ids, as months of
nightly runs leave them), and it times --scrapes requests of /metrics, each with
latencyfs's count of delayed calls during it (its `--stats`), after the stores have been
quiet for 3 s (serve keeps what it read of a store only once its times are 2 s old).
"""

import json
import random

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(profile):
    args = ["cargo", "build", "--locked"] + (["--release"] if profile == "release" else [])
    subprocess.run(args, cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, profile, "snapring")


def make_jobs(bin_, work, jobs, dest_root=None):
    """A config of `jobs` jobs, each run twice for real; returns (config, catalog).
    Their stores are `<dest_root>/dest<j>` (`work` by default)."""
    dest_root = dest_root or work
    catalog = os.path.join(work, "catalog.db")
    cfg = os.path.join(work, "snapring.toml")
    with open(cfg, "w") as f:
        for j in range(jobs):
            src = os.path.join(work, f"src{j}")
            for d in range(10):
                os.makedirs(os.path.join(src, f"d{d}"), exist_ok=True)
                for i in range(10):
                    with open(os.path.join(src, f"d{d}", f"f{i}"), "w") as g:
                        g.write(f"{j} {d} {i}\n" * 100)
            f.write(f'[job.job{j}]\nsource = "{src}"\ndest = "{dest_root}/dest{j}"\n'
                    f'schedule = "0 2 * * *"\n\n')
    env = dict(os.environ, SNAPRING_CATALOG=catalog)
    for j in range(jobs):
        for _ in range(2):
            subprocess.run([bin_, "run", f"job{j}", "--config", cfg, "--json"], env=env,
                           check=True, stdout=subprocess.DEVNULL)
    return cfg, catalog


def fill(catalog, runs):
    """Copies rows until the catalog has `runs` runs, spread one per hour back in time."""
    db = sqlite3.connect(catalog)
    have = db.execute("SELECT count(*) FROM runs").fetchone()[0]
    cols = [r[1] for r in db.execute("PRAGMA table_info(runs)")]
    rows = db.execute(f"SELECT {', '.join(cols)} FROM runs").fetchall()
    i_id, i_start = cols.index("id"), cols.index("started_at")
    base = time.time() - 3600
    n = 0
    while have + n < runs:
        row = list(rows[n % len(rows)])
        row[i_id] = f"bench-{n:06d}-{row[i_id]}"
        t = base - 3600 * (n // len(rows) + 1)
        row[i_start] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))
        db.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                   row)
        n += 1
    db.commit()
    return db.execute("SELECT count(*) FROM runs").fetchone()[0]


def add_records(stores, records):
    """Copies each store's newest run record under older ids (one a day back) until its
    `.snapring/runs/` holds `records` records."""
    for store in stores:
        runs = os.path.join(store, ".snapring", "runs")
        have = sorted(n for n in os.listdir(runs) if n.endswith(".json"))
        with open(os.path.join(runs, have[-1])) as f:
            rec = json.load(f)
        t0 = time.time() - 86400
        for i in range(records - len(have)):
            t = time.gmtime(t0 - 86400 * i)
            rid = time.strftime("%Y%m%dT%H%M%SZ", t) + "-" + "%08x" % random.getrandbits(32)
            r = dict(rec, id=rid, started_at=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", t),
                     finished_at=time.strftime("%Y-%m-%dT%H:%M:%S.500Z", t))
            with open(os.path.join(runs, rid + ".json"), "w") as f:
                json.dump(r, f)


def fs_calls(stats_file):
    """latencyfs's counts of delayed calls by kind so far (`--stats`)."""
    time.sleep(0.2)  # latencyfs rewrites its stats within 50 ms of a change
    try:
        with open(stats_file) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def latency_bench(a, bin_):
    work = tempfile.mkdtemp(prefix="snapring-serve-bench-")
    under, mnt = os.path.join(work, "under"), os.path.join(work, "mnt")
    os.makedirs(under)
    os.makedirs(mnt)
    stats = os.path.join(work, "latencyfs-stats.json")
    fuse = subprocess.Popen([a.latencyfs, "--delay-us", str(a.delay_us), "--threads", "128",
                             "--ttl-ms", str(a.ttl_ms), "--stats", stats, under, mnt])
    try:
        for _ in range(100):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        else:
            raise SystemExit("latencyfs did not mount")
        cfg, catalog = make_jobs(bin_, work, a.jobs, dest_root=mnt)
        add_records([os.path.join(under, f"dest{j}") for j in range(a.jobs)], a.records)
        total = fill(catalog, a.runs)
        time.sleep(3)
        p = subprocess.Popen([bin_, "--catalog", catalog, "serve", "--config", cfg,
                              "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
        try:
            addr = p.stdout.readline().strip().rsplit("http://", 1)[1].rstrip("/")
            url = f"http://{addr}/metrics"
            print(f"{a.jobs} stores behind latencyfs {a.delay_us} us, TTL {a.ttl_ms} ms, "
                  f"{a.records} run records each; catalog: {total} runs")
            for _ in range(2):
                urllib.request.urlopen(url).read()
            times, counts = [], []
            for _ in range(a.scrapes):
                c0 = fs_calls(stats)
                t0 = time.perf_counter()
                urllib.request.urlopen(url).read()
                times.append(time.perf_counter() - t0)
                c1 = fs_calls(stats)
                d = {k: v - c0.get(k, 0) for k, v in c1.items() if v - c0.get(k, 0)}
                counts.append(d)
                print(f"GET /metrics {times[-1] * 1e3:8.1f} ms  {sum(d.values()):6d} delayed calls  "
                      f"{json.dumps(d, sort_keys=True)}")
            print(f"median: {statistics.median(times) * 1e3:.1f} ms, "
                  f"{statistics.median(sum(d.values()) for d in counts)} delayed calls a request")
        finally:
            p.terminate()
            p.wait()
    finally:
        subprocess.run(["fusermount3", "-u", mnt])
        fuse.wait()
        shutil.rmtree(work)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def timed(url, n=200, warm=5):
    for _ in range(warm):
        urllib.request.urlopen(url).read()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        urllib.request.urlopen(url).read()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return statistics.median(times), times[int(0.95 * len(times)) - 1]


def timed_after_writes(url, catalog, n=50):
    """Each request right after a commit to the catalog (so nothing is cached)."""
    db = sqlite3.connect(catalog)
    times = []
    for i in range(n):
        db.execute("INSERT INTO events (at, job, kind, message) VALUES (?, ?, ?, ?)",
                   ("2026-01-01T00:00:00Z", "bench", "bench", str(i)))
        db.commit()
        t0 = time.perf_counter()
        urllib.request.urlopen(url).read()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return statistics.median(times), times[int(0.95 * len(times)) - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--debug", action="store_true")
    ap.add_argument("--bin", help="this snapring binary instead of a build")
    ap.add_argument("--latencyfs", help="stores behind this latencyfs binary (see above)")
    ap.add_argument("--delay-us", type=int, default=1000)
    ap.add_argument("--ttl-ms", type=int, default=0)
    ap.add_argument("--records", type=int, default=300)
    ap.add_argument("--scrapes", type=int, default=10)
    a = ap.parse_args()
    bin_ = a.bin or build("debug" if a.debug else "release")
    if a.latencyfs:
        return latency_bench(a, bin_)
    work = tempfile.mkdtemp(prefix="snapring-serve-bench-")
    try:
        cfg, catalog = make_jobs(bin_, work, a.jobs)
        total = fill(catalog, a.runs)
        p = subprocess.Popen([bin_, "--catalog", catalog, "serve", "--config", cfg,
                              "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
        try:
            addr = p.stdout.readline().strip().rsplit("http://", 1)[1].rstrip("/")
            time.sleep(0.5)
            start_rss = rss_kib(p.pid)
            print(f"catalog: {total} runs over {a.jobs} jobs; serve started at {start_rss} KiB RSS")
            for path in ["/", "/metrics", "/job/job0", "/api/jobs"]:
                med, p95 = timed(f"http://{addr}{path}")
                print(f"GET {path:12} median {med:7.2f} ms   p95 {p95:7.2f} ms")
            for path in ["/", "/metrics"]:
                med, p95 = timed_after_writes(f"http://{addr}{path}", catalog)
                print(f"GET {path:12} median {med:7.2f} ms   p95 {p95:7.2f} ms  (after a catalog write)")
            time.sleep(2)
            print(f"idle RSS after the requests: {rss_kib(p.pid)} KiB")
        finally:
            p.terminate()
            p.wait()
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
