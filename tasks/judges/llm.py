"""Pairwise LLM judge over any OpenAI-compatible endpoint (``vllm serve``, llama.cpp, OpenAI); asks
both orders, disagreement counts as a tie. Spec: ``llm:<base_url>?model=<served model name>``."""
from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from tasks.errors import TaskError
from tasks.judges.base import TIE, Judge, _require


PAIRWISE_TEMPLATE_VERSION = "1"
PAIRWISE_SYSTEM = ("You are a careful evaluator. Compare two responses to the same conversation or "
                   "request and decide which one is more helpful, harmless and accurate.")
PAIRWISE_USER = """{task_hint}[Conversation or request]
{prompt}

[Response A]
{first}

[Response B]
{second}

Which response is better? Answer with exactly one letter: A or B."""


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or None (unparseable).

    A reply that is just the letter (any case, markdown/punctuation around it) counts; otherwise the
    first standalone CAPITAL A or B ('Response B is better'), so the article "a" is never read as a vote.
    """
    bare = re.sub(r"[\s*_.:()\[\]\"']", "", text)
    if bare.upper() in ("A", "B"):
        return bare.upper()
    match = re.search(r"\b([AB])\b", text)
    return match.group(1) if match else None


class PairwiseLLMJudge(Judge):
    """Pairwise judge over an OpenAI-compatible chat endpoint (``vllm serve``, llama.cpp, OpenAI).

    Each comparison is asked twice, (a, b) and (b, a), to cancel position bias: ``a`` wins only
    when both orders pick it, ``b`` likewise; order disagreement or an unparseable answer is a tie.
    """

    name = "llm_pairwise"
    kind = "pairwise"
    spec_name = "llm"
    spec = "llm:<base_url>?model=<served model name>"
    spec_sets = ("base_url", "model")
    description = ("an LLM behind any OpenAI-compatible endpoint (vllm serve); asks both orders, "
                   "disagreement counts as a tie")

    @classmethod
    def from_spec(cls, argument: str, **kwargs: Any) -> "PairwiseLLMJudge":
        parts = urlsplit(argument)
        query = parse_qs(parts.query)
        model = (query.get("model") or [kwargs.pop("model", None)])[0]
        if not parts.scheme or not model:
            raise TaskError(f"judge spec 'llm:{argument}': use llm:<base_url>?model=<served model name>, "
                            "e.g. llm:http://127.0.0.1:8000/v1?model=Qwen/Qwen2.5-7B-Instruct")
        base_url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return cls(base_url=base_url, model=model, **kwargs)

    def __init__(self, base_url: str, model: str, api_key: str | None = None, task_hint: str = "",
                 max_tokens: int = 8, timeout: float = 60.0, max_workers: int = 4) -> None:
        _require("openai", "openai", "the pairwise LLM judge")
        from openai import OpenAI
        self.base_url = base_url
        self.model = model
        self.task_hint = task_hint
        self.max_tokens = max_tokens
        self.max_workers = max_workers
        self._client = OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                              timeout=timeout, max_retries=2)
        self._lock = threading.Lock()
        self._stats = {"comparisons": 0, "a_wins": 0, "b_wins": 0, "order_disagreements": 0, "unparsed": 0}

    @property
    def version(self) -> str:
        return f"{self.model}/template-{PAIRWISE_TEMPLATE_VERSION}"

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "model": self.model, "base_url": self.base_url,
                "template_version": PAIRWISE_TEMPLATE_VERSION, "task_hint": self.task_hint, "both_orders": True}

    def ask(self, prompt: str, first: str, second: str) -> str | None:
        """One judgement in one order: 'A' (first better), 'B', or None."""
        hint = f"[Task] {self.task_hint}\n\n" if self.task_hint else ""
        reply = self._client.chat.completions.create(
            model=self.model, temperature=0.0, max_tokens=self.max_tokens,
            messages=[{"role": "system", "content": PAIRWISE_SYSTEM},
                      {"role": "user", "content": PAIRWISE_USER.format(task_hint=hint, prompt=prompt,
                                                                       first=first, second=second)}])
        return parse_verdict(reply.choices[0].message.content or "")

    def _one(self, prompt: str, a: str, b: str) -> float:
        forward = self.ask(prompt, a, b)   # a shown as "A"
        backward = self.ask(prompt, b, a)  # a shown as "B"
        with self._lock:
            self._stats["comparisons"] += 1
            if forward is None or backward is None:
                self._stats["unparsed"] += 1
                return TIE
            if forward == "A" and backward == "B":
                self._stats["a_wins"] += 1
                return 1.0
            if forward == "B" and backward == "A":
                self._stats["b_wins"] += 1
                return 0.0
            self._stats["order_disagreements"] += 1
            return TIE

    def compare(self, prompts, a, b, references=None) -> list[float]:
        if not (len(prompts) == len(a) == len(b)):
            raise TaskError(f"pairwise judge: lengths differ: {len(prompts)} prompts, {len(a)} a, {len(b)} b")
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(self._one, prompts, a, b))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._stats)
