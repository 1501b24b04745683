"""Multi-Branch Guider: model + conditioning + policy -> GUIDER for SamplerCustomAdvanced."""
from __future__ import annotations

from comfy_api.latest import io

from cfg_runtime.adapters.sampling.group_sampling import start_early
from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings
from cfg_runtime.adapters.models.model_checks import check_policy_fits_model
from cfg_runtime.errors import PolicyError
from cfg_runtime.guidance.policy import CFGPolicy
from cfg_runtime.parallel.layout import parse_sequence_degree
from cfg_runtime.parallel.plan import PLANNERS

from .batch_split import batch_groups, batch_input
from .common import ALIASES_COMMON, PREFIX, SPLIT_OPTIONS, categories, deprecated_alias, schema, split_input
from .policy_builder import CFG_POLICY

PARALLEL_SIZE_TIP = ("Worker processes, one per device. 1 = in ComfyUI, no extra model copy. 2 or more: the branches "
                     "of every step run at the same time, one rank per branch is the most that helps; more ranks than "
                     "branches leaves the extra ranks idle.")
DEVICES_TIP = ("Empty = the first parallel_size GPUs (or CPU ranks when there is no GPU). Or list them: "
               "'cuda:0,cuda:1', or 'cpu'.")


SEQUENCE_SPLIT_TIP = ("Split one branch's video or image tokens over several ranks (Ulysses sequence parallelism) "
                      "where branches run out: off = branch parallelism only, bit for bit equal to one GPU; auto = "
                      "the layout predicted fastest (e.g. CFG 1 on 2 GPUs: both GPUs work on the one branch); N = "
                      "sequence groups of N ranks (N divides the parallel size). LTX-2, LTX-Video, Wan 2.1/2.2, "
                      "Flux, Chroma and Qwen-Image models; a split changes matmul shapes, so results may differ from "
                      "one GPU by rounding (measured <= 1e-6 relative in fp32).")
SEQUENCE_SPLIT_OPTIONS = SPLIT_OPTIONS


def sequence_input():
    return split_input("sequence_split", SEQUENCE_SPLIT_TIP)


def sequence_degree(choice: str) -> int:
    """The widget's choice as ParallelSettings.sequence_degree: 1 off, 0 automatic, N."""
    if choice not in (None, "", *SEQUENCE_SPLIT_OPTIONS):
        raise PolicyError(f"sequence_split must be one of {', '.join(SEQUENCE_SPLIT_OPTIONS)}, got {choice!r}.")
    return parse_sequence_degree(choice)


def parallel_inputs() -> list:
    """parallel_size and devices: the same two widgets on the guider and the LTX2 Sampler."""
    return [io.Int.Input("parallel_size", default=1, min=1, max=64, tooltip=PARALLEL_SIZE_TIP),
            io.String.Input("devices", default="", tooltip=DEVICES_TIP)]


class MultiBranchGuiderNode(io.ComfyNode):
    """GUIDER that evaluates every branch of a policy, in parallel on a worker group when size >= 2."""

    @classmethod
    def define_schema(cls):
        return schema(
            node_id=PREFIX + "MultiBranchGuider",
            display_name="Multi-Branch Guider",
            category=categories()["guiders"],
            description=("Guides sampling with a CFG policy on several GPUs. Parallel size 1 runs the branches one "
                         "after another in ComfyUI; size N runs them at the same time on N worker processes (one per "
                         "GPU) that keep the model loaded between prompts, and every rank combines them with the "
                         "serial formula, so the result equals one-GPU sampling bit for bit. Connect it to "
                         "SamplerCustomAdvanced."),
            search_aliases=ALIASES_COMMON + ["guider", "cfg guider", "multi branch", "branch parallel", "STG",
                                             "multigpu cfg", "cfg split"],
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (any ComfyUI model; LTX-2 for the LTX-2 preset)."),
                io.Conditioning.Input("positive", tooltip=(
                    "Conditioning of the 'cond' branch (and of the STG and modality-isolated passes).")),
                CFG_POLICY.Input("policy", tooltip="From the CFGPolicy Builder."),
                *parallel_inputs(),
                io.Combo.Input("plan", options=list(PLANNERS), default="cost_balanced", tooltip=(
                    "How branches map to ranks: cost_balanced weighs the cheaper modality pass; round_robin deals "
                    "them out in order.")),
                io.Boolean.Input("keep_model_loaded", default=True, tooltip=(
                    "Keep the model on the workers between prompts (the next prompt starts without reloading).")),
                io.Float.Input("step_timeout_s", default=600.0, min=5.0, max=86400.0, step=5.0, tooltip=(
                    "Seconds without progress before the job is failed and the workers restarted.")),
                io.Conditioning.Input("negative", optional=True, tooltip=(
                    "Conditioning of the 'negative' branch (needed when the policy has one: CFG != 1).")),
                sequence_input(),
                batch_input(),
            ],
            outputs=[io.Guider.Output("GUIDER", display_name="GUIDER", tooltip=(
                "A guider for SamplerCustomAdvanced: it evaluates the policy's branches (in parallel at size >= 2) "
                "and combines them."))],
        )

    @classmethod
    def execute(cls, model, positive, policy, parallel_size, devices, plan, keep_model_loaded, step_timeout_s,
                negative=None, sequence_split="off", batch_split="off") -> io.NodeOutput:
        if not isinstance(policy, CFGPolicy):
            raise PolicyError("The policy input must come from a CFGPolicy Builder node.")
        check_policy_fits_model(policy, model)
        settings = ParallelSettings(world_size=parallel_size, devices=devices, strategy=plan,
                                    keep_model_loaded=keep_model_loaded, step_timeout_s=step_timeout_s,
                                    sequence_degree=sequence_degree(sequence_split),
                                    batch_split=batch_groups(batch_split), split_option=True)
        settings.group_spec()  # fail here, at this node, on a bad device request or timeout (at size 1 too)
        # the ranks start (and the ranks' copy of the weights is built) now, while ComfyUI runs the nodes
        # before the sampler, where they will get work
        start_early(settings, len(policy.branches), model)
        guider = MultiBranchGuider(model, policy, settings)
        guider.set_conds(positive, negative)
        return io.NodeOutput(guider)

    @classmethod
    def get_guider(cls, *args, **kwargs):
        """The classic call (a tuple), for code that calls the node directly."""
        return tuple(cls.execute(*args, **kwargs).args)


NODES = [MultiBranchGuiderNode]
LEGACY = {"MultiBranchGuider": deprecated_alias(MultiBranchGuiderNode, "MultiBranchGuider")}
