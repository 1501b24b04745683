"""Plot of the LTX-2 GPU benchmark: step time against branches (one GPU) and ranks.

    python bench/plot_ltx2.py [RESULT.json ...] [-o bench/ltx2_step_time.png]

Without arguments it draws the figures recorded in bench/README.md (three runs on one
H100, 2026-11-23); with arguments it reads ``ltx2_bench.json`` files written by
bench/bench_ltx2_gpu.py instead. Needs matplotlib.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Medians in seconds, copied from the runs' ltx2_bench.json (bench/README.md lists them).
RECORDED = [
    {"label": "run 1", "fwd": {1: 0.3728, 2: 0.7419, 4: 1.4650}, "fwd2": {1: 1.978, 2: 3.987},
     "kinds": {"cond": 0.3728, "negative": 0.3721, "perturbed": 0.3693, "isolated": 0.3120},
     "core_cfg": 0.7415, "inproc_cfg2": 0.7445, "group_cfg2": 0.7523,
     "inproc_ltx4": 1.4284, "group_ltx4": 1.4313},
    {"label": "run 2", "fwd": {1: 0.3684, 2: 0.7414, 4: 1.4610}, "fwd2": {1: 1.976, 2: 3.981},
     "kinds": {"cond": 0.3684, "negative": 0.3734, "perturbed": 0.3725, "isolated": 0.3131},
     "core_cfg": 0.7459, "inproc_cfg2": 0.7473, "group_cfg2": 0.7508,
     "inproc_ltx4": 1.4311, "group_ltx4": 1.4483},
    {"label": "run 3 (B only)", "group_cfg2": 0.7519, "group_ltx4": 1.4408},
]


def _med(xs):
    xs = sorted(x for x in xs if x)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def from_json(path: Path) -> dict:
    r = json.loads(path.read_text())
    runs, probe = r.get("runs", {}), r.get("probe", {})

    def step(*names):
        return _med([(runs.get(n) or {}).get("median_step_s") for n in names])

    s1, s2 = probe.get("stage1", {}), probe.get("stage2", {})
    med = lambda d, k: (d.get(k) or {}).get("median_s")  # noqa: E731
    out = {"label": path.parent.name or path.name,
           "core_cfg": step("A_core_cfg"), "inproc_cfg2": step("A_mbg_cfg2", "A2_mbg_cfg2"),
           "group_cfg2": step("B_group1_cfg2"), "inproc_ltx4": step("A_mbg_ltx4", "A2_mbg_ltx4"),
           "group_ltx4": step("B_group1_ltx4_second", "B_group1_ltx4_third")}
    if med(s1, "cond"):
        out["fwd"] = {1: med(s1, "cond"), 2: med(s1, "cond+negative batched"),
                      4: med(s1, "4 batched (cond,neg,cond,neg)")}
        out["kinds"] = {k: med(s1, k) for k in ("cond", "negative", "perturbed", "isolated")}
    if med(s2, "cond"):
        out["fwd2"] = {1: med(s2, "cond"), 2: med(s2, "cond+negative batched")}
    return out


def ideal_ltx4(kinds: dict) -> dict:
    """Ideal step time on 1..4 GPUs: the busiest rank of the best split of the four passes."""
    from itertools import product

    costs = list(kinds.values())
    out = {}
    for world in (1, 2, 3, 4):
        best = min(max(sum(c for c, r in zip(costs, assign) if r == k) for k in range(world))
                   for assign in product(range(world), repeat=len(costs)))
        out[world] = best
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="*", type=Path)
    ap.add_argument("-o", "--out", type=Path, default=HERE / "ltx2_step_time.png")
    args = ap.parse_args()
    data = [from_json(p) for p in args.results] if args.results else RECORDED

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.7), dpi=100)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]

    # left: one model evaluation against branches batched into it, on one GPU (relative to one branch)
    for i, d in enumerate(data):
        for key, mark, stage in (("fwd", "o-", "stage 1 (6144+127 tokens)"), ("fwd2", "s--", "stage 2 (24576+127)")):
            if key in d:
                xs = sorted(d[key])
                ax1.plot(xs, [d[key][x] / d[key][1] for x in xs], mark, color=colors[i % 4], ms=5,
                         label=f"{stage}, {d['label']}: 1 branch {d[key][1] * 1000:.0f} ms")
    ax1.plot([1, 4], [1, 4], ":", color="grey", lw=1, label="n x one branch")
    ax1.set_xticks([1, 2, 4])
    ax1.set_yticks([1, 2, 3, 4])
    ax1.set_xlabel("branches batched into one forward")
    ax1.set_ylabel("time / time of one branch")
    ax1.set_title("One H100: batching branches gains nothing", fontsize=9)
    ax1.legend(fontsize=6.5, loc="upper left")
    ax1.grid(alpha=0.3)

    # right: a guided stage-1 step against ranks
    ref = next((d for d in data if "kinds" in d), None)
    if ref is not None:
        ideal = ideal_ltx4(ref["kinds"])
        ax2.plot(list(ideal), list(ideal.values()), "o--", color="grey", ms=4,
                 label="LTX-2 4 passes: ideal, from the passes' forward times")
        for w, t in ideal.items():
            if w > 1:
                ax2.annotate(f"{ideal[1] / t:.2f}x", (w, t), textcoords="offset points", xytext=(4, 6), fontsize=7)
        c, n = ref["kinds"]["cond"], ref["kinds"]["negative"]
        cfg_ideal = (c + n, max(c, n))
        ax2.plot([1, 2], cfg_ideal, "^--", color="silver", ms=4, label="CFG 2 branches: ideal")
        ax2.annotate(f"{cfg_ideal[0] / cfg_ideal[1]:.2f}x", (2, cfg_ideal[1]), textcoords="offset points",
                     xytext=(4, -10), fontsize=7)
    for i, d in enumerate(data):
        c = colors[i % 4]
        pts = [(0.94, d.get("inproc_ltx4"), "o"), (1.06, d.get("group_ltx4"), "D"),
               (0.90, d.get("core_cfg"), "v"), (0.98, d.get("inproc_cfg2"), "o"), (1.10, d.get("group_cfg2"), "D")]
        for x, y, m in pts:
            if y:
                ax2.plot([x], [y], m, color=c, ms=5, mfc="none" if m == "D" else c)
    ax2.plot([], [], "o", color="k", ms=5, label="measured, in process (MultiBranchGuider size 1)")
    ax2.plot([], [], "D", color="k", mfc="none", ms=5, label="measured, 1-rank worker group")
    ax2.plot([], [], "v", color="k", ms=5, label="measured, core CFGGuider (2 batched)")
    ax2.set_xticks([1, 2, 3, 4])
    ax2.set_xlabel("GPUs (ranks); one H100 measured, more predicted")
    ax2.set_ylabel("seconds per sampling step")
    ax2.set_title("LTX-2 19.6B, 768x512x121 frames: step time", fontsize=9)
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=6.5, loc="upper right")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
