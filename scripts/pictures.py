#!/usr/bin/python3
# The conceptual pictures of the documentation (Debian's python3-matplotlib, which
# scripts/setup.sh installs; the pyenv python3 has no matplotlib). Nothing here is measured:
# each picture draws what the code does, from the layouts' own rules (ProcessMesh's rank order,
# the pipeline schedules' action order), so it can be regenerated whenever they change.
#
#   scripts/pictures.py [--out docs/pictures]
#
# mesh-3d.png          train_3d's mesh: tp × dp × pp ranks as ProcessMesh numbers them, ep carved out of dp
# step.png             one training step of train_dp on 2 ranks: forward, backward, bucket allreduces, update
# data-parallel.png    replicas, the batch's rows split, the gradients allreduced
# fsdp.png             shards of a block; allgather before it runs, reduce-scatter of its gradient after
# tensor-parallel.png  a column-parallel and a row-parallel Linear, the allreduce of the partial outputs
# pipeline.png         GPipe, 1F1B and ZB-H1 on 3 stages and 4 micro-batches (unit-time simulation)
# expert-parallel.png  experts over ranks, rows dispatched and combined by all-to-all
# checkpoint.png       any layout saves the canonical parameters, any layout resumes from them
# data.png             how a line of text becomes examples
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, Rectangle

BLUE, ORANGE, GREEN, RED, PURPLE, GREY = "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#8c8c8c"
LIGHT = {BLUE: "#c6d4ea", ORANGE: "#f5d3bd", GREEN: "#c8e4cf", RED: "#eec4c5", PURPLE: "#d8d3ea", GREY: "#e0e0e0"}


def canvas(w, h):
    fig, ax = plt.subplots(figsize=(w, h), dpi=100)
    ax.set_xlim(0, w * 10)
    ax.set_ylim(0, h * 10)
    ax.axis("off")
    return fig, ax


def box(ax, x, y, w, h, text="", color=BLUE, fill=True, size=9, weight="normal", text_color="black"):
    ax.add_patch(Rectangle((x, y), w, h, facecolor=LIGHT.get(color, color) if fill else "white",
                           edgecolor=color, linewidth=1.2))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, weight=weight, color=text_color)


def arrow(ax, x0, y0, x1, y1, color="black", text="", size=8, both=False, dy=1.5):
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="<|-|>" if both else "-|>",
                                 mutation_scale=10, color=color, linewidth=1.2))
    if text:
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 + dy, text, ha="center", va="bottom", fontsize=size, color=color)


