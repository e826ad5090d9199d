"""Training configurations: THE training schema, used by the trainer, ``pobench train`` and suites alike.

A suite's ``train:`` section is a :class:`PreferenceTrainConfig` and its ``sft:`` section an
:class:`SFTConfig` (plus ``enabled`` / ``max_examples``), so there is one set of defaults and one
validator. ``model`` and ``seed`` are the run's identity: a suite fills them in from its ``models``
and ``seeds`` (its YAML may not set them inside ``train:``).

Validation is pydantic v2 (``extra="forbid"``, assignments validated), so a typo or a bad value
fails when the config is built, naming the field.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializationInfo, ValidationError, model_serializer, model_validator

from bench.hashing import stable_hash
from bench.prompts import PromptFormat


class TrainConfigError(ValueError):
    """A training configuration field is invalid; the message names the field."""


#: marks a field declared with :func:`added_field`; ``EARLIER`` holds the value it is left out at
OMIT_AT_DEFAULT = "omit_at_default"
EARLIER = "earlier"
#: serialization context flag: dump every field (to rebuild the config), not the keyed view
ALL_FIELDS = "all_fields"
_DEFAULT = object()


def added_field(default: Any, *, earlier: Any = _DEFAULT, **kwargs: Any) -> Any:
    """A field added after results were recorded: while it holds the value every earlier result had
    (``earlier``, by default ``default``) it is left out of every dump (``model_dump``, hence run
    fingerprints, stage keys and the suite hash), so a config that does not set it keeps the keys, and
    so the cached and committed results, it had before the field existed. Any other value is dumped and
    keyed like any field. A default flipped later (``earlier`` != ``default``) is therefore keyed, while
    a config that pins the earlier value keeps its earlier keys."""
    marker = {OMIT_AT_DEFAULT: True} if earlier is _DEFAULT else {OMIT_AT_DEFAULT: True, EARLIER: earlier}
    return Field(default, json_schema_extra=marker, **kwargs)


class Schema(BaseModel):
    """Base of every config model: unknown fields are errors and assignments are validated; fields
    declared with :func:`added_field` are dumped only when they differ from their earlier value."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_serializer(mode="wrap")
    def _leave_out_added_fields_at_their_default(self, handler: Any, info: SerializationInfo) -> Any:
        data = handler(self)
        if isinstance(data, dict) and not (info.context or {}).get(ALL_FIELDS):
            for name, info in type(self).model_fields.items():
                extra = info.json_schema_extra
                if isinstance(extra, dict) and extra.get(OMIT_AT_DEFAULT) and name in data \
                        and getattr(self, name) == extra.get(EARLIER, info.default):
                    del data[name]
        return data

    def all_fields(self, **kwargs: Any) -> dict[str, Any]:
        """Every field, added ones included: what rebuilds this config (``model_validate``). The keyed view
        (``model_dump``) leaves out an added field at its earlier value, which a flipped default
        (``earlier`` != ``default``) would turn into the new default on the way back."""
        return self.model_dump(context={ALL_FIELDS: True}, **kwargs)


class LoraSettings(Schema):
    """peft LoRA adapters; the reference model is then the base with adapters disabled."""

    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha")
    dropout: float = Field(0.0, ge=0, description="LoRA dropout")
    target_modules: tuple[str, ...] = Field(("q_proj", "k_proj", "v_proj", "o_proj"),
                                            description="module names to adapt")


#: config fields that do not change what is trained (excluded from run fingerprints and stage keys)
NON_SEMANTIC = frozenset({"checkpoint_every", "keep_checkpoints", "log_every", "tensorboard", "wandb",
                          "progress_bar"})


