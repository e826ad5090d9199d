"""cDPO: conservative DPO (Mitchell, 2023, "A note on DPO with noisy preferences").

Each preference label is assumed flipped with probability eps (``label_smoothing``), so the loss is the
expected DPO loss under label noise:

    L = -(1 - eps) * log sigma(beta * z) - eps * log sigma(-beta * z),   z as in DPO

This is the ``label_smoothing`` of the DPO reference code's ``preference_loss``
(eric-mitchell/direct-preference-optimization), the note's own form. eps = 0 is DPO. Not TRL:
TRL >= 0.29 ignores ``label_smoothing`` for its ``sigmoid`` loss (plain DPO there).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from methods.base import Hyperparameter, Method, MethodError, PairBatch, preference_metrics
from methods.dpo import sequence_log_ratios


class CDPO(Method):
    name = "cdpo"
    paper = "A Note on DPO with Noisy Preferences & Relationship to IPO (conservative DPO)"
    arxiv = "n/a (technical note, 2023)"
    hyperparameters = {
        "beta": Hyperparameter(0.1, "inverse temperature of the implicit reward"),
        "label_smoothing": Hyperparameter(0.1, "assumed probability that a preference label is flipped"),
    }

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.label_smoothing < 0.5:
            raise MethodError(f"method 'cdpo': label_smoothing must be in [0, 0.5), got {self.label_smoothing}")

    def compute(self, batch: PairBatch) -> tuple[Tensor, dict[str, Tensor]]:
        s_w, s_l = sequence_log_ratios(batch)
        logits = self.beta * (s_w - s_l)
        eps = self.label_smoothing
        per_pair = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
        return per_pair, preference_metrics(self.beta * s_w, self.beta * s_l)
