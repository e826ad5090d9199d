"""What both :mod:`tasks.base` and :mod:`tasks.judges` need: the task errors and the offline switch.

A leaf module (standard library only): ``tasks.judges`` imports it instead of ``tasks.base``, so
judges and tasks do not import each other. ``tasks.base`` re-exports everything here.
"""
from __future__ import annotations

import os

__all__ = ["TaskError", "DataError", "is_offline"]


class TaskError(ValueError):
    """Bad task configuration or unusable data; the message names the file/field and what to do."""


class DataError(TaskError):
    """A data row could not be used. Carries the file, the 1-based line (or record index) and why."""

    def __init__(self, path: str | os.PathLike, line: int | None, reason: str) -> None:
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


def is_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (the usual HF env switches)."""
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(var, "").lower() in truthy
               for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))
