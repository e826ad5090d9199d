"""Shared token math (chunked log-probs / per-position KL) and the method helpers: MaPO masks, TIS weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.activations import record_activations
from methods.sparsepo_mapo import activation_mask, activation_masks
from methods.tis_dpo import clip_weights, contrastive_scores, exp_weights, rank_weights, token_weights
from methods.token_math import fkl_from_reference_summary, shift_for_next_token, token_stats


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


def test_the_log_normaliser_is_returned_with_its_gradient():
    labels, mask = _labels_and_mask()
    policy = _logits(11).requires_grad_(True)
    stats = token_stats(policy, labels, mask, chunk_size=4)
    expected = policy.detach().logsumexp(-1) * mask
    assert torch.allclose(stats.lse, expected, atol=1e-12)
    weights = torch.rand(2, 9, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    (weights * stats.lse).sum().backward()  # d lse / dz = softmax(z), at completion positions only
    assert torch.allclose(policy.grad, (weights * mask).unsqueeze(-1) * policy.detach().softmax(-1), atol=1e-12)


def test_fkl_from_the_reference_summary_equals_the_full_vocabulary_kl_and_its_gradient():
    """Two models sharing one linear output layer (W, b): KL(p_ref || p_theta) from the reference's final
    hidden state, expected output embedding and log-normaliser equals the vocabulary sum, in float64,
    value and gradient with respect to the policy's hidden states (what the trainer backpropagates)."""
    g = torch.Generator().manual_seed(13)
    n, d, vocab = 7, 5, 40
    weight = torch.randn(vocab, d, generator=g, dtype=torch.float64)
    bias = torch.randn(vocab, generator=g, dtype=torch.float64)
    ref_hidden = torch.randn(n, d, generator=g, dtype=torch.float64)
    hidden = (ref_hidden + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)).requires_grad_(True)
    ref_logits = ref_hidden @ weight.T + bias
    q = ref_logits.softmax(-1)

    direct_hidden = hidden.detach().clone().requires_grad_(True)
    log_p, log_q = (direct_hidden @ weight.T + bias).log_softmax(-1), ref_logits.log_softmax(-1)
    direct = (q * (log_q - log_p)).sum(-1)

    logits = hidden @ weight.T + bias
    labels, ones = torch.zeros(1, n, dtype=torch.long), torch.ones(1, n)
    lse = token_stats(logits[None], labels, ones).lse[0]
    summary = fkl_from_reference_summary(lse, hidden, ref_logits.logsumexp(-1), ref_hidden, q @ weight)

    assert torch.allclose(summary, direct, atol=1e-12) and (direct > 0).all()
    upstream = torch.rand(n, generator=g, dtype=torch.float64)
    (upstream * summary).sum().backward()
    (upstream * direct).sum().backward()
    assert torch.allclose(hidden.grad, direct_hidden.grad, atol=1e-12)
    # where the policy still is the reference it is 0 (up to rounding), as the full sum is
    same = fkl_from_reference_summary(ref_logits.logsumexp(-1), ref_hidden, ref_logits.logsumexp(-1), ref_hidden,
                                      q @ weight)
    assert same.abs().max() == 0


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


