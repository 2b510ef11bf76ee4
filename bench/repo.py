#!/usr/bin/env python3
"""snapring against restic, both backing up into a restic repository on the same local
S3 server (issue 14's "What it must show"; results in docs/performance.md).

    flock /work/lead/bench.lock python3 bench/repo.py --preset small --latency-us 1000 --runs 3

Each run, for each tool: a fresh copy of the generated `small` tree (bench/run.py gen)
behind latencyfs (1 ms per metadata call by default), a fresh repository under its own
prefix of one bucket (created off the clock: `snapring init`, `restic init`), then timed
under GNU time (wall, CPU, peak RSS): the full backup, a 1% mutation (bench/run.py
mutate), and the incremental backup (restic finds its parent itself; each tool keeps its
own local cache, fresh for every run, as a new user's). The page cache is dropped before
each timed step. One S3 server (bench/tools s3server: s3s-fs, what the tests run
in-process) serves every run from local disk, outside the measured processes; it counts
the requests it serves. Bytes stored are the repository's files on the server's disk.
Every snapring snapshot is checked: restored by snapring and compared with the source
(the full one in the first run, every incremental); `restic check` runs once on a
repository snapring wrote.
Needs root (FUSE, dropping the page cache), restic, and release builds of snapring and
bench/tools (built here unless --no-build).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as harness  # noqa: E402

KEY, SECRET, BUCKET, PASSWORD = "bench", "bench-secret", "bench", "bench password"


class Server:
    """The s3server on a free port of 127.0.0.1, serving `root` (bucket `bench`)."""

    def __init__(self, work):
        self.root = os.path.join(work, "s3")
        shutil.rmtree(self.root, ignore_errors=True)
        os.makedirs(os.path.join(self.root, BUCKET))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.stats = os.path.join(work, "s3-stats.json")
        if os.path.exists(self.stats):
            os.unlink(self.stats)
        self.proc = subprocess.Popen([harness.tools_bin("s3server"), "--root", self.root, "--port", str(self.port),
                                      "--access-key", KEY, "--secret-key", SECRET, "--stats", self.stats])
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit("s3server did not start")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def counts(self):
        time.sleep(0.2)
        try:
            with open(self.stats) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def stored(self, prefix):
        """Bytes of the repository's files under `prefix` (locks are gone after a run)."""
        top = os.path.join(self.root, BUCKET, prefix)
        return sum(os.lstat(os.path.join(dp, n)).st_size for dp, _, fs in os.walk(top) for n in fs)

    def close(self):
        self.proc.terminate()
        self.proc.wait()


def env_for(server, cache):
    e = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
             AWS_ENDPOINT_URL=server.endpoint, RESTIC_PASSWORD=PASSWORD, SNAPRING_PASSWORD=PASSWORD,
             SNAPRING_CATALOG="off", XDG_CACHE_HOME=cache, RESTIC_CACHE_DIR=os.path.join(cache, "restic"))
    e.pop("RESTIC_REPOSITORY", None)
    return e


def commands(tool, server, prefix, src):
    """(init, backup) commands of `tool` for the repository at `prefix`."""
    if tool == "snapring":
        dest = f"s3://{BUCKET}/{prefix}"
        sr = harness.snapring_bin()
        return ([sr, "init", "--dest", dest],
                [sr, "backup", "--source", src, "--dest", dest, "--label", "bench", "--no-progress"])
    repo = f"s3:{server.endpoint}/{BUCKET}/{prefix}"
    return (["restic", "-r", repo, "init"], ["restic", "-r", repo, "backup", "--quiet", src])


def step(server, fs, cmd, env):
    """Timed run of `cmd`: (wall, cpu, peak RSS KiB, latencyfs calls, S3 requests)."""
    before = server.counts()
    harness.drop_caches()
    wall, cpu, rss, calls = harness.timed([cmd], env=env, fs=fs)
    after = server.counts()
    reqs = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}
    return wall, cpu, rss, calls, reqs


