"""Preference-optimization methods on one contract, and their registry.

``methods.get(name, **hparams)`` builds a method; ``methods.available()`` lists the names.
Built-in methods live one per module in this package; third-party packages add methods through
the ``pobench.methods`` entry-point group (the entry point names a :class:`Method` subclass).
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from methods.base import (OPTIONAL_FIELDS, Hyperparameter, LossOutput, Method, MethodError, NonFiniteLoss,
                          PairBatch, check_batch)
from methods.token_math import TokenStats, token_stats

__all__ = ["PairBatch", "LossOutput", "Method", "MethodError", "NonFiniteLoss", "Hyperparameter", "OPTIONAL_FIELDS",
           "TokenStats", "token_stats", "check_batch", "get", "available", "method_class", "register"]

ENTRY_POINT_GROUP = "pobench.methods"

# name -> "module:Class" for the built-ins (imported lazily, so one broken module names itself)
_BUILTIN = {
    "dpo": "methods.dpo:DPO",
    "tdpo1": "methods.tdpo:TDPO1",
    "tdpo2": "methods.tdpo:TDPO2",
    "tis_dpo": "methods.tis_dpo:TISDPO",
    "bcr": "methods.bcr:BCR",
    "sparsepo_mapo": "methods.sparsepo_mapo:SparsePOMaPO",
    "sparsepo": "methods.sparsepo:SparsePO",
    "ipo": "methods.ipo:IPO",
    "simpo": "methods.simpo:SimPO",
    "cdpo": "methods.cdpo:CDPO",
    "dpop": "methods.dpop:DPOP",
}
_registered: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Register a Method subclass under ``cls.name`` (usable as a decorator in notebooks and tests)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)) or not cls.name:
        raise MethodError(f"{cls!r} is not a Method subclass with a non-empty `name`")
    _registered[cls.name] = cls
    return cls


def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Every method name: built-ins first (in their canonical order), then plugins and registered ones."""
    names = list(_BUILTIN)
    for name in list(_plugins()) + list(_registered):
        if name not in names:
            names.append(name)
    return names


def _load(target: str, name: str) -> type[Method]:
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise MethodError(f"method {name!r} could not be loaded from {target!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise MethodError(f"method {name!r}: {target!r} is not a methods.Method subclass")
    return cls


def method_class(name: str) -> type[Method]:
    if name in _registered:
        return _registered[name]
    target = _BUILTIN.get(name) or _plugins().get(name)
    if target is None:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(available())}")
    return _load(target, name)


def get(name: str, **hparams) -> Method:
    """Build method ``name`` with hyperparameters (unknown ones raise MethodError naming them)."""
    return method_class(name)(**hparams)
