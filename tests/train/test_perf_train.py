"""`pobench bench train` on the suites' recipe: LoRA on both sides, alternating rounds, FLOP/s estimate.

Runs the real benchmark driver (every configuration in its own subprocess) on the tiny model; asserts
the report's structure and sanity bounds only, never absolute timings.
"""
from __future__ import annotations

import json
import math

import pytest

from bench.perf_train import LORA, benchmark_train, flops_per_token

pytest.importorskip("trl", reason="the benchmark races TRL's DPOTrainer (pip install 'pobench[test]')")
pytest.importorskip("peft")


def test_flops_per_token_counts_reference_and_trainable():
    assert flops_per_token(100, 100, False) == 600  # full fine-tuning: 6 P
    assert flops_per_token(100, 1, False) == 402  # LoRA: forward + activation gradients + the adapters' gradients
    assert flops_per_token(100, 1, True) == 602  # + a reference forward at every step


@pytest.mark.slow
def test_bench_train_lora_rounds(tmp_path, monkeypatch):
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "cache"))  # the workers' tiny model and reference cache
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    report = benchmark_train(model="tiny", lora=True, rounds=2, steps=3, warmup=1, batch_size=2,
                             token_methods=("tdpo2",), trl=True, out_dir=tmp_path / "perf", log=lambda *_: None)

    path = tmp_path / "perf" / "train-tiny-fp32-lora.json"
    assert report["output"] == str(path)
    written = json.loads(path.read_text())
    assert written["ratios"] == report["ratios"]
    report = written

    names = ["ours_dpo", "ours_tdpo2", "ours_tdpo2_online", "trl_dpo", "trl_dpo_precomputed_ref"]
    # every configuration ran in both rounds, the second round in reversed order
    assert report["order"] == [names, names[::-1]]
    assert set(report["runs"]) == set(names)
    for name, run in report["runs"].items():
        assert [r["round"] for r in run["rounds"]] == [0, 1]
        assert [r["position"] for r in run["rounds"]] == [names.index(name), len(names) - 1 - names.index(name)]
        assert len(run["round_median_step_s"]) == 2
        assert len(run["step_times_s"]) == 2 * (3 - 1)  # both rounds' timed steps
        assert 0 < run["fraction_of_peak"] < 1.5, (name, run["fraction_of_peak"])
        assert run["achieved_gflops"] > 0 and run["tokens_per_step"] > 0
        # LoRA on both sides: only adapter weights are trained (our DPO and TRL alike)
        assert {**run["lora"], "target_modules": sorted(run["lora"]["target_modules"])} == \
            {**LORA, "target_modules": sorted(LORA["target_modules"])}, name
        assert run["params_trainable_non_adapter"] == 0, name
        assert 0 < run["params_trainable"] < 0.05 * run["params"], name

    # the recipe is recorded
    config = report["config"]
    assert config["peft"] == "lora" and config["rounds"] == 2 and config["gradient_checkpointing"] is False
    assert config["lora"] == {"r": 16, "alpha": 32, "dropout": 0.0,
                              "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}

    runs = report["runs"]
    # the reference runs at every step for TRL's default and our token-level method's online variant, never for
    # our DPO or TDPO2 (cached log-probs / KL summary, from a pass before the timed steps that each worker runs)
    assert not runs["ours_dpo"]["reference_each_step"] and not runs["trl_dpo_precomputed_ref"]["reference_each_step"]
    assert not runs["ours_tdpo2"]["reference_each_step"] and runs["ours_tdpo2"]["reference_plan"] == "cached"
    assert runs["ours_tdpo2_online"]["reference_each_step"] and runs["trl_dpo"]["reference_each_step"]
    assert runs["ours_dpo"]["reference_pass_s"] > 0 and runs["ours_tdpo2"]["reference_pass_s"] > 0
    # same model, same trainable adapters on both sides
    assert runs["ours_dpo"]["params"] == runs["trl_dpo"]["params"]
    assert runs["ours_dpo"]["params_trainable"] == runs["trl_dpo"]["params_trainable"]

    targets = report["targets"]
    assert targets["dpo_vs_trl"]["threshold"] == 1.5 and targets["dpo_vs_trl"]["target"] == ">= 1.5"
    for key in ("tdpo2_step_time", "tdpo2_peak_memory"):
        assert targets[key]["threshold"] == 1.15 and targets[key]["target"] == "<= 1.15"
    for target in targets.values():
        assert target["met"] == (target["value"] >= target["threshold"] if target["target"].startswith(">=")
                                 else target["value"] <= target["threshold"])
    assert {"ours_dpo_vs_best_trl_pairs_per_s", "ours_dpo_vs_best_trl_pairs_per_cpu_s",
            "tdpo2_vs_dpo_step_time", "tdpo2_vs_dpo_step_cpu_time", "tdpo2_vs_dpo_peak_memory",
            "tdpo2_online_vs_dpo_step_time", "tdpo2_online_vs_dpo_peak_memory"} <= set(report["ratios"])
    for key, value in report["ratios"].items():
        assert math.isfinite(value) and value > 0, (key, value)
    assert report["peak"]["fp32"]["gflops"] > 0
