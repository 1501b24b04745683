"""ComfyUI adapters: the only layer that imports comfy.*."""
