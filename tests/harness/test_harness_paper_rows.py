"""Published reference values (``paper_reference`` in configs/paper/*.yaml): every value names a metric
its task reports, on that metric's scale, with an arXiv citation; and the leaderboard shows them as
separate, labelled ``paper`` rows that never mix with measured rows or with ``pobench check``."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import tasks
from bench.check import compare
from bench.config import SuiteConfig, load_suite, validate
from bench.plan import build_plan
from bench.report import markdown, table_rows
from bench.runner import make_leaderboard
from bench.store import RECORD, Store

REPO = Path(__file__).resolve().parents[2]
PAPER_SUITES = sorted((REPO / "configs" / "paper").glob("*.yaml"))
ARXIV_ID = re.compile(r"arXiv[: ]?\s*\d{4}\.\d{4,5}")
# metrics that are fractions in [0, 1] here, so a percentage copied from a paper (59.43) fails
FRACTIONS = re.compile(r"^(alignment_accuracy|win_rate|closer_to_chosen|distinct_\d|rouge\w*|pass@\d+)$")


def reference_problems(suite: SuiteConfig) -> list[str]:
    """What is wrong with a suite's paper_reference entries (empty when nothing is)."""
    problems = []
    extra = {m.name for name in getattr(suite, "eval_tasks", []) for m in tasks.task_class(name).metrics}
    for i, paper in enumerate(suite.paper_reference):
        where = f"paper_reference[{i}] ({paper.method})"
        task = paper.task or suite.tasks[0]
        if task not in suite.tasks:
            problems.append(f"{where}: task {task!r} is not one of the suite's tasks {suite.tasks}")
            continue
        reported = {m.name for m in tasks.task_class(task).metrics} | extra | {"kl"}
        if paper.metric not in reported:
            problems.append(f"{where}: metric {paper.metric!r} is not reported by task {task!r}: {sorted(reported)}")
        if FRACTIONS.match(paper.metric) and not 0.0 <= paper.value <= 1.0:
            problems.append(f"{where}: {paper.metric} is a fraction here, got {paper.value} (a percentage?)")
        if not ARXIV_ID.search(paper.source):
            problems.append(f"{where}: source must name the paper's arXiv id, got {paper.source!r}")
        if not paper.note.strip():
            problems.append(f"{where}: note must say which model/data the paper used")
    return problems


@pytest.mark.parametrize("path", PAPER_SUITES, ids=[p.stem for p in PAPER_SUITES])
def test_paper_reference_values_name_reported_metrics_and_cite_arxiv(path):
    suite = load_suite(path)
    assert reference_problems(suite) == []


def test_shipped_paper_suites_carry_some_published_rows():
    assert sum(len(load_suite(p).paper_reference) for p in PAPER_SUITES) >= 1


def test_the_reference_check_catches_typos_percentages_and_missing_citations():
    suite = validate({"name": "t", "tasks": ["hh"], "methods": {"dpo": {}}, "paper_reference": [
        {"method": "dpo (paper)", "metric": "alignment_acuracy", "value": 0.6, "source": "arXiv 2404.11999", "note": "x"},
        {"method": "dpo (paper)", "metric": "alignment_accuracy", "value": 59.43, "source": "arXiv 2404.11999",
         "note": "x"},
        {"method": "dpo (paper)", "metric": "win_rate", "value": 0.5, "source": "some paper, Table 1", "note": "x"},
        {"method": "dpo (paper)", "metric": "win_rate", "value": 0.5, "source": "arXiv 2404.11999", "note": "x",
         "task": "imdb"},
    ]})
    problems = reference_problems(suite)
    assert len(problems) == 4, problems
    assert "'alignment_acuracy' is not reported by task 'hh'" in problems[0]
    assert "got 59.43 (a percentage?)" in problems[1]
    assert "arXiv id" in problems[2]
    assert "task 'imdb' is not one of the suite's tasks" in problems[3]


def fake_scores(task_metrics: dict[str, float], shift: float) -> dict:
    """A score stage's scores.json for 8 prompts (what the hh task writes, minus the samples)."""
    per_sample = [{"prompt_id": f"p{i}", "index": 0, **{m: v + shift + 0.01 * (i % 3) for m, v in task_metrics.items()}}
                  for i in range(8)]
    metrics = {m: sum(r[m] for r in per_sample) / 8 for m in task_metrics}
    return {"metrics": metrics, "per_sample": per_sample, "directions": {"similarity_to_chosen": True}}


def test_leaderboard_shows_paper_rows_separately_and_check_ignores_them(tmp_path):
    """Real paper suite, fake finished score stages: the rows come out of the runner's own path."""
    suite = load_suite(REPO / "configs" / "paper" / "tdpo_hh.yaml")
    assert suite.paper_reference, "tdpo_hh.yaml lost its published DPO row"
    plan = build_plan(suite)
    store = Store(tmp_path / "work")
    for i, cell in enumerate(plan.cells):  # only the score stage is needed to build a leaderboard
        out = store.path("score", cell.score.key)
        out.mkdir(parents=True)
        (out / "scores.json").write_text(json.dumps(fake_scores({"similarity_to_chosen": 0.5}, 0.02 * i)))
        (out / RECORD).write_text(json.dumps({"seconds": 0.0}))
    board, runs = make_leaderboard(plan, store)
    assert len(runs) == len(plan.cells)

    paper_rows = [r for r in board["rows"] if r["kind"] == "paper"]
    measured = [r for r in board["rows"] if r["kind"] != "paper"]
    assert len(paper_rows) == len({(p.task or "hh", p.method) for p in suite.paper_reference})
    expected = {(p.method, p.metric): p for p in suite.paper_reference}
    for row in paper_rows:
        assert row["id"].startswith(f"{row['task']}/paper/") and row["label"].endswith("(paper)")
        assert row["seeds"] == [] and "arXiv" in row["source"] and row["note"]
        for metric, stats in row["metrics"].items():
            assert stats["mean"] == expected[(row["method"], metric)].value and stats["ci"] is None
        assert "vs_reference" not in row
    # published values never leak into measured rows, and measured rows keep their own ids
    assert {r["id"] for r in measured} == {c.row_id for c in plan.cells}
    assert all("alignment_accuracy" not in r["metrics"] for r in measured)

    header, rows = table_rows(board)
    kinds = [r[header.index("kind")] for r in rows]
    assert kinds[-len(paper_rows):] == ["paper"] * len(paper_rows), "paper rows come after measured ones"
    paper_cells = [r for r in rows if r[header.index("kind")] == "paper"]
    assert all(r[header.index("flags")].startswith("paper: ") for r in paper_cells)
    assert paper_cells[0][header.index("alignment_accuracy")] == f"{suite.paper_reference[0].value:.3f}"
    assert "`paper` rows are published numbers" in markdown(board)

    # a regression check of a board against itself compares measured rows only
    comparisons = compare(board, board)
    assert comparisons and not any("/paper/" in c.row for c in comparisons)
