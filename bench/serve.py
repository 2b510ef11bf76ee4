#!/usr/bin/env python3
"""Measures `snapring serve` (docs/monitoring.md): the overview's render time with
10,000 runs in the catalog, the cost of a /metrics scrape, and serve's idle RSS.

    python3 bench/serve.py [--runs 10000] [--jobs 10] [--debug]

It makes real runs of each job (a small source each), then copies their catalog rows
under new ids and start times until the catalog holds --runs runs (a copy of a real row
is a real row; running 10,000 backups would only take longer). Then it starts the
release binary's `serve` on a free port, times 200 requests of each page after 5 to
warm up (median and p95, measured by the client over loopback, so they include HTTP),
then 50 of the overview and /metrics each right after a write to the catalog (nothing
cached), and reads VmRSS from /proc after the requests and after 2 s idle. Not part of the test
suite; it builds snapring in release mode (or debug with --debug).
"""

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


def make_jobs(bin_, work, jobs):
    """A config of `jobs` jobs, each run twice for real; returns (config, catalog)."""
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
            f.write(f'[job.job{j}]\nsource = "{src}"\ndest = "{work}/dest{j}"\n'
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
    a = ap.parse_args()
    bin_ = build("debug" if a.debug else "release")
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
