"""Real ComfyUI servers with tiny models, for module fixtures: start the server, build and add
the models while it starts, wait until it answers; stop it on any error and at the end."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest


def serve_models(add: Callable[..., None]) -> Iterator:
    """A generator for a fixture (``yield from serve_models(add)``): a ComfyServer with one
    intra-op thread (so each rank has one: on a busy 2-core machine two threads per process
    make prompts ~30x slower) after ``add(server)`` put its models in; skips without ComfyUI."""
    from devkit.comfy_server import ComfyServer
    from support.paths import ComfyUIMissing

    try:
        server = ComfyServer(env={"OMP_NUM_THREADS": "1"})
    except ComfyUIMissing as e:
        pytest.skip(str(e))
    server.start(wait=False)  # the models are built while it starts
    try:
        add(server)
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    try:
        yield server
    finally:
        server.stop()


def add_ltxav(server, folder: Path, checkpoint: str, audio_vae: str) -> bool:
    """The tiny LTX-2 checkpoint and audio VAE, where this ComfyUI has LTX-2; whether it does."""
    from support import tiny_families as tf
    from support import tiny_ltx2 as t2

    if not t2.ltxav_available():
        return False
    server.add_model("checkpoints", checkpoint, tf.build_tiny_ltxav_checkpoint(folder / checkpoint))
    server.add_model("checkpoints", audio_vae, t2.build_tiny_ltx_audio_vae(folder / audio_vae))
    return True
