"""Options added after results were recorded (trainer ``optimizer``, ``prefdata.pairs``, method options such as
SimPO's ``sft_weight`` or MaPO's ``activation_grouping``, TIS-DPO's ``official_transform``) leave the keys of
configs that do not set them exactly as they were, so cached and committed results stay valid.

The hashes below were computed from the shipped suites before these options existed. Three defaults were
then flipped on purpose to the official code's (BCR's budget delta, MaPO's activation grouping, TIS-DPO's
official transform): those must re-key, so no result computed under the earlier default is reused."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import load_suite, validate
from bench.hashing import plain, stable_hash
from bench.plan import full_hparams
from bench.train import PreferenceTrainConfig

REPO = Path(__file__).resolve().parents[2]

# suite -> (train section's semantic view, prefdata section) hashes
SECTIONS = {"default": ("ee99e0c34cc58460", "194870b3358d856b"),
            "smoke": ("28a8b2c000ad1980", "e04163d4ef0ea9d2"),
            "baselines": ("ee99e0c34cc58460", "194870b3358d856b")}
# method -> hash of its full hyperparameters (defaults filled in) at the suites' points
HPARAMS = {"dpo": "d2a04f85cbe94d62", "tdpo2": "821ebd08f953e483", "tis_dpo": "a39b24231105ff60",
           "sparsepo": "ac884cafbcfc34b0", "cdpo": "2bab15e98fa8c569", "dpop": "5298aa9852407c78"}
# the same hashes of the methods whose defaults were flipped to the official code's (issue 12)
FLIPPED = {"bcr": "4602aa75ec7a8bfa", "sparsepo_mapo": "d2a04f85cbe94d62"}


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_shipped_suites_keep_their_train_and_prefdata_keys(name):
    suite = load_suite(REPO / "configs" / f"{name}.yaml")
    train, prefdata = SECTIONS[name]
    # token_reference's default was flipped to "cached" later: it keys only token-level runs (tested below)
    assert stable_hash(suite.train.model_copy(update={"token_reference": "online"}).semantic()) == train
    # draws' default was flipped to per_row later: it re-keys what is sampled (tested below)
    assert stable_hash(plain(suite.prefdata.model_copy(update={"draws": "per_batch"}))) == prefdata
    assert stable_hash(suite.sft.semantic()) == "f14407c84bcfccd9"
    for spec in suite.method_specs:
        if spec.name in HPARAMS:
            assert stable_hash(full_hparams(spec.name, {})) == HPARAMS[spec.name], spec.name


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_per_row_draws_rekey_what_is_sampled_and_per_batch_keeps_the_earlier_keys(name):
    """generation.draws and prefdata.draws flipped to per_row (samples no longer depend on the batch size):
    a suite that leaves them re-keys its sampling; pinning per_batch gives back the earlier dump."""
    suite = load_suite(REPO / "configs" / f"{name}.yaml")
    for section in (suite.prefdata, suite.generation):
        assert section.draws == "per_row" and plain(section)["draws"] == "per_row"
        earlier = section.model_copy(update={"draws": "per_batch"})
        assert "draws" not in plain(earlier)  # the earlier value dumps as before the field existed
    for other in ("hh", "code", "frontier"):  # committed results drawn per batch: their configs pin it
        pinned = load_suite(REPO / "configs" / f"{other}.yaml")
        assert pinned.generation.draws == pinned.prefdata.draws == "per_batch"
        assert "draws" not in plain(pinned.generation) and "draws" not in plain(pinned.prefdata)


@pytest.mark.parametrize("name", sorted(FLIPPED))
def test_flipped_defaults_rekey_the_method(name):
    assert stable_hash(full_hparams(name, {})) != FLIPPED[name]


def test_the_official_tis_transform_rekeys_the_preparation():
    from bench.stages.tis_weights import TISWeightOptions

    # before the flip the default options dumped without the field; the same dump must not come back
    assert "official_transform" in plain(TISWeightOptions())
    assert plain(TISWeightOptions()) != plain(TISWeightOptions(official_transform=False))


@pytest.mark.parametrize("name, pinned", [("bcr", {"delta": 0.0}),
                                          ("sparsepo_mapo", {"activation_grouping": "seven_hook_types"})])
def test_pinning_the_earlier_default_keeps_the_earlier_key(name, pinned):
    assert stable_hash(full_hparams(name, pinned)) == FLIPPED[name]


def test_a_trainer_config_at_its_defaults_keeps_its_fingerprint():
    assert stable_hash(PreferenceTrainConfig(token_reference="online").semantic()) == "29296bc4c4cdafb5"
    assert "optimizer" not in PreferenceTrainConfig().semantic()
    # the flipped default is keyed
    assert PreferenceTrainConfig().semantic()["token_reference"] == "cached"


def _train_keys(suite) -> dict[str, tuple[str, dict]]:
    from bench.plan import build_plan

    return {n.label: (n.key, plain(n.params.train)) for n in build_plan(suite).nodes if n.stage == "train"}


def test_the_cached_token_reference_rekeys_only_the_runs_that_read_it():
    """token_reference (flipped from "online" to "cached") keys the runs of methods that need the reference's
    distribution or hidden states under LoRA, and no other run: DPO keeps its key, and a suite that pins the
    earlier value (hh, frontier, code) keeps every key."""
    base = {"name": "t", "models": [{"id": "tiny"}], "tasks": ["imdb"],
            "task_options": {"imdb": {"source": "builtin", "judge": "sentiment:vader"}},
            "methods": {"dpo": {}, "tdpo2": {}, "sparsepo": {}, "tis_dpo": {"token_level": True}},
            "train": {"steps": 2, "batch_size": 2, "peft": "lora"}}
    new = _train_keys(validate(base))
    pinned = _train_keys(validate({**base, "train": {**base["train"], "token_reference": "online"}}))
    changed = {label for label in new if new[label][0] != pinned[label][0]}
    assert changed == {"train tdpo2 s0", "train sparsepo s0"}
    assert new["train tdpo2 s0"][1]["token_reference"] == "cached"
    assert all("token_reference" not in train for label, (_, train) in pinned.items())
    assert "token_reference" not in new["train dpo s0"][1]  # set to its earlier value: never read by DPO
    # full fine-tuning and bf16 always run the reference at every step: nothing re-keys
    for change in ({"peft": "full"}, {"precision": "bf16"}):
        other = {**base, "train": {**base["train"], **change}}
        assert _train_keys(validate(other)) == _train_keys(validate({**other, "train": {**other["train"],
                                                                                         "token_reference": "online"}}))


def test_a_pinned_earlier_value_reaches_the_trainer():
    """A flipped default's earlier value is left out of the keyed dump; rebuilding a config must not turn it
    into the new default (the suite section -> method override -> trainer config chain)."""
    from bench.stages.train import trainer_config

    suite = load_suite(REPO / "configs" / "hh.yaml")
    assert suite.train.token_reference == "online"
    assert all(spec.train.token_reference == "online" for spec in suite.method_specs)
    assert trainer_config(suite.train, "tiny", 0).token_reference == "online"
    assert trainer_config(suite.train, "tiny", 0).with_updates(lr=1e-3).token_reference == "online"


def test_an_added_option_keys_runs_once_set():
    base = {"name": "t", "methods": {"dpo": {}}}
    plain_suite = validate(base)
    rmsprop = validate({**base, "train": {"optimizer": "rmsprop"}})
    assert rmsprop.train.semantic() == {**plain_suite.train.semantic(), "optimizer": "rmsprop"}
    assert rmsprop.hash() != plain_suite.hash()
    # set to its default it is the default: the same key as not setting it
    assert validate({**base, "train": {"optimizer": "adamw"}}).hash() == plain_suite.hash()
    all_pairs = validate({**base, "prefdata": {"pairs": "all"}})
    assert plain(all_pairs.prefdata) == {**plain(plain_suite.prefdata), "pairs": "all"}
    # the field is still there to read, and recorded when it is set
    assert plain_suite.train.optimizer == "adamw" and plain_suite.prefdata.pairs == "best_worst"
    assert rmsprop.to_dict()["train"]["optimizer"] == "rmsprop"


def test_all_pairs_raise_the_planned_pairs_and_training_steps():
    from bench.plan import build_plan
    from bench.stages import stage
    from bench.stages.data import expected_pairs

    def planned(pairs: str):
        suite = validate({"name": "t", "models": [{"id": "tiny"}], "tasks": ["imdb"],
                          "task_options": {"imdb": {"source": "builtin", "judge": "sentiment:vader"}},
                          "methods": {"dpo": {}}, "train": {"steps": 0, "epochs": 1, "batch_size": 2},
                          "prefdata": {"source": "sample_and_judge", "prompts": 4, "samples_per_prompt": 4,
                                       "pairs": pairs}})
        train = next(c.train for c in build_plan(suite).cells if c.method == "dpo")
        prefdata = train.deps["prefdata"]
        return expected_pairs(prefdata), stage("prefdata").work(prefdata), stage("train").work(train)

    # 4 prompts x 4 samples: one pair per prompt, or at most 4 * 3 / 2 = 6; 16 sequences sampled either way
    assert planned("best_worst") == (4, {"sampled_sequences": 16}, {"train_steps": 2})
    assert planned("all") == (24, {"sampled_sequences": 16}, {"train_steps": 12})
