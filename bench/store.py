"""A content-addressed work directory where every stage output appears atomically and is checked when read.

Layout: ``<work_dir>/<stage>/<key>/`` where ``key`` is the hash of the stage's inputs (upstream keys
and the config that matters to it). A stage works in ``<key>.partial/`` (a fixed name, so a trainer
can resume its own checkpoints there after a ``kill -9``), writes ``record.json`` last, and the
directory is then renamed to ``<key>/`` with ``os.replace``: a finished output either exists whole
or not at all, and a re-run skips it. A per-key lock file serialises two processes (or Ray workers)
that reach the same shared stage; one that has to wait says for whom.

Checksums: ``record.json`` lists the size and sha256 of every file of the entry, and of the
directories the stage owns outside it (a trainer's ``<work_dir>/trainer/<stage>-<key>/``: the
weights a train record points at), plus a sha256 of the record itself. A finished entry is checked
before it is used: sizes always, contents in full when the entry is small or when a stage is about
to read it (see :data:`FULL_HASH_BYTES`). A damaged entry (a file missing, truncated or changed, an
unreadable record) is never read: it is renamed to ``<key>.corrupt-<time>`` (its owned directories
likewise), a :class:`CorruptEntryWarning` says so, and the run computes it again. Entries written
before checksums existed are accepted as they are.

A full disk while a stage writes raises :class:`StoreError` naming the work dir; the stage's partial
directory stays unfinished (no ``record.json``), so no later run takes it for a result.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

RECORD = "record.json"
#: the field of record.json that holds the entry's checksums
CHECKSUMS = "checksums"
#: Entries whose files add up to at most this many bytes are hashed in full whenever a run finds them
#: finished; bigger ones (train/sft: the trainer's weights, ~1 GB per run of the default suite) get
#: a size check there and are hashed in full once per process, when a stage is about to read them
#: (:meth:`Store.get`) - or never, when the process hashed them itself on finishing them.
#: Measured on the 2-core machine of results/default, on a work dir of the default suite (40 entries,
#: 8 trainings holding 8.1 GB, 3.6 MB for everything else): the check a cached re-run makes of all 40
#: entries takes 0.03 s; hashing two trainings in full took 6.7 s (~300 MB/s from disk), so hashing
#: them all on every cached re-run would add ~27 s to a re-run that otherwise takes ~3 s.
FULL_HASH_BYTES = 64 << 20
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class StoreError(RuntimeError):
    """A work-directory problem a person has to fix (a full disk); the message names the directory and what to do."""


class DiskFullError(StoreError):
    """No space left (ENOSPC/EDQUOT) while writing ``filename``; the cause is the OSError."""

    def __init__(self, path: str | os.PathLike[str], cause: OSError) -> None:
        self.filename, self.errno = str(path), cause.errno
        super().__init__(f"disk full: no space left on the device writing {path} ({os.strerror(cause.errno)}); "
                         "free space there and run again")


class CorruptEntryWarning(UserWarning):
    """A finished work-dir entry failed its checksums and was moved aside to be computed again."""


def disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a full disk or an exceeded quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "errno", None) in _DISK_FULL:  # an OSError, or the DiskFullError of an atomic write
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory + ``os.replace``: a reader
    sees the old file or the whole new one, never a part. The one atomic file write of the project.
    A full disk raises :class:`DiskFullError` naming ``path`` (the temp file is removed)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise DiskFullError(path, exc) from exc
        raise
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            raise DiskFullError(path, exc) from exc
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


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_checksums(root: Path) -> dict[str, list[Any]]:
    """``{path relative to root: [size, sha256]}`` of every regular file under ``root`` (links not followed)."""
    out: dict[str, list[Any]] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            if rel == RECORD:  # the record holds the checksums: it has its own (record_digest)
                continue
            out[rel] = [path.stat().st_size, file_sha256(path)]
    return out


def record_digest(record: dict[str, Any]) -> str:
    """sha256 of a record (its JSON form, keys sorted) without the digest itself: a changed byte of
    record.json that still parses (a metric, a path) is caught like a changed data file."""
    body = {k: v for k, v in record.items() if k != CHECKSUMS}
    sums = {k: v for k, v in (record.get(CHECKSUMS) or {}).items() if k != "record"}
    text = json.dumps({"record": body, "checksums": sums}, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class StageOutput:
    """A finished stage output: its directory and the record written when it finished."""

    stage: str
    key: str
    path: Path

    @property
    def record(self) -> dict[str, Any]:
        return json.loads((self.path / RECORD).read_text())


def locked_file(path: str | os.PathLike[str], wait: bool = True):
    """``path`` opened for appending under an exclusive flock, or None when another process holds it and
    ``wait`` is False. Closing the file (``with`` it) releases the lock. For work outside the store that
    processes side by side would otherwise do twice (a model conversion, a reference pass)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        return None
    return handle


