"""CFG Parallel Group Status: what the worker group is doing, as text on the node and as a
per-rank timeline picture of the last job.

Reading the status touches no model. Put it in the same prompt as the sampling (its
optional ``after`` input takes any output, e.g. the sampler's latent, so it runs once the
job is done): a prompt holding only this node makes the next prompt load the model on every
rank again (ComfyUI 0.3.75's default, classic, cache drops every node output the prompt does
not hold, the loaded model among them; 0.29 reloads on the ranks too).
"""
from __future__ import annotations

import json

from comfy_api.latest import io, ui

from cfg_runtime.adapters.sampling.group_sampling import resident_model
from cfg_runtime.adapters.models.launch_options import config_differences, effective_config
from cfg_runtime.group import current_group, shutdown_group

from .common import ALIASES_COMMON, PREFIX, categories, deprecated_alias, schema
from .timeline import draw_timeline, to_image


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def group_report() -> dict:
    group = current_group()
    if group is None:
        return {"state": "not started", "hint": "The group starts with the first prompt at parallel size >= 2 "
                                                "(or with ComfyUI: CFG_PARALLEL_START_AT_LAUNCH)."}
    group.refresh()  # a group started with ComfyUI is ready before any prompt waited for it
    report = group.status()
    report["loaded_model"] = resident_model(group)  # the ranks' own report, kept by the adapters
    report["rss_mib"] = {pid: _rss_mib(pid) for pid in group.pids()}
    report["comfyui_config"] = here = effective_config()  # what each rank's "rank_setup" should match
    report["config_differences"] = [config_differences(here, s) if s else None for s in report["rank_setup"]]
    return report


def _gib(n) -> str:
    return f"{n / 2**30:.2f} GiB" if isinstance(n, (int, float)) else "—"


def summary_text(report: dict) -> str:
    """The report as a few readable lines (the node shows them)."""
    if report.get("state") == "not started":
        return f"Worker group: not started.\n{report.get('hint', '')}"
    devices = report.get("devices") or []
    lines = [f"Worker group: {report.get('state')} · {len(devices)} ranks · {report.get('backend')} · "
             f"jobs run {report.get('jobs_run', 0)}"]
    if report.get("finishing_interrupted_job"):
        lines.append("finishing an interrupted job")
    lines.append(f"model: {report.get('loaded_model') or 'none loaded'}")
    differences = [d for d in report.get("config_differences") or () if d]
    if differences:
        lines.append("ranks differ from this ComfyUI's launch options: " + "; ".join(differences[0])[:300])
    if report.get("last_error"):
        lines.append(f"last error: {str(report['last_error'])[:300]}")
    job = report.get("last_job") or {}
    per_rank = list(job.get("per_rank") or ())
    rss = report.get("rss_mib") or {}
    pids = report.get("pids") or []
    lines.append("")
    for rank, device in enumerate(devices):
        pid = pids[rank] if rank < len(pids) else None
        mem = rss.get(pid, rss.get(str(pid))) if pid is not None else None
        s = per_rank[rank] if rank < len(per_rank) else {}
        gpu = f", GPU peak {_gib(s['peak_gpu_bytes'])}" if s.get("peak_gpu_bytes") is not None else ""
        lines.append(f"rank {rank}  {device}  pid {pid}  RAM {mem if mem is not None else '—'} MiB{gpu}")
    lines.append("(idle: evaluations where the rank had no branch and only exchanged)")
    if per_rank:
        steps = {row[0] for s in per_rank for row in s.get("timeline") or ()}
        lines += ["", f"last job: {job.get('seconds', 0):.2f} s, {len(steps)} steps, "
                      f"{per_rank[0].get('evaluations', 0)} evaluations"]
        for rank, s in enumerate(per_rank):
            forwards = ", ".join(f"{b}×{n}" for b, n in (s.get("forwards") or {}).items()) or "none (idle)"
            reloaded = " · model loaded for this job" if s.get("model_reloaded") else ""
            lines.append(f"rank {rank}: {forwards} · forward {s.get('forward_s', 0):.2f} s · exchange "
                         f"{s.get('exchange_s', 0):.2f} s · idle {s.get('idle_evaluations', 0)}/"
                         f"{s.get('evaluations', 0)}{reloaded}")
    return "\n".join(lines)


class CFGParallelGroupStatus(io.ComfyNode):
    """Shows the worker group's state and last job; can shut it down to free the GPUs."""

    TEXT_AS_JSON = False  # the deprecated id keeps its old contract: the node's text is the JSON report

    @classmethod
    def define_schema(cls):
        return schema(
            node_id=PREFIX + "GroupStatus",
            display_name="CFG Parallel Group Status",
            category=categories()["multigpu"],
            description=("Shows the multi-GPU worker group on the node: state, devices, model, memory per rank, and "
                         "the last job's branches and timings per rank; draws that job as a per-rank timeline "
                         "(forward, idle, exchange per step, coloured by branch). Optionally shuts the group down to "
                         "free the GPUs. Connect 'after' to the sampler's output so it reports the job just run."),
            search_aliases=ALIASES_COMMON + ["status", "group status", "timeline", "workers", "shutdown", "free gpu"],
            is_output_node=True,
            inputs=[
                io.Boolean.Input("shutdown", default=False, tooltip=(
                    "Stop the workers and free their memory (they restart, and load the model again, with the next "
                    "parallel prompt).")),
                io.AnyType.Input("after", optional=True, tooltip=(
                    "Any output (e.g. the sampler's latent): the status is read after that node ran, in the same "
                    "prompt. Nothing is read from it.")),
            ],
            outputs=[io.String.Output("status", display_name="status", tooltip=(
                         "The full report as JSON (state, devices, pids, memory, the last job's per-rank summaries).")),
                     io.Image.Output("timeline", display_name="timeline", tooltip=(
                         "The last job drawn per rank: forward (coloured by branch), idle and exchange time of "
                         "every model evaluation."))],
        )

    @classmethod
    def fingerprint_inputs(cls, shutdown, after=None):
        return float("nan")  # always run: the status changes outside the graph

    @classmethod
    def execute(cls, shutdown, after=None) -> io.NodeOutput:
        if shutdown:
            shutdown_group()
        report = group_report()
        text = json.dumps(report, indent=2, default=str)
        picture = draw_timeline(report.get("last_job") or {})
        image = to_image(picture)
        shown = {"text": (text if cls.TEXT_AS_JSON else summary_text(report),)}
        shown.update(ui.PreviewImage(image, cls=cls).as_dict())
        return io.NodeOutput(text, image, ui=shown)


class _LegacyGroupStatus(CFGParallelGroupStatus):
    TEXT_AS_JSON = True


NODES = [CFGParallelGroupStatus]
LEGACY = {"CFGParallelGroupStatus": deprecated_alias(_LegacyGroupStatus, "CFGParallelGroupStatus")}
