#!/usr/bin/python3
# Plots from --metrics files (JSON Lines written by every executable), and timelines from --trace files.
#
#   scripts/plot.py METRICS.jsonl... --out DIR [--reference train.jsonl] [--wall-clock FILE.png]
#   scripts/plot.py timeline TRACE.json --out DIR [--steps K] [--name NAME] [--title TEXT]
#
# Uses Debian's python3-matplotlib (hence /usr/bin/python3, not the pyenv python on PATH);
# scripts/setup.sh installs it. Each file's label is its name without .jsonl. Writes:
#   DIR/loss.png    the loss curves overlaid (they should coincide), with the validation loss
#                   (--val-every's {"step","val_loss"} records) dashed in the same colour, and below, each layout's
#                   |relative difference| from the reference (train.jsonl, or --reference), worst
#                   per window, on a log scale, with the 1e-5 test tolerance dotted
#   DIR/speed.png   µs per training step per layout (training_seconds / train_steps)
#   DIR/comm.png    bytes per step by kind of communication, per layout (rank 0 and all ranks)
#   FILE.png        with --wall-clock: each run's validation loss against training seconds (step ×
#                   training_seconds / train_steps), for layouts that train different models at
#                   different speeds (scripts/slow-link.sh: DP against DiLoCo on a slow link)
# The timeline mode writes DIR/NAME.png (NAME: the trace's file name without .json): a Gantt chart of
# the first K traced steps (default 2), two rows per rank (compute above, communication below),
# boxes coloured by kind (the outermost event of each row: a pipeline's micro-batches, else
# blocks), and an arrow from each send to its receive.
import argparse
import json
import os
import sys

try:
    import matplotlib
except ImportError:
    sys.exit("plot.py: needs Debian's python3-matplotlib for /usr/bin/python3: "
             "run scripts/setup.sh (or apt-get install python3-matplotlib)")

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KINDS = ["allreduce", "allgather", "reduce_scatter", "send", "recv", "broadcast"]


def read(path):
    """(steps, training losses, final record); the final record's "validation" holds the
    --val-every curve as (steps, validation losses)."""
    steps, losses, final = [], [], None
    validation = ([], [])
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "loss" in record and "step" in record:
                steps.append(record["step"])
                losses.append(record["loss"])
            elif "val_loss" in record and "step" in record:
                validation[0].append(record["step"])
                validation[1].append(record["val_loss"])
            elif "val_loss" in record:
                final = record
    if final is None:
        sys.exit(f"error: {path} has no final record (was the run complete?)")
    final["validation"] = validation
    return steps, losses, final


COMPUTE_COLOURS = {"forward": "#4c72b0", "backward": "#dd8452", "weight": "#55a868", "loss": "#8172b3", "update": "#937860"}
COMM_COLOURS = {"allreduce": "#c44e52", "allgather": "#64b5cd", "reduce_scatter": "#da8bc3", "send": "#8c8c8c",
                "recv": "#b0b0b0", "broadcast": "#ccb974", "stop_vote": "#e0e0e0", "all_to_all": "#17becf",
                "all_to_all_v": "#2ca02c", "other": "#d0d0d0"}


def outermost(events):
    """The events of one row not inside another (sorted by start)."""
    kept, reach = [], -1.0
    for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
        if e["ts"] >= reach - 2e-3:
            kept.append(e)
            reach = e["ts"] + e["dur"]
    return kept


