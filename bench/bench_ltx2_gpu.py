"""LTX-2 at real size on one GPU: the worker group against plain ComfyUI sampling.

Builds ComfyUI's own LTX-2 audio+video transformer (``LTXAVModel``, 48 blocks, 19.6B
parameters) with random bf16 weights and loads it the way ComfyUI loads a checkpoint
(``comfy.sd.load_diffusion_model_state_dict``: model detection, ``model_base.LTXAV``,
a ``ModelPatcher``). Then, in one process and one run, side by side:

  A   plain ComfyUI in this process: core ``CFGGuider`` (cfg 3, cond+negative batched in
      one forward), the Multi-Branch Guider at size 1 with standard CFG and with the
      LTX-2 four-pass policy; per-branch forward times at the stage-1 and stage-2 shapes
      (each kind alone, 1/2/4 batched); combine cost.
  B   the same guider through a 1-rank worker group (NCCL): overhead per step, exchange
      and combine per step, time from queueing to the first step for the first and the
      second prompt, peak GPU memory of the rank, host memory of every process.
  A2  plain in-process sampling again (drift check: A and A2 bracket B).
  C   2 ranks on ONE GPU through gloo (code path and exchange cost; fewer blocks, since
      two full replicas do not fit one GPU) against the same policy in process.
  D   (not in the default set) a group run right after an in-process run on the same GPU,
      with no cache release by the bench: does the rank get the memory back?

Group runs go through the guider's own ``group_sampling.sample_on_group``; the bench
only swaps its ``ComfySampleJob`` for ``TimedSampleJob`` (a subclass that wraps the rank's
exchange with a timer and reports memory).

Shapes: stage 1 = 768x512, 121 frames, 24 fps -> video latent [1,128,16,16,24] (6144
tokens) + audio latent [1,8,127,16] (127 tokens; LTXVEmptyLatentAudio: ceil(121/24 *
25 latents/s)); stage 2 = 1536x1024 -> [1,128,16,32,48] (24576 tokens) + the same audio.

    python bench/bench_ltx2_gpu.py                       # the full run (one GPU)
    python bench/bench_ltx2_gpu.py --tiny --device cpu   # CPU development, tiny widths
    python bench/bench_ltx2_gpu.py --parts A,B --blocks 2 --steps 3   # smoke

Raw results go to ``$OUT/ltx2_bench.json`` (or ``--out``), rewritten after each phase.

Measurement notes: in-process runs synchronise the GPU in the step callback, so step
times are GPU times; group runs take per-step times on the rank (an exchange wrapper
synchronises before the all-gather, which the all-gather's flag read does anyway) and
in the parent (progress messages). "Queue -> first step" is measured from the guider's
``sample()`` call (no ComfyUI server here) to the end of the first step, and reported
also minus one median step (= when the first step started).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MODULE = "bench.bench_ltx2_gpu"

# --- model configurations -------------------------------------------------------------
# LTX-2 (19B): ComfyUI's LTXAVModel defaults; detection finds 48 blocks, head dim 128 and
# cross-attention dim 4096 from the weights; everything else is the class default.
FULL_BLOCKS = 48
CAPTION_CHANNELS = 3840  # Gemma features after the text projection (LTXAVTEModel)
# Tiny widths for CPU development; 48 blocks keep the real tensor count (3568 tensors).
TINY_CONFIG = dict(in_channels=128, audio_in_channels=128, cross_attention_dim=32, audio_cross_attention_dim=16,
                   attention_head_dim=16, audio_attention_head_dim=8, num_attention_heads=2,
                   audio_num_attention_heads=2, caption_channels=32, connector_attention_head_dim=16,
                   connector_num_attention_heads=2, connector_num_layers=1)

FPS = 24.0
STAGE1 = dict(video=(1, 128, 16, 16, 24), audio=(1, 8, 127, 16))   # 768x512, 121 frames
STAGE2 = dict(video=(1, 128, 16, 32, 48), audio=(1, 8, 127, 16))   # 1536x1024
TINY_STAGE1 = dict(video=(1, 128, 2, 2, 3), audio=(1, 8, 5, 16))
TINY_STAGE2 = dict(video=(1, 128, 2, 4, 6), audio=(1, 8, 5, 16))
TEXT_TOKENS = 128  # real prompt tokens; the connector pads to 1024 with its registers


def _now() -> float:
    return time.perf_counter()


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ======================================================================================
# Worker side: an exchange wrapper that times the all-gather alone, and a job that uses it
# ======================================================================================

class TimedExchange:
    """Wraps the rank's exchange: per evaluation (enter, forwards done, gather done) times.

    On CUDA it synchronises before the gather, so 'gather done - forwards done' is the
    exchange alone (the dispatcher's own exchange_s also holds the wait for the forwards,
    since the gather's flag read is the step's first synchronisation). If the backend
    cannot gather device tensors (gloo on CUDA), it gathers through host copies and
    records that ('via_cpu').
    """

    def __init__(self, inner) -> None:
        self.inner = inner
        self.rank = inner.rank
        self.world_size = inner.world_size
        self.marks: list[tuple[float, float, float]] = []
        self.mode = "direct"
        self.direct_error = ""

    def gather(self, local, slots, like, stop=False, failed=False):
        t0 = _now()
        if like.device.type == "cuda":
            torch.cuda.synchronize(like.device)
        t1 = _now()
        if self.mode == "direct":
            try:
                out = self.inner.gather(local, slots, like, stop=stop, failed=failed)
            except RuntimeError as exc:  # e.g. a backend without device all-gather
                if self.marks:
                    raise
                self.mode, self.direct_error = "via_cpu", f"{type(exc).__name__}: {exc}"[:500]
                out = self._via_cpu(local, slots, like, stop, failed)
        else:
            out = self._via_cpu(local, slots, like, stop, failed)
        t2 = _now()
        self.marks.append((t0, t1, t2))
        return out

    def _via_cpu(self, local, slots, like, stop, failed):
        from cfg_runtime.parallel.exchange import Gathered

        host = self.inner.gather([p.cpu() if p is not None else None for p in local], slots, like.cpu(),
                                 stop=stop, failed=failed)
        preds = tuple(tuple(p.to(like.device) for p in row) for row in host.preds)
        return Gathered(preds, host.flags)


def _proc_memory(pid: int | None = None) -> dict:
    try:
        import psutil

        p = psutil.Process(pid or os.getpid())
        m = p.memory_full_info()
        return {"rss": m.rss, "pss": getattr(m, "pss", None), "uss": getattr(m, "uss", None),
                "shared": getattr(m, "shared", None)}
    except Exception as exc:  # psutil missing or process gone
        return {"error": f"{type(exc).__name__}: {exc}"}


def _state_into_dict(self, state) -> None:
    self.__dict__.update(state)


def patch_model_config_pickling() -> bool:
    """Workaround for ComfyUI >= 0.29 (reported in bench/README.md): its model config class
    (comfy.supported_models_base.BASE) answers every missing attribute with None, so pickle
    finds ``__setstate__ = None`` and unpickling the shipped model on a rank fails with
    "TypeError: 'NoneType' object is not callable". Give the class a real __setstate__."""
    import comfy.supported_models_base as smb

    if "__getattr__" in vars(smb.BASE) and "__setstate__" not in vars(smb.BASE):
        smb.BASE.__setstate__ = _state_into_dict
        return True
    return False


def _make_timed_job():
    from cfg_runtime.adapters.sampling.sample_job import ComfySampleJob

    # On a rank this runs while the job is unpickled, before the model it carries.
    patch_model_config_pickling()

    @dataclass(frozen=True)
    class TimedSampleJob(ComfySampleJob):
        """ComfySampleJob with TimedExchange; adds rank-side timings and memory to the summary."""

        def run(self, ctx):
            t_start = _now()
            timed = TimedExchange(ctx.exchange)
            ctx.exchange = timed
            try:
                return super().run(ctx)
            finally:
                ctx.summary["bench"] = {
                    "pid": os.getpid(), "t_run_start": t_start, "t_run_end": _now(), "marks": timed.marks,
                    "exchange_mode": timed.mode, "direct_error": timed.direct_error,
                    "host_memory": _proc_memory(),
                    "max_reserved": (torch.cuda.max_memory_reserved(ctx.device)
                                     if ctx.device.type == "cuda" else None),
                }

    TimedSampleJob.__module__ = MODULE
    TimedSampleJob.__qualname__ = TimedSampleJob.__name__ = "TimedSampleJob"
    return TimedSampleJob


def __getattr__(name):  # classes that need ComfyUI are made on first use (pickle finds them here)
    if name == "TimedSampleJob":
        cls = _make_timed_job()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


# ======================================================================================
# Parent side
# ======================================================================================

class MemMonitor(threading.Thread):
    """Samples host memory of this process and the group's ranks, system memory and GPU use."""

    def __init__(self, device: str, interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="bench-mem")
        self.device = device
        self.interval = interval
        self.phase = "setup"
        self.peaks: dict[str, dict] = {}
        self._stop = threading.Event()
        self._nvml = None
        if device.startswith("cuda"):
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(torch.device(device).index or 0))
            except Exception:
                self._nvml = None

    def set_phase(self, name: str) -> None:
        self.phase = name

    def stop(self) -> None:
        self._stop.set()

    def _sample(self) -> dict:
        from cfg_runtime.group import current_group

        out = {"parent": _proc_memory()}
        group = current_group()
        if group is not None:
            for i, pid in enumerate(group.pids()):
                out[f"rank{i}"] = _proc_memory(pid)
        try:
            info = {}
            with open("/proc/meminfo") as f:
                for line in f:
                    k, v = line.split(":", 1)
                    info[k] = int(v.split()[0]) * 1024
            out["system_used"] = info["MemTotal"] - info["MemAvailable"]
            out["system_shmem"] = info.get("Shmem")
        except OSError:
            pass
        if self._nvml is not None:
            pynvml, handle = self._nvml
            try:
                out["gpu_used"] = pynvml.nvmlDeviceGetMemoryInfo(handle).used
                procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                out["gpu_by_pid"] = {int(p.pid): int(p.usedGpuMemory or 0) for p in procs}
            except Exception:
                pass
        return out

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                s = self._sample()
            except Exception:
                s = {}
            peak = self.peaks.setdefault(self.phase, {})
            for key, val in s.items():
                if isinstance(val, dict) and key != "gpu_by_pid":
                    for mk, mv in val.items():
                        if isinstance(mv, int):
                            name = f"{key}.{mk}"
                            peak[name] = max(peak.get(name, 0), mv)
                elif key == "gpu_by_pid":
                    for pid, mv in val.items():
                        name = f"gpu_pid.{pid}"
                        peak[name] = max(peak.get(name, 0), mv)
                elif isinstance(val, int):
                    peak[key] = max(peak.get(key, 0), val)
            if self.phase.startswith("B") or self.phase.startswith("C"):
                # sum of PSS over all processes: the host memory the job really holds
                pss = sum(v.get("pss") or 0 for k, v in s.items() if isinstance(v, dict) and k != "gpu_by_pid")
                peak["sum_pss"] = max(peak.get("sum_pss", 0), pss)
            self._stop.wait(self.interval)


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.device = args.device
        self.results: dict = {"meta": {}, "runs": {}, "probe": {}, "memory": {}, "derived": {}}
        self.out_dir = Path(args.out)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.t0 = _now()
        self.mon: MemMonitor | None = None
        self.outputs: dict = {}

    # --- bookkeeping ------------------------------------------------------------------
    def elapsed(self) -> float:
        return _now() - self.t0

    def over_budget(self, reserve: float = 0.0) -> bool:
        return self.elapsed() + reserve > self.args.budget_s

    def save(self) -> None:
        if self.mon is not None:
            self.results["memory"]["monitor_peaks"] = self.mon.peaks
        path = self.out_dir / "ltx2_bench.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=_jsonable))
        tmp.replace(path)

    def log(self, msg: str) -> None:
        print(f"[bench {self.elapsed():7.1f}s] {msg}", flush=True)

    # --- ComfyUI set-up -----------------------------------------------------------------
    def setup(self) -> None:
        a = self.args
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.results["meta"]["nofile_limit_before"] = [soft, hard]
        # Workaround (see README): shipping a model opens 2 file descriptors per tensor in
        # this process (3568 tensors for LTX-2); a soft limit of 1024 makes it fail.
        if a.raise_nofile and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        import comfy.cli_args

        comfy.cli_args.args.cpu = self.device == "cpu"
        if self.device == "cpu":
            torch.set_num_threads(1)  # as the CPU ranks run (threads_per_rank 1): same kernels, same bits
        import comfy.model_management as mm
        import comfy.ldm.modules.attention as attn

        meta = self.results["meta"]
        meta["patched_model_config_setstate"] = patch_model_config_pickling()
        meta.update({
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "argv": sys.argv, "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "host_cpus": os.cpu_count(), "platform": platform.platform(),
            "comfy_dir": a.comfy, "comfy_version": _comfy_version(a.comfy),
            "comfy_torch_device": str(mm.get_torch_device()),
            "attention": getattr(attn.optimized_attention, "__name__", str(attn.optimized_attention)),
            "nofile_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
            "sharing_strategy": _sharing_strategy(),
        })
        if self.device.startswith("cuda"):
            p = torch.cuda.get_device_properties(self.device)
            meta["gpu"] = {"name": p.name, "total_memory": p.total_memory, "sms": p.multi_processor_count}
            try:
                import subprocess

                meta["nvidia_smi"] = subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit",
                     "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
            except Exception as exc:
                meta["nvidia_smi"] = f"unavailable: {exc}"
        try:
            meta["kitchen"] = __import__("importlib").util.find_spec("comfy_kitchen") is not None
        except Exception:
            meta["kitchen"] = False
        self.mon = MemMonitor(self.device)
        self.mon.start()
        self.log(f"device {self.device} {meta.get('gpu', {}).get('name', '')}; torch {torch.__version__}; "
                 f"attention {meta['attention']}; nofile {meta['nofile_limit_before']} -> {meta['nofile_limit']}")

    # --- model ----------------------------------------------------------------------------
    def build_model(self, blocks: int, seed: int = 0):
        """Random bf16 weights at LTX-2 shapes, loaded through ComfyUI's own loader."""
        import comfy.ldm.lightricks.av_model as av
        import comfy.ops
        import comfy.sd

        t0 = _now()
        if self.args.tiny:
            cfg = dict(TINY_CONFIG, num_layers=blocks)
            metadata = {"config": json.dumps({"transformer": cfg})}
        else:
            cfg = dict(num_layers=blocks)
            metadata = None  # detection alone, as for a real LTX-2 checkpoint
        meta_model = av.LTXAVModel(**cfg, operations=comfy.ops.disable_weight_init, dtype=torch.bfloat16,
                                   device="meta")
        shapes = [(k, tuple(v.shape)) for k, v in meta_model.state_dict().items()]
        del meta_model
        gen_device = self.device if self.device.startswith("cuda") else "cpu"
        gen = torch.Generator(device=gen_device).manual_seed(seed)
        sd = {}
        for key, shape in shapes:
            # N(0, 0.02) everywhere (drawn on the GPU when there is one: the CPU generator is serial)
            r = torch.randn(shape, generator=gen, device=gen_device, dtype=torch.float32).mul_(0.02)
            sd[key] = r.to(torch.bfloat16).cpu() if gen_device != "cpu" else r.to(torch.bfloat16)
        t1 = _now()
        n_params = sum(t.numel() for t in sd.values())
        n_tensors = len(sd)
        patcher = comfy.sd.load_diffusion_model_state_dict(sd, metadata=metadata)
        del sd
        gc.collect()
        t2 = _now()
        dm = patcher.model.diffusion_model
        info = {"blocks": blocks, "params": n_params, "tensors": n_tensors, "random_s": t1 - t0, "load_s": t2 - t1,
                "model_class": type(patcher.model).__name__, "diffusion_model": type(dm).__name__,
                "patcher_class": type(patcher).__name__, "dtype": str(patcher.model.get_dtype()),
                "inner_dim": dm.inner_dim, "audio_inner_dim": dm.audio_inner_dim,
                "parent_memory_after": _proc_memory()}
        self.log(f"model: {type(patcher.model).__name__}/{type(dm).__name__}, {blocks} blocks, "
                 f"{n_params / 1e9:.2f}B params in {n_tensors} tensors, {info['dtype']}; random {t1 - t0:.1f}s, "
                 f"ComfyUI load {t2 - t1:.1f}s")
        return patcher, info

    def conds(self):
        channels = TINY_CONFIG["caption_channels"] if self.args.tiny else CAPTION_CHANNELS
        out = []
        for seed in (11, 12):
            g = torch.Generator().manual_seed(seed)
            ctx = torch.randn(1, TEXT_TOKENS if not self.args.tiny else 16, channels, generator=g)
            out.append([[ctx, {"unprocessed_ltxav_embeds": True, "frame_rate": FPS}]])
        return out

    def latent(self, stage: dict, seed: int = 5):
        import comfy.nested_tensor as nt

        g = torch.Generator().manual_seed(seed)
        video, audio = torch.zeros(stage["video"]), torch.zeros(stage["audio"])
        noise = nt.NestedTensor([torch.randn(stage["video"], generator=g), torch.randn(stage["audio"], generator=g)])
        return nt.NestedTensor([video, audio]), noise

    def sigmas(self, steps: int) -> torch.Tensor:
        return torch.cat([torch.linspace(1.0, 0.1, steps), torch.zeros(1)])

    # --- runs ---------------------------------------------------------------------------------
    def _callback(self, marks: list):
        dev = self.device

        def cb(step, x0, x, total):
            _sync(dev)
            marks.append(_now())
        return cb

    def _summarise(self, name: str, t_call: float, marks: list, t_end: float, steps: int, extra: dict) -> dict:
        intervals = [b - a for a, b in zip(marks, marks[1:])]
        med = _med(intervals)
        first_done = marks[0] - t_call if marks else None
        rec = {"steps": steps, "wall_s": t_end - t_call, "first_step_done_s": first_done,
               "step_intervals_s": intervals, "median_step_s": med,
               "queue_to_first_step_s": (first_done - med) if (first_done is not None and med) else None}
        rec.update(extra)
        self.results["runs"][name] = rec
        self.log(f"{name}: median step {_fmt_s(med)}, first step done after {_fmt_s(first_done)}, "
                 f"queue->first step {_fmt_s(rec['queue_to_first_step_s'])}, wall {t_end - t_call:.2f}s")
        self.save()
        return rec

    def run_core_cfg(self, name, patcher, pos, neg, stage, steps, cfg=3.0):
        import comfy.samplers

        latent, noise = self.latent(stage)
        marks: list = []
        t_call = _now()
        g = comfy.samplers.CFGGuider(patcher)
        g.set_conds(pos, neg)
        g.set_cfg(cfg)
        out = g.sample(noise, latent, comfy.samplers.ksampler("euler"), self.sigmas(steps),
                       callback=self._callback(marks), disable_pbar=True, seed=1)
        _sync(self.device)
        t_end = _now()
        self.outputs[name] = out
        return self._summarise(name, t_call, marks, t_end, steps, {"kind": "core CFGGuider", "branches": 2,
                                                                     "ranks": "in-process"})

    def run_inproc(self, name, patcher, policy, pos, neg, stage, steps):
        import comfy.samplers
        from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings

        latent, noise = self.latent(stage)
        marks: list = []
        t_call = _now()
        g = MultiBranchGuider(patcher, policy, ParallelSettings(world_size=1))
        g.set_conds(pos, neg)
        out = g.sample(noise, latent, comfy.samplers.ksampler("euler"), self.sigmas(steps),
                       callback=self._callback(marks), disable_pbar=True, seed=1)
        _sync(self.device)
        t_end = _now()
        self.outputs[name] = out
        return self._summarise(name, t_call, marks, t_end, steps, {
            "kind": "MultiBranchGuider size 1 (in process)", "branches": len(policy.branches),
            "ranks": "in-process", "dispatch": g.last_run})

    def run_group(self, name, patcher, policy, pos, neg, stage, steps, devices, backend=""):
        """The guider's own group path (group_sampling.sample_on_group, which ships the base weights
        only when the ranks lack them) with TimedSampleJob in place of ComfySampleJob."""
        import comfy.samplers
        import cfg_runtime.adapters.sampling.group_sampling as gs
        import cfg_runtime.adapters.sampling.guider as cg
        from cfg_runtime.group import current_group, get_group

        job_cls = globals().get("TimedSampleJob") or __getattr__("TimedSampleJob")
        if gs.ComfySampleJob is not job_cls:
            gs.ComfySampleJob = job_cls  # group_sampling builds its job by this name at call time
        latent, noise = self.latent(stage)
        marks: list = []
        settings = _bench_parallel_settings(len(devices), ",".join(devices), backend)
        spec = settings.group_spec()
        cur = current_group()
        started = cur is None or not cur.alive() or (cur.spec.devices, cur.spec.resolved_backend) != (
            spec.devices, spec.resolved_backend)
        had_model = None if started else gs.resident_model(cur)
        t_call = _now()
        g = cg.MultiBranchGuider(patcher, policy, settings)
        g.set_conds(pos, neg)

        def on_progress(step, x0, x, total):
            marks.append(_now())

        try:
            get_group(spec)  # what the guider does first; timed here to split the first prompt's wait
            t_ready = _now()
            out = g.sample(noise, latent, comfy.samplers.ksampler("euler"), self.sigmas(steps), None,
                           on_progress, True, 1)
        except Exception as exc:
            self.results["runs"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                          "remote_traceback": getattr(exc, "remote_traceback", "")}
            self.save()
            self.log(f"{name} FAILED: {type(exc).__name__}: {exc}\n{getattr(exc, 'remote_traceback', '')}")
            raise
        t_end = _now()
        group = current_group()
        from types import SimpleNamespace

        result = SimpleNamespace(value=None, seconds=g.last_run.get("seconds"),
                                 summaries=tuple(g.last_run.get("per_rank") or ()))
        shipped_base = had_model != getattr(patcher.model, "_cfgp_token", None)
        self.outputs[name] = out
        ranks = []
        for r, s in enumerate(result.summaries):
            b = s.get("bench", {})
            m = b.get("marks", [])
            exch = [t2 - t1 for _, t1, t2 in m]
            step = [b2 - b1 for (_, _, b1), (_, _, b2) in zip(m, m[1:])]
            ranks.append({
                "rank": r, "pid": b.get("pid"), "forwards": s.get("forwards"), "evaluations": s.get("evaluations"),
                "idle_evaluations": s.get("idle_evaluations"), "model_reloaded": s.get("model_reloaded"),
                "dispatch_forward_s": s.get("forward_s"), "dispatch_exchange_s": s.get("exchange_s"),
                "dispatch_combine_s": s.get("combine_s"), "peak_gpu_bytes": s.get("peak_gpu_bytes"),
                "max_reserved": b.get("max_reserved"), "host_memory": b.get("host_memory"),
                "exchange_mode": b.get("exchange_mode"), "direct_error": b.get("direct_error"),
                "exchange_s": exch, "median_exchange_s": _med(exch), "rank_step_s": step,
                "median_rank_step_s": _med(step),
                "combine_s_per_eval": (s.get("combine_s") or 0) / max(1, s.get("evaluations") or 1),
                "job_start_after_queue_s": (b["t_run_start"] - t_call) if "t_run_start" in b else None,
                "first_gather_after_queue_s": (m[0][2] - t_call) if m else None,
            })
        # Per evaluation: the all-gather proper = last rank done - last rank ready (the last to
        # arrive waits for nobody); imbalance = last ready - first ready (a rank waiting for a peer).
        all_marks = [(s.get("bench") or {}).get("marks", []) for s in result.summaries]
        n_eval = min((len(m) for m in all_marks), default=0)
        comm = [max(m[i][2] for m in all_marks) - max(m[i][1] for m in all_marks) for i in range(n_eval)]
        wait = [max(m[i][1] for m in all_marks) - min(m[i][1] for m in all_marks) for i in range(n_eval)]
        extra = {"kind": f"worker group, {len(devices)} rank(s) on {','.join(devices)} ({spec.resolved_backend})",
                 "exchange_comm_s": comm, "median_exchange_comm_s": _med(comm),
                 "imbalance_wait_s": wait, "median_imbalance_wait_s": _med(wait),
                 "branches": len(policy.branches), "ranks": len(devices), "group_started": started,
                 "base_weights_shipped": shipped_base, "group_start_s": t_ready - t_call,
                 "group_run_s": result.seconds, "per_rank": ranks,
                 "parent_memory": _proc_memory(), "ranks_memory": [_proc_memory(p) for p in group.pids()]}
        rec = self._summarise(name, t_call, marks, t_end, steps, extra)
        r0 = ranks[0]
        if r0["median_rank_step_s"]:
            rec["queue_to_first_step_rank_s"] = r0["first_gather_after_queue_s"] - r0["median_rank_step_s"]
        self.save()
        return rec

    # --- forward probe ---------------------------------------------------------------------
    def probe(self, name, patcher, policy, pos, neg, stage, plan: list[tuple[str, tuple[str, ...]]], reps: int):
        """Time single forwards at one shape inside a real sampling set-up (conds processed by ComfyUI)."""
        import comfy.samplers
        from cfg_runtime.adapters.families import family_of
        from cfg_runtime.adapters.sampling.branch_guider import branch_options
        from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings
        from cfg_runtime.guidance.policy import CombineContext

        bench = self
        dev = self.device
        out: dict = {}

        class _Done(Exception):
            pass

        class ProbeGuider(MultiBranchGuider):
            def predict_noise(self, x, timestep, model_options={}, seed=None):
                calls: list = []

                def wrapper(apply_model, args):
                    calls.append(int(args["input"].shape[0]))
                    return apply_model(args["input"], args["timestep"], **args["c"])

                preds = {}
                for label, names in plan:
                    if bench.over_budget(30):
                        out[label] = {"skipped": "time budget"}
                        continue
                    branches = [self.policy.branch(n) for n in names]
                    opts = dict(branch_options(model_options, branches[0], family_of(patcher)))
                    opts["model_function_wrapper"] = wrapper
                    conds = [self.conds[b.cond] for b in branches]
                    times, batches = [], None
                    for i in range(1 + reps):
                        calls.clear()
                        _sync(dev)
                        t0 = _now()
                        res = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, opts)
                        _sync(dev)
                        if i:
                            times.append(_now() - t0)
                        batches = list(calls)
                    if len(names) == 1:
                        preds.setdefault(names[0], res[0])
                    out[label] = {"branches": list(names), "model_calls_batch_sizes": batches,
                                  "median_s": _med(times), "min_s": min(times), "max_s": max(times), "all_s": times}
                    bench.log(f"probe {name} {label}: {_fmt_s(_med(times))} (model calls {batches})")
                if set(preds) >= {b.name for b in self.policy.branches}:
                    ctx = CombineContext(x=x, step=0, latent_shapes=self.latent_shapes, memory={})
                    times = []
                    for i in range(21):
                        _sync(dev)
                        t0 = _now()
                        for p in preds.values():  # what the dispatcher does before combining
                            bool(torch.isfinite(p).all())
                        self.policy.combine(preds, ctx)
                        _sync(dev)
                        if i:
                            times.append(_now() - t0)
                    out["checks_and_combine"] = {"median_s": _med(times), "policy": self.policy.name}
                    t = []
                    for i in range(21):
                        _sync(dev)
                        t0 = _now()
                        next(iter(preds.values())).clone()
                        _sync(dev)
                        if i:
                            t.append(_now() - t0)
                    out["copy_one_prediction"] = {"median_s": _med(t), "bytes": x.numel() * x.element_size()}
                out["tokens"] = {"latent_numel": x.numel(), "dtype": str(x.dtype)}
                raise _Done()

        latent, noise = self.latent(stage)
        g = ProbeGuider(patcher, policy, ParallelSettings(world_size=1))
        g.set_conds(pos, neg)
        t0 = _now()
        try:
            g.sample(noise, latent, comfy.samplers.ksampler("euler"), torch.tensor([0.909375, 0.725]),
                     disable_pbar=True, seed=1)
        except _Done:
            pass
        out["wall_s"] = _now() - t0
        self.results["probe"][name] = out
        self.save()
        return out

    # --- memory helpers ---------------------------------------------------------------------
    def gpu_snapshot(self, label: str) -> None:
        if not self.device.startswith("cuda"):
            return
        free, total = torch.cuda.mem_get_info(self.device)
        self.results["memory"].setdefault("parent_gpu", {})[label] = {
            "max_allocated": torch.cuda.max_memory_allocated(self.device),
            "max_reserved": torch.cuda.max_memory_reserved(self.device),
            "device_used": total - free, "device_total": total}
        torch.cuda.reset_peak_memory_stats(self.device)

    def unload_parent(self, label: str) -> float:
        """Unload the model from this process's GPU and return the cached blocks to the driver."""
        import comfy.model_management as mm

        t0 = _now()
        mm.unload_all_models()
        gc.collect()
        mm.soft_empty_cache()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        dt = _now() - t0
        self.results["memory"].setdefault("unload_s", {})[label] = dt
        self.log(f"unloaded the parent's GPU copy in {dt:.1f}s")
        return dt

    def same(self, a: str, b: str) -> bool | None:
        x, y = self.outputs.get(a), self.outputs.get(b)
        if x is None or y is None:
            return None
        xs = x.unbind() if getattr(x, "is_nested", False) else [x]
        ys = y.unbind() if getattr(y, "is_nested", False) else [y]
        return len(xs) == len(ys) and all(torch.equal(u.cpu(), v.cpu()) for u, v in zip(xs, ys))


