#!/bin/bash
# Submits one scale-out backup run: the worker array, then the finalize job that waits
# for every element to end (afterany). Extra arguments go to the array's sbatch (e.g.
# --array=1-8 for 8 workers, --partition=backup). Prints the two job ids.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
array=$(sbatch --parsable "$@" "$here/backup-array.sbatch")
array=${array%%;*}
final=$(sbatch --parsable --dependency="afterany:${array}" \
    --export="ALL,SNAPRING_ARRAY_JOB_ID=${array}" "$here/finalize.sbatch")
echo "array ${array} finalize ${final%%;*}"
