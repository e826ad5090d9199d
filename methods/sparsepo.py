"""SparsePO with learnable sparse token masks (Christopoulou et al., 2024, arXiv 2410.05102).

A small head maps the reference model's hidden states of every layer to non-negative token masks:

    h = LayerNorm(ref_hidden[:, :, l, :])           (one LayerNorm shared by all layers)
    a_l = ReLU(Linear_l(h))                          (per-layer Linear(d, 1))
    m = ReLU(Mixer(a_1..a_L))                        (Linear(L, 1, bias=False))

m >= 0 and unbounded above; sparsity comes from exact ReLU zeros plus the L1 terms:

    u = sum_t m_u d_t(y_w) - sum_t m_u d_t(y_l)
    k = sum_t m_d fkl_t(y_l) - sum_t m_d fkl_t(y_w)
    L = -log sigma(beta * (u - k)) + l1_u * (|m_u(y_w)|_1 + |m_u(y_l)|_1) + l1_d * (|m_d(y_w)|_1 + |m_d(y_l)|_1)

"common": one head gives m_u = m_d (the official code then halves each L1 weight);
"independent": two heads. The L1 norms are per-pair sums over completion tokens. The head trains
jointly with the policy in its own optimizer group (the trainer applies weight decay 0.01 to it).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from methods.base import Hyperparameter, Method, MethodError, PairBatch, masked_sum
from methods.sparsepo_mapo import mask_statistics, sparsepo_objective


class SparseMaskHead(nn.Module):
    """Shared LayerNorm -> per-layer Linear(d, 1) -> ReLU -> mixer Linear(L, 1, no bias) -> ReLU."""

    def __init__(self, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.layer_heads = nn.ModuleList(nn.Linear(hidden_size, 1) for _ in range(num_layers))
        self.mixer = nn.Linear(num_layers, 1, bias=False)
        # Not specified by the paper: start the mixer as an average of the layers, so that a fresh
        # head is not dead (a default init can make every mixer weight negative -> all-zero masks).
        nn.init.constant_(self.mixer.weight, 1.0 / num_layers)

    def forward(self, hidden: Tensor) -> Tensor:
        """[B, T, L, d] -> [B, T]"""
        if hidden.shape[-2] != len(self.layer_heads):
            raise MethodError(f"SparsePO mask head built for {len(self.layer_heads)} layers got "
                              f"ref_hidden with {hidden.shape[-2]} layers")
        h = self.norm(hidden.to(self.mixer.weight.dtype))
        weight = torch.cat([head.weight for head in self.layer_heads])  # [L, d]
        bias = torch.cat([head.bias for head in self.layer_heads])  # [L]
        per_layer = torch.relu(torch.einsum("btld,ld->btl", h, weight) + bias)
        return torch.relu(self.mixer(per_layer)).squeeze(-1)


class SparsePO(Method):
    name = "sparsepo"
    paper = "SparsePO: Controlling Preference Alignment of LLMs via Sparse Token Masks (learnable masks)"
    arxiv = "2410.05102"
    hyperparameters = {
        "beta": Hyperparameter(0.1, "inverse temperature of the implicit reward"),
        "mode": Hyperparameter("common", "one mask head for reward and KL, or two", ("common", "independent")),
        "l1_u": Hyperparameter(0.0, "L1 weight on the reward mask"),
        "l1_d": Hyperparameter(0.0, "L1 weight on the KL mask"),
    }
    needs = frozenset({"fkl", "ref_hidden"})

    def validate(self) -> None:
        super().validate()
        if self.l1_u < 0 or self.l1_d < 0:
            raise MethodError(f"method 'sparsepo': L1 weights must be >= 0, got l1_u={self.l1_u}, l1_d={self.l1_d}")
        self.heads = nn.ModuleList()
        # the L1 terms are neither antisymmetric under the swap nor zero at the reference
        self.logistic_antisymmetric = self.l1_u == 0 and self.l1_d == 0

    def loss_at_reference(self) -> float | None:
        return math.log(2.0) if self.logistic_antisymmetric else None

    def setup(self, hidden_size: int, num_layers: int) -> None:
        count = 1 if self.mode == "common" else 2
        self.heads = nn.ModuleList(SparseMaskHead(hidden_size, num_layers) for _ in range(count))

    def modules(self) -> list[nn.Module]:  # type: ignore[override]
        return list(self.heads)

    def compute(self, batch: PairBatch) -> tuple[Tensor, dict[str, Tensor]]:
        if not len(self.heads):
            raise MethodError("method 'sparsepo': call setup(hidden_size, num_layers) before loss() "
                              "so the mask head exists (and is given to the optimizer)")
        mu_w, mu_l = (self.heads[0](batch.ref_hidden_w) * batch.mask_w,
                      self.heads[0](batch.ref_hidden_l) * batch.mask_l)
        if self.mode == "common":
            md_w, md_l = mu_w, mu_l
            l1_u, l1_d = self.l1_u / 2, self.l1_d / 2
        else:
            md_w, md_l = (self.heads[1](batch.ref_hidden_w) * batch.mask_w,
                          self.heads[1](batch.ref_hidden_l) * batch.mask_l)
            l1_u, l1_d = self.l1_u, self.l1_d
        per_pair, metrics = sparsepo_objective(batch, mu_w, mu_l, md_w, md_l, self.beta)
        l1 = (l1_u * (masked_sum(mu_w, batch.mask_w) + masked_sum(mu_l, batch.mask_l))
              + l1_d * (masked_sum(md_w, batch.mask_w) + masked_sum(md_l, batch.mask_l)))
        per_pair = per_pair + l1
        metrics.update(mask_statistics("mask_u", mu_w, mu_l, batch))
        if self.mode == "independent":
            metrics.update(mask_statistics("mask_d", md_w, md_l, batch))
        return per_pair, metrics