def _fmt_s(v) -> str:
    return "-" if v is None else (f"{v * 1000:.1f}ms" if v < 1 else f"{v:.3f}s")


def _jsonable(o):
    if isinstance(o, torch.Tensor):
        return o.tolist() if o.numel() < 64 else f"tensor{tuple(o.shape)}"
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _sharing_strategy() -> str:
    import torch.multiprocessing

    return torch.multiprocessing.get_sharing_strategy()


def _bench_parallel_settings(size: int, devices: str, backend: str):
    """ParallelSettings with a chosen backend (gloo for 2 ranks on one GPU) and long deadlines."""
    from dataclasses import replace as dc_replace

    from cfg_runtime.adapters.sampling.guider import ParallelSettings

    class BenchParallelSettings(ParallelSettings):
        def group_spec(self):
            spec = super().group_spec()
            extra = {"load_timeout_s": 900.0} if "load_timeout_s" in spec.__dataclass_fields__ else {}
            return dc_replace(spec, backend=backend, start_timeout_s=600.0, **extra)

    return BenchParallelSettings(world_size=size, devices=devices, step_timeout_s=600.0, start_timeout_s=600.0)


def _comfy_version(path: str) -> str:
    try:
        text = (Path(path) / "comfyui_version.py").read_text()
        return text.split("=", 1)[1].strip().strip("\"'")
    except Exception:
        return "?"


