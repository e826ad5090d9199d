"""Training engine: reference caching, bad rows, non-finite stops, cached results, SFT, LoRA, TIS weights."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import methods
from methods.base import Hyperparameter, Method
from bench.models import gpt2_tokenizer, load_model
from bench.train import (BadDataError, LoraSettings, NonFiniteLossError, PreferenceTrainConfig, SFTConfig,
                         TISWeightConfig, estimate_tis_weights, train_preference, train_sft)
from bench.prompts import PromptFormat
from bench.train.data import collate, tokenize_rows

PAIRS = [
    {"prompt": "The movie was", "chosen": " wonderful, I loved it.", "rejected": " boring and far too long."},
    {"prompt": "Honestly, the plot", "chosen": " kept me guessing", "rejected": " made no sense"},
    {"prompt": "I would rate it", "chosen": " ten out of ten", "rejected": " two out of ten, sadly"},
    {"prompt": "The acting", "chosen": " was superb", "rejected": " was wooden"},
    {"prompt": "Music and sound", "chosen": " were beautiful", "rejected": " were grating"},
    {"prompt": "Overall", "chosen": " a triumph", "rejected": " a mess"},
]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "engine-cache"))


def quick(**changes) -> PreferenceTrainConfig:
    base = dict(model="tiny", steps=3, batch_size=2, lr=1e-3, max_length=64, max_prompt_length=32,
                tensorboard=False, progress_bar=False)
    return PreferenceTrainConfig(**{**base, **changes})


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_cached_reference_logps_give_the_same_losses_as_recomputed(tmp_path):
    cached = train_preference(quick(), PAIRS, methods.get("dpo"), tmp_path / "cached")
    online = train_preference(quick(precompute_reference=False), PAIRS, methods.get("dpo"), tmp_path / "online")
    assert cached.extra["reference"] == "cached" and online.extra["reference"] == "online"
    assert losses(tmp_path / "cached") == pytest.approx(losses(tmp_path / "online"), abs=1e-6)
    a = load_file(f"{cached.model_path}/model.safetensors")
    b = load_file(f"{online.model_path}/model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_methods_needing_reference_logits_refuse_precomputation(tmp_path):
    from bench.train import TrainConfigError

    with pytest.raises(TrainConfigError, match="fkl"):
        train_preference(quick(precompute_reference=True), PAIRS, methods.get("tdpo2"), tmp_path / "x")


def test_bad_rows_are_dropped_with_counted_reasons():
    tokenizer = gpt2_tokenizer()
    rows = [
        PAIRS[0],
        {"prompt": "p", "chosen": "a"},                                  # missing rejected
        {"prompt": "p", "chosen": "   ", "rejected": "b"},                # empty chosen
        {"prompt": "p", "chosen": " same", "rejected": " same"},          # chosen == rejected
        {"prompt": "word " * 80, "chosen": " a", "rejected": " b"},       # prompt > max_prompt_length
        {"prompt": 3, "chosen": " a", "rejected": " b"},                   # prompt not a string
        PAIRS[1],
    ]
    examples, report = tokenize_rows(rows, tokenizer, response_keys=("chosen", "rejected"), max_length=64,
                                     prompt_format=PromptFormat(False, 32), prompt_overflow="drop")
    assert [e.index for e in examples] == [0, 6]
    assert dict(report.dropped) == {"missing_field:rejected": 1, "empty_response:chosen": 1,
                                    "chosen_equals_rejected": 1, "prompt_too_long": 1, "missing_field:prompt": 1}
    assert report.examples["prompt_too_long"] == [4]
    # by default an over-long prompt keeps its end instead (counted)
    kept, truncating = tokenize_rows(rows, tokenizer, response_keys=("chosen", "rejected"), max_length=64,
                                     prompt_format=PromptFormat(False, 32))
    assert [e.index for e in kept] == [0, 4, 6] and truncating.truncated_prompts == 1
    assert len(kept[1].prompt) == 32
    with pytest.raises(BadDataError, match="chosen_equals_rejected"):
        tokenize_rows(rows, tokenizer, response_keys=("chosen", "rejected"), max_length=64,
                      prompt_format=PromptFormat(False, 32), bad_rows="error")
    with pytest.raises(BadDataError, match="no usable"):
        tokenize_rows(rows[1:4] + rows[5:6], tokenizer, response_keys=("chosen", "rejected"), max_length=64,
                      prompt_format=PromptFormat(False, 32))


def test_truncation_keeps_prompt_end_and_bounds_length():
    tokenizer = gpt2_tokenizer()
    prompt = " ".join(f"w{i}" for i in range(40))
    row = {"prompt": prompt, "chosen": " good" * 40, "rejected": " bad"}
    (example,), report = tokenize_rows([row], tokenizer, response_keys=("chosen", "rejected"), max_length=48,
                                       prompt_format=PromptFormat(False, 16))
    full = tokenizer(prompt).input_ids
    assert example.prompt == full[-16:]
    assert len(example.prompt) + len(example.responses[0]) == 48  # chosen cut to the room left
    assert example.responses[1] == tokenizer(" bad").input_ids + [tokenizer.eos_token_id]
    assert report.truncated_prompts == 1 and report.truncated_responses == 1
    batch = collate([example], tokenizer.pad_token_id)
    # chosen row then rejected row; completion mask covers exactly the response tokens
    assert batch.completion_mask.sum(1).tolist() == [32.0, 2.0]
    assert batch.eos_mask.sum(1).tolist() == [0.0, 1.0]


def test_training_drops_bad_rows_and_reports_them(tmp_path):
    rows = PAIRS + [{"prompt": "x", "chosen": " same", "rejected": " same"}]
    result = train_preference(quick(steps=1), rows, methods.get("dpo"), tmp_path / "run")
    assert result.data["dropped"] == {"chosen_equals_rejected": 1}
    assert result.data["kept"] == len(PAIRS)


class _ExplodesOnLongChosen(Method):
    """Test method (not registered): NaN for pairs whose chosen response has more than 6 tokens."""

    name = "_test_explodes"
    hyperparameters = {"beta": Hyperparameter(0.1, "unused")}

    def compute(self, batch):
        long = batch.mask_w.sum(-1) > 6
        per_pair = (batch.logps_w - batch.ref_logps_w).sum(-1) * 0 + 0.5
        return torch.where(long, torch.full_like(per_pair, math.nan), per_pair), {}


def test_non_finite_loss_stops_with_step_rows_and_term(tmp_path):
    with pytest.raises(NonFiniteLossError) as info:
        train_preference(quick(batch_size=6, steps=2), PAIRS, _ExplodesOnLongChosen(), tmp_path / "run")
    message = str(info.value)
    assert "optimizer step 1" in message and "_test_explodes loss" in message
    assert "data rows [0]" in message  # only the first pair's chosen response is that long
    assert not (tmp_path / "run" / "result.json").exists()


def test_finished_run_is_returned_not_retrained_and_other_configs_are_refused(tmp_path):
    first = train_preference(quick(steps=1), PAIRS, methods.get("dpo"), tmp_path / "run")
    mtime = (tmp_path / "run" / "result.json").stat().st_mtime_ns
    again = train_preference(quick(steps=1, progress_bar=True), PAIRS, methods.get("dpo"), tmp_path / "run")
    assert again == first and (tmp_path / "run" / "result.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="different configuration"):
        train_preference(quick(steps=2), PAIRS, methods.get("dpo"), tmp_path / "run")


def test_lora_reference_is_the_base_and_the_saved_model_is_merged(tmp_path):
    config = quick(lora=LoraSettings(r=4, alpha=8), lr=5e-3, steps=2, batch_size=6, lr_schedule="constant")
    result = train_preference(config, PAIRS, methods.get("dpo"), tmp_path / "run")
    lines = losses(tmp_path / "run")
    assert lines[0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference before the first update
    assert lines[1] < lines[0]
    # the policy is saved as its adapter (kilobytes here, ~7 MB on SmolLM2) and loads merged into its base,
    # W + (alpha / r) B A, worked out here in float64 from the two files
    adapter = load_file(f"{result.model_path}/adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    assert not Path(result.model_path, "model.safetensors").exists()
    model, _ = load_model(result.model_path)
    merged = model.state_dict()
    assert not any("lora" in name for name in merged)
    base = load_model("tiny")[0].state_dict()
    checked = 0
    for name, a in adapter.items():
        if ".lora_A." not in name:
            continue
        b = adapter[name.replace(".lora_A.", ".lora_B.")]
        weight = name.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
        expected = base[weight].double() + (8 / 4) * (b.double() @ a.double())
        torch.testing.assert_close(merged[weight].double(), expected, atol=1e-6, rtol=0)
        assert not torch.equal(merged[weight], base[weight])  # it trained: the update is not zero
        checked += 1
    assert checked == 4 * len([k for k in base if k.endswith("q_proj.weight")])  # q, k, v, o (LoraSettings default)


def test_sft_lowers_completion_nll_and_saves_a_loadable_model(tmp_path):
    rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS]
    config = SFTConfig(model="tiny", steps=3, batch_size=6, lr=3e-3, lr_schedule="constant", max_length=64,
                       max_prompt_length=32, tensorboard=False, progress_bar=False)
    result = train_sft(config, rows, tmp_path / "sft")
    nll = losses(tmp_path / "sft")
    assert nll[0] == pytest.approx(math.log(50257), rel=0.05)  # a random tiny model is near uniform
    assert nll[2] < nll[1] < nll[0]
    load_model(result.model_path)


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["prompt_contrastive", "dpo_contrastive"])
def test_tis_weight_stage_produces_per_token_weights_that_train(tmp_path, estimator):
    config = TISWeightConfig(train=quick(steps=2, batch_size=3), estimator=estimator)
    weighted = estimate_tis_weights(config, PAIRS, tmp_path / "weights")
    tokenizer = gpt2_tokenizer()
    assert len(weighted) == len(PAIRS)
    for row, pair in zip(weighted, PAIRS):
        n_chosen = len(tokenizer(pair["chosen"]).input_ids) + 1  # + EOS
        assert len(row["weights_chosen"]) == n_chosen
        assert row["weights_chosen"][-1] == 0.0  # EOS gets no weight
        assert all(0.7 - 1e-6 <= w <= 1.3 + 1e-6 for w in row["weights_chosen"][:-1] + row["weights_rejected"][:-1])
    # cached: a second call reads the stored file
    assert estimate_tis_weights(config, PAIRS, tmp_path / "weights") == weighted
    result = train_preference(quick(steps=1), weighted, methods.get("tis_dpo"), tmp_path / "train")
    assert 0.7 < result.metrics["weights/mean_chosen"] < 1.3


@pytest.mark.slow
def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    big = train_preference(quick(batch_size=4, grad_accum=1, steps=3), PAIRS, methods.get("dpo"), tmp_path / "big")
    acc = train_preference(quick(batch_size=2, grad_accum=2, steps=3), PAIRS, methods.get("dpo"), tmp_path / "acc")
    assert losses(tmp_path / "acc") == pytest.approx(losses(tmp_path / "big"), abs=1e-6)
    a = load_file(f"{big.model_path}/model.safetensors")
    b = load_file(f"{acc.model_path}/model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_warmup_schedule_and_bf16_autocast_train(tmp_path):
    config = quick(precision="bf16", warmup_steps=2, steps=4, batch_size=6, lr=2e-3)
    train_preference(config, PAIRS, methods.get("tdpo2"), tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # linear warmup over 2 steps then linear decay to 0 at step 4
    assert [round(x["lr"], 8) for x in lines] == [0.0, 1e-3, 2e-3, 1e-3]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert all(math.isfinite(x["kl/seq_fkl_chosen"]) for x in lines)


def test_cli_trains_from_a_jsonl_file(tmp_path, capsys):
    from bench.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS + [{"prompt": "x", "chosen": "y"}]))
    code = main(["train", "--method", "ipo", "--hp", "beta=0.5", "--model", "tiny", "--data", str(data),
                 "--steps", "2", "--batch-size", "3", "--set", "max_length=64", "--set", "max_prompt_length=32",
                 "--set", "progress_bar=false", "--set", "tensorboard=false", "--out", str(tmp_path / "run")])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 2 and report["data"]["dropped"] == {"missing_field:rejected": 1}
    assert json.loads((tmp_path / "run" / "result.json").read_text())["extra"]["hparams"] == {"beta": 0.5}
    assert main(["train", "--model", "tiny", "--data", str(tmp_path / "missing.jsonl"),
                 "--out", str(tmp_path / "x")]) == 2


def test_non_finite_input_names_the_field_and_row(tmp_path):
    weighted = [{**p, "weights_chosen": [1.0] * 16, "weights_rejected": [1.0] * 16} for p in PAIRS]
    weighted[2]["weights_chosen"] = [float("nan")] * 16
    with pytest.raises(NonFiniteLossError, match=r"non-finite input weights_w at optimizer step 1.*data rows \[2\]"):
        train_preference(quick(batch_size=6, steps=1), weighted, methods.get("tis_dpo"), tmp_path / "run")


@pytest.mark.slow
def test_bf16_lora_trains_over_a_bf16_base_and_merges_into_the_fp32_base(tmp_path):
    config = quick(lora=LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj")), precision="bf16",
                   attn_implementation="eager", lr=5e-3, steps=2, batch_size=6, lr_schedule="constant")
    result = train_preference(config, PAIRS, methods.get("dpo"), tmp_path / "run")
    lines = losses(tmp_path / "run")
    assert lines[0] == pytest.approx(math.log(2), abs=1e-6) and lines[1] < lines[0]
    base = load_model("tiny", dtype=torch.float32)[0].state_dict()
    assert not Path(result.model_path, "model.safetensors").exists()  # the adapter is saved, merged when loaded
    saved = load_model(result.model_path, dtype=torch.float32)[0].state_dict()
    assert all(t.dtype == torch.float32 for t in saved.values())
    adapted = 0
    for name, weight in saved.items():
        delta = (weight.double() - base[name].double())
        if "q_proj" in name or "v_proj" in name:
            # the merged LoRA update: nonzero, and of rank <= r (it is B @ A); the rest of the
            # spectrum is float32 rounding of base + update (a bf16-rounded base would be full rank)
            singular = torch.linalg.svdvals(delta)
            assert singular[0] > 0 and singular[4] < 1e-4 * singular[0], name
            adapted += 1
        else:
            # untouched weights are the fp32 base exactly, not its bf16 rounding
            assert torch.equal(weight, base[name]), name
    assert adapted == 2 * len([k for k in base if k.endswith("q_proj.weight")])


def test_the_run_records_what_it_trained(tmp_path):
    """result.extra["parameters"], counted independently from the base model: all of it for full
    fine-tuning; r x (in + out) per adapted Linear and no base weight with LoRA."""
    from bench.models import load_model

    base, _ = load_model("tiny")
    total = sum(p.numel() for p in base.parameters())
    full = train_preference(quick(steps=1), PAIRS, methods.get("dpo"), tmp_path / "full").extra["parameters"]
    assert full == {"params": total, "params_trainable": total, "params_trainable_non_adapter": total}
    lora = train_preference(quick(steps=1, peft="lora", lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}),
                            PAIRS, methods.get("dpo"), tmp_path / "lora").extra["parameters"]
    adapted = [m for name, m in base.named_modules() if name.split(".")[-1] in ("q_proj", "v_proj")]
    adapters = sum(4 * (m.in_features + m.out_features) for m in adapted)
    assert adapted and lora == {"params": total + adapters, "params_trainable": adapters,
                                "params_trainable_non_adapter": 0}


# ---- token-level methods from the cached reference summary ---------------------------------------------

def _adapters(result) -> dict[str, torch.Tensor]:
    """The policy's weights with its LoRA update merged (a LoRA policy is saved as its adapter)."""
    return load_model(result.model_path)[0].state_dict()


