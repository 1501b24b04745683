"""Closures travel to another process by value (group/shipping.py on cloudpickle).

A spawned process (what a rank is) loads what the worker pickler wrote: a closure over a
scale and a tensor that keeps state between its calls (as APG's momentum does), a lambda, a
class defined in a function. The closure's tensor goes through torch.multiprocessing's shared
memory as any tensor of a job; a ctypes array class is still refused in the probe, before
anything is sent. (cloudpickle gives each function its own cells: two closures that share a
variable, as SelfAttentionGuidance's two functions do, no longer share it on the rank, which is
why core_cfg.py refuses SelfAttentionGuidance at size >= 2.)
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import pickle

import pytest
import torch

from cfg_runtime.group.shipping import check_shippable, dumps


def _guidance_node(scale: float, bias: torch.Tensor):
    calls = 0

    def post_cfg(args):
        nonlocal calls
        calls += 1
        return args["denoised"] * scale + bias + 10 * (calls - 1)

    class Local:
        def twice(self, v):
            return 2 * v

    return {"post": post_cfg, "lam": lambda v: v - 1, "local": Local()}


def _child(conn) -> None:
    options = pickle.loads(conn.recv_bytes())
    x = torch.ones(3)
    first = options["post"]({"denoised": x})
    conn.send((first.tolist(), options["post"]({"denoised": x}).tolist(), options["lam"](5),
               options["local"].twice(4)))


def test_closures_reach_a_spawned_process_and_run_there():
    bias = torch.tensor([0.5, 1.5, 2.5])
    data = dumps(_guidance_node(2.0, bias))
    assert bias.is_shared(), "the closure's tensor travels through shared memory"
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child,))
    proc.start()
    try:
        parent.send_bytes(data)
        assert parent.poll(120), "the child did not answer"
        first, second, lam, twice = parent.recv()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    assert first == [2.5, 3.5, 4.5] and second == [12.5, 13.5, 14.5] and lam == 4 and twice == 8


def test_ctypes_classes_are_still_refused_in_the_probe():
    with pytest.raises(Exception):
        check_shippable({"state": (ctypes.c_uint * 2)()})
