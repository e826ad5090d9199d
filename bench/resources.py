"""Peak resident memory of one block of work (a stage), for stage records and ``pobench bench suite``.

``resource.getrusage(...).ru_maxrss`` is the peak of the whole process so far: after the first big
stage it says nothing about the next one. :class:`PeakRSS` samples the current resident set
(``/proc/self/statm``) from a daemon thread while the block runs and also reads ``ru_maxrss``
before and after, so a spike shorter than the sampling interval still shows whenever it raised the
process's lifetime peak.
"""
from __future__ import annotations

import functools
import os
import resource
import threading
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float | None:
    """The current resident set size of this process in MiB (None where /proc is unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE / 2**20
    except (OSError, ValueError, IndexError):
        return None


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, looked up once (None where glibc is not the allocator)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Give memory freed by the previous stage back to the system: collect cycles (models, caches), then
    glibc's ``malloc_trim(0)``, without which the allocator keeps the freed arenas and every later stage
    starts from the largest one before it (measured on the HH suite: stages started at 1.7-3.9 GB resident).
    Only the collection where glibc is not the allocator."""
    import gc

    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class PeakRSS:
    """``with PeakRSS() as peak: ...`` then ``peak.peak_mb`` (MiB) and ``peak.start_mb``."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.start_mb: float | None = None
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = rss_mb()
            if now is not None and (self.peak_mb is None or now > self.peak_mb):
                self.peak_mb = now

    def __enter__(self) -> "PeakRSS":
        self.start_mb = rss_mb()
        self.peak_mb = self.start_mb
        self._maxrss_before = _maxrss_mb()
        self._thread = threading.Thread(target=self._sample, name="pobench-peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        end = rss_mb()
        candidates = [v for v in (self.peak_mb, end) if v is not None]
        after = _maxrss_mb()
        if after > self._maxrss_before:  # the lifetime peak rose inside this block: that is its peak
            candidates.append(after)
        self.peak_mb = round(max(candidates), 1) if candidates else None
        self.start_mb = None if self.start_mb is None else round(self.start_mb, 1)

