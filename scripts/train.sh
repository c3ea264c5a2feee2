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
# SIGTERM or Ctrl-C to mpirun: Open MPI 4.1 sends the ranks SIGCONT, waits this many seconds,
# sends SIGTERM (the ranks stop after the current step and save a checkpoint), waits as long again
# whatever the ranks do, then SIGKILLs them and exits. The default, 1 s, leaves a large model too
# little time to save; 5 s gives the save 5 s and ends the job 10 s after the signal.
export OMPI_MCA_odls_base_sigkill_timeout="${OMPI_MCA_odls_base_sigkill_timeout:-5}"
exec "${MPIRUN[@]}" -np "$np" "$BIN/$exe" "$@"
