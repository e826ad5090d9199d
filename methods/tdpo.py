"""TDPO: Token-level Direct Preference Optimization (Zeng et al., 2024, arXiv 2404.11999).

With K(y) = sum_t KL(pi_ref(.|x, y_<t) || pi(.|x, y_<t)) over completion positions (sequential KL):

    TDPO1: z = S(y_w) - S(y_l) - (K(y_l) - K(y_w))
    TDPO2: z = S(y_w) - S(y_l) - alpha * (K(y_l) - sg(K(y_w)))
    L = -log sigma(beta * z)

TDPO2 stops the gradient of the CHOSEN-side KL (official code). The official config's default is
TDPO1 while its loss function defaults to TDPO2, so pobench names the variant in the method name.
Logged rewards follow the official code: beta * (S + K) per response.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from methods.base import Hyperparameter, Method, PairBatch, masked_sum, preference_metrics
from methods.dpo import sequence_log_ratios

_BETA = Hyperparameter(0.1, "inverse temperature of the implicit reward")


def sequence_kl(batch: PairBatch) -> tuple[Tensor, Tensor]:
    """SeqKL of chosen and rejected: sums of the forward per-position KL over completion tokens."""
    return masked_sum(batch.fkl_w, batch.mask_w), masked_sum(batch.fkl_l, batch.mask_l)


def _tdpo_metrics(beta: float, s_w: Tensor, s_l: Tensor, k_w: Tensor, k_l: Tensor) -> dict[str, Tensor]:
    metrics = preference_metrics(beta * (s_w + k_w), beta * (s_l + k_l))
    metrics["kl/seq_chosen"] = k_w.detach()
    metrics["kl/seq_rejected"] = k_l.detach()
    return metrics


class TDPO1(Method):
    name = "tdpo1"
    paper = "Token-level Direct Preference Optimization (TDPO1: KL terms with gradient on both sides)"
    arxiv = "2404.11999"
    hyperparameters = {"beta": _BETA}
    needs = frozenset({"fkl"})
    logistic_antisymmetric = True

    def compute(self, batch: PairBatch) -> tuple[Tensor, dict[str, Tensor]]:
        s_w, s_l = sequence_log_ratios(batch)
        k_w, k_l = sequence_kl(batch)
        per_pair = -F.logsigmoid(self.beta * (s_w - s_l - (k_l - k_w)))
        return per_pair, _tdpo_metrics(self.beta, s_w, s_l, k_w, k_l)


class TDPO2(Method):
    name = "tdpo2"
    paper = "Token-level Direct Preference Optimization (TDPO2: alpha-weighted KL, chosen side stop-gradient)"
    arxiv = "2404.11999"
    hyperparameters = {"beta": _BETA, "alpha": Hyperparameter(0.5, "weight of the sequential KL difference")}
    needs = frozenset({"fkl"})
    logistic_antisymmetric = True
    no_gradient_inputs = frozenset({"fkl_w"})

    def compute(self, batch: PairBatch) -> tuple[Tensor, dict[str, Tensor]]:
        s_w, s_l = sequence_log_ratios(batch)
        k_w, k_l = sequence_kl(batch)
        per_pair = -F.logsigmoid(self.beta * (s_w - s_l - self.alpha * (k_l - k_w.detach())))
        return per_pair, _tdpo_metrics(self.beta, s_w, s_l, k_w, k_l)
