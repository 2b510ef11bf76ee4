#!/usr/bin/env python3
"""snapring benchmark: times snapring against rsync --link-dest, rsnapshot-style
`cp -al` + rsync, fpsync (2 and 8 workers) and a parallel floor, on the same
deterministic data, optionally behind a latency-injecting FUSE layer (latencyfs), and
checks every result. See docs/performance.md.

    sudo python3 bench/run.py --preset small --latency-us 1000 --runs 3

Subcommands for pieces: `gen DIR --preset P`, `mutate DIR --fraction F --seed S`, and
`calls [--ttl-ms N] [--readdirplus]`: the delayed calls the kernel makes for each system
call of an unchanged file (lstat of the source, linkat from the previous snapshot).
Needs root (loop-mounted ext4, FUSE), rsync, fpsync (fpart), and builds snapring and
bench/tools in release mode.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Cargo profile of the binaries: "release" for measurements; "debug" for CI's smoke run
# (`--debug`), which checks that the harness works, not how fast anything is.
PROFILE = "release"
SR_JOBS = []
# --baseline: an earlier snapring binary, timed as the tool "snapring-base" beside the
# current one in the same run (a refactor's before/after, interleaved run by run).
BASELINE = None
ENTRIES = 1
PRESETS = {
    # name: (files, mean files per directory, depth)
    "tiny": (2_000, 40, 3),
    "small": (20_000, 60, 4),
    "medium": (100_000, 80, 4),
    "large": (500_000, 100, 5),
    "xl": (1_000_000, 100, 5),
}
ODD = ["with space", "new\nline", "quote\"'", "tab\there", "-dash", "%41", "ünïcødé"]


# ---------------------------------------------------------------- dataset generator

def gen(root, preset, seed=1):
    """Deterministic tree: realistic depth and fan-out, 0-16 KiB files plus a few large
    ones, odd names (one not UTF-8), symlinks, hard links, one sparse file."""
    files, per_dir, depth = PRESETS[preset]
    rnd = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    dirs = [root]
    made = 0
    ndirs = max(1, files // per_dir)
    # Directories: a random tree, each new one under an existing one not too deep.
    level = {root: 0}
    for i in range(ndirs):
        parent = rnd.choice([d for d in dirs[-200:] if level[d] < depth] or [root])
        d = os.path.join(parent, f"d{i:05d}")
        os.mkdir(d)
        level[d] = level[parent] + 1
        dirs.append(d)
    big = {rnd.randrange(files) for _ in range(max(1, files // 5000))}
    while made < files:
        d = rnd.choice(dirs)
        name = f"f{made:07d}"
        if made % 997 == 0:
            name += " " + ODD[(made // 997) % len(ODD)]
        path = os.path.join(d, name)
        size = rnd.randrange(4 << 20, 32 << 20) if made in big else int(rnd.expovariate(1 / 4096)) % (16 << 10)
        with open(path, "wb") as f:
            f.write(rnd.randbytes(min(size, 1 << 16)) * (size // (1 << 16)) + rnd.randbytes(size % (1 << 16)))
        t = 1_600_000_000 + rnd.randrange(100_000_000)
        os.utime(path, ns=(t * 10**9, t * 10**9 + rnd.randrange(10**9)))
        made += 1
    # Non-UTF-8 name, symlinks, hard links, a sparse file.
    with open(os.path.join(os.fsencode(root), b"latin1-\xe9t\xe9"), "wb") as f:
        f.write(b"odd name")
    all_files = sorted(os.path.join(dp, n) for dp, _, fs in os.walk(root) for n in fs)
    for i in range(max(1, files // 1000)):
        target = rnd.choice(all_files)
        os.symlink(os.path.relpath(target, root), os.path.join(rnd.choice(dirs), f"link{i}"))
        os.link(rnd.choice(all_files), os.path.join(rnd.choice(dirs), f"hard{i}"))
    with open(os.path.join(root, "sparse.img"), "wb") as f:
        f.truncate(256 << 20)
        f.seek(128 << 20)
        f.write(b"x" * 4096)
    return files


def mutate(root, fraction=0.01, seed=2):
    """Deterministic change of `fraction` of the files: modified, touched, added,
    deleted, chmod-ed (a fifth each), and one directory renamed."""
    rnd = random.Random(seed)
    files = sorted(os.path.join(dp, n) for dp, _, fs in os.walk(root) for n in fs
                   if not os.path.islink(os.path.join(dp, n)) and "sparse" not in n)
    n = max(5, int(len(files) * fraction))
    pick = rnd.sample(files, n)
    for i, p in enumerate(pick):
        kind = i % 5
        if kind == 0:
            with open(p, "ab") as f:
                f.write(rnd.randbytes(100))
        elif kind == 1:
            os.utime(p)
        elif kind == 2:
            with open(p + ".new", "wb") as f:
                f.write(rnd.randbytes(rnd.randrange(16 << 10)))
        elif kind == 3:
            os.unlink(p)
        else:
            os.chmod(p, 0o600)
    dirs = sorted(dp for dp, ds, _ in os.walk(root) if dp != root)
    d = rnd.choice(dirs)
    os.rename(d, d + "-renamed")
    return n


# ---------------------------------------------------------------- measurement

def run(cmd, **kw):
    """Runs cmd under GNU time; returns (wall s, cpu s, peak RSS KiB). (wait4's maxrss
    would include this Python process's memory, inherited at fork.)"""
    import tempfile
    with tempfile.NamedTemporaryFile("r") as tf, tempfile.TemporaryFile() as errf:
        p = subprocess.run(["/usr/bin/time", "-q", "-f", "%e %U %S %M", "-o", tf.name] + cmd,
                           stdout=subprocess.DEVNULL, stderr=errf, **kw)
        errf.seek(0)
        err = errf.read().decode(errors="replace")
        fields = tf.read().split()
    if p.returncode not in (0, 24):  # rsync 24: vanished files
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}): {err[-2000:]}")
    wall, user, sys_, rss = fields[-4:]
    return float(wall), float(user) + float(sys_), int(rss)


