"""Leaderboard statistics and `pobench check`: passes against itself, fails on a real regression."""
from __future__ import annotations

import copy
import json
import math

import pytest

from bench.check import compare
from bench.cli import main as cli
from bench.leaderboard import build_leaderboard, paired_vs_reference, t_interval


def test_t_interval_matches_hand_computation():
    # values 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5); t(0.975, 4) = 2.7764451
    stats = t_interval([1, 2, 3, 4, 5])
    assert stats["mean"] == 3 and stats["n"] == 5
    assert stats["se"] == pytest.approx(math.sqrt(0.5))
    half = 2.7764451 * math.sqrt(0.5)
    assert stats["ci"] == pytest.approx([3 - half, 3 + half], abs=1e-6)
    assert t_interval([7.0])["ci"] is None and t_interval([])["mean"] is None


def scores(rewards: dict[str, list[float]], kl: float = 0.0) -> dict:
    per_sample = [{"prompt_id": p, "index": i, "reward": r, "kl": kl} for p, rs in rewards.items()
                  for i, r in enumerate(rs)]
    flat = [r for rs in rewards.values() for r in rs]
    return {"metrics": {"reward": sum(flat) / len(flat), "kl": kl}, "per_sample": per_sample,
            "directions": {"reward": True, "kl": False}}


def run(label, seed, sc, method=None):
    return {"row_id": f"imdb/m/{label}", "task": "imdb", "model": "m", "method": method or label, "label": label,
            "hparams": {}, "seed": seed, "scores": sc, "run_key": f"{label}{seed}"}


def test_paired_difference_to_reference():
    ref = {0: scores({"a": [0.0, 0.2], "b": [0.5, 0.5], "c": [0.1, 0.3]})}
    pol = {0: scores({"a": [0.4, 0.4], "b": [0.6, 0.8], "c": [0.2, 0.2]})}
    stats = paired_vs_reference(pol, ref, "reward")
    # per-prompt differences: a 0.3, b 0.2, c 0.0
    assert stats["mean"] == pytest.approx(0.5 / 3)
    assert stats["n"] == 3
    assert stats["se"] == pytest.approx(t_interval([0.3, 0.2, 0.0])["se"])


def make_board(dpo_rewards_by_seed: dict[int, list[float]]):
    prompts = [f"p{i}" for i in range(20)]
    runs = []
    for seed in (0, 1, 2):
        ref = {p: [0.1 + 0.01 * i] for i, p in enumerate(prompts)}
        runs.append(run("reference", seed, scores(ref)))
        dpo = {p: [v] for p, v in zip(prompts, dpo_rewards_by_seed[seed])}
        runs.append(run("dpo", seed, scores(dpo, kl=1.5)))
    return build_leaderboard("t", runs, manifest={}, config_hash="h", primary={"imdb": "reward"},
                             metric_info={"reward": {"higher_is_better": True}, "kl": {"higher_is_better": False}},
                             kl_budget=5.0)


BASE = {s: [0.5 + 0.01 * s + 0.02 * ((i * 7 + s) % 5) for i in range(20)] for s in (0, 1, 2)}


def test_leaderboard_rows_and_ci_over_seeds():
    board = make_board(BASE)
    dpo = next(r for r in board["rows"] if r["method"] == "dpo")
    assert dpo["metrics"]["reward"]["ci_over"] == "seeds" and dpo["metrics"]["reward"]["n"] == 3
    assert dpo["vs_reference"]["reward"]["mean"] > 0
    assert dpo["kl_budget_exceeded"] is False
    assert {r["kind"] for r in board["rows"]} == {"reference", "measured"}


