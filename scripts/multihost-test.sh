#!/usr/bin/env bash
# A real two-host MPI run on one machine: two Linux network namespaces ("hosts" A and B) joined
# by a veth pair, an mpirun in A that starts B's half of the job through an rsh agent
# (scripts/netns-rsh.sh, in place of ssh), and every byte between the hosts on TCP over the veth.
#
#   scripts/multihost-test.sh        (root; scripts/test.sh runs it after `swift test`)
#
# It trains with `train_fsdp` on 4 ranks (2 per host) and `train_3d --tp 2 --dp 1 --pp 2`, on names it writes itself, 200 steps, and checks that
#   - every step's loss equals single-rank `train`'s with the same flags to relative 1e-5
#     (compared by /usr/bin/python3), and
#   - the veth's byte counters grew by at least what the layout must send between the hosts;
# then it SIGKILLs a rank on host B in a long train_fsdp run and checks that the whole job ends
# (mpirun non-zero, nothing left running on either host) within 20 s; then it takes the veth down
# in a long train_fsdp run with --timeout 3 and checks that the watchdog ends it: a watchdog line
# from a rank on host A, mpirun non-zero, nothing left running on either host within 3 + 15 s.
# Prints a summary and exits 0; on failure prints one line starting "multihost-test: FAILED"
# and exits 1 (the run's files are kept and named). Without root or network namespaces it prints
# "skipped: <reason>" and exits 0.
#
# Network: 10.231.0.1/24 (A, veth psmh-va) and 10.231.0.2/24 (B, veth psmh-vb). These addresses
# exist only inside the two namespaces; nothing is routed to or from the machine's own network.
# Cleanup (processes in the namespaces, the namespaces, hence the veth) runs on every exit,
# Ctrl-C included, and also first thing, for the leftovers of an aborted run.
set -euo pipefail

# A caller that ran MPI_Init (a test runner, another mpirun) leaks OMPI_*/PMIX_* variables, and an
# mpirun that inherits them exits 1 without a word. Drop them before anything else.
while read -r var; do unset "$var"; done < <(compgen -e | grep -E '^(OMPI_|PMIX_)' || true)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NS_A=psmh-a NS_B=psmh-b
VETH_A=psmh-va VETH_B=psmh-vb
IP_A=10.231.0.1 IP_B=10.231.0.2 SUBNET=10.231.0.0/24
STEPS=200
RUN_TIMEOUT=45    # seconds per mpirun; each takes 1–3 s on 2 idle cores
WATCHDOG_TIMEOUT=3  # --timeout of the run whose wire is cut
started=$(date +%s.%N)

skip() { echo "skipped: $*"; exit 0; }
fail() { # one line; names the files of the run unless the message already does
  local msg="$*"
  if [ -n "${work:-}" ] && [ "${keep_work:-0}" != 2 ] && [[ "$msg" != *"$work"* ]]; then msg+=" (files kept in $work)"; fi
  echo "multihost-test: FAILED: $msg" >&2
  exit 1
}

# --- Can this machine do it at all? ---------------------------------------------------------------
[ "$(id -u)" = 0 ] || skip "not root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)"
if ! command -v ip >/dev/null 2>&1; then
  # iproute2 provides `ip netns`; Debian/Ubuntu images may lack it.
  echo "multihost-test: installing iproute2 (for ip netns)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2; } >/dev/null 2>&1 \
    || skip "iproute2 (ip netns) is missing and apt-get could not install it"
fi
for tool in unshare timeout flock; do command -v "$tool" >/dev/null || skip "'$tool' is missing"; done
[ -x /usr/bin/python3 ] || fail "/usr/bin/python3 is needed to compare the losses"
is_set_up || "$ROOT/scripts/setup.sh" >&2

# One run at a time on this machine: a second run's leftover cleanup would delete our namespaces.
lockdir=/run/lock
[ -d "$lockdir" ] && [ -w "$lockdir" ] || lockdir=/tmp
exec 9>"$lockdir/parallelisms-multihost.lock"
flock -w 150 9 || fail "another multihost-test.sh has held the lock for 150 s"

