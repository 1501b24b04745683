"""One guided model evaluation: run this rank's branches, exchange, combine.

The serial path is the same code with a LocalExchange (world of one), so the
parallel result equals the serial one bit for bit.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import JobInterrupted, PeerFailed, PredictionError
from .exchange import Exchange, LocalExchange
from .plan import BranchPlan, make_plan
from ..guidance.policy import CFGBranch, CFGPolicy, CombineContext

log = logging.getLogger("cfg_parallel")

Evaluate = Callable[[CFGBranch], torch.Tensor]


@dataclass
class DispatchStats:
    """What this rank did: forwards per branch, evaluations, idle evaluations, and per
    evaluation ``timeline`` rows (step, this rank's branch names, forward_s, exchange_s);
    the first MAX_TIMELINE evaluations are kept (Group Status draws them)."""

    MAX_TIMELINE = 4096

    forwards: dict = field(default_factory=dict)
    evaluations: int = 0
    idle_evaluations: int = 0
    forward_s: float = 0.0
    exchange_s: float = 0.0
    combine_s: float = 0.0
    timeline: list = field(default_factory=list)

    def record(self, step: int, branches: tuple[str, ...], forward_s: float, exchange_s: float) -> None:
        self.forward_s += forward_s
        self.exchange_s += exchange_s
        if len(self.timeline) < self.MAX_TIMELINE:
            self.timeline.append((int(step), tuple(branches), round(forward_s, 6), round(exchange_s, 6)))

    def as_dict(self) -> dict:
        return {"forwards": dict(self.forwards), "evaluations": self.evaluations,
                "idle_evaluations": self.idle_evaluations, "forward_s": self.forward_s,
                "exchange_s": self.exchange_s, "combine_s": self.combine_s, "timeline": list(self.timeline)}


class BranchDispatcher:
    """Evaluates a policy's branches on a group of ranks and combines them."""

    def __init__(self, policy: CFGPolicy, exchange: Exchange | None = None, *,
                 strategy: str = "cost_balanced", stop_requested: Callable[[], bool] | None = None) -> None:
        self.policy = policy
        self.exchange = exchange or LocalExchange()
        self.strategy = strategy
        self.stop_requested = stop_requested
        self.stats = DispatchStats()
        self.memory: dict = {}
        self.last_preds: dict[str, torch.Tensor] = {}  # this evaluation's branch predictions (every rank)
        self._plans: dict[tuple[str, ...], BranchPlan] = {}

    def plan_for(self, branches: tuple[CFGBranch, ...]) -> BranchPlan:
        key = tuple(b.name for b in branches)
        plan = self._plans.get(key)
        if plan is None:
            plan = make_plan(branches, self.exchange.world_size, self.strategy)
            self._plans[key] = plan
            if self.exchange.rank == 0:
                log.info("cfg-parallel plan: %s", plan.describe())
        return plan

    def __call__(self, evaluate: Evaluate, x: torch.Tensor, step: int,
                 latent_shapes: tuple[tuple[int, ...], ...] | None = None,
                 extra: tuple[CFGBranch, ...] = ()) -> torch.Tensor:
        """The combined prediction. ``extra`` branches are evaluated and exchanged like the
        policy's own (see ``last_preds``) but not combined; none run on a step with no forward."""
        branches = self.policy.active_branches(step, len(latent_shapes) if latent_shapes else 1)
        if branches:
            branches += tuple(b for b in extra if b.name not in self.policy.names)
        plan = self.plan_for(branches)
        by_name = {b.name: b for b in branches}
        mine = plan.assignment[self.exchange.rank]
        self.stats.evaluations += 1
        if not mine:
            self.stats.idle_evaluations += 1

        t0 = time.perf_counter()
        local, error = self._forwards(evaluate, [by_name[name] for name in mine], x)
        stop = bool(self.exchange.rank == 0 and self.stop_requested is not None and self.stop_requested())
        if x.is_cuda:
            torch.cuda.synchronize(x.device)  # so the timings split forwards from the exchange
        t1 = time.perf_counter()
        gathered = self.exchange.gather(local if error is None else [], plan.slots, x, stop=stop,
                                        failed=error is not None)
        t2 = time.perf_counter()
        self.stats.record(step, mine, t1 - t0, t2 - t1)
        if error is not None:
            raise error
        if gathered.failed_ranks:
            raise PeerFailed(f"rank(s) {list(gathered.failed_ranks)} failed at step {step}")
        if gathered.stop:
            raise JobInterrupted(f"Interrupted at step {step}.", step=step)

        self.last_preds = preds = _finite_predictions(branches, plan, gathered, step)
        ctx = CombineContext(x=x, step=step, latent_shapes=latent_shapes, memory=self.memory)
        out = self.policy.combine({n: p for n, p in preds.items() if n in self.policy.names}, ctx)
        if not torch.isfinite(out).all():
            raise PredictionError(
                f"The guided prediction of policy '{self.policy.name}' ({self.policy.rule.kind} rule) has NaN/inf "
                f"values at step {step}, although every branch prediction ({', '.join(preds)}) is finite: the "
                f"guidance scales overflow {str(out.dtype).replace('torch.', '')} ({_largest_scale(self.policy)}). "
                f"Lower them.")
        self.stats.combine_s += time.perf_counter() - t2
        return out

    def _forwards(self, evaluate: Evaluate, branches: list[CFGBranch], x: torch.Tensor):
        """This rank's predictions, in plan order; on an error, the ones before it and the error
        (raised only after the step's exchange, which the peers wait for)."""
        local: list[torch.Tensor | None] = []
        for branch in branches:
            try:
                pred = _checked(branch.name, evaluate(branch), x)
            except BaseException as exc:
                return local, exc
            self.stats.forwards[branch.name] = self.stats.forwards.get(branch.name, 0) + 1
            local.append(pred)
        return local, None


def _finite_predictions(branches, plan: BranchPlan, gathered, step: int) -> dict[str, torch.Tensor]:
    """Every branch's prediction from the rank and slot that computed it; NaN/inf refused."""
    preds = {}
    for b in branches:
        rank, slot = plan.location(b.name)
        pred = gathered.preds[rank][slot]
        if not torch.isfinite(pred).all():
            raise PredictionError(
                f"Branch '{b.name}' produced NaN/inf values at step {step}: check the model, its dtype "
                f"(fp16 overflow?) and the guidance scales.")
        preds[b.name] = pred
    return preds


def _largest_scale(policy: CFGPolicy) -> str:
    """The policy's largest guidance parameter, named, for an overflow message."""
    rule = policy.rule
    if rule.kind == "weighted":
        scales = [(f"weight of '{n}'", w) for n, w in rule.weights]
    elif rule.kind == "standard":
        scales = [("CFG scale", rule.scale)]
    else:
        scales = [(f"{label} {key}", getattr(params, key)) for label, params in (("video", rule.video),
                  ("audio", rule.audio)) for key in ("cfg", "stg", "modality")]
    name, value = max(scales, key=lambda item: abs(item[1]), default=("no scale", 0.0))
    return f"largest: {name} = {value:g}"


def _checked(name: str, pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(pred, torch.Tensor):
        raise PredictionError(f"Branch '{name}' returned {type(pred).__name__}, expected a tensor.")
    if tuple(pred.shape) != tuple(x.shape):
        raise PredictionError(
            f"Branch '{name}' returned a prediction of shape {tuple(pred.shape)}; expected the input's shape "
            f"{tuple(x.shape)}. The model must predict a tensor shaped like its input.")
    return pred.to(x.dtype)