# ======================================================================================
# The run
# ======================================================================================

def run_all(b: Bench) -> None:
    from cfg_runtime.group import shutdown_group
    from cfg_runtime.guidance.ltx import ModalityGuidance
    from cfg_runtime.guidance.presets import ltx2_multimodal, standard_cfg

    a = b.args
    parts = set(a.parts.split(","))
    s1 = TINY_STAGE1 if a.tiny else STAGE1
    s2 = TINY_STAGE2 if a.tiny else STAGE2
    steps = a.steps
    dev = b.device
    cfg2 = standard_cfg(3.0)
    ltx4 = ltx2_multimodal(ModalityGuidance.LTX2_VIDEO, ModalityGuidance.LTX2_AUDIO)
    b.results["meta"].update({"stage1": s1, "stage2": s2, "steps": steps, "fps": FPS,
                              "policies": {"cfg2": [x.name for x in cfg2.branches],
                                           "ltx4": [x.name for x in ltx4.branches]},
                              "ltx4_params": {"video": repr(ModalityGuidance.LTX2_VIDEO),
                                              "audio": repr(ModalityGuidance.LTX2_AUDIO)}})
    pos, neg = b.conds()

    if parts & {"A", "B", "A2", "probe"}:
        b.mon.set_phase("build")
        patcher, info = b.build_model(a.blocks)
        b.results["model"] = info
        b.save()

        if "A" in parts:
            b.mon.set_phase("A")
            b.run_core_cfg("A_core_cfg_first", patcher, pos, neg, s1, steps)
            b.run_core_cfg("A_core_cfg", patcher, pos, neg, s1, steps)
            b.run_inproc("A_mbg_cfg2", patcher, cfg2, pos, neg, s1, steps)
            b.run_inproc("A_mbg_ltx4", patcher, ltx4, pos, neg, s1, steps)
            b.gpu_snapshot("A_sampling")
        if "probe" in parts:
            b.mon.set_phase("probe")
            b.probe("stage1", patcher, ltx4, pos, neg, s1, [
                ("cond", ("cond",)), ("negative", ("negative",)), ("perturbed", ("perturbed",)),
                ("isolated", ("isolated",)), ("cond+negative batched", ("cond", "negative")),
                ("4 batched (cond,neg,cond,neg)", ("cond", "negative", "cond", "negative"))], reps=a.reps)
            if not b.over_budget(a.reserve_s):
                b.probe("stage2", patcher, cfg2, pos, neg, s2, [
                    ("cond", ("cond",)), ("cond+negative batched", ("cond", "negative"))], reps=a.reps2)
            b.gpu_snapshot("probe")
        if "B" in parts and not b.over_budget(a.reserve_s):
            b.unload_parent("before_B")
            b.mon.set_phase("B")
            d1 = (dev,)
            b.run_group("B_group1_ltx4_first", patcher, ltx4, pos, neg, s1, steps, d1)
            b.run_group("B_group1_ltx4_second", patcher, ltx4, pos, neg, s1, steps, d1)
            b.run_group("B_group1_cfg2", patcher, cfg2, pos, neg, s1, steps, d1)
            if not b.over_budget(a.reserve_s):
                b.run_group("B_group1_ltx4_third", patcher, ltx4, pos, neg, s1, steps, d1)
            b.gpu_snapshot("B_parent")
            shutdown_group()
        if "A2" in parts and not b.over_budget(a.reserve_s):
            b.mon.set_phase("A2")
            b.run_inproc("A2_mbg_ltx4", patcher, ltx4, pos, neg, s1, steps)
            b.run_inproc("A2_mbg_cfg2", patcher, cfg2, pos, neg, s1, steps)
            b.gpu_snapshot("A2")
        b.results["exact"] = {
            "group1_ltx4 == inproc_ltx4": b.same("B_group1_ltx4_second", "A_mbg_ltx4"),
            "group1_cfg2 == inproc_cfg2": b.same("B_group1_cfg2", "A_mbg_cfg2"),
            "inproc_ltx4 A == A2": b.same("A_mbg_ltx4", "A2_mbg_ltx4"),
        }
        b.unload_parent("after_A2")
        del patcher
        b.outputs.clear()
        gc.collect()
        b.save()

    if "D" in parts and not b.over_budget(a.reserve_s):
        # The guider's own path after an in-process run: no explicit unload or cache release here;
        # capture() unloads the parent's copy. Does the rank on the same GPU get the memory back?
        b.mon.set_phase("D_build")
        patcher, info = b.build_model(a.blocks)
        b.results["model_D"] = info
        b.mon.set_phase("D")
        b.run_core_cfg("D_core_cfg_first", patcher, pos, neg, s1, steps)
        b.gpu_snapshot("D_after_inproc")
        b.run_group("D_group1_ltx4_first_no_unload", patcher, ltx4, pos, neg, s1, steps, (dev,))
        rec = b.results["memory"].setdefault("D_parent_after_capture", {})
        if dev.startswith("cuda"):
            rec.update(reserved=torch.cuda.memory_reserved(dev), allocated=torch.cuda.memory_allocated(dev))
        b.run_group("D_group1_ltx4_second_no_unload", patcher, ltx4, pos, neg, s1, steps, (dev,))
        shutdown_group()
        b.unload_parent("after_D")
        del patcher
        b.outputs.clear()
        gc.collect()
        b.save()

    if "C" in parts and not b.over_budget(a.reserve_s):
        b.mon.set_phase("C_build")
        patcher, info = b.build_model(a.gloo_blocks, seed=1)
        b.results["model_C"] = info
        b.mon.set_phase("C")
        b.run_inproc("C_inproc_ltx4_warm", patcher, ltx4, pos, neg, s1, steps)
        b.run_inproc("C_inproc_ltx4", patcher, ltx4, pos, neg, s1, steps)
        b.gpu_snapshot("C_inproc")
        b.unload_parent("before_C_group")
        devs = (dev, dev)
        b.run_group("C_gloo2_ltx4_first", patcher, ltx4, pos, neg, s1, steps, devs, backend="gloo")
        b.run_group("C_gloo2_ltx4", patcher, ltx4, pos, neg, s1, steps, devs, backend="gloo")
        b.results.setdefault("exact", {})["gloo2_ltx4 == inproc_ltx4 (C)"] = b.same("C_gloo2_ltx4", "C_inproc_ltx4")
        shutdown_group()
        b.unload_parent("after_C")
        b.save()


