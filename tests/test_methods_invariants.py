"""The invariants of methods.md, parametrised over every registered method (plugins included)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import methods
from _pairs import HIDDEN, LAYERS, at_reference, random_batch, swapped

ALL = methods.available()


def build(name: str, **hp) -> methods.Method:
    method = methods.get(name, **hp).double()
    method.setup(hidden_size=HIDDEN, num_layers=LAYERS)
    return method.double()


def expected_loss_at_reference(name: str, method: methods.Method) -> float | None:
    """Loss when policy == reference; None where it depends on the policy itself (reference-free)."""
    if name == "ipo":
        return (1 / (2 * method.beta)) ** 2
    if name == "slic_hinge":
        return method.delta
    if not method.uses_reference:
        return None
    return math.log(2)


@pytest.mark.parametrize("name", ALL)
def test_loss_is_log2_at_reference(name):
    method = build(name)
    expected = expected_loss_at_reference(name, method)
    batch = at_reference(random_batch(seed=4))
    if expected is None:
        # reference-free (SimPO): equal per-token likelihoods on both sides leave only the margin gamma
        batch.logps_w, batch.logps_l = torch.full_like(batch.logps_w, -1.3), torch.full_like(batch.logps_l, -1.3)
        expected = math.log1p(math.exp(method.gamma))
    out = method.loss(batch)
    assert out.per_pair.tolist() == pytest.approx([expected] * 3, rel=1e-12)
    assert out.metrics["rewards/margin"].item() == pytest.approx(0.0, abs=1e-12)


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


# methods whose objective is exactly -log sigma(beta z) with z antisymmetric under the swap:
# then sigma(beta z) + sigma(-beta z) = 1, i.e. exp(-L) + exp(-L_swapped) = 1 for every pair
LOGISTIC_ANTISYMMETRIC = ["dpo", "tdpo1", "tdpo2", "tis_dpo", "sparsepo_mapo", "sparsepo"]


@pytest.mark.parametrize("name", LOGISTIC_ANTISYMMETRIC)
def test_swap_turns_z_into_minus_z(name):
    method = build(name)
    batch = random_batch(seed=8)
    a, b = method.loss(batch).per_pair, method.loss(swapped(batch)).per_pair
    assert (torch.exp(-a) + torch.exp(-b)).tolist() == pytest.approx([1.0] * 3, rel=1e-12)


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
    assert build("bcr", lam=2.5, placement="inside_sigmoid").loss(batch).per_pair.tolist() == pytest.approx(
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