def describe(root):
    """(path -> (type, size, mode, uid, mtime_ns, content hash)) for checks."""
    out = {}
    for dp, ds, fs in os.walk(root):
        for n in ds + fs:
            p = os.path.join(dp, n)
            st = os.lstat(p)
            h = None
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    h = hashlib.blake2b(f.read(), digest_size=16).hexdigest()
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size if h else 0, st.st_uid,
                                             st.st_mtime_ns if not os.path.isdir(p) else 0, h)
    return out


def check_same(src, dst, what):
    a, b = describe(src), describe(dst)
    if a != b:
        diff = [k for k in set(a) | set(b) if a.get(k) != b.get(k)][:5]
        raise SystemExit(f"{what}: result differs from the source: {diff}")


def check_shared(prev, new, what):
    """At least 99% of the files `new` has under the same path as `prev` share their inode
    with it (the 1% mutation changes the rest)."""
    shared = total = 0
    for dp, _, fs in os.walk(new):
        for n in fs:
            p = os.path.join(dp, n)
            rel = os.path.relpath(p, new)
            q = os.path.join(prev, rel)
            if os.path.islink(p) or not os.path.exists(q):
                continue
            total += 1
            shared += os.lstat(p).st_ino == os.lstat(q).st_ino
    if total and shared < total * 0.99:
        raise SystemExit(f"{what}: only {shared} of {total} unchanged files share an inode")
    return shared, total


# ---------------------------------------------------------------- environment

def sh(*cmd):
    subprocess.run(cmd, check=True)


