"""IPO: Identity Preference Optimisation (Azar et al., 2023, arXiv 2310.12036), TRL's form.

Length-normalised as in TRL's ``loss_type="ipo"``: the per-response log-ratio is the MEAN over
completion tokens, not the sum, and

    z = mean_t d_t(y_w) - mean_t d_t(y_l)
    L = (z - 1 / (2 * beta))^2

(At policy == reference the loss is 1 / (4 beta^2), not log 2.)
"""
from __future__ import annotations

from torch import Tensor

from methods.base import Hyperparameter, Method, PairBatch, preference_metrics
from methods.dpo import sequence_log_ratios


class IPO(Method):
    name = "ipo"
    paper = "A General Theoretical Paradigm to Understand Learning from Human Preferences (IPO)"
    arxiv = "2310.12036"
    hyperparameters = {"beta": Hyperparameter(0.1, "regularisation strength; the target margin is 1/(2 beta)")}

    def compute(self, batch: PairBatch) -> tuple[Tensor, dict[str, Tensor]]:
        s_w, s_l = sequence_log_ratios(batch)
        mean_w, mean_l = s_w / batch.mask_w.sum(-1), s_l / batch.mask_l.sum(-1)
        per_pair = (mean_w - mean_l - 1.0 / (2.0 * self.beta)) ** 2
        return per_pair, preference_metrics(self.beta * mean_w, self.beta * mean_l)

    def loss_at_reference(self) -> float:
        return (1.0 / (2.0 * self.beta)) ** 2  # z = 0
