"""CPU benchmark of the runtime: 2 branches on 2 gloo ranks vs the same 2 branches serially.

Both sides use one thread per process and the same compute-bound toy model, measured
side by side in one run. Prints the speedup and the exchange+combine share of a step.

    .venv/bin/python bench/bench_cpu_gloo.py [--steps 8] [--width 2048] [--depth 6] [--batch 64]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]  # the toy job is test scaffolding (tests/support)

import torch  # noqa: E402

from cfg_runtime.group import GroupSpec, WorkerGroup  # noqa: E402
from cfg_runtime.guidance.presets import standard_cfg  # noqa: E402
from support.toy import ToySampleJob, run_serial  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.set_num_threads(1)
    job = ToySampleJob(standard_cfg(4.0), steps=args.steps, batch=args.batch, dim=256, width=args.width,
                       depth=args.depth)
    cache: dict = {}
    run_serial(job, cache=cache)  # warm-up (builds the model)

    group = WorkerGroup(GroupSpec(("cpu", "cpu"), threads_per_rank=1))
    group.start()
    try:
        group.run(job)  # warm-up on the ranks
        serial_times, parallel_times, shares = [], [], []
        for _ in range(args.repeats):  # interleaved, so drift hits both sides alike
            t0 = time.perf_counter()
            serial_value, serial_summary = run_serial(job, cache=cache)
            serial_times.append(time.perf_counter() - t0)
            result = group.run(job)
            parallel_times.append(result.seconds)
            s0 = result.summaries[0]
            step_s = result.seconds / args.steps
            shares.append((s0["exchange_s"] + s0["combine_s"]) / args.steps / step_s)
            assert torch.equal(result.value, serial_value), "parallel result differs from serial"
    finally:
        group.teardown()

    fwd = serial_summary["forward_s"] / (2 * args.steps)
    serial_s, parallel_s = min(serial_times), min(parallel_times)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"one forward (1 thread): {fwd * 1000:.1f} ms; {args.steps} steps x 2 branches")
    print(f"serial (1 process, 1 thread): {serial_s:.3f} s  | parallel (2 gloo ranks, 1 thread each): "
          f"{parallel_s:.3f} s")
    print(f"speedup: {serial_s / parallel_s:.2f}x   exchange+combine share of a step: {min(shares) * 100:.2f}%")
    print("bit-exact vs serial: yes")


if __name__ == "__main__":
    main()
