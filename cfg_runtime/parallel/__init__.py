"""Parallel execution of one guided model evaluation: which rank runs which branch (plan),
the all-gather of predictions (exchange), and the dispatcher that runs this rank's branches
and combines them with the policy's serial formula; the sequence split of one branch over a
group of ranks (sequence) and the layout "ranks = branch groups x sequence degree" (layout).

torch and torch.distributed only. May import: ``guidance``, ``errors``.
"""