def test_official_four_types_record_mlp_post_activation_attention_residual_and_logits():
    from transformers import LlamaConfig, LlamaForCausalLM

    from methods.activations import OFFICIAL_FOUR_TYPES

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 5))
    with record_activations(model, OFFICIAL_FOUR_TYPES) as acts, record_activations(model) as seven, \
            torch.no_grad():
        model(input_ids=ids)
    assert sorted(acts) == ["attention", "logits", "mlp_post", "residual"]
    # per layer: MLP post-activation = the down projection's input act(gate) * up, [B, T, intermediate]
    assert len(acts["mlp_post"]) == 2 and acts["mlp_post"][0].shape == (2, 5, 32)
    # per layer: q, k, v projections, rotary q and k, and the value output (the o_proj input): 6
    assert len(acts["attention"]) == 12
    q_proj, rotary_q = seven["attn_q"][0], acts["attention"][3]
    assert rotary_q.shape == q_proj.shape == (2, 5, 16)
    # the rotary embedding rotates pairs of each head's dims: norms per head kept, position 0 unrotated
    per_head = lambda t: t.view(2, 5, 2, 8).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(per_head(rotary_q), per_head(q_proj))
    torch.testing.assert_close(rotary_q[:, 0], q_proj[:, 0])
    assert not torch.allclose(rotary_q[:, 1:], q_proj[:, 1:])
    assert acts["attention"][4].shape == (2, 5, 8)  # rotary k: one key-value head
    # residual stream per layer: input, between attention and MLP, output; layer 0's output is layer 1's input
    residual = acts["residual"]
    assert len(residual) == 6
    torch.testing.assert_close(residual[2], residual[3])
    torch.testing.assert_close(residual[1], residual[0] + seven["attn_out"][0])
    assert len(acts["logits"]) == 1 and acts["logits"][0].shape == (2, 5, 64)
    # four types of equal weight: each type's hooks averaged first
    mask = torch.ones(2, 5)
    expected = sum(torch.stack([activation_mask(a, mask) for a in acts[kind]]).mean(0) for kind in acts) / 4
    torch.testing.assert_close(activation_masks(acts, mask), expected)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_official_four_types_on_a_gpt_neox_record_the_same_points():
    """GPT-NeoX (Pythia, the TDPO paper's model): fused q/k/v, parallel residual, ``embed_out``."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from methods.activations import OFFICIAL_FOUR_TYPES

    config = GPTNeoXConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 5))
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):  # returns None: the module's output is left as it is
            seen[name] = args[0]
        return hook

    layer = model.gpt_neox.layers[0]
    handles = [layer.mlp.dense_4h_to_h.register_forward_hook(keep("mlp_in")),
               layer.attention.dense.register_forward_hook(keep("attn_dense_in"))]
    with record_activations(model, OFFICIAL_FOUR_TYPES) as acts, torch.no_grad():
        out = model(input_ids=ids)
    for h in handles:
        h.remove()
    assert sorted(acts) == ["attention", "logits", "mlp_post", "residual"]
    # MLP post-activation: the input of the output projection dense_4h_to_h, [B, T, intermediate]
    assert len(acts["mlp_post"]) == 2
    torch.testing.assert_close(acts["mlp_post"][0], seen["mlp_in"])
    # attention per layer: rotary q and k (the fused query_key_value has no separate q/k/v modules) and the
    # value output (the input of attention.dense)
    assert len(acts["attention"]) == 6 and all(t.shape == (2, 5, 16) for t in acts["attention"])
    assert any(torch.equal(t, seen["attn_dense_in"]) for t in acts["attention"][:3])
    # residual per layer: input, the MLP branch's layer-norm input, output; layer 0's output is layer 1's input
    assert len(acts["residual"]) == 6
    torch.testing.assert_close(acts["residual"][2], acts["residual"][3])
    # logits: embed_out
    assert len(acts["logits"]) == 1
    torch.testing.assert_close(acts["logits"][0], out.logits)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_mapo_uses_the_official_four_types_by_default_and_keys_the_grouping():
    import methods
    from methods.activations import OFFICIAL_FOUR_TYPES, SEVEN_HOOK_TYPES

    default = methods.get("sparsepo_mapo")
    assert default.activation_points() == OFFICIAL_FOUR_TYPES
    # always keyed: the earlier default ({"beta": 0.1} alone) must never match the new default's key
    assert default.hparams() == {"beta": 0.1, "activation_grouping": "official_four_types"}
    first_reading = methods.get("sparsepo_mapo", activation_grouping="seven_hook_types")
    assert first_reading.activation_points() == SEVEN_HOOK_TYPES
    # pinned, the earlier default keeps the earlier key
    assert first_reading.hparams() == {"beta": 0.1}
    with pytest.raises(methods.MethodError, match="activation_grouping='four' is not one of"):
        methods.get("sparsepo_mapo", activation_grouping="four")


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


def test_rank_weights_with_the_official_rounding_and_position_ties_by_hand():
    raw = torch.tensor([[0.301, 0.104, 0.299, 0.2]], dtype=torch.float64)
    mask = torch.ones(1, 4)
    # default: no rounding, four distinct scores -> ranks 3, 0, 2, 1 -> 0.7 + 0.6 * r / 3
    assert rank_weights(raw, mask)[0].tolist() == pytest.approx([1.3, 0.7, 1.1, 0.9])
    # official: rounded to 0.30, 0.10, 0.30, 0.20; the tie of 0.30 broken by position (earlier ranks lower):
    # ranks 2, 0, 3, 1
    official = rank_weights(raw, mask, decimals=2, ties="position")
    assert official[0].tolist() == pytest.approx([1.1, 0.7, 1.3, 0.9])
    # rounded but ties averaged: 0.30 and 0.30 share rank 2.5
    assert rank_weights(raw, mask, decimals=2)[0].tolist() == pytest.approx([1.2, 0.7, 1.2, 0.9])
    # position ties count only valid tokens: the masked first token does not push the others up
    masked = rank_weights(torch.tensor([[5.0, 1.0, 1.0, 1.0]]), torch.tensor([[0, 1, 1, 1]]), ties="position")
    assert masked[0].tolist() == pytest.approx([0.0, 0.7, 1.0, 1.3])
    with pytest.raises(ValueError, match="ties='random' is not one of"):
        rank_weights(raw, mask, ties="random")


def test_clip_weights_at_the_official_bound_by_hand():
    raw = torch.tensor([[-2.0, -1.5, 0.0, 0.75, 3.0]])
    mask = torch.ones(1, 5)
    # clip at +-1.5, then 0.7 + 0.6 * (c + 1.5) / 3
    assert clip_weights(raw, mask, clip_low=-1.5, clip_high=1.5)[0].tolist() == pytest.approx(
        [0.7, 0.7, 1.0, 1.15, 1.3])
    # the default bound +-1: 0.7 + 0.6 * (c + 1) / 2
    assert clip_weights(raw, mask)[0].tolist() == pytest.approx([0.7, 0.7, 1.0, 1.225, 1.3])


def test_official_transform_is_the_default_and_fills_in_the_official_details():
    from bench.stages.tis_weights import TISWeightOptions

    # the official details are the default; pobench's first reading is official_transform: false
    assert TISWeightOptions().effective_transform_options() == {"decimals": 2, "ties": "position"}
    assert TISWeightOptions(official_transform=False).effective_transform_options() == {}
    clip = TISWeightOptions(transform="clip", transform_options={"low": 0.5})
    assert clip.effective_transform_options() == {"clip_low": -1.5, "clip_high": 1.5, "low": 0.5}
    # the new default is keyed, so a preparation cached under the earlier default (dumped without the
    # field) never matches it; the earlier value, pinned, dumps as before
    assert TISWeightOptions().model_dump()["official_transform"] is True
    assert "official_transform" not in TISWeightOptions(official_transform=False).model_dump()


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
