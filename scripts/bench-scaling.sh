#!/usr/bin/env bash
# The scaling benchmark (issue: parallel layouts that pay off): for the default configuration and the
# two big ones, µs/step of `train` and of every layout on 2 ranks, the speed-up over `train`, the
# exposed communication, and the machine's limit for each layout with the efficiency limit/measured.
# The model and the measurement are described in scripts/scaling.py.
#
#   scripts/bench-scaling.sh [--repeats R (3)] [--data FILE] [--only TEXT (a configuration's title)]
#
# Run it on a quiet machine: every figure is a slope of wall time.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
is_set_up || "$ROOT/scripts/setup.sh"
repeats=3
only=""
data="$ROOT/../shared/data/names.txt"
[ -f "$data" ] || data="$ROOT/data/words.txt"
while [ $# -gt 0 ]; do
  case "$1" in
    --repeats) repeats="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    *) echo "error: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
exec /usr/bin/python3 "$ROOT/scripts/scaling.py" "$data" "$repeats" "$only"
