"""LTX2 Sampler: the whole LTX-2 job (one or two stages) in one node, on the worker group."""
from __future__ import annotations

from comfy_api.latest import io

from cfg_runtime.adapters.sampling.guider import ParallelSettings
from cfg_runtime.adapters.sampling.ltx_pipeline import DISTILLED_STAGE2_SIGMAS, StagePlan, parse_sigmas, run_ltx2
from cfg_runtime.adapters.sampling.ltx_pipeline import decode_final
from cfg_runtime.errors import PolicyError
from cfg_runtime.guidance.policy import CFGPolicy

from .batch_split import batch_groups, batch_input
from .common import ALIASES_COMMON, PREFIX, categories, deprecated_alias, schema
from .guider import parallel_inputs, sequence_degree, sequence_input
from .policy_builder import CFG_POLICY
from .vae_decode import decode_inputs, tile_settings


class LTX2Sampler(io.ComfyNode):
    """Stage 1 guided with the policy on the group; optional upsample + distilled stage 2 (cond only)."""

    @classmethod
    def define_schema(cls):
        return schema(
            node_id=PREFIX + "LTX2Sampler",
            display_name="LTX2 Sampler",
            category=categories()["samplers"],
            description=("Runs LTX-2 sampling in one node, on several GPUs. Stage 1 evaluates the policy's branches "
                         "(cond, negative, STG, modality) in parallel on the worker group. two_stage then upsamples "
                         "the video latent, joins the stage-1 audio again and refines with stage2_model and the "
                         "distilled sigmas. Stage 2 has one branch: with sequence_split auto it is split over every rank, "
                         "with off it runs on one rank while the others wait. decode on also decodes the final video "
                         "with the vae as VAE Decode (Tiled) would, its tiles spread over the ranks (images output)."),
            search_aliases=ALIASES_COMMON + ["LTX-2", "LTX2", "LTXV", "two stage", "audio video", "STG", "sampler"],
            inputs=[
                io.Model.Input("model", tooltip="LTX-2 (audio+video) or LTX-Video model for stage 1."),
                io.Conditioning.Input("positive", tooltip=(
                    "Positive conditioning (LTXVConditioning's positive): the cond, STG and modality passes.")),
                io.Conditioning.Input("negative", tooltip=(
                    "Negative conditioning (LTXVConditioning's negative): the CFG pass.")),
                CFG_POLICY.Input("policy", tooltip="Usually the ltx2_multimodal preset of the CFGPolicy Builder."),
                io.Latent.Input("latent", tooltip="Audio+video latent (LTXVConcatAVLatent) or a video latent."),
                io.Sampler.Input("sampler", tooltip="The sampler of both stages, e.g. KSamplerSelect euler."),
                io.Sigmas.Input("sigmas", tooltip="Stage-1 sigmas, e.g. LTXVScheduler with 40 steps (LTX-2.3: 30)."),
                io.Int.Input("noise_seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the stage-1 noise (stage 2 adds noise from the same seed)."),
                io.Combo.Input("mode", options=["one_stage", "two_stage"], default="one_stage", tooltip=(
                    "one_stage: stage 1 only. two_stage: stage 1, x2 latent upsample, distilled stage-2 refine.")),
                *parallel_inputs(),
                io.String.Input("stage2_sigmas", default=", ".join(str(s) for s in DISTILLED_STAGE2_SIGMAS),
                                tooltip="Sigmas of the distilled stage-2 refine (two_stage)."),
                io.Model.Input("stage2_model", optional=True, tooltip=(
                    "Stage-2 model (e.g. with the distilled LoRA); defaults to the stage-1 model.")),
                io.LatentUpscaleModel.Input("upscale_model", optional=True,
                                            tooltip="LTX-2 spatial upscaler (two_stage)."),
                io.Vae.Input("vae", optional=True, tooltip=(
                    "Video VAE, for the upsampler's normalisation (two_stage) and for decode on.")),
                sequence_input(),
                batch_input(),
                *decode_inputs(),
            ],
            outputs=[io.Latent.Output("final_latent", display_name="latent", tooltip="The final audio+video latent."),
                     io.Latent.Output("stage1_latent_out", display_name="stage1_latent",
                                      tooltip="The stage-1 latent (before upsampling)."),
                     io.Image.Output("images", display_name="images", tooltip=(
                         "With decode on: the final video's frames, equal to LTXVSeparateAVLatent + VAE Decode (Tiled) "
                         "with the same settings. With decode off it is empty: a node connected to it does not run "
                         "and ComfyUI reports 'Execution Blocked' (set decode on)."))],
        )

    @classmethod
    def execute(cls, model, positive, negative, policy, latent, sampler, sigmas, noise_seed, mode, parallel_size,
                devices, stage2_sigmas, stage2_model=None, upscale_model=None, vae=None,
                sequence_split="off", batch_split="off", decode="off", tile_size=512, overlap=64, temporal_size=64,
                temporal_overlap=8) -> io.NodeOutput:
        if not isinstance(policy, CFGPolicy):
            raise PolicyError("The policy input must come from a CFGPolicy Builder node.")
        tiles = tile_settings(decode, tile_size, overlap, temporal_size, temporal_overlap)
        plan = StagePlan(two_stage=mode == "two_stage", stage2_sigmas=parse_sigmas(stage2_sigmas), decode=tiles)
        settings = ParallelSettings(world_size=parallel_size, devices=devices,
                                    sequence_degree=sequence_degree(sequence_split), node="the LTX2 Sampler",
                                    split_option=True, batch_split=batch_groups(batch_split))
        settings.group_spec()  # a bad device request fails here, at any size, before stage 1 starts
        final, stage1 = run_ltx2(model, positive, negative, policy, latent, sampler, sigmas, noise_seed, settings,
                                 plan, upscale_model=upscale_model, vae=vae, stage2_model=stage2_model)
        return io.NodeOutput(final, stage1, decode_final(final, vae, tiles, settings))

    @classmethod
    def sample(cls, *args, **kwargs):
        """The classic call (a tuple), for code that calls the node directly."""
        return tuple(cls.execute(*args, **kwargs).args)


NODES = [LTX2Sampler]
LEGACY = {"LTX2Sampler": deprecated_alias(LTX2Sampler, "LTX2Sampler")}
