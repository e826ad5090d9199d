"""TIS-DPO: Token-level Importance Sampling for DPO (Liu et al., 2024, arXiv 2410.04350).

Loss with token weights u_t (stored with the dataset by the weight-estimation stage):

    token_level=False (official code default):
        z = sum_t u_t d_t(y_w) - sum_t u_t d_t(y_l)
    token_level=True:
        z = [same] - alpha * (sum_t u_t rkl_t(y_w) - sum_t u_t rkl_t(y_l))     (reverse KL, no stop-grad)
    L = -log sigma(beta * z)

With every u_t = 1 and token_level=False this is exactly DPO.

Weights come from a contrastive pair of models (pi_plus, pi_minus); the functions below turn their
token log-probs into weights the way the official code does: raw_t = log pi_plus - log pi_minus,
NEGATED for rejected responses (a token the "good" model prefers is important in both), then each
response is mapped into [0.7, 1.3] by rank (``rank``, what the official README runs) or by clip
and linear scale (``clip``); the paper's own form k * exp(mu * clamp(raw, L, U)) is ``exp``.
The EOS token gets weight 0.

Two details of the official transforms are options of the functions below, whose own defaults are
pobench's first reading; the suite's ``preparation.tis_weights.official_transform`` (default true)
applies the official values, :data:`OFFICIAL_TRANSFORM_OPTIONS`:
``rank``: the official code rounds the scores to 2 decimals and breaks ties by position
(``decimals=2, ties="position"``; first reading: no rounding, tied tokens share their average rank);
``clip``: the official code clips at +-1.5 nats (``clip_low=-1.5, clip_high=1.5``; first reading +-1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from methods.base import Hyperparameter, Method, MethodError, PairBatch, masked_sum, preference_metrics
from methods.dpo import sequence_log_ratios

WEIGHT_RANGE = (0.7, 1.3)
#: the official code's transform details (the defaults of the functions below differ, see the docstring)
OFFICIAL_TRANSFORM_OPTIONS = {"rank": {"decimals": 2, "ties": "position"},
                              "clip": {"clip_low": -1.5, "clip_high": 1.5},
                              "exp": {}, "uniform": {}}
TIE_RULES = ("average", "position")


def contrastive_scores(logps_plus: Tensor, logps_minus: Tensor, rejected: bool) -> Tensor:
    """raw_t = log pi_plus(y_t) - log pi_minus(y_t), negated for rejected responses."""
    raw = logps_plus - logps_minus
    return -raw if rejected else raw


def _ranks(values: Tensor, valid: Tensor, ties: str = "average") -> Tensor:
    """Rank of each valid position among the valid positions of its row, 0-based (lowest value 0).

    Tied values: ``average`` gives each the mean of their ranks; ``position`` orders them by position,
    the earlier token ranking lower (a stable sort of the scores)."""
    if ties not in TIE_RULES:
        raise MethodError(f"TIS-DPO rank weights: ties={ties!r} is not one of {list(TIE_RULES)}")
    v_i, v_j = values.unsqueeze(-1), values.unsqueeze(-2)
    other_valid = valid.unsqueeze(-2)
    below = ((v_j < v_i) & other_valid).sum(-1).to(values.dtype)
    equal = (v_j == v_i) & other_valid
    if ties == "position":
        n = values.shape[-1]
        earlier = torch.arange(n).unsqueeze(-1) > torch.arange(n).unsqueeze(-2)   # [i, j]: j before i
        return below + (equal & earlier.to(values.device)).sum(-1).to(values.dtype)
    return below + 0.5 * (equal.sum(-1).to(values.dtype) - 1)


def rank_weights(raw: Tensor, mask: Tensor, eos_mask: Tensor | None = None,
                 low: float = WEIGHT_RANGE[0], high: float = WEIGHT_RANGE[1], decimals: int | None = None,
                 ties: str = "average") -> Tensor:
    """Map each response's scores linearly by rank into [low, high]; EOS and non-completion -> 0.

    ``decimals``: round the scores first (the official code: 2); ``ties``: ``average`` or ``position``
    (the official code), see :func:`_ranks`. A response with a single scored token gets the midpoint
    (1.0 for the default range).
    """
    valid = mask > 0
    if eos_mask is not None:
        valid = valid & ~(eos_mask > 0)
    scores = raw if decimals is None else torch.round(raw, decimals=decimals)
    ranks = _ranks(scores, valid, ties)
    n = valid.sum(-1, keepdim=True).to(raw.dtype)
    fraction = torch.where(n > 1, ranks / (n - 1).clamp(min=1), torch.full_like(ranks, 0.5))
    return torch.where(valid, low + (high - low) * fraction, torch.zeros_like(raw))


def clip_weights(raw: Tensor, mask: Tensor, eos_mask: Tensor | None = None, clip_low: float = -1.0,
                 clip_high: float = 1.0, low: float = WEIGHT_RANGE[0], high: float = WEIGHT_RANGE[1]) -> Tensor:
    """Clip scores into [clip_low, clip_high] nats, then scale linearly into [low, high]; EOS -> 0."""
    valid = mask > 0
    if eos_mask is not None:
        valid = valid & ~(eos_mask > 0)
    scaled = low + (high - low) * (raw.clamp(clip_low, clip_high) - clip_low) / (clip_high - clip_low)
    return torch.where(valid, scaled, torch.zeros_like(raw))


def exp_weights(raw: Tensor, mask: Tensor, eos_mask: Tensor | None = None, k: float = 1.0, mu: float = 1.0,
                clip_low: float = -1.0, clip_high: float = 1.0) -> Tensor:
    """The paper's form u_t = k * exp(mu * clamp(raw_t, L, U)); EOS -> 0."""
    valid = mask > 0
    if eos_mask is not None:
        valid = valid & ~(eos_mask > 0)
    return torch.where(valid, k * torch.exp(mu * raw.clamp(clip_low, clip_high)), torch.zeros_like(raw))


