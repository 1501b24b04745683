"""The ComfyUI seam: the guider, the rank-side sampling job, the CFG Parallel model wrapper, the LTX-2 pipeline."""
