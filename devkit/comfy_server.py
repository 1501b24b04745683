"""A real ComfyUI server in a subprocess, for end-to-end tests.

    with ComfyServer(models={"diffusion_models/tiny.safetensors": path}) as srv:
        entry = srv.run(graph)                   # POST /prompt, poll /history
        latent = srv.saved_latent(entry)         # what core SaveLatent wrote

The server gets a throw-away base directory (models/, custom_nodes/, input/, output/,
temp/, user/) so nothing is written into the ComfyUI folder or the checkout.
``custom_nodes/`` holds symlinks to this checkout (as ``comfyui-cfg-parallel``) and to
the test-only node pack ``devkit/comfy_test_nodes`` (as ``cfgp_test_nodes``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from .paths import REPO, TEST_NODES_DIR, owned_tempdir, require_comfyui

PACK_LINK_NAME = "comfyui-cfg-parallel"
TEST_NODES_LINK_NAME = "cfgp_test_nodes"


class ComfyServerError(RuntimeError):
    """The server died, did not come up, or answered something unexpected."""


class PromptRejected(ComfyServerError):
    """POST /prompt answered 400 (validation failed). ``node_errors`` maps node id -> errors."""

    def __init__(self, error, node_errors):
        self.error = error
        self.node_errors = node_errors or {}
        msg = error.get("message", error) if isinstance(error, dict) else error
        super().__init__(f"prompt rejected: {msg}; node_errors={json.dumps(self.node_errors, indent=1)[:4000]}")


class ExecutionFailed(ComfyServerError):
    """The prompt ran and ended with status 'error' (``entry`` is the history entry)."""

    def __init__(self, entry, log_tail=""):
        self.entry = entry
        self.error = execution_error(entry)
        detail = ""
        if self.error:
            detail = (f"{self.error.get('node_type')} (node {self.error.get('node_id')}): "
                      f"{self.error.get('exception_type')}: {self.error.get('exception_message')}\n"
                      + "".join(self.error.get("traceback") or []))
        super().__init__(f"prompt failed: {detail or entry.get('status')}\n--- server log tail ---\n{log_tail}")


def execution_error(entry) -> dict | None:
    """The 'execution_error' message of a history entry, or None."""
    for msg in (entry.get("status") or {}).get("messages") or []:
        if isinstance(msg, (list, tuple)) and len(msg) == 2 and msg[0] == "execution_error":
            return msg[1]
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def saved_latent_files(history_entry, output_dir, node_id=None) -> list[Path]:
    """Paths of the ``.latent`` files that SaveLatent nodes reported in a history entry."""
    files = []
    for nid, ui in sorted((history_entry.get("outputs") or {}).items()):
        if node_id is not None and str(nid) != str(node_id):
            continue
        for item in (ui or {}).get("latents", []):
            files.append(Path(output_dir) / item.get("subfolder", "") / item["filename"])
    return files


def read_saved_latent(history_entry, output_dir, node_id=None) -> dict:
    """Tensors of the (single) latent file written by core SaveLatent.

    0.3.75's SaveLatent writes ``<output>/<subfolder>/<prefix>_<NNNNN>_.latent`` (a
    safetensors file) with keys ``latent_tensor`` (the samples) and
    ``latent_format_version_0`` (an empty marker tensor), and metadata {"prompt": ...}.
    Pass ``node_id`` when the graph has more than one SaveLatent.
    """
    from safetensors.torch import load_file

    files = saved_latent_files(history_entry, output_dir, node_id)
    if len(files) != 1:
        raise ComfyServerError(f"expected one saved latent (node_id={node_id}), found {files}; "
                               f"outputs={history_entry.get('outputs')}")
    return load_file(str(files[0]))


def _die_with_parent() -> None:
    """In the server's child process: SIGTERM it when the test process dies (Linux), so a
    killed pytest run leaves no server behind (its own session hides it from the terminal)."""
    try:
        import ctypes
        import signal as _signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, _signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class ComfyServer:
    """A ComfyUI server process (context manager).

    models: {"<folder>/<name>": source path} placed under ``models/`` before start
        (symlinked), e.g. {"diffusion_models/tiny_ltxv.safetensors": p}.
    extra_args: more command-line flags for main.py (e.g. ["--cache-none"]).
    env: extra environment variables for the server process.
    base_dir: use this directory instead of a fresh temp one (kept on stop).
    """

    def __init__(self, models=None, extra_args=(), env=None, base_dir=None, comfyui_dir=None,
                 python=None, startup_timeout=60.0, link_pack=True, link_test_nodes=True,
                 keep_dir=False):
        self.comfyui_dir = Path(comfyui_dir) if comfyui_dir else require_comfyui()
        self.python = python or sys.executable
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self._own_dir = base_dir is None
        self.keep_dir = keep_dir or not self._own_dir
        self.base_dir = Path(base_dir) if base_dir else Path(owned_tempdir("cfgp_comfy_"))
        self.port = None
        self.proc = None
        self._log_file = None
        self.session = requests.Session()
        self._make_layout(link_pack, link_test_nodes)
        for rel, src in (models or {}).items():
            folder, name = rel.split("/", 1)
            self.add_model(folder, name, src)

    # -- layout ---------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def custom_nodes_dir(self) -> Path:
        return self.base_dir / "custom_nodes"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "comfyui.log"

    def _make_layout(self, link_pack, link_test_nodes):
        for d in ("custom_nodes", "models/diffusion_models", "models/loras", "input", "output",
                  "temp", "user/default"):
            (self.base_dir / d).mkdir(parents=True, exist_ok=True)
        if link_pack:
            self._symlink(self.custom_nodes_dir / PACK_LINK_NAME, REPO)
        if link_test_nodes:
            self._symlink(self.custom_nodes_dir / TEST_NODES_LINK_NAME, TEST_NODES_DIR)
        settings = self.base_dir / "user" / "default" / "comfy.settings.json"
        if not settings.exists():
            settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))

    @staticmethod
    def _symlink(link: Path, target: Path):
        if link.is_symlink() or link.exists():
            if link.is_symlink() and Path(os.readlink(link)) == Path(target):
                return
            link.unlink()
        link.symlink_to(target, target_is_directory=Path(target).is_dir())

    def pin_frontend_settings(self, settings: dict) -> None:
        """Merge these into the default user's frontend settings (read when a page loads)."""
        path = self.base_dir / "user" / "default" / "comfy.settings.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**current, **settings}))

    def add_model(self, folder: str, name: str, src, copy=False) -> Path:
        """Put ``src`` into models/<folder>/<name> (symlink unless copy). Works while running:
        ComfyUI re-lists a model folder when its mtime changes."""
        dst = self.models_dir / folder / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        if copy:
            shutil.copyfile(src, dst)
        else:
            dst.symlink_to(Path(src).resolve())
        return dst

    # -- process --------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        return [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--disable-auto-launch", "--disable-api-nodes",
                "--base-directory", str(self.base_dir),
                # A database file, as ComfyUI's default is: an in-memory one lives in one thread's
                # connection, and SQLAlchemy prints a traceback when another thread collects it.
                "--database-url", f"sqlite:///{self.base_dir / 'comfyui.db'}", *self.extra_args]

    def start(self, wait: bool = True, attempts: int = 3):
        """Spawn the server; with wait (default) block until it answers HTTP.
        ``start(wait=False)`` returns at once (start-up takes ~10 s); call ``wait_ready()``
        before using it. Models may be added in between."""
        if self.proc is not None:
            raise ComfyServerError("already started")
        self._attempts_left = attempts
        self.port = free_port()
        self._spawn()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self):
        while True:
            try:
                self._wait_ready()
                return self
            except ComfyServerError:
                self._kill()
                self._attempts_left -= 1
                # Another process may have taken the port between free_port() and bind.
                if "address already in use" in self.log_text().lower() and self._attempts_left > 0:
                    self.proc = None
                    self.port = free_port()
                    self._spawn()
                    continue
                raise

    def _spawn(self):
        env = dict(os.environ)
        env.update({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
                    "TQDM_DISABLE": "1"})
        env.update(self.extra_env)
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n=== {' '.join(self.command())}\n".encode())
        self._log_file.flush()
        self._spawned_at = time.monotonic()
        self.proc = subprocess.Popen(self.command(), cwd=str(self.comfyui_dir), env=env,
                                     stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_parent)

    def _wait_ready(self):
        deadline = self._spawned_at + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise ComfyServerError(f"ComfyUI exited with code {self.proc.returncode} during start-up\n"
                                       f"--- log tail ({self.log_path}) ---\n{self.log_tail()}")
            try:
                r = self.session.get(self.url + "/system_stats", timeout=2)
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise ComfyServerError(f"ComfyUI not ready after {self.startup_timeout:.0f} s\n"
                                       f"--- log tail ({self.log_path}) ---\n{self.log_tail()}")
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _kill(self, grace: float = 10.0):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        # Children left in the group (e.g. worker processes) get the same treatment.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self):
        """SIGTERM to the server's process group, 10 s grace, then SIGKILL."""
        self._kill()
        self.session.close()
        if self._own_dir and not self.keep_dir and not os.environ.get("CFGP_KEEP_SERVER_DIR"):
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- logs -----------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- HTTP API -------------------------------------------------------------------
    def _check_alive(self):
        if not self.alive():
            code = self.proc.returncode if self.proc else None
            raise ComfyServerError(f"ComfyUI is not running (exit code {code})\n--- log tail ---\n{self.log_tail()}")

    def get(self, path, **kw):
        self._check_alive()
        r = self.session.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)
        r.raise_for_status()
        return r.json()

    def post(self, path, payload=None, **kw):
        self._check_alive()
        return self.session.post(self.url + path, json=payload if payload is not None else {},
                                 timeout=kw.pop("timeout", 30), **kw)

    def object_info(self, node_class: str | None = None) -> dict:
        if node_class:
            return self.get(f"/object_info/{node_class}")
        return self.get("/object_info")

    def system_stats(self) -> dict:
        return self.get("/system_stats")

    def queue(self, prompt: dict, client_id: str | None = None, extra_data: dict | None = None) -> str:
        """POST /prompt; return the prompt id. Raises PromptRejected on HTTP 400."""
        payload = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
        if extra_data:
            payload["extra_data"] = extra_data
        r = self.post("/prompt", payload)
        if r.status_code == 400:
            body = r.json()
            raise PromptRejected(body.get("error"), body.get("node_errors"))
        if r.status_code != 200:
            raise ComfyServerError(f"POST /prompt: HTTP {r.status_code}: {r.text[:2000]}")
        return r.json()["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.05) -> dict:
        """Poll /history/<id> until the prompt finished (success or error); return the entry."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None and (entry.get("status") or {}).get("status_str") in ("success", "error"):
                return entry
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout} s\n"
                                   f"--- log tail ---\n{self.log_tail()}")
            time.sleep(poll)

    def run(self, prompt: dict, timeout: float = 120.0, check: bool = True) -> dict:
        """queue + wait. With check, a prompt that ended in error raises ExecutionFailed."""
        entry = self.wait(self.queue(prompt), timeout=timeout)
        if check and entry["status"].get("status_str") != "success":
            raise ExecutionFailed(entry, self.log_tail())
        return entry

    def run_failing(self, prompt: dict, timeout: float = 300.0) -> str:
        """Run a prompt that must end in an execution error; return 'NodeType: message' from /history."""
        entry = self.run(prompt, timeout=timeout, check=False)
        err = execution_error(entry)
        if err is None:
            raise AssertionError(f"prompt was expected to fail but ended {entry['status'].get('status_str')}")
        return f"{err['node_type']}: {err['exception_message']}"

    def group_status(self) -> dict:
        """The pack's worker-group report (runs a one-node CFGParallelGroupStatus prompt)."""
        entry = self.run({"1": {"class_type": "CFGParallelGroupStatus", "inputs": {"shutdown": False}}}, timeout=60)
        return json.loads(entry["outputs"]["1"]["text"][0])

    def interrupt(self, prompt_id: str | None = None):
        self.post("/interrupt", {"prompt_id": prompt_id} if prompt_id else {}).raise_for_status()

    def free(self, unload_models: bool = True, free_memory: bool = False, settle: float = 0.5):
        """POST /free. The worker applies it when idle, asynchronously; ``settle`` waits a bit.
        free_memory also clears the node output cache."""
        self.post("/free", {"unload_models": unload_models, "free_memory": free_memory}).raise_for_status()
        time.sleep(settle)

    def queue_state(self) -> dict:
        return self.get("/queue")

    def ws_connect(self, client_id: str, timeout: float = 30.0):
        """A websocket-client connection to /ws (progress, executing, previews)."""
        import websocket

        return websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}",
                                           timeout=timeout)

    # -- outputs --------------------------------------------------------------------
    def read_saved_latent(self, history_entry, node_id=None) -> dict:
        return read_saved_latent(history_entry, self.output_dir, node_id)

    def saved_latent(self, history_entry, node_id=None):
        """The samples tensor that SaveLatent wrote."""
        return self.read_saved_latent(history_entry, node_id)["latent_tensor"]
