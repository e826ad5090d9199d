"""Training configurations (plain dataclasses: YAML/JSON round-trip through ``asdict``)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any


class TrainConfigError(ValueError):
    """A training configuration field is invalid; the message names the field."""


@dataclass
class LoraSettings:
    """peft LoRA adapters; the reference model is then the base with adapters disabled."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class TrainConfig:
    """Fields shared by preference training and SFT.

    ``model``: short id / directory / hub id understood by :func:`bench.models.resolve_model`.
    ``batch_size`` is the per-process micro-batch (pairs for preference training, rows for SFT);
    one optimizer step sees ``batch_size * grad_accum * num_processes`` examples.
    ``steps``: optimizer steps; when 0, ``epochs`` passes over the data decide the length.
    ``precision``: "fp32" or "bf16" (bf16 autocast for the model's matmuls; the loss and token
    math always run in fp32; with LoRA the frozen base weights are held in bf16 and the adapters
    in fp32, and the saved policy merges the adapters into the fp32 base).
    ``attn_implementation``: the transformers attention kernel (None = the model's default;
    "eager" is the faster backward for short sequences on CPU).  ``checkpoint_every``: optimizer steps between resumable
    checkpoints (0 = none).  ``chat_template``: None = use the tokenizer's template when it has
    one, True = require it, False = plain text prompts.
    """

    model: str = "tiny"
    lora: LoraSettings | None = None
    lr: float = 5e-6
    weight_decay: float = 0.0
    steps: int = 0
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    warmup_steps: int = 0
    lr_schedule: str = "linear"  # "linear" | "cosine" | "constant"
    max_grad_norm: float = 1.0
    max_length: int = 512
    max_prompt_length: int = 256
    seed: int = 0
    precision: str = "fp32"  # "fp32" | "bf16"
    attn_implementation: str | None = None  # None | "eager" | "sdpa" | any kernel transformers knows
    checkpoint_every: int = 0
    keep_checkpoints: int = 1
    chat_template: bool | None = None
    add_eos: bool = True
    log_every: int = 1
    tensorboard: bool = True
    wandb: bool | None = None  # None = when the wandb package is installed
    progress_bar: bool = True
    bad_rows: str = "drop"  # "drop" (counted, reported) | "error"
    prompt_overflow: str = "truncate"  # prompts over max_prompt_length: "truncate" (keep end) | "drop"

    def validate(self) -> None:
        def need(cond: bool, name: str, what: str) -> None:
            if not cond:
                raise TrainConfigError(f"training config: {name}={getattr(self, name)!r}: {what}")

        need(self.lr > 0, "lr", "must be > 0")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        need(self.steps >= 0, "steps", "must be >= 0")
        need(self.steps > 0 or self.epochs > 0, "epochs", "must be > 0 when steps is 0")
        need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(self.lr_schedule in ("linear", "cosine", "constant"), "lr_schedule", "linear | cosine | constant")
        need(self.precision in ("fp32", "bf16"), "precision", "fp32 | bf16")
        need(self.max_length >= 2, "max_length", "must be >= 2")
        need(0 < self.max_prompt_length < self.max_length, "max_prompt_length", "must be in (0, max_length)")
        need(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        need(self.bad_rows in ("drop", "error"), "bad_rows", "drop | error")
        need(self.prompt_overflow in ("truncate", "drop"), "prompt_overflow", "truncate | drop")
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if self.lora is not None:
            self.lora.target_modules = tuple(self.lora.target_modules)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}")
        data = dict(data)
        if isinstance(data.get("lora"), dict):
            data["lora"] = LoraSettings(**data["lora"])
        return cls(**data)


@dataclass
class PreferenceTrainConfig(TrainConfig):
    """Preference training; ``precompute_reference``: None = automatic (cache reference token
    log-probs once per dataset when the method needs nothing else from the reference)."""

    lr: float = 5e-6
    method_weight_decay: float = 0.01  # weight decay of method.modules() (SparsePO mask heads)
    precompute_reference: bool | None = None
    #: weights of a frozen reference copy: None = bf16 when precision is bf16, else fp32
    reference_dtype: str | None = None
    #: completion positions per chunk of the vocabulary-wide token math (bounds its fp32 workspace)
    token_chunk_size: int = 64

    def validate(self) -> None:
        super().validate()
        if self.reference_dtype not in (None, "fp32", "bf16"):
            raise TrainConfigError(f"training config: reference_dtype={self.reference_dtype!r}: null | fp32 | bf16")
        if self.token_chunk_size < 1:
            raise TrainConfigError(f"training config: token_chunk_size={self.token_chunk_size}: must be >= 1")


@dataclass
class SFTConfig(TrainConfig):
    lr: float = 2e-5


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (configs, data) for cache keys."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]
