"""Ctrl-C that ends a run as an interrupt wherever it lands.

Python raises KeyboardInterrupt at whatever bytecode runs when SIGINT arrives. When that is inside a
callback a library invoked (pydantic's serializers, a datasets map, a tokenizer hook), the library
may turn it into its own error, with or without the KeyboardInterrupt as its cause: measured here,
pydantic-core reported a SIGINT in a model serializer as ``PydanticSerializationError`` once with and
once without ``__cause__``. So the handler also records that the user asked to stop, and the places
that turn errors into exit codes ask :func:`requested` instead of trusting the exception's type.
"""
from __future__ import annotations

import signal
from typing import Any

_REQUESTED = False


def _on_sigint(signum: int, frame: Any) -> None:
    global _REQUESTED
    _REQUESTED = True
    raise KeyboardInterrupt


def install() -> Any:
    """Record SIGINT before raising KeyboardInterrupt (the default behaviour otherwise); returns what
    :func:`restore` puts back. Left alone when SIGINT is ignored (a background job of a non-interactive
    shell) or handled by someone else."""
    global _REQUESTED
    _REQUESTED = False
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    return previous


def restore(previous: Any) -> None:
    if previous is signal.default_int_handler and signal.getsignal(signal.SIGINT) is _on_sigint:
        signal.signal(signal.SIGINT, previous)


def requested(exc: BaseException | None = None) -> bool:
    """Whether Ctrl-C was pressed in this process, or ``exc`` was caused by a KeyboardInterrupt."""
    if _REQUESTED:
        return True
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
