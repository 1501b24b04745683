"""A test run that fails on purpose after faults (a rank SIGKILLed, the resource tracker SIGKILLed, the group
killed with its server), for tests/test_hardening3_server.py: it must leave nothing in the temp folder and
/dev/shm. Not collected by a normal run (no test_ prefix); runs only with CFGP_FAILING_RUN=1."""
from __future__ import annotations

import os
import signal
import time

import pytest

from test_faults_server import demo_graph, descendants, cmdline, wait_dead, worker_pids


def test_faults_then_fail(comfy_server):
    if os.environ.get("CFGP_FAILING_RUN") != "1":
        pytest.skip("run by tests/test_hardening3_server.py only")
    comfy_server.run(demo_graph(steps=2), timeout=300)
    ranks = worker_pids(comfy_server.pid)
    os.kill(ranks[1], signal.SIGKILL)  # a rank killed: the next prompt fails and respawns the group
    wait_dead([ranks[1]], 10)
    comfy_server.run(demo_graph(steps=2), timeout=300, check=False)
    comfy_server.run(demo_graph(steps=2), timeout=300)
    trackers = [p for p in descendants(comfy_server.pid) if "resource_tracker" in cmdline(p)]
    for pid in trackers:  # the resource tracker killed: nothing unlinks what it tracked
        os.kill(pid, signal.SIGKILL)
    print(f"\n[failing-run] ranks {ranks} -> {worker_pids(comfy_server.pid)}, trackers {trackers}")
    time.sleep(0.5)
    assert False, "this run fails on purpose (its server and group are killed by the session's teardown)"