def derive(b: Bench) -> list[str]:
    """Ratios and predictions from what was measured; returns the summary lines."""
    R, P = b.results["runs"], b.results["probe"]
    d = b.results["derived"]
    lines = []

    def step(name, key="median_step_s"):
        return (R.get(name) or {}).get(key)

    def ratio(x, y):
        return x / y if (x and y) else None

    # (1) overhead of the worker group at size 1, per step
    ltx_in = _med([step("A_mbg_ltx4"), step("A2_mbg_ltx4")])
    cfg_in = _med([step("A_mbg_cfg2"), step("A2_mbg_cfg2")])
    ltx_grp = _med([step(n) for n in ("B_group1_ltx4_second", "B_group1_ltx4_third")])
    ltx_grp_rank = _med([(R.get(n) or {}).get("per_rank", [{}])[0].get("median_rank_step_s")
                         for n in ("B_group1_ltx4_second", "B_group1_ltx4_third") if n in R])
    cfg_grp = step("B_group1_cfg2")
    core = step("A_core_cfg")
    d["overhead_group1_ltx4"] = ratio(ltx_grp, ltx_in)
    d["overhead_group1_ltx4_rank_clock"] = ratio(ltx_grp_rank, ltx_in)
    d["overhead_group1_cfg2"] = ratio(cfg_grp, cfg_in)
    d["mbg_cfg2_vs_core_cfg"] = ratio(cfg_in, core)
    d["drift_A2_vs_A_ltx4"] = ratio(step("A2_mbg_ltx4"), step("A_mbg_ltx4"))
    lines.append("(1) step time, stage 1 (median over steps):")
    lines.append(f"    core CFGGuider cfg 3 (2 branches batched): {_fmt_s(core)}")
    lines.append(f"    MultiBranchGuider in process, CFG (2 branches, one after the other): {_fmt_s(cfg_in)}"
                 f"  = {_fmt_r(d['mbg_cfg2_vs_core_cfg'])} x core")
    lines.append(f"    ... through a 1-rank worker group: {_fmt_s(cfg_grp)}  = "
                 f"{_fmt_r(d['overhead_group1_cfg2'])} x in process")
    lines.append(f"    MultiBranchGuider in process, LTX-2 4 passes: {_fmt_s(ltx_in)} (A {_fmt_s(step('A_mbg_ltx4'))}, "
                 f"A2 {_fmt_s(step('A2_mbg_ltx4'))})")
    lines.append(f"    ... through a 1-rank worker group: {_fmt_s(ltx_grp)} (rank clock {_fmt_s(ltx_grp_rank)})  "
                 f"= {_fmt_r(d['overhead_group1_ltx4'])} x in process  [target <= 1.02]")
    c_in, c_g2 = step("C_inproc_ltx4"), step("C_gloo2_ltx4")
    d["gloo2_one_gpu_vs_inproc"] = ratio(c_g2, c_in)
    if c_in or c_g2:
        nb = (b.results.get("model_C") or {}).get("blocks")
        lines.append(f"    {nb}-block model, LTX-2 4 passes: in process {_fmt_s(c_in)}; 2 gloo ranks on ONE GPU "
                     f"{_fmt_s(c_g2)} = {_fmt_r(d['gloo2_one_gpu_vs_inproc'])} x (code path; no speed-up possible)")

    # (2) forwards
    s1 = P.get("stage1", {})
    s2 = P.get("stage2", {})
    f = {k: (s1.get(k) or {}).get("median_s") for k in ("cond", "negative", "perturbed", "isolated")}
    b2 = (s1.get("cond+negative batched") or {}).get("median_s")
    b4 = (s1.get("4 batched (cond,neg,cond,neg)") or {}).get("median_s")
    if f["cond"]:
        lines.append("(2) one model evaluation, stage 1:")
        for k, v in f.items():
            lines.append(f"    {k:10s} alone: {_fmt_s(v)} ({_fmt_r(ratio(v, f['cond']))} x cond)")
        lines.append(f"    2 batched: {_fmt_s(b2)} ({_fmt_r(ratio(b2, f['cond']))} x); "
                     f"4 batched: {_fmt_s(b4)} ({_fmt_r(ratio(b4, f['cond']))} x)  "
                     f"batch sizes {(s1.get('4 batched (cond,neg,cond,neg)') or {}).get('model_calls_batch_sizes')}")
        pred = predict_speedups(f, b2, b.results)
        d["predicted"] = pred
        for k, v in pred.items():
            if isinstance(v, dict):
                lines.append(f"    ideal {k}: {v['serial_s'] * 1000:.0f} ms -> {v['parallel_s'] * 1000:.0f} ms "
                             f"per step "
                             f"= {v['speedup']:.2f}x  (plan {v.get('plan', '')})")
    c2 = (s2.get("cond") or {}).get("median_s")
    c2b = (s2.get("cond+negative batched") or {}).get("median_s")
    if c2:
        lines.append(f"    stage 2 (1536x1024): cond {_fmt_s(c2)}; cond+negative batched {_fmt_s(c2b)} "
                     f"({_fmt_r(ratio(c2b, c2))} x)")

    # (3) exchange + combine per step
    lines.append("(3) exchange + combine per step (rank 0, median):")
    for name in ("B_group1_ltx4_second", "B_group1_cfg2", "C_gloo2_ltx4"):
        r = R.get(name)
        if not r:
            continue
        p0 = r["per_rank"][0]
        ex, co, st = r.get("median_exchange_comm_s"), p0.get("combine_s_per_eval"), p0.get("median_rank_step_s")
        share = ratio((ex or 0) + (co or 0), st)
        d[f"exchange_combine_share_{name}"] = share
        lines.append(f"    {name}: all-gather {_fmt_s(ex)} + checks/combine {_fmt_s(co)} of a {_fmt_s(st)} step = "
                     f"{share * 100:.2f}%  [target <= 1%]  ({p0.get('exchange_mode')}; waiting for the slower "
                     f"rank {_fmt_s(r.get('median_imbalance_wait_s'))})" if share is not None else f"    {name}: n/a")
    cc = (s1.get("checks_and_combine") or {}).get("median_s")
    if cc:
        lines.append(f"    in process: checks + LTX-2 combine {_fmt_s(cc)}; copy of one prediction "
                     f"{_fmt_s((s1.get('copy_one_prediction') or {}).get('median_s'))}")

    # (4) persistence
    lines.append("(4) queue -> first step starts (first step done minus one median step):")
    for name in ("A_core_cfg_first", "A_core_cfg", "B_group1_ltx4_first", "B_group1_ltx4_second",
                 "B_group1_cfg2", "C_gloo2_ltx4_first", "C_gloo2_ltx4"):
        r = R.get(name)
        if r:
            extra = ""
            if "per_rank" in r:
                extra = (f"  [group start {_fmt_s(r.get('group_start_s'))}, base weights shipped "
                         f"{r.get('base_weights_shipped')}, "
                         f"job running on rank 0 after {_fmt_s(r['per_rank'][0].get('job_start_after_queue_s'))}, "
                         f"rank clock {_fmt_s(r.get('queue_to_first_step_rank_s'))}]")
            lines.append(f"    {name}: {_fmt_s(r.get('queue_to_first_step_s'))}{extra}")
    d["second_prompt_queue_to_first_step_s"] = (R.get("B_group1_ltx4_second") or {}).get("queue_to_first_step_s")

    # (5) memory
    lines.append("(5) memory:")
    M = b.results["memory"]
    for label, g in (M.get("parent_gpu") or {}).items():
        lines.append(f"    parent GPU {label}: peak allocated {_gb(g['max_allocated'])}, "
                     f"device used {_gb(g['device_used'])}")
    for name in ("B_group1_ltx4_second", "C_gloo2_ltx4"):
        r = R.get(name)
        if r:
            for p in r["per_rank"]:
                hm = p.get("host_memory") or {}
                lines.append(f"    {name} rank {p['rank']}: peak GPU allocated {_gb(p.get('peak_gpu_bytes'))} "
                             f"(reserved {_gb(p.get('max_reserved'))}); host RSS {_gb(hm.get('rss'))}, "
                             f"USS {_gb(hm.get('uss'))}")
            pm = r.get("parent_memory") or {}
            lines.append(f"    {name} parent: host RSS {_gb(pm.get('rss'))}, USS {_gb(pm.get('uss'))}, "
                         f"PSS {_gb(pm.get('pss'))}")
    for phase, pk in (b.mon.peaks if b.mon else {}).items():
        if "sum_pss" in pk or "system_used" in pk:
            lines.append(f"    phase {phase}: peak system used {_gb(pk.get('system_used'))}, "
                         f"shmem {_gb(pk.get('system_shmem'))}, "
                         f"sum of PSS {_gb(pk.get('sum_pss'))}, GPU used {_gb(pk.get('gpu_used'))}")
    for name in ("D_group1_ltx4_first_no_unload", "D_group1_ltx4_second_no_unload"):
        r = R.get(name)
        if r and "per_rank" in r:
            p0 = r["per_rank"][0]
            lines.append(f"    {name}: rank 0 peak GPU allocated {_gb(p0.get('peak_gpu_bytes'))}, median step "
                         f"{_fmt_s(r.get('median_step_s'))}, "
                         f"queue->first step {_fmt_s(r.get('queue_to_first_step_s'))}")
    if M.get("D_parent_after_capture"):
        lines.append(f"    parent after capture() (no explicit cache release): {M['D_parent_after_capture']}")
    lines.append(f"bit-exact: {b.results.get('exact')}")
    return lines


