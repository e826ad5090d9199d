"""Results in README and docs are generated from the committed leaderboards, never typed by hand."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench import readme
from bench.leaderboard import load_leaderboard

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_results_block_is_the_summary_of_its_committed_leaderboard(path):
    text = path.read_text()
    for match in readme.BLOCK.finditer(text):
        board = load_leaderboard(REPO / "results" / match.group("suite"))
        assert match.group("body") == readme.summary(board), (
            f"{path.name}: the results block of {match.group('suite')} is stale; regenerate it with "
            f"`pobench leaderboard {match.group('suite')} --readme {path.relative_to(REPO)}`")


def test_update_rewrites_only_the_marked_block(tmp_path):
    board = {"suite": "s", "rows": [], "ranking": {}, "frontiers": [], "contrasts": []}
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- pobench:results s -->\nold numbers\n<!-- /pobench:results -->\noutro\n")
    assert readme.update(doc, {"s": board})
    assert doc.read_text() == f"intro\n<!-- pobench:results s -->\n{readme.summary(board)}<!-- /pobench:results -->\noutro\n"
    assert not readme.update(doc, {"s": board})  # idempotent


def _row(kind, method, metrics, step=None, task="hh"):
    return {"kind": kind, "task": task, "method": method, "label": method, "step": step, "metrics": metrics}


def test_paper_orderings_compare_published_and_measured_orders_and_say_when_cis_overlap():
    paper = [_row("paper", "dpo (paper)", {"acc": {"mean": 0.59}, "ent": {"mean": 3.2}}),
             _row("paper", "tdpo2 (paper)", {"acc": {"mean": 0.67}, "ent": {"mean": 4.9}})]
    measured = [_row("measured", "dpo", {"acc": {"mean": 0.40, "ci": [0.3, 0.5]}, "ent": {"mean": 2.0, "ci": [1.9, 2.1]}}, 6),
                _row("measured", "dpo", {"acc": {"mean": 0.70, "ci": [0.65, 0.75]}, "ent": {"mean": 2.5, "ci": [2.4, 2.6]}}, 12),
                _row("measured", "tdpo2", {"acc": {"mean": 0.60, "ci": [0.55, 0.72]}, "ent": {"mean": 3.0, "ci": [2.7, 3.3]}}, 12)]
    lines = readme.paper_orderings({"rows": paper + measured})
    # the last step counts: dpo@12 beats tdpo2 on accuracy (against the paper), CIs overlap; entropy agrees, CIs apart
    assert lines[4] == ("| acc | tdpo2 0.670 > dpo 0.590 | dpo 0.700 [0.650, 0.750] > tdpo2 0.600 [0.550, 0.720] | "
                        "no; CIs overlap: not established at this scale |")
    assert lines[5] == ("| ent | tdpo2 4.900 > dpo 3.200 | tdpo2 3.000 [2.700, 3.300] > dpo 2.500 [2.400, 2.600] | "
                        "yes; CIs apart |")
    assert readme.paper_orderings({"rows": measured}) == []  # no published values, no section


def test_without_kl_the_block_shows_each_configurations_metrics_and_its_difference_to_the_reference():
    rows = [dict(_row("reference", "reference", {"pass@1": {"mean": 0.1, "ci": [0.0, 0.2]}}), vs_reference=None),
            dict(_row("measured", "dpo", {"pass@1": {"mean": 0.05, "ci": [0.0, 0.1]}}, 8), vs_reference={}),
            dict(_row("measured", "dpo", {"pass@1": {"mean": 0.15, "ci": [0.05, 0.25]}}, 16),
                 vs_reference={"pass@1": {"mean": 0.05, "ci": [-0.02, 0.12]}})]
    board = {"suite": "code", "rows": rows, "frontiers": [], "contrasts": [],
             "metrics": {"pass@1": {"higher_is_better": True}, "kl": {"higher_is_better": False}},
             "ranking": {"hh": {"metric": "pass@1", "reason": "no KL (sampled at temperature 0.8)", "order": []}}}
    text = readme.summary(board)
    assert "No matched-KL comparison: no KL (sampled at temperature 0.8)." in text
    assert "| configuration | pass@1 | pass@1 vs reference |" in text
    # the last step, best first; the reference has no difference to itself
    assert text.index("| dpo | 0.150 [0.050, 0.250] | 0.050 [-0.020, 0.120] |") < text.index(
        "| reference | 0.100 [0.000, 0.200] | - |")


def test_the_compute_line_gives_the_wall_span_when_stages_ran_side_by_side():
    from bench.runner import compute_summary

    def run(*stages):
        return {"stages": {f"{kind}:{kind} {i}": {"key": f"{kind}{i}", "seconds": s, "finished_at": f}
                           for i, (kind, s, f) in enumerate(stages)}}

    # two jobs: a 10 s stage from t=0 and a 6 s one from t=2, then a 4 s one from t=10: 14 s in all
    side_by_side = compute_summary([run(("train", 10.0, 10.0), ("generate", 6.0, 8.0), ("score", 4.0, 14.0))])
    assert side_by_side["stage_seconds"] == 20.0 and side_by_side["span_seconds"] == 14.0
    text = readme.summary({"rows": [], "compute": side_by_side})
    assert "0.3 min of stage time" in text and "0.2 min from the first stage's start to the last one's end" in text
    # one after the other, with a pause (a resumed run): the span is longer, and not shown
    paused = compute_summary([run(("train", 10.0, 10.0), ("score", 4.0, 100.0))])
    assert paused["span_seconds"] == 100.0
    assert "from the first stage's start" not in readme.summary({"rows": [], "compute": paused})
    # records without finish times (boards made before they were kept): no span
    assert "span_seconds" not in compute_summary([{"stages": {"train:t": {"key": "k", "seconds": 3.0}}}])
