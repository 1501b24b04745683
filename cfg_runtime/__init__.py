"""Engine of comfyui-cfg-parallel: branch policies, branch plans, the prediction
exchange and the persistent worker group. Plain torch; importable without ComfyUI."""