def _steps(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tdpo2", "sparsepo", "sparsepo_mapo"])
def test_token_level_methods_train_the_same_from_the_cached_reference_as_from_one_run_every_step(tmp_path, name):
    """KL(ref || policy) from the cached summary and the per-layer hidden states from the cache give the
    losses, KL metrics and weights of the reference run at every step, to float32 rounding."""
    runs = {}
    for mode in ("online", "cached"):
        config = quick(lora=LoraSettings(r=4, alpha=8), steps=4, lr=1e-2, token_reference=mode)
        runs[mode] = train_preference(config, PAIRS, methods.get(name), tmp_path / mode)
    assert runs["online"].extra["reference"] == "online" and runs["cached"].extra["reference"] == "cached"
    online, cached = _steps(tmp_path / "online"), _steps(tmp_path / "cached")
    assert online[-1]["loss"] != online[0]["loss"]  # it trained: the comparison is not at the neutral point
    for a, b in zip(online, cached, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        for key in ("kl/seq_fkl_chosen", "kl/seq_fkl_rejected"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
    assert max(abs(s["kl/seq_fkl_chosen"]) for s in online) > 1e-3  # the KL being compared is not ~0
    a, b = _adapters(runs["online"]), _adapters(runs["cached"])
    for key in a:  # Adam's normalised steps (lr 1e-2) turn gradient rounding into ~1e-5 weight differences
        torch.testing.assert_close(b[key], a[key], atol=5e-5, rtol=0)


def test_the_reference_runs_every_step_where_its_summary_cannot_stand_in(tmp_path, monkeypatch):
    from bench.train import preference

    # full fine-tuning trains the output layer, so the policy's is not the reference's
    full = train_preference(quick(), PAIRS, methods.get("tdpo2"), tmp_path / "full")
    assert full.extra["reference"] == "online"
    # bf16: the two models' rounding would not cancel in the difference the cached KL is made of
    bf16 = train_preference(quick(lora=LoraSettings(r=4, alpha=8), precision="bf16", steps=1), PAIRS,
                            methods.get("tdpo2"), tmp_path / "bf16")
    assert bf16.extra["reference"] == "online"
    # per-layer hidden states over the limit: SparsePO's ref_hidden comes from the reference at every step
    monkeypatch.setattr(preference, "MAX_CACHED_HIDDEN_BYTES", 0)
    over = train_preference(quick(lora=LoraSettings(r=4, alpha=8)), PAIRS, methods.get("sparsepo"), tmp_path / "over")
    assert over.extra["reference"] == "online" and "exceed the cache limit" in over.extra["reference_note"]
    forced = train_preference(quick(lora=LoraSettings(r=4, alpha=8), token_reference="online"), PAIRS,
                              methods.get("sparsepo"), tmp_path / "forced")
    assert losses(tmp_path / "over") == losses(tmp_path / "forced")


def test_logits_transformed_after_the_output_layer_rule_the_summary_out():
    from bench.train.preference import SummaryUnavailable, completion_forward_with_hidden

    model, tokenizer = load_model("tiny")
    batch = collate(tokenize_rows(PAIRS[:2], tokenizer, response_keys=("chosen", "rejected"), max_length=64,
                                  prompt_format=PromptFormat(False, 32))[0], tokenizer.pad_token_id)
    logits, hidden, _ = completion_forward_with_hidden(model, batch)
    # the hidden states are the output layer's inputs at the completion-predicting positions
    torch.testing.assert_close(model.get_output_embeddings()(hidden), logits)
    assert logits.shape[0] == int(batch.completion_mask[:, 1:].sum())

    class SoftCapped(torch.nn.Module):  # e.g. Gemma-2's final logit soft-capping
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def forward(self, **kwargs):
            out = self.inner(**kwargs)
            out.logits = 30 * torch.tanh(out.logits / 30)
            return out

    with pytest.raises(SummaryUnavailable, match="transforms its output layer"):
        completion_forward_with_hidden(SoftCapped(model), batch)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dpo", "tdpo2", "sparsepo_mapo"])  # log-probs / + the KL summary / + masks
def test_swapped_pairs_read_the_reference_pass_of_the_unswapped_ones(tmp_path, monkeypatch, name):
    """Chosen and rejected swapped (TIS-DPO's reverse DPO, ``swapped_pairs``) are the same sequences: the
    swapped run computes and caches the pass in the dataset's orientation, so it reads the values the
    unswapped run cached and trains exactly as with a pass of its own."""
    swapped = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in PAIRS]
    config = quick(lora=LoraSettings(r=4, alpha=8), steps=3, lr=1e-2)
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "own"))
    own = train_preference(config, swapped, methods.get(name), tmp_path / "own", swapped_pairs=True)
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "shared"))
    train_preference(config, PAIRS, methods.get(name), tmp_path / "unswapped")
    files = sorted(p.name for p in (tmp_path / "shared" / "reference").iterdir())
    reused = train_preference(config, swapped, methods.get(name), tmp_path / "reused", swapped_pairs=True)
    assert sorted(p.name for p in (tmp_path / "shared" / "reference").iterdir()) == files  # no pass of its own
    assert own.extra["reference"] == reused.extra["reference"] == "cached"
    def values(run: str) -> list[dict]:  # what training computed (timings left out)
        return [{k: v for k, v in step.items() if not k.endswith(("_s", "per_s"))} for step in _steps(tmp_path / run)]

    assert values("reused") == values("own")  # exactly: the same rows, in the same batches, give the same bits
    assert values("reused")[-1]["loss"] != values("unswapped")[-1]["loss"]


