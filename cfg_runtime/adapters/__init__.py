"""The ComfyUI seam: the only layer that imports ``comfy``.

The parent-side guider, the rank-side sampling job, model transport and residency, LTX-2
per-call options and the two-stage pipeline. May import every layer under it: ``group``,
``parallel``, ``guidance``, ``errors``. Modules here import ``comfy`` at their top, except
``ltx_options`` (plain torch on ComfyUI's module objects) and ``transport``'s helpers that
ranks call before ComfyUI is configured.
"""
