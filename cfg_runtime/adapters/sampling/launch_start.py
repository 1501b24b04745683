"""Start the worker group while ComfyUI starts (opt-in): the first prompt then finds its ranks ready.

``CFG_PARALLEL_START_AT_LAUNCH`` names the ranks as the nodes' ``devices`` widget does, one
entry per rank (``cuda:0,cuda:1``; ``cuda:0,cuda:0`` with CFG_PARALLEL_BACKEND=gloo; ``cpu,cpu``).
The group is the one a node with those devices (and that many ranks) asks for: it is reused,
not started again. Starting the ranks costs about as long as starting ComfyUI (importing torch
and ComfyUI, setting up CUDA and dynamic VRAM, joining the group); started here, that happens
while ComfyUI starts instead of inside the first prompt. Each rank holds a CUDA context and
no model until a prompt sends one. A bad value is reported in one console line and ComfyUI
starts without the group.
"""
from __future__ import annotations

import logging
import os

from ...errors import GroupConfigError
from ...group import prestart, warm_start
from .guider import ParallelSettings

log = logging.getLogger("cfg_parallel")

START_ENV = "CFG_PARALLEL_START_AT_LAUNCH"


def launch_settings(text: str) -> ParallelSettings | None:
    """The settings a node with these devices (one per rank) would use; None for an empty text."""
    names = [d.strip() for d in text.replace(";", ",").split(",") if d.strip()]
    if not names:
        return None
    return ParallelSettings(world_size=len(names), devices=",".join(names))


def start_at_launch(environ=os.environ) -> bool:
    """Spawn the group named by CFG_PARALLEL_START_AT_LAUNCH, without waiting; True when it was spawned."""
    text = environ.get(START_ENV, "").strip()
    if not text:
        return False
    try:
        settings = launch_settings(text)
        if settings is None or settings.world_size < 2:
            raise GroupConfigError("name at least two ranks, one device each, e.g. 'cuda:0,cuda:1'.")
        spawned = prestart(settings.group_spec())
    except Exception as exc:  # ComfyUI starts all the same; the first prompt that needs the group starts it
        log.warning("cfg-parallel: %s=%r ignored: %s The group starts with the first prompt that needs it.",
                    START_ENV, text, str(exc).strip() or type(exc).__name__)
        return False
    if spawned:
        log.info("cfg-parallel: starting the worker group while ComfyUI starts (%s)", START_ENV)
    return spawned


_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
RANK_IMPORTS = "cfg_runtime.adapters.models.rank_imports"  # what the warm fork server imports


def warm_start_at_launch(environ=os.environ) -> bool:
    """Start the warm fork server (group.warm_start: ranks forked with torch and its kin imported, a few
    seconds off every group start) unless CFG_PARALLEL_WARM_START=0; by default only where this
    ComfyUI has a CUDA GPU (the server costs a process of a few hundred MB that idles until a group
    starts). True when it runs."""
    value = environ.get(warm_start.ENV, "").strip().lower()
    if value in _OFF:
        return False
    if value not in _ON:
        if value:
            log.warning("cfg-parallel: %s=%r ignored (use 1 or 0)", warm_start.ENV, value)
        import torch

        if not torch.cuda.is_available():
            return False
    try:
        return warm_start.start((RANK_IMPORTS,))
    except Exception as exc:  # noqa: BLE001 (groups then spawn cold, as without it)
        log.warning("cfg-parallel: the ranks' warm start is off (%s: %s); they start cold",
                    type(exc).__name__, exc)
        return False
