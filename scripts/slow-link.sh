#!/usr/bin/env bash
# DiLoCo against data parallel on a slow link between two "hosts": two Linux network namespaces
# joined by a veth pair (scripts/multihost-test.sh's set-up, one rank per host), the link
# throttled with tc netem in both directions (tbf, the rate without a delay, where the kernel has
# no netem).
#
#   scripts/slow-link.sh [DATA]          (root; DATA defaults to /work/shared/data/names.txt)
#
# Trains train_dp -np 2 and train_diloco -np 2 --inner-steps H (AdamW inside, the paper's outer
# lr 0.7, Nesterov momentum OUTER_MOMENTUM: 0.5 by default, where the paper's 0.9 overshoots in
# the few outer steps of these runs; docs/parallelisms/diloco.md has the sweep) on the same data,
# flags and steps, validating every H steps,
# and prints a table: final validation loss, bytes over the link (rank 0's ledger, all kinds),
# wall-clock seconds of the whole run, training seconds (the ledger's, validation excluded), and
# the time each needs to reach DP-2's final validation loss, estimated as the first validation
# step at or below it times the run's training seconds per step. DiLoCo's time to that loss is
# read from a second DiLoCo run that goes on for LONGER times the steps (the same run, continued:
# the same seed, data order and constant learning rate, so its first STEPS steps are the first
# run's). The last line is
#   time to DP-2's final validation loss: DiLoCo/DP = R
# Writes docs/pictures/diloco-slow-link.png (scripts/plot.py --wall-clock). Environment: RATE
# (20mbit), DELAY (10ms, each way), STEPS (1000), H (50), LONGER (4), OUTER_MOMENTUM (0.5), MODEL
# (the model flags).
set -euo pipefail
while read -r var; do unset "$var"; done < <(compgen -e | grep -E '^(OMPI_|PMIX_)' || true)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATA=${1:-/work/shared/data/names.txt}
RATE=${RATE:-20mbit} DELAY=${DELAY:-10ms} STEPS=${STEPS:-1000} H=${H:-50} LONGER=${LONGER:-4} OUTER_MOMENTUM=${OUTER_MOMENTUM:-0.5}
read -r -a MODEL <<< "${MODEL:---hidden 256 --batch-size 64}"
NS_A=psdl-a NS_B=psdl-b VETH_A=psdl-va VETH_B=psdl-vb
IP_A=10.232.0.1 IP_B=10.232.0.2 SUBNET=10.232.0.0/24

[ "$(id -u)" = 0 ] || { echo "skipped: not root (network namespaces and tc need it)"; exit 0; }
[ -r "$DATA" ] || { echo "error: cannot read $DATA" >&2; exit 1; }
[ -x "$BIN/train_diloco" ] || { echo "error: build first: swift build -c release" >&2; exit 1; }

work=$(mktemp -d /tmp/psdl.XXXXXX)
cleanup() {
  local ns
  for ns in "$NS_A" "$NS_B"; do
    if ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF "$ns"; then
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
}
cleanup
trap 'cleanup; echo "files kept in $work"' EXIT

# Two hosts, one throttled wire: netem on each end's egress, so every direction has the delay and rate.
ip netns add "$NS_A"; ip netns add "$NS_B"
ip link add "$VETH_A" netns "$NS_A" type veth peer name "$VETH_B" netns "$NS_B"
ip -n "$NS_A" addr add "$IP_A/24" dev "$VETH_A"; ip -n "$NS_B" addr add "$IP_B/24" dev "$VETH_B"
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip -n "$NS_A" link set "$VETH_A" up; ip -n "$NS_B" link set "$VETH_B" up
# Kernels without sch_netem (this suite's VMs) get tbf: the rate without the delay, said so.
LINK="netem: $RATE, $DELAY each way"
for pair in "$NS_A $VETH_A" "$NS_B $VETH_B"; do
  set -- $pair
  if ! ip netns exec "$1" tc qdisc add dev "$2" root netem delay "$DELAY" rate "$RATE" limit 100000 2>/dev/null; then
    ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$RATE" burst 32kbit latency 400ms
    LINK="tbf: $RATE each way, no added delay (this kernel has no netem)"
  fi