def test_one_reference_forward_gives_every_kind_the_bits_of_a_pass_of_its_own():
    """Log-probs, the KL summary and per-layer hidden states computed in one forward equal, bit for bit,
    each computed in a pass of its own: which kinds a run computes along with its own never changes a
    value. MaPO's masks keep a pass of their own (every position's logits and every hooked activation)."""
    from peft import LoraConfig, get_peft_model

    from bench.train.policy import FrozenReference
    from bench.train.preference import reference_pass

    model, tokenizer = load_model("tiny")
    policy = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    reference = FrozenReference(policy, True, torch.float32)
    examples = tokenize_rows(PAIRS, tokenizer, response_keys=("chosen", "rejected"), max_length=64,
                             prompt_format=PromptFormat(False, 32))[0]
    mapo = methods.get("sparsepo_mapo")

    def run(kinds):
        return reference_pass(reference, examples, tokenizer.pad_token_id, kinds=frozenset(kinds),
                              mask_method=mapo if "masks" in kinds else None, precision="fp32", batch_size=4,
                              device=torch.device("cpu"))

    together = run({"logps", "summary", "hidden"})
    alone = {**run({"logps"}), **run({"summary"}), **run({"hidden"})}
    assert sorted(together) == sorted(alone) and len(together["logps"]) == len(PAIRS)
    for name in alone:
        for a, b in zip(together[name], alone[name], strict=True):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), name
    assert not torch.equal(together["ref_lse"][0][0], together["logps"][0][0])  # not the same values twice
    with pytest.raises(ValueError, match="masks need a pass of their own"):
        run({"logps", "masks"})


