"""Every method's loss against methods.md worked out independently in float64, plus gradcheck."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import methods
from tests.methods._pairs import HIDDEN, LAYERS, gradient_inputs, random_batch, reference_loss

# (method, hyperparameters): defaults, plus the non-default branches of every method
CASES = [
    ("dpo", {"beta": 0.1}),
    ("dpo", {"beta": 0.7}),
    ("tdpo1", {"beta": 0.1}),
    ("tdpo2", {"beta": 0.1, "alpha": 0.5}),
    ("tdpo2", {"beta": 0.3, "alpha": 2.0}),
    ("tis_dpo", {"beta": 0.1}),
    ("tis_dpo", {"beta": 0.2, "alpha": 0.5, "token_level": True}),
    ("bcr", {"beta": 0.1, "lam": 1.0, "delta": 0.0}),
    ("bcr", {"beta": 0.1, "lam": 0.5, "delta": 1.5, "normalize": "mean"}),
    ("bcr", {"beta": 0.1, "lam": 2.0, "delta": 0.5, "placement": "inside_sigmoid"}),
    ("sparsepo_mapo", {"beta": 0.1}),
    ("sparsepo", {"beta": 0.1}),
    ("sparsepo", {"beta": 0.8, "mode": "independent", "l1_u": 0.01, "l1_d": 0.02}),
    ("sparsepo", {"beta": 0.8, "mode": "common", "l1_u": 0.01, "l1_d": 0.02}),
    ("ipo", {"beta": 0.1}),
    ("simpo", {"beta": 2.0, "gamma": 1.0}),
    ("simpo", {"beta": 2.0, "gamma": 0.5, "sft_weight": 1.0}),
    ("cdpo", {"beta": 0.1, "label_smoothing": 0.1}),
    ("dpop", {"beta": 0.1, "lam": 50.0}),
    ("dpop", {"beta": 0.1, "lam": 0.3}),
    ("slic_hinge", {"beta": 0.1}),
]


def build(name: str, hp: dict) -> methods.Method:
    if name not in methods.available():
        pytest.skip(f"method {name!r} is not installed (the plugin ships in tests/plugin_pkg)")
    method = methods.get(name, **hp).double()
    method.setup(hidden_size=HIDDEN, num_layers=LAYERS)
    method.double()
    torch.manual_seed(0)
    for module in method.modules():  # move off the default init so the head's math is really used
        for p in module.parameters():
            p.data.add_(0.3 * torch.randn_like(p))
    return method


@pytest.mark.parametrize("name,hp", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_float64_formula(name, hp, seed):
    method = build(name, hp)
    batch = random_batch(seed=seed)
    out = method.loss(batch)
    expected = reference_loss(name, hp, batch, method)
    assert out.per_pair.tolist() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert out.loss.item() == pytest.approx(sum(expected) / len(expected), rel=1e-10)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"):
        assert key in out.metrics and out.metrics[key].dim() == 0


def test_hand_worked_dpo_value():
    # one pair, two completion tokens each: S_w = (-1 - -2) + (-1 - -1) = 1, S_l = (-3 - -1) = -2
    batch = methods.PairBatch(
        logps_w=torch.tensor([[-1.0, -1.0]]), ref_logps_w=torch.tensor([[-2.0, -1.0]]),
        logps_l=torch.tensor([[-3.0]]), ref_logps_l=torch.tensor([[-1.0]]),
        mask_w=torch.ones(1, 2), mask_l=torch.ones(1, 1))
    out = methods.get("dpo", beta=0.5).loss(batch)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-1.5)), rel=1e-6)  # -log sigma(0.5 * 3)
    assert out.metrics["rewards/margin"].item() == pytest.approx(1.5)
    assert out.metrics["rewards/accuracy"].item() == 1.0


def test_hand_worked_ipo_and_simpo_values():
    batch = methods.PairBatch(
        logps_w=torch.tensor([[-1.0, -3.0]]), ref_logps_w=torch.tensor([[-2.0, -2.0]]),
        logps_l=torch.tensor([[-4.0]]), ref_logps_l=torch.tensor([[-2.0]]),
        mask_w=torch.ones(1, 2), mask_l=torch.ones(1, 1))
    # IPO: means d_w = (1 + -1)/2 = 0, d_l = -2; z = 2; target 1/(2*0.25) = 2 -> loss 0
    assert methods.get("ipo", beta=0.25).loss(batch).loss.item() == pytest.approx(0.0, abs=1e-7)
    # SimPO (official defaults beta 2, gamma 0.5): r_w = 2 * (-4/2) = -4, r_l = 2 * -4 = -8; z = 4 - 0.5 = 3.5
    assert methods.get("simpo").loss(batch).loss.item() == pytest.approx(math.log1p(math.exp(-3.5)), rel=1e-6)
    assert methods.get("simpo", gamma=1.0).loss(batch).loss.item() == pytest.approx(math.log1p(math.exp(-3.0)),
                                                                                    rel=1e-6)


def test_hand_worked_simpo_sft_term_is_the_batch_token_mean_nll():
    # two pairs; chosen log-probs (-1, -3) and (-2): the official CrossEntropyLoss over the batch's 3
    # chosen tokens is (1 + 3 + 2) / 3 = 2, whatever the split between pairs
    batch = methods.PairBatch(
        logps_w=torch.tensor([[-1.0, -3.0], [-2.0, 0.0]], dtype=torch.float64),
        ref_logps_w=torch.zeros(2, 2, dtype=torch.float64),
        logps_l=torch.tensor([[-4.0], [-1.0]], dtype=torch.float64),
        ref_logps_l=torch.zeros(2, 1, dtype=torch.float64),
        mask_w=torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64),
        mask_l=torch.ones(2, 1, dtype=torch.float64))
    # SimPO terms (beta 2, gamma 0.5): pair 0 z = 2*(-2) - 2*(-4) - 0.5 = 3.5; pair 1 z = 2*(-2) - 2*(-1) - 0.5 = -2.5
    simpo = [math.log1p(math.exp(-3.5)), math.log1p(math.exp(2.5))]
    out = methods.get("simpo", sft_weight=0.5).loss(batch)
    assert out.loss.item() == pytest.approx(sum(simpo) / 2 + 0.5 * 2.0, rel=1e-12)
    # pair i carries 0.5 * B * NLL_i / N: 0.5 * 2 * 4 / 3 and 0.5 * 2 * 2 / 3
    assert out.per_pair.tolist() == pytest.approx([simpo[0] + 4 / 3, simpo[1] + 2 / 3], rel=1e-12)
    assert out.metrics["simpo/sft_nll"].item() == pytest.approx(2.0)
    assert methods.get("simpo", sft_weight=0.5).loss_at_reference() is None


@pytest.mark.parametrize("name,hp", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_gradcheck(name, hp):
    method = build(name, hp)
    batch = random_batch(batch_size=2, t_w=4, t_l=3, seed=3)
    names = gradient_inputs(method)  # less the stop-gradient inputs the method declares

    def loss_of(*tensors):
        values = dict(zip(names, tensors))
        return method.loss(dataclasses.replace(batch, **values)).loss

    inputs = tuple(getattr(batch, n).clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(loss_of, inputs, eps=1e-6, atol=1e-7)
    grads = torch.autograd.grad(loss_of(*inputs), inputs, allow_unused=True)
    for n, g in zip(names, grads):
        if g is not None:
            assert torch.isfinite(g).all(), n


def test_tdpo2_stops_gradient_through_chosen_kl_but_tdpo1_does_not():
    batch = random_batch(seed=5)
    for name, expect_zero in (("tdpo2", True), ("tdpo1", False)):
        fkl_w = batch.fkl_w.clone().requires_grad_(True)
        fkl_l = batch.fkl_l.clone().requires_grad_(True)
        b = random_batch(seed=5)
        b.fkl_w, b.fkl_l = fkl_w, fkl_l
        methods.get(name).loss(b).loss.backward()
        no_gradient = fkl_w.grad is None or fkl_w.grad.abs().sum().item() == 0.0
        assert no_gradient is expect_zero, name
        assert fkl_l.grad.abs().sum().item() > 0.0


def test_sparsepo_head_receives_gradient():
    method = build("sparsepo", {"mode": "independent", "l1_u": 0.01, "l1_d": 0.01})
    method.loss(random_batch(seed=2)).loss.backward()
    for head in method.modules():
        assert head.mixer.weight.grad is not None and head.mixer.weight.grad.abs().sum() > 0
        assert head.norm.weight.grad is not None
