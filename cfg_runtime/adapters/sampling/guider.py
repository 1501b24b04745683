"""The Multi-Branch Guider as the ComfyUI process sees it: a GUIDER that samples here at
parallel size 1 (branch after branch, the serial reference) and hands the whole sample()
to the worker group at size >= 2 (group_sampling.py), where every rank runs ComfyUI's own
sampler loop with the same inputs and rank 0 returns the latent.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import torch

from ...errors import CFGParallelError, GroupConfigError, JobFailedError
from ...group import BACKEND_ENV, GroupSpec, parse_devices
from ...guidance.policy import CFGPolicy
from ...parallel.batch import batch_split_from_env
from ...parallel.dispatch import BranchDispatcher
from .branch_guider import BranchGuider
from .group_sampling import SampleCall, sample_on_group
from ..models.launch_options import capture, console_level, level_number
from ..models.core_cfg import DEFAULT_NODE, check_model_options
from ..models.model_checks import input_mismatch
from .progress_text import one_rank_text, say_once
from .sequence_job import job_layout, sequence_degree_from_env, split_label

log = logging.getLogger("cfg_parallel")

WORKER_INIT = "cfg_runtime.adapters.models.rank_setup:init_worker"


@dataclass(frozen=True)
class ParallelSettings:
    """How the guider runs: on how many ranks, which devices, how patiently."""

    world_size: int = 1  # ranks; the nodes call it parallel_size
    devices: str = ""
    strategy: str = "cost_balanced"
    keep_model_loaded: bool = True
    step_timeout_s: float = 600.0
    start_timeout_s: float = 180.0
    # "" = NCCL for GPUs, gloo for CPUs. gloo on GPUs is the way to put two ranks on one GPU
    # (NCCL refuses a GPU listed twice); the environment variable CFG_PARALLEL_BACKEND sets it.
    backend: str = field(default_factory=lambda: os.environ.get(BACKEND_ENV, "").strip().lower())
    # Sequence split (LTX-2 audio+video, LTX-Video; ranks = branch groups x degree): 1 = off
    # (bit-exact branch parallelism), 0 = planned from the branches and ranks, N = forced.
    sequence_degree: int = field(default_factory=sequence_degree_from_env)
    node: str = DEFAULT_NODE  # the node the user has, for messages ("the CFG Parallel node", ...)
    # Batch split (a latent batch over batch groups; ranks = batch groups x branch ranks): 1 = off
    # (default: bit-exact), 0 = planned from the batch, branches and ranks, N = N groups forced.
    batch_split: int = field(default_factory=batch_split_from_env)
    split_option: bool = False  # the node has a sequence_split widget (named in the one-rank message)
    # A sampling that gives work to one rank only runs in ComfyUI (False: on the group all the same,
    # e.g. LTX-2's stage 2 after a stage 1 on the group, whose ranks hold the model).
    one_rank_here: bool = True

    def group_spec(self) -> GroupSpec:
        if self.backend not in ("", "nccl", "gloo"):
            raise GroupConfigError(f"Unknown backend {self.backend!r} (from {BACKEND_ENV}?): use 'nccl', 'gloo' or "
                                   f"leave it empty.")
        if not (isinstance(self.step_timeout_s, (int, float)) and math.isfinite(self.step_timeout_s)
                and self.step_timeout_s > 0):
            raise GroupConfigError(f"step_timeout_s must be a positive number of seconds, got {self.step_timeout_s}.")
        backend = self.backend or os.environ.get(BACKEND_ENV, "").strip().lower()
        devices = parse_devices(self.devices, self.world_size, backend)
        # CPU kernels can round differently with another thread count: CPU ranks use this
        # process's count, so their results equal the in-process (size 1) ones bit for bit.
        return GroupSpec(devices=devices, backend=backend, step_timeout_s=self.step_timeout_s,
                         start_timeout_s=self.start_timeout_s, collective_timeout_s=max(self.step_timeout_s, 60.0),
                         worker_init=WORKER_INIT, threads_per_rank=torch.get_num_threads(),
                         worker_init_data=capture(), log_level=level_number(console_level()))


class MultiBranchGuider(BranchGuider):
    """The node's guider: serial at size 1, on the worker group at size >= 2."""

    def __init__(self, model_patcher, policy: CFGPolicy, parallel: ParallelSettings | None = None) -> None:
        super().__init__(model_patcher, policy)
        self.parallel = parallel or ParallelSettings()
        self.last_run: dict = {}

    def _one_rank_here(self, sampler) -> bool:
        """Whether this sampling gives work to one rank only (one branch, no sequence split): then it runs
        here, as at size 1, and the user reads why once."""
        if not self.parallel.one_rank_here or len(self.policy.branches) > 1 or self.runs_extra_uncond(sampler) \
                or self.parallel.batch_split != 1:  # a batch split gives the other ranks samples of their own
            return False
        layout = job_layout(self.policy, self.parallel.world_size, self.parallel.sequence_degree, self.model_patcher)
        if layout.degree > 1:
            return False
        say_once(one_rank_text(self.parallel.world_size, self.parallel.split_option, split_label(self.model_patcher)))
        return True

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        check_model_options(self.model_patcher.model_options, self.policy, self.parallel.node,
                            self.parallel.world_size)
        try:
            if self.parallel.world_size <= 1 or self._one_rank_here(sampler):
                return self._sample_here(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar,
                                         seed)
            return self._sample_on_group(noise, latent_image, sampler, sigmas, denoise_mask, callback, seed)
        except JobFailedError as exc:  # the same message as here, for the same mistake
            better = input_mismatch(getattr(exc, "remote_type", ""), getattr(exc, "remote_message", ""),
                                    self.original_conds)
            if better is None:
                raise
            raise better from None
        except RuntimeError as exc:
            better = None if isinstance(exc, CFGParallelError) else \
                input_mismatch(type(exc).__name__, str(exc), self.original_conds)
            if better is None:
                raise
            raise better from exc

    def _sample_here(self, noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed):
        dispatcher = BranchDispatcher(self.policy, strategy=self.parallel.strategy)
        try:
            return self.sample_with(dispatcher, noise, latent_image, sampler, sigmas, denoise_mask, callback,
                                    disable_pbar, seed)
        finally:
            self.last_run = {"ranks": 1, **dispatcher.stats.as_dict()}
            self.dispatcher = None

    def _sample_on_group(self, noise, latent_image, sampler, sigmas, denoise_mask, callback, seed):
        call = SampleCall(self.model_patcher, self.policy, self.original_conds, noise, latent_image, sampler, sigmas,
                          denoise_mask, seed, callback)
        value, result = sample_on_group(call, self.parallel)
        self.last_run = {"ranks": len(result.summaries), "seconds": result.seconds, "per_rank": result.summaries}
        log.info("cfg-parallel: sampled on %d ranks in %.2f s; %s", len(result.summaries), result.seconds,
                 "; ".join(f"rank {i}: {s.get('forwards')}" for i, s in enumerate(result.summaries)))
        return value
