"""Random PairBatches and an independent float64 reference of every method's loss (pure Python math)."""
from __future__ import annotations

import math

import numpy as np
import torch

from methods import PairBatch

LAYERS, HIDDEN = 3, 4


def random_batch(batch_size: int = 3, t_w: int = 7, t_l: int = 5, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> PairBatch:
    """Pairs with prompt positions (mask 0) at the start and right padding, every optional field filled."""
    g = torch.Generator().manual_seed(seed)

    def side(t: int) -> dict[str, torch.Tensor]:
        mask = torch.zeros(batch_size, t, dtype=dtype)
        for b in range(batch_size):
            start = int(torch.randint(0, 2, (1,), generator=g))
            end = t - int(torch.randint(0, 2, (1,), generator=g))
            mask[b, start:end] = 1.0
        return {
            "logps": -3 * torch.rand(batch_size, t, generator=g, dtype=dtype) - 0.05,
            "ref_logps": -3 * torch.rand(batch_size, t, generator=g, dtype=dtype) - 0.05,
            "mask": mask,
            "fkl": 0.5 * torch.rand(batch_size, t, generator=g, dtype=dtype),
            "rkl": 0.5 * torch.rand(batch_size, t, generator=g, dtype=dtype),
            "weights": 0.7 + 0.6 * torch.rand(batch_size, t, generator=g, dtype=dtype),
            "masks": torch.rand(batch_size, t, generator=g, dtype=dtype),
            "ref_hidden": torch.randn(batch_size, t, LAYERS, HIDDEN, generator=g, dtype=dtype),
        }

    w, l = side(t_w), side(t_l)
    return PairBatch(**{f"{k}_w": v for k, v in w.items()}, **{f"{k}_l": v for k, v in l.items()})


def at_reference(batch: PairBatch) -> PairBatch:
    """The same batch with policy == reference: log-ratios and per-position KLs all zero."""
    out = batch.map(lambda t: t.clone())
    out.logps_w, out.logps_l = batch.ref_logps_w.clone(), batch.ref_logps_l.clone()
    for name in ("fkl_w", "fkl_l", "rkl_w", "rkl_l"):
        setattr(out, name, torch.zeros_like(getattr(batch, name)))
    return out


def neutral_batch(method, seed: int = 4) -> PairBatch:
    """A batch at the method's neutral point (``Method.loss_at_reference``): policy == reference, and
    for a reference-free method also one policy log-prob for every token of both responses."""
    batch = at_reference(random_batch(seed=seed))
    if not method.uses_reference:
        batch.logps_w, batch.logps_l = torch.full_like(batch.logps_w, -1.3), torch.full_like(batch.logps_l, -1.3)
    return batch


def gradient_inputs(method) -> list[str]:
    """The PairBatch fields a gradient check differentiates: policy log-probs and every field the method
    needs, less those it declares it does not differentiate (``no_gradient_inputs``)."""
    names = ["logps_w", "logps_l"]
    for field in sorted(method.needs):
        names += [f"{field}_w", f"{field}_l"]
    return [n for n in names if n not in method.no_gradient_inputs]


def swapped(batch: PairBatch) -> PairBatch:
    values = {}
    for name in batch.__dataclass_fields__:
        other = name[:-2] + ("_l" if name.endswith("_w") else "_w")
        values[name] = getattr(batch, other)
    return PairBatch(**values)


# ---- independent float64 reference: Python floats and loops, no torch -----------------------------

def _rows(batch: PairBatch, name: str, side: str) -> list[list[float]]:
    return getattr(batch, f"{name}_{side}").double().tolist()


def _sum(batch: PairBatch, side: str, fn) -> list[float]:
    """Per pair: sum over completion tokens of fn(token_index_dict)."""
    mask = _rows(batch, "mask", side)
    fields = {n: _rows(batch, n, side) for n in ("logps", "ref_logps", "fkl", "rkl", "weights", "masks")
              if getattr(batch, f"{n}_{side}") is not None}
    out = []
    for b, row in enumerate(mask):
        total = 0.0
        for t, m in enumerate(row):
            if m > 0:
                total += fn({n: v[b][t] for n, v in fields.items()})
        out.append(total)
    return out


def neg_log_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x)) if x > -30 else -x + math.log1p(math.exp(x))


