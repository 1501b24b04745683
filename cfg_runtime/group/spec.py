"""Which worker processes to start: devices, backend, deadlines; device names checked."""
from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import ClassVar

from ..errors import GroupConfigError, clip

LOOPBACK_ENV = (("GLOO_SOCKET_IFNAME", "lo"), ("NCCL_SOCKET_IFNAME", "lo"), ("NCCL_NVLS_ENABLE", "0"),
                ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"))


@dataclass(frozen=True)
class GroupSpec:
    """Which devices, which backend, and the deadlines."""

    devices: tuple[str, ...]
    backend: str = ""  # "" = nccl for CUDA devices, gloo for CPU
    threads_per_rank: int = 1
    start_timeout_s: float = 180.0
    step_timeout_s: float = 600.0
    load_timeout_s: float = 900.0  # until the first step of a job: model shipping and loading
    collective_timeout_s: float = 600.0
    interrupt_grace_s: float = 60.0  # for ranks to stop, after an interrupt mid-sampling, before a teardown
    # After an interrupt, return to ComfyUI after this long and let the ranks finish in the background:
    detach_after_s: float = 0.25  # before the first step (start-up, model load: the ranks stop only later)
    detach_mid_sampling_s: float = 1.0  # mid-sampling (the ranks normally stop within the step in flight)
    first_error_grace_s: float = 10.0  # after a rank's job error, for the others to report it before a teardown
    # Teardown: ask the ranks to exit, then SIGTERM, then SIGKILL, each after a grace.
    shutdown_grace_s: float = 3.0  # for the ranks to exit after Shutdown (a clean teardown)
    fault_shutdown_grace_s: float = 0.5  # the same in a teardown after a fault (a rank may be hung)
    terminate_grace_s: float = 3.0  # after SIGTERM, before SIGKILL
    kill_wait_s: float = 5.0  # to reap a rank after SIGKILL
    handle_release_s: float = 2.0  # for multiprocessing's resource sharer to stop after a fault
    poll_s: float = 0.05  # how often a wait looks at the interrupt flag
    parent_poll_s: float = 1.0  # how often a rank checks that its parent lives (read when it starts)
    worker_init: str = ""  # "module:function" called with (device, worker_init_data) before the rank joins
    # Opaque to the group: what the ranks are set up with (the ComfyUI process's launch options, from
    # the adapters). Part of the group's identity: a group started with other data is not reused.
    worker_init_data: bytes = b""
    log_level: int = logging.INFO  # the ComfyUI console's level: the ranks forward their records from it
    fd_margin: int = 1024  # open fds a rank may gain after its first job before the group is respawned
    host_mib_per_rank: float = 800.0  # host memory a rank needs before any model: torch + ComfyUI (~790 MiB RSS)

    DURATIONS: ClassVar[tuple[str, ...]] = (  # every field in seconds, each checked to be positive
        "start_timeout_s", "step_timeout_s", "load_timeout_s", "collective_timeout_s", "interrupt_grace_s",
        "detach_after_s", "detach_mid_sampling_s", "first_error_grace_s", "shutdown_grace_s", "fault_shutdown_grace_s",
        "terminate_grace_s", "kill_wait_s", "handle_release_s", "poll_s", "parent_poll_s")

    @property
    def world_size(self) -> int:
        return len(self.devices)

    @property
    def resolved_backend(self) -> str:
        if self.backend:
            return self.backend
        return "nccl" if all(d.startswith("cuda") for d in self.devices) else "gloo"


_CUDA_NAME = re.compile(r"cuda:[0-9]{1,4}")
BACKEND_ENV = "CFG_PARALLEL_BACKEND"  # "gloo" lets two ranks share one GPU (tests, benchmarks)


def parse_devices(text: str, world_size: int, backend: str = "", visible_gpus: int | None = None,
                  nccl: bool | None = None) -> tuple[str, ...]:
    """'cuda:0,cuda:1' / 'cpu' / '' (auto) + world_size -> validated device tuple.

    visible_gpus / nccl: the GPUs this process sees and whether torch has NCCL (None: ask torch);
    a test passes another machine's facts (e.g. Windows: one visible GPU, no NCCL)."""
    import torch

    if not isinstance(world_size, int) or world_size < 1:
        raise GroupConfigError(f"Parallel size must be a whole number of at least 1, got {world_size!r}.")
    if not isinstance(text, str):
        raise GroupConfigError(f"devices must be text such as 'cuda:0,cuda:1' or 'cpu', got {clip(text)}.")
    n_gpu = torch.cuda.device_count() if visible_gpus is None else visible_gpus
    names = [d.strip().lower() for d in text.replace(";", ",").split(",") if d.strip()] if text else []
    if not names or names == ["auto"]:
        if n_gpu == 0:
            cores = os.cpu_count() or 1
            if world_size > cores:
                raise GroupConfigError(
                    f"Parallel size {world_size} would start {world_size} CPU ranks on a machine with no GPU and "
                    f"{cores} cores (each rank loads torch and the model). Use at most {cores}, or write devices "
                    f"'cpu' to insist.")
            names = ["cpu"] * world_size
        else:
            names = [f"cuda:{i}" for i in range(world_size)]
    elif names == ["cpu"]:
        names = ["cpu"] * world_size
    for name in names:
        if name == "cuda":
            raise GroupConfigError("Write CUDA devices with their index, e.g. 'cuda:0,cuda:1'.")
        if name != "cpu" and not _CUDA_NAME.fullmatch(name):
            raise GroupConfigError(f"Unknown device {clip(name, 40)}: write 'cpu' or 'cuda:N' with N in digits 0-9, "
                                   f"e.g. 'cuda:0,cuda:1'.")
    if len(names) != world_size:
        listed = clip(", ".join(names), 80) if len(names) <= 64 else f"{len(names)} names"
        raise GroupConfigError(f"{len(names)} device(s) listed ({listed}) but parallel size is {world_size}: "
                               f"list exactly one device per rank, or leave devices empty for automatic choice.")
    kinds = {n.split(":")[0] for n in names}
    if len(kinds) > 1:
        raise GroupConfigError(f"Mixed devices ({clip(', '.join(names), 80)}): all ranks must be CPUs or all GPUs.")
    check_device_backend(tuple(names), backend)
    if "cuda" in kinds:
        check_gpu_group(tuple(names), backend, n_gpu, _nccl_available() if nccl is None else nccl)
    return tuple(names)


def _nccl_available() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_nccl_available()


def check_gpu_group(devices: tuple[str, ...], backend: str, visible_gpus: int, nccl: bool) -> None:
    """Refuse, in one message, a GPU group this process cannot start: a device beyond the GPUs it
    sees (ComfyUI >= 0.33 on Windows shows only GPU 0 unless started with --cuda-device all), or
    NCCL missing (Windows builds of PyTorch have none) where two or more ranks would need it."""
    highest = max(int(d[5:]) for d in devices)
    problems, fixes = [], []
    if highest >= visible_gpus:
        seen = os.environ.get("CUDA_VISIBLE_DEVICES")
        problems.append(f"The ranks need {highest + 1} GPU(s) ({clip(', '.join(devices), 80)}) but this ComfyUI "
                        f"process sees {visible_gpus}" + (f" (CUDA_VISIBLE_DEVICES={clip(seen, 40)})"
                                                          if seen is not None else "") + ".")
        fixes.append("if the machine has more GPUs, start ComfyUI with --cuda-device all (on Windows ComfyUI 0.33 "
                     "and later show only GPU 0 otherwise, and ask for --disable-pinned-memory with it)")
        fixes.append(f"use at most {visible_gpus} ranks, on cuda:0 to cuda:{visible_gpus - 1}" if visible_gpus > 1
                     else "use parallel size 1")
    if (backend or "nccl") == "nccl" and not nccl and len(devices) > 1:  # size 1 samples in the ComfyUI process
        problems.append("GPU ranks exchange their predictions through NCCL, which this PyTorch lacks"
                        + (" (Windows builds of PyTorch have none)" if sys.platform == "win32" else "") + ".")
        fixes.append(f"use the gloo backend (start ComfyUI with the environment variable {BACKEND_ENV}=gloo; slower: "
                     f"the exchange goes through host memory)")
    if problems:
        fixes.append("set devices to 'cpu' to run the ranks on the CPU")
        raise GroupConfigError(" ".join(problems) + " What to do: " + "; or ".join(fixes) + ".")


def check_device_backend(devices: tuple[str, ...], backend: str) -> None:
    """Refuse a GPU listed twice unless the backend is gloo (NCCL refuses two ranks on one GPU)."""
    if backend not in ("", "gloo", "nccl"):
        raise GroupConfigError(f"Unknown backend {clip(backend, 20)}: use 'nccl' (GPUs) or 'gloo' (CPU, or several "
                               f"ranks on one GPU), or leave it empty for the default.")
    if backend == "nccl" and any(d == "cpu" for d in devices):
        raise GroupConfigError("The nccl backend runs on GPUs only; CPU ranks need gloo (leave the backend empty).")
    gpus = [d for d in devices if d != "cpu"]
    twice = sorted({d for d in gpus if gpus.count(d) > 1})
    if twice and backend != "gloo":
        raise GroupConfigError(
            f"{', '.join(twice)} is listed more than once: NCCL, the backend for GPU ranks, refuses two ranks on one "
            f"GPU. List each GPU once (e.g. 'cuda:0,cuda:1'), or lower the parallel size to the number of GPUs. "
            f"To run two ranks on one GPU anyway (tests, benchmarks; slower), use the gloo backend: start ComfyUI "
            f"with the environment variable {BACKEND_ENV}=gloo, or pass GroupSpec(backend='gloo').")
