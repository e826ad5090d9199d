"""Shared test setup: offline by default, the shared helpers importable from every area, shared fixtures.

Tests are laid out by area: methods/ (loss math and the method contract), train/ (the engine, prompt
format, model sources), harness/ (config, planner, stages, store, leaderboards, check, backends,
registries), tasks/ (tasks, judges, metrics) and sandbox/ (code execution). ``-m "not slow"``
(``tox -e fast``) is the inner loop; CI runs everything.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# no test may reach a model or dataset hub (set before transformers/datasets are imported)
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")
# tests/ and its area folders are packages (tests.methods, tests.fixtures, ...): pytest then puts the
# repository root, not tests/, on sys.path, so tests/methods and tests/tasks never shadow the real
# `methods` and `tasks` packages (they did under setuptools' editable finder in a fresh CI env)


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def tiny_dirs() -> tuple[str, str]:
    """Two saved tiny random Llamas (seeds 0 and 1) with the GPT-2 tokenizer: a policy and a reference."""
    from bench.models import tiny_model

    return tiny_model(0, save=True), tiny_model(1, save=True)
