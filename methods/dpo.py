"""DPO: Direct Preference Optimization (Rafailov et al., 2023, arXiv 2305.18290).

    z = S(y_w) - S(y_l),   S(y) = sum_t [log pi(y_t|.) - log pi_ref(y_t|.)] over completion tokens
    L = -log sigma(beta * z)

Matches TRL's ``DPOTrainer(loss_type="sigmoid")`` (token sums, completion tokens only); implicit
rewards for logging are beta * S(y_w) and beta * S(y_l).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from methods.base import Hyperparameter, Method, PairBatch, masked_sum, preference_metrics


def sequence_log_ratios(batch: PairBatch, weights_w: Tensor | None = None,
                        weights_l: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """S(y_w), S(y_l): (optionally token-weighted) sums of policy-minus-reference log-probs."""
    d_w = batch.logps_w - batch.ref_logps_w
    d_l = batch.logps_l - batch.ref_logps_l
    if weights_w is not None:
        d_w, d_l = d_w * weights_w, d_l * weights_l
    return masked_sum(d_w, batch.mask_w), masked_sum(d_l, batch.mask_l)


class DPO(Method):
    name = "dpo"
    paper = "Direct Preference Optimization: Your Language Model is Secretly a Reward Model"
    arxiv = "2305.18290"
    hyperparameters = {"beta": Hyperparameter(0.1, "inverse temperature of the implicit reward")}
    logistic_antisymmetric = True

    def compute(self, batch: PairBatch) -> tuple[Tensor, dict[str, Tensor]]:
        s_w, s_l = sequence_log_ratios(batch)
        per_pair = -F.logsigmoid(self.beta * (s_w - s_l))
        return per_pair, preference_metrics(self.beta * s_w, self.beta * s_l)