def predict_speedups(f: dict, b2, results) -> dict:
    """Ideal step times on 1/2/4 GPUs from single-forward times (no exchange; cost-balanced plan)."""
    from cfg_runtime.parallel.plan import make_plan
    from cfg_runtime.guidance.policy import CFGBranch

    out = {}
    kinds = [k for k in ("cond", "negative", "perturbed", "isolated") if f.get(k)]
    cost = {k: f[k] for k in kinds}

    def plan_time(names, world):
        branches = [CFGBranch(n, cost=cost[n] / cost["cond"]) for n in names]
        plan = make_plan(branches, world, "cost_balanced")
        loads = [sum(cost[n] for n in a) for a in plan.assignment]
        return max(loads), plan.describe()

    if {"cond", "negative"} <= set(kinds):
        serial = cost["cond"] + cost["negative"]
        par, desc = plan_time(["cond", "negative"], 2)
        out["CFG 2 branches on 2 GPUs"] = {"serial_s": serial, "parallel_s": par, "speedup": serial / par, "plan": desc}
        if b2:
            out["CFG 2 branches on 2 GPUs vs core batched"] = {"serial_s": b2, "parallel_s": par, "speedup": b2 / par,
                                                               "plan": desc}
    if len(kinds) == 4:
        serial = sum(cost.values())
        for world in (2, 3, 4):
            par, desc = plan_time(kinds, world)
            out[f"LTX-2 4 passes on {world} GPUs"] = {"serial_s": serial, "parallel_s": par, "speedup": serial / par,
                                                     "plan": desc}
    return out


