"""The invariants of methods.md, parametrised over every registered method (plugins included).

Nothing here names a method to decide what to expect: a method states what these tests need
(``loss_at_reference()``, ``uses_reference``, ``logistic_antisymmetric``, ``no_gradient_inputs``), so a
third-party method is checked against its own statements. For the built-ins those statements are in
turn checked against the formulas of methods.md, worked out here in float64 (``BUILTIN_AT_REFERENCE``).
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import methods
from tests.methods._pairs import HIDDEN, LAYERS, gradient_inputs, neutral_batch, random_batch, swapped

ALL = methods.available()


def build(name: str, **hp) -> methods.Method:
    method = methods.get(name, **hp).double()
    method.setup(hidden_size=HIDDEN, num_layers=LAYERS)
    return method.double()


def is_builtin(method: methods.Method) -> bool:
    return type(method).__module__.split(".")[0] == "methods"


@pytest.mark.parametrize("name", ALL)
def test_loss_at_reference_is_the_declared_value(name):
    method = build(name)
    expected = method.loss_at_reference()
    if expected is None:
        pytest.skip(f"method {name!r} declares no single loss at the reference (loss_at_reference() is None)")
    out = method.loss(neutral_batch(method))
    assert out.per_pair.tolist() == pytest.approx([expected] * 3, rel=1e-12), (
        f"method {name!r}: loss at the reference differs from its loss_at_reference() = {expected}")
    assert out.metrics["rewards/margin"].item() == pytest.approx(0.0, abs=1e-12)


LOG2 = math.log(2.0)
# every built-in's loss at the neutral point (hyperparameters -> value; None: no single value),
# from the formulas of methods.md and the modules' docstrings, with z = 0 and every d_t, fkl_t, rkl_t = 0
BUILTIN_AT_REFERENCE = {
    "dpo": lambda hp: LOG2,                                   # -log sigma(0)
    "tdpo1": lambda hp: LOG2,
    "tdpo2": lambda hp: LOG2,
    "tis_dpo": lambda hp: LOG2,
    "bcr": lambda hp: (LOG2 + hp["lam"] * max(0.0, -hp["delta"]) if hp["placement"] == "additive"
                       else math.log1p(math.exp(hp["beta"] * hp["lam"] * max(0.0, -hp["delta"])))),
    "sparsepo_mapo": lambda hp: LOG2,
    "sparsepo": lambda hp: LOG2 if hp["l1_u"] == hp["l1_d"] == 0 else None,  # L1 terms depend on the head
    "ipo": lambda hp: (1.0 / (2.0 * hp["beta"])) ** 2,        # (0 - 1/(2 beta))^2
    "simpo": lambda hp: (math.log1p(math.exp(hp["gamma"]))    # -log sigma(0 - gamma)
                         if not hp.get("sft_weight") else None),  # the NLL term depends on the log-probs
    "cdpo": lambda hp: LOG2,                                  # (1 - eps) log 2 + eps log 2
    "dpop": lambda hp: LOG2,                                  # the penalty max(0, 0) is 0
}
# built-ins whose loss is -log sigma(beta z) with z negated by the swap (methods.md), and stop-gradients
BUILTIN_LOGISTIC_ANTISYMMETRIC = {"dpo", "tdpo1", "tdpo2", "tis_dpo", "sparsepo_mapo", "sparsepo"}
BUILTIN_NO_GRADIENT = {"tdpo2": {"fkl_w"}}
NON_DEFAULT = [("ipo", {"beta": 0.25}), ("simpo", {"beta": 1.0, "gamma": 0.5}), ("cdpo", {"label_smoothing": 0.3}),
               ("bcr", {"lam": 2.0, "delta": -0.5}),
               ("bcr", {"lam": 2.0, "delta": -0.5, "placement": "inside_sigmoid"}),
               ("bcr", {"lam": 2.0, "delta": 0.5, "normalize": "mean"}), ("tis_dpo", {"token_level": True}),
               ("sparsepo", {"l1_u": 0.01}), ("dpop", {"lam": 3.0}), ("simpo", {"sft_weight": 0.5}),
               ("sparsepo_mapo", {"activation_grouping": "official_four_types"})]


def test_every_builtin_has_its_formula_here():
    assert {name for name in ALL if is_builtin(methods.get(name))} == set(BUILTIN_AT_REFERENCE)


@pytest.mark.parametrize("name,hp", [(n, {}) for n in BUILTIN_AT_REFERENCE] + NON_DEFAULT,
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()))
def test_builtin_declarations_are_the_methods_md_values(name, hp):
    method = build(name, **hp)
    formula = BUILTIN_AT_REFERENCE[name]({**method.hparams(), **hp})
    declared = method.loss_at_reference()
    if formula is None:
        assert declared is None
    else:
        assert declared == pytest.approx(formula, rel=1e-12)
        assert method.loss(neutral_batch(method)).per_pair.tolist() == pytest.approx([formula] * 3, rel=1e-12)
    l1_terms = bool(hp.get("l1_u") or hp.get("l1_d"))  # SparsePO's L1 terms break the swap identity
    assert method.logistic_antisymmetric is (name in BUILTIN_LOGISTIC_ANTISYMMETRIC and not l1_terms)
    assert set(method.no_gradient_inputs) == BUILTIN_NO_GRADIENT.get(name, set())


@pytest.mark.parametrize("name", ALL)
def test_padding_batch_order_and_composition_do_not_change_a_pairs_loss(name):
    method = build(name)
    batch = random_batch(batch_size=4, seed=6)
    base = method.loss(batch).per_pair

    # extra right padding with garbage values in the padded positions
    def pad(t: torch.Tensor, is_mask: bool) -> torch.Tensor:
        extra_shape = (t.shape[0], 3) + tuple(t.shape[2:])
        filler = torch.zeros(extra_shape, dtype=t.dtype) if is_mask else torch.randn(extra_shape, dtype=t.dtype)
        return torch.cat([t, filler], dim=1)

    padded = methods.PairBatch(**{f.name: pad(getattr(batch, f.name), f.name.startswith("mask_"))
                                  for f in dataclasses.fields(batch)})
    assert method.loss(padded).per_pair.tolist() == pytest.approx(base.tolist(), rel=1e-12)

    order = torch.tensor([2, 0, 3, 1])
    permuted = batch.map(lambda t: t[order])
    assert method.loss(permuted).per_pair.tolist() == pytest.approx(base[order].tolist(), rel=1e-12)

    alone = batch.map(lambda t: t[1:2])
    assert method.loss(alone).per_pair.item() == pytest.approx(base[1].item(), rel=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_swapping_chosen_and_rejected_negates_the_margin(name):
    method = build(name)
    batch = random_batch(seed=7)
    margin = method.loss(batch).metrics["rewards/margin"].item()
    assert method.loss(swapped(batch)).metrics["rewards/margin"].item() == pytest.approx(-margin, rel=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_swap_turns_z_into_minus_z(name):
    # a method declaring logistic_antisymmetric has L = -log sigma(x) with x negated by the swap:
    # sigma(x) + sigma(-x) = 1, i.e. exp(-L) + exp(-L_swapped) = 1 for every pair
    method = build(name)
    if not method.logistic_antisymmetric:
        pytest.skip(f"method {name!r} does not declare logistic_antisymmetric")
    batch = random_batch(seed=8)
    a, b = method.loss(batch).per_pair, method.loss(swapped(batch)).per_pair
    assert (torch.exp(-a) + torch.exp(-b)).tolist() == pytest.approx([1.0] * 3, rel=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_gradients_match_finite_differences(name):
    method = build(name)
    batch = random_batch(batch_size=2, t_w=4, t_l=3, seed=3)
    names = gradient_inputs(method)

    def loss_of(*tensors):
        return method.loss(dataclasses.replace(batch, **dict(zip(names, tensors)))).loss

    inputs = tuple(getattr(batch, n).clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(loss_of, inputs, eps=1e-6, atol=1e-7)
    # what a method declares it does not differentiate really gets no gradient
    for field in sorted(method.no_gradient_inputs):
        value = getattr(batch, field).clone().requires_grad_(True)
        loss = method.loss(dataclasses.replace(batch, **{field: value})).loss
        grad = torch.autograd.grad(loss, value, allow_unused=True)[0] if loss.requires_grad else None
        assert grad is None or not grad.abs().sum().item(), f"{name}: gradient through {field}"


@pytest.mark.parametrize("name", ALL)
def test_reference_free_method_ignores_the_reference(name):
    method = build(name)
    if method.uses_reference:
        pytest.skip(f"method {name!r} uses the reference")
    batch = random_batch(seed=15)
    base = method.loss(batch).per_pair.tolist()
    batch.ref_logps_w, batch.ref_logps_l = torch.zeros_like(batch.ref_logps_w), None  # the trainer passes zeros
    assert method.loss(batch).per_pair.tolist() == base


def test_tis_dpo_with_unit_weights_is_dpo():
    batch = random_batch(seed=9)
    batch.weights_w, batch.weights_l = torch.ones_like(batch.mask_w), torch.ones_like(batch.mask_l)
    assert build("tis_dpo").loss(batch).per_pair.tolist() == pytest.approx(
        build("dpo").loss(batch).per_pair.tolist(), rel=1e-12)


@pytest.mark.parametrize("hp", [{"lam": 0.0}, {"lam": 3.0, "delta": 1e9},
                                {"lam": 0.0, "placement": "inside_sigmoid", "normalize": "mean"}])
def test_bcr_reduces_to_dpo(hp):
    batch = random_batch(seed=10)
    assert build("bcr", **hp).loss(batch).per_pair.tolist() == pytest.approx(
        build("dpo").loss(batch).per_pair.tolist(), rel=1e-12)


def test_bcr_inside_sigmoid_with_zero_budget_is_dpop():
    batch = random_batch(seed=11)
    assert build("bcr", lam=2.5, delta=0.0, placement="inside_sigmoid").loss(batch).per_pair.tolist() == pytest.approx(
        build("dpop", lam=2.5).loss(batch).per_pair.tolist(), rel=1e-12)


def test_cdpo_without_smoothing_is_dpo():
    batch = random_batch(seed=12)
    assert build("cdpo", label_smoothing=0.0).loss(batch).per_pair.tolist() == pytest.approx(
        build("dpo").loss(batch).per_pair.tolist(), rel=1e-12)


@pytest.mark.parametrize("name", ["tdpo1", "tdpo2"])
def test_tdpo_with_zero_kl_is_dpo(name):
    batch = random_batch(seed=13)
    batch.fkl_w, batch.fkl_l = torch.zeros_like(batch.fkl_w), torch.zeros_like(batch.fkl_l)
    assert build(name).loss(batch).per_pair.tolist() == pytest.approx(
        build("dpo").loss(batch).per_pair.tolist(), rel=1e-12)


def test_sparsepo_with_unit_masks_is_tdpo1():
    batch = random_batch(seed=14)
    batch.masks_w, batch.masks_l = torch.ones_like(batch.mask_w), torch.ones_like(batch.mask_l)
    tdpo1 = build("tdpo1").loss(batch).per_pair.tolist()
    assert build("sparsepo_mapo").loss(batch).per_pair.tolist() == pytest.approx(tdpo1, rel=1e-12)

    # a learnable head whose output is 1 everywhere: per-layer weight 0, bias 1, mixer 1/L
    for mode in ("common", "independent"):
        method = build("sparsepo", mode=mode)
        for head in method.modules():
            for layer in head.layer_heads:
                torch.nn.init.zeros_(layer.weight)
                torch.nn.init.ones_(layer.bias)
            torch.nn.init.constant_(head.mixer.weight, 1.0 / LAYERS)
        assert method.loss(batch).per_pair.tolist() == pytest.approx(tdpo1, rel=1e-12)