def count(batch: PairBatch, side: str) -> list[float]:
    return _sum(batch, side, lambda tok: 1.0)


def mask_head_reference(hidden: np.ndarray, head) -> np.ndarray:
    """The SparsePO mask head in numpy float64: LayerNorm(d) -> per-layer Linear -> ReLU -> mixer -> ReLU."""
    ln_w = head.norm.weight.detach().double().numpy()
    ln_b = head.norm.bias.detach().double().numpy()
    mean = hidden.mean(-1, keepdims=True)
    var = ((hidden - mean) ** 2).mean(-1, keepdims=True)
    h = (hidden - mean) / np.sqrt(var + head.norm.eps) * ln_w + ln_b
    per_layer = np.stack([h[:, :, l, :] @ head.layer_heads[l].weight.detach().double().numpy()[0]
                          + head.layer_heads[l].bias.detach().double().item()
                          for l in range(hidden.shape[2])], axis=-1)
    per_layer = np.maximum(per_layer, 0.0)
    mixed = per_layer @ head.mixer.weight.detach().double().numpy()[0]
    return np.maximum(mixed, 0.0)


def reference_loss(name: str, hp: dict, batch: PairBatch, method=None) -> list[float]:
    """Per-pair loss of method ``name`` worked out from methods.md with Python floats."""
    d = lambda tok: tok["logps"] - tok["ref_logps"]  # noqa: E731
    S_w, S_l = _sum(batch, "w", d), _sum(batch, "l", d)
    n_w, n_l = count(batch, "w"), count(batch, "l")
    beta = hp.get("beta")
    if name == "dpo":
        return [neg_log_sigmoid(beta * (a - b)) for a, b in zip(S_w, S_l)]
    if name in ("tdpo1", "tdpo2"):
        K_w = _sum(batch, "w", lambda tok: tok["fkl"])
        K_l = _sum(batch, "l", lambda tok: tok["fkl"])
        alpha = 1.0 if name == "tdpo1" else hp.get("alpha", 0.5)
        return [neg_log_sigmoid(beta * (sw - sl - alpha * (kl - kw))) for sw, sl, kw, kl in zip(S_w, S_l, K_w, K_l)]
    if name == "tis_dpo":
        U_w = _sum(batch, "w", lambda tok: tok["weights"] * d(tok))
        U_l = _sum(batch, "l", lambda tok: tok["weights"] * d(tok))
        z = [a - b for a, b in zip(U_w, U_l)]
        if hp.get("token_level"):
            R_w = _sum(batch, "w", lambda tok: tok["weights"] * tok["rkl"])
            R_l = _sum(batch, "l", lambda tok: tok["weights"] * tok["rkl"])
            z = [zz - hp.get("alpha", 0.5) * (rw - rl) for zz, rw, rl in zip(z, R_w, R_l)]
        return [neg_log_sigmoid(beta * zz) for zz in z]
    if name in ("bcr", "dpop"):
        lam = hp.get("lam", 1.0 if name == "bcr" else 50.0)
        delta = hp.get("delta", 0.0) if name == "bcr" else 0.0
        drop = _sum(batch, "w", lambda tok: tok["ref_logps"] - tok["logps"])
        if name == "bcr" and hp.get("normalize", "sum") == "mean":
            drop = [x / n for x, n in zip(drop, n_w)]
        over = [max(0.0, x - delta) for x in drop]
        if name == "dpop" or hp.get("placement", "additive") == "inside_sigmoid":
            return [neg_log_sigmoid(beta * (sw - sl - lam * o)) for sw, sl, o in zip(S_w, S_l, over)]
        return [neg_log_sigmoid(beta * (sw - sl)) + lam * o for sw, sl, o in zip(S_w, S_l, over)]
    if name == "sparsepo_mapo":
        u_w = _sum(batch, "w", lambda tok: tok["masks"] * d(tok))
        u_l = _sum(batch, "l", lambda tok: tok["masks"] * d(tok))
        k_w = _sum(batch, "w", lambda tok: tok["masks"] * tok["fkl"])
        k_l = _sum(batch, "l", lambda tok: tok["masks"] * tok["fkl"])
        return [neg_log_sigmoid(beta * ((a - b) - (kl - kw))) for a, b, kw, kl in zip(u_w, u_l, k_w, k_l)]
    if name == "sparsepo":
        mode = hp.get("mode", "common")
        heads = method.heads
        m = {}
        for side in "wl":
            hid = getattr(batch, f"ref_hidden_{side}").double().numpy()
            m[("u", side)] = mask_head_reference(hid, heads[0])
            m[("d", side)] = mask_head_reference(hid, heads[0 if mode == "common" else 1])
        result = []
        l1_u, l1_d = hp.get("l1_u", 0.0), hp.get("l1_d", 0.0)
        if mode == "common":
            l1_u, l1_d = l1_u / 2, l1_d / 2
        for b in range(batch.batch_size):
            terms = {}
            for side in "wl":
                mask = _rows(batch, "mask", side)[b]
                lp, lr = _rows(batch, "logps", side)[b], _rows(batch, "ref_logps", side)[b]
                fkl = _rows(batch, "fkl", side)[b]
                mu, md = m[("u", side)][b], m[("d", side)][b]
                terms[side] = (
                    sum(mu[t] * (lp[t] - lr[t]) for t in range(len(mask)) if mask[t] > 0),
                    sum(md[t] * fkl[t] for t in range(len(mask)) if mask[t] > 0),
                    sum(mu[t] for t in range(len(mask)) if mask[t] > 0),
                    sum(md[t] for t in range(len(mask)) if mask[t] > 0),
                )
            (uw, kw, l1uw, l1dw), (ul, kl, l1ul, l1dl) = terms["w"], terms["l"]
            result.append(neg_log_sigmoid(beta * ((uw - ul) - (kl - kw)))
                          + l1_u * (l1uw + l1ul) + l1_d * (l1dw + l1dl))
        return result
    if name == "ipo":
        return [((a / na) - (b / nb) - 1 / (2 * beta)) ** 2 for a, b, na, nb in zip(S_w, S_l, n_w, n_l)]
    if name == "simpo":
        P_w = _sum(batch, "w", lambda tok: tok["logps"])
        P_l = _sum(batch, "l", lambda tok: tok["logps"])
        gamma = hp.get("gamma", 0.5)  # the official gamma_beta_ratio 0.25 x beta 2.0
        losses = [neg_log_sigmoid(beta * a / na - beta * b / nb - gamma) for a, b, na, nb in zip(P_w, P_l, n_w, n_l)]
        # official SFT term: sft_weight x the mean NLL over every chosen token of the batch, spread so the
        # pairs' mean is that value: pair i carries sft_weight * B * NLL_i / N
        w, B, N = hp.get("sft_weight", 0.0), len(P_w), sum(n_w)
        return [loss + w * B * (-a) / N for loss, a in zip(losses, P_w)]
    if name == "cdpo":
        eps = hp.get("label_smoothing", 0.1)
        return [(1 - eps) * neg_log_sigmoid(beta * (a - b)) + eps * neg_log_sigmoid(-beta * (a - b))
                for a, b in zip(S_w, S_l)]
    if name == "slic_hinge":
        return [max(0.0, hp.get("delta", 1.0) - beta * (a - b)) for a, b in zip(S_w, S_l)]
    raise KeyError(name)
