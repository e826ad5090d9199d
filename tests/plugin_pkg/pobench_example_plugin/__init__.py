"""A method that lives outside pobench: SLiC-HF's calibration loss (Zhao et al., 2023, arXiv 2305.10425).

    L = max(0, delta - beta * (S(y_w) - S(y_l)))       (hinge on the reference-relative margin)

Only here to prove that third-party methods register through the ``pobench.methods`` entry point
and get the shared property tests for free (``rank_hinge``, in its own module, is a second one).
"""
import torch.nn.functional as F

from methods import Hyperparameter, Method
from methods.base import masked_sum, preference_metrics


class SLiCHinge(Method):
    name = "slic_hinge"
    paper = "SLiC-HF: Sequence Likelihood Calibration with Human Feedback (reference-relative hinge)"
    arxiv = "2305.10425"
    hyperparameters = {
        "beta": Hyperparameter(0.1, "scale of the log-ratio margin"),
        "delta": Hyperparameter(1.0, "hinge margin"),
    }

    def compute(self, batch):
        s_w = masked_sum(batch.logps_w - batch.ref_logps_w, batch.mask_w)
        s_l = masked_sum(batch.logps_l - batch.ref_logps_l, batch.mask_l)
        per_pair = F.relu(self.delta - self.beta * (s_w - s_l))
        return per_pair, preference_metrics(self.beta * s_w, self.beta * s_l)

    def loss_at_reference(self):
        return max(0.0, self.delta)  # S(y_w) = S(y_l) = 0: the hinge margin, not log 2
