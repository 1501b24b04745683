"""Start the worker group when a prompt that will use it is queued, before ComfyUI runs its first node.

When ComfyUI puts a validated prompt in its queue (``PromptQueue.put``, wrapped here; the
wrapper is installed by a ``PromptServer`` prompt handler, so only prompts that passed
ComfyUI's validation get here), the pack's nodes in it are read: a Multi-Branch Guider, LTX2
Sampler or CFG Parallel node whose ``parallel_size`` (2 or more), ``devices`` and split widgets
are plain values and whose policy gives several ranks work (the policy nodes feeding it are
evaluated with their own code, when all their inputs are plain values too), or a VAE Decode
(Multi-GPU) at size 2 or more. Then the ranks start at once, beside the loaders and text
encoders that ComfyUI runs before the sampler, instead of when the sampling node executes.
Only while ComfyUI runs and holds no other prompt (the spawn briefly hides ``__main__`` and
ComfyUI's package folders from ``sys.path``, which another thread's imports must not see; it
happens before the prompt is in the queue), and never in place of a running group. Anything
this cannot read is left to the node itself, which starts the group (and reports errors) as before.
"""
from __future__ import annotations

import logging
from typing import Any

from cfg_runtime.adapters.sampling.group_sampling import gives_several_ranks_work, start_when_queued
from cfg_runtime.adapters.sampling.guider import ParallelSettings

from .batch_split import batch_groups
from .guider import sequence_degree
from .prompt_checks import prompt_server

log = logging.getLogger("cfg_parallel")


def _plain(value: Any) -> bool:
    return not isinstance(value, list)  # a link is [node id, output index]


def _evaluate(prompt: dict, link: Any, policy_nodes: dict, depth: int = 0) -> Any:
    """The output `link` points at, computed with the pack's own policy node code; None where that
    node is not a policy node or any input of it is not a plain value (or another such node)."""
    if not (isinstance(link, list) and len(link) == 2) or depth > 8:
        return None
    node = prompt.get(str(link[0]))
    cls = policy_nodes.get(node.get("class_type")) if isinstance(node, dict) else None
    if cls is None:
        return None
    inputs = {}
    for key, value in (node.get("inputs") or {}).items():
        if not _plain(value):
            value = _evaluate(prompt, value, policy_nodes, depth + 1)
            if value is None:
                return None
        inputs[key] = value
    output = cls.execute(**inputs)
    values = getattr(output, "args", output)
    return values[int(link[1])] if isinstance(values, (tuple, list)) and int(link[1]) < len(values) else None


def _settings(inputs: dict) -> ParallelSettings | None:
    size, devices = inputs.get("parallel_size"), inputs.get("devices", "")
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 2 and isinstance(devices, str)):
        return None
    sequence, batch = inputs.get("sequence_split", "off"), inputs.get("batch_split", "off")
    timeout = inputs.get("step_timeout_s", ParallelSettings.step_timeout_s)
    if not (_plain(sequence) and _plain(batch) and isinstance(timeout, (int, float))):
        return None
    settings = ParallelSettings(world_size=size, devices=devices, sequence_degree=sequence_degree(sequence),
                                batch_split=batch_groups(batch), step_timeout_s=float(timeout))
    settings.group_spec()  # what the node refuses (devices, timeouts) starts nothing here either
    return settings


def group_for(prompt: dict, sampling: set[str], decoding: set[str], policy_nodes: dict) -> ParallelSettings | None:
    """The settings of the first of the pack's nodes in `prompt` that will run on the group, or None."""
    for node in prompt.values():
        kind = node.get("class_type") if isinstance(node, dict) else None
        if kind not in sampling and kind not in decoding:
            continue
        inputs = node.get("inputs") or {}
        try:
            settings = _settings(inputs)
            if settings is None:
                continue
            if kind in decoding:
                return settings
            policy = _evaluate(prompt, inputs.get("policy"), policy_nodes)
            branches = len(getattr(policy, "branches", ())) if policy is not None else 0
            if gives_several_ranks_work(settings, branches):
                return settings
        except Exception as exc:  # noqa: BLE001 (the node reports it when it runs)
            log.debug("cfg-parallel: no early start for a queued %s (%s: %s)", kind, type(exc).__name__, exc)
    return None


def start_for_prompt(prompt: Any, sampling: set[str], decoding: set[str], policy_nodes: dict) -> bool:
    """Start the group `prompt` (API format) will use; True when it was spawned. Never raises."""
    if not isinstance(prompt, dict):
        return False
    try:
        settings = group_for(prompt, sampling, decoding, policy_nodes)
        if settings is not None and start_when_queued(settings):
            log.info("cfg-parallel: starting the worker group for the queued prompt (%d ranks on %s)",
                     settings.world_size, settings.devices or "the first GPUs")
            return True
    except Exception as exc:  # noqa: BLE001 (the node starts it, and reports what is wrong)
        log.debug("cfg-parallel: the group did not start at queue time (%s: %s)", type(exc).__name__, exc)
    return False


def wrap_queue(queue, sampling: set[str], decoding: set[str], policy_nodes: dict) -> None:
    """Make `queue.put` (ComfyUI's PromptQueue) start the group of a validated prompt first, when the
    queue is empty and nothing runs. Once per queue."""
    if getattr(queue.put, "cfgp_queue_start", False):
        return
    plain_put = queue.put

    def put(item, *args, **kwargs):
        prompt = item[2] if isinstance(item, tuple) and len(item) > 2 else None
        try:
            idle = queue.get_tasks_remaining() == 0
        except Exception:  # noqa: BLE001 (an unknown queue: no early start)
            idle = False
        if idle:
            start_for_prompt(prompt, sampling, decoding, policy_nodes)
        return plain_put(item, *args, **kwargs)

    put.cfgp_queue_start = True
    queue.put = put


def register(sampling: set[str], decoding: set[str], policy_nodes: dict) -> None:
    """Install the queue wrapper on ComfyUI's server, now or with the first prompt (nothing when no
    server runs, e.g. unit tests)."""
    server = prompt_server()
    if server is None:
        return

    def ensure_wrapped(json_data: Any) -> Any:
        queue = getattr(server, "prompt_queue", None)
        if queue is not None and hasattr(queue, "put") and hasattr(queue, "get_tasks_remaining"):
            wrap_queue(queue, sampling, decoding, policy_nodes)
        return json_data

    ensure_wrapped(None)
    server.add_on_prompt_handler(ensure_wrapped)