class Env:
    def __init__(self, work, latency_us, image_gb, jobs, ttl_ms=0, readdirplus=False):
        self.work, self.latency_us, self.jobs = work, latency_us, jobs
        self.disk = os.path.join(work, "disk")
        self.mnt = os.path.join(work, "mnt")
        self.fuse = None
        os.makedirs(self.disk, exist_ok=True)
        if image_gb:
            img = os.path.join(work, "ext4.img")
            if not os.path.ismount(self.disk):
                if os.path.exists(img):
                    os.unlink(img)
                sh("truncate", "-s", f"{image_gb}G", img)
                sh("mkfs.ext4", "-q", "-F", "-N", str(4_000_000), img)
                sh("mount", "-o", "loop", img, self.disk)
        self.under = os.path.join(self.disk, "data")
        shutil.rmtree(self.under, ignore_errors=True)
        os.makedirs(self.under)
        if latency_us:
            # A mount left by an interrupted run: take it down first.
            subprocess.run(["fusermount3", "-uz", self.mnt], stderr=subprocess.DEVNULL)
            os.makedirs(self.mnt, exist_ok=True)
            self.stats = os.path.join(work, "latencyfs-stats.json")
            self.fuse = subprocess.Popen([tools_bin("latencyfs"),
                                          "--delay-us", str(latency_us), "--threads", "128",
                                          "--ttl-ms", str(ttl_ms), "--stats", self.stats,
                                          *(["--readdirplus"] if readdirplus else []),
                                          self.under, self.mnt])
            for _ in range(100):
                if os.path.ismount(self.mnt):
                    break
                time.sleep(0.05)
            else:
                raise SystemExit("latencyfs did not mount")
            self.view = self.mnt
        else:
            self.view = self.under

    def counts(self):
        """latencyfs's delayed calls so far, by kind ({} without the layer); waits for
        its stats file to catch up (it is rewritten within 50 ms of a change)."""
        if not self.fuse:
            return {}
        time.sleep(0.2)
        try:
            with open(self.stats) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def path(self, *p):
        """(path seen by the tools, path on the underlying disk for checks)"""
        return os.path.join(self.view, *p), os.path.join(self.under, *p)

    def close(self):
        if self.fuse:
            subprocess.run(["fusermount3", "-u", self.mnt])
            self.fuse.wait()
        if os.path.ismount(self.disk):
            subprocess.run(["umount", self.disk])


def drop_caches():
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    except OSError as e:
        # Not root, or a container with a read-only /proc/sys: runs start warm.
        if not getattr(drop_caches, "warned", False):
            print(f"warning: cannot drop the page cache ({e}); timings are warm-cache", file=sys.stderr)
            drop_caches.warned = True


# ---------------------------------------------------------------- the tools

def target_dir(crate):
    """Where cargo puts the binaries of `crate` ("" the main one, "bench/tools"): under
    $CARGO_TARGET_DIR when set (as cargo itself does), else the crate's own target/."""
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, crate, "target")


def snapring_bin():
    return os.path.join(target_dir(""), PROFILE, "snapring")


def tools_bin(name):
    """A binary of bench/tools (latencyfs, floor, s3server)."""
    return os.path.join(target_dir("bench/tools"), PROFILE, name)


