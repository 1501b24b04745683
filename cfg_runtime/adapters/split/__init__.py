"""Sequence-split plumbing shared by every model family (no family code here).

* :mod:`.attention`: the per-call ``optimized_attention_override`` that runs attention on
  split tokens (Ulysses all-to-all, joint text+image attention with the text replicated,
  gathered K/V where heads do not divide);
* :mod:`.blocks`: a split made with ``patches_replace["dit"]`` block patches (slice at the
  first block, gather after the last), for families that describe their block arguments;
* :mod:`.hooks`: adding a diffusion-model wrapper to a copy of the model options.
"""
