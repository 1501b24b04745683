"""Which worker processes to start: devices, backend, deadlines; device names checked."""
from __future__ import annotations

import os
import re
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
    worker_init: str = ""  # "module:function" called with the device name before the first job
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


def parse_devices(text: str, world_size: int, backend: str = "") -> tuple[str, ...]:
    """'cuda:0,cuda:1' / 'cpu' / '' (auto) + world_size -> validated device tuple."""
    import torch

    if not isinstance(world_size, int) or world_size < 1:
        raise GroupConfigError(f"Parallel size must be a whole number of at least 1, got {world_size!r}.")
    if not isinstance(text, str):
        raise GroupConfigError(f"devices must be text such as 'cuda:0,cuda:1' or 'cpu', got {clip(text)}.")
    names = [d.strip().lower() for d in text.replace(";", ",").split(",") if d.strip()] if text else []
    if not names or names == ["auto"]:
        n_gpu = torch.cuda.device_count()
        if n_gpu >= world_size:
            names = [f"cuda:{i}" for i in range(world_size)]
        elif n_gpu == 0:
            cores = os.cpu_count() or 1
            if world_size > cores:
                raise GroupConfigError(
                    f"Parallel size {world_size} would start {world_size} CPU ranks on a machine with no GPU and "
                    f"{cores} cores (each rank loads torch and the model). Use at most {cores}, or write devices "
                    f"'cpu' to insist.")
            names = ["cpu"] * world_size
        else:
            raise GroupConfigError(
                f"Parallel size {world_size} asks for {world_size} GPUs but this machine has {n_gpu}. Lower the "
                f"parallel size to {n_gpu} or less, or list devices explicitly (e.g. 'cpu' to run the ranks on the "
                f"CPU).")
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
    n_gpu = torch.cuda.device_count() if "cuda" in kinds else 0
    for name in names:
        if name != "cpu" and int(name[5:]) >= n_gpu:
            raise GroupConfigError(f"Device '{name}' does not exist: this machine has {n_gpu} CUDA device(s).")
    return tuple(names)


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
