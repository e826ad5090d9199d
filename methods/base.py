"""The one contract every preference-optimization method implements.

A method is a small loss module: it receives a :class:`PairBatch` of per-token tensors
(policy and reference log-probs of the chosen ``_w`` and rejected ``_l`` responses, plus the
optional per-token inputs it declared in ``needs``) and returns a :class:`LossOutput`.
Nothing about models, data loading or optimisers leaks into a method; the trainer never
branches on a method's name, it only computes the optional fields a method ``needs``:

===============  =======================================================================
field            who provides it
===============  =======================================================================
``fkl``          forward per-position KL(ref || policy) over the vocabulary (token math)
``rkl``          reverse per-position KL(policy || ref) over the vocabulary (token math)
``weights``      token weights stored with the dataset (TIS-DPO weight-estimation stage)
``masks``        fixed token masks precomputed from the frozen reference (``Method.reference_masks``)
``ref_hidden``   reference hidden states of every layer, [B, T, L, d]
===============  =======================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

OPTIONAL_FIELDS = ("fkl", "rkl", "weights", "masks", "ref_hidden")


class MethodError(ValueError):
    """A method was misconfigured or given a batch it cannot use; the message says what to fix."""


class NonFiniteLoss(MethodError):
    """The loss of some pairs is NaN/inf although every input was finite; ``pairs`` lists them."""

    def __init__(self, method: str, pairs: list[int]) -> None:
        self.method, self.pairs = method, pairs
        super().__init__(f"method {method!r}: non-finite loss for pair(s) {pairs} although every input was finite")


@dataclass
class PairBatch:
    """Per-token inputs of B preference pairs; every tensor is [B, T] unless noted.

    Position t of ``logps_w`` is log pi(y_t | x, y_<t) for the chosen response (already shifted);
    ``mask_*`` is 1.0 on completion tokens and 0.0 on prompt and padding positions. Chosen and
    rejected may have different T.
    """

    logps_w: Tensor
    logps_l: Tensor
    ref_logps_w: Tensor
    ref_logps_l: Tensor
    mask_w: Tensor
    mask_l: Tensor
    fkl_w: Tensor | None = None
    fkl_l: Tensor | None = None
    rkl_w: Tensor | None = None
    rkl_l: Tensor | None = None
    weights_w: Tensor | None = None
    weights_l: Tensor | None = None
    masks_w: Tensor | None = None
    masks_l: Tensor | None = None
    ref_hidden_w: Tensor | None = None  # [B, T, L, d]
    ref_hidden_l: Tensor | None = None  # [B, T, L, d]

    @property
    def batch_size(self) -> int:
        return self.logps_w.shape[0]

    def side(self, name: str, which: str) -> Tensor | None:
        return getattr(self, f"{name}_{which}")

    def map(self, fn) -> "PairBatch":
        """A new batch with ``fn`` applied to every tensor present (e.g. ``.double()``, indexing)."""
        return PairBatch(**{f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name)))
                            for f in fields(self)})


@dataclass
class LossOutput:
    """``loss``: scalar mean over pairs; ``per_pair``: [B]; ``metrics``: detached scalars."""

    loss: Tensor
    per_pair: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Hyperparameter:
    """``omit_at_default``: the hyperparameter was added after results were recorded; while it holds its
    default it is left out of :meth:`Method.hparams` (what keys training runs and caches), so runs
    that do not set it keep their keys. ``earlier_default``: the default was flipped after results were
    recorded, and those results had this value without naming it; it is left out of ``hparams()`` at
    that value instead, so the new default is keyed (never served from the earlier cache) and a config
    that pins the earlier value keeps its earlier keys."""

    default: Any
    help: str
    choices: tuple | None = None
    omit_at_default: bool = False
    earlier_default: Any = None

    def left_out_of_keys(self, value: Any) -> bool:
        if self.earlier_default is not None:
            return value == self.earlier_default
        return self.omit_at_default and value == self.default


class Method(nn.Module):
    """Base class of every PO method.

    Subclasses set the class attributes and implement :meth:`compute`; hyperparameters are
    declared in ``hyperparameters`` and arrive as attributes of the same name.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    arxiv: ClassVar[str] = ""
    hyperparameters: ClassVar[dict[str, Hyperparameter]] = {}
    #: optional PairBatch fields (see OPTIONAL_FIELDS) this method requires
    needs: frozenset[str] = frozenset()
    #: False for reference-free methods (SimPO): the trainer may pass zeros as ref log-probs
    uses_reference: ClassVar[bool] = True
    #: the harness preparation step that writes the per-pair data this method needs (e.g. TIS-DPO's
    #: "tis_weights" writes token weights); None = trains on the preference pairs as they are.
    #: Steps are registered in bench.stages.prep (entry-point group ``pobench.preparations``).
    preparation: ClassVar[str | None] = None
    # -- statements the shared invariant tests check (tests/methods/test_methods_invariants.py) -----
    #: True if every pair's loss is -log sigma(x) with x negated by swapping chosen and rejected
    #: (the DPO family, no extra term): then exp(-L) + exp(-L_swapped) = 1 for every pair
    logistic_antisymmetric: ClassVar[bool] = False
    #: PairBatch fields the loss deliberately does not differentiate (stop-gradient, TDPO2's "fkl_w")
    no_gradient_inputs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, **hparams: Any) -> None:
        super().__init__()
        unknown = sorted(set(hparams) - set(self.hyperparameters))
        if unknown:
            raise MethodError(
                f"method {self.name!r}: unknown hyperparameter(s) {unknown}; "
                f"allowed: {sorted(self.hyperparameters)}")
        for key, spec in self.hyperparameters.items():
            value = hparams.get(key, spec.default)
            if spec.choices is not None and value not in spec.choices:
                raise MethodError(f"method {self.name!r}: {key}={value!r} is not one of {list(spec.choices)}")
            if isinstance(spec.default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(spec.default) is not type(value) and not (spec.default is None):
                raise MethodError(
                    f"method {self.name!r}: {key}={value!r} should be {type(spec.default).__name__}")
            setattr(self, key, value)
        self.validate()

    # -- hooks subclasses may override -------------------------------------------------
    def validate(self) -> None:
        """Check hyperparameter values (raise MethodError naming the field)."""
        if hasattr(self, "beta") and not self.beta > 0:
            raise MethodError(f"method {self.name!r}: beta must be > 0, got {self.beta}")

    def setup(self, hidden_size: int, num_layers: int) -> None:
        """Called once by the trainer with the model's shape, before the optimizer is built."""

    def modules(self) -> list[nn.Module]:  # type: ignore[override]
        """Trainable extras that the trainer optimises with the policy (own param group)."""
        return []

    def reference_masks(self, activations: dict[str, list[Tensor]], mask: Tensor) -> Tensor:
        """Fixed token masks from reference activations; only for methods whose needs has 'masks'."""
        raise NotImplementedError(f"method {self.name!r} does not derive masks from activations")

    def activation_points(self) -> Any:
        """Where the trainer records the activations :meth:`reference_masks` receives: a sequence of
        ``methods.activations.HookPoint`` (None = ``methods.activations.SEVEN_HOOK_TYPES``)."""
        return None

    def compute(self, batch: PairBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Return per-pair losses [B] and metrics (tensors of shape [B] or scalars)."""
        raise NotImplementedError

    def loss_at_reference(self) -> float | None:
        """Every pair's loss at the neutral point, with these hyperparameters (a shared test checks it).

        The neutral point is policy == reference: every d_t, fkl_t and rkl_t is 0. A reference-free
        method (``uses_reference`` False) never sees the reference; for it the neutral point is every
        completion token of both responses having the same policy log-prob. The default is
        -log sigma(0) = log 2, the DPO family's value; override it where the loss differs there (IPO:
        1/(4 beta^2), a hinge: its margin), or return None where no single value exists (it depends on
        the batch or on trainable modules), which skips that check.
        """
        return math.log(2.0)

    # -- the public entry point ---------------------------------------------------------
    def loss(self, batch: PairBatch) -> LossOutput:
        check_batch(batch, self.needs, self.name, self.uses_reference)
        per_pair, metrics = self.compute(batch)
        if not torch.isfinite(per_pair).all():
            raise NonFiniteLoss(self.name, (~torch.isfinite(per_pair)).nonzero().flatten().tolist())
        out_metrics = {k: (v.detach().float().mean() if v.dim() else v.detach().float())
                       for k, v in metrics.items()}
        return LossOutput(loss=per_pair.mean(), per_pair=per_pair, metrics=out_metrics)

    def forward(self, batch: PairBatch) -> LossOutput:
        return self.loss(batch)

    def hparams(self) -> dict[str, Any]:
        """The hyperparameters that identify this instance (what keys its training runs): every one,
        except those added or flipped later while they hold the value earlier results had
        (:class:`Hyperparameter`)."""
        return {k: getattr(self, k) for k, spec in self.hyperparameters.items()
                if not spec.left_out_of_keys(getattr(self, k))}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"


def check_batch(batch: PairBatch, needs: frozenset[str], method: str = "?", uses_reference: bool = True) -> None:
    """Raise MethodError naming the field for a missing input, a shape mismatch, NaN/inf, or an empty row."""
    required = ["logps_w", "logps_l", "mask_w", "mask_l"]
    if uses_reference:
        required += ["ref_logps_w", "ref_logps_l"]
    for name in sorted(needs):
        if name not in OPTIONAL_FIELDS:
            raise MethodError(f"method {method!r} needs unknown field {name!r}; known: {OPTIONAL_FIELDS}")
        required += [f"{name}_w", f"{name}_l"]
    for key in required:
        value = getattr(batch, key)
        if value is None:
            raise MethodError(f"method {method!r} needs PairBatch.{key}, which is missing")
        side = key[-1]
        ref_shape = getattr(batch, f"mask_{side}").shape
        if tuple(value.shape[:2]) != tuple(ref_shape):
            raise MethodError(f"PairBatch.{key} has shape {tuple(value.shape)}; expected leading dims "
                              f"{tuple(ref_shape)} like mask_{side}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            n_bad = int((~torch.isfinite(value)).sum())
            raise MethodError(f"PairBatch.{key} contains {n_bad} NaN/inf value(s)")
    if batch.mask_w.shape[0] != batch.mask_l.shape[0]:
        raise MethodError("chosen and rejected have different batch sizes: "
                          f"{batch.mask_w.shape[0]} vs {batch.mask_l.shape[0]}")
    for side in "wl":
        empty = (getattr(batch, f"mask_{side}").sum(-1) <= 0).nonzero().flatten().tolist()
        if empty:
            raise MethodError(f"PairBatch.mask_{side}: row(s) {empty} have no completion token "
                              "(all masked); drop such pairs before training")


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Sum over the last dim of completion positions only; [B, T] -> [B]."""
    return (values * mask).sum(-1)


def hyperparameter_table(cls: type[Method]) -> dict[str, Any]:
    return {k: v.default for k, v in cls.hyperparameters.items()}


def preference_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """The metrics every method logs: implicit rewards, their margin and the pair accuracy."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margin": chosen_rewards - rejected_rewards,
        "rewards/accuracy": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype),
    }
