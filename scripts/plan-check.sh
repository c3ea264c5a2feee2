#!/usr/bin/env bash
# The planner's check: calibrates the cost model on this machine (writes .build/plan-calibration.json,
# which `plan` reads), then runs 16 layouts on 2 and 4 ranks and prints the planner's predicted
# µs/step against the measured one (slope timing, as scripts/bench-scaling.sh). See scripts/plan-check.py.
#
#   scripts/plan-check.sh [--repeats R (3)] [--data FILE]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
is_set_up || "$ROOT/scripts/setup.sh"
repeats=3
data="$ROOT/../shared/data/names.txt"
[ -f "$data" ] || data="$ROOT/data/words.txt"
while [ $# -gt 0 ]; do
  case "$1" in
    --repeats) repeats="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    *) echo "error: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
exec /usr/bin/python3 "$ROOT/scripts/plan-check.py" "$data" "$repeats"