def tools(env, jobs, nfiles):
    sr = snapring_bin()
    # fpsync: partitions of files/(4 x workers), so every worker has several to take
    # (its default, 2,000 files per partition, would leave workers idle on small sets).
    part = lambda n: str(max(100, nfiles // (4 * n)))
    floor = tools_bin("floor")
    env_sr = dict(os.environ, SNAPRING_CATALOG="off")
    # Each tool: full(src, dst_root) / incr(src, dst_root) build <dst_root>/snap.0 from
    # snap.1; returns the commands to run (timed as one).
    return {
        "snapring": dict(
            full=lambda s, d: [[sr, "backup", "--source", s, "--dest", d, "--label", "snap", "--retain", "3", *SR_JOBS, "--no-progress"]],
            incr=lambda s, d: [[sr, "backup", "--source", s, "--dest", d, "--label", "snap", "--retain", "3", *SR_JOBS, "--no-progress"]],
            env=env_sr),
        "snapring-base": dict(
            full=lambda s, d: [[BASELINE, "backup", "--source", s, "--dest", d, "--label", "snap", "--retain", "3", *SR_JOBS, "--no-progress"]],
            incr=lambda s, d: [[BASELINE, "backup", "--source", s, "--dest", d, "--label", "snap", "--retain", "3", *SR_JOBS, "--no-progress"]],
            env=env_sr),
        "rsync": dict(
            full=lambda s, d: [["mkdir", "-p", d], ["rsync", "-aH", "--numeric-ids", s + "/", d + "/snap.0/"]],
            incr=lambda s, d: [["mv", d + "/snap.0", d + "/snap.1"],
                               ["rsync", "-aH", "--numeric-ids", "--delete", "--link-dest=" + d + "/snap.1", s + "/", d + "/snap.0/"]]),
        "cp-al+rsync": dict(
            full=lambda s, d: [["mkdir", "-p", d], ["rsync", "-aH", "--numeric-ids", s + "/", d + "/snap.0/"]],
            incr=lambda s, d: [["mv", d + "/snap.0", d + "/snap.1"], ["cp", "-al", d + "/snap.1", d + "/snap.0"],
                               ["rsync", "-aH", "--numeric-ids", "--delete", s + "/", d + "/snap.0/"]]),
        "fpsync-2": dict(
            full=lambda s, d: [["mkdir", "-p", d + "/snap.0"], ["fpsync", "-n", "2", "-f", part(2), "-o", "-lptgoDH --numeric-ids", s + "/", d + "/snap.0/"]],
            incr=lambda s, d: [["mv", d + "/snap.0", d + "/snap.1"], ["mkdir", d + "/snap.0"],
                               ["fpsync", "-n", "2", "-f", part(2), "-o", "-lptgoDH --numeric-ids --link-dest=" + d + "/snap.1", s + "/", d + "/snap.0/"]]),
        "fpsync-8": dict(
            full=lambda s, d: [["mkdir", "-p", d + "/snap.0"], ["fpsync", "-n", "8", "-f", part(8), "-o", "-lptgoDH --numeric-ids", s + "/", d + "/snap.0/"]],
            incr=lambda s, d: [["mv", d + "/snap.0", d + "/snap.1"], ["mkdir", d + "/snap.0"],
                               ["fpsync", "-n", "8", "-f", part(8), "-o", "-lptgoDH --numeric-ids --link-dest=" + d + "/snap.1", s + "/", d + "/snap.0/"]]),
        "cp-a": dict(
            full=lambda s, d: [["mkdir", "-p", d], ["cp", "-a", s, d + "/snap.0"]],
            incr=None),
        "floor": dict(
            full=None,
            incr=lambda s, d: [["mv", d + "/snap.0", d + "/snap.1"], [floor, "--jobs", str(jobs), s, d + "/snap.1", d + "/snap.0"]]),
    }


def timed(cmds, env=None, fs=None):
    """(wall s, cpu s, peak RSS KiB, delayed calls by kind) of cmds run one after another;
    the calls (from latencyfs, when `fs` has it) are the difference across the run."""
    before = fs.counts() if fs else {}
    wall = cpu = rss = 0
    for c in cmds:
        w, u, r = run(c, env=env)
        wall, cpu, rss = wall + w, cpu + u, max(rss, r)
    after = fs.counts() if fs else {}
    calls = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}
    return wall, cpu, rss, calls


def delayed(calls):
    """The delayed calls of latencyfs's counts by kind: every kind but
    `lookup_negative`, which it counts again beside `lookup` (a subset)."""
    return sum(v for k, v in calls.items() if k != "lookup_negative")


def requests(res):
    """Delayed requests of a result."""
    return delayed(res[3] if len(res) > 3 else {})


def calls(work, ttl_ms, readdirplus, restore=False):
    """Mounts latencyfs (no delay) over a small tree and prints the delayed calls the
    kernel sends for each system call of a hard-link snapshot of one unchanged file:
    list the source and previous directories, lstat the source, linkat the previous
    version into the new snapshot (three files, so a steady state shows). With
    `restore`: the calls of restoring one file instead (open, fstat, create, write,
    owner, mode, times)."""
    env = Env(work, 1, 0, 1, ttl_ms, readdirplus)
    try:
        for d in ["src", "prev", "new"]:
            os.makedirs(os.path.join(env.under, d))
        for i in range(3):
            for d in ["src", "prev"]:
                with open(os.path.join(env.under, d, f"f{i}"), "w") as f:
                    f.write("x")
        fds = {}

        def step(what, fn):
            before = env.counts()
            fn()
            after = env.counts()
            got = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
            print(f"{what:32} {sum(v for k, v in got.items() if k != 'lookup_negative'):3}  {got}")

        for d in ["src", "prev", "new"]:
            step(f"open {d}/", lambda d=d: fds.__setitem__(d, os.open(os.path.join(env.mnt, d), os.O_RDONLY | os.O_DIRECTORY)))
        for d in ["src", "prev"]:
            step(f"list {d}/", lambda d=d: os.listdir(fds[d]))
        if restore:
            # What a restore makes per file: the snapshot's file (prev/) copied into a new
            # directory (new/), fd-relative, with owner, mode and times.
            for i in range(3):
                st = {}
                rd = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOATIME", 0)
                step(f"lstat prev/f{i}", lambda i=i: os.stat(f"f{i}", dir_fd=fds["prev"], follow_symlinks=False))
                step(f"open prev/f{i}", lambda i=i: st.__setitem__("src", os.open(f"f{i}", rd, dir_fd=fds["prev"])))
                step("fstat", lambda: st.__setitem__("st", os.fstat(st["src"])))
                step("flistxattr", lambda: os.listxattr(st["src"]))
                step(f"create new/f{i}", lambda i=i: st.__setitem__("dst", os.open(
                    f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fds["new"])))
                step("read + write", lambda: os.write(st["dst"], os.read(st["src"], 4096)))
                step("fchown", lambda: os.fchown(st["dst"], st["st"].st_uid, st["st"].st_gid))
                step("fchmod", lambda: os.fchmod(st["dst"], 0o640))
                step("futimens", lambda: os.utime(st["dst"], ns=(st["st"].st_mtime_ns, st["st"].st_mtime_ns)))
                step("close both", lambda: (os.close(st["src"]), os.close(st["dst"])))
        for i in range(0 if restore else 3):
            step(f"lstat src/f{i}", lambda i=i: os.stat(f"f{i}", dir_fd=fds["src"], follow_symlinks=False))
            step(f"linkat prev/f{i} new/f{i}", lambda i=i: os.link(f"f{i}", f"f{i}", src_dir_fd=fds["prev"],
                                                                   dst_dir_fd=fds["new"], follow_symlinks=False))
        for fd in fds.values():
            os.close(fd)
    finally:
        env.close()
        shutil.rmtree(env.under, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    g = sub.add_parser("gen")
    g.add_argument("dir")
    g.add_argument("--preset", default="tiny", choices=PRESETS)
    m = sub.add_parser("mutate")
    m.add_argument("dir")
    m.add_argument("--fraction", type=float, default=0.01)
    m.add_argument("--seed", type=int, default=2)
    c = sub.add_parser("calls")
    c.add_argument("--ttl-ms", type=int, default=0)
    c.add_argument("--readdirplus", action="store_true")
    c.add_argument("--restore", action="store_true", help="the calls of restoring a file instead")
    c.add_argument("--work", default="/var/tmp/snapring-calls")
    ap.add_argument("--preset", default="small", choices=PRESETS)
    ap.add_argument("--latency-us", type=int, default=1000, help="per metadata call; 0 = local disk, no FUSE")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=0, help="snapring --jobs and floor threads (0: snapring's own default, the floor 64)")
    ap.add_argument("--ttl-ms", type=int, default=0, help="latencyfs attribute/entry cache time (0: every call reaches it)")
    ap.add_argument("--readdirplus", action="store_true",
                    help="latencyfs lists directories with READDIRPLUS (attributes with every entry, cached for --ttl-ms), as an NFS client does")
    ap.add_argument("--once", default="", help="tools timed in the first run only (the slow baselines)")
    ap.add_argument("--tools", default="snapring,rsync,cp-al+rsync,fpsync-2,fpsync-8,cp-a,floor")
    ap.add_argument("--cases", default="full,incr,restore,expire")
    ap.add_argument("--restore-tools", default="cp-a,rsync",
                    help="baselines of the restore case (cp-a, rsync; --once applies to them too)")
    ap.add_argument("--work", default="/var/tmp/snapring-bench")
    ap.add_argument("--image-gb", type=int, default=0, help="put the data on a fresh journaled ext4 loop image of this size")
    ap.add_argument("--json", help="write the results here (and each one as it lands to <json>l, JSON lines)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--baseline", help="an earlier snapring binary, timed as the tool snapring-base (add it to --tools)")
    ap.add_argument("--debug", action="store_true", help="debug builds: a smoke run of the harness, not a measurement")
    a = ap.parse_args()
    if a.cmd == "gen":
        print(gen(a.dir, a.preset))
        return
    if a.cmd == "mutate":
        print(mutate(a.dir, a.fraction, a.seed))
        return
    if a.cmd == "calls":
        calls(a.work, a.ttl_ms, a.readdirplus, a.restore)
        return
    global PROFILE
    PROFILE = "debug" if a.debug else "release"
    if not a.no_build:
        release = [] if a.debug else ["--release"]
        for manifest in ["Cargo.toml", "bench/tools/Cargo.toml"]:
            sh("cargo", "build", *release, "--quiet", "--manifest-path", os.path.join(ROOT, manifest))
    if a.json:
        open(a.json + "l", "w").close()
    # snapring gets --jobs only when asked (else its own default, as a user would run it);
    # the floor gets the same number, or 64 (snapring's default on FUSE).
    global SR_JOBS, BASELINE
    BASELINE = a.baseline and os.path.abspath(a.baseline)
    SR_JOBS = ["--jobs", str(a.jobs)] if a.jobs else []
    jobs = a.jobs or 64
    env = Env(a.work, a.latency_us, a.image_gb, jobs, a.ttl_ms, a.readdirplus)
    results = {}
    try:
        src_v, src_u = env.path("src")
        nfiles = gen(src_u, a.preset)
        # Every entry of the source, the root included: the unit of "requests per entry".
        global ENTRIES
        ENTRIES = 1 + sum(len(d) + len(f) for _, d, f in os.walk(src_u))
        pristine = os.path.join(env.under, "pristine")
        sh("cp", "-a", src_u, pristine)
        names = a.tools.split(",")
        cases = a.cases.split(",")
        all_tools = tools(env, jobs, nfiles)
        once = set(filter(None, a.once.split(",")))
        sr_env = all_tools["snapring"]["env"]
        for r in range(a.runs):
            for name in names:
                if r > 0 and name in once:
                    continue
                t = all_tools[name]
                # Fresh source for every tool and run: the pristine tree, then 1% mutation.
                shutil.rmtree(src_u)
                sh("cp", "-a", pristine, src_u)
                # The copy gives every source file a new ctime. snapring re-hashes on the
                # next run what changed within 2 s of a walk's start ("racy" entries, as
                # git does), so a full backup started at once would make the incremental
                # re-read ~60% of the tree (seen: 16.7 instead of 11.1 requests per
                # entry on `tiny`). A user's files are not all created just before a backup.
                time.sleep(2.1)
                dst_v, dst_u = env.path("dst-" + name.replace("+", "_"))
                # Earlier tools' snapshots go, so the data set stays in the page cache.
                for old in os.listdir(env.under):
                    if old.startswith("dst-"):
                        shutil.rmtree(os.path.join(env.under, old))
                if t["full"] is None or "full" not in cases and not name.startswith("snapring"):
                    # The floor, or no full case: the previous snapshot is made by cp -a
                    # on the underlying disk, off the clock (the baselines read only the
                    # tree; snapring needs its manifest, so it makes its own, untimed).
                    os.makedirs(dst_u)
                    sh("cp", "-a", src_u, os.path.join(dst_u, "snap.0"))
                else:
                    drop_caches()
                    res = timed(t["full"](src_v, dst_v), env=t.get("env"), fs=env)
                    if "full" in cases:
                        check_same(src_u, os.path.join(dst_u, "snap.0"), f"{name} full")
                        record(results, a, r, ("full", name), res)
                if t["incr"] is None or "incr" not in cases and "expire" not in cases:
                    continue
                mutate(src_u, 0.01)
                drop_caches()
                res = timed(t["incr"](src_v, dst_v), env=t.get("env"), fs=env)
                new, prev = os.path.join(dst_u, "snap.0"), os.path.join(dst_u, "snap.1")
                if name != "floor":
                    check_same(src_u, new, f"{name} incremental")
                shared, total = check_shared(prev, new, f"{name} incremental")
                record(results, a, r, ("incr", name), res)
                if name.startswith("snapring") and "restore" in cases:
                    out_v, out_u = env.path("restore-snapring")
                    shutil.rmtree(out_u, ignore_errors=True)
                    drop_caches()
                    exe = BASELINE if name == "snapring-base" else snapring_bin()
                    res = timed([[exe, "restore", "--dest", dst_v, "snap.0", "--to", out_v, *SR_JOBS, "--no-progress"]], env=sr_env, fs=env)
                    check_same(src_u, out_u, f"{name} restore")
                    record(results, a, r, ("restore", name), res)
                    shutil.rmtree(out_u)
                # The restore baselines once per run, after snapring's own restore.
                if name == "snapring" and "restore" in cases:
                    snap_v = os.path.join(dst_v, "snap.0")
                    baselines = {"cp-a": ["cp", "-a", snap_v, out_v],
                                 "rsync": ["rsync", "-aH", "--numeric-ids", snap_v + "/", out_v + "/"]}
                    for tool in filter(None, a.restore_tools.split(",")):
                        if r > 0 and tool in once:
                            continue
                        drop_caches()
                        res = timed([baselines[tool]], fs=env)
                        check_same(src_u, out_u, f"{tool} restore")
                        record(results, a, r, ("restore", tool), res)
                        shutil.rmtree(out_u)
                if name == "snapring" and "expire" in cases:
                    # rm -rf of a copy of the previous snapshot, then snapring expiring that
                    # one snapshot (--retain 2 after two snapshots: exactly one expires).
                    cp_v, cp_u = env.path("expire-copy")
                    shutil.rmtree(cp_u, ignore_errors=True)
                    sh("cp", "-al", prev, cp_u)
                    drop_caches()
                    record(results, a, r, ("expire", "rm -rf"), timed([["rm", "-rf", cp_v]], fs=env))
                    drop_caches()
                    out = subprocess.run([snapring_bin(), "backup", "--json", "--source", src_v, "--dest", dst_v,
                                          "--label", "snap", "--retain", "2", *SR_JOBS, "--no-progress"],
                                         env=sr_env, capture_output=True, check=True)
                    rep = json.loads(out.stdout)
                    assert len(rep["expired"]) == 1, rep["expired"]
                    secs = rep["phases"]["remove_expired"]["seconds"]
                    record(results, a, r, ("expire", "snapring"), (secs, 0.0, rep["peak_rss_bytes"] // 1024))
                print(f"run {r + 1}/{a.runs}: {name} done ({shared}/{total} unchanged files share inodes)", file=sys.stderr)
    finally:
        env.close()
    report(results, a, nfiles)


def record(results, a, run_no, key, res):
    """Keeps one result and, with --json, appends it to <json>l at once, so an
    interrupted multi-hour run keeps what it measured."""
    results.setdefault(key, []).append(res)
    case, tool = key
    calls = res[3] if len(res) > 3 else {}
    per = f", {requests(res) / ENTRIES:.2f} requests/entry" if calls else ""
    print(f"run {run_no + 1}/{a.runs}: {case} {tool}: {res[0]:.2f} s wall, {res[1]:.2f} s cpu, "
          f"{res[2] / 1024:.1f} MiB{per}", file=sys.stderr)
    if a.json:
        with open(a.json + "l", "a") as f:
            f.write(json.dumps(dict(preset=a.preset, latency_us=a.latency_us, ttl_ms=a.ttl_ms, readdirplus=a.readdirplus,
                                    run=run_no + 1, case=case, tool=tool,
                                    wall=round(res[0], 3), cpu=round(res[1], 3), rss_kib=res[2],
                                    entries=ENTRIES, requests=calls)) + "\n")


def report(results, a, nfiles):
    mode = f", ttl {a.ttl_ms} ms{', READDIRPLUS' if a.readdirplus else ''}" if a.latency_us else ""
    print(f"\npreset {a.preset} ({nfiles} files, {ENTRIES} entries), latency {a.latency_us} us per metadata call{mode}, "
          f"medians of {a.runs} runs; req/entry: delayed requests to latencyfs per source entry")
    rows = {}
    for (case, tool), vals in sorted(results.items()):
        med = lambda i: statistics.median(v[i] for v in vals)
        rows[(case, tool)] = (med(0), med(1), med(2), statistics.median(requests(v) for v in vals) / ENTRIES)
    out = []
    for case in ["full", "incr", "restore", "expire"]:
        base = rows.get((case, "snapring"))
        if not base:
            continue
        print(f"\n{case:8} {'tool':14} {'wall s':>9} {'cpu s':>9} {'peak RSS':>10} {'req/entry':>10} {'snapring is':>14} {'runs':>5}")
        for (c, tool), (w, u, r, q) in sorted(rows.items(), key=lambda x: x[1][0]):
            if c != case:
                continue
            ratio = "" if tool == "snapring" else f"{w / base[0]:.1f}x faster" if w >= base[0] else f"{base[0] / w:.2f}x slower"
            req = f"{q:10.2f}" if q else f"{'-':>10}"
            print(f"{'':8} {tool:14} {w:9.2f} {u:9.2f} {r / 1024:8.1f}MiB {req} {ratio:>14} {len(results[(c, tool)]):>5}")
            out.append(dict(case=case, tool=tool, wall=w, cpu=u, rss_kib=r, requests_per_entry=round(q, 3),
                            runs=[list(v) for v in results[(c, tool)]]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(preset=a.preset, files=nfiles, latency_us=a.latency_us, ttl_ms=a.ttl_ms,
                           readdirplus=a.readdirplus, runs=a.runs, results=out), f, indent=1)


if __name__ == "__main__":
    main()
