"""What both :mod:`tasks.base` and :mod:`tasks.judges` need: the task errors and the offline switch.

A leaf module (standard library only): ``tasks.judges`` imports it instead of ``tasks.base``, so
judges and tasks do not import each other. ``tasks.base`` re-exports everything here.
"""
from __future__ import annotations

import os

__all__ = ["TaskError", "DataError", "is_offline", "go_offline", "go_offline_if_unreachable"]


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


#: the environment switches that make the Hugging Face libraries work offline
OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def go_offline() -> None:
    """Set every offline switch, in the environment (read by processes started from here and by the
    libraries when first imported) and in the Hugging Face modules already imported."""
    import sys

    for var in OFFLINE_SWITCHES:
        os.environ[var] = "1"
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True
        datasets_config.HF_DATASETS_OFFLINE = True


def go_offline_if_unreachable(timeout: float = 2.0) -> str | None:
    """When no offline switch is set, check that the hub's host (``$HF_ENDPOINT``, default
    huggingface.co) accepts a connection within ``timeout`` seconds; if it does not, go offline
    (:func:`go_offline`) and return a note saying so. Without it the hub client retries each file 5
    times with backoff (about 50 s) and then fails. Skipped (None) when offline already or when a
    proxy is configured (the direct connection would say nothing about the proxy's)."""
    import socket
    from urllib.parse import urlparse

    if is_offline() or any(os.environ.get(var) for var in _PROXY_VARS):
        return None
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        go_offline()
        reason = exc.strerror or str(exc) or type(exc).__name__
        return (f"the Hugging Face hub ({host}:{port}) is not reachable ({reason}): working offline, as with "
                f"HF_HUB_OFFLINE=1 (local and cached models and data only). Set HF_HUB_OFFLINE=1 yourself to "
                f"skip this check")