# --- Cleanup: now (leftovers of an aborted run) and on every exit ---------------------------------
work=""
keep_work=0
running=""   # PID of the `timeout` around a running mpirun (in the root namespace)
cleanup() {
  local ns pids
  if [ -n "$running" ]; then { kill -9 "$running"; wait "$running"; } 2>/dev/null || true; fi
  for ns in "$NS_A" "$NS_B"; do
    if ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF "$ns"; then
      # Everything still inside a "host": mpirun, orted, ranks, the rsh agent. Killed by PID.
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      if [ -n "$pids" ]; then
        kill -9 $pids 2>/dev/null || true
        for _ in $(seq 50); do
          pids=$(ip netns pids "$ns" 2>/dev/null || true)
          [ -z "$pids" ] && break
          sleep 0.1
        done
      fi
      # Deleting the namespace destroys the veth end inside it, and with it the pair.
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
  # An end that ever landed in the root namespace (not something this script does) goes too.
  ip link del "$VETH_A" 2>/dev/null || true
  if [ -n "$work" ] && [ "$keep_work" != 1 ]; then rm -rf "$work"; fi
}
on_exit() {
  local code=$?
  [ "$code" = 0 ] || [ "$keep_work" = 2 ] || keep_work=1
  cleanup
  exit "$code"
}
cleanup
trap on_exit EXIT
trap 'keep_work=2; fail "interrupted"' INT TERM   # nothing worth keeping from a cut-short run
# A command that fails at the top level (say `ip link add`) gets the one FAILED line too.
trap 'fail "line $LINENO: \"$BASH_COMMAND\" exited $?"' ERR

# --- Two hosts and a wire ---------------------------------------------------------------------------
err=$(ip netns add "$NS_A" 2>&1) || skip "cannot create network namespaces: $err"
ip netns add "$NS_B"
ip link add "$VETH_A" netns "$NS_A" type veth peer name "$VETH_B" netns "$NS_B"
ip -n "$NS_A" addr add "$IP_A/24" dev "$VETH_A"
ip -n "$NS_B" addr add "$IP_B/24" dev "$VETH_B"
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done   # MPI's local TCP traffic uses lo
# How soon a host notices that a wire is dead. mpirun and the remote daemon learn that a host is
# gone only when TCP gives up on unacknowledged data: after net.ipv4.tcp_retries2 retransmissions,
# 15 by default (about 15 minutes; clusters often lower it). 4 gives up after about 6 s, later
# than the watchdog (3 s) and early enough to end the job well within its 15 s. Per network
# namespace: the machine's own setting is untouched.
for ns in "$NS_A" "$NS_B"; do ip netns exec "$ns" sysctl -q -w net.ipv4.tcp_retries2=4; done
ip -n "$NS_A" link set "$VETH_A" up
ip -n "$NS_B" link set "$VETH_B" up

work=$(mktemp -d /tmp/psmh.XXXXXX)

# orted in B must connect back to mpirun in A (mpirun does not dial out to its daemons), so check
# that direction before any MPI: a listener on A's address, a connection from B. Retried briefly
# because a fresh veth takes a moment to come up.
reach_back() {
  ip netns exec "$NS_A" timeout 5 /usr/bin/python3 -c '
import socket, sys
s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.sendall(b"ok\n")' "$IP_A" > "$work/port" &
  local listener=$! port="" reply=""
  for _ in $(seq 50); do port=$(cat "$work/port" 2>/dev/null || true); [ -n "$port" ] && break; sleep 0.1; done
  for _ in $(seq 30); do
    reply=$(ip netns exec "$NS_B" timeout 2 bash -c "exec 3<>/dev/tcp/$IP_A/$port && head -n1 <&3" 2>/dev/null || true)
    [ "$reply" = ok ] && break
    sleep 0.1
  done
  wait "$listener" 2>/dev/null || true
  [ "$reply" = ok ]
}
reach_back || fail "host B ($IP_B) cannot open a TCP connection to host A ($IP_A) over the veth"

# The hostfile: the same format as on a real cluster (see hostfiles/example-two-hosts), with the
# hosts named by their IPs; netns-rsh.sh finds the namespace that owns each IP.
cat > "$work/hostfile" <<EOF
# generated by scripts/multihost-test.sh: two network-namespace "hosts", 2 slots each
$IP_A slots=2
$IP_B slots=2
EOF

# --- Data: 400 made-up names, deterministic (a Lehmer generator in awk, no srand) -----------------
awk 'BEGIN {
  n = split("ka ri mo la ne so ta vi ha el an jo mi ru be da on is lu ce ya fe", syl, " ")
  split("n s a e y h l r", tail, " ")
  x = 12345
  for (i = 0; i < 400; i++) {
    x = (x * 16807) % 2147483647; k = 2 + x % 3; name = ""
    for (j = 0; j < k; j++) { x = (x * 16807) % 2147483647; name = name syl[1 + x % n] }
    x = (x * 16807) % 2147483647; if (x % 2) name = name tail[1 + x % 8]
    print name
  }
}' > "$work/names.txt"

