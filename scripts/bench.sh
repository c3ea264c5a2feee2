#!/usr/bin/env bash
# Benchmark table: µs/step, tokens/s and final validation loss per layout.
#
#   scripts/bench.sh [--steps N] [--repeats R] [--data FILE] [--only REGEX] [--plot [DIR]] [--no-speed]
#
# After the layouts it runs scripts/bench-speed.sh (single-core peak, train's GFLOP/s and % of
# peak, the compute-bound configuration, and step time against --hidden and --batch-size) unless
# --no-speed.
#
# --plot also writes every layout's --metrics file and turns them into PNGs with scripts/plot.py
# (loss curves, step time, communication by kind) in DIR (default docs/images).
#
# Data: ../shared/data/names.txt when it exists, else data/words.txt. Each layout runs with the
# default flags. Step time is the slope between a short run (steps/5) and the full run, so start-up,
# validation and sampling cancel out; the median over R repeats is reported, because these
# machines are noisy. The validation loss is the full run's. tokens/s counts predicted tokens
# (the global batch) per second.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/scripts/setup.sh" >&2

steps=25000
repeats=3
only=""
plot=""
speed=1
data="$ROOT/../shared/data/names.txt"
[ -f "$data" ] || data="$ROOT/data/words.txt"
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --no-speed) speed=0; shift ;;
    --plot) plot="$ROOT/docs/images"; if [ $# -gt 1 ] && [[ "$2" != --* ]]; then plot="$2"; shift; fi; shift ;;
    *) echo "error: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
short=$((steps / 5))
batch=32

# name | ranks | executable | extra flags
layouts=(
  "train|1|train|"
  "train_dp N=2|2|train_dp|"
  "train_dp N=4|4|train_dp|"
  "train_fsdp N=2|2|train_fsdp|"
  "train_fsdp N=4|4|train_fsdp|"
  "train_tp N=2|2|train_tp|"
  "train_pp N=3 M=1 1f1b|3|train_pp|--micro-batches 1 --schedule 1f1b"
  "train_pp N=3 M=4 gpipe|3|train_pp|--micro-batches 4 --schedule gpipe"
  "train_pp N=3 M=4 1f1b|3|train_pp|--micro-batches 4 --schedule 1f1b"
  "train_3d 2x1x3 M=2|6|train_3d|--tp 2 --dp 1 --pp 3 --micro-batches 2"
  "train_3d 2x2x3 M=2|12|train_3d|--tp 2 --dp 2 --pp 3 --micro-batches 2"
)

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

run() { # ranks exe steps extra... → prints "seconds val_loss"
  local np=$1 exe=$2 n=$3; shift 3
  local t0 t1 out
  t0=$(now)
  out=$("${MPIRUN[@]}" -np "$np" "$BIN/$exe" --data "$data" --steps "$n" --samples 0 --log-every 1000000 "$@" 2>&1) \
    || { echo "error: $exe -np $np failed: $out" >&2; exit 1; }
  t1=$(now)
  echo "$(echo "$t1 - $t0" | bc -l) $(echo "$out" | awk '/validation loss/ {print $3}')"
}

command -v bc >/dev/null || { apt-get install -y -qq bc >/dev/null 2>&1 || true; }

echo "data: $data   steps: $steps (slope vs $short)   repeats: $repeats   $(date -u +%Y-%m-%d)   $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '| %-22s | %6s | %10s | %12s | %8s |\n' layout ranks "µs/step" "tokens/s" "val loss"
printf '|%s|%s|%s|%s|%s|\n' "------------------------" "--------" "------------" "--------------" "----------"
for entry in "${layouts[@]}"; do
  IFS='|' read -r name np exe extra <<< "$entry"
  [ -n "$only" ] && ! [[ "$name" =~ $only ]] && continue
  slopes=()
  val=""
  for _ in $(seq "$repeats"); do
    read -r ts _ <<< "$(run "$np" "$exe" "$short" $extra)"
    metrics_flag=()
    if [ -n "$plot" ]; then
      mkdir -p "$plot/metrics"
      metrics_flag=(--metrics "$plot/metrics/$(echo "$name" | tr ' =' '_-').jsonl")
    fi
    read -r tl val <<< "$(run "$np" "$exe" "$steps" $extra "${metrics_flag[@]}")"
    slopes+=("$(echo "($tl - $ts) / ($steps - $short) * 1000000" | bc -l)")
  done
  us=$(printf '%s\n' "${slopes[@]}" | median)
  printf '| %-22s | %6s | %10.1f | %12.0f | %8s |\n' "$name" "$np" "$us" "$(echo "$batch / $us * 1000000" | bc -l)" "$val"
done

if [ -n "$plot" ]; then
  /usr/bin/python3 -c 'import matplotlib' 2>/dev/null || {
    echo "bench: installing python3-matplotlib" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get install -y -qq python3-matplotlib >/dev/null || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-matplotlib >/dev/null; }
  }
  "$ROOT/scripts/plot.py" "$plot"/metrics/*.jsonl --out "$plot"
fi

if [ "$speed" = 1 ]; then
  echo
  "$ROOT/scripts/bench-speed.sh" --data "$data"
fi
