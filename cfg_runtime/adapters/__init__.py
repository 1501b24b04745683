"""The ComfyUI seam: the only layer that imports ``comfy``. Four parts, bottom to top (each
imports only the parts under it; tests/test_architecture.py):

* ``split/``: generic sequence-split plumbing (the attention override, block patches, hooks);
* ``families/``: one module per model family behind one interface, and ``family_of``, the one
  detector (the only place that imports ``comfy.ldm`` or looks at model classes);
* ``models/``: model transport, residency on the ranks, rank set-up, option checks;
* ``sampling/``: the guider, the rank-side sampling job, the CFG Parallel wrapper, the LTX-2 pipeline.

May import every layer under it: ``group``, ``parallel``, ``guidance``, ``errors``.
"""
