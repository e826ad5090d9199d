"""Preference-optimization methods on one contract, and their registry.

``methods.get(name, **hparams)`` builds a method; ``methods.available()`` lists the names.
Built-in methods live one per module in this package; third-party packages add methods through
the ``pobench.methods`` entry-point group (the entry point names a :class:`Method` subclass).

Importing this package does not import torch: the contract (:mod:`methods.base`) and the token math
are imported when first used (PEP 562), so listing the names (``available()``, e.g. to build the
command line) costs nothing; building or looking up a method class imports torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bench.registry import Registry

if TYPE_CHECKING:
    from methods.base import (OPTIONAL_FIELDS, Hyperparameter, LossOutput, Method, MethodError, NonFiniteLoss,
                              PairBatch, check_batch)
    from methods.token_math import TokenStats, token_stats

#: the names this package re-exports -> the module defining them (imported on first use)
_LAZY = {**dict.fromkeys(("OPTIONAL_FIELDS", "Hyperparameter", "LossOutput", "Method", "MethodError", "NonFiniteLoss",
                          "PairBatch", "check_batch"), "methods.base"),
         **dict.fromkeys(("TokenStats", "token_stats"), "methods.token_math")}

__all__ = ["PairBatch", "LossOutput", "Method", "MethodError", "NonFiniteLoss", "Hyperparameter", "OPTIONAL_FIELDS",
           "TokenStats", "token_stats", "check_batch", "get", "available", "method_class", "register", "REGISTRY",
           "ENTRY_POINT_GROUP"]

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
#: the method registry (:class:`bench.registry.Registry`); the functions below are its methods
REGISTRY: Registry[Method] = Registry("method", ENTRY_POINT_GROUP, base="methods.base:Method",
                                     base_label="methods.Method", error="methods.base:MethodError",
                                     builtins=_BUILTIN)
_registered = REGISTRY.registered

#: register a Method subclass under ``cls.name`` (usable as a decorator in notebooks and tests)
register = REGISTRY.register
#: every method name: built-ins first (in their canonical order), then plugins and registered ones
available = REGISTRY.available
#: the Method subclass of a name (imports its module on first use)
method_class = REGISTRY.get_class


def get(name: str, **hparams) -> Method:
    """Build method ``name`` with hyperparameters (unknown ones raise MethodError naming them)."""
    return REGISTRY.build(name, **hparams)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
