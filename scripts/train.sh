#!/usr/bin/env bash
# The main job in one command: set up if needed, then train.
#
#   scripts/train.sh [-np N] [flags...]      e.g. scripts/train.sh --data ../shared/data/names.txt
#
# Runs the single-rank reference `train` under mpirun (-np 1 by default); every flag after -np is
# passed to the executable (see `.build/release/train --help`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
is_set_up || "$ROOT/scripts/setup.sh"

np=1
if [ "${1:-}" = "-np" ]; then np="$2"; shift 2; fi
exec "${MPIRUN[@]}" -np "$np" "$BIN/train" "$@"
