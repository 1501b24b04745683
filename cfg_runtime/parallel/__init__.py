"""Parallel execution: branch plans, the prediction exchange, the dispatch, the sequence split.
Plain torch and torch.distributed; no ComfyUI."""
