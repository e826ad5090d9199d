"""Reward-model judge: a sequence-classification reward model (``AutoModelForSequenceClassification``).
Spec: ``reward_model:<hub id or path>``."""
from __future__ import annotations

from typing import Any

from tasks.errors import TaskError
from tasks.judges.base import PointwiseJudge, auto_device


class RewardModelJudge(PointwiseJudge):
    """A sequence-classification reward model. Score = the single logit (num_labels == 1) or the
    logit of label ``positive_index`` (default: the last). ``text_pair=True`` feeds (prompt,
    completion) as a tokenizer text pair (e.g. OpenAssistant's DeBERTa reward models); otherwise the
    concatenation ``prompt + completion`` is scored."""

    name = "reward_model"
    spec_name = "reward_model"
    spec = "reward_model:<hub id or path>"
    description = "a sequence-classification reward model: score = its (positive) logit"

    @classmethod
    def from_spec(cls, argument: str, **kwargs: Any) -> "RewardModelJudge":
        if not argument:
            raise TaskError("judge spec 'reward_model' needs a model: reward_model:<hub id or local dir>")
        return cls(model=argument, **kwargs)

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
