"""Judges behind one interface, and their registry.

Every judge has a ``name``, a ``version`` and :meth:`Judge.identity` (recorded with every result),
and answers :meth:`Judge.compare` ``(prompts, a, b, references=None) -> list[float]``: 1.0 when
``a`` is better, 0.0 when ``b`` is, 0.5 for a tie. Pointwise judges also answer
:meth:`PointwiseJudge.score` ``(prompts, completions) -> list[float]`` (higher = better).

==============  =====================  ===========  ==============================================
spec            class (module)         kind         what it is
==============  =====================  ===========  ==============================================
sentiment       SentimentJudge         pointwise    P(positive) of a HF classifier (siebert/sentiment-
                (sentiment)                         roberta-large-english, the DPO paper's) or VADER's
                                                    compound score offline
reward_model    RewardModelJudge       pointwise    a reward model (``AutoModelForSequenceClassification``)
                (reward_model)
llm             PairwiseLLMJudge       pairwise     an LLM behind any OpenAI-compatible endpoint (``vllm
                (llm)                               serve``); asks both orders, disagreement is a tie
embedding       EmbeddingJudge         reference    MiniLM cosine similarity to a reference text (offline
                (embedding)                         fallback: it tells which text is closer to the
                                                    reference, not which is *better*; results say so)
==============  =====================  ===========  ==============================================

``build(spec, **options)`` makes one from a string: ``sentiment`` (auto: HF classifier when online,
else VADER), ``sentiment:vader``, ``sentiment:<hub id or path>``, ``reward_model:<hub id or path>``,
``llm:<base_url>?model=<name>``, ``embedding`` / ``embedding:<path>`` (alias ``minilm``).
``resolve(spec)`` also takes a mapping ``{spec: ..., <options>}`` (suite YAML) or a Judge.

The registry (:data:`REGISTRY`, a :class:`bench.registry.Registry`) maps the part of the spec
before ``:`` to a :class:`Judge` subclass. Built-ins live one per module in this package and are
imported on first use; outside packages add judges through the ``pobench.judges`` entry-point
group (value ``module:Class``; the class sets ``spec_name`` and may override ``from_spec``).
``pobench judges`` lists them. This package imports :mod:`tasks.errors`, never :mod:`tasks.base`.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Mapping

from bench.registry import Registry
from tasks.errors import TaskError
from tasks.judges.base import TIE, Judge, PointwiseJudge, auto_device

__all__ = ["Judge", "PointwiseJudge", "TIE", "auto_device", "build", "resolve", "available", "judge_class",
           "register", "REGISTRY", "ENTRY_POINT_GROUP", "JUDGE_TABLE", "SentimentJudge", "RewardModelJudge",
           "PairwiseLLMJudge", "EmbeddingJudge", "SIEBERT", "clean_review", "parse_verdict",
           "PAIRWISE_TEMPLATE_VERSION", "minilm_path"]

ENTRY_POINT_GROUP = "pobench.judges"

#: the built-in judges: spec name -> "module:Class" (imported on first use)
JUDGE_TABLE: dict[str, str] = {
    "sentiment": "tasks.judges.sentiment:SentimentJudge",
    "reward_model": "tasks.judges.reward_model:RewardModelJudge",
    "llm": "tasks.judges.llm:PairwiseLLMJudge",
    "embedding": "tasks.judges.embedding:EmbeddingJudge",
}
#: other spellings of a spec name
ALIASES: dict[str, str] = {"minilm": "embedding"}

_REQUIRED = inspect.Parameter.empty

#: the judge registry; the functions below are its methods
REGISTRY: Registry[Judge] = Registry("judge", ENTRY_POINT_GROUP, base=Judge, base_label="tasks.judges.Judge",
                                     error=TaskError, builtins=JUDGE_TABLE, name_attr="spec_name")
#: register a Judge subclass under ``cls.spec_name`` (usable as a decorator)
register = REGISTRY.register
#: every judge spec name: built-ins in table order, then plugins and registered ones
available = REGISTRY.available


def judge_class(name: str) -> type[Judge]:
    """The Judge subclass of a spec name (an alias such as ``minilm`` is accepted)."""
    return REGISTRY.get_class(ALIASES.get(name, name))


def _spec_forms() -> str:
    forms = []
    for name in available():
        try:
            forms.append(judge_class(name).spec or name)
        except TaskError:
            forms.append(f"{name} (unloadable)")
    return ", ".join(forms)


def build(spec: str, **kwargs: Any) -> Judge:
    """Make a judge from ``name[:argument]`` (see the module docstring) and keyword options."""
    name, _, argument = spec.partition(":")
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        raise TaskError(f"unknown judge spec {spec!r}; use one of: {_spec_forms()}")
    return judge_class(name).from_spec(argument, **kwargs)


def resolve(spec: Judge | str | Mapping[str, Any], *, where: str = "judge", task_hint: str = "") -> Judge:
    """A Judge from what a task or a suite gives: a Judge, a spec string, or a mapping
    ``{spec: <string>, <option>: <value>, ...}`` (suite YAML). Errors start with ``where``.
    ``task_hint`` fills the hint of a judge that has an empty one (the pairwise LLM judge)."""
    if isinstance(spec, Judge):
        judge = spec
    elif isinstance(spec, str):
        judge = build(spec)
    elif isinstance(spec, Mapping):
        if "spec" not in spec:
            raise TaskError(f"{where}: a judge mapping needs a 'spec' key, got {sorted(spec)}")
        kwargs = {k: v for k, v in spec.items() if k != "spec"}
        try:
            judge = build(spec["spec"], **kwargs)
        except TypeError as exc:
            raise TaskError(f"{where}: bad judge options {sorted(kwargs)}: {exc}") from None
    else:
        raise TaskError(f"{where}: judge must be a spec string, a mapping or a Judge, got {type(spec).__name__}")
    if task_hint and getattr(judge, "task_hint", None) == "":
        judge.task_hint = task_hint
    return judge


def describe(name: str) -> dict[str, Any]:
    """What ``pobench judges`` shows for one judge: spec, description, kind, options (no model loaded)."""
    try:
        cls = judge_class(name)
    except TaskError as exc:
        return {"name": name, "error": str(exc)}
    options = {key: (None if default is _REQUIRED else default) for key, default in cls.options().items()
               if key not in cls.spec_sets}
    return {"name": name, "spec": cls.spec or name, "class": f"{cls.__module__}:{cls.__qualname__}",
            "kind": cls.kind, "description": cls.description or (cls.__doc__ or "").strip().split("\n")[0],
            "spec_sets": list(cls.spec_sets), "options": options,
            "aliases": sorted(a for a, target in ALIASES.items() if target == name)}

# names that used to live in the single-module tasks/judges.py, loaded from their module on first use
_LAZY = {
    "SentimentJudge": "sentiment", "SIEBERT": "sentiment", "clean_review": "sentiment",
    "RewardModelJudge": "reward_model",
    "PairwiseLLMJudge": "llm", "parse_verdict": "llm", "PAIRWISE_TEMPLATE_VERSION": "llm", "PAIRWISE_SYSTEM": "llm",
    "PAIRWISE_USER": "llm",
    "EmbeddingJudge": "embedding", "minilm_path": "embedding",
}


def __getattr__(attr: str) -> Any:
    module = _LAZY.get(attr)
    if module is None:
        raise AttributeError(f"module 'tasks.judges' has no attribute {attr!r}")
    return getattr(importlib.import_module(f"tasks.judges.{module}"), attr)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