#: lock files this process holds (a path may be locked again by the same process: flock on a second
#: open file would wait for the first forever)
_HELD: dict[str, int] = {}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Store:
    """The work directory. ``run(stage, key, fn)`` returns the finished output, computing it at most once."""

    def __init__(self, root: str | os.PathLike[str], notify: Callable[[str], None] | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.notify = notify or _say
        #: (stage, key) -> (inode, mtime_ns) of the record.json whose files this process hashed in full
        self._hashed: dict[tuple[str, str], tuple[int, int]] = {}

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def partial_path(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{key}.partial"

    # -- checking finished entries ----------------------------------------------------------------
    def problem(self, stage: str, key: str, full: bool = True) -> str | None:
        """Why the finished entry ``stage/key`` must not be used (None: it is sound, or absent).

        Sizes are always checked; contents (sha256) when ``full``, or when the entry is at most
        :data:`FULL_HASH_BYTES`, unless this process hashed the same record already."""
        record_path = self.path(stage, key) / RECORD
        try:
            stat = record_path.stat()
            record = json.loads(record_path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"{RECORD} is unreadable ({exc})"
        if not isinstance(record, dict):
            return f"{RECORD} is not a JSON object"
        sums = record.get(CHECKSUMS)
        if sums is None:
            return None  # finished before the store kept checksums: accepted as it is
        if not isinstance(sums, dict) or sums.get("record") != record_digest(record):
            return f"{RECORD} does not match its own checksum"
        listed = list(self._listed(stage, key, sums))
        for path, label, size, _ in listed:
            try:
                actual = path.stat().st_size
            except FileNotFoundError:
                return f"{label} is missing"
            except OSError as exc:
                return f"{label} is unreadable ({exc})"
            if actual != size:
                return f"{label} has {actual} bytes, {size} when the stage finished (truncated or rewritten)"
        ident = (stat.st_ino, stat.st_mtime_ns)
        if self._hashed.get((stage, key)) == ident:
            return None
        if not full and sum(size for _, _, size, _ in listed) > FULL_HASH_BYTES:
            return None
        for path, label, _, digest in listed:
            try:
                if file_sha256(path) != digest:
                    return f"{label} changed since the stage finished (sha256 differs)"
            except OSError as exc:
                return f"{label} is unreadable ({exc})"
        self._hashed[(stage, key)] = ident
        return None

    def _listed(self, stage: str, key: str, sums: dict[str, Any]) -> Iterator[tuple[Path, str, int, str]]:
        """(path, label, size, sha256) of every file the checksums list."""
        entry = self.path(stage, key)
        for rel, (size, digest) in (sums.get("files") or {}).items():
            yield entry / rel, f"{stage}/{key}/{rel}", size, digest
        for owned, files in (sums.get("owned") or {}).items():
            for rel, (size, digest) in files.items():
                yield self.root / owned / rel, f"{owned}/{rel}", size, digest

    def _owned_of(self, stage: str, key: str) -> list[str]:
        try:
            record = json.loads((self.path(stage, key) / RECORD).read_text())
            return sorted((record.get(CHECKSUMS) or {}).get("owned") or {})
        except (OSError, ValueError, AttributeError):
            return []

    def quarantine(self, stage: str, key: str) -> Path | None:
        """Move a damaged entry (and the directories it owns) aside as ``<name>.corrupt-<time>`` with a
        warning: kept for inspection, never read. Checked again (in full) under the key's lock first:
        another process may have replaced it meanwhile. Returns where the entry went (None: it is sound
        or gone)."""
        with self.lock(stage, key):
            problem = self.problem(stage, key, full=True)
            if problem is None:
                return None
            stamp = time.strftime("%Y%m%dT%H%M%S")
            moved = []
            for rel in [f"{stage}/{key}", *self._owned_of(stage, key)]:
                source = self.root / rel
                if not source.exists():
                    continue
                target = source.with_name(f"{source.name}.corrupt-{stamp}")
                n = 1
                while target.exists():
                    n += 1
                    target = source.with_name(f"{source.name}.corrupt-{stamp}-{n}")
                os.replace(source, target)
                moved.append(target)
            self._hashed.pop((stage, key), None)
            where = ", ".join(str(m.relative_to(self.root)) if m.is_relative_to(self.root) else str(m) for m in moved)
            warnings.warn(f"work dir {self.root}: the finished {stage} entry {key} is damaged ({problem}); "
                          f"moved aside to {where}; it will be computed again", CorruptEntryWarning, stacklevel=3)
            return moved[0] if moved else None

    def is_done(self, stage: str, key: str) -> bool:
        """Finished and sound by the cheap check (sizes; contents when small). No side effects."""
        return (self.path(stage, key) / RECORD).is_file() and self.problem(stage, key, full=False) is None

    def get(self, stage: str, key: str, full: bool = True) -> StageOutput | None:
        """The finished output, checked before anyone reads it (``full``: every file hashed, once per
        process; ``full=False`` when only its record is read). A damaged entry is moved aside
        (:meth:`quarantine`) and None is returned: the caller computes it again."""
        if not (self.path(stage, key) / RECORD).is_file():
            return None
        if self.problem(stage, key, full=full) is not None and self.quarantine(stage, key) is not None:
            return None
        if not (self.path(stage, key) / RECORD).is_file():  # moved aside by another process meanwhile
            return None
        return StageOutput(stage, key, self.path(stage, key))

    # -- computing -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, stage: str, key: str, label: str = "") -> Iterator[None]:
        """Hold ``<stage>/<key>.lock`` (flock; re-entrant within a process). A process that has to wait
        says which process holds it."""
        lock_path = self.root / stage / f"{key}.lock"
        name = str(lock_path)
        if _HELD.get(name):
            _HELD[name] += 1
            try:
                yield
            finally:
                _HELD[name] -= 1
            return
        handle = locked_file(lock_path, wait=False)
        if handle is None:
            holder = ""
            with contextlib.suppress(OSError):
                holder = lock_path.read_text().strip()
            self.notify(f"[pobench] waiting: {holder or 'another process'} is computing {stage} {label or key} in "
                        f"the same work dir {self.root}; this run continues when it is done")
            handle = locked_file(lock_path, wait=True)
        with handle:
            with contextlib.suppress(OSError):  # who holds it, for a process that has to wait
                handle.truncate(0)
                handle.write(f"pobench pid {os.getpid()} on {socket.gethostname()}\n")
                handle.flush()
            _HELD[name] = 1
            try:
                yield
            finally:
                _HELD.pop(name, None)  # closing the file releases the lock

    def run(self, stage: str, key: str, fn: Callable[[Path], dict[str, Any] | None],
            inputs: dict[str, Any] | None = None, owned: Iterable[str | os.PathLike[str]] = (),
            label: str = "") -> tuple[StageOutput, bool]:
        """Return (output, computed). ``fn(partial_dir)`` fills the directory and returns record fields.

        The partial directory is kept across interruptions so ``fn`` may resume from what it finds.
        ``owned``: directories outside the entry that the stage writes and its record points at (a
        trainer's run directory); their files are checksummed with the entry and moved aside with it.
        """
        done = self.get(stage, key, full=False)
        if done is not None:
            return done, False
        with self.lock(stage, key, label):
            done = self.get(stage, key, full=False)  # another worker may have finished it while we waited
            if done is not None:
                return done, False
            partial = self.partial_path(stage, key)
            try:
                partial.mkdir(parents=True, exist_ok=True)
                # a stale record from an interrupted rename would make the partial look finished
                with contextlib.suppress(FileNotFoundError):
                    (partial / RECORD).unlink()
                started = time.time()
                fields = fn(partial) or {}
                record = {"stage": stage, "key": key, "inputs": inputs or {},
                          "seconds": round(time.time() - started, 3), "finished_at": time.time(), **fields}
                record = json.loads(json.dumps(record, default=str))  # as it will read back
                owned_dirs = [Path(d).resolve() for d in owned if Path(d).is_dir()]
                record[CHECKSUMS] = {
                    "algorithm": "sha256", "files": tree_checksums(partial),
                    "owned": {d.relative_to(self.root).as_posix() if d.is_relative_to(self.root) else str(d):
                              tree_checksums(d) for d in owned_dirs}}
                record[CHECKSUMS]["record"] = record_digest(record)
                atomic_write_json(partial / RECORD, record)
                final = self.path(stage, key)
                if final.exists():  # a directory without record.json: leftover of a crash, never a result
                    shutil.rmtree(final)
                os.replace(partial, final)
            except Exception as exc:
                if disk_full(exc):
                    where = getattr(exc, "filename", None)
                    raise StoreError(
                        f"disk full: no space left on the device of the work dir {self.root} while the {stage} "
                        f"stage {label or key} was writing{f' {where}' if where else ''}. Free space there (or "
                        f"pass --work-dir on another disk) and run again: finished stages are kept, this one "
                        f"starts again from {partial.name}") from exc
                raise
            stat = (final / RECORD).stat()
            self._hashed[(stage, key)] = (stat.st_ino, stat.st_mtime_ns)  # hashed just now
            return StageOutput(stage, key, final), True

    def status(self, stage: str, key: str) -> str:
        """'done', 'partial' (interrupted, will resume) or 'todo' (a damaged entry counts as todo)."""
        if self.is_done(stage, key):
            return "done"
        if self.partial_path(stage, key).exists():
            return "partial"
        return "todo"