# Short runs: 200 steps, few validation batches, no samples; the same flags for every executable.
FLAGS=(--data "$work/names.txt" --steps "$STEPS" --val-batches 10 --samples 0 --log-every 100)
BATCH=32   # the default --batch-size

# --- The reference: single-rank train --------------------------------------------------------------
"$BIN/train" "${FLAGS[@]}" --metrics "$work/train.jsonl" > "$work/train.log" 2>&1 \
  || fail "train (reference) exited $?: see $work/train.log"
# Ψ, the parameter count, from train's first line ("..., 17501 parameters, ...").
params=$(grep -oE '[0-9]+ parameters' "$work/train.log" | head -n1 | cut -d' ' -f1)
[ -n "$params" ] || fail "train did not print its parameter count: see $work/train.log"

# --- The multi-host runs ---------------------------------------------------------------------------
veth_bytes() { # tx rx of A's veth end, read inside A
  echo "$(ip netns exec "$NS_A" cat "/sys/class/net/$VETH_A/statistics/tx_bytes")" \
       "$(ip netns exec "$NS_A" cat "/sys/class/net/$VETH_A/statistics/rx_bytes")"
}

# mpirun in A, under its own host name, with the rsh agent for B:
#   btl tcp,self          ranks talk over TCP only: shared memory (vader) would carry data
#                         between ranks that share /dev/shm, which our two "hosts" do;
#   *_tcp_if_include      MPI traffic and mpirun↔orted traffic on the veth subnet only;
#   plm_rsh_no_tree_spawn mpirun starts every orted itself (B's orted would need the agent too);
#   mpi_yield_when_idle   4 ranks share 2 cores here; without yielding a rank that busy-polls
#                         starves the one it waits for (90 ms/step instead of ~1.5 ms).
multihost_start() { # name exe args... → runs in the background ($running), output in $work/$name.log
  local name=$1 exe=$2; shift 2
  local cmd=(mpirun --hostfile "$work/hostfile" -np 4 --bind-to none
             --mca plm_rsh_agent "$ROOT/scripts/netns-rsh.sh" --mca plm_rsh_no_tree_spawn 1
             --mca btl tcp,self --mca btl_tcp_if_include "$SUBNET" --mca oob_tcp_if_include "$SUBNET"
             --mca mpi_yield_when_idle 1
             "$BIN/$exe" "$@")
  # In the background and `wait`ed for, so that Ctrl-C or a TERM runs the cleanup at once (bash
  # defers traps until a foreground child ends, and `timeout` keeps its own process group).
  timeout -k 5 "$RUN_TIMEOUT" ip netns exec "$NS_A" unshare --uts \
    /bin/sh -c 'hostname "$1"; shift; exec "$@"' sh "$NS_A" "${cmd[@]}" > "$work/$name.log" 2>&1 &
  running=$!
}

multihost_run() { # name exe flags... → the 200-step run; metrics in $work/$name.jsonl
  local name=$1 exe=$2 rc=0; shift 2
  multihost_start "$name" "$exe" "${FLAGS[@]}" "$@" --metrics "$work/$name.jsonl"
  wait "$running" || rc=$?
  running=""
  [ "$rc" = 124 ] && fail "$name: mpirun did not finish within $RUN_TIMEOUT s: see $work/$name.log"
  [ "$rc" = 0 ] || fail "$name: mpirun exited $rc: see $work/$name.log"
}

# Losses of every step against train's, relative 1e-5; prints the worst relative difference.
compare_losses() { # name
  /usr/bin/python3 - "$work/train.jsonl" "$work/$1.jsonl" "$STEPS" <<'EOF'
import json, sys
def losses(path):
    out = []
    for line in open(path):
        record = json.loads(line)
        if "step" in record:
            if record["step"] != len(out): sys.exit(f"{path}: step {record['step']} out of order")
            out.append(record["loss"])
    return out
ref, got, steps = losses(sys.argv[1]), losses(sys.argv[2]), int(sys.argv[3])
if len(ref) != steps or len(got) != steps: sys.exit(f"expected {steps} losses, got {len(got)} (train: {len(ref)})")
worst, at = 0.0, 0
for i, (a, b) in enumerate(zip(got, ref)):
    if a is None or b is None: sys.exit(f"non-finite loss at step {i}")
    r = abs(a - b) / abs(b)
    if not r <= worst: worst, at = r, i
if not worst <= 1e-5: sys.exit(f"loss differs from train's by {worst:.3g} (relative) at step {at}: {got[at]} vs {ref[at]}")
print(f"{worst:.2g}")
EOF
}

