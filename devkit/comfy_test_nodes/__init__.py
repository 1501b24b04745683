"""Test-only ComfyUI nodes (loaded by the test server; not part of the pack)."""
import os
import sys
import time
import uuid

import torch

# Worker ranks copy sys.path when they are spawned: this makes cfgp_faults importable there.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

from cfgp_faults import FailingModelCall  # noqa: E402


class CFGPTestConditioning:
    """Random CONDITIONING shaped like an LTXV text embedding (no text encoder needed)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF}),
            "tokens": ("INT", {"default": 8, "min": 1, "max": 4096}),
            "channels": ("INT", {"default": 32, "min": 1, "max": 8192}),
        }, "optional": {
            # Ignored; a new value makes ComfyUI re-run this node and everything downstream.
            "nonce": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "_for_testing/cfgp"

    def make(self, seed, tokens, channels, nonce=0):
        gen = torch.Generator().manual_seed(int(seed))
        cond = torch.randn(1, int(tokens), int(channels), generator=gen)
    # The mask must be an integer tensor (as text encoders give it): LTXV turns an integer
    # mask into an additive bias but passes a float one through unchanged, and 0.3.75's
    # sub-quadratic attention then mis-broadcasts it once cond and uncond are batched.
        return ([[cond, {"attention_mask": torch.ones(1, int(tokens), dtype=torch.long)}]],)


class CFGPTestFailingModel:
    """MODEL -> MODEL whose `call`-th model call on `rank` fails (an allocation that cannot succeed,
    or a RuntimeError). Each tag counts its own calls."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "kind": (["oom", "raise"],),
            "rank": ("INT", {"default": 1, "min": 0, "max": 63}),
            "call": ("INT", {"default": 2, "min": 0, "max": 10000}),
            "tag": ("STRING", {"default": "t"}),
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "_for_testing/cfgp"

    def patch(self, model, kind, rank, call, tag):
        m = model.clone()
        m.set_model_unet_function_wrapper(FailingModelCall(kind, int(rank), int(call), str(tag)))
        m.patches_uuid = uuid.uuid4()  # a new patcher on the ranks, not the one they cached
        return (m,)


class CFGPTestLatent:
    """A random LATENT of any shape: (batch, channels, height, width), or with frames > 0 a video
    latent (batch, channels, frames, height, width)."""

    @classmethod
    def INPUT_TYPES(cls):
        dim = ("INT", {"default": 8, "min": 0, "max": 4096})
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF}),
                             "batch": ("INT", {"default": 1, "min": 1, "max": 64}),
                             "channels": ("INT", {"default": 16, "min": 1, "max": 4096}),
                             "frames": dim, "height": dim, "width": dim}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "_for_testing/cfgp"

    def make(self, seed, batch, channels, frames, height, width):
        shape = (batch, channels) + ((frames,) if frames > 0 else ()) + (height, width)
        return ({"samples": torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))},)


class CFGPTestSaveTensor:
    """Writes an IMAGE exactly (safetensors, key ``images``) to the output folder: PNGs round."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "cfgp_tensor"})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "_for_testing/cfgp"

    def save(self, images, filename_prefix):
        import folder_paths
        from safetensors.torch import save_file

        name = f"{filename_prefix}_{uuid.uuid4().hex[:8]}.safetensors"
        save_file({"images": images.contiguous()}, os.path.join(folder_paths.get_output_directory(), name))
        return {"ui": {"tensors": [name]}}


class CFGPTestSlowConditioning:
    """CONDITIONING -> the same CONDITIONING after `seconds`: a slow node before the sampler (a text encoder)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",),
                             "seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 600.0})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "wait"
    CATEGORY = "_for_testing/cfgp"

    def wait(self, conditioning, seconds):
        time.sleep(float(seconds))
        return (conditioning,)


NODE_CLASS_MAPPINGS = {"CFGPTestConditioning": CFGPTestConditioning, "CFGPTestFailingModel": CFGPTestFailingModel,
                       "CFGPTestLatent": CFGPTestLatent, "CFGPTestSaveTensor": CFGPTestSaveTensor,
                       "CFGPTestSlowConditioning": CFGPTestSlowConditioning}
NODE_DISPLAY_NAME_MAPPINGS = {"CFGPTestConditioning": "CFGP Test Conditioning",
                              "CFGPTestSlowConditioning": "CFGP Test Slow Conditioning",
                              "CFGPTestFailingModel": "CFGP Test Failing Model",
                              "CFGPTestLatent": "CFGP Test Latent", "CFGPTestSaveTensor": "CFGP Test Save Tensor"}
