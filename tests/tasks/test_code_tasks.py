"""HumanEval and MBPP on the task contract: prompts, scoring Samples, generated pairs, sources."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import tasks
from tasks.base import DataError, Sample, TaskError


@pytest.fixture()
def humaneval(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tasks.get("humaneval", source="builtin", timeout=10.0)


def test_humaneval_prompts_and_score(humaneval) -> None:
    prompts = humaneval.eval_prompts(limit=2)
    assert [p.id for p in prompts] == ["HumanEval/0", "HumanEval/1"]
    assert prompts[0].text.startswith("from typing import List") and prompts[0].meta["entry_point"] == "has_close_elements"
    samples = [Sample.from_prompt(prompts[0], prompts[0].reference, index=0),
               Sample.from_prompt(prompts[0], "    return True\n", index=1),
               Sample.from_prompt(prompts[1], prompts[1].reference, index=0),
               Sample.from_prompt(prompts[1], prompts[1].reference, index=1)]
    scores = humaneval.score(samples)
    assert scores.metrics == pytest.approx({"pass@1": (0.5 + 1.0) / 2})
    assert [row["passed"] for row in scores.per_sample] == [True, False, True, True]
    assert scores.details["problems_attempted"] == 2 and scores.details["isolation"]
    record = humaneval.record()
    assert record["task"] == "humaneval" and record["data_source"]["kind"] == "builtin"

    pairs = humaneval.pairs_from_samples(samples)
    assert len(pairs) == 1 and pairs[0].chosen == prompts[0].reference and pairs[0].rejected == "    return True\n"


def test_humaneval_is_eval_only(humaneval) -> None:
    assert humaneval.preference_mode == "none"
    with pytest.raises(TaskError, match="no training split"):
        humaneval.train_prompts()


def test_humaneval_bad_problem_file_names_the_line(tmp_path: Path) -> None:
    folder = tmp_path / "humaneval"
    folder.mkdir()
    import gzip
    with gzip.open(folder / "HumanEval.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"task_id": "HumanEval/0", "prompt": "def f():\n", "canonical_solution": "  return 1\n",
                                 "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}) + "\n")
        handle.write(json.dumps({"task_id": "HumanEval/1", "prompt": "x"}) + "\n")
    task = tasks.get("humaneval", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"HumanEval.jsonl.gz:2: missing or non-string field"):
        task.problems()


def _write_mbpp(folder: Path) -> None:
    rows = [
        {"task_id": 11, "text": "Write a function to add two numbers.", "code": "def add(a, b):\r\n  return a + b",
         "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "test_setup_code": "",
         "challenge_test_list": []},
        {"task_id": 601, "text": "Write a function to negate.", "code": "def neg(x):\n  return -x",
         "test_list": ["assert neg(2) == -2"], "test_setup_code": "", "challenge_test_list": []},
    ]
    (folder / "mbpp").mkdir()
    (folder / "mbpp" / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_mbpp_from_a_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _write_mbpp(tmp_path)
    task = tasks.get("mbpp", data_dir=tmp_path, timeout=10.0)
    assert [p.id for p in task.eval_prompts()] == ["11"] and [p.id for p in task.train_prompts()] == ["601"]
    assert task.eval_prompts()[0].text == '"""\nWrite a function to add two numbers.\nassert add(1, 2) == 3\n"""\n'
    assert task.sft_data()[0].completion == "def neg(x):\n  return -x"
    prompt = task.train_prompts()[0]
    samples = [Sample.from_prompt(prompt, "def neg(x):\n    return -x\n"),
               Sample.from_prompt(prompt, "def neg(x):\n    return x\n", index=1)]
    assert task.reward(samples) == [1.0, 0.0]
    pairs = task.pairs_from_samples(samples)
    assert [(p.chosen, p.rejected) for p in pairs] == [(samples[0].completion, samples[1].completion)]
    # evalplus-style ids ("Mbpp/11") and integer ids resolve to pobench's
    assert task.alias("Mbpp/11") == "11" and task.alias(11) == "11"


def test_mbpp_bad_record_names_the_line(tmp_path: Path) -> None:
    _write_mbpp(tmp_path)
    with open(tmp_path / "mbpp" / "mbpp.jsonl", "a") as handle:
        handle.write(json.dumps({"task_id": 700, "text": "x", "code": "y", "test_list": []}) + "\n")
    with pytest.raises(DataError, match=r"mbpp.jsonl:3: 'test_list' must be a non-empty list"):
        tasks.get("mbpp", data_dir=tmp_path).problems()


def test_mbpp_missing_files_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="does not hold"):
        tasks.get("mbpp", data_dir=tmp_path).problems()
    with pytest.raises(TaskError, match="variant must be one of"):
        tasks.get("mbpp", variant="plus")