def recorded_passes(monkeypatch) -> list[list[str]]:
    """The kinds of every reference pass run from now on (sorted), in order."""
    from bench.train import preference

    passes: list[list[str]] = []
    real_pass = preference.reference_pass

    def recording_pass(*args, kinds, **kwargs):
        passes.append(sorted(kinds))
        return real_pass(*args, kinds=kinds, **kwargs)

    monkeypatch.setattr(preference, "reference_pass", recording_pass)
    return passes


@pytest.fixture
def small_shards(monkeypatch):
    """Reference passes in batches of 2 examples: PAIRS make 3 shards."""
    from bench.train import preference

    monkeypatch.setattr(preference, "REFERENCE_PASS_BATCH", 2)
    assert [len(r) for r in preference.pass_shards(len(PAIRS))] == [2, 2, 2]


@pytest.mark.slow
@pytest.mark.parametrize("other_run_finishes", [True, False])
def test_runs_side_by_side_split_the_reference_pass_by_shards(tmp_path, monkeypatch, small_shards,
                                                               other_run_finishes):
    """Two runs side by side (executor.jobs): TDPO2 skips the shard another run is computing, computes the
    others (log-probs and KL summary in one forward each), then waits for the skipped one and reads it (or
    computes it when that run wrote nothing), and trains exactly as alone."""
    from bench.train import preference

    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "cache"))
    config = quick(lora=LoraSettings(r=4, alpha=8), steps=2, lr=1e-2)
    train_preference(config, PAIRS, methods.get("tdpo2"), tmp_path / "alone")
    folder = tmp_path / "cache" / "reference"
    written = {path.name: path.read_bytes() for path in folder.glob("*.pt")}
    assert len(written) == 6  # log-probs and summary, 3 shards each
    for path in folder.glob("*.pt"):
        path.unlink()
    passes, locks = [], []
    real_pass, real_lock = preference.reference_pass, preference.locked_file

    def recording_pass(reference, examples, *args, kinds, **kwargs):
        passes.append((sorted(kinds), len(examples)))
        return real_pass(reference, examples, *args, kinds=kinds, **kwargs)

    def lock(path, wait):  # pass-<hash>-<shard>.lock
        shard = int(path.stem.rsplit("-", 1)[1])
        locks.append((shard, wait))
        if shard == 1 and not wait:
            return None  # another run is computing shard 1
        if shard == 1 and other_run_finishes:
            for name, data in written.items():
                if name.endswith("-1.pt"):
                    (folder / name).write_bytes(data)
        return real_lock(path, wait)

    monkeypatch.setattr(preference, "reference_pass", recording_pass)
    monkeypatch.setattr(preference, "locked_file", lock)
    train_preference(config, PAIRS, methods.get("tdpo2"), tmp_path / "side")
    assert locks == [(0, False), (1, False), (2, False), (1, True)]
    both = ["logps", "summary"]
    assert passes == [(both, 2), (both, 2)] + ([] if other_run_finishes else [(both, 2)])
    assert _steps(tmp_path / "side")[-1]["loss"] == _steps(tmp_path / "alone")[-1]["loss"]


