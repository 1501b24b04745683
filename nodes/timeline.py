"""The last job of the worker group as a picture: one row per rank, time left to right.

Each model evaluation of a rank is drawn as its forward (coloured by branch; several
branches on one rank share the forward's time equally, the runtime times them together),
then the time it waited for slower ranks (idle, light), then the exchange itself (grey:
the all-gather, taken as the shortest exchange time of any rank at that evaluation, since
the last rank to arrive waits for nobody). Evaluations start at the same x on every rank
(the all-gather ends together), so the picture shows where ranks wait for each other.

Input: ``WorkerGroup.last_job`` = {"seconds": s, "per_rank": [summary, ...]} where a
summary carries ``timeline`` rows (step, branch names, forward_s, exchange_s)
(cfg_runtime.parallel.dispatch.DispatchStats). Plain Pillow; ``to_image`` makes ComfyUI's
IMAGE tensor ([1, H, W, 3] float in 0..1).
"""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

WIDTH = 1024
ROW_H, ROW_GAP, LEFT, RIGHT, TOP = 38, 10, 92, 20, 58
BG, FG, GRID, MUTED = (30, 32, 36), (230, 230, 230), (70, 74, 80), (150, 150, 150)
EXCHANGE, IDLE = (120, 124, 132), (58, 62, 68)
BRANCH_COLOURS = {"cond": (76, 153, 230), "negative": (230, 110, 80), "perturbed": (120, 200, 110),
                  "isolated": (200, 120, 220), "uncond": (230, 170, 60)}
EXTRA_COLOURS = [(80, 200, 200), (220, 200, 90), (240, 130, 170), (150, 150, 240), (170, 210, 130)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def branch_colour(name: str, seen: dict) -> tuple:
    if name in BRANCH_COLOURS:
        return BRANCH_COLOURS[name]
    if name not in seen:
        seen[name] = EXTRA_COLOURS[len(seen) % len(EXTRA_COLOURS)]
    return seen[name]


def _rows(last_job: dict) -> list[list[tuple]]:
    return [[(int(r[0]), tuple(r[1]), float(r[2]), float(r[3])) for r in s.get("timeline") or []]
            for s in (last_job or {}).get("per_rank") or ()]


def layout(last_job: dict) -> list[list[dict]]:
    """Per rank, per evaluation: start, forward, idle, exchange (seconds) and branches."""
    ranks = _rows(last_job)
    n = min((len(r) for r in ranks), default=0)
    out = [[] for _ in ranks]
    t = 0.0
    for i in range(n):
        cells = [r[i] for r in ranks]
        exchange = min(c[3] for c in cells)
        span = max(c[2] + c[3] for c in cells)
        for rank, (step, branches, fwd, exc) in enumerate(cells):
            out[rank].append({"step": step, "branches": branches, "start": t, "forward": fwd,
                              "idle": max(0.0, span - fwd - exchange), "exchange": exchange})
        t += span
    return out


def draw_timeline(last_job: dict, title: str = "") -> Image.Image:
    """The picture of ``last_job`` (a small 'no job yet' card when there is nothing to draw)."""
    cells = layout(last_job)
    n_ranks = max(len(cells), 1)
    height = TOP + n_ranks * (ROW_H + ROW_GAP) + 64
    img = Image.new("RGB", (WIDTH, height), BG)
    d = ImageDraw.Draw(img)
    f_title, f_small = _font(16), _font(12)
    d.text((12, 10), title or "CFG Parallel: last job, per rank", fill=FG, font=f_title)
    if not cells or not cells[0]:
        d.text((12, TOP), "No parallel job has run yet (the group records one at parallel size >= 2).",
               fill=MUTED, font=f_small)
        return img
    total = max(c[-1]["start"] + c[-1]["forward"] + c[-1]["idle"] + c[-1]["exchange"] for c in cells) or 1e-9
    scale = (WIDTH - LEFT - RIGHT) / total
    steps = sorted({e["step"] for e in cells[0]})
    d.text((12, 32), f"{len(steps)} steps, {len(cells[0])} evaluations, {total:.3f} s of sampling "
                     f"(job {float(last_job.get('seconds') or 0):.2f} s)", fill=MUTED, font=f_small)
    # step boundaries: a thin line where a new step starts, its index every few steps
    label_every = max(1, len(steps) // 12)
    seen_step = set()
    for e in cells[0]:
        if e["step"] in seen_step:
            continue
        seen_step.add(e["step"])
        x = LEFT + e["start"] * scale
        d.line([(x, TOP - 4), (x, TOP + n_ranks * (ROW_H + ROW_GAP) - ROW_GAP)], fill=GRID)
        if steps.index(e["step"]) % label_every == 0:
            d.text((x + 2, TOP - 16), str(e["step"]), fill=MUTED, font=f_small)
    extra: dict = {}
    for rank, evals in enumerate(cells):
        y0 = TOP + rank * (ROW_H + ROW_GAP)
        y1 = y0 + ROW_H
        d.text((12, y0 + ROW_H // 2 - 7), f"rank {rank}", fill=FG, font=f_small)
        for e in evals:
            x = LEFT + e["start"] * scale
            share = e["forward"] / len(e["branches"]) if e["branches"] else 0.0
            for name in e["branches"]:
                d.rectangle([x, y0, x + max(share * scale, 1), y1], fill=branch_colour(name, extra))
                x += share * scale
            if e["idle"] > 0:
                d.rectangle([x, y0 + 6, x + e["idle"] * scale, y1 - 6], fill=IDLE)
                x += e["idle"] * scale
            d.rectangle([x, y0 + 12, x + max(e["exchange"] * scale, 1), y1 - 12], fill=EXCHANGE)
    # legend
    y = TOP + n_ranks * (ROW_H + ROW_GAP) + 8
    names = []
    for evals in cells:
        for e in evals:
            names += [b for b in e["branches"] if b not in names]
    x = 12
    for label, colour in [(f"forward: {b}", branch_colour(b, extra)) for b in names] + [
            ("idle (waiting for other ranks)", IDLE), ("exchange (all-gather)", EXCHANGE)]:
        d.rectangle([x, y + 2, x + 14, y + 14], fill=colour)
        d.text((x + 20, y), label, fill=FG, font=f_small)
        x += 30 + int(d.textlength(label, font=f_small))
    # time axis under the rows: five ticks, in seconds
    axis_y = TOP + n_ranks * (ROW_H + ROW_GAP) - ROW_GAP + 2
    for k in range(5):
        t = total * k / 4
        x = LEFT + t * scale
        d.line([(x, axis_y), (x, axis_y + 4)], fill=MUTED)
        label = f"{t:.2f} s"
        w = d.textlength(label, font=f_small)
        d.text((min(max(x - w / 2, LEFT), WIDTH - RIGHT - w), y + 24), label, fill=MUTED, font=f_small)
    return img


def to_image(img: Image.Image):
    """ComfyUI's IMAGE: a [1, H, W, 3] float32 tensor in 0..1."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]
