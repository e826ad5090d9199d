"""Tasks on one contract (:mod:`tasks.base`), and their table.

``tasks.get(name, data_dir=..., source=..., judge=..., **options)`` builds a task;
``tasks.available()`` lists the names; ``tasks.task_class(name)`` gives the class (its class
attributes describe sources, metrics and sampling without loading any data).
Built-in tasks live one per module in this package and are imported lazily, so a module that
fails to import (a missing optional dependency) names itself and does not break the others.
Outside packages add tasks through the ``pobench.tasks`` entry-point group (value ``module:Class``).
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from tasks.base import (DataError, DataSource, Metric, PairLogps, PreferencePair, Prompt, Sample, Sampling,
                        Scores, SFTExample, SourceUsed, Task, TaskError, pairs_from_scores, shared_data_dir)

__all__ = ["Task", "TaskError", "DataError", "DataSource", "SourceUsed", "Metric", "Sampling", "Prompt",
           "Sample", "SFTExample", "PreferencePair", "PairLogps", "Scores", "pairs_from_scores",
           "shared_data_dir", "get", "available", "task_class", "register", "TASK_TABLE"]

ENTRY_POINT_GROUP = "pobench.tasks"

#: the built-in task table: name -> "module:Class" (imported on first use)
TASK_TABLE: dict[str, str] = {
    "imdb": "tasks.imdb:IMDB",
    "hh": "tasks.hh:HH",
    "tldr": "tasks.tldr:TLDR",
    "humaneval": "tasks.humaneval:HumanEval",
    "mbpp": "tasks.mbpp:MBPP",
    "reasoning": "tasks.reasoning:Reasoning",
}
_registered: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Register a Task subclass under ``cls.name`` (usable as a decorator in notebooks and tests)."""
    if not (isinstance(cls, type) and issubclass(cls, Task)) or not cls.name:
        raise TaskError(f"{cls!r} is not a Task subclass with a non-empty `name`")
    _registered[cls.name] = cls
    return cls


def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Every task name: built-ins in table order, then plugins and registered ones."""
    names = list(TASK_TABLE)
    for name in list(_plugins()) + list(_registered):
        if name not in names:
            names.append(name)
    return names


def _load(target: str, name: str) -> type[Task]:
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise TaskError(f"task {name!r} could not be loaded from {target!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TaskError(f"task {name!r}: {target!r} is not a tasks.Task subclass")
    return cls


def task_class(name: str) -> type[Task]:
    if name in _registered:
        return _registered[name]
    target = TASK_TABLE.get(name) or _plugins().get(name)
    if target is None:
        raise TaskError(f"unknown task {name!r}; available: {', '.join(available())}")
    return _load(target, name)


def get(name: str, **kwargs: Any) -> Task:
    """Build task ``name`` (kwargs: data_dir, source, judge and the task's own options)."""
    return task_class(name)(**kwargs)
