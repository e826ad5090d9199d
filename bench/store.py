"""A content-addressed work directory where every stage output appears atomically.

Layout: ``<work_dir>/<stage>/<key>/`` where ``key`` is the hash of the stage's inputs (upstream keys
and the config that matters to it). A stage works in ``<key>.partial/`` (a fixed name, so a trainer
can resume its own checkpoints there after a ``kill -9``), writes ``record.json`` last, and the
directory is then renamed to ``<key>/`` with ``os.replace``: a finished output either exists whole
or not at all, and a re-run skips it. A per-key lock file serialises two processes (or Ray workers)
that reach the same shared stage.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

RECORD = "record.json"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory + ``os.replace``: a reader
    sees the old file or the whole new one, never a part. The one atomic file write of the project."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> Path:
    """One JSON value per line (UTF-8, non-ASCII kept, unknown types as ``str``), written atomically."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))
    return Path(path)


@dataclass(frozen=True)
class StageOutput:
    """A finished stage output: its directory and the record written when it finished."""

    stage: str
    key: str
    path: Path

    @property
    def record(self) -> dict[str, Any]:
        return json.loads((self.path / RECORD).read_text())


class Store:
    """The work directory. ``run(stage, key, fn)`` returns the finished output, computing it at most once."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def partial_path(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{key}.partial"

    def is_done(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / RECORD).is_file()

    def get(self, stage: str, key: str) -> StageOutput | None:
        return StageOutput(stage, key, self.path(stage, key)) if self.is_done(stage, key) else None

    @contextlib.contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        lock_path = self.root / stage / f"{key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def run(self, stage: str, key: str, fn: Callable[[Path], dict[str, Any] | None],
            inputs: dict[str, Any] | None = None) -> tuple[StageOutput, bool]:
        """Return (output, computed). ``fn(partial_dir)`` fills the directory and returns record fields.

        The partial directory is kept across interruptions so ``fn`` may resume from what it finds.
        """
        done = self.get(stage, key)
        if done is not None:
            return done, False
        with self.lock(stage, key):
            done = self.get(stage, key)  # another worker may have finished it while we waited
            if done is not None:
                return done, False
            partial = self.partial_path(stage, key)
            partial.mkdir(parents=True, exist_ok=True)
            # a stale record from an interrupted rename would make the partial look finished
            with contextlib.suppress(FileNotFoundError):
                (partial / RECORD).unlink()
            started = time.time()
            fields = fn(partial) or {}
            record = {"stage": stage, "key": key, "inputs": inputs or {},
                      "seconds": round(time.time() - started, 3), "finished_at": time.time(), **fields}
            atomic_write_json(partial / RECORD, record)
            final = self.path(stage, key)
            if final.exists():  # a directory without record.json: leftover of a crash, never a result
                shutil.rmtree(final)
            os.replace(partial, final)
            return StageOutput(stage, key, final), True

    def status(self, stage: str, key: str) -> str:
        """'done', 'partial' (interrupted, will resume) or 'todo'."""
        if self.is_done(stage, key):
            return "done"
        if self.partial_path(stage, key).exists():
            return "partial"
        return "todo"
