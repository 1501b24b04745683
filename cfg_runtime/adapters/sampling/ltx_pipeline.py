"""The LTX-2 job in one call: stage 1 guided on the group, then optionally upsample
the video latent, re-join the stage-1 audio, and refine with stage 2 (cond only).

Both stages run on the same worker group, so the ComfyUI process never loads its
own copy of the diffusion model. Stage 2 has a single branch: rank 0 computes it
and the other ranks contribute nothing (no forward).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

import comfy.model_management
import comfy.nested_tensor
import comfy.sample
import comfy.utils

from .group_vae import TileSettings, check_decoder, decode_tiled
from .guider import MultiBranchGuider, ParallelSettings
from ..models.model_checks import check_policy_fits_model
from ...errors import PolicyError, clip
from ..families import model_family
from ...guidance.policy import CFGPolicy
from ...guidance.presets import standard_cfg

log = logging.getLogger("cfg_parallel")

DISTILLED_STAGE2_SIGMAS = (0.909375, 0.725, 0.421875, 0.0)


@dataclass(frozen=True)
class StagePlan:
    """What the LTX2 Sampler runs."""

    two_stage: bool
    stage2_sigmas: tuple[float, ...] = DISTILLED_STAGE2_SIGMAS
    decode: TileSettings | None = None  # decode the final video latent (VAEDecodeTiled's settings), or not


def parse_sigmas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in str(text).replace(";", ",").split(",") if v.strip())
    except ValueError:
        raise PolicyError(f"stage2_sigmas {clip(text)} is not a comma-separated list of numbers.") from None
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise PolicyError(f"stage2_sigmas must be finite numbers, got {bad[0]} in {clip(text)}: write decreasing "
                          f"values such as {', '.join(map(str, DISTILLED_STAGE2_SIGMAS))}.")
    if len(values) < 2 or any(b > a for a, b in zip(values, values[1:])) or values[-1] < 0:
        raise PolicyError(f"stage2_sigmas must be at least two non-increasing values ending at >= 0, got {clip(text)} "
                          f"(the distilled refine uses {', '.join(map(str, DISTILLED_STAGE2_SIGMAS))}).")
    return values


def check_ltx_inputs(model, policy: CFGPolicy, latent: dict, plan: StagePlan, upscale_model, vae,
                     stage2_model) -> None:
    """Clear errors before anything runs."""
    family = model_family(model)
    if family == "other":
        raise PolicyError(f"The LTX2 Sampler needs an LTX model (LTX-2 audio+video or LTX-Video); this model is "
                          f"{type(model.model).__name__}. Use the Multi-Branch Guider for other models.")
    if stage2_model is not None and model_family(stage2_model) != family:
        raise PolicyError(f"stage2_model is {model_family(stage2_model)!r} but the stage-1 model is {family!r}: "
                          f"both stages need the same LTX model family.")
    samples = latent["samples"]
    is_av = getattr(samples, "is_nested", False)
    if family == "ltxv" and is_av:
        raise PolicyError("The latent is audio+video, but this model is LTX-Video (video only): use an LTX-2 "
                          "audio+video model, or pass only the video latent (LTXVSeparateAVLatent).")
    if family == "ltxav" and not is_av:
        audio_params_used = policy.rule.kind == "ltx_multimodal" and (
            policy.rule.audio != policy.rule.video or any(b.isolate_modalities for b in policy.branches))
        if audio_params_used:
            raise PolicyError("The latent is video only, but the policy sets audio guidance (audio parameters or the "
                              "modality pass) for this LTX-2 audio+video model: join an audio latent with "
                              "LTXVConcatAVLatent (e.g. LTXVEmptyLatentAudio), or set the audio parameters equal "
                              "to the video ones and modality to 1.")
    if plan.two_stage:
        if upscale_model is None:
            raise PolicyError("Two-stage mode needs the upscale_model input (a LATENT_UPSCALE_MODEL from "
                              "LatentUpscaleModelLoader with the LTX-2 spatial upscaler). Connect one, or choose "
                              "one_stage.")
        if vae is None:
            raise PolicyError("Two-stage mode needs the vae input: the latent upsampler normalises with the video "
                              "VAE's statistics.")
        _latent_upsampler()  # before stage 1 runs, not after
    if plan.decode is not None:
        check_decode_vae(vae)


def check_decode_vae(vae) -> None:
    if vae is None:
        raise PolicyError("decode is on, but the vae input is empty: connect the video VAE (VAELoader, or the "
                          "checkpoint's VAE), or set decode off and decode the latent after the sampler.")
    check_decoder(vae)


def _latent_upsampler():
    try:
        from comfy_extras.nodes_lt_upsampler import LTXVLatentUpsampler
    except ImportError:
        raise PolicyError("This ComfyUI has no LTXVLatentUpsampler (it arrived with LTX-2 support); update ComfyUI "
                          "to use the two-stage mode, or choose one_stage.") from None
    return LTXVLatentUpsampler


def _upsample_video(video: torch.Tensor, upscale_model, vae) -> torch.Tensor:
    out = _latent_upsampler().execute({"samples": video}, upscale_model, vae)
    result = out.args[0] if hasattr(out, "args") else out[0]
    return result["samples"]


class _StagedProgress:
    """One progress bar over both stages, with previews where ComfyUI makes them."""

    def __init__(self, model, total_steps: int) -> None:
        import latent_preview

        self.pbar = comfy.utils.ProgressBar(total_steps)
        self.total = total_steps
        self.offset = 0
        try:
            self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
        except Exception:
            self.previewer = None

    def callback(self, step: int, x0, x, total_steps: int) -> None:
        preview = None
        if self.previewer is not None and isinstance(x0, torch.Tensor) and not getattr(x0, "is_nested", False) \
                and x0.ndim >= 4:
            try:
                preview = self.previewer.decode_latent_to_preview_image("JPEG", x0)
            except Exception:
                preview = None
        self.pbar.update_absolute(self.offset + step + 1, self.total, preview)


def _sample(model, policy, settings, positive, negative, latent_image, noise, sampler, sigmas, denoise_mask,
            seed, callback: Callable) -> tuple[Any, MultiBranchGuider]:
    guider = MultiBranchGuider(model, policy, settings)
    guider.set_conds(positive, negative)
    return guider.sample(noise, latent_image, sampler, sigmas, denoise_mask=denoise_mask, callback=callback,
                         disable_pbar=True, seed=seed), guider


def run_ltx2(model, positive, negative, policy: CFGPolicy, latent: dict, sampler, sigmas: torch.Tensor, seed: int,
             settings: ParallelSettings, plan: StagePlan, upscale_model=None, vae=None, stage2_model=None,
             stage2_sampler=None) -> tuple[dict, dict]:
    """Returns (final latent, stage-1 latent) as LATENT dicts."""
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    check_ltx_inputs(model, policy, latent, plan, upscale_model, vae, stage2_model)  # this job's needs first,
    check_policy_fits_model(policy, model)  # then what the policy asks of the model
    stage2_sigmas = torch.tensor(plan.stage2_sigmas, dtype=torch.float32)
    steps1 = int(sigmas.shape[-1]) - 1
    progress = _StagedProgress(model, steps1 + (len(plan.stage2_sigmas) - 1 if plan.two_stage else 0))

    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    stage1_input = dict(latent, samples=latent_image)
    noise = Noise_RandomNoise(seed).generate_noise(stage1_input)
    stage1, guider1 = _sample(model, policy, settings, positive, negative, latent_image, noise, sampler, sigmas,
                     latent.get("noise_mask"), seed, progress.callback)
    stage1_latent = dict(latent, samples=stage1)
    stage1_latent.pop("noise_mask", None)
    if not plan.two_stage:
        return stage1_latent, stage1_latent

    progress.offset = steps1
    if getattr(stage1, "is_nested", False):
        video, audio = stage1.unbind()[:2]
        joined = comfy.nested_tensor.NestedTensor((_upsample_video(video, upscale_model, vae), audio))
    else:
        joined = _upsample_video(stage1, upscale_model, vae)
    stage2_input = {"samples": joined}
    noise2 = Noise_RandomNoise(seed).generate_noise(stage2_input)
    # stage 2 (one branch) goes where stage 1 ran: on the group, whose ranks hold the model, or here
    settings = replace(settings, one_rank_here=guider1.last_run.get("ranks") == 1)
    stage2, _ = _sample(stage2_model or model, standard_cfg(1.0), settings, positive, None, joined, noise2,
                     stage2_sampler or sampler, stage2_sigmas, None, seed, progress.callback)
    if settings.one_rank_here:
        pass  # stage 1 ran here, and so did stage 2 (said once, at stage 1)
    elif settings.world_size > 1 and (settings.sequence_degree != 1 or settings.batch_split > 1):
        log.info("cfg-parallel LTX2: stage 2 has one branch; it was split over the ranks (layout above)")
    elif settings.world_size > 1:
        log.info("cfg-parallel LTX2: stage 2 has one branch; it ran on rank 0 (other ranks idle; a sequence "
                 "degree of 0 or N splits it over the ranks)")
    return {"samples": stage2}, stage1_latent


NO_DECODE = ("The LTX2 Sampler's images output is empty because its decode input is off: set decode on (with the "
             "video VAE on its vae input), or decode the latent output with VAE Decode (Tiled).")


def decode_final(final: dict, vae, tiles: TileSettings, settings: ParallelSettings):
    """The final latent's video part decoded as core VAEDecodeTiled decodes it (on the group at size >= 2);
    the audio part of an audio+video latent is left to the audio VAE. Without `tiles`: an ExecutionBlocker,
    so a node connected to the images output does not run and ComfyUI shows NO_DECODE."""
    if tiles is None:
        from comfy_execution.graph import ExecutionBlocker

        return ExecutionBlocker(NO_DECODE)
    samples = final["samples"]
    video = samples.unbind()[0] if getattr(samples, "is_nested", False) else samples
    return decode_tiled(vae, {"samples": video}, tiles, settings)