def uniform_weights(raw: Tensor, mask: Tensor, eos_mask: Tensor | None = None) -> Tensor:
    """Weight 1 on every completion token, EOS included: TIS-DPO is then DPO exactly. The pipeline
    check (tests/harness/test_harness_tis_check.py): any difference from DPO's run is plumbing, not
    the method (weights misaligned to tokens, pairs reordered, a token left out)."""
    return (mask > 0).to(raw.dtype)


TRANSFORMS = {"rank": rank_weights, "clip": clip_weights, "exp": exp_weights, "uniform": uniform_weights}


def token_weights(logps_plus: Tensor, logps_minus: Tensor, mask: Tensor, *, rejected: bool,
                  eos_mask: Tensor | None = None, transform: str = "rank", **options) -> Tensor:
    """Token weights of responses from the contrastive models' token log-probs ([B, T] each)."""
    if transform not in TRANSFORMS:
        raise MethodError(f"TIS-DPO weight transform {transform!r} is not one of {sorted(TRANSFORMS)}")
    raw = contrastive_scores(logps_plus, logps_minus, rejected)
    return TRANSFORMS[transform](raw, mask, eos_mask, **options)


class TISDPO(Method):
    name = "tis_dpo"
    paper = "TIS-DPO: Token-level Importance Sampling for Direct Preference Optimization"
    arxiv = "2410.04350"
    hyperparameters = {
        "beta": Hyperparameter(0.1, "inverse temperature of the implicit reward"),
        "alpha": Hyperparameter(0.5, "weight of the weighted reverse-KL term (token_level=True only)"),
        "token_level": Hyperparameter(False, "add the weighted reverse-KL term (TIS-DPO's token-level variant)"),
    }
    logistic_antisymmetric = True
    preparation = "tis_weights"  # token weights from a contrastive pair of models (bench/stages/tis_weights.py)

    def validate(self) -> None:
        super().validate()
        self.needs = frozenset({"weights", "rkl"}) if self.token_level else frozenset({"weights"})

    def compute(self, batch: PairBatch) -> tuple[Tensor, dict[str, Tensor]]:
        s_w, s_l = sequence_log_ratios(batch, batch.weights_w, batch.weights_l)
        z = s_w - s_l
        metrics = preference_metrics(self.beta * s_w, self.beta * s_l)
        if self.token_level:
            k_w = masked_sum(batch.weights_w * batch.rkl_w, batch.mask_w)
            k_l = masked_sum(batch.weights_l * batch.rkl_l, batch.mask_l)
            z = z - self.alpha * (k_w - k_l)
            metrics["kl/weighted_reverse_chosen"] = k_w.detach()
            metrics["kl/weighted_reverse_rejected"] = k_l.detach()
        metrics["weights/mean_chosen"] = (masked_sum(batch.weights_w, batch.mask_w) / batch.mask_w.sum(-1)).detach()
        return -F.logsigmoid(self.beta * z), metrics
