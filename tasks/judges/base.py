"""The judge interface (:class:`Judge`, :class:`PointwiseJudge`) and helpers shared by the judges.

Imports the standard library and the leaf :mod:`tasks.errors` only; heavy libraries (torch,
transformers, openai, sentence-transformers) are imported by each judge when it first runs.
"""
from __future__ import annotations

import importlib.util
import inspect
from importlib.metadata import PackageNotFoundError, version as package_version
from typing import Any, ClassVar, Sequence

from tasks.errors import TaskError

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


class Judge:
    """Base class: identity plus pairwise comparison.

    Class attributes for the judge registry (``pobench judges``): ``spec_name`` (the part of a
    spec string before ``:``, and the registry name), ``spec`` (the spec syntax), ``description``,
    ``spec_sets`` (the options the spec string fills).
    A judge is built from a spec string by :meth:`from_spec`; its keyword options are the
    ``__init__`` parameters.
    """

    name: str = ""
    kind: str = ""  # "pointwise" | "pairwise" | "reference"
    spec_name: ClassVar[str] = ""
    spec: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: the ``__init__`` parameters that :meth:`from_spec` fills from the spec string
    spec_sets: ClassVar[tuple[str, ...]] = ("model",)

    @classmethod
    def from_spec(cls, argument: str, **kwargs: Any) -> "Judge":
        """The judge for spec ``<spec_name>[:argument]`` (default: the argument is the ``model``)."""
        return cls(model=argument, **kwargs) if argument else cls(**kwargs)

    @classmethod
    def options(cls) -> dict[str, Any]:
        """Keyword options (``__init__`` parameters) and their defaults (``inspect.Parameter.empty``: required)."""
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        return {p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

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