class TrainConfig(Schema):
    """Fields shared by preference training and SFT.

    ``batch_size`` is the per-process micro-batch (pairs for preference training, rows for SFT);
    one optimizer step sees ``batch_size * grad_accum * num_processes`` examples. ``steps``:
    optimizer steps; when 0, ``epochs`` passes over the data decide the length. ``lora``: null =
    full fine-tuning (a suite may write ``peft: full | lora`` instead). ``precision`` bf16: autocast
    for the model's matmuls (loss and token math in fp32; with LoRA the frozen base is held in
    bf16 and the saved policy merges the adapters into the fp32 base). ``chat_template`` and
    ``max_prompt_length`` are the prompt format, shared with sampling and KL (``prompt_format()``).
    """

    model: str = Field("tiny", description="short model id, directory or hub id (a suite sets it from `models`)")
    seed: int = Field(0, description="training seed (a suite sets it from `seeds`)")
    lora: LoraSettings | None = Field(None, description="LoRA adapters; null = full fine-tuning")
    lr: float = Field(5e-6, gt=0, description="peak learning rate")
    optimizer: Literal["adamw", "rmsprop"] = added_field(
        "adamw", description="adamw (betas 0.9/0.999, eps 1e-8, decoupled weight decay) | rmsprop (torch's "
        "defaults: alpha 0.99, eps 1e-8, no momentum, weight decay added to the gradient; what the DPO, TDPO "
        "and TIS-DPO reference code use)")
    weight_decay: float = Field(0.0, ge=0, description="weight decay (per parameter group)")
    steps: int = Field(0, ge=0, description="optimizer steps (0 = use epochs)")
    epochs: float = Field(1.0, ge=0, description="epochs over the data when steps == 0")
    batch_size: int = Field(8, ge=1, description="examples per optimizer micro-step and process")
    grad_accum: int = Field(1, ge=1, description="gradient-accumulation micro-steps per optimizer step")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    lr_schedule: Literal["constant", "linear", "cosine", "warmup_constant"] = Field(
        "linear", description="lr at optimizer step s (0-based), W = warmup_steps, N = steps: linear / cosine: "
        "transformers' schedules (warm-up s/W, then decay to 0 at N); constant: transformers' "
        "constant_with_warmup, lr * min(1, s/W); warmup_constant: the DPO reference code's LambdaLR, "
        "lr * min(1, (s+1)/(W+1)) (never 0, full lr from step W on)")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient-norm clip (0 = none)")
    max_length: int = Field(512, ge=8, description="max prompt+response tokens per sequence")
    max_prompt_length: int = Field(256, ge=1, description="max prompt tokens (the prompt's end is kept)")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="autocast dtype of forward/backward")
    attn_implementation: str | None = Field(None, description="transformers attention kernel (null = the "
                                            "model's default; eager has the faster backward for short CPU batches)")
    chat_template: bool | None = Field(None, description="null = the tokenizer's template when it has one; "
                                       "false = plain text; true = require it (training, sampling and KL alike)")
    eval_at_steps: tuple[int, ...] = Field((), description="optimizer steps at which the policy is also saved "
                                           "(policies/step-N) so a suite evaluates it there: frontier points "
                                           "without retraining; the final step is always evaluated")
    checkpoint_every: int = Field(50, ge=0, description="optimizer steps between resumable checkpoints (0 = none)")
    keep_checkpoints: int = Field(1, ge=1)
    add_eos: bool = True
    log_every: int = Field(1, ge=1)
    tensorboard: bool = True
    wandb: bool | None = Field(None, description="null = when the wandb package is installed")
    progress_bar: bool = True
    bad_rows: Literal["drop", "error"] = Field("drop", description="drop (counted, reported) or error")
    prompt_overflow: Literal["truncate", "drop"] = Field("truncate", description="prompts over "
                                                         "max_prompt_length: truncate (keep the end) or drop")

    @model_validator(mode="before")
    @classmethod
    def _peft_alias(cls, data: Any) -> Any:
        """``peft: full`` -> ``lora: null``; ``peft: lora`` -> the given ``lora`` or its defaults."""
        if isinstance(data, dict) and "peft" in data:
            data = dict(data)
            peft = data.pop("peft")
            if peft == "full":
                data["lora"] = None
            elif peft == "lora":
                data["lora"] = data.get("lora") or {}
            else:
                raise ValueError(f"peft: {peft!r} is not one of ['lora', 'full']")
        return data

    @model_validator(mode="after")
    def _lengths(self) -> "TrainConfig":
        if not self.max_prompt_length < self.max_length:
            raise ValueError(f"max_prompt_length: {self.max_prompt_length} must be below max_length "
                             f"{self.max_length}")
        if self.steps == 0 and self.epochs <= 0:
            raise ValueError("epochs: must be > 0 when steps is 0")
        if any(s < 1 or (self.steps and s > self.steps) for s in self.eval_at_steps):
            raise ValueError(f"eval_at_steps: {list(self.eval_at_steps)} must be optimizer steps in "
                             f"[1, steps={self.steps}]")
        object.__setattr__(self, "eval_at_steps", tuple(sorted(set(self.eval_at_steps))))
        return self

    # -- the trainer's view --------------------------------------------------------------------

    @property
    def peft(self) -> str:
        return "full" if self.lora is None else "lora"

    def prompt_format(self) -> PromptFormat:
        """How prompts are encoded for this run: training, sampling and KL use the same one."""
        return PromptFormat(chat_template=self.chat_template, max_prompt_length=self.max_prompt_length)

    def validate(self) -> None:  # noqa: D401 - kept for callers: the model is validated when built
        """Re-check the whole config (fields set by assignment are checked one at a time)."""
        try:
            type(self).model_validate(self.all_fields())
        except ValidationError as exc:
            raise TrainConfigError(describe_validation_error(exc, type(self).__name__)) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def semantic(self) -> dict[str, Any]:
        """What changes the trained weights: the config minus bookkeeping (hashed into keys)."""
        return {k: v for k, v in self.to_dict().items() if k not in NON_SEMANTIC}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise TrainConfigError(describe_validation_error(exc, cls.__name__)) from None

    def with_updates(self, **updates: Any):
        """A validated copy with ``updates`` applied (what ``pobench train --set`` and suites use)."""
        return type(self).from_dict({**self.all_fields(), **updates})


