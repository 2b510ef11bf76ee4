#!/bin/bash
# Peak RSS of `snapring backup` (its defaults) for a full backup and an incremental after
# a 1% mutation, at each preset given (default: medium = 100k files, xl = 1M files), to
# check that memory stays flat as the tree grows. See docs/performance.md.
#
#   bash bench/rss.sh [WORK_DIR] [PRESET...]     # as root or not; needs GNU time
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/var/tmp/snapring-rss}
shift || true
PRESETS=${*:-medium xl}
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
S=$ROOT/target/release/snapring
export SNAPRING_CATALOG=off
for p in $PRESETS; do
    W=$WORK/$p
    rm -rf "$W"
    mkdir -p "$W"
    n=$(python3 "$ROOT/bench/run.py" gen "$W/src" --preset "$p")
    for step in full incr; do
        if [ "$step" = incr ]; then python3 "$ROOT/bench/run.py" mutate "$W/src" >/dev/null; fi
        /usr/bin/time -q -f "%e %M" -o "$W/time" "$S" backup --json --source "$W/src" --dest "$W/st" \
            --label snap --retain 3 --no-progress >"$W/$step.json"
        read -r wall rss <"$W/time"
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["status"]=="complete", r["status"]' "$W/$step.json"
        echo "$p ($n files) $step: $wall s wall, peak RSS $(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }') MiB"
    done
    rm -rf "$W"
done
