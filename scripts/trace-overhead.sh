#!/usr/bin/env bash
# What --trace costs per training step: each layout run with and without tracing, the window
# covering every step, timed by slope (the loop's "training_seconds" from --metrics, between a
# run of N/5 steps and one of N: start-up, and the trace's writing after the loop, drop out).
#
#   scripts/trace-overhead.sh [--steps N] [--repeats R] [--data FILE] [--only REGEX] [--flags "..."]
#
# Untraced and traced runs alternate R times (the machine is shared and noisy); prints the median
# µs/step of each and the traced run's relative cost (+1.0% = 1% slower with tracing). The
# one-process rows (train, and train_pp's 8 micro-batches on one stage: ~130 events per step) do
# not depend on how the OS schedules two ranks on a shared machine; the two-rank rows do.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

steps=1000 repeats=5 only="" flags="" data="$ROOT/../shared/data/names.txt"
[ -f "$data" ] || data="$ROOT/data/words.txt"
while [ $# -gt 0 ]; do
  case "$1" in
    --steps | --repeats | --data | --only | --flags) [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
      declare "${1#--}=$2"; shift 2 ;;
    *) echo "error: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
short=$((steps / 5))
bin="$ROOT/.build/release"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# name | ranks | executable | extra flags
layouts=(
  "train|1|train|--layers 4"
  "train_pp N=1 M=8|1|train_pp|--layers 4 --micro-batches 8"
  "train_dp N=2|2|train_dp|--layers 4"
  "train_fsdp N=2|2|train_fsdp|--layers 4"
  "train_tp N=2|2|train_tp|--layers 4"
  "train_pp N=2 M=8|2|train_pp|--layers 4 --micro-batches 8"
)

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# The loop's seconds for `$3` steps of layout row (`$1` ranks, `$2` executable, `$4` extra), traced if `$5`.
seconds() {
  local ranks="$1" exe="$2" n="$3" extra="$4" traced="$5"
  local trace=()
  [ "$traced" = 1 ] && trace=(--trace "$work/t.json" --trace-steps "1:$n")
  local cmd=("$bin/$exe" --data "$data" --steps "$n" --log-every "$n" --val-batches 1 --samples 0 --metrics "$work/m.jsonl"
             $flags $extra "${trace[@]}")
  if [ "$ranks" = 1 ]; then "${cmd[@]}" >/dev/null; else "${MPIRUN[@]}" -np "$ranks" "${cmd[@]}" >/dev/null </dev/null; fi
  tail -1 "$work/m.jsonl" | python3 -c 'import json, sys; print(json.load(sys.stdin)["training_seconds"])'
}

printf "%-18s %14s %14s %9s\n" layout "off µs/step" "traced µs/step" "traced"
for row in "${layouts[@]}"; do
  IFS='|' read -r name ranks exe extra <<<"$row"
  if [ -n "$only" ] && ! [[ "$name" =~ $only ]]; then continue; fi
  off=(); on=()
  for _ in $(seq "$repeats"); do
    for traced in 0 1; do
      a=$(seconds "$ranks" "$exe" "$short" "$extra" "$traced")
      b=$(seconds "$ranks" "$exe" "$steps" "$extra" "$traced")
      slope=$(echo "$a $b" | awk -v d=$((steps - short)) '{print ($2 - $1) / d * 1e6}')
      if [ "$traced" = 1 ]; then on+=("$slope"); else off+=("$slope"); fi
    done
  done
  mo=$(printf "%s\n" "${off[@]}" | median); mt=$(printf "%s\n" "${on[@]}" | median)
  printf "%-18s %14.1f %14.1f %+8.1f%%\n" "$name" "$mo" "$mt" "$(echo "$mo $mt" | awk '{print ($2 / $1 - 1) * 100}')"
done
