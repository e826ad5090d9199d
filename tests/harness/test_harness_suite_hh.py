"""configs/hh.yaml end to end at tiny scale: the tiny random model on the project's harmless-base fixture
(tests/fixtures/hh-harmless), DPO and TDPO2 on 2 seeds, BCR on its one seed (a method's own ``seeds``), 2 optimizer
steps, through ``pobench run`` as a user runs it. The leaderboard must carry alignment accuracy with a CI over
held-out pairs and seeds, the paired ``vs reference`` difference, the reference row at 0.5 by construction with its
note, generation entropy, KL, distinct-n and the paper rows."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bench.cli import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "hh-harmless"
TINY = ["models.0.id=tiny", "methods=dpo,tdpo2,bcr", "seeds=[0,1]", "train.chat_template=false",
        f"task_options.hh.data_dir={FIXTURE}", "task_options.hh.source=local", "task_options.hh.max_eval_pairs=8",
        "prefdata.prompts=8", "train.steps=2", "train.batch_size=2", "train.checkpoint_every=0",
        "generation.backend=hf", "generation.prompts=4", "generation.max_new_tokens=8",
        "report.bootstrap_resamples=200"]


def test_hh_suite_end_to_end_at_tiny_scale(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "cache"))
    started = time.perf_counter()
    code = main(["run", str(REPO / "configs" / "hh.yaml"), *TINY, "--work-dir", str(tmp_path / "work"),
                 "--results-dir", str(tmp_path / "results"), "--plain"])
    print(f"\nhh suite at tiny scale: {time.perf_counter() - started:.1f} s")
    assert code == 0, capsys.readouterr().err[-4000:]
    board = json.loads((tmp_path / "results" / "leaderboard.json").read_text())
    rows = {r["label"]: r for r in board["rows"]}
    assert set(rows) == {"reference", "dpo", "tdpo2", "bcr", "dpo (paper)", "tdpo2 (paper)"}
    assert rows["bcr"]["seeds"] == [0] and rows["dpo"]["seeds"] == [0, 1] and rows["reference"]["seeds"] == [0, 1]
    assert board["primary_metric"] == {"hh": "alignment_accuracy"}

    ref = rows["reference"]["metrics"]["alignment_accuracy"]
    assert ref["mean"] == 0.5 and ref["ci"] == [0.5, 0.5] and "0.5 by construction" in ref["note"]
    assert "all 8 held-out pairs tie" in ref["note"]
    records = {}
    for path in (tmp_path / "results" / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        records[(record["label"], record["seed"])] = record
    for label in ("dpo", "tdpo2"):
        stats = rows[label]["metrics"]["alignment_accuracy"]
        assert stats["ci_over"] == "seeds and prompts (hierarchical bootstrap)" and stats["n_prompts"] == 8
        assert stats["ci"][0] <= stats["mean"] <= stats["ci"][1]
        per_seed = []
        for seed in (0, 1):
            pairs = records[(label, seed)]["per_pair"]
            assert len(pairs) == 8  # the fixture's 8 held-out pairs, each a unit
            for p in pairs:  # 1 / 0 / 1/2 by the sign of the implicit-reward margin
                assert p["alignment_accuracy"] == (1.0 if p["implicit_margin"] > 0 else
                                                   0.0 if p["implicit_margin"] < 0 else 0.5)
            per_seed.append(sum(p["alignment_accuracy"] for p in pairs) / 8)
        assert stats["mean"] == pytest.approx(sum(per_seed) / 2)
        vs = rows[label]["vs_reference"]["alignment_accuracy"]  # the reference is .5 on every pair and seed
        assert vs["ci_over"] == "seeds and prompts (paired hierarchical bootstrap)"
        assert vs["mean"] == pytest.approx(stats["mean"] - 0.5)
        assert vs["ci"] == pytest.approx([stats["ci"][0] - 0.5, stats["ci"][1] - 0.5])
    bcr = rows["bcr"]["metrics"]["alignment_accuracy"]  # one seed: a t-interval over the 8 pairs
    assert bcr["ci_over"] == "prompts" and bcr["n"] == 8
    for label in ("reference", "dpo", "tdpo2", "bcr"):
        metrics = rows[label]["metrics"]
        assert {"token_entropy", "kl", "distinct_1", "distinct_2", "similarity_to_chosen"} <= set(metrics)
        assert metrics["token_entropy"]["mean"] > 0 and metrics["token_entropy"]["ci"] is not None
    assert rows["reference"]["metrics"]["kl"]["mean"] == 0.0
    paper = rows["dpo (paper)"]["metrics"]
    assert paper["alignment_accuracy"]["mean"] == 0.5943 and paper["token_entropy"]["mean"] == 3.196
    assert rows["tdpo2 (paper)"]["metrics"]["alignment_accuracy"]["mean"] == 0.6733
    markdown = (tmp_path / "results" / "leaderboard.md").read_text()
    assert "alignment_accuracy: all 8 held-out pairs tie" in markdown

    # the held-out pairs are teacher-forced by pairs stages: one per policy, not per sampling seed (the
    # reference row's 2 seeds share one), and every policy's reference values are the reference stage's own
    stages = {}
    for d in (tmp_path / "work" / "pairs").iterdir():
        if d.is_dir():
            rows_of = [json.loads(line) for line in (d / "pair_logps.jsonl").read_text().splitlines()]
            stages[d.name] = (json.loads((d / "record.json").read_text()), rows_of)
    assert len(stages) == 6  # reference + dpo x 2 seeds + tdpo2 x 2 + bcr
    (reference_rows,) = [rows_of for record, rows_of in stages.values() if record["is_reference"]]
    assert [(r["ref_chosen"], r["ref_rejected"]) for r in reference_rows] == \
        [(r["policy_chosen"], r["policy_rejected"]) for r in reference_rows]
    margins = set()
    for record, rows_of in stages.values():
        assert record["pairs"] == 8
        assert [(r["pair_id"], r["ref_chosen"], r["ref_rejected"]) for r in rows_of] == \
            [(r["pair_id"], r["policy_chosen"], r["policy_rejected"]) for r in reference_rows]
        margins.add(tuple(round((r["policy_chosen"] - r["ref_chosen"]) - (r["policy_rejected"] - r["ref_rejected"]), 9)
                          for r in rows_of))
    per_run = {tuple(round(p["implicit_margin"], 9) for p in record["per_pair"]) for record in records.values()}
    assert per_run == margins  # what the runs report is what the pairs stages computed
