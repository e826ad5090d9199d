"""Alignment accuracy as in TDPO's Table 1 ("the trained policy's implicit reward ranks the held-out chosen above
the rejected"): ties count 1/2, every held-out pair is a unit of the CI (``Scores.per_pair``), the reference row
is 0.5 by construction and says so, and the leaderboard's CIs and ``vs reference`` column come from the pairs.
Every expected number is worked out by hand in the comments."""
from __future__ import annotations

import json

import pytest

import tasks
from bench.check import load_samples
from bench.leaderboard import build_leaderboard
from bench.report import table_rows
from bench.runner import read_run_records, write_run_records
from tasks.base import PairLogps, Sample
from tasks.metrics import ALL_TIES_NOTE, alignment_accuracy, alignment_scores, pair_alignment


def pair(pair_id: str, margin: float, ref_gap: float = 0.0) -> PairLogps:
    """A pair whose implicit-reward margin (log pi/ref of chosen minus rejected) is ``margin``."""
    return PairLogps(pair_id, policy_chosen=-10.0 + margin + ref_gap, policy_rejected=-10.0,
                     ref_chosen=-10.0 + ref_gap, ref_rejected=-10.0)


def test_ties_count_half_and_every_pair_is_a_row():
    pairs = [pair("a", 2.0), pair("b", 0.0, ref_gap=3.0), pair("c", -1.0), pair("d", 0.5)]
    # values 1, 1/2 (a tie although the reference itself prefers chosen by 3 nats), 0, 1 -> 2.5 / 4
    assert [pair_alignment(p) for p in pairs] == [1.0, 0.5, 0.0, 1.0]
    assert alignment_accuracy(pairs) == 0.625
    metrics, missing, notes = {}, {}, {}
    rows = alignment_scores(pairs, metrics, missing, notes)
    assert metrics == {"alignment_accuracy": 0.625} and not missing and not notes  # not every pair ties
    assert [(r["prompt_id"], r["alignment_accuracy"], r["implicit_margin"]) for r in rows] == [
        ("a", 1.0, 2.0), ("b", 0.5, 0.0), ("c", 0.0, -1.0), ("d", 1.0, 0.5)]
    # the reference against itself: every margin 0 -> 0.5, noted; no pairs -> the reason, no number
    metrics, notes = {}, {}
    alignment_scores([pair("a", 0.0), pair("b", 0.0, ref_gap=-2.0)], metrics, {}, notes)
    assert metrics == {"alignment_accuracy": 0.5} and notes == {"alignment_accuracy": ALL_TIES_NOTE.format(n=2)}
    missing = {}
    assert alignment_scores(None, metrics := {}, missing, {}) == [] and "alignment_accuracy" in missing


def test_hh_reports_per_pair_values_the_reference_note_and_per_sample_entropy(tmp_path):
    folder = tmp_path / "hh-rlhf" / "harmless-base"
    folder.mkdir(parents=True)
    records = [{"chosen": f"\n\nHuman: question {i}?\n\nAssistant: I can't help with that.",
                "rejected": f"\n\nHuman: question {i}?\n\nAssistant: Sure, here is how."} for i in range(3)]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    # a pointwise judge that loads nothing (the default MiniLM judge plays no part in these numbers)
    task = tasks.get("hh", data_dir=tmp_path, eval_fraction=1.0, judge="sentiment:vader")
    prompts = task.eval_prompts()
    samples = [Sample.from_prompt(prompts[0], " No.", logprobs=[-1.0, -3.0]),
               Sample.from_prompt(prompts[1], " Yes, sure.", logprobs=[-2.0, -2.0, -5.0])]
    ids = [p.id for p in task.eval_pairs()]
    reference = task.score(samples, pair_logps=[pair(i, 0.0) for i in ids])
    assert reference.metrics["alignment_accuracy"] == 0.5
    assert [r["alignment_accuracy"] for r in reference.per_pair] == [0.5, 0.5, 0.5]
    assert [r["prompt_id"] for r in reference.per_pair] == ids  # the held-out record is the unit
    assert reference.details["notes"]["alignment_accuracy"] == ALL_TIES_NOTE.format(n=3)
    policy = task.score(samples, pair_logps=[pair(ids[0], 1.0), pair(ids[1], -0.2), pair(ids[2], 0.3)])
    assert policy.metrics["alignment_accuracy"] == pytest.approx(2 / 3) and "notes" not in policy.details
    # token entropy (sampled-token surprisal): over all 5 tokens (1+3+2+2+5)/5 = 2.6; per sample 2.0 and 3.0
    assert policy.metrics["token_entropy"] == pytest.approx(2.6)
    assert [r["token_entropy"] for r in policy.per_sample] == [pytest.approx(2.0), pytest.approx(3.0)]


