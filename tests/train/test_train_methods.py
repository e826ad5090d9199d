"""Every registered method trains: one optimizer step changes the policy (and the method's own
modules, e.g. SparsePO mask heads) and lowers the loss on the repeated batch."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

import methods
from bench.models import tiny_model
from bench.train import PreferenceTrainConfig, train_preference

pytestmark = pytest.mark.slow  # seconds per test: outside the `tox -e fast` inner loop, run by CI

PAIRS = [
    {"prompt": "The movie was", "chosen": " wonderful, I loved it.", "rejected": " boring and far too long."},
    {"prompt": "Honestly, the plot", "chosen": " kept me guessing", "rejected": " made no sense"},
    {"prompt": "I would rate it", "chosen": " ten out of ten", "rejected": " two out of ten, sadly"},
    {"prompt": "The acting", "chosen": " was superb", "rejected": " was wooden"},
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _with_weights(pairs):
    generator = torch.Generator().manual_seed(0)
    return [{**p, "weights_chosen": (0.7 + 0.6 * torch.rand(32, generator=generator)).tolist(),
             "weights_rejected": (0.7 + 0.6 * torch.rand(32, generator=generator)).tolist()} for p in pairs]


@pytest.mark.parametrize("name", methods.available())
def test_one_step_changes_policy_and_lowers_loss(name, tmp_path, cache, monkeypatch):
    monkeypatch.setenv("POBENCH_CACHE", str(cache))
    method = methods.get(name)
    initial_modules: list[dict] = []
    original_setup = method.setup

    def recording_setup(hidden_size, num_layers):
        original_setup(hidden_size, num_layers)
        initial_modules.extend(copy.deepcopy(m.state_dict()) for m in method.modules())

    monkeypatch.setattr(method, "setup", recording_setup)
    pairs = _with_weights(PAIRS) if "weights" in method.needs else PAIRS
    # 4 pairs, batch 4: both steps see the same batch; step 2's loss is measured after one update
    config = PreferenceTrainConfig(model="tiny", steps=2, batch_size=4, lr=1e-3, lr_schedule="constant",
                                   max_length=64, max_prompt_length=32, tensorboard=False, progress_bar=False)
    result = train_preference(config, pairs, method, tmp_path / "run")

    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert lines[1]["loss"] < lines[0]["loss"], (name, lines[0]["loss"], lines[1]["loss"])
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "tokens_per_s"):
        assert key in lines[0], key

    initial, _ = tiny_model(seed=0)
    trained = load_file(f"{result.model_path}/model.safetensors")
    changed = [k for k, v in initial.state_dict().items() if k in trained and not torch.equal(v, trained[k])]
    assert changed, f"{name}: no policy parameter changed"

    if initial_modules:
        saved = torch.load(f"{result.model_path}/method_modules.pt")
        assert len(saved) == len(initial_modules)
        for before, after in zip(initial_modules, saved):
            assert any(not torch.equal(before[k], after[k]) for k in before), f"{name}: method module unchanged"
