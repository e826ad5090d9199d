"""SimPO: Simple Preference Optimization with a reference-free reward (Meng et al., 2024, arXiv 2405.14734).

    r(y) = beta * mean_t log pi(y_t | x, y_<t)       (length-normalised, no reference model)
    L = -log sigma(r(y_w) - r(y_l) - gamma) + sft_weight * NLL(y_w)

Defaults are the official code's (princeton-nlp/SimPO): beta 2.0 and ``gamma_beta_ratio`` 0.25, i.e. a
margin gamma = 0.25 * 2.0 = 0.5 in reward units; ``sft_weight`` 0. The official SFT term is
``nn.CrossEntropyLoss`` on the chosen responses' completion tokens: the mean NLL over every chosen
token of the micro-batch (not a mean of per-response means). Spread over the pairs so that their mean
is that loss, pair i carries ``sft_weight * B * sum_t NLL_i,t / N``, with B pairs and N chosen tokens
in the micro-batch: with ``sft_weight`` > 0 a pair's loss depends on the other responses' lengths.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from methods.base import Hyperparameter, Method, MethodError, PairBatch, masked_sum, preference_metrics


class SimPO(Method):
    name = "simpo"
    paper = "SimPO: Simple Preference Optimization with a Reference-Free Reward"
    arxiv = "2405.14734"
    hyperparameters = {
        "beta": Hyperparameter(2.0, "scale of the length-normalised log-likelihood reward"),
        "gamma": Hyperparameter(0.5, "target reward margin (official: gamma_beta_ratio 0.25 x beta 2.0)"),
        "sft_weight": Hyperparameter(0.0, "weight of the chosen responses' NLL (mean over the micro-batch's "
                                     "chosen tokens, as the official code)", omit_at_default=True),
    }
    uses_reference = False

    def validate(self) -> None:
        super().validate()
        if self.sft_weight < 0:
            raise MethodError(f"method 'simpo': sft_weight must be >= 0, got {self.sft_weight}")

    def compute(self, batch: PairBatch) -> tuple[Tensor, dict[str, Tensor]]:
        r_w = self.beta * masked_sum(batch.logps_w, batch.mask_w) / batch.mask_w.sum(-1)
        r_l = self.beta * masked_sum(batch.logps_l, batch.mask_l) / batch.mask_l.sum(-1)
        per_pair = -F.logsigmoid(r_w - r_l - self.gamma)
        metrics = preference_metrics(r_w, r_l)
        if self.sft_weight > 0:
            nll = -masked_sum(batch.logps_w, batch.mask_w)                 # [B] token sums
            tokens = batch.mask_w.sum()
            per_pair = per_pair + self.sft_weight * nll * batch.batch_size / tokens
            metrics["simpo/sft_nll"] = (nll.sum() / tokens).detach()
        return per_pair, metrics

    def loss_at_reference(self) -> float | None:
        """Equal per-token log-probs give r(y_w) = r(y_l): only the margin is left, -log sigma(-gamma).
        With an SFT term the loss also depends on those log-probs' value: no single value."""
        if self.sft_weight > 0:
            return None
        return math.log1p(math.exp(self.gamma))
