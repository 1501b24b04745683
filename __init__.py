"""comfyui-cfg-parallel: guidance branches in parallel on several GPUs (ComfyUI custom nodes)."""
import os
import sys

# Worker processes import the engine by its own name (they never import this pack's
# folder, whose name is not a valid module name). Appended, so it shadows nothing.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

if __package__:  # ComfyUI imports the pack as a package
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
else:  # imported as a plain module (e.g. pytest from a checkout folder named like "my-clone")
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

# The frontend serves this folder at /extensions/<pack>/: web/js (Group Status shows its text
# on the node) and web/docs/<node id>.md (each node's help page, the "?" of the node).
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
