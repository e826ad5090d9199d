"""Registry, plugin entry point, hyperparameter validation and bad inputs -> errors that name the problem."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import methods
from tests.methods._pairs import HIDDEN, LAYERS, random_batch

BUILTIN = ["dpo", "tdpo1", "tdpo2", "tis_dpo", "bcr", "sparsepo_mapo", "sparsepo", "ipo", "simpo", "cdpo", "dpop"]


def test_registry_lists_the_eleven_builtins_in_order():
    assert methods.available()[:11] == BUILTIN
    for name in BUILTIN:
        method = methods.get(name)
        assert method.name == name and method.paper and method.arxiv


def test_plugin_registers_through_entry_point():
    if "slic_hinge" not in methods.available():
        pytest.fail("the test plugin tests/plugin_pkg is not installed: `pip install tests/plugin_pkg` "
                    "(tox's test environment installs it)")
    method = methods.get("slic_hinge", delta=2.0)
    assert type(method).__module__ == "pobench_example_plugin" and method.delta == 2.0


def test_unknown_method_and_hyperparameter_are_named():
    with pytest.raises(methods.MethodError, match="unknown method 'dop'.*dpo"):
        methods.get("dop")
    with pytest.raises(methods.MethodError, match=r"unknown hyperparameter\(s\) \['bta'\]"):
        methods.get("dpo", bta=0.1)
    with pytest.raises(methods.MethodError, match="mode='shared' is not one of"):
        methods.get("sparsepo", mode="shared")
    with pytest.raises(methods.MethodError, match="beta must be > 0"):
        methods.get("tdpo2", beta=0.0)
    with pytest.raises(methods.MethodError, match="label_smoothing"):
        methods.get("cdpo", label_smoothing=0.7)


def test_defaults_are_the_documented_ones():
    expected = {
        "dpo": {"beta": 0.1}, "tdpo1": {"beta": 0.1}, "tdpo2": {"beta": 0.1, "alpha": 0.5},
        "tis_dpo": {"beta": 0.1, "alpha": 0.5, "token_level": False},
        "bcr": {"beta": 0.1, "lam": 1.0, "delta": 1.0, "normalize": "sum", "placement": "additive"},
        "sparsepo_mapo": {"beta": 0.1, "activation_grouping": "official_four_types"}, "sparsepo": {"beta": 0.1, "mode": "common", "l1_u": 0.0, "l1_d": 0.0},
        "ipo": {"beta": 0.1}, "simpo": {"beta": 2.0, "gamma": 0.5}, "cdpo": {"beta": 0.1, "label_smoothing": 0.1},
        "dpop": {"beta": 0.1, "lam": 50.0},
    }
    assert {name: methods.get(name).hparams() for name in BUILTIN} == expected
    assert methods.get("tis_dpo", token_level=True).needs == {"weights", "rkl"}
    assert methods.get("dpo").modules() == [] and methods.get("simpo").uses_reference is False


def test_hyperparameters_added_later_key_runs_only_when_set():
    # SimPO's sft_weight came after results were recorded: at its default it is not part of hparams(),
    # which keys training runs and caches, so `simpo: {gamma: 1.0}` keeps the key it had before
    assert methods.get("simpo", gamma=1.0).hparams() == {"beta": 2.0, "gamma": 1.0}
    assert methods.get("simpo", gamma=1.0).sft_weight == 0.0
    assert methods.get("simpo", sft_weight=0.5).hparams() == {"beta": 2.0, "gamma": 0.5, "sft_weight": 0.5}
    rebuilt = methods.get("simpo", **methods.get("simpo", gamma=1.0).hparams())
    assert rebuilt.sft_weight == 0.0 and rebuilt.gamma == 1.0


@pytest.mark.parametrize("name", BUILTIN)
def test_missing_required_field_is_named(name):
    method = methods.get(name)
    method.setup(hidden_size=HIDDEN, num_layers=LAYERS)
    method.double()
    batch = random_batch()
    field = f"{sorted(method.needs)[0]}_l" if method.needs else "logps_w"
    setattr(batch, field, None)
    with pytest.raises(methods.MethodError, match=f"PairBatch.{field}, which is missing"):
        method.loss(batch)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("field", ["logps_w", "ref_logps_l", "fkl_w", "mask_l"])
def test_non_finite_inputs_raise_instead_of_a_silent_nan(field, bad):
    batch = random_batch()
    getattr(batch, field)[1, 2] = bad
    with pytest.raises(methods.MethodError, match=f"PairBatch.{field} contains 1 NaN/inf"):
        methods.get("tdpo1").loss(batch)


def test_all_masked_row_raises():
    batch = random_batch()
    batch.mask_w[2] = 0
    with pytest.raises(methods.MethodError, match=r"mask_w: row\(s\) \[2\] have no completion token"):
        methods.get("ipo").loss(batch)


def test_shape_mismatch_is_named():
    batch = random_batch()
    batch.ref_logps_w = batch.ref_logps_w[:, :-1]
    with pytest.raises(methods.MethodError, match="PairBatch.ref_logps_w has shape"):
        methods.get("dpo").loss(batch)


def test_sparsepo_without_setup_explains_what_to_do():
    with pytest.raises(methods.MethodError, match=r"call setup\(hidden_size, num_layers\)"):
        methods.get("sparsepo").double().loss(random_batch())


def test_reference_free_method_does_not_need_reference_logps():
    batch = random_batch()
    batch.ref_logps_w = batch.ref_logps_l = None
    assert torch.isfinite(methods.get("simpo").loss(batch).loss)


def test_methods_command_lists_every_method():
    out = subprocess.run([sys.executable, "-m", "bench.cli", "methods"], capture_output=True, text=True, check=True)
    for name in BUILTIN:
        assert f"\n{name} " in "\n" + out.stdout
    assert "2404.11999" in out.stdout and "beta=0.1, alpha=0.5" in out.stdout


def test_loss_overflowing_from_finite_inputs_names_the_pairs():
    batch = random_batch(dtype=torch.float32)
    batch.logps_w[1] = -3e38  # finite, but the sequence sum overflows float32 to -inf
    with pytest.raises(methods.NonFiniteLoss, match=r"pair\(s\) \[1\]") as info:
        methods.get("dpo").loss(batch)
    assert info.value.pairs == [1]
