#!/usr/bin/env bash
# The main job in one command: set up if needed, then train with FSDP on 2 ranks.
#
#   scripts/train.sh [-np N] [--exe NAME] [flags...]
#   scripts/train.sh --data ../shared/data/names.txt
#   scripts/train.sh -np 1 --exe train --data ../shared/data/names.txt
#
# Defaults: `mpirun -np 2 train_fsdp`. Every other flag is passed to the executable
# (see `.build/release/train_fsdp --help`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/scripts/setup.sh" >&2   # idempotent: installs and rebuilds only what is missing or stale

np=2
exe=train_fsdp
while [ $# -gt 0 ]; do
  case "$1" in
    -np) np="$2"; shift 2 ;;
    --exe) exe="$2"; shift 2 ;;
    *) break ;;
  esac
done
[ -x "$BIN/$exe" ] || { echo "error: no executable '$exe' in $BIN" >&2; exit 2; }
exec "${MPIRUN[@]}" -np "$np" "$BIN/$exe" "$@"
