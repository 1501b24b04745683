"""CPU worker groups by size for the real-process tests: started on first use, torn down at the end.

    @pytest.fixture(scope="module")
    def groups():
        yield from cpu_groups()
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from cfg_runtime.group import GroupSpec, WorkerGroup

# The ranks set ComfyUI up as the Multi-Branch Guider's do (launch options, dynamic VRAM).
WORKER_INIT = "cfg_runtime.adapters.models.rank_setup:init_worker"


def cpu_groups() -> Iterator[Callable[[int], WorkerGroup]]:
    """Yields get(size) -> a started CPU group of that size (one per size); tears them all down after."""
    made: dict[int, WorkerGroup] = {}

    def get(size: int) -> WorkerGroup:
        if size not in made:
            group = WorkerGroup(GroupSpec(("cpu",) * size, step_timeout_s=120, start_timeout_s=240,
                                          worker_init=WORKER_INIT))
            group.start()
            made[size] = group
        return made[size]

    try:
        yield get
    finally:
        for group in made.values():
            group.teardown()
