"""Running the pack the way users run it, for the demo, the tests and the benches: a real
ComfyUI server started through its main.py (comfy_server), tiny real models built with
ComfyUI's own classes (tiny_models), and a test-only node pack (comfy_test_nodes: random
text embeddings, since no text encoder is tiny, and fault injection). Not part of the pack:
the registry archive leaves it out (.comfyignore).
"""
