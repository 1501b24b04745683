"""Tiny real models of each split family (ComfyUI's own classes, random weights) and the worker
job that evaluates one of them split over a sequence group against the whole evaluation.

Every rank builds the same model from the same seed, so no weights travel. 12 heads of 8 by
default: divisible by degrees 2, 3 and 4; ``heads`` 2 at degree 3 or 4 takes the fallback
(gathered K/V); ``tokens`` fewer than the ranks pads the last ranks.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from devkit.tiny_models import init_weights

from .paths import import_comfy
from .sequence_jobs import _outputs, digest

HEAD_DIM = 8
TEXT_TOKENS = 7


def _ops() -> dict:
    import comfy.ops

    return {"dtype": torch.float32, "device": "cpu", "operations": comfy.ops.disable_weight_init}


def tiny_wan(heads: int, layers: int = 2):
    from comfy.ldm.wan.model import WanModel

    dim = heads * HEAD_DIM
    return WanModel(model_type="t2v", patch_size=(1, 2, 2), in_dim=16, dim=dim, ffn_dim=2 * dim, freq_dim=32,
                    text_dim=24, out_dim=16, num_heads=heads, num_layers=layers, **_ops())


def tiny_flux(heads: int, layers: int = 2):
    import dataclasses

    from comfy.ldm.flux.model import Flux, FluxParams

    params = dict(in_channels=16, out_channels=16, vec_in_dim=12, context_in_dim=24, hidden_size=heads * HEAD_DIM,
                  mlp_ratio=2.0, num_heads=heads, depth=layers, depth_single_blocks=layers, axes_dim=[2, 2, 4],
                  theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[])
    known = {f.name for f in dataclasses.fields(FluxParams)}  # 0.3.75 has no txt_ids_dims
    return Flux(image_model="flux", **{k: v for k, v in params.items() if k in known}, **_ops())


def tiny_qwen_image(heads: int, layers: int = 2):
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=layers,
                                       attention_head_dim=HEAD_DIM, num_attention_heads=heads,
                                       joint_attention_dim=24, axes_dims_rope=(2, 2, 4), **_ops())


def _wan_call(gen, batch: int, frames: int, height: int, width: int) -> dict:
    return {"x": torch.randn(batch, 16, frames, height, width, generator=gen),
            "timestep": torch.tensor([700.0, 400.0][:batch]),
            "context": torch.randn(batch, TEXT_TOKENS, 24, generator=gen)}


def _flux_call(gen, batch: int, frames: int, height: int, width: int) -> dict:
    return {"x": torch.randn(batch, 16, height, width, generator=gen), "timestep": torch.tensor([0.7, 0.4][:batch]),
            "context": torch.randn(batch, TEXT_TOKENS, 24, generator=gen), "y": torch.randn(batch, 12, generator=gen),
            "guidance": torch.tensor([3.5, 3.5][:batch])}


def _qwen_call(gen, batch: int, frames: int, height: int, width: int) -> dict:
    mask = torch.ones(batch, TEXT_TOKENS, dtype=torch.long)
    mask[:, -2:] = 0
    return {"x": torch.randn(batch, 16, 1, height, width, generator=gen), "timestep": torch.tensor([0.7, 0.4][:batch]),
            "context": torch.randn(batch, TEXT_TOKENS, 24, generator=gen), "attention_mask": mask}


# family name -> (module builder, inputs builder); latent height/width are in pixels of the latent
FAMILY_MODELS = {"wan": (tiny_wan, _wan_call), "flux": (tiny_flux, _flux_call),
                 "qwen_image": (tiny_qwen_image, _qwen_call)}  # MiniMax-H3: support.tiny_minimax


@dataclass(frozen=True)
class FamilySplitEvalJob:
    """One evaluation of a tiny ``family`` model split over ``degree`` ranks (world = groups x
    degree) and the same evaluation whole; rank 0 returns both and the split's stats."""

    family: str
    degree: int
    heads: int = 12
    frames: int = 2
    height: int = 6
    width: int = 6
    batch: int = 2
    seed: int = 0
    masked: bool = False  # MiniMax-H3: denoise masks (per-token modulation rows)

    def run(self, ctx):
        import_comfy()
        from cfg_runtime.adapters.families import family_of
        from cfg_runtime.parallel.sequence import cached_sequence_group

        if self.family == "minimax_h3":
            from .tiny_minimax import minimax_call, tiny_minimax

            model, inputs = tiny_minimax(self.heads, self.seed), partial(minimax_call, masked=self.masked)
        else:
            build, inputs = FAMILY_MODELS[self.family]
            model = build(self.heads)
            init_weights(model, self.seed, std=0.2)
            model.eval()
        family = family_of(model)
        assert family.name == self.family, (family.name, self.family)
        group = cached_sequence_group(ctx.cache, ctx.rank, ctx.world_size, self.degree)
        split = family.make_split(model, group)
        call = inputs(torch.Generator().manual_seed(self.seed + 1), self.batch, self.frames, self.height, self.width)
        with torch.no_grad():
            whole = _outputs(model(**call, transformer_options={}))
            split_out = _outputs(model(**call, **split.apply({"transformer_options": {}})))
        stats = vars(split.stats).copy()
        ctx.summary.update({"sequence": stats, "split_digest": digest(split_out)})
        return {"whole": whole, "split": split_out, "stats": stats} if ctx.rank == 0 else None


# A Wan 2.1 t2v file that core detection reads as 2 heads of 128 (dim 256), 2 blocks: Ulysses at degree 2.
TINY_WAN_SPLIT_CONFIG = {"model_type": "t2v", "dim": 256, "ffn_dim": 64, "num_heads": 2, "num_layers": 2,
                         "in_dim": 16, "out_dim": 16}
WAN_TEXT_CHANNELS = 4096  # fixed by detection


def build_tiny_wan_split(path, seed: int = 0, std: float = 0.05):
    """Write the tiny Wan above as a safetensors file (what UNETLoader loads)."""
    import_comfy()
    from comfy.ldm.wan.model import WanModel
    from safetensors.torch import save_file

    model = WanModel(**TINY_WAN_SPLIT_CONFIG, **_ops())
    init_weights(model, seed, std)
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(path))
    return path
