"""A reference-free ranking hinge, after RRHF's ranking loss (Yuan et al., 2023, arXiv 2304.05302).

    p(y) = mean_t log pi(y_t | x, y_<t)                 (length-normalised, no reference model)
    L = max(0, gamma - beta * (p(y_w) - p(y_l)))

RRHF itself uses gamma = 0 and adds an SFT term on the best response; this keeps only the pairwise
hinge with a margin. A second third-party example: its loss at the neutral point is gamma, not log 2,
and it is reference-free, so the shared tests learn both from what the class declares.
"""
import torch.nn.functional as F

from methods import Hyperparameter, Method
from methods.base import masked_sum, preference_metrics


class RankHinge(Method):
    name = "rank_hinge"
    paper = "RRHF: Rank Responses to Align Language Models with Human Feedback (pairwise ranking hinge)"
    arxiv = "2304.05302"
    hyperparameters = {
        "beta": Hyperparameter(1.0, "scale of the length-normalised log-likelihood"),
        "gamma": Hyperparameter(0.5, "hinge margin"),
    }
    uses_reference = False

    def compute(self, batch):
        p_w = masked_sum(batch.logps_w, batch.mask_w) / batch.mask_w.sum(-1)
        p_l = masked_sum(batch.logps_l, batch.mask_l) / batch.mask_l.sum(-1)
        per_pair = F.relu(self.gamma - self.beta * (p_w - p_l))
        return per_pair, preference_metrics(self.beta * p_w, self.beta * p_l)

    def loss_at_reference(self):
        # equal per-token log-probs in both responses: p(y_w) = p(y_l), only the margin is left
        return max(0.0, self.gamma)