summary=()
check_layout() { # name min_bytes_each_way why exe flags...
  local name=$1 min=$2 why=$3; shift 3
  local tx0 rx0 tx1 rx1 t0 t1 worst
  read -r tx0 rx0 <<< "$(veth_bytes)"
  t0=$(date +%s.%N)
  multihost_run "$name" "$@"
  t1=$(date +%s.%N)
  read -r tx1 rx1 <<< "$(veth_bytes)"
  worst=$(compare_losses "$name" 2>&1) || fail "$name: $worst"
  local tx=$((tx1 - tx0)) rx=$((rx1 - rx0))
  [ "$tx" -ge "$min" ] && [ "$rx" -ge "$min" ] \
    || fail "$name: only $tx bytes A→B and $rx bytes B→A crossed the veth; at least $min each way expected ($why)"
  summary+=("$(printf '%-26s %5.1f s   losses = train (worst rel. diff %s)   veth A→B %d B, B→A %d B (≥ %d: %s)' \
    "$name" "$(awk "BEGIN {print $t1 - $t0}")" "$worst" "$tx" "$rx" "$min" "$why")")
}

# FSDP, 2 ranks per host: each host owns half of every tensor's shards. Per step, each host must
# receive the other's half of the parameters for the forward allgather and again for the backward
# one, and the other's contribution to the gradient of its own half (reduce-scatter): at least
# 3 · Ψ/2 floats = 6Ψ bytes each way per step, whatever algorithm MPI picks.
check_layout train_fsdp $((STEPS * 6 * params)) "6Ψ per step, Ψ=$params" train_fsdp

# 3D with tp 2 · dp 1 · pp 2: each host is one pipeline stage (tensor-parallel pairs are rank
# neighbours, on the same host). Each step, activations go A→B and their gradients B→A: at least
# one float per example of the batch each way.
if [ -x "$BIN/train_3d" ]; then
  # 2 stages of blocks [embedding, fc1] | [head]: ranks 0-1 (host A) hold the first, 2-3 (host B)
  # the second. Each tp lane sends its B × hidden/2 slice of fc1's output to B and receives its
  # gradient back: B × hidden floats each way per step across the veth (hidden 64, the default).
  check_layout "train_3d tp2 dp1 pp2" $((STEPS * BATCH * 64 * 4)) "B × hidden floats per step each way" train_3d --tp 2 --dp 1 --pp 2
else
  summary+=("train_3d                   not built yet ($BIN/train_3d): skipped")
fi

# A rank on host B dies (SIGKILL) in the middle of a long run: B's orted reports it, mpirun on A
# aborts the job; it must exit non-zero within 20 s with no process left on either host.
kill_remote_rank() {
  local name="train_fsdp rank 3 killed" victim="" p rc=0 t0 t1 tx0 tx _
  read -r tx0 _ <<< "$(veth_bytes)"
  multihost_start kill train_fsdp --data "$work/names.txt" --steps 10000000 --samples 0 --log-every 100000000
  # Training is under way once 20 steps' worth of FSDP traffic (6Ψ bytes each, see above) has
  # crossed the veth: start-up only exchanges a few kilobytes. (Rank 0's metrics file would tell
  # too, but only after ~2000 steps fill its buffer: too long on a loaded machine.)
  for _ in $(seq 300); do
    read -r tx _ <<< "$(veth_bytes)"
    [ $((tx - tx0)) -ge $((20 * 6 * params)) ] && break
    kill -0 "$running" 2>/dev/null || break
    sleep 0.1
  done
  [ $((tx - tx0)) -ge $((20 * 6 * params)) ] || fail "$name: the long run did not start training within 30 s: see $work/kill.log"
  for p in $(ip netns pids "$NS_B"); do
    if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=3; then victim=$p; fi
  done
  [ -n "$victim" ] || fail "$name: no process with OMPI_COMM_WORLD_RANK=3 in namespace $NS_B"
  t0=$(date +%s.%N)
  kill -9 "$victim"
  for _ in $(seq 200); do kill -0 "$running" 2>/dev/null || break; sleep 0.1; done
  t1=$(date +%s.%N)
  kill -0 "$running" 2>/dev/null && fail "$name: mpirun still running 20 s after the kill: see $work/kill.log"
  wait "$running" || rc=$?
  running=""
  [ "$rc" != 0 ] || fail "$name: mpirun exited 0 although a rank was killed"
  # B's orted may outlive mpirun by a moment; all must be gone within the same 20 s. (ip netns
  # pids lists live processes only: an exited, unreaped one has no namespace left.)
  local left=""
  while :; do
    left=$(ip netns pids "$NS_A"; ip netns pids "$NS_B")
    [ -z "$left" ] && break
    awk "BEGIN {exit !($(date +%s.%N) - $t0 > 20)}" && fail "$name: still running 20 s after the kill: $(echo $left)"
    sleep 0.1
  done
  t1=$(date +%s.%N)
  summary+=("$(printf '%-26s job over %.1f s after SIGKILL of a rank on host B (mpirun exit %d, no process left)' \
    "$name" "$(awk "BEGIN {print $t1 - $t0}")" "$rc")")
}
kill_remote_rank