def timeline(argv):
    parser = argparse.ArgumentParser(prog="plot.py timeline")
    parser.add_argument("trace")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=2, help="traced steps to draw (from the window's first)")
    parser.add_argument("--name", help="the PNG's name (default: the trace's file name)")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    with open(args.trace) as f:
        trace = json.load(f)
    events = trace["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    ranks = sorted(names)
    markers = sorted(e["ts"] for e in events if e.get("cat") == "step" and e["pid"] == ranks[0])
    start = markers[0] if markers else 0.0
    end = markers[args.steps] if len(markers) > args.steps else max(e["ts"] + e.get("dur", 0) for e in events)
    fig, ax = plt.subplots(figsize=(11, 0.9 + 0.75 * len(ranks)))
    row = lambda pid, tid: 2 * (len(ranks) - 1 - ranks.index(pid)) + (1 - tid)  # rank 0 on top, compute above
    used = set()
    for pid in ranks:
        for tid, colours in ((0, COMPUTE_COLOURS), (1, COMM_COLOURS)):
            mine = [e for e in events if e["ph"] == "X" and e["pid"] == pid and e["tid"] == tid
                    and e["ts"] < end and e["ts"] + e["dur"] > start]
            for e in outermost(mine):
                colour = colours.get(e.get("cat"), "#999999")
                used.add((tid, e.get("cat")))
                x, w = e["ts"] - start, max(e["dur"], 0.2)
                ax.broken_barh([(x, w)], (row(pid, tid) + 0.1, 0.8), facecolors=colour, edgecolor="white", linewidth=0.3)
                mb = e.get("args", {}).get("micro_batch", -1)
                if tid == 0 and mb is not None and mb >= 0 and e.get("args", {}).get("level") == "micro-batch" and w > (end - start) / 120:
                    ax.text(x + w / 2, row(pid, tid) + 0.5, str(mb), ha="center", va="center", fontsize=6, color="white")
    # Arrows from each send to its receive.
    flows = {}
    for e in events:
        if e["ph"] in ("s", "f"):
            flows.setdefault(e["id"], {})[e["ph"]] = e
    for pair in flows.values():
        if "s" in pair and "f" in pair and start <= pair["s"]["ts"] < end:
            a, b = pair["s"], pair["f"]
            ax.annotate("", xy=(b["ts"] - start, row(b["pid"], 1) + 0.5), xytext=(a["ts"] - start, row(a["pid"], 1) + 0.5),
                        arrowprops=dict(arrowstyle="->", color="black", linewidth=0.4, alpha=0.6))
    for m in markers[1 : args.steps]:
        ax.axvline(m - start, color="black", linestyle=":", linewidth=0.6)
    ax.set_yticks([row(pid, tid) + 0.5 for pid in ranks for tid in (0, 1)])
    ax.set_yticklabels([f"{names[pid]} {'compute' if tid == 0 else 'comm'}" for pid in ranks for tid in (0, 1)], fontsize=7)
    ax.set_xlim(0, end - start)
    ax.set_xlabel("µs since the window's start (rank 0's clock)")
    from matplotlib.patches import Patch
    handles = [Patch(color=(COMPUTE_COLOURS if t == 0 else COMM_COLOURS).get(c, "#999999"), label=c)
               for t, c in sorted(used, key=lambda u: (u[0], str(u[1])))]
    ax.legend(handles=handles, fontsize=6, ncol=min(len(handles), 8), loc="upper center", bbox_to_anchor=(0.5, -0.25 - 0.1 / len(ranks)),
              frameon=False)
    pipeline = trace.get("otherData", {}).get("trace", {}).get("pipeline")
    title = args.title or os.path.basename(args.trace)
    if pipeline and not args.title:
        title += f" — ideal bubble {100 * pipeline['ideal_bubble']:.1f}%, measured not computing " + \
            " / ".join(f"{100 * x:.1f}%" for x in pipeline["measured_not_computing"])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    name = args.name or os.path.basename(args.trace).rsplit(".json", 1)[0]
    path = os.path.join(args.out, name + ".png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "timeline":
        return timeline(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("metrics", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--reference")
    parser.add_argument("--wall-clock")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    runs = {os.path.basename(p)[: -len(".jsonl")] if p.endswith(".jsonl") else os.path.basename(p): read(p) for p in args.metrics}
    reference = args.reference and os.path.basename(args.reference)[: -len(".jsonl")]
    if not reference:
        reference = next((name for name in runs if name.startswith("train") and not name.startswith("train_")), None)

    # Loss curves and their difference from the reference.
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for name, (steps, losses, final) in runs.items():
        window = max(1, len(losses) // 200)
        smooth = [sum(losses[i : i + window]) / len(losses[i : i + window]) for i in range(0, len(losses), window)]
        (line,) = top.plot(steps[::window][: len(smooth)], smooth, label=name, linewidth=1)
        val_steps, val_losses = final["validation"]
        if val_steps:
            top.plot(val_steps, val_losses, label=f"{name} (validation)", linewidth=1, linestyle="--", color=line.get_color())
    top.set_ylabel("loss (training smoothed,\nvalidation dashed)")
    top.legend(fontsize=8)
    top.set_title("Every layout trains the same model")
    if reference in runs:
        # |relative difference| on a log scale, worst per window: it starts at float rounding
        # (~1e-7) and grows as the runs' trajectories part (a chaotic system amplifies rounding).
        ref_steps, ref_losses, _ = runs[reference]
        for name, (steps, losses, _) in runs.items():
            if name == reference:
                continue
            n = min(len(losses), len(ref_losses))
            diffs = [abs(a - b) / abs(b) for a, b in zip(losses[:n], ref_losses[:n])]
            window = max(1, n // 250)
            worst = [max(max(diffs[i : i + window]), 1e-9) for i in range(0, n, window)]
            bottom.plot(steps[:n:window][: len(worst)], worst, label=name, linewidth=0.8)
        bottom.set_yscale("log")
        bottom.set_ylabel(f"|relative difference|\nfrom {reference}")
        bottom.axhline(1e-5, color="grey", linestyle=":", linewidth=0.8)
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "loss.png"), dpi=90)
    plt.close(fig)

    # Step time per layout.
    names = list(runs)
    micros = [1e6 * runs[n][2]["training_seconds"] / max(1, runs[n][2]["train_steps"]) for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bars = ax.bar(names, micros, color="tab:blue")
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_ylabel("µs per training step")
    ax.set_title("Step time per layout")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "speed.png"), dpi=90)
    plt.close(fig)

    # Communication bytes per step by kind.
    fig, ax = plt.subplots(figsize=(8, 3.8))
    bottoms = [0.0] * len(names)
    for kind in KINDS:
        values = []
        for n in names:
            final = runs[n][2]
            per_rank = final.get("comm_per_rank", [final["comm"]])
            values.append(sum(r[kind]["bytes"] for r in per_rank) / max(1, final["train_steps"]))
        if any(values):
            ax.bar(names, values, bottom=bottoms, label=kind)
            bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.set_ylabel("bytes per step, all ranks")
    ax.set_title("Communication per step by kind (ledger)")
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "comm.png"), dpi=90)
    plt.close(fig)
    if reference in runs:
        # The numbers behind the bottom panel: agreement over the first 300 steps (the
        # equivalence tolerance is 1e-5) and the first step where it is exceeded.
        ref_losses = runs[reference][1]
        print(f"agreement with {reference}: max |relative difference| over the first 300 steps, first step above 1e-5")
        for name, (_, losses, _) in runs.items():
            if name == reference:
                continue
            diffs = [abs(a - b) / abs(b) for a, b in zip(losses, ref_losses)]
            first = next((i for i, d in enumerate(diffs) if d > 1e-5), None)
            print(f"  {name:32s} {max(diffs[:300], default=0):9.2e}   {first if first is not None else 'never'}")
    print(f"wrote {args.out}/loss.png, speed.png, comm.png")
    if args.wall_clock:
        wall_clock(runs, args.wall_clock)


def wall_clock(runs, path):
    """Validation loss against training seconds, one line per run."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (_, _, final) in runs.items():
        per_step = final["training_seconds"] / max(1, final["train_steps"])
        val_steps, val_losses = final["validation"]
        ax.plot([s * per_step for s in val_steps], val_losses, marker=".", label=name)
    ax.set_xlabel("training seconds (validation excluded)")
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss against wall-clock time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