def test_check_passes_against_itself_and_on_noise_but_fails_on_regression(tmp_path):
    board = make_board(BASE)
    assert not [c for c in compare(board, board) if c.failed]
    noisy = make_board({s: [v + (0.004 if s == 1 else -0.003) for v in vals] for s, vals in BASE.items()})
    assert not [c for c in compare(board, noisy) if c.failed]
    worse = make_board({s: [v - 0.2 for v in vals] for s, vals in BASE.items()})
    failed = [c for c in compare(board, worse) if c.failed]
    assert [(c.row, c.metric, c.status) for c in failed] == [("imdb/m/dpo", "reward", "REGRESSED")]
    assert failed[0].delta == pytest.approx(-0.2)
    # KL went up 100x but KL has no "better" side for the gate: reported, never a failure by default
    hot = copy.deepcopy(board)
    next(r for r in hot["rows"] if r["method"] == "dpo")["metrics"]["kl"]["mean"] = 150.0
    assert not [c for c in compare(board, hot) if c.failed]
    assert [(c.metric, c.status) for c in compare(board, hot, metrics=["kl"])
            if c.row.endswith("dpo") and c.status != "info"] == [("kl", "REGRESSED")]


def test_check_tolerance_is_statistical(tmp_path):
    board = make_board(BASE)
    small = make_board({s: [v - 0.005 for v in vals] for s, vals in BASE.items()})
    # a drop of 0.005 is inside the seeds' noise band ...
    assert not [c for c in compare(board, small) if c.failed]
    # ... but not when the band is made (nearly) zero-width
    exact, small_exact = copy.deepcopy(board), copy.deepcopy(small)
    for b in (exact, small_exact):
        for row in b["rows"]:
            for stats in row["metrics"].values():
                stats["se"] = 1e-6
    assert [c.metric for c in compare(exact, small_exact) if c.failed] == ["reward"]


def test_metric_without_any_standard_error_is_not_judged_without_a_slack():
    board, small = make_board(BASE), make_board({s: [v - 0.005 for v in vals] for s, vals in BASE.items()})
    for b in (board, small):
        for row in b["rows"]:
            for stats in row["metrics"].values():
                stats["se"] = None  # e.g. distinct-n of a single seed: one corpus-level value, no noise estimate
    statuses = {c.status for c in compare(board, small) if c.metric == "reward" and c.row.endswith("dpo")}
    assert statuses == {"no-se"} and not [c for c in compare(board, small) if c.failed]
    # an explicit slack, or naming the metric, makes it a real test again
    assert [c.metric for c in compare(board, small, abs_tol=0.001) if c.failed] == ["reward"]
    assert [c.metric for c in compare(board, small, metrics=["reward"]) if c.failed] == ["reward"]
    assert {c.status for c in compare(board, board) if c.metric == "reward"} == {"ok"}  # unchanged is fine


def test_check_missing_row_fails_unless_allowed():
    board = make_board(BASE)
    fewer = copy.deepcopy(board)
    fewer["rows"] = [r for r in fewer["rows"] if r["method"] != "dpo"]
    assert [c.status for c in compare(board, fewer) if c.failed] == ["missing"]
    assert not [c for c in compare(board, fewer, allow_missing=True) if c.failed]


def test_check_cli_exit_codes_and_table(tmp_path, capsys):
    base, bad = tmp_path / "base.json", tmp_path / "bad.json"
    board = make_board(BASE)
    base.write_text(json.dumps({**board, "schema": "pobench.leaderboard/1"}))
    bad.write_text(json.dumps(make_board({s: [v - 0.2 for v in vals] for s, vals in BASE.items()})))
    assert cli(["check", "--baseline", str(base), "--current", str(base)]) == 0
    assert "OK:" in capsys.readouterr().out
    assert cli(["check", "--baseline", str(base), "--current", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSED" in out and "imdb/m/dpo" in out and "FAIL: 1 of" in out
    assert cli(["check", "--baseline", str(base), "--current", str(bad), "--abs-tol", "0.5"]) == 0
    assert cli(["check", "--baseline", str(tmp_path / "nope.json"), "--current", str(base)]) == 2
