"""Shared token math (chunked log-probs / per-position KL) and the method helpers: MaPO masks, TIS weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.activations import record_activations
from methods.sparsepo_mapo import activation_mask, activation_masks
from methods.tis_dpo import clip_weights, contrastive_scores, exp_weights, rank_weights, token_weights
from methods.token_math import shift_for_next_token, token_stats


def _logits(seed: int, shape=(2, 9, 50), dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 3


def _labels_and_mask(B=2, T=9, V=50):
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(B, T)
    mask[0, :3] = 0   # prompt
    mask[1, -2:] = 0  # padding
    labels[1, -2:] = -100
    return labels, mask


def test_token_stats_match_float64_definitions():
    policy, ref = _logits(0), _logits(1)
    labels, mask = _labels_and_mask()
    stats = token_stats(policy, labels, mask, ref, fkl=True, rkl=True, chunk_size=4)
    lp, lr = policy.log_softmax(-1), ref.log_softmax(-1)
    for b in range(2):
        for t in range(9):
            if mask[b, t] == 0:
                assert stats.logps[b, t] == 0 and stats.fkl[b, t] == 0
                continue
            y = labels[b, t]
            assert stats.logps[b, t].item() == pytest.approx(lp[b, t, y].item(), rel=1e-12)
            assert stats.ref_logps[b, t].item() == pytest.approx(lr[b, t, y].item(), rel=1e-12)
            p_ref, p_pol = lr[b, t].exp(), lp[b, t].exp()
            assert stats.fkl[b, t].item() == pytest.approx(float((p_ref * (lr[b, t] - lp[b, t])).sum()), rel=1e-10)
            assert stats.rkl[b, t].item() == pytest.approx(float((p_pol * (lp[b, t] - lr[b, t])).sum()), rel=1e-10)
    assert (stats.fkl >= 0).all() and (stats.rkl >= 0).all()


def test_kl_is_zero_when_models_agree_and_logps_equal():
    logits = _logits(2)
    labels, mask = _labels_and_mask()
    stats = token_stats(logits, labels, mask, logits.clone(), fkl=True, rkl=True)
    assert stats.fkl.abs().max() < 1e-12 and stats.rkl.abs().max() < 1e-12
    assert torch.equal(stats.logps, stats.ref_logps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_equals_unchunked_values_and_gradients(dtype):
    labels, mask = _labels_and_mask(T=33, V=301)
    results = []
    for chunk_size in (5, 10_000):
        policy = _logits(3, (2, 33, 301), torch.float32).to(dtype).requires_grad_(True)
        ref = _logits(4, (2, 33, 301), torch.float32).to(dtype)
        stats = token_stats(policy, labels, mask, ref, fkl=True, rkl=True, chunk_size=chunk_size)
        assert stats.logps.dtype == torch.float32  # computed in fp32 whatever the logits' dtype
        (stats.logps.sum() + stats.fkl.sum() - 0.5 * stats.rkl.sum()).backward()
        results.append((stats, policy.grad.float()))
    (a, grad_a), (b, grad_b) = results
    for name in ("logps", "ref_logps", "fkl", "rkl"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-6, rtol=0), name
    assert torch.allclose(grad_a, grad_b, atol=1e-6, rtol=0)


def test_gradient_matches_plain_autograd_in_float64():
    labels, mask = _labels_and_mask()
    policy = _logits(5).requires_grad_(True)
    ref = _logits(6)
    stats = token_stats(policy, labels, mask, ref, fkl=True, rkl=True, chunk_size=3)
    (stats.logps.sum() + stats.fkl.sum() + 0.3 * stats.rkl.sum()).backward()
    direct = _logits(5).requires_grad_(True)
    lp, lr = direct.log_softmax(-1), ref.log_softmax(-1)
    gathered = lp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    fkl = (lr.exp() * (lr - lp)).sum(-1)
    rkl = (lp.exp() * (lp - lr)).sum(-1)
    ((gathered + fkl + 0.3 * rkl) * mask).sum().backward()
    assert torch.allclose(policy.grad, direct.grad, atol=1e-12)


def test_analytic_backward_passes_gradcheck_for_every_output():
    labels, mask = _labels_and_mask(B=2, T=5, V=7)
    ref = _logits(8, (2, 5, 7))
    weights = torch.rand(3, 2, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def f(policy):
        s = token_stats(policy, labels, mask, ref, fkl=True, rkl=True, chunk_size=3)
        return (weights[0] * s.logps + weights[1] * s.fkl + weights[2] * s.rkl).sum()

    assert torch.autograd.gradcheck(f, (_logits(7, (2, 5, 7)).requires_grad_(True),), eps=1e-6, atol=1e-8)


def test_non_contiguous_logits_slice_is_accepted():
    logits = _logits(10, (2, 10, 50))
    labels, mask = _labels_and_mask()
    a = token_stats(logits[:, :-1], labels, mask)
    b = token_stats(logits[:, :-1].contiguous(), labels, mask)
    assert torch.equal(a.logps, b.logps)


def test_shift_aligns_logits_with_next_token():
    logits = torch.zeros(1, 4, 7)
    ids = torch.tensor([[1, 2, 3, 4]])
    completion = torch.tensor([[0, 0, 1, 1]])
    shifted_logits, labels, mask = shift_for_next_token(logits, ids, completion)
    assert shifted_logits.shape[1] == 3 and labels.tolist() == [[2, 3, 4]] and mask.tolist() == [[0, 1, 1]]


def test_token_stats_without_reference_and_errors():
    labels, mask = _labels_and_mask()
    assert token_stats(_logits(0), labels, mask).ref_logps is None
    with pytest.raises(ValueError, match="need ref_logits"):
        token_stats(_logits(0), labels, mask, fkl=True)


# ---- SparsePO activation masks ----------------------------------------------------------------

def test_activation_mask_is_minmax_of_the_z_normalised_hidden_mean():
    g = torch.Generator().manual_seed(0)
    act = torch.randn(2, 6, 8, generator=g, dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.float64)
    got = activation_mask(act, mask)
    for b in range(2):
        values = act[b].mean(-1).numpy()[mask[b].numpy() > 0]
        z = (values - values.mean()) / values.std(ddof=1)  # the paper's z-normalisation, then min-max
        expected = (z - z.min()) / (z.max() - z.min())
        assert got[b][mask[b] > 0].tolist() == pytest.approx(expected.tolist(), abs=1e-12)
        assert (got[b][mask[b] == 0] == 0).all()


def test_activation_mask_degenerate_responses_are_all_ones_not_nan():
    act = torch.ones(2, 4, 3)
    mask = torch.tensor([[0, 0, 1, 0], [0, 1, 1, 1]], dtype=torch.float32)  # one token; constant values
    got = activation_mask(act, mask)
    assert torch.isfinite(got).all()
    assert got.tolist() == [[0, 0, 1, 0], [0, 1, 1, 1]]


def test_activation_masks_average_hooks_within_type_then_types():
    mask = torch.ones(1, 3)
    a = torch.tensor([[[0.0], [1.0], [2.0]]])   # -> [0, .5, 1]
    b = torch.tensor([[[2.0], [1.0], [0.0]]])   # -> [1, .5, 0]
    c = torch.tensor([[[0.0], [0.0], [3.0]]])   # -> [0, 0, 1]
    got = activation_masks({"mlp": [a, b], "logits": [c]}, mask)
    # type means: mlp = [.5, .5, .5], logits = [0, 0, 1] -> average of types
    assert got[0].tolist() == pytest.approx([0.25, 0.25, 0.75])


def test_record_activations_hooks_every_type_of_a_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval()
    with record_activations(model) as acts, torch.no_grad():
        model(input_ids=torch.randint(0, 64, (2, 5)))
    assert sorted(acts) == ["attn_k", "attn_out", "attn_q", "attn_v", "logits", "mlp", "residual"]
    assert all(len(acts[k]) == 2 for k in acts if k != "logits") and len(acts["logits"]) == 1
    assert acts["residual"][0].shape == (2, 5, 16) and acts["logits"][0].shape == (2, 5, 64)
    masks = activation_masks(acts, torch.ones(2, 5))
    assert masks.shape == (2, 5) and float(masks.min()) >= 0 and float(masks.max()) <= 1
    # hooks are removed afterwards
    assert all(not m._forward_hooks for m in model.modules())


# ---- TIS-DPO weight transforms ----------------------------------------------------------------

def test_contrastive_scores_negated_for_rejected():
    plus, minus = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    assert contrastive_scores(plus, minus, rejected=False).tolist() == [[0.5, -1.0]]
    assert contrastive_scores(plus, minus, rejected=True).tolist() == [[-0.5, 1.0]]


def test_rank_weights_by_hand():
    raw = torch.tensor([[0.3, -2.0, 5.0, 0.3, 9.0, 7.0]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1]])
    eos = torch.tensor([[0, 0, 0, 0, 0, 1]])
    # valid scored tokens: -2.0, 5.0, 0.3, 9.0 -> ranks 0, 2, 1, 3 of n=4 -> 0.7 + 0.6 * r/3
    got = rank_weights(raw, mask, eos)
    assert got[0].tolist() == pytest.approx([0.0, 0.7, 1.1, 0.9, 1.3, 0.0])
    ties = rank_weights(torch.tensor([[1.0, 1.0, 2.0]]), torch.ones(1, 3))
    assert ties[0].tolist() == pytest.approx([0.85, 0.85, 1.3])  # tied ranks averaged: 0.5, 0.5, 2
    single = rank_weights(torch.tensor([[4.0, 1.0]]), torch.tensor([[0, 1]]))
    assert single[0].tolist() == pytest.approx([0.0, 1.0])


def test_clip_and_exp_weights_by_hand():
    raw = torch.tensor([[-3.0, -0.5, 0.0, 0.5, 3.0]])
    mask = torch.ones(1, 5)
    assert clip_weights(raw, mask)[0].tolist() == pytest.approx([0.7, 0.85, 1.0, 1.15, 1.3])
    eos = torch.tensor([[0, 0, 0, 0, 1]])
    assert exp_weights(raw, mask, eos, k=2.0, mu=0.5)[0].tolist() == pytest.approx(
        [2 * np.exp(-0.5), 2 * np.exp(-0.25), 2.0, 2 * np.exp(0.25), 0.0])


def test_token_weights_lie_in_range_and_reject_unknown_transform():
    g = torch.Generator().manual_seed(0)
    plus, minus = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    mask = torch.ones(3, 8)
    w = token_weights(plus, minus, mask, rejected=True, transform="rank")
    assert float(w.min()) >= 0.7 - 1e-6 and float(w.max()) <= 1.3 + 1e-6
    # rejected: the token the "good" model prefers least relative to the bad one gets the top weight
    raw = plus - minus
    assert (w.argmax(-1) == raw.argmin(-1)).all()
    with pytest.raises(ValueError, match="transform 'softmax' is not one of"):
        token_weights(plus, minus, mask, rejected=False, transform="softmax")