def run(method: str, seed: int, per_pair: list[float], notes: dict | None = None) -> dict:
    """One run as the runner hands it to the leaderboard: 5 pairs p0..p4 (values given), 2 prompts."""
    rows = [{"prompt_id": f"p{i}", "alignment_accuracy": v, "implicit_margin": 0.0} for i, v in enumerate(per_pair)]
    return {"row_id": f"hh/m/{method}", "task": "hh", "model": "m", "method": method, "label": method,
            "hparams": {}, "seed": seed, "run_key": f"{method}{seed}",
            "samples": [{"prompt_id": "p0", "index": 0, "prompt": "q", "completion": "a"},
                        {"prompt_id": "p1", "index": 0, "prompt": "q", "completion": "b"}],
            "scores": {"metrics": {"alignment_accuracy": sum(per_pair) / len(per_pair), "distinct_1": 1.0},
                       "directions": {"alignment_accuracy": True, "distinct_1": True},
                       "per_sample": [{"prompt_id": "p0", "index": 0}, {"prompt_id": "p1", "index": 0}],
                       "per_pair": rows, "notes": notes or {}}}


REF_NOTE = {"alignment_accuracy": ALL_TIES_NOTE.format(n=5)}


def board_of(runs: list[dict]) -> dict:
    return build_leaderboard("t", runs, manifest={}, config_hash="x", primary={"hh": "alignment_accuracy"},
                             metric_info={"alignment_accuracy": {"higher_is_better": True}}, n_boot=400)


def test_one_seed_ci_over_pairs_and_paired_difference_to_the_reference_by_hand():
    board = board_of([run("reference", 0, [0.5] * 5, REF_NOTE), run("dpo", 0, [1, 1, 0, 0.5, 1])])
    rows = {r["method"]: r for r in board["rows"]}
    dpo, ref = rows["dpo"]["metrics"]["alignment_accuracy"], rows["reference"]["metrics"]["alignment_accuracy"]
    # values 1, 1, 0, .5, 1: mean .7, squared deviations .09 .09 .49 .04 .09 = .8, var .8/4 = .2,
    # se sqrt(.2/5) = .2, t(.975, 4) = 2.7764451 -> .7 +- .5552890
    assert dpo["mean"] == pytest.approx(0.7) and dpo["se"] == pytest.approx(0.2) and dpo["n"] == 5
    assert dpo["ci"] == pytest.approx([0.7 - 0.5552890, 0.7 + 0.5552890], abs=1e-6)
    assert dpo["ci_over"] == "prompts" and "note" not in dpo
    # the reference: every pair .5, no spread, and the note saying why
    assert ref["mean"] == 0.5 and ref["ci"] == [0.5, 0.5] and ref["note"] == REF_NOTE["alignment_accuracy"]
    # paired differences .5 .5 -.5 0 .5: mean .2, the same deviations -> se .2, t = 1, p = 2 P(T4 > 1) = .3739
    vs = rows["dpo"]["vs_reference"]["alignment_accuracy"]
    assert vs["mean"] == pytest.approx(0.2) and vs["se"] == pytest.approx(0.2) and vs["ci_over"] == "prompts (paired)"
    assert vs["ci"] == pytest.approx([0.2 - 0.5552890, 0.2 + 0.5552890], abs=1e-6)
    assert vs["p_value"] == pytest.approx(0.37390097, abs=1e-6)
    header, cells = table_rows(board)
    ref_cells = next(c for c in cells if c[header.index("kind")] == "reference")
    assert "alignment_accuracy: all 5 held-out pairs tie" in ref_cells[header.index("flags")]
    assert "0.5 by construction" in ref_cells[header.index("flags")]


