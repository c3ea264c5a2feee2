#!/usr/bin/env bash
# Single-rank speed: what the core can do, and how much of it `train` gets.
#
#   scripts/bench-speed.sh [--data FILE] [--runs N] [--quick]
#
# Prints
#   1. the measured single-core fp32 FMA peak (`peak`);
#   2. `train` µs/step on the default configuration: the slope between --steps 2000 and
#      --steps 12000 (start-up, data loading and validation cancel out), median of N runs (5),
#      in wall-clock time and in CPU time (the CPU-time slope does not count the time another
#      process held the core, so it is the steadier figure on a shared machine);
#   3. achieved GFLOP/s and % of peak on --emb 64 --hidden 1024 --batch-size 256, from the
#      `train` slope (20 → 120 steps) and from `peak --model` (in-process, fastest repetition);
#   4. µs/step and GFLOP/s against --hidden 64…4096 (batch 32) and --batch-size 32…1024
#      (hidden 64), from `peak --model` (fastest of many repetitions of the reference step).
#
# FLOPs per step: Σ over the Linears of 6·B·in·out (forward 2·B·in·out, backward 4·B·in·out).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

data="$ROOT/../shared/data/names.txt"
[ -s "$data" ] || data="$ROOT/data/words.txt"
runs=5
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --quick) quick=1; runs=3; shift ;;
    *) echo "usage: $0 [--data FILE] [--runs N] [--quick]" >&2; exit 64 ;;
  esac
done
[ -x "$BIN/train" ] && [ -x "$BIN/peak" ] || swift build -c release 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\]' || true
[ -s "$data" ] || { echo "bench-speed: no data file '$data' (run scripts/setup.sh or pass --data)" >&2; exit 1; }

# Wall and CPU seconds of one `train` run: prints "wall cpu".
run_train() {
  local start end cpu
  start=$EPOCHREALTIME
  cpu=$( { /usr/bin/time -f "%U %S" "$BIN/train" --data "$data" --val-batches 1 --samples 0 --log-every 1000000 "$@" >/dev/null; } 2>&1 | tail -1)
  end=$EPOCHREALTIME
  awk -v s="$start" -v e="$end" -v c="$cpu" 'BEGIN { split(c, t, " "); printf "%.6f %.6f\n", e - s, t[1] + t[2] }'
}

# Median over `runs` of the per-step slope between two step counts: prints "wall_us cpu_us".
slope() {
  local lo=$1 hi=$2; shift 2
  local walls=() cpus=()
  for _ in $(seq "$runs"); do
    read -r w1 c1 < <(run_train --steps "$lo" "$@")
    read -r w2 c2 < <(run_train --steps "$hi" "$@")
    walls+=("$(awk -v a="$w1" -v b="$w2" -v n=$((hi - lo)) 'BEGIN { printf "%.3f", (b - a) / n * 1e6 }')")
    cpus+=("$(awk -v a="$c1" -v b="$c2" -v n=$((hi - lo)) 'BEGIN { printf "%.3f", (b - a) / n * 1e6 }')")
  done
  printf '%s\n' "${walls[@]}" | sort -g | awk '{ v[NR] = $1 } END { printf "%s ", v[int((NR + 1) / 2)] }'
  printf '%s\n' "${cpus[@]}" | sort -g | awk '{ v[NR] = $1 } END { printf "%s\n", v[int((NR + 1) / 2)] }'
}

flops() {  # emb hidden batch [vocab 27, seq 16, 1 layer]
  awk -v e="$1" -v h="$2" -v b="$3" 'BEGIN { i = 16 * e; printf "%.0f", 6 * b * (i * h + h * 27) }'
}

echo "== machine"
grep -m1 "model name" /proc/cpuinfo | sed 's/.*: /cpu: /'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (other processes share these $(nproc) cores)"
peak=$("$BIN/peak" | sed -n 's/^peak: \([0-9.]*\) .*/\1/p')
echo "peak: $peak GFLOP/s fp32, one core (measured: 16 chains of 16-wide FMA)"

echo
echo "== train, default configuration (batch 32, seq-len 16, emb 16, hidden 64), $data"
read -r wall cpu < <(slope 2000 12000)
f=$(flops 16 64 32)
echo "µs/step (slope 2000→12000 steps, median of $runs): wall $wall, cpu $cpu"
awk -v f="$f" -v w="$wall" -v c="$cpu" -v p="$peak" 'BEGIN {
  printf "GFLOP/s: %.1f wall (%.1f%% of peak), %.1f cpu (%.1f%% of peak); %.3f MFLOP/step\n",
         f / w / 1e3, 100 * f / w / 1e3 / p, f / c / 1e3, 100 * f / c / 1e3 / p, f / 1e6 }'

echo
echo "== compute-bound: --emb 64 --hidden 1024 --batch-size 256"
f=$(flops 64 1024 256)
if [ "$quick" = 0 ]; then
  read -r wall cpu < <(slope 20 120 --emb 64 --hidden 1024 --batch-size 256)
  awk -v f="$f" -v w="$wall" -v c="$cpu" -v p="$peak" 'BEGIN {
    printf "train (slope 20→120 steps, median of %d): %.1f µs/step wall, %.1f cpu -> %.1f GFLOP/s wall (%.1f%% of peak), %.1f cpu (%.1f%%)\n",
           '"$runs"', w, c, f / w / 1e3, 100 * f / w / 1e3 / p, f / c / 1e3, 100 * f / c / 1e3 / p }'
fi
"$BIN/peak" --no-peak --model --emb 64 --hidden 1024 --batch-size 256 --no-breakdown --repeats 7 --seconds 0.02 \
  | awk -v p="$peak" '
      /^step_us:/ { printf "peak --model (in-process, fastest repetition): %s µs/step", $2 }
      /^step_gflops:/ { printf " -> %s GFLOP/s (%.1f%% of peak)\n", $2, 100 * $2 / p }
      /^products_gflops:/ { printf "the six matrix products alone: %s GFLOP/s (%.1f%% of peak)\n", $2, 100 * $2 / p }'

sweep() {  # label emb hidden batch
  "$BIN/peak" --no-peak --model --emb "$2" --hidden "$3" --batch-size "$4" --steps-only --repeats 10 --seconds 0.01 \
    | awk -v l="$1" -v p="$peak" '/^step_us:/ { us = $2 } /^step_gflops:/ { printf "%-18s %12s %10s %8.1f%%\n", l, us, $2, 100 * $2 / p }'
}

echo
echo "== step time against width (batch 32) and batch (hidden 64); peak --model, fastest repetition"
printf "%-18s %12s %10s %9s\n" "config" "µs/step" "GFLOP/s" "of peak"
hiddens="64 128 256 512 1024 2048 4096"; batches="32 64 128 256 512 1024"
[ "$quick" = 1 ] && hiddens="64 256 1024 4096" && batches="32 128 512 1024"
for h in $hiddens; do sweep "--hidden $h" 16 "$h" 32; done
for b in $batches; do sweep "--batch-size $b" 16 64 "$b"; done
