#!/usr/bin/python3
# The planner's check (run by scripts/plan-check.sh; Debian's python3, standard library only).
#
# 1. Calibrates the cost model on this machine and writes .build/plan-calibration.json:
#    - update: `peak --model`'s median time to zero the gradients and run one SGD / Adam update of
#      the check's model, per parameter (the per-step pass that does not shrink with the batch);
#    - compute: `train` (one rank) for the check's configuration at batch B, B/2, …, B/32, its
#      µs/step measured as the layouts' are (below) less that update, as (rows, FLOPs per step from
#      `peak --model`, FLOP/s) points: the rate of the chain's forward and backward alone;
#    - experts: the FLOP/s of the experts' products by rows per expert, from `train --experts 4
#      --top-k 2` on one rank at B, B/2, B/4, less what the planner charges for the rest of its step;
#    - collectives: the α–β fit of `mpirun -np 2 collectives` per kind (reduce-scatter: the ring,
#      which Distributed runs from 16 KB; send: the one-way ping-pong; all-to-all for both of train_ep's
#      kinds), from the fastest of --repeats runs at each size, one run per round of step 2, with those
#      points from 1 KB up (the planner reads a call's time off them inside their range).
# 2. Runs every layout of LAYOUTS --repeats times for S2 steps, logging every S1, round robin over the
#    layouts (each round starts with a run of the collectives benchmark): a run's µs/step is the median
#    of its progress lines' µs/step over the windows after the first (which holds the start-up: on a
#    busy machine the ranks reach their first collective seconds apart), and the layout's the fastest
#    of its runs (the machine undisturbed, as calibrated).
# 3. Prints the planner's prediction for the same layout (`plan --json`) against the measurement, and
#    how many are within ±30%. Layouts with more ranks than cores are printed but not counted: the
#    cost model gives oversubscribed ranks their share of the cores for compute only, and a rank
#    spinning in a blocking collective takes a core from one that computes (see the README).
import json
import re
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".build", "release")
CALIBRATION = os.path.join(ROOT, ".build", "plan-calibration.json")
MPIRUN = ["mpirun", "--oversubscribe", "--bind-to", "none"]
MODEL = ["--emb", "32", "--hidden", "512", "--layers", "3", "--batch-size", "64"]
STEPS = (50, 300)
# executable, ranks, flags, the planner's command for it
EXPERTS = ["--experts", "4"]
LAYOUTS = [
    ("train_dp", 2, [], "train_dp -np 2"),
    ("train_dp", 2, ["--recompute"], "train_dp -np 2 --recompute"),
    ("train_fsdp", 2, [], "train_fsdp -np 2"),
    ("train_fsdp", 2, ["--zero", "1"], "train_fsdp -np 2 --zero 1"),
    ("train_fsdp", 2, ["--zero", "2"], "train_fsdp -np 2 --zero 2"),
    ("train_tp", 2, [], "train_tp -np 2"),
    ("train_tp", 2, ["--sequence-parallel"], "train_tp -np 2 --sequence-parallel"),
    ("train_pp", 2, ["--micro-batches", "8"], "train_pp -np 2 --schedule 1f1b --micro-batches 8"),
    ("train_pp", 2, ["--micro-batches", "4", "--schedule", "gpipe"], "train_pp -np 2 --schedule gpipe --micro-batches 4"),
    ("train_pp", 2, ["--micro-batches", "8", "--schedule", "zb1p"], "train_pp -np 2 --schedule zb1p --micro-batches 8"),
    ("train_pp", 2, ["--micro-batches", "8", "--schedule", "interleaved", "--virtual-stages", "2"],
     "train_pp -np 2 --schedule interleaved --virtual-stages 2 --micro-batches 8"),
    # Mixtures of experts (4 experts per hidden block): K = 4 routes every row to every expert, so
    # the all-to-all bytes are known; K = 2 is planned for uniform routing.
    ("train_dp", 2, EXPERTS + ["--top-k", "2"], "train_dp -np 2"),
    ("train_ep", 2, EXPERTS + ["--top-k", "2", "--ep", "2"], "train_ep -np 2 --ep 2"),
    ("train_ep", 2, EXPERTS + ["--top-k", "4", "--ep", "2"], "train_ep -np 2 --ep 2"),
    ("train_dp", 4, [], "train_dp -np 4"),
    ("train_3d", 4, ["--tp", "2", "--dp", "2"], "train_3d -np 4 --tp 2 --dp 2 --pp 1 --micro-batches 1"),
]
FITS = {  # the collectives benchmark's series → the calibration's key
    "allreduce (mpi)": "allreduce",
    "allgather (mpi)": "allgather",
    "reduce-scatter (ring)": "reduce_scatter",
    "broadcast (mpi)": "broadcast",
    "send/recv (mpi, one way)": "send",
    # train_ep's counts (equal blocks) and rows (per-peer blocks): both priced by the all-to-all fit
    "all-to-all (mpi)": ("all_to_all", "all_to_all_v"),
}


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"plan-check: {' '.join(cmd)} failed:\n{out.stderr}")
    return out.stdout


