#!/usr/bin/python3
# The scaling benchmark's measurement and model (run by scripts/bench-scaling.sh; Debian's python3,
# standard library only).
#
# For each configuration, every layout on 2 ranks and `train` run side by side, R times, each as two
# runs of S1 and S2 steps; a layout's µs/step is the slope of `training_seconds` between them (start-up,
# validation and the end of the run cancel out), its exposed communication the slope of its ledger's
# seconds in MPI (every collective here blocks, or is waited for, so all of it is exposed).
#
# The machine's limit for a layout, per rank r, is
#     compute_r + Σ_kinds (calls · α_kind + bytes / bandwidth_kind)
# with compute_r the rank's measured step time less its measured time in MPI (its share of the model,
# as it really ran), and α, bandwidth the collectives benchmark's fit, measured in the same run; the
# limit is the slowest rank's. A pipeline adds its ideal bubble: the slowest stage's compute times
# (M + N − 1)/M. Nothing is subtracted for overlap: the collectives are blocking, CPU MPI makes
# progress only inside MPI calls, and with two ranks on two cores there is no idle core where a
# communication thread could run for free. Efficiency = limit / measured.
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".build", "release")
MPIRUN = ["mpirun", "--oversubscribe", "--bind-to", "none"]

CONFIGS = [
    ("default (B 32, E 16, H 64)", [], (2000, 10000)),
    ("--emb 64 --hidden 1024 --batch-size 256", ["--emb", "64", "--hidden", "1024", "--batch-size", "256"], (10, 40)),
    ("same, --layers 4", ["--emb", "64", "--hidden", "1024", "--batch-size", "256", "--layers", "4"], (6, 24)),
]
# name, executable, ranks, extra flags, pipeline (stages, micro-batches) or None
LAYOUTS = [
    ("train", "train", 1, [], None),
    ("DP-2", "train_dp", 2, [], None),
    ("FSDP-2", "train_fsdp", 2, [], None),
    ("TP-2", "train_tp", 2, [], None),
    ("PP-2 M=8", "train_pp", 2, ["--micro-batches", "8"], (2, 8)),
    ("PP-2 M=8 batched W", "train_pp", 2, ["--micro-batches", "8", "--batch-weight-gradients"], (2, 8)),
    ("3D 2×1×1", "train_3d", 2, ["--tp", "2"], None),
    ("3D 1×2×1", "train_3d", 2, ["--dp", "2"], None),
    ("3D 1×1×2 M=8", "train_3d", 2, ["--pp", "2", "--micro-batches", "8"], (2, 8)),
]
# Ledger kind → the collectives benchmark's column that prices it (the algorithm Distributed runs).
PRICE = {
    "allreduce": "allreduce (mpi)",
    "stop_vote": "allreduce (mpi)",
    "allgather": "allgather (mpi)",
    "reduce_scatter": "reduce-scatter (ring)",
    "broadcast": "broadcast (mpi)",
    "recv": "send/recv (mpi, one way)",
}


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench-scaling: {' '.join(cmd)} failed:\n{out.stderr}")
    return out.stdout


def fits():
    """α (s) and bandwidth (B/s) per collective, from `mpirun -np 2 collectives`."""
    text = run(MPIRUN + ["-np", "2", os.path.join(BIN, "collectives"), "--max-bytes", str(32 << 20)])
    result = {}
    for line in text.splitlines():
        if "α =" in line and "bandwidth =" in line:
            name = line.split("α =")[0].strip()
            alpha = float(line.split("α =")[1].split("µs")[0]) * 1e-6
            bandwidth = float(line.split("bandwidth =")[1].split("GB/s")[0]) * 1e9
            result[name] = (alpha, bandwidth)
    return result, text


def measure(exe, ranks, flags, steps, data):
    """The final metrics record of one run."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "m.jsonl")
        cmd = [os.path.join(BIN, exe), "--data", data, "--steps", str(steps), "--log-every", str(steps),
               "--val-batches", "1", "--samples", "0", "--metrics", metrics] + flags
        run(cmd if ranks == 1 else MPIRUN + ["-np", str(ranks)] + cmd)
        with open(metrics) as f:
            return json.loads(f.read().splitlines()[-1])


def main():
    data, repeats = sys.argv[1], int(sys.argv[2])
    only = sys.argv[3] if len(sys.argv) > 3 else ""
    price, table = fits()
    print(table)
    for title, model, (s1, s2) in CONFIGS:
        if only and only not in title:
            continue
        samples = {name: [] for name, *_ in LAYOUTS}
        for _ in range(repeats):
            for name, exe, ranks, extra, pipe in LAYOUTS:
                a = measure(exe, ranks, model + extra, s1, data)
                b = measure(exe, ranks, model + extra, s2, data)
                steps = s2 - s1
                step = (b["training_seconds"] - a["training_seconds"]) / steps
                per_rank = []
                for ca, cb in zip(a["comm_per_rank"], b["comm_per_rank"]):
                    mpi = sum(cb[k]["seconds"] - ca[k]["seconds"] for k in cb) / steps
                    calls = {k: (cb[k]["calls"] - ca[k]["calls"]) / steps for k in cb}
                    nbytes = {k: (cb[k]["bytes"] - ca[k]["bytes"]) / steps for k in cb}
                    predicted = sum(calls[k] * price[PRICE[k]][0] + nbytes[k] / price[PRICE[k]][1]
                                    for k in cb if k in PRICE)
                    predicted += calls.get("send", 0) * price["send/recv (mpi, one way)"][0]
                    per_rank.append((step - mpi, mpi, predicted))
                if pipe:
                    n, m = pipe
                    compute = max(c for c, _, _ in per_rank)
                    limit = compute * (m + n - 1) / m + max(p for _, _, p in per_rank)
                else:
                    limit = max(c + p for c, _, p in per_rank)
                samples[name].append((step, per_rank[0][1], limit))
        print(f"\n{title} (2 ranks, µs/step: median of {repeats}, slope between {s1} and {s2} steps)")
        print("| layout | µs/step | speed-up | exposed comm µs | limit µs | limit speed-up | efficiency |")
        print("|---|---|---|---|---|---|---|")
        base = statistics.median(s for s, _, _ in samples["train"])
        for name, *_ in LAYOUTS:
            step = statistics.median(s for s, _, _ in samples[name])
            exposed = statistics.median(e for _, e, _ in samples[name])
            limit = statistics.median(l for _, _, l in samples[name])
            print(f"| {name} | {step * 1e6:.1f} | {base / step:.2f}× | {exposed * 1e6:.1f} | {limit * 1e6:.1f} | "
                  f"{base / limit:.2f}× | {limit / step:.0%} |")


if __name__ == "__main__":
    main()
