"""SparsePO with activation masks, "MaPO" (Christopoulou et al., 2024, arXiv 2410.05102).

Fixed token masks m = m_u = m_d in [0, 1], derived from the frozen REFERENCE model's activations:

    u = sum_t m d_t(y_w) - sum_t m d_t(y_l)
    k = sum_t m fkl_t(y_l) - sum_t m fkl_t(y_w)
    L = -log sigma(beta * (u - k))

With all masks = 1 this is exactly TDPO1. Because the masks depend only on the reference they are
precomputed once per dataset (the ``masks`` field) from forward hooks on the reference model.

``activation_grouping`` says which activations are averaged (``methods.activations``):
``official_four_types`` (default, the official code: MLP post-activation; attention q, k, v incl.
rotary and the value output; residual-stream points; logits - four types of equal weight) or
``seven_hook_types`` (pobench's first reading: MLP block output, attention q, k, v and output
projections, residual stream, logits, each its own type, so attention got 4/7 of the weight).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# the masks are computed from what these hooks record on the reference (the trainer runs them)
from methods.activations import ACTIVATION_LAYOUTS, HOOK_PATTERNS, HookPoint, record_activations  # noqa: F401
from methods.base import Hyperparameter, Method, MethodError, PairBatch, masked_sum, preference_metrics


def activation_mask(activation: Tensor, mask: Tensor) -> Tensor:
    """One hook's token mask: mean over the hidden dim, normalised per sequence into [0, 1].

    The paper z-normalises over the response tokens and then min-max rescales; a z-normalisation
    (an increasing affine map) does not change a min-max rescale, so only the min-max is computed,
    which also removes the official code's division by a zero std. Degenerate responses (one
    completion token, or all token values equal) get mask 1 everywhere: no token is singled out.
    """
    values = activation.to(torch.promote_types(activation.dtype, torch.float32)).mean(-1)
    valid = mask > 0
    big = torch.finfo(values.dtype).max
    lo = torch.where(valid, values, torch.full_like(values, big)).amin(-1, keepdim=True)
    hi = torch.where(valid, values, torch.full_like(values, -big)).amax(-1, keepdim=True)
    span = hi - lo
    degenerate = span <= 1e-6 * hi.abs().clamp(min=1.0)
    scaled = (values - lo) / torch.where(degenerate, torch.ones_like(span), span)
    scaled = torch.where(degenerate, torch.ones_like(scaled), scaled)
    return torch.where(valid, scaled, torch.zeros_like(scaled))


def activation_masks(activations: dict[str, list[Tensor]], mask: Tensor) -> Tensor:
    """Average the per-hook masks within each activation type, then across types: [B, T] in [0, 1]."""
    if not activations:
        raise MethodError("SparsePO activation masks: no activations were recorded")
    per_type = [torch.stack([activation_mask(a, mask) for a in acts]).mean(0)
                for acts in activations.values() if acts]
    return torch.stack(per_type).mean(0)


def sparsepo_objective(batch: PairBatch, mu_w: Tensor, mu_l: Tensor, md_w: Tensor, md_l: Tensor,
                       beta: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Shared SparsePO core: masked reward term minus masked KL term, logistic loss."""
    u_w = masked_sum(mu_w * (batch.logps_w - batch.ref_logps_w), batch.mask_w)
    u_l = masked_sum(mu_l * (batch.logps_l - batch.ref_logps_l), batch.mask_l)
    k_w = masked_sum(md_w * batch.fkl_w, batch.mask_w)
    k_l = masked_sum(md_l * batch.fkl_l, batch.mask_l)
    per_pair = -F.logsigmoid(beta * ((u_w - u_l) - (k_l - k_w)))
    metrics = preference_metrics(beta * u_w, beta * u_l)
    metrics["kl/seq_chosen"] = masked_sum(batch.fkl_w, batch.mask_w).detach()
    metrics["kl/seq_rejected"] = masked_sum(batch.fkl_l, batch.mask_l).detach()
    return per_pair, metrics


def mask_statistics(prefix: str, m_w: Tensor, m_l: Tensor, batch: PairBatch) -> dict[str, Tensor]:
    """Sparsity (% exact zeros on completion tokens) and mean value of a mask over both responses."""
    tokens = batch.mask_w.sum() + batch.mask_l.sum()
    zeros = ((m_w == 0) * batch.mask_w).sum() + ((m_l == 0) * batch.mask_l).sum()
    total = masked_sum(m_w, batch.mask_w).sum() + masked_sum(m_l, batch.mask_l).sum()
    return {f"{prefix}/sparsity": (100.0 * zeros / tokens).detach(), f"{prefix}/mean": (total / tokens).detach()}


class SparsePOMaPO(Method):
    name = "sparsepo_mapo"
    paper = "SparsePO: Controlling Preference Alignment of LLMs via Sparse Token Masks (activation masks)"
    arxiv = "2410.05102"
    hyperparameters = {
        "beta": Hyperparameter(0.1, "inverse temperature of the implicit reward"),
        # official default since issue 12: keyed, so results cached under the earlier seven-type default
        # are never taken for it; seven_hook_types, pinned, keeps the earlier keys
        "activation_grouping": Hyperparameter(
            "official_four_types", "which reference activations make the masks: official_four_types (the "
            "official code's four types, equal weight) or seven_hook_types (pobench's first reading)",
            tuple(ACTIVATION_LAYOUTS), earlier_default="seven_hook_types"),
    }
    needs = frozenset({"fkl", "masks"})
    logistic_antisymmetric = True

    def activation_points(self) -> tuple[HookPoint, ...]:
        return ACTIVATION_LAYOUTS[self.activation_grouping]

    def reference_masks(self, activations: dict[str, list[Tensor]], mask: Tensor) -> Tensor:
        """Masks from reference activations aligned with PairBatch positions (position t predicts y_t)."""
        return activation_masks(activations, mask)

    def compute(self, batch: PairBatch) -> tuple[Tensor, dict[str, Tensor]]:
        per_pair, metrics = sparsepo_objective(batch, batch.masks_w, batch.masks_l, batch.masks_w,
                                               batch.masks_l, self.beta)
        metrics.update(mask_statistics("mask", batch.masks_w, batch.masks_l, batch))
        return per_pair, metrics