def option(flags, name):
    return int(flags[flags.index(name) + 1])


def collectives_run():
    """One run of the collectives benchmark on 2 ranks: its stdout."""
    return run(MPIRUN + ["-np", "2", os.path.join(BIN, "collectives"), "--max-bytes", str(4 << 20), "--seconds", "0.1"])


def fit_collectives(runs):
    """The calibration's collectives from several benchmark runs: per kind, the fastest of each
    point over the runs, the α–β fit of those points, and the points from 1 KB up."""
    header = next(line for line in runs[0].splitlines() if line.startswith("bytes "))
    names = re.split(r"\s{2,}", header.strip())[1:]  # the series, in table order
    table = {}  # (series, bytes) → seconds of each run
    for text in runs:
        for line in text.splitlines():
            cells = line.split()
            if cells and cells[0].isdigit() and len(cells) == len(names) + 1:
                for name, cell in zip(names, cells[1:]):
                    if cell != "—":
                        table.setdefault((name, int(cells[0])), []).append(float(cell) * 1e-6)
    collectives = {}
    for name, keys in FITS.items():
        points = sorted([float(b), min(t)] for (n, b), t in table.items() if n == name)
        fit = [(b, t) for b, t in points if t > 0]
        # α–β by least squares of the relative error (weights 1/t²), as `collectives` fits it.
        sw = sum(1 / t ** 2 for b, t in fit); swb = sum(b / t ** 2 for b, t in fit); swbb = sum(b * b / t ** 2 for b, t in fit)
        swt = sum(1 / t for b, t in fit); swbt = sum(b / t for b, t in fit)
        det = sw * swbb - swb * swb
        alpha, beta = (swt * swbb - swb * swbt) / det, (sw * swbt - swb * swt) / det
        for key in (keys if isinstance(keys, tuple) else (keys,)):
            collectives[key] = {"alpha_us": max(0.0, alpha * 1e6), "gb_per_s": 1 / beta / 1e9,
                                "points": [p for p in points if p[0] >= 1024 and p[1] > 0]}  # from 1 KB: below, µs of noise
    return collectives


def calibrate_compute(data, repeats):
    """The calibration's compute points and update costs (see the top of this file)."""
    compute = []
    batch = option(MODEL, "--batch-size")
    update = None
    while batch >= 2:
        flags = [f for f in MODEL]
        flags[flags.index("--batch-size") + 1] = str(batch)
        out = run([os.path.join(BIN, "peak"), "--model", "--steps-only", "--no-peak", "--repeats", "15"] + flags)
        flops = float(out.split("flops_per_step:")[1].split("MFLOP")[0]) * 1e6
        if update is None:  # the same parameters at every batch size: measured once
            parameters = int(re.search(r"(\d+) parameters", out).group(1))
            update = {kind: float(us) * 1e-6 / parameters for kind, us in re.findall(r"update_us_(\w+): ([\d.]+)", out)}
        seconds = step_time("train", 1, flags, data, repeats)
        chain = seconds - update["sgd"] * parameters  # the check runs SGD, train's default
        if chain <= 0:
            sys.exit(f"plan-check: train at batch {batch} took {seconds * 1e6:.0f} µs/step, less than its update alone")
        compute.append({"rows": batch, "flops_per_step": flops, "flops_per_second": flops / chain})
        batch //= 2
    return compute, update


def write_calibration(compute, update, collectives, experts=None):
    calibration = {"cores": os.cpu_count(), "ranks": 2, "compute": compute, "collectives": collectives,
                   "update_seconds_per_parameter": update}
    if experts:
        calibration["experts"] = experts
    with open(CALIBRATION, "w") as f:
        json.dump(calibration, f, indent=1)
    return calibration


