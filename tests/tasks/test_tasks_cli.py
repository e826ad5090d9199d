"""`pobench tasks`: lists the six tasks with sources and metrics; JSON output; judge accuracy."""
from __future__ import annotations

import json
import re

import pytest

from bench.cli import main
from tasks.base import shared_data_dir


def test_lists_six_tasks(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("imdb", "hh", "tldr", "humaneval", "mbpp", "reasoning"):
        assert f"\n{name} " in f"\n{out}"
    assert "source hub      stanfordnlp/imdb" in out
    assert "reward (higher), kl (lower)" in out
    assert "tasks" in out.strip().splitlines()[-1]


def test_json_output_and_resolved_source(capsys, tmp_path):
    assert main(["tasks", "imdb", "tldr", "--json", "--data-dir", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["imdb", "tldr"]
    imdb = rows[0]
    assert [s["kind"] for s in imdb["sources"]] == ["hub", "local", "builtin"]
    assert {m["name"]: m["direction"] for m in imdb["metrics"]}["kl"] == "lower"
    assert rows[1]["resolved_source"].startswith("unavailable: task 'tldr': --data-dir")


def test_unknown_task_exits_2(capsys):
    assert main(["tasks", "nope"]) == 2
    assert "unknown task(s) ['nope']" in capsys.readouterr().err


@pytest.mark.skipif(not (shared_data_dir() / "imdb" / "imdb_test_sample1000.derived.jsonl").exists(),
                    reason="IMDB labelled sample not found (set POBENCH_SHARED_DATA)")
@pytest.mark.slow
def test_judge_accuracy_is_reported(capsys):
    assert main(["tasks", "imdb", "--judge-accuracy", "--judge", "sentiment:vader",
                 "--data-dir", str(shared_data_dir())]) == 0
    out = capsys.readouterr().out
    match = re.search(r"judge accuracy: (0\.\d{3}) \[95% CI .*\] on 1000 labelled reviews", out)
    assert match and float(match.group(1)) > 0.65


def test_evaluate_is_for_model_evaluation_tasks(capsys):
    assert main(["tasks", "imdb", "--evaluate", "some/model"]) == 2
    assert "--evaluate is for model-evaluation tasks" in capsys.readouterr().err
    assert main(["tasks", "--evaluate", "some/model"]) == 2