def check_restore(server, env, prefix, src_u, work, what):
    """snapring restores the repository's latest snapshot; it must equal the source."""
    out = os.path.join(work, "restored")
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([harness.snapring_bin(), "restore", "--dest", f"s3://{BUCKET}/{prefix}", "latest", "--to", out,
                    "--no-progress"], env=env, check=True, stdout=subprocess.DEVNULL)
    harness.check_same(src_u, out, what)
    shutil.rmtree(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=harness.PRESETS)
    ap.add_argument("--latency-us", type=int, default=1000)
    ap.add_argument("--ttl-ms", type=int, default=0,
                    help="latencyfs attribute/entry cache time (0: every call reaches it), as run.py")
    ap.add_argument("--readdirplus", action="store_true",
                    help="latencyfs lists directories with READDIRPLUS, as an NFS client does")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tools", default="snapring,restic")
    ap.add_argument("--work", default="/var/tmp/snapring-repobench")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--keep", metavar="DIR",
                    help="move each repository here (DIR/<tool>-<run>, a local restic repository) instead of "
                         "deleting it, to inspect its trees with `restic -r DIR/<tool>-<run> cat blob ID`")
    a = ap.parse_args()
    if not a.no_build:
        for manifest in ["Cargo.toml", "bench/tools/Cargo.toml"]:
            harness.sh("cargo", "build", "--release", "--quiet", "-j", "2", "--manifest-path",
                       os.path.join(harness.ROOT, manifest))
    load = [os.getloadavg()]
    env = harness.Env(a.work, a.latency_us, 0, 64, a.ttl_ms, a.readdirplus)
    server = Server(a.work)
    results = {}
    try:
        src_v, src_u = env.path("src")
        nfiles = harness.gen(src_u, a.preset)
        entries = 1 + sum(len(d) + len(f) for _, d, f in os.walk(src_u))
        source_bytes = sum(os.lstat(os.path.join(dp, n)).st_size for dp, _, fs in os.walk(src_u) for n in fs)
        pristine = os.path.join(env.under, "pristine")
        harness.sh("cp", "-a", src_u, pristine)
        settle_access_times(pristine)
        checked = False
        for r in range(a.runs):
            for tool in a.tools.split(","):
                shutil.rmtree(src_u)
                harness.sh("cp", "-a", pristine, src_u)
                # Not every file just created (snapring re-reads "racy" files, see run.py).
                time.sleep(2.1)
                prefix = f"{tool}-{r + 1}"
                cache = os.path.join(a.work, "cache")
                shutil.rmtree(cache, ignore_errors=True)
                e = env_for(server, cache)
                init, backup = commands(tool, server, prefix, src_v)
                subprocess.run(init, env=e, check=True, stdout=subprocess.DEVNULL)
                base = server.stored(prefix)
                res = step(server, env, backup, e)
                full_bytes = server.stored(prefix) - base
                results.setdefault(("full", tool), []).append(res + (full_bytes,))
                report(r, "full", tool, res, full_bytes, entries)
                if tool == "snapring" and r == 0:
                    check_restore(server, e, prefix, src_u, a.work, "snapring full")
                harness.mutate(src_u, 0.01)
                res = step(server, env, backup, e)
                incr_bytes = server.stored(prefix) - base - full_bytes
                results.setdefault(("incr", tool), []).append(res + (incr_bytes,))
                report(r, "incr", tool, res, incr_bytes, entries)
                if tool == "snapring":
                    check_restore(server, e, prefix, src_u, a.work, "snapring incremental")
                    if not checked:
                        repo = f"s3:{server.endpoint}/{BUCKET}/{prefix}"
                        subprocess.run(["restic", "-r", repo, "--no-cache", "check"], env=e, check=True,
                                       stdout=subprocess.DEVNULL)
                        checked = True
                # The repository stays for the byte counts above only (or --keep).
                if a.keep:
                    os.makedirs(a.keep, exist_ok=True)
                    shutil.rmtree(os.path.join(a.keep, prefix), ignore_errors=True)
                    shutil.move(os.path.join(server.root, BUCKET, prefix), os.path.join(a.keep, prefix))
                else:
                    shutil.rmtree(os.path.join(server.root, BUCKET, prefix))
        load.append(os.getloadavg())
    finally:
        server.close()
        env.close()
        shutil.rmtree(env.under, ignore_errors=True)
    summary(results, a, nfiles, entries, source_bytes, load)