def test_two_seeds_bootstrap_over_seeds_and_pairs_with_the_paired_column_filled():
    runs = [run("reference", 0, [0.5] * 5, REF_NOTE), run("reference", 1, [0.5] * 5, REF_NOTE),
            run("dpo", 0, [1, 1, 1, 1, 1]), run("dpo", 1, [1, 1, 1, 1, 1])]
    rows = {r["method"]: r for r in board_of(runs)["rows"]}
    dpo = rows["dpo"]["metrics"]["alignment_accuracy"]
    assert dpo["ci_over"] == "seeds and prompts (hierarchical bootstrap)" and dpo["n_prompts"] == 5
    assert dpo["mean"] == 1.0 and dpo["ci"] == [1.0, 1.0]  # every pair right in both seeds: no spread
    vs = rows["dpo"]["vs_reference"]["alignment_accuracy"]
    assert vs["ci_over"] == "seeds and prompts (paired hierarchical bootstrap)"
    assert vs["mean"] == pytest.approx(0.5) and vs["ci"] == pytest.approx([0.5, 0.5])
    # a policy that gets pair p4 wrong in seed 1 only: mean (1 + .8) / 2 = .9; a resample drawing seed 0 twice
    # (1 in 4) is 1.0, so the upper bound is 1.0; one drawing p4 more often in seed 1 is below .9
    runs[3] = run("dpo", 1, [1, 1, 1, 1, 0])
    dpo = {r["method"]: r for r in board_of(runs)["rows"]}["dpo"]["metrics"]["alignment_accuracy"]
    assert dpo["mean"] == pytest.approx(0.9) and dpo["ci"][0] < 0.9 < dpo["ci"][1] == 1.0


def test_per_pair_values_survive_the_committed_records_and_pair_pobench_check(tmp_path):
    runs = [run("reference", 0, [0.5] * 5, REF_NOTE), run("dpo", 0, [1, 1, 0, 0.5, 1])]
    write_run_records(runs, tmp_path, manifest={})
    back = {r["method"]: r for r in read_run_records(tmp_path)}
    assert back["dpo"]["scores"]["per_pair"] == runs[1]["scores"]["per_pair"]
    assert back["reference"]["scores"]["notes"] == REF_NOTE
    rebuilt = {r["method"]: r for r in board_of(list(back.values()))["rows"]}
    assert rebuilt["dpo"]["vs_reference"]["alignment_accuracy"]["mean"] == pytest.approx(0.2)
    samples, notes = load_samples(tmp_path)
    assert not notes
    assert samples["hh/m/dpo"][0]["alignment_accuracy"] == {"p0": [1.0], "p1": [1.0], "p2": [0.0], "p3": [0.5],
                                                            "p4": [1.0]}


def test_a_task_without_pairs_keeps_per_sample_units():
    """Metrics of samples keep their prompts as units even when the run also has per-pair values."""
    from bench.leaderboard import unit_values

    scores = {"per_sample": [{"prompt_id": "x", "rouge1": 0.2}, {"prompt_id": "x", "rouge1": 0.4}],
              "per_pair": [{"prompt_id": "pair", "alignment_accuracy": 1.0}]}
    assert unit_values(scores, "rouge1") == {"x": pytest.approx(0.3)}
    assert unit_values(scores, "alignment_accuracy") == {"pair": 1.0}
    assert unit_values({"per_sample": []}, "alignment_accuracy") == {}
