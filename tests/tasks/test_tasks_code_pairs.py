"""MBPP preference pairs by execution with the reference-solution fallback, the advice when no pair forms, and
pass@k per sample (every problem a unit of the CI). Expected values are worked out by hand in the comments."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import tasks
from bench.config.schema import PrefDataConfig
from bench.leaderboard import build_leaderboard
from bench.stages.data import no_pairs_message
from tasks.base import Sample

NEG_OK, NEG_BAD = "def neg(x):\n    return -x\n", "def neg(x):\n    return x\n"
SQ_OK, SQ_BAD = "def sq(x):\n    return x * x\n", "def sq(x):\n    return x + x\n"


def write_mbpp(folder: Path) -> None:
    """Train problems 601 (negate), 602 (its reference is wrong: it fails its own test), 603 (square), 604."""
    rows = [
        {"task_id": 601, "text": "Negate a number.", "code": "def neg(x):\r\n  return -x",
         "test_list": ["assert neg(2) == -2", "assert neg(-1) == 1"], "test_setup_code": ""},
        {"task_id": 602, "text": "Double a number.", "code": "def dbl(x):\n  return x",
         "test_list": ["assert dbl(2) == 4"], "test_setup_code": ""},
        {"task_id": 603, "text": "Square a number.", "code": "def sq(x):\n  return x ** 2",
         "test_list": ["assert sq(3) == 9"], "test_setup_code": ""},
        {"task_id": 604, "text": "Return one.", "code": "def one():\n  return 1",
         "test_list": ["assert one() == 1"], "test_setup_code": ""},
    ]
    (folder / "mbpp").mkdir()
    (folder / "mbpp" / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def mbpp(tmp_path):
    write_mbpp(tmp_path)
    return tasks.get("mbpp", data_dir=tmp_path, timeout=10.0)


def samples_of(task, programs: dict[str, list[str]]) -> list[Sample]:
    prompts = {p.id: p for p in task.train_prompts()}
    return [Sample.from_prompt(prompts[tid], code, index=i) for tid, codes in programs.items()
            for i, code in enumerate(codes)]


def test_reference_solution_is_chosen_when_no_sample_passes(mbpp):
    samples = samples_of(mbpp, {"601": [NEG_BAD, "def neg(x):\n    return 0\n"], "602": ["def dbl(x):\n    return 0\n"],
                                "603": [SQ_BAD, SQ_OK]})
    pairs = mbpp.pairs_from_samples(samples)
    got = [(p.meta["task_id"], p.chosen, p.rejected, p.meta["chosen_source"]) for p in pairs]
    reference = "def neg(x):\n  return -x"  # the file's code with its CRLF normalised
    assert got == [
        ("601", reference, NEG_BAD, "reference"),                      # both samples fail: the reference, twice
        ("601", reference, "def neg(x):\n    return 0\n", "reference"),
        ("603", SQ_OK, SQ_BAD, "sample"),                              # a passing sample is chosen as before
    ]  # 602: no sample passes and its reference fails its own test: no pair, and the advice says so
    advice = mbpp.no_pairs_advice(samples, [0, 0, 0, 0, 1], {})
    assert "in 1 problem(s) no sample passed and the reference solution fails its own tests too" in advice
    assert "602 (failed: " in advice
    # without the fallback, only the problem with a passing sample pairs (the behaviour before)
    plain = tasks.get("mbpp", data_dir=mbpp.data_dir, timeout=10.0, reference_fallback=False)
    assert [(p.meta["task_id"], p.chosen) for p in plain.pairs_from_samples(samples)] == [("603", SQ_OK)]


def test_no_pairs_advice_names_what_was_seen_and_what_to_change(mbpp):
    cfg = PrefDataConfig(source="sample_and_judge", prompts=2, samples_per_prompt=2, temperature=0.7, min_margin=0.0)
    passing = samples_of(mbpp, {"601": ["def neg(x):\n    return -x\n", "def neg(x):\n    return 0 - x\n"],
                                "603": [SQ_OK, "def sq(x):\n    return x ** 2\n"]})
    assert mbpp.pairs_from_samples(passing) == []
    message = no_pairs_message(mbpp, "sample_and_judge", cfg, passing, [1.0] * 4)
    assert message == (
        "prefdata for task 'mbpp': no usable preference pair (prefdata.source: sample_and_judge): 4 samples of 2 "
        "MBPP train problem(s) run against their tests; every sample of 2 problem(s) passed, leaving nothing to "
        "reject (e.g. 601, 603); more failing samples: raise prefdata.samples_per_prompt (now 2) or "
        "prefdata.temperature (now 0.7), or add problems (prefdata.prompts: 2)")
    # every sample fails and the fallback is off: the option that pairs them is named (not min_margin)
    plain = tasks.get("mbpp", data_dir=mbpp.data_dir, timeout=10.0, reference_fallback=False)
    failing = samples_of(plain, {"601": [NEG_BAD]})
    assert plain.pairs_from_samples(failing) == []
    message = no_pairs_message(plain, "sample_and_judge", cfg, failing, [0.0])
    assert "in 1 problem(s) no sample passed; set task_options.mbpp.reference_fallback: true" in message
    assert "min_margin" not in message and "samples_per_prompt to 2" not in message


def test_pass_at_1_per_sample_gives_a_ci_over_problems_by_hand():
    humaneval = tasks.get("humaneval", source="builtin", timeout=10.0)
    p0, p1 = humaneval.eval_prompts(limit=2)
    samples = [Sample.from_prompt(p0, p0.reference, index=0), Sample.from_prompt(p0, "    return True\n", index=1),
               Sample.from_prompt(p1, p1.reference, index=0), Sample.from_prompt(p1, p1.reference, index=1)]
    scores = humaneval.score(samples)
    assert [r["pass@1"] for r in scores.per_sample] == [1.0, 0.0, 1.0, 1.0]
    assert scores.metrics == pytest.approx({"pass@1": 0.75})
    run = {"row_id": "humaneval/m/reference", "task": "humaneval", "model": "m", "method": "reference",
           "label": "reference", "hparams": {}, "seed": 0, "run_key": "k",
           "scores": {"metrics": scores.metrics, "per_sample": scores.per_sample, "directions": {"pass@1": True}}}
    board = build_leaderboard("t", [run], manifest={}, config_hash="x", primary={"humaneval": "pass@1"})
    stats = board["rows"][0]["metrics"]["pass@1"]
    # per problem .5 and 1: mean .75, sd .353553, se .25, t(.975, 1) = 12.7062047 -> .75 +- 3.1765512
    assert stats["ci_over"] == "prompts" and stats["n"] == 2 and stats["se"] == pytest.approx(0.25)
    assert stats["ci"] == pytest.approx([0.75 - 3.1765512, 0.75 + 3.1765512], abs=1e-6)


def test_pass_at_k_per_sample_is_the_problems_estimate():
    """pass@10 needs 10 samples of each problem: 10 of one problem, 3 passing -> 1 - C(7,10)/C(10,10) = 1."""
    humaneval = tasks.get("humaneval", source="builtin", timeout=10.0)
    (p0,) = humaneval.eval_prompts(limit=1)
    samples = [Sample.from_prompt(p0, p0.reference if i < 3 else "    return True\n", index=i) for i in range(10)]
    scores = humaneval.score(samples)
    assert scores.metrics == pytest.approx({"pass@1": 0.3, "pass@10": 1.0})
    assert [r["pass@1"] for r in scores.per_sample] == [1.0] * 3 + [0.0] * 7
    assert {r["pass@10"] for r in scores.per_sample} == {1.0}