def settle_access_times(root):
    """Reads every entry under `root` once. Under relatime the first read moves an access
    time that is not after the mtime (every generated file's), later ones do not; and
    `cp -a` gives the copy the access time from before its own read. Without this the
    first copy (run 1's first tool) had the generated access times, whole seconds, and
    every later copy those of the first `cp`, with nanoseconds: 10 more bytes per node in
    a tool's trees that records access times, so run 1 favoured whichever tool ran first."""
    for dp, ds, fs in os.walk(root):
        for n in ds + fs:
            p = os.path.join(dp, n)
            if os.path.islink(p):
                os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    while f.read(1 << 20):
                        pass


def report(r, case, tool, res, stored, entries):
    calls = sum(v for k, v in res[3].items() if k != "lookup_negative")
    print(f"run {r + 1}: {case} {tool}: {res[0]:.2f} s wall, {res[1]:.2f} s cpu, {res[2] / 1024:.1f} MiB, "
          f"{calls / entries:.2f} fs requests/entry, S3 {res[4]}, stored {stored / 1e6:.1f} MB", file=sys.stderr)


def summary(results, a, nfiles, entries, source_bytes, load):
    print(f"\npreset {a.preset} ({nfiles} files, {entries} entries, {source_bytes / 1e6:.0f} MB), latency "
          f"{a.latency_us} us per metadata call, ttl {a.ttl_ms} ms{', READDIRPLUS' if a.readdirplus else ''}, medians of {a.runs} runs; load average before "
          f"{' '.join(f'{x:.2f}' for x in load[0])}, after {' '.join(f'{x:.2f}' for x in load[-1])}")
    out = []
    for case in ["full", "incr"]:
        rows = {t: v for (c, t), v in results.items() if c == case}
        if not rows:
            continue
        med = {t: [statistics.median(x[i] for x in v) for i in (0, 1, 2, 5)] for t, v in rows.items()}
        base = med.get("snapring")
        print(f"\n{case:5} {'tool':9} {'wall s':>8} {'cpu s':>8} {'peak RSS':>10} {'stored MB':>10} "
              f"{'S3 requests (median)':>30} {'snapring is':>14}")
        for t, (w, u, rss, stored) in sorted(med.items(), key=lambda x: x[1][0]):
            reqs = {k: statistics.median(x[4].get(k, 0) for x in rows[t]) for k in {k for x in rows[t] for k in x[4]}}
            ratio = "" if t == "snapring" or not base else f"{w / base[0]:.1f}x faster"
            print(f"{case:5} {t:9} {w:8.2f} {u:8.2f} {rss / 1024:8.1f}MiB {stored / 1e6:10.1f} "
                  f"{json.dumps(reqs, sort_keys=True):>30} {ratio:>14}")
            out.append(dict(case=case, tool=t, wall=w, cpu=u, rss_kib=rss, stored_bytes=stored, s3_requests=reqs,
                            runs=[list(x) for x in rows[t]]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(preset=a.preset, files=nfiles, entries=entries, source_bytes=source_bytes,
                           latency_us=a.latency_us, ttl_ms=a.ttl_ms, readdirplus=a.readdirplus, runs=a.runs,
                           load=load, results=out), f, indent=1)


if __name__ == "__main__":
    main()
