"""A small deterministic denoiser and sampling job, for tests and benchmarks of the runtime.

The model is an MLP whose weights derive from a seed, so every rank builds the same
one. Branches alter the forward the way real ones do: another conditioning vector,
skipped ("perturbed") hidden layers, a dropped conditioning path ("isolated").
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from cfg_runtime.parallel.dispatch import BranchDispatcher
from cfg_runtime.parallel.exchange import LocalExchange
from cfg_runtime.guidance.policy import CFGBranch, CFGPolicy
from cfg_runtime.group.worker import RankContext


class ToyDenoiser(torch.nn.Module):
    def __init__(self, dim: int, width: int, depth: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.inp = torch.nn.Parameter(torch.randn(dim, width, generator=g) / dim ** 0.5)
        self.cond = torch.nn.Parameter(torch.randn(dim, width, generator=g) / dim ** 0.5)
        self.hidden = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(width, width, generator=g) / width ** 0.5) for _ in range(depth)])
        self.out = torch.nn.Parameter(torch.randn(width, dim, generator=g) / width ** 0.5)
        self.embeddings = {name: torch.randn(1, dim, generator=g) for name in ("positive", "negative")}

    def forward(self, x: torch.Tensor, sigma: float, branch: CFGBranch) -> torch.Tensor:
        h = x @ self.inp
        if not branch.isolate_modalities:
            h = h + self.embeddings[branch.cond].to(x.device) @ self.cond
        h = torch.tanh(h * (1.0 / (1.0 + sigma)))
        for i, layer in enumerate(self.hidden):
            if i in branch.perturb_blocks:
                continue  # the perturbed pass: this block passes its input through
            h = torch.tanh(h @ layer)
        return x / (1.0 + sigma * sigma) + h @ self.out


@dataclass(frozen=True)
class ToyFaults:
    """Faults to inject (tests only)."""

    nan_branch: str = ""          # this branch returns NaN at `at_step`
    bad_shape_branch: str = ""    # this branch returns a wrong shape at `at_step`
    raise_on_rank: int = -1       # this rank raises inside its forward at `at_step`
    at_step: int = 0


@dataclass(frozen=True)
class ToySampleJob:
    """Euler sampling of the toy model with a policy; same loop on every rank."""

    policy: CFGPolicy
    seed: int = 0
    steps: int = 4
    batch: int = 1
    dim: int = 16
    width: int = 32
    depth: int = 3
    strategy: str = "cost_balanced"
    sleep_per_forward_s: float = 0.0
    faults: ToyFaults = ToyFaults()

    def model(self, ctx_cache: dict, device: torch.device) -> ToyDenoiser:
        key = ("toy", self.dim, self.width, self.depth, self.seed, str(device))
        model = ctx_cache.get(key)
        if model is None:
            model = ToyDenoiser(self.dim, self.width, self.depth, self.seed).to(device)
            ctx_cache[key] = model
            ctx_cache["loads"] = ctx_cache.get("loads", 0) + 1
        return model

    def run(self, ctx: RankContext) -> torch.Tensor:
        model = self.model(ctx.cache, ctx.device)
        g = torch.Generator().manual_seed(self.seed + 1)
        x = torch.randn(self.batch, self.dim, generator=g).to(ctx.device) * 3.0
        sigmas = torch.linspace(3.0, 0.0, self.steps + 1).tolist()
        dispatcher = BranchDispatcher(self.policy, ctx.exchange, strategy=self.strategy,
                                      stop_requested=ctx.stop_requested)
        rank = ctx.rank

        def evaluate_at(step: int, sigma: float):
            def evaluate(branch: CFGBranch) -> torch.Tensor:
                if self.sleep_per_forward_s:
                    time.sleep(self.sleep_per_forward_s)
                f = self.faults
                if step == f.at_step and rank == f.raise_on_rank:
                    raise RuntimeError(f"injected failure on rank {rank} at step {step}")
                with torch.no_grad():
                    pred = model(x, sigma, branch)
                if step == f.at_step and branch.name == f.nan_branch:
                    pred = pred * float("nan")
                if step == f.at_step and branch.name == f.bad_shape_branch:
                    pred = pred[..., :-1]
                return pred
            return evaluate

        try:
            for i in range(self.steps):
                s, s_next = sigmas[i], sigmas[i + 1]
                denoised = dispatcher(evaluate_at(i, s), x, i)
                x = x + (x - denoised) / s * (s_next - s)
                ctx.emit({"step": i + 1, "total": self.steps})
        finally:
            ctx.summary.update(dispatcher.stats.as_dict())
            ctx.summary["model_loads"] = ctx.cache.get("loads", 0)
        return x.cpu()


def run_serial(job: Any, device: str = "cpu", cache: dict | None = None) -> tuple[Any, dict]:
    """Run a job in this process as a world of one: the serial reference."""
    ctx = RankContext(0, 1, torch.device(device), LocalExchange(), cache if cache is not None else {},
                      emit=lambda payload: None, stop_requested=lambda: False)
    value = job.run(ctx)
    return value, ctx.summary