class PreferenceTrainConfig(TrainConfig):
    """Preference training. ``precompute_reference``: null = automatic (cache reference token
    log-probs once per dataset when the method needs nothing else from the reference)."""

    method_weight_decay: float = Field(0.01, ge=0, description="weight decay of method modules (SparsePO mask heads)")
    precompute_reference: bool | None = None
    reference_dtype: Literal["fp32", "bf16"] | None = Field(
        None, description="weights of a frozen reference copy: null = bf16 when precision is bf16, else fp32")
    token_chunk_size: int = Field(64, ge=1, description="completion positions per chunk of the vocabulary-wide "
                                  "token math (bounds its fp32 workspace)")
    token_reference: Literal["cached", "online"] = added_field(
        "cached", earlier="online", description="what methods needing the reference's distribution (fkl) or "
        "hidden states (ref_hidden) get it from: cached = one reference pass per dataset, cached like its "
        "log-probs, storing per completion token its final hidden state, expected output embedding and "
        "log-normaliser (KL(ref || policy) then follows exactly from the policy's logits, since both share the "
        "frozen output layer) and, for ref_hidden, every layer's hidden state; the reference runs at every step "
        "instead where that identity does not hold (rkl, a trained output layer as in full fine-tuning, "
        "logits transformed after the output layer), with bf16 precision (its rounding does not cancel) or "
        "where the hidden states exceed 2 GiB. online = the "
        "reference runs at every step (what every result recorded before this field used)")


class SFTConfig(TrainConfig):
    lr: float = Field(2e-5, gt=0, description="peak learning rate")


def describe_validation_error(exc: ValidationError, where: str = "") -> str:
    """pydantic's first error as one line: ``<dotted.field>: <what is wrong>``."""
    from bench.validation import format_error

    return format_error(exc.errors()[0], prefix=where)


def fingerprint(*parts: Any) -> str:
    """The run fingerprint of a trainer: :func:`bench.hashing.stable_hash` of its parts."""
    return stable_hash(list(parts))
