"""Pickling for messages to the workers.

Tensors go through torch.multiprocessing's reductions (CPU storages move to shared
memory once; every rank maps the same pages). On top, instances of classes defined
inside a function without methods of their own (ComfyUI builds `model_sampling`
classes that way: `class ModelSampling(base, kind): pass`) travel as
(bases, name, state) and are rebuilt from their importable bases; classes and
functions of modules that ComfyUI loads from a file under a path-like name
(comfy_extras, custom nodes) travel as (name, file, qualname) and the worker loads
that file once the same way. Functions and classes that no name can reach (closures of
guidance nodes such as PerturbedAttentionGuidance or RescaleCFG, lambdas, classes defined
in a function) travel by value through cloudpickle, the pickler Ray and Dask use for the
same job; what they capture goes through the rules above.
"""
from __future__ import annotations

import abc
import copyreg
import hashlib
import importlib.util
import io
import os
import pickle
import sys
from collections import ChainMap
from multiprocessing.reduction import ForkingPickler
from typing import Any

import cloudpickle

_PLAIN_CLASS_KEYS = {"__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__firstlineno__",
                     "__static_attributes__", "__orig_bases__"}
_rebuilt: dict = {}
_BY_VALUE_METACLASSES = (type, abc.ABCMeta)  # classes cloudpickle may rebuild by value on a rank


def _rebuild_local_instance(bases: tuple, name: str, state: dict) -> Any:
    cls = _rebuilt.get((bases, name))
    if cls is None:
        cls = type(name, bases, {})
        _rebuilt[(bases, name)] = cls
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def _is_plain_local_class(cls: type) -> bool:
    return "<locals>" in cls.__qualname__ and set(vars(cls)) <= _PLAIN_CLASS_KEYS and all(
        "<locals>" not in b.__qualname__ for b in cls.__bases__)


def _rebuild_instance(cls: type, state: dict) -> Any:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def _answers_any_attribute(cls: type) -> bool:
    """A class whose __getattr__ may answer '__setstate__' with a non-callable (ComfyUI 0.29's
    model configs return None for any missing name), with default pickling otherwise."""
    return (hasattr(cls, "__getattr__") and not hasattr(cls, "__setstate__")
            and cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__)


def _file_module_source(obj: Any) -> tuple[str, str, str] | None:
    """(module name, file, qualname) for a class or function of a module that ComfyUI loaded
    from a file under a path-like name (comfy_extras and custom nodes: the name is the file's
    path, which `import` cannot find in another process)."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", "")
    if not isinstance(module, str) or os.sep not in module or "<locals>" in qualname:
        return None
    file = getattr(sys.modules.get(module), "__file__", None)
    return (module, file, qualname) if file else None


def _from_file_module(module: str, file: str, qualname: str) -> Any:
    """Worker side of _file_module_source: load the module from its file once, as ComfyUI does."""
    mod = sys.modules.get(module)
    if mod is None:
        spec = importlib.util.spec_from_file_location(module, file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[module] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(module, None)
            raise
    obj = mod
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _on_this_rank_gpu(tensor):
    """A tensor that was on a GPU in the ComfyUI process, on this rank's GPU (its CPU copy where
    the rank has none)."""
    import torch

    return tensor.to(torch.device("cuda", torch.cuda.current_device())) if torch.cuda.is_available() else tensor


def _is_cuda_tensor(obj) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor) and obj.device.type == "cuda"


class WorkerPickler(cloudpickle.Pickler):
    """cloudpickle's pickler (functions and classes by value where no name reaches them) with
    torch.multiprocessing's reductions (tensors in shared memory) and the rules above first."""

    dispatch_table = ChainMap(ForkingPickler._extra_reducers, cloudpickle.Pickler._dispatch_table,
                              copyreg.dispatch_table)

    def reducer_override(self, obj):
        if _is_cuda_tensor(obj):
            # GPU tensors (KSampler's sigmas, a prepared noise mask) travel through host memory:
            # CUDA IPC fails under ComfyUI's cudaMallocAsync allocator, and a rank may sit on
            # another GPU. The rank puts them back on its own GPU.
            return _on_this_rank_gpu, (obj.detach().to("cpu"),)
        if isinstance(obj, type) or callable(obj) and hasattr(obj, "__code__"):
            source = _file_module_source(obj)
            if source:
                return _from_file_module, source
            if isinstance(obj, type) and type(obj) not in _BY_VALUE_METACLASSES:
                return NotImplemented  # ctypes arrays and the like: by name, or refused here
            return super().reducer_override(obj)
        cls = type(obj)
        if cls.__module__ == "builtins" or type(getattr(obj, "__dict__", None)) is not dict:
            return super().reducer_override(obj)
        if _is_plain_local_class(cls):
            return _rebuild_local_instance, (cls.__bases__, cls.__name__, obj.__dict__)
        if _answers_any_attribute(cls):
            return _rebuild_instance, (cls, obj.__dict__)
        return super().reducer_override(obj)


def dumps(obj: Any) -> bytes:
    """Serialise one message for one worker (shared-memory handles are single-use)."""
    buf = io.BytesIO()
    WorkerPickler(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


class _ProbePickler(WorkerPickler):
    """WorkerPickler that writes a placeholder for every tensor and storage: the probe sees
    exactly what the real message would carry, without copying data or moving storages
    into shared memory."""

    def reducer_override(self, obj):
        import torch

        if isinstance(obj, (torch.Tensor, torch.UntypedStorage, torch.TypedStorage)):
            return _placeholder, ()
        return super().reducer_override(obj)


def _placeholder(*_: Any) -> None:
    return None


class _FingerprintPickler(WorkerPickler):
    """WorkerPickler that writes tensors as (dtype, shape, digest of their bytes)."""

    def reducer_override(self, obj):
        import torch

        if isinstance(obj, torch.Tensor):
            t = obj.detach()
            data = t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
            return _placeholder, (str(t.dtype), tuple(t.shape), hashlib.blake2b(data, digest_size=16).hexdigest())
        if isinstance(obj, (torch.UntypedStorage, torch.TypedStorage)):
            return _placeholder, ()
        return super().reducer_override(obj)


def fingerprint(obj: Any) -> str:
    """A digest of what sending `obj` would carry, tensor contents included."""
    buf = io.BytesIO()
    _FingerprintPickler(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
    return hashlib.blake2b(buf.getvalue(), digest_size=16).hexdigest()


def check_shippable(obj: Any) -> None:
    """Raise the error that sending `obj` to a worker would raise (tensors are not touched)."""
    _ProbePickler(io.BytesIO(), pickle.HIGHEST_PROTOCOL).dump(obj)


def shippable(obj: Any) -> bool:
    try:
        check_shippable(obj)
        return True
    except Exception:
        return False
