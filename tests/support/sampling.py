"""Sampling helpers shared by the tests that run ComfyUI's sampler loop in-process: the sigmas
of a model's schedule, the noise of a seed, one intra-op thread (as every rank runs)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def sigmas_for(model, steps: int, scheduler: str = "simple") -> torch.Tensor:
    """The sigmas of ``model``'s schedule (ComfyUI's ``calculate_sigmas``), on the CPU."""
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()


def noise_for(latent, seed: int) -> torch.Tensor:
    """SamplerCustomAdvanced's noise for a latent (a LATENT dict or its samples) and a seed."""
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    return Noise_RandomNoise(seed).generate_noise(latent if isinstance(latent, dict) else {"samples": latent})


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread here, as on every rank (they copy this count; also the serial reference's)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
