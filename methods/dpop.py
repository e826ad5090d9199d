"""DPOP (DPO-Positive, "Smaug"; Pal et al., 2024, arXiv 2402.13228).

Penalises any drop of the chosen likelihood below the reference, inside the sigmoid:

    z = S(y_w) - S(y_l) - lam * max(0, log pi_ref(y_w) - log pi(y_w))     (token sums)
    L = -log sigma(beta * z)
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from methods.base import Hyperparameter, Method, MethodError, PairBatch, masked_sum, preference_metrics
from methods.dpo import sequence_log_ratios


class DPOP(Method):
    name = "dpop"
    paper = "Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive"
    arxiv = "2402.13228"
    hyperparameters = {
        "beta": Hyperparameter(0.1, "inverse temperature of the implicit reward"),
        "lam": Hyperparameter(50.0, "weight of the chosen-likelihood penalty inside the sigmoid"),
    }

    def validate(self) -> None:
        super().validate()
        if self.lam < 0:
            raise MethodError(f"method 'dpop': lam must be >= 0, got {self.lam}")

    def compute(self, batch: PairBatch) -> tuple[Tensor, dict[str, Tensor]]:
        s_w, s_l = sequence_log_ratios(batch)
        penalty = F.relu(masked_sum(batch.ref_logps_w - batch.logps_w, batch.mask_w))
        per_pair = -F.logsigmoid(self.beta * (s_w - s_l - self.lam * penalty))
        metrics = preference_metrics(self.beta * s_w, self.beta * s_l)
        metrics["dpop/penalty"] = penalty.detach()
        return per_pair, metrics
