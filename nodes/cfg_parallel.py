"""CFG Parallel: MODEL -> MODEL. Every sampling of the model runs its guidance branches on the worker group.

Placed after the loader and the patch nodes (LoRA, ModelSampling*, ...), it makes KSampler,
KSamplerAdvanced, SamplerCustom(Advanced) with CFGGuider / BasicGuider / DualCFGGuider run
their branches in parallel, with the guidance read from the sampler node, or the connected
CFG_POLICY. The hook is a sampling wrapper (cfg_runtime.adapters.sampling.model_wrapper).
"""
from __future__ import annotations

from comfy_api.latest import io

from cfg_runtime.adapters.sampling.group_sampling import start_early
from cfg_runtime.adapters.sampling.guider import ParallelSettings
from cfg_runtime.adapters.models.model_checks import check_model_options, check_policy_fits_model
from cfg_runtime.adapters.sampling.model_wrapper import foreign_wrappers, with_group_sampling
from cfg_runtime.errors import PolicyError
from cfg_runtime.guidance.policy import CFGPolicy

from .common import schema
from .guider import sequence_degree, sequence_input
from .policy_builder import CFG_POLICY
from .batch_split import batch_groups, batch_input

NODE_ID = "CFGParallelMultiGPU_Model"
DISPLAY_NAME = "CFG Parallel"
NODE = "the CFG Parallel node"  # how messages name it


class CFGParallelModel(io.ComfyNode):
    """MODEL -> MODEL: the model's samplings run their guidance branches on N worker processes."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id=NODE_ID,
            display_name=DISPLAY_NAME,
            category="advanced/multigpu",
            search_aliases=["multi gpu", "multigpu", "parallel", "cfg split", "gpu", "distributed",
                            "sequence parallel", "ulysses"],
            description=(
                "Runs the guidance branches of every sampling of this model (the positive and the negative pass of "
                "KSampler, KSamplerAdvanced, CFGGuider, DualCFGGuider) at the same time on N worker processes, one "
                "per GPU, which keep the model loaded between prompts. The result equals parallel size 1 bit for "
                "bit. With sequence_split, GPUs beyond the branch count (cfg 1 on 2 GPUs) split one branch's "
                "tokens. Place it after the loader and the LoRA / ModelSampling nodes."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model, after its loader and patch nodes."),
                io.Int.Input("parallel_size", default=1, min=1, max=64, tooltip=(
                    "Worker processes (one per device). 1 = the branches one after another in ComfyUI (the serial "
                    "reference). More ranks than branches leaves the extra ranks idle unless sequence_split uses "
                    "them.")),
                io.String.Input("devices", default="", tooltip=(
                    "Empty = the first parallel_size GPUs (CPU ranks when there is no GPU). Or list them: "
                    "'cuda:0,cuda:1', or 'cpu'.")),
                CFG_POLICY.Input("policy", optional=True, tooltip=(
                    "Optional, from the CFGPolicy Builder (STG, LTX-2 guidance, custom branches). Not connected: "
                    "standard CFG with the sampler node's cfg, positive and negative.")),
                sequence_input(),
                batch_input(),
            ],
            outputs=[io.Model.Output(tooltip="The same model; connect it to the sampler node(s).")],
        )

    @classmethod
    def execute(cls, model, parallel_size: int, devices: str, policy: CFGPolicy | None = None,
                sequence_split: str = "off", batch_split: str = "off") -> io.NodeOutput:
        if policy is not None:
            if not isinstance(policy, CFGPolicy):
                raise PolicyError("The policy input must come from a CFGPolicy Builder node.")
            check_policy_fits_model(policy, model)
        check_model_options(model.model_options, policy, NODE, parallel_size)
        foreign = foreign_wrappers(model)
        if foreign:
            raise PolicyError(f"The model carries sampling wrappers of other nodes ({', '.join(foreign)}), which "
                              f"the worker processes cannot run: remove those nodes, or leave CFG Parallel out.")
        settings = ParallelSettings(world_size=parallel_size, devices=devices,
                                    sequence_degree=sequence_degree(sequence_split), node=NODE, split_option=True,
                                    batch_split=batch_groups(batch_split))
        settings.group_spec()  # a bad device request fails here, at this node
        # the ranks start (and the ranks' copy of the weights is built) now, while ComfyUI runs the nodes
        # before the sampler, where they will get work
        start_early(settings, len(policy.branches) if policy is not None else 0, model)
        return io.NodeOutput(with_group_sampling(model, settings, policy))
