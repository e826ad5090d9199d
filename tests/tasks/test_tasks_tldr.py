"""TL;DR task on the small fixture in the hub schema: loading, bad rows, end-to-end scoring."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

import tasks
from tasks.base import DataError, PairLogps
from tests.fixtures.tasks_support import tiny_samples

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_fixture_loads_in_every_role():
    task = tasks.get("tldr", data_dir=FIXTURES)
    assert task.resolve_source() == "local"
    evals = task.eval_prompts()
    assert len(evals) == 7 and all(p.text.endswith("\n\nTL;DR:") and p.reference for p in evals)
    assert len(task.sft_data()) == 6 and len(task.preference_data()) == 6 and len(task.eval_pairs()) == 4
    assert all(pair.chosen != pair.rejected for pair in task.preference_data())
    sources = task.record()["data_sources"]
    assert {Path(s["location"]).name for s in sources} == {"test.jsonl", "train.jsonl", "validation.jsonl"}


def test_bad_row_names_file_line_and_field(tmp_path):
    shutil.copytree(FIXTURES / "tldr", tmp_path / "tldr")
    path = tmp_path / "tldr" / "tldr" / "test.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = json.dumps({"prompt": "SUBREDDIT: r/x\n\nTL;DR:", "completion": 3})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"test.jsonl:3: field 'completion' missing or not a non-empty string"):
        tasks.get("tldr", data_dir=tmp_path).eval_prompts()


def test_missing_local_copy_says_what_to_do(tmp_path):
    with pytest.raises(tasks.TaskError, match="does not hold tldr"):
        tasks.get("tldr", data_dir=tmp_path).eval_prompts()


def test_scores_real_samples_end_to_end():
    task = tasks.get("tldr", data_dir=FIXTURES)
    prompts = task.eval_prompts(limit=3)
    samples = tiny_samples(prompts, n=2, max_new_tokens=8)
    scores = task.score(samples, pair_logps=[PairLogps("v1", -3, -4, -3, -3)])
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for key in ("rouge1", "rouge2", "rougeL"):
        direct = [scorer.score(s.reference.strip(), s.completion.strip())[key].fmeasure for s in samples]
        assert scores.metrics[key] == pytest.approx(sum(direct) / len(direct))
    assert scores.details["self_bleu_scope"] == "within prompt" and 0 <= scores.metrics["self_bleu"] <= 100
    assert scores.metrics["alignment_accuracy"] == 1.0
    assert "win_rate" in scores.details["missing"]
    # the reference itself scores ROUGE 1 and similarity 1
    perfect = task.score([tasks.Sample.from_prompt(p, p.reference) for p in prompts])
    assert perfect.metrics["rouge1"] == pytest.approx(1.0)
    assert perfect.metrics["similarity_to_reference"] == pytest.approx(1.0, abs=1e-5)
