"""Guidance rules: which branches a step needs and how their predictions combine (fp32).

Plain torch. May import: ``cfg_runtime.errors`` only.
"""