def save(fig, out, name):
    path = os.path.join(out, name)
    fig.savefig(path, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    print(f"{path}: {os.path.getsize(path) // 1024} KiB")


def mesh_3d(out, T=2, D=4, P=2, E=2):
    """world rank r = tp + T·(dp + D·pp) (ProcessMesh, first axis fastest); the dp group of a rank is
    itself the mesh [expert E, replicate D/E]: expert coordinate dp % E, replicate dp // E."""
    fig, ax = canvas(12, 5.6)
    cell_w, cell_h, gap = 14, 8, 12
    colors = [BLUE, ORANGE, GREEN, PURPLE]
    for pp in range(P):
        x0 = 8 + pp * (T * cell_w + gap + 14)
        y_top = 44
        ax.text(x0 + T * cell_w / 2, y_top + 5, f"pipeline stage pp = {pp}", ha="center", fontsize=10, weight="bold")
        for dp in range(D):
            for tp in range(T):
                r = tp + T * (dp + D * pp)
                j = dp % E
                box(ax, x0 + tp * cell_w, y_top - (dp + 1) * cell_h, cell_w, cell_h,
                    f"rank {r}\nexperts {j * 4 // E}–{(j + 1) * 4 // E - 1}", color=colors[j], size=8)
            ax.text(x0 - 1.5, y_top - (dp + 0.5) * cell_h, f"dp {dp}", ha="right", va="center", fontsize=8)
        for tp in range(T):
            ax.text(x0 + (tp + 0.5) * cell_w, y_top - D * cell_h - 3, f"tp {tp}", ha="center", fontsize=8)
        if pp < P - 1:
            arrow(ax, x0 + T * cell_w + 2, y_top - D * cell_h / 2, x0 + T * cell_w + gap + 12, y_top - D * cell_h / 2,
                  color=GREEN, text="send/recv\nactivations", size=8, both=True)
    x = 8 + P * (T * cell_w + gap + 14) - 4
    ax.text(x, 46, "axes (ProcessMesh [tp, dp, pp])", fontsize=9, weight="bold")
    notes = [
        (BLUE, "tp (fastest): a row of a stage;\nallreduce of activations"),
        (RED, "dp: a column of a stage; FSDP's\nallgather / reduce-scatter"),
        (GREEN, "pp: the same cell in each stage;\nsend / recv at the boundaries"),
        (GREY, f"ep = {E}, carved out of dp: each dp group\nis the mesh [expert {E}, replicate {D // E}];\n"
               "the colour is the expert coordinate\n(dp mod ep): ranks of one colour in a\ncolumn hold the same experts"),
    ]
    y = 40
    for color, text in notes:
        ax.add_patch(Rectangle((x, y - 1.5), 2.5, 2.5, facecolor=LIGHT[color], edgecolor=color))
        ax.text(x + 4, y, text, fontsize=8, va="top")
        y -= 3.5 + 3.2 * text.count("\n")
    ax.text(8, 2, f"train_3d -np {T * D * P} --tp {T} --dp {D} --pp {P} --ep {E} --experts 4:   "
                  "world rank r = tp + T·(dp + D·pp)", fontsize=9, family="monospace")
    save(fig, out, "mesh-3d.png")


def step(out):
    """train_dp on 2 ranks, --layers 2: one step as the code orders it (schematic durations)."""
    fig, ax = canvas(10, 2.8)
    fwd = [("emb", 3), ("fc1", 8), ("fc2", 6), ("head", 5), ("loss", 4)]
    bwd = [("head", 6), ("fc2", 8), ("fc1", 13), ("emb", 4)]
    for r in range(2):
        y = 16 - r * 8
        ax.text(1, y + 2.5, f"rank {r}\nrows {r * 16}–{r * 16 + 15}", fontsize=8, va="center")
        x = 12
        for name, w in fwd:
            box(ax, x, y, w, 5, name, BLUE, size=7)
            x += w
        for i, (name, w) in enumerate(bwd):
            box(ax, x, y, w, 5, name, ORANGE, size=7)
            x += w
            if i in (1, 3):  # a bucket is complete: allreduce it (blocking)
                box(ax, x, y, 4, 5, "all-\nreduce", RED, size=6)
                x += 4
        box(ax, x, y, 3, 5, "loss\nsum", RED, size=6)
        x += 3
        box(ax, x, y, 5, 5, "update", GREEN, size=7)
    for color, label, lx in [(BLUE, "forward", 12), (ORANGE, "backward (from the head)", 26), (RED, "allreduce over the ranks", 52),
                             (GREEN, "optimizer step, the same on every rank", 75)]:
        ax.add_patch(Rectangle((lx, 25), 2.5, 2.5, facecolor=LIGHT[color], edgecolor=color))
        ax.text(lx + 3.5, 26.2, label, fontsize=8, va="center")
    ax.text(12, 2.5, "one step of train_dp -np 2 --layers 2 (schematic: the order is the code's, the lengths are not measured);\n"
                     "a gradient bucket is allreduced as soon as backward has finished its blocks", fontsize=8)
    save(fig, out, "step.png")


def data_parallel(out, N=3):
    fig, ax = canvas(9, 4)
    for r in range(N):
        x = 4 + r * 28
        box(ax, x, 22, 22, 10, f"rank {r}\nwhole model W, b\n+ Adam m, v", BLUE, size=8)
        box(ax, x, 34, 22, 4, f"rows {r}·B/N … {r + 1}·B/N", GREY, size=8)
        box(ax, x, 12, 22, 6, f"gradient g{r}\n(of its rows)", ORANGE, size=8)
        arrow(ax, x + 11, 22, x + 11, 18.2)
    box(ax, 4, 3, 22 + 28 * (N - 1), 5, "allreduce-sum: every rank gets g = g0 + g1 + g2 (in buckets, as backward finishes them)", RED, size=9)
    for r in range(N):
        arrow(ax, 4 + r * 28 + 11, 12, 4 + r * 28 + 11, 8.2, color=RED)
    ax.text(4, 39.5, "the global batch of B rows, the same on every rank (drawn from the seed)", fontsize=9)
    save(fig, out, "data-parallel.png")


def fsdp(out, N=3):
    fig, ax = canvas(10, 4.6)
    # left: what each rank holds of block i
    ax.text(3, 43, "block i (W‖b, c floats) on N = 3 ranks", fontsize=9, weight="bold")
    for r in range(N):
        y = 34 - r * 8
        ax.text(3, y + 2.5, f"rank {r}", fontsize=8, va="center")
        for s in range(N):
            box(ax, 12 + s * 6, y, 6, 5, f"{s}" if s == r else "", BLUE, fill=(s == r), size=8)
    ax.text(12, 7, "each rank holds its shard:\nparameters, gradient and\nAdam's m, v (16Ψ/N bytes)", fontsize=8)
    # right: the timeline around one block
    x = 38
    ax.text(x, 43, "around block i, on every rank", fontsize=9, weight="bold")
    steps = [("allgather\nshards → whole\nblock i", RED, 11), ("forward\nblock i", BLUE, 8), ("…", GREY, 4),
             ("allgather\nagain", RED, 8), ("backward\nblock i", ORANGE, 9), ("reduce-scatter\n∇ → own shard", PURPLE, 12),
             ("update\nshard", GREEN, 7)]
    for text, color, w in steps:
        box(ax, x, 28, w, 10, text, color, size=7)
        x += w
    ax.text(38, 21, "the whole block exists only between its allgather and its backward (one of two gather buffers);\n"
                    "the last two blocks of a forward are still gathered when backward starts with them.\n"
                    "moves per micro-step: allgather 2Ψ (less the last two blocks) + reduce-scatter Ψ", fontsize=8, va="top")
    save(fig, out, "fsdp.png")


def tensor_parallel(out):
    fig, ax = canvas(10, 4.6)
    ax.text(2, 43, "fc1: column-parallel", fontsize=9, weight="bold")
    ax.text(50, 43, "fc2 (or head): row-parallel", fontsize=9, weight="bold")
    box(ax, 2, 24, 6, 14, "x\nB×in\n(all\nranks)", GREY, size=7)
    # W1 split by columns
    box(ax, 12, 24, 8, 14, "W1[:, 0]\nrank 0", BLUE, size=7)
    box(ax, 20, 24, 8, 14, "W1[:, 1]\nrank 1", ORANGE, size=7)
    box(ax, 32, 31, 12, 6, "h0 [B × H/2]", BLUE, size=7)
    box(ax, 32, 24, 12, 6, "h1 [B × H/2]", ORANGE, size=7)
    # W2 split by rows
    box(ax, 50, 31, 14, 7, "W2[0, :] rank 0", BLUE, size=7)
    box(ax, 50, 24, 14, 7, "W2[1, :] rank 1", ORANGE, size=7)
    arrow(ax, 44, 34, 49.5, 34, color=BLUE)
    arrow(ax, 44, 27, 49.5, 27, color=ORANGE)
    box(ax, 68, 31, 10, 6, "h0·W2₀", BLUE, size=7)
    box(ax, 68, 24, 10, 6, "h1·W2₁", ORANGE, size=7)
    box(ax, 81, 24, 9, 13, "allreduce\nsum", RED, size=8)
    box(ax, 92, 27, 7, 7, "+ b2\nonce", GREEN, size=7)
    arrow(ax, 78, 34, 80.5, 31, color=RED)
    arrow(ax, 78, 27, 80.5, 29, color=RED)
    ax.text(2, 18, "forward: no communication inside the pair; one allreduce of the partial outputs [B × out], then the bias, once.\n"
                   "backward: dX of the column-parallel Linear is a partial sum on each rank: one allreduce [B × in].\n"
                   "sequence parallel: outside the pair each rank keeps B/N rows; the allreduce becomes a reduce-scatter\n"
                   "of rows, and the pair's input is allgathered.", fontsize=8, va="top")
    save(fig, out, "tensor-parallel.png")


def simulate(orders, N, dur):
    """Unit-time simulation of per-stage action lists. An action is (kind, micro-batch)."""
    done, t_free, pos, spans = {}, [0.0] * N, [0] * N, []
    while any(pos[s] < len(orders[s]) for s in range(N)):
        progressed = False
        for s in range(N):
            if pos[s] >= len(orders[s]):
                continue
            kind, m = orders[s][pos[s]]
            if kind == "F":
                deps = [("F", m, s - 1)] if s > 0 else []
            elif kind in ("B", "I"):
                deps = [("F", m, s)] + ([(kind if kind == "B" else "I", m, s + 1)] if s < N - 1 else [])
                if s < N - 1 and kind == "I":
                    deps = [("F", m, s), ("I", m, s + 1)]
            else:  # W
                deps = [("I", m, s)]
            if all(d in done for d in deps):
                start = max([t_free[s]] + [done[d] for d in deps])
                end = start + dur[kind]
                done[(kind, m, s)] = end
                t_free[s] = end
                spans.append((s, kind, m, start, end))
                pos[s] += 1
                progressed = True
        assert progressed, "deadlock"
    return spans


def schedules(N, M):
    gpipe = [[("F", m) for m in range(M)] + [("B", m) for m in range(M)] for _ in range(N)]
    one_f_one_b, zb = [], []
    for s in range(N):
        w = min(N - s - 1, M)
        order = [("F", m) for m in range(w)]
        f, b = w, 0
        while b < M:
            if f < M:
                order.append(("F", f))
                f += 1
            order.append(("B", b))
            b += 1
        one_f_one_b.append(order)
        # ZB-H1: 1F1B with B split into I and W, stage s deferring s weight passes into the tail
        zorder, i_done, w_done = [], 0, 0
        for kind, m in order:
            if kind == "F":
                zorder.append(("F", m))
            else:
                zorder.append(("I", m))
                i_done += 1
                if i_done - w_done > s:
                    zorder.append(("W", w_done))
                    w_done += 1
        zorder += [("W", m) for m in range(w_done, M)]
        zb.append(zorder)
    return [("GPipe", gpipe, {"F": 1, "B": 2}), ("1F1B", one_f_one_b, {"F": 1, "B": 2}),
            ("ZB-H1 (zb1p)", zb, {"F": 1, "I": 1, "W": 1})]


def pipeline(out, N=3, M=4):
    fig, axes = plt.subplots(3, 1, figsize=(9, 4.8), dpi=100, sharex=True)
    colors = {"F": BLUE, "B": ORANGE, "I": ORANGE, "W": GREEN}
    for ax, (name, orders, dur) in zip(axes, schedules(N, M)):
        spans = simulate(orders, N, dur)
        end = max(e for *_, e in spans)
        busy = sum(e - s0 for _, _, _, s0, e in spans)
        for s, kind, m, start, stop in spans:
            ax.add_patch(Rectangle((start, N - 1 - s), stop - start, 0.9, facecolor=LIGHT[colors[kind]],
                                   edgecolor=colors[kind]))
            ax.text((start + stop) / 2, N - 1 - s + 0.45, f"{kind}{m}", ha="center", va="center", fontsize=7)
        ax.set_xlim(0, 3 * (M + N - 1) + 0.5)
        ax.set_ylim(-0.2, N)
        ax.set_yticks([N - 1 - s + 0.45 for s in range(N)])
        ax.set_yticklabels([f"stage {s}" for s in range(N)], fontsize=8)
        ax.set_title(f"{name}: step {end:g} units, idle {1 - busy / (N * end):.0%}", fontsize=9, loc="left")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[-1].set_xlabel("time (F = I = W = 1 unit, B = I + W = 2; messages free): "
                        "F forward, B backward, I input gradient, W weight gradient", fontsize=8)
    fig.tight_layout()
    save(fig, out, "pipeline.png")


def expert_parallel(out):
    fig, ax = canvas(10, 4.6)
    ranks = [("rank 0", ["e0", "e1"], BLUE), ("rank 1", ["e2", "e3"], ORANGE)]
    for i, (name, experts, color) in enumerate(ranks):
        y = 30 - i * 18
        ax.text(1, y + 4, f"{name}\nits rows", fontsize=8, va="center")
        box(ax, 10, y, 12, 8, "router\n(replicated)", GREY, size=7)
        rows = ["e0 e0 e1", "e2 e2 e3"] if i == 0 else ["e0 e1 e1", "e2 e3 e3"]
        box(ax, 25, y + 4, 12, 4, rows[0], BLUE, size=7)
        box(ax, 25, y, 12, 4, rows[1], ORANGE, size=7)
        for k, e in enumerate(experts):
            box(ax, 55 + k * 10, y, 9, 8, f"expert\n{e}", color, size=7)
        box(ax, 86, y, 12, 8, "y = Σ g·h\n(gates)", GREEN, size=7)
        ax.text(25, y + 9, "packed by expert", fontsize=7)
    arrow(ax, 37.5, 36, 54, 36, color=BLUE)
    arrow(ax, 37.5, 32, 54, 20, color=ORANGE)
    arrow(ax, 37.5, 18, 54, 34, color=BLUE)
    arrow(ax, 37.5, 14, 54, 16, color=ORANGE)
    ax.text(39, 25.5, "all-to-all-v\n(dispatch)", fontsize=8, color=RED)
    arrow(ax, 75, 34, 85.5, 34, color=RED)
    arrow(ax, 75, 16, 85.5, 16, color=RED)
    ax.text(74, 25.5, "all-to-all-v\nback (combine)", fontsize=8, color=RED)
    ax.text(1, 5, "E = 4 experts, K = 2 per row, expert group of E' = 2 ranks: rank j holds experts [j·E/E', (j+1)·E/E').\n"
                  "The dense floats (embedding, routers, head) are replicated and allreduced as in data parallelism.", fontsize=8)
    save(fig, out, "expert-parallel.png")


def checkpoint(out):
    fig, ax = canvas(10, 3.4)
    saves = ["train", "train_dp -np 4", "train_fsdp -np 2", "train_3d 2×2×2"]
    for i, name in enumerate(saves):
        box(ax, 2, 26 - i * 7, 22, 5, name, BLUE, size=8)
        arrow(ax, 24.5, 28.5 - i * 7, 37.5, 18, color=BLUE)
    box(ax, 38, 9, 26, 18, "step-00000200/\nparameters.f32 (Ψ, canonical order)\nadam_m.f32, adam_v.f32\nstate.json\nCOMPLETE (written last)",
        GREEN, size=8)
    loads = ["train_fsdp -np 3", "train", "train_tp -np 2", "train_pp -np 3"]
    for i, name in enumerate(loads):
        box(ax, 76, 26 - i * 7, 22, 5, name, ORANGE, size=8)
        arrow(ax, 64.5, 18, 75.5, 28.5 - i * 7, color=ORANGE)
    ax.text(2, 1.5, "rank 0 gathers the canonical parameters and saves atomically; any layout cuts its part out when it resumes",
            fontsize=8)
    save(fig, out, "checkpoint.png")


def data(out):
    fig, ax = canvas(10, 3.0)
    word, T = "emma", 3
    ax.text(2, 27, f"line \"{word}\" (n = {len(word)}) → {len(word) + 1} examples, --seq-len {T}; '.' is the boundary token 0",
            fontsize=9)
    padded = "." * T + word + "."
    for i in range(len(word) + 1):
        y = 20 - i * 4.2
        ctx = padded[i:i + T]
        for k, c in enumerate(ctx):
            box(ax, 6 + k * 4, y, 4, 3.4, c, GREY if c == "." else BLUE, size=8)
        arrow(ax, 6 + T * 4 + 1, y + 1.7, 6 + T * 4 + 6, y + 1.7)
        box(ax, 6 + T * 4 + 7, y, 4, 3.4, padded[i + T], ORANGE, size=8)
    ax.text(40, 18, "context: the --seq-len characters before the target,\nleft-padded with '.'\n\n"
                    "target: each character in turn, then '.'\n\nexamples split 90/10 into training and validation in file order;\n"
                    "batch s is a function of (seed, s) alone", fontsize=8, va="top")
    save(fig, out, "data.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "pictures"))
    out = parser.parse_args().out
    os.makedirs(out, exist_ok=True)
    for draw in (mesh_3d, step, data_parallel, fsdp, tensor_parallel, pipeline, expert_parallel, checkpoint, data):
        draw(out)


if __name__ == "__main__":
    main()
