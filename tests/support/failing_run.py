"""A test run that fails on purpose after faults (a rank SIGKILLed, the resource tracker SIGKILLed, the group
killed with its server), for tests/test_hardening3_server.py: it must leave nothing in the temp folder and
/dev/shm. Not collected by a normal run (no test_ prefix); runs only with CFGP_FAILING_RUN=1."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from support.demo_prompts import demo_graph
from support.processes import cmdline, descendants, wait_dead, worker_pids


def mapped_semaphores(root: int) -> set[str]:
    """The named semaphores (/dev/shm/sem.*) that `root` and its descendants have open (mapped)."""
    names = set()
    for pid in [root] + descendants(root):
        try:
            with open(f"/proc/{pid}/maps") as f:
                names.update(ln.split("/dev/shm/", 1)[1].strip() for ln in f if "/dev/shm/sem." in ln)
        except OSError:
            pass
    return names


def test_faults_then_fail(comfy_server):
    if os.environ.get("CFGP_FAILING_RUN") != "1":
        pytest.skip("run by tests/test_hardening3_server.py only")
    comfy_server.run(demo_graph(steps=2), timeout=300)
    ranks = worker_pids(comfy_server.pid)
    sems = mapped_semaphores(comfy_server.pid)
    os.kill(ranks[1], signal.SIGKILL)  # a rank killed: the next prompt fails and respawns the group
    wait_dead([ranks[1]], 10)
    comfy_server.run(demo_graph(steps=2), timeout=300, check=False)
    comfy_server.run(demo_graph(steps=2), timeout=300)
    sems |= mapped_semaphores(comfy_server.pid)
    print(f"\n[failing-run-semaphores] {json.dumps(sorted(sems))}")
    trackers = [p for p in descendants(comfy_server.pid) if "resource_tracker" in cmdline(p)]
    for pid in trackers:  # the resource tracker killed: nothing unlinks what it tracked
        os.kill(pid, signal.SIGKILL)
    print(f"\n[failing-run] ranks {ranks} -> {worker_pids(comfy_server.pid)}, trackers {trackers}")
    time.sleep(0.5)
    assert False, "this run fails on purpose (its server and group are killed by the session's teardown)"
