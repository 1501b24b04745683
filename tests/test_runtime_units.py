"""Policies, plans and the dispatcher in one process (no workers)."""
import pytest
import torch

from cfg_runtime.errors import GroupConfigError, PolicyError, PredictionError
from cfg_runtime.group import parse_devices
from cfg_runtime.parallel.plan import cost_balanced_plan, make_plan, round_robin_plan
from cfg_runtime.guidance.policy import CFGBranch, CFGPolicy, CombineContext, StandardCFG
from cfg_runtime.guidance.presets import custom, ltx2_multimodal, parse_custom_spec, standard_cfg
from cfg_runtime.guidance.ltx import ModalityGuidance
from support.toy import ToyFaults, ToySampleJob, run_serial


def branches(n, costs=None):
    return [CFGBranch(f"b{i}", cost=(costs[i] if costs else 1.0)) for i in range(n)]


@pytest.mark.parametrize("planner", [round_robin_plan, cost_balanced_plan])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 8])
def test_plan_assigns_each_branch_once(planner, n, m):
    plan = planner(branches(n), m)
    flat = [name for a in plan.assignment for name in a]
    assert sorted(flat) == sorted(f"b{i}" for i in range(n))
    assert plan.world_size == m
    assert len(plan.idle_ranks) == max(0, m - n)
    assert plan == planner(branches(n), m)  # deterministic


def test_cost_balanced_beats_round_robin_on_uneven_costs():
    bs = branches(4, [1.0, 0.2, 1.0, 0.2])  # costs on which the two planners differ
    rr, cb = round_robin_plan(bs, 2), cost_balanced_plan(bs, 2)
    assert sorted(rr.rank_loads()) == pytest.approx([0.4, 2.0])  # b0+b2 | b1+b3
    assert sorted(cb.rank_loads()) == pytest.approx([1.2, 1.2])  # one heavy and one light branch each
    assert cb.utilisation() > rr.utilisation()
    assert "utilisation" in cb.describe()


def test_plan_errors():
    with pytest.raises(GroupConfigError, match="at least 1"):
        round_robin_plan(branches(2), 0)
    with pytest.raises(GroupConfigError, match="Unknown plan strategy"):
        make_plan(branches(2), 2, "random")


def test_policy_validation_errors():
    with pytest.raises(PolicyError, match="Duplicate branch name 'cond'"):
        CFGPolicy("x", (CFGBranch("cond"), CFGBranch("cond", "negative")), StandardCFG(2.0))
    with pytest.raises(PolicyError, match="needs branches"):
        CFGPolicy("x", (CFGBranch("cond"),), StandardCFG(2.0))
    with pytest.raises(PolicyError, match="cond must be one of"):
        CFGBranch("a", "sideways").validate()
    with pytest.raises(PolicyError, match="rescale"):
        standard_cfg(3.0, rescale=2.0)
    with pytest.raises(PolicyError, match="name:positive"):
        parse_custom_spec("neg-negative-2")
    with pytest.raises(PolicyError, match="not a number"):
        parse_custom_spec("neg:negative:abc")
    with pytest.raises(PolicyError, match="Not a valid policy"):
        CFGPolicy.from_dict({"name": "x"})


def test_policy_json_round_trip_and_noop_branches():
    for policy in (standard_cfg(4.0, rescale=0.5), standard_cfg(3.0, cfg_zero_star=True),
                   custom([("neg", "negative", 2.0), ("alt", "positive", -0.5)]),
                   ltx2_multimodal(ModalityGuidance.LTX2_VIDEO, ModalityGuidance.LTX2_AUDIO)):
        assert CFGPolicy.from_json(policy.to_json()) == policy
    assert standard_cfg(1.0).names == ("cond",)  # the no-op negative is not built
    quiet = ModalityGuidance(cfg=1.0, stg=0.0, stg_blocks=(), modality=1.0, rescale=0.0, skip_step=0)
    assert ltx2_multimodal(quiet, quiet).names == ("cond",)
    full = ltx2_multimodal(ModalityGuidance.LTX2_VIDEO, ModalityGuidance.LTX2_AUDIO)
    assert full.names == ("cond", "negative", "perturbed", "isolated")
    assert "STG video blocks" in full.describe()


def test_standard_cfg_formula_in_fp32_returns_model_dtype():
    c, u = torch.randn(2, 4, 8, dtype=torch.bfloat16), torch.randn(2, 4, 8, dtype=torch.bfloat16)
    out = standard_cfg(5.0).combine({"cond": c, "negative": u}, CombineContext(x=c, step=0))
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (u.float() + 5.0 * (c.float() - u.float())).to(torch.bfloat16))


