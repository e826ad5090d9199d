"""Reasoning task: the local lm-eval YAMLs read the real files right, and lm_eval.simple_evaluate
runs end to end on a tiny model with them."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

import tasks
from tasks.base import shared_data_dir
from tasks.reasoning import LOCAL_FILES, metric_key

DATA = shared_data_dir()
needs_data = pytest.mark.skipif(not all((DATA / f).exists() for f in LOCAL_FILES),
                                reason=f"GSM8K/ARC-Challenge files not found under {DATA} (set POBENCH_SHARED_DATA)")


def test_metric_keys():
    assert metric_key("pobench_gsm8k", "exact_match,strict-match") == "gsm8k_exact_match_strict_match"
    assert metric_key("arc_challenge", "acc_norm,none") == "arc_challenge_acc_norm"
    assert {m.name for m in tasks.task_class("reasoning").metrics} == {
        "gsm8k_exact_match_strict_match", "gsm8k_exact_match_flexible_extract", "arc_challenge_acc",
        "arc_challenge_acc_norm"}


@needs_data
def test_local_yamls_read_the_original_files():
    from lm_eval.tasks import TaskManager

    task = tasks.get("reasoning", data_dir=DATA)
    with tempfile.TemporaryDirectory() as tmp:
        manager = TaskManager(include_path=str(task.write_task_yamls(Path(tmp))), include_defaults=False)
        loaded = manager.load(["pobench_arc_challenge", "pobench_gsm8k"])["tasks"]
        arc, gsm = loaded["pobench_arc_challenge"], loaded["pobench_gsm8k"]
        arc_docs, gsm_docs = list(arc.test_docs()), list(gsm.test_docs())
    assert len(arc_docs) == 1172 and len(gsm_docs) == 1319  # the official test sizes
    first = arc_docs[0]  # Mercury_7175875, answer C = "Planetary days will become shorter."
    assert first["id"] == "Mercury_7175875"
    assert arc.doc_to_choice(first)[arc.doc_to_target(first)] == "Planetary days will become shorter."
    for doc in arc_docs[:200]:  # the target index always points at the labelled answer
        labels = [o["label"] for o in doc["options"]]
        assert arc.doc_to_target(doc) == labels.index(doc["answer"])
    assert gsm.doc_to_text(gsm_docs[0]).startswith("Question: Janet’s ducks lay 16 eggs per day.")
    assert gsm.doc_to_text(gsm_docs[0]).endswith("\nAnswer:")


@needs_data
@pytest.mark.slow
def test_simple_evaluate_end_to_end_on_a_tiny_model():
    from bench.models import tiny_model

    path = tiny_model(save=True)
    task = tasks.get("reasoning", data_dir=DATA, backend="hf")
    scores = task.evaluate_model(path, limit=2, gen_kwargs={"max_gen_toks": 8})
    assert set(scores.metrics) == {m.name for m in task.metrics}
    assert all(0.0 <= v <= 1.0 for v in scores.metrics.values())
    # per-item records: 2 GSM8K items x 2 filters + 2 ARC items
    assert sorted((r["task"], r["doc_id"]) for r in scores.per_sample if r["task"] == "arc_challenge") == [
        ("arc_challenge", 0), ("arc_challenge", 1)]
    assert len([r for r in scores.per_sample if r["task"] == "gsm8k"]) == 4
    arc_acc = [r["acc"] for r in scores.per_sample if r["task"] == "arc_challenge"]
    assert scores.metrics["arc_challenge_acc"] == pytest.approx(sum(arc_acc) / 2)
    assert scores.details["n_shot"] == {"pobench_gsm8k": 5, "pobench_arc_challenge": 0}
    assert scores.details["backend"] == "hf" and scores.details["limit"] == 2
    assert task.record()["data_source"]["kind"] == "local"


@needs_data
@pytest.mark.slow
def test_a_lora_checkpoint_is_evaluated_as_base_plus_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    from bench.models import tiny_model

    base = tiny_model(save=True)
    model, tokenizer = tiny_model()
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base  # a tiny model built in memory has no path of its own
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    task = tasks.get("reasoning", data_dir=DATA, backend="hf", lm_eval_tasks=["pobench_arc_challenge"])
    scores = task.evaluate_model(str(tmp_path), limit=2)
    assert set(scores.metrics) == {"arc_challenge_acc", "arc_challenge_acc_norm"}
    assert scores.details["model_args"]["pretrained"] == base
    assert scores.details["model_args"]["peft"] == str(tmp_path)
