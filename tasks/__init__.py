"""Tasks on one contract (:mod:`tasks.base`), and their table.

``tasks.get(name, data_dir=..., source=..., judge=..., **options)`` builds a task;
``tasks.available()`` lists the names; ``tasks.task_class(name)`` gives the class (its class
attributes describe sources, metrics and sampling without loading any data).
Built-in tasks live one per module in this package and are imported lazily, so a module that
fails to import (a missing optional dependency) names itself and does not break the others.
Outside packages add tasks through the ``pobench.tasks`` entry-point group (value ``module:Class``).
"""
from __future__ import annotations

from typing import Any

from bench.registry import Registry
from tasks.base import (DataError, DataSource, Metric, PairLogps, PreferencePair, Prompt, Sample, Sampling,
                        Scores, SFTExample, SourceUsed, Task, TaskError, pairs_from_scores, shared_data_dir)

__all__ = ["Task", "TaskError", "DataError", "DataSource", "SourceUsed", "Metric", "Sampling", "Prompt",
           "Sample", "SFTExample", "PreferencePair", "PairLogps", "Scores", "pairs_from_scores",
           "shared_data_dir", "get", "available", "task_class", "register", "TASK_TABLE", "REGISTRY",
           "ENTRY_POINT_GROUP"]

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


def _plugins() -> dict[str, str]:
    """Entry-point tasks (a module-level hook: tests replace it with monkeypatch)."""
    return REGISTRY.entry_point_targets()


#: the task registry (:class:`bench.registry.Registry`); the functions below are its methods
REGISTRY: Registry[Task] = Registry("task", ENTRY_POINT_GROUP, base=Task, base_label="tasks.Task", error=TaskError,
                                   builtins=TASK_TABLE, plugins=lambda: _plugins())
_registered = REGISTRY.registered

#: register a Task subclass under ``cls.name`` (usable as a decorator in notebooks and tests)
register = REGISTRY.register
#: every task name: built-ins in table order, then plugins and registered ones
available = REGISTRY.available
#: the Task subclass of a name (imports its module on first use; class attributes need no data)
task_class = REGISTRY.get_class


def get(name: str, **kwargs: Any) -> Task:
    """Build task ``name`` (kwargs: data_dir, source, judge and the task's own options)."""
    return REGISTRY.build(name, **kwargs)
