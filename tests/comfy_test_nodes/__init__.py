"""Test-only ComfyUI nodes (loaded by the test server; not part of the pack)."""
import torch


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


NODE_CLASS_MAPPINGS = {"CFGPTestConditioning": CFGPTestConditioning}
NODE_DISPLAY_NAME_MAPPINGS = {"CFGPTestConditioning": "CFGP Test Conditioning"}
