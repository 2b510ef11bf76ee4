#!/bin/bash
# Peak RSS of `snapring backup` (its defaults) for a full backup and an incremental after
# a 1% mutation, at each preset given (default: medium = 100k files, xl = 1M files), to
# check that memory stays flat as the tree grows. See docs/performance.md.
# With RSS_REPO=1 the backups go into a restic repository (file://, issue 14) instead of
# a hard-link store. Preset `many`: 1,000 directories of 1,000 files of ~120 bytes
# (10^6 blobs: the repository's worst case).
#
#   bash bench/rss.sh [WORK_DIR] [PRESET...]     # as root or not; needs GNU time
#   RSS_REPO=1 bash bench/rss.sh /var/tmp/rss many xl
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/var/tmp/snapring-rss}
shift || true
PRESETS=${*:-medium xl}
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
S=$ROOT/target/release/snapring
export SNAPRING_CATALOG=off SNAPRING_PASSWORD=rss XDG_CACHE_HOME=$WORK/cache
for p in $PRESETS; do
    W=$WORK/$p
    rm -rf "$W"
    mkdir -p "$W"
    if [ "$p" = many ]; then
        n=$(python3 -c 'import os, sys
for d in range(1000):
    os.makedirs(f"{sys.argv[1]}/d{d:04d}")
    for f in range(1000):
        with open(f"{sys.argv[1]}/d{d:04d}/f{f:04d}.txt", "w") as h:
            h.write(f"file {d} {f} " + "x" * 100 + f" {d * 1000 + f}\n")
print(1000000)' "$W/src")
    else
        n=$(python3 "$ROOT/bench/run.py" gen "$W/src" --preset "$p")
    fi
    dest=$W/st
    if [ "${RSS_REPO:-}" = 1 ]; then
        dest=file://$W/repo
        rm -rf "$WORK/cache"
        "$S" init --dest "$dest" >/dev/null
    fi
    for step in full incr; do
        if [ "$step" = incr ]; then python3 "$ROOT/bench/run.py" mutate "$W/src" >/dev/null; fi
        /usr/bin/time -q -f "%e %M" -o "$W/time" "$S" backup --json --source "$W/src" --dest "$dest" \
            --label snap --retain 3 --no-progress >"$W/$step.json"
        read -r wall rss <"$W/time"
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["status"]=="complete", r["status"]' "$W/$step.json"
        echo "$p ($n files) $step: $wall s wall, peak RSS $(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }') MiB"
    done
    rm -rf "$W"
done
