"""Shared token math: logits -> token log-probs and per-position KL, in fp32 and in chunks.

Every method consumes the same per-token quantities (methods.md, "Notation"):
``lp_t`` / ``lr_t`` (gathered log-probs of policy / reference) and, for the token-level
methods, the full-vocabulary forward KL ``fkl_t = KL(p_ref || p_theta)`` and reverse KL
``rkl_t = KL(p_theta || p_ref)`` at each completion position.

Why by hand: no library computes the per-position vocabulary KL of two models' logits with
bounded memory. A naive ``log_softmax`` of [B, T, V] bf16 logits materialises several fp32
copies of size B*T*V (log-softmax of both models, their exp, the products) and autograd keeps
them for backward. Here only completion positions are processed, ``chunk_size`` positions at a
time, each chunk inside an activation checkpoint, so the extra memory is one chunk's fp32
workspace whatever T is; the backward pass recomputes a chunk's softmax instead of storing it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


@dataclass
class TokenStats:
    """[B, T] tensors, zero outside the completion mask (None where not requested)."""

    logps: Tensor
    ref_logps: Tensor | None = None
    fkl: Tensor | None = None
    rkl: Tensor | None = None


def shift_for_next_token(logits: Tensor, input_ids: Tensor, completion_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Align logits at position t with the token at t+1: returns (logits[:, :-1], labels, mask)."""
    return logits[:, :-1], input_ids[:, 1:], completion_mask[:, 1:]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half/bf16/fp32 logits; fp64 stays fp64 (for exact tests)."""
    return torch.promote_types(dtype, torch.float32)


def _chunk(policy_flat: Tensor, ref_flat: Tensor | None, labels_flat: Tensor, index: Tensor,
           want_fkl: bool, want_rkl: bool) -> tuple[Tensor, ...]:
    labels = labels_flat.index_select(0, index).unsqueeze(-1)
    dtype = _compute_dtype(policy_flat.dtype)
    pol_lp = policy_flat.index_select(0, index).to(dtype).log_softmax(-1)
    outputs = [pol_lp.gather(-1, labels).squeeze(-1)]
    if ref_flat is not None:
        ref_lp = ref_flat.index_select(0, index).to(dtype).log_softmax(-1)
        outputs.append(ref_lp.gather(-1, labels).squeeze(-1))
        if want_fkl:
            outputs.append((ref_lp.exp() * (ref_lp - pol_lp)).sum(-1))
        if want_rkl:
            outputs.append((pol_lp.exp() * (pol_lp - ref_lp)).sum(-1))
    return tuple(outputs)


def token_stats(policy_logits: Tensor, labels: Tensor, mask: Tensor, ref_logits: Tensor | None = None, *,
                fkl: bool = False, rkl: bool = False, chunk_size: int = 256) -> TokenStats:
    """Token log-probs (and optionally forward/reverse KL) at completion positions.

    Args:
        policy_logits: [B, T, V] logits whose position t predicts ``labels[:, t]`` (already shifted).
        labels: [B, T] target token ids (values at masked positions are ignored, -100 allowed).
        mask: [B, T] 1.0 on completion tokens.
        ref_logits: [B, T, V] reference logits (treated as constants) or None.
        fkl / rkl: also compute KL(ref || policy) / KL(policy || ref) per position (needs ref_logits).
        chunk_size: completion positions processed at once.
    """
    if (fkl or rkl) and ref_logits is None:
        raise ValueError("token_stats: fkl/rkl need ref_logits")
    if policy_logits.shape[:2] != labels.shape or labels.shape != mask.shape:
        raise ValueError(f"token_stats: shapes differ: logits {tuple(policy_logits.shape)}, "
                         f"labels {tuple(labels.shape)}, mask {tuple(mask.shape)}")
    B, T, V = policy_logits.shape
    policy_flat = policy_logits.reshape(B * T, V)
    ref_flat = None if ref_logits is None else ref_logits.detach().reshape(B * T, V)
    labels_flat = labels.reshape(B * T).clamp(min=0)
    positions = (mask.reshape(B * T) > 0).nonzero().flatten()

    n_out = 1 + (ref_flat is not None) + fkl + rkl
    pieces: list[list[Tensor]] = [[] for _ in range(n_out)]
    use_checkpoint = torch.is_grad_enabled() and policy_logits.requires_grad
    for start in range(0, positions.numel(), chunk_size):
        index = positions[start:start + chunk_size]
        if use_checkpoint:
            outs = checkpoint(_chunk, policy_flat, ref_flat, labels_flat, index, fkl, rkl, use_reentrant=False)
        else:
            outs = _chunk(policy_flat, ref_flat, labels_flat, index, fkl, rkl)
        for bucket, out in zip(pieces, outs):
            bucket.append(out)

    dtype = _compute_dtype(policy_logits.dtype)
    results = []
    for bucket in pieces:
        values = torch.cat(bucket) if bucket else policy_logits.new_zeros(0, dtype=dtype)
        full = values.new_zeros(B * T).index_put((positions,), values)
        results.append(full.reshape(B, T))
    it = iter(results)
    logps = next(it)
    ref_logps = next(it) if ref_flat is not None else None
    return TokenStats(logps=logps, ref_logps=ref_logps,
                      fkl=next(it) if fkl else None, rkl=next(it) if rkl else None)
