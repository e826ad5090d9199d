"""Sentiment judge: P(positive) of a HF classifier (siebert/sentiment-roberta-large-english, the DPO
paper's) or VADER's compound score offline. Spec: ``sentiment[:auto|vader|<hub id or path>]``."""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

from tasks.errors import TaskError, is_offline
from tasks.judges.base import PointwiseJudge, _pkg_version, _require, auto_device

SIEBERT = "siebert/sentiment-roberta-large-english"


def clean_review(text: str) -> str:
    """IMDB reviews carry HTML line breaks; scorers should not see them."""
    return re.sub(r"<br\s*/?>", " ", text).replace("  ", " ").strip()


class SentimentJudge(PointwiseJudge):
    """Sentiment reward of prompt + completion (the whole review text, as in the DPO paper).

    ``model="vader"``: VADER compound score in [-1, 1] (offline, rule based).
    Otherwise a HF text-classification model id/path: the probability of its positive label, in [0, 1].
    """

    name = "sentiment"
    spec_name = "sentiment"
    spec = "sentiment[:auto|vader|<hub id or path>]"
    description = ("P(positive) of a HF text classifier (auto: siebert/sentiment-roberta-large-english "
                   "online, VADER offline); VADER: compound score in [-1, 1]")

    @classmethod
    def from_spec(cls, argument: str, **kwargs: Any) -> "SentimentJudge":
        if argument in ("", "auto"):
            argument = "vader" if is_offline() else SIEBERT
        return cls(model=argument, **kwargs)

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
