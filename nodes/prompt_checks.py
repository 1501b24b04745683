"""Checks of a queued prompt that must see the values as the client sent them.

ComfyUI's validation turns an INT widget's value with ``int()``, so ``parallel_size`` 1.5
sent by a script would run as 1 without a word. A prompt handler (``PromptServer``'s
``add_on_prompt_handler``, run before validation) marks such a value so that this very
conversion fails: ComfyUI answers HTTP 400 with a node error that says what to write.
"""
from __future__ import annotations

import math


WHOLE_INPUTS = ("parallel_size",)  # INT widgets of the pack whose fractions must not be rounded away


class NotWhole(float):
    """A fractional value for an INT widget: JSON-serialisable as the number sent, refused by int()."""

    def __int__(self) -> int:
        raise ValueError(f"parallel_size must be a whole number, got {float(self)!r}: write 1, 2, 3 ... (the number "
                         f"of worker processes, one per device).")

    __index__ = __int__
    __trunc__ = __int__


def mark_fractions(json_data: dict, class_types: set[str]) -> dict:
    """The prompt with every fractional whole-number input of the pack's nodes marked (NotWhole)."""
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    if not isinstance(prompt, dict):
        return json_data
    for node in prompt.values():
        if not isinstance(node, dict) or node.get("class_type") not in class_types:
            continue
        inputs = node.get("inputs")
        for key in WHOLE_INPUTS:
            value = inputs.get(key) if isinstance(inputs, dict) else None
            if isinstance(value, float) and not isinstance(value, NotWhole) and math.isfinite(value) \
                    and value != int(value):
                inputs[key] = NotWhole(value)
    return json_data


def prompt_server():
    """ComfyUI's running PromptServer, if it takes prompt handlers; None when no server runs (unit tests)."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    server = getattr(PromptServer, "instance", None)
    return server if server is not None and hasattr(server, "add_on_prompt_handler") else None


def register(class_types: set[str]) -> None:
    """Install the prompt handler on ComfyUI's server (nothing when no server runs, e.g. unit tests)."""
    server = prompt_server()
    if server is None:
        return
    server.add_on_prompt_handler(lambda json_data: mark_fractions(json_data, class_types))
