"""The tiny demo workflow (workflows/api/tiny_demo.json) as prompts for a real ComfyUI server,
and how the fault tests send them and watch them: raw POSTs, expected failures, the group's
warm-up, and the progress events of one client."""
from __future__ import annotations

import copy
import json
import threading
import time
import uuid

from devkit.comfy_server import execution_error
from support.paths import REPO
from support.processes import worker_pids

DEMO = REPO / "workflows" / "api" / "tiny_demo.json"


def _node_id(graph: dict, class_type: str) -> str:
    ids = [k for k, v in graph.items() if v["class_type"] == class_type]
    assert len(ids) == 1, f"{DEMO.name}: expected one {class_type}, found {ids}"
    return ids[0]


_DEMO = json.loads(DEMO.read_text())
GUIDER, POLICY, SAMPLER = (_node_id(_DEMO, c) for c in ("MultiBranchGuider", "CFGPolicyBuilder", "SamplerCustomAdvanced"))
SCHEDULER = _node_id(_DEMO, "BasicScheduler")
POSITIVE = _DEMO[GUIDER]["inputs"]["positive"][0]  # a CFGPTestConditioning: its nonce defeats the cache
# The group's spec includes devices and step timeout; tests/test_guider_server.py runs the
# shared server's group with devices "cpu" and 120 s, so using the same values here lets
# the two files share one group instead of respawning it between them.
DEVICES, STEP_TIMEOUT = "cpu", 120.0
_nonce = iter(range(10_000, 10**9))


def demo_graph(steps: int = 3, nonce: int | None = None, **guider) -> dict:
    """The demo API workflow (Multi-Branch Guider at parallel_size 2, 3 branches on 2 ranks)."""
    g = copy.deepcopy(_DEMO)
    g[SCHEDULER]["inputs"]["steps"] = steps
    g[POSITIVE]["inputs"]["nonce"] = next(_nonce) if nonce is None else nonce
    g[GUIDER]["inputs"].update({"devices": DEVICES, "step_timeout_s": STEP_TIMEOUT})
    g[GUIDER]["inputs"].update(guider)
    return g


def warm_group(server, **guider) -> list[int]:
    """Run a short prompt (starting the group if needed); return the rank pids in rank order."""
    server.run(demo_graph(steps=2, **guider), timeout=300)
    status = server.group_status()
    assert status["state"] == "ready", status
    pids = [int(p) for p in status["pids"]]
    assert len(pids) == 2
    assert sorted(pids) == sorted(worker_pids(server.pid)), "status pids are not the server's worker children"
    return pids


def post_raw(server, graph: dict, client_id: str | None = None):
    """POST /prompt with json.dumps defaults (NaN/Infinity allowed, as a browser can't but a script can)."""
    body = json.dumps({"prompt": graph, "client_id": client_id or uuid.uuid4().hex})
    return server.session.post(server.url + "/prompt", data=body, headers={"Content-Type": "application/json"},
                               timeout=30)


def failing(server, graph: dict, timeout: float = 300) -> dict:
    """Run a prompt that must end in an execution error; return that error (node_id, type, message)."""
    r = post_raw(server, graph)
    assert r.status_code == 200, r.text[:2000]
    entry = server.wait(r.json()["prompt_id"], timeout=timeout)
    err = execution_error(entry)
    assert err is not None, f"the prompt ended {entry['status']['status_str']}, expected an error"
    return err


def history_messages(entry: dict, kind: str) -> list[dict]:
    return [m[1] for m in (entry.get("status") or {}).get("messages") or [] if m[0] == kind]


class Progress:
    """Collects the 'progress' events ComfyUI sends to one client id (rank 0's steps), and which node
    each prompt is executing."""

    def __init__(self, server):
        self.client_id = uuid.uuid4().hex
        self.events: list[tuple[float, dict]] = []
        self.executing: list[tuple[str | None, str | None]] = []  # (prompt id, node id) as ComfyUI sends them
        self._ws = server.ws_connect(self.client_id)
        self._ws.settimeout(None)  # a long silent phase (e.g. a throttled load) must not end the reader
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while True:
            try:
                msg = self._ws.recv()
            except Exception:
                return
            if isinstance(msg, str):
                try:
                    data = json.loads(msg)
                except ValueError:
                    continue
                if data.get("type") == "progress":
                    self.events.append((time.monotonic(), data["data"]))
                elif data.get("type") == "executing" and isinstance(data.get("data"), dict):
                    self.executing.append((data["data"].get("prompt_id"), data["data"].get("node")))

    def steps(self, prompt_id: str, after: float | None = None) -> list[int]:
        return [d["value"] for t, d in self.events
                if d.get("prompt_id") == prompt_id and (after is None or t > after)]

    def wait_step(self, prompt_id: str, step: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(v >= step for v in self.steps(prompt_id)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} did not reach step {step} in {timeout} s")
            time.sleep(0.01)

    def wait_executing(self, prompt_id: str, node: str, timeout: float = 120.0) -> None:
        """Until ComfyUI reports that `prompt_id` executes `node`."""
        deadline = time.monotonic() + timeout
        while (prompt_id, node) not in self.executing:
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} did not reach node {node} in {timeout} s")
            time.sleep(0.01)

    def close(self):
        try:
            self._ws.close()
        except Exception:
            pass
