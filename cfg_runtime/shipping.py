"""Pickling for messages to the workers.

Tensors go through torch.multiprocessing's reductions (CPU storages move to shared
memory once; every rank maps the same pages). On top, instances of classes defined
inside a function without methods of their own (ComfyUI builds `model_sampling`
classes that way: `class ModelSampling(base, kind): pass`) travel as
(bases, name, state) and are rebuilt from their importable bases.
"""
from __future__ import annotations

import io
import pickle
from multiprocessing.reduction import ForkingPickler
from typing import Any

_PLAIN_CLASS_KEYS = {"__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__firstlineno__",
                     "__static_attributes__", "__orig_bases__"}
_rebuilt: dict = {}


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


class WorkerPickler(ForkingPickler):
    def reducer_override(self, obj):
        cls = type(obj)
        if isinstance(obj, type) or cls.__module__ == "builtins" or type(getattr(obj, "__dict__", None)) is not dict:
            return NotImplemented
        if _is_plain_local_class(cls):
            return _rebuild_local_instance, (cls.__bases__, cls.__name__, obj.__dict__)
        if _answers_any_attribute(cls):
            return _rebuild_instance, (cls, obj.__dict__)
        return NotImplemented


def dumps(obj: Any) -> bytes:
    """Serialise one message for one worker (shared-memory handles are single-use)."""
    buf = io.BytesIO()
    WorkerPickler(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def check_shippable(obj: Any) -> None:
    """Raise the pickling error, without touching tensors' storage (plain pickle of the structure)."""
    WorkerPickler(io.BytesIO(), pickle.HIGHEST_PROTOCOL).dump(obj)