# The wire dies in the middle of a long run (A's end of the veth taken down): no process dies, so
# MPI's runtime notices nothing, and without the watchdog every rank would spin in its collective
# for ever. With --timeout, each rank's watchdog ends it with one line; A's lines reach mpirun's
# output (B's stderr travels over the dead wire and is lost), and the job must end (mpirun
# non-zero) with nothing left running on either host within the timeout + 15 s.
veth_down() {
  local name="train_fsdp veth down" rc=0 t0 t1 t2 tx0 tx _ line left=""
  read -r tx0 _ <<< "$(veth_bytes)"
  multihost_start vethdown train_fsdp --data "$work/names.txt" --steps 10000000 --samples 0 --log-every 100000000 \
    --timeout "$WATCHDOG_TIMEOUT"
  for _ in $(seq 300); do   # training is under way: as in kill_remote_rank
    read -r tx _ <<< "$(veth_bytes)"
    [ $((tx - tx0)) -ge $((20 * 6 * params)) ] && break
    kill -0 "$running" 2>/dev/null || break
    sleep 0.1
  done
  [ $((tx - tx0)) -ge $((20 * 6 * params)) ] || fail "$name: the long run did not start training within 30 s: see $work/vethdown.log"
  t0=$(date +%s.%N)
  ip -n "$NS_A" link set "$VETH_A" down
  local limit=$((WATCHDOG_TIMEOUT + 15))
  while kill -0 "$running" 2>/dev/null; do
    awk "BEGIN {exit !($(date +%s.%N) - $t0 > $limit)}" && fail "$name: mpirun still running $limit s after the veth went down: see $work/vethdown.log"
    sleep 0.1
  done
  t1=$(date +%s.%N)
  wait "$running" || rc=$?
  running=""
  [ "$rc" != 0 ] || fail "$name: mpirun exited 0 although the wire between the hosts was down"
  line=$(grep -m1 -E "^error: watchdog: rank [0-3] \(host $NS_A\) stuck [0-9.]+ s in .+ on axis (shard|world) \(4 ranks\) at step [0-9]+, waiting for .+ \(--timeout $WATCHDOG_TIMEOUT s\); ending the job$" \
    "$work/vethdown.log") || fail "$name: no watchdog line from a rank on host A: see $work/vethdown.log"
  while :; do
    left=$(ip netns pids "$NS_A"; ip netns pids "$NS_B")
    [ -z "$left" ] && break
    awk "BEGIN {exit !($(date +%s.%N) - $t0 > $limit)}" && fail "$name: still running $limit s after the veth went down: $(echo $left)"
    sleep 0.1
  done
  t2=$(date +%s.%N)
  ip -n "$NS_A" link set "$VETH_A" up
  summary+=("$(printf '%-26s veth down: mpirun ended %.1f s later (exit %d), the last process %.1f s (--timeout %d); %s' \
    "$name" "$(awk "BEGIN {print $t1 - $t0}")" "$rc" "$(awk "BEGIN {print $t2 - $t0}")" "$WATCHDOG_TIMEOUT" "${line:0:80}…")")
}
veth_down

elapsed=$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $started}")
echo "multihost-test: OK in $elapsed s: 2 hosts (netns $NS_A $IP_A, $NS_B $IP_B over veth), 4 ranks, $STEPS steps"
printf '  %s\n' "${summary[@]}"
