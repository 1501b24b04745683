"""Start-up and model-loading progress of the worker group as text on the running node.

The group reports Phases from its first second (ranks spawning, torch imported, the process
group joined, each rank ready; then, inside the job, each rank loading the model); this turns
them into one short status line on the node ComfyUI is executing (ComfyUI's progress text,
0.3.75 and 0.29) until the first sampling step, and a summary at the end. The console has the
same facts: the group logs them on the ``cfg_parallel`` logger.
"""
from __future__ import annotations

import logging
import time

from ...group import Phase, Stage

log = logging.getLogger("cfg_parallel")


def _send(text: str) -> None:
    """Text under the executing node in the web UI (nothing when there is no server or node)."""
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer
    except ImportError:
        return
    context = get_executing_context()
    server = getattr(PromptServer, "instance", None)
    if context is None or server is None:
        return
    try:
        server.send_progress_text(text, context.node_id, getattr(server, "client_id", None))
    except Exception as exc:  # a closed websocket must not fail the prompt
        log.debug("cfg-parallel: progress text not sent: %s", exc)


class ProgressText:
    """on_phase for the group: keeps the latest word of every rank and shows the whole line."""

    def __init__(self, world_size: int, send=_send) -> None:
        self.world_size = world_size
        self.send = send
        self.t0 = time.monotonic()
        self.ready: set[int] = set()
        self.loading: dict[int, str] = {}
        self.line = ""

    def __call__(self, phase: Phase) -> None:
        if phase.stage is Stage.READY and phase.rank is not None:
            self.ready.add(phase.rank)
        elif phase.stage is Stage.JOB and phase.rank is not None:
            self.loading[phase.rank] = phase.text
        self.show(self._describe(phase))

    def _describe(self, phase: Phase) -> str:
        seconds = time.monotonic() - self.t0
        if phase.stage is Stage.JOB:
            words = "; ".join(f"rank {r}: {t}" for r, t in sorted(self.loading.items()))
            return f"cfg-parallel ({seconds:.0f} s): {words}"
        if phase.stage is Stage.READY and phase.rank is None:
            return f"cfg-parallel: {self.world_size} workers ready in {seconds:.1f} s; sending the job"
        return (f"cfg-parallel ({seconds:.0f} s): starting {self.world_size} workers, "
                f"{len(self.ready)}/{self.world_size} ready — {phase.text}")

    def show(self, line: str) -> None:
        if line != self.line:
            self.line = line
            self.send(line)


# --- a prompt that gives work to one rank only (the one place for this wording) -----------
ONE_RANK = ("cfg-parallel: this sampling has 1 guidance branch (e.g. cfg 1: no negative pass), so only 1 of the "
            "{ranks} ranks would work: it runs here in ComfyUI instead, without the "
            "worker group (no model copy).")
ONE_RANK_SPLIT_HINT = " sequence_split auto splits {label} over the other ranks."
ONE_RANK_HINT = " Set parallel_size to 1 for such prompts."


def one_rank_text(ranks: int, split_option: bool, split_label: str | None) -> str:
    """What the user reads (progress text and one console line) when a prompt runs here instead of on the group.
    split_option: the node has a sequence_split widget; split_label: the model family's name when it can
    be split (None: it cannot)."""
    hint = ONE_RANK_SPLIT_HINT.format(label=split_label) if split_option and split_label else ONE_RANK_HINT
    return ONE_RANK.format(ranks=ranks) + hint


def say_once(text: str, send=None) -> None:
    """One console line and the node's progress text."""
    log.info("%s", text)
    (send or _send)(text)
