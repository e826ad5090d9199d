"""SimPO: Simple Preference Optimization with a reference-free reward (Meng et al., 2024, arXiv 2405.14734).

    r(y) = beta * mean_t log pi(y_t | x, y_<t)       (length-normalised, no reference model)
    L = -log sigma(r(y_w) - r(y_l) - gamma)
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from methods.base import Hyperparameter, Method, PairBatch, masked_sum, preference_metrics


class SimPO(Method):
    name = "simpo"
    paper = "SimPO: Simple Preference Optimization with a Reference-Free Reward"
    arxiv = "2405.14734"
    hyperparameters = {
        "beta": Hyperparameter(2.0, "scale of the length-normalised log-likelihood reward"),
        "gamma": Hyperparameter(1.0, "target reward margin"),
    }
    uses_reference = False

    def compute(self, batch: PairBatch) -> tuple[Tensor, dict[str, Tensor]]:
        r_w = self.beta * masked_sum(batch.logps_w, batch.mask_w) / batch.mask_w.sum(-1)
        r_l = self.beta * masked_sum(batch.logps_l, batch.mask_l) / batch.mask_l.sum(-1)
        return -F.logsigmoid(r_w - r_l - self.gamma), preference_metrics(r_w, r_l)

    def loss_at_reference(self) -> float:
        """Equal per-token log-probs give r(y_w) = r(y_l): only the margin is left, -log sigma(-gamma)."""
        return math.log1p(math.exp(self.gamma))
