"""Every paper suite end to end at tiny scale, through the overrides a user has (``pobench run CONFIG key=value``):
the tiny random model, the fixtures of tests/fixtures in place of hub data, 2 optimizer steps, every stage the
suite uses (SFT, preference data, preparation, training, generation, scoring, evaluation tasks), so that a GPU
user never meets a crash in a stage path CI never ran. The overrides are tests/fixtures/paper_pipelines.py's,
the ones docs/paper_recipes.md gives users.

Each suite runs in this process (``bench.cli.main``); the times are printed. Measured on 2 CPU cores: all nine
in 140 s (5-28 s each), hence ``slow``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.config import load_suite
from tests.fixtures.paper_pipelines import python_token_model, tiny_overrides

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PAPER_SUITES = sorted((REPO / "configs" / "paper").glob("*.yaml"))
TIMES: dict[str, tuple[float, float]] = {}  # suite -> (wall-clock, CPU) seconds


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("paper-cache")


@pytest.fixture(autouse=True)
def _private_cache(cache, monkeypatch):
    monkeypatch.setenv("POBENCH_CACHE", str(cache))


@pytest.fixture(scope="module", autouse=True)
def _report_times():
    yield
    if TIMES:
        lines = "\n".join(f"  {name:<16} {wall:6.1f} s wall-clock, {cpu:6.1f} s CPU"
                          for name, (wall, cpu) in TIMES.items())
        print(f"\npaper pipelines at tiny scale ({sum(w for w, _ in TIMES.values()):.0f} s wall-clock, "
              f"{sum(c for _, c in TIMES.values()):.0f} s CPU in all):\n{lines}")


def records(work: Path, stage: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((work / stage).glob("*/record.json"))]


@pytest.mark.parametrize("path", PAPER_SUITES, ids=[p.stem for p in PAPER_SUITES])
def test_paper_suite_runs_end_to_end_at_tiny_scale(path, tmp_path, capsys):
    overrides = tiny_overrides(path)
    if load_suite(path).tasks == ["mbpp"]:  # sampled programs that pass, not only the reference fallback
        overrides.append(f"models.0.id={python_token_model(tmp_path / 'python-token-model')}")
    work, results = tmp_path / "work", tmp_path / "results"
    started, cpu = time.perf_counter(), time.process_time()
    code = main(["run", str(path), *overrides, "--work-dir", str(work), "--results-dir", str(results)])
    TIMES[path.stem] = (time.perf_counter() - started, time.process_time() - cpu)
    assert code == 0, capsys.readouterr().err[-4000:]

    raw = yaml.safe_load(path.read_text())
    suite = load_suite(path, overrides)
    board = json.loads((results / "leaderboard.json").read_text())
    measured = {r["method"] for r in board["rows"] if r["kind"] == "measured"}
    assert measured == set(raw["methods"]) and any(r["kind"] == "reference" for r in board["rows"])
    # every stage the suite uses ran
    expected = {"prefdata", "train", "generate", "score"}
    if suite.sft.enabled:
        expected.add("sft")
    if suite.eval_tasks:
        expected.add("evaluate")
    if "tis_dpo" in raw["methods"]:
        expected.add("prep")
    assert {s for s in expected if records(work, s)} == expected
    prefdata = records(work, "prefdata")[0]
    pairs = [json.loads(line) for line in (work / "prefdata" / prefdata["key"] / "pairs.jsonl").open()]
    assert pairs and all(p["chosen"] != p["rejected"] for p in pairs)
    # the recipe's training options reach the trainer (the config it saved), e.g. RMSprop and the schedule
    for record in records(work, "train"):
        config = json.loads((Path(record["trainer_dir"]) / "result.json").read_text())["extra"]["config"]
        recipe = next((s.train for s in suite.method_specs if s.name == record["method"]), suite.train)
        assert config.get("optimizer", "adamw") == recipe.optimizer
        assert (config["lr_schedule"], config["max_grad_norm"]) == (recipe.lr_schedule, recipe.max_grad_norm)
    if suite.tasks == ["mbpp"]:  # sampled programs passed the sandbox's tests, not only reference solutions
        assert any(p["meta"].get("chosen_source") == "sample" for p in pairs)
    if suite.prefdata.pairs == "all":  # several pairs per prompt, ids <prompt>/<chosen>><rejected>
        assert all(">" in p["id"] for p in pairs)
    if suite.eval_tasks:  # the lm-eval metrics are columns of every row
        for row in board["rows"]:
            assert {"arc_challenge_acc", "gsm8k_exact_match_strict_match"} <= row["metrics"].keys(), row["label"]
