"""The one hasher: every cache key (stage nodes, trainer runs, TIS weights) is ``stable_hash`` of plain data.

A leaf module (stdlib only) so that the store, the trainer and the planner share it without import cycles.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import PurePath
from typing import Any


#: types returned as they are (checked first: most of what is hashed, e.g. a report's samples, is these)
_LEAVES = frozenset({str, int, float, bool, type(None)})


def plain(value: Any) -> Any:
    """Dataclasses, pydantic models, tuples and paths as JSON-able plain data (what is hashed and stored)."""
    if type(value) in _LEAVES:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return plain(dump(mode="python"))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    return value


def stable_hash(value: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of ``value`` (sorted keys), truncated to ``length`` hex digits."""
    blob = json.dumps(plain(value), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