def _fmt_r(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _gb(v) -> str:
    return "-" if not v else f"{v / 2**30:.2f} GiB"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny widths (CPU development); keeps --blocks blocks")
    ap.add_argument("--device", default="", help="cuda:0 (default when CUDA is present) or cpu")
    ap.add_argument("--blocks", type=int, default=FULL_BLOCKS, help="transformer blocks of the main model (48 = LTX-2)")
    ap.add_argument("--gloo-blocks", type=int, default=12,
                    help="blocks of the model for 2 gloo ranks on ONE GPU (two replicas must fit)")
    ap.add_argument("--steps", type=int, default=8, help="sampling steps per run")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per stage-1 forward")
    ap.add_argument("--reps2", type=int, default=3, help="timed repetitions per stage-2 forward")
    ap.add_argument("--parts", default="A,probe,B,A2,C",
                    help="phases to run (A,probe,B,A2,C; D = a group run right after an in-process run, "
                         "no explicit unload)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="skip optional phases past this many seconds")
    ap.add_argument("--reserve-s", type=float, default=60.0, help="time kept for the phases' clean-up")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "test-artifacts" / "bench"))
    ap.add_argument("--comfy", default=os.environ.get("COMFYUI_DIR") or "", help="ComfyUI 0.29+ folder")
    ap.add_argument("--no-raise-nofile", dest="raise_nofile", action="store_false",
                    help="keep this process's open-file limit (shipping LTX-2 needs ~2 fds per tensor)")
    args = ap.parse_args(argv)
    if not args.device:
        args.device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if not args.comfy:
        for cand in (REPO / ".device" / "comfy029", Path("/tmp/comfy029"), REPO / ".cache" / "comfyui"):
            if (cand / "comfy" / "ldm" / "lightricks" / "av_model.py").is_file():
                args.comfy = str(cand)
                break
    if not args.comfy or not (Path(args.comfy) / "comfy" / "ldm" / "lightricks" / "av_model.py").is_file():
        ap.error("no ComfyUI with LTX-2 found: pass --comfy DIR (ComfyUI 0.29 or newer)")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    comfy_dir = str(Path(args.comfy).resolve())
    # ComfyUI's top-level modules (nodes.py, utils/) must win over this repo's nodes/ package;
    # the spawned ranks inherit this order.
    if comfy_dir in sys.path:
        sys.path.remove(comfy_dir)
    sys.path.insert(0, comfy_dir)
    os.environ["PYTHONPATH"] = os.pathsep.join([comfy_dir, str(REPO)] + (
        [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    b = Bench(args)
    b.setup()
    try:
        run_all(b)
    finally:
        from cfg_runtime.group import shutdown_group

        shutdown_group()
        lines = derive(b)
        b.results["summary"] = lines
        if b.mon is not None:
            b.mon.stop()
        b.save()
        meta = b.results["meta"]
        print("\n==== LTX-2 GPU benchmark summary ====")
        print(f"{meta.get('gpu', {}).get('name', b.device)} | {meta.get('nvidia_smi', '')} | torch {meta['torch']} | "
              f"ComfyUI {meta.get('comfy_version')} | {meta['date_utc']} UTC | model "
              f"{(b.results.get('model') or {}).get('blocks')} blocks, "
              f"{((b.results.get('model') or {}).get('params') or 0) / 1e9:.2f}B params | {b.elapsed():.0f}s")
        for line in lines:
            print(line)
        print(f"raw results: {b.out_dir / 'ltx2_bench.json'}")


if __name__ == "__main__":
    # Run as the module bench.bench_ltx2_gpu, so the ranks can unpickle the job class by name.
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import importlib

    importlib.import_module(MODULE).main()
