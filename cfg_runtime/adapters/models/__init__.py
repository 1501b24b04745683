"""Model transport: shipping a ComfyUI model to the ranks, residency there, rank set-up, option checks."""