done
printf '%s slots=1\n%s slots=1\n' "$IP_A" "$IP_B" > "$work/hostfile"
sleep 1

FLAGS=(--data "$DATA" --optimizer adam --lr 0.003 --val-every "$H" --val-batches 20 --samples 0 "${MODEL[@]}")
run() { # name exe steps flags... → $work/name.{log,jsonl,seconds}
  local name=$1 exe=$2 steps=$3 start end; shift 3
  start=$(date +%s.%N)
  ip netns exec "$NS_A" unshare --uts /bin/sh -c 'hostname "$1"; shift; exec "$@"' sh "$NS_A" \
    mpirun --hostfile "$work/hostfile" -np 2 --bind-to none \
      --mca plm_rsh_agent "$ROOT/scripts/netns-rsh.sh" --mca plm_rsh_no_tree_spawn 1 \
      --mca btl tcp,self --mca btl_tcp_if_include "$SUBNET" --mca oob_tcp_if_include "$SUBNET" \
      "$BIN/$exe" "${FLAGS[@]}" --steps "$steps" --log-every "$steps" "$@" --metrics "$work/$name.jsonl" < /dev/null > "$work/$name.log" 2>&1 \
    || { echo "error: $name failed: $(tail -3 "$work/$name.log")" >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc > "$work/$name.seconds"
}
echo "slow link ($LINK); $STEPS steps, H = $H, outer momentum $OUTER_MOMENTUM, model ${MODEL[*]}; $(lscpu | grep 'Model name' | sed 's/  */ /g')"
run dp train_dp "$STEPS"
run diloco train_diloco "$STEPS" --inner-steps "$H" --outer-momentum "$OUTER_MOMENTUM"
run diloco-long train_diloco $((LONGER * STEPS)) --inner-steps "$H" --outer-momentum "$OUTER_MOMENTUM"

/usr/bin/python3 - "$work" <<'EOF'
import json, sys
work = sys.argv[1]
def load(name):
    val, final = [], None
    for line in open(f"{work}/{name}.jsonl"):
        r = json.loads(line)
        if "val_loss" in r and "step" in r: val.append((r["step"], r["val_loss"]))
        elif "val_loss" in r: final = r
    wall = float(open(f"{work}/{name}.seconds").read())
    per_step = final["training_seconds"] / final["train_steps"]
    total = sum(k["bytes"] for k in final["comm"].values())
    return dict(val=val, final=final, wall=wall, per_step=per_step, bytes=total)
dp, dl, longer = load("dp"), load("diloco"), load("diloco-long")
target = dp["final"]["val_loss"]
def reach(run):
    step = next((s for s, v in run["val"] if v <= target), None)
    return None if step is None else step * run["per_step"]
print(f"{'':24s}{'DP-2':>14s}{'DiLoCo-2':>14s}{'DiLoCo/DP':>12s}")
rows = [("final validation loss", dp["final"]["val_loss"], dl["final"]["val_loss"], "{:.4f}"),
        ("ledger bytes, rank 0", dp["bytes"], dl["bytes"], "{:,.0f}"),
        ("wall-clock seconds", dp["wall"], dl["wall"], "{:.1f}"),
        ("training seconds", dp["final"]["training_seconds"], dl["final"]["training_seconds"], "{:.1f}")]
for label, a, b, fmt in rows:
    print(f"{label:24s}{fmt.format(a):>14s}{fmt.format(b):>14s}{b / a:>12.4f}")
ta, tb = reach(dp), reach(longer)
cell = lambda t: "never" if t is None else f"{t:.1f}"
steps = longer["final"]["train_steps"]
print(f"{'s to DP-2 final val':24s}{cell(ta):>14s}{cell(tb):>14s}   (DiLoCo: its run continued to {steps} steps, "
      f"final validation loss {longer['final']['val_loss']:.4f})")
print(f"time to DP-2's final validation loss: DiLoCo/DP = {'never' if tb is None else f'{tb / ta:.3f}'}")
EOF
/usr/bin/python3 "$ROOT/scripts/plot.py" "$work/dp.jsonl" "$work/diloco-long.jsonl" --out "$work/plots" \
  --wall-clock "$ROOT/docs/pictures/diloco-slow-link.png" > /dev/null
echo "wrote docs/pictures/diloco-slow-link.png"
