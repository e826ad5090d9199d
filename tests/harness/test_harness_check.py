"""Leaderboard statistics and `pobench check`: an unchanged re-run passes, an injected regression (DPO's gain
halved) fails, KL rises are regressions, Holm over the family, seed-aware tests, the unpaired fallback, and
the simulated false-alarm rate stays within its bound."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench.check import compare, evidence_of, family_size, load_samples, paired_gain, simulate_error_rates
from bench.cli import main as cli
from bench.leaderboard import build_leaderboard, paired_vs_reference, point_id, t_interval
from bench.runner import write_run_records
from bench.stats import holm


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
                             kl_budget=5.0, n_boot=200)


BASE = {s: [0.5 + 0.01 * s + 0.02 * ((i * 7 + s) % 5) for i in range(20)] for s in (0, 1, 2)}


def test_leaderboard_rows_and_ci_over_seeds():
    board = make_board(BASE)
    dpo = next(r for r in board["rows"] if r["method"] == "dpo")
    assert dpo["metrics"]["reward"]["ci_over"].startswith("seeds") and dpo["metrics"]["reward"]["n"] == 3
    assert dpo["vs_reference"]["reward"]["mean"] > 0
    assert dpo["kl_budget_exceeded"] is False
    assert {r["kind"] for r in board["rows"]} == {"reference", "measured"}


# ----------------------------------------------------------------------------------------------
# a synthetic suite with the structure of the default one: prompts shared by every row, per-prompt
# effects, sampling noise shared by the rows of one seed (same sampling seed), per-sample KL

ROWS = {"reference": (0.0, 0.0), "dpo": (0.15, 1.3), "tdpo1": (0.12, 1.0), "tdpo2": (0.10, 0.9),
        "tis_dpo": (0.14, 1.4), "bcr": (0.05, 0.4), "sparsepo_mapo": (0.11, 1.1), "sparsepo": (0.09, 0.8)}


def synthetic_runs(rows=ROWS, *, n_prompts=64, k=2, seeds=(0,), truth=0, noise=0, seed_sd=0.0,
                   shift: dict[str, float] | None = None, kl_scale: dict[str, float] | None = None,
                   jitter: float = 0.0) -> list[dict]:
    """``truth`` fixes prompt and row x prompt effects and the seeds' training effects (``seed_sd``);
    ``noise`` the sampling noise (a re-run of the same policies with other sampling seeds draws new
    noise); ``shift``: label -> added to every reward of that row; ``kl_scale``: label -> KL multiplier;
    ``jitter``: SD of extra per-sample noise of the shifted rows (a changed policy sampled with the same
    sampling seed: its samples stay close to the old ones, not equal)."""
    t = np.random.default_rng([truth, 1])
    prompt_effect = t.normal(0, 0.3, n_prompts)
    row_prompt = {label: t.normal(0, 0.15, n_prompts) for label in rows}
    seed_effect = {(label, s): (t.normal(0, seed_sd) if label != "reference" else 0.0) for label in rows for s in seeds}
    runs = []
    for s in seeds:
        z = np.random.default_rng([noise, 2, s])
        shared = z.normal(0, 0.3, (n_prompts, k))  # one sampling seed for every row: correlated noise
        own = {label: z.normal(0, 0.3, (n_prompts, k)) for label in rows}
        kl_draw = {label: z.gamma(2.0, 0.5, (n_prompts, k)) for label in rows}
        for label, (gain, kl) in rows.items():
            reward = (prompt_effect[:, None] + row_prompt[label][:, None] + gain + seed_effect[(label, s)]
                      + (shared + own[label]) / math.sqrt(2))
            if shift and label in shift:
                reward = reward + shift[label] + jitter * np.random.default_rng([noise, 3, s]).normal(size=reward.shape)
            kls = kl * (kl_scale or {}).get(label, 1.0) * kl_draw[label]
            per_sample = [{"prompt_id": f"p{i}", "index": j, "reward": float(reward[i, j]), "kl": float(kls[i, j])}
                          for i in range(n_prompts) for j in range(k)]
            samples = [{"prompt_id": f"p{i}", "index": j, "prompt": f"prompt {i}", "completion": "..."}
                       for i in range(n_prompts) for j in range(k)]
            sc = {"metrics": {"reward": float(reward.mean()), "kl": float(kls.mean())}, "per_sample": per_sample,
                  "directions": {"reward": True, "kl": False}}
            method = "reference" if label == "reference" else label
            runs.append({**run(label, s, sc, method=method), "samples": samples, "step": None})
    return runs


def board_of(runs):
    return build_leaderboard("syn", runs, manifest={}, config_hash="h", primary={"imdb": "reward"},
                             metric_info={"reward": {"higher_is_better": True}, "kl": {"higher_is_better": False}},
                             kl_budget=5.0, n_boot=200)


def write_suite(path: Path, runs) -> Path:
    """A results folder as `pobench run` leaves it: leaderboard.json and runs/ with the per-sample files."""
    board = board_of(runs)
    path.mkdir(parents=True, exist_ok=True)
    (path / "leaderboard.json").write_text(json.dumps(board))
    write_run_records(runs, path, manifest={})
    return path


def halved_dpo(**kw):
    gain = ROWS["dpo"][0]
    return synthetic_runs(shift={"dpo": -gain / 2}, **kw)


def evidence(runs):
    board = board_of(runs)
    samples = {}
    for r in runs:
        pid = point_id(r["row_id"], r.get("step"))
        by_metric = {}
        for row in r["scores"]["per_sample"]:
            for m in ("reward", "kl"):
                by_metric.setdefault(m, {}).setdefault(row["prompt_id"], []).append(row[m])
        samples.setdefault(pid, {})[r["seed"]] = by_metric
    return board, samples


def test_unchanged_rerun_passes_and_halved_dpo_gain_fails(tmp_path, capsys):
    base = write_suite(tmp_path / "base", synthetic_runs())
    same = write_suite(tmp_path / "same", synthetic_runs())
    assert cli(["check", "--baseline", str(base), "--current", str(same)]) == 0
    out = capsys.readouterr().out
    assert "OK: 16 checked" in out and "16 paired t, no spread" in out and "Holm over 0" in out
    assert "16 exact" in out
    # the same policies sampled again with other sampling seeds: new noise, no true change
    resampled = write_suite(tmp_path / "resampled", synthetic_runs(noise=1))
    assert cli(["check", "--baseline", str(base), "--current", str(resampled)]) == 0
    capsys.readouterr()
    # DPO's gain over the reference halved (its rewards shifted down by half of it), sampled with the same
    # sampling seed (close samples, not equal ones): a regression
    worse = write_suite(tmp_path / "worse", halved_dpo(jitter=0.1))
    assert cli(["check", "--baseline", str(base), "--current", str(worse)]) == 1
    out = capsys.readouterr().out
    assert "FAIL: 1 of 16" in out and "REGRESSED" in out
    regressed = [line for line in out.splitlines() if "REGRESSED" in line]
    assert len(regressed) == 1 and "imdb/m/dpo " in regressed[0] and " reward " in regressed[0]
    assert "paired t n=64" in regressed[0]


def test_paired_check_sees_what_the_unpaired_one_cannot(tmp_path):
    base_runs = synthetic_runs(n_prompts=40)
    base, samples = evidence(base_runs)
    # a small drop of DPO, sampled with the same sampling seed (prompt effects dominate the unpaired
    # standard errors); the other rows are unchanged
    cur_runs = synthetic_runs(n_prompts=40, shift={"dpo": -0.05}, jitter=0.02)
    cur, cur_samples = evidence(cur_runs)
    ev_b, ev_c = evidence_of(samples), evidence_of(cur_samples)
    paired = {(c.row, c.metric): c for c in compare(base, cur, baseline_evidence=ev_b, current_evidence=ev_c)}
    unpaired = {(c.row, c.metric): c for c in compare(base, cur)}
    assert paired[("imdb/m/dpo", "reward")].status == "REGRESSED"
    assert paired[("imdb/m/dpo", "reward")].delta == pytest.approx(-0.05, abs=0.01)
    assert paired[("imdb/m/dpo", "reward")].test == "paired t"
    assert unpaired[("imdb/m/dpo", "reward")].status == "ok"
    assert unpaired[("imdb/m/dpo", "reward")].test == "unpaired z (no samples)"
    # unchanged rows are exact comparisons (identical values), decided as they are, outside the Holm family
    assert {c.test for c in paired.values() if c.row != "imdb/m/dpo"} == {"paired t, no spread"}
    assert family_size(list(paired.values())) == 1 and paired[("imdb/m/dpo", "reward")].p_holm == pytest.approx(
        paired[("imdb/m/dpo", "reward")].p_value)
    # Holm over every tested (row x metric) of a re-sampled run: 8 rows x (reward, kl), less the reference's KL
    # (0 on both sides: exact)
    _, resampled = evidence(synthetic_runs(n_prompts=40, noise=1))
    paired = {(c.row, c.metric): c for c in compare(base, cur, baseline_evidence=ev_b,
                                                    current_evidence=evidence_of(resampled))}
    tested = [c for c in paired.values() if c.p_holm is not None]
    family = [c for c in tested if c.se != 0]
    assert len(tested) == 16 and len(family) == 15 and family_size(tested) == 15
    assert [c.p_holm for c in family] == pytest.approx(holm([c.p_value for c in family]))
    assert paired[("imdb/m/reference", "kl")].status == "ok" and paired[("imdb/m/reference", "kl")].se == 0


def test_kl_rise_is_a_regression_by_default(tmp_path):
    base, samples = evidence(synthetic_runs())
    hot, hot_samples = evidence(synthetic_runs(kl_scale={"tdpo2": 1.5}))  # 0.9 -> 1.35 nats
    kw = dict(baseline_evidence=evidence_of(samples), current_evidence=evidence_of(hot_samples))
    failed = [(c.row, c.metric, c.status) for c in compare(base, hot, **kw) if c.failed]
    assert failed == [("imdb/m/tdpo2", "kl", "REGRESSED")]
    assert not [c for c in compare(base, hot, kl_tol=0.6, **kw) if c.failed]  # a rise within the KL slack
    assert not [c for c in compare(base, hot, metrics=["reward"], **kw) if c.failed]  # KL not asked for
    # a KL drop is an improvement, never a failure
    cool, cool_samples = evidence(synthetic_runs(kl_scale={"tdpo2": 0.5}))
    statuses = {(c.row, c.metric): c.status for c in compare(base, cool, baseline_evidence=evidence_of(samples),
                                                             current_evidence=evidence_of(cool_samples))}
    assert statuses[("imdb/m/tdpo2", "kl")] == "improved" and "REGRESSED" not in statuses.values()


def test_seed_aware_tests():
    rows = {"reference": (0.0, 0.0), "dpo": (0.15, 1.3)}
    for seeds, label in (((0, 1, 2), "seed t (paired)"), ((0, 1), "bootstrap (2 seeds)")):
        base, samples = evidence(synthetic_runs(rows, seeds=seeds, seed_sd=0.05))
        same = compare(base, base, baseline_evidence=evidence_of(samples), current_evidence=evidence_of(samples))
        assert {c.test for c in same if c.p_holm is not None} == {f"{label}, no spread"}
        assert not [c for c in same if c.failed]
        cur, cur_samples = evidence(synthetic_runs(rows, seeds=seeds, seed_sd=0.05, noise=3, shift={"dpo": -0.5}))
        worse = compare(base, cur, baseline_evidence=evidence_of(samples), current_evidence=evidence_of(cur_samples))
        assert [(c.row, c.metric) for c in worse if c.failed] == [("imdb/m/dpo", "reward")]
    # seed t: the unit is the training seed; a change that re-rolls the seeds' training effects is judged against
    # their spread (training noise 0.2 >> the prompt noise): a 0.1 move is no regression with 3 seeds ...
    rows3 = (0, 1, 2)
    base, samples = evidence(synthetic_runs(rows, seeds=rows3, seed_sd=0.2, n_prompts=200))
    rerolled, r_samples = evidence(synthetic_runs(rows, seeds=rows3, seed_sd=0.2, n_prompts=200, truth=5))
    comps = compare(base, rerolled, baseline_evidence=evidence_of(samples), current_evidence=evidence_of(r_samples))
    dpo = next(c for c in comps if c.row == "imdb/m/dpo" and c.metric == "reward")
    assert dpo.test == "seed t (paired)" and dpo.n == 3 and dpo.status != "REGRESSED"


def test_corpus_metric_with_three_seeds_gets_a_seed_t():
    board = make_board(BASE)
    worse = copy.deepcopy(board)
    for b in (board, worse):
        for row in b["rows"]:
            row["metrics"]["distinct_1"] = {"mean": 0.5, "se": None, "ci": None, "n": 1, "per_seed": [0.5, 0.51, 0.49]}
        b["metrics"]["distinct_1"] = {"higher_is_better": True}
    for row in worse["rows"]:
        row["metrics"]["distinct_1"].update(mean=0.3, per_seed=[0.3, 0.32, 0.28])
    comps = {(c.row, c.metric): c for c in compare(board, worse)}
    assert comps[("imdb/m/dpo", "distinct_1")].test == "seed t"
    assert comps[("imdb/m/dpo", "distinct_1")].status == "REGRESSED"


def test_unpaired_fallback_without_samples_and_tolerances():
    board = make_board(BASE)
    assert not [c for c in compare(board, board) if c.failed]
    noisy = make_board({s: [v + (0.004 if s == 1 else -0.003) for v in vals] for s, vals in BASE.items()})
    assert not [c for c in compare(board, noisy) if c.failed]
    worse = make_board({s: [v - 0.2 for v in vals] for s, vals in BASE.items()})
    failed = [c for c in compare(board, worse) if c.failed]
    assert [(c.row, c.metric, c.status) for c in failed] == [("imdb/m/dpo", "reward", "REGRESSED")]
    # three seeds on both sides: the per-seed values of the leaderboards, paired by seed
    assert failed[0].delta == pytest.approx(-0.2) and failed[0].test.startswith("seed t") and failed[0].n == 3
    for b in (board, worse):  # without per-seed values: the leaderboards' standard errors, unpaired
        for row in b["rows"]:
            for stats in row["metrics"].values():
                stats.pop("per_seed", None)
    failed = [c for c in compare(board, worse) if c.failed]
    assert [(c.row, c.metric, c.test) for c in failed] == [("imdb/m/dpo", "reward", "unpaired z (no samples)")]
    # a slack: the hypothesis becomes "dropped by more than the tolerance"
    assert not [c for c in compare(board, worse, abs_tol=0.25) if c.failed]
    assert not [c for c in compare(board, worse, rel_tol=0.5) if c.failed]
    # KL is checked by default: a rise far beyond its standard error fails
    hot = copy.deepcopy(board)
    next(r for r in hot["rows"] if r["method"] == "dpo")["metrics"]["kl"].update(mean=150.0, se=0.1)
    for b in (board, hot):
        for row in b["rows"]:
            row["metrics"]["kl"]["se"] = row["metrics"]["kl"].get("se") or 0.1
    assert [(c.row, c.metric) for c in compare(board, hot) if c.failed] == [("imdb/m/dpo", "kl")]


def test_metric_without_any_standard_error_is_not_judged_without_a_slack():
    board, small = make_board(BASE), make_board({s: [v - 0.005 for v in vals] for s, vals in BASE.items()})
    for b in (board, small):
        for row in b["rows"]:
            for stats in row["metrics"].values():
                stats["se"] = None  # e.g. distinct-n of a single seed: one corpus-level value, no noise estimate
                stats["per_seed"] = stats["per_seed"][:1]  # (and no per-seed values to test over seeds)
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
    assert {c.status for c in compare(board, fewer) if c.failed} == {"missing"}
    assert not [c for c in compare(board, fewer, allow_missing=True) if c.failed]


def test_check_cli_exit_codes_and_table(tmp_path, capsys):
    base, bad = tmp_path / "base.json", tmp_path / "bad.json"
    board = make_board(BASE)
    base.write_text(json.dumps({**board, "schema": "pobench.leaderboard/1"}))
    bad.write_text(json.dumps(make_board({s: [v - 0.2 for v in vals] for s, vals in BASE.items()})))
    assert cli(["check", "--baseline", str(base), "--current", str(base)]) == 0
    out = capsys.readouterr().out
    assert "OK:" in out and "no per-sample files" in out
    assert cli(["check", "--baseline", str(base), "--current", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSED" in out and "imdb/m/dpo" in out and "FAIL: 1 of" in out and "p(Holm)" in out
    assert cli(["check", "--baseline", str(base), "--current", str(bad), "--abs-tol", "0.5"]) == 0
    assert cli(["check", "--baseline", str(base), "--current", str(bad), "--metrics", "kl"]) == 0
    assert cli(["check", "--baseline", str(tmp_path / "nope.json"), "--current", str(base)]) == 2
    assert cli(["check", "--baseline", str(base), "--current", str(base), "--alpha", "1.5"]) == 2
    assert cli(["check", "--baseline", str(base), "--current", str(base), "--confidence", "0.99"]) == 0


def test_cli_pairs_on_the_stored_samples_and_says_when_it_cannot(tmp_path, capsys):
    base = write_suite(tmp_path / "base", synthetic_runs(n_prompts=40))
    worse = write_suite(tmp_path / "worse", synthetic_runs(n_prompts=40, shift={"dpo": -0.06}))
    assert cli(["check", "--baseline", str(base), "--current", str(worse)]) == 1
    capsys.readouterr()
    assert cli(["check", "--baseline", str(base), "--current", str(worse), "--unpaired"]) == 0
    assert "--unpaired" in capsys.readouterr().out
    # one run's samples gone: that row falls back to the unpaired test, and the output says so
    next((worse / "runs").glob("*dpo*.samples.jsonl.gz")).unlink()
    assert cli(["check", "--baseline", str(base), "--current", str(worse), "--all"]) == 0
    out = capsys.readouterr().out
    assert "1 run(s) without per-sample files" in out and "unpaired z (no samples)" in out
    loaded, notes = load_samples(worse)
    assert len(loaded) == len(ROWS) - 1 and len(notes) == 1


def test_samples_with_unicode_line_separators_in_completions_load(tmp_path):
    runs = synthetic_runs(n_prompts=8)
    for r in runs:
        for s in r["samples"]:
            s["completion"] = "a\u2028b\x85c\x1cd\re"  # str.splitlines() would break the JSON lines here
    base = write_suite(tmp_path / "base", runs)
    loaded, notes = load_samples(base)
    assert not notes and len(loaded) == len(ROWS)
    assert all(len(v) == 2 for v in loaded["imdb/m/dpo"][0]["reward"].values())


def test_simulated_false_alarm_rate_within_its_bound_and_power(tmp_path):
    board, samples = evidence(synthetic_runs())
    report = simulate_error_rates(board, samples, n_null=200, fractions=(0.5, 1.0))
    fa = report["false_alarm"]
    # 8 rows x (reward, kl), less the reference's KL (0 on both sides: exact, outside the Holm family)
    assert report["data"]["family_size"] == {"min": 15, "max": 15} and report["data"]["samples_per_prompt"] == [2]
    # Holm at 5% family-wise: the rate over 200 null comparisons stays within 5% up to simulation error
    assert fa["rate"] <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 200) and fa["ci95"][0] <= 0.05
    gain = paired_gain(board, evidence_of(samples), "imdb/m/dpo", "reward")
    assert report["power"]["gain_over_reference"]["gain"] == pytest.approx(gain["gain"])
    assert gain["gain"] == pytest.approx(0.15, abs=0.06)
    half, full = report["power"]["curve"]
    assert half["drop"] == pytest.approx(gain["gain"] / 2) and full["power"]["rate"] >= half["power"]["rate"]
    assert full["power"]["rate"] >= 0.8  # a drop of the whole gain (~0.15 at se ~0.04) is found
    assert report["scheme"] == "sample split"


def test_one_sample_per_prompt_simulates_with_a_prompt_split():
    board, samples = evidence(synthetic_runs(k=1, n_prompts=128))
    report = simulate_error_rates(board, samples, n_null=200, fractions=(0.5,))
    assert report["scheme"] == "prompt split" and report["data"]["samples_per_prompt"] == [1]
    assert report["data"]["family_size"] == {"min": 15, "max": 15}
    fa = report["false_alarm"]
    assert fa["rate"] <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 200) and fa["ci95"][0] <= 0.05
    # 64 pairs of different prompts: the prompt spread is in the noise, the power is only a floor
    assert report["power"]["halved_gain"]["power"]["rate"] < 0.8


def test_power_report_uses_the_final_dpo_point_and_contrasts_it_with_its_earlier_checkpoint():
    rows = {"reference": (0.0, 0.0), "dpo": (0.16, 1.3), "bcr": (0.05, 0.4)}
    final = [{**r, "step": 20} if r["method"] == "dpo" else r for r in synthetic_runs(rows)]
    # step 10: half the gain, sampled with the same sampling seed (close samples)
    early = [{**r, "step": 10} for r in synthetic_runs(rows, shift={"dpo": -0.08}, jitter=0.1)
             if r["method"] == "dpo"]
    board, samples = evidence(final + early)
    report = simulate_error_rates(board, samples, n_null=10, fractions=(0.5,))
    power = report["power"]
    assert power["row"] == "imdb/m/dpo@20" and power["gain_over_reference"]["reference"] == "imdb/m/reference"
    contrast = power["checkpoint_contrast"]
    assert contrast["current_row"] == "imdb/m/dpo@10" and contrast["n_prompts"] == 64
    assert contrast["paired_difference"] == pytest.approx(-0.08, abs=0.03)
    # the jitter's per-prompt mean of 2 samples: close samples, small noise
    assert contrast["sd_per_prompt"] == pytest.approx(0.1 / math.sqrt(2), rel=0.25)
    p = contrast["power_for_halved_gain_at_this_noise"]
    assert p["family"] == report["data"]["family_size"]["max"] and 0.9 < p["at_alpha_over_family"] <= p["at_alpha"]


def test_simulate_cli_writes_the_report(tmp_path, capsys):
    base = write_suite(tmp_path / "base", synthetic_runs(n_prompts=32))
    same = write_suite(tmp_path / "same", synthetic_runs(n_prompts=32))
    out = tmp_path / "rates.json"
    assert cli(["check", "--baseline", str(base), "--current", str(same), "--simulate", "20", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n_null"] == 20 and report["power"]["row"] == "imdb/m/dpo"
    assert report["real_rerun"]["failed"] == [] and report["real_rerun"]["tests"] == 16
    assert "false alarms:" in capsys.readouterr().out
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "leaderboard.json").write_text((base / "leaderboard.json").read_text())
    assert cli(["check", "--baseline", str(tmp_path / "bare"), "--simulate", "5"]) == 2  # no samples to simulate from