def calibrate_experts(data, repeats, compute, update):
    """The experts' products' FLOP/s by rows per expert: `train` with the check's experts (K = 2 of
    4) on one rank at batch B, B/2 and B/4, less what the planner charges for the rest of its step
    (the chain's other blocks at the compute points' rate, and the update), over the experts' FLOPs.
    Each expert computes B·K/E rows there."""
    write_calibration(compute, update, {})  # provisional: what `plan` needs to price one rank
    points = []
    batch = option(MODEL, "--batch-size")
    for b in (batch, batch // 2, batch // 4):
        flags = [f for f in MODEL] + EXPERTS + ["--top-k", "2"]
        flags[flags.index("--batch-size") + 1] = str(b)
        entry = json.loads(run([os.path.join(BIN, "plan"), "--data", data, "--ranks", "1", "--json"] + flags))["layouts"][0]
        rest = (entry["compute_us"] - entry["expert_us"]) * 1e-6
        seconds = step_time("train", 1, flags, data, repeats)
        if seconds <= rest:
            sys.exit(f"plan-check: train {' '.join(flags)} took {seconds * 1e6:.0f} µs/step, less than its blocks without the experts")
        points.append({"rows": b * 2 // int(EXPERTS[1]), "flops_per_step": entry["expert_flops"],
                       "flops_per_second": entry["expert_flops"] / (seconds - rest)})
    return points


def windows(exe, ranks, flags, data):
    """µs/step of each --log-every window of one run of STEPS[1] steps, but the first (which holds the
    start-up: the ranks reach their first collective at different times on a busy machine)."""
    steps, every = STEPS[1], STEPS[0]
    cmd = [os.path.join(BIN, exe), "--data", data, "--steps", str(steps), "--log-every", str(every),
           "--val-batches", "1", "--samples", "0"] + flags
    out = run(cmd if ranks == 1 else MPIRUN + ["-np", str(ranks)] + cmd)
    times = [float(line.split("µs/step")[0].split()[-1]) * 1e-6 for line in out.splitlines() if "µs/step" in line]
    return times[1:]


def step_time(exe, ranks, flags, data, repeats):
    """Seconds per step: the fastest of --repeats runs, each the median of its windows after the first.

    The machine is shared, and its neighbours slow it down for tens of seconds at a time (the same
    binary took 2.8 ms/step in one run and 4.8 in the next): the check compares the model with the
    machine undisturbed, as the calibration measures it, and the first window holds the start-up."""
    return min(statistics.median(windows(exe, ranks, flags, data)) for _ in range(repeats))


def main():
    data, repeats = sys.argv[1], int(sys.argv[2])
    compute, update = calibrate_compute(data, repeats)
    experts = calibrate_experts(data, repeats, compute, update)
    # Round robin: repeat r of every layout (and one run of the collectives benchmark) before repeat
    # r + 1 of any, so a minute in which the shared machine runs slow costs every layout one repeat
    # instead of one layout all of them; the calibration's collectives come from runs spread the same way.
    times = [[] for _ in LAYOUTS]
    benchmarks = []
    for _ in range(repeats):
        benchmarks.append(collectives_run())
        for i, (exe, ranks, flags, command) in enumerate(LAYOUTS):
            times[i].append(statistics.median(windows(exe, ranks, MODEL + flags, data)))
    calibration = write_calibration(compute, update, fit_collectives(benchmarks), experts)
    print(f"calibration ({CALIBRATION}): {calibration['cores']} cores; compute "
          + ", ".join(f"{p['flops_per_step'] / 1e6:.1f} MFLOP at {p['flops_per_second'] / 1e9:.1f} GFLOP/s" for p in calibration["compute"])
          + "; experts " + ", ".join(f"{p['rows']} rows at {p['flops_per_second'] / 1e9:.1f} GFLOP/s" for p in calibration["experts"])
          + "; update " + ", ".join(f"{k} {v * 1e9:.2f} ns/parameter" for k, v in calibration["update_seconds_per_parameter"].items())
          + "; " + ", ".join(f"{k} α {v['alpha_us']:.1f} µs {v['gb_per_s']:.2f} GB/s" for k, v in calibration["collectives"].items()))

    def model_flags(flags):
        """The configuration flags of a layout's run (the model's, and its experts'): what `plan` needs."""
        extra = []
        for name in ("--experts", "--top-k"):
            if name in flags:
                extra += [name, flags[flags.index(name) + 1]]
        return extra

    plans = {}
    for ranks, extra in sorted({(r, tuple(model_flags(f))) for _, r, f, _ in LAYOUTS}):
        out = run([os.path.join(BIN, "plan"), "--data", data, "--ranks", str(ranks), "--json", "--metrics"] + MODEL + list(extra))
        plans.update({(entry["command"], extra): entry for entry in json.loads(out)["layouts"]})
    s1, s2 = STEPS
    print(f"\nplan-check: {' '.join(MODEL)}; measured µs/step = the fastest of {repeats} runs of {s2} steps (round robin), "
          f"each the median of its {s1}-step windows after the first")
    print("| layout | predicted µs/step (compute + comm, bubble) | measured µs/step | predicted / measured |")
    print("|---|---|---|---|")
    within = counted = 0
    for i, (exe, ranks, flags, command) in enumerate(LAYOUTS):
        measured = min(times[i])
        entry = plans[(command, tuple(model_flags(flags)))]
        predicted = entry["predicted_us"]
        ratio = predicted / (measured * 1e6)
        oversubscribed = ranks > calibration["cores"]
        if not oversubscribed:
            counted += 1
            within += abs(ratio - 1) <= 0.3
        label = command + "".join(f" {x}" for x in model_flags(flags))
        print(f"| `{label}` | {predicted:.0f} ({entry['compute_us']:.0f} + {entry['communication_us']:.0f}, "
              f"{entry['bubble']:.0%}) | {measured * 1e6:.0f} | {ratio:.2f}"
              f"{' (oversubscribed: not counted)' if oversubscribed else ''} |", flush=True)
    print(f"\n{within} of {counted} layouts within ±30% ({len(LAYOUTS) - counted} oversubscribed, not counted)")


if __name__ == "__main__":
    main()