def test_custom_formula():
    c, a, b = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    pol = custom([("a", "negative", 2.0), ("b", "positive", 0.5)])
    out = pol.combine({"cond": c, "a": a, "b": b}, CombineContext(x=c, step=0))
    assert torch.allclose(out, c + 2.0 * (c - a) + 0.5 * (c - b))


def test_parse_devices():
    assert parse_devices("cpu", 3) == ("cpu", "cpu", "cpu")
    with pytest.raises(GroupConfigError, match="at least 1"):
        parse_devices("cpu", 0)
    with pytest.raises(GroupConfigError, match="at least 1"):
        parse_devices("", -2)
    if torch.cuda.device_count() == 0:
        with pytest.raises(GroupConfigError, match="this ComfyUI process sees 0"):
            parse_devices("cuda:0,cuda:1", 2)
        assert parse_devices("", 2) == ("cpu", "cpu")
    with pytest.raises(GroupConfigError, match="exactly one device per rank"):
        parse_devices("cpu,cpu", 3)
    with pytest.raises(GroupConfigError, match="Unknown device"):
        parse_devices("tpu:0,cpu", 2)


def test_dispatcher_errors_name_the_branch():
    pol = custom([("neg", "negative", 2.0), ("alt", "positive", 0.5)])
    with pytest.raises(PredictionError, match="Branch 'alt' produced NaN"):
        run_serial(ToySampleJob(pol, faults=ToyFaults(nan_branch="alt", at_step=1)))
    with pytest.raises(PredictionError, match="Branch 'neg' returned a prediction of shape"):
        run_serial(ToySampleJob(pol, faults=ToyFaults(bad_shape_branch="neg", at_step=0)))


def test_serial_dispatcher_runs_every_branch_once_per_step():
    pol = custom([("neg", "negative", 2.0), ("alt", "positive", 0.5)])
    _, summary = run_serial(ToySampleJob(pol, steps=3))
    assert summary["forwards"] == {"cond": 3, "neg": 3, "alt": 3}


def test_every_rule_names_its_cfg_scale():
    """What post-CFG functions get as cond_scale: the scale the rule really applies."""
    from cfg_runtime.guidance.ltx import ModalityGuidance

    assert standard_cfg(4.5).rule.cfg_scale == 4.5
    assert custom([("negative", "negative", 2.0), ("ptb", "positive", 1.0)]).rule.cfg_scale == 3.0
    assert custom([("ptb", "positive", 1.0)]).rule.cfg_scale == 1.0
    video, audio = ModalityGuidance(cfg=3.0), ModalityGuidance(cfg=7.0)
    assert ltx2_multimodal(video, audio).rule.cfg_scale == 3.0


def test_a_gpu_group_this_process_cannot_start_is_refused_in_one_message():
    """Before any rank starts, with another machine's facts passed in: Windows ComfyUI >= 0.33
    shows one GPU unless started with --cuda-device all, and its PyTorch has no NCCL."""
    with pytest.raises(GroupConfigError) as one_gpu:
        parse_devices("", 2, visible_gpus=1, nccl=True)
    text = str(one_gpu.value)
    assert "sees 1" in text and "--cuda-device all" in text and "parallel size 1" in text and "'cpu'" in text
    with pytest.raises(GroupConfigError, match="use at most 2 ranks, on cuda:0 to cuda:1"):
        parse_devices("cuda:0,cuda:3", 2, visible_gpus=2, nccl=True)
    with pytest.raises(GroupConfigError) as no_nccl:
        parse_devices("cuda:0,cuda:1", 2, visible_gpus=2, nccl=False)
    text = str(no_nccl.value)
    assert "NCCL" in text and "CFG_PARALLEL_BACKEND=gloo" in text and "'cpu'" in text and "sees" not in text
    with pytest.raises(GroupConfigError) as both:  # Windows, ComfyUI 0.33 as started by default
        parse_devices("", 2, visible_gpus=1, nccl=False)
    assert "--cuda-device all" in str(both.value) and "NCCL" in str(both.value)
    assert parse_devices("cuda:0,cuda:1", 2, "gloo", visible_gpus=2, nccl=False) == ("cuda:0", "cuda:1")
    assert parse_devices("", 2, visible_gpus=2, nccl=True) == ("cuda:0", "cuda:1")
    assert parse_devices("cpu", 2, visible_gpus=1, nccl=False) == ("cpu", "cpu")
    assert parse_devices("", 1, visible_gpus=1, nccl=False) == ("cuda:0",)  # size 1 needs no NCCL (Windows)


def test_on_this_machine_gpu_devices_are_refused_with_what_to_do():
    """The real path: torch's own GPU count and NCCL on this machine."""
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    with pytest.raises(GroupConfigError, match="--cuda-device all"):
        parse_devices("cuda:0,cuda:1", 2)