@pytest.mark.slow
def test_a_run_computes_what_its_companions_need_in_its_own_forwards(tmp_path, monkeypatch, small_shards):
    """DPO told that TDPO2 and SparsePO-MaPO train on the same pairs computes their KL summary in the
    forwards of its own log-probs pass and their masks in a forward of their own (per shard); they then
    run no reference pass at all and
    train exactly as they do from a pass of their own. As in a suite, DPO's own config says
    token_reference "online" (a field it never reads) and the companions' settings say "cached"."""
    config = quick(lora=LoraSettings(r=4, alpha=8), steps=2, lr=1e-2)
    alone = {}
    for name in ("tdpo2", "sparsepo_mapo"):
        monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / f"cache-{name}"))
        train_preference(config, PAIRS, methods.get(name), tmp_path / f"alone-{name}")
        alone[name] = _steps(tmp_path / f"alone-{name}")
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "shared"))
    passes = recorded_passes(monkeypatch)
    companions = [(methods.get(name), {"token_reference": "cached"}) for name in ("tdpo2", "sparsepo_mapo")]
    dpo_config = config.model_copy(update={"token_reference": "online"})
    train_preference(dpo_config, PAIRS, methods.get("dpo"), tmp_path / "dpo", share_with=companions)
    assert passes == [["logps", "summary"], ["masks"]] * 3
    def values(steps: list[dict]) -> list[dict]:  # what training computed (timings left out)
        return [{k: v for k, v in step.items() if not k.endswith(("_s", "per_s"))} for step in steps]

    for name in ("tdpo2", "sparsepo_mapo"):
        train_preference(config, PAIRS, methods.get(name), tmp_path / name)
        assert values(_steps(tmp_path / name)) == values(alone[name]), name
    assert len(passes) == 6  # neither ran a pass


