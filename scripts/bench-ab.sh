#!/usr/bin/env bash
# A/B speed comparison of two builds, side by side in one run (the machine is shared and noisy):
#
#   scripts/bench-ab.sh DIR_A DIR_B [--steps N] [--repeats R] [--data FILE] [--only REGEX] [--flags "..."]
#
# DIR_A and DIR_B hold the executables (e.g. a copy of .build/release made before a change, and
# .build/release after it). For each layout, A and B alternate R times; each measurement is the
# slope between a run of N/5 steps and one of N steps (start-up, validation and sampling cancel
# out). Prints the median µs/step of A and B and B's speed relative to A (> 1: B is faster).
# --flags adds training flags to every run (e.g. --flags "--emb 64 --hidden 1024 --batch-size 256").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[ $# -ge 2 ] || { echo "usage: scripts/bench-ab.sh DIR_A DIR_B [--steps N] [--repeats R] [--data FILE] [--only REGEX] [--flags \"...\"]" >&2; exit 2; }
a="$1"; b="$2"; shift 2
steps=20000
repeats=5
only=""
flags=""
data="$ROOT/../shared/data/names.txt"
[ -f "$data" ] || data="$ROOT/data/words.txt"
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --flags) flags="$2"; shift 2 ;;
    *) echo "error: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
short=$((steps / 5))

# name | ranks | executable | extra flags
layouts=(
  "train|1|train|"
  "train_dp N=2|2|train_dp|"
  "train_fsdp N=2|2|train_fsdp|"
  "train_fsdp N=2 Z1|2|train_fsdp|--zero 1"
  "train_fsdp N=2 Z2|2|train_fsdp|--zero 2"
  "train_tp N=2|2|train_tp|"
  "train_pp N=2 M=4|2|train_pp|--micro-batches 4"
  "train_3d 2x1x1|2|train_3d|--tp 2"
  "train_3d 1x1x2 M=4|2|train_3d|--pp 2 --micro-batches 4"
)

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# Seconds for one run of `$3` steps of layout row `$2` from directory `$1`.
run() {
  local dir="$1" ranks="$2" exe="$3" n="$4" extra="$5" start end
  local cmd=("$dir/$exe" --data "$data" --steps "$n" --log-every "$n" --val-batches 1 --samples 0 $flags)
  start=$(now)
  if [ "$ranks" = 1 ]; then "${cmd[@]}" $extra >/dev/null; else "${MPIRUN[@]}" -np "$ranks" "${cmd[@]}" $extra >/dev/null; fi
  end=$(now)
  echo "$start $end" | awk '{print $2 - $1}'
}

printf "%-18s %12s %12s %8s\n" layout "A µs/step" "B µs/step" "B vs A"
for row in "${layouts[@]}"; do
  IFS='|' read -r name ranks exe extra <<<"$row"
  if [ -n "$only" ] && ! [[ "$name" =~ $only ]]; then continue; fi
  ta=(); tb=()
  for _ in $(seq "$repeats"); do
    for side in a b; do
      dir=$a; [ $side = b ] && dir=$b
      t1=$(run "$dir" "$ranks" "$exe" "$short" "$extra")
      t2=$(run "$dir" "$ranks" "$exe" "$steps" "$extra")
      us=$(echo "$t1 $t2" | awk -v d=$((steps - short)) '{printf "%.2f", ($2 - $1) / d * 1e6}')
      if [ $side = a ]; then ta+=("$us"); else tb+=("$us"); fi
    done
  done
  ma=$(printf "%s\n" "${ta[@]}" | median); mb=$(printf "%s\n" "${tb[@]}" | median)
  printf "%-18s %12.2f %12.2f %7.3fx\n" "$name" "$ma" "$mb" "$(echo "$ma $mb" | awk '{print $1 / $2}')"
done
