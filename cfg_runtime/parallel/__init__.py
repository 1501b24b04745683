"""Parallel execution of one guided model evaluation: which rank runs which branch (plan),
the all-gather of predictions (exchange), and the dispatcher that runs this rank's branches
and combines them with the policy's serial formula.

torch and torch.distributed only. May import: ``guidance``, ``errors``.
"""