@pytest.mark.slow
def test_a_companions_summary_the_model_cannot_give_is_dropped_and_the_run_trains_as_alone(tmp_path, monkeypatch):
    """DPO told of TDPO2 on a model whose logits are transformed after the output layer (soft-capping:
    no KL summary possible) retries its pass without the summary and trains exactly as DPO alone."""
    from bench.train import preference

    config = quick(lora=LoraSettings(r=4, alpha=8), steps=2, lr=1e-2)
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "cache-alone"))
    train_preference(config, PAIRS, methods.get("dpo"), tmp_path / "alone")

    def soft_capped(*args, **kwargs):
        raise preference.SummaryUnavailable("the model transforms its output layer's logits before returning them")

    monkeypatch.setattr(preference, "completion_forward_with_hidden", soft_capped)
    passes = recorded_passes(monkeypatch)
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "cache-shared"))
    train_preference(config, PAIRS, methods.get("dpo"), tmp_path / "told",
                     share_with=[(methods.get("tdpo2"), {"token_reference": "cached"})])
    assert passes[0] == ["logps", "summary"] and set(map(tuple, passes[1:])) == {("logps",)}, passes
    assert _steps(tmp_path / "told")[-1]["loss"] == _steps(tmp_path / "alone")[-1]["loss"]
    assert not list((tmp_path / "cache-shared").rglob("summary-*"))  # nothing half-computed was kept
